/*
 * model/ops.h — the backend interface: every op the model and optimizer run, as one function table.
 *
 * Model, optimizer and parallel code call a backend only through `struct loom_ops`; the CPU backend
 * (model/ops_cpu.c, fp32, OpenBLAS + OpenMP) is the reference, and a CUDA backend fills the same table
 * with device pointers. No file outside a backend dereferences a pointer it got from `alloc`.
 *
 * Legend: N tokens (B*T), B sequences, T sequence length, C width, OC output width, V vocabulary,
 * H query heads, Hkv key/value heads, Dqk q/k head width, Dv value head width, F SwiGLU width.
 * Matrices are row-major; a linear layer's weight is [OC, C] and computes y = x W^T.
 * MoE (model/moe.c): E routed experts, K experts per token; assignment a = n K + j is token n's j-th choice;
 * P rows of the expert-ordered buffers (each expert's block of assignments, padded, see moe_plan).
 *
 * Gradient rule: parameter gradients accumulate (+=); activation gradients assign (=) unless the op
 * takes an `accumulate` flag (inputs that fan out to several consumers); the residual stream
 * accumulates. Weight-gradient and input-gradient backward are separate calls so schedules can split.
 */
#ifndef LOOM_MODEL_OPS_H
#define LOOM_MODEL_OPS_H

#include <stddef.h>

#include "core/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How the MoE router scores and chooses experts (the [moe] section; model/moe.h). */
struct loom_moe_routing {
    int experts, top_k;            /* E, K */
    int groups, topk_groups;       /* group-limited choice (DeepSeek-V3) when groups > 1 */
    int softmax;                   /* scores: softmax over the experts; 0: sigmoid */
    int norm_topk;                 /* the chosen weights normalised to sum 1 before scaling */
    float scaling;                 /* routed_scaling_factor */
};

/* the CUDA backend's moe_tile (so `loom plan` sizes its padded expert blocks without the backend) */
enum { LOOM_CUDA_MOE_TILE = 128 };

struct loom_ops {
    const char *name;
    /* the dtype activations, their gradients and weight-gradient contributions are stored in; `exact` is
     * the same backend without that rounding (fp32), for the parts that stay fp32 (the MoE router) */
    enum loom_dtype compute;
    const struct loom_ops *exact;
    /* the row multiple each expert's block of moe_plan's order starts at (1: no padding), so that a tiled grouped
     * GEMM never has a tile spanning two experts */
    int moe_tile;

    /* memory ------------------------------------------------------------------------------------ */
    void *(*alloc)(size_t bytes);                               /* zero-filled */
    void (*free)(void *p);
    void (*zero)(void *p, size_t bytes);
    void (*to_host)(void *host, const void *dev, size_t bytes);
    void (*from_host)(void *dev, const void *host, size_t bytes);
    /* the most memory this process has held through alloc so far, in bytes (for reports) */
    size_t (*peak_bytes)(void);

    /* linear ------------------------------------------------------------------------------------ */
    /* out[N,OC] = inp[N,C] @ weight[OC,C]^T */
    void (*matmul_forward)(float *out, const float *inp, const float *weight, int N, int C, int OC);
    /* dinp[N,C] = (or += when accumulate) dout[N,OC] @ weight[OC,C] */
    void (*matmul_backward_input)(float *dinp, const float *dout, const float *weight,
                                  int N, int C, int OC, int accumulate);
    /* dweight[OC,C] += dout[N,OC]^T @ inp[N,C] */
    void (*matmul_backward_weight)(float *dweight, const float *dout, const float *inp,
                                   int N, int C, int OC);

    /* embedding --------------------------------------------------------------------------------- */
    /* out[N,C] = wte[ids[n], :], or zeros where ids[n] < 0 (a token another tensor-parallel rank holds) */
    void (*embedding_forward)(float *out, const int *ids, const float *wte, int N, int C);
    /* dwte[ids[n], :] += dout[n, :] where ids[n] >= 0 */
    void (*embedding_backward)(float *dwte, const float *dout, const int *ids, int N, int C);

    /* RMSNorm over the first C columns of each row -------------------------------------------- */
    /* out[n, 0:C] (row stride ld_out) = inp[n, 0:C] (row stride ld_inp) * rstd[n] * weight[0:C],
     * rstd[n] = 1 / sqrt(mean(inp[n]^2) + eps) saved for backward */
    void (*rmsnorm_forward)(float *out, float *rstd, const float *inp, const float *weight,
                            int N, int C, int ld_out, int ld_inp, float eps);
    /* dinp[n, 0:C] (row stride ld_inp) =; dweight[0:C] += */
    void (*rmsnorm_backward)(float *dinp, float *dweight, const float *dout, const float *inp,
                             const float *weight, const float *rstd, int N, int C, int ld_out, int ld_inp);

    /* RoPE, in place ------------------------------------------------------------------------------ */
    /* Row n (stride ld) holds H heads, head h starting at x + n*ld + h*head_stride; its first D values
     * are rotated by the angle of position (n % T) with frequencies theta^(-2i/D), i < D/2.
     * interleaved: pairs (2i, 2i+1) (DeepSeek, Youtu); half: pairs (i, i + D/2) (Llama, dots.llm1).
     * rope_backward applies the inverse rotation to the gradient in place. */
    void (*rope_forward)(float *x, int N, int T, int H, int ld, int head_stride, int D,
                         float theta, int interleaved);
    void (*rope_backward)(float *dx, int N, int T, int H, int ld, int head_stride, int D,
                          float theta, int interleaved);

    /* causal attention ---------------------------------------------------------------------------- */
    /* the floats attention_forward saves for backward at these sizes: the softmax weights [B,H,T,T]
     * (the CPU; the GPU's materialised kernels), or the row logsumexp [B,H,T] (flash attention) */
    size_t (*attention_saved_floats)(int B, int T, int H, int Dqk, int Dv);
    /* out[B,T,H,Dv]; saved[attention_saved_floats(B,T,H,Dqk,Dv)] what backward needs;
     * q[B,T,H,Dqk], k[B,T,Hkv,Dqk], v[B,T,Hkv,Dv]; query head h reads kv head h / (H / Hkv). */
    void (*attention_forward)(float *out, float *saved, const float *q, const float *k, const float *v,
                              int B, int T, int H, int Hkv, int Dqk, int Dv, float scale);
    /* dq, dk, dv assigned; out and saved as attention_forward left them */
    void (*attention_backward)(float *dq, float *dk, float *dv, const float *dout, const float *out,
                               const float *saved, const float *q, const float *k, const float *v,
                               int B, int T, int H, int Hkv, int Dqk, int Dv, float scale);

    /* SwiGLU ------------------------------------------------------------------------------------ */
    /* out[N,F] = silu(gate) * up */
    void (*swiglu_forward)(float *out, const float *gate, const float *up, int N, int F);
    /* dgate, dup assigned */
    void (*swiglu_backward)(float *dgate, float *dup, const float *dout, const float *gate,
                            const float *up, int N, int F);

    /* element-wise ------------------------------------------------------------------------------ */
    void (*add)(float *out, const float *a, const float *b, size_t n);        /* out = a + b */
    void (*accumulate)(float *dst, const float *src, size_t n);               /* dst += src  */
    void (*scale)(float *x, float s, size_t n);                               /* x *= s      */
    /* x rounded in place to the compute dtype (nothing in fp32): for sums formed outside the ops, such as a
     * tensor-parallel all-reduce of activations or their gradients, which a GPU stores in that dtype */
    void (*round_compute)(float *x, size_t n);
    /* dst[r, 0:cols] (row stride ld_dst) = (or += when accumulate) src[r, 0:cols] (row stride ld_src) */
    void (*copy_2d)(float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols,
                    int accumulate);

    /* rows by index (MoE permutation) ----------------------------------------------------------- */
    /* dst[i, :] = scale[i] * src[idx[i], :] (scale NULL: 1), i < n */
    void (*gather_rows)(float *dst, const float *src, const int *idx, const float *scale, int n, int C);
    /* dst[idx[i], :] += scale[i] * src[i, :] (scale NULL: 1), i < n; rows of dst summed in i order */
    void (*scatter_add_rows)(float *dst, const float *src, const int *idx, const float *scale, int n, int C);
    /* out[i] = dot(a[i, :], b[idx[i], :]), i < n */
    void (*row_dot)(float *out, const float *a, const float *b, const int *idx, int n, int C);

    /* grouped linear layers (the routed experts) -------------------------------------------------- */
    /* G groups of rows: group g is rows [start[g], start[g] + count[g]) of the row-wise operands and multiplies by
     * W_g = weight + g * stride ([OC, C]; dweight + g * stride for the gradient). start and count are host arrays;
     * groups with count 0 are skipped; rows outside every group are neither read nor written. Each group computes
     * what matmul_forward / matmul_backward_input / matmul_backward_weight compute on its rows. */
    void (*grouped_matmul_forward)(float *out, const float *inp, const float *weight, size_t stride,
                                   const int *start, const int *count, int G, int C, int OC);
    void (*grouped_matmul_backward_input)(float *dinp, const float *dout, const float *weight, size_t stride,
                                          const int *start, const int *count, int G, int C, int OC, int accumulate);
    void (*grouped_matmul_backward_weight)(float *dweight, size_t stride, const float *dout, const float *inp,
                                           const int *start, const int *count, int G, int C, int OC);

    /* mixture of experts: routing and permutation (model/moe.c) ------------------------------------- */
    /* The router, fp32 in every table. scores[N,E] = sigmoid(logits), or the softmax of each row; idx[N,K] = the K
     * largest of scores + bias[E] in decreasing order, ties to the lower index, taken only from the topk_groups
     * groups of highest group score (the sum of the group's two largest biased scores) when groups > 1;
     * w[N,K] = the chosen unbiased scores, divided by their sum + 1e-20 when norm_topk, times scaling;
     * counts[E] = assignments per expert (assigned). */
    void (*moe_route)(float *scores, int *idx, float *w, int *counts, const float *logits, const float *bias, int N,
                      const struct loom_moe_routing *r);
    /* The router's backward for tokens n0 <= n < n1, fp32: dlogits[n - n0, :] (assigned) = d(loss)/d(logits[n]) from
     * dw[pos[(n - n0) K + j]] = d(loss)/d(w[n, j]), plus, when bal_scale > 0, the gradient of the balance loss
     * bal_scale * sum_b sum_e f[b,e] P[b,e], P[b,e] = mean over sequence b's T tokens of scores[n,e] / sum_e'
     * scores[n,e'] (f as moe_balance left it; not read when bal_scale is 0). */
    void (*moe_route_backward)(float *dlogits, const float *dw, const int *pos, const float *scores, const int *idx,
                               const float *f, float bal_scale, int n0, int n1, int T,
                               const struct loom_moe_routing *r);
    /* Sequence-wise balance statistics of B sequences of T tokens (DeepSeek-V3 eqs. 17-20), fp32 in every table:
     * f[b,e] = E / (K T) x (tokens of sequence b choosing e), kept for moe_route_backward; returns, in double,
     * sum_b sum_t sum_e f[b,e] scores[t,e] / (T sum_e' scores[t,e']) (the caller weights it by alpha). */
    double (*moe_balance)(float *f, const float *scores, const int *idx, int B, int T, int E, int K);
    /* The dispatch order of the nk assignments a0 <= a < a0 + nk (idx, w as moe_route wrote them): grouped by
     * expert, each expert's block in assignment order (a stable counting sort). counts[E] = the assignments of each
     * expert; offs[E + 1]: offs[0] = 0, offs[e + 1] = offs[e] + counts[e] rounded up to a multiple of tile, so
     * offs[E] = P <= nk + E (tile - 1); rows[P], wperm[P] = the token a / K and the weight w[a] of the assignment
     * at each position, -1 and 0 on the padding rows; pos[a - a0] = the position of assignment a. */
    void (*moe_plan)(int *counts, int *offs, int *rows, float *wperm, int *pos, const int *idx, const float *w,
                     int a0, int nk, int K, int E, int tile);
    /* dst[p, :] = scale[p] * src[rows[p], :] (scale NULL: 1), a zero row where rows[p] < 0, p < P; stored in the
     * compute dtype. Its backward is moe_unpermute with scale NULL. */
    void (*moe_permute)(float *dst, const float *src, const int *rows, const float *scale, int P, int C);
    /* out[n, :] += scale[p] * src[p, :] for the positions p = pos[(n - n0) K + j] of token n's K assignments, added
     * in increasing p (the order scatter_add_rows would add them in), n0 <= n < n1 (scale NULL: 1); out's rows
     * n0 .. n1 - 1 stored in the compute dtype. */
    void (*moe_unpermute)(float *out, const float *src, const int *pos, const float *scale, int n0, int n1, int K,
                          int C);
    /* The backward of moe_unpermute with scale: dsrc[p, :] = scale[p] * dout[rows[p], :] (compute dtype) and
     * dscale[p] = dot(src[p, :], dout[rows[p], :]) (fp32, summed in double); a zero row and 0 where rows[p] < 0. */
    void (*moe_unpermute_backward)(float *dsrc, float *dscale, const float *dout, const float *src, const int *rows,
                                   const float *scale, int P, int C);

    /* loss ---------------------------------------------------------------------------------------- */
    /* losses[n] = logsumexp(logits[n]) - logits[n, targets[n]] (0 where targets[n] < 0).
     * When dlogits is not NULL: dlogits[n] = (softmax(logits[n]) - onehot(targets[n])) * dloss
     * (0 rows where targets[n] < 0); dlogits may alias logits. */
    void (*cross_entropy)(float *losses, float *dlogits, const float *logits, const int *targets,
                          int N, int V, float dloss);

    /* The same loss with the vocabulary split over tensor-parallel ranks (Megatron's vocab-parallel
     * cross-entropy): this rank holds logits [N,V] of vocabulary rows v0 .. v0+V-1. Between the steps
     * the caller reduces over the ranks: rowmax by max, sumexp and tlogit by sum.
     * rowmax[n] = max of the local logits of row n. */
    void (*xent_rowmax)(float *rowmax, const float *logits, int N, int V);
    /* with the global rowmax: sumexp[n] = Σ exp(logits - rowmax), tlogit[n] = logits[n, targets[n] - v0]
     * when this rank holds the target, else 0 */
    void (*xent_sumexp)(float *sumexp, float *tlogit, const float *logits, const int *targets, const float *rowmax,
                        int N, int V, int v0);
    /* with the global sums: losses[n] = log(sumexp) + rowmax - tlogit (0 where targets[n] < 0); when
     * dlogits is not NULL, dlogits = (exp(logits - rowmax) / sumexp - onehot) * dloss (may alias) */
    void (*xent_finish)(float *losses, float *dlogits, const float *logits, const int *targets, const float *rowmax,
                        const float *sumexp, const float *tlogit, int N, int V, int v0, float dloss);

    /* optimizer ----------------------------------------------------------------------------------- */
    /* sum of x[i]^2 in double, deterministic for a given n */
    double (*sum_squares)(const float *x, size_t n);
    /* AdamW (Loshchilov & Hutter; the PyTorch AdamW update): g = grad * grad_scale;
     * p -= lr * weight_decay * p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
     * p -= lr * (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps).  step counts from 1. */
    void (*adamw_update)(float *param, const float *grad, float *m, float *v, size_t n,
                         float lr, float beta1, float beta2, float eps, float weight_decay,
                         float grad_scale, long step);
};

/* The CPU backend. `threads` = 0 uses every core. */
const struct loom_ops *loom_ops_cpu(int threads);
/* The CPU backend emulating `compute` (bf16, fp16) by rounding where a GPU stores that dtype
 * (model/ops_cpu_mixed.c); fp32 gives `cpu` itself. */
const struct loom_ops *loom_ops_cpu_mixed(const struct loom_ops *cpu, enum loom_dtype compute);

#ifdef __cplusplus
}
#endif
#endif
