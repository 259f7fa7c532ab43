#!/bin/bash
# Kill -9 campaign: medusa-train on a tiny model (tiny_hd64's GGUF, the ShareGPT fixture) killed with SIGKILL at
# random moments, again and again, each time resumed (--resume once a checkpoint exists) until the run finishes. With
# --save-every 1 a good share of the kills land inside a checkpoint write. After every kill the run directory must
# hold a checkpoint that loads (once one was written), and every checkpoint in it must load; at the end the final
# checkpoint (parameters, AdamW moments, run state), the export and metrics.jsonl (but its timing fields) must be
# bitwise those of an uninterrupted run, with no temp file left. Then medusa-data is killed while it replaces a pair of
# caches made with other settings: the train and validation caches present must always come from the same run.
#   tests/kill_campaign.sh [BIN_DIR]     (default: bin; the CPU only, so not $E2E_BIN_DIR's emulated binaries)
# KILL_CAMPAIGN_KEEP=1 keeps its directory. KILL_CAMPAIGN_LONG=1 runs long (200 runs, 300 medusa-data kills; KILL_CAMPAIGN_RUNS and KILL_CAMPAIGN_DATA_KILLS
# set the counts, KILL_CAMPAIGN_SEED the random seed). Needs build/tests/ckpt_equal ($EMU_TEST_DIR or
# KILL_CAMPAIGN_TOOL). Like the C tests, its last line is "N passed, N failed".
# shellcheck disable=SC2016 # expect's conditions are single-quoted strings for eval
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-bin}
TOOL=${KILL_CAMPAIGN_TOOL:-${EMU_TEST_DIR:-build/tests}/ckpt_equal}
LONG=${KILL_CAMPAIGN_LONG:-}
RUNS=${KILL_CAMPAIGN_RUNS:-$([ -n "$LONG" ] && echo 200 || echo 8)}
DATA_KILLS=${KILL_CAMPAIGN_DATA_KILLS:-$([ -n "$LONG" ] && echo 300 || echo 12)}
SEED=${KILL_CAMPAIGN_SEED:-$(($$ % 32768))}
RANDOM=$SEED
MODEL=tests/fixtures/models/tiny_hd64/gguf/tiny_hd64.F32.gguf
CONVS=tests/fixtures/chat/conversations.json
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kill_campaign.XXXXXX")
if [ -n "${KILL_CAMPAIGN_KEEP:-}" ]; then echo "  (keeping $TMP)"; else trap 'rm -rf "$TMP"' EXIT; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "  ok   $*"; }
fail() { failed=$((failed + 1)); echo "  FAIL $*"; }
expect() { if eval "$1"; then ok "$2"; else fail "$2"; fi; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# a random delay in [0, $1] ms, as seconds for sleep
delay() { local ms=$(((RANDOM * 32768 + RANDOM) % ($1 + 1))); printf '%d.%03d' $((ms / 1000)) $((ms % 1000)); }
[ -x "$TOOL" ] || { echo "  FAIL $TOOL not built (make $TOOL)"; echo "0 passed, 1 failed"; exit 1; }
echo "kill campaign: $RUNS training runs killed until done, $DATA_KILLS medusa-data kills (seed $SEED)"

"$BIN/medusa-data" --model "$MODEL" --input "$CONVS" --out "$TMP/sg" --template mistral --max-len 96 \
    --val-fraction 0.2 --quiet
TRAIN=("$BIN/medusa-train" --model "$MODEL" --data "$TMP/sg.train.tokens.h5" --val "$TMP/sg.val.tokens.h5"
    --heads 2 --batch-tokens 128 --grad-accum 2 --max-steps 24 --save-every 1 --log-every 5 --eval-every 7
    --eval-batches 1 --keep-checkpoints 2 --device cpu --precision fp32 --seed 7)

t0=$(now_ms)
"${TRAIN[@]}" --out "$TMP/ref" >"$TMP/ref.log" 2>&1 || { cat "$TMP/ref.log"; exit 1; }
ref_ms=$(($(now_ms) - t0))
echo "  the uninterrupted run: 24 steps, a checkpoint after each, in $ref_ms ms"

# metrics.jsonl without its wall-clock fields
untimed() { sed -E 's/,"(tokens_per_s|tflops_per_s|mfu|elapsed_s)":[^,}]*//g' "$1"; }
kills=0 in_write=0 lost=0 unloadable=0 mismatched=0 stray=0
for run in $(seq "$RUNS"); do
    dir="$TMP/run$run"
    had_ckpt=0 attempts=0
    while :; do
        attempts=$((attempts + 1))
        if [ $attempts -gt 400 ]; then fail "run $run: not finished after 400 attempts"; break; fi
        resume=()
        compgen -G "$dir/ckpt-*.h5" >/dev/null && resume=(--resume)
        "${TRAIN[@]}" --out "$dir" "${resume[@]}" >"$TMP/log" 2>&1 &
        pid=$!
        sleep "$(delay $((ref_ms * 4 / 5)))" # mostly before the end: a run is killed a few times
        if kill -9 $pid 2>/dev/null; then
            wait $pid 2>/dev/null || true
            kills=$((kills + 1))
        elif wait $pid; then
            break # finished before the kill
        else
            fail "run $run: medusa-train failed on its own"
            tail -3 "$TMP/log" | sed 's/^/       /'
            break
        fi
        compgen -G "$dir/*.tmp*" >/dev/null && in_write=$((in_write + 1))
        ckpts=()
        for f in "$dir"/ckpt-*.h5; do [ -e "$f" ] && ckpts+=("$f"); done
        if [ ${#ckpts[@]} -gt 0 ]; then
            had_ckpt=1
            "$TOOL" --load "${ckpts[@]}" >"$TMP/load.log" 2>&1 || {
                unloadable=$((unloadable + 1))
                sed 's/^/       /' "$TMP/load.log"
            }
        elif [ $had_ckpt = 1 ]; then
            lost=$((lost + 1))
        fi
    done
    [ -d "$dir/medusa" ] || continue
    if ! "$TOOL" "$TMP/ref/ckpt-24.h5" "$dir/ckpt-24.h5" >"$TMP/cmp.log" 2>&1 ||
        ! cmp -s "$TMP/ref/medusa/medusa_lm_head.safetensors" "$dir/medusa/medusa_lm_head.safetensors" ||
        ! cmp -s "$TMP/ref/medusa/config.json" "$dir/medusa/config.json" ||
        [ "$(untimed "$TMP/ref/metrics.jsonl")" != "$(untimed "$dir/metrics.jsonl")" ]; then
        mismatched=$((mismatched + 1))
        echo "       run $run differs from the uninterrupted run: $(cat "$TMP/cmp.log")"
    fi
    [ -z "$(find "$dir" -name '*.tmp*')" ] || stray=$((stray + 1))
    echo "  run $run: finished after $((attempts - 1)) kills"
done
expect '[ $lost = 0 ] && [ $unloadable = 0 ]' \
    "$kills kills ($in_write inside a checkpoint write or an export: temp files left): the run directory always held a checkpoint that loads once one was written, and every checkpoint in it loaded"
expect '[ $mismatched = 0 ] && [ "$(find "$TMP" -maxdepth 1 -name "run*" | wc -l)" = "$RUNS" ]' \
    "$RUNS runs killed and resumed to the end: final checkpoint (params, AdamW moments, run state), export and metrics.jsonl (but timing) bitwise the uninterrupted run's"
expect '[ $stray = 0 ]' "no temp file left in any finished run's directory (those of killed writes were removed at start-up)"

# medusa-data replacing a pair of caches made with another --max-len, killed at random moments
max_len() { "$BIN/medusa-data" stats "$1" | sed -n 's/.*(max_len \([0-9]*\)).*/\1/p'; }
DATA=("$BIN/medusa-data" --model "$MODEL" --input "$CONVS" --out "$TMP/pair" --template mistral --val-fraction 0.2 --quiet)
t0=$(now_ms)
"${DATA[@]}" --max-len 64
data_ms=$(($(now_ms) - t0))
mixed=0 no_val=0
for i in $(seq "$DATA_KILLS"); do
    "${DATA[@]}" --max-len $((i % 2 ? 96 : 64)) >/dev/null 2>&1 &
    pid=$!
    sleep "$(delay $((data_ms + data_ms / 4)))"
    kill -9 $pid 2>/dev/null || true
    wait $pid 2>/dev/null || true
    if [ ! -e "$TMP/pair.val.tokens.h5" ]; then
        no_val=$((no_val + 1))
    elif [ "$(max_len "$TMP/pair.train.tokens.h5")" != "$(max_len "$TMP/pair.val.tokens.h5")" ]; then
        mixed=$((mixed + 1))
    fi
done
expect '[ $mixed = 0 ]' \
    "medusa-data killed $DATA_KILLS times while replacing a pair made with another --max-len: never a mixed pair ($no_val times no validation cache, an error when given)"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
