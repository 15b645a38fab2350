/*
 * bench/bench_attention.c — causal attention on the CUDA backend: flash attention (model/cuda/flash_attn.cu)
 * against the materialised [B,H,T,T] kernels, forward and backward, by default at Youtu-LLM-2B's MLA shape.
 *
 * Usage: bench_attention [B T H Dqk Dv]  (default 1 4096 16 192 128; Hkv = H, as MLA)
 * For each compute dtype (fp32, bf16, fp16) and each path, through the backend table (loom_ops_cuda and
 * loom_cuda_set_flash_attention): one warm-up call, then the median of `reps` timed calls, each timed on the host
 * around the call and a 4-byte to_host (which waits for the backend's stream). FLOPs per call: causal forward
 * 2 B H T^2 (Dqk + Dv) / 2 (QK^T and PV over the lower triangle), backward 2.5x that (dP, dV, dQ, dK and the
 * recomputed half of QK^T; the flash backward's extra recomputation is not counted). One line per measurement:
 *   attention dtype=bf16 path=flash dir=forward ms=... tflops=...
 * and one per dtype comparing the two paths' outputs:
 *   attention dtype=bf16 flash_vs_materialised out=... dq=... dk=... dv=...   (max |diff| / max |materialised|)
 * Exits 2 when no CUDA device is visible.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/dtype.h"
#include "core/error.h"
#include "model/ops.h"
#ifdef LOOM_CUDA
#include "model/cuda/ops_cuda.h"

enum { MAX_REPS = 16 };

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

struct problem {
    int B, T, H, Dqk, Dv;
    float scale;
    float *q, *k, *v, *dout;             /* device inputs */
    float *out, *saved, *dq, *dk, *dv;   /* device outputs */
};

/* seconds: the median of reps calls of the forward (backward = 0) or the backward */
static double time_op(const struct loom_ops *g, struct problem *p, int backward, int reps) {
    double t[MAX_REPS];
    float sync;
    for (int r = -1; r < reps; r++) { /* r = -1: warm-up */
        double t0 = now();
        if (backward)
            g->attention_backward(p->dq, p->dk, p->dv, p->dout, p->out, p->saved, p->q, p->k, p->v, p->B, p->T, p->H,
                                  p->H, p->Dqk, p->Dv, p->scale);
        else
            g->attention_forward(p->out, p->saved, p->q, p->k, p->v, p->B, p->T, p->H, p->H, p->Dqk, p->Dv, p->scale);
        g->to_host(&sync, p->out, sizeof sync);
        if (r >= 0) t[r] = now() - t0;
    }
    qsort(t, (size_t)reps, sizeof t[0], cmp_double);
    return t[reps / 2];
}

/* max |a - b| / max |b| over n device floats */
static double rel_diff(const struct loom_ops *g, const float *a, const float *b, size_t n) {
    float *x = malloc_check(n * sizeof(float)), *y = malloc_check(n * sizeof(float));
    g->to_host(x, a, n * sizeof(float));
    g->to_host(y, b, n * sizeof(float));
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)x[i] - y[i]));
        m = fmax(m, fabs((double)y[i]));
    }
    free(x);
    free(y);
    return m > 0 ? d / m : d;
}

static float *upload_random(const struct loom_ops *g, size_t n, enum loom_dtype dt, unsigned seed) {
    float *h = malloc_check(n * sizeof(float));
    srand(seed);
    for (size_t i = 0; i < n; i++) h[i] = loom_round_to(dt, 2.0f * rand() / (float)RAND_MAX - 1.0f);
    float *d = g->alloc(n * sizeof(float));
    g->from_host(d, h, n * sizeof(float));
    free(h);
    return d;
}

static void bench_dtype(enum loom_dtype dt, int B, int T, int H, int Dqk, int Dv) {
    const struct loom_ops *g = loom_ops_cuda(0, dt);
    CHECK(g != NULL, "loom_ops_cuda(0, %s) failed", loom_dtype_name(dt));
    size_t nq = (size_t)B * T * H * Dqk, nv = (size_t)B * T * H * Dv;
    struct problem p = {B, T, H, Dqk, Dv, 1.0f / sqrtf((float)Dqk), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                        NULL};
    p.q = upload_random(g, nq, dt, 1);
    p.k = upload_random(g, nq, dt, 2);
    p.v = upload_random(g, nv, dt, 3);
    p.dout = upload_random(g, nv, dt, 4);
    double fwd_flops = 2.0 * B * H * (double)T * T * (Dqk + Dv) / 2, bwd_flops = 2.5 * fwd_flops;

    /* path 0: materialised, path 1: flash; outputs of each kept for the comparison */
    float *outs[2][4];
    for (int path = 0; path < 2; path++) {
        loom_cuda_set_flash_attention(path);
        p.out = g->alloc(nv * sizeof(float));
        p.saved = g->alloc(g->attention_saved_floats(B, T, H, Dqk, Dv) * sizeof(float));
        p.dq = g->alloc(nq * sizeof(float));
        p.dk = g->alloc(nq * sizeof(float));
        p.dv = g->alloc(nv * sizeof(float));
        int reps = path ? 9 : 3;
        double tf = time_op(g, &p, 0, reps), tb = time_op(g, &p, 1, reps);
        const char *name = path ? "flash" : "materialised";
        printf("attention dtype=%s path=%s dir=forward ms=%.3f tflops=%.2f\n", loom_dtype_name(dt), name, tf * 1e3,
               fwd_flops / tf * 1e-12);
        printf("attention dtype=%s path=%s dir=backward ms=%.3f tflops=%.2f\n", loom_dtype_name(dt), name, tb * 1e3,
               bwd_flops / tb * 1e-12);
        fflush(stdout);
        g->free(p.saved);
        outs[path][0] = p.out, outs[path][1] = p.dq, outs[path][2] = p.dk, outs[path][3] = p.dv;
    }
    printf("attention dtype=%s flash_vs_materialised out=%.3g dq=%.3g dk=%.3g dv=%.3g\n", loom_dtype_name(dt),
           rel_diff(g, outs[1][0], outs[0][0], nv), rel_diff(g, outs[1][1], outs[0][1], nq),
           rel_diff(g, outs[1][2], outs[0][2], nq), rel_diff(g, outs[1][3], outs[0][3], nv));
    for (int path = 0; path < 2; path++)
        for (int i = 0; i < 4; i++) g->free(outs[path][i]);
    g->free(p.q);
    g->free(p.k);
    g->free(p.v);
    g->free(p.dout);
}

int main(int argc, char **argv) {
    int B = 1, T = 4096, H = 16, Dqk = 192, Dv = 128;
    if (argc == 6) {
        B = atoi(argv[1]), T = atoi(argv[2]), H = atoi(argv[3]), Dqk = atoi(argv[4]), Dv = atoi(argv[5]);
    } else if (argc != 1) {
        fprintf(stderr, "usage: bench_attention [B T H Dqk Dv]\n");
        return 2;
    }
    if (loom_cuda_devices() == 0) {
        fprintf(stderr, "bench_attention: no CUDA device is visible\n");
        return 2;
    }
    printf("attention shape B=%d T=%d H=%d Hkv=%d Dqk=%d Dv=%d\n", B, T, H, H, Dqk, Dv);
    enum loom_dtype dts[] = {LOOM_BF16, LOOM_F16, LOOM_F32};
    for (size_t i = 0; i < sizeof dts / sizeof dts[0]; i++) bench_dtype(dts[i], B, T, H, Dqk, Dv);
    loom_cuda_set_flash_attention(1);
    return 0;
}

#else /* !LOOM_CUDA */

int main(void) {
    fprintf(stderr, "bench_attention: this build has no CUDA backend (nvcc not found)\n");
    return 2;
}

#endif
