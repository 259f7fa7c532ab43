#!/bin/sh
# Batched self-distillation generation beside one-at-a-time decoding (`make bench-distill`): medusa-distill on the
# demo model and ShareGPT file, greedy, with --batch B and with --batch 1 (each forward pass then decodes one token
# of one conversation, as plain decoding does), interleaved A B A B in one sitting. Both start at the first
# conversation of the file; the one-at-a-time runs stop after BENCH_DISTILL_ONE conversations (they are slow), the
# batched ones take BENCH_DISTILL_CONVS. tokens/s counts generated tokens over the whole run, prompt prefill included.
#   bench/bench_distill.sh MODEL SHAREGPT OUT.txt
set -eu
MODEL=$1 SHAREGPT=$2 OUT=$3
BATCH=${BENCH_DISTILL_BATCH:-64}
CONVS=${BENCH_DISTILL_CONVS:-128}
ONE=${BENCH_DISTILL_ONE:-6}
ARGS="--max-len 1024 --max-new-tokens 256"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench_distill.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
rate() { sed -n 's/.* generated in .*: \([0-9.]*\) tokens\/s.*/\1/p' "$1"; }
{
    echo "# $(date -u +%F) $(lscpu | sed -n 's/^Model name: *//p'), ${OMP_NUM_THREADS:-all} threads, $(basename "$MODEL") (fp32), $ARGS"
    for round in 1 2; do
        # shellcheck disable=SC2086 # ARGS is a list of options
        bin/medusa-distill --model "$MODEL" --input "$SHAREGPT" --out "$TMP/one.jsonl" $ARGS --batch 1 \
            --stop-after "$ONE" >"$TMP/one.log" 2>&1
        rm -f "$TMP"/one.jsonl*
        # shellcheck disable=SC2086
        bin/medusa-distill --model "$MODEL" --input "$SHAREGPT" --out "$TMP/batch.jsonl" $ARGS --batch "$BATCH" \
            --limit "$CONVS" >"$TMP/batch.log" 2>&1
        rm -f "$TMP"/batch.jsonl*
        a=$(rate "$TMP/one.log") b=$(rate "$TMP/batch.log")
        echo "round $round: one at a time $a tokens/s ($ONE conversations), --batch $BATCH $b tokens/s ($CONVS conversations): $(echo "$b $a" | awk '{printf "%.2fx", $1 / $2}')"
        grep '^distill:' "$TMP/one.log" "$TMP/batch.log" | sed "s|$TMP/||"
    done
} | tee "$OUT"
