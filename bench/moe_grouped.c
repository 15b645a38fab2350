/*
 * bench/moe_grouped.c — loom's mixture-of-experts on one GPU, for scripts/bench_gpu.sh (`make bench-gpu`).
 *
 *   1. The experts' grouped GEMMs (ops->grouped_matmul_*) of a dots-shaped layer: N tokens routed to K of E
 *      experts uniformly at random, each expert's rows in a block starting at a multiple of the backend's
 *      moe_tile; the gate projection [rows, C] x [I, C]^T forward, its input gradient and its weight gradient,
 *      each against ONE dense GEMM of the same total size (all the experts' rows against one [I, C] weight):
 *        grouped op=forward rows=... c=... oc=... grouped_tflops=... dense_tflops=... ratio=...
 *      FLOPs: 2 x rows x C x I per call, rows = N K (the padding is not counted).
 *   2. A stack of LAYERS dots-shaped MoE layers (model/moe.h: fp32 sigmoid router with the score-correction
 *      bias, top-K of E experts, 2 shared, the sequence-wise balance loss on), each layer's output the next one's
 *      input, forward through the stack then backward through it (no attention, no optimizer: the layer alone,
 *      as bench/torch_moe.py runs it):
 *        layer layers=... tokens=... tokens_per_s=... step_s=... flops_per_token=... mfu=...
 *      FLOPs per token = 6 x active parameters per layer x LAYERS (the router, K experts, the shared experts);
 *      MFU = that x tokens/s / --peak-tflops.
 * Times are host wall clock around a batch of calls ended by a device-to-host copy (which waits for the stream);
 * each figure is the best of --trials batches, after warm-up calls.
 *
 * The layers come from a loom_model of that shape (its parameter table, initialisation and backend); the model's
 * own activations are sized for one token, and the bench's MoE layers (loom_moe_layer_create) hold those of the
 * B x T tokens, with the model's B and T set to them.
 *
 * Usage: moe_grouped [--tokens 8192] [--seq 1024] [--layers 4] [--experts 64] [--top-k 6] [--width 2048]
 *                    [--expert-width 1408] [--shared 2] [--dtype bf16|fp16|fp32] [--peak-tflops 0] [--trials 5]
 * Exits 2 when this build has no CUDA backend or no device is visible.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/config.h"
#include "core/dtype.h"
#include "core/error.h"
#include "model/model.h"
#include "model/moe.h"
#include "model/ops.h"
#ifdef LOOM_CUDA
#include "model/cuda/ops_cuda.h"

struct args {
    int tokens, seq, layers, experts, top_k, width, expert_width, shared, trials;
    double peak_tflops;
    enum loom_dtype dtype;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* waits for every queued op: to_host copies on the backend's stream after it */
static void sync_device(const struct loom_ops *ops, const float *any) {
    float x;
    ops->to_host(&x, any, sizeof x);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double uniform(void) {
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    return (double)((rng * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-53;
}

/* n values uniform in [-1, 1), rounded to dt, in backend memory */
static float *device_random(const struct loom_ops *ops, size_t n, enum loom_dtype dt) {
    float *h = malloc_check(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) h[i] = (float)(2 * uniform() - 1);
    loom_round_array(dt, h, n);
    float *d = ops->alloc(sizeof(float) * (n ? n : 1));
    ops->from_host(d, h, sizeof(float) * n);
    free(h);
    return d;
}

/* ---------------------------------------------------------------------------------------------- */
/* 1. grouped against dense                                                                         */

enum gemm_op { OP_FORWARD, OP_BACKWARD_INPUT, OP_BACKWARD_WEIGHT };

struct gemm_case {
    const struct loom_ops *ops;
    int E, C, I, rows, total_rows;
    const int *start, *count;
    size_t stride;
    float *x, *y, *dx, *dy, *w, *dw, *w_dense, *dw_dense;
};

static void run_op(const struct gemm_case *g, enum gemm_op op, int grouped) {
    const struct loom_ops *o = g->ops;
    if (grouped) {
        if (op == OP_FORWARD) o->grouped_matmul_forward(g->y, g->x, g->w, g->stride, g->start, g->count, g->E, g->C, g->I);
        if (op == OP_BACKWARD_INPUT)
            o->grouped_matmul_backward_input(g->dx, g->dy, g->w, g->stride, g->start, g->count, g->E, g->C, g->I, 0);
        if (op == OP_BACKWARD_WEIGHT)
            o->grouped_matmul_backward_weight(g->dw, g->stride, g->dy, g->x, g->start, g->count, g->E, g->C, g->I);
        return;
    }
    if (op == OP_FORWARD) o->matmul_forward(g->y, g->x, g->w_dense, g->rows, g->C, g->I);
    if (op == OP_BACKWARD_INPUT) o->matmul_backward_input(g->dx, g->dy, g->w_dense, g->rows, g->C, g->I, 0);
    if (op == OP_BACKWARD_WEIGHT) o->matmul_backward_weight(g->dw_dense, g->dy, g->x, g->rows, g->C, g->I);
}

/* the best TFLOP/s over `trials` batches of calls of about 0.2 s each */
static double time_op(const struct gemm_case *g, enum gemm_op op, int grouped, int trials) {
    double flops = 2.0 * g->rows * g->C * g->I;
    for (int i = 0; i < 3; i++) run_op(g, op, grouped);
    sync_device(g->ops, g->y);
    double t0 = now();
    run_op(g, op, grouped);
    sync_device(g->ops, g->y);
    double one = now() - t0;
    int reps = one > 0 ? (int)(0.2 / one) : 1;
    reps = reps < 1 ? 1 : reps > 1000 ? 1000 : reps;
    double best = 0;
    for (int t = 0; t < trials; t++) {
        t0 = now();
        for (int r = 0; r < reps; r++) run_op(g, op, grouped);
        sync_device(g->ops, g->y);
        double rate = flops * reps / (now() - t0) / 1e12;
        best = rate > best ? rate : best;
    }
    return best;
}

static void bench_grouped(const struct loom_ops *ops, const struct args *a) {
    int E = a->experts, K = a->top_k, C = a->width, I = a->expert_width, N = a->tokens;
    int tile = ops->moe_tile > 1 ? ops->moe_tile : 1;
    int *count = calloc_check((size_t)E, sizeof(int)), *start = calloc_check((size_t)E, sizeof(int));
    for (int n = 0; n < N; n++) { /* K distinct experts per token, uniformly */
        int chosen[64], k = 0;
        CHECK(K <= 64 && K <= E, "top-k %d of %d experts", K, E);
        while (k < K) {
            int e = (int)(uniform() * E), dup = 0;
            for (int q = 0; q < k; q++) dup |= chosen[q] == e;
            if (!dup) chosen[k++] = e, count[e]++;
        }
    }
    int R = 0;
    for (int e = 0; e < E; e++) start[e] = R, R += (count[e] + tile - 1) / tile * tile;
    size_t numel = (size_t)I * C, stride = 3 * numel; /* gate, up, down of an expert, then the next: the table's layout */
    struct gemm_case g = {.ops = ops, .E = E, .C = C, .I = I, .rows = N * K, .total_rows = R, .start = start,
                          .count = count, .stride = stride};
    g.x = device_random(ops, (size_t)R * C, a->dtype), g.dy = device_random(ops, (size_t)R * I, a->dtype);
    g.y = ops->alloc(sizeof(float) * (size_t)R * I), g.dx = ops->alloc(sizeof(float) * (size_t)R * C);
    g.w = device_random(ops, stride * E, a->dtype), g.dw = ops->alloc(sizeof(float) * stride * E);
    g.w_dense = device_random(ops, numel, a->dtype), g.dw_dense = ops->alloc(sizeof(float) * numel);
    static const char *const names[3] = {"forward", "backward_input", "backward_weight"};
    for (int op = 0; op < 3; op++) {
        double grouped = time_op(&g, (enum gemm_op)op, 1, a->trials), dense = time_op(&g, (enum gemm_op)op, 0, a->trials);
        printf("grouped op=%s experts=%d rows=%d padded_rows=%d c=%d oc=%d grouped_tflops=%.2f dense_tflops=%.2f "
               "ratio=%.3f\n", names[op], E, N * K, R, C, I, grouped, dense, dense > 0 ? grouped / dense : 0.0);
        fflush(stdout);
    }
    float *bufs[] = {g.x, g.dy, g.y, g.dx, g.w, g.dw, g.w_dense, g.dw_dense};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) ops->free(bufs[i]);
    free(count), free(start);
}

/* ---------------------------------------------------------------------------------------------- */
/* 2. the MoE layer stack                                                                           */

static void bench_layers(const struct loom_ops *ops, const struct args *a) {
    int B = a->tokens / a->seq, T = a->seq, N = B * T, C = a->width, L = a->layers, E = a->experts;
    CHECK(B >= 1 && N == a->tokens, "--tokens %d is not a multiple of --seq %d", a->tokens, a->seq);
    char text[1024];
    snprintf(text, sizeof text,
             "[model]\nattention = mha\nvocab_size = 256\nhidden_size = %d\nnum_layers = %d\nnum_heads = %d\n"
             "head_dim = 128\nintermediate_size = %d\ntie_word_embeddings = false\n"
             "[moe]\nexperts = %d\ntop_k = %d\nshared = %d\nintermediate = %d\nfirst_dense = 0\nscaling = 2.5\n"
             "norm_topk = true\nscore = sigmoid\nbalance_alpha = 1e-4\nbias_update_rate = 1e-3\n",
             C, L, C / 128 > 0 ? C / 128 : 1, 4 * C, E, a->top_k, a->shared, a->expert_width);
    struct loom_config cfg;
    loom_config_init(&cfg);
    loom_config_load_string(&cfg, text, "moe_grouped");
    cfg.data.kind = LOOM_DATA_RANDOM;
    loom_config_validate(&cfg, 0);
    struct loom_model m;
    memset(&m, 0, sizeof m);
    loom_model_create(&m, ops, &cfg.model, &cfg.optim, 1, 1);
    loom_model_init_params(&m, 1234);
    m.B = B, m.T = T;
    m.bal_scale = (float)(cfg.model.moe.balance_alpha / B);

    struct loom_moe_layer **layer = calloc_check((size_t)L, sizeof *layer);
    float **act = calloc_check((size_t)L + 1, sizeof *act);
    for (int l = 0; l < L; l++) layer[l] = loom_moe_layer_create(&m, l, B, T);
    act[0] = device_random(ops, (size_t)N * C, a->dtype);
    for (int l = 1; l <= L; l++) act[l] = ops->alloc(sizeof(float) * (size_t)N * C);
    float *dout = device_random(ops, (size_t)N * C, a->dtype), *dx = ops->alloc(sizeof(float) * (size_t)N * C);
    float *bias = calloc_check((size_t)E, sizeof(float));
    int64_t *load = calloc_check((size_t)E, sizeof(int64_t));
    double balance = 0;

    /* forward through the stack, then backward: the gradient of sum(out * dout) */
    double best = 0;
    for (int t = -2; t < a->trials; t++) { /* two warm-up passes */
        sync_device(ops, act[0]);
        double t0 = now();
        for (int l = 0; l < L; l++) loom_moe_forward(&m, layer[l], act[l], act[l + 1], bias, load, &balance, m.bal_scale);
        const float *g = dout;
        for (int l = L - 1; l >= 0; l--) {
            loom_moe_backward(&m, layer[l], act[l], g, dx);
            ops->copy_2d(act[l + 1], C, dx, C, N, C, 0); /* act[l + 1] is spent: it carries d(loss)/d(act[l]) down */
            g = act[l + 1];
        }
        sync_device(ops, dx);
        double s = now() - t0;
        if (t >= 0 && (best == 0 || s < best)) best = s;
    }
    /* active parameters of a layer: the router, K experts, the shared experts */
    double active = (double)E * C + (double)a->top_k * 3.0 * a->expert_width * C + 3.0 * a->shared * a->expert_width * C;
    double fpt = 6.0 * active * L, tps = N / best;
    printf("layer layers=%d tokens=%d experts=%d top_k=%d c=%d i=%d shared=%d tokens_per_s=%.1f step_s=%.4f "
           "flops_per_token=%.6g", L, N, E, a->top_k, C, a->expert_width, a->shared, tps, best, fpt);
    if (a->peak_tflops > 0) printf(" mfu=%.4f", fpt * tps / (a->peak_tflops * 1e12));
    printf("\n");
    fflush(stdout);

    for (int l = 0; l < L; l++) loom_moe_layer_free(&m, layer[l]);
    for (int l = 0; l <= L; l++) ops->free(act[l]);
    ops->free(dout), ops->free(dx);
    free(layer), free(act), free(bias), free(load);
    loom_model_destroy(&m);
    loom_config_free(&cfg);
}

/* ---------------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    struct args a = {.tokens = 8192, .seq = 1024, .layers = 4, .experts = 64, .top_k = 6, .width = 2048,
                     .expert_width = 1408, .shared = 2, .trials = 5, .peak_tflops = 0, .dtype = LOOM_BF16};
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int *ints[] = {&a.tokens, &a.seq, &a.layers, &a.experts, &a.top_k, &a.width, &a.expert_width, &a.shared,
                       &a.trials};
        static const char *const keys[] = {"--tokens", "--seq", "--layers", "--experts", "--top-k", "--width",
                                           "--expert-width", "--shared", "--trials"};
        int found = 0;
        for (size_t q = 0; q < sizeof keys / sizeof keys[0] && v; q++)
            if (strcmp(k, keys[q]) == 0) *ints[q] = atoi(v), found = 1;
        if (v && strcmp(k, "--peak-tflops") == 0) a.peak_tflops = atof(v), found = 1;
        if (v && strcmp(k, "--dtype") == 0) {
            found = 1;
            if (strcmp(v, "bf16") == 0) a.dtype = LOOM_BF16;
            else if (strcmp(v, "fp16") == 0) a.dtype = LOOM_F16;
            else if (strcmp(v, "fp32") == 0) a.dtype = LOOM_F32;
            else found = 0;
        }
        if (!found) {
            fprintf(stderr, "moe_grouped: bad argument %s %s (see the usage at the top of bench/moe_grouped.c)\n", k,
                    v ? v : "");
            return 2;
        }
        i++;
    }
    if (loom_cuda_devices() == 0) {
        fprintf(stderr, "moe_grouped: no CUDA device is visible\n");
        return 2;
    }
    const struct loom_ops *ops = loom_ops_cuda(0, a.dtype);
    if (!ops) return 2;
    printf("moe_grouped: dtype=%s tokens=%d experts=%d top_k=%d width=%d expert_width=%d moe_tile=%d\n",
           loom_dtype_name(a.dtype), a.tokens, a.experts, a.top_k, a.width, a.expert_width, ops->moe_tile);
    bench_grouped(ops, &a);
    bench_layers(ops, &a);
    return 0;
}

#else /* !LOOM_CUDA */

int main(void) {
    fprintf(stderr, "moe_grouped: this build has no CUDA backend (nvcc not found when loom was built)\n");
    return 2;
}

#endif
