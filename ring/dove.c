/*
 * dove.c - assertion failure, error text and the logger (see dove.h).
 *
 * The logger owns one file descriptor for the life of the process. Switching
 * the target (log_file reload, logrotate) dup2()s the new file onto it, so a
 * thread never writes to a descriptor that another thread has just closed.
 */
#include "dove.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int log_level = DOVE_LOG_INFO;
/* -1 until the first dove_log_open: then lines go straight to stderr. */
static _Atomic int log_fd = -1;

void
dove_assert_fail(const char *file, int line, const char *expr)
{
	dove_log(DOVE_LOG_ERROR, "assertion failed: %s:%d: %s", file, line, expr);
	/* The logger may point at a file; make sure a human sees it too. */
	if (atomic_load_explicit(&log_fd, memory_order_relaxed) >= 0)
		fprintf(stderr, "%s: assertion failed: %s:%d: %s\n",
		program_invocation_short_name, file, line, expr);
	abort();
}

static const char *const dove_err_text[] = {
	[DOVE_ECONFIG - DOVE_EFIRST] = "DOVE_ECONFIG: invalid configuration",
	[DOVE_ELOCKED - DOVE_EFIRST] = "DOVE_ELOCKED: held by another process",
	[DOVE_EPROTO - DOVE_EFIRST] = "DOVE_EPROTO: protocol violation",
	[DOVE_ELAYOUT - DOVE_EFIRST] = "DOVE_ELAYOUT: layout or format mismatch",
	[DOVE_ECORRUPT - DOVE_EFIRST] = "DOVE_ECORRUPT: data failed validation",
	[DOVE_EPOISONED - DOVE_EFIRST] =
		"DOVE_EPOISONED: handle unusable after an I/O error",
};
_Static_assert(sizeof(dove_err_text) / sizeof(dove_err_text[0]) ==
		       DOVE_ELAST - DOVE_EFIRST,
	       "every dove_err has a text");

const char *
dove_strerror(int rc)
{
	static __thread char buf[160];

	if (rc == 0)
		return "OK: success";
	if (rc > 0)
		rc = -rc;
	int code = -rc;
	if (code >= DOVE_EFIRST && code < DOVE_ELAST)
		return dove_err_text[code - DOVE_EFIRST];
	const char *name = strerrorname_np(code);
	snprintf(buf, sizeof(buf), "%s: %s", name ? name : "EUNKNOWN",
		 strerrordesc_np(code) ? strerrordesc_np(code) : "unknown error");
	return buf;
}

/* ---- logging -------------------------------------------------------- */

static pthread_mutex_t log_open_mu = PTHREAD_MUTEX_INITIALIZER;
static __thread const char *log_thread = NULL;

static const char *const level_names[] = { "error", "warn", "info", "debug" };
static const char *const level_tags[] = { "ERROR", "WARN ", "INFO ", "DEBUG" };

const char *
dove_log_level_name(enum dove_log_level level)
{
	DOVE_ASSERT((unsigned)level <= DOVE_LOG_DEBUG);
	return level_names[level];
}

void
dove_log_set_level(enum dove_log_level level)
{
	DOVE_ASSERT((unsigned)level <= DOVE_LOG_DEBUG);
	/* Relaxed: the level is advisory; no other data is published with it. */
	atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
}

enum dove_log_level
dove_log_get_level(void)
{
	return (enum dove_log_level)atomic_load_explicit(&log_level,
							 memory_order_relaxed);
}

void
dove_log_thread_name(const char *name)
{
	DOVE_ASSERT(name != NULL);
	log_thread = name;
	/* The process keeps its own name, so that ps, pidof and pkill find
	 * doved; only the threads it starts are renamed. */
	if (gettid() == getpid())
		return;
	char short_name[16];
	snprintf(short_name, sizeof(short_name), "%s", name);
	pthread_setname_np(pthread_self(), short_name);
}

int
dove_log_open(const char *path)
{
	int rc = 0;
	int nfd;

	if (path == NULL || path[0] == '\0')
		nfd = dup(STDERR_FILENO);
	else
		nfd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (nfd < 0)
		return -errno;

	/*
	 * The mutex only orders openers (reload vs. start-up); writers never
	 * take it. The first open publishes a fresh descriptor, later ones
	 * dup2 over it so writers keep one stable number.
	 */
	pthread_mutex_lock(&log_open_mu);
	int cur = atomic_load_explicit(&log_fd, memory_order_acquire);
	if (cur < 0) {
		int fixed = fcntl(nfd, F_DUPFD_CLOEXEC, 3);
		if (fixed < 0)
			rc = -errno;
		else
			atomic_store_explicit(&log_fd, fixed, memory_order_release);
	} else if (dup3(nfd, cur, O_CLOEXEC) < 0) {
		rc = -errno;
	}
	pthread_mutex_unlock(&log_open_mu);
	close(nfd);
	return rc;
}

void
dove_log(enum dove_log_level level, const char *fmt, ...)
{
	if ((int)level > atomic_load_explicit(&log_level, memory_order_relaxed))
		return;

	char line[1024];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = snprintf(line, sizeof(line),
			 "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s [%s] ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
			 tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
			 level_tags[level], log_thread ? log_thread : "?");
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2; /* truncated: keep the newline */
	line[len++] = '\n';

	int fd = atomic_load_explicit(&log_fd, memory_order_acquire);
	if (fd < 0)
		fd = STDERR_FILENO;
	/* A failed log write has nowhere to be reported; drop it. */
	ssize_t w = write(fd, line, len);
	(void)w;
}

int
dove_log_fileno(void)
{
	return atomic_load_explicit(&log_fd, memory_order_acquire);
}
