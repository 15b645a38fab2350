/*
 * optim/schedule.c — learning-rate schedules (see schedule.h).
 */
#include "optim/schedule.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/list.h"

static const double PI = 3.14159265358979323846;

struct anneal_ctx {
    struct loom_anneal_segment *segs;
    int *nsegs;
    char *err;
    int errlen;
};

static int anneal_item(char *tok, int i, void *vctx) {
    struct anneal_ctx *x = vctx;
    if (i == LOOM_SCHEDULE_MAX_SEGMENTS) {
        snprintf(x->err, x->errlen, "more than %d segments", LOOM_SCHEDULE_MAX_SEGMENTS);
        return -1;
    }
    struct loom_anneal_segment *g = &x->segs[i];
    char *c1 = strchr(tok, ':');
    if (!c1) {
        snprintf(x->err, x->errlen, "segment \"%s\" is not TOKENS:LR", tok);
        return -1;
    }
    *c1 = 0;
    char *lr = c1 + 1, *shape = strchr(lr, ':');
    if (shape) *shape++ = 0;
    char *lr_end = NULL;
    g->lr = strtod(lr, &lr_end);
    if (loom_parse_count(tok, &g->tokens) || g->tokens <= 0) {
        snprintf(x->err, x->errlen, "segment %d: \"%s\" is not a positive token count", i + 1, tok);
        return -1;
    }
    if (lr_end == lr || *lr_end || !(g->lr >= 0) || !isfinite(g->lr)) {
        snprintf(x->err, x->errlen, "segment %d: \"%s\" is not a learning rate", i + 1, lr);
        return -1;
    }
    if (!shape || strcmp(shape, "linear") == 0) g->cosine = 0;
    else if (strcmp(shape, "cosine") == 0) g->cosine = 1;
    else {
        snprintf(x->err, x->errlen, "segment %d: shape \"%s\" is not linear or cosine", i + 1, shape);
        return -1;
    }
    *x->nsegs = i + 1;
    return 0;
}

int loom_schedule_parse_anneal(const char *text, struct loom_anneal_segment *segs, int *nsegs, char *err,
                               int errlen) {
    *nsegs = 0;
    struct anneal_ctx x = {.segs = segs, .nsegs = nsegs, .err = err, .errlen = errlen};
    return loom_list_each(text, anneal_item, &x, NULL);
}

void loom_schedule_init(struct loom_schedule *s, const struct loom_schedule_config *cfg, int64_t total_tokens) {
    memset(s, 0, sizeof *s);
    s->kind = cfg->kind;
    s->lr = cfg->lr;
    s->min_lr = cfg->min_lr;
    s->warmup = cfg->warmup_tokens;
    s->decay = cfg->decay_tokens > 0 ? cfg->decay_tokens : total_tokens - cfg->warmup_tokens;
    if (s->decay < 1) s->decay = 1;
    s->anneal_start = cfg->anneal_start;
    char err[256];
    if (loom_schedule_parse_anneal(cfg->anneal, s->segments, &s->nsegments, err, sizeof err))
        loom_input_error("schedule.anneal", "write segments as TOKENS:LR[:linear|cosine], e.g. 1T:3e-5, 200B:1e-5",
                         "%s", err);
}

static double interpolate(double from, double to, double p, int cosine) {
    if (p <= 0) return from;
    if (p >= 1) return to;
    double w = cosine ? 0.5 * (1.0 - cos(PI * p)) : p;
    return from + (to - from) * w;
}

double loom_schedule_lr(const struct loom_schedule *s, int64_t tokens) {
    if (tokens < s->warmup) return s->lr * (double)tokens / (double)s->warmup;
    double p = (double)(tokens - s->warmup) / (double)s->decay;
    switch (s->kind) {
    case LOOM_SCHEDULE_CONSTANT: return s->lr;
    case LOOM_SCHEDULE_COSINE: return interpolate(s->lr, s->min_lr, p, 1);
    case LOOM_SCHEDULE_LINEAR: return interpolate(s->lr, s->min_lr, p, 0);
    case LOOM_SCHEDULE_WSD: {
        double lr = s->lr;
        int64_t start = s->anneal_start;
        for (int i = 0; i < s->nsegments; i++) {
            const struct loom_anneal_segment *g = &s->segments[i];
            if (tokens < start + g->tokens)
                return interpolate(lr, g->lr, (double)(tokens - start) / (double)g->tokens, g->cosine);
            lr = g->lr;
            start += g->tokens;
        }
        return lr;
    }
    }
    return s->lr;
}
