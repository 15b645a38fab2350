/*
 * parallel/pipeline.h — the pipeline executor: runs a stage's schedule (parallel/schedule.h) for one
 * global batch slice, with point-to-point sends to the neighbouring stages.
 *
 * Receives block; sends are non-blocking and complete before their buffer is reused (a slot's input
 * and output are reused by the micro-batch `slots` later) or at the end of the step. A stage keeps
 * one activation slot per micro-batch in flight. With one stage it is plain gradient accumulation.
 */
#ifndef LOOM_PARALLEL_PIPELINE_H
#define LOOM_PARALLEL_PIPELINE_H

#include "model/model.h"
#include "parallel/schedule.h"
#include "parallel/topology.h"

#ifdef __cplusplus
extern "C" {
#endif

struct loom_pipeline_stats {
    double loss_sum;               /* last stage: sum of the token losses of its micro-batches */
    double compute;                /* seconds in forward and backward */
    double blocked;                /* seconds waiting in receives (pipeline bubble and exposed transfers) */
};

/* Called on the last stage after the forward of micro-batch `micro` with its token losses [B*T]. */
typedef void (*loom_pipeline_loss_fn)(void *ctx, int micro, const float *token_losses);

/* Stage layer ranges: parallel.stage_layers, or as even as possible (earlier stages take the extra). */
void loom_pipeline_stage(struct loom_stage *s, int num_layers, int pp, int pp_rank, const char *stage_layers);
/* Slots a stage needs for m micro-batches under the schedule. */
int loom_pipeline_slots(enum loom_pipeline_kind kind, int stage, int stages, int m);

/* Forward and backward of m micro-batches of B x T (inputs/targets [m, B*T] on every stage). */
/* overlap: each steady-phase pair (a forward, then a backward) runs as two model tasks taking turns,
 * the backward's gradient received before the forward starts; the numbers are those without it. */
void loom_pipeline_train(struct loom_model *model, const struct loom_topology *t, enum loom_pipeline_kind kind,
                         int m, const int *inputs, const int *targets, float dloss, float *token_losses,
                         loom_pipeline_loss_fn on_loss, void *ctx, int overlap, struct loom_pipeline_stats *st);
/* Forward only through all stages; returns the loss sum and *count of the micro-batch on every rank. */
double loom_pipeline_forward(struct loom_model *model, const struct loom_topology *t, const int *inputs,
                             const int *targets, long *count);

#ifdef __cplusplus
}
#endif
#endif
