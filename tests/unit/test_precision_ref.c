/*
 * tests/unit/test_precision_ref.c — loom's emulated bf16 / fp16 compute against an independent reference.
 *
 * tests/ref/tiny-<model>-<bf16|fp16>.bin are written by scripts/make_reference.py: the model of
 * tiny-<model>.bin computed in float64 but rounded to the compute dtype at every point where loom stores
 * that dtype (MixedRun there; model/ops_cpu_mixed.c and loom_model_sync_weights here), with the backward
 * written out op by op in loom's order. Each dump holds the weights, router biases and batch, the logits,
 * the loss and every gradient of one forward and backward with dloss = 1 / tokens (tiny-mla-fp16 also those
 * at a loss scale of 1024, unscaled). loom runs the same micro-batch through loom_ops_cpu_mixed and must
 * match; then the fp32 backend runs it too and must NOT match (the control: the tolerance separates a run
 * with the dump's cast points from one without them).
 *
 * The tolerance. Both sides round at the same points; they differ only where the arithmetic between two
 * cast points (fp32 GEMMs here, float64 there, or another BLAS kernel's summation order) puts a value on
 * the other side of a rounding boundary: that element is one ulp of the dtype off, and the ulp spreads to
 * what is computed from it. With bf16 operands the fp32 sums are nearly exact and this is rare; with fp16
 * (22-bit products) a few flips per backward start cascades through the gradients. Measured with
 * `python3 scripts/make_reference.py --spread` (the reference's GEMMs in float32, summed in 8 random
 * orders: how far an implementation with the right cast points may land), worst over the dumps:
 *                              other orders: bf16 / fp16      the fp32 model: bf16 / fp16
 *   logits rel_l2                        0 / 1.3e-4                4.8e-3 / 5.9e-4
 *   logits share > 2 ulps                0 / 0.012                 0.28   / 0.30
 *   grads pooled rel_l2             2.2e-3 / 3.9e-4                7.6e-3 / 1.0e-3
 *   grads pooled share > 2 ulps      0.048 / 0.10                  0.44   / 0.41
 *   worst gradient tensor rel_l2    5.2e-3 / 1.1e-3                (not a separator: 1.2e-2 / 1.7e-3)
 *   loss, relative                       0 / 3.0e-6                4.8e-4 / 2.8e-5
 * loom itself (make test prints its figures) lands well inside: bf16 logits exact, grads pooled rel_l2
 * <= 1.7e-4 with no element > 2 ulps; fp16 logits rel_l2 <= 1.4e-4, grads pooled <= 3.6e-4 and 6%.
 * The tolerance sits between the two columns, about 2x from each where the columns allow:
 *   every tensor           rel_l2 <= 1e-2 (bf16) / 2e-3 (fp16)          (a bound for gross errors)
 *   logits                 share > 2 ulps <= 0.05
 *   all gradients pooled   rel_l2 <= 4e-3 / 7e-4, share > 2 ulps <= 0.10 / 0.20
 *   loss, balance loss     relative error <= 1e-5;   MoE expert loads identical
 * and the fp32 run must fail the logits, the pooled gradients and the loss. Independent of the reference,
 * the logits and every matrix gradient with one contribution per micro-batch must be values of the dtype.
 * Removing one cast point from model/ops_cpu_mixed.c (tried one at a time): the SwiGLU output, the
 * residual add or the MoE combine fails the logits; the weight-gradient rounding fails the in-dtype check;
 * the RMSNorm input gradient, d(logits) and the scaled gather fail the bf16 pooled gradients. Not seen:
 * attention dq, RoPE backward, or leaving unrounded the sum of an accumulating input-gradient GEMM: they
 * land at rel_l2 1.7e-3 .. 4e-3 with 3.5% .. 10% > 2 ulps (bf16), inside the band that other summation
 * orders reach on tiny-mla.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/dtype.h"
#include "core/error.h"
#include "model/model.h"
#include "tests/ref/refdump.h"
#include "tests/test.h"

/* ---------------------------------------------------------------------------------------------- */
/* tolerance                                                                                        */

struct tolerance {
    double tensor_rel;             /* every tensor: ||got - want|| / ||want|| */
    double logits_far;             /* logits: share of elements more than 2 ulps of the dtype apart */
    double grads_far, grads_rel;   /* all gradients pooled: the same share, and ||got - want|| / ||want|| */
    double loss_rel;               /* loss and balance loss: |got - want| / |want| */
};

static struct tolerance tolerance_of(enum loom_dtype dt) {
    if (dt == LOOM_BF16) return (struct tolerance){1e-2, 0.05, 0.10, 4e-3, 1e-5};
    return (struct tolerance){2e-3, 0.05, 0.20, 7e-4, 1e-5};
}

/* the spacing of the dtype's values at |x| (the subnormal spacing below the smallest normal) */
static double dtype_ulp(enum loom_dtype dt, double x) {
    int mant = dt == LOOM_BF16 ? 7 : 10, emin = dt == LOOM_BF16 ? -126 : -14, e = emin + 1;
    if (x != 0) frexp(x, &e);
    return ldexp(1.0, (e - 1 < emin ? emin : e - 1) - mant);
}

/* sums over the elements of one or more tensors */
struct diff {
    double dd, ww;                 /* sum of (got - want)^2, of want^2 */
    size_t far, n;                 /* elements more than 2 ulps apart, elements */
    double max_ulps;
    double worst_rel;              /* of several tensors: the largest rel_l2 of one */
};

static void diff_add(struct diff *r, enum loom_dtype dt, const float *got, const float *want, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i], ulps = fabs(d) / dtype_ulp(dt, want[i]);
        if (!(ulps == ulps)) ulps = INFINITY;
        r->dd += d * d;
        r->ww += (double)want[i] * want[i];
        r->far += ulps > 2;
        r->max_ulps = ulps > r->max_ulps ? ulps : r->max_ulps;
    }
    r->n += n;
}

static double diff_rel(const struct diff *r) { return r->ww > 0 ? sqrt(r->dd / r->ww) : sqrt(r->dd); }
static double diff_far(const struct diff *r) { return r->n ? (double)r->far / (double)r->n : 0; }

static void diff_print(const char *tag, const char *what, int tensors, const struct diff *r) {
    printf("  %-22s %-16s %3d tensors: rel_l2 %.2e (worst tensor %.2e), share > 2 ulps %.4f, max %.3g ulps\n", tag,
           what, tensors, diff_rel(r), tensors > 1 ? r->worst_rel : diff_rel(r), diff_far(r), r->max_ulps);
}

/* ---------------------------------------------------------------------------------------------- */
/* one forward and backward of a dump's micro-batch                                                 */

struct run {
    float *logits;                 /* [N, V] */
    double loss, balance;
    float loads[64];               /* the single MoE layer's tokens per expert */
    float *grads;                  /* loom's parameter layout, dloss = 1 / tokens */
    float *scaled;                 /* dloss = loss_scale / tokens, divided by loss_scale; NULL without */
    float loss_scale;
};


/* Builds the dump's model over ops, runs it, and leaves the results in *out; the model is kept in *m (for
 * its parameter table) and must be destroyed by the caller. */
static void run_dump(const struct loom_refdump *d, const struct loom_config *cfg, const struct loom_ops *ops,
                     struct loom_model *m, struct run *out) {
    int B, T, *inputs, *targets;
    loom_refdump_batch(d, &B, &T, &inputs, &targets);
    int N = B * T, V = (int)cfg->model.vocab_size;

    loom_model_create(m, ops, &cfg->model, &cfg->optim, B, T);
    float *host = calloc_check(m->table.total, sizeof(float));
    char name[200];
    for (int i = 0; i < m->table.count; i++) {
        const struct loom_param *p = &m->table.params[i];
        snprintf(name, sizeof name, "param/%s", p->name);
        const struct loom_ref_entry *e = loom_refdump_need(d, name);
        CHECK(e->count == (int64_t)p->numel, "%s: %lld values in the dump, %zu in loom", p->name,
              (long long)e->count, p->numel);
        memcpy(host + p->offset, e->data, sizeof(float) * p->numel);
    }
    loom_model_set_params(m, host); /* fills the fp32 masters, rounds the compute copy */
    free(host);
    int E = (int)cfg->model.moe.experts;
    CHECK(m->moe_layers <= 1 && E <= 64, "the test reads one MoE layer of at most 64 experts");
    for (int l = 0, k = 0; l < cfg->model.num_layers; l++) {
        if (!loom_model_layer_is_moe(&cfg->model, l)) continue;
        snprintf(name, sizeof name, "buffer/layers.%d.mlp.gate.e_score_correction_bias", l);
        memcpy(m->router_bias + (size_t)k * E, loom_refdump_need(d, name)->data, sizeof(float) * E);
        k++;
    }
    float bal_scale = (float)(cfg->model.moe.balance_alpha / B);

    /* forward only: logits, loss, balance loss, expert loads */
    m->bal_scale = bal_scale;
    m->balance = 0;
    long counted = 0;
    double loss_sum = loom_model_forward(m, inputs, targets, 0.0f, &counted, NULL);
    out->loss = loss_sum / counted;
    out->balance = m->balance;
    out->logits = malloc_check(sizeof(float) * (size_t)N * V);
    ops->to_host(out->logits, m->cur->logits, sizeof(float) * (size_t)N * V);
    for (int e = 0; e < E && m->moe_layers; e++) out->loads[e] = (float)m->expert_load[e];

    /* forward and backward with dloss = scale / tokens; the balance loss is scaled alike */
    const struct loom_ref_entry *ls = loom_refdump_get(d, "loss_scale");
    float scales[2] = {1.0f, ls ? ((const float *)ls->data)[0] : 0.0f};
    out->loss_scale = scales[1];
    float **dst[2] = {&out->grads, &out->scaled};
    out->scaled = NULL;
    for (int k = 0; k < (ls ? 2 : 1); k++) {
        m->bal_scale = scales[k] * bal_scale;
        loom_model_zero_grads(m);
        loom_model_forward(m, inputs, targets, scales[k] / (float)counted, NULL, NULL);
        loom_model_backward(m);
        *dst[k] = malloc_check(sizeof(float) * m->table.total);
        loom_model_get_grads(m, *dst[k]);
        for (size_t i = 0; i < m->table.total; i++) (*dst[k])[i] /= scales[k];
    }
    free(inputs);
    free(targets);
}

static void run_free(struct run *r) {
    free(r->logits);
    free(r->grads);
    free(r->scaled);
}

/* ---------------------------------------------------------------------------------------------- */
/* comparison                                                                                       */

enum { CLS_MATRIX, CLS_NORM, CLS_ROUTER, CLS_COUNT };
static const char *cls_name[CLS_COUNT] = {"grad matrices", "grad norms", "grad router"};

static int param_class(const struct loom_param *p) {
    if (strstr(p->name, ".mlp.gate.weight")) return CLS_ROUTER;
    return p->shape.ndim == 2 ? CLS_MATRIX : CLS_NORM;
}

/* Every gradient against the dump's entries prefix<name>, pooled; per class of tensor, the figures are
 * printed. With check, one line per tensor for the per-tensor bound. */
static struct diff compare_grads(const char *tag, const char *label, const struct loom_refdump *d,
                                 const struct loom_model *m, enum loom_dtype dt, const float *grads, const char *prefix,
                                 int check) {
    struct tolerance tol = tolerance_of(dt);
    struct diff all = {0}, cls[CLS_COUNT] = {{0}};
    int count[CLS_COUNT] = {0};
    char name[200];
    for (int i = 0; i < m->table.count; i++) {
        const struct loom_param *p = &m->table.params[i];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        const float *want = loom_refdump_need(d, name)->data;
        struct diff one = {0};
        diff_add(&one, dt, grads + p->offset, want, p->numel);
        diff_add(&all, dt, grads + p->offset, want, p->numel);
        struct diff *c = &cls[param_class(p)];
        diff_add(c, dt, grads + p->offset, want, p->numel);
        c->worst_rel = diff_rel(&one) > c->worst_rel ? diff_rel(&one) : c->worst_rel;
        all.worst_rel = diff_rel(&one) > all.worst_rel ? diff_rel(&one) : all.worst_rel;
        count[param_class(p)]++;
        if (check)
            test_result(diff_rel(&one) <= tol.tensor_rel, test_name("precision_ref.%s.%s%s", tag, prefix, p->name),
                        "rel_l2 %.3g (tolerance %.1g), %.4f of %zu elements > 2 ulps apart, max %.3g ulps",
                        diff_rel(&one), tol.tensor_rel, diff_far(&one), p->numel, one.max_ulps);
    }
    for (int c = 0; c < CLS_COUNT; c++)
        if (count[c]) diff_print(label, cls_name[c], count[c], &cls[c]);
    diff_print(label, "grads pooled", m->table.count, &all);
    return all;
}

static int logits_within(const struct diff *r, struct tolerance t) {
    return diff_rel(r) <= t.tensor_rel && diff_far(r) <= t.logits_far;
}

static int grads_within(const struct diff *r, struct tolerance t) {
    return diff_rel(r) <= t.grads_rel && diff_far(r) <= t.grads_far;
}

static double rel_err(double got, double want) { return fabs(got - want) / fabs(want); }

/* how many of x[0..n) are not values of the dtype */
static size_t off_grid(enum loom_dtype dt, const float *x, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += loom_round_to(dt, x[i]) != x[i];
    return k;
}

/* The gradients of the matrices with a single contribution per micro-batch (not the embedding, which
 * also takes an fp32 scatter-add, nor the fp32 router) hold values of the dtype, times 1 / scale (a power
 * of two) when the run was loss-scaled and unscaled; returns the elements that do not. */
static size_t grads_off_grid(const struct loom_model *m, enum loom_dtype dt, const float *grads, float scale) {
    size_t k = 0;
    for (int i = 0; i < m->table.count; i++) {
        const struct loom_param *p = &m->table.params[i];
        if (param_class(p) != CLS_MATRIX || strcmp(p->name, "embed_tokens.weight") == 0) continue;
        for (size_t j = 0; j < p->numel; j++) {
            float x = grads[p->offset + j] * scale;
            k += loom_round_to(dt, x) != x;
        }
    }
    return k;
}

static void check_grads(const char *tag, const struct loom_refdump *d, const struct loom_model *m, enum loom_dtype dt,
                        const float *grads, const char *prefix, float scale) {
    struct tolerance tol = tolerance_of(dt);
    char label[80];
    snprintf(label, sizeof label, scale == 1 ? "%s" : "%s scaled", tag);
    struct diff all = compare_grads(tag, label, d, m, dt, grads, prefix, 1);
    test_result(grads_within(&all, tol), test_name("precision_ref.%s.%spooled", tag, prefix),
                "rel_l2 %.3g (tolerance %.1g), share > 2 ulps %.4f (tolerance %.2f) over %zu elements", diff_rel(&all),
                tol.grads_rel, diff_far(&all), tol.grads_far, all.n);
    size_t off = grads_off_grid(m, dt, grads, scale);
    test_result(off == 0, test_name("precision_ref.%s.%smatrices_in_%s", tag, prefix, loom_dtype_name(dt)),
                "%zu elements are not %s values", off, loom_dtype_name(dt));
}

static void check_dump(const char *model, enum loom_dtype dt) {
    const char *dtn = loom_dtype_name(dt);
    char path[200], tag[64], ctag[80];
    snprintf(path, sizeof path, "tests/ref/tiny-%s-%s.bin", model, dtn);
    snprintf(tag, sizeof tag, "%s-%s", model, dtn);
    snprintf(ctag, sizeof ctag, "%s fp32 run", tag);
    struct loom_refdump *d = loom_refdump_load(path);
    struct loom_config cfg;
    loom_config_init(&cfg);
    loom_config_load_string(&cfg, (const char *)loom_refdump_need(d, "config")->data, path);
    cfg.data.kind = LOOM_DATA_RANDOM;
    loom_config_validate(&cfg, 0);
    CHECK(cfg.precision.compute == (int)dt, "%s is for precision.compute = %s", path,
          loom_dtype_name((enum loom_dtype)cfg.precision.compute));
    struct tolerance tol = tolerance_of(dt);
    const struct loom_ops *cpu = loom_ops_cpu(2);
    const struct loom_ref_entry *want_logits = loom_refdump_need(d, "logits");
    size_t nl = (size_t)want_logits->count;
    double want_loss = ((const float *)loom_refdump_need(d, "loss")->data)[0];

    struct loom_model m;
    struct run r;
    run_dump(d, &cfg, loom_ops_cpu_mixed(cpu, dt), &m, &r);
    struct diff dl = {0};
    diff_add(&dl, dt, r.logits, want_logits->data, nl);
    diff_print(tag, "logits", 1, &dl);
    test_result(logits_within(&dl, tol), test_name("precision_ref.%s.logits", tag),
                "rel_l2 %.3g (tolerance %.1g), %.4f of %zu elements > 2 ulps apart (tolerance %.2f)", diff_rel(&dl),
                tol.tensor_rel, diff_far(&dl), nl, tol.logits_far);
    size_t off = off_grid(dt, r.logits, nl);
    test_result(off == 0, test_name("precision_ref.%s.logits_in_%s", tag, dtn), "%zu logits are not %s values", off,
                dtn);
    printf("  %-22s %-16s got %.7f want %.7f (relative %.2e)\n", tag, "loss", r.loss, want_loss,
           rel_err(r.loss, want_loss));
    test_result(rel_err(r.loss, want_loss) <= tol.loss_rel, test_name("precision_ref.%s.loss", tag),
                "got %.9g want %.9g (relative %.3g, tolerance %.1g)", r.loss, want_loss, rel_err(r.loss, want_loss),
                tol.loss_rel);
    if (m.moe_layers) {
        const struct loom_ref_entry *load = loom_refdump_need(d, "expert_load");
        int same = memcmp(r.loads, load->data, sizeof(float) * (size_t)load->count) == 0;
        test_result(same, test_name("precision_ref.%s.expert_load", tag), "the router chose other experts");
        double want_bal = ((const float *)loom_refdump_need(d, "balance_loss")->data)[0];
        test_result(rel_err(r.balance, want_bal) <= tol.loss_rel, test_name("precision_ref.%s.balance_loss", tag),
                    "got %.9g want %.9g", r.balance, want_bal);
    }
    check_grads(tag, d, &m, dt, r.grads, "grad/", 1.0f);
    if (r.scaled) check_grads(tag, d, &m, dt, r.scaled, "scaled_grad/", r.loss_scale);
    run_free(&r);
    loom_model_destroy(&m);

    /* the control: the fp32 backend on the same batch falls outside the tolerance on each count */
    run_dump(d, &cfg, cpu, &m, &r);
    struct diff cl = {0};
    diff_add(&cl, dt, r.logits, want_logits->data, nl);
    diff_print(ctag, "logits", 1, &cl);
    printf("  %-22s %-16s got %.7f want %.7f (relative %.2e)\n", ctag, "loss", r.loss, want_loss,
           rel_err(r.loss, want_loss));
    struct diff cg = compare_grads(tag, ctag, d, &m, dt, r.grads, "grad/", 0);
    test_result(!logits_within(&cl, tol) && !grads_within(&cg, tol) && rel_err(r.loss, want_loss) > tol.loss_rel,
                test_name("precision_ref.%s.fp32_run_outside_tolerance", tag),
                "the fp32 run is within the %s tolerance of the dump: logits rel_l2 %.3g, share > 2 ulps %.4f; "
                "gradients rel_l2 %.3g, share > 2 ulps %.4f; loss relative %.3g", dtn, diff_rel(&cl), diff_far(&cl),
                diff_rel(&cg), diff_far(&cg), rel_err(r.loss, want_loss));
    run_free(&r);
    loom_model_destroy(&m);
    loom_config_free(&cfg);
    loom_refdump_free(d);
}

/* ---------------------------------------------------------------------------------------------- */

/* one process per compute dtype: the emulating backend holds a single dtype (loom_ops_cpu_mixed) */
static void check_dtype(const char *arg) {
    if (strcmp(arg, "bf16") == 0) {
        check_dump("mla", LOOM_BF16);
        check_dump("mha", LOOM_BF16);
        check_dump("moe", LOOM_BF16);
    } else {
        check_dump("mla", LOOM_F16);
        check_dump("moe", LOOM_F16);
    }
    fflush(stdout);
    _exit(test_exit());
}

int main(void) {
    const char *dtypes[] = {"bf16", "fp16"};
    for (int i = 0; i < 2; i++) {
        char err[4096];
        int rc = test_run_child(check_dtype, dtypes[i], err, sizeof err);
        test_result(rc == 0, test_name("precision_ref.%s.process", dtypes[i]), "exited with %d: %s", rc, err);
    }
    return test_exit();
}
