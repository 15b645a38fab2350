/*
 * tests/unit/test_shard.c — token shards and the byte tokenizer.
 *
 * Round trips over several frame sizes and both token widths, random-access reads across frame
 * boundaries, document starts; then damaged files, each opened in a child process that must exit 2 with
 * a message naming the file and saying what is wrong.
 */
#define _XOPEN_SOURCE 700

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xxhash.h>
#include <zstd.h>

#include "core/error.h"
#include "data/bytetok.h"
#include "data/shard.h"
#include "tests/test.h"

static char g_dir[64];

/* ---------------------------------------------------------------------------------------------- */
/* helpers                                                                                         */

static void le_put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t le_get64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static uint32_t le_get32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void le_put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static unsigned char *file_read(const char *path, size_t *size) {
    FILE *f = fopen_check(path, "rb");
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc_check(*size);
    CHECK(fread(buf, 1, *size, f) == *size, "short read of %s", path);
    fclose(f);
    return buf;
}

static void file_write(const char *path, const unsigned char *buf, size_t size) {
    FILE *f = fopen_check(path, "wb");
    CHECK(fwrite(buf, 1, size, f) == size, "short write of %s", path);
    fclose(f);
}

/* Recompute the checksum of a shard image in place (XXH64 of everything before the field). */
static void fix_checksum(unsigned char *buf, size_t size) {
    le_put64(buf + size - 16, XXH64(buf, size - 16, 0));
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng_next(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Write tokens[0..n) to path; a document starts at each doc_starts[d] (doc_starts[0] = 0). */
static void shard_make(const char *path, uint32_t vocab, uint32_t frame_tokens, const int32_t *tokens, size_t n,
                       const int64_t *doc_starts, size_t n_docs) {
    struct loom_shard_writer *w = loom_shard_writer_open(path, vocab, 0x1234abcdull, frame_tokens);
    size_t at = 0;
    for (size_t d = 0; d < n_docs; d++) {
        size_t end = d + 1 < n_docs ? (size_t)doc_starts[d + 1] : n;
        /* append in uneven pieces so writes cross frame boundaries mid-call */
        while (at < end) {
            size_t m = 1 + rng_next() % 97;
            if (m > end - at) m = end - at;
            loom_shard_writer_append(w, tokens + at, m);
            at += m;
        }
        loom_shard_writer_end_document(w);
        loom_shard_writer_end_document(w);  /* an empty document is not recorded */
    }
    loom_shard_writer_close(w);
}

/* Fork; the child opens path (stderr into a pipe). Pass when the child exits `want_status` and its stderr
 * holds both the path and `phrase`. */
static void expect_open_fails(const char *name, const char *path, const char *phrase) {
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        struct loom_shard *s = loom_shard_open(path);
        loom_shard_close(s);
        _exit(0);
    }
    close(fds[1]);
    char msg[4096];
    size_t len = 0;
    ssize_t k;
    while ((k = read(fds[0], msg + len, sizeof msg - 1 - len)) > 0) len += (size_t)k;
    msg[len] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    int ok = code == 2 && strstr(msg, "loom: error: ") && strstr(msg, path) && strstr(msg, phrase);
    test_result(ok, name, "exit status %d (want 2), stderr \"%s\" (want the path %s and \"%s\")", code, msg, path,
                phrase);
}

/* ---------------------------------------------------------------------------------------------- */
/* round trips                                                                                     */

static void check_round_trip(const char *label, uint32_t vocab, uint32_t frame_tokens, size_t n,
                             const int64_t *doc_starts, size_t n_docs) {
    char path[128], name[160];
    snprintf(path, sizeof path, "%s/%s.tok", g_dir, label);
    int32_t *tokens = malloc_check(n * sizeof *tokens);
    for (size_t i = 0; i < n; i++) tokens[i] = (int32_t)(rng_next() % vocab);
    if (n > 0) tokens[n - 1] = (int32_t)vocab - 1;
    shard_make(path, vocab, frame_tokens, tokens, n, doc_starts, n_docs);

    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    snprintf(name, sizeof name, "%s/no_tmp_left", label);
    test_result(access(tmp, F_OK) != 0 && access(path, F_OK) == 0, name, "%s exists or %s is missing", tmp, path);

    size_t size;
    unsigned char *img = file_read(path, &size);
    uint32_t want_width = vocab <= 65536 ? 2 : 4;
    snprintf(name, sizeof name, "%s/token_bytes", label);
    test_result(le_get32(img + 12) == want_width, name, "header token_bytes %u, want %u", le_get32(img + 12),
                want_width);
    free(img);

    struct loom_shard *s = loom_shard_open(path);
    snprintf(name, sizeof name, "%s/header", label);
    test_result(loom_shard_tokens(s) == (int64_t)n && loom_shard_docs(s) == (int64_t)n_docs &&
                    loom_shard_vocab(s) == vocab && loom_shard_tokenizer_hash(s) == 0x1234abcdull &&
                    strcmp(loom_shard_path(s), path) == 0,
                name, "tokens %lld (want %zu), docs %lld (want %zu), vocab %u (want %u), hash %llx, path %s",
                (long long)loom_shard_tokens(s), n, (long long)loom_shard_docs(s), n_docs, loom_shard_vocab(s), vocab,
                (unsigned long long)loom_shard_tokenizer_hash(s), loom_shard_path(s));

    int32_t *got = malloc_check((n + 1) * sizeof *got);
    loom_shard_read(s, 0, (int64_t)n, got);
    size_t bad = n;
    for (size_t i = 0; i < n && bad == n; i++)
        if (got[i] != tokens[i]) bad = i;
    snprintf(name, sizeof name, "%s/read_all", label);
    test_result(bad == n, name, "token %zu: got %d want %d", bad, bad < n ? got[bad] : 0, bad < n ? tokens[bad] : 0);

    /* random ranges, many crossing frame boundaries, in random order (cache misses and hits) */
    int range_bad = 0;
    long long bad_start = 0, bad_count = 0, bad_at = 0;
    for (int r = 0; r < 300 && n > 0 && !range_bad; r++) {
        int64_t start = (int64_t)(rng_next() % n);
        int64_t count = (int64_t)(rng_next() % (3 * frame_tokens + 2));
        if (r % 3 == 0) start = (int64_t)((rng_next() % (n / frame_tokens + 1)) * frame_tokens) - 1;
        if (start < 0) start = 0;
        if (start >= (int64_t)n) start = (int64_t)n - 1;
        if (count > (int64_t)n - start) count = (int64_t)n - start;
        loom_shard_read(s, start, count, got);
        for (int64_t i = 0; i < count; i++)
            if (got[i] != tokens[start + i]) {
                range_bad = 1;
                bad_start = start;
                bad_count = count;
                bad_at = i;
                break;
            }
    }
    snprintf(name, sizeof name, "%s/random_ranges", label);
    test_result(!range_bad, name, "read(%lld, %lld): element %lld got %d want %d", bad_start, bad_count, bad_at,
                range_bad ? got[bad_at] : 0, range_bad ? tokens[bad_start + bad_at] : 0);

    size_t doc_bad = n_docs;
    for (size_t d = 0; d < n_docs && doc_bad == n_docs; d++)
        if (loom_shard_doc_start(s, (int64_t)d) != doc_starts[d]) doc_bad = d;
    snprintf(name, sizeof name, "%s/doc_starts", label);
    test_result(doc_bad == n_docs, name, "document %zu starts at %lld, want %lld", doc_bad,
                doc_bad < n_docs ? (long long)loom_shard_doc_start(s, (int64_t)doc_bad) : 0LL,
                doc_bad < n_docs ? (long long)doc_starts[doc_bad] : 0LL);

    loom_shard_close(s);
    free(got);
    free(tokens);
}

static void test_round_trips(void) {
    const int64_t docs_a[] = {0, 100, 101, 500, 999};
    check_round_trip("odd_frames", LOOM_BYTES_VOCAB, 64, 1000, docs_a, 5);
    check_round_trip("exact_frames", LOOM_BYTES_VOCAB, 100, 1000, docs_a, 5);
    check_round_trip("frame_of_one", LOOM_BYTES_VOCAB, 1, 257, docs_a, 3);
    check_round_trip("one_big_frame", LOOM_BYTES_VOCAB, 65536, 1000, docs_a, 4);
    const int64_t docs_one[] = {0};
    check_round_trip("single_token", LOOM_BYTES_VOCAB, 65536, 1, docs_one, 1);
    check_round_trip("empty", LOOM_BYTES_VOCAB, 16, 0, docs_one, 0);
    const int64_t docs_b[] = {0, 4095, 4096, 12000};
    check_round_trip("u32_ids", 100000, 1000, 20000, docs_b, 4);
    const int64_t docs_c[] = {0, 332, 333, 4998};
    check_round_trip("u32_odd_frames", 1u << 20, 333, 5001, docs_c, 4);
    check_round_trip("vocab_65536_u16", 65536, 128, 3000, docs_b, 1);
}

/* end_document before the first token, twice in a row, and at the end records no empty documents. */
static void test_doc_marks(void) {
    char path[128];
    snprintf(path, sizeof path, "%s/docs.tok", g_dir);
    struct loom_shard_writer *w = loom_shard_writer_open(path, LOOM_BYTES_VOCAB, 7, 4);
    const int32_t a[] = {1, 2, 3}, b[] = {4, 5, 6, 7, 8}, c[] = {9};
    loom_shard_writer_end_document(w);
    loom_shard_writer_append(w, a, 3);
    loom_shard_writer_end_document(w);
    loom_shard_writer_end_document(w);
    loom_shard_writer_append(w, b, 2);
    loom_shard_writer_append(w, b + 2, 3);
    loom_shard_writer_end_document(w);
    loom_shard_writer_append(w, c, 1);
    loom_shard_writer_end_document(w);
    uint64_t written = loom_shard_writer_tokens(w);
    loom_shard_writer_close(w);
    struct loom_shard *s = loom_shard_open(path);
    int64_t d0 = loom_shard_doc_start(s, 0), d1 = loom_shard_doc_start(s, 1), d2 = loom_shard_doc_start(s, 2);
    test_result(written == 9 && loom_shard_docs(s) == 3 && d0 == 0 && d1 == 3 && d2 == 8, "doc_marks",
                "writer tokens %llu (want 9), docs %lld (want 3), starts %lld %lld %lld (want 0 3 8)",
                (unsigned long long)written, (long long)loom_shard_docs(s), (long long)d0, (long long)d1,
                (long long)d2);
    loom_shard_close(s);
}

/* ---------------------------------------------------------------------------------------------- */
/* damaged files                                                                                   */

/* A valid shard image: vocab 259, frames of 16 tokens, 40 tokens (frames 16, 16, 8), docs at 0 and 20. */
static unsigned char *good_image(size_t *size, int32_t *tokens) {
    char path[128];
    snprintf(path, sizeof path, "%s/good.tok", g_dir);
    for (int i = 0; i < 40; i++) tokens[i] = (int32_t)((i * 37) % 256);
    const int64_t docs[] = {0, 20};
    shard_make(path, LOOM_BYTES_VOCAB, 16, tokens, 40, docs, 2);
    return file_read(path, size);
}

static void write_case(char *path, size_t path_size, const char *label, const unsigned char *img, size_t size) {
    snprintf(path, path_size, "%s/%s.tok", g_dir, label);
    file_write(path, img, size);
}

/* Replace frame 1 of the good image by one whose token 5 is `id`, moving everything after it, and fix up
 * the frame index, index_offset and checksum, so that only the vocabulary check can object. */
static unsigned char *image_with_token(const unsigned char *img, size_t size, const int32_t *tokens, uint32_t id,
                                       size_t *out_size) {
    uint64_t index_offset = le_get64(img + size - 24);
    uint64_t off1 = le_get64(img + index_offset + 16), len1 = le_get64(img + index_offset + 24);
    unsigned char raw[32];
    for (int i = 0; i < 16; i++) {
        uint32_t v = i == 5 ? id : (uint32_t)tokens[16 + i];
        raw[2 * i] = (unsigned char)v;
        raw[2 * i + 1] = (unsigned char)(v >> 8);
    }
    size_t cap = ZSTD_compressBound(sizeof raw);
    unsigned char *frame = malloc_check(cap);
    size_t flen = ZSTD_compress(frame, cap, raw, sizeof raw, 3);
    CHECK(!ZSTD_isError(flen), "zstd: %s", ZSTD_getErrorName(flen));

    int64_t delta = (int64_t)flen - (int64_t)len1;
    *out_size = (size_t)((int64_t)size + delta);
    unsigned char *out = malloc_check(*out_size);
    memcpy(out, img, off1);
    memcpy(out + off1, frame, flen);
    memcpy(out + off1 + flen, img + off1 + len1, size - (off1 + len1));
    uint64_t new_index = (uint64_t)((int64_t)index_offset + delta);
    le_put64(out + new_index + 24, flen);
    le_put64(out + new_index + 32, le_get64(out + new_index + 32) + (uint64_t)delta);
    le_put64(out + *out_size - 24, new_index);
    fix_checksum(out, *out_size);
    free(frame);
    return out;
}

static void test_damaged(void) {
    size_t size;
    int32_t tokens[40];
    unsigned char *img = good_image(&size, tokens);
    unsigned char *bad = malloc_check(size);
    char path[128];

    write_case(path, sizeof path, "cut_half", img, size / 2);
    expect_open_fails("damaged/truncated_half", path, "truncated");

    write_case(path, sizeof path, "cut_10", img, 10);
    expect_open_fails("damaged/truncated_10", path, "truncated: 10 bytes, expected at least 88");

    memcpy(bad, img, size);
    bad[0] = 'X';
    write_case(path, sizeof path, "bad_magic", bad, size);
    expect_open_fails("damaged/bad_magic", path, "not a loom token shard (bad magic)");

    memcpy(bad, img, size);
    bad[LOOM_SHARD_HEADER_BYTES + 5] ^= 0x40;
    write_case(path, sizeof path, "flipped", bad, size);
    expect_open_fails("damaged/flipped_frame_byte", path, "checksum mismatch: file is corrupt");

    memcpy(bad, img, size);
    le_put32(bad + 56, LOOM_SHARD_FLAG_LOSS_MASK);
    fix_checksum(bad, size);
    write_case(path, sizeof path, "mask_flag", bad, size);
    expect_open_fails("damaged/mask_flag", path, "loss mask");

    memcpy(bad, img, size);
    le_put32(bad + 8, 2);
    fix_checksum(bad, size);
    write_case(path, sizeof path, "version2", bad, size);
    expect_open_fails("damaged/version", path, "unsupported shard version 2");

    memcpy(bad, img, size);
    le_put64(bad + 24, 57);
    fix_checksum(bad, size);
    write_case(path, sizeof path, "count57", bad, size);
    expect_open_fails("damaged/token_count_vs_frames", path, "inconsistent with 3 frames of 16 tokens");

    memcpy(bad, img, size);
    uint64_t index_offset = le_get64(img + size - 24);
    le_put64(bad + index_offset + 3 * 16 + 8, 0);
    fix_checksum(bad, size);
    write_case(path, sizeof path, "docs_descending", bad, size);
    expect_open_fails("damaged/doc_index_order", path, "document index not ascending");

    size_t vsize;
    unsigned char *vbad = image_with_token(img, size, tokens, 300, &vsize);
    write_case(path, sizeof path, "vocab", vbad, vsize);
    expect_open_fails("damaged/token_over_vocab", path, "token id 300 at position 21 >= vocab size 259");
    free(vbad);

    /* the same surgery with an in-range id must give a valid shard: the patching itself is sound */
    vbad = image_with_token(img, size, tokens, 258, &vsize);
    write_case(path, sizeof path, "vocab_ok", vbad, vsize);
    struct loom_shard *s = loom_shard_open(path);
    int32_t got[40];
    loom_shard_read(s, 0, 40, got);
    test_result(got[21] == 258 && got[20] == tokens[20] && got[39] == tokens[39], "damaged/patch_control",
                "tokens 20 21 39 = %d %d %d, want %d 258 %d", got[20], got[21], got[39], tokens[20], tokens[39]);
    loom_shard_close(s);
    free(vbad);

    snprintf(path, sizeof path, "%s/missing.tok", g_dir);
    expect_open_fails("damaged/missing_file", path, "cannot open shard");

    free(bad);
    free(img);
}

/* The writer refuses an id outside the vocabulary (a bug in the caller: CHECK, exit status 1). */
static void test_writer_rejects_id(void) {
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        char path[128];
        snprintf(path, sizeof path, "%s/reject.tok", g_dir);
        struct loom_shard_writer *w = loom_shard_writer_open(path, LOOM_BYTES_VOCAB, 0, 16);
        const int32_t ids[] = {1, 259};
        loom_shard_writer_append(w, ids, 2);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    test_result(code == 1, "writer_rejects_id", "exit status %d, want 1", code);
}

/* ---------------------------------------------------------------------------------------------- */
/* byte tokenizer                                                                                  */

static void test_bytetok(void) {
    unsigned char text[256];
    for (int i = 0; i < 256; i++) text[i] = (unsigned char)(255 - i);
    int32_t ids[260];
    size_t n = loom_bytetok_encode(text, 256, ids);
    int enc_ok = n == 256;
    for (int i = 0; i < 256 && enc_ok; i++) enc_ok = ids[i] == 255 - i;
    test_result(enc_ok, "bytetok/encode", "n %zu, ids[0] %d ids[255] %d", n, ids[0], ids[255]);

    unsigned char back[260 * LOOM_BYTES_DECODE_MAX];
    size_t m = loom_bytetok_decode(ids, n, back);
    test_result(m == 256 && memcmp(back, text, 256) == 0, "bytetok/decode_bytes", "decoded %zu bytes", m);

    const int32_t mixed[] = {'h', LOOM_BYTES_BOS, 'i', LOOM_BYTES_EOS, LOOM_BYTES_PAD};
    m = loom_bytetok_decode(mixed, 5, back);
    back[m] = '\0';
    test_result(strcmp((char *)back, "h<|bos|>i<|eos|><|pad|>") == 0, "bytetok/decode_specials", "got \"%s\"",
                (char *)back);

    uint64_t want = XXH64("loom-bytes-v1", 13, 0);
    test_result(loom_bytetok_hash() == want && LOOM_BYTES_VOCAB == 259 && LOOM_BYTES_EOS == 257, "bytetok/hash",
                "hash %016llx want %016llx", (unsigned long long)loom_bytetok_hash(), (unsigned long long)want);
}

/* ---------------------------------------------------------------------------------------------- */

static void remove_dir(const char *dir) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cannot remove %s", dir);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/loom_test_shard_XXXXXX");
    CHECK(mkdtemp(g_dir) != NULL, "mkdtemp");
    test_round_trips();
    test_doc_marks();
    test_damaged();
    test_writer_rejects_id();
    test_bytetok();
    remove_dir(g_dir);
    return test_exit();
}
