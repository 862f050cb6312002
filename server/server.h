/*
 * server.h - the public interface of the top layer: the configuration (one
 * key table that drives parsing, validation, config.ini, the `config` admin
 * reply and docs), the small JSON writer the admin replies use, and
 * server_run(), which is all of doved but its argument parsing.
 *
 * The loaded configuration is an immutable snapshot published with RCU
 * (liburcu, memb flavour): readers on any registered thread take
 * urcu_memb_read_lock(), call server_config_get(), read what they need and
 * unlock. A reload builds a new snapshot, publishes it and frees the old one
 * after a grace period. Nothing ever writes into a published snapshot.
 */
#ifndef SERVER_H
#define SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- configuration ------------------------------------------------- */

enum server_config_type {
	SERVER_CFG_INT,  /* decimal int64 within [min, max] */
	SERVER_CFG_BOOL, /* true/false, yes/no, on/off, 1/0 */
	SERVER_CFG_ENUM, /* one of choices[]; stored as its index */
	SERVER_CFG_MODE, /* octal file mode within [min, max] */
	SERVER_CFG_PATH, /* resolved against the config file's directory */
	SERVER_CFG_ADDR, /* IPv4 "host:port", or empty (EMPTY_OK) */
	SERVER_CFG_CPUS, /* "0,1,3": CPU numbers, or empty */
	SERVER_CFG_WINDOWS, /* "11:00-13:30,22:00-02:00": local times, or empty */
	SERVER_CFG_IDS,     /* "1,2,3": account ids, or empty */
	SERVER_CFG_STR,     /* free text (printable, no blanks at the ends) */
	SERVER_CFG_HOSTS,   /* "host:port,unix:/path": MariaDB servers */
};

/* Flags of a key. */
#define SERVER_CFG_LIVE 0x1u      /* a reload applies it at once */
#define SERVER_CFG_EMPTY_OK 0x2u  /* PATH: "" is allowed (means "none") */
#define SERVER_CFG_SOCKPATH 0x4u  /* PATH: must fit sockaddr_un.sun_path */
#define SERVER_CFG_SECRET 0x8u    /* never printed: "(hidden)" when set */

struct server_config_key {
	const char *section;
	const char *name;
	enum server_config_type type;
	unsigned flags;
	int64_t min, max;           /* INT and MODE */
	const char *const *choices; /* ENUM: NULL-terminated */
	const char *def;            /* default, in config.ini syntax */
	size_t offset;              /* of the int64_t or char * field */
	const char *help;           /* one line for config.ini and docs */
};

/* The most keys the table may ever hold; sizes restart_required[]. */
#define SERVER_CONFIG_KEYS_MAX 128

typedef struct server_config {
	uint64_t generation; /* 1 at start-up, +1 per successful reload */
	char *path;          /* absolute path of the file it came from */

	/* [server] */
	char *data_dir;
	char *pid_file;
	int64_t log_level; /* enum dove_log_level */
	char *log_file;    /* "" = stderr */

	/* [admin] */
	char *admin_socket;
	int64_t admin_socket_mode;
	int64_t admin_max_clients;
	int64_t admin_max_line;

	/* [ingress] */
	char *ingress_tcp;  /* "" = no TCP listener */
	char *ingress_unix; /* "" = no UNIX listener */
	int64_t ingress_max_line;
	int64_t ingress_max_connections;
	int64_t ingress_pipeline;

	/* [settle] */
	int64_t settle_shards;
	char *settle_cpus; /* "" = not pinned; else "0,1,..." */
	int64_t settle_accounts_max;
	int64_t settle_dedup_window;

	/* [peak] */
	int64_t peak_mode; /* 0 schedule, 1 always, 2 never */
	char *peak_windows;

	/* [hot] */
	char *hot_accounts;
	int64_t hot_auto_threshold; /* postings/s; 0 = off */
	int64_t hot_auto_window_s;
	int64_t hot_merge_ms;
	int64_t hot_merge_max;
	int64_t hot_max_accounts;
	int64_t hot_history;

	/* [store] */
	int64_t store_backend; /* 0 file, 1 mariadb */

	/* [mariadb] */
	char *mariadb_hosts;
	char *mariadb_user;
	char *mariadb_password;
	char *mariadb_password_file;
	char *mariadb_database;
	int64_t mariadb_connect_timeout_s;
	int64_t mariadb_read_timeout_s;
	int64_t mariadb_write_timeout_s;
	int64_t mariadb_batch_max_rows;

	/* [snapshot] */
	char *snapshot_dir;
	int64_t snapshot_every_s;
	int64_t snapshot_keep;

	/* [wal] */
	char *wal_dir;
	int64_t wal_segment_mb;
	int64_t wal_fsync; /* 0 always, 1 never */
	int64_t wal_max_epoch_kb;
	int64_t wal_max_delay_us;
	int64_t wal_max_disk_mb; /* 0 = no limit */

	/* Restart-only keys whose value in the file differs from the running
	 * one: indices into the key table (server_config_key()). */
	uint32_t restart_required_count;
	/* key = value lines the file set (0: an empty file, all defaults). */
	uint32_t settings;
	uint16_t restart_required[SERVER_CONFIG_KEYS_MAX];
} server_config;

/* Peak windows: minutes of the day, [from, to); to < from crosses
 * midnight. */
#define SERVER_PEAK_WINDOWS_MAX 16
struct server_peak_window {
	uint16_t from, to;
};

/* Parse "HH:MM-HH:MM,..." (empty: none). Returns how many (0 ..
 * SERVER_PEAK_WINDOWS_MAX), or -1 when s is not that. */
int server_peak_windows_parse(const char *s, struct server_peak_window *w);

/* Is minute-of-day m (0..1439) inside one of the n windows? */
bool server_peak_windows_contain(const struct server_peak_window *w, int n,
				 int m);

size_t
server_config_key_count(void);

/* Key i of the table, 0 <= i < server_config_key_count(). */
const struct server_config_key *
server_config_key(size_t i);

/* Index of [section] name, or -1. */
int
server_config_key_find(const char *section, const char *name);

/*
 * Load and validate path. On success *out is a new snapshot (generation 1;
 * the caller sets it otherwise) and 0 is returned. On failure returns
 * -DOVE_ECONFIG or -errno and writes one line to err that names the file,
 * the line, the section and key, the value given and what is allowed.
 * Any thread; does not touch the published snapshot.
 */
int
server_config_load(const char *path, server_config **out, char *err,
		   size_t errlen);

void
server_config_free(server_config *cfg);

/*
 * Make next (freshly loaded) fit to replace running: every restart-only key
 * whose value differs keeps running's value in next and is listed in
 * next->restart_required. Returns the number of such keys.
 */
uint32_t
server_config_keep_restart_keys(server_config *next,
				const server_config *running);

/* Log every live key whose value next changes from running (a reload
 * says what it did). */
void server_config_log_changes(const server_config *next,
			       const server_config *running);

/* The value of key i in config.ini syntax. Returns its length. */
size_t
server_config_format(const server_config *cfg, size_t i, char *buf,
		     size_t size);

/* Print cfg as an ini file ([section] / key = value), for --check-config. */
void
server_config_write_ini(const server_config *cfg, FILE *f);

/* Print the documented default config.ini (comments from the table). */
void
server_config_write_template(FILE *f);

/*
 * The published snapshot. Call only between urcu_memb_read_lock() and
 * urcu_memb_read_unlock() on a thread registered with liburcu (or on the
 * thread that publishes). Never NULL once server_run has started.
 */
const server_config *
server_config_get(void);

/*
 * Publish cfg (the caller gives up ownership), wait for a grace period and
 * free the snapshot it replaced. Only one thread (the main loop) publishes,
 * and it must not hold the read lock while it does.
 */
void
server_config_publish(server_config *cfg);

/*
 * Unpublish the snapshot at shutdown, after a grace period, and hand it back
 * for freeing. Publisher thread only; server_config_get() is NULL after.
 */
server_config *
server_config_retire(void);

/* ---- JSON writer ---------------------------------------------------- */

/*
 * Appends compact JSON into a caller-provided buffer; tracks commas itself.
 * When the buffer is too small, overflow is set and the rest is dropped:
 * check it once at the end rather than after every call.
 */
struct json_buf {
	char *buf;
	size_t len, cap;
	bool overflow;
	int depth;
	bool first[16]; /* per nesting level: no value written yet */
};

void json_init(struct json_buf *j, char *buf, size_t cap);
void json_obj_begin(struct json_buf *j);
void json_obj_end(struct json_buf *j);
void json_arr_begin(struct json_buf *j);
void json_arr_end(struct json_buf *j);
void json_key(struct json_buf *j, const char *key);
void json_str(struct json_buf *j, const char *s);
void json_strn(struct json_buf *j, const char *s, size_t n);
void json_i64(struct json_buf *j, int64_t v);
void json_u64(struct json_buf *j, uint64_t v);
/* 128-bit counters go out as strings: JSON readers lose precision past
 * 2^53. */
void json_u128(struct json_buf *j, unsigned __int128 v);
void json_i128(struct json_buf *j, __int128 v);
void json_bool(struct json_buf *j, bool v);
void json_null(struct json_buf *j);
/* A key and its value, in one call. */
void json_kv_u64(struct json_buf *j, const char *key, uint64_t v);
void json_kv_i64(struct json_buf *j, const char *key, int64_t v);
void json_kv_str(struct json_buf *j, const char *key, const char *s);
void json_kv_bool(struct json_buf *j, const char *key, bool v);

/* cfg as {"section":{"key":value,...},...}; numbers as numbers. */
void
server_config_json(const server_config *cfg, struct json_buf *j);

/* ---- the server ---------------------------------------------------- */

/*
 * Run doved on an already loaded configuration (ownership passes) until
 * SIGTERM, SIGINT or the admin `shutdown`. Returns the process exit status:
 * 0 after a clean stop, 1 when start-up failed (the reason is logged).
 * Call once, from main().
 */
int
server_run(server_config *cfg);

#endif /* SERVER_H */
