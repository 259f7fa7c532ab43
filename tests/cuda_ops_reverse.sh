#!/bin/bash
# The emulated CUDA op tests again with each block's threads run from the last to the first between barriers
# (CUDA_EMU_ORDER=reverse): a kernel that reads what another thread of its block wrote without a barrier between
# them sees the write in one of the two orders and misses it in the other, so one of the runs fails, as a GPU may.
exec env CUDA_EMU_ORDER=reverse "${EMU_TEST_DIR:-build/tests}/test_cuda_ops" "$@"
