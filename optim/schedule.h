/*
 * optim/schedule.h — learning-rate schedules keyed by tokens consumed.
 *
 * Linear warmup over warmup_tokens, then one of:
 *   constant; cosine or linear decay to min_lr over decay_tokens;
 *   wsd (warmup-stable-decay): constant until anneal_start, then annealing segments, each going from
 *   the previous LR to its own over its token length, linearly or along a half cosine — e.g. the
 *   dots.llm1 recipe "anneal_start = 10T, anneal = 1T:3e-5, 200B:1e-5".
 */
#ifndef LOOM_OPTIM_SCHEDULE_H
#define LOOM_OPTIM_SCHEDULE_H

#include <stdint.h>

#include "core/config.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { LOOM_SCHEDULE_MAX_SEGMENTS = 16 };

struct loom_anneal_segment {
    int64_t tokens;
    double lr;
    int cosine;
};

struct loom_schedule {
    int kind;                      /* enum loom_schedule_kind */
    double lr, min_lr;
    int64_t warmup, decay, anneal_start;
    int nsegments;
    struct loom_anneal_segment segments[LOOM_SCHEDULE_MAX_SEGMENTS];
};

/* total_tokens: the run's length, used when decay_tokens = 0. Bad `anneal` text exits 2. */
void loom_schedule_init(struct loom_schedule *s, const struct loom_schedule_config *cfg, int64_t total_tokens);
/* Parse "TOKENS:LR[:linear|cosine], ..."; returns 0, or -1 with a message in err. */
int loom_schedule_parse_anneal(const char *text, struct loom_anneal_segment *segs, int *nsegs,
                               char *err, int errlen);
/* LR after `tokens` tokens have been consumed. */
double loom_schedule_lr(const struct loom_schedule *s, int64_t tokens);

#ifdef __cplusplus
}
#endif
#endif
