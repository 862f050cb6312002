/*
 * wal.c - the write-ahead log: segment files of checksummed epochs, one
 * group commit per epoch, exact recovery, retention.
 *
 * Appenders copy records into the open epoch buffer under a mutex (once
 * per batch of records, never per message); the committer thread seals the
 * buffer the moment the previous commit has finished (smart batching: no
 * timer), swaps in the second buffer, writes the sealed epoch with one
 * pwrite and fdatasyncs it. So appends proceed while a commit is on disk,
 * and an epoch is as large as what arrived during the last commit.
 *
 * Epoch numbers and LSNs are assigned at seal time: an epoch whose write
 * fails (ENOSPC, EIO) is reported failed to its appenders and its number
 * is reused, so the log stays contiguous. A failed fdatasync poisons the
 * WAL for good: the page cache may have dropped the data, so nothing can
 * be acknowledged any more and nothing retries the fsync.
 *
 * It must never acknowledge a batch before its fdatasync has returned, and
 * never treat a half-written epoch as valid.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dove.h"
#include "store.h"
#include "store_int.h"

#define SEG_PREFIX "wal-"
#define SEG_SUFFIX ".log"
#define NEXT_NAME "wal-next.tmp"
/* Outcomes of the last batches; a waiter older than this is refused. */
#define OUTCOMES 4096

/* ---- segment files ---------------------------------------------------- */

struct seg {
	uint64_t first_epoch;
	char path[PATH_MAX];
};

static int
seg_cmp(const void *a, const void *b)
{
	const struct seg *x = a, *y = b;
	return x->first_epoch < y->first_epoch ? -1
					       : x->first_epoch > y->first_epoch;
}

/* List the segment files of dir, sorted. *out is malloc'd. */
static int
seg_list(const char *dir, struct seg **out, uint32_t *count)
{
	DIR *d = opendir(dir);
	if (d == NULL)
		return -errno;
	struct seg *v = NULL;
	uint32_t n = 0, cap = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		size_t len = strlen(e->d_name);
		if (len != strlen(SEG_PREFIX) + 20 + strlen(SEG_SUFFIX) ||
		    strncmp(e->d_name, SEG_PREFIX, strlen(SEG_PREFIX)) != 0 ||
		    strcmp(e->d_name + len - strlen(SEG_SUFFIX), SEG_SUFFIX) != 0)
			continue;
		char *end;
		uint64_t first = strtoull(e->d_name + strlen(SEG_PREFIX), &end,
					  10);
		if (end != e->d_name + strlen(SEG_PREFIX) + 20)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			struct seg *nv = realloc(v, cap * sizeof(*v));
			DOVE_ASSERT(nv != NULL);
			v = nv;
		}
		v[n].first_epoch = first;
		snprintf(v[n].path, sizeof(v[n].path), "%s/%s", dir, e->d_name);
		n++;
	}
	closedir(d);
	if (n > 0)
		qsort(v, n, sizeof(*v), seg_cmp);
	*out = v;
	*count = n;
	return 0;
}


/*
 * Map a segment read-only. mmap, not read: a segment is mostly
 * preallocated zeros, and recovery would otherwise copy 64 MiB per file
 * (twice per start: recovery, then replay). Release with unmap_file.
 */
static int
read_file(const char *path, unsigned char **buf, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int rc = -errno;
		close(fd);
		return rc;
	}
	size_t n = (size_t)st.st_size;
	void *p = n ? mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
	int rc = p == MAP_FAILED ? -errno : 0;
	close(fd);
	if (rc != 0)
		return rc;
	*buf = p;
	*len = n;
	return 0;
}

static void
unmap_file(unsigned char *buf, size_t len)
{
	if (buf != NULL)
		munmap(buf, len);
}

static bool
seg_header_valid(const unsigned char *buf, size_t n, struct wal_seg_header *h)
{
	if (n < sizeof(*h))
		return false;
	memcpy(h, buf, sizeof(*h));
	if (h->magic != WAL_SEG_MAGIC)
		return false;
	uint32_t crc = h->crc;
	struct wal_seg_header tmp = *h;
	tmp.crc = 0;
	return store_crc32c(0, &tmp, sizeof(tmp)) == crc;
}

/* ---- epochs ------------------------------------------------------------- */

/*
 * Is there a structurally valid epoch at off (magic, version, sizes, records
 * adding up, checksum)? Says nothing about its number. Everything here is
 * data from disk: checked, never asserted.
 */
static bool
epoch_valid(const unsigned char *buf, size_t n, size_t off,
	    struct wal_epoch_header *h, const char **why)
{
	*why = "truncated header";
	if (off + sizeof(*h) > n)
		return false;
	memcpy(h, buf + off, sizeof(*h));
	*why = "bad magic";
	if (h->magic != WAL_EPOCH_MAGIC)
		return false;
	*why = "unknown epoch format version";
	if (h->version != WAL_FORMAT_VERSION)
		return false;
	*why = "length runs past the end of the segment";
	if (h->length > n - off - sizeof(*h) || h->length % 8 != 0)
		return false;
	*why = "checksum mismatch";
	/* Payload first, then the header with crc = 0: appenders checksum
	 * the payload as they copy it in, off the commit path. */
	struct wal_epoch_header tmp = *h;
	tmp.crc = 0;
	uint32_t crc = store_crc32c(0, buf + off + sizeof(*h), h->length);
	crc = store_crc32c(crc, &tmp, sizeof(tmp));
	if (crc != h->crc)
		return false;
	/* Checksummed, but do the records add up? (A writer bug, not a
	 * disk error; still refused.) */
	*why = "records do not add up to the epoch length";
	const unsigned char *p = buf + off + sizeof(*h);
	size_t pos = 0;
	uint32_t count = 0;
	while (pos < h->length) {
		struct wal_record_header rh;
		if (h->length - pos < sizeof(rh))
			return false;
		memcpy(&rh, p + pos, sizeof(rh));
		if (rh.type == 0 ||
		    WAL_ALIGN((size_t)rh.len) > h->length - pos - sizeof(rh))
			return false;
		pos += sizeof(rh) + WAL_ALIGN((size_t)rh.len);
		count++;
	}
	return count == h->count;
}

bool
store_wal_record_next(const struct store_wal_epoch *ep, size_t *off,
		      struct store_wal_record *rec)
{
	if (*off >= ep->length)
		return false;
	struct wal_record_header rh;
	memcpy(&rh, ep->payload + *off, sizeof(rh));
	/* Validated by the scan before the epoch was handed out. */
	DOVE_ASSERT(rh.type != 0);
	DOVE_ASSERT(*off + sizeof(rh) + rh.len <= ep->length);
	rec->type = rh.type;
	rec->len = rh.len;
	rec->data = ep->payload + *off + sizeof(rh);
	*off += sizeof(rh) + WAL_ALIGN((size_t)rh.len);
	return true;
}

/* ---- torn writes and damage -------------------------------------------- */

/*
 * A crash during a write leaves each sector of it either written or as it
 * was; in a preallocated segment "as it was" reads as zeros. So a torn
 * epoch always shows a sector whose part inside the epoch is all zeros,
 * and damage (a flipped byte, bytes zeroed inside a sector, a file cut
 * short) does not. That is how recovery tells an epoch that was never
 * acknowledged from one that was (issue 13): CRC alone cannot.
 */
static bool
all_zero(const unsigned char *buf, size_t from, size_t to)
{
	for (size_t p = from; p < to; p++)
		if (buf[p] != 0)
			return false;
	return true;
}

/* Is there a sector whose part inside [from, to) is all zeros? */
static bool
zero_sector_in(const unsigned char *buf, size_t from, size_t to)
{
	for (size_t sec = from - from % WAL_SECTOR; sec < to; sec += WAL_SECTOR) {
		size_t a = sec < from ? from : sec;
		size_t b = sec + WAL_SECTOR < to ? sec + WAL_SECTOR : to;
		if (all_zero(buf, a, b))
			return true;
	}
	return false;
}

/*
 * The epoch at off is not valid and does not start with zeros. Can a
 * write cut short by a crash explain it? *why says what was seen, for
 * the log line either way. Data from disk: checked, never asserted.
 */
static bool
torn_explains(const unsigned char *buf, size_t n, size_t off, const char **why)
{
	struct wal_epoch_header h;
	size_t hend = off + sizeof(h);
	if (hend > n) {
		*why = "a partial epoch header at the end of the segment";
		return zero_sector_in(buf, off, n);
	}
	if (zero_sector_in(buf, off, hend)) {
		*why = "epoch header partly written";
		return true;
	}
	memcpy(&h, buf + off, sizeof(h));
	if (h.magic != WAL_EPOCH_MAGIC || h.version != WAL_FORMAT_VERSION ||
	    h.length % 8 != 0 || h.length > n - hend) {
		*why = "a written epoch header that is not valid (damaged, "
		       "not torn)";
		return false;
	}
	size_t end = hend + h.length, pos = hend;
	uint32_t count = 0;
	while (pos < end) {
		struct wal_record_header rh;
		if (end - pos < sizeof(rh))
			break;
		memcpy(&rh, buf + pos, sizeof(rh));
		if (rh.type == 0 && rh.flags == 0 && rh.len == 0) {
			/* The records stop: unwritten only if the whole
			 * sector (its part in this epoch) is zeros. */
			size_t sec = pos - pos % WAL_SECTOR;
			size_t a = sec < off ? off : sec;
			size_t b = sec + WAL_SECTOR < end ? sec + WAL_SECTOR : end;
			if (all_zero(buf, a, b)) {
				*why = "its records end in a sector never "
				       "written";
				return true;
			}
			*why = "zeros inside a written sector (damaged, not "
			       "torn)";
			return false;
		}
		if (rh.type == 0 ||
		    WAL_ALIGN((size_t)rh.len) > end - pos - sizeof(rh)) {
			*why = "a damaged record header (not torn)";
			return false;
		}
		pos += sizeof(rh) + WAL_ALIGN((size_t)rh.len);
		count++;
	}
	if (pos != end || count != h.count) {
		*why = "records that do not match a written header (damaged, "
		       "not torn)";
		return false;
	}
	if (zero_sector_in(buf, hend, end)) {
		*why = "a sector of its records never written";
		return true;
	}
	*why = "checksum mismatch on an epoch written whole (damaged after "
	       "it was written, not torn)";
	return false;
}

/* A seal's CRC: over its 48 bytes with crc = 0. */
static uint32_t
seal_crc(const struct wal_epoch_header *h)
{
	struct wal_epoch_header tmp = *h;
	tmp.crc = 0;
	return store_crc32c(0, &tmp, sizeof(tmp));
}

/* A valid seal at off (its numbers unchecked)? */
static bool
seal_valid(const unsigned char *buf, size_t n, size_t off,
	   struct wal_epoch_header *h)
{
	if (off + sizeof(*h) > n)
		return false;
	memcpy(h, buf + off, sizeof(*h));
	if (h->magic != WAL_SEAL_MAGIC || h->version != WAL_FORMAT_VERSION ||
	    h->count != 0 || h->length != 0)
		return false;
	return seal_crc(h) == h->crc;
}

static bool
anchor_exists(const char *dir, char *path, size_t size)
{
	snprintf(path, size, "%s/" WAL_ANCHOR_NAME, dir);
	return access(path, F_OK) == 0;
}

/* ---- scan --------------------------------------------------------------- */

/* Anything valid at or after off in buf, or in a later segment? */
static bool
valid_data_after(const unsigned char *buf, size_t n, size_t off,
		 const struct seg *segs, uint32_t nsegs, uint32_t si)
{
	struct wal_epoch_header h;
	const char *why;
	for (size_t p = WAL_ALIGN(off); p + sizeof(h) <= n; p += 8)
		if (memcmp(buf + p, &(uint32_t){ WAL_EPOCH_MAGIC }, 4) == 0 &&
		    epoch_valid(buf, n, p, &h, &why))
			return true;
	for (uint32_t k = si + 1; k < nsegs; k++) {
		unsigned char *b;
		size_t len;
		struct wal_seg_header sh;
		if (read_file(segs[k].path, &b, &len) != 0)
			continue;
		bool any = seg_header_valid(b, len, &sh) &&
			   epoch_valid(b, len, sizeof(sh), &h, &why);
		unmap_file(b, len);
		if (any)
			return true;
	}
	return false;
}

/*
 * Where the valid log stops at off in segment si (buf, n): 0 a clean end
 * (zeros to the end of the segment; the next segment goes on), 1 a torn
 * tail (never acknowledged), -DOVE_ECORRUPT damage. *why comes in as the
 * epoch's own reason and says what was seen; *later, whether valid
 * epochs follow (then it is corruption whatever the bytes). Zeros (the preallocated rest)
 * end a segment cleanly; anything valid after a stop, or damage no torn
 * write can explain, is corruption. Later segments are read only when the
 * answer depends on them.
 */
static int
tail_status(const unsigned char *buf, size_t n, size_t off,
	    const struct seg *segs, uint32_t nsegs, uint32_t si,
	    const char **why, bool *later)
{
	*later = false;
	bool zeros = off + 48 > n || all_zero(buf, off, off + 48);
	if (zeros && all_zero(buf, off, n))
		return 0;
	*later = valid_data_after(buf, n, off + 8, NULL, 0, 0) ||
		 valid_data_after(NULL, 0, 0, segs, nsegs, si);
	if (*later)
		return -DOVE_ECORRUPT;
	if (!zeros)
		return torn_explains(buf, n, off, why) ? 1 : -DOVE_ECORRUPT;
	/* A zero header with bytes after it: a write whose first sector
	 * never landed -- unless the zeros stop inside that sector. */
	size_t sec_end = off - off % WAL_SECTOR + WAL_SECTOR;
	if (!all_zero(buf, off, sec_end < n ? sec_end : n)) {
		*why = "an epoch header zeroed inside a written sector "
		       "(damaged, not torn)";
		return -DOVE_ECORRUPT;
	}
	*why = "a write whose first sector never landed";
	return 1;
}

__attribute__((format(printf, 5, 6))) static void
scan_stop(struct store_wal_scan *s, int status, const char *file,
	  uint64_t offset, const char *fmt, ...)
{
	s->status = status;
	snprintf(s->file, sizeof(s->file), "%s", file);
	s->offset = offset;
	s->epoch = s->next_epoch;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->reason, sizeof(s->reason), fmt, ap);
	va_end(ap);
}

int
store_wal_scan(const char *dir, uint64_t from_epoch,
	       int (*fn)(void *arg, const struct store_wal_epoch *ep), void *arg,
	       struct store_wal_scan *s)
{
	DOVE_ASSERT(dir != NULL && s != NULL);
	memset(s, 0, sizeof(*s));
	s->next_epoch = 1;
	s->next_lsn = 1;
	struct seg *segs;
	uint32_t nsegs;
	int rc = seg_list(dir, &segs, &nsegs);
	if (rc != 0) {
		snprintf(s->reason, sizeof(s->reason), "%.200s: %s", dir,
			 dove_strerror(rc));
		return rc;
	}
	s->segments = nsegs;
	char anchor[PATH_MAX];
	if (nsegs == 0 && anchor_exists(dir, anchor, sizeof(anchor)))
		scan_stop(s, -DOVE_ECORRUPT, anchor, 0,
			  "the log has no segment file left, but %s says one "
			  "was written: its epochs are lost",
			  WAL_ANCHOR_NAME);

	for (uint32_t si = 0; si < nsegs && s->status == 0; si++) {
		unsigned char *buf;
		size_t n;
		rc = read_file(segs[si].path, &buf, &n);
		if (rc != 0) {
			snprintf(s->reason, sizeof(s->reason), "%.200s: %s",
				 segs[si].path, dove_strerror(rc));
			break;
		}
		struct wal_seg_header sh;
		if (!seg_header_valid(buf, n, &sh)) {
			/* A segment is renamed into place only after its
			 * header is durable, so no crash leaves one without
			 * it: this file was damaged (emptied, overwritten). */
			scan_stop(s, -DOVE_ECORRUPT, segs[si].path, 0,
				  "segment header is %s (a segment gets its "
				  "name only once its header is durable)",
				  n == 0 ? "missing: the file is empty"
					 : "damaged");
			unmap_file(buf, n);
			break;
		}
		if (sh.version != WAL_FORMAT_VERSION ||
		    sh.header_bytes != sizeof(sh)) {
			scan_stop(s, -DOVE_ECORRUPT, segs[si].path, 0,
				  "segment of format version %u (this doved "
				  "reads version %u)",
				  sh.version, WAL_FORMAT_VERSION);
			unmap_file(buf, n);
			break;
		}
		/* The first segment may start anywhere (older ones were
		 * retired behind a snapshot); every later one must continue
		 * the log exactly. */
		if (si == 0 && sh.first_epoch == segs[si].first_epoch) {
			s->next_epoch = sh.first_epoch;
			s->next_lsn = sh.first_lsn;
		}
		if (sh.first_epoch != segs[si].first_epoch ||
		    sh.first_epoch != s->next_epoch ||
		    sh.first_lsn != s->next_lsn) {
			scan_stop(s, -DOVE_ECORRUPT, segs[si].path, 0,
				  "segment starts at epoch %" PRIu64
				  " lsn %" PRIu64 " (name says epoch %" PRIu64
				  "), expected epoch %" PRIu64 " lsn %" PRIu64
				  ": epochs are missing",
				  sh.first_epoch, sh.first_lsn,
				  segs[si].first_epoch, s->next_epoch,
				  s->next_lsn);
			unmap_file(buf, n);
			break;
		}

		if (n < sh.segment_bytes) {
			/* Preallocated at creation, never shrunk: a crash
			 * cannot make a segment shorter. */
			scan_stop(s, -DOVE_ECORRUPT, segs[si].path, n,
				  "the file is %zu bytes but was made %" PRIu64
				  " bytes long: it was cut short",
				  n, sh.segment_bytes);
			unmap_file(buf, n);
			break;
		}
		size_t off = sizeof(sh);
		snprintf(s->end_file, sizeof(s->end_file), "%s", segs[si].path);
		s->end_offset = off;
		for (;;) {
			struct wal_epoch_header h;
			const char *why = "end of segment";
			bool ok = off + sizeof(h) <= n &&
				  epoch_valid(buf, n, off, &h, &why);
			if (ok && (h.epoch != s->next_epoch ||
				   h.first_lsn != s->next_lsn)) {
				scan_stop(s, -DOVE_ECORRUPT, segs[si].path, off,
					  "found epoch %" PRIu64 " lsn %" PRIu64
					  ", expected epoch %" PRIu64
					  " lsn %" PRIu64,
					  h.epoch, h.first_lsn, s->next_epoch,
					  s->next_lsn);
				break;
			}
			struct wal_epoch_header seal;
			if (!ok && seal_valid(buf, n, off, &seal)) {
				/* The writer moved on to the next segment:
				 * the log goes on there, or it was lost. */
				if (seal.epoch != s->next_epoch ||
				    seal.first_lsn != s->next_lsn)
					scan_stop(s, -DOVE_ECORRUPT,
						  segs[si].path, off,
						  "sealed at epoch %" PRIu64
						  " lsn %" PRIu64 ", expected "
						  "epoch %" PRIu64 " lsn %" PRIu64,
						  seal.epoch, seal.first_lsn,
						  s->next_epoch, s->next_lsn);
				else if (si + 1 == nsegs)
					scan_stop(s, -DOVE_ECORRUPT,
						  segs[si].path, off,
						  "this segment was sealed: the "
						  "log goes on at epoch %" PRIu64
						  " in " SEG_PREFIX "%020" PRIu64
						  SEG_SUFFIX ", which is missing",
						  seal.epoch, seal.epoch);
				break;
			}
			if (!ok) {
				bool later;
				int status = tail_status(buf, n, off, segs, nsegs,
							 si, &why, &later);
				if (status != 0)
					scan_stop(s, status, segs[si].path, off,
						  "%s%s", why,
						  later ? ", and valid epochs follow"
							: "");
				break;
			}
			if (h.epoch >= from_epoch && fn != NULL) {
				struct store_wal_epoch ep = {
					.epoch = h.epoch,
					.first_lsn = h.first_lsn,
					.time_ns = h.time_ns,
					.count = h.count,
					.length = h.length,
					.payload = buf + off + sizeof(h),
					.file = segs[si].path,
					.offset = off,
				};
				int r = fn(arg, &ep);
				if (r != 0) {
					unmap_file(buf, n);
					free(segs);
					return r;
				}
			}
			if (s->first_epoch == 0)
				s->first_epoch = h.epoch;
			s->last_epoch = h.epoch;
			s->epochs++;
			s->records += h.count;
			s->bytes += sizeof(h) + h.length;
			s->next_epoch = h.epoch + 1;
			s->next_lsn = h.first_lsn + h.count;
			off += sizeof(h) + h.length;
			s->end_offset = off;
		}
		unmap_file(buf, n);
	}
	free(segs);
	return rc;
}

/* ---- the follower: reading durable epochs as the log grows ---------------- */

struct store_wal_reader {
	char dir[PATH_MAX];
	int fd;           /* the segment being read, or -1 */
	uint64_t off;     /* where the next epoch header is */
	uint64_t next_epoch;
	unsigned char *buf;
	size_t cap;
};

/* Open the segment holding epoch `want` and position r at that epoch. */
static int
reader_seek(store_wal_reader *r, uint64_t want)
{
	struct seg *segs;
	uint32_t n;
	int rc = seg_list(r->dir, &segs, &n);
	if (rc != 0)
		return rc;
	int pick = -1;
	for (uint32_t i = 0; i < n; i++)
		if (segs[i].first_epoch <= want)
			pick = (int)i;
	if (pick < 0) {
		free(segs);
		return -ENOENT; /* retired, or never written */
	}
	if (r->fd >= 0)
		close(r->fd);
	r->fd = open(segs[pick].path, O_RDONLY | O_CLOEXEC);
	rc = r->fd < 0 ? -errno : 0;
	free(segs);
	if (rc != 0)
		return rc;
	struct wal_seg_header sh;
	if (pread(r->fd, &sh, sizeof(sh), 0) != (ssize_t)sizeof(sh) ||
	    !seg_header_valid((unsigned char *)&sh, sizeof(sh), &sh))
		return -DOVE_ECORRUPT;
	r->off = sizeof(sh);
	r->next_epoch = sh.first_epoch;
	/* Skip to want by headers only: what is skipped is not needed. */
	while (r->next_epoch < want) {
		struct wal_epoch_header h;
		if (pread(r->fd, &h, sizeof(h), (off_t)r->off) != (ssize_t)sizeof(h) ||
		    h.magic != WAL_EPOCH_MAGIC || h.epoch != r->next_epoch)
			return -ENOENT; /* not in this segment: not written yet */
		r->off += sizeof(h) + h.length;
		r->next_epoch++;
	}
	return 0;
}

int
store_wal_reader_open(const char *dir, uint64_t from_epoch,
		      store_wal_reader **out)
{
	store_wal_reader *r = calloc(1, sizeof(*r));
	if (r == NULL)
		return -ENOMEM;
	snprintf(r->dir, sizeof(r->dir), "%s", dir);
	r->fd = -1;
	int rc = reader_seek(r, from_epoch);
	if (rc != 0) {
		store_wal_reader_close(r);
		return rc;
	}
	*out = r;
	return 0;
}

void
store_wal_reader_close(store_wal_reader *r)
{
	if (r == NULL)
		return;
	if (r->fd >= 0)
		close(r->fd);
	free(r->buf);
	free(r);
}

int
store_wal_reader_read(store_wal_reader *r, uint64_t until,
		      int (*fn)(void *arg, const struct store_wal_epoch *ep),
		      void *arg)
{
	int done = 0;
	while (r->next_epoch <= until) {
		struct wal_epoch_header h;
		ssize_t got = pread(r->fd, &h, sizeof(h), (off_t)r->off);
		if (got != (ssize_t)sizeof(h) || h.magic != WAL_EPOCH_MAGIC) {
			/* The end of this segment: the epoch is durable, so
			 * the segment that starts with it exists. */
			int rc = reader_seek(r, r->next_epoch);
			if (rc != 0)
				return rc;
			continue;
		}
		size_t need = sizeof(h) + h.length;
		if (h.length > (64u << 20))
			return -DOVE_ECORRUPT;
		if (need > r->cap) {
			unsigned char *nb = realloc(r->buf, need);
			if (nb == NULL)
				return -ENOMEM;
			r->buf = nb;
			r->cap = need;
		}
		if (pread(r->fd, r->buf, need, (off_t)r->off) != (ssize_t)need)
			return -EIO;
		const char *why;
		struct wal_epoch_header v;
		if (!epoch_valid(r->buf, need, 0, &v, &why) ||
		    v.epoch != r->next_epoch)
			return -DOVE_ECORRUPT;
		struct store_wal_epoch ep = {
			.epoch = v.epoch, .first_lsn = v.first_lsn,
			.time_ns = v.time_ns, .count = v.count, .length = v.length,
			.payload = r->buf + sizeof(v), .file = r->dir,
			.offset = r->off,
		};
		int rc = fn(arg, &ep);
		if (rc != 0)
			return rc;
		r->off += need;
		r->next_epoch++;
		done++;
	}
	return done;
}

/* ---- the writer ----------------------------------------------------------- */

struct buf {
	unsigned char *data; /* epoch header space + records */
	size_t len;          /* bytes used, header included */
	uint32_t crc;        /* CRC-32C of the payload so far */
	uint32_t count;
	uint64_t batch;      /* ticket of this buffer's appenders */
};

struct outcome {
	uint64_t batch;
	int rc;
	uint64_t epoch, first_lsn;
};

/* Room for "/wal-<20 digits>.log" after the directory in a PATH_MAX. */
#define WAL_DIR_MAX (PATH_MAX - 64)

struct store_wal {
	struct store_wal_config cfg;
	char dir[WAL_DIR_MAX];

	pthread_mutex_t mu;
	pthread_cond_t has_data; /* committer waits for records */
	pthread_cond_t has_room; /* appenders wait for a free buffer */
	pthread_cond_t done;     /* waiters wait for outcomes */
	struct buf bufs[2];
	struct buf *open;        /* appenders fill this one */
	uint64_t done_batch;     /* every batch <= this has an outcome */
	uint64_t recovered_last; /* last epoch found by recovery */
	struct outcome outcomes[OUTCOMES];
	bool closing;
	bool poisoned;
	pthread_t committer;
	int event_fd;            /* written after every outcome */

	/* Committer thread only (after open). */
	int fd;                  /* current segment */
	uint64_t seg_off;        /* append offset in it */
	uint64_t next_epoch, next_lsn;
	int next_fd;             /* prepared wal-next.tmp, or -1 */
	char why[256];           /* why the last commit failed */
	struct store_wal_stats stats;
	struct seg *segs;        /* every segment, oldest first */
	uint32_t nsegs, segs_cap;
};

static int
io_pwrite_all(enum store_io_op op, int fd, const void *buf,
	      size_t n, off_t off)
{
	const unsigned char *p = buf;
	while (n > 0) {
		ssize_t r = store_io_pwrite(op, fd, p, n, off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -EIO;
		p += r;
		n -= (size_t)r;
		off += r;
	}
	return 0;
}

static int
io_sync(store_wal *w, enum store_io_op op, int fd)
{
	if (!w->cfg.fsync)
		return 0;
	return store_io_sync(op, fd, true) < 0 ? -errno : 0;
}

/*
 * A durability call failed: what it covered may or may not be on disk,
 * and a retry that succeeds proves nothing (the kernel may have dropped
 * the dirty pages: PostgreSQL's "fsyncgate"). So nothing more is ever
 * acknowledged; a restart recovers what is durable. Committer only.
 */
static int
poison(store_wal *w, int rc, const char *what)
{
	snprintf(w->why, sizeof(w->why), "%s failed: %s; the WAL is poisoned "
		 "and accepts nothing more (restart doved: recovery keeps "
		 "exactly what is durable)", what, dove_strerror(rc));
	DOVE_ERROR("wal: %s", w->why);
	return -DOVE_EPOISONED;
}

static int
fsync_dir(const char *dir)
{
	return store_io_fsync_dir(STORE_IO_WAL_DIRSYNC, dir);
}

static void
segs_push(store_wal *w, uint64_t first_epoch, const char *path)
{
	if (w->nsegs == w->segs_cap) {
		w->segs_cap = w->segs_cap ? w->segs_cap * 2 : 16;
		struct seg *nv = realloc(w->segs, w->segs_cap * sizeof(*nv));
		DOVE_ASSERT(nv != NULL);
		w->segs = nv;
	}
	w->segs[w->nsegs].first_epoch = first_epoch;
	snprintf(w->segs[w->nsegs].path, sizeof(w->segs[0].path), "%s", path);
	w->nsegs++;
}

/*
 * Prepare wal-next.tmp: create and preallocate it, so that a full disk is
 * found here, between epochs, and not in the middle of one. Committer
 * thread (or open). Returns 0 or -errno; on failure nothing is left.
 */
static int
prepare_next(store_wal *w)
{
	if (w->next_fd >= 0)
		return 0;
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/" NEXT_NAME, w->dir);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	if (store_io_fallocate(fd, (off_t)w->cfg.segment_bytes) < 0) {
		int rc = -errno;
		close(fd);
		unlink(path);
		return rc;
	}
	w->next_fd = fd;
	return 0;
}

/* Turn wal-next.tmp into the segment starting at next_epoch. */
static int
roll_segment(store_wal *w)
{
	int rc = prepare_next(w);
	if (rc != 0)
		return rc;
	struct wal_seg_header sh = {
		.magic = WAL_SEG_MAGIC,
		.version = WAL_FORMAT_VERSION,
		.header_bytes = sizeof(sh),
		.first_epoch = w->next_epoch,
		.first_lsn = w->next_lsn,
		.segment_bytes = w->cfg.segment_bytes,
		.created_ns = dove_clock_ns(CLOCK_REALTIME),
	};
	sh.crc = store_crc32c(0, &sh, sizeof(sh));
	rc = io_pwrite_all(STORE_IO_WAL_SEG_WRITE, w->next_fd, &sh, sizeof(sh), 0);
	if (rc != 0)
		return rc;
	if ((rc = io_sync(w, STORE_IO_WAL_SEG_SYNC, w->next_fd)) != 0)
		return poison(w, rc, "fdatasync of the next segment's header");
	char from[PATH_MAX], to[PATH_MAX];
	snprintf(from, sizeof(from), "%s/" NEXT_NAME, w->dir);
	snprintf(to, sizeof(to), "%s/" SEG_PREFIX "%020" PRIu64 SEG_SUFFIX,
		 w->dir, w->next_epoch);
	if (store_io_rename(STORE_IO_WAL_RENAME, from, to) < 0)
		return -errno; /* nothing changed: the next commit tries again */
	/* The rename must be durable before any epoch in it is acked. A
	 * failed directory fsync leaves it neither undone nor known to be
	 * durable (and wal-next.tmp is gone): as with a failed fdatasync,
	 * nothing more may be acknowledged. */
	if (w->cfg.fsync && (rc = fsync_dir(w->dir)) != 0)
		return poison(w, rc, "fsync of the WAL directory after a new segment");
	int old_fd = w->fd;
	uint64_t old_off = w->seg_off;
	w->fd = w->next_fd;
	w->next_fd = -1;
	w->seg_off = sizeof(sh);
	pthread_mutex_lock(&w->mu); /* store_wal_retire reads the list */
	segs_push(w, w->next_epoch, to);
	w->stats.segments = w->nsegs;
	pthread_mutex_unlock(&w->mu);
	if (old_fd < 0)
		return 0;
	/* Seal the previous segment (durable before any epoch of the new
	 * one is acknowledged): recovery then knows the log goes on, so a
	 * lost newest segment is refused rather than taken for the end. */
	struct wal_epoch_header seal = {
		.magic = WAL_SEAL_MAGIC,
		.version = WAL_FORMAT_VERSION,
		.epoch = w->next_epoch,
		.first_lsn = w->next_lsn,
		.time_ns = sh.created_ns,
	};
	seal.crc = seal_crc(&seal);
	DOVE_ASSERT(old_off + sizeof(seal) <= w->cfg.segment_bytes);
	rc = io_pwrite_all(STORE_IO_WAL_SEG_WRITE, old_fd, &seal, sizeof(seal), (off_t)old_off);
	if (rc == 0)
		rc = io_sync(w, STORE_IO_WAL_SEG_SYNC, old_fd);
	/* The new segment is already the current one: without its seal a
	 * lost new segment would look like the end of the log, so a failed
	 * write poisons too. */
	if (rc != 0)
		rc = poison(w, rc, "writing the previous segment's seal");
	close(old_fd);
	return rc;
}

/*
 * Write wal.anchor (temp file, fdatasync, rename, directory fsync) before
 * the first segment of a log is made: from then on a directory without
 * segments has lost its log instead of looking new.
 */
static int
write_anchor(store_wal *w, uint64_t first_epoch)
{
	char tmp[PATH_MAX], path[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s/" WAL_ANCHOR_NAME ".tmp", w->dir);
	snprintf(path, sizeof(path), "%s/" WAL_ANCHOR_NAME, w->dir);
	struct wal_anchor a = { .magic = WAL_ANCHOR_MAGIC,
				.version = 1,
				.created_ns = dove_clock_ns(CLOCK_REALTIME),
				.first_epoch = first_epoch };
	a.crc = store_crc32c(0, &a, sizeof(a));
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	int rc = io_pwrite_all(STORE_IO_WAL_SEG_WRITE, fd, &a, sizeof(a), 0);
	if (rc == 0)
		rc = io_sync(w, STORE_IO_WAL_SEG_SYNC, fd);
	close(fd);
	if (rc == 0 && store_io_rename(STORE_IO_WAL_RENAME, tmp, path) < 0)
		rc = -errno;
	if (rc == 0 && w->cfg.fsync)
		rc = fsync_dir(w->dir);
	if (rc != 0)
		unlink(tmp);
	return rc;
}

/* Write and sync one sealed buffer as the next epoch. Committer only. */
static int
commit(store_wal *w, struct buf *b, uint64_t *epoch, uint64_t *first_lsn)
{
	size_t payload = b->len - sizeof(struct wal_epoch_header);
	DOVE_ASSERT(b->count > 0);
	DOVE_ASSERT(payload % 8 == 0);
	if (w->fd < 0 ||
	    w->seg_off + b->len + WAL_SEAL_BYTES > w->cfg.segment_bytes) {
		int rc = roll_segment(w);
		if (rc != 0)
			return rc;
	}
	struct wal_epoch_header h = {
		.magic = WAL_EPOCH_MAGIC,
		.version = WAL_FORMAT_VERSION,
		.epoch = w->next_epoch,
		.first_lsn = w->next_lsn,
		.count = b->count,
		.length = (uint32_t)payload,
		.time_ns = dove_clock_ns(CLOCK_REALTIME),
	};
	DOVE_ASSERT_DEBUG(store_crc32c(0, b->data + sizeof(h), payload) ==
			  b->crc);
	h.crc = store_crc32c(b->crc, &h, sizeof(h));
	memcpy(b->data, &h, sizeof(h));
	const char *why;
	struct wal_epoch_header check;
	DOVE_ASSERT_DEBUG(epoch_valid(b->data, b->len, 0, &check, &why));

	int rc = io_pwrite_all(STORE_IO_WAL_WRITE, w->fd, b->data, b->len, (off_t)w->seg_off);
	if (rc != 0)
		return rc; /* not durable; offset and numbers are reused */
	rc = io_sync(w, STORE_IO_WAL_SYNC, w->fd);
	if (rc != 0) {
		char what[64];
		snprintf(what, sizeof(what), "fdatasync of epoch %" PRIu64, h.epoch);
		return poison(w, rc, what);
	}
	*epoch = h.epoch;
	*first_lsn = h.first_lsn;
	w->seg_off += b->len;
	w->next_epoch++;
	w->next_lsn += b->count;
	return 0;
}

static void *
committer_main(void *arg)
{
	store_wal *w = arg;
	dove_log_thread_name("wal");
	pthread_mutex_lock(&w->mu);
	for (;;) {
		while (w->open->count == 0 && !w->closing)
			pthread_cond_wait(&w->has_data, &w->mu);
		if (w->open->count == 0 && w->closing)
			break;
		if (w->cfg.max_delay_us > 0 && !w->closing) {
			/* Optional: give a trickle a moment to grow. */
			pthread_mutex_unlock(&w->mu);
			usleep(w->cfg.max_delay_us);
			pthread_mutex_lock(&w->mu);
		}
		/* Seal: appenders move to the other buffer at once. */
		struct buf *b = w->open;
		struct buf *other = b == &w->bufs[0] ? &w->bufs[1] : &w->bufs[0];
		DOVE_ASSERT(other->count == 0);
		other->batch = b->batch + 1;
		w->open = other;
		bool poisoned = w->poisoned;
		pthread_cond_broadcast(&w->has_room);
		pthread_mutex_unlock(&w->mu);

		uint64_t epoch = 0, first_lsn = 0;
		uint64_t t0 = dove_clock_ns(CLOCK_MONOTONIC);
		int rc = poisoned ? -DOVE_EPOISONED
				  : commit(w, b, &epoch, &first_lsn);
		uint64_t dt = dove_clock_ns(CLOCK_MONOTONIC) - t0;
		if (rc == 0) {
			/* Find a full disk before the next epoch needs it. */
			if (w->next_fd < 0 &&
			    w->seg_off > w->cfg.segment_bytes / 2) {
				int prc = prepare_next(w);
				if (prc != 0)
					DOVE_WARN("wal: cannot prepare the next "
						  "segment: %s",
						  dove_strerror(prc));
			}
		} else if (rc != -DOVE_EPOISONED) {
			snprintf(w->why, sizeof(w->why),
				 "epoch %" PRIu64 " not written: %s (the next "
				 "commit tries again)", w->next_epoch,
				 dove_strerror(rc));
			DOVE_ERROR("wal: %s", w->why);
		}

		pthread_mutex_lock(&w->mu);
		/* Stats under the lock: store_wal_stats_get reads them from
		 * any thread. */
		if (rc == 0) {
			w->stats.epochs++;
			w->stats.records += b->count;
			w->stats.bytes += b->len;
			w->stats.commit_ns_total += dt;
			if (dt > w->stats.commit_ns_max)
				w->stats.commit_ns_max = dt;
			int bucket = dt ? 63 - __builtin_clzll(dt) : 0;
			w->stats.commit_hist[bucket < STORE_WAL_HIST
						     ? bucket
						     : STORE_WAL_HIST - 1]++;
		} else {
			w->stats.failed_commits++;
			if (!w->stats.poisoned)
				snprintf(w->stats.error, sizeof(w->stats.error),
					 "%s", w->why);
		}
		if (rc == -DOVE_EPOISONED)
			w->poisoned = w->stats.poisoned = true;
		struct outcome *o = &w->outcomes[b->batch % OUTCOMES];
		o->batch = b->batch;
		o->rc = rc;
		o->epoch = epoch;
		o->first_lsn = first_lsn;
		DOVE_ASSERT(b->batch == w->done_batch + 1);
		w->done_batch = b->batch;
		b->len = sizeof(struct wal_epoch_header);
		b->count = 0;
		b->crc = 0;
		pthread_cond_broadcast(&w->done);
		pthread_cond_broadcast(&w->has_room);
		/* Wake an event loop; a full counter just stays readable. */
		uint64_t one = 1;
		ssize_t wr = write(w->event_fd, &one, sizeof(one));
		(void)wr;
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

int
store_wal_append(store_wal *w, const struct store_wal_record *recs,
		 uint32_t n, uint64_t *batch)
{
	DOVE_ASSERT(w != NULL && (recs != NULL || n == 0));
	size_t need = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (recs[i].type == 0)
			return -EINVAL;
		need += sizeof(struct wal_record_header) +
			WAL_ALIGN((size_t)recs[i].len);
	}
	size_t cap = sizeof(struct wal_epoch_header) + w->cfg.max_epoch_bytes;
	if (need > w->cfg.max_epoch_bytes)
		return -EINVAL;

	pthread_mutex_lock(&w->mu);
	/* Backpressure: wait until the open buffer has room. */
	while (!w->poisoned && w->open->len + need > cap)
		pthread_cond_wait(&w->has_room, &w->mu);
	if (w->poisoned) {
		pthread_mutex_unlock(&w->mu);
		return -DOVE_EPOISONED;
	}
	struct buf *b = w->open;
	for (uint32_t i = 0; i < n; i++) {
		struct wal_record_header rh = { .type = recs[i].type,
						.len = recs[i].len };
		memcpy(b->data + b->len, &rh, sizeof(rh));
		memcpy(b->data + b->len + sizeof(rh), recs[i].data, recs[i].len);
		size_t padded = WAL_ALIGN((size_t)recs[i].len);
		memset(b->data + b->len + sizeof(rh) + recs[i].len, 0,
		       padded - recs[i].len);
		/* Checksum what we just copied while it is in cache, so
		 * the committer only has the header left to do. */
		b->crc = store_crc32c(b->crc, b->data + b->len,
				      sizeof(rh) + padded);
		b->len += sizeof(rh) + padded;
	}
	b->count += n;
	DOVE_ASSERT(b->len <= cap);
	*batch = b->batch;
	if (b->count == n && n > 0)
		pthread_cond_signal(&w->has_data); /* first records: wake */
	pthread_mutex_unlock(&w->mu);
	return 0;
}

/* The outcome of a finished batch. Caller holds the mutex. */
static int
outcome_locked(store_wal *w, uint64_t batch, uint64_t *epoch,
	       uint64_t *first_lsn)
{
	const struct outcome *o = &w->outcomes[batch % OUTCOMES];
	if (o->batch != batch)
		return -EINVAL; /* older than the outcome window: a caller bug */
	if (epoch)
		*epoch = o->epoch;
	if (first_lsn)
		*first_lsn = o->first_lsn;
	return o->rc;
}

int
store_wal_wait(store_wal *w, uint64_t batch, uint64_t *epoch,
	       uint64_t *first_lsn)
{
	pthread_mutex_lock(&w->mu);
	while (w->done_batch < batch)
		pthread_cond_wait(&w->done, &w->mu);
	int rc = outcome_locked(w, batch, epoch, first_lsn);
	pthread_mutex_unlock(&w->mu);
	return rc;
}

int
store_wal_poll(store_wal *w, uint64_t batch, uint64_t *epoch,
	       uint64_t *first_lsn)
{
	pthread_mutex_lock(&w->mu);
	int rc = w->done_batch < batch
			 ? -EAGAIN
			 : outcome_locked(w, batch, epoch, first_lsn);
	pthread_mutex_unlock(&w->mu);
	return rc;
}

int
store_wal_event_fd(store_wal *w)
{
	return w->event_fd;
}

uint64_t
store_wal_durable_epoch(store_wal *w)
{
	pthread_mutex_lock(&w->mu);
	uint64_t e = w->recovered_last;
	for (uint64_t b = w->done_batch; b > 0 && w->done_batch - b < OUTCOMES;
	     b--) {
		const struct outcome *o = &w->outcomes[b % OUTCOMES];
		if (o->batch == b && o->rc == 0) {
			e = o->epoch;
			break;
		}
	}
	pthread_mutex_unlock(&w->mu);
	return e;
}

void
store_wal_stats_get(store_wal *w, struct store_wal_stats *st)
{
	pthread_mutex_lock(&w->mu);
	*st = w->stats;
	pthread_mutex_unlock(&w->mu);
}

/* ---- open, recovery, close, retention ---------------------------------- */

/* Zero [off, end of file) so stale bytes of a torn epoch never look like
 * an epoch to a later recovery. */
static int
zero_tail(store_wal *w, const char *path, uint64_t off)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	int rc = fstat(fd, &st) < 0 ? -errno : 0;
	static const unsigned char zeros[65536];
	for (uint64_t p = off; rc == 0 && p < (uint64_t)st.st_size;) {
		size_t n = (uint64_t)st.st_size - p < sizeof(zeros)
				   ? (size_t)((uint64_t)st.st_size - p)
				   : sizeof(zeros);
		rc = io_pwrite_all(STORE_IO_WAL_SEG_WRITE, fd, zeros, n, (off_t)p);
		p += n;
	}
	if (rc == 0)
		rc = io_sync(w, STORE_IO_WAL_SEG_SYNC, fd);
	close(fd);
	return rc;
}

/* Free what open built, whatever point it reached (the committer is not
 * running). */
static void
wal_free(store_wal *w)
{
	if (w->fd >= 0)
		close(w->fd);
	for (int i = 0; i < 2; i++)
		free(w->bufs[i].data);
	if (w->event_fd > 0)
		close(w->event_fd);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->has_data);
	pthread_cond_destroy(&w->has_room);
	pthread_cond_destroy(&w->done);
	free(w->segs);
	free(w);
}

int
store_wal_open(const struct store_wal_config *cfg, store_wal **out,
	       struct store_wal_scan *scan_out, char *err, size_t errlen)
{
	DOVE_ASSERT(cfg != NULL && cfg->dir != NULL && out != NULL);
	int rc;
	if (cfg->max_epoch_bytes < 64 ||
	    cfg->segment_bytes < sizeof(struct wal_seg_header) +
					 sizeof(struct wal_epoch_header) +
					 (uint64_t)cfg->max_epoch_bytes +
					 WAL_SEAL_BYTES) {
		snprintf(err, errlen,
			 "wal: segment_bytes (%" PRIu64 ") must hold a segment "
			 "header, one full epoch and a seal (max_epoch_bytes "
			 "%u + 160)",
			 cfg->segment_bytes, cfg->max_epoch_bytes);
		return -EINVAL;
	}
	if (strlen(cfg->dir) >= WAL_DIR_MAX) {
		snprintf(err, errlen, "wal: directory path too long: %s",
			 cfg->dir);
		return -ENAMETOOLONG;
	}
	if ((rc = store_dir_create(cfg->dir, 0750, err, errlen)) != 0)
		return rc;

	struct store_wal_scan scan;
	rc = store_wal_scan(cfg->dir, UINT64_MAX, NULL, NULL, &scan);
	if (rc != 0) {
		snprintf(err, errlen, "wal: %s", scan.reason);
		return rc;
	}
	if (scan.status < 0) {
		snprintf(err, errlen,
			 "wal: corrupt log: %s at byte offset %" PRIu64
			 " (expected epoch %" PRIu64 "): %s; nothing was "
			 "changed on disk",
			 scan.file, scan.offset, scan.epoch, scan.reason);
		return -DOVE_ECORRUPT;
	}

	store_wal *w = calloc(1, sizeof(*w));
	DOVE_ASSERT(w != NULL);
	w->cfg = *cfg;
	snprintf(w->dir, sizeof(w->dir), "%s", cfg->dir);
	w->cfg.dir = w->dir;
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->has_data, NULL);
	pthread_cond_init(&w->has_room, NULL);
	pthread_cond_init(&w->done, NULL);
	w->fd = -1;
	w->next_fd = -1;
	w->next_epoch = scan.next_epoch;
	w->next_lsn = scan.next_lsn;
	w->recovered_last = scan.last_epoch;
	if (!cfg->fsync)
		DOVE_WARN("wal: fsync is off: acknowledged epochs can be lost "
			  "on a crash (benchmarks only)");

	/* A prepared segment never holds data: start it afresh. */
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/" NEXT_NAME, w->dir);
	unlink(path);

	struct seg *segs;
	uint32_t nsegs;
	rc = seg_list(w->dir, &segs, &nsegs);
	if (rc != 0) {
		snprintf(err, errlen, "wal: %s: %s", w->dir, dove_strerror(rc));
		goto out_free;
	}
	/* The scan found nothing valid after end_file (or it would have
	 * reported corruption): later segments are a torn creation. */
	bool past_end = scan.end_file[0] == '\0';
	for (uint32_t i = 0; i < nsegs; i++) {
		if (past_end) {
			DOVE_WARN("wal: removing %s: it holds no complete epoch",
				  segs[i].path);
			unlink(segs[i].path);
			continue;
		}
		segs_push(w, segs[i].first_epoch, segs[i].path);
		past_end = strcmp(segs[i].path, scan.end_file) == 0;
	}
	free(segs);
	w->stats.segments = w->nsegs;
	if (scan.status == 1) {
		DOVE_WARN("wal: torn tail cut: %s at byte offset %" PRIu64
			  " (epoch %" PRIu64 " was never acknowledged): %s",
			  scan.file, scan.offset, scan.epoch, scan.reason);
		if (strcmp(scan.file, scan.end_file) == 0 &&
		    (rc = zero_tail(w, scan.end_file, scan.end_offset)) != 0) {
			snprintf(err, errlen,
				 "wal: cutting the torn tail of %s: %s",
				 scan.end_file, dove_strerror(rc));
			goto out_free;
		}
	}
	if (w->nsegs > 0) {
		w->fd = open(scan.end_file, O_RDWR | O_CLOEXEC);
		if (w->fd < 0) {
			rc = -errno;
			snprintf(err, errlen, "wal: %s: %s", scan.end_file,
				 dove_strerror(rc));
			goto out_free;
		}
		w->seg_off = scan.end_offset;
	} else if ((rc = roll_segment(w)) != 0) {
		snprintf(err, errlen, "wal: creating a segment in %s: %s",
			 w->dir, dove_strerror(rc));
		goto out_free;
	}
	/* The anchor comes after the first segment is durable: a start that
	 * fails (or dies) in between leaves a segment and no anchor, which
	 * the next start anchors -- never an anchor without a segment, which
	 * means a lost log and is refused. Nothing is answered before. */
	char anchor[PATH_MAX];
	if (!anchor_exists(w->dir, anchor, sizeof(anchor)) &&
	    (rc = write_anchor(w, w->segs[0].first_epoch)) != 0) {
		snprintf(err, errlen, "wal: writing %s: %s", anchor,
			 dove_strerror(rc));
		goto out_free;
	}

	size_t cap = sizeof(struct wal_epoch_header) + cfg->max_epoch_bytes;
	for (int i = 0; i < 2; i++) {
		w->bufs[i].data = malloc(cap);
		DOVE_ASSERT(w->bufs[i].data != NULL);
		w->bufs[i].len = sizeof(struct wal_epoch_header);
	}
	w->open = &w->bufs[0];
	w->open->batch = 1;
	w->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->event_fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "wal: eventfd: %s", dove_strerror(rc));
		goto out_free;
	}
	rc = -pthread_create(&w->committer, NULL, committer_main, w);
	DOVE_ASSERT(rc == 0);
	if (scan_out)
		*scan_out = scan;
	*out = w;
	return 0;

out_free:
	wal_free(w);
	return rc;
}

void
store_wal_close(store_wal *w)
{
	if (w == NULL)
		return;
	pthread_mutex_lock(&w->mu);
	w->closing = true;
	pthread_cond_signal(&w->has_data);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->committer, NULL);
	if (w->next_fd >= 0) {
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/" NEXT_NAME, w->dir);
		close(w->next_fd);
		unlink(path);
	}
	wal_free(w);
}

int
store_wal_retire(store_wal *w, uint64_t low_water)
{
	/* The segment list is the committer's; take the lock so a roll
	 * cannot grow it under us. */
	pthread_mutex_lock(&w->mu);
	int deleted = 0, rc = 0;
	while (w->nsegs >= 2 && w->segs[1].first_epoch <= low_water) {
		if (unlink(w->segs[0].path) < 0 && errno != ENOENT) {
			rc = -errno;
			break;
		}
		memmove(&w->segs[0], &w->segs[1],
			(w->nsegs - 1) * sizeof(w->segs[0]));
		w->nsegs--;
		deleted++;
	}
	w->stats.segments = w->nsegs;
	pthread_mutex_unlock(&w->mu);
	if (deleted > 0 && w->cfg.fsync)
		fsync_dir(w->dir);
	return rc != 0 ? rc : deleted;
}

uint64_t
store_hist_quantile(const uint64_t *hist, int buckets, double q)
{
	uint64_t total = 0;
	for (int i = 0; i < buckets; i++)
		total += hist[i];
	if (total == 0)
		return 0;
	uint64_t want = (uint64_t)((double)total * q);
	uint64_t seen = 0;
	for (int i = 0; i < buckets; i++) {
		seen += hist[i];
		if (seen > want)
			return (uint64_t)1 << (i + 1);
	}
	return (uint64_t)1 << buckets;
}
