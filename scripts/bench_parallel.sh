#!/usr/bin/env bash
# scripts/bench_parallel.sh — part of `make bench`:
#   1. step time of dp2 against dp1 for the same global batch (the CPU benchmark model);
#   2. the measured pipeline bubble against the ideal (p-1)/(m+p-1) for pp 2 and 4, m = 4, 8, 16.
# The bubble is the time stages sit in receives, as a fraction of their forward/backward window,
# averaged over stages and over the steps after the first two.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

summary() { # run folder -> "mean step seconds" "mean bubble fraction"
    python3 - "$1/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][2:]
print(f"{sum(r['time']['step'] for r in rows) / len(rows):.4f} {sum(r['bubble_fraction'] for r in rows) / len(rows):.4f}")
PY
}

cfg=configs/runs/bench-cpu.ini
echo "dp: bench-cpu model, global batch 16 x 256, 8 steps"
for dp in 1 2; do
    scripts/launch.sh -np $dp ./loom train -c $cfg --parallel.dp=$dp --train.global_batch=16 --train.micro_batch=4 \
        --train.steps=8 --log.peak_tflops=1 --train.run_dir="$work/dp$dp" >/dev/null
    read -r step _ <<<"$(summary "$work/dp$dp")"
    echo "  dp$dp step_s=$step"
    eval "dp${dp}_step=$step"
done
python3 -c "print(f'  ratio dp1/dp2 step time = {$dp1_step / $dp2_step:.2f}x')"

echo "pp: bench-cpu model (4 layers), micro-batch 1 x 256, 6 steps"
for pp in 2 4; do
    for m in 4 8 16; do
        scripts/launch.sh -np $pp ./loom train -c $cfg --parallel.pp=$pp --train.global_batch=$m --train.micro_batch=1 \
            --train.steps=6 --log.peak_tflops=1 --train.run_dir="$work/pp${pp}m$m" >/dev/null
        read -r step bubble <<<"$(summary "$work/pp${pp}m$m")"
        python3 -c "
ideal = ($pp - 1) / ($m + $pp - 1)
print(f'  pp{$pp} m={$m:<3} step_s={$step} bubble={100 * $bubble:5.1f}%  ideal={100 * ideal:5.1f}%  diff={100 * ($bubble - ideal):+5.1f} points')"
    done
done
