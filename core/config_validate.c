/*
 * core/config_validate.c — the one validation pass over a resolved config: every cross-key rule,
 * checked before anything is allocated. The first problem exits 2 naming the key.
 */
#include "core/config.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "data/curriculum.h"
#include "optim/schedule.h"

static void require_positive(const char *key, int64_t v) {
    if (v <= 0) loom_input_error(key, NULL, "must be positive, got %lld", (long long)v);
}

static void require_nonneg(const char *key, int64_t v) {
    if (v < 0) loom_input_error(key, NULL, "must not be negative, got %lld", (long long)v);
}

static void require_range(const char *key, double v, double lo, double hi, int lo_open, int hi_open) {
    int bad = !isfinite(v) || (lo_open ? v <= lo : v < lo) || (hi_open ? v >= hi : v > hi);
    if (bad)
        loom_input_error(key, NULL, "%.6g is outside %c%g, %g%c", v, lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']');
}

/* sizes are kept small enough that every product the run forms fits its integer type */
enum { SIZE_LIMIT = 1 << 24 };

static void require_size(const char *key, int64_t v) {
    if (v > SIZE_LIMIT) loom_input_error(key, NULL, "%lld is larger than the supported %d", (long long)v, SIZE_LIMIT);
}

static void validate_model(const struct loom_model_config *m) {
    require_size("model.hidden_size", m->hidden_size);
    require_size("model.num_layers", m->num_layers);
    require_size("model.num_heads", m->num_heads);
    require_size("model.num_kv_heads", m->num_kv_heads);
    require_size("model.head_dim", m->head_dim);
    require_size("model.v_head_dim", m->v_head_dim);
    require_size("model.q_lora_rank", m->q_lora_rank);
    require_size("model.kv_lora_rank", m->kv_lora_rank);
    require_size("model.qk_nope_head_dim", m->qk_nope_head_dim);
    require_size("model.qk_rope_head_dim", m->qk_rope_head_dim);
    require_size("model.intermediate_size", m->intermediate_size);
    require_positive("model.vocab_size", m->vocab_size);
    require_positive("model.hidden_size", m->hidden_size);
    require_positive("model.num_layers", m->num_layers);
    require_positive("model.num_heads", m->num_heads);
    require_positive("model.intermediate_size", m->intermediate_size);
    require_nonneg("model.num_kv_heads", m->num_kv_heads);
    require_nonneg("model.head_dim", m->head_dim);
    require_nonneg("model.v_head_dim", m->v_head_dim);
    require_range("model.rope_theta", m->rope_theta, 0, INFINITY, 1, 1);
    require_range("model.rms_norm_eps", m->rms_norm_eps, 0, 1, 1, 1);
    require_range("model.init_std", m->init_std, 0, INFINITY, 1, 1);
    require_range("model.embed_init_std", m->embed_init_std, 0, INFINITY, 0, 1);
    if (m->vocab_size > 0x7fffffff) loom_input_error("model.vocab_size", NULL, "%lld is too large", (long long)m->vocab_size);

    if (m->attention == LOOM_ATTENTION_MLA) {
        require_nonneg("model.q_lora_rank", m->q_lora_rank);
        require_positive("model.kv_lora_rank", m->kv_lora_rank);
        require_positive("model.qk_nope_head_dim", m->qk_nope_head_dim);
        require_positive("model.qk_rope_head_dim", m->qk_rope_head_dim);
        if (m->qk_rope_head_dim % 2)
            loom_input_error("model.qk_rope_head_dim", "RoPE rotates pairs of values", "%lld is odd",
                             (long long)m->qk_rope_head_dim);
        if (m->qk_norm)
            loom_input_error("model.qk_norm", "QK-norm is an mha option; MLA normalises its latents instead",
                             "not available with attention = mla");
        if (m->num_kv_heads && m->num_kv_heads != m->num_heads)
            loom_input_error("model.num_kv_heads", "leave it 0 with attention = mla",
                             "MLA has one key/value head per query head (%lld), got %lld", (long long)m->num_heads,
                             (long long)m->num_kv_heads);
        return;
    }
    if (m->head_dim == 0 && m->hidden_size % m->num_heads)
        loom_input_error("model.num_heads", "choose heads that divide the width, or set model.head_dim",
                         "%lld heads do not divide model.hidden_size %lld", (long long)m->num_heads,
                         (long long)m->hidden_size);
    int64_t hkv = m->num_kv_heads ? m->num_kv_heads : m->num_heads;
    if (m->num_heads % hkv)
        loom_input_error("model.num_kv_heads", "GQA needs num_heads to be a multiple of num_kv_heads",
                         "%lld does not divide model.num_heads %lld", (long long)hkv, (long long)m->num_heads);
    int64_t d = m->head_dim ? m->head_dim : m->hidden_size / m->num_heads;
    if (d % 2)
        loom_input_error(m->head_dim ? "model.head_dim" : "model.num_heads", "RoPE rotates pairs of values",
                         "head width %lld is odd", (long long)d);
}

static void validate_moe(const struct loom_model_config *m, const struct loom_parallel_config *p) {
    const struct loom_moe_config *e = &m->moe;
    require_nonneg("moe.experts", e->experts);
    require_size("moe.experts", e->experts);
    if (e->experts == 0) return;
    if (e->top_k < 1 || e->top_k > e->experts)
        loom_input_error("moe.top_k", NULL, "%lld is outside 1..moe.experts = %lld", (long long)e->top_k,
                         (long long)e->experts);
    require_positive("moe.intermediate", e->intermediate);
    require_size("moe.intermediate", e->intermediate);
    require_nonneg("moe.shared", e->shared);
    require_size("moe.shared", e->shared);
    if (e->first_dense < 0 || e->first_dense > m->num_layers)
        loom_input_error("moe.first_dense", NULL, "%lld is outside 0..model.num_layers = %lld",
                         (long long)e->first_dense, (long long)m->num_layers);
    require_range("moe.scaling", e->scaling, 0, INFINITY, 1, 1);
    require_range("moe.bias_update_rate", e->bias_update_rate, 0, INFINITY, 0, 1);
    require_range("moe.balance_alpha", e->balance_alpha, 0, INFINITY, 0, 1);
    require_positive("moe.groups", e->groups);
    if (e->experts % e->groups)
        loom_input_error("moe.groups", NULL, "%lld groups do not divide moe.experts = %lld", (long long)e->groups,
                         (long long)e->experts);
    if (e->topk_groups < 1 || e->topk_groups > e->groups)
        loom_input_error("moe.topk_groups", NULL, "%lld is outside 1..moe.groups = %lld", (long long)e->topk_groups,
                         (long long)e->groups);
    if (e->top_k > e->topk_groups * (e->experts / e->groups))
        loom_input_error("moe.top_k", "keep more groups (moe.topk_groups) or route to fewer experts",
                         "%lld experts per token, but the kept groups hold only %lld", (long long)e->top_k,
                         (long long)(e->topk_groups * (e->experts / e->groups)));
    if ((e->shared * e->intermediate) % p->tp)
        loom_input_error("parallel.tp", "tensor parallelism splits the shared experts evenly",
                         "%lld does not divide moe.shared x moe.intermediate = %lld", (long long)p->tp,
                         (long long)(e->shared * e->intermediate));
    if (e->experts % p->ep)
        loom_input_error("parallel.ep", "expert parallelism splits the experts of a layer evenly",
                         "%lld does not divide moe.experts = %lld", (long long)p->ep, (long long)e->experts);
}

static void validate_train(const struct loom_train_config *t) {
    require_positive("train.steps", t->steps);
    require_positive("train.seq_len", t->seq_len);
    require_positive("train.micro_batch", t->micro_batch);
    require_positive("train.global_batch", t->global_batch);
    require_nonneg("train.seed", t->seed);
    require_nonneg("train.threads", t->threads);
    require_size("train.seq_len", t->seq_len);
    require_size("train.micro_batch", t->micro_batch);
    if (t->micro_batch * t->seq_len > INT32_MAX)
        loom_input_error("train.micro_batch", "use a smaller micro-batch and more accumulation",
                         "%lld sequences of %lld tokens exceed %d tokens per micro-batch", (long long)t->micro_batch,
                         (long long)t->seq_len, INT32_MAX);
    if (t->global_batch > INT64_MAX / t->seq_len / t->steps)
        loom_input_error("train.steps", NULL, "%lld steps of %lld x %lld tokens overflow the token counter",
                         (long long)t->steps, (long long)t->global_batch, (long long)t->seq_len);
    if (t->global_batch % t->micro_batch)
        loom_input_error("train.global_batch", "the global batch is a whole number of micro-batches",
                         "%lld is not a multiple of train.micro_batch %lld", (long long)t->global_batch,
                         (long long)t->micro_batch);
    if (!t->run_dir || !t->run_dir[0]) loom_input_error("train.run_dir", NULL, "must name a folder");
}

static void validate_optim(const struct loom_optim_config *o) {
    require_range("optim.beta1", o->beta1, 0, 1, 0, 1);
    require_range("optim.beta2", o->beta2, 0, 1, 0, 1);
    require_range("optim.eps", o->eps, 0, 1, 1, 1);
    require_range("optim.weight_decay", o->weight_decay, 0, INFINITY, 0, 1);
    require_range("optim.grad_clip", o->grad_clip, 0, INFINITY, 0, 1);
}

static void validate_schedule(const struct loom_schedule_config *s) {
    require_range("schedule.lr", s->lr, 0, INFINITY, 0, 1);
    require_range("schedule.min_lr", s->min_lr, 0, INFINITY, 0, 1);
    require_nonneg("schedule.warmup_tokens", s->warmup_tokens);
    require_nonneg("schedule.decay_tokens", s->decay_tokens);
    require_nonneg("schedule.anneal_start", s->anneal_start);
    if (s->min_lr > s->lr)
        loom_input_error("schedule.min_lr", NULL, "%g is above schedule.lr %g", s->min_lr, s->lr);
    struct loom_anneal_segment segs[LOOM_SCHEDULE_MAX_SEGMENTS];
    int n;
    char err[256];
    if (loom_schedule_parse_anneal(s->anneal, segs, &n, err, sizeof err))
        loom_input_error("schedule.anneal", "write segments as TOKENS:LR[:linear|cosine], e.g. 1T:3e-5, 200B:1e-5",
                         "%s", err);
    if (n && s->kind != LOOM_SCHEDULE_WSD)
        loom_input_error("schedule.anneal", "set schedule.kind = wsd", "annealing segments need the wsd schedule");
    if (s->kind == LOOM_SCHEDULE_WSD && s->anneal_start < s->warmup_tokens)
        loom_input_error("schedule.anneal_start", NULL, "annealing starts (%lld) before warmup ends (%lld)",
                         (long long)s->anneal_start, (long long)s->warmup_tokens);
}

/* sequences per step on one dp rank, and how they split into micro-batches */
static void validate_parallel(const struct loom_config *cfg) {
    const struct loom_parallel_config *p = &cfg->parallel;
    const struct loom_model_config *m = &cfg->model;
    require_positive("parallel.dp", p->dp);
    require_positive("parallel.tp", p->tp);
    require_positive("parallel.pp", p->pp);
    require_positive("parallel.ep", p->ep);
    require_nonneg("parallel.micro_batches", p->micro_batches);
    require_size("parallel.dp", p->dp);
    require_size("parallel.tp", p->tp);
    require_size("parallel.pp", p->pp);
    if (p->zero != 0 && p->zero != 1) loom_input_error("parallel.zero", NULL, "must be 0 or 1, got %lld", (long long)p->zero);
    if ((p->dp * p->tp) % p->ep)
        loom_input_error("parallel.ep", "ep ranks come from the dp x tp ranks of one stage",
                         "%lld does not divide dp x tp = %lld", (long long)p->ep, (long long)(p->dp * p->tp));
    int64_t hkv = m->attention == LOOM_ATTENTION_MHA && m->num_kv_heads ? m->num_kv_heads : m->num_heads;
    struct { const char *key; int64_t v; } split[] = {
        {"model.num_heads", m->num_heads}, {"model.num_kv_heads", hkv}, {"model.vocab_size", m->vocab_size},
        {"model.intermediate_size", m->intermediate_size}};
    for (size_t i = 0; i < sizeof split / sizeof split[0]; i++)
        if (split[i].v % p->tp)
            loom_input_error("parallel.tp", "tensor parallelism splits heads, vocabulary and FFN width evenly",
                             "%lld does not divide %s = %lld", (long long)p->tp, split[i].key, (long long)split[i].v);
    if (p->pp > m->num_layers)
        loom_input_error("parallel.pp", "every stage needs at least one layer", "%lld stages for %lld layers",
                         (long long)p->pp, (long long)m->num_layers);
    if (p->stage_layers && p->stage_layers[0]) {
        int64_t n[4096];
        int count = 0;
        int64_t sum = 0;
        char *copy = strdup(p->stage_layers), *save = NULL;
        for (char *tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
            if (count == 4096 || loom_parse_count(tok, &n[count]) || n[count] < 1)
                loom_input_error("parallel.stage_layers", "e.g. 3,3,2", "`%s` is not a positive layer count", tok);
            sum += n[count++];
        }
        free(copy);
        if (count != p->pp || sum != m->num_layers)
            loom_input_error("parallel.stage_layers", NULL, "%d stages with %lld layers, expected %lld stages with %lld",
                             count, (long long)sum, (long long)p->pp, (long long)m->num_layers);
    }
    const struct loom_train_config *t = &cfg->train;
    if (t->global_batch % p->dp)
        loom_input_error("train.global_batch", "each data-parallel rank takes an equal slice",
                         "%lld sequences do not split over parallel.dp = %lld", (long long)t->global_batch,
                         (long long)p->dp);
    int64_t per_rank = t->global_batch / p->dp;
    if (p->micro_batches && per_rank % p->micro_batches)
        loom_input_error("parallel.micro_batches", NULL, "%lld micro-batches do not divide %lld sequences per dp rank",
                         (long long)p->micro_batches, (long long)per_rank);
    if (!p->micro_batches && per_rank % t->micro_batch)
        loom_input_error("train.micro_batch", "or set parallel.micro_batches",
                         "%lld sequences per dp rank (global_batch %lld / dp %lld) are not a multiple of %lld",
                         (long long)per_rank, (long long)t->global_batch, (long long)p->dp, (long long)t->micro_batch);
}

/* dp x tp x pp, or -1 when the product does not fit (sizes not yet checked can be anything) */
static int64_t layout_ranks(const struct loom_parallel_config *p) {
    int64_t n;
    if (__builtin_mul_overflow(p->dp, p->tp, &n) || __builtin_mul_overflow(n, p->pp, &n)) return -1;
    return n;
}

void loom_config_validate(const struct loom_config *cfg, int world) {
    const struct loom_parallel_config *p = &cfg->parallel;
    if (world > 0 && layout_ranks(p) != world) {
        char ranks[32] = "more than 2^63";
        if (layout_ranks(p) >= 0) snprintf(ranks, sizeof ranks, "%lld", (long long)layout_ranks(p));
        loom_input_error("parallel", "launch dp x tp x pp ranks, e.g. scripts/launch.sh -np N ./loom train ...",
                         "dp(%lld)*tp(%lld)*pp(%lld) = %s != world size %d", (long long)p->dp, (long long)p->tp,
                         (long long)p->pp, ranks, world);
    }
    validate_model(&cfg->model);
    validate_train(&cfg->train);
    validate_optim(&cfg->optim);
    validate_schedule(&cfg->schedule);
    validate_parallel(cfg);
    validate_moe(&cfg->model, &cfg->parallel);
    if (cfg->data.kind == LOOM_DATA_SHARDS && (!cfg->data.train || !cfg->data.train[0]) && cfg->nsources == 0)
        loom_input_error("data.train",
                         "make shards with `loom data prep`, then set data.train = FOLDER or add [source.NAME] sections "
                         "(or data.kind = random)",
                         "no training shards given");
    const struct loom_precision_config *pr = &cfg->precision;
    require_range("precision.loss_scale", pr->loss_scale, 0, INFINITY, 0, 1);
    require_range("precision.initial_scale", pr->initial_scale, 0, INFINITY, 1, 1);
    require_range("precision.growth_factor", pr->growth_factor, 1, INFINITY, 0, 1);
    require_range("precision.backoff_factor", pr->backoff_factor, 0, 1, 1, 1);
    require_range("precision.min_scale", pr->min_scale, 0, INFINITY, 1, 1);
    require_positive("precision.growth_interval", pr->growth_interval);
    require_nonneg("train.max_nonfinite_steps", cfg->train.max_nonfinite_steps);
    require_nonneg("checkpoint.every", cfg->checkpoint.every);
    require_nonneg("checkpoint.every_tokens", cfg->checkpoint.every_tokens);
    require_range("checkpoint.every_minutes", cfg->checkpoint.every_minutes, 0, INFINITY, 0, 1);
    require_nonneg("checkpoint.keep", cfg->checkpoint.keep);
    require_nonneg("checkpoint.release_every", cfg->checkpoint.release_every);
    require_nonneg("train.stop_after", cfg->train.stop_after);
    if (cfg->log.dump_logits[0] && layout_ranks(p) != 1)
        loom_input_error("log.dump_logits", "run the study on one process", "needs dp = tp = pp = 1");
    require_positive("log.every", cfg->log.every);
    require_nonneg("eval.every", cfg->eval.every);
    require_positive("eval.sequences", cfg->eval.sequences);
    require_range("curriculum.max_epochs", cfg->curriculum.max_epochs, 0, INFINITY, 1, 1);
    struct loom_curriculum c;
    loom_curriculum_build(&c, cfg, NULL);
    require_range("log.peak_tflops", cfg->log.peak_tflops, 0, INFINITY, 0, 1);
}
