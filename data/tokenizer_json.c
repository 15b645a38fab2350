/*
 * data/tokenizer_json.c — byte-level BPE to and from a Hugging Face tokenizer.json (see bpe.h).
 *
 * The file loom writes, and the only form it reads:
 *   normalizer      null
 *   pre_tokenizer   Sequence [ Split { pattern: { Regex: R }, behavior: Isolated, invert: false },
 *                              ByteLevel { add_prefix_space: false, use_regex: false } ]
 *   model           BPE { vocab: { token: id }, merges: [ "left right" ] } without dropout, byte
 *                   fallback, subword prefix or suffix, or ignore_merges
 *   decoder         ByteLevel
 *   added_tokens    the special tokens { id, content, special: true, ... }
 * Vocabulary and merges spell bytes in GPT-2's printable alphabet (loom_bpe_spell); merges are read in
 * both the "left right" and the ["left", "right"] forms. Ids must run 0..N-1 without a gap.
 *
 * In Python, `tokenizers` gives loom's ids for the same file with
 *     tok = Tokenizer.from_file(path); tok.encode_special_tokens = True
 *     tok.encode(text, add_special_tokens=False).ids
 * (encode_special_tokens keeps it from matching special tokens in the text, as loom never does).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "data/bpe.h"

#define JSON_HINT "give a tokenizer.json written by `loom data tokenizer-train` (or the tokenizer `bytes`)"

/* ---------------------------------------------------------------------------------------------- */
/* reading                                                                                          */

static int json_null_or_absent(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return v == NULL || cJSON_IsNull(v);
}

static int json_false_or_absent(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return v == NULL || cJSON_IsNull(v) || cJSON_IsFalse(v);
}

static const char *json_type(const cJSON *obj) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : "";
}

/* One file being loaded: everything allocated so far, freed before an input error, so that a caller that
 * survives the error (the fuzz targets, tests/fuzz/) is left with nothing allocated. */
struct json_load {
    const char *path;
    char *text;                  /* the file */
    cJSON *root;
    struct json_token *tokens;   /* [max_id + 1] */
    struct loom_bpe *b;
    char *scratch, *pair;        /* buffers of the token and merge readers */
    size_t scratch_cap, pair_cap;
};

static void json_load_free(struct json_load *l) {
    free(l->text);
    cJSON_Delete(l->root);
    free(l->tokens);
    loom_bpe_free(l->b);
    free(l->scratch);
    free(l->pair);
    memset(l, 0, sizeof *l);
}

_Noreturn __attribute__((format(printf, 3, 4)))
static void json_bad(struct json_load *l, const char *hint, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *path = l->path;
    json_load_free(l);
    loom_input_error(path, hint ? hint : JSON_HINT, "%s", msg);
}

/* The regex of the one pre-tokenizer form loom reads. */
static const char *json_pre_tokenizer_regex(struct json_load *l) {
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(l->root, "pre_tokenizer");
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
    const cJSON *split = cJSON_GetArrayItem(seq, 0), *bl = cJSON_GetArrayItem(seq, 1);
    const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(split, "pattern");
    const cJSON *regex = cJSON_GetObjectItemCaseSensitive(pattern, "Regex");
    const cJSON *behavior = cJSON_GetObjectItemCaseSensitive(split, "behavior");
    int ok = cJSON_IsObject(pt) && strcmp(json_type(pt), "Sequence") == 0 && cJSON_GetArraySize(seq) == 2 &&
             strcmp(json_type(split), "Split") == 0 && cJSON_IsString(regex) && cJSON_IsString(behavior) &&
             strcmp(behavior->valuestring, "Isolated") == 0 && json_false_or_absent(split, "invert") &&
             strcmp(json_type(bl), "ByteLevel") == 0 && json_false_or_absent(bl, "add_prefix_space") &&
             json_false_or_absent(bl, "use_regex");
    if (!ok)
        json_bad(l, NULL,
                 "unsupported pre_tokenizer: loom reads a Sequence of Split (Regex, Isolated) and ByteLevel "
                 "(add_prefix_space and use_regex false)");
    return regex->valuestring;
}

static void json_check_model_options(struct json_load *l, const cJSON *model) {
    static const char *const nulls[] = {"dropout", "continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < sizeof nulls / sizeof *nulls; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, nulls[i]);
        if (!json_null_or_absent(model, nulls[i]) && !(cJSON_IsString(v) && v->valuestring[0] == '\0'))
            json_bad(l, NULL, "BPE option model.%s is not supported", nulls[i]);
    }
    static const char *const falses[] = {"byte_fallback", "ignore_merges"};
    for (size_t i = 0; i < sizeof falses / sizeof *falses; i++)
        if (!json_false_or_absent(model, falses[i]))
            json_bad(l, NULL, "BPE option model.%s is not supported", falses[i]);
}

/* What the file says of one id. */
struct json_token {
    const char *vocab;   /* spelling in model.vocab, or NULL */
    const char *added;   /* content in added_tokens, or NULL */
};

static int json_id(const cJSON *v, int64_t *id) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= INT32_MAX ||
        v->valuedouble != (double)(int64_t)v->valuedouble)
        return -1;
    *id = (int64_t)v->valuedouble;
    return 0;
}

static void json_reserve(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    *cap = 2 * need;
    *buf = realloc(*buf, *cap);
    CHECK(*buf != NULL, "out of memory growing a buffer to %zu bytes", *cap);
}

/* Token i of the file into l->b: ids come in order, so the new token gets id i. */
static void json_add_token(struct json_load *l, const struct json_token *t, int64_t i) {
    struct loom_bpe *b = l->b;
    if (!t->vocab) {
        loom_bpe_add_token(b, t->added, strlen(t->added), 1);
        return;
    }
    json_reserve(&l->scratch, &l->scratch_cap, strlen(t->vocab) + 1);
    long n = loom_bpe_unspell(t->vocab, l->scratch);
    if (n < 0)
        json_bad(l, NULL, "token '%s' (id %lld) is not spelled in the byte-level alphabet", t->vocab, (long long)i);
    int32_t other = loom_bpe_find(b, l->scratch, (size_t)n);
    if (other >= 0) json_bad(l, NULL, "token '%s' has two ids, %d and %lld", t->vocab, other, (long long)i);
    loom_bpe_add_token(b, l->scratch, (size_t)n, 0);
    if (t->added) loom_bpe_set_special(b, (int32_t)i);
}

/* The id of a merge's left or right part. */
static int32_t json_merge_part(struct json_load *l, const char *spelling, size_t rank) {
    long n = loom_bpe_unspell(spelling, l->scratch);
    int32_t id = n < 0 ? -1 : loom_bpe_find(l->b, l->scratch, (size_t)n);
    if (id < 0) json_bad(l, NULL, "merge %zu: '%s' is not in the vocabulary", rank, spelling);
    return id;
}

static void json_add_merges(struct json_load *l, const cJSON *merges) {
    struct loom_bpe *b = l->b;
    size_t rank = 0;
    for (const cJSON *m = merges->child; m; m = m->next, rank++) {
        const char *left, *right;
        if (cJSON_IsString(m)) {
            const char *space = strchr(m->valuestring, ' ');
            if (!space || strchr(space + 1, ' '))
                json_bad(l, NULL, "merge %zu: '%s' is not two tokens separated by one space", rank, m->valuestring);
            json_reserve(&l->pair, &l->pair_cap, strlen(m->valuestring) + 1);
            strcpy(l->pair, m->valuestring);
            l->pair[space - m->valuestring] = '\0';
            left = l->pair;
            right = l->pair + (space - m->valuestring) + 1;
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
                   cJSON_IsString(m->child->next)) {
            left = m->child->valuestring;
            right = m->child->next->valuestring;
        } else {
            json_bad(l, NULL, "merge %zu is neither \"left right\" nor [\"left\", \"right\"]", rank);
        }
        json_reserve(&l->scratch, &l->scratch_cap, strlen(left) + strlen(right) + 1);
        int32_t lid = json_merge_part(l, left, rank);
        int32_t rid = json_merge_part(l, right, rank);
        uint64_t ll = b->offset[lid + 1] - b->offset[lid], rl = b->offset[rid + 1] - b->offset[rid];
        memcpy(l->scratch, b->bytes + b->offset[lid], ll);
        memcpy(l->scratch + ll, b->bytes + b->offset[rid], rl);
        int32_t result = loom_bpe_find(b, l->scratch, ll + rl);
        if (result < 0) json_bad(l, NULL, "merge %zu: '%s%s' is not in the vocabulary", rank, left, right);
        loom_bpe_add_merge(b, lid, rid, result);
    }
}

struct loom_bpe *loom_bpe_load_json(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) loom_input_error(path, JSON_HINT, "cannot read tokenizer file: %s", strerror(errno));
    if (!S_ISREG(st.st_mode)) loom_input_error(path, JSON_HINT, "tokenizer file is not a regular file");
    FILE *f = fopen(path, "rb");
    if (!f) loom_input_error(path, JSON_HINT, "cannot read tokenizer file: %s", strerror(errno));
    struct json_load l = {.path = path};
    size_t size = (size_t)st.st_size;
    l.text = malloc_check(size + 1);
    size_t got = fread(l.text, 1, size, f);
    CHECK(got == size && !ferror(f), "reading %s: %s", path, strerror(errno));
    fclose(f);
    l.text[size] = '\0';

    const char *end = NULL;
    l.root = cJSON_ParseWithLengthOpts(l.text, size, &end, 0);
    if (!l.root) {
        const char *at = cJSON_GetErrorPtr();
        json_bad(&l, NULL, "not valid JSON (near byte %zu)", at ? (size_t)(at - l.text) : (size_t)0);
    }
    end += strspn(end, " \t\r\n");
    if (end != l.text + size)
        json_bad(&l, NULL, "not valid JSON: more text after the end (at byte %zu)", (size_t)(end - l.text));
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(l.root, "model");
    if (!cJSON_IsObject(model)) json_bad(&l, NULL, "no \"model\" object: not a tokenizer.json");
    if (strcmp(json_type(model), "BPE") != 0) json_bad(&l, NULL, "model type is '%s', not BPE", json_type(model));
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(vocab)) json_bad(&l, NULL, "model.vocab is missing or not an object");
    if (!cJSON_IsArray(merges)) json_bad(&l, NULL, "model.merges is missing or not an array");
    json_check_model_options(&l, model);
    if (!json_null_or_absent(l.root, "normalizer"))
        json_bad(&l, NULL, "a normalizer is not supported (loom applies none)");
    const cJSON *decoder = cJSON_GetObjectItemCaseSensitive(l.root, "decoder");
    if (!json_null_or_absent(l.root, "decoder") && strcmp(json_type(decoder), "ByteLevel") != 0)
        json_bad(&l, NULL, "decoder '%s' is not supported (loom decodes ByteLevel)", json_type(decoder));
    const char *regex = json_pre_tokenizer_regex(&l);
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(l.root, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added)) json_bad(&l, NULL, "added_tokens is not an array");

    /* every id, from the vocabulary and the added tokens */
    int64_t max_id = -1, n_entries = 0;
    for (const cJSON *e = vocab->child; e; e = e->next, n_entries++) {
        int64_t id;
        if (json_id(e, &id) != 0) json_bad(&l, NULL, "model.vocab: token '%s' has no valid id", e->string);
        if (id > max_id) max_id = id;
    }
    for (const cJSON *e = added ? added->child : NULL; e; e = e->next, n_entries++) {
        int64_t id;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (json_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id) != 0 || !cJSON_IsString(content) ||
            content->valuestring[0] == '\0')
            json_bad(&l, NULL, "added_tokens: each needs an id and a non-empty content");
        if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special")))
            json_bad(&l, NULL, "added token '%s' is not special: loom supports special ones only",
                     content->valuestring);
        if (id > max_id) max_id = id;
    }
    if (max_id < 0) json_bad(&l, NULL, "the vocabulary is empty");
    if (max_id >= n_entries)
        json_bad(&l, NULL, "ids must run 0..N-1 without a gap, but id %lld is past %lld tokens", (long long)max_id,
                 (long long)n_entries);
    l.tokens = calloc_check((size_t)max_id + 1, sizeof *l.tokens);
    for (const cJSON *e = vocab->child; e; e = e->next) {
        int64_t id = (int64_t)e->valuedouble;
        if (l.tokens[id].vocab)
            json_bad(&l, NULL, "id %lld is given to both '%s' and '%s'", (long long)id, l.tokens[id].vocab, e->string);
        l.tokens[id].vocab = e->string;
    }
    for (const cJSON *e = added ? added->child : NULL; e; e = e->next) {
        int64_t id = (int64_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        const char *content = cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring;
        if (l.tokens[id].added || (l.tokens[id].vocab && strcmp(l.tokens[id].vocab, content) != 0))
            json_bad(&l, NULL, "id %lld is given to both '%s' and '%s'", (long long)id,
                     l.tokens[id].added ? l.tokens[id].added : l.tokens[id].vocab, content);
        l.tokens[id].added = content;
    }

    l.b = loom_bpe_init(regex);
    for (int64_t i = 0; i <= max_id; i++) {
        if (!l.tokens[i].vocab && !l.tokens[i].added)
            json_bad(&l, NULL, "ids must run 0..%lld without a gap; id %lld has no token", (long long)max_id,
                     (long long)i);
        json_add_token(&l, &l.tokens[i], i);
    }
    json_add_merges(&l, merges);
    char why[512];
    const char *hint;
    if (loom_bpe_try_build(l.b, path, why, sizeof why, &hint) != 0) json_bad(&l, hint, "%s", why);
    struct loom_bpe *b = l.b;
    l.b = NULL;
    json_load_free(&l);
    return b;
}

/* ---------------------------------------------------------------------------------------------- */
/* writing                                                                                          */

static cJSON *json_byte_level(void) {
    cJSON *bl = cJSON_CreateObject();
    cJSON_AddStringToObject(bl, "type", "ByteLevel");
    cJSON_AddFalseToObject(bl, "add_prefix_space");
    cJSON_AddTrueToObject(bl, "trim_offsets");
    cJSON_AddFalseToObject(bl, "use_regex");
    return bl;
}

void loom_bpe_save_json(const struct loom_bpe *b, const char *path) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    uint64_t longest = 0;
    for (uint32_t id = 0; id < b->n_tokens; id++) {
        uint64_t len = b->offset[id + 1] - b->offset[id];
        if (len > longest) longest = len;
    }
    char *bytes = malloc_check(longest + 1), *spelling = malloc_check(2 * longest + 1);
    for (uint32_t id = 0; id < b->n_tokens; id++) {
        if (!b->special[id]) continue;
        uint64_t len = b->offset[id + 1] - b->offset[id];
        memcpy(bytes, b->bytes + b->offset[id], len);
        bytes[len] = '\0';
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "id", id);
        cJSON_AddStringToObject(t, "content", bytes);
        cJSON_AddFalseToObject(t, "single_word");
        cJSON_AddFalseToObject(t, "lstrip");
        cJSON_AddFalseToObject(t, "rstrip");
        cJSON_AddFalseToObject(t, "normalized");
        cJSON_AddTrueToObject(t, "special");
        cJSON_AddItemToArray(added, t);
    }
    cJSON_AddNullToObject(root, "normalizer");
    cJSON *pt = cJSON_AddObjectToObject(root, "pre_tokenizer");
    cJSON_AddStringToObject(pt, "type", "Sequence");
    cJSON *seq = cJSON_AddArrayToObject(pt, "pretokenizers");
    cJSON *split = cJSON_CreateObject();
    cJSON_AddStringToObject(split, "type", "Split");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(split, "pattern"), "Regex", b->regex);
    cJSON_AddStringToObject(split, "behavior", "Isolated");
    cJSON_AddFalseToObject(split, "invert");
    cJSON_AddItemToArray(seq, split);
    cJSON_AddItemToArray(seq, json_byte_level());
    cJSON_AddNullToObject(root, "post_processor");
    cJSON_AddItemToObject(root, "decoder", json_byte_level());
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddFalseToObject(model, "fuse_unk");
    cJSON_AddFalseToObject(model, "byte_fallback");
    cJSON_AddFalseToObject(model, "ignore_merges");
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    for (uint32_t id = 0; id < b->n_tokens; id++) {
        uint64_t len = b->offset[id + 1] - b->offset[id];
        /* a special is in the vocabulary too when the file it came from said so */
        if (loom_bpe_find(b, b->bytes + b->offset[id], len) != (int32_t)id) continue;
        loom_bpe_spell(b->bytes + b->offset[id], len, spelling);
        cJSON_AddNumberToObject(vocab, spelling, id);
    }
    cJSON *merges = cJSON_AddArrayToObject(model, "merges");
    char *pair = malloc_check(4 * longest + 2);
    for (uint32_t r = 0; r < b->n_merges; r++) {
        const struct loom_bpe_merge *m = &b->merges[r];
        loom_bpe_spell(b->bytes + b->offset[m->left], b->offset[m->left + 1] - b->offset[m->left], pair);
        size_t n = strlen(pair);
        pair[n] = ' ';
        loom_bpe_spell(b->bytes + b->offset[m->right], b->offset[m->right + 1] - b->offset[m->right],
                            pair + n + 1);
        cJSON_AddItemToArray(merges, cJSON_CreateString(pair));
    }
    free(pair);
    free(bytes);
    free(spelling);

    char *json = cJSON_Print(root);
    CHECK(json != NULL, "out of memory printing tokenizer.json");
    cJSON_Delete(root);
    FILE *f = fopen(path, "wx");
    if (!f && errno == EEXIST)
        loom_input_error(path, "remove it or choose another path", "tokenizer file exists; refusing to overwrite");
    if (!f) loom_input_error(path, NULL, "cannot create tokenizer file: %s", strerror(errno));
    size_t len = strlen(json);
    CHECK(fwrite(json, 1, len, f) == len && fputc('\n', f) != EOF && fclose(f) == 0, "writing %s: %s", path,
          strerror(errno));
    free(json);
}
