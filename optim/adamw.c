/*
 * optim/adamw.c — AdamW and global-norm clipping (see adamw.h).
 */
#include "optim/adamw.h"

#include <math.h>
#include <string.h>

void loom_adamw_init(struct loom_adamw *o, const struct loom_ops *ops, const struct loom_optim_config *cfg,
                     size_t lo, size_t hi) {
    memset(o, 0, sizeof *o);
    o->ops = ops;
    o->cfg = *cfg;
    o->lo = lo;
    o->hi = hi;
    o->m = ops->alloc(sizeof(float) * (hi - lo));
    o->v = ops->alloc(sizeof(float) * (hi - lo));
}

/* the part [*a, *b) of parameter p inside [lo, hi); 0 when they do not meet */
static int clip_range(const struct loom_param *p, size_t lo, size_t hi, size_t *a, size_t *b) {
    *a = p->offset > lo ? p->offset : lo;
    *b = p->offset + p->numel < hi ? p->offset + p->numel : hi;
    return *a < *b;
}

void loom_adamw_free(struct loom_adamw *o) {
    o->ops->free(o->m);
    o->ops->free(o->v);
    memset(o, 0, sizeof *o);
}

void loom_adamw_step(struct loom_adamw *o, const struct loom_param_table *t, float *params, const float *grads,
                     double lr, double grad_scale) {
    o->step++;
    for (int i = 0; i < t->count; i++) {
        const struct loom_param *p = &t->params[i];
        size_t a, b;
        if (!clip_range(p, o->lo, o->hi, &a, &b)) continue;
        float wd = p->decay ? (float)o->cfg.weight_decay : 0.0f;
        o->ops->adamw_update(params + a, grads + a, o->m + (a - o->lo), o->v + (a - o->lo), b - a, (float)lr,
                             (float)o->cfg.beta1, (float)o->cfg.beta2, (float)o->cfg.eps, wd, (float)grad_scale,
                             o->step);
    }
}

double loom_grad_norm(const struct loom_ops *ops, const struct loom_param_table *t, const float *grads) {
    double ss = 0;
    for (int i = 0; i < t->count; i++) ss += ops->sum_squares(grads + t->params[i].offset, t->params[i].numel);
    return sqrt(ss);
}

double loom_grad_sum_squares_range(const struct loom_ops *ops, const struct loom_param_table *t, const float *grads,
                                   size_t lo, size_t hi, const unsigned char *counted) {
    double ss = 0;
    for (int i = 0; i < t->count; i++) {
        size_t a, b;
        if ((!counted || counted[i]) && clip_range(&t->params[i], lo, hi, &a, &b))
            ss += ops->sum_squares(grads + a, b - a);
    }
    return ss;
}

double loom_clip_factor(double norm, double clip) {
    if (clip <= 0) return 1.0;
    double f = clip / (norm + 1e-6);
    return f < 1.0 ? f : 1.0;
}
