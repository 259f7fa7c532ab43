#!/bin/bash
# Packs what tests/gpu/device_check.sh needs on a GPU machine that has the CUDA toolkit and Python but no
# Debian packages and no network: the binaries built here with nvcc (bin/medusa-*, the GPU op test,
# bench_train) and the shared libraries they load beyond glibc, libstdc++ and CUDA (HDF5, cJSON, PCRE2,
# OpenBLAS and what they need), into .devpack/kit.tar.xz (git-ignored, about 15 MB), to carry there.
#   tests/gpu/pack.sh          the nvcc-built binaries, for a GPU
#   tests/gpu/pack.sh --emu    the emulated binaries (build/emu), for a dry run of device_check.sh on the CPU
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${1:-}" = --emu ]; then
    make -s build/emu/medusa-data build/emu/medusa-train build/emu/medusa-eval build/emu/medusa-infer \
        build/tests/test_cuda_ops build/emu/bench/bench_train
    BINS=(build/emu/medusa-data build/emu/medusa-train build/emu/medusa-eval build/emu/medusa-infer)
    TEST=build/tests/test_cuda_ops BENCH=build/emu/bench/bench_train
else
    command -v nvcc >/dev/null || { echo "pack.sh: nvcc not found: the CUDA backend cannot be built" >&2; exit 1; }
    make -s all build/tests/test_cuda_ops_gpu build/bench/bench_train
    BINS=(bin/medusa-data bin/medusa-train bin/medusa-eval bin/medusa-infer)
    TEST=build/tests/test_cuda_ops_gpu BENCH=build/bench/bench_train
fi
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/medusa-pack.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
KIT=$STAGE/kit
mkdir -p "$KIT/real" "$KIT/lib"
cp "${BINS[@]}" "$KIT/real/"
cp "$TEST" "$KIT/real/test_cuda_ops"
cp "$BENCH" "$KIT/real/bench_train"
strip --strip-debug "$KIT"/real/*
# the libraries ldd resolves, but for those every Linux with CUDA has (glibc, the compiler's C++ runtime)
# and CUDA's own, which must come from the GPU machine's toolkit and driver
ldd "$KIT"/real/* | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u | while read -r lib; do
    case $(basename "$lib") in
        libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | libresolv.so* | ld-linux*) ;;
        libstdc++.so* | libgcc_s.so*) ;;
        libcuda.so* | libcudart.so* | libcublas.so* | libcublasLt.so* | libnccl.so*) ;; # NCCL: 200 MB, the toolkit's
        *) cp -L "$lib" "$KIT/lib/" ;;
    esac
done
git rev-parse HEAD >"$KIT/commit" 2>/dev/null || true
mkdir -p .devpack
tar -C "$STAGE" -cJf .devpack/kit.tar.xz kit
echo "pack.sh: .devpack/kit.tar.xz ($(du -h .devpack/kit.tar.xz | cut -f1); $(ls "$KIT/lib" | wc -l) libraries)"
