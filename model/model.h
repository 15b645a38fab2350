/*
 * model/model.h — a dense decoder-only transformer (MLA or MHA/GQA attention, SwiGLU MLP, pre-norm
 * RMSNorm, RoPE, tied or untied LM head) over one backend.
 *
 * The model owns its parameters, gradients (same layout, see params.h) and the activations of one
 * micro-batch of B sequences of T tokens. loom_model_forward runs the micro-batch through to the
 * loss and, when asked, leaves d(loss)/d(logits) ready; loom_model_backward then accumulates every
 * parameter gradient (+=), so several micro-batches add up before one optimizer step.
 */
#ifndef LOOM_MODEL_MODEL_H
#define LOOM_MODEL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "model/ops.h"
#include "model/params.h"

#ifdef __cplusplus
extern "C" {
#endif

struct loom_layer_acts;

/* The slice of the model one pipeline stage runs: blocks [layer_lo, layer_hi), the embedding on the
 * first stage, the final norm, head and loss on the last. */
struct loom_stage {
    int layer_lo, layer_hi;
    int first, last;
    int tp, tp_rank;               /* tensor parallelism: this rank's share of heads, FFN and vocabulary (0 = 1) */
    int ep, ep_rank;               /* expert parallelism: this rank runs experts / ep of each MoE block (0 = 1) */
    int recompute;                 /* enum loom_recompute: activations recomputed in the backward */
};

/* Activation recomputation: none; selective (attention's saved buffer — the probabilities, the largest
 * activation, or under flash attention the logsumexp — is kept for no layer and recomputed from q, k, v before
 * each attention backward: Megatron's selective recompute); full (a dense block keeps only its input, the residual stream, and runs its forward again
 * before its backward; MoE blocks keep their activations). Gradients are bit-identical either way. */
enum loom_recompute { LOOM_RECOMPUTE_NONE, LOOM_RECOMPUTE_SELECTIVE, LOOM_RECOMPUTE_FULL };

/* The collectives a tensor-parallel model needs, over its tp group (set by the parallel layer, so the
 * model itself stays free of any communication library). */
struct loom_model_comm {
    void (*sum)(void *ctx, float *buf, size_t n);   /* all-reduce sum, in place */
    void (*max)(void *ctx, float *buf, size_t n);   /* all-reduce max, in place */
    void *ctx;
    /* over the ep group, started now and completed by alltoallv_wait: rank r is sent
     * send[sdispls[r] ..+ scounts[r]) and rcounts[r] floats arrive from it */
    void *(*alltoallv_start)(void *ep_ctx, const float *send, const int *scounts, const int *sdispls, float *recv,
                             const int *rcounts, const int *rdispls);
    void (*alltoallv_wait)(void *request);
    /* over the ep group: n ints to each rank, n from each */
    void (*alltoall_int)(void *ep_ctx, const int *send, int *recv, int n);
    void *ep_ctx;
};

/* The activations of one micro-batch in flight (a pipeline stage keeps several). */
struct loom_slot {
    int *inputs, *targets;         /* [B*T] backend memory */
    struct loom_layer_acts *acts;  /* per block of the stage */
    float *res;                    /* residual stream at each block boundary, [(nl+1), N, C]; [0] = stage input */
    float *lnf, *rstdf;            /* last stage: final norm output [N,C], its rstd [N] */
    float *logits;                 /* last stage: the model's logits buffer (shared by the slots, see head_rows) */
    float *dlnf;                   /* last stage: d(loss)/d(lnf) [N,C], formed by a forward with grad */
    float *losses;                 /* last stage: [N] */
    float *dout;                   /* not last: d(loss)/d(stage output) [N,C], received from the next stage */
    float *rowmax, *sumexp, *tlogit; /* last stage with tp > 1: vocabulary-parallel loss statistics [N] */
};

struct loom_model {
    const struct loom_ops *ops;
    struct loom_model_config cfg; /* this rank's share: heads, kv heads, FFN width, vocabulary divided by tp */
    struct loom_stage stage;
    struct loom_model_comm comm;   /* tp > 1 only */
    struct loom_param_table table; /* this stage's parameters */
    float *params;                 /* backend memory, table.total floats: the weights the model computes with */
    float *master;                 /* the fp32 master weights the optimizer updates: params itself in fp32,
                                    * else apart, params then holding their compute-dtype copy */
    float *grads;                  /* same layout */
    int B, T;                      /* current micro-batch shape */
    int T_max;                     /* the activations are sized for B x T_max */
    int nslots;
    struct loom_slot *slots;
    struct loom_layer_acts *shared_acts; /* buffers every layer and slot shares under recomputation */
    struct loom_slot *cur;         /* the slot forward and backward work on */
    float *scratch;                /* backward work space; after a backward of a stage that is not the
                                    * first, it begins with d(loss)/d(stage input) [N,C] */
    size_t scratch_floats;
    size_t act_floats;             /* activation memory in floats, all slots (for reports) */
    /* The head takes the final norm's rows head_rows at a time: their logits [head_rows, V] in one buffer
     * all slots share, the loss, and with grad at once the head's weight gradient and d(lnf), so no slot
     * keeps [N, V] logits. All N rows when N x V is small (or after loom_model_whole_logits). */
    float *logits;
    int head_rows;
    /* mixture of experts: per MoE block of the stage (in block order), E entries each */
    int moe_layers;
    float *router_bias;            /* host: the score-correction bias (a buffer: no gradient) */
    int64_t *expert_load;          /* host: tokens sent to each expert since the last bias update */
    double balance;                /* sum of the balance losses of the forwards since it was zeroed */
    float bal_scale;               /* balance_alpha / sequences in the global batch */
};

/* Build the table, allocate params/grads/activations on the backend. Parameters are zero until
 * loom_model_init_params or loom_model_set_params. */
void loom_model_create(struct loom_model *m, const struct loom_ops *ops, const struct loom_model_config *cfg,
                       const struct loom_optim_config *optim, int B, int T);
/* The same for one pipeline stage with `slots` micro-batches in flight. */
void loom_model_create_stage(struct loom_model *m, const struct loom_ops *ops, const struct loom_model_config *cfg,
                             const struct loom_optim_config *optim, int B, int T, const struct loom_stage *stage,
                             int slots);
/* Forward and backward work on slot k from now on. */
void loom_model_use_slot(struct loom_model *m, int k);
/* Stage boundaries of the current slot, [B*T, C]: the input a stage that is not first receives, its
 * output, d(loss)/d(output) it receives, and after its backward d(loss)/d(input) to send back. */
float *loom_model_stage_input(struct loom_model *m);
float *loom_model_stage_output(struct loom_model *m);
float *loom_model_stage_output_grad(struct loom_model *m);
float *loom_model_stage_input_grad(struct loom_model *m);
void loom_model_destroy(struct loom_model *m);
/* Floats of saved activations for a micro-batch of B x T (what loom_model_create allocates on the CPU backend;
 * on the CUDA backend flash attention keeps [B,H,T] per layer instead of the probabilities [B,H,T,T]). */
size_t loom_model_activation_floats(const struct loom_model_config *cfg, int B, int T);

void loom_model_init_params(struct loom_model *m, uint64_t seed);
/* Copy all parameters from / to host memory laid out as the table says. */
void loom_model_set_params(struct loom_model *m, const float *host);
void loom_model_get_params(const struct loom_model *m, float *host);
/* After the masters changed (optimizer step, checkpoint load): refresh the compute copy. */
void loom_model_sync_weights(struct loom_model *m);
void loom_model_get_grads(const struct loom_model *m, float *host);
void loom_model_zero_grads(struct loom_model *m);

/* Aux-loss-free balancing after an optimizer step: each MoE block's bias moves by the rate toward
 * even load (loads already summed over the data-parallel ranks), then the loads restart. */
void loom_model_update_router_bias(struct loom_model *m);

/* The head takes all rows at once from now on, so a forward without grad leaves every row's logits in
 * m->logits (for studies of the logits; costs [B*T, V] floats). */
void loom_model_whole_logits(struct loom_model *m);

/* Sequences of T tokens from now on (T <= the T the model was created with); RoPE base theta. */
void loom_model_set_shape(struct loom_model *m, int T, double rope_theta);

/* Forward over host ids/targets [B*T] (target < 0: not in the loss). Returns the sum of the token
 * losses in double; *count (may be NULL) gets the number of counted tokens and token_losses (may be
 * NULL) each token's loss. When dloss > 0 (training), each token's loss weighted by dloss (1 / tokens in
 * the global batch, for a mean over it), the forward also adds the head's weight gradient and leaves
 * d(loss)/d(lnf) in the slot for the backward. Without grad, the logits buffer holds the last rows' logits:
 * every row's when the head took them in one chunk.
 * On a pipeline stage: ids are read on the first stage (others start from loom_model_stage_input),
 * and only the last stage has a loss (others return 0 with *count 0). */
double loom_model_forward(struct loom_model *m, const int *ids, const int *targets, float dloss, long *count,
                          float *token_losses);
/* A forward or backward of one slot's micro-batch that can be run in steps, each ending where an MoE
 * all-to-all is in flight, so two tasks (one micro-batch's forward, another's backward) can take turns
 * and hide each other's communication. Run to completion, a task is loom_model_forward/backward. */
struct loom_model_task {
    int slot, backward, started, done;
    int layer, phase;              /* where it stands: block (stage-local) and MoE phase */
    const int *ids, *targets;
    float dloss;
    float *token_losses;
    double loss;                   /* forward on the last stage: as loom_model_forward returns */
    long count;
};
void loom_model_task_forward(struct loom_model_task *t, int slot, const int *ids, const int *targets, float dloss,
                             float *token_losses);
void loom_model_task_backward(struct loom_model_task *t, int slot);
/* Runs the task to its next all-to-all or its end; returns 0 once it is done. */
int loom_model_task_step(struct loom_model *m, struct loom_model_task *t);

/* Backward after a forward with dloss > 0: grads += d(loss)/d(params). A stage that is not last
 * starts from loom_model_stage_output_grad. */
void loom_model_backward(struct loom_model *m);

#ifdef __cplusplus
}
#endif
#endif
