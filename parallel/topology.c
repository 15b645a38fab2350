/*
 * parallel/topology.c — the rank grid and its communicators (see topology.h).
 */
#include "parallel/topology.h"

#include <string.h>

#include "core/error.h"

struct loom_coords loom_topology_coords(int rank, int dp, int tp, int pp) {
    (void)pp;
    struct loom_coords c;
    c.tp_rank = rank % tp;
    c.dp_rank = rank / tp % dp;
    c.pp_rank = rank / (tp * dp);
    return c;
}

int loom_topology_rank(struct loom_coords c, int dp, int tp, int pp) {
    (void)pp;
    return c.tp_rank + tp * (c.dp_rank + dp * c.pp_rank);
}

/* an axis's communicator and the color and key it is split from the world with (MPI_UNDEFINED: not in one) */
struct axis_split {
    struct loom_comm *comm;
    int color, key;
    int p2p;                       /* carries point-to-point transfers (a pipeline's) */
};

enum { AXES = 6 };

/* The axes of t, whose coordinates are set. */
static void axis_splits(struct loom_topology *t, struct axis_split a[AXES]) {
    int dp = t->dp, tp = t->tp, pp = t->pp, ep = t->ep;
    int in_stage = t->tp_rank + tp * t->dp_rank; /* 0 .. dp*tp-1 within the stage */
    int end_stage = t->pp_rank == 0 || t->pp_rank == pp - 1;
    a[0] = (struct axis_split){&t->tp_comm, t->dp_rank + dp * t->pp_rank, t->tp_rank, 0};
    a[1] = (struct axis_split){&t->dp_comm, t->tp_rank + tp * t->pp_rank, t->dp_rank, 0};
    a[2] = (struct axis_split){&t->pp_comm, in_stage, t->pp_rank, pp > 1};
    a[3] = (struct axis_split){&t->ep_comm, t->pp_rank * (dp * tp / ep) + in_stage / ep, t->ep_rank, 0};
    a[4] = (struct axis_split){&t->edp_comm, t->pp_rank * ep + t->ep_rank, in_stage / ep, 0};
    a[5] = (struct axis_split){&t->embed_comm, end_stage ? in_stage : MPI_UNDEFINED, t->pp_rank, 0};
}

static void split(struct loom_comm *out, MPI_Comm world, int color, int key) {
    MPI_Comm c;
    MPI_CHECK(MPI_Comm_split(world, color, key, &c));
    if (c == MPI_COMM_NULL) {
        out->mpi = MPI_COMM_NULL;
        out->rank = out->size = 0;
        return;
    }
    loom_comm_from_mpi(out, c);
}

void loom_topology_init(struct loom_topology *t, MPI_Comm world, int dp, int tp, int pp, int ep) {
    memset(t, 0, sizeof *t);
    loom_comm_from_mpi(&t->world_comm, world);
    t->world = t->world_comm.size;
    t->rank = t->world_comm.rank;
    CHECK(dp * tp * pp == t->world, "layout %d x %d x %d does not fill %d ranks", dp, tp, pp, t->world);
    CHECK(ep >= 1 && (dp * tp) % ep == 0, "ep %d does not divide dp x tp = %d", ep, dp * tp);
    t->dp = dp, t->tp = tp, t->pp = pp, t->ep = ep;
    struct loom_coords c = loom_topology_coords(t->rank, dp, tp, pp);
    t->tp_rank = c.tp_rank, t->dp_rank = c.dp_rank, t->pp_rank = c.pp_rank;
    struct loom_coords prev = c, next = c;
    prev.pp_rank--, next.pp_rank++;
    t->pp_prev = c.pp_rank > 0 ? loom_topology_rank(prev, dp, tp, pp) : -1;
    t->pp_next = c.pp_rank + 1 < pp ? loom_topology_rank(next, dp, tp, pp) : -1;

    t->ep_rank = (c.tp_rank + tp * c.dp_rank) % ep;
    struct axis_split a[AXES];
    axis_splits(t, a);
    for (int i = 0; i < AXES; i++) split(a[i].comm, world, a[i].color, a[i].key);
}

void loom_topology_use_nccl(struct loom_topology *t, void *compute_stream) {
    loom_comm_nccl_world(&t->world_comm, compute_stream, 0);
    struct axis_split a[AXES];
    axis_splits(t, a);
    for (int i = 0; i < AXES; i++) loom_comm_nccl_split(a[i].comm, &t->world_comm, a[i].color, a[i].key, a[i].p2p);
}

void loom_topology_free(struct loom_topology *t) {
    loom_comm_free(&t->tp_comm);
    loom_comm_free(&t->dp_comm);
    loom_comm_free(&t->pp_comm);
    loom_comm_free(&t->ep_comm);
    loom_comm_free(&t->edp_comm);
    loom_comm_free(&t->embed_comm);
    t->world_comm.mpi = MPI_COMM_NULL; /* the caller's; its NCCL communicator (if any) is ours */
    loom_comm_free(&t->world_comm);
    memset(t, 0, sizeof *t);
}

void loom_topology_print(const struct loom_topology *t, FILE *f) {
    fprintf(f, "loom: layout dp %d x tp %d x pp %d = %d ranks (ep %d); ranks by stage, [tp group] per dp rank:\n",
            t->dp, t->tp, t->pp, t->world, t->ep);
    for (int s = 0; s < t->pp; s++) {
        fprintf(f, "  stage %d:", s);
        for (int d = 0; d < t->dp; d++) {
            fprintf(f, " [");
            for (int k = 0; k < t->tp; k++) {
                struct loom_coords c = {.tp_rank = k, .dp_rank = d, .pp_rank = s};
                fprintf(f, "%s%d", k ? " " : "", loom_topology_rank(c, t->dp, t->tp, t->pp));
            }
            fprintf(f, "]");
        }
        fprintf(f, "\n");
    }
}
