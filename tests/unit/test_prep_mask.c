/*
 * tests/unit/test_prep_mask.c — `loom data prep` on JSONL, read back through the shard reader.
 *
 * Runs data_prep_main in this process with the byte tokenizer (one token per byte, so the expected
 * stream is known exactly) and small frames and shards, then reads every shard back and compares the
 * concatenated tokens, loss mask and document starts with what the records say: trajectories keep only
 * the assistant's tokens in the loss (and the closing eos when the assistant spoke last), text records
 * and plain files count whole. A second run with no trajectories must give shards without a mask, and
 * large plain files (chunked reading, a chunk with no place to cut) must come through byte for byte.
 * Last, the places where prep cuts plain text into chunks must be places where the BPE pre-tokenizer
 * splits anyway: pre-tokenizing chunk by chunk must give the pieces of the whole text.
 */
#define _XOPEN_SOURCE 700

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/error.h"
#include "data/bytetok.h"
#include "data/prep.h"
#include "data/pretokenize.h"
#include "data/shard.h"
#include "tests/test.h"

static char g_dir[64];

/* ---------------------------------------------------------------------------------------------- */
/* the expected stream                                                                             */

struct stream {
    int32_t *ids;
    uint8_t *mask;
    size_t n, cap;
    int64_t *doc_starts;
    size_t n_docs, docs_cap;
};

static void stream_push_id(struct stream *s, int32_t id, uint8_t bit) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 4096;
        s->ids = realloc(s->ids, s->cap * sizeof *s->ids);
        s->mask = realloc(s->mask, s->cap);
        CHECK(s->ids && s->mask, "out of memory growing the expected stream to %zu tokens", s->cap);
    }
    s->ids[s->n] = id;
    s->mask[s->n++] = bit;
}

/* The byte tokenizer: one token per byte. */
static void stream_push(struct stream *s, const char *text, size_t len, uint8_t bit) {
    for (size_t i = 0; i < len; i++) stream_push_id(s, (unsigned char)text[i], bit);
}

static void stream_start_doc(struct stream *s) {
    if (s->n_docs == s->docs_cap) {
        s->docs_cap = s->docs_cap ? 2 * s->docs_cap : 64;
        s->doc_starts = realloc(s->doc_starts, s->docs_cap * sizeof *s->doc_starts);
        CHECK(s->doc_starts, "out of memory growing the expected document starts");
    }
    s->doc_starts[s->n_docs++] = (int64_t)s->n;
}

static void stream_end_doc(struct stream *s, uint8_t bit) { stream_push_id(s, LOOM_BYTES_EOS, bit); }

static void stream_free(struct stream *s) {
    free(s->ids);
    free(s->mask);
    free(s->doc_starts);
}

/* ---------------------------------------------------------------------------------------------- */
/* inputs                                                                                          */

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint64_t rng_next(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Random text of 0..max_len bytes: words, spaces, newlines, quotes and a two-byte UTF-8 letter. */
static char *text_random(size_t max_len) {
    static const char *const pieces[] = {"a", "b", "Z", " ", "\n", "\"", "\\", "7", "\xc3\xa9", "{"};
    size_t len = rng_next() % (max_len + 1);
    char *t = malloc_check(len + 2);
    size_t n = 0;
    while (n < len) {
        const char *p = pieces[rng_next() % 10];
        size_t pl = strlen(p);
        memcpy(t + n, p, pl);
        n += pl;
    }
    t[n] = '\0';
    return t;
}

static const char *const ROLES[] = {"system", "user", "assistant", "tool"};

/* Append one JSON line holding `record` to f and free the record. */
static void jsonl_write(FILE *f, cJSON *record) {
    char *line = cJSON_PrintUnformatted(record);
    CHECK(line != NULL, "cJSON_PrintUnformatted");
    fprintf(f, "%s\n", line);
    free(line);
    cJSON_Delete(record);
}

/* A text record: all of it counts. */
static void record_text(FILE *f, struct stream *want, const char *text) {
    cJSON *rec = cJSON_CreateObject();
    cJSON_AddStringToObject(rec, "text", text);
    jsonl_write(f, rec);
    stream_start_doc(want);
    stream_push(want, text, strlen(text), 1);
    stream_end_doc(want, 1);
}

/* A trajectory of n segments with the given roles (indexes into ROLES) and texts. */
static void record_segments(FILE *f, struct stream *want, const int *roles, const char *const *texts, int n) {
    cJSON *rec = cJSON_CreateObject();
    cJSON *segs = cJSON_AddArrayToObject(rec, "segments");
    stream_start_doc(want);
    for (int k = 0; k < n; k++) {
        cJSON *seg = cJSON_CreateObject();
        cJSON_AddStringToObject(seg, "role", ROLES[roles[k]]);
        cJSON_AddStringToObject(seg, "text", texts[k]);
        cJSON_AddItemToArray(segs, seg);
        stream_push(want, texts[k], strlen(texts[k]), roles[k] == 2);
    }
    jsonl_write(f, rec);
    stream_end_doc(want, roles[n - 1] == 2);
}

static void plain_file(const char *path, struct stream *want, const char *text, size_t len) {
    FILE *f = fopen_check(path, "wb");
    CHECK(fwrite(text, 1, len, f) == len, "short write of %s", path);
    fclose(f);
    stream_start_doc(want);
    stream_push(want, text, len, 1);
    stream_end_doc(want, 1);
}

static void prep_run(const char *source, const char *const *inputs, int n_inputs, const char *shard_tokens,
                     const char *frame_tokens) {
    char *argv[32];
    int argc = 0;
    argv[argc++] = (char *)"prep";
    argv[argc++] = (char *)"--tokenizer=bytes";
    argv[argc++] = (char *)"--source";
    argv[argc++] = (char *)source;
    argv[argc++] = (char *)"--out";
    argv[argc++] = g_dir;
    argv[argc++] = (char *)"--shard-tokens";
    argv[argc++] = (char *)shard_tokens;
    argv[argc++] = (char *)"--frame-tokens";
    argv[argc++] = (char *)frame_tokens;
    argv[argc++] = (char *)"--in";
    for (int i = 0; i < n_inputs; i++) argv[argc++] = (char *)inputs[i];
    CHECK(data_prep_main(argc, argv) == 0, "prep of %s failed", source);
}

/* ---------------------------------------------------------------------------------------------- */
/* reading the shards back                                                                         */

/* Read every shard of source and compare with want. want_mask: the shards must carry a mask. */
static void check_shards(const char *label, const char *source, const struct stream *want, int want_mask,
                         int min_shards) {
    char path[256], name[160];
    int32_t *ids = malloc_check((want->n + 1) * sizeof *ids);
    uint8_t *mask = malloc_check(want->n + 1);
    int64_t *starts = malloc_check((want->n_docs + 64) * sizeof *starts);
    size_t total = 0, n_starts = 0;
    int shards = 0, mask_ok = 1, layout_ok = 1;
    for (;; shards++) {
        snprintf(path, sizeof path, "%s/%s-%05d.tok", g_dir, source, shards);
        if (access(path, F_OK) != 0) break;
        struct loom_shard *s = loom_shard_open(path);
        int64_t n = loom_shard_tokens(s);
        mask_ok &= loom_shard_has_mask(s) == want_mask;
        if (total + (size_t)n > want->n) {
            layout_ok = 0;
            loom_shard_close(s);
            break;
        }
        loom_shard_read(s, 0, n, ids + total);
        loom_shard_read_mask(s, 0, n, mask + total);
        /* a document continued from the previous shard is document 0 here: not a start of the stream */
        for (int64_t d = 0; d < loom_shard_docs(s); d++) {
            int64_t start = (int64_t)total + loom_shard_doc_start(s, d);
            int continued = d == 0 && total > 0 && ids[total - 1] != LOOM_BYTES_EOS;
            if (!continued && n_starts < want->n_docs + 64) starts[n_starts++] = start;
        }
        total += (size_t)n;
        loom_shard_close(s);
    }

    snprintf(name, sizeof name, "%s/shards", label);
    test_result(layout_ok && shards >= min_shards && total == want->n && mask_ok, name,
                "%d shards (want at least %d), %zu tokens (want %zu), masks %s (want %s)", shards, min_shards, total,
                want->n, mask_ok ? "as wanted" : "wrong", want_mask ? "present" : "absent");
    size_t bad = want->n;
    for (size_t i = 0; i < total && i < want->n && bad == want->n; i++)
        if (ids[i] != want->ids[i]) bad = i;
    snprintf(name, sizeof name, "%s/tokens", label);
    test_result(total == want->n && bad == want->n, name, "token %zu: got %d want %d", bad,
                bad < want->n ? ids[bad] : 0, bad < want->n ? want->ids[bad] : 0);
    bad = want->n;
    for (size_t i = 0; i < total && i < want->n && bad == want->n; i++)
        if (mask[i] != (want_mask ? want->mask[i] : 1)) bad = i;
    snprintf(name, sizeof name, "%s/mask", label);
    test_result(total == want->n && bad == want->n, name, "mask of token %zu (id %d): got %d want %d", bad,
                bad < want->n ? want->ids[bad] : 0, bad < want->n ? mask[bad] : 0,
                bad < want->n ? (want_mask ? want->mask[bad] : 1) : 0);
    size_t dbad = want->n_docs;
    for (size_t d = 0; d < n_starts && d < want->n_docs && dbad == want->n_docs; d++)
        if (starts[d] != want->doc_starts[d]) dbad = d;
    snprintf(name, sizeof name, "%s/doc_starts", label);
    test_result(n_starts == want->n_docs && dbad == want->n_docs, name,
                "%zu documents (want %zu); document %zu starts at %lld, want %lld", n_starts, want->n_docs, dbad,
                dbad < n_starts ? (long long)starts[dbad] : -1LL,
                dbad < want->n_docs ? (long long)want->doc_starts[dbad] : -1LL);
    free(starts);
    free(mask);
    free(ids);
}

/* ---------------------------------------------------------------------------------------------- */

/* Fixed records whose mask is spelled out, then random ones, then a plain file. */
static void test_trajectories(void) {
    struct stream want = {0};
    char jsonl[128], plain[128];
    snprintf(jsonl, sizeof jsonl, "%s/traj.jsonl", g_dir);
    snprintf(plain, sizeof plain, "%s/plain.txt", g_dir);
    FILE *f = fopen_check(jsonl, "wb");

    record_text(f, &want, "hi");
    fprintf(f, "\n  \t\r\n");  /* blank lines are skipped */
    const int roles_a[] = {0, 1, 2, 3, 2};
    const char *const texts_a[] = {"S", "U1", "A1", "T", "A2"};
    record_segments(f, &want, roles_a, texts_a, 5);
    const int roles_b[] = {1, 2, 1};
    const char *const texts_b[] = {"q", "", "\xc3\xa9\n"};
    record_segments(f, &want, roles_b, texts_b, 3);

    /* the spelled-out mask of the first three documents: "hi" eos | S U1 A1 T A2 eos | q é \n eos */
    const uint8_t head[] = {1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0};
    int head_ok = want.n >= sizeof head && memcmp(want.mask, head, sizeof head) == 0;
    test_result(head_ok, "trajectory/expected_mask", "the test's own expectation is off (%zu tokens)", want.n);

    for (int r = 0; r < 300; r++) {
        if (rng_next() % 4 == 0) {
            char *t = text_random(60);
            record_text(f, &want, t);
            free(t);
            continue;
        }
        int n = 1 + (int)(rng_next() % 6), roles[6];
        char *texts[6];
        for (int k = 0; k < n; k++) {
            roles[k] = (int)(rng_next() % 4);
            texts[k] = text_random(40);
        }
        record_segments(f, &want, roles, (const char *const *)texts, n);
        for (int k = 0; k < n; k++) free(texts[k]);
    }
    fclose(f);
    const char body[] = "plain text counts whole\n";
    plain_file(plain, &want, body, sizeof body - 1);

    const char *const inputs[] = {jsonl, plain};
    prep_run("traj", inputs, 2, "997", "7");
    check_shards("trajectory", "traj", &want, 1, 3);
    stream_free(&want);
}

/* No trajectories: no mask. Large plain files go through the chunked reader unchanged, including one
 * with no place to cut a chunk (one long word) that must grow its buffer. */
static void test_no_trajectories(void) {
    struct stream want = {0};
    char jsonl[128], words[128], word[128];
    snprintf(jsonl, sizeof jsonl, "%s/texts.jsonl", g_dir);
    snprintf(words, sizeof words, "%s/words.txt", g_dir);
    snprintf(word, sizeof word, "%s/word.txt", g_dir);

    FILE *f = fopen_check(jsonl, "wb");
    for (int r = 0; r < 50; r++) {
        char *t = text_random(80);
        record_text(f, &want, t);
        free(t);
    }
    record_text(f, &want, "");
    fclose(f);

    size_t len = 2600000;
    char *big = malloc_check(len);
    for (size_t i = 0; i < len; i++) {
        uint64_t x = rng_next() % 16;
        big[i] = x == 0 ? ' ' : x == 1 ? '\n' : x == 2 ? '5' : (char)('a' + x);
    }
    plain_file(words, &want, big, len);
    memset(big, 'w', len);
    plain_file(word, &want, big, len);
    free(big);

    const char *const inputs[] = {jsonl, words, word};
    prep_run("texts", inputs, 3, "1M", "65536");
    check_shards("no_trajectory", "texts", &want, 0, 6);
    stream_free(&want);
}

/* ---------------------------------------------------------------------------------------------- */
/* chunk cuts                                                                                      */

/* Append the end positions (plus base) of the pre-tokenizer's pieces of text[0..n) to ends. */
static size_t piece_ends(const struct loom_pretok *p, struct loom_pretok_match *m, const char *text, size_t n,
                         size_t base, size_t *ends, size_t count) {
    for (size_t pos = 0; pos < n;) {
        pos = loom_pretok_next(p, m, text, n, pos);
        ends[count++] = base + pos;
    }
    return count;
}

static void test_text_cut(void) {
    /* letters (ASCII, accented, uppercase), contractions, digits, spaces and other whitespace (tab,
     * CR LF, no-break space), punctuation runs and slashes, CJK, an invalid byte */
    static const char *const pieces[] = {"a", "b", "Z", "Ab", "'s", " ", "  ", "\n", "\r\n", "\t", "5", "12",
                                         "!", ".", "/", "\xc3\xa9", "\xe4\xb8\xad", "\xe3\x80\x81",
                                         "\xea\xb0\x80", "\xff", "\xc2\xa0", "-", "\n\n"};
    const size_t n_pieces = sizeof pieces / sizeof *pieces;
    struct loom_pretok *p = loom_pretok_init(LOOM_PRETOKENIZE_REGEX, "test");
    struct loom_pretok_match *m = loom_pretok_match_init(p);
    size_t cap = 4096;
    char *text = malloc_check(cap + 16);
    size_t *whole = malloc_check((cap + 16) * sizeof *whole), *chunked = malloc_check((cap + 16) * sizeof *chunked);
    long long cuts = 0, bad_trial = -1, bad_index = 0;
    for (int trial = 0; trial < 300 && bad_trial < 0; trial++) {
        size_t n = 0;
        while (n < cap) {
            /* mostly words and single spaces, so that cuts are common */
            const char *piece = rng_next() % 3 ? (rng_next() % 2 ? "a" : " ") : pieces[rng_next() % n_pieces];
            size_t pl = strlen(piece);
            memcpy(text + n, piece, pl);
            n += pl;
        }
        size_t n_whole = piece_ends(p, m, text, n, 0, whole, 0), n_chunked = 0;
        /* the reader's loop: a window of the text, cut where allowed, grown while there is no cut */
        for (size_t pos = 0; pos < n;) {
            size_t len = 1 + rng_next() % 200, cut = 0;
            for (;;) {
                if (len >= n - pos) {
                    cut = n - pos;
                    break;
                }
                cut = data_prep_text_cut((const unsigned char *)text + pos, len);
                if (cut > 0) break;
                len *= 2;
            }
            if (pos + cut < n) cuts++;
            n_chunked = piece_ends(p, m, text + pos, cut, pos, chunked, n_chunked);
            pos += cut;
        }
        for (size_t i = 0; i < n_whole && bad_trial < 0; i++)
            if (i >= n_chunked || chunked[i] != whole[i]) {
                bad_trial = trial;
                bad_index = (long long)i;
            }
        if (bad_trial < 0 && n_chunked != n_whole) {
            bad_trial = trial;
            bad_index = (long long)n_whole;
        }
    }
    test_result(bad_trial < 0 && cuts > 1000, "text_cut/pieces_unchanged",
                "trial %lld: piece %lld differs between chunked and whole pre-tokenization (%lld cuts made)",
                bad_trial, bad_index, cuts);
    free(chunked);
    free(whole);
    free(text);
    loom_pretok_match_free(m);
    loom_pretok_free(p);
}

static void remove_dir(const char *dir) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cannot remove %s", dir);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/loom_test_prep_XXXXXX");
    CHECK(mkdtemp(g_dir) != NULL, "mkdtemp");
    test_trajectories();
    test_no_trajectories();
    test_text_cut();
    remove_dir(g_dir);
    return test_exit();
}
