/*
 * check_ring.c - the rings: single-threaded semantics at every boundary,
 * multi-threaded stress on real threads (exact order for SPSC, exactly-once
 * and per-producer order for MPMC), the eventcount's sleeping and waking,
 * and the shared-memory segment across real processes, with a producer
 * killed by SIGKILL in the middle of a batch.
 *
 * DOVE_STRESS_ITEMS overrides the SPSC stress count (default 50 million);
 * DOVE_STRESS_SCALE multiplies the MPMC and cross-process counts.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "ring.h"

static uint64_t
env_u64(const char *name, uint64_t def)
{
	const char *v = getenv(name);
	return v && *v ? strtoull(v, NULL, 10) : def;
}

static void *
xalloc(size_t n)
{
	void *p = aligned_alloc(DOVE_CACHELINE,
				(n + DOVE_CACHELINE - 1) & ~(size_t)63);
	ck_assert_ptr_nonnull(p);
	return p;
}

static struct ring_spsc *
spsc_new(uint32_t count, uint32_t size)
{
	size_t n = ring_spsc_bytes(count, size);
	ck_assert_uint_gt(n, 0);
	struct ring_spsc *r;
	ck_assert_int_eq(ring_spsc_init(xalloc(n), n, count, size, 0, &r), 0);
	return r;
}

/* Fill slot of size bytes with a pattern derived from v. */
static void
fill(void *slot, uint32_t size, uint64_t v)
{
	uint64_t *w = slot;
	for (uint32_t i = 0; i < size / 8; i++)
		w[i] = v * 31 + i;
}

static void
check_fill(const void *slot, uint32_t size, uint64_t v)
{
	const uint64_t *w = slot;
	for (uint32_t i = 0; i < size / 8; i++)
		ck_assert_uint_eq(w[i], v * 31 + i);
}

/* ---- SPSC, one thread ---------------------------------------------------- */

START_TEST(spsc_init_rejects_bad_params)
{
	static _Alignas(64) unsigned char mem[1 << 16];
	struct ring_spsc *r;
	/* Tried: count not a power of two, count 1, slot size 0, 7, 12,
	 * 65544, memory one byte short, misaligned memory. */
	ck_assert_int_eq(ring_spsc_init(mem, sizeof(mem), 12, 8, 0, &r), -EINVAL);
	ck_assert_int_eq(ring_spsc_init(mem, sizeof(mem), 1, 8, 0, &r), -EINVAL);
	ck_assert_int_eq(ring_spsc_init(mem, sizeof(mem), 8, 0, 0, &r), -EINVAL);
	ck_assert_int_eq(ring_spsc_init(mem, sizeof(mem), 8, 7, 0, &r), -EINVAL);
	ck_assert_int_eq(ring_spsc_init(mem, sizeof(mem), 8, 12, 0, &r), -EINVAL);
	ck_assert_int_eq(ring_spsc_init(mem, sizeof(mem), 2, 65544, 0, &r),
			 -EINVAL);
	size_t need = ring_spsc_bytes(16, 64);
	ck_assert_int_eq(ring_spsc_init(mem, need - 1, 16, 64, 0, &r), -EINVAL);
	ck_assert_int_eq(ring_spsc_init(mem + 8, need, 16, 64, 0, &r), -EINVAL);
	ck_assert_int_eq(ring_spsc_init(mem, need, 16, 64, 0, &r), 0);
	ck_assert_uint_eq(ring_spsc_bytes(16, 64), 5 * 64 + 16 * 64);
}
END_TEST

START_TEST(spsc_empty_and_full)
{
	enum { CAP = 64 };
	struct ring_spsc *r = spsc_new(CAP, 8);
	uint64_t v, first;
	ck_assert(!ring_spsc_pop(r, &v));
	ck_assert_uint_eq(ring_spsc_peek(r, CAP, &first), 0);
	for (uint64_t i = 0; i < CAP; i++)
		ck_assert(ring_spsc_push(r, &i));
	v = 999;
	ck_assert(!ring_spsc_push(r, &v)); /* full at exactly CAP */
	ck_assert_uint_eq(ring_spsc_reserve(r, 1, &first), 0);
	ck_assert(ring_spsc_pop(r, &v));
	ck_assert_uint_eq(v, 0);
	ck_assert(ring_spsc_push(r, &v)); /* one slot freed, one fits */
	ck_assert(!ring_spsc_push(r, &v));
	for (uint64_t i = 1; i < CAP; i++) {
		ck_assert(ring_spsc_pop(r, &v));
		ck_assert_uint_eq(v, i);
	}
	ck_assert(ring_spsc_pop(r, &v));
	ck_assert_uint_eq(v, 0);
	ck_assert(!ring_spsc_pop(r, &v));
	free(r);
}
END_TEST

/* Reserve n for n in {0, 1, cap-1, cap, cap+1} on an empty ring. */
START_TEST(spsc_reserve_boundaries)
{
	enum { CAP = 32 };
	static const uint32_t ask[] = { 0, 1, CAP - 1, CAP, CAP + 1 };
	static const uint32_t got[] = { 0, 1, CAP - 1, CAP, CAP };
	struct ring_spsc *r = spsc_new(CAP, 16);
	uint64_t first;
	ck_assert_uint_eq(ring_spsc_reserve(r, ask[_i], &first), got[_i]);
	ck_assert_uint_eq(first, 0);
	for (uint32_t k = 0; k < got[_i]; k++)
		fill(ring_spsc_slot(r, first + k), 16, k);
	ring_spsc_publish(r);
	ck_assert_uint_eq(ring_spsc_peek(r, CAP + 5, &first), got[_i]);
	for (uint32_t k = 0; k < got[_i]; k++)
		check_fill(ring_spsc_slot(r, first + k), 16, k);
	ring_spsc_release(r);
	free(r);
}
END_TEST

/* Every batch size 1..capacity, for slot sizes 8..256, wrapping the ring
 * many times; peeks in chunks of another size so batches straddle. */
static const uint32_t slot_sizes[] = { 8, 16, 24, 40, 64, 128, 256 };

START_TEST(spsc_batches_wrap)
{
	enum { CAP = 64 };
	uint32_t size = slot_sizes[_i];
	struct ring_spsc *r = spsc_new(CAP, size);
	uint64_t next_in = 0, next_out = 0;
	for (uint32_t n = 1; n <= CAP; n++) {
		for (int round = 0; round < 5; round++) {
			uint64_t first;
			ck_assert_uint_eq(ring_spsc_reserve(r, n, &first), n);
			ck_assert_uint_eq(first, next_in);
			for (uint32_t k = 0; k < n; k++)
				fill(ring_spsc_slot(r, first + k), size,
				     next_in + k);
			ring_spsc_publish(r);
			next_in += n;
			uint32_t chunk = (n * 7) % CAP + 1;
			while (next_out < next_in) {
				uint32_t m = ring_spsc_peek(r, chunk, &first);
				ck_assert_uint_gt(m, 0);
				ck_assert_uint_eq(first, next_out);
				for (uint32_t k = 0; k < m; k++)
					check_fill(ring_spsc_slot(r, first + k),
						   size, next_out + k);
				ring_spsc_release(r);
				next_out += m;
			}
		}
	}
	/* Wrapped: the counters went far past the slot count. */
	ck_assert_uint_gt(next_out, 100 * CAP);
	free(r);
}
END_TEST

/* Several peeks before one release: the producer still sees them taken. */
START_TEST(spsc_peek_then_release_once)
{
	struct ring_spsc *r = spsc_new(8, 8);
	uint64_t first, v;
	for (uint64_t i = 0; i < 8; i++)
		ck_assert(ring_spsc_push(r, &i));
	ck_assert_uint_eq(ring_spsc_peek(r, 3, &first), 3);
	ck_assert_uint_eq(first, 0);
	ck_assert_uint_eq(ring_spsc_peek(r, 3, &first), 3);
	ck_assert_uint_eq(first, 3);
	/* Not released yet: still full for the producer. */
	ck_assert(!ring_spsc_push(r, &v));
	ring_spsc_release(r);
	ck_assert_uint_eq(ring_spsc_reserve(r, 8, &first), 6);
	free(r);
}
END_TEST

/* A tail no producer could have written (shared memory scribbled on):
 * the consumer stops and says so; it never reads past the ring. */
START_TEST(spsc_corrupt_tail_breaks_ring)
{
	struct ring_spsc *r = spsc_new(8, 8);
	uint64_t first;
	atomic_store(&r->tail, 1000);
	ck_assert_uint_eq(ring_spsc_peek(r, 8, &first), 0);
	ck_assert(ring_spsc_broken(r));
	free(r);
}
END_TEST

/* ---- SPSC, two threads ------------------------------------------------- */

struct spsc_stress {
	struct ring_spsc *r;
	uint64_t items;
	uint32_t batch; /* 1 = push/pop, else reserve/peek up to batch */
};

static void *
spsc_producer(void *arg)
{
	struct spsc_stress *s = arg;
	const struct ring_wait w = RING_WAIT_DEFAULT;
	uint64_t i = 0;
	while (i < s->items) {
		if (s->batch == 1) {
			if (!ring_spsc_push(s->r, &i)) {
				ring_spsc_wait_writable(s->r, 1, &w, -1);
				continue;
			}
			i++;
			continue;
		}
		uint64_t first;
		uint32_t want = s->items - i < s->batch ? (uint32_t)(s->items - i)
						       : s->batch;
		uint32_t n = ring_spsc_reserve(s->r, want, &first);
		if (n == 0) {
			ring_spsc_wait_writable(s->r, 1, &w, -1);
			continue;
		}
		for (uint32_t k = 0; k < n; k++)
			*(uint64_t *)ring_spsc_slot(s->r, first + k) = i + k;
		ring_spsc_publish(s->r);
		i += n;
	}
	return NULL;
}

static void
spsc_stress_run(uint64_t items, uint32_t batch)
{
	struct spsc_stress s = { spsc_new(1024, 8), items, batch };
	const struct ring_wait w = RING_WAIT_DEFAULT;
	pthread_t t;
	ck_assert_int_eq(pthread_create(&t, NULL, spsc_producer, &s), 0);
	uint64_t expect = 0;
	while (expect < items) {
		uint64_t first;
		uint32_t n = ring_spsc_peek(s.r, batch == 1 ? 1 : 256, &first);
		if (n == 0) {
			ring_spsc_wait_readable(s.r, &w, -1);
			continue;
		}
		for (uint32_t k = 0; k < n; k++) {
			uint64_t v = *(uint64_t *)ring_spsc_slot(s.r, first + k);
			if (v != expect)
				ck_abort_msg("item %llu arrived as %llu",
					     (unsigned long long)expect,
					     (unsigned long long)v);
			expect++;
		}
		ring_spsc_release(s.r);
	}
	pthread_join(t, NULL);
	uint64_t first;
	ck_assert_uint_eq(ring_spsc_peek(s.r, 1, &first), 0);
	free(s.r);
}

START_TEST(spsc_stress_batched)
{
	spsc_stress_run(env_u64("DOVE_STRESS_ITEMS", 50000000), 64);
}
END_TEST

START_TEST(spsc_stress_single)
{
	spsc_stress_run(env_u64("DOVE_STRESS_ITEMS", 50000000) / 5, 1);
}
END_TEST

/* ---- MPMC ----------------------------------------------------------------- */

START_TEST(mpmc_single_thread_semantics)
{
	enum { CAP = 16 };
	size_t n = ring_mpmc_bytes(CAP, 24);
	struct ring_mpmc *r;
	ck_assert_int_eq(ring_mpmc_init(xalloc(n), n, CAP, 24, 0, &r), 0);
	uint64_t in[3 * (CAP + 1)], out[3 * (CAP + 1)];
	for (uint64_t i = 0; i < 3 * (CAP + 1); i++)
		in[i] = i;
	ck_assert_uint_eq(ring_mpmc_pop(r, out, 1), 0); /* empty */
	/* capacity + 1 items: a prefix of capacity goes in. */
	ck_assert_uint_eq(ring_mpmc_push(r, in, CAP + 1), CAP);
	ck_assert_uint_eq(ring_mpmc_push(r, in, 1), 0); /* full */
	ck_assert_uint_eq(ring_mpmc_pop(r, out, CAP + 1), CAP);
	ck_assert_int_eq(memcmp(in, out, CAP * 24), 0);
	/* Wrap many times with every batch size. */
	for (uint32_t b = 1; b <= CAP; b++) {
		for (int round = 0; round < 3; round++) {
			ck_assert_uint_eq(ring_mpmc_push(r, in, b), b);
			ck_assert_uint_eq(ring_mpmc_pop(r, out, CAP), b);
			ck_assert_int_eq(memcmp(in, out, (size_t)b * 24), 0);
		}
	}
	free(r);
	void *mem = xalloc(n);
	ck_assert_int_eq(ring_mpmc_init(mem, n, 15, 24, 0, &r), -EINVAL);
	free(mem);
}
END_TEST

struct mpmc_stress {
	struct ring_mpmc *r;
	uint32_t producers, consumers;
	uint64_t per_producer;
	_Atomic uint64_t consumed;
	uint64_t total;
	/* counts[p][seq]: deliveries of item (p, seq) */
	_Atomic uint8_t *counts[4];
};

struct mpmc_arg {
	struct mpmc_stress *s;
	uint32_t id;
};

static void *
mpmc_producer(void *arg)
{
	struct mpmc_arg *a = arg;
	struct mpmc_stress *s = a->s;
	const struct ring_wait w = RING_WAIT_DEFAULT;
	uint64_t batch[16];
	uint64_t seq = 0;
	unsigned rnd = a->id * 7919 + 1;
	while (seq < s->per_producer) {
		uint32_t n = (uint32_t)(rand_r(&rnd) % 16) + 1;
		if (n > s->per_producer - seq)
			n = (uint32_t)(s->per_producer - seq);
		for (uint32_t k = 0; k < n; k++)
			batch[k] = (uint64_t)a->id << 48 | (seq + k);
		uint32_t done = 0;
		while (done < n) {
			uint32_t m = ring_mpmc_push(s->r, batch + done, n - done);
			if (m == 0)
				ring_mpmc_wait_writable(s->r, &w, 50);
			done += m;
		}
		seq += n;
	}
	return NULL;
}

static void *
mpmc_consumer(void *arg)
{
	struct mpmc_arg *a = arg;
	struct mpmc_stress *s = a->s;
	const struct ring_wait w = RING_WAIT_DEFAULT;
	uint64_t last[4] = { 0 };
	bool seen[4] = { false };
	uint64_t items[16];
	while (atomic_load(&s->consumed) < s->total) {
		uint32_t n = ring_mpmc_pop(s->r, items, 16);
		if (n == 0) {
			ring_mpmc_wait_readable(s->r, &w, 10);
			continue;
		}
		/* No ck_assert in this loop: each one is a write(2) to
		 * Check's parent, which would make this a syscall benchmark. */
		for (uint32_t k = 0; k < n; k++) {
			uint32_t p = (uint32_t)(items[k] >> 48);
			uint64_t seq = items[k] & ((1ull << 48) - 1);
			if (p >= s->producers || seq >= s->per_producer)
				ck_abort_msg("impossible item %#llx",
					     (unsigned long long)items[k]);
			/* Per-producer order holds for each consumer. */
			if (seen[p] && seq <= last[p])
				ck_abort_msg("producer %u: %llu after %llu", p,
					     (unsigned long long)seq,
					     (unsigned long long)last[p]);
			seen[p] = true;
			last[p] = seq;
			atomic_fetch_add(&s->counts[p][seq], 1);
		}
		atomic_fetch_add(&s->consumed, n);
	}
	return NULL;
}

static const uint32_t mpmc_shapes[][2] = { { 2, 2 }, { 3, 3 }, { 4, 4 },
					   { 2, 4 }, { 4, 2 } };

START_TEST(mpmc_stress_exactly_once)
{
	struct mpmc_stress s = {
		.producers = mpmc_shapes[_i][0],
		.consumers = mpmc_shapes[_i][1],
		.per_producer = 500000 * env_u64("DOVE_STRESS_SCALE", 1),
	};
	s.total = s.per_producer * s.producers;
	size_t n = ring_mpmc_bytes(256, 8);
	ck_assert_int_eq(ring_mpmc_init(xalloc(n), n, 256, 8, 0, &s.r), 0);
	for (uint32_t p = 0; p < s.producers; p++)
		s.counts[p] = calloc(s.per_producer, 1);
	pthread_t th[8];
	struct mpmc_arg args[8];
	uint32_t nt = 0;
	for (uint32_t c = 0; c < s.consumers; c++, nt++) {
		args[nt] = (struct mpmc_arg){ &s, c };
		ck_assert_int_eq(pthread_create(&th[nt], NULL, mpmc_consumer,
						&args[nt]),
				 0);
	}
	for (uint32_t p = 0; p < s.producers; p++, nt++) {
		args[nt] = (struct mpmc_arg){ &s, p };
		ck_assert_int_eq(pthread_create(&th[nt], NULL, mpmc_producer,
						&args[nt]),
				 0);
	}
	for (uint32_t t = 0; t < nt; t++)
		pthread_join(th[t], NULL);
	ck_assert_uint_eq(atomic_load(&s.consumed), s.total);
	for (uint32_t p = 0; p < s.producers; p++) {
		for (uint64_t q = 0; q < s.per_producer; q++)
			if (s.counts[p][q] != 1)
				ck_abort_msg("item (%u, %llu) delivered %u times",
					     p, (unsigned long long)q,
					     s.counts[p][q]);
		free(s.counts[p]);
	}
	uint64_t out;
	ck_assert_uint_eq(ring_mpmc_pop(s.r, &out, 1), 0);
	free(s.r);
}
END_TEST

/* ---- waiting ---------------------------------------------------------------- */

static void *
late_push(void *arg)
{
	struct ring_spsc *r = arg;
	usleep(100000);
	uint64_t v = 42;
	ck_assert(ring_spsc_push(r, &v));
	return NULL;
}

/* _i = 0: in-process (asymmetric membarrier); 1: RING_SHARED (fence). */
START_TEST(wait_sleeps_and_wakes)
{
	size_t bytes = ring_spsc_bytes(8, 8);
	struct ring_spsc *r;
	ck_assert_int_eq(ring_spsc_init(xalloc(bytes), bytes, 8, 8,
					_i ? RING_SHARED : 0, &r),
			 0);
	ck_assert_uint_eq(r->readable.mode,
			  _i ? RING_EVENT_FENCE : RING_EVENT_ASYM);
	const struct ring_wait w = { .spins = 10, .yields = 2 };
	/* Nothing comes: the wait times out after about 50 ms. */
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ck_assert(!ring_spsc_wait_readable(r, &w, 50));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long ms = (t1.tv_sec - t0.tv_sec) * 1000 +
		  (t1.tv_nsec - t0.tv_nsec) / 1000000;
	ck_assert_int_ge(ms, 45);
	ck_assert_uint_eq(atomic_load(&r->readable.waiters), 0);

	/* A push from another thread 100 ms later wakes the sleeper: the
	 * producer saw a waiter and bumped the futex word. */
	pthread_t t;
	uint32_t seq0 = atomic_load(&r->readable.seq);
	ck_assert_int_eq(pthread_create(&t, NULL, late_push, r), 0);
	ck_assert(ring_spsc_wait_readable(r, &w, 5000));
	pthread_join(t, NULL);
	ck_assert_uint_gt(atomic_load(&r->readable.seq), seq0);
	uint64_t v;
	ck_assert(ring_spsc_pop(r, &v));
	ck_assert_uint_eq(v, 42);
	free(r);
}
END_TEST

START_TEST(notify_without_sleeper_makes_no_syscall)
{
	struct ring_spsc *r = spsc_new(1024, 8);
	/* Nobody waits: the futex word never moves, so no FUTEX_WAKE was
	 * issued (notify only calls futex after bumping it). */
	for (uint64_t i = 0; i < 1000; i++) {
		ck_assert(ring_spsc_push(r, &i));
		uint64_t v;
		ck_assert(ring_spsc_pop(r, &v));
	}
	ck_assert_uint_eq(atomic_load(&r->readable.seq), 0);
	ck_assert_uint_eq(atomic_load(&r->writable.seq), 0);
	free(r);
}
END_TEST

/* ---- shared memory across processes ------------------------------------- */

static char shm_name[64];
static const struct ring_shm_params shm_params = {
	.producers = 4,
	.req_slots = 256,
	.req_slot_size = 32,
	.cpl_slots = 256,
	.cpl_slot_size = 16,
};

static void
shm_setup(void)
{
	snprintf(shm_name, sizeof(shm_name), "/dove-test-%d", (int)getpid());
}

static void
shm_teardown(void)
{
	shm_unlink(shm_name);
}

START_TEST(shm_layout_mismatch_refused)
{
	ring_shm *srv, *cli;
	char err[512];
	ck_assert_int_eq(ring_shm_create(shm_name, &shm_params, &srv, err,
					 sizeof(err)),
			 0);
	/* Tried: a producer built for another request slot size. */
	struct ring_shm_params p = shm_params;
	p.req_slot_size = 64;
	ck_assert_int_eq(ring_shm_attach(shm_name, &p, &cli, err, sizeof(err)),
			 -DOVE_ELAYOUT);
	ck_assert_msg(strstr(err, "req_slot_size is 32 in the segment, this "
				  "producer expects 64"),
		      "%s", err);
	/* Tried: a segment of another layout version (poked by hand:
	 * version is the word after the 8-byte magic). */
	int fd = shm_open(shm_name, O_RDWR, 0);
	ck_assert_int_ge(fd, 0);
	uint32_t v = RING_SHM_VERSION + 1;
	ck_assert_int_eq(pwrite(fd, &v, 4, 8), 4);
	ck_assert_int_eq(ring_shm_attach(shm_name, &shm_params, &cli, err,
					 sizeof(err)),
			 -DOVE_ELAYOUT);
	ck_assert_msg(strstr(err, "version is 2 in the segment"), "%s", err);
	/* Tried: a segment too small to hold a header. */
	ck_assert_int_eq(ftruncate(fd, 16), 0);
	close(fd);
	ck_assert_int_eq(ring_shm_attach(shm_name, &shm_params, &cli, err,
					 sizeof(err)),
			 -DOVE_ELAYOUT);
	ck_assert_msg(strstr(err, "smaller than a header"), "%s", err);
	/* And no segment at all. */
	ring_shm_destroy(srv);
	ck_assert_int_eq(ring_shm_attach(shm_name, &shm_params, &cli, err,
					 sizeof(err)),
			 -ENOENT);
	ck_assert_msg(strstr(err, "is doved running?"), "%s", err);
}
END_TEST

START_TEST(shm_claim_all_slots_then_busy)
{
	ring_shm *srv, *cli;
	char err[512];
	ck_assert_int_eq(ring_shm_create(shm_name, &shm_params, &srv, err,
					 sizeof(err)),
			 0);
	ck_assert_int_eq(ring_shm_attach(shm_name, &shm_params, &cli, err,
					 sizeof(err)),
			 0);
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(ring_shm_claim(cli), i);
	ck_assert_int_eq(ring_shm_claim(cli), -EBUSY);
	/* Clean unclaim makes it DEAD, not FREE: only doved frees. */
	ring_shm_unclaim(cli, 2);
	ck_assert_int_eq(ring_shm_state(srv, 2), RING_SHM_DEAD);
	ck_assert_int_eq(ring_shm_claim(cli), -EBUSY);
	ck_assert_int_eq(ring_shm_free_slot(srv, 2), 0);
	ck_assert_int_eq(ring_shm_claim(cli), 2);
	/* Our own live slots are never reaped. */
	ck_assert_uint_eq(ring_shm_reap(srv), 0);
	ring_shm_detach(cli);
	ring_shm_destroy(srv);
}
END_TEST

/* Request item: seq and its complement, so a torn item is detectable. */
struct req {
	uint64_t seq, check, pad[2];
};

/*
 * Child: attach, claim, publish batches of 16 forever. Before publishing
 * batch number mid_batch it fills half of it, tells the parent over the
 * pipe and waits to be killed. mid_batch < 0: never stop.
 */
static void
producer_child(int wfd, long mid_batch)
{
	ring_shm *cli;
	char err[512];
	if (ring_shm_attach(shm_name, &shm_params, &cli, err, sizeof(err)) != 0)
		_exit(10);
	int slot = ring_shm_claim(cli);
	if (slot < 0)
		_exit(11);
	if (write(wfd, &slot, sizeof(slot)) != sizeof(slot))
		_exit(12);
	struct ring_spsc *r = ring_shm_requests(cli, (uint32_t)slot);
	const struct ring_wait w = RING_WAIT_DEFAULT;
	uint64_t seq = 0;
	for (long b = 0;; b++) {
		/* A short reservation is kept and extended until the batch
		 * has all 16 slots; they are consecutive. */
		uint64_t first, more;
		uint32_t have = ring_spsc_reserve(r, 16, &first);
		while (have < 16) {
			ring_spsc_wait_writable(r, 16 - have, &w, 100);
			have += ring_spsc_reserve(r, 16 - have, &more);
		}
		for (uint32_t k = 0; k < 16; k++) {
			struct req *q = ring_spsc_slot(r, first + k);
			q->seq = seq + k;
			q->check = ~(seq + k);
			if (b == mid_batch && k == 7) {
				int mid = -1;
				if (write(wfd, &mid, sizeof(mid)) != sizeof(mid))
					_exit(13);
				for (;;)
					pause();
			}
		}
		ring_spsc_publish_quiet(r);
		ring_shm_doorbell(cli);
		seq += 16;
	}
}

/* Parent: consume slot until the ring is empty and the child is known
 * dead; check every item. Returns how many were consumed. */
static uint64_t
consume_slot(ring_shm *srv, uint32_t slot, uint64_t expect)
{
	struct ring_spsc *r = ring_shm_requests(srv, slot);
	uint64_t first;
	uint32_t n;
	while ((n = ring_spsc_peek(r, 64, &first)) > 0) {
		for (uint32_t k = 0; k < n; k++) {
			struct req *q = ring_spsc_slot(r, first + k);
			if (q->seq != expect || q->check != ~expect)
				ck_abort_msg("item %llu arrived as %llu/%#llx",
					     (unsigned long long)expect,
					     (unsigned long long)q->seq,
					     (unsigned long long)q->check);
			expect++;
		}
		ring_spsc_release(r);
	}
	return expect;
}

START_TEST(shm_killed_producer_mid_batch)
{
	ring_shm *srv;
	char err[512];
	ck_assert_int_eq(ring_shm_create(shm_name, &shm_params, &srv, err,
					 sizeof(err)),
			 0);
	uint32_t rounds = (uint32_t)(8 * env_u64("DOVE_STRESS_SCALE", 1));
	unsigned rnd = 12345;
	for (uint32_t round = 0; round < rounds; round++) {
		int fds[2];
		ck_assert_int_eq(pipe(fds), 0);
		/* Even rounds: killed while half a batch is written. Odd
		 * rounds: killed at a random moment of a busy stream. */
		long mid = round % 2 == 0 ? (long)(rand_r(&rnd) % 40) : -1;
		pid_t pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			close(fds[0]);
			producer_child(fds[1], mid);
		}
		close(fds[1]);
		int slot;
		ck_assert_int_eq(read(fds[0], &slot, sizeof(slot)), sizeof(slot));
		ck_assert_int_ge(slot, 0);
		ck_assert_int_eq(ring_shm_state(srv, (uint32_t)slot),
				 RING_SHM_ACTIVE);

		uint64_t got = 0;
		if (mid >= 0) {
			/* Consume while it streams, until it says it is
			 * mid-batch (it needs room to get there). */
			int msg;
			for (;;) {
				got = consume_slot(srv, (uint32_t)slot, got);
				struct timeval tv = { 0, 1000 };
				fd_set set;
				FD_ZERO(&set);
				FD_SET(fds[0], &set);
				if (select(fds[0] + 1, &set, NULL, NULL, &tv) > 0)
					break;
			}
			ck_assert_int_eq(read(fds[0], &msg, sizeof(msg)),
					 sizeof(msg));
			ck_assert_int_eq(msg, -1);
		} else {
			for (int k = 0; k < (int)(rand_r(&rnd) % 50) + 1; k++) {
				got = consume_slot(srv, (uint32_t)slot, got);
				usleep(100);
			}
		}
		kill(pid, SIGKILL);
		ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
		close(fds[0]);

		/* The owner is dead: reap marks the slot, we drain what it
		 * fully published, then free it. */
		ck_assert_uint_eq(ring_shm_reap(srv), 1);
		ck_assert_int_eq(ring_shm_state(srv, (uint32_t)slot),
				 RING_SHM_DEAD);
		got = consume_slot(srv, (uint32_t)slot, got);
		/* Whole batches only: the half-written one never shows. */
		ck_assert_uint_eq(got % 16, 0);
		if (mid >= 0)
			ck_assert_uint_eq(got, (uint64_t)mid * 16);
		ck_assert_int_eq(ring_shm_free_slot(srv, (uint32_t)slot), 0);
		ck_assert_int_eq(ring_shm_state(srv, (uint32_t)slot),
				 RING_SHM_FREE);
	}
	ring_shm_destroy(srv);
}
END_TEST

/* A slot with published but unconsumed requests is not freed. */
START_TEST(shm_free_waits_for_drain)
{
	ring_shm *srv, *cli;
	char err[512];
	ck_assert_int_eq(ring_shm_create(shm_name, &shm_params, &srv, err,
					 sizeof(err)),
			 0);
	ck_assert_int_eq(ring_shm_attach(shm_name, &shm_params, &cli, err,
					 sizeof(err)),
			 0);
	int slot = ring_shm_claim(cli);
	ck_assert_int_ge(slot, 0);
	struct req q = { 0, ~0ull, { 0, 0 } };
	ck_assert(ring_spsc_push(ring_shm_requests(cli, (uint32_t)slot), &q));
	ring_shm_unclaim(cli, (uint32_t)slot);
	ck_assert_int_eq(ring_shm_free_slot(srv, (uint32_t)slot), -EAGAIN);
	ck_assert_uint_eq(consume_slot(srv, (uint32_t)slot, 0), 1);
	ck_assert_int_eq(ring_shm_free_slot(srv, (uint32_t)slot), 0);
	ring_shm_detach(cli);
	ring_shm_destroy(srv);
}
END_TEST

static Suite *
ring_suite(void)
{
	Suite *s = suite_create("ring");
	TCase *tc = tcase_create("spsc");
	tcase_add_test(tc, spsc_init_rejects_bad_params);
	tcase_add_test(tc, spsc_empty_and_full);
	tcase_add_loop_test(tc, spsc_reserve_boundaries, 0, 5);
	tcase_add_loop_test(tc, spsc_batches_wrap, 0,
			    sizeof(slot_sizes) / sizeof(slot_sizes[0]));
	tcase_add_test(tc, spsc_peek_then_release_once);
	tcase_add_test(tc, spsc_corrupt_tail_breaks_ring);
	suite_add_tcase(s, tc);

	tc = tcase_create("stress");
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, spsc_stress_batched);
	tcase_add_test(tc, spsc_stress_single);
	tcase_add_loop_test(tc, mpmc_stress_exactly_once, 0,
			    sizeof(mpmc_shapes) / sizeof(mpmc_shapes[0]));
	suite_add_tcase(s, tc);

	tc = tcase_create("mpmc");
	tcase_add_test(tc, mpmc_single_thread_semantics);
	suite_add_tcase(s, tc);

	tc = tcase_create("wait");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, wait_sleeps_and_wakes, 0, 2);
	tcase_add_test(tc, notify_without_sleeper_makes_no_syscall);
	suite_add_tcase(s, tc);

	tc = tcase_create("shm");
	tcase_set_timeout(tc, 120);
	tcase_add_checked_fixture(tc, shm_setup, shm_teardown);
	tcase_add_test(tc, shm_layout_mismatch_refused);
	tcase_add_test(tc, shm_claim_all_slots_then_busy);
	tcase_add_test(tc, shm_killed_producer_mid_batch);
	tcase_add_test(tc, shm_free_waits_for_drain);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return dh_run_suite(ring_suite());
}
