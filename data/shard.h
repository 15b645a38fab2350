/*
 * data/shard.h — token shards (*.tok): a writer, and a reader that validates a shard completely when it
 * opens it and then reads any token range and, where the shard has one, its per-token loss mask.
 *
 * File layout, little-endian, every field fixed width:
 *
 *   header (64 bytes)
 *     char   magic[8]        "LOOMTOK1"
 *     u32    version         1
 *     u32    token_bytes     2 (u16 ids, vocab_size <= 65536) or 4 (u32 ids)
 *     u32    vocab_size
 *     u32    frame_tokens    tokens per frame; every frame but the last holds exactly this many
 *     u64    token_count
 *     u64    doc_count
 *     u64    frame_count
 *     u64    tokenizer_hash
 *     u32    flags           bit 0 (LOOM_SHARD_FLAG_LOSS_MASK): the shard carries a per-token loss mask;
 *                            every other bit 0
 *     u32    reserved        0
 *   frames       frame_count independent zstd frames of the raw token bytes, back to back
 *   mask frames  (mask only) frame_count zstd frames, back to back right after the token frames; mask
 *                frame f holds the mask bits of the tokens of frame f, one bit per token (1 = the token
 *                counts in the loss), LSB first: token i of the frame is bit i % 8 of byte i / 8;
 *                ceil(tokens / 8) bytes, the padding bits of the last byte 0
 *   frame index  frame_count x { u64 offset_in_file; u64 compressed_size }
 *   mask index   (mask only) frame_count x { u64 offset_in_file; u64 compressed_size }
 *   doc index    doc_count x u64 start_token (ascending, first = 0)
 *   footer (24 bytes)
 *     u64    index_offset    file offset of the frame index
 *     u64    checksum        XXH64 (seed 0) of every byte before this field
 *     char   end_magic[8]    "LOOMEND1"
 */
#ifndef LOOM_DATA_SHARD_H
#define LOOM_DATA_SHARD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_SHARD_VERSION 1
#define LOOM_SHARD_HEADER_BYTES 64
#define LOOM_SHARD_FOOTER_BYTES 24
#define LOOM_SHARD_FLAG_LOSS_MASK 1u
#define LOOM_SHARD_MAX_FRAME_TOKENS (1u << 26)

/* ---------------------------------------------------------------------------------------------- */
/* writer                                                                                          */

struct loom_shard_writer;

/* Start a shard at PATH (written to PATH.tmp until close). frame_tokens in 1..LOOM_SHARD_MAX_FRAME_TOKENS.
 * A path that cannot be created is an input error naming it. */
struct loom_shard_writer *loom_shard_writer_open(const char *path, uint32_t vocab_size,
                                                 uint64_t tokenizer_hash, uint32_t frame_tokens);
/* The same, for a shard that carries a per-token loss mask. The mask frames are held compressed in
 * memory until close (at most one bit per token). */
struct loom_shard_writer *loom_shard_writer_open_masked(const char *path, uint32_t vocab_size,
                                                        uint64_t tokenizer_hash, uint32_t frame_tokens);
/* Append n tokens; CHECKs 0 <= id < vocab_size. In a masked shard, every one of them counts in the loss. */
void loom_shard_writer_append(struct loom_shard_writer *w, const int32_t *tokens, size_t n);
/* Append n tokens with their loss mask, one byte per token: 1 = counts in the loss, 0 = context only.
 * CHECKs the shard was opened masked and every mask byte is 0 or 1. */
void loom_shard_writer_append_masked(struct loom_shard_writer *w, const int32_t *tokens, const uint8_t *mask,
                                     size_t n);
/* The next appended token starts a new document (empty documents are not recorded). The first token
 * of the shard always starts document 0. */
void loom_shard_writer_end_document(struct loom_shard_writer *w);
/* Tokens appended so far. */
uint64_t loom_shard_writer_tokens(const struct loom_shard_writer *w);
/* Flush the last frame, write the indexes and footer, fsync, rename PATH.tmp to PATH, free. */
void loom_shard_writer_close(struct loom_shard_writer *w);

/* ---------------------------------------------------------------------------------------------- */
/* reader                                                                                          */

struct loom_shard;

/* Open and validate PATH: header, layout, checksum, every frame's size and every token id, every mask
 * frame's size and padding, the document index. Any problem is an input error (exit 2) naming the file. */
struct loom_shard *loom_shard_open(const char *path);
int64_t loom_shard_tokens(const struct loom_shard *s);
int64_t loom_shard_docs(const struct loom_shard *s);
uint32_t loom_shard_vocab(const struct loom_shard *s);
uint64_t loom_shard_tokenizer_hash(const struct loom_shard *s);
const char *loom_shard_path(const struct loom_shard *s);
/* out[0..count) = tokens [start, start + count). CHECKs the range. Keeps the last decompressed frame,
 * so sequential reads decompress each frame once. Not safe to call on one shard from two threads. */
void loom_shard_read(struct loom_shard *s, int64_t start, int64_t count, int32_t *out);
/* Does the shard carry a per-token loss mask? */
int loom_shard_has_mask(const struct loom_shard *s);
/* out[0..count) = the loss mask of tokens [start, start + count), one byte each: 1 = counts in the loss.
 * All 1 for a shard without a mask. CHECKs the range; keeps the last decompressed mask frame, as
 * loom_shard_read keeps its tokens (the two caches are separate). */
void loom_shard_read_mask(struct loom_shard *s, int64_t start, int64_t count, uint8_t *out);
/* First token of document doc (0 <= doc < docs). */
int64_t loom_shard_doc_start(const struct loom_shard *s, int64_t doc);
void loom_shard_close(struct loom_shard *s);

#ifdef __cplusplus
}
#endif
#endif
