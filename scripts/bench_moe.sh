#!/usr/bin/env bash
# scripts/bench_moe.sh — part of `make bench`: a small MoE model on 4 ranks (dp2 x pp2, ep2), 1F1B with
# pipeline.overlap_moe_a2a off and on: step time and the fraction of it spent waiting for all-to-alls.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model=(--model.num_layers=4 --model.hidden_size=256 --model.num_heads=4 --model.num_kv_heads=4
       --model.head_dim=64 --moe.experts=8 --moe.intermediate=256 --train.seq_len=128)
echo "moe: tiny-moe widened (width 256, 4 layers, 8 experts top-2), dp2 x pp2 x ep2 on 4 ranks, 16 x 128 tokens, m = 8"
for mode in false true; do
    scripts/launch.sh -np 4 ./loom train -c configs/runs/debug-moe.ini "${model[@]}" --parallel.dp=2 --parallel.pp=2 \
        --parallel.ep=2 --train.global_batch=16 --train.micro_batch=1 --train.steps=10 --log.peak_tflops=1 \
        --pipeline.overlap_moe_a2a=$mode --train.run_dir="$work/$mode" >/dev/null
    python3 - "$work/$mode/metrics.jsonl" "$mode" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][2:]
step = sum(r["time"]["step"] for r in rows) / len(rows)
a2a = sum(r["time"]["a2a_exposed"] for r in rows) / len(rows)
hidden = sum(r["time"]["a2a_hidden"] for r in rows) / len(rows)
print(f"  overlap={sys.argv[2]:<5} step_s={step:.4f} a2a_exposed_s={a2a:.4f} a2a_hidden_s={hidden:.4f} "
      f"exposed_fraction={100 * a2a / step:.1f}%")
PY
done
