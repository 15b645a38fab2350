#!/usr/bin/env bash
set -u
# tests/cli/test_comm.sh — the communication layer's test (build/tests/test_comm) on 3 ranks, so uneven
# shares, rings and all-to-all-v see more than one peer. Only rank 0's lines are counted.
source "$(dirname "$0")/lib.sh"
out=$(timeout 120 scripts/launch.sh -np 3 --output-filename "$tmp/out" build/tests/test_comm 2>&1)
rc=$?
if [ -f "$tmp/out/1/rank.0/stdout" ]; then
    cat "$tmp/out/1/rank.0/stdout"
    for r in 1 2; do
        if grep -q '^FAIL' "$tmp/out/1/rank.$r/stdout"; then fail "comm/rank$r" "$(grep '^FAIL' "$tmp/out/1/rank.$r/stdout")"; fi
    done
else
    fail "comm/run" "exit status $rc: $out"
fi
[ "$rc" -eq 0 ] && ok "comm/exit_status" || fail "comm/exit_status" "launch exited $rc"
[ "$failures" -eq 0 ]
