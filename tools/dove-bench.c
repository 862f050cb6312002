/*
 * dove-bench - an O2O load generator over doved's line protocol.
 *
 * It creates the platform's accounts (channel clearing, escrow, platform
 * fee, payout, merchants, customers) unless told they exist, then drives
 * the lunch-peak flow from N connections, each keeping `depth` requests in
 * flight:
 *   pay       channel -> escrow            (code 1, ref = order)
 *   settle    escrow -> merchant  linked   (code 2)  the order's amount
 *             escrow -> fee                (code 5)  less/plus the fee
 *   refund    escrow -> customer  (2%)     (code 3)
 *   withdraw  merchant -> payout  (1%)     (code 4)
 * with merchants drawn from a Zipf distribution (a few are hot, as at
 * lunch). It prints accepted/s, latency percentiles, the reasons for
 * refusals, and checks the money: every balance read back must add up to
 * zero and no nonneg account may be below zero.
 *
 *   dove-bench -s SOCKET [--conns N] [--depth D] [--seconds S]
 *              [--merchants M] [--customers C] [--rate R] [--no-setup]
 *
 * It speaks only the documented protocol.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "zipf.h"

enum { CHANNEL = 1, ESCROW = 2, FEE = 3, PAYOUT = 4, MERCHANT0 = 1000,
       CUSTOMER0 = 1000000 };

static const char *sock_path;
static int conns = 8, depth = 64;
static double seconds = 5;
static int merchants = 10000, customers = 50000;
static double rate; /* requests/s over all connections; 0 = flat out */
static int setup = 1;

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
dial(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr, "dove-bench: connect %s: %s\n", sock_path,
			strerror(errno));
		exit(3);
	}
	return fd;
}

/* A connection: requests go out as whole lines; replies come back in
 * order, so a FIFO of send times gives each reply its latency. */
struct conn {
	int fd;
	char in[65536];
	size_t in_len;
	char out[65536];
	size_t out_len;
	double *sent; /* ring of depth send times */
	int head, inflight;
	/* a linked pair counts as one request of two lines */
	int *lines_of;
};

static uint64_t next_id = 1;
static uint64_t order_no = 1;
static unsigned rnd_state = 12345;

static double *zipf_cdf;

static int
zipf_merchant(void)
{
	return MERCHANT0 + zipf_draw(zipf_cdf, merchants, &rnd_state);
}

/* Append one O2O request (1 or 2 lines) to c->out; returns lines. */
static int
gen_request(struct conn *c)
{
	int dice = rand_r(&rnd_state) % 100;
	uint64_t amount = 500 + (uint64_t)(rand_r(&rnd_state) % 5000);
	int n;
	char *o = c->out + c->out_len;
	size_t room = sizeof(c->out) - c->out_len;
	if (dice < 45) { /* pay */
		n = snprintf(o, room, "TRANSFER %llu %d %d %llu code=1 ref=%llu\n",
			     (unsigned long long)next_id++, CHANNEL, ESCROW,
			     (unsigned long long)amount,
			     (unsigned long long)order_no++);
		c->out_len += (size_t)n;
		return 1;
	}
	if (dice < 97) { /* settle: merchant share + platform fee, linked */
		int m = zipf_merchant();
		uint64_t fee = amount / 20;
		n = snprintf(o, room,
			     "TRANSFER %llu %d %d %llu code=2 ref=%llu linked\n"
			     "TRANSFER %llu %d %d %llu code=5 ref=%llu\n",
			     (unsigned long long)next_id, ESCROW, m,
			     (unsigned long long)(amount - fee),
			     (unsigned long long)order_no,
			     (unsigned long long)next_id + 1, ESCROW, FEE,
			     (unsigned long long)fee,
			     (unsigned long long)order_no);
		next_id += 2;
		order_no++;
		c->out_len += (size_t)n;
		return 2;
	}
	if (dice < 99) { /* refund to a customer */
		int cu = CUSTOMER0 + rand_r(&rnd_state) % customers;
		n = snprintf(o, room, "TRANSFER %llu %d %d %llu code=3\n",
			     (unsigned long long)next_id++, ESCROW, cu,
			     (unsigned long long)(amount / 2));
		c->out_len += (size_t)n;
		return 1;
	}
	/* withdraw: a merchant pays out part of what it has (it may not
	 * have enough: nonneg refuses, which is part of the workload). */
	int m = zipf_merchant();
	n = snprintf(o, room, "TRANSFER %llu %d %d %llu code=4\n",
		     (unsigned long long)next_id++, m, PAYOUT,
		     (unsigned long long)amount);
	c->out_len += (size_t)n;
	return 1;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Send all of buf on a blocking fd; read n reply lines; count them. */
static void
sync_lines(int fd, const char *buf, size_t len, int n, int *errors)
{
	size_t off = 0;
	while (off < len) {
		ssize_t w = send(fd, buf + off, len - off, MSG_NOSIGNAL);
		if (w <= 0) {
			perror("dove-bench: send");
			exit(3);
		}
		off += (size_t)w;
	}
	static char in[1 << 16];
	size_t have = 0;
	for (int got = 0; got < n;) {
		ssize_t r = recv(fd, in + have, sizeof(in) - have, 0);
		if (r <= 0) {
			fprintf(stderr, "dove-bench: doved closed the connection\n");
			exit(3);
		}
		have += (size_t)r;
		char *p = in, *nl;
		while ((nl = memchr(p, '\n', (size_t)(in + have - p))) != NULL) {
			if (strncmp(p, "ERR", 3) == 0 &&
			    !strstr(p, "account_exists"))
				(*errors)++;
			got++;
			p = nl + 1;
		}
		memmove(in, p, (size_t)(in + have - p));
		have = (size_t)(in + have - p);
	}
}

static void
create_accounts(void)
{
	int fd = dial(), errors = 0;
	static char buf[1 << 20];
	size_t len = (size_t)snprintf(buf, sizeof(buf),
				      "ACCOUNT %d\nACCOUNT %d\nACCOUNT %d\n"
				      "ACCOUNT %d\n",
				      CHANNEL, ESCROW, FEE, PAYOUT);
	sync_lines(fd, buf, len, 4, &errors);
	for (int base = 0; base < merchants + customers; base += 10000) {
		len = 0;
		int n = 0;
		for (int i = base; i < base + 10000 && i < merchants + customers;
		     i++, n++) {
			int id = i < merchants ? MERCHANT0 + i
					       : CUSTOMER0 + (i - merchants);
			len += (size_t)snprintf(buf + len, sizeof(buf) - len,
						"ACCOUNT %d nonneg\n", id);
		}
		sync_lines(fd, buf, len, n, &errors);
	}
	if (errors) {
		fprintf(stderr, "dove-bench: %d account creations refused\n",
			errors);
		exit(1);
	}
	close(fd);
}

/* Read every balance back: the ledger must sum to zero, and no nonneg
 * account (merchants, customers) may be negative. */
static int
check_money(void)
{
	int fd = dial();
	static char buf[1 << 20];
	__int128 sum = 0;
	int negative = 0, missing = 0, total = 4 + merchants + customers;
	static char in[1 << 16];
	for (int base = 0; base < total; base += 5000) {
		size_t len = 0;
		int n = 0;
		for (int i = base; i < base + 5000 && i < total; i++, n++) {
			int id = i < 4 ? i + 1
				 : i < 4 + merchants ? MERCHANT0 + (i - 4)
						     : CUSTOMER0 + (i - 4 - merchants);
			len += (size_t)snprintf(buf + len, sizeof(buf) - len,
						"BALANCE %d\n", id);
		}
		size_t off = 0;
		while (off < len) {
			ssize_t w = send(fd, buf + off, len - off, MSG_NOSIGNAL);
			if (w <= 0)
				exit(3);
			off += (size_t)w;
		}
		size_t have = 0;
		for (int got = 0; got < n;) {
			ssize_t r = recv(fd, in + have, sizeof(in) - have, 0);
			if (r <= 0)
				exit(3);
			have += (size_t)r;
			char *p = in, *nl;
			while ((nl = memchr(p, '\n', (size_t)(in + have - p)))) {
				unsigned long long id, cp, dp, cb;
				char flags[32];
				if (sscanf(p, "BAL %llu %llu %llu %llu %31s", &id,
					   &cp, &dp, &cb, flags) == 5) {
					sum += (__int128)cp + cb - dp;
					/* the posted balance: buffered
					 * credits are not spendable */
					if (strstr(flags, "nonneg") && cp < dp)
						negative++;
				} else {
					missing++;
				}
				got++;
				p = nl + 1;
			}
			memmove(in, p, (size_t)(in + have - p));
			have = (size_t)(in + have - p);
		}
	}
	close(fd);
	printf("money check: %d balances read, sum of (credits - debits) = "
	       "%lld (must be 0), nonneg accounts below zero: %d, missing: %d"
	       " -> %s\n",
	       total, (long long)sum, negative, missing,
	       sum == 0 && negative == 0 && missing == 0 ? "OK" : "FAILED");
	return sum == 0 && negative == 0 && missing == 0 ? 0 : 1;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "conns", required_argument, NULL, 'c' },
		{ "depth", required_argument, NULL, 'd' },
		{ "seconds", required_argument, NULL, 't' },
		{ "merchants", required_argument, NULL, 'm' },
		{ "customers", required_argument, NULL, 'u' },
		{ "rate", required_argument, NULL, 'r' },
		{ "no-setup", no_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "s:c:d:t:m:u:r:nh", opts, NULL)) !=
	       -1) {
		switch (ch) {
		case 's': sock_path = optarg; break;
		case 'c': conns = atoi(optarg); break;
		case 'd': depth = atoi(optarg); break;
		case 't': seconds = atof(optarg); break;
		case 'm': merchants = atoi(optarg); break;
		case 'u': customers = atoi(optarg); break;
		case 'r': rate = atof(optarg); break;
		case 'n': setup = 0; break;
		default:
			printf("usage: dove-bench -s SOCKET [--conns N] [--depth D] "
			       "[--seconds S] [--merchants M] [--customers C] "
			       "[--rate R/s] [--no-setup]\n");
			return ch == 'h' ? 0 : 2;
		}
	}
	if (sock_path == NULL || conns < 1 || conns > 256 || depth < 1 ||
	    depth > 4096 || merchants < 1 || customers < 1 || seconds <= 0) {
		fprintf(stderr, "dove-bench: -s SOCKET needed; conns 1..256, "
				"depth 1..4096\n");
		return 2;
	}
	/* Zipf(1.1) over merchants: a handful take most of the orders. */
	zipf_cdf = zipf_cdf_make(merchants, 1.1);
	if (setup) {
		double t0 = now_s();
		create_accounts();
		printf("created %d accounts in %.2f s\n", 4 + merchants + customers,
		       now_s() - t0);
	}
	/* Ids above anything a previous run used: start from the clock. */
	next_id = (uint64_t)time(NULL) * 1000000ull;

	struct conn *cs = calloc((size_t)conns, sizeof(*cs));
	struct pollfd *pfd = calloc((size_t)conns, sizeof(*pfd));
	size_t lat_cap = 1 << 24, nlat = 0;
	double *lat = malloc(lat_cap * sizeof(double));
	for (int i = 0; i < conns; i++) {
		cs[i].fd = dial();
		cs[i].sent = calloc((size_t)depth, sizeof(double));
		cs[i].lines_of = calloc((size_t)depth, sizeof(int));
	}
	uint64_t ok = 0, err = 0, reasons[16] = { 0 };
	static const char *reason_names[] = { "insufficient_funds", "linked_failed",
					      "overloaded", "unavailable", "other" };
	double t0 = now_s(), end = t0 + seconds;
	double interval = rate > 0 ? (double)conns / rate : 0;
	double *next_send = calloc((size_t)conns, sizeof(double));
	for (;;) {
		double t = now_s();
		bool sending = t < end;
		int busy = 0;
		for (int i = 0; i < conns; i++) {
			struct conn *c = &cs[i];
			while (sending && c->inflight < depth &&
			       c->out_len + 256 < sizeof(c->out) &&
			       (interval == 0 || next_send[i] <= t)) {
				int slot = (c->head + c->inflight) % depth;
				c->lines_of[slot] = gen_request(c);
				c->sent[slot] = t;
				c->inflight++;
				if (interval > 0)
					next_send[i] = (next_send[i] > 0 ? next_send[i]
									 : t) +
						       interval;
			}
			busy += c->inflight;
			pfd[i].fd = c->fd;
			pfd[i].events = POLLIN | (c->out_len ? POLLOUT : 0);
		}
		if (!sending && busy == 0)
			break;
		poll(pfd, (nfds_t)conns, interval > 0 ? 1 : 100);
		t = now_s();
		for (int i = 0; i < conns; i++) {
			struct conn *c = &cs[i];
			if ((pfd[i].revents & POLLOUT) && c->out_len) {
				ssize_t w = send(c->fd, c->out, c->out_len,
						 MSG_NOSIGNAL | MSG_DONTWAIT);
				if (w > 0) {
					memmove(c->out, c->out + w,
						c->out_len - (size_t)w);
					c->out_len -= (size_t)w;
				}
			}
			if (!(pfd[i].revents & POLLIN))
				continue;
			ssize_t r = recv(c->fd, c->in + c->in_len,
					 sizeof(c->in) - c->in_len, MSG_DONTWAIT);
			if (r == 0) {
				fprintf(stderr, "dove-bench: doved closed a "
						"connection\n");
				return 3;
			}
			if (r < 0)
				continue;
			c->in_len += (size_t)r;
			char *p = c->in, *nl;
			while ((nl = memchr(p, '\n',
					    (size_t)(c->in + c->in_len - p)))) {
				int slot = c->head;
				bool is_ok = strncmp(p, "OK", 2) == 0;
				if (is_ok) {
					ok++;
				} else {
					err++;
					int k = strstr(p, "insufficient_funds") ? 0
						: strstr(p, "linked_failed")  ? 1
						: strstr(p, "overloaded")     ? 2
						: strstr(p, "unavailable")    ? 3
									       : 4;
					reasons[k]++;
				}
				p = nl + 1;
				if (--c->lines_of[slot] == 0) {
					if (nlat < lat_cap)
						lat[nlat++] = t - c->sent[slot];
					c->head = (c->head + 1) % depth;
					c->inflight--;
				}
			}
			memmove(c->in, p, (size_t)(c->in + c->in_len - p));
			c->in_len = (size_t)(c->in + c->in_len - p);
		}
	}
	double dt = now_s() - t0;
	qsort(lat, nlat, sizeof(double), cmp_double);
#define P(q) (nlat ? lat[(size_t)((double)(nlat - 1) * (q))] * 1e3 : 0.0)
	printf("\nworkload: %d connections x depth %d, %.1f s, %s\n", conns,
	       depth, dt, rate > 0 ? "fixed rate" : "flat out");
	printf("transfers answered  %llu (%.0f/s)\n",
	       (unsigned long long)(ok + err), (double)(ok + err) / dt);
	printf("accepted            %llu (%.0f/s)\n", (unsigned long long)ok,
	       (double)ok / dt);
	printf("refused             %llu:", (unsigned long long)err);
	for (int k = 0; k < 5; k++)
		if (reasons[k])
			printf(" %s %llu", reason_names[k],
			       (unsigned long long)reasons[k]);
	printf("\nlatency (request -> reply, a settle pair counts once), ms:\n"
	       "  p50 %.3f  p99 %.3f  p99.9 %.3f  max %.3f\n",
	       P(0.5), P(0.99), P(0.999), nlat ? lat[nlat - 1] * 1e3 : 0.0);
	int rc = check_money();
	return rc;
}
