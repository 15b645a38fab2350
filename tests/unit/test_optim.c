/*
 * tests/unit/test_optim.c — learning-rate schedules (optim/schedule.h), gradient clipping and AdamW
 * (optim/adamw.h), and the parameter table they run over (model/params.h).
 *
 * Schedules are compared with values worked out by hand from their definitions, including the
 * dots.llm1 WSD recipe. AdamW runs three steps over a small MHA model's table on the CPU backend and
 * every element is compared with a double implementation of decoupled AdamW written here, whose
 * decision of which tensors decay comes from the parameter names, not from the table's flags. The
 * table itself is checked against the parameter count of Youtu-LLM 2B, worked out by hand.
 *
 * Tolerances: schedule values rel 1e-12 (double arithmetic throughout); AdamW atol 1e-6, rtol 1e-5
 * over three fp32 steps of size ~1e-2 (fp32 rounding is ~1e-9 here, a missing or extra weight
 * decay term is >= 1e-4); sample std of an init within 6 standard errors.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/config.h"
#include "model/ops.h"
#include "model/params.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "tests/test.h"

static const double PI = 3.14159265358979323846;

static void check_layout(const char *name, const struct loom_param_table *t);

/* xorshift64*, fixed seed: the same inputs every run */
static uint64_t rand_state = 0x9e3779b97f4a7c15ull;

static void expect_value(const char *name, double got, double want, double rtol) {
    double d = fabs(got - want);
    test_result(d <= rtol * fabs(want) || (want == 0 && got == 0), name, "got %.17g want %.17g (|diff| %.3g)", got,
                want, d);
}

/* ---------------------------------------------------------------------------------------------- */
/* schedules                                                                                        */

#define T_ 1000000000000LL  /* 1T tokens */
#define B_ 1000000000LL     /* 1B tokens */

static double lr_at(int kind, int64_t warmup, int64_t decay, int64_t total, int64_t t) {
    struct loom_schedule_config c = {.kind = kind, .lr = 1e-3, .min_lr = 1e-4, .warmup_tokens = warmup,
                                     .decay_tokens = decay, .anneal_start = 0, .anneal = NULL};
    char empty[] = "";
    c.anneal = empty;
    struct loom_schedule s;
    loom_schedule_init(&s, &c, total);
    return loom_schedule_lr(&s, t);
}

static void test_warmup_and_decay(void) {
    const double lr = 1e-3, mn = 1e-4;
    const int64_t W = 1000, total = 11000;   /* decay_tokens = 0: decay over the remaining 10000 */
    int kinds[] = {LOOM_SCHEDULE_CONSTANT, LOOM_SCHEDULE_COSINE, LOOM_SCHEDULE_LINEAR, LOOM_SCHEDULE_WSD};
    const char *names[] = {"constant", "cosine", "linear", "wsd"};
    for (int k = 0; k < 4; k++) {
        expect_value(test_name("schedule_%s_warmup_starts_at_0", names[k]), lr_at(kinds[k], W, 0, total, 0), 0, 0);
        expect_value(test_name("schedule_%s_warmup_quarter", names[k]), lr_at(kinds[k], W, 0, total, 250), lr * 0.25,
                     1e-12);
        expect_value(test_name("schedule_%s_warmup_last_token", names[k]), lr_at(kinds[k], W, 0, total, 999),
                     lr * 0.999, 1e-12);
        expect_value(test_name("schedule_%s_warmup_end_is_lr", names[k]), lr_at(kinds[k], W, 0, total, W), lr, 1e-12);
    }
    expect_value("schedule_constant_mid", lr_at(LOOM_SCHEDULE_CONSTANT, W, 0, total, 6000), lr, 1e-12);
    expect_value("schedule_constant_beyond_end", lr_at(LOOM_SCHEDULE_CONSTANT, W, 0, total, 50000), lr, 1e-12);
    expect_value("schedule_wsd_without_segments_is_constant", lr_at(LOOM_SCHEDULE_WSD, W, 0, total, 50000), lr, 1e-12);

    expect_value("schedule_cosine_halfway", lr_at(LOOM_SCHEDULE_COSINE, W, 0, total, 6000), (lr + mn) / 2, 1e-12);
    expect_value("schedule_cosine_quarter", lr_at(LOOM_SCHEDULE_COSINE, W, 0, total, 3500),
                 mn + (lr - mn) * (1 + cos(PI / 4)) / 2, 1e-12);
    expect_value("schedule_cosine_end_is_min", lr_at(LOOM_SCHEDULE_COSINE, W, 0, total, total), mn, 1e-12);
    expect_value("schedule_cosine_beyond_end_stays_min", lr_at(LOOM_SCHEDULE_COSINE, W, 0, total, 5 * total), mn,
                 1e-12);
    expect_value("schedule_linear_halfway", lr_at(LOOM_SCHEDULE_LINEAR, W, 0, total, 6000), (lr + mn) / 2, 1e-12);
    expect_value("schedule_linear_quarter", lr_at(LOOM_SCHEDULE_LINEAR, W, 0, total, 3500), lr + (mn - lr) * 0.25,
                 1e-12);
    expect_value("schedule_linear_end_is_min", lr_at(LOOM_SCHEDULE_LINEAR, W, 0, total, total), mn, 1e-12);
    expect_value("schedule_linear_beyond_end_stays_min", lr_at(LOOM_SCHEDULE_LINEAR, W, 0, total, 5 * total), mn,
                 1e-12);
    /* an explicit decay_tokens = 4000 ends the decay at 5000 whatever the run's length */
    expect_value("schedule_cosine_decay_tokens_halfway", lr_at(LOOM_SCHEDULE_COSINE, W, 4000, total, 3000),
                 (lr + mn) / 2, 1e-12);
    expect_value("schedule_cosine_decay_tokens_end", lr_at(LOOM_SCHEDULE_COSINE, W, 4000, total, 5000), mn, 1e-12);
    expect_value("schedule_linear_decay_tokens_end", lr_at(LOOM_SCHEDULE_LINEAR, W, 4000, total, 7000), mn, 1e-12);
    /* no warmup: full lr at token 0 */
    expect_value("schedule_no_warmup_starts_at_lr", lr_at(LOOM_SCHEDULE_COSINE, 0, 0, total, 0), lr, 1e-12);
}

static double wsd_at(const char *anneal, int64_t t) {
    struct loom_schedule_config c = {.kind = LOOM_SCHEDULE_WSD, .lr = 3e-4, .min_lr = 0, .warmup_tokens = 256 * B_,
                                     .decay_tokens = 0, .anneal_start = 10 * T_, .anneal = NULL};
    char text[128];
    snprintf(text, sizeof text, "%s", anneal);
    c.anneal = text;
    struct loom_schedule s;
    loom_schedule_init(&s, &c, 12 * T_);
    return loom_schedule_lr(&s, t);
}

static void test_wsd(void) {
    /* dots.llm1: warmup 256B, stable 3e-4 to 10T, then 1T linearly to 3e-5, then 200B linearly to 1e-5 */
    const char *dots = "1T:3e-5, 200B:1e-5";
    expect_value("wsd_dots_warmup_half", wsd_at(dots, 128 * B_), 1.5e-4, 1e-12);
    expect_value("wsd_dots_stable_5T", wsd_at(dots, 5 * T_), 3e-4, 1e-12);
    expect_value("wsd_dots_just_before_10T", wsd_at(dots, 10 * T_ - 1), 3e-4, 1e-12);
    expect_value("wsd_dots_at_10T", wsd_at(dots, 10 * T_), 3e-4, 1e-12);
    expect_value("wsd_dots_10.5T_midpoint", wsd_at(dots, 10 * T_ + T_ / 2), (3e-4 + 3e-5) / 2, 1e-12);
    expect_value("wsd_dots_11T", wsd_at(dots, 11 * T_), 3e-5, 1e-12);
    expect_value("wsd_dots_11.1T", wsd_at(dots, 11 * T_ + 100 * B_), 2e-5, 1e-12);
    expect_value("wsd_dots_11.2T", wsd_at(dots, 11 * T_ + 200 * B_), 1e-5, 1e-12);
    expect_value("wsd_dots_after_end", wsd_at(dots, 15 * T_), 1e-5, 1e-12);

    const char *cosine = "1T:3e-5:cosine";
    expect_value("wsd_cosine_segment_start", wsd_at(cosine, 10 * T_), 3e-4, 1e-12);
    expect_value("wsd_cosine_segment_halfway", wsd_at(cosine, 10 * T_ + T_ / 2), (3e-4 + 3e-5) / 2, 1e-12);
    expect_value("wsd_cosine_segment_quarter", wsd_at(cosine, 10 * T_ + T_ / 4),
                 3e-4 + (3e-5 - 3e-4) * (1 - cos(PI / 4)) / 2, 1e-12);
    expect_value("wsd_cosine_segment_end", wsd_at(cosine, 11 * T_), 3e-5, 1e-12);
    expect_value("wsd_cosine_segment_after", wsd_at(cosine, 11 * T_ + 1), 3e-5, 1e-12);
    /* explicit ":linear" is the default shape */
    expect_value("wsd_linear_shape_quarter", wsd_at("1T:3e-5:linear", 10 * T_ + T_ / 4),
                 3e-4 + (3e-5 - 3e-4) * 0.25, 1e-12);

    /* the same recipe through the config keys */
    struct loom_config cfg;
    loom_config_init(&cfg);
    loom_config_set(&cfg, "schedule", "kind", "wsd", "test");
    loom_config_set(&cfg, "schedule", "lr", "3e-4", "test");
    loom_config_set(&cfg, "schedule", "warmup_tokens", "256B", "test");
    loom_config_set(&cfg, "schedule", "anneal_start", "10T", "test");
    loom_config_set(&cfg, "schedule", "anneal", dots, "test");
    struct loom_schedule s;
    loom_schedule_init(&s, &cfg.schedule, 12 * T_);
    expect_value("wsd_from_config_keys_11.1T", loom_schedule_lr(&s, 11 * T_ + 100 * B_), 2e-5, 1e-12);
    expect_value("wsd_from_config_keys_10.5T", loom_schedule_lr(&s, 10 * T_ + T_ / 2), (3e-4 + 3e-5) / 2, 1e-12);
    loom_config_free(&cfg);
}

static void test_parse_anneal(void) {
    const char *bad[] = {"1T", "abc:1e-5", "1T:xyz", "1T:1e-5:wiggle", "-5:1e-5", "0:1e-5", "1T:-1e-5", "1T:3e-5x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct loom_anneal_segment segs[LOOM_SCHEDULE_MAX_SEGMENTS];
        int n = -1;
        char err[256] = "";
        int rc = loom_schedule_parse_anneal(bad[i], segs, &n, err, sizeof err);
        test_result(rc == -1 && err[0] != '\0', test_name("parse_anneal_rejects[%s]", bad[i]),
                    "returned %d with message \"%s\" (want -1 and a message)", rc, err);
    }

    struct loom_anneal_segment segs[LOOM_SCHEDULE_MAX_SEGMENTS];
    int n = -1;
    char err[256] = "";
    int rc = loom_schedule_parse_anneal("", segs, &n, err, sizeof err);
    test_result(rc == 0 && n == 0, "parse_anneal_empty", "returned %d, %d segments, message \"%s\"", rc, n, err);

    rc = loom_schedule_parse_anneal("1T:3e-5 , 200B:1e-5", segs, &n, err, sizeof err);
    int ok = rc == 0 && n == 2 && segs[0].tokens == T_ && segs[0].lr == 3e-5 && !segs[0].cosine &&
             segs[1].tokens == 200 * B_ && segs[1].lr == 1e-5 && !segs[1].cosine;
    test_result(ok, "parse_anneal_two_segments_with_spaces",
                "returned %d, %d segments: {%lld, %g, %d} {%lld, %g, %d}; message \"%s\"", rc, n,
                n > 0 ? (long long)segs[0].tokens : 0LL, n > 0 ? segs[0].lr : 0.0, n > 0 ? segs[0].cosine : 0,
                n > 1 ? (long long)segs[1].tokens : 0LL, n > 1 ? segs[1].lr : 0.0, n > 1 ? segs[1].cosine : 0, err);

    rc = loom_schedule_parse_anneal("1.5T:3e-5:cosine,50B:0:linear", segs, &n, err, sizeof err);
    ok = rc == 0 && n == 2 && segs[0].tokens == 1500 * B_ && segs[0].cosine == 1 && segs[1].tokens == 50 * B_ &&
         segs[1].lr == 0 && segs[1].cosine == 0;
    test_result(ok, "parse_anneal_shapes", "returned %d, %d segments; message \"%s\"", rc, n, err);
}

/* ---------------------------------------------------------------------------------------------- */
/* clipping                                                                                         */

static void test_clip(void) {
    struct {
        double norm, clip, want;
    } cases[] = {
        {2.0, 1.0, 1.0 / (2.0 + 1e-6)}, {10.0, 0.5, 0.5 / (10.0 + 1e-6)}, {0.5, 1.0, 1.0},
        {0.0, 1.0, 1.0},                {1.0, 1.0, 1.0 / (1.0 + 1e-6)},   {123.0, 0.0, 1.0},
        {123.0, -1.0, 1.0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double got = loom_clip_factor(cases[i].norm, cases[i].clip);
        expect_value(test_name("clip_factor[norm=%g,clip=%g]", cases[i].norm, cases[i].clip), got, cases[i].want,
                     1e-15);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* AdamW over a small MHA model's table                                                             */

static void tiny_mha(struct loom_config *cfg) {
    loom_config_init(cfg);
    struct loom_model_config *m = &cfg->model;
    m->attention = LOOM_ATTENTION_MHA;
    m->vocab_size = 37;           /* odd sizes: most tensors end in padding */
    m->hidden_size = 20;
    m->num_layers = 2;
    m->num_heads = 4;
    m->num_kv_heads = 2;
    m->head_dim = 0;
    m->v_head_dim = 0;
    m->intermediate_size = 27;
    m->tie_word_embeddings = 0;
    m->qk_norm = 1;
}

enum decay_kind { DECAY_MATRIX, DECAY_NORM, DECAY_EMBEDDING };

/* Which kind a tensor is, from its name alone. */
static enum decay_kind kind_of(const char *name) {
    if (strcmp(name, "embed_tokens.weight") == 0) return DECAY_EMBEDDING;
    size_t n = strlen(name);
    const char *suffix = "norm.weight";
    if (n >= strlen(suffix) && strcmp(name + n - strlen(suffix), suffix) == 0) return DECAY_NORM;
    return DECAY_MATRIX;
}

static int want_decay(const char *name, const struct loom_optim_config *o) {
    switch (kind_of(name)) {
    case DECAY_MATRIX: return 1;
    case DECAY_NORM: return o->decay_norms;
    case DECAY_EMBEDDING: return o->decay_embeddings;
    }
    return 1;
}

/* One decoupled AdamW step in double (PyTorch AdamW; Loshchilov & Hutter 2019). */
static void ref_adamw(double *p, double *m, double *v, const float *g_in, size_t n, double lr, double b1, double b2,
                      double eps, double wd, double gscale, long step) {
    double bc1 = 1 - pow(b1, (double)step), bc2 = 1 - pow(b2, (double)step);
    for (size_t i = 0; i < n; i++) {
        double g = (double)g_in[i] * gscale;
        p[i] -= lr * wd * p[i];
        m[i] = b1 * m[i] + (1 - b1) * g;
        v[i] = b2 * v[i] + (1 - b2) * g * g;
        p[i] -= lr * (m[i] / bc1) / (sqrt(v[i] / bc2) + eps);
    }
}

/* Run three AdamW steps with the given decay switches; compare every element of every tensor. */
static void run_adamw(const char *label, int decay_norms, int decay_embeddings) {
    struct loom_config cfg;
    tiny_mha(&cfg);
    cfg.optim.decay_norms = decay_norms;
    cfg.optim.decay_embeddings = decay_embeddings;
    cfg.optim.weight_decay = 0.1;
    const struct loom_optim_config *o = &cfg.optim;

    struct loom_param_table t;
    loom_params_build(&t, &cfg.model, o);
    check_layout(test_name("params_tiny_mha_%s_layout", label), &t);

    /* the table's own flags agree with the names */
    int flags_ok = 1, nnorm = 0, nemb = 0, nmat = 0;
    const char *flag_bad = "";
    for (int i = 0; i < t.count; i++) {
        const struct loom_param *p = &t.params[i];
        enum decay_kind k = kind_of(p->name);
        nnorm += k == DECAY_NORM, nemb += k == DECAY_EMBEDDING, nmat += k == DECAY_MATRIX;
        if (!!p->decay != want_decay(p->name, o) && flags_ok) flags_ok = 0, flag_bad = p->name;
    }
    test_result(flags_ok && nnorm == 2 * 4 + 1 && nemb == 1 && nmat == 2 * 7 + 1,
                test_name("adamw_%s_decay_flags", label),
                "first wrong flag: %s; %d norms (want 9), %d embeddings (want 1), %d matrices (want 15)", flag_bad,
                nnorm, nemb, nmat);

    const struct loom_ops *ops = loom_ops_cpu(1);
    size_t N = t.total;
    float *host_p = calloc(N, sizeof(float)), *host_g = calloc(N, sizeof(float));
    double *ref_p = calloc(N, sizeof(double)), *ref_m = calloc(N, sizeof(double)), *ref_v = calloc(N, sizeof(double));
    double *nodecay_p = calloc(N, sizeof(double)), *nd_m = calloc(N, sizeof(double)), *nd_v = calloc(N, sizeof(double));
    for (int i = 0; i < t.count; i++)
        for (size_t j = 0; j < t.params[i].numel; j++) {
            size_t k = t.params[i].offset + j;
            /* magnitudes 0.5..1, so decay (lr * wd * p per step) is far above the tolerance everywhere */
            int neg = test_rng_uniform(&rand_state, 0, 1) < 0.5;
            double mag = test_rng_uniform(&rand_state, 0.5, 1);
            host_p[k] = (float)(neg ? -mag : mag);
            ref_p[k] = nodecay_p[k] = host_p[k];
        }
    float *dev_p = ops->alloc(N * sizeof(float)), *dev_g = ops->alloc(N * sizeof(float));
    ops->from_host(dev_p, host_p, N * sizeof(float));

    struct loom_adamw opt;
    loom_adamw_init(&opt, ops, o, 0, N);
    const double lrs[3] = {1e-2, 2e-2, 5e-3}, scales[3] = {1.0, 0.7, 0.3};
    for (int step = 1; step <= 3; step++) {
        for (int i = 0; i < t.count; i++)
            for (size_t j = 0; j < t.params[i].numel; j++)
                host_g[t.params[i].offset + j] = (float)test_rng_uniform(&rand_state, -2, 2);
        ops->from_host(dev_g, host_g, N * sizeof(float));
        loom_adamw_step(&opt, &t, dev_p, dev_g, lrs[step - 1], scales[step - 1]);
        for (int i = 0; i < t.count; i++) {
            const struct loom_param *p = &t.params[i];
            double wd = want_decay(p->name, o) ? o->weight_decay : 0.0;
            ref_adamw(ref_p + p->offset, ref_m + p->offset, ref_v + p->offset, host_g + p->offset, p->numel,
                      lrs[step - 1], o->beta1, o->beta2, o->eps, wd, scales[step - 1], step);
            ref_adamw(nodecay_p + p->offset, nd_m + p->offset, nd_v + p->offset, host_g + p->offset, p->numel,
                      lrs[step - 1], o->beta1, o->beta2, o->eps, 0.0, scales[step - 1], step);
        }
    }
    ops->to_host(host_p, dev_p, N * sizeof(float));
    test_result(opt.step == 3, test_name("adamw_%s_step_count", label), "step %ld after 3 updates", opt.step);

    /* every element, first failing tensor named */
    const double atol = 1e-6, rtol = 1e-5;
    int ok = 1;
    double max_diff = 0, min_decay_effect[3] = {INFINITY, INFINITY, INFINITY};
    char detail[512] = "";
    for (int i = 0; i < t.count; i++) {
        const struct loom_param *p = &t.params[i];
        enum decay_kind k = kind_of(p->name);
        for (size_t j = 0; j < p->numel; j++) {
            size_t e = p->offset + j;
            double d = fabs((double)host_p[e] - ref_p[e]);
            if (d > max_diff) max_diff = d;
            if (d > atol + rtol * fabs(ref_p[e]) && ok) {
                ok = 0;
                snprintf(detail, sizeof detail, "%s[%zu]: got %.9g want %.9g (decay %s: would be %.9g)", p->name, j,
                         (double)host_p[e], ref_p[e], want_decay(p->name, o) ? "on" : "off", nodecay_p[e]);
            }
            double effect = fabs(ref_p[e] - nodecay_p[e]);
            if (want_decay(p->name, o) && effect < min_decay_effect[k]) min_decay_effect[k] = effect;
        }
    }
    test_result(ok, test_name("adamw_%s_three_steps_match_double", label), "%s (max |diff| %.3g)", detail, max_diff);
    /* the reference is discriminating: decay, where on, moves every element far beyond the tolerance */
    int visible = 1;
    for (int k = 0; k < 3; k++)
        if (min_decay_effect[k] != INFINITY && min_decay_effect[k] < 100 * atol) visible = 0;
    test_result(visible, test_name("adamw_%s_decay_effect_visible", label),
                "smallest decay effect: matrices %.3g norms %.3g embedding %.3g (want > %.3g)", min_decay_effect[0],
                min_decay_effect[1], min_decay_effect[2], 100 * atol);

    /* global gradient norm over the last gradients */
    double ss = 0;
    for (int i = 0; i < t.count; i++)
        for (size_t j = 0; j < t.params[i].numel; j++) {
            double g = host_g[t.params[i].offset + j];
            ss += g * g;
        }
    expect_value(test_name("grad_norm_%s", label), loom_grad_norm(ops, &t, dev_g), sqrt(ss), 1e-12);

    loom_adamw_free(&opt);
    ops->free(dev_p);
    ops->free(dev_g);
    free(host_p), free(host_g), free(ref_p), free(ref_m), free(ref_v), free(nodecay_p), free(nd_m), free(nd_v);
    loom_params_free(&t);
    loom_config_free(&cfg);
}

/* ---------------------------------------------------------------------------------------------- */
/* the parameter table                                                                              */

static void youtu_2b(struct loom_config *cfg) {
    loom_config_init(cfg);
    struct loom_model_config *m = &cfg->model;
    m->attention = LOOM_ATTENTION_MLA;
    m->vocab_size = 128256;
    m->hidden_size = 2048;
    m->num_layers = 32;
    m->num_heads = 16;
    m->q_lora_rank = 1536;
    m->kv_lora_rank = 512;
    m->qk_nope_head_dim = 128;
    m->qk_rope_head_dim = 64;
    m->v_head_dim = 128;
    m->intermediate_size = 6144;
    m->tie_word_embeddings = 1;
}

/* Offsets in order, 16-float aligned, non-overlapping, inside total. */
static void check_layout(const char *name, const struct loom_param_table *t) {
    int ok = 1;
    char detail[256] = "";
    size_t end = 0;
    for (int i = 0; i < t->count && ok; i++) {
        const struct loom_param *p = &t->params[i];
        if (p->offset % 16 != 0 || p->offset < end || p->numel != (size_t)loom_shape_numel(&p->shape)) {
            ok = 0;
            char shape[64];
            loom_shape_format(&p->shape, shape, sizeof shape);
            snprintf(detail, sizeof detail, "%s: offset %zu numel %zu %s, previous tensor ends at %zu", p->name,
                     p->offset, p->numel, shape, end);
        }
        end = p->offset + p->numel;
    }
    if (ok && end > t->total) {
        ok = 0;
        snprintf(detail, sizeof detail, "last tensor ends at %zu beyond total %zu", end, t->total);
    }
    test_result(ok, name, "%s", detail);
}

/* Which table expect_param / expect_absent are looking at, for check names. */
static const char *table_label = "";

/* The named tensor exists with this shape ([rows] when cols is 1). */
static void expect_param(const struct loom_param_table *t, const char *name, int64_t rows, int64_t cols) {
    int i = loom_params_find(t, name);
    struct loom_shape want = cols == 1 ? loom_shape_1d(rows) : loom_shape_2d(rows, cols);
    int ok = i >= 0 && loom_shape_equal(&t->params[i].shape, &want) && strcmp(t->params[i].name, name) == 0;
    char got_s[64] = "none", want_s[64];
    if (i >= 0) loom_shape_format(&t->params[i].shape, got_s, sizeof got_s);
    loom_shape_format(&want, want_s, sizeof want_s);
    test_result(ok, test_name("params_%s_find[%s]", table_label, name), "index %d, shape %s, want %s", i, got_s,
                want_s);
}

static void expect_absent(const struct loom_param_table *t, const char *name) {
    int i = loom_params_find(t, name);
    test_result(i == -1, test_name("params_%s_absent[%s]", table_label, name), "found at index %d", i);
}

static void test_params_youtu(void) {
    struct loom_config cfg;
    youtu_2b(&cfg);
    const int64_t V = 128256, C = 2048, L = 32, H = 16, F = 6144;
    const int64_t rq = 1536, rkv = 512, dn = 128, dr = 64, dv = 128;
    struct loom_param_table t;
    loom_params_build(&t, &cfg.model, &cfg.optim);
    table_label = "youtu_2b";

    struct loom_model_counts c;
    loom_model_count(&c, &t, &cfg.model, 4096);
    /* embedding + 32 layers x 53,090,304 + final norm */
    test_result(c.total_params == 1961560064LL, "params_youtu_2b_total", "got %lld want 1961560064",
                (long long)c.total_params);
    test_result(t.count == 1 + 12 * (int)L + 1, "params_youtu_2b_tensor_count", "got %d want %d", t.count,
                1 + 12 * (int)L + 1);
    check_layout("params_youtu_2b_layout", &t);

    expect_param(&t, "embed_tokens.weight", V, C);
    expect_param(&t, "norm.weight", C, 1);
    for (int l = 0; l < L; l += L - 1) {
        char n[LOOM_PARAM_NAME_MAX];
#define EXPECT(suffix, rows, cols)                                   \
    do {                                                             \
        snprintf(n, sizeof n, "layers.%d.%s", l, suffix);            \
        expect_param(&t, n, rows, cols);                             \
    } while (0)
        EXPECT("input_layernorm.weight", C, 1);
        EXPECT("self_attn.q_a_proj.weight", rq, C);
        EXPECT("self_attn.q_a_layernorm.weight", rq, 1);
        EXPECT("self_attn.q_b_proj.weight", H * (dn + dr), rq);
        EXPECT("self_attn.kv_a_proj_with_mqa.weight", rkv + dr, C);
        EXPECT("self_attn.kv_a_layernorm.weight", rkv, 1);
        EXPECT("self_attn.kv_b_proj.weight", H * (dn + dv), rkv);
        EXPECT("self_attn.o_proj.weight", C, H * dv);
        EXPECT("post_attention_layernorm.weight", C, 1);
        EXPECT("mlp.gate_proj.weight", F, C);
        EXPECT("mlp.up_proj.weight", F, C);
        EXPECT("mlp.down_proj.weight", C, F);
#undef EXPECT
    }
    expect_absent(&t, "lm_head.weight");
    expect_absent(&t, "layers.0.self_attn.q_proj.weight");
    expect_absent(&t, "layers.32.input_layernorm.weight");
    expect_absent(&t, "no_such.weight");
    loom_params_free(&t);

    /* untied: an LM head of the embedding's shape */
    cfg.model.tie_word_embeddings = 0;
    loom_params_build(&t, &cfg.model, &cfg.optim);
    table_label = "untied";
    loom_model_count(&c, &t, &cfg.model, 4096);
    expect_param(&t, "lm_head.weight", V, C);
    test_result(c.total_params == 1961560064LL + V * C, "params_untied_total", "got %lld want %lld",
                (long long)c.total_params, 1961560064LL + V * C);
    check_layout("params_untied_layout", &t);
    loom_params_free(&t);

    /* no query compression: q_proj straight from the hidden state */
    cfg.model.tie_word_embeddings = 1;
    cfg.model.q_lora_rank = 0;
    loom_params_build(&t, &cfg.model, &cfg.optim);
    table_label = "no_q_lora";
    loom_model_count(&c, &t, &cfg.model, 4096);
    expect_param(&t, "layers.0.self_attn.q_proj.weight", H * (dn + dr), C);
    expect_absent(&t, "layers.0.self_attn.q_a_proj.weight");
    expect_absent(&t, "layers.0.self_attn.q_a_layernorm.weight");
    expect_absent(&t, "layers.0.self_attn.q_b_proj.weight");
    int64_t want = 1961560064LL + L * (H * (dn + dr) * C - (rq * C + rq + H * (dn + dr) * rq));
    test_result(c.total_params == want, "params_no_q_lora_total", "got %lld want %lld", (long long)c.total_params,
                (long long)want);
    check_layout("params_no_q_lora_layout", &t);
    loom_params_free(&t);
    loom_config_free(&cfg);
}

/* ---------------------------------------------------------------------------------------------- */
/* initialisation                                                                                   */

static void init_model(struct loom_config *cfg, int64_t vocab) {
    tiny_mha(cfg);
    cfg->model.vocab_size = vocab;
    cfg->model.hidden_size = 64;
    cfg->model.intermediate_size = 256;
    cfg->model.init_std = 0.02;
    cfg->model.embed_init_std = 0.05;
}

static void test_params_init(void) {
    struct loom_config a_cfg, b_cfg;
    init_model(&a_cfg, 300);
    init_model(&b_cfg, 301);   /* a different embedding size shifts every later offset */
    struct loom_param_table a, b;
    loom_params_build(&a, &a_cfg.model, &a_cfg.optim);
    loom_params_build(&b, &b_cfg.model, &b_cfg.optim);
    float *pa = malloc(a.total * sizeof(float)), *pa2 = malloc(a.total * sizeof(float));
    float *pb = malloc(b.total * sizeof(float)), *pc = malloc(a.total * sizeof(float));
    loom_params_init(&a, pa, 7);
    loom_params_init(&a, pa2, 7);
    loom_params_init(&b, pb, 7);
    loom_params_init(&a, pc, 8);

    int same_run = 1;
    for (int i = 0; i < a.count; i++)
        same_run &= memcmp(pa + a.params[i].offset, pa2 + a.params[i].offset, a.params[i].numel * sizeof(float)) == 0;
    test_result(same_run, "params_init_deterministic", "two inits with seed 7 differ");

    /* tensor i has the same values in both tables (the embedding on its common rows) */
    int same_layout = a.count == b.count, moved = 0;
    const char *bad = "";
    for (int i = 0; i < a.count && same_layout; i++) {
        size_t n = a.params[i].numel < b.params[i].numel ? a.params[i].numel : b.params[i].numel;
        moved += a.params[i].offset != b.params[i].offset;
        if (memcmp(pa + a.params[i].offset, pb + b.params[i].offset, n * sizeof(float)) != 0)
            same_layout = 0, bad = a.params[i].name;
    }
    test_result(same_layout && moved > 0, "params_init_independent_of_offsets",
                "%s differs between tables whose offsets differ (%d tensors moved)", bad, moved);

    int seed_changes = 1, norms_ones = 1, stats_ok = 1;
    char detail[256] = "";
    for (int i = 0; i < a.count; i++) {
        const struct loom_param *p = &a.params[i];
        const float *x = pa + p->offset;
        if (p->init == LOOM_INIT_ONES) {
            for (size_t j = 0; j < p->numel; j++)
                if (x[j] != 1.0f) norms_ones = 0;
            continue;
        }
        int equal = 0;
        for (size_t j = 0; j < p->numel; j++) equal += x[j] == pc[p->offset + j];
        if (equal > 0) seed_changes = 0;
        double s = 0, s2 = 0;
        for (size_t j = 0; j < p->numel; j++) s += x[j], s2 += (double)x[j] * x[j];
        double n = (double)p->numel, mean = s / n, sd = sqrt(s2 / n - mean * mean);
        double want = strcmp(p->name, "embed_tokens.weight") == 0 ? 0.05 : 0.02;
        /* standard errors: mean std/sqrt(n), sample std std/sqrt(2n) */
        if ((fabs(sd - want) > 6 * want / sqrt(2 * n) || fabs(mean) > 6 * want / sqrt(n)) && stats_ok) {
            stats_ok = 0;
            snprintf(detail, sizeof detail, "%s (n %zu): mean %.5f std %.5f, want 0 and %.5f", p->name, p->numel, mean,
                     sd, want);
        }
    }
    test_result(norms_ones, "params_init_norms_are_ones", "a norm weight is not 1");
    test_result(seed_changes, "params_init_depends_on_seed", "seeds 7 and 8 give some equal values");
    test_result(stats_ok, "params_init_std", "%s", detail);

    free(pa), free(pa2), free(pb), free(pc);
    loom_params_free(&a);
    loom_params_free(&b);
    loom_config_free(&a_cfg);
    loom_config_free(&b_cfg);
}

/* ---------------------------------------------------------------------------------------------- */

int main(void) {
    test_warmup_and_decay();
    test_wsd();
    test_parse_anneal();
    test_clip();
    run_adamw("default", 0, 0);
    run_adamw("decay_norms", 1, 0);
    run_adamw("decay_embeddings", 0, 1);
    run_adamw("decay_all", 1, 1);
    test_params_youtu();
    test_params_init();
    return test_exit();
}
