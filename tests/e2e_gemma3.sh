#!/bin/bash
# Medusa end to end on the second real model, Gemma 3 270M (Q4_K_M GGUF, 262144-token vocabulary, a base model
# without a chat template: the gemma template by flag), on the cpu: medusa-data on the ShareGPT fixture, a few
# training steps of 2 truncated heads (--head-vocab 1024) and both export layouts, medusa-eval on the exports (the
# training run's own final evaluation reproduced), medusa-infer tune, and decoding: greedy Medusa output equal to plain
# greedy output (--bench on 4 prompts with a tree two heads deep, and one --prompt with the default tree), typical
# acceptance (--temperature 0.7) running and repeatable. About 45 s on 2 cores. Skipped, with a line that says so,
# where the model could not be fetched (data/fetch_demo.sh gemma3).
#   tests/e2e_gemma3.sh [BIN_DIR]     (default: $E2E_BIN_DIR, else bin; the cpu device either way)
# Like the C tests, its last line is "N passed, N failed".
# shellcheck disable=SC2016 # expect's conditions are single-quoted strings for eval
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${E2E_BIN_DIR:-bin}}
MODEL=${MEDUSA_GEMMA3_GGUF:-cache/models/gemma-3-270m-q4_k_m.gguf}
CONVS=tests/fixtures/chat/conversations.json
PROMPTS=tests/fixtures/gemma3_prompts.txt
TMP=$(mktemp -d "${TMPDIR:-/tmp}/e2e_gemma3.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# shellcheck source=tests/e2e_lib.sh
. tests/e2e_lib.sh

if [ ! -s "$MODEL" ]; then
    echo "skipped: Gemma 3 270M not present at $MODEL (data/fetch_demo.sh gemma3)"
    finish
    exit
fi

# ---- token caches with the gemma template ----
check "medusa-data --template gemma on the fixture's conversations" "$BIN/medusa-data" --model "$MODEL" \
    --input "$CONVS" --out "$TMP/c" --template gemma --max-len 256 --val-fraction 0.2 --quiet
check "medusa-data stats" "$BIN/medusa-data" stats "$TMP/c.train.tokens.h5" "$TMP/c.val.tokens.h5"
expect '[ "$(grep -c "template  *gemma" "$TMP/log")" = 2 ] && [ "$(grep -c "vocabulary 262144" "$TMP/log")" = 2 ]' \
    "train and validation caches: template gemma, the 262144-token vocabulary ($(grep "^  conversations" "$TMP/log" | awk '{printf "%s%s", NR > 1 ? " + " : "", $2}') conversations)"

# ---- a few training steps: 2 heads over the 1024 most frequent targets (full-vocabulary heads would be GBs) ----
check "medusa-train --heads 2 --head-vocab 1024 --max-steps 3 --batch-tokens 512" "$BIN/medusa-train" \
    --model "$MODEL" --data "$TMP/c.train.tokens.h5" --val "$TMP/c.val.tokens.h5" --out "$TMP/run" --heads 2 \
    --head-vocab 1024 --max-steps 3 --batch-tokens 512 --eval-batches 2 --log-every 1 --device cpu
cp "$TMP/log" "$TMP/train_log"
# the losses of the 3 logged steps and the final evaluation, finite
finite_losses() {
    awk '/"split":"train"/ {n++} {if (match($0, /"loss":[^,}]*/)) {v = substr($0, RSTART + 7, RLENGTH - 7);
        if (v !~ /^-?[0-9.]+([eE][-+]?[0-9]+)?$/) bad++}} END {exit !(n == 3 && !bad)}' "$TMP/run/metrics.jsonl" &&
        grep -q '"split":"eval","step":3' "$TMP/run/metrics.jsonl"
}
json_num() { # FILE KEY: the first number of "KEY": in FILE
    grep -o "\"$2\":[[:space:]]*[-0-9.eE+]*" "$1" | head -1 | sed 's/.*:[[:space:]]*//'
}
train_eval_loss=$(grep '"split":"eval"' "$TMP/run/metrics.jsonl" | tail -1 >"$TMP/eval_line" && json_num "$TMP/eval_line" loss)
expect 'finite_losses' \
    "metrics.jsonl: 3 training steps and the final evaluation, every loss finite (last step $(grep '"split":"train"' "$TMP/run/metrics.jsonl" | tail -1 >"$TMP/l" && json_num "$TMP/l" loss), eval ${train_eval_loss:-none}); $(grep -o "[0-9.]*% of the trained targets" "$TMP/train_log")"
v1="$TMP/run/medusa"
expect '[ -s "$TMP/run/ckpt-3.h5" ] && [ -s "$v1/medusa_lm_head.safetensors" ] &&
    [ "$(json_num "$v1/config.json" medusa_num_heads)" = 2 ] && [ "$(json_num "$v1/config.json" medusa_head_vocab)" = 1024 ] &&
    [ "$(json_num "$v1/config.json" vocab_size)" = 262144 ] && [ "$(json_num "$v1/config.json" hidden_size)" = 640 ]' \
    "RUN/ckpt-3.h5 and the v1 export RUN/medusa: config.json (2 heads, medusa_head_vocab 1024 of 262144, hidden 640) + medusa_lm_head.safetensors"
check "medusa-train export --format vllm" "$BIN/medusa-train" export --ckpt "$TMP/run" --out "$TMP/vllm" --format vllm
expect '[ -s "$TMP/vllm/model.safetensors" ] && [ "$(json_num "$TMP/vllm/config.json" num_heads)" = 2 ] &&
    [ "$(json_num "$TMP/vllm/config.json" truncated_vocab_size)" = 1024 ]' \
    "vLLM export: config.json (num_heads 2, truncated_vocab_size 1024) + model.safetensors"

# ---- evaluation: the same 2 validation batches as the run's final evaluation give its loss, from either export ----
evaluate() { # HEADS JSON
    "$BIN/medusa-eval" --model "$MODEL" --medusa "$1" --data "$TMP/c.val.tokens.h5" --max-batches 2 \
        --batch-tokens 512 --json "$2" --device cpu
}
same_loss() { awk -v a="$1" -v b="$2" 'BEGIN {d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= 1e-6 * (a < 0 ? -a : a))}'; }
check "medusa-eval on the v1 export" evaluate "$v1" "$TMP/eval.json"
v1_loss=$(json_num "$TMP/eval.json" loss)
expect 'same_loss "$v1_loss" "$train_eval_loss" && grep -q "medusa1_base_top1" "$TMP/eval.json"' \
    "medusa-eval's loss $v1_loss equals the run's final evaluation (the same batches), base agreement reported (base top-1 $(json_num "$TMP/eval.json" base_top1))"
check "medusa-eval on the vLLM export" evaluate "$TMP/vllm" "$TMP/eval_vllm.json"
expect 'same_loss "$(json_num "$TMP/eval_vllm.json" loss)" "$v1_loss"' "the vLLM export evaluates to the same loss"

# ---- a tree tuned for these heads (a short timing) ----
check "medusa-infer tune --budgets 4,8" "$BIN/medusa-infer" tune --accuracies "$TMP/eval.json" --model "$MODEL" \
    --medusa "$v1" --budgets 4,8 --steps 4 --context 64 --out "$TMP/tuned.json" --device cpu
expect 'grep -q "^\[\[" "$TMP/tuned.json"' "tuned tree written: $(cat "$TMP/tuned.json" 2>/dev/null)"

# ---- lossless decoding: greedy Medusa == plain greedy ----
# a tree that uses both heads, with siblings at both depths (the default cpu tree, [[0], [1]], uses head 0 only)
echo '[[0], [1], [2], [0, 0], [0, 1], [1, 0], [3]]' >"$TMP/tree.json"
# --bench decodes each prompt plainly, with greedy Medusa and with typical acceptance (temperature 0.7), compares the
# greedy outputs and fails on a difference; a near-tie (the two tokens' base logits within 1e-4 of the row's largest,
# rounding of a tree's rows vs one row) it reports apart; this test wants every prompt exactly equal
check "medusa-infer --bench: 4 prompts, 24 new tokens, a 7-node tree of 2 heads" "$BIN/medusa-infer" \
    --model "$MODEL" --medusa "$v1" --chat-template gemma --tree "$TMP/tree.json" --max-new-tokens 24 \
    --bench "$PROMPTS" --device cpu
cp "$TMP/log" "$TMP/bench"
row() { grep "^$1 " "$TMP/bench" | tr -s ' ' | cut -d' ' -f"$2"; }
expect 'grep -q "^greedy Medusa output == plain greedy output on 4/4 prompts$" "$TMP/bench"' \
    "greedy Medusa output == plain greedy output, token for token, on 4/4 prompts ($(grep -c " yes$" "$TMP/bench") rows say yes)"
# equality means something only where candidates were accepted: more than 1 token per step (9 of 96 on 2 cores)
expect 'awk -v g="$(row "medusa greedy" 5)" -v t="$(row "medusa typical" 5)" "BEGIN {exit !(g > 1 && t > 1)}"' \
    "bench: candidates accepted (over 1 token per step, greedy and typical); plain $(row "plain greedy" 4) tokens/s; Medusa greedy $(row "medusa greedy" 4) tokens/s, $(row "medusa greedy" 5) tokens/step; typical $(row "medusa typical" 4) tokens/s, $(row "medusa typical" 5) tokens/step"

infer() { # OUT [FLAGS...]: one prompt, the reply to OUT, the speed line to OUT.err
    "$BIN/medusa-infer" --model "$MODEL" --chat-template gemma --max-new-tokens 24 --device cpu \
        --prompt "What is the capital of France?" "${@:2}" >"$1" 2>"$1.err"
}
check "medusa-infer --prompt, plain greedy" infer "$TMP/plain"
check "medusa-infer --prompt --medusa (default tree), greedy" infer "$TMP/greedy" --medusa "$v1"
expect '[ -s "$TMP/plain" ] && cmp -s "$TMP/plain" "$TMP/greedy" && grep -q "(Medusa)" "$TMP/greedy.err"' \
    "--prompt: the Medusa reply equals the plain one ($(tail -1 "$TMP/greedy.err"))"
check "medusa-infer --prompt --medusa --temperature 0.7 (typical acceptance)" infer "$TMP/typ" --medusa "$v1" \
    --tree "$TMP/tree.json" --temperature 0.7 --seed 7
check "the same again" infer "$TMP/typ2" --medusa "$v1" --tree "$TMP/tree.json" --temperature 0.7 --seed 7
expect '[ -s "$TMP/typ" ] && cmp -s "$TMP/typ" "$TMP/typ2" && grep -q "(Medusa)" "$TMP/typ.err"' \
    "typical acceptance: a reply, the same for the same --seed ($(tail -1 "$TMP/typ.err"))"
finish
