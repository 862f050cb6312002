/*
 * check_config.c - unit tests of the configuration loader and the small
 * pieces under it (JSON writer, directory creation, error text, flags).
 * No process is started here; check_doved.c runs the real server.
 */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dove.h"
#include "harness.h"
#include "server.h"
#include "settle.h"
#include "store.h"

static char tmpdir[64];
static char cfgpath[128];

static void
setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/dove-cfg-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	snprintf(cfgpath, sizeof(cfgpath), "%s/t.ini", tmpdir);
}

static void
teardown(void)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	ck_assert_int_eq(system(cmd), 0);
}

static int
load_text(const char *text, server_config **cfg, char *err, size_t errlen)
{
	dh_write_file(cfgpath, text);
	return server_config_load(cfgpath, cfg, err, errlen);
}

/* ---- the shipped config.ini -------------------------------------------- */

START_TEST(shipped_config_loads)
{
	server_config *cfg;
	char err[1024];
	int rc = server_config_load(DOVE_SOURCE_DIR "/config.ini", &cfg, err,
				    sizeof(err));
	ck_assert_msg(rc == 0, "config.ini: %s", err);
	ck_assert_uint_eq(cfg->generation, 1);
	ck_assert_int_eq(cfg->log_level, DOVE_LOG_INFO);
	ck_assert_int_eq(cfg->admin_socket_mode, 0600);
	ck_assert_str_eq(cfg->data_dir, DOVE_SOURCE_DIR "/data");
	server_config_free(cfg);
}
END_TEST

/* config.ini is generated from the key table: if someone edits one and not
 * the other, this fails and says how to regenerate. */
START_TEST(shipped_config_matches_table)
{
	char *gen = NULL;
	size_t genlen = 0;
	FILE *f = open_memstream(&gen, &genlen);
	server_config_write_template(f);
	fclose(f);
	static char file[65536];
	dh_read_file(DOVE_SOURCE_DIR "/config.ini", file, sizeof(file));
	ck_assert_msg(strcmp(gen, file) == 0,
		      "config.ini differs from the key table; regenerate it: "
		      "doved --config-template > config.ini");
	free(gen);
}
END_TEST

START_TEST(empty_file_gives_defaults)
{
	server_config *cfg;
	char err[512];
	ck_assert_int_eq(load_text("", &cfg, err, sizeof(err)), 0);
	/* Every default, formatted, is what the table says. */
	for (size_t i = 0; i < server_config_key_count(); i++) {
		const struct server_config_key *k = server_config_key(i);
		char val[4096], want[4096];
		server_config_format(cfg, i, val, sizeof(val));
		if (k->type == SERVER_CFG_PATH && k->def[0])
			snprintf(want, sizeof(want), "%s/%s", tmpdir, k->def);
		else
			snprintf(want, sizeof(want), "%s", k->def);
		ck_assert_msg(strcmp(val, want) == 0, "[%s] %s: %s != %s",
			      k->section, k->name, val, want);
	}
	server_config_free(cfg);
}
END_TEST

START_TEST(values_parse_and_paths_resolve)
{
	server_config *cfg;
	char err[512];
	int rc = load_text("; comment\n"
			   "# another\n"
			   "[server]\n"
			   "data_dir = rel/dir ; inline comment\n"
			   "log_level = debug\n"
			   "log_file = /var/tmp/x.log\n"
			   "[admin]\n"
			   "socket_mode = 0660\n"
			   "max_clients = 1024\n"
			   "max_line = 64\n",
			   &cfg, err, sizeof(err));
	ck_assert_msg(rc == 0, "%s", err);
	char want[256];
	snprintf(want, sizeof(want), "%s/rel/dir", tmpdir);
	ck_assert_str_eq(cfg->data_dir, want);
	ck_assert_str_eq(cfg->log_file, "/var/tmp/x.log");
	ck_assert_int_eq(cfg->log_level, DOVE_LOG_DEBUG);
	ck_assert_int_eq(cfg->admin_socket_mode, 0660);
	ck_assert_int_eq(cfg->admin_max_clients, 1024);
	ck_assert_int_eq(cfg->admin_max_line, 64);
	server_config_free(cfg);
}
END_TEST

/* ---- every kind of invalid input --------------------------------------- */

static const struct bad_case {
	const char *what;
	const char *text;
	const char *must[4]; /* substrings the error must contain */
} bad_cases[] = {
	{ "misspelt key", "[server]\nlog_levl = info\n",
	  { ":2:", "log_levl", "unknown key", "log_level" } },
	{ "unknown section", "\n[srever]\ndata_dir = x\n",
	  { ":3:", "[srever]", "unknown section", "server, admin" } },
	{ "word for a number", "[admin]\nmax_clients = ten\n",
	  { ":2:", "max_clients", "'ten'", "from 1 to 1024" } },
	{ "below minimum", "[admin]\nmax_clients = 0\n",
	  { ":2:", "max_clients", "'0'", "from 1 to 1024" } },
	{ "above maximum", "[admin]\nmax_line = 1048577\n",
	  { ":2:", "max_line", "'1048577'", "from 64 to 1048576" } },
	{ "number with junk", "[admin]\nmax_line = 4096x\n",
	  { ":2:", "max_line", "'4096x'", NULL } },
	{ "negative number", "[admin]\nmax_clients = -1\n",
	  { ":2:", "'-1'", NULL } },
	{ "number past int64", "[admin]\nmax_clients = 99999999999999999999\n",
	  { ":2:", "max_clients", NULL } },
	{ "unknown level", "[server]\nlog_level = loud\n",
	  { ":2:", "log_level", "'loud'", "error, warn, info, debug" } },
	{ "mode not octal", "[admin]\nsocket_mode = 600\n",
	  { ":2:", "socket_mode", "'600'", "octal" } },
	{ "mode with digit 9", "[admin]\nsocket_mode = 0699\n",
	  { ":2:", "socket_mode", NULL } },
	{ "socket path too long",
	  "[admin]\nsocket = /tmp/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/s\n",
	  { ":2:", "[admin] socket", "107 bytes", NULL } },
	{ "empty path", "[server]\ndata_dir =\n",
	  { ":2:", "data_dir", "''", "a path" } },
	{ "key set twice", "[server]\nlog_level = info\n\nlog_level = debug\n",
	  { ":4:", "log_level", "set twice", "line 2" } },
	{ "line without =", "[server]\nlog_level info\n",
	  { ":2:", "syntax error", NULL } },
	{ "unclosed section", "[server\nlog_level = info\n",
	  { ":1:", "syntax error", NULL } },
	{ "key outside section", "log_level = info\n",
	  { ":1:", "log_level", "outside any [section]", NULL } },
	{ "line over the limit",
	  "[server]\n; ok\ndata_dir = /tmp/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n",
	  { ":3:", "longer than", NULL } },
	{ "second error is not the one reported",
	  "[admin]\nmax_clients = 5\nbogus = 1\nmax_line = 1\n",
	  { ":3:", "bogus", NULL } },
};

START_TEST(invalid_input_is_named)
{
	const struct bad_case *bc = &bad_cases[_i];
	server_config *cfg = (server_config *)0x1;
	char err[1024];
	int rc = load_text(bc->text, &cfg, err, sizeof(err));
	ck_assert_msg(rc == -DOVE_ECONFIG, "%s: accepted (rc %d)", bc->what, rc);
	ck_assert_msg(cfg == (server_config *)0x1, "%s: *out written", bc->what);
	ck_assert_msg(strncmp(err, cfgpath, strlen(cfgpath)) == 0,
		      "%s: error does not start with the file: %s", bc->what,
		      err);
	for (int m = 0; m < 4 && bc->must[m]; m++)
		ck_assert_msg(strstr(err, bc->must[m]) != NULL,
			      "%s: error lacks '%s': %s", bc->what, bc->must[m],
			      err);
}
END_TEST

/* Found by tests/fuzz/fuzz_config: a NUL ended the line for inih and the
 * rest was dropped silently; and a relative path that fits its line can
 * resolve to one that --check-config prints as a line no load accepts. */
START_TEST(nul_byte_and_overlong_resolved_path_are_refused)
{
	server_config *cfg = NULL;
	char err[1024];
	FILE *f = fopen(cfgpath, "w");
	ck_assert_ptr_nonnull(f);
	fwrite("[wal]\nsegment_mb = 1\0junk\n", 1, 27, f);
	fclose(f);
	int rc = server_config_load(cfgpath, &cfg, err, sizeof(err));
	ck_assert_int_eq(rc, -DOVE_ECONFIG);
	ck_assert_msg(strstr(err, ":2: line contains a NUL byte"), "%s", err);

	char text[512], name[200];
	memset(name, 'a', 180);
	name[180] = '\0';
	snprintf(text, sizeof(text), "[wal]\ndir = %s\n", name);
	rc = load_text(text, &cfg, err, sizeof(err));
	ck_assert_int_eq(rc, -DOVE_ECONFIG);
	ck_assert_msg(strstr(err, "[wal] dir: the value is") &&
		      strstr(err, "use a shorter path"), "%s", err);
	/* A value that starts with ';' would be written back as a comment. */
	rc = load_text("[mariadb]\ndatabase =;dove\n", &cfg, err, sizeof(err));
	ck_assert_int_eq(rc, -DOVE_ECONFIG);
	ck_assert_msg(strstr(err, "[mariadb] database = ';dove': invalid value"), "%s", err);
	/* ...while the same name as an absolute path of that length loads,
	 * and its write-back loads again. */
	snprintf(text, sizeof(text), "[wal]\ndir = /%s\n", name + 10);
	rc = load_text(text, &cfg, err, sizeof(err));
	ck_assert_msg(rc == 0, "%s", err);
	f = fopen(cfgpath, "w");
	server_config_write_ini(cfg, f);
	fclose(f);
	server_config_free(cfg);
	rc = server_config_load(cfgpath, &cfg, err, sizeof(err));
	ck_assert_msg(rc == 0, "written back: %s", err);
	server_config_free(cfg);
}
END_TEST

START_TEST(missing_file_is_named)
{
	server_config *cfg;
	char err[512];
	int rc = server_config_load("/nonexistent/dove.ini", &cfg, err,
				    sizeof(err));
	ck_assert_int_eq(rc, -ENOENT);
	ck_assert_ptr_nonnull(strstr(err, "/nonexistent/dove.ini"));
	ck_assert_ptr_nonnull(strstr(err, "ENOENT"));
}
END_TEST

/* ---- reload semantics -------------------------------------------------- */

START_TEST(restart_keys_are_kept_and_listed)
{
	server_config *running, *next;
	char err[512];
	ck_assert_int_eq(load_text("[server]\nlog_level = info\n[admin]\n"
				   "socket = a.sock\nmax_clients = 4\n",
				   &running, err, sizeof(err)),
			 0);
	ck_assert_int_eq(load_text("[server]\nlog_level = debug\n[admin]\n"
				   "socket = b.sock\nsocket_mode = 0660\n"
				   "max_clients = 8\n",
				   &next, err, sizeof(err)),
			 0);
	ck_assert_uint_eq(server_config_keep_restart_keys(next, running), 2);
	/* Live keys take the new value... */
	ck_assert_int_eq(next->log_level, DOVE_LOG_DEBUG);
	ck_assert_int_eq(next->admin_max_clients, 8);
	/* ...restart-only keys keep the running one and are listed. */
	ck_assert_str_eq(next->admin_socket, running->admin_socket);
	ck_assert_int_eq(next->admin_socket_mode, 0600);
	const struct server_config_key *k0 =
		server_config_key(next->restart_required[0]);
	const struct server_config_key *k1 =
		server_config_key(next->restart_required[1]);
	ck_assert_str_eq(k0->name, "socket");
	ck_assert_str_eq(k1->name, "socket_mode");

	/* Changing the file back clears the list. */
	server_config *again;
	ck_assert_int_eq(load_text("[admin]\nsocket = a.sock\n", &again, err,
				   sizeof(err)),
			 0);
	ck_assert_uint_eq(server_config_keep_restart_keys(again, running), 0);
	server_config_free(again);
	server_config_free(next);
	server_config_free(running);
}
END_TEST

START_TEST(config_json_has_every_key)
{
	server_config *cfg;
	char err[512], buf[8192];
	ck_assert_int_eq(load_text("[admin]\nmax_clients = 7\n", &cfg, err,
				   sizeof(err)),
			 0);
	struct json_buf j;
	json_init(&j, buf, sizeof(buf));
	server_config_json(cfg, &j);
	ck_assert(!j.overflow);
	ck_assert_int_eq(j.depth, 0);
	ck_assert_ptr_nonnull(strstr(buf, "\"admin\":{"));
	ck_assert_ptr_nonnull(strstr(buf, "\"max_clients\":7"));
	ck_assert_ptr_nonnull(strstr(buf, "\"socket_mode\":\"0600\""));
	ck_assert_ptr_nonnull(strstr(buf, "\"log_level\":\"info\""));
	for (size_t i = 0; i < server_config_key_count(); i++) {
		char key[128];
		snprintf(key, sizeof(key), "\"%s\":",
			 server_config_key(i)->name);
		ck_assert_msg(strstr(buf, key), "no %s in %s", key, buf);
	}
	server_config_free(cfg);
}
END_TEST

/* ---- RCU publication --------------------------------------------------- */

START_TEST(publish_replaces_and_retires)
{
	server_config *a, *b;
	char err[512];
	ck_assert_int_eq(load_text("", &a, err, sizeof(err)), 0);
	ck_assert_int_eq(load_text("[server]\nlog_level = warn\n", &b, err,
				   sizeof(err)),
			 0);
	b->generation = 2;
	server_config_publish(a);
	ck_assert_ptr_eq(server_config_get(), a);
	server_config_publish(b); /* frees a after a grace period */
	ck_assert_ptr_eq(server_config_get(), b);
	ck_assert_int_eq(server_config_get()->log_level, DOVE_LOG_WARN);
	ck_assert_ptr_eq(server_config_retire(), b);
	ck_assert_ptr_null(server_config_get());
	server_config_free(b);
}
END_TEST

START_TEST(publish_older_generation_aborts)
{
	server_config *a, *b;
	char err[512];
	ck_assert_int_eq(load_text("", &a, err, sizeof(err)), 0);
	ck_assert_int_eq(load_text("", &b, err, sizeof(err)), 0);
	a->generation = 5;
	server_config_publish(a);
	server_config_publish(b); /* generation 1 after 5: must abort */
}
END_TEST

/* ---- JSON writer -------------------------------------------------------- */

START_TEST(json_escapes_everything)
{
	char buf[256];
	struct json_buf j;
	json_init(&j, buf, sizeof(buf));
	json_obj_begin(&j);
	json_key(&j, "s");
	json_str(&j, "a\"b\\c\nd\x01");
	json_key(&j, "n");
	json_i64(&j, -5);
	json_key(&j, "a");
	json_arr_begin(&j);
	json_u64(&j, 18446744073709551615ull);
	json_bool(&j, false);
	json_null(&j);
	json_arr_end(&j);
	json_obj_end(&j);
	ck_assert(!j.overflow);
	ck_assert_str_eq(buf, "{\"s\":\"a\\\"b\\\\c\\u000ad\\u0001\",\"n\":-5,"
			      "\"a\":[18446744073709551615,false,null]}");
}
END_TEST

START_TEST(json_overflow_is_flagged)
{
	char buf[8];
	struct json_buf j;
	json_init(&j, buf, sizeof(buf));
	json_str(&j, "far too long for eight bytes");
	ck_assert(j.overflow);
	ck_assert_uint_lt(strlen(buf), sizeof(buf));
}
END_TEST

/* ---- directories, error text, flags ---------------------------------- */

START_TEST(dir_create_nested_and_refuses_file)
{
	char path[256], err[512];
	snprintf(path, sizeof(path), "%s/a/b/c", tmpdir);
	ck_assert_int_eq(store_dir_create(path, 0750, err, sizeof(err)), 0);
	struct stat st;
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert(S_ISDIR(st.st_mode));
	/* Again: an existing directory is fine. */
	ck_assert_int_eq(store_dir_create(path, 0750, err, sizeof(err)), 0);

	/* A regular file on the way: refused, and the message names it. */
	char file[256];
	snprintf(file, sizeof(file), "%s/plain", tmpdir);
	dh_write_file(file, "x");
	snprintf(path, sizeof(path), "%s/plain/sub", tmpdir);
	int rc = store_dir_create(path, 0750, err, sizeof(err));
	ck_assert_int_lt(rc, 0);
	ck_assert_msg(strstr(err, file) != NULL, "%s", err);
}
END_TEST

START_TEST(strerror_names_the_code)
{
	ck_assert_str_eq(dove_strerror(0), "OK: success");
	ck_assert_ptr_eq(strstr(dove_strerror(-ENOENT), "ENOENT: "),
			 dove_strerror(-ENOENT));
	ck_assert(strncmp(dove_strerror(-DOVE_ECONFIG), "DOVE_ECONFIG: ", 14) ==
		  0);
	ck_assert(strncmp(dove_strerror(-DOVE_ELOCKED), "DOVE_ELOCKED: ", 14) ==
		  0);
}
END_TEST

/* [peak] windows: local times, several, crossing midnight allowed. */
START_TEST(peak_windows_cross_midnight)
{
	struct server_peak_window w[SERVER_PEAK_WINDOWS_MAX];
	int n = server_peak_windows_parse("11:00-13:30,22:00-02:00", w);
	ck_assert_int_eq(n, 2);
	static const struct { int m; bool in; } at[] = {
		{ 10 * 60 + 59, false }, { 11 * 60, true }, { 13 * 60 + 29, true },
		{ 13 * 60 + 30, false }, { 21 * 60 + 59, false }, { 22 * 60, true },
		{ 23 * 60 + 59, true }, { 0, true }, { 1 * 60 + 59, true },
		{ 2 * 60, false },
	};
	for (unsigned i = 0; i < sizeof(at) / sizeof(at[0]); i++)
		ck_assert_msg(server_peak_windows_contain(w, n, at[i].m) == at[i].in,
			      "minute %d", at[i].m);
	/* Up to midnight, and the whole day. */
	n = server_peak_windows_parse("20:00-24:00", w);
	ck_assert(server_peak_windows_contain(w, n, 23 * 60 + 59));
	ck_assert(!server_peak_windows_contain(w, n, 0));
	n = server_peak_windows_parse("00:00-24:00", w);
	ck_assert(server_peak_windows_contain(w, n, 0) &&
		  server_peak_windows_contain(w, n, 1439));
	ck_assert_int_eq(server_peak_windows_parse("", w), 0);
	ck_assert(!server_peak_windows_contain(w, 0, 600));
	/* Refused: malformed, out of range, empty window, too many. */
	static const char *const bad[] = {
		"11:00", "11:00-", "1:00-2:00", "11:00-25:00", "11:60-12:00",
		"11:00-11:00", "24:00-01:00", "11:00-12:00,", "11:00-12:00;13:00-14:00",
		"00:00-00:01,00:02-00:03,00:04-00:05,00:06-00:07,00:08-00:09,"
		"00:10-00:11,00:12-00:13,00:14-00:15,00:16-00:17,00:18-00:19,"
		"00:20-00:21,00:22-00:23,00:24-00:25,00:26-00:27,00:28-00:29,"
		"00:30-00:31,00:32-00:33",
	};
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(server_peak_windows_parse(bad[i], w) == -1, "%s",
			      bad[i]);
	/* ...and the config loader says so, naming the line. */
	server_config *cfg;
	char err[1024];
	ck_assert_int_ne(load_text("[peak]\nwindows = 11:00-25:00\n", &cfg, err,
				   sizeof(err)), 0);
	ck_assert_msg(strstr(err, ":2:") && strstr(err, "windows"), "%s", err);
	ck_assert_int_ne(load_text("[hot]\naccounts = 1,0\n", &cfg, err,
				   sizeof(err)), 0);
	ck_assert_msg(strstr(err, "accounts"), "%s", err);
	ck_assert_int_eq(load_text("[hot]\naccounts = 1,22\n[peak]\nmode = always\n",
				   &cfg, err, sizeof(err)), 0);
	ck_assert_str_eq(cfg->hot_accounts, "1,22");
	ck_assert_int_eq(cfg->peak_mode, 1);
	server_config_free(cfg);
}
END_TEST

START_TEST(account_flags_round_trip)
{
	char buf[16];
	ck_assert_uint_eq(settle_account_flags_format(0, buf, sizeof(buf)), 1);
	ck_assert_str_eq(buf, "-");
	settle_account_flags_format(SETTLE_ACCOUNT_NONNEG, buf, sizeof(buf));
	ck_assert_str_eq(buf, "nonneg");
	settle_account_flags_format(SETTLE_ACCOUNT_NONNEG | SETTLE_ACCOUNT_HOT,
				    buf, sizeof(buf));
	ck_assert_str_eq(buf, "nonneg,hot");
	uint32_t f = 0;
	ck_assert(settle_account_flag_parse("hot", 3, &f));
	ck_assert_uint_eq(f, SETTLE_ACCOUNT_HOT);
	ck_assert(!settle_account_flag_parse("hotter", 6, &f));
	ck_assert(!settle_account_flag_parse("ho", 2, &f));
}
END_TEST

START_TEST(assert_aborts)
{
	volatile int x = 1;
	DOVE_ASSERT(x == 2);
}
END_TEST

static Suite *
config_suite(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("shipped");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, shipped_config_loads);
	tcase_add_test(tc, shipped_config_matches_table);
	tcase_add_test(tc, empty_file_gives_defaults);
	tcase_add_test(tc, nul_byte_and_overlong_resolved_path_are_refused);
	tcase_add_test(tc, values_parse_and_paths_resolve);
	suite_add_tcase(s, tc);

	tc = tcase_create("invalid");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_loop_test(tc, invalid_input_is_named, 0,
			    sizeof(bad_cases) / sizeof(bad_cases[0]));
	tcase_add_test(tc, missing_file_is_named);
	suite_add_tcase(s, tc);

	tc = tcase_create("reload");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, restart_keys_are_kept_and_listed);
	tcase_add_test(tc, config_json_has_every_key);
	tcase_add_test(tc, publish_replaces_and_retires);
	tcase_add_test_raise_signal(tc, publish_older_generation_aborts,
				    SIGABRT);
	suite_add_tcase(s, tc);

	tc = tcase_create("pieces");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, json_escapes_everything);
	tcase_add_test(tc, json_overflow_is_flagged);
	tcase_add_test(tc, dir_create_nested_and_refuses_file);
	tcase_add_test(tc, strerror_names_the_code);
	tcase_add_test(tc, account_flags_round_trip);
	tcase_add_test(tc, peak_windows_cross_midnight);
	tcase_add_test_raise_signal(tc, assert_aborts, SIGABRT);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return dh_run_suite(config_suite());
}
