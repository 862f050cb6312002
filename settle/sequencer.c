/*
 * sequencer.c - the sequencer's decisions: the account directory (dense,
 * by account index, which it hands to the shards with every op) and the
 * idempotency window (a FIFO ring of remembered ids), each found through
 * a compact hash index (settle_int.h) with backward-shift deletion, so
 * forgetting an id never leaves a tombstone that slows later probes.
 *
 * It decides only what does not depend on balances; shards decide the
 * rest and report back through settle_seq_resolve.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dove.h"
#include "settle.h"
#include "settle_int.h"

/* Result byte of an id still in flight. */
#define PENDING 0xffu

/* The directory, dense by account index (creation order in the log): the
 * index is what the shards address the ledger by. id 0: a hole left by
 * an account whose epoch failed; its ledger slot was never written, so
 * the next new account takes it (holes are chained through `next`). */
struct dir_ent {
	uint64_t id;
	uint32_t flags;
	uint32_t next; /* hole: the next hole's index + 1, 0: none;
			  account: its hot entry + 1, 0: not hot */
};

/* The hot set, dense (removal moves the last entry into the hole). */
struct hot_ent {
	uint64_t id;
	uint32_t ix;
	uint32_t reason; /* settle_hot_reason */
	uint64_t since;  /* credits logged to it during peak since its last
			    merge (for merge_max) */
};

/* The dedup window, a FIFO ring in logging order; the index points into
 * it. id 0: a stale slot (its epoch failed). */
struct id_ent {
	uint64_t id;
	uint64_t fp; /* fingerprint */
	uint64_t b;  /* epoch << 8 | result (PENDING) */
};

struct settle_seq {
	struct settle_index accounts;
	struct dir_ent *dir;
	uint32_t dir_cap, span, holes; /* holes: first hole's index + 1 */
	struct settle_index ids;
	struct id_ent *fifo;
	uint32_t fifo_cap, fifo_head, fifo_len;
	struct hot_ent *hot;
	uint32_t hot_cap, hot_len;
	uint64_t merge_max;
	uint64_t since_all; /* buffered credits logged since a merge of all */
	bool peak;
};

static uint32_t
dir_find(const settle_seq *q, uint64_t id)
{
	if (id == 0)
		return SETTLE_INDEX_NONE;
	return settle_index_find(&q->accounts, id,
				 (struct settle_index_keys){ q->dir, sizeof(*q->dir) });
}

static struct id_ent *
id_find(const settle_seq *q, uint64_t id)
{
	uint32_t pos = settle_index_find(&q->ids, id,
					 (struct settle_index_keys){ q->fifo, sizeof(*q->fifo) });
	return pos == SETTLE_INDEX_NONE ? NULL : &q->fifo[pos];
}

int
settle_seq_create(uint32_t accounts_max, uint32_t dedup_window,
		  uint32_t hot_max, settle_seq **out)
{
	if (accounts_max == 0 || dedup_window == 0 || hot_max == 0 ||
	    accounts_max > (1u << 30) || dedup_window > (1u << 30) ||
	    hot_max > (1u << 20))
		return -EINVAL;
	settle_seq *q = calloc(1, sizeof(*q));
	if (q == NULL)
		return -ENOMEM;
	q->hot = calloc(hot_max, sizeof(*q->hot));
	q->hot_cap = hot_max;
	q->merge_max = UINT64_MAX;
	q->dir_cap = accounts_max;
	q->fifo_cap = dedup_window;
	q->dir = settle_map((size_t)accounts_max * sizeof(*q->dir));
	q->fifo = settle_map((size_t)dedup_window * sizeof(*q->fifo));
	if (q->dir == NULL || q->fifo == NULL || q->hot == NULL ||
	    settle_index_init(&q->accounts, accounts_max) != 0 ||
	    settle_index_init(&q->ids, dedup_window) != 0) {
		settle_seq_destroy(q);
		return -ENOMEM;
	}
	*out = q;
	return 0;
}

void
settle_seq_destroy(settle_seq *q)
{
	if (q == NULL)
		return;
	settle_index_free(&q->accounts);
	settle_index_free(&q->ids);
	settle_unmap(q->dir, (size_t)q->dir_cap * sizeof(*q->dir));
	settle_unmap(q->fifo, (size_t)q->fifo_cap * sizeof(*q->fifo));
	free(q->hot);
	free(q);
}

size_t
settle_seq_bytes(const settle_seq *q, size_t *per_account, size_t *per_id)
{
	size_t a = (size_t)q->accounts.nslots * sizeof(uint64_t) +
		   (size_t)q->dir_cap * sizeof(*q->dir);
	size_t i = (size_t)q->ids.nslots * sizeof(uint64_t) +
		   (size_t)q->fifo_cap * sizeof(*q->fifo);
	if (per_account)
		*per_account = a;
	if (per_id)
		*per_id = i;
	return a + i;
}

uint32_t
settle_seq_accounts(const settle_seq *q)
{
	return q->accounts.count;
}

uint32_t
settle_seq_span(const settle_seq *q)
{
	return q->span;
}

uint32_t
settle_seq_remembered(const settle_seq *q)
{
	return q->ids.count;
}

bool
settle_seq_account_flags(const settle_seq *q, uint64_t id, uint32_t *flags)
{
	uint32_t ix = dir_find(q, id);
	if (ix != SETTLE_INDEX_NONE && flags)
		*flags = q->dir[ix].flags;
	return ix != SETTLE_INDEX_NONE;
}

uint32_t
settle_seq_account_ix(const settle_seq *q, uint64_t id)
{
	return dir_find(q, id);
}

static void
refuse(struct settle_seq_answer *ans, enum settle_result r)
{
	ans->verdict = SETTLE_SEQ_REFUSED;
	ans->result = r;
	ans->epoch = 0;
	ans->merge_due = 0;
	ans->debit_ix = ans->credit_ix = SETTLE_INDEX_NONE;
}

static uint32_t
dir_add(settle_seq *q, uint64_t id, uint32_t flags)
{
	uint32_t ix;
	if (q->holes != 0) {
		ix = q->holes - 1;
		q->holes = q->dir[ix].next;
	} else {
		DOVE_ASSERT(q->span < q->dir_cap);
		ix = q->span++;
	}
	q->dir[ix] = (struct dir_ent){ id, flags, 0 };
	settle_index_insert(&q->accounts, id, ix);
	return ix;
}

static void
hot_add(settle_seq *q, uint32_t ix, uint32_t reason)
{
	DOVE_ASSERT(q->hot_len < q->hot_cap && q->dir[ix].next == 0);
	q->hot[q->hot_len] = (struct hot_ent){ q->dir[ix].id, ix, reason, 0 };
	q->dir[ix].next = ++q->hot_len;
}

static void
hot_del(settle_seq *q, uint32_t ix)
{
	uint32_t p = q->dir[ix].next - 1;
	DOVE_ASSERT(q->dir[ix].next != 0 && q->hot[p].ix == ix);
	q->dir[ix].next = 0;
	q->hot[p] = q->hot[--q->hot_len];
	if (p < q->hot_len)
		q->dir[q->hot[p].ix].next = p + 1;
}

void
settle_seq_account(settle_seq *q, const struct settle_account_rec *a,
		   struct settle_seq_answer *ans)
{
	DOVE_ASSERT(q != NULL && a != NULL && ans != NULL);
	if (a->id == 0 || (a->flags & ~(uint32_t)SETTLE_ACCOUNT_FLAGS_ALL))
		return refuse(ans, SETTLE_BAD_REQUEST);
	if (dir_find(q, a->id) != SETTLE_INDEX_NONE)
		return refuse(ans, SETTLE_ACCOUNT_EXISTS);
	bool hot = (a->flags & SETTLE_ACCOUNT_HOT) != 0;
	if (q->accounts.count == q->dir_cap || (hot && q->hot_len == q->hot_cap))
		return refuse(ans, SETTLE_OVERLOADED);
	ans->verdict = SETTLE_SEQ_LOG;
	ans->result = SETTLE_OK;
	ans->epoch = 0;
	ans->merge_due = 0;
	ans->debit_ix = dir_add(q, a->id, a->flags);
	ans->credit_ix = SETTLE_INDEX_NONE;
	if (hot)
		hot_add(q, ans->debit_ix, SETTLE_HOT_FLAG);
}

void
settle_seq_unlog_account(settle_seq *q, uint64_t id)
{
	uint32_t ix = dir_find(q, id);
	if (ix == SETTLE_INDEX_NONE)
		return;
	if (q->dir[ix].next != 0)
		hot_del(q, ix);
	settle_index_remove(&q->accounts, id, ix);
	q->dir[ix] = (struct dir_ent){ 0, 0, q->holes };
	q->holes = ix + 1;
}

/* Everything the client chose; the same id with another fingerprint is
 * an id_conflict. 64 bits: a collision would need ~2^32 ids in one window. */
static uint64_t
fingerprint(const struct settle_transfer *t)
{
	uint64_t h = settle_mix64(t->debit);
	h = settle_mix64(h ^ t->credit);
	h = settle_mix64(h ^ t->amount);
	h = settle_mix64(h ^ t->ref);
	h = settle_mix64(h ^ ((uint64_t)t->code << 16 | t->flags));
	return h | 1; /* never 0 */
}

/* The structural reason t cannot be logged, or SETTLE_OK; the accounts'
 * indexes out. */
static enum settle_result
structural(const settle_seq *q, const struct settle_transfer *t,
	   struct settle_seq_answer *ans)
{
	if (t->id == 0 || (t->flags & ~(uint32_t)SETTLE_TRANSFER_LINKED))
		return SETTLE_BAD_REQUEST;
	if (t->debit == t->credit)
		return SETTLE_SAME_ACCOUNT;
	if (t->amount == 0)
		return SETTLE_ZERO_AMOUNT;
	if (t->amount > SETTLE_AMOUNT_MAX)
		return SETTLE_OVERFLOW;
	ans->debit_ix = dir_find(q, t->debit);
	ans->credit_ix = dir_find(q, t->credit);
	if (ans->debit_ix == SETTLE_INDEX_NONE ||
	    ans->credit_ix == SETTLE_INDEX_NONE)
		return SETTLE_NO_SUCH_ACCOUNT;
	return SETTLE_OK;
}

/* Pop the oldest FIFO slot: forget its id if resolved, skip it if stale
 * (unlogged since). False when nothing can go: empty, or the oldest id is
 * still in flight. */
static bool
evict_one(settle_seq *q)
{
	if (q->fifo_len == 0)
		return false;
	struct id_ent *e = &q->fifo[q->fifo_head];
	if (e->id != 0 && (e->b & 0xff) == PENDING)
		return false;
	if (e->id != 0)
		settle_index_remove(&q->ids, e->id, q->fifo_head);
	*e = (struct id_ent){ 0 };
	q->fifo_head = q->fifo_head + 1 == q->fifo_cap ? 0 : q->fifo_head + 1;
	q->fifo_len--;
	return true;
}

static void
fifo_push(settle_seq *q, uint64_t id, uint64_t fp, uint64_t b)
{
	DOVE_ASSERT(q->fifo_len < q->fifo_cap);
	uint32_t pos = (uint32_t)(((uint64_t)q->fifo_head + q->fifo_len) %
				  q->fifo_cap);
	q->fifo[pos] = (struct id_ent){ id, fp, b };
	settle_index_insert(&q->ids, id, pos);
	q->fifo_len++;
}

void
settle_seq_prefetch(const settle_seq *q, const struct settle_transfer *t,
		    uint32_t nth)
{
	settle_index_prefetch(&q->ids, t->id);
	settle_index_prefetch(&q->accounts, t->debit);
	settle_index_prefetch(&q->accounts, t->credit);
	/* A full window evicts its nth oldest id to make room for this
	 * one: its index slot is another random line. */
	if (nth < q->fifo_len && q->fifo_len == q->fifo_cap) {
		const struct id_ent *old =
			&q->fifo[((uint64_t)q->fifo_head + nth) % q->fifo_cap];
		if (old->id != 0)
			settle_index_prefetch(&q->ids, old->id);
	}
}

void
settle_seq_chain(settle_seq *q, const struct settle_transfer *t, uint32_t n,
		 struct settle_seq_answer *ans)
{
	DOVE_ASSERT(q != NULL && t != NULL && ans != NULL && n >= 1);
	/* Repeats first: an id has one result for ever. One probe per id:
	 * the entries found are kept for the answers below. */
	DOVE_ASSERT(n <= SETTLE_CHAIN_MAX);
	const struct id_ent *found[SETTLE_CHAIN_MAX];
	uint32_t known = 0, same = 0;
	for (uint32_t i = 0; i < n; i++) {
		found[i] = t[i].id ? id_find(q, t[i].id) : NULL;
		if (found[i] == NULL)
			continue;
		known++;
		if (found[i]->fp == fingerprint(&t[i]))
			same++;
	}
	if (known == n && same == n) {
		for (uint32_t i = 0; i < n; i++) {
			const struct id_ent *e = found[i];
			uint8_t r = (uint8_t)(e->b & 0xff);
			ans[i].verdict = r == PENDING ? SETTLE_SEQ_PENDING
						      : SETTLE_SEQ_DONE;
			ans[i].result = r == PENDING ? SETTLE_OK
						     : (enum settle_result)r;
			ans[i].epoch = e->b >> 8;
			ans[i].merge_due = 0;
			ans[i].debit_ix = ans[i].credit_ix = SETTLE_INDEX_NONE;
		}
		return;
	}
	if (known > 0) {
		for (uint32_t i = 0; i < n; i++)
			refuse(&ans[i], found[i] ? SETTLE_ID_CONFLICT
						 : SETTLE_LINKED_FAILED);
		return;
	}
	/* One debit account per chain. */
	for (uint32_t i = 1; i < n; i++) {
		if (t[i].debit != t[0].debit) {
			for (uint32_t k = 0; k < n; k++)
				refuse(&ans[k], SETTLE_LINKED_MULTI_DEBIT);
			return;
		}
	}
	/* The same id twice inside one chain is a conflict with itself. */
	for (uint32_t i = 0; i < n; i++) {
		enum settle_result r = structural(q, &t[i], &ans[i]);
		for (uint32_t k = 0; r == SETTLE_OK && k < i; k++)
			if (t[k].id == t[i].id)
				r = SETTLE_ID_CONFLICT;
		/* The chain's shape: linked on all but the last. */
		bool want_linked = i + 1 < n;
		if (r == SETTLE_OK &&
		    ((t[i].flags & SETTLE_TRANSFER_LINKED) != 0) != want_linked)
			r = SETTLE_BAD_REQUEST;
		if (r != SETTLE_OK) {
			for (uint32_t k = 0; k < n; k++)
				refuse(&ans[k], k == i ? r : SETTLE_LINKED_FAILED);
			return;
		}
	}
	/* Room in the window for all of them, or none is logged. */
	while (q->fifo_len + n > q->fifo_cap) {
		if (!evict_one(q)) {
			for (uint32_t k = 0; k < n; k++)
				refuse(&ans[k], SETTLE_OVERLOADED);
			return;
		}
	}
	for (uint32_t i = 0; i < n; i++) {
		fifo_push(q, t[i].id, fingerprint(&t[i]), PENDING);
		ans[i].verdict = SETTLE_SEQ_LOG;
		ans[i].result = SETTLE_OK;
		ans[i].epoch = 0;
		ans[i].merge_due = 0;
		/* merge_max counts credits logged to a hot account during
		 * peak (some may still fail on funds: a merge can come a
		 * little early, never late). */
		uint32_t h = q->dir[ans[i].credit_ix].next;
		if (q->peak && h != 0) {
			q->since_all++;
			if (++q->hot[h - 1].since >= q->merge_max) {
				q->hot[h - 1].since = 0;
				ans[i].merge_due = 1;
			}
		}
	}
	DOVE_ASSERT(q->ids.count <= q->fifo_len && q->fifo_len <= q->fifo_cap);
}

void
settle_seq_resolve(settle_seq *q, uint64_t id, enum settle_result r,
		   uint64_t epoch)
{
	struct id_ent *e = id_find(q, id);
	/* Only logged ids are resolved, and they stay until resolved. */
	DOVE_ASSERT(e != NULL);
	DOVE_ASSERT((e->b & 0xff) == PENDING);
	DOVE_ASSERT((unsigned)r < SETTLE_RESULT_COUNT);
	e->b = epoch << 8 | (uint8_t)r;
}

void
settle_seq_unlog_transfer(settle_seq *q, uint64_t id)
{
	struct id_ent *e = id_find(q, id);
	if (e == NULL)
		return;
	uint32_t pos = (uint32_t)(e - q->fifo);
	settle_index_remove(&q->ids, id, pos);
	e->id = 0;
	/* A failed epoch holds the newest ids, so the slot is normally the
	 * FIFO's last: take it back. Anywhere else it goes stale and is
	 * skipped at eviction. */
	uint32_t last = (uint32_t)(((uint64_t)q->fifo_head + q->fifo_len - 1) %
				   q->fifo_cap);
	if (q->fifo_len > 0 && last == pos)
		q->fifo_len--;
}

uint64_t
settle_seq_foreach_settled(const settle_seq *q,
			   void (*fn)(void *arg, const struct settle_seq_id *e),
			   void *arg)
{
	uint64_t n = 0;
	for (uint32_t k = 0; k < q->fifo_len; k++) {
		const struct id_ent *e =
			&q->fifo[((uint64_t)q->fifo_head + k) % q->fifo_cap];
		if (e->id == 0 || (e->b & 0xff) == PENDING)
			continue; /* stale slot, or still in flight */
		struct settle_seq_id out = { e->id, e->fp, e->b };
		fn(arg, &out);
		n++;
	}
	return n;
}

int
settle_seq_restore_account(settle_seq *q, uint64_t id, uint32_t flags,
			   uint32_t *ix)
{
	if (id == 0 || (flags & ~(uint32_t)SETTLE_ACCOUNT_FLAGS_ALL))
		return -EINVAL;
	if (dir_find(q, id) != SETTLE_INDEX_NONE)
		return -EINVAL;
	bool hot = (flags & SETTLE_ACCOUNT_HOT) != 0;
	if (q->accounts.count == q->dir_cap || (hot && q->hot_len == q->hot_cap))
		return -ENOSPC;
	*ix = dir_add(q, id, flags);
	if (hot)
		hot_add(q, *ix, SETTLE_HOT_FLAG);
	return 0;
}

int
settle_seq_restore_id(settle_seq *q, const struct settle_seq_id *e)
{
	if (e->id == 0 || (e->epoch_result & 0xff) >= SETTLE_RESULT_COUNT)
		return -EINVAL;
	if (id_find(q, e->id))
		return -EINVAL;
	if (q->fifo_len == q->fifo_cap)
		return -ENOSPC;
	fifo_push(q, e->id, e->fingerprint, e->epoch_result);
	return 0;
}

/* ---- peak and the hot set ------------------------------------------------- */

void
settle_seq_set_merge_max(settle_seq *q, uint64_t merge_max)
{
	q->merge_max = merge_max ? merge_max : 1;
}

bool
settle_seq_peak(const settle_seq *q)
{
	return q->peak;
}

uint64_t
settle_seq_buffered_since_merge(const settle_seq *q)
{
	return q->since_all;
}

bool
settle_seq_hot(const settle_seq *q, uint64_t id, uint32_t *reason)
{
	uint32_t ix = dir_find(q, id);
	if (ix == SETTLE_INDEX_NONE || q->dir[ix].next == 0)
		return false;
	if (reason)
		*reason = q->hot[q->dir[ix].next - 1].reason;
	return true;
}

uint32_t
settle_seq_hot_count(const settle_seq *q)
{
	return q->hot_len;
}

void
settle_seq_foreach_hot(const settle_seq *q,
		       void (*fn)(void *arg, uint64_t id, uint32_t reason),
		       void *arg)
{
	for (uint32_t i = 0; i < q->hot_len; i++)
		fn(arg, q->hot[i].id, q->hot[i].reason);
}

static void
logged(struct settle_seq_answer *ans, uint32_t ix)
{
	ans->verdict = SETTLE_SEQ_LOG;
	ans->result = SETTLE_OK;
	ans->epoch = 0;
	ans->merge_due = 0;
	ans->debit_ix = ix;
	ans->credit_ix = SETTLE_INDEX_NONE;
}

void
settle_seq_control(settle_seq *q, uint16_t type, const struct settle_ctl_rec *c,
		   struct settle_seq_answer *ans)
{
	uint32_t ix = c->account ? dir_find(q, c->account) : SETTLE_INDEX_NONE;
	bool hot = ix != SETTLE_INDEX_NONE && q->dir[ix].next != 0;
	switch (type) {
	case SETTLE_REC_PEAK:
		if (c->on > 1 || (c->on != 0) == q->peak || c->account != 0)
			return refuse(ans, SETTLE_BAD_REQUEST);
		q->peak = c->on != 0;
		if (!q->peak) /* the end of peak merges everything */
			for (uint32_t i = 0; i < q->hot_len; i++)
				q->hot[i].since = 0;
		q->since_all = 0;
		return logged(ans, SETTLE_INDEX_NONE);
	case SETTLE_REC_HOT:
		if (c->on > 1 || c->reason >= SETTLE_HOT_REASONS ||
		    c->reason == SETTLE_HOT_FLAG)
			return refuse(ans, SETTLE_BAD_REQUEST);
		if (ix == SETTLE_INDEX_NONE)
			return refuse(ans, SETTLE_NO_SUCH_ACCOUNT);
		if (c->on) {
			if (hot)
				return refuse(ans, SETTLE_ACCOUNT_EXISTS);
			if (q->hot_len == q->hot_cap)
				return refuse(ans, SETTLE_OVERLOADED);
			hot_add(q, ix, c->reason);
		} else {
			if (!hot)
				return refuse(ans, SETTLE_NO_SUCH_ACCOUNT);
			/* Hot by its flag is hot for ever. */
			if (q->hot[q->dir[ix].next - 1].reason == SETTLE_HOT_FLAG)
				return refuse(ans, SETTLE_BAD_REQUEST);
			hot_del(q, ix);
		}
		return logged(ans, ix);
	case SETTLE_REC_MERGE:
		if (c->reason >= SETTLE_MERGE_REASONS || c->on != 0)
			return refuse(ans, SETTLE_BAD_REQUEST);
		if (c->account == 0) {
			for (uint32_t i = 0; i < q->hot_len; i++)
				q->hot[i].since = 0;
			q->since_all = 0;
			return logged(ans, SETTLE_INDEX_NONE);
		}
		if (!hot)
			return refuse(ans, SETTLE_NO_SUCH_ACCOUNT);
		q->hot[q->dir[ix].next - 1].since = 0;
		return logged(ans, ix);
	default:
		return refuse(ans, SETTLE_BAD_REQUEST);
	}
}

void
settle_seq_unlog_control(settle_seq *q, uint16_t type,
			 const struct settle_ctl_rec *c)
{
	uint32_t ix = c->account ? dir_find(q, c->account) : SETTLE_INDEX_NONE;
	if (type == SETTLE_REC_PEAK) {
		q->peak = c->on == 0;
	} else if (type == SETTLE_REC_HOT && ix != SETTLE_INDEX_NONE) {
		if (c->on && q->dir[ix].next != 0)
			hot_del(q, ix);
		else if (!c->on && q->dir[ix].next == 0 &&
			 q->hot_len < q->hot_cap)
			hot_add(q, ix, c->reason);
	}
}

void
settle_seq_restore_peak(settle_seq *q, bool on)
{
	q->peak = on;
}

int
settle_seq_restore_hot(settle_seq *q, uint64_t id, uint32_t reason)
{
	uint32_t ix = dir_find(q, id);
	if (ix == SETTLE_INDEX_NONE || reason >= SETTLE_HOT_REASONS ||
	    q->dir[ix].next != 0)
		return -EINVAL;
	if (q->hot_len == q->hot_cap)
		return -ENOSPC;
	hot_add(q, ix, reason);
	return 0;
}

/* ---- replay: deciding logged records again --------------------------------- */

static bool
control_type(uint16_t type)
{
	return type == SETTLE_REC_PEAK || type == SETTLE_REC_HOT ||
	       type == SETTLE_REC_MERGE;
}

int
settle_seq_relog(settle_seq *q, struct settle_relog *c, uint16_t type,
		 const void *data, uint32_t len, struct settle_op *ops,
		 uint32_t *n)
{
	struct settle_seq_answer ans[SETTLE_CHAIN_MAX];
	*n = 0;
	if (type == SETTLE_REC_TRANSFER && len == sizeof(struct settle_transfer) &&
	    c->len < SETTLE_CHAIN_MAX) {
		struct settle_transfer *t = &c->chain[c->len++];
		memcpy(t, data, len); /* WAL payloads are not aligned */
		if (t->flags & SETTLE_TRANSFER_LINKED)
			return 0; /* the chain goes on */
		settle_seq_chain(q, c->chain, c->len, ans);
		for (uint32_t i = 0; i < c->len; i++) {
			if (ans[i].verdict != SETTLE_SEQ_LOG)
				return -DOVE_ECORRUPT;
			ops[i] = (struct settle_op){ .type = type,
						     .ix = ans[i].debit_ix,
						     .credit_ix = ans[i].credit_ix };
			ops[i].u.transfer = c->chain[i];
		}
		*n = c->len;
		c->len = 0;
		return 0;
	}
	/* Anything else inside a chain, unknown types and sizes: the log is
	 * not one this sequencer wrote. */
	if (c->len != 0)
		return -EINVAL;
	if (type == SETTLE_REC_ACCOUNT && len == sizeof(struct settle_account_rec)) {
		ops[0] = (struct settle_op){ .type = type };
		memcpy(&ops[0].u.account, data, len);
		settle_seq_account(q, &ops[0].u.account, ans);
	} else if (control_type(type) && len == sizeof(struct settle_ctl_rec)) {
		ops[0] = (struct settle_op){ .type = type };
		memcpy(&ops[0].u.ctl, data, len);
		settle_seq_control(q, type, &ops[0].u.ctl, ans);
	} else {
		return -EINVAL;
	}
	if (ans[0].verdict != SETTLE_SEQ_LOG)
		return -DOVE_ECORRUPT;
	ops[0].ix = ans[0].debit_ix;
	*n = 1;
	return 0;
}
