/*
 * sequencer.c - the sequencer's decisions: the account directory and the
 * idempotency table, both preallocated open-addressing tables of u64 keys
 * with backward-shift deletion (so forgetting an id never leaves a
 * tombstone that slows later probes), and a FIFO of ids for the dedup
 * window.
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

struct entry {
	uint64_t key; /* 0: empty */
	uint64_t a;   /* directory: flags; idempotency: fingerprint */
	uint64_t b;   /* idempotency: epoch << 8 | result (PENDING) */
};

struct table {
	struct entry *e;
	uint64_t mask;
	uint32_t count, capacity;
};

struct settle_seq {
	struct table accounts;
	struct table ids;
	uint64_t *fifo; /* ids in logging order, ring of capacity slots */
	uint32_t fifo_head, fifo_len;
};

static int
table_init(struct table *t, uint32_t capacity)
{
	/* Load at most 3/4: linear probes stay short. */
	uint64_t slots = 4;
	while (slots * 3 < (uint64_t)capacity * 4)
		slots <<= 1;
	t->e = calloc(slots, sizeof(*t->e));
	if (t->e == NULL)
		return -ENOMEM;
	t->mask = slots - 1;
	t->capacity = capacity;
	t->count = 0;
	return 0;
}

static struct entry *
table_probe(const struct table *t, uint64_t key)
{
	DOVE_ASSERT(key != 0);
	for (uint64_t i = settle_mix64(key) & t->mask;; i = (i + 1) & t->mask)
		if (t->e[i].key == key || t->e[i].key == 0)
			return &t->e[i];
}

static struct entry *
table_find(const struct table *t, uint64_t key)
{
	struct entry *e = table_probe(t, key);
	return e->key == key ? e : NULL;
}

static struct entry *
table_insert(struct table *t, uint64_t key)
{
	DOVE_ASSERT(t->count < t->capacity);
	struct entry *e = table_probe(t, key);
	DOVE_ASSERT(e->key == 0);
	e->key = key;
	t->count++;
	return e;
}

/* Remove key; shift later members of its probe run back so every key
 * stays reachable without tombstones. */
static void
table_remove(struct table *t, uint64_t key)
{
	struct entry *e = table_probe(t, key);
	if (e->key != key)
		return;
	uint64_t hole = (uint64_t)(e - t->e);
	for (uint64_t i = (hole + 1) & t->mask; t->e[i].key != 0;
	     i = (i + 1) & t->mask) {
		uint64_t home = settle_mix64(t->e[i].key) & t->mask;
		/* Move i into the hole unless its home lies cyclically in
		 * (hole, i]: then it is already where a probe finds it. */
		bool stays = hole <= i ? (home > hole && home <= i)
				       : (home > hole || home <= i);
		if (stays)
			continue;
		t->e[hole] = t->e[i];
		hole = i;
	}
	t->e[hole] = (struct entry){ 0 };
	t->count--;
}

int
settle_seq_create(uint32_t accounts_max, uint32_t dedup_window,
		  settle_seq **out)
{
	if (accounts_max == 0 || dedup_window == 0 ||
	    accounts_max > (1u << 30) || dedup_window > (1u << 30))
		return -EINVAL;
	settle_seq *q = calloc(1, sizeof(*q));
	if (q == NULL)
		return -ENOMEM;
	if (table_init(&q->accounts, accounts_max) != 0 ||
	    table_init(&q->ids, dedup_window) != 0 ||
	    (q->fifo = calloc(dedup_window, sizeof(uint64_t))) == NULL) {
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
	free(q->accounts.e);
	free(q->ids.e);
	free(q->fifo);
	free(q);
}

uint32_t
settle_seq_accounts(const settle_seq *q)
{
	return q->accounts.count;
}

uint32_t
settle_seq_remembered(const settle_seq *q)
{
	return q->ids.count;
}

bool
settle_seq_account_flags(const settle_seq *q, uint64_t id, uint32_t *flags)
{
	if (id == 0)
		return false;
	const struct entry *e = table_find(&q->accounts, id);
	if (e && flags)
		*flags = (uint32_t)e->a;
	return e != NULL;
}

static void
refuse(struct settle_seq_answer *ans, enum settle_result r)
{
	ans->verdict = SETTLE_SEQ_REFUSED;
	ans->result = r;
	ans->epoch = 0;
}

void
settle_seq_account(settle_seq *q, const struct settle_account_rec *a,
		   struct settle_seq_answer *ans)
{
	DOVE_ASSERT(q != NULL && a != NULL && ans != NULL);
	if (a->id == 0 || (a->flags & ~(uint32_t)SETTLE_ACCOUNT_FLAGS_ALL))
		return refuse(ans, SETTLE_BAD_REQUEST);
	if (table_find(&q->accounts, a->id))
		return refuse(ans, SETTLE_ACCOUNT_EXISTS);
	if (q->accounts.count == q->accounts.capacity)
		return refuse(ans, SETTLE_OVERLOADED);
	table_insert(&q->accounts, a->id)->a = a->flags;
	ans->verdict = SETTLE_SEQ_LOG;
	ans->result = SETTLE_OK;
	ans->epoch = 0;
}

void
settle_seq_unlog_account(settle_seq *q, uint64_t id)
{
	table_remove(&q->accounts, id);
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

/* The structural reason t cannot be logged, or SETTLE_OK. */
static enum settle_result
structural(const settle_seq *q, const struct settle_transfer *t)
{
	if (t->id == 0 || (t->flags & ~(uint32_t)SETTLE_TRANSFER_LINKED))
		return SETTLE_BAD_REQUEST;
	if (t->debit == t->credit)
		return SETTLE_SAME_ACCOUNT;
	if (t->amount == 0)
		return SETTLE_ZERO_AMOUNT;
	if (t->amount > SETTLE_AMOUNT_MAX)
		return SETTLE_OVERFLOW;
	if (!settle_seq_account_flags(q, t->debit, NULL) ||
	    !settle_seq_account_flags(q, t->credit, NULL))
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
	uint64_t id = q->fifo[q->fifo_head];
	struct entry *e = table_find(&q->ids, id);
	if (e != NULL && (e->b & 0xff) == PENDING)
		return false;
	q->fifo_head = (q->fifo_head + 1) % q->ids.capacity;
	q->fifo_len--;
	if (e != NULL)
		table_remove(&q->ids, id);
	return true;
}

void
settle_seq_chain(settle_seq *q, const struct settle_transfer *t, uint32_t n,
		 struct settle_seq_answer *ans)
{
	DOVE_ASSERT(q != NULL && t != NULL && ans != NULL && n >= 1);
	/* Repeats first: an id has one result for ever. One probe per id:
	 * the entries found are kept for the answers below. */
	DOVE_ASSERT(n <= SETTLE_CHAIN_MAX);
	const struct entry *found[SETTLE_CHAIN_MAX];
	uint32_t known = 0, same = 0;
	for (uint32_t i = 0; i < n; i++) {
		found[i] = t[i].id ? table_find(&q->ids, t[i].id) : NULL;
		if (found[i] == NULL)
			continue;
		known++;
		if (found[i]->a == fingerprint(&t[i]))
			same++;
	}
	if (known == n && same == n) {
		for (uint32_t i = 0; i < n; i++) {
			const struct entry *e = found[i];
			uint8_t r = (uint8_t)(e->b & 0xff);
			ans[i].verdict = r == PENDING ? SETTLE_SEQ_PENDING
						      : SETTLE_SEQ_DONE;
			ans[i].result = r == PENDING ? SETTLE_OK
						     : (enum settle_result)r;
			ans[i].epoch = e->b >> 8;
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
		enum settle_result r = structural(q, &t[i]);
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
	uint32_t cap = q->ids.capacity;
	while (q->ids.count + n > cap || q->fifo_len + n > cap) {
		if (!evict_one(q)) {
			for (uint32_t k = 0; k < n; k++)
				refuse(&ans[k], SETTLE_OVERLOADED);
			return;
		}
	}
	for (uint32_t i = 0; i < n; i++) {
		struct entry *e = table_insert(&q->ids, t[i].id);
		e->a = fingerprint(&t[i]);
		e->b = PENDING;
		q->fifo[(q->fifo_head + q->fifo_len) % cap] = t[i].id;
		q->fifo_len++;
		ans[i].verdict = SETTLE_SEQ_LOG;
		ans[i].result = SETTLE_OK;
		ans[i].epoch = 0;
	}
	DOVE_ASSERT(q->fifo_len <= cap && q->ids.count <= cap);
}

void
settle_seq_resolve(settle_seq *q, uint64_t id, enum settle_result r,
		   uint64_t epoch)
{
	struct entry *e = table_find(&q->ids, id);
	/* Only logged ids are resolved, and they stay until resolved. */
	DOVE_ASSERT(e != NULL);
	DOVE_ASSERT((e->b & 0xff) == PENDING);
	DOVE_ASSERT((unsigned)r < SETTLE_RESULT_COUNT);
	e->b = epoch << 8 | (uint8_t)r;
}

void
settle_seq_unlog_transfer(settle_seq *q, uint64_t id)
{
	table_remove(&q->ids, id);
	/* A failed epoch holds the newest ids, so the slot is normally the
	 * FIFO's last: take it back. Anywhere else it goes stale and is
	 * skipped at eviction. */
	uint32_t cap = q->ids.capacity;
	if (q->fifo_len > 0 &&
	    q->fifo[(q->fifo_head + q->fifo_len - 1) % cap] == id)
		q->fifo_len--;
}

uint64_t
settle_seq_foreach_settled(const settle_seq *q,
			   void (*fn)(void *arg, const struct settle_seq_id *e),
			   void *arg)
{
	uint64_t n = 0;
	for (uint32_t k = 0; k < q->fifo_len; k++) {
		uint64_t id = q->fifo[(q->fifo_head + k) % q->ids.capacity];
		const struct entry *e = table_find(&q->ids, id);
		if (e == NULL || (e->b & 0xff) == PENDING)
			continue; /* stale slot, or still in flight */
		struct settle_seq_id out = { id, e->a, e->b };
		fn(arg, &out);
		n++;
	}
	return n;
}

int
settle_seq_restore_account(settle_seq *q, uint64_t id, uint32_t flags)
{
	if (id == 0 || (flags & ~(uint32_t)SETTLE_ACCOUNT_FLAGS_ALL))
		return -EINVAL;
	if (table_find(&q->accounts, id))
		return -EINVAL;
	if (q->accounts.count == q->accounts.capacity)
		return -ENOSPC;
	table_insert(&q->accounts, id)->a = flags;
	return 0;
}

int
settle_seq_restore_id(settle_seq *q, const struct settle_seq_id *e)
{
	if (e->id == 0 || (e->epoch_result & 0xff) >= SETTLE_RESULT_COUNT)
		return -EINVAL;
	if (table_find(&q->ids, e->id))
		return -EINVAL;
	if (q->ids.count == q->ids.capacity || q->fifo_len == q->ids.capacity)
		return -ENOSPC;
	struct entry *t = table_insert(&q->ids, e->id);
	t->a = e->fingerprint;
	t->b = e->epoch_result;
	q->fifo[(q->fifo_head + q->fifo_len) % q->ids.capacity] = e->id;
	q->fifo_len++;
	return 0;
}
