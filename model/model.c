/*
 * model/model.c — forward and backward of the dense transformer, layer by layer, over the backend.
 *
 * Legend: B sequences, T tokens each, N = B*T, C width, V vocabulary, F SwiGLU width, H heads,
 * Hkv key/value heads, Dqk q/k head width, Dv value head width; MLA: rq = q_lora_rank,
 * rkv = kv_lora_rank, dn = qk_nope_head_dim, dr = qk_rope_head_dim (Dqk = dn + dr).
 *
 * Block (pre-norm):  mid = x + Attn(RMSNorm(x));  out = mid + MLP(RMSNorm(mid)).
 * MLA follows DeepSeek-V3 (report section 2.1.1, inference/model.py): q through an optional
 * normalised latent, one RoPE key of width dr shared by all heads, RMSNorm on the kv latent only,
 * per-head [k_nope | v] from kv_b, softmax scale 1/sqrt(dn + dr).
 */
#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "model/moe.h"

struct layer_weights {
    float *ln1, *ln2;
    float *q_a, *q_a_norm, *q_b, *q, *k, *v, *q_norm, *k_norm;
    float *kv_a, *kv_norm, *kv_b, *o;
    float *gate, *up, *down;
};

static void tp_sum(const struct loom_model *m, float *buf, size_t n);

struct loom_layer_acts {
    struct layer_weights w, g;     /* this layer's parameters and their gradients */
    float *ln1, *rstd1;            /* [N,C], [N] */
    float *qa, *qa_n, *rstd_qa;    /* mla, rq > 0: [N,rq] x2, [N] */
    float *q_raw, *k_raw;          /* mha with qk_norm: projections before the norm [N,H*Dqk], [N,Hkv*Dqk] */
    float *rstd_q, *rstd_k;        /* mha with qk_norm: [N*H], [N*Hkv] */
    float *kva;                    /* mla: [N, rkv + dr], rope applied in place to the last dr columns */
    float *c_n, *rstd_kv;          /* mla: normalised latent [N,rkv], [N] */
    float *kvb;                    /* mla: [N, H*(dn+dv)] */
    float *q, *k, *v;              /* attention inputs [N,H,Dqk], [N,Hkv,Dqk], [N,Hkv,Dv] (after RoPE) */
    float *saved;                  /* what attention_forward keeps for backward (ops.h): probabilities [B,H,T,T],
                                    * or the logsumexp [B,H,T] under flash attention */
    float *att;                    /* [N, H*Dv] */
    float *mid;                    /* residual after attention [N,C] */
    float *ln2, *rstd2;            /* [N,C], [N] */
    float *gate, *up, *hmlp;       /* [N,F] x3 (dense MLP) */
    struct loom_moe_layer *moe;    /* MoE MLP, or NULL */
    float *bias;                   /* MoE: this block's router bias and expert loads, in the model */
    int64_t *load;
};

/* backward work space, shared by all layers */
struct scratch {
    float *dres, *dln, *dtmp;                      /* [N,C] */
    float *datt, *dq, *dk, *dv;                    /* attention */
    float *dq_raw, *dk_raw;                        /* mha qk_norm */
    float *dkvb, *dc_n, *dkva, *dqa_n, *dqa;       /* mla */
    float *dh, *dgate, *dup;                       /* mlp [N,F] */
};

/* ---------------------------------------------------------------------------------------------- */
/* allocation                                                                                       */

/* Lays the backward work space out from base; with base NULL only measures. Returns its floats. */
static size_t scratch_layout(const struct loom_model *m, float *base, struct scratch *s) {
    const struct loom_model_config *cfg = &m->cfg;
    size_t N = (size_t)m->B * m->T, C = cfg->hidden_size, F = cfg->intermediate_size;
    size_t H = cfg->num_heads, Hkv = loom_model_kv_heads(cfg);
    size_t Dqk = loom_model_qk_head_dim(cfg), Dv = loom_model_v_head_dim(cfg);
    size_t rq = cfg->q_lora_rank, rkv = cfg->kv_lora_rank, dn = cfg->qk_nope_head_dim, dr = cfg->qk_rope_head_dim;
    int mla = cfg->attention == LOOM_ATTENTION_MLA;
    struct scratch unused;
    if (!s) s = &unused;
    size_t off = 0;
#define CARVE(field, n) (s->field = base ? base + off : NULL, off += ((n) + 15) / 16 * 16)
    CARVE(dres, N * C);
    CARVE(dln, N * C);
    CARVE(dtmp, N * C);
    CARVE(datt, N * H * Dv);
    CARVE(dq, N * H * Dqk);
    CARVE(dk, N * Hkv * Dqk);
    CARVE(dv, N * Hkv * Dv);
    CARVE(dq_raw, cfg->qk_norm ? N * H * Dqk : 0);
    CARVE(dk_raw, cfg->qk_norm ? N * Hkv * Dqk : 0);
    CARVE(dkvb, mla ? N * H * (dn + Dv) : 0);
    CARVE(dc_n, mla ? N * rkv : 0);
    CARVE(dkva, mla ? N * (rkv + dr) : 0);
    CARVE(dqa_n, mla ? N * rq : 0);
    CARVE(dqa, mla ? N * rq : 0);
    CARVE(dh, N * F);
    CARVE(dgate, N * F);
    CARVE(dup, N * F);
#undef CARVE
    return off;
}

/* with m->ops == NULL only counts, so `loom info` can size a run without allocating it */
static float *act_alloc(struct loom_model *m, size_t n) {
    m->act_floats += n;
    return m->ops ? m->ops->alloc(sizeof(float) * n) : NULL;
}

/* a buffer of a layer's activations: its own, or (shared != NULL) the one all layers and slots share,
 * allocated the first time */
static float *act_take(struct loom_model *m, float **shared, size_t n) {
    if (!shared) return act_alloc(m, n);
    if (!*shared) *shared = act_alloc(m, n);
    return *shared;
}

/* The saved activations of one micro-batch in slot s (s->acts NULL: only counting). Counts the whole
 * model when m->stage covers it. */
static void alloc_activations(struct loom_model *m, struct loom_slot *s) {
    const struct loom_model_config *cfg = &m->cfg;
    int B = m->B, T = m->T;
    size_t N = (size_t)B * T, C = cfg->hidden_size, F = cfg->intermediate_size;
    size_t H = cfg->num_heads, Hkv = loom_model_kv_heads(cfg);
    size_t Dqk = loom_model_qk_head_dim(cfg), Dv = loom_model_v_head_dim(cfg);
    size_t rq = cfg->q_lora_rank, rkv = cfg->kv_lora_rank, dn = cfg->qk_nope_head_dim, dr = cfg->qk_rope_head_dim;
    int mla = cfg->attention == LOOM_ATTENTION_MLA;
    int L = m->stage.layer_hi - m->stage.layer_lo;

    s->res = act_alloc(m, (size_t)(L + 1) * N * C);
    /* under full recomputation a dense block's buffers are shared (its forward runs again before its
     * backward); under selective recomputation only attention's saved buffer is. Counting without a backend
     * (loom info) sizes that buffer as the CPU backend does: the probabilities. */
    struct loom_layer_acts counting = {0}, *shared = m->shared_acts ? m->shared_acts : &counting;
    for (int l = 0; l < L; l++) {
        struct loom_layer_acts dry, *a = s->acts ? &s->acts[l] : &dry;
        int layer = m->stage.layer_lo + l, dense = !loom_model_layer_is_moe(cfg, layer);
        struct loom_layer_acts *sh = m->stage.recompute == LOOM_RECOMPUTE_FULL && dense ? shared : NULL;
#define TAKE(field, n) (a->field = act_take(m, sh ? &sh->field : NULL, (n)))
        TAKE(ln1, N * C);
        TAKE(rstd1, N);
        if (mla) {
            if (rq > 0) {
                TAKE(qa, N * rq);
                TAKE(qa_n, N * rq);
                TAKE(rstd_qa, N);
            }
            TAKE(kva, N * (rkv + dr));
            TAKE(c_n, N * rkv);
            TAKE(rstd_kv, N);
            TAKE(kvb, N * H * (dn + Dv));
        } else if (cfg->qk_norm) {
            TAKE(q_raw, N * H * Dqk);
            TAKE(k_raw, N * Hkv * Dqk);
            TAKE(rstd_q, N * H);
            TAKE(rstd_k, N * Hkv);
        }
        TAKE(q, N * H * Dqk);
        TAKE(k, N * Hkv * Dqk);
        TAKE(v, N * Hkv * Dv);
        size_t saved = m->ops ? m->ops->attention_saved_floats(B, T, (int)H, (int)Dqk, (int)Dv) : (size_t)B * H * T * T;
        a->saved = act_take(m, m->stage.recompute != LOOM_RECOMPUTE_NONE ? &shared->saved : NULL, saved);
        TAKE(att, N * H * Dv);
        TAKE(mid, N * C);
        TAKE(ln2, N * C);
        TAKE(rstd2, N);
        if (loom_model_layer_is_moe(cfg, layer)) {
            if (s->acts) {
                a->moe = loom_moe_layer_create(m, layer, B, T);
                m->act_floats += loom_moe_layer_floats(a->moe);
            } else {
                m->act_floats += loom_moe_activation_floats(cfg, B, T);
            }
            continue;
        }
        TAKE(gate, N * F);
        TAKE(up, N * F);
        TAKE(hmlp, N * F);
#undef TAKE
    }
    if (m->stage.last) {
        s->lnf = act_alloc(m, N * C);
        s->rstdf = act_alloc(m, N);
        s->dlnf = act_alloc(m, N * C);
        s->losses = act_alloc(m, N);
        if (m->stage.tp > 1) {
            s->rowmax = act_alloc(m, N);
            s->sumexp = act_alloc(m, N);
            s->tlogit = act_alloc(m, N);
        }
    } else {
        s->dout = act_alloc(m, N * C);
    }
}

/* Rows of the head's chunk: every row, unless the logits of every row would pass this many floats. A test
 * hook, LOOM_TEST_HEAD_ROWS=R, takes R rows at a time, so small models run the chunked path. */
enum { HEAD_CHUNK_FLOATS = 1 << 25 };

static int head_rows(size_t N, size_t V) {
    size_t rows = N * V <= HEAD_CHUNK_FLOATS ? N : HEAD_CHUNK_FLOATS / V;
    const char *hook = getenv("LOOM_TEST_HEAD_ROWS");
    if (hook && atoi(hook) > 0 && (size_t)atoi(hook) < N) rows = (size_t)atoi(hook);
    return (int)(rows ? rows : 1);
}

size_t loom_model_activation_floats(const struct loom_model_config *cfg, int B, int T) {
    struct loom_model m;
    memset(&m, 0, sizeof m);
    m.cfg = *cfg;
    m.B = B;
    m.T = T;
    m.stage = (struct loom_stage){.layer_lo = 0, .layer_hi = (int)cfg->num_layers, .first = 1, .last = 1};
    struct loom_slot s;
    memset(&s, 0, sizeof s);
    alloc_activations(&m, &s);
    return m.act_floats + (size_t)head_rows((size_t)B * T, cfg->vocab_size) * cfg->vocab_size;
}

static float *resolve(const struct loom_model *m, float *base, int layer, const char *name) {
    char full[LOOM_PARAM_NAME_MAX];
    snprintf(full, sizeof full, "layers.%d.%s.weight", layer, name);
    int i = loom_params_find(&m->table, full);
    return i < 0 ? NULL : base + m->table.params[i].offset;
}

static void resolve_layer(const struct loom_model *m, struct layer_weights *w, float *base, int l) {
    w->ln1 = resolve(m, base, l, "input_layernorm");
    w->ln2 = resolve(m, base, l, "post_attention_layernorm");
    w->q_a = resolve(m, base, l, "self_attn.q_a_proj");
    w->q_a_norm = resolve(m, base, l, "self_attn.q_a_layernorm");
    w->q_b = resolve(m, base, l, "self_attn.q_b_proj");
    w->q = resolve(m, base, l, "self_attn.q_proj");
    w->k = resolve(m, base, l, "self_attn.k_proj");
    w->v = resolve(m, base, l, "self_attn.v_proj");
    w->q_norm = resolve(m, base, l, "self_attn.q_norm");
    w->k_norm = resolve(m, base, l, "self_attn.k_norm");
    w->kv_a = resolve(m, base, l, "self_attn.kv_a_proj_with_mqa");
    w->kv_norm = resolve(m, base, l, "self_attn.kv_a_layernorm");
    w->kv_b = resolve(m, base, l, "self_attn.kv_b_proj");
    w->o = resolve(m, base, l, "self_attn.o_proj");
    w->gate = resolve(m, base, l, "mlp.gate_proj");
    w->up = resolve(m, base, l, "mlp.up_proj");
    w->down = resolve(m, base, l, "mlp.down_proj");
}

static float *param_ptr(const struct loom_model *m, float *base, const char *name) {
    int i = loom_params_find(&m->table, name);
    return i < 0 ? NULL : base + m->table.params[i].offset;
}

void loom_model_create_stage(struct loom_model *m, const struct loom_ops *ops, const struct loom_model_config *cfg,
                             const struct loom_optim_config *optim, int B, int T, const struct loom_stage *stage,
                             int slots) {
    memset(m, 0, sizeof *m);
    m->ops = ops;
    m->stage = *stage;
    if (m->stage.tp < 1) m->stage.tp = 1;
    int tp = m->stage.tp;
    m->B = B;
    m->T = T;
    m->T_max = T;
    loom_params_build(&m->table, cfg, optim);
    loom_params_select_stage(&m->table, stage->layer_lo, stage->layer_hi, stage->first, stage->last,
                             cfg->tie_word_embeddings);
    loom_params_shard_tp(&m->table, m->stage.tp_rank, tp);
    if (m->stage.ep < 1) m->stage.ep = 1;
    if (m->stage.ep > 1) loom_params_shard_ep(&m->table, m->stage.ep_rank, m->stage.ep, (int)cfg->moe.experts);
    /* ep x tp: each tp rank routes its own slice of the tokens, so the router's gradient is a tp sum */
    if (m->stage.ep > 1 && tp > 1)
        for (int i = 0; i < m->table.count; i++)
            if (strstr(m->table.params[i].name, ".mlp.gate.weight")) m->table.params[i].tp_sum_grad = 1;
    /* the rest of the model works on this rank's share: resolve the derived widths first */
    m->cfg = *cfg;
    m->cfg.head_dim = loom_model_qk_head_dim(cfg);
    m->cfg.v_head_dim = loom_model_v_head_dim(cfg);
    m->cfg.num_kv_heads = loom_model_kv_heads(cfg) / tp;
    m->cfg.num_heads = cfg->num_heads / tp;
    m->cfg.intermediate_size = cfg->intermediate_size / tp;
    m->cfg.vocab_size = cfg->vocab_size / tp;
    m->params = ops->alloc(sizeof(float) * m->table.total);
    m->grads = ops->alloc(sizeof(float) * m->table.total);
    /* mixed precision: fp32 masters apart, params holds the compute copy (loom_model_sync_weights) */
    m->master = ops->compute == LOOM_F32 ? m->params : ops->alloc(sizeof(float) * m->table.total);

    int L = stage->layer_hi - stage->layer_lo;
    int E = (int)cfg->moe.experts;
    for (int l = stage->layer_lo; l < stage->layer_hi; l++) m->moe_layers += loom_model_layer_is_moe(cfg, l);
    m->router_bias = calloc_check((size_t)(m->moe_layers * E + 1), sizeof(float));
    m->expert_load = calloc_check((size_t)(m->moe_layers * E + 1), sizeof(int64_t));
    m->nslots = slots;
    m->slots = calloc_check((size_t)slots, sizeof(struct loom_slot));
    if (stage->recompute != LOOM_RECOMPUTE_NONE) m->shared_acts = calloc_check(1, sizeof(struct loom_layer_acts));
    for (int k = 0; k < slots; k++) {
        struct loom_slot *s = &m->slots[k];
        s->inputs = ops->alloc(sizeof(int) * (size_t)B * T);
        s->targets = ops->alloc(sizeof(int) * (size_t)B * T);
        s->acts = calloc_check((size_t)(L ? L : 1), sizeof(struct loom_layer_acts));
        for (int l = 0; l < L; l++) {
            resolve_layer(m, &s->acts[l].w, m->params, stage->layer_lo + l);
            resolve_layer(m, &s->acts[l].g, m->grads, stage->layer_lo + l);
        }
        alloc_activations(m, s);
        for (int l = 0, k = 0; l < L; l++) {
            if (!s->acts[l].moe) continue;
            s->acts[l].bias = m->router_bias + (size_t)k * E;
            s->acts[l].load = m->expert_load + (size_t)k * E;
            k++;
        }
    }
    if (stage->last) {
        m->head_rows = head_rows((size_t)B * T, m->cfg.vocab_size);
        m->logits = act_alloc(m, (size_t)m->head_rows * m->cfg.vocab_size);
        for (int k = 0; k < slots; k++) m->slots[k].logits = m->logits;
    }
    m->cur = &m->slots[0];

    /* one backward work space, carved from a single allocation */
    m->scratch_floats = scratch_layout(m, NULL, NULL);
    m->scratch = ops->alloc(sizeof(float) * m->scratch_floats);
}

void loom_model_create(struct loom_model *m, const struct loom_ops *ops, const struct loom_model_config *cfg,
                       const struct loom_optim_config *optim, int B, int T) {
    struct loom_stage whole = {.layer_lo = 0, .layer_hi = (int)cfg->num_layers, .first = 1, .last = 1};
    loom_model_create_stage(m, ops, cfg, optim, B, T, &whole, 1);
}

void loom_model_use_slot(struct loom_model *m, int k) {
    CHECK(k >= 0 && k < m->nslots, "slot %d of %d", k, m->nslots);
    m->cur = &m->slots[k];
}

float *loom_model_stage_input(struct loom_model *m) { return m->cur->res; }

float *loom_model_stage_output(struct loom_model *m) {
    return m->cur->res + (size_t)(m->stage.layer_hi - m->stage.layer_lo) * m->B * m->T * m->cfg.hidden_size;
}

float *loom_model_stage_output_grad(struct loom_model *m) { return m->cur->dout; }

float *loom_model_stage_input_grad(struct loom_model *m) { return m->scratch; /* dres comes first */ }

/* frees a layer's buffers, except those it shares (the same buffer in `shared`) */
static void layer_acts_free(struct loom_model *m, struct loom_layer_acts *a, const struct loom_layer_acts *shared) {
#define ACT_FIELDS(X)                                                                                              \
    X(ln1) X(rstd1) X(qa) X(qa_n) X(rstd_qa) X(q_raw) X(k_raw) X(rstd_q) X(rstd_k) X(kva) X(c_n) X(rstd_kv) X(kvb) \
    X(q) X(k) X(v) X(saved) X(att) X(mid) X(ln2) X(rstd2) X(gate) X(up) X(hmlp)
#define FREE_FIELD(f) if (a->f && !(shared && shared->f == a->f)) m->ops->free(a->f);
    ACT_FIELDS(FREE_FIELD)
#undef FREE_FIELD
#undef ACT_FIELDS
}

void loom_model_destroy(struct loom_model *m) {
    const struct loom_ops *ops = m->ops;
    int L = m->stage.layer_hi - m->stage.layer_lo;
    for (int k = 0; k < m->nslots; k++) {
        struct loom_slot *s = &m->slots[k];
        for (int l = 0; l < L; l++) {
            struct loom_layer_acts *a = &s->acts[l];
            if (a->moe) loom_moe_layer_free(m, a->moe);
            layer_acts_free(m, a, m->shared_acts);
        }
        free(s->acts);
        float *bufs[] = {s->res, s->lnf, s->rstdf, s->dlnf, s->losses, s->dout, s->rowmax, s->sumexp, s->tlogit};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            if (bufs[i]) ops->free(bufs[i]);
        ops->free(s->inputs);
        ops->free(s->targets);
    }
    free(m->slots);
    if (m->logits) ops->free(m->logits);
    if (m->shared_acts) layer_acts_free(m, m->shared_acts, NULL);
    free(m->shared_acts);
    free(m->router_bias);
    free(m->expert_load);
    ops->free(m->scratch);
    if (m->master != m->params) ops->free(m->master);
    ops->free(m->params);
    ops->free(m->grads);
    loom_params_free(&m->table);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------------------------------------- */
/* tensor parallelism: Megatron's f and g — a row-parallel output, and the input gradient of a
 * column-parallel layer, are partial sums over the tp group                                        */

static void tp_sum(const struct loom_model *m, float *buf, size_t n) {
    if (m->stage.tp > 1) {
        m->comm.sum(m->comm.ctx, buf, n);
        m->ops->round_compute(buf, n);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* parameters                                                                                       */

void loom_model_init_params(struct loom_model *m, uint64_t seed) {
    float *host = calloc_check(m->table.total, sizeof(float));
    loom_params_init(&m->table, host, seed);
    m->ops->from_host(m->master, host, sizeof(float) * m->table.total);
    free(host);
    loom_model_sync_weights(m);
}

void loom_model_set_params(struct loom_model *m, const float *host) {
    m->ops->from_host(m->master, host, sizeof(float) * m->table.total);
    loom_model_sync_weights(m);
}

void loom_model_get_params(const struct loom_model *m, float *host) {
    m->ops->to_host(host, m->master, sizeof(float) * m->table.total);
}

/* The compute copy: matrices rounded to the compute dtype (the MoE router's stays fp32, as the router
 * runs in fp32), vectors (norm weights) as they are. */
void loom_model_sync_weights(struct loom_model *m) {
    if (m->master == m->params) return;
    /* in backend memory: a copy, then the matrices rounded in place (no trip through the host) */
    enum { PIECE = 1 << 30 };
    for (size_t off = 0; off < m->table.total; off += PIECE) {
        int n = (int)(m->table.total - off < PIECE ? m->table.total - off : PIECE);
        m->ops->copy_2d(m->params + off, n, m->master + off, n, 1, n, 0);
    }
    for (int i = 0; i < m->table.count; i++) {
        const struct loom_param *p = &m->table.params[i];
        if (p->shape.ndim == 2 && !strstr(p->name, ".mlp.gate.weight"))
            m->ops->round_compute(m->params + p->offset, p->numel);
    }
}

void loom_model_get_grads(const struct loom_model *m, float *host) {
    m->ops->to_host(host, m->grads, sizeof(float) * m->table.total);
}

void loom_model_zero_grads(struct loom_model *m) { m->ops->zero(m->grads, sizeof(float) * m->table.total); }

/* ---------------------------------------------------------------------------------------------- */
/* attention: MLA                                                                                   */

static void mla_forward(const struct loom_model *m, struct loom_layer_acts *a) {
    const struct loom_ops *ops = m->ops;
    const struct loom_model_config *cfg = &m->cfg;
    int B = m->B, T = m->T, N = B * T, C = (int)cfg->hidden_size, H = (int)cfg->num_heads;
    int rq = (int)cfg->q_lora_rank, rkv = (int)cfg->kv_lora_rank;
    int dn = (int)cfg->qk_nope_head_dim, dr = (int)cfg->qk_rope_head_dim, dv = (int)loom_model_v_head_dim(cfg);
    int Dqk = dn + dr, ldkva = rkv + dr, ldkvb = dn + dv;
    float eps = (float)cfg->rms_norm_eps, theta = (float)cfg->rope_theta;
    int inter = cfg->rope_style == LOOM_ROPE_INTERLEAVED;

    /* queries: q = W_UQ RMSNorm(W_DQ h) (or W_Q h), per head [q_nope | q_rope], RoPE on q_rope */
    if (rq > 0) {
        ops->matmul_forward(a->qa, a->ln1, a->w.q_a, N, C, rq);
        ops->rmsnorm_forward(a->qa_n, a->rstd_qa, a->qa, a->w.q_a_norm, N, rq, rq, rq, eps);
        ops->matmul_forward(a->q, a->qa_n, a->w.q_b, N, rq, H * Dqk);
    } else {
        ops->matmul_forward(a->q, a->ln1, a->w.q, N, C, H * Dqk);
    }
    ops->rope_forward(a->q + dn, N, T, H, H * Dqk, Dqk, dr, theta, inter);

    /* keys/values: [c_kv | k_rope] = W_DKV h; c_kv normalised; one RoPE key shared by all heads */
    ops->matmul_forward(a->kva, a->ln1, a->w.kv_a, N, C, ldkva);
    ops->rmsnorm_forward(a->c_n, a->rstd_kv, a->kva, a->w.kv_norm, N, rkv, rkv, ldkva, eps);
    ops->rope_forward(a->kva + rkv, N, T, 1, ldkva, 0, dr, theta, inter);
    ops->matmul_forward(a->kvb, a->c_n, a->w.kv_b, N, rkv, H * ldkvb);
    for (int h = 0; h < H; h++) {
        ops->copy_2d(a->k + h * Dqk, H * Dqk, a->kvb + h * ldkvb, H * ldkvb, N, dn, 0);
        ops->copy_2d(a->k + h * Dqk + dn, H * Dqk, a->kva + rkv, ldkva, N, dr, 0);
        ops->copy_2d(a->v + h * dv, H * dv, a->kvb + h * ldkvb + dn, H * ldkvb, N, dv, 0);
    }
    ops->attention_forward(a->att, a->saved, a->q, a->k, a->v, B, T, H, H, Dqk, dv, 1.0f / sqrtf((float)Dqk));
}

/* d(att) in s->datt -> parameter grads and d(ln1) in s->dln */
static void mla_backward(const struct loom_model *m, struct loom_layer_acts *a, struct scratch *s) {
    const struct loom_ops *ops = m->ops;
    const struct loom_model_config *cfg = &m->cfg;
    int B = m->B, T = m->T, N = B * T, C = (int)cfg->hidden_size, H = (int)cfg->num_heads;
    int rq = (int)cfg->q_lora_rank, rkv = (int)cfg->kv_lora_rank;
    int dn = (int)cfg->qk_nope_head_dim, dr = (int)cfg->qk_rope_head_dim, dv = (int)loom_model_v_head_dim(cfg);
    int Dqk = dn + dr, ldkva = rkv + dr, ldkvb = dn + dv;
    float theta = (float)cfg->rope_theta;
    int inter = cfg->rope_style == LOOM_ROPE_INTERLEAVED;

    ops->attention_backward(s->dq, s->dk, s->dv, s->datt, a->att, a->saved, a->q, a->k, a->v, B, T, H, H, Dqk, dv,
                            1.0f / sqrtf((float)Dqk));
    /* un-assemble k/v: per-head parts back to kv_b's output; the shared rope key sums over heads (over
     * every tp rank's heads: the latent columns are zeroed so the whole buffer can be summed) */
    ops->zero(s->dkva, sizeof(float) * (size_t)N * ldkva);
    for (int h = 0; h < H; h++) {
        ops->copy_2d(s->dkvb + h * ldkvb, H * ldkvb, s->dk + h * Dqk, H * Dqk, N, dn, 0);
        ops->copy_2d(s->dkvb + h * ldkvb + dn, H * ldkvb, s->dv + h * dv, H * dv, N, dv, 0);
        ops->copy_2d(s->dkva + rkv, ldkva, s->dk + h * Dqk + dn, H * Dqk, N, dr, h > 0);
    }
    ops->rope_backward(s->dkva + rkv, N, T, 1, ldkva, 0, dr, theta, inter);
    tp_sum(m, s->dkva, (size_t)N * ldkva);
    ops->matmul_backward_weight(a->g.kv_b, s->dkvb, a->c_n, N, rkv, H * ldkvb);
    ops->matmul_backward_input(s->dc_n, s->dkvb, a->w.kv_b, N, rkv, H * ldkvb, 0);
    tp_sum(m, s->dc_n, (size_t)N * rkv);
    ops->rmsnorm_backward(s->dkva, a->g.kv_norm, s->dc_n, a->kva, a->w.kv_norm, a->rstd_kv, N, rkv, rkv, ldkva);
    ops->matmul_backward_weight(a->g.kv_a, s->dkva, a->ln1, N, C, ldkva);
    ops->matmul_backward_input(s->dln, s->dkva, a->w.kv_a, N, C, ldkva, 0);

    ops->rope_backward(s->dq + dn, N, T, H, H * Dqk, Dqk, dr, theta, inter);
    if (rq > 0) {
        ops->matmul_backward_weight(a->g.q_b, s->dq, a->qa_n, N, rq, H * Dqk);
        ops->matmul_backward_input(s->dqa_n, s->dq, a->w.q_b, N, rq, H * Dqk, 0);
        tp_sum(m, s->dqa_n, (size_t)N * rq);
        ops->rmsnorm_backward(s->dqa, a->g.q_a_norm, s->dqa_n, a->qa, a->w.q_a_norm, a->rstd_qa, N, rq, rq, rq);
        ops->matmul_backward_weight(a->g.q_a, s->dqa, a->ln1, N, C, rq);
        ops->matmul_backward_input(s->dln, s->dqa, a->w.q_a, N, C, rq, 1);
    } else {
        ops->matmul_backward_weight(a->g.q, s->dq, a->ln1, N, C, H * Dqk);
        ops->matmul_backward_input(s->dtmp, s->dq, a->w.q, N, C, H * Dqk, 0);
        tp_sum(m, s->dtmp, (size_t)N * C);
        ops->accumulate(s->dln, s->dtmp, (size_t)N * C);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* attention: MHA / GQA with optional QK-norm (dots.llm1: RMSNorm over head_dim before RoPE)         */

static void mha_forward(const struct loom_model *m, struct loom_layer_acts *a) {
    const struct loom_ops *ops = m->ops;
    const struct loom_model_config *cfg = &m->cfg;
    int B = m->B, T = m->T, N = B * T, C = (int)cfg->hidden_size, H = (int)cfg->num_heads;
    int Hkv = (int)loom_model_kv_heads(cfg), D = (int)loom_model_qk_head_dim(cfg), Dv = (int)loom_model_v_head_dim(cfg);
    float eps = (float)cfg->rms_norm_eps, theta = (float)cfg->rope_theta;
    int inter = cfg->rope_style == LOOM_ROPE_INTERLEAVED;

    if (cfg->qk_norm) {
        ops->matmul_forward(a->q_raw, a->ln1, a->w.q, N, C, H * D);
        ops->matmul_forward(a->k_raw, a->ln1, a->w.k, N, C, Hkv * D);
        ops->rmsnorm_forward(a->q, a->rstd_q, a->q_raw, a->w.q_norm, N * H, D, D, D, eps);
        ops->rmsnorm_forward(a->k, a->rstd_k, a->k_raw, a->w.k_norm, N * Hkv, D, D, D, eps);
    } else {
        ops->matmul_forward(a->q, a->ln1, a->w.q, N, C, H * D);
        ops->matmul_forward(a->k, a->ln1, a->w.k, N, C, Hkv * D);
    }
    ops->matmul_forward(a->v, a->ln1, a->w.v, N, C, Hkv * Dv);
    ops->rope_forward(a->q, N, T, H, H * D, D, D, theta, inter);
    ops->rope_forward(a->k, N, T, Hkv, Hkv * D, D, D, theta, inter);
    ops->attention_forward(a->att, a->saved, a->q, a->k, a->v, B, T, H, Hkv, D, Dv, 1.0f / sqrtf((float)D));
}

static void mha_backward(const struct loom_model *m, struct loom_layer_acts *a, struct scratch *s) {
    const struct loom_ops *ops = m->ops;
    const struct loom_model_config *cfg = &m->cfg;
    int B = m->B, T = m->T, N = B * T, C = (int)cfg->hidden_size, H = (int)cfg->num_heads;
    int Hkv = (int)loom_model_kv_heads(cfg), D = (int)loom_model_qk_head_dim(cfg), Dv = (int)loom_model_v_head_dim(cfg);
    float theta = (float)cfg->rope_theta;
    int inter = cfg->rope_style == LOOM_ROPE_INTERLEAVED;

    ops->attention_backward(s->dq, s->dk, s->dv, s->datt, a->att, a->saved, a->q, a->k, a->v, B, T, H, Hkv, D, Dv,
                            1.0f / sqrtf((float)D));
    ops->rope_backward(s->dq, N, T, H, H * D, D, D, theta, inter);
    ops->rope_backward(s->dk, N, T, Hkv, Hkv * D, D, D, theta, inter);
    float *dq = s->dq, *dk = s->dk;
    const float *ln1 = a->ln1;
    if (cfg->qk_norm) {
        ops->rmsnorm_backward(s->dq_raw, a->g.q_norm, s->dq, a->q_raw, a->w.q_norm, a->rstd_q, N * H, D, D, D);
        ops->rmsnorm_backward(s->dk_raw, a->g.k_norm, s->dk, a->k_raw, a->w.k_norm, a->rstd_k, N * Hkv, D, D, D);
        dq = s->dq_raw;
        dk = s->dk_raw;
    }
    ops->matmul_backward_weight(a->g.q, dq, ln1, N, C, H * D);
    ops->matmul_backward_weight(a->g.k, dk, ln1, N, C, Hkv * D);
    ops->matmul_backward_weight(a->g.v, s->dv, ln1, N, C, Hkv * Dv);
    ops->matmul_backward_input(s->dln, dq, a->w.q, N, C, H * D, 0);
    ops->matmul_backward_input(s->dln, dk, a->w.k, N, C, Hkv * D, 1);
    ops->matmul_backward_input(s->dln, s->dv, a->w.v, N, C, Hkv * Dv, 1);
    tp_sum(m, s->dln, (size_t)N * C);
}

/* ---------------------------------------------------------------------------------------------- */
/* the block                                                                                        */

/* the attention half of a block: mid = x + Attn(RMSNorm(x)), ln2 = RMSNorm(mid); out is a temporary */
static void block_attention_forward(const struct loom_model *m, struct loom_layer_acts *a, const float *x,
                                    float *out) {
    const struct loom_ops *ops = m->ops;
    const struct loom_model_config *cfg = &m->cfg;
    int N = m->B * m->T, C = (int)cfg->hidden_size, H = (int)cfg->num_heads;
    int Dv = (int)loom_model_v_head_dim(cfg);
    float eps = (float)cfg->rms_norm_eps;

    ops->rmsnorm_forward(a->ln1, a->rstd1, x, a->w.ln1, N, C, C, C, eps);
    if (cfg->attention == LOOM_ATTENTION_MLA) mla_forward(m, a);
    else mha_forward(m, a);
    ops->matmul_forward(out, a->att, a->w.o, N, H * Dv, C); /* out used as a temporary */
    tp_sum(m, out, (size_t)N * C);
    ops->add(a->mid, x, out, (size_t)N * C);

    ops->rmsnorm_forward(a->ln2, a->rstd2, a->mid, a->w.ln2, N, C, C, C, eps);
}

/* the dense MLP half: out = mid + MLP(ln2) */
static void block_mlp_forward(const struct loom_model *m, struct loom_layer_acts *a, float *out) {
    const struct loom_ops *ops = m->ops;
    const struct loom_model_config *cfg = &m->cfg;
    int N = m->B * m->T, C = (int)cfg->hidden_size, F = (int)cfg->intermediate_size;
    ops->matmul_forward(a->gate, a->ln2, a->w.gate, N, C, F);
    ops->matmul_forward(a->up, a->ln2, a->w.up, N, C, F);
    ops->swiglu_forward(a->hmlp, a->gate, a->up, N, F);
    ops->matmul_forward(out, a->hmlp, a->w.down, N, F, C);
    tp_sum(m, out, (size_t)N * C);
    ops->accumulate(out, a->mid, (size_t)N * C);
}

/* the dense MLP half backward: s->dln = d(ln2) from s->dres = d(out) */
static void block_mlp_backward(const struct loom_model *m, struct loom_layer_acts *a, struct scratch *s) {
    const struct loom_ops *ops = m->ops;
    const struct loom_model_config *cfg = &m->cfg;
    int N = m->B * m->T, C = (int)cfg->hidden_size, F = (int)cfg->intermediate_size;
    {
        ops->matmul_backward_weight(a->g.down, s->dres, a->hmlp, N, F, C);
        ops->matmul_backward_input(s->dh, s->dres, a->w.down, N, F, C, 0);
        ops->swiglu_backward(s->dgate, s->dup, s->dh, a->gate, a->up, N, F);
        ops->matmul_backward_weight(a->g.gate, s->dgate, a->ln2, N, C, F);
        ops->matmul_backward_weight(a->g.up, s->dup, a->ln2, N, C, F);
        ops->matmul_backward_input(s->dln, s->dgate, a->w.gate, N, C, F, 0);
        ops->matmul_backward_input(s->dln, s->dup, a->w.up, N, C, F, 1);
        tp_sum(m, s->dln, (size_t)N * C);
    }
}

/* selective recomputation: attention's saved buffer (the probabilities or the logsumexp, shared by all layers)
 * again from the layer's q, k, v; the output, recomputed too, is the layer's own `att`, unchanged (the ops are
 * deterministic) */
static void attention_forward_again(const struct loom_model *m, struct loom_layer_acts *a) {
    const struct loom_model_config *cfg = &m->cfg;
    int B = m->B, T = m->T, H = (int)cfg->num_heads, Dqk = (int)loom_model_qk_head_dim(cfg);
    int Dv = (int)loom_model_v_head_dim(cfg);
    int Hkv = cfg->attention == LOOM_ATTENTION_MLA ? H : (int)loom_model_kv_heads(cfg);
    m->ops->attention_forward(a->att, a->saved, a->q, a->k, a->v, B, T, H, Hkv, Dqk, Dv, 1.0f / sqrtf((float)Dqk));
}

/* the rest of a block's backward, from s->dln = d(ln2): on return s->dres holds d(x) */
static void block_attention_backward(const struct loom_model *m, struct loom_layer_acts *a, const float *x,
                                     struct scratch *s) {
    const struct loom_ops *ops = m->ops;
    const struct loom_model_config *cfg = &m->cfg;
    int N = m->B * m->T, C = (int)cfg->hidden_size, H = (int)cfg->num_heads;
    int Dv = (int)loom_model_v_head_dim(cfg);
    ops->rmsnorm_backward(s->dtmp, a->g.ln2, s->dln, a->mid, a->w.ln2, a->rstd2, N, C, C, C);
    ops->accumulate(s->dres, s->dtmp, (size_t)N * C);

    /* attention */
    ops->matmul_backward_weight(a->g.o, s->dres, a->att, N, H * Dv, C);
    ops->matmul_backward_input(s->datt, s->dres, a->w.o, N, H * Dv, C, 0);
    if (cfg->attention == LOOM_ATTENTION_MLA) mla_backward(m, a, s);
    else mha_backward(m, a, s);
    ops->rmsnorm_backward(s->dtmp, a->g.ln1, s->dln, x, a->w.ln1, a->rstd1, N, C, C, C);
    ops->accumulate(s->dres, s->dtmp, (size_t)N * C);
}

/* ---------------------------------------------------------------------------------------------- */
/* the model                                                                                        */

static float *head_weight(const struct loom_model *m, float *base) {
    return param_ptr(m, base, m->cfg.tie_word_embeddings ? "embed_tokens.weight" : "lm_head.weight");
}

void loom_model_update_router_bias(struct loom_model *m) {
    int E = (int)m->cfg.moe.experts;
    for (int k = 0; k < m->moe_layers; k++)
        loom_moe_bias_update(m->router_bias + (size_t)k * E, m->expert_load + (size_t)k * E, E,
                             m->cfg.moe.bias_update_rate);
    memset(m->expert_load, 0, sizeof(int64_t) * (size_t)(m->moe_layers * E + 1));
}

void loom_model_whole_logits(struct loom_model *m) {
    int N = m->B * m->T_max;
    if (!m->stage.last || m->head_rows >= N) return;
    m->ops->free(m->logits);
    m->head_rows = N;
    m->logits = act_alloc(m, (size_t)N * m->cfg.vocab_size);
    for (int k = 0; k < m->nslots; k++) m->slots[k].logits = m->logits;
}

void loom_model_set_shape(struct loom_model *m, int T, double rope_theta) {
    CHECK(T > 0 && T <= m->T_max, "sequence length %d outside 1..%d", T, m->T_max);
    m->T = T;
    m->cfg.rope_theta = rope_theta;
}

/* the last stage's head and loss on the current slot (see loom_model_forward), head_rows rows at a time */
static double head_forward(struct loom_model *m, const int *targets, float dloss, long *count, float *token_losses) {
    const struct loom_ops *ops = m->ops;
    const struct loom_model_config *cfg = &m->cfg;
    struct loom_slot *s = m->cur;
    int N = m->B * m->T, C = (int)cfg->hidden_size, V = (int)cfg->vocab_size;
    int L = m->stage.layer_hi - m->stage.layer_lo;
    size_t NC = (size_t)N * C;

    ops->from_host(s->targets, targets, sizeof(int) * N);
    ops->rmsnorm_forward(s->lnf, s->rstdf, s->res + L * NC, param_ptr(m, m->params, "norm.weight"), N, C, C, C,
                         (float)cfg->rms_norm_eps);
    const float *w = head_weight(m, m->params);
    for (int r0 = 0; r0 < N; r0 += m->head_rows) {
        int n = N - r0 < m->head_rows ? N - r0 : m->head_rows;
        const float *x = s->lnf + (size_t)r0 * C;
        const int *tg = s->targets + r0;
        float *lg = m->logits, *dlg = dloss > 0 ? m->logits : NULL;
        ops->matmul_forward(lg, x, w, n, C, V);
        if (m->stage.tp > 1) {
            /* vocabulary-parallel cross-entropy: the full logits never meet on one rank */
            int v0 = m->stage.tp_rank * V;
            ops->xent_rowmax(s->rowmax + r0, lg, n, V);
            m->comm.max(m->comm.ctx, s->rowmax + r0, n);
            ops->xent_sumexp(s->sumexp + r0, s->tlogit + r0, lg, tg, s->rowmax + r0, n, V, v0);
            tp_sum(m, s->sumexp + r0, n);
            tp_sum(m, s->tlogit + r0, n);
            ops->xent_finish(s->losses + r0, dlg, lg, tg, s->rowmax + r0, s->sumexp + r0, s->tlogit + r0, n, V, v0,
                             dloss);
        } else {
            ops->cross_entropy(s->losses + r0, dlg, lg, tg, n, V, dloss);
        }
        if (dlg) {
            /* the head's backward while these rows' d(logits) are at hand (d(lnf) summed over tp later) */
            ops->matmul_backward_weight(head_weight(m, m->grads), dlg, x, n, C, V);
            ops->matmul_backward_input(s->dlnf + (size_t)r0 * C, dlg, w, n, C, V, 0);
        }
    }

    float *losses = token_losses ? token_losses : malloc_check(sizeof(float) * N);
    ops->to_host(losses, s->losses, sizeof(float) * N);
    double sum = 0;
    long n = 0;
    for (int i = 0; i < N; i++) {
        if (targets[i] < 0) continue;
        sum += losses[i];
        n++;
    }
    if (!token_losses) free(losses);
    *count = n;
    return sum;
}

/* the first stage's embedding lookup on the current slot */
static void embed_forward(struct loom_model *m, const int *ids) {
    const struct loom_ops *ops = m->ops;
    struct loom_slot *s = m->cur;
    int N = m->B * m->T, C = (int)m->cfg.hidden_size, V = (int)m->cfg.vocab_size;
    if (m->stage.tp > 1) {
        /* vocabulary-parallel embedding: this rank looks up the tokens of its rows, then the sum */
        int v0 = m->stage.tp_rank * V, *local = malloc_check(sizeof(int) * N);
        for (int i = 0; i < N; i++) local[i] = ids[i] >= v0 && ids[i] < v0 + V ? ids[i] - v0 : -1;
        ops->from_host(s->inputs, local, sizeof(int) * N);
        free(local);
    } else {
        ops->from_host(s->inputs, ids, sizeof(int) * N);
    }
    ops->embedding_forward(s->res, s->inputs, param_ptr(m, m->params, "embed_tokens.weight"), N, C);
    tp_sum(m, s->res, (size_t)N * C);
}

void loom_model_task_forward(struct loom_model_task *t, int slot, const int *ids, const int *targets, float dloss,
                             float *token_losses) {
    memset(t, 0, sizeof *t);
    t->slot = slot;
    t->ids = ids;
    t->targets = targets;
    t->dloss = dloss;
    t->token_losses = token_losses;
}

void loom_model_task_backward(struct loom_model_task *t, int slot) {
    memset(t, 0, sizeof *t);
    t->slot = slot;
    t->backward = 1;
}

/* Forward: blocks in order; an MoE block yields after each of its first two phases (an all-to-all is
 * then in flight). */
static int forward_step(struct loom_model *m, struct loom_model_task *t) {
    const struct loom_ops *ops = m->ops;
    struct loom_slot *s = m->cur;
    int L = m->stage.layer_hi - m->stage.layer_lo;
    size_t NC = (size_t)m->B * m->T * m->cfg.hidden_size;
    if (!t->started) {
        t->started = 1;
        if (m->stage.first) embed_forward(m, t->ids);
    }
    for (; t->layer < L; t->layer++, t->phase = 0) {
        struct loom_layer_acts *a = &s->acts[t->layer];
        const float *x = s->res + t->layer * NC;
        float *out = s->res + (t->layer + 1) * NC;
        if (t->phase == 0) block_attention_forward(m, a, x, out);
        if (!a->moe) {
            block_mlp_forward(m, a, out);
            continue;
        }
        for (; t->phase < LOOM_MOE_PHASES; t->phase++) {
            loom_moe_forward_phase(m, a->moe, t->phase, a->ln2, out, a->bias, a->load, &m->balance, m->bal_scale);
            if (t->phase < LOOM_MOE_PHASES - 1) {
                t->phase++;
                return 1;
            }
        }
        ops->accumulate(out, a->mid, NC);
    }
    if (m->stage.last) t->loss = head_forward(m, t->targets, t->dloss, &t->count, t->token_losses);
    t->done = 1;
    return 0;
}

/* Backward: blocks in reverse; an MoE block yields after each of its first two phases. */
static int backward_step(struct loom_model *m, struct loom_model_task *t) {
    const struct loom_ops *ops = m->ops;
    const struct loom_model_config *cfg = &m->cfg;
    struct loom_slot *sl = m->cur;
    int N = m->B * m->T, C = (int)cfg->hidden_size;
    int L = m->stage.layer_hi - m->stage.layer_lo;
    size_t NC = (size_t)N * C;
    struct scratch s;
    scratch_layout(m, m->scratch, &s);
    if (!t->started) {
        t->started = 1;
        t->layer = L - 1;
        if (m->stage.last) {
            /* the final norm; the forward did the head, leaving d(loss)/d(lnf) */
            tp_sum(m, sl->dlnf, NC);
            ops->rmsnorm_backward(s.dres, param_ptr(m, m->grads, "norm.weight"), sl->dlnf, sl->res + L * NC,
                                  param_ptr(m, m->params, "norm.weight"), sl->rstdf, N, C, C, C);
        } else {
            ops->copy_2d(s.dres, C, sl->dout, C, N, C, 0);
        }
        loom_test_die_at("backward");
    }
    for (; t->layer >= 0; t->layer--, t->phase = 0) {
        struct loom_layer_acts *a = &sl->acts[t->layer];
        const float *x = sl->res + t->layer * NC;
        if (!a->moe && m->stage.recompute == LOOM_RECOMPUTE_FULL) {
            /* the block's forward again (bit-identical: the same ops on the same input); its output lands
             * where it was, in the residual stream, unchanged */
            float *out = sl->res + (t->layer + 1) * NC;
            block_attention_forward(m, a, x, out);
            block_mlp_forward(m, a, out);
        }
        if (!a->moe) {
            block_mlp_backward(m, a, &s);
        } else {
            for (; t->phase < LOOM_MOE_PHASES; t->phase++) {
                loom_moe_backward_phase(m, a->moe, t->phase, a->ln2, s.dres, s.dln);
                if (t->phase < LOOM_MOE_PHASES - 1) {
                    t->phase++;
                    return 1;
                }
            }
        }
        if (m->stage.recompute == LOOM_RECOMPUTE_SELECTIVE || (a->moe && m->stage.recompute == LOOM_RECOMPUTE_FULL))
            attention_forward_again(m, a);
        block_attention_backward(m, a, x, &s);
    }
    if (m->stage.first)
        ops->embedding_backward(param_ptr(m, m->grads, "embed_tokens.weight"), s.dres, sl->inputs, N, C);
    t->done = 1;
    return 0;
}

int loom_model_task_step(struct loom_model *m, struct loom_model_task *t) {
    if (t->done) return 0;
    loom_model_use_slot(m, t->slot);
    return t->backward ? backward_step(m, t) : forward_step(m, t);
}

double loom_model_forward(struct loom_model *m, const int *ids, const int *targets, float dloss, long *count,
                          float *token_losses) {
    struct loom_model_task t;
    loom_model_task_forward(&t, (int)(m->cur - m->slots), ids, targets, dloss, token_losses);
    while (loom_model_task_step(m, &t)) {
    }
    if (count) *count = t.count;
    return t.loss;
}

void loom_model_backward(struct loom_model *m) {
    struct loom_model_task t;
    loom_model_task_backward(&t, (int)(m->cur - m->slots));
    while (loom_model_task_step(m, &t)) {
    }
}
