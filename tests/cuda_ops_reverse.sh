#!/bin/bash
# The emulated CUDA op tests again with each block's threads run from the last to the first between barriers,
# and each launch's blocks last to first (CUDA_EMU_ORDER=reverse): a kernel that reads what another thread of its
# block wrote without a barrier between them, or what another block of the launch writes, sees the write in one of
# the two orders and misses it in the other, so one of the runs fails, as a GPU may. The run also refuses every
# GEMM's first cuBLASLt algorithm (CUDA_EMU_LT_REFUSE_FIRST=1), so that the fallback to the next is what computes.
exec env CUDA_EMU_ORDER=reverse CUDA_EMU_LT_REFUSE_FIRST=1 "${EMU_TEST_DIR:-build/tests}/test_cuda_ops" "$@"
