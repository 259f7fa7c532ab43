#!/bin/bash
# The end-to-end test on the emulated binaries again, with everything a GPU may do differently changed: each block's
# threads, and each launch's blocks, run last to first (CUDA_EMU_ORDER=reverse, as tests/cuda_ops_reverse.sh does for
# the op tests), cuBLASLt's bf16 GEMMs sum as tensor cores may, rounding toward zero (CUDA_EMU_GEMM=truncate), and the
# device's math functions answer within CUDA's documented ulp errors (CUDA_EMU_MATH=ulp). The pipeline's results
# (training against the CPU, KV-cache decoding, tree verification, greedy Medusa == plain greedy) must hold either way.
exec env CUDA_EMU_ORDER=reverse CUDA_EMU_GEMM=truncate CUDA_EMU_MATH=ulp "$(dirname "$0")/e2e_cuda.sh" "$@"
