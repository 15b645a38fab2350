/*
 * data/curriculum.c — the mixture, sequence length, RoPE base and batch size by tokens consumed
 * (see curriculum.h).
 */
#include "data/curriculum.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/list.h"

/* ---------------------------------------------------------------------------------------------- */
/* sources                                                                                          */

int loom_config_sources(const struct loom_config *cfg, const struct loom_source_config **out,
                        struct loom_source_config *shorthand) {
    int n = 0;
    for (int i = 0; i < cfg->nsources; i++) out[n++] = &cfg->sources[i];
    if (cfg->data.train && cfg->data.train[0]) {
        for (int i = 0; i < n; i++)
            if (strcmp(out[i]->name, "train") == 0)
                loom_input_error("data.train", "use either data.train or a [source.train] section",
                                 "names a source `train` that [source.train] also defines");
        if (n == LOOM_MAX_SOURCES) loom_input_error("data.train", NULL, "more than %d sources", LOOM_MAX_SOURCES);
        memset(shorthand, 0, sizeof *shorthand);
        snprintf(shorthand->name, sizeof shorthand->name, "train");
        shorthand->shards = cfg->data.train;
        shorthand->heldout = "";
        shorthand->loss_mask = LOOM_LOSS_MASK_ALL;
        out[n++] = shorthand;
    }
    return n;
}

/* ---------------------------------------------------------------------------------------------- */
/* parsing                                                                                          */

struct weights_ctx {
    const struct loom_curriculum *c;
    const char *key;               /* "phase.NAME.weights" */
    double *w;
    int *seen;
};

static int weight_item(char *item, int i, void *vctx) {
    (void)i;
    struct weights_ctx *x = vctx;
    const char *hint = "weights look like `commonsense:0.75, stem:0.20, agentic:0.05`";
    const char *colon = strrchr(item, ':');
    if (!colon) loom_input_error(x->key, hint, "`%s` is not SOURCE:WEIGHT", item);
    char name[LOOM_SECTION_NAME_MAX];
    snprintf(name, sizeof name, "%.*s", (int)(colon - item), item);
    char *end = NULL;
    double v = strtod(colon + 1, &end);
    if (end == colon + 1 || *end || !isfinite(v)) loom_input_error(x->key, hint, "`%s` is not a number", colon + 1);
    if (v < 0) loom_input_error(x->key, NULL, "weight of %s is negative (%g)", name, v);
    int s = -1;
    for (int j = 0; j < x->c->nsources; j++)
        if (strcmp(x->c->sources[j]->name, name) == 0) s = j;
    if (s < 0) {
        char known[1024] = "";
        for (int j = 0; j < x->c->nsources; j++)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", j ? ", " : "", x->c->sources[j]->name);
        char h[1200];
        snprintf(h, sizeof h, "the sources are: %s (each a [source.NAME] section)", x->c->nsources ? known : "none");
        loom_input_error(x->key, h, "unknown source `%s`", name);
    }
    if (x->seen[s]) loom_input_error(x->key, NULL, "source %s given twice", name);
    x->seen[s] = 1;
    x->w[s] = v;
    return 0;
}

static void weights_parse(const struct loom_curriculum *c, const char *key, const char *text, double *w) {
    int seen[LOOM_MAX_SOURCES] = {0};
    for (int s = 0; s < LOOM_MAX_SOURCES; s++) w[s] = 0;
    struct weights_ctx x = {.c = c, .key = key, .w = w, .seen = seen};
    loom_list_each(text, weight_item, &x, NULL);
    double sum = 0;
    for (int s = 0; s < c->nsources; s++) sum += w[s];
    if (!(sum > 0)) loom_input_error(key, "give at least one source a positive weight", "weights sum to 0");
    for (int s = 0; s < c->nsources; s++) w[s] /= sum;
}

struct phases_ctx {
    struct loom_curriculum *c;
    const struct loom_config *cfg;
    int used[LOOM_MAX_PHASES];
    int order[LOOM_MAX_PHASES];    /* config index of the i-th listed phase */
};

static int phase_item(char *item, int i, void *vctx) {
    struct phases_ctx *x = vctx;
    int found = -1;
    for (int p = 0; p < x->cfg->nphases; p++)
        if (strcmp(x->cfg->phases[p].name, item) == 0) found = p;
    if (found < 0) {
        char h[128];
        snprintf(h, sizeof h, "add a [phase.%s] section", item);
        loom_input_error("curriculum.phases", h, "phase `%s` has no [phase.%s] section", item, item);
    }
    if (x->used[found]) loom_input_error("curriculum.phases", NULL, "phase `%s` listed twice", item);
    if (i >= LOOM_MAX_PHASES) loom_input_error("curriculum.phases", NULL, "more than %d phases", LOOM_MAX_PHASES);
    x->used[found] = 1;
    x->order[i] = found;
    return 0;
}

static int64_t parse_count_or_die(const char *key, const char *hint, const char *text) {
    int64_t v;
    if (loom_parse_count(text, &v) != 0 || v < 0) loom_input_error(key, hint, "`%s` is not a token count", text);
    return v;
}

struct batch_ctx {
    struct loom_curriculum *c;
    const struct loom_config *cfg;
};

static int batch_item(char *item, int i, void *vctx) {
    (void)i;
    struct batch_ctx *x = vctx;
    const char *key = "train.batch_schedule", *hint = "write TOKENS:SEQUENCES pairs, e.g. `6T:1536, 8.3T:2048`";
    const char *colon = strchr(item, ':');
    if (!colon) loom_input_error(key, hint, "`%s` is not TOKENS:SEQUENCES", item);
    char tokens[64];
    snprintf(tokens, sizeof tokens, "%.*s", (int)(colon - item), item);
    struct loom_curriculum *c = x->c;
    if (c->nbatch > LOOM_MAX_BATCH_STEPS) loom_input_error(key, NULL, "more than %d steps", LOOM_MAX_BATCH_STEPS);
    int64_t from = parse_count_or_die(key, hint, tokens), seqs = parse_count_or_die(key, hint, colon + 1);
    if (from <= c->batch_from[c->nbatch - 1])
        loom_input_error(key, "list the steps in increasing token order", "step at %s tokens is out of order", tokens);
    /* every data-parallel rank takes whole micro-batches of the size set at the start of the run */
    const struct loom_train_config *tc = &x->cfg->train;
    const struct loom_parallel_config *pc = &x->cfg->parallel;
    int64_t dp = pc->dp > 0 ? pc->dp : 1;
    int64_t micro = pc->micro_batches > 0 ? tc->global_batch / dp / pc->micro_batches : tc->micro_batch;
    if (seqs <= 0 || micro <= 0 || seqs % (dp * micro))
        loom_input_error(key, "each global batch is a whole number of micro-batches on every data-parallel rank",
                         "%lld sequences at %s is not a multiple of dp x micro-batch = %lld x %lld", (long long)seqs,
                         tokens, (long long)dp, (long long)micro);
    c->batch_from[c->nbatch] = from;
    c->batch_seqs[c->nbatch] = seqs;
    c->nbatch++;
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* building                                                                                         */

static void phase_resolve(struct loom_curriculum_phase *ph, const struct loom_config *cfg,
                          const struct loom_phase_config *pc) {
    snprintf(ph->name, sizeof ph->name, "%s", pc->name);
    ph->ramp = pc->ramp;
    ph->seq_len = pc->seq_len > 0 ? pc->seq_len : cfg->train.seq_len;
    ph->rope_theta = pc->rope_theta > 0 ? pc->rope_theta : cfg->model.rope_theta;
}

void loom_curriculum_build(struct loom_curriculum *c, const struct loom_config *cfg, const int64_t *size) {
    memset(c, 0, sizeof *c);
    static struct loom_source_config shorthand; /* the data.train source outlives the build */
    c->nsources = loom_config_sources(cfg, c->sources, &shorthand);

    struct phases_ctx px = {.c = c, .cfg = cfg};
    loom_list_each(cfg->curriculum.phases, phase_item, &px, &c->nphases);
    for (int p = 0; p < cfg->nphases; p++)
        if (!px.used[p]) {
            char key[96];
            snprintf(key, sizeof key, "phase.%s", cfg->phases[p].name);
            loom_input_error(key, "name it in curriculum.phases, in order", "phase is not part of the curriculum");
        }

    if (c->nphases == 0) {
        struct loom_curriculum_phase *ph = &c->phases[0];
        struct loom_phase_config none = {.name = "default"};
        phase_resolve(ph, cfg, &none);
        ph->end = INT64_MAX;
        double sum = 0;
        for (int s = 0; s < c->nsources; s++) sum += size ? (double)size[s] : 1.0;
        for (int s = 0; s < c->nsources; s++) ph->weights[s] = (size ? (double)size[s] : 1.0) / (sum > 0 ? sum : 1);
        c->nphases = 1;
    } else {
        int64_t start = 0;
        for (int i = 0; i < c->nphases; i++) {
            const struct loom_phase_config *pc = &cfg->phases[px.order[i]];
            struct loom_curriculum_phase *ph = &c->phases[i];
            char key[96];
            phase_resolve(ph, cfg, pc);
            int last = i == c->nphases - 1;
            snprintf(key, sizeof key, "phase.%s.until", pc->name);
            if (!last && pc->until <= start)
                loom_input_error(key, "phases end in increasing token order; only the last may leave `until` at 0",
                                 "%lld is not after the previous phase's end %lld", (long long)pc->until,
                                 (long long)start);
            if (last && pc->until != 0 && pc->until <= start)
                loom_input_error(key, NULL, "%lld is not after the previous phase's end %lld", (long long)pc->until,
                                 (long long)start);
            ph->start = start;
            ph->end = last ? INT64_MAX : pc->until;
            snprintf(key, sizeof key, "phase.%s.ramp", pc->name);
            if (ph->ramp && i == 0) loom_input_error(key, NULL, "the first phase has no previous mixture to ramp from");
            if (ph->ramp < 0 || (!last && ph->ramp > ph->end - ph->start))
                loom_input_error(key, NULL, "%lld does not fit in the phase (%lld tokens)", (long long)ph->ramp,
                                 (long long)(ph->end - ph->start));
            snprintf(key, sizeof key, "phase.%s.weights", pc->name);
            if (c->nsources) weights_parse(c, key, pc->weights, ph->weights);
            else if (pc->weights && pc->weights[0])
                loom_input_error(key, "define the sources as [source.NAME] sections", "there are no sources to weigh");
            start = ph->end;
        }
    }

    c->nbatch = 1;
    c->batch_from[0] = 0;
    c->batch_seqs[0] = cfg->train.global_batch;
    struct batch_ctx bx = {.c = c, .cfg = cfg};
    loom_list_each(cfg->train.batch_schedule, batch_item, &bx, NULL);
}

void loom_curriculum_check_sizes(const struct loom_curriculum *c, const int64_t *size) {
    for (int p = 0; p < c->nphases; p++) {
        const struct loom_curriculum_phase *ph = &c->phases[p];
        for (int s = 0; s < c->nsources; s++) {
            int drawn = ph->weights[s] > 0 || (p > 0 && ph->ramp > 0 && c->phases[p - 1].weights[s] > 0);
            if (!drawn || size[s] >= ph->seq_len + 1) continue;
            char key[96];
            snprintf(key, sizeof key, "phase.%s.seq_len", ph->name);
            loom_input_error(key, "give the source more data, a shorter sequence length, or weight 0 in this phase",
                             "source %s has %lld tokens, fewer than one sample of %lld", c->sources[s]->name,
                             (long long)size[s], (long long)(ph->seq_len + 1));
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* queries                                                                                          */

int loom_curriculum_phase_at(const struct loom_curriculum *c, int64_t tokens) {
    int p = 0;
    while (p + 1 < c->nphases && tokens >= c->phases[p].end) p++;
    return p;
}

void loom_curriculum_weights_at(const struct loom_curriculum *c, int64_t tokens, double *w) {
    int p = loom_curriculum_phase_at(c, tokens);
    const struct loom_curriculum_phase *ph = &c->phases[p];
    double alpha = 1.0;
    if (p > 0 && ph->ramp > 0 && tokens < ph->start + ph->ramp) alpha = (double)(tokens - ph->start) / (double)ph->ramp;
    for (int s = 0; s < c->nsources; s++)
        w[s] = alpha >= 1.0 ? ph->weights[s] : (1.0 - alpha) * c->phases[p - 1].weights[s] + alpha * ph->weights[s];
}

int64_t loom_curriculum_seq_len_at(const struct loom_curriculum *c, int64_t tokens) {
    return c->phases[loom_curriculum_phase_at(c, tokens)].seq_len;
}

double loom_curriculum_rope_theta_at(const struct loom_curriculum *c, int64_t tokens) {
    return c->phases[loom_curriculum_phase_at(c, tokens)].rope_theta;
}

int64_t loom_curriculum_batch_at(const struct loom_curriculum *c, int64_t tokens) {
    int i = 0;
    while (i + 1 < c->nbatch && tokens >= c->batch_from[i + 1]) i++;
    return c->batch_seqs[i];
}

int64_t loom_curriculum_max_seq_len(const struct loom_curriculum *c) {
    int64_t m = 0;
    for (int p = 0; p < c->nphases; p++) m = c->phases[p].seq_len > m ? c->phases[p].seq_len : m;
    return m;
}

int64_t loom_curriculum_max_batch(const struct loom_curriculum *c) {
    int64_t m = 0;
    for (int i = 0; i < c->nbatch; i++) m = c->batch_seqs[i] > m ? c->batch_seqs[i] : m;
    return m;
}

void loom_curriculum_integrate(const struct loom_curriculum *c, int64_t a, int64_t b, double *tokens) {
    for (int s = 0; s < c->nsources; s++) tokens[s] = 0;
    for (int p = 0; p < c->nphases; p++) {
        const struct loom_curriculum_phase *ph = &c->phases[p];
        double x0 = (double)(a > ph->start ? a : ph->start);
        double x1 = (double)(b < ph->end ? b : ph->end);
        if (x1 <= x0) continue;
        double start = (double)ph->start;
        double ramp_end = p > 0 && ph->ramp > 0 ? start + (double)ph->ramp : start;
        /* blended part [x0, min(x1, ramp_end)): ∫ alpha = ((u1 - start)^2 - (u0 - start)^2) / (2 ramp) */
        double u0 = x0, u1 = x1 < ramp_end ? x1 : ramp_end;
        if (u1 > u0) {
            double area = ((u1 - start) * (u1 - start) - (u0 - start) * (u0 - start)) / (2.0 * (double)ph->ramp);
            for (int s = 0; s < c->nsources; s++)
                tokens[s] += c->phases[p - 1].weights[s] * (u1 - u0 - area) + ph->weights[s] * area;
            x0 = u1;
        }
        if (x1 > x0)
            for (int s = 0; s < c->nsources; s++) tokens[s] += ph->weights[s] * (x1 - x0);
    }
}
