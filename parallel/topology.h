/*
 * parallel/topology.h — the rank grid.
 *
 * world = dp x pp x tp, ranks ordered tp fastest, then dp, then pp (Megatron's tp-dp-pp), so the
 * ranks of a tensor-parallel group are neighbours (one node) and a pipeline stage is a contiguous
 * block of dp x tp ranks. The expert axis draws ep ranks from the dp x tp ranks of one stage.
 * Every axis has its own communicator; code that talks to other ranks takes this struct.
 */
#ifndef LOOM_PARALLEL_TOPOLOGY_H
#define LOOM_PARALLEL_TOPOLOGY_H

#include <stdio.h>

#include "parallel/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

struct loom_coords {
    int tp_rank, dp_rank, pp_rank;
};

/* Pure arithmetic (no MPI): the coordinates of a world rank, and back. */
struct loom_coords loom_topology_coords(int rank, int dp, int tp, int pp);
int loom_topology_rank(struct loom_coords c, int dp, int tp, int pp);

struct loom_topology {
    int world, rank;
    int dp, tp, pp, ep;
    int tp_rank, dp_rank, pp_rank, ep_rank;
    int pp_prev, pp_next;          /* world ranks of the neighbouring stages, -1 at the ends */
    struct loom_comm world_comm;
    struct loom_comm tp_comm;      /* same dp_rank and pp_rank */
    struct loom_comm dp_comm;      /* same tp_rank and pp_rank */
    struct loom_comm pp_comm;      /* same tp_rank and dp_rank: one pipeline */
    struct loom_comm ep_comm;      /* ep consecutive ranks of one stage's dp x tp block */
    struct loom_comm edp_comm;     /* the ranks of a stage that hold the same experts (same ep_rank) */
    struct loom_comm embed_comm;   /* first and last stage of a pipeline (tied embedding); self when pp = 1 */
};

/* Splits the world communicator into the axis communicators (collective over world). The sizes
 * must already be validated (dp * tp * pp == world, ep dividing dp * tp). */
void loom_topology_init(struct loom_topology *t, MPI_Comm world, int dp, int tp, int pp, int ep);
/* Gives the world and every axis an NCCL communicator, split with the colors and keys of the MPI ones (collective
 * over world; builds with the CUDA backend, one GPU per rank): from now on their float operations run on NCCL
 * over device memory (parallel/comm.h). compute_stream: the CUDA backend's stream (loom_cuda_stream()). */
void loom_topology_use_nccl(struct loom_topology *t, void *compute_stream);
void loom_topology_free(struct loom_topology *t);
/* The grid, one line per pipeline stage (rank 0 prints it at start). */
void loom_topology_print(const struct loom_topology *t, FILE *f);

#ifdef __cplusplus
}
#endif
#endif
