/*
 * model/cuda/ops_cuda.h — the CUDA backend: `struct loom_ops` on one GPU (model/cuda/ops_cuda.cu).
 *
 * Plain C: no CUDA header leaks out of the backend. Pointers the table hands out (alloc) are device memory;
 * index arrays (ids, targets, idx) passed to its ops must be device memory too (upload them with from_host).
 */
#ifndef LOOM_MODEL_CUDA_OPS_CUDA_H
#define LOOM_MODEL_CUDA_OPS_CUDA_H

#include "model/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of CUDA devices visible (0 when none or no driver). */
int loom_cuda_devices(void);

/* The CUDA backend on device `device`, storing activations in fp32 device memory and rounding at the compute
 * dtype's cast points like model/ops_cpu_mixed.c; GEMMs: fp32 (cublas, TF32 off) when compute is fp32, else on
 * tensor cores with the operands in the compute dtype (exact: they are already rounded to it) and fp32
 * accumulation. NULL (with a message to stderr) when the device cannot be used.
 * One device per process: later calls must name the same device (any compute dtype). The ops must be called
 * from the thread that made the first call (CUDA's current device is per thread). */
const struct loom_ops *loom_ops_cuda(int device, enum loom_dtype compute);

/* Attention through the flash-attention kernels where they cover the head widths (the default, enabled = 1), or
 * always through the materialised [B,H,T,T] kernels (0): for tests and benchmarks that compare the two. What
 * attention_saved_floats reports follows it, so change it only between an attention's forward and the next
 * forward, never between a forward and its backward. */
void loom_cuda_set_flash_attention(int enabled);

/* The stream every op is queued on (a cudaStream_t), NULL before loom_ops_cuda: the comm layer's NCCL path
 * queues its work behind it and makes it wait for the results (parallel/comm_nccl.cu). */
void *loom_cuda_stream(void);

#ifdef __cplusplus
}
#endif
#endif
