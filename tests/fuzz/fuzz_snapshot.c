/*
 * fuzz_snapshot.c - the snapshot loader (store_snap_load_newest) and the
 * restore into an empty sequencer and ledger (store_snap_restore, which
 * parses the extra section: peak, the hot set, open buffers), fed any
 * file.
 *
 * Input: one flag byte, then the file. Flag 1 = recompute the trailer's
 * checksum over what is there (else the fuzzer would seldom get past it).
 * The file is named by its header's epoch.
 *
 * Properties: no crash or sanitizer report; a restored state writes back
 * (store_snap_write_state) to a snapshot that loads and restores to the
 * same counts of accounts and ids.
 */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <string.h>

#include "dove.h"
#include "fuzz.h"
#include "store.h"
#include "store_int.h"

struct state {
	settle_seq *q;
	settle_ledger *l;
};

static void
state_new(struct state *s)
{
	int rc = settle_seq_create(256, 256, 16, &s->q);
	FUZZ_CHECK(rc == 0, "seq %d", rc);
	rc = settle_ledger_create(256, 1, 16, &s->l);
	FUZZ_CHECK(rc == 0, "ledger %d", rc);
}

static void
state_free(struct state *s)
{
	settle_seq_destroy(s->q);
	settle_ledger_destroy(s->l);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	fuzz_clear();
	const char *dir = fuzz_dir();
	size_t n = size - 1;
	unsigned char *b = malloc(n ? n : 1);
	memcpy(b, data + 1, n);
	uint64_t epoch = 1;
	uint32_t version = 0;
	if (n >= 24) {
		memcpy(&version, b + 8, 4);
		memcpy(&epoch, b + 16, 8);
	}
	size_t hb = version == 1 ? SNAP_V1_HEADER : sizeof(struct snap_header);
	const size_t tb = sizeof(struct snap_trailer);
	if ((data[0] & 1) && n >= hb + tb) {
		uint32_t crc = store_crc32c(0, b + hb, n - hb - tb);
		crc = store_crc32c(crc, b, hb);
		memcpy(b + n - tb + offsetof(struct snap_trailer, crc), &crc, 4);
	}
	char path[512];
	snprintf(path, sizeof(path), "%s/snap-%020" PRIu64 ".snap", dir, epoch);
	fuzz_write(path, b, n);
	free(b);

	struct store_snap snap;
	int rc = store_snap_load_newest(dir, &snap);
	if (rc != 1)
		return 0;
	struct state s;
	state_new(&s);
	rc = store_snap_restore(&snap, s.q, s.l);
	uint64_t e = snap.epoch, lsn = snap.next_lsn;
	store_snap_release(&snap);
	if (rc != 0) {
		FUZZ_CHECK(rc == -ENOSPC || rc == -EINVAL, "restore: %d", rc);
		state_free(&s);
		return 0;
	}

	/* Write the restored state back and restore that. */
	fuzz_clear();
	rc = store_snap_write_state(dir, e, lsn, s.q, s.l);
	FUZZ_CHECK(rc == 0, "write back: %d", rc);
	rc = store_snap_load_newest(dir, &snap);
	FUZZ_CHECK(rc == 1, "the written-back snapshot does not load: %d", rc);
	struct state t;
	state_new(&t);
	rc = store_snap_restore(&snap, t.q, t.l);
	FUZZ_CHECK(rc == 0, "the written-back snapshot does not restore: %d", rc);
	FUZZ_CHECK(settle_seq_accounts(s.q) == settle_seq_accounts(t.q),
		   "accounts %u, then %u", settle_seq_accounts(s.q),
		   settle_seq_accounts(t.q));
	FUZZ_CHECK(settle_seq_remembered(s.q) == settle_seq_remembered(t.q),
		   "ids %u, then %u", settle_seq_remembered(s.q),
		   settle_seq_remembered(t.q));
	FUZZ_CHECK(settle_seq_hot_count(s.q) == settle_seq_hot_count(t.q),
		   "hot %u, then %u", settle_seq_hot_count(s.q),
		   settle_seq_hot_count(t.q));
	store_snap_release(&snap);
	state_free(&s);
	state_free(&t);
	return 0;
}

/* A skipped snapshot is a warning per input: noise here. */
__attribute__((constructor)) static void
quiet(void)
{
	dove_log_set_level(DOVE_LOG_ERROR);
}
