#!/usr/bin/env bash
# tests/gpu/test_train_gpu.sh — whole training runs on the CUDA backend against the CPU backend (`make test-gpu`).
#
# The tiny MLA, MHA and MoE models (configs/models/tiny-{mla,mha,moe}.ini: the layouts of configs/runs/debug.ini
# and debug-moe.ini), and the MLA and MHA ones again at head widths the flash-attention kernels cover (mla-flash:
# Youtu's q/k 192, v 128; mha-flash: 64, under selective recomputation; the tiny widths take the materialised
# kernels), train 10 steps on a byte-level English-like text (so the loss falls, 5.7 -> ~3: a wrong
# gradient shows in the losses, which on random ids would hardly move), global batch 4 in micro-batches of 2
# (gradient accumulation), once with --train.device=cuda and once with --train.device=cpu, from the same init and
# data, in fp32, in bf16 (the CPU emulating it, model/ops_cpu_mixed.c) and, for MLA, fp16 (initial loss scale
# 1024, as tests/cli/test_precision.sh). Compared: the gradients of every parameter after step 1 (--log.dump_grads:
# a whole forward and backward), the gradient norm of step 1, and the loss of every step.
#
# Tolerances, cuda against cpu (relative, unless said otherwise):
#                       fp32                               bf16, fp16
#   step 1 loss         1e-4                               1e-3
#   steps 2..10 loss    1e-4 dense, 5e-3 MoE               5e-3 dense, 2e-2 MoE
#   step 1 grad norm    1e-4                               5e-3
#   step 1 gradients    dense: each element within 1e-4 of    dense: each tensor within 2.5e-2, the whole
#                       its tensor's max |g|; MoE: the whole  gradient within 1e-2 (relative L2); MoE: the
#                       gradient within 1e-4 (relative L2)    whole gradient within 3e-2
#   fp16 also: the same steps skipped on both sides.
# How they were set: the GPU's ops differ from the CPU's by the order of their fp32 sums (cuBLAS, reductions,
# FMAs), which moves a value by a few fp32 ulps before it is rounded (tests/gpu/test_ops_gpu.c). That noise was
# emulated on the CPU, with a copy of model/ops_cpu_mixed.c that multiplies every value by (1 + u) before it
# rounds it, u uniform in +-4e-7 and +-2e-6 (bf16, fp16) or +-2e-7 and +-1e-6 (fp32, the same points), and these
# runs compared with the unperturbed ones. Worst measured: fp32 dense losses 1e-6, gradients 3.3e-6 of the tensor's
# max, gradient norm 4e-8; fp32 MoE losses 7.5e-4 from step 3 on (the router picks another expert for a token once
# the trajectories part; step 1 5e-9), whole gradient 1.4e-6; bf16 dense step 1 loss 1.5e-5, later 4.7e-4,
# gradient norm 5e-4, gradients 7.2e-3 (worst tensor, MHA q_norm) / 3.2e-3 (whole); bf16 MoE losses 4.1e-3, whole gradient
# 9.3e-3 (one expert's tensor 0.34: routing); fp16 below bf16. The bounds sit 3..100x above those. Later steps
# drift more than step 1 because AdamW's first updates are ~lr * sign(g): an element whose gradient is near zero
# may move the other way, and the trajectories part like any perturbation. The bounds are not yet measured on a
# GPU: the `#` lines print every difference. (For scale: bf16 against fp32 on the CPU differs by 5e-3 in the
# whole dense gradient, so these runs cannot tell a backend that skips bf16 rounding; test_ops_gpu.c can.)
#
# Layouts with the collectives staged through host memory (dp2, tp2, LOOM_COMM=mpi: on one GPU both ranks share
# it, which is why that path exists; with more GPUs each rank has its own, and tests/gpu/test_nccl_gpu.sh runs
# NCCL): their losses must match the one-process cuda run within 2e-3 (tests/cli/test_precision.sh's bound for
# bf16 layouts). (A build that refuses multi-rank cuda runs, exit 2 "one process only", prints `skip` lines.)
#
# Run from the repository root with ./loom built with the CUDA backend, on a machine with a GPU:
#   bash tests/gpu/test_train_gpu.sh
set -u
source "$(dirname "$0")/../cli/lib.sh"
require_loom gpu/train
LIMIT=600

# ---------------------------------------------------------------------------------------------------
# a GPU first: without one this test fails at once

run train -c configs/runs/debug.ini --train.steps=1 --train.device=cuda --train.run_dir="$tmp/probe"
if [ "$rc" -ne 0 ]; then
    fail gpu/train/device "\`loom train --train.device=cuda\` exited $rc; make test-gpu needs a CUDA build of loom and a visible GPU: $(tail -c 600 "$tmp/err")"
    exit 1
fi
ok gpu/train/device

# ---------------------------------------------------------------------------------------------------
# data and configs

prep_text gpu/train || exit 1
for model in tiny-mla tiny-mha tiny-moe; do
    text_run_ini "$tmp/$model.ini" "$model" "$tmp/data" <<EOF
[train]
steps = 10
seq_len = 64
micro_batch = 2
threads = 2

[schedule]
warmup_tokens = 512

[log]
every = 1
EOF
done
cat >"$tmp/tiny-mla-flash.ini" <<EOF
include = $tmp/tiny-mla.ini

[model]
qk_nope_head_dim = 128
qk_rope_head_dim = 64
v_head_dim = 128
EOF
cat >"$tmp/tiny-mha-flash.ini" <<EOF
include = $tmp/tiny-mha.ini

[model]
head_dim = 64

[train]
recompute = selective
EOF

cat >"$tmp/cmp.py" <<'EOF'
"""cuda against cpu: metrics.jsonl and the step-1 gradient dumps (--log.dump_grads) of one process each."""
import array, json, math, sys

def rows(path):
    return [json.loads(l) for l in open(path)]

def rel(a, b):
    if a is None or b is None:
        return math.inf
    r = abs(a - b) / abs(a) if a else abs(b)
    return r if r == r else math.inf

def grads(prefix):
    """{name: list of floats} from PREFIX.rank0.bin / .map (parallel/grads.c, loom_grads_dump)"""
    raw = open(prefix + ".rank0.bin", "rb").read()
    total, nspans = array.array("q", raw[:16])
    spans = array.array("q", raw[16:16 + 16 * nspans])
    data = array.array("f", raw[16 + 16 * nspans:])
    flat = array.array("f", [math.nan]) * total
    at = 0
    for k in range(nspans):
        lo, hi = spans[2 * k], spans[2 * k + 1]
        flat[lo:hi] = data[at:at + hi - lo]
        at += hi - lo
    out = {}
    for line in open(prefix + ".rank0.map"):
        name, offset, _, _, lrows, lcols = line.split()[:6]
        o, n = int(offset), int(lrows) * int(lcols)
        out[name] = flat[o:o + n]
    return out

def verdict(name, problems):
    print(f"FAIL {name}: " + "; ".join(problems[:4]) if problems else f"ok {name}")

def check_metrics(name, ref, got, prec, moe):
    a, b = rows(ref), rows(got)
    if len(a) != len(b) or not a:
        return verdict(f"{name}/losses", [f"cuda wrote {len(b)} steps, cpu {len(a)}"])
    d = [rel(x["loss"], y["loss"]) for x, y in zip(a, b)]
    if prec == "fp32":
        first, later = 1e-4, 5e-3 if moe else 1e-4
    else:
        first, later = 1e-3, 2e-2 if moe else 5e-3
    print(f"# {name}: relative loss difference by step " + " ".join(f"{x:.2e}" for x in d))
    print(f"# {name}: losses cpu " + " ".join(f"{x['loss']:.5f}" for x in a) + " | cuda " +
          " ".join(f"{y['loss']:.5f}" if y["loss"] is not None else "null" for y in b))
    problems = []
    if d[0] > first:
        problems.append(f"step 1 loss differs by {d[0]:.3g} relative (> {first:g})")
    worst = max(range(1, len(d)), key=lambda i: d[i], default=None)
    if worst is not None and d[worst] > later:
        problems.append(f"step {worst + 1} loss differs by {d[worst]:.3g} relative (> {later:g})")
    skips_a, skips_b = [x["skipped"] for x in a], [y["skipped"] for y in b]
    if skips_a != skips_b:
        problems.append(f"skipped steps differ: cpu {skips_a}, cuda {skips_b}")
    verdict(f"{name}/losses", problems)
    g = rel(a[0]["grad_norm"], b[0]["grad_norm"])
    gtol = 1e-4 if prec == "fp32" else 5e-3
    print(f"# {name}: step 1 gradient norm cpu {a[0]['grad_norm']!r} cuda {b[0]['grad_norm']!r} (relative {g:.3g})")
    verdict(f"{name}/grad_norm", [] if g <= gtol else [f"step 1 gradient norm cuda {b[0]['grad_norm']!r}, cpu "
                                                      f"{a[0]['grad_norm']!r}: {g:.3g} relative (> {gtol:g})"])

def check_grads(name, ref, got, prec, moe):
    r, g = grads(ref), grads(got)
    problems = []
    if sorted(r) != sorted(g):
        return verdict(f"{name}/grads", [f"tensors differ: {sorted(set(r) ^ set(g))[:5]}"])
    d2 = w2 = 0.0
    worst_name, worst_score = None, -1.0
    for name_t in r:
        x, y = r[name_t], g[name_t]
        if len(x) != len(y):
            problems.append(f"{name_t}: {len(y)} values from cuda, {len(x)} from cpu")
            continue
        if any(v != v or math.isinf(v) for v in y):
            problems.append(f"{name_t}: cuda gradient not finite")
            continue
        m = max((abs(v) for v in x), default=0.0)
        dd = [abs(u - v) for u, v in zip(x, y)]
        t_d2, t_w2 = sum(v * v for v in dd), sum(v * v for v in x)
        d2, w2 = d2 + t_d2, w2 + t_w2
        if prec == "fp32":
            score = max(dd, default=0.0) / m if m else max(dd, default=0.0)
            limit = math.inf if moe else 1e-4
        else:
            score = math.sqrt(t_d2 / t_w2) if t_w2 else math.sqrt(t_d2)
            limit = math.inf if moe else 2.5e-2
        if score > worst_score:
            worst_name, worst_score = name_t, score
        if score > limit:
            what = "max |diff| / max |g|" if prec == "fp32" else "relative L2"
            problems.append(f"{name_t}: {what} {score:.3g} (> {limit:g})")
    total = math.sqrt(d2 / w2) if w2 else math.sqrt(d2)
    total_limit = (1e-4 if moe else None) if prec == "fp32" else (3e-2 if moe else 1e-2)
    print(f"# {name}: gradients after step 1: worst tensor {worst_name} "
          f"({'max |diff| / max |g|' if prec == 'fp32' else 'relative L2'} {worst_score:.3g}), whole gradient "
          f"relative L2 {total:.3g}")
    if total_limit is not None and total > total_limit:
        problems.insert(0, f"whole gradient relative L2 {total:.3g} (> {total_limit:g})")
    verdict(f"{name}/grads", problems)

def check_layout(name, ref, got):
    a, b = rows(ref), rows(got)
    if len(a) != len(b) or not a:
        return verdict(name, [f"{len(b)} steps, want {len(a)}"])
    d = [rel(x["loss"], y["loss"]) for x, y in zip(a, b)]
    print(f"# {name}: worst relative loss difference {max(d):.3g}")
    verdict(name, [] if max(d) <= 2e-3 else [f"step {d.index(max(d)) + 1} loss differs by {max(d):.3g} (> 2e-3)"])

mode = sys.argv[1]
try:
    if mode == "metrics":
        check_metrics(*sys.argv[2:6], sys.argv[6] == "moe")
    elif mode == "grads":
        check_grads(*sys.argv[2:6], sys.argv[6] == "moe")
    else:
        check_layout(*sys.argv[2:5])
except Exception as e:
    print(f"FAIL {sys.argv[2]}: the comparison could not run: {e!r}")
EOF
compare() { verdicts "$tmp/cmp.py" "$@"; }

# ---------------------------------------------------------------------------------------------------
# cuda against cpu, one process

t0=$SECONDS
for model in tiny-mla tiny-mha tiny-moe tiny-mla-flash tiny-mha-flash; do
    precs="fp32 bf16"
    [ "$model" = tiny-mla ] && precs="fp32 bf16 fp16"
    for prec in $precs; do
        name="gpu/train/${model#tiny-}/$prec"
        good=1
        for dev in cpu cuda; do
            d="$tmp/$model-$prec-$dev"
            timeout -k 10 "$LIMIT" "$LOOM" train -c "$tmp/$model.ini" --train.device=$dev --precision.compute=$prec \
                --precision.initial_scale=1024 --train.run_dir="$d" --log.dump_grads="$d/grads" \
                >"$tmp/out" 2>"$tmp/err"
            rc=$?
            if [ "$rc" -ne 0 ] || [ ! -s "$d/metrics.jsonl" ] || [ ! -s "$d/grads.rank0.bin" ]; then
                fail "$name/$dev/run" "exit status $rc: $(tail -c 600 "$tmp/err")"
                good=0
            fi
        done
        [ "$good" -eq 1 ] || continue
        moe=dense
        [ "$model" = tiny-moe ] && moe=moe
        compare metrics "$name" "$tmp/$model-$prec-cpu/metrics.jsonl" "$tmp/$model-$prec-cuda/metrics.jsonl" "$prec" "$moe"
        compare grads "$name" "$tmp/$model-$prec-cpu/grads" "$tmp/$model-$prec-cuda/grads" "$prec" "$moe"
    done
done
echo "# cuda against cpu: $((SECONDS - t0)) s"

# ---------------------------------------------------------------------------------------------------
# layouts with the collectives staged through host memory

t0=$SECONDS
for layout in dp2 tp2; do
    name="gpu/train/mla/bf16/$layout"
    LOOM_COMM=mpi launch 2 train -c "$tmp/tiny-mla.ini" --train.device=cuda --precision.compute=bf16 --parallel.${layout%2}=2 \
        --train.run_dir="$tmp/layout-$layout"
    if [ "$rc" -eq 2 ] && grep -q "one process only" "$tmp/err"; then
        echo "skip $name: loom runs the CUDA backend on one process only (multi-rank staging on one GPU is not built yet)"
    elif timed_out; then
        fail "$name" "no result after $LIMIT s (hang?): $(show)"
    elif [ "$rc" -ne 0 ] || [ ! -s "$tmp/layout-$layout/metrics.jsonl" ]; then
        fail "$name" "$(show)"
    else
        compare layout "$name" "$tmp/tiny-mla-bf16-cuda/metrics.jsonl" "$tmp/layout-$layout/metrics.jsonl"
    fi
done
echo "# layouts: $((SECONDS - t0)) s"

[ "$failures" -eq 0 ]
