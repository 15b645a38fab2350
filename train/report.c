/*
 * train/report.c — evaluation and the pieces of the progress line and metrics.jsonl (see report.h).
 */
#include "train/report.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "parallel/pipeline.h"

void loom_format_eta(char *buf, size_t n, double seconds) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else snprintf(buf, n, "%ld:%02ld", s / 60, s % 60);
}

void loom_format_rate(char *buf, size_t n, double tok_s) {
    if (tok_s >= 1e6) snprintf(buf, n, "%.2fM", tok_s / 1e6);
    else if (tok_s >= 1e3) snprintf(buf, n, "%.1fk", tok_s / 1e3);
    else snprintf(buf, n, "%.0f", tok_s);
}

/* ---------------------------------------------------------------------------------------------- */
/* evaluation: held-out loss per source                                                             */

void loom_evaluate(struct loom_model *model, const struct loom_topology *topo, struct loom_sampler *heldout,
                     const struct loom_config *cfg, int T, int *inputs, int *targets, struct loom_eval_result *r) {
    int B = model->B;
    r->n = 0;
    model->bal_scale = 0; /* evaluation neither adds balance loss nor counts expert load */
    for (int s = 0; s < heldout->nstreams; s++) {
        if (heldout->streams[s].nshards == 0) continue;
        double sum = 0;
        long count = 0;
        /* the first eval.sequences windows of the held-out stream, in micro-batches of B; a short last
         * micro-batch is padded with rows that count nowhere */
        for (int64_t k0 = 0; k0 < cfg->eval.sequences; k0 += B) {
            int rows = 0;
            for (int b = 0; b < B; b++) {
                int *in = inputs + (size_t)b * T, *tg = targets + (size_t)b * T;
                if (k0 + b < cfg->eval.sequences && loom_sampler_heldout(heldout, s, k0 + b, T, in, tg)) {
                    rows++;
                    continue;
                }
                for (int t = 0; t < T; t++) in[t] = 0, tg[t] = -1;
            }
            if (rows == 0) break; /* the held-out set is smaller than asked: use what is there */
            long n = 0;
            sum += loom_pipeline_forward(model, topo, inputs, targets, &n);
            count += n;
        }
        if (count == 0) continue;
        r->source[r->n] = s;
        r->loss[r->n++] = sum / count;
    }
    memset(model->expert_load, 0, sizeof(int64_t) * (size_t)(model->moe_layers * model->cfg.moe.experts + 1));
}

/* ---------------------------------------------------------------------------------------------- */
/* mixture of experts: loads and router biases of every MoE block, reported by the stage holding it  */

/* Writes this stage's MoE blocks into rows (global MoE block index) of loads and/or bias (E each);
 * other rows are zeroed, so a sum over the pipeline stages assembles the whole model. */
void loom_moe_rows_fill(const struct loom_model *m, double *loads, double *bias, int layer_lo, int first_dense) {
    int E = (int)m->cfg.moe.experts, total = (int)m->cfg.num_layers - first_dense;
    if (loads) memset(loads, 0, sizeof(double) * (size_t)total * E);
    if (bias) memset(bias, 0, sizeof(double) * (size_t)total * E);
    int first_moe = layer_lo > first_dense ? layer_lo : first_dense;
    for (int k = 0; k < m->moe_layers; k++) {
        size_t row = (size_t)(first_moe - first_dense + k) * E;
        for (int e = 0; e < E; e++) {
            if (loads) loads[row + e] = (double)m->expert_load[(size_t)k * E + e];
            if (bias) bias[row + e] = m->router_bias[(size_t)k * E + e];
        }
    }
}

/* max (or min) load over the mean load of one block */
double loom_load_ratio(const double *load, int E, int want_max) {
    double sum = 0, x = want_max ? 0 : INFINITY;
    for (int e = 0; e < E; e++) sum += load[e], x = want_max ? fmax(x, load[e]) : fmin(x, load[e]);
    return sum > 0 ? x * E / sum : 0;
}

enum { MOE_METRICS_MAX = 4096 }; /* per-expert arrays go to metrics.jsonl up to this many values */

void loom_moe_metrics(FILE *f, double balance, const double *loads, const double *bias, int blocks, int E) {
    fprintf(f, ", \"balance_loss\": %.9g, \"expert_load\": [", balance);
    for (int k = 0; k < blocks; k++)
        fprintf(f, "%s{\"max_over_mean\": %.4g, \"min_over_mean\": %.4g}", k ? ", " : "",
                loom_load_ratio(loads + (size_t)k * E, E, 1), loom_load_ratio(loads + (size_t)k * E, E, 0));
    fputc(']', f);
    if ((size_t)blocks * E > MOE_METRICS_MAX) return;
    const char *names[2] = {"expert_loads", "router_bias"};
    const double *arrays[2] = {loads, bias};
    for (int a = 0; a < 2; a++) {
        fprintf(f, ", \"%s\": [", names[a]);
        for (int k = 0; k < blocks; k++) {
            fprintf(f, "%s[", k ? ", " : "");
            for (int e = 0; e < E; e++) fprintf(f, a ? "%s%.9g" : "%s%.0f", e ? ", " : "", arrays[a][(size_t)k * E + e]);
            fputc(']', f);
        }
        fputc(']', f);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* metrics                                                                                          */

void loom_json_source_map(FILE *f, const char *key, const struct loom_sampler *s, const double *v,
                            const int *present) {
    fprintf(f, ", \"%s\": {", key);
    int first = 1;
    for (int i = 0; i < s->nstreams; i++) {
        if (present && !present[i]) continue;
        fprintf(f, "%s\"%s\": %.6g", first ? "" : ", ", s->streams[i].source->name, v[i]);
        first = 0;
    }
    fputc('}', f);
}

/* "stem (commonsense 0.40 stem 0.60)" */
void loom_format_phase(char *buf, size_t n, const struct loom_curriculum *c, const struct loom_sampler *s,
                         const struct loom_batch *b) {
    int len = snprintf(buf, n, "%s", c->phases[b->phase].name);
    if (s->nstreams < 2) return;
    len += snprintf(buf + len, n - len, " (");
    for (int i = 0; i < s->nstreams && len < (int)n; i++)
        len += snprintf(buf + len, n - len, "%s%s %.2f", i ? " " : "", s->streams[i].source->name, b->weights[i]);
    if (len < (int)n) snprintf(buf + len, n - len, ")");
}
