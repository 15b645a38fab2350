/*
 * tests/gpu/gpu_check.h — the harness the CUDA backend's op tests share (tests/gpu/test_ops_gpu.c,
 * tests/gpu/test_moe_gpu.c; linked into every tests/gpu binary, empty without LOOM_CUDA).
 *
 * Each op runs on two backends with the same arguments (ON_BOTH): be[0] the CUDA backend, loom_ops_cuda(0, dt), and
 * be[1] the CPU reference, loom_ops_cpu_mixed(loom_ops_cpu(1), dt), which rounds where a GPU stores dt. A `pair`
 * is one buffer on both sides; outputs start POISONED (every byte 0xFF, a NaN) on both sides, so an element the op
 * must write and leaves alone fails, and one outside its output must keep the poison bit for bit.
 *
 * compare / check judge the GPU's result against the reference's by where the output lives (M = max |want|):
 *   KIND_EXACT     bit for bit
 *   KIND_KEPT      fp32 in every dtype: |got - want| <= 1e-5 M
 *   KIND_OUT       compute dtype, element-wise or a short reduction: fp32 1e-5 M
 *   KIND_OUT_GEMM  compute dtype, a GEMM's output: fp32 1e-4 M
 *   KIND_ATTN      compute dtype, an attention output or gradient: fp32 1e-4 M; 1e-5 absolute where M = 0
 * and in bf16 / fp16 (KIND_OUT, KIND_OUT_GEMM) within 4 ulps of the dtype at max(|want|, M / 64), at most 1% of the
 * elements over 1 ulp, relative L2 error <= 1e-2 (bf16) / 2e-3 (fp16); KIND_ATTN within 2 ulps at M and the same
 * L2 bound. NaN never passes. tests/gpu/test_ops_gpu.c's opening comment says how these bounds were set.
 *
 * One compute dtype per process (the mixed CPU table holds one): gpu_test_main runs the program once per dtype, each
 * in a child process, unless the command line names one. Buffers live until release_all.
 */
#ifndef LOOM_TESTS_GPU_GPU_CHECK_H
#define LOOM_TESTS_GPU_GPU_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "model/ops.h"

/* where an output lives, which picks its tolerance (see the top of this file) */
enum check_kind {
    KIND_EXACT,
    KIND_KEPT,      /* fp32 in every dtype */
    KIND_OUT,       /* compute dtype, element-wise or a short reduction */
    KIND_OUT_GEMM,  /* compute dtype, a GEMM's output */
    KIND_ATTN,      /* compute dtype, an attention output or gradient */
};

/* the process's state, set by gpu_test_main before it runs the checks */
extern enum loom_dtype dt;           /* the compute dtype */
extern const char *dt_name;          /* "fp32", "bf16" or "fp16" */
extern const struct loom_ops *be[2]; /* be[0] the CUDA backend, be[1] the CPU reference */
extern int side;                     /* the backend ON_BOTH is calling */
extern int verbose;                  /* LOOM_TEST_VERBOSE: print the measured error of every check as a `#` line */
extern uint64_t rng_state;           /* the inputs' pseudo-random state (test_rng_uniform) */

/* Run op on both backends with the same arguments; S(p) / SI(p) is side `side`'s copy of pair p. */
#define ON_BOTH(op, ...)                                                                          \
    do {                                                                                          \
        for (side = 0; side < 2; side++) be[side]->op(__VA_ARGS__);                               \
    } while (0)
#define S(p) ((float *)(p).s[side])
#define SI(p) ((int *)(p).s[side])

/* ---------------------------------------------------------------------------------------------- */
/* buffers: host arrays, and pairs of device (GPU) and host (CPU reference) copies                 */

/* n 4-byte elements (floats or ints) on both sides */
struct pair {
    void *s[2];
    size_t n;
};

void *host_alloc(size_t bytes);            /* zeroed */
void *device_alloc(int s, size_t bytes);   /* on backend be[s] */
void release_all(void);                    /* every buffer of host_alloc and device_alloc */

/* x[0..n) uniform in [lo, hi), left fp32 (f32) or rounded to the compute dtype (act) */
void fill_f32(float *x, size_t n, double lo, double hi);
void fill_act(float *x, size_t n, double lo, double hi);
float *rand_f32(size_t n, double lo, double hi);
float *rand_act(size_t n, double lo, double hi);
float *poison_host(size_t n);              /* every byte 0xFF */

struct pair pair_of(const void *host, size_t n); /* both sides a copy of host[0..n) */
struct pair pair_poisoned(size_t n);             /* an output: every byte 0xFF on both sides */
void poison(struct pair p);                      /* poison p again on both sides */
void *fetch(struct pair p, int s);               /* side s's copy, in host memory */

/* ---------------------------------------------------------------------------------------------- */
/* comparison                                                                                       */

/* a check's name, gpu.TEST.DTYPE.(fmt ...); valid until the next call */
const char *nm(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* got (the GPU) against want (the CPU reference), n floats, as kind says; a NaN in want is poison that must stay
 * bit for bit. Prints the check's ok or FAIL line; returns whether it passed. */
int compare(const char *name, const float *got, const float *want, size_t n, enum check_kind kind);
/* pair p: the GPU's copy against the reference's */
int check(const char *name, struct pair p, enum check_kind kind);

/* ---------------------------------------------------------------------------------------------- */
/* the program                                                                                      */

struct gpu_test {
    const char *name;  /* "ops": the binary test_ops_gpu, its checks named gpu.ops.DTYPE.* */
    uint64_t seed;     /* rng_state's start */
    void (*run)(void); /* the checks, for dt on be[0] and be[1] */
};

/* `test_NAME_gpu fp32|bf16|fp16` runs the checks in that dtype. With no argument, one child process per dtype,
 * their output passed through (a child that fails without a FAIL line, a CHECK or a crash, gets one); without a
 * visible CUDA device it fails at once. Returns the exit status. */
int gpu_test_main(int argc, char **argv, const struct gpu_test *t);

#endif
