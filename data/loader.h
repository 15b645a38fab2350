/*
 * data/loader.h — training samples from token shards (or uniform random ids, for benchmarks).
 *
 * Global sample g is a window of seq_len + 1 tokens of the concatenated shard stream, starting at
 * an offset drawn by the counter-based RNG from (seed, g): the sample sequence is a pure function
 * of g, so it does not depend on how many ranks read it. (The multi-source curriculum sampler
 * replaces this with per-source streams and epochs.)
 */
#ifndef LOOM_DATA_LOADER_H
#define LOOM_DATA_LOADER_H

#include <stdint.h>

#include "core/config.h"

#ifdef __cplusplus
extern "C" {
#endif

struct loom_shard;

struct loom_loader {
    int random;                    /* data.kind = random */
    struct loom_shard **shards;
    int nshards;
    int64_t *starts;               /* first stream position of each shard, plus the total at [nshards] */
    int64_t total;
    int64_t seq_len;
    int64_t vocab;
    uint64_t seed;
    int32_t *window;               /* seq_len + 1 */
};

/* Opens and validates every shard named by data.train (files or folders of *.tok). Exits 2 on a
 * missing file, an invalid shard, a vocabulary larger than the model's, or too few tokens. */
void loom_loader_open(struct loom_loader *l, const struct loom_config *cfg);
void loom_loader_close(struct loom_loader *l);
/* inputs[t] = token t, targets[t] = token t + 1 of global sample g, t < seq_len. */
void loom_loader_sample(struct loom_loader *l, int64_t g, int *inputs, int *targets);

#ifdef __cplusplus
}
#endif
#endif
