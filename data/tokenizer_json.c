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

/* The regex of the one pre-tokenizer form loom reads. */
static const char *json_pre_tokenizer_regex(const cJSON *root, const char *path) {
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
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
        loom_input_error(path, JSON_HINT,
                         "unsupported pre_tokenizer: loom reads a Sequence of Split (Regex, Isolated) and ByteLevel "
                         "(add_prefix_space and use_regex false)");
    return regex->valuestring;
}

static void json_check_model_options(const cJSON *model, const char *path) {
    static const char *const nulls[] = {"dropout", "continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < sizeof nulls / sizeof *nulls; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, nulls[i]);
        if (!json_null_or_absent(model, nulls[i]) && !(cJSON_IsString(v) && v->valuestring[0] == '\0'))
            loom_input_error(path, JSON_HINT, "BPE option model.%s is not supported", nulls[i]);
    }
    static const char *const falses[] = {"byte_fallback", "ignore_merges"};
    for (size_t i = 0; i < sizeof falses / sizeof *falses; i++)
        if (!json_false_or_absent(model, falses[i]))
            loom_input_error(path, JSON_HINT, "BPE option model.%s is not supported", falses[i]);
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

/* Token i of the file into b: ids come in order, so the new token gets id i. */
static void json_add_token(struct loom_bpe *b, const struct json_token *t, int64_t i, char *scratch, const char *path) {
    if (!t->vocab) {
        loom_bpe_add_token(b, t->added, strlen(t->added), 1);
        return;
    }
    long n = loom_bpe_unspell(t->vocab, scratch);
    if (n < 0)
        loom_input_error(path, JSON_HINT, "token '%s' (id %lld) is not spelled in the byte-level alphabet", t->vocab,
                         (long long)i);
    int32_t other = loom_bpe_find(b, scratch, (size_t)n);
    if (other >= 0)
        loom_input_error(path, JSON_HINT, "token '%s' has two ids, %d and %lld", t->vocab, other, (long long)i);
    loom_bpe_add_token(b, scratch, (size_t)n, 0);
    if (t->added) loom_bpe_set_special(b, (int32_t)i);
}

/* The id of a merge's left or right part. */
static int32_t json_merge_part(const struct loom_bpe *b, const char *spelling, char *scratch, size_t rank,
                               const char *path) {
    long n = loom_bpe_unspell(spelling, scratch);
    int32_t id = n < 0 ? -1 : loom_bpe_find(b, scratch, (size_t)n);
    if (id < 0) loom_input_error(path, JSON_HINT, "merge %zu: '%s' is not in the vocabulary", rank, spelling);
    return id;
}

static void json_reserve(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    *cap = 2 * need;
    *buf = realloc(*buf, *cap);
    CHECK(*buf != NULL, "out of memory growing a buffer to %zu bytes", *cap);
}

static void json_add_merges(struct loom_bpe *b, const cJSON *merges, const char *path) {
    size_t rank = 0, pair_cap = 0, scratch_cap = 0;
    char *pair = NULL, *scratch = NULL;
    for (const cJSON *m = merges->child; m; m = m->next, rank++) {
        const char *left, *right;
        if (cJSON_IsString(m)) {
            const char *space = strchr(m->valuestring, ' ');
            if (!space || strchr(space + 1, ' '))
                loom_input_error(path, JSON_HINT, "merge %zu: '%s' is not two tokens separated by one space", rank,
                                 m->valuestring);
            json_reserve(&pair, &pair_cap, strlen(m->valuestring) + 1);
            strcpy(pair, m->valuestring);
            pair[space - m->valuestring] = '\0';
            left = pair;
            right = pair + (space - m->valuestring) + 1;
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
                   cJSON_IsString(m->child->next)) {
            left = m->child->valuestring;
            right = m->child->next->valuestring;
        } else {
            loom_input_error(path, JSON_HINT, "merge %zu is neither \"left right\" nor [\"left\", \"right\"]", rank);
        }
        json_reserve(&scratch, &scratch_cap, strlen(left) + strlen(right) + 1);
        int32_t l = json_merge_part(b, left, scratch, rank, path);
        int32_t r = json_merge_part(b, right, scratch, rank, path);
        uint64_t ll = b->offset[l + 1] - b->offset[l], rl = b->offset[r + 1] - b->offset[r];
        memcpy(scratch, b->bytes + b->offset[l], ll);
        memcpy(scratch + ll, b->bytes + b->offset[r], rl);
        int32_t result = loom_bpe_find(b, scratch, ll + rl);
        if (result < 0)
            loom_input_error(path, JSON_HINT, "merge %zu: '%s%s' is not in the vocabulary", rank, left, right);
        loom_bpe_add_merge(b, l, r, result);
    }
    free(scratch);
    free(pair);
}

struct loom_bpe *loom_bpe_load_json(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) loom_input_error(path, JSON_HINT, "cannot read tokenizer file: %s", strerror(errno));
    if (!S_ISREG(st.st_mode)) loom_input_error(path, JSON_HINT, "tokenizer file is not a regular file");
    FILE *f = fopen(path, "rb");
    if (!f) loom_input_error(path, JSON_HINT, "cannot read tokenizer file: %s", strerror(errno));
    size_t size = (size_t)st.st_size;
    char *text = malloc_check(size + 1);
    size_t got = fread(text, 1, size, f);
    CHECK(got == size && !ferror(f), "reading %s: %s", path, strerror(errno));
    fclose(f);
    text[size] = '\0';

    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, size, &end, 0);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        loom_input_error(path, JSON_HINT, "not valid JSON (near byte %zu)", at ? (size_t)(at - text) : (size_t)0);
    }
    end += strspn(end, " \t\r\n");
    if (end != text + size)
        loom_input_error(path, JSON_HINT, "not valid JSON: more text after the end (at byte %zu)",
                         (size_t)(end - text));
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) loom_input_error(path, JSON_HINT, "no \"model\" object: not a tokenizer.json");
    if (strcmp(json_type(model), "BPE") != 0)
        loom_input_error(path, JSON_HINT, "model type is '%s', not BPE", json_type(model));
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(vocab)) loom_input_error(path, JSON_HINT, "model.vocab is missing or not an object");
    if (!cJSON_IsArray(merges)) loom_input_error(path, JSON_HINT, "model.merges is missing or not an array");
    json_check_model_options(model, path);
    if (!json_null_or_absent(root, "normalizer"))
        loom_input_error(path, JSON_HINT, "a normalizer is not supported (loom applies none)");
    const cJSON *decoder = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    if (!json_null_or_absent(root, "decoder") && strcmp(json_type(decoder), "ByteLevel") != 0)
        loom_input_error(path, JSON_HINT, "decoder '%s' is not supported (loom decodes ByteLevel)", json_type(decoder));
    const char *regex = json_pre_tokenizer_regex(root, path);
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added))
        loom_input_error(path, JSON_HINT, "added_tokens is not an array");

    /* every id, from the vocabulary and the added tokens */
    int64_t max_id = -1, n_entries = 0;
    for (const cJSON *e = vocab->child; e; e = e->next, n_entries++) {
        int64_t id;
        if (json_id(e, &id) != 0)
            loom_input_error(path, JSON_HINT, "model.vocab: token '%s' has no valid id", e->string);
        if (id > max_id) max_id = id;
    }
    for (const cJSON *e = added ? added->child : NULL; e; e = e->next, n_entries++) {
        int64_t id;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (json_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id) != 0 || !cJSON_IsString(content) ||
            content->valuestring[0] == '\0')
            loom_input_error(path, JSON_HINT, "added_tokens: each needs an id and a non-empty content");
        if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special")))
            loom_input_error(path, JSON_HINT, "added token '%s' is not special: loom supports special ones only",
                             content->valuestring);
        if (id > max_id) max_id = id;
    }
    if (max_id < 0) loom_input_error(path, JSON_HINT, "the vocabulary is empty");
    if (max_id >= n_entries)
        loom_input_error(path, JSON_HINT, "ids must run 0..N-1 without a gap, but id %lld is past %lld tokens",
                         (long long)max_id, (long long)n_entries);
    struct json_token *tokens = calloc_check((size_t)max_id + 1, sizeof *tokens);
    size_t longest = 0;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        int64_t id = (int64_t)e->valuedouble;
        if (tokens[id].vocab)
            loom_input_error(path, JSON_HINT, "id %lld is given to both '%s' and '%s'", (long long)id,
                             tokens[id].vocab, e->string);
        tokens[id].vocab = e->string;
        if (strlen(e->string) > longest) longest = strlen(e->string);
    }
    for (const cJSON *e = added ? added->child : NULL; e; e = e->next) {
        int64_t id = (int64_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        const char *content = cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring;
        if (tokens[id].added || (tokens[id].vocab && strcmp(tokens[id].vocab, content) != 0))
            loom_input_error(path, JSON_HINT, "id %lld is given to both '%s' and '%s'", (long long)id,
                             tokens[id].added ? tokens[id].added : tokens[id].vocab, content);
        tokens[id].added = content;
    }

    struct loom_bpe *b = loom_bpe_init(regex);
    char *scratch = malloc_check(longest + 1);
    for (int64_t i = 0; i <= max_id; i++) {
        if (!tokens[i].vocab && !tokens[i].added)
            loom_input_error(path, JSON_HINT, "ids must run 0..%lld without a gap; id %lld has no token",
                             (long long)max_id, (long long)i);
        json_add_token(b, &tokens[i], i, scratch, path);
    }
    free(scratch);
    json_add_merges(b, merges, path);
    loom_bpe_build(b, path);
    free(tokens);
    cJSON_Delete(root);
    free(text);
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
