/*
 * parallel/pipeline.c — the pipeline executor (see pipeline.h).
 */
#include "parallel/pipeline.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void loom_pipeline_stage(struct loom_stage *s, int num_layers, int pp, int pp_rank, const char *stage_layers) {
    int lo = 0, n = 0;
    if (stage_layers && stage_layers[0]) {
        const char *p = stage_layers;
        for (int i = 0; i <= pp_rank; i++) {
            n = (int)strtol(p, (char **)&p, 10);
            while (*p == ',' || *p == ' ') p++;
            if (i < pp_rank) lo += n;
        }
    } else {
        int base = num_layers / pp, extra = num_layers % pp;
        for (int i = 0; i < pp_rank; i++) lo += base + (i < extra);
        n = base + (pp_rank < extra);
    }
    s->layer_lo = lo;
    s->layer_hi = lo + n;
    s->first = pp_rank == 0;
    s->last = pp_rank == pp - 1;
}

int loom_pipeline_slots(enum loom_pipeline_kind kind, int stage, int stages, int m) {
    if (kind == LOOM_PIPELINE_GPIPE) return m;
    return stages - stage < m ? stages - stage : m;
}

enum { TAG_FORWARD = 0, TAG_BACKWARD = 1 };

/* Actions f (FORWARD j) through b (BACKWARD i) and the sends right after b, with the forward and the
 * backward taking turns: the forward's first step, then the backward's gradient is received (in 1F1B
 * the next stage sent it in an earlier pair, so this cannot deadlock), then the two tasks alternate
 * step by step, each step ending on an all-to-all the other one's compute hides, then the sends go out. */
static void overlapped_pair(struct loom_model *model, const struct loom_topology *t,
                            const struct loom_pipeline_schedule *sched, int f, int b, int K, size_t N,
                            const int *inputs, const int *targets, float dloss, float *token_losses,
                            loom_pipeline_loss_fn on_loss, void *ctx, struct loom_comm_handle *sends,
                            unsigned char *done, struct loom_pipeline_stats *st) {
    const struct loom_comm *pp = &t->pp_comm;
    size_t NC = N * model->cfg.hidden_size;
    int j = sched->actions[f].micro, i = sched->actions[b].micro;
    struct loom_model_task fw, bw;
    loom_model_task_forward(&fw, j % K, inputs + j * N, targets + j * N, dloss, token_losses);
    loom_model_task_backward(&bw, i % K);
    /* the forward's first step (up to its first all-to-all) runs while the gradient is on its way; the
     * order of steps is fixed, so every rank of an expert group starts its exchanges in the same order */
    double t0 = now_s();
    int more_f = loom_model_task_step(model, &fw), more_b = 1;
    st->compute += now_s() - t0;
    t0 = now_s();
    for (int k = f + 1; k < b; k++) {
        if (sched->actions[k].kind != LOOM_ACT_RECV_BACKWARD) continue;
        struct loom_comm_handle h;
        loom_model_use_slot(model, i % K);
        loom_recv_start(pp, loom_model_stage_output_grad(model), NC, t->pp_rank + 1, 2 * i + TAG_BACKWARD, &h);
        loom_comm_wait(&h);
        done[k] = 1;
    }
    st->blocked += now_s() - t0;

    t0 = now_s();
    while (more_f || more_b) {
        if (more_f) more_f = loom_model_task_step(model, &fw);
        if (more_b) more_b = loom_model_task_step(model, &bw);
    }
    if (!model->stage.first) {
        loom_model_use_slot(model, i % K);
        model->ops->copy_2d(loom_model_stage_input(model), (int)NC, loom_model_stage_input_grad(model), (int)NC, 1,
                            (int)NC, 0);
    }
    if (model->stage.last) {
        st->loss_sum += fw.loss;
        if (on_loss) on_loss(ctx, j, token_losses);
    }
    st->compute += now_s() - t0;
    done[f] = done[b] = 1;

    /* the sends of the pair, in schedule order */
    for (int k = f + 1; k < sched->count; k++) {
        const struct loom_action *a = &sched->actions[k];
        if (a->kind == LOOM_ACT_SEND_FORWARD && a->micro == j) {
            loom_model_use_slot(model, j % K);
            loom_send_start(pp, loom_model_stage_output(model), NC, t->pp_rank + 1, 2 * j + TAG_FORWARD,
                            &sends[2 * j]);
            done[k] = 1;
        } else if (a->kind == LOOM_ACT_SEND_BACKWARD && a->micro == i) {
            loom_model_use_slot(model, i % K);
            loom_send_start(pp, loom_model_stage_input(model), NC, t->pp_rank - 1, 2 * i + TAG_BACKWARD,
                            &sends[2 * i + 1]);
            done[k] = 1;
            break;
        }
        if (k > b && a->kind != LOOM_ACT_SEND_BACKWARD && a->kind != LOOM_ACT_SEND_FORWARD) break;
    }
}

/* The next forward or backward after action i, or -1. */
static int next_compute(const struct loom_pipeline_schedule *s, int i) {
    for (int k = i + 1; k < s->count; k++)
        if (s->actions[k].kind == LOOM_ACT_FORWARD || s->actions[k].kind == LOOM_ACT_BACKWARD) return k;
    return -1;
}

void loom_pipeline_train(struct loom_model *model, const struct loom_topology *t, enum loom_pipeline_kind kind,
                         int m, const int *inputs, const int *targets, float dloss, float *token_losses,
                         loom_pipeline_loss_fn on_loss, void *ctx, int overlap, struct loom_pipeline_stats *st) {
    memset(st, 0, sizeof *st);
    struct loom_pipeline_schedule sched;
    loom_pipeline_schedule_build(&sched, kind, t->pp_rank, t->pp, m);
    int K = loom_pipeline_schedule_max_in_flight(&sched);
    CHECK(K <= model->nslots, "schedule needs %d slots, the model has %d", K, model->nslots);
    size_t N = (size_t)model->B * model->T, NC = N * model->cfg.hidden_size;
    struct loom_comm_handle *sends = calloc_check((size_t)m * 2, sizeof *sends);
    const struct loom_comm *pp = &t->pp_comm;

    unsigned char *done = calloc_check((size_t)sched.count, 1);
    for (int i = 0; i < sched.count; i++) {
        if (done[i]) continue;
        const struct loom_action *a = &sched.actions[i];
        int micro = a->micro;
        loom_model_use_slot(model, micro % K);
        struct loom_comm_handle h;
        double t0 = now_s();
        if ((a->kind == LOOM_ACT_RECV_FORWARD || a->kind == LOOM_ACT_FORWARD) && micro >= K) {
            /* the slot's input and output were last sent from by micro-batch micro - K */
            loom_comm_wait(&sends[2 * (micro - K)]);
            loom_comm_wait(&sends[2 * (micro - K) + 1]);
            st->blocked += now_s() - t0;
            t0 = now_s();
        }
        switch (a->kind) {
        case LOOM_ACT_RECV_FORWARD:
            loom_recv_start(pp, loom_model_stage_input(model), NC, t->pp_rank - 1, 2 * micro + TAG_FORWARD, &h);
            loom_comm_wait(&h);
            st->blocked += now_s() - t0;
            break;
        case LOOM_ACT_FORWARD: {
            int b = next_compute(&sched, i);
            /* (on the last stage a pair is one micro-batch's forward and its own backward: no overlap) */
            if (overlap && kind == LOOM_PIPELINE_1F1B && b >= 0 && sched.actions[b].kind == LOOM_ACT_BACKWARD &&
                sched.actions[b].micro != micro) {
                overlapped_pair(model, t, &sched, i, b, K, N, inputs, targets, dloss, token_losses, on_loss, ctx,
                                sends, done, st);
                break;
            }
            double loss = loom_model_forward(model, inputs + micro * N, targets + micro * N, dloss, NULL,
                                             token_losses);
            if (model->stage.last) {
                st->loss_sum += loss;
                if (on_loss) on_loss(ctx, micro, token_losses);
            }
            st->compute += now_s() - t0;
            break;
        }
        case LOOM_ACT_SEND_FORWARD:
            loom_send_start(pp, loom_model_stage_output(model), NC, t->pp_rank + 1, 2 * micro + TAG_FORWARD,
                            &sends[2 * micro]);
            break;
        case LOOM_ACT_RECV_BACKWARD:
            loom_recv_start(pp, loom_model_stage_output_grad(model), NC, t->pp_rank + 1, 2 * micro + TAG_BACKWARD,
                            &h);
            loom_comm_wait(&h);
            st->blocked += now_s() - t0;
            break;
        case LOOM_ACT_BACKWARD:
            loom_model_backward(model);
            if (!model->stage.first) {
                /* the stage input is spent: it carries d(loss)/d(input) back */
                model->ops->copy_2d(loom_model_stage_input(model), (int)NC, loom_model_stage_input_grad(model),
                                    (int)NC, 1, (int)NC, 0);
            }
            st->compute += now_s() - t0;
            break;
        case LOOM_ACT_SEND_BACKWARD:
            loom_send_start(pp, loom_model_stage_input(model), NC, t->pp_rank - 1, 2 * micro + TAG_BACKWARD,
                            &sends[2 * micro + 1]);
            break;
        }
    }
    free(done);
    double t0 = now_s();
    for (int i = 0; i < 2 * m; i++) loom_comm_wait(&sends[i]);
    st->blocked += now_s() - t0;
    free(sends);
    loom_pipeline_schedule_free(&sched);
}

double loom_pipeline_forward(struct loom_model *model, const struct loom_topology *t, const int *inputs,
                             const int *targets, long *count) {
    size_t NC = (size_t)model->B * model->T * model->cfg.hidden_size;
    const struct loom_comm *pp = &t->pp_comm;
    struct loom_comm_handle h;
    loom_model_use_slot(model, 0);
    if (!model->stage.first) {
        loom_recv_start(pp, loom_model_stage_input(model), NC, t->pp_rank - 1, TAG_FORWARD, &h);
        loom_comm_wait(&h);
    }
    long n = 0;
    double v[2] = {loom_model_forward(model, inputs, targets, 0.0f, &n, NULL), 0};
    if (!model->stage.last) {
        loom_send_start(pp, loom_model_stage_output(model), NC, t->pp_rank + 1, TAG_FORWARD, &h);
        loom_comm_wait(&h);
    }
    v[1] = (double)n;
    loom_allreduce_double(pp, v, 2);
    *count = (long)v[1];
    return v[0];
}
