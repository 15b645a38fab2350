#!/usr/bin/env python3
"""scripts/make_reference.py — loom's model written again, independently, in JAX (float64).

It writes the reference dumps tests/ref/tiny-mla.bin, tests/ref/tiny-mha.bin and tests/ref/tiny-moe.bin, which
the C test suite reads (tests/ref/refdump.h) to check loom's forward pass, loss, gradients and ten AdamW steps.
tiny-moe is the MHA model whose MLP in layers >= first_dense is the dots.llm1 mixture-of-experts layer
(sigmoid router with a bias-corrected top-k, routed + shared SwiGLU experts, sequence-wise balance loss and
the aux-loss-free bias update; see moe_mlp and build).

    python3 scripts/make_reference.py [--out tests/ref] [--no-check]

The output is deterministic: the same bytes on every run. Weights are drawn with numpy, rounded to float32
and back, so the float32 weights stored in the dump are exactly the weights the float64 reference used.

The model functions below are generic over dtype (they compute in the dtype of the parameters), so
scripts/bench_reference.py imports them to train the same model in float32. Importing this module does not
change any global JAX setting; float64 is switched on in main() only.

Dump format (little-endian):
    char magic[8] = "LOOMREF1"; uint32 version = 1; uint32 count;
    count entries: uint32 name_len; name bytes (no NUL); uint32 dtype (0 f32, 1 i32, 2 utf-8 text);
                   uint32 ndim; int64 dims[ndim]; data (prod(dims) elements of 4 bytes; text: 1 byte each)

Entries: config (INI text), ids [B, T+1], param/<name> (loom's parameter order), logits [B, T, V], loss [1]
(mean cross-entropy), grad/<name>, adamw_losses [10] (cross-entropy before each update), adamw_grad_norms [10]
(global norm before clipping). tiny-moe adds: buffer/<name> (the router biases
layers.{l}.mlp.gate.e_score_correction_bias [E]: buffers, not parameters), balance_loss [1] (the balance part
of the training loss; gradients are of loss + balance_loss), adamw_balance_losses [10], expert_load_step1 [E]
(tokens routed to each expert of the MoE layer in the first forward) and final_buffer/<name> (the router biases
after the ten steps and their bias updates).
"""
import argparse
import math
import os
import struct
import sys

import numpy as np

import jax
import jax.numpy as jnp

# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------

TINY_MLA = dict(
    attention="mla", vocab_size=64, hidden_size=48, num_layers=2, num_heads=3, q_lora_rank=24,
    kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6, intermediate_size=40,
    rope_theta=10000.0, rope_style="interleaved", rms_norm_eps=1e-6, tie_word_embeddings=True,
)

TINY_MHA = dict(
    attention="mha", vocab_size=64, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=8, v_head_dim=10, qk_norm=True, intermediate_size=40, rope_theta=10000.0,
    rope_style="half", rms_norm_eps=1e-6, tie_word_embeddings=False,
)

# TINY_MHA with a dots.llm1 mixture-of-experts MLP in layers >= first_dense (layer 0 dense, layer 1 MoE).
TINY_MOE = dict(TINY_MHA, moe=dict(
    experts=8, top_k=2, shared=1, intermediate=12, first_dense=1, scaling=2.5, norm_topk=True,
    balance_alpha=0.01, bias_update_rate=0.001,
))
ROUTER_BIAS_INIT = 0.05  # buffer init: uniform(-0.05, 0.05)

# The order in which the [model] keys are written into the dump's INI text.
MLA_KEYS = ["attention", "vocab_size", "hidden_size", "num_layers", "num_heads", "q_lora_rank",
            "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "intermediate_size",
            "rope_theta", "rope_style", "rms_norm_eps", "tie_word_embeddings"]
MHA_KEYS = ["attention", "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
            "head_dim", "v_head_dim", "qk_norm", "intermediate_size", "rope_theta", "rope_style",
            "rms_norm_eps", "tie_word_embeddings"]
MOE_KEYS = ["experts", "top_k", "shared", "intermediate", "first_dense", "scaling", "norm_topk",
            "balance_alpha", "bias_update_rate"]

# Training settings shared by both dumps (AdamW, PyTorch semantics).
OPTIM = dict(beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0,
             decay_norms=False, decay_embeddings=False)
SCHEDULE = dict(kind="constant", lr=0.01, warmup_tokens=0)
ADAMW_STEPS = 10


def ini_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v == int(v) and abs(v) < 1e15:
            return str(int(v))
        return repr(v)
    return str(v)


def config_text(cfg, keys, batch, seq):
    lines = ["[model]"]
    lines += ["%s = %s" % (k, ini_value(cfg[k])) for k in keys]
    if cfg.get("moe"):
        lines += ["", "[moe]"] + ["%s = %s" % (k, ini_value(cfg["moe"][k])) for k in MOE_KEYS]
    lines += ["", "[train]", "seq_len = %d" % seq, "micro_batch = %d" % batch,
              "global_batch = %d" % batch, "steps = %d" % ADAMW_STEPS]
    lines += ["", "[optim]"] + ["%s = %s" % (k, ini_value(v)) for k, v in OPTIM.items()]
    lines += ["", "[schedule]"] + ["%s = %s" % (k, ini_value(v)) for k, v in SCHEDULE.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Parameter table
# --------------------------------------------------------------------------------------------------

def param_shapes(cfg):
    """[(name, shape, kind)] in loom's order; kind is 'embed', 'matrix' or 'norm'."""
    V, C, F, L = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"], cfg["num_layers"]
    H = cfg["num_heads"]
    out = [("embed_tokens.weight", (V, C), "embed")]
    for l in range(L):
        p = "layers.%d." % l
        a = p + "self_attn."
        out.append((p + "input_layernorm.weight", (C,), "norm"))
        if cfg["attention"] == "mla":
            dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
            rq, rkv = cfg["q_lora_rank"], cfg["kv_lora_rank"]
            if rq > 0:
                out.append((a + "q_a_proj.weight", (rq, C), "matrix"))
                out.append((a + "q_a_layernorm.weight", (rq,), "norm"))
                out.append((a + "q_b_proj.weight", (H * (dn + dr), rq), "matrix"))
            else:
                out.append((a + "q_proj.weight", (H * (dn + dr), C), "matrix"))
            out.append((a + "kv_a_proj_with_mqa.weight", (rkv + dr, C), "matrix"))
            out.append((a + "kv_a_layernorm.weight", (rkv,), "norm"))
            out.append((a + "kv_b_proj.weight", (H * (dn + dv), rkv), "matrix"))
            out.append((a + "o_proj.weight", (C, H * dv), "matrix"))
        elif cfg["attention"] == "mha":
            Hkv, D, Dv = kv_heads(cfg), cfg["head_dim"], cfg["v_head_dim"]
            out.append((a + "q_proj.weight", (H * D, C), "matrix"))
            out.append((a + "k_proj.weight", (Hkv * D, C), "matrix"))
            out.append((a + "v_proj.weight", (Hkv * Dv, C), "matrix"))
            if cfg.get("qk_norm", False):
                out.append((a + "q_norm.weight", (D,), "norm"))
                out.append((a + "k_norm.weight", (D,), "norm"))
            out.append((a + "o_proj.weight", (C, H * Dv), "matrix"))
        else:
            raise ValueError("unknown attention %r" % cfg["attention"])
        out.append((p + "post_attention_layernorm.weight", (C,), "norm"))
        if is_moe_layer(cfg, l):
            moe = cfg["moe"]
            E, I, S = moe["experts"], moe["intermediate"], moe["shared"] * moe["intermediate"]
            out.append((p + "mlp.gate.weight", (E, C), "matrix"))
            for e in range(E):
                x = p + "mlp.experts.%d." % e
                out.append((x + "gate_proj.weight", (I, C), "matrix"))
                out.append((x + "up_proj.weight", (I, C), "matrix"))
                out.append((x + "down_proj.weight", (C, I), "matrix"))
            if S > 0:
                x = p + "mlp.shared_experts."
                out.append((x + "gate_proj.weight", (S, C), "matrix"))
                out.append((x + "up_proj.weight", (S, C), "matrix"))
                out.append((x + "down_proj.weight", (C, S), "matrix"))
        else:
            out.append((p + "mlp.gate_proj.weight", (F, C), "matrix"))
            out.append((p + "mlp.up_proj.weight", (F, C), "matrix"))
            out.append((p + "mlp.down_proj.weight", (C, F), "matrix"))
    out.append(("norm.weight", (C,), "norm"))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (V, C), "matrix"))
    return out


def is_moe_layer(cfg, l):
    moe = cfg.get("moe")
    return bool(moe) and moe["experts"] > 0 and l >= moe["first_dense"]


def moe_layers(cfg):
    return [l for l in range(cfg["num_layers"]) if is_moe_layer(cfg, l)]


def buffer_shapes(cfg):
    """[(name, shape)] of the non-trainable buffers: the router bias of each MoE layer."""
    return [("layers.%d.mlp.gate.e_score_correction_bias" % l, (cfg["moe"]["experts"],))
            for l in moe_layers(cfg)]


def init_buffers(cfg, rng, bias_init=ROUTER_BIAS_INIT):
    """numpy float64, exactly representable in float32; draws nothing for a model without MoE."""
    return {name: rng.uniform(-bias_init, bias_init, size=shape).astype(np.float32).astype(np.float64)
            for name, shape in buffer_shapes(cfg)}


def kv_heads(cfg):
    h = cfg.get("num_kv_heads", 0)
    return h if h > 0 else cfg["num_heads"]


def init_params(cfg, rng, matrix_std=0.1, embed_std=0.5, norm_std=0.1):
    """numpy float64 arrays, each exactly representable in float32."""
    params = {}
    for name, shape, kind in param_shapes(cfg):
        if kind == "embed":
            w = rng.normal(0.0, embed_std, size=shape)
        elif kind == "matrix":
            w = rng.normal(0.0, matrix_std, size=shape)
        else:
            w = 1.0 + norm_std * rng.normal(size=shape)
        params[name] = w.astype(np.float32).astype(np.float64)
    return params


def decayed(name, shape):
    """Weight decay applies to the matrices of linear layers only (never norms or the embedding)."""
    return len(shape) == 2 and name != "embed_tokens.weight"


# --------------------------------------------------------------------------------------------------
# Model (generic over dtype: computes in the dtype of the parameters)
# --------------------------------------------------------------------------------------------------

def rms_norm(x, w, eps):
    ms = jnp.mean(x * x, axis=-1, keepdims=True)
    return x / jnp.sqrt(ms + eps) * w


def linear(x, w):
    return x @ w.T


def rope_tables(T, D, theta, dtype):
    """cos, sin [T, D/2] computed in float64 with numpy, cast to dtype."""
    i = np.arange(D // 2, dtype=np.float64)
    freq = theta ** (-2.0 * i / D)
    ang = np.arange(T, dtype=np.float64)[:, None] * freq[None, :]
    return jnp.asarray(np.cos(ang), dtype=dtype), jnp.asarray(np.sin(ang), dtype=dtype)


def apply_rope(x, cos, sin, style):
    """x [B, T, ..., D]; cos/sin [T, D/2]; rotates each pair by p * f_i."""
    extra = x.ndim - 3  # head axes between T and D
    c = cos.reshape(cos.shape[:1] + (1,) * extra + cos.shape[1:])
    s = sin.reshape(sin.shape[:1] + (1,) * extra + sin.shape[1:])
    D = x.shape[-1]
    if style == "interleaved":
        xp = x.reshape(x.shape[:-1] + (D // 2, 2))
        a, b = xp[..., 0], xp[..., 1]
        ra = a * c - b * s
        rb = a * s + b * c
        return jnp.stack([ra, rb], axis=-1).reshape(x.shape)
    elif style == "half":
        a, b = x[..., : D // 2], x[..., D // 2:]
        return jnp.concatenate([a * c - b * s, a * s + b * c], axis=-1)
    raise ValueError("unknown rope_style %r" % style)


def causal_attention(q, k, v, scale):
    """q, k [B, T, H, Dqk]; v [B, T, H, Dv] -> [B, T, H, Dv]."""
    T = q.shape[1]
    s = jnp.einsum("bthd,bshd->bhts", q, k) * scale
    mask = np.tril(np.ones((T, T), dtype=bool))
    s = jnp.where(mask[None, None], s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bhts,bshd->bthd", p, v)


def mla_attention(cfg, P, pre, x, cos, sin):
    B, T, _ = x.shape
    H = cfg["num_heads"]
    dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    rkv, eps, style = cfg["kv_lora_rank"], cfg["rms_norm_eps"], cfg["rope_style"]
    if cfg["q_lora_rank"] > 0:
        cq = rms_norm(linear(x, P[pre + "q_a_proj.weight"]), P[pre + "q_a_layernorm.weight"], eps)
        q = linear(cq, P[pre + "q_b_proj.weight"])
    else:
        q = linear(x, P[pre + "q_proj.weight"])
    q = q.reshape(B, T, H, dn + dr)
    q_nope, q_rope = q[..., :dn], apply_rope(q[..., dn:], cos, sin, style)
    kva = linear(x, P[pre + "kv_a_proj_with_mqa.weight"])
    c = rms_norm(kva[..., :rkv], P[pre + "kv_a_layernorm.weight"], eps)
    k_rope = apply_rope(kva[..., rkv:], cos, sin, style)  # [B, T, dr], one key for all heads
    kvb = linear(c, P[pre + "kv_b_proj.weight"]).reshape(B, T, H, dn + dv)
    k_nope, v = kvb[..., :dn], kvb[..., dn:]
    qh = jnp.concatenate([q_nope, q_rope], axis=-1)
    kh = jnp.concatenate([k_nope, jnp.broadcast_to(k_rope[:, :, None, :], (B, T, H, dr))], axis=-1)
    o = causal_attention(qh, kh, v, 1.0 / math.sqrt(dn + dr))
    return linear(o.reshape(B, T, H * dv), P[pre + "o_proj.weight"])


def mha_attention(cfg, P, pre, x, cos, sin):
    B, T, _ = x.shape
    H, Hkv, D, Dv = cfg["num_heads"], kv_heads(cfg), cfg["head_dim"], cfg["v_head_dim"]
    eps, style = cfg["rms_norm_eps"], cfg["rope_style"]
    q = linear(x, P[pre + "q_proj.weight"]).reshape(B, T, H, D)
    k = linear(x, P[pre + "k_proj.weight"]).reshape(B, T, Hkv, D)
    v = linear(x, P[pre + "v_proj.weight"]).reshape(B, T, Hkv, Dv)
    if cfg.get("qk_norm", False):
        q = rms_norm(q, P[pre + "q_norm.weight"], eps)
        k = rms_norm(k, P[pre + "k_norm.weight"], eps)
    q = apply_rope(q, cos, sin, style)
    k = apply_rope(k, cos, sin, style)
    rep = H // Hkv  # query head h reads kv head h // rep
    k = jnp.repeat(k, rep, axis=2)
    v = jnp.repeat(v, rep, axis=2)
    o = causal_attention(q, k, v, 1.0 / math.sqrt(D))
    return linear(o.reshape(B, T, H * Dv), P[pre + "o_proj.weight"])


def swiglu(x, P, pre):
    g = linear(x, P[pre + "gate_proj.weight"])
    u = linear(x, P[pre + "up_proj.weight"])
    return linear(jax.nn.silu(g) * u, P[pre + "down_proj.weight"])


def moe_mlp(cfg, P, pre, x, bias):
    """dots.llm1 MoE MLP. x [B, T, C]; bias [E] (the buffer e_score_correction_bias).
    Returns (out [B, T, C], aux) with aux = dict(scores s [B, T, E], idx [B, T, K], mask [B, T, E] (1 where
    the expert was selected), balance [B] (this layer's sequence-wise balance loss L_bal(b)))."""
    moe = cfg["moe"]
    E, K, alpha = moe["experts"], moe["top_k"], moe["balance_alpha"]
    B, T, C = x.shape
    s = jax.nn.sigmoid(linear(x, P[pre + "gate.weight"]))           # [B, T, E] affinities
    sel = jax.lax.stop_gradient(s + bias)                              # used only to choose experts
    idx = jnp.argsort(-sel, axis=-1, stable=True)[..., :K]             # top-k, ties -> lower index
    w = jnp.take_along_axis(s, idx, axis=-1)                           # weights from the unbiased scores
    if moe["norm_topk"]:
        w = w / (jnp.sum(w, axis=-1, keepdims=True) + 1e-20)
    w = w * moe["scaling"]
    onehot = jax.nn.one_hot(idx, E, dtype=x.dtype)                     # [B, T, K, E]
    comb = jnp.einsum("btk,btke->bte", w, onehot)                      # routing weight of each expert
    mask = jnp.sum(onehot, axis=2)                                     # [B, T, E], constant
    out = 0.0
    for e in range(E):
        out = out + comb[..., e:e + 1] * swiglu(x, P, pre + "experts.%d." % e)
    if moe["shared"] > 0:
        out = out + swiglu(x, P, pre + "shared_experts.")
    # sequence-wise balance loss: f from the experts actually selected (bias included), no gradient
    f = (E / (K * T)) * jnp.sum(mask, axis=1)                          # [B, E]
    sp = s / jnp.sum(s, axis=-1, keepdims=True)
    Pm = jnp.mean(sp, axis=1)                                          # [B, E]
    balance = alpha * jnp.sum(f * Pm, axis=-1)                         # [B]
    return out, dict(scores=s, idx=idx, mask=mask, balance=balance)


def forward(cfg, P, x, buffers=None):
    """x int [B, T] -> (logits [B, T, V], aux): aux is a list with one dict per MoE layer (see moe_mlp, plus
    'layer' and 'input', the normalised MoE input). buffers: the router biases (zeros when None)."""
    T = x.shape[1]
    dtype = P["embed_tokens.weight"].dtype
    eps = cfg["rms_norm_eps"]
    if cfg["attention"] == "mla":
        rope_dim, attn = cfg["qk_rope_head_dim"], mla_attention
    else:
        rope_dim, attn = cfg["head_dim"], mha_attention
    cos, sin = rope_tables(T, rope_dim, cfg["rope_theta"], dtype)
    h = P["embed_tokens.weight"][x]
    aux = []
    for l in range(cfg["num_layers"]):
        p = "layers.%d." % l
        a = rms_norm(h, P[p + "input_layernorm.weight"], eps)
        h = h + attn(cfg, P, p + "self_attn.", a, cos, sin)
        m = rms_norm(h, P[p + "post_attention_layernorm.weight"], eps)
        if is_moe_layer(cfg, l):
            bname = p + "mlp.gate.e_score_correction_bias"
            bias = (buffers[bname] if buffers is not None
                    else jnp.zeros((cfg["moe"]["experts"],), dtype=dtype))
            y, a_l = moe_mlp(cfg, P, p + "mlp.", m, bias.astype(dtype))
            a_l.update(layer=l, input=m)
            aux.append(a_l)
            h = h + y
        else:
            h = h + swiglu(m, P, p + "mlp.")
    h = rms_norm(h, P["norm.weight"], eps)
    head = P["embed_tokens.weight"] if cfg["tie_word_embeddings"] else P["lm_head.weight"]
    return linear(h, head), aux


def forward_logits(cfg, P, x, buffers=None):
    """x int [B, T] -> logits [B, T, V] in the parameters' dtype."""
    return forward(cfg, P, x, buffers)[0]


def cross_entropy(logits, targets):
    lse = jax.nn.logsumexp(logits, axis=-1)
    tl = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.mean(lse - tl)


def loss_parts(cfg, P, ids, buffers=None):
    """(total, (ce, balance, loads)): ce = mean cross-entropy over all B*T tokens; balance = mean over the
    sequences of the sum over MoE layers of L_bal (0 without MoE); total = ce + balance (what is
    differentiated); loads [n_moe_layers, E] = tokens routed to each expert (constant)."""
    logits, aux = forward(cfg, P, ids[:, :-1], buffers)
    ce = cross_entropy(logits, ids[:, 1:])
    if not aux:
        return ce, (ce, jnp.zeros((), ce.dtype), jnp.zeros((0, 0), ce.dtype))
    balance = jnp.mean(sum(a["balance"] for a in aux))
    loads = jnp.stack([jnp.sum(a["mask"], axis=(0, 1)) for a in aux])
    return ce + balance, (ce, balance, loads)


def loss_fn(cfg, P, ids, buffers=None):
    """The training loss: mean cross-entropy over all B*T tokens (+ the balance loss with MoE); ids [B, T+1]."""
    return loss_parts(cfg, P, ids, buffers)[0]


def bias_update(cfg, buffers, loads, n_tokens):
    """Aux-loss-free bias update: b_i += gamma * sign(mean_load - load_i), per MoE layer.
    loads [n_moe_layers, E] in moe_layers order."""
    moe = cfg["moe"]
    mean_load = n_tokens * moe["top_k"] / moe["experts"]
    out = dict(buffers)
    for j, l in enumerate(moe_layers(cfg)):
        name = "layers.%d.mlp.gate.e_score_correction_bias" % l
        out[name] = buffers[name] + moe["bias_update_rate"] * jnp.sign(mean_load - loads[j])
    return out


def adamw_step(P, G, m, v, t, lr, optim, decay_mask):
    """One PyTorch-style AdamW step with global-norm clipping; t counts from 1. Pure function of pytrees.
    Returns (P, m, v, grad_norm) where grad_norm is the global norm before clipping."""
    b1, b2, eps, wd = optim["beta1"], optim["beta2"], optim["eps"], optim["weight_decay"]
    gn = jnp.sqrt(sum(jnp.sum(g * g) for g in G.values()))
    if optim["grad_clip"] > 0:
        coef = jnp.minimum(1.0, optim["grad_clip"] / (gn + 1e-6))
    else:
        coef = 1.0
    bc1 = 1.0 - b1 ** t
    bc2 = 1.0 - b2 ** t
    nP, nm, nv = {}, {}, {}
    for k in P:
        g = G[k] * coef
        p = P[k]
        if decay_mask[k]:
            p = p - lr * wd * p
        mk = b1 * m[k] + (1.0 - b1) * g
        vk = b2 * v[k] + (1.0 - b2) * g * g
        p = p - lr * (mk / bc1) / (jnp.sqrt(vk / bc2) + eps)
        nP[k], nm[k], nv[k] = p, mk, vk
    return nP, nm, nv, gn


# --------------------------------------------------------------------------------------------------
# Dump writer
# --------------------------------------------------------------------------------------------------

DT_F32, DT_I32, DT_TEXT = 0, 1, 2


class Dump:
    def __init__(self):
        self.entries = []

    def add_text(self, name, text):
        self.entries.append((name, DT_TEXT, (len(text.encode("utf-8")),), text.encode("utf-8")))

    def add_f32(self, name, arr):
        a = np.ascontiguousarray(np.asarray(arr, dtype=np.float64).astype("<f4"))
        self.entries.append((name, DT_F32, a.shape, a.tobytes()))

    def add_i32(self, name, arr):
        a = np.ascontiguousarray(np.asarray(arr).astype("<i4"))
        self.entries.append((name, DT_I32, a.shape, a.tobytes()))

    def bytes(self):
        out = [b"LOOMREF1", struct.pack("<II", 1, len(self.entries))]
        for name, dt, shape, data in self.entries:
            nb = name.encode("utf-8")
            out.append(struct.pack("<I", len(nb)))
            out.append(nb)
            out.append(struct.pack("<II", dt, len(shape)))
            out.append(struct.pack("<%dq" % len(shape), *shape))
            out.append(data)
        return b"".join(out)


# --------------------------------------------------------------------------------------------------
# Building one reference
# --------------------------------------------------------------------------------------------------

def grad_check(cfg, P, ids, grads, rng, n_per_param=2, h=1e-3, f=None, names=None):
    """Finite differences in float64 (fourth-order central stencil) on a few random elements of every
    parameter (or of `names`). Returns (max relative error, max absolute error); the relative error is
    |fd - ad| / max(|fd|, |ad|, 1e-4), so elements whose gradient is ~0 are judged absolutely.
    f: the scalar function of the parameters whose gradient `grads` is (default: loss_fn)."""
    if f is None:
        f = jax.jit(lambda Q: loss_fn(cfg, Q, ids))
    worst_rel, worst_abs = 0.0, 0.0
    for name in (sorted(P) if names is None else names):
        w = np.asarray(P[name])
        for _ in range(n_per_param):
            idx = tuple(int(rng.integers(0, s)) for s in w.shape)

            def at(delta):
                wd = w.copy()
                wd[idx] += delta
                return float(f({**P, name: jnp.asarray(wd)}))

            fd = (8.0 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12.0 * h)
            ad = float(np.asarray(grads[name])[idx])
            err = abs(fd - ad)
            worst_abs = max(worst_abs, err)
            worst_rel = max(worst_rel, err / max(abs(fd), abs(ad), 1e-4))
    return worst_rel, worst_abs


def silu_np(z):
    return z / (1.0 + np.exp(-z))


def moe_numpy(cfg, P, pre, x, bias):
    """Token-by-token numpy version of moe_mlp (independent of the JAX code) for the self-check.
    x [B, T, C] -> (out [B, T, C], idx [B, T, K], unbiased top-k idx [B, T, K], balance [B])."""
    moe = cfg["moe"]
    E, K = moe["experts"], moe["top_k"]
    Bn, Tn, C = x.shape
    W = {k: np.asarray(v) for k, v in P.items() if k.startswith(pre)}

    def mlp(v, q):
        return W[q + "down_proj.weight"] @ (silu_np(W[q + "gate_proj.weight"] @ v) * (W[q + "up_proj.weight"] @ v))

    out = np.zeros_like(x)
    idx = np.zeros((Bn, Tn, K), dtype=np.int64)
    idx0 = np.zeros((Bn, Tn, K), dtype=np.int64)
    balance = np.zeros(Bn)
    for b in range(Bn):
        count = np.zeros(E)
        psum = np.zeros(E)
        for t in range(Tn):
            v = x[b, t]
            sc = 1.0 / (1.0 + np.exp(-(W[pre + "gate.weight"] @ v)))
            order = sorted(range(E), key=lambda e: (-(sc[e] + bias[e]), e))[:K]
            idx[b, t] = order
            idx0[b, t] = sorted(range(E), key=lambda e: (-sc[e], e))[:K]
            wt = np.array([sc[e] for e in order])
            if moe["norm_topk"]:
                wt = wt / (wt.sum() + 1e-20)
            wt = wt * moe["scaling"]
            y = sum(wt[j] * mlp(v, pre + "experts.%d." % order[j]) for j in range(K))
            if moe["shared"] > 0:
                y = y + mlp(v, pre + "shared_experts.")
            out[b, t] = y
            count[order] += 1
            psum += sc / sc.sum()
        f = E / (K * Tn) * count
        balance[b] = moe["balance_alpha"] * np.sum(f * psum / Tn)
    return out, idx, idx0, balance


def routing_margin(cfg, P, ids, buffers):
    """Smallest gap, over tokens and MoE layers, between the k-th and (k+1)-th biased score: how far the
    expert choice is from a tie (a float32 implementation must make the same choice)."""
    _, aux = forward(cfg, P, ids[:, :-1], buffers)
    K = cfg["moe"]["top_k"]
    gaps = []
    for a in aux:
        name = "layers.%d.mlp.gate.e_score_correction_bias" % a["layer"]
        sel = jnp.sort(a["scores"] + buffers[name], axis=-1)[..., ::-1]
        gaps.append(jnp.min(sel[..., K - 1] - sel[..., K]))
    return jnp.min(jnp.stack(gaps))


def build(cfg, keys, seed, B, T, check=True):
    rng = np.random.default_rng(seed)
    params_np = init_params(cfg, rng)
    buffers_np = init_buffers(cfg, rng)  # empty (no draws) without MoE
    ids_np = rng.integers(0, cfg["vocab_size"], size=(B, T + 1)).astype(np.int32)
    shapes = param_shapes(cfg)
    names = [n for n, _, _ in shapes]
    bnames = [n for n, _ in buffer_shapes(cfg)]
    is_moe = bool(bnames)

    P = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in params_np.items()}
    bufs = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in buffers_np.items()} if is_moe else None
    ids = jnp.asarray(ids_np)
    logits, aux0 = jax.jit(lambda Q, Bf: forward(cfg, Q, ids[:, :-1], Bf))(P, bufs)
    vg = jax.jit(jax.value_and_grad(lambda Q, Bf: loss_parts(cfg, Q, ids, Bf), has_aux=True))
    (total, (loss, balance, loads1)), grads = vg(P, bufs)
    assert logits.dtype == jnp.float64 and loss.dtype == jnp.float64

    # independent check of the loss from the logits with numpy
    lg = np.asarray(logits)
    mx = lg.max(-1, keepdims=True)
    lse = (mx[..., 0] + np.log(np.exp(lg - mx).sum(-1)))
    tgt = ids_np[:, 1:]
    np_loss = np.mean(lse - np.take_along_axis(lg, tgt[..., None], -1)[..., 0])
    assert abs(np_loss - float(loss)) < 1e-12, (np_loss, float(loss))

    if is_moe:
        # independent numpy check of the MoE layer(s) on the JAX layer input, and of the balance loss
        np_bal = np.zeros(B)
        for a in aux0:
            pre = "layers.%d.mlp." % a["layer"]
            x_in = np.asarray(a["input"])
            out_np, idx_np, idx0_np, bal_np = moe_numpy(cfg, P, pre, x_in,
                                                        buffers_np[pre + "gate.e_score_correction_bias"])
            out_jx, _ = moe_mlp(cfg, P, pre, jnp.asarray(x_in), bufs[pre + "gate.e_score_correction_bias"])
            assert np.max(np.abs(out_np - np.asarray(out_jx))) < 1e-12
            assert np.array_equal(np.sort(idx_np, -1), np.sort(np.asarray(a["idx"]), -1))
            np_bal += bal_np
            changed = int(np.sum(np.any(np.sort(idx_np, -1) != np.sort(idx0_np, -1), axis=-1)))
            print("  layer %d: the router bias changes the selected experts of %d of %d tokens"
                  % (a["layer"], changed, B * T))
            assert changed >= 1, "the router bias must matter for the selection"
        assert abs(np.mean(np_bal) - float(balance)) < 1e-14, (np.mean(np_bal), float(balance))
        assert abs(float(total) - float(loss) - float(balance)) < 1e-14

    if check:
        if not is_moe:
            rel, err = grad_check(cfg, P, ids, grads, np.random.default_rng(seed + 1000))
            print("  gradient check (finite differences, float64, %d elements): max relative error %.3e,"
                  " max absolute error %.3e" % (2 * len(P), rel, err))
            assert rel < 1e-6, "reference gradients disagree with finite differences"
        else:
            crng = np.random.default_rng(seed + 1000)
            f_tot = jax.jit(lambda Q: loss_fn(cfg, Q, ids, bufs))
            rel, err = grad_check(cfg, P, ids, grads, crng, f=f_tot)
            print("  gradient check (finite differences, float64, total loss, %d elements): max relative"
                  " error %.3e, max absolute error %.3e" % (2 * len(P), rel, err))
            assert rel < 1e-6, "reference gradients disagree with finite differences"
            # denser on the MoE weights: router gate, the busiest routed expert, the shared expert. The loss
            # is only piecewise smooth (top-k); a small step keeps the stencil off the selection boundaries.
            worst = 0.0
            for j, l in enumerate(moe_layers(cfg)):
                pre = "layers.%d.mlp." % l
                e = int(np.argmax(np.asarray(loads1[j])))
                sel = [pre + "gate.weight"]
                sel += [pre + "experts.%d.%s.weight" % (e, w) for w in ("gate_proj", "up_proj", "down_proj")]
                sel += [pre + "shared_experts.%s.weight" % w for w in ("gate_proj", "up_proj", "down_proj")]
                rel, err = grad_check(cfg, P, ids, grads, crng, n_per_param=12, h=1e-4, f=f_tot,
                                      names=sel)
                print("  gradient check, layer %d router gate, expert %d, shared expert (%d elements):"
                      " max relative error %.3e, max absolute error %.3e" % (l, e, 12 * len(sel), rel, err))
                worst = max(worst, rel)
            # the balance loss alone: its gradient reaches the router gate and everything below it
            f_bal = jax.jit(lambda Q: loss_parts(cfg, Q, ids, bufs)[1][1])
            g_bal = jax.jit(jax.grad(lambda Q: loss_parts(cfg, Q, ids, bufs)[1][1]))(P)
            sel = ["layers.%d.mlp.gate.weight" % l for l in moe_layers(cfg)]
            sel += ["embed_tokens.weight", "layers.0.mlp.down_proj.weight",
                    "layers.1.self_attn.q_proj.weight", "layers.1.post_attention_layernorm.weight"]
            rel, err = grad_check(cfg, P, ids, g_bal, crng, n_per_param=8, h=1e-4, f=f_bal, names=sel)
            print("  gradient check, balance loss alone (%d elements): max relative error %.3e,"
                  " max absolute error %.3e" % (8 * len(sel), rel, err))
            worst = max(worst, rel)
            assert worst < 1e-6, "reference MoE gradients disagree with finite differences"

    # AdamW on the same batch
    optim = OPTIM
    lr = SCHEDULE["lr"]
    decay_mask = {n: decayed(n, s) for n, s, _ in shapes}
    m = {k: jnp.zeros_like(v) for k, v in P.items()}
    v = {k: jnp.zeros_like(x) for k, x in P.items()}

    def train_step(Q, M, Vv, Bf, t):
        (_, (ce, bal, ld)), G = jax.value_and_grad(lambda R: loss_parts(cfg, R, ids, Bf), has_aux=True)(Q)
        Q, M, Vv, gn = adamw_step(Q, G, M, Vv, t, lr, optim, decay_mask)
        if Bf is not None:
            Bf = bias_update(cfg, Bf, ld, B * T)
        return ce, bal, Q, M, Vv, Bf, gn

    step = jax.jit(train_step)
    margin = jax.jit(lambda Q, Bf: routing_margin(cfg, Q, ids, Bf))
    Q, Bf = P, bufs
    losses, norms, bal_losses, min_gap = [], [], [], math.inf
    for t in range(1, ADAMW_STEPS + 1):
        if is_moe:
            min_gap = min(min_gap, float(margin(Q, Bf)))
        l, bl, Q, m, v, Bf, gn = step(Q, m, v, Bf, jnp.float64(t))
        losses.append(float(l))
        bal_losses.append(float(bl))
        norms.append(float(gn))
    if is_moe:
        print("  smallest top-k margin of the biased router scores over the %d steps: %.3e"
              % (ADAMW_STEPS, min_gap))
        assert min_gap > 1e-4, "expert selection too close to a tie for a float32 implementation"

    d = Dump()
    d.add_text("config", config_text(cfg, keys, B, T))
    d.add_i32("ids", ids_np)
    for n in names:
        d.add_f32("param/" + n, params_np[n])
    for n in bnames:
        d.add_f32("buffer/" + n, buffers_np[n])
    d.add_f32("logits", np.asarray(logits))
    d.add_f32("loss", np.array([float(loss)]))
    if is_moe:
        d.add_f32("balance_loss", np.array([float(balance)]))
    for n in names:
        d.add_f32("grad/" + n, np.asarray(grads[n]))
    d.add_f32("adamw_losses", np.array(losses))
    d.add_f32("adamw_grad_norms", np.array(norms))
    if is_moe:
        assert len(bnames) == 1, "expert_load_step1 holds the loads of a single MoE layer"
        d.add_f32("adamw_balance_losses", np.array(bal_losses))
        d.add_f32("expert_load_step1", np.asarray(loads1[0]))
        for n in bnames:
            d.add_f32("final_buffer/" + n, np.asarray(Bf[n]))
    nparam = sum(int(np.prod(s)) for _, s, _ in shapes)
    print("  params=%d loss=%.6f grad_norm=%.4f (clipped: %s)" %
          (nparam, float(loss), norms[0], "yes" if norms[0] > optim["grad_clip"] else "no"))
    print("  adamw_losses: " + " ".join("%.5f" % x for x in losses))
    if is_moe:
        print("  balance_loss=%.6f expert_load_step1: %s" % (float(balance),
              " ".join("%d" % x for x in np.asarray(loads1[0]))))
        print("  adamw_balance_losses: " + " ".join("%.6f" % x for x in bal_losses))
        for n in bnames:
            print("  %s: initial %s" % (n, " ".join("%+.4f" % x for x in buffers_np[n])))
            print("  %s  final %s" % (" " * len(n), " ".join("%+.4f" % x for x in np.asarray(Bf[n]))))
    return d.bytes()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "tests", "ref"))
    ap.add_argument("--no-check", action="store_true", help="skip the finite-difference self-check")
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    os.makedirs(args.out, exist_ok=True)
    for fname, cfg, keys, seed in (("tiny-mla.bin", TINY_MLA, MLA_KEYS, 1),
                                   ("tiny-mha.bin", TINY_MHA, MHA_KEYS, 2),
                                   ("tiny-moe.bin", TINY_MOE, MHA_KEYS, 3)):
        print(fname)
        data = build(cfg, keys, seed, B=2, T=8, check=not args.no_check)
        path = os.path.join(args.out, fname)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        print("  wrote %s (%d bytes)" % (os.path.normpath(path), len(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
