#!/bin/sh
# Training over MPI ranks on the CPU (`make bench-mpi`): 2 data-parallel ranks x 1 thread and a pipeline of 2 stages x
# 1 thread (--pipeline 2: the base's layers split over the ranks, the step's 2 micro-batches passing through both)
# beside 1 process x 2 threads, the same steps of the same batches (2 packed batches of 2048 tokens a step: --grad-accum
# 1 on 2 data-parallel ranks, 2 in one process and in the pipeline), interleaved A B C A B C; training tokens/s over
# the steps after the first (metrics.jsonl's tokens_per_s).
#   bench/bench_mpi.sh MODEL TRAIN.tokens.h5 OUT.txt
set -eu
MODEL=$1 DATA=$2 OUT=$3
STEPS=${BENCH_MPI_STEPS:-6}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench_mpi.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
ARGS="--model $MODEL --data $DATA --max-steps $STEPS --batch-tokens 2048 --log-every 1 --eval-every 0 --save-every 0"
rate() { # mean tokens_per_s of the steps after the first
    grep '"split":"train"' "$1/metrics.jsonl" | tail -n +2 | sed 's/.*"tokens_per_s":\([0-9.e+]*\).*/\1/' |
        awk '{s += $1; n++} END {printf "%.0f", s / n}'
}
{
    echo "# $(date -u +%F) $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(basename "$MODEL") (--precision auto: native on an AVX2/AVX-512 CPU), $STEPS steps of 2 x 2048 tokens"
    for round in 1 2; do
        rm -rf "$TMP/one" "$TMP/two" "$TMP/pipe"
        # shellcheck disable=SC2086 # ARGS is a list of options
        OMP_NUM_THREADS=2 bin/medusa-train $ARGS --out "$TMP/one" --grad-accum 2 >/dev/null 2>&1
        # shellcheck disable=SC2086
        mpirun --oversubscribe --allow-run-as-root --bind-to core -np 2 -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=passive \
            bin/medusa-train $ARGS --out "$TMP/two" --grad-accum 1 >/dev/null 2>&1
        # shellcheck disable=SC2086
        mpirun --oversubscribe --allow-run-as-root --bind-to core -np 2 -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=passive \
            bin/medusa-train $ARGS --out "$TMP/pipe" --grad-accum 2 --pipeline 2 >/dev/null 2>&1
        a=$(rate "$TMP/one") b=$(rate "$TMP/two") c=$(rate "$TMP/pipe")
        echo "round $round: 1 process x 2 threads $a tokens/s, 2 ranks x 1 thread $b tokens/s ($(echo "$b $a" | awk '{printf "%.2fx", $1 / $2}')), --pipeline 2 x 1 thread $c tokens/s ($(echo "$c $a" | awk '{printf "%.2fx", $1 / $2}'))"
    done
} | tee "$OUT"
