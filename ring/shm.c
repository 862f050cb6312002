/*
 * shm.c - the shared-memory segment between doved and producer processes:
 * a header (magic, layout version, sizes, the doorbell doved sleeps on)
 * followed by a table of producer slots, each a cache line of ownership
 * words, an SPSC request ring and an SPSC completion ring.
 *
 * Ownership rules (the only writers of a slot's owner word):
 *   FREE -> CLAIMING      producer, CAS (claim)
 *   CLAIMING -> ACTIVE    producer, after initialising both rings
 *   ACTIVE -> DEAD        producer on clean exit, or doved when the owner died
 *   CLAIMING -> FREE      doved, when the owner died before ACTIVE
 *   DEAD -> FREE          doved, after consuming all the owner published
 * Only doved frees, so a new owner never re-initialises rings doved is
 * still reading. Everything a producer reads from the segment is data from
 * another process: checked, never asserted.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ring.h"

struct shm_header {
	uint64_t magic; /* RING_SHM_MAGIC, stored last at creation */
	uint32_t version;
	uint32_t header_bytes;
	uint32_t producers;
	uint32_t req_slots, req_slot_size;
	uint32_t cpl_slots, cpl_slot_size;
	uint32_t pad0;
	uint64_t slot_stride; /* bytes per producer slot */
	uint64_t total_bytes;
	uint8_t pad1[DOVE_CACHELINE - 56];
	struct ring_event doorbell; /* doved sleeps here */
	uint8_t pad2[DOVE_CACHELINE - sizeof(struct ring_event)];
};
_Static_assert(sizeof(struct shm_header) == 2 * DOVE_CACHELINE, "header");
_Static_assert(offsetof(struct shm_header, doorbell) == DOVE_CACHELINE,
	       "doorbell on its own line");

struct shm_slot {
	_Atomic uint64_t owner; /* state << 32 | pid */
	uint64_t owner_start;   /* owner's start time, /proc/PID/stat #22 */
	uint64_t claims;        /* how many times this slot was claimed */
	uint8_t pad[DOVE_CACHELINE - 24];
	/* request ring, then completion ring */
};
_Static_assert(sizeof(struct shm_slot) == DOVE_CACHELINE, "slot head");

struct ring_shm {
	struct shm_header *hdr;
	size_t size;
	bool creator;
	char name[256];
};

#define OWNER(state, pid) (((uint64_t)(state) << 32) | (uint32_t)(pid))

static size_t
round_line(size_t n)
{
	return (n + DOVE_CACHELINE - 1) & ~(size_t)(DOVE_CACHELINE - 1);
}

static uint64_t
slot_stride(const struct ring_shm_params *p)
{
	return sizeof(struct shm_slot) +
	       round_line(ring_spsc_bytes(p->req_slots, p->req_slot_size)) +
	       round_line(ring_spsc_bytes(p->cpl_slots, p->cpl_slot_size));
}

static struct shm_slot *
slot_at(ring_shm *shm, uint32_t i)
{
	DOVE_ASSERT(i < shm->hdr->producers);
	return (struct shm_slot *)((char *)shm->hdr + sizeof(struct shm_header) +
				   (size_t)i * shm->hdr->slot_stride);
}

struct ring_spsc *
ring_shm_requests(ring_shm *shm, uint32_t slot)
{
	return (struct ring_spsc *)(slot_at(shm, slot) + 1);
}

struct ring_spsc *
ring_shm_completions(ring_shm *shm, uint32_t slot)
{
	const struct shm_header *h = shm->hdr;
	return (struct ring_spsc *)((char *)ring_shm_requests(shm, slot) +
				    round_line(ring_spsc_bytes(
					    h->req_slots, h->req_slot_size)));
}

uint32_t
ring_shm_producers(const ring_shm *shm)
{
	return shm->hdr->producers;
}

void
ring_shm_doorbell(ring_shm *shm)
{
	ring_event_notify(&shm->hdr->doorbell);
}

struct ring_event *
ring_shm_doorbell_event(ring_shm *shm)
{
	return &shm->hdr->doorbell;
}

enum ring_shm_state
ring_shm_state(ring_shm *shm, uint32_t slot)
{
	uint64_t w = atomic_load_explicit(&slot_at(shm, slot)->owner,
					  memory_order_acquire);
	return (enum ring_shm_state)(w >> 32);
}

/* ---- creation and attachment -------------------------------------------- */

int
ring_shm_create(const char *name, const struct ring_shm_params *p,
		ring_shm **out, char *err, size_t errlen)
{
	DOVE_ASSERT(name != NULL && p != NULL && out != NULL);
	int rc;
	if (p->producers == 0 || p->producers > 4096 ||
	    ring_spsc_bytes(p->req_slots, p->req_slot_size) == 0 ||
	    ring_spsc_bytes(p->cpl_slots, p->cpl_slot_size) == 0) {
		snprintf(err, errlen,
			 "shared memory %s: invalid layout (producers 1..4096; "
			 "ring slots a power of two >= 2, slot sizes 8..65536 "
			 "in multiples of 8)",
			 name);
		return -EINVAL;
	}
	size_t total = sizeof(struct shm_header) +
		       (size_t)p->producers * slot_stride(p);

	/* A segment of a previous doved (killed) is replaced: producers
	 * still attached to it keep the old mapping and get nothing more,
	 * which they notice as a timeout and re-attach. */
	shm_unlink(name);
	int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "shared memory %s: shm_open: %s", name,
			 dove_strerror(rc));
		return rc;
	}
	if (ftruncate(fd, (off_t)total) < 0) {
		rc = -errno;
		snprintf(err, errlen, "shared memory %s: %zu bytes: %s", name,
			 total, dove_strerror(rc));
		goto out_unlink;
	}
	void *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED) {
		rc = -errno;
		snprintf(err, errlen, "shared memory %s: mmap: %s", name,
			 dove_strerror(rc));
		goto out_unlink;
	}
	close(fd);

	ring_shm *shm = calloc(1, sizeof(*shm));
	DOVE_ASSERT(shm != NULL);
	shm->hdr = base;
	shm->size = total;
	shm->creator = true;
	snprintf(shm->name, sizeof(shm->name), "%s", name);
	struct shm_header *h = base; /* fresh from ftruncate: all zero */
	h->version = RING_SHM_VERSION;
	h->header_bytes = sizeof(struct shm_header);
	h->producers = p->producers;
	h->req_slots = p->req_slots;
	h->req_slot_size = p->req_slot_size;
	h->cpl_slots = p->cpl_slots;
	h->cpl_slot_size = p->cpl_slot_size;
	h->slot_stride = slot_stride(p);
	h->total_bytes = total;
	ring_event_init(&h->doorbell, true);
	/* Release: an attacher that sees the magic sees the header. */
	__atomic_store_n(&h->magic, RING_SHM_MAGIC, __ATOMIC_RELEASE);
	*out = shm;
	return 0;

out_unlink:
	close(fd);
	shm_unlink(name);
	return rc;
}

void
ring_shm_destroy(ring_shm *shm)
{
	if (shm == NULL)
		return;
	DOVE_ASSERT(shm->creator);
	munmap(shm->hdr, shm->size);
	shm_unlink(shm->name);
	free(shm);
}

#define CHECK_FIELD(field, want)                                               \
	do {                                                                   \
		if ((uint64_t)h->field != (uint64_t)(want)) {                  \
			snprintf(err, errlen,                                  \
				 "shared memory %s: layout differs: " #field   \
				 " is %llu in the segment, this producer "     \
				 "expects %llu",                               \
				 name, (unsigned long long)h->field,           \
				 (unsigned long long)(want));                  \
			rc = -DOVE_ELAYOUT;                                    \
			goto out_unmap;                                        \
		}                                                              \
	} while (0)

int
ring_shm_attach(const char *name, const struct ring_shm_params *p,
		ring_shm **out, char *err, size_t errlen)
{
	DOVE_ASSERT(name != NULL && p != NULL && out != NULL);
	int rc;
	int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "shared memory %s: %s%s", name,
			 dove_strerror(rc),
			 rc == -ENOENT ? " (is doved running?)" : "");
		return rc;
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		close(fd);
		snprintf(err, errlen, "shared memory %s: %s", name,
			 dove_strerror(rc));
		return rc;
	}
	size_t size = (size_t)st.st_size;
	if (size < sizeof(struct shm_header)) {
		close(fd);
		snprintf(err, errlen,
			 "shared memory %s: layout differs: %zu bytes, smaller "
			 "than a header (%zu)",
			 name, size, sizeof(struct shm_header));
		return -DOVE_ELAYOUT;
	}
	void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (base == MAP_FAILED) {
		rc = -errno;
		snprintf(err, errlen, "shared memory %s: mmap: %s", name,
			 dove_strerror(rc));
		return rc;
	}
	struct shm_header *h = base;
	uint64_t magic = __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE);
	if (magic != RING_SHM_MAGIC) {
		snprintf(err, errlen,
			 "shared memory %s: layout differs: magic %#llx, "
			 "expected %#llx (not a Dove segment, or not ready)",
			 name, (unsigned long long)magic,
			 (unsigned long long)RING_SHM_MAGIC);
		rc = -DOVE_ELAYOUT;
		goto out_unmap;
	}
	CHECK_FIELD(version, RING_SHM_VERSION);
	CHECK_FIELD(header_bytes, sizeof(struct shm_header));
	if (p->producers != 0)
		CHECK_FIELD(producers, p->producers);
	CHECK_FIELD(req_slots, p->req_slots);
	CHECK_FIELD(req_slot_size, p->req_slot_size);
	CHECK_FIELD(cpl_slots, p->cpl_slots);
	CHECK_FIELD(cpl_slot_size, p->cpl_slot_size);
	CHECK_FIELD(slot_stride, slot_stride(p));
	CHECK_FIELD(total_bytes, size);
	if (h->producers == 0 ||
	    sizeof(*h) + (uint64_t)h->producers * h->slot_stride != size) {
		snprintf(err, errlen,
			 "shared memory %s: layout differs: %u producer slots "
			 "do not fit %zu bytes",
			 name, h->producers, size);
		rc = -DOVE_ELAYOUT;
		goto out_unmap;
	}

	ring_shm *shm = calloc(1, sizeof(*shm));
	DOVE_ASSERT(shm != NULL);
	shm->hdr = h;
	shm->size = size;
	snprintf(shm->name, sizeof(shm->name), "%s", name);
	*out = shm;
	return 0;

out_unmap:
	munmap(base, size);
	return rc;
}
#undef CHECK_FIELD

void
ring_shm_detach(ring_shm *shm)
{
	if (shm == NULL)
		return;
	DOVE_ASSERT(!shm->creator);
	munmap(shm->hdr, shm->size);
	free(shm);
}

/* ---- ownership -------------------------------------------------------- */

/*
 * Start time of pid in clock ticks since boot (field 22 of /proc/PID/stat),
 * or 0 when there is no such process or it is a zombie (it will never
 * write again).
 */
static uint64_t
proc_start(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	/* The command name may hold spaces and parentheses: skip to the
	 * last ')'. Then: state ppid pgrp session tty tpgid flags minflt
	 * cminflt majflt cmajflt utime stime cutime cstime priority nice
	 * num_threads itrealvalue starttime. */
	char *p = strrchr(buf, ')');
	if (p == NULL || p[1] != ' ')
		return 0;
	char state = p[2];
	if (state == 'Z' || state == 'X' || state == 'x')
		return 0;
	unsigned long long start = 0;
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u "
			  "%*d %*d %*d %*d %*d %*d %llu",
		   &start) != 1)
		return 0;
	return start;
}

int
ring_shm_claim(ring_shm *shm)
{
	pid_t pid = getpid();
	uint64_t start = proc_start(pid);
	DOVE_ASSERT(start != 0); /* our own /proc entry */
	for (uint32_t i = 0; i < shm->hdr->producers; i++) {
		struct shm_slot *s = slot_at(shm, i);
		uint64_t expect = OWNER(RING_SHM_FREE, 0);
		/* Acquire on success: doved's drain of the previous owner
		 * (its release of FREE) happens before we re-initialise. */
		if (!atomic_compare_exchange_strong_explicit(
			    &s->owner, &expect, OWNER(RING_SHM_CLAIMING, pid),
			    memory_order_acquire, memory_order_relaxed))
			continue;
		s->owner_start = start;
		s->claims++;
		const struct shm_header *h = shm->hdr;
		struct ring_spsc *r;
		int rc = ring_spsc_init(ring_shm_requests(shm, i),
					ring_spsc_bytes(h->req_slots,
							h->req_slot_size),
					h->req_slots, h->req_slot_size,
					RING_SHARED, &r);
		DOVE_ASSERT(rc == 0); /* layout checked at attach */
		rc = ring_spsc_init(ring_shm_completions(shm, i),
				    ring_spsc_bytes(h->cpl_slots,
						    h->cpl_slot_size),
				    h->cpl_slots, h->cpl_slot_size, RING_SHARED,
				    &r);
		DOVE_ASSERT(rc == 0);
		/* Release: doved sees initialised rings once it sees ACTIVE. */
		atomic_store_explicit(&s->owner, OWNER(RING_SHM_ACTIVE, pid),
				      memory_order_release);
		return (int)i;
	}
	return -EBUSY;
}

void
ring_shm_unclaim(ring_shm *shm, uint32_t slot)
{
	struct shm_slot *s = slot_at(shm, slot);
	pid_t pid = getpid();
	uint64_t expect = OWNER(RING_SHM_ACTIVE, pid);
	/* Release: our last publications come before DEAD. */
	bool ok = atomic_compare_exchange_strong_explicit(
		&s->owner, &expect, OWNER(RING_SHM_DEAD, pid),
		memory_order_release, memory_order_relaxed);
	DOVE_ASSERT(ok); /* only we move our own slot out of ACTIVE */
}

uint32_t
ring_shm_reap(ring_shm *shm)
{
	uint32_t changed = 0;
	for (uint32_t i = 0; i < shm->hdr->producers; i++) {
		struct shm_slot *s = slot_at(shm, i);
		uint64_t w = atomic_load_explicit(&s->owner,
						  memory_order_acquire);
		uint32_t state = (uint32_t)(w >> 32);
		pid_t pid = (pid_t)(uint32_t)w;
		if (state != RING_SHM_ACTIVE && state != RING_SHM_CLAIMING)
			continue;
		uint64_t start = proc_start(pid);
		/* A CLAIMING owner may not have written owner_start yet:
		 * only whether it exists counts. */
		bool alive = start != 0 &&
			     (state == RING_SHM_CLAIMING ||
			      start == s->owner_start);
		if (alive)
			continue;
		uint64_t next = state == RING_SHM_ACTIVE
					? OWNER(RING_SHM_DEAD, pid)
					: OWNER(RING_SHM_FREE, 0);
		/* Acq_rel: we read the dead owner's last writes (its rings)
		 * after this, and a FREE we store is seen with our reads
		 * done. A failed CAS means the owner moved on itself. */
		if (atomic_compare_exchange_strong_explicit(
			    &s->owner, &w, next, memory_order_acq_rel,
			    memory_order_relaxed))
			changed++;
	}
	return changed;
}

int
ring_shm_free_slot(ring_shm *shm, uint32_t slot)
{
	struct shm_slot *s = slot_at(shm, slot);
	uint64_t w = atomic_load_explicit(&s->owner, memory_order_acquire);
	DOVE_ASSERT((w >> 32) == RING_SHM_DEAD);
	struct ring_spsc *r = ring_shm_requests(shm, slot);
	if (!ring_spsc_broken(r) &&
	    atomic_load_explicit(&r->tail, memory_order_acquire) !=
		    atomic_load_explicit(&r->head, memory_order_relaxed))
		return -EAGAIN;
	/* Release: our reads of the rings finish before a new owner may
	 * claim (acquire) and re-initialise them. */
	atomic_store_explicit(&s->owner, OWNER(RING_SHM_FREE, 0),
			      memory_order_release);
	return 0;
}
