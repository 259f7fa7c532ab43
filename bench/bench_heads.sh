#!/bin/sh
# Head recipes side by side, and how far the best one goes (`make bench-heads-compare`, `make bench-heads`).
#   bench/bench_heads.sh compare MODEL SHAREGPT OUT.txt
#     The same conversations (those self-distillation finished, see below) trained five ways, each with the same
#     epochs, batch, head vocabulary and training-time cap: ShareGPT's replies with --targets labels (the
#     reference recipe), base-argmax and base-kl; the model's own replies with labels and base-kl; with
#     BENCH_HEADS_ACCUM=1, also the distilled base-kl recipe with --grad-accum 4 (four 2048-token packs a step,
#     nearer the reference's 128 conversations a step).
#     Every recipe is evaluated on the same held-out distilled conversations (what decoding sees: the model's own
#     text), gets a tree tuned to its measured agreements, and decodes the 24 held-out prompts.
#   bench/bench_heads.sh accum MODEL SHAREGPT OUT.txt
#     The compare recipe "distilled-labels" with --grad-accum BENCH_HEADS_ACCUM_N (default 4) alone: run it beside a
#     run with BENCH_HEADS_ACCUM_N=1, each on a core of its own, to weigh the batch per optimizer step.
#   bench/bench_heads.sh long MODEL SHAREGPT OUT.txt
#     The best recipe (self-distilled data, labels: heads_compare_cpu_vm.txt) with BENCH_HEADS_MINUTES (default 180)
#     minutes in all: a third distils, the rest trains.
# compare and accum's distilled file (greedy, --max-len 1024 --max-new-tokens 256) is BENCH_HEADS_DISTILLED, default
# runs/demo/distilled-cpu.jsonl (the demo's); when absent it is made with a BENCH_HEADS_DISTILL_MINUTES budget.
#   BENCH_HEADS_RUN      work directory (default runs/bench-heads)
#   BENCH_HEADS_EPOCHS   epochs per recipe in compare (default 3); BENCH_HEADS_TRAIN_MINUTES caps each (default 14:
#                        on one core of a Xeon, the first epoch, which runs the base model, takes ~11 minutes)
set -eu
MODE=$1 MODEL=$2 SHAREGPT=$3 OUT=$4
RUN=${BENCH_HEADS_RUN:-runs/bench-heads}
EPOCHS=${BENCH_HEADS_EPOCHS:-3}
TRAIN_MINUTES=${BENCH_HEADS_TRAIN_MINUTES:-14}
DISTILLED=${BENCH_HEADS_DISTILLED:-runs/demo/distilled-cpu.jsonl}
PY=${PYTHON:-python3}
mkdir -p "$RUN"

log() { printf '%s %s\n' "$(date -u +%T)" "$*" >&2; }

distill() { # OUT MINUTES LIMIT
    log "distilling into $1 for at most $2 minutes"
    bin/medusa-distill --model "$MODEL" --input "$SHAREGPT" --out "$1" --limit "$3" --max-len 1024 \
        --max-new-tokens 256 --batch 64 --time-budget $(($2 * 60)) >"$1.log" 2>&1
    grep '^distill:' "$1.log" >&2 || true
}

# ShareGPT's own conversations with the ids of the distilled file, in its order
same_conversations() { # DISTILLED OUT
    "$PY" - "$SHAREGPT" "$1" "$2" <<'EOF'
import json, sys
sharegpt, distilled, out = sys.argv[1:]
ids = [json.loads(line)["id"] for line in open(distilled) if line.strip()]
want, by_id, text, at = set(ids), {}, open(sharegpt).read(), 0
decoder = json.JSONDecoder()
at = text.index("[") + 1
while True:  # the complete conversations of a list that may be cut short (the demo's file is)
    while at < len(text) and text[at] in " \t\r\n,":
        at += 1
    try:
        c, at = decoder.raw_decode(text, at)
    except ValueError:
        break
    if c.get("id") in want:
        by_id[c["id"]] = c
with open(out, "w") as f:
    for i in ids:
        f.write(json.dumps(by_id[i]) + "\n")
EOF
}

tokenise() { # JSONL PREFIX
    bin/medusa-data --model "$MODEL" --input "$1" --out "$2" --max-len 1024 --val-fraction 0.1 --quiet
}

field() { # JSON KEY
    sed -n "s/.*\"$2\":[[:space:]]*\([0-9.e+-]*\).*/\1/p" "$1" | head -1
}

# one recipe: train, evaluate on the distilled validation split, tune, decode; one line of the table
recipe() { # NAME DATA_PREFIX MINUTES TRAIN_OPTIONS...
    name=$1 data=$2 minutes=$3
    shift 3
    dir=$RUN/$name
    rm -rf "$dir"
    mkdir -p "$dir"
    log "$name: training ($*), at most $minutes minutes"
    t0=$(date +%s)
    bin/medusa-train --model "$MODEL" --data "$data.train.tokens.h5" --out "$dir/train" --batch-tokens 2048 \
        --cache-hidden --head-vocab 4096 --lr 2e-3 --time-budget $((minutes * 60)) --eval-every 0 --eval-batches 1 \
        --save-every 0 --log-every 10 "$@" >"$dir/train.log" 2>&1
    t1=$(date +%s)
    steps=$(grep -o 'after step [0-9]* of [0-9]*' "$dir/train.log" | tail -1 | sed 's/after step //; s/ of /\//')
    log "$name: evaluating"
    bin/medusa-eval --model "$MODEL" --medusa "$dir/train/medusa" --data "$RUN/distilled.val.tokens.h5" \
        --max-batches 8 --json "$dir/eval.json" >"$dir/eval.log" 2>&1
    log "$name: tuning and decoding"
    bin/medusa-infer tune --accuracies "$dir/eval.json" --model "$MODEL" --medusa "$dir/train/medusa" \
        --budgets 1,2,4,8,16 --out "$dir/tree.json" >"$dir/tune.log" 2>&1
    bin/medusa-infer --model "$MODEL" --medusa "$dir/train/medusa" --tree "$dir/tree.json" \
        --bench bench/prompts_sharegpt_val.json --max-new-tokens 64 --quiet >"$dir/bench.txt" 2>&1
    agree=""
    for i in 0 1 2 3 4; do agree="$agree $(field "$dir/eval.json" "medusa${i}_base_top1" | cut -c1-5)"; done
    greedy=$(grep '^medusa greedy' "$dir/bench.txt" | awk '{print $5, $NF}')
    lossless=$(sed -n 's/^greedy Medusa output == plain greedy output on \(.*\) prompts/\1/p' "$dir/bench.txt")
    printf '%-22s %5s %6ss %-31s %-14s %s\n' "$name" "$steps" "$((t1 - t0))" "$agree" "$greedy" "$lossless"
}

header() {
    echo "# $(date -u +%F) $(lscpu | sed -n 's/^Model name: *//p'), ${OMP_NUM_THREADS:-all} threads, $(basename "$MODEL") (--precision auto: its own blocks on AVX2/AVX-512)"
    echo "# 5 heads x 1 ResBlock, head vocabulary 4096, 2048-token packs, lr 2e-3, --cache-hidden; agreement ="
    echo "# medusa{i}_base_top1 on the held-out distilled conversations (8 packs); tokens/step and speedup: Medusa"
    echo "# greedy with a tree tuned to that agreement, on the 24 held-out ShareGPT prompts, 64 new tokens each"
    printf '%-22s %5s %7s %-31s %-14s %s\n' recipe steps train "agreement head 0..4" "tok/step x" lossless
}

# compare and accum train on the demo's distilled file (made here when absent); long distils its own
demo_distilled() { [ -s "$DISTILLED" ] || distill "$DISTILLED" "${BENCH_HEADS_DISTILL_MINUTES:-12}" 4000; }
case $MODE in
compare)
    demo_distilled
    log "tokenising the distilled conversations and ShareGPT's replies to the same ones"
    tokenise "$DISTILLED" "$RUN/distilled"
    same_conversations "$DISTILLED" "$RUN/sharegpt.jsonl"
    tokenise "$RUN/sharegpt.jsonl" "$RUN/sharegpt"
    {
        header
        echo "# $(wc -l <"$DISTILLED") conversations ($DISTILLED), $EPOCHS epochs, training capped at $TRAIN_MINUTES minutes"
        for targets in labels base-argmax base-kl; do
            recipe "sharegpt-$targets" "$RUN/sharegpt" "$TRAIN_MINUTES" --epochs "$EPOCHS" --targets "$targets"
        done
        for targets in labels base-kl; do
            recipe "distilled-$targets" "$RUN/distilled" "$TRAIN_MINUTES" --epochs "$EPOCHS" --targets "$targets"
        done
        if [ "${BENCH_HEADS_ACCUM:-0}" = 1 ]; then
            recipe "distilled-kl-accum4" "$RUN/distilled" "$TRAIN_MINUTES" --epochs "$EPOCHS" --targets base-kl \
                --grad-accum 4
        fi
    } | tee "$OUT"
    ;;
accum)
    demo_distilled
    n=${BENCH_HEADS_ACCUM_N:-4}
    tokenise "$DISTILLED" "$RUN/distilled"
    {
        header
        echo "# $(wc -l <"$DISTILLED") conversations ($DISTILLED), $EPOCHS epochs, training capped at $TRAIN_MINUTES minutes"
        recipe "distilled-labels-accum$n" "$RUN/distilled" "$TRAIN_MINUTES" --epochs "$EPOCHS" --targets labels \
            --grad-accum "$n"
    } | tee "$OUT"
    ;;
long)
    minutes=${BENCH_HEADS_MINUTES:-180}
    long=$RUN/distilled-long.jsonl
    [ -s "$long" ] || distill "$long" $((minutes / 3)) 100000
    tokenise "$long" "$RUN/distilled"
    {
        header
        echo "# $(wc -l <"$long") conversations distilled in $((minutes / 3)) minutes, then 6 epochs within the rest"
        recipe long "$RUN/distilled" $((minutes - minutes / 3 - 10)) --epochs 6 --targets labels
    } | tee "$OUT"
    ;;
*)
    echo "bench_heads.sh: MODE=$MODE: expected compare, accum or long" >&2
    exit 1
    ;;
esac
