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

/* ---- requests and results --------------------------------------------- */

/*
 * Reasons a request is refused (DESIGN.md "Interfaces"). SETTLE_OK is an
 * accepted request. The order is part of the WAL (results are not logged,
 * but snapshots of the idempotency table store them): append only.
 */
enum settle_result {
	SETTLE_OK = 0,
	SETTLE_BAD_REQUEST,
	SETTLE_NO_SUCH_ACCOUNT,
	SETTLE_ACCOUNT_EXISTS,
	SETTLE_ID_CONFLICT,
	SETTLE_SAME_ACCOUNT,
	SETTLE_ZERO_AMOUNT,
	SETTLE_INSUFFICIENT_FUNDS,
	SETTLE_OVERFLOW,
	SETTLE_LINKED_OPEN,
	SETTLE_LINKED_FAILED,
	SETTLE_LINKED_MULTI_DEBIT,
	SETTLE_OVERLOADED,
	SETTLE_UNAVAILABLE,
	SETTLE_RESULT_COUNT
};

/* The protocol's word for a result ("insufficient_funds"; "ok" for OK). */
const char *
settle_result_name(enum settle_result r);

#define SETTLE_TRANSFER_LINKED 0x1u
/* The longest linked chain: an O2O settlement is 2-3 legs; 64 is generous
 * and bounds what a chain can hold in memory. */
#define SETTLE_CHAIN_MAX 64
#define SETTLE_AMOUNT_MAX ((uint64_t)INT64_MAX) /* MariaDB BIGINT */

/* WAL record types owned by the ledger. */
enum settle_rec_type {
	SETTLE_REC_ACCOUNT = 1,
	SETTLE_REC_TRANSFER = 2,
};

/* The WAL payload of an ACCOUNT record. Layout pinned (settle/ledger.c). */
struct settle_account_rec {
	uint64_t id;
	uint32_t flags;
	uint32_t pad; /* 0 */
};

/* The WAL payload of a TRANSFER record. Layout pinned. */
struct settle_transfer {
	uint64_t id;
	uint64_t debit, credit;
	uint64_t amount; /* 1 .. SETTLE_AMOUNT_MAX */
	uint64_t ref;
	uint16_t code;
	uint16_t flags; /* SETTLE_TRANSFER_LINKED */
	uint32_t pad;   /* 0 */
};

/* One logged operation of an epoch, as a shard sees it. */
struct settle_op {
	uint64_t lsn;
	/* Ledger indexes, from the sequencer's directory: ACCOUNT: the new
	 * account's (ix); TRANSFER: the debit's (ix) and credit's. */
	uint32_t ix, credit_ix;
	uint16_t type; /* settle_rec_type */
	union {
		struct settle_account_rec account;
		struct settle_transfer transfer;
	} u;
};

/* ---- the ledger of one shard --------------------------------------------- */

/* 128-bit counters: no sequence of accepted transfers can overflow them,
 * so a credit never has to be refused after its debit was accepted. */
typedef unsigned __int128 settle_u128;

struct settle_account {
	uint64_t id; /* 0: empty slot */
	uint32_t flags;
	uint32_t pad;
	settle_u128 debits_posted;
	settle_u128 credits_posted;
	settle_u128 credits_buffered;
};

/* A credit leg: applied to its account at the end of the epoch, by the
 * shard that owns the account. */
struct settle_credit {
	uint64_t account;
	uint64_t amount;
	uint32_t ix; /* the account's ledger index */
	uint32_t pad;
};

typedef struct settle_ledger settle_ledger;

/*
 * The accounts of every shard, in one dense array addressed by the
 * account index the sequencer assigns (creation order in the log), 64
 * bytes an account, each on its own cache line. Shards share the array
 * but each writes only the accounts it owns (settle_shard_of), so no
 * line is written by two threads; nobody hashes on the execution path.
 * Untouched pages cost nothing, so memory follows the accounts that
 * exist. Returns 0 or -ENOMEM / -EINVAL.
 */
int settle_ledger_create(uint32_t capacity, settle_ledger **out);
void settle_ledger_destroy(settle_ledger *l);

/* The account at ix, or NULL (empty, out of range). Valid until the next
 * epoch. */
const struct settle_account *settle_ledger_at(const settle_ledger *l,
					      uint32_t ix);

/* Which of nshards owns account id: a fixed hash, the same everywhere. */
uint32_t settle_shard_of(uint64_t id, uint32_t nshards);

/*
 * Where the debit phase puts credit legs. The caller routes each to the
 * shard that owns the account (its own ledger or a ring to another shard).
 */
struct settle_credit_sink {
	void (*put)(void *arg, const struct settle_credit *c);
	void *arg;
};

/*
 * Phase 1 of an epoch on one shard (DESIGN.md "Execution rule"). ops: the
 * epoch's operations this shard owns (ACCOUNT records for its accounts,
 * TRANSFER records whose debit account it owns), in LSN order, chains
 * whole. For each op results[i] receives its result; each accepted
 * transfer's debit is applied at once and its credit leg goes to sink.
 * A debit of a nonneg account is checked against its balance at the end of
 * the previous epoch minus this epoch's debits so far. A linked chain is
 * all or nothing: its first failing transfer gets its reason, every other
 * transfer of the chain SETTLE_LINKED_FAILED, and nothing of it is applied.
 * The sequencer has already refused everything structural; a violation of
 * that (unknown debit account, an account created twice) is a bug: abort.
 * Pure: no clock, no I/O, no allocation. Returns the number accepted.
 */
uint32_t settle_ledger_debit_phase(settle_ledger *l, const struct settle_op *ops,
				   uint32_t n, uint8_t *results,
				   const struct settle_credit_sink *sink);

/* Phase 2: apply credit legs for accounts this shard owns (end of epoch). */
void settle_ledger_apply_credits(settle_ledger *l, const struct settle_credit *c,
				 uint32_t n);

/* Walk the accounts at indexes below span (settle_seq_span), in index
 * order; shard >= 0: only those nshards' shard `shard` owns. Returns how
 * many fn saw. */
uint32_t settle_ledger_foreach(const settle_ledger *l, uint32_t span,
			       int shard, uint32_t nshards,
			       void (*fn)(void *arg,
					  const struct settle_account *a),
			       void *arg);

/* The ledger's own invariants (nonneg accounts not below zero) over the
 * accounts shard `shard` of nshards owns below span (-1: all). Expensive:
 * a walk. */
bool settle_ledger_valid(const settle_ledger *l, uint32_t span, int shard,
			 uint32_t nshards);

/* ---- the sequencer's decisions -------------------------------------------- */

/*
 * The sequencer's two tables (DESIGN.md "Who decides what"): the account
 * directory (every account ever created, with its flags) and the
 * idempotency table (every transfer id in the dedup window, a fingerprint
 * of its fields and its result once known). It refuses, before anything is
 * logged, what does not depend on balances, and answers repeated ids.
 * Pure state: no clock, no I/O, no allocation after create. One thread.
 *
 * The window is FIFO by first logging: once dedup_window ids are
 * remembered, logging a new one forgets the oldest resolved one. A client
 * retrying an id older than the window has it treated as new (and, if the
 * original was accepted, applied again): retries must come within the
 * window, which is sized from config (see docs/decisions.md).
 */
typedef struct settle_seq settle_seq;

enum settle_seq_verdict {
	SETTLE_SEQ_LOG,     /* new: append the record; answer after it ran */
	SETTLE_SEQ_REFUSED, /* answer `result` now; nothing logged or kept */
	SETTLE_SEQ_DONE,    /* a repeat of a settled id: answer its result */
	SETTLE_SEQ_PENDING, /* a repeat of an id in flight: answer when it
			       is resolved (settle_seq_resolve) */
};

struct settle_seq_answer {
	enum settle_seq_verdict verdict;
	enum settle_result result; /* REFUSED, DONE */
	uint64_t epoch;            /* DONE: the epoch it was settled in */
	/* LOG: ledger indexes for the op (settle_op.ix, .credit_ix). */
	uint32_t debit_ix, credit_ix;
};

/* Room for accounts_max accounts and dedup_window transfer ids. Returns 0,
 * -EINVAL or -ENOMEM. */
int settle_seq_create(uint32_t accounts_max, uint32_t dedup_window,
		      settle_seq **out);
void settle_seq_destroy(settle_seq *q);

/* ACCOUNT: LOG (directory updated: it exists from this request on),
 * REFUSED account_exists / bad_request (id 0, unknown flags) / overloaded
 * (directory full). */
void settle_seq_account(settle_seq *q, const struct settle_account_rec *a,
			struct settle_seq_answer *ans);

/*
 * A chain of n transfers (n = 1 for a single one; linked on all but the
 * last). Either every transfer is LOG, or none is and each answer says why:
 * structural errors (bad_request, zero_amount, overflow, same_account,
 * no_such_account) give the first offending transfer its reason and the
 * rest linked_failed; several debit accounts give every transfer
 * linked_multi_debit; ids seen before: identical fields -> DONE/PENDING
 * for all, any difference -> id_conflict for the known ones and
 * linked_failed for the others (the chain is never half repeated).
 */
void settle_seq_chain(settle_seq *q, const struct settle_transfer *t,
		      uint32_t n, struct settle_seq_answer *ans);
/* (n is 1..SETTLE_CHAIN_MAX.) */

/* A logged transfer's result, from its shard, and the epoch it ran in. */
void settle_seq_resolve(settle_seq *q, uint64_t id, enum settle_result r,
			uint64_t epoch);

/* The WAL did not take a logged record (its epoch failed): forget it, so
 * the id and account id are free again. */
void settle_seq_unlog_account(settle_seq *q, uint64_t id);
void settle_seq_unlog_transfer(settle_seq *q, uint64_t id);

/* Does account id exist (flags out, may be NULL)? */
bool settle_seq_account_flags(const settle_seq *q, uint64_t id,
			      uint32_t *flags);
/* Its ledger index, or UINT32_MAX. */
uint32_t settle_seq_account_ix(const settle_seq *q, uint64_t id);

/* Start fetching what settle_seq_chain will read for t, the nth of a
 * batch about to be decided: prefetching the whole batch first overlaps
 * its cache misses instead of taking them one by one. A hint only. */
void settle_seq_prefetch(const settle_seq *q, const struct settle_transfer *t,
			 uint32_t nth);

uint32_t settle_seq_accounts(const settle_seq *q);
/* One past the highest ledger index handed out. */
uint32_t settle_seq_span(const settle_seq *q);
uint32_t settle_seq_remembered(const settle_seq *q);
/* Bytes preallocated for the directory and for the id window (the memory
 * targets are per account and per remembered id). Returns the sum. */
size_t settle_seq_bytes(const settle_seq *q, size_t *accounts, size_t *ids);

/* ---- snapshots of the sequencer and the ledger ---------------------------- */

/* One remembered id as a snapshot stores it. */
struct settle_seq_id {
	uint64_t id;
	uint64_t fingerprint;
	uint64_t epoch_result; /* epoch << 8 | result */
};

/* Every settled id, oldest first (ids in flight are skipped: their
 * records are replayed from the log). Returns how many fn saw. */
uint64_t settle_seq_foreach_settled(const settle_seq *q,
				    void (*fn)(void *arg,
					       const struct settle_seq_id *e),
				    void *arg);

/* Rebuild from a snapshot, into an empty sequencer: accounts in any order,
 * ids oldest first. Return 0, or -ENOSPC when the snapshot does not fit
 * this configuration (accounts_max, dedup_window too small) or -EINVAL
 * for a duplicate. */
int settle_seq_restore_account(settle_seq *q, uint64_t id, uint32_t flags,
			       uint32_t *ix);
int settle_seq_restore_id(settle_seq *q, const struct settle_seq_id *e);

/* Put an account as a snapshot stored it at index ix (from
 * settle_seq_restore_account). Returns 0, -ENOSPC (ix beyond capacity) or
 * -EINVAL (slot taken, id 0, bad flags). */
int settle_ledger_restore(settle_ledger *l, uint32_t ix,
			  const struct settle_account *a);

#endif /* SETTLE_H */
