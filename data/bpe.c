/*
 * data/bpe.c — byte-level BPE (see bpe.h): the string map, building a tokenizer, encoding, the
 * canonical hash.
 *
 * Encoding follows the merge loop of Hugging Face `tokenizers` (models/bpe/word.rs, Word::merge_all),
 * which fixes the order merges apply in: a min-heap of candidate pairs keyed by (rank, position of the
 * left symbol); a popped pair still present is merged, and the pairs it forms with its neighbours are
 * pushed. Recent pieces and their ids are cached (a piece's ids never depend on its neighbours).
 */
#define XXH_INLINE_ALL

#include "data/bpe.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "core/error.h"
#include "data/pretokenize.h"

/* Pieces up to this many bytes are cached; the cache is emptied when it holds this many pieces. */
#define BPE_CACHE_PIECE_MAX 128
#define BPE_CACHE_PIECES (1u << 16)

static void *bpe_realloc(void *p, size_t n, size_t size) {
    CHECK(size == 0 || n <= SIZE_MAX / size, "array of %zu x %zu bytes is too large", n, size);
    size_t bytes = n * size;
    p = realloc(p, bytes ? bytes : 1);
    CHECK(p != NULL, "out of memory growing an array to %zu x %zu bytes", n, size);
    return p;
}

/* ---------------------------------------------------------------------------------------------- */
/* the byte alphabet: bytes 0x00-0x20, 0x7F-0xA0 and 0xAD become U+0100 .. U+0143 in that order        */

static uint32_t bpe_char_of(unsigned char b) {
    if (b <= 0x20) return 0x100 + b;
    if (b >= 0x7F && b <= 0xA0) return 0x100 + 33 + (b - 0x7F);
    if (b == 0xAD) return 0x100 + 67;
    return b;
}

/* The byte a character spells, or -1. */
static int bpe_byte_of(uint32_t c) {
    if (c < 0x100) return (c <= 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) ? -1 : (int)c;
    if (c < 0x100 + 33) return (int)(c - 0x100);
    if (c < 0x100 + 67) return (int)(0x7F + c - 0x100 - 33);
    return c == 0x100 + 67 ? 0xAD : -1;
}

size_t loom_bpe_spell(const char *bytes, size_t len, char *out) {
    char *o = out;
    for (size_t i = 0; i < len; i++) {
        uint32_t c = bpe_char_of((unsigned char)bytes[i]);
        if (c < 0x80) {
            *o++ = (char)c;
        } else {
            *o++ = (char)(0xC0 | (c >> 6));
            *o++ = (char)(0x80 | (c & 0x3F));
        }
    }
    *o = '\0';
    return (size_t)(o - out);
}

long loom_bpe_unspell(const char *s, char *out) {
    long n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        uint32_t c;
        if (p[0] < 0x80) {
            c = p[0];
            p += 1;
        } else if ((p[0] & 0xE0) == 0xC0 && (p[1] & 0xC0) == 0x80) {
            c = (uint32_t)(p[0] & 0x1F) << 6 | (p[1] & 0x3F);
            p += 2;
        } else {
            return -1;
        }
        int b = bpe_byte_of(c);
        if (b < 0) return -1;
        out[n++] = (char)b;
    }
    return n;
}

/* ---------------------------------------------------------------------------------------------- */
/* string map: open addressing over entries kept in insertion order                                 */

struct strmap_entry {
    uint64_t hash;
    uint64_t key_off;
    uint64_t key_len;
    int64_t value;
};

struct loom_bpe_strmap {
    char *keys;                   /* [keys_len] every key, back to back */
    size_t keys_len, keys_cap;
    struct strmap_entry *entries; /* [n] */
    size_t n, entries_cap;
    uint32_t *slots;              /* [mask + 1] entry index + 1; 0 = empty */
    size_t mask;
};

struct loom_bpe_strmap *loom_bpe_strmap_init(void) {
    struct loom_bpe_strmap *m = calloc_check(1, sizeof *m);
    m->mask = 1023;
    m->slots = calloc_check(m->mask + 1, sizeof *m->slots);
    return m;
}

void loom_bpe_strmap_free(struct loom_bpe_strmap *m) {
    if (!m) return;
    free(m->keys);
    free(m->entries);
    free(m->slots);
    free(m);
}

void loom_bpe_strmap_clear(struct loom_bpe_strmap *m) {
    memset(m->slots, 0, (m->mask + 1) * sizeof *m->slots);
    m->n = 0;
    m->keys_len = 0;
}

size_t loom_bpe_strmap_count(const struct loom_bpe_strmap *m) { return m->n; }

const char *loom_bpe_strmap_key(const struct loom_bpe_strmap *m, size_t i, size_t *len, int64_t *value) {
    CHECK(i < m->n, "string map entry %zu of %zu", i, m->n);
    const struct strmap_entry *e = &m->entries[i];
    *len = e->key_len;
    if (value) *value = e->value;
    return m->keys + e->key_off;
}

static void strmap_grow(struct loom_bpe_strmap *m) {
    CHECK(m->mask < UINT32_MAX / 2, "string map of %zu entries is too large", m->n);
    m->mask = 2 * m->mask + 1;
    free(m->slots);
    m->slots = calloc_check(m->mask + 1, sizeof *m->slots);
    for (size_t i = 0; i < m->n; i++) {
        size_t s = m->entries[i].hash & m->mask;
        while (m->slots[s]) s = (s + 1) & m->mask;
        m->slots[s] = (uint32_t)(i + 1);
    }
}

int64_t *loom_bpe_strmap_get(struct loom_bpe_strmap *m, const char *key, size_t len, int create) {
    uint64_t h = XXH3_64bits(key, len);
    size_t s = h & m->mask;
    for (; m->slots[s]; s = (s + 1) & m->mask) {
        struct strmap_entry *e = &m->entries[m->slots[s] - 1];
        if (e->hash == h && e->key_len == len && memcmp(m->keys + e->key_off, key, len) == 0) return &e->value;
    }
    if (!create) return NULL;
    if (m->n == m->entries_cap) {
        m->entries_cap = m->entries_cap ? 2 * m->entries_cap : 1024;
        m->entries = bpe_realloc(m->entries, m->entries_cap, sizeof *m->entries);
    }
    if (m->keys_len + len > m->keys_cap) {
        while (m->keys_len + len > m->keys_cap) m->keys_cap = m->keys_cap ? 2 * m->keys_cap : 16384;
        m->keys = bpe_realloc(m->keys, m->keys_cap, 1);
    }
    if (len) memcpy(m->keys + m->keys_len, key, len);
    m->entries[m->n] = (struct strmap_entry){.hash = h, .key_off = m->keys_len, .key_len = len, .value = 0};
    m->keys_len += len;
    m->slots[s] = (uint32_t)(++m->n);
    int64_t *value = &m->entries[m->n - 1].value;
    if (2 * m->n > m->mask + 1) {
        strmap_grow(m);
        value = &m->entries[m->n - 1].value;
    }
    return value;
}

/* ---------------------------------------------------------------------------------------------- */
/* building                                                                                         */

/* A merge as the encoder looks it up: (left, right) -> rank and result. */
struct bpe_pair {
    uint64_t key; /* left << 32 | right; BPE_PAIR_EMPTY when the slot is free */
    uint32_t rank;
    int32_t result;
};
#define BPE_PAIR_EMPTY UINT64_MAX

/* A symbol of the piece being merged; id -1 once merged into its left neighbour. */
struct bpe_symbol {
    int32_t id, prev, next;
};

/* A candidate merge of the symbols at pos and next[pos]. */
struct bpe_candidate {
    uint32_t rank, pos;
    int32_t left, right, result;
};

/* Scratch of one encoding thread. */
struct bpe_work {
    struct loom_pretok_match *match;
    struct bpe_symbol *sym;
    struct bpe_candidate *heap;
    size_t cap; /* of sym and heap */
    struct loom_bpe_strmap *cache; /* piece -> (offset into cache_ids) << 8 | count */
    int32_t *cache_ids;
    size_t cache_ids_len, cache_ids_cap;
};

struct loom_bpe_index {
    int32_t byte_id[256];
    struct bpe_pair *pairs; /* [pair_mask + 1] */
    uint64_t pair_mask;
    int32_t *specials;      /* [n_specials] ids */
    uint32_t n_specials;
    struct loom_pretok *pretok;
    pthread_mutex_t lock;   /* guards work */
    struct bpe_work *work;  /* scratch of whichever thread holds lock */
};

struct loom_bpe *loom_bpe_init(const char *regex) {
    struct loom_bpe *b = calloc_check(1, sizeof *b);
    size_t n = strlen(regex);
    b->regex = malloc_check(n + 1);
    memcpy(b->regex, regex, n + 1);
    b->token_ids = loom_bpe_strmap_init();
    b->cap_tokens = 1024;
    b->offset = calloc_check(b->cap_tokens + 1, sizeof *b->offset);
    b->special = calloc_check(b->cap_tokens, sizeof *b->special);
    return b;
}

static void bpe_work_free(struct bpe_work *w);

void loom_bpe_free(struct loom_bpe *b) {
    if (!b) return;
    if (b->index) {
        struct loom_bpe_index *ix = b->index;
        free(ix->pairs);
        free(ix->specials);
        loom_pretok_free(ix->pretok);
        pthread_mutex_destroy(&ix->lock);
        bpe_work_free(ix->work);
        free(ix);
    }
    loom_bpe_strmap_free(b->token_ids);
    free(b->bytes);
    free(b->offset);
    free(b->special);
    free(b->merges);
    free(b->regex);
    free(b);
}

int32_t loom_bpe_add_token(struct loom_bpe *b, const char *bytes, size_t len, int special) {
    CHECK(b->index == NULL, "token added after the tokenizer was built");
    CHECK(b->n_tokens < INT32_MAX, "too many tokens");
    if (b->n_tokens == b->cap_tokens) {
        b->cap_tokens *= 2;
        b->offset = bpe_realloc(b->offset, (size_t)b->cap_tokens + 1, sizeof *b->offset);
        b->special = bpe_realloc(b->special, b->cap_tokens, sizeof *b->special);
    }
    uint64_t at = b->offset[b->n_tokens];
    if (at + len > b->cap_bytes) {
        while (at + len > b->cap_bytes) b->cap_bytes = b->cap_bytes ? 2 * b->cap_bytes : 65536;
        b->bytes = bpe_realloc(b->bytes, b->cap_bytes, 1);
    }
    if (len) memcpy(b->bytes + at, bytes, len); /* a file may hold an empty token: no buffer yet */
    int32_t id = (int32_t)b->n_tokens++;
    b->offset[id + 1] = at + len;
    b->special[id] = special ? 1 : 0;
    if (!special) {
        int64_t *v = loom_bpe_strmap_get(b->token_ids, bytes, len, 1);
        CHECK(*v == 0, "token %d repeats the bytes of token %lld", id, (long long)(*v - 1));
        *v = id + 1;
    }
    return id;
}

void loom_bpe_set_special(struct loom_bpe *b, int32_t id) {
    CHECK(id >= 0 && (uint32_t)id < b->n_tokens, "token id %d of %u", id, b->n_tokens);
    b->special[id] = 1;
}

int32_t loom_bpe_find(const struct loom_bpe *b, const char *bytes, size_t len) {
    int64_t *v = loom_bpe_strmap_get(b->token_ids, bytes, len, 0);
    return v ? (int32_t)(*v - 1) : -1;
}

void loom_bpe_add_merge(struct loom_bpe *b, int32_t left, int32_t right, int32_t result) {
    CHECK(b->index == NULL, "merge added after the tokenizer was built");
    CHECK(b->n_merges < UINT32_MAX, "too many merges");
    if (b->n_merges == b->cap_merges) {
        b->cap_merges = b->cap_merges ? 2 * b->cap_merges : 1024;
        b->merges = bpe_realloc(b->merges, b->cap_merges, sizeof *b->merges);
    }
    b->merges[b->n_merges++] = (struct loom_bpe_merge){left, right, result};
}

static uint64_t bpe_pair_key(int32_t left, int32_t right) { return (uint64_t)(uint32_t)left << 32 | (uint32_t)right; }

static uint64_t bpe_pair_slot(uint64_t key, uint64_t mask) { return (key * 0x9E3779B97F4A7C15ull >> 17) & mask; }

static const struct bpe_pair *bpe_pair_find(const struct loom_bpe_index *ix, int32_t left, int32_t right) {
    uint64_t key = bpe_pair_key(left, right);
    for (uint64_t s = bpe_pair_slot(key, ix->pair_mask);; s = (s + 1) & ix->pair_mask) {
        const struct bpe_pair *p = &ix->pairs[s];
        if (p->key == key) return p;
        if (p->key == BPE_PAIR_EMPTY) return NULL;
    }
}

int loom_bpe_try_build(struct loom_bpe *b, const char *where, char *why, size_t cap, const char **hint) {
    CHECK(b->index == NULL, "tokenizer built twice");
    *hint = NULL;
    int32_t byte_id[256];
    for (int c = 0; c < 256; c++) {
        char byte = (char)c;
        byte_id[c] = loom_bpe_find(b, &byte, 1);
        if (byte_id[c] < 0) {
            *hint = "byte-level BPE needs a token for each of the 256 bytes";
            snprintf(why, cap, "byte 0x%02x has no token", c);
            return -1;
        }
    }
    struct loom_bpe_index *ix = calloc_check(1, sizeof *ix);
    memcpy(ix->byte_id, byte_id, sizeof byte_id);
    uint64_t slots = 1024;
    while (slots < 2 * (uint64_t)b->n_merges) slots *= 2;
    ix->pair_mask = slots - 1;
    ix->pairs = malloc_check(slots * sizeof *ix->pairs);
    for (uint64_t s = 0; s < slots; s++) ix->pairs[s].key = BPE_PAIR_EMPTY;
    for (uint32_t r = 0; r < b->n_merges; r++) {
        const struct loom_bpe_merge *m = &b->merges[r];
        CHECK(m->left >= 0 && (uint32_t)m->left < b->n_tokens && m->right >= 0 && (uint32_t)m->right < b->n_tokens &&
                  m->result >= 0 && (uint32_t)m->result < b->n_tokens,
              "merge %u has an id out of range", r);
        uint64_t ll = b->offset[m->left + 1] - b->offset[m->left];
        uint64_t rl = b->offset[m->right + 1] - b->offset[m->right];
        uint64_t ol = b->offset[m->result + 1] - b->offset[m->result];
        if (ol != ll + rl || memcmp(b->bytes + b->offset[m->result], b->bytes + b->offset[m->left], ll) != 0 ||
            memcmp(b->bytes + b->offset[m->result] + ll, b->bytes + b->offset[m->right], rl) != 0) {
            snprintf(why, cap, "merge %u (tokens %d and %d) does not make token %d", r, m->left, m->right, m->result);
            free(ix->pairs);
            free(ix);
            return -1;
        }
        /* a pair listed twice takes its last rank, as `tokenizers` does */
        uint64_t key = bpe_pair_key(m->left, m->right);
        uint64_t s = bpe_pair_slot(key, ix->pair_mask);
        while (ix->pairs[s].key != BPE_PAIR_EMPTY && ix->pairs[s].key != key) s = (s + 1) & ix->pair_mask;
        ix->pairs[s] = (struct bpe_pair){.key = key, .rank = r, .result = m->result};
    }
    ix->pretok = loom_pretok_compile(b->regex, where, why, cap);
    if (!ix->pretok) {
        *hint = "the pre-tokenizer regex must compile with PCRE2 (UTF mode)";
        free(ix->pairs);
        free(ix);
        return -1;
    }
    ix->specials = calloc_check(b->n_tokens, sizeof *ix->specials);
    for (uint32_t id = 0; id < b->n_tokens; id++)
        if (b->special[id]) ix->specials[ix->n_specials++] = (int32_t)id;
    CHECK(pthread_mutex_init(&ix->lock, NULL) == 0, "pthread_mutex_init failed");
    b->index = ix;
    return 0;
}

void loom_bpe_build(struct loom_bpe *b, const char *where) {
    char why[512];
    const char *hint;
    if (loom_bpe_try_build(b, where, why, sizeof why, &hint) != 0) loom_input_error(where, hint, "%s", why);
}

/* ---------------------------------------------------------------------------------------------- */
/* encoding                                                                                         */

static struct bpe_work *bpe_work_init(const struct loom_bpe *b) {
    struct bpe_work *w = calloc_check(1, sizeof *w);
    w->match = loom_pretok_match_init(b->index->pretok);
    w->cache = loom_bpe_strmap_init();
    return w;
}

static void bpe_work_free(struct bpe_work *w) {
    if (!w) return;
    loom_pretok_match_free(w->match);
    loom_bpe_strmap_free(w->cache);
    free(w->cache_ids);
    free(w->sym);
    free(w->heap);
    free(w);
}

static int bpe_candidate_before(const struct bpe_candidate *a, const struct bpe_candidate *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void bpe_heap_push(struct bpe_candidate *heap, size_t *n, struct bpe_candidate c) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!bpe_candidate_before(&c, &heap[parent])) break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = c;
}

static struct bpe_candidate bpe_heap_pop(struct bpe_candidate *heap, size_t *n) {
    struct bpe_candidate top = heap[0], last = heap[--*n];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= *n) break;
        if (child + 1 < *n && bpe_candidate_before(&heap[child + 1], &heap[child])) child++;
        if (!bpe_candidate_before(&heap[child], &last)) break;
        heap[i] = heap[child];
        i = child;
    }
    if (*n > 0) heap[i] = last;
    return top;
}

/* Pushes the merge of the symbols at pos and sym[pos].next, if they have one. */
static void bpe_offer(const struct loom_bpe_index *ix, struct bpe_work *w, size_t *n_heap, int32_t pos) {
    int32_t next = w->sym[pos].next;
    if (next < 0) return;
    const struct bpe_pair *p = bpe_pair_find(ix, w->sym[pos].id, w->sym[next].id);
    if (!p) return;
    struct bpe_candidate c = {p->rank, (uint32_t)pos, w->sym[pos].id, w->sym[next].id, p->result};
    bpe_heap_push(w->heap, n_heap, c);
}

/* Appends the ids of one piece of n >= 2 bytes. */
static void bpe_merge_piece(const struct loom_bpe_index *ix, struct bpe_work *w, const unsigned char *p, size_t n,
                            struct loom_ids *out) {
    /* each merge pushes at most two candidates beyond the n - 1 initial ones */
    if (3 * n > w->cap) {
        w->cap = 3 * n;
        w->sym = bpe_realloc(w->sym, w->cap, sizeof *w->sym);
        w->heap = bpe_realloc(w->heap, w->cap, sizeof *w->heap);
    }
    CHECK(n < INT32_MAX, "piece of %zu bytes", n);
    struct bpe_symbol *sym = w->sym;
    for (size_t i = 0; i < n; i++)
        sym[i] = (struct bpe_symbol){ix->byte_id[p[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
    size_t n_heap = 0;
    for (size_t i = 0; i + 1 < n; i++) bpe_offer(ix, w, &n_heap, (int32_t)i);
    while (n_heap > 0) {
        struct bpe_candidate c = bpe_heap_pop(w->heap, &n_heap);
        int32_t pos = (int32_t)c.pos, next = sym[pos].next;
        /* stale: either symbol changed since the candidate was pushed */
        if (sym[pos].id != c.left || next < 0 || sym[next].id != c.right) continue;
        sym[pos].id = c.result;
        sym[next].id = -1;
        sym[pos].next = sym[next].next;
        if (sym[next].next >= 0) sym[sym[next].next].prev = pos;
        if (sym[pos].prev >= 0) bpe_offer(ix, w, &n_heap, sym[pos].prev);
        bpe_offer(ix, w, &n_heap, pos);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next) loom_ids_push(out, sym[i].id);
}

static void bpe_encode_piece(const struct loom_bpe_index *ix, struct bpe_work *w, const char *piece, size_t n,
                             struct loom_ids *out) {
    const unsigned char *p = (const unsigned char *)piece;
    if (n == 1) {
        loom_ids_push(out, ix->byte_id[p[0]]);
        return;
    }
    if (n > BPE_CACHE_PIECE_MAX) {
        bpe_merge_piece(ix, w, p, n, out);
        return;
    }
    int64_t *hit = loom_bpe_strmap_get(w->cache, piece, n, 0);
    if (hit) {
        const int32_t *ids = w->cache_ids + (*hit >> 8);
        for (int64_t i = 0, count = *hit & 255; i < count; i++) loom_ids_push(out, ids[i]);
        return;
    }
    size_t first = out->n;
    bpe_merge_piece(ix, w, p, n, out);
    size_t count = out->n - first;
    if (loom_bpe_strmap_count(w->cache) >= BPE_CACHE_PIECES) {
        loom_bpe_strmap_clear(w->cache);
        w->cache_ids_len = 0;
    }
    if (w->cache_ids_len + count > w->cache_ids_cap) {
        w->cache_ids_cap = w->cache_ids_cap ? 2 * w->cache_ids_cap : 65536;
        w->cache_ids = bpe_realloc(w->cache_ids, w->cache_ids_cap, sizeof *w->cache_ids);
    }
    memcpy(w->cache_ids + w->cache_ids_len, out->ids + first, count * sizeof *out->ids);
    *loom_bpe_strmap_get(w->cache, piece, n, 1) = (int64_t)w->cache_ids_len << 8 | (int64_t)count;
    w->cache_ids_len += count;
}

void loom_bpe_encode(const struct loom_bpe *b, const char *text, size_t len, struct loom_ids *out) {
    struct loom_bpe_index *ix = b->index;
    CHECK(ix != NULL, "encoding with a tokenizer that was not built");
    /* the shared scratch when free, else a private one (another thread is encoding) */
    int shared = pthread_mutex_trylock(&ix->lock) == 0;
    struct bpe_work *w;
    if (shared) {
        if (!ix->work) ix->work = bpe_work_init(b);
        w = ix->work;
    } else {
        w = bpe_work_init(b);
    }
    for (size_t pos = 0; pos < len;) {
        size_t end = loom_pretok_next(ix->pretok, w->match, text, len, pos);
        bpe_encode_piece(ix, w, text + pos, end - pos, out);
        pos = end;
    }
    if (shared) pthread_mutex_unlock(&ix->lock);
    else bpe_work_free(w);
}

/* ---------------------------------------------------------------------------------------------- */
/* lookups and the hash                                                                             */

int32_t loom_bpe_special(const struct loom_bpe *b, const char *text) {
    size_t n = strlen(text);
    for (uint32_t i = 0; i < b->index->n_specials; i++) {
        int32_t id = b->index->specials[i];
        if (b->offset[id + 1] - b->offset[id] == n && memcmp(b->bytes + b->offset[id], text, n) == 0) return id;
    }
    return -1;
}

static void bpe_hash_u64(XXH64_state_t *s, uint64_t v) {
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(v >> (8 * i));
    XXH64_update(s, le, sizeof le);
}

uint64_t loom_bpe_hash(const struct loom_bpe *b) {
    XXH64_state_t *s = XXH64_createState();
    CHECK(s != NULL, "XXH64_createState failed");
    XXH64_reset(s, 0);
    static const char tag[] = "loom-bpe-v1";
    XXH64_update(s, tag, sizeof tag - 1);
    size_t regex_len = strlen(b->regex);
    bpe_hash_u64(s, regex_len);
    XXH64_update(s, b->regex, regex_len);
    bpe_hash_u64(s, b->n_tokens);
    for (uint32_t id = 0; id < b->n_tokens; id++) {
        bpe_hash_u64(s, b->special[id]);
        bpe_hash_u64(s, b->offset[id + 1] - b->offset[id]);
        XXH64_update(s, b->bytes + b->offset[id], b->offset[id + 1] - b->offset[id]);
    }
    bpe_hash_u64(s, b->n_merges);
    for (uint32_t r = 0; r < b->n_merges; r++) {
        bpe_hash_u64(s, (uint32_t)b->merges[r].left);
        bpe_hash_u64(s, (uint32_t)b->merges[r].right);
        bpe_hash_u64(s, (uint32_t)b->merges[r].result);
    }
    uint64_t h = XXH64_digest(s);
    XXH64_freeState(s);
    return h;
}
