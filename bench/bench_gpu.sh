#!/bin/bash
# GPU benchmark (`make bench-gpu`): Medusa head training throughput and MFU (bench_train: frozen base forward
# + heads forward/backward + AdamW) beside the PyTorch reference step on the same batches and GPU
# (bench_train_torch.py --device cuda, bf16 autocast), then decoding speed of Medusa vs plain greedy
# (medusa-infer --bench, which also checks greedy Medusa == plain greedy) with heads trained briefly on the GPU.
# First the GPU's own ceilings (bench/gpu_ceilings.py: a large bf16 matrix product, a large copy), which the step's
# FLOP/s and the profile's GB/s are read against.
# Writes OUT, by default bench/gpu_<GPU name>.txt with the name from nvidia-smi at the top.
# Settings (environment; the Makefile passes its BENCH_GPU_* variables):
#   MODEL          base model: .gguf or Hugging Face directory (default: the demo's SmolLM2-135M-Instruct)
#   BIN_DIR        medusa-data/-train/-infer (default bin); BENCH_TRAIN: the bench_train binary
#   DEVICE         --device of the C side (cuda); TORCH_DEVICE: of the PyTorch side (default: DEVICE)
#   SHAREGPT, DATA, DATA_ARGS  ShareGPT source, token cache prefix made from it once, extra medusa-data flags
#   STEPS, BATCH_TOKENS, HEADS  timed training steps, tokens per packed batch, Medusa heads
#   REFERENCE_PAD  the PyTorch step also as the reference trainer feeds it: conversations padded to this length
#                  (its model_max_length, 2048); 0: only the unpadded step
#   CACHED_STEPS   heads-only steps on cached hidden states (bench_train --cached-steps: each batch's rows uploaded in
#                  the queue vs during the step before); 0: none
#   PROFILE_STEPS  steps of a second bench_train run with MEDUSA_CUDA_PROFILE=1 (GPU time per kernel and GEMM
#                  shape, each synchronized), its table appended; 0: none
#   HEAD_STEPS, PROMPTS, MAX_NEW, INFER_ARGS  decoding: training steps of its heads (0: no decoding part),
#                                             prompt set, new tokens, extra medusa-infer flags
#   DECODE_NOTE    a line printed under the decoding header (random weights: acceptance is chance)
#   PYTHON         the reference tooling's interpreter (make venv)
# A dry run on the CPU (no nvidia-smi) needs OUT set: it runs the emulated binaries (build/emu) and writes
# no bench/gpu_*.txt, since its numbers did not come from a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
BIN_DIR=${BIN_DIR:-bin}
BENCH_TRAIN=${BENCH_TRAIN:-build/bench/bench_train}
DEVICE=${DEVICE:-cuda}
TORCH_DEVICE=${TORCH_DEVICE:-$DEVICE}
SHAREGPT=${SHAREGPT:-cache/data/ShareGPT_V3_unfiltered_cleaned_split.json}
DATA=${DATA:-cache/bench/sharegpt_$(basename "$MODEL" .gguf)}
DATA_ARGS=${DATA_ARGS:-}
STEPS=${STEPS:-10}
BATCH_TOKENS=${BATCH_TOKENS:-16384}
HEADS=${HEADS:-5}
PROFILE_STEPS=${PROFILE_STEPS:-1}
CACHED_STEPS=${CACHED_STEPS:-4}
REFERENCE_PAD=${REFERENCE_PAD:-2048}
HEAD_STEPS=${HEAD_STEPS:-300}
PROMPTS=${PROMPTS:-bench/prompts_sharegpt_val.json}
MAX_NEW=${MAX_NEW:-128}
INFER_ARGS=${INFER_ARGS:-}
PYTHON=${PYTHON:-.venv/bin/python}

if GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) && [ -n "$GPU" ]; then
    OUT=${OUT:-bench/gpu_$(echo "$GPU" | tr -c 'A-Za-z0-9.\n-' '_').txt}
    DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
else
    GPU=""
    [ -n "${OUT:-}" ] || { echo "bench_gpu.sh: nvidia-smi finds no GPU; set OUT=FILE for a dry run" >&2; exit 1; }
fi

if [ ! -s "$DATA.train.tokens.h5" ]; then
    [ -s "$SHAREGPT" ] || data/fetch_demo.sh
    mkdir -p "$(dirname "$DATA")"
    # shellcheck disable=SC2086 # DATA_ARGS holds separate flags
    "$BIN_DIR/medusa-data" --model "$MODEL" --input "$SHAREGPT" --out "$DATA" --limit 2000 --quiet $DATA_ARGS
fi
RUN=$(mktemp -d "${TMPDIR:-/tmp}/bench_gpu.XXXXXX")
trap 'rm -rf "$RUN"' EXIT

{
    echo "# GPU: ${GPU:-none: a dry run of the scripts on the CPU (DEVICE=$DEVICE through $BIN_DIR), not a GPU measurement}"
    echo "# $(date -u +%F)${DRIVER:+, driver $DRIVER}; model $MODEL; $HEADS heads x 1 layer, $BATCH_TOKENS-token batches from $DATA, $STEPS steps after 1 warm-up"
    # the ceilings this GPU reaches (a large bf16 GEMM, a large copy), to read MFU and the profile's GB/s against
    if [ "$TORCH_DEVICE" = cuda ]; then "$PYTHON" bench/gpu_ceilings.py || echo "ceiling: not measured (bench/gpu_ceilings.py failed)"; fi
    echo "## training step: frozen base forward + heads forward/backward + AdamW"
    "$BENCH_TRAIN" --model "$MODEL" --data "$DATA.train.tokens.h5" --device "$DEVICE" --heads "$HEADS" \
        --batch-tokens "$BATCH_TOKENS" --steps "$STEPS" --cached-steps "$CACHED_STEPS"
    "$PYTHON" bench/bench_train_torch.py --model "$MODEL" --data "$DATA.train.tokens.h5" --device "$TORCH_DEVICE" \
        --heads "$HEADS" --batch-tokens "$BATCH_TOKENS" --steps "$STEPS" 2>&1 | grep -E '^(step|pytorch)'
    if [ "$REFERENCE_PAD" -gt 0 ]; then
        "$PYTHON" bench/bench_train_torch.py --model "$MODEL" --data "$DATA.train.tokens.h5" --device "$TORCH_DEVICE" \
            --heads "$HEADS" --batch-tokens "$BATCH_TOKENS" --steps "$STEPS" --pad-to "$REFERENCE_PAD" 2>&1 |
            grep -E '^pytorch'
    fi
} | tee "$OUT.new"
# (the MFU line comes from bench_train, which knows the device's peak: kernels/backend.c)
awk '{for (i = 2; i <= NF; i++) if ($i ~ /^tokens\/s/) v = $(i - 1)}
    /^medusa-c train/ {ours = v} /^pytorch train:/ {theirs = v} /^pytorch train, padded/ {reference = v}
    END {if (reference) printf "ratio medusa-c / reference trainer (PyTorch, conversations padded as it pads them) tokens/s: %.2fx (target >= 2x)\n", ours / reference
         printf "ratio medusa-c / pytorch without padding tokens/s: %.2fx\n", ours / theirs}' "$OUT.new" | tee -a "$OUT.new"
# the step's FLOP/s against the matrix-product rate measured on this GPU (the practical ceiling of its GEMMs)
awk '/^medusa-c flops:/ {for (i = 2; i <= NF; i++) if ($i == "FLOP/s" && !rate) rate = $(i - 1)}
    /^ceiling: bf16 matrix product/ {for (i = 2; i <= NF; i++) if ($i == "TFLOP/s") ceiling = $(i - 1)}
    END {if (rate && ceiling) printf "medusa-c step: %.0f%% of the bf16 matrix-product rate measured here (%.0f of %.0f TFLOP/s)\n", 100 * rate / 1e12 / ceiling, rate / 1e12, ceiling}' \
    "$OUT.new" | tee -a "$OUT.new"
if [ "$PROFILE_STEPS" -gt 0 ] && [ "$DEVICE" = cuda ]; then
    {
        echo "## GPU time per operation: bench_train with MEDUSA_CUDA_PROFILE=1, 1 warm-up + $PROFILE_STEPS steps"
        MEDUSA_CUDA_PROFILE=1 "$BENCH_TRAIN" --model "$MODEL" --data "$DATA.train.tokens.h5" --device "$DEVICE" \
            --heads "$HEADS" --batch-tokens "$BATCH_TOKENS" --steps "$PROFILE_STEPS" 2>&1 >/dev/null |
            sed -n '/^cuda profile/,$p' | head -45
    } | tee -a "$OUT.new"
fi

[ "$HEAD_STEPS" -gt 0 ] || { # HEAD_STEPS=0: no decoding part (a model without a tokenizer)
    mv "$OUT.new" "$OUT"
    echo "bench-gpu: wrote $OUT (no decoding: HEAD_STEPS=0)"
    exit 0
}
{
    echo "## decoding: heads trained $HEAD_STEPS steps on $DEVICE, then plain greedy vs Medusa ($PROMPTS, $MAX_NEW new tokens)"
    [ -z "${DECODE_NOTE:-}" ] || echo "# $DECODE_NOTE"
    "$BIN_DIR/medusa-train" --model "$MODEL" --data "$DATA.train.tokens.h5" --out "$RUN/heads" --device "$DEVICE" \
        --heads "$HEADS" --max-steps "$HEAD_STEPS" --batch-tokens "$BATCH_TOKENS" --eval-every 0 --save-every 0 \
        --log-every "$HEAD_STEPS" >"$RUN/train.log" 2>&1 || { tail "$RUN/train.log"; exit 1; }
    echo "training top-1 at the last step: $(grep -o '"medusa[0-9]*_top1":[^,}]*' "$RUN/heads/metrics.jsonl" |
        tail -"$HEADS" | sed 's/"medusa\([0-9]*\)_top1":\(.*\)/head \1 \2/' | paste -sd, | sed 's/,/, /g')"
    # shellcheck disable=SC2086 # INFER_ARGS holds separate flags
    "$BIN_DIR/medusa-infer" --model "$MODEL" --medusa "$RUN/heads/medusa" --device "$DEVICE" --bench "$PROMPTS" \
        --max-new-tokens "$MAX_NEW" $INFER_ARGS >"$RUN/infer.txt" 2>"$RUN/infer.log" && status=0 || status=$?
    # the summary, also when the greedy check failed (its speeds were measured), and the prompts that did not match
    sed -n '/^mode/,$p' "$RUN/infer.txt"
    grep -E '^[0-9]+ .*(near-tie|NO)' "$RUN/infer.txt" || true
    # what a step costs, whatever the heads accept: the tokens per step trained heads must beat
    awk '/^plain greedy/ {plain = 1000 / $4} /^medusa greedy/ {tree = 1000 * $5 / $4}
         END {if (plain && tree) printf "step cost: plain greedy %.2f ms per token, Medusa greedy %.2f ms per tree step: faster than plain above %.2f tokens per step\n", plain, tree, tree / plain}' "$RUN/infer.txt"
    [ "$status" -eq 0 ] || { tail -3 "$RUN/infer.log"; exit 1; }
    if [ "$DEVICE" = cuda ]; then
        # the same, every step launched op by op (MEDUSA_CUDA_GRAPHS=0), after the run with CUDA graphs above
        # shellcheck disable=SC2086
        MEDUSA_CUDA_GRAPHS=0 "$BIN_DIR/medusa-infer" --model "$MODEL" --medusa "$RUN/heads/medusa" --device "$DEVICE" \
            --bench "$PROMPTS" --max-new-tokens "$MAX_NEW" $INFER_ARGS >"$RUN/infer_plain_launches.txt" 2>&1 || true
        awk 'FNR == 1 {f++} /^(plain|medusa) (greedy|typical)/ {rate[f, $1 " " $2] = $4}
             END {split("plain greedy,medusa greedy,medusa typical", modes, ",")
                  for (i = 1; i <= 3; i++) if (rate[1, modes[i]] && rate[2, modes[i]])
                      printf "CUDA graphs: %s %.1f tokens/s, %.1f without (%.2fx)\n", modes[i], rate[1, modes[i]],
                             rate[2, modes[i]], rate[1, modes[i]] / rate[2, modes[i]]}' \
            "$RUN/infer.txt" "$RUN/infer_plain_launches.txt"
        grep -h '^cuda graphs' "$RUN/infer.log" || true
    fi
    if [ "$PROFILE_STEPS" -gt 0 ] && [ "$DEVICE" = cuda ]; then
        # the first prompt alone, all three modes, every operation timed
        "$PYTHON" -c 'import json, sys
p = sys.argv[1]
first = open(p).readline().strip() if p.endswith(".txt") else json.load(open(p))[0]
json.dump([first], open(sys.argv[2], "w"))' "$PROMPTS" "$RUN/first_prompt.json"
        echo "## GPU time per operation: decoding the first prompt (plain, Medusa greedy, Medusa typical), MEDUSA_CUDA_PROFILE=1"
        # shellcheck disable=SC2086 # INFER_ARGS holds separate flags
        MEDUSA_CUDA_PROFILE=1 "$BIN_DIR/medusa-infer" --model "$MODEL" --medusa "$RUN/heads/medusa" --device "$DEVICE" \
            --bench "$RUN/first_prompt.json" --max-new-tokens "$MAX_NEW" $INFER_ARGS 2>&1 >/dev/null |
            sed -n '/^cuda profile/,$p' | head -45
    fi
} | tee -a "$OUT.new"
mv "$OUT.new" "$OUT"
echo "bench-gpu: wrote $OUT"
