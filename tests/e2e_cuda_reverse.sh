#!/bin/bash
# The end-to-end test on the emulated binaries again with each block's threads, and each launch's blocks, run
# last to first (CUDA_EMU_ORDER=reverse, as tests/cuda_ops_reverse.sh does for the op tests): the whole pipeline
# (training, KV-cache decoding, tree verification, kept rows) must not depend on the order a GPU runs them in.
exec env CUDA_EMU_ORDER=reverse "$(dirname "$0")/e2e_cuda.sh" "$@"
