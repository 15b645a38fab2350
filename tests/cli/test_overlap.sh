#!/usr/bin/env bash
# tests/cli/test_overlap.sh — pipeline.overlap_moe_a2a: the 1F1B steady phase with one micro-batch's
# forward and another's backward taking turns must give bit-identical numbers to the plain schedule
# (losses, gradient norms, expert loads and router biases of every step), on an MoE model with expert
# and pipeline parallelism (with dp2, and with tp2), and report its exposed all-to-all time.
set -u
source "$(dirname "$0")/lib.sh"
require_loom overlap

# name and flags of each layout: expert x data x pipeline, and expert x tensor x pipeline (where each tp rank
# dispatches its own slice of the tokens and the routed outputs are summed over tp while exchanges are in flight)
layouts=("dp2_pp2_ep2:--parallel.dp=2 --parallel.pp=2 --parallel.ep=2"
         "tp2_pp2_ep2:--parallel.tp=2 --parallel.pp=2 --parallel.ep=2")
common=(train -c configs/runs/debug-moe.ini --model.num_layers=4 --train.steps=10 --train.global_batch=8
        --train.micro_batch=1 --train.threads=1 --log.peak_tflops=0.1)
for entry in "${layouts[@]}"; do
    name=${entry%%:*}
    read -ra layout <<<"${entry#*:}"
    for mode in off on; do
        flag=false
        [ "$mode" = on ] && flag=true
        if timeout 120 scripts/launch.sh -np 4 "$LOOM" "${common[@]}" "${layout[@]}" \
            --pipeline.overlap_moe_a2a=$flag --train.run_dir="$tmp/$name-$mode" >"$tmp/$name-$mode.out" 2>&1; then
            ok "overlap/$name/run_$mode"
        else
            fail "overlap/$name/run_$mode" "exit status $?: $(tail -3 "$tmp/$name-$mode.out")"
        fi
    done
done

# a different seed must differ, so the comparison can fail
timeout 120 scripts/launch.sh -np 4 "$LOOM" "${common[@]}" --parallel.dp=2 --parallel.pp=2 --parallel.ep=2 \
    --train.seed=43 --pipeline.overlap_moe_a2a=true --train.run_dir="$tmp/seed43" >/dev/null 2>&1

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
other = rows("seed43")
for name in ("dp2_pp2_ep2", "tp2_pp2_ep2"):
    off, on = rows(f"{name}-off"), rows(f"{name}-on")
    why = same(off, on)
    print(f"ok overlap/{name}/bit_identical" if why is None else f"FAIL overlap/{name}/bit_identical: {why}")
    exposed = [r["time"].get("a2a_exposed") for r in on]
    print(f"ok overlap/{name}/a2a_reported" if on and all(isinstance(e, (int, float)) and e >= 0 for e in exposed)
          else f"FAIL overlap/{name}/a2a_reported: {exposed}")
why = same(rows("dp2_pp2_ep2-off"), other)
print("ok overlap/control_seed_differs" if why is not None else "FAIL overlap/control_seed_differs: a run with another seed compared equal")
PY
[ "$failures" -eq 0 ]
