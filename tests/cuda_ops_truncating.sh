#!/bin/bash
# The emulated CUDA op tests again as a GPU may compute them, with the tolerances the test uses on a real GPU: cuBLASLt's
# bf16 GEMMs summing as tensor cores may, rounding toward zero (CUDA_EMU_GEMM=truncate), the device's math functions
# answering within CUDA's documented ulp errors instead of glibc's (CUDA_EMU_MATH=ulp), and, where the CPU has FMA,
# the kernels built with multiply-adds fused as nvcc fuses them (test_cuda_ops_fma): those tolerances are checked on the
# CPU before a GPU run relies on them. (The demo model's part is left out: its GEMMs are too large for the emulator's
# plain loops.)
TEST=${EMU_TEST_DIR:-build/tests}/test_cuda_ops
if grep -qw fma /proc/cpuinfo 2>/dev/null; then
    TEST=${TEST}_fma
    [ -x "$TEST" ] || { echo "cuda_ops_truncating.sh: this CPU has FMA but $TEST is not built (make $TEST)"; exit 1; }
fi
echo "cuda_ops_truncating.sh: $(basename "$TEST")"
exec env CUDA_EMU_GEMM=truncate CUDA_EMU_MATH=ulp MEDUSA_SMOLLM2_GGUF=none "$TEST" "$@"
