/*
 * data/bpe_train.c — BPE training (see bpe.h): count the pieces of the corpus, then merge the most
 * frequent adjacent pair again and again.
 *
 * The algorithm of Sennrich et al. (2016), "Neural Machine Translation of Rare Words with Subword
 * Units", on byte-level pieces as in GPT-2, with incremental pair counts as Hugging Face `tokenizers`
 * keeps them (models/bpe/trainer.rs): each pair knows the words it occurs in, a merge rewrites only
 * those words and adjusts the counts of the pairs around each occurrence, and a max-heap with lazy
 * entries gives the next pair. A popped entry whose count is out of date goes back with its current
 * count; every pair whose count grew gets a fresh entry, so the first up-to-date entry popped is the
 * true maximum.
 */
#include "data/bpe.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "data/pretokenize.h"

#define TRAIN_PROGRESS_SECONDS 1.0

struct loom_bpe_trainer {
    struct loom_pretok *pretok;
    struct loom_pretok_match *match;
    struct loom_bpe_strmap *words; /* piece -> occurrences */
    uint64_t bytes, pieces;
    char **specials;               /* [n_specials] */
    int n_specials;
};

static void train_check_specials(const char *const *specials, int n_specials) {
    for (int i = 0; i < n_specials; i++) {
        size_t len = strlen(specials[i]);
        if (len == 0) loom_input_error("--special", NULL, "a special token cannot be empty");
        for (int j = 0; j < i; j++)
            if (strcmp(specials[i], specials[j]) == 0)
                loom_input_error(specials[i], NULL, "special token given twice");
        char *bytes = malloc_check(len);
        long n = loom_bpe_unspell(specials[i], bytes);
        unsigned char first = (unsigned char)bytes[0];
        free(bytes);
        if (n == 1)
            loom_input_error(specials[i], "choose a longer text, e.g. <|name|>",
                             "special token is the spelling of byte 0x%02x in tokenizer.json", first);
    }
}

struct loom_bpe_trainer *loom_bpe_trainer_init(const char *const *specials, int n_specials) {
    train_check_specials(specials, n_specials);
    struct loom_bpe_trainer *tr = calloc_check(1, sizeof *tr);
    tr->pretok = loom_pretok_init(LOOM_PRETOKENIZE_REGEX, "pre-tokenizer");
    tr->match = loom_pretok_match_init(tr->pretok);
    tr->words = loom_bpe_strmap_init();
    tr->specials = calloc_check((size_t)n_specials, sizeof *tr->specials);
    for (int i = 0; i < n_specials; i++) {
        size_t n = strlen(specials[i]);
        tr->specials[i] = malloc_check(n + 1);
        memcpy(tr->specials[i], specials[i], n + 1);
    }
    tr->n_specials = n_specials;
    return tr;
}

void loom_bpe_trainer_free(struct loom_bpe_trainer *tr) {
    if (!tr) return;
    loom_pretok_match_free(tr->match);
    loom_pretok_free(tr->pretok);
    loom_bpe_strmap_free(tr->words);
    for (int i = 0; i < tr->n_specials; i++) free(tr->specials[i]);
    free(tr->specials);
    free(tr);
}

void loom_bpe_trainer_add(struct loom_bpe_trainer *tr, const char *text, size_t len) {
    for (size_t pos = 0; pos < len;) {
        size_t end = loom_pretok_next(tr->pretok, tr->match, text, len, pos);
        (*loom_bpe_strmap_get(tr->words, text + pos, end - pos, 1))++;
        tr->pieces++;
        pos = end;
    }
    tr->bytes += len;
}

/* ---------------------------------------------------------------------------------------------- */
/* words and pairs                                                                                  */

struct train_pair {
    int64_t count;     /* occurrences in the corpus, weighted by word counts */
    int32_t left, right;
    int32_t *words;    /* [n_words] words it occurs (or occurred) in, each listed once per growth */
    uint32_t n_words, cap_words;
    uint32_t grown_at; /* merge step in which count last grew */
    uint8_t state;     /* TRAIN_PAIR_* */
    int32_t result;    /* the token it merged into, once TRAIN_PAIR_MERGED */
};

enum {
    TRAIN_PAIR_OPEN,      /* not merged yet */
    TRAIN_PAIR_MERGED,    /* has its merge; occurrences formed later are merged without a new one */
    TRAIN_PAIR_FORBIDDEN, /* merging it would make a special's text */
};

struct train_heap_entry {
    int64_t count;
    uint64_t key; /* left << 32 | right: smaller wins a tie */
    uint32_t pair;
};

struct train_state {
    /* words of two or more bytes */
    int32_t *sym;        /* symbols of every word, back to back */
    uint64_t *word_off;  /* [n_words] */
    uint32_t *word_len;  /* [n_words] current symbol count */
    int64_t *word_count; /* [n_words] */
    uint32_t *word_seen; /* [n_words] last merge step that rewrote the word */
    uint32_t n_words;
    /* pairs: open addressing over key -> pair index + 1 */
    struct train_pair *pairs;
    uint32_t n_pairs, cap_pairs;
    uint32_t *slots;
    uint64_t mask;
    /* pairs that grew in this step */
    uint32_t *grown;
    uint32_t n_grown, cap_grown;
    struct train_heap_entry *heap;
    size_t n_heap, cap_heap;
    uint32_t step;
};

static void *train_realloc(void *p, size_t n, size_t size) {
    CHECK(size == 0 || n <= SIZE_MAX / size, "array of %zu x %zu bytes is too large", n, size);
    size_t bytes = n * size;
    p = realloc(p, bytes ? bytes : 1);
    CHECK(p != NULL, "out of memory growing an array to %zu x %zu bytes", n, size);
    return p;
}

static uint64_t train_key(int32_t left, int32_t right) { return (uint64_t)(uint32_t)left << 32 | (uint32_t)right; }

static uint64_t train_slot(uint64_t key, uint64_t mask) { return (key * 0x9E3779B97F4A7C15ull >> 17) & mask; }

static void train_grow_slots(struct train_state *st) {
    st->mask = 2 * st->mask + 1;
    free(st->slots);
    st->slots = calloc_check(st->mask + 1, sizeof *st->slots);
    for (uint32_t i = 0; i < st->n_pairs; i++) {
        uint64_t s = train_slot(train_key(st->pairs[i].left, st->pairs[i].right), st->mask);
        while (st->slots[s]) s = (s + 1) & st->mask;
        st->slots[s] = i + 1;
    }
}

static uint32_t train_pair_get(struct train_state *st, int32_t left, int32_t right) {
    uint64_t key = train_key(left, right);
    uint64_t s = train_slot(key, st->mask);
    for (; st->slots[s]; s = (s + 1) & st->mask) {
        const struct train_pair *p = &st->pairs[st->slots[s] - 1];
        if (p->left == left && p->right == right) return st->slots[s] - 1;
    }
    CHECK(st->n_pairs < UINT32_MAX - 1, "too many distinct pairs");
    if (st->n_pairs == st->cap_pairs) {
        st->cap_pairs = st->cap_pairs ? 2 * st->cap_pairs : 65536;
        st->pairs = train_realloc(st->pairs, st->cap_pairs, sizeof *st->pairs);
    }
    uint32_t i = st->n_pairs++;
    st->pairs[i] = (struct train_pair){.left = left, .right = right, .grown_at = UINT32_MAX};
    st->slots[s] = i + 1;
    if (2 * (uint64_t)st->n_pairs > st->mask + 1) train_grow_slots(st);
    return i;
}

/* Adds delta occurrences of (left, right); a growth records word w with the pair. */
static void train_pair_add(struct train_state *st, int32_t left, int32_t right, int64_t delta, uint32_t w) {
    uint32_t i = train_pair_get(st, left, right);
    struct train_pair *p = &st->pairs[i];
    p->count += delta;
    if (delta <= 0) return;
    if (p->n_words == 0 || p->words[p->n_words - 1] != (int32_t)w) {
        if (p->n_words == p->cap_words) {
            p->cap_words = p->cap_words ? 2 * p->cap_words : 4;
            p->words = train_realloc(p->words, p->cap_words, sizeof *p->words);
        }
        p->words[p->n_words++] = (int32_t)w;
    }
    if (p->grown_at != st->step) {
        p->grown_at = st->step;
        if (st->n_grown == st->cap_grown) {
            st->cap_grown = st->cap_grown ? 2 * st->cap_grown : 4096;
            st->grown = train_realloc(st->grown, st->cap_grown, sizeof *st->grown);
        }
        st->grown[st->n_grown++] = i;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* the heap                                                                                         */

static int train_heap_above(const struct train_heap_entry *a, const struct train_heap_entry *b) {
    return a->count > b->count || (a->count == b->count && a->key < b->key);
}

static void train_heap_push(struct train_state *st, uint32_t pair) {
    if (st->n_heap == st->cap_heap) {
        st->cap_heap = st->cap_heap ? 2 * st->cap_heap : 65536;
        st->heap = train_realloc(st->heap, st->cap_heap, sizeof *st->heap);
    }
    const struct train_pair *p = &st->pairs[pair];
    struct train_heap_entry e = {p->count, train_key(p->left, p->right), pair};
    size_t i = st->n_heap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!train_heap_above(&e, &st->heap[parent])) break;
        st->heap[i] = st->heap[parent];
        i = parent;
    }
    st->heap[i] = e;
}

static struct train_heap_entry train_heap_pop(struct train_state *st) {
    struct train_heap_entry top = st->heap[0], last = st->heap[--st->n_heap];
    size_t i = 0, n = st->n_heap;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && train_heap_above(&st->heap[child + 1], &st->heap[child])) child++;
        if (!train_heap_above(&st->heap[child], &last)) break;
        st->heap[i] = st->heap[child];
        i = child;
    }
    if (n > 0) st->heap[i] = last;
    return top;
}

/* ---------------------------------------------------------------------------------------------- */
/* merging                                                                                          */

/* Rewrites every word holding (left, right) with result in its place, adjusting the pair counts. */
static void train_apply(struct train_state *st, uint32_t pair_index, int32_t result) {
    struct train_pair *pair = &st->pairs[pair_index];
    int32_t a = pair->left, b = pair->right;
    int32_t *words = pair->words;
    uint32_t n_words = pair->n_words;
    pair->words = NULL;
    pair->n_words = pair->cap_words = 0;
    for (uint32_t k = 0; k < n_words; k++) {
        uint32_t w = (uint32_t)words[k];
        if (st->word_seen[w] == st->step) continue;
        st->word_seen[w] = st->step;
        int32_t *s = st->sym + st->word_off[w];
        uint32_t n = st->word_len[w], j = 0;
        int64_t cnt = st->word_count[w];
        for (uint32_t i = 0; i < n;) {
            if (i + 1 < n && s[i] == a && s[i + 1] == b) {
                if (j > 0) {
                    train_pair_add(st, s[j - 1], a, -cnt, w);
                    train_pair_add(st, s[j - 1], result, cnt, w);
                }
                if (i + 2 < n) {
                    train_pair_add(st, b, s[i + 2], -cnt, w);
                    train_pair_add(st, result, s[i + 2], cnt, w);
                }
                train_pair_add(st, a, b, -cnt, w);
                s[j++] = result;
                i += 2;
            } else {
                s[j++] = s[i++];
            }
        }
        st->word_len[w] = j;
    }
    free(words);
    CHECK(st->pairs[pair_index].count == 0, "pair (%d, %d) still counts %lld after its merge", a, b,
          (long long)st->pairs[pair_index].count);
}

static double train_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Is `spelling` the text of one of the specials? */
static int train_is_special(const char *spelling, char *const *specials, int n_specials) {
    for (int i = 0; i < n_specials; i++)
        if (strcmp(specials[i], spelling) == 0) return 1;
    return 0;
}

/* The words of two or more bytes as byte symbols, and the counts of their adjacent pairs. */
static void train_state_init(struct train_state *st, struct loom_bpe_strmap *words) {
    st->mask = 65535;
    st->slots = calloc_check(st->mask + 1, sizeof *st->slots);
    size_t n_pieces = loom_bpe_strmap_count(words);
    uint64_t total_len = 0;
    for (size_t i = 0; i < n_pieces; i++) {
        size_t len;
        loom_bpe_strmap_key(words, i, &len, NULL);
        if (len >= 2) {
            st->n_words++;
            total_len += len;
        }
    }
    st->sym = malloc_check(total_len * sizeof *st->sym);
    st->word_off = malloc_check(st->n_words * sizeof *st->word_off);
    st->word_len = malloc_check(st->n_words * sizeof *st->word_len);
    st->word_count = malloc_check(st->n_words * sizeof *st->word_count);
    st->word_seen = calloc_check(st->n_words, sizeof *st->word_seen);
    uint64_t off = 0;
    uint32_t w = 0;
    for (size_t i = 0; i < n_pieces; i++) {
        size_t len;
        int64_t count;
        const unsigned char *key = (const unsigned char *)loom_bpe_strmap_key(words, i, &len, &count);
        if (len < 2) continue;
        CHECK(len < UINT32_MAX, "piece of %zu bytes", len);
        st->word_off[w] = off;
        st->word_len[w] = (uint32_t)len;
        st->word_count[w] = count;
        for (size_t k = 0; k < len; k++) st->sym[off + k] = key[k];
        for (size_t k = 0; k + 1 < len; k++) train_pair_add(st, key[k], key[k + 1], count, w);
        off += len;
        w++;
    }
    for (uint32_t i = 0; i < st->n_grown; i++) train_heap_push(st, st->grown[i]);
    st->n_grown = 0;
}

static void train_state_free(struct train_state *st) {
    for (uint32_t i = 0; i < st->n_pairs; i++) free(st->pairs[i].words);
    free(st->pairs);
    free(st->slots);
    free(st->grown);
    free(st->heap);
    free(st->sym);
    free(st->word_off);
    free(st->word_len);
    free(st->word_count);
    free(st->word_seen);
}

/* Merges until bpe holds target tokens or no pair occurs min_frequency times. */
static void train_learn(struct train_state *st, struct loom_bpe *bpe, uint32_t target, uint64_t min_frequency,
                        char *const *specials, int n_specials, FILE *progress) {
    double t0 = train_now(), last = t0;
    int64_t last_count = 0;
    char *joined = NULL, *spelling = NULL; /* the bytes of a merge's result and their spelling */
    size_t joined_cap = 0;
    while (bpe->n_tokens < target && st->n_heap > 0) {
        struct train_heap_entry top = train_heap_pop(st);
        struct train_pair *p = &st->pairs[top.pair];
        if (p->state == TRAIN_PAIR_FORBIDDEN) continue;
        if (top.count != p->count) {
            if (p->count > 0) train_heap_push(st, top.pair);
            continue;
        }
        if (p->count <= 0 || (uint64_t)p->count < min_frequency) break;
        if (p->state == TRAIN_PAIR_OPEN) {
            uint64_t lo = bpe->offset[p->left], ll = bpe->offset[p->left + 1] - lo;
            uint64_t ro = bpe->offset[p->right], rl = bpe->offset[p->right + 1] - ro;
            if (2 * (ll + rl) + 1 > joined_cap) { /* both buffers; a spelling takes up to 2 bytes a byte */
                joined_cap = 4 * (ll + rl) + 1;
                joined = train_realloc(joined, joined_cap, 1);
                spelling = train_realloc(spelling, joined_cap, 1);
            }
            memcpy(joined, bpe->bytes + lo, ll);
            memcpy(joined + ll, bpe->bytes + ro, rl);
            loom_bpe_spell(joined, ll + rl, spelling);
            if (train_is_special(spelling, specials, n_specials)) {
                p->state = TRAIN_PAIR_FORBIDDEN;
                continue;
            }
            /* the same bytes may come from another pair already: the merge then reuses that token */
            p->result = loom_bpe_find(bpe, joined, ll + rl);
            if (p->result < 0) p->result = loom_bpe_add_token(bpe, joined, ll + rl, 0);
            p->state = TRAIN_PAIR_MERGED;
            loom_bpe_add_merge(bpe, p->left, p->right, p->result);
        }
        last_count = p->count;
        st->step++;
        train_apply(st, top.pair, p->result);
        for (uint32_t i = 0; i < st->n_grown; i++)
            if (st->pairs[st->grown[i]].count > 0) train_heap_push(st, st->grown[i]);
        st->n_grown = 0;
        double now = train_now();
        if (progress && now - last >= TRAIN_PROGRESS_SECONDS) {
            last = now;
            fprintf(progress, "\rtokenizer-train: %u / %u tokens, last pair seen %lld times   ", bpe->n_tokens, target,
                    (long long)last_count);
            fflush(progress);
        }
    }
    if (progress)
        fprintf(progress, "\rtokenizer-train: %u merges in %.1f s (last pair seen %lld times)%s\n", bpe->n_merges,
                train_now() - t0, (long long)last_count,
                bpe->n_tokens < target ? "; no pair left frequent enough to fill the vocabulary" : "");
    free(joined);
    free(spelling);
}

struct loom_bpe *loom_bpe_trainer_finish(struct loom_bpe_trainer *tr, uint32_t vocab_size, uint64_t min_frequency,
                                         FILE *progress) {
    char *const *specials = tr->specials;
    int n_specials = tr->n_specials;
    CHECK(vocab_size >= 256 + (uint32_t)n_specials, "vocab_size %u below 256 + %d specials", vocab_size, n_specials);
    struct loom_bpe *bpe = loom_bpe_init(LOOM_PRETOKENIZE_REGEX);
    for (int c = 0; c < 256; c++) {
        char byte = (char)c;
        loom_bpe_add_token(bpe, &byte, 1, 0);
    }
    struct train_state st = {0};
    train_state_init(&st, tr->words);
    if (progress)
        fprintf(progress, "tokenizer-train: %.1f MB, %llu pieces, %zu distinct, %u distinct pairs\n",
                (double)tr->bytes / 1e6, (unsigned long long)tr->pieces, loom_bpe_strmap_count(tr->words),
                st.n_pairs);
    train_learn(&st, bpe, vocab_size - (uint32_t)n_specials, min_frequency, specials, n_specials, progress);
    train_state_free(&st);
    for (int i = 0; i < n_specials; i++) loom_bpe_add_token(bpe, specials[i], strlen(specials[i]), 1);
    loom_bpe_build(bpe, "tokenizer-train");
    return bpe;
}
