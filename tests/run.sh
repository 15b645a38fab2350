#!/usr/bin/env bash
# tests/run.sh — runs every test given on the command line (executables or *.sh scripts), shows their
# output, and ends with the line "N passed, N failed" counted from their "ok"/"FAIL" lines. A test that
# exits non-zero without printing a FAIL line counts as one failure of its own.
set -u
passed=0
failed=0
for t in "$@"; do
    echo "== $t"
    if [[ $t == *.sh ]]; then out=$(bash "$t" 2>&1); rc=$?; else out=$("$t" 2>&1); rc=$?; fi
    printf '%s\n' "$out"
    p=$(printf '%s\n' "$out" | grep -c '^ok ')
    f=$(printf '%s\n' "$out" | grep -c '^FAIL ')
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $t: exited with status $rc"
        f=1
    fi
    passed=$((passed + p))
    failed=$((failed + f))
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
