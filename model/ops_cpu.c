/*
 * model/ops_cpu.c — the CPU backend: fp32, OpenBLAS sgemm for the matmuls, OpenMP for the rest.
 *
 * This is the reference every other backend is checked against. Every loop is deterministic for a
 * fixed thread count: OpenMP schedules are static and no reduction depends on thread timing
 * (sums are formed per fixed chunk and combined in order). Gradient rule: see model/ops.h.
 */
#include "model/ops.h"

#include <malloc.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <omp.h>

#include "core/error.h"

/* ---------------------------------------------------------------------------------------------- */
/* memory                                                                                           */

/* bytes held through cpu_alloc now and at most (glibc knows each block's size) */
static size_t held, held_peak;

static void *cpu_alloc(size_t bytes) {
    /* 64-byte aligned for vector loads */
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    CHECK(p != NULL, "out of memory allocating %zu bytes", bytes);
    memset(p, 0, rounded ? rounded : 64);
#pragma omp atomic
    held += malloc_usable_size(p);
    if (held > held_peak) held_peak = held;
    return p;
}

static void cpu_free(void *p) {
    if (!p) return;
#pragma omp atomic
    held -= malloc_usable_size(p);
    free(p);
}

static size_t cpu_peak_bytes(void) { return held_peak; }
static void cpu_zero(void *p, size_t bytes) { memset(p, 0, bytes); }
static void cpu_copy(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }

/* ---------------------------------------------------------------------------------------------- */
/* linear                                                                                           */

static void cpu_matmul_forward(float *out, const float *inp, const float *weight, int N, int C, int OC) {
    /* out[N,OC] = inp[N,C] @ weight[OC,C]^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, weight, C, 0.0f, out, OC);
}

static void cpu_matmul_backward_input(float *dinp, const float *dout, const float *weight, int N, int C,
                                      int OC, int accumulate) {
    /* dinp[N,C] = dout[N,OC] @ weight[OC,C] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, weight, C,
                accumulate ? 1.0f : 0.0f, dinp, C);
}

static void cpu_matmul_backward_weight(float *dweight, const float *dout, const float *inp, int N, int C,
                                       int OC) {
    /* dweight[OC,C] += dout[N,OC]^T @ inp[N,C] */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
}

/* grouped: one sgemm per non-empty group, the calls a loop over experts would make */

static void cpu_grouped_matmul_forward(float *out, const float *inp, const float *weight, size_t stride,
                                       const int *start, const int *count, int G, int C, int OC) {
    for (int g = 0; g < G; g++)
        if (count[g])
            cpu_matmul_forward(out + (size_t)start[g] * OC, inp + (size_t)start[g] * C, weight + g * stride, count[g],
                               C, OC);
}

static void cpu_grouped_matmul_backward_input(float *dinp, const float *dout, const float *weight, size_t stride,
                                              const int *start, const int *count, int G, int C, int OC,
                                              int accumulate) {
    for (int g = 0; g < G; g++)
        if (count[g])
            cpu_matmul_backward_input(dinp + (size_t)start[g] * C, dout + (size_t)start[g] * OC, weight + g * stride,
                                      count[g], C, OC, accumulate);
}

static void cpu_grouped_matmul_backward_weight(float *dweight, size_t stride, const float *dout, const float *inp,
                                               const int *start, const int *count, int G, int C, int OC) {
    for (int g = 0; g < G; g++)
        if (count[g])
            cpu_matmul_backward_weight(dweight + g * stride, dout + (size_t)start[g] * OC, inp + (size_t)start[g] * C,
                                       count[g], C, OC);
}

/* ---------------------------------------------------------------------------------------------- */
/* embedding                                                                                        */

static void cpu_embedding_forward(float *out, const int *ids, const float *wte, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        if (ids[n] >= 0) memcpy(out + (size_t)n * C, wte + (size_t)ids[n] * C, sizeof(float) * C);
        else memset(out + (size_t)n * C, 0, sizeof(float) * C);
    }
}

static void cpu_embedding_backward(float *dwte, const float *dout, const int *ids, int N, int C) {
    /* split over columns, so each row of dwte is summed in token order whatever the thread count */
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int c0 = (int)((long)C * t / nt), c1 = (int)((long)C * (t + 1) / nt);
        for (int n = 0; n < N; n++) {
            if (ids[n] < 0) continue;
            float *row = dwte + (size_t)ids[n] * C;
            const float *g = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++) row[c] += g[c];
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* RMSNorm (Zhang & Sennrich 2019): y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps)                */

static void cpu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                                int ld_out, int ld_inp, float eps) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * ld_inp;
        float *y = out + (size_t)n * ld_out;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
        float r = (float)(1.0 / sqrt(ss / C + eps));
        for (int c = 0; c < C; c++) y[c] = x[c] * r * weight[c];
        rstd[n] = r;
    }
}

static void cpu_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                                 const float *weight, const float *rstd, int N, int C, int ld_out, int ld_inp) {
    /* dx = rstd * (w*dy - xhat * mean(xhat * w*dy)),  xhat = x * rstd ; dw += sum_n dy * xhat */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * ld_inp;
        const float *dy = dout + (size_t)n * ld_out;
        float *dx = dinp + (size_t)n * ld_inp;
        float r = rstd[n];
        double dot = 0;
        for (int c = 0; c < C; c++) dot += (double)dy[c] * weight[c] * x[c] * r;
        float m = (float)(dot / C);
        for (int c = 0; c < C; c++) dx[c] = r * (dy[c] * weight[c] - x[c] * r * m);
    }
    /* weight gradient split over columns, summed over rows in order */
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int c0 = (int)((long)C * t / nt), c1 = (int)((long)C * (t + 1) / nt);
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * ld_inp;
            const float *dy = dout + (size_t)n * ld_out;
            float r = rstd[n];
            for (int c = c0; c < c1; c++) dweight[c] += dy[c] * x[c] * r;
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* RoPE (Su et al. 2021). interleaved pairs (2i, 2i+1) as DeepSeek-V3 inference/model.py;
 * half-split pairs (i, i + D/2) as Llama's rotate_half. Frequencies theta^(-2i/D).                */

static void rope_apply(float *x, int N, int T, int H, int ld, int head_stride, int D, float theta,
                       int interleaved, float sign) {
    int half = D / 2;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        int pos = n % T;
        for (int i = 0; i < half; i++) {
            double freq = pow((double)theta, -2.0 * i / D);
            double ang = pos * freq;
            float c = (float)cos(ang), s = sign * (float)sin(ang);
            int a = interleaved ? 2 * i : i;
            int b = interleaved ? 2 * i + 1 : i + half;
            for (int h = 0; h < H; h++) {
                float *v = x + (size_t)n * ld + (size_t)h * head_stride;
                float x0 = v[a], x1 = v[b];
                v[a] = x0 * c - x1 * s;
                v[b] = x0 * s + x1 * c;
            }
        }
    }
}

static void cpu_rope_forward(float *x, int N, int T, int H, int ld, int head_stride, int D, float theta,
                             int interleaved) {
    rope_apply(x, N, T, H, ld, head_stride, D, theta, interleaved, 1.0f);
}

static void cpu_rope_backward(float *dx, int N, int T, int H, int ld, int head_stride, int D, float theta,
                              int interleaved) {
    /* the rotation is orthogonal: its gradient is the inverse rotation */
    rope_apply(dx, N, T, H, ld, head_stride, D, theta, interleaved, -1.0f);
}

/* ---------------------------------------------------------------------------------------------- */
/* causal attention, softmax weights kept [B,H,T,T] as `saved` (entries above the diagonal are zero).
 * One task per (sequence, head); inside it the products are sgemm calls on strided views of q/k/v
 * (the OpenMP build of OpenBLAS runs single-threaded inside a parallel region). Scores above the
 * diagonal are computed and discarded: cheaper in a GEMM than skipping them in scalar loops.      */

static size_t cpu_attention_saved_floats(int B, int T, int H, int Dqk, int Dv) {
    (void)Dqk, (void)Dv;
    return (size_t)B * H * T * T;
}

static void cpu_attention_forward(float *out, float *probs, const float *q, const float *k, const float *v,
                                  int B, int T, int H, int Hkv, int Dqk, int Dv, float scale) {
    int group = H / Hkv;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int hk = h / group;
            const float *qb = q + ((size_t)b * T * H + h) * Dqk;     /* rows t, stride H*Dqk */
            const float *kb = k + ((size_t)b * T * Hkv + hk) * Dqk;  /* rows j, stride Hkv*Dqk */
            const float *vb = v + ((size_t)b * T * Hkv + hk) * Dv;
            float *p = probs + ((size_t)b * H + h) * T * T;
            float *ob = out + ((size_t)b * T * H + h) * Dv;
            /* S = scale * Q K^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, Dqk, scale, qb, H * Dqk, kb, Hkv * Dqk,
                        0.0f, p, T);
            for (int t = 0; t < T; t++) {
                float *row = p + (size_t)t * T;
                float maxv = -INFINITY;
                for (int j = 0; j <= t; j++) maxv = row[j] > maxv ? row[j] : maxv;
                float sum = 0;
                for (int j = 0; j <= t; j++) {
                    row[j] = expf(row[j] - maxv);
                    sum += row[j];
                }
                float inv = 1.0f / sum;
                for (int j = 0; j <= t; j++) row[j] *= inv;
                for (int j = t + 1; j < T; j++) row[j] = 0;
            }
            /* O = P V */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, Dv, T, 1.0f, p, T, vb, Hkv * Dv, 0.0f, ob,
                        H * Dv);
        }
}

static void cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                   const float *probs, const float *q, const float *k, const float *v,
                                   int B, int T, int H, int Hkv, int Dqk, int Dv, float scale) {
    (void)out; /* rowsum(P * dP) comes from the kept probabilities */
    /* dP = dO V^T; dS = P * (dP - rowsum(P * dP)) * scale; dQ = dS K; dK = dS^T Q; dV = P^T dO.
     * One task per (sequence, kv head), so the query heads of a GQA group add into dk/dv in order. */
    int group = H / Hkv;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int hk = 0; hk < Hkv; hk++) {
            float *ds = malloc_check(sizeof(float) * (size_t)T * T);
            const float *kb = k + ((size_t)b * T * Hkv + hk) * Dqk;
            const float *vb = v + ((size_t)b * T * Hkv + hk) * Dv;
            float *dkb = dk + ((size_t)b * T * Hkv + hk) * Dqk;
            float *dvb = dv + ((size_t)b * T * Hkv + hk) * Dv;
            for (int h = hk * group; h < (hk + 1) * group; h++) {
                const float *p = probs + ((size_t)b * H + h) * T * T;
                const float *dob = dout + ((size_t)b * T * H + h) * Dv;
                const float *qb = q + ((size_t)b * T * H + h) * Dqk;
                float *dqb = dq + ((size_t)b * T * H + h) * Dqk;
                float first = h == hk * group ? 0.0f : 1.0f; /* the group's first head assigns dk/dv */
                /* dP = dO V^T */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, Dv, 1.0f, dob, H * Dv, vb, Hkv * Dv,
                            0.0f, ds, T);
                for (int t = 0; t < T; t++) {
                    const float *pr = p + (size_t)t * T;
                    float *row = ds + (size_t)t * T;
                    float rowsum = 0;
                    for (int j = 0; j <= t; j++) rowsum += pr[j] * row[j];
                    for (int j = 0; j <= t; j++) row[j] = pr[j] * (row[j] - rowsum) * scale;
                    for (int j = t + 1; j < T; j++) row[j] = 0;
                }
                /* dQ = dS K ; dK (+)= dS^T Q ; dV (+)= P^T dO */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, Dqk, T, 1.0f, ds, T, kb, Hkv * Dqk,
                            0.0f, dqb, H * Dqk);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, Dqk, T, 1.0f, ds, T, qb, H * Dqk, first,
                            dkb, Hkv * Dqk);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, Dv, T, 1.0f, p, T, dob, H * Dv, first,
                            dvb, Hkv * Dv);
            }
            free(ds);
        }
}

/* ---------------------------------------------------------------------------------------------- */
/* SwiGLU (Shazeer 2020): out = silu(gate) * up                                                     */

static void cpu_swiglu_forward(float *out, const float *gate, const float *up, int N, int F) {
    size_t n = (size_t)N * F;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

static void cpu_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                                const float *up, int N, int F) {
    size_t n = (size_t)N * F;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        float sig = 1.0f / (1.0f + expf(-g));
        float silu = g * sig;
        float dy = dout[i];
        dup[i] = dy * silu;
        dgate[i] = dy * up[i] * sig * (1.0f + g * (1.0f - sig));
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* element-wise                                                                                     */

static void cpu_add(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void cpu_accumulate(float *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

static void cpu_scale(float *x, float s, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

static void cpu_copy_2d(float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols,
                        int accumulate) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        float *d = dst + (size_t)r * ld_dst;
        const float *s = src + (size_t)r * ld_src;
        if (accumulate)
            for (int c = 0; c < cols; c++) d[c] += s[c];
        else
            memcpy(d, s, sizeof(float) * cols);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* rows by index                                                                                    */

static void cpu_gather_rows(float *dst, const float *src, const int *idx, const float *scale, int n, int C) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        float *d = dst + (size_t)i * C;
        const float *s = src + (size_t)idx[i] * C;
        if (!scale) {
            memcpy(d, s, sizeof(float) * C);
            continue;
        }
        for (int c = 0; c < C; c++) d[c] = scale[i] * s[c];
    }
}

static void cpu_scatter_add_rows(float *dst, const float *src, const int *idx, const float *scale, int n, int C) {
    /* split over columns: every destination row sums its sources in i order, whatever the threads */
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int c0 = (int)((long)C * t / nt), c1 = (int)((long)C * (t + 1) / nt);
        for (int i = 0; i < n; i++) {
            float s = scale ? scale[i] : 1.0f;
            float *d = dst + (size_t)idx[i] * C;
            const float *x = src + (size_t)i * C;
            for (int c = c0; c < c1; c++) d[c] += s * x[c];
        }
    }
}

static void cpu_row_dot(float *out, const float *a, const float *b, const int *idx, int n, int C) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        const float *x = a + (size_t)i * C, *y = b + (size_t)idx[i] * C;
        double s = 0;
        for (int c = 0; c < C; c++) s += (double)x[c] * y[c];
        out[i] = (float)s;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* mixture of experts: the router (fp32) and the permutation by expert. The router follows dots.llm1's
 * Dots1TopkRouter and DeepSeek-V3's gate (group-limited top-k, weights from the unbiased scores); the balance
 * loss is DeepSeek-V3's sequence-wise one (report eqs. 17-20). Every token is independent, so the per-token
 * loops run in parallel; the sums over tokens run in token order.                                   */

enum { MOE_MAX_EXPERTS = 4096 };

/* Token n's experts, best first: the K largest of sel = s + bias (ties to the lower index), sel set to -inf
 * outside the topk_groups groups of highest group score (the sum of each group's two largest) when grouping
 * is on. */
static void route_token(const struct loom_moe_routing *r, const float *s, const float *bias, int *idx) {
    int E = r->experts, K = r->top_k, G = r->groups, per = E / G;
    float sel[MOE_MAX_EXPERTS];
    for (int e = 0; e < E; e++) sel[e] = s[e] + bias[e];
    if (G > 1) {
        float gscore[MOE_MAX_EXPERTS];
        int keep[MOE_MAX_EXPERTS] = {0};
        for (int g = 0; g < G; g++) {
            float a = -INFINITY, b = -INFINITY;
            for (int e = g * per; e < (g + 1) * per; e++) {
                if (sel[e] > a) b = a, a = sel[e];
                else if (sel[e] > b) b = sel[e];
            }
            gscore[g] = a + (per > 1 ? b : 0);
        }
        for (int k = 0; k < r->topk_groups; k++) {
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

static void cpu_moe_route(float *scores, int *idx, float *w, int *counts, const float *logits, const float *bias,
                          int N, const struct loom_moe_routing *r) {
    int E = r->experts, K = r->top_k;
    CHECK(E <= MOE_MAX_EXPERTS, "%d experts (at most %d)", E, MOE_MAX_EXPERTS);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * E;
        float *s = scores + (size_t)n * E;
        if (!r->softmax) {
            for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-x[e]));
        } else {
            float mx = -INFINITY, sum = 0;
            for (int e = 0; e < E; e++) mx = x[e] > mx ? x[e] : mx;
            for (int e = 0; e < E; e++) sum += s[e] = expf(x[e] - mx);
            for (int e = 0; e < E; e++) s[e] /= sum;
        }
        int *ix = idx + (size_t)n * K;
        route_token(r, s, bias, ix);
        float q = 0;
        for (int j = 0; j < K; j++) q += s[ix[j]];
        for (int j = 0; j < K; j++) {
            float wj = s[ix[j]];
            if (r->norm_topk) wj /= q + 1e-20f;
            w[(size_t)n * K + j] = wj * r->scaling;
        }
    }
    memset(counts, 0, sizeof(int) * E);
    for (size_t a = 0; a < (size_t)N * K; a++) counts[idx[a]]++;
}

static void cpu_moe_route_backward(float *dlogits, const float *dw, const int *pos, const float *scores,
                                   const int *idx, const float *f, float bal_scale, int n0, int n1, int T,
                                   const struct loom_moe_routing *r) {
    int E = r->experts, K = r->top_k;
    float scale = r->scaling;
#pragma omp parallel for schedule(static)
    for (int n = n0; n < n1; n++) {
        const float *s = scores + (size_t)n * E;
        const int *ix = idx + (size_t)n * K, *pn = pos + (size_t)(n - n0) * K;
        float *d = dlogits + (size_t)(n - n0) * E;
        for (int e = 0; e < E; e++) d[e] = 0;
        /* through the weights: w_j = scale q_j / Q, Q = sum q + 1e-20 */
        if (r->norm_topk) {
            float q = 0, cross = 0;
            for (int j = 0; j < K; j++) q += s[ix[j]];
            float Q = q + 1e-20f;
            for (int j = 0; j < K; j++) cross += dw[pn[j]] * s[ix[j]];
            for (int j = 0; j < K; j++) d[ix[j]] += scale * (dw[pn[j]] / Q - cross / (Q * Q));
        } else {
            for (int j = 0; j < K; j++) d[ix[j]] += scale * dw[pn[j]];
        }
        /* the balance loss: d/ds_k of s_i / S with S = sum s is (g_k - sum_i g_i s_i / S) / S, g_i = bal_scale f_i / T */
        if (bal_scale > 0) {
            const float *fb = f + (size_t)(n / T) * E;
            double S = 0, gs = 0;
            for (int e = 0; e < E; e++) S += s[e], gs += (double)fb[e] * s[e];
            for (int e = 0; e < E; e++) d[e] += (float)(bal_scale / T * (fb[e] - gs / S) / S);
        }
        /* through the score function */
        if (!r->softmax) {
            for (int e = 0; e < E; e++) d[e] *= s[e] * (1.0f - s[e]);
        } else {
            float dot = 0;
            for (int e = 0; e < E; e++) dot += s[e] * d[e];
            for (int e = 0; e < E; e++) d[e] = s[e] * (d[e] - dot);
        }
    }
}

static double cpu_moe_balance(float *f, const float *scores, const int *idx, int B, int T, int E, int K) {
    double total = 0;
    for (int b = 0; b < B; b++) {
        float *fb = f + (size_t)b * E;
        for (int e = 0; e < E; e++) fb[e] = 0;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < K; j++) fb[idx[((size_t)b * T + t) * K + j]] += (float)E / ((float)K * T);
        for (int t = 0; t < T; t++) {
            const float *s = scores + ((size_t)b * T + t) * E;
            double S = 0, fp = 0;
            for (int e = 0; e < E; e++) S += s[e];
            for (int e = 0; e < E; e++) fp += fb[e] * s[e];
            total += fp / S / T;
        }
    }
    return total;
}

static void cpu_moe_plan(int *counts, int *offs, int *rows, float *wperm, int *pos, const int *idx, const float *w,
                         int a0, int nk, int K, int E, int tile) {
    memset(counts, 0, sizeof(int) * E);
    for (int i = 0; i < nk; i++) counts[idx[a0 + i]]++;
    offs[0] = 0;
    for (int e = 0; e < E; e++) offs[e + 1] = offs[e] + (counts[e] + tile - 1) / tile * tile;
    int *fill = malloc_check(sizeof(int) * E);
    memcpy(fill, offs, sizeof(int) * E);
    for (int i = 0; i < nk; i++) {
        int a = a0 + i, p = fill[idx[a]]++;
        rows[p] = a / K;
        wperm[p] = w[a];
        pos[i] = p;
    }
    for (int e = 0; e < E; e++)
        for (int p = fill[e]; p < offs[e + 1]; p++) rows[p] = -1, wperm[p] = 0;
    free(fill);
}

static void cpu_moe_permute(float *dst, const float *src, const int *rows, const float *scale, int P, int C) {
#pragma omp parallel for schedule(static)
    for (int p = 0; p < P; p++) {
        float *d = dst + (size_t)p * C;
        if (rows[p] < 0) {
            memset(d, 0, sizeof(float) * C);
            continue;
        }
        const float *s = src + (size_t)rows[p] * C;
        if (!scale) {
            memcpy(d, s, sizeof(float) * C);
            continue;
        }
        for (int c = 0; c < C; c++) d[c] = scale[p] * s[c];
    }
}

static void cpu_moe_unpermute(float *out, const float *src, const int *pos, const float *scale, int n0, int n1, int K,
                              int C) {
    enum { MAX_K = 256 };
    CHECK(K <= MAX_K, "top_k %d (at most %d)", K, MAX_K);
#pragma omp parallel for schedule(static)
    for (int n = n0; n < n1; n++) {
        /* the token's positions in increasing order (insertion sort: K is small) */
        int p[MAX_K];
        for (int j = 0; j < K; j++) {
            int v = pos[(size_t)(n - n0) * K + j], q = j;
            for (; q > 0 && p[q - 1] > v; q--) p[q] = p[q - 1];
            p[q] = v;
        }
        float *d = out + (size_t)n * C;
        for (int j = 0; j < K; j++) {
            float s = scale ? scale[p[j]] : 1.0f;
            const float *x = src + (size_t)p[j] * C;
            for (int c = 0; c < C; c++) d[c] += s * x[c];
        }
    }
}

static void cpu_moe_unpermute_backward(float *dsrc, float *dscale, const float *dout, const float *src,
                                       const int *rows, const float *scale, int P, int C) {
#pragma omp parallel for schedule(static)
    for (int p = 0; p < P; p++) {
        float *d = dsrc + (size_t)p * C;
        if (rows[p] < 0) {
            memset(d, 0, sizeof(float) * C);
            dscale[p] = 0;
            continue;
        }
        const float *g = dout + (size_t)rows[p] * C, *x = src + (size_t)p * C;
        double dot = 0;
        for (int c = 0; c < C; c++) dot += (double)x[c] * g[c];
        dscale[p] = (float)dot;
        float s = scale ? scale[p] : 1.0f;
        for (int c = 0; c < C; c++) d[c] = s * g[c];
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* fused softmax cross-entropy                                                                      */

static void cpu_cross_entropy(float *losses, float *dlogits, const float *logits, const int *targets, int N,
                              int V, float dloss) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        int tgt = targets[n];
        float maxv = -INFINITY;
        for (int i = 0; i < V; i++) maxv = x[i] > maxv ? x[i] : maxv;
        double sum = 0;
        for (int i = 0; i < V; i++) sum += exp((double)(x[i] - maxv));
        double lse = maxv + log(sum);
        float xt = tgt >= 0 ? x[tgt] : 0.0f;
        losses[n] = tgt >= 0 ? (float)(lse - xt) : 0.0f;
        if (!dlogits) continue;
        float *dx = dlogits + (size_t)n * V;
        if (tgt < 0) {
            memset(dx, 0, sizeof(float) * V);
            continue;
        }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < V; i++) dx[i] = expf(x[i] - maxv) * inv * dloss;
        dx[tgt] -= dloss;
    }
}

static void cpu_xent_rowmax(float *rowmax, const float *logits, int N, int V) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float m = -INFINITY;
        for (int i = 0; i < V; i++) m = x[i] > m ? x[i] : m;
        rowmax[n] = m;
    }
}

static void cpu_xent_sumexp(float *sumexp, float *tlogit, const float *logits, const int *targets,
                            const float *rowmax, int N, int V, int v0) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        double sum = 0;
        for (int i = 0; i < V; i++) sum += exp((double)(x[i] - rowmax[n]));
        sumexp[n] = (float)sum;
        int t = targets[n] - v0;
        tlogit[n] = targets[n] >= 0 && t >= 0 && t < V ? x[t] : 0.0f;
    }
}

static void cpu_xent_finish(float *losses, float *dlogits, const float *logits, const int *targets,
                            const float *rowmax, const float *sumexp, const float *tlogit, int N, int V, int v0,
                            float dloss) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        int tgt = targets[n];
        losses[n] = tgt >= 0 ? (float)(log((double)sumexp[n]) + rowmax[n] - tlogit[n]) : 0.0f;
        if (!dlogits) continue;
        const float *x = logits + (size_t)n * V;
        float *dx = dlogits + (size_t)n * V;
        if (tgt < 0) {
            memset(dx, 0, sizeof(float) * V);
            continue;
        }
        float inv = 1.0f / sumexp[n];
        for (int i = 0; i < V; i++) dx[i] = expf(x[i] - rowmax[n]) * inv * dloss;
        int t = tgt - v0;
        if (t >= 0 && t < V) dx[t] -= dloss;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* optimizer                                                                                        */

enum { SUM_CHUNK = 1 << 14 };

static double cpu_sum_squares(const float *x, size_t n) {
    /* fixed chunks summed in double, then combined in chunk order: independent of the thread count */
    size_t nchunks = (n + SUM_CHUNK - 1) / SUM_CHUNK;
    double *partial = malloc_check(sizeof(double) * (nchunks ? nchunks : 1));
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nchunks; c++) {
        size_t i0 = c * SUM_CHUNK, i1 = i0 + SUM_CHUNK < n ? i0 + SUM_CHUNK : n;
        double s = 0;
        for (size_t i = i0; i < i1; i++) s += (double)x[i] * x[i];
        partial[c] = s;
    }
    double total = 0;
    for (size_t c = 0; c < nchunks; c++) total += partial[c];
    free(partial);
    return total;
}

static void cpu_adamw_update(float *param, const float *grad, float *m, float *v, size_t n, float lr,
                             float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                             long step) {
    float bc1 = 1.0f - (float)pow(beta1, (double)step);
    float bc2 = 1.0f - (float)pow(beta2, (double)step);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] * grad_scale;
        float p = param[i] - lr * weight_decay * param[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = p - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
    }
}

/* ---------------------------------------------------------------------------------------------- */

static void cpu_round_compute(float *x, size_t n) { (void)x, (void)n; }

static const struct loom_ops cpu_ops = {
    .name = "cpu",
    .compute = LOOM_F32,
    .exact = &cpu_ops,
    .moe_tile = 1,
    .round_compute = cpu_round_compute,
    .peak_bytes = cpu_peak_bytes,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .zero = cpu_zero,
    .to_host = cpu_copy,
    .from_host = cpu_copy,
    .matmul_forward = cpu_matmul_forward,
    .matmul_backward_input = cpu_matmul_backward_input,
    .matmul_backward_weight = cpu_matmul_backward_weight,
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .rope_forward = cpu_rope_forward,
    .rope_backward = cpu_rope_backward,
    .attention_saved_floats = cpu_attention_saved_floats,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .add = cpu_add,
    .accumulate = cpu_accumulate,
    .scale = cpu_scale,
    .copy_2d = cpu_copy_2d,
    .gather_rows = cpu_gather_rows,
    .scatter_add_rows = cpu_scatter_add_rows,
    .row_dot = cpu_row_dot,
    .grouped_matmul_forward = cpu_grouped_matmul_forward,
    .grouped_matmul_backward_input = cpu_grouped_matmul_backward_input,
    .grouped_matmul_backward_weight = cpu_grouped_matmul_backward_weight,
    .moe_route = cpu_moe_route,
    .moe_route_backward = cpu_moe_route_backward,
    .moe_balance = cpu_moe_balance,
    .moe_plan = cpu_moe_plan,
    .moe_permute = cpu_moe_permute,
    .moe_unpermute = cpu_moe_unpermute,
    .moe_unpermute_backward = cpu_moe_unpermute_backward,
    .cross_entropy = cpu_cross_entropy,
    .xent_rowmax = cpu_xent_rowmax,
    .xent_sumexp = cpu_xent_sumexp,
    .xent_finish = cpu_xent_finish,
    .sum_squares = cpu_sum_squares,
    .adamw_update = cpu_adamw_update,
};

const struct loom_ops *loom_ops_cpu(int threads) {
    if (threads > 0) {
        omp_set_num_threads(threads);
        openblas_set_num_threads(threads);
    }
    return &cpu_ops;
}
