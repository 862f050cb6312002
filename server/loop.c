/*
 * loop.c - a minimal epoll loop: each registered object embeds a
 * struct server_ev whose handler receives the ready events. Level-triggered,
 * so a handler may stop early (a full output buffer) and be called again.
 */
#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "dove.h"
#include "server_int.h"

int
server_loop_init(struct server_loop *loop)
{
	loop->stop = false;
	loop->before_wait = NULL;
	loop->before_wait_arg = NULL;
	loop->epfd = epoll_create1(EPOLL_CLOEXEC);
	return loop->epfd < 0 ? -errno : 0;
}

void
server_loop_close(struct server_loop *loop)
{
	if (loop->epfd >= 0)
		close(loop->epfd);
	loop->epfd = -1;
}

static int
ctl(struct server_loop *loop, int op, struct server_ev *ev, uint32_t events)
{
	DOVE_ASSERT(ev->fd >= 0);
	DOVE_ASSERT(ev->fn != NULL);
	struct epoll_event e = { .events = events, .data.ptr = ev };
	return epoll_ctl(loop->epfd, op, ev->fd, &e) < 0 ? -errno : 0;
}

int
server_loop_add(struct server_loop *loop, struct server_ev *ev, uint32_t events)
{
	return ctl(loop, EPOLL_CTL_ADD, ev, events);
}

int
server_loop_mod(struct server_loop *loop, struct server_ev *ev, uint32_t events)
{
	return ctl(loop, EPOLL_CTL_MOD, ev, events);
}

void
server_loop_del(struct server_loop *loop, struct server_ev *ev)
{
	/* Failing here means the fd was never added: a bug of ours. */
	int rc = epoll_ctl(loop->epfd, EPOLL_CTL_DEL, ev->fd, NULL);
	DOVE_ASSERT(rc == 0);
}

void
server_loop_run(struct server_loop *loop)
{
	/* 64 events per round: enough to drain a burst of admin clients; more
	 * simply wait for the next round (level-triggered, nothing is lost). */
	struct epoll_event evs[64];

	while (!loop->stop) {
		if (loop->before_wait)
			loop->before_wait(loop->before_wait_arg);
		int n = epoll_wait(loop->epfd, evs, 64, -1);
		if (n < 0) {
			DOVE_ASSERT(errno == EINTR);
			continue;
		}
		for (int i = 0; i < n; i++) {
			struct server_ev *ev = evs[i].data.ptr;
			ev->fn(ev, evs[i].events);
		}
	}
}
