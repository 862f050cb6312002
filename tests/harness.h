/*
 * harness.h - helpers for integration tests that run a real doved: a
 * private temp directory with a config file, start/stop of the real binary,
 * and admin round trips over its real socket. Used by every check_* suite
 * that talks to a process; never by the server itself.
 */
#ifndef HARNESS_H
#define HARNESS_H

#include <check.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct dh {
	char dir[128];  /* temp dir: config, data, log */
	char cfg[192];  /* config file path */
	char sock[192]; /* admin socket */
	char pidf[192]; /* pid file */
	char log[192];  /* doved's stderr */
	char ingress[192]; /* ingress UNIX socket */
	pid_t pid;      /* running doved, or 0 */
};

/* Make a temp dir and write extra (ini text; NULL = empty) as its config
 * file. The default paths are relative to the config file, so data, pid
 * file and admin socket land in the temp dir. */
void dh_init(struct dh *h, const char *extra);
/* Rewrite the config file with another text. */
void dh_write_config(struct dh *h, const char *extra);
/* Write raw text to the config file. */
void dh_write_file(const char *path, const char *text);

/* Start doved -c cfg; wait until the admin socket answers (fails the test
 * after 10 s). */
void dh_start(struct dh *h);
/* Start doved with its argv (argv[0] ignored); do not wait. Returns pid. */
pid_t dh_spawn(struct dh *h, const char *const *args, const char *out_path);
/* Wait for pid to exit within timeout_ms; returns the wait status or -1. */
int dh_wait(pid_t pid, int timeout_ms);
/* SIGKILL a running doved (if any), remove the temp dir. */
void dh_cleanup(struct dh *h);

/* Connect to the admin socket; -1 on failure. */
int dh_connect(const char *sock);
/* Send line + '\n' on fd; read one reply line into buf (admin or
 * ingress). Returns false on EOF or error. */
bool dh_cmd_fd(int fd, const char *line, char *buf, size_t size);
/* One command on a fresh connection. Fails the test if it cannot. */
void dh_admin(struct dh *h, const char *cmd, char *buf, size_t size);

/* Poll admin cmd until its reply contains (or, want == false, lacks)
 * needle; fail the test after ms. */
void dh_wait_admin(struct dh *h, const char *cmd, const char *needle, bool want,
		   int ms);

/* The ingress socket of h (default [ingress] unix). */
int dh_ingress(struct dh *h);
/* Send n lines at once (pipelined), then read n reply lines into
 * replies[i] (each up to 256 bytes, '\n' stripped). False on EOF. */
bool dh_lines(int fd, const char *const *lines, int n, char (*replies)[256]);

/*
 * Fill the log: pipeline "TRANSFER <id> 1 2 1" in rounds of 500 from
 * first_id (20 ms apart: [wal] max_disk_mb is checked ten times a
 * second) until one is refused `unavailable`; every reply before it must
 * be OK and every one after it `unavailable`. Returns how many were
 * answered OK (fails the test if none was refused).
 */
int dh_fill_until_refused(int fd, int first_id);

/* Read one '\n'-terminated line from fd (byte by byte, so what follows
 * stays unread); '\n' stripped. False on EOF. */
bool dh_read_line(int fd, char *buf, size_t size);

/* Read a whole small file into buf (NUL-terminated); returns length. */
size_t dh_read_file(const char *path, char *buf, size_t size);
/* Run cmd under sh, capture stdout+stderr into out; return exit status. */
int dh_run(const char *cmd, char *out, size_t size);

/*
 * One life of a crash test: from conns pipelined connections, send bursts
 * of 50 requests (line(id) for consecutive ids from *next_id) until a
 * SIGKILL that lands at a random moment (20..140 ms, from seed) takes
 * doved down; ask for a snapshot after the third burst (the kill may land
 * while its child writes). answered[id] receives every "OK ..." reply.
 * Then doved is started again. Ids stay below max_id.
 */
void dh_crash_life(struct dh *h, int conns, uint64_t *next_id, uint64_t max_id,
		   void (*line)(uint64_t id, char *buf, size_t size),
		   char (*answered)[32], unsigned seed);

/* A test case of s with a per-test fixture (either may be NULL) and a
 * timeout in seconds (0: Check's default). */
TCase *dh_tcase(Suite *s, const char *name, void (*setup)(void),
		void (*teardown)(void), double timeout_s);

/* Run a Check suite, print its results; the exit status for main(). */
int dh_run_suite(Suite *s);

#endif
