#!/usr/bin/env bash
# tests/cli/test_parallel.sh — multi-rank `loom train` through scripts/launch.sh (every launch under `timeout`).
#
# Parity (DESIGN 5: any layout gives the single-process result up to floating-point reordering): the tiny
# MLA model (debug.ini, tied head) and an MHA/GQA variant with QK-norm (untied head), 4 layers so that pp4
# has a layer per stage, global batch 8, 10 steps. Every layout's 10 losses match the single-process run to
# 1e-5 relative, and so does step 1's gradient norm (later norms: 1e-4, the trajectories drift apart by
# rounding). Every layout's gradient dump after step 1 (--log.dump_grads: PREFIX.rankR.bin with the spans [lo, hi)
# of the rank's flat buffer that is reduced, PREFIX.rankR.map placing each tensor's slice of rows and columns
# in it) matches the single-process gradients element by element, every slice of every rank against the same
# rows and columns of the whole tensor, within [lo, hi) under ZeRO-1 (1e-5 relative + 1e-6 max|g| of that
# tensor; 4e-6 with tp > 1, which changes the forward arithmetic: see GRAD_ATOL_FRAC_TP in tests/cli/gradcmp.py,
# which does these comparisons); over all ranks every element of every single-process tensor is compared at
# least once (tp-replicated tensors, a tied embedding on the first and last stage, and dp replicas are compared
# every time they occur); the ranks with the same map
# (one stage and tp rank) are dp of them, and under ZeRO-1 their shards tile [0, total) exactly. Controls: a
# run with another seed, a loss nudged past its tolerance, and, in the single-process gradients cut like a
# dp2 x tp2 x pp2 ZeRO-1 layout, elements nudged past their tolerance, a slice one row off, a tensor missing
# from a map, and broken shard tilings must all be caught by the same comparisons. Layouts with tp or pp > 1
# print `skip` while `loom train` answers them with exit status 2 and "not available in this build".
#
# Bad layouts (world size, tp not dividing heads / kv heads / vocab / FFN width, pp > layers, batch
# splits) and an existing run folder: exit status 2 from the launch, exit status 2 from every rank
# (counted by a wrapper, with Open MPI told not to kill the other ranks when the first one exits), no
# hang, a `loom: error: KEY` line, nothing started and nothing written.
#
# Run from the repository root with ./loom built: bash tests/cli/test_parallel.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom parallel

DEBUG=configs/runs/debug.ini
STEPS=10
LIMIT=120 # seconds for any one launch
MHA_ARGS=(--model.attention=mha --model.num_kv_heads=2 --model.head_dim=32 --model.qk_norm=true
    --model.rope_style=half --model.tie_word_embeddings=false)
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" # controls.py imports tests/cli/gradcmp.py

# ---------------------------------------------------------------------------------------------------
# comparisons (python3 with the standard library only): metrics and gradients by tests/cli/gradcmp.py, its
# controls here

cat >"$tmp/controls.py" <<'EOF'
import array, math, sys
import gradcmp as G

def split(ref, dp, tp, pp, zero, fill=math.nan):
    """the single-process dump cut like a dp x tp x pp layout (for the controls): blocks into pp stages, the
    embedding on the first and the last stage (as a tied one is), other tensors outside the blocks on the last;
    matrices by turns split by rows over tp, by columns, or whole, vectors whole; slices padded to 16 floats
    with `fill`; under ZeRO-1 each of the dp replicas holds [lo, hi) of a 1/dp share"""
    layers = 1 + max(int(t[0].split(".")[1]) for t in ref["tensors"] if t[0].startswith("layers."))
    g, dumps = ref["g"], []
    for rank in range(dp * tp * pp):
        d, tr, s = rank // (tp * pp), rank // pp % tp, rank % pp
        buf, tensors = array.array("f"), []
        for i, (name, off, _, _, _, _, rows, cols) in enumerate(ref["tensors"]):
            if name.startswith("layers."):
                keep = int(name.split(".")[1]) * pp // layers == s
            else:
                keep = s == pp - 1 or (s == 0 and name.startswith("embed_tokens"))
            if not keep:
                continue
            r0, c0, lr, lc = 0, 0, rows, cols
            if cols > 1 and i % 3 == 0 and rows % tp == 0:
                lr = rows // tp
                r0 = lr * tr
            elif cols > 1 and i % 3 == 1 and cols % tp == 0:
                lc = cols // tp
                c0 = lc * tr
            tensors.append((name, len(buf), r0, c0, lr, lc, rows, cols))
            for r in range(r0, r0 + lr):
                buf.extend(g[off + r * cols + c0:off + r * cols + c0 + lc])
            buf.extend(array.array("f", [fill]) * (-len(buf) % 16))
        n = len(buf)
        lo, hi = (n * d // dp, n * (d + 1) // dp) if zero else (0, n)
        dumps.append(dict(spans=[(lo, hi)], total=n, g=buf[lo:hi], tensors=tensors))
    return dumps

def control(name, ref_metrics, other_metrics, steps, ref_prefix, other_prefix):
    """the comparisons tell runs apart: another seed (losses, gradients), a loss off by 2e-5, and, in the
    single-process gradients cut like dp2 x tp2 x pp2 under ZeRO-1 (split: NaN padding that must not be read,
    slices of rows and of columns, a second embedding), single elements off by twice their tolerance (in a column
    slice of a shard that starts past 0, in the second embedding), a slice one row off, a tensor left out of a
    map, and shards with a gap, an overlap, a short end, one rank holding all"""
    problems = []
    ref_m, other_m = G.read_metrics(ref_metrics, steps), G.read_metrics(other_metrics, steps)
    if not G.metric_problems(ref_m, other_m):
        problems.append("the metrics of seed 43 pass for the single-process run's")
    nudged = [dict(r) for r in ref_m]
    nudged[steps - 1]["loss"] *= 1 + 2 * G.LOSS_RTOL
    if not G.metric_problems(ref_m, nudged) or G.metric_problems(ref_m, ref_m):
        problems.append("a last loss off by 2e-5 relative is not caught, or identical metrics are not accepted")

    ref, refs = G.reference(ref_prefix)
    other, _ = G.reference(other_prefix)
    dp, tp, pp = 2, 2, 2
    def check(dumps):
        return G.check_grads(ref, refs, dumps, dp, 1)[:3]
    dumps = split(ref, dp, tp, pp, 1)
    if any(check(dumps)):
        problems.append(f"the single-process gradients cut like dp2 x tp2 x pp2 ZeRO-1 do not pass: {check(dumps)}")
    values, *_ = check(split(other, dp, tp, pp, 1))
    if not values:
        problems.append("the gradients of seed 43 pass for the single-process run's")
    # one element off in a column slice (col0 > 0) of rank 7 (second dp replica: lo > 0), one in rank 1's embedding
    # (the last stage's copy); each named, nothing else
    want = []
    for rank, pick in ((7, lambda t: t[3] > 0), (1, lambda t: t[0].startswith("embed_tokens"))):
        d = dumps[rank]
        t = next(t for t in d["tensors"] if pick(t) and any(G.segments(t, *d["spans"][0])))
        runs = list(G.segments(t, *d["spans"][0]))
        gi, wi, n = runs[len(runs) // 2]
        gi, wi = gi + n // 2, wi + n // 2
        a = ref["g"][refs[t[0]][0] + wi]
        d["g"][gi] += 2 * (G.GRAD_RTOL * abs(a) + G.GRAD_ATOL_FRAC * refs[t[0]][3])
        want.append(f"rank {rank} {G.at(t[0], t[7], wi)} ")
    values, cover, shards = check(dumps)
    if len(values) != 2 or any(sum(w in v for v in values) != 1 for w in want) or cover or shards:
        problems.append(f"two elements off by twice their tolerance are not named as {want}: {values} {cover} {shards}")
    # a row-split slice of rank 0 (tp rank 0) claimed one row further down
    dumps = split(ref, dp, tp, pp, 1)
    d = dumps[0]
    i, t = next((i, t) for i, t in enumerate(d["tensors"]) if t[4] < t[6] and any(G.segments(t, *d["spans"][0])))
    d["tensors"][i] = t[:2] + (t[2] + 1,) + t[3:]
    values, *_ = check(dumps)
    if not any(f"rank 0 {t[0]}[" in v for v in values):
        problems.append(f"{t[0]} on rank 0 read one row off is not caught: {values}")
    # a block's slice inside rank 0's share (no other rank holds it there) left out of its map
    dumps = split(ref, dp, tp, pp, 1)
    d = dumps[0]
    t = next(t for t in d["tensors"] if t[0].startswith("layers.") and t[4:6] != t[6:8] and d["spans"][0][0] <= t[1] and
             t[1] + t[4] * t[5] <= d["spans"][0][1])
    d["tensors"].remove(t)
    values, cover, shards = check(dumps)
    if not any(t[0] + " " in c for c in cover):
        problems.append(f"{t[0]} left out of rank 0's map is not caught by the coverage: {values} {cover} {shards}")
    for spans in ([(0, 5), (6, 10)], [(0, 6), (5, 10)], [(0, 5), (5, 9)], [(0, 10), (10, 10)]):
        if not G.shard_problems(spans, 10):
            problems.append(f"shards {spans} of 10 pass as a tiling")
    if G.shard_problems([(5, 10), (0, 5)], 10):
        problems.append("shards [(5, 10), (0, 5)] of 10 are not accepted")
    G.verdict(name, problems)

mode, args = sys.argv[1], sys.argv[2:]
if mode == "control":
    control(args[0], args[1], args[2], int(args[3]), args[4], args[5])
EOF
# compare metrics|grads|control NAME ...: `python3 tests/cli/gradcmp.py metrics|grads NAME ...` (see there),
# or the controls above
compare() {
    local out py="$here/gradcmp.py"
    [ "$1" = control ] && py="$tmp/controls.py"
    out=$(python3 "$py" "$@" 2>&1)
    if ! grep -qE '^(ok|FAIL) ' <<<"$out"; then out="FAIL $2: the comparison gave no verdict: $out"; fi
    echo "$out"
    failures=$((failures + $(grep -c '^FAIL' <<<"$out")))
}

# ---------------------------------------------------------------------------------------------------
# parity

# layouts: "dp tp pp zero"
LAYOUTS=("2 1 1 0" "2 1 1 1" "4 1 1 0" "4 1 1 1"
    "1 2 1 0" "1 1 2 0" "1 1 4 0" "2 2 1 0" "2 2 1 1" "1 2 2 0" "2 1 2 0" "2 1 2 1" "2 2 2 0" "2 2 2 1")

parity() { # MODEL MICRO_BATCH ARGS...
    local model=$1 mb=$2
    shift 2
    local base=(train -c "$DEBUG" "$@" --model.num_layers=4 --train.steps=$STEPS --train.global_batch=8
        --train.micro_batch="$mb" --train.threads=1 --log.peak_tflops=0.1)
    local ref="$tmp/$model-ref"
    launch 1 "${base[@]}" --train.run_dir="$ref" --log.dump_grads="$ref-g"
    if [ "$rc" -ne 0 ] || [ ! -s "$ref/metrics.jsonl" ] || [ ! -s "$ref-g.rank0.bin" ]; then
        fail "parallel/$model/single_process" "$(show)"
        return
    fi
    ok "parallel/$model/single_process"
    for layout in "${LAYOUTS[@]}"; do
        read -r dp tp pp zero <<<"$layout"
        local np=$((dp * tp * pp)) name="dp${dp}_tp${tp}_pp${pp}" dir
        [ "$dp" -gt 1 ] && name+="_zero$zero"
        dir="$tmp/$model-$name"
        local args=("${base[@]}" --parallel.dp="$dp" --parallel.tp="$tp" --parallel.pp="$pp" --parallel.zero="$zero"
            --train.run_dir="$dir" --log.dump_grads="$dir-g")
        local t0=$SECONDS
        launch "$np" "${args[@]}"
        local label="parallel/$model/$name"
        if [ "$rc" -eq 2 ] && [ $((tp * pp)) -gt 1 ] && grep -q 'not available in this build' "$tmp/err"; then
            echo "skip $label: $(grep -m1 '^loom: error:' "$tmp/err")"
            continue
        fi
        launched "$label" "$np" "$dir" || continue
        echo "# $label: $np ranks, $((SECONDS - t0)) s"
        compare metrics "$label/losses" "$ref/metrics.jsonl" "$dir/metrics.jsonl" "$STEPS"
        compare grads "$label/grads" "$ref-g" "$dir-g" "$np" "$dp" "$tp" "$zero"
        rm -f "$dir-g".rank*.bin "$dir-g".rank*.map
    done
    # the control: another seed is told apart by both comparisons
    launch 1 "${base[@]}" --train.seed=43 --train.run_dir="$tmp/$model-seed43" --log.dump_grads="$tmp/$model-seed43-g"
    if [ "$rc" -ne 0 ]; then
        fail "parallel/$model/control" "--train.seed=43: $(show)"
    else
        compare control "parallel/$model/control" "$ref/metrics.jsonl" "$tmp/$model-seed43/metrics.jsonl" "$STEPS" \
            "$ref-g" "$tmp/$model-seed43-g"
    fi
}

t0=$SECONDS
parity mla 1
parity mha 2 "${MHA_ARGS[@]}"
echo "# parity: $((SECONDS - t0)) s"
t0=$SECONDS

# ---------------------------------------------------------------------------------------------------
# errors on every rank

# expect_error NAME NP KEY MUST ARGS...: expect_launch_error (tests/cli/lib.sh) as parallel/error/NAME
expect_error() {
    local name="parallel/error/$1"
    shift
    expect_launch_error "$name" "$@"
}

expect_error world_dp2_on_4 4 parallel 'dp\(2\)\*tp\(1\)\*pp\(1\) = 2 != world size 4' -c "$DEBUG" --parallel.dp=2
expect_error world_dp4_on_2 2 parallel 'dp\(4\)\*tp\(1\)\*pp\(1\) = 4 != world size 2' -c "$DEBUG" --parallel.dp=4 \
    --train.global_batch=8
expect_error tp3_heads 3 parallel.tp 'model\.num_heads' -c "$DEBUG" --parallel.tp=3
expect_error tp4_kv_heads 4 parallel.tp 'model\.num_kv_heads' -c "$DEBUG" "${MHA_ARGS[@]}" --parallel.tp=4
expect_error tp2_odd_vocab 2 parallel.tp 'model\.vocab_size' -c "$DEBUG" --parallel.tp=2 --model.vocab_size=321
expect_error tp2_odd_ffn 2 parallel.tp 'model\.intermediate_size' -c "$DEBUG" --parallel.tp=2 --model.intermediate_size=385
expect_error pp3_two_layers 3 parallel.pp '3 stages for 2 layers' -c "$DEBUG" --parallel.pp=3
expect_error micro_batches_3 2 parallel.micro_batches '3 micro-batches' -c "$DEBUG" --parallel.dp=2 \
    --train.global_batch=8 --parallel.micro_batches=3
expect_error global_batch_dp4 4 train.global_batch 'parallel.dp = 4' -c "$DEBUG" --parallel.dp=4 --train.global_batch=6

# an existing run folder (the MLA single-process run above, or a fresh one) stops every rank, and its
# files stay as they were
exist="$tmp/mla-ref"
if [ ! -s "$exist/metrics.jsonl" ]; then
    exist="$tmp/existing"
    launch 1 train -c "$DEBUG" --train.steps=2 --train.run_dir="$exist"
fi
if [ ! -s "$exist/metrics.jsonl" ]; then
    fail parallel/error/existing_run "no run to collide with in $exist: $(show)"
else
    before=$(cat "$exist/metrics.jsonl" "$exist/config.ini" | cksum)
    files_before=$(ls "$exist")
    RUN_DIR=$exist expect_error existing_run 4 train.run_dir 'already holds a run' -c "$DEBUG" --parallel.dp=4 \
        --train.global_batch=8 --train.seed=7
    if [ "$(cat "$exist/metrics.jsonl" "$exist/config.ini" | cksum)" = "$before" ] && [ "$(ls "$exist")" = "$files_before" ]; then
        ok parallel/error/existing_run_untouched
    else
        fail parallel/error/existing_run_untouched "$exist changed: files now $(ls "$exist" | tr '\n' ' ') (before: $(tr '\n' ' ' <<<"$files_before"))"
    fi
fi
echo "# errors: $((SECONDS - t0)) s"

[ "$failures" -eq 0 ]
