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

/* Where each rank's optimizer works: the flat buffer in two parts, the dense tensors [0, split) reduced
 * over dp, and with expert parallelism the routed experts [split, total) (parameter table order puts
 * them last) reduced over the ranks of the stage that hold the same experts (edp). Without ZeRO-1 a
 * rank updates each part whole; with it, rank r of a part's group owns [lo, hi), the r-th of the even
 * shares of the part, so the optimizer state is divided over dp and edp. */
struct loom_shard_part {
    const struct loom_comm *comm;  /* dp_comm or edp_comm */
    size_t begin, end;             /* the part of the flat buffer */
    size_t lo, hi;                 /* this rank's share of it (the whole part unless sharded) */
    int sharded;                   /* ZeRO-1 with more than one rank in the group */
    int *counts, *displs;          /* per member of comm: its share, relative to begin */
};
enum { LOOM_SHARD_PARTS = 2 };
struct loom_shards {
    struct loom_shard_part part[LOOM_SHARD_PARTS];
};
void loom_shards_init(struct loom_shards *s, const struct loom_topology *topo, const struct loom_param_table *t,
                      int zero);
void loom_shards_free(struct loom_shards *s);
/* After the optimizer step: every rank's shares of the parameters to every rank of the part's group. */
void loom_shards_gather(const struct loom_shards *s, float *params);

/* Sums the gradients over dp (the experts over edp) and returns the sum of squares of the summed
 * gradients of the stage (counted[i]: parameter i enters it). Under ZeRO-1 a rank keeps only the sums
 * of its shares (a reduce-scatter). */
double loom_grads_reduce(struct loom_model *m, const struct loom_ops *ops, const struct loom_topology *topo,
                         const struct loom_shards *s, const unsigned char *counted);
/* PREFIX.rankR.bin and .map after step 1, for parity tests: the gradients of the rank's shares. */
void loom_grads_dump(const struct loom_model *m, const char *prefix, int rank, const struct loom_shards *s);
/* The tp and ep collectives of a model on this topology. */
struct loom_model_comm loom_model_comm_over(struct loom_topology *t);
/* Seconds spent waiting for MoE all-to-all exchanges to complete since the last call (exposed), and in
 * *hidden the seconds they were in flight while the rank computed (from each start to its wait). */
double loom_ep_exchange_seconds(double *hidden);

#ifdef __cplusplus
}
#endif
#endif
