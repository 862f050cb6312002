/*
 * dove-wal - inspect a write-ahead log directory without changing it.
 *
 *   dove-wal verify DIR                      check every epoch; exit 0 if the
 *                                            log is sound (a torn tail is
 *                                            reported and is sound: it was
 *                                            never acknowledged), 1 if corrupt
 *   dove-wal dump DIR [--from E] [--count N] epochs and records, readable
 *   dove-wal stat DIR                        segments, sizes, epochs, records
 *
 * It uses only store.h's public scan, the same code doved recovers with.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "dove.h"
#include "store.h"

static void
usage(FILE *f)
{
	fprintf(f,
		"usage: dove-wal verify DIR\n"
		"       dove-wal dump DIR [--from EPOCH] [--count N]\n"
		"       dove-wal stat DIR\n"
		"\n"
		"Reads a Dove WAL directory (doved's [wal] dir) and changes nothing.\n"
		"exit status: 0 sound (a torn tail is sound: never acknowledged),\n"
		"1 corrupt, 2 usage or I/O error\n");
}

static void
print_stop(const struct store_wal_scan *s)
{
	if (s->status == 1)
		printf("torn tail: %s at byte offset %" PRIu64 " (epoch %" PRIu64
		       " incomplete, never acknowledged; doved cuts it on "
		       "start): %s\n",
		       s->file, s->offset, s->epoch, s->reason);
	else if (s->status < 0)
		printf("CORRUPT: %s at byte offset %" PRIu64 " (expected epoch %" PRIu64
		       "): %s\n",
		       s->file, s->offset, s->epoch, s->reason);
}

static int
cmd_verify(const char *dir)
{
	struct store_wal_scan s;
	int rc = store_wal_scan(dir, UINT64_MAX, NULL, NULL, &s);
	if (rc != 0) {
		fprintf(stderr, "dove-wal: %s\n", s.reason);
		return 2;
	}
	if (s.epochs == 0)
		printf("%s: empty log (%u segments)\n", dir, s.segments);
	else
		printf("%s: epochs %" PRIu64 "..%" PRIu64 ", lsn up to %" PRIu64
		       ", %" PRIu64 " records, %" PRIu64 " bytes, %u segments\n",
		       dir, s.first_epoch, s.last_epoch, s.next_lsn - 1,
		       s.records, s.bytes, s.segments);
	print_stop(&s);
	if (s.status < 0)
		return 1;
	if (s.first_epoch > 1)
		printf("note: the log starts at epoch %" PRIu64 "; a snapshot "
		       "at epoch %" PRIu64 " or later must hold what came "
		       "before (doved checks that at start)\n",
		       s.first_epoch, s.first_epoch - 1);
	printf("ok\n");
	return 0;
}

struct dump {
	uint64_t left;
};

static int
dump_epoch(void *arg, const struct store_wal_epoch *ep)
{
	struct dump *d = arg;
	if (d->left == 0)
		return 1; /* enough: stop the scan */
	d->left--;
	char when[64];
	time_t sec = (time_t)(ep->time_ns / 1000000000u);
	struct tm tm;
	gmtime_r(&sec, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
	printf("epoch %" PRIu64 "  lsn %" PRIu64 "..%" PRIu64 "  %u records  "
	       "%u bytes  %s.%06" PRIu64 "Z  %s@%" PRIu64 "\n",
	       ep->epoch, ep->first_lsn, ep->first_lsn + ep->count - 1,
	       ep->count, ep->length, when,
	       (ep->time_ns % 1000000000u) / 1000, ep->file, ep->offset);
	size_t off = 0;
	struct store_wal_record r;
	uint64_t lsn = ep->first_lsn;
	while (store_wal_record_next(ep, &off, &r)) {
		printf("  lsn %" PRIu64 "  type %u  len %u ", lsn++, r.type,
		       r.len);
		const unsigned char *p = r.data;
		for (uint32_t i = 0; i < r.len && i < 32; i++)
			printf("%s%02x", i % 8 ? "" : " ", p[i]);
		printf("%s\n", r.len > 32 ? " ..." : "");
	}
	return 0;
}

static int
cmd_dump(const char *dir, uint64_t from, uint64_t count)
{
	struct dump d = { count };
	struct store_wal_scan s;
	int rc = store_wal_scan(dir, from, dump_epoch, &d, &s);
	if (rc < 0) {
		fprintf(stderr, "dove-wal: %s\n", s.reason);
		return 2;
	}
	if (rc == 0)
		print_stop(&s);
	return rc == 0 && s.status < 0 ? 1 : 0;
}

static int
cmd_stat(const char *dir)
{
	struct store_wal_scan s;
	int rc = store_wal_scan(dir, UINT64_MAX, NULL, NULL, &s);
	if (rc != 0) {
		fprintf(stderr, "dove-wal: %s\n", s.reason);
		return 2;
	}
	DIR *d = opendir(dir);
	if (d == NULL) {
		fprintf(stderr, "dove-wal: %s: %s\n", dir, strerror(errno));
		return 2;
	}
	struct dirent *e;
	uint64_t total = 0;
	printf("%-36s %12s\n", "segment", "bytes");
	while ((e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, "wal-", 4) != 0)
			continue;
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		struct stat st;
		if (stat(path, &st) == 0) {
			printf("%-36s %12lld\n", e->d_name, (long long)st.st_size);
			total += (uint64_t)st.st_size;
		}
	}
	closedir(d);
	printf("\nsegments      %u (%" PRIu64 " bytes on disk)\n", s.segments,
	       total);
	printf("epochs        %" PRIu64 " (%" PRIu64 "..%" PRIu64 ")\n",
	       s.epochs, s.first_epoch, s.last_epoch);
	printf("records       %" PRIu64 "\n", s.records);
	printf("log bytes     %" PRIu64 "\n", s.bytes);
	if (s.epochs > 0)
		printf("records/epoch %.1f\n", (double)s.records / (double)s.epochs);
	print_stop(&s);
	return s.status < 0 ? 1 : 0;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "from", required_argument, NULL, 'f' },
		{ "count", required_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t from = 1, count = UINT64_MAX;
	int ch;
	while ((ch = getopt_long(argc, argv, "f:n:h", opts, NULL)) != -1) {
		switch (ch) {
		case 'f': from = strtoull(optarg, NULL, 10); break;
		case 'n': count = strtoull(optarg, NULL, 10); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (argc - optind != 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[optind], *dir = argv[optind + 1];
	if (strcmp(cmd, "verify") == 0)
		return cmd_verify(dir);
	if (strcmp(cmd, "dump") == 0)
		return cmd_dump(dir, from, count);
	if (strcmp(cmd, "stat") == 0)
		return cmd_stat(dir);
	fprintf(stderr, "dove-wal: unknown command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
