/*
 * core.c - the settlement path inside doved: line-protocol connections
 * (UNIX and TCP, epoll), the sequencer's decisions, staging into the WAL,
 * execution of each durable epoch on the ledger shards, and the replies,
 * in request order per connection.
 *
 * Everything here runs on the main loop thread; the WAL's committer is
 * the only other thread, and it reports through an eventfd. Per round of
 * the loop, every request read is decided by the sequencer and the
 * records to log are appended to the WAL in one call; when the WAL says
 * an epoch is durable, that epoch runs on the shards (the two-phase
 * execution of settle/) and its requests are answered. Nothing is
 * answered before its epoch's fdatasync returned.
 *
 * Bounds: a connection has at most [ingress] pipeline unanswered requests
 * and max_line bytes of partial input; the core has at most CORE_RECS
 * records staged or in flight. At either bound the connection is simply
 * not read until replies drain (backpressure): nothing is dropped.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <urcu/urcu-memb.h>

#include "dove.h"
#include "ring.h"
#include "server_int.h"
#include "store.h"

/* Records staged or in flight. 65536 x 56 bytes of WAL payload is 3.5 MiB,
 * several epochs' worth at the default max_epoch_kb. */
#define CORE_RECS 65536
#define CHAIN_MAX SETTLE_CHAIN_MAX
#define CONN_OUT 65536

enum slot_state {
	SLOT_READY,   /* reply known */
	SLOT_WAIT,    /* logged; answered when its epoch has run */
	SLOT_DUP,     /* repeat of an id in flight: answered when it is */
	SLOT_BALANCE, /* BALANCE: read when it reaches the head */
	SLOT_PING,
};

static uint64_t
wall_ns(void)
{
	return dove_clock_ns(CLOCK_REALTIME);
}

static uint64_t
core_now_ns(void)
{
	return dove_clock_ns(CLOCK_MONOTONIC);
}

struct slot {
	uint8_t state;
	uint8_t result; /* enum settle_result */
	bool dup;
	uint64_t id;    /* 0: ERR prints "-" */
	uint64_t epoch;
	uint64_t t_in; /* ns: when the read that brought it returned */
	struct settle_transfer t; /* SLOT_DUP: what to ask again */
};

struct conn {
	struct server_ev ev;
	struct core *core;
	uint32_t index, gen;
	char *in;
	size_t in_len, in_cap;
	struct slot *slots;
	uint64_t slot_head; /* absolute number of the oldest slot */
	uint32_t slot_len, slot_cap;
	uint32_t pipeline; /* [ingress] pipeline when it connected */
	struct settle_transfer chain[CHAIN_MAX];
	uint64_t chain_slot[CHAIN_MAX];
	uint32_t chain_len;
	bool eof;        /* peer sent EOF: answer what is pending, then close */
	bool dead;       /* peer gone or a protocol limit: close now */
	bool paused;     /* not reading: a bound was reached */
	bool closed;     /* closed, freed after this round (see conn_close) */
	struct conn *next_closed;
	size_t out_len;
	char out[CONN_OUT];
};

/* A record staged or in flight, and whom to answer. */
struct rec {
	struct settle_op op;
	uint32_t conn, gen;
	uint64_t slot;
};

struct flight {
	uint64_t ticket;
	uint64_t first; /* absolute index into recs */
	uint32_t count;
};

struct core {
	struct server *srv;
	settle_seq *seq;
	uint32_t nshards;
	settle_ledger *ledger;     /* every shard's accounts, by index */
	uint32_t *shard_accounts; /* per shard, for stats */
	store_wal *wal;
	uint32_t max_epoch_bytes;
	struct server_ev wal_ev;
	struct server_ev lis[2]; /* UNIX, TCP */
	char unix_path[PATH_MAX];
	uint32_t max_line;

	struct conn **conns;
	uint32_t max_conns, nconns;
	struct conn *closed; /* closed this round, freed before the loop sleeps */
	uint32_t gen_next;

	struct rec *recs;      /* ring of CORE_RECS */
	struct store_wal_record *wal_recs; /* CORE_RECS: one round's append */
	uint64_t rec_head;     /* oldest in flight */
	uint64_t rec_staged;   /* first not yet appended */
	uint64_t rec_tail;     /* next free */
	size_t staged_bytes;
	struct flight *flights; /* ring of CORE_RECS */
	uint64_t flight_head, flight_tail;
	uint32_t dups_waiting;

	/* Snapshots: wanted -> connections pause until nothing is in flight
	 * -> fork, the child writes the copy-on-write image -> reaped. */
	bool snap_wanted;
	pid_t snap_child;
	uint64_t snap_child_epoch;
	uint64_t snap_last_epoch; /* newest snapshot on disk */
	uint64_t retired_base;    /* the WAL is retired up to this snapshot */
	uint64_t retire_applied;  /* the projection's epoch retire() last saw */
	uint64_t next_lsn;        /* after the last executed epoch */
	struct server_ev snap_timer;
	uint64_t snap_last_ns;
	uint64_t snaps_taken, snaps_failed;

	/* Counters for `stats` (main thread only). */
	uint64_t requests, answered[SETTLE_RESULT_COUNT], epochs_run,
		records_run, last_epoch;
	uint64_t epoch_size_hist[STORE_WAL_HIST]; /* records per epoch, log2 */
	/* Request latency inside doved, read -> reply handed to the kernel,
	 * ns, log2; clocked once per read and once per flush, not per
	 * request. */
	uint64_t t_read;
	uint64_t reply_hist[STORE_WAL_HIST];
	uint64_t reply_ns_max;

	/* Differentiated settlement (DESIGN.md): the server decides from
	 * the clock, the config and the detector, and logs PEAK / HOT /
	 * MERGE records; the ledger only follows the log. */
	int peak_override;       /* -1 auto (config), 0 off, 1 on */
	uint64_t peak_began_ns, peak_ended_ns; /* wall clock, last ones */
	uint64_t last_merge_ns;  /* monotonic: the last timed merge */
	uint64_t window_start_ns; /* monotonic: the detector's window */
	uint32_t hot_max;
	settle_sketch *sketch;
	bool auto_on;            /* [hot] auto_threshold > 0 */
	struct journal *journal;
	store_projection *proj; /* [store] backend = mariadb, else NULL */
	bool wal_full;           /* [wal] max_disk_mb reached: refuse work */
	uint64_t epoch_ns[4096]; /* each epoch's time (its log time), by epoch % 4096:
				    the projection's lag in seconds */
	/* ...and marks (epoch, time) for lags past 4096 epochs (1.5 s at
	 * 100k transfers/s): one a second, and the first epoch after a
	 * pause of 100 ms or more, so the epochs between two marks ran
	 * within a second of the first (see epoch_time). Under steady load
	 * they cover 68 minutes. */
	struct lag_mark {
		uint64_t epoch, ns;
	} lag_marks[4096];
	uint64_t nlag_marks;
	uint64_t merges, merged_postings;
	uint64_t realtime_postings, buffered_postings;
	uint64_t hot_updates; /* balance updates of hot accounts */
	uint64_t hot_credit_updates; /* ...made by credits (or merges) */
	uint64_t merges_by_reason[SETTLE_MERGE_REASONS];

	/* Execution scratch, sized once. legs[src * nshards + dst]: the
	 * credit legs shard src produced for shard dst in this epoch. */
	struct settle_op **shard_ops;
	uint32_t **shard_where;
	uint32_t *shard_n;
	uint8_t *results;
	struct settle_credit **legs;
	uint32_t *nlegs;
	uint8_t **op_results; /* per shard */
	struct sink_ctx *sinks;
	struct settle_post *posts;     /* CORE_RECS, by op where */
	struct settle_batch **batches; /* per shard, hot_max each */
	uint32_t *nbatches;

	/* Shard threads (when shards > 1). The main thread publishes a job
	 * (release on job), every worker runs phase 1 on its shard, meets
	 * the others at the barrier, runs phase 2, and counts itself done;
	 * the main thread waits for that count. Nothing is locked. */
	struct shard_worker *workers;
	_Atomic uint64_t job;
	_Atomic uint32_t phase1_left, phase2_left;
	_Atomic bool workers_stop;
	struct ring_event ev_go, ev_barrier, ev_done;
};

struct sink_ctx {
	struct core *k;
	uint32_t src;
};

struct shard_worker {
	struct core *k;
	uint32_t id;
	int cpu; /* -1: not pinned */
	pthread_t thread;
};

static struct core *the_core;

/* ---- helpers ------------------------------------------------------------ */

static struct slot *
slot_at(struct conn *c, uint64_t abs)
{
	DOVE_ASSERT(abs >= c->slot_head && abs < c->slot_head + c->slot_len);
	return &c->slots[abs % c->slot_cap];
}

static uint64_t
slot_push(struct conn *c)
{
	DOVE_ASSERT(c->slot_len < c->slot_cap);
	uint64_t abs = c->slot_head + c->slot_len++;
	struct slot *s = &c->slots[abs % c->slot_cap];
	memset(s, 0, sizeof(*s));
	s->t_in = c->core->t_read;
	return abs;
}

static void
slot_ready(struct slot *s, uint64_t id, enum settle_result r, uint64_t epoch,
	   bool dup)
{
	s->state = SLOT_READY;
	s->id = id;
	s->result = (uint8_t)r;
	s->epoch = epoch;
	s->dup = dup;
}

static struct conn *
conn_get(struct core *k, uint32_t index, uint32_t gen)
{
	struct conn *c = index < k->max_conns ? k->conns[index] : NULL;
	return c != NULL && c->gen == gen ? c : NULL;
}

/* The WAL payload of a staged operation: where it is, how long. */
static uint32_t
rec_payload(const struct settle_op *op, const void **data)
{
	if (op->type == SETTLE_REC_ACCOUNT) {
		*data = &op->u.account;
		return sizeof(op->u.account);
	}
	if (op->type != SETTLE_REC_TRANSFER) {
		*data = &op->u.ctl;
		return sizeof(op->u.ctl);
	}
	*data = &op->u.transfer;
	return sizeof(op->u.transfer);
}

/* Bytes a staged operation takes in an epoch (record header included). */
static uint32_t
rec_bytes(const struct settle_op *op)
{
	const void *data;
	return 8 + rec_payload(op, &data);
}

/* Room to stage n more records (and CHAIN_MAX more for a chain)? */
static bool
core_room(const struct core *k, uint32_t n)
{
	return k->rec_tail - k->rec_head + n <= CORE_RECS &&
	       k->staged_bytes + (size_t)n * 64 <= k->max_epoch_bytes / 2;
}

static void
stage(struct core *k, struct conn *c, uint64_t slot, const struct settle_op *op)
{
	DOVE_ASSERT(k->rec_tail - k->rec_head < CORE_RECS);
	struct rec *r = &k->recs[k->rec_tail++ % CORE_RECS];
	r->op = *op;
	r->conn = c ? c->index : UINT32_MAX; /* control: nobody to answer */
	r->gen = c ? c->gen : 0;
	r->slot = slot;
	k->staged_bytes += rec_bytes(op);
}

/* A control record: logged when the sequencer's state changes with it.
 * Returns its verdict's result (SETTLE_OK when logged). */
static enum settle_result
stage_control(struct core *k, uint16_t type, uint64_t account, uint32_t on,
	      uint32_t reason)
{
	if (k->rec_tail - k->rec_head >= CORE_RECS)
		return SETTLE_OVERLOADED; /* the next tick tries again */
	struct settle_op op = { .type = type };
	op.u.ctl = (struct settle_ctl_rec){ account, on, reason };
	struct settle_seq_answer a;
	settle_seq_control(k->seq, type, &op.u.ctl, &a);
	if (a.verdict != SETTLE_SEQ_LOG)
		return a.result;
	op.ix = a.debit_ix;
	stage(k, NULL, 0, &op);
	return SETTLE_OK;
}

/* Count postings for the hot-account detector (bounded memory). */
static void
detect(struct core *k, const struct settle_transfer *t)
{
	if (!k->auto_on)
		return;
	settle_sketch_add(k->sketch, t->debit);
	settle_sketch_add(k->sketch, t->credit);
}

/* ---- requests ----------------------------------------------------------- */

static void
answer_seq(struct slot *s, uint64_t id, const struct settle_seq_answer *a)
{
	switch (a->verdict) {
	case SETTLE_SEQ_REFUSED:
		slot_ready(s, id, a->result, 0, false);
		break;
	case SETTLE_SEQ_DONE:
		slot_ready(s, id, a->result, a->epoch, a->result == SETTLE_OK);
		break;
	case SETTLE_SEQ_PENDING:
		s->state = SLOT_DUP;
		s->id = id;
		break;
	case SETTLE_SEQ_LOG:
		s->state = SLOT_WAIT;
		s->id = id;
		break;
	}
}

/* Submit the connection's open chain (its last transfer just arrived). */
static void
submit_chain(struct core *k, struct conn *c)
{
	struct settle_seq_answer ans[CHAIN_MAX];
	uint32_t n = c->chain_len;
	if (k->wal_full) { /* the log may not grow: nothing is logged */
		for (uint32_t i = 0; i < n; i++)
			slot_ready(slot_at(c, c->chain_slot[i]), c->chain[i].id,
				   SETTLE_UNAVAILABLE, 0, false);
		c->chain_len = 0;
		return;
	}
	settle_seq_chain(k->seq, c->chain, n, ans);
	for (uint32_t i = 0; i < n; i++) {
		struct slot *s = slot_at(c, c->chain_slot[i]);
		answer_seq(s, c->chain[i].id, &ans[i]);
		if (ans[i].verdict == SETTLE_SEQ_PENDING) {
			s->t = c->chain[i];
			k->dups_waiting++;
		}
		if (ans[i].verdict == SETTLE_SEQ_LOG) {
			struct settle_op op = { .type = SETTLE_REC_TRANSFER };
			op.u.transfer = c->chain[i];
			op.ix = ans[i].debit_ix;
			op.credit_ix = ans[i].credit_ix;
			stage(k, c, c->chain_slot[i], &op);
			detect(k, &c->chain[i]);
		}
	}
	/* After the chain (never inside it): merges that came due. */
	for (uint32_t i = 0; i < n; i++)
		if (ans[i].merge_due)
			stage_control(k, SETTLE_REC_MERGE, c->chain[i].credit, 0,
				      SETTLE_MERGE_MAX);
	c->chain_len = 0;
}

/* A chain left open by a line that is not its next transfer: refuse it. */
static void
refuse_open_chain(struct conn *c)
{
	for (uint32_t i = 0; i < c->chain_len; i++)
		slot_ready(slot_at(c, c->chain_slot[i]), c->chain[i].id,
			   SETTLE_LINKED_OPEN, 0, false);
	c->chain_len = 0;
}

static void
handle_line(struct core *k, struct conn *c, const char *line, size_t len)
{
	struct proto_request r;
	proto_parse(line, len, &r);
	k->requests++;
	if (r.verb != PROTO_TRANSFER && c->chain_len > 0)
		refuse_open_chain(c);
	uint64_t abs = slot_push(c);
	struct slot *s = slot_at(c, abs);
	switch (r.verb) {
	case PROTO_BAD:
		slot_ready(s, 0, SETTLE_BAD_REQUEST, 0, false);
		break;
	case PROTO_PING:
		s->state = SLOT_PING;
		break;
	case PROTO_BALANCE:
		s->state = SLOT_BALANCE;
		s->id = r.id;
		break;
	case PROTO_ACCOUNT: {
		if (k->wal_full) {
			slot_ready(s, r.account.id, SETTLE_UNAVAILABLE, 0, false);
			break;
		}
		struct settle_seq_answer a;
		settle_seq_account(k->seq, &r.account, &a);
		answer_seq(s, r.account.id, &a);
		if (a.verdict == SETTLE_SEQ_LOG) {
			struct settle_op op = { .type = SETTLE_REC_ACCOUNT };
			op.u.account = r.account;
			op.ix = a.debit_ix;
			stage(k, c, abs, &op);
		}
		break;
	}
	case PROTO_TRANSFER:
		if (c->chain_len == CHAIN_MAX) {
			refuse_open_chain(c);
			slot_ready(s, r.id, SETTLE_LINKED_OPEN, 0, false);
			break;
		}
		s->state = SLOT_WAIT; /* decided when its chain is complete */
		s->id = r.id;
		c->chain[c->chain_len] = r.transfer;
		c->chain_slot[c->chain_len++] = abs;
		if (!(r.transfer.flags & SETTLE_TRANSFER_LINKED))
			submit_chain(k, c);
		break;
	}
}

static void conn_close(struct conn *c);
static void conn_want(struct conn *c);

/*
 * Room to read one more line? [ingress] pipeline bounds the requests
 * waiting for replies, except that an open chain may always grow to its
 * end: its replies come only once it is complete, so pausing inside it
 * would wait for ever (issue 13: a chain longer than the pipeline hung its
 * connection). slot_cap = pipeline + CHAIN_MAX holds that.
 */
static bool
conn_room(const struct conn *c)
{
	DOVE_ASSERT(c->slot_len <= c->slot_cap);
	if (c->chain_len > 0)
		return c->slot_len < c->slot_cap;
	return c->slot_len < c->pipeline;
}

/* Process complete lines in c's input while there is room. */
static void
conn_process(struct core *k, struct conn *c)
{
	size_t start = 0;
	char *nl;
	while (!c->dead &&
	       (nl = memchr(c->in + start, '\n', c->in_len - start)) != NULL) {
		/* Room for one more reply, and for a whole chain of records;
		 * and no snapshot waiting for the log to go quiet. */
		if (!conn_room(c) || !core_room(k, CHAIN_MAX) ||
		    k->snap_wanted) {
			c->paused = true;
			break;
		}
		size_t len = (size_t)(nl - (c->in + start));
		handle_line(k, c, c->in + start, len);
		start += len + 1;
	}
	memmove(c->in, c->in + start, c->in_len - start);
	c->in_len -= start;
}

/* ---- replies -------------------------------------------------------------- */

/* An account as of the last epoch (only between epochs: shards idle). */
static const struct settle_account *
ledger_find(struct core *k, uint64_t id)
{
	const struct settle_account *a =
		settle_ledger_at(k->ledger, settle_seq_account_ix(k->seq, id));
	/* Logged but not run yet: not there. */
	return a != NULL && a->id == id ? a : NULL;
}

static size_t
format_slot(struct core *k, const struct slot *s, char *buf)
{
	switch (s->state) {
	case SLOT_PING:
		return proto_pong(buf);
	case SLOT_BALANCE: {
		const struct settle_account *a = ledger_find(k, s->id);
		return a ? proto_bal(buf, a)
			 : proto_err(buf, s->id, SETTLE_NO_SUCH_ACCOUNT);
	}
	case SLOT_READY:
		k->answered[s->result]++;
		return s->result == SETTLE_OK
			       ? proto_ok(buf, s->id, s->epoch, s->dup)
			       : proto_err(buf, s->id,
					   (enum settle_result)s->result);
	default:
		DOVE_ASSERT(!"format of an unanswered slot");
		return 0;
	}
}

/* Move answered head slots into the output buffer and send. */
static void
conn_flush(struct conn *c)
{
	struct core *k = c->core;
	uint64_t now = 0;
	while (c->slot_len > 0) {
		struct slot *s = slot_at(c, c->slot_head);
		if (s->state == SLOT_WAIT || s->state == SLOT_DUP)
			break;
		if (c->out_len + PROTO_REPLY_MAX > sizeof(c->out))
			break;
		if (now == 0)
			now = core_now_ns();
		uint64_t dt = now > s->t_in ? now - s->t_in : 0;
		k->reply_hist[dt ? 63 - __builtin_clzll(dt) : 0]++;
		if (dt > k->reply_ns_max)
			k->reply_ns_max = dt;
		c->out_len += format_slot(k, s, c->out + c->out_len);
		c->slot_head++;
		c->slot_len--;
	}
	size_t off = 0;
	while (off < c->out_len) {
		ssize_t n = send(c->ev.fd, c->out + off, c->out_len - off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n <= 0) {
			/* Gone: nothing to answer any more. Its logged
			 * requests still run; their replies are dropped. */
			c->dead = true;
			c->out_len = 0;
			off = 0;
			break;
		}
		off += (size_t)n;
	}
	memmove(c->out, c->out + off, c->out_len - off);
	c->out_len -= off;
	/* Room again: resume (conn_process pauses anew if it must). */
	if (c->paused && conn_room(c) && core_room(k, CHAIN_MAX) &&
	    !k->snap_wanted) {
		c->paused = false;
		conn_process(k, c);
	}
	conn_want(c);
}

/* ---- connections ----------------------------------------------------------- */

static void
conn_want(struct conn *c)
{
	if (c->dead || (c->eof && c->slot_len == 0 && c->out_len == 0)) {
		conn_close(c);
		return;
	}
	uint32_t ev = 0;
	if (!c->paused && !c->eof)
		ev |= EPOLLIN;
	if (c->out_len > 0)
		ev |= EPOLLOUT;
	server_loop_mod(&c->core->srv->loop, &c->ev, ev);
}

static void
conn_read(struct conn *c)
{
	struct core *k = c->core;
	for (;;) {
		if (c->in_len == c->in_cap) {
			if (memchr(c->in, '\n', c->in_len) == NULL) {
				DOVE_WARN("ingress: line over max_line (%zu "
					  "bytes); closing that connection",
					  c->in_cap - 1);
				c->dead = true;
				return;
			}
			return; /* paused with full lines waiting */
		}
		ssize_t n = recv(c->ev.fd, c->in + c->in_len, c->in_cap - c->in_len,
				 MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n < 0) {
			c->dead = true; /* reset: nobody to answer */
			return;
		}
		if (n == 0) {
			/* EOF (maybe mid-line, maybe mid-chain): everything
			 * complete is still answered; the partial line is
			 * dropped and an open chain is refused, never
			 * applied. */
			c->eof = true;
			refuse_open_chain(c);
			return;
		}
		c->in_len += (size_t)n;
		k->t_read = core_now_ns();
		conn_process(k, c);
		if (c->paused)
			return;
	}
}

static void
on_conn(struct server_ev *ev, uint32_t events)
{
	struct conn *c = (struct conn *)ev;
	/* Closed earlier in this round by another handler (a flush after an
	 * epoch ran): its events in the same epoll batch are stale. */
	if (c->closed)
		return;
	if ((events & EPOLLIN) && !c->eof && !c->dead)
		conn_read(c);
	/* Hung up both ways, or an error: replies cannot arrive. (A
	 * half-close is EOF on read, handled above.) */
	if ((events & (EPOLLERR | EPOLLHUP)) && !(events & EPOLLIN))
		c->dead = true;
	conn_flush(c); /* may close c */
}

static void
conn_close(struct conn *c)
{
	struct core *k = c->core;
	/* Slots still waiting on the log belong to nobody now; their
	 * records run anyway and the results are dropped by generation. */
	for (uint64_t a = c->slot_head; a < c->slot_head + c->slot_len; a++)
		if (slot_at(c, a)->state == SLOT_DUP)
			k->dups_waiting--;
	DOVE_ASSERT(!c->closed);
	server_loop_del(&k->srv->loop, &c->ev);
	close(c->ev.fd);
	k->conns[c->index] = NULL;
	k->nconns--;
	/* Not freed yet: a handler may close connections whose events come
	 * later in the same epoll_wait batch (on_wal flushes every
	 * connection), and those events still point here. They see
	 * `closed` and return; the memory goes before the loop sleeps. */
	c->closed = true;
	c->next_closed = k->closed;
	k->closed = c;
}

/* Free what conn_close retired this round. Between rounds only. */
static void
conn_free_closed(struct core *k)
{
	while (k->closed != NULL) {
		struct conn *c = k->closed;
		k->closed = c->next_closed;
		free(c->in);
		free(c->slots);
		free(c);
	}
}

static void
on_accept(struct server_ev *ev, uint32_t events)
{
	struct core *k = the_core;
	(void)events;
	for (;;) {
		int fd = accept4(ev->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN)
				DOVE_WARN("ingress accept: %s", dove_strerror(-errno));
			return;
		}
		uint32_t index = k->max_conns;
		if (k->nconns < k->max_conns)
			for (index = 0; k->conns[index] != NULL; index++)
				;
		if (index == k->max_conns) {
			close(fd); /* max_connections: refused at once */
			continue;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct conn *c = calloc(1, sizeof(*c));
		uint32_t pipeline;
		urcu_memb_read_lock();
		pipeline = (uint32_t)server_config_get()->ingress_pipeline;
		c->in_cap = (size_t)server_config_get()->ingress_max_line + 1;
		urcu_memb_read_unlock();
		c->in = malloc(c->in_cap);
		c->slots = calloc(pipeline + CHAIN_MAX, sizeof(struct slot));
		DOVE_ASSERT(c->in != NULL && c->slots != NULL);
		c->pipeline = pipeline;
		c->slot_cap = pipeline + CHAIN_MAX; /* see conn_room */
		c->ev.fd = fd;
		c->ev.fn = on_conn;
		c->core = k;
		c->index = index;
		c->gen = ++k->gen_next;
		k->conns[index] = c;
		k->nconns++;
		int rc = server_loop_add(&k->srv->loop, &c->ev, EPOLLIN);
		DOVE_ASSERT(rc == 0);
	}
}

/* ---- epochs ------------------------------------------------------------------ */

static void
route_credit(void *arg, const struct settle_credit *cr)
{
	struct sink_ctx *sc = arg;
	struct core *k = sc->k;
	uint32_t d = settle_shard_of(cr->account, k->nshards);
	uint32_t li = sc->src * k->nshards + d;
	/* An epoch has at most CORE_RECS records, each one leg at most. */
	DOVE_ASSERT(k->nlegs[li] < CORE_RECS);
	k->legs[li][k->nlegs[li]++] = *cr;
}

static void
collect_batch(void *arg, const struct settle_batch *b)
{
	struct sink_ctx *sc = arg;
	struct core *k = sc->k;
	/* A shard merges each open buffer at most once per epoch (buffers
	 * fill only at its end), and it has at most hot_max of them. */
	DOVE_ASSERT(k->nbatches[sc->src] < k->hot_max);
	k->batches[sc->src][k->nbatches[sc->src]++] = *b;
}

static struct settle_shard_out
shard_out(struct core *k, uint32_t s)
{
	return (struct settle_shard_out){ route_credit, collect_batch,
					  &k->sinks[s], k->posts };
}

/* Phase 1 on shard s: its debits, in LSN order; legs out. Touches only
 * shard s's accounts, its scratch and its own rows of legs and results. */
static void
shard_phase1(struct core *k, uint32_t s)
{
	struct settle_shard_out out = shard_out(k, s);
	uint8_t *res = k->op_results[s];
	settle_ledger_debit_phase(k->ledger, s, k->shard_ops[s], k->shard_n[s],
				  res, &out);
	for (uint32_t j = 0; j < k->shard_n[s]; j++)
		if (s == 0 || settle_op_shard(&k->shard_ops[s][j], k->nshards) !=
				      SETTLE_ALL_SHARDS)
			k->results[k->shard_where[s][j]] = res[j];
}

/* Phase 2 on shard d: every leg for it, from every shard (the barrier),
 * in LSN order. */
static void
shard_phase2(struct core *k, uint32_t d)
{
	const struct settle_credit *lists[64];
	uint32_t counts[64];
	for (uint32_t src = 0; src < k->nshards; src++) {
		uint32_t li = src * k->nshards + d;
		lists[src] = k->legs[li];
		counts[src] = k->nlegs[li];
	}
	struct settle_shard_out out = shard_out(k, d);
	settle_ledger_apply_credits(k->ledger, d, lists, counts, k->nshards,
				    &out);
	DOVE_ASSERT_DEBUG(settle_ledger_valid(k->ledger, settle_seq_span(k->seq),
					      (int)d, k->nshards));
}

struct wait_job {
	struct core *k;
	uint64_t seen;
};

static bool
job_ready(void *arg)
{
	struct wait_job *w = arg;
	/* Acquire: the job's ops and counters, written before the release
	 * store of job, are visible once we see it. */
	return atomic_load_explicit(&w->k->job, memory_order_acquire) > w->seen ||
	       atomic_load_explicit(&w->k->workers_stop, memory_order_acquire);
}

static bool
barrier_ready(void *arg)
{
	struct core *k = arg;
	/* Acquire: every shard's phase-1 legs are visible once all have
	 * counted themselves out (their decrements are acq_rel). */
	return atomic_load_explicit(&k->phase1_left, memory_order_acquire) == 0;
}

static bool
done_ready(void *arg)
{
	struct core *k = arg;
	return atomic_load_explicit(&k->phase2_left, memory_order_acquire) == 0;
}

static void *
shard_main(void *arg)
{
	struct shard_worker *w = arg;
	struct core *k = w->k;
	static const char *const names[] = { "shard0", "shard1", "shard2",
					     "shard3", "shard4", "shard5",
					     "shard6", "shard7" };
	dove_log_thread_name(w->id < 8 ? names[w->id] : "shard");
	if (w->cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(w->cpu, &set);
		int rc = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
		if (rc != 0)
			DOVE_WARN("cannot pin shard %u to cpu %d: %s", w->id, w->cpu,
				  dove_strerror(-rc));
	}
	const struct ring_wait wait = RING_WAIT_DEFAULT;
	struct wait_job wj = { k, 0 };
	for (;;) {
		ring_event_wait(&k->ev_go, job_ready, &wj, &wait, -1);
		if (atomic_load_explicit(&k->workers_stop, memory_order_acquire))
			break;
		wj.seen = atomic_load_explicit(&k->job, memory_order_acquire);
		shard_phase1(k, w->id);
		/* acq_rel: our legs are published to whoever sees the count
		 * reach zero, and we see theirs. */
		if (atomic_fetch_sub_explicit(&k->phase1_left, 1,
					      memory_order_acq_rel) == 1)
			ring_event_notify(&k->ev_barrier);
		ring_event_wait(&k->ev_barrier, barrier_ready, k, &wait, -1);
		shard_phase2(k, w->id);
		if (atomic_fetch_sub_explicit(&k->phase2_left, 1,
					      memory_order_acq_rel) == 1)
			ring_event_notify(&k->ev_done);
	}
	return NULL;
}

/* Run the records [first, first + count) as epoch `epoch`. */
static void
dispatch(struct core *k, uint32_t s, uint32_t i, const struct settle_op *op)
{
	k->shard_where[s][k->shard_n[s]] = i;
	k->shard_ops[s][k->shard_n[s]++] = *op;
}

/* The journal and the counters of what the epoch did (main thread). */
static void
account_epoch(struct core *k, uint64_t first, uint32_t count, uint64_t epoch,
	      uint64_t time_ns)
{
	for (uint32_t i = 0; i < count; i++) {
		struct rec *r = &k->recs[(first + i) % CORE_RECS];
		if (r->op.type != SETTLE_REC_TRANSFER)
			continue;
		enum settle_result res = (enum settle_result)k->results[i];
		journal_transfer(k->journal, &r->op.u.transfer, res, epoch,
				 r->op.lsn, time_ns, &k->posts[i]);
		if (res != SETTLE_OK)
			continue;
		const struct settle_post *p = &k->posts[i];
		k->realtime_postings++; /* the debit */
		k->hot_updates += p->debit_hot;
		if (p->credit_buffered) {
			k->buffered_postings++;
		} else {
			k->realtime_postings++;
			k->hot_updates += p->credit_hot;
			k->hot_credit_updates += p->credit_hot;
		}
	}
	for (uint32_t s = 0; s < k->nshards; s++) {
		for (uint32_t b = 0; b < k->nbatches[s]; b++) {
			const struct settle_batch *x = &k->batches[s][b];
			journal_batch(k->journal, x, epoch, time_ns);
			k->merges++;
			/* one balance update per batch */
			k->hot_updates++;
			k->hot_credit_updates++;
			k->merged_postings += x->count;
			k->merges_by_reason[x->reason]++;
		}
	}
}

static void
run_epoch(struct core *k, uint64_t first, uint32_t count, uint64_t epoch,
	  uint64_t first_lsn, uint64_t time_ns)
{
	memset(k->shard_n, 0, k->nshards * sizeof(uint32_t));
	memset(k->nlegs, 0, (size_t)k->nshards * k->nshards * sizeof(uint32_t));
	memset(k->nbatches, 0, k->nshards * sizeof(uint32_t));
	for (uint32_t i = 0; i < count; i++) {
		struct rec *r = &k->recs[(first + i) % CORE_RECS];
		r->op.lsn = first_lsn + i;
		r->op.where = i;
		uint32_t s = settle_op_shard(&r->op, k->nshards);
		if (s == SETTLE_ALL_SHARDS) {
			for (s = 0; s < k->nshards; s++)
				dispatch(k, s, i, &r->op);
			continue;
		}
		if (r->op.type == SETTLE_REC_ACCOUNT)
			k->shard_accounts[s]++;
		dispatch(k, s, i, &r->op);
	}
	if (k->workers == NULL) {
		/* One shard, or no threads: the same two phases, in line. */
		for (uint32_t s = 0; s < k->nshards; s++)
			shard_phase1(k, s);
		for (uint32_t s = 0; s < k->nshards; s++)
			shard_phase2(k, s);
	} else {
		atomic_store_explicit(&k->phase1_left, k->nshards,
				      memory_order_relaxed);
		atomic_store_explicit(&k->phase2_left, k->nshards,
				      memory_order_relaxed);
		/* Release: the ops and counters above before the job. */
		atomic_fetch_add_explicit(&k->job, 1, memory_order_release);
		ring_event_notify(&k->ev_go);
		const struct ring_wait wait = RING_WAIT_DEFAULT;
		ring_event_wait(&k->ev_done, done_ready, k, &wait, -1);
	}
	account_epoch(k, first, count, epoch, time_ns);
	k->epoch_ns[epoch % 4096] = time_ns;
	if (k->nlag_marks == 0 ||
	    time_ns - k->lag_marks[(k->nlag_marks - 1) % 4096].ns >= 1000000000u ||
	    time_ns - k->epoch_ns[(epoch - 1) % 4096] >= 100000000u)
		k->lag_marks[k->nlag_marks++ % 4096] =
			(struct lag_mark){ epoch, time_ns };
	if (k->proj)
		store_projection_advance(k->proj, epoch);
	k->epochs_run++;
	k->records_run += count;
	k->last_epoch = epoch;
	k->next_lsn = first_lsn + count;
	k->epoch_size_hist[count ? 63 - __builtin_clzll(count) : 0]++;
	for (uint32_t i = 0; i < count; i++) {
		struct rec *r = &k->recs[(first + i) % CORE_RECS];
		enum settle_result res = (enum settle_result)k->results[i];
		uint64_t id;
		if (r->op.type == SETTLE_REC_TRANSFER) {
			id = r->op.u.transfer.id;
			settle_seq_resolve(k->seq, id, res, epoch);
		} else if (r->op.type == SETTLE_REC_ACCOUNT) {
			id = r->op.u.account.id;
		} else {
			continue; /* control: nobody asked */
		}
		struct conn *c = conn_get(k, r->conn, r->gen);
		if (c != NULL && r->slot >= c->slot_head)
			slot_ready(slot_at(c, r->slot), id, res, epoch, false);
	}
}

/* The WAL refused an epoch: its requests are answered unavailable and
 * forgotten, so their ids are free again. */
static void
fail_records(struct core *k, uint64_t first, uint32_t count)
{
	for (uint32_t i = 0; i < count; i++) {
		struct rec *r = &k->recs[(first + i) % CORE_RECS];
		uint64_t id;
		if (r->op.type == SETTLE_REC_TRANSFER) {
			id = r->op.u.transfer.id;
			settle_seq_unlog_transfer(k->seq, id);
		} else if (r->op.type == SETTLE_REC_ACCOUNT) {
			id = r->op.u.account.id;
			settle_seq_unlog_account(k->seq, id);
		} else {
			settle_seq_unlog_control(k->seq, r->op.type, &r->op.u.ctl);
			continue;
		}
		struct conn *c = conn_get(k, r->conn, r->gen);
		if (c != NULL && r->slot >= c->slot_head)
			slot_ready(slot_at(c, r->slot), id, SETTLE_UNAVAILABLE,
				   0, false);
	}
}

/* Dups waiting for an original: ask again now that epochs have run. */
static void
recheck_dups(struct core *k)
{
	for (uint32_t i = 0; i < k->max_conns && k->dups_waiting > 0; i++) {
		struct conn *c = k->conns[i];
		if (c == NULL)
			continue;
		for (uint64_t a = c->slot_head; a < c->slot_head + c->slot_len;
		     a++) {
			struct slot *s = slot_at(c, a);
			if (s->state != SLOT_DUP)
				continue;
			struct settle_seq_answer ans;
			settle_seq_chain(k->seq, &s->t, 1, &ans);
			if (ans.verdict == SETTLE_SEQ_PENDING)
				continue;
			k->dups_waiting--;
			if (ans.verdict == SETTLE_SEQ_DONE)
				slot_ready(s, s->id, ans.result, ans.epoch,
					   ans.result == SETTLE_OK);
			else /* forgotten (its epoch failed): unavailable */
				slot_ready(s, s->id, SETTLE_UNAVAILABLE, 0, false);
		}
	}
}

static void
flush_all(struct core *k)
{
	for (uint32_t i = 0; i < k->max_conns; i++)
		if (k->conns[i] != NULL)
			conn_flush(k->conns[i]);
}

/* ---- snapshots ----------------------------------------------------------------- */

/* Write the state as of k->last_epoch. Used by the forked child and, at
 * a clean stop, in-process. Returns 0 or -errno. */
static int
snapshot_write(struct core *k, const char *dir)
{
	return store_snap_write_state(dir, k->last_epoch, k->next_lsn, k->seq,
				      k->ledger);
}

/* Take the wanted snapshot if the log is quiet: nothing staged or in
 * flight, so the sequencer's window is exactly the state after the last
 * epoch. Forks: the child writes the copy-on-write image, the parent goes
 * on at once. */
static void
maybe_snapshot(struct core *k)
{
	if (!k->snap_wanted || k->snap_child != 0 || k->rec_head != k->rec_tail)
		return;
	k->snap_wanted = false;
	if (k->last_epoch == 0 || k->last_epoch == k->snap_last_epoch) {
		flush_all(k); /* nothing new to save; resume readers */
		return;
	}
	char dir[PATH_MAX];
	urcu_memb_read_lock();
	snprintf(dir, sizeof(dir), "%s", server_config_get()->snapshot_dir);
	urcu_memb_read_unlock();
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid == 0) {
		/* The child: only this thread exists here; it reads its
		 * frozen copy of the ledger and writes the file. First it
		 * lets go of every descriptor it inherited but the log: it
		 * must not keep the pid file's lock, the listening sockets or
		 * clients alive if doved dies and restarts meanwhile. And if
		 * doved dies, so does the child (a restart takes over). */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1); /* it died before the line above */
		int logfd = dove_log_fileno();
		if (logfd >= 3) {
			if (logfd > 3)
				close_range(3, (unsigned)logfd - 1, 0);
			close_range((unsigned)logfd + 1, ~0u, 0);
		} else {
			close_range(3, ~0u, 0);
		}
		dove_log_thread_name("snapshot");
		int rc = snapshot_write(k, dir);
		if (rc != 0)
			DOVE_ERROR("snapshot of epoch %llu: %s",
				   (unsigned long long)k->last_epoch,
				   dove_strerror(rc));
		_exit(rc == 0 ? 0 : 1);
	}
	if (pid < 0) {
		DOVE_ERROR("snapshot: fork: %s", dove_strerror(-errno));
		k->snaps_failed++;
	} else {
		k->snap_child = pid;
		k->snap_child_epoch = k->last_epoch;
		DOVE_INFO("snapshot of epoch %llu started (pid %d)",
			  (unsigned long long)k->last_epoch, (int)pid);
	}
	flush_all(k); /* resume readers */
}

void
server_core_request_snapshot(void)
{
	struct core *k = the_core;
	/* One at a time: while a child writes, a second request would only
	 * hold every connection paused until it finished. */
	if (k->snap_child != 0)
		return;
	k->snap_wanted = true;
	maybe_snapshot(k);
}

static void check_wal_disk(struct core *k);

/* Where the log may be cut: behind the oldest snapshot kept, or behind
 * the one the projection may still rebuild from. */
static uint64_t
retention_base(struct core *k, const char *snap_dir, uint64_t proj_from)
{
	/* Behind the oldest snapshot kept, not the newest: each of the
	 * [snapshot] keep snapshots is a fallback only while the log after
	 * it exists (issue 13: with keep = 2 one damaged newest snapshot
	 * refused the start, its epochs nowhere else). */
	uint64_t base = store_snap_oldest(snap_dir);
	if (base == 0)
		base = k->snap_last_epoch;
	return proj_from < base ? proj_from : base;
}

/* Keep `keep` snapshots and retire the WAL behind the base. */
static void
retire(struct core *k, bool prune)
{
	uint32_t keep;
	char dir[PATH_MAX];
	urcu_memb_read_lock();
	keep = (uint32_t)server_config_get()->snapshot_keep;
	snprintf(dir, sizeof(dir), "%s", server_config_get()->snapshot_dir);
	urcu_memb_read_unlock();
	/* What the projection may still rebuild from (UINT64_MAX: none). */
	uint64_t proj_from = k->proj ? store_projection_keep_from(k->proj)
				     : UINT64_MAX;
	if (prune)
		store_snap_prune(dir, keep, proj_from);
	uint64_t base = retention_base(k, dir, proj_from);
	if (!prune && base <= k->retired_base)
		return;
	int rc = store_wal_retire(k->wal, base + 1);
	if (base > k->retired_base)
		k->retired_base = base;
	DOVE_INFO("WAL retired up to snapshot %llu: %d segment(s) deleted",
		  (unsigned long long)base, rc < 0 ? 0 : rc);
	check_wal_disk(k);
}

/* After a snapshot is on disk. */
static void
snapshot_done(struct core *k, uint64_t epoch)
{
	k->snap_last_epoch = epoch;
	k->snaps_taken++;
	DOVE_INFO("snapshot of epoch %llu written", (unsigned long long)epoch);
	retire(k, true);
}

void
server_core_child_exited(pid_t pid, int status)
{
	struct core *k = the_core;
	if (k == NULL || pid != k->snap_child)
		return;
	k->snap_child = 0;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		snapshot_done(k, k->snap_child_epoch);
	} else {
		k->snaps_failed++;
		DOVE_ERROR("snapshot of epoch %llu failed (status %#x); the "
			   "WAL is kept",
			   (unsigned long long)k->snap_child_epoch, status);
	}
}

/* ---- peak hours and the hot set ---------------------------------------------- */

/* What the tick needs from the config, copied under the read lock. */
struct hot_cfg {
	int64_t mode, threshold, window_s, merge_ms, merge_max;
	char windows[256];
	char accounts[8192];
};

static void
hot_cfg_get(struct hot_cfg *h)
{
	urcu_memb_read_lock();
	const server_config *c = server_config_get();
	h->mode = c->peak_mode;
	h->threshold = c->hot_auto_threshold;
	h->window_s = c->hot_auto_window_s;
	h->merge_ms = c->hot_merge_ms;
	h->merge_max = c->hot_merge_max;
	snprintf(h->windows, sizeof(h->windows), "%s", c->peak_windows);
	snprintf(h->accounts, sizeof(h->accounts), "%s", c->hot_accounts);
	urcu_memb_read_unlock();
}

static bool
peak_wanted(const struct core *k, const struct hot_cfg *h)
{
	if (k->peak_override >= 0)
		return k->peak_override == 1;
	if (h->mode != 0)
		return h->mode == 1;
	struct server_peak_window w[SERVER_PEAK_WINDOWS_MAX];
	int n = server_peak_windows_parse(h->windows, w);
	time_t t = time(NULL);
	struct tm tm;
	localtime_r(&t, &tm);
	return server_peak_windows_contain(w, n < 0 ? 0 : n,
					   tm.tm_hour * 60 + tm.tm_min);
}

static void
set_peak(struct core *k, bool on)
{
	if (stage_control(k, SETTLE_REC_PEAK, 0, on, 0) != SETTLE_OK)
		return;
	if (on)
		k->peak_began_ns = wall_ns();
	else
		k->peak_ended_ns = wall_ns();
	DOVE_INFO("peak %s", on ? "begins" : "ends: every hot buffer merges");
}

/* The next id of a [hot] accounts list (validated by the config). */
static bool
next_id(const char **p, uint64_t *id)
{
	if (**p == '\0')
		return false;
	char *end;
	*id = strtoull(*p, &end, 10);
	*p = *end == ',' ? end + 1 : end;
	return true;
}

static bool
id_listed(const char *list, uint64_t id)
{
	uint64_t x;
	for (const char *p = list; next_id(&p, &x);)
		if (x == id)
			return true;
	return false;
}

struct hot_walk {
	struct core *k;
	const struct hot_cfg *h;
	uint64_t ids[256];
	uint32_t reasons[256];
	uint32_t n;
};

static void
collect_hot(void *arg, uint64_t id, uint32_t reason)
{
	struct hot_walk *w = arg;
	if (w->n < 256 && (reason == SETTLE_HOT_CONFIG || reason == SETTLE_HOT_AUTO)) {
		w->ids[w->n] = id;
		w->reasons[w->n++] = reason;
	}
}

/* [hot] accounts: listed ones that exist become hot; config-hot ones no
 * longer listed stop. Automatic detection: heavy accounts become hot at
 * once; at the end of each window, auto-hot ones below half the level
 * stop. Every change is a HOT record. */
static void
hot_tick(struct core *k, const struct hot_cfg *h, uint64_t now)
{
	uint64_t id;
	for (const char *p = h->accounts; next_id(&p, &id);)
		if (settle_seq_account_flags(k->seq, id, NULL) &&
		    !settle_seq_hot(k->seq, id, NULL))
			stage_control(k, SETTLE_REC_HOT, id, 1, SETTLE_HOT_CONFIG);
	struct hot_walk w = { .k = k, .h = h };
	/* At most 256 per tick: the rest go at the next ones. */
	settle_seq_foreach_hot(k->seq, collect_hot, &w);
	for (uint32_t i = 0; i < w.n; i++)
		if (w.reasons[i] == SETTLE_HOT_CONFIG && !id_listed(h->accounts, w.ids[i]))
			stage_control(k, SETTLE_REC_HOT, w.ids[i], 0,
				      SETTLE_HOT_CONFIG);

	bool was_on = k->auto_on;
	k->auto_on = h->threshold > 0;
	uint64_t level64 = (uint64_t)h->threshold * (uint64_t)h->window_s;
	uint32_t level = level64 > UINT32_MAX ? UINT32_MAX : (uint32_t)level64;
	if (!k->auto_on) {
		for (uint32_t i = 0; i < w.n; i++)
			if (w.reasons[i] == SETTLE_HOT_AUTO)
				stage_control(k, SETTLE_REC_HOT, w.ids[i], 0,
					      SETTLE_HOT_AUTO);
		return;
	}
	if (!was_on) {
		settle_sketch_reset(k->sketch, level);
		k->window_start_ns = now;
		return;
	}
	uint64_t heavy[256];
	uint32_t nh = settle_sketch_heavy(k->sketch, heavy, 256);
	for (uint32_t i = 0; i < nh; i++)
		if (!settle_seq_hot(k->seq, heavy[i], NULL))
			stage_control(k, SETTLE_REC_HOT, heavy[i], 1,
				      SETTLE_HOT_AUTO);
	if (now - k->window_start_ns < (uint64_t)h->window_s * 1000000000u)
		return;
	for (uint32_t i = 0; i < w.n; i++)
		if (w.reasons[i] == SETTLE_HOT_AUTO &&
		    settle_sketch_estimate(k->sketch, w.ids[i]) < level / 2)
			stage_control(k, SETTLE_REC_HOT, w.ids[i], 0,
				      SETTLE_HOT_AUTO);
	settle_sketch_reset(k->sketch, level);
	k->window_start_ns = now;
}

/* [wal] max_disk_mb: refuse new work rather than fill the disk when
 * nothing can be retired (a lagging projection, snapshots failing). */
static void
check_wal_disk(struct core *k)
{
	urcu_memb_read_lock();
	uint64_t max = (uint64_t)server_config_get()->wal_max_disk_mb;
	uint64_t seg = (uint64_t)server_config_get()->wal_segment_mb;
	urcu_memb_read_unlock();
	struct store_wal_stats ws;
	store_wal_stats_get(k->wal, &ws);
	uint64_t used = (uint64_t)ws.segments * seg;
	bool full = max > 0 && used >= max;
	if (full != k->wal_full) {
		/* Say what holds the log: the projection's lag, or no
		 * recent snapshot. */
		char why[384];
		if (k->proj) {
			snprintf(why, sizeof(why),
				 "the log is kept from a snapshot at or below "
				 "what the MariaDB projection has written; "
				 "newest snapshot: epoch %" PRIu64 ", the projection "
				 "has written up to epoch %" PRIu64 " of %" PRIu64
				 " (`dovectl store`, `dovectl snapshot`)",
				 k->snap_last_epoch,
				 store_projection_applied(k->proj), k->last_epoch);
		} else {
			snprintf(why, sizeof(why),
				 "no snapshot since epoch %" PRIu64 " of %" PRIu64
				 " (`dovectl snapshot`, [snapshot] every_s)",
				 k->snap_last_epoch, k->last_epoch);
		}
		if (full)
			DOVE_ERROR("the WAL holds %" PRIu64 " MiB >= [wal] "
				   "max_disk_mb %" PRIu64 ": refusing new work "
				   "(unavailable) until segments can be retired: "
				   "%s",
				   used, max, why);
		else
			DOVE_INFO("the WAL holds %" PRIu64 " MiB again: accepting "
				  "work", used);
	}
	k->wal_full = full;
}

static void
core_tick(struct core *k, uint64_t now)
{
	struct hot_cfg h;
	/* A projection that caught up frees the log behind the snapshots
	 * it has passed, without waiting for the next snapshot. */
	if (k->proj && k->snap_last_epoch > k->retired_base) {
		uint64_t applied = store_projection_applied(k->proj);
		if (applied != k->retire_applied) {
			k->retire_applied = applied;
			retire(k, false);
		}
	}
	check_wal_disk(k);
	hot_cfg_get(&h);
	settle_seq_set_merge_max(k->seq, (uint64_t)h.merge_max);
	bool want = peak_wanted(k, &h);
	if (want != settle_seq_peak(k->seq))
		set_peak(k, want);
	hot_tick(k, &h, now);
	if (settle_seq_peak(k->seq) &&
	    now - k->last_merge_ns >= (uint64_t)h.merge_ms * 1000000u) {
		if (settle_seq_buffered_since_merge(k->seq) > 0)
			stage_control(k, SETTLE_REC_MERGE, 0, 0, SETTLE_MERGE_TIMER);
		k->last_merge_ns = now;
	}
}

static void
on_snap_timer(struct server_ev *ev, uint32_t events)
{
	struct core *k = the_core;
	uint64_t ticks;
	(void)events;
	ssize_t rd = read(ev->fd, &ticks, sizeof(ticks));
	(void)rd;
	urcu_memb_read_lock();
	int64_t every = server_config_get()->snapshot_every_s;
	urcu_memb_read_unlock();
	uint64_t now = core_now_ns();
	core_tick(k, now);
	if (every > 0 && now - k->snap_last_ns >= (uint64_t)every * 1000000000u &&
	    k->last_epoch != k->snap_last_epoch) {
		k->snap_last_ns = now;
		server_core_request_snapshot();
	}
}

/* Run or fail every finished flight, oldest first. */
static void
drain_flights(struct core *k)
{
	bool ran = false;
	while (k->flight_head < k->flight_tail) {
		struct flight *f = &k->flights[k->flight_head % CORE_RECS];
		if (f->ticket != 0) { /* 0: an append that failed, answered */
			uint64_t epoch, first_lsn;
			int rc = store_wal_poll(k->wal, f->ticket, &epoch,
						&first_lsn);
			if (rc == -EAGAIN)
				break;
			if (rc == 0)
				run_epoch(k, f->first, f->count, epoch,
					  first_lsn, wall_ns());
			else
				fail_records(k, f->first, f->count);
		}
		DOVE_ASSERT(f->first == k->rec_head);
		k->rec_head += f->count;
		k->flight_head++;
		ran = true;
	}
	if (ran) {
		if (k->dups_waiting > 0)
			recheck_dups(k);
		flush_all(k);
		maybe_snapshot(k);
	}
}

static void
on_wal(struct server_ev *ev, uint32_t events)
{
	uint64_t v;
	(void)events;
	ssize_t rd = read(ev->fd, &v, sizeof(v)); /* clear the eventfd */
	(void)rd;
	drain_flights(the_core);
}

/* Before the loop sleeps: append what this round staged, in one call. */
static void
core_before_wait(void *arg)
{
	struct core *k = arg;
	uint32_t n = (uint32_t)(k->rec_tail - k->rec_staged);
	if (n == 0) {
		conn_free_closed(k);
		return;
	}
	/* n <= CORE_RECS: the ring bounds what can be staged. */
	struct store_wal_record *wr = k->wal_recs;
	for (uint32_t i = 0; i < n; i++) {
		struct rec *r = &k->recs[(k->rec_staged + i) % CORE_RECS];
		wr[i].type = r->op.type;
		wr[i].len = rec_payload(&r->op, &wr[i].data);
	}
	uint64_t ticket;
	int rc = store_wal_append(k->wal, wr, n, &ticket);
	struct flight *last = k->flight_tail > k->flight_head
				      ? &k->flights[(k->flight_tail - 1) %
						    CORE_RECS]
				      : NULL;
	if (rc != 0) {
		DOVE_ERROR("wal append: %s; answering unavailable",
			   dove_strerror(rc));
		fail_records(k, k->rec_staged, n);
		ticket = 0; /* a flight that is already answered */
	}
	if (rc == 0 && last != NULL && last->ticket == ticket) {
		last->count += n; /* same open epoch as the previous round */
	} else {
		struct flight *f = &k->flights[k->flight_tail++ % CORE_RECS];
		f->ticket = ticket;
		f->first = k->rec_staged;
		f->count = n;
	}
	k->rec_staged += n;
	k->staged_bytes = 0;
	if (rc != 0)
		drain_flights(k);
	/* Replies that need no log (refusals, dups, PING) go out now. */
	flush_all(k);
	conn_free_closed(k);
}

/* ---- admin views ------------------------------------------------------------ */

void
server_core_account_json(uint64_t id, struct json_buf *j)
{
	struct core *k = the_core;
	const struct settle_account *a = ledger_find(k, id);
	json_obj_begin(j);
	if (a == NULL) {
		json_kv_str(j, "error", "no_such_account");
		json_obj_end(j);
		return;
	}
	char flags[16];
	settle_account_flags_format(a->flags, flags, sizeof(flags));
	json_kv_u64(j, "id", a->id);
	json_kv_str(j, "flags", flags);
	json_kv_u64(j, "shard", settle_shard_of(id, k->nshards));
	json_key(j, "credits_posted");
	json_u128(j, a->credits_posted);
	json_key(j, "debits_posted");
	json_u128(j, a->debits_posted);
	json_key(j, "credits_buffered");
	json_u128(j, a->credits_buffered);
	json_key(j, "balance");
	json_i128(j, (settle_i128)a->credits_posted - (settle_i128)a->debits_posted);
	uint32_t reason;
	bool hot = settle_seq_hot(k->seq, id, &reason);
	json_kv_bool(j, "hot", hot);
	json_key(j, "hot_reason");
	if (hot)
		json_str(j, settle_hot_reason_name(reason));
	else
		json_null(j);
	struct settle_buffer b = { 0 };
	settle_ledger_buffer(k->ledger, settle_seq_account_ix(k->seq, id), &b);
	json_kv_u64(j, "buffered_count", b.count);
	json_kv_u64(j, "buffer_first_id", b.first_id);
	json_kv_u64(j, "buffer_last_id", b.last_id);
	json_kv_u64(j, "as_of_epoch", k->last_epoch);
	json_obj_end(j);
}

/* ---- admin: peak, hot, merge, history ------------------------------------- */

static void
json_error(struct json_buf *j, const char *msg)
{
	json_obj_begin(j);
	json_kv_str(j, "error", msg);
	json_obj_end(j);
}

static void
json_time(struct json_buf *j, uint64_t ns)
{
	if (ns == 0) {
		json_null(j); /* not since this process started */
		return;
	}
	char b[32];
	time_t t = (time_t)(ns / 1000000000u);
	struct tm tm;
	localtime_r(&t, &tm);
	strftime(b, sizeof(b), "%Y-%m-%dT%H:%M:%S%z", &tm);
	json_str(j, b);
}

static void
peak_status(struct core *k, struct json_buf *j)
{
	struct hot_cfg h;
	hot_cfg_get(&h);
	static const char *const modes[] = { "schedule", "always", "never" };
	json_kv_bool(j, "peak", settle_seq_peak(k->seq));
	json_kv_str(j, "mode", modes[h.mode]);
	json_kv_str(j, "windows", h.windows);
	json_kv_str(j, "override", k->peak_override < 0 ? "auto"
		    : k->peak_override ? "on" : "off");
	json_key(j, "began");
	json_time(j, k->peak_began_ns);
	json_key(j, "ended");
	json_time(j, k->peak_ended_ns);
}

void
server_core_peak_json(const struct admin_cmd *cmd, struct json_buf *j)
{
	struct core *k = the_core;
	if (cmd->op != ADMIN_PEAK_SHOW) {
		k->peak_override = cmd->op == ADMIN_PEAK_ON ? 1
				 : cmd->op == ADMIN_PEAK_OFF ? 0 : -1;
		core_tick(k, core_now_ns()); /* logged with the next epoch */
	}
	json_obj_begin(j);
	peak_status(k, j);
	json_obj_end(j);
}

struct hot_list {
	struct core *k;
	struct json_buf *j;
	uint32_t level_window_s;
};

/* When epoch e ran (it has run): exact from the last 4096 epochs; else
 * the time of the last mark at or before it, at most a second early (a
 * lag is never reported short); past the marks, the oldest one (then
 * the lag is at least that). */
static uint64_t
epoch_time(const struct core *k, uint64_t e)
{
	if (k->last_epoch - e < 4096)
		return k->epoch_ns[e % 4096];
	uint64_t lo = k->nlag_marks > 4096 ? k->nlag_marks - 4096 : 0;
	for (uint64_t i = k->nlag_marks; i > lo; i--)
		if (k->lag_marks[(i - 1) % 4096].epoch <= e)
			return k->lag_marks[(i - 1) % 4096].ns;
	return k->nlag_marks ? k->lag_marks[lo % 4096].ns : 0;
}

static void
list_hot(void *arg, uint64_t id, uint32_t reason)
{
	struct hot_list *h = arg;
	struct core *k = h->k;
	struct json_buf *j = h->j;
	json_obj_begin(j);
	json_kv_u64(j, "id", id);
	json_kv_str(j, "reason", settle_hot_reason_name(reason));
	if (reason == SETTLE_HOT_AUTO) {
		/* postings per second so far in the detector's window */
		uint64_t el = core_now_ns() - k->window_start_ns;
		uint64_t est = settle_sketch_estimate(k->sketch, id);
		json_kv_u64(j, "rate", el > 1000000u ? est * 1000000000u / el : est);
	}
	uint32_t ix = settle_seq_account_ix(k->seq, id);
	const struct settle_account *a = settle_ledger_at(k->ledger, ix);
	struct settle_buffer b = { 0 };
	settle_ledger_buffer(k->ledger, ix, &b);
	json_kv_u64(j, "buffered_count", b.count);
	json_key(j, "buffered_sum");
	json_u128(j, a ? a->credits_buffered : 0);
	json_obj_end(j);
}

void
server_core_hot_json(const struct admin_cmd *cmd, struct json_buf *j)
{
	struct core *k = the_core;
	if (cmd->op != ADMIN_HOT_LIST) {
		bool add = cmd->op == ADMIN_HOT_ADD;
		uint64_t id = cmd->id;
		enum settle_result r = stage_control(k, SETTLE_REC_HOT, id, add,
						     SETTLE_HOT_ADMIN);
		json_obj_begin(j);
		json_kv_bool(j, "ok", r == SETTLE_OK);
		json_kv_u64(j, "id", id);
		if (r != SETTLE_OK) {
			json_kv_str(j, "error", r == SETTLE_ACCOUNT_EXISTS ? "already hot"
				    : r == SETTLE_NO_SUCH_ACCOUNT
					    ? (add ? "no such account" : "not hot")
				    : r == SETTLE_OVERLOADED ? "the hot set is full ([hot] max_accounts)"
				    : "hot by its account flag: for ever");
		} else {
			json_kv_bool(j, "hot", add);
		}
		json_obj_end(j);
		return;
	}
	json_obj_begin(j);
	peak_status(k, j);
	json_kv_u64(j, "count", settle_seq_hot_count(k->seq));
	json_key(j, "hot");
	json_arr_begin(j);
	struct hot_list h = { k, j, 0 };
	settle_seq_foreach_hot(k->seq, list_hot, &h);
	json_arr_end(j);
	json_obj_end(j);
}

void
server_core_merge_json(const struct admin_cmd *cmd, struct json_buf *j)
{
	struct core *k = the_core;
	uint64_t id = cmd->id;
	enum settle_result r = stage_control(k, SETTLE_REC_MERGE, id, 0,
					     SETTLE_MERGE_ADMIN);
	json_obj_begin(j);
	json_kv_bool(j, "ok", r == SETTLE_OK);
	if (r != SETTLE_OK) {
		json_kv_str(j, "error", "not a hot account");
	} else {
		json_kv_str(j, "merge", "logged; it runs with the next epoch");
	}
	json_obj_end(j);
}

void
server_core_store_lag_json(struct json_buf *j)
{
	struct core *k = the_core;
	json_obj_begin(j);
	json_kv_str(j, "backend", k && k->proj ? "mariadb" : "file");
	if (k && k->proj) {
		struct store_projection_stats ps;
		store_projection_stats_get(k->proj, &ps);
		uint64_t lag = k->last_epoch > ps.applied_epoch
				       ? k->last_epoch - ps.applied_epoch
				       : 0;
		json_kv_bool(j, "connected", ps.connected);
		json_kv_str(j, "active_host", ps.hosts[ps.active].name);
		json_kv_u64(j, "applied_epoch", ps.applied_epoch);
		json_kv_u64(j, "lag_epochs", lag);
		uint64_t at = lag == 0 ? 0 : epoch_time(k, ps.applied_epoch + 1);
		uint64_t now = wall_ns();
		json_kv_u64(j, "lag_ms", at && now > at ? (now - at) / 1000000u : 0);
		json_kv_u64(j, "lag_s", at && now > at ? (now - at) / 1000000000u : 0);
	}
	json_obj_end(j);
}

void
server_core_store_json(const struct admin_cmd *cmd, struct json_buf *j)
{
	struct core *k = the_core;
	if (k->proj == NULL)
		return json_error(j, "[store] backend is file: no projection "
				     "(set backend = mariadb)");
	uint64_t asked = 0;
	if (cmd->op == ADMIN_STORE_FAILBACK)
		store_projection_failback(k->proj);
	else if (cmd->op == ADMIN_STORE_VERIFY)
		asked = store_projection_verify(k->proj);
	struct store_projection_stats ps;
	store_projection_stats_get(k->proj, &ps);
	json_obj_begin(j);
	json_key(j, "lag");
	server_core_store_lag_json(j);
	if (asked) {
		json_kv_u64(j, "verify_request", asked);
	}
	json_kv_u64(j, "transactions", ps.transactions);
	json_kv_u64(j, "transfer_rows", ps.transfers);
	json_kv_u64(j, "account_rows", ps.account_rows);
	json_kv_u64(j, "hot_account_rows", ps.hot_account_rows);
	json_kv_u64(j, "failures", ps.failures);
	json_key(j, "hosts");
	json_arr_begin(j);
	for (uint32_t i = 0; i < ps.nhosts; i++) {
		json_obj_begin(j);
		json_kv_str(j, "host", ps.hosts[i].name);
		json_kv_str(j, "state", ps.hosts[i].state);
		json_kv_u64(j, "applied_epoch", ps.hosts[i].applied_epoch);
		json_kv_u64(j, "lag_epochs", k->last_epoch > ps.hosts[i].applied_epoch
				    ? k->last_epoch - ps.hosts[i].applied_epoch
				    : 0);
		json_kv_str(j, "error", ps.hosts[i].error);
		json_obj_end(j);
	}
	json_arr_end(j);
	const struct store_projection_verify *v = &ps.verify;
	json_key(j, "verify");
	json_obj_begin(j);
	json_kv_u64(j, "asked", ps.verify_asked);
	json_kv_u64(j, "done", v->done);
	json_kv_bool(j, "ran", v->ran);
	json_kv_bool(j, "ok", v->ok);
	json_kv_u64(j, "as_of_epoch", v->epoch);
	json_kv_u64(j, "account_rows", v->account_rows);
	json_kv_u64(j, "ledger_accounts", v->ledger_accounts);
	json_kv_u64(j, "transfer_rows", v->transfer_rows);
	json_kv_u64(j, "transfers_projected", v->transfers_logged);
	json_kv_u64(j, "differences", v->differences);
	json_kv_str(j, "first_difference", v->first);
	json_obj_end(j);
	json_obj_end(j);
}

void
server_core_history_json(const struct admin_cmd *cmd, struct json_buf *j)
{
	journal_history_json(the_core->journal, cmd->id, cmd->limit, j);
}

/* A log2 histogram's p50 and p99 (and p99.9), keys prefix + "p50_le"...:
 * a quantile is its bucket's upper bound, here divided by div. */
static void
json_quantiles(struct json_buf *j, const char *prefix, const uint64_t *hist,
	       uint64_t div, bool p999)
{
	static const struct {
		const char *name;
		double q;
	} qs[] = { { "p50_le", 0.5 }, { "p99_le", 0.99 }, { "p999_le", 0.999 } };
	for (unsigned i = 0; i < (p999 ? 3u : 2u); i++) {
		char key[48];
		snprintf(key, sizeof(key), "%s%s", prefix, qs[i].name);
		json_kv_u64(j, key, store_hist_quantile(hist, STORE_WAL_HIST, qs[i].q) /
					    div);
	}
}

void
server_core_stats_json(struct json_buf *j)
{
	struct core *k = the_core;
	json_obj_begin(j);
	json_kv_u64(j, "requests", k->requests);
	json_key(j, "answered");
	json_obj_begin(j);
	for (int r = 0; r < SETTLE_RESULT_COUNT; r++) {
		if (k->answered[r] == 0)
			continue;
		json_key(j, settle_result_name((enum settle_result)r));
		json_u64(j, k->answered[r]);
	}
	json_obj_end(j);
	json_kv_u64(j, "epochs_run", k->epochs_run);
	json_kv_u64(j, "records_run", k->records_run);
	json_kv_u64(j, "last_epoch", k->last_epoch);
	json_kv_u64(j, "records_in_flight", k->rec_tail - k->rec_head);
	json_kv_u64(j, "connections", k->nconns);
	json_kv_u64(j, "accounts", settle_seq_accounts(k->seq));
	json_kv_u64(j, "remembered_ids", settle_seq_remembered(k->seq));
	/* Log2 histograms: a quantile is its bucket's upper bound. */
	json_key(j, "reply_us");
	json_obj_begin(j);
	json_quantiles(j, "", k->reply_hist, 1000, true);
	json_kv_u64(j, "max", k->reply_ns_max / 1000);
	json_obj_end(j);
	json_key(j, "epoch_records");
	json_obj_begin(j);
	json_kv_u64(j, "mean", k->epochs_run ? k->records_run / k->epochs_run : 0);
	json_quantiles(j, "", k->epoch_size_hist, 1, false);
	json_obj_end(j);
	struct store_wal_stats ws;
	store_wal_stats_get(k->wal, &ws);
	json_key(j, "wal");
	json_obj_begin(j);
	json_kv_u64(j, "epochs", ws.epochs);
	json_kv_u64(j, "bytes", ws.bytes);
	json_kv_u64(j, "segments", ws.segments);
	json_kv_u64(j, "failed_commits", ws.failed_commits);
	json_quantiles(j, "commit_us_", ws.commit_hist, 1000, false);
	json_kv_u64(j, "commit_us_max", ws.commit_ns_max / 1000);
	json_obj_end(j);
	json_kv_u64(j, "snapshot_epoch", k->snap_last_epoch);
	json_kv_bool(j, "snapshot_in_progress", k->snap_child != 0 || k->snap_wanted);
	json_kv_u64(j, "snapshots_taken", k->snaps_taken);
	json_kv_u64(j, "snapshots_failed", k->snaps_failed);
	json_key(j, "store");
	server_core_store_lag_json(j);
	json_kv_bool(j, "wal_full", k->wal_full);
	json_key(j, "peak");
	json_obj_begin(j);
	peak_status(k, j);
	json_obj_end(j);
	json_kv_u64(j, "hot_accounts", settle_seq_hot_count(k->seq));
	json_kv_u64(j, "merges", k->merges);
	json_kv_u64(j, "merged_postings", k->merged_postings);
	json_kv_u64(j, "avg_batch", k->merges ? k->merged_postings / k->merges : 0);
	json_key(j, "merges_by_reason");
	json_obj_begin(j);
	for (unsigned r = 0; r < SETTLE_MERGE_REASONS; r++) {
		json_key(j, settle_merge_reason_name(r));
		json_u64(j, k->merges_by_reason[r]);
	}
	json_obj_end(j);
	/* What a store projection has to write: one balance update per
	 * real-time posting and one per merge; a row per transfer and per
	 * batch. */
	json_kv_u64(j, "postings_realtime", k->realtime_postings);
	json_kv_u64(j, "postings_buffered", k->buffered_postings);
	json_kv_u64(j, "balance_updates", k->realtime_postings + k->merges);
	json_kv_u64(j, "hot_balance_updates", k->hot_updates);
	json_kv_u64(j, "hot_credit_updates", k->hot_credit_updates);
	json_kv_u64(j, "batches", k->merges);
	json_key(j, "shards");
	json_arr_begin(j);
	for (uint32_t s = 0; s < k->nshards; s++)
		json_u64(j, k->shard_accounts[s]);
	json_arr_end(j);
	json_obj_end(j);
}

struct verify_acc {
	settle_u128 debits, credits;
	uint64_t nonneg_negative;
	uint64_t accounts;
};

static void
verify_one(void *arg, const struct settle_account *a)
{
	struct verify_acc *v = arg;
	v->debits += a->debits_posted;
	v->credits += a->credits_posted + a->credits_buffered;
	v->accounts++;
	if ((a->flags & SETTLE_ACCOUNT_NONNEG) &&
	    a->credits_posted < a->debits_posted)
		v->nonneg_negative++;
}

void
server_core_verify_json(struct json_buf *j)
{
	struct core *k = the_core;
	struct verify_acc v = { 0 };
	bool tables = true;
	uint32_t span = settle_seq_span(k->seq);
	settle_ledger_foreach(k->ledger, span, -1, 1, verify_one, &v);
	tables &= settle_ledger_valid(k->ledger, span, -1, 1);
	bool counts = v.accounts == settle_seq_accounts(k->seq);
	bool ok = v.debits == v.credits && v.nonneg_negative == 0 && tables &&
		  counts;
	json_obj_begin(j);
	json_kv_bool(j, "ok", ok);
	json_kv_u64(j, "as_of_epoch", k->last_epoch);
	json_kv_u64(j, "accounts", v.accounts);
	json_key(j, "total_debits");
	json_u128(j, v.debits);
	json_key(j, "total_credits");
	json_u128(j, v.credits);
	json_kv_bool(j, "debits_equal_credits", v.debits == v.credits);
	json_kv_u64(j, "nonneg_below_zero", v.nonneg_negative);
	json_kv_bool(j, "tables_consistent", tables);
	json_kv_bool(j, "directory_matches_ledger", counts);
	json_obj_end(j);
}

/* ---- recovery: replay the log ----------------------------------------------- */

struct replay {
	struct core *k;
	uint64_t from; /* the first epoch the ledger needs */
	uint64_t epochs, transfers, accounts;
	char err[256];
};

/*
 * One logged epoch, again: the sequencer decides each record exactly as it
 * did (it must say LOG; anything else means the log and this code
 * disagree, and starting would serve a wrong ledger), then the epoch runs
 * on the shards. Nobody is answered.
 */
static int
replay_epoch(void *arg, const struct store_wal_epoch *ep)
{
	struct replay *rp = arg;
	struct core *k = rp->k;
	DOVE_ASSERT(k->rec_head == k->rec_tail);
	if (rp->epochs == 0 && ep->epoch != rp->from) {
		/* Say what is missing before the sequencer meets a record
		 * that needs it (a transfer between unknown accounts). */
		snprintf(rp->err, sizeof(rp->err),
			 "the log starts at epoch %llu but the ledger needs "
			 "every epoch from %llu on (%s): epochs %llu..%llu are "
			 "missing, refusing to start on a ledger with a hole",
			 (unsigned long long)ep->epoch,
			 (unsigned long long)rp->from,
			 rp->from > 1 ? "after the newest snapshot"
				      : "there is no snapshot: were the first "
					"segment or the snapshots removed?",
			 (unsigned long long)rp->from,
			 (unsigned long long)ep->epoch - 1);
		return -DOVE_ECORRUPT;
	}
	if (ep->count > CORE_RECS) {
		snprintf(rp->err, sizeof(rp->err),
			 "epoch %llu has %u records, more than %u",
			 (unsigned long long)ep->epoch, ep->count, CORE_RECS);
		return -DOVE_ECORRUPT;
	}
	size_t off = 0;
	struct store_wal_record wr;
	uint64_t first = k->rec_tail;
	/* The whole epoch is here: start every lookup's cache misses before
	 * the first decision needs one. */
	for (uint32_t n = 0; store_wal_record_next(ep, &off, &wr); n++) {
		struct settle_transfer t;
		if (wr.type != SETTLE_REC_TRANSFER || wr.len != sizeof(t))
			continue;
		memcpy(&t, wr.data, sizeof(t)); /* payloads are not aligned */
		settle_seq_prefetch(k->seq, &t, n);
	}
	off = 0;
	struct settle_relog chain = { .len = 0 };
	while (store_wal_record_next(ep, &off, &wr)) {
		struct settle_op ops[CHAIN_MAX];
		uint32_t n;
		int rc = settle_seq_relog(k->seq, &chain, wr.type, wr.data, wr.len,
					  ops, &n);
		if (rc != 0) {
			snprintf(rp->err, sizeof(rp->err),
				 rc == -EINVAL
					 ? "epoch %llu: record type %u (len %u) "
					   "is not one this doved writes there"
					 : "epoch %llu: the sequencer refuses a "
					   "logged record (type %u, len %u) on replay",
				 (unsigned long long)ep->epoch, wr.type, wr.len);
			return -DOVE_ECORRUPT;
		}
		for (uint32_t i = 0; i < n; i++) {
			struct rec *r = &k->recs[k->rec_tail++ % CORE_RECS];
			memset(r, 0, sizeof(*r));
			r->conn = UINT32_MAX; /* nobody to answer */
			r->op = ops[i];
			rp->accounts += ops[i].type == SETTLE_REC_ACCOUNT;
			rp->transfers += ops[i].type == SETTLE_REC_TRANSFER;
		}
	}
	if (chain.len != 0) {
		snprintf(rp->err, sizeof(rp->err), "epoch %llu ends in an open "
			 "chain", (unsigned long long)ep->epoch);
		return -DOVE_ECORRUPT;
	}
	run_epoch(k, first, ep->count, ep->epoch, ep->first_lsn, ep->time_ns);
	k->rec_head = k->rec_staged = k->rec_tail;
	rp->epochs++;
	return 0;
}

/* ---- listeners, start and stop ------------------------------------------------ */

static int
listen_tcp(const char *addr)
{
	char host[32];
	const char *colon = strrchr(addr, ':');
	snprintf(host, sizeof(host), "%.*s", (int)(colon - addr), addr);
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)atoi(colon + 1)) };
	inet_pton(AF_INET, host, &sa.sin_addr); /* config checked */
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(fd, 1024) < 0) {
		int rc = -errno;
		close(fd);
		return rc;
	}
	return fd;
}

/* Restore the newest valid snapshot, if any; *from = first epoch to
 * replay. 0, or an error (logged). */
static int
load_snapshot(struct core *k, const server_config *cfg, uint64_t *from)
{
	struct store_snap snap;
	int got = store_snap_load_newest(cfg->snapshot_dir, &snap);
	if (got < 0) {
		DOVE_ERROR("snapshots in %s: %s", cfg->snapshot_dir,
			   dove_strerror(got));
		return got;
	}
	if (got == 0)
		return 0;
	int rc = store_snap_restore(&snap, k->seq, k->ledger);
	/* Per-shard account counts for stats. */
	for (uint32_t ix = 0; rc == 0 && ix < settle_seq_span(k->seq); ix++) {
		const struct settle_account *a = settle_ledger_at(k->ledger, ix);
		if (a != NULL)
			k->shard_accounts[settle_shard_of(a->id, k->nshards)]++;
	}
	if (rc != 0) {
		DOVE_ERROR("snapshot %s (%llu accounts, %llu ids) does not fit: "
			   "%s; raise [settle] accounts_max / dedup_window",
			   snap.path, (unsigned long long)snap.accounts,
			   (unsigned long long)snap.ids, dove_strerror(rc));
		store_snap_release(&snap);
		return rc;
	}
	k->last_epoch = k->snap_last_epoch = snap.epoch;
	k->next_lsn = snap.next_lsn;
	*from = snap.epoch + 1;
	DOVE_INFO("loaded snapshot %s: epoch %llu, %llu accounts, %llu ids",
		  snap.path, (unsigned long long)snap.epoch,
		  (unsigned long long)snap.accounts,
		  (unsigned long long)snap.ids);
	store_snap_release(&snap);
	return 0;
}

/* [store] backend = mariadb: the writer thread, from where the log is.
 * Only a config that cannot work stops the start (the password file);
 * an unreachable or refusing database is the writer's to report and
 * retry, while settlement goes on. */
static int
start_projection(struct core *k, const server_config *cfg)
{
	struct store_mariadb_config mc = { 0 };
	snprintf(mc.hosts, sizeof(mc.hosts), "%s", cfg->mariadb_hosts);
	snprintf(mc.user, sizeof(mc.user), "%s", cfg->mariadb_user);
	snprintf(mc.database, sizeof(mc.database), "%s", cfg->mariadb_database);
	snprintf(mc.password, sizeof(mc.password), "%s", cfg->mariadb_password);
	if (cfg->mariadb_password_file[0]) {
		FILE *f = fopen(cfg->mariadb_password_file, "r");
		if (f == NULL || fgets(mc.password, sizeof(mc.password), f) == NULL) {
			int e = f ? EIO : errno;
			DOVE_ERROR("[mariadb] password_file %s: %s",
				   cfg->mariadb_password_file, dove_strerror(-e));
			if (f)
				fclose(f);
			return -e;
		}
		fclose(f);
		mc.password[strcspn(mc.password, "\r\n")] = '\0';
	}
	mc.connect_timeout_s = (int)cfg->mariadb_connect_timeout_s;
	mc.read_timeout_s = (int)cfg->mariadb_read_timeout_s;
	mc.write_timeout_s = (int)cfg->mariadb_write_timeout_s;
	mc.batch_max_rows = (uint64_t)cfg->mariadb_batch_max_rows;
	snprintf(mc.wal_dir, sizeof(mc.wal_dir), "%s", cfg->wal_dir);
	snprintf(mc.snapshot_dir, sizeof(mc.snapshot_dir), "%s",
		 cfg->snapshot_dir);
	mc.accounts_max = (uint32_t)cfg->settle_accounts_max;
	mc.dedup_window = (uint32_t)cfg->settle_dedup_window;
	mc.hot_max = k->hot_max;
	mc.start_epoch = k->last_epoch;
	int rc = store_projection_start(&mc, &k->proj);
	memset(mc.password, 0, sizeof(mc.password));
	if (rc != 0) {
		DOVE_ERROR("mariadb projection: %s", dove_strerror(rc));
		return rc;
	}
	DOVE_INFO("store backend mariadb: projecting into %s on %s",
		  cfg->mariadb_database, cfg->mariadb_hosts);
	return 0;
}

static void *
xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);
	DOVE_ASSERT(p != NULL); /* start-up: no memory, no server */
	return p;
}

/* One thread per shard; shard i pinned to the i-th CPU of cpus (cycling)
 * when cpus is not empty. */
static void
start_workers(struct core *k, const char *cpus)
{
	int list[64], ncpu = 0;
	for (const char *p = cpus; *p && ncpu < 64;) {
		list[ncpu++] = atoi(p);
		p += strcspn(p, ",");
		if (*p == ',')
			p++;
	}
	ring_event_init(&k->ev_go, false);
	ring_event_init(&k->ev_barrier, false);
	ring_event_init(&k->ev_done, false);
	k->workers = xcalloc(k->nshards, sizeof(*k->workers));
	for (uint32_t s = 0; s < k->nshards; s++) {
		struct shard_worker *w = &k->workers[s];
		w->k = k;
		w->id = s;
		w->cpu = ncpu ? list[s % (uint32_t)ncpu] : -1;
		int rc = pthread_create(&w->thread, NULL, shard_main, w);
		DOVE_ASSERT(rc == 0);
	}
}

static void
stop_workers(struct core *k)
{
	if (k->workers == NULL)
		return;
	atomic_store_explicit(&k->workers_stop, true, memory_order_release);
	ring_event_notify(&k->ev_go);
	for (uint32_t s = 0; s < k->nshards; s++)
		pthread_join(k->workers[s].thread, NULL);
	free(k->workers);
	k->workers = NULL;
}

int
server_core_open(struct server *srv, store_wal *wal)
{
	const server_config *cfg = server_config_get(); /* main thread */
	struct core *k = xcalloc(1, sizeof(*k));
	k->srv = srv;
	k->wal = wal;
	k->max_epoch_bytes = (uint32_t)cfg->wal_max_epoch_kb << 10;
	k->nshards = (uint32_t)cfg->settle_shards;
	k->max_conns = (uint32_t)cfg->ingress_max_connections;
	k->hot_max = (uint32_t)cfg->hot_max_accounts;
	int rc = settle_seq_create((uint32_t)cfg->settle_accounts_max,
				   (uint32_t)cfg->settle_dedup_window, k->hot_max,
				   &k->seq);
	if (rc != 0) {
		DOVE_ERROR("sequencer: %s", dove_strerror(rc));
		free(k);
		return rc;
	}
	uint32_t n = k->nshards;
	k->shard_accounts = xcalloc(n, sizeof(uint32_t));
	rc = settle_ledger_create((uint32_t)cfg->settle_accounts_max, n,
				  k->hot_max, &k->ledger);
	if (rc == 0)
		rc = settle_sketch_create(&k->sketch);
	if (rc != 0) {
		DOVE_ERROR("ledger: %s", dove_strerror(rc));
		return rc;
	}
	k->shard_ops = xcalloc(n, sizeof(*k->shard_ops));
	k->shard_where = xcalloc(n, sizeof(*k->shard_where));
	k->op_results = xcalloc(n, sizeof(*k->op_results));
	k->sinks = xcalloc(n, sizeof(*k->sinks));
	k->legs = xcalloc((size_t)n * n, sizeof(*k->legs));
	k->shard_n = xcalloc(n, sizeof(uint32_t));
	k->nlegs = xcalloc((size_t)n * n, sizeof(uint32_t));
	for (uint32_t i = 0; i < n * n; i++)
		k->legs[i] = xcalloc(CORE_RECS, sizeof(struct settle_credit));
	for (uint32_t s = 0; s < k->nshards; s++) {
		k->shard_ops[s] = xcalloc(CORE_RECS, sizeof(struct settle_op));
		k->shard_where[s] = xcalloc(CORE_RECS, sizeof(uint32_t));
		k->op_results[s] = xcalloc(CORE_RECS, 1);
		k->sinks[s] = (struct sink_ctx){ k, s };
	}
	k->results = xcalloc(CORE_RECS, 1);
	k->posts = xcalloc(CORE_RECS, sizeof(struct settle_post));
	k->batches = xcalloc(n, sizeof(*k->batches));
	k->nbatches = xcalloc(n, sizeof(uint32_t));
	for (uint32_t s = 0; s < n; s++)
		k->batches[s] = xcalloc(k->hot_max, sizeof(struct settle_batch));
	k->journal = journal_create((uint32_t)cfg->hot_history);
	k->peak_override = -1;
	settle_seq_set_merge_max(k->seq, (uint64_t)cfg->hot_merge_max);
	k->recs = xcalloc(CORE_RECS, sizeof(struct rec));
	k->wal_recs = xcalloc(CORE_RECS, sizeof(struct store_wal_record));
	k->flights = xcalloc(CORE_RECS, sizeof(struct flight));
	k->conns = xcalloc(k->max_conns, sizeof(struct conn *));
	the_core = k;

	if (n > 1)
		start_workers(k, cfg->settle_cpus);

	/* The ledger is a pure function of the log: the newest snapshot,
	 * then every epoch after it. */
	uint64_t from = 1;
	rc = load_snapshot(k, cfg, &from);
	if (rc != 0)
		return rc;
	struct replay rp = { .k = k, .from = from };
	struct store_wal_scan scan;
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", cfg->wal_dir);
	rc = store_wal_scan(dir, from, replay_epoch, &rp, &scan);
	if (rc != 0) {
		DOVE_ERROR("replay of %s failed: %s", dir,
			   rp.err[0] ? rp.err : scan.reason);
		return rc < 0 ? rc : -DOVE_ECORRUPT;
	}
	if ((scan.epochs > 0 && scan.first_epoch > from) ||
	    scan.next_epoch < from) {
		DOVE_ERROR("the log in %s holds epochs %llu..%llu but the "
			   "ledger needs every epoch from %llu on (%s): "
			   "refusing to start on a ledger with a hole",
			   dir, (unsigned long long)scan.first_epoch,
			   (unsigned long long)scan.last_epoch,
			   (unsigned long long)from,
			   from > 1 ? "after the newest snapshot"
				    : "there is no snapshot");
		return -DOVE_ECORRUPT;
	}

	k->snap_timer.fd = timerfd_create(CLOCK_MONOTONIC,
					  TFD_NONBLOCK | TFD_CLOEXEC);
	DOVE_ASSERT(k->snap_timer.fd >= 0);
	k->snap_timer.fn = on_snap_timer;
	/* 10 Hz: peak transitions, hot-set changes and timed merges are
	 * decided here (merge_ms is at least 10 ms; finer than the tick
	 * means every tick). */
	struct itimerspec tick = { { 0, 100000000 }, { 0, 100000000 } };
	timerfd_settime(k->snap_timer.fd, 0, &tick, NULL);
	server_loop_add(&srv->loop, &k->snap_timer, EPOLLIN);
	k->snap_last_ns = core_now_ns();
	/* Timed merges count from the start, not from the boot. */
	k->last_merge_ns = k->window_start_ns = k->snap_last_ns;
	if (rp.epochs > 0)
		DOVE_INFO("replayed %llu epochs: %llu accounts, %llu transfers",
			  (unsigned long long)rp.epochs,
			  (unsigned long long)rp.accounts,
			  (unsigned long long)rp.transfers);

	if (cfg->store_backend == 1) {
		rc = start_projection(k, cfg);
		if (rc != 0)
			return rc;
	}

	k->wal_ev.fd = store_wal_event_fd(wal);
	k->wal_ev.fn = on_wal;
	rc = server_loop_add(&srv->loop, &k->wal_ev, EPOLLIN);
	DOVE_ASSERT(rc == 0);
	srv->loop.before_wait = core_before_wait;
	srv->loop.before_wait_arg = k;

	k->lis[0].fd = k->lis[1].fd = -1;
	if (cfg->ingress_unix[0]) {
		char err[256];
		int fd = server_unix_listen(cfg->ingress_unix, 0660, 1024, err,
					    sizeof(err));
		if (fd < 0) {
			DOVE_ERROR("ingress %s: %s", cfg->ingress_unix, err);
			return fd;
		}
		snprintf(k->unix_path, sizeof(k->unix_path), "%s",
			 cfg->ingress_unix);
		k->lis[0] = (struct server_ev){ fd, on_accept };
		server_loop_add(&srv->loop, &k->lis[0], EPOLLIN);
		DOVE_INFO("ingress listening on %s", cfg->ingress_unix);
	}
	if (cfg->ingress_tcp[0]) {
		int fd = listen_tcp(cfg->ingress_tcp);
		if (fd < 0) {
			DOVE_ERROR("ingress %s: %s", cfg->ingress_tcp,
				   dove_strerror(fd));
			return fd;
		}
		k->lis[1] = (struct server_ev){ fd, on_accept };
		server_loop_add(&srv->loop, &k->lis[1], EPOLLIN);
		DOVE_INFO("ingress listening on tcp %s", cfg->ingress_tcp);
	}
	return 0;
}

/* Stop taking requests, answer everything in flight, close. */
void
server_core_close(struct server *srv)
{
	struct core *k = the_core;
	if (k == NULL)
		return;
	for (int i = 0; i < 2; i++) {
		if (k->lis[i].fd >= 0) {
			server_loop_del(&srv->loop, &k->lis[i]);
			close(k->lis[i].fd);
		}
	}
	if (k->unix_path[0])
		unlink(k->unix_path);
	/* Drain: append what is staged, wait for every epoch, answer. */
	core_before_wait(k);
	while (k->flight_head < k->flight_tail) {
		struct flight *f = &k->flights[k->flight_head % CORE_RECS];
		if (f->ticket != 0)
			store_wal_wait(k->wal, f->ticket, NULL, NULL);
		drain_flights(k);
	}
	flush_all(k);
	for (uint32_t i = 0; i < k->max_conns; i++)
		if (k->conns[i] != NULL)
			conn_close(k->conns[i]);
	conn_free_closed(k);
	/* A clean stop leaves a snapshot, so the next start replays only
	 * what comes after it. */
	if (k->snap_child != 0) {
		int st;
		if (waitpid(k->snap_child, &st, 0) == k->snap_child)
			server_core_child_exited(k->snap_child, st);
	}
	if (k->last_epoch != 0 && k->last_epoch != k->snap_last_epoch) {
		char dir[PATH_MAX];
		snprintf(dir, sizeof(dir), "%s",
			 server_config_get()->snapshot_dir);
		int rc = snapshot_write(k, dir);
		if (rc == 0)
			snapshot_done(k, k->last_epoch);
		else
			DOVE_ERROR("snapshot at stop: %s", dove_strerror(rc));
	}
	if (k->snap_timer.fd > 0) {
		server_loop_del(&srv->loop, &k->snap_timer);
		close(k->snap_timer.fd);
	}
	server_loop_del(&srv->loop, &k->wal_ev);
	srv->loop.before_wait = NULL;
	stop_workers(k);
	store_projection_stop(k->proj);
	for (uint32_t s = 0; s < k->nshards; s++) {
		free(k->shard_ops[s]);
		free(k->shard_where[s]);
		free(k->op_results[s]);
		free(k->batches[s]);
	}
	free(k->batches);
	free(k->nbatches);
	free(k->posts);
	journal_destroy(k->journal);
	settle_sketch_destroy(k->sketch);
	for (uint32_t i = 0; i < k->nshards * k->nshards; i++)
		free(k->legs[i]);
	settle_ledger_destroy(k->ledger);
	free(k->shard_accounts);
	free(k->shard_ops);
	free(k->shard_where);
	free(k->op_results);
	free(k->sinks);
	free(k->legs);
	free(k->shard_n);
	free(k->nlegs);
	free(k->results);
	free(k->recs);
	free(k->wal_recs);
	free(k->flights);
	free(k->conns);
	settle_seq_destroy(k->seq);
	free(k);
	the_core = NULL;
}
