/*
 * dovectl - the admin CLI. Sends one command over doved's admin socket and
 * prints the one-line JSON reply, as "key: value" lines by default or raw
 * with --json. It speaks only the documented admin protocol; it links the
 * server library solely to read [admin] socket from a config file the same
 * way doved does.
 *
 * Exit status: 0 success, 1 the server answered with an error (or
 * "ok": false), 2 usage, 3 doved is not running / the socket is unusable.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "dove.h"
#include "server.h"

static void
usage(FILE *f)
{
	fprintf(f,
		"usage: dovectl [-s SOCKET | -c CONFIG] [--json] COMMAND\n"
		"\n"
		"commands:\n"
		"  status     version, pid, uptime, config generation, keys that\n"
		"             need a restart, the last reload error\n"
		"  config     the effective configuration\n"
		"  reload     reload the config file (same as SIGHUP)\n"
		"  shutdown   stop doved cleanly (same as SIGTERM)\n"
		"  stats      requests, answers by reason, epochs, shards\n"
		"  account ID one account's counters, flags and shard\n"
		"  verify     check the ledger invariants (exit 1 if broken)\n"
		"  snapshot   write a snapshot now (in the background)\n"
		"  peak [on|off|auto]   peak state; force it on/off, or back to\n"
		"             the [peak] schedule\n"
		"  hot [add ID|del ID]  the hot set (why each is hot, buffers);\n"
		"             make an account hot / normal\n"
		"  merge [ID] merge every hot buffer (or one account's) now\n"
		"  history ID [--limit N]  an account's recent journal entries\n"
		"             (in-memory window, newest first)\n"
		"  store [failback|verify]  the MariaDB projection: hosts, the\n"
		"             active one, lag; go back to the first host; compare\n"
		"             MariaDB with the ledger (waits; exit 1 if they differ)\n"
		"  raw CMD..  send CMD as it is, print the reply\n"
		"\n"
		"  -s, --socket PATH   admin socket (default: $DOVE_ADMIN_SOCKET, else\n"
		"                      [admin] socket of the config file)\n"
		"  -c, --config FILE   config file to take the socket from\n"
		"                      (default: config.ini)\n"
		"  -j, --json          print the raw JSON reply\n"
		"  -h, --help          this text\n"
		"\n"
		"exit status: 0 ok, 1 error reply, 2 usage, 3 doved not running\n");
}

/* ---- a small JSON reader that prints "path: value" lines --------------- */

struct jp {
	const char *s;
	bool bad;
};

static void
ws(struct jp *p)
{
	while (*p->s == ' ' || *p->s == '\t' || *p->s == '\r' || *p->s == '\n')
		p->s++;
}

/* Copy a JSON string at p->s (after the quote) into out, unescaped. */
static void
jstring(struct jp *p, char *out, size_t size)
{
	size_t n = 0;
	if (*p->s != '"') {
		p->bad = true;
		return;
	}
	p->s++;
	while (*p->s && *p->s != '"') {
		char ch = *p->s++;
		if (ch == '\\') {
			ch = *p->s++;
			switch (ch) {
			case 'n': ch = '\n'; break;
			case 't': ch = '\t'; break;
			case 'r': ch = '\r'; break;
			case 'u': {
				unsigned v = 0;
				if (sscanf(p->s, "%4x", &v) != 1) {
					p->bad = true;
					return;
				}
				p->s += 4;
				ch = v < 0x80 ? (char)v : '?';
				break;
			}
			case '\0': p->bad = true; return;
			default: break; /* \" \\ \/ */
			}
		}
		if (n + 1 < size)
			out[n++] = ch;
	}
	out[n] = '\0';
	if (*p->s != '"')
		p->bad = true;
	else
		p->s++;
}

static void value(struct jp *p, const char *path, FILE *f);

static void
scalar(struct jp *p, char *out, size_t size)
{
	if (*p->s == '"') {
		jstring(p, out, size);
		return;
	}
	size_t n = 0;
	while (*p->s && !strchr(",}] \t\r\n", *p->s)) {
		if (n + 1 < size)
			out[n++] = *p->s;
		p->s++;
	}
	out[n] = '\0';
	if (n == 0)
		p->bad = true;
	else if (strcmp(out, "null") == 0)
		snprintf(out, size, "-");
}

static void
value(struct jp *p, const char *path, FILE *f)
{
	char buf[4096];
	ws(p);
	if (*p->s == '{') {
		p->s++;
		ws(p);
		while (!p->bad && *p->s != '}') {
			char key[256], sub[512];
			jstring(p, key, sizeof(key));
			ws(p);
			if (*p->s++ != ':') {
				p->bad = true;
				return;
			}
			snprintf(sub, sizeof(sub), "%s%s%s", path,
				 path[0] ? "." : "", key);
			value(p, sub, f);
			ws(p);
			if (*p->s == ',')
				p->s++, ws(p);
			else if (*p->s != '}')
				p->bad = true;
		}
		if (!p->bad)
			p->s++;
	} else if (*p->s == '[') {
		/* Arrays of scalars print on one line: "a, b" or "(none)";
		 * objects in an array as path[i].key lines. */
		p->s++;
		ws(p);
		size_t n = 0;
		int items = 0;
		buf[0] = '\0';
		while (!p->bad && *p->s != ']') {
			char item[1024];
			if (*p->s == '{' || *p->s == '[') {
				char sub[512];
				snprintf(sub, sizeof(sub), "%s[%d]", path, items++);
				value(p, sub, f);
			} else {
				scalar(p, item, sizeof(item));
				items++;
				n += (size_t)snprintf(buf + n,
						      n < sizeof(buf) ? sizeof(buf) - n : 0,
						      "%s%s", n ? ", " : "", item);
			}
			ws(p);
			if (*p->s == ',')
				p->s++, ws(p);
			else if (*p->s != ']')
				p->bad = true;
		}
		if (!p->bad)
			p->s++;
		if (n > 0 || items == 0)
			fprintf(f, "%s: %s\n", path, n ? buf : "(none)");
	} else {
		scalar(p, buf, sizeof(buf));
		if (!p->bad)
			fprintf(f, "%s: %s\n", path, buf);
	}
}

/* ---- talking to doved -------------------------------------------------- */

static int
connect_admin(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "dovectl: socket path too long: %s\n", path);
		return -1;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		fprintf(stderr,
			"dovectl: cannot connect to %s: %s\n"
			"dovectl: is doved running? (start it with: doved -c "
			"config.ini)\n",
			path, strerror(e));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/* Send one line, read one reply line into a malloc'd string. */
static char *
roundtrip(int fd, const char *cmd)
{
	size_t len = strlen(cmd);
	char *line = malloc(len + 2);
	if (line == NULL)
		return NULL;
	memcpy(line, cmd, len);
	line[len] = '\n';
	size_t off = 0;
	while (off < len + 1) {
		ssize_t n = send(fd, line + off, len + 1 - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			free(line);
			return NULL;
		}
		off += (size_t)n;
	}
	free(line);

	size_t cap = 16384, got = 0;
	char *buf = malloc(cap);
	while (buf != NULL) {
		if (got + 1 == cap) {
			char *nb = realloc(buf, cap *= 2);
			if (nb == NULL)
				break;
			buf = nb;
		}
		ssize_t n = recv(fd, buf + got, cap - 1 - got, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
		buf[got] = '\0';
		char *nl = memchr(buf, '\n', got);
		if (nl) {
			*nl = '\0';
			return buf;
		}
	}
	free(buf);
	return NULL;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "config", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *sock = getenv("DOVE_ADMIN_SOCKET");
	const char *cfg_path = NULL;
	bool json = false;
	int ch;

	while ((ch = getopt_long(argc, argv, "+s:c:jh", opts, NULL)) != -1) {
		switch (ch) {
		case 's': sock = optarg; break;
		case 'c': cfg_path = optarg; break;
		case 'j': json = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}

	char cmd[4096];
	const char *verb = argv[optind];
	if (strcmp(verb, "raw") == 0) {
		size_t n = 0;
		cmd[0] = '\0';
		for (int i = optind + 1; i < argc && n < sizeof(cmd); i++)
			n += (size_t)snprintf(cmd + n, sizeof(cmd) - n, "%s%s",
					      n ? " " : "", argv[i]);
		if (n == 0 || n >= sizeof(cmd)) {
			fprintf(stderr, "dovectl: raw needs a command of at most "
					"%zu bytes\n",
				sizeof(cmd) - 1);
			return 2;
		}
	} else if (strcmp(verb, "account") == 0) {
		if (optind + 2 != argc) {
			fprintf(stderr, "dovectl: account takes one id\n");
			return 2;
		}
		snprintf(cmd, sizeof(cmd), "account %s", argv[optind + 1]);
	} else if (!strcmp(verb, "peak") || !strcmp(verb, "hot") ||
		   !strcmp(verb, "merge") || !strcmp(verb, "history") ||
		   !strcmp(verb, "store")) {
		/* Arguments are checked by doved, which says what is wrong. */
		size_t n = (size_t)snprintf(cmd, sizeof(cmd), "%s", verb);
		for (int i = optind + 1; i < argc && n < sizeof(cmd); i++)
			n += (size_t)snprintf(cmd + n, sizeof(cmd) - n, " %s",
					      argv[i]);
		if (n >= sizeof(cmd)) {
			fprintf(stderr, "dovectl: command too long\n");
			return 2;
		}
	} else if (!strcmp(verb, "status") || !strcmp(verb, "config") ||
		   !strcmp(verb, "reload") || !strcmp(verb, "shutdown") ||
		   !strcmp(verb, "stats") || !strcmp(verb, "verify") ||
		   !strcmp(verb, "snapshot")) {
		if (optind + 1 != argc) {
			fprintf(stderr, "dovectl: %s takes no arguments\n", verb);
			return 2;
		}
		snprintf(cmd, sizeof(cmd), "%s", verb);
	} else {
		fprintf(stderr, "dovectl: unknown command '%s'\n", verb);
		usage(stderr);
		return 2;
	}

	server_config *cfg = NULL;
	if (sock == NULL || cfg_path != NULL) {
		char err[1024];
		if (server_config_load(cfg_path ? cfg_path : "config.ini", &cfg,
				       err, sizeof(err)) != 0) {
			fprintf(stderr, "dovectl: no -s SOCKET given and %s\n",
				err);
			return 3;
		}
		sock = cfg->admin_socket;
	}
	int fd = connect_admin(sock);
	if (fd < 0) {
		server_config_free(cfg);
		return 3;
	}
	char *reply = roundtrip(fd, cmd);
	/* `store verify` runs in doved's writer thread: wait for its answer
	 * here, polling, so doved never waits for MariaDB. */
	const char *asked = reply ? strstr(reply, "\"verify_request\":") : NULL;
	if (asked && strcmp(cmd, "store verify") == 0) {
		unsigned long long want = strtoull(asked + 17, NULL, 10);
		for (int t = 0; t < 1200; t++) {
			free(reply);
			reply = roundtrip(fd, "store");
			const char *d = reply ? strstr(reply, "\"done\":") : NULL;
			if (d == NULL || strtoull(d + 7, NULL, 10) >= want)
				break;
			usleep(100000);
		}
		const char *ok = reply ? strstr(reply, "\"verify\":") : NULL;
		if (ok && !strstr(ok, "\"ok\":true")) {
			char *v = strdup(ok + 9);
			v[strlen(v) - 1] = '\0'; /* the outer } */
			fprintf(stderr, "dovectl: the projection differs from the "
					"ledger (or could not be read)\n");
			if (json)
				printf("%s\n", v);
			else {
				struct jp p = { .s = v };
				value(&p, "verify", stdout);
			}
			free(v);
			free(reply);
			close(fd);
			server_config_free(cfg);
			return 1;
		}
	}
	close(fd);
	if (reply == NULL) {
		fprintf(stderr, "dovectl: %s: connection closed without a "
				"reply\n",
			sock);
		server_config_free(cfg);
		return 3;
	}

	int status = 0;
	if (strncmp(reply, "{\"error\":", 9) == 0 ||
	    strncmp(reply, "{\"ok\":false", 11) == 0)
		status = 1; /* includes a verify that found the ledger broken */
	if (json) {
		printf("%s\n", reply);
	} else {
		struct jp p = { .s = reply };
		value(&p, "", status ? stderr : stdout);
		if (p.bad)
			printf("%s\n", reply); /* not ours to judge: show it */
	}
	free(reply);
	server_config_free(cfg);
	return status;
}
