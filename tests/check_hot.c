/*
 * check_hot.c - differentiated settlement against a real doved: a crash
 * (SIGKILL) in the middle of a peak recovers the same buffers, hot set
 * and answers; automatic detection makes a busy account hot and lets it
 * go when the load stops; a SIGHUP that moves the peak windows ends a
 * peak that is on; admin peak/hot/merge/history.
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static struct dh h;

static void
teardown(void)
{
	dh_cleanup(&h);
}

static void
lines_ok(int fd, const char *const *lines, int n)
{
	static char rep[64][256];
	ck_assert_int_le(n, 64);
	ck_assert(dh_lines(fd, lines, n, rep));
	for (int i = 0; i < n; i++)
		ck_assert_msg(strncmp(rep[i], "OK ", 3) == 0, "%s -> %s",
			      lines[i], rep[i]);
}

static void
kill9_and_restart(void)
{
	kill(h.pid, SIGKILL);
	waitpid(h.pid, NULL, 0);
	h.pid = 0;
	dh_start(&h);
}

/* What recovery must reproduce: balances (posted and buffered) of the
 * accounts that take credits, each one's open buffer, the hot set. */
static void
state(char *out, size_t size)
{
	int fd = dh_ingress(&h);
	size_t len = 0;
	char r[256];
	for (int id = 1; id <= 5; id++) {
		char line[32];
		snprintf(line, sizeof(line), "BALANCE %d", id);
		ck_assert(dh_cmd_fd(fd, line, r, sizeof(r)));
		len += (size_t)snprintf(out + len, size - len, "%s\n", r);
	}
	close(fd);
	for (int id = 2; id <= 3; id++) {
		char cmd[32], a[4096];
		snprintf(cmd, sizeof(cmd), "account %d", id);
		dh_admin(&h, cmd, a, sizeof(a));
		const char *p = strstr(a, "\"buffered_count\"");
		ck_assert_ptr_nonnull(p);
		len += (size_t)snprintf(out + len, size - len, "%d %.80s\n", id, p);
	}
	char hot[8192];
	dh_admin(&h, "hot", hot, sizeof(hot));
	const char *p = strstr(hot, "\"hot\":[");
	ck_assert_ptr_nonnull(p);
	snprintf(out + len, size - len, "%s", p);
}

/* Credits to 2 and 3 (hot) and 4; now and then a debit of 2 (forced
 * merges). The kind is a function of the id, so a resubmission can be
 * rebuilt from it. */
static void
o2o_line(uint64_t id, char *buf, size_t size)
{
	int kind = (int)(id % 7);
	snprintf(buf, size,
		 kind == 6 ? "TRANSFER %llu 2 5 4"
		 : kind < 3 ? "TRANSFER %llu 1 2 3"
		 : kind < 5 ? "TRANSFER %llu 1 3 2"
			    : "TRANSFER %llu 1 4 1",
		 (unsigned long long)id);
}

/* Peak always, 2 hot by its flag and 3 by [hot] accounts, no timed
 * merges: buffers grow; debits from 2 force merges. doved is killed at
 * random moments under pipelined load, a snapshot asked for in each
 * life; every answered transfer must come back exactly once, and after
 * the load the recovered state must equal what was there before a kill. */
START_TEST(crash_in_peak_recovers_buffers)
{
	dh_init(&h, "[settle]\nshards = 2\n[peak]\nmode = always\n[hot]\naccounts = 3\n"
		    "merge_ms = 3600000\nmerge_max = 100000000\n"
		    "auto_threshold = 0\n");
	dh_start(&h);
	int fd = dh_ingress(&h);
	const char *setup[] = { "ACCOUNT 1", "ACCOUNT 2 nonneg hot",
				"ACCOUNT 3 nonneg", "ACCOUNT 4 nonneg",
				"ACCOUNT 5 nonneg" };
	lines_ok(fd, setup, 5);
	close(fd);
	dh_wait_admin(&h, "hot", "\"reason\":\"config\"", true, 3000);

	static char answered[12000][32];
	uint64_t next_id = 100;
	for (int life = 0; life < 8; life++)
		dh_crash_life(&h, 3, &next_id, 12000, o2o_line, answered,
			      11u + (unsigned)life * 7919u);
	/* Every answered transfer: its resubmission is a dup of the same
	 * epoch (the kind is a function of the id). */
	fd = dh_ingress(&h);
	int total = 0;
	char r[256];
	for (uint64_t id = 100; id < next_id; id++) {
		if (answered[id][0] == '\0')
			continue;
		char line[64], want[64];
		o2o_line(id, line, sizeof(line));
		ck_assert(dh_cmd_fd(fd, line, r, sizeof(r)));
		snprintf(want, sizeof(want), "%s dup", answered[id]);
		ck_assert_msg(strcmp(r, want) == 0, "id %llu: '%s', want '%s'",
			      (unsigned long long)id, r, want);
		total++;
	}
	close(fd);
	ck_assert_int_ge(total, 200); /* the test did something */
	/* Quiet now: the state before a kill is the state after it. */
	static char before[16384], after[16384];
	state(before, sizeof(before));
	ck_assert_msg(strstr(before, "BAL 2 ") && !strstr(before, "\"buffered_count\":0,"),
		      "no open buffers to recover: %s", before);
	kill9_and_restart();
	state(after, sizeof(after));
	ck_assert_str_eq(after, before);
	char v[4096];
	dh_admin(&h, "verify", v, sizeof(v));
	ck_assert_msg(strstr(v, "\"ok\":true"), "%s", v);
	/* ...and buffering and merges did happen: 2 is hot in a peak that
	 * never ends and no timed or merge_max merge comes, so its posted
	 * credits can only come from merges forced by its debits. (Read from
	 * the state, not from `stats`: counters start again at a restart,
	 * and a restart from a snapshot replays nothing.) */
	unsigned long long cp, dp, cb;
	const char *bal2 = strstr(before, "BAL 2 ");
	ck_assert_int_eq(sscanf(bal2, "BAL 2 %llu %llu %llu", &cp, &dp, &cb), 3);
	ck_assert_msg(cp > 0 && dp > 0 && cb > 0, "%s", bal2);
}
END_TEST

/* [hot] auto_threshold: an account taking 10x the threshold becomes hot
 * within one window and normal again once the load stops. */
START_TEST(auto_detection_real_process)
{
	dh_init(&h, "[peak]\nmode = never\n[hot]\nauto_threshold = 200\n"
		    "auto_window_s = 1\n");
	dh_start(&h);
	int fd = dh_ingress(&h);
	const char *setup[] = { "ACCOUNT 1", "ACCOUNT 2", "ACCOUNT 3" };
	lines_ok(fd, setup, 3);
	/* ~2,000 postings/s to 2 for 1.2 s (10x the threshold); 3 gets a
	 * few (below it). */
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	uint64_t id = 1000;
	bool seen = false;
	for (int round = 0; round < 60; round++) {
		static char lines[40][48];
		const char *ptr[40];
		for (int i = 0; i < 40; i++) {
			snprintf(lines[i], sizeof(lines[i]), "TRANSFER %llu 1 %d 1",
				 (unsigned long long)id++, i == 0 ? 3 : 2);
			ptr[i] = lines[i];
		}
		lines_ok(fd, ptr, 40);
		usleep(20000);
		if (!seen) {
			char hot[4096];
			dh_admin(&h, "hot", hot, sizeof(hot));
			seen = strstr(hot, "{\"id\":2,\"reason\":\"auto\"") != NULL;
			ck_assert_msg(strstr(hot, "\"id\":3") == NULL, "%s", hot);
		}
	}
	struct timespec t1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double secs = (double)(t1.tv_sec - t0.tv_sec) +
		      (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	ck_assert_msg(seen, "account 2 never became hot in %.2f s", secs);
	close(fd);
	/* No more load: normal again after the window in which it stopped
	 * and one without postings (at most ~2 windows). */
	dh_wait_admin(&h, "hot", "\"id\":2", false, 3500);
}
END_TEST

/* A peak window crossing midnight is read as such, and a SIGHUP that
 * changes [peak] windows while a peak is on ends it: its buffers merge. */
START_TEST(sighup_moves_the_window)
{
	time_t now = time(NULL);
	struct tm tm;
	localtime_r(&now, &tm);
	int m = tm.tm_hour * 60 + tm.tm_min;
	/* A window from 30 minutes ago to 30 minutes from now (crossing
	 * midnight when now is near it), then one far from now. */
	int from = (m + 1440 - 30) % 1440, to = (m + 30) % 1440;
	int away_from = (m + 180) % 1440, away_to = (m + 240) % 1440;
	char cfg[512];
	snprintf(cfg, sizeof(cfg),
		 "[peak]\nmode = schedule\nwindows = %02d:%02d-%02d:%02d\n"
		 "[hot]\nmerge_ms = 3600000\nauto_threshold = 0\n",
		 from / 60, from % 60, to / 60, to % 60);
	dh_init(&h, cfg);
	dh_start(&h);
	dh_wait_admin(&h, "peak", "\"peak\":true", true, 2000);
	int fd = dh_ingress(&h);
	const char *setup[] = { "ACCOUNT 1", "ACCOUNT 2 hot",
				"TRANSFER 10 1 2 5", "TRANSFER 11 1 2 6" };
	lines_ok(fd, setup, 4);
	char r[256];
	/* Buffered while the peak is on. */
	ck_assert(dh_cmd_fd(fd, "BALANCE 2", r, sizeof(r)));
	ck_assert_str_eq(r, "BAL 2 0 0 11 hot");
	snprintf(cfg, sizeof(cfg),
		 "[peak]\nmode = schedule\nwindows = %02d:%02d-%02d:%02d\n"
		 "[hot]\nmerge_ms = 3600000\nauto_threshold = 0\n",
		 away_from / 60, away_from % 60, away_to / 60, away_to % 60);
	dh_write_config(&h, cfg);
	kill(h.pid, SIGHUP);
	dh_wait_admin(&h, "peak", "\"peak\":false", true, 2000);
	dh_wait_admin(&h, "stats", "\"peak_end\":1", true, 2000);
	ck_assert(dh_cmd_fd(fd, "BALANCE 2", r, sizeof(r)));
	ck_assert_str_eq(r, "BAL 2 11 0 0 hot");
	/* Real time again: a credit posts at once. */
	ck_assert(dh_cmd_fd(fd, "TRANSFER 12 1 2 1", r, sizeof(r)));
	ck_assert(dh_cmd_fd(fd, "BALANCE 2", r, sizeof(r)));
	ck_assert_str_eq(r, "BAL 2 12 0 0 hot");
	/* The journal says how each settled, and which batch merged the
	 * buffered ones. */
	char hist[8192];
	dh_admin(&h, "history 2 --limit 10", hist, sizeof(hist));
	ck_assert_msg(strstr(hist, "\"id\":12,") &&
			      strstr(hist, "\"settled\":\"realtime\",\"balance_after\":\"12\"") &&
			      strstr(hist, "\"reason\":\"peak_end\",\"count\":2,\"sum\":\"11\"") &&
			      strstr(hist, "\"settled\":\"buffered\",\"batch_lsn\":"),
		      "%s", hist);
	/* Both buffered credits name that batch, by its LSN. */
	const char *b = strstr(hist, "{\"type\":\"batch\"");
	const char *l = b ? strstr(b, "\"lsn\":") : NULL;
	ck_assert_ptr_nonnull(l);
	char want[64];
	snprintf(want, sizeof(want), "\"batch_lsn\":%llu}",
		 strtoull(l + 6, NULL, 10));
	const char *first = strstr(hist, want);
	ck_assert_msg(first && strstr(first + 1, want) &&
			      !strstr(strstr(first + 1, want) + 1, want),
		      "%s not twice in %s", want, hist);
	close(fd);
}
END_TEST

/* Admin: peak on/off/auto overrides, hot add/del, merge; refusals say
 * why and change nothing. */
START_TEST(admin_peak_hot_merge)
{
	dh_init(&h, "[peak]\nmode = never\n[hot]\nauto_threshold = 0\n"
		    "merge_ms = 3600000\n");
	dh_start(&h);
	int fd = dh_ingress(&h);
	const char *setup[] = { "ACCOUNT 1", "ACCOUNT 2", "ACCOUNT 3 hot" };
	lines_ok(fd, setup, 3);
	char r[4096];
	static const struct {
		const char *cmd, *want;
	} cases[] = {
		{ "hot add 2", "\"ok\":true" },
		/* The refusals, each with its reason: */
		{ "hot add 2", "already hot" },
		{ "hot add 99", "no such account" },
		{ "hot del 3", "flag" },
		{ "hot frob", "\"error\"" },
		{ "peak sideways", "\"error\"" },
		{ "history x", "\"error\"" },
		{ "history 2 --limit 0", "\"error\"" },
		{ "merge 1", "not a hot account" },
		/* trailing words are refused, not ignored (was: merge 2) */
		{ "merge 2 junk", "merge takes nothing (every buffer) or an account id" },
		{ "hot add 2 x", "hot takes nothing" },
	};
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		dh_admin(&h, cases[i].cmd, r, sizeof(r));
		ck_assert_msg(strstr(r, cases[i].want), "%s: %s", cases[i].cmd, r);
	}
	/* ...and they changed nothing: 2 and 3 hot, peak off. */
	dh_admin(&h, "hot", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"peak\":false") && strstr(r, "\"count\":2,") &&
			      strstr(r, "{\"id\":2,\"reason\":\"admin\"") &&
			      strstr(r, "{\"id\":3,\"reason\":\"flag\""),
		      "%s", r);
	dh_admin(&h, "peak on", r, sizeof(r));
	dh_wait_admin(&h, "peak", "\"peak\":true", true, 2000);
	const char *pay[] = { "TRANSFER 20 1 2 7" };
	lines_ok(fd, pay, 1);
	ck_assert(dh_cmd_fd(fd, "BALANCE 2", r, sizeof(r)));
	ck_assert_str_eq(r, "BAL 2 0 0 7 -");
	dh_admin(&h, "merge 2", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"ok\":true"), "%s", r);
	dh_wait_admin(&h, "stats", "\"admin\":1", true, 2000);
	ck_assert(dh_cmd_fd(fd, "BALANCE 2", r, sizeof(r)));
	ck_assert_str_eq(r, "BAL 2 7 0 0 -");
	dh_admin(&h, "hot del 2", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"ok\":true"), "%s", r);
	dh_admin(&h, "peak auto", r, sizeof(r));
	dh_wait_admin(&h, "peak", "\"peak\":false", true, 2000);
	/* The hot set and peak are in the log: a restart agrees. */
	kill9_and_restart();
	dh_admin(&h, "hot", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"count\":1,") && strstr(r, "\"id\":3"), "%s", r);
	close(fd);
}
END_TEST

static Suite *
hot_suite(void)
{
	Suite *s = suite_create("hot");
	TCase *tc = dh_tcase(s, "hot", NULL, teardown, 120);
	tcase_add_test(tc, crash_in_peak_recovers_buffers);
	tcase_add_test(tc, auto_detection_real_process);
	tcase_add_test(tc, sighup_moves_the_window);
	tcase_add_test(tc, admin_peak_hot_merge);
	return s;
}

int
main(void)
{
	return dh_run_suite(hot_suite());
}
