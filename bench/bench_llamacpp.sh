#!/usr/bin/env bash
# medusa-c vs llama.cpp (llama-cpp-python): plain greedy decoding speed, A B A B on one machine in one sitting.
#
#   make bench-llamacpp                     # the Makefile target runs: bash bench/bench_llamacpp.sh
#   flock /tmp/medusa-cpu.lock bash bench/bench_llamacpp.sh [GGUF ...] | tee out.txt
#
# For each GGUF (default: the demo SmolLM2-135M-Instruct in Q4_1, Q8_0 and F16 under cache/models/; the last two
# are made from the Q4_1 by bench/make_gguf_variants.py when missing) two rounds, each: medusa-c plain greedy,
# then llama.cpp plain greedy (and with HEADS=dir, medusa-c Medusa greedy with those heads). Then a table: tok/s of
# each engine in each round, the ratio medusa-c / llama.cpp per round (> 1: medusa-c is faster) and its mean.
#
# Both engines decode the same token ids: the first N_PROMPTS prompts of PROMPTS through the model's chat template
# as medusa-c renders it (bench_llamacpp.py; a header line says whether llama.cpp's tokenisation equals medusa-c's
# own, taken from medusa-data), greedily, at most MAX_NEW tokens, stopping after <|im_end|>. tok/s is medusa-c's
# --bench plain/s definition for both, prefill excluded: generated tokens / time from the end of the prefill to the
# last token chosen, summed over the prompts (sum of tokens / sum of times). medusa-c runs one
# `medusa-infer --prompt-ids` process per prompt (--bench needs heads; the [N tokens in S s] line it prints is the
# same DecodeStats --bench reports, S printed to 10 ms); llama.cpp one process per file and round.
#
# Environment: PRECISION (medusa-infer --precision; default native: keep the GGUF's formats; fp32 and bf16 dequantise
# at load), THREADS (2), MAX_NEW (64), N_PROMPTS (8), PROMPTS (bench/prompts_sharegpt_val.json), HEADS (exported heads
# directory: adds medusa-c Medusa greedy, one --bench run per file and round, which also runs plain and typical),
# TREE (--tree for that run), BIN (bin/medusa-infer), PY (.venv/bin/python), LOGS (keep per-run logs here; default a
# temporary directory, removed at the end).
#
# Runtime: on the 2-core CPU VM, 8 prompts x 64 tokens x 3 files x 2 rounds took 2 min 40 s at PRECISION=fp32
# (medusa-c ~35 tok/s, llama.cpp 57-93 tok/s on the 135M model; ~0.7 s load + prefill per medusa-infer process);
# HEADS adds roughly 40 s per file and round (6 --bench runs, each decoding plain, Medusa greedy and typical). Nothing else should run meanwhile: take /tmp/medusa-cpu.lock around it, not inside
# it (a flock inside a command already holding the lock would wait on itself).
set -euo pipefail
cd "$(dirname "$0")/.."

PRECISION=${PRECISION:-native}
THREADS=${THREADS:-2}
MAX_NEW=${MAX_NEW:-64}
N_PROMPTS=${N_PROMPTS:-8}
PROMPTS=${PROMPTS:-bench/prompts_sharegpt_val.json}
BIN=${BIN:-bin/medusa-infer}
PY=${PY:-.venv/bin/python}
HEADS=${HEADS:-}
TREE=${TREE:-}
MODELS=cache/models
BASE=$MODELS/SmolLM2-135M-Instruct

if [ $# -gt 0 ]; then
    FILES=("$@")
else
    FILES=("$BASE.Q4_1.gguf" "$BASE.Q8_0.gguf" "$BASE.F16.gguf")
    [ -f "$BASE.Q4_1.gguf" ] || { echo "$BASE.Q4_1.gguf missing: run data/fetch_demo.sh" >&2; exit 1; }
    if [ ! -f "$BASE.Q8_0.gguf" ] || [ ! -f "$BASE.F16.gguf" ]; then
        "$PY" bench/make_gguf_variants.py --no-llama-check "$MODELS" >&2
    fi
fi
[ -x "$BIN" ] || { echo "$BIN missing: make $BIN" >&2; exit 1; }
"$PY" -c 'import llama_cpp' 2>/dev/null || { echo "llama-cpp-python is not installed in $PY's environment" >&2; exit 1; }
for f in "${FILES[@]}"; do [ -f "$f" ] || { echo "$f: no such file" >&2; exit 1; }; done

if [ -n "${LOGS:-}" ]; then
    mkdir -p "$LOGS"
else
    LOGS=$(mktemp -d /tmp/bench_llamacpp.XXXXXX)
    trap 'rm -rf "$LOGS"' EXIT
fi

# a copy of the binary, so that a rebuild during the run cannot mix two builds
bin_built=$(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC')
cp "$BIN" "$LOGS/medusa-infer.$$"
BIN_RUN=$LOGS/medusa-infer.$$

# ---- header ----
cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
llama_ver=$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')
llama_sys=$("$PY" -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode().strip())')
echo "# bench_llamacpp.sh: medusa-c vs llama.cpp plain greedy decoding, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "# cpu: $cpu, $(nproc) cores visible; threads $THREADS; OMP_WAIT_POLICY ${OMP_WAIT_POLICY:-unset (medusa-infer then spins briefly on an idle machine, else waits passively)}"
echo "# medusa-c: git $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!bench' 2>/dev/null || echo ' (sources modified)'), $BIN built $bin_built (sha256 $(sha256sum "$BIN_RUN" | cut -c1-12)), --precision $PRECISION"
echo "# llama.cpp: llama-cpp-python $llama_ver; $llama_sys"
[ -n "$HEADS" ] && echo "# Medusa greedy: heads $HEADS, tree ${TREE:-the CPU default} $( [ -n "${TREE:-}" ] && cat "$TREE" | tr -d '\n')"
echo "# prompts: the first $N_PROMPTS of $PROMPTS, at most $MAX_NEW new tokens, greedy; tok/s = generated tokens / decode time after the prefill (medusa-c --bench plain/s), summed over the prompts"

# ---- one run of each kind ----

# medusa-c plain: one --prompt-ids process per prompt; prints "tokens seconds" and leaves the texts in $out.*
medusa_plain() { # file ids.txt out
    local f=$1 ids=$2 out=$3 i=0 line
    : >"$out.stats"
    while IFS= read -r line; do
        "$BIN_RUN" --model "$f" --prompt-ids "$line" --max-new-tokens "$MAX_NEW" --threads "$THREADS" \
            --precision "$PRECISION" >"$out.$i.txt" 2>"$out.$i.err" || {
            echo "medusa-infer failed on $f (prompt $i):" >&2
            tail -5 "$out.$i.err" >&2
            exit 1
        }
        sed -n 's/^\[\([0-9]*\) tokens in \([0-9.]*\) s:.*/\1 \2/p' "$out.$i.err" | tail -1 >>"$out.stats"
        i=$((i + 1))
    done <"$ids"
    awk -v n="$i" 'END { if (NR != n) { print "medusa-infer printed no speed line" > "/dev/stderr"; exit 1 } }
        { t += $1; s += $2 } END { printf "%d %.3f %.2f\n", t, s, t / s }' "$out.stats"
}

# llama.cpp plain: prints "tokens seconds tok/s"
llama_plain() { # file ids.json out
    "$PY" bench/bench_llamacpp.py --model "$1" --prompts "$2" --n-prompts 0 --threads "$THREADS" \
        --max-new-tokens "$MAX_NEW" --outputs-out "$3.json" >"$3.log"
    sed -n 's/^total  \([0-9]*\) tokens in \([0-9.]*\) s decode.*: decode \([0-9.]*\) tok\/s.*/\1 \2 \3/p' "$3.log"
}

# medusa-c Medusa greedy (--bench with heads): prints "plain tok/s, medusa greedy tok/s"
medusa_greedy() { # file ids.json out
    local tree=()
    [ -n "$TREE" ] && tree=(--tree "$TREE")
    "$BIN_RUN" --model "$1" --medusa "$HEADS" "${tree[@]}" --bench "$2" --max-new-tokens "$MAX_NEW" --threads "$THREADS" \
        --precision "$PRECISION" >"$3.log" 2>"$3.err" || { tail -5 "$3.err" >&2; exit 1; }
    awk '/^plain greedy / { p = $4 } /^medusa greedy / { g = $4 } END { print p, g }' "$3.log"
}

# ---- rounds ----
declare -A MC LL MG SAME
idx=0
for f in "${FILES[@]}"; do
    name=$(basename "$f" .gguf)
    w=$LOGS/$idx
    mkdir -p "$w"
    # the prompts' token ids, fed to both engines
    "$PY" bench/bench_llamacpp.py --model "$f" --prompts "$PROMPTS" --n-prompts "$N_PROMPTS" --tokenize-only \
        --prompt-ids-out "$w/ids.json" >/dev/null
    "$PY" -c 'import json, sys; print("".join(",".join(map(str, p)) + "\n" for p in json.load(open(sys.argv[1]))), end="")' \
        "$w/ids.json" >"$w/ids.txt"
    # do llama.cpp's ids equal medusa-c's own tokenisation (medusa-data renders and tokenises like medusa-infer)?
    if [ -x bin/medusa-data ]; then
        "$PY" - "$PROMPTS" "$N_PROMPTS" "$w/conv.json" <<'EOF'
import json, sys
sys.path.insert(0, "bench")
from bench_llamacpp import load_prompts
p = load_prompts(sys.argv[1])[: int(sys.argv[2]) or None]
json.dump([{"id": f"p{i}", "conversations": [{"from": "human", "value": x}, {"from": "gpt", "value": "x"}]}
           for i, x in enumerate(p) if isinstance(x, str)], open(sys.argv[3], "w"))
EOF
        if bin/medusa-data --model "$f" --input "$w/conv.json" --out "$w/mc" --val-fraction 0 --threads 1 --quiet \
            >/dev/null 2>&1; then
            check=$("$PY" - "$w/mc.train.tokens.h5" "$w/ids.json" <<'EOF'
import json, sys
import h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
tok, mask, off = f["tokens"][:], f["loss_mask"][:], f["conv_offsets"][:]
ids = json.load(open(sys.argv[2]))
mc = [tok[a:b][: int(np.argmax(mask[a:b]))].tolist() for a, b in zip(off[:-1], off[1:])]
print(f"{sum(x == y for x, y in zip(mc, ids))}/{len(ids)} prompts ({sum(map(len, ids))} tokens)")
EOF
) || check="not checked (no h5py?)"
        else
            check="not checked (medusa-data failed)"
        fi
        echo "# $name: llama.cpp's prompt ids == medusa-c's own tokenisation (medusa-data) on $check"
    fi
    idx=$((idx + 1))
done

for round in 1 2; do
    idx=0
    for f in "${FILES[@]}"; do
        name=$(basename "$f" .gguf)
        w=$LOGS/$idx
        read -r t s r < <(medusa_plain "$f" "$w/ids.txt" "$w/mc$round")
        MC[$idx,$round]=$r
        echo "round $round  $name  medusa-c plain:    $t tokens in $s s: $r tok/s"
        read -r t s r < <(llama_plain "$f" "$w/ids.json" "$w/ll$round")
        LL[$idx,$round]=$r
        echo "round $round  $name  llama.cpp plain:   $t tokens in $s s: $r tok/s"
        SAME[$idx,$round]=$("$PY" - "$w/mc$round" "$w/ll$round.json" <<'EOF'
import json, sys
mc, ll = sys.argv[1], json.load(open(sys.argv[2]))
same = agree = total = 0
for o in ll:
    with open(f"{mc}.{o['prompt']}.txt", encoding="utf-8", errors="replace") as f:
        m = f.read()
    m = m[:-1] if m.endswith("\n") else m  # medusa-infer ends the reply with a newline
    same += m == o["text"]
    k = 0
    while k < min(len(m), len(o["text"])) and m[k] == o["text"][k]:
        k += 1
    # llama's tokens whose text lies wholly within the common prefix (the tokens the two agree on, about)
    agree += sum(1 for n in o["prefix_chars"] if n <= k)
    total += len(o["prefix_chars"])
print(f"{same}/{len(ll)}:{agree}/{total}")
EOF
)
        if [ -n "$HEADS" ]; then
            read -r p g < <(medusa_greedy "$f" "$w/ids.json" "$w/mg$round")
            MG[$idx,$round]=$g
            echo "round $round  $name  medusa-c medusa greedy: $g tok/s (plain in the same --bench run: $p tok/s)"
        fi
        idx=$((idx + 1))
    done
done

# ---- table ----
echo
printf '%-34s %9s %9s %7s %9s %9s %7s %7s %11s' file "mc r1" "llama r1" "ratio1" "mc r2" "llama r2" "ratio2" \
    "mean" "same text"
[ -n "$HEADS" ] && printf ' %9s %9s' "medusa r1" "medusa r2"
echo
idx=0
for f in "${FILES[@]}"; do
    r1=$(awk -v a="${MC[$idx,1]}" -v b="${LL[$idx,1]}" 'BEGIN { printf "%.3f", a / b }')
    r2=$(awk -v a="${MC[$idx,2]}" -v b="${LL[$idx,2]}" 'BEGIN { printf "%.3f", a / b }')
    mean=$(awk -v a="$r1" -v b="$r2" 'BEGIN { printf "%.3f", (a + b) / 2 }')
    printf '%-34s %9s %9s %7s %9s %9s %7s %7s %11s' "$(basename "$f")" "${MC[$idx,1]}" "${LL[$idx,1]}" "$r1" \
        "${MC[$idx,2]}" "${LL[$idx,2]}" "$r2" "$mean" "${SAME[$idx,1]%%:*}"
    [ -n "$HEADS" ] && printf ' %9s %9s' "${MG[$idx,1]}" "${MG[$idx,2]}"
    echo
    idx=$((idx + 1))
done
echo "# ratio = medusa-c tok/s / llama.cpp tok/s (> 1: medusa-c faster); mean = mean of the two rounds' ratios"
echo "# same text (round 1): prompts whose greedy reply is the same text in both engines; tokens they agree on"
echo "# before parting (llama.cpp's tokens within the common prefix), per file and round:"
idx=0
for f in "${FILES[@]}"; do
    echo "#   $(basename "$f"): round 1 ${SAME[$idx,1]#*:}, round 2 ${SAME[$idx,2]#*:} tokens (llama.cpp's replies, end-of-turn token not counted)"
    idx=$((idx + 1))
done
