#!/usr/bin/env bash
# scripts/fuzz.sh SECONDS NAME... — runs the libFuzzer targets build-fuzz/fuzz_NAME (made by `make fuzz`)
# one after another, each for SECONDS.
#
# Each starts from a scratch copy of its seed corpus tests/fuzz/corpus/NAME/ and its regression inputs
# tests/fuzz/regressions/NAME/ (what it finds stays in the scratch folder: nothing is written to the
# repository), with its dictionary (tests/fuzz/NAME.dict, or made here for config), a per-target -max_len,
# -timeout=10 (an input running longer is a hang) and -rss_limit_mb=2048. The targets' own output (loom's error lines) is discarded (-close_fd_mask=3); libFuzzer's
# and the sanitizers' reports go to build-fuzz/logs/NAME.log, whose last lines are printed. A crash, hang,
# leak of memory past the limit or sanitizer report leaves its input in build-fuzz/artifacts/ (keep it in
# tests/fuzz/regressions/NAME/ once fixed) and makes the script exit 1 after running the other targets.
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=$1
shift
declare -A max_len=([config]=4096 [shard]=32768 [tokenizer]=16384 [jsonl]=4096 [ckpt]=65536)

# corpora and the files the targets write: memory-backed when the machine has /dev/shm
base=${TMPDIR:-/tmp}
[ -d /dev/shm ] && [ -w /dev/shm ] && base=/dev/shm
scratch=$(mktemp -d -p "$base" loom-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
export TMPDIR=$scratch/tmp
mkdir -p "$TMPDIR" build-fuzz/logs build-fuzz/artifacts
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:symbolize=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
command -v llvm-symbolizer >/dev/null && export ASAN_SYMBOLIZER_PATH=$(command -v llvm-symbolizer)

# a dictionary for the config target: every section, key and enum value of core/config_keys.c, and the
# target's own markers (tests/fuzz/fuzz_config.c)
{
    sed -nE -e 's/^\s*K\((\w+), (\w+),.*/\1\n\2/p' -e 's/^\s*KM\((\w+),.*/moe\n\1/p' \
        -e 's/^\s*NAMED\((\w+), \w+, (\w+),.*/\1\n\2/p' core/config_keys.c
    grep -oE '"[a-z0-9_]+(\|[a-z0-9_]+)+"' core/config_keys.c | tr -d '"' | tr '|' '\n'
    printf '%s\n' include ' = ' '#@file ' '#@set '
} | sort -u | sed 's/.*/"&"/' >"$scratch/config.dict"

failed=()
for name in "$@"; do
    corpus=$scratch/corpus-$name
    mkdir -p "$corpus"
    for d in tests/fuzz/corpus/$name tests/fuzz/regressions/$name; do
        [ -d "$d" ] && find "$d" -maxdepth 1 -type f -exec cp {} "$corpus/" \;
    done
    log=build-fuzz/logs/$name.log
    echo "fuzz $name: ${seconds}s from $(ls "$corpus" | wc -l) seed inputs (log: $log)"
    dict=()
    [ -f tests/fuzz/"$name".dict ] && dict=(-dict=tests/fuzz/"$name".dict)
    [ -f "$scratch/$name.dict" ] && dict=(-dict="$scratch/$name.dict")
    build-fuzz/fuzz_"$name" "$corpus" "${dict[@]}" -max_total_time="$seconds" -max_len="${max_len[$name]:-4096}" \
        -timeout=10 -rss_limit_mb=2048 -close_fd_mask=3 -print_final_stats=1 \
        -artifact_prefix=build-fuzz/artifacts/"$name"- >"$log" 2>&1
    rc=$?
    grep -E '^(#[0-9]+[[:space:]]+DONE|Done [0-9]+ runs|stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb))' \
        "$log" | sed 's/^/    /'
    if [ "$rc" -ne 0 ]; then
        failed+=("$name")
        echo "fuzz $name: FAILED (exit status $rc); the end of $log:"
        tail -n 60 "$log" | sed 's/^/    /'
        ls build-fuzz/artifacts/"$name"-* 2>/dev/null | sed 's/^/    input: /'
    else
        echo "fuzz $name: ok, $(ls "$corpus" | wc -l) inputs in its corpus"
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: ${#failed[@]} of $# targets failed: ${failed[*]}"
    exit 1
fi
echo "fuzz: all $# targets ran ${seconds}s without a finding"
