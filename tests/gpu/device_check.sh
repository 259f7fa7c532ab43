#!/bin/bash
# Every GPU check in one command, for a GPU machine lent for a few minutes (carry .devpack, made by
# tests/gpu/pack.sh): the CUDA op test on the GPU, the training benchmark (tokens/s, MFU; heads-only steps on cached
# hidden states with and without the next batch's upload overlapped) beside the PyTorch reference step on a
# random-weight model of a real shape (bench/make_random_model.py: the machine reaches no network
# to fetch a real one), then the end-to-end test (train, eval, greedy-lossless decoding, each against the CPU) on the
# GPU. Last, in the time left of TIME_LIMIT seconds (the device run's limit less the transfers),
# compute-sanitizer's racecheck (shared-memory hazards between a block's threads, which the emulator sees only in
# the orders it runs them) and memcheck (invalid and misaligned accesses) on the op test. No part runs past
# TIME_LIMIT: a part that would is cut short (its output says so), one with under 30 s left is not run. Each part's
# output goes to $OUT/*.txt as well (8 files at most: what the device tool brings back).
#   SHAPE=llama-2-7b BATCH_TOKENS=16384 STEPS=5 TIME_LIMIT=540 tests/gpu/device_check.sh
#   DRYRUN=1: the scripts on the CPU (tests/gpu/pack.sh --emu first; tiny model, PyTorch on the CPU)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-/tmp/medusa-device-out}
SHAPE=${SHAPE:-llama-2-7b}
TIME_LIMIT=${TIME_LIMIT:-$([ -n "${DRYRUN:-}" ] && echo 3600 || echo 540)}
mkdir -p "$OUT"
KIT=$(mktemp -d "${TMPDIR:-/tmp}/medusa-kit.XXXXXX")
tar -C "$KIT" -xJf .devpack/kit.tar.xz || { echo "device_check.sh: no .devpack/kit.tar.xz (run tests/gpu/pack.sh)"; exit 1; }
KIT=$KIT/kit
CUDA_LIB=""
if command -v nvcc >/dev/null; then CUDA_LIB=$(dirname "$(dirname "$(command -v nvcc)")")/lib64; fi
# the kit's libraries for its binaries alone (wrappers in $KIT/bin): Python there keeps its own zlib and OpenSSL
LIBS=$KIT/lib${CUDA_LIB:+:$CUDA_LIB}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# CUDA's libraries come from the machine: beside nvcc or in the binaries' run path (/usr/local/cuda/lib64), else
# wherever it keeps them (PyTorch's wheels, say)
for lib in $(LD_LIBRARY_PATH=$LIBS ldd "$KIT"/real/* 2>/dev/null | awk '/not found/ {print $1}' | sort -u); do
    dir=$(find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o -name "$lib" -printf '%h\n' 2>/dev/null | head -1)
    if [ -n "$dir" ]; then LIBS=$LIBS:$dir; where="found in $dir"; else where="not found on this machine"; fi
    echo "device_check.sh: $lib (needed by the kit): $where"
done
mkdir -p "$KIT/bin"
for f in "$KIT"/real/*; do
    printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec "%s" "$@"\n' "$LIBS" "$f" >"$KIT/bin/${f##*/}"
    chmod +x "$KIT/bin/${f##*/}"
done
export OMP_WAIT_POLICY=passive
echo "kit built from commit $(cat "$KIT/commit" 2>/dev/null), checkout at $(git rev-parse HEAD 2>/dev/null)" | tee "$OUT/summary.txt"
if [ -z "${DRYRUN:-}" ]; then
    nvidia-smi | tee -a "$OUT/summary.txt"
    export MEDUSA_SMOLLM2_GGUF=${MEDUSA_SMOLLM2_GGUF:-none} # the demo model cannot travel (94 MB)
fi
status=0
part() { # NAME SECONDS CMD...: runs CMD for at most SECONDS, and no later than TIME_LIMIT less 15 s (a slow part must
    # not take the whole lease, nor the outputs with it), output to $OUT/NAME.txt, its last line to the summary
    local name=$1 limit=$2
    shift 2
    local left=$((TIME_LIMIT - SECONDS - 15))
    if [ "$left" -lt 30 ]; then
        status=1
        echo "$name: not run, $((TIME_LIMIT - SECONDS)) s left of TIME_LIMIT=$TIME_LIMIT" | tee -a "$OUT/summary.txt"
        return
    fi
    [ "$limit" -le "$left" ] || limit=$left
    local t0=$SECONDS
    local rc=0
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        status=1
        echo "(exit status $rc$([ "$rc" -eq 124 ] && echo ": stopped after $limit s"))" >>"$OUT/$name.txt"
    fi
    echo "$name ($((SECONDS - t0)) s): $(tail -1 "$OUT/$name.txt")" | tee -a "$OUT/summary.txt"
}
# (emulated in a dry run, the op test takes about 70 s of a quiet 2-core CPU) after the per-kernel timings of its op
# table (--perf: time per call and GFLOP/s or GB/s of every row, model-sized rows included; at most 90 s; a dry run times
# the small rows only), so that the file's last line is the test's
part test_cuda_ops "$([ -n "${DRYRUN:-}" ] && echo 400 || echo 210)" sh -c 'timeout 90 "$1" --perf $2; exec "$1"' sh \
    "$KIT/bin/test_cuda_ops" "$([ -n "${DRYRUN:-}" ] && echo --small)"
grep -E "FAIL|max (abs|rel)" "$OUT/test_cuda_ops.txt" | grep FAIL | head -20
if ! grep -q "^[0-9]* passed, 0 failed" "$OUT/test_cuda_ops.txt"; then
    # again with every launch synchronised and checked, so that a fault is reported at the kernel that made it
    part test_cuda_ops_sync 120 env CUDA_LAUNCH_BLOCKING=1 MEDUSA_CUDA_SYNC=1 "$KIT/bin/test_cuda_ops"
fi

MODEL_DIR=${MODEL_DIR:-/tmp/medusa-random-$SHAPE}
if [ ! -s "$MODEL_DIR/model.safetensors" ] || [ ! -s "$MODEL_DIR/prompts.json" ]; then
    part random_model 150 python3 bench/make_random_model.py --shape "$SHAPE" --out "$MODEL_DIR" \
        --tokens "${RANDOM_TOKENS:-400000}"
fi
if [ -n "${DRYRUN:-}" ]; then BENCH_ENV=(TORCH_DEVICE=cpu STEPS=2 BATCH_TOKENS=512 MAX_NEW=16); else BENCH_ENV=(); fi
# decoding: heads from 2 training steps, token-id prompts (the random model has no tokenizer); acceptance is
# chance, so the part reports what a plain and a tree step cost
part bench_gpu 420 env MODEL="$MODEL_DIR" DATA="$MODEL_DIR/bench" BIN_DIR="$KIT/bin" BENCH_TRAIN="$KIT/bin/bench_train" \
    PYTHON=python3 HEAD_STEPS=2 PROMPTS="$MODEL_DIR/prompts.json" OUT="$OUT/gpu_bench_$SHAPE.txt" \
    DECODE_NOTE="random weights and heads: acceptance is chance level, so the speedup here is not Medusa's; the step costs are" \
    "${BENCH_ENV[@]}" bench/bench_gpu.sh
# the end-to-end test after the benchmark: were the lease to end early, the numbers the op test cannot give come first
part e2e_cuda 200 tests/e2e_cuda.sh "$KIT/bin"
SANITIZER=$(command -v compute-sanitizer || echo "${CUDA_LIB:+$(dirname "$CUDA_LIB")/bin/compute-sanitizer}")
if [ -z "${DRYRUN:-}" ] && [ -x "${SANITIZER:-}" ]; then
    for tool in racecheck memcheck; do
        left=$((TIME_LIMIT - SECONDS - 15))
        if [ "$left" -lt 60 ]; then
            echo "sanitizer_$tool: skipped, $((TIME_LIMIT - SECONDS)) s left" | tee -a "$OUT/summary.txt"
            continue
        fi
        before=$status
        part "sanitizer_$tool" "$left" "$SANITIZER" --tool "$tool" --target-processes all --error-exitcode 1 \
            "$KIT/bin/test_cuda_ops" # (the wrapper execs the binary)
        # a sandbox that hides the GPU from the sanitizer (gVisor: "Device not supported") leaves this part undone,
        # not failed
        if grep -q "Device not supported" "$OUT/sanitizer_$tool.txt"; then
            status=$before
            echo "sanitizer_$tool: compute-sanitizer cannot reach the GPU on this machine; not run" | tee -a "$OUT/summary.txt"
            break
        fi
    done
fi
echo "device_check.sh: $( [ $status -eq 0 ] && echo all parts passed || echo SOME PARTS FAILED ); outputs in $OUT" | tee -a "$OUT/summary.txt"
exit $status
