/*
 * settle_int.h - shared inside settle/ only.
 */
#ifndef SETTLE_INT_H
#define SETTLE_INT_H

#include <stddef.h>
#include <stdint.h>

/* splitmix64's finaliser: ids are often sequential; spread them over hash
 * tables and shards. Changing it moves accounts between shards (harmless:
 * snapshots restore by id) but not between results. */
static inline uint64_t
settle_mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

/* Backward-shift deletion with linear probing: may the entry at slot i,
 * whose home slot is home, move back into the hole? Not when home lies
 * cyclically in (hole, i]: a probe from home already reaches it there. */
static inline int
settle_shift_back(uint64_t hole, uint64_t home, uint64_t i)
{
	int stays = hole <= i ? (home > hole && home <= i)
			      : (home > hole || home <= i);
	return !stays;
}

/*
 * A compact hash index: key -> position in a dense array the caller owns
 * (the sequencer's account directory, its FIFO of remembered ids). Each
 * slot is one word: the high 32 bits of the key's hash (the tag) and
 * position + 1 (0: empty). The home slot is computed from the tag alone
 * (multiply-shift over any slot count, so the table is sized at exactly
 * 3/2 of capacity instead of the next power of two), which lets deletion
 * shift entries back without reading their keys. A lookup reads the
 * caller's key only when the tag matches.
 *
 * 12 bytes per entry of capacity; linear probing at most 2/3 full.
 */
struct settle_index {
	uint64_t *slot;
	uint64_t nslots;
	uint32_t count, capacity;
};

#define SETTLE_INDEX_NONE UINT32_MAX

/* Keys live in the caller's array: key of position p is the u64 at
 * base + p * stride. */
struct settle_index_keys {
	const void *base;
	size_t stride;
};

int settle_index_init(struct settle_index *x, uint32_t capacity);
void settle_index_free(struct settle_index *x);
uint32_t settle_index_find(const struct settle_index *x, uint64_t key,
			   struct settle_index_keys keys);
/* key must be absent; count < capacity. */
void settle_index_insert(struct settle_index *x, uint64_t key, uint32_t pos);
/* Remove key's entry, which must point at pos. */
void settle_index_remove(struct settle_index *x, uint64_t key, uint32_t pos);

static inline void
settle_index_prefetch(const struct settle_index *x, uint64_t key)
{
	uint64_t tag = settle_mix64(key) >> 32;
	__builtin_prefetch(&x->slot[(tag * x->nslots) >> 32]);
}

/* Zeroed memory straight from mmap: page aligned, untouched pages cost
 * nothing, big tables get transparent huge pages (fewer TLB misses on
 * random probes). NULL on failure. */
void *settle_map(size_t bytes);
void settle_unmap(void *p, size_t bytes);

#endif
