/*
 * ring-bench - throughput and round-trip latency of Dove's rings against
 * the baselines they replace, in one run on the same machine, so the
 * ratios mean something on a shared, noisy host.
 *
 * Cases (8-byte items): SPSC push/pop, SPSC batched (64), MPMC 2P/2C and
 * 1P/2C, liburcu's wfcqueue (cds_wfcq) 1P/1C, and a pthread mutex +
 * condition variable bounded queue 1P/1C; ping-pong round trips through two
 * SPSC rings and through two mutex queues. Producer and consumer are pinned
 * to different cores when there are at least two.
 *
 *   ring-bench [--items N] [--rounds N]
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <urcu/wfcqueue.h>

#include "ring.h"

static uint64_t items = 10000000;
static int ncpu;

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
pin(int cpu)
{
	if (ncpu < 2)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu % ncpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void *
xalloc(size_t n)
{
	void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
	if (p == NULL) {
		perror("aligned_alloc");
		exit(1);
	}
	return p;
}

/* Consumers add up what they received; the total is checked. */
static uint64_t
expected_sum(uint64_t n)
{
	return n * (n - 1) / 2;
}

/* ---- SPSC ----------------------------------------------------------------- */

struct spsc_case {
	struct ring_spsc *r;
	uint32_t batch;      /* producer: 1 = push per item, else reserve n */
	uint32_t cons_batch; /* consumer: 1 = pop per item, else peek n */
	uint64_t sum;
};

static void *
spsc_prod(void *arg)
{
	struct spsc_case *c = arg;
	const struct ring_wait w = RING_WAIT_DEFAULT;
	pin(0);
	for (uint64_t i = 0; i < items;) {
		if (c->batch == 1) {
			if (ring_spsc_push(c->r, &i))
				i++;
			else
				ring_spsc_wait_writable(c->r, 1, &w, -1);
			continue;
		}
		uint64_t first;
		uint32_t want = items - i < c->batch ? (uint32_t)(items - i)
						   : c->batch;
		uint32_t n = ring_spsc_reserve(c->r, want, &first);
		if (n == 0) {
			ring_spsc_wait_writable(c->r, 1, &w, -1);
			continue;
		}
		for (uint32_t k = 0; k < n; k++)
			*(uint64_t *)ring_spsc_slot(c->r, first + k) = i + k;
		ring_spsc_publish(c->r);
		i += n;
	}
	return NULL;
}

static void *
spsc_cons(void *arg)
{
	struct spsc_case *c = arg;
	const struct ring_wait w = RING_WAIT_DEFAULT;
	pin(1);
	uint64_t sum = 0;
	for (uint64_t got = 0; got < items;) {
		if (c->cons_batch == 1) {
			uint64_t v;
			if (ring_spsc_pop(c->r, &v)) {
				sum += v;
				got++;
			} else {
				ring_spsc_wait_readable(c->r, &w, -1);
			}
			continue;
		}
		uint64_t first;
		uint32_t n = ring_spsc_peek(c->r, c->cons_batch, &first);
		if (n == 0) {
			ring_spsc_wait_readable(c->r, &w, -1);
			continue;
		}
		for (uint32_t k = 0; k < n; k++)
			sum += *(uint64_t *)ring_spsc_slot(c->r, first + k);
		ring_spsc_release(c->r);
		got += n;
	}
	c->sum = sum;
	return NULL;
}

static double
run_pair(void *(*prod)(void *), void *(*cons)(void *), void *arg)
{
	pthread_t p, c;
	double t0 = now_s();
	pthread_create(&c, NULL, cons, arg);
	pthread_create(&p, NULL, prod, arg);
	pthread_join(p, NULL);
	pthread_join(c, NULL);
	return now_s() - t0;
}

static double
bench_spsc(uint32_t batch, uint32_t cons_batch)
{
	size_t n = ring_spsc_bytes(4096, 8);
	struct spsc_case c = { .batch = batch, .cons_batch = cons_batch };
	ring_spsc_init(xalloc(n), n, 4096, 8, 0, &c.r);
	double t = run_pair(spsc_prod, spsc_cons, &c);
	if (c.sum != expected_sum(items)) {
		fprintf(stderr, "spsc: wrong sum\n");
		exit(1);
	}
	free(c.r);
	return t;
}

/* ---- MPMC ----------------------------------------------------------------- */

struct mpmc_case {
	struct ring_mpmc *r;
	uint32_t producers, consumers;
	_Atomic uint64_t consumed;
	_Atomic uint64_t sum;
};

struct mpmc_thread {
	struct mpmc_case *c;
	uint32_t id;
};

static void *
mpmc_prod(void *arg)
{
	struct mpmc_thread *t = arg;
	struct mpmc_case *c = t->c;
	const struct ring_wait w = RING_WAIT_DEFAULT;
	pin((int)t->id);
	/* Producer id takes every producers-th value, so the sum is known. */
	for (uint64_t i = t->id; i < items;) {
		uint64_t batch[16];
		uint32_t n = 0;
		for (uint64_t v = i; n < 16 && v < items; v += c->producers)
			batch[n++] = v;
		uint32_t done = 0;
		while (done < n) {
			uint32_t m = ring_mpmc_push(c->r, batch + done, n - done);
			if (m == 0)
				ring_mpmc_wait_writable(c->r, &w, 10);
			done += m;
		}
		i += (uint64_t)n * c->producers;
	}
	return NULL;
}

static void *
mpmc_cons(void *arg)
{
	struct mpmc_thread *t = arg;
	struct mpmc_case *c = t->c;
	const struct ring_wait w = RING_WAIT_DEFAULT;
	pin((int)t->id + 1);
	uint64_t sum = 0, got = 0;
	while (atomic_load_explicit(&c->consumed, memory_order_relaxed) < items) {
		uint64_t buf[16];
		uint32_t n = ring_mpmc_pop(c->r, buf, 16);
		if (n == 0) {
			ring_mpmc_wait_readable(c->r, &w, 1);
			continue;
		}
		for (uint32_t k = 0; k < n; k++)
			sum += buf[k];
		got += n;
		atomic_fetch_add_explicit(&c->consumed, n, memory_order_relaxed);
	}
	atomic_fetch_add(&c->sum, sum);
	(void)got;
	return NULL;
}

static double
bench_mpmc(uint32_t producers, uint32_t consumers)
{
	size_t n = ring_mpmc_bytes(4096, 8);
	struct mpmc_case c = { .producers = producers, .consumers = consumers };
	ring_mpmc_init(xalloc(n), n, 4096, 8, 0, &c.r);
	pthread_t th[8];
	struct mpmc_thread args[8];
	uint32_t nt = 0;
	double t0 = now_s();
	for (uint32_t i = 0; i < consumers; i++, nt++) {
		args[nt] = (struct mpmc_thread){ &c, i };
		pthread_create(&th[nt], NULL, mpmc_cons, &args[nt]);
	}
	for (uint32_t i = 0; i < producers; i++, nt++) {
		args[nt] = (struct mpmc_thread){ &c, i };
		pthread_create(&th[nt], NULL, mpmc_prod, &args[nt]);
	}
	for (uint32_t i = 0; i < nt; i++)
		pthread_join(th[i], NULL);
	double t = now_s() - t0;
	if (atomic_load(&c.sum) != expected_sum(items)) {
		fprintf(stderr, "mpmc: wrong sum\n");
		exit(1);
	}
	free(c.r);
	return t;
}

/* ---- baseline: liburcu wfcqueue ----------------------------------------- */

struct wfcq_item {
	struct cds_wfcq_node node;
	uint64_t v;
};

struct wfcq_case {
	struct cds_wfcq_head head;
	struct cds_wfcq_tail tail;
	struct wfcq_item *pool; /* preallocated: we measure the queue only */
	uint64_t sum;
};

static void *
wfcq_prod(void *arg)
{
	struct wfcq_case *c = arg;
	pin(0);
	for (uint64_t i = 0; i < items; i++) {
		struct wfcq_item *it = &c->pool[i];
		cds_wfcq_node_init(&it->node);
		it->v = i;
		cds_wfcq_enqueue(&c->head, &c->tail, &it->node);
	}
	return NULL;
}

static void *
wfcq_cons(void *arg)
{
	struct wfcq_case *c = arg;
	pin(1);
	uint64_t sum = 0;
	unsigned idle = 0;
	for (uint64_t got = 0; got < items;) {
		/* Single consumer: the non-blocking dequeue needs no lock
		 * when nobody else dequeues or splices. */
		struct cds_wfcq_node *n =
			__cds_wfcq_dequeue_nonblocking(&c->head, &c->tail);
		if (n == NULL || n == CDS_WFCQ_WOULDBLOCK) {
			/* Poll as our rings' default wait does before it
			 * sleeps, so the comparison is of the queues. */
			if (++idle < 256)
				__builtin_ia32_pause();
			else
				sched_yield(), idle = 0;
			continue;
		}
		idle = 0;
		sum += caa_container_of(n, struct wfcq_item, node)->v;
		got++;
	}
	c->sum = sum;
	return NULL;
}

static double
bench_wfcq(void)
{
	struct wfcq_case c;
	cds_wfcq_init(&c.head, &c.tail);
	c.pool = calloc(items, sizeof(*c.pool));
	if (c.pool == NULL) {
		perror("calloc");
		exit(1);
	}
	double t = run_pair(wfcq_prod, wfcq_cons, &c);
	if (c.sum != expected_sum(items)) {
		fprintf(stderr, "wfcq: wrong sum\n");
		exit(1);
	}
	free(c.pool);
	return t;
}

/* ---- baseline: mutex + condition variable bounded queue ----------------- */

struct mq {
	pthread_mutex_t mu;
	pthread_cond_t not_empty, not_full;
	uint64_t buf[4096];
	uint64_t head, tail;
};

static void
mq_init(struct mq *q)
{
	pthread_mutex_init(&q->mu, NULL);
	pthread_cond_init(&q->not_empty, NULL);
	pthread_cond_init(&q->not_full, NULL);
	q->head = q->tail = 0;
}

static void
mq_push(struct mq *q, uint64_t v)
{
	pthread_mutex_lock(&q->mu);
	while (q->tail - q->head == 4096)
		pthread_cond_wait(&q->not_full, &q->mu);
	q->buf[q->tail++ % 4096] = v;
	pthread_cond_signal(&q->not_empty);
	pthread_mutex_unlock(&q->mu);
}

static uint64_t
mq_pop(struct mq *q)
{
	pthread_mutex_lock(&q->mu);
	while (q->tail == q->head)
		pthread_cond_wait(&q->not_empty, &q->mu);
	uint64_t v = q->buf[q->head++ % 4096];
	pthread_cond_signal(&q->not_full);
	pthread_mutex_unlock(&q->mu);
	return v;
}

struct mq_case {
	struct mq q;
	uint64_t sum;
};

static void *
mq_prod(void *arg)
{
	struct mq_case *c = arg;
	pin(0);
	for (uint64_t i = 0; i < items; i++)
		mq_push(&c->q, i);
	return NULL;
}

static void *
mq_cons(void *arg)
{
	struct mq_case *c = arg;
	pin(1);
	uint64_t sum = 0;
	for (uint64_t i = 0; i < items; i++)
		sum += mq_pop(&c->q);
	c->sum = sum;
	return NULL;
}

static double
bench_mq(void)
{
	struct mq_case *c = xalloc(sizeof(*c));
	mq_init(&c->q);
	double t = run_pair(mq_prod, mq_cons, c);
	if (c->sum != expected_sum(items)) {
		fprintf(stderr, "mutex queue: wrong sum\n");
		exit(1);
	}
	free(c);
	return t;
}

/* ---- ping-pong ------------------------------------------------------------ */

static uint64_t pingpongs = 1000000;

struct pp_case {
	struct ring_spsc *ab, *ba;
	struct mq *qab, *qba;
};

static void *
pp_ring_echo(void *arg)
{
	struct pp_case *c = arg;
	const struct ring_wait w = { .spins = 100000, .yields = 100 };
	pin(1);
	for (uint64_t i = 0; i < pingpongs; i++) {
		uint64_t v;
		while (!ring_spsc_pop(c->ab, &v))
			ring_spsc_wait_readable(c->ab, &w, -1);
		while (!ring_spsc_push(c->ba, &v))
			;
	}
	return NULL;
}

static double
bench_pp_ring(void)
{
	size_t n = ring_spsc_bytes(64, 8);
	struct pp_case c;
	ring_spsc_init(xalloc(n), n, 64, 8, 0, &c.ab);
	ring_spsc_init(xalloc(n), n, 64, 8, 0, &c.ba);
	const struct ring_wait w = { .spins = 100000, .yields = 100 };
	pthread_t t;
	pthread_create(&t, NULL, pp_ring_echo, &c);
	pin(0);
	double t0 = now_s();
	for (uint64_t i = 0; i < pingpongs; i++) {
		uint64_t v = i;
		while (!ring_spsc_push(c.ab, &v))
			;
		while (!ring_spsc_pop(c.ba, &v))
			ring_spsc_wait_readable(c.ba, &w, -1);
		if (v != i)
			exit(1);
	}
	double dt = now_s() - t0;
	pthread_join(t, NULL);
	free(c.ab);
	free(c.ba);
	return dt;
}

static void *
pp_mq_echo(void *arg)
{
	struct pp_case *c = arg;
	pin(1);
	for (uint64_t i = 0; i < pingpongs; i++)
		mq_push(c->qba, mq_pop(c->qab));
	return NULL;
}

static double
bench_pp_mq(void)
{
	struct pp_case c = { .qab = xalloc(sizeof(struct mq)),
			     .qba = xalloc(sizeof(struct mq)) };
	mq_init(c.qab);
	mq_init(c.qba);
	pthread_t t;
	pthread_create(&t, NULL, pp_mq_echo, &c);
	pin(0);
	double t0 = now_s();
	for (uint64_t i = 0; i < pingpongs; i++) {
		mq_push(c.qab, i);
		if (mq_pop(c.qba) != i)
			exit(1);
	}
	double dt = now_s() - t0;
	pthread_join(t, NULL);
	free(c.qab);
	free(c.qba);
	return dt;
}

/* ---- driver ----------------------------------------------------------------- */

struct result {
	const char *name;
	double best_s; /* best of rounds: least disturbed by neighbours */
};

int
main(int argc, char **argv)
{
	int rounds = 3;
	static const struct option opts[] = {
		{ "items", required_argument, NULL, 'n' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "n:r:h", opts, NULL)) != -1) {
		switch (ch) {
		case 'n': items = strtoull(optarg, NULL, 10); break;
		case 'r': rounds = atoi(optarg); break;
		default:
			printf("usage: ring-bench [--items N] [--rounds N]\n");
			return ch == 'h' ? 0 : 2;
		}
	}
	if (items < 1000 || rounds < 1) {
		fprintf(stderr, "ring-bench: --items >= 1000, --rounds >= 1\n");
		return 2;
	}
	ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
	pingpongs = items / 100;

	enum { SPSC, SPSC_DRAIN, SPSC64, MPMC22, MPMC12, WFCQ, MUTEX, PP_RING, PP_MUTEX, N };
	struct result res[N] = {
		[SPSC] = { "SPSC push/pop (1P/1C)", 1e9 },
		[SPSC_DRAIN] = { "SPSC push, consumer drains", 1e9 },
		[SPSC64] = { "SPSC batched 64 (1P/1C)", 1e9 },
		[MPMC22] = { "MPMC 2P/2C, batches <= 16", 1e9 },
		[MPMC12] = { "MPMC 1P/2C, batches <= 16", 1e9 },
		[WFCQ] = { "liburcu wfcqueue (1P/1C)", 1e9 },
		[MUTEX] = { "mutex+condvar queue (1P/1C)", 1e9 },
		[PP_RING] = { "ping-pong via 2 SPSC rings", 1e9 },
		[PP_MUTEX] = { "ping-pong via 2 mutex queues", 1e9 },
	};
	/* Interleave the cases each round so a burst of noise hits all. */
	for (int r = 0; r < rounds; r++) {
		double t[N];
		t[SPSC] = bench_spsc(1, 1);
		t[SPSC_DRAIN] = bench_spsc(1, 4096);
		t[SPSC64] = bench_spsc(64, 64);
		t[MPMC22] = bench_mpmc(2, 2);
		t[MPMC12] = bench_mpmc(1, 2);
		t[WFCQ] = bench_wfcq();
		t[MUTEX] = bench_mq();
		t[PP_RING] = bench_pp_ring();
		t[PP_MUTEX] = bench_pp_mq();
		for (int i = 0; i < N; i++)
			if (t[i] < res[i].best_s)
				res[i].best_s = t[i];
	}

	printf("ring-bench: %llu items of 8 bytes, %llu round trips, best of "
	       "%d rounds, %d CPUs\n\n",
	       (unsigned long long)items, (unsigned long long)pingpongs, rounds,
	       ncpu);
	printf("%-32s %14s %10s\n", "case", "items/s", "ns/item");
	for (int i = 0; i < PP_RING; i++)
		printf("%-32s %14.0f %10.2f\n", res[i].name,
		       (double)items / res[i].best_s,
		       res[i].best_s * 1e9 / (double)items);
	printf("\n%-32s %14s %10s\n", "case", "round trips/s", "ns/RTT");
	for (int i = PP_RING; i < N; i++)
		printf("%-32s %14.0f %10.1f\n", res[i].name,
		       (double)pingpongs / res[i].best_s,
		       res[i].best_s * 1e9 / (double)pingpongs);

	double spsc_vs_mutex = res[MUTEX].best_s / res[SPSC].best_s;
	double spsc_vs_wfcq = res[WFCQ].best_s / res[SPSC].best_s;
	double b64_rate = (double)items / res[SPSC64].best_s;
	printf("\nratios (higher is better for Dove):\n");
	printf("  SPSC vs mutex queue            %8.1fx  (target >= 10x)\n",
	       spsc_vs_mutex);
	printf("  SPSC vs wfcqueue               %8.1fx  (target >= 2x)\n",
	       spsc_vs_wfcq);
	printf("  SPSC batched vs mutex queue    %8.1fx\n",
	       res[MUTEX].best_s / res[SPSC64].best_s);
	printf("  SPSC batched vs wfcqueue       %8.1fx\n",
	       res[WFCQ].best_s / res[SPSC64].best_s);
	printf("  MPMC 2P/2C vs mutex queue      %8.1fx\n",
	       res[MUTEX].best_s / res[MPMC22].best_s);
	printf("  ping-pong: mutex RTT / ring RTT %7.1fx\n",
	       res[PP_MUTEX].best_s / res[PP_RING].best_s);
	printf("  SPSC batched                   %8.0f M items/s (target >= "
	       "100 M)\n",
	       b64_rate / 1e6);
	return 0;
}
