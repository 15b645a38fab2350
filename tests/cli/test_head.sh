#!/usr/bin/env bash
# tests/cli/test_head.sh — the head in chunks of rows: the classifier takes the final norm's rows a chunk at a
# time (logits of one chunk in a buffer the slots share, the loss, and with grad the head's weight gradient and
# d(lnf) at once), so no micro-batch keeps [tokens, vocabulary] logits. Big models chunk by themselves; the test
# hook LOOM_TEST_HEAD_ROWS=R makes the tiny models take R rows at a time (R not dividing the rows, so the last
# chunk is short). Against the same run taking all rows at once: every step's loss and gradient norm
# (tests/cli/gradcmp.py's bounds, the ones dp meets against one process) on one process, tp2 (the
# vocabulary-parallel loss per chunk) and dp2 x pp2 under 1F1B (chunks while other micro-batches are in
# flight); MHA in bf16 within bf16's layout bound 2e-3 (each chunk's weight-gradient partial is rounded apart);
# every gradient after step 1 of one process and of tp2 in chunks against one process taken whole; the
# control, another seed, fails the metric comparison.
# Run from the repository root with ./loom built: bash tests/cli/test_head.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom head
LIMIT=120
export PYTHONPATH="$(dirname "$0")${PYTHONPATH:+:$PYTHONPATH}"

# pair NAME NP ARGS...: the run whole and in chunks of 7 rows, compared
pair() {
    local name=$1 np=$2
    shift 2
    launch "$np" train -c configs/runs/debug.ini --train.threads=1 --train.run_dir="$tmp/$name-whole" \
        --log.dump_grads="$tmp/$name-whole/g" "$@"
    launched "head/$name/whole" "$np" "$tmp/$name-whole" || return
    LOOM_TEST_HEAD_ROWS=7 launch "$np" train -c configs/runs/debug.ini --train.threads=1 \
        --train.run_dir="$tmp/$name-chunks" --log.dump_grads="$tmp/$name-chunks/g" "$@"
    launched "head/$name/chunks" "$np" "$tmp/$name-chunks" || return
    if [ "${BOUND:-}" ]; then
        # in bf16 each chunk's weight-gradient partial is rounded to bf16 on its own (as on a GPU), not the
        # micro-batch's whole: a precision-level difference, held to the bound bf16 layouts meet in
        # tests/cli/test_precision.sh
        verdicts /dev/stdin "head/$name/metrics" "$tmp/$name-whole/metrics.jsonl" "$tmp/$name-chunks/metrics.jsonl" \
            "$BOUND" <<'PY'
import json, sys
name, a, b, bound = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
la = [json.loads(l)["loss"] for l in open(a)]
lb = [json.loads(l)["loss"] for l in open(b)]
worst = max(abs(x - y) / abs(x) for x, y in zip(la, lb))
print(f"ok {name} (worst relative loss difference {worst:.2e} <= {bound})" if len(la) == len(lb) == 8 and
      worst <= bound else f"FAIL {name}: worst relative loss difference {worst:.2e} > {bound} ({len(la)}, {len(lb)} steps)")
PY
    else
        verdicts tests/cli/gradcmp.py metrics "head/$name/metrics" "$tmp/$name-whole/metrics.jsonl" \
            "$tmp/$name-chunks/metrics.jsonl" 8
    fi
}

pair one 1
BOUND=2e-3 pair mha_bf16 1 --model.attention=mha --model.num_kv_heads=2 --precision.compute=bf16
pair tp2 2 --parallel.tp=2
pair dp2_pp2 4 --parallel.dp=2 --parallel.pp=2 --train.global_batch=8

# every gradient after step 1 against the one-process run taken whole (tp2's with gradcmp's tp bound)
verdicts tests/cli/gradcmp.py grads head/one/grads "$tmp/one-whole/g" "$tmp/one-chunks/g" 1 1 1 0
verdicts tests/cli/gradcmp.py grads head/tp2/grads "$tmp/one-whole/g" "$tmp/tp2-chunks/g" 2 1 2 0

# control: another seed against the whole run must fail the metric comparison
LOOM_TEST_HEAD_ROWS=7 launch 1 train -c configs/runs/debug.ini --train.threads=1 --train.run_dir="$tmp/control" \
    --train.seed=43
launched head/control 1 "$tmp/control" &&
    out=$(python3 tests/cli/gradcmp.py metrics head/control "$tmp/one-whole/metrics.jsonl" "$tmp/control/metrics.jsonl" 8)
case "${out:-}" in
*FAIL*) ok head/control_fails ;;
*) fail head/control_fails "another seed passed the comparison: ${out:-no output}" ;;
esac
[ "$failures" -eq 0 ]
