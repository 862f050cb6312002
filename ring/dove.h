/*
 * dove.h - the few project-wide primitives every module may include:
 * always-on assertions, error codes and their text, the cache-line size,
 * and the logger.
 *
 * It lives in the bottom layer (ring/) so that ring, settle, store and server
 * can all use it without an upward dependency. It must never grow into a
 * utility grab-bag: anything that is not needed by every layer belongs in
 * the module that needs it.
 */
#ifndef DOVE_H
#define DOVE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define DOVE_CACHELINE 64

/*
 * DOVE_ASSERT is always on, in every build: recovery is WAL replay, so
 * crashing beats running on with a wrong balance. Never use it on untrusted
 * input (a socket, a file, a SQL reply); that is an error with a message.
 */
#define DOVE_ASSERT(x)                                                         \
	do {                                                                   \
		if (__builtin_expect(!(x), 0))                                 \
			dove_assert_fail(__FILE__, __LINE__, #x);              \
	} while (0)

/* Expensive checks (walks over tables): debug and sanitizer builds only. */
#ifdef DOVE_DEBUG_ASSERTS
#define DOVE_ASSERT_DEBUG(x) DOVE_ASSERT(x)
#else
#define DOVE_ASSERT_DEBUG(x) ((void)sizeof(!(x)))
#endif

__attribute__((noreturn, cold)) void
dove_assert_fail(const char *file, int line, const char *expr);

/*
 * Our own error codes, returned negated (-DOVE_ECONFIG) like -errno. They
 * start far above any errno value so the two ranges never meet.
 */
enum dove_err {
	DOVE_EFIRST = 10000,
	DOVE_ECONFIG = DOVE_EFIRST, /* configuration does not parse/validate */
	DOVE_ELOCKED,               /* a lock (pid file) is held by another */
	DOVE_EPROTO,                /* peer broke the protocol */
	DOVE_ELAYOUT,               /* shared layout/format differs */
	DOVE_ECORRUPT,              /* persistent data failed validation */
	DOVE_EPOISONED,             /* handle unusable after a fatal I/O error */
	DOVE_ELAST
};

/*
 * Text for an rc (0, -errno or -DOVE_E...). It always starts with the code's
 * name ("ENOENT: No such file or directory", "DOVE_ECONFIG: ..."). The
 * returned string is static; thread-safe.
 */
const char *
dove_strerror(int rc);

/* ---- logging -------------------------------------------------------- */

enum dove_log_level {
	DOVE_LOG_ERROR = 0,
	DOVE_LOG_WARN,
	DOVE_LOG_INFO,
	DOVE_LOG_DEBUG,
};

/*
 * One line per call: "2026-11-26T08:57:21.123Z INFO  [main] text". Each line
 * is one write(2) on an O_APPEND descriptor, so lines of different threads
 * never interleave. Safe from any thread; never allocates. Not for the
 * per-message hot path (it is a system call).
 */
__attribute__((format(printf, 2, 3))) void
dove_log(enum dove_log_level level, const char *fmt, ...);

#define DOVE_ERROR(...) dove_log(DOVE_LOG_ERROR, __VA_ARGS__)
#define DOVE_WARN(...) dove_log(DOVE_LOG_WARN, __VA_ARGS__)
#define DOVE_INFO(...) dove_log(DOVE_LOG_INFO, __VA_ARGS__)
#define DOVE_DEBUG(...) dove_log(DOVE_LOG_DEBUG, __VA_ARGS__)

/* Level below which lines are dropped; an atomic, so any thread may set it. */
void
dove_log_set_level(enum dove_log_level level);

enum dove_log_level
dove_log_get_level(void);

/*
 * Send the log to path (appending, created 0640), or to stderr when path is
 * NULL or empty. The switch is atomic (dup2 onto the logger's descriptor), so
 * threads logging at the same moment write whole lines to the old or the new
 * file. Returns 0 or -errno from open(2); on failure the old target stays.
 */
int
dove_log_open(const char *path);

/*
 * Name the calling thread in log lines (and in /proc, truncated to 15
 * bytes). name must outlive the thread (a string literal).
 */
void
dove_log_thread_name(const char *name);

/* The logger's descriptor (for a forked child that closes everything
 * else), or -1 before the first dove_log_open. */
int
dove_log_fileno(void);

/* Level names as used in config ("error", "warn", "info", "debug"). */
const char *
dove_log_level_name(enum dove_log_level level);

/* A clock in nanoseconds (CLOCK_MONOTONIC for intervals, CLOCK_REALTIME
 * for times that are logged); the vDSO makes it no system call. */
static inline uint64_t
dove_clock_ns(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif /* DOVE_H */
