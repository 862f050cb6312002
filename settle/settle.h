/*
 * settle.h - the public interface of the settlement layer: the ledger's
 * types and, from the settlement-core issue on, the shard state machine.
 *
 * settle/ depends only on ring/. It never reads the clock and never does
 * I/O of its own: the ledger is a pure function of the log.
 */
#ifndef SETTLE_H
#define SETTLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Account flags (DESIGN.md, "Data model"). Bit values are part of the WAL. */
enum settle_account_flag {
	SETTLE_ACCOUNT_NONNEG = 1u << 0, /* balance may never go below zero */
	SETTLE_ACCOUNT_HOT = 1u << 1,    /* always settled as hot */
};
#define SETTLE_ACCOUNT_FLAGS_ALL (SETTLE_ACCOUNT_NONNEG | SETTLE_ACCOUNT_HOT)

/*
 * Parse one flag word ("nonneg", "hot") into *flag. Returns true when the
 * word names a flag. Safe from any thread.
 */
bool
settle_account_flag_parse(const char *word, size_t len, uint32_t *flag);

/*
 * Format flags the way the protocol prints them: "nonneg", "hot",
 * "nonneg,hot", or "-" when there are none. Returns the length written
 * (excluding the NUL); buf must hold at least 16 bytes.
 */
size_t
settle_account_flags_format(uint32_t flags, char *buf, size_t size);

#endif /* SETTLE_H */
