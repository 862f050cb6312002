/*
 * admin_cmd.c - the grammar of admin commands: one line in, one parsed
 * command or one error message out. Pure (no state, no I/O), so that the
 * whole surface a client can reach before any state is touched is one
 * function the fuzzer drives (tests/fuzz/fuzz_admin.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dove.h"
#include "server_int.h"

enum { ARG_NONE, ARG_NEEDED, ARG_MAYBE };

static const struct {
	const char *name;
	int takes_arg;
} verbs[ADMIN_NVERBS] = {
	[ADMIN_STATUS] = { "status", ARG_NONE },
	[ADMIN_CONFIG] = { "config", ARG_NONE },
	[ADMIN_RELOAD] = { "reload", ARG_NONE },
	[ADMIN_SHUTDOWN] = { "shutdown", ARG_NONE },
	[ADMIN_STATS] = { "stats", ARG_NONE },
	[ADMIN_ACCOUNT] = { "account", ARG_NEEDED },
	[ADMIN_VERIFY] = { "verify", ARG_NONE },
	[ADMIN_SNAPSHOT] = { "snapshot", ARG_NONE },
	[ADMIN_PEAK] = { "peak", ARG_MAYBE },
	[ADMIN_HOT] = { "hot", ARG_MAYBE },
	[ADMIN_MERGE] = { "merge", ARG_MAYBE },
	[ADMIN_HISTORY] = { "history", ARG_NEEDED },
	[ADMIN_STORE] = { "store", ARG_MAYBE },
};

const char *
admin_verb_name(enum admin_verb v)
{
	DOVE_ASSERT(v < ADMIN_NVERBS);
	return verbs[v].name;
}

/* A decimal id > 0 (no sign, no leading blank, no overflow) that ends
 * the string or is followed by blanks; where it ends, or NULL. */
static const char *
parse_id(const char *s, uint64_t *id)
{
	if (*s < '0' || *s > '9')
		return NULL;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || v == 0 || (*end != '\0' && *end != ' '))
		return NULL;
	*id = v;
	return end;
}

/* An id and nothing after it but blanks. */
static bool
id_only(const char *s, uint64_t *id)
{
	const char *end = parse_id(s, id);
	return end && end[strspn(end, " ")] == '\0';
}

/* The argument of each verb that takes one; false with the message. */
static bool
parse_arg(struct admin_cmd *cmd, const char *arg, const char **why)
{
	const char *end;
	switch (cmd->verb) {
	case ADMIN_ACCOUNT:
		*why = "account needs an account id (a number > 0)";
		end = parse_id(arg, &cmd->id);
		return end && *end == '\0';
	case ADMIN_PEAK:
		*why = "peak takes on, off or auto";
		cmd->op = !*arg ? ADMIN_PEAK_SHOW
			: !strcmp(arg, "on") ? ADMIN_PEAK_ON
			: !strcmp(arg, "off") ? ADMIN_PEAK_OFF
			: !strcmp(arg, "auto") ? ADMIN_PEAK_AUTO : -1;
		return cmd->op >= 0;
	case ADMIN_HOT:
		*why = "hot takes nothing, `add ID` or `del ID`";
		if (!*arg) {
			cmd->op = ADMIN_HOT_LIST;
			return true;
		}
		cmd->op = !strncmp(arg, "add ", 4) ? ADMIN_HOT_ADD
			: !strncmp(arg, "del ", 4) ? ADMIN_HOT_DEL : -1;
		return cmd->op >= 0 && id_only(arg + 4, &cmd->id);
	case ADMIN_MERGE:
		*why = "merge takes nothing (every buffer) or an account id";
		cmd->id = 0;
		return !*arg || id_only(arg, &cmd->id);
	case ADMIN_STORE:
		*why = "store takes nothing, failback or verify";
		cmd->op = !*arg ? ADMIN_STORE_SHOW
			: !strcmp(arg, "failback") ? ADMIN_STORE_FAILBACK
			: !strcmp(arg, "verify") ? ADMIN_STORE_VERIFY : -1;
		return cmd->op >= 0;
	case ADMIN_HISTORY: {
		*why = "history needs an account id, then optionally --limit N";
		cmd->limit = 20;
		if ((end = parse_id(arg, &cmd->id)) == NULL)
			return false;
		const char *rest = end + strspn(end, " ");
		if (!*rest)
			return true;
		*why = "history ID [--limit N], N in 1..1000";
		if (strncmp(rest, "--limit ", 8) || rest[8] < '0' || rest[8] > '9')
			return false;
		char *nend;
		errno = 0;
		unsigned long n = strtoul(rest + 8, &nend, 10);
		if (errno != 0 || n == 0 || n > 1000 || *nend != '\0')
			return false;
		cmd->limit = (uint32_t)n;
		return true;
	}
	default:
		return true;
	}
}

bool
admin_parse(char *line, size_t len, struct admin_cmd *cmd, char *err,
	    size_t errlen)
{
	DOVE_ASSERT(errlen > 0);
	memset(cmd, 0, sizeof(*cmd));
	err[0] = '\0';
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (memchr(line, '\0', len) != NULL) {
		/* "status\0junk" is not "status": refuse, never truncate. */
		snprintf(err, errlen, "command contains a NUL byte");
		return false;
	}
	line[len] = '\0';

	/* Split "verb arg". */
	size_t vl = strcspn(line, " \t");
	const char *rest = line + vl + strspn(line + vl, " \t");
	if (vl == 0) {
		snprintf(err, errlen, "%s", len == 0 ? "empty command"
			 : "command must not start with a blank");
		return false;
	}
	for (int v = 0; v < ADMIN_NVERBS; v++) {
		if (strlen(verbs[v].name) != vl || memcmp(verbs[v].name, line, vl))
			continue;
		cmd->verb = (enum admin_verb)v;
		if (verbs[v].takes_arg != ARG_MAYBE &&
		    (*rest != '\0') != (verbs[v].takes_arg == ARG_NEEDED)) {
			snprintf(err, errlen, "%s %s", verbs[v].name,
				 verbs[v].takes_arg ? "needs an argument"
						    : "takes no arguments");
			return false;
		}
		const char *why = "";
		if (!parse_arg(cmd, rest, &why)) {
			snprintf(err, errlen, "%s", why);
			return false;
		}
		return true;
	}
	snprintf(err, errlen,
		 "unknown command '%.*s' (commands: status, config, reload, "
		 "shutdown, stats, account ID, verify, snapshot, peak "
		 "[on|off|auto], hot [add|del ID], merge [ID], history ID "
		 "[--limit N], store [failback|verify])",
		 (int)(vl > 64 ? 64 : vl), line);
	return false;
}
