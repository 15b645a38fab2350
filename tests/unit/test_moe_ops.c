/*
 * tests/unit/test_moe_ops.c — the CPU backend's MoE ops (model/ops.h: moe_*, grouped_matmul_*) against
 * straightforward implementations written here. The CPU backend's memory is host memory, so the ops run on
 * plain host arrays.
 *
 *   route       moe_route against a reimplementation that sorts each token's experts by biased score (index
 *               on ties) after sorting the groups by group score: scores, choices, weights and counts bit for
 *               bit (the same fp32 formulas). Sigmoid and softmax, with and without normalisation, groups,
 *               ties (every score equal: the lowest indices win), and uneven routing forced by the bias (one
 *               expert taking every token, the others none).
 *   route bwd   moe_route_backward against central differences in double (h = 1e-6, accurate to ~1e-9) of
 *               sum_j dw_j w_j + the balance loss as functions of the logits, the choice held fixed:
 *               |got - want| <= 1e-6 + 1e-4 |want| (fp32 chains of a few terms).
 *   balance     moe_balance against a double loop: f and the loss within 1e-6 relative.
 *   plan        moe_plan against a brute-force order (for each expert, the assignments that chose it, in
 *               order), tiles 1, 8 and 128, a slice of the tokens, uneven routing: exact; every block start a
 *               multiple of the tile, padding rows -1 with weight 0.
 *   permute     moe_permute, moe_unpermute and moe_unpermute_backward against gather_rows, scatter_add_rows
 *               and row_dot over the same rows: bit for bit (ops.h fixes the combine's order), padding rows
 *               zero.
 *   grouped     grouped_matmul_* against matmul_* on each group's rows (groups with no rows, gaps between
 *               groups, experts' weights apart by a stride), in fp32 and in the bf16 emulation: bit for bit;
 *               rows and weight elements outside the groups keep their NaN poison.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/error.h"
#include "model/ops.h"
#include "tests/test.h"

#define FD_H 1e-6
#define BWD_ATOL 1e-6
#define BWD_RTOL 1e-4
#define BAL_RTOL 1e-6
#define MAXE 64
#define MAXK 8

static const struct loom_ops *ops;
static uint64_t rng_state = 0x2545f4914f6cdd1dull;

/* ---------------------------------------------------------------------------------------------- */
/* helpers                                                                                          */

#define MAX_LIVE 256
static void *live[MAX_LIVE];
static int n_live;

static void *alloc(size_t bytes) {
    CHECK(n_live < MAX_LIVE, "too many live buffers");
    return live[n_live++] = calloc_check(1, bytes ? bytes : 1);
}

static void release_all(void) {
    for (int i = 0; i < n_live; i++) free(live[i]);
    n_live = 0;
}

static float *rand_floats(size_t n, double lo, double hi) {
    float *x = alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)test_rng_uniform(&rng_state, lo, hi);
    return x;
}

static float *poisoned(size_t n) {
    float *x = alloc(n * sizeof(float));
    memset(x, 0xFF, n * sizeof(float));
    return x;
}

static float *copy_of(const float *x, size_t n) {
    float *y = alloc(n * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    return y;
}

/* got against want bit for bit (NaN poison included); names the first mismatch */
static int same_floats(const char *name, const float *got, const float *want, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (f32_bits(got[i]) != f32_bits(want[i])) {
            test_result(0, name, "element %zu: got %.9g (bits %08x), want %.9g (bits %08x) bit for bit (n %zu)", i,
                        (double)got[i], f32_bits(got[i]), (double)want[i], f32_bits(want[i]), n);
            return 0;
        }
    test_result(1, name, "");
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* route: a reimplementation by sorting                                                             */

/* order[0..n) sorted by key descending, index ascending on ties (insertion sort: stable) */
static void sort_desc(int *order, const float *key, int n) {
    for (int i = 0; i < n; i++) {
        int v = order[i], q = i;
        for (; q > 0 && key[order[q - 1]] < key[v]; q--) order[q] = order[q - 1];
        order[q] = v;
    }
}

static void ref_route(float *scores, int *idx, float *w, int *counts, const float *logits, const float *bias, int N,
                      const struct loom_moe_routing *r) {
    int E = r->experts, K = r->top_k, G = r->groups, per = E / G;
    memset(counts, 0, sizeof(int) * E);
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * E;
        float *s = scores + (size_t)n * E, sel[MAXE], gscore[MAXE];
        if (r->softmax) {
            float mx = x[0], sum = 0;
            for (int e = 1; e < E; e++) mx = fmaxf(mx, x[e]);
            for (int e = 0; e < E; e++) s[e] = expf(x[e] - mx), sum += s[e];
            for (int e = 0; e < E; e++) s[e] /= sum;
        } else {
            for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-x[e]));
        }
        for (int e = 0; e < E; e++) sel[e] = s[e] + bias[e];
        if (G > 1) {
            int order[MAXE], gorder[MAXE];
            for (int g = 0; g < G; g++) {
                for (int i = 0; i < per; i++) order[i] = g * per + i;
                sort_desc(order, sel, per);
                gscore[g] = per > 1 ? sel[order[0]] + sel[order[1]] : sel[order[0]];
                gorder[g] = g;
            }
            sort_desc(gorder, gscore, G);
            for (int k = r->topk_groups; k < G; k++)
                for (int e = gorder[k] * per; e < (gorder[k] + 1) * per; e++) sel[e] = -INFINITY;
        }
        int order[MAXE];
        for (int e = 0; e < E; e++) order[e] = e;
        sort_desc(order, sel, E);
        float q = 0;
        for (int j = 0; j < K; j++) idx[n * K + j] = order[j], q += s[order[j]], counts[order[j]]++;
        for (int j = 0; j < K; j++) {
            float v = s[order[j]];
            if (r->norm_topk) v /= q + 1e-20f;
            w[n * K + j] = v * r->scaling;
        }
    }
}

static void route_case(const char *tag, const struct loom_moe_routing *r, int N, const float *logits,
                       const float *bias) {
    int E = r->experts, K = r->top_k;
    float *s = poisoned((size_t)N * E), *w = poisoned((size_t)N * K), *rs = alloc(sizeof(float) * N * E);
    float *rw = alloc(sizeof(float) * N * K);
    int *idx = alloc(sizeof(int) * N * K), *cnt = alloc(sizeof(int) * E), *ridx = alloc(sizeof(int) * N * K);
    int *rcnt = alloc(sizeof(int) * E);
    memset(idx, 0xFF, sizeof(int) * N * K);
    memset(cnt, 0xFF, sizeof(int) * E);
    ops->moe_route(s, idx, w, cnt, logits, bias, N, r);
    ref_route(rs, ridx, rw, rcnt, logits, bias, N, r);
    same_floats(test_name("moe_ops.route%s.scores", tag), s, rs, (size_t)N * E);
    test_same_ints(test_name("moe_ops.route%s.idx", tag), idx, ridx, (size_t)N * K);
    same_floats(test_name("moe_ops.route%s.w", tag), w, rw, (size_t)N * K);
    test_same_ints(test_name("moe_ops.route%s.counts", tag), cnt, rcnt, (size_t)E);
}

static struct loom_moe_routing routing(int E, int K, int G, int TG, int softmax, int norm, float scaling) {
    return (struct loom_moe_routing){.experts = E, .top_k = K, .groups = G, .topk_groups = TG, .softmax = softmax,
                                     .norm_topk = norm, .scaling = scaling};
}

static void test_route(void) {
    enum { N = 40, E = 16 };
    float *logits = rand_floats((size_t)N * E, -3, 3), *bias = rand_floats(E, -0.1, 0.1), *zeros = alloc(sizeof(float) * E);
    struct loom_moe_routing dots = routing(E, 6, 1, 1, 0, 1, 2.5f);
    route_case(".sigmoid", &dots, N, logits, bias);
    route_case(".no_bias", &dots, N, logits, zeros);
    struct loom_moe_routing plain = routing(E, 3, 1, 1, 0, 0, 1.0f);
    route_case(".unnormalised", &plain, N, logits, bias);
    struct loom_moe_routing soft = routing(E, 2, 1, 1, 1, 0, 1.0f);
    route_case(".softmax", &soft, N, logits, bias);
    struct loom_moe_routing grouped = routing(E, 4, 4, 2, 0, 1, 2.5f);
    route_case(".groups", &grouped, N, logits, bias);
    struct loom_moe_routing single = routing(E, 2, 8, 3, 0, 1, 1.0f); /* groups of 2 */
    route_case(".groups_of_two", &single, N, logits, bias);

    /* ties: every score equal, so the lowest indices win */
    float *flat = alloc(sizeof(float) * N * E);
    route_case(".ties", &dots, N, flat, zeros);
    int *idx = alloc(sizeof(int) * N * 6), *cnt = alloc(sizeof(int) * E);
    float *s = alloc(sizeof(float) * N * E), *w = alloc(sizeof(float) * N * 6);
    ops->moe_route(s, idx, w, cnt, flat, zeros, N, &dots);
    int lowest = 1;
    for (int n = 0; n < N; n++)
        for (int j = 0; j < 6; j++) lowest &= idx[n * 6 + j] == j;
    test_result(lowest, "moe_ops.route.ties.lowest_index", "token 0 chose %d %d %d %d %d %d", idx[0], idx[1], idx[2],
                idx[3], idx[4], idx[5]);

    /* uneven: a bias of +10 sends every token to expert 5 (top-1) or to experts 2 and 9 (top-2) */
    struct loom_moe_routing one = routing(E, 1, 1, 1, 0, 1, 1.0f), two = routing(E, 2, 1, 1, 0, 1, 2.5f);
    float *b5 = alloc(sizeof(float) * E), *b29 = alloc(sizeof(float) * E);
    b5[5] = 10, b29[2] = 10, b29[9] = 10;
    route_case(".one_expert", &one, N, logits, b5);
    ops->moe_route(s, idx, w, cnt, logits, b5, N, &one);
    test_result(cnt[5] == N, "moe_ops.route.one_expert.load", "expert 5 took %d of %d tokens", cnt[5], N);
    route_case(".two_experts", &two, N, logits, b29);
    ops->moe_route(s, idx, w, cnt, logits, b29, N, &two);
    int idle = 0;
    for (int e = 0; e < E; e++) idle += cnt[e] == 0;
    test_result(cnt[2] == N && cnt[9] == N && idle == E - 2, "moe_ops.route.two_experts.load",
                "experts 2 and 9 took %d and %d of %d tokens, %d experts idle", cnt[2], cnt[9], N, idle);
    release_all();
}

/* ---------------------------------------------------------------------------------------------- */
/* route backward against finite differences; balance against a double loop                        */

struct route_fd {
    const struct loom_moe_routing *r;
    const int *idx;                /* [N, K] the choice, held fixed */
    const double *g;               /* [N, K] d(loss)/d(w) */
    const double *f;               /* [B, E] */
    double bal_scale;
    int n0, n1, T;
};

/* sum_n sum_j g w_j + bal_scale sum_n sum_e f[b, e] s_e / (T S) over tokens [n0, n1), from logits [n1 - n0, E] */
static double route_loss(const struct route_fd *c, const double *logits) {
    int E = c->r->experts, K = c->r->top_k;
    double L = 0;
    for (int n = c->n0; n < c->n1; n++) {
        const double *x = logits + (size_t)(n - c->n0) * E;
        double s[MAXE], S = 0, q = 0;
        if (c->r->softmax) {
            double mx = x[0], sum = 0;
            for (int e = 1; e < E; e++) mx = fmax(mx, x[e]);
            for (int e = 0; e < E; e++) s[e] = exp(x[e] - mx), sum += s[e];
            for (int e = 0; e < E; e++) s[e] /= sum;
        } else {
            for (int e = 0; e < E; e++) s[e] = 1.0 / (1.0 + exp(-x[e]));
        }
        for (int j = 0; j < K; j++) q += s[c->idx[n * K + j]];
        for (int j = 0; j < K; j++) {
            double w = s[c->idx[n * K + j]] * c->r->scaling;
            if (c->r->norm_topk) w /= q + 1e-20;
            L += c->g[n * K + j] * w;
        }
        if (c->bal_scale > 0) {
            for (int e = 0; e < E; e++) S += s[e];
            for (int e = 0; e < E; e++) L += c->bal_scale * c->f[(n / c->T) * E + e] * s[e] / (c->T * S);
        }
    }
    return L;
}

static void route_backward_case(const char *tag, const struct loom_moe_routing *r, int B, int T, int n0, int n1,
                                float bal_scale) {
    int E = r->experts, K = r->top_k, N = B * T, ns = n1 - n0;
    float *logits = rand_floats((size_t)N * E, -2, 2), *bias = rand_floats(E, -0.2, 0.2);
    float *s = alloc(sizeof(float) * N * E), *w = alloc(sizeof(float) * N * K), *f = alloc(sizeof(float) * B * E);
    int *idx = alloc(sizeof(int) * N * K), *cnt = alloc(sizeof(int) * E);
    ops->moe_route(s, idx, w, cnt, logits, bias, N, r);
    if (bal_scale > 0) ops->moe_balance(f, s, idx, B, T, E, K);
    /* dw at shuffled positions: pos maps (token, choice) to where its gradient sits */
    int nk = ns * K, *pos = alloc(sizeof(int) * nk);
    float *dw = rand_floats((size_t)nk, -1, 1);
    for (int i = 0; i < nk; i++) pos[i] = (i * 7 + 3) % nk;
    CHECK(nk % 7 != 0, "pos must be a permutation");
    double *g = alloc(sizeof(double) * N * K), *fd_f = alloc(sizeof(double) * B * E);
    for (int i = 0; i < nk; i++) g[n0 * K + i] = dw[pos[i]];
    for (int i = 0; i < B * E; i++) fd_f[i] = f[i];

    float *dl = poisoned((size_t)ns * E);
    ops->moe_route_backward(dl, dw, pos, s, idx, f, bal_scale, n0, n1, T, r);

    struct route_fd c = {r, idx, g, fd_f, bal_scale, n0, n1, T};
    double *x = alloc(sizeof(double) * ns * E), *want = alloc(sizeof(double) * ns * E);
    for (int i = 0; i < ns * E; i++) x[i] = logits[(size_t)n0 * E + i];
    for (int i = 0; i < ns * E; i++) {
        double keep = x[i];
        x[i] = keep + FD_H;
        double up = route_loss(&c, x);
        x[i] = keep - FD_H;
        double down = route_loss(&c, x);
        x[i] = keep;
        want[i] = (up - down) / (2 * FD_H);
    }
    test_close(test_name("moe_ops.route_backward%s", tag), dl, want, (size_t)ns * E, BWD_ATOL, BWD_RTOL);
}

static void test_route_backward(void) {
    struct loom_moe_routing dots = routing(8, 2, 1, 1, 0, 1, 2.5f), plain = routing(8, 3, 1, 1, 0, 0, 1.0f);
    struct loom_moe_routing soft = routing(8, 2, 1, 1, 1, 1, 1.0f), grouped = routing(8, 3, 4, 2, 0, 1, 2.5f);
    route_backward_case(".sigmoid", &dots, 2, 5, 0, 10, 0.0f);
    route_backward_case(".sigmoid.balance", &dots, 2, 5, 0, 10, 0.5f);
    route_backward_case(".slice.balance", &dots, 2, 5, 3, 8, 0.5f);
    route_backward_case(".unnormalised.balance", &plain, 2, 4, 0, 8, 0.3f);
    route_backward_case(".softmax.balance", &soft, 2, 4, 0, 8, 0.3f);
    route_backward_case(".groups.balance", &grouped, 1, 6, 0, 6, 0.3f);
    release_all();
}

static void test_balance(void) {
    enum { B = 3, T = 7, E = 8, K = 3, N = B * T };
    struct loom_moe_routing r = routing(E, K, 1, 1, 0, 1, 2.5f);
    float *logits = rand_floats((size_t)N * E, -2, 2), *bias = rand_floats(E, -0.2, 0.2);
    float *s = alloc(sizeof(float) * N * E), *w = alloc(sizeof(float) * N * K), *f = poisoned((size_t)B * E);
    int *idx = alloc(sizeof(int) * N * K), *cnt = alloc(sizeof(int) * E);
    ops->moe_route(s, idx, w, cnt, logits, bias, N, &r);
    double got = ops->moe_balance(f, s, idx, B, T, E, K);
    double wf[B * E] = {0}, want = 0;
    for (int n = 0; n < N; n++)
        for (int j = 0; j < K; j++) wf[(n / T) * E + idx[n * K + j]] += (double)E / (K * T);
    for (int n = 0; n < N; n++) {
        double S = 0, fp = 0;
        for (int e = 0; e < E; e++) S += s[n * E + e], fp += wf[(n / T) * E + e] * s[n * E + e];
        want += fp / S / T;
    }
    test_close("moe_ops.balance.f", f, wf, (size_t)B * E, 0, BAL_RTOL);
    float gotf = (float)got;
    test_close("moe_ops.balance.loss", &gotf, &want, 1, 0, BAL_RTOL);
    release_all();
}

/* ---------------------------------------------------------------------------------------------- */
/* plan against a brute-force order                                                                 */

static void plan_case(const char *tag, const int *idx, const float *w, int a0, int nk, int K, int E, int tile) {
    int cap = nk + E * (tile - 1);
    int *counts = alloc(sizeof(int) * E), *offs = alloc(sizeof(int) * (E + 1)), *rows = alloc(sizeof(int) * cap);
    int *pos = alloc(sizeof(int) * (nk ? nk : 1));
    float *wperm = poisoned((size_t)cap);
    memset(rows, 0x7F, sizeof(int) * cap);
    ops->moe_plan(counts, offs, rows, wperm, pos, idx, w, a0, nk, K, E, tile);

    int *rc = alloc(sizeof(int) * E), *ro = alloc(sizeof(int) * (E + 1)), *rr = alloc(sizeof(int) * cap);
    int *rp = alloc(sizeof(int) * (nk ? nk : 1));
    float *rw = alloc(sizeof(float) * cap);
    int p = 0;
    for (int e = 0; e < E; e++) {
        ro[e] = p;
        rc[e] = 0;
        for (int i = 0; i < nk; i++)
            if (idx[a0 + i] == e) rr[p] = (a0 + i) / K, rw[p] = w[a0 + i], rp[i] = p, p++, rc[e]++;
        while ((p - ro[e]) % tile) rr[p] = -1, rw[p] = 0, p++;
    }
    ro[E] = p;
    test_same_ints(test_name("moe_ops.plan%s.tile%d.counts", tag, tile), counts, rc, (size_t)E);
    test_same_ints(test_name("moe_ops.plan%s.tile%d.offs", tag, tile), offs, ro, (size_t)E + 1);
    int P = offs[E] <= cap ? offs[E] : cap;
    test_same_ints(test_name("moe_ops.plan%s.tile%d.rows", tag, tile), rows, rr, (size_t)P);
    same_floats(test_name("moe_ops.plan%s.tile%d.wperm", tag, tile), wperm, rw, (size_t)P);
    test_same_ints(test_name("moe_ops.plan%s.tile%d.pos", tag, tile), pos, rp, (size_t)nk);
    int aligned = 1;
    for (int e = 0; e <= E; e++) aligned &= offs[e] % tile == 0;
    test_result(aligned && offs[E] <= cap, test_name("moe_ops.plan%s.tile%d.block_starts", tag, tile),
                "block starts not multiples of %d, or %d rows > %d", tile, offs[E], cap);
}

static void test_plan(void) {
    enum { N = 37, E = 8, K = 3 };
    struct loom_moe_routing r = routing(E, K, 1, 1, 0, 1, 2.5f), one = routing(E, 1, 1, 1, 0, 1, 1.0f);
    float *logits = rand_floats((size_t)N * E, -3, 3), *bias = rand_floats(E, -0.1, 0.1);
    float *s = alloc(sizeof(float) * N * E), *w = alloc(sizeof(float) * N * K);
    int *idx = alloc(sizeof(int) * N * K), *cnt = alloc(sizeof(int) * E);
    ops->moe_route(s, idx, w, cnt, logits, bias, N, &r);
    static const int tiles[] = {1, 8, 128};
    for (int t = 0; t < 3; t++) {
        plan_case("", idx, w, 0, N * K, K, E, tiles[t]);
        plan_case(".slice", idx, w, 5 * K, 20 * K, K, E, tiles[t]);
        plan_case(".empty", idx, w, 0, 0, K, E, tiles[t]);
    }
    /* uneven: every token to expert 6, top-1 */
    float *b6 = alloc(sizeof(float) * E);
    b6[6] = 10;
    ops->moe_route(s, idx, w, cnt, logits, b6, N, &one);
    for (int t = 0; t < 3; t++) plan_case(".one_expert", idx, w, 0, N, 1, E, tiles[t]);
    release_all();
}

/* ---------------------------------------------------------------------------------------------- */
/* permute, combine and its backward against the row ops                                           */

static void permute_case(const char *tag, int tile) {
    enum { N = 23, E = 6, K = 2, C = 13 };
    struct loom_moe_routing r = routing(E, K, 1, 1, 0, 1, 2.5f);
    float *logits = rand_floats((size_t)N * E, -3, 3), *bias = rand_floats(E, -0.1, 0.1);
    float *s = alloc(sizeof(float) * N * E), *w = alloc(sizeof(float) * N * K);
    int *idx = alloc(sizeof(int) * N * K), *cnt = alloc(sizeof(int) * E);
    ops->moe_route(s, idx, w, cnt, logits, bias, N, &r);
    int nk = N * K, cap = nk + E * (tile - 1);
    int *counts = alloc(sizeof(int) * E), *offs = alloc(sizeof(int) * (E + 1)), *rows = alloc(sizeof(int) * cap);
    int *pos = alloc(sizeof(int) * nk);
    float *wperm = alloc(sizeof(float) * cap);
    ops->moe_plan(counts, offs, rows, wperm, pos, idx, w, 0, nk, K, E, tile);
    int P = offs[E];
    /* the non-padding positions in order, for the row ops */
    int *live_p = alloc(sizeof(int) * nk), *live_row = alloc(sizeof(int) * nk), nl = 0;
    float *live_w = alloc(sizeof(float) * nk);
    for (int p = 0; p < P; p++)
        if (rows[p] >= 0) live_p[nl] = p, live_row[nl] = rows[p], live_w[nl] = wperm[p], nl++;

    float *x = rand_floats((size_t)N * C, -1, 1), *y = rand_floats((size_t)P * C, -1, 1);
    float *dout = rand_floats((size_t)N * C, -1, 1);
    for (int scaled = 0; scaled <= 1; scaled++) {
        const char *mode = scaled ? ".scale" : "";
        float *got = poisoned((size_t)P * C), *ref = alloc(sizeof(float) * nl * C), *want = alloc(sizeof(float) * P * C);
        ops->moe_permute(got, x, rows, scaled ? wperm : NULL, P, C);
        ops->gather_rows(ref, x, live_row, scaled ? live_w : NULL, nl, C);
        for (int i = 0; i < nl; i++) memcpy(want + (size_t)live_p[i] * C, ref + (size_t)i * C, sizeof(float) * C);
        same_floats(test_name("moe_ops.permute%s%s", tag, mode), got, want, (size_t)P * C);

        float *out = rand_floats((size_t)N * C, -1, 1), *out_ref = copy_of(out, (size_t)N * C);
        float *y_live = alloc(sizeof(float) * nl * C);
        for (int i = 0; i < nl; i++) memcpy(y_live + (size_t)i * C, y + (size_t)live_p[i] * C, sizeof(float) * C);
        ops->moe_unpermute(out, y, pos, scaled ? wperm : NULL, 0, N, K, C);
        ops->scatter_add_rows(out_ref, y_live, live_row, scaled ? live_w : NULL, nl, C);
        same_floats(test_name("moe_ops.unpermute%s%s", tag, mode), out, out_ref, (size_t)N * C);
    }
    /* a slice of tokens: rows outside it untouched */
    float *out = rand_floats((size_t)N * C, -1, 1), *before = copy_of(out, (size_t)N * C);
    int n0 = 4, n1 = 15;
    int *slice_pos = alloc(sizeof(int) * (n1 - n0) * K);
    ops->moe_plan(counts, offs, rows, wperm, slice_pos, idx, w, n0 * K, (n1 - n0) * K, K, E, tile);
    int Ps = offs[E];
    float *ys = rand_floats((size_t)Ps * C, -1, 1);
    ops->moe_unpermute(out, ys, slice_pos, wperm, n0, n1, K, C);
    int untouched = memcmp(out, before, sizeof(float) * n0 * C) == 0 &&
                    memcmp(out + (size_t)n1 * C, before + (size_t)n1 * C, sizeof(float) * (N - n1) * C) == 0;
    test_result(untouched, test_name("moe_ops.unpermute%s.slice_outside_untouched", tag), "a row outside [%d, %d) changed",
                n0, n1);
    ops->moe_plan(counts, offs, rows, wperm, pos, idx, w, 0, nk, K, E, tile);

    /* backward: the scaled gather of dout and the routing weights' gradient */
    float *dsrc = poisoned((size_t)P * C), *dscale = poisoned((size_t)P);
    ops->moe_unpermute_backward(dsrc, dscale, dout, y, rows, wperm, P, C);
    float *want_d = alloc(sizeof(float) * P * C), *want_s = alloc(sizeof(float) * P), *ref = alloc(sizeof(float) * nl * C);
    float *ref_s = alloc(sizeof(float) * nl), *y_live = alloc(sizeof(float) * nl * C);
    for (int i = 0; i < nl; i++) memcpy(y_live + (size_t)i * C, y + (size_t)live_p[i] * C, sizeof(float) * C);
    ops->gather_rows(ref, dout, live_row, live_w, nl, C);
    ops->row_dot(ref_s, y_live, dout, live_row, nl, C);
    for (int i = 0; i < nl; i++) {
        memcpy(want_d + (size_t)live_p[i] * C, ref + (size_t)i * C, sizeof(float) * C);
        want_s[live_p[i]] = ref_s[i];
    }
    same_floats(test_name("moe_ops.unpermute_backward%s.dsrc", tag), dsrc, want_d, (size_t)P * C);
    same_floats(test_name("moe_ops.unpermute_backward%s.dscale", tag), dscale, want_s, (size_t)P);
    release_all();
}

static void test_permute(void) {
    permute_case("", 1);
    permute_case(".tile8", 8);
}

/* ---------------------------------------------------------------------------------------------- */
/* grouped GEMMs against one matmul per group                                                       */

static void grouped_case(const char *tag, const struct loom_ops *o) {
    enum { G = 5, C = 12, OC = 9, R = 24 };
    static const int start[G] = {0, 4, 4, 12, 20}, count[G] = {3, 0, 7, 1, 4};
    size_t numel = (size_t)OC * C, stride = numel + 20; /* experts' tensors apart, with a gap of poison */
    float *wt = poisoned(stride * G);
    for (int g = 0; g < G; g++) {
        float *x = rand_floats(numel, -1, 1);
        memcpy(wt + g * stride, x, sizeof(float) * numel);
    }
    o->round_compute(wt, stride * G);
    float *inp = rand_floats((size_t)R * C, -1, 1), *dout = rand_floats((size_t)R * OC, -1, 1);
    o->round_compute(inp, (size_t)R * C);
    o->round_compute(dout, (size_t)R * OC);

    float *out = poisoned((size_t)R * OC), *want = poisoned((size_t)R * OC);
    o->grouped_matmul_forward(out, inp, wt, stride, start, count, G, C, OC);
    for (int g = 0; g < G; g++)
        if (count[g])
            o->matmul_forward(want + (size_t)start[g] * OC, inp + (size_t)start[g] * C, wt + g * stride, count[g], C, OC);
    same_floats(test_name("moe_ops.grouped%s.forward", tag), out, want, (size_t)R * OC);

    for (int acc = 0; acc <= 1; acc++) {
        float *dx = acc ? rand_floats((size_t)R * C, -1, 1) : poisoned((size_t)R * C);
        if (acc)
            for (int i = 0; i < C; i++) dx[(size_t)3 * C + i] = bits_f32(0xFFFFFFFFu); /* row 3: in no group */
        float *dx_want = copy_of(dx, (size_t)R * C);
        o->grouped_matmul_backward_input(dx, dout, wt, stride, start, count, G, C, OC, acc);
        for (int g = 0; g < G; g++)
            if (count[g])
                o->matmul_backward_input(dx_want + (size_t)start[g] * C, dout + (size_t)start[g] * OC, wt + g * stride,
                                         count[g], C, OC, acc);
        same_floats(test_name("moe_ops.grouped%s.backward_input%s", tag, acc ? ".accumulate" : ""), dx, dx_want,
                    (size_t)R * C);
    }

    float *dw = poisoned(stride * G);
    for (int g = 0; g < G; g++) memcpy(dw + g * stride, rand_floats(numel, -1, 1), sizeof(float) * numel);
    float *dw_want = copy_of(dw, stride * G);
    o->grouped_matmul_backward_weight(dw, stride, dout, inp, start, count, G, C, OC);
    for (int g = 0; g < G; g++)
        if (count[g])
            o->matmul_backward_weight(dw_want + g * stride, dout + (size_t)start[g] * OC, inp + (size_t)start[g] * C,
                                      count[g], C, OC);
    same_floats(test_name("moe_ops.grouped%s.backward_weight", tag), dw, dw_want, stride * G);
    release_all();
}

static void test_grouped(void) {
    grouped_case("", ops);
    grouped_case(".bf16", loom_ops_cpu_mixed(ops, LOOM_BF16));
}

/* ---------------------------------------------------------------------------------------------- */

int main(void) {
    ops = loom_ops_cpu(2);
    test_route();
    test_route_backward();
    test_balance();
    test_plan();
    test_permute();
    test_grouped();
    return test_exit();
}
