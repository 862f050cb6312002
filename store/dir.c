/*
 * dir.c - creating the directories that hold the WAL, snapshots, sockets and
 * the pid file, with errors that say which component failed and why.
 */
#include "store.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "dove.h"

int
store_dir_create(const char *path, mode_t mode, char *err, size_t errlen)
{
	char buf[PATH_MAX];

	DOVE_ASSERT(path != NULL);
	DOVE_ASSERT(err != NULL && errlen > 0);
	size_t len = strlen(path);
	if (len == 0 || len >= sizeof(buf)) {
		snprintf(err, errlen, "directory path '%s': %s", path,
			 len == 0 ? "empty" : "too long");
		return -ENAMETOOLONG;
	}
	memcpy(buf, path, len + 1);

	/* Walk the components left to right, creating what is missing. */
	for (size_t i = 1; i <= len; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		char saved = buf[i];
		buf[i] = '\0';
		if (mkdir(buf, mode) != 0 && errno != EEXIST) {
			int rc = -errno;
			snprintf(err, errlen, "cannot create directory '%s': %s",
				 buf, dove_strerror(rc));
			return rc;
		}
		struct stat st;
		if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) {
			snprintf(err, errlen,
				 "cannot create directory '%s': '%s' exists and "
				 "is not a directory",
				 path, buf);
			return -ENOTDIR;
		}
		buf[i] = saved;
	}
	return 0;
}

int
store_dir_create_parent(const char *path, mode_t mode, char *err,
			size_t errlen)
{
	char buf[PATH_MAX];

	DOVE_ASSERT(path != NULL);
	size_t len = strlen(path);
	if (len >= sizeof(buf)) {
		snprintf(err, errlen, "path '%s': too long", path);
		return -ENAMETOOLONG;
	}
	memcpy(buf, path, len + 1);
	char *slash = strrchr(buf, '/');
	if (slash == NULL || slash == buf)
		return 0; /* the current or root directory: always there */
	*slash = '\0';
	return store_dir_create(buf, mode, err, errlen);
}
