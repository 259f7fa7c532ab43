#!/bin/bash
# The emulated CUDA op tests again with cuBLASLt's bf16 GEMMs summing as a GPU's tensor cores may, rounding toward zero
# (CUDA_EMU_GEMM=truncate), and with the tolerances the test uses on a real GPU: those tolerances are checked on the
# CPU before a GPU run relies on them. (The demo model's part is left out: its GEMMs are too large for the emulator's
# plain loops.)
exec env CUDA_EMU_GEMM=truncate MEDUSA_SMOLLM2_GGUF=none "${EMU_TEST_DIR:-build/tests}/test_cuda_ops" "$@"
