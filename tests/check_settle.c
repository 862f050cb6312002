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

#include "dove.h"
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
	uint32_t src; /* the shard in its debit phase */
	struct settle_credit legs[MAX_SHARDS][MAX_SHARDS][MAX_OPS];
	uint32_t nlegs[MAX_SHARDS][MAX_SHARDS];
	struct settle_batch batches[MAX_OPS]; /* this epoch's merges */
	uint32_t nbatches;
	struct settle_post posts[MAX_OPS];
	uint32_t merges; /* batches, every epoch so far */
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
		} else if (ops[i].type == SETTLE_REC_TRANSFER) {
			ops[i].ix = engine_ix(e, ops[i].u.transfer.debit);
			ops[i].credit_ix = engine_ix(e, ops[i].u.transfer.credit);
		} else if (ops[i].u.ctl.account != 0) {
			ops[i].ix = engine_ix(e, ops[i].u.ctl.account);
		}
	}
}

static void
route_credit(void *arg, const struct settle_credit *c)
{
	struct engine *e = arg;
	uint32_t d = settle_shard_of(c->account, e->nshards);
	/* Not ck_assert: each is a write(2) to Check's parent. */
	if (e->nlegs[e->src][d] >= MAX_OPS)
		ck_abort_msg("too many credit legs");
	e->legs[e->src][d][e->nlegs[e->src][d]++] = *c;
}

static void
collect_batch(void *arg, const struct settle_batch *b)
{
	struct engine *e = arg;
	if (e->nbatches >= MAX_OPS)
		ck_abort_msg("too many batches");
	e->batches[e->nbatches++] = *b;
}

static void
engine_init(struct engine *e, uint32_t nshards, uint32_t capacity)
{
	memset(e, 0, sizeof(*e));
	e->nshards = nshards;
	ck_assert_int_eq(settle_ledger_create(capacity, nshards, 64, &e->ledger),
			 0);
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
		ops[i].where = i;
		/* As server/core.c dispatches them. */
		uint32_t to = settle_op_shard(&ops[i], e->nshards);
		for (uint32_t s = 0; s < e->nshards; s++) {
			if (to != SETTLE_ALL_SHARDS && s != to)
				continue;
			where[s][count[s]] = i;
			mine[s][count[s]++] = ops[i];
		}
	}
	struct settle_shard_out out = { route_credit, collect_batch, e, e->posts };
	memset(e->nlegs, 0, sizeof(e->nlegs));
	e->nbatches = 0;
	for (uint32_t s = 0; s < e->nshards; s++) {
		uint8_t r[MAX_OPS];
		e->src = s;
		settle_ledger_debit_phase(e->ledger, s, mine[s], count[s], r,
					  &out);
		for (uint32_t k = 0; k < count[s]; k++)
			results[where[s][k]] = r[k];
	}
	/* The epoch barrier: credits land only now. */
	for (uint32_t s = 0; s < e->nshards; s++) {
		const struct settle_credit *lists[MAX_SHARDS];
		uint32_t counts[MAX_SHARDS];
		for (uint32_t src = 0; src < e->nshards; src++) {
			lists[src] = e->legs[src][s];
			counts[src] = e->nlegs[src][s];
		}
		settle_ledger_apply_credits(e->ledger, s, lists, counts,
					    e->nshards, &out);
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
	ck_assert_int_eq(settle_ledger_create(0, 1, 1, &l), -EINVAL);
	ck_assert_int_eq(settle_ledger_create(16, 0, 1, &l), -EINVAL);
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

static struct settle_op
ctl(uint64_t lsn, uint16_t type, uint64_t account, uint32_t on, uint32_t reason)
{
	struct settle_op o = { .lsn = lsn, .type = type };
	o.u.ctl = (struct settle_ctl_rec){ account, on, reason };
	return o;
}

/* Issue 6: a debit from a hot account short on posted balance but
 * covered by buffered credits succeeds after a forced merge; one that is
 * not covered is refused insufficient_funds. 2 shards, so the credits
 * cross shards. */
START_TEST(hot_debit_merges_first)
{
	struct engine e;
	engine_init(&e, 2, 16);
	uint8_t r[8];
	/* 2: hot and nonneg (a merchant); 1: system; 3: nonneg. */
	struct settle_op e1[] = { mkacct(1, 1, 0),
				  mkacct(2, 2, SETTLE_ACCOUNT_NONNEG | SETTLE_ACCOUNT_HOT),
				  mkacct(3, 3, SETTLE_ACCOUNT_NONNEG),
				  ctl(4, SETTLE_REC_PEAK, 0, 1, 0),
				  xfer(5, 10, 1, 2, 400, false),
				  xfer(6, 11, 1, 2, 200, false) };
	engine_epoch(&e, e1, 6, r);
	const struct settle_account *a = engine_find(&e, 2);
	/* Peak, hot: both credits buffered, nothing posted. */
	ck_assert(a->credits_posted == 0 && a->credits_buffered == 600);
	ck_assert_uint_eq(e.posts[4].credit_buffered, 1);
	ck_assert_uint_eq(e.nbatches, 0);
	/* 500 > posted 0, <= posted + buffered: merged, then accepted. */
	struct settle_op e2[] = { xfer(7, 12, 2, 3, 500, false) };
	engine_epoch(&e, e2, 1, r);
	ck_assert_uint_eq(r[0], SETTLE_OK);
	ck_assert_uint_eq(e.nbatches, 1);
	ck_assert_uint_eq(e.batches[0].account, 2);
	ck_assert_uint_eq(e.batches[0].reason, SETTLE_MERGE_DEBIT);
	ck_assert_uint_eq(e.batches[0].count, 2);
	ck_assert(e.batches[0].sum == 600);
	ck_assert_uint_eq(e.batches[0].first_id, 10);
	ck_assert_uint_eq(e.batches[0].last_id, 11);
	ck_assert_uint_eq(e.batches[0].lsn, 7);
	a = engine_find(&e, 2);
	ck_assert(a->credits_posted == 600 && a->debits_posted == 500 &&
		  a->credits_buffered == 0);
	ck_assert(e.posts[0].debit_after == 100);
	/* Posted 100, buffered 100: 300 is not covered even merged. */
	struct settle_op e3[] = { xfer(8, 13, 1, 2, 100, false) };
	engine_epoch(&e, e3, 1, r);
	struct settle_op e4[] = { xfer(9, 14, 2, 3, 300, false) };
	engine_epoch(&e, e4, 1, r);
	ck_assert_uint_eq(r[0], SETTLE_INSUFFICIENT_FUNDS);
	a = engine_find(&e, 2);
	ck_assert(a->debits_posted == 500 && a->credits_posted == 700 &&
		  a->credits_buffered == 0);
	/* Peak off: credits post in real time again, with their balance. */
	struct settle_op e5[] = { ctl(10, SETTLE_REC_PEAK, 0, 0, 0),
				  xfer(11, 15, 1, 2, 5, false) };
	engine_epoch(&e, e5, 2, r);
	a = engine_find(&e, 2);
	ck_assert(a->credits_posted == 705 && a->credits_buffered == 0);
	ck_assert_uint_eq(e.posts[1].credit_buffered, 0);
	ck_assert(e.posts[1].credit_after == 205);
	engine_free(&e);
}
END_TEST

/* A merge at the end of peak, and a HOT off, move whole buffers. */
START_TEST(peak_end_and_hot_off_merge)
{
	struct engine e;
	engine_init(&e, 4, 16);
	uint8_t r[8];
	struct settle_op e1[] = { mkacct(1, 1, 0), mkacct(2, 2, 0), mkacct(3, 3, 0),
				  ctl(4, SETTLE_REC_HOT, 2, 1, SETTLE_HOT_ADMIN),
				  ctl(5, SETTLE_REC_HOT, 3, 1, SETTLE_HOT_AUTO),
				  ctl(6, SETTLE_REC_PEAK, 0, 1, 0) };
	engine_epoch(&e, e1, 6, r);
	struct settle_op e2[] = { xfer(7, 20, 1, 2, 7, false),
				  xfer(8, 21, 1, 3, 9, false) };
	engine_epoch(&e, e2, 2, r);
	ck_assert(engine_find(&e, 2)->credits_buffered == 7);
	ck_assert(engine_find(&e, 3)->credits_buffered == 9);
	/* HOT off merges 3 at once; a credit to it later in the same epoch
	 * posts in real time (it is not hot at the end of the epoch). */
	struct settle_op e3[] = { ctl(9, SETTLE_REC_HOT, 3, 0, SETTLE_HOT_AUTO),
				  xfer(10, 22, 1, 3, 1, false) };
	engine_epoch(&e, e3, 2, r);
	ck_assert_uint_eq(e.nbatches, 1);
	ck_assert_uint_eq(e.batches[0].reason, SETTLE_MERGE_HOT_OFF);
	ck_assert(engine_find(&e, 3)->credits_posted == 10 &&
		  engine_find(&e, 3)->credits_buffered == 0);
	struct settle_op e4[] = { ctl(11, SETTLE_REC_PEAK, 0, 0, 0) };
	engine_epoch(&e, e4, 1, r);
	ck_assert_uint_eq(e.nbatches, 1);
	ck_assert_uint_eq(e.batches[0].reason, SETTLE_MERGE_PEAK_END);
	ck_assert(engine_find(&e, 2)->credits_posted == 7 &&
		  engine_find(&e, 2)->credits_buffered == 0);
	engine_free(&e);
}
END_TEST

/* The detector: one account at 10x the threshold is heavy after a tenth
 * of a window; 1,000,000 other accounts with one posting each are not,
 * and the sketch does not grow; a window without its load forgets it. */
START_TEST(sketch_finds_the_hot_account)
{
	settle_sketch *k;
	ck_assert_int_eq(settle_sketch_create(&k), 0);
	size_t bytes = settle_sketch_bytes(k);
	ck_assert_uint_le(bytes, 300 * 1024);
	const uint32_t threshold = 100, window_s = 10;
	const uint32_t level = threshold * window_s;
	settle_sketch_reset(k, level);
	/* 10x the threshold over the window: 10,000 postings to 777,
	 * spread among a million others. */
	uint32_t at = 0;
	for (uint64_t i = 0; i < 1000000; i++) {
		settle_sketch_add(k, 1000000 + i * 7919);
		if (i % 100 == 0 &&
		    settle_sketch_add(k, 777) >= level && at == 0)
			at = (uint32_t)(i / 100) + 1;
	}
	uint64_t heavy[8];
	ck_assert_uint_eq(settle_sketch_heavy(k, heavy, 8), 1);
	ck_assert_uint_eq(heavy[0], 777);
	/* Heavy at its level-th posting: a tenth of the way through. */
	ck_assert_uint_eq(at, level);
	ck_assert_uint_eq(settle_sketch_bytes(k), bytes);
	/* Over-counting by collisions is small next to the level. */
	ck_assert_uint_lt(settle_sketch_estimate(k, 1000000 + 5 * 7919), level / 10);
	/* The next window, without its load: below half the level. */
	settle_sketch_reset(k, level);
	for (uint64_t i = 0; i < 100000; i++)
		settle_sketch_add(k, 5000000 + i);
	ck_assert_uint_lt(settle_sketch_estimate(k, 777), level / 2);
	ck_assert_uint_eq(settle_sketch_heavy(k, heavy, 8), 0);
	settle_sketch_destroy(k);
}
END_TEST

/* One decimal formatter for every 128-bit number that leaves doved:
 * the ends of both ranges and the values around zero. */
START_TEST(decimal_text_of_128_bits)
{
	static const struct {
		__int128 v;
		const char *want;
	} cases[] = {
		{ 0, "0" }, { 1, "1" }, { -1, "-1" }, { 1000000007, "1000000007" },
		{ (__int128)(((unsigned __int128)1 << 127) - 1),
		  "170141183460469231731687303715884105727" },
		{ (__int128)((unsigned __int128)1 << 127),
		  "-170141183460469231731687303715884105728" },
	};
	char b[48];
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t n = settle_i128_text(b, cases[i].v);
		b[n] = '\0';
		ck_assert_str_eq(b, cases[i].want);
	}
	size_t n = settle_u128_text(b, ~(unsigned __int128)0);
	b[n] = '\0';
	ck_assert_str_eq(b, "340282366920938463463374607431768211455");
}
END_TEST

/* Replay decides each logged record again: a chain comes out whole with
 * its indexes; a refused record, an unknown type or size, and a record
 * inside an open chain are errors, each told apart. */
START_TEST(relog_decides_again)
{
	settle_seq *q;
	ck_assert_int_eq(settle_seq_create(16, 16, 4, &q), 0);
	struct settle_relog c = { .len = 0 };
	struct settle_op ops[SETTLE_CHAIN_MAX];
	uint32_t n = 99;
	struct settle_account_rec a1 = { 1, 0, 0 }, a2 = { 2, 0, 0 };
	ck_assert_int_eq(settle_seq_relog(q, &c, SETTLE_REC_ACCOUNT, &a1,
					  sizeof(a1), ops, &n), 0);
	ck_assert_uint_eq(n, 1);
	ck_assert_uint_eq(ops[0].ix, 0);
	ck_assert_int_eq(settle_seq_relog(q, &c, SETTLE_REC_ACCOUNT, &a2,
					  sizeof(a2), ops, &n), 0);
	ck_assert_uint_eq(ops[0].ix, 1);
	/* The same account again: the sequencer refuses, the log is wrong. */
	ck_assert_int_eq(settle_seq_relog(q, &c, SETTLE_REC_ACCOUNT, &a1,
					  sizeof(a1), ops, &n), -DOVE_ECORRUPT);
	ck_assert_int_eq(settle_seq_relog(q, &c, 77, &a1, sizeof(a1), ops, &n),
			 -EINVAL);
	ck_assert_int_eq(settle_seq_relog(q, &c, SETTLE_REC_ACCOUNT, &a1, 8, ops,
					  &n), -EINVAL);
	struct settle_transfer t1 = { .id = 10, .debit = 1, .credit = 2,
				      .amount = 5, .flags = SETTLE_TRANSFER_LINKED };
	struct settle_transfer t2 = { .id = 11, .debit = 1, .credit = 2,
				      .amount = 6 };
	ck_assert_int_eq(settle_seq_relog(q, &c, SETTLE_REC_TRANSFER, &t1,
					  sizeof(t1), ops, &n), 0);
	ck_assert_uint_eq(n, 0); /* held until the chain ends */
	struct settle_ctl_rec peak = { 0, 1, 0 };
	ck_assert_int_eq(settle_seq_relog(q, &c, SETTLE_REC_PEAK, &peak,
					  sizeof(peak), ops, &n), -EINVAL);
	ck_assert_int_eq(settle_seq_relog(q, &c, SETTLE_REC_TRANSFER, &t2,
					  sizeof(t2), ops, &n), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_uint_eq(c.len, 0);
	ck_assert_uint_eq(ops[0].u.transfer.id, 10);
	ck_assert_uint_eq(ops[1].u.transfer.id, 11);
	ck_assert(ops[1].ix == 0 && ops[1].credit_ix == 1);
	settle_seq_destroy(q);
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
	ck_assert_int_eq(settle_seq_create(64, window, 16, &q), 0);
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
		ck_assert_int_eq(settle_seq_create(caps[i], caps[i], 1024, &q), 0);
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
	ck_assert_int_eq(settle_seq_create(300, 1, 16, &q), 0);
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
	uint16_t ctl_type; /* PEAK / HOT / MERGE: a control request */
	struct settle_ctl_rec ctl;
};

#define FM_MERGE_MAX 3 /* small: merge_max merges happen often */

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
	/* DESIGN.md "Differentiated settlement", as plainly as it reads:
	 * the sequencer's view (decided in log order) and the ledger's
	 * (peak and hot as the epoch runs; a credit is buffered when, at
	 * the end of its epoch, peak is on and its account hot). */
	bool seq_peak, seq_hot[FM_IDS];
	uint32_t hot_reason[FM_IDS];
	uint64_t since[FM_IDS];
	bool peak, hot[FM_IDS];
	settle_u128 buffered[FM_IDS];
	uint32_t merges;
};

/* Logged, in log order: a chain (request r) or a control record. */
struct fm_item {
	int32_t r; /* -1: control */
	uint16_t type;
	struct settle_ctl_rec ctl;
};

static void
fm_merge(struct fm_model *m, uint64_t id)
{
	if (m->buffered[id] == 0)
		return;
	m->credits[id] += m->buffered[id];
	m->buffered[id] = 0;
	m->merges++;
}

/* The sequencer's decision on a control request (settle.h rules). */
static enum settle_result
fm_control(struct fm_model *m, uint16_t type, const struct settle_ctl_rec *c)
{
	uint64_t a = c->account;
	bool known = a > 0 && a < FM_IDS && m->exists[a];
	switch (type) {
	case SETTLE_REC_PEAK:
		if (c->on > 1 || (c->on != 0) == m->seq_peak || a != 0)
			return SETTLE_BAD_REQUEST;
		m->seq_peak = c->on;
		for (uint64_t i = 0; !c->on && i < FM_IDS; i++)
			m->since[i] = 0;
		return SETTLE_OK;
	case SETTLE_REC_HOT:
		if (c->on > 1 || c->reason >= SETTLE_HOT_REASONS ||
		    c->reason == SETTLE_HOT_FLAG)
			return SETTLE_BAD_REQUEST;
		if (!known)
			return SETTLE_NO_SUCH_ACCOUNT;
		if (c->on) {
			if (m->seq_hot[a])
				return SETTLE_ACCOUNT_EXISTS;
			m->seq_hot[a] = true;
			m->hot_reason[a] = c->reason;
			m->since[a] = 0;
			return SETTLE_OK;
		}
		if (!m->seq_hot[a])
			return SETTLE_NO_SUCH_ACCOUNT;
		if (m->hot_reason[a] == SETTLE_HOT_FLAG)
			return SETTLE_BAD_REQUEST;
		m->seq_hot[a] = false;
		return SETTLE_OK;
	case SETTLE_REC_MERGE:
		if (c->reason >= SETTLE_MERGE_REASONS || c->on != 0)
			return SETTLE_BAD_REQUEST;
		if (a == 0) {
			memset(m->since, 0, sizeof(m->since));
			return SETTLE_OK;
		}
		if (!known || !m->seq_hot[a])
			return SETTLE_NO_SUCH_ACCOUNT;
		m->since[a] = 0;
		return SETTLE_OK;
	}
	return SETTLE_BAD_REQUEST;
}

/* A control record as the ledger runs it. */
static void
fm_run_control(struct fm_model *m, uint16_t type, const struct settle_ctl_rec *c)
{
	if (type == SETTLE_REC_PEAK) {
		m->peak = c->on;
		for (uint64_t i = 0; !c->on && i < FM_IDS; i++)
			fm_merge(m, i);
	} else if (type == SETTLE_REC_HOT) {
		if (!c->on)
			fm_merge(m, c->account);
		m->hot[c->account] = c->on;
	} else if (c->account == 0) {
		for (uint64_t i = 0; i < FM_IDS; i++)
			fm_merge(m, i);
	} else {
		fm_merge(m, c->account);
	}
}

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
	/* Logged records of this epoch, in order, to run at its end. */
	struct fm_item items[FM_REQS * 4];
	uint32_t nitems = 0;
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
				if (q->a.flags & SETTLE_ACCOUNT_HOT) {
					m->seq_hot[id] = m->hot[id] = true;
					m->hot_reason[id] = SETTLE_HOT_FLAG;
				}
				rep[r][0] = (struct fm_reply){ SETTLE_OK, false, epoch };
			}
			continue;
		}
		if (q->ctl_type) {
			enum settle_result why = fm_control(m, q->ctl_type, &q->ctl);
			rep[r][0] = why == SETTLE_OK
					    ? (struct fm_reply){ SETTLE_OK, false, epoch }
					    : fm_err(why);
			if (why == SETTLE_OK)
				items[nitems++] = (struct fm_item){ -1, q->ctl_type,
								    q->ctl };
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
		}
		items[nitems++] = (struct fm_item){ (int32_t)r, 0, { 0 } };
		/* merge_max: credits logged to a hot account in peak. */
		for (uint32_t k = 0; k < q->n; k++) {
			uint64_t c = q->t[k].credit;
			if (m->seq_peak && m->seq_hot[c] &&
			    ++m->since[c] >= FM_MERGE_MAX) {
				struct settle_ctl_rec mc = { c, 0, SETTLE_MERGE_MAX };
				ck_assert_int_eq(fm_control(m, SETTLE_REC_MERGE, &mc),
						 SETTLE_OK);
				items[nitems++] = (struct fm_item){
					-1, SETTLE_REC_MERGE, mc };
			}
		}
	}
	/* The epoch runs: debits in order against the previous epoch's
	 * posted credits (buffered ones merged first when short), chains
	 * whole, control records in their place; credits at the end. */
	uint64_t pend_acct[FM_REQS * 3], pend_amt[FM_REQS * 3];
	uint32_t npend = 0;
	for (uint32_t i = 0; i < nitems; i++) {
		if (items[i].r < 0) {
			fm_run_control(m, items[i].type, &items[i].ctl);
			continue;
		}
		uint32_t r = (uint32_t)items[i].r;
		const struct fm_req *q = &rq[r];
		uint32_t n = q->n;
		uint64_t d = q->t[0].debit;
		settle_u128 spent = m->debits[d];
		uint32_t failed = UINT32_MAX;
		for (uint32_t k = 0; k < n && failed == UINT32_MAX; k++) {
			spent += q->t[k].amount;
			bool nonneg = m->flags[d] & SETTLE_ACCOUNT_NONNEG;
			if (nonneg && spent > m->credits[d])
				fm_merge(m, d);
			if (nonneg && spent > m->credits[d])
				failed = k;
		}
		for (uint32_t k = 0; k < n; k++) {
			uint8_t res = failed == UINT32_MAX ? SETTLE_OK
				      : k == failed   ? SETTLE_INSUFFICIENT_FUNDS
						      : SETTLE_LINKED_FAILED;
			m->result[q->t[k].id] = res;
			rep[r][k] = (struct fm_reply){ res, false, epoch };
			if (failed == UINT32_MAX) {
				m->debits[d] += q->t[k].amount;
				pend_acct[npend] = q->t[k].credit;
				pend_amt[npend++] = q->t[k].amount;
			}
		}
	}
	for (uint32_t k = 0; k < npend; k++) {
		uint64_t c = pend_acct[k];
		if (m->peak && m->hot[c])
			m->buffered[c] += pend_amt[k];
		else
			m->credits[c] += pend_amt[k];
	}
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
	static struct settle_op ops[FM_REQS * 4];
	uint32_t where_r[FM_REQS * 4], where_k[FM_REQS * 4], nops = 0;
	bool pending[FM_REQS][3];
	memset(pending, 0, sizeof(pending));
	for (uint32_t r = 0; r < nreq; r++) {
		struct settle_seq_answer ans[3];
		if (rq[r].ctl_type) {
			settle_seq_control(q, rq[r].ctl_type, &rq[r].ctl, ans);
			if (ans[0].verdict == SETTLE_SEQ_LOG) {
				ops[nops] = (struct settle_op){
					.lsn = nops + 1, .type = rq[r].ctl_type,
					.ix = ans[0].debit_ix };
				ops[nops].u.ctl = rq[r].ctl;
				where_r[nops] = r;
				where_k[nops++] = 0;
			} else {
				rep[r][0] = fm_err(ans[0].result);
			}
			continue;
		}
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
		/* As the server does: a MERGE right after the chain. */
		for (uint32_t k = 0; k < rq[r].n; k++) {
			if (!ans[k].merge_due)
				continue;
			struct settle_seq_answer ma;
			struct settle_ctl_rec mc = { rq[r].t[k].credit, 0,
						     SETTLE_MERGE_MAX };
			settle_seq_control(q, SETTLE_REC_MERGE, &mc, &ma);
			ck_assert_int_eq(ma.verdict, SETTLE_SEQ_LOG);
			ops[nops] = (struct settle_op){ .lsn = nops + 1,
							.type = SETTLE_REC_MERGE,
							.ix = ma.debit_ix };
			ops[nops].u.ctl = mc;
			where_r[nops] = UINT32_MAX; /* nobody asked */
			where_k[nops++] = 0;
		}
	}
	uint8_t res[FM_REQS * 4];
	engine_epoch(e, ops, nops, res);
	for (uint32_t i = 0; i < nops; i++) {
		if (ops[i].type == SETTLE_REC_TRANSFER)
			settle_seq_resolve(q, ops[i].u.transfer.id,
					   (enum settle_result)res[i], epoch);
		if (where_r[i] != UINT32_MAX)
			rep[where_r[i]][where_k[i]] = (struct fm_reply){
				res[i], false, epoch };
	}
	e->merges += e->nbatches;
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
	  uint32_t nhist, bool peaks)
{
	memset(q, 0, sizeof(*q));
	int dice = rand_r(seed) % 20;
	if (dice < 3) {
		q->account = true;
		q->a.id = (uint64_t)(rand_r(seed) % (FM_IDS - 1)) + 1;
		q->a.flags = rand_r(seed) % 3 ? SETTLE_ACCOUNT_NONNEG : 0;
		if (rand_r(seed) % 6 == 0)
			q->a.flags |= SETTLE_ACCOUNT_HOT;
		return;
	}
	if (peaks && rand_r(seed) % 8 == 0) {
		/* PEAK, HOT, MERGE: valid and not (wrong state, unknown
		 * account, the flag reason, a bad reason). */
		static const uint16_t types[] = { SETTLE_REC_PEAK, SETTLE_REC_HOT,
						  SETTLE_REC_HOT, SETTLE_REC_MERGE };
		q->ctl_type = types[rand_r(seed) % 4];
		q->ctl.on = (uint32_t)(rand_r(seed) % 2);
		q->ctl.account = q->ctl_type == SETTLE_REC_PEAK ? 0
				 : rand_r(seed) % 5 == 0
					 ? 0
					 : (uint64_t)(rand_r(seed) % (FM_IDS - 1)) + 1;
		q->ctl.reason = (uint32_t)(rand_r(seed) % 5);
		if (q->ctl_type == SETTLE_REC_MERGE)
			q->ctl.on = rand_r(seed) % 10 == 0;
		return;
	}
	if (dice < 6 && nhist > 0) {
		*q = history[rand_r(seed) % nhist]; /* an exact repeat */
		if (dice == 5 && !q->account && !q->ctl_type)
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

/* 20 seeds from _i: requests through the model and the engine (real
 * sequencer, 1, 2 and 4 shards); with peaks, PEAK / HOT / MERGE requests
 * and hot accounts are mixed in. */
static void
fm_seeds(int _i, bool peaks)
{
	static const uint32_t shard_counts[] = { 1, 2, 4 };
	uint32_t merges = 0, buffered = 0, peaks_on = 0;
	for (int sn = 0; sn < 20; sn++) {
		unsigned seed = (unsigned)(_i * 20 + sn) * 2246822519u +
				(peaks ? 11 : 7);
		static struct fm_model m;
		memset(&m, 0, sizeof(m));
		settle_seq *q;
		ck_assert_int_eq(settle_seq_create(FM_IDS, 1 << 12, 64, &q), 0);
		settle_seq_set_merge_max(q, FM_MERGE_MAX);
		static struct engine e;
		engine_init(&e, shard_counts[sn % 3], FM_IDS);
		e.q = q; /* its indexes, as the server uses them */
		static struct fm_req hist[4096];
		uint32_t nhist = 0;
		for (uint64_t epoch = 1; epoch <= 40; epoch++) {
			struct fm_req rq[FM_REQS];
			uint32_t n = (uint32_t)(rand_r(&seed) % FM_REQS) + 1;
			for (uint32_t r = 0; r < n; r++) {
				fm_random(&seed, &rq[r], hist, nhist, peaks);
				if (nhist < 4096)
					hist[nhist++] = rq[r];
			}
			struct fm_reply want[FM_REQS][3], got[FM_REQS][3];
			memset(want, 0, sizeof(want));
			memset(got, 0, sizeof(got));
			fm_model_epoch(&m, rq, n, epoch, want);
			fm_engine_epoch(q, &e, rq, n, epoch, got);
			for (uint32_t r = 0; r < n; r++)
				for (uint32_t k = 0;
				     k < (rq[r].account || rq[r].ctl_type ? 1 : rq[r].n);
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
				  a->credits_posted != m.credits[id] ||
				  a->credits_buffered != m.buffered[id] ||
				  settle_seq_hot(q, id, NULL) != m.seq_hot[id] ||
				  ((a->flags & SETTLE_ACCOUNT_HOT_NOW) != 0) !=
					  m.hot[id]))
				ck_abort_msg("seed %d (%u shards): account %llu "
					     "differs",
					     _i * 20 + sn, e.nshards,
					     (unsigned long long)id);
		}
		ck_assert_int_eq(settle_seq_peak(q), m.seq_peak);
		ck_assert_int_eq(settle_ledger_peak(e.ledger), m.peak);
		if (e.merges != m.merges)
			ck_abort_msg("seed %d: %u merges, model %u", _i * 20 + sn,
				     e.merges, m.merges);
		merges += m.merges;
		peaks_on += m.peak;
		for (uint64_t id = 1; id < FM_IDS; id++)
			buffered += m.buffered[id] != 0;
		engine_free(&e);
		settle_seq_destroy(q);
	}
	/* The workload must exercise what it claims to. */
	if (peaks && (merges == 0 || buffered == 0 || peaks_on == 0))
		ck_abort_msg("seeds %d..: %u merges, %u buffers open, %u in "
			     "peak at the end: the workload missed peaks",
			     _i * 20, merges, buffered, peaks_on);
}

START_TEST(decisions_match_model)
{
	fm_seeds(_i, false);
}
END_TEST

/* The same with peak hours, hot accounts and merges (issue 6). */
START_TEST(peaks_match_model)
{
	fm_seeds(_i, true);
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
	tcase_add_test(tc, decimal_text_of_128_bits);
	tcase_add_test(tc, relog_decides_again);
	tcase_add_test(tc, hot_debit_merges_first);
	tcase_add_test(tc, peak_end_and_hot_off_merge);
	tcase_add_test(tc, sketch_finds_the_hot_account);
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
	/* And 1000 with peaks, hot accounts and merges. */
	tcase_add_loop_test(tc, peaks_match_model, 0, seeds / 3 / 20);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return dh_run_suite(settle_suite());
}
