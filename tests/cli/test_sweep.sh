#!/usr/bin/env bash
# tests/cli/test_sweep.sh — scripts/sweep and scripts/plot_losses from the command line: a 2 x 2 grid on the
# debug config gives four run folders with the grid's overrides in their config.ini, results.csv and
# results.md with one row per run, and losses.png; a rerun trains nothing (a stand-in loom that would
# fail is never called); an incomplete run is kept aside and trained again; a folder of other settings
# stops the sweep; a bad override records failed runs and exits non-zero; `|`-separated values with
# commas (phase weights) on two sources with held-out shards give per-source held-out losses, or training
# losses marked as such without eval; one run under mpirun; plot_losses alone. Without matplotlib (and
# no way to install it) the PNG checks print `skip` lines.
# Run from the repository root with ./loom built: bash tests/cli/test_sweep.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom sweep

SWEEP=scripts/sweep
PLOT=scripts/plot_losses
DEBUG=configs/runs/debug.ini
GRID=(--base "$DEBUG" --set train.steps=3 --grid train.seed=1,2 --grid schedule.lr=1e-3,2e-3 --launcher none --quiet)

# sweep ARGS...: runs scripts/sweep; exit status in $rc, stdout in $tmp/out, stderr in $tmp/err
sweep() {
    "$SWEEP" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}
show() { echo "exit status $rc; stdout: $(tail -c 600 "$tmp/out"); stderr: $(tail -c 600 "$tmp/err")"; }

# png NAME FILE: FILE starts with the PNG signature; a skip line when matplotlib could not be had
png() {
    if grep -q "matplotlib is missing\|could not install matplotlib\|does not import" "$tmp/err"; then
        echo "skip $1: matplotlib is not installed and could not be installed: $(grep matplotlib "$tmp/err" | tail -1)"
    elif [ -f "$2" ] && [ "$(head -c 8 "$2" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]; then
        ok "$1"
    else
        fail "$1" "$2 is not a PNG ($( [ -f "$2" ] && head -c 8 "$2" | od -An -c | tr -s ' ' || echo missing)); $(show)"
    fi
}

# pycheck NAME SCRIPT ARGS...: runs python3 SCRIPT ARGS; it prints nothing when the check holds, else why
pycheck() {
    local name=$1 script=$2
    shift 2
    local why
    why=$(python3 -c "$script" "$@" 2>&1)
    if [ -z "$why" ]; then ok "$name"; else fail "$name" "$why"; fi
}

nlines() { if [ -f "$1" ]; then wc -l <"$1" | tr -d ' '; else echo 0; fi; }

# ---------------------------------------------------------------------------------------------------
# a 2 x 2 grid on the debug config

S=$tmp/s
sweep "${GRID[@]}" --out "$S"
if [ "$rc" -eq 0 ]; then ok sweep/exit_status; else fail sweep/exit_status "$(show)"; fi

runs=$(find "$S" -mindepth 1 -maxdepth 1 -type d -name 'run-*' | sort)
complete=0
for d in $runs; do [ "$(nlines "$d/metrics.jsonl")" -eq 3 ] && complete=$((complete + 1)); done
if [ "$(echo "$runs" | grep -c .)" -eq 4 ] && [ "$complete" -eq 4 ]; then
    ok sweep/four_runs
else
    fail sweep/four_runs "want 4 run folders with 3 metrics lines each, got $complete complete of: $(echo $runs)"
fi

# every run's resolved config holds its own grid values, and the table names the same ones
CHECK_TABLE=$(cat <<'PY'
import csv, math, os, re, sys
d = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(d, "results.csv"))))
if len(rows) != 4: sys.exit(f"want 4 data rows, got {len(rows)}: {rows}")
for k in ("run", "train.seed", "schedule.lr", "status", "exit_status", "tokens", "final_loss"):
    if k not in rows[0]: sys.exit(f"no column {k}: {list(rows[0])}")
pairs = sorted((r["train.seed"], float(r["schedule.lr"])) for r in rows)
if pairs != [("1", 1e-3), ("1", 2e-3), ("2", 1e-3), ("2", 2e-3)]: sys.exit(f"grid values {pairs}")
for r in rows:
    loss = float(r["final_loss"]) if re.fullmatch(r"[-+0-9.eE]+", r["final_loss"]) else float("nan")
    if not (math.isfinite(loss) and 0 < loss < 20): sys.exit(f"{r['run']}: final_loss {r['final_loss']!r}")
    if r["status"] != sys.argv[2] or r["exit_status"] != "0": sys.exit(f"{r['run']}: status {r['status']} exit {r['exit_status']}, want {sys.argv[2]} 0")
    if r["tokens"] != "768": sys.exit(f"{r['run']}: tokens {r['tokens']}, want 3 x 4 x 64")
    cfg = open(os.path.join(d, r["run"], "config.ini")).read()
    seed = re.search(r"(?m)^seed = (\S+)", cfg).group(1)
    lr = float(re.search(r"(?ms)^\[schedule\].*?^lr = (\S+)", cfg).group(1))
    if seed != r["train.seed"] or lr != float(r["schedule.lr"]):
        sys.exit(f"{r['run']}: config.ini has seed {seed} lr {lr}, the table {r['train.seed']} {r['schedule.lr']}")
PY
)
pycheck sweep/results_csv "$CHECK_TABLE" "$S" ok

# a Markdown table: header, separator, 4 rows, the same number of cells in each
pycheck sweep/results_md '
import re, sys
lines = [l.rstrip("\n") for l in open(sys.argv[1]) if l.startswith("|")]
if len(lines) != 6: sys.exit(f"want header, separator and 4 rows, got {len(lines)} table lines")
if not re.fullmatch(r"\|(:?-{3,}:?\|)+", lines[1]): sys.exit(f"separator line {lines[1]!r}")
cells = [len(re.split(r"(?<!\\)\|", l)) for l in lines]
if len(set(cells)) != 1: sys.exit(f"rows with different cell counts {cells}")
if "train.seed" not in lines[0] or "schedule.lr" not in lines[0]: sys.exit(f"header {lines[0]!r}")
if sum(" ok " in l for l in lines[2:]) != 4: sys.exit("want 4 rows with status ok")
' "$S/results.md"

png sweep/losses_png "$S/losses.png"
if grep -q "$S/results.csv" "$tmp/out" && grep -q "$S/results.md" "$tmp/out" \
    && { grep -q "$S/losses.png" "$tmp/out" || grep -q "no plot" "$tmp/err"; }; then
    ok sweep/prints_paths
else
    fail sweep/prints_paths "the end of the output should name results.csv, results.md and losses.png: $(show)"
fi

# ---------------------------------------------------------------------------------------------------
# a rerun reuses the complete runs: a stand-in loom that leaves a mark and fails is never called

cat >"$tmp/fake-loom" <<EOF
#!/bin/sh
touch "$tmp/fake-called"
exit 1
EOF
chmod +x "$tmp/fake-loom"
before=$(cat "$S"/run-*/metrics.jsonl | cksum)
start=$SECONDS
sweep "${GRID[@]}" --out "$S" --loom "$tmp/fake-loom"
took=$((SECONDS - start))
nruns=$(find "$S" -mindepth 1 -maxdepth 1 -type d -name 'run-*' | grep -c .)
if [ "$rc" -eq 0 ] && [ ! -e "$tmp/fake-called" ] && [ "$nruns" -eq 4 ] && [ "$took" -le 15 ] \
    && [ "$(cat "$S"/run-*/metrics.jsonl | cksum)" = "$before" ]; then
    ok sweep/rerun_reuses
else
    fail sweep/rerun_reuses "loom called: $([ -e "$tmp/fake-called" ] && echo yes || echo no), $nruns run folders, ${took}s; $(show)"
fi
pycheck sweep/rerun_table "$CHECK_TABLE" "$S" reused

# an incomplete run (a sweep stopped part way) is kept aside and trained again; the others are reused
r2=$(find "$S" -mindepth 1 -maxdepth 1 -type d -name 'run-002-*' | head -1)
head -1 "$r2/metrics.jsonl" >"$tmp/partial" && cp "$tmp/partial" "$r2/metrics.jsonl"
sweep "${GRID[@]}" --out "$S"
statuses=$(python3 -c 'import csv,sys; print(" ".join(r["status"] for r in csv.DictReader(open(sys.argv[1]))))' "$S/results.csv" 2>&1)
if [ "$rc" -eq 0 ] && [ "$(nlines "$r2/metrics.jsonl")" -eq 3 ] && [ "$(nlines "$r2.incomplete-1/metrics.jsonl")" -eq 1 ] \
    && [ "$statuses" = "reused ok reused reused" ]; then
    ok sweep/incomplete_rerun
else
    fail sweep/incomplete_rerun "statuses '$statuses', $r2: $(nlines "$r2/metrics.jsonl") lines, kept: $(ls -d "$S"/*incomplete* 2>&1); $(show)"
fi

# a folder of the same name holding other settings stops the sweep before anything runs
before=$(find "$S" | sort | cksum)
sweep --base "$DEBUG" --set train.steps=4 --grid train.seed=1,2 --grid schedule.lr=1e-3,2e-3 --launcher none --quiet --out "$S"
if [ "$rc" -eq 2 ] && grep -q "other settings" "$tmp/err" && [ "$(find "$S" | sort | cksum)" = "$before" ]; then
    ok sweep/other_settings_refused
else
    fail sweep/other_settings_refused "want exit status 2 and nothing changed; $(show)"
fi

# ---------------------------------------------------------------------------------------------------
# failed runs: recorded with their exit status and loom's error line; the sweep goes on and exits non-zero

F=$tmp/f
sweep --base "$DEBUG" --set train.steps=2 --grid model.hiden_size=1,2 --launcher none --quiet --out "$F"
pycheck sweep/failed_runs '
import csv, sys
rc = int(sys.argv[2])
if rc == 0: sys.exit("the sweep exited 0 with failed runs")
rows = list(csv.DictReader(open(sys.argv[1])))
if len(rows) != 2: sys.exit(f"want 2 rows, got {rows}")
for r in rows:
    if r["status"] != "failed" or r["exit_status"] != "2" or "hiden_size" not in r["error"]:
        sys.exit(f"row {r}")
' "$F/results.csv" "$rc"
if grep -c '| failed |' "$F/results.md" 2>/dev/null | grep -qx 2; then
    ok sweep/failed_md
else
    fail sweep/failed_md "results.md: $(cat "$F/results.md" 2>&1)"
fi

# bad arguments: exit status 2, nothing created
sweep --base "$DEBUG" --grid train.seed --out "$tmp/bad"
if [ "$rc" -eq 2 ] && [ ! -e "$tmp/bad" ]; then ok sweep/bad_grid; else fail sweep/bad_grid "--grid train.seed: $(show)"; fi

# ---------------------------------------------------------------------------------------------------
# two sources with held-out shards: phase weights with commas in them, separated by |

python3 -c '
import random, sys
r = random.Random(7)
vocab = {"web": "the a cat dog sat ran on in green field house river town".split(),
         "stem": "0 1 2 3 4 5 6 7 8 9 + - = x y sum proof".split()}
for src, words in vocab.items():
    for split, n in (("train", 2500), ("heldout", 400)):
        open(f"{sys.argv[1]}/{src}-{split}.txt", "w").write(" ".join(r.choice(words) for _ in range(n)) + "\n")
' "$tmp"
prep_ok=1
for src in web stem; do
    for split in train heldout; do
        "$LOOM" data prep --tokenizer bytes --source $src --in "$tmp/$src-$split.txt" --out "$tmp/d/$src-$split" \
            >/dev/null 2>"$tmp/err" || { prep_ok=0; fail sweep/sources_data "loom data prep: $(cat "$tmp/err")"; }
    done
done
cat >"$tmp/mix.ini" <<EOF
include = $PWD/configs/models/tiny-mla.ini
[train]
steps = 6
seq_len = 64
micro_batch = 2
global_batch = 4
threads = 2
[source.web]
shards = $tmp/d/web-train
heldout = $tmp/d/web-heldout
[source.stem]
shards = $tmp/d/stem-train
heldout = $tmp/d/stem-heldout
[curriculum]
phases = a, b
[phase.a]
until = 768
weights = web:0.5, stem:0.5
[phase.b]
weights = web:0.5, stem:0.5
[eval]
every = 3
sequences = 2
[log]
every = 3
peak_tflops = 0.1
EOF
if [ "$prep_ok" -eq 1 ]; then
    M=$tmp/m
    sweep --base "$tmp/mix.ini" --grid 'phase.b.weights=web:0.9,stem:0.1|web:0.1,stem:0.9' --grid eval.every=3,0 \
        --launcher none --quiet --out "$M"
    if [ "$rc" -eq 0 ]; then ok sweep/sources_exit_status; else fail sweep/sources_exit_status "$(show)"; fi
    SOURCES_TABLE=$(cat <<'PY'
import csv, os, re, sys
d = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(d, "results.csv"))))
if len(rows) != 4: sys.exit(f"want 4 rows, got {len(rows)}")
got = sorted((r["phase.b.weights"], r["eval.every"]) for r in rows)
want = sorted((w, e) for w in ("web:0.9,stem:0.1", "web:0.1,stem:0.9") for e in ("3", "0"))
if got != want: sys.exit(f"grid values {got}")
for r in rows:
    for s in ("web", "stem"):
        if s not in r or f"{s} from" not in r: sys.exit(f"no column {s} / {s} from: {list(r)}")
        want_from = "eval" if r["eval.every"] == "3" else "train"
        if r[f"{s} from"] != want_from: sys.exit(f"{r['run']}: {s} from {r[f'{s} from']!r}, want {want_from}")
        if not 0 < float(r[s]) < 20: sys.exit(f"{r['run']}: {s} loss {r[s]}")
    cfg = open(os.path.join(d, r["run"], "config.ini")).read()
    w = re.search(r"(?ms)^\[phase\.b\].*?^weights = ([^\n]*)", cfg).group(1)
    if [float(x) for x in re.findall(r"[0-9.]+", w)] != [float(x) for x in re.findall(r"[0-9.]+", r["phase.b.weights"])]:
        sys.exit(f"{r['run']}: config.ini phase.b weights {w!r}, the table {r['phase.b.weights']!r}")
md = open(os.path.join(d, "results.md")).read()
marks = sum(l.count(" †") for l in md.splitlines() if l.startswith("|"))
if marks != 4 or "web held-out" not in md:
    sys.exit(f"results.md should mark the 4 training losses of the runs without eval with a dagger: {marks} marks")
PY
)
    pycheck sweep/sources_table "$SOURCES_TABLE" "$M"
    png sweep/sources_png "$M/losses.png"
fi

# ---------------------------------------------------------------------------------------------------
# one run under mpirun, and plot_losses on its own

P=$tmp/p
sweep --base "$DEBUG" --set train.steps=2 --grid train.seed=5 --launcher mpirun --np 1 --quiet --out "$P"
root_flags=1
[ "$(id -u)" -eq 0 ] && ! grep -q -- "mpirun --allow-run-as-root --oversubscribe -np 1" "$tmp/out" && root_flags=0
if [ "$rc" -eq 0 ] && [ "$root_flags" -eq 1 ] && grep -q ',ok,0,2,' "$P/results.csv" 2>/dev/null; then
    ok sweep/mpirun
else
    fail sweep/mpirun "results: $(cat "$P/results.csv" 2>&1); $(show)"
fi

"$PLOT" "$S/run-001-"* --out "$tmp/one.png" >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ "$rc" -eq 0 ] || grep -q matplotlib "$tmp/err"; then
    png plot_losses/one_run "$tmp/one.png"
else
    fail plot_losses/one_run "$(show)"
fi
"$PLOT" "$tmp/nowhere" --out "$tmp/none.png" >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ "$rc" -eq 1 ] && [ ! -e "$tmp/none.png" ]; then ok plot_losses/no_metrics; else fail plot_losses/no_metrics "$(show)"; fi

[ "$failures" -eq 0 ]
