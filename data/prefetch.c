/*
 * data/prefetch.c — the prefetch thread (see prefetch.h): two batch slots, filled in step order.
 */
#include "data/prefetch.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

enum { SLOTS = 2 };

struct loom_prefetch {
    struct loom_sampler *sampler;
    const struct loom_curriculum *cur;
    int64_t first, steps;          /* steps [first, steps) */
    int rank, ranks;
    struct loom_batch slots[SLOTS];
    int full[SLOTS];
    int64_t next_fill, next_take;
    int stop;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
};

static void batch_fill(struct loom_prefetch *p, struct loom_batch *b, int64_t step) {
    struct loom_sampler *s = p->sampler;
    const struct loom_curriculum *c = p->cur;
    b->step = step;
    b->state = s->state;
    b->tokens = s->state.tokens;
    b->T = loom_curriculum_seq_len_at(c, b->tokens);
    b->batch = loom_curriculum_batch_at(c, b->tokens);
    b->rope_theta = loom_curriculum_rope_theta_at(c, b->tokens);
    b->phase = loom_curriculum_phase_at(c, b->tokens);
    loom_curriculum_weights_at(c, b->tokens, b->weights);
    int64_t r0 = b->batch * p->rank / p->ranks, r1 = b->batch * (p->rank + 1) / p->ranks;
    b->rows = r1 - r0;
    loom_sampler_next_batch(s, c, b->batch, b->T, r0, r1, b->inputs, b->targets, b->src);
    b->after = s->state;
}

static void *prefetch_main(void *arg) {
    struct loom_prefetch *p = arg;
    pthread_mutex_lock(&p->lock);
    while (!p->stop && p->next_fill < p->steps) {
        int slot = (int)(p->next_fill % SLOTS);
        if (p->full[slot]) {
            pthread_cond_wait(&p->cond, &p->lock);
            continue;
        }
        int64_t step = p->next_fill;
        pthread_mutex_unlock(&p->lock);
        batch_fill(p, &p->slots[slot], step);
        pthread_mutex_lock(&p->lock);
        p->full[slot] = 1;
        p->next_fill++;
        pthread_cond_broadcast(&p->cond);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

struct loom_prefetch *loom_prefetch_start(struct loom_sampler *s, const struct loom_curriculum *c, int64_t first,
                                          int64_t steps, int rank, int ranks) {
    struct loom_prefetch *p = calloc_check(1, sizeof *p);
    p->sampler = s;
    p->cur = c;
    p->first = p->next_fill = p->next_take = first;
    p->steps = steps;
    p->rank = rank;
    p->ranks = ranks;
    size_t rows = (size_t)loom_curriculum_max_batch(c), T = (size_t)loom_curriculum_max_seq_len(c);
    for (int i = 0; i < SLOTS; i++) {
        p->slots[i].inputs = malloc_check(sizeof(int) * rows * T);
        p->slots[i].targets = malloc_check(sizeof(int) * rows * T);
        p->slots[i].src = malloc_check(sizeof(int) * rows);
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    CHECK(pthread_create(&p->thread, NULL, prefetch_main, p) == 0, "cannot start the prefetch thread");
    return p;
}

const struct loom_batch *loom_prefetch_next(struct loom_prefetch *p) {
    pthread_mutex_lock(&p->lock);
    CHECK(p->next_take < p->steps, "asked for step %lld of a %lld-step run", (long long)p->next_take,
          (long long)p->steps);
    if (p->next_take > p->first) {
        /* the previous batch has been used: free its slot */
        p->full[(p->next_take - 1) % SLOTS] = 0;
        pthread_cond_broadcast(&p->cond);
    }
    int slot = (int)(p->next_take % SLOTS);
    while (!p->full[slot]) pthread_cond_wait(&p->cond, &p->lock);
    p->next_take++;
    pthread_mutex_unlock(&p->lock);
    return &p->slots[slot];
}

void loom_prefetch_stop(struct loom_prefetch *p) {
    pthread_mutex_lock(&p->lock);
    p->stop = 1;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->thread, NULL);
    for (int i = 0; i < SLOTS; i++) {
        free(p->slots[i].inputs);
        free(p->slots[i].targets);
        free(p->slots[i].src);
    }
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
    free(p);
}

int64_t loom_run_tokens(const struct loom_curriculum *c, int64_t steps) {
    int64_t tokens = 0;
    for (int64_t i = 0; i < steps; i++)
        tokens += loom_curriculum_batch_at(c, tokens) * loom_curriculum_seq_len_at(c, tokens);
    return tokens;
}
