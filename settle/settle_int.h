/*
 * settle_int.h - shared inside settle/ only.
 */
#ifndef SETTLE_INT_H
#define SETTLE_INT_H

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

#endif
