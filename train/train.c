/*
 * train/train.c — `loom train -c FILE [--section.key=value ...]`: the training loop.
 *
 * Each step fills the global batch with micro-batches (gradient accumulation), averages the loss
 * over every token of the global batch, clips by global norm, and takes one AdamW step with the
 * learning rate of the schedule at the tokens consumed. Rank 0 prints the progress line and
 * appends one JSON object per step to RUN/metrics.jsonl (DESIGN.md section 9); the resolved config
 * is saved as RUN/config.ini. Same seed and config give bit-identical losses.
 */
#include <errno.h>
#include <signal.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>
#include <mpi.h>
#include <omp.h>

#include "checkpoints/ckpt.h"
#include "core/config.h"
#include "core/error.h"
#include "data/curriculum.h"
#include "data/prefetch.h"
#include "data/sampler.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "parallel/comm.h"
#include "parallel/grads.h"
#include "parallel/pipeline.h"
#include "parallel/topology.h"
#include "train/cli.h"
#include "train/report.h"
#ifdef LOOM_CUDA
#include "model/cuda/ops_cuda.h"
#endif

static const char *USAGE = "[mpirun -np N] loom train -c CONFIG [--section.key=value ...]";

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------------------------------------- */
/* run folder                                                                                       */

/* Creates the run folder and its parents, and checks it can be written: 0, or the errno of the first
 * failure, with a one-line account of it in why. */
static int make_dirs(const char *path, char *why, size_t size) {
    char buf[4096];
    int len = snprintf(buf, sizeof buf, "%s", path);
    if (len <= 0 || len >= (int)sizeof buf) {
        snprintf(why, size, "path too long");
        return ENAMETOOLONG;
    }
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p) continue;
        char c = *p;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
            int err = errno;
            snprintf(why, size, "cannot create %s (%s)", buf, strerror(err));
            return err;
        }
        if (!c) break;
        *p = c;
    }
    if (access(buf, W_OK) != 0) {
        int err = errno;
        snprintf(why, size, "%s is not writable (%s)", buf, strerror(err));
        return err;
    }
    return 0;
}

static FILE *open_in_run(const char *run_dir, const char *name, const char *mode) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", run_dir, name);
    return fopen_check(path, mode);
}

/* A test hook: LOOM_TEST_INJECT_NONFINITE=STEP:RANK[:nan] puts an inf (or a nan) into one gradient
 * element of world rank RANK after the backward of step STEP (1-based), so tests can force an overflow. */
static void inject_nonfinite(struct loom_model *m, int64_t step, int rank) {
    const char *spec = getenv("LOOM_TEST_INJECT_NONFINITE");
    long long at = 0;
    int who = -1;
    char kind[8] = "inf";
    if (!spec || sscanf(spec, "%lld:%d:%7s", &at, &who, kind) < 2 || at != step + 1 || who != rank) return;
    float bad = strcmp(kind, "nan") == 0 ? NAN : INFINITY;
    m->ops->from_host(m->grads + m->table.total / 2, &bad, sizeof bad);
}

/* log.dump_logits: the logits of a fixed probe batch (step 1's first micro-batch) after every step,
 * appended to a float32 file [steps][B*T][V], for precision studies. The probe forward must not move the
 * MoE loads or balance loss of training, so they are kept aside around it. */
static void dump_probe_logits(struct loom_model *m, const char *path, const int *ids, const int *targets, int T,
                              int append) {
    size_t N = (size_t)m->B * T, V = (size_t)m->cfg.vocab_size, E = (size_t)m->cfg.moe.experts;
    size_t nload = (size_t)m->moe_layers * E;
    int64_t *loads = malloc_check(sizeof(int64_t) * (nload + 1));
    memcpy(loads, m->expert_load, sizeof(int64_t) * nload);
    double balance = m->balance;
    loom_model_whole_logits(m);
    loom_model_use_slot(m, 0);
    loom_model_set_shape(m, T, m->cfg.rope_theta);
    loom_model_forward(m, ids, targets, 0.0f, NULL, NULL);
    float *host = malloc_check(sizeof(float) * N * V);
    m->ops->to_host(host, m->slots[0].logits, sizeof(float) * N * V);
    FILE *f = fopen_check(path, append ? "ab" : "wb");
    CHECK(fwrite(host, sizeof(float), N * V, f) == N * V && fclose(f) == 0, "writing %s", path);
    memcpy(m->expert_load, loads, sizeof(int64_t) * nload);
    m->balance = balance;
    free(loads);
    free(host);
}

/* LOOM_COMM (for tests and debugging): the path of the collectives of a CUDA run. Unset: NCCL when every rank
 * has a GPU of its own and there are several ranks, else MPI through host memory; mpi or nccl forces one. Rank
 * 0's value, the same on every rank. */
enum comm_path { COMM_AUTO, COMM_MPI, COMM_NCCL, COMM_BAD };

static int comm_path_asked(int rank) {
    const char *v = getenv("LOOM_COMM");
    int path = COMM_AUTO;
    if (rank == 0 && v && v[0]) path = strcmp(v, "mpi") == 0 ? COMM_MPI : strcmp(v, "nccl") == 0 ? COMM_NCCL : COMM_BAD;
    MPI_CHECK(MPI_Bcast(&path, 1, MPI_INT, 0, MPI_COMM_WORLD));
    if (path == COMM_BAD)
        loom_input_error("LOOM_COMM", "set LOOM_COMM to mpi or nccl, or leave it unset",
                         "'%s' is not a path for the collectives (mpi or nccl)", v ? v : "");
    return path;
}

#ifdef LOOM_CUDA
/* The collectives of a CUDA run (several ranks, or LOOM_COMM=nccl): NCCL when every rank of every node has a
 * GPU of its own (NCCL refuses two ranks on one GPU), else MPI on host copies of the device buffers. node_ranks
 * and gpus: this rank's node's. Rank 0 says which path and why. */
static void select_comm(const struct loom_ops *ops, struct loom_topology *topo, int path, int node_ranks,
                        int gpus) {
    int shared = node_ranks > gpus;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &shared, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
    char sharing[128];
    if (node_ranks > gpus)
        snprintf(sharing, sizeof sharing, "%d ranks share %d GPU%s on rank 0's node", node_ranks, gpus,
                 gpus == 1 ? "" : "s");
    else
        snprintf(sharing, sizeof sharing, "ranks share a GPU on another node");
    if (path == COMM_NCCL && shared)
        loom_input_error("LOOM_COMM", "run at most one rank per GPU, or leave LOOM_COMM unset to stage the "
                         "collectives through host memory", "nccl, but %s, and NCCL needs a GPU per rank", sharing);
    if (path == COMM_NCCL || (path == COMM_AUTO && !shared && topo->world > 1)) {
        loom_topology_use_nccl(topo, loom_cuda_stream());
        if (topo->rank == 0 && path == COMM_NCCL) printf("loom: collectives on NCCL (LOOM_COMM=nccl)\n");
        else if (topo->rank == 0)
            printf("loom: collectives on NCCL: every rank has a GPU of its own (%d rank%s, %d GPU%s on rank 0's "
                   "node)\n", node_ranks, node_ranks == 1 ? "" : "s", gpus, gpus == 1 ? "" : "s");
    } else if (topo->world > 1) {
        loom_comm_stage_through_host(ops);
        if (topo->rank == 0 && path == COMM_MPI)
            printf("loom: collectives on MPI through host memory (LOOM_COMM=mpi)\n");
        else if (topo->rank == 0)
            printf("loom: collectives on MPI through host memory: %s, and NCCL needs a GPU per rank\n", sharing);
    }
}
#endif

/* The backend train.device asks for: the CUDA one when this build has it and a GPU is visible (auto), else
 * the CPU one; the compute dtype emulated on the CPU, native on the GPU. With CUDA, also the path of the
 * collectives (select_comm). */
static int default_threads(void);

static const struct loom_ops *select_backend(const struct loom_config *cfg, struct loom_topology *topo) {
    enum loom_dtype dt = (enum loom_dtype)cfg->precision.compute;
    int want = cfg->train.device;
    int path = comm_path_asked(topo->rank);
#ifdef LOOM_CUDA
    int gpus = loom_cuda_devices();
    if (want == LOOM_DEVICE_CUDA && gpus == 0)
        loom_input_error("train.device", "use train.device = cpu (or auto)", "cuda, but no CUDA device is visible");
    if (want == LOOM_DEVICE_CUDA || (want == LOOM_DEVICE_AUTO && gpus > 0)) {
        /* the ranks of a node take its GPUs in turn (several ranks may share one) */
        MPI_Comm node;
        int local = 0, node_ranks = 1;
        MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
        MPI_CHECK(MPI_Comm_rank(node, &local));
        MPI_CHECK(MPI_Comm_size(node, &node_ranks));
        MPI_Comm_free(&node);
        const struct loom_ops *ops = loom_ops_cuda(local % gpus, dt);
        CHECK(ops != NULL, "the CUDA backend could not start on device %d", local % gpus);
        select_comm(ops, topo, path, node_ranks, gpus);
        return ops;
    }
#else
    if (want == LOOM_DEVICE_CUDA)
        loom_input_error("train.device", "rebuild with the CUDA toolkit on the PATH (make finds nvcc), or use cpu",
                         "cuda, but this build has no CUDA backend");
#endif
    if (path == COMM_NCCL)
        loom_input_error("LOOM_COMM", "leave LOOM_COMM unset (the CPU backend's collectives are MPI), or train on GPUs",
                         "nccl needs the CUDA backend, and this run is on the CPU");
    return loom_ops_cpu_mixed(loom_ops_cpu((int)(cfg->train.threads ? cfg->train.threads : default_threads())), dt);
}

/* SIGTERM / SIGINT (a Slurm pre-emption, Ctrl-C): noted here, acted on at the next step boundary */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig) { stop_signal = sig; }

static void catch_stop_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

/* a number for JSON: null when it is not finite (a diverged step) */
static const char *json_number(char buf[32], double x) {
    if (isfinite(x)) snprintf(buf, 32, "%.9g", x);
    else snprintf(buf, 32, "null");
    return buf;
}

/* A resumed run continues metrics.jsonl from the checkpoint's step: lines of later steps (written
 * after that checkpoint by the run that stopped) are dropped, through a rename. */
static FILE *metrics_resume(const char *run_dir, int64_t step) {
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *in = fopen(path, "r");
    if (in) {
        FILE *out = fopen_check(tmp, "w");
        char *line = NULL;
        size_t cap = 0;
        while (getline(&line, &cap, in) > 0) {
            long long k = 0;
            if (sscanf(line, "{\"step\": %lld", &k) == 1 && k <= step) fputs(line, out);
        }
        free(line);
        fclose(in);
        CHECK(fclose(out) == 0 && rename(tmp, path) == 0, "rewriting %s", path);
    }
    return fopen_check(path, "a");
}

/* ---------------------------------------------------------------------------------------------- */
/* MFU: the peak is configured, or measured once as the rate of a large fp32 GEMM                   */

static double measure_peak_flops(void) {
    enum { S = 1024, REPS = 4 };
    float *a = calloc_check((size_t)S * S, sizeof(float));
    float *b = calloc_check((size_t)S * S, sizeof(float));
    float *c = calloc_check((size_t)S * S, sizeof(float));
    for (size_t i = 0; i < (size_t)S * S; i++) a[i] = b[i] = (float)(i % 7) * 0.1f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, S, S, 1.0f, a, S, b, S, 0.0f, c, S);
    double t0 = now_s();
    for (int r = 0; r < REPS; r++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, S, S, 1.0f, a, S, b, S, 0.0f, c, S);
    double dt = now_s() - t0;
    free(a);
    free(b);
    free(c);
    return 2.0 * S * S * (double)S * REPS / dt;
}

/* ---------------------------------------------------------------------------------------------- */
/* progress                                                                                         */

struct step_times {
    double data, compute, bubble, comm, optimizer, checkpoint, total;
};

/* per-source training loss: the last stage adds each micro-batch's token losses to its rows' sources */
struct source_tally {
    const struct loom_batch *batch;
    int B, T;
    double *sum;
    int *count;
};

static void source_tally_add(void *ctx, int micro, const float *token_losses) {
    struct source_tally *x = ctx;
    size_t N = (size_t)x->B * x->T;
    for (int b = 0; b < x->B; b++) {
        int s = x->batch->src[micro * x->B + b];
        if (s < 0) continue;
        for (int t = 0; t < x->T; t++) {
            if (x->batch->targets[micro * N + (size_t)b * x->T + t] < 0) continue;
            x->sum[s] += token_losses[(size_t)b * x->T + t];
            x->count[s]++;
        }
    }
}


/* Every core, shared among the ranks that run on this node. */
static int default_threads(void) {
    MPI_Comm node;
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
    int local = 1;
    MPI_Comm_size(node, &local);
    MPI_Comm_free(&node);
    int n = omp_get_num_procs() / local;
    return n > 0 ? n : 1;
}



/* ---------------------------------------------------------------------------------------------- */



/* ---------------------------------------------------------------------------------------------- */

int loom_train_main(int argc, char **argv) {
    MPI_CHECK(MPI_Init(&argc, &argv));
    int rank = 0, world = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    loom_error_set_rank(rank, world);
    loom_error_set_collective(1);

    struct loom_config cfg;
    loom_cli_load_config(&cfg, argc, argv, USAGE, world);
    const struct loom_parallel_config *pc = &cfg.parallel;
    struct loom_topology topo;
    loom_topology_init(&topo, MPI_COMM_WORLD, (int)pc->dp, (int)pc->tp, (int)pc->pp, (int)pc->ep);
    if (rank == 0) loom_topology_print(&topo, stdout);
    const struct loom_train_config *tc = &cfg.train;
    const struct loom_ops *ops = select_backend(&cfg, &topo);
    /* a test hook: LOOM_COMM_STAGE=1 runs every collective through host copies, the fallback for ranks that
     * share a GPU, on the CPU backend, so its paths are checked where no GPU is */
    const char *stage_hook = getenv("LOOM_COMM_STAGE");
    if (stage_hook && strcmp(stage_hook, "1") == 0) loom_comm_stage_through_host(ops);

    /* data first: a bad shard should fail before anything big is allocated */
    loom_error_set_collective(0);
    struct loom_sampler sampler, heldout;
    loom_sampler_open(&sampler, &cfg, 0);
    int64_t sizes[LOOM_MAX_SOURCES];
    loom_sampler_sizes(&sampler, sizes);
    int do_eval = cfg.eval.every > 0 && !sampler.random;
    if (do_eval) loom_sampler_open(&heldout, &cfg, 1);
    loom_error_set_collective(1);
    struct loom_curriculum cur;
    loom_curriculum_build(&cur, &cfg, sampler.random ? NULL : sizes);
    if (!sampler.random) loom_curriculum_check_sizes(&cur, sizes);
    int64_t total_tokens = loom_run_tokens(&cur, tc->steps);
    int dp = topo.dp;
    int B = (int)(pc->micro_batches ? tc->global_batch / dp / pc->micro_batches : tc->micro_batch);
    int T_max = (int)loom_curriculum_max_seq_len(&cur);

    /* a checkpoint to resume from (checkpoint.resume), else maybe weights to start from (init_from) */
    char resume_path[4400] = "";
    int resuming = loom_ckpt_resume_path(&cfg, resume_path, sizeof resume_path);
    const char *init_from = !resuming && cfg.checkpoint.init_from[0] ? cfg.checkpoint.init_from : NULL;

    /* the run folder belongs to rank 0; its verdicts (not writable, an existing run) are shared so every rank
     * stops */
    char existing[4096], why[4400] = "";
    snprintf(existing, sizeof existing, "%s/metrics.jsonl", tc->run_dir);
    int exists = 0;
    if (rank == 0 && !make_dirs(tc->run_dir, why, sizeof why)) exists = access(existing, F_OK) == 0;
    MPI_CHECK(MPI_Bcast(&exists, 1, MPI_INT, 0, MPI_COMM_WORLD));
    MPI_CHECK(MPI_Bcast(why, (int)sizeof why, MPI_CHAR, 0, MPI_COMM_WORLD));
    if (why[0]) loom_input_error("train.run_dir", "choose a --train.run_dir this process can write", "%s", why);
    if (exists && !resuming)
        loom_input_error("train.run_dir", "choose another --train.run_dir, remove the old run, or resume it with "
                         "--checkpoint.resume=auto",
                         "%s already holds a run (%s exists)", tc->run_dir, existing);
    FILE *metrics = NULL;

    struct loom_model model;
    struct loom_stage stage;
    loom_pipeline_stage(&stage, (int)cfg.model.num_layers, topo.pp, topo.pp_rank, pc->stage_layers);
    stage.tp = topo.tp;
    stage.tp_rank = topo.tp_rank;
    stage.ep = topo.ep;
    stage.ep_rank = topo.ep_rank;
    stage.recompute = tc->recompute;
    enum loom_pipeline_kind pipe = cfg.pipeline.schedule == LOOM_PIPELINE_SCHEDULE_GPIPE ? LOOM_PIPELINE_GPIPE
                                                                                 : LOOM_PIPELINE_1F1B;
    int m_max = (int)(loom_curriculum_max_batch(&cur) / dp / B);
    loom_model_create_stage(&model, ops, &cfg.model, &cfg.optim, B, T_max, &stage,
                            loom_pipeline_slots(pipe, topo.pp_rank, topo.pp, m_max));
    model.comm = loom_model_comm_over(&topo);
    /* a tied embedding lives on the first and the last stage: its gradient is summed over both, and
     * counted once in the norm; a replicated tensor is counted on tp rank 0 only, and so are the routed
     * experts unless expert parallelism spreads them over the tp ranks (see loom_grads_reduce) */
    const struct loom_param *tied_embed = NULL;
    unsigned char *counted_param = malloc_check((size_t)model.table.count);
    for (int i = 0; i < model.table.count; i++) {
        enum loom_shard_style s = model.table.params[i].shard;
        counted_param[i] = (s != LOOM_SHARD_REPLICATED && s != LOOM_SHARD_EXPERT) || topo.tp_rank == 0 ||
                           (s == LOOM_SHARD_EXPERT && topo.ep > 1);
    }
    if (topo.pp > 1 && cfg.model.tie_word_embeddings && (stage.first || stage.last)) {
        int e = loom_params_find(&model.table, "embed_tokens.weight");
        if (stage.last) counted_param[e] = 0;
        tied_embed = &model.table.params[e];
    }
    loom_model_init_params(&model, (uint64_t)tc->seed);
    /* the optimizer of each part of the buffer (dense, routed experts), over this rank's share under ZeRO-1 */
    struct loom_shards shards;
    loom_shards_init(&shards, &topo, &model.table, pc->zero);
    struct loom_adamw adamw[LOOM_SHARD_PARTS];
    for (int k = 0; k < LOOM_SHARD_PARTS; k++)
        loom_adamw_init(&adamw[k], ops, &cfg.optim, shards.part[k].lo, shards.part[k].hi);

    /* checkpoints: resume everything, or start from a checkpoint's weights */
    struct loom_sampler_state ckpt_sampler = sampler.state;
    struct loom_ckpt_state ckpt = {.cfg = &cfg, .topo = &topo, .model = &model, .shards = &shards, .adamw = adamw,
                                   .sampler = &ckpt_sampler, .streams = &sampler};
    struct loom_ckpt_meta meta = {0};
    int64_t start_step = 0, tokens = 0;
    /* loss scaling: dynamic with fp16 unless a static scale is set; the schedule advances by the tokens of
     * the steps actually taken (a skipped step leaves it, the weights and the moments as they were) */
    const struct loom_precision_config *prec = &cfg.precision;
    int dynamic_scale = prec->compute == LOOM_F16 && prec->loss_scale == 0;
    double scale = prec->loss_scale > 0 ? prec->loss_scale : dynamic_scale ? prec->initial_scale : 1.0;
    int64_t scale_good = 0, sched_tokens = 0, skipped_steps = 0, nonfinite_streak = 0;
    if (resuming || init_from) {
        double tl = now_s();
        loom_ckpt_load(&ckpt, resuming ? resume_path : init_from, !resuming, &meta);
        if (resuming) {
            start_step = meta.step;
            tokens = meta.tokens;
            sched_tokens = meta.schedule_tokens;
            skipped_steps = meta.skipped_steps;
            if (dynamic_scale) scale = meta.loss_scale, scale_good = meta.scale_good_steps;
            sampler.state = ckpt_sampler;
            if (start_step > tc->steps)
                loom_input_error("train.steps", "raise train.steps to train further",
                                 "the checkpoint %s is at step %lld, past train.steps = %lld", resume_path,
                                 (long long)start_step, (long long)tc->steps);
        }
        if (rank == 0)
            printf("loom train: %s %s (step %lld, %lld tokens) in %.2f s\n", resuming ? "resumed from" : "weights from",
                   resuming ? resume_path : init_from, (long long)meta.step, (long long)meta.tokens, now_s() - tl);
        if (resuming && meta.seed != tc->seed && rank == 0)
            printf("loom train: note: the checkpoint was written with train.seed = %lld, this run has %lld\n",
                   (long long)meta.seed, (long long)tc->seed);
    }
    /* the run folder's files only once the checkpoint has been read: a bad one leaves them as they were */
    if (rank == 0) {
        FILE *f = open_in_run(tc->run_dir, "config.ini", "w");
        loom_config_write(f, &cfg);
        CHECK(fclose(f) == 0, "writing %s/config.ini failed", tc->run_dir);
        metrics = resuming ? metrics_resume(tc->run_dir, start_step) : open_in_run(tc->run_dir, "metrics.jsonl", "w");
    }
    int64_t ckpt_every = cfg.checkpoint.every, ckpt_tokens = cfg.checkpoint.every_tokens, last_ckpt_tokens = tokens;
    double ckpt_minutes = cfg.checkpoint.every_minutes, last_ckpt_time = now_s();
    catch_stop_signals();
    struct loom_schedule sched;
    loom_schedule_init(&sched, &cfg.schedule, total_tokens);

    struct loom_model_counts counts;
    struct loom_param_table whole;
    loom_params_build(&whole, &cfg.model, &cfg.optim);
    loom_model_count(&counts, &whole, &cfg.model, tc->seq_len);
    loom_params_free(&whole);
    double peak = cfg.log.peak_tflops > 0 ? cfg.log.peak_tflops * 1e12 : measure_peak_flops();

    if (rank == 0) {
        printf("loom train: %s attention, %lld layers, %.2fM parameters, %.3g FLOPs/token\n",
               loom_config_choice("model", "attention", cfg.model.attention), (long long)cfg.model.num_layers,
               counts.total_params / 1e6, counts.flops_per_token);
        printf("loom train: %lld steps, %lld tokens, micro-batches of %d, %d source%s, %d phase%s, run folder %s\n",
               (long long)tc->steps, (long long)total_tokens, B, sampler.nstreams, sampler.nstreams == 1 ? "" : "s",
               cur.nphases, cur.nphases == 1 ? "" : "s", tc->run_dir);
        printf("loom train: MFU against %.3g TFLOP/s (%s)\n", peak / 1e12,
               cfg.log.peak_tflops > 0 ? "log.peak_tflops" : "measured fp32 GEMM");
    }
    fflush(stdout);

    float *token_losses = malloc_check(sizeof(float) * (size_t)B * T_max);
    int *eval_inputs = malloc_check(sizeof(int) * (size_t)B * T_max);
    int *eval_targets = malloc_check(sizeof(int) * (size_t)B * T_max);
    int E_moe = (int)cfg.model.moe.experts, moe_total = 0;
    for (int l = 0; l < cfg.model.num_layers; l++) moe_total += loom_model_layer_is_moe(&cfg.model, l);
    double *moe_loads = calloc_check((size_t)(moe_total * E_moe + 1), sizeof(double));
    double *moe_bias = calloc_check((size_t)(moe_total * E_moe + 1), sizeof(double));
    int *probe_ids = malloc_check(sizeof(int) * (size_t)B * T_max), *probe_targets = malloc_check(sizeof(int) * (size_t)B * T_max);
    int probe_T = 0;
    struct loom_prefetch *prefetch = loom_prefetch_start(&sampler, &cur, start_step, tc->steps, topo.dp_rank, dp);
    double run_start = now_s();
    /* from here on an error is one rank's own (a shard that turns out damaged, a failed call): that rank
     * reports it and aborts the others, which may be waiting for it in a collective */
    loom_error_set_collective(0);

    for (int64_t step = start_step; step < tc->steps; step++) {
        struct step_times tm = {0};
        loom_test_die_step(step + 1);
        double t0 = now_s();
        const struct loom_batch *batch = loom_prefetch_next(prefetch);
        int T = (int)batch->T, accum = (int)(batch->rows / B);
        int64_t step_tokens = batch->batch * batch->T;
        loom_model_set_shape(&model, T, batch->rope_theta);

        /* the loss is a mean over every counted token of the global batch */
        long counted = 0;
        for (size_t i = 0; i < (size_t)batch->rows * T; i++) counted += batch->targets[i] >= 0;
        loom_allreduce_long(&topo.dp_comm, &counted, 1);
        double t1 = now_s();
        tm.data = t1 - t0;

        loom_model_zero_grads(&model);
        model.balance = 0;
        /* the balance loss's gradient carries the loss scale like the cross-entropy's (dloss) */
        model.bal_scale = (float)(cfg.model.moe.balance_alpha / (double)batch->batch * scale);
        double src_sum[LOOM_MAX_SOURCES] = {0}, src_loss[LOOM_MAX_SOURCES];
        int src_count[LOOM_MAX_SOURCES] = {0};
        float dloss = counted ? (float)(scale / (double)counted) : 0.0f;
        struct source_tally tally = {.batch = batch, .B = B, .T = T, .sum = src_sum, .count = src_count};
        struct loom_pipeline_stats ps;
        loom_pipeline_train(&model, &topo, pipe, accum, batch->inputs, batch->targets, dloss, token_losses,
                            source_tally_add, &tally, cfg.pipeline.overlap_moe_a2a, &ps);
        inject_nonfinite(&model, step, rank);
        double loss_sum = ps.loss_sum;
        tm.compute = ps.compute;
        tm.bubble = ps.blocked;
        double tc0 = now_s();
        if (tied_embed) {
            struct loom_comm_handle h;
            loom_allreduce_start(&topo.embed_comm, model.grads + tied_embed->offset, tied_embed->numel, &h);
            loom_comm_wait(&h);
        }
        for (int i = 0; i < model.table.count; i++) {
            const struct loom_param *p = &model.table.params[i];
            if (p->tp_sum_grad) model.comm.sum(model.comm.ctx, model.grads + p->offset, p->numel);
        }
        double gsq = loom_grads_reduce(&model, ops, &topo, &shards, counted_param);
        loom_allreduce_double(&topo.pp_comm, &gsq, 1);
        loom_allreduce_double(&topo.tp_comm, &gsq, 1);
        if (step == 0 && cfg.log.dump_grads[0]) loom_grads_dump(&model, cfg.log.dump_grads, rank, &shards);
        loom_allreduce_double(&topo.dp_comm, &loss_sum, 1);
        loom_allreduce_double(&topo.dp_comm, src_sum, LOOM_MAX_SOURCES);
        long src_n[LOOM_MAX_SOURCES];
        for (int s = 0; s < LOOM_MAX_SOURCES; s++) src_n[s] = src_count[s];
        loom_allreduce_long(&topo.dp_comm, src_n, LOOM_MAX_SOURCES);
        loom_allreduce_double(&topo.pp_comm, &loss_sum, 1);
        loom_allreduce_double(&topo.pp_comm, src_sum, LOOM_MAX_SOURCES);
        loom_allreduce_long(&topo.pp_comm, src_n, LOOM_MAX_SOURCES);
        tm.comm = now_s() - tc0;
        double loss = counted ? loss_sum / counted : 0.0;
        for (int s = 0; s < sampler.nstreams; s++) src_loss[s] = src_n[s] ? src_sum[s] / src_n[s] : 0.0;

        double t2 = now_s();
        /* the gradients carry the loss scale; an inf or nan anywhere made the global sum of squares so */
        int nonfinite = !isfinite(gsq);
        double gnorm = sqrt(gsq) / scale, step_scale = scale;
        double lr = loom_schedule_lr(&sched, sched_tokens + step_tokens);
        int skipped = nonfinite || counted == 0;
        double balance = model.balance / scale;
        loom_allreduce_double(&topo.dp_comm, &balance, 1);
        loom_allreduce_double(&topo.pp_comm, &balance, 1);
        /* expert loads over the global batch; each stage reports its MoE blocks into the whole model's rows */
        if (moe_total) {
            loom_allreduce_long(&topo.dp_comm, (long *)model.expert_load, model.moe_layers * E_moe);
            loom_moe_rows_fill(&model, moe_loads, NULL, stage.layer_lo, (int)cfg.model.moe.first_dense);
        }
        if (!skipped) {
            for (int k = 0; k < LOOM_SHARD_PARTS; k++)
                loom_adamw_step(&adamw[k], &model.table, model.master, model.grads, lr,
                                loom_clip_factor(gnorm, cfg.optim.grad_clip) / scale);
            loom_shards_gather(&shards, model.master);
            loom_model_sync_weights(&model);
            if (model.moe_layers) loom_model_update_router_bias(&model);
            sched_tokens += step_tokens;
        } else {
            skipped_steps++;
            if (model.moe_layers) memset(model.expert_load, 0, sizeof(int64_t) * (size_t)model.moe_layers * E_moe);
        }
        nonfinite_streak = nonfinite ? nonfinite_streak + 1 : 0;
        if (dynamic_scale) {
            if (nonfinite) {
                scale = fmax(scale * prec->backoff_factor, prec->min_scale);
                scale_good = 0;
            } else if (++scale_good >= prec->growth_interval) {
                scale *= prec->growth_factor;
                scale_good = 0;
            }
        }
        if (moe_total) {
            loom_moe_rows_fill(&model, NULL, moe_bias, stage.layer_lo, (int)cfg.model.moe.first_dense);
            loom_allreduce_double(&topo.pp_comm, moe_loads, moe_total * E_moe);
            loom_allreduce_double(&topo.pp_comm, moe_bias, moe_total * E_moe);
        }
        tokens += step_tokens;
        double t3 = now_s();
        tm.optimizer = t3 - t2;
        if (cfg.log.dump_logits[0]) {
            if (step == start_step) {
                probe_T = T;
                memcpy(probe_ids, batch->inputs, sizeof(int) * (size_t)B * T);
                memcpy(probe_targets, batch->targets, sizeof(int) * (size_t)B * T);
            }
            dump_probe_logits(&model, cfg.log.dump_logits, probe_ids, probe_targets, probe_T, step > start_step);
        }

        /* a checkpoint every N steps, every N tokens, and at the end when either is set; none after a step
         * whose gradients were not finite (the last good checkpoint stays latest) */
        /* a stop signal on any rank, and the wall-clock interval, decided alike on every rank */
        int due[2] = {stop_signal != 0, ckpt_minutes > 0 && now_s() - last_ckpt_time >= 60 * ckpt_minutes};
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, due, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
        int ckpt_on = ckpt_every > 0 || ckpt_tokens > 0 || ckpt_minutes > 0, written = 0;
        if (!nonfinite && (due[0] || due[1] || (ckpt_every > 0 && (step + 1) % ckpt_every == 0) ||
                           (ckpt_tokens > 0 && tokens / ckpt_tokens > (tokens - step_tokens) / ckpt_tokens) ||
                           (ckpt_on && cfg.checkpoint.final && step + 1 == tc->steps) ||
                           (ckpt_on && step + 1 == tc->stop_after))) {
            struct loom_ckpt_meta now = {.step = step + 1, .tokens = tokens, .samples = batch->after.sample,
                                         .seed = tc->seed, .loss_scale = scale, .scale_good_steps = scale_good,
                                         .schedule_tokens = sched_tokens, .skipped_steps = skipped_steps};
            ckpt_sampler = batch->after;
            written = loom_ckpt_save(&ckpt, &now, last_ckpt_tokens, &tm.checkpoint);
            last_ckpt_tokens = tokens;
            last_ckpt_time = now_s();
        }
        tm.total = now_s() - t0;

        struct loom_eval_result ev = {0};
        int eval_now = do_eval && ((step + 1) % cfg.eval.every == 0 || step + 1 == tc->steps);
        if (eval_now) loom_evaluate(&model, &topo, &heldout, &cfg, T, eval_inputs, eval_targets, &ev);

        double a2a_hidden, a2a = loom_ep_exchange_seconds(&a2a_hidden);
        double tok_s = step_tokens / tm.total;
        /* the pipeline bubble: time this step's stages sat waiting, as a fraction of the compute window
         * (forward, backward and the waits between them), averaged over the stages */
        double bubble_frac = tm.compute + tm.bubble > 0 ? tm.bubble / (tm.compute + tm.bubble) : 0;
        loom_allreduce_double(&topo.pp_comm, &bubble_frac, 1);
        bubble_frac /= topo.pp;
        double mfu = counts.flops_per_token * tok_s / (peak * world);
        /* the memory each rank has held at most (backend memory: the GPU's on the CUDA backend) */
        long *mem_peak = calloc_check((size_t)world, sizeof(long));
        mem_peak[rank] = (long)ops->peak_bytes();
        loom_allreduce_long(&topo.world_comm, mem_peak, world);
        if (rank == 0) {
            char jloss[32], jnorm[32];
            fprintf(metrics,
                    "{\"step\": %lld, \"tokens\": %lld, \"loss\": %s, \"lr\": %.9g, \"grad_norm\": %s, "
                    "\"tok_per_s\": %.6g, \"mfu\": %.6g, \"loss_scale\": %.9g, \"skipped\": %s, \"skipped_steps\": %lld, "
                    "\"phase\": \"%s\", "
                    "\"seq_len\": %d, \"batch\": %lld",
                    (long long)(step + 1), (long long)tokens, json_number(jloss, loss), lr, json_number(jnorm, gnorm), tok_s,
                    mfu, step_scale,
                    skipped ? "true" : "false", (long long)skipped_steps,
                    cur.phases[batch->phase].name, T, (long long)batch->batch);
            if (moe_total) loom_moe_metrics(metrics, balance, moe_loads, moe_bias, moe_total, E_moe);
            if (sampler.nstreams) {
                loom_json_source_map(metrics, "weights", &sampler, batch->weights, NULL);
                int present[LOOM_MAX_SOURCES];
                for (int i = 0; i < sampler.nstreams; i++) present[i] = src_n[i] > 0;
                loom_json_source_map(metrics, "source_loss", &sampler, src_loss, present);
            }
            if (ev.n) {
                double v[LOOM_MAX_SOURCES] = {0};
                int present[LOOM_MAX_SOURCES] = {0};
                for (int i = 0; i < ev.n; i++) v[ev.source[i]] = ev.loss[i], present[ev.source[i]] = 1;
                loom_json_source_map(metrics, "eval", &sampler, v, present);
            }
            fprintf(metrics,
                    ", \"time\": {\"compute\": %.6g, \"comm_exposed\": %.6g, \"bubble\": %.6g, "
                    "\"optimizer\": %.6g, \"data\": %.6g, \"checkpoint\": %.6g, \"step\": %.6g, \"a2a_exposed\": %.6g, "
                    "\"a2a_hidden\": %.6g}, "
                    "\"bubble_fraction\": %.6g, \"bubble_ideal\": %.6g, \"mem_peak_mb\": [",
                    tm.compute, tm.comm, tm.bubble, tm.optimizer, tm.data, tm.checkpoint, tm.total, a2a, a2a_hidden,
                    bubble_frac,
                    (double)(topo.pp - 1) / (accum + topo.pp - 1));
            for (int r = 0; r < world; r++) fprintf(metrics, "%s%.1f", r ? ", " : "", mem_peak[r] / 1e6);
            fprintf(metrics, "]}\n");
            CHECK(fflush(metrics) == 0, "writing %s/metrics.jsonl: %s", tc->run_dir, strerror(errno));
            if ((step + 1) % cfg.log.every == 0 || step == start_step || step + 1 == tc->steps) {
                char eta[32], rate[32], phase[512];
                double elapsed = now_s() - run_start;
                loom_format_eta(eta, sizeof eta, elapsed / (step + 1 - start_step) * (tc->steps - step - 1));
                loom_format_rate(rate, sizeof rate, tok_s);
                loom_format_phase(phase, sizeof phase, &cur, &sampler, batch);
                char bubble[64] = "", experts[96] = "";
                if (moe_total) {
                    double mx = 0;
                    for (int k = 0; k < moe_total; k++) mx = fmax(mx, loom_load_ratio(moe_loads + (size_t)k * E_moe, E_moe, 1));
                    snprintf(experts, sizeof experts, " | experts max/mean %.2f bal %.2e", mx, balance);
                }
                if (topo.pp > 1)
                    snprintf(bubble, sizeof bubble, " | bubble %.1f%% (ideal %.1f%%)", 100 * bubble_frac,
                             100.0 * (topo.pp - 1) / (accum + topo.pp - 1));
                char skip[64] = "";
                if (skipped_steps) snprintf(skip, sizeof skip, " (%lld skipped)", (long long)skipped_steps);
                printf("step %6lld/%lld | loss %.4f | lr %.3e | gnorm %.3f | %s tok/s | mfu %.1f%% | scale %g%s | "
                       "phase %s%s%s | eta %s\n",
                       (long long)(step + 1), (long long)tc->steps, loss, lr, gnorm, rate, 100 * mfu, step_scale, skip,
                       phase, experts, bubble, eta);
            }
            if (ev.n) {
                printf("eval %6lld/%lld", (long long)(step + 1), (long long)tc->steps);
                for (int i = 0; i < ev.n; i++)
                    printf(" | %s %.4f", sampler.streams[ev.source[i]].source->name, ev.loss[i]);
                printf("\n");
            }
            fflush(stdout);
        }
        free(mem_peak);
        if (tc->max_nonfinite_steps > 0 && nonfinite_streak >= tc->max_nonfinite_steps) {
            /* every rank saw the same global sum of squares, so every rank stops here */
            if (rank == 0) {
                fprintf(stderr, "loom: error: training stopped at step %lld: %lld consecutive steps with non-finite "
                                "gradients (train.max_nonfinite_steps = %lld); no checkpoint was written for them\n",
                        (long long)(step + 1), (long long)nonfinite_streak, (long long)tc->max_nonfinite_steps);
                fprintf(stderr, "hint: lower the learning rate, or resume from the last good checkpoint "
                                "(checkpoint.resume = auto)\n");
            }
            if (metrics) fclose(metrics);
            loom_prefetch_stop(prefetch);
            MPI_Barrier(MPI_COMM_WORLD);
            MPI_Finalize();
            exit(1);
        }
        if (due[0] && step + 1 < tc->steps) {
            if (rank == 0)
                printf("loom train: stopped by a signal after step %lld%s; resume with --checkpoint.resume=auto\n",
                       (long long)(step + 1), nonfinite ? " (no checkpoint: the step was not finite)"
                                              : written ? ", checkpoint written" : " (no checkpoint: it was skipped)");
            break;
        }
        if (step + 1 == tc->stop_after && step + 1 < tc->steps) {
            if (rank == 0) printf("loom train: stopping after step %lld (train.stop_after)\n", (long long)(step + 1));
            break;
        }
    }
    if (stage_hook && strcmp(stage_hook, "1") == 0) {
        long staged = loom_comm_staged_buffers();
        loom_allreduce_long(&topo.world_comm, &staged, 1);
        if (rank == 0) printf("loom train: %ld buffers staged through host memory (LOOM_COMM_STAGE)\n", staged);
    }
    if (rank == 0) printf("loom train: done, %lld tokens in %.1f s; metrics in %s/metrics.jsonl\n",
                          (long long)tokens, now_s() - run_start, tc->run_dir);

    if (metrics) CHECK(fclose(metrics) == 0, "writing metrics failed");
    loom_prefetch_stop(prefetch);
    free(token_losses);
    free(probe_ids);
    free(probe_targets);
    free(moe_loads);
    free(moe_bias);
    free(eval_inputs);
    free(eval_targets);
    for (int k = 0; k < LOOM_SHARD_PARTS; k++) loom_adamw_free(&adamw[k]);
    loom_shards_free(&shards);
    free(counted_param);
    loom_model_destroy(&model);
    if (do_eval) loom_sampler_close(&heldout);
    loom_sampler_close(&sampler);
    loom_config_free(&cfg);
    loom_topology_free(&topo);
    MPI_Finalize();
    return 0;
}
