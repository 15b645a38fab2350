#!/usr/bin/env bash
# tests/gpu/test_nccl_gpu.sh — training with the collectives on NCCL (parallel/comm_nccl.cu), and the choice of
# the collectives' path in a CUDA run (train/train.c, select_comm), for `make test-gpu`.
#
# On one GPU (every GPU machine: two ranks given only the first visible GPU through CUDA_VISIBLE_DEVICES), both
# ranks share it, so NCCL cannot run: a dp2 run must say "collectives on MPI through host memory: 2 ranks share
# 1 GPU ..." and train, and LOOM_COMM=nccl must refuse the layout (exit status 2 from every rank, a line
# `loom: error: LOOM_COMM: nccl, but 2 ranks share 1 GPU ...`). One rank with LOOM_COMM=nccl (NCCL groups of one
# rank: the streams, events and teardown without peers) must give the plain one-rank run's losses bit for bit.
#
# With two GPUs or more, each rank on its own GPU, the tiny MLA model (fp32, 10 steps on text as in
# tests/gpu/test_train_gpu.sh) over dp2, tp2, pp2 (1F1B with two micro-batches, so a stage sends activations
# and then receives gradients while the next one does the opposite) and dp2 with ZeRO-1 (reduce-scatterv,
# all-gatherv), and the tiny MoE model over dp2 x ep2 (all-to-all-v): each run must say it chose NCCL; its losses
# must match the one-rank run within 1e-4 relative (MoE: 5e-3, its top-2 routing may flip once trajectories part,
# as in test_train_gpu.sh), and match the same layout run with LOOM_COMM=mpi (MPI on host copies) bit for bit,
# gradient norms included: with two ranks every sum has two terms, which any reduction algorithm adds alike.
# With fewer than two GPUs these print `skip` lines.
#
# Run from the repository root with ./loom built with the CUDA backend, on a machine with a GPU:
#   bash tests/gpu/test_nccl_gpu.sh
set -u
source "$(dirname "$0")/../cli/lib.sh"
require_loom gpu/nccl
LIMIT=300

# the visible GPUs (CUDA_VISIBLE_DEVICES when set, else nvidia-smi's list), and the first of them
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    gpus=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .)
    first=${CUDA_VISIBLE_DEVICES%%,*}
else
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
    first=0
fi
if [ "$gpus" -lt 1 ]; then
    fail gpu/nccl/device "no GPU visible (nvidia-smi -L lists none); make test-gpu runs on a GPU machine"
    exit 1
fi
echo "# $gpus GPU(s) visible"

# ---------------------------------------------------------------------------------------------------
# data and configs

prep_text gpu/nccl || exit 1
for model in tiny-mla tiny-moe; do
    text_run_ini "$tmp/$model.ini" "$model" "$tmp/data" <<EOF
[train]
steps = 10
seq_len = 64
micro_batch = 2
threads = 2
device = cuda

[schedule]
warmup_tokens = 512

[log]
every = 1
EOF
done

# cmp.py NAME A B TOL: the losses of metrics.jsonl B against A within TOL relative ("exact": the losses and
# gradient norms bit for bit)
cat >"$tmp/cmp.py" <<'EOF'
import json, math, sys

name, ref, got, tol = sys.argv[1:5]
try:
    a = [json.loads(l) for l in open(ref)]
    b = [json.loads(l) for l in open(got)]
except Exception as e:
    print(f"FAIL {name}: cannot read the metrics: {e!r}")
    sys.exit()
if len(a) != len(b) or not a:
    print(f"FAIL {name}: {len(b)} steps, want {len(a)}")
    sys.exit()
if tol == "exact":
    bad = [f"step {x['step']} {k}: {y[k]!r}, want {x[k]!r}" for x, y in zip(a, b) for k in ("loss", "grad_norm")
           if x[k] != y[k]]
    print(f"# {name}: {len(a)} steps, {len(bad)} differ")
    print(f"FAIL {name}: not bit-identical: " + "; ".join(bad[:3]) if bad else f"ok {name}")
    sys.exit()
def rel(x, y):
    if x is None or y is None:
        return math.inf
    return abs(x - y) / abs(x) if x else abs(y)
d = [rel(x["loss"], y["loss"]) for x, y in zip(a, b)]
worst = max(range(len(d)), key=lambda i: d[i])
print(f"# {name}: relative loss difference by step " + " ".join(f"{x:.2e}" for x in d))
if d[worst] > float(tol):
    print(f"FAIL {name}: step {worst + 1} loss {b[worst]['loss']!r}, one rank {a[worst]['loss']!r}: "
          f"{d[worst]:.3g} relative (> {tol})")
else:
    print(f"ok {name}")
EOF
compare() { verdicts "$tmp/cmp.py" "$@"; }

# path_line NAME WANT: ok when the launch's stdout has a line containing WANT
path_line() {
    if grep -qF -- "$2" "$tmp/out"; then
        ok "$1"
    else
        fail "$1" "no line '$2' on stdout: $(grep -m1 'collectives' "$tmp/out" || echo 'no collectives line')"
    fi
}

# ---------------------------------------------------------------------------------------------------
# one-rank references, and one rank on NCCL

for model in tiny-mla tiny-moe; do
    run train -c "$tmp/$model.ini" --train.run_dir="$tmp/$model-one"
    if [ "$rc" -ne 0 ] || [ ! -s "$tmp/$model-one/metrics.jsonl" ]; then
        fail "gpu/nccl/${model#tiny-}/one_rank" "exit status $rc: $(tail -c 600 "$tmp/err")"
        exit 1
    fi
done
LOOM_COMM=nccl run train -c "$tmp/tiny-mla.ini" --train.run_dir="$tmp/one-nccl"
if [ "$rc" -ne 0 ] || [ ! -s "$tmp/one-nccl/metrics.jsonl" ]; then
    fail gpu/nccl/one_rank "LOOM_COMM=nccl on one rank: exit status $rc: $(tail -c 600 "$tmp/err")"
else
    path_line gpu/nccl/one_rank/path "loom: collectives on NCCL (LOOM_COMM=nccl)"
    compare gpu/nccl/one_rank "$tmp/tiny-mla-one/metrics.jsonl" "$tmp/one-nccl/metrics.jsonl" exact
fi

# ---------------------------------------------------------------------------------------------------
# two ranks on one GPU: the fallback

CUDA_VISIBLE_DEVICES=$first launch 2 train -c "$tmp/tiny-mla.ini" --parallel.dp=2 --train.run_dir="$tmp/shared"
if timed_out; then
    fail gpu/nccl/shared "no result after $LIMIT s (hang?): $(show)"
elif [ "$rc" -ne 0 ] || [ ! -s "$tmp/shared/metrics.jsonl" ]; then
    fail gpu/nccl/shared "$(show)"
else
    path_line gpu/nccl/shared/path \
        "loom: collectives on MPI through host memory: 2 ranks share 1 GPU on rank 0's node, and NCCL needs a GPU per rank"
    compare gpu/nccl/shared/losses "$tmp/tiny-mla-one/metrics.jsonl" "$tmp/shared/metrics.jsonl" 1e-4
fi
CUDA_VISIBLE_DEVICES=$first LOOM_COMM=nccl expect_launch_error gpu/nccl/shared/forced 2 LOOM_COMM \
    "nccl, but 2 ranks share 1 GPU" -c "$tmp/tiny-mla.ini" --parallel.dp=2

# ---------------------------------------------------------------------------------------------------
# two ranks, a GPU each: NCCL

layouts=("mla dp2 --parallel.dp=2" "mla tp2 --parallel.tp=2" "mla pp2 --parallel.pp=2"
    "mla dp2_zero1 --parallel.dp=2 --parallel.zero=1" "moe dp2_ep2 --parallel.dp=2 --parallel.ep=2")
if [ "$gpus" -lt 2 ]; then
    for l in "${layouts[@]}"; do
        read -r model name _ <<<"$l"
        echo "skip gpu/nccl/$model/$name: $gpus GPU visible; NCCL needs a GPU per rank, and these run two ranks"
    done
else
    for l in "${layouts[@]}"; do
        read -r model name args <<<"$l"
        label="gpu/nccl/$model/$name"
        read -ra extra <<<"$args"
        good=1
        for path in nccl mpi; do
            d="$tmp/$model-$name-$path"
            if [ "$path" = nccl ]; then
                launch 2 train -c "$tmp/tiny-$model.ini" "${extra[@]}" --train.run_dir="$d"
            else
                LOOM_COMM=mpi launch 2 train -c "$tmp/tiny-$model.ini" "${extra[@]}" --train.run_dir="$d"
            fi
            launched "$label/$path" 2 "$d" || { good=0; continue; }
            if [ "$path" = nccl ]; then
                path_line "$label/path" "loom: collectives on NCCL: every rank has a GPU of its own"
            else
                path_line "$label/mpi_path" "loom: collectives on MPI through host memory (LOOM_COMM=mpi)"
            fi
        done
        [ "$good" -eq 1 ] || continue
        tol=1e-4
        [ "$model" = moe ] && tol=5e-3
        compare "$label/one_rank" "$tmp/tiny-$model-one/metrics.jsonl" "$tmp/$model-$name-nccl/metrics.jsonl" "$tol"
        compare "$label/mpi" "$tmp/$model-$name-mpi/metrics.jsonl" "$tmp/$model-$name-nccl/metrics.jsonl" exact
    done
fi

[ "$failures" -eq 0 ]
