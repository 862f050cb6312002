/*
 * harness.c - see harness.h. DOVED_PATH and DOVECTL_PATH are compiled in by
 * tests/CMakeLists.txt so the tests run the binaries of their own build.
 */
#include "harness.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void
dh_write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	ck_assert_msg(f != NULL, "cannot write %s: %s", path, strerror(errno));
	fputs(text, f);
	fclose(f);
}

void
dh_write_config(struct dh *h, const char *extra)
{
	/* Every default path is relative to the config file, so an empty
	 * config already keeps everything inside the temp dir. Peak hours
	 * follow the clock by default; a test that does not set [peak]
	 * itself must not depend on the time of day it runs at. */
	const char *text = extra ? extra : "";
	if (strstr(text, "[peak]") != NULL) {
		dh_write_file(h->cfg, text);
		return;
	}
	char buf[8192];
	/* Appended, so line numbers in errors stay the test's own. */
	snprintf(buf, sizeof(buf), "%s\n[peak]\nmode = never\n", text);
	dh_write_file(h->cfg, buf);
}

void
dh_init(struct dh *h, const char *extra)
{
	memset(h, 0, sizeof(*h));
	snprintf(h->dir, sizeof(h->dir), "/tmp/dove-test-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(h->dir));
	snprintf(h->cfg, sizeof(h->cfg), "%s/doved.ini", h->dir);
	snprintf(h->sock, sizeof(h->sock), "%s/data/admin.sock", h->dir);
	snprintf(h->pidf, sizeof(h->pidf), "%s/data/doved.pid", h->dir);
	snprintf(h->log, sizeof(h->log), "%s/doved.out", h->dir);
	snprintf(h->ingress, sizeof(h->ingress), "%s/data/ingress.sock", h->dir);
	dh_write_config(h, extra);
}

pid_t
dh_spawn(struct dh *h, const char *const *args, const char *out_path)
{
	(void)h;
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int fd = open(out_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		char *argv[16];
		int n = 0;
		argv[n++] = (char *)DOVED_PATH;
		for (int i = 1; args && args[i] && n < 15; i++)
			argv[n++] = (char *)args[i];
		argv[n] = NULL;
		execv(DOVED_PATH, argv);
		_exit(127);
	}
	return pid;
}

int
dh_connect(const char *sock)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	struct timeval tv = { .tv_sec = 10 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static void
sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

void
dh_start(struct dh *h)
{
	const char *args[] = { "doved", "-c", h->cfg, NULL };
	h->pid = dh_spawn(h, args, h->log);
	/* 30 s: sanitizer builds start slowly (they zero what calloc gives). */
	char want[48], r[4096];
	snprintf(want, sizeof(want), "\"pid\":%d,", h->pid);
	for (int i = 0; i < 3000; i++) {
		/* Ready means *this* doved answers: a socket left by the
		 * previous one (or its dying snapshot child) does not count. */
		int fd = dh_connect(h->sock);
		if (fd >= 0) {
			bool mine = dh_cmd_fd(fd, "status", r, sizeof(r)) &&
				    strstr(r, want) != NULL;
			close(fd);
			if (mine)
				return;
		}
		int st;
		if (waitpid(h->pid, &st, WNOHANG) == h->pid) {
			char out[4096];
			dh_read_file(h->log, out, sizeof(out));
			h->pid = 0;
			ck_abort_msg("doved exited at start-up: %s", out);
		}
		sleep_ms(10);
	}
	ck_abort_msg("doved's admin socket %s never answered in 30 s",
		     h->sock);
}

int
dh_wait(pid_t pid, int timeout_ms)
{
	for (int t = 0; t < timeout_ms; t += 5) {
		int st;
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			return st;
		sleep_ms(5);
	}
	return -1;
}

void
dh_cleanup(struct dh *h)
{
	if (h->pid > 0 && getenv("DOVE_KEEP_TMP") == NULL) {
		kill(h->pid, SIGKILL);
		waitpid(h->pid, NULL, 0);
		h->pid = 0;
	}
	if (h->dir[0] && getenv("DOVE_KEEP_TMP") == NULL) {
		char cmd[256];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", h->dir);
		int rc = system(cmd);
		(void)rc;
	}
}

/* Read one line from fd byte by byte (tests only: keeps the rest). */
bool
dh_read_line(int fd, char *buf, size_t size)
{
	size_t got = 0;
	while (got + 1 < size) {
		ssize_t r = recv(fd, buf + got, 1, 0);
		if (r <= 0)
			return false;
		if (buf[got] == '\n') {
			buf[got] = '\0';
			return true;
		}
		got++;
	}
	return false;
}

bool
dh_cmd_fd(int fd, const char *line, char *buf, size_t size)
{
	char out[4096];
	int n = snprintf(out, sizeof(out), "%s\n", line);
	if (send(fd, out, (size_t)n, MSG_NOSIGNAL) != n)
		return false;
	return dh_read_line(fd, buf, size);
}

void
dh_admin(struct dh *h, const char *cmd, char *buf, size_t size)
{
	int fd = dh_connect(h->sock);
	ck_assert_msg(fd >= 0, "connect %s: %s", h->sock, strerror(errno));
	ck_assert_msg(dh_cmd_fd(fd, cmd, buf, size), "no reply to '%s'", cmd);
	close(fd);
}

size_t
dh_read_file(const char *path, char *buf, size_t size)
{
	buf[0] = '\0';
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return 0;
	size_t n = fread(buf, 1, size - 1, f);
	buf[n] = '\0';
	fclose(f);
	return n;
}

int
dh_run(const char *cmd, char *out, size_t size)
{
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	size_t n = fread(out, 1, size - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int
dh_run_suite(Suite *s)
{
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

int
dh_ingress(struct dh *h)
{
	int fd = dh_connect(h->ingress);
	ck_assert_msg(fd >= 0, "connect %s: %s", h->ingress, strerror(errno));
	return fd;
}

bool
dh_lines(int fd, const char *const *lines, int n, char (*replies)[256])
{
	static char out[65536];
	size_t len = 0;
	out[0] = '\0';
	for (int i = 0; i < n; i++)
		len += (size_t)snprintf(out + len, sizeof(out) - len, "%s\n",
					lines[i]);
	if (send(fd, out, len, MSG_NOSIGNAL) != (ssize_t)len)
		return false;
	for (int i = 0; i < n; i++)
		if (!dh_read_line(fd, replies[i], 256))
			return false;
	return true;
}

void
dh_wait_admin(struct dh *h, const char *cmd, const char *needle, bool want,
	      int ms)
{
	static char r[1 << 16];
	for (int t = 0; t <= ms; t += 20) {
		dh_admin(h, cmd, r, sizeof(r));
		if ((strstr(r, needle) != NULL) == want)
			return;
		sleep_ms(20);
	}
	ck_abort_msg("after %d ms, `%s` %s '%s': %s", ms, cmd,
		     want ? "still lacks" : "still has", needle, r);
}

int
dh_fill_until_refused(int fd, int first_id)
{
	static char lines[500][48];
	static const char *ptr[500];
	static char rep[500][256];
	int id = first_id, ok = 0;
	bool refused = false;
	for (int round = 0; round < 400 && !refused; round++) {
		for (int i = 0; i < 500; i++) {
			snprintf(lines[i], sizeof(lines[i]), "TRANSFER %d 1 2 1",
				 id + i);
			ptr[i] = lines[i];
		}
		ck_assert(dh_lines(fd, ptr, 500, rep));
		for (int i = 0; i < 500; i++) {
			refused = refused || strstr(rep[i], "unavailable");
			if (refused)
				ck_assert_msg(strstr(rep[i], "unavailable"),
					      "after the limit: %s", rep[i]);
			else
				ck_assert_msg(strncmp(rep[i], "OK ", 3) == 0,
					      "before the limit: %s", rep[i]);
			ok += !refused;
		}
		id += 500;
		usleep(20000);
	}
	ck_assert_msg(refused, "never refused after %d transfers", ok);
	return ok;
}

void
dh_crash_life(struct dh *h, int conns, uint64_t *next_id, uint64_t max_id,
	      void (*line)(uint64_t id, char *buf, size_t size),
	      char (*answered)[32], unsigned seed)
{
	enum { CONNS_MAX = 8, BURST = 50 };
	ck_assert_int_le(conns, CONNS_MAX);
	int fds[CONNS_MAX];
	for (int c = 0; c < conns; c++)
		fds[c] = dh_ingress(h);
	pid_t killer = fork();
	if (killer == 0) {
		usleep(20000 + (useconds_t)(rand_r(&seed) % 120000));
		kill(h->pid, SIGKILL);
		_exit(0);
	}
	bool alive = true;
	for (int burst = 0; alive && *next_id + (uint64_t)(conns * BURST) < max_id;
	     burst++) {
		static char rep[CONNS_MAX][BURST][256];
		memset(rep, 0, sizeof(rep));
		for (int c = 0; c < conns; c++) {
			char out[BURST * 64];
			size_t len = 0;
			for (int i = 0; i < BURST; i++) {
				line(*next_id + (uint64_t)(c * BURST + i), out + len,
				     sizeof(out) - len - 1);
				len += strlen(out + len);
				out[len++] = '\n';
			}
			if (send(fds[c], out, len, MSG_NOSIGNAL) != (ssize_t)len)
				alive = false;
		}
		for (int c = 0; c < conns && alive; c++)
			for (int i = 0; i < BURST && alive; i++)
				alive = dh_read_line(fds[c], rep[c][i], 256);
		for (int c = 0; c < conns; c++)
			for (int i = 0; i < BURST; i++)
				if (strncmp(rep[c][i], "OK ", 3) == 0)
					snprintf(answered[*next_id + (uint64_t)(c * BURST + i)],
						 32, "%.31s", rep[c][i]);
		*next_id += (uint64_t)(conns * BURST);
		if (alive && burst == 2) {
			int afd = dh_connect(h->sock);
			char ar[512];
			if (afd >= 0) {
				dh_cmd_fd(afd, "snapshot", ar, sizeof(ar));
				close(afd);
			}
		}
	}
	waitpid(killer, NULL, 0);
	waitpid(h->pid, NULL, 0);
	h->pid = 0;
	for (int c = 0; c < conns; c++)
		close(fds[c]);
	dh_start(h);
}

TCase *
dh_tcase(Suite *s, const char *name, void (*setup)(void),
	 void (*teardown)(void), double timeout_s)
{
	TCase *tc = tcase_create(name);
	if (setup || teardown)
		tcase_add_checked_fixture(tc, setup, teardown);
	if (timeout_s > 0)
		tcase_set_timeout(tc, timeout_s);
	suite_add_tcase(s, tc);
	return tc;
}
