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

struct settle_ledger {
	struct settle_account *acct;
	uint32_t capacity;
};

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

int
settle_ledger_create(uint32_t capacity, settle_ledger **out)
{
	if (capacity == 0 || capacity > (1u << 30))
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
	*out = l;
	return 0;
}

void
settle_ledger_destroy(settle_ledger *l)
{
	if (l == NULL)
		return;
	settle_unmap(l->acct, (size_t)l->capacity * sizeof(*l->acct));
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
settle_ledger_debit_phase(settle_ledger *l, const struct settle_op *ops,
			  uint32_t n, uint8_t *results,
			  const struct settle_credit_sink *sink)
{
	DOVE_ASSERT(l != NULL && (ops != NULL || n == 0));
	DOVE_ASSERT(results != NULL && sink != NULL && sink->put != NULL);
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
			if (!can_debit(a, t->amount)) {
				failed = k;
				break;
			}
			a->debits_posted += t->amount; /* tentative in a chain */
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
					t->credit, t->amount, ops[k].credit_ix, 0
				};
				sink->put(sink->arg, &c);
				results[k] = SETTLE_OK;
				accepted++;
			}
		}
		i = end + 1;
	}
	return accepted;
}

void
settle_ledger_apply_credits(settle_ledger *l, const struct settle_credit *c,
			    uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		/* The credit account was created at an earlier LSN, so it
		 * exists by now. */
		struct settle_account *a = slot(l, c[i].ix, c[i].account);
		DOVE_ASSERT(c[i].amount > 0);
		a->credits_posted += c[i].amount;
	}
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
		if ((a->flags & ~(uint32_t)SETTLE_ACCOUNT_FLAGS_ALL) ||
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
	if (a->id == 0 || (a->flags & ~(uint32_t)SETTLE_ACCOUNT_FLAGS_ALL))
		return -EINVAL;
	if (ix >= l->capacity)
		return -ENOSPC;
	if (l->acct[ix].id != 0)
		return -EINVAL;
	l->acct[ix] = *a;
	return 0;
}
