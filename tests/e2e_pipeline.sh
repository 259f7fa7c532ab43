#!/bin/bash
# The base model split over MPI ranks (medusa-train --pipeline P), through the binary: each stage runs its layers and
# passes the residual stream on, the last one trains the heads. A pipeline of 2 (and 2 pipelines of 2, data parallel)
# equals one process with the matching accumulation: every step's losses, the evaluations' and the exported heads'
# (within 1e-6 relative; the stages compute the same values as one process); a stopped pipeline resumes as a pipeline
# and as one process; shapes that cannot be split are clear errors; a stage killed mid-run ends every rank within 60 s.
# With a CUDA backend (the emulator's binaries in `make test`) the same on --device cuda.
#   tests/e2e_pipeline.sh [BIN_DIR]     (default: $E2E_BIN_DIR, else bin)
# Skipped (one passing line that says so) where mpirun is missing or the binaries were built without MPI.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BIN=${1:-${E2E_BIN_DIR:-bin}}
MODEL=tests/fixtures/models/tiny_hd64/gguf/tiny_hd64.F32.gguf # 2 layers
CONVS=tests/fixtures/chat/conversations.json
TMP=$(mktemp -d "${TMPDIR:-/tmp}/e2e_pipeline.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# shellcheck source=tests/e2e_lib.sh
. tests/e2e_lib.sh

mpi_missing "$BIN/medusa-train" && exit
export OMP_NUM_THREADS=1

check "medusa-data: $CONVS tokenised for tiny_hd64" "$BIN/medusa-data" --model "$MODEL" --input "$CONVS" \
    --out "$TMP/sg" --template mistral --max-len 96 --val-fraction 0.2 --quiet

train() { # NAME LAUNCH... -- FLAGS...: a 4-step run in $TMP/run_NAME, evaluated at steps 2 and 4
    local name=$1
    shift
    local launch=()
    while [ "$1" != -- ]; do launch+=("$1") && shift; done
    shift
    check "$name: ${launch[*]:+${launch[*]} }medusa-train $*" "${launch[@]}" timeout 120 "$BIN/medusa-train" \
        --model "$MODEL" --data "$TMP/sg.train.tokens.h5" --val "$TMP/sg.val.tokens.h5" --out "$TMP/run_$name" \
        --heads 2 --max-steps 4 --batch-tokens 128 --lr 1e-2 --warmup-ratio 0 --log-every 1 --eval-every 2 \
        --save-every 0 --seed 7 "$@"
    cp "$TMP/log" "$TMP/log_$name"
    grep -o '"loss":[^,}]*' "$TMP/run_$name/metrics.jsonl" 2>/dev/null | cut -d: -f2 >"$TMP/loss_$name" || true
}
same() { # NAME-A NAME-B WHAT [DEVICE]
    local r h
    r=$(rel_error "$TMP/loss_$1" "$TMP/loss_$2" 6) h=$(heads_error "$1" "$2" "${4:-cpu}")
    expect "awk 'BEGIN{exit !($r <= 1e-6 && $h <= 1e-6)}'" \
        "$3: train and eval losses (6 lines) max rel. error $r, exported heads' losses $h (tolerance 1e-6)"
}

train one_accum2 -- --grad-accum 2
train pipe2 "${MPIRUN[@]}" -np 2 -- --pipeline 2 --grad-accum 2
same one_accum2 pipe2 "--pipeline 2 on 2 ranks (2 micro-batches a step through the stages) vs one process"
expect "grep -q 'stage 0: layers 0-0 + embedding' '$TMP/log_pipe2' && grep -q 'stage 1: layers 1-1 + lm_head + heads' '$TMP/log_pipe2' &&
        [ \"\$(grep -c '\"split\":\"train\"' '$TMP/run_pipe2/metrics.jsonl')\" -eq 4 ] && [ \"\$(grep -c 'saved ' '$TMP/log_pipe2')\" -eq 1 ]" \
    "--pipeline 2: the lead prints each stage's layers and memory, and alone logs (4 train lines) and saves (one line)"
train pipe2x2 "${MPIRUN[@]}" -np 4 -- --pipeline 2 --grad-accum 1
same one_accum2 pipe2x2 "2 pipelines of 2 stages (4 ranks, 1 batch each a step) vs one process with --grad-accum 2"
expect "grep -q 'data parallel over 2 pipelines' '$TMP/log_pipe2x2'" "4 ranks, --pipeline 2: data parallel over 2 pipelines"

# stopped after step 2, resumed as a pipeline again (bit for bit), and as one process (the same batches per step)
train pipe_stop "${MPIRUN[@]}" -np 2 -- --pipeline 2 --grad-accum 2 --stop-after 2
cp -r "$TMP/run_pipe_stop" "$TMP/run_one_resumed"
train pipe_stop "${MPIRUN[@]}" -np 2 -- --pipeline 2 --grad-accum 2 --resume
train one_resumed -- --grad-accum 2 --resume
for n in pipe_stop one_resumed; do
    r=$(rel_error "$TMP/loss_one_accum2" "$TMP/loss_$n" 6)
    expect "awk 'BEGIN{exit !($r <= 1e-6)}'" \
        "--pipeline 2 stopped after step 2, resumed $([ $n = pipe_stop ] && echo "as a pipeline" || echo "as one process"): losses max rel. error $r vs the uninterrupted run (tolerance 1e-6)"
done

# medusa-eval split the same way gives the one-process figures
"$BIN/medusa-eval" --model "$MODEL" --medusa "$TMP/run_one_accum2/medusa" --data "$TMP/sg.val.tokens.h5" \
    --batch-tokens 128 --json "$TMP/eval_one.json" >/dev/null 2>&1
check "medusa-eval --pipeline 2 on 2 ranks" "${MPIRUN[@]}" -np 2 timeout 60 "$BIN/medusa-eval" --model "$MODEL" \
    --medusa "$TMP/run_one_accum2/medusa" --data "$TMP/sg.val.tokens.h5" --batch-tokens 128 --pipeline 2 \
    --json "$TMP/eval_pipe.json"
figures() { grep -E '"(batches|tokens|loss|medusa[0-9]+_[a-z0-9_]+|base_top1)":' "$1" | tr -d ' \t",' | cut -d: -f2; }
r=$(paste <(figures "$TMP/eval_one.json") <(figures "$TMP/eval_pipe.json") | awk '{d = $1 - $2; if (d < 0) d = -d
    s = $1 < 0 ? -$1 : $1; if (s > 0) d = d / s; if (d > m) m = d; n++} END {print (n >= 20 ? m + 0 : 1)}')
expect "awk 'BEGIN{exit !($r <= 1e-9)}' && [ \"\$(grep -c medusa0 '$TMP/log')\" -eq 1 ]" \
    "medusa-eval --pipeline 2 equals one process: every figure within rel. $r (tolerance 1e-9); the lead alone reports"

# shapes that cannot be split
check_fails "--pipeline 2 on 3 ranks" "not a whole number of pipelines" "${MPIRUN[@]}" -np 3 timeout 60 \
    "$BIN/medusa-train" --model "$MODEL" --data "$TMP/sg.train.tokens.h5" --out "$TMP/run_bad" --pipeline 2
check_fails "--pipeline 3 for a model of 2 layers" "3 pipeline stages for a model of 2 layers" "${MPIRUN[@]}" -np 3 \
    timeout 60 "$BIN/medusa-train" --model "$MODEL" --data "$TMP/sg.train.tokens.h5" --out "$TMP/run_bad" --pipeline 3
check_fails "ranks given different --pipeline values" "but another rank has" "${MPIRUN[@]}" -np 1 timeout 60 \
    "$BIN/medusa-train" --model "$MODEL" --data "$TMP/sg.train.tokens.h5" --out "$TMP/run_bad" --pipeline 2 : -np 1 \
    timeout 60 "$BIN/medusa-train" --model "$MODEL" --data "$TMP/sg.train.tokens.h5" --out "$TMP/run_bad" --pipeline 1
check_fails "--pipeline 2 in one process" "this run is one process" "$BIN/medusa-train" --model "$MODEL" \
    --data "$TMP/sg.train.tokens.h5" --out "$TMP/run_bad" --pipeline 2

# the CUDA backend's stages pass device memory (the emulator's binaries in `make test`)
if "$BIN/medusa-train" --device cuda --model "$MODEL" --data "$TMP/sg.train.tokens.h5" --out "$TMP/run_probe" \
    --heads 1 --max-steps 1 --batch-tokens 128 >"$TMP/log" 2>&1; then
    train cuda_one -- --device cuda --grad-accum 2
    train cuda_pipe2 "${MPIRUN[@]}" -np 2 -- --device cuda --pipeline 2 --grad-accum 2
    same cuda_one cuda_pipe2 "--device cuda: --pipeline 2 vs one process" cuda
else
    ok "skipped --device cuda: $BIN has no CUDA backend ($(grep -m1 -o 'error: .\{0,60\}' "$TMP/log"))"
fi

# a stage killed mid-run ends every rank within 60 s with a non-zero status
kill_rank_mid_run "a pipeline stage (the first)" head "${MPIRUN[@]}" -np 2 "$BIN/medusa-train" --model "$MODEL" \
    --data "$TMP/sg.train.tokens.h5" --out "$TMP/run_killed" --heads 2 --max-steps 100000 --batch-tokens 128 --save-every 0 --pipeline 2
finish
