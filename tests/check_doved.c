/*
 * check_doved.c - integration tests of the real doved binary: command line,
 * admin protocol over the real socket, reload by a real SIGHUP, graceful
 * stop, the pid-file lock, data directories, idle CPU, and dovectl.
 */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "settle.h"
#include "store.h"

static struct dh h;

static void
setup(void)
{
	dh_init(&h, NULL);
}

static void
teardown(void)
{
	dh_cleanup(&h);
}

static bool
exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

/* Stop doved with sig; assert it exits 0 within 5 s and cleans up. */
static void
stop_cleanly(int sig)
{
	ck_assert_int_eq(kill(h.pid, sig), 0);
	int st = dh_wait(h.pid, 5000);
	ck_assert_msg(st != -1, "doved did not stop within 5 s of signal %d",
		      sig);
	h.pid = 0;
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "doved exit status %#x after signal %d", st, sig);
	ck_assert_msg(!exists(h.sock), "admin socket left behind");
	ck_assert_msg(!exists(h.pidf), "pid file left behind");
}

/* ---- command line ------------------------------------------------------- */

START_TEST(cli_version_help)
{
	char out[4096];
	ck_assert_int_eq(dh_run(DOVED_PATH " --version", out, sizeof(out)), 0);
	ck_assert_msg(strncmp(out, "doved ", 6) == 0, "%s", out);
	ck_assert_int_eq(dh_run(DOVED_PATH " --help", out, sizeof(out)), 0);
	ck_assert_ptr_nonnull(strstr(out, "--check-config"));
	ck_assert_int_eq(dh_run(DOVED_PATH " --bogus 2>&1", out, sizeof(out)),
			 2);
	ck_assert_ptr_nonnull(strstr(out, "usage:"));
}
END_TEST

START_TEST(cli_check_config)
{
	char cmd[512], out[8192];
	snprintf(cmd, sizeof(cmd), "%s --check-config %s 2>&1", DOVED_PATH,
		 DOVE_SOURCE_DIR "/config.ini");
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 0);
	ck_assert_ptr_nonnull(strstr(out, "[server]"));
	ck_assert_ptr_nonnull(strstr(out, "log_level = info"));

	/* A typo'd key: exit 1, and the message names file, line and key. */
	dh_write_config(&h, "[server]\nlog_level = info\n[admin]\nmax_client = 3\n");
	snprintf(cmd, sizeof(cmd), "%s --check-config %s 2>&1", DOVED_PATH,
		 h.cfg);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 1);
	char want[256];
	snprintf(want, sizeof(want), "%s:4:", h.cfg);
	ck_assert_msg(strstr(out, want) && strstr(out, "max_client"), "%s", out);
	/* And the server itself refuses to start on it. */
	snprintf(cmd, sizeof(cmd), "%s -c %s 2>&1", DOVED_PATH, h.cfg);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 1);
	ck_assert_msg(strstr(out, want) != NULL, "%s", out);
	ck_assert(!exists(h.sock));
}
END_TEST

/* ---- admin protocol --------------------------------------------------- */

/* Connect and get one status answered; retry while the server may still
 * count a client that just left. Returns the fd, still open. */
static int
connect_served(void)
{
	char r[4096];
	for (int i = 0; i < 200; i++) {
		int fd = dh_connect(h.sock);
		if (fd >= 0 && dh_cmd_fd(fd, "status", r, sizeof(r)) &&
		    strstr(r, "\"version\""))
			return fd;
		if (fd >= 0)
			close(fd);
		usleep(10000);
	}
	ck_abort_msg("no admin slot became free");
	return -1;
}


START_TEST(admin_status_and_config)
{
	char r[8192], want[256];
	dh_start(&h);
	dh_admin(&h, "status", r, sizeof(r));
	snprintf(want, sizeof(want), "\"pid\":%d,", h.pid);
	ck_assert_msg(strstr(r, want), "%s", r);
	ck_assert_msg(strncmp(r, "{\"version\":\"", 12) == 0, "%s", r);
	ck_assert_ptr_nonnull(strstr(r, "\"uptime_s\":"));
	snprintf(want, sizeof(want), "\"config_path\":\"%s\"", h.cfg);
	ck_assert_msg(strstr(r, want), "%s", r);
	ck_assert_ptr_nonnull(strstr(r, "\"config_generation\":1,"));
	ck_assert_ptr_nonnull(strstr(r, "\"restart_required\":[]"));
	ck_assert_ptr_nonnull(strstr(r, "\"last_reload_error\":null"));

	dh_admin(&h, "config", r, sizeof(r));
	snprintf(want, sizeof(want), "\"socket\":\"%s\"", h.sock);
	ck_assert_msg(strstr(r, want), "%s", r);
	ck_assert_ptr_nonnull(strstr(r, "\"log_level\":\"info\""));

	/* The socket has the configured mode (0600 by default). */
	struct stat st;
	ck_assert_int_eq(stat(h.sock, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
}
END_TEST

START_TEST(admin_errors_keep_connection)
{
	char r[4096];
	dh_start(&h);
	int fd = dh_connect(h.sock);
	ck_assert_int_ge(fd, 0);
	/* Tried: an unknown verb, binary garbage, an empty line, arguments to
	 * a command that takes none, a trailing CR. */
	ck_assert(dh_cmd_fd(fd, "frobnicate now", r, sizeof(r)));
	ck_assert_msg(strstr(r, "{\"error\":\"unknown command 'frobnicate'"),
		      "%s", r);
	ck_assert(dh_cmd_fd(fd, "\x01\x02\"\\\xff", r, sizeof(r)));
	ck_assert_msg(strncmp(r, "{\"error\":", 9) == 0, "%s", r);
	ck_assert(dh_cmd_fd(fd, "", r, sizeof(r)));
	ck_assert_str_eq(r, "{\"error\":\"empty command\"}");
	ck_assert(dh_cmd_fd(fd, "status now", r, sizeof(r)));
	ck_assert_str_eq(r, "{\"error\":\"status takes no arguments\"}");
	ck_assert(dh_cmd_fd(fd, "status\r", r, sizeof(r)));
	ck_assert_ptr_nonnull(strstr(r, "\"config_generation\":1"));
	close(fd);
}
END_TEST

START_TEST(admin_pipelined_many_clients)
{
	enum { NCLIENTS = 8, NCMDS = 50 };
	char r[4096];
	dh_start(&h);
	int fds[NCLIENTS];
	for (int c = 0; c < NCLIENTS; c++) {
		fds[c] = dh_connect(h.sock);
		ck_assert_int_ge(fds[c], 0);
	}
	/* Every client sends all its commands in one write, interleaved
	 * with the others; each gets exactly its own replies, in order. */
	static char batch[NCMDS * 16];
	size_t n = 0;
	for (int i = 0; i < NCMDS; i++)
		n += (size_t)snprintf(batch + n, sizeof(batch) - n, "%s\n",
				      i % 2 ? "status" : "nope");
	for (int c = 0; c < NCLIENTS; c++)
		ck_assert_int_eq(send(fds[c], batch, n, MSG_NOSIGNAL), (ssize_t)n);
	for (int c = 0; c < NCLIENTS; c++) {
		FILE *f = fdopen(fds[c], "r");
		for (int i = 0; i < NCMDS; i++) {
			ck_assert_ptr_nonnull(fgets(r, sizeof(r), f));
			if (i % 2)
				ck_assert_msg(strstr(r, "\"version\""), "%s", r);
			else
				ck_assert_msg(strstr(r, "unknown command 'nope'"),
					      "%s", r);
		}
		fclose(f);
	}
}
END_TEST

START_TEST(admin_long_line_closes_only_that_client)
{
	char r[4096];
	dh_start(&h);
	int good = dh_connect(h.sock);
	int bad = dh_connect(h.sock);
	ck_assert_int_ge(good, 0);
	ck_assert_int_ge(bad, 0);

	/* 1 MiB without a newline: over max_line (4096). */
	size_t len = 1 << 20;
	char *big = malloc(len);
	memset(big, 'x', len);
	size_t off = 0;
	while (off < len) {
		ssize_t w = send(bad, big + off, len - off, MSG_NOSIGNAL);
		if (w <= 0)
			break; /* the server closed on us: expected */
		off += (size_t)w;
	}
	free(big);
	/* The bad client gets an error line, then EOF (or a reset). */
	ssize_t got = recv(bad, r, sizeof(r) - 1, 0);
	if (got > 0) {
		r[got] = '\0';
		ck_assert_msg(strstr(r, "line too long"), "%s", r);
	}
	close(bad);

	/* The other client, connected all along, is served as before. */
	ck_assert(dh_cmd_fd(good, "status", r, sizeof(r)));
	ck_assert_ptr_nonnull(strstr(r, "\"version\""));
	close(good);
	dh_admin(&h, "status", r, sizeof(r));
	ck_assert_ptr_nonnull(strstr(r, "\"version\""));
}
END_TEST

START_TEST(admin_disconnect_mid_line_and_unread_replies)
{
	dh_start(&h);
	/* Half a command, then gone. */
	int fd = dh_connect(h.sock);
	ck_assert_int_eq(send(fd, "sta", 3, MSG_NOSIGNAL), 3);
	close(fd);
	/* Many commands, then gone before reading a byte: the server's
	 * replies hit a closed socket (EPIPE), which must not kill it. */
	for (int k = 0; k < 20; k++) {
		fd = dh_connect(h.sock);
		for (int i = 0; i < 50; i++)
			send(fd, "config\n", 7, MSG_NOSIGNAL);
		close(fd);
	}
	/* Still alive, and serving once it has noticed those clients left
	 * (until then they may fill max_clients). */
	close(connect_served());
	ck_assert_int_eq(waitpid(h.pid, NULL, WNOHANG), 0);
}
END_TEST

START_TEST(admin_max_clients)
{
	char r[4096];
	dh_write_config(&h, "[admin]\nmax_clients = 2\n");
	dh_start(&h);
	int a = connect_served(), b = connect_served();
	/* Two clients held open: a third is told why and closed. */
	int c = dh_connect(h.sock);
	ck_assert_int_ge(c, 0);
	ssize_t n = recv(c, r, sizeof(r) - 1, 0);
	ck_assert_int_gt(n, 0);
	r[n] = '\0';
	ck_assert_str_eq(r, "{\"error\":\"too many admin clients "
			    "(max_clients = 2)\"}\n");
	ck_assert_int_eq(recv(c, r, sizeof(r), 0), 0);
	close(c);
	/* The two admitted clients are still served. */
	ck_assert(dh_cmd_fd(a, "status", r, sizeof(r)));
	ck_assert(dh_cmd_fd(b, "status", r, sizeof(r)));
	/* A slot is free again once a client leaves. */
	close(a);
	close(connect_served());
	close(b);
}
END_TEST

/* ---- reload ------------------------------------------------------------- */

/* Send SIGHUP, then poll `status` until it contains want (the reload is
 * asynchronous); r holds the last status reply. */
static void
sighup_and_wait(char *r, size_t size, const char *want)
{
	ck_assert_int_eq(kill(h.pid, SIGHUP), 0);
	for (int i = 0; i < 500 && !strstr(r, want); i++) {
		dh_admin(&h, "status", r, size);
		if (!strstr(r, want))
			usleep(10000);
	}
	ck_assert_msg(strstr(r, want), "no %s after SIGHUP: %s", want, r);
}

START_TEST(reload_by_sighup)
{
	char r[8192] = "";
	dh_start(&h);

	/* A live key: takes effect. */
	dh_write_config(&h, "[server]\nlog_level = debug\n");
	sighup_and_wait(r, sizeof(r), "\"config_generation\":2");
	ck_assert_msg(strstr(r, "\"config_generation\":2"), "%s", r);
	ck_assert_ptr_nonnull(strstr(r, "\"restart_required\":[]"));
	dh_admin(&h, "config", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"log_level\":\"debug\""), "%s", r);

	/* A restart-only key: listed, not applied. */
	dh_write_config(&h, "[server]\nlog_level = debug\n[admin]\n"
			    "socket_mode = 0660\n");
	sighup_and_wait(r, sizeof(r), "\"config_generation\":3");
	ck_assert_msg(strstr(r, "\"restart_required\":[\"admin.socket_mode\"]"),
		      "%s", r);
	dh_admin(&h, "config", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"socket_mode\":\"0600\""), "%s", r);

	/* A broken file: refused, the old config stays, the error shows. */
	dh_write_config(&h, "[server]\nlog_level = info\nfrobs = 3\n");
	sighup_and_wait(r, sizeof(r), "\"last_reload_error\":\"");
	char want[256];
	snprintf(want, sizeof(want), "\"last_reload_error\":\"%s:3: [server] "
				     "frobs: unknown key",
		 h.cfg);
	ck_assert_msg(strstr(r, want), "%s", r);
	ck_assert_ptr_nonnull(strstr(r, "\"config_generation\":3"));
	ck_assert_ptr_nonnull(strstr(r, "\"reloads_failed\":1"));
	dh_admin(&h, "config", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"log_level\":\"debug\""), "%s", r);
	char log[65536];
	dh_read_file(h.log, log, sizeof(log));
	ck_assert_msg(strstr(log, "reload refused"), "%s", log);
	ck_assert_msg(strstr(log, "[admin] socket_mode changed"), "%s", log);

	/* Fixed again via the admin command: accepted, error cleared. */
	dh_write_config(&h, "[server]\nlog_level = warn\n");
	dh_admin(&h, "reload", r, sizeof(r));
	ck_assert_msg(strstr(r, "{\"ok\":true,\"config_generation\":4,"), "%s",
		      r);
	dh_admin(&h, "status", r, sizeof(r));
	ck_assert_ptr_nonnull(strstr(r, "\"last_reload_error\":null"));
	dh_admin(&h, "config", r, sizeof(r));
	ck_assert_ptr_nonnull(strstr(r, "\"log_level\":\"warn\""));
}
END_TEST

START_TEST(reload_log_file_and_format)
{
	char r[4096], path[256], text[65536];
	dh_start(&h);
	snprintf(path, sizeof(path), "%s/logs/doved.log", h.dir);
	char cfg[512];
	snprintf(cfg, sizeof(cfg), "[server]\nlog_file = logs/doved.log\n");
	dh_write_config(&h, cfg);
	dh_admin(&h, "reload", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"ok\":true"), "%s", r);
	dh_admin(&h, "reload", r, sizeof(r)); /* logs a line into the file */
	ck_assert_uint_gt(dh_read_file(path, text, sizeof(text)), 0);
	/* "2026-11-26T08:57:21.123Z INFO  [main] configuration reloaded" */
	int y, mo, d, hh, mm, ss, ms;
	char level[8], thread[32];
	ck_assert_msg(sscanf(text, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ %7s [%31[^]]]",
			     &y, &mo, &d, &hh, &mm, &ss, &ms, level,
			     thread) == 9,
		      "%s", text);
	ck_assert_str_eq(level, "INFO");
	ck_assert_str_eq(thread, "main");
	ck_assert_ptr_nonnull(strstr(text, "configuration reloaded"));

	/* An unopenable log file refuses the reload; logging stays put. */
	dh_write_config(&h, "[server]\nlog_file = /proc/nope/doved.log\n");
	dh_admin(&h, "reload", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"ok\":false"), "%s", r);
	dh_admin(&h, "config", r, sizeof(r));
	ck_assert_msg(strstr(r, "logs/doved.log"), "%s", r);
}
END_TEST

/* ---- stopping ---------------------------------------------------------- */

START_TEST(stop_by_sigterm)
{
	dh_start(&h);
	stop_cleanly(SIGTERM);
}
END_TEST

START_TEST(stop_by_sigint)
{
	dh_start(&h);
	stop_cleanly(SIGINT);
}
END_TEST

START_TEST(stop_by_admin_shutdown)
{
	char r[256];
	dh_start(&h);
	dh_admin(&h, "shutdown", r, sizeof(r));
	ck_assert_str_eq(r, "{\"ok\":true,\"stopping\":true}");
	int st = dh_wait(h.pid, 5000);
	ck_assert_int_ne(st, -1);
	h.pid = 0;
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	ck_assert(!exists(h.sock));
	ck_assert(!exists(h.pidf));
}
END_TEST

/* ---- pid file, stale files, directories ------------------------------- */

START_TEST(pid_file_lock)
{
	char out[4096], want[128];
	dh_start(&h);
	/* Same config: the second doved must refuse and name the holder. */
	char out_path[256];
	snprintf(out_path, sizeof(out_path), "%s/second.out", h.dir);
	const char *args[] = { "doved", "-c", h.cfg, NULL };
	pid_t second = dh_spawn(&h, args, out_path);
	int st = dh_wait(second, 5000);
	ck_assert_int_ne(st, -1);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	dh_read_file(out_path, out, sizeof(out));
	snprintf(want, sizeof(want), "locked by pid %d", h.pid);
	ck_assert_msg(strstr(out, want), "%s", out);
	/* The first one is untouched. */
	char r[4096];
	dh_admin(&h, "status", r, sizeof(r));
	ck_assert_ptr_nonnull(strstr(r, "\"version\""));
	ck_assert(exists(h.pidf));
}
END_TEST

START_TEST(restart_after_sigkill)
{
	char r[4096];
	dh_start(&h);
	kill(h.pid, SIGKILL);
	waitpid(h.pid, NULL, 0);
	h.pid = 0;
	/* The killed doved left its pid file and socket: both are stale. */
	ck_assert(exists(h.pidf));
	ck_assert(exists(h.sock));
	dh_start(&h);
	dh_admin(&h, "status", r, sizeof(r));
	char want[64];
	snprintf(want, sizeof(want), "\"pid\":%d,", h.pid);
	ck_assert_msg(strstr(r, want), "%s", r);
	char pidtext[32];
	dh_read_file(h.pidf, pidtext, sizeof(pidtext));
	ck_assert_int_eq(atoi(pidtext), h.pid);
}
END_TEST

START_TEST(data_dirs_created_or_refused)
{
	char path[256], cfg[512], out[4096];
	snprintf(cfg, sizeof(cfg), "[server]\ndata_dir = deep/er/data\n");
	dh_write_config(&h, cfg);
	dh_start(&h);
	snprintf(path, sizeof(path), "%s/deep/er/data", h.dir);
	struct stat st;
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert(S_ISDIR(st.st_mode));
	stop_cleanly(SIGTERM);

	/* data_dir below a regular file cannot be created. */
	snprintf(path, sizeof(path), "%s/plain", h.dir);
	dh_write_file(path, "x");
	dh_write_config(&h, "[server]\ndata_dir = plain/data\n");
	snprintf(path, sizeof(path), "%s -c %s 2>&1", DOVED_PATH, h.cfg);
	ck_assert_int_eq(dh_run(path, out, sizeof(out)), 1);
	snprintf(path, sizeof(path), "%s/plain", h.dir);
	ck_assert_msg(strstr(out, "cannot create directory") && strstr(out, path),
		      "%s", out);
}
END_TEST

/* ---- the WAL at start-up --------------------------------------------- */

/* Write n one-record epochs into doved's WAL dir; return where epoch 2
 * starts and the file holding it. */
static void
write_wal(uint64_t n, char *file, size_t filelen, uint64_t *off2)
{
	char waldir[256];
	snprintf(waldir, sizeof(waldir), "%s/data/wal", h.dir);
	struct store_wal_config cfg = { .dir = waldir,
					.segment_bytes = 1 << 20,
					.max_epoch_bytes = 65536,
					.fsync = true };
	store_wal *w;
	char err[1024];
	ck_assert_msg(store_wal_open(&cfg, &w, NULL, err, sizeof(err)) == 0,
		      "%s", err);
	for (uint64_t i = 0; i < n; i++) {
		uint64_t b;
		struct settle_account_rec a = { .id = i + 1 };
		struct store_wal_record r = { .type = SETTLE_REC_ACCOUNT,
					      .len = sizeof(a),
					      .data = &a };
		ck_assert_int_eq(store_wal_append(w, &r, 1, &b), 0);
		ck_assert_int_eq(store_wal_wait(w, b, NULL, NULL), 0);
	}
	store_wal_close(w);
	snprintf(file, filelen, "%s/wal-%020d.log", waldir, 1);
	/* 64-byte segment header, then epochs of 48 + 8 + 16 bytes. */
	*off2 = 64 + 72;
}

START_TEST(wal_recovered_at_start)
{
	char file[512], r[4096];
	uint64_t off2;
	write_wal(5, file, sizeof(file), &off2);
	dh_start(&h);
	dh_admin(&h, "status", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"wal\":{\"durable_epoch\":5,"), "%s", r);
	char log[65536];
	dh_read_file(h.log, log, sizeof(log));
	ck_assert_msg(strstr(log, "recovered epochs 1..5"), "%s", log);
	ck_assert_msg(strstr(log, "replayed 5 epochs: 5 accounts"), "%s", log);
}
END_TEST

START_TEST(wal_corrupt_refuses_start)
{
	char file[512], out[8192], cmd[600];
	uint64_t off2;
	write_wal(5, file, sizeof(file), &off2);
	/* Tried: one flipped bit inside epoch 2 of 5. */
	FILE *f = fopen(file, "r+b");
	ck_assert_ptr_nonnull(f);
	fseek(f, (long)off2 + 50, SEEK_SET);
	int c = fgetc(f);
	fseek(f, (long)off2 + 50, SEEK_SET);
	fputc(c ^ 0x10, f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "%s -c %s 2>&1", DOVED_PATH, h.cfg);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 1);
	char want[700];
	snprintf(want, sizeof(want), "%s at byte offset %llu", file,
		 (unsigned long long)off2);
	ck_assert_msg(strstr(out, want) && strstr(out, "dove-wal verify"), "%s",
		      out);
	ck_assert(!exists(h.sock));
	ck_assert(!exists(h.pidf));
}
END_TEST

/* ---- idle cost ------------------------------------------------------------ */

static long
cpu_ticks(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	ck_assert_uint_gt(dh_read_file(path, buf, sizeof(buf)), 0);
	/* Fields 14 and 15 (utime, stime) follow the ")" of the comm. */
	char *p = strrchr(buf, ')');
	ck_assert_ptr_nonnull(p);
	long utime, stime;
	ck_assert_int_eq(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u "
				       "%*u %ld %ld",
				&utime, &stime),
			 2);
	return utime + stime;
}

START_TEST(idle_cpu_under_one_percent)
{
	dh_start(&h);
	usleep(300000); /* let start-up settle */
	long hz = sysconf(_SC_CLK_TCK);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	long c0 = cpu_ticks(h.pid);
	sleep(4);
	long c1 = cpu_ticks(h.pid);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double wall = (double)(t1.tv_sec - t0.tv_sec) +
		      (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	double pct = 100.0 * (double)(c1 - c0) / (double)hz / wall;
	ck_assert_msg(pct < 1.0, "idle doved used %.2f%% of a core", pct);
}
END_TEST

/* ---- dovectl ------------------------------------------------------------ */

START_TEST(dovectl_commands)
{
	char cmd[512], out[8192];
	/* Not running: clear message, exit 3. */
	snprintf(cmd, sizeof(cmd), "%s -s %s status 2>&1", DOVECTL_PATH,
		 h.sock);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 3);
	ck_assert_msg(strstr(out, "is doved running?"), "%s", out);

	dh_start(&h);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 0);
	char want[64];
	snprintf(want, sizeof(want), "pid: %d\n", h.pid);
	ck_assert_msg(strstr(out, want), "%s", out);
	ck_assert_ptr_nonnull(strstr(out, "restart_required: (none)\n"));

	/* -c CONFIG finds the socket in the config file; --json is raw. */
	snprintf(cmd, sizeof(cmd), "%s -c %s --json config", DOVECTL_PATH,
		 h.cfg);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 0);
	ck_assert_msg(strncmp(out, "{\"server\":{", 11) == 0, "%s", out);
	snprintf(cmd, sizeof(cmd), "%s -s %s config", DOVECTL_PATH, h.sock);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 0);
	ck_assert_msg(strstr(out, "admin.max_clients: 16\n"), "%s", out);

	/* An error reply: exit 1. A usage error: exit 2. */
	snprintf(cmd, sizeof(cmd), "%s -s %s raw frob 2>&1", DOVECTL_PATH,
		 h.sock);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 1);
	ck_assert_msg(strstr(out, "error: unknown command 'frob'"), "%s", out);
	snprintf(cmd, sizeof(cmd), "%s -s %s bogus 2>&1", DOVECTL_PATH, h.sock);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 2);

	dh_write_config(&h, "[admin]\nsocket_mode = 0640\n");
	snprintf(cmd, sizeof(cmd), "%s -s %s reload", DOVECTL_PATH, h.sock);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 0);
	ck_assert_msg(strstr(out, "restart_required: admin.socket_mode\n"),
		      "%s", out);

	snprintf(cmd, sizeof(cmd), "%s -s %s shutdown", DOVECTL_PATH, h.sock);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 0);
	int st = dh_wait(h.pid, 5000);
	h.pid = 0;
	ck_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}
END_TEST

static Suite *
doved_suite(void)
{
	Suite *s = suite_create("doved");
	struct {
		const char *name;
		const TTest *tests[12];
	} groups[] = {
		{ "cli", { cli_version_help, cli_check_config } },
		{ "admin",
		  { admin_status_and_config, admin_errors_keep_connection,
		    admin_pipelined_many_clients,
		    admin_long_line_closes_only_that_client,
		    admin_disconnect_mid_line_and_unread_replies,
		    admin_max_clients } },
		{ "reload", { reload_by_sighup, reload_log_file_and_format } },
		{ "stop",
		  { stop_by_sigterm, stop_by_sigint, stop_by_admin_shutdown } },
		{ "files",
		  { pid_file_lock, restart_after_sigkill,
		    data_dirs_created_or_refused } },
		{ "idle", { idle_cpu_under_one_percent } },
		{ "wal", { wal_recovered_at_start, wal_corrupt_refuses_start } },
		{ "dovectl", { dovectl_commands } },
	};
	for (size_t g = 0; g < sizeof(groups) / sizeof(groups[0]); g++) {
		TCase *tc = tcase_create(groups[g].name);
		tcase_add_checked_fixture(tc, setup, teardown);
		/* Generous: sanitizer builds start doved slowly, and the
		 * idle test alone sleeps 4 s. */
		tcase_set_timeout(tc, 60);
		for (int t = 0; groups[g].tests[t]; t++)
			tcase_add_test(tc, groups[g].tests[t]);
		suite_add_tcase(s, tc);
	}
	return s;
}

int
main(void)
{
	return dh_run_suite(doved_suite());
}
