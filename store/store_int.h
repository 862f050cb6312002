/*
 * store_int.h - declarations shared inside store/ (and its tests): the
 * CRC-32C implementations and the on-disk layout of WAL segments and
 * epochs. docs/wal-format.md describes the same bytes for humans.
 */
#ifndef STORE_INT_H
#define STORE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* CRC-32C of len bytes, continuing from crc (0 to start). */
uint32_t store_crc32c(uint32_t crc, const void *data, size_t len);
/* The table implementation, always available (tests compare the two). */
uint32_t store_crc32c_sw(uint32_t crc, const void *data, size_t len);
bool store_crc32c_hw_available(void);

#define WAL_SEG_MAGIC 0x314c415745564f44ull /* "DOVEWAL1" */
#define WAL_EPOCH_MAGIC 0x48435045u         /* "EPCH" */
/* A segment's last word once the next segment exists: an epoch header
 * with this magic, count = length = 0, and the next segment's first
 * epoch and LSN. Recovery then knows the log goes on, so a lost newest
 * segment is found, not taken for the end of the log. */
#define WAL_SEAL_MAGIC 0x4c414553u          /* "SEAL" */
/* Bytes reserved at the end of every segment for its seal. */
#define WAL_SEAL_BYTES 48u
/* The unit a device persists whole (a crash leaves each sector either
 * old or new): how a torn write is told from damage. */
#define WAL_SECTOR 512u
/* wal.anchor: written once, when the first segment of a log is made.
 * A directory with it and no segment has lost its log. */
#define WAL_ANCHOR_NAME "wal.anchor"
#define WAL_ANCHOR_MAGIC 0x484e414c41574f44ull /* "DOWALANH" */
#define WAL_FORMAT_VERSION 1u

/* First 64 bytes of every segment file. Little-endian, as all of it. */
struct wal_seg_header {
	uint64_t magic;
	uint32_t version;
	uint32_t header_bytes;  /* sizeof(struct wal_seg_header) */
	uint64_t first_epoch;   /* also in the file name */
	uint64_t first_lsn;
	uint64_t segment_bytes; /* preallocated size */
	uint64_t created_ns;    /* CLOCK_REALTIME */
	uint32_t crc;           /* CRC-32C of this header with crc = 0 */
	uint32_t pad[3];
};
_Static_assert(sizeof(struct wal_seg_header) == 64, "segment header");

/* Every epoch starts with this, followed by `length` bytes of records. */
struct wal_epoch_header {
	uint32_t magic;
	uint16_t version;
	uint16_t flags;     /* 0 */
	uint64_t epoch;
	uint64_t first_lsn;
	uint32_t count;     /* records */
	uint32_t length;    /* payload bytes after this header */
	uint64_t time_ns;   /* the sequencer's wall clock at commit */
	uint32_t crc;       /* CRC-32C of header (crc = 0) and payload */
	uint32_t reserved;  /* 0 */
};
_Static_assert(sizeof(struct wal_epoch_header) == 48, "epoch header");

struct wal_anchor {
	uint64_t magic;
	uint32_t version;   /* 1 */
	uint32_t crc;       /* CRC-32C of these 32 bytes with crc = 0 */
	uint64_t created_ns;
	uint64_t first_epoch; /* of the log's first segment */
};
_Static_assert(sizeof(struct wal_anchor) == 32, "anchor");

/* Every record: this, then len bytes, then zeros to a multiple of 8. */
struct wal_record_header {
	uint16_t type; /* not 0 */
	uint16_t flags; /* 0 */
	uint32_t len;
};
_Static_assert(sizeof(struct wal_record_header) == 8, "record header");

#define WAL_ALIGN(n) (((n) + 7u) & ~(size_t)7u)

/* ---- snapshot file format (docs/snapshot-format.md) ------------------------ */

#define SNAP_MAGIC 0x31504e5345564f44ull /* "DOVESNP1" */
#define SNAP_TRAILER_MAGIC 0x444e455045564f44ull /* "DOVEPEND" */

struct snap_header {
	uint64_t magic;
	uint32_t version;
	uint32_t header_bytes;
	uint64_t epoch;
	uint64_t next_lsn;
	uint64_t accounts;
	uint64_t ids;
	uint64_t created_ns;
	uint32_t account_bytes; /* sizeof(struct settle_account) */
	uint32_t id_bytes;      /* sizeof(struct settle_seq_id) */
	/* Version 2 on (version 1 ends above, 64 bytes): */
	uint64_t extra_bytes; /* the caller's section after the ids */
	uint64_t reserved;    /* 0 */
};
_Static_assert(sizeof(struct snap_header) == 80, "snapshot header");
#define SNAP_V1_HEADER 64u

struct snap_trailer {
	uint32_t crc; /* CRC-32C of the body, continued over the header */
	uint32_t pad;
	uint64_t magic;
};
_Static_assert(sizeof(struct snap_trailer) == 16, "snapshot trailer");


/* ---- durable I/O and the fault switch (io.c) ------------------------------ */

#include <sys/types.h>

/* Call sites by kind, for the fault switch's counters. */
enum store_io_op {
	STORE_IO_WAL_WRITE,     /* an epoch */
	STORE_IO_WAL_SYNC,      /* an epoch's fdatasync */
	STORE_IO_WAL_SEG_WRITE, /* anchor, segment header, seal, tail zeroing */
	STORE_IO_WAL_SEG_SYNC,  /* their fdatasync */
	STORE_IO_WAL_RENAME,
	STORE_IO_WAL_DIRSYNC,
	STORE_IO_WAL_FALLOCATE,
	STORE_IO_SNAP_WRITE,
	STORE_IO_SNAP_SYNC,
	STORE_IO_SNAP_RENAME,
	STORE_IO_SNAP_DIRSYNC,
	STORE_IO_NOPS
};

/* Each is the system call (pwrite; write when off < 0; fdatasync or
 * fsync; rename; fallocate from 0) and returns like it, unless the fault
 * switch makes this call fail. store_io_fsync_dir opens, fsyncs and
 * closes dir and returns 0 or -errno. */
ssize_t store_io_pwrite(enum store_io_op op, int fd, const void *buf,
			size_t n, off_t off);
int store_io_sync(enum store_io_op op, int fd, bool data_only);
int store_io_rename(enum store_io_op op, const char *from, const char *to);
int store_io_fsync_dir(enum store_io_op op, const char *dir);
int store_io_fallocate(int fd, off_t len);

#endif
