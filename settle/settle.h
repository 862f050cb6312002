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
/* In the ledger only (never in an ACCOUNT record): hot right now, by its
 * flag or by a HOT record. Snapshots keep it with the account. */
#define SETTLE_ACCOUNT_HOT_NOW (1u << 16)

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

/*
 * 128-bit counters as decimal text (the protocol, admin JSON, MariaDB's
 * DECIMAL columns all take them so): digits, a '-' first when negative,
 * no NUL. Return the length; out must hold 41 bytes.
 */
size_t settle_u128_text(char *out, unsigned __int128 v);
size_t settle_i128_text(char *out, __int128 v);

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

/* WAL record types owned by the ledger. PEAK, HOT and MERGE are the
 * control records the sequencer writes on its own (DESIGN.md,
 * "Differentiated settlement"). */
enum settle_rec_type {
	SETTLE_REC_ACCOUNT = 1,
	SETTLE_REC_TRANSFER = 2,
	SETTLE_REC_PEAK = 3,
	SETTLE_REC_HOT = 4,
	SETTLE_REC_MERGE = 5,
};

/* Why an account is hot (HOT records, admin `hot`); the lowest wins when
 * several apply. */
enum settle_hot_reason {
	SETTLE_HOT_FLAG = 0,   /* created `hot`: for ever */
	SETTLE_HOT_CONFIG = 1, /* [hot] accounts */
	SETTLE_HOT_ADMIN = 2,  /* admin `hot add` */
	SETTLE_HOT_AUTO = 3,   /* the rate detector */
	SETTLE_HOT_REASONS
};

/* Why a buffer was merged (a batch posting names it). */
enum settle_merge_reason {
	SETTLE_MERGE_TIMER = 0, /* every [hot] merge_ms during peak */
	SETTLE_MERGE_MAX = 1,   /* [hot] merge_max credits logged */
	SETTLE_MERGE_PEAK_END = 2,
	SETTLE_MERGE_ADMIN = 3,
	SETTLE_MERGE_HOT_OFF = 4, /* the account stopped being hot */
	SETTLE_MERGE_DEBIT = 5,   /* a debit needed the buffered credits */
	SETTLE_MERGE_REASONS
};

const char *settle_hot_reason_name(unsigned r);
const char *settle_merge_reason_name(unsigned r);

/*
 * The WAL payload of PEAK, HOT and MERGE records. Layout pinned.
 * PEAK: on = 1/0. HOT: account, on = 1/0, reason (settle_hot_reason).
 * MERGE: account (0: every buffer), reason (settle_merge_reason).
 */
struct settle_ctl_rec {
	uint64_t account;
	uint32_t on;
	uint32_t reason;
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
	uint32_t where; /* its index in the epoch: outputs go there */
	uint16_t type;  /* settle_rec_type */
	uint16_t pad;
	union {
		struct settle_account_rec account;
		struct settle_transfer transfer;
		struct settle_ctl_rec ctl;
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
	uint64_t lsn; /* credits are applied in LSN order at the barrier */
	uint64_t id;  /* the transfer's */
	uint32_t ix;  /* the account's ledger index */
	uint32_t where; /* the transfer's index in the epoch */
};

typedef __int128 settle_i128;

/* One merge: a hot account's buffered credits moved into credits_posted
 * as one batch posting. A batch is named by (account, lsn). */
struct settle_batch {
	uint64_t account;
	uint64_t lsn;      /* the record that merged it */
	uint64_t first_id; /* first and last transfer buffered in it */
	uint64_t last_id;
	settle_u128 sum;
	uint32_t count;
	uint32_t reason; /* settle_merge_reason */
};

/* What one transfer did to balances (balance = credits_posted -
 * debits_posted), for the journal: written by the shards at [where]. */
struct settle_post {
	settle_i128 debit_after;
	settle_i128 credit_after; /* when not buffered */
	uint8_t credit_buffered;  /* the credit went to credits_buffered */
	uint8_t debit_hot, credit_hot; /* the account was hot then */
};

typedef struct settle_ledger settle_ledger;

/*
 * The accounts of every shard, in one dense array addressed by the
 * account index the sequencer assigns (creation order in the log), 64
 * bytes an account, each on its own cache line. Shards share the array
 * but each writes only the accounts it owns (settle_shard_of), so no
 * line is written by two threads; nobody hashes on the execution path.
 * Untouched pages cost nothing, so memory follows the accounts that
 * exist. Each of nshards shards also keeps the open buffers of its hot
 * accounts (at most hot_max). Returns 0 or -ENOMEM / -EINVAL.
 */
int settle_ledger_create(uint32_t capacity, uint32_t nshards,
			 uint32_t hot_max, settle_ledger **out);
void settle_ledger_destroy(settle_ledger *l);

/* The account at ix, or NULL (empty, out of range). Valid until the next
 * epoch. */
const struct settle_account *settle_ledger_at(const settle_ledger *l,
					      uint32_t ix);

/* Which of nshards owns account id: a fixed hash, the same everywhere. */
uint32_t settle_shard_of(uint64_t id, uint32_t nshards);

/* The shard an op goes to (settle_ledger_debit_phase says which ops a
 * shard must see): the owner of the account it is about — the new
 * account, a transfer's debit account, a HOT or MERGE's account — or
 * SETTLE_ALL_SHARDS for a PEAK record and a MERGE of every buffer, which
 * every shard sees (and whose result is taken from shard 0). */
#define SETTLE_ALL_SHARDS UINT32_MAX
uint32_t settle_op_shard(const struct settle_op *op, uint32_t nshards);

/*
 * Where a shard's outputs go: credit legs (the caller routes each to the
 * shard that owns the account), batch postings (merges), and per-transfer
 * balances for the journal (posts[op.where]; NULL: not wanted).
 */
struct settle_shard_out {
	void (*credit)(void *arg, const struct settle_credit *c);
	void (*batch)(void *arg, const struct settle_batch *b);
	void *arg;
	struct settle_post *posts;
};

/*
 * Phase 1 of an epoch on shard `shard` (DESIGN.md "Execution rule"). ops:
 * the epoch's operations this shard must see, in LSN order, chains whole:
 * ACCOUNT records for its accounts, TRANSFER records whose debit account
 * it owns, HOT and MERGE records for its accounts, and every PEAK record
 * and MERGE of all (account 0). For each op results[i] receives its
 * result; each accepted transfer's debit is applied at once and its
 * credit leg goes out. A debit of a nonneg account is checked against its
 * posted balance at the end of the previous epoch minus this epoch's
 * debits so far; if that is short and the account has buffered credits,
 * they are merged first (SETTLE_MERGE_DEBIT) and it is checked again. A
 * linked chain is all or nothing: its first failing transfer gets its
 * reason, every other transfer of the chain SETTLE_LINKED_FAILED, and
 * nothing of it is applied. A merge (MERGE, HOT off, PEAK off) moves the
 * buffer as it stands at its LSN.
 * The sequencer has already refused everything structural; a violation of
 * that (unknown debit account, an account created twice) is a bug: abort.
 * Pure: no clock, no I/O, no allocation. Returns the number accepted.
 */
uint32_t settle_ledger_debit_phase(settle_ledger *l, uint32_t shard,
				   const struct settle_op *ops, uint32_t n,
				   uint8_t *results,
				   const struct settle_shard_out *out);

/*
 * Phase 2, at the end of the epoch: the credit legs for shard's accounts,
 * from every shard (nlists lists, each in LSN order), applied in LSN order.
 * A credit is buffered when, at the end of its epoch, peak is on and its
 * account is hot; otherwise it is posted.
 */
void settle_ledger_apply_credits(settle_ledger *l, uint32_t shard,
				 const struct settle_credit *const *lists,
				 const uint32_t *counts, uint32_t nlists,
				 const struct settle_shard_out *out);

/* Is peak on, as the shards see it (the end of the last epoch)? */
bool settle_ledger_peak(const settle_ledger *l);

/* An open buffer: buffered credits not merged yet. */
struct settle_buffer {
	uint64_t account;
	uint32_t ix;
	uint32_t count;
	uint64_t first_id, last_id;
};

/* The open buffer of account ix (its count and first/last ids), if any. */
bool settle_ledger_buffer(const settle_ledger *l, uint32_t ix,
			  struct settle_buffer *out);
/* Every open buffer (order unspecified). */
void settle_ledger_foreach_buffer(const settle_ledger *l,
				  void (*fn)(void *arg,
					     const struct settle_buffer *b),
				  void *arg);

/* From a snapshot, after the accounts: peak, and each open buffer.
 * restore_buffer returns 0, -EINVAL (no such account, none buffered, a
 * second one) or -ENOSPC. */
void settle_ledger_restore_peak(settle_ledger *l, bool on);
int settle_ledger_restore_buffer(settle_ledger *l, const struct settle_buffer *b);

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
	/* LOG, a transfer: its credit account reached [hot] merge_max
	 * credits since its last merge: log a MERGE of it next. */
	uint8_t merge_due;
};

/* Room for accounts_max accounts and dedup_window transfer ids. Returns 0,
 * -EINVAL or -ENOMEM. */
int settle_seq_create(uint32_t accounts_max, uint32_t dedup_window,
		      uint32_t hot_max, settle_seq **out);
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

/*
 * Replay: decide a logged record again, in log order. The sequencer must
 * say LOG to it, as it did when it was logged. A transfer linked to the
 * next is held in c until its chain is complete; then the whole chain
 * comes out. ops (room for SETTLE_CHAIN_MAX) receives *n ops with their
 * ledger indexes (lsn and where are the caller's). Returns 0, -EINVAL
 * (unknown type or size, a chain too long or interrupted) or
 * -DOVE_ECORRUPT (the sequencer refuses it: the log and this code
 * disagree). An epoch must end with c->len == 0.
 */
struct settle_relog {
	struct settle_transfer chain[SETTLE_CHAIN_MAX];
	uint32_t len;
};
int settle_seq_relog(settle_seq *q, struct settle_relog *c, uint16_t type,
		     const void *data, uint32_t len, struct settle_op *ops,
		     uint32_t *n);

/* ---- peak and the hot set (DESIGN.md "Differentiated settlement") ------- */

/* Credits logged to one hot account during peak before a MERGE of it is
 * due (settle_seq_answer.merge_due). Live: takes effect at once. */
void settle_seq_set_merge_max(settle_seq *q, uint64_t merge_max);

/*
 * A control record the server wants to log (PEAK, HOT, MERGE; c as the
 * WAL holds it). LOG (the sequencer's state changed with it: peak on/off,
 * hot set) or REFUSED: bad_request (malformed, PEAK to the state it is
 * in, HOT off of an account hot by its flag), no_such_account (HOT or
 * MERGE of an unknown account; HOT off / MERGE of one not hot),
 * account_exists (HOT on of a hot one), overloaded (hot set full).
 * debit_ix: the account's index for HOT/MERGE of one account.
 */
void settle_seq_control(settle_seq *q, uint16_t type,
			const struct settle_ctl_rec *c,
			struct settle_seq_answer *ans);
/* The WAL did not take it: undo its effect on peak / the hot set. */
void settle_seq_unlog_control(settle_seq *q, uint16_t type,
			      const struct settle_ctl_rec *c);

bool settle_seq_peak(const settle_seq *q);
/* Is id hot (reason out, may be NULL)? */
bool settle_seq_hot(const settle_seq *q, uint64_t id, uint32_t *reason);
uint32_t settle_seq_hot_count(const settle_seq *q);
void settle_seq_foreach_hot(const settle_seq *q,
			    void (*fn)(void *arg, uint64_t id, uint32_t reason),
			    void *arg);
/* Credits logged to hot accounts in peak since the last merge of all:
 * 0 means a timed merge would move nothing. */
uint64_t settle_seq_buffered_since_merge(const settle_seq *q);

void settle_seq_restore_peak(settle_seq *q, bool on);
/* After the accounts: 0, -EINVAL (unknown, already hot, bad reason) or
 * -ENOSPC. */
int settle_seq_restore_hot(settle_seq *q, uint64_t id, uint32_t reason);

/*
 * The automatic detector's counts (settle/sketch.c): postings per account
 * in the current window, in fixed memory (about 260 KiB) whatever the
 * number of accounts. Not part of the ledger: it is not logged or
 * snapshotted; what it finds becomes HOT records.
 */
typedef struct settle_sketch settle_sketch;

int settle_sketch_create(settle_sketch **out);
void settle_sketch_destroy(settle_sketch *s);
size_t settle_sketch_bytes(const settle_sketch *s);
/* A new window: forget every count; an account becomes heavy when its
 * count reaches level (threshold x window seconds). */
void settle_sketch_reset(settle_sketch *s, uint32_t level);
/* One posting to id; returns its estimated count this window. */
uint32_t settle_sketch_add(settle_sketch *s, uint64_t id);
uint32_t settle_sketch_estimate(const settle_sketch *s, uint64_t id);
/* The accounts that reached the level this window (at most max). */
uint32_t settle_sketch_heavy(const settle_sketch *s, uint64_t *ids,
			     uint32_t max);

/* ---- a whole state machine on one thread (settle/engine.c) --------------- */

/*
 * The sequencer and a one-shard ledger, fed logged epochs: record by
 * record (settle_engine_add, in log order), then settle_engine_run. The
 * sequencer must say LOG to every record (it did when they were logged);
 * anything else is -DOVE_ECORRUPT and the engine is unusable after it.
 * Outputs (by record: the op, its result, its balances; the epoch's
 * batch postings) stay valid until the next add.
 */
typedef struct settle_engine settle_engine;

struct settle_engine_out {
	uint32_t n;
	const struct settle_op *ops;
	const uint8_t *results;
	const struct settle_post *posts;
	const struct settle_batch *batches;
	uint32_t nbatches;
};

int settle_engine_create(uint32_t accounts_max, uint32_t dedup_window,
			 uint32_t hot_max, uint32_t max_records,
			 settle_engine **out);
void settle_engine_destroy(settle_engine *e);
int settle_engine_add(settle_engine *e, uint16_t type, const void *data,
		      uint32_t len);
int settle_engine_run(settle_engine *e, uint64_t epoch, uint64_t first_lsn,
		      struct settle_engine_out *out);
/* Its state (to restore a snapshot into, before the first epoch). */
settle_seq *settle_engine_seq(settle_engine *e);
settle_ledger *settle_engine_ledger(settle_engine *e);

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
