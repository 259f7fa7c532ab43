#!/bin/sh
# Draws a training run's curves from RUN/metrics.jsonl with gnuplot (make deps installs gnuplot-nox):
#   RUN/loss.png      weighted loss, train (per log step) and eval
#   RUN/accuracy.png  top-1 accuracy of every head, train (lines) and eval (points)
#   RUN/topk.png      top-1..5 accuracy of every head (eval when the run has evaluations, else train)
# Usage: train/plot.sh RUN_DIR   (or: make plot RUN=RUN_DIR)
set -eu
run=${1:?usage: train/plot.sh RUN_DIR}
metrics=$run/metrics.jsonl
[ -s "$metrics" ] || { echo "error: $metrics: missing or empty" >&2; exit 1; }
command -v gnuplot >/dev/null || { echo "error: gnuplot not found (make deps installs gnuplot-nox)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# metrics.jsonl holds flat objects: one table per split, columns step, loss, then medusa{i}_top{k} (i-major).
awk -v dir="$tmp" '
BEGIN { heads = 0 }
{
    line = $0; gsub(/[{}"]/, "", line); n = split(line, kv, ",")
    delete v
    for (j = 1; j <= n; j++) { split(kv[j], p, ":"); v[p[1]] = p[2] }
    split_name = v["split"]
    if (heads == 0) while (("medusa" heads "_top1") in v) heads++
    row = v["step"] " " v["loss"]
    for (i = 0; i < heads; i++) for (k = 1; k <= 5; k++) row = row " " v["medusa" i "_top" k]
    print row > (dir "/" split_name ".dat")
}
END { print heads > (dir "/heads") }' "$metrics"
heads=$(cat "$tmp/heads")
[ "$heads" -gt 0 ] || { echo "error: $metrics: no medusa{i}_top{k} metrics" >&2; exit 1; }
train=$tmp/train.dat
eval=$tmp/eval.dat
acc=$train
[ -s "$eval" ] && acc=$eval

{
    # x from step 0: a run evaluated once has one eval step, too narrow a range for gnuplot alone
    echo "set terminal pngcairo size 900,560 noenhanced; set grid; set key outside right; set xlabel 'step'; set xrange [0:*]"
    echo "set output '$run/loss.png'; set title 'loss (sum of head losses weighted by decay^i)'; set ylabel 'loss'"
    plot="plot '$train' using 1:2 with lines title 'train'"
    [ -s "$eval" ] && plot="$plot, '$eval' using 1:2 with linespoints title 'eval'"
    echo "$plot"

    echo "set output '$run/accuracy.png'; set title 'top-1 accuracy per head'; set ylabel 'top-1'; set yrange [0:*]"
    plot="plot"
    i=0
    while [ "$i" -lt "$heads" ]; do
        col=$((3 + 5 * i))
        plot="$plot '$train' using 1:$col with lines lc $((i + 1)) title 'medusa$i train',"
        [ -s "$eval" ] && plot="$plot '$eval' using 1:$col with points pt 7 lc $((i + 1)) title 'medusa$i eval',"
        i=$((i + 1))
    done
    echo "${plot%,}"

    echo "set output '$run/topk.png'; set title 'top-k accuracy per head ($(basename "$acc" .dat))'; set ylabel 'accuracy'"
    plot="plot"
    i=0
    while [ "$i" -lt "$heads" ]; do
        k=1
        while [ "$k" -le 5 ]; do
            plot="$plot '$acc' using 1:$((2 + 5 * i + k)) with linespoints lc $((i + 1)) dt $k pt $k title 'medusa${i}_top$k',"
            k=$((k + 1))
        done
        i=$((i + 1))
    done
    echo "${plot%,}"
} >"$tmp/plot.gp"
gnuplot "$tmp/plot.gp"
echo "wrote $run/loss.png, $run/accuracy.png, $run/topk.png"
