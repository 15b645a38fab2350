/*
 * tests/unit/test_tokenizer.c — the BPE tokenizer: pre-tokenization, merge order, training, tokenizer.json.
 *
 * Pre-tokenization on hand-written cases (case changes, contractions, digits, CJK, kana, hangul, CJK
 * punctuation, whitespace runs, tabs, emoji); the merge order of a hand-built tokenizer; a tokenizer
 * trained on a generated corpus: round trips on random bytes (invalid UTF-8 included) and on text, no
 * merge touching a digit, no special produced by encoding, the same ids and hash after save and load,
 * a second save byte-identical to the first, no token learned with a special's text, specials that
 * would clash refused, encoding from two threads at once; the byte tokenizer
 * still behind the same interface; damaged tokenizer files, each loaded in a child process that must
 * exit 2 naming the file.
 */
#define _XOPEN_SOURCE 700

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "data/bpe.h"
#include "data/bytetok.h"
#include "data/pretokenize.h"
#include "data/tokenizer.h"
#include "tests/test.h"

static char g_dir[64];

static const char *const SPECIALS[] = {"<|bos|>", "<|eos|>", "<|pad|>", "<think>", "</think>",
                                       "<tool_call>", "</tool_call>", "<observation>", "</observation>"};
#define N_SPECIALS ((int)(sizeof SPECIALS / sizeof *SPECIALS))

/* ---------------------------------------------------------------------------------------------- */
/* helpers                                                                                         */

static char *file_read(const char *path, size_t *size) {
    FILE *f = fopen_check(path, "rb");
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc_check(*size + 1);
    CHECK(fread(buf, 1, *size, f) == *size, "short read of %s", path);
    buf[*size] = '\0';
    fclose(f);
    return buf;
}

static void file_write(const char *path, const char *text) {
    FILE *f = fopen_check(path, "wb");
    fputs(text, f);
    fclose(f);
}

/* A growable string. */
struct text {
    char *s;
    size_t n, cap;
};

static void text_add(struct text *t, const char *s, size_t n) {
    if (t->n + n + 1 > t->cap) {
        t->cap = 2 * (t->n + n + 1);
        t->s = realloc(t->s, t->cap);
        CHECK(t->s != NULL, "out of memory");
    }
    memcpy(t->s + t->n, s, n);
    t->n += n;
    t->s[t->n] = '\0';
}

static void text_puts(struct text *t, const char *s) { text_add(t, s, strlen(s)); }

/* Printable form of bytes for messages: non-ASCII and control bytes as \xHH. */
static const char *show(const char *s, size_t n) {
    static char buf[4][512];
    static int which = 0;
    char *out = buf[which = (which + 1) % 4];
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < sizeof buf[0]; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7F) out[o++] = (char)c;
        else o += (size_t)snprintf(out + o, 5, "\\x%02x", c);
    }
    out[o] = '\0';
    return out;
}

/* ---------------------------------------------------------------------------------------------- */
/* pre-tokenization                                                                                */

/* The pieces of text joined by '|'. */
static void pieces_of(const struct loom_pretok *p, struct loom_pretok_match *m, const char *text, struct text *out) {
    size_t len = strlen(text);
    out->n = 0;
    text_add(out, "", 0);
    for (size_t pos = 0; pos < len;) {
        size_t end = loom_pretok_next(p, m, text, len, pos);
        if (pos) text_puts(out, "|");
        text_add(out, text + pos, end - pos);
        pos = end;
    }
}

static void test_pretokenize(void) {
    /* cross-checked against `tokenizers` (Split with the same regex, behavior isolated) */
    static const char *const cases[][2] = {
        {"HelloWorld's", "Hello|World's"},
        {"I'm they'll", "I'm| they'll"},
        {"DON'T you've", "DON'T| you've"},
        {"12345", "1|2|3|4|5"},
        {"3.14", "3|.|1|4"},
        {"你好世界", "你|好|世|界"},
        {"GPT4o模型", "GPT|4|o|模|型"},
        {"カタカナひらがな", "カ|タ|カ|ナ|ひ|ら|が|な"},
        {"東京タワー", "東|京|タ|ワ|ー"},
        {"한국어 텍스트", "한|국|어| |텍|스|트"},
        {"你好，世界。", "你|好|，|世|界|。"},
        {"\xe3\x80\x80全角\xe3\x80\x80", "\xe3\x80\x80|全|角|\xe3\x80\x80"},
        {"ｈｅｌｌｏ１２", "ｈｅｌｌｏ|１|２"},
        {"a   b\n\n  c", "a|  | b|\n\n| | c"},
        {"\tfoo\t\tbar", "\tfoo|\t|\tbar"},
        {"x  \n", "x|  \n"},
        {"foo\r\nbar", "foo|\r\n|bar"},
        {"hi 😀😀!", "hi| 😀😀!"},
        {"JSONParser camelCase", "JSONParser| camel|Case"},
        {"naïve café", "naïve| café"},
        {"e.g. U.S.A.", "e|.g|.| U|.S|.A|."},
        {"path/to/file\n\n", "path|/to|/file|\n\n"},
        {"x = a+b; // ok", "x| =| a|+b|;| //| ok"},
    };
    struct loom_pretok *p = loom_pretok_init(LOOM_PRETOKENIZE_REGEX, "test");
    struct loom_pretok_match *m = loom_pretok_match_init(p);
    struct text got = {0};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pieces_of(p, m, cases[i][0], &got);
        char name[96];
        snprintf(name, sizeof name, "pretokenize/%s", show(cases[i][0], strlen(cases[i][0])));
        test_result(strcmp(got.s, cases[i][1]) == 0, name, "got '%s', want '%s'", show(got.s, got.n),
                    show(cases[i][1], strlen(cases[i][1])));
    }

    /* invalid UTF-8 forms pieces of its own; every byte lands in exactly one piece */
    const char bad[] = "ab\xff\xfe cd\xc3";
    pieces_of(p, m, bad, &got);
    test_result(strcmp(got.s, "ab|\xff\xfe| cd|\xc3") == 0, "pretokenize/invalid_utf8", "got '%s'",
                show(got.s, got.n));
    free(got.s);
    loom_pretok_match_free(m);
    loom_pretok_free(p);
}

/* ---------------------------------------------------------------------------------------------- */
/* merge order on a hand-built tokenizer                                                           */

/* A tokenizer of the 256 bytes plus the given merges (each "left right", tokens made on the way). */
static struct loom_bpe *bpe_by_hand(const char *const *merges, int n) {
    struct loom_bpe *b = loom_bpe_init(LOOM_PRETOKENIZE_REGEX);
    for (int c = 0; c < 256; c++) {
        char byte = (char)c;
        loom_bpe_add_token(b, &byte, 1, 0);
    }
    for (int i = 0; i < n; i++) {
        const char *space = strchr(merges[i], ' ');
        char joined[64];
        size_t ll = (size_t)(space - merges[i]), rl = strlen(space + 1);
        memcpy(joined, merges[i], ll);
        memcpy(joined + ll, space + 1, rl);
        int32_t l = loom_bpe_find(b, merges[i], ll), r = loom_bpe_find(b, space + 1, rl);
        int32_t res = loom_bpe_find(b, joined, ll + rl);
        if (res < 0) res = loom_bpe_add_token(b, joined, ll + rl, 0);
        loom_bpe_add_merge(b, l, r, res);
    }
    loom_bpe_build(b, "hand-built");
    return b;
}

/* Encodes text and joins the tokens' bytes with '|'. */
static void encode_shown(const struct loom_bpe *b, const char *text, struct text *out) {
    struct loom_ids ids = {0};
    loom_bpe_encode(b, text, strlen(text), &ids);
    out->n = 0;
    text_add(out, "", 0);
    for (size_t i = 0; i < ids.n; i++) {
        if (i) text_puts(out, "|");
        text_add(out, b->bytes + b->offset[ids.ids[i]], b->offset[ids.ids[i] + 1] - b->offset[ids.ids[i]]);
    }
    loom_ids_free(&ids);
}

static void test_merge_order(void) {
    struct text got = {0};
    static const char *const bc_first[] = {"b c", "a b"};
    struct loom_bpe *b = bpe_by_hand(bc_first, 2);
    encode_shown(b, "abc", &got);
    test_result(strcmp(got.s, "a|bc") == 0, "merge_order/lower_rank_first", "got '%s', want 'a|bc'", got.s);
    loom_bpe_free(b);

    static const char *const ab_first[] = {"a b", "b c"};
    b = bpe_by_hand(ab_first, 2);
    encode_shown(b, "abc", &got);
    test_result(strcmp(got.s, "ab|c") == 0, "merge_order/lower_rank_first_2", "got '%s', want 'ab|c'", got.s);
    loom_bpe_free(b);

    /* equal ranks go leftmost first; merged pairs form new pairs */
    static const char *const runs[] = {"a a", "aa aa"};
    b = bpe_by_hand(runs, 2);
    encode_shown(b, "aaa", &got);
    test_result(strcmp(got.s, "aa|a") == 0, "merge_order/leftmost", "got '%s', want 'aa|a'", got.s);
    encode_shown(b, "aaaa", &got);
    test_result(strcmp(got.s, "aaaa") == 0, "merge_order/cascade", "got '%s', want 'aaaa'", got.s);
    encode_shown(b, "aaaaa", &got);
    test_result(strcmp(got.s, "aaaa|a") == 0, "merge_order/cascade_odd", "got '%s', want 'aaaa|a'", got.s);
    /* never across pieces: "a a" is two pieces */
    encode_shown(b, "aa aa", &got);
    test_result(strcmp(got.s, "aa| |aa") == 0, "merge_order/within_pieces", "got '%s', want 'aa| |aa'", got.s);
    loom_bpe_free(b);
    free(got.s);
}

/* ---------------------------------------------------------------------------------------------- */
/* a trained tokenizer                                                                             */

/* A corpus of made-up words (syllables, some capitalised or with a contraction), CJK, digits, code
 * and odd whitespace, the same every run. */
static void corpus_make(struct text *t, int lines) {
    static const char *const syllables[] = {"ka", "to", "re", "mi", "sun", "tha", "ing", "ver", "lo", "pre",
                                            "st", "on", "qu", "ix", "el", "da", "ment", "ou", "be", "gr"};
    static const char *const others[] = {
        "你好", "世界", "模型", "训练", "数据", "，", "。", "東京", "カタカナ", "ひらがな", "한국어", "데이터",
        "😀", "naïve", "3.14", "2024", "12345", "x += 1;", "if (a != b) {", "}", "//", "<|eos|>", "<think>",
        "\t", "  ", "e.g.", "O'Neil", "I'm", "they'll", "HelloWorld"};
    uint64_t rng = 0x5EED;
    for (int l = 0; l < lines; l++) {
        int n = (int)test_rng_uniform(&rng, 3, 15);
        for (int i = 0; i < n; i++) {
            if (i) text_puts(t, " ");
            if (test_rng_uniform(&rng, 0, 1) < 0.3) {
                text_puts(t, others[(size_t)test_rng_uniform(&rng, 0, sizeof others / sizeof *others)]);
                continue;
            }
            /* a skewed choice of syllables so that some words are frequent */
            int k = (int)test_rng_uniform(&rng, 1, 4);
            for (int j = 0; j < k; j++) {
                double u = test_rng_uniform(&rng, 0, 1);
                const char *syl = syllables[(size_t)(u * u * (double)(sizeof syllables / sizeof *syllables))];
                char first[8];
                snprintf(first, sizeof first, "%s", syl);
                if (j == 0 && test_rng_uniform(&rng, 0, 1) < 0.2) first[0] = (char)(first[0] - 'a' + 'A');
                text_puts(t, first);
            }
            if (test_rng_uniform(&rng, 0, 1) < 0.05) text_puts(t, "'s");
        }
        text_puts(t, "\n");
    }
}

static struct loom_bpe *train_small(const struct text *corpus, uint32_t vocab_size) {
    struct loom_bpe_trainer *tr = loom_bpe_trainer_init(SPECIALS, N_SPECIALS);
    loom_bpe_trainer_add(tr, corpus->s, corpus->n);
    struct loom_bpe *b = loom_bpe_trainer_finish(tr, vocab_size, 2, NULL);
    loom_bpe_trainer_free(tr);
    return b;
}

static int is_special_id(const struct loom_bpe *b, int32_t id) { return id >= 0 && b->special[id]; }

static void test_trained(void) {
    struct text corpus = {0};
    corpus_make(&corpus, 3000);
    const uint32_t vocab = 700;
    struct loom_bpe *b = train_small(&corpus, vocab);
    test_result(b->n_tokens == vocab && b->n_merges == vocab - 256 - N_SPECIALS, "train/vocab_size",
                "%u tokens and %u merges for vocab_size %u", b->n_tokens, b->n_merges, vocab);

    /* the specials, after the learned tokens, found by their text */
    int specials_ok = 1;
    for (int i = 0; i < N_SPECIALS; i++)
        specials_ok &= loom_bpe_special(b, SPECIALS[i]) == (int32_t)(vocab - N_SPECIALS + (uint32_t)i);
    test_result(specials_ok && loom_bpe_special(b, "<|nope|>") == -1, "train/specials", "special ids not at the end");

    /* a merge never involves an ASCII digit */
    uint32_t digit_merge = UINT32_MAX;
    for (uint32_t r = 0; r < b->n_merges && digit_merge == UINT32_MAX; r++) {
        int32_t res = b->merges[r].result;
        for (uint64_t k = b->offset[res]; k < b->offset[res + 1]; k++)
            if (b->bytes[k] >= '0' && b->bytes[k] <= '9') digit_merge = r;
    }
    test_result(digit_merge == UINT32_MAX, "train/no_digit_merges", "merge %u makes '%s'", digit_merge,
                digit_merge == UINT32_MAX ? ""
                                          : show(b->bytes + b->offset[b->merges[digit_merge].result],
                                                 b->offset[b->merges[digit_merge].result + 1] -
                                                     b->offset[b->merges[digit_merge].result]));
    /* and it learned something: the most frequent word and a CJK character are one token each */
    struct loom_ids ids = {0};
    loom_bpe_encode(b, " ka", 3, &ids);
    loom_bpe_encode(b, "你", 3, &ids);
    test_result(ids.n == 2, "train/learned", "' ka' and '你' take %zu tokens", ids.n);

    /* training is deterministic */
    struct loom_bpe *again = train_small(&corpus, vocab);
    test_result(loom_bpe_hash(again) == loom_bpe_hash(b), "train/deterministic", "hashes %016llx and %016llx",
                (unsigned long long)loom_bpe_hash(again), (unsigned long long)loom_bpe_hash(b));
    loom_bpe_free(again);

    /* encoding the corpus never produces a special, though it holds "<|eos|>" and "<think>" */
    ids.n = 0;
    loom_bpe_encode(b, corpus.s, corpus.n, &ids);
    size_t special_at = SIZE_MAX;
    for (size_t i = 0; i < ids.n && special_at == SIZE_MAX; i++)
        if (is_special_id(b, ids.ids[i])) special_at = i;
    test_result(special_at == SIZE_MAX, "encode/no_specials", "id %d at %zu is special",
                special_at == SIZE_MAX ? 0 : ids.ids[special_at], special_at);

    /* save, load: same ids on the corpus, same hash; a second save gives the same file */
    char path[128], path2[128];
    snprintf(path, sizeof path, "%s/tok.json", g_dir);
    snprintf(path2, sizeof path2, "%s/tok2.json", g_dir);
    loom_bpe_save_json(b, path);
    struct loom_tokenizer *t = loom_tokenizer_load(path);
    test_result(loom_tokenizer_hash(t) == loom_bpe_hash(b), "json/same_hash", "loaded %016llx, trained %016llx",
                (unsigned long long)loom_tokenizer_hash(t), (unsigned long long)loom_bpe_hash(b));
    test_result(loom_tokenizer_vocab_size(t) == vocab, "json/vocab_size", "%u", loom_tokenizer_vocab_size(t));
    struct loom_ids loaded = {0};
    loom_tokenizer_encode(t, corpus.s, corpus.n, &loaded);
    size_t diff = 0;
    while (diff < ids.n && diff < loaded.n && ids.ids[diff] == loaded.ids[diff]) diff++;
    test_result(loaded.n == ids.n && diff == ids.n, "json/same_ids", "%zu and %zu ids, first difference at %zu",
                ids.n, loaded.n, diff);
    test_result(loom_tokenizer_eos(t) == loom_bpe_special(b, "<|eos|>") &&
                    loom_tokenizer_bos(t) == loom_bpe_special(b, "<|bos|>") &&
                    loom_tokenizer_pad(t) == loom_bpe_special(b, "<|pad|>") &&
                    loom_tokenizer_special(t, "</observation>") == (int32_t)vocab - 1,
                "json/specials", "eos %d bos %d pad %d", loom_tokenizer_eos(t), loom_tokenizer_bos(t),
                loom_tokenizer_pad(t));
    struct loom_bpe *reloaded = loom_bpe_load_json(path);
    loom_bpe_save_json(reloaded, path2);
    size_t n1, n2;
    char *f1 = file_read(path, &n1), *f2 = file_read(path2, &n2);
    test_result(n1 == n2 && memcmp(f1, f2, n1) == 0, "json/resave_identical", "%zu and %zu bytes", n1, n2);
    free(f1);
    free(f2);
    loom_bpe_free(reloaded);

    /* decode(encode(x)) == x on the corpus and on a text sample; specials decode to their text */
    size_t len = 0;
    char *back = loom_tokenizer_decode(t, loaded.ids, loaded.n, &len);
    test_result(len == corpus.n && memcmp(back, corpus.s, len) == 0, "roundtrip/corpus", "%zu bytes back of %zu", len,
                corpus.n);
    free(back);
    const char *sample = "Tokenizers split text: \"HelloWorld's\" 3.14159 — 你好，世界。東京タワー 한국어!\r\n\tend  ";
    loaded.n = 0;
    loom_tokenizer_encode(t, sample, strlen(sample), &loaded);
    back = loom_tokenizer_decode(t, loaded.ids, loaded.n, &len);
    test_result(len == strlen(sample) && memcmp(back, sample, len) == 0, "roundtrip/sample", "got '%s'",
                show(back, len));
    free(back);
    int32_t spec[3] = {loom_tokenizer_bos(t), loaded.ids[0], loom_tokenizer_eos(t)};
    back = loom_tokenizer_decode(t, spec, 3, &len);
    const char *want_prefix = "<|bos|>";
    test_result(strncmp(back, want_prefix, 7) == 0 && len > 14 && strcmp(back + len - 7, "<|eos|>") == 0,
                "decode/specials", "got '%s'", show(back, len));
    free(back);

    /* random bytes, invalid UTF-8 included: half the strings from a few bytes so that merges fire
     * (" etha", "ä", "你"), half from all 256 */
    static const char few[] = " etha\xc3\xa4\xe4\xbd\xa0";
    uint64_t rng = 42;
    int bad = -1;
    char buf[256];
    for (int i = 0; i < 1000 && bad < 0; i++) {
        size_t n = (size_t)test_rng_uniform(&rng, 0, sizeof buf);
        for (size_t k = 0; k < n; k++) {
            if (i % 2) buf[k] = (char)(int)test_rng_uniform(&rng, 0, 256);
            else buf[k] = few[(int)test_rng_uniform(&rng, 0, sizeof few - 1)];
        }
        loaded.n = 0;
        loom_tokenizer_encode(t, buf, n, &loaded);
        int ids_ok = 1;
        for (size_t k = 0; k < loaded.n; k++)
            ids_ok &= loaded.ids[k] >= 0 && (uint32_t)loaded.ids[k] < vocab && !is_special_id(b, loaded.ids[k]);
        back = loom_tokenizer_decode(t, loaded.ids, loaded.n, &len);
        if (!ids_ok || len != n || memcmp(back, buf, n) != 0) bad = i;
        free(back);
    }
    test_result(bad < 0, "roundtrip/random_bytes", "string %d does not come back", bad);

    loom_ids_free(&loaded);
    loom_ids_free(&ids);
    loom_tokenizer_free(t);
    loom_bpe_free(b);
    free(corpus.s);
}

/* ---------------------------------------------------------------------------------------------- */
/* special tokens and the tokens training may make                                                 */

/* Trains on text with one extra special; returns whether a token of bytes `probe` was learned. */
static int learns(const char *text, const char *special, const char *probe) {
    const char *specials[] = {"<|eos|>", special};
    struct loom_bpe_trainer *tr = loom_bpe_trainer_init(specials, special ? 2 : 1);
    loom_bpe_trainer_add(tr, text, strlen(text));
    struct loom_bpe *b = loom_bpe_trainer_finish(tr, 400, 2, NULL);
    int found = loom_bpe_find(b, probe, strlen(probe)) >= 0;
    loom_bpe_trainer_free(tr);
    loom_bpe_free(b);
    return found;
}

static void trainer_with_special(const char *special) {
    const char *specials[] = {special};
    loom_bpe_trainer_free(loom_bpe_trainer_init(specials, 1));
}

static void test_special_rules(void) {
    /* "<>" would be learned from this text, unless it is a special's text */
    const char *text = "a<>b<>c<>d<>e<>f<>";
    int plain = learns(text, NULL, "<>"), with = learns(text, "<>", "<>");
    test_result(plain && !with, "train/no_token_spelled_as_special", "'<>' learned: %d without the special, %d with",
                plain, with);

    /* a special spelling a single byte ("a" is byte 0x61, "Ġ" byte 0x20) or given twice is refused */
    static const char *const refused[][2] = {{"a", "byte 0x61"}, {"Ġ", "byte 0x20"}, {"", "empty"}};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        char err[1024], name[64];
        int code = test_run_child(trainer_with_special, refused[i][0], err, sizeof err);
        snprintf(name, sizeof name, "train/special_refused_%zu", i);
        test_result(code == 2 && strncmp(err, "loom: error: ", 13) == 0 && strstr(err, refused[i][1]), name,
                    "special '%s': exit %d, stderr: %s", refused[i][0], code, err);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* two threads on one tokenizer                                                                    */

struct encode_job {
    const struct loom_tokenizer *t;
    const struct text *corpus;
    struct loom_ids ids;
};

static void *encode_job_run(void *arg) {
    struct encode_job *j = arg;
    for (int round = 0; round < 3; round++) {
        j->ids.n = 0;
        loom_tokenizer_encode(j->t, j->corpus->s, j->corpus->n, &j->ids);
    }
    return NULL;
}

static void test_threads(void) {
    char path[128];
    snprintf(path, sizeof path, "%s/tok.json", g_dir);
    struct loom_tokenizer *t = loom_tokenizer_load(path);
    struct text corpus = {0};
    corpus_make(&corpus, 2000);
    struct loom_ids want = {0};
    loom_tokenizer_encode(t, corpus.s, corpus.n, &want);
    struct encode_job jobs[2] = {{t, &corpus, {0}}, {t, &corpus, {0}}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&th[i], NULL, encode_job_run, &jobs[i]) == 0, "pthread_create");
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    int same = 1;
    for (int i = 0; i < 2; i++)
        same &= jobs[i].ids.n == want.n && memcmp(jobs[i].ids.ids, want.ids, want.n * sizeof *want.ids) == 0;
    test_result(same, "encode/two_threads", "ids differ from one thread's (%zu, %zu, %zu ids)", want.n, jobs[0].ids.n,
                jobs[1].ids.n);
    for (int i = 0; i < 2; i++) loom_ids_free(&jobs[i].ids);
    loom_ids_free(&want);
    free(corpus.s);
    loom_tokenizer_free(t);
}

/* ---------------------------------------------------------------------------------------------- */
/* the byte tokenizer behind the same interface                                                    */

static void test_bytes(void) {
    struct loom_tokenizer *t = loom_tokenizer_load("bytes");
    struct loom_ids ids = {0};
    loom_tokenizer_encode(t, "hi\xff", 3, &ids);
    int32_t eos = loom_tokenizer_eos(t);
    loom_ids_push(&ids, eos);
    size_t len;
    char *back = loom_tokenizer_decode(t, ids.ids, ids.n, &len);
    test_result(loom_tokenizer_vocab_size(t) == LOOM_BYTES_VOCAB && loom_tokenizer_hash(t) == loom_bytetok_hash() &&
                    ids.n == 4 && ids.ids[2] == 0xff && eos == LOOM_BYTES_EOS && len == 10 &&
                    memcmp(back, "hi\xff<|eos|>", 10) == 0,
                "bytes/unchanged", "decoded '%s'", show(back, len));
    free(back);
    loom_ids_free(&ids);
    loom_tokenizer_free(t);
}

/* ---------------------------------------------------------------------------------------------- */
/* damaged tokenizer files                                                                         */

static void load_and_free(const char *path) { loom_tokenizer_free(loom_tokenizer_load(path)); }

/* Writes text to NAME in the test folder (unless text is NULL: a missing file), loads it in a child
 * and wants exit 2 with "loom: error: PATH: " and `must` in the message. */
static void expect_bad_file(const char *name, const char *text, const char *must) {
    char path[160], err[2048], test_name[96];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    if (text) file_write(path, text);
    int code = test_run_child(load_and_free, path, err, sizeof err);
    char prefix[200];
    snprintf(prefix, sizeof prefix, "loom: error: %s: ", path);
    snprintf(test_name, sizeof test_name, "json_bad/%s", name);
    test_result(code == 2 && strncmp(err, prefix, strlen(prefix)) == 0 && strstr(err, must) != NULL, test_name,
                "exit %d, stderr: %s", code, err);
}

/* A valid file's text with one substring replaced. */
static char *json_with(const char *json, const char *from, const char *to) {
    const char *at = strstr(json, from);
    CHECK(at != NULL, "'%s' not in the test tokenizer", from);
    size_t n = strlen(json), fl = strlen(from), tl = strlen(to);
    char *out = malloc_check(n - fl + tl + 1);
    memcpy(out, json, (size_t)(at - json));
    memcpy(out + (at - json), to, tl);
    memcpy(out + (at - json) + tl, at + fl, n - (size_t)(at - json) - fl + 1);
    return out;
}

static void test_bad_files(void) {
    char path[128];
    snprintf(path, sizeof path, "%s/tok.json", g_dir);
    size_t n;
    char *json = file_read(path, &n);

    expect_bad_file("missing.json", NULL, "cannot read tokenizer file");
    expect_bad_file("not_json.json", "{\"model\": {\"type\": \"BPE\", ", "not valid JSON");
    expect_bad_file("no_model.json", "{\"version\": \"1.0\"}", "no \"model\"");
    expect_bad_file("wordpiece.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "not BPE");

    struct {
        const char *name, *from, *to, *must;
    } edits[] = {
        {"no_merges.json", "\"merges\":", "\"merged\":", "model.merges"},
        {"normalizer.json", "\"normalizer\":\tnull", "\"normalizer\": {\"type\": \"NFC\"}", "normalizer"},
        {"pretok.json", "\"Isolated\"", "\"Removed\"", "pre_tokenizer"},
        {"byte_fallback.json", "\"byte_fallback\":\tfalse", "\"byte_fallback\": true", "byte_fallback"},
        {"gap.json", "\"!\":\t33", "\"!\":\t100000", "without a gap"},
        {"bad_merge.json", "\"merges\":\t[\"", "\"merges\":\t[\"zzzzqq x\", \"", "not in the vocabulary"},
        {"bad_regex.json", "\"Regex\":\t\"", "\"Regex\":\t\"(", "regex"},
        {"not_special.json", "\"special\":\ttrue", "\"special\":\tfalse", "not special"},
    };
    char *trailing = malloc_check(n + 3);
    memcpy(trailing, json, n);
    memcpy(trailing + n, "}\n", 3);
    expect_bad_file("trailing.json", trailing, "more text after the end");
    free(trailing);
    for (size_t i = 0; i < sizeof edits / sizeof *edits; i++) {
        char *bad = json_with(json, edits[i].from, edits[i].to);
        expect_bad_file(edits[i].name, bad, edits[i].must);
        free(bad);
    }
    free(json);
}

/* ---------------------------------------------------------------------------------------------- */

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/loom_test_tokenizer_XXXXXX");
    CHECK(mkdtemp(g_dir) != NULL, "mkdtemp failed");
    test_pretokenize();
    test_merge_order();
    test_trained();
    test_special_rules();
    test_threads();
    test_bytes();
    test_bad_files();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    CHECK(system(cmd) == 0, "removing %s", g_dir);
    return test_exit();
}
