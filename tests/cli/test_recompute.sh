#!/usr/bin/env bash
# tests/cli/test_recompute.sh — train.recompute = none | selective | full. Recomputation must not change a
# single bit: for the dense MLA model (1 process), the dense MHA model with QK-norm (1 process), and the MoE
# model over dp2 x pp2 x ep2 with the MoE all-to-all overlap on (MoE blocks keep their activations; the
# dense block and every attention are recomputed), 4 steps at sequence length 128: every step's loss and
# gradient norm and the gradient dump after step 1 are identical to the run without recomputation, and the
# peak memory (mem_peak_mb) falls from none to selective (no per-layer attention probabilities) to full
# (one set of dense-block activations for all blocks and micro-batches).
# Run from the repository root with ./loom built: bash tests/cli/test_recompute.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom recompute
LIMIT=120

check() { # check NAME NP ARGS...
    local name=$1 np=$2
    shift 2
    for r in none selective full; do
        launch "$np" train "$@" --train.steps=4 --train.seq_len=128 --train.threads=1 --train.recompute=$r \
            --train.run_dir="$tmp/$name-$r" --log.dump_grads="$tmp/$name-$r-g"
        [ "$rc" -eq 0 ] || { fail "recompute/$name/$r" "$(show)"; return; }
    done
    local out
    out=$(python3 - "$tmp/$name" "$np" <<'PY'
import json, sys
base, np = sys.argv[1], int(sys.argv[2])
rows = {r: [json.loads(l) for l in open(f"{base}-{r}/metrics.jsonl")] for r in ("none", "selective", "full")}
bad = []
for r in ("selective", "full"):
    for x, y in zip(rows["none"], rows[r]):
        for k in ("loss", "grad_norm"):
            if x[k] != y[k]:
                bad.append(f"{r} step {x['step']} {k} {y[k]!r}, without recomputation {x[k]!r}")
    for rank in range(np):
        if open(f"{base}-none-g.rank{rank}.bin", "rb").read() != open(f"{base}-{r}-g.rank{rank}.bin", "rb").read():
            bad.append(f"{r}: rank {rank}'s gradients after step 1 differ")
peak = {r: max(rows[r][-1]["mem_peak_mb"]) for r in rows}
if not peak["none"] > peak["selective"] > peak["full"]:
    bad.append(f"peak memory none {peak['none']} MB, selective {peak['selective']}, full {peak['full']}: want falling")
print("; ".join(bad[:3]) or f"# peak MB: none {peak['none']}, selective {peak['selective']}, full {peak['full']}")
PY
)
    case "$out" in
    "# "*) ok "recompute/$name"; echo "# recompute/$name: $out" ;;
    *) fail "recompute/$name" "$out" ;;
    esac
}
check mla 1 -c configs/runs/debug.ini
check mha 1 -c configs/runs/debug-moe.ini --moe.experts=0
check moe_dp2_pp2_ep2_overlap 4 -c configs/runs/debug-moe.ini --model.num_layers=4 --parallel.dp=2 --parallel.pp=2 \
    --parallel.ep=2 --pipeline.overlap_moe_a2a=true --train.global_batch=8 --train.micro_batch=1
[ "$failures" -eq 0 ]
