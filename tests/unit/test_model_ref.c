/*
 * tests/unit/test_model_ref.c — the whole model against an independent implementation.
 *
 * tests/ref/tiny-{mla,mha}.bin are written by scripts/make_reference.py (JAX, float64) from the
 * same weights and batch: logits, loss, the gradient of every parameter, and the losses of ten
 * AdamW steps with global-norm clipping. loom (fp32, CPU backend) must match each within the stated
 * tolerance; a failure names the worst element.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/error.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "tests/ref/refdump.h"
#include "tests/test.h"


static double *to_double(const struct loom_ref_entry *e) {
    double *out = malloc_check(sizeof(double) * (size_t)e->count);
    const float *x = e->data;
    for (int64_t i = 0; i < e->count; i++) out[i] = x[i];
    return out;
}

static double max_abs(const double *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

static void check_variant(const char *variant, const char *path) {
    struct loom_refdump *d = loom_refdump_load(path);
    struct loom_config cfg;
    loom_config_init(&cfg);
    loom_config_load_string(&cfg, (const char *)loom_refdump_need(d, "config")->data, path);
    cfg.data.kind = LOOM_DATA_RANDOM;
    loom_config_validate(&cfg, 0);

    int B, T, *inputs, *targets;
    loom_refdump_batch(d, &B, &T, &inputs, &targets);
    int N = B * T, V = (int)cfg.model.vocab_size;

    const struct loom_ops *ops = loom_ops_cpu(2);
    struct loom_model m;
    loom_model_create(&m, ops, &cfg.model, &cfg.optim, B, T);

    /* parameters by name; every tensor of the table must be in the dump with the same shape */
    float *host = calloc_check(m.table.total, sizeof(float));
    char name[160], test[200];
    int shapes_ok = 1;
    for (int i = 0; i < m.table.count; i++) {
        const struct loom_param *p = &m.table.params[i];
        snprintf(name, sizeof name, "param/%s", p->name);
        const struct loom_ref_entry *e = loom_refdump_need(d, name);
        if (e->count != (int64_t)p->numel) {
            printf("FAIL %s.params: %s has %lld values in the dump, %zu in loom\n", variant, p->name,
                   (long long)e->count, p->numel);
            shapes_ok = 0;
            continue;
        }
        memcpy(host + p->offset, e->data, sizeof(float) * p->numel);
    }
    snprintf(test, sizeof test, "model_ref.%s.param_table", variant);
    test_result(shapes_ok, test, "parameter shapes differ from the reference");
    loom_model_set_params(&m, host);

    /* MoE: the router's score-correction biases (buffers) and the balance loss weight per sequence */
    int E = (int)cfg.model.moe.experts;
    float *bias0 = calloc_check((size_t)(m.moe_layers * E + 1), sizeof(float));
    for (int l = 0, k = 0; l < cfg.model.num_layers; l++) {
        if (!loom_model_layer_is_moe(&cfg.model, l)) continue;
        snprintf(name, sizeof name, "buffer/layers.%d.mlp.gate.e_score_correction_bias", l);
        memcpy(bias0 + (size_t)k * E, loom_refdump_need(d, name)->data, sizeof(float) * E);
        k++;
    }
    memcpy(m.router_bias, bias0, sizeof(float) * (size_t)(m.moe_layers * E));
    m.bal_scale = (float)(cfg.model.moe.balance_alpha / B);

    /* forward only: logits and loss */
    long counted = 0;
    double loss_sum = loom_model_forward(&m, inputs, targets, 0.0f, &counted, NULL);
    float *logits = malloc_check(sizeof(float) * (size_t)N * V);
    ops->to_host(logits, m.cur->logits, sizeof(float) * (size_t)N * V);
    double *want = to_double(loom_refdump_need(d, "logits"));
    snprintf(test, sizeof test, "model_ref.%s.logits", variant);
    test_close(test, logits, want, (size_t)N * V, 1e-4, 1e-5);
    free(want);
    float loss = (float)(loss_sum / counted);
    double want_loss = ((const float *)loom_refdump_need(d, "loss")->data)[0];
    snprintf(test, sizeof test, "model_ref.%s.loss", variant);
    test_close(test, &loss, &want_loss, 1, 0, 1e-5);
    if (m.moe_layers) {
        float balance = (float)m.balance, loads[4096];
        double want_balance = ((const float *)loom_refdump_need(d, "balance_loss")->data)[0];
        snprintf(test, sizeof test, "model_ref.%s.balance_loss", variant);
        test_close(test, &balance, &want_balance, 1, 0, 1e-5);
        double *want_load = to_double(loom_refdump_need(d, "expert_load_step1"));
        for (int e = 0; e < E; e++) loads[e] = (float)m.expert_load[e];
        snprintf(test, sizeof test, "model_ref.%s.expert_load", variant);
        test_close(test, loads, want_load, E, 0, 0);
        free(want_load);
        memset(m.expert_load, 0, sizeof(int64_t) * (size_t)(m.moe_layers * E));
    }

    /* backward: every parameter gradient, with a tolerance relative to the tensor's largest value */
    loom_model_zero_grads(&m);
    loom_model_forward(&m, inputs, targets, 1.0f / counted, NULL, NULL);
    loom_model_backward(&m);
    float *grads = calloc_check(m.table.total, sizeof(float));
    loom_model_get_grads(&m, grads);
    for (int i = 0; i < m.table.count; i++) {
        const struct loom_param *p = &m.table.params[i];
        snprintf(name, sizeof name, "grad/%s", p->name);
        double *g = to_double(loom_refdump_need(d, name));
        snprintf(test, sizeof test, "model_ref.%s.grad.%s", variant, p->name);
        test_close(test, grads + p->offset, g, p->numel, 2e-5 * max_abs(g, p->numel) + 1e-9, 1e-3);
        free(g);
    }

    /* ten AdamW steps on the same batch, clipped by global norm, constant LR; MoE biases follow the
     * aux-loss-free update after each step */
    loom_model_set_params(&m, host);
    memcpy(m.router_bias, bias0, sizeof(float) * (size_t)(m.moe_layers * E));
    memset(m.expert_load, 0, sizeof(int64_t) * (size_t)(m.moe_layers * E));
    struct loom_adamw opt;
    loom_adamw_init(&opt, ops, &cfg.optim, 0, m.table.total);
    struct loom_schedule sched;
    loom_schedule_init(&sched, &cfg.schedule, 10 * (int64_t)N);
    const struct loom_ref_entry *ref_losses = loom_refdump_need(d, "adamw_losses");
    int steps = (int)ref_losses->count;
    float *losses = malloc_check(sizeof(float) * steps);
    for (int s = 0; s < steps; s++) {
        loom_model_zero_grads(&m);
        losses[s] = (float)(loom_model_forward(&m, inputs, targets, 1.0f / counted, NULL, NULL) / counted);
        loom_model_backward(&m);
        double norm = loom_grad_norm(ops, &m.table, m.grads);
        loom_adamw_step(&opt, &m.table, m.params, m.grads, loom_schedule_lr(&sched, (int64_t)(s + 1) * N),
                        loom_clip_factor(norm, cfg.optim.grad_clip));
        if (m.moe_layers) loom_model_update_router_bias(&m);
    }
    for (int l = 0, k = 0; l < cfg.model.num_layers; l++) {
        if (!loom_model_layer_is_moe(&cfg.model, l)) continue;
        snprintf(name, sizeof name, "final_buffer/layers.%d.mlp.gate.e_score_correction_bias", l);
        double *want_bias = to_double(loom_refdump_need(d, name));
        snprintf(test, sizeof test, "model_ref.%s.router_bias_after_10_steps.layer%d", variant, l);
        test_close(test, m.router_bias + (size_t)k * E, want_bias, E, 1e-6, 0);
        free(want_bias);
        k++;
    }
    want = to_double(ref_losses);
    snprintf(test, sizeof test, "model_ref.%s.adamw_losses", variant);
    test_close(test, losses, want, steps, 1e-5, 2e-4);
    free(want);

    free(losses);
    free(bias0);
    loom_adamw_free(&opt);
    free(grads);
    free(logits);
    free(host);
    free(inputs);
    free(targets);
    loom_model_destroy(&m);
    loom_config_free(&cfg);
    loom_refdump_free(d);
}

int main(void) {
    check_variant("mla", "tests/ref/tiny-mla.bin");
    check_variant("mha", "tests/ref/tiny-mha.bin");
    check_variant("moe", "tests/ref/tiny-moe.bin");
    return test_exit();
}
