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

# ---- the MPI scripts' ----
# MPIRUN starts ranks of one thread each; root's runs allowed (CI runs as root), more ranks than cores allowed.
# shellcheck disable=SC2034 # used by the scripts that source this file
MPIRUN=(mpirun --oversubscribe --allow-run-as-root --bind-to none -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=passive)
# mpi_missing BINARY: where mpirun is missing or BINARY was built without MPI, one passing line that says so, the
# summary, and true (the script then exits); else false
mpi_missing() {
    if command -v mpirun >/dev/null && ldd "$1" 2>/dev/null | grep -q libmpi; then return 1; fi
    ok "skipped: $(command -v mpirun >/dev/null && echo "$1 built without MPI" || echo "no mpirun") (make deps installs OpenMPI)"
    finish
    true
}
# rel_error FILE-A FILE-B N: the largest relative difference of their lines, 1 unless both hold N numbers
rel_error() {
    paste "$1" "$2" | awk -v want="$3" '{d = $1 - $2; if (d < 0) d = -d; s = $1 < 0 ? -$1 : $1; if (s > 0) d = d / s
        if (d > m) m = d; n++} END {print ((n == want && NF == 2) ? m + 0 : 1)}'
}
# heads_error NAME-A NAME-B [DEVICE]: the heads exported to $TMP/run_NAME evaluated by medusa-eval (on DEVICE, default
# cpu) on 2 batches of 128 tokens of $TMP/sg.train.tokens.h5 for $MODEL: the largest relative difference of their losses
heads_error() {
    for n in "$1" "$2"; do
        "$BIN/medusa-eval" --model "$MODEL" --medusa "$TMP/run_$n/medusa" --data "$TMP/sg.train.tokens.h5" \
            --batch-tokens 128 --max-batches 2 --device "${3:-cpu}" --json "$TMP/eval_$n.json" >/dev/null 2>&1
        grep -E '"(medusa[0-9]_loss|loss)"' "$TMP/eval_$n.json" 2>/dev/null | tr -d ' \t",' | cut -d: -f2 >"$TMP/heads_$n"
    done
    paste "$TMP/heads_$1" "$TMP/heads_$2" | awk '{d = $1 - $2; if (d < 0) d = -d; s = $1 < 0 ? -$1 : $1; if (s > 0) d = d / s
        if (d > m) m = d; n++} END {print (n >= 3 ? m + 0 : 1)}'
}
# kill_rank_mid_run WHAT PICK CMD...: CMD (an MPI run of medusa-train whose --out ends in run_killed) in the
# background; once it trains, one of its ranks (PICK: head, the first started, or tail) killed with SIGKILL; the run
# must end within 60 s with a non-zero status, never hang
kill_rank_mid_run() {
    local what=$1 pick=$2 start=$SECONDS victim="" rc
    shift 2
    timeout 90 "$@" >"$TMP/log" 2>&1 &
    local launcher=$!
    for _ in $(seq 100); do # a rank's command line starts with the binary, mpirun's with mpirun
        victim=$(pgrep -f "^[^ ]*medusa-train .*run_killed" | "$pick" -1)
        [ -n "$victim" ] && grep -q "training " "$TMP/log" 2>/dev/null && break
        sleep 0.3
    done
    sleep 1
    [ -n "$victim" ] && kill -9 "$victim"
    wait $launcher
    rc=$?
    expect "[ -n '$victim' ] && [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $((SECONDS - start)) -lt 60 ]" \
        "$what killed with SIGKILL mid-run: the run ends with status $rc after $((SECONDS - start)) s (under 60)"
}
