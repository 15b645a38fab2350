#!/usr/bin/env python3
"""scripts/make_reference.py — loom's model written again, independently, in JAX (float64).

It writes the reference dumps tests/ref/tiny-mla.bin, tests/ref/tiny-mha.bin and tests/ref/tiny-moe.bin, which
the C test suite reads (tests/ref/refdump.h) to check loom's forward pass, loss, gradients and ten AdamW steps.
tiny-moe is the MHA model whose MLP in layers >= first_dense is the dots.llm1 mixture-of-experts layer
(sigmoid router with a bias-corrected top-k, routed + shared SwiGLU experts, sequence-wise balance loss and
the aux-loss-free bias update; see moe_mlp and build).

It also writes tests/ref/tiny-<model>-<bf16|fp16>.bin (MIXED_DUMPS), read by tests/unit/test_precision_ref.c:
the same weights and batch run with precision.compute = bf16 / fp16, i.e. the model in float64 rounded to the
compute dtype wherever loom stores that dtype (MixedRun, a hand-written forward and backward checked against the
JAX gradients when nothing is rounded).

    python3 scripts/make_reference.py [--out tests/ref] [--no-check] [--precision fp32,bf16,fp16] [--spread]

--spread writes nothing and prints how far an implementation with the same cast points but other arithmetic
between them lands from each bf16 / fp16 reference, next to the fp32 model (the test's tolerance lies between).

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

The bf16 / fp16 dumps hold config (with a [precision] section), ids, param/<name>, buffer/<name>, logits, loss
and grad/<name> (one forward and backward, dloss = 1 / tokens, no optimizer steps); with MoE balance_loss and
expert_load [E]; tiny-mla-fp16 adds loss_scale [1] and scaled_grad/<name> (the gradients of the run with
dloss = loss_scale / tokens, divided by loss_scale).
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
# Mixed precision: the same model with loom's cast points (numpy float64, forward and backward by hand)
# --------------------------------------------------------------------------------------------------
#
# With precision.compute = bf16 or fp16, loom stores activations, their gradients and each micro-batch's
# weight-gradient contributions in that dtype (model/ops_cpu_mixed.c emulates it on the CPU by rounding).
# MixedRun computes the model in float64 and rounds, with r() = float64 -> float32 -> dtype (round to nearest
# even) -> float64, exactly where loom does. Autodiff cannot place those roundings (r has no useful
# derivative, and loom rounds sums of gradient contributions in a set order), so the backward is written out
# op by op in the order of model/model.c and model/moe.c; with r the identity it reproduces the JAX gradients
# above (checked in build_mixed). The cast points, r = round to the compute dtype:
#   weights      every matrix r(W) except the MoE router's; norm weights and router stay fp32 (the masters)
#   forward      embedding rows; every linear output r(x W^T); RMSNorm output (statistics fp32); RoPE output;
#                attention output (scores and softmax fp32); SwiGLU output; residual adds r(a + b);
#                logits; the MoE combine r(shared + sum_j w_j y_j) (router, routing and weights fp32)
#   backward     d(logits) = r((softmax - onehot) dloss), cross-entropy fp32; linear input gradients r(dY W),
#                rounded after each accumulation when several GEMMs add into one buffer; each weight
#                gradient contribution r(dY^T X) added to an fp32 accumulator; RMSNorm input gradient (its
#                weight gradient fp32); RoPE backward; attention dq, dk, dv (after summing over the query
#                heads of a kv head); SwiGLU dgate, dup; residual accumulations; an expert's output
#                gradient r(w dY) (scaled gather); the expert combine's backward r(dx_shared + sum dx_e);
#                the router's part of dx r(dx + dlogits W_gate) (its dlogits and weight gradient fp32);
#                the embedding gradient an fp32 scatter-add of the rounded row gradients.

MIXED_DTYPES = ("bf16", "fp16")


def round_bf16(x):
    """float64 -> float32 (RNE) -> bfloat16 (RNE on the float32 bit pattern) -> float64."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32).astype(np.float64).reshape(np.shape(x))


def round_fp16(x):
    """float64 -> float32 (RNE) -> IEEE binary16 (numpy: RNE, subnormals kept, >= 65520 to inf) -> float64."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float64)


def round_none(x):
    return np.asarray(x, dtype=np.float64)


ROUNDERS = {"bf16": round_bf16, "fp16": round_fp16, None: round_none}


def check_rounding():
    """The rounders on values whose result is known: ties to even, fp16 overflow and subnormals; and bf16
    against ml_dtypes (JAX's bfloat16) on random float32 bit patterns."""
    one = 1.0
    assert round_bf16(np.array([one + 2.0 ** -8]))[0] == one                      # tie, even below
    assert round_bf16(np.array([one + 3 * 2.0 ** -8]))[0] == one + 2.0 ** -6      # tie, even above
    assert round_bf16(np.array([one + 2.0 ** -8 + 2.0 ** -20]))[0] == one + 2.0 ** -7
    assert round_fp16(np.array([one + 2.0 ** -11]))[0] == one
    assert round_fp16(np.array([one + 3 * 2.0 ** -11]))[0] == one + 2.0 ** -9
    assert round_fp16(np.array([65519.0]))[0] == 65504.0 and np.isinf(round_fp16(np.array([65520.0]))[0])
    assert round_fp16(np.array([3 * 2.0 ** -25]))[0] == 2.0 ** -23                  # subnormal tie to even
    assert round_fp16(np.array([2.0 ** -25]))[0] == 0.0
    bits = np.random.default_rng(0).integers(0, 2 ** 32, size=1 << 16, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x)]
    want = np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32), dtype=np.float64)
    assert np.array_equal(round_bf16(x), want), "bf16 rounding disagrees with ml_dtypes"


def rope_np(x, T, theta, style, sign):
    """x [N, H, D]: each head of row n rotated by the angles of position n % T (sign -1: the inverse)."""
    N, _, D = x.shape
    half = D // 2
    ang = (np.arange(N) % T)[:, None] * theta ** (-2.0 * np.arange(half) / D)[None, :]
    c, s = np.cos(ang)[:, None, :], sign * np.sin(ang)[:, None, :]
    a = 2 * np.arange(half) if style == "interleaved" else np.arange(half)
    b = a + 1 if style == "interleaved" else a + half
    out = np.empty_like(x)
    out[..., a] = x[..., a] * c - x[..., b] * s
    out[..., b] = x[..., a] * s + x[..., b] * c
    return out


def sigmoid_np(z):
    return 1.0 / (1.0 + np.exp(-z))


def is_router(name):
    return name.endswith(".mlp.gate.weight")


class MixedRun:
    """One forward and backward of one micro-batch of loom's model computing in `precision` (bf16, fp16, or
    None for no rounding). P: the fp32 masters (float64 arrays); buffers: the router biases. After
    forward(ids) and backward(dloss), G holds the gradients of dloss * sum over tokens of the cross-entropy
    (+ the balance loss, weighted by bal_scale = balance_alpha / B), as loom accumulates them."""

    def __init__(self, cfg, P, precision, buffers=None, bal_scale=None):
        self.cfg, self.r = cfg, ROUNDERS[precision]
        self.W = {n: self.r(w) if w.ndim == 2 and not is_router(n) else np.asarray(w, dtype=np.float64)
                  for n, w in P.items()}
        self.G = {n: np.zeros(np.shape(w)) for n, w in P.items()}
        self.buffers = buffers
        self.bal_scale = bal_scale

    # ops, in the sense of model/ops.h ----------------------------------------------------------------

    def linear(self, x, name):
        return self.r(x @ self.W[name].T)

    def linear_dx(self, dy, name, acc=None):
        d = dy @ self.W[name]
        return self.r(d if acc is None else acc + d)

    def linear_dw(self, name, dy, x):
        self.G[name] += self.r(dy.T @ x)

    def rms(self, x, name):
        """x [R, D] -> (r(out), rstd [R])"""
        rstd = 1.0 / np.sqrt(np.mean(x * x, axis=-1) + self.cfg["rms_norm_eps"])
        return self.r(x * rstd[:, None] * self.W[name]), rstd

    def rms_dx(self, dout, x, name, rstd):
        w = self.W[name]
        self.G[name] += np.sum(dout * x * rstd[:, None], axis=0)
        dxh = dout * w
        return self.r(rstd[:, None] * dxh - x * rstd[:, None] ** 3 * np.mean(dxh * x, axis=-1, keepdims=True))

    def rope(self, x, sign):
        return self.r(rope_np(x, self.T, self.cfg["rope_theta"], self.cfg["rope_style"], sign))

    def attention(self, a, q, k, v, scale):
        """q [N, H, Dqk], k [N, Hkv, Dqk], v [N, Hkv, Dv] -> r(out) [N, H * Dv]; query head h reads kv head
        h // (H / Hkv). Saves what the backward needs in a."""
        B, T = self.B, self.T
        N, H, _ = q.shape
        rep = H // k.shape[1]
        q4 = q.reshape(B, T, H, -1)
        k4 = np.repeat(k.reshape(B, T, k.shape[1], -1), rep, axis=2)
        v4 = np.repeat(v.reshape(B, T, v.shape[1], -1), rep, axis=2)
        s = np.einsum("bthd,bshd->bhts", q4, k4) * scale
        s = np.where(np.tril(np.ones((T, T), dtype=bool))[None, None], s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        a.update(q=q, k=k, v=v, q4=q4, k4=k4, v4=v4, probs=p, scale=scale)
        return self.r(np.einsum("bhts,bshd->bthd", p, v4).reshape(N, -1))

    def attention_dx(self, a, dout):
        """-> r(dq) [N, H, Dqk], r(dk) [N, Hkv, Dqk], r(dv) [N, Hkv, Dv]"""
        B, T = self.B, self.T
        q, k, v, p, scale = a["q"], a["k"], a["v"], a["probs"], a["scale"]
        N, H, _ = q.shape
        Hkv = k.shape[1]
        do = dout.reshape(B, T, H, -1)
        dp = np.einsum("bthd,bshd->bhts", do, a["v4"])
        ds = p * (dp - np.sum(p * dp, axis=-1, keepdims=True))
        dq = np.einsum("bhts,bshd->bthd", ds, a["k4"]) * scale
        dk = np.einsum("bhts,bthd->bshd", ds, a["q4"]) * scale
        dv = np.einsum("bhts,bthd->bshd", p, do)
        dk = dk.reshape(B, T, Hkv, H // Hkv, -1).sum(axis=3)
        dv = dv.reshape(B, T, Hkv, H // Hkv, -1).sum(axis=3)
        return self.r(dq.reshape(q.shape)), self.r(dk.reshape(k.shape)), self.r(dv.reshape(v.shape))

    def mlp(self, a, pre, x):
        """SwiGLU MLP (dense, shared or routed expert) on x [n, C]; saves its activations in a."""
        g = self.linear(x, pre + "gate_proj.weight")
        u = self.linear(x, pre + "up_proj.weight")
        h = self.r(g * sigmoid_np(g) * u)
        a.update(x=x, g=g, u=u, h=h)
        return self.linear(h, pre + "down_proj.weight")

    def mlp_dx(self, a, pre, dy):
        """model.c block_mlp_backward / moe.c experts_backward: returns d(x)"""
        self.linear_dw(pre + "down_proj.weight", dy, a["h"])
        dh = self.linear_dx(dy, pre + "down_proj.weight")
        g, u = a["g"], a["u"]
        sg = sigmoid_np(g)
        dg = self.r(dh * u * sg * (1.0 + g * (1.0 - sg)))
        du = self.r(dh * g * sg)
        self.linear_dw(pre + "gate_proj.weight", dg, a["x"])
        self.linear_dw(pre + "up_proj.weight", du, a["x"])
        dx = self.linear_dx(dg, pre + "gate_proj.weight")
        return self.linear_dx(du, pre + "up_proj.weight", acc=dx)

    # attention ---------------------------------------------------------------------------------------

    def mla(self, a, pre, x):
        cfg, N = self.cfg, x.shape[0]
        H, dn, dr, dv = cfg["num_heads"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
        rkv = cfg["kv_lora_rank"]
        if cfg["q_lora_rank"] > 0:
            a["qa"] = self.linear(x, pre + "q_a_proj.weight")
            a["qa_n"], a["rstd_qa"] = self.rms(a["qa"], pre + "q_a_layernorm.weight")
            q = self.linear(a["qa_n"], pre + "q_b_proj.weight")
        else:
            q = self.linear(x, pre + "q_proj.weight")
        q = q.reshape(N, H, dn + dr)
        q[..., dn:] = self.rope(q[..., dn:], 1)
        kva = self.linear(x, pre + "kv_a_proj_with_mqa.weight")
        a["kv_c"] = kva[:, :rkv]
        a["c_n"], a["rstd_kv"] = self.rms(a["kv_c"], pre + "kv_a_layernorm.weight")
        k_rope = self.rope(kva[:, None, rkv:], 1)
        kvb = self.linear(a["c_n"], pre + "kv_b_proj.weight").reshape(N, H, dn + dv)
        k = np.concatenate([kvb[..., :dn], np.broadcast_to(k_rope, (N, H, dr))], axis=-1)
        return self.attention(a, q, k, np.ascontiguousarray(kvb[..., dn:]), 1.0 / math.sqrt(dn + dr))

    def mla_dx(self, a, pre, datt, x):
        """model.c mla_backward: d(att) -> d(ln1)"""
        cfg, N = self.cfg, x.shape[0]
        H, dn, dr = cfg["num_heads"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"]
        dq, dk, dv = self.attention_dx(a, datt)
        dkvb = np.concatenate([dk[..., :dn], dv], axis=-1).reshape(N, -1)
        dk_rope = self.rope(np.sum(dk[..., dn:], axis=1)[:, None, :], -1)[:, 0]  # heads summed in fp32
        self.linear_dw(pre + "kv_b_proj.weight", dkvb, a["c_n"])
        dc_n = self.linear_dx(dkvb, pre + "kv_b_proj.weight")
        dkva = np.concatenate([self.rms_dx(dc_n, a["kv_c"], pre + "kv_a_layernorm.weight", a["rstd_kv"]),
                               dk_rope], axis=-1)
        self.linear_dw(pre + "kv_a_proj_with_mqa.weight", dkva, x)
        dx = self.linear_dx(dkva, pre + "kv_a_proj_with_mqa.weight")
        dq[..., dn:] = self.rope(dq[..., dn:], -1)
        dq = dq.reshape(N, H * (dn + dr))
        if cfg["q_lora_rank"] > 0:
            self.linear_dw(pre + "q_b_proj.weight", dq, a["qa_n"])
            dqa_n = self.linear_dx(dq, pre + "q_b_proj.weight")
            dqa = self.rms_dx(dqa_n, a["qa"], pre + "q_a_layernorm.weight", a["rstd_qa"])
            self.linear_dw(pre + "q_a_proj.weight", dqa, x)
            return self.linear_dx(dqa, pre + "q_a_proj.weight", acc=dx)
        self.linear_dw(pre + "q_proj.weight", dq, x)
        return self.r(dx + self.linear_dx(dq, pre + "q_proj.weight"))

    def mha(self, a, pre, x):
        cfg, N = self.cfg, x.shape[0]
        H, Hkv, D, Dv = cfg["num_heads"], kv_heads(cfg), cfg["head_dim"], cfg["v_head_dim"]
        q = self.linear(x, pre + "q_proj.weight").reshape(N * H, D)
        k = self.linear(x, pre + "k_proj.weight").reshape(N * Hkv, D)
        if cfg.get("qk_norm", False):
            a["q_raw"], a["k_raw"] = q, k
            q, a["rstd_q"] = self.rms(q, pre + "q_norm.weight")
            k, a["rstd_k"] = self.rms(k, pre + "k_norm.weight")
        v = self.linear(x, pre + "v_proj.weight").reshape(N, Hkv, Dv)
        q = self.rope(q.reshape(N, H, D), 1)
        k = self.rope(k.reshape(N, Hkv, D), 1)
        return self.attention(a, q, k, v, 1.0 / math.sqrt(D))

    def mha_dx(self, a, pre, datt, x):
        """model.c mha_backward: d(att) -> d(ln1)"""
        cfg, N = self.cfg, x.shape[0]
        H, Hkv, D = cfg["num_heads"], kv_heads(cfg), cfg["head_dim"]
        dq, dk, dv = self.attention_dx(a, datt)
        dq = self.rope(dq, -1).reshape(N * H, D)
        dk = self.rope(dk, -1).reshape(N * Hkv, D)
        if cfg.get("qk_norm", False):
            dq = self.rms_dx(dq, a["q_raw"], pre + "q_norm.weight", a["rstd_q"])
            dk = self.rms_dx(dk, a["k_raw"], pre + "k_norm.weight", a["rstd_k"])
        dq, dk, dv = dq.reshape(N, -1), dk.reshape(N, -1), dv.reshape(N, -1)
        self.linear_dw(pre + "q_proj.weight", dq, x)
        self.linear_dw(pre + "k_proj.weight", dk, x)
        self.linear_dw(pre + "v_proj.weight", dv, x)
        dx = self.linear_dx(dq, pre + "q_proj.weight")
        dx = self.linear_dx(dk, pre + "k_proj.weight", acc=dx)
        return self.linear_dx(dv, pre + "v_proj.weight", acc=dx)

    # mixture of experts (model/moe.c) ------------------------------------------------------------------

    def moe(self, a, pre, x):
        moe, N = self.cfg["moe"], x.shape[0]
        E, K = moe["experts"], moe["top_k"]
        s = sigmoid_np(x @ self.W[pre + "gate.weight"].T)                # fp32 router, weight not rounded
        sel = s + self.buffers[pre + "gate.e_score_correction_bias"]
        order = np.argsort(-sel, axis=-1, kind="stable")                 # ties to the lower index
        idx = order[:, :K]
        srt = np.take_along_axis(sel, order, axis=-1)
        w = np.take_along_axis(s, idx, axis=-1)
        qsum = np.sum(w, axis=-1, keepdims=True)
        if moe["norm_topk"]:
            w = w / (qsum + 1e-20)
        w = w * moe["scaling"]
        out = self.mlp(a.setdefault("shared", {}), pre + "shared_experts.", x) if moe["shared"] > 0 \
            else np.zeros_like(x)
        experts, acc = [], out.copy()
        for e in range(E):
            rows, slot = np.nonzero(idx == e)                              # in token order, as loom groups them
            ae = dict(rows=rows, slot=slot)
            if rows.size:
                y = self.mlp(ae, pre + "experts.%d." % e, x[rows])
                ae["y"] = y
                acc[rows] += w[rows, slot][:, None] * y
            experts.append(ae)
        count = np.zeros((self.B, E))
        for b in range(self.B):
            count[b] = np.bincount(idx[b * self.T:(b + 1) * self.T].reshape(-1), minlength=E)
        f = E / (K * self.T) * count                                       # [B, E], no gradient
        sp = (s / np.sum(s, axis=-1, keepdims=True)).reshape(self.B, self.T, E)
        self.balance += self.bal_scale * np.sum(f * np.mean(sp, axis=1))
        self.loads.append(np.sum(count, axis=0))
        self.margin = min(self.margin, float(np.min(srt[:, K - 1] - srt[:, K])))
        a.update(moe_x=x, s=s, idx=idx, w=w, qsum=qsum[:, 0], f=f, experts=experts)
        return self.r(acc)

    def moe_dx(self, a, pre, dout):
        """moe.c loom_moe_backward: d(out) -> d(x): shared experts, routed experts, then the router"""
        moe, x = self.cfg["moe"], a["moe_x"]
        E, K, T = moe["experts"], moe["top_k"], self.T
        s, idx, w = a["s"], a["idx"], a["w"]
        dx = self.mlp_dx(a["shared"], pre + "shared_experts.", dout) if moe["shared"] > 0 else np.zeros_like(x)
        dw = np.zeros(idx.shape)                                            # d(routing weight), fp32
        acc = dx.copy()
        for e, ae in enumerate(a["experts"]):
            rows, slot = ae["rows"], ae["slot"]
            if not rows.size:
                continue
            dw[rows, slot] = np.sum(ae["y"] * dout[rows], axis=-1)
            dy = self.r(w[rows, slot][:, None] * dout[rows])                # scaled gather
            acc[rows] += self.mlp_dx(ae, pre + "experts.%d." % e, dy)
        dx = self.r(acc)
        # router, all fp32: scaling and top-k normalisation, the balance loss, the sigmoid
        scale = moe["scaling"]
        ds = np.zeros_like(s)
        rows = np.arange(s.shape[0])[:, None]
        sk = np.take_along_axis(s, idx, axis=-1)
        if moe["norm_topk"]:
            Q = a["qsum"][:, None] + 1e-20
            cross = np.sum(dw * sk, axis=-1, keepdims=True)
            np.add.at(ds, (rows, idx), scale * (dw / Q - cross / (Q * Q)))
        else:
            np.add.at(ds, (rows, idx), scale * dw)
        f = np.repeat(a["f"], T, axis=0)                                    # [N, E], per token's sequence
        S = np.sum(s, axis=-1, keepdims=True)
        ds += self.bal_scale / T * (f - np.sum(f * s, axis=-1, keepdims=True) / S) / S
        dz = ds * s * (1.0 - s)
        self.G[pre + "gate.weight"] += dz.T @ x
        return self.r(dx + dz @ self.W[pre + "gate.weight"])

    # the model (model/model.c forward_step, head_forward, backward_step) ------------------------------

    def forward(self, ids):
        """ids [B, T + 1] -> (logits [B, T, V], mean cross-entropy)"""
        cfg, r = self.cfg, self.r
        self.B, self.T = ids.shape[0], ids.shape[1] - 1
        self.inputs, self.targets = ids[:, :-1].reshape(-1), ids[:, 1:].reshape(-1)
        self.balance, self.loads, self.margin = 0.0, [], math.inf
        x = r(self.W["embed_tokens.weight"][self.inputs])
        self.res, self.acts = [x], []
        for l in range(cfg["num_layers"]):
            p, a = "layers.%d." % l, {}
            a["ln1"], a["rstd1"] = self.rms(x, p + "input_layernorm.weight")
            attn = self.mla if cfg["attention"] == "mla" else self.mha
            a["att"] = attn(a, p + "self_attn.", a["ln1"])
            a["mid"] = r(x + self.linear(a["att"], p + "self_attn.o_proj.weight"))
            a["ln2"], a["rstd2"] = self.rms(a["mid"], p + "post_attention_layernorm.weight")
            mlp = self.moe if is_moe_layer(cfg, l) else self.mlp
            x = r(mlp(a, p + "mlp.", a["ln2"]) + a["mid"])
            self.res.append(x)
            self.acts.append(a)
        self.lnf, self.rstdf = self.rms(x, "norm.weight")
        self.head = "embed_tokens.weight" if cfg["tie_word_embeddings"] else "lm_head.weight"
        logits = self.linear(self.lnf, self.head)
        mx = logits.max(-1, keepdims=True)
        e = np.exp(logits - mx)
        self.probs = e / e.sum(-1, keepdims=True)
        n = np.arange(logits.shape[0])
        losses = mx[:, 0] + np.log(e.sum(-1)) - logits[n, self.targets]
        self.logits = logits
        return logits.reshape(self.B, self.T, -1), float(np.mean(losses))

    def backward(self, dloss):
        cfg, r = self.cfg, self.r
        n = np.arange(self.logits.shape[0])
        dl = self.probs.copy()
        dl[n, self.targets] -= 1.0
        dl = r(dl * dloss)
        self.linear_dw(self.head, dl, self.lnf)
        dln = self.linear_dx(dl, self.head)
        dres = self.rms_dx(dln, self.res[-1], "norm.weight", self.rstdf)
        for l in reversed(range(cfg["num_layers"])):
            p, a, x = "layers.%d." % l, self.acts[l], self.res[l]
            if is_moe_layer(cfg, l):
                dln = self.moe_dx(a, p + "mlp.", dres)
            else:
                dln = self.mlp_dx(a, p + "mlp.", dres)
            dres = r(dres + self.rms_dx(dln, a["mid"], p + "post_attention_layernorm.weight", a["rstd2"]))
            self.linear_dw(p + "self_attn.o_proj.weight", dres, a["att"])
            datt = self.linear_dx(dres, p + "self_attn.o_proj.weight")
            attn_dx = self.mla_dx if cfg["attention"] == "mla" else self.mha_dx
            dln = attn_dx(a, p + "self_attn.", datt, a["ln1"])
            dres = r(dres + self.rms_dx(dln, x, p + "input_layernorm.weight", a["rstd1"]))
        np.add.at(self.G["embed_tokens.weight"], self.inputs, dres)       # fp32 scatter-add


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


def draw(cfg, seed, B, T):
    """The weights, router biases and batch of a reference: (params, buffers, ids [B, T + 1]), numpy."""
    rng = np.random.default_rng(seed)
    params_np = init_params(cfg, rng)
    buffers_np = init_buffers(cfg, rng)  # empty (no draws) without MoE
    ids_np = rng.integers(0, cfg["vocab_size"], size=(B, T + 1)).astype(np.int32)
    return params_np, buffers_np, ids_np


def build(cfg, keys, seed, B, T, check=True):
    params_np, buffers_np, ids_np = draw(cfg, seed, B, T)
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


def rel_l2(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def mixed_run(cfg, params_np, buffers_np, ids_np, precision, loss_scale=1.0):
    """MixedRun's forward and backward with loom's dloss = loss_scale / tokens (the balance loss scaled alike)."""
    B, T = ids_np.shape[0], ids_np.shape[1] - 1
    bal_scale = loss_scale * cfg["moe"]["balance_alpha"] / B if cfg.get("moe") else 0.0
    run = MixedRun(cfg, params_np, precision, buffers_np, bal_scale)
    logits, loss = run.forward(ids_np)
    run.backward(np.float32(loss_scale / (B * T)))
    return run, logits, loss


def build_mixed(cfg, keys, seed, B, T, precision, loss_scale=None):
    """The dump of one forward and backward computing in `precision` (bf16, fp16) from the weights, router
    biases and batch of build(cfg, ..., seed): logits, loss, grad/<name> with dloss = 1 / tokens; with
    loss_scale also scaled_grad/<name>, the gradients of the run with dloss = loss_scale / tokens, divided
    by loss_scale (what the optimizer sees after unscaling)."""
    params_np, buffers_np, ids_np = draw(cfg, seed, B, T)
    names = [n for n, _, _ in param_shapes(cfg)]
    bnames = [n for n, _ in buffer_shapes(cfg)]
    is_moe = bool(bnames)

    # MixedRun without rounding is the JAX model: logits, losses and every gradient to float64 precision
    P = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in params_np.items()}
    bufs = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in buffers_np.items()} if is_moe else None
    ids = jnp.asarray(ids_np)
    vg = jax.jit(jax.value_and_grad(lambda Q, Bf: loss_parts(cfg, Q, ids, Bf), has_aux=True))
    (_, (jloss, jbal, _)), jgrads = vg(P, bufs)
    jlogits = jax.jit(lambda Q, Bf: forward_logits(cfg, Q, ids[:, :-1], Bf))(P, bufs)
    exact, elogits, eloss = mixed_run(cfg, params_np, buffers_np, ids_np, None)
    worst = max(rel_l2(elogits, jlogits), abs(eloss - float(jloss)), abs(exact.balance - float(jbal)))
    worst = max([worst] + [rel_l2(exact.G[n], jgrads[n]) for n in names])
    print("  %s: unrounded hand-written backward vs JAX autodiff, worst relative L2 error %.2e"
          % (precision, worst))
    assert worst < 1e-11, "the hand-written forward/backward disagrees with the JAX model"

    run, logits, loss = mixed_run(cfg, params_np, buffers_np, ids_np, precision)
    if is_moe:
        print("  %s: smallest top-k margin of the biased router scores %.3e" % (precision, run.margin))
        assert run.margin > 1e-4, "expert selection too close to a tie for a float32 implementation"
    print("  %s: loss %.6f (unrounded %.6f); relative L2 distance to the unrounded model: logits %.2e,"
          " gradients median %.2e max %.2e" % (
              precision, loss, eloss, rel_l2(logits, elogits),
              float(np.median([rel_l2(run.G[n], exact.G[n]) for n in names])),
              max(rel_l2(run.G[n], exact.G[n]) for n in names)))

    cfg_text = config_text(cfg, keys, B, T) + "\n[precision]\ncompute = %s\nloss_scale = 1\n" % precision
    d = Dump()
    d.add_text("config", cfg_text)
    d.add_i32("ids", ids_np)
    for n in names:
        d.add_f32("param/" + n, params_np[n])
    for n in bnames:
        d.add_f32("buffer/" + n, buffers_np[n])
    d.add_f32("logits", logits)
    d.add_f32("loss", np.array([loss]))
    if is_moe:
        assert len(bnames) == 1, "expert_load holds the loads of a single MoE layer"
        d.add_f32("balance_loss", np.array([run.balance]))
        d.add_f32("expert_load", run.loads[0])
    for n in names:
        d.add_f32("grad/" + n, run.G[n])
    if loss_scale is not None:
        scaled, _, _ = mixed_run(cfg, params_np, buffers_np, ids_np, precision, loss_scale)
        d.add_f32("loss_scale", np.array([loss_scale]))
        for n in names:
            d.add_f32("scaled_grad/" + n, scaled.G[n] / loss_scale)
        print("  %s: loss scale %g: relative L2 distance of the unscaled gradients to those at scale 1:"
              " median %.2e max %.2e" % (precision, loss_scale,
                                         float(np.median([rel_l2(scaled.G[n] / loss_scale, run.G[n])
                                                          for n in names])),
                                         max(rel_l2(scaled.G[n] / loss_scale, run.G[n]) for n in names)))
    return d.bytes()


class MixedRunF32(MixedRun):
    """MixedRun with its GEMMs in float32, each contraction summed in a random order: an implementation
    with the same cast points but other arithmetic between them, as loom on another BLAS kernel."""

    def __init__(self, cfg, P, precision, buffers, bal_scale, rng):
        super().__init__(cfg, P, precision, buffers, bal_scale)
        self.rng = rng

    def gemm(self, a, b):
        p = self.rng.permutation(a.shape[1])
        return (a[:, p].astype(np.float32) @ b[p].astype(np.float32)).astype(np.float64)

    def linear(self, x, name):
        return self.r(self.gemm(x, self.W[name].T))

    def linear_dx(self, dy, name, acc=None):
        d = self.gemm(dy, self.W[name])
        return self.r(d if acc is None else np.float32(acc) + np.float32(d))

    def linear_dw(self, name, dy, x):
        self.G[name] += self.r(self.gemm(dy.T, x))


def ulp_distance(got, want, precision):
    """|got - want| in ulps of the dtype at want (the subnormal spacing below the smallest normal), as
    tests/unit/test_precision_ref.c measures it."""
    mant, emin = (7, -126) if precision == "bf16" else (10, -14)
    want = np.asarray(want, dtype=np.float64)
    e = np.where(want != 0, np.frexp(want)[1] - 1, emin)
    return np.abs(np.asarray(got, dtype=np.float64) - want) / np.ldexp(1.0, np.maximum(e, emin) - mant)


def spread_figures(run, logits, ref, ref_logits, precision):
    """The test's figures of a run against the reference: logits (rel_l2, share > 2 ulps), all gradients
    pooled (rel_l2, share > 2 ulps), the worst gradient tensor's rel_l2."""
    g = np.concatenate([run.G[n].ravel() for n in ref.G])
    w = np.concatenate([ref.G[n].ravel() for n in ref.G])
    return (rel_l2(logits, ref_logits), float(np.mean(ulp_distance(logits, ref_logits, precision) > 2)),
            rel_l2(g, w), float(np.mean(ulp_distance(g, w, precision) > 2)),
            max(rel_l2(run.G[n], ref.G[n]) for n in ref.G if np.any(ref.G[n])))


def spread(cfg, seed, B, T, precision, loss_scale=1.0, orders=8):
    """How far an implementation with the same cast points but float32 GEMMs summed in other orders lands
    from the reference (the worst of `orders` random orders), next to the fp32 model's distance: the
    figures tests/unit/test_precision_ref.c sets its tolerance between."""
    params_np, buffers_np, ids_np = draw(cfg, seed, B, T)
    ref, ref_logits, ref_loss = mixed_run(cfg, params_np, buffers_np, ids_np, precision, loss_scale)
    bal_scale = loss_scale * cfg["moe"]["balance_alpha"] / B if cfg.get("moe") else 0.0
    worst, loss_dev, same_loads = np.zeros(5), 0.0, True
    for k in range(orders):
        run = MixedRunF32(cfg, params_np, precision, buffers_np, bal_scale, np.random.default_rng(100 + k))
        logits, loss = run.forward(ids_np)
        run.backward(np.float32(loss_scale / (B * T)))
        worst = np.maximum(worst, spread_figures(run, logits, ref, ref_logits, precision))
        loss_dev = max(loss_dev, abs(loss - ref_loss) / ref_loss)
        same_loads &= all(np.array_equal(a, b) for a, b in zip(run.loads, ref.loads))
    fp32, fp32_logits, fp32_loss = mixed_run(cfg, params_np, buffers_np, ids_np, None, loss_scale)
    fmt = "logits rel_l2 %.2e > 2 ulps %.4f | grads pooled rel_l2 %.2e > 2 ulps %.4f | worst tensor rel_l2 %.2e"
    print("  other GEMM orders (worst of %d): " % orders + fmt % tuple(worst) + " | loss %.1e%s"
          % (loss_dev, "" if same_loads else " | EXPERT LOADS DIFFER"))
    print("  the fp32 model:                 " + fmt % spread_figures(fp32, fp32_logits, ref, ref_logits, precision)
          + " | loss %.1e" % (abs(fp32_loss - ref_loss) / ref_loss))


def write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    print("  wrote %s (%d bytes)" % (os.path.normpath(path), len(data)))


# (model, precision, loss scale for the scaled_grad entries): every model in bf16; MLA and the MoE model (MHA
# with QK-norm and grouped kv heads) in fp16, MLA also with a loss scale
MIXED_DUMPS = (("mla", "bf16", None), ("mha", "bf16", None), ("moe", "bf16", None),
               ("mla", "fp16", 1024.0), ("moe", "fp16", None))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "tests", "ref"))
    ap.add_argument("--no-check", action="store_true", help="skip the finite-difference self-check")
    ap.add_argument("--precision", default="fp32,bf16,fp16",
                    help="comma-separated: which dumps to write (fp32: tiny-<model>.bin; bf16, fp16: "
                         "tiny-<model>-<precision>.bin)")
    ap.add_argument("--spread", action="store_true",
                    help="write nothing; print how far other arithmetic between the cast points, and the fp32 "
                         "model, land from each bf16 / fp16 reference (the basis of the test's tolerance)")
    args = ap.parse_args(argv)
    wanted = set(args.precision.split(","))
    assert wanted <= {"fp32"} | set(MIXED_DTYPES), "unknown precision in %r" % args.precision
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    os.makedirs(args.out, exist_ok=True)
    models = {"mla": (TINY_MLA, MLA_KEYS, 1), "mha": (TINY_MHA, MHA_KEYS, 2), "moe": (TINY_MOE, MHA_KEYS, 3)}
    if args.spread:
        for model, precision, loss_scale in MIXED_DUMPS:
            for scale in (1.0,) if loss_scale is None else (1.0, loss_scale):
                print("tiny-%s-%s, loss scale %g" % (model, precision, scale))
                spread(models[model][0], models[model][2], 2, 8, precision, scale)
        return 0
    if "fp32" in wanted:
        for model, (cfg, keys, seed) in models.items():
            fname = "tiny-%s.bin" % model
            print(fname)
            write(os.path.join(args.out, fname), build(cfg, keys, seed, B=2, T=8, check=not args.no_check))
    if wanted & set(MIXED_DTYPES):
        check_rounding()
    for model, precision, loss_scale in MIXED_DUMPS:
        if precision not in wanted:
            continue
        cfg, keys, seed = models[model]
        fname = "tiny-%s-%s.bin" % (model, precision)
        print(fname)
        write(os.path.join(args.out, fname), build_mixed(cfg, keys, seed, 2, 8, precision, loss_scale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
