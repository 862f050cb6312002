/*
 * replay.c - main() for a fuzz target outside libFuzzer: runs every file
 * of the directories (or files) named on the command line through
 * LLVMFuzzerTestOneInput once. So every build, with any compiler, checks
 * that the kept corpus -- seeds and every crash ever found -- still passes.
 */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

static int
run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
		return -1;
	}
	static uint8_t buf[1 << 20];
	size_t n = fread(buf, 1, sizeof(buf), f);
	bool more = fgetc(f) != EOF;
	fclose(f);
	if (more) {
		fprintf(stderr, "replay: %s: over %zu bytes\n", path, sizeof(buf));
		return -1;
	}
	/* A copy of exactly n bytes, so ASan sees a read past the input. */
	uint8_t *copy = malloc(n ? n : 1);
	memcpy(copy, buf, n);
	LLVMFuzzerTestOneInput(copy, n);
	free(copy);
	return 0;
}

int
main(int argc, char **argv)
{
	unsigned files = 0;
	int bad = 0;
	for (int i = 1; i < argc; i++) {
		struct stat st;
		if (stat(argv[i], &st) != 0) {
			fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
			return 1;
		}
		if (!S_ISDIR(st.st_mode)) {
			bad |= run_file(argv[i]);
			files++;
			continue;
		}
		struct dirent **list;
		int n = scandir(argv[i], &list, NULL, alphasort);
		for (int k = 0; k < n; k++) {
			if (list[k]->d_name[0] != '.') {
				char p[4096];
				snprintf(p, sizeof(p), "%s/%s", argv[i], list[k]->d_name);
				bad |= run_file(p);
				files++;
			}
			free(list[k]);
		}
		free(list);
	}
	if (files == 0) {
		fprintf(stderr, "replay: no input files: a corpus is empty\n");
		return 1;
	}
	printf("replay: %u inputs passed\n", files);
	return bad ? 1 : 0;
}
