/*
 * data/sampler.h — the global sample stream over many sources (DESIGN.md section 7).
 *
 * A source's token stream is the concatenation of its shards in a seeded order, reshuffled each
 * epoch; a sample is a window of T + 1 tokens at the source's cursor, which then moves on by T.
 * Global sample g takes its source from the curriculum's mixture at g's token position, drawn with
 * Philox keyed by (seed, g). Every rank walks every sample of a global batch (choosing sources and
 * moving cursors costs no I/O) and reads tokens only for its own contiguous slice, so the sample
 * stream does not depend on how many data-parallel ranks share it. The state is g, the tokens
 * consumed, and one cursor and epoch per source: O(sources), whatever the run length, and cursors
 * count tokens, so a change of sequence length or batch size keeps the stream well defined.
 */
#ifndef LOOM_DATA_SAMPLER_H
#define LOOM_DATA_SAMPLER_H

#include <stdint.h>

#include "core/config.h"
#include "data/curriculum.h"

#ifdef __cplusplus
extern "C" {
#endif

struct loom_shard;

/* One source's shards as a token stream. */
struct loom_stream {
    const struct loom_source_config *source;
    struct loom_shard **shards;
    int nshards;
    int64_t total;                 /* tokens in all shards */
    int masked;                    /* loss_mask = assistant: targets the shard does not mark are ignored */
    int *order;                    /* shard order of epoch order_epoch (derived from the state, cached) */
    int64_t *order_start;          /* first stream position of each shard in that order, and the total */
    int64_t order_epoch;
};

/* What a checkpoint stores to continue the stream exactly. */
struct loom_sampler_state {
    int64_t sample;                /* the next global sample g */
    int64_t tokens;                /* tokens consumed before it */
    int64_t cursor[LOOM_MAX_SOURCES];
    int64_t epoch[LOOM_MAX_SOURCES];
};

struct loom_sampler {
    int random;                    /* data.kind = random: uniform ids, no sources */
    uint64_t seed;
    int64_t vocab;
    int nstreams;
    struct loom_stream streams[LOOM_MAX_SOURCES];
    struct loom_sampler_state state;
    int32_t *window;               /* sized on demand: T + 1 tokens */
    uint8_t *mask;
    int64_t window_cap;
};

/* Opens every source's shards (heldout: the `heldout` lists instead) and validates them all:
 * missing files, globs matching nothing, sources without shards, corrupt shards, vocabularies
 * larger than the model's or mixed tokenizers exit 2 naming the key or file. With heldout, sources
 * without held-out shards are left empty (nshards 0). */
void loom_sampler_open(struct loom_sampler *s, const struct loom_config *cfg, int heldout);
void loom_sampler_close(struct loom_sampler *s);

/* The next global batch of `batch` sequences of T tokens, sources drawn from c's mixture. Rows [r0, r1) of it are written to
 * inputs/targets (row i - r0, T each; a target is -1 where the loss ignores it) and their source
 * indices to src (may be NULL; -1 for random data). The state advances over the whole batch. */
void loom_sampler_next_batch(struct loom_sampler *s, const struct loom_curriculum *c, int64_t batch, int64_t T,
                             int64_t r0, int64_t r1, int *inputs, int *targets, int *src);

/* Held-out window k (tokens [k T, k T + T]) of source `source`, for evaluation. Returns 0 when the
 * source has no held-out tokens that far. */
int loom_sampler_heldout(struct loom_sampler *s, int source, int64_t k, int64_t T, int *inputs, int *targets);

/* Tokens per source in its shards (for weights by size and for the plan), into size[nstreams]. */
void loom_sampler_sizes(const struct loom_sampler *s, int64_t *size);
/* Tokens in one source's shards (opened, validated and closed again). */
int64_t loom_source_tokens(const struct loom_source_config *src);

#ifdef __cplusplus
}
#endif
#endif
