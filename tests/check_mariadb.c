/*
 * check_mariadb.c - the MariaDB projection against a real MariaDB server
 * (started by tools/test; DOVE_TEST_MARIADB_SOCKET names its socket) and
 * a real doved: the projection equals the ledger after an O2O workload
 * with peaks; SIGKILLs in the middle of projecting leave no transfer
 * missing or twice; a bad configuration names the host and settlement
 * goes on.
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static struct dh h;
static char db[64];
static const char *sock;

static void
setup(void)
{
	sock = getenv("DOVE_TEST_MARIADB_SOCKET");
	ck_assert_msg(sock && *sock, "DOVE_TEST_MARIADB_SOCKET is not set: run "
				     "the suite through tools/test, which starts "
				     "a private MariaDB");
	static int n;
	snprintf(db, sizeof(db), "dove_t%d_%d", (int)getpid(), n++);
}

static void
teardown(void)
{
	dh_cleanup(&h);
}

/* Run SQL as root over the socket; the output (tab separated, no
 * headers) into out. Fails the test on an error. */
static void
sql_at(const char *socket_path, const char *database, const char *stmt,
       char *out, size_t size)
{
	char cmd[4096];
	snprintf(cmd, sizeof(cmd),
		 "mariadb --no-defaults --socket='%s' -uroot -N -B %s -e \"%s\"",
		 socket_path, database ? database : "", stmt);
	int st = dh_run(cmd, out, size);
	ck_assert_msg(st == 0, "%s: %s", stmt, out);
}

static void
sql(const char *database, const char *stmt, char *out, size_t size)
{
	sql_at(sock, database, stmt, out, size);
}

static unsigned long long
sql_u64(const char *stmt)
{
	char out[256];
	sql(db, stmt, out, sizeof(out));
	return strtoull(out, NULL, 10);
}

/* doved with the MariaDB store on a fresh database. */
static void
start_on(const char *more_hosts, const char *extra)
{
	char out[1024], cfg[2048];
	char create[128];
	snprintf(create, sizeof(create), "CREATE DATABASE %s", db);
	sql(NULL, create, out, sizeof(out));
	snprintf(cfg, sizeof(cfg),
		 "[store]\nbackend = mariadb\n[mariadb]\nhosts = unix:%s%s\n"
		 "user = root\ndatabase = %s\nconnect_timeout_s = 1\n%s",
		 sock, more_hosts, db, extra);
	dh_init(&h, cfg);
	dh_start(&h);
}

static void
start_with(const char *extra)
{
	start_on("", extra);
}

/* rounds x 500 transfers 1 -> 2, pipelined, ids from first; all OK. */
static void
pipeline(int fd, int first, int rounds)
{
	static char lines[500][48];
	static const char *ptr[500];
	static char rep[500][256];
	for (int round = 0; round < rounds; round++) {
		for (int i = 0; i < 500; i++) {
			snprintf(lines[i], sizeof(lines[i]), "TRANSFER %d 1 2 1",
				 first + round * 500 + i);
			ptr[i] = lines[i];
		}
		ck_assert(dh_lines(fd, ptr, 500, rep));
		for (int i = 0; i < 500; i++)
			ck_assert_msg(strncmp(rep[i], "OK ", 3) == 0, "%s", rep[i]);
	}
}

/* Wait until the projection has every executed epoch. */
static void
caught_up(void)
{
	char r[8192] = "";
	for (int t = 0; t < 600; t++) {
		dh_admin(&h, "store", r, sizeof(r));
		if (strstr(r, "\"lag_epochs\":0,") && strstr(r, "\"connected\":true"))
			return;
		usleep(50000);
	}
	ck_abort_msg("the projection did not catch up: %s", r);
}

static void
store_verify_ok(void)
{
	char out[8192];
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "%s -s %s store verify", DOVECTL_PATH, h.sock);
	int st = dh_run(cmd, out, sizeof(out));
	ck_assert_msg(st == 0 && strstr(out, "verify.ok: true") &&
			      strstr(out, "verify.differences: 0"),
		      "store verify (exit %d): %s", st, out);
}

static void
send_ok(int fd, const char *line)
{
	char r[256];
	ck_assert(dh_cmd_fd(fd, line, r, sizeof(r)));
	ck_assert_msg(strncmp(r, "OK ", 3) == 0, "%s -> %s", line, r);
}

/* The payer and the payee of every test that needs only those. */
static void
accounts_1_2(void)
{
	int fd = dh_ingress(&h);
	send_ok(fd, "ACCOUNT 1");
	send_ok(fd, "ACCOUNT 2");
	close(fd);
}

/* An O2O workload with a peak, hot accounts and merges: every account's
 * counters and every transfer in MariaDB, sums balanced, batches there. */
START_TEST(projection_equals_ledger)
{
	start_with("[peak]\nmode = always\n[hot]\naccounts = 2\nmerge_max = 7\nmerge_ms = 3600000\n"
		   "auto_threshold = 0\n");
	int fd = dh_ingress(&h);
	send_ok(fd, "ACCOUNT 1");
	send_ok(fd, "ACCOUNT 2");               /* escrow, hot by config */
	send_ok(fd, "ACCOUNT 3 hot");           /* fee */
	for (int m = 10; m < 20; m++) {
		char line[64];
		snprintf(line, sizeof(line), "ACCOUNT %d nonneg", m);
		send_ok(fd, line);
	}
	dh_wait_admin(&h, "hot", "\"config\"", true, 2000);
	/* pay, settle (linked), withdraw (some refused: nonneg). */
	char r[256];
	int transfers = 0;
	for (int o = 0; o < 300; o++) {
		char a[96], b[96], c[96];
		int m = 10 + o % 10;
		snprintf(a, sizeof(a), "TRANSFER %d 1 2 %d code=1 ref=%d", 1000 + 4 * o,
			 100 + o, o);
		snprintf(b, sizeof(b), "TRANSFER %d 2 %d %d code=2 ref=%d linked",
			 1001 + 4 * o, m, 95 + o, o);
		snprintf(c, sizeof(c), "TRANSFER %d 2 3 5 code=5 ref=%d", 1002 + 4 * o,
			 o);
		send_ok(fd, a);
		const char *chain[] = { b, c };
		static char rep[2][256];
		ck_assert(dh_lines(fd, chain, 2, rep));
		char w[96];
		snprintf(w, sizeof(w), "TRANSFER %d %d 1 %d code=4", 1003 + 4 * o, m,
			 150 + o);
		ck_assert(dh_cmd_fd(fd, w, r, sizeof(r)));
		transfers += 4;
	}
	/* Balances past 64 bits (two maximal amounts): those rows take
	 * the text path; the DECIMAL columns hold them exactly. */
	send_ok(fd, "ACCOUNT 4");
	send_ok(fd, "TRANSFER 90001 1 4 9223372036854775807");
	send_ok(fd, "TRANSFER 90002 1 4 9223372036854775807");
	transfers += 2;
	close(fd);
	caught_up();
	store_verify_ok();
	char big[128];
	sql(db, "SELECT credit_balance_after FROM transfers WHERE id = 90002", big,
	    sizeof(big));
	ck_assert_msg(strncmp(big, "18446744073709551614", 20) == 0, "%s", big);
	sql(db, "SELECT debit_balance_after FROM transfers WHERE id = 90002", big,
	    sizeof(big));
	ck_assert_msg(strstr(big, "-18446744073709551614") != NULL ||
			      big[0] == '-',
		      "%s", big);
	/* The SQL a user would write agrees. */
	ck_assert_uint_eq(sql_u64("SELECT COUNT(*) FROM transfers"), transfers);
	ck_assert_uint_eq(sql_u64("SELECT SUM(debits_posted) = SUM(credits_posted)"
				  " + SUM(credits_buffered) FROM account_balances"),
			  1);
	ck_assert_uint_eq(sql_u64("SELECT COUNT(*) FROM accounts"), 14);
	ck_assert_uint_ge(sql_u64("SELECT COUNT(*) FROM batches"), 1);
	ck_assert_uint_ge(sql_u64("SELECT COUNT(*) FROM transfers WHERE "
				  "status = 'insufficient_funds'"), 1);
	/* A buffered credit finds the batch that merged it. */
	ck_assert_uint_ge(sql_u64("SELECT COUNT(*) FROM transfer_batches WHERE "
				  "batch_lsn IS NOT NULL"), 1);
	/* BALANCE and the row agree for the fee account. */
	fd = dh_ingress(&h);
	ck_assert(dh_cmd_fd(fd, "BALANCE 3", r, sizeof(r)));
	close(fd);
	unsigned long long cp, dp, cb;
	ck_assert_int_eq(sscanf(r, "BAL 3 %llu %llu %llu", &cp, &dp, &cb), 3);
	ck_assert_uint_eq(sql_u64("SELECT credits_posted FROM accounts WHERE id = 3"),
			  cp);
	ck_assert_uint_eq(sql_u64("SELECT credits_buffered FROM account_balances "
				  "WHERE id = 3"),
			  cb);
	/* The fee account (hot, in peak) takes only buffered credits, and
	 * its posted balance is exactly its batches: per merge, not per
	 * transfer. */
	ck_assert_uint_eq(sql_u64("SELECT COUNT(*) FROM transfers WHERE credit = 3 "
				  "AND status = 'ok' AND buffered = 0"),
			  0);
	ck_assert_uint_ge(sql_u64("SELECT COUNT(*) FROM batches WHERE account = 3"),
			  1);
	ck_assert_uint_eq(sql_u64("SELECT SUM(sum) FROM batches WHERE account = 3"),
			  cp);
}
END_TEST

static void
xfer_line(uint64_t id, char *buf, size_t size)
{
	snprintf(buf, size, "TRANSFER %llu 1 2 3", (unsigned long long)id);
}

/* SIGKILL doved at random moments while it settles and projects; after
 * every restart the projection goes on from its applied_epoch: no
 * transfer row missing, none twice. */
START_TEST(exactly_once_under_sigkill)
{
	start_with("[mariadb]\nbatch_max_rows = 300\n");
	int fd = dh_ingress(&h);
	send_ok(fd, "ACCOUNT 1");
	send_ok(fd, "ACCOUNT 2 nonneg");
	close(fd);
	static char answered[8000][32];
	uint64_t next_id = 100;
	for (int life = 0; life < 6; life++)
		dh_crash_life(&h, 3, &next_id, 8000, xfer_line, answered,
			      7u + (unsigned)life * 7919u);
	caught_up();
	store_verify_ok();
	/* Every logged transfer once: as many rows as distinct ids as the
	 * state's count, and every answered one among them. */
	unsigned long long rows = sql_u64("SELECT COUNT(*) FROM transfers");
	ck_assert_uint_eq(sql_u64("SELECT COUNT(DISTINCT id) FROM transfers"), rows);
	ck_assert_uint_eq(sql_u64("SELECT transfers FROM dove_state"), rows);
	/* Every answered transfer has its row, with the epoch its answer
	 * named (one query for all of them). */
	static char all[1 << 20];
	static uint64_t epoch_of[8000];
	sql(db, "SELECT id, epoch FROM transfers", all, sizeof(all));
	for (char *line = all; *line;) {
		unsigned long long id, epoch;
		ck_assert_int_eq(sscanf(line, "%llu\t%llu", &id, &epoch), 2);
		ck_assert_uint_lt(id, 8000);
		epoch_of[id] = epoch;
		char *nl = strchr(line, '\n');
		line = nl ? nl + 1 : line + strlen(line);
	}
	int ok = 0;
	for (uint64_t id = 100; id < next_id; id++) {
		if (answered[id][0] == '\0')
			continue;
		ok++;
		unsigned long long aid, aepoch;
		ck_assert_int_eq(sscanf(answered[id], "OK %llu %llu", &aid, &aepoch), 2);
		if (epoch_of[id] != aepoch)
			ck_abort_msg("id %llu answered '%s', row has epoch %llu",
				     (unsigned long long)id, answered[id],
				     (unsigned long long)epoch_of[id]);
	}
	ck_assert_int_ge(ok, 100);
	ck_assert_uint_ge(rows, (unsigned long long)ok);
	/* The ledger: account 2 holds exactly what the rows say. */
	ck_assert_uint_eq(sql_u64("SELECT credits_posted FROM accounts WHERE id = 2"),
			  3 * rows);
}
END_TEST

/* Wrong password, unknown database, unreachable host: doved starts,
 * settles on the WAL, and `store` names the host and what failed. */
START_TEST(bad_config_names_the_host)
{
	static const struct {
		const char *extra, *want;
		bool unreachable;
	} cases[] = {
		{ "password = Zq9-secret\n", "Access denied", false },
		{ "", "Unknown database", false },
		{ "", "Can't connect", true },
	};
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char cfg[1024];
		/* The second case names a database that does not exist. */
		char hosts[300];
		snprintf(hosts, sizeof(hosts), cases[i].unreachable
						       ? "127.0.0.1:1"
						       : "unix:%s", sock);
		snprintf(cfg, sizeof(cfg),
			 "[store]\nbackend = mariadb\n[mariadb]\nhosts = %s\n"
			 "user = root\ndatabase = %s\nconnect_timeout_s = 1\n%s",
			 hosts, i == 1 ? "no_such_db" : "mysql", cases[i].extra);
		dh_init(&h, cfg);
		dh_start(&h);
		int fd = dh_ingress(&h);
		send_ok(fd, "ACCOUNT 1");
		send_ok(fd, "ACCOUNT 2");
		send_ok(fd, "TRANSFER 5 1 2 10"); /* settlement goes on */
		close(fd);
		dh_wait_admin(&h, "store", "\"state\":\"failed\"", true, 5000);
		char r[8192];
		dh_admin(&h, "store", r, sizeof(r));
		ck_assert_msg(strstr(r, "\"state\":\"failed\"") &&
				      strstr(r, cases[i].want) &&
				      strstr(r, cases[i].unreachable ? "127.0.0.1:1"
								     : sock),
			      "case %u: %s", i, r);
		/* The password is never shown: not in config, status,
		 * stats, store, nor the log. */
		static const char *const views[] = { "config", "status", "stats",
						     "store" };
		for (unsigned v = 0; v < 4; v++) {
			dh_admin(&h, views[v], r, sizeof(r));
			ck_assert_msg(!strstr(r, "Zq9-secret"), "%s: %s", views[v], r);
		}
		static char log[1 << 16];
		dh_read_file(h.log, log, sizeof(log));
		ck_assert_msg(!strstr(log, "Zq9-secret"), "%s", log);
		dh_cleanup(&h);
	}
}
END_TEST

/* The server's pid, from its pid file beside the socket (tools/mariadb). */
static pid_t
server_pid(const char *socket_path)
{
	char path[512], buf[64] = "";
	snprintf(path, sizeof(path), "%s", socket_path);
	char *slash = strrchr(path, '/');
	ck_assert_ptr_nonnull(slash);
	snprintf(slash, sizeof(path) - (size_t)(slash - path), "/pid");
	dh_read_file(path, buf, sizeof(buf));
	pid_t pid = (pid_t)atoi(buf);
	ck_assert_msg(pid > 0, "no pid in %s", path);
	return pid;
}

static uint64_t
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* SIGSTOP the server; a guard process SIGCONTs it after `secs` whatever
 * happens to the test. */
static pid_t
stop_server(pid_t db_pid, unsigned secs)
{
	pid_t guard = fork();
	if (guard == 0) {
		setsid(); /* check kills the test's process group */
		sleep(secs);
		kill(db_pid, SIGCONT);
		_exit(0);
	}
	kill(db_pid, SIGSTOP);
	return guard;
}

static void
resume_server(pid_t db_pid, pid_t guard)
{
	kill(db_pid, SIGCONT);
	kill(guard, SIGKILL);
	waitpid(guard, NULL, 0);
}

static void
pay(int first, int n)
{
	int fd = dh_ingress(&h);
	for (int i = 0; i < n; i++) {
		char line[64];
		snprintf(line, sizeof(line), "TRANSFER %d 1 2 7", first + i);
		send_ok(fd, line);
	}
	close(fd);
}

/* doved on cfg, with accounts 1 and 2. */
static void
start_accounts(const char *cfg)
{
	dh_init(&h, cfg);
	dh_start(&h);
	accounts_1_2();
}

/* A number from `store`'s JSON (its first occurrence). */
static uint64_t
store_u64(const char *key)
{
	char r[8192], k[64];
	dh_admin(&h, "store", r, sizeof(r));
	snprintf(k, sizeof(k), "\"%s\":", key);
	const char *p = strstr(r, k);
	ck_assert_msg(p != NULL, "no %s in %s", key, r);
	return strtoull(p + strlen(k), NULL, 10);
}

static uint64_t
lag_epochs(void)
{
	return store_u64("lag_epochs");
}

/* MariaDB stops answering (SIGSTOP) under load: settlement goes on and
 * answers; the lag grows and is reported; after SIGCONT the projection
 * catches up and verifies. */
START_TEST(outage_then_catch_up)
{
	start_with("read_timeout_s = 1\nwrite_timeout_s = 1\n");
	accounts_1_2();
	pay(100, 50);
	caught_up();
	pid_t db_pid = server_pid(sock);
	pid_t guard = stop_server(db_pid, 15);
	pay(200, 300); /* every one answered OK while MariaDB is away */
	ck_assert_uint_ge(lag_epochs(), 1);
	dh_wait_admin(&h, "store", "\"state\":\"failed\"", true, 5000);
	char r[8192];
	dh_admin(&h, "store", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"state\":\"failed\""), "%s", r);
	resume_server(db_pid, guard);
	caught_up();
	store_verify_ok();
	ck_assert_uint_eq(sql_u64("SELECT COUNT(*) FROM transfers"), 350);
}
END_TEST

/* SET GLOBAL read_only = 1 on a server; a guard process sets it back
 * after `secs` whatever happens to the test. */
static pid_t
read_only_on(const char *socket_path, unsigned secs)
{
	pid_t guard = fork();
	if (guard == 0) {
		setsid(); /* check kills the test's process group */
		sleep(secs);
		execlp("mariadb", "mariadb", "--no-defaults", "-uroot", "-e",
		       "SET GLOBAL read_only = 0", "--socket", socket_path,
		       (char *)NULL);
		_exit(1);
	}
	char out[256];
	sql_at(socket_path, NULL, "SET GLOBAL read_only = 1", out, sizeof(out));
	return guard;
}

static void
read_only_off(const char *socket_path, pid_t guard)
{
	char out[256];
	sql_at(socket_path, NULL, "SET GLOBAL read_only = 0", out, sizeof(out));
	kill(guard, SIGKILL);
	waitpid(guard, NULL, 0);
}

static void
wait_active(int port)
{
	char r[8192] = "", want[64];
	snprintf(want, sizeof(want), "\"active_host\":\"127.0.0.1:%d\"", port);
	for (int t = 0; t < 200; t++) {
		dh_admin(&h, "store", r, sizeof(r));
		if (strstr(r, want) && strstr(r, "\"connected\":true"))
			return;
		usleep(50000);
	}
	ck_abort_msg("not active on port %d: %s", port, r);
}

/* The server closes doved's connection while it is idle (as wait_timeout
 * does; here KILL CONNECTION): that is not the host failing. With a
 * second host configured, the writer must stay on the first, count no
 * failure, and write what comes next. */
START_TEST(idle_disconnect_is_not_a_failure)
{
	start_on(",127.0.0.1:1", "");
	accounts_1_2();
	pay(100, 10);
	caught_up();
	uint64_t failures = store_u64("failures");
	char stmt[256], out[256];
	snprintf(stmt, sizeof(stmt), "SELECT id FROM information_schema.processlist"
		 " WHERE db = '%s' AND command = 'Sleep'", db);
	sql(NULL, stmt, out, sizeof(out));
	unsigned long id = strtoul(out, NULL, 10);
	ck_assert_msg(id > 0, "doved's connection not found: %s", out);
	snprintf(stmt, sizeof(stmt), "KILL CONNECTION %lu", id);
	sql(NULL, stmt, out, sizeof(out));
	sleep(2); /* idle past the writer's check */
	pay(200, 10);
	caught_up();
	ck_assert_uint_eq(store_u64("failures"), failures);
	char r[8192], want[512];
	dh_admin(&h, "store", r, sizeof(r));
	snprintf(want, sizeof(want), "\"active_host\":\"unix:%s\"", sock);
	ck_assert_msg(strstr(r, want), "%s", r);
	ck_assert_uint_eq(sql_u64("SELECT COUNT(*) FROM transfers"), 20);
}
END_TEST

/* A host turned read-only (a demoted master) under load: settlement goes
 * on, the host is reported failed with MariaDB's reason, and when it takes
 * writes again the projection catches up and verifies. doved writes as
 * `dove` (tools/mariadb's user): read_only does not bind root. */
START_TEST(read_only_host_is_left)
{
	char out[1024], stmt[256], cfg[1024];
	snprintf(stmt, sizeof(stmt), "CREATE DATABASE %s; GRANT ALL ON %s.* TO "
		 "'dove'@'localhost'", db, db);
	sql(NULL, stmt, out, sizeof(out));
	snprintf(cfg, sizeof(cfg),
		 "[store]\nbackend = mariadb\n[mariadb]\nhosts = unix:%s\n"
		 "user = dove\npassword = dove\ndatabase = %s\n"
		 "connect_timeout_s = 1\n", sock, db);
	start_accounts(cfg);
	pay(100, 20);
	caught_up();
	pid_t guard = read_only_on(sock, 30);
	pay(200, 100); /* every one answered OK */
	dh_wait_admin(&h, "store", "\"state\":\"failed\"", true, 5000);
	char r[8192];
	dh_admin(&h, "store", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"state\":\"failed\"") && strstr(r, "read-only"),
		      "%s", r);
	ck_assert_uint_ge(lag_epochs(), 1);
	/* It connects but may not write: retried once a second, not in a
	 * loop. */
	uint64_t f0 = store_u64("failures");
	sleep(2);
	ck_assert_uint_le(store_u64("failures") - f0, 4);
	read_only_off(sock, guard);
	caught_up();
	store_verify_ok();
	ck_assert_uint_eq(sql_u64("SELECT COUNT(*) FROM transfers"), 120);
}
END_TEST

/* The pair (see below), the first master turned read-only: the writer
 * moves to the second. The first takes writes again: the writer stays
 * where it is until `store failback`, then goes back, re-projects from
 * the first's applied_epoch (which replication from the second moved
 * on), and both masters hold every transfer once. Runs before the
 * failover test, which kills the first master. */
START_TEST(failback_only_when_told)
{
	const char *pair = getenv("DOVE_TEST_MARIADB_PAIR");
	ck_assert_msg(pair && *pair, "DOVE_TEST_MARIADB_PAIR is not set: run "
				     "through tools/test");
	char dir[256], sock1[300], sock2[300], out[256], stmt[256];
	int port;
	ck_assert_int_eq(sscanf(pair, "%255s %d", dir, &port), 2);
	snprintf(sock1, sizeof(sock1), "%s/1/sock", dir);
	snprintf(sock2, sizeof(sock2), "%s/2/sock", dir);
	/* Replicated to the second master with the grant. */
	snprintf(stmt, sizeof(stmt), "CREATE DATABASE %s; GRANT ALL ON %s.* TO "
		 "'dove'@'127.0.0.1'", db, db);
	sql_at(sock1, NULL, stmt, out, sizeof(out));
	char cfg[1024];
	snprintf(cfg, sizeof(cfg),
		 "[store]\nbackend = mariadb\n[mariadb]\n"
		 "hosts = 127.0.0.1:%d,127.0.0.1:%d\nuser = dove\npassword = dove\n"
		 "database = %s\nconnect_timeout_s = 1\nread_timeout_s = 2\n"
		 "write_timeout_s = 2\nbatch_max_rows = 200\n",
		 port, port + 1, db);
	start_accounts(cfg);
	pay(100, 50);
	caught_up();
	wait_active(port);
	pid_t guard = read_only_on(sock1, 40);
	pay(200, 100);
	wait_active(port + 1);
	caught_up();
	read_only_off(sock1, guard);
	pay(400, 50);
	caught_up();
	sleep(2); /* it does not go back on its own */
	wait_active(port + 1);
	char r[8192];
	dh_admin(&h, "store failback", r, sizeof(r));
	wait_active(port);
	pay(500, 50);
	caught_up();
	store_verify_ok();
	for (int n = 1; n <= 2; n++) {
		/* The other master has it once replication has it. */
		for (int t = 0; t < 100; t++) {
			sql_at(n == 1 ? sock1 : sock2, db,
			       "SELECT COUNT(*), COUNT(DISTINCT id) FROM transfers",
			       out, sizeof(out));
			if (strncmp(out, "250\t250", 7) == 0)
				break;
			usleep(50000);
		}
		ck_assert_msg(strncmp(out, "250\t250", 7) == 0, "master %d: %s", n,
			      out);
	}
}
END_TEST

/* Two masters replicating to each other (tools/mariadb pair, started by
 * tools/test: DOVE_TEST_MARIADB_PAIR="dir port"); SIGKILL the active one
 * under load: the writer moves to the other, re-projects from its
 * applied_epoch, and the survivor verifies: nothing lost or twice. */
START_TEST(failover_to_the_other_master)
{
	const char *pair = getenv("DOVE_TEST_MARIADB_PAIR");
	ck_assert_msg(pair && *pair, "DOVE_TEST_MARIADB_PAIR is not set: run "
				     "through tools/test");
	char dir[256];
	int port;
	ck_assert_int_eq(sscanf(pair, "%255s %d", dir, &port), 2);
	char cfg[1024];
	snprintf(cfg, sizeof(cfg),
		 "[store]\nbackend = mariadb\n[mariadb]\n"
		 "hosts = 127.0.0.1:%d,127.0.0.1:%d\nuser = dove\npassword = dove\n"
		 "database = dove\nconnect_timeout_s = 1\nread_timeout_s = 2\n"
		 "write_timeout_s = 2\nbatch_max_rows = 200\n",
		 port, port + 1);
	start_accounts(cfg);
	pay(100, 400);
	caught_up();
	char r[8192];
	dh_admin(&h, "store", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"active_host\":\"127.0.0.1:"), "%s", r);
	char sock1[300];
	snprintf(sock1, sizeof(sock1), "%s/1/sock", dir);
	/* Under load: kill the first master in the middle. */
	pid_t killer = fork();
	if (killer == 0) {
		usleep(150000);
		kill(server_pid(sock1), SIGKILL);
		_exit(0);
	}
	pay(1000, 600);
	waitpid(killer, NULL, 0);
	caught_up();
	dh_admin(&h, "store", r, sizeof(r));
	char want[64];
	snprintf(want, sizeof(want), "\"active_host\":\"127.0.0.1:%d\"", port + 1);
	ck_assert_msg(strstr(r, want), "not on the second master: %s", r);
	store_verify_ok();
	/* On the survivor: every transfer exactly once. */
	char out[256], q[512];
	snprintf(q, sizeof(q),
		 "mariadb --no-defaults --socket='%s/2/sock' -uroot -N -B dove -e "
		 "\"SELECT COUNT(*), COUNT(DISTINCT id) FROM transfers\"", dir);
	ck_assert_int_eq(dh_run(q, out, sizeof(out)), 0);
	ck_assert_msg(strncmp(out, "1000\t1000", 9) == 0, "%s", out);
}
END_TEST

/* A database whose schema is newer than this doved knows is refused
 * (named in `store`), and nothing is written to it. */
START_TEST(newer_schema_is_refused)
{
	char out[1024], stmt[512];
	snprintf(stmt, sizeof(stmt),
		 "CREATE DATABASE %s; CREATE TABLE %s.dove_schema (id TINYINT "
		 "UNSIGNED NOT NULL PRIMARY KEY, version INT UNSIGNED NOT NULL); "
		 "INSERT INTO %s.dove_schema VALUES (1, 99)",
		 db, db, db);
	sql(NULL, stmt, out, sizeof(out));
	char cfg[1024];
	snprintf(cfg, sizeof(cfg),
		 "[store]\nbackend = mariadb\n[mariadb]\nhosts = unix:%s\n"
		 "user = root\ndatabase = %s\nconnect_timeout_s = 1\n",
		 sock, db);
	dh_init(&h, cfg);
	dh_start(&h);
	int fd = dh_ingress(&h);
	send_ok(fd, "ACCOUNT 1");
	close(fd);
	dh_wait_admin(&h, "store", "\"state\":\"refused\"", true, 5000);
	char r[8192];
	dh_admin(&h, "store", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"state\":\"refused\"") &&
			      strstr(r, "schema version 99 is newer"),
		      "%s", r);
	/* Not touched: no tables of ours were created. */
	ck_assert_uint_eq(sql_u64("SELECT COUNT(*) FROM information_schema.tables "
				  "WHERE table_schema = DATABASE()"),
			  1);
}
END_TEST

/* The database is emptied after the log it needs was retired behind a
 * snapshot: the projection cannot rebuild; it says so (naming the
 * epoch) instead of writing a partial history, and doved settles on. */
START_TEST(lost_database_cannot_be_rebuilt)
{
	start_with("[wal]\nsegment_mb = 1\nmax_epoch_kb = 256\n");
	accounts_1_2();
	/* 30,000 transfers, pipelined: more than two 1 MiB segments. */
	int fd = dh_ingress(&h);
	pipeline(fd, 1000, 60);
	close(fd);
	caught_up();
	/* A clean stop snapshots; everything is projected, so the log
	 * behind the snapshot is retired. */
	kill(h.pid, SIGTERM);
	ck_assert_int_eq(dh_wait(h.pid, 10000), 0);
	h.pid = 0;
	char out[256], stmt[256];
	snprintf(stmt, sizeof(stmt), "DROP DATABASE %s; CREATE DATABASE %s", db, db);
	sql(NULL, stmt, out, sizeof(out));
	dh_start(&h);
	dh_wait_admin(&h, "store", "\"state\":\"stopped\"", true, 5000);
	char r[8192];
	dh_admin(&h, "store", r, sizeof(r));
	ck_assert_msg(strstr(r, "\"state\":\"stopped\"") &&
			      strstr(r, "cannot rebuild the projection at epoch 0"),
		      "%s", r);
	fd = dh_ingress(&h);
	send_ok(fd, "TRANSFER 99999 1 2 1");
	close(fd);
	static char log[1 << 20];
	dh_read_file(h.log, log, sizeof(log));
	ck_assert_msg(strstr(log, "no longer holds epoch 1"), "%s", log);
}
END_TEST

/* [wal] max_disk_mb with MariaDB away: the log keeps every epoch the
 * projection has not written, so it fills; at the limit new work is
 * refused `unavailable` (and changes nothing) and the log says the
 * projection holds it. When MariaDB returns, the projection catches up
 * and the log is cut behind the snapshot taken meanwhile, without
 * waiting for another: work is taken again, every answered transfer is
 * in MariaDB once. Input tried: pipelined transfers past a 3 MiB log. */
START_TEST(disk_limit_waits_for_the_projection)
{
	start_with("read_timeout_s = 1\nwrite_timeout_s = 1\n"
		   "[wal]\nsegment_mb = 1\nmax_epoch_kb = 256\nmax_disk_mb = 3\n"
		   "[snapshot]\nevery_s = 0\n");
	accounts_1_2();
	int fd = dh_ingress(&h);
	caught_up();
	pid_t db_pid = server_pid(sock);
	pid_t guard = stop_server(db_pid, 60);
	uint64_t stopped = now_ms();
	/* The lag in seconds must count from the first epoch MariaDB does
	 * not have, even past the last 4096 epochs doved times exactly: one
	 * transfer, a pause, then 4,200 more, one epoch each. */
	send_ok(fd, "TRANSFER 500000 1 2 1");
	sleep(2);
	for (int i = 1; i <= 4200; i++) {
		char line[64];
		snprintf(line, sizeof(line), "TRANSFER %d 1 2 1", 500000 + i);
		send_ok(fd, line);
	}
	/* ~56 bytes a transfer: 3 MiB is ~55,000. */
	int ok = 4201 + dh_fill_until_refused(fd, 1000);
	char bal[256], r[256], st[16384];
	ck_assert(dh_cmd_fd(fd, "BALANCE 2", bal, sizeof(bal)));
	/* A snapshot cannot free the log the projection still needs. */
	dh_admin(&h, "snapshot", st, sizeof(st));
	dh_wait_admin(&h, "stats", "\"snapshot_epoch\":0,", false, 5000);
	usleep(300000);
	ck_assert(dh_cmd_fd(fd, "TRANSFER 999999 1 2 1", r, sizeof(r)));
	ck_assert_str_eq(r, "ERR 999999 unavailable");
	ck_assert(dh_cmd_fd(fd, "BALANCE 2", r, sizeof(r)));
	ck_assert_str_eq(r, bal);
	ck_assert_uint_gt(lag_epochs(), 4096);
	uint64_t lag_ms = store_u64("lag_ms");
	uint64_t since = now_ms() - stopped;
	/* Past 4096 epochs it may read up to a second long, never short. */
	ck_assert_msg(lag_ms <= since + 1000 && lag_ms + 300 >= since,
		      "lag %llu ms, MariaDB stopped %llu ms ago",
		      (unsigned long long)lag_ms, (unsigned long long)since);
	static char log[1 << 20];
	dh_read_file(h.log, log, sizeof(log));
	ck_assert_msg(strstr(log, "max_disk_mb 3: refusing new work") &&
			      strstr(log, "the projection has written up to epoch"),
		      "%s", log);
	resume_server(db_pid, guard);
	caught_up();
	/* No further snapshot: catching up is what frees the log. */
	dh_wait_admin(&h, "stats", "\"wal_full\":false", true, 5000);
	send_ok(fd, "TRANSFER 999999 1 2 1");
	close(fd);
	caught_up();
	store_verify_ok();
	ck_assert_uint_eq(sql_u64("SELECT COUNT(*) FROM transfers"),
			  (unsigned long long)ok + 1);
	ck_assert_uint_eq(sql_u64("SELECT COUNT(DISTINCT id) FROM transfers"),
			  (unsigned long long)ok + 1);
}
END_TEST

/* MariaDB itself crashes (SIGKILL) in the middle of projecting under
 * load and is started again (InnoDB recovery): the transaction it was
 * writing is gone whole, the writer reconnects and re-projects from
 * applied_epoch, and every transfer is there once. The server is
 * restarted in a session of its own: Check kills the test's process
 * group when the test ends. */
START_TEST(mariadb_crash_mid_projection)
{
	start_with("");
	accounts_1_2();
	pay(100, 100);
	caught_up();
	unsigned port = (unsigned)sql_u64("SELECT @@port");
	char dir[512];
	snprintf(dir, sizeof(dir), "%s", sock);
	char *cut = strstr(dir, "/1/sock");
	ck_assert_ptr_nonnull(cut);
	*cut = '\0';
	pid_t db_pid = server_pid(sock);
	pid_t killer = fork();
	if (killer == 0) {
		usleep(150000);
		kill(db_pid, SIGKILL);
		_exit(0);
	}
	pay(1000, 600); /* answered OK whatever MariaDB does */
	waitpid(killer, NULL, 0);
	for (int t = 0; t < 200 && kill(db_pid, 0) == 0; t++)
		usleep(50000); /* not our child: until it is gone */
	ck_assert_msg(kill(db_pid, 0) != 0, "mariadbd %d still there", (int)db_pid);
	/* Work while it is down: on a fast build the 600 may all be written
	 * before the kill lands, and a dead idle connection alone is not a
	 * failure (it reconnects); these must be, whatever the timing. */
	pay(5000, 50);
	char cmd[1024], out[4096];
	snprintf(cmd, sizeof(cmd), "setsid %s/tools/mariadb start '%s' %u",
		 DOVE_SOURCE_DIR, dir, port);
	ck_assert_msg(dh_run(cmd, out, sizeof(out)) == 0, "%s: %s", cmd, out);
	caught_up();
	ck_assert_uint_ge(store_u64("failures"), 1); /* it saw the crash */
	store_verify_ok();
	ck_assert_uint_eq(sql_u64("SELECT COUNT(*) FROM transfers"), 750);
	ck_assert_uint_eq(sql_u64("SELECT COUNT(DISTINCT id) FROM transfers"), 750);
	ck_assert_uint_eq(sql_u64("SELECT transfers FROM dove_state"), 750);
}
END_TEST

/* With a second host to fail over to, the log keeps a snapshot interval
 * more than one host needs: the other master is behind by its
 * replication lag and must find a snapshot at or below its
 * applied_epoch and the log after it. Three loads with a snapshot after
 * each of the first two: the log still holds the epoch after the first
 * snapshot (with one host it would be cut at the second). */
START_TEST(second_host_keeps_a_snapshot_more)
{
	start_on(",127.0.0.1:1", "[wal]\nsegment_mb = 1\nmax_epoch_kb = 256\n"
				"[snapshot]\nevery_s = 0\nkeep = 1\n");
	accounts_1_2();
	int fd = dh_ingress(&h);
	uint64_t snaps[2] = { 0, 0 };
	char out[256];
	for (int load = 0; load < 3; load++) {
		/* 30,000 transfers: more than two 1 MiB segments. */
		pipeline(fd, 100000 * (load + 1), 60);
		caught_up();
		if (load == 2)
			break;
		char st[16384];
		dh_admin(&h, "snapshot", st, sizeof(st));
		for (int t = 0; t < 100; t++) {
			dh_admin(&h, "stats", st, sizeof(st));
			const char *p = strstr(st, "\"snapshot_epoch\":");
			snaps[load] = p ? strtoull(p + 17, NULL, 10) : 0;
			if (snaps[load] > (load ? snaps[0] : 0))
				break;
			usleep(50000);
		}
		ck_assert_uint_gt(snaps[load], load ? snaps[0] : 0);
	}
	close(fd);
	usleep(500000); /* the tick retires behind the projection */
	/* The oldest segment starts at or before the epoch after the first
	 * snapshot, and what is before its segment was retired. */
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "ls %s/data/wal | sort | head -1", h.dir);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 0);
	uint64_t oldest = strtoull(out + 4, NULL, 10); /* wal-<first epoch>.log */
	ck_assert_msg(strncmp(out, "wal-", 4) == 0 && oldest <= snaps[0] + 1 &&
			      oldest > 1,
		      "oldest segment %s; snapshots %llu, %llu", out,
		      (unsigned long long)snaps[0], (unsigned long long)snaps[1]);
}
END_TEST

static Suite *
mariadb_suite(void)
{
	Suite *s = suite_create("mariadb");
	TCase *tc = dh_tcase(s, "projection", setup, teardown, 180);
	tcase_add_test(tc, projection_equals_ledger);
	tcase_add_test(tc, exactly_once_under_sigkill);
	tcase_add_test(tc, bad_config_names_the_host);
	tcase_add_test(tc, newer_schema_is_refused);
	tcase_add_test(tc, lost_database_cannot_be_rebuilt);
	tcase_add_test(tc, outage_then_catch_up);
	tcase_add_test(tc, read_only_host_is_left);
	tcase_add_test(tc, idle_disconnect_is_not_a_failure);
	tcase_add_test(tc, failback_only_when_told);
	tcase_add_test(tc, failover_to_the_other_master);
	tc = dh_tcase(s, "disk", setup, teardown, 180);
	tcase_add_test(tc, disk_limit_waits_for_the_projection);
	tcase_add_test(tc, second_host_keeps_a_snapshot_more);
	/* Last: it restarts the server everything else uses. */
	tc = dh_tcase(s, "crash", setup, teardown, 180);
	tcase_add_test(tc, mariadb_crash_mid_projection);
	return s;
}

int
main(void)
{
	return dh_run_suite(mariadb_suite());
}
