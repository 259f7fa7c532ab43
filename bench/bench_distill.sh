#!/bin/sh
# Batched self-distillation generation beside one-at-a-time decoding (`make bench-distill`): medusa-distill on the
# demo model and ShareGPT file, greedy, with --batch B and with --batch 1 (each forward pass then decodes one token
# of one conversation, as plain decoding does), interleaved A B C A B C in one sitting: one at a time on the file's own
# blocks (--precision native, the fastest one-row pass), batched native, and batched on the blocks dequantised to fp32
# (--precision fp32: OpenBLAS's sgemm straight on the weights, where native passes of many rows dequantise tiles for
# it first). All start at the first conversation of the file; the one-at-a-time runs stop after BENCH_DISTILL_ONE
# conversations (they are slow), the batched ones take BENCH_DISTILL_CONVS. tokens/s counts generated tokens over the
# whole run, prompt prefill included.
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
    echo "# $(date -u +%F) $(lscpu | sed -n 's/^Model name: *//p'), ${OMP_NUM_THREADS:-all} threads, $(basename "$MODEL"), $ARGS"
    for round in 1 2; do
        # shellcheck disable=SC2086 # ARGS is a list of options
        bin/medusa-distill --model "$MODEL" --input "$SHAREGPT" --out "$TMP/one.jsonl" $ARGS --batch 1 \
            --precision native --stop-after "$ONE" >"$TMP/one.log" 2>&1
        rm -f "$TMP"/one.jsonl*
        for precision in native fp32; do
            # shellcheck disable=SC2086
            bin/medusa-distill --model "$MODEL" --input "$SHAREGPT" --out "$TMP/$precision.jsonl" $ARGS \
                --batch "$BATCH" --precision $precision --limit "$CONVS" >"$TMP/$precision.log" 2>&1
            rm -f "$TMP/$precision".jsonl*
        done
        a=$(rate "$TMP/one.log") b=$(rate "$TMP/native.log") c=$(rate "$TMP/fp32.log")
        echo "round $round: one at a time (native) $a tokens/s ($ONE conversations); --batch $BATCH ($CONVS conversations): native $b tokens/s ($(echo "$b $a" | awk '{printf "%.2fx", $1 / $2}')), fp32 $c tokens/s ($(echo "$c $a" | awk '{printf "%.2fx", $1 / $2}'))"
        grep '^distill:' "$TMP/one.log" "$TMP/native.log" "$TMP/fp32.log" | sed "s|$TMP/||"
    done
} | tee "$OUT"
