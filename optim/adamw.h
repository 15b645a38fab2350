/*
 * optim/adamw.h — AdamW over the parameter table, and gradient clipping by global norm.
 *
 * Moments are fp32 in the backend's memory, laid out like the parameters. Weight decay is
 * decoupled (Loshchilov & Hutter 2019) and applies only where the table says (matrices by
 * default; norms and embeddings only when configured).
 */
#ifndef LOOM_OPTIM_ADAMW_H
#define LOOM_OPTIM_ADAMW_H

#include <stddef.h>

#include "core/config.h"
#include "model/ops.h"
#include "model/params.h"

#ifdef __cplusplus
extern "C" {
#endif

struct loom_adamw {
    const struct loom_ops *ops;
    struct loom_optim_config cfg;
    float *m, *v;                  /* backend memory for the flat range [lo, hi) of the parameters */
    size_t lo, hi;
    long step;                     /* updates done */
};

/* Moments for the flat parameter range [lo, hi): the whole buffer, or one rank's ZeRO-1 shard. */
void loom_adamw_init(struct loom_adamw *o, const struct loom_ops *ops, const struct loom_optim_config *cfg,
                     size_t lo, size_t hi);
void loom_adamw_free(struct loom_adamw *o);
/* One update of the parameters in [lo, hi) with learning rate lr, each with its own decay setting;
 * gradients are multiplied by grad_scale first (the clipping factor). */
void loom_adamw_step(struct loom_adamw *o, const struct loom_param_table *t, float *params, const float *grads,
                     double lr, double grad_scale);

/* L2 norm of all gradients (sqrt of the sum of squares over the table). */
double loom_grad_norm(const struct loom_ops *ops, const struct loom_param_table *t, const float *grads);
/* Sum of squares of the gradients in the flat range [lo, hi) (a ZeRO-1 shard), over the parameters i
 * with counted[i] set (NULL: all) — so a tensor held by several ranks is counted once. */
double loom_grad_sum_squares_range(const struct loom_ops *ops, const struct loom_param_table *t, const float *grads,
                                   size_t lo, size_t hi, const unsigned char *counted);
/* min(1, clip / (norm + 1e-6)); 1 when clip <= 0 (the PyTorch clip_grad_norm_ factor). */
double loom_clip_factor(double norm, double clip);

#ifdef __cplusplus
}
#endif
#endif
