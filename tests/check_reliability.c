/*
 * check_reliability.c - regression tests for the adversarial review of
 * issue 13, each against a real doved over its real sockets and files:
 * a storm of clients that pipeline and vanish, a lost or damaged WAL
 * tail, a chain longer than the pipeline, the ingress socket path, the
 * snapshot fallback, and the small ones (admin output, config reload,
 * SIGXFSZ). Every test says what input it tried; each failed before its
 * fix.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

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

static void
make_accounts(int n)
{
	int fd = dh_ingress(&h);
	char r[256], line[64];
	for (int i = 1; i <= n; i++) {
		snprintf(line, sizeof(line), "ACCOUNT %d", i);
		ck_assert(dh_cmd_fd(fd, line, r, sizeof(r)));
	}
	close(fd);
}

/* One request on a fresh ingress connection; its reply must be want. */
static void
expect_reply(const char *line, const char *want)
{
	int fd = dh_ingress(&h);
	char r[256];
	ck_assert_msg(dh_cmd_fd(fd, line, r, sizeof(r)), "%s: no reply", line);
	ck_assert_str_eq(r, want);
	close(fd);
}

static bool
alive(pid_t pid)
{
	return kill(pid, 0) == 0 && waitpid(pid, NULL, WNOHANG) == 0;
}

/* ---- 1: clients that pipeline and vanish ------------------------------ */

struct storm {
	const char *path;
	unsigned seed;
	int rounds;
	uint64_t first_id;
};

static void *
storm_client(void *arg)
{
	struct storm *st = arg;
	static __thread char buf[3000 * 48];
	for (int round = 0; round < st->rounds; round++) {
		int fd = dh_connect(st->path);
		if (fd < 0)
			continue;
		int n = 100 + (int)(rand_r(&st->seed) % 2901);
		size_t len = 0;
		for (int i = 0; i < n; i++)
			len += (size_t)snprintf(buf + len, sizeof(buf) - len,
						"TRANSFER %lu 1 2 1\n",
						(unsigned long)st->first_id++);
		size_t off = 0;
		while (off < len) {
			ssize_t w = send(fd, buf + off, len - off,
					 MSG_NOSIGNAL | MSG_DONTWAIT);
			if (w <= 0)
				break;
			off += (size_t)w;
		}
		struct timespec ts = { 0, (long)(rand_r(&st->seed) % 10) * 1000000L };
		nanosleep(&ts, NULL);
		if (rand_r(&st->seed) % 2) { /* reset: SO_LINGER 0 */
			struct linger lg = { 1, 0 };
			setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		}
		close(fd);
	}
	return NULL;
}

/*
 * Tried: 16 threads, each connecting, pipelining 100-3,000 TRANSFERs,
 * sleeping 0-10 ms, then closing or resetting, 150 times each. Before the
 * fix a flush after an epoch freed connections whose events came later in
 * the same epoll batch: doved died in about a second (use after free,
 * then `server/loop.c: rc == 0`).
 */
START_TEST(vanishing_pipelined_clients_do_not_crash)
{
	dh_write_config(&h, "[ingress]\npipeline = 63\n");
	dh_start(&h);
	make_accounts(2);
	pthread_t th[16];
	struct storm st[16];
	for (int i = 0; i < 16; i++) {
		st[i] = (struct storm){ h.ingress, 1234u + (unsigned)i, 150,
					1000000ull * (uint64_t)(i + 1) };
		pthread_create(&th[i], NULL, storm_client, &st[i]);
	}
	for (int i = 0; i < 16; i++)
		pthread_join(th[i], NULL);
	ck_assert_msg(alive(h.pid), "doved died under the client storm");
	/* Still serving, and the books balance. */
	char r[4096];
	dh_admin(&h, "verify", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"ok\":true"), "%s", r);
	expect_reply("PING", "PONG");
}
END_TEST

/* ---- 2, 3: a lost or damaged WAL tail ---------------------------------- */

/* Pipeline n transfers 1 -> 2 from first_id; every one must be OK. */
static void
answered_transfers(int fd, uint64_t first_id, int n)
{
	static char buf[1000 * 48];
	for (int done = 0; done < n;) {
		int k = n - done < 1000 ? n - done : 1000;
		size_t len = 0;
		for (int i = 0; i < k; i++)
			len += (size_t)snprintf(buf + len, sizeof(buf) - len,
						"TRANSFER %lu 1 2 1\n",
						(unsigned long)(first_id + (uint64_t)(done + i)));
		ck_assert_int_eq(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
		char r[256];
		for (int i = 0; i < k; i++) {
			ck_assert(dh_read_line(fd, r, sizeof(r)));
			ck_assert_msg(strncmp(r, "OK ", 3) == 0, "%s", r);
		}
		done += k;
	}
}

/* SIGKILL doved after `n` answered transfers; returns the WAL dir. */
static void
answer_then_kill(int n, char *wal, size_t size)
{
	dh_start(&h);
	make_accounts(2);
	int fd = dh_ingress(&h);
	answered_transfers(fd, 1000, n);
	close(fd);
	kill(h.pid, SIGKILL);
	ck_assert_int_ne(dh_wait(h.pid, 5000), -1);
	h.pid = 0;
	snprintf(wal, size, "%s/data/wal", h.dir);
}

/* doved must refuse to start, exit 1, and say needle. */
static void
start_refused(const char *needle)
{
	char cmd[512];
	static char out[65536];
	/* A start that is wrongly accepted would run for ever. */
	snprintf(cmd, sizeof(cmd), "timeout 20 %s -c %s 2>&1", DOVED_PATH, h.cfg);
	int st = dh_run(cmd, out, sizeof(out));
	ck_assert_msg(st == 1, "exit %d: %s", st, out);
	ck_assert_msg(strstr(out, needle), "want '%s' in: %s", needle, out);
}

/* Run a shell script with $W set to the WAL dir; it must succeed. */
static void
sh(const char *script, const char *wal)
{
	char out[4096];
	setenv("W", wal, 1);
	ck_assert_msg(dh_run(script, out, sizeof(out)) == 0, "%s: %s", script,
		      out);
}

/*
 * Tried, after 20,000 answered transfers and a SIGKILL, with 1 MiB
 * segments (several): the newest segment deleted; emptied. Before the
 * fix doved started, verify said ok, and the newest answered ids were
 * taken again as new.
 */
START_TEST(lost_newest_segment_refuses_start)
{
	dh_write_config(&h, "[wal]\nsegment_mb = 1\nmax_epoch_kb = 256\n[snapshot]\nevery_s = 0\n");
	char wal[256];
	answer_then_kill(20000, wal, sizeof(wal));
	sh("cd $W && ls wal-*.log | wc -l | grep -qv '^1$' && cp -a $W $W.orig", wal);
	sh("cd $W && rm \"$(ls wal-*.log | tail -1)\"", wal);
	start_refused("which is missing");
	sh("rm -rf $W && cp -a $W.orig $W", wal);
	sh("cd $W && truncate -s 0 \"$(ls wal-*.log | tail -1)\"", wal);
	start_refused("the file is empty");
	/* The undamaged log still starts, with every answer kept. */
	sh("rm -rf $W && cp -a $W.orig $W", wal);
	dh_start(&h);
	int fd = dh_ingress(&h);
	char r[256];
	ck_assert(dh_cmd_fd(fd, "BALANCE 2", r, sizeof(r)));
	ck_assert_str_eq(r, "BAL 2 20000 0 0 -");
	ck_assert(dh_cmd_fd(fd, "TRANSFER 20999 1 2 1", r, sizeof(r)));
	/* The last one answered is a repeat, not new. */
	ck_assert_msg(strncmp(r, "OK 20999 ", 9) == 0 &&
			      strcmp(r + strlen(r) - 4, " dup") == 0,
		      "%s", r);
	close(fd);
}
END_TEST

/* Tried, with the default config (one 64 MiB segment holds it all): the
 * only segment deleted. The anchor says a log was there. */
START_TEST(lost_only_segment_refuses_start)
{
	char wal[256];
	answer_then_kill(5000, wal, sizeof(wal));
	sh("cd $W && rm wal-*.log", wal);
	start_refused("no segment file left");
}
END_TEST

/* Tried: the last answered epoch's last written byte flipped; then the
 * segment cut short by 100 bytes. Before the fix both were cut as a
 * torn tail ("never acknowledged") and answered ids came back as new. */
START_TEST(damaged_last_epoch_refuses_start)
{
	char wal[256];
	answer_then_kill(5000, wal, sizeof(wal));
	sh("cd $W && cp -a $W $W.orig", wal);
	/* The last non-zero byte of the newest segment: inside the last
	 * epoch's records. */
	sh("cd $W && f=$(ls wal-*.log | tail -1) && "
	   "p=$(od -An -v -tu1 -w1 \"$f\" | awk '$1 != 0 { n = NR } END { print n - 1 }') && "
	   "printf '\\377' | dd of=\"$f\" bs=1 seek=$p conv=notrunc 2>/dev/null", wal);
	start_refused("not torn");
	sh("rm -rf $W && cp -a $W.orig $W", wal);
	sh("cd $W && f=$(ls wal-*.log | tail -1) && "
	   "truncate -s $(( $(stat -c %s \"$f\") - 100 )) \"$f\"", wal);
	start_refused("cut short");
}
END_TEST

/* ---- 4: a chain longer than the pipeline ------------------------------- */

/* Send a chain of n transfers (ids from id0, 1 -> 2) at once and read n
 * replies, each of which must start with want. */
static void
chain_answered(int fd, uint64_t id0, int n, const char *want)
{
	char buf[80 * 70] = "";
	size_t len = 0;
	for (int i = 0; i < n; i++)
		len += (size_t)snprintf(buf + len, sizeof(buf) - len,
					"TRANSFER %lu 1 2 1%s\n",
					(unsigned long)id0 + (unsigned long)i,
					i + 1 < n ? " linked" : "");
	ck_assert_int_eq(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
	struct timeval tv = { 5, 0 }; /* a hang fails, not blocks */
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	char r[256];
	for (int i = 0; i < n; i++) {
		ck_assert_msg(dh_read_line(fd, r, sizeof(r)),
			      "chain of %d: no reply %d (hung)", n, i);
		ck_assert_msg(strncmp(r, want, strlen(want)) == 0,
			      "chain of %d, reply %d: %s", n, i, r);
	}
}

/* Tried: [ingress] pipeline 1 with a chain of 2, pipeline 4 with chains
 * of 5 and of 64 (the most a chain may hold); before the fix the
 * connection hung for ever. A chain of 65 is refused, not hung. */
START_TEST(chain_longer_than_pipeline_is_answered)
{
	static const int pipeline[] = { 1, 4 };
	for (int p = 0; p < 2; p++) {
		char cfg[128];
		snprintf(cfg, sizeof(cfg), "[ingress]\npipeline = %d\n",
			 pipeline[p]);
		dh_write_config(&h, cfg);
		dh_start(&h);
		if (p == 0)
			make_accounts(2);
		int fd = dh_ingress(&h);
		uint64_t id = 100000u * (uint64_t)(p + 1);
		chain_answered(fd, id, pipeline[p] + 1, "OK ");
		chain_answered(fd, id + 100, 64, "OK ");
		chain_answered(fd, id + 200, 65, "ERR ");
		/* ...and the connection is still usable. */
		char r[256];
		ck_assert(dh_cmd_fd(fd, "PING", r, sizeof(r)));
		ck_assert_str_eq(r, "PONG");
		close(fd);
		kill(h.pid, SIGTERM);
		ck_assert_int_ne(dh_wait(h.pid, 5000), -1);
		h.pid = 0;
	}
}
END_TEST

/* ---- 5: the ingress socket path ----------------------------------------- */

/* Tried: [ingress] unix pointed at a WAL segment of a killed doved, then
 * at the config file itself: before the fix each was unlinked and
 * replaced by a socket (an answered transfer gone; config.ini deleted).
 * Now the start is refused and the file is untouched. */
START_TEST(ingress_path_that_is_a_file_is_left_alone)
{
	char wal[256];
	answer_then_kill(100, wal, sizeof(wal));
	char seg[512], out[4096], cfg[1024];
	setenv("W", wal, 1);
	dh_run("ls $W/wal-*.log | tail -1 | tr -d '\\n'", seg, sizeof(seg));
	ck_assert_msg(strstr(seg, "wal-"), "%s", seg);
	struct stat before, after;
	ck_assert_int_eq(stat(seg, &before), 0);
	snprintf(cfg, sizeof(cfg), "[ingress]\nunix = %s\n", seg);
	dh_write_config(&h, cfg);
	start_refused("exists and is not a socket");
	ck_assert_int_eq(stat(seg, &after), 0);
	ck_assert(S_ISREG(after.st_mode));
	ck_assert_int_eq(after.st_size, before.st_size);
	ck_assert_int_eq(after.st_mtime, before.st_mtime);

	snprintf(cfg, sizeof(cfg), "[ingress]\nunix = %s\n", h.cfg);
	dh_write_config(&h, cfg);
	start_refused("exists and is not a socket");
	size_t n = dh_read_file(h.cfg, out, sizeof(out));
	ck_assert_msg(n > 0 && strstr(out, "[ingress]"), "config.ini: %s", out);
	/* The log is intact: with its own socket, every answer is there. */
	dh_write_config(&h, NULL);
	dh_start(&h);
	expect_reply("BALANCE 2", "BAL 2 100 0 0 -");
}
END_TEST

/* Tried: a second doved with its own pid file, admin socket and data
 * directory but the first one's [ingress] unix. Before the fix it took
 * the socket over; now it is refused and the first keeps serving. */
START_TEST(second_doved_cannot_take_over_the_ingress_socket)
{
	dh_start(&h);
	struct dh h2;
	dh_init(&h2, NULL);
	char cfg[512];
	snprintf(cfg, sizeof(cfg), "[ingress]\nunix = %s\n", h.ingress);
	dh_write_config(&h2, cfg);
	char cmd[512];
	static char out[65536];
	snprintf(cmd, sizeof(cmd), "timeout 20 %s -c %s 2>&1", DOVED_PATH, h2.cfg);
	int st = dh_run(cmd, out, sizeof(out));
	dh_cleanup(&h2);
	ck_assert_msg(st == 1, "exit %d: %s", st, out);
	ck_assert_msg(strstr(out, "another server answers on it"), "%s", out);
	expect_reply("PING", "PONG");
}
END_TEST

/* ---- 6: [snapshot] keep gives a fallback ------------------------------- */

/* Tried: keep = 2, 1 MiB segments; 20,000 transfers, a snapshot, 20,000
 * more, a clean stop (the second snapshot), then one byte of the newest
 * snapshot flipped. Before the fix the log behind the newest snapshot was
 * gone, so the older one could not be replayed forward: start refused. */
START_TEST(damaged_newest_snapshot_falls_back_across_segments)
{
	dh_write_config(&h, "[wal]\nsegment_mb = 1\nmax_epoch_kb = 256\n"
			    "[snapshot]\nevery_s = 0\nkeep = 2\n");
	dh_start(&h);
	make_accounts(2);
	int fd = dh_ingress(&h);
	answered_transfers(fd, 1000, 20000);
	char r[4096];
	dh_admin(&h, "snapshot", r, sizeof(r));
	dh_wait_admin(&h, "stats", "\"snapshots_taken\":1", true, 10000);
	answered_transfers(fd, 100000, 20000);
	close(fd);
	kill(h.pid, SIGTERM);
	ck_assert_int_ne(dh_wait(h.pid, 10000), -1);
	h.pid = 0;
	char snaps[256];
	snprintf(snaps, sizeof(snaps), "%s/data/snap", h.dir);
	sh("test $(ls $W/snap-*.snap | wc -l) = 2 && f=$(ls $W/snap-*.snap | tail -1) && "
	   "printf 'X' | dd of=$f bs=1 seek=100 conv=notrunc 2>/dev/null", snaps);
	dh_start(&h);
	char log[65536];
	dh_read_file(h.log, log, sizeof(log));
	ck_assert_msg(strstr(log, "is not usable"), "%s", log);
	expect_reply("BALANCE 2", "BAL 2 40000 0 0 -");
}
END_TEST

/* ---- 7: the small ones ------------------------------------------------- */

/* One raw admin request (len bytes, may hold NUL); the reply line. */
static void
admin_raw(const char *req, size_t len, char *buf, size_t size)
{
	int fd = dh_connect(h.sock);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(send(fd, req, len, MSG_NOSIGNAL), (ssize_t)len);
	ck_assert_msg(dh_read_line(fd, buf, size), "admin closed the connection");
	close(fd);
}

/* Is every byte of s well-formed UTF-8 (what a JSON parser needs)? */
static bool
valid_utf8(const unsigned char *s)
{
	while (*s) {
		int n = *s < 0x80 ? 1 : (*s & 0xe0) == 0xc0 ? 2
				      : (*s & 0xf0) == 0xe0 ? 3
				      : (*s & 0xf8) == 0xf0 ? 4 : 0;
		if (n == 0)
			return false;
		for (int i = 1; i < n; i++)
			if ((s[i] & 0xc0) != 0x80)
				return false;
		s += n;
	}
	return true;
}

/* Tried: `history 1 --limit 1000` over 3,000 journal entries (closed the
 * connection: over the 64 KiB output cap); an unknown command with bytes
 * that are not UTF-8 (echoed raw: invalid JSON); `status\0junk` (taken as
 * status). */
START_TEST(admin_replies_fit_and_stay_json)
{
	dh_write_config(&h, "[hot]\nhistory = 4096\n");
	dh_start(&h);
	make_accounts(2);
	int fd = dh_ingress(&h);
	answered_transfers(fd, 1000, 3000);
	close(fd);
	static char r[1 << 17];
	admin_raw("history 1 --limit 1000\n", 23, r, sizeof(r));
	ck_assert_msg(strstr(r, "\"truncated\":true"), "%.300s", r);
	ck_assert_msg(strlen(r) < 65536, "%zu bytes", strlen(r));
	admin_raw("history 1 --limit 5\n", 20, r, sizeof(r));
	ck_assert_msg(strstr(r, "\"truncated\":false"), "%.300s", r);

	admin_raw("fr\xffob\xc3\x28 \xed\xa0\x80\n", 12, r, sizeof(r));
	ck_assert_msg(strstr(r, "unknown command"), "%s", r);
	ck_assert_msg(valid_utf8((const unsigned char *)r), "not UTF-8: %s", r);
	ck_assert_msg(strstr(r, "\\ufffd"), "%s", r);

	admin_raw("status\0junk\n", 12, r, sizeof(r));
	ck_assert_msg(strstr(r, "NUL byte") && !strstr(r, "\"pid\""), "%s", r);
}
END_TEST

/* Tried: config.ini emptied, then SIGHUP. Before the fix every live key
 * silently went back to its default; now the reload is refused, status
 * says why, and the running value stays. */
START_TEST(empty_config_reload_is_refused)
{
	dh_write_config(&h, "[hot]\nmerge_ms = 777\n");
	dh_start(&h);
	dh_write_file(h.cfg, "");
	kill(h.pid, SIGHUP);
	dh_wait_admin(&h, "status", "sets no key", true, 5000);
	char r[16384];
	dh_admin(&h, "config", r, sizeof(r));
	ck_assert_msg(strstr(r, "777"), "%s", r);
	/* A real change is taken, and logged. */
	dh_write_config(&h, "[hot]\nmerge_ms = 555\n");
	kill(h.pid, SIGHUP);
	dh_wait_admin(&h, "config", "555", true, 5000);
	char log[65536];
	dh_read_file(h.log, log, sizeof(log));
	ck_assert_msg(strstr(log, "[hot] merge_ms = 555 (was 777)"), "%s", log);
}
END_TEST

/* Tried: the first segment deleted while no snapshot exists. Before, the
 * refusal said "the sequencer refuses a logged record (type 2, len 48)". */
START_TEST(missing_first_epochs_are_named)
{
	dh_write_config(&h, "[wal]\nsegment_mb = 1\nmax_epoch_kb = 256\n"
			    "[snapshot]\nevery_s = 0\n");
	char wal[256];
	answer_then_kill(40000, wal, sizeof(wal));
	sh("cd $W && test $(ls wal-*.log | wc -l) -ge 3 && rm $(ls wal-*.log | head -1)",
	   wal);
	start_refused("there is no snapshot: were the first segment or the "
		      "snapshots removed?");
}
END_TEST

/* Tried: doved under RLIMIT_FSIZE of 1100 KiB with 1 MiB segments, so the
 * log fits and the final snapshot of 60,000 ids (1.4 MB) does not. Before the fix
 * SIGXFSZ killed it at SIGTERM, leaving pid file, sockets and a temp
 * file. Now the snapshot fails with EFBIG, doved stops cleanly, and the
 * next start replays the log. */
START_TEST(file_size_limit_does_not_kill)
{
	dh_write_config(&h, "[wal]\nsegment_mb = 1\nmax_epoch_kb = 256\n"
			    "[snapshot]\nevery_s = 0\n");
	struct rlimit old, lim = { 1100 * 1024, RLIM_INFINITY };
	getrlimit(RLIMIT_FSIZE, &old);
	signal(SIGXFSZ, SIG_IGN);
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
	dh_start(&h); /* inherits the limit */
	lim.rlim_cur = old.rlim_cur;
	setrlimit(RLIMIT_FSIZE, &lim);
	make_accounts(2);
	int fd = dh_ingress(&h);
	answered_transfers(fd, 1000, 60000);
	close(fd);
	kill(h.pid, SIGTERM);
	int st = dh_wait(h.pid, 10000);
	h.pid = 0;
	ck_assert_msg(st != -1 && WIFEXITED(st), "doved did not exit (status %d)",
		      st);
	char log[65536];
	dh_read_file(h.log, log, sizeof(log));
	ck_assert_msg(strstr(log, "snapshot at stop") && strstr(log, "EFBIG"),
		      "%s", log);
	ck_assert_int_ne(access(h.pidf, F_OK), 0);
	ck_assert_int_ne(access(h.ingress, F_OK), 0);
	char snaps[256];
	snprintf(snaps, sizeof(snaps), "%s/data/snap", h.dir);
	sh("! ls $W | grep -q tmp", snaps);
	dh_start(&h);
	expect_reply("BALANCE 2", "BAL 2 60000 0 0 -");
}
END_TEST

/* ---- storage fault injection (DOVE_FAULT) ------------------------------- */

/*
 * Each case makes one durable-I/O call of the storage layer fail (the
 * n-th of its kind; "+": and every later one) in a real doved under a
 * pipelined load that rolls two segments and takes snapshots. Whatever
 * fails, every reply is OK or `unavailable`; a failed fdatasync or
 * directory fsync poisons the WAL (status says so and why, and every
 * later write is refused); after a SIGKILL and a start without the fault,
 * every answered transfer is there exactly once (a retry is `dup`), every
 * refused one can be retried, and the books balance.
 */
static const char *const fault_specs[] = {
	/* the epochs' own pwrite and fdatasync */
	"wal.write:3:EIO", "wal.write:3:ENOSPC", "wal.write:5:short",
	"wal.write:8+:ENOSPC", "wal.sync:1:EIO", "wal.sync:3:EIO",
	"wal.sync:20:ENOSPC",
	/* first header (1), anchor (2), second header (3), first seal (4),
	 * third header (5), second seal (6); and their fdatasync */
	"wal.segwrite:1:EIO", "wal.segwrite:2:EIO", "wal.segwrite:3:ENOSPC",
	"wal.segwrite:4:EIO", "wal.segwrite:4:short", "wal.segwrite:6:EIO",
	"wal.segsync:1:EIO", "wal.segsync:2:EIO", "wal.segsync:3:EIO",
	"wal.segsync:4:EIO",
	/* first segment (1), anchor (2), later segments; directory fsyncs */
	"wal.rename:1:EIO", "wal.rename:2:EIO", "wal.rename:3:ENOSPC",
	"wal.dirsync:1:EIO", "wal.dirsync:2:EIO", "wal.dirsync:3:EIO",
	/* after the first snapshot retires a segment: logged, no poison
	 * (deleting is not acknowledging) */
	"wal.dirsync:4:EIO",
	/* preparing the next segment: once, and the disk staying full */
	"wal.fallocate:1:ENOSPC", "wal.fallocate:2:ENOSPC",
	"wal.fallocate:2+:ENOSPC",
	/* snapshots (each child counts from 1) */
	"snap.write:1:EIO", "snap.write:2:short", "snap.write:1+:ENOSPC",
	"snap.sync:1:EIO", "snap.rename:1:EIO", "snap.dirsync:1:EIO",
};

#define FAULT_IDS 40000
#define FAULT_ID0 1000

/* ACCOUNT 1 and 2 until each exists (a refusal is retried). */
static bool
ensure_accounts(int fd)
{
	char r[256], line[32];
	for (int a = 1; a <= 2; a++) {
		bool ok = false;
		for (int t = 0; t < 3 && !ok; t++) {
			snprintf(line, sizeof(line), "ACCOUNT %d", a);
			ck_assert(dh_cmd_fd(fd, line, r, sizeof(r)));
			ok = !strncmp(r, "OK ", 3) || strstr(r, "account_exists");
			ck_assert_msg(ok || strstr(r, "unavailable"), "%s: %s", line, r);
		}
		if (!ok)
			return false;
	}
	return true;
}

/* Pipeline TRANSFER id 1 2 1 for ids [from, to) in rounds of 1000 and
 * record state[id - FAULT_ID0]: 1 answered OK, 2 refused. retry: every
 * reply must be OK, and dup for what was answered OK before. */
static void
fault_round(int fd, uint64_t from, uint64_t to, char *state, bool retry)
{
	static char buf[1000 * 48];
	for (uint64_t id = from; id < to;) {
		uint64_t end = id + 1000 < to ? id + 1000 : to;
		size_t len = 0;
		for (uint64_t i = id; i < end; i++)
			len += (size_t)snprintf(buf + len, sizeof(buf) - len,
						"TRANSFER %lu 1 2 1\n", (unsigned long)i);
		ck_assert_int_eq(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
		for (uint64_t i = id; i < end; i++) {
			char r[256], want[64];
			ck_assert_msg(dh_read_line(fd, r, sizeof(r)), "no reply to %lu",
				      (unsigned long)i);
			char *st = &state[i - FAULT_ID0];
			snprintf(want, sizeof(want), "OK %lu ", (unsigned long)i);
			bool ok = !strncmp(r, want, strlen(want));
			bool dup = ok && strstr(r, " dup") != NULL;
			if (retry) {
				ck_assert_msg(ok, "retry of %lu: %s", (unsigned long)i, r);
				/* Answered OK before: it must be there, once. */
				ck_assert_msg(*st != 1 || dup,
					      "answered transfer %lu lost: %s",
					      (unsigned long)i, r);
				continue;
			}
			snprintf(want, sizeof(want), "ERR %lu unavailable", (unsigned long)i);
			ck_assert_msg(ok || !strcmp(r, want) || strstr(r, "no_such_account"),
				      "transfer %lu: %s", (unsigned long)i, r);
			ck_assert_msg(!dup, "a first send answered dup: %s", r);
			*st = ok ? 1 : 2;
		}
		id = end;
	}
}

/* Poll until doved answers on its admin socket (true) or exits (false). */
static bool
started_or_exited(pid_t pid, int *status)
{
	for (int i = 0; i < 400; i++) {
		if (waitpid(pid, status, WNOHANG) == pid)
			return false;
		int fd = dh_connect(h.sock);
		if (fd >= 0) {
			close(fd);
			return true;
		}
		usleep(25000);
	}
	ck_abort_msg("doved neither started nor exited in 10 s");
	return false;
}

START_TEST(storage_faults_lose_and_double_nothing)
{
	const char *spec = fault_specs[_i];
	dh_write_config(&h, "[wal]\nsegment_mb = 1\nmax_epoch_kb = 16\n"
			    "[settle]\naccounts_max = 64\ndedup_window = 65536\n");
	static char state[FAULT_IDS];
	memset(state, 0, sizeof(state));
	setenv("DOVE_FAULT", spec, 1);
	const char *args[] = { "doved", "-c", h.cfg, NULL };
	h.pid = dh_spawn(&h, args, h.log);
	unsetenv("DOVE_FAULT");
	int wst;
	char r[8192];
	if (!started_or_exited(h.pid, &wst)) {
		/* A fault during recovery: refused with the reason, logged. */
		h.pid = 0;
		ck_assert_msg(WIFEXITED(wst) && WEXITSTATUS(wst) != 0,
			      "%s: doved exited %d at start", spec, wst);
		dh_read_file(h.log, r, sizeof(r));
		ck_assert_msg(strstr(r, "fault injection:") && strstr(r, "ERROR"),
			      "%s: start failed without saying why: %s", spec, r);
	} else {
		int fd = dh_ingress(&h);
		bool accounts = ensure_accounts(fd);
		for (int round = 0; round < 4; round++) {
			uint64_t from = FAULT_ID0 + (uint64_t)round * (FAULT_IDS / 4);
			fault_round(fd, from, from + FAULT_IDS / 4, state, false);
			dh_admin(&h, "snapshot", r, sizeof(r));
		}
		close(fd);
		dh_admin(&h, "status", r, sizeof(r));
		bool poisoned = strstr(r, "\"accepting_writes\":false") != NULL;
		char log[65536];
		dh_read_file(h.log, log, sizeof(log));
		bool hit = strstr(log, "fault injection:") != NULL;
		/* A failed sync (of an epoch, a header, a seal, the directory
		 * after a roll) must poison; the status names it. */
		bool must_poison = hit && accounts &&
				   (strstr(spec, "wal.sync") || strstr(spec, "wal.segsync") ||
				    strstr(spec, "wal.dirsync:3") ||
				    strstr(spec, "wal.segwrite:4:EIO"));
		ck_assert_msg(poisoned || !must_poison, "%s: not poisoned: %s", spec, r);
		if (poisoned) {
			ck_assert_msg(strstr(r, "\"error\":\"") &&
				      strstr(r, "poisoned"), "%s: %s", spec, r);
			/* ...and nothing more is accepted. */
			expect_reply("TRANSFER 999 1 2 1",
				     accounts ? "ERR 999 unavailable"
					      : "ERR 999 no_such_account");
		}
		kill(h.pid, SIGKILL);
		ck_assert_int_ne(dh_wait(h.pid, 5000), -1);
		h.pid = 0;
	}
	/* Start without the fault: what was answered is there, once. */
	dh_start(&h);
	int fd = dh_ingress(&h);
	ck_assert_msg(ensure_accounts(fd), "%s: accounts after restart", spec);
	fault_round(fd, FAULT_ID0, FAULT_ID0 + FAULT_IDS, state, true);
	ck_assert(dh_cmd_fd(fd, "BALANCE 2", r, sizeof(r)));
	char want[64];
	snprintf(want, sizeof(want), "BAL 2 %d 0 ", FAULT_IDS);
	ck_assert_msg(!strncmp(r, want, strlen(want)), "%s: %s", spec, r);
	close(fd);
	dh_admin(&h, "verify", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"ok\":true"), "%s: %s", spec, r);
}
END_TEST

static Suite *
reliability_suite(void)
{
	Suite *s = suite_create("reliability");
	TCase *tc = dh_tcase(s, "clients", setup, teardown, 300);
	tcase_add_test(tc, vanishing_pipelined_clients_do_not_crash);
	tcase_add_test(tc, chain_longer_than_pipeline_is_answered);
	tc = dh_tcase(s, "paths", setup, teardown, 120);
	tcase_add_test(tc, ingress_path_that_is_a_file_is_left_alone);
	tcase_add_test(tc, second_doved_cannot_take_over_the_ingress_socket);
	tcase_add_test(tc, damaged_newest_snapshot_falls_back_across_segments);
	tc = dh_tcase(s, "small", setup, teardown, 120);
	tcase_add_test(tc, admin_replies_fit_and_stay_json);
	tcase_add_test(tc, empty_config_reload_is_refused);
	tcase_add_test(tc, missing_first_epochs_are_named);
	tcase_add_test(tc, file_size_limit_does_not_kill);
	tc = dh_tcase(s, "wal_tail", setup, teardown, 120);
	tcase_add_test(tc, lost_newest_segment_refuses_start);
	tcase_add_test(tc, lost_only_segment_refuses_start);
	tcase_add_test(tc, damaged_last_epoch_refuses_start);
	tc = dh_tcase(s, "faults", setup, teardown, 120);
	tcase_add_loop_test(tc, storage_faults_lose_and_double_nothing, 0,
			    (int)(sizeof(fault_specs) / sizeof(fault_specs[0])));
	return s;
}

int
main(void)
{
	return dh_run_suite(reliability_suite());
}
