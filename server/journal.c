/*
 * journal.c - the recent journal: every executed transfer (how it
 * settled: in real time with the balances after it, or buffered) and
 * every batch posting (a merge), in a bounded ring of the newest
 * [hot] history entries, for admin `history`. It is a window for
 * support and the demo; statements for any period come from the MariaDB
 * projection.
 *
 * Main thread only, appended after each epoch from the shards' outputs.
 */
#include <stdlib.h>
#include <string.h>

#include "dove.h"
#include "server_int.h"

enum { J_TRANSFER = 1, J_BATCH = 2 };

/* The longest entry's JSON: a batch or a transfer with every field at its
 * widest (20-digit ids, 40-character balances) is under 300 bytes. */
#define JOURNAL_ENTRY_MAX 512

struct jent {
	uint8_t kind;
	uint8_t result;          /* transfer: settle_result */
	uint8_t credit_buffered; /* transfer */
	uint8_t reason;          /* batch: settle_merge_reason */
	uint16_t code;
	uint32_t count;          /* batch */
	uint64_t epoch, lsn, time_ns;
	uint64_t id;             /* transfer id; batch: first transfer id */
	uint64_t debit, credit;  /* batch: credit = the account */
	uint64_t amount;         /* transfer */
	uint64_t ref;            /* transfer; batch: last transfer id */
	settle_i128 debit_after, credit_after; /* batch: sum in credit_after */
};

struct journal {
	struct jent *e;
	uint64_t cap, next; /* next: entries ever appended */
};

struct journal *
journal_create(uint32_t entries)
{
	struct journal *jn = calloc(1, sizeof(*jn));
	DOVE_ASSERT(jn != NULL && entries > 0);
	jn->e = calloc(entries, sizeof(struct jent));
	DOVE_ASSERT(jn->e != NULL); /* start-up: no memory, no server */
	jn->cap = entries;
	return jn;
}

void
journal_destroy(struct journal *jn)
{
	if (jn == NULL)
		return;
	free(jn->e);
	free(jn);
}

static struct jent *
push(struct journal *jn)
{
	struct jent *e = &jn->e[jn->next++ % jn->cap];
	memset(e, 0, sizeof(*e));
	return e;
}

void
journal_transfer(struct journal *jn, const struct settle_transfer *t,
		 enum settle_result r, uint64_t epoch, uint64_t lsn,
		 uint64_t time_ns, const struct settle_post *p)
{
	struct jent *e = push(jn);
	e->kind = J_TRANSFER;
	e->result = (uint8_t)r;
	e->code = t->code;
	e->epoch = epoch;
	e->lsn = lsn;
	e->time_ns = time_ns;
	e->id = t->id;
	e->debit = t->debit;
	e->credit = t->credit;
	e->amount = t->amount;
	e->ref = t->ref;
	if (r == SETTLE_OK) {
		e->credit_buffered = p->credit_buffered;
		e->debit_after = p->debit_after;
		e->credit_after = p->credit_after;
	}
}

void
journal_batch(struct journal *jn, const struct settle_batch *b, uint64_t epoch,
	      uint64_t time_ns)
{
	struct jent *e = push(jn);
	e->kind = J_BATCH;
	e->reason = (uint8_t)b->reason;
	e->count = b->count;
	e->epoch = epoch;
	e->lsn = b->lsn;
	e->time_ns = time_ns;
	e->id = b->first_id;
	e->ref = b->last_id;
	e->credit = b->account;
	e->credit_after = (settle_i128)b->sum;
}

/* What every entry says first. */
static void
entry_head(struct json_buf *j, const struct jent *e, const char *type)
{
	json_obj_begin(j);
	json_kv_str(j, "type", type);
	json_kv_u64(j, "epoch", e->epoch);
	json_kv_u64(j, "lsn", e->lsn);
	json_kv_u64(j, "time_ns", e->time_ns);
}

/* The batch that merged a buffered credit is its account's first batch
 * of a later epoch (buffers fill at the end of an epoch; a merge takes
 * the whole buffer). Walking newest first, epochs only go down, so two
 * batches say it: the last one seen, and the last one seen before it
 * with a greater epoch. */
struct merged_by {
	const struct jent *cur, *prev;
};

static void
saw_batch(struct merged_by *m, const struct jent *b)
{
	if (m->cur != NULL && b->epoch < m->cur->epoch)
		m->prev = m->cur;
	m->cur = b;
}

static const struct jent *
batch_of(const struct merged_by *m, uint64_t epoch)
{
	if (m->cur != NULL && m->cur->epoch > epoch)
		return m->cur;
	return m->prev; /* cur is of this very epoch, or there is none */
}

void
journal_history_json(const struct journal *jn, uint64_t account,
		     uint32_t limit, struct json_buf *j)
{
	struct merged_by merged = { NULL, NULL };
	uint32_t out = 0;
	uint64_t oldest = jn->next > jn->cap ? jn->next - jn->cap : 0;
	json_obj_begin(j);
	json_kv_u64(j, "account", account);
	json_kv_str(j, "window", "in-memory journal: the newest [hot] history entries of all "
		    "accounts");
	json_key(j, "entries");
	json_arr_begin(j);
	bool truncated = false;
	for (uint64_t n = jn->next; n > oldest && out < limit; n--) {
		const struct jent *e = &jn->e[(n - 1) % jn->cap];
		/* An entry is under 512 bytes: stop while the reply still
		 * fits its buffer, and say so, rather than overflow it. */
		if (j->cap - j->len < JOURNAL_ENTRY_MAX + 64) {
			truncated = true;
			break;
		}
		if (e->kind == J_BATCH) {
			if (e->credit != account)
				continue;
			saw_batch(&merged, e);
			entry_head(j, e, "batch");
			json_kv_str(j, "reason", settle_merge_reason_name(e->reason));
			json_kv_u64(j, "count", e->count);
			json_key(j, "sum");
			json_i128(j, e->credit_after);
			json_kv_u64(j, "first_id", e->id);
			json_kv_u64(j, "last_id", e->ref);
			json_obj_end(j);
			out++;
			continue;
		}
		if (e->debit != account && e->credit != account)
			continue;
		bool debit = e->debit == account;
		entry_head(j, e, "transfer");
		json_kv_u64(j, "id", e->id);
		json_kv_str(j, "side", debit ? "debit" : "credit");
		json_kv_u64(j, "other", debit ? e->credit : e->debit);
		json_kv_u64(j, "amount", e->amount);
		json_kv_u64(j, "code", e->code);
		json_kv_u64(j, "ref", e->ref);
		json_kv_str(j, "result", settle_result_name((enum settle_result)e->result));
		if (e->result == SETTLE_OK) {
			json_key(j, "settled");
			if (!debit && e->credit_buffered) {
				json_str(j, "buffered");
				json_key(j, "batch_lsn");
				const struct jent *b = batch_of(&merged, e->epoch);
				if (b != NULL)
					json_u64(j, b->lsn);
				else
					json_null(j); /* not merged yet */
			} else {
				json_str(j, "realtime");
				json_key(j, "balance_after");
				json_i128(j, debit ? e->debit_after
						   : e->credit_after);
			}
		}
		json_obj_end(j);
		out++;
	}
	json_arr_end(j);
	/* true: older entries exist that did not fit one reply; ask with
	 * a smaller --limit... or read MariaDB (the full history). */
	json_kv_bool(j, "truncated", truncated);
	json_obj_end(j);
}
