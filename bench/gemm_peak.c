/*
 * bench/gemm_peak.c — the dense GEMM rate this GPU reaches through cuBLAS: the measured peak that
 * scripts/bench_gpu.sh quotes MFU against, beside the datasheet figure.
 *
 * C[n,n] = A[n,n] B[n,n] (n = 8192 unless given), cublasGemmEx with
 *   bf16   A, B, C bf16, fp32 accumulation (CUBLAS_COMPUTE_32F): what a bf16 training step's GEMMs run
 *   fp16   A, B, C fp16, fp32 accumulation
 *   tf32   A, B, C fp32 on the tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32)
 *   fp32   A, B, C fp32, no tensor cores (CUBLAS_COMPUTE_32F; loom's fp32 path, TF32 off)
 * Inputs are random bit patterns of magnitude 2^-5 .. 1 (zeros would let the tensor cores idle and read
 * high). Each dtype: warm-up GEMMs for half a second (clocks settle), then `trials` runs of a batch sized to
 * take about 0.2 s, each timed with cudaEvents; prints the best and the median rate, one line per dtype:
 *   gemm dtype=bf16 n=8192 best_tflops=... median_tflops=... ms=... gemms=...
 * FLOPs per GEMM: 2 n^3.
 *
 * Usage: gemm_peak [N] [TRIALS]. Exits 2 when no CUDA device is visible. A standalone tool (it does not link
 * the loom library); scripts/bench_gpu.sh builds it with `$CC -I$CUDA/include ... -lcublas -lcudart`.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#define CUDA_CHECK(call)                                                                                      \
    do {                                                                                                      \
        cudaError_t rc_ = (call);                                                                             \
        if (rc_ != cudaSuccess) {                                                                             \
            fprintf(stderr, "gemm_peak: %s:%d: %s: CUDA error %d: %s\n", __FILE__, __LINE__, #call, (int)rc_, \
                    cudaGetErrorString(rc_));                                                                 \
            exit(1);                                                                                          \
        }                                                                                                     \
    } while (0)

#define CUBLAS_CHECK(call)                                                                                    \
    do {                                                                                                      \
        cublasStatus_t rc_ = (call);                                                                          \
        if (rc_ != CUBLAS_STATUS_SUCCESS) {                                                                   \
            fprintf(stderr, "gemm_peak: %s:%d: %s: cuBLAS error %d: %s\n", __FILE__, __LINE__, #call,         \
                    (int)rc_, cublasGetStatusString(rc_));                                                    \
            exit(1);                                                                                          \
        }                                                                                                     \
    } while (0)

enum { MAX_TRIALS = 64 };

struct gemm_kind {
    const char *name;
    cudaDataType_t type;       /* of A, B and C */
    size_t elem;               /* bytes per element */
    cublasComputeType_t compute;
};

static const struct gemm_kind KINDS[] = {
    {"bf16", CUDA_R_16BF, 2, CUBLAS_COMPUTE_32F},
    {"fp16", CUDA_R_16F, 2, CUBLAS_COMPUTE_32F},
    {"tf32", CUDA_R_32F, 4, CUBLAS_COMPUTE_32F_FAST_TF32},
    {"fp32", CUDA_R_32F, 4, CUBLAS_COMPUTE_32F},
};

/* splitmix64 (Steele et al. 2014): fixed pseudo-random bits */
static uint64_t next_bits(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* n random values of the kind's dtype, written as bit patterns: random sign and significand, exponent for a
 * magnitude in [2^-5, 1) */
static void fill_random(void *host, size_t n, const struct gemm_kind *k, uint64_t seed) {
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = next_bits(&s);
        uint32_t sign = (uint32_t)(r & 1), e = (uint32_t)((r >> 1) % 5), man = (uint32_t)(r >> 8);
        if (k->type == CUDA_R_16BF)
            ((uint16_t *)host)[i] = (uint16_t)(sign << 15 | (122 + e) << 7 | (man & 0x7F));
        else if (k->type == CUDA_R_16F)
            ((uint16_t *)host)[i] = (uint16_t)(sign << 15 | (10 + e) << 10 | (man & 0x3FF));
        else
            ((uint32_t *)host)[i] = sign << 31 | (122 + e) << 23 | (man & 0x7FFFFF);
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void gemm(cublasHandle_t h, const struct gemm_kind *k, int n, const void *a, const void *b, void *c) {
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, k->type, n, b, k->type, n, &zero, c,
                              k->type, n, k->compute, CUBLAS_GEMM_DEFAULT));
}

/* seconds of `count` back-to-back GEMMs, by cudaEvents */
static double time_gemms(cublasHandle_t h, const struct gemm_kind *k, int n, const void *a, const void *b, void *c,
                         int count, cudaEvent_t t0, cudaEvent_t t1) {
    CUDA_CHECK(cudaEventRecord(t0, 0));
    for (int i = 0; i < count; i++) gemm(h, k, n, a, b, c);
    CUDA_CHECK(cudaEventRecord(t1, 0));
    CUDA_CHECK(cudaEventSynchronize(t1));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, t0, t1));
    return ms * 1e-3;
}

static void bench_kind(cublasHandle_t h, const struct gemm_kind *k, int n, int trials) {
    size_t count = (size_t)n * n, bytes = count * k->elem;
    void *host = malloc(bytes), *a, *b, *c;
    if (!host) {
        fprintf(stderr, "gemm_peak: out of host memory (%zu bytes)\n", bytes);
        exit(1);
    }
    CUDA_CHECK(cudaMalloc(&a, bytes));
    CUDA_CHECK(cudaMalloc(&b, bytes));
    CUDA_CHECK(cudaMalloc(&c, bytes));
    fill_random(host, count, k, 1);
    CUDA_CHECK(cudaMemcpy(a, host, bytes, cudaMemcpyHostToDevice));
    fill_random(host, count, k, 2);
    CUDA_CHECK(cudaMemcpy(b, host, bytes, cudaMemcpyHostToDevice));
    free(host);

    cudaEvent_t t0, t1;
    CUDA_CHECK(cudaEventCreate(&t0));
    CUDA_CHECK(cudaEventCreate(&t1));
    /* warm-up: about half a second of GEMMs (cuBLAS picks its kernel, the clocks settle) */
    double one = time_gemms(h, k, n, a, b, c, 1, t0, t1);
    int warm = (int)(0.5 / (one > 1e-6 ? one : 1e-6)) + 1;
    one = time_gemms(h, k, n, a, b, c, warm, t0, t1) / warm;
    int batch = (int)(0.2 / one) + 1;

    double rate[MAX_TRIALS], flops = 2.0 * (double)n * n * n;
    for (int t = 0; t < trials; t++) rate[t] = flops * batch / time_gemms(h, k, n, a, b, c, batch, t0, t1) / 1e12;
    qsort(rate, (size_t)trials, sizeof rate[0], cmp_double);
    double best = rate[trials - 1], median = rate[trials / 2];
    printf("gemm dtype=%s n=%d best_tflops=%.1f median_tflops=%.1f ms=%.3f gemms=%d\n", k->name, n, best, median,
           flops / (best * 1e12) * 1e3, trials * batch);
    fflush(stdout);
    CUDA_CHECK(cudaEventDestroy(t0));
    CUDA_CHECK(cudaEventDestroy(t1));
    CUDA_CHECK(cudaFree(a));
    CUDA_CHECK(cudaFree(b));
    CUDA_CHECK(cudaFree(c));
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 8192, trials = argc > 2 ? atoi(argv[2]) : 5;
    if (n <= 0 || trials <= 0 || trials > MAX_TRIALS) {
        fprintf(stderr, "usage: gemm_peak [N] [TRIALS <= %d]\n", MAX_TRIALS);
        return 2;
    }
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        fprintf(stderr, "gemm_peak: no CUDA device is visible\n");
        return 2;
    }
    struct cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("device name=\"%s\" sm=%d%d sms=%d memory_gib=%.1f\n", prop.name, prop.major, prop.minor,
           prop.multiProcessorCount, prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    for (size_t i = 0; i < sizeof KINDS / sizeof KINDS[0]; i++) bench_kind(h, &KINDS[i], n, trials);
    CUBLAS_CHECK(cublasDestroy(h));
    return 0;
}
