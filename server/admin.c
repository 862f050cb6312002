/*
 * admin.c - the admin socket: a UNIX stream socket, one command per line,
 * one JSON object per reply line, served from the main loop.
 *
 * Each client has a bounded input buffer ([admin] max_line) and a bounded
 * output buffer. A line that does not fit, or a client that does not read
 * its replies, gets that one connection closed; nothing a client does can
 * block the loop or touch another client.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <urcu/urcu-memb.h>

#include "dove.h"
#include "server_int.h"
#include "store.h"

/* Replies are small (the largest, `config`, is a few KiB); a client whose
 * unread replies exceed this is not reading and is dropped. */
#define ADMIN_OUT_CAP (64 * 1024)

struct admin_client {
	struct server_ev ev;
	struct server_admin *adm;
	struct admin_client *prev, *next;
	char *in;
	size_t in_len, in_cap; /* in_cap = max_line at accept time */
	size_t out_len;
	bool closing; /* close once out is flushed; ignore further input */
	char out[ADMIN_OUT_CAP];
};

struct server_admin {
	struct server_ev ev; /* the listener */
	struct server *srv;
	char *path;
	struct admin_client *clients;
	uint32_t nclients;
};

static void client_close(struct admin_client *c);

static void
client_flush(struct admin_client *c)
{
	size_t off = 0;
	while (off < c->out_len) {
		ssize_t n = send(c->ev.fd, c->out + off, c->out_len - off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			client_close(c); /* EPIPE, ECONNRESET: gone */
			return;
		}
		off += (size_t)n;
	}
	memmove(c->out, c->out + off, c->out_len - off);
	c->out_len -= off;
	if (c->out_len == 0 && c->closing) {
		client_close(c);
		return;
	}
	uint32_t want = c->out_len ? EPOLLOUT : (c->closing ? 0 : EPOLLIN);
	int rc = server_loop_mod(&c->adm->srv->loop, &c->ev, want);
	DOVE_ASSERT(rc == 0);
}

/* Queue one reply line. Returns false (and closes) if it does not fit. */
static bool
client_reply(struct admin_client *c, const struct json_buf *j)
{
	DOVE_ASSERT(!j->overflow);
	if (c->out_len + j->len + 1 > sizeof(c->out)) {
		DOVE_WARN("admin client fd %d does not read its replies; "
			  "closing it",
			  c->ev.fd);
		client_close(c);
		return false;
	}
	memcpy(c->out + c->out_len, j->buf, j->len);
	c->out_len += j->len;
	c->out[c->out_len++] = '\n';
	return true;
}

static void
reply_error(struct admin_client *c, const char *msg)
{
	char buf[1024];
	struct json_buf j;
	json_init(&j, buf, sizeof(buf));
	json_obj_begin(&j);
	json_key(&j, "error");
	json_str(&j, msg);
	json_obj_end(&j);
	client_reply(c, &j);
}

static void
json_restart_required(struct json_buf *j, const server_config *cfg)
{
	json_arr_begin(j);
	for (uint32_t i = 0; i < cfg->restart_required_count; i++) {
		const struct server_config_key *k =
			server_config_key(cfg->restart_required[i]);
		char name[128];
		snprintf(name, sizeof(name), "%s.%s", k->section, k->name);
		json_str(j, name);
	}
	json_arr_end(j);
}

static void
cmd_status(struct admin_client *c, const struct admin_cmd *cmd, struct json_buf *j)
{
	(void)cmd;
	struct server *srv = c->adm->srv;
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);

	urcu_memb_read_lock();
	const server_config *cfg = server_config_get();
	json_obj_begin(j);
	json_kv_str(j, "version", DOVE_VERSION);
	json_kv_i64(j, "pid", srv->pid);
	json_kv_i64(j, "uptime_s", now.tv_sec - srv->started.tv_sec);
	json_kv_str(j, "config_path", cfg->path);
	json_kv_u64(j, "config_generation", cfg->generation);
	json_key(j, "restart_required");
	json_restart_required(j, cfg);
	json_key(j, "last_reload_error");
	if (srv->last_reload_error[0])
		json_str(j, srv->last_reload_error);
	else
		json_null(j);
	json_kv_u64(j, "reloads_failed", srv->reloads_failed);
	struct store_wal_stats ws;
	store_wal_stats_get(srv->wal, &ws);
	json_key(j, "wal");
	json_obj_begin(j);
	json_kv_u64(j, "durable_epoch", store_wal_durable_epoch(srv->wal));
	json_kv_u64(j, "segments", ws.segments);
	json_kv_u64(j, "epochs_since_start", ws.epochs);
	/* After a failed fdatasync every write is answered unavailable
	 * until a restart: say so, and why. */
	json_kv_bool(j, "accepting_writes", !ws.poisoned);
	json_kv_u64(j, "failed_commits", ws.failed_commits);
	json_key(j, "error");
	if (ws.error[0])
		json_str(j, ws.error);
	else
		json_null(j);
	json_obj_end(j);
	json_key(j, "store");
	server_core_store_lag_json(j);
	json_obj_end(j);
	urcu_memb_read_unlock();
}

static void
cmd_config(struct admin_client *c, const struct admin_cmd *cmd, struct json_buf *j)
{
	(void)cmd;
	(void)c;
	urcu_memb_read_lock();
	server_config_json(server_config_get(), j);
	urcu_memb_read_unlock();
}

static void
cmd_reload(struct admin_client *c, const struct admin_cmd *cmd, struct json_buf *j)
{
	(void)cmd;
	struct server *srv = c->adm->srv;
	/* Not under the read lock: the reload waits for a grace period. */
	int rc = server_reload(srv);
	json_obj_begin(j);
	json_kv_bool(j, "ok", rc == 0);
	if (rc != 0) {
		json_kv_str(j, "error", srv->last_reload_error);
	}
	urcu_memb_read_lock();
	const server_config *cfg = server_config_get();
	json_kv_u64(j, "config_generation", cfg->generation);
	json_key(j, "restart_required");
	json_restart_required(j, cfg);
	urcu_memb_read_unlock();
	json_obj_end(j);
}

static void
cmd_shutdown(struct admin_client *c, const struct admin_cmd *cmd, struct json_buf *j)
{
	(void)cmd;
	json_obj_begin(j);
	json_kv_bool(j, "ok", true);
	json_kv_bool(j, "stopping", true);
	json_obj_end(j);
	server_request_stop(c->adm->srv, "admin shutdown");
}

static void
cmd_account(struct admin_client *c, const struct admin_cmd *cmd, struct json_buf *j)
{
	(void)c;
	server_core_account_json(cmd->id, j);
}

static void
cmd_stats(struct admin_client *c, const struct admin_cmd *cmd, struct json_buf *j)
{
	(void)c;
	(void)cmd;
	server_core_stats_json(j);
}

static void
cmd_verify(struct admin_client *c, const struct admin_cmd *cmd, struct json_buf *j)
{
	(void)c;
	(void)cmd;
	server_core_verify_json(j);
}

static void
cmd_snapshot(struct admin_client *c, const struct admin_cmd *cmd, struct json_buf *j)
{
	(void)c;
	(void)cmd;
	server_core_request_snapshot();
	json_obj_begin(j);
	json_kv_bool(j, "ok", true);
	json_kv_str(j, "snapshot", "requested; `stats` shows snapshot_epoch when written");
	json_obj_end(j);
}

static void
cmd_peak(struct admin_client *c, const struct admin_cmd *cmd, struct json_buf *j)
{
	(void)c;
	server_core_peak_json(cmd, j);
}

static void
cmd_hot(struct admin_client *c, const struct admin_cmd *cmd, struct json_buf *j)
{
	(void)c;
	server_core_hot_json(cmd, j);
}

static void
cmd_merge(struct admin_client *c, const struct admin_cmd *cmd, struct json_buf *j)
{
	(void)c;
	server_core_merge_json(cmd, j);
}

static void
cmd_store(struct admin_client *c, const struct admin_cmd *cmd, struct json_buf *j)
{
	(void)c;
	server_core_store_json(cmd, j);
}

static void
cmd_history(struct admin_client *c, const struct admin_cmd *cmd, struct json_buf *j)
{
	(void)c;
	server_core_history_json(cmd, j);
}

static void (*const commands[ADMIN_NVERBS])(struct admin_client *c,
					   const struct admin_cmd *cmd,
					   struct json_buf *j) = {
	[ADMIN_STATUS] = cmd_status,	 [ADMIN_CONFIG] = cmd_config,
	[ADMIN_RELOAD] = cmd_reload,	 [ADMIN_SHUTDOWN] = cmd_shutdown,
	[ADMIN_STATS] = cmd_stats,	 [ADMIN_ACCOUNT] = cmd_account,
	[ADMIN_VERIFY] = cmd_verify,	 [ADMIN_SNAPSHOT] = cmd_snapshot,
	[ADMIN_PEAK] = cmd_peak,	 [ADMIN_HOT] = cmd_hot,
	[ADMIN_MERGE] = cmd_merge,	 [ADMIN_HISTORY] = cmd_history,
	[ADMIN_STORE] = cmd_store,
};

/* line[len] is writable: the '\n' that ended it. */
static void
handle_line(struct admin_client *c, char *line, size_t len)
{
	char msg[300];
	struct admin_cmd cmd;
	if (!admin_parse(line, len, &cmd, msg, sizeof(msg))) {
		reply_error(c, msg);
		return;
	}
	/* One thread, so static. No larger than a client's output buffer:
	 * every reply fits one that has been read. Long listings (history)
	 * stop short of it and say so. */
	static char buf[ADMIN_OUT_CAP - 1];
	struct json_buf j;
	json_init(&j, buf, sizeof(buf));
	commands[cmd.verb](c, &cmd, &j);
	if (j.overflow) { /* a bug of ours, not the client's */
		DOVE_WARN("admin: the reply to '%s' is over %zu bytes",
			  admin_verb_name(cmd.verb), sizeof(buf));
		reply_error(c, "reply too large");
		return;
	}
	DOVE_ASSERT(j.depth == 0);
	client_reply(c, &j);
}

static void
client_read(struct admin_client *c)
{
	for (;;) {
		if (c->in_len == c->in_cap) {
			char msg[128];
			snprintf(msg, sizeof(msg),
				 "line too long: over %zu bytes; closing",
				 c->in_cap);
			DOVE_WARN("admin client fd %d: %s", c->ev.fd, msg);
			reply_error(c, msg);
			c->closing = true;
			return;
		}
		ssize_t n = recv(c->ev.fd, c->in + c->in_len,
				 c->in_cap - c->in_len, MSG_DONTWAIT);
		if (n == 0) {
			/* EOF, maybe mid-line: the partial line is dropped;
			 * replies already queued still go out (a client may
			 * half-close after its last command). */
			c->closing = true;
			return;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			c->closing = true; /* reset: nobody to reply to */
			c->out_len = 0;
			return;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return; /* EAGAIN: all read */
		}
		c->in_len += (size_t)n;

		size_t start = 0;
		char *nl;
		while (!c->closing &&
		       (nl = memchr(c->in + start, '\n', c->in_len - start))) {
			size_t len = (size_t)(nl - (c->in + start));
			handle_line(c, c->in + start, len);
			if (c->ev.fd < 0)
				return; /* closed while replying */
			start += len + 1;
		}
		memmove(c->in, c->in + start, c->in_len - start);
		c->in_len -= start;
		if (c->closing)
			return;
	}
}

static void
on_client(struct server_ev *ev, uint32_t events)
{
	struct admin_client *c = (struct admin_client *)ev;
	if ((events & EPOLLIN) && !c->closing)
		client_read(c);
	else if (events & (EPOLLERR | EPOLLHUP))
		c->closing = true, c->out_len = 0;
	if (c->ev.fd >= 0)
		client_flush(c);
	/* Only c's own handler ever closes c, and an fd appears once per
	 * epoll_wait round, so nothing can reach c after this. */
	if (c->ev.fd < 0)
		free(c);
}

static void
client_close(struct admin_client *c)
{
	struct server_admin *adm = c->adm;
	DOVE_ASSERT(adm->nclients > 0);
	server_loop_del(&adm->srv->loop, &c->ev);
	close(c->ev.fd);
	c->ev.fd = -1;
	if (c->prev)
		c->prev->next = c->next;
	else
		adm->clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	adm->nclients--;
	/* The struct itself is freed by whoever called into us, once the
	 * stack no longer looks at c->ev.fd (on_client, server_admin_close). */
	c->next = NULL;
	c->prev = NULL;
	free(c->in);
	c->in = NULL;
	c->ev.fn = NULL;
}

static void
on_accept(struct server_ev *ev, uint32_t events)
{
	struct server_admin *adm = (struct server_admin *)ev;
	(void)events;
	for (;;) {
		int fd = accept4(adm->ev.fd, NULL, NULL,
				 SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN)
				DOVE_WARN("admin accept: %s",
					  dove_strerror(-errno));
			return;
		}
		urcu_memb_read_lock();
		const server_config *cfg = server_config_get();
		uint32_t max_clients = (uint32_t)cfg->admin_max_clients;
		size_t max_line = (size_t)cfg->admin_max_line;
		urcu_memb_read_unlock();

		if (adm->nclients >= max_clients) {
			char msg[128];
			int n = snprintf(msg, sizeof(msg),
					 "{\"error\":\"too many admin clients "
					 "(max_clients = %u)\"}\n",
					 max_clients);
			ssize_t w = send(fd, msg, (size_t)n,
					 MSG_NOSIGNAL | MSG_DONTWAIT);
			(void)w; /* best effort: the client is refused anyway */
			close(fd);
			continue;
		}
		struct admin_client *c = calloc(1, sizeof(*c));
		char *in = malloc(max_line);
		if (c == NULL || in == NULL) {
			free(c);
			free(in);
			close(fd);
			DOVE_WARN("admin accept: out of memory");
			continue;
		}
		c->ev.fd = fd;
		c->ev.fn = on_client;
		c->adm = adm;
		c->in = in;
		c->in_cap = max_line;
		int rc = server_loop_add(&adm->srv->loop, &c->ev, EPOLLIN);
		DOVE_ASSERT(rc == 0);
		c->next = adm->clients;
		if (adm->clients)
			adm->clients->prev = c;
		adm->clients = c;
		adm->nclients++;
	}
}

int
server_admin_open(struct server *srv, struct server_admin **out)
{
	int rc;

	urcu_memb_read_lock();
	const server_config *cfg = server_config_get();
	char *path = strdup(cfg->admin_socket);
	mode_t mode = (mode_t)cfg->admin_socket_mode;
	urcu_memb_read_unlock();
	DOVE_ASSERT(path != NULL);

	struct server_admin *adm = calloc(1, sizeof(*adm));
	DOVE_ASSERT(adm != NULL);
	adm->srv = srv;
	adm->path = path;
	adm->ev.fn = on_accept;
	char err[256];
	adm->ev.fd = server_unix_listen(path, mode, 64, err, sizeof(err));
	if (adm->ev.fd < 0) {
		rc = adm->ev.fd;
		DOVE_ERROR("admin socket %s: %s", path, err);
		goto out_free;
	}
	rc = server_loop_add(&srv->loop, &adm->ev, EPOLLIN);
	if (rc < 0) {
		DOVE_ERROR("admin socket %s: epoll: %s", path, dove_strerror(rc));
		goto out_unlink;
	}
	DOVE_INFO("admin socket listening on %s (mode %04o)", path, mode);
	*out = adm;
	return 0;

out_unlink:
	unlink(path);
	close(adm->ev.fd);
out_free:
	free(adm->path);
	free(adm);
	return rc;
}

void
server_admin_close(struct server_admin *adm)
{
	if (adm == NULL)
		return;
	while (adm->clients) {
		struct admin_client *c = adm->clients;
		client_flush(c); /* best effort: e.g. the shutdown reply */
		if (c->ev.fd >= 0)
			client_close(c);
		free(c);
	}
	server_loop_del(&adm->srv->loop, &adm->ev);
	close(adm->ev.fd);
	unlink(adm->path);
	free(adm->path);
	free(adm);
}
