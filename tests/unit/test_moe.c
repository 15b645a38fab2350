/*
 * tests/unit/test_moe.c — the mixture-of-experts MLP (model/moe.h) on tiny models built from config text.
 *
 * Four kinds of check:
 *   layer      loom_moe_forward / loom_moe_backward called directly on inputs chosen here, against a
 *              double reference of the layer written below (router, top-k with bias and groups, weights,
 *              experts, shared experts, balance loss). Its gradients are central finite differences in
 *              double (h = 1e-6) with the routing and the balance counts f held at the base point — the
 *              derivative the layer defines (the choice of experts has none), accurate to ~1e-9.
 *   hand       the balance loss and the loads of a 1-sequence, 2-token, E = 4, K = 2 case whose router
 *              logits are set by hand; loom_moe_bias_update on hand-computed loads.
 *   model      the gradient of the whole fp32 model's loss, dloss * CE + balance, against central
 *              differences of that loss in fp32 (see FD_H and the tolerance below); elements where a
 *              perturbation changes the expert loads (a token switched experts: the loss jumps) are
 *              skipped and counted.
 *   routing    uneven routing forced by the router bias (every token to experts {0, 1}; with top_k = 1
 *              every token to one expert), and bit-identical gradients from two identical passes.
 *
 * Tolerances, as |got - want| <= atol + rtol * |want|:
 *   layer forward (fp32 vs double, sums of <= 16 products of O(1) terms)   atol 1e-5, rtol 1e-5
 *   layer gradients (fp32 vs double FD; chains of 3 GEMMs + routing terms) atol 1e-5, rtol 1e-4
 *   (the worst layer error measured is 3e-6)
 *   hand-computed balance loss (sigmoid of fp32 logits, ~1e-7 relative)    atol 0,    rtol 2e-6
 *   whole-model gradient vs fp32 FD: see MODEL_ATOL / MODEL_RTOL
 */
#include <stdint.h>
#include <string.h>

#include "core/config.h"
#include "core/error.h"
#include "model/model.h"
#include "model/moe.h"
#include "tests/test.h"

#define LAYER_FWD_ATOL 1e-5
#define LAYER_FWD_RTOL 1e-5
#define LAYER_BWD_ATOL 1e-5
#define LAYER_BWD_RTOL 1e-4
#define LAYER_FD_H 1e-6

/* Whole model: the loss is an fp32 computation whose rounding (~2e-7 on a loss of ~3.5, measured) is
 * noise to a difference quotient, err ~ 2e-7 / (2h); the truncation error h^2/6 * L''' is smaller here.
 * Measured worst |FD - analytic| over the checks below: 1.2e-4 at h = 1e-3, 6e-5 at 2e-3, 3e-5 at 5e-3,
 * 2e-5 at 1e-2. FD_H = 5e-3 (~2% of a weight of std 0.3); the tolerance leaves a margin of ~3 over
 * that and stays below the balance loss's share of the router gradient (checked: term_visible). */
#define FD_H 5e-3
#define MODEL_ATOL 1e-4
#define MODEL_RTOL 1e-3

static const struct loom_ops *ops;

/* ---------------------------------------------------------------------------------------------- */
/* helpers: names, random numbers, models from config text, parameters by name                    */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* The tiny MoE model: block 0 dense, block 1 MoE with 4 experts of width 6, top 2, one shared expert. */
static const char *const TINY_MOE =
    "[model]\nattention = mha\nvocab_size = 32\nhidden_size = 16\nnum_layers = 2\nnum_heads = 2\nhead_dim = 8\n"
    "intermediate_size = 24\ntie_word_embeddings = false\ninit_std = 0.3\n"
    "[moe]\nexperts = 4\ntop_k = 2\nshared = 1\nintermediate = 6\nfirst_dense = 1\nscaling = 2.5\n"
    "balance_alpha = 0.1\n";

enum { MOE_LAYER = 1 }; /* the MoE block of TINY_MOE (first_dense = 1) */

/* TINY_MOE with `extra` (config text, may be NULL) on top, B sequences of T, parameters from seed. */
static void model_make(struct loom_model *m, struct loom_config *cfg, const char *extra, int B, int T,
                       uint64_t seed) {
    loom_config_init(cfg);
    loom_config_load_string(cfg, TINY_MOE, "test_moe");
    if (extra) loom_config_load_string(cfg, extra, "test_moe.extra");
    cfg->data.kind = LOOM_DATA_RANDOM;
    loom_config_validate(cfg, 0);
    memset(m, 0, sizeof *m);
    loom_model_create(m, ops, &cfg->model, &cfg->optim, B, T);
    loom_model_init_params(m, seed);
}

static void model_free(struct loom_model *m, struct loom_config *cfg) {
    loom_model_destroy(m);
    loom_config_free(cfg);
}

/* Offset (floats) and size of layers.MOE_LAYER.mlp.PART.weight in the flat parameter buffer. */
static size_t moe_param(const struct loom_model *m, const char *part, size_t *numel) {
    char nm[LOOM_PARAM_NAME_MAX];
    snprintf(nm, sizeof nm, "layers.%d.mlp.%s.weight", MOE_LAYER, part);
    int i = loom_params_find(&m->table, nm);
    CHECK(i >= 0, "the model has no parameter %s", nm);
    if (numel) *numel = m->table.params[i].numel;
    return m->table.params[i].offset;
}

static float *host_params(const struct loom_model *m) {
    float *h = malloc_check(sizeof(float) * m->table.total);
    loom_model_get_params(m, h);
    return h;
}

static float *host_grads(const struct loom_model *m) {
    float *h = malloc_check(sizeof(float) * m->table.total);
    loom_model_get_grads(m, h);
    return h;
}

static double *to_double(const float *x, size_t n) {
    double *d = malloc_check(sizeof(double) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

static float *dev_copy(const void *host, size_t bytes) {
    float *d = ops->alloc(bytes);
    ops->from_host(d, host, bytes);
    return d;
}

/* ---------------------------------------------------------------------------------------------- */
/* the double reference of one MoE layer (DeepSeek-V3 report eqs. 12-20, dots.llm1 modelling code)  */

enum { MAXE = 16 };

struct ref_moe {
    int E, K, C, I, SI, B, T, score, norm_topk, G, TG;
    double scaling, bal_scale;
    double *wg;                              /* router [E, C] */
    double *eg[MAXE], *eu[MAXE], *ed[MAXE];  /* expert e: [I, C], [I, C], [C, I] */
    double *sg, *su, *sd;                    /* shared: [SI, C], [SI, C], [C, SI] (SI = 0: none) */
    double *x, *dout;                        /* [N, C] */
    const float *bias;                       /* [E] */
    /* the routing of the base point, held fixed under perturbation */
    int *idx;                                /* [N, K] */
    double *f;                               /* [B, E] balance counts E / (K T) * tokens choosing i */
    double min_gap;                          /* smallest margin of a choice over the runner-up */
    double *out;                             /* [N, C] work space */
};

/* s[E] = score function of token n's router logits */
static void ref_scores(const struct ref_moe *r, int n, double *s) {
    double mx = -INFINITY, sum = 0;
    for (int e = 0; e < r->E; e++) {
        double l = 0;
        for (int c = 0; c < r->C; c++) l += r->x[(size_t)n * r->C + c] * r->wg[(size_t)e * r->C + c];
        s[e] = l;
        mx = l > mx ? l : mx;
    }
    for (int e = 0; e < r->E; e++) {
        if (r->score == LOOM_MOE_SIGMOID) s[e] = 1 / (1 + exp(-s[e]));
        else sum += s[e] = exp(s[e] - mx);
    }
    if (r->score == LOOM_MOE_SOFTMAX)
        for (int e = 0; e < r->E; e++) s[e] /= sum;
}

/* Index of the largest of v[0..n) not yet taken (ties to the lower index); *gap gets its margin over
 * the best of the rest. */
static int pick(const double *v, int n, const int *taken, double *gap) {
    int best = -1;
    for (int i = 0; i < n; i++)
        if (!taken[i] && (best < 0 || v[i] > v[best])) best = i;
    double next = -INFINITY;
    for (int i = 0; i < n; i++)
        if (!taken[i] && i != best && v[i] > next) next = v[i];
    *gap = v[best] - next;
    return best;
}

/* Route every token of the base point: top-K of score + bias within the TG best groups (group score:
 * the sum of its two largest biased scores), and the balance counts f. */
static void ref_route(struct ref_moe *r) {
    int E = r->E, K = r->K, per = E / r->G;
    double s[MAXE], sel[MAXE], gscore[MAXE], gap;
    r->min_gap = INFINITY;
    memset(r->f, 0, sizeof(double) * r->B * E);
    for (int n = 0; n < r->B * r->T; n++) {
        ref_scores(r, n, s);
        for (int e = 0; e < E; e++) sel[e] = s[e] + r->bias[e];
        if (r->G > 1) {
            int gtaken[MAXE] = {0}, keep[MAXE] = {0};
            for (int g = 0; g < r->G; g++) {
                double a = -INFINITY, b = -INFINITY;
                for (int e = g * per; e < (g + 1) * per; e++) {
                    if (sel[e] > a) b = a, a = sel[e];
                    else if (sel[e] > b) b = sel[e];
                }
                gscore[g] = a + (per > 1 ? b : 0);
            }
            for (int k = 0; k < r->TG; k++) {
                int g = pick(gscore, r->G, gtaken, &gap);
                gtaken[g] = keep[g] = 1;
                if (k == r->TG - 1 && r->TG < r->G) r->min_gap = fmin(r->min_gap, gap);
            }
            for (int e = 0; e < E; e++)
                if (!keep[e / per]) sel[e] = -INFINITY;
        }
        int taken[MAXE] = {0};
        for (int j = 0; j < K; j++) {
            int e = pick(sel, E, taken, &gap);
            taken[e] = 1;
            r->idx[(size_t)n * K + j] = e;
            r->f[(size_t)(n / r->T) * E + e] += (double)E / ((double)K * r->T);
            if (j == K - 1 && gap < INFINITY) r->min_gap = fmin(r->min_gap, gap);
        }
    }
}

/* y[C] += w * SwiGLU expert (g, u, d) of width I applied to x[C] */
static void ref_swiglu(double *y, double w, const double *x, const double *g, const double *u, const double *d,
                       int C, int I) {
    for (int i = 0; i < I; i++) {
        double a = 0, b = 0;
        for (int c = 0; c < C; c++) a += g[(size_t)i * C + c] * x[c], b += u[(size_t)i * C + c] * x[c];
        double h = a / (1 + exp(-a)) * b;
        for (int c = 0; c < C; c++) y[c] += w * d[(size_t)c * I + i] * h;
    }
}

/* out[N, C] with the fixed routing; returns the balance loss */
static double ref_forward(const struct ref_moe *r, double *out) {
    int E = r->E, K = r->K, C = r->C, N = r->B * r->T;
    double s[MAXE], balance = 0;
    memset(out, 0, sizeof(double) * N * C);
    for (int n = 0; n < N; n++) {
        const double *x = r->x + (size_t)n * C;
        double *y = out + (size_t)n * C;
        ref_scores(r, n, s);
        const int *idx = r->idx + (size_t)n * K;
        double q = 0, S = 0, fp = 0;
        for (int j = 0; j < K; j++) q += s[idx[j]];
        for (int j = 0; j < K; j++) {
            int e = idx[j];
            double w = r->scaling * (r->norm_topk ? s[e] / q : s[e]);
            ref_swiglu(y, w, x, r->eg[e], r->eu[e], r->ed[e], C, r->I);
        }
        if (r->SI) ref_swiglu(y, 1.0, x, r->sg, r->su, r->sd, C, r->SI);
        for (int e = 0; e < E; e++) S += s[e], fp += r->f[(size_t)(n / r->T) * E + e] * s[e];
        balance += fp / S / r->T;
    }
    return r->bal_scale * balance;
}

/* L = sum(dout * out) + balance: the loss whose gradient loom_moe_backward computes */
static double ref_loss(void *p) {
    struct ref_moe *r = p;
    double bal = ref_forward(r, r->out), l = 0;
    for (size_t i = 0; i < (size_t)r->B * r->T * r->C; i++) l += r->dout[i] * r->out[i];
    return l + bal;
}

static double *fd_gradient(double *x, size_t n, struct ref_moe *r) {
    double *grad = malloc_check(sizeof(double) * n);
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + LAYER_FD_H;
        double lp = ref_loss(r);
        x[i] = x0 - LAYER_FD_H;
        double lm = ref_loss(r);
        x[i] = x0;
        grad[i] = (lp - lm) / (2 * LAYER_FD_H);
    }
    return grad;
}

/* ---------------------------------------------------------------------------------------------- */
/* layer: loom_moe_forward / loom_moe_backward against the reference                              */

/* The reference's weights: double copies of the model's; *owned collects them for freeing. */
static double *ref_weight(const struct loom_model *m, const float *host, const char *part, double **owned,
                          int *nowned) {
    size_t n, off = moe_param(m, part, &n);
    return owned[(*nowned)++] = to_double(host + off, n);
}

static void test_layer_case(const char *tag, const char *extra, const float *bias, float bal_scale) {
    enum { B = 2, T = 5, N = B * T };
    struct loom_config cfg;
    struct loom_model m;
    model_make(&m, &cfg, extra, B, T, 7);
    const struct loom_moe_config *mc = &m.cfg.moe;
    int E = (int)mc->experts, K = (int)mc->top_k, C = (int)m.cfg.hidden_size, I = (int)mc->intermediate;
    int SI = (int)(mc->shared * mc->intermediate);
    CHECK(E <= MAXE, "at most %d experts", MAXE);

    float *params = host_params(&m);
    double *owned[3 * MAXE + 8];
    int nowned = 0;
    struct ref_moe r = {.E = E, .K = K, .C = C, .I = I, .SI = SI, .B = B, .T = T, .score = mc->score,
                        .norm_topk = mc->norm_topk, .G = (int)mc->groups, .TG = (int)mc->topk_groups,
                        .scaling = mc->scaling, .bal_scale = bal_scale};
    r.wg = ref_weight(&m, params, "gate", owned, &nowned);
    for (int e = 0; e < E; e++) {
        r.eg[e] = ref_weight(&m, params, test_name("experts.%d.gate_proj", e), owned, &nowned);
        r.eu[e] = ref_weight(&m, params, test_name("experts.%d.up_proj", e), owned, &nowned);
        r.ed[e] = ref_weight(&m, params, test_name("experts.%d.down_proj", e), owned, &nowned);
    }
    if (SI) {
        r.sg = ref_weight(&m, params, "shared_experts.gate_proj", owned, &nowned);
        r.su = ref_weight(&m, params, "shared_experts.up_proj", owned, &nowned);
        r.sd = ref_weight(&m, params, "shared_experts.down_proj", owned, &nowned);
    }
    /* x plays the post-norm activation (RMS ~1), dout an upstream gradient */
    float *x = malloc_check(sizeof(float) * N * C), *dout = malloc_check(sizeof(float) * N * C);
    for (int i = 0; i < N * C; i++) x[i] = (float)test_rng_uniform(&rng_state, -1.7, 1.7);
    for (int i = 0; i < N * C; i++) dout[i] = (float)test_rng_uniform(&rng_state, -1, 1);
    r.x = to_double(x, N * C), r.dout = to_double(dout, N * C), r.bias = bias;
    r.idx = malloc_check(sizeof(int) * N * K), r.f = malloc_check(sizeof(double) * B * E);
    r.out = malloc_check(sizeof(double) * N * C);
    ref_route(&r);
    /* the fp32 router must make the same choices: no near-ties in the test data */
    CHECK(r.min_gap > 1e-4, "%s: a routing margin of %g is too close to call in fp32", tag, r.min_gap);

    /* forward: output, loads, balance loss */
    double *want = malloc_check(sizeof(double) * N * C);
    double want_bal = ref_forward(&r, want);
    int64_t load[MAXE] = {0}, want_load[MAXE] = {0};
    for (int a = 0; a < N * K; a++) want_load[r.idx[a]]++;
    load[0] = 5; /* loads accumulate */
    want_load[0] += 5;
    double balance = 0.25; /* and so does the balance loss */
    struct loom_moe_layer *L = loom_moe_layer_create(&m, MOE_LAYER, B, T);
    float *d_x = dev_copy(x, sizeof(float) * N * C), *d_out = ops->alloc(sizeof(float) * N * C);
    loom_moe_forward(&m, L, d_x, d_out, bias, load, &balance, bal_scale);
    float *got = malloc_check(sizeof(float) * N * C);
    ops->to_host(got, d_out, sizeof(float) * N * C);
    test_close(test_name("moe.layer%s.forward", tag), got, want, N * C, LAYER_FWD_ATOL, LAYER_FWD_RTOL);
    int load_ok = 1;
    for (int e = 0; e < E; e++) load_ok &= load[e] == want_load[e];
    test_result(load_ok, test_name("moe.layer%s.load", tag), "expert loads %lld %lld %lld %lld.. want %lld %lld %lld %lld..",
                (long long)load[0], (long long)load[1], (long long)load[2], (long long)load[3],
                (long long)want_load[0], (long long)want_load[1], (long long)want_load[2],
                (long long)want_load[3]);
    float got_bal = (float)(balance - 0.25);
    double want_bal_d = want_bal;
    test_close(test_name("moe.layer%s.balance", tag), &got_bal, &want_bal_d, 1, 1e-8, 1e-5);

    /* backward: dx (assigned over garbage) and every parameter gradient of the layer (+= onto zero) */
    loom_model_zero_grads(&m);
    float *d_dout = dev_copy(dout, sizeof(float) * N * C), *garbage = malloc_check(sizeof(float) * N * C);
    for (int i = 0; i < N * C; i++) garbage[i] = (float)test_rng_uniform(&rng_state, -100, 100);
    float *d_dx = dev_copy(garbage, sizeof(float) * N * C);
    loom_moe_backward(&m, L, d_x, d_dout, d_dx);
    ops->to_host(got, d_dx, sizeof(float) * N * C);
    double *g = fd_gradient(r.x, N * C, &r);
    test_close(test_name("moe.layer%s.backward.dx", tag), got, g, N * C, LAYER_BWD_ATOL, LAYER_BWD_RTOL);
    free(g);

    float *grads = host_grads(&m);
    struct {
        char part[48];
        double *ref;
    } checks[3 * MAXE + 4];
    int nc = 0;
    static const char *const kinds[] = {"gate_proj", "up_proj", "down_proj"};
    snprintf(checks[nc].part, 48, "gate"), checks[nc++].ref = r.wg;
    for (int e = 0; e < E; e++) {
        double *w[3] = {r.eg[e], r.eu[e], r.ed[e]};
        for (int k = 0; k < 3; k++) snprintf(checks[nc].part, 48, "experts.%d.%s", e, kinds[k]), checks[nc++].ref = w[k];
    }
    if (SI) {
        double *w[3] = {r.sg, r.su, r.sd};
        for (int k = 0; k < 3; k++) snprintf(checks[nc].part, 48, "shared_experts.%s", kinds[k]), checks[nc++].ref = w[k];
    }
    for (int c = 0; c < nc; c++) {
        size_t n, off = moe_param(&m, checks[c].part, &n);
        g = fd_gradient(checks[c].ref, n, &r);
        test_close(test_name("moe.layer%s.backward.%s", tag, checks[c].part), grads + off, g, n, LAYER_BWD_ATOL,
                   LAYER_BWD_RTOL);
        free(g);
    }

    loom_moe_layer_free(&m, L);
    ops->free(d_x), ops->free(d_out), ops->free(d_dout), ops->free(d_dx);
    for (int i = 0; i < nowned; i++) free(owned[i]);
    free(params), free(grads), free(x), free(dout), free(got), free(garbage), free(want);
    free(r.x), free(r.dout), free(r.idx), free(r.f), free(r.out);
    model_free(&m, &cfg);
}

static void test_layer(void) {
    static const float bias4[4] = {0.05f, -0.1f, 0.0f, 0.15f};
    static const float bias8[8] = {0.1f, 0.0f, -0.05f, 0.0f, 0.2f, -0.1f, 0.0f, 0.05f};
    /* sigmoid scores, normalised top-2 weights scaled by 2.5, one shared expert */
    test_layer_case("", NULL, bias4, 0.5f);
    /* softmax scores, raw top-3 weights, group-limited routing (4 groups of 2, keep 2), no shared expert */
    test_layer_case(".softmax_groups",
                    "[moe]\nscore = softmax\nnorm_topk = false\nexperts = 8\ngroups = 4\ntopk_groups = 2\n"
                    "top_k = 3\nshared = 0\nscaling = 1.5\n",
                    bias8, 0.5f);
    /* the balance loss off: no gradient from it */
    test_layer_case(".no_balance", NULL, bias4, 0.0f);
}

/* ---------------------------------------------------------------------------------------------- */
/* hand: balance loss and loads of one sequence of two tokens; bias updates                       */

/* Router logits chosen so the sigmoid scores are round: token 0 {0.9, 0.5, 0.25, 0.1} (S = 1.75), token 1
 * {0.1, 0.75, 0.9, 0.25} (S = 2). Top-2: token 0 {0, 1}, token 1 {2, 1}; counts {1, 2, 1, 0}, and with
 * E / (K T) = 1, f = {1, 2, 1, 0}. P_i = mean_t s_ti / S_t, so
 *   sum_i f_i P_i = ((0.9 + 2 * 0.5 + 0.25) / 1.75 + (0.1 + 2 * 0.75 + 0.9) / 2) / 2 = (43/35 + 5/4) / 2 = 347/280.
 * With bias {0, 0, 0, 0.45} token 0 takes {0, 3} (0.1 + 0.45 > 0.5) and token 1 still {2, 1}
 * (0.25 + 0.45 < 0.75): counts {1, 1, 1, 1}, f = 1 and sum_i P_i = 1 — the bias steers f, never P.
 * Then x = 0 for a tie. */
static void test_balance_hand(void) {
    enum { E = 4, C = 16 };
    struct loom_config cfg;
    struct loom_model m;
    model_make(&m, &cfg, NULL, 1, 2, 3);
    float *params = host_params(&m);
    float *wg = params + moe_param(&m, "gate", NULL);
    const double l9 = log(9.0), l3 = log(3.0);
    const double logit[2][E] = {{l9, 0, -l3, -l9}, {-l9, l3, l9, -l3}};
    for (int e = 0; e < E; e++) wg[e * C + 0] = (float)logit[0][e], wg[e * C + 1] = (float)logit[1][e];
    loom_model_set_params(&m, params);
    float x[2 * C] = {0};
    x[0] = 1, x[C + 1] = 1; /* token t is the unit vector e_t: its logits are column t of the router */
    float *d_x = dev_copy(x, sizeof x), *d_out = ops->alloc(sizeof x);
    struct loom_moe_layer *L = loom_moe_layer_create(&m, MOE_LAYER, 1, 2);

    static const float no_bias[E] = {0}, bias[E] = {0, 0, 0, 0.45f};
    static const int64_t want_load[2][E] = {{1, 2, 1, 0}, {1, 1, 1, 1}};
    const double want[2] = {0.1 * 347.0 / 280.0, 0.1 * 1.0};
    for (int k = 0; k < 2; k++) {
        const char *tag = k ? ".bias" : "";
        int64_t load[E] = {0};
        double balance = 0;
        loom_moe_forward(&m, L, d_x, d_out, k ? bias : no_bias, load, &balance, 0.1f);
        float got = (float)balance;
        test_close(test_name("moe.hand%s.balance", tag), &got, &want[k], 1, 0, 2e-6);
        test_result(memcmp(load, want_load[k], sizeof load) == 0, test_name("moe.hand%s.load", tag),
                    "loads %lld %lld %lld %lld, want %lld %lld %lld %lld", (long long)load[0], (long long)load[1],
                    (long long)load[2], (long long)load[3], (long long)want_load[k][0], (long long)want_load[k][1],
                    (long long)want_load[k][2], (long long)want_load[k][3]);
    }
    int64_t load[E] = {0};
    double balance = 0;
    loom_moe_forward(&m, L, d_x, d_out, no_bias, load, &balance, 0.0f);
    test_result(balance == 0, "moe.hand.balance_off", "bal_scale 0 added %.9g", balance);

    /* x = 0: every score is 0.5, a four-way tie that goes to the lower indices {0, 1} */
    memset(x, 0, sizeof x);
    ops->from_host(d_x, x, sizeof x);
    memset(load, 0, sizeof load);
    loom_moe_forward(&m, L, d_x, d_out, no_bias, load, &balance, 0.0f);
    static const int64_t want_tie[E] = {2, 2, 0, 0};
    test_result(memcmp(load, want_tie, sizeof load) == 0, "moe.hand.ties_to_lower_index",
                "loads %lld %lld %lld %lld, want 2 2 0 0", (long long)load[0], (long long)load[1], (long long)load[2],
                (long long)load[3]);

    loom_moe_layer_free(&m, L);
    ops->free(d_x), ops->free(d_out);
    free(params);
    model_free(&m, &cfg);
}

/* b_i += rate * sign(mean(load) - load_i) */
static void test_bias_update(void) {
    static const int64_t load[4] = {3, 1, 0, 4};                 /* mean 2: signs -, +, +, - */
    float bias[4] = {0.25f, -1.0f, 0.0f, 3.0f};
    static const double want[4] = {-0.25, -0.5, 0.5, 2.5};
    loom_moe_bias_update(bias, load, 4, 0.5);
    test_close("moe.bias_update", bias, want, 4, 0, 0);

    static const int64_t even[4] = {1, 2, 3, 2};                 /* mean 2: experts at the mean stay */
    float b2[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    static const double want2[4] = {0.625, 0.5, 0.375, 0.5};
    loom_moe_bias_update(b2, even, 4, 0.125);
    test_close("moe.bias_update.at_mean", b2, want2, 4, 0, 0);

    /* through the model: rate moe.bias_update_rate, then the loads restart */
    struct loom_config cfg;
    struct loom_model m;
    model_make(&m, &cfg, "[moe]\nbias_update_rate = 0.5\n", 1, 2, 3);
    memcpy(m.expert_load, load, sizeof load);
    memcpy(m.router_bias, (float[4]){0.25f, -1.0f, 0.0f, 3.0f}, 4 * sizeof(float));
    loom_model_update_router_bias(&m);
    test_close("moe.bias_update.model", m.router_bias, want, 4, 0, 0);
    int zero = 1;
    for (int e = 0; e < 4; e++) zero &= m.expert_load[e] == 0;
    test_result(zero, "moe.bias_update.model.loads_restart", "loads after the update %lld %lld %lld %lld",
                (long long)m.expert_load[0], (long long)m.expert_load[1], (long long)m.expert_load[2],
                (long long)m.expert_load[3]);
    model_free(&m, &cfg);
}

/* ---------------------------------------------------------------------------------------------- */
/* model: gradients of the whole model's loss against finite differences                          */

struct batch {
    int ids[64], targets[64];
    float dloss; /* 1 / counted tokens */
};

static void batch_make(struct batch *b, int N, int V) {
    CHECK(N <= 64, "batch of %d tokens", N);
    for (int i = 0; i < N; i++) b->ids[i] = (int)test_rng_uniform(&rng_state, 0, V);
    for (int i = 0; i < N; i++) b->targets[i] = (int)test_rng_uniform(&rng_state, 0, V);
    b->targets[3] = -1; /* one token out of the loss (it is still routed) */
    b->dloss = 1.0f / (float)(N - 1);
}

/* dloss * CE + balance, from fresh loads, which are copied to load[E] */
static double model_loss(struct loom_model *m, const struct batch *b, int64_t *load) {
    int E = (int)m->cfg.moe.experts;
    m->balance = 0;
    memset(m->expert_load, 0, sizeof(int64_t) * E * m->moe_layers);
    double ce = loom_model_forward(m, b->ids, b->targets, 0.0f, NULL, NULL);
    memcpy(load, m->expert_load, sizeof(int64_t) * E);
    return ce * b->dloss + m->balance;
}

/* grads = d(dloss * CE + balance)/d(params), from zero */
static float *model_grads(struct loom_model *m, const struct batch *b, double *loss) {
    loom_model_zero_grads(m);
    m->balance = 0;
    memset(m->expert_load, 0, sizeof(int64_t) * m->cfg.moe.experts * m->moe_layers);
    double ce = loom_model_forward(m, b->ids, b->targets, b->dloss, NULL, NULL);
    loom_model_backward(m);
    if (loss) *loss = ce * b->dloss + m->balance;
    return host_grads(m);
}

/* Central differences of model_loss over the MoE parameter PART, compared with grads; elements whose
 * perturbation changes the expert loads are skipped. Returns the number skipped (-1: too many). */
static int check_model_fd(const char *label, struct loom_model *m, const struct batch *b, const char *part,
                          const float *grads, const float *grads_without) {
    char test[128];
    snprintf(test, sizeof test, "%s", label); /* test_name() may have made label, and is called below */
    int E = (int)m->cfg.moe.experts;
    size_t n, off = moe_param(m, part, &n);
    int64_t base[MAXE], lp[MAXE], lm[MAXE];
    model_loss(m, b, base);
    float *got = malloc_check(sizeof(float) * n), *without = malloc_check(sizeof(float) * n);
    double *want = malloc_check(sizeof(double) * n);
    size_t kept = 0;
    int skipped = 0;
    for (size_t i = 0; i < n; i++) {
        float w0, wp, wm;
        ops->to_host(&w0, m->params + off + i, sizeof(float));
        wp = (float)(w0 + FD_H), wm = (float)(w0 - FD_H);
        ops->from_host(m->params + off + i, &wp, sizeof(float));
        double fp = model_loss(m, b, lp);
        ops->from_host(m->params + off + i, &wm, sizeof(float));
        double fm = model_loss(m, b, lm);
        ops->from_host(m->params + off + i, &w0, sizeof(float));
        if (memcmp(lp, base, sizeof(int64_t) * E) || memcmp(lm, base, sizeof(int64_t) * E)) {
            skipped++;
            continue;
        }
        want[kept] = (fp - fm) / ((double)wp - (double)wm);
        if (grads_without) without[kept] = grads_without[off + i];
        got[kept++] = grads[off + i];
    }
    printf("# %s: %zu elements, %d skipped (a token switched experts)\n", test, n, skipped);
    test_result(skipped * 10 <= (int)n, test_name("%s.skipped", test), "%d of %zu elements skipped", skipped, n);
    test_close(test, got, want, kept, MODEL_ATOL, MODEL_RTOL);
    if (grads_without) {
        /* the check must see the term: the gradient without it has to fail the same tolerance */
        size_t worst = 0;
        double excess = -INFINITY;
        for (size_t i = 0; i < kept; i++) {
            double e = fabs(without[i] - want[i]) - (MODEL_ATOL + MODEL_RTOL * fabs(want[i]));
            if (e > excess) excess = e, worst = i;
        }
        test_result(excess > 0, test_name("%s.term_visible", test),
                    "the gradient without the term is within tolerance everywhere (closest: element %zu, %.3g vs %.3g)",
                    worst, kept ? (double)without[worst] : 0.0, kept ? want[worst] : 0.0);
    }
    free(got), free(without), free(want);
    return skipped;
}

/* The busiest expert that does not take every token. */
static int busy_expert(struct loom_model *m, const struct batch *b) {
    int64_t load[MAXE];
    model_loss(m, b, load);
    int E = (int)m->cfg.moe.experts, N = m->B * m->T, best = -1;
    for (int e = 0; e < E; e++)
        if (load[e] < N && (best < 0 || load[e] > load[best])) best = e;
    return best;
}

static void test_model_gradients(void) {
    enum { B = 2, T = 5 };
    struct loom_config cfg;
    struct loom_model m;
    model_make(&m, &cfg, NULL, B, T, 11);
    static const float bias[4] = {0.05f, -0.1f, 0.0f, 0.15f};
    memcpy(m.router_bias, bias, sizeof bias);
    struct batch b;
    batch_make(&b, B * T, 32);

    /* bal_scale 0.5 makes the balance term of the router gradient large enough to see (term_visible) */
    m.bal_scale = 0.0f;
    float *without = model_grads(&m, &b, NULL);
    m.bal_scale = 0.5f;
    float *grads = model_grads(&m, &b, NULL);
    int e = busy_expert(&m, &b);
    char part[64];
    check_model_fd("moe.model.gate", &m, &b, "gate", grads, without);
    static const char *const kinds[] = {"gate_proj", "up_proj", "down_proj"};
    for (int k = 0; k < 3; k++) {
        snprintf(part, sizeof part, "experts.%d.%s", e, kinds[k]);
        check_model_fd(test_name("moe.model.expert.%s", kinds[k]), &m, &b, part, grads, NULL);
        snprintf(part, sizeof part, "shared_experts.%s", kinds[k]);
        check_model_fd(test_name("moe.model.shared.%s", kinds[k]), &m, &b, part, grads, NULL);
    }
    free(without), free(grads);
    model_free(&m, &cfg);
}

/* ---------------------------------------------------------------------------------------------- */
/* routing: uneven loads forced by the bias; determinism                                           */

/* Every token goes to the experts in `chosen` (bias +10 on them, sigmoid scores < 1): loads, zero
 * gradients of the idle experts, nonzero ones of the busy experts, and — no choice can flip — finite
 * differences of the router and of a busy expert with nothing skipped. */
static void test_forced_case(const char *tag, const char *extra, const int *chosen, int nchosen) {
    enum { B = 2, T = 5, N = B * T };
    struct loom_config cfg;
    struct loom_model m;
    model_make(&m, &cfg, extra, B, T, 13);
    int E = (int)m.cfg.moe.experts, busy[MAXE] = {0};
    for (int j = 0; j < nchosen; j++) busy[chosen[j]] = 1, m.router_bias[chosen[j]] = 10.0f;
    m.bal_scale = 0.5f;
    struct batch b;
    batch_make(&b, N, 32);

    double loss;
    float *grads = model_grads(&m, &b, &loss);
    test_result(isfinite(loss), test_name("moe.forced%s.runs", tag), "loss %g", loss);
    int load_ok = 1;
    for (int e = 0; e < E; e++) load_ok &= m.expert_load[e] == (busy[e] ? N : 0);
    test_result(load_ok, test_name("moe.forced%s.load", tag), "loads %lld %lld %lld %lld, want %d on the chosen, 0 else",
                (long long)m.expert_load[0], (long long)m.expert_load[1], (long long)m.expert_load[2],
                (long long)m.expert_load[3], N);
    static const char *const kinds[] = {"gate_proj", "up_proj", "down_proj"};
    int idle_zero = 1, busy_nonzero = 1;
    for (int e = 0; e < E; e++)
        for (int k = 0; k < 3; k++) {
            size_t n, off = moe_param(&m, test_name("experts.%d.%s", e, kinds[k]), &n);
            double s = 0;
            for (size_t i = 0; i < n; i++) s += fabs(grads[off + i]);
            if (busy[e]) busy_nonzero &= s > 0;
            else idle_zero &= s == 0;
        }
    test_result(idle_zero, test_name("moe.forced%s.idle_experts_zero_grad", tag), "an idle expert has a gradient");
    test_result(busy_nonzero, test_name("moe.forced%s.busy_experts_grad", tag), "a busy expert has no gradient");

    int skipped = check_model_fd(test_name("moe.forced%s.model.gate", tag), &m, &b, "gate", grads, NULL);
    char part[64];
    snprintf(part, sizeof part, "experts.%d.gate_proj", chosen[0]);
    skipped += check_model_fd(test_name("moe.forced%s.model.expert.gate_proj", tag), &m, &b, part, grads, NULL);
    test_result(skipped == 0, test_name("moe.forced%s.nothing_skipped", tag), "%d elements skipped", skipped);
    free(grads);
    model_free(&m, &cfg);
}

static void test_forced(void) {
    static const int two[] = {0, 1}, one[] = {2};
    test_forced_case(".top2", NULL, two, 2);
    test_forced_case(".top1", "[moe]\ntop_k = 1\n", one, 1);
}

/* Two passes over the same batch, on `threads` CPU threads: the same gradients and loss to the bit. */
static void test_determinism(int threads) {
    ops = loom_ops_cpu(threads);
    struct loom_config cfg;
    struct loom_model m;
    model_make(&m, &cfg, NULL, 2, 5, 17);
    memcpy(m.router_bias, (float[4]){0.05f, -0.1f, 0.0f, 0.15f}, 4 * sizeof(float));
    m.bal_scale = 0.5f;
    struct batch b;
    batch_make(&b, 10, 32);
    double l1, l2;
    float *g1 = model_grads(&m, &b, &l1), *g2 = model_grads(&m, &b, &l2);
    size_t bad = m.table.total;
    for (size_t i = 0; i < m.table.total && bad == m.table.total; i++)
        if (memcmp(&g1[i], &g2[i], sizeof(float))) bad = i;
    test_result(bad == m.table.total, test_name("moe.determinism.threads%d.grads", threads), "element %zu: %.9g then %.9g",
                bad, bad < m.table.total ? (double)g1[bad] : 0.0, bad < m.table.total ? (double)g2[bad] : 0.0);
    test_result(memcmp(&l1, &l2, sizeof l1) == 0, test_name("moe.determinism.threads%d.loss", threads),
                "%.17g then %.17g", l1, l2);
    free(g1), free(g2);
    model_free(&m, &cfg);
    ops = loom_ops_cpu(1);
}

/* ---------------------------------------------------------------------------------------------- */

int main(void) {
    ops = loom_ops_cpu(1);
    test_layer();
    test_balance_hand();
    test_bias_update();
    test_model_gradients();
    test_forced();
    test_determinism(1);
    test_determinism(2);
    return test_exit();
}
