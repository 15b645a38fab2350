/*
 * model/cuda/flash_attn.h — causal flash attention on the GPU (model/cuda/flash_attn.cu), which the CUDA backend
 * (model/cuda/ops_cuda.cu) runs for the head widths it covers instead of the materialised [B,H,T,T] kernels.
 *
 * Shapes as model/ops.h: q[B,T,H,Dqk], k[B,T,Hkv,Dqk], v[B,T,Hkv,Dv], out[B,T,H,Dv]; query head h reads kv head
 * h / (H / Hkv). Every pointer is device memory holding fp32 values (inputs already rounded to the compute dtype
 * dt); outputs are stored rounded to dt, the logsumexp stays fp32. Work is queued on `stream`. Results repeat bit
 * for bit run to run (no atomics; every sum has a fixed order).
 *
 * Plain C: ops_cuda.cu passes its cudaStream_t, which is a `struct CUstream_st *`.
 */
#ifndef LOOM_MODEL_CUDA_FLASH_ATTN_H
#define LOOM_MODEL_CUDA_FLASH_ATTN_H

#include "core/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

struct CUstream_st;

/* The (Dqk, Dv) pairs the kernels are built for, as CASE(Dqk, Dv) ... (loom plan sizes the saved logsumexp of
 * a GPU run from it too). */
#define LOOM_FLASH_SHAPES(CASE) CASE(64, 64) CASE(64, 128) CASE(128, 64) CASE(128, 128) CASE(192, 64) CASE(192, 128)

/* 1 when there are kernels for (Dqk, Dv) in dt whose shared memory fits the current device, else 0.
 * Covered widths: Dqk in {64, 128, 192} with Dv in {64, 128}. */
int loom_flash_attention_supports(int Dqk, int Dv, enum loom_dtype dt);

/* out[B,T,H,Dv] = softmax_j<=t(scale q_t . k_j) v_j; lse[B,H,T] = logsumexp_j<=t(scale q_t . k_j), what the
 * backward needs besides out */
void loom_flash_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T,
                                  int H, int Hkv, int Dqk, int Dv, float scale, enum loom_dtype dt,
                                  struct CUstream_st *stream);

/* dq, dk, dv assigned, from dout[B,T,H,Dv] and the forward's out and lse; delta[B,H,T] is work space
 * (rowsum(dout * out)) */
void loom_flash_attention_backward(float *dq, float *dk, float *dv, float *delta, const float *dout, const float *out,
                                   const float *lse, const float *q, const float *k, const float *v, int B, int T,
                                   int H, int Hkv, int Dqk, int Dv, float scale, enum loom_dtype dt,
                                   struct CUstream_st *stream);

#ifdef __cplusplus
}
#endif
#endif
