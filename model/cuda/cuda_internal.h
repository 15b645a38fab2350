/*
 * model/cuda/cuda_internal.h — what the CUDA backend's source files share (CUDA C++; included only by the
 * .cu files of model/cuda, never by C code: model/cuda/ops_cuda.h is the backend's public header).
 *
 * ops_cuda.cu owns the device, its stream and cuBLAS handle, and fills the op tables; each other file adds
 * the ops of one area (moe_cuda.cu: the MoE routing, permutation and grouped GEMMs; flash_attn.cu: attention).
 */
#ifndef LOOM_MODEL_CUDA_CUDA_INTERNAL_H
#define LOOM_MODEL_CUDA_CUDA_INTERNAL_H

#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "core/dtype.h"
#include "core/error.h"
#include "core/error_cuda.h"
#include "model/cuda/ops_cuda.h"
#include "model/ops.h"

#define CUBLAS_CHECK(call)                                                                                             \
    do {                                                                                                               \
        cublasStatus_t cublas_rc_ = (call);                                                                            \
        if (cublas_rc_ != CUBLAS_STATUS_SUCCESS)                                                                       \
            loom_fatal(__FILE__, __LINE__, #call, "cuBLAS error %d: %s", (int)cublas_rc_,                              \
                       cublasGetStatusString(cublas_rc_));                                                             \
    } while (0)

/* x rounded to dt and back, bit for bit as core/dtype.c's loom_round_to: round to nearest even (cvt.rn),
 * fp16 overflows to inf and keeps subnormals. cvt turns NaN into the canonical NaN; core/dtype.c keeps the
 * sign (and for bf16 the top payload bits) and sets the quiet bit, so NaN is handled here in bits. */
static __device__ __forceinline__ float round_to(int dt, float x) {
    if (dt == LOOM_F32) return x;
    if (isnan(x)) {
        uint32_t u = __float_as_uint(x);
        return __uint_as_float(dt == LOOM_BF16 ? (u & 0xffff0000u) | 0x00400000u : (u & 0x80000000u) | 0x7fc00000u);
    }
    if (dt == LOOM_BF16) return __bfloat162float(__float2bfloat16_rn(x));
    return __half2float(__float2half_rn(x));
}

/* the sum over the 32 lanes of a warp (all must call it; all get the result), in a fixed butterfly order */
template <typename T> static __device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* the backend's stream (every op is queued on it; model/cuda/ops_cuda.h's loom_cuda_stream) and its cuBLAS handle
 * (bound to that stream, fp32 GEMMs without TF32); valid once loom_ops_cuda has succeeded */
static inline cudaStream_t cuda_stream(void) { return (cudaStream_t)loom_cuda_stream(); }
cublasHandle_t loom_cuda_cublas(void);

/* model/cuda/moe_cuda.cu: sets t's MoE ops (moe_tile, grouped_matmul_*, moe_*) for compute dtype dt */
void loom_cuda_moe_fill(struct loom_ops *t, enum loom_dtype dt);

#endif
