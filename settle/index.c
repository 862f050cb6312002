/*
 * index.c - the compact hash index of settle_int.h, shared by the
 * sequencer's two tables, and the mmap helper for the big preallocated
 * tables of settle/.
 *
 * Why not a table of full entries: a remembered id is 24 bytes and an
 * account 64; a power-of-two table of them at 3/4 load costs up to 2.7
 * entries per element. Keeping the entries dense (in the caller's array)
 * and hashing only 8-byte slots keeps the sequencer within 40 bytes per
 * remembered id, and the index small enough to stay mostly in cache.
 */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>

#include "dove.h"
#include "settle_int.h"

void *
settle_map(size_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	if (bytes >= (2u << 20))
		madvise(p, bytes, MADV_HUGEPAGE); /* advice: may be off */
	return p;
}

void
settle_unmap(void *p, size_t bytes)
{
	if (p != NULL)
		munmap(p, bytes);
}

static inline uint64_t
home_of(const struct settle_index *x, uint32_t tag)
{
	return ((uint64_t)tag * x->nslots) >> 32;
}

static inline uint64_t
next_slot(const struct settle_index *x, uint64_t i)
{
	return i + 1 == x->nslots ? 0 : i + 1;
}

int
settle_index_init(struct settle_index *x, uint32_t capacity)
{
	if (capacity == 0 || capacity > (1u << 30))
		return -EINVAL;
	/* At most 2/3 full: an unsuccessful probe then reads ~5 slots, all
	 * usually in one or two cache lines. */
	x->nslots = (uint64_t)capacity + capacity / 2 + 1;
	x->slot = settle_map(x->nslots * sizeof(uint64_t));
	if (x->slot == NULL)
		return -ENOMEM;
	x->count = 0;
	x->capacity = capacity;
	return 0;
}

void
settle_index_free(struct settle_index *x)
{
	settle_unmap(x->slot, x->nslots * sizeof(uint64_t));
	x->slot = NULL;
}

uint32_t
settle_index_find(const struct settle_index *x, uint64_t key,
		  struct settle_index_keys keys)
{
	uint32_t tag = (uint32_t)(settle_mix64(key) >> 32);
	for (uint64_t i = home_of(x, tag);; i = next_slot(x, i)) {
		uint64_t w = x->slot[i];
		if (w == 0)
			return SETTLE_INDEX_NONE;
		if ((uint32_t)(w >> 32) != tag)
			continue;
		uint32_t pos = (uint32_t)w - 1;
		uint64_t k;
		memcpy(&k, (const char *)keys.base + (size_t)pos * keys.stride,
		       sizeof(k));
		if (k == key)
			return pos;
	}
}

void
settle_index_insert(struct settle_index *x, uint64_t key, uint32_t pos)
{
	DOVE_ASSERT(x->count < x->capacity && pos < UINT32_MAX);
	uint32_t tag = (uint32_t)(settle_mix64(key) >> 32);
	uint64_t i = home_of(x, tag);
	while (x->slot[i] != 0)
		i = next_slot(x, i);
	x->slot[i] = (uint64_t)tag << 32 | (pos + 1);
	x->count++;
}

void
settle_index_remove(struct settle_index *x, uint64_t key, uint32_t pos)
{
	uint32_t tag = (uint32_t)(settle_mix64(key) >> 32);
	uint64_t want = (uint64_t)tag << 32 | (pos + 1);
	uint64_t hole = home_of(x, tag);
	while (x->slot[hole] != want) {
		DOVE_ASSERT(x->slot[hole] != 0); /* it must be there */
		hole = next_slot(x, hole);
	}
	/* Backward shift: move each later member of the run into the hole
	 * unless its home lies cyclically in (hole, i], where a probe
	 * already finds it. No tombstones, so probes never slow down. */
	for (uint64_t i = next_slot(x, hole); x->slot[i] != 0;
	     i = next_slot(x, i)) {
		uint64_t home = home_of(x, (uint32_t)(x->slot[i] >> 32));
		if (!settle_shift_back(hole, home, i))
			continue;
		x->slot[hole] = x->slot[i];
		hole = i;
	}
	x->slot[hole] = 0;
	x->count--;
}
