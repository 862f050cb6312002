/*
 * crc32c.c - CRC-32C (Castagnoli), the checksum of WAL epochs and
 * snapshots. Uses the SSE4.2 crc32 instruction when the CPU has it (checked
 * once at start-up), and a slicing-by-8 table otherwise. Both give the same
 * value; a test compares them on random data.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "store_int.h"

static uint32_t table[8][256];
static bool use_hw;

static void __attribute__((constructor))
crc32c_init_table(void)
{
#if defined(__x86_64__)
	__builtin_cpu_init();
	use_hw = __builtin_cpu_supports("sse4.2");
#endif
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
		table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			table[t][i] = (table[t - 1][i] >> 8) ^
				      table[0][table[t - 1][i] & 0xff];
}

uint32_t
store_crc32c_sw(uint32_t crc, const void *data, size_t len)
{
	const unsigned char *p = data;
	crc = ~crc;
	while (len >= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		v ^= crc;
		crc = table[7][v & 0xff] ^ table[6][(v >> 8) & 0xff] ^
		      table[5][(v >> 16) & 0xff] ^ table[4][(v >> 24) & 0xff] ^
		      table[3][(v >> 32) & 0xff] ^ table[2][(v >> 40) & 0xff] ^
		      table[1][(v >> 48) & 0xff] ^ table[0][v >> 56];
		p += 8;
		len -= 8;
	}
	while (len--)
		crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
	return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t
crc32c_hw(uint32_t crc, const void *data, size_t len)
{
	const unsigned char *p = data;
	uint64_t c = ~crc;
	while (len >= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		c = __builtin_ia32_crc32di(c, v);
		p += 8;
		len -= 8;
	}
	uint32_t c32 = (uint32_t)c;
	while (len--)
		c32 = __builtin_ia32_crc32qi(c32, *p++);
	return ~c32;
}

bool
store_crc32c_hw_available(void)
{
	return use_hw;
}

uint32_t
store_crc32c(uint32_t crc, const void *data, size_t len)
{
	/* use_hw is written once, by the constructor, before main(). */
	return use_hw ? crc32c_hw(crc, data, len)
		      : store_crc32c_sw(crc, data, len);
}
#else
bool
store_crc32c_hw_available(void)
{
	return false;
}

uint32_t
store_crc32c(uint32_t crc, const void *data, size_t len)
{
	return store_crc32c_sw(crc, data, len);
}
#endif
