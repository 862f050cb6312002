/*
 * pidfile.c - the locked pid file. The lock is what proves a doved is
 * running; the pid inside is for humans and for the error message of the
 * second doved. A pid file left by a killed doved is unlocked and simply
 * taken over.
 *
 * A process-associated POSIX lock (F_SETLK), not an open-file-description
 * lock: fork() does not pass it on, so a snapshot child that outlives a
 * killed doved for a moment cannot keep the next doved from starting.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dove.h"
#include "server_int.h"

static pid_t
read_pid(int fd)
{
	char buf[32];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	long v = strtol(buf, NULL, 10);
	return v > 0 ? (pid_t)v : 0;
}

int
server_pidfile_open(const char *path, int *fd_out, pid_t *holder)
{
	DOVE_ASSERT(path != NULL && fd_out != NULL && holder != NULL);
	*holder = 0;
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;

	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	if (fcntl(fd, F_SETLK, &fl) < 0) {
		int rc = -errno;
		if (rc == -EAGAIN || rc == -EACCES) {
			/* The holder may still be writing its pid: wait a bit
			 * so the message can name it. */
			for (int i = 0; i < 50 && (*holder = read_pid(fd)) == 0;
			     i++)
				usleep(10000);
			rc = -DOVE_ELOCKED;
		}
		close(fd);
		return rc;
	}

	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
		int rc = -errno;
		close(fd);
		return rc ? rc : -EIO;
	}
	*fd_out = fd;
	return 0;
}

void
server_pidfile_close(const char *path, int fd)
{
	DOVE_ASSERT(fd >= 0);
	/* Unlink only if the path still names our locked file: someone may
	 * have removed it and another doved created a new one since. */
	struct stat a, b;
	if (fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev &&
	    a.st_ino == b.st_ino)
		unlink(path);
	close(fd);
}
