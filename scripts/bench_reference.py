#!/usr/bin/env python3
"""scripts/bench_reference.py — the peer of loom's CPU training benchmark, in JAX float32.

Trains the model of scripts/make_reference.py (same code, run in float32) on uniform random token ids with
a jit-compiled step: forward, backward, global-norm clipping and AdamW. Only the steps after the warmup are
timed. Prints one machine-readable line:

    reference tokens_per_s=<float> step_ms=<float> peak_rss_mb=<float> params=<int>

    python3 scripts/bench_reference.py [--attention mla|mha] [--threads N] [--steps 20] ...

--threads N (0 = leave JAX's default) sets XLA_FLAGS for the Eigen CPU thread pool and, because the XLA
CPU client sizes its pools from the CPUs the process may run on, also restricts this process's CPU
affinity to N CPUs. Both happen before jax is imported.
"""
import argparse
import os
import resource
import sys
import time


def parse_args(argv):
    ap = argparse.ArgumentParser(description="JAX float32 training benchmark, the peer of loom's CPU bench")
    ap.add_argument("--attention", choices=["mla", "mha"], default="mla")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=0, help="mha: key/value heads (0 = heads)")
    ap.add_argument("--head-dim", type=int, default=0, help="mha: q/k head width (0 = hidden / heads)")
    ap.add_argument("--v-head-dim", type=int, default=32,
                    help="value head width (0 = head-dim for mha, qk-nope for mla)")
    ap.add_argument("--q-lora", type=int, default=128)
    ap.add_argument("--kv-lora", type=int, default=64)
    ap.add_argument("--qk-nope", type=int, default=32)
    ap.add_argument("--qk-rope", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first (compilation included)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = JAX default)")
    ap.add_argument("--qk-norm", action="store_true", help="mha: RMSNorm on q and k heads")
    ap.add_argument("--rope-style", choices=["interleaved", "half"], default=None,
                    help="default: interleaved for mla, half for mha")
    ap.add_argument("--untied", action="store_true", help="separate lm_head (default: tied)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup_steps < 1:
        ap.error("--steps and --warmup-steps must be at least 1 (the first step compiles)")
    return args


def set_threads(n):
    if n <= 0:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=true "
                               "intra_op_parallelism_threads=%d" % n).strip()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if n < len(cpus):
            os.sched_setaffinity(0, cpus[:n])


def model_config(args):
    if args.attention == "mla":
        cfg = dict(attention="mla", q_lora_rank=args.q_lora, kv_lora_rank=args.kv_lora,
                   qk_nope_head_dim=args.qk_nope, qk_rope_head_dim=args.qk_rope,
                   v_head_dim=args.v_head_dim or args.qk_nope)
    else:
        head_dim = args.head_dim or args.hidden // args.heads
        cfg = dict(attention="mha", num_kv_heads=args.kv_heads or args.heads, head_dim=head_dim,
                   v_head_dim=args.v_head_dim or head_dim, qk_norm=args.qk_norm)
    cfg.update(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
               num_heads=args.heads, intermediate_size=args.intermediate, rope_theta=10000.0,
               rope_style=args.rope_style or ("interleaved" if args.attention == "mla" else "half"),
               rms_norm_eps=1e-6, tie_word_embeddings=not args.untied)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)

    import numpy as np
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_reference as ref

    jax.config.update("jax_platforms", "cpu")
    cfg = model_config(args)
    if cfg["attention"] == "mha" and cfg["num_heads"] % cfg["num_kv_heads"]:
        sys.exit("bench_reference: --heads must be a multiple of --kv-heads")
    shapes = ref.param_shapes(cfg)
    rng = np.random.default_rng(args.seed)
    params = {k: jnp.asarray(v, dtype=jnp.float32)
              for k, v in ref.init_params(cfg, rng, matrix_std=0.02, embed_std=0.02, norm_std=0.0).items()}
    nparams = sum(int(np.prod(s)) for _, s, _ in shapes)
    decay_mask = {n: ref.decayed(n, s) for n, s, _ in shapes}
    optim = dict(ref.OPTIM)

    def train_step(P, M, V, t, ids):
        loss, G = jax.value_and_grad(lambda Q: ref.loss_fn(cfg, Q, ids))(P)
        P, M, V, gn = ref.adamw_step(P, G, M, V, t, args.lr, optim, decay_mask)
        return P, M, V, loss

    step = jax.jit(train_step, donate_argnums=(0, 1, 2))
    m = {k: jnp.zeros_like(v) for k, v in params.items()}
    v = {k: jnp.zeros_like(x) for k, x in params.items()}

    total = args.warmup_steps + args.steps
    batches = [jnp.asarray(rng.integers(0, args.vocab, size=(args.batch, args.seq + 1)), dtype=jnp.int32)
               for _ in range(total)]
    loss = None
    for i in range(args.warmup_steps):
        params, m, v, loss = step(params, m, v, jnp.float32(i + 1), batches[i])
    jax.block_until_ready((params, m, v, loss))
    first_loss = float(loss)

    t0 = time.perf_counter()
    for i in range(args.warmup_steps, total):
        params, m, v, loss = step(params, m, v, jnp.float32(i + 1), batches[i])
    jax.block_until_ready((params, m, v, loss))
    dt = time.perf_counter() - t0

    step_ms = dt / args.steps * 1e3
    tokens_per_s = args.steps * args.batch * args.seq / dt
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak_rss_mb = rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0
    print("# jax %s, %s, threads=%s, loss %.4f -> %.4f" % (jax.__version__, cfg["attention"],
          args.threads or "default", first_loss, float(loss)), file=sys.stderr)
    print("reference tokens_per_s=%.1f step_ms=%.2f peak_rss_mb=%.1f params=%d"
          % (tokens_per_s, step_ms, peak_rss_mb, nparams))
    return 0


if __name__ == "__main__":
    sys.exit(main())
