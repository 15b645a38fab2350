/*
 * tests/fuzz/replay.c — a fuzz target without libFuzzer: feeds each file named on the command line to the
 * target's LLVMFuzzerTestOneInput, in order, and exits 0 when every one returned.
 *
 * Built with the normal toolchain against one tests/fuzz/fuzz_NAME.c (build/tests/fuzz/replay_NAME), it
 * keeps the seed corpora and the inputs of fixed crashes (tests/fuzz/regressions/NAME/) checked by
 * `make test` (tests/cli/test_fuzz_regressions.sh) on machines without clang. An input that loom handles
 * badly does not return: the process aborts (a CHECK, a broken invariant), crashes, or exits.
 */
#include <stdio.h>
#include <stdlib.h>

#include "tests/fuzz/fuzz.h"

/* a target without one leaves it undefined, as libFuzzer allows */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static unsigned char *read_all(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    if (!buf || ferror(f)) {
        fprintf(stderr, "%s: cannot read\n", path);
        exit(1);
    }
    fclose(f);
    *size = n;
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE...\n", argv[0]);
        return 1;
    }
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; i++) {
        size_t size;
        unsigned char *data = read_all(argv[i], &size);
        fprintf(stderr, "replay: %s (%zu bytes)\n", argv[i], size);
        LLVMFuzzerTestOneInput(data, size);
        free(data);
    }
    return 0;
}
