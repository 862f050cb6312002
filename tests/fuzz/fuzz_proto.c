/*
 * fuzz_proto.c - the line protocol's parser (proto_parse), fed any bytes.
 * Properties beyond "no crash, no sanitizer report": a request that parses
 * prints back (canonically) to a line that parses to the same request, and
 * ids are never 0; the reply writers stay within PROTO_REPLY_MAX for any
 * numbers.
 */
#include <stdio.h>
#include <string.h>

#include "fuzz.h"
#include "server_int.h"

/* The canonical text of a parsed request. */
static size_t
print(const struct proto_request *r, char *b, size_t cap)
{
	const struct settle_transfer *x = &r->transfer;
	int n = 0;
	switch (r->verb) {
	case PROTO_PING:
		n = snprintf(b, cap, "PING");
		break;
	case PROTO_BALANCE:
		n = snprintf(b, cap, "BALANCE %lu", (unsigned long)r->id);
		break;
	case PROTO_ACCOUNT:
		n = snprintf(b, cap, "ACCOUNT %lu%s%s", (unsigned long)r->account.id,
			     r->account.flags & SETTLE_ACCOUNT_NONNEG ? " nonneg" : "",
			     r->account.flags & SETTLE_ACCOUNT_HOT ? " hot" : "");
		break;
	case PROTO_TRANSFER:
		n = snprintf(b, cap, "TRANSFER %lu %lu %lu %lu code=%u ref=%lu%s",
			     (unsigned long)x->id, (unsigned long)x->debit,
			     (unsigned long)x->credit, (unsigned long)x->amount,
			     x->code, (unsigned long)x->ref,
			     x->flags & SETTLE_TRANSFER_LINKED ? " linked" : "");
		break;
	default:
		break;
	}
	return (size_t)n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proto_request r, again;
	proto_parse((const char *)data, size, &r);
	FUZZ_CHECK(r.verb >= PROTO_BAD && r.verb <= PROTO_BALANCE, "verb %d", r.verb);
	if (r.verb == PROTO_BAD)
		return 0;
	if (r.verb == PROTO_TRANSFER)
		FUZZ_CHECK(r.transfer.id && r.transfer.debit && r.transfer.credit &&
			   r.id == r.transfer.id, "a transfer with a 0 id");
	if (r.verb == PROTO_ACCOUNT || r.verb == PROTO_BALANCE)
		FUZZ_CHECK(r.id != 0, "an account id 0");

	char line[256];
	size_t n = print(&r, line, sizeof(line));
	proto_parse(line, n, &again);
	FUZZ_CHECK(memcmp(&r, &again, sizeof(r)) == 0,
		   "'%.*s' parses to another request than its source", (int)n, line);

	/* The reply writers, with numbers taken from the request. */
	char reply[PROTO_REPLY_MAX];
	FUZZ_CHECK(proto_ok(reply, r.id, r.transfer.amount, true) <= PROTO_REPLY_MAX,
		   "OK reply too long");
	struct settle_account a = { .id = r.id };
	a.credits_posted = ~(settle_u128)0;
	a.debits_posted = (settle_u128)r.transfer.amount << 64;
	a.credits_buffered = ~(settle_u128)0;
	FUZZ_CHECK(proto_bal(reply, &a) <= PROTO_REPLY_MAX, "BAL reply too long");
	return 0;
}
