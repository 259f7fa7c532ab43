#!/bin/bash
# Data-parallel training over MPI ranks (OpenMPI, CPU backend), through the binary: 2 and 3 ranks with --grad-accum 1
# equal one process with --grad-accum 2 and 3 on the same data (every step's losses and the exported heads' outputs
# within 1e-6 relative: only the order of the gradient sums differs); a rank's settings that differ from rank 0's
# stop every rank with a clear error; a rank killed mid-run ends the whole run within 60 s with a non-zero status.
#   tests/e2e_mpi.sh [BIN_DIR]     (default: $E2E_BIN_DIR, else bin)
# Skipped (one passing line that says so) where mpirun is missing or the binaries were built without MPI.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BIN=${1:-${E2E_BIN_DIR:-bin}}
MODEL=tests/fixtures/models/tiny_hd64/gguf/tiny_hd64.F32.gguf
CONVS=tests/fixtures/chat/conversations.json
TMP=$(mktemp -d "${TMPDIR:-/tmp}/e2e_mpi.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# shellcheck source=tests/e2e_lib.sh
. tests/e2e_lib.sh

mpi_missing "$BIN/medusa-train" && exit
export OMP_NUM_THREADS=1

check "medusa-data: $CONVS tokenised for tiny_hd64" \
    "$BIN/medusa-data" --model "$MODEL" --input "$CONVS" --out "$TMP/sg" --template mistral --max-len 96 --quiet

train() { # NAME LAUNCH... -- FLAGS...: a 4-step run in $TMP/run_NAME
    local name=$1
    shift
    local launch=()
    while [ "$1" != -- ]; do launch+=("$1") && shift; done
    shift
    check "$name: ${launch[*]:+${launch[*]} }medusa-train $*" "${launch[@]}" "$BIN/medusa-train" --model "$MODEL" \
        --data "$TMP/sg.train.tokens.h5" --out "$TMP/run_$name" --heads 2 --max-steps 4 --batch-tokens 128 --lr 1e-2 \
        --warmup-ratio 0 --log-every 1 --eval-every 0 --save-every 0 --seed 7 "$@"
    cp "$TMP/log" "$TMP/log_$name"
    grep -o '"loss":[^,}]*' "$TMP/run_$name/metrics.jsonl" 2>/dev/null | cut -d: -f2 >"$TMP/loss_$name" || true
}

for n in 2 3; do
    train "one_accum$n" -- --grad-accum "$n"
    train "ranks$n" "${MPIRUN[@]}" -np "$n" -- --grad-accum 1
    r=$(rel_error "$TMP/loss_one_accum$n" "$TMP/loss_ranks$n" 4) h=$(heads_error "one_accum$n" "ranks$n")
    expect "awk 'BEGIN{exit !($r <= 1e-6 && $h <= 1e-6)}' && grep -q 'data parallel over $n ranks' '$TMP/log_ranks$n'" \
        "$n ranks x 1 batch a step vs one process with --grad-accum $n: losses of steps 1-4 max rel. error $r, exported heads' losses $h (tolerance 1e-6)"
done
# a run of 2 ranks stopped after step 2 resumes as one process with --grad-accum 2 (the same batches per step)
train moved "${MPIRUN[@]}" -np 2 -- --grad-accum 1 --stop-after 2
train moved -- --grad-accum 2 --resume
r=$(rel_error "$TMP/loss_one_accum2" "$TMP/loss_moved" 4)
expect "awk 'BEGIN{exit !($r <= 1e-6)}'" \
    "2 ranks stopped after step 2, resumed as one process with --grad-accum 2: losses of steps 1-4 max rel. error $r vs the uninterrupted run (tolerance 1e-6)"
# one writer: a second rank appending to metrics.jsonl would double its lines
expect "[ \"\$(grep -c '\"split\":\"train\"' '$TMP/run_ranks2/metrics.jsonl')\" -eq 4 ] &&
        [ \"\$(grep -c 'saved ' '$TMP/log_ranks2')\" -eq 1 ]" \
    "2 ranks: rank 0 alone logs and saves (4 train lines in metrics.jsonl for 4 steps, one 'saved' line)"

# evaluation shared by 2 ranks (alternate batches) gives the one-process figures
"$BIN/medusa-eval" --model "$MODEL" --medusa "$TMP/run_one_accum2/medusa" --data "$TMP/sg.train.tokens.h5" \
    --batch-tokens 128 --json "$TMP/eval_one.json" >/dev/null 2>&1
check "medusa-eval on 2 ranks" "${MPIRUN[@]}" -np 2 "$BIN/medusa-eval" --model "$MODEL" \
    --medusa "$TMP/run_one_accum2/medusa" --data "$TMP/sg.train.tokens.h5" --batch-tokens 128 --json "$TMP/eval_two.json"
figures() { grep -E '"(batches|tokens|loss|medusa[0-9]+_[a-z0-9_]+|base_top1)":' "$1" | tr -d ' \t",' | cut -d: -f2; }
r=$(paste <(figures "$TMP/eval_one.json") <(figures "$TMP/eval_two.json") | awk '{d = $1 - $2; if (d < 0) d = -d
    s = $1 < 0 ? -$1 : $1; if (s > 0) d = d / s; if (d > m) m = d; n++} END {print (n >= 20 ? m + 0 : 1)}')
expect "awk 'BEGIN{exit !($r <= 1e-9)}' && [ \"\$(grep -c medusa0 '$TMP/log')\" -le 1 ]" \
    "medusa-eval on 2 ranks (alternate batches) equals one process: every figure within rel. $r (tolerance 1e-9); rank 0 alone reports"

# a rank whose settings differ: every rank stops with the error, none hangs
if timeout 60 "${MPIRUN[@]}" -np 1 "$BIN/medusa-train" --model "$MODEL" --data "$TMP/sg.train.tokens.h5" \
    --out "$TMP/run_mismatch" --heads 2 --max-steps 2 --batch-tokens 128 : \
    -np 1 "$BIN/medusa-train" --model "$MODEL" --data "$TMP/sg.train.tokens.h5" --out "$TMP/run_mismatch" --heads 2 \
    --max-steps 2 --batch-tokens 128 --lr 5e-3 >"$TMP/log" 2>&1; then
    fail "ranks with different --lr: succeeded"
else
    rc=$?
    expect "[ $rc -ne 124 ] && grep -q 'differ from rank 0' '$TMP/log'" \
        "ranks with different --lr: all stop (status $rc): $(grep -m1 -o 'rank [0-9] of [0-9]: its settings.\{0,40\}' "$TMP/log")"
fi

# a rank killed mid-run ends every rank within 60 s with a non-zero status
kill_rank_mid_run "a rank" tail "${MPIRUN[@]}" -np 2 "$BIN/medusa-train" --model "$MODEL" --data "$TMP/sg.train.tokens.h5" \
    --out "$TMP/run_killed" --heads 2 --max-steps 100000 --batch-tokens 128 --save-every 0
finish
