/*
 * data/bytetok.h — the built-in tokenizer named `bytes`.
 *
 * Ids 0..255 are the bytes themselves; three specials follow: <|bos|> = 256, <|eos|> = 257,
 * <|pad|> = 258. Vocabulary size 259. Encoding never produces a special; decoding writes a special as
 * its text form ("<|eos|>").
 */
#ifndef LOOM_DATA_BYTETOK_H
#define LOOM_DATA_BYTETOK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_BYTES_VOCAB 259
#define LOOM_BYTES_BOS 256
#define LOOM_BYTES_EOS 257
#define LOOM_BYTES_PAD 258
/* Most bytes one id decodes to (the text of a special). */
#define LOOM_BYTES_DECODE_MAX 7

/* XXH64 (seed 0) of "loom-bytes-v1": the tokenizer_hash stamped in shards made with `bytes`. */
uint64_t loom_bytetok_hash(void);
/* out[0..n) = the bytes of text as ids. Returns n. */
size_t loom_bytetok_encode(const unsigned char *text, size_t n, int32_t *out);
/* Decode n ids into out, which has room for LOOM_BYTES_DECODE_MAX * n bytes. Returns the bytes written.
 * CHECKs every id is below LOOM_BYTES_VOCAB. */
size_t loom_bytetok_decode(const int32_t *ids, size_t n, unsigned char *out);

#ifdef __cplusplus
}
#endif
#endif
