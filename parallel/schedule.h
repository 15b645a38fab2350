/*
 * parallel/schedule.h — the pipeline schedule as data.
 *
 * loom_pipeline_schedule_build is a pure function (kind, stage, stages, micro-batches) -> the ordered
 * list of actions one pipeline stage performs in one training step. The executor walks the list:
 * sends are posted non-blocking (completed later), receives block. Every schedule built here is
 * deadlock-free under that model (tests/unit/test_schedule.c runs all stages of it together).
 *
 * Communication rules, for every kind:
 *   - the first stage has no RECV_FORWARD / SEND_BACKWARD, the last no SEND_FORWARD / RECV_BACKWARD;
 *   - FORWARD i is preceded by RECV_FORWARD i (not on the first stage) and followed by SEND_FORWARD i
 *     (not on the last stage);
 *   - BACKWARD i is preceded by RECV_BACKWARD i (not on the last stage) and followed by
 *     SEND_BACKWARD i (not on the first stage);
 *   - on each link, micro-batches are sent and received in the same order.
 */
#ifndef LOOM_PARALLEL_SCHEDULE_H
#define LOOM_PARALLEL_SCHEDULE_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

enum loom_action_kind {
    LOOM_ACT_RECV_FORWARD,  /* receive micro-batch i's activations from the previous stage */
    LOOM_ACT_FORWARD,       /* run the stage's forward of micro-batch i */
    LOOM_ACT_SEND_FORWARD,  /* send micro-batch i's output activations to the next stage */
    LOOM_ACT_RECV_BACKWARD, /* receive the gradient of micro-batch i's output from the next stage */
    LOOM_ACT_BACKWARD,      /* run the stage's backward of micro-batch i */
    LOOM_ACT_SEND_BACKWARD, /* send the gradient of micro-batch i's input to the previous stage */
};

struct loom_action {
    enum loom_action_kind kind;
    int micro; /* micro-batch index, 0 .. micro_batches - 1 */
};

enum loom_pipeline_kind {
    /* Megatron's non-interleaved one-forward-one-backward: stage s runs w = min(stages - s - 1, m)
     * warmup forwards, then m - w steady pairs (forward of micro-batch i + w, backward of micro-batch
     * i), then w cooldown backwards. At most min(stages - s, m) micro-batches in flight. */
    LOOM_PIPELINE_1F1B,
    /* GPipe: all m forwards in increasing order, then all m backwards in increasing order. All m
     * micro-batches in flight on every stage. */
    LOOM_PIPELINE_GPIPE,
};

struct loom_pipeline_schedule {
    int count;                   /* number of actions */
    struct loom_action *actions; /* [count], in execution order */
    int stage, stages, micro_batches;
    enum loom_pipeline_kind kind;
};

/* Fills s with the actions of `stage` (0 .. stages - 1) for `micro_batches` >= 1 micro-batches.
 * Arguments out of range are a bug of the caller (CHECK); the config layer validates user input. */
void loom_pipeline_schedule_build(struct loom_pipeline_schedule *s, enum loom_pipeline_kind kind, int stage,
                                  int stages, int micro_batches);
void loom_pipeline_schedule_free(struct loom_pipeline_schedule *s);

/* "recv_forward", "forward", "send_forward", "recv_backward", "backward", "send_backward". */
const char *loom_action_name(enum loom_action_kind k);
/* "1f1b", "gpipe". */
const char *loom_pipeline_kind_name(enum loom_pipeline_kind k);

/* Most micro-batches whose forward has run and backward has not, at any point of the list. */
int loom_pipeline_schedule_max_in_flight(const struct loom_pipeline_schedule *s);

/* Prints a header line starting with '#', then one line per action: a short code and the micro-batch,
 * e.g. "RF3" "F3" "SF3" "RB3" "B3" "SB3" (for --dry-run style debugging). */
void loom_pipeline_schedule_print(const struct loom_pipeline_schedule *s, FILE *f);

#ifdef __cplusplus
}
#endif
#endif
