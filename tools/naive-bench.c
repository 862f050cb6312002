/*
 * naive-bench - the design Dove replaces, measured on the same MariaDB:
 * every settlement message is one SQL transaction that locks both
 * balances (SELECT ... FOR UPDATE), checks funds, updates both rows and
 * inserts the transfer, then commits (durably, with the server's
 * innodb_flush_log_at_trx_commit). The O2O mix of dove-bench, simplified:
 * pay (channel -> escrow), settle (escrow -> merchant + escrow -> fee,
 * one transaction), over Zipf-distributed merchants.
 *
 *   naive-bench -S SOCKET [-u USER] [-p PASSWORD] [-d DATABASE]
 *               [--threads T] [--seconds S] [--merchants M]
 *
 * Prints transfers/s and the balance updates of hot rows (escrow, fee)
 * per second: one per transfer, which is what differentiated settlement
 * removes.
 */
#include <getopt.h>
#include <math.h>
#include <mysql.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "zipf.h"

enum { CHANNEL = 1, ESCROW = 2, FEE = 3, MERCHANT0 = 1000 };

static const char *sock, *user = "root", *pass = "", *dbname = "dove";
static int threads = 4, merchants = 10000;
static double seconds = 5;
static double *zipf_cdf;
static _Atomic uint64_t transfers, hot_updates, failures;
static _Atomic bool stop;

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static MYSQL *
dial(void)
{
	MYSQL *db = mysql_init(NULL);
	if (!mysql_real_connect(db, "localhost", user, pass, dbname, 0, sock, 0)) {
		fprintf(stderr, "naive-bench: %s: %s\n", sock, mysql_error(db));
		exit(3);
	}
	mysql_autocommit(db, 0);
	return db;
}

static void
must(MYSQL *db, const char *sql)
{
	if (mysql_query(db, sql)) {
		fprintf(stderr, "naive-bench: %s: %s\n", sql, mysql_error(db));
		exit(1);
	}
}

/* One leg inside the open transaction: lock both rows, check, move. */
static bool
leg(MYSQL *db, uint64_t id, int debit, int credit, uint64_t amount)
{
	char sql[256];
	snprintf(sql, sizeof(sql),
		 "SELECT id, balance, nonneg FROM naive_accounts WHERE id IN (%d,%d)"
		 " ORDER BY id FOR UPDATE", debit, credit);
	if (mysql_query(db, sql))
		return false;
	MYSQL_RES *r = mysql_store_result(db);
	MYSQL_ROW row;
	bool funds = true;
	while (r && (row = mysql_fetch_row(r)))
		if (atoi(row[0]) == debit && atoi(row[2]) &&
		    strtoll(row[1], NULL, 10) < (long long)amount)
			funds = false;
	mysql_free_result(r);
	if (!funds)
		return true; /* refused, like insufficient_funds */
	snprintf(sql, sizeof(sql),
		 "UPDATE naive_accounts SET balance = balance - %llu WHERE id = %d",
		 (unsigned long long)amount, debit);
	if (mysql_query(db, sql))
		return false;
	snprintf(sql, sizeof(sql),
		 "UPDATE naive_accounts SET balance = balance + %llu WHERE id = %d",
		 (unsigned long long)amount, credit);
	if (mysql_query(db, sql))
		return false;
	snprintf(sql, sizeof(sql),
		 "INSERT INTO naive_transfers (id, debit, credit, amount, ts) "
		 "VALUES (%llu, %d, %d, %llu, NOW(6))",
		 (unsigned long long)id, debit, credit, (unsigned long long)amount);
	if (mysql_query(db, sql))
		return false;
	atomic_fetch_add(&hot_updates, (debit == ESCROW || debit == FEE) +
					       (credit == ESCROW || credit == FEE));
	return true;
}

static int
zipf(unsigned *seed)
{
	return MERCHANT0 + zipf_draw(zipf_cdf, merchants, seed);
}

static void *
worker(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg * 7919u + 1;
	uint64_t id = ((uint64_t)(uintptr_t)arg << 40) + 1;
	MYSQL *db = dial();
	while (!atomic_load(&stop)) {
		uint64_t amount = 500 + (uint64_t)(rand_r(&seed) % 5000);
		bool ok;
		int n;
		if (rand_r(&seed) % 2) { /* pay */
			ok = leg(db, id++, CHANNEL, ESCROW, amount);
			n = 1;
		} else { /* settle: merchant share and fee, one message */
			ok = leg(db, id++, ESCROW, zipf(&seed), amount - amount / 20) &&
			     leg(db, id++, ESCROW, FEE, amount / 20);
			n = 2;
		}
		if (ok && mysql_commit(db) == 0) {
			atomic_fetch_add(&transfers, (uint64_t)n);
		} else {
			mysql_rollback(db); /* a deadlock or timeout: retried */
			atomic_fetch_add(&failures, 1);
		}
	}
	mysql_close(db);
	return NULL;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 'S' },
		{ "user", required_argument, NULL, 'u' },
		{ "password", required_argument, NULL, 'p' },
		{ "database", required_argument, NULL, 'd' },
		{ "threads", required_argument, NULL, 't' },
		{ "seconds", required_argument, NULL, 's' },
		{ "merchants", required_argument, NULL, 'm' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "S:u:p:d:t:s:m:", opts, NULL)) != -1) {
		switch (ch) {
		case 'S': sock = optarg; break;
		case 'u': user = optarg; break;
		case 'p': pass = optarg; break;
		case 'd': dbname = optarg; break;
		case 't': threads = atoi(optarg); break;
		case 's': seconds = atof(optarg); break;
		case 'm': merchants = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: naive-bench -S SOCKET [-u USER] [-p "
					"PASSWORD] [-d DATABASE] [--threads T] "
					"[--seconds S] [--merchants M]\n");
			return 2;
		}
	}
	if (sock == NULL || threads < 1 || threads > 64 || merchants < 1) {
		fprintf(stderr, "naive-bench: -S SOCKET is required (threads "
				"1..64)\n");
		return 2;
	}
	zipf_cdf = zipf_cdf_make(merchants, 1.1);

	MYSQL *db = dial();
	must(db, "DROP TABLE IF EXISTS naive_accounts, naive_transfers");
	must(db, "CREATE TABLE naive_accounts (id BIGINT PRIMARY KEY, balance "
		 "DECIMAL(38,0) NOT NULL, nonneg TINYINT NOT NULL) ENGINE=InnoDB");
	must(db, "CREATE TABLE naive_transfers (id BIGINT UNSIGNED PRIMARY KEY, "
		 "debit BIGINT NOT NULL, credit BIGINT NOT NULL, amount BIGINT NOT "
		 "NULL, ts DATETIME(6) NOT NULL, KEY (debit, ts), KEY (credit, ts))"
		 " ENGINE=InnoDB");
	must(db, "INSERT INTO naive_accounts VALUES (1,0,0),(2,0,0),(3,0,0)");
	char *sql = malloc(64 * (size_t)merchants + 64);
	size_t len = (size_t)sprintf(sql, "INSERT INTO naive_accounts VALUES ");
	for (int i = 0; i < merchants; i++)
		len += (size_t)sprintf(sql + len, "%s(%d,0,1)", i ? "," : "",
				       MERCHANT0 + i);
	must(db, sql);
	free(sql);
	must(db, "COMMIT");
	mysql_close(db);

	pthread_t t[64];
	double t0 = now_s();
	for (int i = 0; i < threads; i++)
		pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i + 1));
	struct timespec d = { (time_t)seconds,
			      (long)((seconds - (double)(time_t)seconds) * 1e9) };
	nanosleep(&d, NULL);
	atomic_store(&stop, true);
	for (int i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	double dt = now_s() - t0;
	printf("naive: %d connections, %.1f s: %llu transfers (%.0f/s), hot-row "
	       "updates %.0f/s, %llu transactions retried\n",
	       threads, dt, (unsigned long long)transfers,
	       (double)transfers / dt, (double)hot_updates / dt,
	       (unsigned long long)failures);
	return 0;
}
