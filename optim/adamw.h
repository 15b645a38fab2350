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
    float *m, *v;                  /* backend memory, like the parameters */
    size_t n;
    long step;                     /* updates done */
};

void loom_adamw_init(struct loom_adamw *o, const struct loom_ops *ops, const struct loom_optim_config *cfg,
                     size_t n);
void loom_adamw_free(struct loom_adamw *o);
/* One update of every parameter in the table with learning rate lr; gradients are multiplied by
 * grad_scale first (the clipping factor). */
void loom_adamw_step(struct loom_adamw *o, const struct loom_param_table *t, float *params, const float *grads,
                     double lr, double grad_scale);

/* L2 norm of all gradients (sqrt of the sum of squares over the table). */
double loom_grad_norm(const struct loom_ops *ops, const struct loom_param_table *t, const float *grads);
/* min(1, clip / (norm + 1e-6)); 1 when clip <= 0 (the PyTorch clip_grad_norm_ factor). */
double loom_clip_factor(double norm, double clip);

#ifdef __cplusplus
}
#endif
#endif
