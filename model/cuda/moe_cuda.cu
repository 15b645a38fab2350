/*
 * model/cuda/moe_cuda.cu — the CUDA backend's mixture-of-experts ops (model/ops.h): the router's choice and its
 * backward (fp32), the sequence-wise balance statistics, the dispatch plan, the permutation by expert and the
 * weighted combine, and the experts' grouped GEMMs. ops_cuda.cu puts them in its tables (loom_cuda_moe_fill).
 *
 * Each kernel computes what model/ops_cpu.c computes, in the same formulas and the same order within a token:
 *   - router, balance, router backward: one thread per token walks the experts in order, as the CPU loop does
 *     (E is at most a few hundred; correctness first). Results differ from the CPU only where CUDA's expf
 *     does (a few ulps), so a choice can differ only between experts whose biased scores are that close.
 *   - the plan is a stable counting sort: per-expert counts with integer atomics, block starts by one
 *     thread, then one block per expert ranks its assignments in assignment order with a block-wide scan.
 *     Positions are exactly the CPU's.
 *   - permute, combine and its backward: the combine adds each token's K rows in increasing position (the
 *     order the CPU adds them in) with the multiply and add rounded separately (no FMA), so it equals the
 *     CPU bit for bit; the routing weights' gradient is a dot product in double, one warp per row.
 *   - grouped GEMMs: cublasGemmGroupedBatchedEx (cuBLAS 12.5 and later), one problem per expert with its
 *     real row count; where cuBLAS refuses it, a loop of cublasGemmEx. For bf16 / fp16 the operands are
 *     converted to the dtype first (exact: they are already rounded to it) and multiplied on the tensor cores
 *     with fp32 accumulation, the result stored in the dtype (the fp32 sum rounded once, what ops_cuda.cu's
 *     matmuls store) and widened into the fp32 output. Each expert's block starts at a multiple of
 *     moe_tile = 128 rows (moe_plan's padding), so every block's operands are aligned and a tiled kernel
 *     would never have a tile spanning two experts; the padding rows are zero in the gathered inputs and are
 *     never read by the GEMMs.
 *
 * Gradient rule (model/ops.h): parameter gradients accumulate (+=), activation gradients assign (=) unless an op
 * takes an `accumulate` flag (grouped_matmul_backward_input) or says so (moe_unpermute adds into its output).
 *
 * Determinism: no float atomics. Counts use integer atomics (exact in any order); every float sum has a fixed
 * order (per thread in order, or a fixed tree), so results repeat bit for bit run to run.
 */
#include <math.h>
#include <stdio.h>

#include "model/cuda/cuda_internal.h"

enum { THREADS = 256, WARPS = THREADS / 32 };
enum { TOKEN_THREADS = 64 };            /* per-token kernels: small blocks spread the tokens over the SMs */
enum { MAX_K = 64, MAX_GROUPS = 64 };   /* the routing kernel's per-thread arrays */
enum { TILE = LOOM_CUDA_MOE_TILE };     /* moe_tile */
static const size_t MAX_GRID = 1 << 16;

/* launch `kernel` with `threads` per block on the backend's stream, then check the launch */
#define LAUNCH(kernel, blocks, threads, ...)                                                                           \
    do {                                                                                                               \
        kernel<<<(blocks), (threads), 0, cuda_stream()>>>(__VA_ARGS__);                                           \
        CUDA_CHECK(cudaGetLastError());                                                                                \
    } while (0)

/* grid-stride loop over [0, n) */
#define FOR_EACH(i, n)                                                                                                 \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

static unsigned int grid_for(size_t n, int threads) {
    size_t blocks = (n + threads - 1) / threads;
    return (unsigned int)(blocks < MAX_GRID ? blocks : MAX_GRID);
}

/* grow-on-demand device work space, one slot per role */
enum scratch_slot { SCR_ROWS_A, SCR_ROWS_B, SCR_WEIGHTS, SCR_PARTS, SCR_COUNTS, SCR_SUMS, SCR_PTRS, SCR_SLOTS };
static void *scratch_buf[SCR_SLOTS];
static size_t scratch_cap[SCR_SLOTS];

static void *scratch(enum scratch_slot slot, size_t bytes) {
    if (bytes > scratch_cap[slot]) {
        size_t grown = (bytes + (1u << 21) - 1) / (1u << 21) * (1u << 21);
        CUDA_CHECK(cudaStreamSynchronize(cuda_stream())); /* queued kernels may still use the old buffer */
        CUDA_CHECK(cudaFree(scratch_buf[slot]));
        CUDA_CHECK(cudaMalloc(&scratch_buf[slot], grown));
        scratch_cap[slot] = grown;
    }
    return scratch_buf[slot];
}

/* ---------------------------------------------------------------------------------------------- */
/* the router (dots.llm1's Dots1TopkRouter, DeepSeek-V3's group-limited gate), fp32                  */

/* One thread per token n: scores = sigmoid(logits) or the row's softmax; the K best of scores + bias (ties to
 * the lower index), outside the topk_groups best groups (group score: the sum of its two largest biased
 * scores) counted as -inf when groups > 1; the weights from the unbiased scores; counts[e] += choices of e. */
static __global__ void moe_route_kernel(float *scores, int *idx, float *w, int *counts, const float *logits,
                                        const float *bias, int N, struct loom_moe_routing r) {
    int E = r.experts, K = r.top_k, G = r.groups, per = E / G;
    FOR_EACH(n, (size_t)N) {
        const float *x = logits + n * E;
        float *s = scores + n * E;
        if (!r.softmax) {
            for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-x[e]));
        } else {
            float mx = -INFINITY, sum = 0;
            for (int e = 0; e < E; e++) mx = x[e] > mx ? x[e] : mx;
            for (int e = 0; e < E; e++) sum += s[e] = expf(x[e] - mx);
            for (int e = 0; e < E; e++) s[e] /= sum;
        }
        uint64_t keep = ~0ull; /* bit g: group g may be chosen */
        if (G > 1) {
            float gscore[MAX_GROUPS];
            for (int g = 0; g < G; g++) {
                float a = -INFINITY, b = -INFINITY;
                for (int e = g * per; e < (g + 1) * per; e++) {
                    float v = s[e] + bias[e];
                    if (v > a) b = a, a = v;
                    else if (v > b) b = v;
                }
                gscore[g] = a + (per > 1 ? b : 0);
            }
            keep = 0;
            for (int k = 0; k < r.topk_groups; k++) {
                int best = -1;
                for (int g = 0; g < G; g++)
                    if (!(keep >> g & 1) && (best < 0 || gscore[g] > gscore[best])) best = g;
                keep |= 1ull << best;
            }
        }
        int chosen[MAX_K];
        for (int j = 0; j < K; j++) {
            int best = -1;
            float best_v = 0;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int q = 0; q < j; q++) taken |= chosen[q] == e;
                float v = keep >> (e / per) & 1 ? s[e] + bias[e] : -INFINITY;
                if (!taken && (best < 0 || v > best_v)) best = e, best_v = v;
            }
            chosen[j] = best;
        }
        float q = 0;
        for (int j = 0; j < K; j++) q += s[chosen[j]];
        for (int j = 0; j < K; j++) {
            float wj = s[chosen[j]];
            if (r.norm_topk) wj /= q + 1e-20f;
            w[n * K + j] = wj * r.scaling;
            idx[n * K + j] = chosen[j];
            atomicAdd(&counts[chosen[j]], 1);
        }
    }
}

static void check_routing(const struct loom_moe_routing *r) {
    CHECK(r->top_k >= 1 && r->top_k <= MAX_K, "cuda moe: top_k %d (this backend takes 1 .. %d)", r->top_k, MAX_K);
    CHECK(r->groups >= 1 && r->groups <= MAX_GROUPS && r->experts % r->groups == 0,
          "cuda moe: %d groups of %d experts (this backend takes up to %d groups dividing the experts)", r->groups,
          r->experts, MAX_GROUPS);
}

static void cuda_moe_route(float *scores, int *idx, float *w, int *counts, const float *logits, const float *bias,
                           int N, const struct loom_moe_routing *r) {
    check_routing(r);
    CUDA_CHECK(cudaMemsetAsync(counts, 0, sizeof(int) * (size_t)r->experts, cuda_stream()));
    if (N) LAUNCH(moe_route_kernel, grid_for(N, TOKEN_THREADS), TOKEN_THREADS, scores, idx, w, counts, logits, bias, N, *r);
}

/* One thread per token n0 <= n < n1: dlogits[n - n0] through the weights w_j = scale q_j / (sum q + 1e-20), the
 * balance loss (d/ds_k of s_i / S, S = sum s: (g_k - sum_i g_i s_i / S) / S, g_i = bal_scale f_i / T) and the
 * score function, in the CPU's order and types */
static __global__ void moe_route_backward_kernel(float *dlogits, const float *dw, const int *pos, const float *scores,
                                                 const int *idx, const float *f, float bal_scale, int n0, int n1,
                                                 int T, struct loom_moe_routing r) {
    int E = r.experts, K = r.top_k;
    float scale = r.scaling;
    FOR_EACH(i, (size_t)(n1 - n0)) {
        size_t n = n0 + i;
        const float *s = scores + n * E;
        const int *ix = idx + n * K, *pn = pos + i * K;
        float *d = dlogits + i * E;
        for (int e = 0; e < E; e++) d[e] = 0;
        if (r.norm_topk) {
            float q = 0, cross = 0;
            for (int j = 0; j < K; j++) q += s[ix[j]];
            float Q = q + 1e-20f;
            for (int j = 0; j < K; j++) cross += dw[pn[j]] * s[ix[j]];
            for (int j = 0; j < K; j++) d[ix[j]] += scale * (dw[pn[j]] / Q - cross / (Q * Q));
        } else {
            for (int j = 0; j < K; j++) d[ix[j]] += scale * dw[pn[j]];
        }
        if (bal_scale > 0) {
            const float *fb = f + (n / T) * E;
            double S = 0, gs = 0;
            for (int e = 0; e < E; e++) S += s[e], gs += (double)fb[e] * s[e];
            for (int e = 0; e < E; e++) d[e] += (float)(bal_scale / T * (fb[e] - gs / S) / S);
        }
        if (!r.softmax) {
            for (int e = 0; e < E; e++) d[e] *= s[e] * (1.0f - s[e]);
        } else {
            float dot = 0;
            for (int e = 0; e < E; e++) dot += s[e] * d[e];
            for (int e = 0; e < E; e++) d[e] = s[e] * (d[e] - dot);
        }
    }
}

static void cuda_moe_route_backward(float *dlogits, const float *dw, const int *pos, const float *scores,
                                    const int *idx, const float *f, float bal_scale, int n0, int n1, int T,
                                    const struct loom_moe_routing *r) {
    check_routing(r);
    CHECK(bal_scale <= 0 || (f != NULL && T > 0), "cuda moe: the balance gradient needs f and T > 0");
    if (n1 > n0)
        LAUNCH(moe_route_backward_kernel, grid_for((size_t)(n1 - n0), TOKEN_THREADS), TOKEN_THREADS, dlogits, dw, pos,
               scores, idx, f, bal_scale, n0, n1, T, *r);
}

/* ---------------------------------------------------------------------------------------------- */
/* sequence-wise balance statistics (DeepSeek-V3 report eqs. 17-20)                                  */

/* hits[b, e] += 1 for each choice of e by a token of sequence b */
static __global__ void balance_count_kernel(int *hits, const int *idx, size_t NK, int K, int T, int E) {
    FOR_EACH(a, NK) atomicAdd(&hits[(a / K / T) * E + idx[a]], 1);
}

/* f[b, e] = E / (K T) added hits[b, e] times, as the CPU adds it once per hit (so the float sums agree) */
static __global__ void balance_f_kernel(float *f, const int *hits, size_t BE, int E, int K, int T) {
    float inc = (float)E / ((float)K * T);
    FOR_EACH(i, BE) {
        float acc = 0;
        for (int c = 0; c < hits[i]; c++) acc += inc;
        f[i] = acc;
    }
}

/* part[n] = (sum_e f[b, e] s[n, e]) / (sum_e s[n, e]) / T, in double as the CPU */
static __global__ void balance_token_kernel(double *part, const float *f, const float *scores, size_t N, int E, int T) {
    FOR_EACH(n, N) {
        const float *s = scores + n * E, *fb = f + (n / T) * E;
        double S = 0, fp = 0;
        for (int e = 0; e < E; e++) S += s[e];
        for (int e = 0; e < E; e++) fp += fb[e] * s[e];
        part[n] = fp / S / T;
    }
}

/* *total = sum of part[0:n] in one block: each thread sums a fixed stride in order, then a fixed tree */
static __global__ void __launch_bounds__(THREADS) sum_kernel(double *total, const double *part, size_t n) {
    __shared__ double acc[THREADS];
    double s = 0;
    for (size_t i = threadIdx.x; i < n; i += THREADS) s += part[i];
    acc[threadIdx.x] = s;
    __syncthreads();
    for (int half = THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) acc[threadIdx.x] += acc[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) *total = acc[0];
}

static double cuda_moe_balance(float *f, const float *scores, const int *idx, int B, int T, int E, int K) {
    cudaStream_t st = cuda_stream();
    size_t BE = (size_t)B * E, N = (size_t)B * T;
    if (BE == 0) return 0.0;
    int *hits = (int *)scratch(SCR_COUNTS, sizeof(int) * BE);
    CUDA_CHECK(cudaMemsetAsync(hits, 0, sizeof(int) * BE, st));
    if (N) LAUNCH(balance_count_kernel, grid_for(N * K, THREADS), THREADS, hits, idx, N * K, K, T, E);
    LAUNCH(balance_f_kernel, grid_for(BE, THREADS), THREADS, f, hits, BE, E, K, T);
    if (N == 0) return 0.0;
    double *part = (double *)scratch(SCR_SUMS, sizeof(double) * (N + 1));
    LAUNCH(balance_token_kernel, grid_for(N, TOKEN_THREADS), TOKEN_THREADS, part, f, scores, N, E, T);
    LAUNCH(sum_kernel, 1, THREADS, part + N, part, N);
    double total = 0;
    CUDA_CHECK(cudaMemcpyAsync(&total, part + N, sizeof total, cudaMemcpyDeviceToHost, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    return total;
}

/* ---------------------------------------------------------------------------------------------- */
/* the dispatch plan: a stable counting sort of the assignments by expert                           */

/* counts[e] += assignments a0 <= a < a0 + nk choosing e */
static __global__ void plan_count_kernel(int *counts, const int *idx, int a0, int nk) {
    FOR_EACH(i, (size_t)nk) atomicAdd(&counts[idx[a0 + i]], 1);
}

/* offs[e + 1] = offs[e] + counts[e] rounded up to a multiple of tile (one thread: E is small) */
static __global__ void plan_offsets_kernel(int *offs, const int *counts, int E, int tile) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    int o = 0;
    offs[0] = 0;
    for (int e = 0; e < E; e++) {
        o += (counts[e] + tile - 1) / tile * tile;
        offs[e + 1] = o;
    }
}

/* One block per expert e: its assignments in assignment order, each one's rank among them from a block-wide
 * scan of "chooses e" over chunks of THREADS assignments (warp ballots, then the warps before it); then the
 * padding rows of its block */
static __global__ void __launch_bounds__(THREADS)
    plan_place_kernel(int *rows, float *wperm, int *pos, const int *idx, const float *w, const int *counts,
                      const int *offs, int a0, int nk, int K) {
    __shared__ int warp_hits[WARPS];
    int e = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int next = offs[e]; /* the position the chunk's first assignment of e takes */
    for (int i0 = 0; i0 < nk; i0 += THREADS) {
        int i = i0 + threadIdx.x;
        int mine = i < nk && idx[a0 + i] == e;
        unsigned int ballot = __ballot_sync(0xffffffffu, mine);
        if (lane == 0) warp_hits[warp] = __popc(ballot);
        __syncthreads();
        int rank = __popc(ballot & ((1u << lane) - 1)), chunk = 0;
        for (int q = 0; q < WARPS; q++) {
            if (q < warp) rank += warp_hits[q];
            chunk += warp_hits[q];
        }
        if (mine) {
            int p = next + rank;
            rows[p] = (a0 + i) / K;
            wperm[p] = w[a0 + i];
            pos[i] = p;
        }
        next += chunk;
        __syncthreads(); /* warp_hits is rewritten by the next chunk */
    }
    for (int p = offs[e] + counts[e] + threadIdx.x; p < offs[e + 1]; p += THREADS) {
        rows[p] = -1;
        wperm[p] = 0.0f;
    }
}

static void cuda_moe_plan(int *counts, int *offs, int *rows, float *wperm, int *pos, const int *idx, const float *w,
                          int a0, int nk, int K, int E, int tile) {
    CHECK(tile >= 1 && E >= 1 && K >= 1, "cuda moe_plan: tile %d, %d experts, top_k %d", tile, E, K);
    CUDA_CHECK(cudaMemsetAsync(counts, 0, sizeof(int) * (size_t)E, cuda_stream()));
    if (nk) LAUNCH(plan_count_kernel, grid_for(nk, THREADS), THREADS, counts, idx, a0, nk);
    LAUNCH(plan_offsets_kernel, 1, 32, offs, counts, E, tile);
    LAUNCH(plan_place_kernel, E, THREADS, rows, wperm, pos, idx, w, counts, offs, a0, nk, K);
}

/* ---------------------------------------------------------------------------------------------- */
/* permutation by expert and the weighted combine                                                   */

/* dst[p, c] = scale[p] * src[rows[p], c] (scale NULL: 1), 0 where rows[p] < 0; stored in dt */
static __global__ void permute_kernel(float *dst, const float *src, const int *rows, const float *scale, int P, int C,
                                      int dt) {
    FOR_EACH(i, (size_t)P * C) {
        size_t p = i / C, c = i % C;
        int r = rows[p];
        float v = 0.0f;
        if (r >= 0) {
            float x = src[(size_t)r * C + c];
            v = round_to(dt, scale ? scale[p] * x : x);
        }
        dst[i] = v;
    }
}

/* One block per token n = n0 + blockIdx.x: out[n, c] += scale[p] * src[p, c] over the token's K positions in
 * increasing order, multiply and add rounded separately (the CPU's `d += s * x`), then stored in dt */
static __global__ void __launch_bounds__(THREADS)
    unpermute_kernel(float *out, const float *src, const int *pos, const float *scale, int n0, int K, int C, int dt) {
    __shared__ int p[MAX_K];
    __shared__ float s[MAX_K];
    size_t n = (size_t)n0 + blockIdx.x;
    if (threadIdx.x == 0) {
        for (int j = 0; j < K; j++) { /* insertion sort: K is small */
            int v = pos[(size_t)blockIdx.x * K + j], q = j;
            for (; q > 0 && p[q - 1] > v; q--) p[q] = p[q - 1];
            p[q] = v;
        }
        for (int j = 0; j < K; j++) s[j] = scale ? scale[p[j]] : 1.0f;
    }
    __syncthreads();
    float *d = out + n * C;
    for (int c = threadIdx.x; c < C; c += THREADS) {
        float acc = d[c];
        for (int j = 0; j < K; j++) acc = __fadd_rn(acc, __fmul_rn(s[j], src[(size_t)p[j] * C + c]));
        d[c] = round_to(dt, acc);
    }
}

/* dscale[p] = dot(src[p, :], dout[rows[p], :]) in double, one warp per row; 0 where rows[p] < 0 */
static __global__ void row_dot_kernel(float *dscale, const float *src, const float *dout, const int *rows, int P,
                                      int C) {
    int p = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (p >= P) return; /* whole warps: p is the same across a warp */
    int r = rows[p];
    double s = 0;
    if (r >= 0)
        for (int c = lane; c < C; c += 32) s += (double)src[(size_t)p * C + c] * dout[(size_t)r * C + c];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) dscale[p] = (float)s;
}

template <enum loom_dtype DT>
static void cuda_moe_permute(float *dst, const float *src, const int *rows, const float *scale, int P, int C) {
    size_t n = (size_t)P * C;
    if (n) LAUNCH(permute_kernel, grid_for(n, THREADS), THREADS, dst, src, rows, scale, P, C, (int)DT);
}

template <enum loom_dtype DT>
static void cuda_moe_unpermute(float *out, const float *src, const int *pos, const float *scale, int n0, int n1, int K,
                               int C) {
    CHECK(K >= 1 && K <= MAX_K, "cuda moe_unpermute: top_k %d (this backend takes 1 .. %d)", K, MAX_K);
    if (n1 > n0 && C > 0) LAUNCH(unpermute_kernel, (unsigned int)(n1 - n0), THREADS, out, src, pos, scale, n0, K, C, (int)DT);
}

template <enum loom_dtype DT>
static void cuda_moe_unpermute_backward(float *dsrc, float *dscale, const float *dout, const float *src,
                                        const int *rows, const float *scale, int P, int C) {
    if (P == 0) return;
    if (C > 0) LAUNCH(permute_kernel, grid_for((size_t)P * C, THREADS), THREADS, dsrc, dout, rows, scale, P, C, (int)DT);
    LAUNCH(row_dot_kernel, (unsigned int)((P + WARPS - 1) / WARPS), THREADS, dscale, src, dout, rows, P, C);
}

/* ---------------------------------------------------------------------------------------------- */
/* grouped GEMMs. As in ops_cuda.cu, a row-major [R, K] matrix is the column-major [K, R] transpose, so each
 * row-major product is computed as its column-major transpose; group k of a call is one column-major
 * problem C_k = op(A_k) op(B_k) + beta C_k whose shape differs from the others' only in its row count.
 *
 * cublasGemmGroupedBatchedEx takes fp32 operands with an fp32 result, and bf16 / fp16 operands with a result in
 * the same dtype (cuBLAS's table of supported types), accumulating in fp32 either way. So for bf16 / fp16 the
 * operands are converted to the dtype, the results land in the dtype (the fp32 sum rounded once, which is what the
 * op stores) and are widened into the fp32 output; an accumulating call first converts the output rows it adds
 * to (exact: they hold values of the dtype already). Device pointers of half operands stay 16-byte aligned where
 * cuBLAS asks for it: row blocks start at multiples of their row length, packed weights at multiples of 8
 * elements.                                                                                          */

enum { CHUNK = 128 };                                /* groups per grouped call (kernel-parameter tables) */
static const size_t CHUNK_BYTES = (size_t)512 << 20; /* converted weights or weight-gradient parts per chunk */

/* up to CHUNK non-empty groups of one call, in group order; passed to kernels by value */
struct group_list {
    int n;
    int group[CHUNK];              /* g: its weight is weight + g * stride */
    int start[CHUNK], count[CHUNK];
};

/* the operand and result pointers of the problems of one chunk (device addresses), by value */
struct ptr_list {
    const void *a[CHUNK];
    const void *b[CHUNK];
    void *c[CHUNK];
};

/* the next up to `limit` non-empty groups from g on into gl; returns where the following chunk starts */
static int next_chunk(struct group_list *gl, const int *start, const int *count, int g, int G, int limit) {
    gl->n = 0;
    for (; g < G && gl->n < limit; g++) {
        CHECK(count[g] >= 0 && start[g] >= 0, "grouped GEMM: group %d has start %d, count %d", g, start[g], count[g]);
        if (!count[g]) continue;
        gl->group[gl->n] = g, gl->start[gl->n] = start[g], gl->count[gl->n] = count[g];
        gl->n++;
    }
    return g;
}

/* groups per chunk when each needs `bytes` of work space */
static int chunk_limit(size_t bytes) {
    size_t most = CHUNK, n = bytes ? CHUNK_BYTES / bytes : most;
    return (int)(n < 1 ? 1 : n > most ? most : n);
}

/* elements of one packed weight (or weight-gradient part) slot: numel rounded up to 16 bytes of half values */
static size_t slot_of(size_t numel) { return (numel + 7) / 8 * 8; }

static __global__ void store_ptrs_kernel(const void **a, const void **b, void **c, struct ptr_list l, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) a[i] = l.a[i], b[i] = l.b[i], c[i] = l.c[i];
}

static __device__ __forceinline__ void store_half(void *dst, size_t i, float x, int dt) {
    if (dt == LOOM_BF16) ((__nv_bfloat16 *)dst)[i] = __float2bfloat16_rn(x);
    else ((__half *)dst)[i] = __float2half_rn(x);
}

static __device__ __forceinline__ float load_half(const void *src, size_t i, int dt) {
    return dt == LOOM_BF16 ? __bfloat162float(((const __nv_bfloat16 *)src)[i]) : __half2float(((const __half *)src)[i]);
}

/* dst[i] = src[i] in dt (bf16 or fp16) */
static __global__ void to_half_kernel(void *dst, const float *src, size_t n, int dt) {
    FOR_EACH(i, n) store_half(dst, i, src[i], dt);
}

/* dst[k * slot + o] = src[group[k] * stride + o] in dt, o < numel: the chunk's weights, packed */
static __global__ void pack_half_kernel(void *dst, const float *src, size_t stride, size_t numel, size_t slot,
                                        struct group_list gl, int dt) {
    FOR_EACH(i, (size_t)gl.n * numel) {
        size_t k = i / numel, o = i % numel;
        store_half(dst, k * slot + o, src[(size_t)gl.group[k] * stride + o], dt);
    }
}

/* out[(start + r) * width + c] = h[(start + r - lo) * width + c] widened, r < count, for group blockIdx.y */
static __global__ void widen_groups_kernel(float *out, const void *h, int lo, int width, struct group_list gl, int dt) {
    int k = blockIdx.y;
    size_t first = (size_t)gl.start[k] * width, n = (size_t)gl.count[k] * width, hfirst = first - (size_t)lo * width;
    FOR_EACH(i, n) out[first + i] = load_half(h, hfirst + i, dt);
}

/* dweight[group[k] * stride + o] += part[k * slot + o] (a value of dt): each expert's micro-batch gradient, stored in
 * dt, into its fp32 sum */
static __global__ void add_parts_kernel(float *dweight, size_t stride, const void *part, size_t numel, size_t slot,
                                        struct group_list gl, int dt) {
    FOR_EACH(i, (size_t)gl.n * numel) {
        size_t k = i / numel, o = i % numel;
        dweight[(size_t)gl.group[k] * stride + o] += load_half(part, k * slot + o, dt);
    }
}

/* bytes of one operand element in dt's GEMMs */
static size_t operand_bytes(enum loom_dtype dt) { return dt == LOOM_F32 ? 4 : 2; }

/* The rows [lo, hi) x width of a row-wise fp32 tensor as the GEMMs read or write them: x itself in fp32, else work
 * space `slot` in dt, filled with x's rows when `fill`. Returns the address of row lo. */
static char *operand_rows(enum loom_dtype dt, const float *x, int lo, int hi, int width, enum scratch_slot slot,
                          int fill) {
    size_t n = (size_t)(hi - lo) * width;
    if (dt == LOOM_F32) return (char *)(x + (size_t)lo * width);
    void *h = scratch(slot, 2 * (n ? n : 1));
    if (fill && n) LAUNCH(to_half_kernel, grid_for(n, THREADS), THREADS, h, x + (size_t)lo * width, n, (int)dt);
    return (char *)h;
}

/* The chunk's weights as the GEMMs read them, group k's at out[k]: fp32, the parameters themselves; else packed
 * copies in dt */
static void operand_weights(enum loom_dtype dt, const float *weight, size_t stride, size_t numel,
                            const struct group_list *gl, const void **out) {
    if (dt == LOOM_F32) {
        for (int k = 0; k < gl->n; k++) out[k] = weight + (size_t)gl->group[k] * stride;
        return;
    }
    size_t slot = slot_of(numel);
    char *h = (char *)scratch(SCR_WEIGHTS, 2 * slot * gl->n);
    LAUNCH(pack_half_kernel, grid_for(numel * gl->n, THREADS), THREADS, h, weight, stride, numel, slot, *gl, (int)dt);
    for (int k = 0; k < gl->n; k++) out[k] = h + 2 * slot * k;
}

/* the first and one-past-the-last rows of all non-empty groups; lo == hi when there is none */
static void row_span(const int *start, const int *count, int G, int *lo, int *hi) {
    *lo = *hi = 0;
    int any = 0;
    for (int g = 0; g < G; g++) {
        if (!count[g]) continue;
        if (!any || start[g] < *lo) *lo = start[g];
        if (!any || start[g] + count[g] > *hi) *hi = start[g] + count[g];
        any = 1;
    }
}

/* 1 until cuBLAS refuses a dtype's grouped GEMM, then that dtype loops over cublasGemmEx (said once on stderr) */
static int grouped_ok[3] = {1, 1, 1};

/* The chunk's problems k < n: C_k = op(A_k) op(B_k) + beta C_k with shapes m[k] x nn[k] x kk[k], A, B and C in dt
 * (fp32, or bf16 / fp16 with fp32 accumulation), leading dimensions lda, ldb, ldc */
static void gemm_chunk(enum loom_dtype dt, cublasOperation_t ta, cublasOperation_t tb, const int *m, const int *nn,
                       const int *kk, const struct ptr_list *p, int lda, int ldb, float beta, int ldc, int n) {
    cudaDataType_t t = dt == LOOM_F32 ? CUDA_R_32F : dt == LOOM_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    cublasHandle_t h = loom_cuda_cublas();
    const float one = 1.0f;
    if (n == 0) return;
#if CUBLAS_VERSION >= 120500
    if (grouped_ok[dt]) {
        cublasOperation_t ta_v[CHUNK], tb_v[CHUNK];
        int lda_v[CHUNK], ldb_v[CHUNK], ldc_v[CHUNK], size_v[CHUNK];
        float alpha_v[CHUNK], beta_v[CHUNK];
        for (int k = 0; k < n; k++) {
            ta_v[k] = ta, tb_v[k] = tb, lda_v[k] = lda, ldb_v[k] = ldb, ldc_v[k] = ldc, size_v[k] = 1;
            alpha_v[k] = 1.0f, beta_v[k] = beta;
        }
        void **dev = (void **)scratch(SCR_PTRS, 3 * CHUNK * sizeof(void *));
        LAUNCH(store_ptrs_kernel, 1, CHUNK, (const void **)dev, (const void **)(dev + CHUNK), dev + 2 * CHUNK, *p, n);
        cublasStatus_t rc = cublasGemmGroupedBatchedEx(h, ta_v, tb_v, m, nn, kk, alpha_v, (const void *const *)dev, t,
                                                       lda_v, (const void *const *)(dev + CHUNK), t, ldb_v, beta_v,
                                                       (void *const *)(dev + 2 * CHUNK), t, ldc_v, n, size_v,
                                                       CUBLAS_COMPUTE_32F);
        if (rc == CUBLAS_STATUS_SUCCESS) return;
        /* refused: the same problems go through cublasGemmEx below, which stops on arguments that are wrong */
        if (rc != CUBLAS_STATUS_NOT_SUPPORTED && rc != CUBLAS_STATUS_INVALID_VALUE)
            loom_fatal(__FILE__, __LINE__, "cublasGemmGroupedBatchedEx", "cuBLAS error %d: %s", (int)rc,
                       cublasGetStatusString(rc));
        grouped_ok[dt] = 0;
        fprintf(stderr, "loom: cuda: cublasGemmGroupedBatchedEx refused %s operands (%s); the grouped GEMMs loop over "
                "cublasGemmEx\n", dt == LOOM_F32 ? "fp32" : dt == LOOM_BF16 ? "bf16" : "fp16", cublasGetStatusString(rc));
    }
#endif
    for (int k = 0; k < n; k++)
        CUBLAS_CHECK(cublasGemmEx(h, ta, tb, m[k], nn[k], kk[k], &one, p->a[k], t, lda, p->b[k], t, ldb, &beta, p->c[k],
                                  t, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* the chunk's rows [start, start + count) x width of the fp32 output from the dt results (row lo at h) */
static void widen_groups(enum loom_dtype dt, float *out, const char *h, int lo, int width, const struct group_list *gl) {
    int most = 0;
    for (int k = 0; k < gl->n; k++) most = gl->count[k] > most ? gl->count[k] : most;
    dim3 grid(grid_for((size_t)most * width, THREADS), gl->n);
    LAUNCH(widen_groups_kernel, grid, THREADS, out, h, lo, width, *gl, (int)dt);
}

/* The two grouped GEMMs that read the experts' weights W_g [OC, C] as cuBLAS's A: over the rows of each group,
 * y[n, ny] (+)= x[n, nx] @ op(W_g), op(W) = W^T (ta CUBLAS_OP_T: nx = C, ny = OC) or W (CUBLAS_OP_N: nx = OC,
 * ny = C); in cuBLAS's column-major terms y_g^T (+)= op(W_g)^T x_g^T */
template <enum loom_dtype DT>
static void weight_gemm(float *y, int ny, const float *x, int nx, const float *weight, size_t stride,
                        cublasOperation_t ta, int lo, int hi, const int *start, const int *count, int G, int C, int OC,
                        int accumulate) {
    const char *xh = operand_rows(DT, x, lo, hi, nx, SCR_ROWS_A, 1);
    char *yh = operand_rows(DT, y, lo, hi, ny, SCR_ROWS_B, accumulate);
    size_t numel = (size_t)OC * C, es = operand_bytes(DT);
    int limit = DT == LOOM_F32 ? CHUNK : chunk_limit(2 * slot_of(numel));
    struct group_list gl;
    for (int g = next_chunk(&gl, start, count, 0, G, limit); gl.n; g = next_chunk(&gl, start, count, g, G, limit)) {
        struct ptr_list p;
        int m[CHUNK], nn[CHUNK], kk[CHUNK];
        operand_weights(DT, weight, stride, numel, &gl, p.a);
        for (int k = 0; k < gl.n; k++) {
            m[k] = ny, nn[k] = gl.count[k], kk[k] = nx;
            p.b[k] = xh + (size_t)(gl.start[k] - lo) * nx * es;
            p.c[k] = yh + (size_t)(gl.start[k] - lo) * ny * es;
        }
        gemm_chunk(DT, ta, CUBLAS_OP_N, m, nn, kk, &p, C, nx, accumulate ? 1.0f : 0.0f, ny, gl.n);
        if (DT != LOOM_F32) widen_groups(DT, y, yh, lo, ny, &gl);
    }
}

template <enum loom_dtype DT>
static void cuda_grouped_matmul_forward(float *out, const float *inp, const float *weight, size_t stride,
                                        const int *start, const int *count, int G, int C, int OC) {
    /* group k: out_k[n_k, OC] = inp_k[n_k, C] @ W_k^T  <=>  out_k^T[OC, n_k] = W_k[OC, C] @ inp_k^T[C, n_k] */
    int lo, hi;
    row_span(start, count, G, &lo, &hi);
    if (lo == hi || C == 0 || OC == 0) return;
    weight_gemm<DT>(out, OC, inp, C, weight, stride, CUBLAS_OP_T, lo, hi, start, count, G, C, OC, 0);
}

template <enum loom_dtype DT>
static void cuda_grouped_matmul_backward_input(float *dinp, const float *dout, const float *weight, size_t stride,
                                               const int *start, const int *count, int G, int C, int OC,
                                               int accumulate) {
    /* group k: dinp_k[n_k, C] (+)= dout_k[n_k, OC] @ W_k  <=>  dinp_k^T[C, n_k] (+)= W_k^T[C, OC] @ dout_k^T[OC, n_k] */
    int lo, hi;
    row_span(start, count, G, &lo, &hi);
    if (lo == hi || C == 0) return;
    CHECK(OC > 0, "grouped_matmul_backward_input: OC = %d", OC);
    weight_gemm<DT>(dinp, C, dout, OC, weight, stride, CUBLAS_OP_N, lo, hi, start, count, G, C, OC, accumulate);
}

template <enum loom_dtype DT>
static void cuda_grouped_matmul_backward_weight(float *dweight, size_t stride, const float *dout, const float *inp,
                                                const int *start, const int *count, int G, int C, int OC) {
    /* group k: dW_k[OC, C] += dout_k^T[OC, n_k] @ inp_k[n_k, C]  <=>  dW_k^T[C, OC] += inp_k^T[C, n_k] @ dout_k[n_k, OC];
     * bf16 / fp16: each expert's contribution lands in parts of the dtype, then is added to its fp32 sum */
    int lo, hi;
    row_span(start, count, G, &lo, &hi);
    if (lo == hi || C == 0 || OC == 0) return;
    const char *x = operand_rows(DT, inp, lo, hi, C, SCR_ROWS_A, 1);
    const char *dy = operand_rows(DT, dout, lo, hi, OC, SCR_ROWS_B, 1);
    size_t numel = (size_t)OC * C, slot = slot_of(numel), es = operand_bytes(DT);
    int limit = DT == LOOM_F32 ? CHUNK : chunk_limit(2 * slot);
    struct group_list gl;
    for (int g = next_chunk(&gl, start, count, 0, G, limit); gl.n; g = next_chunk(&gl, start, count, g, G, limit)) {
        struct ptr_list p;
        int m[CHUNK], nn[CHUNK], kk[CHUNK];
        char *parts = DT == LOOM_F32 ? NULL : (char *)scratch(SCR_PARTS, 2 * slot * gl.n);
        for (int k = 0; k < gl.n; k++) {
            m[k] = C, nn[k] = OC, kk[k] = gl.count[k];
            p.a[k] = x + (size_t)(gl.start[k] - lo) * C * es;
            p.b[k] = dy + (size_t)(gl.start[k] - lo) * OC * es;
            p.c[k] = DT == LOOM_F32 ? (void *)(dweight + (size_t)gl.group[k] * stride) : (void *)(parts + 2 * slot * k);
        }
        gemm_chunk(DT, CUBLAS_OP_N, CUBLAS_OP_T, m, nn, kk, &p, C, OC, DT == LOOM_F32 ? 1.0f : 0.0f, C, gl.n);
        if (DT != LOOM_F32)
            LAUNCH(add_parts_kernel, grid_for(numel * gl.n, THREADS), THREADS, dweight, stride, parts, numel, slot, gl,
                   (int)DT);
    }
}

/* ---------------------------------------------------------------------------------------------- */

template <enum loom_dtype DT> static void moe_table_fill(struct loom_ops *t) {
    t->moe_tile = TILE;
    t->grouped_matmul_forward = cuda_grouped_matmul_forward<DT>;
    t->grouped_matmul_backward_input = cuda_grouped_matmul_backward_input<DT>;
    t->grouped_matmul_backward_weight = cuda_grouped_matmul_backward_weight<DT>;
    t->moe_route = cuda_moe_route;
    t->moe_route_backward = cuda_moe_route_backward;
    t->moe_balance = cuda_moe_balance;
    t->moe_plan = cuda_moe_plan;
    t->moe_permute = cuda_moe_permute<DT>;
    t->moe_unpermute = cuda_moe_unpermute<DT>;
    t->moe_unpermute_backward = cuda_moe_unpermute_backward<DT>;
}

void loom_cuda_moe_fill(struct loom_ops *t, enum loom_dtype dt) {
    switch (dt) {
    case LOOM_F32: moe_table_fill<LOOM_F32>(t); break;
    case LOOM_BF16: moe_table_fill<LOOM_BF16>(t); break;
    case LOOM_F16: moe_table_fill<LOOM_F16>(t); break;
    default: CHECK(0, "cuda moe: unknown compute dtype %d", (int)dt);
    }
}
