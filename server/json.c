/*
 * json.c - a tiny append-only JSON writer for admin replies. It writes into
 * a caller's fixed buffer (no allocation) and only ever produces valid,
 * compact JSON with every string escaped, because admin replies echo back
 * whatever a client sent.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "dove.h"
#include "server.h"
#include "settle.h"

void
json_init(struct json_buf *j, char *buf, size_t cap)
{
	DOVE_ASSERT(buf != NULL && cap > 0);
	memset(j, 0, sizeof(*j));
	j->buf = buf;
	j->cap = cap;
	j->first[0] = true;
	buf[0] = '\0';
}

static void
put(struct json_buf *j, const char *s, size_t n)
{
	if (j->overflow || j->len + n + 1 > j->cap) {
		j->overflow = true;
		return;
	}
	memcpy(j->buf + j->len, s, n);
	j->len += n;
	j->buf[j->len] = '\0';
}

/* Before a value or key: a comma unless it is the first in its level. A
 * value right after a key never takes one. */
static void
sep(struct json_buf *j)
{
	if (!j->first[j->depth])
		put(j, ",", 1);
	j->first[j->depth] = false;
}

static void
open_level(struct json_buf *j, const char *c)
{
	put(j, c, 1);
	DOVE_ASSERT(j->depth + 1 < (int)(sizeof(j->first) / sizeof(j->first[0])));
	j->depth++;
	j->first[j->depth] = true;
}

static void
close_level(struct json_buf *j, const char *c)
{
	DOVE_ASSERT(j->depth > 0);
	j->depth--;
	put(j, c, 1);
}

/* Keys set this flag so that the value after them skips sep(). */
static bool
after_key(struct json_buf *j)
{
	if (j->len > 0 && j->buf[j->len - 1] == ':' && !j->overflow)
		return true;
	return false;
}

static void
value_prefix(struct json_buf *j)
{
	if (!after_key(j))
		sep(j);
}

void
json_obj_begin(struct json_buf *j)
{
	value_prefix(j);
	open_level(j, "{");
}

void
json_obj_end(struct json_buf *j)
{
	close_level(j, "}");
}

void
json_arr_begin(struct json_buf *j)
{
	value_prefix(j);
	open_level(j, "[");
}

void
json_arr_end(struct json_buf *j)
{
	close_level(j, "]");
}

/*
 * The length of the well-formed UTF-8 sequence at s (n bytes left), or 0
 * if it is not one (a stray continuation byte, a truncated sequence, an
 * overlong form, a surrogate, past U+10FFFF). RFC 3629.
 */
static size_t
utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t len;
	uint32_t cp;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2, cp = c & 0x1f;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3, cp = c & 0x0f;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4, cp = c & 0x07;
	else
		return 0;
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
	    (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
		return 0;
	return len;
}

static void
put_escaped(struct json_buf *j, const char *s, size_t n)
{
	put(j, "\"", 1);
	for (size_t i = 0; i < n;) {
		unsigned char ch = (unsigned char)s[i];
		char esc[8];
		if (ch == '"' || ch == '\\') {
			esc[0] = '\\';
			esc[1] = (char)ch;
			put(j, esc, 2);
			i++;
		} else if (ch < 0x20 || ch == 0x7f) {
			snprintf(esc, sizeof(esc), "\\u%04x", ch);
			put(j, esc, 6);
			i++;
		} else {
			/* Replies echo what clients sent: bytes that are not
			 * UTF-8 become U+FFFD, so the reply stays JSON. */
			size_t len = utf8_seq((const unsigned char *)s + i, n - i);
			if (len == 0) {
				put(j, "\\ufffd", 6);
				i++;
			} else {
				put(j, s + i, len);
				i += len;
			}
		}
	}
	put(j, "\"", 1);
}

void
json_key(struct json_buf *j, const char *key)
{
	sep(j);
	put_escaped(j, key, strlen(key));
	put(j, ":", 1);
}

void
json_strn(struct json_buf *j, const char *s, size_t n)
{
	value_prefix(j);
	put_escaped(j, s, n);
}

void
json_str(struct json_buf *j, const char *s)
{
	json_strn(j, s, strlen(s));
}

void
json_i64(struct json_buf *j, int64_t v)
{
	char b[24];
	int n = snprintf(b, sizeof(b), "%" PRId64, v);
	value_prefix(j);
	put(j, b, (size_t)n);
}

void
json_u64(struct json_buf *j, uint64_t v)
{
	char b[24];
	int n = snprintf(b, sizeof(b), "%" PRIu64, v);
	value_prefix(j);
	put(j, b, (size_t)n);
}

void
json_u128(struct json_buf *j, unsigned __int128 v)
{
	char b[48];
	json_strn(j, b, settle_u128_text(b, v));
}

void
json_i128(struct json_buf *j, __int128 v)
{
	char b[48];
	json_strn(j, b, settle_i128_text(b, v));
}

void
json_bool(struct json_buf *j, bool v)
{
	value_prefix(j);
	put(j, v ? "true" : "false", v ? 4 : 5);
}

void
json_null(struct json_buf *j)
{
	value_prefix(j);
	put(j, "null", 4);
}

void
json_kv_u64(struct json_buf *j, const char *key, uint64_t v)
{
	json_key(j, key);
	json_u64(j, v);
}

void
json_kv_i64(struct json_buf *j, const char *key, int64_t v)
{
	json_key(j, key);
	json_i64(j, v);
}

void
json_kv_str(struct json_buf *j, const char *key, const char *s)
{
	json_key(j, key);
	json_str(j, s);
}

void
json_kv_bool(struct json_buf *j, const char *key, bool v)
{
	json_key(j, key);
	json_bool(j, v);
}
