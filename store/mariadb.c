/*
 * mariadb.c - the MariaDB projection: a writer thread that follows the
 * WAL and writes every executed epoch into MariaDB, exactly once.
 *
 * It does not take the live ledger's outputs. It keeps its own replica of
 * the state machine (settle_engine: the sequencer and a one-shard ledger)
 * and runs the log through it: the ledger is a pure function of the log,
 * so the replica computes the same results, balances and merges. That is
 * what makes the projection independent of settlement (a slow or dead
 * MariaDB never holds the shards up; the projection lags and catches up)
 * and lets it re-project any epoch after a crash or a failover: rebuild
 * the replica from the newest snapshot at or below the host's
 * applied_epoch, replay the log to it, and go on from there.
 *
 * Exactly once: each transaction writes whole epochs (a..b] and moves
 * dove_state.applied_epoch from a to b; a row that is there was written
 * with its epoch, and an epoch is there whole or not at all.
 */
#include <errno.h>
#include <inttypes.h>
#include <errmsg.h>
#include <mysql.h>
#include <mysqld_error.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dove.h"
#include "ring.h"
#include "store.h"

#define SCHEMA_VERSION 1
#define STMT_MAX (1u << 20) /* a multi-row INSERT is cut at ~1 MiB */

/* The row statements, shared by the bulk (prepared) and the text paths. */
#define TRANSFER_INSERT                                                      \
	"INSERT INTO transfers (lsn, id, debit, credit, amount, code, ref, "  \
	"linked, epoch, ts, status, debit_balance_after, "                    \
	"credit_balance_after, buffered) VALUES "
#define ACCOUNT_INSERT                                                       \
	"INSERT INTO accounts (id, flags, debits_posted, credits_posted, "    \
	"credits_buffered, updated_epoch) VALUES "
#define ACCOUNT_UPSERT                                                       \
	" ON DUPLICATE KEY UPDATE debits_posted = VALUES(debits_posted), "    \
	"credits_posted = VALUES(credits_posted), "                           \
	"credits_buffered = VALUES(credits_buffered), "                       \
	"updated_epoch = VALUES(updated_epoch)"

/* Migrations, in order: migration v takes the schema from v - 1 to v.
 * DDL commits implicitly in MariaDB, so each statement is written to be
 * safe to run again if a migration was cut short. */
static const char *const migration_1[] = {
	"CREATE TABLE IF NOT EXISTS accounts ("
	" id BIGINT UNSIGNED NOT NULL PRIMARY KEY,"
	" flags INT UNSIGNED NOT NULL,"
	" debits_posted DECIMAL(38,0) NOT NULL,"
	" credits_posted DECIMAL(38,0) NOT NULL,"
	" credits_buffered DECIMAL(38,0) NOT NULL,"
	" updated_epoch BIGINT UNSIGNED NOT NULL"
	") ENGINE=InnoDB",
	"CREATE TABLE IF NOT EXISTS transfers ("
	" lsn BIGINT UNSIGNED NOT NULL PRIMARY KEY,"
	" id BIGINT UNSIGNED NOT NULL,"
	" debit BIGINT UNSIGNED NOT NULL,"
	" credit BIGINT UNSIGNED NOT NULL,"
	" amount BIGINT UNSIGNED NOT NULL,"
	" code SMALLINT UNSIGNED NOT NULL,"
	" ref BIGINT UNSIGNED NOT NULL,"
	" linked TINYINT NOT NULL,"
	" epoch BIGINT UNSIGNED NOT NULL,"
	" ts DATETIME(6) NOT NULL,"
	" status VARCHAR(24) NOT NULL,"
	" debit_balance_after DECIMAL(39,0) NULL,"
	" credit_balance_after DECIMAL(39,0) NULL,"
	" buffered TINYINT NOT NULL,"
	" KEY by_id (id),"
	" KEY by_ref (ref),"
	" KEY debit_history (debit, ts),"
	" KEY credit_history (credit, ts)"
	") ENGINE=InnoDB",
	"CREATE TABLE IF NOT EXISTS batches ("
	" account BIGINT UNSIGNED NOT NULL,"
	" lsn BIGINT UNSIGNED NOT NULL,"
	" epoch BIGINT UNSIGNED NOT NULL,"
	" ts DATETIME(6) NOT NULL,"
	" count INT UNSIGNED NOT NULL,"
	" sum DECIMAL(38,0) NOT NULL,"
	" first_id BIGINT UNSIGNED NOT NULL,"
	" last_id BIGINT UNSIGNED NOT NULL,"
	" reason VARCHAR(16) NOT NULL,"
	" PRIMARY KEY (account, lsn)"
	") ENGINE=InnoDB",
	"CREATE TABLE IF NOT EXISTS dove_state ("
	" id TINYINT UNSIGNED NOT NULL PRIMARY KEY,"
	" applied_epoch BIGINT UNSIGNED NOT NULL,"
	" transfers BIGINT UNSIGNED NOT NULL,"
	" updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)"
	") ENGINE=InnoDB",
	"INSERT IGNORE INTO dove_state (id, applied_epoch, transfers) "
	"VALUES (1, 0, 0)",
	/* A buffered credit is merged by its account's first batch of a
	 * later epoch (buffers fill at the end of an epoch; a merge takes
	 * the whole buffer): found by a query, so the projection never
	 * rewrites a transfer row. */
	/* An account row is written when its posted balance changes (and
	 * at merges), not for each buffered credit: credits_buffered in it
	 * is as of updated_epoch; this adds the credits buffered since. */
	"CREATE OR REPLACE VIEW account_balances AS"
	" SELECT a.id, a.flags, a.debits_posted, a.credits_posted,"
	"  a.credits_buffered + COALESCE((SELECT SUM(t.amount) FROM transfers t"
	"   WHERE t.credit = a.id AND t.buffered = 1"
	"   AND t.epoch > a.updated_epoch), 0) AS credits_buffered,"
	"  a.updated_epoch"
	" FROM accounts a",
	"CREATE OR REPLACE VIEW transfer_batches AS"
	" SELECT t.lsn, t.id, t.credit AS account, t.epoch,"
	"  (SELECT b.lsn FROM batches b WHERE b.account = t.credit"
	"   AND b.epoch > t.epoch ORDER BY b.epoch, b.lsn LIMIT 1) AS batch_lsn"
	" FROM transfers t WHERE t.buffered = 1",
	NULL
};

static const char *const *const migrations[SCHEMA_VERSION + 1] = {
	NULL, migration_1,
};

/* A transfer row for the bulk (array-bound) prepared INSERT: the server
 * parses the statement once per connection, not once per row. */
#define BULK_ROWS 16384
struct trow {
	uint64_t lsn, id, debit, credit, amount, ref, epoch;
	uint16_t code;
	int8_t linked, buffered;
	MYSQL_TIME ts; /* binary: the server parses no text for it */
	char status[24];
	unsigned long status_len;
	/* Balances-after as integers (DECIMAL(39,0) columns take them
	 * without parsing); a value beyond int64 goes by text instead. */
	int64_t dba, cba;
	char dba_ind, cba_ind;
};

/* An account row for the bulk upsert (counters within 64 bits; wider
 * ones go by text). */
struct arow {
	uint64_t id;
	uint32_t flags;
	int64_t dp, cp, cb;
	uint64_t epoch;
};

/* A bulk statement: prepared once per connection, its parameters bound
 * row-wise to an array of n rows, executed in one round trip. */
struct bulk {
	MYSQL_STMT *st;
	uint32_t n;
	const char *what;
};

/* A growable text buffer for statements. */
struct sb {
	char *s;
	size_t len, cap;
	uint32_t rows;
};

struct store_projection {
	struct store_mariadb_config cfg;
	pthread_t thread;
	_Atomic bool stop;
	_Atomic uint64_t target; /* durable and executed through here */
	_Atomic bool failback;
	_Atomic uint64_t verify_asked;
	struct ring_event ev;

	/* Writer thread only. */
	MYSQL *db;
	uint32_t host; /* the one in use or being tried */
	settle_engine *eng;
	store_wal_reader *reader;
	uint64_t pos; /* epochs the replica has run */
	bool dirty;   /* the replica ran epochs no host has */
	struct sb ba;     /* batch rows: few, by text */
	struct bulk ins;  /* transfer rows into p->rows */
	struct bulk ups;  /* account rows into p->arows */
	struct trow *rows;
	struct arow *arows;
	uint8_t *touched; /* bitmap by ledger index */
	uint32_t *touched_ix, ntouched;
	uint64_t tx_transfers;
	uint64_t used_ns; /* monotonic: the connection's last success */
	char ts[32];  /* the epoch's time as DATETIME(6) text */
	MYSQL_TIME ts_bin; /* ...and as the bulk INSERT binds it */

	/* Shared with readers of stats, under mu. */
	pthread_mutex_t mu;
	struct store_projection_stats st;
};

/* ---- text ----------------------------------------------------------------- */

static void
sb_need(struct sb *b, size_t more)
{
	if (b->len + more + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 65536;
	while (cap < b->len + more + 1)
		cap *= 2;
	char *s = realloc(b->s, cap);
	DOVE_ASSERT(s != NULL); /* a statement of a few MiB */
	b->s = s;
	b->cap = cap;
}

static void __attribute__((format(printf, 2, 3)))
sb_printf(struct sb *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	sb_need(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

static void
sb_reset(struct sb *b)
{
	b->len = 0;
	b->rows = 0;
	if (b->s)
		b->s[0] = '\0';
}

/* 128-bit decimal text, NUL-terminated (buf: 48 bytes). */
static const char *
dec(settle_i128 v, char *buf)
{
	buf[settle_i128_text(buf, v)] = '\0';
	return buf;
}

/* ---- stats and errors -------------------------------------------------------- */

static void
host_state(store_projection *p, uint32_t h, const char *state, const char *err)
{
	pthread_mutex_lock(&p->mu);
	snprintf(p->st.hosts[h].state, sizeof(p->st.hosts[h].state), "%s", state);
	if (err)
		snprintf(p->st.hosts[h].error, sizeof(p->st.hosts[h].error), "%s",
			 err);
	pthread_mutex_unlock(&p->mu);
}

static void
drop_conn(store_projection *p)
{
	for (struct bulk *b = &p->ins; b <= &p->ups; b++) {
		if (b->st)
			mysql_stmt_close(b->st);
		b->st = NULL;
	}
	if (p->db)
		mysql_close(p->db);
	p->db = NULL;
}

/* A host failed: say why (naming it), drop the connection, move on. */
static void
fail_host(store_projection *p, const char *what)
{
	/* The statement's error if a prepared statement failed. */
	const char *why = !p->db ? "not connected"
			  : *mysql_error(p->db) ? mysql_error(p->db)
			  : p->ins.st && *mysql_stmt_error(p->ins.st)
				  ? mysql_stmt_error(p->ins.st)
			  : p->ups.st && *mysql_stmt_error(p->ups.st)
				  ? mysql_stmt_error(p->ups.st)
				  : "unknown error";
	char msg[512];
	snprintf(msg, sizeof(msg), "%s: %s", what, why);
	DOVE_WARN("mariadb %s: %s", p->st.hosts[p->host].name, msg);
	host_state(p, p->host, "failed", msg);
	drop_conn(p);
	pthread_mutex_lock(&p->mu);
	p->st.failures++;
	p->st.connected = false;
	pthread_mutex_unlock(&p->mu);
	p->host = (p->host + 1) % p->st.nhosts;
}

static int
q(store_projection *p, const char *sql, size_t len)
{
	return mysql_real_query(p->db, sql, len) == 0 ? 0 : -1;
}

static int
qs(store_projection *p, const char *sql)
{
	return q(p, sql, strlen(sql));
}

/* One unsigned number from a one-row query; -1 on error or no row. */
static int
query_u64(store_projection *p, const char *sql, uint64_t *out, bool *none)
{
	if (qs(p, sql) != 0)
		return -1;
	MYSQL_RES *r = mysql_store_result(p->db);
	if (r == NULL)
		return -1;
	MYSQL_ROW row = mysql_fetch_row(r);
	if (none)
		*none = row == NULL;
	if (row && row[0])
		*out = strtoull(row[0], NULL, 10);
	mysql_free_result(r);
	return row || none ? 0 : -1;
}

/* ---- connecting ---------------------------------------------------------------- */

static int
connect_host(store_projection *p)
{
	const char *name = p->st.hosts[p->host].name;
	MYSQL *db = mysql_init(NULL);
	DOVE_ASSERT(db != NULL);
	unsigned ct = (unsigned)p->cfg.connect_timeout_s,
		 rt = (unsigned)p->cfg.read_timeout_s,
		 wt = (unsigned)p->cfg.write_timeout_s;
	mysql_options(db, MYSQL_OPT_CONNECT_TIMEOUT, &ct);
	mysql_options(db, MYSQL_OPT_READ_TIMEOUT, &rt);
	mysql_options(db, MYSQL_OPT_WRITE_TIMEOUT, &wt);
	char host[256] = "";
	const char *sock = NULL;
	unsigned port = 0;
	if (strncmp(name, "unix:", 5) == 0) {
		sock = name + 5;
		snprintf(host, sizeof(host), "localhost");
	} else {
		snprintf(host, sizeof(host), "%s", name);
		char *colon = strrchr(host, ':');
		port = (unsigned)atoi(colon + 1);
		*colon = '\0';
	}
	p->db = db;
	if (mysql_real_connect(db, host, p->cfg.user, p->cfg.password,
			       p->cfg.database, port, sock, 0) == NULL) {
		fail_host(p, "cannot connect");
		return -1;
	}
	mysql_autocommit(db, 0);
	return 0;
}

static int
bulk_prepare(store_projection *p, struct bulk *b, const char *sql,
	     MYSQL_BIND *binds, size_t row_size)
{
	b->n = 0;
	b->st = mysql_stmt_init(p->db);
	if (b->st == NULL || mysql_stmt_prepare(b->st, sql, strlen(sql)) ||
	    mysql_stmt_attr_set(b->st, STMT_ATTR_ROW_SIZE, &row_size) ||
	    mysql_stmt_bind_param(b->st, binds))
		return -1;
	return 0;
}

/* Send the rows gathered so far in one bulk execution. */
static int
bulk_flush(struct bulk *b)
{
	if (b->n == 0)
		return 0;
	unsigned int n = b->n;
	b->n = 0;
	if (mysql_stmt_attr_set(b->st, STMT_ATTR_ARRAY_SIZE, &n) ||
	    mysql_stmt_execute(b->st)) {
		DOVE_WARN("mariadb: bulk %s: %s", b->what, mysql_stmt_error(b->st));
		return -1;
	}
	return 0;
}

/* Both bulk statements, bound to the first row of their arrays. */
static int
prepare_bulk(store_projection *p)
{
	struct trow *r = p->rows;
#define BIND(type, field, uns)                                                \
	{ .buffer_type = MYSQL_TYPE_##type, .buffer = (field), .is_unsigned = (uns) }
	MYSQL_BIND tb[14] = {
		BIND(LONGLONG, &r->lsn, 1),    BIND(LONGLONG, &r->id, 1),
		BIND(LONGLONG, &r->debit, 1),  BIND(LONGLONG, &r->credit, 1),
		BIND(LONGLONG, &r->amount, 1), BIND(SHORT, &r->code, 1),
		BIND(LONGLONG, &r->ref, 1),    BIND(TINY, &r->linked, 0),
		BIND(LONGLONG, &r->epoch, 1),  BIND(DATETIME, &r->ts, 0),
		BIND(STRING, r->status, 0),    BIND(LONGLONG, &r->dba, 0),
		BIND(LONGLONG, &r->cba, 0),    BIND(TINY, &r->buffered, 0),
	};
	tb[10].length = &r->status_len;
	tb[11].u.indicator = &r->dba_ind;
	tb[12].u.indicator = &r->cba_ind;
	struct arow *a = p->arows;
	MYSQL_BIND ab[6] = {
		BIND(LONGLONG, &a->id, 1), BIND(LONG, &a->flags, 1),
		BIND(LONGLONG, &a->dp, 0), BIND(LONGLONG, &a->cp, 0),
		BIND(LONGLONG, &a->cb, 0), BIND(LONGLONG, &a->epoch, 1),
	};
#undef BIND
	p->ins.what = "transfer insert";
	p->ups.what = "account upsert";
	if (bulk_prepare(p, &p->ins, TRANSFER_INSERT "(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
			 tb, sizeof(struct trow)) != 0)
		return -1;
	return bulk_prepare(p, &p->ups,
			    ACCOUNT_INSERT "(?,?,?,?,?,?)" ACCOUNT_UPSERT, ab,
			    sizeof(struct arow));
}

/* Create or migrate the schema; refuse a newer one. */
static int
migrate(store_projection *p)
{
	if (qs(p, "CREATE TABLE IF NOT EXISTS dove_schema ("
		  " id TINYINT UNSIGNED NOT NULL PRIMARY KEY,"
		  " version INT UNSIGNED NOT NULL) ENGINE=InnoDB") != 0)
		return -1;
	uint64_t v = 0;
	bool none = false;
	if (query_u64(p, "SELECT version FROM dove_schema WHERE id = 1", &v,
		      &none) != 0)
		return -1;
	if (v > SCHEMA_VERSION) {
		char msg[256];
		snprintf(msg, sizeof(msg),
			 "schema version %" PRIu64 " is newer than this doved "
			 "knows (%d): refusing to write",
			 v, SCHEMA_VERSION);
		DOVE_ERROR("mariadb %s: %s", p->st.hosts[p->host].name, msg);
		host_state(p, p->host, "refused", msg);
		return -2;
	}
	for (uint64_t m = v + 1; m <= SCHEMA_VERSION; m++) {
		for (const char *const *s = migrations[m]; *s; s++)
			if (qs(p, *s) != 0)
				return -1;
		char sql[128];
		snprintf(sql, sizeof(sql),
			 "INSERT INTO dove_schema (id, version) VALUES (1, %" PRIu64
			 ") ON DUPLICATE KEY UPDATE version = %" PRIu64,
			 m, m);
		if (qs(p, sql) != 0 || mysql_commit(p->db) != 0)
			return -1;
		DOVE_INFO("mariadb %s: schema migrated to version %" PRIu64,
			  p->st.hosts[p->host].name, m);
	}
	mysql_commit(p->db);
	return 0;
}

/* ---- the replica ------------------------------------------------------------------ */

struct run_ctx {
	store_projection *p;
	bool project; /* write rows, or only catch the replica up */
	int rc;
};

static void
touch(store_projection *p, uint32_t ix)
{
	if (ix == UINT32_MAX || (p->touched[ix / 8] & (1u << (ix % 8))))
		return;
	p->touched[ix / 8] |= (uint8_t)(1u << (ix % 8));
	p->touched_ix[p->ntouched++] = ix;
}

/* Cut a multi-row INSERT that grew past STMT_MAX: run it, start over. */
static int
flush_insert(store_projection *p, struct sb *b)
{
	if (b->rows == 0)
		return 0;
	int rc = q(p, b->s, b->len);
	sb_reset(b);
	return rc;
}

static void
epoch_time(store_projection *p, uint64_t ns)
{
	time_t t = (time_t)(ns / 1000000000u);
	struct tm tm;
	gmtime_r(&t, &tm);
	char d[24];
	strftime(d, sizeof(d), "%Y-%m-%d %H:%M:%S", &tm);
	snprintf(p->ts, sizeof(p->ts), "%s.%06u", d,
		 (unsigned)(ns % 1000000000u / 1000u));
	p->ts_bin = (MYSQL_TIME){
		.year = (unsigned)tm.tm_year + 1900, .month = (unsigned)tm.tm_mon + 1,
		.day = (unsigned)tm.tm_mday, .hour = (unsigned)tm.tm_hour,
		.minute = (unsigned)tm.tm_min, .second = (unsigned)tm.tm_sec,
		.second_part = (unsigned long)(ns % 1000000000u / 1000u),
		.time_type = MYSQL_TIMESTAMP_DATETIME,
	};
}

static bool
fits64(settle_i128 v)
{
	return v >= INT64_MIN && v <= INT64_MAX;
}

/* A row with a value past 64 bits (possible only after ~9.2e18 minor
 * units) goes in by text, alone. */
static int
insert_wide(store_projection *p, const struct settle_op *op,
	    const char *status, const struct settle_post *ps, bool ok,
	    uint64_t epoch)
{
	char d1[48], d2[48], sql[768];
	const struct settle_transfer *t = &op->u.transfer;
	bool cb = ok && !ps->credit_buffered;
	snprintf(sql, sizeof(sql),
		 TRANSFER_INSERT "(%" PRIu64 ",%" PRIu64
		 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%u,%" PRIu64 ",%d,%" PRIu64
		 ",'%s','%s',%s,%s,%d)",
		 op->lsn, t->id, t->debit, t->credit, t->amount, t->code, t->ref,
		 (t->flags & SETTLE_TRANSFER_LINKED) != 0, epoch, p->ts, status,
		 ok ? dec(ps->debit_after, d1) : "NULL",
		 cb ? dec(ps->credit_after, d2) : "NULL", ok && ps->credit_buffered);
	return qs(p, sql);
}

static int
upsert_wide(store_projection *p, const struct settle_account *a)
{
	char d1[48], d2[48], d3[48], sql[512];
	snprintf(sql, sizeof(sql),
		 ACCOUNT_INSERT "(%" PRIu64 ",%u,%s,%s,%s,%" PRIu64 ")"
		 ACCOUNT_UPSERT,
		 a->id, a->flags & SETTLE_ACCOUNT_FLAGS_ALL,
		 dec((settle_i128)a->debits_posted, d1),
		 dec((settle_i128)a->credits_posted, d2),
		 dec((settle_i128)a->credits_buffered, d3), p->pos);
	return qs(p, sql);
}

/* One epoch through the replica, and (project) its rows into the open
 * transaction's statements. */
static int
run_epoch(void *arg, const struct store_wal_epoch *ep)
{
	struct run_ctx *c = arg;
	store_projection *p = c->p;
	size_t off = 0;
	struct store_wal_record wr;
	while (store_wal_record_next(ep, &off, &wr))
		if (settle_engine_add(p->eng, wr.type, wr.data, wr.len) != 0)
			return c->rc = -DOVE_ECORRUPT;
	struct settle_engine_out out;
	if (settle_engine_run(p->eng, ep->epoch, ep->first_lsn, &out) != 0)
		return c->rc = -DOVE_ECORRUPT;
	p->pos = ep->epoch;
	if (!c->project)
		return 0;
	p->dirty = true;
	epoch_time(p, ep->time_ns);
	settle_seq *sq = settle_engine_seq(p->eng);
	char d1[48];
	for (uint32_t i = 0; i < out.n; i++) {
		const struct settle_op *op = &out.ops[i];
		if (op->type == SETTLE_REC_ACCOUNT) {
			touch(p, op->ix);
			continue;
		}
		if (op->type != SETTLE_REC_TRANSFER)
			continue;
		const struct settle_transfer *t = &op->u.transfer;
		const struct settle_post *ps = &out.posts[i];
		bool ok = out.results[i] == SETTLE_OK;
		const char *status =
			settle_result_name((enum settle_result)out.results[i]);
		bool cb = ok && !ps->credit_buffered;
		p->tx_transfers++;
		/* A buffered credit is a transfer row only: its account's
		 * row is written at the merge (one balance update per
		 * batch); `account_balances` adds what is still buffered. */
		if (ok)
			touch(p, op->ix);
		if (cb)
			touch(p, op->credit_ix);
		if ((ok && !fits64(ps->debit_after)) ||
		    (cb && !fits64(ps->credit_after))) {
			if (bulk_flush(&p->ins) != 0 ||
			    insert_wide(p, op, status, ps, ok, ep->epoch) != 0)
				return c->rc = -EIO;
			continue;
		}
		struct trow *r = &p->rows[p->ins.n++];
		r->lsn = op->lsn;
		r->id = t->id;
		r->debit = t->debit;
		r->credit = t->credit;
		r->amount = t->amount;
		r->code = t->code;
		r->ref = t->ref;
		r->linked = (t->flags & SETTLE_TRANSFER_LINKED) != 0;
		r->epoch = ep->epoch;
		r->ts = p->ts_bin;
		/* Row-wise binding needs the text in the row: a copy,
		 * not a format, per transfer. */
		size_t slen = strlen(status);
		DOVE_ASSERT(slen < sizeof(r->status));
		memcpy(r->status, status, slen);
		r->status_len = (unsigned long)slen;
		r->dba_ind = ok ? STMT_INDICATOR_NONE : STMT_INDICATOR_NULL;
		r->dba = ok ? (int64_t)ps->debit_after : 0;
		r->cba_ind = cb ? STMT_INDICATOR_NONE : STMT_INDICATOR_NULL;
		r->cba = cb ? (int64_t)ps->credit_after : 0;
		r->buffered = ok && ps->credit_buffered;
		if (p->ins.n == BULK_ROWS && bulk_flush(&p->ins) != 0)
			return c->rc = -EIO;
	}
	for (uint32_t i = 0; i < out.nbatches; i++) {
		const struct settle_batch *b = &out.batches[i];
		if (p->ba.rows == 0)
			sb_printf(&p->ba, "INSERT INTO batches (account, lsn, "
				  "epoch, ts, count, sum, first_id, last_id, "
				  "reason) VALUES ");
		sb_printf(&p->ba,
			  "%s(%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",'%s',%u,%s,"
			  "%" PRIu64 ",%" PRIu64 ",'%s')",
			  p->ba.rows ? "," : "", b->account, b->lsn, ep->epoch,
			  p->ts, b->count, dec((settle_i128)b->sum, d1),
			  b->first_id, b->last_id,
			  settle_merge_reason_name(b->reason));
		p->ba.rows++;
		touch(p, settle_seq_account_ix(sq, b->account));
		if (p->ba.len > STMT_MAX && flush_insert(p, &p->ba) != 0)
			return c->rc = -EIO;
	}
	return 0;
}

/* Rebuild the replica at epoch `at`: the newest snapshot at or below it,
 * then the log up to it (nothing written). */
static int
rebuild(store_projection *p, uint64_t at)
{
	settle_engine_destroy(p->eng);
	p->eng = NULL;
	store_wal_reader_close(p->reader);
	p->reader = NULL;
	int rc = settle_engine_create(p->cfg.accounts_max, p->cfg.dedup_window,
				      p->cfg.hot_max, 65536, &p->eng);
	if (rc != 0)
		return rc;
	p->pos = 0;
	struct store_snap snap;
	int got = store_snap_load_upto(p->cfg.snapshot_dir, at, &snap);
	if (got < 0)
		return got;
	if (got == 1) {
		rc = store_snap_restore(&snap, settle_engine_seq(p->eng),
					settle_engine_ledger(p->eng));
		p->pos = snap.epoch;
		store_snap_release(&snap);
		if (rc != 0)
			return rc;
	}
	rc = store_wal_reader_open(p->cfg.wal_dir, p->pos + 1, &p->reader);
	if (rc != 0) {
		DOVE_ERROR("mariadb: the log in %s no longer holds epoch %" PRIu64
			   ", which the projection needs to rebuild at %" PRIu64
			   ": %s",
			   p->cfg.wal_dir, p->pos + 1, at, dove_strerror(rc));
		return rc;
	}
	struct run_ctx c = { p, false, 0 };
	if (p->pos < at) {
		rc = store_wal_reader_read(p->reader, at, run_epoch, &c);
		if (rc < 0)
			return rc;
	}
	p->dirty = false;
	DOVE_INFO("mariadb: projection replica rebuilt at epoch %" PRIu64, at);
	return p->pos == at ? 0 : -EIO;
}

static void
untouch(store_projection *p)
{
	for (uint32_t i = 0; i < p->ntouched; i++)
		p->touched[p->touched_ix[i] / 8] = 0;
	p->ntouched = 0;
}

/* One transaction: epochs pos+1 .. (up to target, batch_max_rows), their
 * rows, one balance row per touched account, applied_epoch moved. */
static int
project_batch(store_projection *p, uint64_t target)
{
	uint64_t from = p->pos;
	p->tx_transfers = 0;
	p->ins.n = p->ups.n = 0;
	sb_reset(&p->ba);
	struct run_ctx c = { p, true, 0 };
	while (p->pos < target && p->tx_transfers < p->cfg.batch_max_rows) {
		int rc = store_wal_reader_read(p->reader, p->pos + 1, run_epoch, &c);
		if (rc < 0 || c.rc != 0) {
			untouch(p);
			return rc < 0 ? rc : c.rc;
		}
	}
	int rc = bulk_flush(&p->ins);
	if (rc == 0)
		rc = flush_insert(p, &p->ba);
	const settle_ledger *l = settle_engine_ledger(p->eng);
	uint64_t hot_rows = 0;
	for (uint32_t i = 0; rc == 0 && i < p->ntouched; i++) {
		const struct settle_account *a = settle_ledger_at(l, p->touched_ix[i]);
		if (a == NULL)
			continue;
		hot_rows += (a->flags & SETTLE_ACCOUNT_HOT_NOW) != 0;
		if (a->debits_posted > INT64_MAX || a->credits_posted > INT64_MAX ||
		    a->credits_buffered > INT64_MAX) {
			rc = bulk_flush(&p->ups) || upsert_wide(p, a) ? -1 : 0;
			continue;
		}
		p->arows[p->ups.n++] = (struct arow){
			a->id, a->flags & SETTLE_ACCOUNT_FLAGS_ALL,
			(int64_t)a->debits_posted, (int64_t)a->credits_posted,
			(int64_t)a->credits_buffered, p->pos,
		};
		if (p->ups.n == BULK_ROWS)
			rc = bulk_flush(&p->ups);
	}
	if (rc == 0)
		rc = bulk_flush(&p->ups);
	uint32_t accounts = p->ntouched;
	untouch(p);
	if (rc == 0) {
		char sql[256];
		snprintf(sql, sizeof(sql),
			 "UPDATE dove_state SET applied_epoch = %" PRIu64
			 ", transfers = transfers + %" PRIu64
			 " WHERE id = 1 AND applied_epoch = %" PRIu64,
			 p->pos, p->tx_transfers, from);
		rc = qs(p, sql);
		/* Someone else moved it: not ours to write. */
		if (rc == 0 && mysql_affected_rows(p->db) != 1) {
			DOVE_WARN("mariadb %s: applied_epoch is no longer %" PRIu64
				  "; resynchronising",
				  p->st.hosts[p->host].name, from);
			rc = -2;
		}
	}
	if (rc == 0 && mysql_commit(p->db) != 0)
		rc = -1;
	if (rc != 0) {
		if (p->db)
			mysql_rollback(p->db);
		return rc;
	}
	p->dirty = false;
	pthread_mutex_lock(&p->mu);
	p->st.applied_epoch = p->pos;
	p->st.transactions++;
	p->st.transfers += p->tx_transfers;
	p->st.account_rows += accounts;
	p->st.hot_account_rows += hot_rows;
	p->st.hosts[p->host].applied_epoch = p->pos;
	pthread_mutex_unlock(&p->mu);
	return 0;
}

/* ---- verify ------------------------------------------------------------------------ */

/* Compare every account row with the replica (at applied_epoch, which is
 * where the log-driven ledger was at that epoch), and the transfer count. */
static void
verify(store_projection *p)
{
	uint64_t diffs = 0, rows = 0, seen_transfers = 0, counted = 0;
	char first[256] = "";
	const settle_ledger *l = settle_engine_ledger(p->eng);
	settle_seq *sq = settle_engine_seq(p->eng);
	int rc = qs(p, "SELECT id, flags, debits_posted, credits_posted, "
		       "credits_buffered FROM account_balances");
	MYSQL_RES *r = rc == 0 ? mysql_use_result(p->db) : NULL;
	char d1[48], d2[48], d3[48];
	MYSQL_ROW row;
	while (r && (row = mysql_fetch_row(r)) != NULL) {
		rows++;
		uint64_t id = strtoull(row[0], NULL, 10);
		const struct settle_account *a =
			settle_ledger_at(l, settle_seq_account_ix(sq, id));
		bool same = a && a->id == id &&
			    strcmp(row[2], dec((settle_i128)a->debits_posted, d1)) == 0 &&
			    strcmp(row[3], dec((settle_i128)a->credits_posted, d2)) == 0 &&
			    strcmp(row[4], dec((settle_i128)a->credits_buffered, d3)) == 0;
		if (!same && diffs++ == 0)
			snprintf(first, sizeof(first),
				 "account %" PRIu64 ": MariaDB %s/%s/%s, ledger %s",
				 id, row[2], row[3], row[4],
				 a ? "differs" : "has no such account");
	}
	if (r)
		mysql_free_result(r);
	uint64_t in_ledger = settle_seq_accounts(sq);
	bool ok = r != NULL &&
		  query_u64(p, "SELECT COUNT(*) FROM transfers", &seen_transfers,
			    NULL) == 0 &&
		  query_u64(p, "SELECT transfers FROM dove_state WHERE id = 1",
			    &counted, NULL) == 0;
	uint64_t sums_ok = 0;
	ok = ok && query_u64(p, "SELECT SUM(debits_posted) = SUM(credits_posted)"
				" + SUM(credits_buffered) FROM account_balances",
			     &sums_ok, NULL) == 0;
	mysql_commit(p->db);
	pthread_mutex_lock(&p->mu);
	struct store_projection_verify *v = &p->st.verify;
	v->done = atomic_load(&p->verify_asked);
	v->epoch = p->pos;
	v->ran = ok;
	v->account_rows = rows;
	v->ledger_accounts = in_ledger;
	/* A comparison that could not run found no difference: it says
	 * so (ran false, the error) and the operator asks again. */
	v->differences = !ok ? 0
			     : diffs + (rows != in_ledger) + (seen_transfers != counted) +
				       (rows > 0 && !sums_ok);
	v->transfer_rows = seen_transfers;
	v->transfers_logged = counted;
	v->ok = ok && v->differences == 0;
	snprintf(v->first, sizeof(v->first), "%s",
		 !ok ? mysql_error(p->db)
		 : diffs ? first
		 : rows != in_ledger ? "account rows and ledger accounts differ in number"
		 : seen_transfers != counted ? "transfer rows and transfers projected differ"
		 : rows > 0 && !sums_ok ? "SUM(debits) != SUM(credits) + SUM(buffered)"
					 : "");
	pthread_mutex_unlock(&p->mu);
	unsigned e = mysql_errno(p->db);
	if (!ok && (e == CR_SERVER_GONE_ERROR || e == CR_SERVER_LOST))
		fail_host(p, "verify"); /* the next write reconnects first */
}

/* ---- the thread ------------------------------------------------------------------------ */

static bool
has_work(void *arg)
{
	store_projection *p = arg;
	return atomic_load(&p->stop) || atomic_load(&p->target) > p->pos ||
	       atomic_load(&p->failback) ||
	       atomic_load(&p->verify_asked) != p->st.verify.done;
}

static void
nap(store_projection *p, int ms)
{
	const struct ring_wait wait = RING_WAIT_DEFAULT;
	ring_event_wait(&p->ev, has_work, p, &wait, ms);
}

static bool
stopping(void *arg)
{
	store_projection *p = arg;
	return atomic_load(&p->stop) || atomic_load(&p->failback);
}

/* After a failure: wait ms whatever the work (there is always work when
 * the projection lags), unless told to stop or fail back. */
static void
back_off(store_projection *p, int ms)
{
	const struct ring_wait wait = RING_WAIT_DEFAULT;
	ring_event_wait(&p->ev, stopping, p, &wait, ms);
}

/*
 * After a quiet second, is the connection still there? A server closes
 * idle connections (wait_timeout, often minutes in production); that is
 * not the host failing, and must not move a writer with several hosts
 * off its preferred one. A closed connection is dropped and the same host
 * connected again; only if that fails does the host count as failed.
 */
static bool
still_connected(store_projection *p)
{
	uint64_t now = dove_clock_ns(CLOCK_MONOTONIC);
	if (now - p->used_ns < 1000000000u)
		return true;
	if (mysql_ping(p->db) == 0) {
		p->used_ns = now;
		return true;
	}
	DOVE_INFO("mariadb %s: the connection was closed while idle (%s); "
		  "connecting again",
		  p->st.hosts[p->host].name, mysql_error(p->db));
	drop_conn(p);
	pthread_mutex_lock(&p->mu);
	p->st.connected = false;
	pthread_mutex_unlock(&p->mu);
	return false;
}

static void *
writer_main(void *arg)
{
	store_projection *p = arg;
	dove_log_thread_name("mariadb");
	while (!atomic_load(&p->stop)) {
		if (atomic_exchange(&p->failback, false) && p->host != 0) {
			drop_conn(p);
			host_state(p, p->host, "standby", NULL);
			p->host = 0;
		}
		if (p->db == NULL) {
			uint32_t tried = p->host;
			if (connect_host(p) != 0) {
				if (p->host <= tried) /* a whole round failed */
					back_off(p, 1000);
				continue;
			}
			int m = migrate(p);
			uint64_t applied = 0;
			bool none = false;
			if (m == 0 && query_u64(p, "SELECT applied_epoch FROM dove_state"
					       " WHERE id = 1", &applied, &none) != 0)
				m = -1;
			if (m == 0 && mysql_commit(p->db) != 0)
				m = -1;
			if (m == 0 && prepare_bulk(p) != 0)
				m = -1;
			if (m != 0) {
				if (m == -1) {
					/* It takes connections but not our
					 * statements (read-only, privileges):
					 * not in a loop. */
					fail_host(p, "schema");
					if (p->host <= tried)
						back_off(p, 1000);
				} else {
					drop_conn(p);
					p->host = (p->host + 1) % p->st.nhosts;
					back_off(p, 1000);
				}
				continue;
			}
			uint64_t target = atomic_load(&p->target);
			if (applied > target) {
				char msg[256];
				snprintf(msg, sizeof(msg),
					 "applied_epoch %" PRIu64 " is ahead of this "
					 "log (%" PRIu64 "): another doved's database?",
					 applied, target);
				DOVE_ERROR("mariadb %s: %s; not writing",
					   p->st.hosts[p->host].name, msg);
				host_state(p, p->host, "refused", msg);
				drop_conn(p);
				back_off(p, 1000);
				continue;
			}
			/* Catch the replica up to this host, or rebuild it
			 * when it ran past what the host has. */
			int rc = 0;
			if (p->eng == NULL || p->dirty || p->pos > applied) {
				rc = rebuild(p, applied);
			} else if (p->pos < applied) {
				struct run_ctx c = { p, false, 0 };
				rc = store_wal_reader_read(p->reader, applied,
							   run_epoch, &c);
				rc = rc < 0 ? rc : p->pos == applied ? 0 : -EIO;
			}
			if (rc != 0) {
				char msg[256];
				snprintf(msg, sizeof(msg),
					 "cannot rebuild the projection at epoch %"
					 PRIu64 ": %s", applied, dove_strerror(rc));
				DOVE_ERROR("mariadb %s: %s", p->st.hosts[p->host].name,
					   msg);
				host_state(p, p->host, "stopped", msg);
				/* A half-built replica is no replica: the next
				 * attempt starts from scratch. */
				settle_engine_destroy(p->eng);
				p->eng = NULL;
				store_wal_reader_close(p->reader);
				p->reader = NULL;
				drop_conn(p);
				back_off(p, 5000);
				continue;
			}
			DOVE_INFO("mariadb %s: connected; projecting from epoch "
				  "%" PRIu64, p->st.hosts[p->host].name, applied + 1);
			pthread_mutex_lock(&p->mu);
			p->st.connected = true;
			p->st.active = p->host;
			p->st.applied_epoch = applied;
			p->st.hosts[p->host].applied_epoch = applied;
			pthread_mutex_unlock(&p->mu);
			host_state(p, p->host, "active", "");
			p->used_ns = dove_clock_ns(CLOCK_MONOTONIC);
		}
		bool verify_asked = atomic_load(&p->verify_asked) != p->st.verify.done;
		uint64_t target = atomic_load(&p->target);
		if (!verify_asked && p->pos >= target) {
			nap(p, 200);
			continue;
		}
		if (!still_connected(p))
			continue;
		if (verify_asked) {
			verify(p);
			continue;
		}
		int rc = project_batch(p, target);
		if (rc == 0)
			p->used_ns = dove_clock_ns(CLOCK_MONOTONIC);
		if (rc == -DOVE_ECORRUPT) {
			DOVE_ERROR("mariadb: the log and the projection's replica "
				   "disagree at epoch %" PRIu64 "; stopping the "
				   "projection", p->pos + 1);
			host_state(p, p->host, "stopped", "log and replica disagree");
			break;
		}
		if (rc != 0)
			fail_host(p, "write");
	}
	drop_conn(p);
	return NULL;
}

/* ---- the interface ------------------------------------------------------------------- */

int
store_projection_start(const struct store_mariadb_config *cfg,
		       store_projection **out)
{
	store_projection *p = calloc(1, sizeof(*p));
	if (p == NULL)
		return -ENOMEM;
	p->cfg = *cfg;
	pthread_mutex_init(&p->mu, NULL);
	ring_event_init(&p->ev, false);
	for (const char *h = cfg->hosts; *h && p->st.nhosts < STORE_HOSTS_MAX;) {
		size_t len = strcspn(h, ",");
		struct store_projection_host *x = &p->st.hosts[p->st.nhosts++];
		snprintf(x->name, sizeof(x->name), "%.*s", (int)len, h);
		snprintf(x->state, sizeof(x->state), "standby");
		h += len + (h[len] == ',');
	}
	if (p->st.nhosts == 0) {
		free(p);
		return -EINVAL;
	}
	p->rows = calloc(BULK_ROWS, sizeof(struct trow));
	p->arows = calloc(BULK_ROWS, sizeof(struct arow));
	p->touched = calloc(cfg->accounts_max / 8 + 1, 1);
	p->touched_ix = calloc(cfg->accounts_max, sizeof(uint32_t));
	if (p->touched == NULL || p->touched_ix == NULL || p->rows == NULL ||
	    p->arows == NULL) {
		free(p->touched);
		free(p->touched_ix);
		free(p);
		return -ENOMEM;
	}
	atomic_store(&p->target, cfg->start_epoch);
	if (mysql_library_init(0, NULL, NULL) != 0) {
		free(p);
		return -EIO;
	}
	int rc = pthread_create(&p->thread, NULL, writer_main, p);
	if (rc != 0) {
		free(p);
		return -rc;
	}
	*out = p;
	return 0;
}

void
store_projection_stop(store_projection *p)
{
	if (p == NULL)
		return;
	atomic_store(&p->stop, true);
	ring_event_notify(&p->ev);
	pthread_join(p->thread, NULL);
	settle_engine_destroy(p->eng);
	store_wal_reader_close(p->reader);
	free(p->rows);
	free(p->arows);
	free(p->ba.s);
	free(p->touched);
	free(p->touched_ix);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

void
store_projection_advance(store_projection *p, uint64_t epoch)
{
	atomic_store_explicit(&p->target, epoch, memory_order_release);
	ring_event_notify(&p->ev);
}

void
store_projection_failback(store_projection *p)
{
	atomic_store(&p->failback, true);
	ring_event_notify(&p->ev);
}

uint64_t
store_projection_verify(store_projection *p)
{
	uint64_t n = atomic_fetch_add(&p->verify_asked, 1) + 1;
	ring_event_notify(&p->ev);
	return n;
}

uint64_t
store_projection_applied(store_projection *p)
{
	pthread_mutex_lock(&p->mu);
	uint64_t a = p->st.applied_epoch;
	pthread_mutex_unlock(&p->mu);
	return a;
}

uint64_t
store_projection_keep_from(store_projection *p)
{
	uint64_t base = store_snap_newest_upto(p->cfg.snapshot_dir,
					       store_projection_applied(p));
	if (p->st.nhosts > 1 && base > 0) /* nhosts is fixed at start */
		base = store_snap_newest_upto(p->cfg.snapshot_dir, base - 1);
	return base;
}

void
store_projection_stats_get(store_projection *p, struct store_projection_stats *st)
{
	pthread_mutex_lock(&p->mu);
	*st = p->st;
	pthread_mutex_unlock(&p->mu);
	st->target_epoch = atomic_load(&p->target);
	st->verify_asked = atomic_load(&p->verify_asked);
}
