#!/usr/bin/env bash
# scripts/demo.sh — `make demo`: public-domain English text (the King James Bible, from Debian's
# bible-kjv package) -> byte-level shards -> the tiny MLA model trained on the CPU for a few hundred
# steps. Prints the loss falling from about ln(vocab) and where the run folder is.
set -euo pipefail
cd "$(dirname "$0")/.."

text_dir=runs/demo-text
data_dir=runs/demo-data
run_dir=runs/demo

if ! ls "$data_dir"/kjv-*.tok >/dev/null 2>&1; then
    mkdir -p "$text_dir"
    # one verse per line; drop the "Ge1:1 " reference at the start of each
    bible -f Gen1:1-Rev22:21 | sed 's/^[^ ]* //' > "$text_dir/kjv.txt"
    ./loom data prep --tokenizer bytes --source kjv --in "$text_dir/kjv.txt" --out "$data_dir"
fi

rm -rf "$run_dir"
./loom train -c configs/runs/demo.ini --train.run_dir="$run_dir" "$@"

python3 - "$run_dir/metrics.jsonl" <<'PY' 2>/dev/null || awk -F'"loss": ' 'NR==1{split($2,a,",");f=a[1]} {split($2,b,",");l=b[1]} END{printf "demo: loss %.3f -> %.3f\n", f, l}' "$run_dir/metrics.jsonl"
import json, math, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-10:]) / min(10, len(rows))
print(f"demo: loss {first:.3f} at step 1 (ln V = ln 320 = {math.log(320):.3f}) -> {last:.3f} "
      f"(mean of the last 10 steps) after {rows[-1]['step']} steps, {rows[-1]['tokens']:,} tokens")
PY
echo "demo: run folder $run_dir (config.ini, metrics.jsonl)"
