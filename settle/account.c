/*
 * account.c - account flag words, shared by the line protocol parser, the
 * admin output and the MariaDB projection so they can never spell a flag
 * two ways.
 */
#include "settle.h"

#include <string.h>

#include "dove.h"

static const struct {
	const char *word;
	uint32_t flag;
} flag_words[] = {
	{ "nonneg", SETTLE_ACCOUNT_NONNEG },
	{ "hot", SETTLE_ACCOUNT_HOT },
};

bool
settle_account_flag_parse(const char *word, size_t len, uint32_t *flag)
{
	DOVE_ASSERT(word != NULL);
	DOVE_ASSERT(flag != NULL);
	for (size_t i = 0; i < sizeof(flag_words) / sizeof(flag_words[0]); i++) {
		if (strlen(flag_words[i].word) == len &&
		    memcmp(flag_words[i].word, word, len) == 0) {
			*flag = flag_words[i].flag;
			return true;
		}
	}
	return false;
}

size_t
settle_account_flags_format(uint32_t flags, char *buf, size_t size)
{
	DOVE_ASSERT(size >= 16);
	/* The flags an account was created with; hot-now is the ledger's. */
	flags &= ~(uint32_t)SETTLE_ACCOUNT_HOT_NOW;
	DOVE_ASSERT((flags & ~(uint32_t)SETTLE_ACCOUNT_FLAGS_ALL) == 0);
	size_t len = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < sizeof(flag_words) / sizeof(flag_words[0]); i++) {
		if (!(flags & flag_words[i].flag))
			continue;
		size_t wl = strlen(flag_words[i].word);
		if (len > 0)
			buf[len++] = ',';
		memcpy(buf + len, flag_words[i].word, wl);
		len += wl;
	}
	if (len == 0)
		buf[len++] = '-';
	buf[len] = '\0';
	DOVE_ASSERT(len < size);
	return len;
}

size_t
settle_u128_text(char *out, unsigned __int128 v)
{
	char tmp[40];
	size_t n = 0;
	do {
		tmp[n++] = (char)('0' + (int)(v % 10));
		v /= 10;
	} while (v != 0);
	for (size_t i = 0; i < n; i++)
		out[i] = tmp[n - 1 - i];
	return n;
}

size_t
settle_i128_text(char *out, __int128 v)
{
	if (v >= 0)
		return settle_u128_text(out, (unsigned __int128)v);
	out[0] = '-';
	/* -(v + 1) + 1: no overflow at the most negative value. */
	return 1 + settle_u128_text(out + 1, (unsigned __int128)(-(v + 1)) + 1);
}
