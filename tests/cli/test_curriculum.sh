#!/usr/bin/env bash
# tests/cli/test_curriculum.sh — sources and the curriculum from the command line: three sources made with
# `loom data prep --tokenizer bytes` (text, code, and JSONL trajectories that carry a loss mask), a 20-step
# `loom train` over a two-phase curriculum with held-out evaluation every 5 steps (metrics.jsonl: the phase
# switches at the right step, the weights are the config's, the sequence length changes with the phase, one
# eval entry per source every 5 steps; the progress line shows phase and weights), a run on a source whose
# every token is masked (finishes, loss 0, steps skipped), `loom data plan` on declared source sizes (phases,
# epoch warnings, 11T in well under a second), and bad curricula and shards exiting 2 with the key or file
# named. Run from the repository root with ./loom built: bash tests/cli/test_curriculum.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom curriculum

show() { echo "\`loom $*\` exit status $rc; stdout: $(tail -c 600 "$tmp/out"); stderr: $(tail -c 600 "$tmp/err")"; }

# ---------------------------------------------------------------------------------------------------
# three sources, each with held-out shards

python3 - "$tmp" <<'EOF'
import json, sys
d = sys.argv[1]
words = "the quick brown fox jumps over a lazy dog while seven small birds sing in old green trees".split()
def prose(n, seed):
    out, i = [], seed
    while sum(len(w) + 1 for w in out) < n:
        i = (i * 1103515245 + 12345) % 2**31
        out.append(words[i % len(words)])
    return " ".join(out) + "\n"
def code(n, seed):
    lines, k = [], seed
    while sum(len(l) for l in lines) < n:
        k += 1
        lines.append(f"def f{k}(x):\n    return x * {k} + {k % 7}\n\n")
    return "".join(lines)
def trajectories(n, seed, assistant=True):
    recs, k = [], seed
    while sum(len(r) for r in recs) < n:
        k += 1
        segs = [{"role": "system", "text": "You are a helpful agent. "},
                {"role": "user", "text": f"Compute {k} plus {k + 3}. "}]
        if assistant:
            segs.append({"role": "assistant", "text": f"I will call the calculator for {k} + {k + 3}. "})
        segs.append({"role": "tool", "text": f"result: {2 * k + 3}. "})
        if assistant:
            segs.append({"role": "assistant", "text": f"The answer is {2 * k + 3}, as the tool said. "})
        recs.append(json.dumps({"segments": segs}) + "\n")
    return "".join(recs)
open(f"{d}/web.txt", "w").write(prose(6000, 1))
open(f"{d}/web_ho.txt", "w").write(prose(1500, 2))
open(f"{d}/code.txt", "w").write(code(6000, 0))
open(f"{d}/code_ho.txt", "w").write(code(1500, 500))
open(f"{d}/agentic.jsonl", "w").write(trajectories(6000, 0))
open(f"{d}/agentic_ho.jsonl", "w").write(trajectories(1500, 900))
open(f"{d}/context.jsonl", "w").write(trajectories(3000, 0, assistant=False))
EOF

prep_ok=1
for s in web:web.txt code:code.txt agentic:agentic.jsonl context:context.jsonl; do
    name=${s%%:*} file=${s#*:}
    run data prep --tokenizer bytes --source "$name" --in "$tmp/$file" --out "$tmp/data/$name" --frame-tokens 512
    [ "$rc" -eq 0 ] || { prep_ok=0; fail "curriculum/prep_$name" "$(show data prep --source "$name" --in "$tmp/$file")"; }
    ho=${file/./_ho.}
    if [ -f "$tmp/$ho" ]; then
        run data prep --tokenizer bytes --source "$name" --in "$tmp/$ho" --out "$tmp/data/${name}_ho"
        [ "$rc" -eq 0 ] || { prep_ok=0; fail "curriculum/prep_${name}_heldout" "$(show data prep --source "$name" --in "$tmp/$ho")"; }
    fi
done
[ "$prep_ok" -eq 1 ] && ok curriculum/prep_sources

# ---------------------------------------------------------------------------------------------------
# a two-phase run: warm (T = 32, web/code only) for 10 steps of 4 x 32 = 128 tokens, then mix (T = 64,
# agentic in) from 1280 tokens on, i.e. from step 11

cat >"$tmp/run.ini" <<EOF
include = $PWD/configs/models/tiny-mla.ini

[train]
steps = 20
seed = 5
seq_len = 32
micro_batch = 2
global_batch = 4
run_dir = $tmp/run
threads = 1

[schedule]
kind = constant
lr = 1e-3

[log]
every = 1
peak_tflops = 0.1

[eval]
every = 5
sequences = 2

[source.web]
shards = $tmp/data/web
heldout = $tmp/data/web_ho

[source.code]
shards = $tmp/data/code/code-*.tok
heldout = $tmp/data/code_ho

[source.agentic]
shards = $tmp/data/agentic
heldout = $tmp/data/agentic_ho
loss_mask = assistant

[curriculum]
phases = warm, mix

[phase.warm]
until = 1280
weights = web:0.7, code:0.3, agentic:0

[phase.mix]
weights = web:0.2, code:0.3, agentic:0.5
seq_len = 64
EOF

run train -c "$tmp/run.ini"
cp "$tmp/out" "$tmp/run_out"
if [ "$rc" -eq 0 ] && [ -s "$tmp/run/metrics.jsonl" ]; then
    ok curriculum/train_two_phases
else
    fail curriculum/train_two_phases "$(show train -c "$tmp/run.ini")"
fi

python3 - "$tmp/run/metrics.jsonl" <<'EOF'
import json, math, sys
path = sys.argv[1]
try:
    rows = [json.loads(l) for l in open(path)]
except Exception as e:
    print(f"FAIL curriculum/metrics_json: {path}: {e}")
    sys.exit(0)
warm = {"web": 0.7, "code": 0.3, "agentic": 0.0}
mix = {"web": 0.2, "code": 0.3, "agentic": 0.5}
def check(name, problems):
    print(f"ok {name}" if not problems else f"FAIL {name}: " + "; ".join(problems[:4]))
check("curriculum/metrics_steps", [] if len(rows) == 20 and [r.get("step") for r in rows] == list(range(1, 21))
      else [f"{len(rows)} lines, steps {[r.get('step') for r in rows]}"])
p = []
for r in rows:
    want = "warm" if r["step"] <= 10 else "mix"
    if r.get("phase") != want:
        p.append(f"step {r['step']}: phase {r.get('phase')}, want {want}")
check("curriculum/phase_switches_at_step_11", p)
p = []
for r in rows:
    want = warm if r["step"] <= 10 else mix
    w = r.get("weights")
    if not isinstance(w, dict) or set(w) != set(want) or any(abs(w[k] - want[k]) > 1e-6 for k in want):
        p.append(f"step {r['step']}: weights {w}, want {want}")
check("curriculum/weights_match_config", p)
p = []
tokens = 0
for r in rows:
    T = 32 if r["step"] <= 10 else 64
    tokens += 4 * T
    if r.get("seq_len") != T or r.get("batch") != 4 or r.get("tokens") != tokens:
        p.append(f"step {r['step']}: seq_len {r.get('seq_len')} batch {r.get('batch')} tokens {r.get('tokens')}, "
                 f"want {T} 4 {tokens}")
check("curriculum/seq_len_follows_phase", p)
p = []
for r in rows:
    ev = r.get("eval")
    if r["step"] % 5 == 0:
        if not isinstance(ev, dict) or set(ev) != {"web", "code", "agentic"} or \
           not all(isinstance(v, (int, float)) and math.isfinite(v) and 0 < v < 10 for v in ev.values()):
            p.append(f"step {r['step']}: eval {ev}, want a finite loss for web, code and agentic")
    elif ev is not None:
        p.append(f"step {r['step']}: eval {ev} off the 5-step schedule")
check("curriculum/eval_every_5_steps_per_source", p)
p = []
for r in rows:
    sl = r.get("source_loss")
    if not isinstance(sl, dict) or not sl or not set(sl) <= {"web", "code", "agentic"}:
        p.append(f"step {r['step']}: source_loss {sl}")
    elif r["step"] <= 10 and "agentic" in sl:
        p.append(f"step {r['step']}: agentic drawn in phase warm where its weight is 0 ({sl})")
    if not (math.isfinite(r.get("loss", float("nan"))) and r["loss"] > 0 and r.get("skipped") is False):
        p.append(f"step {r['step']}: loss {r.get('loss')} skipped {r.get('skipped')}")
if not any("agentic" in (r.get("source_loss") or {}) for r in rows if r["step"] > 10):
    p.append("agentic never drawn in phase mix (weight 0.5, 40 samples)")
check("curriculum/source_loss_follows_weights", p)
EOF

PROGRESS='^step +[0-9]+/20 \|'
l10=$(grep -E '^step +10/20 ' "$tmp/run_out")
l11=$(grep -E '^step +11/20 ' "$tmp/run_out")
if grep -qF '| phase warm (web 0.70 code 0.30 agentic 0.00) |' <<<"$l10" &&
    grep -qF '| phase mix (web 0.20 code 0.30 agentic 0.50) |' <<<"$l11" &&
    [ "$(grep -cE "$PROGRESS" "$tmp/run_out")" -eq 20 ]; then
    ok curriculum/progress_shows_phase_and_weights
else
    fail curriculum/progress_shows_phase_and_weights "step 10: '$l10'; step 11: '$l11'; $(grep -cE "$PROGRESS" "$tmp/run_out") progress lines"
fi
evals=$(grep -cE '^eval +(5|10|15|20)/20 \| web [0-9.]+ \| code [0-9.]+ \| agentic [0-9.]+$' "$tmp/run_out")
if [ "$evals" -eq 4 ] && [ "$(grep -c '^eval ' "$tmp/run_out")" -eq 4 ]; then
    ok curriculum/eval_lines
else
    fail curriculum/eval_lines "want 4 eval lines at steps 5 10 15 20 naming every source: $(grep '^eval ' "$tmp/run_out" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------------------------------------------
# every token of the source masked (no assistant turns): the run completes, nothing counts, steps skipped

cat >"$tmp/masked.ini" <<EOF
include = $PWD/configs/models/tiny-mla.ini
[train]
steps = 3
seq_len = 32
micro_batch = 2
global_batch = 4
run_dir = $tmp/masked
threads = 1
[log]
peak_tflops = 0.1
[source.context]
shards = $tmp/data/context
loss_mask = assistant
EOF
run train -c "$tmp/masked.ini"
if [ "$rc" -eq 0 ]; then
    python3 - "$tmp/masked/metrics.jsonl" <<'EOF'
import json, math, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1])]
except Exception as e:
    print(f"FAIL curriculum/all_masked_metrics: {e}")
    sys.exit(0)
p = [f"step {r.get('step')}: loss {r.get('loss')} grad_norm {r.get('grad_norm')} skipped {r.get('skipped')}"
     for r in rows if not (r.get("loss") == 0 and math.isfinite(r.get("grad_norm", float("nan")))
                          and r.get("skipped") is True and r.get("source_loss") == {})]
if len(rows) != 3:
    p.insert(0, f"{len(rows)} lines, want 3")
print("ok curriculum/all_masked_metrics" if not p else "FAIL curriculum/all_masked_metrics: " + "; ".join(p[:3]))
EOF
    ok curriculum/all_masked_run_completes
else
    fail curriculum/all_masked_run_completes "$(show train -c "$tmp/masked.ini")"
fi
# the same shards with every token counted do train: the zero above comes from the mask
run train -c "$tmp/masked.ini" --source.context.loss_mask=all --train.run_dir="$tmp/unmasked"
loss1=$(sed -n '1s/.*"loss": *\([^,]*\),.*/\1/p' "$tmp/unmasked/metrics.jsonl" 2>/dev/null)
if [ "$rc" -eq 0 ] && python3 -c "import sys; sys.exit(0 if float('$loss1') > 1 else 1)" 2>/dev/null; then
    ok curriculum/unmasked_same_shards_have_loss
else
    fail curriculum/unmasked_same_shards_have_loss "first loss '$loss1'; $(show train --source.context.loss_mask=all)"
fi

# ---------------------------------------------------------------------------------------------------
# loom data plan on declared sizes (the shards do not exist)
#
# 1M tokens: p1 [0, 500K) at tiny 0.1 = 50K; p2 ramps 0.1 -> 0.5 over 100K (30K) then 0.5 x 400K = 200K:
# tiny draws 280K of its 10K tokens (28 epochs > max_epochs 4), big 720K of 1M (0.72 epochs).

cat >"$tmp/plan.ini" <<EOF
[train]
seq_len = 16
micro_batch = 4
global_batch = 4
steps = 10
[source.big]
shards = $tmp/nowhere/big
tokens = 1M
[source.tiny]
shards = $tmp/nowhere/tiny
tokens = 10K
[curriculum]
phases = p1, p2
max_epochs = 4
[phase.p1]
until = 500K
weights = big:0.9, tiny:0.1
[phase.p2]
ramp = 100K
seq_len = 32
weights = big:0.5, tiny:0.5
EOF
run data plan -c "$tmp/plan.ini" --tokens 1M
if [ "$rc" -eq 0 ] && grep -qE '^p1 +0 +500.00K +500.00K +16 ' "$tmp/out" &&
    grep -qE '^p2 +500.00K +1.00M +500.00K +32 ' "$tmp/out" && grep -q 'blend linearly from p1' "$tmp/out"; then
    ok curriculum/plan_phases
else
    fail curriculum/plan_phases "$(show data plan -c plan.ini --tokens 1M)"
fi
if grep -qE '^tiny +280.00K +10.00K +28.000 ' "$tmp/out" && grep -qE '^big +720.00K +1.00M +0.720 ' "$tmp/out"; then
    ok curriculum/plan_totals
else
    fail curriculum/plan_totals "want tiny 280.00K drawn of 10.00K (28 epochs), big 720.00K of 1.00M: $(grep -E '^(tiny|big) ' "$tmp/out" | tr '\n' ' ')"
fi
if grep -q '^warning: source tiny repeats 28.00 times' "$tmp/out" && ! grep -q 'warning: source big' "$tmp/out"; then
    ok curriculum/plan_warns_repeats
else
    fail curriculum/plan_warns_repeats "want a warning for tiny only: $(grep -i 'warn\|repeat' "$tmp/out" | tr '\n' ' ')"
fi
# 100K tokens: tiny draws exactly 10K = 1 epoch: no warning
run data plan -c "$tmp/plan.ini" --tokens 100K
if [ "$rc" -eq 0 ] && ! grep -q '^warning' "$tmp/out" && grep -q 'no source repeats more than curriculum.max_epochs = 4' "$tmp/out"; then
    ok curriculum/plan_no_warning
else
    fail curriculum/plan_no_warning "$(show data plan -c plan.ini --tokens 100K)"
fi
# the bound is max_epochs: 28 epochs pass under max_epochs = 30
run data plan -c "$tmp/plan.ini" --tokens 1M --curriculum.max_epochs=30
if [ "$rc" -eq 0 ] && ! grep -q '^warning' "$tmp/out"; then
    ok curriculum/plan_max_epochs_respected
else
    fail curriculum/plan_max_epochs_respected "$(show data plan -c plan.ini --tokens 1M --curriculum.max_epochs=30)"
fi

t0=$(date +%s%N)
run data plan -c configs/curricula/youtu-11T.ini --tokens 11T
ms=$((($(date +%s%N) - t0) / 1000000))
if [ "$rc" -eq 0 ] && [ "$ms" -lt 1000 ] && grep -q '^plan: 11.00T tokens' "$tmp/out" &&
    grep -qE '^commonsense +0 +8.16T ' "$tmp/out" && grep -qE '^stem +8.16T +10.00T ' "$tmp/out" &&
    grep -qE '^midtrain +10.00T +10.80T ' "$tmp/out" && grep -qE '^agentic +10.80T +11.00T ' "$tmp/out"; then
    ok curriculum/plan_11T_fast
else
    fail curriculum/plan_11T_fast "${ms} ms (want < 1000); $(show data plan -c configs/curricula/youtu-11T.ini --tokens 11T)"
fi

# ---------------------------------------------------------------------------------------------------
# bad input through the real binary: exit 2, `loom: error:` naming the key or file

expect2() { # NAME WANT ARGS...
    local name=$1 want=$2
    shift 2
    run "$@"
    if [ "$rc" -eq 2 ] && grep -q '^loom: error:' "$tmp/err" && grep -qF -- "$want" "$tmp/err"; then
        ok "curriculum/$name"
    else
        fail "curriculum/$name" "want exit 2 naming '$want': $(show "$@")"
    fi
}
expect2 plan_negative_weight phase.p1.weights data plan -c "$tmp/plan.ini" '--phase.p1.weights=big:1, tiny:-1'
expect2 plan_unknown_source phase.p2.weights data plan -c "$tmp/plan.ini" '--phase.p2.weights=big:1, huge:1'
expect2 plan_phases_out_of_order phase.p1.until data plan -c "$tmp/plan.ini" --curriculum.phases=p2,p1 \
    --phase.p2.until=600K --phase.p2.ramp=0
expect2 plan_ramp_first_phase phase.p1.ramp data plan -c "$tmp/plan.ini" --phase.p1.ramp=10K
expect2 plan_batch_schedule train.batch_schedule data plan -c "$tmp/plan.ini" '--train.batch_schedule=100K:6'
expect2 train_glob_nothing source.code.shards train -c "$tmp/run.ini" --train.run_dir="$tmp/bad1" \
    "--source.code.shards=$tmp/data/code/nothing-*.tok"
expect2 train_source_without_shards source.web.shards train -c "$tmp/run.ini" --train.run_dir="$tmp/bad2" \
    --source.web.shards=
cp "$tmp/data/web/web-00000.tok" "$tmp/corrupt.tok"
printf 'X' | dd of="$tmp/corrupt.tok" bs=1 seek=100 conv=notrunc status=none
expect2 train_corrupt_shard "$tmp/corrupt.tok" train -c "$tmp/run.ini" --train.run_dir="$tmp/bad3" \
    --source.web.shards="$tmp/corrupt.tok"
[ ! -e "$tmp/bad3/metrics.jsonl" ] && ok curriculum/corrupt_shard_no_run || fail curriculum/corrupt_shard_no_run "a run started"

[ "$failures" -eq 0 ]
