# tests/cli/lib.sh — helpers shared by the tests/cli/test_*.sh scripts, which source it with
#   source "$(dirname "$0")/lib.sh"
# after `set -u`, run from the repository root. Gives them:
#   $LOOM           the binary under test (./loom)
#   $tmp            a fresh temporary folder, removed when the script exits
#   ok NAME         prints "ok NAME"
#   fail NAME WHY   prints "FAIL NAME: WHY" and counts it in $failures (end a script with [ "$failures" -eq 0 ])
#   run ARGS...     runs $LOOM ARGS: exit status in $rc, stdout in $tmp/out, stderr in $tmp/err (a script may
#                   define its own run after sourcing this)
#   require_loom P  fails check P/binary and exits when $LOOM has not been built
# Not a test itself: its name does not match tests/cli/test_*.sh.

LOOM=./loom
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

failures=0
ok() { echo "ok $1"; }
fail() {
    echo "FAIL $1: $2"
    failures=$((failures + 1))
}

run() {
    "$LOOM" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}

require_loom() {
    if [ ! -x "$LOOM" ]; then
        fail "$1/binary" "$LOOM is missing: run make loom first"
        exit 1
    fi
}
