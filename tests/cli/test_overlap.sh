#!/usr/bin/env bash
# tests/cli/test_overlap.sh — pipeline.overlap_moe_a2a: the 1F1B steady phase with one micro-batch's
# forward and another's backward taking turns must give bit-identical numbers to the plain schedule
# (losses, gradient norms, expert loads and router biases of every step), on an MoE model with expert
# and pipeline parallelism, and report its exposed all-to-all time.
set -u
source "$(dirname "$0")/lib.sh"
require_loom overlap

layout=(--parallel.dp=2 --parallel.pp=2 --parallel.ep=2)
common=(train -c configs/runs/debug-moe.ini --model.num_layers=4 --train.steps=10 --train.global_batch=8
        --train.micro_batch=1 --train.threads=1 --log.peak_tflops=0.1)
for mode in off on; do
    flag=false
    [ "$mode" = on ] && flag=true
    if timeout 120 scripts/launch.sh -np 4 "$LOOM" "${common[@]}" "${layout[@]}" \
        --pipeline.overlap_moe_a2a=$flag --train.run_dir="$tmp/$mode" >"$tmp/$mode.out" 2>&1; then
        ok "overlap/run_$mode"
    else
        fail "overlap/run_$mode" "exit status $?: $(tail -3 "$tmp/$mode.out")"
    fi
done

# a different seed must differ, so the comparison can fail
timeout 120 scripts/launch.sh -np 4 "$LOOM" "${common[@]}" "${layout[@]}" --train.seed=43 \
    --pipeline.overlap_moe_a2a=true --train.run_dir="$tmp/seed43" >/dev/null 2>&1

python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
def rows(name):
    try:
        return [json.loads(l) for l in open(f"{tmp}/{name}/metrics.jsonl")]
    except OSError:
        return []
keys = ("loss", "grad_norm", "balance_loss", "expert_loads", "router_bias")
def same(a, b):
    if len(a) != len(b) or not a:
        return f"{len(a)} and {len(b)} steps"
    for x, y in zip(a, b):
        for k in keys:
            if x.get(k) != y.get(k):
                return f"step {x['step']}: {k} {x.get(k)} vs {y.get(k)}"
    return None
off, on, other = rows("off"), rows("on"), rows("seed43")
why = same(off, on)
print(f"ok overlap/bit_identical" if why is None else f"FAIL overlap/bit_identical: {why}")
why = same(off, other)
print("ok overlap/control_seed_differs" if why is not None else "FAIL overlap/control_seed_differs: a run with another seed compared equal")
exposed = [r["time"].get("a2a_exposed") for r in on]
print("ok overlap/a2a_reported" if on and all(isinstance(e, (int, float)) and e >= 0 for e in exposed)
      else f"FAIL overlap/a2a_reported: {exposed}")
PY
[ "$failures" -eq 0 ]
