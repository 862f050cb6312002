/*
 * io.c - the storage layer's system calls that make data durable (write,
 * fdatasync/fsync, rename, directory fsync, fallocate), each behind one
 * wrapper, and the test-only fault switch that can make the n-th call of
 * one of them fail.
 *
 * The switch exists so that tests can show what happens at every call
 * site when the disk says no (docs/testing.md "Fault injection"): doved
 * reads it from the environment (DOVE_FAULT) and logs loudly when it is
 * set. Without it each wrapper is the system call plus one relaxed atomic
 * increment: never on the per-message path (the WAL calls them once per
 * group commit).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dove.h"
#include "store.h"
#include "store_int.h"

static const char *const op_names[STORE_IO_NOPS] = {
	[STORE_IO_WAL_WRITE] = "wal.write",
	[STORE_IO_WAL_SYNC] = "wal.sync",
	[STORE_IO_WAL_SEG_WRITE] = "wal.segwrite",
	[STORE_IO_WAL_SEG_SYNC] = "wal.segsync",
	[STORE_IO_WAL_RENAME] = "wal.rename",
	[STORE_IO_WAL_DIRSYNC] = "wal.dirsync",
	[STORE_IO_WAL_FALLOCATE] = "wal.fallocate",
	[STORE_IO_SNAP_WRITE] = "snap.write",
	[STORE_IO_SNAP_SYNC] = "snap.sync",
	[STORE_IO_SNAP_RENAME] = "snap.rename",
	[STORE_IO_SNAP_DIRSYNC] = "snap.dirsync",
};

#define FAULTS_MAX 8

struct fault {
	enum store_io_op op;
	uint64_t nth;   /* 1-based */
	bool onwards;   /* the nth and every later call */
	int err;        /* errno, or 0: a short write */
	bool half;      /* write half, then fail with err */
};

static struct fault faults[FAULTS_MAX];
static int nfaults;
static _Atomic uint64_t calls[STORE_IO_NOPS];

static bool
is_write(enum store_io_op op)
{
	return op == STORE_IO_WAL_WRITE || op == STORE_IO_WAL_SEG_WRITE ||
	       op == STORE_IO_SNAP_WRITE;
}

int
store_fault_configure(const char *spec, char *err, size_t errlen)
{
	nfaults = 0;
	for (int i = 0; i < STORE_IO_NOPS; i++)
		atomic_store(&calls[i], 0);
	if (spec == NULL || *spec == '\0')
		return 0;
	char buf[512];
	snprintf(buf, sizeof(buf), "%s", spec);
	char *save = NULL;
	for (char *item = strtok_r(buf, ",", &save); item;
	     item = strtok_r(NULL, ",", &save)) {
		char *op = item, *n = strchr(item, ':'), *e = n ? strchr(n + 1, ':') : NULL;
		if (n == NULL || e == NULL || nfaults == FAULTS_MAX)
			goto bad;
		*n++ = '\0';
		*e++ = '\0';
		struct fault f = { .op = STORE_IO_NOPS };
		for (int i = 0; i < STORE_IO_NOPS; i++)
			if (!strcmp(op, op_names[i]))
				f.op = (enum store_io_op)i;
		char *end;
		f.nth = strtoull(n, &end, 10);
		f.onwards = *end == '+';
		if (f.op == STORE_IO_NOPS || f.nth == 0 || end == n ||
		    *(end + f.onwards) != '\0')
			goto bad;
		if (!strcmp(e, "EIO"))
			f.err = EIO;
		else if (!strcmp(e, "ENOSPC"))
			f.err = ENOSPC;
		else if (is_write(f.op) && !strcmp(e, "short"))
			f.err = 0;
		else if (is_write(f.op) && !strcmp(e, "half"))
			f.err = EIO, f.half = true;
		else
			goto bad;
		faults[nfaults++] = f;
	}
	return 0;
bad:
	nfaults = 0;
	snprintf(err, errlen,
		 "bad fault spec '%s': want OP:N[+]:ERR[,...], OP one of "
		 "wal.write wal.sync wal.segwrite wal.segsync wal.rename "
		 "wal.dirsync wal.fallocate "
		 "snap.write snap.sync snap.rename snap.dirsync, ERR EIO, "
		 "ENOSPC or (writes) short or half",
		 spec);
	return -EINVAL;
}

/* Count a call of op; the fault that makes it fail, or NULL. */
static const struct fault *
fault_hit(enum store_io_op op)
{
	uint64_t n = atomic_fetch_add_explicit(&calls[op], 1,
					       memory_order_relaxed) + 1;
	for (int i = 0; i < nfaults; i++) {
		const struct fault *f = &faults[i];
		if (f->op == op && (n == f->nth || (f->onwards && n > f->nth))) {
			DOVE_WARN("fault injection: %s call %" PRIu64 " fails (%s%s)",
				  op_names[op], n, f->half ? "half written, " : "",
				  f->err ? dove_strerror(-f->err) : "short write");
			return f;
		}
	}
	return NULL;
}

/* The error of a failing call that does no I/O: errno set, -1. */
static int
fail(const struct fault *f)
{
	errno = f->err;
	return -1;
}

ssize_t
store_io_pwrite(enum store_io_op op, int fd, const void *buf, size_t n,
		off_t off)
{
	const struct fault *f = fault_hit(op);
	if (f != NULL && f->err != 0 && !f->half)
		return fail(f);
	if (f != NULL)
		n /= 2; /* short, or half and then the device fails */
	ssize_t r = off < 0 ? write(fd, buf, n) : pwrite(fd, buf, n, off);
	if (f != NULL && f->half && r >= 0)
		return fail(f);
	return r; /* a short write of 1 byte writes 0: callers call that EIO */
}

int
store_io_sync(enum store_io_op op, int fd, bool data_only)
{
	const struct fault *f = fault_hit(op);
	if (f != NULL)
		return fail(f);
	return data_only ? fdatasync(fd) : fsync(fd);
}

int
store_io_rename(enum store_io_op op, const char *from, const char *to)
{
	const struct fault *f = fault_hit(op);
	if (f != NULL)
		return fail(f);
	return rename(from, to);
}

int
store_io_fsync_dir(enum store_io_op op, const char *dir)
{
	const struct fault *f = fault_hit(op);
	if (f != NULL)
		return -f->err;
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return rc;
}

int
store_io_fallocate(int fd, off_t len)
{
	const struct fault *f = fault_hit(STORE_IO_WAL_FALLOCATE);
	if (f != NULL)
		return fail(f);
	return fallocate(fd, 0, 0, len);
}
