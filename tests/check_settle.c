/*
 * check_settle.c - the ledger of settle/: the execution rule on small
 * hand-made epochs, and a deliberately simple reference model of
 * DESIGN.md's semantics that random workloads (thousands of seeds) are run
 * through next to the real engine with 1, 2 and 4 shards: every result and
 * every balance must be identical.
 */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "settle.h"

/* ---- an engine of S shards, driven the way the server will drive it ---- */

#define MAX_OPS 512
#define MAX_SHARDS 4

#define ENGINE_ACCOUNTS 1024

/* Ledger indexes come from the sequencer's directory in the server; here,
 * unless a sequencer is attached (q), from a plain table in creation
 * order, which is what the sequencer promises. */
struct engine {
	uint32_t nshards;
	settle_ledger *ledger;
	settle_seq *q;
	uint64_t dir[ENGINE_ACCOUNTS]; /* id at each index */
	uint32_t span;
	struct settle_credit legs[MAX_SHARDS][MAX_OPS];
	uint32_t nlegs[MAX_SHARDS];
};

static uint32_t
engine_ix(const struct engine *e, uint64_t id)
{
	if (e->q != NULL)
		return settle_seq_account_ix(e->q, id);
	for (uint32_t i = 0; i < e->span; i++)
		if (e->dir[i] == id)
			return i;
	return UINT32_MAX;
}

/* Fill in the indexes of ops, as the sequencer would have (a test that
 * attaches a sequencer took them from its answers). An id created twice
 * keeps its first index, so the ledger sees the second creation land on
 * a taken slot. */
static void
engine_index(struct engine *e, struct settle_op *ops, uint32_t n)
{
	if (e->q != NULL)
		return;
	for (uint32_t i = 0; i < n; i++) {
		if (ops[i].type == SETTLE_REC_ACCOUNT) {
			uint32_t ix = engine_ix(e, ops[i].u.account.id);
			if (ix == UINT32_MAX) {
				if (e->span == ENGINE_ACCOUNTS)
					ck_abort_msg("engine directory full");
				ix = e->span++;
				e->dir[ix] = ops[i].u.account.id;
			}
			ops[i].ix = ix;
		} else {
			ops[i].ix = engine_ix(e, ops[i].u.transfer.debit);
			ops[i].credit_ix = engine_ix(e, ops[i].u.transfer.credit);
		}
	}
}

static void
route_credit(void *arg, const struct settle_credit *c)
{
	struct engine *e = arg;
	uint32_t s = settle_shard_of(c->account, e->nshards);
	/* Not ck_assert: each is a write(2) to Check's parent. */
	if (e->nlegs[s] >= MAX_OPS)
		ck_abort_msg("too many credit legs");
	e->legs[s][e->nlegs[s]++] = *c;
}

static void
engine_init(struct engine *e, uint32_t nshards, uint32_t capacity)
{
	memset(e, 0, sizeof(*e));
	e->nshards = nshards;
	ck_assert_int_eq(settle_ledger_create(capacity, &e->ledger), 0);
}

static void
engine_free(struct engine *e)
{
	settle_ledger_destroy(e->ledger);
}

/* Run one epoch; results[i] for ops[i]. */
static void
engine_epoch(struct engine *e, struct settle_op *ops, uint32_t n,
	     uint8_t *results)
{
	static struct settle_op mine[MAX_SHARDS][MAX_OPS];
	static uint32_t where[MAX_SHARDS][MAX_OPS];
	uint32_t count[MAX_SHARDS] = { 0 };
	engine_index(e, ops, n);
	for (uint32_t i = 0; i < n; i++) {
		uint64_t key = ops[i].type == SETTLE_REC_ACCOUNT
				       ? ops[i].u.account.id
				       : ops[i].u.transfer.debit;
		uint32_t s = settle_shard_of(key, e->nshards);
		where[s][count[s]] = i;
		mine[s][count[s]++] = ops[i];
	}
	struct settle_credit_sink sink = { route_credit, e };
	memset(e->nlegs, 0, sizeof(e->nlegs));
	for (uint32_t s = 0; s < e->nshards; s++) {
		uint8_t r[MAX_OPS];
		settle_ledger_debit_phase(e->ledger, mine[s], count[s], r,
					  &sink);
		for (uint32_t k = 0; k < count[s]; k++)
			results[where[s][k]] = r[k];
	}
	/* The epoch barrier: credits land only now. */
	for (uint32_t s = 0; s < e->nshards; s++) {
		settle_ledger_apply_credits(e->ledger, e->legs[s],
					    e->nlegs[s]);
		uint32_t span = e->q ? settle_seq_span(e->q) : e->span;
		if (!settle_ledger_valid(e->ledger, span, (int)s, e->nshards))
			ck_abort_msg("shard %u invalid after an epoch", s);
	}
}

static const struct settle_account *
engine_find(const struct engine *e, uint64_t id)
{
	const struct settle_account *a =
		settle_ledger_at(e->ledger, engine_ix(e, id));
	return a != NULL && a->id == id ? a : NULL;
}

/* ---- hand-made epochs ------------------------------------------------- */

static struct settle_op
mkacct(uint64_t lsn, uint64_t id, uint32_t flags)
{
	struct settle_op o = { .lsn = lsn, .type = SETTLE_REC_ACCOUNT };
	o.u.account.id = id;
	o.u.account.flags = flags;
	return o;
}

static struct settle_op
xfer(uint64_t lsn, uint64_t id, uint64_t debit, uint64_t credit,
     uint64_t amount, bool linked)
{
	struct settle_op o = { .lsn = lsn, .type = SETTLE_REC_TRANSFER };
	o.u.transfer = (struct settle_transfer){
		.id = id, .debit = debit, .credit = credit, .amount = amount,
		.flags = linked ? SETTLE_TRANSFER_LINKED : 0,
	};
	return o;
}

START_TEST(credits_spendable_next_epoch)
{
	struct engine e;
	engine_init(&e, 2, 16);
	uint8_t r[8];
	/* Epoch 1: accounts; 1 is a system account (may go negative). */
	struct settle_op e1[] = { mkacct(1, 1, 0), mkacct(2, 10, SETTLE_ACCOUNT_NONNEG),
				  mkacct(3, 20, SETTLE_ACCOUNT_NONNEG),
				  xfer(4, 100, 1, 10, 500, false),
				  /* 10 has nothing yet: the credit above
				   * lands at the end of this epoch. */
				  xfer(5, 101, 10, 20, 100, false) };
	engine_epoch(&e, e1, 5, r);
	ck_assert_uint_eq(r[3], SETTLE_OK);
	ck_assert_uint_eq(r[4], SETTLE_INSUFFICIENT_FUNDS);
	/* Epoch 2: now it can be spent, exactly up to the balance. */
	struct settle_op e2[] = { xfer(6, 102, 10, 20, 300, false),
				  xfer(7, 103, 10, 20, 201, false),
				  xfer(8, 104, 10, 20, 200, false) };
	engine_epoch(&e, e2, 3, r);
	ck_assert_uint_eq(r[0], SETTLE_OK);
	ck_assert_uint_eq(r[1], SETTLE_INSUFFICIENT_FUNDS);
	ck_assert_uint_eq(r[2], SETTLE_OK);
	const struct settle_account *a = engine_find(&e, 10);
	ck_assert(a->credits_posted == 500 && a->debits_posted == 500);
	a = engine_find(&e, 1);
	ck_assert(a->debits_posted == 500 && a->credits_posted == 0);
	a = engine_find(&e, 20);
	ck_assert(a->credits_posted == 500);
	engine_free(&e);
}
END_TEST

START_TEST(chain_all_or_nothing)
{
	struct engine e;
	engine_init(&e, 1, 16);
	uint8_t r[8];
	struct settle_op e1[] = { mkacct(1, 1, 0), mkacct(2, 30, SETTLE_ACCOUNT_NONNEG),
				  mkacct(3, 10, 0), xfer(4, 1, 1, 30, 10, false) };
	engine_epoch(&e, e1, 4, r);
	/* 30 has 10: a chain of 6 + 5 fails at its second transfer. */
	struct settle_op e2[] = { xfer(5, 220, 30, 1, 6, true),
				  xfer(6, 221, 30, 10, 5, false),
				  xfer(7, 222, 30, 10, 4, true),
				  xfer(8, 223, 30, 1, 4, false) };
	engine_epoch(&e, e2, 4, r);
	ck_assert_uint_eq(r[0], SETTLE_LINKED_FAILED);
	ck_assert_uint_eq(r[1], SETTLE_INSUFFICIENT_FUNDS);
	/* The failed chain left nothing behind: 8 of 10 still fit. */
	ck_assert_uint_eq(r[2], SETTLE_OK);
	ck_assert_uint_eq(r[3], SETTLE_OK);
	const struct settle_account *a = engine_find(&e, 30);
	ck_assert(a->debits_posted == 8 && a->credits_posted == 10);
	engine_free(&e);
}
END_TEST

START_TEST(capacity_and_lookup)
{
	settle_ledger *l;
	ck_assert_int_eq(settle_ledger_create(0, &l), -EINVAL);
	struct engine e;
	engine_init(&e, 2, 1000);
	static struct settle_op ops[1000];
	uint8_t r[1000];
	for (uint32_t i = 0; i < 1000; i++)
		ops[i] = mkacct(i + 1, (uint64_t)i * 7919 + 1, 0);
	/* Two epochs of 500: MAX_OPS bounds one. */
	engine_epoch(&e, ops, 500, r);
	engine_epoch(&e, ops + 500, 500, r + 500);
	for (uint32_t i = 0; i < 1000; i++) {
		const struct settle_account *a = settle_ledger_at(e.ledger, i);
		ck_assert_ptr_nonnull(a);
		ck_assert_uint_eq(a->id, (uint64_t)i * 7919 + 1);
	}
	/* Beyond capacity, and an index nobody created: nothing. */
	ck_assert_ptr_null(settle_ledger_at(e.ledger, 1000));
	ck_assert_ptr_null(settle_ledger_at(e.ledger, UINT32_MAX));
	ck_assert_uint_eq(settle_ledger_foreach(e.ledger, 1000, -1, 1, NULL,
						NULL), 1000);
	/* Each account is walked by exactly one shard. */
	ck_assert_uint_eq(settle_ledger_foreach(e.ledger, 1000, 0, 2, NULL, NULL) +
				  settle_ledger_foreach(e.ledger, 1000, 1, 2,
							NULL, NULL),
			  1000);
	ck_assert(settle_ledger_valid(e.ledger, 1000, -1, 1));
	/* A slot restore refuses: taken, out of range, id 0. */
	struct settle_account acc = { .id = 5 };
	ck_assert_int_eq(settle_ledger_restore(e.ledger, 3, &acc), -EINVAL);
	ck_assert_int_eq(settle_ledger_restore(e.ledger, 1000, &acc), -ENOSPC);
	acc.id = 0;
	ck_assert_int_eq(settle_ledger_restore(e.ledger, 3, &acc), -EINVAL);
	engine_free(&e);
}
END_TEST

START_TEST(creating_an_existing_account_aborts)
{
	/* The same account twice: the engine's directory hands it the same
	 * index, so the ledger meets a taken slot and must abort. */
	struct engine e;
	engine_init(&e, 1, 4);
	struct settle_op ops[] = { mkacct(1, 5, 0), mkacct(2, 5, 0) };
	uint8_t r[2];
	engine_epoch(&e, ops, 2, r);
}
END_TEST

START_TEST(result_names)
{
	ck_assert_str_eq(settle_result_name(SETTLE_OK), "ok");
	ck_assert_str_eq(settle_result_name(SETTLE_INSUFFICIENT_FUNDS),
			 "insufficient_funds");
	ck_assert_str_eq(settle_result_name(SETTLE_LINKED_MULTI_DEBIT),
			 "linked_multi_debit");
	for (int i = 0; i < SETTLE_RESULT_COUNT; i++)
		ck_assert_ptr_nonnull(settle_result_name((enum settle_result)i));
}
END_TEST

/* ---- the reference model ----------------------------------------------- */

/* As plain as it gets: arrays indexed by account id, one pass per epoch,
 * credits collected in a list and added at the end. */
#define MODEL_IDS 64

struct model {
	bool exists[MODEL_IDS];
	uint32_t flags[MODEL_IDS];
	settle_u128 debits[MODEL_IDS], credits[MODEL_IDS];
};

static void
model_epoch(struct model *m, const struct settle_op *ops, uint32_t n,
	    uint8_t *results)
{
	uint64_t pend_acct[MAX_OPS], pend_amt[MAX_OPS];
	uint32_t npend = 0;
	for (uint32_t i = 0; i < n;) {
		if (ops[i].type == SETTLE_REC_ACCOUNT) {
			m->exists[ops[i].u.account.id] = true;
			m->flags[ops[i].u.account.id] = ops[i].u.account.flags;
			results[i++] = SETTLE_OK;
			continue;
		}
		uint32_t end = i;
		while (ops[end].u.transfer.flags & SETTLE_TRANSFER_LINKED)
			end++;
		uint64_t d = ops[i].u.transfer.debit;
		/* Available = credits at the end of the previous epoch
		 * minus every debit so far (this chain's included). */
		settle_u128 spent = m->debits[d];
		uint32_t failed = UINT32_MAX;
		for (uint32_t k = i; k <= end; k++) {
			spent += ops[k].u.transfer.amount;
			if ((m->flags[d] & SETTLE_ACCOUNT_NONNEG) &&
			    spent > m->credits[d]) {
				failed = k;
				break;
			}
		}
		for (uint32_t k = i; k <= end; k++) {
			if (failed == UINT32_MAX) {
				results[k] = SETTLE_OK;
				m->debits[d] += ops[k].u.transfer.amount;
				pend_acct[npend] = ops[k].u.transfer.credit;
				pend_amt[npend++] = ops[k].u.transfer.amount;
			} else {
				results[k] = k == failed
						     ? SETTLE_INSUFFICIENT_FUNDS
						     : SETTLE_LINKED_FAILED;
			}
		}
		i = end + 1;
	}
	for (uint32_t k = 0; k < npend; k++)
		m->credits[pend_acct[k]] += pend_amt[k];
}

/* A random epoch: accounts created as they go, transfers between accounts
 * that exist by then, chains of 2-3 with one debit, amounts from tiny to
 * the maximum (so some nonneg debits fail). */
static uint32_t
random_epoch(unsigned *seed, const struct model *m, bool *created,
	     uint64_t *lsn, uint64_t *tid, struct settle_op *ops)
{
	uint32_t n = 0, want = (uint32_t)(rand_r(seed) % 60) + 1;
	uint64_t ids[MODEL_IDS];
	uint32_t nids = 0;
	for (uint64_t id = 1; id < MODEL_IDS; id++)
		if (created[id])
			ids[nids++] = id;
	(void)m;
	while (n < want && n + 3 < MAX_OPS) {
		int dice = rand_r(seed) % 10;
		if ((dice == 0 || nids < 2) && nids < MODEL_IDS - 1) {
			uint64_t id;
			do
				id = (uint64_t)(rand_r(seed) % (MODEL_IDS - 1)) + 1;
			while (created[id]);
			created[id] = true;
			ops[n++] = mkacct((*lsn)++, id,
					rand_r(seed) % 3 ? SETTLE_ACCOUNT_NONNEG : 0);
			ids[nids++] = id;
			continue;
		}
		if (nids < 2)
			break;
		uint64_t debit = ids[rand_r(seed) % nids];
		uint32_t len = dice < 7 ? 1 : (uint32_t)(rand_r(seed) % 2) + 2;
		for (uint32_t k = 0; k < len; k++) {
			uint64_t credit;
			do
				credit = ids[rand_r(seed) % nids];
			while (credit == debit);
			uint64_t amount;
			switch (rand_r(seed) % 4) {
			case 0: amount = (uint64_t)(rand_r(seed) % 10) + 1; break;
			case 1: amount = (uint64_t)(rand_r(seed) % 1000) + 1; break;
			case 2: amount = (uint64_t)rand_r(seed) + 1; break;
			default: amount = SETTLE_AMOUNT_MAX - (uint64_t)(rand_r(seed) % 3);
			}
			ops[n++] = xfer((*lsn)++, (*tid)++, debit, credit, amount,
					k + 1 < len);
		}
	}
	return n;
}

/* One seed: 30 random epochs through the model and three engines. */
static void
run_seed(int seed_no)
{
	int _i = seed_no; /* named like Check's loop index in messages */
	unsigned seed = (unsigned)seed_no * 2654435761u + 1;
	static const uint32_t shard_counts[] = { 1, 2, 4 };
	struct model m;
	memset(&m, 0, sizeof(m));
	struct engine e[3];
	for (int k = 0; k < 3; k++)
		engine_init(&e[k], shard_counts[k], MODEL_IDS);
	bool created[MODEL_IDS] = { false };
	uint64_t lsn = 1, tid = 1;
	struct settle_op ops[MAX_OPS];
	uint8_t want[MAX_OPS], got[MAX_OPS];
	for (int epoch = 0; epoch < 30; epoch++) {
		uint32_t n = random_epoch(&seed, &m, created, &lsn, &tid, ops);
		model_epoch(&m, ops, n, want);
		for (int k = 0; k < 3; k++) {
			engine_epoch(&e[k], ops, n, got);
			for (uint32_t i = 0; i < n; i++)
				if (got[i] != want[i])
					ck_abort_msg("seed %d epoch %d op %u (lsn %llu)"
						     ", %u shards: engine %s, "
						     "model %s",
						     _i, epoch, i,
						     (unsigned long long)ops[i].lsn,
						     shard_counts[k],
						     settle_result_name(got[i]),
						     settle_result_name(want[i]));
		}
	}
	for (uint64_t id = 1; id < MODEL_IDS; id++) {
		for (int k = 0; k < 3; k++) {
			const struct settle_account *a = engine_find(&e[k], id);
			if (!m.exists[id]) {
				ck_assert_ptr_null(a);
				continue;
			}
			ck_assert_ptr_nonnull(a);
			if (a->debits_posted != m.debits[id] ||
			    a->credits_posted != m.credits[id] ||
			    a->flags != m.flags[id])
				ck_abort_msg("seed %d account %llu differs with "
					     "%u shards",
					     _i, (unsigned long long)id,
					     shard_counts[k]);
		}
	}
	/* Money is conserved: total debits == total credits. */
	settle_u128 d = 0, c = 0;
	for (uint64_t id = 1; id < MODEL_IDS; id++) {
		d += m.debits[id];
		c += m.credits[id];
	}
	ck_assert(d == c);
	for (int k = 0; k < 3; k++)
		engine_free(&e[k]);
}

/* Seeds in groups: Check forks a process per test, which would cost more
 * than the seeds themselves. */
#define SEEDS_PER_TEST 50

START_TEST(engine_matches_model)
{
	for (int k = 0; k < SEEDS_PER_TEST; k++)
		run_seed(_i * SEEDS_PER_TEST + k);
}
END_TEST

/* ---- the sequencer ------------------------------------------------------ */

static struct settle_transfer
tr(uint64_t id, uint64_t debit, uint64_t credit, uint64_t amount, bool linked)
{
	return (struct settle_transfer){ .id = id, .debit = debit,
					 .credit = credit, .amount = amount,
					 .flags = linked ? SETTLE_TRANSFER_LINKED
							 : 0 };
}

static struct settle_seq_answer
one(settle_seq *q, struct settle_transfer t)
{
	struct settle_seq_answer a;
	settle_seq_chain(q, &t, 1, &a);
	return a;
}

static settle_seq *
seq_with_accounts(uint32_t window)
{
	settle_seq *q;
	ck_assert_int_eq(settle_seq_create(64, window, &q), 0);
	struct settle_seq_answer a;
	for (uint64_t id = 1; id <= 30; id++) {
		struct settle_account_rec r = { id, id >= 10 ? SETTLE_ACCOUNT_NONNEG : 0, 0 };
		settle_seq_account(q, &r, &a);
		ck_assert_int_eq(a.verdict, SETTLE_SEQ_LOG);
	}
	return q;
}

START_TEST(seq_refuses_structural)
{
	settle_seq *q = seq_with_accounts(100);
	struct settle_seq_answer a;
	struct settle_account_rec r = { 1, 0, 0 };
	settle_seq_account(q, &r, &a);
	ck_assert_int_eq(a.verdict, SETTLE_SEQ_REFUSED);
	ck_assert_int_eq(a.result, SETTLE_ACCOUNT_EXISTS);
	r = (struct settle_account_rec){ 0, 0, 0 };
	settle_seq_account(q, &r, &a);
	ck_assert_int_eq(a.result, SETTLE_BAD_REQUEST);
	r = (struct settle_account_rec){ 99, 0x80, 0 };
	settle_seq_account(q, &r, &a);
	ck_assert_int_eq(a.result, SETTLE_BAD_REQUEST);
	/* Tried: unknown credit, unknown debit, same account, zero amount,
	 * 2^63 (past BIGINT), id 0. None is remembered. */
	ck_assert_int_eq(one(q, tr(103, 1, 999, 5, false)).result,
			 SETTLE_NO_SUCH_ACCOUNT);
	ck_assert_int_eq(one(q, tr(103, 999, 1, 5, false)).result,
			 SETTLE_NO_SUCH_ACCOUNT);
	ck_assert_int_eq(one(q, tr(104, 1, 1, 5, false)).result,
			 SETTLE_SAME_ACCOUNT);
	ck_assert_int_eq(one(q, tr(105, 1, 10, 0, false)).result,
			 SETTLE_ZERO_AMOUNT);
	ck_assert_int_eq(one(q, tr(106, 1, 10, 9223372036854775808ull, false))
				 .result,
			 SETTLE_OVERFLOW);
	ck_assert_int_eq(one(q, tr(0, 1, 10, 5, false)).result,
			 SETTLE_BAD_REQUEST);
	ck_assert_uint_eq(settle_seq_remembered(q), 0);
	/* Refused ids stay free. */
	ck_assert_int_eq(one(q, tr(103, 1, 10, 5, false)).verdict,
			 SETTLE_SEQ_LOG);
	settle_seq_destroy(q);
}
END_TEST

START_TEST(seq_repeats_and_conflicts)
{
	settle_seq *q = seq_with_accounts(100);
	ck_assert_int_eq(one(q, tr(100, 1, 10, 500, false)).verdict,
			 SETTLE_SEQ_LOG);
	/* In flight: a repeat waits for it. */
	ck_assert_int_eq(one(q, tr(100, 1, 10, 500, false)).verdict,
			 SETTLE_SEQ_PENDING);
	settle_seq_resolve(q, 100, SETTLE_OK, 7);
	struct settle_seq_answer a = one(q, tr(100, 1, 10, 500, false));
	ck_assert_int_eq(a.verdict, SETTLE_SEQ_DONE);
	ck_assert_int_eq(a.result, SETTLE_OK);
	ck_assert_uint_eq(a.epoch, 7);
	/* Tried: same id, amount 501; and same id, another ref. */
	ck_assert_int_eq(one(q, tr(100, 1, 10, 501, false)).result,
			 SETTLE_ID_CONFLICT);
	struct settle_transfer t = tr(100, 1, 10, 500, false);
	t.ref = 9;
	ck_assert_int_eq(one(q, t).result, SETTLE_ID_CONFLICT);
	/* A shard's refusal is the id's result for ever. */
	ck_assert_int_eq(one(q, tr(101, 10, 1, 600, false)).verdict,
			 SETTLE_SEQ_LOG);
	settle_seq_resolve(q, 101, SETTLE_INSUFFICIENT_FUNDS, 8);
	a = one(q, tr(101, 10, 1, 600, false));
	ck_assert_int_eq(a.verdict, SETTLE_SEQ_DONE);
	ck_assert_int_eq(a.result, SETTLE_INSUFFICIENT_FUNDS);
	settle_seq_destroy(q);
}
END_TEST

START_TEST(seq_chains)
{
	settle_seq *q = seq_with_accounts(100);
	struct settle_seq_answer a[3];
	/* Several debit accounts: all linked_multi_debit, nothing kept. */
	struct settle_transfer c1[] = { tr(210, 1, 10, 5, true),
					tr(211, 10, 1, 5, false) };
	settle_seq_chain(q, c1, 2, a);
	ck_assert_int_eq(a[0].result, SETTLE_LINKED_MULTI_DEBIT);
	ck_assert_int_eq(a[1].result, SETTLE_LINKED_MULTI_DEBIT);
	/* A structural error in the middle: its reason, the rest failed. */
	struct settle_transfer c2[] = { tr(230, 1, 10, 5, true),
					tr(231, 1, 999, 5, true),
					tr(232, 1, 11, 5, false) };
	settle_seq_chain(q, c2, 3, a);
	ck_assert_int_eq(a[0].result, SETTLE_LINKED_FAILED);
	ck_assert_int_eq(a[1].result, SETTLE_NO_SUCH_ACCOUNT);
	ck_assert_int_eq(a[2].result, SETTLE_LINKED_FAILED);
	/* Wrong shape (the last is linked): bad_request. */
	struct settle_transfer c3[] = { tr(240, 1, 10, 5, true),
					tr(241, 1, 11, 5, true) };
	settle_seq_chain(q, c3, 2, a);
	ck_assert_int_eq(a[1].result, SETTLE_BAD_REQUEST);
	/* The same id twice in one chain. */
	struct settle_transfer c4[] = { tr(250, 1, 10, 5, true),
					tr(250, 1, 11, 5, false) };
	settle_seq_chain(q, c4, 2, a);
	ck_assert_int_eq(a[1].result, SETTLE_ID_CONFLICT);
	ck_assert_uint_eq(settle_seq_remembered(q), 0);
	/* A good chain, resolved, then repeated: the same answers. */
	struct settle_transfer c5[] = { tr(220, 30, 1, 5, true),
					tr(221, 30, 10, 5, false) };
	settle_seq_chain(q, c5, 2, a);
	ck_assert(a[0].verdict == SETTLE_SEQ_LOG && a[1].verdict == SETTLE_SEQ_LOG);
	settle_seq_resolve(q, 220, SETTLE_INSUFFICIENT_FUNDS, 9);
	settle_seq_resolve(q, 221, SETTLE_LINKED_FAILED, 9);
	settle_seq_chain(q, c5, 2, a);
	ck_assert(a[0].verdict == SETTLE_SEQ_DONE &&
		  a[0].result == SETTLE_INSUFFICIENT_FUNDS);
	ck_assert(a[1].verdict == SETTLE_SEQ_DONE &&
		  a[1].result == SETTLE_LINKED_FAILED);
	/* Half known: the known id conflicts, the new one is not logged. */
	struct settle_transfer c6[] = { tr(220, 30, 1, 5, true),
					tr(222, 30, 10, 5, false) };
	settle_seq_chain(q, c6, 2, a);
	ck_assert_int_eq(a[0].result, SETTLE_ID_CONFLICT);
	ck_assert_int_eq(a[1].result, SETTLE_LINKED_FAILED);
	ck_assert_int_eq(one(q, tr(222, 30, 10, 5, false)).verdict,
			 SETTLE_SEQ_LOG);
	settle_seq_destroy(q);
}
END_TEST

START_TEST(seq_window_and_unlog)
{
	settle_seq *q = seq_with_accounts(4);
	for (uint64_t id = 1; id <= 4; id++) {
		ck_assert_int_eq(one(q, tr(id, 1, 2, 1, false)).verdict,
				 SETTLE_SEQ_LOG);
	}
	/* Window full of ids in flight: a new one must wait (overloaded). */
	ck_assert_int_eq(one(q, tr(5, 1, 2, 1, false)).result,
			 SETTLE_OVERLOADED);
	for (uint64_t id = 1; id <= 4; id++)
		settle_seq_resolve(q, id, SETTLE_OK, id);
	/* Now the oldest is forgotten to make room... */
	ck_assert_int_eq(one(q, tr(5, 1, 2, 1, false)).verdict, SETTLE_SEQ_LOG);
	ck_assert_uint_eq(settle_seq_remembered(q), 4);
	/* ...so id 1, retried after the window, counts as new. */
	settle_seq_resolve(q, 5, SETTLE_OK, 5);
	ck_assert_int_eq(one(q, tr(1, 1, 2, 1, false)).verdict, SETTLE_SEQ_LOG);
	ck_assert_int_eq(one(q, tr(2, 1, 2, 1, false)).verdict, SETTLE_SEQ_LOG);
	/* Unlogged (the WAL refused the epoch): the id is free again, many
	 * times over, without the FIFO filling with stale slots. */
	for (int round = 0; round < 100; round++) {
		settle_seq_unlog_transfer(q, 2);
		ck_assert_int_eq(one(q, tr(2, 1, 2, 1, false)).verdict,
				 SETTLE_SEQ_LOG);
	}
	struct settle_seq_answer a;
	struct settle_account_rec r = { 50, 0, 0 };
	settle_seq_account(q, &r, &a);
	ck_assert_int_eq(a.verdict, SETTLE_SEQ_LOG);
	settle_seq_unlog_account(q, 50);
	ck_assert(!settle_seq_account_flags(q, 50, NULL));
	settle_seq_account(q, &r, &a);
	ck_assert_int_eq(a.verdict, SETTLE_SEQ_LOG);
	settle_seq_destroy(q);
}
END_TEST

/* The memory targets of the core issue, from what create preallocates
 * (not RSS: that is dove-bench's): at most 128 bytes per account
 * (directory + index + the 64-byte ledger slot) and 40 per remembered
 * id, at capacities from tiny to the config maximum's order. */
START_TEST(seq_memory_per_entry)
{
	static const uint32_t caps[] = { 16, 1000, 65536, 1000003, 1 << 22 };
	for (unsigned i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
		settle_seq *q;
		ck_assert_int_eq(settle_seq_create(caps[i], caps[i], &q), 0);
		size_t acc, ids;
		settle_seq_bytes(q, &acc, &ids);
		double per_account = (double)acc / caps[i] +
				     sizeof(struct settle_account);
		double per_id = (double)ids / caps[i];
		if (per_account > 128.0 || per_id > 40.0)
			ck_abort_msg("capacity %u: %.1f B/account, %.1f B/id",
				     caps[i], per_account, per_id);
		settle_seq_destroy(q);
	}
}
END_TEST

/* Backward-shift deletion: random creations and removals against a
 * plain membership array, in a table kept near its load limit. */
START_TEST(seq_directory_random_deletes)
{
	settle_seq *q;
	ck_assert_int_eq(settle_seq_create(300, 1, &q), 0);
	bool in[1024] = { false };
	uint32_t count = 0;
	unsigned seed = 5;
	for (int step = 0; step < 200000; step++) {
		uint64_t id = (uint64_t)(rand_r(&seed) % 1023) + 1;
		struct settle_seq_answer a;
		if (rand_r(&seed) % 2) {
			struct settle_account_rec r = { id, 0, 0 };
			settle_seq_account(q, &r, &a);
			if (in[id]) {
				if (a.result != SETTLE_ACCOUNT_EXISTS)
					ck_abort_msg("step %d: %llu exists", step,
						     (unsigned long long)id);
			} else if (count == 300) {
				if (a.result != SETTLE_OVERLOADED)
					ck_abort_msg("step %d: full", step);
			} else {
				if (a.verdict != SETTLE_SEQ_LOG)
					ck_abort_msg("step %d: refused", step);
				in[id] = true;
				count++;
			}
		} else {
			settle_seq_unlog_account(q, id);
			if (in[id])
				count--;
			in[id] = false;
		}
		if (step % 1000 == 0)
			for (uint64_t k = 1; k < 1024; k++)
				if (settle_seq_account_flags(q, k, NULL) != in[k])
					ck_abort_msg("step %d: %llu lost", step,
						     (unsigned long long)k);
	}
	ck_assert_uint_eq(settle_seq_accounts(q), count);
	settle_seq_destroy(q);
}
END_TEST

/* ---- the whole decision path against a model ---------------------------- */

/*
 * Random request streams — accounts, transfers, chains, exact repeats,
 * conflicting repeats, unknown accounts, zero and overflowing amounts,
 * insufficient funds — cut into epochs at random. The engine is what the
 * server runs (sequencer decides; logged records run as an epoch on the
 * shards; results resolve the sequencer); the model implements DESIGN.md's
 * rules directly with plain arrays. Every reply (result, epoch, dup) and
 * every final balance must agree.
 */
#define FM_IDS 48    /* account ids 1..47 */
#define FM_TIDS 300  /* transfer ids 1..299: repeats are common */
#define FM_REQS 64   /* requests per epoch, at most */

struct fm_req {
	bool account;
	struct settle_account_rec a;
	struct settle_transfer t[3];
	uint32_t n;
};

struct fm_reply {
	uint8_t result;
	bool dup;
	uint64_t epoch;
};

static struct fm_reply
fm_err(int r)
{
	return (struct fm_reply){ (uint8_t)r, false, 0 };
}

struct fm_model {
	bool exists[FM_IDS];
	uint32_t flags[FM_IDS];
	settle_u128 debits[FM_IDS], credits[FM_IDS];
	bool known[FM_TIDS];
	struct settle_transfer orig[FM_TIDS];
	uint8_t result[FM_TIDS];
	uint64_t epoch_of[FM_TIDS];
};

static bool
fm_same(const struct settle_transfer *a, const struct settle_transfer *b)
{
	return a->debit == b->debit && a->credit == b->credit &&
	       a->amount == b->amount && a->code == b->code &&
	       a->ref == b->ref && a->flags == b->flags;
}

/* The model: one epoch of requests; replies in request order. */
static void
fm_model_epoch(struct fm_model *m, const struct fm_req *rq, uint32_t nreq,
	       uint64_t epoch, struct fm_reply (*rep)[3])
{
	/* Logged transfers of this epoch, in order, to run at its end. */
	uint32_t run_req[FM_REQS * 3], nrun = 0;
	bool repeat_of_pending[FM_REQS][3];
	memset(repeat_of_pending, 0, sizeof(repeat_of_pending));
	for (uint32_t r = 0; r < nreq; r++) {
		const struct fm_req *q = &rq[r];
		if (q->account) {
			uint64_t id = q->a.id;
			if (m->exists[id]) {
				rep[r][0] = fm_err(SETTLE_ACCOUNT_EXISTS);
			} else {
				m->exists[id] = true;
				m->flags[id] = q->a.flags;
				rep[r][0] = (struct fm_reply){ SETTLE_OK, false, epoch };
			}
			continue;
		}
		uint32_t known = 0, same = 0;
		for (uint32_t k = 0; k < q->n; k++) {
			if (m->known[q->t[k].id]) {
				known++;
				same += fm_same(&m->orig[q->t[k].id], &q->t[k]);
			}
		}
		if (known == q->n && same == q->n) {
			for (uint32_t k = 0; k < q->n; k++) {
				uint64_t id = q->t[k].id;
				if (m->epoch_of[id] == epoch) {
					repeat_of_pending[r][k] = true; /* later */
				} else {
					rep[r][k] = (struct fm_reply){
						m->result[id], m->result[id] == SETTLE_OK,
						m->epoch_of[id] };
				}
			}
			continue;
		}
		enum settle_result why = SETTLE_OK;
		uint32_t at = 0;
		if (known > 0) {
			for (uint32_t k = 0; k < q->n; k++)
				rep[r][k] = fm_err(m->known[q->t[k].id] ? SETTLE_ID_CONFLICT : SETTLE_LINKED_FAILED);
			continue;
		}
		for (uint32_t k = 1; k < q->n; k++)
			if (q->t[k].debit != q->t[0].debit)
				why = SETTLE_LINKED_MULTI_DEBIT;
		if (why != SETTLE_OK) {
			for (uint32_t k = 0; k < q->n; k++)
				rep[r][k] = fm_err(why);
			continue;
		}
		for (uint32_t k = 0; k < q->n && why == SETTLE_OK; k++) {
			const struct settle_transfer *t = &q->t[k];
			at = k;
			if (t->debit == t->credit)
				why = SETTLE_SAME_ACCOUNT;
			else if (t->amount == 0)
				why = SETTLE_ZERO_AMOUNT;
			else if (t->amount > SETTLE_AMOUNT_MAX)
				why = SETTLE_OVERFLOW;
			else if (!m->exists[t->debit] || !m->exists[t->credit])
				why = SETTLE_NO_SUCH_ACCOUNT;
			for (uint32_t j = 0; why == SETTLE_OK && j < k; j++)
				if (q->t[j].id == t->id)
					why = SETTLE_ID_CONFLICT;
		}
		if (why != SETTLE_OK) {
			for (uint32_t k = 0; k < q->n; k++)
				rep[r][k] = fm_err(k == at ? why : SETTLE_LINKED_FAILED);
			continue;
		}
		for (uint32_t k = 0; k < q->n; k++) {
			m->known[q->t[k].id] = true;
			m->orig[q->t[k].id] = q->t[k];
			m->epoch_of[q->t[k].id] = epoch;
			run_req[nrun++] = r;
		}
	}
	/* The epoch runs: debits in order against the previous epoch's
	 * credits, chains whole; credits at the end. */
	uint64_t pend_acct[FM_REQS * 3], pend_amt[FM_REQS * 3];
	uint32_t npend = 0;
	for (uint32_t i = 0; i < nrun;) {
		const struct fm_req *q = &rq[run_req[i]];
		uint32_t n = q->n;
		uint64_t d = q->t[0].debit;
		settle_u128 spent = m->debits[d];
		uint32_t failed = UINT32_MAX;
		for (uint32_t k = 0; k < n; k++) {
			spent += q->t[k].amount;
			if ((m->flags[d] & SETTLE_ACCOUNT_NONNEG) &&
			    spent > m->credits[d] && failed == UINT32_MAX)
				failed = k;
		}
		for (uint32_t k = 0; k < n; k++) {
			uint8_t res = failed == UINT32_MAX ? SETTLE_OK
				      : k == failed   ? SETTLE_INSUFFICIENT_FUNDS
						      : SETTLE_LINKED_FAILED;
			m->result[q->t[k].id] = res;
			rep[run_req[i]][k] = (struct fm_reply){ res, false, epoch };
			if (failed == UINT32_MAX) {
				m->debits[d] += q->t[k].amount;
				pend_acct[npend] = q->t[k].credit;
				pend_amt[npend++] = q->t[k].amount;
			}
		}
		i += n;
	}
	for (uint32_t k = 0; k < npend; k++)
		m->credits[pend_acct[k]] += pend_amt[k];
	for (uint32_t r = 0; r < nreq; r++)
		for (uint32_t k = 0; k < 3; k++)
			if (repeat_of_pending[r][k]) {
				uint64_t id = rq[r].t[k].id;
				rep[r][k] = (struct fm_reply){
					m->result[id], m->result[id] == SETTLE_OK,
					epoch };
			}
}

/* The engine, the way server/core.c drives it. */
static void
fm_engine_epoch(settle_seq *q, struct engine *e, const struct fm_req *rq,
		uint32_t nreq, uint64_t epoch, struct fm_reply (*rep)[3])
{
	static struct settle_op ops[FM_REQS * 3];
	uint32_t where_r[FM_REQS * 3], where_k[FM_REQS * 3], nops = 0;
	bool pending[FM_REQS][3];
	memset(pending, 0, sizeof(pending));
	for (uint32_t r = 0; r < nreq; r++) {
		struct settle_seq_answer ans[3];
		if (rq[r].account) {
			settle_seq_account(q, &rq[r].a, ans);
			if (ans[0].verdict == SETTLE_SEQ_LOG) {
				ops[nops] = (struct settle_op){
					.lsn = nops + 1, .type = SETTLE_REC_ACCOUNT };
				ops[nops].u.account = rq[r].a;
				ops[nops].ix = ans[0].debit_ix;
				where_r[nops] = r;
				where_k[nops++] = 0;
			} else {
				rep[r][0] = fm_err(ans[0].result);
			}
			continue;
		}
		settle_seq_chain(q, rq[r].t, rq[r].n, ans);
		for (uint32_t k = 0; k < rq[r].n; k++) {
			switch (ans[k].verdict) {
			case SETTLE_SEQ_LOG:
				ops[nops] = (struct settle_op){
					.lsn = nops + 1, .type = SETTLE_REC_TRANSFER };
				ops[nops].u.transfer = rq[r].t[k];
				ops[nops].ix = ans[k].debit_ix;
				ops[nops].credit_ix = ans[k].credit_ix;
				where_r[nops] = r;
				where_k[nops++] = k;
				break;
			case SETTLE_SEQ_REFUSED:
				rep[r][k] = fm_err(ans[k].result);
				break;
			case SETTLE_SEQ_DONE:
				rep[r][k] = (struct fm_reply){
					ans[k].result, ans[k].result == SETTLE_OK,
					ans[k].epoch };
				break;
			case SETTLE_SEQ_PENDING:
				pending[r][k] = true;
				break;
			}
		}
	}
	uint8_t res[FM_REQS * 3];
	engine_epoch(e, ops, nops, res);
	for (uint32_t i = 0; i < nops; i++) {
		if (ops[i].type == SETTLE_REC_TRANSFER)
			settle_seq_resolve(q, ops[i].u.transfer.id,
					   (enum settle_result)res[i], epoch);
		rep[where_r[i]][where_k[i]] = (struct fm_reply){ res[i], false,
								 epoch };
	}
	for (uint32_t r = 0; r < nreq; r++)
		for (uint32_t k = 0; k < 3; k++) {
			if (!pending[r][k])
				continue;
			struct settle_seq_answer a;
			settle_seq_chain(q, &rq[r].t[k], 1, &a);
			ck_assert_int_eq(a.verdict, SETTLE_SEQ_DONE);
			rep[r][k] = (struct fm_reply){ a.result,
						      a.result == SETTLE_OK,
						      a.epoch };
		}
}

static void
fm_random(unsigned *seed, struct fm_req *q, const struct fm_req *history,
	  uint32_t nhist)
{
	memset(q, 0, sizeof(*q));
	int dice = rand_r(seed) % 20;
	if (dice < 3) {
		q->account = true;
		q->a.id = (uint64_t)(rand_r(seed) % (FM_IDS - 1)) + 1;
		q->a.flags = rand_r(seed) % 3 ? SETTLE_ACCOUNT_NONNEG : 0;
		return;
	}
	if (dice < 6 && nhist > 0) {
		*q = history[rand_r(seed) % nhist]; /* an exact repeat */
		if (dice == 5 && !q->account)
			q->t[q->n - 1].amount++; /* ...or a conflicting one */
		return;
	}
	q->n = dice < 9 ? 2 + (uint32_t)(rand_r(seed) % 2) : 1;
	uint64_t debit = (uint64_t)(rand_r(seed) % (FM_IDS - 1)) + 1;
	for (uint32_t k = 0; k < q->n; k++) {
		struct settle_transfer *t = &q->t[k];
		t->id = (uint64_t)(rand_r(seed) % (FM_TIDS - 1)) + 1;
		t->debit = rand_r(seed) % 25 ? debit
					     : (uint64_t)(rand_r(seed) % (FM_IDS - 1)) + 1;
		t->credit = (uint64_t)(rand_r(seed) % (FM_IDS - 1)) + 1;
		switch (rand_r(seed) % 12) {
		case 0: t->amount = 0; break;
		case 1: t->amount = SETTLE_AMOUNT_MAX + 1; break;
		case 2: t->amount = SETTLE_AMOUNT_MAX; break;
		default: t->amount = (uint64_t)(rand_r(seed) % 400) + 1;
		}
		t->code = (uint16_t)(rand_r(seed) % 6);
		t->ref = (uint64_t)(rand_r(seed) % 3);
		t->flags = k + 1 < q->n ? SETTLE_TRANSFER_LINKED : 0;
	}
}

START_TEST(decisions_match_model)
{
	for (int sn = 0; sn < 20; sn++) {
		unsigned seed = (unsigned)(_i * 20 + sn) * 2246822519u + 7;
		struct fm_model m;
		memset(&m, 0, sizeof(m));
		settle_seq *q;
		ck_assert_int_eq(settle_seq_create(FM_IDS, 1 << 12, &q), 0);
		struct engine e;
		engine_init(&e, (uint32_t)(sn % 3) + 1, FM_IDS);
		e.q = q; /* its indexes, as the server uses them */
		static struct fm_req hist[4096];
		uint32_t nhist = 0;
		for (uint64_t epoch = 1; epoch <= 40; epoch++) {
			struct fm_req rq[FM_REQS];
			uint32_t n = (uint32_t)(rand_r(&seed) % FM_REQS) + 1;
			for (uint32_t r = 0; r < n; r++) {
				fm_random(&seed, &rq[r], hist, nhist);
				if (nhist < 4096)
					hist[nhist++] = rq[r];
			}
			struct fm_reply want[FM_REQS][3], got[FM_REQS][3];
			memset(want, 0, sizeof(want));
			memset(got, 0, sizeof(got));
			fm_model_epoch(&m, rq, n, epoch, want);
			fm_engine_epoch(q, &e, rq, n, epoch, got);
			for (uint32_t r = 0; r < n; r++)
				for (uint32_t k = 0; k < (rq[r].account ? 1 : rq[r].n);
				     k++)
					if (memcmp(&want[r][k], &got[r][k],
						   sizeof(want[r][k])) != 0 &&
					    (want[r][k].result != got[r][k].result ||
					     want[r][k].dup != got[r][k].dup ||
					     want[r][k].epoch != got[r][k].epoch))
						ck_abort_msg(
							"seed %d epoch %llu req %u.%u: "
							"engine %s%s@%llu, model %s%s@%llu",
							_i * 20 + sn,
							(unsigned long long)epoch, r, k,
							settle_result_name(got[r][k].result),
							got[r][k].dup ? " dup" : "",
							(unsigned long long)got[r][k].epoch,
							settle_result_name(want[r][k].result),
							want[r][k].dup ? " dup" : "",
							(unsigned long long)want[r][k].epoch);
		}
		for (uint64_t id = 1; id < FM_IDS; id++) {
			const struct settle_account *a = engine_find(&e, id);
			ck_assert(m.exists[id] == (a != NULL));
			if (a && (a->debits_posted != m.debits[id] ||
				  a->credits_posted != m.credits[id]))
				ck_abort_msg("seed %d: account %llu differs",
					     _i * 20 + sn, (unsigned long long)id);
		}
		engine_free(&e);
		settle_seq_destroy(q);
	}
}
END_TEST

static Suite *
settle_suite(void)
{
	Suite *s = suite_create("settle");
	TCase *tc = tcase_create("ledger");
	tcase_add_test(tc, credits_spendable_next_epoch);
	tcase_add_test(tc, chain_all_or_nothing);
	tcase_add_test(tc, capacity_and_lookup);
	tcase_add_test_raise_signal(tc, creating_an_existing_account_aborts,
				    SIGABRT);
	tcase_add_test(tc, result_names);
	suite_add_tcase(s, tc);

	tc = tcase_create("sequencer");
	tcase_add_test(tc, seq_refuses_structural);
	tcase_add_test(tc, seq_repeats_and_conflicts);
	tcase_add_test(tc, seq_chains);
	tcase_add_test(tc, seq_window_and_unlog);
	tcase_add_test(tc, seq_directory_random_deletes);
	tcase_add_test(tc, seq_memory_per_entry);
	suite_add_tcase(s, tc);

	tc = tcase_create("model");
	tcase_set_timeout(tc, 300);
	const char *v = getenv("DOVE_MODEL_SEEDS");
	int seeds = v && *v ? atoi(v) : 3000;
	tcase_add_loop_test(tc, engine_matches_model, 0,
			    (seeds + SEEDS_PER_TEST - 1) / SEEDS_PER_TEST);
	/* 20 seeds per test: 1000 seeds of the whole decision path. */
	tcase_add_loop_test(tc, decisions_match_model, 0, seeds / 3 / 20);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return dh_run_suite(settle_suite());
}
