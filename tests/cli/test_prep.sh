#!/usr/bin/env bash
# tests/cli/test_prep.sh — `loom data prep` from the command line: shards appear with plausible sizes and
# counts, JSONL text records and trajectories (the latter give shards with a loss mask), bad input exits 2
# with a `loom: error:` line naming the culprit (FILE:LINE for a bad JSONL record) and leaves no shard
# behind, and existing shards are never overwritten. The mask bits themselves are checked by
# tests/unit/test_prep_mask.c. Run from the repository root with ./loom built: bash tests/cli/test_prep.sh
set -u
source "$(dirname "$0")/lib.sh"

# run NAME ARGS...: runs ./loom ARGS, leaves the exit status in $rc and stderr in $tmp/err
run() {
    "$LOOM" "$@" >"$tmp/out.txt" 2>"$tmp/err"
    rc=$?
}

printf 'hello world\nsecond line\n' >"$tmp/a.txt"
seq 1 1000 >"$tmp/b.txt"
size_a=$(wc -c <"$tmp/a.txt")
size_b=$(wc -c <"$tmp/b.txt")

# ---------------------------------------------------------------------------------------------------
# two files into one shard

run data prep --tokenizer bytes --source demo --in "$tmp/a.txt" "$tmp/b.txt" --out "$tmp/shards"
shard="$tmp/shards/demo-00000.tok"
tokens=$((size_a + size_b + 2))
if [ "$rc" -eq 0 ] && [ -f "$shard" ]; then
    ok prep/shard_written
else
    fail prep/shard_written "exit status $rc, shard $shard $( [ -f "$shard" ] && echo present || echo missing ); stderr: $(cat "$tmp/err")"
fi

if [ -f "$shard" ]; then
    size=$(wc -c <"$shard")
    # header 64 + footer 24 + one frame index entry 16 + two document starts 16 = 120 bytes of structure;
    # the tokens compress, but not below a few bytes, and never grow far past 2 bytes each
    if [ "$size" -gt 130 ] && [ "$size" -lt $((120 + 2 * tokens + 256)) ]; then
        ok prep/shard_size
    else
        fail prep/shard_size "$size bytes for $tokens tokens"
    fi
    magic=$(head -c 8 "$shard")
    [ "$magic" = "LOOMTOK1" ] && ok prep/shard_magic || fail prep/shard_magic "first 8 bytes '$magic'"
fi

if grep -q "prep demo: $tokens tokens in 2 documents -> 1 shards in $tmp/shards" "$tmp/err"; then
    ok prep/summary
else
    fail prep/summary "want '$tokens tokens in 2 documents -> 1 shards'; stderr: $(tr '\r' '\n' <"$tmp/err")"
fi

leftover=$(find "$tmp/shards" -name '*.tmp' | wc -l)
[ "$leftover" -eq 0 ] && ok prep/no_tmp_left || fail prep/no_tmp_left "$leftover .tmp files in $tmp/shards"

# ---------------------------------------------------------------------------------------------------
# --shard-tokens splits the stream: b.txt + eos over 1K-token shards

run data prep --tokenizer bytes --source split --in "$tmp/b.txt" --out "$tmp/shards" --shard-tokens 1K \
    --frame-tokens 100
want=$(((size_b + 1 + 999) / 1000))
got=$(find "$tmp/shards" -name 'split-*.tok' | wc -l)
if [ "$rc" -eq 0 ] && [ "$got" -eq "$want" ] && [ -f "$tmp/shards/split-$(printf '%05d' $((want - 1))).tok" ]; then
    ok prep/shard_split
else
    fail prep/shard_split "exit status $rc, $got shards (want $want); stderr: $(cat "$tmp/err")"
fi

# ---------------------------------------------------------------------------------------------------
# bad input

run data prep --tokenizer bytes --source demo2 --in "$tmp/a.txt" "$tmp/nope.txt" --out "$tmp/other"
if [ "$rc" -eq 2 ] && grep -q "loom: error: $tmp/nope.txt" "$tmp/err" && [ ! -e "$tmp/other/demo2-00000.tok" ]; then
    ok prep/missing_input
else
    fail prep/missing_input "exit status $rc (want 2); stderr: $(cat "$tmp/err")"
fi

run data prep --tokenizer gpt2 --source demo2 --in "$tmp/a.txt" --out "$tmp/other"
if [ "$rc" -eq 2 ] && grep -q "loom: error: gpt2" "$tmp/err" && [ ! -e "$tmp/other" ]; then
    ok prep/unknown_tokenizer
else
    fail prep/unknown_tokenizer "exit status $rc (want 2); stderr: $(cat "$tmp/err")"
fi

run data prep --tokenizer bytes --source demo2 --in "$tmp/a.txt" --out "$tmp/other" --frobnicate 3
if [ "$rc" -eq 2 ] && grep -q "loom: error: --frobnicate" "$tmp/err" && grep -q "^hint:" "$tmp/err"; then
    ok prep/unknown_option
else
    fail prep/unknown_option "exit status $rc (want 2); stderr: $(cat "$tmp/err")"
fi

run data prep --tokenizer bytes --source demo2 --in "$tmp/a.txt"
if [ "$rc" -eq 2 ] && grep -q "loom: error: --out" "$tmp/err"; then
    ok prep/missing_out
else
    fail prep/missing_out "exit status $rc (want 2); stderr: $(cat "$tmp/err")"
fi

run data prep --tokenizer bytes --source demo2 --in "$tmp/a.txt" --out "$tmp/other" --shard-tokens 12Q
if [ "$rc" -eq 2 ] && grep -q "loom: error: --shard-tokens" "$tmp/err"; then
    ok prep/bad_count
else
    fail prep/bad_count "exit status $rc (want 2); stderr: $(cat "$tmp/err")"
fi

run data prep --help
if [ "$rc" -eq 0 ] && grep -q "usage: loom data prep" "$tmp/out.txt"; then
    ok prep/help
else
    fail prep/help "exit status $rc (want 0); stdout: $(cat "$tmp/out.txt")"
fi

# ---------------------------------------------------------------------------------------------------
# JSONL: text records are documents; a trajectory makes the shards carry a loss mask (header flags bit 0)

# flags FILE: the header flags field of a shard
flags() { od -An -tu4 -j56 -N4 "$1" | tr -d ' '; }

printf '{"text": "hello"}\n\n{"text": "w\\u00e9!", "id": 7}\n' >"$tmp/t.jsonl"
run data prep --tokenizer bytes --source texts --in "$tmp/t.jsonl" --out "$tmp/shards"
# hello + eos, w é(2 bytes) ! + eos
if [ "$rc" -eq 0 ] && grep -q "prep texts: 11 tokens in 2 documents -> 1 shards" "$tmp/err" &&
    [ "$(flags "$tmp/shards/texts-00000.tok")" = 0 ]; then
    ok prep/jsonl_text
else
    fail prep/jsonl_text "exit status $rc, flags $(flags "$tmp/shards/texts-00000.tok" 2>/dev/null); stderr: $(tr '\r' '\n' <"$tmp/err")"
fi

cat >"$tmp/traj.jsonl" <<'JSONL'
{"segments": [{"role": "system", "text": "sys"}, {"role": "user", "text": "hi"}, {"role": "assistant", "text": "yo"}]}
{"text": "doc"}
{"segments": [{"role": "user", "text": "q"}, {"role": "assistant", "text": "abc"}, {"role": "tool", "text": "out"}]}
JSONL
run data prep --tokenizer bytes --source traj --in "$tmp/traj.jsonl" "$tmp/a.txt" --out "$tmp/shards"
# tokens: 3+2+2+1, 3+1, 1+3+3+1, a.txt+1; in the loss: yo+eos, doc+eos, abc, a.txt+eos
want_tokens=$((8 + 4 + 8 + size_a + 1))
want_loss=$((3 + 4 + 3 + size_a + 1))
if [ "$rc" -eq 0 ] && [ "$(flags "$tmp/shards/traj-00000.tok")" = 1 ] &&
    grep -q "prep traj: $want_tokens tokens in 4 documents -> 1 shards in $tmp/shards, with a loss mask ($want_loss tokens count in the loss)" "$tmp/err"; then
    ok prep/jsonl_segments_mask
else
    fail prep/jsonl_segments_mask "exit status $rc, flags $(flags "$tmp/shards/traj-00000.tok" 2>/dev/null) (want 1), want $want_tokens tokens / $want_loss in the loss; stderr: $(tr '\r' '\n' <"$tmp/err")"
fi

# bad_jsonl NAME LINE3 PHRASE: a file whose third line is LINE3 must exit 2 with PHRASE after FILE:3, and
# no shard (nor the output directory) may be made
bad_jsonl() {
    printf '{"text": "ok"}\n{"segments": [{"role": "user", "text": "fine"}]}\n%s\n{"text": "after"}\n' "$2" >"$tmp/bad.jsonl"
    run data prep --tokenizer bytes --source bad --in "$tmp/a.txt" "$tmp/bad.jsonl" --out "$tmp/badout"
    if [ "$rc" -eq 2 ] && grep -q "^loom: error: $tmp/bad.jsonl:3: $3" "$tmp/err" && [ ! -e "$tmp/badout" ]; then
        ok "prep/bad_jsonl_$1"
    else
        fail "prep/bad_jsonl_$1" "exit status $rc (want 2), output dir $([ -e "$tmp/badout" ] && echo made || echo absent); stderr: $(cat "$tmp/err")"
    fi
}
bad_jsonl not_json '{"text": "unterminated' "not valid JSON"
bad_jsonl trailing '{"text": "x"} {"text": "y"}' "not valid JSON"
bad_jsonl not_object '["text"]' "a record must be a JSON object"
bad_jsonl no_field '{"content": "x"}' "the record has neither .text. nor .segments."
bad_jsonl both_fields '{"text": "x", "segments": []}' "a record has .text. or .segments., not both"
bad_jsonl text_number '{"text": 42}' ".text. is not a string"
bad_jsonl segments_object '{"segments": {"role": "user"}}' ".segments. is not an array"
bad_jsonl segments_empty '{"segments": []}' ".segments. is empty"
bad_jsonl unknown_role '{"segments": [{"role": "user", "text": "a"}, {"role": "narrator", "text": "b"}]}' \
    "segment 1: unknown role 'narrator'"
bad_jsonl role_missing '{"segments": [{"text": "b"}]}' "segment 0: .role. is missing"
bad_jsonl segment_text_null '{"segments": [{"role": "tool", "text": null}]}' "segment 0: .text. is not a string"

run data prep --tokenizer "$tmp/no-such-tokenizer.json" --source demo2 --in "$tmp/a.txt" --out "$tmp/other"
if [ "$rc" -eq 2 ] && grep -q "loom: error: $tmp/no-such-tokenizer.json" "$tmp/err" && [ ! -e "$tmp/other" ]; then
    ok prep/missing_tokenizer_file
else
    fail prep/missing_tokenizer_file "exit status $rc (want 2); stderr: $(cat "$tmp/err")"
fi

# ---------------------------------------------------------------------------------------------------
# a second prep of the same source into the same directory is refused and changes nothing

cp "$shard" "$tmp/first.tok"
run data prep --tokenizer bytes --source demo --in "$tmp/b.txt" --out "$tmp/shards"
if [ "$rc" -eq 2 ] && grep -q "loom: error: .*demo-0000" "$tmp/err" && cmp -s "$shard" "$tmp/first.tok"; then
    ok prep/no_overwrite
else
    fail prep/no_overwrite "exit status $rc (want 2), shard $(cmp -s "$shard" "$tmp/first.tok" && echo unchanged || echo CHANGED); stderr: $(cat "$tmp/err")"
fi

[ "$failures" -eq 0 ]
