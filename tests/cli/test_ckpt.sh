#!/usr/bin/env bash
# tests/cli/test_ckpt.sh — HDF5 checkpoints from the command line (checkpoints/ckpt.c).
#
# Exact continuation: a 16-step run over a two-phase curriculum (two sources made with `loom data prep`; the
# phase switches, with the sequence length, at step 11) straight, and the same run stopped after step 8
# (--train.stop_after=8 writes a checkpoint) then resumed with --checkpoint.resume=auto in the same folder:
# every step's loss, gradient norm, learning rate, tokens, phase, sequence length and per-source losses
# bit-identical, metrics.jsonl holding steps 1..16 once each; the same for the tiny MoE model under dp2 ep2
# (router biases and expert loads bit-identical too).
#
# Reshard: the dense debug model written after step 4 under dp2 x tp2 x pp2 with ZeRO-1 (8 ranks) and resumed
# under 1 rank, dp4 and tp2 x pp2; the MoE model written under dp2 x tp2 x ep2 with ZeRO-1 and resumed under 1
# rank, dp4 x ep4 and dp2 x pp2 x ep2: steps 5..8 within 1e-5 relative of the uninterrupted single-process run
# (and the router biases within 1e-6). Each multi-rank write stays collective I/O (H5Pget_mpio_no_collective_cause
# after every tensor write); the control writes from double memory (LOOM_CKPT_TEST_MEMTYPE=double), a type
# conversion HDF5 must report as a fallback to independent I/O.
#
# init_from: a new run from the dense checkpoint's weights with lr 0 and one step writes a checkpoint whose
# /model equals the source's exactly (h5dump at 9 digits) while its optimizer step, step and tokens are those
# of one step (fresh optimizer and data position).
#
# Crash: a 2-rank run resumed from its step-2 checkpoint is killed (SIGKILL of rank 0 through the test hook
# LOOM_CKPT_KILL_AT) while writing the step-4 checkpoint: after the file is created, half-way through the
# tensors, after it is closed, after the rename; each time the job exits non-zero within the time limit,
# `latest` still names step_00000002.h5, and --checkpoint.resume=auto finishes the run with steps 3..4
# bit-identical to the uninterrupted run. A full disk (an 8 MB tmpfs): the checkpoint that does not fit is
# skipped with a warning and latest stays the previous one. Retention: with keep = 2 only the last two step files remain, and a
# release (checkpoint.release_every) stays linked in releases/.
#
# Bad input, exit 2 with a `loom: error:` line naming the file: a truncated checkpoint (also on 2 ranks: no
# hang), a text file, a wrong format name and a future version (made with h5py, skipped when it cannot be
# installed), a tensor of another shape (names the tensor, both shapes and model.intermediate_size), a missing
# tensor (model.num_layers), resume=auto with a `latest` naming nothing; the run folder it was to resume is left
# untouched (metrics.jsonl and config.ini byte-identical).
#
# Run from the repository root with ./loom built: bash tests/cli/test_ckpt.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom ckpt
LIMIT=120

# ---------------------------------------------------------------------------------------------------
# comparisons

cat >"$tmp/cmp.py" <<'EOF'
import json, math, sys

def rows(path):
    return [json.loads(l) for l in open(path)]

EXACT = ("loss", "grad_norm", "lr", "tokens", "phase", "seq_len", "source_loss", "router_bias", "expert_loads")

def exact(name, ref_path, got_path, first):
    """got (a resumed run's metrics) equal to ref at every step; steps 1..N once each"""
    ref, got = rows(ref_path), rows(got_path)
    problems = []
    if [r["step"] for r in got] != [r["step"] for r in ref]:
        problems.append(f"steps {[r['step'] for r in got]}, want {[r['step'] for r in ref]}")
    for r, g in zip(ref, got):
        for k in EXACT:
            if r.get(k) != g.get(k):
                problems.append(f"step {r['step']} {k} {g.get(k)!r}, uninterrupted {r.get(k)!r}")
    if not any(r["step"] > first and r.get("phase") != ref[0].get("phase") for r in ref) and "phase" in ref[0]:
        if name.startswith("ckpt/continue/dense"):
            problems.append("the curriculum never changed phase after the checkpoint")
    print(f"FAIL {name}: " + "; ".join(problems[:3]) if problems else f"ok {name}")

def close(name, ref_path, got_path, first):
    """steps first+1.. of ref against got, losses to 1e-5 relative, router biases to 1e-6"""
    ref = [r for r in rows(ref_path) if r["step"] > first]
    got = rows(got_path)
    problems = []
    if [r["step"] for r in got] != [r["step"] for r in ref]:
        problems.append(f"steps {[r['step'] for r in got]}, want {[r['step'] for r in ref]}")
    for r, g in zip(ref, got):
        d = abs(r["loss"] - g["loss"]) / abs(r["loss"])
        if not d <= 1e-5:
            problems.append(f"step {r['step']} loss {g['loss']!r}, uninterrupted {r['loss']!r} (relative {d:.2g})")
        for a, b in zip(r.get("router_bias", []), g.get("router_bias", [])):
            if any(not abs(x - y) <= 1e-6 for x, y in zip(a, b)):
                problems.append(f"step {r['step']} router_bias {b}, uninterrupted {a}")
    worst = max((abs(r["loss"] - g["loss"]) / abs(r["loss"]) for r, g in zip(ref, got)), default=math.nan)
    print(f"FAIL {name}: " + "; ".join(problems[:3]) if problems else f"ok {name}")
    print(f"# {name}: worst relative loss difference {worst:.3g}")

mode, name, a, b, first = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
try:
    (exact if mode == "exact" else close)(name, a, b, first)
except Exception as e:
    print(f"FAIL {name}: {e!r}")
EOF
compare() { verdicts "$tmp/cmp.py" "$@"; }

# ---------------------------------------------------------------------------------------------------
# exact continuation over a phase boundary: dense on 1 rank, MoE on dp2 ep2

t0=$SECONDS
make_prose "$tmp/web.txt" 8000
python3 -c "import sys; open(sys.argv[1], 'w').write(''.join(f'def f{k}(x):\n    return x * {k} + {k % 7}\n\n' for k in range(300)))" \
    "$tmp/code.txt"
for s in web code; do
    run data prep --tokenizer bytes --source "$s" --in "$tmp/$s.txt" --out "$tmp/data/$s" --frame-tokens 512
    [ "$rc" -eq 0 ] || fail "ckpt/prep_$s" "$(tail -c 400 "$tmp/err")"
done
for model in tiny-mla tiny-moe; do
    text_run_ini "$tmp/$model.ini" "$model" "$tmp/data/web" <<EOF
[train]
steps = 16
seq_len = 32
micro_batch = 1
threads = 1

[schedule]
warmup_tokens = 256

[source.code]
shards = $tmp/data/code

[curriculum]
phases = warm, mix

[phase.warm]
until = 1280
weights = web:0.8, code:0.2

[phase.mix]
weights = web:0.3, code:0.7
seq_len = 64
EOF
done

# continue NAME NP INI ARGS...: straight, then stopped after step 8 and resumed
continue_run() {
    local name=$1 np=$2 ini=$3
    shift 3
    local d="$tmp/cont-$name"
    launch "$np" train -c "$ini" "$@" --train.run_dir="$d/straight"
    [ "$rc" -eq 0 ] || { fail "ckpt/continue/$name" "the straight run: $(show)"; return; }
    launch "$np" train -c "$ini" "$@" --train.run_dir="$d/resumed" --checkpoint.every=100 --train.stop_after=8
    if [ "$rc" -ne 0 ] || [ ! -s "$d/resumed/checkpoints/step_00000008.h5" ] ||
        [ "$(cat "$d/resumed/checkpoints/latest" 2>/dev/null)" != step_00000008.h5 ]; then
        fail "ckpt/continue/$name" "the run stopped after step 8 left no checkpoint: $(show); $(ls "$d/resumed/checkpoints" 2>&1)"
        return
    fi
    launch "$np" train -c "$ini" "$@" --train.run_dir="$d/resumed" --checkpoint.resume=auto
    if [ "$rc" -ne 0 ] || ! grep -q "resumed from .*step_00000008.h5 (step 8" "$tmp/out"; then
        fail "ckpt/continue/$name" "the resumed run: $(show)"
        return
    fi
    compare exact "ckpt/continue/$name" "$d/straight/metrics.jsonl" "$d/resumed/metrics.jsonl" 8
}
continue_run dense 1 "$tmp/tiny-mla.ini"
continue_run moe_dp2_ep2 2 "$tmp/tiny-moe.ini" --parallel.dp=2 --parallel.ep=2
echo "# continuation: $((SECONDS - t0)) s"

# ---------------------------------------------------------------------------------------------------
# reshard: write under one layout, resume under others

t0=$SECONDS
# reshard NAME CONFIG WRITER_NP WRITER_ARGS -- LAYOUTS ("dp tp pp ep" each)
reshard() {
    local name=$1 cfg=$2 wnp=$3 wargs=$4
    shift 4
    local d="$tmp/reshard-$name" base=(train -c "$cfg" --train.steps=8 --train.global_batch=8 --train.micro_batch=1
        --train.threads=1)
    launch 1 "${base[@]}" --train.run_dir="$d/single"
    [ "$rc" -eq 0 ] || { fail "ckpt/reshard/$name/single" "$(show)"; return; }
    # shellcheck disable=SC2086
    launch "$wnp" "${base[@]}" $wargs --train.run_dir="$d/writer" --checkpoint.every=100 --train.stop_after=4
    local ck="$d/writer/checkpoints/step_00000004.h5"
    if [ "$rc" -ne 0 ] || [ ! -s "$ck" ]; then
        fail "ckpt/reshard/$name/write" "$wargs: $(show)"
        return
    fi
    ok "ckpt/reshard/$name/write"
    # collective I/O: every tensor write stayed collective (HDF5's no-collective cause); the control forces a
    # type conversion, which HDF5 must report
    if grep -q "tensor writes, all collective)" "$tmp/out" && ! grep -q "independent I/O" "$tmp/out"; then
        ok "ckpt/reshard/$name/collective_io"
    else
        fail "ckpt/reshard/$name/collective_io" "$(grep "checkpoint" "$tmp/out")"
    fi
    # shellcheck disable=SC2086
    LOOM_CKPT_TEST_MEMTYPE=double launch "$wnp" "${base[@]}" $wargs --train.run_dir="$d/convert" --checkpoint.every=100 \
        --train.stop_after=1
    if [ "$rc" -eq 0 ] && grep -q "fell back to independent I/O" "$tmp/out"; then
        ok "ckpt/reshard/$name/collective_io_control"
    else
        fail "ckpt/reshard/$name/collective_io_control" "a write from double memory was not reported: $(show)"
    fi
    for layout in "$@"; do
        read -r dp tp pp ep <<<"$layout"
        local np=$((dp * tp * pp)) label="ckpt/reshard/$name/dp${dp}_tp${tp}_pp${pp}_ep${ep}"
        launch "$np" "${base[@]}" --parallel.dp="$dp" --parallel.tp="$tp" --parallel.pp="$pp" --parallel.ep="$ep" \
            --train.run_dir="$d/r$dp$tp$pp$ep" --checkpoint.resume="$ck"
        if [ "$rc" -ne 0 ]; then
            fail "$label" "$(show)"
            continue
        fi
        compare close "$label" "$d/single/metrics.jsonl" "$d/r$dp$tp$pp$ep/metrics.jsonl" 4
    done
}
reshard dense configs/runs/debug.ini 8 "--parallel.dp=2 --parallel.tp=2 --parallel.pp=2 --parallel.zero=1" \
    "1 1 1 1" "4 1 1 1" "1 2 2 1"
reshard moe configs/runs/debug-moe.ini 4 "--parallel.dp=2 --parallel.tp=2 --parallel.ep=2 --parallel.zero=1" \
    "1 1 1 1" "4 1 1 4" "2 1 2 2"
echo "# reshard: $((SECONDS - t0)) s"

# ---------------------------------------------------------------------------------------------------
# init_from: weights only

t0=$SECONDS
src="$tmp/reshard-dense/writer/checkpoints/step_00000004.h5"
dump_model() { h5dump -m %.9g -g /model "$1" | sed 1d; }
attr() { h5dump -a "$2" "$1" | grep -o '(0): [0-9]*' | head -1 | cut -d' ' -f2; }
if [ ! -s "$src" ]; then
    fail ckpt/init_from "no dense checkpoint to start from (the reshard writer failed)"
else
    d="$tmp/init"
    run train -c configs/runs/debug.ini --train.steps=1 --train.threads=1 --schedule.lr=0 --schedule.min_lr=0 \
        --checkpoint.init_from="$src" --checkpoint.every=1 --train.run_dir="$d"
    got="$d/checkpoints/step_00000001.h5"
    if [ "$rc" -ne 0 ] || [ ! -s "$got" ]; then
        fail ckpt/init_from "$(show)"
    else
        problems=""
        cmp -s <(dump_model "$src") <(dump_model "$got") || problems+="/model differs from the source's; "
        [ "$(dump_model "$got" | grep -c DATASET)" -gt 10 ] || problems+="no datasets compared; "
        [ "$(attr "$src" /optim/step)" = 4 ] || problems+="the source's optimizer step is $(attr "$src" /optim/step), want 4; "
        [ "$(attr "$got" /optim/step)" = 1 ] || problems+="optimizer step $(attr "$got" /optim/step), want 1 (fresh); "
        [ "$(attr "$got" /step)" = 1 ] || problems+="step $(attr "$got" /step), want 1; "
        [ "$(attr "$got" /tokens)" = 256 ] || problems+="tokens $(attr "$got" /tokens), want 256 (one step from 0); "
        [ "$(attr "$got" /data/sample)" = 4 ] || problems+="data sample $(attr "$got" /data/sample), want 4; "
        [ -z "$problems" ] && ok ckpt/init_from || fail ckpt/init_from "$problems"
        # the control: another checkpoint's weights differ
        ! cmp -s <(dump_model "$src") <(dump_model "$tmp/cont-dense/resumed/checkpoints/step_00000008.h5") &&
            ok ckpt/init_from/control || fail ckpt/init_from/control "the weight comparison cannot tell checkpoints apart"
    fi
fi
echo "# init_from: $((SECONDS - t0)) s"

# ---------------------------------------------------------------------------------------------------
# crash while writing, retention, releases

t0=$SECONDS
cbase=(train -c configs/runs/debug.ini --train.steps=6 --train.threads=1 --parallel.dp=2 --checkpoint.every=2)
launch 2 "${cbase[@]}" --train.run_dir="$tmp/crash-ref"
[ "$rc" -eq 0 ] || fail ckpt/crash/reference "$(show)"
for point in created tensors closed renamed; do
    d="$tmp/crash-$point"
    launch 2 "${cbase[@]}" --train.run_dir="$d" --train.stop_after=2
    [ "$rc" -eq 0 ] || { fail "ckpt/crash/$point" "the first run: $(show)"; continue; }
    t1=$SECONDS
    LOOM_CKPT_KILL_AT=$point launch 2 "${cbase[@]}" --train.run_dir="$d" --checkpoint.resume=auto
    crc=$rc
    latest=$(cat "$d/checkpoints/latest" 2>/dev/null)
    if [ $((SECONDS - t1)) -ge "$LIMIT" ]; then
        fail "ckpt/crash/$point" "the killed job hung ($LIMIT s)"
    elif [ "$crc" -eq 0 ] || [ "$latest" != step_00000002.h5 ] || ! grep -q "LOOM_CKPT_KILL_AT=$point" "$tmp/err"; then
        fail "ckpt/crash/$point" "want a non-zero exit and latest = step_00000002.h5; exit $crc, latest '$latest': $(show)"
    else
        ok "ckpt/crash/$point/latest_kept"
        launch 2 "${cbase[@]}" --train.run_dir="$d" --checkpoint.resume=auto
        if [ "$rc" -ne 0 ] || ! grep -q "resumed from .*step_00000002.h5" "$tmp/out"; then
            fail "ckpt/crash/$point/resume" "$(show)"
        else
            compare exact "ckpt/crash/$point/resume" "$tmp/crash-ref/metrics.jsonl" "$d/metrics.jsonl" 2
        fi
    fi
done
# retention: keep = 2 over 6 steps with a checkpoint every step; a release every 512 tokens (2 steps of 256)
d="$tmp/retain"
run train -c configs/runs/debug.ini --train.steps=6 --train.threads=1 --checkpoint.every=1 --checkpoint.keep=2 \
    --checkpoint.release_every=512 --train.run_dir="$d"
files=$(cd "$d/checkpoints" 2>/dev/null && ls step_*.h5 | tr '\n' ' ')
releases=$(cd "$d/checkpoints/releases" 2>/dev/null && ls | tr '\n' ' ')
if [ "$rc" -eq 0 ] && [ "$files" = "step_00000005.h5 step_00000006.h5 " ] &&
    [ "$releases" = "step_00000002.h5 step_00000004.h5 step_00000006.h5 " ] &&
    [ "$(cat "$d/checkpoints/latest")" = step_00000006.h5 ]; then
    ok ckpt/retention
else
    fail ckpt/retention "want step 5 and 6 kept, releases at steps 2, 4, 6: got '$files', releases '$releases': $(show)"
fi
# a full disk: checkpoints into an 8 MB tmpfs (a checkpoint of the debug model is 5.3 MB): the first is
# written, the next ones are skipped with a warning naming the space, latest stays the first, the run ends 0
small="$tmp/small"
mkdir -p "$small"
if mount -t tmpfs -o size=8m tmpfs "$small" 2>/dev/null; then
    run train -c configs/runs/debug.ini --train.steps=6 --train.threads=1 --checkpoint.every=2 \
        --checkpoint.dir="$small/ck" --train.run_dir="$tmp/full-disk"
    if [ "$rc" -eq 0 ] && grep -q "checkpoint step_00000004.h5 skipped: it needs about .* MB free (no space left on the device); latest stays step_00000002.h5" "$tmp/out" &&
        [ "$(cat "$small/ck/latest")" = step_00000002.h5 ] && [ "$(ls "$small/ck" | tr '\n' ' ')" = "latest step_00000002.h5 " ]; then
        ok ckpt/full_disk
    else
        fail ckpt/full_disk "exit $rc, $(ls "$small/ck" 2>&1 | tr '\n' ' '): $(tail -c 400 "$tmp/out")"
    fi
    umount "$small"
else
    echo "skip ckpt/full_disk: cannot mount a small tmpfs here (needs root)"
fi
echo "# crash and retention: $((SECONDS - t0)) s"

# ---------------------------------------------------------------------------------------------------
# bad checkpoints: exit 2, one line naming the file, the run folder untouched

t0=$SECONDS
good="$tmp/cont-dense/resumed/checkpoints/step_00000008.h5"
victim="$tmp/cont-dense/straight"
cp "$victim/metrics.jsonl" "$tmp/metrics.before"
cp "$victim/config.ini" "$tmp/config.before"
# bad NAME NP MUST PATH ARGS...: resuming `victim` from PATH must exit 2 with MUST in the error line
bad() {
    local name=$1 np=$2 must=$3 path=$4
    shift 4
    launch "$np" train -c "$tmp/tiny-mla.ini" --train.run_dir="$victim" --checkpoint.resume="$path" "$@"
    if timed_out; then
        fail "ckpt/error/$name" "hang ($LIMIT s)"
    elif [ "$rc" -ne 2 ] || ! grep -q "^loom: error: .*$must" "$tmp/err"; then
        fail "ckpt/error/$name" "want exit 2 and 'loom: error: ...$must': $(show)"
    elif ! cmp -s "$victim/metrics.jsonl" "$tmp/metrics.before" || ! cmp -s "$victim/config.ini" "$tmp/config.before"; then
        fail "ckpt/error/$name" "the run folder was changed"
    else
        ok "ckpt/error/$name"
    fi
}
if [ ! -s "$good" ]; then
    fail ckpt/error "no checkpoint to damage (the continuation run failed)"
else
    head -c $(($(stat -c %s "$good") / 2)) "$good" >"$tmp/truncated.h5"
    bad truncated 1 "truncated.h5" "$tmp/truncated.h5"
    bad truncated_2_ranks 2 "truncated.h5" "$tmp/truncated.h5" --parallel.dp=2
    echo "not a checkpoint" >"$tmp/text.h5"
    bad not_hdf5 1 "text.h5: not an HDF5 file" "$tmp/text.h5"
    bad missing_file 1 "nothing.h5: cannot read" "$tmp/nothing.h5"
    bad shape 1 "layers.0.mlp.gate_proj.weight is \[384, 128\] in the checkpoint, \[192, 128\].*model.intermediate_size" \
        "$good" --model.intermediate_size=192
    bad missing_tensor 1 "tensor /model/layers\.[0-9]*\..* is missing (model.num_layers is [0-9]* there, 5 here)" \
        "$good" --model.num_layers=5
    mkdir -p "$tmp/nolatest/checkpoints" && echo "../elsewhere.h5" >"$tmp/nolatest/checkpoints/latest"
    bad latest_bad 1 "latest: does not name a checkpoint" auto --checkpoint.dir="$tmp/nolatest/checkpoints"
    if python3 -c "import h5py" 2>/dev/null || pip install -q h5py >/dev/null 2>&1; then
        cp "$good" "$tmp/format.h5" && cp "$good" "$tmp/version.h5"
        python3 - "$tmp" <<'EOF'
import sys, h5py, numpy as np
d = sys.argv[1]
with h5py.File(f"{d}/format.h5", "r+") as f:
    f.attrs["format"] = np.bytes_("other-format")
with h5py.File(f"{d}/version.h5", "r+") as f:
    f.attrs["version"] = np.int32(2)
EOF
        bad wrong_format 1 'format is "other-format"' "$tmp/format.h5"
        bad future_version 1 "format version 2; this build reads versions 1..1" "$tmp/version.h5"
    else
        echo "skip ckpt/error/wrong_format: h5py cannot be installed"
        echo "skip ckpt/error/future_version: h5py cannot be installed"
    fi
fi
echo "# errors: $((SECONDS - t0)) s"

[ "$failures" -eq 0 ]
