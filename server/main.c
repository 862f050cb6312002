/*
 * main.c - doved's command line: parse arguments, load the configuration,
 * and hand over to server_run(). Everything else lives in the server
 * library so the tests can reach it.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dove.h"
#include "server.h"

static void
usage(FILE *f)
{
	fprintf(f,
		"usage: doved [-c FILE] [--check-config] [--config-template]\n"
		"\n"
		"Dove settlement server: takes settlement messages, makes each\n"
		"durable in a write-ahead log, applies it exactly once to a\n"
		"double-entry ledger and answers.\n"
		"\n"
		"  -c, --config FILE    configuration file (default: config.ini)\n"
		"  -t, --check-config   validate FILE, print the effective config,\n"
		"                       exit 0 if valid, 1 if not\n"
		"      --config-template  print the documented default config.ini\n"
		"  -h, --help           this text\n"
		"  -V, --version        print the version\n"
		"\n"
		"Signals: SIGHUP reloads FILE, SIGTERM/SIGINT stop cleanly.\n"
		"Admin: dovectl -s SOCKET status|config|reload|shutdown\n");
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check-config", no_argument, NULL, 't' },
		{ "config-template", no_argument, NULL, 'T' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = "config.ini";
	bool check = false;
	int ch;

	while ((ch = getopt_long(argc, argv, "c:thV", opts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			path = optarg;
			break;
		case 't':
			check = true;
			break;
		case 'T':
			server_config_write_template(stdout);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("doved %s\n", DOVE_VERSION);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	/* `doved --check-config FILE` reads naturally; accept it. */
	if (optind < argc && check && optind + 1 == argc)
		path = argv[optind++];
	if (optind < argc) {
		fprintf(stderr, "doved: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}

	server_config *cfg;
	char err[1024];
	int rc = server_config_load(path, &cfg, err, sizeof(err));
	if (rc != 0) {
		fprintf(stderr, "doved: %s\n", err);
		return 1;
	}
	if (check) {
		printf("; effective configuration of %s\n", cfg->path);
		server_config_write_ini(cfg, stdout);
		server_config_free(cfg);
		return 0;
	}
	return server_run(cfg);
}
