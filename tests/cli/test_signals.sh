#!/usr/bin/env bash
# tests/cli/test_signals.sh — stopping and dying under mpirun.
#
# SIGTERM to one rank of a dp2 run (as Slurm sends on pre-emption): every rank stops at the next step
# boundary (the signal is agreed on by an all-reduce each step), a checkpoint of that step is written and
# named by `latest`, the job exits 0 saying so, and --checkpoint.resume=auto continues from it. SIGINT to a
# one-process run: the same. checkpoint.every_minutes = 0.005 (0.3 s) writes checkpoints on the clock during a
# ~2 s run (at least two: one on time and the final one); the control without it writes none. SIGKILL of one
# rank mid-run: mpirun takes the job down within 30 s with a non-zero exit naming the signal, and `latest`
# still names a complete checkpoint.
# Run from the repository root with ./loom built: bash tests/cli/test_signals.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom signals
LIMIT=120

# start_run DIR NP ARGS...: a long run in the background; waits until it has logged 20 steps
start_run() {
    local d=$1 np=$2
    shift 2
    timeout -k 10 "$LIMIT" scripts/launch.sh -np "$np" "$LOOM" train -c configs/runs/debug.ini --train.steps=100000 \
        --train.threads=1 --train.run_dir="$d" "$@" >"$d.out" 2>"$d.err" &
    bg=$!
    for _ in $(seq 200); do
        [ "$({ wc -l <"$d/metrics.jsonl"; } 2>/dev/null || echo 0)" -ge 20 ] && return 0
        sleep 0.1
    done
    return 1
}
rank_pids() { pgrep -f "^$LOOM train .*--train.run_dir=$1( |$)"; }

# SIGTERM to one rank of dp2, then resume
d="$tmp/term"
if ! start_run "$d" 2 --parallel.dp=2 --checkpoint.every=1000; then
    fail signals/sigterm "the run did not start: $(tail -c 300 "$d.err")"
else
    kill -TERM "$(rank_pids "$d" | tail -1)"
    wait "$bg"
    rc=$?
    step=$(grep -o 'stopped by a signal after step [0-9]*' "$d.out" | grep -o '[0-9]*$')
    latest=$(cat "$d/checkpoints/latest" 2>/dev/null)
    if [ "$rc" -eq 0 ] && [ -n "$step" ] && [ "$latest" = "$(printf 'step_%08d.h5' "$step")" ]; then
        ok signals/sigterm
        launch 2 train -c configs/runs/debug.ini --train.steps=100000 --train.threads=1 --parallel.dp=2 \
            --train.run_dir="$d" --checkpoint.resume=auto --train.stop_after=$((step + 3))
        if [ "$rc" -eq 0 ] && grep -q "resumed from .*$latest (step $step," "$tmp/out" &&
            [ "$(tail -1 "$d/metrics.jsonl" | grep -o '"step": [0-9]*' | head -1)" = "\"step\": $((step + 3))" ]; then
            ok signals/sigterm_resume
        else
            fail signals/sigterm_resume "want 'resumed from ...$latest (step $step,' and a last step $((step + 3)): $(grep resumed "$tmp/out") $(show)"
        fi
    else
        fail signals/sigterm "want exit 0, 'stopped by a signal after step N' and latest = step N: exit $rc, latest '$latest': $(tail -c 300 "$d.out") $(tail -c 300 "$d.err")"
    fi
fi

# SIGINT to a one-process run
d="$tmp/int"
if ! start_run "$d" 1 --checkpoint.every=1000; then
    fail signals/sigint "the run did not start: $(tail -c 300 "$d.err")"
else
    kill -INT "$(rank_pids "$d" | head -1)"
    wait "$bg"
    rc=$?
    if [ "$rc" -eq 0 ] && grep -q "stopped by a signal after step" "$d.out" && [ -s "$d/checkpoints/latest" ]; then
        ok signals/sigint
    else
        fail signals/sigint "exit $rc: $(tail -c 300 "$d.out") $(tail -c 300 "$d.err")"
    fi
fi

# checkpoints on the clock
for minutes in 0.005 0; do
    d="$tmp/clock-$minutes"
    run train -c configs/runs/debug.ini --train.steps=200 --train.threads=1 --checkpoint.every_minutes=$minutes \
        --checkpoint.keep=1000 --train.run_dir="$d"
    n=$(ls "$d/checkpoints" 2>/dev/null | grep -c '^step_.*\.h5$')
    if [ "$minutes" = 0 ]; then
        [ "$rc" -eq 0 ] && [ "$n" -eq 0 ] && ok signals/every_minutes_control ||
            fail signals/every_minutes_control "exit $rc, $n checkpoints without checkpoint.every_minutes"
    else
        [ "$rc" -eq 0 ] && [ "$n" -ge 2 ] && ok signals/every_minutes ||
            fail signals/every_minutes "exit $rc, $n checkpoints in a run of $(python3 -c "import json; print(sum(json.loads(l)['time']['step'] for l in open('$d/metrics.jsonl')))" 2>/dev/null) s: $(tail -c 300 "$tmp/err")"
    fi
done

# SIGKILL of one rank: the job ends within 30 s, non-zero, naming the signal; latest stays complete
d="$tmp/kill"
if ! start_run "$d" 2 --parallel.dp=2 --checkpoint.every=5; then
    fail signals/sigkill "the run did not start: $(tail -c 300 "$d.err")"
else
    t0=$SECONDS
    kill -KILL "$(rank_pids "$d" | tail -1)"
    wait "$bg"
    rc=$?
    took=$((SECONDS - t0))
    latest=$(cat "$d/checkpoints/latest" 2>/dev/null)
    if [ "$rc" -ne 0 ] && [ "$took" -le 30 ] && grep -qi "signal 9\|killed" "$d.err" && [ -s "$d/checkpoints/$latest" ] &&
        "$LOOM" ckpt verify "$d/checkpoints/$latest" >/dev/null 2>&1; then
        ok signals/sigkill
    else
        fail signals/sigkill "want a non-zero exit within 30 s naming signal 9 and a verified latest: exit $rc after $took s, latest '$latest': $(tail -c 400 "$d.err")"
    fi
fi
[ "$failures" -eq 0 ]
