# tests/cli/lib.sh — helpers shared by the tests/cli/test_*.sh scripts, which source it with
#   source "$(dirname "$0")/lib.sh"
# after `set -u`, run from the repository root. Gives them:
#   $LOOM           the binary under test (./loom)
#   $tmp            a fresh temporary folder, removed when the script exits
#   ok NAME         prints "ok NAME"
#   fail NAME WHY   prints "FAIL NAME: WHY" and counts it in $failures (end a script with [ "$failures" -eq 0 ])
#   run ARGS...     runs $LOOM ARGS: exit status in $rc, stdout in $tmp/out, stderr in $tmp/err (a script may
#                   define its own run after sourcing this)
#   require_loom P  fails check P/binary and exits when $LOOM has not been built
#   verdicts SCRIPT ARGS...  runs `python3 SCRIPT ARGS...` (ARGS[1] is the check's name), echoes its `ok` / `FAIL`
#                   lines (output without any is a FAIL of that name) and counts the FAILs in $failures
#   make_prose FILE CHARS  writes about CHARS characters of deterministic English-like text to FILE
#   prep_text LABEL  20000 characters of make_prose text made into byte-level shards in $tmp/data (source web);
#                   when `loom data prep` fails: fails LABEL/prep and returns non-zero
#   text_run_ini FILE MODEL SHARDS  writes the config of a short run of configs/models/MODEL.ini on the shards
#                   SHARDS (source web) to FILE: seed 5, global batch 4, a cosine schedule from 3e-3 to 3e-4,
#                   peak_tflops 0.1, then the lines on stdin (the run's own keys; a section may appear again)
# Not a test itself: its name does not match tests/cli/test_*.sh.

LOOM=./loom
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

failures=0
ok() { echo "ok $1"; }
fail() {
    echo "FAIL $1: $2"
    failures=$((failures + 1))
}

run() {
    "$LOOM" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}

require_loom() {
    if [ ! -x "$LOOM" ]; then
        fail "$1/binary" "$LOOM is missing: run make loom first"
        exit 1
    fi
}

# ---------------------------------------------------------------------------------------------------
# multi-rank launches (test_parallel.sh, test_moe.sh): through scripts/launch.sh, every one under
# `timeout -k 10 $LIMIT` (the script sets LIMIT, seconds for any one launch)
#   launch NP ARGS...       `loom ARGS` on NP ranks: exit status in $rc, stdout/stderr in $tmp/out, $tmp/err
#   show                    $rc and the ends of $tmp/out and $tmp/err, for a failure message (a script may
#                           define its own show after sourcing this)
#   timed_out               true when $rc says the launch ran past $LIMIT
#   launched LABEL NP DIR   after a launch of NP ranks that writes run folder DIR: check LABEL/run
#   launch_each NP ARGS...  like launch, but every rank's exit status lands in $tmp/rc/rankR.rc (and the launch's
#                           in $rc_each, stdout/stderr in $tmp/out_each, $tmp/err_each)
#   expect_launch_error NAME NP KEY MUST ARGS...
#                           `loom train ARGS` on NP ranks must exit 2 (the launch and every rank): check NAME

launch() {
    local np=$1
    shift
    timeout -k 10 "$LIMIT" scripts/launch.sh -np "$np" "$LOOM" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}
show() { echo "exit status $rc; stdout: $(tail -c 600 "$tmp/out"); stderr: $(tail -c 1200 "$tmp/err")"; }
timed_out() { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; }

# launched LABEL NP DIR: ok LABEL/run when the launch exited 0 and wrote DIR/metrics.jsonl (true), else the
# failure, naming a hang (false)
launched() {
    local label=$1 np=$2 dir=$3
    if timed_out; then
        fail "$label/run" "no result after $LIMIT s on $np ranks (hang?): $(show)"
        return 1
    elif [ "$rc" -ne 0 ] || [ ! -s "$dir/metrics.jsonl" ]; then
        fail "$label/run" "$np ranks: $(show)"
        return 1
    fi
    ok "$label/run"
}

# launch_each runs every rank in $tmp/rank_status.sh DIR CMD...: runs CMD, writes its exit status to DIR/rankR.rc;
# Open MPI is told not to kill the other ranks as soon as the first one exits non-zero (and then mpirun's own
# exit status is 0: launch gives that one)
launch_each() {
    local np=$1
    shift
    if [ ! -x "$tmp/rank_status.sh" ]; then
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
    fi
    rm -rf "$tmp/rc"
    mkdir -p "$tmp/rc"
    OMPI_MCA_orte_abort_on_non_zero_status=0 timeout -k 10 "$LIMIT" scripts/launch.sh -np "$np" \
        "$tmp/rank_status.sh" "$tmp/rc" "$LOOM" "$@" >"$tmp/out_each" 2>"$tmp/err_each"
    rc_each=$?
}

# expect_launch_error NAME NP KEY MUST ARGS...: `loom train ARGS --train.run_dir=RUN` on NP ranks must exit 2
# (the launch, and then every rank under launch_each), within the time limit, with a `loom: error: KEY: ...`
# line (MUST, an extended regex, found in it), no crash, no progress on stdout, and nothing written to RUN, a
# fresh folder $tmp/error-run-N (unless RUN_DIR is given: then RUN is that one and the caller checks it)
launch_error_cases=0
expect_launch_error() {
    local name=$1 np=$2 key=$3 must=$4
    shift 4
    launch_error_cases=$((launch_error_cases + 1))
    local run=${RUN_DIR:-$tmp/error-run-$launch_error_cases}
    local args=(train "$@" --train.run_dir="$run")
    launch "$np" "${args[@]}"
    local line what
    line=$(grep -m1 '^loom: error: ' "$tmp/err")
    what="\`scripts/launch.sh -np $np loom ${args[*]}\`: $(show)"
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
    local statuses want
    statuses=$(for r in $(seq 0 $((np - 1))); do cat "$tmp/rc/rank$r.rc" 2>/dev/null || echo missing; done | tr '\n' ' ')
    want=$(for _ in $(seq "$np"); do printf '2 '; done)
    if [ "$rc_each" -eq 124 ] || [ "$rc_each" -eq 137 ]; then
        fail "$name" "with every rank's status recorded: no result after $LIMIT s (hang?); stderr: $(tail -c 800 "$tmp/err_each")"
    elif [ "$statuses" != "$want" ] || [ "$(ls "$tmp/rc" | wc -l)" -ne "$np" ]; then
        fail "$name" "exit status per rank 0..$((np - 1)): $statuses(want $want); files $(ls "$tmp/rc" | tr '\n' ' '); stderr: $(tail -c 800 "$tmp/err_each")"
    else
        ok "$name"
    fi
}

verdicts() {
    local script=$1 out
    shift
    out=$(python3 "$script" "$@" 2>&1)
    grep -qE '^(ok|FAIL) ' <<<"$out" || out="FAIL $2: no verdict: $out"
    echo "$out"
    failures=$((failures + $(grep -c '^FAIL' <<<"$out")))
}

make_prose() {
    python3 - "$1" "$2" <<'PY'
import sys
words = "the quick brown fox jumps over a lazy dog while seven small birds sing in old green trees".split()
out, i = [], 1
while sum(len(w) + 1 for w in out) < int(sys.argv[2]):
    i = (i * 1103515245 + 12345) % 2**31
    out.append(words[i % len(words)])
open(sys.argv[1], "w").write(" ".join(out) + "\n")
PY
}

prep_text() {
    make_prose "$tmp/web.txt" 20000
    run data prep --tokenizer bytes --source web --in "$tmp/web.txt" --out "$tmp/data" --frame-tokens 512
    if [ "$rc" -ne 0 ]; then
        fail "$1/prep" "$(tail -c 400 "$tmp/err")"
        return 1
    fi
}

text_run_ini() {
    {
        cat <<EOF
include = $PWD/configs/models/$2.ini

[train]
seed = 5
global_batch = 4

[schedule]
kind = cosine
lr = 3e-3
min_lr = 3e-4

[log]
peak_tflops = 0.1

[source.web]
shards = $3

EOF
        cat
    } >"$1"
}
