#!/usr/bin/env bash
# scripts/bench_precision.sh — the cost of the CPU mixed-precision emulation: step time of the tiny dense (MLA) and
# tiny MoE models, widened, in fp32, bf16 and fp16 (--precision.compute) on 1 process with 2 threads. Per run the
# median `time.step` of metrics.jsonl without the first 3 steps; REPEATS runs of each (default 3), interleaved
# (repeat-major, so a slow spell of the machine hits every precision alike); reported as the median over the
# repeats and its ratio to fp32. bf16/fp16 on the CPU compute in fp32 and round every tensor a GPU would store in
# the dtype (model/ops_cpu_mixed.c), so the ratios are the price of that rounding, not a speed-up.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${REPEATS:-3}
STEPS=${STEPS:-15}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model=(--model.hidden_size=256 --train.seq_len=128 --train.global_batch=8 --train.micro_batch=2)
echo "precision: tiny dense (MLA) and tiny MoE widened to width 256, 8 x 128 tokens a step (4 micro-batches of 2)," \
     "1 process, 2 threads, $STEPS steps a run (first 3 skipped), $REPEATS repeats interleaved"
for rep in $(seq 1 "$REPEATS"); do
    for cfg in debug debug-moe; do
        for prec in fp32 bf16 fp16; do
            ./loom train -c configs/runs/$cfg.ini "${model[@]}" --train.steps="$STEPS" --train.threads=2 \
                --precision.compute=$prec --train.run_dir="$work/$cfg-$prec-$rep" >/dev/null
        done
    done
done
python3 - "$work" "$REPEATS" <<'PY'
import json, os, statistics, sys
work, reps = sys.argv[1], int(sys.argv[2])
med = lambda xs: statistics.median(xs)
for cfg, name in (("debug", "dense"), ("debug-moe", "moe")):
    res = {}
    for prec in ("fp32", "bf16", "fp16"):
        step, comp = [], []
        for rep in range(1, reps + 1):
            rows = [json.loads(l) for l in open(os.path.join(work, f"{cfg}-{prec}-{rep}", "metrics.jsonl"))][3:]
            step.append(med(r["time"]["step"] for r in rows))
            comp.append(med(r["time"]["compute"] for r in rows))
        res[prec] = (med(step), min(step), max(step), med(comp))
    for prec, (s, lo, hi, c) in res.items():
        line = f"  {name:<5} {prec} step_s={s:.4f} (repeats {lo:.4f} - {hi:.4f}) compute_s={c:.4f}"
        if prec != "fp32":
            line += f" {prec}/fp32={s / res['fp32'][0]:.2f}x compute {c / res['fp32'][3]:.2f}x"
        print(line)
PY
