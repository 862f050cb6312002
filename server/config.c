/*
 * config.c - the configuration key table and everything driven by it:
 * loading config.ini with inih, validating every value, resolving paths,
 * printing the effective config (ini and JSON), the config.ini template,
 * and publishing snapshots with RCU.
 *
 * The table is the only place a key is described. Adding a key means adding
 * one row and one struct field; config.ini is regenerated from the table
 * (`doved --config-template`) and a test fails if the two drift.
 */
#include "server.h"

#include <errno.h>
#include <ini.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/un.h>
#include <unistd.h>
#include <urcu/urcu-memb.h>

#include "dove.h"

/* The longest line inih reads: its buffer holds the line, its newline
 * and a NUL. */
#define CONFIG_LINE_MAX (INI_MAX_LINE - 2)

static const char *const log_levels[] = { "error", "warn", "info", "debug",
					  NULL };
static const char *const fsync_modes[] = { "always", "never", NULL };
static const char *const peak_modes[] = { "schedule", "always", "never",
					  NULL };
static const char *const backends[] = { "file", "mariadb", NULL };

#define F(field) offsetof(server_config, field)
#define NOLIM 0, 0

static const struct server_config_key keys[] = {
	{ "server", "data_dir", SERVER_CFG_PATH, 0, NOLIM, NULL, "data",
	  F(data_dir),
	  "directory for the WAL, snapshots and run files; created if missing" },
	{ "server", "pid_file", SERVER_CFG_PATH, 0, NOLIM, NULL,
	  "data/doved.pid", F(pid_file),
	  "pid file, locked while doved runs: a second doved on it refuses to "
	  "start" },
	{ "server", "log_level", SERVER_CFG_ENUM, SERVER_CFG_LIVE, NOLIM,
	  log_levels, "info", F(log_level),
	  "error | warn | info | debug" },
	{ "server", "log_file", SERVER_CFG_PATH,
	  SERVER_CFG_LIVE | SERVER_CFG_EMPTY_OK, NOLIM, NULL, "", F(log_file),
	  "log file (appended; reopened on SIGHUP for logrotate); empty = "
	  "stderr" },

	{ "admin", "socket", SERVER_CFG_PATH, SERVER_CFG_SOCKPATH, NOLIM, NULL,
	  "data/admin.sock", F(admin_socket),
	  "admin UNIX socket (dovectl -s PATH); at most 107 bytes once "
	  "resolved" },
	{ "admin", "socket_mode", SERVER_CFG_MODE, 0, 0, 0777, NULL, "0600",
	  F(admin_socket_mode),
	  "permissions of the admin socket (octal); 0600 = owner only" },
	{ "admin", "max_clients", SERVER_CFG_INT, SERVER_CFG_LIVE, 1, 1024,
	  NULL, "16", F(admin_max_clients),
	  "admin connections at once; one more is told so and closed" },
	{ "admin", "max_line", SERVER_CFG_INT, SERVER_CFG_LIVE, 64, 1048576,
	  NULL, "4096", F(admin_max_line),
	  "longest admin command in bytes; a longer line closes that client" },

	{ "ingress", "tcp", SERVER_CFG_ADDR, SERVER_CFG_EMPTY_OK, NOLIM, NULL, "",
	  F(ingress_tcp),
	  "line protocol over TCP, host:port (e.g. 127.0.0.1:7070); empty = "
	  "off. Keep it on loopback: there is no authentication" },
	{ "ingress", "unix", SERVER_CFG_PATH,
	  SERVER_CFG_EMPTY_OK | SERVER_CFG_SOCKPATH, NOLIM, NULL,
	  "data/ingress.sock", F(ingress_unix),
	  "line protocol over a UNIX socket (mode 0660); empty = off" },
	{ "ingress", "max_line", SERVER_CFG_INT, SERVER_CFG_LIVE, 64, 65536,
	  NULL, "1024", F(ingress_max_line),
	  "longest request line in bytes; a longer one closes that connection "
	  "(new connections)" },
	{ "ingress", "max_connections", SERVER_CFG_INT, 0, 1, 65536, NULL,
	  "1024", F(ingress_max_connections),
	  "client connections at once; one more is closed at once" },
	{ "ingress", "pipeline", SERVER_CFG_INT, 0, 1, 65536, NULL, "1024",
	  F(ingress_pipeline),
	  "unanswered requests per connection; past it the connection is not "
	  "read (backpressure)" },

	{ "settle", "shards", SERVER_CFG_INT, 0, 1, 64, NULL, "1", F(settle_shards),
	  "ledger shards, accounts split by a hash of their id; with more than "
	  "one, each runs on its own thread" },
	{ "settle", "cpus", SERVER_CFG_CPUS, 0, NOLIM, NULL, "", F(settle_cpus),
	  "pin shard threads to these CPUs (shard i to the i-th, cycling); "
	  "empty = let the kernel place them" },
	{ "settle", "accounts_max", SERVER_CFG_INT, 0, 16, 268435456, NULL,
	  "1048576", F(settle_accounts_max),
	  "accounts the ledger has room for (preallocated); ACCOUNT beyond it "
	  "is refused overloaded" },
	{ "settle", "dedup_window", SERVER_CFG_INT, 0, 16, 268435456, NULL,
	  "1048576", F(settle_dedup_window),
	  "transfer ids remembered for idempotent retries (oldest forgotten "
	  "first); a retry older than this counts as new" },

	{ "peak", "mode", SERVER_CFG_ENUM, SERVER_CFG_LIVE, NOLIM, peak_modes,
	  "schedule", F(peak_mode),
	  "schedule = peak inside `windows`; always; never (admin `peak "
	  "on|off` overrides until `peak auto`)" },
	{ "peak", "windows", SERVER_CFG_WINDOWS, SERVER_CFG_LIVE, NOLIM, NULL,
	  "11:00-13:30,17:00-20:30", F(peak_windows),
	  "peak hours, local time, HH:MM-HH:MM separated by commas (at most "
	  "16; 22:00-02:00 crosses midnight); empty = none" },

	{ "hot", "accounts", SERVER_CFG_IDS, SERVER_CFG_LIVE, NOLIM, NULL, "",
	  F(hot_accounts),
	  "account ids always hot (besides accounts created `hot`), comma "
	  "separated; empty = none" },
	{ "hot", "auto_threshold", SERVER_CFG_INT, SERVER_CFG_LIVE, 0,
	  100000000, NULL, "2000", F(hot_auto_threshold),
	  "postings per second that make an account hot automatically (below "
	  "half of it for a window: normal again); 0 = no detection" },
	{ "hot", "auto_window_s", SERVER_CFG_INT, SERVER_CFG_LIVE, 1, 3600, NULL,
	  "10", F(hot_auto_window_s),
	  "seconds over which automatic detection counts postings" },
	{ "hot", "merge_ms", SERVER_CFG_INT, SERVER_CFG_LIVE, 10, 3600000, NULL,
	  "1000", F(hot_merge_ms),
	  "during peak, merge every hot buffer into the posted balance this "
	  "often" },
	{ "hot", "merge_max", SERVER_CFG_INT, SERVER_CFG_LIVE, 1, 100000000,
	  NULL, "10000", F(hot_merge_max),
	  "merge one account's buffer once this many credits to it were logged "
	  "since its last merge" },
	{ "hot", "max_accounts", SERVER_CFG_INT, 0, 1, 65536, NULL, "1024",
	  F(hot_max_accounts),
	  "most accounts hot at once (flag, config, admin and automatic); more "
	  "are refused overloaded" },
	{ "hot", "history", SERVER_CFG_INT, 0, 16, 16777216, NULL, "65536",
	  F(hot_history),
	  "journal entries kept in memory for admin `history` (the newest; "
	  "full history is the MariaDB projection's)" },

	{ "store", "backend", SERVER_CFG_ENUM, 0, NOLIM, backends, "file",
	  F(store_backend),
	  "file = the WAL and snapshots are the whole database; mariadb = "
	  "also project the ledger into [mariadb] (the WAL stays the "
	  "durability)" },

	{ "mariadb", "hosts", SERVER_CFG_HOSTS, 0, NOLIM, NULL,
	  "127.0.0.1:3306", F(mariadb_hosts),
	  "MariaDB servers in failover order: host:port or unix:/path/to/socket, "
	  "comma separated (masters replicating to each other)" },
	{ "mariadb", "user", SERVER_CFG_STR, 0, NOLIM, NULL, "dove",
	  F(mariadb_user), "user to connect as" },
	{ "mariadb", "password", SERVER_CFG_STR,
	  SERVER_CFG_EMPTY_OK | SERVER_CFG_SECRET, NOLIM, NULL, "",
	  F(mariadb_password),
	  "its password (never printed); prefer password_file" },
	{ "mariadb", "password_file", SERVER_CFG_PATH, SERVER_CFG_EMPTY_OK,
	  NOLIM, NULL, "", F(mariadb_password_file),
	  "file whose first line is the password (read at start); empty = "
	  "use password" },
	{ "mariadb", "database", SERVER_CFG_STR, 0, NOLIM, NULL, "dove",
	  F(mariadb_database),
	  "database (must exist); doved creates and migrates its tables" },
	{ "mariadb", "connect_timeout_s", SERVER_CFG_INT, 0, 1, 3600, NULL, "2",
	  F(mariadb_connect_timeout_s),
	  "seconds to connect before trying the next host" },
	{ "mariadb", "read_timeout_s", SERVER_CFG_INT, 0, 1, 3600, NULL, "10",
	  F(mariadb_read_timeout_s),
	  "seconds to wait for a reply before the host counts as failed" },
	{ "mariadb", "write_timeout_s", SERVER_CFG_INT, 0, 1, 3600, NULL, "10",
	  F(mariadb_write_timeout_s),
	  "seconds to wait for a write before the host counts as failed" },
	{ "mariadb", "batch_max_rows", SERVER_CFG_INT, 0, 1, 1000000, NULL,
	  "20000", F(mariadb_batch_max_rows),
	  "transfer rows per projection transaction, at most (a transaction "
	  "holds whole epochs)" },

	{ "snapshot", "dir", SERVER_CFG_PATH, 0, NOLIM, NULL, "data/snap",
	  F(snapshot_dir),
	  "snapshot files snap-<epoch>.snap; start-up loads the newest valid "
	  "one and replays the log after it" },
	{ "snapshot", "every_s", SERVER_CFG_INT, SERVER_CFG_LIVE, 0, 86400, NULL,
	  "300", F(snapshot_every_s),
	  "take a snapshot this often when the ledger changed (also on admin "
	  "`snapshot` and on a clean stop); 0 = only those" },
	{ "snapshot", "keep", SERVER_CFG_INT, SERVER_CFG_LIVE, 1, 100, NULL, "2",
	  F(snapshot_keep),
	  "snapshots kept; the WAL is kept from the oldest of them, so each is a fallback" },

	{ "wal", "dir", SERVER_CFG_PATH, 0, NOLIM, NULL, "data/wal", F(wal_dir),
	  "write-ahead log directory (segments wal-<first epoch>.log)" },
	{ "wal", "segment_mb", SERVER_CFG_INT, 0, 1, 1024, NULL, "64",
	  F(wal_segment_mb),
	  "segment file size in MiB, preallocated; the next one is prepared "
	  "in advance" },
	{ "wal", "fsync", SERVER_CFG_ENUM, 0, NOLIM, fsync_modes, "always",
	  F(wal_fsync),
	  "always = fdatasync every epoch before answering; never = "
	  "benchmarks only (loses acknowledged data on a crash)" },
	{ "wal", "max_epoch_kb", SERVER_CFG_INT, 0, 16, 1024, NULL, "1024",
	  F(wal_max_epoch_kb),
	  "largest group commit in KiB (at most 1024: doved holds one epoch's "
	  "records in memory); appends wait (backpressure) beyond it" },
	{ "wal", "max_delay_us", SERVER_CFG_INT, 0, 0, 100000, NULL, "0",
	  F(wal_max_delay_us),
	  "wait this long for more records before a commit; 0 = commit as "
	  "soon as the previous one is done" },
	{ "wal", "max_disk_mb", SERVER_CFG_INT, SERVER_CFG_LIVE, 0, 1 << 30,
	  NULL, "0", F(wal_max_disk_mb),
	  "refuse new work (unavailable) while the log's segments take this "
	  "many MiB (nothing retired: a lagging projection, no snapshots); "
	  "0 = no limit" },
};
#undef F
#undef NOLIM

#define NKEYS (sizeof(keys) / sizeof(keys[0]))
_Static_assert(NKEYS <= SERVER_CONFIG_KEYS_MAX, "raise SERVER_CONFIG_KEYS_MAX");

size_t
server_config_key_count(void)
{
	return NKEYS;
}

const struct server_config_key *
server_config_key(size_t i)
{
	DOVE_ASSERT(i < NKEYS);
	return &keys[i];
}

int
server_config_key_find(const char *section, const char *name)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].section, section) == 0 &&
		    strcmp(keys[i].name, name) == 0)
			return (int)i;
	return -1;
}

static bool
section_known(const char *section)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].section, section) == 0)
			return true;
	return false;
}

static int64_t *
field_i64(server_config *cfg, size_t i)
{
	return (int64_t *)((char *)cfg + keys[i].offset);
}

static char **
field_str(server_config *cfg, size_t i)
{
	return (char **)((char *)cfg + keys[i].offset);
}

static bool
is_str_type(enum server_config_type t)
{
	return t == SERVER_CFG_PATH || t == SERVER_CFG_ADDR ||
	       t == SERVER_CFG_CPUS || t == SERVER_CFG_WINDOWS ||
	       t == SERVER_CFG_IDS || t == SERVER_CFG_STR ||
	       t == SERVER_CFG_HOSTS;
}

/* After an item of a comma-separated list: step over the comma, or
 * stand at the end. False when neither is there (a stray character,
 * or a comma with nothing after it). */
static bool
list_next(const char **v)
{
	if (**v == ',' && (*v)[1] != '\0') {
		(*v)++;
		return true;
	}
	return **v == '\0';
}

/* "" or "0,1,3": CPU numbers below 1024, at most 64 of them. */
static bool
cpus_valid(const char *v)
{
	int n = 0;
	while (*v) {
		char *end;
		if (*v < '0' || *v > '9')
			return false;
		long c = strtol(v, &end, 10);
		if (c >= 1024 || ++n > 64)
			return false;
		v = end;
		if (!list_next(&v))
			return false;
	}
	return true;
}

static bool
hhmm(const char **p, uint16_t *minutes)
{
	const char *s = *p;
	if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9' || s[2] != ':' ||
	    s[3] < '0' || s[3] > '9' || s[4] < '0' || s[4] > '9')
		return false;
	int h = (s[0] - '0') * 10 + s[1] - '0', m = (s[3] - '0') * 10 + s[4] - '0';
	/* 24:00 is the end of the day. */
	if (m > 59 || h > 24 || (h == 24 && m != 0))
		return false;
	*minutes = (uint16_t)(h * 60 + m);
	*p = s + 5;
	return true;
}

int
server_peak_windows_parse(const char *s, struct server_peak_window *w)
{
	int n = 0;
	while (*s) {
		struct server_peak_window x;
		if (n == SERVER_PEAK_WINDOWS_MAX || !hhmm(&s, &x.from) ||
		    *s++ != '-' || !hhmm(&s, &x.to) || x.from == x.to ||
		    x.from == 1440)
			return -1;
		if (x.to == 1440)
			x.to = 0; /* up to midnight */
		if (w)
			w[n] = x;
		n++;
		if (!list_next(&s))
			return -1;
	}
	return n;
}

bool
server_peak_windows_contain(const struct server_peak_window *w, int n, int m)
{
	for (int i = 0; i < n; i++) {
		if (w[i].from < w[i].to ? m >= w[i].from && m < w[i].to
					: m >= w[i].from || m < w[i].to)
			return true;
	}
	return false;
}

/* Printable, at most 255 bytes, no blank at either end. */
static bool
str_valid(const char *v, bool empty_ok)
{
	size_t n = strlen(v);
	if (n == 0)
		return empty_ok;
	if (n > 255 || v[0] == ' ' || v[n - 1] == ' ')
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
			return false;
	return true;
}

/* "host:port" or "unix:/abs/path", comma separated, 1..8 of them. */
static bool
hosts_valid(const char *v)
{
	int n = 0;
	while (*v) {
		size_t len = strcspn(v, ",");
		char one[256];
		if (len == 0 || len >= sizeof(one) || ++n > 8)
			return false;
		memcpy(one, v, len);
		one[len] = '\0';
		if (strncmp(one, "unix:/", 6) == 0) {
			if (len - 5 >= sizeof(((struct sockaddr_un *)0)->sun_path))
				return false;
		} else {
			char *colon = strrchr(one, ':');
			char *end;
			long port = colon ? strtol(colon + 1, &end, 10) : 0;
			if (!colon || colon == one || colon[1] == '\0' || *end ||
			    port < 1 || port > 65535)
				return false;
		}
		v += len;
		if (!list_next(&v))
			return false;
	}
	return n > 0;
}

/* "" or "1,2,3": account ids (1 .. 2^64-1), at most 256. */
static bool
ids_valid(const char *v)
{
	int n = 0;
	while (*v) {
		uint64_t id = 0;
		const char *start = v;
		for (; *v >= '0' && *v <= '9'; v++) {
			if (id > (UINT64_MAX - (uint64_t)(*v - '0')) / 10)
				return false;
			id = id * 10 + (uint64_t)(*v - '0');
		}
		if (v == start || id == 0 || ++n > 256)
			return false;
		if (!list_next(&v))
			return false;
	}
	return true;
}

/* "a.b.c.d:port" with port 1..65535. */
static bool
addr_valid(const char *v)
{
	const char *colon = strrchr(v, ':');
	if (colon == NULL || colon == v || colon - v >= 16)
		return false;
	char host[16];
	memcpy(host, v, (size_t)(colon - v));
	host[colon - v] = '\0';
	struct in_addr a;
	if (inet_pton(AF_INET, host, &a) != 1)
		return false;
	char *end;
	errno = 0;
	long port = strtol(colon + 1, &end, 10);
	return errno == 0 && *end == '\0' && colon[1] != '\0' && port >= 1 &&
	       port <= 65535;
}

/* ---- parsing one value ----------------------------------------------- */

struct load_ctx {
	const char *file; /* as given, for messages */
	char dir[PATH_MAX];
	server_config *cfg;
	int lineno;        /* line the reader handed to inih last */
	int err_line;      /* 0 = no error yet */
	char *err;
	size_t errlen;
	int first_line[NKEYS]; /* where each key was set; 0 = not yet */
	FILE *f;
};

/* Describe what key i allows, for error messages. */
static void
describe_allowed(size_t i, char *buf, size_t size)
{
	const struct server_config_key *k = &keys[i];
	switch (k->type) {
	case SERVER_CFG_INT:
		snprintf(buf, size, "an integer from %" PRId64 " to %" PRId64,
			 k->min, k->max);
		break;
	case SERVER_CFG_MODE:
		snprintf(buf, size, "an octal mode from %04" PRIo64
			 " to %04" PRIo64, k->min, k->max);
		break;
	case SERVER_CFG_BOOL:
		snprintf(buf, size, "true or false");
		break;
	case SERVER_CFG_ENUM: {
		size_t n = (size_t)snprintf(buf, size, "one of");
		for (size_t c = 0; k->choices[c] && n < size; c++)
			n += (size_t)snprintf(buf + n, size - n, "%s %s",
					      c ? "," : "", k->choices[c]);
		break;
	}
	case SERVER_CFG_CPUS:
		snprintf(buf, size, "empty (not pinned) or CPU numbers like "
			 "0,1");
		break;
	case SERVER_CFG_WINDOWS:
		snprintf(buf, size, "empty or up to 16 local-time windows like "
			 "11:00-13:30,22:00-02:00");
		break;
	case SERVER_CFG_IDS:
		snprintf(buf, size, "empty or up to 256 account ids like 1,2,3");
		break;
	case SERVER_CFG_STR:
		snprintf(buf, size, "%stext of at most 255 printable bytes",
			 (k->flags & SERVER_CFG_EMPTY_OK) ? "empty or " : "");
		break;
	case SERVER_CFG_HOSTS:
		snprintf(buf, size, "1 to 8 servers like 127.0.0.1:3306 or "
			 "unix:/run/mysqld/mysqld.sock, comma separated");
		break;
	case SERVER_CFG_ADDR:
		snprintf(buf, size, "%san IPv4 address and port, like "
			 "127.0.0.1:7070",
			 (k->flags & SERVER_CFG_EMPTY_OK) ? "empty (off) or " : "");
		break;
	case SERVER_CFG_PATH:
		snprintf(buf, size, "%sa path of at most %zu bytes%s",
			 (k->flags & SERVER_CFG_EMPTY_OK) ? "empty or " : "",
			 (k->flags & SERVER_CFG_SOCKPATH)
				 ? sizeof(((struct sockaddr_un *)0)->sun_path) - 1
				 : (size_t)PATH_MAX - 1,
			 (k->flags & SERVER_CFG_SOCKPATH)
				 ? " (a UNIX socket)"
				 : "");
		break;
	}
}

static bool
parse_i64(const char *v, int base, int64_t *out)
{
	if (*v == '\0' || *v == '+' || *v == ' ')
		return false;
	errno = 0;
	char *end;
	long long x = strtoll(v, &end, base);
	if (errno != 0 || *end != '\0')
		return false;
	*out = x;
	return true;
}

/*
 * Parse value v for key i into cfg. dir resolves relative paths. Returns
 * false when v is not allowed; the caller reports it.
 */
static bool
parse_value(server_config *cfg, size_t i, const char *v, const char *dir)
{
	const struct server_config_key *k = &keys[i];
	int64_t x;

	/* "key =;x" sets ";x", but written back as "key = ;x" it reads as
	 * an empty value and a comment (found by tests/fuzz/fuzz_config):
	 * refuse what cannot be written back. */
	if (v[0] == ';')
		return false;
	switch (k->type) {
	case SERVER_CFG_INT:
		if (!parse_i64(v, 10, &x) || x < k->min || x > k->max)
			return false;
		*field_i64(cfg, i) = x;
		return true;
	case SERVER_CFG_MODE:
		if (v[0] != '0' || !parse_i64(v, 8, &x) || x < k->min ||
		    x > k->max)
			return false;
		*field_i64(cfg, i) = x;
		return true;
	case SERVER_CFG_BOOL:
		if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on") ||
		    !strcmp(v, "1"))
			x = 1;
		else if (!strcmp(v, "false") || !strcmp(v, "no") ||
			 !strcmp(v, "off") || !strcmp(v, "0"))
			x = 0;
		else
			return false;
		*field_i64(cfg, i) = x;
		return true;
	case SERVER_CFG_ENUM:
		for (int64_t c = 0; k->choices[c]; c++) {
			if (strcmp(k->choices[c], v) == 0) {
				*field_i64(cfg, i) = c;
				return true;
			}
		}
		return false;
	case SERVER_CFG_CPUS:
	case SERVER_CFG_WINDOWS:
	case SERVER_CFG_IDS:
	case SERVER_CFG_STR:
	case SERVER_CFG_HOSTS:
	case SERVER_CFG_ADDR: {
		bool ok = k->type == SERVER_CFG_STR
				  ? str_valid(v, (k->flags & SERVER_CFG_EMPTY_OK) != 0)
			  : k->type == SERVER_CFG_HOSTS ? hosts_valid(v)
			  : k->type == SERVER_CFG_CPUS	? cpus_valid(v)
			  : k->type == SERVER_CFG_WINDOWS ? server_peak_windows_parse(v, NULL) >= 0
			  : k->type == SERVER_CFG_IDS	? ids_valid(v)
			  : v[0] == '\0' ? (k->flags & SERVER_CFG_EMPTY_OK) != 0
					: addr_valid(v);
		if (!ok)
			return false;
		char *s = strdup(v);
		DOVE_ASSERT(s != NULL);
		free(*field_str(cfg, i));
		*field_str(cfg, i) = s;
		return true;
	}
	case SERVER_CFG_PATH: {
		char buf[PATH_MAX];
		size_t limit = (k->flags & SERVER_CFG_SOCKPATH)
				       ? sizeof(((struct sockaddr_un *)0)->sun_path)
				       : sizeof(buf);
		int n;
		if (v[0] == '\0') {
			if (!(k->flags & SERVER_CFG_EMPTY_OK))
				return false;
			n = snprintf(buf, sizeof(buf), "%s", "");
		} else if (v[0] == '/') {
			n = snprintf(buf, sizeof(buf), "%s", v);
		} else {
			n = snprintf(buf, sizeof(buf), "%s/%s", dir, v);
		}
		if (n < 0 || (size_t)n >= limit)
			return false;
		char *s = strdup(buf);
		DOVE_ASSERT(s != NULL); /* start-up/reload only; OOM = give up */
		free(*field_str(cfg, i));
		*field_str(cfg, i) = s;
		return true;
	}
	}
	DOVE_ASSERT(!"unreachable: unknown config type");
	return false;
}

static bool validate_cross(const server_config *cfg, char *err,
			   size_t errlen);

/* ---- inih callbacks ---------------------------------------------------- */

__attribute__((format(printf, 2, 3))) static void
load_error(struct load_ctx *c, const char *fmt, ...)
{
	if (c->err_line != 0)
		return; /* keep the first error: later ones may be its echo */
	c->err_line = c->lineno;
	int n = snprintf(c->err, c->errlen, "%s:%d: ", c->file, c->lineno);
	if (n < 0 || (size_t)n >= c->errlen)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
	va_end(ap);
}

static void
list_section_keys(const char *section, char *buf, size_t size)
{
	size_t n = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < NKEYS && n < size; i++)
		if (strcmp(keys[i].section, section) == 0)
			n += (size_t)snprintf(buf + n, size - n, "%s%s",
					      n ? ", " : "", keys[i].name);
}

static void
list_sections(char *buf, size_t size)
{
	size_t n = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < NKEYS && n < size; i++) {
		if (i > 0 && strcmp(keys[i].section, keys[i - 1].section) == 0)
			continue;
		n += (size_t)snprintf(buf + n, size - n, "%s%s", n ? ", " : "",
				      keys[i].section);
	}
}

static int
on_pair(void *user, const char *section, const char *name, const char *value)
{
	struct load_ctx *c = user;
	char allowed[256];

	if (section[0] == '\0') {
		load_error(c, "%s: key outside any [section]", name);
		return 0;
	}
	if (!section_known(section)) {
		list_sections(allowed, sizeof(allowed));
		load_error(c, "[%s]: unknown section (known sections: %s)",
			   section, allowed);
		return 0;
	}
	int i = server_config_key_find(section, name);
	if (i < 0) {
		list_section_keys(section, allowed, sizeof(allowed));
		load_error(c, "[%s] %s: unknown key (keys of [%s]: %s)", section,
			   name, section, allowed);
		return 0;
	}
	if (c->first_line[i] != 0) {
		load_error(c, "[%s] %s: set twice (first on line %d)", section,
			   name, c->first_line[i]);
		return 0;
	}
	c->first_line[i] = c->lineno;
	c->cfg->settings++;
	if (!parse_value(c->cfg, (size_t)i, value, c->dir)) {
		describe_allowed((size_t)i, allowed, sizeof(allowed));
		load_error(c, "[%s] %s = '%s': invalid value, allowed: %s",
			   section, name, value, allowed);
		return 0;
	}
	return 1;
}

/*
 * Hands inih exactly one line per call so that our count matches the line
 * inih is working on (Debian's inih is built without line numbers in the
 * handler). A line longer than inih's buffer is an error of ours, never a
 * silently split line.
 */
static char *
read_line(char *str, int num, void *stream)
{
	struct load_ctx *c = stream;
	FILE *f = c->f;
	int len = 0, ch = EOF;
	bool nul = false;

	/* By hand, not fgets: a NUL inside a line would end it for inih
	 * and silently drop the rest. */
	while (len < num - 1 && (ch = fgetc(f)) != EOF) {
		nul |= ch == '\0';
		str[len++] = (char)ch;
		if (ch == '\n')
			break;
	}
	if (len == 0)
		return NULL;
	str[len] = '\0';
	c->lineno++;
	if (len == num - 1 && str[len - 1] != '\n' && (ch = fgetc(f)) != EOF &&
	    ch != '\n') {
		while ((ch = fgetc(f)) != EOF && ch != '\n')
			;
		load_error(c, "line longer than %d bytes", num - 2);
		str[0] = '\0';
	} else if (nul) {
		load_error(c, "line contains a NUL byte");
		str[0] = '\0';
	}
	return str;
}

int
server_config_load(const char *path, server_config **out, char *err,
		   size_t errlen)
{
	DOVE_ASSERT(path != NULL && out != NULL);
	DOVE_ASSERT(err != NULL && errlen > 0);
	int rc;

	struct load_ctx *c = calloc(1, sizeof(*c));
	server_config *cfg = calloc(1, sizeof(*cfg));
	DOVE_ASSERT(c != NULL && cfg != NULL);
	c->file = path;
	c->cfg = cfg;
	c->err = err;
	c->errlen = errlen;
	err[0] = '\0';

	char abs[PATH_MAX];
	if (realpath(path, abs) == NULL) {
		rc = -errno;
		snprintf(err, errlen, "%s: cannot open config file: %s", path,
			 dove_strerror(rc));
		goto out_free;
	}
	cfg->path = strdup(abs);
	DOVE_ASSERT(cfg->path != NULL);
	snprintf(c->dir, sizeof(c->dir), "%s", abs);
	*strrchr(c->dir, '/') = '\0'; /* realpath is absolute: has a '/' */
	if (c->dir[0] == '\0')
		snprintf(c->dir, sizeof(c->dir), "/");

	for (size_t i = 0; i < NKEYS; i++) {
		bool ok = parse_value(cfg, i, keys[i].def, c->dir);
		/* A default the table cannot parse is our bug, not the user's
		 * -- unless the config lives so deep that a default relative
		 * path no longer fits, which the file may still override. */
		DOVE_ASSERT(ok || keys[i].type == SERVER_CFG_PATH);
	}

	c->f = fopen(abs, "r");
	if (c->f == NULL) {
		rc = -errno;
		snprintf(err, errlen, "%s: cannot open config file: %s", path,
			 dove_strerror(rc));
		goto out_free;
	}
	int line = ini_parse_stream(read_line, c, on_pair, c);
	fclose(c->f);
	if (line < 0) {
		snprintf(err, errlen, "%s: cannot read config file", path);
		rc = -EIO;
		goto out_free;
	}
	/* inih reports its own (syntax) error only at the end, as the first
	 * line it failed on; it wins over ours if it came earlier. */
	if (line > 0 && (c->err_line == 0 || line < c->err_line)) {
		c->err_line = 0;
		c->lineno = line;
		load_error(c, "syntax error: expected '[section]' or "
			      "'key = value'");
	}
	if (c->err_line != 0) {
		rc = -DOVE_ECONFIG;
		goto out_free;
	}
	/* Defaults that did not fit (see above) and were not overridden. */
	for (size_t i = 0; i < NKEYS; i++) {
		if (keys[i].type == SERVER_CFG_PATH &&
		    *field_str(cfg, i) == NULL) {
			snprintf(err, errlen,
				 "%s: [%s] %s: default '%s' is too long once "
				 "resolved against %s; set it in the file",
				 path, keys[i].section, keys[i].name,
				 keys[i].def, c->dir);
			rc = -DOVE_ECONFIG;
			goto out_free;
		}
	}
	/* Whatever we accept, --check-config must be able to print as a
	 * file we accept again: a relative path resolved against a deep
	 * directory can outgrow a config line. */
	for (size_t i = 0; i < NKEYS; i++) {
		char v[PATH_MAX + 64];
		size_t n = server_config_format(cfg, i, v, sizeof(v)) +
			   strlen(keys[i].name) + 3;
		if (n > CONFIG_LINE_MAX) {
			snprintf(err, errlen,
				 "%s: [%s] %s: the value is %zu bytes once "
				 "resolved ('%.80s...'); a config line holds "
				 "at most %d: use a shorter path",
				 path, keys[i].section, keys[i].name,
				 n - strlen(keys[i].name) - 3, v, CONFIG_LINE_MAX);
			rc = -DOVE_ECONFIG;
			goto out_free;
		}
	}
	if (!validate_cross(cfg, err, errlen)) {
		rc = -DOVE_ECONFIG;
		goto out_free;
	}
	cfg->generation = 1;
	*out = cfg;
	free(c);
	return 0;

out_free:
	server_config_free(cfg);
	free(c);
	DOVE_ASSERT(err[0] != '\0');
	return rc;
}

void
server_config_free(server_config *cfg)
{
	if (cfg == NULL)
		return;
	for (size_t i = 0; i < NKEYS; i++)
		if (is_str_type(keys[i].type))
			free(*field_str(cfg, i));
	free(cfg->path);
	free(cfg);
}

static bool
value_equal(const server_config *a, const server_config *b, size_t i)
{
	if (is_str_type(keys[i].type))
		return strcmp(*field_str((server_config *)a, i),
			      *field_str((server_config *)b, i)) == 0;
	return *field_i64((server_config *)a, i) ==
	       *field_i64((server_config *)b, i);
}

uint32_t
server_config_keep_restart_keys(server_config *next,
				const server_config *running)
{
	DOVE_ASSERT(next != NULL && running != NULL);
	DOVE_ASSERT(next != running);
	next->restart_required_count = 0;
	for (size_t i = 0; i < NKEYS; i++) {
		if ((keys[i].flags & SERVER_CFG_LIVE) ||
		    value_equal(next, running, i))
			continue;
		if (is_str_type(keys[i].type)) {
			char *s = strdup(*field_str((server_config *)running, i));
			DOVE_ASSERT(s != NULL);
			free(*field_str(next, i));
			*field_str(next, i) = s;
		} else {
			*field_i64(next, i) = *field_i64((server_config *)running, i);
		}
		next->restart_required[next->restart_required_count++] =
			(uint16_t)i;
	}
	DOVE_ASSERT(next->restart_required_count <= NKEYS);
	return next->restart_required_count;
}

void
server_config_log_changes(const server_config *next,
			  const server_config *running)
{
	for (size_t i = 0; i < NKEYS; i++) {
		if (!(keys[i].flags & SERVER_CFG_LIVE) ||
		    value_equal(next, running, i))
			continue;
		char was[256], now[256];
		server_config_format(running, i, was, sizeof(was));
		server_config_format(next, i, now, sizeof(now));
		DOVE_INFO("reload: [%s] %s = %s (was %s)", keys[i].section,
			  keys[i].name, now, was);
	}
}

/* ---- output ------------------------------------------------------------ */

size_t
server_config_format(const server_config *cfg, size_t i, char *buf,
		     size_t size)
{
	DOVE_ASSERT(i < NKEYS);
	server_config *c = (server_config *)cfg;
	int n = 0;
	switch (keys[i].type) {
	case SERVER_CFG_INT:
		n = snprintf(buf, size, "%" PRId64, *field_i64(c, i));
		break;
	case SERVER_CFG_MODE:
		n = snprintf(buf, size, "%04" PRIo64, *field_i64(c, i));
		break;
	case SERVER_CFG_BOOL:
		n = snprintf(buf, size, "%s", *field_i64(c, i) ? "true" : "false");
		break;
	case SERVER_CFG_ENUM:
		n = snprintf(buf, size, "%s", keys[i].choices[*field_i64(c, i)]);
		break;
	case SERVER_CFG_PATH:
	case SERVER_CFG_ADDR:
	case SERVER_CFG_CPUS:
	case SERVER_CFG_WINDOWS:
	case SERVER_CFG_IDS:
	case SERVER_CFG_STR:
	case SERVER_CFG_HOSTS:
		/* A secret is never printed, only whether it is set. */
		n = snprintf(buf, size, "%s",
			     (keys[i].flags & SERVER_CFG_SECRET) && **field_str(c, i)
				     ? "(hidden)"
				     : *field_str(c, i));
		break;
	}
	DOVE_ASSERT(n >= 0);
	return (size_t)n < size ? (size_t)n : size - 1;
}

void
server_config_write_ini(const server_config *cfg, FILE *f)
{
	char val[PATH_MAX];
	for (size_t i = 0; i < NKEYS; i++) {
		if (i == 0 || strcmp(keys[i].section, keys[i - 1].section) != 0)
			fprintf(f, "%s[%s]\n", i ? "\n" : "", keys[i].section);
		server_config_format(cfg, i, val, sizeof(val));
		fprintf(f, "%s = %s\n", keys[i].name, val);
	}
}

void
server_config_write_template(FILE *f)
{
	fprintf(f,
		"; config.ini - doved's configuration. Every key, its default "
		"and what it does.\n"
		"; Generated by `doved --config-template`; edit the values, "
		"keep the keys.\n"
		"; Relative paths are resolved against this file's directory.\n"
		"; (live) keys take effect on SIGHUP / `dovectl reload`; the "
		"others need a\n"
		"; restart and are listed under restart_required in `dovectl "
		"status` until then.\n");
	for (size_t i = 0; i < NKEYS; i++) {
		if (i == 0 || strcmp(keys[i].section, keys[i - 1].section) != 0)
			fprintf(f, "\n[%s]\n", keys[i].section);
		fprintf(f, "; %s%s\n", keys[i].help,
			(keys[i].flags & SERVER_CFG_LIVE) ? " (live)" : "");
		fprintf(f, "%s = %s\n", keys[i].name, keys[i].def);
	}
}

void
server_config_json(const server_config *cfg, struct json_buf *j)
{
	char val[PATH_MAX];
	json_obj_begin(j);
	for (size_t i = 0; i < NKEYS; i++) {
		if (i == 0 || strcmp(keys[i].section, keys[i - 1].section) != 0) {
			if (i > 0)
				json_obj_end(j);
			json_key(j, keys[i].section);
			json_obj_begin(j);
		}
		json_key(j, keys[i].name);
		switch (keys[i].type) {
		case SERVER_CFG_INT:
			json_i64(j, *field_i64((server_config *)cfg, i));
			break;
		case SERVER_CFG_BOOL:
			json_bool(j, *field_i64((server_config *)cfg, i) != 0);
			break;
		default:
			server_config_format(cfg, i, val, sizeof(val));
			json_str(j, val);
			break;
		}
	}
	if (NKEYS > 0)
		json_obj_end(j);
	json_obj_end(j);
}

/* Cross-key rules the table cannot express. */
static bool
validate_cross(const server_config *cfg, char *err, size_t errlen)
{
	if ((uint64_t)cfg->wal_segment_mb << 20 <
	    ((uint64_t)cfg->wal_max_epoch_kb << 10) + 4096) {
		snprintf(err, errlen,
			 "%s: [wal] segment_mb = %" PRId64 " cannot hold one "
			 "epoch of max_epoch_kb = %" PRId64 "; raise segment_mb "
			 "or lower max_epoch_kb",
			 cfg->path, cfg->wal_segment_mb, cfg->wal_max_epoch_kb);
		return false;
	}
	return true;
}

/* ---- RCU publication -------------------------------------------------- */

static server_config *current;

const server_config *
server_config_get(void)
{
	return rcu_dereference(current);
}

void
server_config_publish(server_config *cfg)
{
	DOVE_ASSERT(cfg != NULL);
	DOVE_ASSERT(cfg->generation >= 1);
	/* rcu_xchg_pointer orders cfg's initialisation before readers can
	 * see the pointer (it implies a full barrier). */
	server_config *old = rcu_xchg_pointer(&current, cfg);
	if (old != NULL) {
		DOVE_ASSERT(cfg->generation > old->generation);
		/* Readers that loaded old finish before it is freed. */
		urcu_memb_synchronize_rcu();
		server_config_free(old);
	}
}

server_config *
server_config_retire(void)
{
	server_config *old = rcu_xchg_pointer(&current, NULL);
	urcu_memb_synchronize_rcu();
	return old;
}
