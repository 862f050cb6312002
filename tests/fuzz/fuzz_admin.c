/*
 * fuzz_admin.c - the admin command grammar (admin_parse), fed any bytes:
 * no crash or sanitizer report; a refusal always carries a message; an
 * accepted command carries what its verb needs (an id > 0, a limit in
 * 1..1000, a known sub-command); and parsing is deterministic (the same
 * line parses the same way twice).
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "server_int.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* admin.c hands over a line with a writable byte after it. */
	char *line = malloc(size + 1), *copy = malloc(size + 1);
	memcpy(line, data, size);
	memcpy(copy, data, size);
	struct admin_cmd cmd, again;
	char err[300], err2[300];
	bool ok = admin_parse(line, size, &cmd, err, sizeof(err));
	bool ok2 = admin_parse(copy, size, &again, err2, sizeof(err2));
	FUZZ_CHECK(ok == ok2 && !memcmp(&cmd, &again, sizeof(cmd)) &&
		   !strcmp(err, err2), "two parses of one line differ");
	if (!ok) {
		FUZZ_CHECK(err[0] != '\0', "a refusal without a message");
	} else {
		FUZZ_CHECK(cmd.verb < ADMIN_NVERBS, "verb %d", cmd.verb);
		FUZZ_CHECK(admin_verb_name(cmd.verb) != NULL, "no name");
		switch (cmd.verb) {
		case ADMIN_ACCOUNT:
		case ADMIN_HISTORY:
			FUZZ_CHECK(cmd.id != 0, "id 0 accepted");
			FUZZ_CHECK(cmd.verb != ADMIN_HISTORY ||
				   (cmd.limit >= 1 && cmd.limit <= 1000),
				   "limit %u", cmd.limit);
			break;
		case ADMIN_HOT:
			FUZZ_CHECK(cmd.op >= ADMIN_HOT_LIST && cmd.op <= ADMIN_HOT_DEL &&
				   (cmd.op == ADMIN_HOT_LIST) == (cmd.id == 0),
				   "hot op %d id %lu", cmd.op, (unsigned long)cmd.id);
			break;
		case ADMIN_PEAK:
			FUZZ_CHECK(cmd.op >= ADMIN_PEAK_SHOW && cmd.op <= ADMIN_PEAK_AUTO,
				   "peak op %d", cmd.op);
			break;
		case ADMIN_STORE:
			FUZZ_CHECK(cmd.op >= ADMIN_STORE_SHOW && cmd.op <= ADMIN_STORE_VERIFY,
				   "store op %d", cmd.op);
			break;
		default:
			break;
		}
	}
	free(line);
	free(copy);
	return 0;
}
