/*
 * tests/gpu/test_moe_gpu.c — the CUDA backend's MoE ops (model/cuda/moe_cuda.cu) and the tiny MoE model trained on
 * it, against the CPU backend, in fp32, bf16 and fp16 (`make test-gpu`).
 *
 * Ops. Each op runs on the CUDA backend (loom_ops_cuda(0, dtype)) and on the CPU reference (loom_ops_cpu(1) for
 * fp32, loom_ops_cpu_mixed for bf16 / fp16) with the same inputs; inputs a GPU holds in the compute dtype are
 * rounded to it first. Outputs are POISONED (every byte 0xFF, a NaN) on both sides before each call: an element the
 * op must write and leaves poisoned fails, and every element outside the op's output (padding rows the grouped
 * GEMMs skip, token rows outside a slice, expert tensors outside the groups) must keep its poison bit for bit.
 * Routing covers uneven loads forced by the bias: one expert taking every token, the others none.
 *
 * Tolerances, by where the output lives (M = max |want| over the tensor; the kinds of tests/gpu/gpu_check.h):
 *   exact    the choice (idx), counts, the plan (offsets, rows, weights, positions), the permutation, the combine
 *            (moe_unpermute adds each token's rows in the CPU's order with the multiply and add rounded
 *            separately, then rounds as the CPU does), the balance statistics f (the same float additions):
 *            bit for bit (KIND_EXACT)
 *   router   scores, weights, the router's gradient (fp32 in every dtype; CUDA's expf differs from glibc's by a few
 *            ulps, and sums run in another order): |got - want| <= 1e-5 M (KIND_KEPT). The choice compared exactly
 *            is made robust by redrawing the logits of every token whose CPU choice has a margin under 1e-4 (two
 *            biased scores, or two group scores, that close), so that ulps of expf cannot flip it
 *   balance  the loss, a double sum in another order: relative 1e-10
 *   dscale   the routing weights' gradient, a double dot product: 1e-5 M (KIND_KEPT)
 *   GEMMs    the grouped GEMMs as tests/gpu/test_ops_gpu.c judges a GEMM (KIND_OUT_GEMM): fp32 1e-4 M; bf16 / fp16
 *            within 4 ulps of the dtype at max(|want|, M / 64), at most 1% of the elements over 1 ulp, relative L2
 *            <= 1e-2 / 2e-3; the weight gradient is judged on what the call added (got - init against want - init)
 *
 * Model. tests/ref/tiny-moe.bin's weights, router bias and batch (2 x 8 tokens, 8 experts, top-2, one shared)
 * train 10 AdamW steps (global-norm clipping, the aux-loss-free bias update after each step, the balance loss on)
 * on both backends, as tests/unit/test_model_ref.c does on the CPU. Compared each step: the loss, relative
 * 1e-4 at step 1 and 5e-3 later (fp32; bf16 / fp16: 1e-3 and 2e-2, tests/gpu/test_train_gpu.sh's MoE bounds: the
 * router may pick another expert for a token once the trajectories part by rounding); the expert loads of step 1
 * exactly; the router bias after each step, exactly after step 1 and within 4 updates (4 x bias_update_rate)
 * later. These bounds are not yet measured on a GPU: LOOM_TEST_VERBOSE=1 prints every difference.
 *
 * One dtype per process (the mixed CPU table holds one): with no argument this program runs itself once per dtype.
 * Without a visible CUDA device it fails at once: `make test-gpu` runs on a GPU machine.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/dtype.h"
#include "core/error.h"
#include "model/model.h"
#include "model/ops.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "tests/ref/refdump.h"
#include "tests/test.h"
#ifdef LOOM_CUDA
#include "model/cuda/ops_cuda.h"
#include "tests/gpu/gpu_check.h"

#define BALANCE_RTOL 1e-10
#define MARGIN 1e-4
#define MAXE 256

/* an int output: every byte 0x7F (-1, the padding marker, would hide a row left unwritten) */
static struct pair pair_poisoned_int(size_t n) {
    int *x = host_alloc(n * sizeof(int));
    memset(x, 0x7F, n * sizeof(int));
    return pair_of(x, n);
}

/* pair p's first n ints: the GPU's copy equal to the reference's */
static int check_ints(const char *name, struct pair p, size_t n) {
    const int *got = fetch(p, 0), *want = fetch(p, 1);
    return test_same_ints(name, got, want, n);
}

/* ---------------------------------------------------------------------------------------------- */
/* routing inputs with a margin                                                                     */

/* The smallest gap, in token n's CPU routing, between two biased scores whose order decides the choice (the
 * chosen K and the best one left out, in order) or between the group scores that decide the kept groups. */
static double margin(const struct loom_moe_routing *r, const float *s, const float *bias) {
    int E = r->experts, K = r->top_k, G = r->groups, per = E / G;
    double sel[MAXE], gsc[MAXE], m = INFINITY;
    int keep[MAXE];
    for (int e = 0; e < E; e++) sel[e] = (double)(s[e] + bias[e]);
    for (int g = 0; g < G; g++) {
        double a = -INFINITY, b = -INFINITY;
        for (int e = g * per; e < (g + 1) * per; e++) {
            if (sel[e] > a) b = a, a = sel[e];
            else if (sel[e] > b) b = sel[e];
        }
        gsc[g] = a + (per > 1 ? b : 0);
        keep[g] = G == 1;
    }
    /* the groups kept, best first; the last kept one against the best dropped one */
    double last_kept = 0;
    for (int k = 0; G > 1 && k <= r->topk_groups && k < G; k++) {
        int best = -1;
        for (int g = 0; g < G; g++)
            if (!keep[g] && (best < 0 || gsc[g] > gsc[best])) best = g;
        if (k == r->topk_groups) m = fmin(m, last_kept - gsc[best]);
        else keep[best] = 1, last_kept = gsc[best];
    }
    int taken[MAXE] = {0};
    double prev = INFINITY;
    for (int j = 0; j <= K && j < E; j++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (keep[e / per] && !taken[e] && (best < 0 || sel[e] > sel[best])) best = e;
        if (best < 0) break;
        if (prev < INFINITY) m = fmin(m, prev - sel[best]);
        prev = sel[best];
        taken[best] = 1;
    }
    return m;
}

/* logits [N, E] whose CPU routing has a margin of at least MARGIN on every token (redrawn until it does) */
static float *routable_logits(const struct loom_moe_routing *r, int N, const float *bias) {
    int E = r->experts, K = r->top_k;
    const struct loom_ops *cpu = be[1]->exact;
    float *x = rand_f32((size_t)N * E, -3, 3), *s = host_alloc(sizeof(float) * E), *w = host_alloc(sizeof(float) * K);
    int *idx = host_alloc(sizeof(int) * K), *cnt = host_alloc(sizeof(int) * E);
    for (int n = 0; n < N; n++)
        for (int tries = 0;; tries++) {
            cpu->moe_route(s, idx, w, cnt, x + (size_t)n * E, bias, 1, r);
            if (margin(r, s, bias) >= MARGIN) break;
            CHECK(tries < 1000, "no logits with a routing margin of %g for token %d", MARGIN, n);
            for (int e = 0; e < E; e++) x[(size_t)n * E + e] = (float)test_rng_uniform(&rng_state, -3, 3);
        }
    return x;
}

static struct loom_moe_routing routing(int E, int K, int G, int TG, int softmax, int norm, float scaling) {
    return (struct loom_moe_routing){.experts = E, .top_k = K, .groups = G, .topk_groups = TG, .softmax = softmax,
                                     .norm_topk = norm, .scaling = scaling};
}

/* ---------------------------------------------------------------------------------------------- */
/* the router, its backward and the balance statistics                                             */

/* B sequences of T tokens; bias_h NULL: a small random one; logits_h NULL: random ones with a routing margin. The
 * balance statistics and the router's backward then run on the reference's scores and choice. */
static void route_case(const char *tag, const struct loom_moe_routing *r, int B, int T, const float *bias_h,
                       const float *logits_h) {
    int E = r->experts, K = r->top_k, N = B * T;
    if (!bias_h) bias_h = rand_f32(E, -0.05, 0.05);
    if (!logits_h) logits_h = routable_logits(r, N, bias_h);
    struct pair logits = pair_of(logits_h, (size_t)N * E), bias = pair_of(bias_h, E);
    struct pair s = pair_poisoned((size_t)N * E), idx = pair_poisoned_int((size_t)N * K);
    struct pair w = pair_poisoned((size_t)N * K), cnt = pair_poisoned_int(E);
    for (side = 0; side < 2; side++) be[side]->exact->moe_route(S(s), SI(idx), S(w), SI(cnt), S(logits), S(bias), N, r);
    check(nm("route%s.scores", tag), s, KIND_KEPT);
    int idx_ok = check_ints(nm("route%s.idx", tag), idx, (size_t)N * K);
    check(nm("route%s.w", tag), w, KIND_KEPT);
    check_ints(nm("route%s.counts", tag), cnt, E);
    if (!idx_ok) return;

    struct pair sref = pair_of(fetch(s, 1), (size_t)N * E);
    struct pair f = pair_poisoned((size_t)B * E);
    double total[2];
    for (side = 0; side < 2; side++) total[side] = be[side]->exact->moe_balance(S(f), S(sref), SI(idx), B, T, E, K);
    check(nm("balance%s.f", tag), f, KIND_EXACT);
    double rel = total[1] ? fabs(total[0] - total[1]) / fabs(total[1]) : fabs(total[0]);
    test_result(rel <= BALANCE_RTOL, nm("balance%s.loss", tag), "got %.17g, want %.17g (relative %.3g, limit %.0e)",
                total[0], total[1], rel, BALANCE_RTOL);

    struct pair fref = pair_of(fetch(f, 1), (size_t)B * E);
    int n0 = N / 4, n1 = N - N / 4, nk = (n1 - n0) * K;
    int *pos_h = host_alloc(sizeof(int) * (nk ? nk : 1));
    for (int i = 0; i < nk; i++) pos_h[i] = nk - 1 - i; /* dw stored in reverse */
    struct pair pos = pair_of(pos_h, nk), dw = pair_of(rand_f32(nk, -1, 1), nk);
    for (int bal = 0; bal <= 1; bal++) {
        struct pair dl = pair_poisoned((size_t)(n1 - n0) * E);
        for (side = 0; side < 2; side++)
            be[side]->exact->moe_route_backward(S(dl), S(dw), SI(pos), S(sref), SI(idx), S(fref), bal ? 0.3f : 0.0f, n0,
                                                n1, T, r);
        check(nm("route_backward%s%s", tag, bal ? ".balance" : ""), dl, KIND_KEPT);
    }
}

static void test_route(void) {
    struct loom_moe_routing dots = routing(64, 6, 1, 1, 0, 1, 2.5f);
    route_case(".dots", &dots, 2, 96, NULL, NULL);
    struct loom_moe_routing plain = routing(16, 3, 1, 1, 0, 0, 1.0f);
    route_case(".unnormalised", &plain, 3, 17, NULL, NULL);
    struct loom_moe_routing soft = routing(16, 2, 1, 1, 1, 1, 1.0f);
    route_case(".softmax", &soft, 2, 20, NULL, NULL);
    struct loom_moe_routing grouped = routing(64, 8, 8, 4, 0, 1, 2.5f);
    route_case(".groups", &grouped, 2, 64, NULL, NULL);

    /* ties: equal logits, the lowest indices win on both */
    int N = 40;
    float *flat = host_alloc(sizeof(float) * N * 64), *zeros = host_alloc(sizeof(float) * 64);
    route_case(".ties", &dots, 1, N, zeros, flat);
    /* uneven: every token to expert 7 (top-1), or to experts 3 and 40 (top-2); the rest take none */
    struct loom_moe_routing one = routing(64, 1, 1, 1, 0, 1, 1.0f), two = routing(64, 2, 1, 1, 0, 1, 2.5f);
    float *b7 = host_alloc(sizeof(float) * 64), *b340 = host_alloc(sizeof(float) * 64);
    b7[7] = 10, b340[3] = 10, b340[40] = 10;
    route_case(".one_expert", &one, 2, 50, b7, NULL);
    route_case(".two_experts", &two, 2, 50, b340, NULL);
    release_all();
}

/* ---------------------------------------------------------------------------------------------- */
/* the plan, the permutation and the combine                                                        */

/* idx [N, K] and w: random distinct experts per token, or every token to `only` (K = 1) */
static void plan_case(const char *tag, int N, int K, int E, int only, int tile) {
    int NK = N * K, cap = NK + E * (tile - 1), C = 72;
    int *idx_h = host_alloc(sizeof(int) * NK);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < K; j++) {
            int e, dup;
            do {
                e = only >= 0 ? only : (int)test_rng_uniform(&rng_state, 0, E);
                dup = 0;
                for (int q = 0; q < j; q++) dup |= idx_h[n * K + q] == e;
            } while (dup);
            idx_h[n * K + j] = e;
        }
    struct pair idx = pair_of(idx_h, NK), w = pair_of(rand_f32(NK, 0, 1), NK);
    int n0 = N / 5, n1 = N, nk = (n1 - n0) * K;
    struct pair counts = pair_poisoned_int(E), offs = pair_poisoned_int(E + 1), rows = pair_poisoned_int(cap);
    struct pair wperm = pair_poisoned(cap), pos = pair_poisoned_int(nk);
    ON_BOTH(moe_plan, SI(counts), SI(offs), SI(rows), S(wperm), SI(pos), SI(idx), S(w), n0 * K, nk, K, E, tile);
    check_ints(nm("plan%s.tile%d.counts", tag, tile), counts, E);
    check_ints(nm("plan%s.tile%d.offs", tag, tile), offs, E + 1);
    check_ints(nm("plan%s.tile%d.rows", tag, tile), rows, cap);
    check(nm("plan%s.tile%d.wperm", tag, tile), wperm, KIND_EXACT);
    check_ints(nm("plan%s.tile%d.pos", tag, tile), pos, nk);
    const int *offs_h = fetch(offs, 1);
    int P = offs_h[E];

    /* both sides permute, combine and differentiate from the reference's plan */
    struct pair rows_r = pair_of(fetch(rows, 1), cap), wperm_r = pair_of(fetch(wperm, 1), cap);
    struct pair pos_r = pair_of(fetch(pos, 1), nk);
    struct pair x = pair_of(rand_act((size_t)N * C, -1, 1), (size_t)N * C);
    for (int scaled = 0; scaled <= 1; scaled++) {
        struct pair dst = pair_poisoned((size_t)cap * C);
        ON_BOTH(moe_permute, S(dst), S(x), SI(rows_r), scaled ? S(wperm_r) : NULL, P, C);
        check(nm("permute%s.tile%d%s", tag, tile, scaled ? ".scale" : ""), dst, KIND_EXACT);
        /* the combine adds into rows [n0, n1) of out; rows before n0 keep their poison */
        float *out_h = rand_act((size_t)N * C, -1, 1);
        memset(out_h, 0xFF, sizeof(float) * (size_t)n0 * C);
        struct pair y = pair_of(rand_act((size_t)cap * C, -1, 1), (size_t)cap * C), out = pair_of(out_h, (size_t)N * C);
        ON_BOTH(moe_unpermute, S(out), S(y), SI(pos_r), scaled ? S(wperm_r) : NULL, n0, n1, K, C);
        check(nm("unpermute%s.tile%d%s", tag, tile, scaled ? ".scale" : ""), out, KIND_EXACT);
    }
    struct pair dout = pair_of(rand_act((size_t)N * C, -1, 1), (size_t)N * C);
    struct pair y = pair_of(rand_act((size_t)cap * C, -1, 1), (size_t)cap * C);
    struct pair dsrc = pair_poisoned((size_t)cap * C), dscale = pair_poisoned(cap);
    ON_BOTH(moe_unpermute_backward, S(dsrc), S(dscale), S(dout), S(y), SI(rows_r), S(wperm_r), P, C);
    check(nm("unpermute_backward%s.tile%d.dsrc", tag, tile), dsrc, KIND_EXACT);
    check(nm("unpermute_backward%s.tile%d.dscale", tag, tile), dscale, KIND_KEPT);
    release_all();
}

static void test_plan(void) {
    static const int tiles[] = {1, 128};
    for (int t = 0; t < 2; t++) {
        plan_case("", 300, 6, 64, -1, tiles[t]);
        plan_case(".few", 5, 2, 16, -1, tiles[t]);
        plan_case(".one_expert", 200, 1, 64, 9, tiles[t]);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* grouped GEMMs                                                                                    */

/* G experts of [OC, C] weights `stride` floats apart (the gap poisoned), rows grouped as start / count say */
static void grouped_case(const char *tag, int G, const int *start, const int *count, int R, int C, int OC) {
    size_t numel = (size_t)OC * C, stride = numel + 48, nw = stride * G;
    float *wt_h = poison_host(nw);
    for (int g = 0; g < G; g++) memcpy(wt_h + g * stride, rand_act(numel, -1, 1), sizeof(float) * numel);
    struct pair wt = pair_of(wt_h, nw);
    struct pair inp = pair_of(rand_act((size_t)R * C, -1, 1), (size_t)R * C);
    struct pair dout = pair_of(rand_act((size_t)R * OC, -1, 1), (size_t)R * OC);

    struct pair out = pair_poisoned((size_t)R * OC);
    ON_BOTH(grouped_matmul_forward, S(out), S(inp), S(wt), stride, start, count, G, C, OC);
    check(nm("grouped%s.forward", tag), out, KIND_OUT_GEMM);

    struct pair dx = pair_poisoned((size_t)R * C);
    ON_BOTH(grouped_matmul_backward_input, S(dx), S(dout), S(wt), stride, start, count, G, C, OC, 0);
    check(nm("grouped%s.backward_input", tag), dx, KIND_OUT_GEMM);
    float *acc_h = rand_act((size_t)R * C, -1, 1);
    struct pair dx_acc = pair_of(acc_h, (size_t)R * C);
    ON_BOTH(grouped_matmul_backward_input, S(dx_acc), S(dout), S(wt), stride, start, count, G, C, OC, 1);
    check(nm("grouped%s.backward_input.accumulate", tag), dx_acc, KIND_OUT_GEMM);

    float *init = poison_host(nw);
    for (int g = 0; g < G; g++) memcpy(init + g * stride, rand_f32(numel, -1, 1), sizeof(float) * numel);
    struct pair dw = pair_of(init, nw);
    ON_BOTH(grouped_matmul_backward_weight, S(dw), stride, S(dout), S(inp), start, count, G, C, OC);
    float *got = fetch(dw, 0), *want = fetch(dw, 1);
    for (size_t i = 0; i < nw; i++)
        if (!isnan(init[i])) got[i] -= init[i], want[i] -= init[i];
    compare(nm("grouped%s.backward_weight", tag), got, want, nw, KIND_OUT_GEMM);
    release_all();
}

/* counts per expert and block starts padded to `tile` rows; returns the rows */
static int blocks(int *start, const int *count, int G, int tile) {
    int o = 0;
    for (int g = 0; g < G; g++) start[g] = o, o += (count[g] + tile - 1) / tile * tile;
    return o;
}

static void test_grouped(void) {
    int start[160], count[160];
    static const int small[5] = {3, 0, 7, 1, 0};
    memcpy(count, small, sizeof small);
    int R = blocks(start, count, 5, 4);
    grouped_case(".small", 5, start, count, R, 12, 9);

    /* a dots-like layer scaled down: 16 experts of 176 over width 256, uneven loads, blocks of 128 rows */
    for (int g = 0; g < 16; g++) count[g] = g % 5 == 3 ? 0 : (int)test_rng_uniform(&rng_state, 1, 300);
    R = blocks(start, count, 16, 128);
    grouped_case(".dots_like", 16, start, count, R, 256, 176);

    /* every row to one expert, the others empty */
    for (int g = 0; g < 8; g++) count[g] = g == 5 ? 777 : 0;
    R = blocks(start, count, 8, 128);
    grouped_case(".one_expert", 8, start, count, R, 128, 96);

    /* more experts than one chunk of the grouped call (128) */
    for (int g = 0; g < 160; g++) count[g] = g % 3 ? 2 + g % 7 : 0;
    R = blocks(start, count, 160, 8);
    grouped_case(".many_experts", 160, start, count, R, 64, 48);
}

/* ---------------------------------------------------------------------------------------------- */
/* the tiny MoE model: 10 AdamW steps on each backend                                                */

struct run {
    float losses[10], bias[10][MAXE];
    int64_t load1[MAXE];
    int steps;
};

static void train(struct run *out, const struct loom_ops *ops, struct loom_refdump *d) {
    struct loom_config cfg;
    loom_config_init(&cfg);
    loom_config_load_string(&cfg, (const char *)loom_refdump_need(d, "config")->data, "tiny-moe.bin");
    cfg.data.kind = LOOM_DATA_RANDOM;
    loom_config_validate(&cfg, 0);
    int B, T, *inputs, *targets;
    loom_refdump_batch(d, &B, &T, &inputs, &targets);
    int N = B * T, E = (int)cfg.model.moe.experts;
    CHECK(E <= MAXE, "%d experts", E);
    struct loom_model m;
    loom_model_create(&m, ops, &cfg.model, &cfg.optim, B, T);
    CHECK(m.moe_layers == 1, "tiny-moe has one MoE block, the model %d", m.moe_layers);
    float *host = calloc_check(m.table.total, sizeof(float));
    char name[160];
    for (int i = 0; i < m.table.count; i++) {
        const struct loom_param *p = &m.table.params[i];
        snprintf(name, sizeof name, "param/%s", p->name);
        memcpy(host + p->offset, loom_refdump_need(d, name)->data, sizeof(float) * p->numel);
    }
    loom_model_set_params(&m, host);
    memcpy(m.router_bias, loom_refdump_need(d, "buffer/layers.1.mlp.gate.e_score_correction_bias")->data,
           sizeof(float) * E);
    m.bal_scale = (float)(cfg.model.moe.balance_alpha / B);

    struct loom_adamw opt;
    loom_adamw_init(&opt, ops, &cfg.optim, 0, m.table.total);
    struct loom_schedule sched;
    loom_schedule_init(&sched, &cfg.schedule, 10 * (int64_t)N);
    long counted = 0;
    for (int n = 0; n < N; n++) counted += targets[n] >= 0;
    out->steps = 10;
    for (int s = 0; s < out->steps; s++) {
        loom_model_zero_grads(&m);
        out->losses[s] = (float)(loom_model_forward(&m, inputs, targets, 1.0f / counted, NULL, NULL) / counted);
        loom_model_backward(&m);
        double norm = loom_grad_norm(ops, &m.table, m.grads);
        loom_adamw_step(&opt, &m.table, m.master, m.grads, loom_schedule_lr(&sched, (int64_t)(s + 1) * N),
                        loom_clip_factor(norm, cfg.optim.grad_clip));
        loom_model_sync_weights(&m);
        if (s == 0) memcpy(out->load1, m.expert_load, sizeof(int64_t) * E);
        loom_model_update_router_bias(&m);
        memcpy(out->bias[s], m.router_bias, sizeof(float) * E);
    }
    loom_adamw_free(&opt);
    free(host), free(inputs), free(targets);
    loom_model_destroy(&m);
    loom_config_free(&cfg);
}

static void test_model(void) {
    struct loom_refdump *d = loom_refdump_load("tests/ref/tiny-moe.bin");
    struct loom_config cfg;
    loom_config_init(&cfg);
    loom_config_load_string(&cfg, (const char *)loom_refdump_need(d, "config")->data, "tiny-moe.bin");
    int E = (int)cfg.model.moe.experts;
    double rate = cfg.model.moe.bias_update_rate;
    loom_config_free(&cfg);
    static struct run run[2];
    for (int s = 0; s < 2; s++) train(&run[s], be[s], d);
    loom_refdump_free(d);

    double first = dt == LOOM_F32 ? 1e-4 : 1e-3, later = dt == LOOM_F32 ? 5e-3 : 2e-2, bad_rel = 0;
    int bad = -1;
    for (int s = 0; s < run[0].steps; s++) {
        double a = run[1].losses[s], b = run[0].losses[s], rel = fabs(a - b) / fabs(a);
        if (bad < 0 && !(rel <= (s ? later : first))) bad = s, bad_rel = rel;
        if (verbose) printf("# %s step %d: loss cpu %.7f cuda %.7f (relative %.3g)\n", nm("model"), s + 1, a, b, rel);
    }
    test_result(bad < 0, nm("model.losses"), "step %d: loss cuda %.7f, cpu %.7f (relative %.3g, limit %.0e)", bad + 1,
                bad >= 0 ? (double)run[0].losses[bad] : 0.0, bad >= 0 ? (double)run[1].losses[bad] : 0.0, bad_rel,
                bad > 0 ? later : first);
    int loads_ok = memcmp(run[0].load1, run[1].load1, sizeof(int64_t) * E) == 0;
    test_result(loads_ok, nm("model.step1_loads"), "expert loads of step 1 differ: cuda %lld %lld %lld ..., cpu %lld %lld %lld ...",
                (long long)run[0].load1[0], (long long)run[0].load1[1], (long long)run[0].load1[2],
                (long long)run[1].load1[0], (long long)run[1].load1[1], (long long)run[1].load1[2]);
    int bias_ok = memcmp(run[0].bias[0], run[1].bias[0], sizeof(float) * E) == 0, bad_step = -1, bad_e = 0;
    double bad_d = 0;
    for (int s = 1; s < run[0].steps && bad_step < 0; s++)
        for (int e = 0; e < E; e++) {
            double dd = fabs((double)run[0].bias[s][e] - run[1].bias[s][e]);
            if (verbose && dd > 0) printf("# %s step %d expert %d: bias differs by %.3g\n", nm("model"), s + 1, e, dd);
            if (dd > 4 * rate * (1 + 1e-6) && bad_step < 0) bad_step = s, bad_e = e, bad_d = dd;
        }
    test_result(bias_ok, nm("model.step1_router_bias"), "the router bias after step 1 differs (loads differ?)");
    test_result(bad_step < 0, nm("model.router_bias"), "step %d expert %d: bias cuda %.9g, cpu %.9g (%.3g apart, limit "
                "4 updates of %g)", bad_step + 1, bad_e, bad_step >= 0 ? (double)run[0].bias[bad_step][bad_e] : 0.0,
                bad_step >= 0 ? (double)run[1].bias[bad_step][bad_e] : 0.0, bad_d, rate);
}

/* ---------------------------------------------------------------------------------------------- */
/* every check, in one dtype (gpu_test_main runs one process per dtype)                             */

static void run_checks(void) {
    test_result(be[0]->moe_tile > 1 && be[1]->moe_tile == 1, nm("moe_tile"), "cuda %d, cpu %d: want cuda > 1, cpu 1",
                be[0]->moe_tile, be[1]->moe_tile);
    test_route();
    test_plan();
    test_grouped();
    test_model();
}

int main(int argc, char **argv) {
    static const struct gpu_test t = {.name = "moe", .seed = 0x6a09e667f3bcc909ull, .run = run_checks};
    return gpu_test_main(argc, argv, &t);
}

#else /* !LOOM_CUDA */

int main(void) {
    printf("FAIL gpu.moe: this build has no CUDA backend (LOOM_CUDA is not defined: nvcc not found, or no "
           "model/cuda sources); make test-gpu needs one\n");
    return 2;
}

#endif
