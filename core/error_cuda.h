/*
 * core/error_cuda.h — CUDA_CHECK, core/error.h's check for CUDA runtime calls, for the files nvcc compiles (the
 * CUDA backend, model/cuda; the comm layer's NCCL path, parallel/comm_nccl.cu).
 */
#ifndef LOOM_CORE_ERROR_CUDA_H
#define LOOM_CORE_ERROR_CUDA_H

#include <cuda_runtime.h>

#include "core/error.h"

#define CUDA_CHECK(call)                                                                                               \
    do {                                                                                                               \
        cudaError_t cuda_rc_ = (call);                                                                                 \
        if (cuda_rc_ != cudaSuccess)                                                                                   \
            loom_fatal(__FILE__, __LINE__, #call, "CUDA error %d: %s", (int)cuda_rc_, cudaGetErrorString(cuda_rc_));   \
    } while (0)

#endif
