/*
 * tests/fuzz/fuzz_jsonl.c — fuzz target: the JSONL reader of `loom data prep` (data/prep.c), through the
 * command itself:
 *   loom data prep --tokenizer bytes --source fuzz --in DIR/in.jsonl --out DIR/out --frame-tokens 61
 *                  --shard-tokens 997
 * (small frames and shards, so that records cross frame and shard boundaries). prep checks every record
 * before it writes anything, so a rejected input must leave no shard behind; an accepted one must give
 * shards that the reader validates (data/shard.c) and that hold one <|eos|> per non-blank line.
 *
 * Seeds (tests/fuzz/corpus/jsonl/): text records with escapes and blank lines, trajectories of every role
 * mixed with a text record, a record longer than a shard, a last line without a newline.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/bytetok.h"
#include "data/prep.h"
#include "data/shard.h"
#include "tests/fuzz/fuzz.h"

struct jsonl_case {
    char in[4200], out[4200];
};

static void jsonl_prep(void *arg) {
    struct jsonl_case *c = arg;
    char *argv[] = {"prep", "--tokenizer", "bytes", "--source", "fuzz", "--in", c->in, "--out", c->out,
                    "--frame-tokens", "61", "--shard-tokens", "997", NULL};
    data_prep_main((int)(sizeof argv / sizeof *argv) - 1, argv);
}

/* The shards prep wrote, opened in name order (prep numbers them): their token and eos counts. */
static int count_shards(const char *dir, int64_t *tokens, int64_t *eos) {
    *tokens = *eos = 0;
    int n = 0;
    for (;; n++) {
        char path[4300];
        snprintf(path, sizeof path, "%s/fuzz-%05d.tok", dir, n);
        FILE *f = fopen(path, "rb");
        if (!f) break;
        fclose(f);
        struct loom_shard *s = loom_shard_open(path);
        int64_t m = loom_shard_tokens(s);
        int32_t *ids = malloc(sizeof *ids * (size_t)(m ? m : 1));
        loom_shard_read(s, 0, m, ids);
        for (int64_t i = 0; i < m; i++) *eos += ids[i] == LOOM_BYTES_EOS;
        *tokens += m;
        free(ids);
        loom_shard_close(s);
    }
    return n;
}

/* Lines holding anything but blanks: the records prep reads. */
static int64_t count_records(const uint8_t *data, size_t size) {
    int64_t n = 0;
    int blank = 1;
    for (size_t i = 0; i < size; i++) {
        if (data[i] == '\n') {
            n += !blank;
            blank = 1;
        } else if (data[i] != ' ' && data[i] != '\t' && data[i] != '\r') {
            blank = 0;
        }
    }
    return n + !blank;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct jsonl_case c;
    fuzz_dir_clear();
    fuzz_path(c.in, sizeof c.in, "in.jsonl");
    fuzz_path(c.out, sizeof c.out, "out");
    fuzz_write_file(c.in, data, size);
    int rejected = fuzz_guarded(jsonl_prep, &c);
    DIR *d = opendir(c.out);
    if (rejected) {
        for (struct dirent *e; d && (e = readdir(d));)
            if (e->d_name[0] != '.') fuzz_fail("prep refused the input but left %s/%s behind", c.out, e->d_name);
    } else {
        int64_t tokens, eos, records = count_records(data, size);
        int shards = count_shards(c.out, &tokens, &eos);
        if (eos != records || (records > 0 && shards == 0))
            fuzz_fail("%lld records gave %d shards holding %lld tokens, %lld of them <|eos|>", (long long)records,
                      shards, (long long)tokens, (long long)eos);
    }
    if (d) closedir(d);
    return 0;
}
