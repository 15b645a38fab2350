#!/usr/bin/env bash
# tests/cli/test_corpora.sh — scripts/make_corpora.py at a small scale: two runs give byte-identical output,
# every JSONL line parses with the right shape (text records; agentic segments system first, assistant
# last, at least one assistant and one tool segment, tool calls and observations well formed), stem holds
# both math problems and source code, held-out files are non-empty, about 5 % and disjoint from train, the
# manifest's sizes and sha256 match the files, and the fallback text source works without `bible`.
# Needs only python3. Run from the repository root: bash tests/cli/test_corpora.sh
set -u
source "$(dirname "$0")/lib.sh"

SCRIPT="$(dirname "$0")/../../scripts/make_corpora.py"
SCALE=0.05
FILES="commonsense/train.jsonl commonsense/heldout.jsonl stem/train.jsonl stem/heldout.jsonl agentic/train.jsonl agentic/heldout.jsonl MANIFEST.txt"

if [ ! -f "$SCRIPT" ]; then
    fail corpora/script "$SCRIPT is missing"
    exit 1
fi

# gen NAME ARGS...: runs the script into $tmp/NAME; exit status in $rc, seconds in $secs
gen() {
    local name=$1
    shift
    local t0 t1
    t0=$(date +%s.%N)
    python3 "$SCRIPT" --out "$tmp/$name" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
    rc=$?
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
}

gen a --scale "$SCALE"
rc_a=$rc
secs_a=$secs
gen b --scale "$SCALE"
rc_b=$rc

if [ "$rc_a" -eq 0 ] && [ "$rc_b" -eq 0 ]; then
    ok corpora/runs
else
    fail corpora/runs "exit status $rc_a and $rc_b; stderr: $(head -c 800 "$tmp/a.err") $(head -c 800 "$tmp/b.err")"
fi

missing=""
for f in $FILES; do
    [ -s "$tmp/a/$f" ] || missing="$missing $f"
done
if [ -z "$missing" ]; then
    ok corpora/files
else
    fail corpora/files "missing or empty in $tmp/a:$missing"
fi

# determinism: both runs produced every file, and the two trees are byte-identical
: >"$tmp/diff"
if [ -z "$missing" ] && [ -d "$tmp/b" ] && diff -r "$tmp/a" "$tmp/b" >"$tmp/diff" 2>&1; then
    ok corpora/deterministic
else
    fail corpora/deterministic "two runs differ or are incomplete: $(head -c 600 "$tmp/diff")"
fi

if awk -v s="$secs_a" 'BEGIN { exit !(s < 20) }'; then
    ok corpora/fast
else
    fail corpora/fast "one run at --scale $SCALE took $secs_a s (want a few seconds)"
fi

nsum=$(grep -cE '^(commonsense|stem|agentic): [0-9]+ documents \([0-9]+ train, [0-9]+ held-out\), [0-9,]+ bytes' "$tmp/a.out")
if [ "$nsum" -eq 3 ]; then
    ok corpora/summary
else
    fail corpora/summary "want one summary line per source on stdout, got: $(head -c 600 "$tmp/a.out")"
fi

# content checks, one ok/FAIL line each
checks=$(python3 - "$tmp/a" <<'PY' 2>&1
import hashlib, json, os, re, sys

d = sys.argv[1]

def report(name, good, why):
    print(f"ok corpora/{name}" if good else f"FAIL corpora/{name}: {why}")

def load(rel):
    recs, bad = [], []
    path = os.path.join(d, rel)
    if not os.path.exists(path):
        return recs, [f"{rel} missing"]
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            try:
                recs.append(json.loads(line))
            except ValueError as e:
                bad.append(f"{rel}:{i}: {e}")
    return recs, bad

data, parse_errors = {}, []
for src in ("commonsense", "stem", "agentic"):
    for split in ("train", "heldout"):
        data[src, split], bad = load(f"{src}/{split}.jsonl")
        parse_errors += bad
report("jsonl_parses", not parse_errors, "; ".join(parse_errors[:3]))

bad = [f"{src}/{split}" for src in ("commonsense", "stem") for split in ("train", "heldout")
       for r in data[src, split]
       if not (isinstance(r, dict) and list(r) == ["text"] and isinstance(r["text"], str) and r["text"].strip())]
report("text_records", not bad, f"records that are not {{\"text\": non-empty string}} in {sorted(set(bad))}")

ROLES = {"system", "user", "assistant", "tool"}
agentic = data["agentic", "train"] + data["agentic", "heldout"]
why = {}
for n, r in enumerate(agentic):
    segs = r.get("segments") if isinstance(r, dict) else None
    if not isinstance(segs, list) or not segs or not all(
            isinstance(s, dict) and set(s) == {"role", "text"} and isinstance(s["text"], str) and s["text"]
            for s in segs):
        why.setdefault("agentic_segments", f"record {n}: not a non-empty list of {{role, text}}")
        continue
    roles = [s["role"] for s in segs]
    if not set(roles) <= ROLES:
        why.setdefault("agentic_roles", f"record {n}: roles {sorted(set(roles) - ROLES)}")
    if roles[0] != "system":
        why.setdefault("agentic_first_system", f"record {n}: first role {roles[0]}")
    if roles[-1] != "assistant":
        why.setdefault("agentic_last_assistant", f"record {n}: last role {roles[-1]}")
    if "assistant" not in roles or "tool" not in roles:
        why.setdefault("agentic_assistant_and_tool", f"record {n}: roles {roles}")
    if "Answer:" not in segs[-1]["text"]:
        why.setdefault("agentic_answer", f"record {n}: last segment has no 'Answer:'")
    # every tool segment answers a well-formed call in the assistant segment just before it
    for i, s in enumerate(segs):
        if s["role"] != "tool":
            continue
        prev = segs[i - 1]
        m = re.search(r"<tool_call>(.*)</tool_call>$", prev["text"], re.S) if prev["role"] == "assistant" else None
        try:
            call = json.loads(m.group(1)) if m else None
            okcall = isinstance(call, dict) and isinstance(call.get("name"), str) and isinstance(call.get("arguments"), dict)
        except ValueError:
            okcall = False
        obs = re.fullmatch(r"<observation>(.*)</observation>", s["text"], re.S)
        try:
            okobs = obs is not None and isinstance(json.loads(obs.group(1)), dict)
        except ValueError:
            okobs = False
        if not (okcall and okobs):
            why.setdefault("agentic_tool_calls", f"record {n} segment {i}: {prev['text'][-200:]!r} -> {s['text'][:200]!r}")
if not agentic:
    why["agentic_segments"] = "no agentic records"
for name in ("agentic_segments", "agentic_roles", "agentic_first_system", "agentic_last_assistant",
             "agentic_assistant_and_tool", "agentic_answer", "agentic_tool_calls"):
    report(name, name not in why, why.get(name, ""))
recovered = sum('"error"' in s["text"] for r in agentic for s in r.get("segments", []) if s.get("role") == "tool")
report("agentic_recovery", recovered > 0, "no trajectory recovers from a failed tool call")

def kinds(recs):
    math = sum(1 for r in recs if r.get("text", "").startswith("Problem: ") and "\nAnswer: " in r.get("text", ""))
    code = sum(1 for r in recs if re.match(r"(# path: \S+|/\* path: \S+ \*/)\n", r.get("text", "")))
    return math, code
for split in ("train", "heldout"):
    m, c = kinds(data["stem", split])
    report(f"stem_math_and_code/{split}", m > 0 and c > 0, f"{m} math problems, {c} code files")

for src in ("commonsense", "stem", "agentic"):
    tr, ho = data[src, "train"], data[src, "heldout"]
    share = len(ho) / max(1, len(tr) + len(ho))
    report(f"heldout_nonempty/{src}", len(ho) > 0 and len(tr) > 0, f"{len(tr)} train, {len(ho)} held-out")
    report(f"heldout_share/{src}", 0.02 <= share <= 0.12, f"held-out is {share:.1%} of {len(tr) + len(ho)} documents")
    key = lambda r: json.dumps(r, sort_keys=True, ensure_ascii=False)
    both = {key(r) for r in tr} & {key(r) for r in ho}
    report(f"heldout_disjoint/{src}", not both, f"{len(both)} documents in both train and held-out")

# MANIFEST: a line per file with its record count, bytes and sha256, all matching
man = open(os.path.join(d, "MANIFEST.txt"), encoding="utf-8").read() if os.path.exists(os.path.join(d, "MANIFEST.txt")) else ""
problems = []
for src in ("commonsense", "stem", "agentic"):
    for split in ("train", "heldout"):
        rel = f"{src}/{split}.jsonl"
        p = os.path.join(d, rel)
        if not os.path.exists(p):
            problems.append(f"{rel} missing")
            continue
        raw = open(p, "rb").read()
        lines = raw.count(b"\n")
        want = f"{rel} {lines} {len(raw)} {hashlib.sha256(raw).hexdigest()}"
        if want not in man.splitlines():
            problems.append(f"no line '{want}'")
report("manifest", man and not problems, "; ".join(problems[:2]) or "MANIFEST.txt missing")
PY
)
echo "$checks"
nfail=$(grep -c '^FAIL ' <<<"$checks")
nok=$(grep -c '^ok ' <<<"$checks")
failures=$((failures + nfail))
if [ "$nok" -lt 20 ] && [ "$nfail" -eq 0 ]; then
    fail corpora/content_checks "the checker printed $nok ok lines and no FAIL line: $(tail -c 600 <<<"$checks")"
fi

# the fallback text source (what a machine without `bible` gets) also works
gen docs --scale "$SCALE" --commonsense-source docs
if [ "$rc" -eq 0 ] && [ -s "$tmp/docs/commonsense/train.jsonl" ] && grep -q '^commonsense: .*FALLBACK' "$tmp/docs/MANIFEST.txt"; then
    ok corpora/fallback_text
else
    fail corpora/fallback_text "exit status $rc; stderr: $(head -c 600 "$tmp/docs.err"); manifest: $(head -c 400 "$tmp/docs/MANIFEST.txt" 2>/dev/null)"
fi

gen bad --scale -1
if [ "$rc" -ne 0 ] && [ ! -e "$tmp/bad/MANIFEST.txt" ]; then
    ok corpora/bad_scale
else
    fail corpora/bad_scale "--scale -1: exit status $rc"
fi

[ "$failures" -eq 0 ]
