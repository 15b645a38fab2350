/*
 * model/params.h — the parameter table.
 *
 * One table of named tensors drives everything about the parameters: their place in the one flat
 * allocation (params and grads share the layout), initialisation, checkpoint names, how each is
 * sharded under tensor parallelism, whether weight decay applies, and which count as matmul FLOPs.
 * Names follow the Hugging Face checkpoints of the two reference models.
 */
#ifndef LOOM_MODEL_PARAMS_H
#define LOOM_MODEL_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

enum loom_shard_style {
    LOOM_SHARD_REPLICATED, /* every tp rank holds it whole; its gradient is reduced over tp */
    LOOM_SHARD_COLUMN,     /* output rows split over tp (q/k/v, q_b, kv_b, gate, up) */
    LOOM_SHARD_ROW,        /* input columns split over tp (o, down) */
    LOOM_SHARD_VOCAB,      /* vocabulary rows split over tp (embedding, LM head) */
    LOOM_SHARD_EXPERT,     /* one routed expert's weights: experts split over ep */
};

enum loom_init { LOOM_INIT_NORMAL, LOOM_INIT_ONES };

enum { LOOM_PARAM_NAME_MAX = 96 };

struct loom_param {
    char name[LOOM_PARAM_NAME_MAX];
    int index;                     /* in the full model's table: names its init stream, whatever the layout */
    int layer;                     /* transformer block, or -1 (embedding, final norm, head) */
    int expert;                    /* routed expert of an MoE layer, or -1 */
    struct loom_shape shape;       /* the whole tensor: [rows, cols], or [n] for vectors */
    struct loom_shape local;       /* the part this rank holds (tensor parallelism), rows row0.., cols col0.. */
    int64_t row0, col0;
    size_t offset;                 /* in floats, into the flat buffer */
    size_t numel;                  /* of the local part */
    int tp_sum_grad;               /* replicated, but each tp rank sees only its heads: sum the gradient over tp */
    enum loom_init init;
    float init_std;
    enum loom_shard_style shard;
    int decay;                     /* AdamW weight decay applies */
    int matmul;                    /* used as a matmul weight per token (FLOPs); the tied embedding counts once */
};

struct loom_param_table {
    struct loom_param *params;
    int count;
    size_t total;                  /* floats */
    size_t expert_offset;          /* with expert parallelism the routed experts' tensors come last, from
                                    * here to total (their gradients are reduced over another group) */
    int *index;                    /* open-addressing hash of the names (a 142B model has ~24k tensors) */
    int index_cap;
};

void loom_params_build(struct loom_param_table *t, const struct loom_model_config *m,
                       const struct loom_optim_config *o);
void loom_params_free(struct loom_param_table *t);
/* Keeps only what pipeline stage [layer_lo, layer_hi) holds: its blocks, the embedding on the first
 * stage, the final norm and head on the last (a tied head keeps the embedding there too), and lays the
 * flat buffer out again. */
void loom_params_select_stage(struct loom_param_table *t, int layer_lo, int layer_hi, int first, int last, int tied);

/* Keeps tensor-parallel rank tp_rank's part of every tensor: column tensors their rows, row tensors
 * their columns, vocabulary tensors their vocabulary rows, each 1/tp; replicated tensors whole. */
void loom_params_shard_tp(struct loom_param_table *t, int tp_rank, int tp);

/* Keeps expert-parallel rank ep_rank's routed experts (experts / ep of each MoE block, contiguous),
 * and lays the buffer out with every routed expert's tensor after all the others. */
void loom_params_shard_ep(struct loom_param_table *t, int ep_rank, int ep, int experts);

/* Index of the named parameter, or -1. */
int loom_params_find(const struct loom_param_table *t, const char *name);
/* Initialise every parameter in host memory (params: t->total floats): element (r, c) of a tensor is
 * drawn from (seed, parameter index, r * cols + c), so any shard holds the values of the whole. */
void loom_params_init(const struct loom_param_table *t, float *params, uint64_t seed);

const char *loom_shard_style_name(enum loom_shard_style s);

/* Counts for `loom info` and MFU. */
struct loom_model_counts {
    int64_t total_params;          /* every parameter (tied embedding once) */
    int64_t active_params;         /* parameters used per token: all but the routed experts a token skips */
    int64_t matmul_params;         /* weights of per-token matmuls, LM head included, embedding lookup excluded */
    double flops_per_token;        /* 6 * matmul_params + 6 * L * T * H * (d_qk + d_v) / 2 */
};
void loom_model_count(struct loom_model_counts *c, const struct loom_param_table *t,
                      const struct loom_model_config *m, int64_t seq_len);

/* Whether block l has the MoE MLP. */
int loom_model_layer_is_moe(const struct loom_model_config *m, int l);

/* Derived head widths. */
int64_t loom_model_qk_head_dim(const struct loom_model_config *m);
int64_t loom_model_v_head_dim(const struct loom_model_config *m);
int64_t loom_model_kv_heads(const struct loom_model_config *m);

#ifdef __cplusplus
}
#endif
#endif
