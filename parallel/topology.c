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

    split(&t->tp_comm, world, c.dp_rank + dp * c.pp_rank, c.tp_rank);
    split(&t->dp_comm, world, c.tp_rank + tp * c.pp_rank, c.dp_rank);
    split(&t->pp_comm, world, c.tp_rank + tp * c.dp_rank, c.pp_rank);
    int in_stage = c.tp_rank + tp * c.dp_rank; /* 0 .. dp*tp-1 within the stage */
    t->ep_rank = in_stage % ep;
    split(&t->ep_comm, world, c.pp_rank * (dp * tp / ep) + in_stage / ep, t->ep_rank);
    split(&t->edp_comm, world, c.pp_rank * ep + t->ep_rank, in_stage / ep);
    int end_stage = c.pp_rank == 0 || c.pp_rank == pp - 1;
    split(&t->embed_comm, world, end_stage ? c.tp_rank + tp * c.dp_rank : MPI_UNDEFINED, c.pp_rank);
}

void loom_topology_free(struct loom_topology *t) {
    loom_comm_free(&t->tp_comm);
    loom_comm_free(&t->dp_comm);
    loom_comm_free(&t->pp_comm);
    loom_comm_free(&t->ep_comm);
    loom_comm_free(&t->edp_comm);
    loom_comm_free(&t->embed_comm);
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
