/*
 * data/tokenizer.h — the tokenizer interface every data tool uses.
 *
 * Two kinds behind one handle: the built-in byte tokenizer (named "bytes", data/bytetok.h) and
 * byte-level BPE read from a Hugging Face `tokenizer.json` (data/bpe.c), trained by
 * `loom data tokenizer-train` with the Youtu-LLM pre-tokenization rules. Special tokens (bos, eos,
 * pad, and the markers of agentic traces) are declared in the tokenizer file; plain encoding never
 * produces them, so text cannot smuggle a control token into the stream.
 */
#ifndef LOOM_DATA_TOKENIZER_H
#define LOOM_DATA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct loom_tokenizer;

/* A growable id buffer. */
struct loom_ids {
    int32_t *ids;
    size_t n, cap;
};
void loom_ids_push(struct loom_ids *v, int32_t id);
void loom_ids_free(struct loom_ids *v);

/* "bytes" gives the built-in byte tokenizer; anything else is the path of a tokenizer.json. A
 * missing or malformed file is an input error naming it (exit 2). */
struct loom_tokenizer *loom_tokenizer_load(const char *name_or_path);
void loom_tokenizer_free(struct loom_tokenizer *t);

uint32_t loom_tokenizer_vocab_size(const struct loom_tokenizer *t);
/* Identifies the exact vocabulary and rules; stamped in every shard made with it. */
uint64_t loom_tokenizer_hash(const struct loom_tokenizer *t);
/* Id of a special token by its text ("<|eos|>"), or -1. */
int32_t loom_tokenizer_special(const struct loom_tokenizer *t, const char *text);
int32_t loom_tokenizer_bos(const struct loom_tokenizer *t);
int32_t loom_tokenizer_eos(const struct loom_tokenizer *t);
int32_t loom_tokenizer_pad(const struct loom_tokenizer *t);

/* Appends the ids of text[0..len) to out (no specials added or recognised). */
void loom_tokenizer_encode(const struct loom_tokenizer *t, const char *text, size_t len, struct loom_ids *out);
/* The text of ids[0..n) (specials as their text), malloc'd and NUL-terminated; *len gets its length. */
char *loom_tokenizer_decode(const struct loom_tokenizer *t, const int32_t *ids, size_t n, size_t *len);

#ifdef __cplusplus
}
#endif
#endif
