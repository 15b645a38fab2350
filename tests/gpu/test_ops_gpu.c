/*
 * tests/gpu/test_ops_gpu.c — every op of the CUDA backend against the CPU backend, in fp32, bf16 and fp16.
 *
 * Each op runs twice on the same inputs: on the CUDA backend (loom_ops_cuda(0, dtype)) and on the CPU
 * reference, loom_ops_cpu(1) for fp32 and loom_ops_cpu_mixed(loom_ops_cpu(1), dtype) for bf16 / fp16 (which
 * rounds at exactly the points a GPU stores that dtype). Inputs are fixed pseudo-random numbers; inputs that a
 * GPU holds in the compute dtype (activations, their gradients, matmul weights) are rounded to it first, so
 * both sides start from the same values; fp32 state (master weights, AdamW moments, weight-gradient
 * accumulators, router weights) is not.
 *
 * Outputs are POISONED before every run: every byte 0xFF, a NaN, on both sides. An element the op must write
 * and leaves poisoned is a NaN and fails; an element outside the op's window (strided rows, the padding of a
 * RoPE or RMSNorm window, gather rows past n) must still hold the poison bit for bit. NaN never passes.
 *
 * Tolerances, by where the output lives (M = max |want| over the tensor):
 *   exact         copies, lookups, maxima, RNE rounding (round_compute), sums fixed in i order: bit for bit
 *   kept fp32     outputs that stay fp32 in every dtype (rstd, attention probabilities or logsumexp, losses, sumexp,
 *                 row_dot, scale, AdamW state, norm/embedding weight-gradient accumulators): |got - want| <= 1e-5 M
 *   compute dtype fp32: 1e-5 M for element-wise ops and short reductions, 1e-4 M for GEMMs and attention
 *                 (cuBLAS and the GPU kernels sum in another order; TF32 would break this bound);
 *                 bf16 / fp16: both sides round the same fp32 value, except where their fp32 sums before the
 *                 rounding differ by a few fp32 ulps, which moves the result by at most one ulp of the dtype.
 *                 Measured in ulps of the dtype at max(|want|, M / 64) (elements far below the tensor's scale
 *                 are judged in the ulp of M / 64: a fp32 sum's order error is relative to its terms, not to
 *                 its result): at most 1% of the elements more than 1 ulp away, none more than 4 ulps, and
 *                 relative L2 error ||got - want|| / ||want|| <= 1e-2 (bf16) / 2e-3 (fp16). (The matmul cases
 *                 summed in another order, emulated on the CPU: at most 1 ulp, relative L2 <= 4e-5.)
 *   attention     bf16 / fp16: every element within 2 ulps of the dtype at M, and the relative L2 bound above.
 *                 A fused kernel (FlashAttention-2 section 3.1, cuDNN) rounds P to the dtype before P V (and
 *                 dS before dS K), which the CPU emulation does not; emulating that rounding on the CPU for
 *                 the forward cases below gave up to 23 ulps on elements far below M (so the per-element
 *                 bounds of the compute dtype do not apply), but at most 1 ulp at M and a relative L2 error
 *                 of 2.6e-3 (bf16) / 3.1e-4 (fp16). An attention gradient that vanishes exactly (M = 0: dq and dk
 *                 at T = 1, where each query sees one key) must come out within 1e-5 of 0 in every dtype: flash
 *                 attention forms rowsum(P * dP) as rowsum(dout * out), equal to fp32 rounding only
 *   weight grads  matmul_backward_weight adds a rounded micro-batch contribution to an fp32 accumulator: the
 *                 contributions (got - init against want - init) are compared as a GEMM output
 *
 * Contracts of ops.h pinned here beyond rounding: scatter_add_rows sums each row in i order (bit for bit, so a
 * kernel adding rows with atomicAdd fails .order), sum_squares sums in double and repeats bit for bit, RoPE
 * angles stay accurate at position 4095 (.long: fp32 angle arithmetic is off by ~2e-4 there), an `exact` fp32
 * table rides under a bf16 / fp16 one, fp32 GEMMs are not TF32.
 *
 * The mixed CPU table holds one compute dtype per process, so with no argument this program runs
 * itself once per dtype (`test_ops_gpu fp32|bf16|fp16` runs one) and fails when any run fails. Without a
 * visible CUDA device it fails at once: `make test-gpu` runs on a GPU machine. LOOM_TEST_VERBOSE=1 prints
 * the measured error of every check as a `#` line.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/dtype.h"
#include "core/error.h"
#include "model/ops.h"
#include "tests/test.h"
#ifdef LOOM_CUDA
#include "model/cuda/flash_attn.h"
#include "model/cuda/ops_cuda.h"
#include "tests/gpu/gpu_check.h"

/* what an accumulating output added: fetched - init */
static float *delta(const float *x, const float *init, size_t n) {
    float *d = host_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) d[i] = x[i] - init[i];
    return d;
}

/* ---------------------------------------------------------------------------------------------- */
/* memory                                                                                           */

static void test_memory(void) {
    const struct loom_ops *g = be[0];
    static const size_t sizes[] = {1, 1001, ((size_t)1 << 22) + 3};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        float *zeros = host_alloc(n * sizeof(float)), *x = rand_f32(n, -1, 1), *back = host_alloc(n * sizeof(float));
        float *d = g->alloc(n * sizeof(float));
        g->to_host(back, d, n * sizeof(float));
        compare(nm("memory.n%zu.alloc_zeroed", n), back, zeros, n, KIND_EXACT);
        g->from_host(d, x, n * sizeof(float));
        g->to_host(back, d, n * sizeof(float));
        compare(nm("memory.n%zu.roundtrip", n), back, x, n, KIND_EXACT);
        g->zero(d, n * sizeof(float));
        g->to_host(back, d, n * sizeof(float));
        compare(nm("memory.n%zu.zero", n), back, zeros, n, KIND_EXACT);
        size_t peak = g->peak_bytes ? g->peak_bytes() : 0;
        test_result(peak >= n * sizeof(float), nm("memory.n%zu.peak_bytes", n),
                    "peak_bytes() = %zu with %zu bytes allocated", peak, n * sizeof(float));
        g->free(d);
        release_all();
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* matmul: forward, input gradient (assigned and accumulated), weight gradient (accumulated)       */

static void test_matmul_case(const char *tag, int N, int C, int OC) {
    size_t nx = (size_t)N * C, nw = (size_t)OC * C, no = (size_t)N * OC;
    struct pair x = pair_of(rand_act(nx, -1, 1), nx), w = pair_of(rand_act(nw, -1, 1), nw);
    struct pair dout = pair_of(rand_act(no, -1, 1), no);

    struct pair out = pair_poisoned(no);
    ON_BOTH(matmul_forward, S(out), S(x), S(w), N, C, OC);
    check(nm("matmul%s.forward", tag), out, KIND_OUT_GEMM);

    struct pair dx = pair_poisoned(nx);
    ON_BOTH(matmul_backward_input, S(dx), S(dout), S(w), N, C, OC, 0);
    check(nm("matmul%s.backward_input", tag), dx, KIND_OUT_GEMM);

    struct pair dx_acc = pair_of(rand_act(nx, -1, 1), nx);
    ON_BOTH(matmul_backward_input, S(dx_acc), S(dout), S(w), N, C, OC, 1);
    check(nm("matmul%s.backward_input.accumulate", tag), dx_acc, KIND_OUT_GEMM);

    float *init = rand_f32(nw, -1, 1);
    struct pair dw = pair_of(init, nw);
    ON_BOTH(matmul_backward_weight, S(dw), S(dout), S(x), N, C, OC);
    compare(nm("matmul%s.backward_weight", tag), delta(fetch(dw, 0), init, nw), delta(fetch(dw, 1), init, nw), nw,
            KIND_OUT_GEMM);
    release_all();
}

static void test_matmul(void) {
    test_matmul_case("", 5, 7, 6);
    test_matmul_case(".n1", 1, 64, 8);
    test_matmul_case(".odd", 67, 129, 95);
    test_matmul_case(".q_b", 512, 1536, 3072);     /* Youtu q_b_proj */
    test_matmul_case(".down", 256, 6144, 2048);    /* a long reduction: the SwiGLU down projection */
    test_matmul_case(".head", 64, 512, 32003);     /* an LM head with an odd vocabulary */
}

/* The fp32 table under a bf16 / fp16 one (`exact`, for the MoE router): fp32 GEMMs, nothing rounded. */
static void test_exact(void) {
    const struct loom_ops *g = be[0]->exact, *c = loom_ops_cpu(1);
    int tables_ok = g != NULL && g->compute == LOOM_F32 && be[0]->compute == dt;
    test_result(tables_ok, nm("exact.table"), "compute %d, exact %p (compute %d); want compute %d and an fp32 exact "
                "table", (int)be[0]->compute, (const void *)g, g ? (int)g->compute : -1, (int)dt);
    if (!tables_ok) return;
    enum { N = 96, C = 200, OC = 72 };
    float *x = rand_f32((size_t)N * C, -1, 1), *w = rand_f32((size_t)OC * C, -1, 1);
    float *dx = g->alloc(sizeof(float) * N * C), *dw = g->alloc(sizeof(float) * OC * C);
    float *dout = g->alloc(sizeof(float) * N * OC);
    g->from_host(dx, x, sizeof(float) * N * C);
    g->from_host(dw, w, sizeof(float) * OC * C);
    g->from_host(dout, poison_host((size_t)N * OC), sizeof(float) * N * OC);
    g->matmul_forward(dout, dx, dw, N, C, OC);
    float *got = host_alloc(sizeof(float) * N * OC), *want = host_alloc(sizeof(float) * N * OC);
    g->to_host(got, dout, sizeof(float) * N * OC);
    c->matmul_forward(want, x, w, N, C, OC);
    enum loom_dtype keep = dt;
    dt = LOOM_F32; /* judged as an fp32 GEMM */
    compare(nm("exact.matmul_forward"), got, want, (size_t)N * OC, KIND_OUT_GEMM);
    dt = keep;
    g->free(dx);
    g->free(dw);
    g->free(dout);
    release_all();
}

/* ---------------------------------------------------------------------------------------------- */
/* embedding                                                                                        */

static void test_embedding_case(const char *tag, const int *ids, int N, int V, int C) {
    size_t nw = (size_t)V * C, no = (size_t)N * C;
    struct pair wte = pair_of(rand_act(nw, -1, 1), nw), dout = pair_of(rand_act(no, -1, 1), no);
    struct pair pids = pair_of(ids, (size_t)N);

    struct pair out = pair_poisoned(no);
    ON_BOTH(embedding_forward, S(out), SI(pids), S(wte), N, C);
    check(nm("embedding%s.forward", tag), out, KIND_EXACT);

    struct pair dwte = pair_of(rand_f32(nw, -1, 1), nw);
    ON_BOTH(embedding_backward, S(dwte), S(dout), SI(pids), N, C);
    check(nm("embedding%s.backward", tag), dwte, KIND_KEPT);
    release_all();
}

static void test_embedding(void) {
    static const int ids[] = {3, 1, 3, 0, 9, 3, 1, 7};
    static const int ids_tp[] = {-1, 4, -1, 0, 4, -1, -7, 2, 4, -1};
    test_embedding_case("", ids, 8, 10, 6);
    test_embedding_case(".negative_ids", ids_tp, 10, 5, 6);
    /* 1024 tokens over 50 ids (many repeats, some rows added ~40 times), every 17th id negative */
    enum { N = 1024, V = 1000, C = 2048 };
    int *many = host_alloc(sizeof(int) * N);
    for (int i = 0; i < N; i++) many[i] = i % 17 == 5 ? -1 : (int)test_rng_uniform(&rng_state, 0, 50);
    test_embedding_case(".repeats", many, N, V, C);
}

/* ---------------------------------------------------------------------------------------------- */
/* RMSNorm over the first C columns of row-strided buffers                                          */

/* rows of width ld with [0, C) random and the rest poison */
static float *strided_act(int rows, int C, int ld, double lo, double hi) {
    float *x = poison_host((size_t)rows * ld);
    for (int r = 0; r < rows; r++) fill_act(x + (size_t)r * ld, (size_t)C, lo, hi);
    return x;
}

static void test_rmsnorm_case(const char *tag, int N, int C, int ld_out, int ld_inp) {
    const float eps = 1e-6f;
    size_t nx = (size_t)N * ld_inp, no = (size_t)N * ld_out;
    float *xh = strided_act(N, C, ld_inp, -2, 2);
    for (int c = 0; c < C; c++) xh[ld_inp + c] = loom_round_to(dt, xh[ld_inp + c] * 1e-3f); /* row 1: eps matters */
    struct pair x = pair_of(xh, nx), w = pair_of(rand_act((size_t)C, 0.5, 1.5), (size_t)C);
    struct pair dout = pair_of(strided_act(N, C, ld_out, -1, 1), no);

    struct pair out = pair_poisoned(no), rstd = pair_poisoned((size_t)N);
    ON_BOTH(rmsnorm_forward, S(out), S(rstd), S(x), S(w), N, C, ld_out, ld_inp, eps);
    check(nm("rmsnorm%s.forward", tag), out, KIND_OUT);
    check(nm("rmsnorm%s.rstd", tag), rstd, KIND_KEPT);

    /* the backward of both sides reads the reference's rstd */
    struct pair rstd_ref = pair_of(fetch(rstd, 1), (size_t)N);
    struct pair dx = pair_poisoned(nx), dw = pair_of(rand_f32((size_t)C, -1, 1), (size_t)C);
    ON_BOTH(rmsnorm_backward, S(dx), S(dw), S(dout), S(x), S(w), S(rstd_ref), N, C, ld_out, ld_inp);
    check(nm("rmsnorm%s.backward.dinp", tag), dx, KIND_OUT);
    check(nm("rmsnorm%s.backward.dweight", tag), dw, KIND_KEPT);
    release_all();
}

static void test_rmsnorm(void) {
    test_rmsnorm_case("", 4, 8, 8, 8);
    test_rmsnorm_case(".strided", 5, 7, 12, 10);
    test_rmsnorm_case(".hidden", 512, 2048, 2048, 2048);
    test_rmsnorm_case(".kv_latent", 256, 512, 512, 576); /* MLA: the latent part of [c_kv | k_rope] */
    test_rmsnorm_case(".odd", 33, 1000, 1003, 1001);
}

/* ---------------------------------------------------------------------------------------------- */
/* RoPE, in place, both conventions                                                                 */

/* The window is D columns at offset `off` of each of H heads (head_stride apart) in rows of width ld; every
 * other element is poison, which the op must neither read into the window nor change. */
static void test_rope_case(const char *tag, int N, int T, int H, int ld, int head_stride, int D, int off,
                           float theta) {
    for (int interleaved = 1; interleaved >= 0; interleaved--) {
        const char *style = interleaved ? "interleaved" : "half";
        size_t n = (size_t)N * ld;
        float *xh = poison_host(n), *gh = poison_host(n);
        for (int r = 0; r < N; r++)
            for (int h = 0; h < H; h++) {
                size_t at = (size_t)r * ld + off + (size_t)h * head_stride;
                fill_act(xh + at, (size_t)D, -1, 1);
                fill_act(gh + at, (size_t)D, -1, 1);
            }
        struct pair x = pair_of(xh, n), dx = pair_of(gh, n);
        ON_BOTH(rope_forward, S(x) + off, N, T, H, ld, head_stride, D, theta, interleaved);
        check(nm("rope.%s%s.forward", style, tag), x, KIND_OUT);
        ON_BOTH(rope_backward, S(dx) + off, N, T, H, ld, head_stride, D, theta, interleaved);
        check(nm("rope.%s%s.backward", style, tag), dx, KIND_OUT);
        release_all();
    }
}

static void test_rope(void) {
    test_rope_case("", 8, 4, 2, 16, 8, 8, 0, 10000.0f);
    /* MLA queries: 16 heads of [128 nope | 64 rope], two sequences of 64 */
    test_rope_case(".mla_q", 128, 64, 16, 16 * 192, 192, 64, 128, 1.6e6f);
    /* MLA's shared key: the last 64 columns of [c_kv 512 | k_rope 64], one head */
    test_rope_case(".mla_k", 128, 64, 1, 576, 0, 64, 512, 1.6e6f);
    /* MHA, odd sequence length */
    test_rope_case(".mha", 130, 65, 4, 128, 32, 32, 0, 10000.0f);
    /* long positions: angles up to 4095 rad need more than fp32 arithmetic (the CPU uses double) */
    test_rope_case(".long", 4096, 4096, 2, 128, 64, 64, 0, 1.6e6f);
}

/* ---------------------------------------------------------------------------------------------- */
/* causal attention with grouped key/value heads, Dqk != Dv: flash attention on the GPU where it covers the head
 * widths (loom_cuda_set_flash_attention, on by default), else the materialised kernels                        */

static int flash_on = 1;

/* device buffers of n0 floats on the GPU side and n1 on the reference side, poisoned (fetch and check need one
 * size: read each side with be[s]->to_host) */
static struct pair pair_poisoned_each(size_t n0, size_t n1) {
    struct pair p = {{NULL, NULL}, 0};
    size_t n[2] = {n0, n1};
    for (int s = 0; s < 2; s++) {
        p.s[s] = device_alloc(s, n[s] * 4);
        be[s]->from_host(p.s[s], poison_host(n[s]), n[s] * 4);
    }
    return p;
}

/* lse[b, h, t] = log Σ_j<=t exp(scale q[b,t,h,:] . k[b,j,h/(H/Hkv),:]) in double: what flash attention saves */
static float *lse_reference(const float *q, const float *k, int B, int T, int H, int Hkv, int Dqk, float scale) {
    float *lse = host_alloc(sizeof(float) * (size_t)B * H * T);
    double *s = host_alloc(sizeof(double) * (size_t)T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                const float *qt = q + (((size_t)b * T + t) * H + h) * Dqk;
                double m = -INFINITY, sum = 0;
                for (int j = 0; j <= t; j++) {
                    const float *kj = k + (((size_t)b * T + j) * Hkv + h / (H / Hkv)) * Dqk;
                    double d = 0;
                    for (int i = 0; i < Dqk; i++) d += (double)qt[i] * kj[i];
                    s[j] = d * scale;
                    m = fmax(m, s[j]);
                }
                for (int j = 0; j <= t; j++) sum += exp(s[j] - m);
                lse[((size_t)b * H + h) * T + t] = (float)(m + log(sum));
            }
    return lse;
}

static void test_attention_case(const char *tag, int B, int T, int H, int Hkv, int Dqk, int Dv) {
    float scale = 1.0f / sqrtf((float)Dqk);
    size_t nq = (size_t)B * T * H * Dqk, nk = (size_t)B * T * Hkv * Dqk, nv = (size_t)B * T * Hkv * Dv;
    size_t no = (size_t)B * T * H * Dv, np = (size_t)B * H * T * T, nl = (size_t)B * H * T;
    float *qh = rand_act(nq, -2, 2), *kh = rand_act(nk, -1, 1);
    struct pair q = pair_of(qh, nq), k = pair_of(kh, nk);
    struct pair v = pair_of(rand_act(nv, -1, 1), nv), dout = pair_of(rand_act(no, -1, 1), no);

    /* what each side saves: the CPU the probabilities; the GPU the logsumexp when flash attention runs */
    int flash = flash_on && loom_flash_attention_supports(Dqk, Dv, dt);
    size_t ns[2] = {be[0]->attention_saved_floats(B, T, H, Dqk, Dv), be[1]->attention_saved_floats(B, T, H, Dqk, Dv)};
    test_result(ns[0] == (flash ? nl : np) && ns[1] == np, nm("attention%s.saved_floats", tag),
                "GPU %zu, CPU %zu; want GPU %zu (%s), CPU %zu (the probabilities)", ns[0], ns[1], flash ? nl : np,
                flash ? "flash attention: the logsumexp" : "the probabilities", np);
    if (ns[0] != (flash ? nl : np)) {
        release_all();
        return;
    }

    struct pair out = pair_poisoned(no), saved = pair_poisoned_each(ns[0], ns[1]);
    ON_BOTH(attention_forward, S(out), S(saved), S(q), S(k), S(v), B, T, H, Hkv, Dqk, Dv, scale);
    check(nm("attention%s.forward", tag), out, KIND_ATTN);

    float *sg = host_alloc(ns[0] * sizeof(float));
    be[0]->to_host(sg, saved.s[0], ns[0] * sizeof(float));
    if (flash) {
        compare(nm("attention%s.lse", tag), sg, lse_reference(qh, kh, B, T, H, Hkv, Dqk, scale), nl, KIND_KEPT);
    } else {
        /* only the causal part of probs is specified (each side's backward reads its own) */
        float *pc = host_alloc(np * sizeof(float));
        be[1]->to_host(pc, saved.s[1], np * sizeof(float));
        size_t ncausal = (size_t)B * H * T * (T + 1) / 2, j = 0;
        float *cg = host_alloc(ncausal * sizeof(float)), *cc = host_alloc(ncausal * sizeof(float));
        for (size_t bh = 0; bh < (size_t)B * H; bh++)
            for (int t = 0; t < T; t++)
                for (int u = 0; u <= t; u++, j++) {
                    cg[j] = sg[(bh * T + t) * T + u];
                    cc[j] = pc[(bh * T + t) * T + u];
                }
        compare(nm("attention%s.probs", tag), cg, cc, ncausal, KIND_KEPT);
    }

    struct pair dq = pair_poisoned(nq), dk = pair_poisoned(nk), dv = pair_poisoned(nv);
    ON_BOTH(attention_backward, S(dq), S(dk), S(dv), S(dout), S(out), S(saved), S(q), S(k), S(v), B, T, H, Hkv, Dqk,
            Dv, scale);
    check(nm("attention%s.backward.dq", tag), dq, KIND_ATTN);
    check(nm("attention%s.backward.dk", tag), dk, KIND_ATTN);
    check(nm("attention%s.backward.dv", tag), dv, KIND_ATTN);

    if (flash) {
        /* the GPU again into freshly poisoned buffers: every output bit for bit as the first time */
        struct pair out2 = pair_poisoned(no), saved2 = pair_poisoned_each(ns[0], ns[1]);
        struct pair dq2 = pair_poisoned(nq), dk2 = pair_poisoned(nk), dv2 = pair_poisoned(nv);
        side = 0;
        be[0]->attention_forward(S(out2), S(saved2), S(q), S(k), S(v), B, T, H, Hkv, Dqk, Dv, scale);
        be[0]->attention_backward(S(dq2), S(dk2), S(dv2), S(dout), S(out2), S(saved2), S(q), S(k), S(v), B, T, H, Hkv,
                                  Dqk, Dv, scale);
        float *sg2 = host_alloc(nl * sizeof(float));
        be[0]->to_host(sg2, saved2.s[0], nl * sizeof(float));
        compare(nm("attention%s.repeat.forward", tag), fetch(out2, 0), fetch(out, 0), no, KIND_EXACT);
        compare(nm("attention%s.repeat.lse", tag), sg2, sg, nl, KIND_EXACT);
        compare(nm("attention%s.repeat.dq", tag), fetch(dq2, 0), fetch(dq, 0), nq, KIND_EXACT);
        compare(nm("attention%s.repeat.dk", tag), fetch(dk2, 0), fetch(dk, 0), nk, KIND_EXACT);
        compare(nm("attention%s.repeat.dv", tag), fetch(dv2, 0), fetch(dv, 0), nv, KIND_EXACT);
    }
    release_all();
}

static void test_attention(void) {
    test_attention_case("", 2, 5, 4, 2, 6, 4);              /* GQA, Dqk != Dv */
    test_attention_case(".mha", 2, 37, 4, 4, 24, 16);       /* Hkv = H */
    test_attention_case(".mqa", 1, 4, 3, 1, 5, 3);          /* Hkv = 1 */
    test_attention_case(".tiny_mla", 2, 64, 4, 4, 48, 32);  /* configs/models/tiny-mla.ini */
    test_attention_case(".tiny_mha", 2, 64, 4, 2, 32, 32);  /* configs/models/tiny-mha.ini */
    test_attention_case(".mla", 1, 300, 16, 16, 192, 128);  /* Youtu MLA heads: q/k 192, v 128 */
    test_attention_case(".mla_long", 1, 1024, 4, 4, 192, 128);
    test_attention_case(".gqa128", 2, 257, 8, 2, 128, 128);

    /* flash attention: the head widths it must serve (Youtu's MLA, dots.llm1's MHA, a small head) on this GPU,
     * at lengths inside one tile, on a tile edge and past it, with H = Hkv and GQA */
    static const int widths[][2] = {{192, 128}, {128, 128}, {64, 64}};
    static const int lengths[] = {1, 17, 128, 257};
    for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++) {
        int Dqk = widths[w][0], Dv = widths[w][1];
        test_result(loom_flash_attention_supports(Dqk, Dv, dt), nm("attention.flash.%dx%d.supported", Dqk, Dv),
                    "no flash-attention kernel for Dqk %d, Dv %d in %s on this GPU", Dqk, Dv, dt_name);
        for (size_t t = 0; t < sizeof lengths / sizeof lengths[0]; t++)
            for (int Hkv = 4; Hkv >= 2; Hkv -= 2) {
                char tag[64];
                snprintf(tag, sizeof tag, ".flash.%dx%d.T%d.Hkv%d", Dqk, Dv, lengths[t], Hkv);
                test_attention_case(tag, 2, lengths[t], 4, Hkv, Dqk, Dv);
            }
    }

    /* the materialised kernels where flash attention would run */
    loom_cuda_set_flash_attention(flash_on = 0);
    test_attention_case(".materialised.mla", 1, 300, 16, 16, 192, 128);
    test_attention_case(".materialised.gqa128", 2, 257, 8, 2, 128, 128);
    loom_cuda_set_flash_attention(flash_on = 1);
}

/* ---------------------------------------------------------------------------------------------- */
/* SwiGLU                                                                                           */

static void test_swiglu_case(const char *tag, int N, int F) {
    size_t n = (size_t)N * F;
    struct pair gate = pair_of(rand_act(n, -6, 6), n), up = pair_of(rand_act(n, -1, 1), n);
    struct pair dout = pair_of(rand_act(n, -1, 1), n);
    struct pair out = pair_poisoned(n);
    ON_BOTH(swiglu_forward, S(out), S(gate), S(up), N, F);
    check(nm("swiglu%s.forward", tag), out, KIND_OUT);
    struct pair dgate = pair_poisoned(n), dup = pair_poisoned(n);
    ON_BOTH(swiglu_backward, S(dgate), S(dup), S(dout), S(gate), S(up), N, F);
    check(nm("swiglu%s.backward.dgate", tag), dgate, KIND_OUT);
    check(nm("swiglu%s.backward.dup", tag), dup, KIND_OUT);
    release_all();
}

static void test_swiglu(void) {
    test_swiglu_case("", 5, 13);
    test_swiglu_case(".youtu", 512, 6144);
}

/* ---------------------------------------------------------------------------------------------- */
/* element-wise, round_compute, copy_2d                                                             */

static void test_elementwise_case(const char *tag, size_t n) {
    struct pair a = pair_of(rand_act(n, -1, 1), n), b = pair_of(rand_act(n, -1, 1), n);
    struct pair out = pair_poisoned(n);
    ON_BOTH(add, S(out), S(a), S(b), n);
    check(nm("add%s", tag), out, KIND_OUT);
    ON_BOTH(accumulate, S(a), S(b), n);
    check(nm("accumulate%s", tag), a, KIND_OUT);
    ON_BOTH(scale, S(b), -1.75f, n);
    check(nm("scale%s", tag), b, KIND_KEPT);
    release_all();
}

/* round to nearest even, fp16 overflow to inf, subnormals, signed zero: bit for bit */
static void test_round_compute(void) {
    enum { N = 4099 };
    float *x = rand_f32(N, -3, 3);
    static const float special[] = {
        1.0f + 0x1p-8f,                /* bf16: halfway between 1 and 1 + 2^-7: to even (1) */
        1.0f + 0x1p-7f + 0x1p-8f,      /* bf16: halfway, to even (1 + 2^-6) */
        1.0f + 0x1p-11f,               /* fp16: halfway between 1 and 1 + 2^-10: to even (1) */
        1.0f + 0x1p-10f + 0x1p-11f,    /* fp16: halfway, to even */
        70000.0f, -70000.0f, 65520.0f, /* fp16: inf, -inf, and the first value that rounds to inf */
        65504.0f, 1e-8f, -3e-6f, 6e-8f, -0.0f, 0.0f, 3.0e38f, 1e-40f,
    };
    memcpy(x, special, sizeof special);
    struct pair p = pair_of(x, N);
    ON_BOTH(round_compute, S(p), N);
    check(nm("round_compute"), p, KIND_EXACT);
    release_all();
}

static void test_copy_2d_case(const char *tag, int rows, int cols, int ld_src, int ld_dst) {
    size_t ns = (size_t)rows * ld_src, nd = (size_t)rows * ld_dst;
    struct pair src = pair_of(rand_act(ns, -1, 1), ns);
    struct pair dst = pair_poisoned(nd);
    ON_BOTH(copy_2d, S(dst), ld_dst, S(src), ld_src, rows, cols, 0);
    check(nm("copy_2d%s.copy", tag), dst, KIND_EXACT);
    /* accumulate: an fp32 sum in every dtype (the MLA rope key's gradient over the heads), outside the
     * window poison */
    float *init = poison_host(nd);
    for (int r = 0; r < rows; r++) fill_f32(init + (size_t)r * ld_dst, (size_t)cols, -1, 1);
    struct pair acc = pair_of(init, nd);
    ON_BOTH(copy_2d, S(acc), ld_dst, S(src), ld_src, rows, cols, 1);
    check(nm("copy_2d%s.accumulate", tag), acc, KIND_EXACT);
    release_all();
}

static void test_elementwise(void) {
    test_elementwise_case("", 1001);
    test_elementwise_case(".large", ((size_t)3 << 20) + 1);
    test_round_compute();
    test_copy_2d_case("", 5, 7, 9, 11);
    test_copy_2d_case(".mla_k_nope", 512, 128, 16 * 256, 16 * 192); /* kv_b's k_nope into k, one head */
    test_copy_2d_case(".mla_k_rope", 512, 64, 576, 16 * 192);       /* the shared rope key into each head */
}

/* ---------------------------------------------------------------------------------------------- */
/* rows by index: gather_rows, scatter_add_rows, row_dot (the MoE permutation)                      */

static void test_rows_case(const char *tag, const int *idx, int S_rows, int NI, int C) {
    int ND = NI + 3; /* gather output rows past n must keep their poison */
    size_t ns = (size_t)S_rows * C;
    struct pair src = pair_of(rand_act(ns, -1, 1), ns), pidx = pair_of(idx, (size_t)NI);
    float *scale_h = rand_f32((size_t)NI, -2, 2); /* router weights: fp32 */
    scale_h[NI / 2] = 0;
    struct pair scale = pair_of(scale_h, (size_t)NI), dout = pair_of(rand_act((size_t)NI * C, -1, 1), (size_t)NI * C);

    for (int scaled = 0; scaled <= 1; scaled++) {
        const char *mode = scaled ? ".scale" : "";
        struct pair dst = pair_poisoned((size_t)ND * C);
        ON_BOTH(gather_rows, S(dst), S(src), SI(pidx), scaled ? S(scale) : NULL, NI, C);
        check(nm("gather_rows%s%s", tag, mode), dst, scaled ? KIND_OUT : KIND_EXACT);

        struct pair acc = pair_of(rand_act(ns, -1, 1), ns);
        ON_BOTH(scatter_add_rows, S(acc), S(dout), SI(pidx), scaled ? S(scale) : NULL, NI, C);
        check(nm("scatter_add_rows%s%s", tag, mode), acc, KIND_OUT);
    }
    struct pair out = pair_poisoned((size_t)NI);
    ON_BOTH(row_dot, S(out), S(dout), S(src), SI(pidx), NI, C);
    check(nm("row_dot%s", tag), out, KIND_KEPT);
    release_all();
}

static void test_rows(void) {
    static const int idx[] = {3, 0, 6, 3, 3, 1, 6, 5, 0, 2};
    test_rows_case("", idx, 7, 10, 9);
    /* top-2 routing of 1024 tokens: 2048 rows of width 2048 */
    enum { S_ROWS = 1024, NI = 2048, C = 2048 };
    int *many = host_alloc(sizeof(int) * NI);
    for (int i = 0; i < NI; i++) many[i] = (int)test_rng_uniform(&rng_state, 0, S_ROWS);
    test_rows_case(".moe", many, S_ROWS, NI, C);
}

/* ops.h: "rows of dst summed in i order". Values over 12 decades make fp32 sums depend on their order, so
 * the GPU must equal the CPU's sequential loop bit for bit (unscaled: no multiply an FMA could fuse). */
static void test_scatter_order(void) {
    enum { S_ROWS = 3, C = 40, NI = 16 };
    static const int idx[NI] = {2, 0, 2, 2, 1, 2, 0, 2, 2, 1, 0, 2, 2, 0, 2, 2};
    float *src = rand_f32((size_t)NI * C, -1, 1);
    for (int i = 0; i < NI * C; i++) src[i] *= (float)pow(10, floor(test_rng_uniform(&rng_state, -6, 6)));
    loom_round_array(dt, src, (size_t)NI * C);
    struct pair psrc = pair_of(src, (size_t)NI * C), pidx = pair_of(idx, NI);
    struct pair dst = pair_of(rand_act((size_t)S_ROWS * C, -1, 1), (size_t)S_ROWS * C);
    ON_BOTH(scatter_add_rows, S(dst), S(psrc), SI(pidx), NULL, NI, C);
    check(nm("scatter_add_rows.order"), dst, KIND_EXACT);
    release_all();
}

/* ---------------------------------------------------------------------------------------------- */
/* cross-entropy, fused and vocabulary-parallel                                                     */

static float *logits_case(int N, int V) {
    float *x = rand_f32((size_t)N * V, -3, 3);
    for (int i = 0; i < V; i++) x[(size_t)(N / 2) * V + i] *= 40; /* up to +-120: exp overflows unless shifted */
    loom_round_array(dt, x, (size_t)N * V);
    return x;
}

static int *targets_case(int N, int V) {
    int *t = host_alloc(sizeof(int) * N);
    for (int n = 0; n < N; n++) t[n] = n % 5 == 2 ? -1 : (int)test_rng_uniform(&rng_state, 0, V);
    t[0] = V - 1;
    return t;
}

static void test_cross_entropy_case(const char *tag, int N, int V, float dloss) {
    size_t nl = (size_t)N * V;
    float *lh = logits_case(N, V);
    struct pair logits = pair_of(lh, nl), targets = pair_of(targets_case(N, V), (size_t)N);

    struct pair losses = pair_poisoned((size_t)N);
    ON_BOTH(cross_entropy, S(losses), NULL, S(logits), SI(targets), N, V, dloss);
    check(nm("cross_entropy%s.loss", tag), losses, KIND_KEPT);
    compare(nm("cross_entropy%s.loss.logits_unchanged", tag), fetch(logits, 0), lh, nl, KIND_EXACT);

    struct pair dlogits = pair_poisoned(nl);
    poison(losses);
    ON_BOTH(cross_entropy, S(losses), S(dlogits), S(logits), SI(targets), N, V, dloss);
    check(nm("cross_entropy%s.backward.loss", tag), losses, KIND_KEPT);
    check(nm("cross_entropy%s.backward.dlogits", tag), dlogits, KIND_OUT);

    poison(losses);
    ON_BOTH(cross_entropy, S(losses), S(logits), S(logits), SI(targets), N, V, dloss);
    check(nm("cross_entropy%s.alias.loss", tag), losses, KIND_KEPT);
    check(nm("cross_entropy%s.alias.dlogits", tag), logits, KIND_OUT);
    release_all();
}

/* The [N, V] logits split at v0[0..parts-1] into per-rank slices; between the steps the host combines the
 * reference's partial results (max, sums in slice order) and hands the same values to both sides. */
static void test_xent_case(const char *tag, int N, int V, const int *v0, int parts, float dloss) {
    float *lh = logits_case(N, V);
    int *th = targets_case(N, V);
    struct pair targets = pair_of(th, (size_t)N), slice[4];
    CHECK(parts <= 4, "at most 4 slices");
    float *rowmax = host_alloc(sizeof(float) * N), *sumexp = host_alloc(sizeof(float) * N);
    float *tlogit = host_alloc(sizeof(float) * N);
    for (int n = 0; n < N; n++) rowmax[n] = -INFINITY;

    for (int r = 0; r < parts; r++) {
        int Vr = (r + 1 < parts ? v0[r + 1] : V) - v0[r];
        float *sh = host_alloc(sizeof(float) * N * (size_t)Vr);
        for (int n = 0; n < N; n++) memcpy(sh + (size_t)n * Vr, lh + (size_t)n * V + v0[r], sizeof(float) * Vr);
        slice[r] = pair_of(sh, (size_t)N * Vr);
        struct pair mx = pair_poisoned((size_t)N);
        ON_BOTH(xent_rowmax, S(mx), S(slice[r]), N, Vr);
        check(nm("xent%s.rank%d.rowmax", tag, r), mx, KIND_EXACT);
        float *m = fetch(mx, 1);
        for (int n = 0; n < N; n++) rowmax[n] = fmaxf(rowmax[n], m[n]);
    }
    struct pair prowmax = pair_of(rowmax, (size_t)N);
    for (int r = 0; r < parts; r++) {
        int Vr = (r + 1 < parts ? v0[r + 1] : V) - v0[r];
        struct pair se = pair_poisoned((size_t)N), tl = pair_poisoned((size_t)N);
        ON_BOTH(xent_sumexp, S(se), S(tl), S(slice[r]), SI(targets), S(prowmax), N, Vr, v0[r]);
        check(nm("xent%s.rank%d.sumexp", tag, r), se, KIND_KEPT);
        check(nm("xent%s.rank%d.tlogit", tag, r), tl, KIND_EXACT);
        float *s = fetch(se, 1), *t = fetch(tl, 1);
        for (int n = 0; n < N; n++) {
            sumexp[n] = r ? sumexp[n] + s[n] : s[n];
            tlogit[n] = r ? tlogit[n] + t[n] : t[n];
        }
    }
    struct pair psumexp = pair_of(sumexp, (size_t)N), ptlogit = pair_of(tlogit, (size_t)N);
    for (int r = 0; r < parts; r++) {
        int Vr = (r + 1 < parts ? v0[r + 1] : V) - v0[r];
        struct pair losses = pair_poisoned((size_t)N);
        ON_BOTH(xent_finish, S(losses), NULL, S(slice[r]), SI(targets), S(prowmax), S(psumexp), S(ptlogit), N, Vr,
                v0[r], dloss);
        check(nm("xent%s.rank%d.loss", tag, r), losses, KIND_KEPT);
        struct pair dl = pair_poisoned((size_t)N * Vr);
        poison(losses);
        ON_BOTH(xent_finish, S(losses), S(dl), S(slice[r]), SI(targets), S(prowmax), S(psumexp), S(ptlogit), N, Vr,
                v0[r], dloss);
        check(nm("xent%s.rank%d.backward.loss", tag, r), losses, KIND_KEPT);
        check(nm("xent%s.rank%d.backward.dlogits", tag, r), dl, KIND_OUT);
        poison(losses);
        ON_BOTH(xent_finish, S(losses), S(slice[r]), S(slice[r]), SI(targets), S(prowmax), S(psumexp), S(ptlogit), N,
                Vr, v0[r], dloss);
        check(nm("xent%s.rank%d.alias.dlogits", tag, r), slice[r], KIND_OUT);
    }
    release_all();
}

static void test_cross_entropy(void) {
    test_cross_entropy_case("", 6, 11, 0.2f);
    test_cross_entropy_case(".vocab32003", 64, 32003, 1.0f / 256);
    test_cross_entropy_case(".vocab128256", 32, 128256, 1.0f / 256);
    static const int two[] = {0, 5}, three[] = {0, 3, 7}, big[] = {0, 64128};
    test_xent_case(".tp1", 7, 11, two, 1, 0.2f);
    test_xent_case(".tp2", 7, 11, two, 2, 0.2f);
    test_xent_case(".tp3", 7, 11, three, 3, 0.2f);
    test_xent_case(".tp2_vocab128256", 32, 128256, big, 2, 1.0f / 256);
}

/* ---------------------------------------------------------------------------------------------- */
/* optimizer: sum_squares, adamw_update (fp32 in every dtype)                                       */

static void test_sum_squares(void) {
    static const size_t sizes[] = {0, 50021, ((size_t)1 << 24) + 7};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        struct pair x = pair_of(rand_f32(n, -3, 3), n);
        double got = be[0]->sum_squares(x.s[0], n), again = be[0]->sum_squares(x.s[0], n);
        double want = be[1]->sum_squares(x.s[1], n);
        /* products of fp32 values are exact in double: only the summation order may differ */
        double rel = want > 0 ? fabs(got - want) / want : fabs(got);
        test_result(rel <= 1e-10, nm("sum_squares.n%zu", n), "got %.17g want %.17g (relative difference %.3g, "
                    "limit 1e-10: the sum must be formed in double)", got, want, rel);
        test_result(memcmp(&got, &again, sizeof got) == 0, nm("sum_squares.n%zu.deterministic", n),
                    "two calls gave %.17g and %.17g", got, again);
        release_all();
    }
}

static void test_adamw_case(const char *tag, size_t n) {
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
    static const long steps[] = {1, 2, 3, 4, 5, 1000};
    struct pair p = pair_of(rand_f32(n, -1, 1), n);
    struct pair m = pair_of(host_alloc(n * sizeof(float)), n), v = pair_of(host_alloc(n * sizeof(float)), n);
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        float *gh = rand_f32(n, -2, 2);
        gh[0] = 0;     /* no gradient: still decays */
        gh[1] = 2e-7f; /* sqrt(v_hat) ~ 1e-7: eps matters */
        struct pair grad = pair_of(gh, n);
        ON_BOTH(adamw_update, S(p), S(grad), S(m), S(v), n, lr, b1, b2, eps, wd, gs, steps[s]);
        if (steps[s] == 1 || steps[s] == 5 || steps[s] == 1000) {
            check(nm("adamw%s.step%ld.param", tag, steps[s]), p, KIND_KEPT);
            check(nm("adamw%s.step%ld.m", tag, steps[s]), m, KIND_KEPT);
            check(nm("adamw%s.step%ld.v", tag, steps[s]), v, KIND_KEPT);
        }
    }
    release_all();
}

static void test_adamw(void) {
    test_adamw_case("", 37);
    test_adamw_case(".large", ((size_t)1 << 20) + 3);
}

/* ---------------------------------------------------------------------------------------------- */
/* every check, in one dtype (gpu_test_main runs one process per dtype)                             */

static void run_checks(void) {
    test_memory();
    test_matmul();
    test_exact();
    test_embedding();
    test_rmsnorm();
    test_rope();
    test_attention();
    test_swiglu();
    test_elementwise();
    test_rows();
    test_scatter_order();
    test_cross_entropy();
    test_sum_squares();
    test_adamw();
}

int main(int argc, char **argv) {
    static const struct gpu_test t = {.name = "ops", .seed = 0x9e3779b97f4a7c15ull, .run = run_checks};
    return gpu_test_main(argc, argv, &t);
}

#else /* !LOOM_CUDA */

int main(void) {
    printf("FAIL gpu.ops: this build has no CUDA backend (LOOM_CUDA is not defined: nvcc not found, or no "
           "model/cuda sources); make test-gpu needs one\n");
    return 2;
}

#endif
