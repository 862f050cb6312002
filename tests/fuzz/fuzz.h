/*
 * fuzz.h - what the fuzz targets share: the libFuzzer entry point, a
 * private scratch directory per process (targets whose code under test
 * reads files write their input there), and the fix-ups that let mutated
 * inputs past a checksum so the fuzzer reaches the parsing behind it.
 *
 * A target is built two ways (tests/fuzz/CMakeLists.txt): with libFuzzer
 * in the clang build (DOVE_FUZZ=ON, tools/fuzz), and in every other build
 * with replay.c's main, which runs the kept corpus once as a test.
 */
#ifndef DOVE_FUZZ_H
#define DOVE_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property of the code under test does not hold: report and abort, so
 * libFuzzer keeps the input (and replay fails). Not assert(): it stays in
 * release builds. */
#define FUZZ_CHECK(cond, ...)                                                 \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "fuzz check failed: %s (%s:%d): ",    \
				#cond, __FILE__, __LINE__);                   \
			fprintf(stderr, __VA_ARGS__);                         \
			fputc('\n', stderr);                                  \
			abort();                                              \
		}                                                             \
	} while (0)

/* The process's scratch directory (created on first use, removed at
 * exit), and a file in it written with exactly n bytes. */
const char *fuzz_dir(void);
void fuzz_write(const char *path, const void *data, size_t n);
/* Empty the scratch directory (between inputs). */
void fuzz_clear(void);

#endif
