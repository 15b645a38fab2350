#!/usr/bin/env bash
# tests/cli/test_train.sh — the real training run from the command line: `loom info` on the shipped models,
# bit-identical reruns (and a different seed that differs), the run folder (config.ini that `loom info`
# reads back, metrics.jsonl one object per step), the progress line, loss falling on real English text
# with the tiny MLA model, and the tiny MHA model training.
# Run from the repository root with ./loom built: bash tests/cli/test_train.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom train

DEBUG=configs/runs/debug.ini

show() { echo "\`loom $*\` exit status $rc; stdout: $(tail -c 800 "$tmp/out"); stderr: $(tail -c 800 "$tmp/err")"; }

# field FILE NAME: the raw text of field NAME of every line of metrics FILE, one per line (as printed, so
# two runs compare bit for bit)
field() { sed -n "s/.*\"$2\": *\([^,}]*\).*/\1/p" "$1"; }

# ---------------------------------------------------------------------------------------------------
# loom info

run info -c configs/models/youtu-2b.ini --data.kind=random
# printed in the C locale, without thousands separators
if [ "$rc" -eq 0 ] && grep -qE '^ +total parameters +1961560064 ' "$tmp/out"; then
    ok train/info_youtu_2b
else
    fail train/info_youtu_2b "want total parameters 1961560064: $(show info -c configs/models/youtu-2b.ini --data.kind=random) $(grep 'total parameters' "$tmp/out")"
fi
for m in tiny-mla tiny-mha; do
    run info -c configs/models/$m.ini --data.kind=random
    if [ "$rc" -eq 0 ] && grep -q '^# resolved config' "$tmp/out" && grep -qE '^ +total parameters +[0-9]+ ' "$tmp/out"; then
        ok "train/info_$m"
    else
        fail "train/info_$m" "$(show info -c configs/models/$m.ini --data.kind=random)"
    fi
done

# ---------------------------------------------------------------------------------------------------
# determinism: the same config twice gives bit-identical losses and gradient norms; another seed does not

run train -c "$DEBUG" --train.run_dir="$tmp/a"
cp "$tmp/out" "$tmp/out_a"
rc_a=$rc
if [ "$rc_a" -eq 0 ]; then ok train/debug_run; else fail train/debug_run "$(show train -c "$DEBUG" --train.run_dir="$tmp/a")"; fi
run train -c "$DEBUG" --train.run_dir="$tmp/b"
rc_b=$rc
run train -c "$DEBUG" --train.run_dir="$tmp/c" --train.seed=43
rc_c=$rc
steps=$(sed -n 's/^steps *= *//p' "$DEBUG")
gb=$(sed -n 's/^global_batch *= *//p' "$DEBUG")
T=$(sed -n 's/^seq_len *= *//p' "$DEBUG")

if [ "$rc_a" -eq 0 ] && [ "$rc_b" -eq 0 ] && [ -s "$tmp/a/metrics.jsonl" ] && [ -s "$tmp/b/metrics.jsonl" ]; then
    la=$(field "$tmp/a/metrics.jsonl" loss)
    lb=$(field "$tmp/b/metrics.jsonl" loss)
    ga=$(field "$tmp/a/metrics.jsonl" grad_norm)
    gb_=$(field "$tmp/b/metrics.jsonl" grad_norm)
    if [ "$(echo "$la" | wc -l)" -eq "$steps" ] && [ "$la" = "$lb" ] && [ "$ga" = "$gb_" ]; then
        ok train/deterministic
    else
        fail train/deterministic "two runs of $DEBUG differ; losses a: $(tr '\n' ' ' <<<"$la") b: $(tr '\n' ' ' <<<"$lb"); grad norms a: $(tr '\n' ' ' <<<"$ga") b: $(tr '\n' ' ' <<<"$gb_")"
    fi
else
    fail train/deterministic "runs a/b exit status $rc_a/$rc_b; files: $(find "$tmp/a" "$tmp/b" 2>&1 | tr '\n' ' ')"
fi
if [ "$rc_c" -eq 0 ] && [ -s "$tmp/c/metrics.jsonl" ]; then
    lc=$(field "$tmp/c/metrics.jsonl" loss)
    if [ "$(echo "$lc" | wc -l)" -eq "$steps" ] && [ "$lc" != "$(field "$tmp/a/metrics.jsonl" loss)" ]; then
        ok train/seed_changes_losses
    else
        fail train/seed_changes_losses "--train.seed=43 gives the losses of seed 42: $(tr '\n' ' ' <<<"$lc")"
    fi
else
    fail train/seed_changes_losses "$(show train -c "$DEBUG" --train.run_dir="$tmp/c" --train.seed=43)"
fi

# ---------------------------------------------------------------------------------------------------
# the run folder: metrics.jsonl and config.ini

# one JSON object per step with every field; step 1..N; tokens = step x global_batch x seq_len; finite
# losses starting near ln(vocab) (random tokens: nothing to learn); lr peaks at schedule.lr and ends at
# schedule.min_lr (cosine with warmup)
check_metrics() { # NAME FILE STEPS TOKENS_PER_STEP VOCAB [LR MIN_LR]
    python3 - "$@" <<'EOF'
import json, math, sys
name, path, steps, tps, vocab = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
want_lr = [float(x) for x in sys.argv[6:8]]
fields = ["step", "tokens", "loss", "lr", "grad_norm", "tok_per_s", "mfu", "loss_scale", "skipped", "phase", "time"]
problems = []
try:
    rows = [json.loads(line) for line in open(path)]
except Exception as e:
    print(f"FAIL {name}: {path} is not one JSON object per line: {e}")
    sys.exit(0)
if len(rows) != steps:
    problems.append(f"{len(rows)} lines, want {steps}")
for i, r in enumerate(rows):
    missing = [f for f in fields if f not in r]
    if missing:
        problems.append(f"line {i + 1} lacks {missing}")
        continue
    if r["step"] != i + 1 or r["tokens"] != (i + 1) * tps:
        problems.append(f"line {i + 1}: step {r['step']} tokens {r['tokens']}, want {i + 1} and {(i + 1) * tps}")
    if not (math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 and r["lr"] >= 0):
        problems.append(f"line {i + 1}: loss {r['loss']} grad_norm {r['grad_norm']} lr {r['lr']}")
    if r["skipped"] is not False or not isinstance(r["time"], dict):
        problems.append(f"line {i + 1}: skipped {r['skipped']} time {r['time']}")
if rows and "loss" in rows[0] and abs(rows[0]["loss"] - math.log(vocab)) > 0.3:
    problems.append(f"first loss {rows[0]['loss']} is far from ln({vocab}) = {math.log(vocab):.4f}")
if want_lr and rows and all("lr" in r for r in rows):
    lrs = [r["lr"] for r in rows]
    if abs(max(lrs) - want_lr[0]) > 1e-6 * want_lr[0] or abs(lrs[-1] - want_lr[1]) > 1e-6 * want_lr[0]:
        problems.append(f"lr peaks at {max(lrs)} and ends at {lrs[-1]}, want {want_lr[0]} and {want_lr[1]}")
if problems:
    print(f"FAIL {name}: {path}: " + "; ".join(problems[:5]))
else:
    print(f"ok {name}")
EOF
}
if [ -s "$tmp/a/metrics.jsonl" ]; then
    out=$(check_metrics train/metrics_jsonl "$tmp/a/metrics.jsonl" "$steps" $((gb * T)) 320 3e-3 3e-4)
    echo "$out"
    case $out in FAIL*) failures=$((failures + 1)) ;; esac
else
    fail train/metrics_jsonl "no $tmp/a/metrics.jsonl"
fi

# config.ini is a config: `loom info` reads it back and resolves it to the same text, which is also what
# `loom info` resolves the original config and overrides to
resolved() { awk '/^# resolved config$/ { on = 1; next } /^# parameters$/ { on = 0 } on' "$1" | sed '${/^$/d}'; }
if [ -s "$tmp/a/config.ini" ]; then
    run info -c "$tmp/a/config.ini"
    rc1=$rc
    resolved "$tmp/out" >"$tmp/resolved_run"
    run info -c "$DEBUG" --train.run_dir="$tmp/a"
    rc2=$rc
    resolved "$tmp/out" >"$tmp/resolved_orig"
    if [ "$rc1" -ne 0 ] || [ "$rc2" -ne 0 ] || [ ! -s "$tmp/resolved_run" ]; then
        fail train/config_ini "loom info on $tmp/a/config.ini / $DEBUG exit status $rc1/$rc2; stderr: $(cat "$tmp/err")"
    elif ! diff "$tmp/resolved_run" "$tmp/a/config.ini" >"$tmp/diff"; then
        fail train/config_ini "loom info -c $tmp/a/config.ini resolves to other text than the file: $(head -20 "$tmp/diff")"
    elif ! diff "$tmp/resolved_orig" "$tmp/a/config.ini" >"$tmp/diff"; then
        fail train/config_ini "config.ini differs from the resolved $DEBUG --train.run_dir=$tmp/a: $(head -20 "$tmp/diff")"
    elif ! grep -qx "run_dir = $tmp/a" "$tmp/a/config.ini" || ! grep -qx "steps = $steps" "$tmp/a/config.ini"; then
        fail train/config_ini "config.ini lacks 'run_dir = $tmp/a' or 'steps = $steps'"
    else
        ok train/config_ini
    fi
    if grep -qx 'seed = 43' "$tmp/c/config.ini" 2>/dev/null; then
        ok train/config_ini_override
    else
        fail train/config_ini_override "$tmp/c/config.ini lacks 'seed = 43' from --train.seed=43"
    fi
else
    fail train/config_ini "no $tmp/a/config.ini"
fi

# ---------------------------------------------------------------------------------------------------
# the progress line (log.every = 1 in the debug run: one line per step), agreeing with metrics.jsonl

PROGRESS='^step +[0-9]+/[0-9]+ \| loss [0-9]+\.[0-9]+ \| lr [0-9.e+-]+ \| gnorm [0-9]+\.[0-9]+ \| [0-9.]+[kM]? tok/s \| mfu [0-9]+\.[0-9]+% \| scale [0-9.e+-]+ \| phase .+ \| eta [0-9:]+$'
nlines=$(grep -cE "$PROGRESS" "$tmp/out_a")
stepnums=$(grep -E "$PROGRESS" "$tmp/out_a" | sed -E 's/^step +([0-9]+)\/([0-9]+) .*/\1\/\2/' | tr '\n' ' ')
want_nums=$(for i in $(seq 1 "$steps"); do printf '%s/%s ' "$i" "$steps"; done)
if [ "$nlines" -eq "$steps" ] && [ "$stepnums" = "$want_nums" ]; then
    ok train/progress_line
else
    fail train/progress_line "$nlines progress lines (want $steps), steps '$stepnums'; stdout: $(head -c 1500 "$tmp/out_a")"
fi
printed=$(grep -E "$PROGRESS" "$tmp/out_a" | sed -E 's/.*\| loss ([0-9.]+) .*/\1/' | tr '\n' ' ')
fromjson=$(python3 -c 'import json,sys; print(" ".join("%.4f" % json.loads(l)["loss"] for l in open(sys.argv[1])), end=" ")' \
    "$tmp/a/metrics.jsonl" 2>/dev/null)
if [ -n "$printed" ] && [ "$printed" = "$fromjson" ]; then
    ok train/progress_matches_metrics
else
    fail train/progress_matches_metrics "printed losses '$printed', metrics.jsonl losses '$fromjson'"
fi

# ---------------------------------------------------------------------------------------------------
# the tiny MHA model trains too

run train -c configs/models/tiny-mha.ini --data.kind=random --train.steps=4 --train.seq_len=32 \
    --train.micro_batch=2 --train.global_batch=4 --train.threads=1 --log.peak_tflops=0.1 --train.run_dir="$tmp/mha"
if [ "$rc" -eq 0 ] && [ -s "$tmp/mha/metrics.jsonl" ] && [ "$(grep -cE "$PROGRESS" "$tmp/out")" -ge 1 ]; then
    out=$(check_metrics train/mha_run "$tmp/mha/metrics.jsonl" 4 128 320)
    echo "$out"
    case $out in FAIL*) failures=$((failures + 1)) ;; esac
else
    fail train/mha_run "$(show train -c configs/models/tiny-mha.ini --data.kind=random ...)"
fi

# ---------------------------------------------------------------------------------------------------
# loss falls on real English text: bytes of Genesis and Exodus (KJV), about 360 KB

text="$tmp/text.txt"
if command -v bible >/dev/null 2>&1; then
    bible -f Gen1:1-Ex40:38 2>/dev/null | sed 's/^[^ ]* //' >"$text"
fi
if [ "$(wc -c <"$text" 2>/dev/null || echo 0)" -lt 100000 ]; then
    cat /usr/share/common-licenses/* >"$text" 2>/dev/null
fi
run data prep --tokenizer bytes --source english --in "$text" --out "$tmp/shards"
if [ "$rc" -ne 0 ] || [ "$(wc -c <"$text")" -lt 100000 ]; then
    fail train/loss_falls "no English text to train on ($(wc -c <"$text") bytes) or prep failed: $(show data prep)"
else
    # threads = 1: steadier than two OpenMP threads on a busy two-core machine
    args=(-c configs/models/tiny-mla.ini --data.kind=shards --data.train="$tmp/shards" --train.steps=60
        --train.seq_len=64 --train.micro_batch=8 --train.global_batch=8 --schedule.lr=3e-3
        --schedule.warmup_tokens=2K --train.threads=1 --log.every=20 --log.peak_tflops=0.1 --train.run_dir="$tmp/text")
    run train "${args[@]}"
    if [ "$rc" -ne 0 ] || [ ! -s "$tmp/text/metrics.jsonl" ]; then
        fail train/loss_falls "$(show train "${args[@]}")"
    else
        verdict=$(python3 - "$tmp/text/metrics.jsonl" <<'EOF'
import json, sys
loss = [json.loads(l)["loss"] for l in open(sys.argv[1])]
last = sum(loss[-5:]) / 5
good = len(loss) == 60 and loss[0] > 5.0 and last < 3.0
print(("ok" if good else "bad") + f" {len(loss)} steps, first loss {loss[0]:.4f} (want > 5.0), mean of the last 5 {last:.4f} (want < 3.0)")
EOF
        )
        case $verdict in
        ok*) ok train/loss_falls ;;
        *) fail train/loss_falls "$verdict" ;;
        esac
        if [ "$(grep -cE "$PROGRESS" "$tmp/out")" -eq 4 ]; then
            ok train/progress_every
        else
            fail train/progress_every "log.every=20 over 60 steps: want 4 progress lines (1, 20, 40, 60): $(grep '^step' "$tmp/out")"
        fi
    fi
fi

[ "$failures" -eq 0 ]
