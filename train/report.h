/*
 * train/report.h — what the training loop reports: held-out evaluation per source, the progress-line
 * pieces, and the JSON fragments of metrics.jsonl (per-source maps, MoE balance, expert loads, biases).
 */
#ifndef LOOM_TRAIN_REPORT_H
#define LOOM_TRAIN_REPORT_H

#include <stdio.h>

#include "core/config.h"
#include "data/curriculum.h"
#include "data/prefetch.h"
#include "data/sampler.h"
#include "model/model.h"
#include "parallel/topology.h"

struct loom_eval_result {
    int n;                         /* sources evaluated */
    int source[LOOM_MAX_SOURCES];
    double loss[LOOM_MAX_SOURCES];
};

/* Held-out loss of every source with held-out shards, on the first eval.sequences windows, through
 * the pipeline; leaves no expert load or balance loss behind. */
void loom_evaluate(struct loom_model *model, const struct loom_topology *topo, struct loom_sampler *heldout,
                   const struct loom_config *cfg, int T, int *inputs, int *targets, struct loom_eval_result *r);

/* "1:02:03" / "2:03"; "12.3k" tokens/s; "stem (commonsense 0.40 stem 0.60)" */
void loom_format_eta(char *buf, size_t n, double seconds);
void loom_format_rate(char *buf, size_t n, double tok_s);
void loom_format_phase(char *buf, size_t n, const struct loom_curriculum *c, const struct loom_sampler *s,
                       const struct loom_batch *b);

/* , "KEY": {"source": value, ...} (present: which sources; NULL = all) */
void loom_json_source_map(FILE *f, const char *key, const struct loom_sampler *s, const double *v,
                          const int *present);

/* MoE: this stage's blocks into the whole model's rows of loads and/or biases (E per block). */
void loom_moe_rows_fill(const struct loom_model *m, double *loads, double *bias, int layer_lo, int first_dense);
/* the max (or min) load of a block over its mean */
double loom_load_ratio(const double *load, int E, int want_max);
/* , "balance_loss": .., "expert_load": [...], and per-expert loads and biases when small enough */
void loom_moe_metrics(FILE *f, double balance, const double *loads, const double *bias, int blocks, int E);

#endif
