/*
 * unixsock.c - a listening UNIX socket at a configured path, for the admin
 * socket and the line-protocol ingress alike. Main thread, at start-up.
 *
 * The path is claimed carefully because it is configured by hand and can
 * be wrong: a file that is not a socket (a WAL segment, config.ini) is
 * never removed, and a socket that answers belongs to a live server that
 * is never taken over. Only a socket file nobody answers on (left by a
 * killed doved) is replaced.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "dove.h"
#include "server_int.h"

int
server_unix_listen(const char *path, mode_t mode, int backlog, char *err,
		   size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	DOVE_ASSERT(path != NULL && err != NULL);
	if (strlen(path) >= sizeof(sa.sun_path)) { /* config checks it too */
		snprintf(err, errlen, "path too long for a UNIX socket");
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			snprintf(err, errlen,
				 "exists and is not a socket: left as it is");
			return -EEXIST;
		}
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		bool live = probe >= 0 &&
			    connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		if (probe >= 0)
			close(probe);
		if (live) {
			snprintf(err, errlen, "another server answers on it");
			return -EADDRINUSE;
		}
		unlink(path); /* stale: nobody answers */
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		int rc = -errno;
		snprintf(err, errlen, "socket: %s", dove_strerror(rc));
		return rc;
	}
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int rc = -errno;
		snprintf(err, errlen, "bind: %s", dove_strerror(rc));
		close(fd);
		return rc;
	}
	/* chmod before listen(): nobody can connect in between. */
	if (chmod(path, mode) < 0 || listen(fd, backlog) < 0) {
		int rc = -errno;
		snprintf(err, errlen, "%s", dove_strerror(rc));
		close(fd);
		unlink(path);
		return rc;
	}
	return fd;
}
