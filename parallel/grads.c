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

void loom_shards_init(struct loom_shards *s, const struct loom_topology *topo, const struct loom_param_table *t,
                      int zero) {
    memset(s, 0, sizeof *s);
    size_t split = topo->ep > 1 ? t->expert_offset : t->total;
    struct { const struct loom_comm *c; size_t begin, end; } parts[LOOM_SHARD_PARTS] = {
        {&topo->dp_comm, 0, split}, {&topo->edp_comm, split, t->total}};
    for (int k = 0; k < LOOM_SHARD_PARTS; k++) {
        struct loom_shard_part *p = &s->part[k];
        int n = parts[k].c->size;
        size_t len = parts[k].end - parts[k].begin;
        p->comm = parts[k].c, p->begin = parts[k].begin, p->end = parts[k].end;
        p->sharded = zero && n > 1;
        p->counts = malloc_check(sizeof(int) * n), p->displs = malloc_check(sizeof(int) * n);
        for (int r = 0; r < n; r++) {
            size_t a = p->sharded ? len * r / n : 0, b = p->sharded ? len * (r + 1) / n : len;
            CHECK(!p->sharded || b - a <= (size_t)INT32_MAX, "a ZeRO-1 share of %zu floats is too large for one "
                  "MPI message", b - a);
            p->displs[r] = (int)a, p->counts[r] = (int)(b - a);
        }
        int me = parts[k].c->rank;
        p->lo = p->begin + (size_t)p->displs[me], p->hi = p->lo + (size_t)p->counts[me];
    }
}

void loom_shards_free(struct loom_shards *s) {
    for (int k = 0; k < LOOM_SHARD_PARTS; k++) free(s->part[k].counts), free(s->part[k].displs);
}

void loom_shards_gather(const struct loom_shards *s, float *params) {
    struct loom_comm_handle h[LOOM_SHARD_PARTS];
    int n = 0;
    for (int k = 0; k < LOOM_SHARD_PARTS; k++)
        if (s->part[k].sharded)
            loom_allgatherv_inplace_start(s->part[k].comm, params + s->part[k].begin, s->part[k].counts,
                                          s->part[k].displs, &h[n++]);
    for (int i = 0; i < n; i++) loom_comm_wait(&h[i]);
}

/* Each part is summed over its group — a bucketed all-reduce, or under ZeRO-1 a reduce-scatter that
 * leaves each rank the sum of its own share — and the sum of squares taken over what the rank holds.
 * The loss was already weighted by 1 / (tokens of the global batch), so the sum is the gradient of the
 * global mean. Only parameters with counted[i] set enter the sum of squares (each tensor counted once
 * over tp and over the tied-embedding copies). */
double loom_grads_reduce(struct loom_model *m, const struct loom_ops *ops, const struct loom_topology *topo,
                         const struct loom_shards *s, const unsigned char *counted) {
    size_t nb = 0, cap = m->table.total / GRAD_BUCKET + 2 * LOOM_SHARD_PARTS;
    struct loom_comm_handle *h = malloc_check(sizeof *h * cap);
    float *share[LOOM_SHARD_PARTS] = {NULL};
    for (int k = 0; k < LOOM_SHARD_PARTS; k++) {
        const struct loom_shard_part *p = &s->part[k];
        if (p->comm->size < 2 || p->end == p->begin) continue;
        if (p->sharded) {
            share[k] = ops->alloc(sizeof(float) * (p->hi - p->lo + 1));
            loom_reduce_scatterv_start(p->comm, m->grads + p->begin, share[k], p->counts, &h[nb++]);
            continue;
        }
        for (size_t off = p->begin; off < p->end; off += GRAD_BUCKET) {
            size_t n = p->end - off < GRAD_BUCKET ? p->end - off : GRAD_BUCKET;
            loom_allreduce_start(p->comm, m->grads + off, n, &h[nb++]);
        }
    }
    for (size_t b = 0; b < nb; b++) loom_comm_wait(&h[b]);
    free(h);
    double ss[LOOM_SHARD_PARTS];
    for (int k = 0; k < LOOM_SHARD_PARTS; k++) {
        const struct loom_shard_part *p = &s->part[k];
        if (share[k]) {
            size_t n = p->hi - p->lo;
            CHECK(n <= INT32_MAX, "a ZeRO-1 share of %zu floats", n);
            if (n) ops->copy_2d(m->grads + p->lo, (int)n, share[k], (int)n, 1, (int)n, 0);
            ops->free(share[k]);
        }
        ss[k] = loom_grad_sum_squares_range(ops, &m->table, m->grads, p->lo, p->hi, counted);
        if (p->sharded) loom_allreduce_double(p->comm, &ss[k], 1);
    }
    if (topo->ep > 1) {
        /* an ep group holds every expert once; the caller sums over tp next, so tp rank 0 alone adds it */
        loom_allreduce_double(&topo->ep_comm, &ss[1], 1);
        if (topo->tp_rank != 0) ss[1] = 0;
    }
    return ss[0] + ss[1];
}

/* PREFIX.rankR.bin: int64 total and the number of spans S, S pairs of int64 lo, hi, then the gradients
 * [lo, hi) of each span of this rank's flat buffer in turn (one span [0, total) without ZeRO-1; under it the
 * rank's shares, the only sums it holds). PREFIX.rankR.map: one line per tensor of the buffer, "name
 * offset row0 col0 local_rows local_cols rows cols", where the tensor's local part is rows row0.. and
 * columns col0.. of the whole [rows, cols]. For parity tests. */
void loom_grads_dump(const struct loom_model *m, const char *prefix, int rank, const struct loom_shards *s) {
    char path[4096];
    snprintf(path, sizeof path, "%s.rank%d.bin", prefix, rank);
    FILE *f = fopen_check(path, "wb");
    int64_t spans[2 * LOOM_SHARD_PARTS], head[2] = {(int64_t)m->table.total, 0};
    for (int k = 0; k < LOOM_SHARD_PARTS; k++) {
        const struct loom_shard_part *p = &s->part[k];
        if (p->hi == p->lo) continue;
        /* adjacent whole parts make one span */
        if (head[1] && spans[2 * head[1] - 1] == (int64_t)p->lo) spans[2 * head[1] - 1] = (int64_t)p->hi;
        else spans[2 * head[1]] = (int64_t)p->lo, spans[2 * head[1] + 1] = (int64_t)p->hi, head[1]++;
    }
    float *g = malloc_check(sizeof(float) * m->table.total);
    loom_model_get_grads(m, g);
    int good = fwrite(head, sizeof head, 1, f) == 1 && fwrite(spans, sizeof(int64_t), 2 * head[1], f) == 2 * (size_t)head[1];
    for (int64_t k = 0; k < head[1]; k++) {
        size_t lo = (size_t)spans[2 * k], n = (size_t)(spans[2 * k + 1] - spans[2 * k]);
        good = good && fwrite(g + lo, sizeof(float), n, f) == n;
    }
    CHECK(good && fclose(f) == 0, "writing %s", path);
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
    loom_test_die_at("alltoall");
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
