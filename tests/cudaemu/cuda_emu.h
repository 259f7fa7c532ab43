/* CUDA emulation: compiles the real kernels/cuda .cu files as C++ on the CPU (g++ -x c++ -include cuda_emu.h).
 * A launch runs the grid's blocks one after another; the threads of a block are fibers (ucontext) that
 * switch only at __syncthreads, __syncwarp and warp shuffles, so `__shared__` (a function static here) is
 * shared by exactly one block's threads; it is NaN at each block's start (cuda_emu.cpp finds a kernel's arrays by
 * their symbols). Atomics are plain read-modify-writes (one OS thread runs it all).
 * The emulator is strict where hardware is undefined: a barrier not reached by every thread of the block,
 * a shuffle with exited lanes, or a bad launch configuration is reported instead of silently passing.
 * cudart calls map to host memory; cublasSgemm maps to OpenBLAS's column-major cblas_sgemm, and cuBLASLt's
 * bf16 matmul to the same after widening its bf16 operands (exact). */
#ifndef MEDUSA_CUDA_EMU_H
#define MEDUSA_CUDA_EMU_H

#ifndef __cplusplus
#error "cuda_emu.h emulates CUDA C++: compile the .cu files with g++ -x c++"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define MEDUSA_CUDA_EMU 1

#define __global__
#define __grid_constant__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
/* set by the scheduler before it resumes a thread's fiber */
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
static const int warpSize = 32;

/* --- synchronisation (the asm memory clobber keeps shared values from being cached across a switch) --- */
void cuda_emu_syncthreads(void);
void cuda_emu_syncwarp(void);
#define __syncthreads()                                                                                                \
    do {                                                                                                               \
        cuda_emu_syncthreads();                                                                                        \
        __asm__ __volatile__("" ::: "memory");                                                                         \
    } while (0)
#define __syncwarp(...)                                                                                                \
    do {                                                                                                               \
        cuda_emu_syncwarp();                                                                                           \
        __asm__ __volatile__("" ::: "memory");                                                                         \
    } while (0)

/* This thread's lane and the warp's exchange buffer (32 slots of 8 bytes) for the next shuffle. */
uint64_t *cuda_emu_shuffle_slots(int *lane);

template <class T> static inline T cuda_emu_shuffle(T var, int src_lane, bool keep_own) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    int lane;
    uint64_t *slots = cuda_emu_shuffle_slots(&lane);
    memcpy(&slots[lane], &var, sizeof(T));
    cuda_emu_syncwarp();
    if (keep_own) return var;
    T out;
    memcpy(&out, &slots[src_lane], sizeof(T));
    return out;
}
static inline int cuda_emu_lane(void) {
    unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    return (int)(tid % 32u);
}
template <class T> static inline T __shfl_xor_sync(unsigned, T var, int lane_mask, int width = 32) {
    int lane = cuda_emu_lane();
    return cuda_emu_shuffle(var, (lane ^ lane_mask) % width + lane / width * width, false);
}
template <class T> static inline T __shfl_down_sync(unsigned, T var, unsigned delta, int width = 32) {
    int lane = cuda_emu_lane();
    int src = lane % width + (int)delta;
    return cuda_emu_shuffle(var, lane + (int)delta, src >= width);
}
template <class T> static inline T __shfl_sync(unsigned, T var, int src_lane, int width = 32) {
    int lane = cuda_emu_lane();
    return cuda_emu_shuffle(var, src_lane % width + lane / width * width, false);
}

/* --- atomics: threads never run concurrently, so a plain update is atomic --- */
template <class T> static inline T atomicAdd(T *address, T val) {
    T old = *address;
    *address = old + val;
    return old;
}
template <class T> static inline T atomicMax(T *address, T val) {
    T old = *address;
    if (val > old) *address = val;
    return old;
}

/* --- math: device code has integer min/max overloads --- */
using std::max;
using std::min;
/* CUDA_EMU_MATH=ulp: inside a kernel, the functions whose CUDA versions are not correctly rounded answer up to their
 * documented maximum error away from glibc's (CUDA C Programming Guide, "Standard Functions", single precision: expf,
 * exp2f, sinf, cosf, tanhf, rsqrtf 2 ulp, logf and log2f 1, powf 8), by a number of ulps drawn from the arguments, so a
 * kernel whose results hang on the last bits of one (an angle from a device powf at position 2048) fails its
 * tolerances here as it could on a GPU. Exact answers (0, 1, infinities, NaN) stay exact; host code is unaffected. */
float cuda_emu_device_math(float correct, int max_ulps, float x, float y);
static inline float cuda_emu_expf(float x) { return cuda_emu_device_math((expf)(x), 2, x, 0.0f); }
static inline float cuda_emu_exp2f(float x) { return cuda_emu_device_math((exp2f)(x), 2, x, 0.0f); }
static inline float cuda_emu_sinf(float x) { return cuda_emu_device_math((sinf)(x), 2, x, 0.0f); }
static inline float cuda_emu_cosf(float x) { return cuda_emu_device_math((cosf)(x), 2, x, 0.0f); }
static inline float cuda_emu_tanhf(float x) { return cuda_emu_device_math((tanhf)(x), 2, x, 0.0f); }
static inline float cuda_emu_logf(float x) { return cuda_emu_device_math((logf)(x), 1, x, 0.0f); }
static inline float cuda_emu_log2f(float x) { return cuda_emu_device_math((log2f)(x), 1, x, 0.0f); }
static inline float cuda_emu_powf(float x, float y) { return cuda_emu_device_math((powf)(x, y), 8, x, y); }
static inline float rsqrtf(float x) { return cuda_emu_device_math(1.0f / sqrtf(x), 2, x, 0.0f); }
#define expf(x) cuda_emu_expf(x)
#define exp2f(x) cuda_emu_exp2f(x)
#define sinf(x) cuda_emu_sinf(x)
#define cosf(x) cuda_emu_cosf(x)
#define tanhf(x) cuda_emu_tanhf(x)
#define logf(x) cuda_emu_logf(x)
#define log2f(x) cuda_emu_log2f(x)
#define powf(x, y) cuda_emu_powf(x, y)
static inline float __fdividef(float a, float b) { return a / b; }
static inline int __float_as_int(float x) {
    int i;
    memcpy(&i, &x, 4);
    return i;
}
static inline float __int_as_float(int i) {
    float x;
    memcpy(&x, &i, 4);
    return x;
}

/* --- warp matrix multiply-accumulate: mma.sync.m16n8k16 with bf16 operands and fp32 accumulation, the fragments
 * in the PTX ISA's layout (kernels/cuda/cuda_common.cuh's mma_bf16_16x8x16). Warp-collective: it starts with a warp
 * barrier, so a lane that skips it is reported, and every lane reads the others' fragments after all have arrived. */
#define __align__(n) __attribute__((aligned(n)))
/* CUDA's 16-byte vector types (16-byte aligned, as nvcc's); kernels/cuda/cuda_common.cuh's ld16/st16 move them, and
 * report an address not 16-byte aligned (a GPU faults on a misaligned vector access) through this check */
struct __align__(16) float4 {
    float x, y, z, w;
};
struct __align__(16) uint4 {
    unsigned x, y, z, w;
};
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
void cuda_emu_check_vector(const void *p);
void cuda_emu_mma_bf16_16x8x16(float d[4], const uint32_t a[4], const uint32_t b[2]);
/* ldmatrix.sync.m8n8.x4 (kernels/cuda/cuda_common.cuh's ldmatrix_x4): every lane posts its row address, then reads
 * its elements from the rows the others posted; a row not 16-byte aligned is reported */
void cuda_emu_ldmatrix_x4(uint32_t r[4], const uint16_t *row, bool trans);
/* cp.async with commit groups: a copy's destination holds NaN bytes from its issue until the thread waits for its
 * group (cp.async.wait_group N: every group but the N most recent committed lands), so a kernel that reads a tile
 * before waiting, or overwrites one that another warp still reads, computes NaN; a thread that ends with copies
 * pending is reported */
void cuda_emu_cp_async16(void *smem, const void *gmem, bool valid);
void cuda_emu_cp_async_commit(void);
void cuda_emu_cp_async_wait_pending(int n);
template <int N> void cuda_emu_cp_async_wait_group(void) { cuda_emu_cp_async_wait_pending(N); }

/* --- cudart --- */
typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorIllegalState = 401,
    cudaErrorNotReady = 600,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorGraphExecUpdateFailure = 910,
} cudaError_t;
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};
typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;

cudaError_t cudaMalloc(void **ptr, size_t bytes);
template <class T> static inline cudaError_t cudaMalloc(T **ptr, size_t bytes) {
    return cudaMalloc((void **)ptr, bytes);
}
cudaError_t cudaFree(void *ptr);
/* pinned host memory: host memory here */
cudaError_t cudaMallocHost(void **ptr, size_t bytes);
template <class T> static inline cudaError_t cudaMallocHost(T **ptr, size_t bytes) {
    return cudaMallocHost((void **)ptr, bytes);
}
cudaError_t cudaFreeHost(void *ptr);
/* A sub-allocator's block of `size` bytes handed out for `bytes` (0: freed): filled with NaN bytes; under
 * AddressSanitizer all but the first `bytes` poisoned (cudaMalloc and cudaFree do the same for their blocks) */
void cuda_emu_mark_block(void *ptr, size_t bytes, size_t size);
/* free: the reserved address space not handed out (the emulated "GPU" has 256 GiB); total: all of it */
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
/* cudaMalloc calls so far, failed ones included: tests check that a step loop makes none */
extern "C" long cuda_emu_malloc_calls(void);
/* 1 under CUDA_EMU_GEMM=truncate: cuBLASLt's bf16 GEMMs round toward zero as they sum, as tensor cores may */
extern "C" int cuda_emu_gemm_truncates(void);
/* 0: device memory stays accessible to host code (a large model's test would spend minutes in mprotect) */
extern "C" void cuda_emu_guard_device_memory(int on);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream = 0);
cudaError_t cudaMemset(void *ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream = 0);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaGetDeviceCount(int *count);
struct cudaDeviceProp {
    char name[256];
};
/* the emulated device's name: "CUDA emulator on the CPU" (no peak rate, so no MFU) */
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaSetDevice(int device);
/* Streams and events: the backend's stream (cudaStreamCreate) runs every operation when it is issued, so it is always
 * idle. A stream made with cudaStreamNonBlocking holds its copies and memsets (kernels always run on the backend's
 * stream) and runs them as late as CUDA may: when another stream waits for an event recorded behind them
 * (cudaStreamWaitEvent), when the host waits for it, or at cudaStreamSynchronize, cudaDeviceSynchronize, cudaFree and
 * cudaFreeHost. Work that reads what such a copy writes without waiting for it reads the bytes from before the copy,
 * as it may on a GPU. Overlap itself is not emulated, only the calls that order it. */
cudaError_t cudaStreamCreate(cudaStream_t *stream);
#define cudaStreamNonBlocking 0x01
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags = 0);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaEventCreate(cudaEvent_t *event);
#define cudaEventDisableTiming 0x02
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t err);

/* --- stream capture and graphs (CUDA graphs) ---
 * Between cudaStreamBeginCapture and cudaStreamEndCapture the stream-ordered calls (launches, cuBLAS and cuBLASLt
 * GEMMs, cudaMemcpyAsync, cudaMemsetAsync, event records) are recorded instead of run, with their arguments as
 * issued; cudaGraphLaunch runs an instantiated graph's operations in order. The calls a capture forbids (a synchronous
 * copy or memset, cudaMalloc, cudaFree, a device, stream or event synchronisation) fail with
 * cudaErrorStreamCaptureUnsupported and invalidate the capture, as CUDA does, so that misuse fails in the tests.
 * cudaGraphExecUpdate succeeds when the graphs have the same operations by kind (kernel, copy, memset, event),
 * as CUDA's topology check does. CUDA_EMU_GRAPH_INVALIDATE=1: every capture ends invalidated (a fallback's test). */
typedef struct CUgraph_st *cudaGraph_t;
typedef struct CUgraphExec_st *cudaGraphExec_t;
typedef struct CUgraphNode_st *cudaGraphNode_t;
enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2
};
enum cudaGraphExecUpdateResult { cudaGraphExecUpdateSuccess = 0, cudaGraphExecUpdateErrorTopologyChanged = 2 };
typedef struct {
    enum cudaGraphExecUpdateResult result;
    cudaGraphNode_t errorNode, errorFromNode;
} cudaGraphExecUpdateResultInfo;
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph, cudaGraphExecUpdateResultInfo *info);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
/* a stream-ordered operation of `kind` (0 kernel, 1 copy, 2 memset, 3 event): run now, or recorded when capturing */
void cuda_emu_enqueue(int kind, std::function<void()> op);

/* --- kernel launch: LAUNCH(kernel, grid, block, shmem, args...) expands to this under emulation --- */
/* kernel: the function's address, by which the emulator finds its __shared__ arrays (NaN at each block's start) */
void cuda_emu_run(const char *kernel_name, const void *kernel, dim3 grid, dim3 block, size_t shmem,
                  const std::function<void()> &body);

template <class... P, class... A>
static inline void cuda_emu_launch(const char *kernel_name, dim3 grid, dim3 block, size_t shmem, void (*kernel)(P...),
                                   A &&...args) {
    std::tuple<P...> params(std::forward<A>(args)...); /* converted once, as a real launch copies them */
    cuda_emu_enqueue(0, [=] {
        cuda_emu_run(kernel_name, (const void *)kernel, grid, block, shmem, [&] { std::apply(kernel, params); });
    });
}

/* --- cuBLAS (the calls the backend uses) --- */
typedef struct cublasContext *cublasHandle_t;
typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;

cublasStatus_t cublasCreate(cublasHandle_t *handle);
cublasStatus_t cublasDestroy(cublasHandle_t handle);
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream);
const char *cublasGetStatusString(cublasStatus_t status);
cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                           const float *beta, float *C, int ldc);

/* --- cuBLASLt: the bf16 GEMM the backend uses (bf16 A/B, fp32 C/D, fp32 compute), on OpenBLAS --- */
typedef enum { CUDA_R_32F = 0, CUDA_R_16BF = 14 } cudaDataType;
typedef enum { CUBLAS_COMPUTE_32F = 68 } cublasComputeType_t;
typedef enum { CUBLASLT_MATMUL_DESC_TRANSA = 3, CUBLASLT_MATMUL_DESC_TRANSB = 4 } cublasLtMatmulDescAttributes_t;
typedef enum {
    CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8
} cublasLtMatmulPreferenceAttributes_t;
typedef struct cublasLtContext *cublasLtHandle_t;
typedef struct cublasLtMatmulDescOpaque *cublasLtMatmulDesc_t;
typedef struct cublasLtMatrixLayoutOpaque *cublasLtMatrixLayout_t;
typedef struct cublasLtMatmulPreferenceOpaque *cublasLtMatmulPreference_t;
typedef struct {
    uint64_t data[8];
} cublasLtMatmulAlgo_t;
typedef struct {
    cublasLtMatmulAlgo_t algo;
    size_t workspaceSize;
    cublasStatus_t state;
    float wavesCount;
    int reserved[4];
} cublasLtMatmulHeuristicResult_t;

cublasStatus_t cublasLtCreate(cublasLtHandle_t *handle);
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *desc, cublasComputeType_t compute, cudaDataType scale);
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t size);
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc);
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld);
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout);
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref);
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t size);
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref);
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t *results, int *returned);
cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t a, const void *B, cublasLtMatrixLayout_t b, const void *beta,
                              const void *C, cublasLtMatrixLayout_t c, void *D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspace_bytes,
                              cudaStream_t stream);

#endif
