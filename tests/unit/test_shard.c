/*
 * tests/unit/test_shard.c — token shards and the byte tokenizer.
 *
 * Round trips over several frame sizes and both token widths, with and without a per-token loss mask:
 * random-access reads of tokens and mask across frame boundaries, the on-disk bit order of the mask,
 * document starts; then damaged files (token frames and mask frames), each opened in a child process
 * that must exit 2 with a message naming the file and saying what is wrong.
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

static int all_ones(const uint8_t *mask, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (mask[i] != 1) return 0;
    return 1;
}

/* Write tokens[0..n) to path; a document starts at each doc_starts[d] (doc_starts[0] = 0). With mask
 * (one byte per token), the shard carries it: pieces that are all ones go through the plain append,
 * which must mean "all count", the others through the masked append. */
static void shard_make(const char *path, uint32_t vocab, uint32_t frame_tokens, const int32_t *tokens,
                       const uint8_t *mask, size_t n, const int64_t *doc_starts, size_t n_docs) {
    struct loom_shard_writer *w = mask ? loom_shard_writer_open_masked(path, vocab, 0x1234abcdull, frame_tokens)
                                       : loom_shard_writer_open(path, vocab, 0x1234abcdull, frame_tokens);
    size_t at = 0;
    for (size_t d = 0; d < n_docs; d++) {
        size_t end = d + 1 < n_docs ? (size_t)doc_starts[d + 1] : n;
        /* append in uneven pieces so writes cross frame boundaries mid-call */
        while (at < end) {
            size_t m = 1 + rng_next() % 97;
            if (m > end - at) m = end - at;
            if (mask && !all_ones(mask + at, m)) loom_shard_writer_append_masked(w, tokens + at, mask + at, m);
            else loom_shard_writer_append(w, tokens + at, m);
            at += m;
        }
        loom_shard_writer_end_document(w);
        loom_shard_writer_end_document(w);  /* an empty document is not recorded */
    }
    loom_shard_writer_close(w);
}

static void open_and_close(const char *path) { loom_shard_close(loom_shard_open(path)); }

/* Fork; the child opens path (stderr into a pipe). Pass when the child exits `want_status` and its stderr
 * holds both the path and `phrase`. */
static void expect_open_fails(const char *name, const char *path, const char *phrase) {
    char msg[4096];
    int code = test_run_child(open_and_close, path, msg, sizeof msg);
    int ok = code == 2 && strstr(msg, "loom: error: ") && strstr(msg, path) && strstr(msg, phrase);
    test_result(ok, name, "exit status %d (want 2), stderr \"%s\" (want the path %s and \"%s\")", code, msg, path,
                phrase);
}

/* ---------------------------------------------------------------------------------------------- */
/* round trips                                                                                     */

/* A mask of alternating runs of 1..40 ones and 1..40 zeros, starting with either. */
static uint8_t *mask_random(size_t n) {
    uint8_t *mask = malloc_check(n + 1);
    uint8_t bit = (uint8_t)(rng_next() & 1);
    for (size_t i = 0; i < n;) {
        size_t run = 1 + rng_next() % 40;
        for (; run > 0 && i < n; run--) mask[i++] = bit;
        bit ^= 1;
    }
    return mask;
}

/* The mask bits of tokens [first, first + ntok) as the shard stores them: LSB first, zero padding. */
static void mask_pack(unsigned char *out, const uint8_t *mask, size_t ntok) {
    memset(out, 0, (ntok + 7) / 8);
    for (size_t i = 0; i < ntok; i++) out[i / 8] |= (unsigned char)(mask[i] << (i % 8));
}

/* Mask frame 0 of the image decompresses to the expected packed bits. */
static void check_mask_bit_order(const char *label, const unsigned char *img, size_t size, const uint8_t *mask,
                                 size_t n, uint32_t frame_tokens) {
    char name[160];
    snprintf(name, sizeof name, "%s/mask_bit_order", label);
    uint64_t index_offset = le_get64(img + size - 24), frame_count = le_get64(img + 40);
    const unsigned char *entry = img + index_offset + 16 * frame_count;
    size_t ntok = n < frame_tokens ? n : frame_tokens;
    size_t nbytes = (ntok + 7) / 8;
    unsigned char *want = malloc_check(nbytes), *got = malloc_check(nbytes + 1);
    mask_pack(want, mask, ntok);
    size_t k = ZSTD_decompress(got, nbytes + 1, img + le_get64(entry), le_get64(entry + 8));
    size_t bad = nbytes;
    for (size_t i = 0; i < nbytes && !ZSTD_isError(k); i++)
        if (got[i] != want[i]) {
            bad = i;
            break;
        }
    test_result(!ZSTD_isError(k) && k == nbytes && bad == nbytes, name,
                "mask frame 0: %s, %zu bytes (want %zu); byte %zu got %02x want %02x",
                ZSTD_isError(k) ? ZSTD_getErrorName(k) : "decompressed", ZSTD_isError(k) ? 0 : k, nbytes, bad,
                bad < nbytes ? got[bad] : 0, bad < nbytes ? want[bad] : 0);
    free(want);
    free(got);
}

/* Mask reads over the whole shard and over random ranges (many crossing frame boundaries), interleaved
 * with token reads so the token and mask caches must stay apart. want NULL: the shard has no mask and
 * every read must give ones. */
static void check_mask_reads(const char *label, struct loom_shard *s, const uint8_t *want, const int32_t *tokens,
                             size_t n, uint32_t frame_tokens) {
    char name[160];
    snprintf(name, sizeof name, "%s/has_mask", label);
    test_result(loom_shard_has_mask(s) == (want != NULL), name, "has_mask %d, want %d", loom_shard_has_mask(s),
                want != NULL);

    uint8_t *got = malloc_check(n + 1);
    int32_t *tok = malloc_check((n + 1) * sizeof *tok);
    memset(got, 7, n + 1);
    loom_shard_read_mask(s, 0, (int64_t)n, got);
    size_t bad = n;
    for (size_t i = 0; i < n && bad == n; i++)
        if (got[i] != (want ? want[i] : 1)) bad = i;
    snprintf(name, sizeof name, "%s/mask_read_all", label);
    test_result(bad == n && got[n] == 7, name, "mask of token %zu: got %d want %d (guard byte %d)", bad,
                bad < n ? got[bad] : 0, bad < n ? (want ? want[bad] : 1) : 0, got[n]);

    int range_bad = 0;
    long long bad_start = 0, bad_count = 0, bad_at = 0;
    int bad_got = 0, bad_want = 0;
    for (int r = 0; r < 300 && n > 0 && !range_bad; r++) {
        int64_t start = (int64_t)(rng_next() % n);
        int64_t count = (int64_t)(rng_next() % (3 * frame_tokens + 2));
        if (r % 3 == 0) start = (int64_t)((rng_next() % (n / frame_tokens + 1)) * frame_tokens) - 1;
        if (start < 0) start = 0;
        if (start >= (int64_t)n) start = (int64_t)n - 1;
        if (count > (int64_t)n - start) count = (int64_t)n - start;
        loom_shard_read_mask(s, start, count, got);
        int64_t tstart = (int64_t)(rng_next() % n), tcount = 1 + (int64_t)(rng_next() % frame_tokens);
        if (tcount > (int64_t)n - tstart) tcount = (int64_t)n - tstart;
        loom_shard_read(s, tstart, tcount, tok);
        for (int64_t i = 0; i < count && !range_bad; i++) {
            int w = want ? want[start + i] : 1;
            if (got[i] != w) {
                range_bad = 1;
                bad_start = start;
                bad_count = count;
                bad_at = i;
                bad_got = got[i];
                bad_want = w;
            }
        }
        for (int64_t i = 0; i < tcount && !range_bad; i++)
            if (tok[i] != tokens[tstart + i]) {
                range_bad = 1;
                bad_start = tstart;
                bad_count = tcount;
                bad_at = i;
                bad_got = tok[i];
                bad_want = tokens[tstart + i];
            }
    }
    snprintf(name, sizeof name, "%s/mask_random_ranges", label);
    test_result(!range_bad, name, "read of %lld at %lld: element %lld got %d want %d", bad_count, bad_start,
                bad_at, bad_got, bad_want);
    free(tok);
    free(got);
}

static void check_round_trip(const char *label, uint32_t vocab, uint32_t frame_tokens, size_t n,
                             const int64_t *doc_starts, size_t n_docs, int masked) {
    char path[128], name[160];
    snprintf(path, sizeof path, "%s/%s.tok", g_dir, label);
    int32_t *tokens = malloc_check((n + 1) * sizeof *tokens);
    for (size_t i = 0; i < n; i++) tokens[i] = (int32_t)(rng_next() % vocab);
    if (n > 0) tokens[n - 1] = (int32_t)vocab - 1;
    uint8_t *mask = masked ? mask_random(n) : NULL;
    shard_make(path, vocab, frame_tokens, tokens, mask, n, doc_starts, n_docs);

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
    snprintf(name, sizeof name, "%s/flags", label);
    test_result(le_get32(img + 56) == (masked ? LOOM_SHARD_FLAG_LOSS_MASK : 0), name, "header flags %u, want %u",
                le_get32(img + 56), masked ? LOOM_SHARD_FLAG_LOSS_MASK : 0);
    if (masked && n > 0) check_mask_bit_order(label, img, size, mask, n, frame_tokens);
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

    check_mask_reads(label, s, mask, tokens, n, frame_tokens);
    loom_shard_close(s);
    free(got);
    free(mask);
    free(tokens);
}

static void test_round_trips(void) {
    const int64_t docs_a[] = {0, 100, 101, 500, 999};
    check_round_trip("odd_frames", LOOM_BYTES_VOCAB, 64, 1000, docs_a, 5, 0);
    check_round_trip("exact_frames", LOOM_BYTES_VOCAB, 100, 1000, docs_a, 5, 0);
    check_round_trip("frame_of_one", LOOM_BYTES_VOCAB, 1, 257, docs_a, 3, 0);
    check_round_trip("one_big_frame", LOOM_BYTES_VOCAB, 65536, 1000, docs_a, 4, 0);
    const int64_t docs_one[] = {0};
    check_round_trip("single_token", LOOM_BYTES_VOCAB, 65536, 1, docs_one, 1, 0);
    check_round_trip("empty", LOOM_BYTES_VOCAB, 16, 0, docs_one, 0, 0);
    const int64_t docs_b[] = {0, 4095, 4096, 12000};
    check_round_trip("u32_ids", 100000, 1000, 20000, docs_b, 4, 0);
    const int64_t docs_c[] = {0, 332, 333, 4998};
    check_round_trip("u32_odd_frames", 1u << 20, 333, 5001, docs_c, 4, 0);
    check_round_trip("vocab_65536_u16", 65536, 128, 3000, docs_b, 1, 0);

    /* with a loss mask: partial last frames whose mask ends mid-byte (1003 = 15 x 64 + 43; 5001 =
     * 15 x 333 + 6), frames of one token (7 padding bits each), frames a whole number of bytes */
    check_round_trip("masked_odd_frames", LOOM_BYTES_VOCAB, 64, 1003, docs_a, 5, 1);
    check_round_trip("masked_exact_frames", LOOM_BYTES_VOCAB, 8, 1000, docs_a, 5, 1);
    check_round_trip("masked_frame_of_one", LOOM_BYTES_VOCAB, 1, 257, docs_a, 3, 1);
    check_round_trip("masked_frame_of_13", LOOM_BYTES_VOCAB, 13, 1000, docs_a, 5, 1);
    check_round_trip("masked_one_big_frame", LOOM_BYTES_VOCAB, 65536, 1000, docs_a, 4, 1);
    check_round_trip("masked_single_token", LOOM_BYTES_VOCAB, 65536, 1, docs_one, 1, 1);
    check_round_trip("masked_empty", LOOM_BYTES_VOCAB, 16, 0, docs_one, 0, 1);
    check_round_trip("masked_u32_odd_frames", 1u << 20, 333, 5001, docs_c, 4, 1);
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
    shard_make(path, LOOM_BYTES_VOCAB, 16, tokens, NULL, 40, docs, 2);
    return file_read(path, size);
}

/* A valid masked shard image: vocab 259, frames of 16 tokens, 38 tokens (frames 16, 16, 6: the last
 * mask frame is one byte with 2 padding bits), docs at 0 and 20; token i counts when i % 3 == 0. */
static unsigned char *good_masked_image(size_t *size, uint8_t *mask) {
    char path[128];
    snprintf(path, sizeof path, "%s/good_masked.tok", g_dir);
    int32_t tokens[38];
    for (int i = 0; i < 38; i++) {
        tokens[i] = (int32_t)((i * 53) % 256);
        mask[i] = i % 3 == 0;
    }
    const int64_t docs[] = {0, 20};
    shard_make(path, LOOM_BYTES_VOCAB, 16, tokens, mask, 38, docs, 2);
    return file_read(path, size);
}

static void write_case(char *path, size_t path_size, const char *label, const unsigned char *img, size_t size) {
    snprintf(path, path_size, "%s/%s.tok", g_dir, label);
    file_write(path, img, size);
}

/* Byte position of index entry k in the image: entries 0..frame_count-1 are the frame index, then (masked
 * shards) the mask index. */
static size_t image_entry(const unsigned char *img, size_t size, uint64_t k) {
    return (size_t)(le_get64(img + size - 24) + 16 * k);
}

/* Replace the compressed frame that index entry k points at by the zstd compression of raw[0..n),
 * moving everything after it, and fix up every later offset in the indexes, the entry's size,
 * index_offset and the checksum, so that only the checks on the frame's content can object. */
static unsigned char *image_replace_frame(const unsigned char *img, size_t size, uint64_t k,
                                          const unsigned char *raw, size_t n, size_t *out_size) {
    size_t cap = ZSTD_compressBound(n);
    unsigned char *frame = malloc_check(cap);
    size_t flen = ZSTD_compress(frame, cap, raw, n, 3);
    CHECK(!ZSTD_isError(flen), "zstd: %s", ZSTD_getErrorName(flen));

    uint64_t index_offset = le_get64(img + size - 24);
    uint64_t entries = le_get64(img + 40) * ((le_get32(img + 56) & LOOM_SHARD_FLAG_LOSS_MASK) ? 2 : 1);
    size_t entry = image_entry(img, size, k);
    uint64_t off = le_get64(img + entry), len = le_get64(img + entry + 8);
    int64_t delta = (int64_t)flen - (int64_t)len;
    *out_size = (size_t)((int64_t)size + delta);
    unsigned char *out = malloc_check(*out_size);
    memcpy(out, img, off);
    memcpy(out + off, frame, flen);
    memcpy(out + off + flen, img + off + len, size - (off + len));
    uint64_t new_index = (uint64_t)((int64_t)index_offset + delta);
    for (uint64_t e = 0; e < entries; e++) {
        unsigned char *p = out + new_index + 16 * e;
        if (le_get64(p) > off) le_put64(p, le_get64(p) + (uint64_t)delta);
    }
    le_put64(out + new_index + 16 * k + 8, flen);
    le_put64(out + *out_size - 24, new_index);
    fix_checksum(out, *out_size);
    free(frame);
    return out;
}

/* The good image with token 5 of frame 1 (position 21) set to `id`. */
static unsigned char *image_with_token(const unsigned char *img, size_t size, const int32_t *tokens, uint32_t id,
                                       size_t *out_size) {
    unsigned char raw[32];
    for (int i = 0; i < 16; i++) {
        uint32_t v = i == 5 ? id : (uint32_t)tokens[16 + i];
        raw[2 * i] = (unsigned char)v;
        raw[2 * i + 1] = (unsigned char)(v >> 8);
    }
    return image_replace_frame(img, size, 1, raw, sizeof raw, out_size);
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
    expect_open_fails("damaged/mask_flag_without_mask", path,
                      "with 3 frames (with a loss mask) and 2 documents is inconsistent");

    memcpy(bad, img, size);
    le_put32(bad + 56, 2);
    fix_checksum(bad, size);
    write_case(path, sizeof path, "flag2", bad, size);
    expect_open_fails("damaged/unknown_flag", path, "unknown header flags 0x2");

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

/* Damaged masked shards: the mask frames are covered by the checksum, and with the checksum fixed up
 * the mask frames' sizes, placement and padding are still checked. */
static void test_damaged_mask(void) {
    size_t size;
    uint8_t mask[38];
    unsigned char *img = good_masked_image(&size, mask);
    unsigned char *bad = malloc_check(size);
    char path[128];
    uint64_t mask0 = le_get64(img + image_entry(img, size, 3));  /* mask frame 0 */

    memcpy(bad, img, size);
    bad[mask0 + 4] ^= 0x10;
    write_case(path, sizeof path, "mask_flipped", bad, size);
    expect_open_fails("damaged_mask/flipped_mask_byte", path, "checksum mismatch: file is corrupt");

    memcpy(bad, img, size);
    le_put32(bad + 56, 0);
    fix_checksum(bad, size);
    write_case(path, sizeof path, "mask_flag_cleared", bad, size);
    expect_open_fails("damaged_mask/flag_cleared", path, "with 3 frames and 2 documents is inconsistent");

    memcpy(bad, img, size);
    le_put64(bad + image_entry(img, size, 3), mask0 + 1);
    fix_checksum(bad, size);
    write_case(path, sizeof path, "mask_offset", bad, size);
    expect_open_fails("damaged_mask/frame_offset", path, "mask frame 0 starts at offset");

    size_t vsize;
    const unsigned char one_byte[1] = {0x49};
    unsigned char *vbad = image_replace_frame(img, size, 4, one_byte, 1, &vsize);
    write_case(path, sizeof path, "mask_short", vbad, vsize);
    expect_open_fails("damaged_mask/frame_size", path, "mask frame 1 holds 1 bytes, expected 2 (16 tokens)");
    free(vbad);

    const unsigned char padded[1] = {0x40 | 0x09};  /* tokens 0 and 3 count; bit 6 is padding */
    vbad = image_replace_frame(img, size, 5, padded, 1, &vsize);
    write_case(path, sizeof path, "mask_padding", vbad, vsize);
    expect_open_fails("damaged_mask/padding_bits", path, "mask frame 2: padding bits after its 6 tokens are not 0");
    free(vbad);

    /* the same surgery with valid bits gives a valid shard whose mask is the new one */
    const unsigned char fine[2] = {0xA5, 0x0F};
    vbad = image_replace_frame(img, size, 4, fine, 2, &vsize);
    write_case(path, sizeof path, "mask_ok", vbad, vsize);
    struct loom_shard *s = loom_shard_open(path);
    uint8_t got[38], want[38];
    memcpy(want, mask, 38);
    for (int i = 0; i < 16; i++) want[16 + i] = (uint8_t)((fine[i / 8] >> (i % 8)) & 1);
    loom_shard_read_mask(s, 0, 38, got);
    int at = -1;
    for (int i = 0; i < 38 && at < 0; i++)
        if (got[i] != want[i]) at = i;
    test_result(loom_shard_has_mask(s) && at < 0, "damaged_mask/patch_control", "mask of token %d: got %d want %d",
                at, at >= 0 ? got[at] : 0, at >= 0 ? want[at] : 0);
    loom_shard_close(s);
    free(vbad);

    free(bad);
    free(img);
}

/* Misuse of the writer is a bug in the caller: CHECK, exit status 1. */
static void writer_bad_id(struct loom_shard_writer **w, const char *path) {
    *w = loom_shard_writer_open(path, LOOM_BYTES_VOCAB, 0, 16);
    const int32_t ids[] = {1, 259};
    loom_shard_writer_append(*w, ids, 2);
}

static void writer_mask_without_flag(struct loom_shard_writer **w, const char *path) {
    *w = loom_shard_writer_open(path, LOOM_BYTES_VOCAB, 0, 16);
    const int32_t ids[] = {1, 2};
    const uint8_t mask[] = {1, 0};
    loom_shard_writer_append_masked(*w, ids, mask, 2);
}

static void writer_mask_byte_2(struct loom_shard_writer **w, const char *path) {
    *w = loom_shard_writer_open_masked(path, LOOM_BYTES_VOCAB, 0, 16);
    const int32_t ids[] = {1, 2};
    const uint8_t mask[] = {1, 2};
    loom_shard_writer_append_masked(*w, ids, mask, 2);
}

static void expect_writer_check(const char *name, void (*misuse)(struct loom_shard_writer **, const char *)) {
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        char path[128];
        snprintf(path, sizeof path, "%s/reject.tok", g_dir);
        struct loom_shard_writer *w = NULL;
        misuse(&w, path);
        loom_shard_writer_close(w);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    test_result(code == 1, name, "exit status %d, want 1", code);
}

static void test_writer_checks(void) {
    expect_writer_check("writer_rejects_id", writer_bad_id);
    expect_writer_check("writer_rejects_mask_without_flag", writer_mask_without_flag);
    expect_writer_check("writer_rejects_mask_byte_2", writer_mask_byte_2);
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
    test_damaged_mask();
    test_writer_checks();
    test_bytetok();
    remove_dir(g_dir);
    return test_exit();
}
