/*
 * train/cli.h — the command-line pieces shared by `loom` subcommands that take a config:
 * `-c FILE` (or `--config FILE`) followed or preceded by `--section.key=value` overrides.
 */
#ifndef LOOM_TRAIN_CLI_H
#define LOOM_TRAIN_CLI_H

#include "core/config.h"

/* Defaults, then the file, then the overrides in order; then validation (against `world` ranks when
 * training, 0 otherwise). Bad input exits 2.
 * `usage` is printed for -h/--help (then exit 0) and as the hint of a usage error. */
void loom_cli_load_config(struct loom_config *cfg, int argc, char **argv, const char *usage, int world);

int loom_info_main(int argc, char **argv);
/* `loom plan`: memory per GPU and estimated speed of a model and layout (train/plan.c) */
int loom_plan_main(int argc, char **argv);
int loom_train_main(int argc, char **argv);
/* `loom ckpt info|verify|export` (train/ckpt_cli.c) */
int loom_ckpt_main(int argc, char **argv);

#endif
