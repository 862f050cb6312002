/*
 * fuzz_config.c - the config loader (server_config_load, inih underneath)
 * fed any file: no crash or sanitizer report; a refusal always says why;
 * an accepted file writes back (server_config_write_ini) to a file that
 * loads to the same values, key by key.
 */
#include <stdio.h>
#include <string.h>

#include "fuzz.h"
#include "server.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[512], back[512], err[1024];
	snprintf(path, sizeof(path), "%s/fuzz.ini", fuzz_dir());
	snprintf(back, sizeof(back), "%s/back.ini", fuzz_dir());
	fuzz_write(path, data, size);

	server_config *cfg = NULL;
	int rc = server_config_load(path, &cfg, err, sizeof(err));
	if (rc != 0) {
		FUZZ_CHECK(cfg == NULL && err[0] != '\0', "a refusal (%d) without a message", rc);
		return 0;
	}
	FILE *f = fopen(back, "w");
	FUZZ_CHECK(f != NULL, "open %s", back);
	server_config_write_ini(cfg, f);
	fclose(f);
	server_config *again = NULL;
	rc = server_config_load(back, &again, err, sizeof(err));
	FUZZ_CHECK(rc == 0, "the written-back config is refused: %s", err);
	for (size_t i = 0; i < server_config_key_count(); i++) {
		char a[4096], b[4096];
		server_config_format(cfg, i, a, sizeof(a));
		server_config_format(again, i, b, sizeof(b));
		FUZZ_CHECK(!strcmp(a, b), "%s.%s: '%s' reads back as '%s'",
			   server_config_key(i)->section, server_config_key(i)->name, a, b);
	}
	server_config_free(cfg);
	server_config_free(again);
	return 0;
}
