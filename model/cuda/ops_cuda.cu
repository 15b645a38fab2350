/*
 * model/cuda/ops_cuda.cu — the CUDA backend: every op of `struct loom_ops` (model/ops.h) on one GPU.
 *
 * Correctness first: each kernel computes what model/ops_cpu.c computes, in the same formulas and mostly the
 * same precision (double where the CPU sums in double), with simple one-thread-per-element or
 * one-block-per-row kernels. Attention is flash attention (model/cuda/flash_attn.cu: O(T) memory, the row
 * logsumexp saved) for the head widths it covers, and otherwise the naive O(T^2)-memory algorithm with the
 * probabilities stored [B,H,T,T] like the CPU.
 *
 * Precision: activations live in fp32 device memory. The tables for bf16 / fp16 round, at exactly the points
 * model/ops_cpu_mixed.c lists, the tensors a GPU stores in that dtype (rounding matches core/dtype.c bit for
 * bit, NaN included). GEMMs are cuBLAS: fp32 with TF32 off for the fp32 table; for bf16 / fp16 the operands
 * are converted to that dtype (exact: they are already rounded to it) and multiplied on the tensor cores
 * with fp32 accumulation and fp32 output, which the op then rounds.
 *
 * Gradient rule (model/ops.h): parameter gradients accumulate (+=), activation gradients assign (=) unless
 * an op takes an `accumulate` flag.
 *
 * Determinism: every reduction has a fixed shape (fixed block size, fixed tree, fixed chunking), so results
 * repeat bit for bit run to run (embedding_backward and scatter_add_rows add rows in index order, one thread
 * per column, rather than with atomics). The summation order differs from the CPU
 * (and nvcc contracts a*b+c into FMAs), so results match the CPU backend to rounding, not bit for bit.
 *
 * Streams: one stream and one cuBLAS handle per process; every op is queued on that stream, and to_host,
 * from_host and sum_squares wait for it, so callers see synchronous semantics.
 */
#include "model/cuda/ops_cuda.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "core/error.h"
#include "core/dtype.h"
#include "model/cuda/cuda_internal.h" /* CUDA_CHECK, CUBLAS_CHECK, round_to, warp_sum; the MoE ops (moe_cuda.cu) */
#include "model/cuda/flash_attn.h"

enum { BLOCK = 256, WARPS = BLOCK / 32 };
static const size_t MAX_GRID = 1 << 16;

/* launch `kernel` with BLOCK threads per block on the backend's stream, then check the launch */
#define LAUNCH(kernel, blocks, ...)                                                                                    \
    do {                                                                                                               \
        kernel<<<(blocks), BLOCK, 0, be.stream>>>(__VA_ARGS__);                                                        \
        CUDA_CHECK(cudaGetLastError());                                                                                \
    } while (0)

/* grid-stride loop over [0, n): any grid size covers every index */
#define FOR_EACH(i, n)                                                                                                 \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* grow-on-demand device scratch; one slot per role so an op can hold several at once */
enum scratch_slot { SCRATCH_A, SCRATCH_B, SCRATCH_F32, SCRATCH_SLOTS };

static struct {
    int ready;
    int device;
    cudaStream_t stream;
    cublasHandle_t cublas;
    void *scratch[SCRATCH_SLOTS];
    size_t scratch_bytes[SCRATCH_SLOTS];
    struct loom_ops tables[3]; /* indexed by enum loom_dtype; tables[LOOM_F32] is everyone's `exact` */
} be;

static unsigned int grid_for(size_t n) {
    size_t blocks = (n + BLOCK - 1) / BLOCK;
    return (unsigned int)(blocks < MAX_GRID ? blocks : MAX_GRID);
}

static void *scratch(enum scratch_slot slot, size_t bytes) {
    if (bytes > be.scratch_bytes[slot]) {
        size_t grown = (bytes + (1u << 21) - 1) / (1u << 21) * (1u << 21);
        CUDA_CHECK(cudaStreamSynchronize(be.stream)); /* queued kernels may still use the old buffer */
        CUDA_CHECK(cudaFree(be.scratch[slot]));
        CUDA_CHECK(cudaMalloc(&be.scratch[slot], grown));
        be.scratch_bytes[slot] = grown;
    }
    return be.scratch[slot];
}

/* ---------------------------------------------------------------------------------------------- */
/* device helpers                                                                                   */

/* (round_to, warp_sum: model/cuda/cuda_internal.h) */

/* block-wide sum over BLOCK threads (all must call it; all get the result): warp trees, then the WARPS
 * warp sums added in warp order by every thread — a fixed order, so deterministic */
template <typename T> static __device__ T block_sum(T v) {
    __shared__ T part[WARPS];
    v = warp_sum(v);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
    __syncthreads();
    T total = part[0];
    for (int w = 1; w < WARPS; w++) total += part[w];
    __syncthreads(); /* part is free for the next call */
    return total;
}

/* block-wide max over BLOCK threads; NaNs are ignored, like the CPU's `x > m ? x : m` */
static __device__ float block_max(float v) {
    __shared__ float part[WARPS];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
    __syncthreads();
    float m = part[0];
    for (int w = 1; w < WARPS; w++) m = fmaxf(m, part[w]);
    __syncthreads();
    return m;
}

/* x[i] = round_to(dt, x[i]) */
static __global__ void round_kernel(float *x, size_t n, int dt) { FOR_EACH(i, n) x[i] = round_to(dt, x[i]); }

static void round_array(enum loom_dtype dt, float *x, size_t n) {
    if (dt == LOOM_F32 || n == 0) return;
    LAUNCH(round_kernel, grid_for(n), x, n, (int)dt);
}

/* ---------------------------------------------------------------------------------------------- */
/* memory                                                                                           */

static void note_usage(void);

static void *cuda_alloc(size_t bytes) {
    /* cudaMalloc aligns to 256 bytes; whole 256-byte units are zeroed */
    size_t rounded = (bytes + 255) / 256 * 256;
    if (rounded == 0) rounded = 256;
    void *p = NULL;
    cudaError_t rc = cudaMalloc(&p, rounded);
    CHECK(rc == cudaSuccess, "cannot allocate %zu bytes on the GPU: %s", bytes, cudaGetErrorString(rc));
    CUDA_CHECK(cudaMemsetAsync(p, 0, rounded, be.stream));
    note_usage();
    return p;
}

/* the most device memory in use at any allocation (cudaMemGetInfo: the whole device, this process and
 * others alike; the reports call it this rank's peak) */
static size_t device_peak;

static void note_usage(void) {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess && total_b - free_b > device_peak) device_peak = total_b - free_b;
}

static size_t cuda_peak_bytes(void) {
    note_usage();
    return device_peak;
}

static void cuda_free(void *p) {
    if (!p) return;
    CUDA_CHECK(cudaStreamSynchronize(be.stream));
    CUDA_CHECK(cudaFree(p));
}

static void cuda_zero(void *p, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, be.stream));
}

static void cuda_to_host(void *host, const void *dev, size_t bytes) {
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, be.stream));
    CUDA_CHECK(cudaStreamSynchronize(be.stream));
}

static void cuda_from_host(void *dev, const void *host, size_t bytes) {
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, be.stream));
    CUDA_CHECK(cudaStreamSynchronize(be.stream)); /* the caller may reuse `host` at once */
}

/* ---------------------------------------------------------------------------------------------- */
/* linear. cuBLAS is column-major: a row-major [R, K] matrix is its column-major [K, R] transpose, so
 * each row-major product Y = A B is computed as the column-major Y^T = B^T A^T (as llm.c does).     */

/* dst[i] = src[i] in dt (bf16 or fp16): a tensor-core GEMM operand */
static __global__ void to_half_kernel(void *dst, const float *src, size_t n, int dt) {
    FOR_EACH(i, n) {
        if (dt == LOOM_BF16)
            ((__nv_bfloat16 *)dst)[i] = __float2bfloat16_rn(src[i]);
        else
            ((__half *)dst)[i] = __float2half_rn(src[i]);
    }
}

/* column-major C[m,n] (ldc) = op(A) op(B) + beta C with A, B, C fp32 in memory; A and B contiguous, with
 * lda x k (lda x m when transposed) and ldb x n (ldb x k when transposed) elements. fp32 GEMM (no TF32)
 * when dt is fp32; otherwise A and B are converted to dt in scratch and multiplied on the tensor cores with
 * fp32 accumulation, fp32 output. */
static void gemm(enum loom_dtype dt, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *A,
                 int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (m == 0 || n == 0) return;
    if (k == 0) { /* empty sum: C = beta C */
        if (beta == 0.0f) CUDA_CHECK(cudaMemsetAsync(C, 0, sizeof(float) * (size_t)ldc * n, be.stream));
        return;
    }
    const float one = 1.0f;
    if (dt == LOOM_F32) {
        CUBLAS_CHECK(cublasSgemm(be.cublas, ta, tb, m, n, k, &one, A, lda, B, ldb, &beta, C, ldc));
        return;
    }
    size_t a_n = (size_t)lda * (ta == CUBLAS_OP_N ? k : m), b_n = (size_t)ldb * (tb == CUBLAS_OP_N ? n : k);
    void *a16 = scratch(SCRATCH_A, 2 * a_n), *b16 = scratch(SCRATCH_B, 2 * b_n);
    LAUNCH(to_half_kernel, grid_for(a_n), a16, A, a_n, (int)dt);
    LAUNCH(to_half_kernel, grid_for(b_n), b16, B, b_n, (int)dt);
    cudaDataType_t t = dt == LOOM_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    CUBLAS_CHECK(cublasGemmEx(be.cublas, ta, tb, m, n, k, &one, a16, t, lda, b16, t, ldb, &beta, C, CUDA_R_32F, ldc,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

template <enum loom_dtype DT>
static void cuda_matmul_forward(float *out, const float *inp, const float *weight, int N, int C, int OC) {
    /* out[N,OC] = inp[N,C] @ weight[OC,C]^T  <=>  out^T[OC,N] = weight[OC,C] @ inp^T[C,N] */
    gemm(DT, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, weight, C, inp, C, 0.0f, out, OC);
    round_array(DT, out, (size_t)N * OC);
}

template <enum loom_dtype DT>
static void cuda_matmul_backward_input(float *dinp, const float *dout, const float *weight, int N, int C, int OC,
                                       int accumulate) {
    /* dinp[N,C] (+)= dout[N,OC] @ weight[OC,C]  <=>  dinp^T[C,N] (+)= weight^T[C,OC] @ dout^T[OC,N] */
    gemm(DT, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, weight, C, dout, OC, accumulate ? 1.0f : 0.0f, dinp, C);
    round_array(DT, dinp, (size_t)N * C);
}

/* dweight[i] += round_to(dt, part[i]): a micro-batch's weight gradient, stored in dt, into the fp32 sum */
static __global__ void add_rounded_kernel(float *dweight, const float *part, size_t n, int dt) {
    FOR_EACH(i, n) dweight[i] += round_to(dt, part[i]);
}

template <enum loom_dtype DT>
static void cuda_matmul_backward_weight(float *dweight, const float *dout, const float *inp, int N, int C, int OC) {
    /* dweight[OC,C] += dout^T[OC,N] @ inp[N,C]  <=>  dweight^T[C,OC] += inp^T[C,N] @ dout[N,OC] */
    if (N == 0 || C == 0 || OC == 0) return;
    if (DT == LOOM_F32) {
        gemm(DT, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, inp, C, dout, OC, 1.0f, dweight, C);
        return;
    }
    size_t n = (size_t)OC * C;
    float *part = (float *)scratch(SCRATCH_F32, sizeof(float) * n);
    gemm(DT, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, inp, C, dout, OC, 0.0f, part, C);
    LAUNCH(add_rounded_kernel, grid_for(n), dweight, part, n, (int)DT);
}

/* ---------------------------------------------------------------------------------------------- */
/* embedding                                                                                        */

/* out[n, c] = wte[ids[n], c], or 0 where ids[n] < 0; stored in dt */
static __global__ void embedding_forward_kernel(float *out, const int *ids, const float *wte, int N, int C, int dt) {
    FOR_EACH(i, (size_t)N * C) {
        size_t n = i / C, c = i % C;
        int id = ids[n];
        out[i] = id >= 0 ? round_to(dt, wte[(size_t)id * C + c]) : 0.0f;
    }
}

template <enum loom_dtype DT>
static void cuda_embedding_forward(float *out, const int *ids, const float *wte, int N, int C) {
    size_t n = (size_t)N * C;
    if (n) LAUNCH(embedding_forward_kernel, grid_for(n), out, ids, wte, N, C, (int)DT);
}

/* dwte[ids[n], c] += dout[n, c] where ids[n] >= 0, tokens added in n order like the CPU backend: one thread
 * per column walks the tokens (deterministic; the parallelism is over columns only, correctness first) */
static __global__ void embedding_backward_kernel(float *dwte, const float *dout, const int *ids, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int n = 0; n < N; n++) {
        int id = ids[n];
        if (id >= 0) dwte[(size_t)id * C + c] += dout[(size_t)n * C + c];
    }
}

static void cuda_embedding_backward(float *dwte, const float *dout, const int *ids, int N, int C) {
    if ((size_t)N * C) LAUNCH(embedding_backward_kernel, (C + 255) / 256, dwte, dout, ids, N, C);
}

/* ---------------------------------------------------------------------------------------------- */
/* RMSNorm (Zhang & Sennrich 2019): y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps)                */

/* one block per row n: rstd[n] from the sum of squares in double; out[n, 0:C] = x * rstd * w in dt */
static __global__ void __launch_bounds__(BLOCK)
    rmsnorm_forward_kernel(float *out, float *rstd, const float *inp, const float *weight, int C, int ld_out,
                           int ld_inp, float eps, int dt) {
    int n = blockIdx.x;
    const float *x = inp + (size_t)n * ld_inp;
    float *y = out + (size_t)n * ld_out;
    double ss = 0;
    for (int c = threadIdx.x; c < C; c += BLOCK) ss += (double)x[c] * x[c];
    ss = block_sum(ss);
    float r = (float)(1.0 / sqrt(ss / C + eps));
    for (int c = threadIdx.x; c < C; c += BLOCK) y[c] = round_to(dt, x[c] * r * weight[c]);
    if (threadIdx.x == 0) rstd[n] = r;
}

template <enum loom_dtype DT>
static void cuda_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                                 int ld_out, int ld_inp, float eps) {
    if (N) LAUNCH(rmsnorm_forward_kernel, N, out, rstd, inp, weight, C, ld_out, ld_inp, eps, (int)DT);
}

/* one block per row n: dx = rstd * (w*dy - xhat * mean(xhat * w*dy)), xhat = x * rstd (the mean in double);
 * stored in dt */
static __global__ void __launch_bounds__(BLOCK)
    rmsnorm_backward_kernel(float *dinp, const float *dout, const float *inp, const float *weight, const float *rstd,
                            int C, int ld_out, int ld_inp, int dt) {
    int n = blockIdx.x;
    const float *x = inp + (size_t)n * ld_inp;
    const float *dy = dout + (size_t)n * ld_out;
    float *dx = dinp + (size_t)n * ld_inp;
    float r = rstd[n];
    double dot = 0;
    for (int c = threadIdx.x; c < C; c += BLOCK) dot += (double)dy[c] * weight[c] * x[c] * r;
    dot = block_sum(dot);
    float m = (float)(dot / C);
    for (int c = threadIdx.x; c < C; c += BLOCK) dx[c] = round_to(dt, r * (dy[c] * weight[c] - x[c] * r * m));
}

enum { RMS_ROWS = 128 }; /* rows per partial sum of the weight gradient */

/* partial[chunk, c] = Σ over the RMS_ROWS rows n of chunk (blockIdx.x) of dout[n, c] * inp[n, c] * rstd[n] */
static __global__ void rmsnorm_dweight_partial_kernel(float *partial, const float *dout, const float *inp,
                                                      const float *rstd, int N, int C, int ld_out, int ld_inp) {
    int c = blockIdx.y * BLOCK + threadIdx.x;
    if (c >= C) return;
    int n0 = blockIdx.x * RMS_ROWS, n1 = n0 + RMS_ROWS < N ? n0 + RMS_ROWS : N;
    float s = 0;
    for (int n = n0; n < n1; n++) s += dout[(size_t)n * ld_out + c] * inp[(size_t)n * ld_inp + c] * rstd[n];
    partial[(size_t)blockIdx.x * C + c] = s;
}

/* dweight[c] += Σ_chunk partial[chunk, c], chunks in order */
static __global__ void rmsnorm_dweight_sum_kernel(float *dweight, const float *partial, int nchunks, int C) {
    FOR_EACH(c, (size_t)C) {
        float s = 0;
        for (int k = 0; k < nchunks; k++) s += partial[(size_t)k * C + c];
        dweight[c] += s;
    }
}

template <enum loom_dtype DT>
static void cuda_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                                  const float *rstd, int N, int C, int ld_out, int ld_inp) {
    if (N == 0 || C == 0) return;
    LAUNCH(rmsnorm_backward_kernel, N, dinp, dout, inp, weight, rstd, C, ld_out, ld_inp, (int)DT);
    int nchunks = (N + RMS_ROWS - 1) / RMS_ROWS;
    float *partial = (float *)scratch(SCRATCH_F32, sizeof(float) * (size_t)nchunks * C);
    LAUNCH(rmsnorm_dweight_partial_kernel, dim3(nchunks, (C + BLOCK - 1) / BLOCK), partial, dout, inp, rstd, N, C,
           ld_out, ld_inp);
    LAUNCH(rmsnorm_dweight_sum_kernel, grid_for(C), dweight, partial, nchunks, C);
}

/* ---------------------------------------------------------------------------------------------- */
/* RoPE (Su et al. 2021): interleaved pairs (2i, 2i+1) as DeepSeek-V3; half-split pairs (i, i + D/2) as
 * Llama's rotate_half. Frequencies theta^(-2i/D); the angle in double, as the CPU.                  */

/* one thread per (row n, pair i): rotate pair i of every head of row n by the angle of position n % T
 * (sign -1: the inverse rotation), results stored in dt */
static __global__ void rope_kernel(float *x, int N, int T, int H, int ld, int head_stride, int D, float theta,
                                   int interleaved, float sign, int dt) {
    int half = D / 2;
    FOR_EACH(e, (size_t)N * half) {
        int n = (int)(e / half), i = (int)(e % half);
        int pos = n % T;
        double freq = pow((double)theta, -2.0 * i / D);
        double ang = pos * freq;
        float c = (float)cos(ang), s = sign * (float)sin(ang);
        int a = interleaved ? 2 * i : i;
        int b = interleaved ? 2 * i + 1 : i + half;
        for (int h = 0; h < H; h++) {
            float *v = x + (size_t)n * ld + (size_t)h * head_stride;
            float x0 = v[a], x1 = v[b];
            v[a] = round_to(dt, x0 * c - x1 * s);
            v[b] = round_to(dt, x0 * s + x1 * c);
            if (i == 0 && (D & 1)) v[D - 1] = round_to(dt, v[D - 1]); /* odd D: the last value is not rotated */
        }
    }
}

template <enum loom_dtype DT>
static void cuda_rope_forward(float *x, int N, int T, int H, int ld, int head_stride, int D, float theta,
                              int interleaved) {
    size_t n = (size_t)N * (D / 2);
    if (n) LAUNCH(rope_kernel, grid_for(n), x, N, T, H, ld, head_stride, D, theta, interleaved, 1.0f, (int)DT);
}

template <enum loom_dtype DT>
static void cuda_rope_backward(float *dx, int N, int T, int H, int ld, int head_stride, int D, float theta,
                               int interleaved) {
    /* the rotation is orthogonal: its gradient is the inverse rotation */
    size_t n = (size_t)N * (D / 2);
    if (n) LAUNCH(rope_kernel, grid_for(n), dx, N, T, H, ld, head_stride, D, theta, interleaved, -1.0f, (int)DT);
}

/* ---------------------------------------------------------------------------------------------- */
/* causal attention with GQA (query head h reads kv head h / (H / Hkv)): flash attention where it covers
 * the head widths (the logsumexp [B,H,T] saved), else the materialised kernels below (the probabilities
 * kept [B,H,T,T] with zeros above the diagonal, as the CPU backend).                                */

static int flash_enabled = 1;

extern "C" void loom_cuda_set_flash_attention(int enabled) { flash_enabled = enabled != 0; }

template <enum loom_dtype DT> static int use_flash(int Dqk, int Dv) {
    return flash_enabled && loom_flash_attention_supports(Dqk, Dv, DT);
}

template <enum loom_dtype DT> static size_t cuda_attention_saved_floats(int B, int T, int H, int Dqk, int Dv) {
    return use_flash<DT>(Dqk, Dv) ? (size_t)B * H * T : (size_t)B * H * T * T;
}

/* one block per query row (b, h, t), blockIdx.x = (b*H + h)*T + t:
 * probs[b,h,t,j] = softmax_j<=t(scale * q[b,t,h,:] . k[b,j,hk,:]) (0 for j > t; the probs row is the scores'
 * workspace, one warp per key); out[b,t,h,:] = Σ_j<=t probs[b,h,t,j] v[b,j,hk,:], stored in dt */
static __global__ void __launch_bounds__(BLOCK)
    attention_forward_kernel(float *out, float *probs, const float *q, const float *k, const float *v, int T, int H,
                             int Hkv, int Dqk, int Dv, float scale, int dt) {
    int row = blockIdx.x;
    int t = row % T, h = (row / T) % H, b = row / (T * H);
    int hk = h / (H / Hkv);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const float *qt = q + (((size_t)b * T + t) * H + h) * Dqk;
    float *p = probs + (size_t)row * T;
    for (int j = warp; j <= t; j += WARPS) {
        const float *kj = k + (((size_t)b * T + j) * Hkv + hk) * Dqk;
        float s = 0;
        for (int d = lane; d < Dqk; d += 32) s += qt[d] * kj[d];
        s = warp_sum(s);
        if (lane == 0) p[j] = scale * s;
    }
    for (int j = t + 1 + threadIdx.x; j < T; j += BLOCK) p[j] = 0.0f;
    __syncthreads();
    float m = -INFINITY;
    for (int j = threadIdx.x; j <= t; j += BLOCK) m = fmaxf(m, p[j]);
    m = block_max(m);
    float sum = 0;
    for (int j = threadIdx.x; j <= t; j += BLOCK) {
        float e = expf(p[j] - m);
        p[j] = e;
        sum += e;
    }
    sum = block_sum(sum);
    float inv = 1.0f / sum;
    for (int j = threadIdx.x; j <= t; j += BLOCK) p[j] *= inv;
    __syncthreads();
    float *ot = out + (((size_t)b * T + t) * H + h) * Dv;
    for (int d = threadIdx.x; d < Dv; d += BLOCK) {
        float acc = 0;
        for (int j = 0; j <= t; j++) acc += p[j] * v[(((size_t)b * T + j) * Hkv + hk) * Dv + d];
        ot[d] = round_to(dt, acc);
    }
}

template <enum loom_dtype DT>
static void cuda_attention_forward(float *out, float *saved, const float *q, const float *k, const float *v, int B,
                                   int T, int H, int Hkv, int Dqk, int Dv, float scale) {
    CHECK(Hkv > 0 && H % Hkv == 0, "attention: H = %d is not a multiple of Hkv = %d", H, Hkv);
    if (use_flash<DT>(Dqk, Dv)) {
        loom_flash_attention_forward(out, saved, q, k, v, B, T, H, Hkv, Dqk, Dv, scale, DT, be.stream);
        return;
    }
    float *probs = saved;
    int rows = B * H * T;
    if (rows) LAUNCH(attention_forward_kernel, rows, out, probs, q, k, v, T, H, Hkv, Dqk, Dv, scale, (int)DT);
}

/* one block per query row (b, h, t): dp[j] = dout[b,t,h,:] . v[b,j,hk,:] (one warp per key);
 * ds[b,h,t,j] = p * (dp - Σ_j p dp) * scale for j <= t (entries j > t are not written: nothing reads them);
 * dq[b,t,h,:] = Σ_j<=t ds[b,h,t,j] k[b,j,hk,:], stored in dt */
static __global__ void __launch_bounds__(BLOCK)
    attention_backward_dq_kernel(float *dq, float *ds, const float *dout, const float *probs, const float *k,
                                 const float *v, int T, int H, int Hkv, int Dqk, int Dv, float scale, int dt) {
    int row = blockIdx.x;
    int t = row % T, h = (row / T) % H, b = row / (T * H);
    int hk = h / (H / Hkv);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const float *dout_t = dout + (((size_t)b * T + t) * H + h) * Dv;
    const float *p = probs + (size_t)row * T;
    float *dst = ds + (size_t)row * T;
    for (int j = warp; j <= t; j += WARPS) {
        const float *vj = v + (((size_t)b * T + j) * Hkv + hk) * Dv;
        float s = 0;
        for (int d = lane; d < Dv; d += 32) s += dout_t[d] * vj[d];
        s = warp_sum(s);
        if (lane == 0) dst[j] = s;
    }
    __syncthreads();
    float part = 0;
    for (int j = threadIdx.x; j <= t; j += BLOCK) part += p[j] * dst[j];
    float rowsum = block_sum(part);
    for (int j = threadIdx.x; j <= t; j += BLOCK) dst[j] = p[j] * (dst[j] - rowsum) * scale;
    __syncthreads();
    float *dqt = dq + (((size_t)b * T + t) * H + h) * Dqk;
    for (int d = threadIdx.x; d < Dqk; d += BLOCK) {
        float acc = 0;
        for (int j = 0; j <= t; j++) acc += dst[j] * k[(((size_t)b * T + j) * Hkv + hk) * Dqk + d];
        dqt[d] = round_to(dt, acc);
    }
}

/* one block per key row (b, hk, j), blockIdx.x = (b*Hkv + hk)*T + j, summing over the group's query heads h
 * in order and the queries t >= j: dk[b,j,hk,:] = Σ_h Σ_t ds[b,h,t,j] q[b,t,h,:];
 * dv[b,j,hk,:] = Σ_h Σ_t probs[b,h,t,j] dout[b,t,h,:]; both stored in dt */
static __global__ void attention_backward_dkv_kernel(float *dk, float *dv, const float *ds, const float *probs,
                                                     const float *q, const float *dout, int T, int H, int Hkv, int Dqk,
                                                     int Dv, int dt) {
    int row = blockIdx.x;
    int j = row % T, hk = (row / T) % Hkv, b = row / (T * Hkv);
    int group = H / Hkv;
    for (int d = threadIdx.x; d < Dqk; d += BLOCK) {
        float acc = 0;
        for (int h = hk * group; h < (hk + 1) * group; h++)
            for (int t = j; t < T; t++)
                acc += ds[(((size_t)b * H + h) * T + t) * T + j] * q[(((size_t)b * T + t) * H + h) * Dqk + d];
        dk[(((size_t)b * T + j) * Hkv + hk) * Dqk + d] = round_to(dt, acc);
    }
    for (int d = threadIdx.x; d < Dv; d += BLOCK) {
        float acc = 0;
        for (int h = hk * group; h < (hk + 1) * group; h++)
            for (int t = j; t < T; t++)
                acc += probs[(((size_t)b * H + h) * T + t) * T + j] * dout[(((size_t)b * T + t) * H + h) * Dv + d];
        dv[(((size_t)b * T + j) * Hkv + hk) * Dv + d] = round_to(dt, acc);
    }
}

template <enum loom_dtype DT>
static void cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                    const float *saved, const float *q, const float *k, const float *v, int B, int T,
                                    int H, int Hkv, int Dqk, int Dv, float scale) {
    /* dP = dO V^T; dS = P * (dP - rowsum(P * dP)) * scale; dQ = dS K; dK = dS^T Q; dV = P^T dO */
    CHECK(Hkv > 0 && H % Hkv == 0, "attention: H = %d is not a multiple of Hkv = %d", H, Hkv);
    int rows = B * H * T;
    if (rows == 0) return;
    if (use_flash<DT>(Dqk, Dv)) {
        float *delta = (float *)scratch(SCRATCH_F32, sizeof(float) * (size_t)rows);
        loom_flash_attention_backward(dq, dk, dv, delta, dout, out, saved, q, k, v, B, T, H, Hkv, Dqk, Dv, scale, DT,
                                      be.stream);
        return;
    }
    const float *probs = saved;
    float *ds = (float *)scratch(SCRATCH_F32, sizeof(float) * (size_t)rows * T);
    LAUNCH(attention_backward_dq_kernel, rows, dq, ds, dout, probs, k, v, T, H, Hkv, Dqk, Dv, scale, (int)DT);
    LAUNCH(attention_backward_dkv_kernel, B * Hkv * T, dk, dv, ds, probs, q, dout, T, H, Hkv, Dqk, Dv, (int)DT);
}

/* ---------------------------------------------------------------------------------------------- */
/* SwiGLU (Shazeer 2020): out = silu(gate) * up                                                     */

/* out = gate * sigmoid(gate) * up, stored in dt */
static __global__ void swiglu_forward_kernel(float *out, const float *gate, const float *up, size_t n, int dt) {
    FOR_EACH(i, n) {
        float g = gate[i];
        out[i] = round_to(dt, g / (1.0f + expf(-g)) * up[i]);
    }
}

/* dup = dout * silu(gate); dgate = dout * up * sig * (1 + gate * (1 - sig)); both stored in dt */
static __global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dout, const float *gate,
                                              const float *up, size_t n, int dt) {
    FOR_EACH(i, n) {
        float g = gate[i];
        float sig = 1.0f / (1.0f + expf(-g));
        float silu = g * sig;
        float dy = dout[i];
        dup[i] = round_to(dt, dy * silu);
        dgate[i] = round_to(dt, dy * up[i] * sig * (1.0f + g * (1.0f - sig)));
    }
}

template <enum loom_dtype DT>
static void cuda_swiglu_forward(float *out, const float *gate, const float *up, int N, int F) {
    size_t n = (size_t)N * F;
    if (n) LAUNCH(swiglu_forward_kernel, grid_for(n), out, gate, up, n, (int)DT);
}

template <enum loom_dtype DT>
static void cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int N,
                                 int F) {
    size_t n = (size_t)N * F;
    if (n) LAUNCH(swiglu_backward_kernel, grid_for(n), dgate, dup, dout, gate, up, n, (int)DT);
}

/* ---------------------------------------------------------------------------------------------- */
/* element-wise                                                                                     */

/* out = a + b, stored in dt */
static __global__ void add_kernel(float *out, const float *a, const float *b, size_t n, int dt) {
    FOR_EACH(i, n) out[i] = round_to(dt, a[i] + b[i]);
}

/* dst += src, stored in dt */
static __global__ void accumulate_kernel(float *dst, const float *src, size_t n, int dt) {
    FOR_EACH(i, n) dst[i] = round_to(dt, dst[i] + src[i]);
}

/* x *= s (fp32 in every table) */
static __global__ void scale_kernel(float *x, float s, size_t n) { FOR_EACH(i, n) x[i] *= s; }

/* dst[r, c] (row stride ld_dst) = or += src[r, c] (row stride ld_src), c < cols (fp32 in every table) */
static __global__ void copy_2d_kernel(float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols,
                                      int accumulate) {
    FOR_EACH(i, (size_t)rows * cols) {
        size_t r = i / cols, c = i % cols;
        float x = src[r * ld_src + c];
        if (accumulate)
            dst[r * ld_dst + c] += x;
        else
            dst[r * ld_dst + c] = x;
    }
}

template <enum loom_dtype DT> static void cuda_add(float *out, const float *a, const float *b, size_t n) {
    if (n) LAUNCH(add_kernel, grid_for(n), out, a, b, n, (int)DT);
}

template <enum loom_dtype DT> static void cuda_accumulate(float *dst, const float *src, size_t n) {
    if (n) LAUNCH(accumulate_kernel, grid_for(n), dst, src, n, (int)DT);
}

static void cuda_scale(float *x, float s, size_t n) {
    if (n) LAUNCH(scale_kernel, grid_for(n), x, s, n);
}

template <enum loom_dtype DT> static void cuda_round_compute(float *x, size_t n) { round_array(DT, x, n); }

static void cuda_copy_2d(float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols, int accumulate) {
    size_t n = (size_t)rows * cols;
    if (n) LAUNCH(copy_2d_kernel, grid_for(n), dst, ld_dst, src, ld_src, rows, cols, accumulate);
}

/* ---------------------------------------------------------------------------------------------- */
/* rows by index (MoE permutation)                                                                  */

/* dst[i, c] = scale[i] * src[idx[i], c] (scale NULL: 1), stored in dt */
static __global__ void gather_rows_kernel(float *dst, const float *src, const int *idx, const float *scale, int n,
                                          int C, int dt) {
    FOR_EACH(e, (size_t)n * C) {
        size_t i = e / C, c = e % C;
        float x = src[(size_t)idx[i] * C + c];
        dst[e] = round_to(dt, scale ? scale[i] * x : x);
    }
}

/* dst[idx[i], c] += scale[i] * src[i, c] (scale NULL: 1), rows added in i order as model/ops.h asks (the MoE
 * combine must not depend on timing): one thread per column walks the rows */
static __global__ void scatter_add_rows_kernel(float *dst, const float *src, const int *idx, const float *scale, int n,
                                               int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int i = 0; i < n; i++) dst[(size_t)idx[i] * C + c] += (scale ? scale[i] : 1.0f) * src[(size_t)i * C + c];
}

/* dst[idx[i], c] rounded to dt in place. A row several i share is rounded by several threads: rounding is
 * idempotent, so any interleaving leaves the rounded value */
static __global__ void round_rows_kernel(float *dst, const int *idx, int n, int C, int dt) {
    FOR_EACH(e, (size_t)n * C) {
        float *p = dst + (size_t)idx[e / C] * C + e % C;
        *p = round_to(dt, *p);
    }
}

/* out[i] = dot(a[i, :], b[idx[i], :]) in double, one warp per row */
static __global__ void row_dot_kernel(float *out, const float *a, const float *b, const int *idx, int n, int C) {
    int i = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (i >= n) return;
    const float *x = a + (size_t)i * C, *y = b + (size_t)idx[i] * C;
    double s = 0;
    for (int c = lane; c < C; c += 32) s += (double)x[c] * y[c];
    s = warp_sum(s);
    if (lane == 0) out[i] = (float)s;
}

template <enum loom_dtype DT>
static void cuda_gather_rows(float *dst, const float *src, const int *idx, const float *scale, int n, int C) {
    size_t e = (size_t)n * C;
    if (e) LAUNCH(gather_rows_kernel, grid_for(e), dst, src, idx, scale, n, C, (int)DT);
}

template <enum loom_dtype DT>
static void cuda_scatter_add_rows(float *dst, const float *src, const int *idx, const float *scale, int n, int C) {
    size_t e = (size_t)n * C;
    if (e == 0) return;
    LAUNCH(scatter_add_rows_kernel, (C + 255) / 256, dst, src, idx, scale, n, C);
    if (DT != LOOM_F32) LAUNCH(round_rows_kernel, grid_for(e), dst, idx, n, C, (int)DT);
}

static void cuda_row_dot(float *out, const float *a, const float *b, const int *idx, int n, int C) {
    if (n) LAUNCH(row_dot_kernel, (n + WARPS - 1) / WARPS, out, a, b, idx, n, C);
}

/* ---------------------------------------------------------------------------------------------- */
/* fused softmax cross-entropy, one block per row. dlogits may alias logits: every thread reads the
 * elements it writes, and all other reads of the row (max, sum, target logit) finish at a barrier first. */

/* losses[n] = logsumexp(logits[n]) - logits[n, tgt] (sum of exp in double; 0 where tgt < 0); dlogits[n] =
 * (softmax - onehot(tgt)) * dloss, stored in dt (zeros where tgt < 0) */
static __global__ void __launch_bounds__(BLOCK) cross_entropy_kernel(float *losses, float *dlogits, const float *logits,
                                                                     const int *targets, int V, float dloss, int dt) {
    int n = blockIdx.x;
    const float *x = logits + (size_t)n * V;
    int tgt = targets[n];
    float m = -INFINITY;
    for (int i = threadIdx.x; i < V; i += BLOCK) m = fmaxf(m, x[i]);
    m = block_max(m);
    double part = 0;
    for (int i = threadIdx.x; i < V; i += BLOCK) part += exp((double)(x[i] - m));
    float xt = tgt >= 0 ? x[tgt] : 0.0f;
    double sum = block_sum(part);
    if (threadIdx.x == 0) losses[n] = tgt >= 0 ? (float)(m + log(sum) - xt) : 0.0f;
    if (!dlogits) return;
    float *dx = dlogits + (size_t)n * V;
    float inv = (float)(1.0 / sum);
    for (int i = threadIdx.x; i < V; i += BLOCK) {
        float g = 0.0f;
        if (tgt >= 0) {
            g = expf(x[i] - m) * inv * dloss;
            if (i == tgt) g -= dloss;
        }
        dx[i] = round_to(dt, g);
    }
}

template <enum loom_dtype DT>
static void cuda_cross_entropy(float *losses, float *dlogits, const float *logits, const int *targets, int N, int V,
                               float dloss) {
    if (N) LAUNCH(cross_entropy_kernel, N, losses, dlogits, logits, targets, V, dloss, (int)DT);
}

/* rowmax[n] = max of logits[n, :] */
static __global__ void __launch_bounds__(BLOCK) xent_rowmax_kernel(float *rowmax, const float *logits, int V) {
    int n = blockIdx.x;
    const float *x = logits + (size_t)n * V;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < V; i += BLOCK) m = fmaxf(m, x[i]);
    m = block_max(m);
    if (threadIdx.x == 0) rowmax[n] = m;
}

/* sumexp[n] = Σ exp(logits[n, :] - rowmax[n]) in double; tlogit[n] = logits[n, tgt - v0] when this rank holds
 * tgt, else 0 */
static __global__ void __launch_bounds__(BLOCK)
    xent_sumexp_kernel(float *sumexp, float *tlogit, const float *logits, const int *targets, const float *rowmax,
                       int V, int v0) {
    int n = blockIdx.x;
    const float *x = logits + (size_t)n * V;
    float m = rowmax[n];
    double part = 0;
    for (int i = threadIdx.x; i < V; i += BLOCK) part += exp((double)(x[i] - m));
    double sum = block_sum(part);
    if (threadIdx.x == 0) {
        int t = targets[n] - v0;
        sumexp[n] = (float)sum;
        tlogit[n] = targets[n] >= 0 && t >= 0 && t < V ? x[t] : 0.0f;
    }
}

/* losses[n] = log(sumexp) + rowmax - tlogit (0 where tgt < 0); dlogits[n, i] = (exp(logits - rowmax) / sumexp -
 * onehot(tgt - v0)) * dloss, stored in dt (zeros where tgt < 0) */
static __global__ void __launch_bounds__(BLOCK)
    xent_finish_kernel(float *losses, float *dlogits, const float *logits, const int *targets, const float *rowmax,
                       const float *sumexp, const float *tlogit, int V, int v0, float dloss, int dt) {
    int n = blockIdx.x;
    int tgt = targets[n];
    if (threadIdx.x == 0) losses[n] = tgt >= 0 ? (float)(log((double)sumexp[n]) + rowmax[n] - tlogit[n]) : 0.0f;
    if (!dlogits) return;
    const float *x = logits + (size_t)n * V;
    float *dx = dlogits + (size_t)n * V;
    float m = rowmax[n], inv = 1.0f / sumexp[n];
    int t = tgt - v0;
    for (int i = threadIdx.x; i < V; i += BLOCK) {
        float g = 0.0f;
        if (tgt >= 0) {
            g = expf(x[i] - m) * inv * dloss;
            if (i == t) g -= dloss;
        }
        dx[i] = round_to(dt, g);
    }
}

static void cuda_xent_rowmax(float *rowmax, const float *logits, int N, int V) {
    if (N) LAUNCH(xent_rowmax_kernel, N, rowmax, logits, V);
}

static void cuda_xent_sumexp(float *sumexp, float *tlogit, const float *logits, const int *targets, const float *rowmax,
                             int N, int V, int v0) {
    if (N) LAUNCH(xent_sumexp_kernel, N, sumexp, tlogit, logits, targets, rowmax, V, v0);
}

template <enum loom_dtype DT>
static void cuda_xent_finish(float *losses, float *dlogits, const float *logits, const int *targets,
                             const float *rowmax, const float *sumexp, const float *tlogit, int N, int V, int v0,
                             float dloss) {
    if (N)
        LAUNCH(xent_finish_kernel, N, losses, dlogits, logits, targets, rowmax, sumexp, tlogit, V, v0, dloss, (int)DT);
}

/* ---------------------------------------------------------------------------------------------- */
/* optimizer                                                                                        */

enum { SUM_CHUNK = 1 << 14 };

/* partial[chunk] = Σ x[i]^2 in double over the SUM_CHUNK elements of chunk blockIdx.x */
static __global__ void __launch_bounds__(BLOCK) sum_squares_partial_kernel(double *partial, const float *x, size_t n) {
    size_t i0 = (size_t)blockIdx.x * SUM_CHUNK, i1 = i0 + SUM_CHUNK < n ? i0 + SUM_CHUNK : n;
    double s = 0;
    for (size_t i = i0 + threadIdx.x; i < i1; i += BLOCK) s += (double)x[i] * x[i];
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/* *total = Σ partial[0:nchunks], one block: each thread sums a fixed stride in order, then a fixed tree */
static __global__ void __launch_bounds__(BLOCK)
    sum_squares_total_kernel(double *total, const double *partial, size_t nchunks) {
    double s = 0;
    for (size_t c = threadIdx.x; c < nchunks; c += BLOCK) s += partial[c];
    s = block_sum(s);
    if (threadIdx.x == 0) *total = s;
}

static double cuda_sum_squares(const float *x, size_t n) {
    if (n == 0) return 0.0;
    size_t nchunks = (n + SUM_CHUNK - 1) / SUM_CHUNK;
    double *partial = (double *)scratch(SCRATCH_F32, sizeof(double) * (nchunks + 1));
    LAUNCH(sum_squares_partial_kernel, (unsigned int)nchunks, partial, x, n);
    LAUNCH(sum_squares_total_kernel, 1, partial + nchunks, partial, nchunks);
    double total = 0;
    cuda_to_host(&total, partial + nchunks, sizeof total);
    return total;
}

/* AdamW (Loshchilov & Hutter; the PyTorch AdamW update), bias corrections bc1, bc2 from the host */
static __global__ void adamw_kernel(float *param, const float *grad, float *m, float *v, size_t n, float lr,
                                    float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                                    float bc1, float bc2) {
    FOR_EACH(i, n) {
        float g = grad[i] * grad_scale;
        float p = param[i] - lr * weight_decay * param[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = p - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
    }
}

static void cuda_adamw_update(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                              float beta2, float eps, float weight_decay, float grad_scale, long step) {
    float bc1 = 1.0f - (float)pow(beta1, (double)step);
    float bc2 = 1.0f - (float)pow(beta2, (double)step);
    if (n)
        LAUNCH(adamw_kernel, grid_for(n), param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, bc1,
               bc2);
}

/* ---------------------------------------------------------------------------------------------- */
/* the tables                                                                                       */

template <enum loom_dtype DT> static void table_fill(struct loom_ops *t) {
    t->name = DT == LOOM_F32 ? "cuda" : DT == LOOM_BF16 ? "cuda (bf16)" : "cuda (fp16)";
    t->compute = DT;
    t->exact = &be.tables[LOOM_F32];
    t->alloc = cuda_alloc;
    t->free = cuda_free;
    t->zero = cuda_zero;
    t->to_host = cuda_to_host;
    t->from_host = cuda_from_host;
    t->peak_bytes = cuda_peak_bytes;
    t->matmul_forward = cuda_matmul_forward<DT>;
    t->matmul_backward_input = cuda_matmul_backward_input<DT>;
    t->matmul_backward_weight = cuda_matmul_backward_weight<DT>;
    t->embedding_forward = cuda_embedding_forward<DT>;
    t->embedding_backward = cuda_embedding_backward;
    t->rmsnorm_forward = cuda_rmsnorm_forward<DT>;
    t->rmsnorm_backward = cuda_rmsnorm_backward<DT>;
    t->rope_forward = cuda_rope_forward<DT>;
    t->rope_backward = cuda_rope_backward<DT>;
    t->attention_saved_floats = cuda_attention_saved_floats<DT>;
    t->attention_forward = cuda_attention_forward<DT>;
    t->attention_backward = cuda_attention_backward<DT>;
    t->swiglu_forward = cuda_swiglu_forward<DT>;
    t->swiglu_backward = cuda_swiglu_backward<DT>;
    t->add = cuda_add<DT>;
    t->accumulate = cuda_accumulate<DT>;
    t->scale = cuda_scale;
    t->round_compute = cuda_round_compute<DT>;
    t->copy_2d = cuda_copy_2d;
    t->gather_rows = cuda_gather_rows<DT>;
    t->scatter_add_rows = cuda_scatter_add_rows<DT>;
    t->row_dot = cuda_row_dot;
    t->cross_entropy = cuda_cross_entropy<DT>;
    t->xent_rowmax = cuda_xent_rowmax;
    t->xent_sumexp = cuda_xent_sumexp;
    t->xent_finish = cuda_xent_finish<DT>;
    t->sum_squares = cuda_sum_squares;
    t->adamw_update = cuda_adamw_update;
    loom_cuda_moe_fill(t, DT);
}

cublasHandle_t loom_cuda_cublas(void) { return be.cublas; }

extern "C" int loom_cuda_devices(void) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError(); /* clear the error: no device is not a failure */
        return 0;
    }
    return count;
}

/* false (with a message) when a setup call failed */
static int setup_ok(cudaError_t rc, const char *what, int device) {
    if (rc == cudaSuccess) return 1;
    fprintf(stderr, "loom: cuda: device %d: %s failed: %s\n", device, what, cudaGetErrorString(rc));
    cudaGetLastError();
    return 0;
}

extern "C" const struct loom_ops *loom_ops_cuda(int device, enum loom_dtype compute) {
    if (compute != LOOM_F32 && compute != LOOM_BF16 && compute != LOOM_F16) {
        fprintf(stderr, "loom: cuda: unknown compute dtype %d\n", (int)compute);
        return NULL;
    }
    if (be.ready) {
        if (device == be.device) return &be.tables[compute];
        fprintf(stderr, "loom: cuda: the backend already runs on device %d; one device per process (asked for %d)\n",
                be.device, device);
        return NULL;
    }
    int count = loom_cuda_devices();
    if (device < 0 || device >= count) {
        fprintf(stderr, "loom: cuda: device %d not available (%d visible)\n", device, count);
        return NULL;
    }
    if (!setup_ok(cudaSetDevice(device), "cudaSetDevice", device)) return NULL;
    if (!setup_ok(cudaStreamCreate(&be.stream), "cudaStreamCreate", device)) return NULL;
    cublasStatus_t st = cublasCreate(&be.cublas);
    if (st != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "loom: cuda: device %d: cublasCreate failed: %s\n", device, cublasGetStatusString(st));
        cudaStreamDestroy(be.stream);
        return NULL;
    }
    CUBLAS_CHECK(cublasSetStream(be.cublas, be.stream));
    CUBLAS_CHECK(cublasSetMathMode(be.cublas, CUBLAS_DEFAULT_MATH)); /* fp32 GEMMs stay fp32: no TF32 */
    table_fill<LOOM_F32>(&be.tables[LOOM_F32]);
    table_fill<LOOM_BF16>(&be.tables[LOOM_BF16]);
    table_fill<LOOM_F16>(&be.tables[LOOM_F16]);
    be.device = device;
    be.ready = 1;
    return &be.tables[compute];
}

extern "C" void *loom_cuda_stream(void) { return be.ready ? (void *)be.stream : NULL; }
