/*
 * sketch.c - the hot-account detector's memory: a count-min sketch with
 * conservative update (postings per account in the current window, never
 * under-counted, over-counted only by collisions) and a small set of the
 * accounts whose count reached the window's level. Fixed size whatever
 * the number of accounts: 4 x 16,384 counters and 512 heavy slots.
 *
 * It only counts; the server reads the clock, decides, and logs HOT
 * records, so detection never makes replay depend on timing.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dove.h"
#include "settle.h"
#include "settle_int.h"

#define DEPTH 4
#define WIDTH_BITS 14
#define WIDTH (1u << WIDTH_BITS)
#define HEAVY_SLOTS 512u /* a power of two; at most half used */

struct settle_sketch {
	uint32_t level; /* count that makes an account heavy this window */
	uint32_t nheavy;
	uint64_t heavy[HEAVY_SLOTS]; /* open addressing; 0 empty */
	uint32_t c[DEPTH][WIDTH];
};

int
settle_sketch_create(settle_sketch **out)
{
	settle_sketch *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return -ENOMEM;
	s->level = UINT32_MAX;
	*out = s;
	return 0;
}

void
settle_sketch_destroy(settle_sketch *s)
{
	free(s);
}

size_t
settle_sketch_bytes(const settle_sketch *s)
{
	(void)s;
	return sizeof(struct settle_sketch);
}

void
settle_sketch_reset(settle_sketch *s, uint32_t level)
{
	memset(s->c, 0, sizeof(s->c));
	memset(s->heavy, 0, sizeof(s->heavy));
	s->nheavy = 0;
	s->level = level ? level : 1;
}

/* The DEPTH counters of id: 14 bits of one 64-bit hash each. */
static inline void
cells(uint64_t id, uint32_t idx[DEPTH])
{
	uint64_t h = settle_mix64(id);
	for (int d = 0; d < DEPTH; d++, h >>= WIDTH_BITS)
		idx[d] = (uint32_t)h & (WIDTH - 1);
}

static void
heavy_put(settle_sketch *s, uint64_t id)
{
	uint32_t i = (uint32_t)(settle_mix64(id ^ 0x5bd1e995u)) & (HEAVY_SLOTS - 1);
	for (; s->heavy[i] != 0; i = (i + 1) & (HEAVY_SLOTS - 1))
		if (s->heavy[i] == id)
			return;
	/* Full (half the slots): more heavy accounts than anyone can make
	 * hot in one window; the rest wait for the next. */
	if (s->nheavy == HEAVY_SLOTS / 2)
		return;
	s->heavy[i] = id;
	s->nheavy++;
}

uint32_t
settle_sketch_add(settle_sketch *s, uint64_t id)
{
	uint32_t idx[DEPTH], min = UINT32_MAX;
	cells(id, idx);
	for (int d = 0; d < DEPTH; d++)
		if (s->c[d][idx[d]] < min)
			min = s->c[d][idx[d]];
	if (min == UINT32_MAX)
		return min; /* saturated */
	/* Conservative update: raise only the counters at the minimum;
	 * the others already over-count id. */
	for (int d = 0; d < DEPTH; d++)
		if (s->c[d][idx[d]] == min)
			s->c[d][idx[d]] = min + 1;
	if (min + 1 >= s->level)
		heavy_put(s, id);
	return min + 1;
}

uint32_t
settle_sketch_estimate(const settle_sketch *s, uint64_t id)
{
	uint32_t idx[DEPTH], min = UINT32_MAX;
	cells(id, idx);
	for (int d = 0; d < DEPTH; d++)
		if (s->c[d][idx[d]] < min)
			min = s->c[d][idx[d]];
	return min;
}

uint32_t
settle_sketch_heavy(const settle_sketch *s, uint64_t *ids, uint32_t max)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < HEAVY_SLOTS && n < max; i++)
		if (s->heavy[i] != 0)
			ids[n++] = s->heavy[i];
	return n;
}
