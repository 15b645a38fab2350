#!/usr/bin/env bash
# tests/cli/test_tokenizer.sh — the tokenizer commands through the real binary: `loom data tokenizer-train`
# on plain text and JSONL, `loom data encode` / `decode` round trips, special tokens never produced, the
# byte tokenizer, bad input (missing or malformed tokenizer files, an existing --out, bad ids) exiting 2
# with a `loom: error:` line naming the culprit; then the same tokenizer.json loaded by the Hugging Face
# `tokenizers` library, which must give identical ids line by line (skipped, with a `skip` line, when the
# library cannot be imported or installed).
# Run from the repository root with ./loom built: bash tests/cli/test_tokenizer.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom tokenizer

# ---------------------------------------------------------------------------------------------------
# a corpus: English with case and contractions, CJK, kana, hangul, CJK punctuation, digits, code,
# emoji, tabs and whitespace runs, text that looks like special tokens

awk 'BEGIN {
    srand(7);
    n = split("the quick brown fox jumps over a lazy dog HelloWorld'"'"'s I'"'"'m they'"'"'ll DON'"'"'T " \
              "tokenizer training JSONParser camelCase snake_case 你好 世界 模型 训练数据 ， 。 「引用」 " \
              "東京タワー カタカナ ひらがな 한국어 데이터 😀 👍🏽 naïve café Ελληνικά русский 3.14159 " \
              "2024-01-01 12345 $100 100% x+=1; if(a!=b){ } // <|eos|> <think> </tool_call> " \
              "\t a\t\tb e.g. O'"'"'Neil ½ Ⅻ ١٢٣ ｆｕｌｌ１２", w, " ");
    for (l = 0; l < 3000; l++) {
        k = 3 + int(rand() * 12); line = "";
        for (i = 0; i < k; i++) {
            sep = rand() < 0.1 ? "   " : " ";
            line = line (i ? sep : "") w[1 + int(rand() * n)];
        }
        if (rand() < 0.05) line = line "  ";
        print line;
        if (rand() < 0.03) print "";
    }
}' >"$tmp/corpus.txt"
printf '%s\n' '{"text": "zqxwv zqxwv zqxwv zqxwv zqxwv"}' '' \
    '{"segments": [{"role": "user", "text": "jjkqq jjkqq "}, {"role": "assistant", "text": "jjkqq jjkqq"}]}' \
    >"$tmp/docs.jsonl"
for i in 1 2 3; do cat "$tmp/docs.jsonl"; done >"$tmp/docs3.jsonl"

# ---------------------------------------------------------------------------------------------------
# training

run data tokenizer-train --in "$tmp/corpus.txt" "$tmp/docs3.jsonl" --vocab-size 1200 --out "$tmp/tok.json" \
    --special '<|im_start|>' '<|im_end|>'
if [ "$rc" -eq 0 ] && [ -s "$tmp/tok.json" ] && grep -q 'tokenizer-train: wrote' "$tmp/err"; then
    ok tokenizer/train
else
    fail tokenizer/train "exit status $rc; stderr: $(tail -c 800 "$tmp/err")"
fi
nspecial=0
for s in '<|bos|>' '<|eos|>' '<|pad|>' '<think>' '</think>' '<tool_call>' '</tool_call>' '<observation>' \
    '</observation>' '<|im_start|>' '<|im_end|>'; do
    grep -qF "\"content\":	\"$s\"" "$tmp/tok.json" && nspecial=$((nspecial + 1))
done
[ "$nspecial" -eq 11 ] && ok tokenizer/specials_declared || fail tokenizer/specials_declared "$nspecial of 11 found"

# ---------------------------------------------------------------------------------------------------
# encode / decode

run data encode --tokenizer "$tmp/tok.json" <"$tmp/corpus.txt"
cp "$tmp/out" "$tmp/corpus.ids"
lines_in=$(wc -l <"$tmp/corpus.txt")
lines_out=$(wc -l <"$tmp/corpus.ids")
ntok=$(wc -w <"$tmp/corpus.ids")
nbytes=$(wc -c <"$tmp/corpus.txt")
if [ "$rc" -eq 0 ] && [ "$lines_in" -eq "$lines_out" ] && [ "$ntok" -gt 0 ] && [ $((ntok * 2)) -lt "$nbytes" ]; then
    ok tokenizer/encode
else
    fail tokenizer/encode "exit status $rc, $lines_out lines for $lines_in, $ntok tokens for $nbytes bytes"
fi

run data decode --tokenizer "$tmp/tok.json" <"$tmp/corpus.ids"
if [ "$rc" -eq 0 ] && cmp -s "$tmp/out" "$tmp/corpus.txt"; then
    ok tokenizer/roundtrip
else
    fail tokenizer/roundtrip "exit status $rc; first difference: $(cmp "$tmp/out" "$tmp/corpus.txt" 2>&1 | head -1)"
fi

# random bytes, invalid UTF-8 and all: lines come back
head -c 20000 /dev/urandom >"$tmp/random.bin"
printf '\n' >>"$tmp/random.bin"
"$LOOM" data encode --tokenizer "$tmp/tok.json" <"$tmp/random.bin" >"$tmp/random.ids" &&
    "$LOOM" data decode --tokenizer "$tmp/tok.json" <"$tmp/random.ids" >"$tmp/random.back"
if cmp -s "$tmp/random.back" "$tmp/random.bin"; then
    ok tokenizer/roundtrip_random_bytes
else
    fail tokenizer/roundtrip_random_bytes "$(cmp "$tmp/random.back" "$tmp/random.bin" 2>&1 | head -1)"
fi

# the JSONL text was learned: its words are one token each ("text" and "segments" forms)
printf 'zqxwv\n jjkqq\n' | "$LOOM" data encode --tokenizer "$tmp/tok.json" >"$tmp/out"
if [ "$(awk '{print NF}' "$tmp/out" | tr '\n' ' ')" = "1 1 " ]; then
    ok tokenizer/jsonl_learned
else
    fail tokenizer/jsonl_learned "ids: $(tr '\n' '|' <"$tmp/out")"
fi

# text that looks like a special token is encoded as plain text
eos=$(grep -B1 -F '"content":	"<|eos|>"' "$tmp/tok.json" | head -1 | tr -dc '0-9')
printf '<|eos|>\n<think>hi</think>\n' | "$LOOM" data encode --tokenizer "$tmp/tok.json" >"$tmp/out"
if [ -n "$eos" ] && [ "$(wc -w <"$tmp/out")" -gt 2 ] && ! grep -qw "$eos" "$tmp/out"; then
    ok tokenizer/no_specials
else
    fail tokenizer/no_specials "eos id '$eos', ids: $(tr '\n' '|' <"$tmp/out")"
fi
printf '%s\n' "$eos" | "$LOOM" data decode --tokenizer "$tmp/tok.json" >"$tmp/out"
if [ "$(cat "$tmp/out")" = '<|eos|>' ]; then
    ok tokenizer/decode_special
else
    fail tokenizer/decode_special "got '$(cat "$tmp/out")'"
fi

printf 'hi\n\n' | "$LOOM" data encode --tokenizer bytes >"$tmp/out"
[ "$(tr '\n' '|' <"$tmp/out")" = '104 105||' ] && ok tokenizer/bytes || fail tokenizer/bytes "got '$(cat "$tmp/out")'"

# ---------------------------------------------------------------------------------------------------
# bad input: exit 2, one `loom: error: CULPRIT` line

# expect_error NAME CULPRIT STDIN ARGS...: runs $LOOM ARGS with STDIN as standard input
expect_error() {
    local name=$1 culprit=$2 input=$3
    shift 3
    "$LOOM" "$@" <"$input" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ "$rc" -eq 2 ] && grep -qF "loom: error: $culprit" "$tmp/err" && ! grep -q '^\[rank' "$tmp/err"; then
        ok "tokenizer/$name"
    else
        fail "tokenizer/$name" "exit status $rc (want 2, culprit $culprit); stderr: $(head -c 600 "$tmp/err")"
    fi
}

printf '{"model": {"type": "BPE", "vocab": ' >"$tmp/broken.json"
printf '{"model": {"type": "Unigram", "vocab": []}}' >"$tmp/unigram.json"
printf '1 2 3\n4 99999999\n' >"$tmp/bad_ids.txt"
printf '1 2\n3 x7\n' >"$tmp/nan_ids.txt"
printf '{"text": "fine"}\n{"txt": "no text"}\n' >"$tmp/bad.jsonl"
expect_error missing_tokenizer "$tmp/none.json" "$tmp/corpus.txt" data encode --tokenizer "$tmp/none.json"
expect_error malformed_json "$tmp/broken.json" "$tmp/corpus.txt" data encode --tokenizer "$tmp/broken.json"
expect_error not_bpe "$tmp/unigram.json" "$tmp/corpus.txt" data decode --tokenizer "$tmp/unigram.json"
expect_error id_out_of_range "stdin line 2" "$tmp/bad_ids.txt" data decode --tokenizer "$tmp/tok.json"
expect_error id_not_a_number "stdin line 2" "$tmp/nan_ids.txt" data decode --tokenizer "$tmp/tok.json"
expect_error missing_input "$tmp/none.txt" /dev/null data tokenizer-train --in "$tmp/none.txt" --vocab-size 300 \
    --out "$tmp/t2.json"
expect_error vocab_too_small "--vocab-size" /dev/null data tokenizer-train --in "$tmp/corpus.txt" --vocab-size 100 \
    --out "$tmp/t2.json"
expect_error no_vocab_size "--vocab-size" /dev/null data tokenizer-train --in "$tmp/corpus.txt" --out "$tmp/t2.json"
expect_error bad_jsonl "$tmp/bad.jsonl:2" /dev/null data tokenizer-train --in "$tmp/bad.jsonl" --vocab-size 300 \
    --out "$tmp/t2.json"
[ ! -e "$tmp/t2.json" ] && ok tokenizer/refused_writes_nothing || fail tokenizer/refused_writes_nothing "t2.json exists"

cp "$tmp/tok.json" "$tmp/tok.copy"
expect_error no_overwrite "$tmp/tok.json" /dev/null data tokenizer-train --in "$tmp/corpus.txt" --vocab-size 300 \
    --out "$tmp/tok.json"
cmp -s "$tmp/tok.json" "$tmp/tok.copy" && ok tokenizer/no_overwrite_unchanged ||
    fail tokenizer/no_overwrite_unchanged "tok.json changed"

# ---------------------------------------------------------------------------------------------------
# the same file in Hugging Face `tokenizers`: identical ids, line by line. Text that looks like a special
# token must stay text there too: Tokenizer.encode_special_tokens = True (what `transformers` calls
# split_special_tokens) keeps `tokenizers` from matching added tokens in the input, and
# add_special_tokens=False keeps a post-processor from adding any.

if ! python3 -c 'import tokenizers' 2>/dev/null; then
    timeout 180 python3 -m pip install -q --retries 1 --timeout 15 tokenizers >/dev/null 2>&1
fi
if ! python3 -c 'import tokenizers' 2>/dev/null; then
    echo "skip tokenizer/hf_same_ids: the Python package tokenizers is not available (pip install tokenizers)"
    [ "$failures" -eq 0 ]
    exit
fi

# more text for the comparison: every script and category the regex treats apart
cat "$tmp/corpus.txt" >"$tmp/hf.txt"
printf '%s\n' "HelloWorld's DON'T I'm they'll WE'VE" "GPT4o模型，训练。" "東京タワー　ひらがな" "한국어 텍스트" \
    'a   b' '  c' $'\t\ttabs\t' 'x  ' '3.14 12345 ١٢٣ ½' '😀😀! 👍🏽' '<|eos|><think>' 'naïve Ελληνικά' \
    $'\u3000\u00a0\u2028 mixed' 'ǅemo ʰmod' 'ｈｅｌｌｏ１２' >>"$tmp/hf.txt"
"$LOOM" data encode --tokenizer "$tmp/tok.json" <"$tmp/hf.txt" >"$tmp/hf.loom"
python3 - "$tmp/tok.json" "$tmp/hf.txt" >"$tmp/hf.ids" 2>"$tmp/hf.err" <<'EOF'
import sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
tok.encode_special_tokens = True
lines = open(sys.argv[2], 'rb').read().split(b'\n')[:-1]
for line in lines:
    print(' '.join(map(str, tok.encode(line.decode('utf-8'), add_special_tokens=False).ids)))
EOF
if [ -s "$tmp/hf.ids" ] && cmp -s "$tmp/hf.ids" "$tmp/hf.loom"; then
    ok tokenizer/hf_same_ids
else
    line=$(cmp "$tmp/hf.ids" "$tmp/hf.loom" 2>&1 | sed -n 's/.* line \([0-9]*\).*/\1/p')
    n=${line:-1}
    fail tokenizer/hf_same_ids "python: $(head -c 300 "$tmp/hf.err"); first differing line ${line:-?}: \
'$(sed -n "${n}p" "$tmp/hf.txt")' tokenizers: $(sed -n "${n}p" "$tmp/hf.ids") loom: $(sed -n "${n}p" "$tmp/hf.loom")"
fi

[ "$failures" -eq 0 ]
