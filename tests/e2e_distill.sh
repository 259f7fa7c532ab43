#!/bin/bash
# medusa-distill end to end on a tiny model (tiny_hd64's GGUF with its byte tokenizer) and the ShareGPT fixture:
# output that medusa-data reads (its contents: tests/test_distill.c); the same replies
# whatever the batch; a run stopped partway (and one whose last line was cut off) continued to the same output; a
# re-run with other settings refused; --device cuda (the emulated kernels under `make test`) with the cpu's replies.
#   tests/e2e_distill.sh [BIN_DIR]     (default: $E2E_BIN_DIR, else bin)
# Like the C tests, its last line is "N passed, N failed".
# shellcheck disable=SC2016 # expect's conditions are single-quoted strings for eval
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${E2E_BIN_DIR:-bin}}
MODEL=tests/fixtures/models/tiny_hd64/gguf/tiny_hd64.F32.gguf
CONVS=tests/fixtures/chat/conversations.json
TMP=$(mktemp -d "${TMPDIR:-/tmp}/e2e_distill.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# shellcheck source=tests/e2e_lib.sh
. tests/e2e_lib.sh

distill() { # OUT [FLAGS...] (fp32 weights unless FLAGS say otherwise)
    "$BIN/medusa-distill" --model "$MODEL" --input "$CONVS" --out "$1" --chat-template mistral --max-len 256 \
        --max-new-tokens 16 --precision fp32 "${@:2}"
}

check "medusa-distill --batch 4: the fixture's conversations regenerated" distill "$TMP/b4.jsonl" --batch 4
n_in=$(grep -c '"id"' "$CONVS")
n_out=$(wc -l <"$TMP/b4.jsonl")
expect '[ ! -e "$TMP/b4.jsonl.partial" ] && [ "$n_out" -gt 0 ] && [ "$n_out" -le "$n_in" ]' \
    "output complete: $n_out of $n_in conversations (the others: no reply fits --max-len 256), no partial file left"
check "medusa-distill --batch 1" distill "$TMP/b1.jsonl" --batch 1
expect 'cmp -s "$TMP/b1.jsonl" "$TMP/b4.jsonl"' "greedy replies one at a time equal 4 at once (identical files)"

check "medusa-data reads the output" "$BIN/medusa-data" --model "$MODEL" --input "$TMP/b4.jsonl" --out "$TMP/sg" \
    --template mistral --max-len 256 --val-fraction 0 --quiet
expect '[ -s "$TMP/sg.train.tokens.h5" ]' "token cache written from the distilled conversations"

# a run stopped after 5 conversations keeps them in OUT.partial; the re-run continues to the same output
check "medusa-distill --stop-after 5" distill "$TMP/r.jsonl" --batch 4 --stop-after 5
expect '[ ! -e "$TMP/r.jsonl" ] && [ "$(($(wc -l <"$TMP/r.jsonl.partial") - 1))" -ge 5 ]' \
    "stopped run: no output yet, $(($(wc -l <"$TMP/r.jsonl.partial") - 1)) conversations kept in r.jsonl.partial"
check_fails "a re-run with other settings is refused" "other settings" distill "$TMP/r.jsonl" --max-new-tokens 8
# a stop in the middle of a write leaves half a line
head -c -20 "$TMP/r.jsonl.partial" >"$TMP/cut" && cp "$TMP/cut" "$TMP/r.jsonl.partial"
check "medusa-distill continues the stopped run (its last line cut off)" distill "$TMP/r.jsonl" --batch 3
expect 'grep -q "dropping" "$TMP/log" && grep -q "already done" "$TMP/log"' "the cut line was dropped, the rest kept"
expect 'cmp -s "$TMP/r.jsonl" "$TMP/b4.jsonl" && [ ! -e "$TMP/r.jsonl.partial" ]' \
    "continued run's output equals the uninterrupted run's"

check "medusa-distill --temperature 0.8 --seed 3 (.json list output)" distill "$TMP/t.json" --batch 4 \
    --temperature 0.8 --seed 3 --limit 8
expect '[ "$(head -c 8 "$TMP/t.json")" = "[{\"id\":\"" ] && [ "$(grep -o "{\"id\"" "$TMP/t.json" | wc -l)" -le 8 ]' \
    "sampled: a JSON list of at most --limit 8 conversations"
check "sampled again with another batch" distill "$TMP/t2.json" --batch 2 --temperature 0.8 --seed 3 --limit 8
expect 'cmp -s "$TMP/t.json" "$TMP/t2.json"' "sampled replies do not depend on the batch (each conversation its own stream)"

# a budget that ends at the first pass: no reply is finished, so the output is written empty
check "medusa-distill --time-budget 0.001" distill "$TMP/tb.jsonl" --batch 4 --time-budget 0.001
expect '[ -e "$TMP/tb.jsonl" ] && [ ! -s "$TMP/tb.jsonl" ] && [ ! -e "$TMP/tb.jsonl.partial" ] && grep -q "time budget" "$TMP/log"' \
    "time budget over before any reply ends: an empty output, no partial file"

printf 'not json' >"$TMP/bad.json"
check_fails "an input that is not JSON" "bad.json" "$BIN/medusa-distill" --model "$MODEL" --input "$TMP/bad.json" \
    --out "$TMP/x.jsonl" --chat-template mistral
check_fails "--batch larger than --pass-tokens" "--pass-tokens" distill "$TMP/x.jsonl" --batch 64 --pass-tokens 32

if "$BIN/medusa-distill" --help 2>&1 | grep -q cuda && "$BIN/medusa-distill" --device cuda --model "$MODEL" \
    --input "$CONVS" --out "$TMP/probe.jsonl" --chat-template mistral --limit 1 >/dev/null 2>&1; then
    check "medusa-distill --device cuda --precision fp32 --limit 12" distill "$TMP/cuda.jsonl" --device cuda --batch 4 \
        --limit 12
    head -n "$(wc -l <"$TMP/cuda.jsonl")" "$TMP/b4.jsonl" >"$TMP/cpu12.jsonl"
    expect 'cmp -s "$TMP/cuda.jsonl" "$TMP/cpu12.jsonl"' "cuda's greedy replies equal the cpu's (fp32 weights)"
    # bf16 weights: a pass's rows round in another order on cuda than on the cpu, which can flip a greedy choice
    # between two logits within bf16 rounding (a near-tie, as medusa-infer --bench allows): most conversations agree
    check "medusa-distill --device cuda --limit 12 (bf16 weights)" distill "$TMP/cuda16.jsonl" --device cuda \
        --precision bf16 --batch 4 --limit 12
    check "medusa-distill --device cpu --precision bf16 --limit 12" distill "$TMP/cpu16.jsonl" --precision bf16 \
        --batch 4 --limit 12
    n16=$(wc -l <"$TMP/cpu16.jsonl")
    same16=$(paste -d '\n' "$TMP/cuda16.jsonl" "$TMP/cpu16.jsonl" | awk 'NR % 2 {a = $0; next} {s += a == $0} END {print s + 0}')
    expect '[ "$(wc -l <"$TMP/cuda16.jsonl")" = "$n16" ] && [ "$same16" -ge $((n16 - 2)) ]' \
        "bf16 weights: $same16 of $n16 conversations identical on cuda and cpu (at least $((n16 - 2)))"
else
    echo "  (no cuda device in $BIN: the cuda part is skipped)"
fi
finish
