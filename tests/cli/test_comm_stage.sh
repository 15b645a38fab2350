#!/usr/bin/env bash
# tests/cli/test_comm_stage.sh — the communication fallback for ranks that share one GPU (NCCL refuses
# that): every collective and pipeline transfer copies its backend buffers to host memory, runs MPI there
# and copies the results back at the wait (parallel/comm.c, loom_comm_stage_through_host). The test hook
# LOOM_COMM_STAGE=1 turns it on for the CPU backend, so its paths run here: the tiny MoE model over
# dp2 x pp2 x ep2, tp2 x ep2, dp2 x ep2 with ZeRO-1 and dp2 x tp2 with ZeRO-1 (all-reduces, reduce-scatters,
# all-gathers, all-to-alls, tp max-reduces, pipeline sends and receives) must give bit-identical losses,
# gradient norms, router biases and expert loads with staging on and off, and the staged run must report
# that it staged buffers (so the comparison cannot pass with the fallback silently off).
# Run from the repository root with ./loom built: bash tests/cli/test_comm_stage.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom comm_stage
LIMIT=120

base=(train -c configs/runs/debug-moe.ini --train.steps=6 --train.global_batch=8 --train.micro_batch=1
    --train.threads=1)
for layout in "2 1 2 2 0" "1 2 1 2 0" "2 1 1 2 1" "2 2 1 1 1"; do
    read -r dp tp pp ep zero <<<"$layout"
    name="dp${dp}_tp${tp}_pp${pp}_ep${ep}_zero${zero}"
    args=(--parallel.dp="$dp" --parallel.tp="$tp" --parallel.pp="$pp" --parallel.ep="$ep" --parallel.zero="$zero")
    np=$((dp * tp * pp))
    launch "$np" "${base[@]}" "${args[@]}" --train.run_dir="$tmp/$name-plain"
    [ "$rc" -eq 0 ] || { fail "comm_stage/$name" "plain run: $(show)"; continue; }
    LOOM_COMM_STAGE=1 launch "$np" "${base[@]}" "${args[@]}" --train.run_dir="$tmp/$name-staged"
    [ "$rc" -eq 0 ] || { fail "comm_stage/$name" "staged run: $(show)"; continue; }
    staged=$(grep -o '[0-9]* buffers staged through host memory' "$tmp/out" | cut -d' ' -f1)
    out=$(python3 - "$tmp/$name-plain/metrics.jsonl" "$tmp/$name-staged/metrics.jsonl" "${staged:-0}" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
keys = ("loss", "grad_norm", "router_bias", "expert_loads")
bad = [f"step {x['step']} {k}" for x, y in zip(a, b) for k in keys if x.get(k) != y.get(k)]
if len(a) != 6 or len(b) != 6:
    bad.insert(0, f"{len(a)} and {len(b)} steps")
if int(sys.argv[3]) <= 0:
    bad.append("the staged run staged no buffer")
print("; ".join(bad[:4]))
PY
)
    if [ -z "$out" ]; then
        ok "comm_stage/$name"
        echo "# comm_stage/$name: $staged buffers staged, bit-identical"
    else
        fail "comm_stage/$name" "$out"
    fi
done
[ "$failures" -eq 0 ]
