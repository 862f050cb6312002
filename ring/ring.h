/*
 * ring.h - the rings that replace the network broker: bounded lock-free
 * SPSC and MPMC rings of fixed-size slots, an eventcount to sleep on when a
 * ring is empty or full, and a POSIX shared-memory segment that holds one
 * SPSC request ring and one SPSC completion ring per producer process.
 *
 * All rings live in memory the caller provides (heap, or a shared-memory
 * segment), so their layout is pinned (static_assert in ring.c) and the hot
 * operations are inline here. Sequence numbers are 64-bit and never wrap in
 * practice (584 years at 1e9 items/s); a slot is seq & mask.
 *
 * Who may call what, at the same time:
 *
 *   SPSC             | reserve/publish/push | peek/release/pop | wait_*
 *   -----------------+----------------------+------------------+---------
 *   producer thread  | yes (one thread)     | no               | writable
 *   consumer thread  | no                   | yes (one thread) | readable
 *
 *   MPMC             | any number of producer and consumer threads at once;
 *                    | init only before any of them starts.
 *
 * Progress: SPSC operations are wait-free. MPMC push/pop are lock-free
 * among themselves, with one exception inherent to per-slot sequence
 * numbers (Vyukov): a producer that stalls between claiming a position and
 * publishing it makes that position look empty, so consumers see the ring
 * as empty there (items claimed after it wait behind it) until it
 * publishes; symmetrically a stalled consumer keeps its slot full. Nothing
 * is lost or reordered; it only waits. The shared-memory producer API uses
 * SPSC rings only, so a producer process that dies cannot stall anyone.
 */
#ifndef RING_H
#define RING_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "dove.h"

/* ---- eventcount: sleep until another thread or process says so ------- */

/*
 * A waiter announces itself, re-checks its condition and sleeps on a
 * futex; a notifier that has just published pays one load (plus a full
 * fence for RING_SHARED events), and a system call only when someone
 * actually sleeps. The futex is shared (not FUTEX_PRIVATE), so it works
 * across processes on shared memory.
 */
struct ring_event {
	_Atomic uint32_t seq;     /* bumped by notify when there are waiters */
	_Atomic uint32_t waiters; /* threads between prepare and done */
	uint32_t mode;            /* RING_EVENT_FENCE or _ASYM, set by init */
	uint32_t pad;
};
enum { RING_EVENT_FENCE = 1, RING_EVENT_ASYM = 2 };

/* Ring and event flag: waiters and notifiers may be in different processes
 * (shared memory). Such events pay a full fence per notify; in-process
 * ones move that cost to the sleeping side (membarrier). */
#define RING_SHARED 0x1u

/* How long to try before sleeping. Spins cost a core; yields let the other
 * side run on a 2-core machine; then the futex. */
struct ring_wait {
	uint32_t spins;  /* busy polls (with a pause instruction) */
	uint32_t yields; /* sched_yield polls after that */
};
#define RING_WAIT_DEFAULT ((struct ring_wait){ .spins = 256, .yields = 16 })

/* shared: see RING_SHARED. Before any waiter or notifier uses ev. */
void ring_event_init(struct ring_event *ev, bool shared);

/* The slow half of ring_event_notify: there are waiters; wake them. */
void ring_event_wake(struct ring_event *ev);

/*
 * Wake every waiter of ev. Call after the release store that made the
 * condition true. Any thread. Inline because it runs on every publish:
 * when nobody waits it costs one load (plus a full fence if RING_SHARED).
 *
 * Why the barrier: we store the data (tail/head/seq), then load waiters;
 * a waiter stores waiters, then loads the data. A full barrier must
 * separate each side's store from its load, or both miss each other and
 * the waiter sleeps on published data (Dekker).
 *   FENCE mode: a full fence here, on every notify.
 *   ASYM mode (in-process events): only a compiler barrier here; the
 *   waiter, on its slow path, calls membarrier(), which runs a full
 *   barrier on every running thread of the process, the pairing
 *   liburcu-memb uses.
 */
static inline void
ring_event_notify(struct ring_event *ev)
{
	if (ev->mode == RING_EVENT_FENCE)
		atomic_thread_fence(memory_order_seq_cst);
	else
		atomic_signal_fence(memory_order_seq_cst);
	if (__builtin_expect(atomic_load_explicit(&ev->waiters,
						  memory_order_relaxed) != 0,
			     0))
		ring_event_wake(ev);
}

/*
 * Wait until ready(arg) is true, polling per w, then sleeping on ev.
 * timeout_ms < 0 waits forever. Returns true when ready, false on timeout.
 */
bool ring_event_wait(struct ring_event *ev, bool (*ready)(void *arg),
		     void *arg, const struct ring_wait *w, int timeout_ms);

/* ---- SPSC ring ---------------------------------------------------------- */

#define RING_SPSC_MAGIC 0x53505343u /* "SPSC" */

struct ring_spsc {
	/* Line 0: set by init, read-only after. */
	uint32_t magic;
	uint32_t slot_size;  /* bytes per slot, a multiple of 8 */
	uint32_t slot_count; /* a power of two */
	uint32_t mask;       /* slot_count - 1 */
	uint8_t pad0[DOVE_CACHELINE - 16];

	/* Line 1: the producer's. tail is read by the consumer only when its
	 * cached copy says the ring is empty. */
	_Atomic uint64_t tail;  /* next sequence to publish */
	uint64_t head_cache;    /* producer's last view of head */
	uint64_t reserved;      /* tail + slots reserved, not published */
	uint8_t pad1[DOVE_CACHELINE - 24];

	/* Line 2: the consumer's, mirror image of line 1. */
	_Atomic uint64_t head; /* next sequence to consume */
	uint64_t tail_cache;   /* consumer's last view of tail */
	uint64_t peeked;       /* head + slots peeked, not released */
	uint32_t broken;       /* tail was impossible: producer corrupt */
	uint8_t pad2[DOVE_CACHELINE - 28];

	/* Lines 3 and 4: who sleeps on what. */
	struct ring_event readable; /* consumer waits here when empty */
	uint8_t pad3[DOVE_CACHELINE - sizeof(struct ring_event)];
	struct ring_event writable; /* producer waits here when full */
	uint8_t pad4[DOVE_CACHELINE - sizeof(struct ring_event)];

	/* Slots follow, cache-line aligned. */
	_Alignas(DOVE_CACHELINE) unsigned char slots[];
};

/* Bytes of memory a ring with these parameters needs (header + slots), or
 * 0 when the parameters are invalid. */
size_t ring_spsc_bytes(uint32_t slot_count, uint32_t slot_size);

/*
 * Initialise a ring in mem (cache-line aligned, ring_spsc_bytes() long).
 * slot_count: a power of two from 2 to 2^30; slot_size: 8 to 65536, a
 * multiple of 8. flags: 0, or RING_SHARED when the two sides are different
 * processes. Returns 0, or -EINVAL with no change to mem.
 * Before any producer or consumer uses it.
 */
int ring_spsc_init(void *mem, size_t mem_size, uint32_t slot_count,
		   uint32_t slot_size, unsigned flags, struct ring_spsc **out);

static inline void *
ring_spsc_slot(struct ring_spsc *r, uint64_t seq)
{
	return r->slots + (size_t)(seq & r->mask) * r->slot_size;
}

/*
 * Producer: reserve up to n free slots after those already reserved;
 * returns how many (0 when full). Sequence numbers first.. first+count-1;
 * fill them through ring_spsc_slot(), then ring_spsc_publish(). Touches the
 * consumer's line only when the cached head says there is not enough room.
 */
static inline uint32_t
ring_spsc_reserve(struct ring_spsc *r, uint32_t n, uint64_t *first)
{
	uint64_t used = r->reserved - r->head_cache;
	if (used + n > r->slot_count) {
		/* Acquire: the consumer's reads of the slots it released
		 * happen before we overwrite them. */
		r->head_cache = atomic_load_explicit(&r->head,
						     memory_order_acquire);
		used = r->reserved - r->head_cache;
	}
	uint64_t space = r->slot_count - used;
	uint32_t got = n < space ? n : (uint32_t)space;
	*first = r->reserved;
	r->reserved += got;
	return got;
}

/*
 * Producer: make every reserved slot visible to the consumer, in order, with
 * one release store, and wake it if it sleeps. Reservations are published
 * whole: fill every slot you reserved before publishing.
 */
static inline void
ring_spsc_publish(struct ring_spsc *r)
{
	/* Release: the slot contents written before are visible to a
	 * consumer that acquires tail. */
	atomic_store_explicit(&r->tail, r->reserved, memory_order_release);
	ring_event_notify(&r->readable);
}

/* Like ring_spsc_publish, without the wake-up: for rings whose consumer
 * sleeps on an event of its own (the shared-memory doorbell). */
static inline void
ring_spsc_publish_quiet(struct ring_spsc *r)
{
	atomic_store_explicit(&r->tail, r->reserved, memory_order_release);
}

/*
 * Consumer: how many published slots are there past those already peeked,
 * up to max; their sequence numbers start at *first. Read them through
 * ring_spsc_slot(), then ring_spsc_release(). Touches the producer's line
 * only when the cached tail says there are not enough.
 * A tail that no honest producer could have written (more than slot_count
 * ahead: shared memory scribbled on) makes the ring broken: peek returns 0
 * for ever and ring_spsc_broken() says so.
 */
static inline uint32_t
ring_spsc_peek(struct ring_spsc *r, uint32_t max, uint64_t *first)
{
	uint64_t avail = r->tail_cache - r->peeked;
	if (avail < max) {
		/* Acquire: pairs with the producer's release in publish. */
		uint64_t t = atomic_load_explicit(&r->tail,
						  memory_order_acquire);
		uint64_t h = atomic_load_explicit(&r->head,
						  memory_order_relaxed);
		if (__builtin_expect(t - h > r->slot_count || t < r->peeked, 0))
			r->broken = 1;
		if (r->broken)
			return 0;
		r->tail_cache = t;
		avail = t - r->peeked;
	}
	uint32_t got = avail < max ? (uint32_t)avail : max;
	*first = r->peeked;
	r->peeked += got;
	return got;
}

/* Consumer: hand every peeked slot back to the producer, with one release
 * store, and wake the producer if it sleeps on a full ring. */
static inline void
ring_spsc_release(struct ring_spsc *r)
{
	/* Release: our reads of the slots finish before the producer can
	 * reuse them. */
	atomic_store_explicit(&r->head, r->peeked, memory_order_release);
	ring_event_notify(&r->writable);
}

/* Copy one slot; 8-byte slots (ids, pointers) skip the memcpy call. */
static inline void
ring_slot_copy(void *dst, const void *src, uint32_t size)
{
	memcpy(dst, src, size);
}

/* Producer: copy one item (slot_size bytes) in and publish. False if full. */
static inline bool
ring_spsc_push(struct ring_spsc *r, const void *item)
{
	uint64_t seq;
	if (ring_spsc_reserve(r, 1, &seq) == 0)
		return false;
	ring_slot_copy(ring_spsc_slot(r, seq), item, r->slot_size);
	ring_spsc_publish(r);
	return true;
}

/* Consumer: copy one item out and release it. False if empty. */
static inline bool
ring_spsc_pop(struct ring_spsc *r, void *item)
{
	uint64_t seq;
	if (ring_spsc_peek(r, 1, &seq) == 0)
		return false;
	ring_slot_copy(item, ring_spsc_slot(r, seq), r->slot_size);
	ring_spsc_release(r);
	return true;
}

static inline bool
ring_spsc_broken(const struct ring_spsc *r)
{
	return r->broken != 0;
}

/* Consumer: wait until at least one slot can be peeked. Producer: wait
 * until at least n slots can be reserved. Return false on timeout
 * (timeout_ms < 0: never). */
bool ring_spsc_wait_readable(struct ring_spsc *r, const struct ring_wait *w,
			     int timeout_ms);
bool ring_spsc_wait_writable(struct ring_spsc *r, uint32_t n,
			     const struct ring_wait *w, int timeout_ms);

/* ---- MPMC ring (Vyukov) ------------------------------------------------- */

#define RING_MPMC_MAGIC 0x4d504d43u /* "MPMC" */

struct ring_mpmc {
	uint32_t magic;
	uint32_t slot_size;   /* payload bytes per slot, a multiple of 8 */
	uint32_t slot_count;  /* a power of two */
	uint32_t mask;
	uint32_t stride;      /* 8-byte sequence word + payload */
	uint8_t pad0[DOVE_CACHELINE - 20];
	_Atomic uint64_t enqueue_pos; /* producers CAS this */
	uint8_t pad1[DOVE_CACHELINE - 8];
	_Atomic uint64_t dequeue_pos; /* consumers CAS this */
	uint8_t pad2[DOVE_CACHELINE - 8];
	struct ring_event readable; /* consumers sleep here when empty */
	uint8_t pad3[DOVE_CACHELINE - sizeof(struct ring_event)];
	struct ring_event writable; /* producers sleep here when full */
	uint8_t pad4[DOVE_CACHELINE - sizeof(struct ring_event)];
	_Alignas(DOVE_CACHELINE) unsigned char slots[];
};

size_t ring_mpmc_bytes(uint32_t slot_count, uint32_t slot_size);

/* As ring_spsc_init. Before any thread uses the ring. */
int ring_mpmc_init(void *mem, size_t mem_size, uint32_t slot_count,
		   uint32_t slot_size, unsigned flags, struct ring_mpmc **out);

/*
 * Copy up to n items (n * slot_size bytes, contiguous) in; returns how many
 * went in, a prefix of items (0 when full). Any thread. The items of one
 * call occupy consecutive positions, so a consumer that takes them sees
 * them in order.
 */
uint32_t ring_mpmc_push(struct ring_mpmc *r, const void *items, uint32_t n);

/* Copy up to n items out into out; returns how many (0 when empty, or
 * when the next position's producer has claimed but not yet published). */
uint32_t ring_mpmc_pop(struct ring_mpmc *r, void *out, uint32_t n);

bool ring_mpmc_wait_readable(struct ring_mpmc *r, const struct ring_wait *w,
			     int timeout_ms);
bool ring_mpmc_wait_writable(struct ring_mpmc *r, const struct ring_wait *w,
			     int timeout_ms);

/* ---- shared-memory producer segment ----------------------------------- */

/*
 * A named POSIX shared-memory segment that doved creates and producer
 * processes attach to. It holds a header and a table of producer slots;
 * each slot is an SPSC request ring (producer -> doved) and an SPSC
 * completion ring (doved -> producer), plus the owner's pid and its start
 * time (so a recycled pid is not mistaken for the owner).
 *
 * A producer claims a free slot with one CAS; doved notices a dead owner
 * (ring_shm_reap) and, once it has consumed what the owner fully
 * published, frees the slot. A reserved-but-unpublished batch is invisible
 * by construction: it was never covered by the ring's tail.
 */
#define RING_SHM_MAGIC 0x31484d5345564f44ull /* "DOVESHM1" */
#define RING_SHM_VERSION 1u

struct ring_shm_params {
	uint32_t producers;      /* producer slots in the table */
	uint32_t req_slots;      /* request ring: slot count (power of 2) */
	uint32_t req_slot_size;  /* request ring: bytes per slot */
	uint32_t cpl_slots;      /* completion ring: slot count */
	uint32_t cpl_slot_size;  /* completion ring: bytes per slot */
};

typedef struct ring_shm ring_shm;

/* Slot states (the high 32 bits of a slot's owner word). */
enum ring_shm_state {
	RING_SHM_FREE = 0,
	RING_SHM_CLAIMING = 1, /* owner is initialising its rings */
	RING_SHM_ACTIVE = 2,   /* rings in use */
	RING_SHM_DEAD = 3,     /* owner gone; doved drains, then frees */
};

/*
 * doved: create (or re-create: a segment left by a dead doved is replaced)
 * the segment name ("/dove-ingress"), mode 0600. Returns 0, -EINVAL for
 * bad params, or -errno, with a message in err.
 */
int ring_shm_create(const char *name, const struct ring_shm_params *p,
		    ring_shm **out, char *err, size_t errlen);

/* doved: unmap and shm_unlink. */
void ring_shm_destroy(ring_shm *shm);

/*
 * Producer process: map name and check that its layout is the one this
 * process was built for (p); on any difference returns -DOVE_ELAYOUT with
 * err saying which field differs, what the segment has and what was
 * expected. -ENOENT when doved has not created it.
 */
int ring_shm_attach(const char *name, const struct ring_shm_params *p,
		    ring_shm **out, char *err, size_t errlen);

/* Producer: unmap (after ring_shm_unclaim, or to abandon the slot). */
void ring_shm_detach(ring_shm *shm);

/*
 * Producer: claim a free slot for this process and initialise its rings.
 * Returns the slot index, or -EBUSY when every slot is taken.
 */
int ring_shm_claim(ring_shm *shm);

/* Producer: give the slot back on a clean exit. It becomes DEAD, exactly
 * as if the process had died: only doved frees slots, after draining, so a
 * new owner never re-initialises rings doved is still reading. */
void ring_shm_unclaim(ring_shm *shm, uint32_t slot);

/* Either side: the rings of a slot. */
struct ring_spsc *ring_shm_requests(ring_shm *shm, uint32_t slot);
struct ring_spsc *ring_shm_completions(ring_shm *shm, uint32_t slot);

/*
 * Producer: after publishing requests (ring_spsc_publish_quiet), ring the
 * doorbell so a sleeping doved wakes. doved: its event to wait on.
 */
void ring_shm_doorbell(ring_shm *shm);
struct ring_event *ring_shm_doorbell_event(ring_shm *shm);

uint32_t ring_shm_producers(const ring_shm *shm);

/* doved: state of a slot (RING_SHM_*). */
enum ring_shm_state ring_shm_state(ring_shm *shm, uint32_t slot);

/*
 * doved: mark ACTIVE slots whose owner process is gone (or a zombie, or its
 * pid now belongs to a younger process) DEAD, and free CLAIMING slots whose
 * owner died before its rings were ready. Returns how many slots changed.
 * Call periodically; it reads /proc for each claimed slot.
 */
uint32_t ring_shm_reap(ring_shm *shm);

/*
 * doved: free a DEAD slot once everything published in its request ring
 * has been consumed (the caller drained it). Returns 0, or -EAGAIN if
 * published requests remain unconsumed.
 */
int ring_shm_free_slot(ring_shm *shm, uint32_t slot);

#endif /* RING_H */
