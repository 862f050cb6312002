/*
 * zipf.h - the Zipf(s) draw of the O2O load generators (dove-bench and
 * naive-bench): a few merchants take most of the orders, as at lunch.
 * Header-only, for tools/ only.
 */
#ifndef DOVE_TOOLS_ZIPF_H
#define DOVE_TOOLS_ZIPF_H

#include <math.h>
#include <stdlib.h>

/* The cumulative distribution over n ranks for exponent s (malloc'd). */
static inline double *
zipf_cdf_make(int n, double s)
{
	double *cdf = malloc((size_t)n * sizeof(double));
	if (cdf == NULL)
		abort();
	double norm = 0, acc = 0;
	for (int i = 0; i < n; i++)
		norm += 1.0 / pow(i + 1, s);
	for (int i = 0; i < n; i++)
		cdf[i] = (acc += 1.0 / pow(i + 1, s) / norm);
	return cdf;
}

/* A rank 0..n-1 drawn from cdf. */
static inline int
zipf_draw(const double *cdf, int n, unsigned *seed)
{
	double u = (double)rand_r(seed) / RAND_MAX;
	int lo = 0, hi = n - 1;
	while (lo < hi) {
		int mid = (lo + hi) / 2;
		if (cdf[mid] < u)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

#endif
