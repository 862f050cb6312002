/*
 * ring.c - the out-of-line half of ring.h: the eventcount (futex), ring
 * initialisation, waits, and the MPMC ring, whose CAS loops are too large
 * to inline usefully.
 *
 * The layouts are pinned here with static_assert: the same structs live in
 * shared memory between processes built separately, so an accidental
 * change must fail the build, not corrupt a segment.
 */
#include "ring.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(struct ring_event) == 16, "event layout");
_Static_assert(offsetof(struct ring_spsc, tail) == DOVE_CACHELINE,
	       "producer line");
_Static_assert(offsetof(struct ring_spsc, head) == 2 * DOVE_CACHELINE,
	       "consumer line");
_Static_assert(offsetof(struct ring_spsc, readable) == 3 * DOVE_CACHELINE,
	       "readable event line");
_Static_assert(offsetof(struct ring_spsc, writable) == 4 * DOVE_CACHELINE,
	       "writable event line");
_Static_assert(offsetof(struct ring_spsc, slots) == 5 * DOVE_CACHELINE,
	       "slots start on their own line");
_Static_assert(sizeof(struct ring_spsc) == 5 * DOVE_CACHELINE, "spsc size");
_Static_assert(offsetof(struct ring_mpmc, enqueue_pos) == DOVE_CACHELINE,
	       "mpmc enqueue line");
_Static_assert(offsetof(struct ring_mpmc, dequeue_pos) == 2 * DOVE_CACHELINE,
	       "mpmc dequeue line");
_Static_assert(offsetof(struct ring_mpmc, slots) == 5 * DOVE_CACHELINE,
	       "mpmc slots");
/* Shared memory between processes needs address-free atomics. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics are lock-free");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics are lock-free");

/* ---- eventcount --------------------------------------------------------- */

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* 1 when membarrier(PRIVATE_EXPEDITED) is registered for this process,
 * -1 when unavailable (old kernel, seccomp): events fall back to FENCE. */
static _Atomic int asym_state;

static bool
asym_available(void)
{
	int st = atomic_load_explicit(&asym_state, memory_order_acquire);
	if (st == 0) {
		/* Registering twice is harmless, so racing initialisers are
		 * fine. */
		long rc = syscall(SYS_membarrier,
				  MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0,
				  0);
		st = rc == 0 ? 1 : -1;
		atomic_store_explicit(&asym_state, st, memory_order_release);
	}
	return st == 1;
}

void
ring_event_init(struct ring_event *ev, bool shared)
{
	atomic_init(&ev->seq, 0);
	atomic_init(&ev->waiters, 0);
	ev->mode = !shared && asym_available() ? RING_EVENT_ASYM
					       : RING_EVENT_FENCE;
	ev->pad = 0;
}

void
ring_event_wake(struct ring_event *ev)
{
	/* Change the word sleepers wait on, then wake them all: a sleeper
	 * that had not reached FUTEX_WAIT yet sees seq moved and returns. */
	atomic_fetch_add_explicit(&ev->seq, 1, memory_order_seq_cst);
	syscall(SYS_futex, &ev->seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static int64_t
now_ns(void)
{
	return (int64_t)dove_clock_ns(CLOCK_MONOTONIC);
}

bool
ring_event_wait(struct ring_event *ev, bool (*ready)(void *arg), void *arg,
		const struct ring_wait *w, int timeout_ms)
{
	DOVE_ASSERT(ev != NULL && ready != NULL && w != NULL);
	for (uint32_t i = 0; i < w->spins; i++) {
		if (ready(arg))
			return true;
		cpu_relax();
	}
	for (uint32_t i = 0; i < w->yields; i++) {
		if (ready(arg))
			return true;
		sched_yield();
	}

	int64_t deadline = timeout_ms < 0 ? INT64_MAX
					  : now_ns() + (int64_t)timeout_ms * 1000000;
	for (;;) {
		/* Announce, then read the word we will sleep on, then check:
		 * a notify after our check changes seq, so the futex wait
		 * returns at once instead of sleeping through it. */
		atomic_fetch_add_explicit(&ev->waiters, 1, memory_order_seq_cst);
		if (ev->mode == RING_EVENT_ASYM) {
			/* Registered in init, so this cannot fail. */
			long rc = syscall(SYS_membarrier,
					  MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
			DOVE_ASSERT(rc == 0);
		}
		uint32_t key = atomic_load_explicit(&ev->seq,
						    memory_order_seq_cst);
		if (ready(arg)) {
			atomic_fetch_sub_explicit(&ev->waiters, 1,
						  memory_order_relaxed);
			return true;
		}
		struct timespec ts, *tsp = NULL;
		if (deadline != INT64_MAX) {
			int64_t left = deadline - now_ns();
			if (left <= 0) {
				atomic_fetch_sub_explicit(&ev->waiters, 1,
							  memory_order_relaxed);
				return false;
			}
			ts.tv_sec = left / 1000000000;
			ts.tv_nsec = left % 1000000000;
			tsp = &ts;
		}
		/* Shared futex: the word may be in a segment of another
		 * process. EAGAIN (seq moved), EINTR and ETIMEDOUT all just
		 * loop and re-check. */
		syscall(SYS_futex, &ev->seq, FUTEX_WAIT, key, tsp, NULL, 0);
		atomic_fetch_sub_explicit(&ev->waiters, 1, memory_order_relaxed);
		if (ready(arg))
			return true;
	}
}

/* ---- SPSC ---------------------------------------------------------------- */

static bool
params_ok(uint32_t slot_count, uint32_t slot_size)
{
	return slot_count >= 2 && slot_count <= (1u << 30) &&
	       (slot_count & (slot_count - 1)) == 0 && slot_size >= 8 &&
	       slot_size <= 65536 && slot_size % 8 == 0;
}

size_t
ring_spsc_bytes(uint32_t slot_count, uint32_t slot_size)
{
	if (!params_ok(slot_count, slot_size))
		return 0;
	return sizeof(struct ring_spsc) + (size_t)slot_count * slot_size;
}

int
ring_spsc_init(void *mem, size_t mem_size, uint32_t slot_count,
	       uint32_t slot_size, unsigned flags, struct ring_spsc **out)
{
	size_t need = ring_spsc_bytes(slot_count, slot_size);
	if (need == 0 || mem == NULL || mem_size < need ||
	    (uintptr_t)mem % DOVE_CACHELINE != 0)
		return -EINVAL;
	struct ring_spsc *r = mem;
	memset(r, 0, sizeof(*r));
	r->slot_size = slot_size;
	r->slot_count = slot_count;
	r->mask = slot_count - 1;
	atomic_init(&r->tail, 0);
	atomic_init(&r->head, 0);
	ring_event_init(&r->readable, flags & RING_SHARED);
	ring_event_init(&r->writable, flags & RING_SHARED);
	/* Last, and released: an attacher that checks magic sees the rest. */
	__atomic_store_n(&r->magic, RING_SPSC_MAGIC, __ATOMIC_RELEASE);
	*out = r;
	return 0;
}

static bool
spsc_readable(void *arg)
{
	struct ring_spsc *r = arg;
	/* Consumer side: a peek of 0 items would not tell; look at tail. */
	return atomic_load_explicit(&r->tail, memory_order_acquire) !=
		       r->peeked ||
	       r->broken;
}

bool
ring_spsc_wait_readable(struct ring_spsc *r, const struct ring_wait *w,
			int timeout_ms)
{
	return ring_event_wait(&r->readable, spsc_readable, r, w, timeout_ms);
}

struct spsc_room {
	struct ring_spsc *r;
	uint32_t n;
};

static bool
spsc_writable(void *arg)
{
	struct spsc_room *q = arg;
	uint64_t head = atomic_load_explicit(&q->r->head, memory_order_acquire);
	return q->r->reserved - head + q->n <= q->r->slot_count;
}

bool
ring_spsc_wait_writable(struct ring_spsc *r, uint32_t n,
			const struct ring_wait *w, int timeout_ms)
{
	DOVE_ASSERT(n >= 1 && n <= r->slot_count);
	struct spsc_room q = { r, n };
	return ring_event_wait(&r->writable, spsc_writable, &q, w, timeout_ms);
}

/* ---- MPMC ---------------------------------------------------------------- */

/*
 * Slot i holds a sequence word and the payload. seq == pos: free for the
 * producer of position pos. seq == pos + 1: holds the item of position pos.
 * A consumer frees it for the producer of pos + slot_count.
 */
static inline _Atomic uint64_t *
mpmc_seq(struct ring_mpmc *r, uint64_t pos)
{
	return (_Atomic uint64_t *)(r->slots + (size_t)(pos & r->mask) *
							 r->stride);
}

static inline void *
mpmc_data(struct ring_mpmc *r, uint64_t pos)
{
	return r->slots + (size_t)(pos & r->mask) * r->stride + 8;
}

size_t
ring_mpmc_bytes(uint32_t slot_count, uint32_t slot_size)
{
	if (!params_ok(slot_count, slot_size))
		return 0;
	return sizeof(struct ring_mpmc) + (size_t)slot_count * (slot_size + 8);
}

int
ring_mpmc_init(void *mem, size_t mem_size, uint32_t slot_count,
	       uint32_t slot_size, unsigned flags, struct ring_mpmc **out)
{
	size_t need = ring_mpmc_bytes(slot_count, slot_size);
	if (need == 0 || mem == NULL || mem_size < need ||
	    (uintptr_t)mem % DOVE_CACHELINE != 0)
		return -EINVAL;
	struct ring_mpmc *r = mem;
	memset(r, 0, sizeof(*r));
	r->slot_size = slot_size;
	r->slot_count = slot_count;
	r->mask = slot_count - 1;
	r->stride = slot_size + 8;
	for (uint64_t i = 0; i < slot_count; i++)
		atomic_init(mpmc_seq(r, i), i);
	atomic_init(&r->enqueue_pos, 0);
	atomic_init(&r->dequeue_pos, 0);
	ring_event_init(&r->readable, flags & RING_SHARED);
	ring_event_init(&r->writable, flags & RING_SHARED);
	r->magic = RING_MPMC_MAGIC;
	*out = r;
	return 0;
}

/*
 * Claim the run of up to n consecutive positions at *cursor whose slots
 * are ready: seq == pos + ready (ready 0: free for a producer; 1: holding
 * an item for a consumer). One CAS claims the whole run. Returns its
 * length (0: none ready) and its first position in *first.
 */
static uint32_t
mpmc_claim(struct ring_mpmc *r, _Atomic uint64_t *cursor, uint64_t ready,
	   uint32_t n, uint64_t *first)
{
	DOVE_ASSERT(r->magic == RING_MPMC_MAGIC);
	if (n == 0)
		return 0;
	uint64_t pos = atomic_load_explicit(cursor, memory_order_relaxed);
	for (;;) {
		/* Acquire pairs with the release that made each slot ready
		 * (a consumer freeing it, or a producer filling it). */
		uint32_t k = 0;
		while (k < n && atomic_load_explicit(mpmc_seq(r, pos + k),
						     memory_order_acquire) ==
					pos + k + ready)
			k++;
		if (k == 0) {
			uint64_t seq = atomic_load_explicit(
				mpmc_seq(r, pos), memory_order_acquire);
			/* Behind pos: full (producers) or empty, or claimed
			 * but not yet published (consumers). */
			if ((int64_t)(seq - (pos + ready)) < 0)
				return 0;
			/* Another thread took pos: catch up. */
			pos = atomic_load_explicit(cursor, memory_order_relaxed);
			continue;
		}
		/* Relaxed is enough: the slots are ordered by their own
		 * sequence words, not by the cursor. */
		if (atomic_compare_exchange_weak_explicit(cursor, &pos, pos + k,
							  memory_order_relaxed,
							  memory_order_relaxed)) {
			*first = pos;
			return k;
		}
	}
}

uint32_t
ring_mpmc_push(struct ring_mpmc *r, const void *items, uint32_t n)
{
	uint64_t pos;
	uint32_t k = mpmc_claim(r, &r->enqueue_pos, 0, n, &pos);
	const unsigned char *src = items;
	for (uint32_t i = 0; i < k; i++) {
		memcpy(mpmc_data(r, pos + i), src + (size_t)i * r->slot_size,
		       r->slot_size);
		/* Release: the payload is visible before the seq says full. */
		atomic_store_explicit(mpmc_seq(r, pos + i), pos + i + 1,
				      memory_order_release);
	}
	if (k > 0)
		ring_event_notify(&r->readable);
	return k;
}

uint32_t
ring_mpmc_pop(struct ring_mpmc *r, void *out, uint32_t n)
{
	uint64_t pos;
	uint32_t k = mpmc_claim(r, &r->dequeue_pos, 1, n, &pos);
	unsigned char *dst = out;
	for (uint32_t i = 0; i < k; i++) {
		memcpy(dst + (size_t)i * r->slot_size, mpmc_data(r, pos + i),
		       r->slot_size);
		/* Release: our read of the payload finishes before the
		 * producer of the next lap may overwrite it. */
		atomic_store_explicit(mpmc_seq(r, pos + i),
				      pos + i + r->slot_count,
				      memory_order_release);
	}
	if (k > 0)
		ring_event_notify(&r->writable);
	return k;
}

static bool
mpmc_readable(void *arg)
{
	struct ring_mpmc *r = arg;
	uint64_t pos = atomic_load_explicit(&r->dequeue_pos,
					    memory_order_relaxed);
	return atomic_load_explicit(mpmc_seq(r, pos), memory_order_acquire) ==
	       pos + 1;
}

static bool
mpmc_writable(void *arg)
{
	struct ring_mpmc *r = arg;
	uint64_t pos = atomic_load_explicit(&r->enqueue_pos,
					    memory_order_relaxed);
	return atomic_load_explicit(mpmc_seq(r, pos), memory_order_acquire) ==
	       pos;
}

bool
ring_mpmc_wait_readable(struct ring_mpmc *r, const struct ring_wait *w,
			int timeout_ms)
{
	return ring_event_wait(&r->readable, mpmc_readable, r, w, timeout_ms);
}

bool
ring_mpmc_wait_writable(struct ring_mpmc *r, const struct ring_wait *w,
			int timeout_ms)
{
	return ring_event_wait(&r->writable, mpmc_writable, r, w, timeout_ms);
}
