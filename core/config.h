/*
 * core/config.h — the resolved run configuration.
 *
 * INI files (libinih) with `include = other.ini`, then `--section.key=value` overrides. Every key is
 * declared once, in the table of core/config_keys.c, with its type, default and meaning; the parser,
 * the printer and the documentation all read that table. Integers take decimal suffixes K M B T
 * (11T = 11e12). Unknown sections and keys are input errors with a did-you-mean hint. Cross-key
 * consistency is checked once, by loom_config_validate().
 */
#ifndef LOOM_CORE_CONFIG_H
#define LOOM_CORE_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------- */
/* enums: the order of each matches the `choices` string of its key                                */

enum loom_attention { LOOM_ATTENTION_MLA, LOOM_ATTENTION_MHA };                /* "mla|mha" */
enum loom_rope_style { LOOM_ROPE_INTERLEAVED, LOOM_ROPE_HALF };               /* "interleaved|half" */
enum loom_schedule_kind {                                                      /* "constant|cosine|linear|wsd" */
    LOOM_SCHEDULE_CONSTANT, LOOM_SCHEDULE_COSINE, LOOM_SCHEDULE_LINEAR, LOOM_SCHEDULE_WSD
};
enum loom_data_kind { LOOM_DATA_SHARDS, LOOM_DATA_RANDOM };                    /* "shards|random" */
enum loom_device { LOOM_DEVICE_AUTO, LOOM_DEVICE_CPU, LOOM_DEVICE_CUDA };       /* "auto|cpu|cuda" */
enum loom_loss_mask { LOOM_LOSS_MASK_ALL, LOOM_LOSS_MASK_ASSISTANT };          /* "all|assistant" */
enum loom_pipeline { LOOM_PIPELINE_SCHEDULE_1F1B, LOOM_PIPELINE_SCHEDULE_GPIPE }; /* "1f1b|gpipe" */
enum loom_moe_score { LOOM_MOE_SIGMOID, LOOM_MOE_SOFTMAX };                    /* "sigmoid|softmax" */

enum { LOOM_MAX_SOURCES = 32, LOOM_MAX_PHASES = 16, LOOM_SECTION_NAME_MAX = 48 };

/* ---------------------------------------------------------------------------------------------- */

/* [moe]: the dots.llm1 / DeepSeek-V3 mixture-of-experts MLP */
struct loom_moe_config {
    int64_t experts;               /* routed experts per MoE layer; 0 = dense model */
    int64_t top_k;                 /* routed experts per token */
    int64_t shared;                /* shared experts, run as one SwiGLU of width shared x intermediate */
    int64_t intermediate;          /* width of one expert */
    int64_t first_dense;           /* the first layers keep the dense MLP */
    double scaling;                /* routed_scaling_factor on the routed weights */
    int norm_topk;                 /* normalise the top-k weights to sum 1 before scaling */
    int score;                     /* enum loom_moe_score */
    int64_t groups, topk_groups;   /* group-limited routing (DeepSeek-V3); 1, 1 = off */
    double bias_update_rate;       /* aux-loss-free balancing: b_i += rate * sign(mean load - load_i) */
    double balance_alpha;          /* sequence-wise balance loss weight */
};

struct loom_model_config {
    int attention;                 /* enum loom_attention */
    int64_t vocab_size;
    int64_t hidden_size;           /* C */
    int64_t num_layers;            /* L */
    int64_t num_heads;             /* NH */
    int64_t num_kv_heads;          /* MHA/GQA only; 0 = num_heads */
    int64_t head_dim;              /* MHA q/k head width; 0 = hidden_size / num_heads */
    int64_t v_head_dim;            /* value head width; 0 = head_dim (MHA) */
    int64_t q_lora_rank;           /* MLA: query latent width; 0 = no query compression */
    int64_t kv_lora_rank;          /* MLA: key/value latent width */
    int64_t qk_nope_head_dim;      /* MLA: per-head q/k width without RoPE */
    int64_t qk_rope_head_dim;      /* MLA: per-head q/k width with RoPE (one shared rope key) */
    int64_t intermediate_size;     /* SwiGLU width */
    double rope_theta;
    int rope_style;                /* enum loom_rope_style */
    double rms_norm_eps;
    int tie_word_embeddings;
    int qk_norm;                   /* MHA: RMSNorm over head_dim on q and k before RoPE */
    double init_std;
    double embed_init_std;         /* 0 = init_std */
    struct loom_moe_config moe;    /* the [moe] section */
};

/* [source.NAME]: one stream of training data */
struct loom_source_config {
    char name[LOOM_SECTION_NAME_MAX]; /* first: the instance name of a named section */
    char *shards;                  /* comma-separated shard files, folders of *.tok, or globs */
    char *heldout;                 /* held-out shards for [eval], same forms */
    int loss_mask;                 /* enum loom_loss_mask: which tokens count in the loss */
    int64_t tokens;                /* size declared for `loom data plan` without the shards; 0 = count them */
};

/* [phase.NAME]: one stage of the curriculum, ending at `until` tokens */
struct loom_phase_config {
    char name[LOOM_SECTION_NAME_MAX];
    int64_t until;                 /* the phase ends once this many tokens are consumed (last: run end) */
    char *weights;                 /* "source:weight, ..." (normalised; unnamed sources weigh 0) */
    int64_t ramp;                  /* blend linearly from the previous phase over this many tokens; 0 = step */
    int64_t seq_len;               /* 0 = train.seq_len */
    double rope_theta;             /* 0 = model.rope_theta */
};

struct loom_curriculum_config {
    char *phases;                  /* phase names in order; empty = one phase over every source */
    double max_epochs;             /* `loom data plan` warns above this many passes over a source */
};

struct loom_eval_config {
    int64_t every;                 /* held-out loss per source every N steps; 0 = off */
    int64_t sequences;             /* held-out sequences per source per evaluation */
};

struct loom_train_config {
    int64_t steps;
    int64_t seed;
    int64_t seq_len;               /* T */
    int64_t micro_batch;           /* sequences per forward/backward on one rank */
    int64_t global_batch;          /* sequences per optimizer step */
    char *run_dir;
    int64_t threads;               /* OpenMP threads; 0 = all cores */
    int device;                    /* enum loom_device: auto, cpu, cuda */
    int recompute;                 /* enum loom_recompute (model/model.h): none, selective, full */
    char *batch_schedule;          /* "TOKENS:SEQUENCES, ...": global batch from that token count on */
    int64_t stop_after;            /* stop after this step as a pre-empted job would (0 = run to steps) */
    int64_t max_nonfinite_steps;   /* stop after this many consecutive steps with non-finite gradients */
};

struct loom_optim_config {
    double beta1, beta2, eps;
    double weight_decay;
    int decay_norms;               /* apply weight decay to norm weights */
    int decay_embeddings;          /* apply weight decay to the embedding (and a tied head) */
    double grad_clip;              /* global-norm clip; 0 = off */
};

struct loom_schedule_config {
    int kind;                      /* enum loom_schedule_kind */
    double lr;                     /* peak learning rate */
    double min_lr;                 /* floor for cosine / linear */
    int64_t warmup_tokens;
    int64_t decay_tokens;          /* cosine / linear: length of the decay after warmup; 0 = rest of run */
    int64_t anneal_start;          /* wsd: token count where the first annealing segment begins */
    char *anneal;                  /* wsd: "TOKENS:LR[:linear|cosine], ..." segments, in order */
};

struct loom_data_config {
    int kind;                      /* enum loom_data_kind */
    char *train;                   /* comma-separated shard files or directories of *.tok */
};

struct loom_parallel_config {
    int64_t dp, tp, pp, ep;        /* world = dp x tp x pp; ep divides dp x tp */
    int64_t micro_batches;         /* per step and dp rank; 0 = global_batch / (dp x train.micro_batch) */
    int zero;                      /* 1: ZeRO-1, optimizer state sharded over dp */
    char *stage_layers;            /* layers per pipeline stage "3,3,2"; empty = even */
};

struct loom_pipeline_config {
    int schedule;                  /* enum loom_pipeline */
    int overlap_moe_a2a;           /* 1F1B steady phase: one micro-batch's forward and another's backward
                                    * take turns block by block, each hiding the other's all-to-alls */
};

struct loom_log_config {
    int64_t every;                 /* progress line every N steps */
    double peak_tflops;            /* for MFU; 0 = measure a GEMM at start */
    char *dump_grads;              /* debugging: reduced gradients after step 1 to PREFIX.rankR.bin */
    char *dump_logits;             /* studies: after every step, the logits of a fixed probe batch to a file */
};

struct loom_precision_config {
    int compute;                   /* enum loom_dtype: fp32, bf16, fp16 (emulated on the CPU backend) */
    double loss_scale;             /* > 0: a static scale; 0: dynamic with fp16, 1 otherwise */
    double initial_scale, growth_factor, backoff_factor, min_scale;
    int64_t growth_interval;       /* clean steps before the dynamic scale grows */
};

struct loom_checkpoint_config {
    int64_t every;                 /* write a checkpoint every N steps; 0 = only at the end (see final) */
    int64_t every_tokens;          /* and every N tokens; 0 = off */
    double every_minutes;          /* and every M minutes of wall time; 0 = off */
    char *dir;                     /* where; empty = RUN_DIR/checkpoints */
    int64_t keep;                  /* keep the last K; older ones are deleted (releases stay) */
    int64_t release_every;         /* tokens: the first checkpoint past each multiple is kept for good */
    char *resume;                  /* "" = start fresh, "auto" = DIR/latest when present, else a checkpoint */
    char *init_from;               /* a checkpoint whose weights start a new run (fresh optimizer and data) */
    int final;                     /* write one when the run ends */
};

struct loom_config {
    struct loom_model_config model;
    struct loom_train_config train;
    struct loom_optim_config optim;
    struct loom_schedule_config schedule;
    struct loom_data_config data;
    struct loom_log_config log;
    struct loom_parallel_config parallel;
    struct loom_pipeline_config pipeline;
    struct loom_curriculum_config curriculum;
    struct loom_eval_config eval;
    struct loom_checkpoint_config checkpoint;
    struct loom_precision_config precision;
    int nsources;
    struct loom_source_config sources[LOOM_MAX_SOURCES];
    int nphases;
    struct loom_phase_config phases[LOOM_MAX_PHASES];
};

/* ---------------------------------------------------------------------------------------------- */
/* the key table                                                                                    */

enum loom_key_type { LOOM_KEY_INT, LOOM_KEY_FLOAT, LOOM_KEY_BOOL, LOOM_KEY_STRING, LOOM_KEY_ENUM };

struct loom_key {
    const char *section;           /* for a named section ([source.NAME]) the prefix, "source" */
    const char *name;
    enum loom_key_type type;
    size_t offset;                 /* into struct loom_config */
    const char *def;               /* default, as it would be written in a file */
    const char *choices;           /* LOOM_KEY_ENUM: "a|b|c" in enum order; else NULL */
    const char *meaning;
    int named;                     /* the key of a named section: offset is into its element struct */
};

extern const struct loom_key loom_config_keys[];
extern const size_t loom_config_nkeys;

/* Named sections: [PREFIX.NAME] instances live in an array of struct loom_config, in file order. */
struct loom_named_section {
    const char *prefix;
    size_t array_offset, count_offset, elem_size;
    int max;
};
extern const struct loom_named_section loom_config_named[];
extern const size_t loom_config_nnamed;

/* ---------------------------------------------------------------------------------------------- */

/* Defaults for every key. */
void loom_config_init(struct loom_config *cfg);
void loom_config_free(struct loom_config *cfg);

/* Parse FILE (following includes) on top of what cfg holds. Errors exit 2 naming file and line. */
void loom_config_load(struct loom_config *cfg, const char *path);
/* Parse INI text (used for configs stored in files such as reference dumps); name appears in errors. */
void loom_config_load_string(struct loom_config *cfg, const char *text, const char *name);
/* Apply one "--section.key=value" (leading dashes optional). Errors exit 2 naming the option. */
void loom_config_set_arg(struct loom_config *cfg, const char *arg);
/* Set section.key from its text form; `where` names the origin in error messages. */
void loom_config_set(struct loom_config *cfg, const char *section, const char *name,
                     const char *value, const char *where);

/* Parse an integer with optional K M B T decimal suffix ("11T", "1.5B", "4096"). 0 on success. */
int loom_parse_count(const char *text, int64_t *out);

/* Write the resolved config as INI text that loom_config_load reads back to the same values. */
void loom_config_write(FILE *f, const struct loom_config *cfg);
/* The same text in a malloc'd string. */
char *loom_config_to_string(const struct loom_config *cfg);

/* Cross-key checks, done once before anything is allocated. Exits 2 on the first problem. world: the
 * number of ranks started (the layout must fill it first of all), or 0 when not launched to train. */
void loom_config_validate(const struct loom_config *cfg, int world);

/* Name of enum value v of key section.name (for printing). */
const char *loom_config_choice(const char *section, const char *name, int v);

#ifdef __cplusplus
}
#endif
#endif
