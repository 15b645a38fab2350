/*
 * train/plan.c — `loom plan -c CFG --nodes N --gpus-per-node G [--gpu KIND]`: before launch, what a model
 * and layout need on each GPU and roughly how fast they will run.
 *
 * Memory is not estimated from formulas: the plan builds each pipeline stage's model, optimizer shares and
 * work space through a counting backend (every `alloc` of model/model.c, model/moe.c, optim/adamw.c is
 * the call training makes; nothing is touched), so the figures are loom's own allocations, plus the largest
 * transient buffer of the step (a ZeRO-1 reduce-scatter target, a backend's weight-gradient partial).
 *
 * Time is a model: GEMM FLOPs at a GEMM rate (measured with --gemm-tflops, else the datasheet peak times an
 * assumed efficiency), memory-bound work at the HBM bandwidth, and each collective's bytes over the link its
 * group crosses (NVLink inside a node, the network between nodes), with the pipeline bubble
 * (p-1)/(m+p-1). What loom overlaps (the MoE all-to-all of 1F1B's steady phase) is hidden up to the compute
 * it runs beside; everything else is added. The assumptions are printed with the figures.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/error.h"
#include "data/curriculum.h"
#include "model/cuda/flash_attn.h"
#include "model/model.h"
#include "model/params.h"
#include "optim/adamw.h"
#include "parallel/grads.h"
#include "parallel/pipeline.h"
#include "train/cli.h"

static const char *USAGE =
    "loom plan -c CONFIG --nodes N --gpus-per-node G [--gpu h100|h800|h200|a100|cpu] [--gemm-tflops X]\n"
    "          [--json] [--section.key=value ...]";

/* ---------------------------------------------------------------------------------------------- */
/* machines                                                                                         */

struct machine {
    const char *name;
    double dense_tflops[3];        /* datasheet dense peak by compute dtype: fp32 (no TF32), bf16, fp16 */
    double hbm_gbs;                /* memory bandwidth, GB/s */
    double mem_gib;                /* memory per GPU */
    double nvlink_gbs;             /* per GPU, one direction, inside a node */
    double net_gbs;                /* per GPU, one direction, between nodes */
    const char *source;
};

/* Datasheet figures (SXM parts; network: one 400 Gb/s NIC per GPU, 200 Gb/s for the A100). */
static const struct machine MACHINES[] = {
    {"h100", {66.9, 989.4, 989.4}, 3350, 80, 450, 50, "NVIDIA H100 SXM5 datasheet; 8x400G InfiniBand per node"},
    {"h800", {66.9, 989.4, 989.4}, 3350, 80, 200, 50, "NVIDIA H800 SXM5 (NVLink 400 GB/s both ways); 8x400G per node"},
    {"h200", {66.9, 989.4, 989.4}, 4800, 141, 450, 50, "NVIDIA H200 SXM datasheet; 8x400G InfiniBand per node"},
    {"a100", {19.5, 312, 312}, 2039, 80, 300, 25, "NVIDIA A100 SXM4 80GB datasheet; 8x200G InfiniBand per node"},
    /* the CPU backend: memory figures as for a GPU; the rate comes from log.peak_tflops or --gemm-tflops */
    {"cpu", {0, 0, 0}, 20, 0, 10, 10, "the CPU backend (host memory; rates assumed)"},
};

/* the share of the datasheet peak a large GEMM reaches when no measurement is given (cuBLAS bf16 on
 * Hopper reaches about this; `make bench-gpu` measures it as bench/gemm_peak) */
static const double GEMM_EFFICIENCY = 0.75;

/* ---------------------------------------------------------------------------------------------- */
/* the counting backend                                                                             */

static size_t count_held, count_peak;
/* every allocation answers this one byte: the plan only sizes, it never reads or writes */
static char count_arena[64];

static void *count_alloc(size_t bytes) {
    count_held += (bytes + 63) / 64 * 64;
    if (count_held > count_peak) count_peak = count_held;
    return count_arena;
}

/* what attention keeps for its backward: the CUDA backend's flash kernels keep the logsumexp [B,H,T] for the
 * head widths they cover, the CPU backend (and the GPU's fallback) the probabilities [B,H,T,T] */
static int count_flash;

static size_t count_attention_saved(int B, int T, int H, int Dqk, int Dv) {
#define COVERS(dqk, dv) if (count_flash && Dqk == dqk && Dv == dv) return (size_t)B * H * T;
    LOOM_FLASH_SHAPES(COVERS)
#undef COVERS
    return (size_t)B * H * T * T;
}

/* frees are not needed for sizing: the plan keeps what a rank holds for the whole run */
static void count_free(void *p) { (void)p; }

/* tile: the backend's MoE block padding (the CUDA backend's on a GPU) */
static struct loom_ops counting_ops(enum loom_dtype compute, int tile) {
    struct loom_ops o;
    memset(&o, 0, sizeof o);
    o.name = "count";
    o.compute = compute;
    o.moe_tile = tile;
    o.alloc = count_alloc;
    o.free = count_free;
    o.attention_saved_floats = count_attention_saved;
    return o;
}

/* ---------------------------------------------------------------------------------------------- */
/* one pipeline stage                                                                               */

struct stage_plan {
    int layer_lo, layer_hi, slots;
    double weights, master, grads, moments, activations, other, transient, total; /* bytes */
    double act_by_recompute[3];    /* activations under none, selective, full */
    double flops_mb;               /* forward + backward FLOPs of one micro-batch (recomputation included) */
    double model_flops_mb;         /* the same without recomputation (for MFU) */
    double act_floats_mb;          /* activation floats one micro-batch touches, routed rows balanced */
    double dense_floats, expert_floats; /* this rank's gradient parts (dp and edp reductions) */
    double shard_floats;           /* optimizer share */
    int moe_layers, dense_layers;
    double t_gemm, t_mem, t_tp, t_a2a, t_a2a_hidden, t_pp, t_mb, t_dp, t_opt;
};

struct layout {
    int dp, tp, pp, ep, zero, world, nodes, gpus;
    int B, T, m;                   /* micro-batch, sequence, micro-batches per step and dp rank */
    int pipe;                      /* enum loom_pipeline_kind */
    int moe_tile;                  /* the backend's MoE block padding */
};

/* Bytes rank 0 of the stage allocates: model (weights, gradients, masters, activation slots, scratch) and
 * the optimizer moments of its shares; sets the parts in p. */
static double stage_memory(struct stage_plan *p, const struct loom_config *cfg, const struct layout *lay,
                           struct loom_stage st, int recompute) {
    struct loom_ops ops = counting_ops((enum loom_dtype)cfg->precision.compute, lay->moe_tile);
    st.recompute = recompute;
    count_held = count_peak = 0;
    struct loom_model m;
    loom_model_create_stage(&m, &ops, &cfg->model, &cfg->optim, lay->B, lay->T, &st, p->slots);
    double model_bytes = (double)count_held;
    size_t total = m.table.total;
    p->weights = p->grads = 4.0 * (double)total;
    p->master = ops.compute == LOOM_F32 ? 0 : 4.0 * (double)total;
    p->activations = (double)m.act_floats * 4.0;
    p->other = model_bytes - p->weights - p->grads - p->master - p->activations;

    /* the optimizer's shares: the arithmetic of loom_shards_init for rank 0 of each group */
    struct loom_topology topo;
    memset(&topo, 0, sizeof topo);
    topo.ep = lay->ep;
    topo.dp_comm.size = lay->dp;
    topo.edp_comm.size = lay->dp * lay->tp / lay->ep;
    struct loom_shards shards;
    loom_shards_init(&shards, &topo, &m.table, lay->zero);
    size_t before = count_held;
    double transient = 0;
    struct loom_adamw adamw[LOOM_SHARD_PARTS];
    for (int k = 0; k < LOOM_SHARD_PARTS; k++) {
        const struct loom_shard_part *sp = &shards.part[k];
        loom_adamw_init(&adamw[k], &ops, &cfg->optim, sp->lo, sp->hi);
        /* loom_grads_reduce's reduce-scatter target, for every sharded part at once */
        if (sp->sharded && sp->end > sp->begin) transient += ((sp->hi - sp->lo + 1) * 4.0 + 63) / 64 * 64;
    }
    p->moments = (double)(count_held - before);
    p->shard_floats = p->moments / 8.0;
    size_t split = lay->ep > 1 ? m.table.expert_offset : total;
    p->dense_floats = (double)split;
    p->expert_floats = (double)(total - split);
    /* a backend's weight-gradient partial of the largest matmul in the compute dtype (emulated on the CPU
     * in fp32, a GPU's work space holds it in fp32 too) */
    size_t biggest = 0;
    for (int i = 0; i < m.table.count; i++)
        if (m.table.params[i].matmul && m.table.params[i].numel > biggest) biggest = m.table.params[i].numel;
    if (ops.compute != LOOM_F32 && 4.0 * (double)biggest > transient) transient = 4.0 * (double)biggest;
    p->transient = transient;
    p->total = (double)count_held + transient;
    for (int k = 0; k < LOOM_SHARD_PARTS; k++) loom_adamw_free(&adamw[k]);
    loom_shards_free(&shards);
    loom_model_destroy(&m);
    return p->total;
}

/* The activation floats of one micro-batch for the memory-bound traffic: as allocated, but with the routed
 * rows an expert-parallel rank receives at their mean (N x top_k) rather than the worst case (ep times that)
 * the buffers are sized for; that is the size without expert parallelism. */
static void stage_traffic(struct stage_plan *p, const struct loom_config *cfg, const struct layout *lay,
                          struct loom_stage st) {
    struct loom_ops ops = counting_ops((enum loom_dtype)cfg->precision.compute, 1);
    st.ep = 1, st.ep_rank = 0, st.recompute = LOOM_RECOMPUTE_NONE;
    struct loom_model m;
    loom_model_create_stage(&m, &ops, &cfg->model, &cfg->optim, lay->B, lay->T, &st, 1);
    p->act_floats_mb = (double)m.act_floats;
    loom_model_destroy(&m);
}

/* FLOPs of one micro-batch through the stage: 6 per matmul weight per token (a token's share of the
 * routed experts), causal attention, and the forward again where recomputation repeats it. */
static void stage_flops(struct stage_plan *p, const struct loom_config *cfg, const struct layout *lay,
                        const struct loom_stage *s) {
    const struct loom_model_config *mc = &cfg->model;
    struct loom_param_table t;
    loom_params_build(&t, mc, &cfg->optim);
    loom_params_select_stage(&t, s->layer_lo, s->layer_hi, s->first, s->last, mc->tie_word_embeddings);
    double E = (double)mc->moe.experts, K = (double)mc->moe.top_k, dense = 0, experts = 0;
    for (int i = 0; i < t.count; i++) {
        const struct loom_param *q = &t.params[i];
        if (!q->matmul) continue;
        /* a tied embedding on the first stage of several is only looked up there */
        if (mc->tie_word_embeddings && !s->last && strcmp(q->name, "embed_tokens.weight") == 0) continue;
        if (q->expert >= 0) experts += (double)q->numel;
        else dense += (double)q->numel;
    }
    loom_params_free(&t);
    double N = (double)lay->B * lay->T, L = s->layer_hi - s->layer_lo;
    double matmul_fwd = 2.0 * N * (dense + (E > 0 ? experts * K / E : 0));
    double H = (double)mc->num_heads, dqk = (double)loom_model_qk_head_dim(mc), dv = (double)loom_model_v_head_dim(mc);
    /* causal: half the T x T scores; QK^T and PV */
    double attn_fwd = 2.0 * N * lay->T * H * (dqk + dv) / 2.0 * L;
    double dense_block_fwd = 0;
    for (int l = s->layer_lo; l < s->layer_hi; l++) p->moe_layers += loom_model_layer_is_moe(mc, l);
    p->dense_layers = (int)L - p->moe_layers;
    p->model_flops_mb = 3.0 * (matmul_fwd + attn_fwd) / lay->tp;
    double again = 0;
    int rc = (int)cfg->train.recompute;
    if (rc == LOOM_RECOMPUTE_SELECTIVE) {
        again = 2.0 * N * lay->T * H * dqk / 2.0 * L; /* the scores and softmax again */
    } else if (rc == LOOM_RECOMPUTE_FULL && L > 0) {
        /* dense blocks run their forward again: their share of the stage's block FLOPs */
        dense_block_fwd = (matmul_fwd + attn_fwd) * p->dense_layers / L;
        again = dense_block_fwd;
    }
    p->flops_mb = p->model_flops_mb + again / lay->tp;
}

/* ---------------------------------------------------------------------------------------------- */
/* time                                                                                             */

/* a ring all-reduce (or reduce-scatter + all-gather) of `bytes` over n ranks at bw GB/s */
static double ring_allreduce(double bytes, int n, double gbs) {
    return n > 1 ? 2.0 * (n - 1) / n * bytes / (gbs * 1e9) : 0;
}

static void stage_time(struct stage_plan *p, const struct loom_config *cfg, const struct layout *lay,
                       const struct machine *mach, double gemm_flops) {
    const struct loom_model_config *mc = &cfg->model;
    double N = (double)lay->B * lay->T, C = (double)mc->hidden_size;
    int L = p->layer_hi - p->layer_lo;
    /* which link each group crosses: ranks are tp fastest, then dp, then pp; an ep group is ep
     * consecutive ranks of a stage's dp x tp block */
    int stage_block = lay->dp * lay->tp;
    double bw_tp = lay->tp <= lay->gpus ? mach->nvlink_gbs : mach->net_gbs;
    double bw_ep = lay->ep <= lay->gpus ? mach->nvlink_gbs : mach->net_gbs;
    double bw_dp = stage_block <= lay->gpus ? mach->nvlink_gbs : mach->net_gbs;
    double bw_pp = stage_block < lay->gpus ? mach->nvlink_gbs : mach->net_gbs;
    double act_bytes = 4.0; /* loom stores activations in fp32 (rounded to the compute dtype) */

    p->t_gemm = p->flops_mb / gemm_flops;
    /* memory-bound work (norms, RoPE, SwiGLU, softmax, permutations, adds): each activation and activation
     * gradient buffer written once and read about twice */
    p->t_mem = 3.0 * p->act_floats_mb * act_bytes / (mach->hbm_gbs * 1e9);
    /* tensor parallelism: the attention and MLP outputs summed in the forward, their input gradients in the
     * backward */
    p->t_tp = 4.0 * L * ring_allreduce(N * C * act_bytes, lay->tp, bw_tp);
    /* expert parallelism: dispatch and combine, forward and backward; the rows leaving the rank */
    int sliced = lay->tp > 1 && lay->ep > 1;
    double a2a_bytes = N * mc->moe.top_k * C * act_bytes / (sliced ? lay->tp : 1) * (lay->ep - 1) / lay->ep;
    p->t_a2a = lay->ep > 1 ? 4.0 * p->moe_layers * a2a_bytes / (bw_ep * 1e9) : 0;
    /* 1F1B's steady phase runs a forward beside a backward, each hiding the other's exchanges */
    double steady = lay->pp > 1 && cfg->pipeline.overlap_moe_a2a && lay->pipe == LOOM_PIPELINE_1F1B
                        ? fmax(0.0, (double)(lay->m - lay->pp + 1)) / lay->m
                        : 0;
    p->t_a2a_hidden = steady * fmin(p->t_a2a, p->t_gemm);
    /* a stage boundary: the activations forward, their gradient back */
    p->t_pp = lay->pp > 1 ? 2.0 * N * C * act_bytes / (bw_pp * 1e9) : 0;
    p->t_mb = p->t_gemm + p->t_mem + p->t_tp + p->t_a2a - p->t_a2a_hidden + p->t_pp;
    /* after the backward: gradients summed over dp (the routed experts over edp), fp32 */
    int edp = lay->dp * lay->tp / lay->ep;
    double bw_edp = stage_block <= lay->gpus ? mach->nvlink_gbs : mach->net_gbs;
    p->t_dp = ring_allreduce(4.0 * p->dense_floats, lay->dp, bw_dp) + ring_allreduce(4.0 * p->expert_floats, edp, bw_edp);
    /* AdamW over the share: weight, gradient, two moments read and written (and the compute copy) */
    double per = cfg->precision.compute == LOOM_F32 ? 7 : 9;
    p->t_opt = p->shard_floats * per * 4.0 / (mach->hbm_gbs * 1e9);
}

/* ---------------------------------------------------------------------------------------------- */
/* output                                                                                           */

/* bytes in the unit of the table: GiB, or MiB for small models */
static double unit_bytes = 1024.0 * 1024.0 * 1024.0;
static double gib(double bytes) { return bytes / unit_bytes; }

static const struct machine *find_machine(const char *name) {
    for (size_t i = 0; i < sizeof MACHINES / sizeof MACHINES[0]; i++)
        if (strcmp(MACHINES[i].name, name) == 0) return &MACHINES[i];
    return NULL;
}

/* --opt VALUE as a positive integer */
static long positive(const char *opt, const char *v) {
    char *end;
    long x = strtol(v, &end, 10);
    if (*v == 0 || *end != 0 || x <= 0) loom_input_error(opt, USAGE, "expects a positive integer, got '%s'", v);
    return x;
}

int loom_plan_main(int argc, char **argv) {
    long nodes = 0, gpus = 0;
    double gemm_tflops = 0;
    const char *gpu = "h100";
    int json = 0;
    /* the plan's own options; the rest goes to the config loader */
    char **rest = calloc_check((size_t)argc + 1, sizeof(char *));
    int nrest = 0;
    rest[nrest++] = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(a, "--nodes") == 0 || strcmp(a, "--gpus-per-node") == 0 || strcmp(a, "--gpu") == 0 ||
            strcmp(a, "--gemm-tflops") == 0) {
            if (!has_value) loom_input_error(a, USAGE, "expects a value");
            const char *v = argv[++i];
            if (strcmp(a, "--nodes") == 0) nodes = positive(a, v);
            else if (strcmp(a, "--gpus-per-node") == 0) gpus = positive(a, v);
            else if (strcmp(a, "--gpu") == 0) gpu = v;
            else {
                char *end;
                gemm_tflops = strtod(v, &end);
                if (*v == 0 || *end != 0 || !(gemm_tflops > 0))
                    loom_input_error(a, USAGE, "expects a positive number of TFLOP/s, got '%s'", v);
            }
        } else if (strcmp(a, "--json") == 0) {
            json = 1;
        } else {
            rest[nrest++] = argv[i];
        }
    }
    if (!nodes) loom_input_error("--nodes", USAGE, "missing (the number of nodes)");
    if (!gpus) loom_input_error("--gpus-per-node", USAGE, "missing (the GPUs of each node)");
    const struct machine *mach = find_machine(gpu);
    if (!mach) loom_input_error("--gpu", "one of h100, h800, h200, a100, cpu", "unknown GPU '%s'", gpu);
    if (nodes * gpus > (1L << 24)) loom_input_error("--nodes", USAGE, "%ld GPUs is too many", nodes * gpus);

    struct loom_config cfg;
    loom_cli_load_config(&cfg, nrest, rest, USAGE, (int)(nodes * gpus));
    free(rest);
    const struct loom_parallel_config *pc = &cfg.parallel;
    struct layout lay = {.dp = (int)pc->dp, .tp = (int)pc->tp, .pp = (int)pc->pp, .ep = (int)pc->ep,
                         .zero = pc->zero, .world = (int)(nodes * gpus), .nodes = (int)nodes, .gpus = (int)gpus};
    if (lay.tp > lay.gpus)
        loom_input_error("parallel.tp", "keep tensor parallelism inside a node", "tp = %d spans nodes of %d GPUs",
                         lay.tp, lay.gpus);
    struct loom_curriculum cur;
    loom_curriculum_build(&cur, &cfg, NULL);
    lay.B = (int)(pc->micro_batches ? cfg.train.global_batch / lay.dp / pc->micro_batches : cfg.train.micro_batch);
    lay.T = (int)loom_curriculum_max_seq_len(&cur);
    lay.m = (int)(cfg.train.global_batch / lay.dp / lay.B);
    int m_max = (int)(loom_curriculum_max_batch(&cur) / lay.dp / lay.B);
    lay.pipe = cfg.pipeline.schedule == LOOM_PIPELINE_SCHEDULE_GPIPE ? LOOM_PIPELINE_GPIPE : LOOM_PIPELINE_1F1B;
    enum loom_dtype dt = (enum loom_dtype)cfg.precision.compute;
    lay.moe_tile = strcmp(mach->name, "cpu") ? LOOM_CUDA_MOE_TILE : 1;
    count_flash = strcmp(mach->name, "cpu") != 0;

    double peak = mach->dense_tflops[dt] * 1e12;
    if (!strcmp(mach->name, "cpu")) peak = (gemm_tflops > 0 ? gemm_tflops : cfg.log.peak_tflops) * 1e12;
    if (!(peak > 0)) loom_input_error("--gemm-tflops", "pass --gemm-tflops or set log.peak_tflops",
                                      "the cpu plan needs a GEMM rate");
    double gemm = gemm_tflops > 0 ? gemm_tflops * 1e12 : strcmp(mach->name, "cpu") ? peak * GEMM_EFFICIENCY : peak;

    struct stage_plan *sp = calloc_check((size_t)lay.pp, sizeof *sp);
    int worst_mem = 0, slowest = 0;
    for (int s = 0; s < lay.pp; s++) {
        struct loom_stage st;
        loom_pipeline_stage(&st, (int)cfg.model.num_layers, lay.pp, s, pc->stage_layers);
        st.tp = lay.tp, st.tp_rank = 0, st.ep = lay.ep, st.ep_rank = 0;
        struct stage_plan *p = &sp[s];
        p->layer_lo = st.layer_lo, p->layer_hi = st.layer_hi;
        p->slots = loom_pipeline_slots((enum loom_pipeline_kind)lay.pipe, s, lay.pp, m_max);
        for (int r = 0; r < 3; r++) {
            struct stage_plan tmp = *p;
            stage_memory(&tmp, &cfg, &lay, st, r);
            p->act_by_recompute[r] = tmp.activations;
        }
        stage_memory(p, &cfg, &lay, st, (int)cfg.train.recompute);
        stage_traffic(p, &cfg, &lay, st);
        stage_flops(p, &cfg, &lay, &st);
        stage_time(p, &cfg, &lay, mach, gemm);
        if (p->total > sp[worst_mem].total) worst_mem = s;
        if (p->t_mb > sp[slowest].t_mb) slowest = s;
    }
    /* the step: m micro-batches through p stages paced by the slowest, then the reductions and AdamW */
    double bubble = (double)(lay.pp - 1) / (lay.m + lay.pp - 1);
    double t_pipe = (lay.m + lay.pp - 1) * sp[slowest].t_mb;
    double t_after = 0;
    for (int s = 0; s < lay.pp; s++) t_after = fmax(t_after, sp[s].t_dp + sp[s].t_opt);
    double step = t_pipe + t_after;
    double tokens_step = (double)cfg.train.global_batch * cfg.train.seq_len;
    struct loom_model_counts counts;
    struct loom_param_table whole;
    loom_params_build(&whole, &cfg.model, &cfg.optim);
    loom_model_count(&counts, &whole, &cfg.model, cfg.train.seq_len);
    loom_params_free(&whole);
    double tok_s = tokens_step / step;
    double mfu = counts.flops_per_token * tok_s / (lay.world * peak);
    double gpu_hours_t = lay.world * 1e12 / tok_s / 3600.0;
    double cap = mach->mem_gib * 1024.0 * 1024.0 * 1024.0;
    int fits = !cap || sp[worst_mem].total <= cap;

    if (json) {
        printf("{\"gpu\": \"%s\", \"world\": %d, \"dp\": %d, \"tp\": %d, \"pp\": %d, \"ep\": %d, \"zero\": %d, "
               "\"micro_batch\": %d, \"seq_len\": %d, \"micro_batches\": %d, \"stages\": [",
               mach->name, lay.world, lay.dp, lay.tp, lay.pp, lay.ep, lay.zero, lay.B, lay.T, lay.m);
        for (int s = 0; s < lay.pp; s++) {
            const struct stage_plan *p = &sp[s];
            printf("%s{\"layers\": [%d, %d], \"slots\": %d, \"weights\": %.0f, \"master\": %.0f, \"grads\": %.0f, "
                   "\"moments\": %.0f, \"activations\": %.0f, \"activations_none\": %.0f, "
                   "\"activations_selective\": %.0f, \"activations_full\": %.0f, \"other\": %.0f, "
                   "\"transient\": %.0f, \"total\": %.0f, \"micro_batch_s\": %.6g}",
                   s ? ", " : "", p->layer_lo, p->layer_hi, p->slots, p->weights, p->master, p->grads, p->moments,
                   p->activations, p->act_by_recompute[0], p->act_by_recompute[1], p->act_by_recompute[2], p->other,
                   p->transient, p->total, p->t_mb);
        }
        printf("], \"peak_bytes\": %.0f, \"fits\": %s, \"step_s\": %.6g, \"tokens_per_s\": %.6g, \"mfu\": %.6g, "
               "\"bubble\": %.6g, \"gpu_hours_per_trillion_tokens\": %.6g}\n",
               sp[worst_mem].total, fits ? "true" : "false", step, tok_s, mfu, bubble, gpu_hours_t);
    } else {
        printf("# loom plan: %s, %ld nodes x %ld GPUs (%s)\n", cfg.model.moe.experts ? "MoE" : "dense", nodes, gpus,
               mach->source);
        printf("layout       dp %d x tp %d x pp %d, ep %d%s; micro-batch %d x %d tokens, %d micro-batches per step "
               "and dp rank (%s)\n", lay.dp, lay.tp, lay.pp, lay.ep, lay.zero ? ", ZeRO-1" : "", lay.B, lay.T, lay.m,
               lay.pipe == LOOM_PIPELINE_GPIPE ? "GPipe" : "1F1B");
        printf("model        %.3f B parameters, %.3f B active, %.4g FLOPs/token, compute %s\n",
               counts.total_params / 1e9, counts.active_params / 1e9, counts.flops_per_token, loom_dtype_name(dt));
        if (sp[worst_mem].total < unit_bytes) unit_bytes = 1024.0 * 1024.0;
        const char *unit = unit_bytes > 1024.0 * 1024.0 ? "GiB" : "MiB";
        printf("\n# memory per GPU (%s; loom's own allocations, rank 0 of each stage; activations kept in fp32)\n", unit);
        printf("%-6s %-8s %5s %8s %8s %8s %8s %9s %9s %9s %8s %8s %8s\n", "stage", "layers", "slots", "weights",
               "master", "grads", "AdamW", "act none", "act sel", "act full", "other", "transnt", "total");
        for (int s = 0; s < lay.pp; s++) {
            const struct stage_plan *p = &sp[s];
            char layers[32];
            snprintf(layers, sizeof layers, "%d-%d", p->layer_lo, p->layer_hi - 1);
            printf("%-6d %-8s %5d %8.2f %8.2f %8.2f %8.2f %9.2f %9.2f %9.2f %8.2f %8.2f %8.2f\n", s, layers, p->slots,
                   gib(p->weights), gib(p->master), gib(p->grads), gib(p->moments), gib(p->act_by_recompute[0]),
                   gib(p->act_by_recompute[1]), gib(p->act_by_recompute[2]), gib(p->other), gib(p->transient),
                   gib(p->total));
        }
        printf("peak         %.2f %s on stage %d with train.recompute = %s; %s has %.0f GiB: %s\n",
               gib(sp[worst_mem].total), unit, worst_mem, loom_config_choice("train", "recompute", cfg.train.recompute),
               mach->name, mach->mem_gib, !cap ? "no limit" : fits ? "fits" : "DOES NOT FIT");
        printf("\n# time per step (model: GEMMs at %.3g TFLOP/s = %s, HBM %.0f GB/s, NVLink %.0f GB/s, network "
               "%.0f GB/s per GPU)\n", gemm / 1e12,
               gemm_tflops > 0 ? "--gemm-tflops" : strcmp(mach->name, "cpu") ? "0.75 x datasheet [assumed]"
                                                                            : "log.peak_tflops",
               mach->hbm_gbs, mach->nvlink_gbs, mach->net_gbs);
        printf("%-6s %10s %10s %10s %10s %10s %10s %10s %10s\n", "stage", "GEMM ms", "memory ms", "tp ms", "a2a ms",
               "a2a hid", "p2p ms", "mb ms", "dp+opt ms");
        for (int s = 0; s < lay.pp; s++) {
            const struct stage_plan *p = &sp[s];
            printf("%-6d %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f\n", s, p->t_gemm * 1e3,
                   p->t_mem * 1e3, p->t_tp * 1e3, p->t_a2a * 1e3, p->t_a2a_hidden * 1e3, p->t_pp * 1e3, p->t_mb * 1e3,
                   (p->t_dp + p->t_opt) * 1e3);
        }
        printf("pipeline     (m + p - 1) x %.2f ms = %.3f s; bubble (p-1)/(m+p-1) = %.3f\n", sp[slowest].t_mb * 1e3,
               t_pipe, bubble);
        printf("step         %.3f s for %.4g tokens: %.4g tokens/s (%.4g per GPU)\n", step, tokens_step, tok_s,
               tok_s / lay.world);
        printf("MFU          %.1f%% of the %s %.3g TFLOP/s\n", 100 * mfu, strcmp(mach->name, "cpu") ? "datasheet" : "given", peak / 1e12);
        printf("cost         %.4g GPU-hours per trillion tokens\n", gpu_hours_t);
    }
    free(sp);
    loom_config_free(&cfg);
    return 0;
}
