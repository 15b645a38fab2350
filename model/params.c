/*
 * model/params.c — builds the parameter table for a dense MLA or MHA/GQA transformer.
 */
#include "model/params.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"

/* ---------------------------------------------------------------------------------------------- */
/* derived widths                                                                                   */

int64_t loom_model_qk_head_dim(const struct loom_model_config *m) {
    if (m->attention == LOOM_ATTENTION_MLA) return m->qk_nope_head_dim + m->qk_rope_head_dim;
    return m->head_dim ? m->head_dim : m->hidden_size / m->num_heads;
}

int64_t loom_model_v_head_dim(const struct loom_model_config *m) {
    if (m->v_head_dim) return m->v_head_dim;
    if (m->attention == LOOM_ATTENTION_MLA) return m->qk_nope_head_dim;
    return loom_model_qk_head_dim(m);
}

int64_t loom_model_kv_heads(const struct loom_model_config *m) {
    if (m->attention == LOOM_ATTENTION_MLA) return m->num_heads;
    return m->num_kv_heads ? m->num_kv_heads : m->num_heads;
}

/* ---------------------------------------------------------------------------------------------- */
/* building                                                                                         */

struct builder {
    struct loom_param_table *t;
    int cap;
    int layer;                     /* the block being added, or -1 */
    int expert;                    /* the routed expert being added, or -1 */
    const struct loom_model_config *m;
    const struct loom_optim_config *o;
};

static void add_param(struct builder *b, struct loom_shape shape, enum loom_init init,
                      enum loom_shard_style shard, const char *fmt, ...) {
    struct loom_param_table *t = b->t;
    if (t->count == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 64;
        t->params = realloc(t->params, sizeof(struct loom_param) * b->cap);
        CHECK(t->params != NULL, "out of memory growing the parameter table");
    }
    struct loom_param *p = &t->params[t->count];
    memset(p, 0, sizeof *p);
    p->index = t->count++;
    p->layer = b->layer;
    p->expert = b->expert;
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    CHECK(len < (int)sizeof p->name, "parameter name too long");
    p->shape = shape;
    p->local = shape;
    p->numel = (size_t)loom_shape_numel(&shape);
    p->offset = t->total;
    /* keep every tensor 16-float aligned so backends can vector-load any of them */
    t->total += (p->numel + 15) / 16 * 16;
    p->init = init;
    p->shard = shard;
    p->matmul = init == LOOM_INIT_NORMAL;
    if (init == LOOM_INIT_ONES) {
        p->init_std = 0;
        p->decay = b->o->decay_norms;
    } else {
        p->init_std = (float)b->m->init_std;
        p->decay = 1;
    }
}

static void add_matrix(struct builder *b, int64_t rows, int64_t cols, enum loom_shard_style shard,
                       const char *name, int layer) {
    add_param(b, loom_shape_2d(rows, cols), LOOM_INIT_NORMAL, shard, "layers.%d.%s.weight", layer, name);
}

static void add_norm(struct builder *b, int64_t n, const char *name, int layer) {
    add_param(b, loom_shape_1d(n), LOOM_INIT_ONES, LOOM_SHARD_REPLICATED, "layers.%d.%s.weight", layer, name);
}

static void add_attention(struct builder *b, int l) {
    const struct loom_model_config *m = b->m;
    int64_t C = m->hidden_size, H = m->num_heads;
    int64_t dqk = loom_model_qk_head_dim(m), dv = loom_model_v_head_dim(m);
    if (m->attention == LOOM_ATTENTION_MLA) {
        int64_t rq = m->q_lora_rank, rkv = m->kv_lora_rank, dn = m->qk_nope_head_dim, dr = m->qk_rope_head_dim;
        if (rq > 0) {
            add_matrix(b, rq, C, LOOM_SHARD_REPLICATED, "self_attn.q_a_proj", l);
            add_norm(b, rq, "self_attn.q_a_layernorm", l);
            add_matrix(b, H * dqk, rq, LOOM_SHARD_COLUMN, "self_attn.q_b_proj", l);
        } else {
            add_matrix(b, H * dqk, C, LOOM_SHARD_COLUMN, "self_attn.q_proj", l);
        }
        add_matrix(b, rkv + dr, C, LOOM_SHARD_REPLICATED, "self_attn.kv_a_proj_with_mqa", l);
        add_norm(b, rkv, "self_attn.kv_a_layernorm", l);
        add_matrix(b, H * (dn + dv), rkv, LOOM_SHARD_COLUMN, "self_attn.kv_b_proj", l);
    } else {
        int64_t Hkv = loom_model_kv_heads(m);
        add_matrix(b, H * dqk, C, LOOM_SHARD_COLUMN, "self_attn.q_proj", l);
        add_matrix(b, Hkv * dqk, C, LOOM_SHARD_COLUMN, "self_attn.k_proj", l);
        add_matrix(b, Hkv * dv, C, LOOM_SHARD_COLUMN, "self_attn.v_proj", l);
        if (m->qk_norm) {
            add_norm(b, dqk, "self_attn.q_norm", l);
            add_norm(b, dqk, "self_attn.k_norm", l);
        }
    }
    add_matrix(b, C, H * dv, LOOM_SHARD_ROW, "self_attn.o_proj", l);
}

int loom_model_layer_is_moe(const struct loom_model_config *m, int l) {
    return m->moe.experts > 0 && l >= m->moe.first_dense;
}

/* dots.llm1 / DeepSeek-V3 MoE MLP (HF names): the router, the routed experts, the shared experts
 * as one SwiGLU. The router's score-correction bias is a buffer, not a parameter. */
static void add_moe(struct builder *b, int l) {
    const struct loom_moe_config *e = &b->m->moe;
    int64_t C = b->m->hidden_size, I = e->intermediate, S = e->shared * e->intermediate;
    add_matrix(b, e->experts, C, LOOM_SHARD_REPLICATED, "mlp.gate", l);
    char name[64];
    for (int x = 0; x < e->experts; x++) {
        b->expert = x;
        snprintf(name, sizeof name, "mlp.experts.%d.gate_proj", x);
        add_matrix(b, I, C, LOOM_SHARD_EXPERT, name, l);
        snprintf(name, sizeof name, "mlp.experts.%d.up_proj", x);
        add_matrix(b, I, C, LOOM_SHARD_EXPERT, name, l);
        snprintf(name, sizeof name, "mlp.experts.%d.down_proj", x);
        add_matrix(b, C, I, LOOM_SHARD_EXPERT, name, l);
    }
    b->expert = -1;
    if (S > 0) {
        add_matrix(b, S, C, LOOM_SHARD_COLUMN, "mlp.shared_experts.gate_proj", l);
        add_matrix(b, S, C, LOOM_SHARD_COLUMN, "mlp.shared_experts.up_proj", l);
        add_matrix(b, C, S, LOOM_SHARD_ROW, "mlp.shared_experts.down_proj", l);
    }
}

static void layout(struct loom_param_table *t);

void loom_params_build(struct loom_param_table *t, const struct loom_model_config *m,
                       const struct loom_optim_config *o) {
    memset(t, 0, sizeof *t);
    struct builder b = {.t = t, .cap = 0, .layer = -1, .expert = -1, .m = m, .o = o};
    int64_t C = m->hidden_size, F = m->intermediate_size, V = m->vocab_size;

    add_param(&b, loom_shape_2d(V, C), LOOM_INIT_NORMAL, LOOM_SHARD_VOCAB, "embed_tokens.weight");
    struct loom_param *emb = &t->params[0];
    emb->init_std = (float)(m->embed_init_std > 0 ? m->embed_init_std : m->init_std);
    emb->decay = o->decay_embeddings;
    emb->matmul = m->tie_word_embeddings; /* the lookup is free; a tied head is a matmul */

    for (int l = 0; l < m->num_layers; l++) {
        b.layer = l;
        add_norm(&b, C, "input_layernorm", l);
        add_attention(&b, l);
        add_norm(&b, C, "post_attention_layernorm", l);
        if (loom_model_layer_is_moe(m, l)) {
            add_moe(&b, l);
            continue;
        }
        add_matrix(&b, F, C, LOOM_SHARD_COLUMN, "mlp.gate_proj", l);
        add_matrix(&b, F, C, LOOM_SHARD_COLUMN, "mlp.up_proj", l);
        add_matrix(&b, C, F, LOOM_SHARD_ROW, "mlp.down_proj", l);
    }
    b.layer = -1;
    add_param(&b, loom_shape_1d(C), LOOM_INIT_ONES, LOOM_SHARD_REPLICATED, "norm.weight");
    if (!m->tie_word_embeddings) add_param(&b, loom_shape_2d(V, C), LOOM_INIT_NORMAL, LOOM_SHARD_VOCAB, "lm_head.weight");
    layout(t);
}

void loom_params_free(struct loom_param_table *t) {
    free(t->params);
    free(t->index);
    memset(t, 0, sizeof *t);
}

/* FNV-1a */
static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* the name index, rebuilt whenever the table changes */
static void index_build(struct loom_param_table *t) {
    free(t->index);
    t->index_cap = 16;
    while (t->index_cap < 2 * t->count) t->index_cap *= 2;
    t->index = malloc_check(sizeof(int) * t->index_cap);
    for (int i = 0; i < t->index_cap; i++) t->index[i] = -1;
    for (int i = 0; i < t->count; i++) {
        size_t slot = name_hash(t->params[i].name) & (size_t)(t->index_cap - 1);
        while (t->index[slot] >= 0) slot = (slot + 1) & (size_t)(t->index_cap - 1);
        t->index[slot] = i;
    }
}

/* Offsets in table order, routed experts' tensors after the rest (expert_offset marks the split). */
static void layout(struct loom_param_table *t) {
    size_t total = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) t->expert_offset = total;
        for (int i = 0; i < t->count; i++) {
            struct loom_param *p = &t->params[i];
            if ((p->expert >= 0) != pass) continue;
            p->numel = (size_t)loom_shape_numel(&p->local);
            p->offset = total;
            total += (p->numel + 15) / 16 * 16;
        }
    }
    t->total = total;
    index_build(t);
}

void loom_params_shard_ep(struct loom_param_table *t, int ep_rank, int ep, int experts) {
    int per = experts / ep, n = 0;
    for (int i = 0; i < t->count; i++) {
        const struct loom_param *p = &t->params[i];
        if (p->expert < 0 || p->expert / per == ep_rank) t->params[n++] = *p;
    }
    t->count = n;
    layout(t);
}

void loom_params_shard_tp(struct loom_param_table *t, int tp_rank, int tp) {
    for (int i = 0; i < t->count; i++) {
        struct loom_param *p = &t->params[i];
        int64_t rows = p->shape.dims[0], cols = p->shape.ndim > 1 ? p->shape.dims[1] : 1;
        switch (p->shard) {
        case LOOM_SHARD_COLUMN:
        case LOOM_SHARD_VOCAB:
            p->row0 = rows / tp * tp_rank;
            p->local = loom_shape_2d(rows / tp, cols);
            break;
        case LOOM_SHARD_ROW:
            p->col0 = cols / tp * tp_rank;
            p->local = loom_shape_2d(rows, cols / tp);
            break;
        case LOOM_SHARD_REPLICATED:
        case LOOM_SHARD_EXPERT: break;
        }
        p->tp_sum_grad = tp > 1 && (strstr(p->name, "q_norm") || strstr(p->name, "k_norm"));
    }
    layout(t);
}

void loom_params_select_stage(struct loom_param_table *t, int layer_lo, int layer_hi, int first, int last, int tied) {
    int n = 0;
    for (int i = 0; i < t->count; i++) {
        struct loom_param p = t->params[i];
        int keep;
        if (p.layer >= 0) keep = p.layer >= layer_lo && p.layer < layer_hi;
        else if (strcmp(p.name, "embed_tokens.weight") == 0) keep = first || (last && tied);
        else keep = last; /* norm.weight, lm_head.weight */
        if (keep) t->params[n++] = p;
    }
    t->count = n;
    layout(t);
}

int loom_params_find(const struct loom_param_table *t, const char *name) {
    size_t slot = name_hash(name) & (size_t)(t->index_cap - 1);
    for (; t->index[slot] >= 0; slot = (slot + 1) & (size_t)(t->index_cap - 1))
        if (strcmp(t->params[t->index[slot]].name, name) == 0) return t->index[slot];
    return -1;
}

void loom_params_init(const struct loom_param_table *t, float *params, uint64_t seed) {
    for (int i = 0; i < t->count; i++) {
        const struct loom_param *p = &t->params[i];
        float *x = params + p->offset;
        if (p->init == LOOM_INIT_ONES) {
            for (size_t j = 0; j < p->numel; j++) x[j] = 1.0f;
            continue;
        }
        int64_t cols = p->shape.ndim > 1 ? p->shape.dims[1] : 1;
        int64_t lrows = p->local.dims[0], lcols = p->local.ndim > 1 ? p->local.dims[1] : 1;
        if (lcols == cols) {
            loom_rng_normal_fill(x, p->numel, seed, (uint64_t)p->index, (uint64_t)(p->row0 * cols), 0.0f, p->init_std);
            continue;
        }
        for (int64_t r = 0; r < lrows; r++)
            loom_rng_normal_fill(x + r * lcols, (size_t)lcols, seed, (uint64_t)p->index,
                                 (uint64_t)((p->row0 + r) * cols + p->col0), 0.0f, p->init_std);
    }
}

const char *loom_shard_style_name(enum loom_shard_style s) {
    switch (s) {
    case LOOM_SHARD_REPLICATED: return "replicated";
    case LOOM_SHARD_COLUMN: return "column";
    case LOOM_SHARD_ROW: return "row";
    case LOOM_SHARD_VOCAB: return "vocab";
    case LOOM_SHARD_EXPERT: return "expert";
    }
    return "?";
}

/* ---------------------------------------------------------------------------------------------- */
/* counts                                                                                           */

void loom_model_count(struct loom_model_counts *c, const struct loom_param_table *t,
                      const struct loom_model_config *m, int64_t seq_len) {
    memset(c, 0, sizeof *c);
    int64_t experts = 0, experts_matmul = 0; /* routed expert parameters */
    for (int i = 0; i < t->count; i++) {
        const struct loom_param *p = &t->params[i];
        c->total_params += (int64_t)p->numel;
        if (p->matmul) c->matmul_params += (int64_t)p->numel;
        if (p->expert >= 0) experts += (int64_t)p->numel, experts_matmul += p->matmul ? (int64_t)p->numel : 0;
    }
    /* a token runs top_k of the E routed experts of each MoE layer (all experts of a layer are alike) */
    int64_t E = m->moe.experts, K = m->moe.top_k;
    c->active_params = c->total_params - (E ? experts / E * (E - K) : 0);
    c->matmul_params -= E ? experts_matmul / E * (E - K) : 0;
    double attn = 6.0 * (double)m->num_layers * (double)seq_len * (double)m->num_heads *
                  (double)(loom_model_qk_head_dim(m) + loom_model_v_head_dim(m)) / 2.0;
    c->flops_per_token = 6.0 * (double)c->matmul_params + attn;
}
