# shellcheck shell=bash
# What the end-to-end scripts share (sourced after they cd to the repository root and set TMP): pass/fail counting,
# and the checks, each printing one "ok"/"FAIL" line; `finish` prints "N passed, N failed", the last line tests/run.sh
# reads, and returns the status (a script's last command, or `finish; exit`).
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "  ok   $*"; }
fail() { failed=$((failed + 1)); echo "  FAIL $*"; }
# check WHAT CMD...: CMD must succeed; its output goes to $TMP/log, shown (its tail) when it fails
check() {
    local what=$1
    shift
    if "$@" >"$TMP/log" 2>&1; then ok "$what"; else
        fail "$what (exit status $?)"
        tail -8 "$TMP/log" | sed 's/^/       /'
    fi
}
# check_fails WHAT NEEDLE CMD...: CMD must fail with NEEDLE in its output
check_fails() {
    local what=$1 needle=$2
    shift 2
    if "$@" >"$TMP/log" 2>&1; then fail "$what (succeeded)"; elif grep -q -- "$needle" "$TMP/log"; then
        ok "$what: $(grep -m1 -- "$needle" "$TMP/log")"
    else
        fail "$what (no '$needle' in its output)"
        tail -3 "$TMP/log" | sed 's/^/       /'
    fi
}
# expect COND WHAT: passes when the shell test COND (a string for eval, in single quotes) holds
expect() { if eval "$1"; then ok "$2"; else fail "$2"; fi; }
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}
