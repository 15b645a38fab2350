/*
 * parallel/grads.h — what happens to the gradients between the backward and the optimizer step:
 * the data-parallel reduction (bucketed all-reduce, or ZeRO-1's reduce-scatter; routed experts over
 * their own group), the global norm, and the dumps parity tests compare; and the collectives the
 * model itself calls for tensor and expert parallelism.
 */
#ifndef LOOM_PARALLEL_GRADS_H
#define LOOM_PARALLEL_GRADS_H

#include <stddef.h>

#include "model/model.h"
#include "parallel/topology.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sums the gradients over dp and returns the sum of squares of the summed gradients of the stage
 * (counted[i]: parameter i enters it). zero: ZeRO-1, this rank keeps the sum of [lo, hi) only, with
 * counts[r] floats per dp rank. */
double loom_grads_reduce(struct loom_model *m, const struct loom_ops *ops, const struct loom_topology *topo,
                         int zero, const int *counts, size_t lo, size_t hi, const unsigned char *counted);
/* PREFIX.rankR.bin and .map after step 1, for parity tests. */
void loom_grads_dump(const struct loom_model *m, const char *prefix, int rank, size_t lo, size_t hi);
/* The tp and ep collectives of a model on this topology. */
struct loom_model_comm loom_model_comm_over(struct loom_topology *t);
/* Seconds spent waiting for MoE all-to-all exchanges to complete since the last call (exposed), and in
 * *hidden the seconds they were in flight while the rank computed (from each start to its wait). */
double loom_ep_exchange_seconds(double *hidden);

#ifdef __cplusplus
}
#endif
#endif
