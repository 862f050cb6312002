/*
 * fuzz_util.c - the scratch directory of fuzz.h.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"

static char dir[256];

static void
remove_dir(void)
{
	fuzz_clear();
	rmdir(dir);
}

const char *
fuzz_dir(void)
{
	if (dir[0] == '\0') {
		const char *base = getenv("TMPDIR");
		/* tmpfs when there is one: the WAL and snapshot targets write
		 * their input to files at every run. */
		if (base == NULL)
			base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
		snprintf(dir, sizeof(dir), "%s/dove-fuzz.XXXXXX", base);
		if (mkdtemp(dir) == NULL) {
			perror("fuzz: mkdtemp");
			abort();
		}
		atexit(remove_dir);
	}
	return dir;
}

void
fuzz_write(const char *path, const void *data, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || (n > 0 && write(fd, data, n) != (ssize_t)n) ||
	    close(fd) != 0) {
		perror(path);
		abort();
	}
}

void
fuzz_clear(void)
{
	DIR *d = opendir(fuzz_dir());
	if (d == NULL)
		return;
	struct dirent *e;
	char p[512];
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		unlink(p);
	}
	closedir(d);
}
