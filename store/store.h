/*
 * store.h - the public interface of the storage layer: data directories,
 * and from the WAL issue on the write-ahead log, snapshots and the MariaDB
 * projection.
 *
 * store/ may use settle/'s public types; it never calls into server/.
 */
#ifndef STORE_H
#define STORE_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Create directory path and any missing parents (mkdir -p) with mode.
 * An existing directory is fine; an existing non-directory anywhere on the
 * way is an error. On failure returns -errno and writes to err a message
 * naming the component that failed and why. Not for the hot path.
 */
int
store_dir_create(const char *path, mode_t mode, char *err, size_t errlen);

/* store_dir_create for the directory that holds file path. */
int
store_dir_create_parent(const char *path, mode_t mode, char *err,
			size_t errlen);

#endif /* STORE_H */
