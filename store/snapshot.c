/*
 * snapshot.c - snapshot files: the ledger and the idempotency window at an
 * epoch boundary, checksummed, written atomically (temp file, fsync,
 * rename, fsync the directory), loaded newest-valid-first.
 *
 * The writer may run in a forked child of doved (copy-on-write snapshot):
 * it uses a static buffer and system calls only, no allocation and no
 * locks another thread of the parent could have held at fork time.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dove.h"
#include "settle.h"
#include "store.h"
#include "store_int.h"

struct store_snap_writer {
	int fd;
	char tmp[PATH_MAX];
	char final[PATH_MAX];
	char dir[PATH_MAX];
	struct snap_header h;
	uint32_t crc; /* of the body so far */
	size_t used;
	uint64_t body_bytes;
};

/* Static: the writer must not allocate (it may run in a forked child). */
static struct store_snap_writer writer;
static unsigned char wbuf[1 << 20];

static int
write_all(int fd, const void *p, size_t n)
{
	const unsigned char *b = p;
	while (n > 0) {
		ssize_t w = store_io_pwrite(STORE_IO_SNAP_WRITE, fd, b, n, -1);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

int
store_snap_begin(const char *dir, uint64_t epoch, uint64_t next_lsn,
		 store_snap_writer **out)
{
	store_snap_writer *w = &writer;
	DOVE_ASSERT(w->fd == 0 || w->fd == -1); /* one at a time */
	memset(w, 0, sizeof(*w));
	char err[256];
	int rc = store_dir_create(dir, 0750, err, sizeof(err));
	if (rc != 0)
		return rc;
	snprintf(w->dir, sizeof(w->dir), "%.4000s", dir);
	snprintf(w->tmp, sizeof(w->tmp), "%.4000s/snap-tmp-%d", dir,
		 (int)getpid());
	snprintf(w->final, sizeof(w->final), "%.4000s/snap-%020" PRIu64 ".snap",
		 dir, epoch);
	w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (w->fd < 0) {
		rc = -errno;
		w->fd = -1;
		return rc;
	}
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	w->h = (struct snap_header){
		.magic = SNAP_MAGIC,
		.version = STORE_SNAP_VERSION,
		.header_bytes = sizeof(struct snap_header),
		.epoch = epoch,
		.next_lsn = next_lsn,
		.created_ns = (uint64_t)ts.tv_sec * 1000000000u +
			      (uint64_t)ts.tv_nsec,
		.account_bytes = sizeof(struct settle_account),
		.id_bytes = sizeof(struct settle_seq_id),
	};
	/* The header goes in last (with the counts); leave room for it. */
	if (lseek(w->fd, sizeof(struct snap_header), SEEK_SET) < 0) {
		rc = -errno;
		store_snap_abort(w);
		return rc;
	}
	*out = w;
	return 0;
}

static int
flush(store_snap_writer *w)
{
	int rc = write_all(w->fd, wbuf, w->used);
	w->used = 0;
	return rc;
}

int
store_snap_put(store_snap_writer *w, const void *data, size_t len)
{
	const unsigned char *p = data;
	w->crc = store_crc32c(w->crc, data, len);
	w->body_bytes += len;
	while (len > 0) {
		size_t n = sizeof(wbuf) - w->used < len ? sizeof(wbuf) - w->used
							 : len;
		memcpy(wbuf + w->used, p, n);
		w->used += n;
		p += n;
		len -= n;
		if (w->used == sizeof(wbuf)) {
			int rc = flush(w);
			if (rc != 0)
				return rc;
		}
	}
	return 0;
}

int
store_snap_commit(store_snap_writer *w, uint64_t accounts, uint64_t ids,
		  uint64_t extra_bytes)
{
	DOVE_ASSERT(w->body_bytes == accounts * sizeof(struct settle_account) +
					     ids * sizeof(struct settle_seq_id) +
					     extra_bytes);
	w->h.accounts = accounts;
	w->h.ids = ids;
	w->h.extra_bytes = extra_bytes;
	int rc = flush(w);
	/* Body first, then the header (as the WAL does): the body's CRC ran
	 * as it was written, and the counts are known only now. */
	struct snap_trailer t = { .magic = SNAP_TRAILER_MAGIC };
	t.crc = store_crc32c(w->crc, &w->h, sizeof(w->h));
	if (rc == 0)
		rc = write_all(w->fd, &t, sizeof(t));
	if (rc == 0 && store_io_pwrite(STORE_IO_SNAP_WRITE, w->fd, &w->h,
				       sizeof(w->h), 0) != sizeof(w->h))
		rc = -EIO;
	if (rc == 0 && store_io_sync(STORE_IO_SNAP_SYNC, w->fd, false) != 0)
		rc = -errno;
	if (rc == 0 && store_io_rename(STORE_IO_SNAP_RENAME, w->tmp, w->final) != 0)
		rc = -errno;
	if (rc != 0) {
		store_snap_abort(w);
		return rc;
	}
	close(w->fd);
	w->fd = -1;
	/* The file is whole and synced under its final name; only its
	 * name may not be durable yet. Reported, so nothing (WAL
	 * retention) relies on it. */
	return store_io_fsync_dir(STORE_IO_SNAP_DIRSYNC, w->dir);
}

void
store_snap_abort(store_snap_writer *w)
{
	if (w->fd >= 0) {
		close(w->fd);
		unlink(w->tmp);
	}
	w->fd = -1;
}

/* ---- reading ------------------------------------------------------------ */

static int
list_snaps(const char *dir, uint64_t *epochs, int max)
{
	DIR *d = opendir(dir);
	if (d == NULL)
		return errno == ENOENT ? 0 : -errno;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL && n < max) {
		uint64_t ep;
		char tail[8];
		if (strlen(e->d_name) == 5 + 20 + 5 &&
		    sscanf(e->d_name, "snap-%20" SCNu64 "%7s", &ep, tail) == 2 &&
		    strcmp(tail, ".snap") == 0)
			epochs[n++] = ep;
	}
	closedir(d);
	/* Newest first. */
	for (int i = 1; i < n; i++)
		for (int k = i; k > 0 && epochs[k] > epochs[k - 1]; k--) {
			uint64_t t = epochs[k];
			epochs[k] = epochs[k - 1];
			epochs[k - 1] = t;
		}
	return n;
}

/* Validate a mapped snapshot; NULL if sound, else why not. */
static const char *
snap_check(const unsigned char *p, size_t n, uint64_t epoch,
	   struct snap_header *h)
{
	if (n < SNAP_V1_HEADER + sizeof(struct snap_trailer))
		return "shorter than header and trailer";
	memset(h, 0, sizeof(*h));
	memcpy(h, p, SNAP_V1_HEADER);
	if (h->magic != SNAP_MAGIC)
		return "bad magic";
	/* Version 1 (before hot accounts) has no extra section. */
	size_t hb = h->version == 1 ? SNAP_V1_HEADER : sizeof(*h);
	if ((h->version != 1 && h->version != STORE_SNAP_VERSION) ||
	    h->header_bytes != hb ||
	    h->account_bytes != sizeof(struct settle_account) ||
	    h->id_bytes != sizeof(struct settle_seq_id))
		return "another format version";
	if (n < hb + sizeof(struct snap_trailer))
		return "shorter than header and trailer";
	memcpy(h, p, hb);
	if (h->epoch != epoch)
		return "epoch differs from the file name";
	if (h->accounts > n / sizeof(struct settle_account) ||
	    h->ids > n / sizeof(struct settle_seq_id) || h->extra_bytes > n ||
	    hb + h->accounts * sizeof(struct settle_account) +
			    h->ids * sizeof(struct settle_seq_id) +
			    h->extra_bytes + sizeof(struct snap_trailer) !=
		    n)
		return "size does not match its counts (torn?)";
	struct snap_trailer t;
	memcpy(&t, p + n - sizeof(t), sizeof(t));
	if (t.magic != SNAP_TRAILER_MAGIC)
		return "bad trailer";
	uint32_t crc = store_crc32c(0, p + hb, n - hb - sizeof(t));
	if (store_crc32c(crc, p, hb) != t.crc)
		return "checksum mismatch";
	return NULL;
}

int
store_snap_load_newest(const char *dir, struct store_snap *out)
{
	return store_snap_load_upto(dir, UINT64_MAX, out);
}

int
store_snap_load_upto(const char *dir, uint64_t max_epoch, struct store_snap *out)
{
	uint64_t epochs[256];
	int n = list_snaps(dir, epochs, 256);
	if (n < 0)
		return n;
	for (int i = 0; i < n; i++) {
		if (epochs[i] > max_epoch)
			continue;
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%.4000s/snap-%020" PRIu64 ".snap",
			 dir, epochs[i]);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		struct stat st;
		void *p = MAP_FAILED;
		if (fstat(fd, &st) == 0 && st.st_size > 0)
			p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE,
				 fd, 0);
		close(fd);
		struct snap_header h;
		const char *why = p == MAP_FAILED
					  ? "cannot be read"
					  : snap_check(p, (size_t)st.st_size,
						       epochs[i], &h);
		if (why != NULL) {
			DOVE_WARN("snapshot %s is not usable (%s); trying an "
				  "older one",
				  path, why);
			if (p != MAP_FAILED)
				munmap(p, (size_t)st.st_size);
			continue;
		}
		memset(out, 0, sizeof(*out));
		out->epoch = h.epoch;
		out->next_lsn = h.next_lsn;
		out->accounts = h.accounts;
		out->ids = h.ids;
		size_t hb = h.version == 1 ? SNAP_V1_HEADER : sizeof(h);
		out->account_data = (const unsigned char *)p + hb;
		out->id_data = (const unsigned char *)p + hb +
			       h.accounts * sizeof(struct settle_account);
		out->extra_bytes = h.extra_bytes;
		out->extra_data = (const unsigned char *)out->id_data +
				  h.ids * sizeof(struct settle_seq_id);
		snprintf(out->path, sizeof(out->path), "%s", path);
		out->map = p;
		out->map_len = (size_t)st.st_size;
		return 1;
	}
	return 0;
}

void
store_snap_release(struct store_snap *s)
{
	if (s->map != NULL)
		munmap(s->map, s->map_len);
	s->map = NULL;
}

uint64_t
store_snap_newest_upto(const char *dir, uint64_t max_epoch)
{
	uint64_t epochs[256];
	int n = list_snaps(dir, epochs, 256);
	for (int i = 0; i < n; i++)
		if (epochs[i] <= max_epoch)
			return epochs[i];
	return 0;
}

uint64_t
store_snap_oldest(const char *dir)
{
	uint64_t epochs[256];
	int n = list_snaps(dir, epochs, 256);
	return n > 0 ? epochs[n - 1] : 0;
}

int
store_snap_prune(const char *dir, uint32_t keep, uint64_t base)
{
	uint64_t epochs[256];
	int n = list_snaps(dir, epochs, 256);
	int deleted = 0;
	bool base_kept = false;
	for (int i = 0; i < n && i < (int)keep; i++)
		base_kept |= epochs[i] <= base;
	for (int i = (int)keep; i < n; i++) {
		/* The newest one at or below base stays (the projection
		 * rebuilds from it). */
		if (!base_kept && epochs[i] <= base) {
			base_kept = true;
			continue;
		}
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%.4000s/snap-%020" PRIu64 ".snap",
			 dir, epochs[i]);
		if (unlink(path) == 0)
			deleted++;
	}
	return deleted;
}

struct snap_put {
	store_snap_writer *w;
	uint64_t n;
	int rc;
};

static void
put_account(void *arg, const struct settle_account *a)
{
	struct snap_put *p = arg;
	if (p->rc == 0)
		p->rc = store_snap_put(p->w, a, sizeof(*a));
	p->n++;
}

static void
put_id(void *arg, const struct settle_seq_id *e)
{
	struct snap_put *p = arg;
	if (p->rc == 0)
		p->rc = store_snap_put(p->w, e, sizeof(*e));
	p->n++;
}

/* ---- the settlement state in a snapshot ---------------------------------- */

/* The extra section (docs/snapshot-format.md): peak, the hot accounts not
 * hot by their flag, the open buffers. */
#define SNAP_HOT_MAGIC 0x31544f48u /* "HOT1" */
struct snap_hot_head {
	uint32_t magic, peak, nhot, nbuf;
};
struct snap_hot {
	uint64_t id;
	uint32_t reason, pad;
};
_Static_assert(sizeof(struct settle_buffer) == 32, "snapshot buffer record");

struct hot_put {
	struct snap_put *p;
	uint32_t n;
};

static void
count_hot(void *arg, uint64_t id, uint32_t reason)
{
	(void)id;
	if (reason != SETTLE_HOT_FLAG)
		((struct hot_put *)arg)->n++;
}

static void
put_hot(void *arg, uint64_t id, uint32_t reason)
{
	struct hot_put *h = arg;
	struct snap_hot e = { id, reason, 0 };
	if (reason != SETTLE_HOT_FLAG && h->p->rc == 0)
		h->p->rc = store_snap_put(h->p->w, &e, sizeof(e));
}

static void
count_buf(void *arg, const struct settle_buffer *b)
{
	(void)b;
	((struct hot_put *)arg)->n++;
}

static void
put_buf(void *arg, const struct settle_buffer *b)
{
	struct snap_put *p = arg;
	if (p->rc == 0)
		p->rc = store_snap_put(p->w, b, sizeof(*b));
}

int
store_snap_write_state(const char *dir, uint64_t epoch, uint64_t next_lsn,
		       const settle_seq *q, const settle_ledger *l)
{
	store_snap_writer *w;
	int rc = store_snap_begin(dir, epoch, next_lsn, &w);
	if (rc != 0)
		return rc;
	struct snap_put accounts = { w, 0, 0 }, ids = { w, 0, 0 };
	settle_ledger_foreach(l, settle_seq_span(q), -1, 1,
			      put_account, &accounts);
	settle_seq_foreach_settled(q, put_id, &ids);
	struct hot_put nhot = { NULL, 0 }, nbuf = { NULL, 0 };
	settle_seq_foreach_hot(q, count_hot, &nhot);
	settle_ledger_foreach_buffer(l, count_buf, &nbuf);
	struct snap_hot_head head = { SNAP_HOT_MAGIC,
				      settle_seq_peak(q), nhot.n, nbuf.n };
	struct snap_put extra = { w, 0, 0 };
	extra.rc = store_snap_put(w, &head, sizeof(head));
	struct hot_put hp = { &extra, 0 };
	settle_seq_foreach_hot(q, put_hot, &hp);
	settle_ledger_foreach_buffer(l, put_buf, &extra);
	rc = accounts.rc ? accounts.rc : ids.rc ? ids.rc : extra.rc;
	if (rc != 0) {
		store_snap_abort(w);
		return rc;
	}
	return store_snap_commit(w, accounts.n, ids.n,
				 sizeof(head) + (uint64_t)nhot.n *
							sizeof(struct snap_hot) +
					 (uint64_t)nbuf.n *
						 sizeof(struct settle_buffer));
}

/* Peak, the hot set and the open buffers from a snapshot's extra
 * section. 0, -EINVAL (malformed) or what a restore said. */
static int
restore_hot(settle_seq *q, settle_ledger *l, const void *data, uint64_t len)
{
	struct snap_hot_head h;
	if (len < sizeof(h))
		return -EINVAL;
	memcpy(&h, data, sizeof(h));
	if (h.magic != SNAP_HOT_MAGIC || h.peak > 1 ||
	    len != sizeof(h) + (uint64_t)h.nhot * sizeof(struct snap_hot) +
			   (uint64_t)h.nbuf * sizeof(struct settle_buffer))
		return -EINVAL;
	settle_seq_restore_peak(q, h.peak != 0);
	settle_ledger_restore_peak(l, h.peak != 0);
	const char *p = (const char *)data + sizeof(h);
	int rc = 0;
	for (uint32_t i = 0; rc == 0 && i < h.nhot; i++, p += sizeof(struct snap_hot)) {
		struct snap_hot e;
		memcpy(&e, p, sizeof(e));
		rc = settle_seq_restore_hot(q, e.id, e.reason);
	}
	for (uint32_t i = 0; rc == 0 && i < h.nbuf;
	     i++, p += sizeof(struct settle_buffer)) {
		struct settle_buffer b;
		memcpy(&b, p, sizeof(b));
		/* Indexes are not kept across a restore: look it up. */
		b.ix = settle_seq_account_ix(q, b.account);
		rc = settle_ledger_restore_buffer(l, &b);
	}
	return rc;
}

int
store_snap_restore(const struct store_snap *snap, settle_seq *q, settle_ledger *l)
{
	int rc = 0;
	for (uint64_t i = 0; rc == 0 && i < snap->accounts; i++) {
		struct settle_account a;
		memcpy(&a, (const char *)snap->account_data + i * sizeof(a),
		       sizeof(a));
		uint32_t ix;
		rc = settle_seq_restore_account(
			q, a.id, a.flags & ~(uint32_t)SETTLE_ACCOUNT_HOT_NOW, &ix);
		if (rc == 0)
			rc = settle_ledger_restore(l, ix, &a);
	}
	for (uint64_t i = 0; rc == 0 && i < snap->ids; i++) {
		struct settle_seq_id e;
		memcpy(&e, (const char *)snap->id_data + i * sizeof(e), sizeof(e));
		rc = settle_seq_restore_id(q, &e);
	}
	if (rc == 0 && snap->extra_bytes > 0)
		rc = restore_hot(q, l, snap->extra_data, snap->extra_bytes);
	return rc;
}
