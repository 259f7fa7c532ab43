#!/bin/bash
# The reliability errors through the binaries, on a tiny model (tiny_hd64's GGUF, the ShareGPT fixture): an
# overflowing optimizer step (--lr 1e39) is an error with nothing saved or exported, not an all-NaN export; NaN and
# infinite flag values are refused naming the flag; medusa-eval on heads with a NaN weight fails naming them instead of
# printing accuracies; trees with fractional choices or trailing text are refused, and one too large for the context
# is named as such.
#   tests/cli_errors.sh [BIN_DIR]     (default: bin)
# Like the C tests, its last line is "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-bin}
MODEL=tests/fixtures/models/tiny_hd64/gguf/tiny_hd64.F32.gguf
CONVS=tests/fixtures/chat/conversations.json
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cli_errors.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "  ok   $*"; }
fail() { failed=$((failed + 1)); echo "  FAIL $*"; }
check_fails() { # WHAT NEEDLE CMD...: CMD must exit with status 1 with NEEDLE in its output
    local what=$1 needle=$2 rc=0
    shift 2
    "$@" >"$TMP/log" 2>&1 || rc=$?
    if [ $rc = 1 ] && grep -qF -- "$needle" "$TMP/log"; then ok "$what: $(grep -m1 -F -- "$needle" "$TMP/log")"; else
        fail "$what (exit status $rc, '$needle' expected)"
        tail -3 "$TMP/log" | sed 's/^/       /'
    fi
}

"$BIN/medusa-data" --model "$MODEL" --input "$CONVS" --out "$TMP/sg" --template mistral --max-len 96 \
    --val-fraction 0.2 --quiet
TRAIN=("$BIN/medusa-train" --model "$MODEL" --data "$TMP/sg.train.tokens.h5" --heads 2 --batch-tokens 128
    --device cpu --precision fp32)

check_fails "medusa-train --device cpu --gemm-tune" "--gemm-tune: the cpu backend has no GEMM algorithms to choose from" \
    "${TRAIN[@]}" --out "$TMP/tune" --gemm-tune
check_fails "medusa-train --lr 1e39 --max-steps 1" \
    "the heads' parameters or AdamW moments are not finite after optimizer step 1 (try a lower --lr); ckpt-1.h5 not written; no checkpoint was written" \
    "${TRAIN[@]}" --out "$TMP/nan" --lr 1e39 --warmup-ratio 0 --max-steps 1
if [ -z "$(find "$TMP/nan" -name 'ckpt-*' -o -name medusa)" ]; then ok "... and neither a checkpoint nor an export"; else
    fail "... but it wrote $(ls "$TMP/nan")"
fi
check_fails "medusa-train --lr nan" "option --lr needs a finite number, got 'nan'" "${TRAIN[@]}" --out "$TMP/x" --lr nan
check_fails "medusa-train --warmup-ratio inf" "option --warmup-ratio needs a finite number, got 'inf'" \
    "${TRAIN[@]}" --out "$TMP/x" --warmup-ratio inf
check_fails "medusa-infer --temperature -inf" "option --temperature needs a finite number, got '-inf'" \
    "$BIN/medusa-infer" --model "$MODEL" --prompt-ids "1,2" --temperature -inf

# good heads, then the same with one NaN weight (the first 4 bytes of the weights file's data)
"${TRAIN[@]}" --out "$TMP/good" --max-steps 2 >/dev/null 2>&1
cp -r "$TMP/good/medusa" "$TMP/nan_heads"
weights="$TMP/nan_heads/medusa_lm_head.safetensors"
header=$(od -An -t u8 -N 8 "$weights" | tr -d ' ')
printf '\x00\x00\xc0\x7f' | dd of="$weights" bs=1 seek=$((8 + header)) conv=notrunc status=none
check_fails "medusa-eval on heads with a NaN weight" "$TMP/nan_heads: the heads' parameters are not finite" \
    "$BIN/medusa-eval" --model "$MODEL" --medusa "$TMP/nan_heads" --data "$TMP/sg.val.tokens.h5" --device cpu
if grep -q "medusa0 " "$TMP/log"; then fail "... but it printed accuracies"; else ok "... and printed no accuracy"; fi

INFER=("$BIN/medusa-infer" --model "$MODEL" --medusa "$TMP/good/medusa" --prompt-ids "1,2,3" --max-new-tokens 4
    --device cpu)
echo '[[0.5], [1.9]]' >"$TMP/frac.json"
check_fails "a tree with fractional choices" "$TMP/frac.json: path 0 has choice 0.5, not an integer in 0..9" \
    "${INFER[@]}" --tree "$TMP/frac.json"
echo '[[0], [1]] trailing' >"$TMP/trail.json"
check_fails "a tree with trailing text" "$TMP/trail.json: text after the tree's list" \
    "${INFER[@]}" --tree "$TMP/trail.json"
paths="[0]"
for i in $(seq 1 9); do paths="$paths,[$i]"; done
for i in $(seq 0 9); do for j in $(seq 0 9); do paths="$paths,[$i,$j]"; done; done
echo "[$paths]" >"$TMP/big.json"
check_fails "a tree of 110 paths with --ctx 100" "the tree's 111 nodes do not fit the context of 100 tokens (--ctx" \
    "${INFER[@]}" --tree "$TMP/big.json" --ctx 100
check_fails "a prompt that leaves the tree no room" "a prompt of 3 tokens and the tree's 111 nodes" \
    "${INFER[@]}" --tree "$TMP/big.json" --ctx 114
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
