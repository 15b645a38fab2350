#!/usr/bin/env bash
# scripts/bench_loader.sh — loader tokens/s against raw zstd decompression of the same shards, and
# against what a training step of the CPU benchmark model consumes (part of `make bench`).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

bible -f Gen1:1-Rev22:21 | sed 's/^[^ ]* //' > "$work/kjv.txt"
./loom data prep --tokenizer bytes --source kjv --in "$work/kjv.txt" --out "$work/shards" --shard-tokens 1M 2>/dev/null

seq=256
batch=8
out=$(build/bench/bench_loader "$work/shards" $seq $batch 2000)
echo "$out"
loader=$(sed -n 's/^loader tokens_per_s=\([0-9]*\).*/\1/p' <<<"$out")

# a training step of the benchmark model on the same machine, same run
./loom train -c configs/runs/bench-cpu.ini --train.steps=6 --train.run_dir="$work/run" --log.peak_tflops=1 >/dev/null
step=$(python3 - "$work/run/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][2:]
print(int(sum(r["tok_per_s"] for r in rows) / len(rows)))
PY
)
echo "train tokens_per_s=$step (bench-cpu model, seq $seq, batch $batch)"
python3 -c "print(f'ratio loader/train={$loader / $step:.0f}x')"
