#!/usr/bin/env bash
# scripts/demo.sh — `make demo`: the data pipeline and a curriculum run, end to end on the CPU.
#   1. three demo sources from material on this machine (scripts/make_corpora.py): commonsense
#      (King James Bible), stem (checked math solutions, real source code), agentic (verified tool-use
#      trajectories, role-tagged);
#   2. a byte-level BPE tokenizer trained on them (Youtu-LLM pre-tokenization), as tokenizer.json;
#   3. train and held-out shards per source (trajectories carry a loss mask);
#   4. the tiny MLA model trained through the commonsense -> STEM -> agentic curriculum on 4 ranks
#      (data parallel 2 x pipeline 2, 1F1B), with held-out loss per source; the loss falls well below
#      its start, ln(vocab);
#   5. a plot of per-source loss against tokens;
#   6. the tiny mixture-of-experts model on the same data with its experts on 2 expert-parallel ranks,
#      and a plot of each expert's load per block over the run.
set -euo pipefail
cd "$(dirname "$0")/.."

corpora=runs/demo-corpora
tokenizer=runs/demo-tokenizer.json
data=runs/demo-data
run_dir=runs/demo

if [ ! -f "$corpora/MANIFEST.txt" ]; then
    python3 scripts/make_corpora.py --out "$corpora"
fi
if [ ! -f "$tokenizer" ]; then
    ./loom data tokenizer-train --in "$corpora"/*/train.jsonl --vocab-size 2048 --out "$tokenizer"
fi
for source in commonsense stem agentic; do
    for split in train heldout; do
        if ! ls "$data/$source/$split"/*.tok >/dev/null 2>&1; then
            ./loom data prep --tokenizer "$tokenizer" --source "$source" --in "$corpora/$source/$split.jsonl" \
                --out "$data/$source/$split"
        fi
    done
done

rm -rf "$run_dir"
scripts/launch.sh -np 4 ./loom train -c configs/runs/demo.ini --parallel.dp=2 --parallel.pp=2 \
    --train.micro_batch=2 --train.run_dir="$run_dir" "$@"

python3 - "$run_dir/metrics.jsonl" <<'PY'
import json, math, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-10:]) / min(10, len(rows))
print(f"demo: loss {first:.3f} at step 1 (ln V = ln 2048 = {math.log(2048):.3f}) -> {last:.3f} "
      f"(mean of the last 10 steps) after {rows[-1]['step']} steps, {rows[-1]['tokens']:,} tokens")
evals = [r for r in rows if "eval" in r]
if evals:
    a, b = evals[0], evals[-1]
    print("demo: held-out loss per source, step {} -> step {}: {}".format(a["step"], b["step"], ", ".join(
        f"{k} {a['eval'][k]:.3f} -> {b['eval'][k]:.3f}" for k in b["eval"] if k in a["eval"])))
PY
scripts/plot_losses "$run_dir" --out "$run_dir/losses.png" >/dev/null
moe_dir=runs/demo-moe
rm -rf "$moe_dir"
scripts/launch.sh -np 2 ./loom train -c configs/runs/demo-moe.ini --parallel.dp=2 --parallel.ep=2 \
    --train.micro_batch=4 --train.run_dir="$moe_dir"
scripts/plot_experts "$moe_dir" --out "$moe_dir/experts.png" >/dev/null

echo "demo: run folder $run_dir (config.ini, metrics.jsonl)"
echo "demo: plot of per-source loss against tokens: $run_dir/losses.png"
echo "demo: mixture-of-experts run (ep 2) in $moe_dir; expert load per block: $moe_dir/experts.png"
