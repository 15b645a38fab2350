/*
 * model/ops_cpu_mixed.c — mixed precision on the CPU backend, by emulation.
 *
 * The CPU backend computes in fp32; this table wraps it and rounds (round to nearest even; fp16
 * overflows to inf and keeps subnormals) every tensor the CUDA backend stores in the compute dtype, at
 * the point it stores it, so a CPU run is the reference for a GPU run in that dtype:
 *   - op outputs: linear layers (forward and input gradient, grouped or not), embedding rows, RMSNorm outputs
 *     and input gradients, RoPE, attention outputs and q/k/v gradients, SwiGLU and its gradients, residual
 *     adds, the routed experts' gathers and weighted combines (moe_permute, moe_unpermute and its backward's
 *     rows), and the loss's d(logits);
 *   - weight gradients: each micro-batch's contribution is produced in the compute dtype, then added to
 *     the fp32 accumulator (matmul_backward_weight);
 *   - kept in fp32: RMSNorm statistics (rstd), attention probabilities (softmax), the cross-entropy,
 *     norm-weight and embedding gradient accumulation, and everything the router does (the MoE layer
 *     calls `exact`, the unwrapped table, for the router's GEMMs, routing, balance statistics and the
 *     routing weights' gradient).
 * Sums formed outside the ops (tensor-parallel all-reduces of activations and their gradients) are
 * rounded by the model through round_compute, as a bf16 all-reduce would leave them. The MLA rope key's
 * gradient is summed over the heads in fp32 (copy_2d) and rounded once by RoPE's backward, as a kernel
 * that keeps that sum in registers would.
 * The weights come in already rounded (the model keeps fp32 masters, see loom_model_sync_weights).
 */
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "core/error.h"
#include "model/ops.h"

static const struct loom_ops *base;
static enum loom_dtype dt;

static void rnd(float *x, size_t n) { loom_round_array(dt, x, n); }

static void rnd_rows(float *x, int rows, int cols, int ld) {
    for (int r = 0; r < rows; r++) rnd(x + (size_t)r * ld, (size_t)cols);
}

static void matmul_forward(float *out, const float *inp, const float *weight, int N, int C, int OC) {
    base->matmul_forward(out, inp, weight, N, C, OC);
    rnd(out, (size_t)N * OC);
}

static void matmul_backward_input(float *dinp, const float *dout, const float *weight, int N, int C, int OC,
                                  int accumulate) {
    base->matmul_backward_input(dinp, dout, weight, N, C, OC, accumulate);
    rnd(dinp, (size_t)N * C);
}

/* the micro-batch's weight gradient in the compute dtype, accumulated in fp32 */
static void matmul_backward_weight(float *dweight, const float *dout, const float *inp, int N, int C, int OC) {
    size_t n = (size_t)OC * C;
    float *part = base->alloc(sizeof(float) * n);
    base->matmul_backward_weight(part, dout, inp, N, C, OC);
    rnd(part, n);
    base->accumulate(dweight, part, n);
    base->free(part);
}

/* the grouped GEMMs: each group as the single-matrix ops above (outputs and weight-gradient parts rounded) */
static void grouped_matmul_forward(float *out, const float *inp, const float *weight, size_t stride, const int *start,
                                   const int *count, int G, int C, int OC) {
    for (int g = 0; g < G; g++)
        if (count[g])
            matmul_forward(out + (size_t)start[g] * OC, inp + (size_t)start[g] * C, weight + g * stride, count[g], C,
                           OC);
}

static void grouped_matmul_backward_input(float *dinp, const float *dout, const float *weight, size_t stride,
                                          const int *start, const int *count, int G, int C, int OC, int accumulate) {
    for (int g = 0; g < G; g++)
        if (count[g])
            matmul_backward_input(dinp + (size_t)start[g] * C, dout + (size_t)start[g] * OC, weight + g * stride,
                                  count[g], C, OC, accumulate);
}

static void grouped_matmul_backward_weight(float *dweight, size_t stride, const float *dout, const float *inp,
                                           const int *start, const int *count, int G, int C, int OC) {
    for (int g = 0; g < G; g++)
        if (count[g])
            matmul_backward_weight(dweight + g * stride, dout + (size_t)start[g] * OC, inp + (size_t)start[g] * C,
                                   count[g], C, OC);
}

static void embedding_forward(float *out, const int *ids, const float *wte, int N, int C) {
    base->embedding_forward(out, ids, wte, N, C);
    rnd(out, (size_t)N * C);
}

static void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, int ld_out,
                            int ld_inp, float eps) {
    base->rmsnorm_forward(out, rstd, inp, weight, N, C, ld_out, ld_inp, eps);
    rnd_rows(out, N, C, ld_out);
}

static void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                             const float *rstd, int N, int C, int ld_out, int ld_inp) {
    base->rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, N, C, ld_out, ld_inp);
    rnd_rows(dinp, N, C, ld_inp);
}

static void rope_heads(float *x, int N, int H, int ld, int head_stride, int D) {
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++) rnd(x + (size_t)n * ld + (size_t)h * head_stride, (size_t)D);
}

static void rope_forward(float *x, int N, int T, int H, int ld, int head_stride, int D, float theta, int interleaved) {
    base->rope_forward(x, N, T, H, ld, head_stride, D, theta, interleaved);
    rope_heads(x, N, H, ld, head_stride, D);
}

static void rope_backward(float *dx, int N, int T, int H, int ld, int head_stride, int D, float theta,
                          int interleaved) {
    base->rope_backward(dx, N, T, H, ld, head_stride, D, theta, interleaved);
    rope_heads(dx, N, H, ld, head_stride, D);
}

static void attention_forward(float *out, float *saved, const float *q, const float *k, const float *v, int B, int T,
                              int H, int Hkv, int Dqk, int Dv, float scale) {
    base->attention_forward(out, saved, q, k, v, B, T, H, Hkv, Dqk, Dv, scale);
    rnd(out, (size_t)B * T * H * Dv);
}

static void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *saved,
                               const float *q, const float *k, const float *v, int B, int T, int H, int Hkv, int Dqk,
                               int Dv, float scale) {
    base->attention_backward(dq, dk, dv, dout, out, saved, q, k, v, B, T, H, Hkv, Dqk, Dv, scale);
    size_t N = (size_t)B * T;
    rnd(dq, N * H * Dqk);
    rnd(dk, N * Hkv * Dqk);
    rnd(dv, N * Hkv * Dv);
}

static void swiglu_forward(float *out, const float *gate, const float *up, int N, int F) {
    base->swiglu_forward(out, gate, up, N, F);
    rnd(out, (size_t)N * F);
}

static void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int N,
                            int F) {
    base->swiglu_backward(dgate, dup, dout, gate, up, N, F);
    rnd(dgate, (size_t)N * F);
    rnd(dup, (size_t)N * F);
}

static void add(float *out, const float *a, const float *b, size_t n) {
    base->add(out, a, b, n);
    rnd(out, n);
}

static void accumulate(float *dst, const float *src, size_t n) {
    base->accumulate(dst, src, n);
    rnd(dst, n);
}

static void gather_rows(float *dst, const float *src, const int *idx, const float *scale, int n, int C) {
    base->gather_rows(dst, src, idx, scale, n, C);
    rnd(dst, (size_t)n * C);
}

static void scatter_add_rows(float *dst, const float *src, const int *idx, const float *scale, int n, int C) {
    base->scatter_add_rows(dst, src, idx, scale, n, C);
    for (int i = 0; i < n; i++) rnd(dst + (size_t)idx[i] * C, (size_t)C);
}

/* the MoE permutation: the gathered rows, the combined token rows and the scaled gradient rows are stored in the
 * compute dtype (the routing weights and their gradient stay fp32) */
static void moe_permute(float *dst, const float *src, const int *rows, const float *scale, int P, int C) {
    base->moe_permute(dst, src, rows, scale, P, C);
    rnd(dst, (size_t)P * C);
}

static void moe_unpermute(float *out, const float *src, const int *pos, const float *scale, int n0, int n1, int K,
                          int C) {
    base->moe_unpermute(out, src, pos, scale, n0, n1, K, C);
    rnd(out + (size_t)n0 * C, (size_t)(n1 - n0) * C);
}

static void moe_unpermute_backward(float *dsrc, float *dscale, const float *dout, const float *src, const int *rows,
                                   const float *scale, int P, int C) {
    base->moe_unpermute_backward(dsrc, dscale, dout, src, rows, scale, P, C);
    rnd(dsrc, (size_t)P * C);
}

static void cross_entropy(float *losses, float *dlogits, const float *logits, const int *targets, int N, int V,
                          float dloss) {
    base->cross_entropy(losses, dlogits, logits, targets, N, V, dloss);
    if (dlogits) rnd(dlogits, (size_t)N * V);
}

static void xent_finish(float *losses, float *dlogits, const float *logits, const int *targets, const float *rowmax,
                        const float *sumexp, const float *tlogit, int N, int V, int v0, float dloss) {
    base->xent_finish(losses, dlogits, logits, targets, rowmax, sumexp, tlogit, N, V, v0, dloss);
    if (dlogits) rnd(dlogits, (size_t)N * V);
}

static struct loom_ops mixed;

const struct loom_ops *loom_ops_cpu_mixed(const struct loom_ops *cpu, enum loom_dtype compute) {
    if (compute == LOOM_F32) return cpu;
    CHECK(base == NULL || (base == cpu && dt == compute), "one compute dtype per process");
    base = cpu;
    dt = compute;
    mixed = *cpu;
    mixed.name = compute == LOOM_BF16 ? "cpu (bf16 emulated)" : "cpu (fp16 emulated)";
    mixed.compute = compute;
    mixed.exact = cpu;
    mixed.matmul_forward = matmul_forward;
    mixed.matmul_backward_input = matmul_backward_input;
    mixed.matmul_backward_weight = matmul_backward_weight;
    mixed.grouped_matmul_forward = grouped_matmul_forward;
    mixed.grouped_matmul_backward_input = grouped_matmul_backward_input;
    mixed.grouped_matmul_backward_weight = grouped_matmul_backward_weight;
    mixed.embedding_forward = embedding_forward;
    mixed.rmsnorm_forward = rmsnorm_forward;
    mixed.rmsnorm_backward = rmsnorm_backward;
    mixed.rope_forward = rope_forward;
    mixed.rope_backward = rope_backward;
    mixed.attention_forward = attention_forward;
    mixed.attention_backward = attention_backward;
    mixed.swiglu_forward = swiglu_forward;
    mixed.swiglu_backward = swiglu_backward;
    mixed.add = add;
    mixed.accumulate = accumulate;
    mixed.gather_rows = gather_rows;
    mixed.scatter_add_rows = scatter_add_rows;
    mixed.moe_permute = moe_permute;
    mixed.moe_unpermute = moe_unpermute;
    mixed.moe_unpermute_backward = moe_unpermute_backward;
    mixed.cross_entropy = cross_entropy;
    mixed.xent_finish = xent_finish;
    mixed.round_compute = rnd;
    return &mixed;
}
