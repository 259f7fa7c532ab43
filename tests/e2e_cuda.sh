#!/bin/bash
# End to end on --device cuda, through the binaries: medusa-data -> medusa-train -> medusa-eval ->
# medusa-infer on a tiny model, each result compared with --device cpu, and greedy Medusa decoding checked
# to give exactly the plain greedy output with fp32 weights, and with bf16 weights to give it or part only at a
# near-tie (the rule of medusa-infer --bench: a tree's rows and one row round in other orders).
#   tests/e2e_cuda.sh [BIN_DIR]     (default: $E2E_BIN_DIR, else bin)
# `make test` runs it on build/emu/ (the binaries linked with kernels/cuda compiled for the CPU emulator,
# tests/cudaemu), `make test-cuda` on bin/ with a GPU. Like the C tests, its last line is "N passed, N failed".
# shellcheck disable=SC2016 # expect's conditions are single-quoted strings for eval
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${E2E_BIN_DIR:-bin}}
# tiny_hd64's GGUF has a tokenizer (its 256 bytes, BOS 1, EOS 2), so medusa-data can tokenise the ShareGPT
# fixture for it, and head_dim 64 (a 7B's is 128 or 64): with bf16 weights the packed training batches, the prompts
# and the tree steps run the tensor-core attention, one-token decoding steps the CUDA-core kernel, as on a 7B.
# The mistral template has no system prompt, which leaves trained tokens within 96 bytes.
MODEL=tests/fixtures/models/tiny_hd64/gguf/tiny_hd64.F32.gguf
CONVS=tests/fixtures/chat/conversations.json
PROMPT="Why is the sky blue?"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/e2e_cuda.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# shellcheck source=tests/e2e_lib.sh
. tests/e2e_lib.sh

for b in data train eval infer; do
    [ -x "$BIN/medusa-$b" ] || { fail "$BIN/medusa-$b not built"; finish; exit; }
done

# ---- data ----
check "medusa-data: $CONVS tokenised for tiny_hd64 (mistral template, --max-len 96)" \
    "$BIN/medusa-data" --model "$MODEL" --input "$CONVS" --out "$TMP/sg" --template mistral --max-len 96 \
    --val-fraction 0.2 --quiet

# ---- training: the same 4 steps on both devices ----
# cuda runs with its default precision (auto: bf16 base weights, bf16 GEMM inputs), the cpu with the same
# bf16-rounded weights (fp32 GEMMs). --warmup-ratio 0: the first step already learns.
train() { # DEVICE PRECISION [NAME EXTRA-FLAGS...]: the run in $TMP/run_NAME (default DEVICE_PRECISION)
    local name=${3:-$1_$2}
    check "medusa-train --device $1 --precision $2${4:+ ${*:4}}: 2 heads (4 steps of 128 tokens unless set), checkpoint and export" \
        "$BIN/medusa-train" --model "$MODEL" --data "$TMP/sg.train.tokens.h5" --out "$TMP/run_$name" --device "$1" \
        --precision "$2" --heads 2 --max-steps 4 --batch-tokens 128 --lr 1e-2 --warmup-ratio 0 --log-every 1 \
        --eval-every 0 --save-every 0 --seed 7 "${@:4}"
    cp "$TMP/log" "$TMP/train_log_$name"
    grep -o '"loss":[^,}]*' "$TMP/run_$name/metrics.jsonl" 2>/dev/null | cut -d: -f2 >"$TMP/loss_$name" || true
}
loss_error() { # NAME-A NAME-B [STEPS]: the largest relative difference of their first STEPS (4) losses (1 if fewer)
    paste "$TMP/loss_$1" "$TMP/loss_$2" | head -"${3:-4}" | awk -v steps="${3:-4}" '{d = $1 - $2; if (d < 0) d = -d
        r = d / ($2 < 0 ? -$2 : $2); if (!(r <= m)) m = r; n++} END {printf "%.1e", n == steps ? m : 1}'
}
train cuda auto
train cpu bf16
HEADS=$TMP/run_cuda_auto/medusa
expect '[ -s "$HEADS/config.json" ] && [ -s "$HEADS/medusa_lm_head.safetensors" ] && [ -s "$TMP/run_cuda_auto/ckpt-4.h5" ]' \
    "cuda run: ckpt-4.h5 and the Medusa export (config.json, medusa_lm_head.safetensors) written"
trend=$(awk 'NR == 1 {first = $1} {last = $1; if (!($1 + 0 == $1 + 0 && $1 + 0 < 1e30)) bad = 1}
             END {if (NR != 4 || bad || !(last < first)) print "bad"; else printf "%.4f -> %.4f", first, last}' "$TMP/loss_cuda_auto")
expect '[ "$trend" != bad ]' "cuda training loss: 4 finite values, falling (${trend/bad/$(tr '\n' ' ' <"$TMP/loss_cuda_auto")})"
r=$(loss_error cuda_auto cpu_bf16)
# the cuda side rounds its activations to bf16 (the GEMM inputs, and P in the tensor-core attention), the cpu keeps
# them fp32: 9.5e-4 apart after 3 updates on the emulator (1.6e-4 with the CUDA-core attention); the tolerance is
# about one bf16 rounding (2^-8)
expect "awk 'BEGIN{exit !($r <= 4e-3)}'" \
    "training loss cuda (bf16 GEMM inputs, tensor-core attention) vs cpu (bf16 weights, fp32 GEMMs), 4 steps: max rel. error $r (tolerance 4e-3)"
# heads over the 56 most frequent trained targets (--head-vocab; 99.5% of them): their lm_head rows gathered from the
# base's on the device, the other targets ignored; decoded below, their candidates mapped back to token ids. The
# first step's loss (the forward pass, before any update) is held to bf16 activations' 1e-3; the later ones drift
# further: AdamW's normalised steps turn a rounding-level difference in a near-zero gradient into an lr-sized one in
# the parameter, and over a few dozen classes the loss follows (on the emulator, 0.6e-3 to 4.1e-3 apart after 3 updates
# for head vocabularies of 48 to 60)
train cuda auto head_vocab_cuda --head-vocab 56
train cpu bf16 head_vocab_cpu --head-vocab 56
r1=$(loss_error head_vocab_cuda head_vocab_cpu 1) r=$(loss_error head_vocab_cuda head_vocab_cpu)
expect "awk 'BEGIN{exit !($r1 <= 1e-3 && $r <= 1e-2)}'" \
    "training loss with --head-vocab 56, cuda vs cpu: step 1 rel. error $r1 (tolerance 1e-3), steps 1-4 $r (tolerance 1e-2)"

# heads learning the base model's greedy choices (--targets base-argmax), its logits ranked on each device; in fp32:
# with bf16 activations on one side only, a choice between two logits within their rounding may differ, and with it a
# target: with bf16 weights the two runs' losses were 7e-3 apart at step 2 on the emulator
train cuda fp32 argmax_cuda --targets base-argmax
train cpu fp32 argmax_cpu --targets base-argmax
r=$(loss_error argmax_cuda argmax_cpu)
expect "awk 'BEGIN{exit !($r <= 1e-4)}'" \
    "training loss with --targets base-argmax, cuda vs cpu (fp32): steps 1-4 max rel. error $r (tolerance 1e-4)"

# heads over 56 tokens learning the base model's distribution restricted to them (--targets base-kl): the teacher's
# logits from the base's lm_head rows for the map, gathered on the device; in fp32, as a KL divergence is a difference
# of two cross-entropies, which bf16 activations on one side only move by their rounding (9e-4 apart at step 1)
train cuda fp32 kl_cuda --targets base-kl --head-vocab 56
train cpu fp32 kl_cpu --targets base-kl --head-vocab 56
r=$(loss_error kl_cuda kl_cpu)
expect "awk 'BEGIN{exit !($r <= 1e-4)}'" \
    "training loss (KL) with --targets base-kl --head-vocab 56, cuda vs cpu (fp32): steps 1-4 max rel. error $r (tolerance 1e-4)"

# ---- resume on cuda: a run stopped after step 2 and resumed gives the uninterrupted run's losses and heads bit for
# bit; 2 ResBlocks per head, 2 batches per step, head logits in chunks of 32 rows (several per batch) ----
more=(--layers 2 --grad-accum 2 --logits-chunk 32)
train cuda auto whole "${more[@]}"
train cuda auto resumed "${more[@]}" --stop-after 2
train cuda auto resumed "${more[@]}" --resume
train cpu bf16 whole_cpu "${more[@]}"
expect '[ "$(wc -l <"$TMP/loss_resumed")" -eq 4 ] && cmp -s "$TMP/loss_whole" "$TMP/loss_resumed" &&
        cmp -s "$TMP/run_whole/medusa/medusa_lm_head.safetensors" "$TMP/run_resumed/medusa/medusa_lm_head.safetensors"' \
    "medusa-train --device cuda ${more[*]}: stopped after step 2 and resumed, the 4 losses and the exported heads equal the uninterrupted run's"
r1=$(loss_error whole whole_cpu 1) r=$(loss_error whole whole_cpu)
expect "awk 'BEGIN{exit !($r1 <= 1e-3 && $r <= 1e-2)}'" \
    "training loss with ${more[*]}, cuda vs cpu: step 1 rel. error $r1 (tolerance 1e-3), steps 1-4 $r (tolerance 1e-2)"

# ---- --cache-hidden on cuda: from the second epoch each batch's cached hidden states are uploaded beside the queue
# while the batch before runs (the next step's first batch while a step's last runs: the batches are fetched a step
# ahead); stopped after step 4 and resumed (the cache starts empty again), the 8 losses and the heads are the
# uninterrupted run's ----
cached=(--cache-hidden --batch-tokens 512 --max-steps 8 --grad-accum 2)
train cuda auto cached "${cached[@]}"
ahead=$(grep -o '[0-9]* batches. rows uploaded while' "$TMP/train_log_cached" | cut -d' ' -f1)
train cuda auto cached_resumed "${cached[@]}" --stop-after 4
train cuda auto cached_resumed "${cached[@]}" --resume
expect '[ "${ahead:-0}" -gt 0 ] && [ "$(wc -l <"$TMP/loss_cached_resumed")" -eq 8 ] &&
        cmp -s "$TMP/loss_cached" "$TMP/loss_cached_resumed" &&
        cmp -s "$TMP/run_cached/medusa/medusa_lm_head.safetensors" "$TMP/run_cached_resumed/medusa/medusa_lm_head.safetensors"' \
    "medusa-train --device cuda ${cached[*]}: ${ahead:-no} batches' rows uploaded ahead; stopped after step 4 and resumed, the 8 losses and the exported heads equal the uninterrupted run's"

# ---- evaluation of the cuda-trained heads, fp32 on both devices: kernels against the reference ----
for dev in cuda cpu; do
    check "medusa-eval --device $dev --precision fp32 on the validation split" \
        "$BIN/medusa-eval" --model "$MODEL" --medusa "$HEADS" --data "$TMP/sg.val.tokens.h5" --device "$dev" \
        --precision fp32 --batch-tokens 128 --max-batches 1 --json "$TMP/eval_$dev.json"
    cp "$TMP/log" "$TMP/eval_log_$dev"
done
metrics() { grep -E '"(loss|medusa[0-9]+_[a-z0-9_]+|base_top1)":' "$TMP/eval_$1.json" 2>/dev/null | tr -d ' \t",' || true; }
cmp_eval=$(paste -d: <(metrics cuda) <(metrics cpu) | awk -F: '
    $1 != $3 {bad = 1} {d = $2 - $4; if (d < 0) d = -d}
    $1 ~ /top/ {if (d > acc) acc = d; next} {s = $4 < 0 ? -$4 : $4; if (d / s > loss) loss = d / s} END {
    if (NR < 24 || bad) print "bad"; else printf "%.1e %.4f", loss, acc}')
expect '[ "$cmp_eval" != bad ] && awk -v l="${cmp_eval% *}" -v a="${cmp_eval#* }" "BEGIN{exit !(l <= 1e-4 && a <= 0.01)}"' \
    "eval cuda vs cpu: losses max rel. error ${cmp_eval% *} (tolerance 1e-4), top-1..5 accuracies and agreements with the base model (medusa{i}_base_top{k}) max difference ${cmp_eval#* } (tolerance 0.01, about one target)"

# --gemm-tune: each GEMM shape's algorithms timed at its first use, the fastest kept: the same products (bf16 weights,
# cuBLASLt), up to the order of a kernel's sums
for tune in "" --gemm-tune; do
    check "medusa-eval --device cuda (bf16) ${tune:-without --gemm-tune}" "$BIN/medusa-eval" --model "$MODEL" \
        --medusa "$HEADS" --data "$TMP/sg.val.tokens.h5" --device cuda --batch-tokens 128 --max-batches 1 $tune \
        --json "$TMP/eval_bf16${tune}.json"
done
r=$(paste <(grep -E '"(loss|medusa[0-9]+_loss)":' "$TMP/eval_bf16.json" | tr -d ' ",' | cut -d: -f2) \
    <(grep -E '"(loss|medusa[0-9]+_loss)":' "$TMP/eval_bf16--gemm-tune.json" | tr -d ' ",' | cut -d: -f2) |
    awk '{d = $1 - $2; if (d < 0) d = -d; s = $1 < 0 ? -$1 : $1; if (d / s > m) m = d / s; n++} END {print (n >= 3 ? m + 0 : 1)}')
expect "awk 'BEGIN{exit !($r <= 1e-4)}'" \
    "--gemm-tune: the tuned GEMMs' evaluation losses equal the heuristic's first algorithm's within rel. $r (tolerance 1e-4)"

# ---- decoding: greedy Medusa == plain greedy, and cuda == cpu ----
# 20 candidates from the 2 heads (their top 4 and the top 4 after each): 21 rows with the root, more than the 16
# queries from which bf16 attention takes the tensor cores
paths=$(for i in 0 1 2 3; do printf '[%d], ' $i; done; for i in 0 1 2 3; do for j in 0 1 2 3; do printf '[%d, %d], ' $i $j; done; done)
echo "[${paths%, }]" >"$TMP/tree.json"
infer() { # DEVICE PRECISION MODE [NAME EXTRA-FLAGS...]: output to $TMP/out_NAME, stderr to $TMP/err_NAME; the heads
    # in $INFER_HEADS, else $HEADS
    local name=${4:-$1_$2_$3}
    "$BIN/medusa-infer" --model "$MODEL" --medusa "${INFER_HEADS:-$HEADS}" --tree "$TMP/tree.json" --chat-template mistral \
        --prompt "$PROMPT" --device "$1" --precision "$2" --mode "$3" --max-new-tokens 32 "${@:5}" \
        >"$TMP/out_$name" 2>"$TMP/err_$name" || echo "exit status $?" >>"$TMP/err_$name"
}
for mode in plain medusa; do
    infer cuda auto $mode
    infer cuda fp32 $mode
    infer cpu fp32 $mode
done
per_step() { grep -o '[0-9.]* tokens per step' "$TMP/err_$1" | cut -d' ' -f1 || true; }
same() { [ -s "$TMP/out_$1" ] && cmp -s "$TMP/out_$1" "$TMP/out_$2"; }
expect 'same cuda_fp32_plain cuda_fp32_medusa' \
    "medusa-infer --device cuda --precision fp32: greedy Medusa output == plain greedy output ($(wc -c <"$TMP/out_cuda_fp32_plain") bytes, $(per_step cuda_fp32_medusa) tokens per step)"
expect 'same cuda_fp32_plain cpu_fp32_plain' "medusa-infer --precision fp32: plain greedy output cuda == cpu"
expect 'same cuda_fp32_medusa cpu_fp32_medusa && [ "$(per_step cuda_fp32_medusa)" = "$(per_step cpu_fp32_medusa)" ]' \
    "medusa-infer --precision fp32: greedy Medusa output and tokens per step cuda == cpu ($(per_step cpu_fp32_medusa))"
# MEDUSA_CUDA_SYNC=1 (a synchronisation and a check after every launch and GEMM) changes nothing but the timing
MEDUSA_CUDA_SYNC=1 infer cuda auto medusa sync_cuda
expect 'same cuda_auto_medusa sync_cuda && [ "$(per_step sync_cuda)" = "$(per_step cuda_auto_medusa)" ]' \
    "MEDUSA_CUDA_SYNC=1 medusa-infer --device cuda: the same greedy Medusa output and tokens per step"
# the heads with a head vocabulary of 56, some of whose candidates are accepted
for dev in cuda cpu; do INFER_HEADS=$TMP/run_head_vocab_cuda/medusa infer "$dev" fp32 medusa "head_vocab_$dev"; done
expect 'same cuda_fp32_plain head_vocab_cuda && same head_vocab_cuda head_vocab_cpu &&
        [ "$(per_step head_vocab_cuda)" = "$(per_step head_vocab_cpu)" ] && awk "BEGIN{exit !($(per_step head_vocab_cuda) > 1)}"' \
    "medusa-infer --precision fp32, heads with --head-vocab 56: greedy Medusa output == plain greedy output, and tokens per step cuda == cpu ($(per_step head_vocab_cpu), above 1)"
# typical acceptance samples: the same seed on both devices gives the same tokens (entropies and candidate
# probabilities from the softmax_entropy op, the rows of logits never downloaded on cuda)
infer cuda fp32 medusa typical_cuda --temperature 0.7
infer cpu fp32 medusa typical_cpu --temperature 0.7
expect 'same typical_cuda typical_cpu && [ "$(per_step typical_cuda)" = "$(per_step typical_cpu)" ]' \
    "medusa-infer --temperature 0.7 (typical acceptance) --precision fp32: output and tokens per step cuda == cpu ($(per_step typical_cpu))"
# plain sampling (nucleus): the row of logits downloaded and sampled on the host, the same seed on both devices
infer cuda fp32 plain sampled_cuda --temperature 0.7 --top-p 0.9
infer cpu fp32 plain sampled_cpu --temperature 0.7 --top-p 0.9
expect 'same sampled_cuda sampled_cpu && ! same sampled_cpu cpu_fp32_plain' \
    "medusa-infer --mode plain --temperature 0.7 --top-p 0.9 --precision fp32: output cuda == cpu (and not the greedy one)"
# MEDUSA_CUDA_PROFILE=1: a table of GPU time per kernel and GEMM at exit, the output unchanged; with bf16 weights the
# prompt and every tree step run the tensor-core attention (2 calls per forward pass, one per layer)
MEDUSA_CUDA_PROFILE=1 infer cuda auto medusa profiled
# (columns: share, ms, calls, us per call, then TFLOP/s and GB/s where the operation has them, and its name)
mma_calls=$(awk '/attention_mma_kernel<64>/ && $5 ~ /^[0-9.]+$/ && NF == 6 {print $3}' "$TMP/err_profiled" 2>/dev/null)
rated() { # FIRST-WORD RATES: a row of the operation whose name starts with FIRST-WORD has RATES numbers in columns 5..
    awk -v op="$1" -v n="$2" '{ok = 1; for (i = 5; i < 5 + n; i++) ok = ok && $i ~ /^[0-9.]+$/}
        $(5 + n) == op && ok {found = 1} END {exit !found}' "$TMP/err_profiled"
}
expect 'same cuda_auto_medusa profiled && grep -q "^cuda profile" "$TMP/err_profiled" &&
        rated "rmsnorm_kernel<bf16," 1 && rated cublasLt 2 && [ "${mma_calls:-0}" -gt 2 ] &&
        grep -Eq "^  GEMMs +[0-9.]+% of the time, [0-9.]+ TFLOP/s$" "$TMP/err_profiled" &&
        grep -Eq "^  other kernels and device copies +[0-9.]+% of the time, [0-9.]+ GB/s$" "$TMP/err_profiled"' \
    "MEDUSA_CUDA_PROFILE=1: the GPU time table printed ($(grep -c '^ .*%  ' "$TMP/err_profiled" 2>/dev/null || echo 0) operations: rmsnorm with its GB/s, the GEMMs with TFLOP/s and GB/s; the time by kind first), the output unchanged; the tensor-core attention rated in TFLOP/s, run ${mma_calls:-0} times (the prompt and the tree steps)"
# ---- the memory plan: printed at start-up, reserved as one allocation, and enough for every run ----
planned() { grep -q "memory plan:" "$TMP/$1" && grep -q "^  total " "$TMP/$1" && ! grep -q "underestimated\|no memory plan" "$TMP/$1"; }
expect 'planned train_log_cuda_auto && planned eval_log_cuda && planned err_cuda_auto_medusa && planned err_cuda_fp32_plain' \
    "--device cuda: medusa-train, medusa-eval and medusa-infer print the memory plan and stay within it (bf16 and fp32)"
# bf16 weights: the tree's 21 rows take the tensor cores and a plain step's one row the CUDA-core kernel, which round
# in other orders, so where two tokens' logits are within that rounding the argmax may differ between them (this
# random model's top two logits come within 0.2% of the largest in 32 tokens); --bench tells such a near-tie from a
# decoding error, and fails on the latter
bench_greedy() { # PROMPTS [FLAGS...]: "N equal[, M at a near-tie]" of greedy Medusa vs plain greedy, else "failed"
    "$BIN/medusa-infer" --model "$MODEL" --medusa "$HEADS" --tree "$TMP/tree.json" --device cuda --max-new-tokens 32 \
        --bench "$@" >"$TMP/bench" 2>&1 || { echo failed; return; }
    local equal ties
    equal=$(sed -n 's|^greedy Medusa output == plain greedy output on \([0-9]*\)/2 prompts$|\1|p' "$TMP/bench")
    ties=$(sed -n 's|^on \([0-9]*\) more they part at a near-tie.*|\1|p' "$TMP/bench")
    if [ $((${equal:-0} + ${ties:-0})) -ne 2 ]; then echo failed; else echo "$equal equal${ties:+, $ties at a near-tie}"; fi
}
printf '%s\n' "$PROMPT" "What were the flaws of Kodak's business model?" >"$TMP/prompts.txt"
greedy=$(bench_greedy "$TMP/prompts.txt" --chat-template mistral)
expect '[ "$greedy" != failed ]' \
    "medusa-infer --bench --device cuda (bf16): greedy Medusa vs plain greedy on 2 prompts: $greedy$([ "$greedy" = failed ] && echo " ($(tail -1 "$TMP/bench"))")"
# token-id prompts (a model without a tokenizer, as the GPU check's random 7B), and one outside the vocabulary
echo '[[1, 87, 104, 121, 32, 105, 115], [1, 72, 105, 33, 32, 72, 111, 119]]' >"$TMP/ids.json"
greedy=$(bench_greedy "$TMP/ids.json")
expect '[ "$greedy" != failed ]' \
    "medusa-infer --bench with token-id prompts --device cuda (bf16): greedy Medusa vs plain greedy on 2 prompts: $greedy$([ "$greedy" = failed ] && echo " ($(tail -1 "$TMP/bench"))")"
echo '[[1, 87, 100000]]' >"$TMP/bad_ids.json"
# shellcheck disable=SC2034 # status is read by expect's eval
"$BIN/medusa-infer" --model "$MODEL" --medusa "$HEADS" --tree "$TMP/tree.json" --max-new-tokens 4 \
    --bench "$TMP/bad_ids.json" >"$TMP/log" 2>&1 && status=0 || status=$?
expect '[ "$status" -ne 0 ] && grep -q "bad_ids.json: prompt 0: token id 100000 is outside the vocabulary" "$TMP/log"' \
    "medusa-infer --bench: a token id outside the vocabulary is one error naming the file ($(tail -1 "$TMP/log"))"

finish
