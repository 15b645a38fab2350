/*
 * data/bpe.h — byte-level BPE: the vocabulary and merges, encoding, and training.
 *
 * A tokenizer is
 *   - tokens: ids 0..n_tokens-1, each a byte string; a special token's bytes are its text;
 *   - merges in rank order, each (left, right) -> result, where result's bytes are left's then right's;
 *   - the pre-tokenizer regex (data/pretokenize.h).
 * Encoding (as Hugging Face `tokenizers` encodes ByteLevel BPE): split the text into pieces with the
 * regex; start each piece as its bytes' tokens; merge the adjacent pair of lowest rank, leftmost first,
 * until no adjacent pair has a merge. Special tokens are never produced. Decoding concatenates bytes.
 *
 * Loaded from and saved to tokenizer.json by data/tokenizer_json.c; trained by data/bpe_train.c.
 */
#ifndef LOOM_DATA_BPE_H
#define LOOM_DATA_BPE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "data/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

struct loom_bpe_merge {
    int32_t left, right, result;
};

struct loom_bpe_index;  /* lookup tables and scratch, made by loom_bpe_build */
struct loom_bpe_strmap; /* byte strings -> int64 (below) */

struct loom_bpe {
    uint32_t n_tokens;
    char *bytes;              /* [offset[n_tokens]] every token's bytes, back to back */
    uint64_t *offset;         /* [n_tokens + 1] token id is bytes[offset[id] .. offset[id + 1]) */
    uint8_t *special;         /* [n_tokens] 1 for a special token */
    uint32_t n_merges;
    struct loom_bpe_merge *merges; /* [n_merges] rank order */
    char *regex;
    struct loom_bpe_strmap *token_ids; /* bytes -> id of every ordinary (not special) token */
    struct loom_bpe_index *index;      /* NULL until built */
    uint32_t cap_tokens, cap_merges;   /* allocated lengths of the arrays above */
    uint64_t cap_bytes;
};

/* ---------------------------------------------------------------------------------------------- */
/* building a tokenizer: add tokens in id order, then merges, then build                            */

struct loom_bpe *loom_bpe_init(const char *regex);
void loom_bpe_free(struct loom_bpe *b);

/* Appends a token and returns its id. An ordinary token's bytes must not repeat another's
 * (CHECKed: callers test with loom_bpe_find first). */
int32_t loom_bpe_add_token(struct loom_bpe *b, const char *bytes, size_t len, int special);
/* Marks an ordinary token special (a file may declare a vocabulary token special too). */
void loom_bpe_set_special(struct loom_bpe *b, int32_t id);
/* Id of the ordinary token with these bytes, or -1. */
int32_t loom_bpe_find(const struct loom_bpe *b, const char *bytes, size_t len);
void loom_bpe_add_merge(struct loom_bpe *b, int32_t left, int32_t right, int32_t result);

/* Makes the lookup tables and compiles the regex. Problems of the definition (a byte without its
 * token, a merge whose result is not left+right, a regex that does not compile) are input errors
 * naming `where` (which also names the regex in errors while encoding). */
void loom_bpe_build(struct loom_bpe *b, const char *where);
/* The same, but a problem returns -1 with it in why and what to do in *hint (or NULL), b unchanged; 0 when
 * built. */
int loom_bpe_try_build(struct loom_bpe *b, const char *where, char *why, size_t cap, const char **hint);

/* ---------------------------------------------------------------------------------------------- */
/* using a built tokenizer                                                                          */

/* Appends the ids of text[0..len). Safe to call from several threads at once. */
void loom_bpe_encode(const struct loom_bpe *b, const char *text, size_t len, struct loom_ids *out);
/* Id of the special token with this text, or -1. */
int32_t loom_bpe_special(const struct loom_bpe *b, const char *text);
/* XXH64 of the canonical form: regex, every token (bytes, special or not) in id order, every merge in
 * rank order. */
uint64_t loom_bpe_hash(const struct loom_bpe *b);

/* ---------------------------------------------------------------------------------------------- */
/* GPT-2's byte alphabet, in which tokenizer.json spells tokens: the printable bytes ! .. ~, ¡ .. ¬
 * and ® .. ÿ stand for themselves; the other 68 bytes, in increasing order, are the characters
 * U+0100, U+0101, ... */

/* The spelling of bytes[0..len) into out, which has room for 2 * len + 1 bytes (each character is 1
 * or 2 bytes of UTF-8); NUL-terminated. Returns its length. */
size_t loom_bpe_spell(const char *bytes, size_t len, char *out);
/* The bytes the NUL-terminated spelling s stands for, into out (room for strlen(s) bytes). Returns
 * their count, or -1 when s holds a character outside the alphabet. */
long loom_bpe_unspell(const char *s, char *out);

/* ---------------------------------------------------------------------------------------------- */
/* a map from byte strings to values, shared by the tokenizer and its trainer                       */

struct loom_bpe_strmap;
struct loom_bpe_strmap *loom_bpe_strmap_init(void);
void loom_bpe_strmap_free(struct loom_bpe_strmap *m);
/* The slot holding the value of key, made (value 0) when absent if create, else NULL when absent.
 * A slot stays valid until the next insertion. */
int64_t *loom_bpe_strmap_get(struct loom_bpe_strmap *m, const char *key, size_t len, int create);
size_t loom_bpe_strmap_count(const struct loom_bpe_strmap *m);
void loom_bpe_strmap_clear(struct loom_bpe_strmap *m);
/* Entry i (0 <= i < count) in insertion order. */
const char *loom_bpe_strmap_key(const struct loom_bpe_strmap *m, size_t i, size_t *len, int64_t *value);

/* ---------------------------------------------------------------------------------------------- */
/* training (data/bpe_train.c)                                                                      */

struct loom_bpe_trainer;

/* A trainer with the Youtu-LLM regex (LOOM_PRETOKENIZE_REGEX) for a tokenizer with these special
 * tokens (copied). No token may be spelled as a special's text (tokenizer.json could not tell them
 * apart): a special that spells a single byte is an input error, as is a special given twice or an
 * empty one; and no merge makes a token spelled so. */
struct loom_bpe_trainer *loom_bpe_trainer_init(const char *const *specials, int n_specials);
void loom_bpe_trainer_free(struct loom_bpe_trainer *tr);
/* Counts the pieces of one text. */
void loom_bpe_trainer_add(struct loom_bpe_trainer *tr, const char *text, size_t len);
/* Learns merges until the vocabulary holds vocab_size tokens (256 bytes + merges + specials) or no
 * pair occurs min_frequency times; then appends the specials. Ties between pairs of equal count go to
 * the smaller left id, then the smaller right id (bytes have ids 0..255 by value, merges count up
 * from 256 in the order learned). Progress lines go to `progress` when not NULL. */
struct loom_bpe *loom_bpe_trainer_finish(struct loom_bpe_trainer *tr, uint32_t vocab_size, uint64_t min_frequency,
                                         FILE *progress);

/* ---------------------------------------------------------------------------------------------- */
/* tokenizer.json (data/tokenizer_json.c)                                                           */

/* Reads a Hugging Face tokenizer.json holding ByteLevel BPE in the form loom_bpe_save_json writes.
 * Anything else is an input error naming path. Returns a built tokenizer. */
struct loom_bpe *loom_bpe_load_json(const char *path);
/* Writes b to path, which must not exist (an input error naming path otherwise). */
void loom_bpe_save_json(const struct loom_bpe *b, const char *path);

#ifdef __cplusplus
}
#endif
#endif
