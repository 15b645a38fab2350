/*
 * tests/fuzz/fuzz_shard.c — fuzz target: the token shard reader (data/shard.c), as the sampler and
 * `loom data plan` open shards.
 *
 * The input is a shard file. Its footer checksum is recomputed before the file is written (when the input
 * is long enough to have one): a mutated file would otherwise stop at the checksum every time, and the
 * fuzzer would never reach the header, index and frame checks behind it. (tests/unit/test_shard.c covers
 * the checksum itself.) A shard that opens is read back — every token, the loss mask, every document
 * start, by frame-crossing reads — and what it gives must hold what loom_shard_open promises: ids below
 * the vocabulary, mask values 0 or 1, document starts ascending from 0.
 *
 * Seeds (tests/fuzz/corpus/shard/), made by loom's writer: plain.tok and masked.tok by `loom data prep
 * --tokenizer bytes` (frames of 16 and 8 tokens; masked.tok from JSONL with segments), wide.tok (4-byte
 * ids, vocabulary 100000, frames of 5, a mask, three documents) and empty.tok (no tokens) by
 * loom_shard_writer_open*.
 */
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "data/shard.h"
#include "tests/fuzz/fuzz.h"

/* tokens read per call; odd, so reads cross frame boundaries at varying places */
enum { READ_CHUNK = 4093, READ_MAX = 1 << 20 };

static void shard_check(void *arg) {
    struct loom_shard *s = loom_shard_open(arg);
    int64_t n = loom_shard_tokens(s), docs = loom_shard_docs(s);
    uint32_t vocab = loom_shard_vocab(s);
    int32_t *ids = malloc(sizeof *ids * READ_CHUNK);
    uint8_t *mask = malloc(READ_CHUNK);
    /* the first and the last tokens, at most READ_MAX of each */
    for (int64_t at = 0; at < n; at += READ_CHUNK) {
        if (at == READ_MAX && n > 2 * READ_MAX) at = n - READ_MAX;
        int64_t m = n - at < READ_CHUNK ? n - at : READ_CHUNK;
        loom_shard_read(s, at, m, ids);
        loom_shard_read_mask(s, at, m, mask);
        for (int64_t i = 0; i < m; i++) {
            if (ids[i] < 0 || (uint32_t)ids[i] >= vocab)
                fuzz_fail("token %lld is %d, outside the vocabulary of %u", (long long)(at + i), ids[i], vocab);
            if (mask[i] > 1) fuzz_fail("mask of token %lld is %d", (long long)(at + i), mask[i]);
        }
    }
    int64_t prev = -1;
    for (int64_t d = 0; d < docs && d < READ_MAX; d++) {
        int64_t start = loom_shard_doc_start(s, d);
        if (start <= prev || start >= n || (d == 0 && start != 0))
            fuzz_fail("document %lld starts at %lld (previous %lld, %lld tokens)", (long long)d, (long long)start,
                      (long long)prev, (long long)n);
        prev = start;
        int32_t id;
        loom_shard_read(s, start, 1, &id);
    }
    free(ids);
    free(mask);
    loom_shard_close(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[4200];
    fuzz_path(path, sizeof path, "fuzz.tok");
    uint8_t *file = malloc(size ? size : 1);
    memcpy(file, data, size);
    if (size >= LOOM_SHARD_HEADER_BYTES + LOOM_SHARD_FOOTER_BYTES) {
        uint64_t sum = XXH64(file, size - 16, 0);
        for (int i = 0; i < 8; i++) file[size - 16 + i] = (uint8_t)(sum >> (8 * i));
    }
    fuzz_write_file(path, file, size);
    free(file);
    fuzz_guarded(shard_check, path);
    return 0;
}
