/*
 * train/main.c — the `loom` command: dispatch to the subcommands.
 */
#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "data/plan.h"
#include "data/prep.h"
#include "data/tokcli.h"
#include "train/cli.h"

static const char *USAGE =
    "usage: loom <command> [options]\n"
    "\n"
    "  train -c CONFIG [--section.key=value ...]   train a model (under mpirun for several ranks)\n"
    "  info  -c CONFIG [--section.key=value ...]   resolved config, parameter table, counts, FLOPs, memory\n"
    "  plan  -c CONFIG --nodes N --gpus-per-node G [--gpu h100|h800|h200|a100]\n"
    "                                              memory per GPU, step time and MFU of a layout, before launch\n"
    "  data tokenizer-train --in FILE... --vocab-size N --out TOKENIZER.json\n"
    "                                              byte-level BPE with the Youtu-LLM pre-tokenizer\n"
    "  data encode|decode --tokenizer T           stdin to stdout, one line of ids per line of text\n"
    "  data prep --tokenizer T --source NAME --in FILE... --out DIR\n"
    "                                              text or JSONL into shards (T: bytes or a tokenizer.json)\n"
    "  data plan -c CONFIG [--tokens 11T]          the curriculum over a whole run, per phase and source\n"
    "  ckpt info|verify PATH                       a checkpoint's contents; check it against its config, all finite\n"
    "  ckpt export PATH --format safetensors|hdf5 --out DIR|FILE.h5 [--dtype bf16|fp32] [--force]\n"
    "                                              Hugging Face safetensors + config.json, or zstd-compressed HDF5\n"
    "\n"
    "Exit status: 0 success, 1 runtime failure, 2 bad input.\n";

static int data_main(int argc, char **argv) {
    if (argc < 2) loom_input_error("loom data", "loom data prep --help", "missing data command");
    if (strcmp(argv[1], "prep") == 0) return data_prep_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "plan") == 0) return data_plan_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "tokenizer-train") == 0) return data_tokenizer_train_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "encode") == 0) return data_encode_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "decode") == 0) return data_decode_main(argc - 1, argv + 1);
    loom_input_error(argv[1], "data commands: tokenizer-train, encode, decode, prep, plan", "unknown data command");
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? LOOM_EXIT_INPUT : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "train") == 0) return loom_train_main(argc - 1, argv + 1);
    if (strcmp(cmd, "info") == 0) return loom_info_main(argc - 1, argv + 1);
    if (strcmp(cmd, "plan") == 0) return loom_plan_main(argc - 1, argv + 1);
    if (strcmp(cmd, "data") == 0) return data_main(argc - 1, argv + 1);
    if (strcmp(cmd, "ckpt") == 0) return loom_ckpt_main(argc - 1, argv + 1);
    loom_input_error(cmd, "commands: train, info, plan, data, ckpt (loom --help)", "unknown command");
}
