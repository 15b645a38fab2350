#!/usr/bin/env bash
# tests/cli/test_plan.sh — `loom plan`: its memory per GPU against the peak the CPU backend measures in a real run
# (metrics.jsonl's mem_peak_mb, every rank against its pipeline stage's figure, within 10%) over layouts that
# move each part: one process, dp2 ZeRO-1 in bf16 (masters, sharded moments, the reduce-scatter buffer), tp2,
# pp2 under 1F1B (two activation slots on stage 0), recompute selective and full, the MoE model under
# dp2 x ep2 and dp2 x pp2 x ep2; a control (the plan of a wider model against the narrow run) must miss. Then the
# estimate's own arithmetic: the bubble (p-1)/(m+p-1), tokens/s = tokens per step / step time, MFU and GPU-hours
# from them; the shipped examples (dots.llm1 on H800s, Youtu-LLM 2B on H100s) run; bad command lines exit 2.
# Run from the repository root with ./loom built: bash tests/cli/test_plan.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom plan
LIMIT=120

# compare NAME CONFIG NP ARGS...: train 2 steps on NP ranks, plan the same layout on one node of NP "GPUs"
compare() {
    local name=$1 cfg=$2 np=$3
    shift 3
    local dir="$tmp/$name"
    launch "$np" train -c "$cfg" --train.steps=2 --train.threads=1 --train.run_dir="$dir" "$@"
    launched "plan/$name" "$np" "$dir" || return
    if ! "$LOOM" plan -c "$cfg" --nodes 1 --gpus-per-node "$np" --gpu cpu --json "$@" >"$dir/plan.json" 2>"$tmp/err"; then
        fail "plan/$name/plan" "$(cat "$tmp/err")"
        return
    fi
    verdicts /dev/stdin "plan/$name/memory" "$dir/metrics.jsonl" "$dir/plan.json" "${PLAN_OF:-}" <<'PY'
import json, sys
name, metrics, plan, other = sys.argv[1:5]
measured = json.loads(open(metrics).read().splitlines()[-1])["mem_peak_mb"]
p = json.load(open(other or plan))
block = p["dp"] * p["tp"]
worst = 0
for r, mb in enumerate(measured):
    want = p["stages"][r // block]["total"] / 1e6
    err = abs(mb - want) / mb
    worst = max(worst, err)
    if err > 0.10:
        print(f"FAIL {name}: rank {r} measured {mb} MB, plan {want:.2f} MB ({100 * err:.1f}% off)")
        sys.exit()
print(f"ok {name} ({len(measured)} ranks, worst {100 * worst:.2f}% off; measured {measured} MB)")
PY
}

compare one configs/runs/debug.ini 1
compare dp2_zero_bf16 configs/runs/debug.ini 2 --parallel.dp=2 --parallel.zero=1 --precision.compute=bf16
compare tp2 configs/runs/debug.ini 2 --parallel.tp=2
compare pp2 configs/runs/debug.ini 2 --parallel.pp=2 --train.global_batch=8
compare selective configs/runs/debug.ini 1 --train.recompute=selective
compare full configs/runs/debug.ini 1 --train.recompute=full
compare moe_dp2_ep2 configs/runs/debug-moe.ini 2 --parallel.dp=2 --parallel.ep=2
compare moe_dp2_pp2_ep2 configs/runs/debug-moe.ini 4 --parallel.dp=2 --parallel.pp=2 --parallel.ep=2 \
    --parallel.zero=1
# control: a plan for hidden 256 held against the hidden-128 run must miss by more than 10%
"$LOOM" plan -c configs/runs/debug.ini --nodes 1 --gpus-per-node 1 --gpu cpu --json --model.hidden_size=256 \
    >"$tmp/wide.json" 2>/dev/null
out=$(PLAN_OF="$tmp/wide.json" compare control configs/runs/debug.ini 1)
case "$out" in
*"FAIL plan/control/memory: rank 0 measured"*) ok plan/control_misses ;;
*) fail plan/control_misses "the wider model's plan passed against the narrow run: $out" ;;
esac

# the estimate's arithmetic, from the JSON of a pipelined MoE layout
"$LOOM" plan -c configs/runs/debug-moe.ini --nodes 2 --gpus-per-node 4 --gpu h100 --json --parallel.dp=2 \
    --parallel.pp=4 --parallel.ep=2 --train.global_batch=32 --model.num_layers=5 >"$tmp/est.json" 2>"$tmp/err" ||
    fail plan/estimate "$(cat "$tmp/err")"
verdicts /dev/stdin plan/estimate "$tmp/est.json" <<'PY'
import json, sys
name, path = sys.argv[1:3]
p = json.load(open(path))
m, pp = p["micro_batches"], p["pp"]
tokens = 32 * p["seq_len"]
close = lambda a, b: abs(a - b) <= 1e-5 * abs(b)  # the JSON holds 6 digits
checks = [
    ("micro-batches", m == 32 // 2 // 2, m),
    ("bubble", close(p["bubble"], (pp - 1) / (m + pp - 1)), p["bubble"]),
    ("tokens/s", close(p["tokens_per_s"] * p["step_s"], tokens), p["tokens_per_s"]),
    ("step >= pipeline", p["step_s"] >= (m + pp - 1) * max(s["micro_batch_s"] for s in p["stages"]), p["step_s"]),
    ("gpu-hours", close(p["gpu_hours_per_trillion_tokens"], 8 * 1e12 / p["tokens_per_s"] / 3600),
     p["gpu_hours_per_trillion_tokens"]),
    ("mfu", 0 < p["mfu"] < 1, p["mfu"]),
    ("stage 0 holds 4 slots", p["stages"][0]["slots"] == 4 and p["stages"][3]["slots"] == 1, p["stages"][0]["slots"]),
]
bad = [f"{what}: {got}" for what, good, got in checks if not good]
print(f"FAIL {name}: " + "; ".join(bad) if bad else f"ok {name}")
PY

# the shipped examples
run plan -c configs/runs/plan-dots-h800.ini --nodes 128 --gpus-per-node 8 --gpu h800
if [ "$rc" -eq 0 ] && grep -q "142.774 B parameters, 14.017 B active" "$tmp/out" && grep -q "GPU-hours per trillion" "$tmp/out"; then
    ok plan/example_dots
else
    fail plan/example_dots "exit $rc: $(head -c 600 "$tmp/out") $(cat "$tmp/err")"
fi
run plan -c configs/runs/plan-youtu-h100.ini --nodes 16 --gpus-per-node 8 --gpu h100
if [ "$rc" -eq 0 ] && grep -q "1.962 B parameters" "$tmp/out" && grep -q ": fits" "$tmp/out"; then
    ok plan/example_youtu
else
    fail plan/example_youtu "exit $rc: $(head -c 600 "$tmp/out") $(cat "$tmp/err")"
fi

# bad command lines: exit 2, one line naming the option or key
bad() {
    local name=$1 must=$2
    shift 2
    run plan "$@"
    if [ "$rc" -eq 2 ] && grep -q "$must" "$tmp/err" && [ ! -s "$tmp/out" ]; then
        ok "plan/bad/$name"
    else
        fail "plan/bad/$name" "exit $rc, want 2 and '$must': $(cat "$tmp/err")"
    fi
}
bad no_nodes "\-\-nodes" -c configs/runs/debug.ini --gpus-per-node 8
bad no_gpus "\-\-gpus-per-node" -c configs/runs/debug.ini --nodes 1
bad zero_nodes "\-\-nodes.*positive integer" -c configs/runs/debug.ini --nodes 0 --gpus-per-node 8
bad unknown_gpu "unknown GPU 'v100'" -c configs/runs/debug.ini --nodes 1 --gpus-per-node 1 --gpu v100
bad world "world size 8" -c configs/runs/debug.ini --nodes 1 --gpus-per-node 8
bad tp_spans_nodes "parallel.tp" -c configs/runs/debug.ini --nodes 2 --gpus-per-node 1 --parallel.tp=2
bad bad_rate "\-\-gemm-tflops" -c configs/runs/debug.ini --nodes 1 --gpus-per-node 1 --gemm-tflops -3
bad no_config "no config file" --nodes 1 --gpus-per-node 1
[ "$failures" -eq 0 ]
