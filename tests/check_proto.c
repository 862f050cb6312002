/*
 * check_proto.c - the line protocol's grammar and reply formats, line by
 * line, including the parse-level cases of docs/protocol-cases.md.
 */
#include <check.h>
#include <string.h>

#include "harness.h"
#include "server_int.h"

static struct proto_request
parse(const char *line)
{
	struct proto_request r;
	proto_parse(line, strlen(line), &r);
	return r;
}

static const struct {
	const char *line;
	enum proto_verb verb;
} cases[] = {
	{ "PING", PROTO_PING },
	{ "PING\r", PROTO_PING },                 /* case 31 */
	{ "ping", PROTO_BAD },                    /* case 30 */
	{ "PING extra", PROTO_BAD },
	{ "ACCOUNT 1", PROTO_ACCOUNT },
	{ "ACCOUNT 10 nonneg", PROTO_ACCOUNT },
	{ "ACCOUNT 20 nonneg hot", PROTO_ACCOUNT },
	{ "ACCOUNT 20 hot nonneg", PROTO_ACCOUNT },
	{ "ACCOUNT 20 nonneg nonneg", PROTO_BAD },
	{ "ACCOUNT 20 cold", PROTO_BAD },
	{ "ACCOUNT 0", PROTO_BAD },
	{ "ACCOUNT", PROTO_BAD },
	{ "TRANSFER 100 1 10 500", PROTO_TRANSFER },
	{ "TRANSFER 106 1 10 9223372036854775808", PROTO_TRANSFER }, /* 17 */
	{ "TRANSFER 107 1 10 18446744073709551616", PROTO_BAD },    /* 18 */
	{ "TRANSFER 107 1 10 18446744073709551615", PROTO_TRANSFER },
	{ "TRANSFER 0 1 10 5", PROTO_BAD },                          /* 19 */
	{ "TRANSFER 108 1 10", PROTO_BAD },                          /* 20 */
	{ "TRANSFER 109 1 10 -5", PROTO_BAD },                       /* 21 */
	{ "TRANSFER 109 1 10 +5", PROTO_BAD },
	{ "FROB 1 2 3", PROTO_BAD },                                 /* 22 */
	{ "TRANSFER 110 1 10 5 code=2 ref=777", PROTO_TRANSFER },    /* 23 */
	{ "TRANSFER 110 1 10 5 ref=777 code=2 linked", PROTO_TRANSFER },
	{ "TRANSFER 111 1 10 5 colour=red", PROTO_BAD },             /* 24 */
	{ "TRANSFER 111 1 10 5 code=65536", PROTO_BAD },
	{ "TRANSFER 111 1 10 5 code=1 code=2", PROTO_BAD },
	{ "TRANSFER 111 1 10 5 linked linked", PROTO_BAD },
	{ "TRANSFER 111 1 10 5 code=", PROTO_BAD },
	{ "TRANSFER 111 1 0 5", PROTO_BAD },
	{ "TRANSFER 111 1 10 0", PROTO_TRANSFER }, /* zero_amount: sequencer */
	{ "TRANSFER 111 1 10 5x", PROTO_BAD },
	{ "TRANSFER\t111 1 10 5", PROTO_BAD },
	{ "BALANCE 10", PROTO_BALANCE },
	{ "BALANCE", PROTO_BAD },
	{ "BALANCE 10 11", PROTO_BAD },
	{ "", PROTO_BAD },
	{ "   ", PROTO_BAD },
};

START_TEST(grammar)
{
	struct proto_request r = parse(cases[_i].line);
	ck_assert_msg(r.verb == cases[_i].verb, "'%s': verb %d, expected %d",
		      cases[_i].line, r.verb, cases[_i].verb);
}
END_TEST

START_TEST(fields)
{
	struct proto_request r = parse("TRANSFER 110 1 10 5 code=2 ref=777 linked");
	ck_assert_uint_eq(r.transfer.id, 110);
	ck_assert_uint_eq(r.transfer.debit, 1);
	ck_assert_uint_eq(r.transfer.credit, 10);
	ck_assert_uint_eq(r.transfer.amount, 5);
	ck_assert_uint_eq(r.transfer.code, 2);
	ck_assert_uint_eq(r.transfer.ref, 777);
	ck_assert_uint_eq(r.transfer.flags, SETTLE_TRANSFER_LINKED);
	r = parse("ACCOUNT 20 nonneg hot");
	ck_assert_uint_eq(r.account.id, 20);
	ck_assert_uint_eq(r.account.flags,
			  SETTLE_ACCOUNT_NONNEG | SETTLE_ACCOUNT_HOT);
	/* An embedded NUL is refused even when the rest would parse. */
	struct proto_request z;
	proto_parse("PING\0", 5, &z);
	ck_assert_int_eq(z.verb, PROTO_BAD);
}
END_TEST

START_TEST(replies)
{
	char b[PROTO_REPLY_MAX];
	b[proto_ok(b, 100, 7, false)] = 0;
	ck_assert_str_eq(b, "OK 100 7\n");
	b[proto_ok(b, 100, 7, true)] = 0;
	ck_assert_str_eq(b, "OK 100 7 dup\n");
	b[proto_err(b, 0, SETTLE_BAD_REQUEST)] = 0;
	ck_assert_str_eq(b, "ERR - bad_request\n");
	b[proto_err(b, 101, SETTLE_INSUFFICIENT_FUNDS)] = 0;
	ck_assert_str_eq(b, "ERR 101 insufficient_funds\n");
	struct settle_account a = { .id = 10, .flags = SETTLE_ACCOUNT_NONNEG,
				    .credits_posted = 500, .debits_posted = 500 };
	b[proto_bal(b, &a)] = 0;
	ck_assert_str_eq(b, "BAL 10 500 500 0 nonneg\n");
	/* The longest: 128-bit counters near their maximum. */
	a.id = UINT64_MAX;
	a.flags = SETTLE_ACCOUNT_NONNEG | SETTLE_ACCOUNT_HOT;
	a.credits_posted = ~(settle_u128)0;
	a.debits_posted = ~(settle_u128)0;
	a.credits_buffered = ~(settle_u128)0;
	size_t n = proto_bal(b, &a);
	ck_assert_uint_le(n, PROTO_REPLY_MAX);
	b[n] = 0;
	ck_assert_str_eq(b, "BAL 18446744073709551615 "
			    "340282366920938463463374607431768211455 "
			    "340282366920938463463374607431768211455 "
			    "340282366920938463463374607431768211455 nonneg,hot\n");
	b[proto_pong(b)] = 0;
	ck_assert_str_eq(b, "PONG\n");
}
END_TEST

static Suite *
proto_suite(void)
{
	Suite *s = suite_create("proto");
	TCase *tc = tcase_create("parse");
	tcase_add_loop_test(tc, grammar, 0, sizeof(cases) / sizeof(cases[0]));
	tcase_add_test(tc, fields);
	tcase_add_test(tc, replies);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return dh_run_suite(proto_suite());
}
