/*
 * data/tokenizer.c — the tokenizer handle (see tokenizer.h): the built-in byte tokenizer, or byte-level
 * BPE from a tokenizer.json (data/bpe.h).
 */
#include "data/tokenizer.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "data/bpe.h"
#include "data/bytetok.h"

struct loom_tokenizer {
    struct loom_bpe *bpe; /* NULL for the built-in byte tokenizer */
    uint64_t hash;
};

void loom_ids_push(struct loom_ids *v, int32_t id) {
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 1024;
        v->ids = realloc(v->ids, sizeof(int32_t) * v->cap);
        CHECK(v->ids != NULL, "out of memory growing an id buffer to %zu", v->cap);
    }
    v->ids[v->n++] = id;
}

void loom_ids_free(struct loom_ids *v) {
    free(v->ids);
    memset(v, 0, sizeof *v);
}

struct loom_tokenizer *loom_tokenizer_load(const char *name_or_path) {
    struct loom_bpe *bpe = strcmp(name_or_path, "bytes") == 0 ? NULL : loom_bpe_load_json(name_or_path);
    struct loom_tokenizer *t = calloc_check(1, sizeof *t);
    t->bpe = bpe;
    t->hash = bpe ? loom_bpe_hash(bpe) : loom_bytetok_hash();
    return t;
}

void loom_tokenizer_free(struct loom_tokenizer *t) {
    if (!t) return;
    loom_bpe_free(t->bpe);
    free(t);
}

uint32_t loom_tokenizer_vocab_size(const struct loom_tokenizer *t) {
    return t->bpe ? t->bpe->n_tokens : LOOM_BYTES_VOCAB;
}

uint64_t loom_tokenizer_hash(const struct loom_tokenizer *t) { return t->hash; }

int32_t loom_tokenizer_special(const struct loom_tokenizer *t, const char *text) {
    if (t->bpe) return loom_bpe_special(t->bpe, text);
    if (strcmp(text, "<|bos|>") == 0) return LOOM_BYTES_BOS;
    if (strcmp(text, "<|eos|>") == 0) return LOOM_BYTES_EOS;
    if (strcmp(text, "<|pad|>") == 0) return LOOM_BYTES_PAD;
    return -1;
}

int32_t loom_tokenizer_bos(const struct loom_tokenizer *t) { return loom_tokenizer_special(t, "<|bos|>"); }
int32_t loom_tokenizer_eos(const struct loom_tokenizer *t) { return loom_tokenizer_special(t, "<|eos|>"); }
int32_t loom_tokenizer_pad(const struct loom_tokenizer *t) { return loom_tokenizer_special(t, "<|pad|>"); }

void loom_tokenizer_encode(const struct loom_tokenizer *t, const char *text, size_t len, struct loom_ids *out) {
    if (t->bpe) {
        loom_bpe_encode(t->bpe, text, len, out);
        return;
    }
    for (size_t i = 0; i < len; i++) loom_ids_push(out, (unsigned char)text[i]);
}

char *loom_tokenizer_decode(const struct loom_tokenizer *t, const int32_t *ids, size_t n, size_t *len) {
    if (!t->bpe) {
        unsigned char *out = malloc_check(LOOM_BYTES_DECODE_MAX * n + 1);
        size_t m = loom_bytetok_decode(ids, n, out);
        out[m] = 0;
        if (len) *len = m;
        return (char *)out;
    }
    const struct loom_bpe *b = t->bpe;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK(ids[i] >= 0 && (uint32_t)ids[i] < b->n_tokens, "token id %d out of range 0..%u", ids[i], b->n_tokens - 1);
        total += b->offset[ids[i] + 1] - b->offset[ids[i]];
    }
    char *out = malloc_check(total + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        size_t k = b->offset[ids[i] + 1] - b->offset[ids[i]];
        memcpy(o, b->bytes + b->offset[ids[i]], k);
        o += k;
    }
    *o = '\0';
    if (len) *len = total;
    return out;
}
