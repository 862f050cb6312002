/*
 * store.h - the public interface of the storage layer: data directories,
 * and from the WAL issue on the write-ahead log, snapshots and the MariaDB
 * projection.
 *
 * store/ may use settle/'s public types; it never calls into server/.
 */
#ifndef STORE_H
#define STORE_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "settle.h"

/*
 * Create directory path and any missing parents (mkdir -p) with mode.
 * An existing directory is fine; an existing non-directory anywhere on the
 * way is an error. On failure returns -errno and writes to err a message
 * naming the component that failed and why. Not for the hot path.
 */
int
store_dir_create(const char *path, mode_t mode, char *err, size_t errlen);

/* store_dir_create for the directory that holds file path. */
int
store_dir_create_parent(const char *path, mode_t mode, char *err,
			size_t errlen);

/*
 * Tests only: make chosen durable-I/O calls of the storage layer fail.
 * spec is "OP:N:ERR[,OP:N:ERR...]": the N-th call (from 1; "N+": the N-th
 * and every later one) of OP fails with ERR. OP: wal.write and wal.sync
 * (an epoch's pwrite and fdatasync), wal.segwrite and wal.segsync (the
 * anchor, segment headers, seals, zeroing a torn tail), wal.rename,
 * wal.dirsync (directory fsync), wal.fallocate (the next segment),
 * snap.write, snap.sync (fsync), snap.rename, snap.dirsync. ERR: EIO,
 * ENOSPC, or for writes "short" (half the bytes are written and the call
 * returns that) or "half" (half are written, then EIO). NULL or "" turns
 * it off. Resets the call counters. doved reads it from DOVE_FAULT at
 * start; in-process tests call it directly.
 * Returns 0 or -EINVAL (message in err).
 */
int store_fault_configure(const char *spec, char *err, size_t errlen);

/* ---- write-ahead log ------------------------------------------------------ */

/*
 * The log is a sequence of epochs (one group commit each) in segment files
 * wal-<first epoch, 20 digits>.log of segment_bytes, preallocated. Every
 * record gets an LSN; LSNs and epochs are contiguous from 1. Byte format:
 * docs/wal-format.md.
 *
 * Threads: any number of threads may call store_wal_append and
 * store_wal_wait at once; a committer thread owned by the WAL seals the
 * open epoch as soon as the previous commit is done (smart batching),
 * writes it with one pwrite and fdatasyncs it. store_wal_retire,
 * store_wal_close: one thread, not concurrently with each other.
 */
typedef struct store_wal store_wal;

struct store_wal_config {
	const char *dir;
	uint64_t segment_bytes;   /* file size; >= max_epoch_bytes + 112 */
	uint32_t max_epoch_bytes; /* records per epoch, bytes; also the
				     backpressure point for appenders */
	uint32_t max_delay_us;    /* wait this long for more records before
				     sealing an epoch; 0 = never wait */
	bool fsync;               /* false: benchmarks only, logs a warning */
};

/* One record to append, or one read back (data then points into the
 * reader's buffer). */
struct store_wal_record {
	uint16_t type; /* not 0; meaning belongs to the caller */
	uint32_t len;
	const void *data;
};

/* One epoch as read back; payload valid until the callback returns. */
struct store_wal_epoch {
	uint64_t epoch, first_lsn, time_ns;
	uint32_t count, length;
	const unsigned char *payload;
	const char *file; /* segment path */
	uint64_t offset;  /* of the epoch header in the file */
};

/* Records of an epoch, in order: set *off = 0, call until false. */
bool store_wal_record_next(const struct store_wal_epoch *ep, size_t *off,
			   struct store_wal_record *rec);

/* What a scan of the log found. */
struct store_wal_scan {
	uint32_t segments;
	uint64_t first_epoch, last_epoch; /* 0, 0 when the log is empty */
	uint64_t next_epoch, next_lsn;    /* what the next commit gets */
	uint64_t epochs, records, bytes;
	/* 0: clean end; 1: torn tail (never answered: cut by open);
	 * -DOVE_ECORRUPT: corruption, nothing may be trusted after it. */
	int status;
	char file[PATH_MAX]; /* where the scan stopped (torn / corrupt) */
	uint64_t offset;
	uint64_t epoch;      /* the epoch expected there */
	char reason[256];
	/* Where the valid log ends: the segment (with a valid header) and
	 * the offset right after its last valid epoch. "" when no segment. */
	char end_file[PATH_MAX];
	uint64_t end_offset;
};

/*
 * Read and validate every epoch of the log in dir, in order (the oldest
 * segment may start after epoch 1 once older ones were retired; the caller
 * checks that a snapshot covers what is missing), calling fn
 * (if not NULL) for each epoch >= from_epoch; a non-zero return from fn
 * stops the scan and is returned. Changes nothing on disk. Returns 0 when
 * the scan completed (see scan->status for a torn tail or corruption) or
 * -errno for an I/O error (scan->reason says which file).
 */
int store_wal_scan(const char *dir, uint64_t from_epoch,
		   int (*fn)(void *arg, const struct store_wal_epoch *ep),
		   void *arg, struct store_wal_scan *scan);

/*
 * A follower of the log (the MariaDB projection's): reads durable epochs
 * in order from from_epoch on, segment after segment, as they are
 * written. It never looks past the epoch the caller says is durable, so
 * it never meets a half-written one. -ENOENT: from_epoch is not in the
 * log (retired, or not written yet).
 */
typedef struct store_wal_reader store_wal_reader;
int store_wal_reader_open(const char *dir, uint64_t from_epoch,
			  store_wal_reader **out);
/* Epochs next .. until, each validated (checksum, numbering), to fn (a
 * non-zero return stops and is returned). Returns how many were read, or
 * -errno / -DOVE_ECORRUPT. */
int store_wal_reader_read(store_wal_reader *r, uint64_t until,
			  int (*fn)(void *arg, const struct store_wal_epoch *ep),
			  void *arg);
void store_wal_reader_close(store_wal_reader *r);

/*
 * Open the log in cfg->dir (created if missing): recover (scan; a torn
 * tail is cut off and logged, corruption refuses with file, offset and
 * epoch in err and changes nothing), prepare the segments, start the
 * committer. *scan (optional) receives what recovery found. Returns 0,
 * -DOVE_ECORRUPT, -EINVAL (config) or -errno.
 */
int store_wal_open(const struct store_wal_config *cfg, store_wal **out,
		   struct store_wal_scan *scan, char *err, size_t errlen);

/* Commit what is pending, stop the committer, close. */
void store_wal_close(store_wal *w);

/*
 * Append n records to the open epoch; they are committed together, in
 * order. *batch receives the ticket to wait for; the records' LSNs are
 * first_lsn + i once store_wal_wait reports it. Blocks while the open
 * epoch is full (backpressure). Returns 0, -EINVAL (a record larger than
 * an epoch, type 0) or -DOVE_EPOISONED.
 */
int store_wal_append(store_wal *w, const struct store_wal_record *recs,
		     uint32_t n, uint64_t *batch);

/*
 * Wait until batch is durable (0; *epoch and *first_lsn set) or failed:
 * -ENOSPC / -EIO (not written; nothing acknowledged may be assumed; later
 * appends may succeed once space returns) or -DOVE_EPOISONED (fdatasync
 * failed: the WAL accepts nothing more). epoch/first_lsn may be NULL.
 */
int store_wal_wait(store_wal *w, uint64_t batch, uint64_t *epoch,
		   uint64_t *first_lsn);

/*
 * For event loops: an eventfd (non-blocking, close-on-exec) that becomes
 * readable after every commit outcome; read it to clear, then ask
 * store_wal_poll about the batches you wait for. Owned by the WAL.
 */
int store_wal_event_fd(store_wal *w);

/* store_wal_wait without waiting: -EAGAIN while batch is not done. */
int store_wal_poll(store_wal *w, uint64_t batch, uint64_t *epoch,
		   uint64_t *first_lsn);

/* The newest durable epoch, recovered ones included (0: empty log). Any
 * thread. */
uint64_t store_wal_durable_epoch(store_wal *w);

/*
 * Delete whole segments every epoch of which is below low_water; never
 * the segment holding low_water, nor the one being written. Returns the
 * number deleted or -errno.
 */
int store_wal_retire(store_wal *w, uint64_t low_water);

#define STORE_WAL_HIST 40
struct store_wal_stats {
	uint64_t epochs, records, bytes; /* committed since open */
	uint64_t commit_ns_total, commit_ns_max;
	/* commit_hist[i]: commits (write + fdatasync) that took
	 * [2^i, 2^(i+1)) ns. */
	uint64_t commit_hist[STORE_WAL_HIST];
	uint64_t failed_commits;
	bool poisoned;   /* a failed fdatasync: nothing more is accepted */
	char error[256]; /* the last failed commit's reason ("" if none);
			    once poisoned, the poisoning one */
	uint32_t segments;
};

/* The q-quantile (0..1) of a log2 histogram, as the upper bound of its
 * bucket (so it errs high, never low). 0 when empty. */
uint64_t store_hist_quantile(const uint64_t *hist, int buckets, double q);
void store_wal_stats_get(store_wal *w, struct store_wal_stats *st);

/* ---- snapshots ------------------------------------------------------------ */

/*
 * A snapshot is the ledger and the idempotency window as of the end of an
 * epoch: dir/snap-<epoch, 20 digits>.snap, written to a temporary file,
 * fsynced, renamed, directory fsynced. Byte format: docs/snapshot-format.md.
 * Body: `accounts` struct settle_account records (64 bytes), then `ids`
 * struct settle_seq_id records (24 bytes), oldest first, then the
 * caller's extra section (opaque here: peak and the hot set). Version 1
 * files (no extra section) still load.
 */
#define STORE_SNAP_VERSION 2u

typedef struct store_snap_writer store_snap_writer;

/* Start a snapshot of the state after `epoch`. One writer per process at a
 * time (it uses a static buffer: safe in a forked child). 0 or -errno. */
int store_snap_begin(const char *dir, uint64_t epoch, uint64_t next_lsn,
		     store_snap_writer **out);
/* Append body bytes (all accounts, then all ids, then the extra
 * section). 0 or -errno. */
int store_snap_put(store_snap_writer *w, const void *data, size_t len);
/* Finish: counts into the header, checksums, fsync, rename, fsync dir.
 * On failure the temporary file is removed. 0 or -errno. */
int store_snap_commit(store_snap_writer *w, uint64_t accounts, uint64_t ids,
		      uint64_t extra_bytes);
/* Give up: remove the temporary file. */
void store_snap_abort(store_snap_writer *w);

/* A loaded snapshot (read-only mapping). */
struct store_snap {
	uint64_t epoch, next_lsn;
	uint64_t accounts, ids;
	const void *account_data; /* accounts x 64 bytes */
	const void *id_data;      /* ids x 24 bytes */
	const void *extra_data;   /* extra_bytes (0 in version 1 files) */
	uint64_t extra_bytes;
	char path[PATH_MAX];
	void *map;
	size_t map_len;
};

/*
 * Map the newest valid snapshot in dir. An invalid one (torn, checksum,
 * foreign version) is skipped with a warning naming it and the next older
 * one is tried. Returns 1 when one was loaded, 0 when there is none (or
 * the directory does not exist), -errno on an I/O error.
 */
int store_snap_load_newest(const char *dir, struct store_snap *out);
/* The same among those of epoch <= max_epoch. */
int store_snap_load_upto(const char *dir, uint64_t max_epoch,
			 struct store_snap *out);
void store_snap_release(struct store_snap *s);

/* The whole settlement state (ledger, settled ids, peak, hot set, open
 * buffers) of q and l as of epoch, as one snapshot file. 0 or -errno.
 * Only static buffers and system calls: safe in a forked child. */
int store_snap_write_state(const char *dir, uint64_t epoch, uint64_t next_lsn,
			   const settle_seq *q, const settle_ledger *l);
/* Put a loaded snapshot into an empty sequencer and ledger. 0, -ENOSPC
 * (it does not fit their capacities) or -EINVAL (malformed). */
int store_snap_restore(const struct store_snap *snap, settle_seq *q,
		       settle_ledger *l);

/* Delete all but the `keep` newest snapshots and the newest one of epoch
 * <= base (what a projection at epoch base rebuilds from; UINT64_MAX:
 * none besides). Returns how many were deleted. */
int store_snap_prune(const char *dir, uint32_t keep, uint64_t base);
/* The epoch of the oldest snapshot file (by name), 0 if none. */
uint64_t store_snap_oldest(const char *dir);
/* The epoch of the newest snapshot file at or below max_epoch (by name),
 * 0 if none. */
uint64_t store_snap_newest_upto(const char *dir, uint64_t max_epoch);

/* ---- the MariaDB projection (store/mariadb.c) ------------------------------ */

#define STORE_HOSTS_MAX 8

struct store_mariadb_config {
	char hosts[2048];      /* "host:port,unix:/path", failover order */
	char user[256], password[256], database[256];
	int connect_timeout_s, read_timeout_s, write_timeout_s;
	uint64_t batch_max_rows;
	char wal_dir[PATH_MAX], snapshot_dir[PATH_MAX];
	uint32_t accounts_max, dedup_window, hot_max; /* the replica's room */
	uint64_t start_epoch; /* the log is executed through here at start */
};

struct store_projection_host {
	char name[256];
	char state[16];  /* standby, active, failed, refused, stopped */
	char error[512]; /* the last failure, naming what failed */
	uint64_t applied_epoch; /* as last seen on it */
};

struct store_projection_verify {
	uint64_t done;  /* the request it answers (store_projection_verify) */
	uint64_t epoch; /* compared as of this epoch */
	bool ran, ok;
	uint64_t account_rows, ledger_accounts, transfer_rows,
		transfers_logged, differences;
	char first[512]; /* the first difference, or why it could not run */
};

struct store_projection_stats {
	uint32_t nhosts, active;
	bool connected;
	uint64_t applied_epoch, target_epoch;
	uint64_t transactions, transfers, account_rows, failures;
	uint64_t hot_account_rows; /* balance rows of hot accounts written */
	uint64_t verify_asked;
	struct store_projection_verify verify;
	struct store_projection_host hosts[STORE_HOSTS_MAX];
};

typedef struct store_projection store_projection;

/*
 * Start the writer thread. It connects to the first host that answers,
 * creates or migrates the schema (refusing a newer one), reads the host's
 * applied_epoch, rebuilds its replica of the ledger there (snapshot at or
 * below it + the log) and projects every epoch after it, in transactions
 * that move applied_epoch. A failing host (connection, timeout, a refused
 * write, read-only) is left for the next; nothing here ever blocks the
 * caller. Returns 0 or -errno (nothing started).
 */
int store_projection_start(const struct store_mariadb_config *cfg,
			   store_projection **out);
void store_projection_stop(store_projection *p);
/* The log is durable and executed through epoch: project up to it. */
void store_projection_advance(store_projection *p, uint64_t epoch);
/* Go back to the first host (it stays on the current one otherwise). */
void store_projection_failback(store_projection *p);
/* Ask for a comparison of MariaDB with the replica (at applied_epoch);
 * returns the request number that stats.verify.done reaches when done. */
uint64_t store_projection_verify(store_projection *p);
void store_projection_stats_get(store_projection *p,
				struct store_projection_stats *st);
/* Epochs every host has (the active one's applied_epoch). */
uint64_t store_projection_applied(store_projection *p);
/* The snapshot the projection may still have to rebuild from (0: none):
 * the log after it must be kept. The newest at or below applied_epoch,
 * or with more than one host the one before it — the other master is
 * behind by its replication lag and needs a snapshot at or below its
 * own applied_epoch and the log after it. */
uint64_t store_projection_keep_from(store_projection *p);

#endif /* STORE_H */
