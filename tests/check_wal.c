/*
 * check_wal.c - the write-ahead log: round trips across segments, a torn
 * tail at every sector of the last epoch, damage that no tear explains
 * (cut short, flipped, zeroed, a lost newest segment), flipped bits, gaps, foreign
 * versions, injected I/O faults (failed write, failed fdatasync, full
 * disk), concurrent appenders, retention, and a crash test that kills a
 * real appending process with SIGKILL at least 50 times.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dove.h"
#include "harness.h"
#include "settle.h"
#include "store.h"
#include "store_int.h"

static char dir[128];

static void
setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/dove-wal-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void
teardown(void)
{
	char cmd[192];
	if (getenv("DOVE_KEEP_TMP"))
		return; /* debugging: leave the log for a look */
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
}

static struct store_wal_config
small_cfg(void)
{
	/* Small segments so a few hundred epochs span several files. */
	return (struct store_wal_config){ .dir = dir,
					  .segment_bytes = 16384,
					  .max_epoch_bytes = 4096,
					  .fsync = true };
}

static store_wal *
wal_open_ok(const struct store_wal_config *cfg, struct store_wal_scan *scan)
{
	store_wal *w;
	char err[1024];
	int rc = store_wal_open(cfg, &w, scan, err, sizeof(err));
	ck_assert_msg(rc == 0, "open: %s", err);
	return w;
}

/* Deterministic record i of batch k: type and bytes derived from both. */
static uint32_t
rec_len(uint64_t k, uint32_t i)
{
	return (uint32_t)((k * 131 + i * 17) % 300);
}

static void
rec_fill(unsigned char *buf, uint64_t k, uint32_t i, uint32_t len)
{
	for (uint32_t b = 0; b < len; b++)
		buf[b] = (unsigned char)(k * 7 + i * 13 + b);
}

static uint32_t
batch_size(uint64_t k)
{
	return (uint32_t)(k % 5) + 1;
}

/* Append batch k (batch_size(k) records) and wait; returns the epoch. */
static uint64_t
append_batch(store_wal *w, uint64_t k, int *rc_out)
{
	struct store_wal_record recs[8];
	static unsigned char data[8][512];
	uint32_t n = batch_size(k);
	for (uint32_t i = 0; i < n; i++) {
		recs[i].type = (uint16_t)(1 + (k + i) % 7);
		recs[i].len = rec_len(k, i);
		rec_fill(data[i], k, i, recs[i].len);
		recs[i].data = data[i];
	}
	uint64_t batch, epoch = 0;
	int rc = store_wal_append(w, recs, n, &batch);
	if (rc == 0)
		rc = store_wal_wait(w, batch, &epoch, NULL);
	if (rc_out)
		*rc_out = rc;
	else
		ck_assert_msg(rc == 0, "batch %" PRIu64 ": %s", k,
			      dove_strerror(rc));
	return epoch;
}

/* Check that epoch ep holds exactly batch k. */
static bool
epoch_is_batch(const struct store_wal_epoch *ep, uint64_t k)
{
	size_t off = 0;
	struct store_wal_record r;
	uint32_t i = 0;
	unsigned char want[512];
	while (store_wal_record_next(ep, &off, &r)) {
		if (i >= batch_size(k) || r.type != 1 + (k + i) % 7 ||
		    r.len != rec_len(k, i))
			return false;
		rec_fill(want, k, i, r.len);
		if (memcmp(r.data, want, r.len) != 0)
			return false;
		i++;
	}
	return i == batch_size(k) && ep->count == i;
}

#define UNKNOWN UINT64_MAX

/* Scan callback: epoch e must hold batch map[e] (unless UNKNOWN). */
struct expect {
	uint64_t *batch_of_epoch; /* index: epoch */
	uint64_t max_epoch;
	uint64_t seen;
};

static int
check_epoch(void *arg, const struct store_wal_epoch *ep)
{
	struct expect *x = arg;
	if (ep->epoch > x->max_epoch ||
	    x->batch_of_epoch[ep->epoch] == UNKNOWN)
		return 0; /* not something we were told about */
	if (!epoch_is_batch(ep, x->batch_of_epoch[ep->epoch]))
		return 1000 + (int)ep->epoch;
	x->seen++;
	return 0;
}

/* ---- crc ------------------------------------------------------------------ */

START_TEST(crc32c_known_and_hw_matches_sw)
{
	ck_assert_uint_eq(store_crc32c(0, "123456789", 9), 0xe3069283u);
	ck_assert_uint_eq(store_crc32c_sw(0, "123456789", 9), 0xe3069283u);
	unsigned char buf[1000];
	unsigned seed = 7;
	for (int round = 0; round < 200; round++) {
		size_t n = (size_t)(rand_r(&seed) % sizeof(buf));
		for (size_t i = 0; i < n; i++)
			buf[i] = (unsigned char)rand_r(&seed);
		ck_assert_uint_eq(store_crc32c(5, buf, n),
				  store_crc32c_sw(5, buf, n));
	}
}
END_TEST

/* ---- round trip ----------------------------------------------------------- */

START_TEST(round_trip_across_segments)
{
	struct store_wal_config cfg = small_cfg();
	struct store_wal_scan scan;
	store_wal *w = wal_open_ok(&cfg, &scan);
	ck_assert_uint_eq(scan.next_epoch, 1);
	static uint64_t map[2000];
	uint64_t lsn = 1;
	for (uint64_t k = 0; k < 400; k++) {
		uint64_t e = append_batch(w, k, NULL);
		ck_assert_uint_eq(e, k + 1); /* one batch per epoch, in order */
		map[e] = k;
		lsn += batch_size(k);
	}
	struct store_wal_stats st;
	store_wal_stats_get(w, &st);
	ck_assert_uint_gt(st.segments, 3);
	store_wal_close(w);

	struct expect x = { map, 400, 0 };
	ck_assert_int_eq(store_wal_scan(dir, 1, check_epoch, &x, &scan), 0);
	ck_assert_int_eq(scan.status, 0);
	ck_assert_uint_eq(x.seen, 400);
	ck_assert_uint_eq(scan.next_epoch, 401);
	ck_assert_uint_eq(scan.next_lsn, lsn);

	/* Reopen: recovery finds everything and appends continue. */
	w = wal_open_ok(&cfg, &scan);
	ck_assert_uint_eq(scan.next_epoch, 401);
	ck_assert_int_eq(scan.status, 0);
	for (uint64_t k = 400; k < 450; k++)
		map[append_batch(w, k, NULL)] = k;
	store_wal_close(w);
	x = (struct expect){ map, 450, 0 };
	ck_assert_int_eq(store_wal_scan(dir, 1, check_epoch, &x, &scan), 0);
	ck_assert_uint_eq(x.seen, 450);
}
END_TEST

START_TEST(append_rejects_bad_records)
{
	struct store_wal_config cfg = small_cfg();
	store_wal *w = wal_open_ok(&cfg, NULL);
	uint64_t b;
	static unsigned char big[8192];
	/* Tried: type 0, and a record larger than an epoch. */
	struct store_wal_record r = { .type = 0, .len = 4, .data = "abcd" };
	ck_assert_int_eq(store_wal_append(w, &r, 1, &b), -EINVAL);
	r = (struct store_wal_record){ .type = 1, .len = 5000, .data = big };
	ck_assert_int_eq(store_wal_append(w, &r, 1, &b), -EINVAL);
	store_wal_close(w);
	struct store_wal_scan scan;
	ck_assert_int_eq(store_wal_scan(dir, 1, NULL, NULL, &scan), 0);
	ck_assert_uint_eq(scan.epochs, 0);
}
END_TEST

START_TEST(config_rejects_small_segments)
{
	struct store_wal_config cfg = small_cfg();
	cfg.segment_bytes = 4096; /* cannot hold a 4096-byte epoch */
	store_wal *w;
	char err[512];
	ck_assert_int_eq(store_wal_open(&cfg, &w, NULL, err, sizeof(err)),
			 -EINVAL);
	ck_assert_msg(strstr(err, "segment_bytes"), "%s", err);
}
END_TEST

/* ---- building damaged logs ---------------------------------------------- */

/* Scan callback: where does epoch `epoch` start? */
struct epoch_at {
	uint64_t epoch, offset;
	char file[PATH_MAX];
};

static int
find_epoch(void *arg, const struct store_wal_epoch *ep)
{
	struct epoch_at *f = arg;
	if (ep->epoch == f->epoch) {
		f->offset = ep->offset;
		snprintf(f->file, sizeof(f->file), "%s", ep->file);
	}
	return 0;
}

/* Write n batches (one epoch each), close, and scan the log into *scan:
 * it must hold epochs 1..n in at least min_segments files. */
static void
write_log(uint64_t n, uint32_t min_segments, struct store_wal_scan *scan)
{
	struct store_wal_config cfg = small_cfg();
	store_wal *w = wal_open_ok(&cfg, NULL);
	for (uint64_t k = 0; k < n; k++)
		append_batch(w, k, NULL);
	store_wal_close(w);
	ck_assert_int_eq(store_wal_scan(dir, 1, NULL, NULL, scan), 0);
	ck_assert_uint_eq(scan->last_epoch, n);
	ck_assert_uint_ge(scan->segments, min_segments);
}

/* Write n batches (one epoch each) and return where epoch n starts and
 * ends in its segment file (path). */
static void
make_log(uint64_t n, char *path, size_t pathlen, uint64_t *last_start,
	 uint64_t *last_end)
{
	struct store_wal_scan scan;
	write_log(n, 1, &scan);
	snprintf(path, pathlen, "%s", scan.end_file);
	*last_end = scan.end_offset;
	/* Find the start of the last epoch: scan again. */
	struct epoch_at f = { n, 0, "" };
	ck_assert_int_eq(store_wal_scan(dir, n, find_epoch, &f, &scan), 0);
	*last_start = f.offset;
	ck_assert_uint_gt(*last_end, *last_start);
}

static void
flip_bit(const char *path, uint64_t off, int bit)
{
	int fd = open(path, O_RDWR);
	ck_assert_int_ge(fd, 0);
	unsigned char b;
	ck_assert_int_eq(pread(fd, &b, 1, (off_t)off), 1);
	b ^= (unsigned char)(1u << bit);
	ck_assert_int_eq(pwrite(fd, &b, 1, (off_t)off), 1);
	close(fd);
}

static size_t
file_bytes(const char *path, unsigned char *buf, size_t size)
{
	int fd = open(path, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	ssize_t n = pread(fd, buf, size, 0);
	close(fd);
	ck_assert_int_ge(n, 0);
	return (size_t)n;
}

/* Zero [from, to) of path: what a write that never landed leaves in a
 * preallocated segment. */
static void
zero_range(const char *path, uint64_t from, uint64_t to)
{
	int fd = open(path, O_RDWR);
	ck_assert_int_ge(fd, 0);
	static const unsigned char zeros[65536];
	ck_assert_uint_le(to - from, sizeof(zeros));
	ck_assert_int_eq(pwrite(fd, zeros, to - from, (off_t)from),
			 (ssize_t)(to - from));
	close(fd);
}

/* Open must refuse the log, name path at offset off, change nothing. */
static void
open_refuses(const char *path, uint64_t off, const char *needle)
{
	static unsigned char before[65536], after[65536];
	size_t nb = file_bytes(path, before, sizeof(before));
	store_wal *w;
	char err[1024];
	struct store_wal_config cfg = small_cfg();
	ck_assert_int_eq(store_wal_open(&cfg, &w, NULL, err, sizeof(err)),
			 -DOVE_ECORRUPT);
	char want[PATH_MAX + 64];
	snprintf(want, sizeof(want), "%s at byte offset %" PRIu64, path, off);
	ck_assert_msg(strstr(err, want), "want '%s' in: %s", want, err);
	ck_assert_msg(strstr(err, needle), "want '%s' in: %s", needle, err);
	size_t na = file_bytes(path, after, sizeof(after));
	ck_assert_uint_eq(na, nb);
	ck_assert_int_eq(memcmp(before, after, nb), 0);
}

/* A crash mid-write: every sector of the last epoch from some sector on
 * never landed (zeros), or one sector inside it did not. Recovery
 * returns exactly the complete epochs and reports the cut. */
START_TEST(torn_tail_every_sector)
{
	char path[PATH_MAX];
	uint64_t start, end;
	make_log(12, path, sizeof(path), &start, &end);
	char saved[PATH_MAX + 16];
	snprintf(saved, sizeof(saved), "%s.orig", path);
	char cmd[2 * PATH_MAX + 32];
	snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", path, saved);
	ck_assert_int_eq(system(cmd), 0);
	static uint64_t map[20];
	for (uint64_t e = 1; e <= 12; e++)
		map[e] = e - 1;
	ck_assert_uint_gt(end - start, WAL_SECTOR); /* spans sectors */

	/* Cuts: each sector boundary inside the epoch (the rest zeros),
	 * then each single sector missing with the ones after it written. */
	uint64_t first = start - start % WAL_SECTOR;
	int cases = 0;
	for (int hole = 0; hole < 2; hole++) {
		for (uint64_t sec = first; sec < end; sec += WAL_SECTOR) {
			snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", saved, path);
			ck_assert_int_eq(system(cmd), 0);
			uint64_t from = sec < start ? start : sec;
			uint64_t to = hole ? (sec + WAL_SECTOR < end ? sec + WAL_SECTOR : end)
					   : end;
			zero_range(path, from, to);
			struct store_wal_config cfg = small_cfg();
			struct store_wal_scan scan;
			store_wal *w = wal_open_ok(&cfg, &scan);
			/* The whole epoch gone is a clean end. */
			ck_assert_int_eq(scan.status,
					 from == start && to == end ? 0 : 1);
			ck_assert_uint_eq(scan.last_epoch, 11);
			if (scan.status == 1) {
				ck_assert_uint_eq(scan.offset, start);
				ck_assert_str_eq(scan.file, path);
			}
			/* Appends go on from epoch 12, and survive another
			 * recovery. */
			ck_assert_uint_eq(append_batch(w, 11, NULL), 12);
			store_wal_close(w);
			struct expect x = { map, 12, 0 };
			ck_assert_int_eq(store_wal_scan(dir, 1, check_epoch, &x, &scan),
					 0);
			ck_assert_int_eq(scan.status, 0);
			ck_assert_uint_eq(x.seen, 12);
			cases++;
		}
	}
	ck_assert_int_ge(cases, 4);
	unlink(saved);
}
END_TEST

/* Regression (issue 13): a segment cut short inside its last epoch was
 * taken for a torn tail and the acknowledged epoch dropped. Segments are
 * preallocated and never shrink, so a short one is damage: refused at
 * every offset inside the last epoch, nothing changed. */
START_TEST(cut_short_segment_is_refused)
{
	char path[PATH_MAX];
	uint64_t start, end;
	make_log(12, path, sizeof(path), &start, &end);
	for (uint64_t cut = start; cut < end; cut += 7) {
		ck_assert_int_eq(truncate(path, (off_t)cut), 0);
		open_refuses(path, cut, "it was cut short");
	}
}
END_TEST

/* Regression (issue 13): damage inside the last acknowledged epoch that
 * no torn write can make — a flipped byte (header or records), 100 bytes
 * zeroed inside written sectors — was cut as a torn tail. */
START_TEST(damage_in_last_epoch_is_refused)
{
	char path[PATH_MAX];
	uint64_t start, end;
	make_log(12, path, sizeof(path), &start, &end);
	char saved[PATH_MAX + 16], cmd[2 * PATH_MAX + 32];
	snprintf(saved, sizeof(saved), "%s.orig", path);
	snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", path, saved);
	ck_assert_int_eq(system(cmd), 0);
	/* Tried: one bit flipped at every 5th byte of the epoch. */
	for (uint64_t off = start; off < end; off += 5) {
		snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", saved, path);
		ck_assert_int_eq(system(cmd), 0);
		flip_bit(path, off, (int)(off % 8));
		open_refuses(path, start, "not torn");
	}
	/* Tried: 100 bytes zeroed, starting inside the header and at 40
	 * bytes into the records (each inside written sectors). */
	uint64_t at[] = { start + 4, start + 88 };
	for (int i = 0; i < 2; i++) {
		snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", saved, path);
		ck_assert_int_eq(system(cmd), 0);
		ck_assert_uint_lt(at[i] + 100, end);
		zero_range(path, at[i], at[i] + 100);
		open_refuses(path, start, "not torn");
	}
	unlink(saved);
}
END_TEST

/* Regression (issue 13): the newest segment deleted or emptied after a
 * crash looked like the end of the log: recovery said ok and answered
 * epochs were gone. A rolled segment seals the one before it, and the
 * log's anchor outlives its segments. */
START_TEST(lost_newest_segment_is_refused)
{
	struct store_wal_config cfg = small_cfg();
	store_wal *w;
	struct store_wal_scan scan;
	write_log(60, 3, &scan);
	char newest[PATH_MAX], cmd[2 * PATH_MAX + 64], out[256];
	snprintf(newest, sizeof(newest), "%s", scan.end_file);
	snprintf(cmd, sizeof(cmd), "cp '%s' '%s.orig'", newest, newest);
	ck_assert_int_eq(system(cmd), 0);

	/* Tried: the newest segment emptied (truncated to 0 bytes). */
	ck_assert_int_eq(truncate(newest, 0), 0);
	char err[1024];
	ck_assert_int_eq(store_wal_open(&cfg, &w, NULL, err, sizeof(err)),
			 -DOVE_ECORRUPT);
	ck_assert_msg(strstr(err, newest) && strstr(err, "the file is empty"),
		      "%s", err);

	/* Tried: the newest segment deleted. The one before it was sealed. */
	ck_assert_int_eq(unlink(newest), 0);
	ck_assert_int_eq(store_wal_open(&cfg, &w, NULL, err, sizeof(err)),
			 -DOVE_ECORRUPT);
	const char *name = strrchr(newest, '/') + 1;
	ck_assert_msg(strstr(err, "was sealed") && strstr(err, name) &&
			      strstr(err, "which is missing"),
		      "%s", err);
	/* dove-wal verify says the same and exits 1. */
	snprintf(cmd, sizeof(cmd), "%s verify %s 2>&1", DOVE_WAL_PATH, dir);
	static char vout[65536];
	ck_assert_int_eq(dh_run(cmd, vout, sizeof(vout)), 1);
	ck_assert_msg(strstr(vout, "which is missing"), "%s", vout);

	/* Tried: every segment deleted (the anchor stays). */
	snprintf(cmd, sizeof(cmd), "rm %s/wal-*.log", dir);
	ck_assert_int_eq(system(cmd), 0);
	ck_assert_int_eq(store_wal_open(&cfg, &w, NULL, err, sizeof(err)),
			 -DOVE_ECORRUPT);
	ck_assert_msg(strstr(err, "no segment file left"), "%s", err);
	snprintf(cmd, sizeof(cmd), "ls %s | grep -c 'wal-.*\\.log$' || true", dir);
	dh_run(cmd, out, sizeof(out));
	ck_assert_int_eq(atoi(out), 0); /* nothing was created */
}
END_TEST

START_TEST(flipped_bit_in_middle_is_refused)
{
	char path[PATH_MAX];
	uint64_t start, end;
	make_log(12, path, sizeof(path), &start, &end);
	/* Epoch 2 is in the first segment, with valid epochs after it. */
	struct store_wal_scan scan;
	struct epoch_at f = { 2, 0, "" };
	ck_assert_int_eq(store_wal_scan(dir, 1, find_epoch, &f, &scan), 0);
	flip_bit(f.file, f.offset + 60, 3); /* inside its payload */

	static unsigned char before[65536], after[65536];
	size_t nb = file_bytes(f.file, before, sizeof(before));
	store_wal *w;
	char err[1024];
	struct store_wal_config cfg = small_cfg();
	ck_assert_int_eq(store_wal_open(&cfg, &w, &scan, err, sizeof(err)),
			 -DOVE_ECORRUPT);
	char want[PATH_MAX + 64];
	snprintf(want, sizeof(want), "%s at byte offset %" PRIu64, f.file,
		 f.offset);
	ck_assert_msg(strstr(err, want), "%s", err);
	ck_assert_msg(strstr(err, "expected epoch 2"), "%s", err);
	/* Nothing changed on disk. */
	size_t na = file_bytes(f.file, after, sizeof(after));
	ck_assert_uint_eq(na, nb);
	ck_assert_int_eq(memcmp(before, after, nb), 0);
}
END_TEST

/* Rewrite the header of the epoch at off in path with epoch number e
 * (checksum fixed, so only the number is wrong). */
static void
renumber_epoch(const char *path, uint64_t off, uint64_t e)
{
	int fd = open(path, O_RDWR);
	struct wal_epoch_header h;
	ck_assert_int_eq(pread(fd, &h, sizeof(h), (off_t)off), sizeof(h));
	unsigned char *payload = malloc(h.length);
	ck_assert_int_eq(pread(fd, payload, h.length, (off_t)(off + sizeof(h))),
			 (ssize_t)h.length);
	h.epoch = e;
	h.crc = 0;
	uint32_t crc = store_crc32c(0, payload, h.length);
	h.crc = store_crc32c(crc, &h, sizeof(h));
	ck_assert_int_eq(pwrite(fd, &h, sizeof(h), (off_t)off), sizeof(h));
	free(payload);
	close(fd);
}

START_TEST(epoch_gap_is_refused)
{
	char path[PATH_MAX];
	uint64_t start, end;
	make_log(12, path, sizeof(path), &start, &end);
	renumber_epoch(path, start, 14); /* 11 then 14: 12, 13 missing */
	struct store_wal_config cfg = small_cfg();
	store_wal *w;
	char err[1024];
	ck_assert_int_eq(store_wal_open(&cfg, &w, NULL, err, sizeof(err)),
			 -DOVE_ECORRUPT);
	ck_assert_msg(strstr(err, "found epoch 14") &&
			      strstr(err, "expected epoch 12"),
		      "%s", err);
}
END_TEST

START_TEST(missing_segment_is_refused)
{
	struct store_wal_config cfg = small_cfg();
	store_wal *w;
	struct store_wal_scan scan;
	write_log(200, 3, &scan);
	/* Remove the second segment file. */
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "rm \"$(ls %s/wal-*.log | sed -n 2p)\"", dir);
	ck_assert_int_eq(system(cmd), 0);
	char err[1024];
	ck_assert_int_eq(store_wal_open(&cfg, &w, NULL, err, sizeof(err)),
			 -DOVE_ECORRUPT);
	ck_assert_msg(strstr(err, "epochs are missing"), "%s", err);
}
END_TEST

START_TEST(foreign_version_segment_is_refused)
{
	char path[PATH_MAX];
	uint64_t start, end;
	make_log(3, path, sizeof(path), &start, &end);
	int fd = open(path, O_RDWR);
	struct wal_seg_header sh;
	ck_assert_int_eq(pread(fd, &sh, sizeof(sh), 0), sizeof(sh));
	sh.version = 2;
	sh.crc = 0;
	sh.crc = store_crc32c(0, &sh, sizeof(sh));
	ck_assert_int_eq(pwrite(fd, &sh, sizeof(sh), 0), sizeof(sh));
	close(fd);
	struct store_wal_config cfg = small_cfg();
	store_wal *w;
	char err[1024];
	ck_assert_int_eq(store_wal_open(&cfg, &w, NULL, err, sizeof(err)),
			 -DOVE_ECORRUPT);
	ck_assert_msg(strstr(err, "format version 2") && strstr(err, path),
		      "%s", err);
}
END_TEST

/* ---- injected faults ------------------------------------------------------ */

/* The storage layer's own fault switch (store/io.c), as doved's
 * DOVE_FAULT sets it; counted from the moment it is set. */
static void
fault(const char *spec)
{
	char err[512];
	ck_assert_msg(store_fault_configure(spec, err, sizeof(err)) == 0, "%s", err);
}

/* Fail the Nth write, for N over the first epochs: that batch fails,
 * every other is durable, and the log stays contiguous. */
START_TEST(failed_write_loses_only_that_batch)
{
	struct store_wal_config cfg = small_cfg();
	store_wal *w = wal_open_ok(&cfg, NULL);
	/* Half of the epoch reaches the file, then the device fails. */
	char spec[64];
	snprintf(spec, sizeof(spec), "wal.write:%d:half", _i + 1);
	fault(spec);
	static uint64_t map[100];
	uint64_t next_epoch = 1;
	int failures = 0;
	for (uint64_t k = 0; k < 30; k++) {
		int rc;
		uint64_t e = append_batch(w, k, &rc);
		if (rc != 0) {
			ck_assert_int_eq(rc, -EIO);
			failures++;
			continue;
		}
		ck_assert_uint_eq(e, next_epoch); /* numbers are reused */
		map[e] = k;
		next_epoch++;
	}
	ck_assert_int_eq(failures, 1);
	store_wal_close(w);
	fault(NULL);
	struct store_wal_scan scan;
	w = wal_open_ok(&cfg, &scan);
	store_wal_close(w);
	struct expect x = { map, next_epoch - 1, 0 };
	ck_assert_int_eq(store_wal_scan(dir, 1, check_epoch, &x, &scan), 0);
	ck_assert_int_eq(scan.status, 0);
	ck_assert_uint_eq(x.seen, next_epoch - 1);
}
END_TEST

START_TEST(failed_fsync_poisons)
{
	struct store_wal_config cfg = small_cfg();
	store_wal *w = wal_open_ok(&cfg, NULL);
	fault("wal.sync:4:EIO"); /* epoch 4's */
	for (uint64_t k = 0; k < 3; k++)
		ck_assert_uint_eq(append_batch(w, k, NULL), k + 1);
	int rc;
	append_batch(w, 3, &rc);
	ck_assert_int_eq(rc, -DOVE_EPOISONED);
	/* Poisoned for good: no retry of the fsync, nothing accepted. */
	uint64_t b;
	struct store_wal_record r = { .type = 1, .len = 1, .data = "x" };
	ck_assert_int_eq(store_wal_append(w, &r, 1, &b), -DOVE_EPOISONED);
	store_wal_close(w);
	fault(NULL);
	/* Recovery keeps the three acknowledged epochs. */
	struct store_wal_scan scan;
	w = wal_open_ok(&cfg, &scan);
	ck_assert_uint_ge(scan.last_epoch, 3);
	store_wal_close(w);
}
END_TEST

START_TEST(full_disk_then_space_returns)
{
	struct store_wal_config cfg = small_cfg();
	store_wal *w = wal_open_ok(&cfg, NULL);
	static uint64_t map[1000];
	uint64_t k = 0, acked = 0;
	/* The disk fills: no new segment can be preallocated. */
	fault("wal.fallocate:1+:ENOSPC");
	int rc = 0;
	for (; k < 500; k++) {
		uint64_t e = append_batch(w, k, &rc);
		if (rc != 0)
			break;
		map[e] = k;
		acked = e;
	}
	ck_assert_msg(rc == -ENOSPC, "rc %d after %" PRIu64 " batches", rc, k);
	ck_assert_uint_gt(acked, 0);
	/* Still full: still refused, nothing acknowledged. */
	append_batch(w, k, &rc);
	ck_assert_int_eq(rc, -ENOSPC);
	/* Space returns: appends resume where the log ended. */
	fault(NULL);
	uint64_t e = append_batch(w, k, NULL);
	ck_assert_uint_eq(e, acked + 1);
	map[e] = k;
	store_wal_close(w);
	struct store_wal_scan scan;
	struct expect x = { map, e, 0 };
	ck_assert_int_eq(store_wal_scan(dir, 1, check_epoch, &x, &scan), 0);
	ck_assert_int_eq(scan.status, 0);
	ck_assert_uint_eq(x.seen, e);
}
END_TEST

/* ---- concurrency and retention ------------------------------------------ */

struct appender {
	store_wal *w;
	uint32_t id;
	uint32_t batches;
};

static void *
appender_main(void *arg)
{
	struct appender *a = arg;
	for (uint32_t b = 0; b < a->batches; b++) {
		uint64_t v[3] = { a->id, b, 0 }, batch;
		struct store_wal_record r[2] = {
			{ .type = 1, .len = 16, .data = v },
			{ .type = 2, .len = 24, .data = v },
		};
		if (store_wal_append(a->w, r, 2, &batch) != 0 ||
		    store_wal_wait(a->w, batch, NULL, NULL) != 0)
			return (void *)1;
	}
	return NULL;
}

struct seen {
	uint32_t next[4]; /* next expected batch per appender */
	uint64_t records;
	bool bad;
};

static int
count_records(void *arg, const struct store_wal_epoch *ep)
{
	struct seen *s = arg;
	size_t off = 0;
	struct store_wal_record r;
	while (store_wal_record_next(ep, &off, &r)) {
		uint64_t v[2];
		memcpy(v, r.data, 16);
		/* Each appender's batches appear whole and in order. */
		if (v[0] >= 4 || (r.type == 1 && v[1] != s->next[v[0]]))
			s->bad = true;
		if (r.type == 2)
			s->next[v[0]]++;
		s->records++;
	}
	return 0;
}

START_TEST(concurrent_appenders)
{
	struct store_wal_config cfg = small_cfg();
	cfg.segment_bytes = 1 << 20;
	cfg.max_epoch_bytes = 65536;
	store_wal *w = wal_open_ok(&cfg, NULL);
	struct appender a[4];
	pthread_t t[4];
	for (uint32_t i = 0; i < 4; i++) {
		a[i] = (struct appender){ w, i, 2000 };
		ck_assert_int_eq(pthread_create(&t[i], NULL, appender_main, &a[i]),
				 0);
	}
	for (int i = 0; i < 4; i++) {
		void *r;
		pthread_join(t[i], &r);
		ck_assert_ptr_null(r);
	}
	store_wal_close(w);
	struct seen s = { { 0 }, 0, false };
	struct store_wal_scan scan;
	ck_assert_int_eq(store_wal_scan(dir, 1, count_records, &s, &scan), 0);
	ck_assert(!s.bad);
	ck_assert_uint_eq(s.records, 4 * 2000 * 2);
	for (int i = 0; i < 4; i++)
		ck_assert_uint_eq(s.next[i], 2000);
	/* Group commit happened: fewer epochs than batches. */
	ck_assert_uint_lt(scan.epochs, 8000);
}
END_TEST

START_TEST(retire_deletes_whole_segments_below)
{
	struct store_wal_config cfg = small_cfg();
	store_wal *w = wal_open_ok(&cfg, NULL);
	for (uint64_t k = 0; k < 300; k++)
		append_batch(w, k, NULL);
	struct store_wal_scan scan;
	ck_assert_int_eq(store_wal_scan(dir, 1, NULL, NULL, &scan), 0);
	uint32_t before = scan.segments;
	ck_assert_uint_ge(before, 4);
	struct epoch_at f = { 150, 0, "" };
	ck_assert_int_eq(store_wal_scan(dir, 1, find_epoch, &f, &scan), 0);

	/* Low water 150: every segment whose epochs are all below 150 goes;
	 * the one holding 150 stays. */
	int deleted = store_wal_retire(w, 150);
	ck_assert_int_gt(deleted, 0);
	ck_assert_int_eq(access(f.file, F_OK), 0);
	char first[PATH_MAX];
	snprintf(first, sizeof(first), "%s/wal-%020d.log", dir, 1);
	ck_assert_int_ne(access(first, F_OK), 0);
	/* Retiring everything keeps the segment being written. */
	ck_assert_int_ge(store_wal_retire(w, UINT64_MAX), 0);
	append_batch(w, 300, NULL);
	store_wal_close(w);
	char cmd[256], out[64];
	snprintf(cmd, sizeof(cmd), "ls %s/wal-*.log | wc -l", dir);
	dh_run(cmd, out, sizeof(out));
	ck_assert_int_eq(atoi(out), 1);
}
END_TEST

/* ---- crash test with real processes ------------------------------------ */

/* Child: open (recovering), append batches from k0 on, report (epoch, k)
 * for each durable one, until killed. */
static void
crash_child(int wfd, uint64_t k0)
{
	struct store_wal_config cfg = small_cfg();
	cfg.segment_bytes = 65536;
	store_wal *w;
	char err[1024];
	if (store_wal_open(&cfg, &w, NULL, err, sizeof(err)) != 0) {
		fprintf(stderr, "child: %s\n", err);
		_exit(3);
	}
	for (uint64_t k = k0;; k++) {
		int rc;
		uint64_t e = append_batch(w, k, &rc);
		if (rc != 0)
			_exit(4);
		uint64_t msg[2] = { e, k };
		if (write(wfd, msg, sizeof(msg)) != sizeof(msg))
			_exit(5);
	}
}

START_TEST(crash_sigkill_loses_nothing_acknowledged)
{
	enum { KILLS = 60 };
	static uint64_t map[200000];
	for (size_t i = 0; i < 200000; i++)
		map[i] = UNKNOWN;
	uint64_t max_epoch = 0, k = 0, reported = 0;
	unsigned seed = 99;
	for (int kill_no = 0; kill_no < KILLS; kill_no++) {
		int fds[2];
		ck_assert_int_eq(pipe(fds), 0);
		pid_t pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			close(fds[0]);
			crash_child(fds[1], k);
		}
		close(fds[1]);
		/* Let it run 10-60 ms (sanitizer builds start slowly), then
		 * SIGKILL. */
		usleep(10000 + (useconds_t)(rand_r(&seed) % 50000));
		kill(pid, SIGKILL);
		int st;
		ck_assert_int_eq(waitpid(pid, &st, 0), pid);
		ck_assert_msg(WIFSIGNALED(st), "child exited %d: recovery "
					       "failed in the child",
			      WEXITSTATUS(st));
		uint64_t msg[2];
		while (read(fds[0], msg, sizeof(msg)) == sizeof(msg)) {
			ck_assert_uint_lt(msg[0], 200000);
			map[msg[0]] = msg[1];
			reported++;
			if (msg[0] > max_epoch)
				max_epoch = msg[0];
			k = msg[1] + 1;
		}
		close(fds[0]);
		/* Every reported epoch is there, byte for byte. */
		struct expect x = { map, max_epoch, 0 };
		struct store_wal_scan scan;
		ck_assert_int_eq(store_wal_scan(dir, 1, check_epoch, &x, &scan),
				 0);
		ck_assert_msg(scan.status >= 0, "%s at %s:%llu", scan.reason,
			      scan.file, (unsigned long long)scan.offset);
		ck_assert_uint_ge(scan.last_epoch, max_epoch);
		/* (An epoch made durable but killed before it was reported
		 * is fine: nobody was told; it stays UNKNOWN.) */
		ck_assert_uint_eq(x.seen, reported);
	}
	ck_assert_msg(max_epoch > KILLS, "only %llu epochs in %d lives",
		      (unsigned long long)max_epoch, KILLS);
}
END_TEST

/* ---- dove-wal ------------------------------------------------------------ */

START_TEST(dove_wal_cli)
{
	char path[PATH_MAX];
	uint64_t start, end;
	make_log(12, path, sizeof(path), &start, &end);
	char cmd[512], out[65536];

	snprintf(cmd, sizeof(cmd), "%s verify %s 2>&1", DOVE_WAL_PATH, dir);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 0);
	ck_assert_msg(strstr(out, "epochs 1..12") && strstr(out, "ok\n"), "%s",
		      out);
	snprintf(cmd, sizeof(cmd), "%s stat %s 2>&1", DOVE_WAL_PATH, dir);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 0);
	ck_assert_msg(strstr(out, "epochs        12 (1..12)"), "%s", out);
	snprintf(cmd, sizeof(cmd), "%s dump %s --from 3 --count 2 2>&1",
		 DOVE_WAL_PATH, dir);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 0);
	ck_assert_msg(strncmp(out, "epoch 3 ", 8) == 0 && strstr(out, "\nepoch 4 ") &&
			      !strstr(out, "epoch 5 "),
		      "%s", out);

	/* A torn tail (its last sector never written): reported, and
	 * sound (exit 0). */
	zero_range(path, end - 1 - (end - 1) % WAL_SECTOR, end);
	snprintf(cmd, sizeof(cmd), "%s verify %s 2>&1", DOVE_WAL_PATH, dir);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 0);
	char want[PATH_MAX + 64];
	snprintf(want, sizeof(want), "torn tail: %s at byte offset %" PRIu64,
		 path, start);
	ck_assert_msg(strstr(out, want), "%s", out);

	/* A flipped bit in the middle: corrupt (exit 1), offset named. */
	struct epoch_at f = { 5, 0, "" };
	struct store_wal_scan scan;
	ck_assert_int_eq(store_wal_scan(dir, 1, find_epoch, &f, &scan), 0);
	flip_bit(f.file, f.offset + 70, 1);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 1);
	snprintf(want, sizeof(want), "CORRUPT: %s at byte offset %" PRIu64,
		 f.file, f.offset);
	ck_assert_msg(strstr(out, want) && strstr(out, "expected epoch 5"),
		      "%s", out);

	/* Usage and a missing directory. */
	snprintf(cmd, sizeof(cmd), "%s frob %s 2>&1", DOVE_WAL_PATH, dir);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 2);
	snprintf(cmd, sizeof(cmd), "%s verify /nonexistent/wal 2>&1",
		 DOVE_WAL_PATH);
	ck_assert_int_eq(dh_run(cmd, out, sizeof(out)), 2);
	ck_assert_msg(strstr(out, "ENOENT"), "%s", out);
}
END_TEST

/* ---- snapshot files ---------------------------------------------------- */

static void
write_snap(uint64_t epoch, uint32_t accounts, uint32_t ids)
{
	store_snap_writer *w;
	ck_assert_int_eq(store_snap_begin(dir, epoch, epoch * 10, &w), 0);
	for (uint32_t i = 0; i < accounts; i++) {
		struct settle_account a = { .id = i + 1, .flags = i % 2,
					    .credits_posted = epoch * 1000 + i };
		ck_assert_int_eq(store_snap_put(w, &a, sizeof(a)), 0);
	}
	for (uint32_t i = 0; i < ids; i++) {
		struct settle_seq_id e = { 100 + i, 7, (epoch << 8) | 0 };
		ck_assert_int_eq(store_snap_put(w, &e, sizeof(e)), 0);
	}
	ck_assert_int_eq(store_snap_commit(w, accounts, ids, 0), 0);
}

START_TEST(snapshot_round_trip_fallback_prune)
{
	struct store_snap sn;
	ck_assert_int_eq(store_snap_load_newest(dir, &sn), 0); /* none */
	write_snap(5, 3, 2);
	write_snap(9, 40000, 1000); /* more than one write buffer */
	ck_assert_int_eq(store_snap_load_newest(dir, &sn), 1);
	ck_assert_uint_eq(sn.epoch, 9);
	ck_assert_uint_eq(sn.next_lsn, 90);
	ck_assert_uint_eq(sn.accounts, 40000);
	ck_assert_uint_eq(sn.ids, 1000);
	struct settle_account a;
	memcpy(&a, (const char *)sn.account_data + 39999 * sizeof(a), sizeof(a));
	ck_assert(a.id == 40000 && a.credits_posted == 9000 + 39999);
	struct settle_seq_id e;
	memcpy(&e, (const char *)sn.id_data + 999 * sizeof(e), sizeof(e));
	ck_assert_uint_eq(e.id, 1099);
	store_snap_release(&sn);

	/* Tried: the newest one torn (cut short): the older one loads. */
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/snap-%020d.snap", dir, 9);
	ck_assert_int_eq(truncate(path, 4096), 0);
	ck_assert_int_eq(store_snap_load_newest(dir, &sn), 1);
	ck_assert_uint_eq(sn.epoch, 5);
	ck_assert_uint_eq(sn.accounts, 3);
	store_snap_release(&sn);

	write_snap(12, 1, 0);
	write_snap(15, 1, 0);
	/* A projection at epoch 6 rebuilds from 5: it stays with the two
	 * newest, 9 goes. */
	ck_assert_int_eq(store_snap_prune(dir, 2, 6), 1);
	ck_assert_uint_eq(store_snap_newest_upto(dir, 6), 5);
	ck_assert_int_eq(store_snap_load_upto(dir, 14, &sn), 1);
	ck_assert_uint_eq(sn.epoch, 12);
	store_snap_release(&sn);
	ck_assert_int_eq(store_snap_prune(dir, 2, UINT64_MAX), 1); /* 5 goes */
	ck_assert_uint_eq(store_snap_newest_upto(dir, 6), 0);
	ck_assert_int_eq(store_snap_load_newest(dir, &sn), 1);
	ck_assert_uint_eq(sn.epoch, 15);
	store_snap_release(&sn);
	snprintf(path, sizeof(path), "%s/snap-%020d.snap", dir, 12);
	ck_assert_int_eq(access(path, F_OK), 0);
}
END_TEST

START_TEST(hist_quantiles)
{
	uint64_t h[STORE_WAL_HIST] = { 0 };
	ck_assert_uint_eq(store_hist_quantile(h, STORE_WAL_HIST, 0.5), 0);
	h[10] = 99; /* [1024, 2048) */
	h[20] = 1;  /* [1 Mi, 2 Mi) */
	ck_assert_uint_eq(store_hist_quantile(h, STORE_WAL_HIST, 0.5), 2048);
	ck_assert_uint_eq(store_hist_quantile(h, STORE_WAL_HIST, 0.98), 2048);
	ck_assert_uint_eq(store_hist_quantile(h, STORE_WAL_HIST, 0.995),
			  2u << 20);
	/* The WAL fills it: after commits, the buckets add up. */
	struct store_wal_config cfg = small_cfg();
	store_wal *w = wal_open_ok(&cfg, NULL);
	for (uint64_t k = 0; k < 20; k++)
		append_batch(w, k, NULL);
	struct store_wal_stats st;
	store_wal_stats_get(w, &st);
	uint64_t n = 0;
	for (int i = 0; i < STORE_WAL_HIST; i++)
		n += st.commit_hist[i];
	ck_assert_uint_eq(n, st.epochs);
	ck_assert_uint_eq(st.epochs, 20);
	ck_assert_uint_ge(store_hist_quantile(st.commit_hist, STORE_WAL_HIST, 0.99),
			  store_hist_quantile(st.commit_hist, STORE_WAL_HIST, 0.5));
	store_wal_close(w);
}
END_TEST

static Suite *
wal_suite(void)
{
	Suite *s = suite_create("wal");
	TCase *tc = tcase_create("basics");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, crc32c_known_and_hw_matches_sw);
	tcase_add_test(tc, round_trip_across_segments);
	tcase_add_test(tc, append_rejects_bad_records);
	tcase_add_test(tc, config_rejects_small_segments);
	tcase_add_test(tc, concurrent_appenders);
	tcase_add_test(tc, retire_deletes_whole_segments_below);
	tcase_add_test(tc, snapshot_round_trip_fallback_prune);
	tcase_add_test(tc, hist_quantiles);
	suite_add_tcase(s, tc);

	tc = tcase_create("damage");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, torn_tail_every_sector);
	tcase_add_test(tc, cut_short_segment_is_refused);
	tcase_add_test(tc, damage_in_last_epoch_is_refused);
	tcase_add_test(tc, lost_newest_segment_is_refused);
	tcase_add_test(tc, flipped_bit_in_middle_is_refused);
	tcase_add_test(tc, epoch_gap_is_refused);
	tcase_add_test(tc, missing_segment_is_refused);
	tcase_add_test(tc, foreign_version_segment_is_refused);
	suite_add_tcase(s, tc);

	tc = tcase_create("faults");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, failed_write_loses_only_that_batch, 0, 6);
	tcase_add_test(tc, failed_fsync_poisons);
	tcase_add_test(tc, full_disk_then_space_returns);
	suite_add_tcase(s, tc);

	tc = tcase_create("tool");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, dove_wal_cli);
	suite_add_tcase(s, tc);

	tc = tcase_create("crash");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, crash_sigkill_loses_nothing_acknowledged);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	/* Recovery warns about every torn tail the tests make on purpose. */
	dove_log_set_level(DOVE_LOG_ERROR);
	return dh_run_suite(wal_suite());
}
