/*
 * server.c - doved's life cycle: start-up (log, data directories, pid-file
 * lock, signals, admin socket), the main loop, configuration reload on
 * SIGHUP or `reload`, and the orderly stop on SIGTERM/SIGINT/`shutdown`.
 *
 * Signals are taken synchronously through a signalfd on the main loop, never
 * in an async handler, so a reload runs as ordinary code on the one thread
 * that publishes configuration. They are blocked before any thread starts,
 * so no other thread ever receives them.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>
#include <urcu/urcu-memb.h>

#include "dove.h"
#include "server_int.h"
#include "store.h"

static void
on_signal(struct server_ev *ev, uint32_t events)
{
	struct server *srv = (struct server *)((char *)ev -
					       offsetof(struct server, signal_ev));
	struct signalfd_siginfo si;
	(void)events;

	while (read(ev->fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGHUP:
			DOVE_INFO("SIGHUP: reloading configuration");
			server_reload(srv);
			break;
		case SIGTERM:
		case SIGINT:
			server_request_stop(srv, strsignal((int)si.ssi_signo));
			break;
		case SIGCHLD: {
			int st;
			pid_t pid;
			while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
				server_core_child_exited(pid, st);
			break;
		}
		default:
			DOVE_WARN("unexpected signal %u ignored", si.ssi_signo);
			break;
		}
	}
}

void
server_request_stop(struct server *srv, const char *why)
{
	if (!srv->loop.stop)
		DOVE_INFO("stopping (%s)", why);
	srv->loop.stop = true;
}

/* Create the directories a config needs. Returns 0 or -errno, logged. */
static int
make_dirs(const server_config *cfg)
{
	char err[512];
	int rc = store_dir_create(cfg->data_dir, 0750, err, sizeof(err));
	if (rc == 0)
		rc = store_dir_create_parent(cfg->pid_file, 0750, err,
					     sizeof(err));
	if (rc == 0)
		rc = store_dir_create_parent(cfg->admin_socket, 0750, err,
					     sizeof(err));
	if (rc == 0 && cfg->log_file[0])
		rc = store_dir_create_parent(cfg->log_file, 0750, err,
					     sizeof(err));
	if (rc != 0)
		DOVE_ERROR("%s", err);
	return rc;
}

int
server_reload(struct server *srv)
{
	/* Main loop thread = the only publisher: it may read without the
	 * read lock, nobody frees the snapshot under it. */
	const server_config *running = server_config_get();
	server_config *next = NULL;
	char err[sizeof(srv->last_reload_error)];
	int rc;

	rc = server_config_load(running->path, &next, err, sizeof(err));
	if (rc != 0)
		goto out_refuse;
	if (next->settings == 0) {
		/* A file emptied by mistake (a failed edit, a full disk)
		 * would reset every live key to its default at once. A start
		 * may run on defaults; a running server keeps what it has. */
		snprintf(err, sizeof(err),
			 "%s: the file sets no key (is it empty?); a reload "
			 "would reset every live key to its default",
			 running->path);
		rc = -DOVE_ECONFIG;
		goto out_refuse;
	}
	server_config_keep_restart_keys(next, running);

	/* Apply what can fail before publishing anything: a reload either
	 * happens whole or not at all. */
	if (next->log_file[0]) {
		char derr[256];
		if (store_dir_create_parent(next->log_file, 0750, derr,
					    sizeof(derr)) != 0) {
			snprintf(err, sizeof(err), "log_file: %s", derr);
			rc = -DOVE_ECONFIG;
			goto out_refuse;
		}
	}
	/* Reopen even when unchanged: that is how logrotate hands over. */
	rc = dove_log_open(next->log_file);
	if (rc != 0) {
		snprintf(err, sizeof(err), "%s: [server] log_file = '%s': %s",
			 running->path, next->log_file, dove_strerror(rc));
		goto out_refuse;
	}
	dove_log_set_level((enum dove_log_level)next->log_level);

	next->generation = running->generation + 1;
	for (uint32_t i = 0; i < next->restart_required_count; i++) {
		const struct server_config_key *k =
			server_config_key(next->restart_required[i]);
		DOVE_WARN("reload: [%s] %s changed; it takes effect only after "
			  "a restart",
			  k->section, k->name);
	}
	server_config_log_changes(next, running);
	uint64_t gen = next->generation;
	server_config_publish(next);
	srv->last_reload_error[0] = '\0';
	DOVE_INFO("configuration reloaded (generation %llu)",
		  (unsigned long long)gen);
	return 0;

out_refuse:
	server_config_free(next);
	srv->reloads_failed++;
	snprintf(srv->last_reload_error, sizeof(srv->last_reload_error), "%s",
		 err);
	DOVE_ERROR("reload refused, keeping the running configuration: %s",
		   err);
	return rc;
}

static int
signals_open(struct server *srv)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGCHLD); /* snapshot children */
	/* Blocked in this thread before any other exists: every thread
	 * started later inherits the mask, so only the signalfd sees them. */
	int rc = pthread_sigmask(SIG_BLOCK, &set, NULL);
	DOVE_ASSERT(rc == 0);
	/* A peer that closes early must cost an EPIPE, never the process. */
	signal(SIGPIPE, SIG_IGN);
	/* Likewise a file over RLIMIT_FSIZE must cost an EFBIG that the WAL
	 * and the snapshot writer report, never the process (it died on its
	 * final snapshot, leaving pid file, sockets and a temp file). */
	signal(SIGXFSZ, SIG_IGN);
	/* An ignored SIGCHLD is inherited across exec (a parent that set it
	 * would make the kernel reap our snapshot children silently, and no
	 * SIGCHLD would reach the signalfd): take it back. */
	signal(SIGCHLD, SIG_DFL);
	/* Likewise a shell that starts us in the background ignores SIGINT
	 * (and SIGQUIT) for us; ignored signals never reach a signalfd. */
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGHUP, SIG_DFL);

	srv->signal_ev.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (srv->signal_ev.fd < 0)
		return -errno;
	srv->signal_ev.fn = on_signal;
	rc = server_loop_add(&srv->loop, &srv->signal_ev, EPOLLIN);
	if (rc != 0)
		close(srv->signal_ev.fd);
	return rc;
}

/* Recover and open the WAL of the published config. Returns 0 or the
 * error, logged (a corrupt log names file, offset and epoch). */
static int
wal_open(struct server *srv)
{
	const server_config *cfg = server_config_get();
	struct store_wal_config wc = {
		.dir = cfg->wal_dir,
		.segment_bytes = (uint64_t)cfg->wal_segment_mb << 20,
		.max_epoch_bytes = (uint32_t)cfg->wal_max_epoch_kb << 10,
		.max_delay_us = (uint32_t)cfg->wal_max_delay_us,
		.fsync = cfg->wal_fsync == 0,
	};
	struct store_wal_scan scan;
	char err[PATH_MAX + 512];
	/* Tests only (docs/testing.md): make chosen storage calls fail. */
	const char *fault = getenv("DOVE_FAULT");
	if (fault != NULL && *fault != '\0') {
		int frc = store_fault_configure(fault, err, sizeof(err));
		if (frc != 0) {
			DOVE_ERROR("DOVE_FAULT: %s", err);
			return frc;
		}
		DOVE_WARN("DOVE_FAULT=%s: storage fault injection is on; this "
			  "is for tests only", fault);
	}
	int rc = store_wal_open(&wc, &srv->wal, &scan, err, sizeof(err));
	if (rc != 0) {
		DOVE_ERROR("%s", err);
		if (rc == -DOVE_ECORRUPT)
			DOVE_ERROR("refusing to start on a corrupt log; inspect "
				   "it with: dove-wal verify %s",
				   cfg->wal_dir);
		return rc;
	}
	if (scan.epochs > 0)
		DOVE_INFO("wal: recovered epochs %llu..%llu (%llu records) "
			  "from %s",
			  (unsigned long long)scan.first_epoch,
			  (unsigned long long)scan.last_epoch,
			  (unsigned long long)scan.records, cfg->wal_dir);
	else
		DOVE_INFO("wal: empty log in %s", cfg->wal_dir);
	return 0;
}

int
server_run(server_config *cfg)
{
	struct server srv = { .pid = getpid() };
	int pid_fd = -1;
	pid_t holder = 0;
	int rc;
	int status = 1;

	DOVE_ASSERT(cfg != NULL);
	dove_log_thread_name("main");
	dove_log_set_level((enum dove_log_level)cfg->log_level);
	clock_gettime(CLOCK_MONOTONIC, &srv.started);

	if (make_dirs(cfg) != 0) {
		server_config_free(cfg);
		return 1;
	}
	rc = dove_log_open(cfg->log_file);
	if (rc != 0) {
		DOVE_ERROR("cannot open log_file %s: %s", cfg->log_file,
			   dove_strerror(rc));
		server_config_free(cfg);
		return 1;
	}
	char *pid_path = strdup(cfg->pid_file);
	DOVE_ASSERT(pid_path != NULL);
	rc = server_pidfile_open(pid_path, &pid_fd, &holder);
	if (rc == -DOVE_ELOCKED) {
		DOVE_ERROR("pid file %s is locked by pid %ld: another doved is "
			   "running on it",
			   pid_path, (long)holder);
		goto out_free;
	} else if (rc != 0) {
		DOVE_ERROR("pid file %s: %s", pid_path, dove_strerror(rc));
		goto out_free;
	}

	urcu_memb_register_thread();
	server_config_publish(cfg);
	cfg = NULL;

	rc = server_loop_init(&srv.loop);
	if (rc != 0) {
		DOVE_ERROR("epoll: %s", dove_strerror(rc));
		goto out_pid;
	}
	rc = signals_open(&srv);
	if (rc != 0) {
		DOVE_ERROR("signalfd: %s", dove_strerror(rc));
		goto out_loop;
	}
	rc = wal_open(&srv);
	if (rc != 0)
		goto out_signals;
	rc = server_core_open(&srv, srv.wal);
	if (rc != 0)
		goto out_wal;
	rc = server_admin_open(&srv, &srv.admin);
	if (rc != 0)
		goto out_core;

	DOVE_INFO("doved %s started (pid %ld, config %s)", DOVE_VERSION,
		  (long)srv.pid, server_config_get()->path);
	server_loop_run(&srv.loop);
	status = 0;

	server_admin_close(srv.admin);
out_core:
	server_core_close(&srv);
out_wal:
	store_wal_close(srv.wal);
out_signals:
	server_loop_del(&srv.loop, &srv.signal_ev);
	close(srv.signal_ev.fd);
out_loop:
	server_loop_close(&srv.loop);
out_pid:
	server_pidfile_close(pid_path, pid_fd);
	if (status == 0)
		DOVE_INFO("stopped");
	server_config_free(server_config_retire());
	urcu_memb_unregister_thread();
out_free:
	free(pid_path);
	server_config_free(cfg);
	return status;
}
