/*
 * ledger.c - the accounts and the execution of an epoch on one shard's
 * share of them: a preallocated dense array addressed by the sequencer's
 * account index, the debit phase (checks and debits in LSN order, linked
 * chains all or nothing, credit legs out) and the credit phase (legs
 * applied at the end of the epoch).
 *
 * Everything here is a pure function of the operations it is given: no
 * clock, no I/O, no allocation after create. That is what makes the
 * ledger a function of the log, whatever the number of shards.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dove.h"
#include "settle.h"
#include "settle_int.h"

_Static_assert(sizeof(struct settle_account_rec) == 16, "account record");
_Static_assert(sizeof(struct settle_transfer) == 48, "transfer record");
_Static_assert(offsetof(struct settle_transfer, code) == 40, "transfer code");
_Static_assert(sizeof(struct settle_account) == 64, "one account, one line");

/* An open buffer in a shard's table, by ledger index. */
struct hbuf {
	uint32_t ix1; /* ix + 1; 0: empty */
	uint32_t count;
	uint64_t first_id, last_id;
};

/* What one shard keeps besides its accounts; a cache line of its own so
 * shards never write each other's. */
struct shard_state {
	struct hbuf *buf; /* open-addressing, at most half full */
	uint32_t mask, count, cap;
	bool peak;
	char pad[64 - sizeof(void *) - 3 * sizeof(uint32_t) - sizeof(bool)];
};
_Static_assert(sizeof(struct shard_state) == 64, "a shard's line");

struct settle_ledger {
	struct settle_account *acct;
	uint32_t capacity;
	uint32_t nshards;
	struct shard_state *shards;
};

static const char *const hot_reason_names[SETTLE_HOT_REASONS] = {
	"flag", "config", "admin", "auto"
};
static const char *const merge_reason_names[SETTLE_MERGE_REASONS] = {
	"timer", "merge_max", "peak_end", "admin", "hot_off", "debit"
};

const char *
settle_hot_reason_name(unsigned r)
{
	return r < SETTLE_HOT_REASONS ? hot_reason_names[r] : "?";
}

const char *
settle_merge_reason_name(unsigned r)
{
	return r < SETTLE_MERGE_REASONS ? merge_reason_names[r] : "?";
}

static const char *const result_names[SETTLE_RESULT_COUNT] = {
	[SETTLE_OK] = "ok",
	[SETTLE_BAD_REQUEST] = "bad_request",
	[SETTLE_NO_SUCH_ACCOUNT] = "no_such_account",
	[SETTLE_ACCOUNT_EXISTS] = "account_exists",
	[SETTLE_ID_CONFLICT] = "id_conflict",
	[SETTLE_SAME_ACCOUNT] = "same_account",
	[SETTLE_ZERO_AMOUNT] = "zero_amount",
	[SETTLE_INSUFFICIENT_FUNDS] = "insufficient_funds",
	[SETTLE_OVERFLOW] = "overflow",
	[SETTLE_LINKED_OPEN] = "linked_open",
	[SETTLE_LINKED_FAILED] = "linked_failed",
	[SETTLE_LINKED_MULTI_DEBIT] = "linked_multi_debit",
	[SETTLE_OVERLOADED] = "overloaded",
	[SETTLE_UNAVAILABLE] = "unavailable",
};

const char *
settle_result_name(enum settle_result r)
{
	DOVE_ASSERT((unsigned)r < SETTLE_RESULT_COUNT);
	return result_names[r];
}

uint32_t
settle_shard_of(uint64_t id, uint32_t nshards)
{
	DOVE_ASSERT(nshards >= 1);
	/* The high bits: the table uses the low ones, so a shard's accounts
	 * still spread over its whole table. */
	return (uint32_t)((settle_mix64(id) >> 32) % nshards);
}

uint32_t
settle_op_shard(const struct settle_op *op, uint32_t nshards)
{
	switch (op->type) {
	case SETTLE_REC_ACCOUNT:
		return settle_shard_of(op->u.account.id, nshards);
	case SETTLE_REC_TRANSFER:
		return settle_shard_of(op->u.transfer.debit, nshards);
	case SETTLE_REC_PEAK:
		return SETTLE_ALL_SHARDS;
	default: /* HOT, MERGE */
		return op->u.ctl.account == 0
			       ? SETTLE_ALL_SHARDS
			       : settle_shard_of(op->u.ctl.account, nshards);
	}
}

int
settle_ledger_create(uint32_t capacity, uint32_t nshards, uint32_t hot_max,
		     settle_ledger **out)
{
	if (capacity == 0 || capacity > (1u << 30) || nshards == 0 ||
	    nshards > 64 || hot_max == 0 || hot_max > (1u << 20))
		return -EINVAL;
	settle_ledger *l = calloc(1, sizeof(*l));
	/* mmap: page aligned (an account per cache line, so two shards
	 * never write one line) and zeroed lazily, so a ledger sized for
	 * millions of accounts costs only the pages of those that exist. */
	struct settle_account *t =
		settle_map((size_t)capacity * sizeof(*t));
	if (l == NULL || t == NULL) {
		free(l);
		settle_unmap(t, (size_t)capacity * sizeof(*t));
		return -ENOMEM;
	}
	l->acct = t;
	l->capacity = capacity;
	l->nshards = nshards;
	l->shards = aligned_alloc(64, nshards * sizeof(struct shard_state));
	uint32_t slots = 4;
	while (slots < 2 * hot_max)
		slots <<= 1;
	bool ok = l->shards != NULL;
	for (uint32_t i = 0; ok && i < nshards; i++) {
		struct shard_state *st = &l->shards[i];
		memset(st, 0, sizeof(*st));
		st->buf = calloc(slots, sizeof(struct hbuf));
		st->mask = slots - 1;
		st->cap = hot_max;
		ok = st->buf != NULL;
	}
	if (!ok) {
		settle_ledger_destroy(l);
		return -ENOMEM;
	}
	*out = l;
	return 0;
}

void
settle_ledger_destroy(settle_ledger *l)
{
	if (l == NULL)
		return;
	settle_unmap(l->acct, (size_t)l->capacity * sizeof(*l->acct));
	for (uint32_t i = 0; l->shards != NULL && i < l->nshards; i++)
		free(l->shards[i].buf);
	free(l->shards);
	free(l);
}

const struct settle_account *
settle_ledger_at(const settle_ledger *l, uint32_t ix)
{
	if (ix >= l->capacity || l->acct[ix].id == 0)
		return NULL;
	return &l->acct[ix];
}

/* The account an op names by index: it must be id (the sequencer put it
 * there); anything else means the log and the ledger disagree, and
 * running on would be worse than stopping. */
static struct settle_account *
slot(settle_ledger *l, uint32_t ix, uint64_t id)
{
	DOVE_ASSERT(ix < l->capacity);
	struct settle_account *a = &l->acct[ix];
	DOVE_ASSERT(a->id == id);
	return a;
}

static void
create_account(settle_ledger *l, uint32_t ix,
	       const struct settle_account_rec *rec)
{
	DOVE_ASSERT(ix < l->capacity);
	struct settle_account *a = &l->acct[ix];
	/* The sequencer hands out each index once. */
	DOVE_ASSERT(a->id == 0);
	DOVE_ASSERT((rec->flags & ~(uint32_t)SETTLE_ACCOUNT_FLAGS_ALL) == 0);
	memset(a, 0, sizeof(*a));
	a->id = rec->id;
	a->flags = rec->flags;
	if (rec->flags & SETTLE_ACCOUNT_HOT)
		a->flags |= SETTLE_ACCOUNT_HOT_NOW;
}

/* ---- open buffers ---- */

static uint32_t
buf_home(const struct shard_state *st, uint32_t ix)
{
	return (uint32_t)settle_mix64(ix) & st->mask;
}

static struct hbuf *
buf_find(const struct shard_state *st, uint32_t ix)
{
	for (uint32_t i = buf_home(st, ix);; i = (i + 1) & st->mask) {
		if (st->buf[i].ix1 == ix + 1)
			return &st->buf[i];
		if (st->buf[i].ix1 == 0)
			return NULL;
	}
}

static struct hbuf *
buf_get(struct shard_state *st, uint32_t ix)
{
	uint32_t i = buf_home(st, ix);
	for (; st->buf[i].ix1 != 0; i = (i + 1) & st->mask)
		if (st->buf[i].ix1 == ix + 1)
			return &st->buf[i];
	/* Only hot accounts buffer, and the sequencer keeps at most hot_max
	 * of them hot: a full table means the log and the ledger disagree. */
	DOVE_ASSERT(st->count < st->cap);
	st->count++;
	st->buf[i] = (struct hbuf){ ix + 1, 0, 0, 0 };
	return &st->buf[i];
}

static void
buf_remove(struct shard_state *st, struct hbuf *e)
{
	uint32_t hole = (uint32_t)(e - st->buf);
	for (uint32_t i = (hole + 1) & st->mask; st->buf[i].ix1 != 0;
	     i = (i + 1) & st->mask) {
		uint32_t home = buf_home(st, st->buf[i].ix1 - 1);
		if (!settle_shift_back(hole, home, i))
			continue;
		st->buf[hole] = st->buf[i];
		hole = i;
	}
	st->buf[hole] = (struct hbuf){ 0 };
	st->count--;
}

static settle_i128
balance(const struct settle_account *a)
{
	return (settle_i128)a->credits_posted - (settle_i128)a->debits_posted;
}

/* Move a's buffer (entry e) into credits_posted as one batch posting. */
static void
merge_one(struct settle_account *a, const struct hbuf *e, uint64_t lsn,
	  uint32_t reason, const struct settle_shard_out *out)
{
	DOVE_ASSERT(e->count > 0 && a->credits_buffered > 0);
	struct settle_batch b = {
		.account = a->id, .lsn = lsn, .first_id = e->first_id,
		.last_id = e->last_id, .sum = a->credits_buffered,
		.count = e->count, .reason = reason,
	};
	a->credits_posted += a->credits_buffered;
	a->credits_buffered = 0;
	if (out->batch)
		out->batch(out->arg, &b);
}

static void
merge_account(settle_ledger *l, struct shard_state *st, uint32_t ix,
	      uint64_t lsn, uint32_t reason, const struct settle_shard_out *out)
{
	struct hbuf *e = buf_find(st, ix);
	if (e == NULL) {
		DOVE_ASSERT(l->acct[ix].credits_buffered == 0);
		return;
	}
	merge_one(&l->acct[ix], e, lsn, reason, out);
	buf_remove(st, e);
}

static void
merge_all(settle_ledger *l, struct shard_state *st, uint64_t lsn,
	  uint32_t reason, const struct settle_shard_out *out)
{
	if (st->count == 0)
		return;
	for (uint32_t i = 0; i <= st->mask; i++)
		if (st->buf[i].ix1 != 0)
			merge_one(&l->acct[st->buf[i].ix1 - 1], &st->buf[i], lsn,
				  reason, out);
	memset(st->buf, 0, (st->mask + 1) * sizeof(struct hbuf));
	st->count = 0;
}

/* A control record on this shard. */
static void
control(settle_ledger *l, struct shard_state *st, const struct settle_op *op,
	const struct settle_shard_out *out)
{
	const struct settle_ctl_rec *c = &op->u.ctl;
	switch (op->type) {
	case SETTLE_REC_PEAK:
		st->peak = c->on != 0;
		if (!st->peak)
			merge_all(l, st, op->lsn, SETTLE_MERGE_PEAK_END, out);
		break;
	case SETTLE_REC_HOT: {
		struct settle_account *a = slot(l, op->ix, c->account);
		if (c->on) {
			a->flags |= SETTLE_ACCOUNT_HOT_NOW;
		} else {
			DOVE_ASSERT(!(a->flags & SETTLE_ACCOUNT_HOT));
			merge_account(l, st, op->ix, op->lsn,
				      SETTLE_MERGE_HOT_OFF, out);
			a->flags &= ~SETTLE_ACCOUNT_HOT_NOW;
		}
		break;
	}
	case SETTLE_REC_MERGE:
		if (c->account == 0) {
			merge_all(l, st, op->lsn, c->reason, out);
		} else {
			slot(l, op->ix, c->account);
			merge_account(l, st, op->ix, op->lsn, c->reason, out);
		}
		break;
	default:
		DOVE_ASSERT(!"not a control record");
	}
}

/* Can a's balance take a debit of amount now? */
static bool
can_debit(const struct settle_account *a, uint64_t amount)
{
	if (!(a->flags & SETTLE_ACCOUNT_NONNEG))
		return true;
	/* Nonneg: credits_posted >= debits_posted always holds. */
	DOVE_ASSERT(a->credits_posted >= a->debits_posted);
	return a->credits_posted - a->debits_posted >= amount;
}

uint32_t
settle_ledger_debit_phase(settle_ledger *l, uint32_t shard,
			  const struct settle_op *ops, uint32_t n,
			  uint8_t *results, const struct settle_shard_out *out)
{
	DOVE_ASSERT(l != NULL && (ops != NULL || n == 0) && shard < l->nshards);
	DOVE_ASSERT(results != NULL && out != NULL && out->credit != NULL);
	struct shard_state *st = &l->shards[shard];
	uint32_t accepted = 0;
	uint32_t i = 0;
	while (i < n) {
		if (i > 0)
			DOVE_ASSERT(ops[i].lsn > ops[i - 1].lsn);
		if (ops[i].type == SETTLE_REC_ACCOUNT) {
			create_account(l, ops[i].ix, &ops[i].u.account);
			results[i] = SETTLE_OK;
			accepted++;
			i++;
			continue;
		}
		if (ops[i].type != SETTLE_REC_TRANSFER) {
			control(l, st, &ops[i], out);
			results[i] = SETTLE_OK;
			i++;
			continue;
		}
		DOVE_ASSERT(ops[i].type == SETTLE_REC_TRANSFER);

		/* A chain: i..end, linked on all but the last. A single
		 * transfer is a chain of one. */
		uint32_t end = i;
		while (ops[end].u.transfer.flags & SETTLE_TRANSFER_LINKED) {
			end++;
			/* The sequencer never logs an open chain. */
			DOVE_ASSERT(end < n);
			DOVE_ASSERT(ops[end].type == SETTLE_REC_TRANSFER);
			DOVE_ASSERT(ops[end].lsn == ops[end - 1].lsn + 1);
		}
		struct settle_account *a =
			slot(l, ops[i].ix, ops[i].u.transfer.debit);

		uint32_t failed = UINT32_MAX;
		for (uint32_t k = i; k <= end; k++) {
			const struct settle_transfer *t = &ops[k].u.transfer;
			DOVE_ASSERT(t->debit == a->id && ops[k].ix == ops[i].ix);
			DOVE_ASSERT(t->amount > 0 && t->amount <= SETTLE_AMOUNT_MAX);
			if (!can_debit(a, t->amount) && a->credits_buffered > 0) {
				/* Short on posted, credits buffered: merge
				 * them now (depends only on the log). */
				merge_account(l, st, ops[i].ix, ops[k].lsn,
					      SETTLE_MERGE_DEBIT, out);
			}
			if (!can_debit(a, t->amount)) {
				failed = k;
				break;
			}
			a->debits_posted += t->amount; /* tentative in a chain */
			if (out->posts) {
				struct settle_post *p = &out->posts[ops[k].where];
				p->debit_after = balance(a);
				p->debit_hot = (a->flags & SETTLE_ACCOUNT_HOT_NOW) != 0;
			}
		}
		if (failed != UINT32_MAX) {
			/* Undo the chain's debits; nothing of it happened. */
			for (uint32_t k = i; k < failed; k++)
				a->debits_posted -= ops[k].u.transfer.amount;
			for (uint32_t k = i; k <= end; k++)
				results[k] = k == failed ? SETTLE_INSUFFICIENT_FUNDS
							 : SETTLE_LINKED_FAILED;
		} else {
			for (uint32_t k = i; k <= end; k++) {
				const struct settle_transfer *t =
					&ops[k].u.transfer;
				struct settle_credit c = {
					.account = t->credit, .amount = t->amount,
					.lsn = ops[k].lsn, .id = t->id,
					.ix = ops[k].credit_ix, .where = ops[k].where,
				};
				out->credit(out->arg, &c);
				results[k] = SETTLE_OK;
				accepted++;
			}
		}
		i = end + 1;
	}
	return accepted;
}

static void
credit_one(settle_ledger *l, struct shard_state *st, const struct settle_credit *c,
	   const struct settle_shard_out *out)
{
	/* The credit account was created at an earlier LSN, so it exists by
	 * now. */
	struct settle_account *a = slot(l, c->ix, c->account);
	DOVE_ASSERT(c->amount > 0);
	struct settle_post *p = out->posts ? &out->posts[c->where] : NULL;
	if (p)
		p->credit_hot = (a->flags & SETTLE_ACCOUNT_HOT_NOW) != 0;
	if (st->peak && (a->flags & SETTLE_ACCOUNT_HOT_NOW)) {
		struct hbuf *e = buf_get(st, c->ix);
		if (e->count++ == 0)
			e->first_id = c->id;
		e->last_id = c->id;
		a->credits_buffered += c->amount;
		if (p)
			p->credit_buffered = 1;
		return;
	}
	a->credits_posted += c->amount;
	if (p) {
		p->credit_buffered = 0;
		p->credit_after = balance(a);
	}
}

void
settle_ledger_apply_credits(settle_ledger *l, uint32_t shard,
			    const struct settle_credit *const *lists,
			    const uint32_t *counts, uint32_t nlists,
			    const struct settle_shard_out *out)
{
	DOVE_ASSERT(shard < l->nshards && nlists <= 64);
	struct shard_state *st = &l->shards[shard];
	uint32_t pos[64] = { 0 };
	/* Merge the sorted lists by LSN: the order credits land in (and so
	 * every balance-after and a batch's first/last id) must not depend
	 * on how many shards there are. */
	for (;;) {
		uint32_t best = UINT32_MAX;
		uint64_t lsn = UINT64_MAX;
		for (uint32_t k = 0; k < nlists; k++) {
			if (pos[k] < counts[k] && lists[k][pos[k]].lsn < lsn) {
				lsn = lists[k][pos[k]].lsn;
				best = k;
			}
		}
		if (best == UINT32_MAX)
			break;
		credit_one(l, st, &lists[best][pos[best]++], out);
	}
}

bool
settle_ledger_peak(const settle_ledger *l)
{
	return l->shards[0].peak;
}

bool
settle_ledger_buffer(const settle_ledger *l, uint32_t ix,
		     struct settle_buffer *out)
{
	if (ix >= l->capacity || l->acct[ix].id == 0)
		return false;
	const struct shard_state *st =
		&l->shards[settle_shard_of(l->acct[ix].id, l->nshards)];
	const struct hbuf *e = buf_find(st, ix);
	if (e == NULL)
		return false;
	*out = (struct settle_buffer){ l->acct[ix].id, ix, e->count,
				       e->first_id, e->last_id };
	return true;
}

void
settle_ledger_foreach_buffer(const settle_ledger *l,
			     void (*fn)(void *arg, const struct settle_buffer *b),
			     void *arg)
{
	for (uint32_t s = 0; s < l->nshards; s++) {
		const struct shard_state *st = &l->shards[s];
		for (uint32_t i = 0; i <= st->mask; i++) {
			const struct hbuf *e = &st->buf[i];
			if (e->ix1 == 0)
				continue;
			struct settle_buffer b = { l->acct[e->ix1 - 1].id,
						   e->ix1 - 1, e->count,
						   e->first_id, e->last_id };
			fn(arg, &b);
		}
	}
}

void
settle_ledger_restore_peak(settle_ledger *l, bool on)
{
	for (uint32_t s = 0; s < l->nshards; s++)
		l->shards[s].peak = on;
}

int
settle_ledger_restore_buffer(settle_ledger *l, const struct settle_buffer *b)
{
	if (b->ix >= l->capacity || l->acct[b->ix].id != b->account ||
	    b->account == 0 || b->count == 0 ||
	    l->acct[b->ix].credits_buffered == 0)
		return -EINVAL;
	struct shard_state *st = &l->shards[settle_shard_of(b->account,
							    l->nshards)];
	if (buf_find(st, b->ix) != NULL)
		return -EINVAL;
	if (st->count == st->cap)
		return -ENOSPC;
	struct hbuf *e = buf_get(st, b->ix);
	e->count = b->count;
	e->first_id = b->first_id;
	e->last_id = b->last_id;
	return 0;
}

static bool
mine(const struct settle_account *a, int shard, uint32_t nshards)
{
	return a->id != 0 &&
	       (shard < 0 || settle_shard_of(a->id, nshards) == (uint32_t)shard);
}

uint32_t
settle_ledger_foreach(const settle_ledger *l, uint32_t span, int shard,
		      uint32_t nshards,
		      void (*fn)(void *arg, const struct settle_account *a),
		      void *arg)
{
	DOVE_ASSERT(span <= l->capacity);
	uint32_t n = 0;
	for (uint32_t i = 0; i < span; i++) {
		if (!mine(&l->acct[i], shard, nshards))
			continue;
		if (fn)
			fn(arg, &l->acct[i]);
		n++;
	}
	return n;
}

bool
settle_ledger_valid(const settle_ledger *l, uint32_t span, int shard,
		    uint32_t nshards)
{
	if (span > l->capacity)
		return false;
	for (uint32_t i = 0; i < span; i++) {
		const struct settle_account *a = &l->acct[i];
		if (!mine(a, shard, nshards))
			continue;
		if ((a->flags & ~(uint32_t)(SETTLE_ACCOUNT_FLAGS_ALL |
					    SETTLE_ACCOUNT_HOT_NOW)) ||
		    ((a->flags & SETTLE_ACCOUNT_NONNEG) &&
		     a->credits_posted < a->debits_posted))
			return false;
	}
	return true;
}

int
settle_ledger_restore(settle_ledger *l, uint32_t ix,
		      const struct settle_account *a)
{
	if (a->id == 0 || (a->flags & ~(uint32_t)(SETTLE_ACCOUNT_FLAGS_ALL |
						   SETTLE_ACCOUNT_HOT_NOW)))
		return -EINVAL;
	if (ix >= l->capacity)
		return -ENOSPC;
	if (l->acct[ix].id != 0)
		return -EINVAL;
	l->acct[ix] = *a;
	return 0;
}
