/*
 * parallel/grads.c — gradient reduction, dumps, and the model's collectives (see grads.h).
 */
#include "parallel/grads.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <time.h>

#include "core/error.h"
#include "optim/adamw.h"
#include "parallel/comm.h"

/* ---------------------------------------------------------------------------------------------- */
/* data parallelism                                                                                 */

enum { GRAD_BUCKET = 1 << 22 }; /* floats per all-reduce: 16 MB fp32 buckets, all in flight at once */

/* Sums the gradients over dp — a bucketed all-reduce, or with ZeRO-1 a reduce-scatter that leaves each
 * rank the sum of its own shard [lo, hi) — and returns the sum of squares of the summed gradients over
 * the whole model (for the global-norm clip). The loss was already weighted by 1 / (tokens of the
 * global batch), so the sum is the gradient of the global mean. Only parameters with counted[i] set
 * enter the sum of squares (each tensor counted once over tp and over the tied-embedding copies). */
double loom_grads_reduce(struct loom_model *m, const struct loom_ops *ops, const struct loom_topology *topo,
                           int zero, const int *counts, size_t lo, size_t hi, const unsigned char *counted) {
    size_t total = m->table.total;
    /* with expert parallelism the routed experts' tensors (the end of the buffer) are reduced over the
     * ranks that hold the same experts only */
    size_t split = topo->ep > 1 ? m->table.expert_offset : total;
    if (!zero) {
        struct { const struct loom_comm *c; size_t lo, hi; } part[2] = {{&topo->dp_comm, 0, split},
                                                                          {&topo->edp_comm, split, total}};
        size_t nb = 0, cap = (total + GRAD_BUCKET - 1) / GRAD_BUCKET + 2;
        struct loom_comm_handle *h = malloc_check(sizeof *h * cap);
        for (int p = 0; p < 2; p++) {
            if (part[p].c->size < 2) continue;
            for (size_t off = part[p].lo; off < part[p].hi; off += GRAD_BUCKET) {
                size_t n = part[p].hi - off < GRAD_BUCKET ? part[p].hi - off : GRAD_BUCKET;
                loom_allreduce_start(part[p].c, m->grads + off, n, &h[nb++]);
            }
        }
        for (size_t b = 0; b < nb; b++) loom_comm_wait(&h[b]);
        free(h);
    }
    if (zero) {
        float *shard = malloc_check(sizeof(float) * (hi - lo));
        struct loom_comm_handle h;
        loom_reduce_scatterv_start(&topo->dp_comm, m->grads, shard, counts, &h);
        loom_comm_wait(&h);
        memcpy(m->grads + lo, shard, sizeof(float) * (hi - lo));
        free(shard);
        double ss = loom_grad_sum_squares_range(ops, &m->table, m->grads, lo, hi, counted);
        loom_allreduce_double(&topo->dp_comm, &ss, 1);
        return ss;
    }
    double dense = loom_grad_sum_squares_range(ops, &m->table, m->grads, 0, split, counted);
    double experts = loom_grad_sum_squares_range(ops, &m->table, m->grads, split, total, counted);
    if (topo->ep > 1) loom_allreduce_double(&topo->ep_comm, &experts, 1);
    return dense + experts;
}

/* PREFIX.rankR.bin: int64 lo, hi, total, then the gradients [lo, hi) of this rank's flat buffer
 * (hi - lo < total under ZeRO-1, where only the rank's shard is reduced). PREFIX.rankR.map: one line
 * per tensor of the buffer, "name offset row0 col0 local_rows local_cols rows cols", where the tensor's
 * local part is rows row0.. and columns col0.. of the whole [rows, cols]. For parity tests. */
void loom_grads_dump(const struct loom_model *m, const char *prefix, int rank, size_t lo, size_t hi) {
    char path[4096];
    snprintf(path, sizeof path, "%s.rank%d.bin", prefix, rank);
    FILE *f = fopen_check(path, "wb");
    int64_t head[3] = {(int64_t)lo, (int64_t)hi, (int64_t)m->table.total};
    float *g = malloc_check(sizeof(float) * m->table.total);
    loom_model_get_grads(m, g);
    CHECK(fwrite(head, sizeof head, 1, f) == 1 && fwrite(g + lo, sizeof(float), hi - lo, f) == hi - lo,
          "writing %s", path);
    CHECK(fclose(f) == 0, "writing %s", path);
    free(g);
    snprintf(path, sizeof path, "%s.rank%d.map", prefix, rank);
    f = fopen_check(path, "w");
    for (int i = 0; i < m->table.count; i++) {
        const struct loom_param *p = &m->table.params[i];
        long long cols = p->shape.ndim > 1 ? p->shape.dims[1] : 1, lcols = p->local.ndim > 1 ? p->local.dims[1] : 1;
        fprintf(f, "%s %zu %lld %lld %lld %lld %lld %lld\n", p->name, p->offset, (long long)p->row0,
                (long long)p->col0, (long long)p->local.dims[0], lcols, (long long)p->shape.dims[0], cols);
    }
    CHECK(fclose(f) == 0, "writing %s", path);
}

/* ---------------------------------------------------------------------------------------------- */
/* the collectives the model calls (struct loom_model_comm): tp all-reduces, ep exchanges          */

static void tp_allreduce_sum(void *ctx, float *buf, size_t n) {
    struct loom_comm_handle h;
    loom_allreduce_start(ctx, buf, n, &h);
    loom_comm_wait(&h);
}

static void tp_allreduce_max(void *ctx, float *buf, size_t n) { loom_allreduce_max_float(ctx, buf, n); }

/* the expert-parallel exchanges the MoE layer calls */
static double ep_seconds, ep_hidden;

struct ep_request {
    struct loom_comm_handle h;
    double started;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *ep_alltoallv_start(void *ctx, const float *send, const int *scounts, const int *sdispls, float *recv,
                                const int *rcounts, const int *rdispls) {
    struct ep_request *r = malloc_check(sizeof *r);
    r->started = now_s();
    loom_alltoallv_start(ctx, send, scounts, sdispls, recv, rcounts, rdispls, &r->h);
    return r;
}

/* the wait is exposed time; from the start to the wait the exchange was in flight behind compute */
static void ep_alltoallv_wait(void *request) {
    struct ep_request *r = request;
    double t0 = now_s();
    loom_comm_wait(&r->h);
    double t1 = now_s();
    ep_seconds += t1 - t0;
    ep_hidden += t0 - r->started;
    free(r);
}

double loom_ep_exchange_seconds(double *hidden) {
    double s = ep_seconds;
    *hidden = ep_hidden;
    ep_seconds = ep_hidden = 0;
    return s;
}

static void ep_alltoall_int(void *ctx, const int *send, int *recv, int n) { loom_alltoall_int(ctx, send, recv, n); }

struct loom_model_comm loom_model_comm_over(struct loom_topology *t) {
    struct loom_model_comm c = {.sum = tp_allreduce_sum, .max = tp_allreduce_max, .ctx = &t->tp_comm,
                                .alltoallv_start = ep_alltoallv_start, .alltoallv_wait = ep_alltoallv_wait, .alltoall_int = ep_alltoall_int, .ep_ctx = &t->ep_comm};
    return c;
}
