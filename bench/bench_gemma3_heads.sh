#!/bin/sh
# Heads for the second real model, Gemma 3 270M (Q4_K_M GGUF, a base model: the gemma chat template by flag), trained
# once on the CPU and measured (`make bench-gemma3-heads`): ShareGPT conversations tokenised with the gemma template,
# 3 heads over the 4096 most frequent targets, the base model's hidden states cached after the first epoch, evaluated
# (agreement with the base model per head and k), a tree tuned to them, and plain vs Medusa decoding on the 24
# held-out ShareGPT prompts. Results go to runs/gemma3/ and the summary to stdout.
#   GEMMA3_CONVS    ShareGPT conversations read (default 600)
#   GEMMA3_MINUTES  training budget in minutes (default 25)
#   GEMMA3_TARGETS  what the heads learn (default labels: the data's tokens; base-argmax, the base model's greedy
#                   choices, needs its 262144-wide logits at every step, cached hidden states or not)
#   GEMMA3_THREADS  CPU threads (default: all cores)
set -eu
cd "$(dirname "$0")/.."

MODEL=${GEMMA3:-cache/models/gemma-3-270m-q4_k_m.gguf}
SHAREGPT=cache/data/ShareGPT_V3_unfiltered_cleaned_split.json
RUN=runs/gemma3
THREADS=${GEMMA3_THREADS:-$(nproc)}
export OMP_NUM_THREADS="$THREADS" OMP_WAIT_POLICY=passive
data/fetch_demo.sh gemma3
data/fetch_demo.sh

step() { printf '\n== %s\n' "$*"; }
mkdir -p "$RUN"
step "1/5 tokenise ${GEMMA3_CONVS:-600} ShareGPT conversations with the gemma template (10% held out)"
bin/medusa-data --model "$MODEL" --input "$SHAREGPT" --out "$RUN/sharegpt" --template gemma --max-len 1024 \
    --limit "${GEMMA3_CONVS:-600}" --val-fraction 0.1

TARGETS=${GEMMA3_TARGETS:-labels}
step "2/5 train 3 heads (head vocabulary 4096, $TARGETS targets) for at most ${GEMMA3_MINUTES:-25} minutes"
rm -rf "$RUN/train"
bin/medusa-train --model "$MODEL" --data "$RUN/sharegpt.train.tokens.h5" --val "$RUN/sharegpt.val.tokens.h5" \
    --out "$RUN/train" --heads 3 --head-vocab 4096 --targets "$TARGETS" --batch-tokens 2048 --epochs 6 \
    --cache-hidden --lr 2e-3 --time-budget $((${GEMMA3_MINUTES:-25} * 60)) --eval-every 0 --eval-batches 8 \
    --save-every 0 --log-every 5

step "3/5 evaluate every head on the held-out conversations"
bin/medusa-eval --model "$MODEL" --medusa "$RUN/train/medusa" --data "$RUN/sharegpt.val.tokens.h5" \
    --max-batches 16 --json "$RUN/eval.json"

step "4/5 tune a tree to the measured agreements and this machine"
env -u OMP_WAIT_POLICY bin/medusa-infer tune --accuracies "$RUN/eval.json" --model "$MODEL" \
    --medusa "$RUN/train/medusa" --budgets 1,2,4,8,16 --out "$RUN/tree.json"

step "5/5 decoding speed: plain greedy vs Medusa on the 24 held-out ShareGPT prompts"
env -u OMP_WAIT_POLICY bin/medusa-infer --model "$MODEL" --medusa "$RUN/train/medusa" --tree "$RUN/tree.json" \
    --chat-template gemma --bench bench/prompts_sharegpt_val.json --max-new-tokens 64 | tee "$RUN/bench.txt"
