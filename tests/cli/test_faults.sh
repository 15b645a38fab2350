#!/usr/bin/env bash
# tests/cli/test_faults.sh — a rank that dies or fails, a disk that fills up, a run folder that cannot be
# written, each under mpirun on 2 ranks (the reservation case also on 4).
#
# A rank that dies at a precise point (the hook LOOM_TEST_DIE=POINT:STEP:RANK[:signal|exit|input] of
# core/error.h, and LOOM_CKPT_KILL_AT of checkpoints/ckpt.c): SIGKILL of rank 1 inside the backward of step 5
# of the dense debug model under dp2; a failed CHECK there (exit); SIGKILL of rank 1 and a failure of rank 0
# inside an MoE all-to-all (sends posted, not complete) of the MoE debug model under dp2 ep2; an error of bad
# input found by rank 1 alone inside the all-to-all (the other rank waits for it there: it must be aborted,
# not left waiting); SIGKILL of rank 0 half-way through the tensors of a checkpoint. Each time: the job exits
# with the status of the cause (137: killed, 1: failed, 2: bad input) within 30 s of the death (measured from
# the line the dying rank prints), the output names the rank and the cause (mpirun's "process rank R ...
# exited on signal 9 (Killed)", loom's "[rank R] ...: LOOM_TEST_DIE: ..." or "loom: error: ..."), both ranks
# were running before and none is left after (pgrep), and `latest` names the last checkpoint written before
# the death, which `loom ckpt verify` passes.
#
# A full disk (an 8 MB tmpfs, a 5.3 MB checkpoint: the second does not fit) that the free-space check does not
# see (LOOM_TEST_CKPT_FREE_BYTES): the reservation made before the tensors fails (2 and 4 ranks), and without
# it (LOOM_TEST_CKPT_NO_RESERVE) an HDF5 tensor write fails on one rank; each time the checkpoint is skipped
# with a warning naming the file and "No space left on device", no partial file is left, latest stays the
# first checkpoint, which verifies, and every rank goes on to the end of the run (exit 0, every step in
# metrics.jsonl).
#
# A full run folder (a 16 KiB tmpfs): the run stops when metrics.jsonl cannot be written, exit 1 naming the
# file and "No space left on device".
#
# A read-only run folder (a tmpfs remounted read-only; root ignores permission bits): exit 2 from every rank
# at start with one line naming the folder and "Read-only file system" (the folder, and a folder to be made
# in it). A run folder that turns read-only during a run (a read-only bind mount over it; the files the run
# holds open stay writable): the next checkpoint is skipped with a warning naming the file and the cause,
# the run goes on, and SIGTERM then stops it with exit 0 saying that no checkpoint was written; latest is the
# one from before and verifies.
#
# Without root (no tmpfs) the disk and read-only cases are skipped with a reason.
# Run from the repository root with ./loom built: bash tests/cli/test_faults.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom faults
LIMIT=60
mounts=()
trap 'for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m"; done; rm -rf "$tmp"' EXIT

# tmpfs_at DIR SIZE NAME: a tmpfs of SIZE mounted at DIR (unmounted at exit), or a skip line for check NAME and
# false where mounting is not allowed
tmpfs_at() {
    mkdir -p "$1"
    if ! mount -t tmpfs -o size="$2" tmpfs "$1" 2>/dev/null; then
        echo "skip $3: cannot mount a tmpfs here (needs root)"
        return 1
    fi
    mounts+=("$1")
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }
ranks_of() { pgrep -f -- "^$LOOM train .*--train.run_dir=$1( |$)" | wc -l; }

# ---------------------------------------------------------------------------------------------------
# a rank that dies or fails

# die NAME MARK WANT_RC CAUSE LATEST ARGS...: `loom train ARGS --train.run_dir=DIR` on 2 ranks in the background
# (with the hook set in the caller's environment); MARK: what the dying rank prints (an extended regex on
# stderr), WANT_RC: the job's exit status, CAUSE: what the output must say (an extended regex), LATEST: the
# checkpoint `latest` must name
die() {
    local name=$1 mark=$2 want_rc=$3 cause=$4 want_latest=$5
    shift 5
    local d="$tmp/$name" running=0 t_die="" t0 n
    mkdir -p "$(dirname "$d")"
    timeout -k 10 "$LIMIT" scripts/launch.sh -np 2 "$LOOM" train --train.run_dir="$d" "$@" >"$d.out" 2>"$d.err" &
    local bg=$!
    t0=$(now_ms)
    while kill -0 "$bg" 2>/dev/null; do
        n=$(ranks_of "$d")
        [ "$n" -gt "$running" ] && running=$n
        if [ -z "$t_die" ] && grep -qE -- "$mark" "$d.err"; then t_die=$(now_ms); fi
        sleep 0.05
    done
    wait "$bg"
    local rc=$? t_end left latest
    t_end=$(now_ms)
    [ -n "$t_die" ] || { grep -qE -- "$mark" "$d.err" && t_die=$t_end; }
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        left=$(ranks_of "$d")
        [ "$left" -eq 0 ] && break
        sleep 0.2
    done
    latest=$(cat "$d/checkpoints/latest" 2>/dev/null)
    local what="exit $rc after $(((t_end - t0) / 1000)) s; stdout: $(tail -c 300 "$d.out"); stderr: $(tail -c 900 "$d.err")"
    if [ -z "$t_die" ]; then
        fail "$name" "the rank never died (no /$mark/ on stderr): $what"
    elif [ $((t_end - t0)) -ge $((LIMIT * 1000)) ]; then
        fail "$name" "hang: no exit in $LIMIT s: $what"
    elif [ "$rc" -ne "$want_rc" ]; then
        fail "$name" "want exit status $want_rc: $what"
    elif [ $((t_end - t_die)) -gt 30000 ]; then
        fail "$name" "the job took $((t_end - t_die)) ms after the death to exit (want at most 30 s): $what"
    elif ! grep -qE -- "$cause" "$d.out" "$d.err"; then
        fail "$name" "the output does not say /$cause/: $what"
    elif [ "$running" -ne 2 ]; then
        fail "$name" "pgrep saw $running ranks of the run while it ran (want 2): the process check cannot see them"
    elif [ "$left" -ne 0 ]; then
        fail "$name" "$left loom processes left running after the job ended: $(pgrep -af -- "--train.run_dir=$d")"
    elif [ "$latest" != "$want_latest" ] || ! "$LOOM" ckpt verify "$d/checkpoints/$latest" >"$d.verify" 2>&1; then
        fail "$name" "want latest = $want_latest, complete: latest '$latest': $(cat "$d.verify" 2>/dev/null)"
    else
        ok "$name"
        echo "# $name: exit $rc, $((t_end - t_die)) ms after the death"
    fi
}

dense=(-c configs/runs/debug.ini --train.steps=100 --train.threads=1 --parallel.dp=2 --checkpoint.every=2)
moe=(-c configs/runs/debug-moe.ini --train.steps=100 --train.threads=1 --parallel.dp=2 --parallel.ep=2
    --checkpoint.every=2)
killed='process rank %d with PID [0-9]+ on node [^ ]+ exited on signal 9 \(Killed\)'
# shellcheck disable=SC2059
LOOM_TEST_DIE=backward:5:1 die faults/backward_kill "LOOM_TEST_DIE: killing rank 1 at backward of step 5" 137 \
    "$(printf "$killed" 1)" step_00000004.h5 "${dense[@]}"
LOOM_TEST_DIE=backward:5:1:exit die faults/backward_exit "LOOM_TEST_DIE" 1 \
    '^\[rank 1\] [^ ]+: LOOM_TEST_DIE: a failure injected at backward of step 5$' step_00000004.h5 "${dense[@]}"
# shellcheck disable=SC2059
LOOM_TEST_DIE=alltoall:5:1 die faults/alltoall_kill "LOOM_TEST_DIE: killing rank 1 at alltoall of step 5" 137 \
    "$(printf "$killed" 1)" step_00000004.h5 "${moe[@]}"
LOOM_TEST_DIE=alltoall:5:0:exit die faults/alltoall_exit "LOOM_TEST_DIE" 1 \
    '^\[rank 0\] [^ ]+: LOOM_TEST_DIE: a failure injected at alltoall of step 5$' step_00000004.h5 "${moe[@]}"
LOOM_TEST_DIE=alltoall:5:1:input die faults/alltoall_input "LOOM_TEST_DIE" 2 \
    '^loom: error: LOOM_TEST_DIE: a bad input injected at alltoall of step 5$' step_00000004.h5 "${moe[@]}"
# mid-checkpoint: a run stopped after step 2 with a checkpoint, resumed, and rank 0 killed in step 4's
d="$tmp/faults/ckpt_kill"
mkdir -p "$tmp/faults"
launch 2 train "${dense[@]}" --train.run_dir="$d" --train.stop_after=2
if [ "$rc" -ne 0 ]; then
    fail faults/ckpt_kill "the first run: $(show)"
else
    # shellcheck disable=SC2059
    LOOM_CKPT_KILL_AT=tensors die faults/ckpt_kill "LOOM_CKPT_KILL_AT=tensors: killing rank 0" 137 \
        "$(printf "$killed" 0)" step_00000002.h5 "${dense[@]}" --checkpoint.resume=auto
fi

# ---------------------------------------------------------------------------------------------------
# a disk that fills up during a checkpoint

# fill NAME NP WANT ENV...: 6 steps on NP ranks, a checkpoint every 2 into an 8 MB tmpfs, with the free-space
# check fooled (and ENV); WANT: the warning of the skipped checkpoint (an extended regex)
fill() {
    local name=$1 np=$2 want=$3
    shift 3
    local m="$tmp/$name-disk" d="$tmp/$name"
    tmpfs_at "$m" 8m "$name" || return
    env LOOM_TEST_CKPT_FREE_BYTES=1000000000 "$@" timeout -k 10 "$LIMIT" scripts/launch.sh -np "$np" "$LOOM" train \
        -c configs/runs/debug.ini --train.steps=6 --train.threads=1 --parallel.dp="$np" --train.micro_batch=1 \
        --checkpoint.every=2 --checkpoint.dir="$m/ck" --train.run_dir="$d" >"$d.out" 2>"$d.err"
    local rc=$? files latest steps
    files=$(ls "$m/ck" 2>&1 | tr '\n' ' ')
    latest=$(cat "$m/ck/latest" 2>/dev/null)
    steps=$(grep -c '"step"' "$d/metrics.jsonl" 2>/dev/null)
    local what="exit $rc, files '$files': $(grep warning "$d.out" | head -2) $(tail -c 600 "$d.err")"
    if [ "$rc" -ne 0 ] || [ "$steps" != 6 ]; then
        fail "$name" "want every rank to finish the 6 steps with exit 0 ($steps in metrics.jsonl): $what"
    elif ! grep -qE -- "^loom: warning: checkpoint step_00000004\.h5 skipped: $want" "$d.out"; then
        fail "$name" "want a warning 'checkpoint step_00000004.h5 skipped: $want': $what"
    elif [ "$files" != "latest step_00000002.h5 " ] || [ "$latest" != step_00000002.h5 ]; then
        fail "$name" "want only latest = step_00000002.h5 and that file left (no partial file): $what"
    elif ! "$LOOM" ckpt verify "$m/ck/step_00000002.h5" >"$d.verify" 2>&1; then
        fail "$name" "the previous checkpoint does not verify: $(cat "$d.verify")"
    else
        ok "$name"
    fi
}
tmpname='[^ ]+/ck/step_00000004\.h5\.tmp'
fill faults/disk_full_reserve 2 "reserving [0-9.]+ MB for $tmpname: No space left on device \(rank 0\); no partial file is left, latest stays step_00000002\.h5$"
fill faults/disk_full_reserve_4_ranks 4 "reserving [0-9.]+ MB for $tmpname: No space left on device \(rank 0\); no partial file is left, latest stays step_00000002\.h5$"
fill faults/disk_full_write 2 "writing /[^ ]+ to $tmpname: No space left on device \(rank [01]\); no partial file is left, latest stays step_00000002\.h5$" \
    LOOM_TEST_CKPT_NO_RESERVE=1

# a full run folder (a 16 KiB tmpfs, no checkpoints): the run stops when metrics.jsonl cannot be written,
# with exit 1 naming the file and the cause, on every rank
m="$tmp/metrics-disk"
if tmpfs_at "$m" 16k faults/metrics_full; then
    launch 2 train -c configs/runs/debug.ini --train.steps=100000 --train.threads=1 --parallel.dp=2 \
        --train.run_dir="$m/run"
    if timed_out; then
        fail faults/metrics_full "no exit in $LIMIT s: $(show)"
    elif [ "$rc" -ne 1 ] || ! grep -qE "^\[rank 0\] [^ ]+: .*writing [^ ]+/run/metrics\.jsonl: No space left on device$" "$tmp/err"; then
        fail faults/metrics_full "want exit 1 and '[rank 0] ...: writing .../metrics.jsonl: No space left on device': $(show)"
    elif [ -n "$(pgrep -f -- "--train.run_dir=$m/run( |$)")" ]; then
        fail faults/metrics_full "loom processes left running"
    else
        ok faults/metrics_full
    fi
fi

# ---------------------------------------------------------------------------------------------------
# a read-only run folder

ro="$tmp/ro"
if tmpfs_at "$ro" 1m faults/readonly_start; then
    mkdir "$ro/run"
    mount -o remount,ro "$ro"
    RUN_DIR="$ro/run" expect_launch_error faults/readonly_start 2 train.run_dir \
        "^loom: error: train.run_dir: [^ ]+/ro/run is not writable \(Read-only file system\)$" \
        -c configs/runs/debug.ini --parallel.dp=2
    RUN_DIR="$ro/run/new" expect_launch_error faults/readonly_start_new 2 train.run_dir \
        "^loom: error: train.run_dir: cannot create [^ ]+/ro/run/new \(Read-only file system\)$" \
        -c configs/runs/debug.ini --parallel.dp=2
fi

# turned read-only during the run, between two checkpoints (right after one), through a read-only bind mount
d="$tmp/ro-mid"
mkdir -p "$d"
timeout -k 10 "$LIMIT" scripts/launch.sh -np 2 "$LOOM" train -c configs/runs/debug.ini --train.steps=100000 \
    --train.threads=1 --parallel.dp=2 --checkpoint.every=50 --train.run_dir="$d" >"$d.out" 2>"$d.err" &
bg=$!
before=""
for _ in $(seq 800); do
    before=$(cat "$d/checkpoints/latest" 2>/dev/null)
    [ -n "$before" ] && break
    sleep 0.05
done
stop_run() { kill -TERM "$(pgrep -f -- "^$LOOM train .*--train.run_dir=$d( |$)" | tail -1)" 2>/dev/null; wait "$bg"; }
if [ -z "$before" ]; then
    fail faults/readonly_midrun "no checkpoint was written to start from: $(tail -c 300 "$d.err")"
    stop_run
elif ! mount --bind "$d" "$d" 2>/dev/null; then
    echo "skip faults/readonly_midrun: cannot bind-mount here (needs root)"
    stop_run
else
    mounts=("$d" "${mounts[@]}")
    for _ in $(seq 50); do mount -o remount,bind,ro "$d" 2>/dev/null && break; sleep 0.02; done
    before=$(cat "$d/checkpoints/latest")
    for _ in $(seq 800); do
        grep -q "skipped" "$d.out" && break
        sleep 0.05
    done
    stop_run
    rc=$?
    latest=$(cat "$d/checkpoints/latest" 2>/dev/null)
    what="exit $rc, latest '$latest' (before: '$before'): $(grep -E 'warning|stopped' "$d.out" | head -3) $(tail -c 400 "$d.err")"
    if ! touch "$d/probe" 2>/dev/null && [ "$rc" -eq 0 ] &&
        grep -qE "^loom: warning: checkpoint step_[0-9]+\.h5 skipped: creating [^ ]+/checkpoints/step_[0-9]+\.h5\.tmp: Read-only file system \(rank [01]\); no partial file is left, latest stays $before$" "$d.out" &&
        grep -q "stopped by a signal after step [0-9]* (no checkpoint: it was skipped)" "$d.out" &&
        [ "$latest" = "$before" ] && "$LOOM" ckpt verify "$d/checkpoints/$latest" >/dev/null 2>&1; then
        ok faults/readonly_midrun
    else
        fail faults/readonly_midrun "want the checkpoint skipped naming the file and 'Read-only file system', exit 0 after SIGTERM, latest kept: $what"
    fi
fi
[ "$failures" -eq 0 ]
