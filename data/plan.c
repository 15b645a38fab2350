/*
 * data/plan.c — `loom data plan -c CFG [--tokens 11T]`: the curriculum over a whole run.
 *
 * Integrates each source's weight over token position in closed form (loom_curriculum_integrate:
 * constant stretches and linear ramps), so an 11T-token plan costs the same as a tiny one. Prints
 * per phase and per source the tokens drawn, and per source the epochs over its data, warning where
 * a source would repeat more than curriculum.max_epochs times.
 */
#include "data/plan.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/error.h"
#include "data/curriculum.h"
#include "data/prefetch.h"
#include "data/sampler.h"
#include "train/cli.h"

static const char *USAGE = "loom data plan -c CONFIG [--tokens N] [--section.key=value ...]";

/* "11.00T", "340.0B", "12.5M" */
static void format_tokens(char *buf, size_t n, double v) {
    const char *unit[] = {"", "K", "M", "B", "T"};
    int u = 0;
    while (v >= 1000 && u < 4) v /= 1000, u++;
    snprintf(buf, n, u ? "%.2f%s" : "%.0f%s", v, unit[u]);
}

/* Steps a run takes to consume `tokens` under the batch and sequence-length schedule. */
static int64_t steps_for(const struct loom_curriculum *c, int64_t tokens) {
    int64_t t = 0, steps = 0;
    while (t < tokens) {
        t += loom_curriculum_batch_at(c, t) * loom_curriculum_seq_len_at(c, t);
        steps++;
    }
    return steps;
}

int data_plan_main(int argc, char **argv) {
    /* --tokens is the plan's own option; everything else is the usual -c CONFIG and overrides */
    int64_t tokens = -1;
    char **rest = malloc_check(sizeof(char *) * (argc + 1));
    int nrest = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *value = NULL;
        if (strcmp(a, "--tokens") == 0) {
            if (i + 1 >= argc) loom_input_error(a, USAGE, "expects a token count");
            value = argv[++i];
        } else if (strncmp(a, "--tokens=", 9) == 0) {
            value = a + 9;
        }
        if (value) {
            if (loom_parse_count(value, &tokens) != 0 || tokens <= 0)
                loom_input_error("--tokens", "e.g. --tokens 11T", "`%s` is not a positive token count", value);
            continue;
        }
        rest[nrest++] = argv[i];
    }
    rest[nrest] = NULL;
    struct loom_config cfg;
    loom_cli_load_config(&cfg, nrest, rest, USAGE, 0);
    free(rest);

    /* source sizes: declared in the config, else counted from the shards */
    static struct loom_source_config shorthand;
    const struct loom_source_config *sources[LOOM_MAX_SOURCES];
    int ns = loom_config_sources(&cfg, sources, &shorthand);
    int64_t size[LOOM_MAX_SOURCES] = {0};
    int counted[LOOM_MAX_SOURCES] = {0};
    for (int s = 0; s < ns; s++) {
        if (sources[s]->tokens > 0) size[s] = sources[s]->tokens;
        else if (cfg.data.kind == LOOM_DATA_SHARDS) size[s] = loom_source_tokens(sources[s]), counted[s] = 1;
    }

    struct loom_curriculum c;
    loom_curriculum_build(&c, &cfg, size);
    if (tokens < 0) tokens = loom_run_tokens(&c, cfg.train.steps);

    char a[32], b[32], t[32];
    format_tokens(t, sizeof t, (double)tokens);
    printf("plan: %s tokens, %lld steps, %d phase%s, %d source%s\n", t, (long long)steps_for(&c, tokens), c.nphases,
           c.nphases == 1 ? "" : "s", ns, ns == 1 ? "" : "s");

    printf("\n%-16s %10s %10s %10s %8s %10s", "phase", "start", "end", "tokens", "seq_len", "rope_theta");
    for (int s = 0; s < ns; s++) printf(" %22s", sources[s]->name);
    printf("\n");
    double total[LOOM_MAX_SOURCES] = {0};
    for (int p = 0; p < c.nphases; p++) {
        const struct loom_curriculum_phase *ph = &c.phases[p];
        if (ph->start >= tokens) break;
        int64_t end = ph->end < tokens ? ph->end : tokens;
        double drawn[LOOM_MAX_SOURCES];
        loom_curriculum_integrate(&c, ph->start, end, drawn);
        format_tokens(a, sizeof a, (double)ph->start);
        format_tokens(b, sizeof b, (double)end);
        format_tokens(t, sizeof t, (double)(end - ph->start));
        printf("%-16s %10s %10s %10s %8lld %10.4g", ph->name, a, b, t, (long long)ph->seq_len, ph->rope_theta);
        for (int s = 0; s < ns; s++) {
            char cell[48];
            format_tokens(a, sizeof a, drawn[s]);
            snprintf(cell, sizeof cell, "%s (%.1f%%)", a, 100.0 * drawn[s] / (double)(end - ph->start));
            printf(" %22s", cell);
            total[s] += drawn[s];
        }
        printf("\n");
        if (ph->ramp > 0 && p > 0) {
            format_tokens(a, sizeof a, (double)ph->ramp);
            printf("%-16s   (the first %s tokens blend linearly from %s)\n", "", a, c.phases[p - 1].name);
        }
    }

    printf("\n%-16s %12s %12s %10s\n", "source", "drawn", "size", "epochs");
    int warnings = 0;
    for (int s = 0; s < ns; s++) {
        format_tokens(a, sizeof a, total[s]);
        format_tokens(b, sizeof b, (double)size[s]);
        double epochs = size[s] > 0 ? total[s] / (double)size[s] : 0;
        printf("%-16s %12s %12s %10.3f  (%s)\n", sources[s]->name, a, b, epochs,
               counted[s] ? "size counted from the shards" : "size declared in source.tokens");
    }
    for (int s = 0; s < ns; s++) {
        double epochs = size[s] > 0 ? total[s] / (double)size[s] : 0;
        if (epochs <= cfg.curriculum.max_epochs) continue;
        printf("warning: source %s repeats %.2f times, more than curriculum.max_epochs = %g\n", sources[s]->name,
               epochs, cfg.curriculum.max_epochs);
        warnings++;
    }
    if (!warnings) printf("no source repeats more than curriculum.max_epochs = %g times\n", cfg.curriculum.max_epochs);
    loom_config_free(&cfg);
    return 0;
}
