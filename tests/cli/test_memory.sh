#!/usr/bin/env bash
# tests/cli/test_memory.sh — metrics.jsonl reports each rank's peak backend memory (`mem_peak_mb`, one entry
# per rank; the GPU's memory on the CUDA backend): present and positive on every rank of a dp2 run, the same
# on both replicas, and larger for a wider model (so it measures something).
# Run from the repository root with ./loom built: bash tests/cli/test_memory.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom memory
LIMIT=120

base=(train -c configs/runs/debug.ini --train.steps=2 --train.threads=1 --parallel.dp=2)
launch 2 "${base[@]}" --train.run_dir="$tmp/narrow"
[ "$rc" -eq 0 ] || fail memory/narrow "$(show)"
launch 2 "${base[@]}" --model.hidden_size=256 --train.run_dir="$tmp/wide"
[ "$rc" -eq 0 ] || fail memory/wide "$(show)"
out=$(python3 - "$tmp/narrow/metrics.jsonl" "$tmp/wide/metrics.jsonl" <<'PY'
import json, sys
narrow, wide = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
bad = []
for name, rows in (("narrow", narrow), ("wide", wide)):
    for r in rows:
        m = r.get("mem_peak_mb")
        if not (isinstance(m, list) and len(m) == 2 and all(x > 0 for x in m) and m[0] == m[1]):
            bad.append(f"{name} step {r['step']}: mem_peak_mb {m!r}, want two equal positive entries")
if not bad and not wide[-1]["mem_peak_mb"][0] > 1.5 * narrow[-1]["mem_peak_mb"][0]:
    bad.append(f"width 256 peaks at {wide[-1]['mem_peak_mb']} MB, width 128 at {narrow[-1]['mem_peak_mb']} MB")
print("; ".join(bad[:3]) or f"# memory: width 128 {narrow[-1]['mem_peak_mb']} MB, width 256 {wide[-1]['mem_peak_mb']} MB")
PY
)
case "$out" in
"# "*) ok memory/peak_reported; echo "$out" ;;
*) fail memory/peak_reported "$out" ;;
esac
[ "$failures" -eq 0 ]
