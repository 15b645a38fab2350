#!/usr/bin/env bash
# scripts/bench_cpu.sh — `make bench`: CPU training throughput of loom against the JAX reference
# (scripts/bench_reference.py), same model shape, same machine, same run. Prints tokens/s of each,
# their ratio, and peak memory. Usage: scripts/bench_cpu.sh [THREADS] (default: every core).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
steps=20
warmup=3

python3 -c "import jax" 2>/dev/null || pip install -q jax numpy

run_dir=$(mktemp -d)/run
trap 'rm -rf "$(dirname "$run_dir")"' EXIT

# loom: mean tokens/s over the steps after warmup, peak RSS from /usr/bin/time
/usr/bin/time -f "peak_rss_kb=%M" -o "$run_dir.time" \
    env OMP_NUM_THREADS="$threads" ./loom train -c configs/runs/bench-cpu.ini --train.threads="$threads" \
    --train.steps=$((steps + warmup)) --train.run_dir="$run_dir" --log.peak_tflops=1 >/dev/null
loom_tps=$(python3 - "$run_dir/metrics.jsonl" "$warmup" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
per_step = rows[0]["tokens"] / rows[0]["step"]
timed = rows[int(sys.argv[2]):]
print(per_step * len(timed) / sum(r["time"]["step"] for r in timed))
PY
)
loom_rss=$(sed -n 's/peak_rss_kb=//p' "$run_dir.time")

ref=$(python3 scripts/bench_reference.py --attention mla --vocab 512 --hidden 256 --layers 4 --heads 4 \
      --q-lora 128 --kv-lora 64 --qk-nope 32 --qk-rope 16 --v-head-dim 32 --intermediate 768 \
      --seq 256 --batch 8 --steps "$steps" --warmup-steps "$warmup" --threads "$threads" | grep '^reference')
ref_tps=$(sed -n 's/.*tokens_per_s=\([0-9.]*\).*/\1/p' <<<"$ref")
ref_rss=$(sed -n 's/.*peak_rss_mb=\([0-9.]*\).*/\1/p' <<<"$ref")

python3 - "$loom_tps" "$ref_tps" "$loom_rss" "$ref_rss" "$threads" <<'PY'
import sys
loom, ref, loom_kb, ref_mb, threads = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
print(f"bench-cpu (mla, width 256, 4 layers, seq 256, batch 8, fp32, {threads} threads)")
print(f"  loom       {loom:10.0f} tokens/s   peak RSS {loom_kb / 1024:7.1f} MB")
print(f"  reference  {ref:10.0f} tokens/s   peak RSS {ref_mb:7.1f} MB   (JAX, jit, CPU)")
print(f"  ratio loom/reference: {loom / ref:.2f}x")
PY
