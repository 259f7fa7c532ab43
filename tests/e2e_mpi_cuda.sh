#!/bin/bash
# Data-parallel training on --device cuda over MPI ranks, the gradients summed by the backend's NCCL collectives
# (kernels/cuda/comm.cu): `make test` runs it on build/emu/, where comm.cu is compiled against tests/cudaemu/nccl.h (a
# stand-in over MPI) and the kernels run in the CPU emulator. 2 ranks with --grad-accum 1 equal one process with
# --grad-accum 2 (every step's losses and the exported heads' losses within 1e-6 relative: only the order of the
# gradient sums differs), with bf16 (the default on cuda) and fp32 weights, and 3 ranks with --grad-accum 1 equal one
# process with --grad-accum 3; the lead rank's log says the gradients were summed by NCCL; a bad MEDUSA_NCCL_TIMEOUT
# stops every rank.
#   tests/e2e_mpi_cuda.sh [BIN_DIR]     (default: $E2E_BIN_DIR, else bin)
# Skipped (one passing line that says so) where mpirun is missing or the binaries were built without MPI.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BIN=${1:-${E2E_BIN_DIR:-bin}}
MODEL=tests/fixtures/models/tiny_hd64/gguf/tiny_hd64.F32.gguf
CONVS=tests/fixtures/chat/conversations.json
TMP=$(mktemp -d "${TMPDIR:-/tmp}/e2e_mpi_cuda.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# shellcheck source=tests/e2e_lib.sh
. tests/e2e_lib.sh

mpi_missing "$BIN/medusa-train" && exit
export OMP_NUM_THREADS=1

check "medusa-data: $CONVS tokenised for tiny_hd64" \
    "$BIN/medusa-data" --model "$MODEL" --input "$CONVS" --out "$TMP/sg" --template mistral --max-len 96 --quiet

train() { # NAME LAUNCH... -- FLAGS...: a 4-step run on --device cuda in $TMP/run_NAME
    local name=$1
    shift
    local launch=()
    while [ "$1" != -- ]; do launch+=("$1") && shift; done
    shift
    check "$name: ${launch[*]:+${launch[*]} }medusa-train --device cuda $*" "${launch[@]}" "$BIN/medusa-train" \
        --model "$MODEL" --data "$TMP/sg.train.tokens.h5" --out "$TMP/run_$name" --device cuda --heads 2 --max-steps 4 \
        --batch-tokens 128 --lr 1e-2 --warmup-ratio 0 --log-every 1 --eval-every 0 --save-every 0 --seed 7 "$@"
    cp "$TMP/log" "$TMP/log_$name"
    grep -o '"loss":[^,}]*' "$TMP/run_$name/metrics.jsonl" 2>/dev/null | cut -d: -f2 >"$TMP/loss_$name" || true
}

for precision in bf16 fp32; do
    train "one_$precision" -- --grad-accum 2 --precision "$precision"
    train "ranks_$precision" "${MPIRUN[@]}" -np 2 -- --grad-accum 1 --precision "$precision"
    r=$(rel_error "$TMP/loss_one_$precision" "$TMP/loss_ranks_$precision" 4)
    h=$(heads_error "one_$precision" "ranks_$precision")
    expect "awk 'BEGIN{exit !($r <= 1e-6 && $h <= 1e-6)}' && grep -q 'data parallel over 2 ranks' '$TMP/log_ranks_$precision'" \
        "--precision $precision: 2 ranks x 1 batch a step vs one process with --grad-accum 2: losses of steps 1-4 max rel. error $r, exported heads' losses $h (tolerance 1e-6)"
done
# 3 ranks (a sum the stand-in's MPI may order otherwise than one process's accumulation)
train one_accum3 -- --grad-accum 3
train ranks3 "${MPIRUN[@]}" -np 3 -- --grad-accum 1
r=$(rel_error "$TMP/loss_one_accum3" "$TMP/loss_ranks3" 4) h=$(heads_error one_accum3 ranks3)
expect "awk 'BEGIN{exit !($r <= 1e-6 && $h <= 1e-6)}' && grep -q 'over 3 ranks' '$TMP/log_ranks3'" \
    "3 ranks x 1 batch a step vs one process with --grad-accum 3: losses of steps 1-4 max rel. error $r, exported heads' losses $h (tolerance 1e-6)"
check_fails "MEDUSA_NCCL_TIMEOUT=0: every rank stops at the first collective" "MEDUSA_NCCL_TIMEOUT" \
    "${MPIRUN[@]}" -x MEDUSA_NCCL_TIMEOUT=0 -np 2 "$BIN/medusa-train" --model "$MODEL" --data "$TMP/sg.train.tokens.h5" \
    --out "$TMP/run_timeout" --device cuda --heads 2 --max-steps 1 --batch-tokens 128 --save-every 0
line=$(grep -m1 'gradients summed by NCCL' "$TMP/log_ranks_bf16")
expect "[ -n \"\$line\" ] && [ \"\$(grep -c 'gradients summed by NCCL' '$TMP/log_ranks_bf16')\" -eq 1 ] &&
        ! grep -q 'gradients summed by NCCL' '$TMP/log_one_bf16'" \
    "the lead rank alone says the gradients were summed by NCCL (the one-process run does not): ${line#*] }"
finish
