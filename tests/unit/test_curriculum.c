/*
 * tests/unit/test_curriculum.c — sources, the curriculum, the sampler and the loss mask.
 *
 * Small shards are written into a temporary folder, each source with its own token range so a window
 * tells where it came from: web ids in [0, 100), code in [100, 200), small in [200, 300) (small is two
 * shards of 20 and 30 tokens, so it rolls over into new epochs all the time). Then:
 *   - the curriculum as a function of tokens: phase edges and ramps land at the exact token, the
 *     sequence length and batch switch at their boundaries;
 *   - the sampler: the global sample stream is bit-identical for dp = 1, 2, 3, 4 (each rank its own
 *     sampler reading only its slice), the realised mixture matches the weights within a binomial
 *     bound, the state saved mid-run continues the stream exactly (also under another dp), and a source
 *     read past its end starts a new, reshuffled epoch;
 *   - the plan: the closed-form integral equals a brute-force walk of the steps within a derived bound,
 *     and the sampler's drawn tokens match it within a statistical bound;
 *   - the loss mask: targets are -1 exactly where the shard's mask is 0 (and nowhere with loss_mask =
 *     all), the model's loss over masked targets equals its per-token losses summed over the kept
 *     tokens, and an all-masked batch counts 0 tokens, returns 0 and leaves zero gradients;
 *   - bad input (weights, phases, batch schedule, missing or corrupt shards) exits 2 naming the key or
 *     the file, each in a forked child.
 */
#define _XOPEN_SOURCE 700

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/config.h"
#include "core/error.h"
#include "data/curriculum.h"
#include "data/prefetch.h"
#include "data/sampler.h"
#include "data/shard.h"
#include "model/model.h"
#include "model/ops.h"
#include "tests/test.h"

static char g_dir[64];

enum { VOCAB = 300, FRAME = 64 };

/* the shards' contents, kept to check windows against */
enum { WEB0 = 3000, WEB1 = 2500, CODE0 = 2000, CODE1 = 1700, SMALL_A = 20, SMALL_B = 30, MASKED = 4000 };
static int32_t g_small_a[SMALL_A], g_small_b[SMALL_B];
static int32_t g_masked[MASKED];
static uint8_t g_masked_bits[MASKED];

/* ---------------------------------------------------------------------------------------------- */
/* helpers                                                                                         */

static void write_shard(const char *path, const int32_t *tokens, const uint8_t *mask, int64_t n, int64_t doc_len) {
    struct loom_shard_writer *w = mask ? loom_shard_writer_open_masked(path, VOCAB, 0x1234, FRAME)
                                       : loom_shard_writer_open(path, VOCAB, 0x1234, FRAME);
    for (int64_t i = 0; i < n; i += doc_len) {
        int64_t k = n - i < doc_len ? n - i : doc_len;
        if (mask) loom_shard_writer_append_masked(w, tokens + i, mask + i, (size_t)k);
        else loom_shard_writer_append(w, tokens + i, (size_t)k);
        loom_shard_writer_end_document(w);
    }
    loom_shard_writer_close(w);
}

static void make_data(void) {
    char path[256];
    int32_t *buf = malloc_check(sizeof(int32_t) * 4000);
    int sizes_web[2] = {WEB0, WEB1}, sizes_code[2] = {CODE0, CODE1};
    snprintf(path, sizeof path, "%s/small", g_dir);
    CHECK(mkdir(path, 0755) == 0, "mkdir %s", path);
    for (int j = 0; j < 2; j++) {
        for (int i = 0; i < sizes_web[j]; i++) buf[i] = (i * 7 + j * 13) % 100;
        snprintf(path, sizeof path, "%s/web-%d.tok", g_dir, j);
        write_shard(path, buf, NULL, sizes_web[j], 300);
        for (int i = 0; i < sizes_code[j]; i++) buf[i] = 100 + (i * 11 + j * 5) % 100;
        snprintf(path, sizeof path, "%s/code-%d.tok", g_dir, j);
        write_shard(path, buf, NULL, sizes_code[j], 250);
    }
    for (int i = 0; i < SMALL_A; i++) g_small_a[i] = 200 + i;
    for (int i = 0; i < SMALL_B; i++) g_small_b[i] = 220 + i;
    snprintf(path, sizeof path, "%s/small/small-a.tok", g_dir);
    write_shard(path, g_small_a, NULL, SMALL_A, 7);
    snprintf(path, sizeof path, "%s/small/small-b.tok", g_dir);
    write_shard(path, g_small_b, NULL, SMALL_B, 11);
    /* a trajectory-like shard: runs of context (mask 0) and assistant tokens (mask 1) of varying length */
    for (int i = 0; i < MASKED; i++) {
        g_masked[i] = (i * 13 + 1) % VOCAB;
        g_masked_bits[i] = (uint8_t)((i / 7 + i / 23) % 3 == 2);
    }
    snprintf(path, sizeof path, "%s/masked.tok", g_dir);
    write_shard(path, g_masked, g_masked_bits, MASKED, 97);
    /* the same tokens with no mask at all, and a shard where nothing counts */
    snprintf(path, sizeof path, "%s/plain.tok", g_dir);
    write_shard(path, g_masked, NULL, MASKED, 97);
    uint8_t zeros[500] = {0};
    snprintf(path, sizeof path, "%s/allmasked.tok", g_dir);
    write_shard(path, g_masked, zeros, 500, 50);
    free(buf);
}

/* cfg = defaults + the INI text (printf format; %1$s may appear and is g_dir) */
static void cfg_load(struct loom_config *cfg, const char *fmt, ...) {
    char text[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    loom_config_init(cfg);
    loom_config_load_string(cfg, text, "test.ini");
}

static const char *SOURCES3 =
    "[source.web]\nshards = %1$s/web-*.tok\n"
    "[source.code]\nshards = %1$s/code-0.tok, %1$s/code-1.tok\n"
    "[source.small]\nshards = %1$s/small\n";

/* the token range a window of source k lies in */
static int window_from(const int *in, int64_t T, int k) {
    for (int64_t t = 0; t < T; t++)
        if (in[t] < 100 * k || in[t] >= 100 * k + 100) return 0;
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* the curriculum as a function of tokens                                                          */

static int weights_equal(const double *a, const double *b, int n, double tol) {
    for (int i = 0; i < n; i++)
        if (fabs(a[i] - b[i]) > tol) return 0;
    return 1;
}

static void test_phase_edges(void) {
    struct loom_config cfg;
    cfg_load(&cfg,
             "[train]\nseq_len = 16\nmicro_batch = 4\nglobal_batch = 4\nbatch_schedule = 2000:8, 5000:16\n"
             "[model]\nrope_theta = 10000\n"
             "[source.x]\ntokens = 1M\n[source.y]\ntokens = 1M\n"
             "[curriculum]\nphases = a, b, c\n"
             "[phase.a]\nuntil = 1000\nweights = x:3, y:1\n"
             "[phase.b]\nuntil = 3000\nramp = 500\nseq_len = 64\nrope_theta = 500000\nweights = x:0.1, y:0.9\n"
             "[phase.c]\nweights = y:1\n");
    struct loom_curriculum c;
    loom_curriculum_build(&c, &cfg, NULL);
    const double a[2] = {0.75, 0.25}, b[2] = {0.1, 0.9}, cc[2] = {0, 1};
    double w[2];
    int ok = 1;
    char why[256] = "";
    int64_t exact_a[] = {0, 1, 500, 999, 1000};
    for (size_t i = 0; i < sizeof exact_a / sizeof *exact_a; i++) {
        loom_curriculum_weights_at(&c, exact_a[i], w);
        if (w[0] != a[0] || w[1] != a[1]) {
            ok = 0;
            snprintf(why, sizeof why, "at %lld: %.17g %.17g, want phase a's 0.75 0.25", (long long)exact_a[i], w[0],
                     w[1]);
        }
    }
    test_result(ok, "curriculum/weights_before_edge", "%s", why);

    /* inside the ramp: exactly (1 - alpha) a + alpha b with alpha = (t - 1000) / 500 */
    ok = 1;
    int64_t inside[] = {1001, 1100, 1250, 1499};
    for (size_t i = 0; i < sizeof inside / sizeof *inside; i++) {
        double alpha = (double)(inside[i] - 1000) / 500.0, want[2];
        for (int s = 0; s < 2; s++) want[s] = (1 - alpha) * a[s] + alpha * b[s];
        loom_curriculum_weights_at(&c, inside[i], w);
        if (!weights_equal(w, want, 2, 1e-15) || w[0] == a[0]) {
            ok = 0;
            snprintf(why, sizeof why, "at %lld: %.17g %.17g, want %.17g %.17g", (long long)inside[i], w[0], w[1],
                     want[0], want[1]);
        }
    }
    test_result(ok, "curriculum/ramp_linear", "%s", why);
    loom_curriculum_weights_at(&c, 1250, w);
    test_result(fabs(w[0] - 0.425) <= 1e-15 && fabs(w[1] - 0.575) <= 1e-15, "curriculum/ramp_midpoint",
                "weights at 1250 (ramp midpoint) %.17g %.17g, want 0.425 0.575", w[0], w[1]);

    ok = 1;
    int64_t exact_b[] = {1500, 1501, 2999};
    for (size_t i = 0; i < sizeof exact_b / sizeof *exact_b; i++) {
        loom_curriculum_weights_at(&c, exact_b[i], w);
        if (w[0] != b[0] || w[1] != b[1]) {
            ok = 0;
            snprintf(why, sizeof why, "at %lld: %.17g %.17g, want phase b's 0.1 0.9", (long long)exact_b[i], w[0],
                     w[1]);
        }
    }
    test_result(ok, "curriculum/weights_after_ramp", "%s", why);
    loom_curriculum_weights_at(&c, 3000, w);
    double w2[2];
    loom_curriculum_weights_at(&c, (int64_t)1e15, w2);
    test_result(weights_equal(w, cc, 2, 0) && weights_equal(w2, cc, 2, 0), "curriculum/step_edge",
                "phase c (no ramp) at 3000: %g %g, at 1e15: %g %g; want 0 1", w[0], w[1], w2[0], w2[1]);

    int p[6] = {loom_curriculum_phase_at(&c, 0),    loom_curriculum_phase_at(&c, 999),
                loom_curriculum_phase_at(&c, 1000), loom_curriculum_phase_at(&c, 2999),
                loom_curriculum_phase_at(&c, 3000), loom_curriculum_phase_at(&c, INT64_MAX - 1)};
    test_result(p[0] == 0 && p[1] == 0 && p[2] == 1 && p[3] == 1 && p[4] == 2 && p[5] == 2, "curriculum/phase_at",
                "phases at 0 999 1000 2999 3000 max: %d %d %d %d %d %d, want 0 0 1 1 2 2", p[0], p[1], p[2], p[3],
                p[4], p[5]);
    int64_t sl[4] = {loom_curriculum_seq_len_at(&c, 999), loom_curriculum_seq_len_at(&c, 1000),
                     loom_curriculum_seq_len_at(&c, 2999), loom_curriculum_seq_len_at(&c, 3000)};
    test_result(sl[0] == 16 && sl[1] == 64 && sl[2] == 64 && sl[3] == 16, "curriculum/seq_len_at",
                "seq_len at 999 1000 2999 3000: %lld %lld %lld %lld, want 16 64 64 16", (long long)sl[0],
                (long long)sl[1], (long long)sl[2], (long long)sl[3]);
    double rt[3] = {loom_curriculum_rope_theta_at(&c, 999), loom_curriculum_rope_theta_at(&c, 1000),
                    loom_curriculum_rope_theta_at(&c, 3000)};
    test_result(rt[0] == 10000 && rt[1] == 500000 && rt[2] == 10000, "curriculum/rope_theta_at",
                "rope_theta at 999 1000 3000: %g %g %g, want 10000 500000 10000", rt[0], rt[1], rt[2]);
    int64_t bt[5] = {loom_curriculum_batch_at(&c, 0), loom_curriculum_batch_at(&c, 1999),
                     loom_curriculum_batch_at(&c, 2000), loom_curriculum_batch_at(&c, 4999),
                     loom_curriculum_batch_at(&c, 5000)};
    test_result(bt[0] == 4 && bt[1] == 4 && bt[2] == 8 && bt[3] == 8 && bt[4] == 16, "curriculum/batch_at",
                "batch at 0 1999 2000 4999 5000: %lld %lld %lld %lld %lld, want 4 4 8 8 16", (long long)bt[0],
                (long long)bt[1], (long long)bt[2], (long long)bt[3], (long long)bt[4]);
    test_result(loom_curriculum_max_seq_len(&c) == 64 && loom_curriculum_max_batch(&c) == 16, "curriculum/maxima",
                "max seq_len %lld (want 64), max batch %lld (want 16)", (long long)loom_curriculum_max_seq_len(&c),
                (long long)loom_curriculum_max_batch(&c));
    loom_config_free(&cfg);
}

/* ---------------------------------------------------------------------------------------------- */
/* the sample stream under several data-parallel layouts                                           */

struct rec {
    int *in, *tg, *src;
    size_t nin, nsrc, cap_in, cap_src;
};

static void rec_reserve(struct rec *r, size_t in, size_t src) {
    if (r->nin + in > r->cap_in) {
        r->cap_in = 2 * (r->nin + in);
        r->in = realloc(r->in, sizeof(int) * r->cap_in);
        r->tg = realloc(r->tg, sizeof(int) * r->cap_in);
        CHECK(r->in && r->tg, "out of memory");
    }
    if (r->nsrc + src > r->cap_src) {
        r->cap_src = 2 * (r->nsrc + src);
        r->src = realloc(r->src, sizeof(int) * r->cap_src);
        CHECK(r->src, "out of memory");
    }
}

static void rec_free(struct rec *r) {
    free(r->in);
    free(r->tg);
    free(r->src);
    memset(r, 0, sizeof *r);
}

/* rec b equals rec a from sample offset a_src / token offset a_in on */
static int rec_tail_equal(const struct rec *a, size_t a_in, size_t a_src, const struct rec *b) {
    return a->nin - a_in == b->nin && a->nsrc - a_src == b->nsrc &&
           memcmp(a->in + a_in, b->in, sizeof(int) * b->nin) == 0 &&
           memcmp(a->tg + a_in, b->tg, sizeof(int) * b->nin) == 0 &&
           memcmp(a->src + a_src, b->src, sizeof(int) * b->nsrc) == 0;
}

/* `steps` global batches as dp ranks, each with its own sampler (opened fresh, state set to *start when
 * given) reading only its slice; the shape of each step comes from the curriculum at the tokens consumed,
 * as the prefetch thread does. Appends the concatenated slices to rec; *end = the state after (every rank
 * must agree on it after every step, else *agree = 0). */
static void run_dp(const struct loom_config *cfg, const struct loom_curriculum *c, const struct loom_sampler_state *start,
                   int steps, int dp, struct rec *rec, struct loom_sampler_state *end, int *agree) {
    struct loom_sampler s[4];
    for (int r = 0; r < dp; r++) {
        loom_sampler_open(&s[r], cfg, 0);
        if (start) s[r].state = *start;
    }
    for (int step = 0; step < steps; step++) {
        int64_t T = loom_curriculum_seq_len_at(c, s[0].state.tokens), B = loom_curriculum_batch_at(c, s[0].state.tokens);
        rec_reserve(rec, (size_t)(B * T), (size_t)B);
        for (int r = 0; r < dp; r++) {
            int64_t r0 = B * r / dp, r1 = B * (r + 1) / dp;
            loom_sampler_next_batch(&s[r], c, B, T, r0, r1, rec->in + rec->nin + r0 * T, rec->tg + rec->nin + r0 * T,
                                    rec->src + rec->nsrc + r0);
        }
        for (int r = 1; r < dp; r++)
            if (memcmp(&s[r].state, &s[0].state, sizeof s[0].state) != 0) *agree = 0;
        rec->nin += (size_t)(B * T);
        rec->nsrc += (size_t)B;
    }
    if (end) *end = s[0].state;
    for (int r = 0; r < dp; r++) loom_sampler_close(&s[r]);
}

static void test_layouts(void) {
    struct loom_config cfg;
    char fmt[2048];
    /* phase b starts inside step 3 (tokens 384..511 at T = 16) with a ramp, then sets seq_len 32; the
     * batch grows from 8 to 12 at 600 tokens */
    snprintf(fmt, sizeof fmt, "%s%s", SOURCES3,
             "[train]\nseed = 11\nseq_len = 16\nmicro_batch = 4\nglobal_batch = 8\nbatch_schedule = 600:12\n"
             "[model]\nvocab_size = 320\n"
             "[curriculum]\nphases = a, b\n"
             "[phase.a]\nuntil = 400\nweights = web:0.5, code:0.3, small:0.2\n"
             "[phase.b]\nramp = 300\nseq_len = 32\nweights = web:0.2, code:0.3, small:0.5\n");
    cfg_load(&cfg, fmt, g_dir);
    struct loom_curriculum c;
    loom_curriculum_build(&c, &cfg, NULL);
    enum { STEPS = 10, MID = 4 };

    struct rec one = {0};
    struct loom_sampler_state end1;
    int agree = 1;
    run_dp(&cfg, &c, NULL, STEPS, 1, &one, &end1, &agree);

    /* the stream itself is sensible: sources vary, every window comes from its source's token range, and
     * the sample count and tokens are those of the schedule */
    int seen[3] = {0}, ranges = 1;
    size_t off = 0;
    for (size_t i = 0; i < one.nsrc; i++)
        if (one.src[i] >= 0 && one.src[i] < 3) seen[one.src[i]]++;
    /* walk the steps again to know each sample's T */
    {
        int64_t tokens = 0;
        size_t g = 0;
        for (int step = 0; step < STEPS; step++) {
            int64_t T = loom_curriculum_seq_len_at(&c, tokens), B = loom_curriculum_batch_at(&c, tokens);
            for (int64_t i = 0; i < B; i++, g++) {
                if (!window_from(one.in + off, T, one.src[g])) ranges = 0;
                off += (size_t)T;
            }
            tokens += B * T;
        }
        test_result(g == one.nsrc && off == one.nin && end1.sample == (int64_t)g && end1.tokens == tokens &&
                        tokens == loom_run_tokens(&c, STEPS),
                    "sampler/state_counts", "%zu samples %zu tokens recorded, state sample %lld tokens %lld, want %zu %lld",
                    one.nsrc, one.nin, (long long)end1.sample, (long long)end1.tokens, g, (long long)tokens);
    }
    test_result(seen[0] && seen[1] && seen[2], "sampler/sources_vary", "samples per source %d %d %d", seen[0],
                seen[1], seen[2]);
    test_result(ranges, "sampler/window_from_its_source", "a window's tokens are outside its source's id range");
    int shifted = 1;
    for (size_t i = 0; i + 1 < one.nin; i++)
        if (one.tg[i] < 0) shifted = 0;
    test_result(shifted, "sampler/no_mask_no_ignored_targets", "an unmasked source gave a -1 target");

    for (int dp = 2; dp <= 4; dp++) {
        struct rec r = {0};
        struct loom_sampler_state e;
        int ag = 1;
        run_dp(&cfg, &c, NULL, STEPS, dp, &r, &e, &ag);
        char name[64];
        snprintf(name, sizeof name, "sampler/dp%d_identical", dp);
        int same = rec_tail_equal(&one, 0, 0, &r) && memcmp(&e, &end1, sizeof e) == 0;
        size_t first = 0;
        while (first < r.nin && first < one.nin && r.in[first] == one.in[first]) first++;
        test_result(same && ag, name, "%zu/%zu samples, first differing input token %zu, ranks agree on state: %d",
                    r.nsrc, one.nsrc, first, ag);
        rec_free(&r);
    }

    /* save mid-way, keep drawing, then a fresh sampler restored from the copy continues identically */
    struct rec head = {0};
    struct loom_sampler_state mid;
    run_dp(&cfg, &c, NULL, MID, 1, &head, &mid, &agree);
    test_result(memcmp(one.in, head.in, sizeof(int) * head.nin) == 0 &&
                    memcmp(one.tg, head.tg, sizeof(int) * head.nin) == 0 &&
                    memcmp(one.src, head.src, sizeof(int) * head.nsrc) == 0,
                "sampler/rerun_same_prefix", "a second run's first %d batches differ", MID);
    for (int dp = 1; dp <= 4; dp++) {
        struct rec tail = {0};
        struct loom_sampler_state e;
        int ag = 1;
        run_dp(&cfg, &c, &mid, STEPS - MID, dp, &tail, &e, &ag);
        char name[64];
        snprintf(name, sizeof name, dp == 1 ? "sampler/resume_same_continuation" : "sampler/resume_dp%d_same", dp);
        test_result(ag && rec_tail_equal(&one, head.nin, head.nsrc, &tail) && memcmp(&e, &end1, sizeof e) == 0, name,
                    "restored at sample %lld: %zu samples after, want %zu; streams or end states differ",
                    (long long)mid.sample, tail.nsrc, one.nsrc - head.nsrc);
        rec_free(&tail);
    }
    /* and the state is what matters: a sampler restored from another point does not continue like that */
    {
        struct loom_sampler_state other = mid;
        other.cursor[0] += 1;
        struct rec tail = {0};
        int ag = 1;
        run_dp(&cfg, &c, &other, STEPS - MID, 1, &tail, NULL, &ag);
        test_result(!rec_tail_equal(&one, head.nin, head.nsrc, &tail), "sampler/state_matters",
                    "moving web's cursor by one token did not change the continuation");
        rec_free(&tail);
    }
    rec_free(&head);
    rec_free(&one);
    loom_config_free(&cfg);
}

/* the realised mixture against the weights: a binomial bound per source */
static void test_mixture(void) {
    struct loom_config cfg;
    char fmt[2048];
    snprintf(fmt, sizeof fmt, "%s%s", SOURCES3,
             "[source.unused]\nshards = %1$s/plain.tok\n"
             "[train]\nseed = 5\nseq_len = 16\nmicro_batch = 8\nglobal_batch = 8\n[model]\nvocab_size = 320\n"
             "[curriculum]\nphases = only\n[phase.only]\nweights = web:0.6, code:0.3, small:0.1, unused:0\n");
    cfg_load(&cfg, fmt, g_dir);
    struct loom_curriculum c;
    loom_curriculum_build(&c, &cfg, NULL);
    struct loom_sampler s;
    loom_sampler_open(&s, &cfg, 0);
    enum { N = 4000, B = 8, T = 16 };
    int *in = malloc_check(sizeof(int) * B * T), *tg = malloc_check(sizeof(int) * B * T), src[B];
    long count[4] = {0};
    int ranges = 1;
    for (int k = 0; k < N / B; k++) {
        loom_sampler_next_batch(&s, &c, B, T, 0, B, in, tg, src);
        for (int i = 0; i < B; i++) {
            count[src[i]]++;
            if (src[i] < 3 && !window_from(in + i * T, T, src[i])) ranges = 0;
        }
    }
    const double w[4] = {0.6, 0.3, 0.1, 0};
    const char *names[4] = {"web", "code", "small", "unused"};
    for (int k = 0; k < 4; k++) {
        double mean = N * w[k], bound = 5 * sqrt(N * w[k] * (1 - w[k])) + 1;
        char name[64];
        snprintf(name, sizeof name, "sampler/mixture_%s", names[k]);
        test_result(fabs(count[k] - mean) <= bound, name, "%ld of %d samples, want %.0f +- %.1f (5 sigma + 1)",
                    count[k], N, mean, bound);
    }
    test_result(ranges, "sampler/mixture_windows_from_source", "a window's tokens are outside its source's range");
    free(in);
    free(tg);
    loom_sampler_close(&s);
    loom_config_free(&cfg);
}

/* a step edge inside a global batch: each sample takes the mixture at its own token position, so with
 * phase a all web and phase b all code, samples starting before 200 are web and the rest code */
static void test_edge_in_batch(void) {
    struct loom_config cfg;
    char fmt[2048];
    snprintf(fmt, sizeof fmt, "%s%s", SOURCES3,
             "[train]\nseed = 4\nseq_len = 16\nmicro_batch = 32\nglobal_batch = 32\n[model]\nvocab_size = 320\n"
             "[curriculum]\nphases = a, b\n[phase.a]\nuntil = 200\nweights = web:1\n[phase.b]\nweights = code:1\n");
    cfg_load(&cfg, fmt, g_dir);
    struct loom_curriculum c;
    loom_curriculum_build(&c, &cfg, NULL);
    struct loom_sampler s;
    loom_sampler_open(&s, &cfg, 0);
    enum { B = 32, T = 16 };
    int *in = malloc_check(sizeof(int) * B * T), *tg = malloc_check(sizeof(int) * B * T), src[B];
    loom_sampler_next_batch(&s, &c, B, T, 0, B, in, tg, src);
    int ok = 1, bad = -1;
    for (int i = 0; i < B; i++)
        if (src[i] != (i * T < 200 ? 0 : 1)) ok = 0, bad = i;
    test_result(ok, "sampler/edge_inside_batch", "sample %d at token %d came from source %d, want %d", bad, bad * T,
                bad >= 0 ? src[bad] : -1, bad * T < 200 ? 0 : 1);
    free(in);
    free(tg);
    loom_sampler_close(&s);
    loom_config_free(&cfg);
}

/* a small source read past its end: new epoch from cursor 0, a reshuffled shard order, and on */
static void test_epochs(void) {
    struct loom_config cfg;
    cfg_load(&cfg,
             "[source.small]\nshards = %1$s/small\n[train]\nseed = 3\nseq_len = 16\nmicro_batch = 1\n"
             "global_batch = 1\n[model]\nvocab_size = 320\n",
             g_dir);
    struct loom_curriculum c;
    loom_curriculum_build(&c, &cfg, NULL);
    struct loom_sampler s;
    loom_sampler_open(&s, &cfg, 0);
    enum { T = 16, DRAWS = 30 };
    int32_t ab[SMALL_A + SMALL_B], ba[SMALL_A + SMALL_B];
    memcpy(ab, g_small_a, sizeof g_small_a);
    memcpy(ab + SMALL_A, g_small_b, sizeof g_small_b);
    memcpy(ba, g_small_b, sizeof g_small_b);
    memcpy(ba + SMALL_B, g_small_a, sizeof g_small_a);
    int in[T], tg[T], src;
    int ok_state = 1, ok_window = 1, orders_seen = 0, order = -1;
    char why[256] = "";
    for (int d = 0; d < DRAWS; d++) {
        int64_t cur = s.state.cursor[0], ep = s.state.epoch[0];
        int roll = cur + T + 1 > SMALL_A + SMALL_B;
        int64_t want_start = roll ? 0 : cur, want_epoch = roll ? ep + 1 : ep;
        loom_sampler_next_batch(&s, &c, 1, T, 0, 1, in, tg, &src);
        if (s.state.epoch[0] != want_epoch || s.state.cursor[0] != want_start + T) {
            ok_state = 0;
            snprintf(why, sizeof why, "draw %d from cursor %lld epoch %lld: now cursor %lld epoch %lld, want %lld %lld",
                     d, (long long)cur, (long long)ep, (long long)s.state.cursor[0], (long long)s.state.epoch[0],
                     (long long)(want_start + T), (long long)want_epoch);
        }
        /* the window is tokens [start, start + T] of this epoch's shard order, the same order all epoch */
        int match_ab = 1, match_ba = 1;
        for (int t = 0; t < T; t++) {
            match_ab &= in[t] == ab[want_start + t] && tg[t] == ab[want_start + t + 1];
            match_ba &= in[t] == ba[want_start + t] && tg[t] == ba[want_start + t + 1];
        }
        if (roll || d == 0) order = match_ab ? 0 : match_ba ? 1 : -1;
        if (order >= 0) orders_seen |= 1 << order;
        if (order < 0 || !(order == 0 ? match_ab : match_ba)) {
            ok_window = 0;
            snprintf(why, sizeof why, "draw %d (epoch %lld, cursor %lld): window starts %d %d %d, not the epoch's order",
                     d, (long long)want_epoch, (long long)want_start, in[0], in[1], in[2]);
        }
    }
    test_result(ok_state && s.state.epoch[0] >= 9, "sampler/epoch_rollover", "%s (epochs reached %lld)", why,
                (long long)s.state.epoch[0]);
    test_result(ok_window, "sampler/epoch_windows", "%s", why);
    /* with seed 3 both orders of the two shards occur over the 10 epochs (chance of one order only: 2^-9) */
    test_result(orders_seen == 3, "sampler/epoch_reshuffled", "shard orders seen (bit 0: a,b; bit 1: b,a): %d",
                orders_seen);
    loom_sampler_close(&s);
    loom_config_free(&cfg);
}

/* ---------------------------------------------------------------------------------------------- */
/* the plan: closed form against a brute-force walk and against the sampler                        */

static void test_plan(void) {
    struct loom_config cfg;
    char fmt[2048];
    /* three phases, the second with a ramp and seq_len 32, the third ramping back with seq_len 16; the
     * batch grows inside phase b (4 -> 8) and again inside phase c (8 -> 12) */
    snprintf(fmt, sizeof fmt, "%s%s", SOURCES3,
             "[train]\nseed = 9\nseq_len = 16\nmicro_batch = 4\nglobal_batch = 4\n"
             "batch_schedule = 50000:8, 130000:12\n[model]\nvocab_size = 320\n"
             "[curriculum]\nphases = a, b, c\n"
             "[phase.a]\nuntil = 40000\nweights = web:0.6, code:0.3, small:0.1\n"
             "[phase.b]\nuntil = 120000\nramp = 30000\nseq_len = 32\nweights = web:0.2, code:0.3, small:0.5\n"
             "[phase.c]\nramp = 20000\nweights = web:0.1, code:0.8, small:0.1\n");
    cfg_load(&cfg, fmt, g_dir);
    struct loom_curriculum c;
    loom_curriculum_build(&c, &cfg, NULL);
    const int S = 3;
    enum { STEPS = 1500 };
    int64_t total = loom_run_tokens(&c, STEPS);

    /* Brute force, as the trainer walks: sample i of a step starting at `tokens` sits at tokens + i T and
     * adds T w(position) to each source. Sample j covers [p_j, p_j + T_j) and these intervals tile
     * [0, total), so its error against the integral over its interval is
     *   |T_j w(p_j) - ∫ w| <= T_j * (variation of w_s on [p_j, p_j + T_j)),
     * and the variations of disjoint intervals add up to at most the total variation of w_s. Hence
     *   |brute_s - closed_s| <= T_max * TV(w_s),   TV(w_s) = sum over phase changes of |w_s(new) - w_s(old)|
     * (a ramp is monotone, so it varies by the same amount as a step). This holds at every step boundary,
     * not just the end. T_max = 32 and TV <= 0.8 here, so the bound is at most 26 tokens out of ~10^5,
     * while a ramp integrated as a step would be off by |dw| ramp / 2 (6000 tokens for web and small in
     * phase b's ramp); plan/bound_detects_ramp_errors checks that such an error would exceed the bound. */
    double tv[LOOM_MAX_SOURCES] = {0};
    for (int p = 1; p < c.nphases; p++)
        for (int s = 0; s < S; s++) tv[s] += fabs(c.phases[p].weights[s] - c.phases[p - 1].weights[s]);
    int64_t Tmax = loom_curriculum_max_seq_len(&c);
    double brute[LOOM_MAX_SOURCES] = {0}, var[LOOM_MAX_SOURCES] = {0}, closed[LOOM_MAX_SOURCES];
    int64_t tokens = 0, samples = 0;
    double worst = 0, worst_bound = 0;
    int ok = 1, worst_s = 0;
    int64_t worst_at = 0;
    char why[256] = "";
    for (int step = 0; step < STEPS; step++) {
        int64_t T = loom_curriculum_seq_len_at(&c, tokens), B = loom_curriculum_batch_at(&c, tokens);
        for (int64_t i = 0; i < B; i++) {
            double w[LOOM_MAX_SOURCES];
            loom_curriculum_weights_at(&c, tokens + i * T, w);
            for (int s = 0; s < S; s++) {
                brute[s] += (double)T * w[s];
                var[s] += (double)T * (double)T * w[s] * (1 - w[s]);
            }
        }
        samples += B;
        tokens += B * T;
        loom_curriculum_integrate(&c, 0, tokens, closed);
        for (int s = 0; s < S; s++) {
            double d = fabs(brute[s] - closed[s]), bound = (double)Tmax * tv[s] + 1e-6;
            if (d - bound > worst - worst_bound) worst = d, worst_bound = bound, worst_s = s, worst_at = tokens;
            if (d > bound) ok = 0;
        }
    }
    snprintf(why, sizeof why, "source %d at %lld tokens: brute %.3f closed %.3f, |diff| %.3f > bound %.3f", worst_s,
             (long long)worst_at, brute[worst_s], closed[worst_s], worst, worst_bound);
    test_result(ok && tokens == total, "plan/closed_form_matches_brute_force", "%s (run tokens %lld, walked %lld)", why,
                (long long)total, (long long)tokens);
    double sum = 0;
    for (int s = 0; s < S; s++) sum += closed[s];
    test_result(fabs(sum - (double)total) <= 1e-6 * (double)total, "plan/closed_form_sums_to_tokens",
                "sources sum to %.3f, run has %lld tokens", sum, (long long)total);
    /* the bound is tight enough to catch a ramp treated as a step */
    double stepwise[LOOM_MAX_SOURCES] = {0};
    for (int p = 0; p < c.nphases; p++) {
        int64_t a = c.phases[p].start, b = c.phases[p].end < total ? c.phases[p].end : total;
        for (int s = 0; s < S; s++) stepwise[s] += c.phases[p].weights[s] * (double)(b - a);
    }
    double miss = 0;
    for (int s = 0; s < S; s++) miss = fmax(miss, fabs(stepwise[s] - brute[s]) - ((double)Tmax * tv[s]));
    test_result(miss > 1000, "plan/bound_detects_ramp_errors",
                "ignoring the ramps changes the totals by only %.1f tokens beyond the bound", miss);

    /* Per-phase figures as `loom data plan` prints them add up to the whole. */
    double parts[LOOM_MAX_SOURCES] = {0}, part[LOOM_MAX_SOURCES];
    for (int p = 0; p < c.nphases; p++) {
        int64_t b = c.phases[p].end < total ? c.phases[p].end : total;
        loom_curriculum_integrate(&c, c.phases[p].start, b, part);
        for (int s = 0; s < S; s++) parts[s] += part[s];
    }
    test_result(fabs(parts[0] - closed[0]) < 1e-6 && fabs(parts[1] - closed[1]) < 1e-6 &&
                    fabs(parts[2] - closed[2]) < 1e-6,
                "plan/phases_add_up", "per-phase sums %.3f %.3f %.3f, whole %.3f %.3f %.3f", parts[0], parts[1],
                parts[2], closed[0], closed[1], closed[2]);

    /* The sampler's drawn tokens: E = brute_s, Var = sum T^2 w (1 - w) over samples (independent draws),
     * so |drawn - closed| <= 5 sigma + T_max TV. */
    struct loom_sampler smp;
    loom_sampler_open(&smp, &cfg, 0);
    int64_t Bmax = loom_curriculum_max_batch(&c);
    int *in = malloc_check(sizeof(int) * Bmax * Tmax), *tg = malloc_check(sizeof(int) * Bmax * Tmax);
    int *src = malloc_check(sizeof(int) * Bmax);
    double drawn[LOOM_MAX_SOURCES] = {0};
    for (int step = 0; step < STEPS; step++) {
        int64_t T = loom_curriculum_seq_len_at(&c, smp.state.tokens), B = loom_curriculum_batch_at(&c, smp.state.tokens);
        loom_sampler_next_batch(&smp, &c, B, T, 0, B, in, tg, src);
        for (int64_t i = 0; i < B; i++) drawn[src[i]] += (double)T;
    }
    ok = 1;
    why[0] = 0;
    for (int s = 0; s < S; s++) {
        double bound = 5 * sqrt(var[s]) + (double)Tmax * tv[s];
        if (fabs(drawn[s] - closed[s]) > bound) {
            ok = 0;
            snprintf(why, sizeof why, "source %d: drew %.0f tokens, plan %.1f, bound %.1f", s, drawn[s], closed[s],
                     bound);
        }
    }
    test_result(ok && smp.state.tokens == total && samples == smp.state.sample, "plan/sampler_draws_match_plan",
                "%s (sampler at %lld tokens, %lld samples; run %lld, %lld)", why, (long long)smp.state.tokens,
                (long long)smp.state.sample, (long long)total, (long long)samples);
    free(in);
    free(tg);
    free(src);
    loom_sampler_close(&smp);
    loom_config_free(&cfg);
}

/* ---------------------------------------------------------------------------------------------- */
/* the loss mask                                                                                   */

static const char *MODEL_INI =
    "[model]\nattention = mla\nvocab_size = 320\nhidden_size = 32\nnum_layers = 1\nnum_heads = 2\n"
    "q_lora_rank = 16\nkv_lora_rank = 16\nqk_nope_head_dim = 8\nqk_rope_head_dim = 8\nv_head_dim = 8\n"
    "intermediate_size = 64\nrope_theta = 10000\n"
    "[train]\nseed = 2\nseq_len = 16\nmicro_batch = 2\nglobal_batch = 2\n";

static void test_loss_mask(void) {
    enum { B = 2, T = 16, BATCHES = 6 };
    struct loom_config cm, ca, cp;
    char fmt[2048];
    snprintf(fmt, sizeof fmt, "%s[source.traj]\nshards = %%1$s/masked.tok\nheldout = %%1$s/masked.tok\n"
                              "loss_mask = assistant\n", MODEL_INI);
    cfg_load(&cm, fmt, g_dir);
    snprintf(fmt, sizeof fmt, "%s[source.traj]\nshards = %%1$s/masked.tok\nloss_mask = all\n", MODEL_INI);
    cfg_load(&ca, fmt, g_dir);
    snprintf(fmt, sizeof fmt, "%s[source.traj]\nshards = %%1$s/plain.tok\nloss_mask = assistant\n", MODEL_INI);
    cfg_load(&cp, fmt, g_dir);
    struct loom_curriculum c;
    loom_curriculum_build(&c, &cm, NULL);
    struct loom_sampler sm, sa, sp;
    loom_sampler_open(&sm, &cm, 0);
    loom_sampler_open(&sa, &ca, 0);
    loom_sampler_open(&sp, &cp, 0);

    struct loom_model m;
    loom_model_create(&m, loom_ops_cpu(1), &cm.model, &cm.optim, B, T);
    loom_model_init_params(&m, 17);
    loom_model_set_shape(&m, T, 10000);

    int in_m[B * T], tg_m[B * T], in_a[B * T], tg_a[B * T], in_p[B * T], tg_p[B * T];
    float tl_m[B * T], tl_a[B * T];
    int mask_ok = 1, all_ok = 1, plain_ok = 1, loss_ok = 1, masked_some = 0;
    char why[320] = "", why_loss[320] = "";
    for (int k = 0; k < BATCHES; k++) {
        loom_sampler_next_batch(&sm, &c, B, T, 0, B, in_m, tg_m, NULL);
        loom_sampler_next_batch(&sa, &c, B, T, 0, B, in_a, tg_a, NULL);
        loom_sampler_next_batch(&sp, &c, B, T, 0, B, in_p, tg_p, NULL);
        for (int b = 0; b < B; b++) {
            int64_t start = (int64_t)(k * B + b) * T; /* one source, 4000 tokens: no epoch ends here */
            for (int t = 0; t < T; t++) {
                int i = b * T + t;
                int32_t next = g_masked[start + t + 1];
                int want = g_masked_bits[start + t + 1] ? next : -1;
                masked_some += want < 0;
                if (in_m[i] != g_masked[start + t] || tg_m[i] != want) {
                    mask_ok = 0;
                    snprintf(why, sizeof why, "batch %d row %d t %d (token %lld): input %d target %d, want %d %d", k, b,
                             t, (long long)(start + t), in_m[i], tg_m[i], g_masked[start + t], want);
                }
                if (in_a[i] != g_masked[start + t] || tg_a[i] != next) all_ok = 0;
                if (in_p[i] != g_masked[start + t] || tg_p[i] != next) plain_ok = 0;
            }
        }
        /* the model: mean over the kept targets == mean of the all-targets per-token losses over them */
        long n_m = -1, n_a = -1;
        double sum_m = loom_model_forward(&m, in_m, tg_m, 0.0f, &n_m, tl_m);
        double sum_a = loom_model_forward(&m, in_a, tg_a, 0.0f, &n_a, tl_a);
        double sel = 0;
        long n_sel = 0;
        for (int i = 0; i < B * T; i++)
            if (tg_m[i] >= 0) sel += tl_a[i], n_sel++;
        /* the same float per-token losses added in the same order: equal to rounding of the double sums */
        int good = n_m == n_sel && n_a == B * T && n_sel > 0 && n_sel < B * T &&
                   fabs(sum_m - sel) <= 1e-9 * fabs(sel) && fabs(sum_m / n_m - sel / n_sel) <= 1e-9 * fabs(sel / n_sel) &&
                   fabs(sum_a - sel) > 1e-3;
        if (!good) {
            loss_ok = 0;
            snprintf(why_loss, sizeof why_loss,
                     "batch %d: masked forward sum %.9g over %ld, all-target losses over the kept tokens %.9g over %ld "
                     "(all targets: %.9g over %ld)",
                     k, sum_m, n_m, sel, n_sel, sum_a, n_a);
        }
    }
    test_result(mask_ok && masked_some > 0, "mask/targets_ignored_exactly_where_mask_0", "%s (%d ignored)", why,
                masked_some);
    test_result(all_ok, "mask/loss_mask_all_keeps_every_target", "loss_mask = all on the masked shard gave -1 targets");
    test_result(plain_ok, "mask/unmasked_shard_keeps_every_target",
                "loss_mask = assistant on a shard without a mask ignored targets");
    test_result(loss_ok, "mask/loss_over_assistant_tokens_only", "%s", why_loss);

    /* held-out windows carry the mask too */
    struct loom_sampler hm;
    loom_sampler_open(&hm, &cm, 1);
    int ok = loom_sampler_heldout(&hm, 0, 3, T, in_m, tg_m), hold_ok = ok;
    for (int t = 0; ok && t < T; t++) {
        int64_t p = 3 * T + t;
        hold_ok &= in_m[t] == g_masked[p] && tg_m[t] == (g_masked_bits[p + 1] ? g_masked[p + 1] : -1);
    }
    test_result(hold_ok, "mask/heldout_masked", "held-out window 3: returned %d, inputs/targets differ from the shard",
                ok);
    loom_sampler_close(&hm);

    /* a fully masked batch: counts nothing, returns 0, and its gradient is exactly 0 */
    for (int i = 0; i < B * T; i++) tg_m[i] = -1;
    long n0 = -1;
    double s0 = loom_model_forward(&m, in_m, tg_m, 0.0f, &n0, NULL);
    test_result(n0 == 0 && s0 == 0.0, "mask/all_masked_forward", "sum %.9g over %ld tokens, want 0 over 0", s0, n0);
    loom_model_zero_grads(&m);
    s0 = loom_model_forward(&m, in_m, tg_m, 1.0f, &n0, NULL);
    loom_model_backward(&m);
    size_t np = m.table.total;
    float *g = malloc_check(sizeof(float) * np);
    loom_model_get_grads(&m, g);
    size_t nonzero = 0;
    for (size_t i = 0; i < np; i++) nonzero += !(g[i] == 0.0f);
    test_result(n0 == 0 && s0 == 0.0 && nonzero == 0, "mask/all_masked_no_gradient",
                "with dloss 1: sum %.9g over %ld, %zu of %zu gradient entries not 0", s0, n0, nonzero, np);
    free(g);

    /* a source that masks everything: every sampled target is -1 */
    struct loom_config cz;
    snprintf(fmt, sizeof fmt, "%s[source.none]\nshards = %%1$s/allmasked.tok\nloss_mask = assistant\n", MODEL_INI);
    cfg_load(&cz, fmt, g_dir);
    struct loom_curriculum cz_c;
    loom_curriculum_build(&cz_c, &cz, NULL);
    struct loom_sampler sz;
    loom_sampler_open(&sz, &cz, 0);
    int all_ignored = 1;
    for (int k = 0; k < 40; k++) { /* 40 x 2 windows of 16 pass the 500-token shard's end twice */
        loom_sampler_next_batch(&sz, &cz_c, B, T, 0, B, in_m, tg_m, NULL);
        for (int i = 0; i < B * T; i++) all_ignored &= tg_m[i] == -1;
    }
    long nz = -1;
    double sz_sum = loom_model_forward(&m, in_m, tg_m, 0.0f, &nz, NULL);
    test_result(all_ignored && sz.state.epoch[0] >= 2 && nz == 0 && sz_sum == 0, "mask/all_masked_source",
                "all ignored %d, epochs %lld, forward %.9g over %ld", all_ignored, (long long)sz.state.epoch[0], sz_sum,
                nz);
    loom_sampler_close(&sz);
    loom_config_free(&cz);

    loom_model_destroy(&m);
    loom_sampler_close(&sm);
    loom_sampler_close(&sa);
    loom_sampler_close(&sp);
    loom_config_free(&cm);
    loom_config_free(&ca);
    loom_config_free(&cp);
}

/* ---------------------------------------------------------------------------------------------- */
/* bad input                                                                                       */

/* arg: INI text; builds the curriculum (as loom_config_validate does) */
static void child_build(const char *arg) {
    struct loom_config cfg;
    loom_config_init(&cfg);
    loom_config_load_string(&cfg, arg, "bad.ini");
    struct loom_curriculum c;
    loom_curriculum_build(&c, &cfg, NULL);
}

/* arg: INI text; opens the sources, then builds the curriculum (as `loom train` does) */
static void child_open(const char *arg) {
    struct loom_config cfg;
    loom_config_init(&cfg);
    loom_config_load_string(&cfg, arg, "bad.ini");
    struct loom_sampler s;
    loom_sampler_open(&s, &cfg, 0);
    struct loom_curriculum c;
    loom_curriculum_build(&c, &cfg, NULL);
}

/* the child exits 2 and its stderr holds "loom: error:" and each of the (up to 2) substrings */
static void expect_error(const char *name, void (*fn)(const char *), const char *ini, const char *want1,
                         const char *want2) {
    char err[4096];
    int rc = test_run_child(fn, ini, err, sizeof err);
    int ok = rc == 2 && strstr(err, "loom: error:") && (!want1 || strstr(err, want1)) && (!want2 || strstr(err, want2));
    char full[80];
    snprintf(full, sizeof full, "errors/%s", name);
    test_result(ok, full, "exit status %d (want 2), stderr should name `%s`%s%s: %s", rc, want1 ? want1 : "",
                want2 ? " and " : "", want2 ? want2 : "", err);
}

static const char *BASE_XY =
    "[train]\nseq_len = 16\nmicro_batch = 4\nglobal_batch = 8\n[model]\nvocab_size = 320\n"
    "[source.x]\ntokens = 1M\n[source.y]\ntokens = 1M\n";

/* copy src to dst, apply `patch` to the bytes, and (when rechecksum) rewrite the footer checksum so the
 * damage is found by the check after it */
static void damaged_copy(const char *src, const char *dst, void (*patch)(unsigned char *, size_t *), int rechecksum) {
    FILE *f = fopen_check(src, "rb");
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc_check(n);
    CHECK(fread(b, 1, n, f) == n, "read %s", src);
    fclose(f);
    patch(b, &n);
    if (rechecksum) {
        uint64_t h = XXH64(b, n - 16, 0);
        for (int i = 0; i < 8; i++) b[n - 16 + i] = (unsigned char)(h >> (8 * i));
    }
    f = fopen_check(dst, "wb");
    CHECK(fwrite(b, 1, n, f) == n, "write %s", dst);
    fclose(f);
    free(b);
}

static uint64_t get64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void patch_magic(unsigned char *b, size_t *n) { (void)n; b[0] = 'X'; }
static void patch_truncate(unsigned char *b, size_t *n) { (void)b; *n = *n / 2; }
static void patch_flip(unsigned char *b, size_t *n) { (void)n; b[LOOM_SHARD_HEADER_BYTES + 5] ^= 0x40; }
/* frame 0 one byte shorter in the index: a truncated frame */
static void patch_frame(unsigned char *b, size_t *n) {
    uint64_t index = get64(b + *n - LOOM_SHARD_FOOTER_BYTES);
    put64(b + index + 8, get64(b + index + 8) - 1);
}
/* the header's vocab_size (offset 16) down to 150: ids up to 299 are then out of range */
static void patch_vocab(unsigned char *b, size_t *n) {
    (void)n;
    b[16] = 150;
    b[17] = b[18] = b[19] = 0;
}

static void test_errors(void) {
    char ini[4096];
#define INI(...) snprintf(ini, sizeof ini, __VA_ARGS__)
    INI("%s[curriculum]\nphases = a\n[phase.a]\nweights = x:0.5, y:-0.1\n", BASE_XY);
    expect_error("weights_negative", child_build, ini, "phase.a.weights", "negative");
    INI("%s[curriculum]\nphases = a\n[phase.a]\nweights = x:0, y:0\n", BASE_XY);
    expect_error("weights_sum_zero", child_build, ini, "phase.a.weights", "sum to 0");
    INI("%s[curriculum]\nphases = a\n[phase.a]\nweights = x:1, zzz:1\n", BASE_XY);
    expect_error("weights_unknown_source", child_build, ini, "phase.a.weights", "zzz");
    INI("%s[curriculum]\nphases = a\n[phase.a]\nweights = x:1, x:2\n", BASE_XY);
    expect_error("weights_source_twice", child_build, ini, "phase.a.weights", NULL);
    INI("%s[curriculum]\nphases = a, b, c\n[phase.a]\nuntil = 2000\nweights = x:1\n"
        "[phase.b]\nuntil = 1000\nweights = y:1\n[phase.c]\nweights = x:1\n", BASE_XY);
    expect_error("phases_out_of_order", child_build, ini, "phase.b.until", NULL);
    INI("%s[curriculum]\nphases = a, b, c\n[phase.a]\nuntil = 1000\nweights = x:1\n"
        "[phase.b]\nuntil = 1000\nweights = y:1\n[phase.c]\nweights = x:1\n", BASE_XY);
    expect_error("phases_overlap", child_build, ini, "phase.b.until", NULL);
    INI("%s[curriculum]\nphases = a, b\n[phase.a]\nuntil = 1000\nweights = x:1\n"
        "[phase.b]\nuntil = 500\nweights = y:1\n", BASE_XY);
    expect_error("last_phase_ends_before_previous", child_build, ini, "phase.b.until", NULL);
    INI("%s[curriculum]\nphases = a, b\n[phase.a]\nweights = x:1\n[phase.b]\nweights = y:1\n", BASE_XY);
    expect_error("phase_without_until", child_build, ini, "phase.a.until", NULL);
    INI("%s[curriculum]\nphases = a\n[phase.a]\nweights = x:1\n[phase.z]\nweights = y:1\n", BASE_XY);
    expect_error("phase_not_listed", child_build, ini, "phase.z", NULL);
    INI("%s[curriculum]\nphases = a, q\n[phase.a]\nuntil = 10\nweights = x:1\n", BASE_XY);
    expect_error("phase_without_section", child_build, ini, "curriculum.phases", "phase.q");
    INI("%s[curriculum]\nphases = a, a\n[phase.a]\nuntil = 10\nweights = x:1\n", BASE_XY);
    expect_error("phase_listed_twice", child_build, ini, "curriculum.phases", NULL);
    INI("%s[curriculum]\nphases = a, b\n[phase.a]\nuntil = 10\nramp = 5\nweights = x:1\n[phase.b]\nweights = y:1\n",
        BASE_XY);
    expect_error("ramp_on_first_phase", child_build, ini, "phase.a.ramp", NULL);
    INI("%s[curriculum]\nphases = a, b, c\n[phase.a]\nuntil = 1000\nweights = x:1\n"
        "[phase.b]\nuntil = 2000\nramp = 1500\nweights = y:1\n[phase.c]\nweights = x:1\n", BASE_XY);
    expect_error("ramp_longer_than_phase", child_build, ini, "phase.b.ramp", NULL);
    INI("%s[train]\nbatch_schedule = 1000:10\n", BASE_XY);
    expect_error("batch_schedule_not_multiple", child_build, ini, "train.batch_schedule", "micro-batch");
    INI("%s[train]\nbatch_schedule = 2000:16, 1000:24\n", BASE_XY);
    expect_error("batch_schedule_out_of_order", child_build, ini, "train.batch_schedule", "order");
    INI("%s[train]\nbatch_schedule = 2000\n", BASE_XY);
    expect_error("batch_schedule_malformed", child_build, ini, "train.batch_schedule", NULL);

    /* sources and shards */
    INI("[model]\nvocab_size = 320\n[source.web]\nshards = %s/web-0.tok\n[source.empty]\ntokens = 5\n", g_dir);
    expect_error("source_without_shards", child_open, ini, "source.empty.shards", NULL);
    INI("[model]\nvocab_size = 320\n[source.web]\nshards = %s/nothing-*.tok\n", g_dir);
    expect_error("glob_matches_nothing", child_open, ini, "source.web.shards", "nothing-*.tok");
    INI("[model]\nvocab_size = 320\n[source.web]\nshards = %s/missing.tok\n", g_dir);
    expect_error("missing_shard", child_open, ini, "missing.tok", NULL);
    INI("[model]\nvocab_size = 256\n[source.web]\nshards = %s/web-1.tok\n", g_dir);
    expect_error("shard_vocab_above_model", child_open, ini, "web-1.tok", "vocab");

    struct {
        const char *name;
        void (*patch)(unsigned char *, size_t *);
        int rechecksum;
        const char *what;
    } damage[] = {
        {"bad_magic", patch_magic, 0, "magic"},
        {"truncated", patch_truncate, 0, "truncated"},
        {"checksum", patch_flip, 0, "checksum"},
        {"truncated_frame", patch_frame, 1, "frame 0"},
        {"token_above_vocab", patch_vocab, 1, ">= vocab"},
    };
    char src[256], dst[256];
    snprintf(src, sizeof src, "%s/code-1.tok", g_dir);
    for (size_t i = 0; i < sizeof damage / sizeof *damage; i++) {
        snprintf(dst, sizeof dst, "%s/bad-%s.tok", g_dir, damage[i].name);
        damaged_copy(src, dst, damage[i].patch, damage[i].rechecksum);
        /* a damaged shard among good ones, through a glob */
        INI("[model]\nvocab_size = 320\n[source.web]\nshards = %s/web-*.tok\n[source.bad]\nshards = %s/code-0.tok, %s\n",
            g_dir, g_dir, dst);
        char name[64];
        snprintf(name, sizeof name, "corrupt_shard_%s", damage[i].name);
        expect_error(name, child_open, ini, dst, damage[i].what);
    }
#undef INI
}

/* too small a source fails when it is drawn from, naming it */
static void child_draw_small(const char *arg) {
    struct loom_config cfg;
    loom_config_init(&cfg);
    loom_config_load_string(&cfg, arg, "small.ini");
    struct loom_sampler s;
    loom_sampler_open(&s, &cfg, 0);
    struct loom_curriculum c;
    loom_curriculum_build(&c, &cfg, NULL);
    int in[64], tg[64];
    loom_sampler_next_batch(&s, &c, 1, 64, 0, 1, in, tg, NULL);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/loom_curriculum_XXXXXX");
    CHECK(mkdtemp(g_dir) != NULL, "mkdtemp");
    make_data();

    test_phase_edges();
    test_layouts();
    test_mixture();
    test_edge_in_batch();
    test_epochs();
    test_plan();
    test_loss_mask();
    test_errors();
    char ini[512];
    snprintf(ini, sizeof ini,
             "[model]\nvocab_size = 320\n[train]\nseq_len = 64\nmicro_batch = 1\nglobal_batch = 1\n"
             "[source.small]\nshards = %s/small\n", g_dir);
    expect_error("source_smaller_than_a_sample", child_draw_small, ini, "small", "fewer than one sample");

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    return test_exit();
}
