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

static void
json_i128(struct json_buf *j, settle_i128 v)
{
	char b[48];
	b[0] = '-';
	settle_u128 u = v < 0 ? (settle_u128)(-(v + 1)) + 1 : (settle_u128)v;
	size_t n = proto_u128(b + 1, u);
	json_strn(j, v < 0 ? b : b + 1, v < 0 ? n + 1 : n);
}

/* Batches seen so far in a newest-first walk, to name the one that
 * merged a buffered credit: the oldest batch of its account from a later
 * epoch (credits of an epoch are merged from the next one on). */
#define SEEN_MAX 64

void
journal_history_json(const struct journal *jn, uint64_t account,
		     uint32_t limit, struct json_buf *j)
{
	struct { uint64_t epoch, lsn; } seen[SEEN_MAX];
	uint32_t nseen = 0, out = 0;
	uint64_t oldest = jn->next > jn->cap ? jn->next - jn->cap : 0;
	json_obj_begin(j);
	json_key(j, "account");
	json_u64(j, account);
	json_key(j, "window");
	json_str(j, "in-memory journal: the newest [hot] history entries of all "
		    "accounts");
	json_key(j, "entries");
	json_arr_begin(j);
	for (uint64_t n = jn->next; n > oldest && out < limit; n--) {
		const struct jent *e = &jn->e[(n - 1) % jn->cap];
		if (e->kind == J_BATCH) {
			if (e->credit != account)
				continue;
			/* Keep the newest SEEN_MAX - 1 and the oldest. */
			if (nseen == SEEN_MAX)
				nseen--;
			seen[nseen].epoch = e->epoch;
			seen[nseen++].lsn = e->lsn;
			json_obj_begin(j);
			json_key(j, "type");
			json_str(j, "batch");
			json_key(j, "epoch");
			json_u64(j, e->epoch);
			json_key(j, "lsn");
			json_u64(j, e->lsn);
			json_key(j, "time_ns");
			json_u64(j, e->time_ns);
			json_key(j, "reason");
			json_str(j, settle_merge_reason_name(e->reason));
			json_key(j, "count");
			json_u64(j, e->count);
			json_key(j, "sum");
			json_i128(j, e->credit_after);
			json_key(j, "first_id");
			json_u64(j, e->id);
			json_key(j, "last_id");
			json_u64(j, e->ref);
			json_obj_end(j);
			out++;
			continue;
		}
		if (e->debit != account && e->credit != account)
			continue;
		bool debit = e->debit == account;
		json_obj_begin(j);
		json_key(j, "type");
		json_str(j, "transfer");
		json_key(j, "id");
		json_u64(j, e->id);
		json_key(j, "epoch");
		json_u64(j, e->epoch);
		json_key(j, "lsn");
		json_u64(j, e->lsn);
		json_key(j, "time_ns");
		json_u64(j, e->time_ns);
		json_key(j, "side");
		json_str(j, debit ? "debit" : "credit");
		json_key(j, "other");
		json_u64(j, debit ? e->credit : e->debit);
		json_key(j, "amount");
		json_u64(j, e->amount);
		json_key(j, "code");
		json_u64(j, e->code);
		json_key(j, "ref");
		json_u64(j, e->ref);
		json_key(j, "result");
		json_str(j, settle_result_name((enum settle_result)e->result));
		if (e->result == SETTLE_OK) {
			json_key(j, "settled");
			if (!debit && e->credit_buffered) {
				json_str(j, "buffered");
				json_key(j, "batch_lsn");
				uint32_t b = nseen;
				while (b > 0 && seen[b - 1].epoch <= e->epoch)
					b--;
				/* seen[] is newest first: the last one
				 * with a later epoch is the oldest such. */
				if (b > 0)
					json_u64(j, seen[b - 1].lsn);
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
	json_obj_end(j);
}
