/*
 * engine.c - one whole settlement state machine on one thread: the
 * sequencer and a one-shard ledger, fed logged epochs. It is the ledger
 * as a pure function of the log, packaged for whoever needs to recompute
 * it away from the server's shards (the MariaDB projection follows the
 * WAL with one, so it can re-project any epoch after a crash or a
 * failover without asking the live ledger).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dove.h"
#include "settle.h"

struct settle_engine {
	settle_seq *q;
	settle_ledger *l;
	uint32_t max;
	uint32_t n; /* records staged for the epoch being built */
	struct settle_op *ops;
	uint8_t *results;
	struct settle_post *posts;
	struct settle_credit *legs;
	uint32_t nlegs;
	struct settle_batch *batches;
	uint32_t nbatches, hot_max;
	struct settle_relog relog;
	bool bad;
};

int
settle_engine_create(uint32_t accounts_max, uint32_t dedup_window,
		     uint32_t hot_max, uint32_t max_records, settle_engine **out)
{
	settle_engine *e = calloc(1, sizeof(*e));
	if (e == NULL)
		return -ENOMEM;
	int rc = settle_seq_create(accounts_max, dedup_window, hot_max, &e->q);
	if (rc == 0)
		rc = settle_ledger_create(accounts_max, 1, hot_max, &e->l);
	e->max = max_records;
	e->hot_max = hot_max;
	e->ops = calloc(max_records, sizeof(*e->ops));
	e->results = calloc(max_records, 1);
	e->posts = calloc(max_records, sizeof(*e->posts));
	e->legs = calloc(max_records, sizeof(*e->legs));
	e->batches = calloc(hot_max, sizeof(*e->batches));
	if (rc == 0 && (!e->ops || !e->results || !e->posts || !e->legs ||
			!e->batches))
		rc = -ENOMEM;
	if (rc != 0) {
		settle_engine_destroy(e);
		return rc;
	}
	*out = e;
	return 0;
}

void
settle_engine_destroy(settle_engine *e)
{
	if (e == NULL)
		return;
	settle_seq_destroy(e->q);
	settle_ledger_destroy(e->l);
	free(e->ops);
	free(e->results);
	free(e->posts);
	free(e->legs);
	free(e->batches);
	free(e);
}

settle_seq *
settle_engine_seq(settle_engine *e)
{
	return e->q;
}

settle_ledger *
settle_engine_ledger(settle_engine *e)
{
	return e->l;
}

int
settle_engine_add(settle_engine *e, uint16_t type, const void *data,
		  uint32_t len)
{
	uint32_t n;
	if (e->bad || e->n + SETTLE_CHAIN_MAX > e->max ||
	    settle_seq_relog(e->q, &e->relog, type, data, len, e->ops + e->n,
			     &n) != 0) {
		e->bad = true;
		return -DOVE_ECORRUPT;
	}
	for (uint32_t i = 0; i < n; i++)
		e->ops[e->n + i].where = e->n + i;
	e->n += n;
	return 0;
}

static void
put_credit(void *arg, const struct settle_credit *c)
{
	settle_engine *e = arg;
	DOVE_ASSERT(e->nlegs < e->max);
	e->legs[e->nlegs++] = *c;
}

static void
put_batch(void *arg, const struct settle_batch *b)
{
	settle_engine *e = arg;
	DOVE_ASSERT(e->nbatches < e->hot_max);
	e->batches[e->nbatches++] = *b;
}

int
settle_engine_run(settle_engine *e, uint64_t epoch, uint64_t first_lsn,
		  struct settle_engine_out *out)
{
	if (e->bad || e->relog.len != 0) {
		e->bad = true;
		return -DOVE_ECORRUPT;
	}
	for (uint32_t i = 0; i < e->n; i++)
		e->ops[i].lsn = first_lsn + i;
	e->nlegs = e->nbatches = 0;
	struct settle_shard_out so = { put_credit, put_batch, e, e->posts };
	settle_ledger_debit_phase(e->l, 0, e->ops, e->n, e->results, &so);
	const struct settle_credit *lists[1] = { e->legs };
	settle_ledger_apply_credits(e->l, 0, lists, &e->nlegs, 1, &so);
	for (uint32_t i = 0; i < e->n; i++)
		if (e->ops[i].type == SETTLE_REC_TRANSFER)
			settle_seq_resolve(e->q, e->ops[i].u.transfer.id,
					   (enum settle_result)e->results[i], epoch);
	*out = (struct settle_engine_out){ e->n, e->ops, e->results, e->posts,
					   e->batches, e->nbatches };
	e->n = 0;
	return 0;
}
