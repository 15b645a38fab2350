/*
 * model/moe.c — the mixture-of-experts MLP (see moe.h), forward and backward.
 *
 * Legend: N tokens (B sequences of T), C width, E routed experts, K experts per token, I expert
 * width, SI shared width; an assignment a = n K + j is token n's j-th expert. Routing runs on the
 * host (scores are copied out once per micro-batch); the heavy work — gathers, expert GEMMs,
 * weighted scatters — goes through the backend.
 */
#include "model/moe.h"

#include <math.h>
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
    /* parameters and their gradients */
    float *w_gate, *g_gate;                              /* router [E, C] */
    float **w_eg, **w_eu, **w_ed, **g_eg, **g_eu, **g_ed; /* expert e: [I, C], [I, C], [C, I] */
    float *w_sg, *w_su, *w_sd, *g_sg, *g_su, *g_sd;       /* shared: [SI, C], [SI, C], [C, SI] */
    /* device activations, assignments in expert order */
    float *logits;                                       /* [N, E] */
    float *xp, *gp, *up, *hp, *yp;                       /* [NK, C], [NK, I] x 3, [NK, C] */
    int *rows;                                           /* [NK] token of each assignment */
    float *wperm;                                        /* [NK] its routing weight */
    float *sg, *su, *sh;                                 /* shared [N, SI] */
    /* device backward work space */
    float *dyp, *dxp, *dhp, *dgp, *dup, *dsg, *dsu, *dsh, *dlogits, *dw;
    /* host routing of the micro-batch in flight */
    float *scores;                                       /* [N, E] */
    int *idx;                                            /* [N, K] */
    float *w;                                            /* [N, K] */
    float *qsum;                                         /* [N] sum of the chosen unbiased scores */
    int *perm, *offs;                                    /* [NK] assignments in expert order, [E + 1] */
    int *rows_h;
    float *wperm_h, *f;                                  /* [NK]; f [B, E] for the balance loss */
    float bal_scale;                                     /* of the forward, for the backward */
    /* expert parallelism (ep > 1): the rows this rank's experts receive, capacity NK x ep */
    float *recv, *back;                                  /* in arrival order (by source rank) [R, C] */
    float *xl, *gl, *ul, *hl, *yl;                       /* grouped by local expert */
    float *dyl, *dhl, *dgl, *dul, *dxl;
    int *lperm, *lperm_h;                                /* expert-order position -> arrival row */
    int *loffs;                                          /* [per + 1] */
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

    L->w_gate = weight(m, m->params, layer, "gate", 0);
    L->g_gate = weight(m, m->grads, layer, "gate", 0);
    CHECK(L->w_gate != NULL, "block %d has no router", layer);
    float **tabs[6];
    for (int t = 0; t < 6; t++) tabs[t] = calloc_check((size_t)E, sizeof(float *));
    L->w_eg = tabs[0], L->w_eu = tabs[1], L->w_ed = tabs[2], L->g_eg = tabs[3], L->g_eu = tabs[4], L->g_ed = tabs[5];
    for (int e = L->e0; e < L->e0 + L->per; e++) {
        L->w_eg[e] = weight(m, m->params, layer, "experts.%d.gate_proj", e);
        L->w_eu[e] = weight(m, m->params, layer, "experts.%d.up_proj", e);
        L->w_ed[e] = weight(m, m->params, layer, "experts.%d.down_proj", e);
        L->g_eg[e] = weight(m, m->grads, layer, "experts.%d.gate_proj", e);
        L->g_eu[e] = weight(m, m->grads, layer, "experts.%d.up_proj", e);
        L->g_ed[e] = weight(m, m->grads, layer, "experts.%d.down_proj", e);
        CHECK(L->w_eg[e] && L->w_eu[e] && L->w_ed[e], "block %d lacks expert %d", layer, e);
    }
    if (SI) {
        L->w_sg = weight(m, m->params, layer, "shared_experts.gate_proj", 0);
        L->w_su = weight(m, m->params, layer, "shared_experts.up_proj", 0);
        L->w_sd = weight(m, m->params, layer, "shared_experts.down_proj", 0);
        L->g_sg = weight(m, m->grads, layer, "shared_experts.gate_proj", 0);
        L->g_su = weight(m, m->grads, layer, "shared_experts.up_proj", 0);
        L->g_sd = weight(m, m->grads, layer, "shared_experts.down_proj", 0);
    }

    L->logits = dev(m, L, N * E);
    L->xp = dev(m, L, NK * C), L->gp = dev(m, L, NK * I), L->up = dev(m, L, NK * I);
    L->hp = dev(m, L, NK * I), L->yp = dev(m, L, NK * C);
    L->rows = m->ops->alloc(sizeof(int) * NK);
    L->wperm = dev(m, L, NK);
    L->sg = dev(m, L, N * SI), L->su = dev(m, L, N * SI), L->sh = dev(m, L, N * SI);
    L->dyp = dev(m, L, NK * C), L->dxp = dev(m, L, NK * C), L->dhp = dev(m, L, NK * I);
    L->dgp = dev(m, L, NK * I), L->dup = dev(m, L, NK * I);
    L->dsg = dev(m, L, N * SI), L->dsu = dev(m, L, N * SI), L->dsh = dev(m, L, N * SI);
    L->dlogits = dev(m, L, N * E), L->dw = dev(m, L, NK);

    L->scores = malloc_check(sizeof(float) * N * E);
    L->idx = malloc_check(sizeof(int) * NK);
    L->w = malloc_check(sizeof(float) * NK);
    L->qsum = malloc_check(sizeof(float) * N);
    L->perm = malloc_check(sizeof(int) * NK);
    L->offs = malloc_check(sizeof(int) * (E + 1));
    L->rows_h = malloc_check(sizeof(int) * NK);
    L->wperm_h = malloc_check(sizeof(float) * NK);
    L->f = malloc_check(sizeof(float) * (size_t)B * E);
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
        L->srows = malloc_check(sizeof(int) * L->ep), L->sdispl = malloc_check(sizeof(int) * L->ep);
        L->rrows = malloc_check(sizeof(int) * L->ep), L->rdispl = malloc_check(sizeof(int) * L->ep);
        L->cnt_send = malloc_check(sizeof(int) * E), L->cnt_recv = malloc_check(sizeof(int) * E);
    }
    return L;
}

void loom_moe_layer_free(const struct loom_model *m, struct loom_moe_layer *L) {
    float *bufs[] = {L->logits, L->xp, L->gp, L->up, L->hp, L->yp, L->wperm, L->sg, L->su, L->sh, L->dyp, L->dxp,
                     L->dhp, L->dgp, L->dup, L->dsg, L->dsu, L->dsh, L->dlogits, L->dw};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) m->ops->free(bufs[i]);
    m->ops->free(L->rows);
    if (L->ep > 1) {
        float *ep_bufs[] = {L->recv, L->back, L->xl, L->gl, L->ul, L->hl, L->yl, L->dyl, L->dhl, L->dgl, L->dul, L->dxl};
        for (size_t i = 0; i < sizeof ep_bufs / sizeof ep_bufs[0]; i++) m->ops->free(ep_bufs[i]);
        m->ops->free(L->lperm);
        free(L->lperm_h), free(L->loffs), free(L->srows), free(L->sdispl), free(L->rrows), free(L->rdispl);
        free(L->cnt_send), free(L->cnt_recv);
    }
    free(L->w_eg), free(L->w_eu), free(L->w_ed), free(L->g_eg), free(L->g_eu), free(L->g_ed);
    free(L->scores), free(L->idx), free(L->w), free(L->qsum), free(L->perm), free(L->offs);
    free(L->rows_h), free(L->wperm_h), free(L->f);
    free(L);
}

size_t loom_moe_layer_floats(const struct loom_moe_layer *L) { return L->floats; }

size_t loom_moe_activation_floats(const struct loom_model_config *cfg, int B, int T) {
    size_t N = (size_t)B * T, E = cfg->moe.experts, K = cfg->moe.top_k, C = cfg->hidden_size;
    size_t I = cfg->moe.intermediate, SI = cfg->moe.shared * I, NK = N * K;
    /* forward: logits, x/y and three I-wide blocks per assignment, weights, shared; backward alike */
    return 2 * (N * E + 2 * NK * C + 3 * NK * I + NK + 3 * N * SI);
}

/* ---------------------------------------------------------------------------------------------- */
/* routing (host)                                                                                   */

/* Token n's experts: the K largest of score + bias (ties to the lower index), within the topk_groups
 * groups of highest group score (sum of each group's two largest biased scores) when grouping is on. */
static void route_token(const struct loom_moe_config *mc, const float *s, const float *bias, int *idx) {
    int E = (int)mc->experts, K = (int)mc->top_k, G = (int)mc->groups, per = E / G;
    float sel[4096];
    CHECK(E <= 4096, "%d experts", E);
    for (int e = 0; e < E; e++) sel[e] = s[e] + bias[e];
    if (G > 1) {
        float gscore[4096];
        int keep[4096] = {0};
        for (int g = 0; g < G; g++) {
            float a = -INFINITY, b = -INFINITY;
            for (int e = g * per; e < (g + 1) * per; e++) {
                if (sel[e] > a) b = a, a = sel[e];
                else if (sel[e] > b) b = sel[e];
            }
            gscore[g] = a + (per > 1 ? b : 0);
        }
        for (int r = 0; r < mc->topk_groups; r++) {
            int best = -1;
            for (int g = 0; g < G; g++)
                if (!keep[g] && (best < 0 || gscore[g] > gscore[best])) best = g;
            keep[best] = 1;
        }
        for (int e = 0; e < E; e++)
            if (!keep[e / per]) sel[e] = -INFINITY;
    }
    for (int j = 0; j < K; j++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int q = 0; q < j; q++) taken |= idx[q] == e;
            if (!taken && (best < 0 || sel[e] > sel[best])) best = e;
        }
        idx[j] = best;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* the experts this rank holds, on rows grouped by expert (offs: per local expert, [per + 1])       */

static void experts_forward(const struct loom_model *m, struct loom_moe_layer *L, const float *xr, float *g,
                            float *u, float *h, float *y, const int *offs) {
    const struct loom_ops *ops = m->ops;
    int C = L->C, I = L->I;
    for (int le = 0; le < L->per; le++) {
        int e = L->e0 + le, o = offs[le], ne = offs[le + 1] - o;
        if (!ne) continue;
        ops->matmul_forward(g + (size_t)o * I, xr + (size_t)o * C, L->w_eg[e], ne, C, I);
        ops->matmul_forward(u + (size_t)o * I, xr + (size_t)o * C, L->w_eu[e], ne, C, I);
        ops->swiglu_forward(h + (size_t)o * I, g + (size_t)o * I, u + (size_t)o * I, ne, I);
        ops->matmul_forward(y + (size_t)o * C, h + (size_t)o * I, L->w_ed[e], ne, I, C);
    }
}

static void experts_backward(const struct loom_model *m, struct loom_moe_layer *L, const float *xr, const float *g,
                             const float *u, const float *h, const float *dyr, float *dh, float *dg, float *du,
                             float *dxr, const int *offs) {
    const struct loom_ops *ops = m->ops;
    int C = L->C, I = L->I;
    for (int le = 0; le < L->per; le++) {
        int e = L->e0 + le, o = offs[le], ne = offs[le + 1] - o;
        if (!ne) continue;
        const float *dy = dyr + (size_t)o * C, *xe = xr + (size_t)o * C;
        float *dhe = dh + (size_t)o * I, *dge = dg + (size_t)o * I, *due = du + (size_t)o * I;
        float *dxe = dxr + (size_t)o * C;
        ops->matmul_backward_weight(L->g_ed[e], dy, h + (size_t)o * I, ne, I, C);
        ops->matmul_backward_input(dhe, dy, L->w_ed[e], ne, I, C, 0);
        ops->swiglu_backward(dge, due, dhe, g + (size_t)o * I, u + (size_t)o * I, ne, I);
        ops->matmul_backward_weight(L->g_eg[e], dge, xe, ne, C, I);
        ops->matmul_backward_weight(L->g_eu[e], due, xe, ne, C, I);
        ops->matmul_backward_input(dxe, dge, L->w_eg[e], ne, C, I, 0);
        ops->matmul_backward_input(dxe, due, L->w_eu[e], ne, C, I, 1);
    }
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

static void balance_forward(const struct loom_model *m, struct loom_moe_layer *L, double *balance);

/* a tensor-parallel sum of activations or their gradients, left in the compute dtype */
static void tp_sum_rounded(const struct loom_model *m, float *buf, size_t n) {
    m->comm.sum(m->comm.ctx, buf, n);
    m->ops->round_compute(buf, n);
}
static void router_backward(const struct loom_model *m, struct loom_moe_layer *L, const float *x, float *dx);

void loom_moe_forward(const struct loom_model *m, struct loom_moe_layer *L, const float *x, float *out,
                      const float *bias, int64_t *load, double *balance, float bal_scale) {
    for (int phase = 0; phase < LOOM_MOE_PHASES; phase++)
        loom_moe_forward_phase(m, L, phase, x, out, bias, load, balance, bal_scale);
}

void loom_moe_forward_phase(const struct loom_model *m, struct loom_moe_layer *L, int phase, const float *x,
                            float *out, const float *bias, int64_t *load, double *balance, float bal_scale) {
    const struct loom_ops *ops = m->ops;
    const struct loom_moe_config *mc = &m->cfg.moe;
    int E = L->E, K = L->K, C = L->C, SI = L->SI, B = m->B, T = m->T, N = B * T;
    if (phase == 1) {
        /* the experts this rank holds; with ep > 1 their outputs start back */
        if (L->ep == 1) {
            experts_forward(m, L, L->xp, L->gp, L->up, L->hp, L->yp, L->offs);
            return;
        }
        exchange_wait(m, L);
        ops->gather_rows(L->xl, L->recv, L->lperm, NULL, L->nrecv, C);
        experts_forward(m, L, L->xl, L->gl, L->ul, L->hl, L->yl, L->loffs);
        unpermute(m, L, L->yl, L->back);
        exchange_start(m, L, L->back, L->yp, 0);
        return;
    }
    if (phase == 2) {
        exchange_wait(m, L);
        ops->scatter_add_rows(out, L->yp, L->rows, L->wperm, L->nk, C);
        /* ep x tp: this rank holds its slice's routed output and its part of the shared output */
        if (L->sliced) tp_sum_rounded(m, out, (size_t)N * C);
        balance_forward(m, L, balance);
        return;
    }
    L->bal_scale = bal_scale;
    /* every rank routes every token (the loads and the balance loss see them all); under ep x tp the tp
     * ranks of a replica share out the dispatch, each sending the tokens of its own slice */
    L->n0 = L->sliced ? (int)((int64_t)N * m->stage.tp_rank / L->tp) : 0;
    L->n1 = L->sliced ? (int)((int64_t)N * (m->stage.tp_rank + 1) / L->tp) : N;
    int nk = L->nk = (L->n1 - L->n0) * K, a0 = L->n0 * K;

    /* router, in fp32 (`exact`: no rounding to the compute dtype) */
    ops->exact->matmul_forward(L->logits, x, L->w_gate, N, C, E);
    ops->to_host(L->scores, L->logits, sizeof(float) * (size_t)N * E);
    for (int n = 0; n < N; n++) {
        float *s = L->scores + (size_t)n * E;
        if (mc->score == LOOM_MOE_SIGMOID) {
            for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-s[e]));
        } else {
            float mx = -INFINITY, sum = 0;
            for (int e = 0; e < E; e++) mx = s[e] > mx ? s[e] : mx;
            for (int e = 0; e < E; e++) sum += s[e] = expf(s[e] - mx);
            for (int e = 0; e < E; e++) s[e] /= sum;
        }
        int *idx = L->idx + (size_t)n * K;
        route_token(mc, s, bias, idx);
        float q = 0;
        for (int j = 0; j < K; j++) q += s[idx[j]];
        L->qsum[n] = q;
        for (int j = 0; j < K; j++) {
            float w = s[idx[j]];
            if (mc->norm_topk) w /= q + 1e-20f;
            L->w[(size_t)n * K + j] = w * (float)mc->scaling;
            load[idx[j]]++;
        }
    }

    /* the slice's assignments grouped by expert (a counting sort keeps token order inside each expert) */
    memset(L->offs, 0, sizeof(int) * (E + 1));
    for (int a = a0; a < a0 + nk; a++) L->offs[L->idx[a] + 1]++;
    for (int e = 0; e < E; e++) L->offs[e + 1] += L->offs[e];
    int *fill = malloc_check(sizeof(int) * E);
    memcpy(fill, L->offs, sizeof(int) * E);
    for (int a = a0; a < a0 + nk; a++) L->perm[fill[L->idx[a]]++] = a;
    free(fill);
    for (int p = 0; p < nk; p++) L->rows_h[p] = L->perm[p] / K, L->wperm_h[p] = L->w[L->perm[p]];
    ops->from_host(L->rows, L->rows_h, sizeof(int) * (size_t)(nk ? nk : 1));
    ops->from_host(L->wperm, L->wperm_h, sizeof(float) * (size_t)(nk ? nk : 1));

    /* routed experts run one GEMM per expert over its contiguous tokens (phase 1); under expert
     * parallelism the tokens first travel to the rank that holds their expert, while the shared experts
     * compute; the weighted routed outputs are added in phase 2 */
    ops->gather_rows(L->xp, x, L->rows, NULL, nk, C);
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

/* sequence-wise balance loss: per sequence, f_i = E / (K T) * tokens choosing i (no gradient),
 * P_i = mean over tokens of s_i / sum_j s_j; loss = bal_scale * sum_i f_i P_i */
static void balance_forward(const struct loom_model *m, struct loom_moe_layer *L, double *balance) {
    int E = L->E, K = L->K, B = m->B, T = m->T;
    float bal_scale = L->bal_scale;
    if (bal_scale > 0) {
        double total = 0;
        for (int b = 0; b < B; b++) {
            float *f = L->f + (size_t)b * E;
            for (int e = 0; e < E; e++) f[e] = 0;
            for (int t = 0; t < T; t++)
                for (int j = 0; j < K; j++) f[L->idx[((size_t)b * T + t) * K + j]] += (float)E / ((float)K * T);
            for (int t = 0; t < T; t++) {
                const float *s = L->scores + ((size_t)b * T + t) * E;
                double S = 0, fp = 0;
                for (int e = 0; e < E; e++) S += s[e];
                for (int e = 0; e < E; e++) fp += f[e] * s[e];
                total += fp / S / T;
            }
        }
        *balance += bal_scale * total;
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
    int C = L->C, SI = L->SI, B = m->B, T = m->T, N = B * T, nk = L->nk;
    if (phase == 1) {
        if (L->ep == 1) {
            experts_backward(m, L, L->xp, L->gp, L->up, L->hp, L->dyp, L->dhp, L->dgp, L->dup, L->dxp, L->offs);
            return;
        }
        exchange_wait(m, L);
        ops->gather_rows(L->dyl, L->recv, L->lperm, NULL, L->nrecv, C);
        experts_backward(m, L, L->xl, L->gl, L->ul, L->hl, L->dyl, L->dhl, L->dgl, L->dul, L->dxl, L->loffs);
        unpermute(m, L, L->dxl, L->back);
        exchange_start(m, L, L->back, L->dxp, 0);
        return;
    }
    if (phase == 2) {
        exchange_wait(m, L);
        ops->scatter_add_rows(dx, L->dxp, L->rows, NULL, nk, C);
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
    ops->row_dot(L->dw, L->yp, dout, L->rows, nk, C);
    ops->gather_rows(L->dyp, dout, L->rows, L->wperm, nk, C);
    if (L->ep > 1) exchange_start(m, L, L->dyp, L->recv, 1);
}

/* router: back through scaling, the top-k normalisation, the balance loss and the score function, for
 * the tokens [n0, n1) this rank dispatched (all of them unless ep x tp) */
static void router_backward(const struct loom_model *m, struct loom_moe_layer *L, const float *x, float *dx) {
    const struct loom_ops *ops = m->ops;
    const struct loom_moe_config *mc = &m->cfg.moe;
    int E = L->E, K = L->K, C = L->C, T = m->T, n0 = L->n0, n1 = L->n1, ns = n1 - n0, nk = L->nk;
    if (!ns) return;
    float *dwp = malloc_check(sizeof(float) * (size_t)nk), *ds = calloc_check((size_t)ns * E, sizeof(float));
    ops->to_host(dwp, L->dw, sizeof(float) * (size_t)nk);
    float *dwa = malloc_check(sizeof(float) * (size_t)nk); /* by assignment n K + j - n0 K */
    for (int p = 0; p < nk; p++) dwa[L->perm[p] - n0 * K] = dwp[p];
    float scale = (float)mc->scaling;
    for (int n = n0; n < n1; n++) {
        const float *s = L->scores + (size_t)n * E;
        const int *idx = L->idx + (size_t)n * K;
        const float *dw = dwa + (size_t)(n - n0) * K;
        float *dsn = ds + (size_t)(n - n0) * E;
        if (mc->norm_topk) {
            /* w_j = scale q_j / Q, Q = sum q + 1e-20 */
            float Q = L->qsum[n] + 1e-20f, cross = 0;
            for (int j = 0; j < K; j++) cross += dw[j] * s[idx[j]];
            for (int j = 0; j < K; j++) dsn[idx[j]] += scale * (dw[j] / Q - cross / (Q * Q));
        } else {
            for (int j = 0; j < K; j++) dsn[idx[j]] += scale * dw[j];
        }
    }
    if (L->bal_scale > 0) {
        /* d/ds_k of s_i / S with S = sum s: (g_k - sum_i g_i s_i / S) / S, g_i = bal_scale f_i / T */
        for (int n = n0; n < n1; n++) {
            const float *s = L->scores + (size_t)n * E, *f = L->f + (size_t)(n / T) * E;
            double S = 0, gs = 0;
            for (int e = 0; e < E; e++) S += s[e], gs += (double)f[e] * s[e];
            for (int e = 0; e < E; e++)
                ds[(size_t)(n - n0) * E + e] += (float)(L->bal_scale / T * (f[e] - gs / S) / S);
        }
    }
    for (int n = n0; n < n1; n++) {
        const float *s = L->scores + (size_t)n * E;
        float *d = ds + (size_t)(n - n0) * E;
        if (mc->score == LOOM_MOE_SIGMOID) {
            for (int e = 0; e < E; e++) d[e] *= s[e] * (1.0f - s[e]);
        } else {
            float dot = 0;
            for (int e = 0; e < E; e++) dot += s[e] * d[e];
            for (int e = 0; e < E; e++) d[e] = s[e] * (d[e] - dot);
        }
    }
    ops->from_host(L->dlogits, ds, sizeof(float) * (size_t)ns * E);
    ops->exact->matmul_backward_weight(L->g_gate, L->dlogits, x + (size_t)n0 * C, ns, C, E);
    ops->matmul_backward_input(dx + (size_t)n0 * C, L->dlogits, L->w_gate, ns, C, E, 1);
    free(dwp);
    free(dwa);
    free(ds);
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
