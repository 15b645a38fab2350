/*
 * model/cuda/flash_attn.cu — causal flash attention, forward and backward, for the CUDA backend.
 *
 * FlashAttention-2 (Dao 2023, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning",
 * algorithms 1 and 2): the [T,T] scores never reach global memory. The forward keeps, per query row, a running max
 * m and sum l of exp(s - m) (the online softmax) and saves only O and the row logsumexp L = m + log l; the
 * backward recomputes P = exp(s - L) tile by tile.
 *
 * Legend: B sequences, T tokens, H query heads, Hkv key/value heads (query head h reads kv head h / (H / Hkv)),
 * DQK q/k head width, DV value head width, TILE = 64 rows of queries or keys per tile, s = scale * q . k.
 *
 *   forward   one block per (query tile, h, b), FWD_THREADS threads. Loops over the key tiles up to the causal
 *             diagonal: S = Q K^T; m' = max(m, rowmax S), P = exp(S - m'), l = l e^(m - m') + rowsum P,
 *             O = O e^(m - m') + P V. Writes out = O / l and L = m + log l. (With P rounded to a 16-bit E, two
 *             sums: O is divided by that of the rounded P it multiplied, so each row's weights sum to 1; L takes
 *             that of the unrounded P, so the backward's exp(S - L) is the softmax to fp32 accuracy.)
 *   backward  delta = rowsum(dO * O) (one warp per row); then two kernels, so that every gradient is a sum in a
 *             fixed order, with no atomics (bit-identical run to run):
 *             dk/dv: one block per (key tile, kv head, b); loops over the group's query heads in order and the
 *                    query tiles from the diagonal on: P^T = exp(K Q^T - L), dP^T = V dO^T,
 *                    dS^T = P^T (dP^T - delta); dV += P^T dO, dK += dS^T Q * scale (kept in registers).
 *             dq:    one block per (query tile, h, b); loops over the key tiles up to the diagonal, recomputing
 *                    P and dS the same way: dQ += dS K * scale.
 *             (Recomputing S and dP in the dq kernel costs two more tile products than FlashAttention-2's
 *             atomic dQ; it is what keeps dQ deterministic.)
 *
 * Gradient rule (model/ops.h): dq, dk, dv are activation gradients, assigned.
 *
 * Precision, templated on E, the compute dtype's element type:
 *   E = float (fp32 table): tiles in shared memory in fp32, products by FMA on the CUDA cores, fp32 throughout.
 *   E = __nv_bfloat16 / __half: Q, K, V, dO tiles converted to E in shared memory (exact: the backend already
 *   stores them rounded to E) and multiplied on the tensor cores (WMMA 16x16x16) with fp32 accumulation. P and dS
 *   are rounded to E before they enter P V, P^T dO, dS K and dS^T Q, as in FlashAttention-2; the softmax
 *   statistics (m, l, L), delta and all accumulators stay fp32. tests/gpu/test_ops_gpu.c bounds what this
 *   rounding costs against the CPU reference.
 * Outputs are rounded to the compute dtype (round_to), as every CUDA op stores them.
 *
 * Every tile product goes through tile_acc: a [TILE, N] fp32 accumulator spread over the block's threads (WMMA
 * fragments, or FMA registers for fp32) that adds A B for A, B tiles in shared memory. The online-softmax
 * rescaling of O needs its rows, which WMMA fragments do not expose, so the forward keeps O in shared memory
 * (loaded into the accumulator for each P V and stored back); the backward accumulators (dK, dV, dQ) need no
 * rescaling and stay in registers until the end.
 *
 * Ragged edges: tiles past T are loaded as zeros; a score counts only when key <= query < T (the causal mask
 * and the end of the sequence), which also keeps padded rows finite; rows past T are never written.
 */
#include "model/cuda/flash_attn.h"

#include <math.h>
#include <stddef.h>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "core/error.h"
#include "model/cuda/cuda_internal.h"

using namespace nvcuda;

enum { TILE = 64, FWD_THREADS = 256, ROW_THREADS = FWD_THREADS / TILE, BWD_THREADS = 256, DELTA_THREADS = 256 };

/* ---------------------------------------------------------------------------------------------- */
/* element types                                                                                    */

template <typename E> static __device__ __forceinline__ E to_e(float x);
template <> __device__ __forceinline__ float to_e<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 to_e<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half to_e<__half>(float x) { return __float2half_rn(x); }

static __device__ __forceinline__ float to_f(float x) { return x; }
static __device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
static __device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

/* ---------------------------------------------------------------------------------------------- */
/* shared-memory layouts. Row pitches in elements: E tiles are WMMA operands when E is 16-bit (a multiple of 8
 * elements, so every 16-row fragment starts 32-byte aligned; the 16-byte skew spreads rows over the banks) and
 * FMA operands in fp32 (an odd pitch puts the rows a warp reads at once in different banks); fp32 tiles that
 * WMMA stores need a multiple of 4. Every region starts 128-byte aligned.                          */

template <typename E> static constexpr bool is_f32() { return std::is_same<E, float>::value; }
template <typename E> static constexpr int pitch_e(int n) { return is_f32<E>() ? n + 1 : n + 8; }
template <typename E> static constexpr int pitch_f(int n) { return is_f32<E>() ? n + 1 : n + 4; }
static constexpr size_t align128(size_t bytes) { return (bytes + 127) / 128 * 128; }

/* forward: Q, K, V tiles (E); S = Q K^T (fp32); P (E; in fp32 it overwrites S in place); O (fp32); 1 / l */
template <int DQK, int DV, typename E> struct fwd_smem {
    static constexpr int LQ = pitch_e<E>(DQK), LV = pitch_e<E>(DV), LS = pitch_f<E>(TILE);
    static constexpr int LP = is_f32<E>() ? LS : pitch_e<E>(TILE), LO = pitch_f<E>(DV);
    static constexpr size_t Q = 0;
    static constexpr size_t K = Q + align128(sizeof(E) * TILE * LQ);
    static constexpr size_t V = K + align128(sizeof(E) * TILE * LQ);
    static constexpr size_t S = V + align128(sizeof(E) * TILE * LV);
    static constexpr size_t P = S + (is_f32<E>() ? 0 : align128(sizeof(float) * TILE * LS));
    static constexpr size_t O = P + align128(sizeof(E) * TILE * LP);
    static constexpr size_t INV_L = O + align128(sizeof(float) * TILE * LO);
    static constexpr size_t BYTES = INV_L + align128(sizeof(float) * TILE);
};

/* backward, both kernels: two [TILE, DQK] and two [TILE, DV] E tiles (dk/dv kernel: K, V of its key tile and Q,
 * dO of the query tile; dq kernel: Q, dO of its query tile and K, V of the key tile); S and dP (fp32); P and dS
 * (E; in fp32 they overwrite S and dP in place); L and delta of the query tile's rows. After the loop the whole
 * space is reused to stage a finished fp32 gradient tile ([TILE, DQK] at pitch LGK, [TILE, DV] at pitch LGV)
 * for a coalesced write. */
template <int DQK, int DV, typename E> struct bwd_smem {
    static constexpr int LQ = pitch_e<E>(DQK), LV = pitch_e<E>(DV), LS = pitch_f<E>(TILE);
    static constexpr int LP = is_f32<E>() ? LS : pitch_e<E>(TILE), LGK = pitch_f<E>(DQK), LGV = pitch_f<E>(DV);
    static constexpr size_t QK1 = 0;
    static constexpr size_t V1 = QK1 + align128(sizeof(E) * TILE * LQ);
    static constexpr size_t QK2 = V1 + align128(sizeof(E) * TILE * LV);
    static constexpr size_t V2 = QK2 + align128(sizeof(E) * TILE * LQ);
    static constexpr size_t S = V2 + align128(sizeof(E) * TILE * LV);
    static constexpr size_t DP = S + align128(sizeof(float) * TILE * LS);
    static constexpr size_t P = is_f32<E>() ? S : DP + align128(sizeof(float) * TILE * LS);
    static constexpr size_t DS = is_f32<E>() ? DP : P + align128(sizeof(E) * TILE * LP);
    static constexpr size_t LSE = DS + align128(sizeof(E) * TILE * LP);
    static constexpr size_t DELTA = LSE + align128(sizeof(float) * TILE);
    static constexpr size_t BYTES = DELTA + align128(sizeof(float) * TILE);
    static constexpr size_t STAGE = 0; /* after the loop */
    static_assert(sizeof(float) * TILE * (LGK > LGV ? LGK : LGV) <= BYTES, "the gradient stage must fit");
};

/* ---------------------------------------------------------------------------------------------- */
/* tile products                                                                                    */

/* C[TILE, N] (fp32) spread over the NT threads of a block: c += A B for A [TILE, K] row-major and B [K, N]
 * row-major in shared memory, or B given as its transpose (BT: element (k, n) at B[n * ldb + k]). Every thread of
 * the block calls every method (WMMA is warp-collective); the caller synchronises around the shared memory they
 * read and write.
 *
 * This one: WMMA, E = __nv_bfloat16 or __half. Warp w holds the 16 rows from row0 = 16 (w % 4) and FRAGS
 * column blocks of 16 from col0 = 16 FRAGS (w / 4). */
template <typename E, int N, int NT> struct tile_acc {
    static constexpr int WARPS = NT / 32, STRIPS = TILE / 16, GROUPS = WARPS / STRIPS, FRAGS = N / 16 / GROUPS;
    static_assert(WARPS % STRIPS == 0 && N % (16 * GROUPS) == 0, "tile_acc: the tile does not split over the warps");
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> f[FRAGS];

    __device__ int row0() const { return 16 * (int)(threadIdx.x / 32 % STRIPS); }
    __device__ int col0() const { return 16 * FRAGS * (int)(threadIdx.x / 32 / STRIPS); }

    __device__ void zero() {
#pragma unroll
        for (int i = 0; i < FRAGS; i++) wmma::fill_fragment(f[i], 0.0f);
    }
    __device__ void load(const float *C, int ldc) {
#pragma unroll
        for (int i = 0; i < FRAGS; i++)
            wmma::load_matrix_sync(f[i], C + row0() * ldc + col0() + 16 * i, ldc, wmma::mem_row_major);
    }
    __device__ void store(float *C, int ldc) const {
#pragma unroll
        for (int i = 0; i < FRAGS; i++)
            wmma::store_matrix_sync(C + row0() * ldc + col0() + 16 * i, f[i], ldc, wmma::mem_row_major);
    }
    template <int K, bool BT> __device__ void mma(const E *A, int lda, const E *B, int ldb) {
        static_assert(K % 16 == 0, "tile_acc: K must be a multiple of 16");
        using b_layout = typename std::conditional<BT, wmma::col_major, wmma::row_major>::type;
        const int r0 = row0(), c0 = col0();
#pragma unroll 2
        for (int k = 0; k < K; k += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> a;
            wmma::load_matrix_sync(a, A + r0 * lda + k, lda);
#pragma unroll
            for (int i = 0; i < FRAGS; i++) {
                const int n = c0 + 16 * i;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, E, b_layout> b;
                wmma::load_matrix_sync(b, BT ? B + n * ldb + k : B + k * ldb + n, ldb);
                wmma::mma_sync(f[i], a, b, f[i]);
            }
        }
    }
};

/* The fp32 one: FMA on the CUDA cores. Thread (tr, tc) = (tid / 16, tid % 16) holds rows tr + TR i and columns
 * tc + 16 j: a warp reads two rows of A (different banks: odd pitch) and 16 columns of B at a time. */
template <int N, int NT> struct tile_acc<float, N, NT> {
    static constexpr int TC = 16, TR = NT / TC, RI = TILE / TR, CJ = N / TC;
    static_assert(NT % TC == 0 && TILE % TR == 0 && N % TC == 0, "tile_acc: the tile does not split over the threads");
    float c[RI][CJ];

    __device__ void zero() {
#pragma unroll
        for (int i = 0; i < RI; i++)
#pragma unroll
            for (int j = 0; j < CJ; j++) c[i][j] = 0.0f;
    }
    __device__ void load(const float *C, int ldc) {
        const int tr = threadIdx.x / TC, tc = threadIdx.x % TC;
#pragma unroll
        for (int i = 0; i < RI; i++)
#pragma unroll
            for (int j = 0; j < CJ; j++) c[i][j] = C[(tr + TR * i) * ldc + tc + TC * j];
    }
    __device__ void store(float *C, int ldc) const {
        const int tr = threadIdx.x / TC, tc = threadIdx.x % TC;
#pragma unroll
        for (int i = 0; i < RI; i++)
#pragma unroll
            for (int j = 0; j < CJ; j++) C[(tr + TR * i) * ldc + tc + TC * j] = c[i][j];
    }
    template <int K, bool BT> __device__ void mma(const float *A, int lda, const float *B, int ldb) {
        const int tr = threadIdx.x / TC, tc = threadIdx.x % TC;
#pragma unroll 4
        for (int k = 0; k < K; k++) {
            float a[RI], b[CJ];
#pragma unroll
            for (int i = 0; i < RI; i++) a[i] = A[(tr + TR * i) * lda + k];
#pragma unroll
            for (int j = 0; j < CJ; j++) b[j] = BT ? B[(tc + TC * j) * ldb + k] : B[k * ldb + tc + TC * j];
#pragma unroll
            for (int i = 0; i < RI; i++)
#pragma unroll
                for (int j = 0; j < CJ; j++) c[i][j] = fmaf(a[i], b[j], c[i][j]);
        }
    }
};

/* out[TILE, TILE] (fp32, pitch ldo) = A B^T for A and B [TILE, K] row-major in shared memory: a score tile (S, dP
 * or their transposes). Every thread of the block calls it. */
template <typename E, int K, int NT>
static __device__ __forceinline__ void tile_abt(float *out, int ldo, const E *A, int lda, const E *B, int ldb) {
    tile_acc<E, TILE, NT> s;
    s.zero();
    s.template mma<K, true>(A, lda, B, ldb);
    s.store(out, ldo);
}

/* ---------------------------------------------------------------------------------------------- */
/* global <-> shared                                                                                */

/* dst[r, c] (pitch ld) = row t = row0 + r, head `head` of a [B, T, heads, D] tensor, converted to E; zeros for
 * t >= T. r < TILE, c < D. */
template <int D, int NT, typename E>
static __device__ void load_tile(E *dst, int ld, const float *src, int b, int row0, int T, int heads, int head) {
    for (int i = threadIdx.x; i < TILE * D; i += NT) {
        const int r = i / D, c = i % D, t = row0 + r;
        const float x = t < T ? src[(((size_t)b * T + t) * heads + head) * D + c] : 0.0f;
        dst[r * ld + c] = to_e<E>(x);
    }
}

/* dst[b, t, head, c] = round_to(dt, src[r, c] * scale) for t = row0 + r < T, c < D: a finished gradient tile */
template <int D, int NT>
static __device__ void write_tile(float *dst, const float *src, int ld, float scale, int b, int row0, int T,
                                  int heads, int head, int dt) {
    for (int i = threadIdx.x; i < TILE * D; i += NT) {
        const int r = i / D, c = i % D, t = row0 + r;
        if (t < T) dst[(((size_t)b * T + t) * heads + head) * D + c] = round_to(dt, src[r * ld + c] * scale);
    }
}

/* rows row0 .. row0 + TILE of lse[b, h, :] and delta[b, h, :] into shared memory (0 past T: such rows count
 * for nothing, their P is masked) */
template <int NT>
static __device__ void load_rows(float *lse_s, float *delta_s, const float *lse, const float *delta, int b, int h,
                                 int H, int row0, int T) {
    for (int r = threadIdx.x; r < TILE; r += NT) {
        const int t = row0 + r;
        const size_t at = ((size_t)b * H + h) * T + t;
        lse_s[r] = t < T ? lse[at] : 0.0f;
        delta_s[r] = t < T ? delta[at] : 0.0f;
    }
}

/* a score counts when its key is not after its query and the query is in the sequence */
static __device__ __forceinline__ bool visible(int query, int key, int T) { return key <= query && query < T; }

/* ---------------------------------------------------------------------------------------------- */
/* forward                                                                                          */

/* One block per (query tile, h, b); the query tiles run last to first (blockIdx.x reversed), so the longest
 * (the most key tiles) start first. The ROW_THREADS threads ROW_THREADS r + part (one warp) own row r of the
 * softmax: the running m and l in registers (the same in each), columns part + ROW_THREADS j. */
template <int DQK, int DV, typename E>
static __global__ void __launch_bounds__(FWD_THREADS)
    flash_forward_kernel(float *out, float *lse, const float *q, const float *k, const float *v, int T, int H,
                         int Hkv, float scale, int dt) {
    using L = fwd_smem<DQK, DV, E>;
    static_assert(ROW_THREADS * TILE == FWD_THREADS && 32 % ROW_THREADS == 0, "a query row's threads share a warp");
    extern __shared__ __align__(128) unsigned char flash_smem[];
    E *Qs = (E *)(flash_smem + L::Q), *Ks = (E *)(flash_smem + L::K), *Vs = (E *)(flash_smem + L::V);
    float *S = (float *)(flash_smem + L::S), *O = (float *)(flash_smem + L::O);
    float *inv_l = (float *)(flash_smem + L::INV_L);
    E *P = (E *)(flash_smem + L::P);

    const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z, hk = h / (H / Hkv);
    const int q0 = qt * TILE;
    const int r = threadIdx.x / ROW_THREADS, part = threadIdx.x % ROW_THREADS, query = q0 + r;

    load_tile<DQK, FWD_THREADS>(Qs, L::LQ, q, b, q0, T, H, h);
    for (int i = threadIdx.x; i < TILE * DV; i += FWD_THREADS) O[i / DV * L::LO + i % DV] = 0.0f;
    float m_run = -INFINITY, l_run = 0.0f, l_e = 0.0f; /* l of the rounded P (for O), of the exact P (for L) */

    for (int kt = 0; kt <= qt; kt++) {
        const int kv0 = kt * TILE;
        __syncthreads(); /* Q and O are ready; the previous key tile's readers of K, V, P and O are done */
        load_tile<DQK, FWD_THREADS>(Ks, L::LQ, k, b, kv0, T, Hkv, hk);
        load_tile<DV, FWD_THREADS>(Vs, L::LV, v, b, kv0, T, Hkv, hk);
        __syncthreads();
        tile_abt<E, DQK, FWD_THREADS>(S, L::LS, Qs, L::LQ, Ks, L::LQ); /* S = Q K^T */
        __syncthreads();

        /* online softmax of row r: masked scores are -inf and weigh 0. The row's threads combine their parts
         * by butterfly (xor 1, 2, ...): each ends with the same sum, as a + b == b + a exactly. */
        float x[TILE / ROW_THREADS], mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < TILE / ROW_THREADS; j++) {
            const int c = part + ROW_THREADS * j;
            x[j] = visible(query, kv0 + c, T) ? S[r * L::LS + c] * scale : -INFINITY;
            mx = fmaxf(mx, x[j]);
        }
#pragma unroll
        for (int o = 1; o < ROW_THREADS; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        const float m_new = fmaxf(m_run, mx);
        const float alpha = m_new == -INFINITY ? 1.0f : expf(m_run - m_new); /* e^(m - m'), 0 on the first tile */
        float sum = 0.0f, sum_e = 0.0f;
#pragma unroll
        for (int j = 0; j < TILE / ROW_THREADS; j++) {
            const float p = x[j] == -INFINITY ? 0.0f : expf(x[j] - m_new);
            const E pe = to_e<E>(p);
            P[r * L::LP + part + ROW_THREADS * j] = pe; /* in fp32: the S element this thread just read */
            sum += to_f(pe);
            sum_e += p;
        }
#pragma unroll
        for (int o = 1; o < ROW_THREADS; o <<= 1) {
            sum += __shfl_xor_sync(0xffffffffu, sum, o);
            sum_e += __shfl_xor_sync(0xffffffffu, sum_e, o);
        }
        l_run = l_run * alpha + sum;
        l_e = l_e * alpha + sum_e;
        m_run = m_new;
        for (int c = part; c < DV; c += ROW_THREADS) O[r * L::LO + c] *= alpha;
        __syncthreads();
        {
            tile_acc<E, DV, FWD_THREADS> o; /* O += P V */
            o.load(O, L::LO);
            o.template mma<TILE, false>(P, L::LP, Vs, L::LV);
            o.store(O, L::LO);
        }
    }

    /* rows past T (l = 0) are not written */
    if (part == 0) {
        inv_l[r] = 1.0f / l_run;
        if (query < T) lse[((size_t)b * H + h) * T + query] = m_run + logf(l_e);
    }
    __syncthreads(); /* O and inv_l complete */
    for (int i = threadIdx.x; i < TILE * DV; i += FWD_THREADS) {
        const int rr = i / DV, c = i % DV, t = q0 + rr;
        if (t < T) out[(((size_t)b * T + t) * H + h) * DV + c] = round_to(dt, O[rr * L::LO + c] * inv_l[rr]);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* backward                                                                                         */

/* delta[b, h, t] = Σ_d dout[b, t, h, d] out[b, t, h, d], fp32; one warp per row n = (b T + t) H + h */
static __global__ void __launch_bounds__(DELTA_THREADS)
    flash_delta_kernel(float *delta, const float *dout, const float *out, int B, int T, int H, int Dv) {
    const size_t n = (size_t)blockIdx.x * (DELTA_THREADS / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (n >= (size_t)B * T * H) return; /* the whole warp: n is the same on its lanes */
    const float *x = dout + n * Dv, *y = out + n * Dv;
    float s = 0.0f;
    for (int d = lane; d < Dv; d += 32) s += x[d] * y[d];
    s = warp_sum(s);
    const size_t bt = n / H;
    const int h = (int)(n % H), t = (int)(bt % T), b = (int)(bt / T);
    if (lane == 0) delta[((size_t)b * H + h) * T + t] = s;
}

/* One block per (key tile, kv head hk, b). dK and dV of the tile's keys accumulate in registers over the group's
 * query heads (in order) and the query tiles from the diagonal to the end, then are written once. */
template <int DQK, int DV, typename E>
static __global__ void __launch_bounds__(BWD_THREADS)
    flash_backward_dkv_kernel(float *dk, float *dv, const float *dout, const float *lse, const float *delta,
                              const float *q, const float *k, const float *v, int T, int H, int Hkv, float scale,
                              int dt) {
    using L = bwd_smem<DQK, DV, E>;
    extern __shared__ __align__(128) unsigned char flash_smem[];
    E *Ks = (E *)(flash_smem + L::QK1), *Vs = (E *)(flash_smem + L::V1);
    E *Qs = (E *)(flash_smem + L::QK2), *dOs = (E *)(flash_smem + L::V2);
    float *St = (float *)(flash_smem + L::S), *dPt = (float *)(flash_smem + L::DP);
    E *Pt = (E *)(flash_smem + L::P), *dSt = (E *)(flash_smem + L::DS);
    float *lse_s = (float *)(flash_smem + L::LSE), *delta_s = (float *)(flash_smem + L::DELTA);
    float *stage = (float *)(flash_smem + L::STAGE);

    const int kt = blockIdx.x, hk = blockIdx.y, b = blockIdx.z, group = H / Hkv, kv0 = kt * TILE;
    const int ntiles = gridDim.x;

    load_tile<DQK, BWD_THREADS>(Ks, L::LQ, k, b, kv0, T, Hkv, hk);
    load_tile<DV, BWD_THREADS>(Vs, L::LV, v, b, kv0, T, Hkv, hk);
    tile_acc<E, DQK, BWD_THREADS> dk_acc;
    tile_acc<E, DV, BWD_THREADS> dv_acc;
    dk_acc.zero();
    dv_acc.zero();

    for (int h = hk * group; h < (hk + 1) * group; h++)
        for (int qt = kt; qt < ntiles; qt++) {
            const int q0 = qt * TILE;
            __syncthreads(); /* K and V are ready; the previous query tile's readers of Q, dO, P, dS are done */
            load_tile<DQK, BWD_THREADS>(Qs, L::LQ, q, b, q0, T, H, h);
            load_tile<DV, BWD_THREADS>(dOs, L::LV, dout, b, q0, T, H, h);
            load_rows<BWD_THREADS>(lse_s, delta_s, lse, delta, b, h, H, q0, T);
            __syncthreads();
            /* S^T = K Q^T and dP^T = V dO^T: row = key, column = query */
            tile_abt<E, DQK, BWD_THREADS>(St, L::LS, Ks, L::LQ, Qs, L::LQ);
            tile_abt<E, DV, BWD_THREADS>(dPt, L::LS, Vs, L::LV, dOs, L::LV);
            __syncthreads();
            /* P^T = exp(scale S^T - L), dS^T = P^T (dP^T - delta); each element read and written by one thread
             * (in fp32 P^T and dS^T are S^T and dP^T, overwritten in place) */
            for (int i = threadIdx.x; i < TILE * TILE; i += BWD_THREADS) {
                const int c = i / TILE, r = i % TILE; /* key c, query r */
                const float p = visible(q0 + r, kv0 + c, T) ? expf(St[c * L::LS + r] * scale - lse_s[r]) : 0.0f;
                const float ds = p * (dPt[c * L::LS + r] - delta_s[r]);
                Pt[c * L::LP + r] = to_e<E>(p);
                dSt[c * L::LP + r] = to_e<E>(ds);
            }
            __syncthreads();
            dv_acc.template mma<TILE, false>(Pt, L::LP, dOs, L::LV);  /* dV += P^T dO */
            dk_acc.template mma<TILE, false>(dSt, L::LP, Qs, L::LQ); /* dK += dS^T Q */
        }

    __syncthreads(); /* every reader of the tiles is done: the space becomes the stage */
    dk_acc.store(stage, L::LGK);
    __syncthreads();
    write_tile<DQK, BWD_THREADS>(dk, stage, L::LGK, scale, b, kv0, T, Hkv, hk, dt);
    __syncthreads();
    dv_acc.store(stage, L::LGV);
    __syncthreads();
    write_tile<DV, BWD_THREADS>(dv, stage, L::LGV, 1.0f, b, kv0, T, Hkv, hk, dt);
}

/* One block per (query tile, h, b), the query tiles last to first like the forward. dQ accumulates in registers
 * over the key tiles up to the diagonal, then is written once. */
template <int DQK, int DV, typename E>
static __global__ void __launch_bounds__(BWD_THREADS)
    flash_backward_dq_kernel(float *dq, const float *dout, const float *lse, const float *delta, const float *q,
                             const float *k, const float *v, int T, int H, int Hkv, float scale, int dt) {
    using L = bwd_smem<DQK, DV, E>;
    extern __shared__ __align__(128) unsigned char flash_smem[];
    E *Qs = (E *)(flash_smem + L::QK1), *dOs = (E *)(flash_smem + L::V1);
    E *Ks = (E *)(flash_smem + L::QK2), *Vs = (E *)(flash_smem + L::V2);
    float *S = (float *)(flash_smem + L::S), *dP = (float *)(flash_smem + L::DP);
    E *dS = (E *)(flash_smem + L::DS);
    float *lse_s = (float *)(flash_smem + L::LSE), *delta_s = (float *)(flash_smem + L::DELTA);
    float *stage = (float *)(flash_smem + L::STAGE);

    const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z, hk = h / (H / Hkv);
    const int q0 = qt * TILE;

    load_tile<DQK, BWD_THREADS>(Qs, L::LQ, q, b, q0, T, H, h);
    load_tile<DV, BWD_THREADS>(dOs, L::LV, dout, b, q0, T, H, h);
    load_rows<BWD_THREADS>(lse_s, delta_s, lse, delta, b, h, H, q0, T);
    tile_acc<E, DQK, BWD_THREADS> dq_acc;
    dq_acc.zero();

    for (int kt = 0; kt <= qt; kt++) {
        const int kv0 = kt * TILE;
        __syncthreads(); /* Q, dO, L, delta are ready; the previous key tile's readers of K, V, dS are done */
        load_tile<DQK, BWD_THREADS>(Ks, L::LQ, k, b, kv0, T, Hkv, hk);
        load_tile<DV, BWD_THREADS>(Vs, L::LV, v, b, kv0, T, Hkv, hk);
        __syncthreads();
        /* S = Q K^T and dP = dO V^T: row = query, column = key */
        tile_abt<E, DQK, BWD_THREADS>(S, L::LS, Qs, L::LQ, Ks, L::LQ);
        tile_abt<E, DV, BWD_THREADS>(dP, L::LS, dOs, L::LV, Vs, L::LV);
        __syncthreads();
        /* dS = P (dP - delta), P = exp(scale S - L) (in fp32 dS is dP, overwritten in place) */
        for (int i = threadIdx.x; i < TILE * TILE; i += BWD_THREADS) {
            const int r = i / TILE, c = i % TILE; /* query r, key c */
            const float p = visible(q0 + r, kv0 + c, T) ? expf(S[r * L::LS + c] * scale - lse_s[r]) : 0.0f;
            dS[r * L::LP + c] = to_e<E>(p * (dP[r * L::LS + c] - delta_s[r]));
        }
        __syncthreads();
        dq_acc.template mma<TILE, false>(dS, L::LP, Ks, L::LQ); /* dQ += dS K */
    }

    __syncthreads(); /* every reader of the tiles is done: the space becomes the stage */
    dq_acc.store(stage, L::LGK);
    __syncthreads();
    write_tile<DQK, BWD_THREADS>(dq, stage, L::LGK, scale, b, q0, T, H, h, dt);
}

/* ---------------------------------------------------------------------------------------------- */
/* launchers                                                                                        */

/* the kernel may use `bytes` of dynamic shared memory (beyond 48 KB a kernel must opt in) */
template <typename Kernel> static void allow_smem(Kernel kernel, size_t bytes) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

template <int DQK, int DV, typename E> static size_t smem_bytes() {
    return fwd_smem<DQK, DV, E>::BYTES > bwd_smem<DQK, DV, E>::BYTES ? fwd_smem<DQK, DV, E>::BYTES
                                                                      : bwd_smem<DQK, DV, E>::BYTES;
}

template <int DQK, int DV, typename E>
static void forward_launch(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                           int Hkv, float scale, int dt, cudaStream_t stream) {
    const size_t bytes = fwd_smem<DQK, DV, E>::BYTES;
    auto kernel = flash_forward_kernel<DQK, DV, E>;
    allow_smem(kernel, bytes);
    dim3 grid((T + TILE - 1) / TILE, H, B);
    kernel<<<grid, FWD_THREADS, bytes, stream>>>(out, lse, q, k, v, T, H, Hkv, scale, dt);
    CUDA_CHECK(cudaGetLastError());
}

template <int DQK, int DV, typename E>
static void backward_launch(float *dq, float *dk, float *dv, float *delta, const float *dout, const float *out,
                            const float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                            int Hkv, float scale, int dt, cudaStream_t stream) {
    const size_t rows = (size_t)B * T * H, rows_per_block = DELTA_THREADS / 32;
    flash_delta_kernel<<<(unsigned int)((rows + rows_per_block - 1) / rows_per_block), DELTA_THREADS, 0, stream>>>(
        delta, dout, out, B, T, H, DV);
    CUDA_CHECK(cudaGetLastError());

    const size_t bytes = bwd_smem<DQK, DV, E>::BYTES;
    const int ntiles = (T + TILE - 1) / TILE;
    auto dkv_kernel = flash_backward_dkv_kernel<DQK, DV, E>;
    allow_smem(dkv_kernel, bytes);
    dkv_kernel<<<dim3(ntiles, Hkv, B), BWD_THREADS, bytes, stream>>>(dk, dv, dout, lse, delta, q, k, v, T, H, Hkv,
                                                                      scale, dt);
    CUDA_CHECK(cudaGetLastError());
    auto dq_kernel = flash_backward_dq_kernel<DQK, DV, E>;
    allow_smem(dq_kernel, bytes);
    dq_kernel<<<dim3(ntiles, H, B), BWD_THREADS, bytes, stream>>>(dq, dout, lse, delta, q, k, v, T, H, Hkv, scale, dt);
    CUDA_CHECK(cudaGetLastError());
}

/* the covered (Dqk, Dv) pairs: CASE(dqk, dv) for each */
#define FLASH_SHAPES LOOM_FLASH_SHAPES

/* the most dynamic shared memory a block may opt in to on the current device */
static size_t device_smem_limit(void) {
    static int limit = -1;
    if (limit < 0) {
        int device = 0;
        CUDA_CHECK(cudaGetDevice(&device));
        CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    }
    return (size_t)limit;
}

template <typename E> static size_t shape_smem(int Dqk, int Dv) {
#define CASE(dqk, dv)                                                                                                  \
    if (Dqk == dqk && Dv == dv) return smem_bytes<dqk, dv, E>();
    FLASH_SHAPES(CASE)
#undef CASE
    return 0;
}

extern "C" int loom_flash_attention_supports(int Dqk, int Dv, enum loom_dtype dt) {
    size_t bytes = dt == LOOM_F32    ? shape_smem<float>(Dqk, Dv)
                   : dt == LOOM_BF16 ? shape_smem<__nv_bfloat16>(Dqk, Dv)
                   : dt == LOOM_F16  ? shape_smem<__half>(Dqk, Dv)
                                     : 0;
    return bytes > 0 && bytes <= device_smem_limit();
}

template <typename E>
static void forward_dtype(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                          int Hkv, int Dqk, int Dv, float scale, int dt, cudaStream_t stream) {
#define CASE(dqk, dv)                                                                                                  \
    if (Dqk == dqk && Dv == dv) return forward_launch<dqk, dv, E>(out, lse, q, k, v, B, T, H, Hkv, scale, dt, stream);
    FLASH_SHAPES(CASE)
#undef CASE
    CHECK(0, "flash attention: no kernel for Dqk = %d, Dv = %d", Dqk, Dv);
}

template <typename E>
static void backward_dtype(float *dq, float *dk, float *dv, float *delta, const float *dout, const float *out,
                           const float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                           int Hkv, int Dqk, int Dv, float scale, int dt, cudaStream_t stream) {
#define CASE(dqk, dv_)                                                                                                 \
    if (Dqk == dqk && Dv == dv_)                                                                                       \
        return backward_launch<dqk, dv_, E>(dq, dk, dv, delta, dout, out, lse, q, k, v, B, T, H, Hkv, scale, dt,      \
                                            stream);
    FLASH_SHAPES(CASE)
#undef CASE
    CHECK(0, "flash attention: no kernel for Dqk = %d, Dv = %d", Dqk, Dv);
}

extern "C" void loom_flash_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                             int B, int T, int H, int Hkv, int Dqk, int Dv, float scale,
                                             enum loom_dtype dt, struct CUstream_st *stream) {
    CHECK(Hkv > 0 && H % Hkv == 0, "flash attention: H = %d is not a multiple of Hkv = %d", H, Hkv);
    if (B == 0 || T == 0 || H == 0) return;
    if (dt == LOOM_F32) forward_dtype<float>(out, lse, q, k, v, B, T, H, Hkv, Dqk, Dv, scale, dt, stream);
    else if (dt == LOOM_BF16) forward_dtype<__nv_bfloat16>(out, lse, q, k, v, B, T, H, Hkv, Dqk, Dv, scale, dt, stream);
    else forward_dtype<__half>(out, lse, q, k, v, B, T, H, Hkv, Dqk, Dv, scale, dt, stream);
}

extern "C" void loom_flash_attention_backward(float *dq, float *dk, float *dv, float *delta, const float *dout,
                                              const float *out, const float *lse, const float *q, const float *k,
                                              const float *v, int B, int T, int H, int Hkv, int Dqk, int Dv,
                                              float scale, enum loom_dtype dt, struct CUstream_st *stream) {
    CHECK(Hkv > 0 && H % Hkv == 0, "flash attention: H = %d is not a multiple of Hkv = %d", H, Hkv);
    if (B == 0 || T == 0 || H == 0) return;
    if (dt == LOOM_F32)
        backward_dtype<float>(dq, dk, dv, delta, dout, out, lse, q, k, v, B, T, H, Hkv, Dqk, Dv, scale, dt, stream);
    else if (dt == LOOM_BF16)
        backward_dtype<__nv_bfloat16>(dq, dk, dv, delta, dout, out, lse, q, k, v, B, T, H, Hkv, Dqk, Dv, scale, dt,
                                      stream);
    else
        backward_dtype<__half>(dq, dk, dv, delta, dout, out, lse, q, k, v, B, T, H, Hkv, Dqk, Dv, scale, dt, stream);
}
