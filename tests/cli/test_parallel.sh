#!/usr/bin/env bash
# tests/cli/test_parallel.sh — multi-rank `loom train` through scripts/launch.sh (every launch under `timeout`).
#
# Parity (DESIGN 5: any layout gives the single-process result up to floating-point reordering): the tiny
# MLA model (debug.ini, tied head) and an MHA/GQA variant with QK-norm (untied head), 4 layers so that pp4
# has a layer per stage, global batch 8, 10 steps. Every layout's 10 losses match the single-process run to
# 1e-5 relative, and so does step 1's gradient norm (later norms: 1e-4, the trajectories drift apart by
# rounding); for the dp-only layouts every rank's gradient dump after step 1 (--log.dump_grads) matches the
# single-process gradients element by element (1e-5 relative + 1e-6 max|g|), and under ZeRO-1 the ranks'
# shards tile [0, total) exactly. Controls: a run with another seed, a gradient element or a loss nudged
# past its tolerance, and broken shard tilings must all be caught by the same comparisons. Layouts with tp
# or pp > 1 print `skip` while `loom train` answers them with exit status 2 and "not available in this
# build", and start checking by themselves once they are implemented (their gradient dumps are not compared
# yet: the flat layout of tp/pp shards is still to be documented).
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

# launch NP ARGS...: `loom ARGS` on NP ranks; exit status in $rc, stdout/stderr in $tmp/out, $tmp/err
launch() {
    local np=$1
    shift
    timeout -k 10 "$LIMIT" scripts/launch.sh -np "$np" "$LOOM" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}
show() { echo "exit status $rc; stdout: $(tail -c 600 "$tmp/out"); stderr: $(tail -c 1200 "$tmp/err")"; }
timed_out() { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; }

# ---------------------------------------------------------------------------------------------------
# comparisons (python3 with the standard library only)

cat >"$tmp/compare.py" <<'EOF'
import array, json, math, sys

LOSS_RTOL = 1e-5         # every step's loss
GNORM1_RTOL = 1e-5       # step 1's gradient norm (the same gradients, reduced in another order)
GNORM_RTOL = 1e-4        # later steps' gradient norms (the trajectories drift apart by float rounding)
GRAD_RTOL = 1e-5         # gradients after step 1: |g - r| <= GRAD_RTOL |r| + GRAD_ATOL_FRAC max|r|
GRAD_ATOL_FRAC = 1e-6

def verdict(name, problems):
    print(f"FAIL {name}: " + "; ".join(problems[:4]) if problems else f"ok {name}")

def read_metrics(path, steps):
    rows = [json.loads(line) for line in open(path)]
    if len(rows) != steps:
        raise ValueError(f"{path}: {len(rows)} lines, want {steps}")
    return rows

def rel(a, b):
    r = abs(a - b) / abs(a) if a else abs(b)
    return r if r == r else math.inf

def metric_problems(ref, got):
    """losses and gradient norms of every step against the single-process run"""
    problems = []
    for key, tol in (("loss", lambda i: LOSS_RTOL), ("grad_norm", lambda i: GNORM1_RTOL if i == 0 else GNORM_RTOL)):
        worst = max(range(len(ref)), key=lambda i: rel(ref[i][key], got[i][key]) / tol(i))
        r = rel(ref[worst][key], got[worst][key])
        if r > tol(worst):
            problems.append(f"step {worst + 1} {key} {got[worst][key]!r}, single process {ref[worst][key]!r} (relative "
                            f"difference {r:.3g} > {tol(worst):g}); {key} by step: " +
                            " ".join(f"{g[key]:.7g}" for g in got) + " vs single process " +
                            " ".join(f"{r_[key]:.7g}" for r_ in ref))
    return problems

def cmp_metrics(name, ref_path, got_path, steps):
    try:
        ref, got = read_metrics(ref_path, steps), read_metrics(got_path, steps)
    except Exception as e:
        return verdict(name, [str(e)])
    verdict(name, metric_problems(ref, got))

def load_dump(path):
    with open(path, "rb") as f:
        head = array.array("q")
        head.fromfile(f, 3)
        data = f.read()
    if sys.byteorder != "little":
        head.byteswap()
    lo, hi, total = head
    if len(data) != 4 * (hi - lo) or not (0 <= lo <= hi <= total):
        raise ValueError(f"{path}: header lo {lo} hi {hi} total {total} with {len(data)} bytes of gradients")
    g = array.array("f")
    g.frombytes(data)
    if sys.byteorder != "little":
        g.byteswap()
    return lo, hi, total, g

def grad_problems(ref, dumps):
    """every dump (lo, hi, total, g) against ref[lo:hi]; names the worst element of a rank that is off"""
    problems = []
    gmax = max(abs(x) for x in ref)
    atol = GRAD_ATOL_FRAC * gmax
    for rank, (lo, hi, total, g) in enumerate(dumps):
        if total != len(ref):
            problems.append(f"rank {rank}: total {total}, single process {len(ref)}")
            continue
        seg = ref[lo:hi]
        if all(abs(a - b) <= GRAD_RTOL * abs(a) + atol for a, b in zip(seg, g)):
            continue
        worst, at = -math.inf, 0  # the largest excess over its tolerance; NaN counts as infinite
        for i, (a, b) in enumerate(zip(seg, g)):
            d = abs(a - b)
            excess = math.inf if d != d else d - (GRAD_RTOL * abs(a) + atol)
            if excess > worst:
                worst, at = excess, i
        a, b = seg[at], g[at]
        problems.append(f"rank {rank} element {lo + at} of its [{lo}, {hi}): {b!r}, single process {a!r} (|diff| "
                        f"{abs(a - b):.3g} > {GRAD_RTOL:g} |g| + {GRAD_ATOL_FRAC:g} max|g| = "
                        f"{GRAD_RTOL * abs(a) + atol:.3g}; max|g| {gmax:.3g})")
    return problems

def shard_problems(spans, total):
    """the (lo, hi) of the dp ranks tile [0, total) exactly, and no rank holds everything"""
    order = sorted((lo, hi, r) for r, (lo, hi) in enumerate(spans))
    at, bad = 0, []
    for lo, hi, r in order:
        if lo != at:
            bad.append(f"rank {r} starts at {lo}, want {at}")
        at = hi
    if at != total:
        bad.append(f"the shards end at {at}, want {total}")
    if len(spans) > 1 and any(hi - lo == total for lo, hi in spans):
        bad.append("a rank holds the whole buffer")
    if bad:
        bad.insert(0, "shards " + " ".join(f"rank {r} [{lo}, {hi})" for lo, hi, r in order))
    return bad

def cmp_grads(name, ref_prefix, got_prefix, nranks, zero):
    """each rank's slice [lo, hi) of its reduced gradients equals the single-process gradients there;
    without ZeRO every slice is the whole buffer, with ZeRO-1 the slices tile [0, total)"""
    try:
        lo, hi, total, ref = load_dump(f"{ref_prefix}.rank0.bin")
        if (lo, hi) != (0, total):
            raise ValueError(f"the single-process dump holds [{lo}, {hi}) of {total}")
        dumps = [load_dump(f"{got_prefix}.rank{r}.bin") for r in range(nranks)]
    except Exception as e:
        verdict(name, [str(e)])
        if zero:
            verdict(name + "_shards", [str(e)])
        return
    problems = grad_problems(ref, dumps)
    if not zero:
        problems += [f"rank {r} holds [{d[0]}, {d[1]}), want all of [0, {total}) without ZeRO"
                     for r, d in enumerate(dumps) if (d[0], d[1]) != (0, total)]
    verdict(name, problems)
    if zero:
        verdict(name + "_shards", shard_problems([(d[0], d[1]) for d in dumps], total))

def control(name, ref_metrics, other_metrics, steps, ref_prefix, other_prefix):
    """the comparisons tell runs apart: another seed (losses, gradients), a single gradient element off by
    twice its tolerance, a loss off by 2e-5, shards with a gap, an overlap, a short end, one rank holding all"""
    problems = []
    ref_m, other_m = read_metrics(ref_metrics, steps), read_metrics(other_metrics, steps)
    if not metric_problems(ref_m, other_m):
        problems.append("the metrics of seed 43 pass for the single-process run's")
    nudged = [dict(r) for r in ref_m]
    nudged[steps - 1]["loss"] *= 1 + 2 * LOSS_RTOL
    if not metric_problems(ref_m, nudged) or metric_problems(ref_m, ref_m):
        problems.append("a last loss off by 2e-5 relative is not caught, or identical metrics are not accepted")
    *_, ref = load_dump(f"{ref_prefix}.rank0.bin")
    *_, other = load_dump(f"{other_prefix}.rank0.bin")
    n = len(ref)
    if not grad_problems(ref, [(0, n, n, other)]):
        problems.append("the gradients of seed 43 pass for the single-process run's")
    gmax = max(abs(x) for x in ref)
    k = n * 2 // 3 + 1  # some element in the second rank's half
    off = array.array("f", ref)
    off[k] += 2 * (GRAD_RTOL * abs(ref[k]) + GRAD_ATOL_FRAC * gmax)
    half = n // 2
    caught = grad_problems(ref, [(0, half, n, ref[:half]), (half, n, n, off[half:])])
    if len(caught) != 1 or f"element {k} " not in caught[0] or grad_problems(ref, [(0, n, n, ref)]):
        problems.append(f"element {k} off by twice its tolerance is not named ({caught}), or identical gradients "
                        "are not accepted")
    for spans in ([(0, 5), (6, 10)], [(0, 6), (5, 10)], [(0, 5), (5, 9)], [(0, 10), (10, 10)]):
        if not shard_problems(spans, 10):
            problems.append(f"shards {spans} of 10 pass as a tiling")
    if shard_problems([(5, 10), (0, 5)], 10):
        problems.append("shards [(5, 10), (0, 5)] of 10 are not accepted")
    verdict(name, problems)

mode, args = sys.argv[1], sys.argv[2:]
if mode == "metrics":
    cmp_metrics(args[0], args[1], args[2], int(args[3]))
elif mode == "grads":
    cmp_grads(args[0], args[1], args[2], int(args[3]), int(args[4]))
elif mode == "control":
    control(args[0], args[1], args[2], int(args[3]), args[4], args[5])
EOF
compare() {
    local out
    out=$(python3 "$tmp/compare.py" "$@" 2>&1)
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
            --train.run_dir="$dir")
        local dp_only=0
        [ "$tp" -eq 1 ] && [ "$pp" -eq 1 ] && dp_only=1
        [ "$dp_only" -eq 1 ] && args+=(--log.dump_grads="$dir-g")
        local t0=$SECONDS
        launch "$np" "${args[@]}"
        local label="parallel/$model/$name"
        if [ "$rc" -eq 2 ] && [ "$dp_only" -eq 0 ] && grep -q 'not available in this build' "$tmp/err"; then
            echo "skip $label: $(grep -m1 '^loom: error:' "$tmp/err")"
            continue
        fi
        if timed_out; then
            fail "$label/run" "no result after $LIMIT s on $np ranks (hang?): $(show)"
            continue
        elif [ "$rc" -ne 0 ] || [ ! -s "$dir/metrics.jsonl" ]; then
            fail "$label/run" "$np ranks: $(show)"
            continue
        fi
        ok "$label/run"
        echo "# $label: $np ranks, $((SECONDS - t0)) s"
        compare metrics "$label/losses" "$ref/metrics.jsonl" "$dir/metrics.jsonl" "$STEPS"
        if [ "$dp_only" -eq 1 ]; then
            compare grads "$label/grads" "$ref-g" "$dir-g" "$np" "$zero"
        fi
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

# the wrapper every rank runs in launch_each: runs the command, writes its exit status to DIR/rankR.rc
cat >"$tmp/rank_status.sh" <<'EOF'
#!/bin/sh
dir=$1
shift
"$@"
status=$?
echo "$status" >"$dir/rank${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${SLURM_PROCID:-unknown}}}.rc"
exit "$status"
EOF
chmod +x "$tmp/rank_status.sh"

# launch_each NP ARGS...: like launch, but every rank's exit status lands in $tmp/rc/rankR.rc; Open MPI
# would otherwise kill the other ranks as soon as the first one exits non-zero (and then mpirun's own exit
# status is 0: launch gives that one)
launch_each() {
    local np=$1
    shift
    rm -rf "$tmp/rc"
    mkdir -p "$tmp/rc"
    OMPI_MCA_orte_abort_on_non_zero_status=0 timeout -k 10 "$LIMIT" scripts/launch.sh -np "$np" \
        "$tmp/rank_status.sh" "$tmp/rc" "$LOOM" "$@" >"$tmp/out_each" 2>"$tmp/err_each"
    rc_each=$?
}

# expect_error NAME NP KEY MUST ARGS...: `loom train ARGS` on NP ranks must exit 2 (the launch and every
# rank), within the time limit, with a `loom: error: KEY: ...` line (MUST, an extended regex, found in
# it), no progress on stdout, no crash, and nothing written to the run folder (unless RUN_DIR is given:
# then the caller checks it)
ncase=0
expect_error() {
    local name="parallel/error/$1" np=$2 key=$3 must=$4
    shift 4
    ncase=$((ncase + 1))
    local run=${RUN_DIR:-$tmp/error-run-$ncase}
    local args=(train "$@" --train.run_dir="$run")
    launch "$np" "${args[@]}"
    local line
    line=$(grep -m1 '^loom: error: ' "$tmp/err")
    local what="\`scripts/launch.sh -np $np loom ${args[*]}\`: $(show)"
    if timed_out; then
        fail "$name" "no result after $LIMIT s (hang?): $what"
        return
    elif [ "$rc" -ne 2 ]; then
        fail "$name" "want exit status 2 from the launch: $what"
        return
    elif [[ "$line" != "loom: error: $key: "* ]] || ! grep -qE -- "$must" <<<"$line"; then
        fail "$name" "want a line 'loom: error: $key: ...' matching /$must/: $what"
        return
    elif grep -v '^loom: error: ' "$tmp/err" | grep -qE 'MPI_ABORT|^\[rank [0-9]+\]|[Ss]egmentation|signal [0-9]'; then
        fail "$name" "a crash or an abort instead of a clean exit: $what"
        return
    elif grep -qE '^step |tok/s|^loom train:' "$tmp/out"; then
        fail "$name" "stdout shows a run starting: $what"
        return
    elif [ -z "${RUN_DIR:-}" ] && { [ -e "$run/metrics.jsonl" ] || [ -e "$run/config.ini" ]; }; then
        fail "$name" "a run was started in $run ($(ls "$run")): $what"
        return
    fi
    # every rank's own exit status
    launch_each "$np" "${args[@]}"
    local statuses
    statuses=$(for r in $(seq 0 $((np - 1))); do cat "$tmp/rc/rank$r.rc" 2>/dev/null || echo missing; done | tr '\n' ' ')
    local want
    want=$(for _ in $(seq "$np"); do printf '2 '; done)
    if [ "$rc_each" -eq 124 ] || [ "$rc_each" -eq 137 ]; then
        fail "$name" "with every rank's status recorded: no result after $LIMIT s (hang?); stderr: $(tail -c 800 "$tmp/err_each")"
    elif [ "$statuses" != "$want" ] || [ "$(ls "$tmp/rc" | wc -l)" -ne "$np" ]; then
        fail "$name" "exit status per rank 0..$((np - 1)): $statuses(want $want); files $(ls "$tmp/rc" | tr '\n' ' '); stderr: $(tail -c 800 "$tmp/err_each")"
    else
        ok "$name"
    fi
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
