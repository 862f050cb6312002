/*
 * fuzz_wal.c - the WAL's recovery: scan (store_wal_scan), follower
 * (store_wal_reader) and open (store_wal_open: cut a torn tail, prepare
 * the next segment), fed any log directory.
 *
 * Input: one flag byte, then up to four segment files separated by
 * "DOVESEG!". Flags: 1 = write wal.anchor; 2 = recompute the checksums
 * of the segment header, epochs and seals the bytes describe (else the
 * fuzzer would seldom get past a CRC); 4 = pad each segment with zeros to
 * its header's segment_bytes (up to 1 MiB), as preallocation would.
 * Segments are named by their header's first epoch.
 *
 * Properties: no crash or sanitizer report; the scan never reports an
 * epoch twice or out of order; the reader reads exactly the epochs the
 * scan found valid; a log the scan does not call corrupt opens, keeps
 * every valid epoch, and scans clean afterwards.
 */
#include <string.h>

#include "dove.h"
#include "fuzz.h"
#include "store.h"
#include "store_int.h"

#define SEP "DOVESEG!"
#define MAX_SEGS 4
#define PAD_MAX (1u << 20)

/* Recompute the CRCs of what the bytes say is there. */
static void
fix_crcs(unsigned char *b, size_t n)
{
	struct wal_seg_header sh;
	if (n < sizeof(sh))
		return;
	memcpy(&sh, b, sizeof(sh));
	sh.crc = 0;
	sh.crc = store_crc32c(0, &sh, sizeof(sh));
	memcpy(b, &sh, sizeof(sh));
	size_t off = sizeof(sh);
	struct wal_epoch_header h;
	while (off + sizeof(h) <= n) {
		memcpy(&h, b + off, sizeof(h));
		h.crc = 0;
		if (h.magic == WAL_SEAL_MAGIC) {
			h.crc = store_crc32c(0, &h, sizeof(h));
			memcpy(b + off, &h, sizeof(h));
			return;
		}
		if (h.magic != WAL_EPOCH_MAGIC || h.length > n - off - sizeof(h))
			return;
		uint32_t crc = store_crc32c(0, b + off + sizeof(h), h.length);
		h.crc = store_crc32c(crc, &h, sizeof(h));
		memcpy(b + off, &h, sizeof(h));
		off += sizeof(h) + WAL_ALIGN((size_t)h.length);
	}
}

struct seen {
	uint64_t last, n;
};

static int
on_epoch(void *arg, const struct store_wal_epoch *ep)
{
	struct seen *s = arg;
	FUZZ_CHECK(ep->epoch > s->last, "epoch %lu after %lu",
		   (unsigned long)ep->epoch, (unsigned long)s->last);
	s->last = ep->epoch;
	s->n++;
	size_t off = 0;
	struct store_wal_record rec;
	uint32_t recs = 0;
	while (store_wal_record_next(ep, &off, &rec)) {
		FUZZ_CHECK(rec.type != 0 && off <= ep->length, "record %u", recs);
		recs++;
	}
	FUZZ_CHECK(recs == ep->count, "%u records of %u", recs, ep->count);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned flags = data[0];
	fuzz_clear();
	const char *dir = fuzz_dir();
	char path[512];

	const uint8_t *p = data + 1, *end = data + size;
	for (int i = 0; i < MAX_SEGS && p <= end; i++) {
		const uint8_t *q = memmem(p, (size_t)(end - p), SEP, strlen(SEP));
		size_t n = q ? (size_t)(q - p) : (size_t)(end - p);
		struct wal_seg_header sh = { .first_epoch = (uint64_t)i + 1 };
		if (n >= sizeof(sh))
			memcpy(&sh, p, sizeof(sh));
		size_t file = n;
		if ((flags & 4) && sh.segment_bytes > n && sh.segment_bytes <= PAD_MAX)
			file = sh.segment_bytes;
		unsigned char *b = calloc(1, file ? file : 1);
		memcpy(b, p, n);
		if (flags & 2)
			fix_crcs(b, n);
		snprintf(path, sizeof(path), "%s/wal-%020lu.log", dir,
			 (unsigned long)sh.first_epoch);
		fuzz_write(path, b, file);
		free(b);
		if (q == NULL)
			break;
		p = q + strlen(SEP);
	}
	if (flags & 1) {
		snprintf(path, sizeof(path), "%s/%s", dir, WAL_ANCHOR_NAME);
		fuzz_write(path, "anchor", 6);
	}

	struct store_wal_scan scan;
	struct seen seen = { 0, 0 };
	int rc = store_wal_scan(dir, 1, on_epoch, &seen, &scan);
	if (rc != 0)
		return 0; /* an I/O error (e.g. a name that is a directory) */
	FUZZ_CHECK(seen.n == scan.epochs, "%lu epochs seen, scan says %lu",
		   (unsigned long)seen.n, (unsigned long)scan.epochs);
	FUZZ_CHECK(scan.status == 0 || scan.status == 1 ||
		   scan.status == -DOVE_ECORRUPT, "status %d", scan.status);
	if (scan.status == -DOVE_ECORRUPT)
		FUZZ_CHECK(scan.reason[0] != '\0', "corruption without a reason");
	if (scan.epochs == 0)
		FUZZ_CHECK(scan.last_epoch == 0 || scan.first_epoch > 1,
			   "an empty scan ends at %lu", (unsigned long)scan.last_epoch);

	/* The follower reads what the scan found, no more and no less. */
	if (scan.epochs > 0) {
		store_wal_reader *r;
		if (store_wal_reader_open(dir, scan.first_epoch, &r) == 0) {
			struct seen rs = { scan.first_epoch - 1, 0 };
			int n = store_wal_reader_read(r, scan.last_epoch, on_epoch, &rs);
			FUZZ_CHECK(n < 0 || (uint64_t)n == scan.epochs,
				   "reader read %d of %lu epochs", n,
				   (unsigned long)scan.epochs);
			store_wal_reader_close(r);
		}
	}
	if (scan.status == -DOVE_ECORRUPT)
		return 0;

	/* Recovery: open cuts a torn tail and keeps every valid epoch. */
	struct store_wal_config cfg = {
		.dir = dir,
		.segment_bytes = 64 * 1024,
		.max_epoch_bytes = 16 * 1024,
		.fsync = false,
	};
	store_wal *w;
	char err[1024];
	struct store_wal_scan at_open;
	rc = store_wal_open(&cfg, &w, &at_open, err, sizeof(err));
	if (rc != 0)
		return 0; /* refused with a reason (e.g. a foreign segment size) */
	FUZZ_CHECK(store_wal_durable_epoch(w) == scan.last_epoch,
		   "opened at epoch %lu, the scan ended at %lu",
		   (unsigned long)store_wal_durable_epoch(w),
		   (unsigned long)scan.last_epoch);
	store_wal_close(w);
	struct store_wal_scan after;
	rc = store_wal_scan(dir, 1, NULL, NULL, &after);
	FUZZ_CHECK(rc == 0 && after.status == 0 && after.last_epoch == scan.last_epoch &&
		   after.epochs == scan.epochs,
		   "after recovery: status %d last %lu epochs %lu (%s), before: "
		   "last %lu epochs %lu", after.status, (unsigned long)after.last_epoch,
		   (unsigned long)after.epochs, after.reason,
		   (unsigned long)scan.last_epoch, (unsigned long)scan.epochs);
	return 0;
}

/* The warnings recovery logs for every torn input are noise here. */
__attribute__((constructor)) static void
quiet(void)
{
	dove_log_set_level(DOVE_LOG_ERROR);
}
