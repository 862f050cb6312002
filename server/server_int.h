/*
 * server_int.h - declarations shared inside server/ only: the event loop,
 * the process state that admin commands read and change, the admin socket
 * and the pid file.
 */
#ifndef SERVER_INT_H
#define SERVER_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "server.h"

/* ---- event loop (epoll) ----------------------------------------------- */

/*
 * Everything registered with the loop embeds one of these; the loop calls
 * fn with the ready events. One thread runs a loop; nothing here is
 * thread-safe.
 */
struct server_ev {
	int fd;
	void (*fn)(struct server_ev *ev, uint32_t events);
};

struct server_loop {
	int epfd;
	bool stop; /* set by a handler: run() returns after this round */
	/* Called once per round, after the handlers, before sleeping: where
	 * work gathered during the round is batched (WAL appends). */
	void (*before_wait)(void *arg);
	void *before_wait_arg;
};

int server_loop_init(struct server_loop *loop);
void server_loop_close(struct server_loop *loop);
/* Register/modify/forget ev->fd. Return 0 or -errno. */
int server_loop_add(struct server_loop *loop, struct server_ev *ev,
		    uint32_t events);
int server_loop_mod(struct server_loop *loop, struct server_ev *ev,
		    uint32_t events);
void server_loop_del(struct server_loop *loop, struct server_ev *ev);
/* Dispatch events until a handler sets loop->stop. Sleeps in epoll_wait
 * with no timeout when there is nothing to do: an idle loop costs nothing. */
void server_loop_run(struct server_loop *loop);

/* ---- process state ---------------------------------------------------- */

struct server_admin;
struct store_wal;

struct server {
	struct server_loop loop;
	struct server_ev signal_ev; /* signalfd: HUP, TERM, INT */
	struct server_admin *admin;
	struct store_wal *wal;
	pid_t pid;
	struct timespec started; /* CLOCK_MONOTONIC */
	uint64_t reloads_failed;
	char last_reload_error[512]; /* "" when the last reload succeeded */
};

/*
 * Reload the config file the running config came from: load, validate,
 * keep restart-only keys, apply live keys, publish. On failure the running
 * config stays, last_reload_error is set and logged, and -DOVE_ECONFIG or
 * -errno is returned. Main loop thread only.
 */
int server_reload(struct server *srv);

/* Ask the main loop to stop after the current round (admin `shutdown`). */
void server_request_stop(struct server *srv, const char *why);

/* ---- admin socket ------------------------------------------------------ */

/*
 * Bind the admin socket of the published config (replacing a stale socket
 * file that no process answers on), chmod it, listen and register with
 * srv->loop. Returns 0 or -errno with the reason logged.
 */
int server_admin_open(struct server *srv, struct server_admin **out);

/* Close every client and the listener, unlink the socket file. */
void server_admin_close(struct server_admin *adm);

/* ---- settlement core (core.c) ---------------------------------------------- */

struct store_wal;
/* Open the ingress listeners and the settlement path on srv's loop, with
 * the published config. Returns 0 or -errno (logged). Main thread. */
int server_core_open(struct server *srv, struct store_wal *wal);
/* Stop listening, answer everything in flight, free. */
void server_core_close(struct server *srv);

/* Ask for a snapshot: taken as soon as nothing is in flight (new requests
 * wait for that moment; it lasts about one commit). */
void server_core_request_snapshot(void);
/* SIGCHLD: a snapshot child finished. */
void server_core_child_exited(pid_t pid, int status);

/* Admin views of the core (main loop thread, between epochs, so the
 * ledger is at an epoch boundary). */
struct json_buf;
void server_core_account_json(uint64_t id, struct json_buf *j);
void server_core_stats_json(struct json_buf *j);
/* Check the ledger invariants; {"ok": bool, ...}. A walk: not cheap. */
void server_core_verify_json(struct json_buf *j);

/* Admin commands for peak and the hot set: each writes its JSON reply. */
struct admin_cmd;
void server_core_peak_json(const struct admin_cmd *cmd, struct json_buf *j);
void server_core_hot_json(const struct admin_cmd *cmd, struct json_buf *j);
void server_core_merge_json(const struct admin_cmd *cmd, struct json_buf *j);
void server_core_history_json(const struct admin_cmd *cmd, struct json_buf *j);
/* The store: `store`, `store failback`, `store verify`; and the lag
 * object that status and stats carry. */
void server_core_store_json(const struct admin_cmd *cmd, struct json_buf *j);
void server_core_store_lag_json(struct json_buf *j);

/* ---- admin command grammar (admin_cmd.c) ----------------------------------- */

enum admin_verb {
	ADMIN_STATUS,
	ADMIN_CONFIG,
	ADMIN_RELOAD,
	ADMIN_SHUTDOWN,
	ADMIN_STATS,
	ADMIN_ACCOUNT,
	ADMIN_VERIFY,
	ADMIN_SNAPSHOT,
	ADMIN_PEAK,
	ADMIN_HOT,
	ADMIN_MERGE,
	ADMIN_HISTORY,
	ADMIN_STORE,
	ADMIN_NVERBS
};

enum { ADMIN_PEAK_SHOW, ADMIN_PEAK_ON, ADMIN_PEAK_OFF, ADMIN_PEAK_AUTO };
enum { ADMIN_HOT_LIST, ADMIN_HOT_ADD, ADMIN_HOT_DEL };
enum { ADMIN_STORE_SHOW, ADMIN_STORE_FAILBACK, ADMIN_STORE_VERIFY };

struct admin_cmd {
	enum admin_verb verb;
	int op;         /* PEAK, HOT, STORE: one of the ADMIN_<VERB>_* */
	uint64_t id;    /* ACCOUNT, HOT add/del, HISTORY; MERGE (0: all) */
	uint32_t limit; /* HISTORY: 1..1000, 20 when not given */
};

/*
 * Parse one command line of len bytes (no '\n'; a trailing '\r' is
 * ignored); line[len] must be writable (it is set to NUL). Returns true
 * with *cmd filled, or false with the message for the client in err.
 * Pure: the fuzzer's target (tests/fuzz/fuzz_admin.c).
 */
bool admin_parse(char *line, size_t len, struct admin_cmd *cmd, char *err,
		 size_t errlen);
const char *admin_verb_name(enum admin_verb v);

/* ---- UNIX listening sockets (unixsock.c) -------------------------------- */

/*
 * Listen on a UNIX socket at path with the given mode: a stale socket file
 * (nobody answers) is replaced; a path that is not a socket (-EEXIST) or
 * one a live server answers on (-EADDRINUSE) is refused and left alone.
 * Returns the non-blocking listening fd or -errno with the reason in err.
 */
int server_unix_listen(const char *path, mode_t mode, int backlog, char *err,
		       size_t errlen);

/* ---- pid file --------------------------------------------------------- */

/*
 * Create path, take an exclusive lock on it (held until the process exits)
 * and write our pid. When another process holds the lock, returns
 * -DOVE_ELOCKED and sets *holder to its pid (0 if unreadable).
 */
int server_pidfile_open(const char *path, int *fd_out, pid_t *holder);

/* Unlink path (if it is still ours) and close fd. */
void server_pidfile_close(const char *path, int fd);

/* ---- line protocol ------------------------------------------------------ */

#include "settle.h"

/* ---- recent journal (journal.c) ------------------------------------------- */

struct journal;
struct journal *journal_create(uint32_t entries);
void journal_destroy(struct journal *jn);
/* An executed transfer (p: its balances, when r is OK). */
void journal_transfer(struct journal *jn, const struct settle_transfer *t,
		      enum settle_result r, uint64_t epoch, uint64_t lsn,
		      uint64_t time_ns, const struct settle_post *p);
void journal_batch(struct journal *jn, const struct settle_batch *b,
		   uint64_t epoch, uint64_t time_ns);
/* The newest `limit` entries that concern account, newest first. */
void journal_history_json(const struct journal *jn, uint64_t account,
			  uint32_t limit, struct json_buf *j);

enum proto_verb {
	PROTO_BAD = 0, /* unparsable: reply ERR - bad_request */
	PROTO_PING,
	PROTO_ACCOUNT,
	PROTO_TRANSFER,
	PROTO_BALANCE,
};

struct proto_request {
	enum proto_verb verb;
	struct settle_account_rec account;   /* ACCOUNT */
	struct settle_transfer transfer;     /* TRANSFER */
	uint64_t id;                         /* BALANCE; and the id of any */
};

/*
 * Parse one line (without its '\n'; a trailing '\r' is ignored) into *r.
 * Pure; never fails harder than PROTO_BAD. Numbers are unsigned decimal
 * u64 without sign; ids are not 0; an amount above INT64_MAX parses (the
 * sequencer answers overflow); code is a u16.
 */
void proto_parse(const char *line, size_t len, struct proto_request *r);

/* Reply lines, '\n' included. Each returns its length; buf holds at least
 * PROTO_REPLY_MAX bytes (BAL with three 39-digit counters is the longest). */
size_t proto_ok(char *buf, uint64_t id, uint64_t epoch, bool dup);
size_t proto_err(char *buf, uint64_t id /* 0: "-" */, enum settle_result r);
size_t proto_bal(char *buf, const struct settle_account *a);
size_t proto_pong(char *buf);
#define PROTO_REPLY_MAX 192

#endif /* SERVER_INT_H */
