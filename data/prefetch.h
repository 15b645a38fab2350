/*
 * data/prefetch.h — a background thread that reads the next global batch while the current one
 * trains.
 *
 * The thread owns the sampler and works one step ahead: the shape of step k + 1 (sequence length,
 * batch size, RoPE base, from the curriculum at the tokens consumed after step k) is known before
 * step k ends, so nothing about the stream depends on timing. This rank's rows of each global
 * batch are the contiguous slice [batch * rank / ranks, batch * (rank + 1) / ranks).
 */
#ifndef LOOM_DATA_PREFETCH_H
#define LOOM_DATA_PREFETCH_H

#include <stdint.h>

#include "data/curriculum.h"
#include "data/sampler.h"

#ifdef __cplusplus
extern "C" {
#endif

struct loom_batch {
    int64_t step;                  /* 0-based */
    int64_t tokens;                /* tokens consumed before this step */
    int64_t T, batch;              /* sequence length, global batch (sequences) */
    int64_t rows;                  /* this rank's rows */
    double rope_theta;
    int phase;
    double weights[LOOM_MAX_SOURCES];   /* the mixture at the step's first token */
    struct loom_sampler_state state;    /* the sampler state before this step */
    struct loom_sampler_state after;    /* and after it (what a checkpoint after this step stores) */
    int *inputs, *targets, *src;   /* rows x T, rows x T, rows */
};

struct loom_prefetch;

/* Batches of steps [first, steps), the sampler starting from its current state (a resumed run sets the
 * state from its checkpoint and starts at the checkpoint's step). */
struct loom_prefetch *loom_prefetch_start(struct loom_sampler *s, const struct loom_curriculum *c, int64_t first,
                                          int64_t steps, int rank, int ranks);
/* The next step's batch; blocks until it is read. Valid until the next call. */
const struct loom_batch *loom_prefetch_next(struct loom_prefetch *p);
void loom_prefetch_stop(struct loom_prefetch *p);

/* Tokens a run of `steps` steps consumes under the curriculum's batch and sequence-length schedule. */
int64_t loom_run_tokens(const struct loom_curriculum *c, int64_t steps);

#ifdef __cplusplus
}
#endif
#endif
