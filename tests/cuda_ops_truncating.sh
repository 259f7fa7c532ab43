#!/bin/bash
# The emulated CUDA op tests again as a GPU may compute them, with the tolerances the test uses on a real GPU: cuBLASLt's
# bf16 GEMMs summing as tensor cores may, rounding toward zero (CUDA_EMU_GEMM=truncate), and the device's math
# functions answering within CUDA's documented ulp errors instead of glibc's (CUDA_EMU_MATH=ulp): those tolerances are
# checked on the CPU before a GPU run relies on them. (The demo model's part is left out: its GEMMs are too large for
# the emulator's plain loops.)
exec env CUDA_EMU_GEMM=truncate CUDA_EMU_MATH=ulp MEDUSA_SMOLLM2_GGUF=none "${EMU_TEST_DIR:-build/tests}/test_cuda_ops" "$@"
