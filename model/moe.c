/*
 * model/moe.c — the mixture-of-experts MLP (see moe.h), forward and backward.
 *
 * Legend: N tokens (B sequences of T), C width, E routed experts, K experts per token, I expert
 * width, SI shared width; an assignment a = n K + j is token n's j-th expert; P rows of the buffers in
 * expert order (each expert's block padded to the backend's moe_tile rows).
 *
 * Everything runs in the backend (model/ops.h): router GEMM, routing, the dispatch plan (a stable
 * counting sort by expert), gathers, the experts as grouped GEMMs, the weighted combine, the balance
 * statistics and the router's backward. The host receives only the per-expert counts of each
 * micro-batch (the loads, the grouped GEMMs' row counts and the all-to-all-v sizes) and the balance loss.
 */
#include "model/moe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "model/model.h"

struct loom_moe_layer {
    int E, K, C, I, SI, B, T_max;
    int ep, ep_rank, per, e0;                            /* this rank runs experts [e0, e0 + per) */
    int tp, sliced;                                      /* ep x tp: each tp rank dispatches 1/tp of the tokens */
    int n0, n1, nk;                                      /* the micro-batch's tokens [n0, n1) this rank dispatches,
                                                          * nk = (n1 - n0) K assignments */
    int tile, P;                                         /* expert blocks start at multiples of tile rows; P rows
                                                          * in expert order this micro-batch (capacity NK + E (tile - 1)) */
    struct loom_moe_routing route;
    /* parameters and their gradients; expert e's tensors are those of expert e0 moved by (e - e0) stride */
    float *w_gate, *g_gate;                              /* router [E, C] */
    float *w_eg, *w_eu, *w_ed, *g_eg, *g_eu, *g_ed;      /* expert e0: [I, C], [I, C], [C, I] */
    size_t stride;                                       /* floats from one expert's tensor to the next's */
    float *w_sg, *w_su, *w_sd, *g_sg, *g_su, *g_sd;      /* shared: [SI, C], [SI, C], [C, SI] */
    /* device routing of the micro-batch in flight */
    float *bias;                                         /* [E] the router bias the host last uploaded */
    float *logits, *scores;                              /* [N, E] */
    int *idx;                                            /* [N, K] */
    float *w;                                            /* [N, K] routing weights */
    int *counts;                                         /* [2E]: assignments per expert, all tokens then the slice */
    int *offs_d;                                         /* [E + 1] moe_plan's block starts */
    int *pos;                                            /* [NK] position of each of the slice's assignments */
    float *f;                                            /* [B, E] balance statistics */
    /* device activations, assignments in expert order */
    float *xp, *gp, *up, *hp, *yp;                       /* [P, C], [P, I] x 3, [P, C] */
    int *rows;                                           /* [P] token of each row (-1: padding) */
    float *wperm;                                        /* [P] its routing weight */
    float *sg, *su, *sh;                                 /* shared [N, SI] */
    /* device backward work space */
    float *dyp, *dxp, *dhp, *dgp, *dup, *dsg, *dsu, *dsh, *dlogits, *dw;
    /* host copies */
    float *bias_h;                                       /* [E] what `bias` holds (bias_set: uploaded once) */
    int bias_set;
    int *counts_h;                                       /* [2E] */
    int *offs;                                           /* [E + 1] block starts, offs[E] = P */
    float bal_scale;                                     /* of the forward, for the backward */
    /* expert parallelism (ep > 1): the rows this rank's experts receive, capacity NK x ep */
    float *recv, *back;                                  /* in arrival order (by source rank) [R, C] */
    float *xl, *gl, *ul, *hl, *yl;                       /* grouped by local expert */
    float *dyl, *dhl, *dgl, *dul, *dxl;
    int *lperm, *lperm_h;                                /* expert-order position -> arrival row */
    int *loffs, *lcount;                                 /* [per + 1], [per] */
    int nrecv;
    int *srows, *sdispl, *rrows, *rdispl;                /* rows to and from each ep rank [ep] */
    int *cnt_send, *cnt_recv;                            /* assignments per (ep rank, local expert) */
    void *pending;                                       /* the exchange in flight between two phases */
    size_t floats;
};

/* ---------------------------------------------------------------------------------------------- */
/* set-up                                                                                           */

static float *weight(const struct loom_model *m, float *base, int layer, const char *fmt, int e) {
    char part[48], name[LOOM_PARAM_NAME_MAX];
    snprintf(part, sizeof part, fmt, e);
    snprintf(name, sizeof name, "layers.%d.mlp.%s.weight", layer, part);
    int i = loom_params_find(&m->table, name);
    return i < 0 ? NULL : base + m->table.params[i].offset;
}

static float *dev(const struct loom_model *m, struct loom_moe_layer *L, size_t n) {
    L->floats += n;
    return m->ops->alloc(sizeof(float) * (n ? n : 1));
}

struct loom_moe_layer *loom_moe_layer_create(const struct loom_model *m, int layer, int B, int T_max) {
    const struct loom_moe_config *mc = &m->cfg.moe;
    struct loom_moe_layer *L = calloc_check(1, sizeof *L);
    L->E = (int)mc->experts, L->K = (int)mc->top_k, L->C = (int)m->cfg.hidden_size;
    L->ep = m->stage.ep > 1 ? m->stage.ep : 1;
    L->ep_rank = m->stage.ep_rank;
    L->per = L->E / L->ep;
    L->e0 = L->ep_rank * L->per;
    /* under tensor parallelism the shared experts are split like a dense MLP; the router and the routed
     * experts run whole on every tp rank */
    int tp = m->stage.tp > 1 ? m->stage.tp : 1;
    L->tp = tp;
    L->sliced = tp > 1 && L->ep > 1;
    L->I = (int)mc->intermediate, L->SI = (int)(mc->shared * mc->intermediate) / tp, L->B = B, L->T_max = T_max;
    int E = L->E, K = L->K, C = L->C, I = L->I, SI = L->SI;
    size_t N = (size_t)B * T_max, NK = N * K;

    L->route = (struct loom_moe_routing){.experts = E, .top_k = K, .groups = (int)mc->groups,
                                         .topk_groups = (int)mc->topk_groups, .softmax = mc->score == LOOM_MOE_SOFTMAX,
                                         .norm_topk = mc->norm_topk, .scaling = (float)mc->scaling};
    /* the dispatch sends whole blocks to the experts' ranks, so expert parallelism keeps them unpadded */
    L->tile = L->ep == 1 && m->ops->moe_tile > 1 ? m->ops->moe_tile : 1;
    size_t P = NK + (size_t)E * (L->tile - 1);

    L->w_gate = weight(m, m->params, layer, "gate", 0);
    L->g_gate = weight(m, m->grads, layer, "gate", 0);
    CHECK(L->w_gate != NULL, "block %d has no router", layer);
    /* the grouped GEMMs take one tensor and a stride: the parameter table lays each block's experts out one
     * after another (gate, up, down of expert e, then of e + 1), which is checked here */
    static const char *const kinds[3] = {"experts.%d.gate_proj", "experts.%d.up_proj", "experts.%d.down_proj"};
    float **firsts[6] = {&L->w_eg, &L->w_eu, &L->w_ed, &L->g_eg, &L->g_eu, &L->g_ed};
    for (int t = 0; t < 6; t++) {
        float *base = t < 3 ? m->params : m->grads, *first = weight(m, base, layer, kinds[t % 3], L->e0);
        CHECK(first != NULL, "block %d lacks expert %d", layer, L->e0);
        if (t == 0 && L->per > 1) {
            float *second = weight(m, base, layer, kinds[0], L->e0 + 1);
            CHECK(second != NULL, "block %d lacks expert %d", layer, L->e0 + 1);
            L->stride = (size_t)(second - first);
        }
        for (int le = 0; le < L->per; le++)
            CHECK(weight(m, base, layer, kinds[t % 3], L->e0 + le) == first + le * L->stride,
                  "block %d: expert %d's tensors are not where the experts' stride puts them", layer, L->e0 + le);
        *firsts[t] = first;
    }
    if (SI) {
        L->w_sg = weight(m, m->params, layer, "shared_experts.gate_proj", 0);
        L->w_su = weight(m, m->params, layer, "shared_experts.up_proj", 0);
        L->w_sd = weight(m, m->params, layer, "shared_experts.down_proj", 0);
        L->g_sg = weight(m, m->grads, layer, "shared_experts.gate_proj", 0);
        L->g_su = weight(m, m->grads, layer, "shared_experts.up_proj", 0);
        L->g_sd = weight(m, m->grads, layer, "shared_experts.down_proj", 0);
    }

    L->bias = dev(m, L, E);
    L->logits = dev(m, L, N * E), L->scores = dev(m, L, N * E);
    L->idx = m->ops->alloc(sizeof(int) * NK);
    L->w = dev(m, L, NK);
    L->counts = m->ops->alloc(sizeof(int) * 2 * E);
    L->offs_d = m->ops->alloc(sizeof(int) * (E + 1));
    L->pos = m->ops->alloc(sizeof(int) * NK);
    L->f = dev(m, L, (size_t)B * E);
    L->xp = dev(m, L, P * C), L->gp = dev(m, L, P * I), L->up = dev(m, L, P * I);
    L->hp = dev(m, L, P * I), L->yp = dev(m, L, P * C);
    L->rows = m->ops->alloc(sizeof(int) * P);
    L->wperm = dev(m, L, P);
    L->sg = dev(m, L, N * SI), L->su = dev(m, L, N * SI), L->sh = dev(m, L, N * SI);
    L->dyp = dev(m, L, P * C), L->dxp = dev(m, L, P * C), L->dhp = dev(m, L, P * I);
    L->dgp = dev(m, L, P * I), L->dup = dev(m, L, P * I);
    L->dsg = dev(m, L, N * SI), L->dsu = dev(m, L, N * SI), L->dsh = dev(m, L, N * SI);
    L->dlogits = dev(m, L, N * E), L->dw = dev(m, L, P);

    L->bias_h = malloc_check(sizeof(float) * E);
    L->counts_h = malloc_check(sizeof(int) * 2 * E);
    L->offs = malloc_check(sizeof(int) * (E + 1));
    if (L->ep > 1) {
        size_t R = NK * L->ep;
        L->recv = dev(m, L, R * C), L->back = dev(m, L, R * C);
        L->xl = dev(m, L, R * C), L->gl = dev(m, L, R * I), L->ul = dev(m, L, R * I);
        L->hl = dev(m, L, R * I), L->yl = dev(m, L, R * C);
        L->dyl = dev(m, L, R * C), L->dhl = dev(m, L, R * I), L->dgl = dev(m, L, R * I);
        L->dul = dev(m, L, R * I), L->dxl = dev(m, L, R * C);
        L->lperm = m->ops->alloc(sizeof(int) * R);
        L->lperm_h = malloc_check(sizeof(int) * R);
        L->loffs = malloc_check(sizeof(int) * (L->per + 1));
        L->lcount = malloc_check(sizeof(int) * L->per);
        L->srows = malloc_check(sizeof(int) * L->ep), L->sdispl = malloc_check(sizeof(int) * L->ep);
        L->rrows = malloc_check(sizeof(int) * L->ep), L->rdispl = malloc_check(sizeof(int) * L->ep);
        L->cnt_send = malloc_check(sizeof(int) * E), L->cnt_recv = malloc_check(sizeof(int) * E);
    }
    return L;
}

void loom_moe_layer_free(const struct loom_model *m, struct loom_moe_layer *L) {
    void *bufs[] = {L->bias, L->logits, L->scores, L->idx, L->w, L->counts, L->offs_d, L->pos, L->f, L->xp, L->gp,
                    L->up, L->hp, L->yp, L->rows, L->wperm, L->sg, L->su, L->sh, L->dyp, L->dxp, L->dhp, L->dgp,
                    L->dup, L->dsg, L->dsu, L->dsh, L->dlogits, L->dw};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) m->ops->free(bufs[i]);
    if (L->ep > 1) {
        float *ep_bufs[] = {L->recv, L->back, L->xl, L->gl, L->ul, L->hl, L->yl, L->dyl, L->dhl, L->dgl, L->dul, L->dxl};
        for (size_t i = 0; i < sizeof ep_bufs / sizeof ep_bufs[0]; i++) m->ops->free(ep_bufs[i]);
        m->ops->free(L->lperm);
        free(L->lperm_h), free(L->loffs), free(L->lcount), free(L->srows), free(L->sdispl), free(L->rrows);
        free(L->rdispl), free(L->cnt_send), free(L->cnt_recv);
    }
    free(L->bias_h), free(L->counts_h), free(L->offs);
    free(L);
}

size_t loom_moe_layer_floats(const struct loom_moe_layer *L) { return L->floats; }

size_t loom_moe_activation_floats(const struct loom_model_config *cfg, int B, int T) {
    size_t N = (size_t)B * T, E = cfg->moe.experts, K = cfg->moe.top_k, C = cfg->hidden_size;
    size_t I = cfg->moe.intermediate, SI = cfg->moe.shared * I, NK = N * K;
    /* forward: logits and scores, weights, x/y and three I-wide blocks per assignment, the permuted weights,
     * shared; backward alike (without padding: the CPU backend's layout) */
    return 2 * (N * E + 2 * NK * C + 3 * NK * I + NK + 3 * N * SI) + N * E + NK + (size_t)B * E + E;
}

/* ---------------------------------------------------------------------------------------------- */
/* the experts this rank holds, as grouped GEMMs on rows grouped by expert: local expert le owns rows
 * [start[le], start[le] + count[le]) of the R rows (the rows between blocks are padding)           */

static void experts_forward(const struct loom_model *m, struct loom_moe_layer *L, const float *xr, float *g,
                            float *u, float *h, float *y, const int *start, const int *count, int R) {
    const struct loom_ops *ops = m->ops;
    int C = L->C, I = L->I, G = L->per;
    size_t st = L->stride;
    ops->grouped_matmul_forward(g, xr, L->w_eg, st, start, count, G, C, I);
    ops->grouped_matmul_forward(u, xr, L->w_eu, st, start, count, G, C, I);
    ops->swiglu_forward(h, g, u, R, I);
    ops->grouped_matmul_forward(y, h, L->w_ed, st, start, count, G, I, C);
}

static void experts_backward(const struct loom_model *m, struct loom_moe_layer *L, const float *xr, const float *g,
                             const float *u, const float *h, const float *dyr, float *dh, float *dg, float *du,
                             float *dxr, const int *start, const int *count, int R) {
    const struct loom_ops *ops = m->ops;
    int C = L->C, I = L->I, G = L->per;
    size_t st = L->stride;
    ops->grouped_matmul_backward_weight(L->g_ed, st, dyr, h, start, count, G, I, C);
    ops->grouped_matmul_backward_input(dh, dyr, L->w_ed, st, start, count, G, I, C, 0);
    ops->swiglu_backward(dg, du, dh, g, u, R, I);
    ops->grouped_matmul_backward_weight(L->g_eg, st, dg, xr, start, count, G, C, I);
    ops->grouped_matmul_backward_weight(L->g_eu, st, du, xr, start, count, G, C, I);
    ops->grouped_matmul_backward_input(dxr, dg, L->w_eg, st, start, count, G, C, I, 0);
    ops->grouped_matmul_backward_input(dxr, du, L->w_eu, st, start, count, G, C, I, 1);
}

/* ---------------------------------------------------------------------------------------------- */
/* expert parallelism: all-to-all-v dispatch and combine                                           */

/* After routing: how many assignments go to each ep rank (they are grouped by owner already, since a
 * rank's experts are contiguous), the per-expert counts exchanged first, and the order that groups the
 * rows this rank receives by local expert. */
static void dispatch_plan(const struct loom_model *m, struct loom_moe_layer *L) {
    int ep = L->ep, per = L->per;
    for (int r = 0; r < ep; r++) {
        L->srows[r] = L->offs[(r + 1) * per] - L->offs[r * per];
        L->sdispl[r] = L->offs[r * per];
        for (int le = 0; le < per; le++) L->cnt_send[r * per + le] = L->offs[r * per + le + 1] - L->offs[r * per + le];
    }
    m->comm.alltoall_int(m->comm.ep_ctx, L->cnt_send, L->cnt_recv, per);
    int total = 0;
    for (int r = 0; r < ep; r++) {
        int n = 0;
        for (int le = 0; le < per; le++) n += L->cnt_recv[r * per + le];
        L->rrows[r] = n;
        L->rdispl[r] = total;
        total += n;
    }
    L->nrecv = total;
    CHECK(total <= L->K * L->B * L->T_max * ep, "expert rank received %d rows", total);
    /* arrival order is (source rank, local expert); expert order is (local expert, source rank) */
    int q = 0;
    for (int le = 0; le < per; le++) {
        L->loffs[le] = q;
        for (int r = 0; r < ep; r++) {
            int start = L->rdispl[r];
            for (int k = 0; k < le; k++) start += L->cnt_recv[r * per + k];
            for (int i = 0; i < L->cnt_recv[r * per + le]; i++) L->lperm_h[q++] = start + i;
        }
    }
    L->loffs[per] = q;
    for (int le = 0; le < per; le++) L->lcount[le] = L->loffs[le + 1] - L->loffs[le];
    m->ops->from_host(L->lperm, L->lperm_h, sizeof(int) * (size_t)(total ? total : 1));
}

/* rows [*, C] to the experts' ranks (dispatch) or back to the tokens' ranks (combine) */
static void exchange_start(const struct loom_model *m, struct loom_moe_layer *L, const float *send, float *recv,
                           int dispatch) {
    int ep = L->ep, C = L->C;
    int sc[64], sd[64], rc[64], rd[64];
    CHECK(ep <= 64, "ep %d", ep);
    const int *srows = dispatch ? L->srows : L->rrows, *sdisp = dispatch ? L->sdispl : L->rdispl;
    const int *rrows = dispatch ? L->rrows : L->srows, *rdisp = dispatch ? L->rdispl : L->sdispl;
    for (int r = 0; r < ep; r++) sc[r] = srows[r] * C, sd[r] = sdisp[r] * C, rc[r] = rrows[r] * C, rd[r] = rdisp[r] * C;
    CHECK(L->pending == NULL, "an exchange is already in flight");
    L->pending = m->comm.alltoallv_start(m->comm.ep_ctx, send, sc, sd, recv, rc, rd);
}

static void exchange_wait(const struct loom_model *m, struct loom_moe_layer *L) {
    if (!L->pending) return;
    m->comm.alltoallv_wait(L->pending);
    L->pending = NULL;
}

/* rows grouped by local expert back to arrival order */
static void unpermute(const struct loom_model *m, struct loom_moe_layer *L, const float *grouped, float *arrival) {
    m->ops->zero(arrival, sizeof(float) * (size_t)(L->nrecv ? L->nrecv : 1) * L->C);
    m->ops->scatter_add_rows(arrival, grouped, L->lperm, NULL, L->nrecv, L->C);
}

/* ---------------------------------------------------------------------------------------------- */
/* forward                                                                                          */

/* a tensor-parallel sum of activations or their gradients, left in the compute dtype */
static void tp_sum_rounded(const struct loom_model *m, float *buf, size_t n) {
    m->comm.sum(m->comm.ctx, buf, n);
    m->ops->round_compute(buf, n);
}
static void router_backward(const struct loom_model *m, struct loom_moe_layer *L, const float *x, float *dx);

/* the router bias to the backend when the host's copy changed (it moves once per step) */
static void bias_upload(const struct loom_model *m, struct loom_moe_layer *L, const float *bias) {
    size_t bytes = sizeof(float) * (size_t)L->E;
    if (L->bias_set && memcmp(L->bias_h, bias, bytes) == 0) return;
    memcpy(L->bias_h, bias, bytes);
    m->ops->from_host(L->bias, bias, bytes);
    L->bias_set = 1;
}

/* Route every token, plan the dispatch of the slice [n0, n1) and gather its rows in expert order. The
 * counts come to the host: the loads, the block starts of the grouped GEMMs and the all-to-all-v sizes. */
static void route(const struct loom_model *m, struct loom_moe_layer *L, const float *x, const float *bias,
                  int64_t *load) {
    const struct loom_ops *ops = m->ops;
    int E = L->E, K = L->K, C = L->C, N = m->B * m->T;
    /* the router in fp32 (`exact`: no rounding to the compute dtype) */
    ops->exact->matmul_forward(L->logits, x, L->w_gate, N, C, E);
    bias_upload(m, L, bias);
    ops->exact->moe_route(L->scores, L->idx, L->w, L->counts, L->logits, L->bias, N, &L->route);
    ops->moe_plan(L->counts + E, L->offs_d, L->rows, L->wperm, L->pos, L->idx, L->w, L->n0 * K, L->nk, K, E, L->tile);
    ops->to_host(L->counts_h, L->counts, sizeof(int) * 2 * (size_t)E);
    const int *slice = L->counts_h + E;
    L->offs[0] = 0;
    for (int e = 0; e < E; e++) {
        load[e] += L->counts_h[e];
        L->offs[e + 1] = L->offs[e] + (slice[e] + L->tile - 1) / L->tile * L->tile;
    }
    L->P = L->offs[E];
    ops->moe_permute(L->xp, x, L->rows, NULL, L->P, C);
}

void loom_moe_forward(const struct loom_model *m, struct loom_moe_layer *L, const float *x, float *out,
                      const float *bias, int64_t *load, double *balance, float bal_scale) {
    for (int phase = 0; phase < LOOM_MOE_PHASES; phase++)
        loom_moe_forward_phase(m, L, phase, x, out, bias, load, balance, bal_scale);
}

void loom_moe_forward_phase(const struct loom_model *m, struct loom_moe_layer *L, int phase, const float *x,
                            float *out, const float *bias, int64_t *load, double *balance, float bal_scale) {
    const struct loom_ops *ops = m->ops;
    int E = L->E, K = L->K, C = L->C, SI = L->SI, B = m->B, T = m->T, N = B * T;
    if (phase == 1) {
        /* the experts this rank holds; with ep > 1 their outputs start back */
        if (L->ep == 1) {
            experts_forward(m, L, L->xp, L->gp, L->up, L->hp, L->yp, L->offs, L->counts_h + E, L->P);
            return;
        }
        exchange_wait(m, L);
        ops->gather_rows(L->xl, L->recv, L->lperm, NULL, L->nrecv, C);
        experts_forward(m, L, L->xl, L->gl, L->ul, L->hl, L->yl, L->loffs, L->lcount, L->nrecv);
        unpermute(m, L, L->yl, L->back);
        exchange_start(m, L, L->back, L->yp, 0);
        return;
    }
    if (phase == 2) {
        exchange_wait(m, L);
        ops->moe_unpermute(out, L->yp, L->pos, L->wperm, L->n0, L->n1, K, C);
        /* ep x tp: this rank holds its slice's routed output and its part of the shared output */
        if (L->sliced) tp_sum_rounded(m, out, (size_t)N * C);
        /* the sequence-wise balance loss, bal_scale sum_b sum_i f_i P_i (see moe.h) */
        if (L->bal_scale > 0) *balance += L->bal_scale * ops->exact->moe_balance(L->f, L->scores, L->idx, B, T, E, K);
        return;
    }
    L->bal_scale = bal_scale;
    /* every rank routes every token (the loads and the balance loss see them all); under ep x tp the tp
     * ranks of a replica share out the dispatch, each sending the tokens of its own slice */
    L->n0 = L->sliced ? (int)((int64_t)N * m->stage.tp_rank / L->tp) : 0;
    L->n1 = L->sliced ? (int)((int64_t)N * (m->stage.tp_rank + 1) / L->tp) : N;
    L->nk = (L->n1 - L->n0) * K;
    route(m, L, x, bias, load);

    /* routed experts run as grouped GEMMs over their contiguous tokens (phase 1); under expert parallelism
     * the tokens first travel to the rank that holds their expert, while the shared experts compute; the
     * weighted routed outputs are added in phase 2 */
    if (L->ep > 1) {
        dispatch_plan(m, L);
        exchange_start(m, L, L->xp, L->recv, 1);
    }
    if (SI) {
        ops->matmul_forward(L->sg, x, L->w_sg, N, C, SI);
        ops->matmul_forward(L->su, x, L->w_su, N, C, SI);
        ops->swiglu_forward(L->sh, L->sg, L->su, N, SI);
        ops->matmul_forward(out, L->sh, L->w_sd, N, SI, C);
        if (m->stage.tp > 1 && !L->sliced) tp_sum_rounded(m, out, (size_t)N * C);
    } else {
        ops->zero(out, sizeof(float) * (size_t)N * C);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* backward                                                                                         */

void loom_moe_backward(const struct loom_model *m, struct loom_moe_layer *L, const float *x, const float *dout,
                       float *dx) {
    for (int phase = 0; phase < LOOM_MOE_PHASES; phase++) loom_moe_backward_phase(m, L, phase, x, dout, dx);
}

void loom_moe_backward_phase(const struct loom_model *m, struct loom_moe_layer *L, int phase, const float *x,
                             const float *dout, float *dx) {
    const struct loom_ops *ops = m->ops;
    int K = L->K, C = L->C, SI = L->SI, B = m->B, T = m->T, N = B * T;
    if (phase == 1) {
        if (L->ep == 1) {
            experts_backward(m, L, L->xp, L->gp, L->up, L->hp, L->dyp, L->dhp, L->dgp, L->dup, L->dxp, L->offs,
                             L->counts_h + L->E, L->P);
            return;
        }
        exchange_wait(m, L);
        ops->gather_rows(L->dyl, L->recv, L->lperm, NULL, L->nrecv, C);
        experts_backward(m, L, L->xl, L->gl, L->ul, L->hl, L->dyl, L->dhl, L->dgl, L->dul, L->dxl, L->loffs,
                         L->lcount, L->nrecv);
        unpermute(m, L, L->dxl, L->back);
        exchange_start(m, L, L->back, L->dxp, 0);
        return;
    }
    if (phase == 2) {
        exchange_wait(m, L);
        ops->moe_unpermute(dx, L->dxp, L->pos, NULL, L->n0, L->n1, K, C);
        router_backward(m, L, x, dx);
        /* ep x tp: every part of dx (shared, routed, router) was this rank's share */
        if (L->sliced) tp_sum_rounded(m, dx, (size_t)N * C);
        return;
    }

    /* shared experts: a plain SwiGLU backward; it starts dx */
    if (SI) {
        ops->matmul_backward_weight(L->g_sd, dout, L->sh, N, SI, C);
        ops->matmul_backward_input(L->dsh, dout, L->w_sd, N, SI, C, 0);
        ops->swiglu_backward(L->dsg, L->dsu, L->dsh, L->sg, L->su, N, SI);
        ops->matmul_backward_weight(L->g_sg, L->dsg, x, N, C, SI);
        ops->matmul_backward_weight(L->g_su, L->dsu, x, N, C, SI);
        ops->matmul_backward_input(dx, L->dsg, L->w_sg, N, C, SI, 0);
        ops->matmul_backward_input(dx, L->dsu, L->w_su, N, C, SI, 1);
        if (m->stage.tp > 1 && !L->sliced) tp_sum_rounded(m, dx, (size_t)N * C);
    } else {
        ops->zero(dx, sizeof(float) * (size_t)N * C);
    }

    /* routed experts: d(weight) of each assignment = dout . y; the expert sees w * dout */
    ops->moe_unpermute_backward(L->dyp, L->dw, dout, L->yp, L->rows, L->wperm, L->P, C);
    if (L->ep > 1) exchange_start(m, L, L->dyp, L->recv, 1);
}

/* router: back through the weights, the balance loss and the score function (ops.h, moe_route_backward) for
 * the tokens [n0, n1) this rank dispatched (all of them unless ep x tp), then through the router GEMM */
static void router_backward(const struct loom_model *m, struct loom_moe_layer *L, const float *x, float *dx) {
    const struct loom_ops *ops = m->ops;
    int E = L->E, C = L->C, n0 = L->n0, ns = L->n1 - L->n0;
    if (!ns) return;
    ops->exact->moe_route_backward(L->dlogits, L->dw, L->pos, L->scores, L->idx, L->f, L->bal_scale, n0, L->n1, m->T,
                                   &L->route);
    ops->exact->matmul_backward_weight(L->g_gate, L->dlogits, x + (size_t)n0 * C, ns, C, E);
    ops->matmul_backward_input(dx + (size_t)n0 * C, L->dlogits, L->w_gate, ns, C, E, 1);
}

void loom_moe_bias_update(float *bias, const int64_t *load, int experts, double rate) {
    double mean = 0;
    for (int e = 0; e < experts; e++) mean += (double)load[e];
    mean /= experts;
    for (int e = 0; e < experts; e++) {
        double d = mean - (double)load[e];
        bias[e] += (float)(rate * (d > 0 ? 1 : d < 0 ? -1 : 0));
    }
}
