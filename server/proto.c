/*
 * proto.c - the line protocol's grammar and reply formats (DESIGN.md
 * "Interfaces", docs/protocol-cases.md). Parsing is strict: anything not
 * exactly in the grammar is bad_request, because a settlement request that
 * means something other than what its sender meant is worse than none.
 */
#include <string.h>

#include "dove.h"
#include "server_int.h"

struct tok {
	const char *p;
	size_t n;
};

/* Split on single or repeated spaces; at most max tokens (one more
 * means too many). */
static int
split(const char *s, size_t len, struct tok *t, int max)
{
	int n = 0;
	size_t i = 0;
	while (i < len) {
		while (i < len && s[i] == ' ')
			i++;
		if (i == len)
			break;
		if (n == max)
			return max + 1;
		t[n].p = s + i;
		while (i < len && s[i] != ' ')
			i++;
		t[n].n = (size_t)(s + i - t[n].p);
		n++;
	}
	return n;
}

static bool
tok_is(const struct tok *t, const char *word)
{
	return t->n == strlen(word) && memcmp(t->p, word, t->n) == 0;
}

/* Unsigned decimal u64: digits only, no sign, no overflow. */
static bool
parse_u64(const char *p, size_t n, uint64_t *out)
{
	if (n == 0 || n > 20)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		uint64_t d = (uint64_t)(p[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

static bool
tok_u64(const struct tok *t, uint64_t *out)
{
	return parse_u64(t->p, t->n, out);
}

static bool
tok_id(const struct tok *t, uint64_t *out)
{
	return tok_u64(t, out) && *out != 0;
}

/* "key=<u64>" */
static bool
tok_opt(const struct tok *t, const char *key, uint64_t *out)
{
	size_t k = strlen(key);
	return t->n > k + 1 && memcmp(t->p, key, k) == 0 && t->p[k] == '=' &&
	       parse_u64(t->p + k + 1, t->n - k - 1, out);
}

void
proto_parse(const char *line, size_t len, struct proto_request *r)
{
	memset(r, 0, sizeof(*r));
	r->verb = PROTO_BAD;
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (memchr(line, '\0', len) != NULL || memchr(line, '\t', len) != NULL)
		return;
	struct tok t[10];
	int n = split(line, len, t, 9);
	if (n < 1 || n > 9)
		return;

	if (tok_is(&t[0], "PING")) {
		if (n == 1)
			r->verb = PROTO_PING;
		return;
	}
	if (tok_is(&t[0], "BALANCE")) {
		if (n == 2 && tok_id(&t[1], &r->id))
			r->verb = PROTO_BALANCE;
		return;
	}
	if (tok_is(&t[0], "ACCOUNT")) {
		if (n < 2 || n > 4 || !tok_id(&t[1], &r->account.id))
			return;
		for (int i = 2; i < n; i++) {
			uint32_t f;
			if (!settle_account_flag_parse(t[i].p, t[i].n, &f) ||
			    (r->account.flags & f))
				return; /* unknown or repeated flag */
			r->account.flags |= f;
		}
		r->id = r->account.id;
		r->verb = PROTO_ACCOUNT;
		return;
	}
	if (tok_is(&t[0], "TRANSFER")) {
		struct settle_transfer *x = &r->transfer;
		if (n < 5 || !tok_id(&t[1], &x->id) || !tok_id(&t[2], &x->debit) ||
		    !tok_id(&t[3], &x->credit) || !tok_u64(&t[4], &x->amount))
			return;
		bool have_code = false, have_ref = false;
		for (int i = 5; i < n; i++) {
			uint64_t v;
			if (!have_code && tok_opt(&t[i], "code", &v) &&
			    v <= UINT16_MAX) {
				x->code = (uint16_t)v;
				have_code = true;
			} else if (!have_ref && tok_opt(&t[i], "ref", &v)) {
				x->ref = v;
				have_ref = true;
			} else if (tok_is(&t[i], "linked") &&
				   !(x->flags & SETTLE_TRANSFER_LINKED)) {
				x->flags |= SETTLE_TRANSFER_LINKED;
			} else {
				return;
			}
		}
		r->id = x->id;
		r->verb = PROTO_TRANSFER;
		return;
	}
	/* Unknown verb (verbs are upper case: "ping" lands here). */
}

size_t
proto_ok(char *buf, uint64_t id, uint64_t epoch, bool dup)
{
	size_t n = 0;
	memcpy(buf, "OK ", 3);
	n = 3;
	n += settle_u128_text(buf + n, id);
	buf[n++] = ' ';
	n += settle_u128_text(buf + n, epoch);
	if (dup) {
		memcpy(buf + n, " dup", 4);
		n += 4;
	}
	buf[n++] = '\n';
	DOVE_ASSERT(n <= PROTO_REPLY_MAX);
	return n;
}

size_t
proto_err(char *buf, uint64_t id, enum settle_result r)
{
	DOVE_ASSERT(r != SETTLE_OK);
	size_t n = 4;
	memcpy(buf, "ERR ", 4);
	if (id == 0)
		buf[n++] = '-';
	else
		n += settle_u128_text(buf + n, id);
	buf[n++] = ' ';
	const char *name = settle_result_name(r);
	memcpy(buf + n, name, strlen(name));
	n += strlen(name);
	buf[n++] = '\n';
	DOVE_ASSERT(n <= PROTO_REPLY_MAX);
	return n;
}

size_t
proto_bal(char *buf, const struct settle_account *a)
{
	size_t n = 4;
	memcpy(buf, "BAL ", 4);
	n += settle_u128_text(buf + n, a->id);
	buf[n++] = ' ';
	n += settle_u128_text(buf + n, a->credits_posted);
	buf[n++] = ' ';
	n += settle_u128_text(buf + n, a->debits_posted);
	buf[n++] = ' ';
	n += settle_u128_text(buf + n, a->credits_buffered);
	buf[n++] = ' ';
	n += settle_account_flags_format(a->flags, buf + n, PROTO_REPLY_MAX - n);
	buf[n++] = '\n';
	DOVE_ASSERT(n <= PROTO_REPLY_MAX);
	return n;
}

size_t
proto_pong(char *buf)
{
	memcpy(buf, "PONG\n", 5);
	return 5;
}
