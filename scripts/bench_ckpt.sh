#!/usr/bin/env bash
# scripts/bench_ckpt.sh — part of `make bench`: HDF5 checkpoint write and read throughput of `loom train`
# against dd on the same folder, in the same run.
#   1. write: runs with checkpoint.every=1 for 3 steps (3 checkpoints each) on 1 rank, dp2 and tp2; the
#      seconds are time.checkpoint of metrics.jsonl (loom_ckpt_save: collective write, fsync, rename).
#      Peers, timed around the command: `dd if=/dev/zero bs=16M conv=fsync` of the same byte count after
#      each loom run, twice (after a pause, then again at once: see below), and `cp` + fsync of the
#      checkpoint (cold read + write).
#   2. read: a resume (checkpoint.resume, one step) on 1 rank, dp2 and tp2, the load seconds from the
#      "resumed from ... in X s" line, against `dd if=FILE of=/dev/null bs=16M` before each resume, both
#      after dropping the page cache when this user may (root); also the wall time of the resumed run
#      against a fresh start that runs one step, and the load time against the resumed run's step.
# Every measurement is repeated REPEATS times (default 3, interleaved) and the median is reported.
#
# Pauses: on VMs with free page reporting (Firecracker, virtio-balloon) memory the guest frees goes back to
# the host about 2 s later, and touching it again costs a host page fault per page; writing 500 MB into the
# page cache then takes several times longer than into memory freed a moment ago. A checkpoint always fills
# fresh page cache (the older checkpoints stay), so every measurement starts SETTLE seconds (default 2) after
# the last big free: loom and its peer `dd` alike. The second dd, run at once after deleting the first dd's
# file, shows the best case (recycled memory).
# The files go to a temporary folder under BENCH_CKPT_DIR (default build/, the disk of the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${REPEATS:-3}
settle=${SETTLE:-2}
parent=${BENCH_CKPT_DIR:-build}
mkdir -p "$parent"
work=$(cd "$(mktemp -d "$parent/bench_ckpt.XXXXXX")" && pwd)
trap 'rm -rf "$work"' EXIT
res=$work/results.txt
: >"$res"

# ~42.7M parameters (tiny-mla widened: width 512, 8 layers, SwiGLU 2048, vocab 32000): 512 MB checkpoints;
# 16-token sequences, 2 per step, so the steps take a fraction of a second
model=(-c configs/runs/debug.ini --model.hidden_size=512 --model.num_layers=8 --model.intermediate_size=2048
       --model.vocab_size=32000 --train.seq_len=16 --train.micro_batch=1 --train.global_batch=2 --log.every=1000)
layouts=(1rank dp2 tp2)
declare -A np=([1rank]=1 [dp2]=2 [tp2]=2)
declare -A par=([1rank]=--parallel.dp=1 [dp2]=--parallel.dp=2 [tp2]=--parallel.tp=2)
declare -A threads=([1rank]=2 [dp2]=1 [tp2]=1)

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.6f}')" "$1" "$2"; }
record() { echo "$1 $2" >>"$res"; }
settle() { sync; sleep "$settle"; }
cold=1
drop_cache() { # 0 when the page cache was dropped
    sync
    { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null
}
drop_cache || cold=0
cold_start() { drop_cache || true; sleep "$settle"; }
loom_run() { # layout, then train arguments; prints the output of rank 0
    local l=$1
    shift
    timeout 300 scripts/launch.sh -np "${np[$l]}" ./loom train "${model[@]}" "${par[$l]}" \
        --train.threads="${threads[$l]}" "$@"
}
dd_write() { # key: time a dd of $bytes with fsync into the folder, then delete it
    local t0 t1
    t0=$(now)
    dd if=/dev/zero of="$work/ddfile" bs=16M count="$bytes" iflag=count_bytes conv=fsync status=none
    t1=$(now)
    record "$1" "$(elapsed "$t0" "$t1")"
    rm -f "$work/ddfile"
}

echo "ckpt: tiny-mla widened to 42.7M parameters (width 512, 8 layers, SwiGLU 2048, vocab 32000), $repeats repeats"
echo "  folder: $work"
df -h "$work" | sed 's/^/  /'
if [ $cold = 1 ]; then
    echo "  page cache: dropped before every read"
else
    echo "  page cache: cannot drop it (not root): reads are from the page cache for loom and dd alike"
fi

# ---- write --------------------------------------------------------------------------------------
bytes=0
for rep in $(seq "$repeats"); do
    for l in "${layouts[@]}"; do
        run=$work/w_$l
        rm -rf "$run"
        settle
        loom_run "$l" --checkpoint.every=1 --checkpoint.keep=3 --train.steps=3 --train.run_dir="$run" >/dev/null
        bytes=$(stat -c %s "$run/checkpoints/step_00000003.h5")
        python3 - "$run/metrics.jsonl" "$l" >>"$res" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    print(f"write_{sys.argv[2]} {json.loads(line)['time']['checkpoint']}")
PY
        if [ "$l" = 1rank ]; then # the file cp copies; the last one is the one the reads resume from
            rm -rf "$work/src"
            mv "$run" "$work/src"
        else
            rm -rf "$run"
        fi
        settle
        dd_write write_dd
        dd_write write_dd_recycled
    done
    cold_start
    t0=$(now)
    cp "$work/src/checkpoints/step_00000003.h5" "$work/cpfile"
    sync "$work/cpfile"
    t1=$(now)
    record write_cp "$(elapsed "$t0" "$t1")"
    rm -f "$work/cpfile"
    echo "  write repeat $rep/$repeats done"
done

# ---- read ---------------------------------------------------------------------------------------
ckpt=$work/src/checkpoints/step_00000003.h5
sleep $((4 * settle)) # let the disk finish the write phase's writeback
for rep in $(seq "$repeats"); do
    for l in "${layouts[@]}"; do
        cold_start
        t0=$(now)
        dd if="$ckpt" of=/dev/null bs=16M status=none
        t1=$(now)
        record read_dd "$(elapsed "$t0" "$t1")"
        run=$work/r_$l
        rm -rf "$run"
        cold_start
        t0=$(now)
        out=$(loom_run "$l" --checkpoint.resume="$ckpt" --train.steps=4 --train.run_dir="$run")
        t1=$(now)
        load=$(sed -n 's/^loom train: resumed from .* in \([0-9.]*\) s$/\1/p' <<<"$out")
        [ -n "$load" ] || { echo "bench_ckpt: no 'resumed from' line in the output of the $l resume" >&2; exit 1; }
        record "read_$l" "$load"
        record "wall_resume_$l" "$(elapsed "$t0" "$t1")"
        record "step_$l" "$(python3 -c "import json, sys; print(json.loads(open(sys.argv[1]).readline())['time']['step'])" \
            "$run/metrics.jsonl")"
        rm -rf "$run"
        cold_start
        t0=$(now)
        loom_run "$l" --train.steps=1 --train.run_dir="$run" >/dev/null
        t1=$(now)
        record "wall_fresh_$l" "$(elapsed "$t0" "$t1")"
        rm -rf "$run"
    done
    echo "  read repeat $rep/$repeats done"
done

python3 - "$res" "$bytes" "$cold" <<'PY'
import collections, statistics, sys
vals = collections.defaultdict(list)
for line in open(sys.argv[1]):
    k, v = line.split()
    vals[k].append(float(v))
nbytes, cold = int(sys.argv[2]), sys.argv[3] == "1"
med = {k: statistics.median(v) for k, v in vals.items()}
gbs = lambda s: nbytes / s / 1e9
layouts = ["1rank", "dp2", "tp2"]
names = {"1rank": "1 rank (2 threads)", "dp2": "dp2 (2 ranks)", "tp2": "tp2 (2 ranks)"}
dd, ddr, cp = med["write_dd"], med["write_dd_recycled"], med["write_cp"]
print(f"\ncheckpoint file: {nbytes:,} bytes ({nbytes / 1e6:.1f} MB); GB = 1e9 bytes; medians")
print(f"write: time.checkpoint of {len(vals['write_1rank'])} checkpoints per layout; {len(vals['write_dd'])} dd runs "
      f"(one after each loom run); {len(vals['write_cp'])} cp runs\n")
print("| layout | loom write s | loom GB/s | dd GB/s | loom / dd | dd recycled-memory GB/s | loom / dd recycled "
      "| cp+fsync GB/s | loom / cp |")
print("|---|---|---|---|---|---|---|---|---|")
for l in layouts:
    w = med[f"write_{l}"]
    print(f"| {names[l]} | {w:.3f} | {gbs(w):.3f} | {gbs(dd):.3f} | {dd / w:.2f}x | {gbs(ddr):.3f} | {ddr / w:.2f}x "
          f"| {gbs(cp):.3f} | {cp / w:.2f}x |")
cache = "page cache dropped before each" if cold else "from the page cache (could not drop it)"
print(f"\nread ({cache}): {len(vals['read_1rank'])} resumes per layout, {len(vals['read_dd'])} dd runs (one before each)\n")
print("| layout | loom load s | loom GB/s | dd GB/s | loom / dd | resume wall s | fresh wall s "
      "| resume adds s | step s | load / step |")
print("|---|---|---|---|---|---|---|---|---|---|")
for l in layouts:
    r, rw, fw, st = med[f"read_{l}"], med[f"wall_resume_{l}"], med[f"wall_fresh_{l}"], med[f"step_{l}"]
    print(f"| {names[l]} | {r:.2f} | {gbs(r):.3f} | {gbs(med['read_dd']):.3f} | {med['read_dd'] / r:.2f}x "
          f"| {rw:.2f} | {fw:.2f} | {rw - fw:+.2f} | {st:.3f} | {r / st:.1f}x |")
print("\nspread (seconds: median, min - max)")
for k in ["write_1rank", "write_dp2", "write_tp2", "write_dd", "write_dd_recycled", "write_cp",
          "read_1rank", "read_dp2", "read_tp2", "read_dd"]:
    v = vals[k]
    print(f"  {k:<18} {med[k]:.3f}  {min(v):.3f} - {max(v):.3f}  (n = {len(v)})")
PY
