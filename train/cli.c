/*
 * train/cli.c — config loading from the command line (see cli.h).
 */
#include "train/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

void loom_cli_load_config(struct loom_config *cfg, int argc, char **argv, const char *usage, int world) {
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            printf("usage: %s\n", usage);
            exit(0);
        }
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            if (i + 1 >= argc) loom_input_error(a, usage, "expects a config file");
            if (path) loom_input_error(a, usage, "config file given twice");
            path = argv[++i];
        } else if (strncmp(a, "--", 2) != 0 || !strchr(a, '=')) {
            loom_input_error(a, usage, "unexpected argument");
        }
    }
    if (!path) loom_input_error(argv[0], usage, "no config file (-c FILE)");
    loom_config_init(cfg);
    loom_config_load(cfg, path);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) {
            i++;
            continue;
        }
        loom_config_set_arg(cfg, argv[i]);
    }
    loom_config_validate(cfg, world);
}
