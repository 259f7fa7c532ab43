#!/bin/bash
# medusa-distill sharded over MPI ranks (OpenMPI, CPU backend), through the binary, on tiny_hd64 and the ShareGPT
# fixture: 2 and 3 ranks write the same file as one process, byte for byte (greedy, and sampled with --seed); a run
# of 2 ranks stopped part-way (one rank's last line cut off, as a stop mid-write leaves it) continues on 1 rank and on
# 2 ranks to the uninterrupted output, as does one of 3 ranks on 2; rank 0 alone writes OUT and reports; a rank whose
# settings differ stops every rank with a clear error.
#   tests/e2e_distill_mpi.sh [BIN_DIR]     (default: $E2E_BIN_DIR, else bin)
# Skipped (one passing line that says so) where mpirun is missing or the binary was built without MPI.
# shellcheck disable=SC2016 # expect's conditions are single-quoted strings for eval
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BIN=${1:-${E2E_BIN_DIR:-bin}}
MODEL=tests/fixtures/models/tiny_hd64/gguf/tiny_hd64.F32.gguf
CONVS=tests/fixtures/chat/conversations.json
TMP=$(mktemp -d "${TMPDIR:-/tmp}/e2e_distill_mpi.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# shellcheck source=tests/e2e_lib.sh
. tests/e2e_lib.sh

mpi_missing "$BIN/medusa-distill" && exit
export OMP_NUM_THREADS=1

FLAGS=(--model "$MODEL" --input "$CONVS" --chat-template mistral --max-len 256 --max-new-tokens 16 --precision fp32
    --batch 4)
distill() { "$BIN/medusa-distill" --out "$@" "${FLAGS[@]}"; }                  # OUT [FLAGS...]: one process
ranks() { "${MPIRUN[@]}" -np "$1" "$BIN/medusa-distill" --out "${@:2}" "${FLAGS[@]}"; } # N OUT [FLAGS...]
lines() { wc -l <"$1" 2>/dev/null || echo 0; }

check "one process: the fixture's conversations regenerated" distill "$TMP/one.jsonl"
n_one=$(lines "$TMP/one.jsonl")
for n in 2 3; do
    check "$n ranks: mpirun -np $n medusa-distill" ranks "$n" "$TMP/r$n.jsonl"
    cp "$TMP/log" "$TMP/log_r$n"
    expect 'cmp -s "$TMP/one.jsonl" "$TMP/r$n.jsonl" && [ "$n_one" -gt 10 ] && ! ls "$TMP"/r$n.jsonl.partial* >/dev/null 2>&1' \
        "$n ranks' output equals one process's byte for byte ($n_one conversations), no partial file left"
done
expect '[ "$(grep -c "conversations -> " "$TMP/log_r3")" -eq 1 ] && [ "$(grep -c "^distill: .* tokens/s" "$TMP/log_r3")" -eq 1 ] &&
        grep -q "distill over 3 ranks" "$TMP/log_r3"' \
    "3 ranks: rank 0 alone reports, with the whole run's tokens/s: $(grep -o '[0-9]* tokens generated.*' "$TMP/log_r3")"

check "one process, sampled (--temperature 0.8 --seed 3, .json list)" distill "$TMP/t1.json" --temperature 0.8 --seed 3
check "3 ranks, sampled" ranks 3 "$TMP/t3.json" --temperature 0.8 --seed 3
check "3 ranks, greedy (.json list)" ranks 3 "$TMP/g3.json"
expect 'cmp -s "$TMP/t1.json" "$TMP/t3.json" && ! cmp -s "$TMP/t1.json" "$TMP/g3.json" && [ "$(head -c 8 "$TMP/t3.json")" = "[{\"id\":\"" ]' \
    "sampled: 3 ranks equal one process byte for byte (each conversation's stream from its index), and differ from greedy"

# 2 ranks stopped part-way: each rank's conversations in its own partial file
check "2 ranks --stop-after 6" ranks 2 "$TMP/s.jsonl" --stop-after 6
kept=$(($(lines "$TMP/s.jsonl.partial") + $(lines "$TMP/s.jsonl.partial.rank1") - 2))
expect '[ ! -e "$TMP/s.jsonl" ] && [ "$kept" -ge 6 ] && [ "$kept" -lt "$n_one" ] && grep -q "run again" "$TMP/log"' \
    "stopped: no output yet, $kept conversations kept in s.jsonl.partial and s.jsonl.partial.rank1"
# a stop in the middle of rank 1's write leaves half a line
head -c -20 "$TMP/s.jsonl.partial.rank1" >"$TMP/cut" && cp "$TMP/cut" "$TMP/s.jsonl.partial.rank1"
mkdir "$TMP/again" && cp "$TMP"/s.jsonl.partial* "$TMP/again/"
check "the stopped run continued as one process" distill "$TMP/s.jsonl"
expect 'grep -q "dropping" "$TMP/log" && grep -q "already done" "$TMP/log" && cmp -s "$TMP/one.jsonl" "$TMP/s.jsonl" &&
        ! ls "$TMP"/s.jsonl.partial* >/dev/null 2>&1' \
    "continued on 1 rank (rank 1's cut line dropped): the uninterrupted output byte for byte, partial files removed"
check "the same stopped run continued on 2 ranks" ranks 2 "$TMP/again/s.jsonl"
expect 'grep -q "already done" "$TMP/log" && cmp -s "$TMP/one.jsonl" "$TMP/again/s.jsonl" && ! ls "$TMP"/again/s.jsonl.partial* >/dev/null 2>&1' \
    "continued on 2 ranks: the uninterrupted output byte for byte"
# 3 ranks stopped, continued on 2 (rank 2's file read by rank 0, merged at the end)
check "3 ranks --stop-after 9, continued on 2 ranks" bash -c "$(declare -p MPIRUN FLAGS BIN TMP | tr '\n' ';')
    \"\${MPIRUN[@]}\" -np 3 \"\$BIN/medusa-distill\" --out \"\$TMP/u.jsonl\" \"\${FLAGS[@]}\" --stop-after 9 &&
    [ -e \"\$TMP/u.jsonl.partial.rank2\" ] && [ ! -e \"\$TMP/u.jsonl\" ] &&
    \"\${MPIRUN[@]}\" -np 2 \"\$BIN/medusa-distill\" --out \"\$TMP/u.jsonl\" \"\${FLAGS[@]}\""
expect 'cmp -s "$TMP/one.jsonl" "$TMP/u.jsonl" && ! ls "$TMP"/u.jsonl.partial* >/dev/null 2>&1' \
    "3 ranks stopped, continued on 2: the uninterrupted output byte for byte"

# a rank whose settings differ: every rank stops with the error, none hangs
if timeout 60 "${MPIRUN[@]}" -np 1 "$BIN/medusa-distill" --out "$TMP/x.jsonl" "${FLAGS[@]}" : \
    -np 1 "$BIN/medusa-distill" --out "$TMP/x.jsonl" "${FLAGS[@]}" --max-new-tokens 8 >"$TMP/log" 2>&1; then
    fail "ranks with different --max-new-tokens: succeeded"
else
    rc=$?
    expect '[ $rc -ne 124 ] && grep -q "differ from rank 0" "$TMP/log" && [ ! -e "$TMP/x.jsonl" ]' \
        "ranks with different --max-new-tokens: all stop (status $rc): $(grep -m1 -o 'rank [0-9] of [0-9]: its settings.\{0,40\}' "$TMP/log")"
fi
finish
