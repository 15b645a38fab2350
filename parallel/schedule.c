/*
 * parallel/schedule.c — pipeline schedules as lists of actions (see schedule.h).
 *
 * A schedule is first decided as a sequence of computations (forwards and backwards of
 * micro-batches); each computation is then wrapped in the communication the stage's position needs:
 *   forward  i:  [RECV_FORWARD i]  FORWARD i  [SEND_FORWARD i]
 *   backward i:  [RECV_BACKWARD i] BACKWARD i [SEND_BACKWARD i]
 * so the adjacency rules of schedule.h hold by construction, whatever the order of computations.
 */
#include "parallel/schedule.h"

#include <stdlib.h>

#include "core/error.h"

/* ---------------------------------------------------------------------------------------------- */
/* names                                                                                            */

static const char *const action_names[] = {
    [LOOM_ACT_RECV_FORWARD] = "recv_forward",   [LOOM_ACT_FORWARD] = "forward",
    [LOOM_ACT_SEND_FORWARD] = "send_forward",   [LOOM_ACT_RECV_BACKWARD] = "recv_backward",
    [LOOM_ACT_BACKWARD] = "backward",           [LOOM_ACT_SEND_BACKWARD] = "send_backward",
};

static const char *const action_codes[] = {
    [LOOM_ACT_RECV_FORWARD] = "RF", [LOOM_ACT_FORWARD] = "F",   [LOOM_ACT_SEND_FORWARD] = "SF",
    [LOOM_ACT_RECV_BACKWARD] = "RB", [LOOM_ACT_BACKWARD] = "B", [LOOM_ACT_SEND_BACKWARD] = "SB",
};

static void check_action(enum loom_action_kind k) {
    CHECK(k >= LOOM_ACT_RECV_FORWARD && k <= LOOM_ACT_SEND_BACKWARD, "unknown action kind %d", (int)k);
}

const char *loom_action_name(enum loom_action_kind k) {
    check_action(k);
    return action_names[k];
}

/* "RF" "F" "SF" "RB" "B" "SB": the short form used by loom_pipeline_schedule_print */
static const char *action_code(enum loom_action_kind k) {
    check_action(k);
    return action_codes[k];
}

const char *loom_pipeline_kind_name(enum loom_pipeline_kind k) {
    CHECK(k == LOOM_PIPELINE_1F1B || k == LOOM_PIPELINE_GPIPE, "unknown pipeline kind %d", (int)k);
    return k == LOOM_PIPELINE_1F1B ? "1f1b" : "gpipe";
}

/* ---------------------------------------------------------------------------------------------- */
/* building                                                                                         */

static void push(struct loom_pipeline_schedule *s, enum loom_action_kind kind, int micro) {
    s->actions[s->count].kind = kind;
    s->actions[s->count].micro = micro;
    s->count++;
}

static void push_forward(struct loom_pipeline_schedule *s, int micro) {
    int first = s->stage == 0, last = s->stage == s->stages - 1;
    if (!first) push(s, LOOM_ACT_RECV_FORWARD, micro);
    push(s, LOOM_ACT_FORWARD, micro);
    if (!last) push(s, LOOM_ACT_SEND_FORWARD, micro);
}

static void push_backward(struct loom_pipeline_schedule *s, int micro) {
    int first = s->stage == 0, last = s->stage == s->stages - 1;
    if (!last) push(s, LOOM_ACT_RECV_BACKWARD, micro);
    push(s, LOOM_ACT_BACKWARD, micro);
    if (!first) push(s, LOOM_ACT_SEND_BACKWARD, micro);
}

/* Non-interleaved 1F1B as in Megatron-LM's forward_backward_pipelining_without_interleaving
 * (megatron/core/pipeline_parallel/schedules.py; Narayanan et al. 2021, "Efficient Large-Scale
 * Language Model Training on GPU Clusters Using Megatron-LM", section 2.2): the computations of stage
 * s are F^w (F B)^(m-w) B^w with w = min(stages - s - 1, m), forwards and backwards each in
 * increasing micro-batch order. */
static void build_1f1b(struct loom_pipeline_schedule *s) {
    int m = s->micro_batches;
    int warmup = s->stages - s->stage - 1;
    if (warmup > m) warmup = m;
    int next_forward = 0, next_backward = 0;

    /* warmup: forwards only, filling the pipeline below this stage */
    for (int i = 0; i < warmup; i++) push_forward(s, next_forward++);

    /* steady: one forward, then the backward of the oldest micro-batch in flight */
    for (int i = 0; i < m - warmup; i++) {
        push_forward(s, next_forward++);
        push_backward(s, next_backward++);
    }

    /* cooldown: drain the backwards of the warmup micro-batches */
    for (int i = 0; i < warmup; i++) push_backward(s, next_backward++);
}

/* GPipe (Huang et al. 2019): every forward, then every backward, both in increasing order. */
static void build_gpipe(struct loom_pipeline_schedule *s) {
    for (int i = 0; i < s->micro_batches; i++) push_forward(s, i);
    for (int i = 0; i < s->micro_batches; i++) push_backward(s, i);
}

void loom_pipeline_schedule_build(struct loom_pipeline_schedule *s, enum loom_pipeline_kind kind, int stage,
                                  int stages, int micro_batches) {
    CHECK(kind == LOOM_PIPELINE_1F1B || kind == LOOM_PIPELINE_GPIPE, "unknown pipeline kind %d", (int)kind);
    CHECK(stages >= 1 && stage >= 0 && stage < stages, "stage %d of %d", stage, stages);
    CHECK(micro_batches >= 1, "%d micro-batches", micro_batches);
    s->kind = kind;
    s->stage = stage;
    s->stages = stages;
    s->micro_batches = micro_batches;
    s->count = 0;
    /* each micro-batch: at most 3 actions forward and 3 backward */
    s->actions = calloc_check((size_t)micro_batches * 6, sizeof *s->actions);
    if (kind == LOOM_PIPELINE_1F1B) build_1f1b(s);
    else build_gpipe(s);
}

void loom_pipeline_schedule_free(struct loom_pipeline_schedule *s) {
    free(s->actions);
    s->actions = NULL;
    s->count = 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* inspection                                                                                       */

int loom_pipeline_schedule_max_in_flight(const struct loom_pipeline_schedule *s) {
    int now = 0, most = 0;
    for (int i = 0; i < s->count; i++) {
        if (s->actions[i].kind == LOOM_ACT_FORWARD) now++;
        else if (s->actions[i].kind == LOOM_ACT_BACKWARD) now--;
        if (now > most) most = now;
    }
    return most;
}

void loom_pipeline_schedule_print(const struct loom_pipeline_schedule *s, FILE *f) {
    fprintf(f, "# pipeline schedule %s: stage %d of %d, %d micro-batches, %d actions, at most %d in flight\n",
            loom_pipeline_kind_name(s->kind), s->stage, s->stages, s->micro_batches, s->count,
            loom_pipeline_schedule_max_in_flight(s));
    for (int i = 0; i < s->count; i++) fprintf(f, "%s%d\n", action_code(s->actions[i].kind), s->actions[i].micro);
}
