#!/usr/bin/env bash
# tests/cli/test_fuzz_regressions.sh — the fuzz targets' seed corpora (tests/fuzz/corpus/NAME/) and the inputs
# of the crashes fuzzing found (tests/fuzz/regressions/NAME/), replayed without libFuzzer: each file goes
# through its target's LLVMFuzzerTestOneInput in a process of its own (build/tests/fuzz/replay_NAME, from
# tests/fuzz/replay.c), which must return from it: exit status 0 within the time limit. A regression that
# comes back aborts (a CHECK, a broken invariant of the target), crashes, hangs or exits 2 through an input
# error the target did not catch. FUZZ_REPLAY_DIR picks the replay binaries (`make test SANITIZE=...` sets it
# to that build, so the inputs also run under the sanitizers).
# Run from the repository root after `make test` built the binaries: bash tests/cli/test_fuzz_regressions.sh
set -u
source "$(dirname "$0")/lib.sh"

dir=${FUZZ_REPLAY_DIR:-build/tests/fuzz}
LIMIT=60
export TMPDIR=$tmp
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}

names=()
for target in tests/fuzz/fuzz_*.c; do
    name=${target#tests/fuzz/fuzz_}
    names+=("${name%.c}")
done
[ ${#names[@]} -gt 0 ] || fail fuzz_regressions/targets "no tests/fuzz/fuzz_*.c"

for name in "${names[@]}"; do
    bin=$dir/replay_$name
    if [ ! -x "$bin" ]; then
        fail "fuzz_regressions/$name/binary" "$bin is missing: run make test first"
        continue
    fi
    n=0
    for input in tests/fuzz/corpus/"$name"/* tests/fuzz/regressions/"$name"/*; do
        [ -f "$input" ] || continue
        n=$((n + 1))
        timeout -k 5 "$LIMIT" "$bin" "$input" >"$tmp/out" 2>"$tmp/err"
        rc=$?
        kind=corpus
        [[ $input == tests/fuzz/regressions/* ]] && kind=regressions
        label=fuzz_regressions/$name/$kind/$(basename "$input")
        if [ "$rc" -eq 0 ]; then
            ok "$label"
        elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            fail "$label" "no result after $LIMIT s (hang?)"
        else
            why="exit status $rc (2: an input error escaped the target; 134: abort; 139: crash)"
            fail "$label" "$why: $(tail -c 1500 "$tmp/err")"
        fi
    done
    [ "$n" -gt 0 ] || fail "fuzz_regressions/$name/inputs" "no seed or regression input for the $name target"
done
[ "$failures" -eq 0 ]
