/* Shared by every kernels/cuda .cu file: CUDA and cuBLAS headers (or the emulator's, force-included by the
 * emulated build), error checks that report file:line through fatal(), the launch macro, block reductions,
 * and the op functions the backend table points to. */
#ifndef MEDUSA_CUDA_COMMON_CUH
#define MEDUSA_CUDA_COMMON_CUH

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <initializer_list>
#include <string>

#ifndef MEDUSA_CUDA_EMU /* under emulation tests/cudaemu/cuda_emu.h provides these */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#endif

#include "../math_common.h" /* first, as C++: ops.h includes it again */
extern "C" {
#include "../../common/common.h"
#include "../ops.h"
}

#define CUDA_CHECK(call)                                                                                               \
    do {                                                                                                               \
        cudaError_t err_ = (call);                                                                                     \
        if (err_ != cudaSuccess)                                                                                       \
            fatal_at(__FILE__, __LINE__, "cuda: %s: %s%s", #call, cudaGetErrorString(err_), cuda_capture_hint());      \
    } while (0)

/* The stream every op, GEMM and copy of the backend is queued on, in order: a blocking stream (it keeps its order with
 * the legacy default stream, which synchronous copies use), not the legacy stream itself, which cannot be captured
 * into a CUDA graph. */
cudaStream_t cuda_stream(void);
/* "" or, while a decoding step is being captured into a CUDA graph, a hint for an error message: how to turn graphs
 * off */
const char *cuda_capture_hint(void);

#define CUBLAS_CHECK(call)                                                                                             \
    do {                                                                                                               \
        cublasStatus_t st_ = (call);                                                                                   \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                                                              \
            fatal_at(__FILE__, __LINE__, "cublas: %s: %s%s", #call, cublasGetStatusString(st_), cuda_capture_hint());  \
    } while (0)

/* MEDUSA_CUDA_PROFILE=1 (profile.cu): the GPU time from construction to destruction is added to the named
 * operation's row of the table printed at exit; a GEMM's name carries its shape, its FLOPs give a rate and its bytes
 * (operands of in_bytes per element, the output of out_bytes, read too when accumulating) a bandwidth. */
class ProfileScope {
  public:
    explicit ProfileScope(const char *name);
    ProfileScope(const char *kind, int m, int n, int k, int in_bytes, int out_bytes, bool accumulate);
    ~ProfileScope();

  private:
    bool on_;
    double flops_, bytes_;
    std::string name_;
};

/* whether MEDUSA_CUDA_PROFILE is on, and the FLOPs or bytes to credit to the next profiled operation: a kernel whose
 * work its launch does not show (attention's FLOPs depend on the key ranges; a memory-bound kernel's bytes are its
 * inputs read once and its outputs written once), so the table gives its rate */
bool cuda_profiling(void);
void profile_next_flops(double flops);
void profile_next_bytes(double bytes);

/* MEDUSA_CUDA_SYNC=1: every launch (and GEMM) is followed by a device synchronisation and a check that names it,
 * so that a fault is reported where it happens rather than at the next blocking call. Off by default: the step's
 * kernels then run ahead of the host. */
bool cuda_sync_debug(void);
void cuda_check_after(const char *name);

/* comm.cu: the backend's collectives between processes (Backend.comm_*: NCCL); left NULL in builds without NCCL */
void cuda_comm_setup(Backend *b);
void cuda_set_gemm_tune(int on); /* kernels/cuda/matmul.cu: Backend.set_gemm_tune */

/* `kernel<<<grid, block, shmem>>>(args...)` is not C++, so every launch goes through LAUNCH, which the
 * emulator can run on the CPU; launch errors are checked at once. LAUNCH_AS names the launch for the profile and
 * the emulator's messages (a template kernel's name with its arguments: kernel_name). */
#ifdef MEDUSA_CUDA_EMU
#define LAUNCH_AS(name, kernel, grid, block, shmem, ...)                                                               \
    do {                                                                                                               \
        ProfileScope profile_scope_(name);                                                                             \
        cuda_emu_launch(name, grid, block, shmem, kernel, __VA_ARGS__);                                                \
        CUDA_CHECK(cudaGetLastError());                                                                                \
        if (cuda_sync_debug()) cuda_check_after(name);                                                                 \
    } while (0)
#else
#define LAUNCH_AS(name, kernel, grid, block, shmem, ...)                                                               \
    do {                                                                                                               \
        ProfileScope profile_scope_(name);                                                                             \
        kernel<<<grid, block, shmem, cuda_stream()>>>(__VA_ARGS__);                                                    \
        CUDA_CHECK(cudaGetLastError());                                                                                \
        if (cuda_sync_debug()) cuda_check_after(name);                                                                 \
    } while (0)
#endif
#define LAUNCH(kernel, grid, block, shmem, ...) LAUNCH_AS(#kernel, kernel, grid, block, shmem, __VA_ARGS__)

/* "f32" or "bf16": a kernel's element type in its name */
template <class T> const char *elem_name();
template <> inline const char *elem_name<float>() { return "f32"; }
template <> inline const char *elem_name<uint16_t>() { return "bf16"; }
/* "base<a, b, ...>", e.g. kernel_name("rope_qkv_kernel", {elem_name<Elem>()}); a caller keeps it in a function
 * static, built once */
inline std::string kernel_name(const char *base, std::initializer_list<std::string> args) {
    std::string name = std::string(base) + "<";
    for (const std::string &a : args) name += (name.back() == '<' ? "" : ", ") + a;
    return name + ">";
}

static inline unsigned ceil_div(size_t n, unsigned d) { return (unsigned)((n + d - 1) / d); }
/* A grid over T rows of per_row items: x covers a row in blocks of `threads`, y the rows, which the kernel walks with
 * `for (int t = blockIdx.y; t < T; t += gridDim.y)` past the grid's 65535 limit. Splitting a flat index into (row,
 * column) would cost a 64-bit division per element, more than the memory access it serves. */
static inline dim3 row_grid(int per_row, int T, unsigned threads) {
    return dim3(ceil_div((size_t)per_row, threads), (unsigned)(T < 65535 ? T : 65535));
}

/* --- warp and block reductions (blockDim.x a multiple of 32, at most 1024; every thread must call) --- */
template <class T> __device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}
/* d += a b for one 16x8x16 tile per warp on the tensor cores (mma.sync: bf16 a and b, fp32 d), with the fragments in
 * the PTX ISA's layout for .m16n8k16 (groupID = lane / 4, threadID_in_group = lane % 4; bf16 pairs low half first):
 * - a[r]: row groupID (+8 for r = 1, 3), columns 2 threadID_in_group + {0, 1} (+8 for r = 2, 3);
 * - b[r]: rows 2 threadID_in_group + {0, 1} (+8 for r = 1), column groupID;
 * - d[e]: row groupID (+8 for e = 2, 3), column 2 threadID_in_group + e % 2.
 * Warp-collective: all 32 lanes call it together. The emulator computes the same product from every lane's
 * fragments. */
/* r[i] = this lane's part of the 8x8 bf16 matrix i < 4 in shared memory, whose row j (16 bytes, 16-byte aligned) lane
 * 8i + j points at with `row`: elements (row lane / 4, columns 2 (lane % 4) + {0, 1}) of it, or with trans of its
 * transpose (rows 2 (lane % 4) + {0, 1} of the stored matrix, column lane / 4): the fragments mma takes
 * (ldmatrix.sync.m8n8.x4). Warp-collective. */
/* 16 bytes from global to shared memory (both 16-byte aligned) without passing through registers, or 16 zero bytes
 * when !valid (cp.async, sm_80+). cp_async_commit closes the thread's group of copies issued since the last commit;
 * cp_async_wait_group<N> returns when at most the N most recent groups are still in flight, and other threads see
 * the landed bytes after a __syncthreads that follows it. Until then the destination must not be read, nor the
 * buffer's previous contents still be needed by any thread. */
#ifdef MEDUSA_CUDA_EMU
#define mma_bf16_16x8x16 cuda_emu_mma_bf16_16x8x16
#define ldmatrix_x4 cuda_emu_ldmatrix_x4
#define cp_async16 cuda_emu_cp_async16
#define cp_async_commit cuda_emu_cp_async_commit
#define cp_async_wait_group cuda_emu_cp_async_wait_group
#else
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool valid) {
    uint32_t addr = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait_group() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
/* (the "memory" clobber keeps the compiler from moving shared-memory accesses across the load) */
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const uint16_t *row, bool trans) {
    uint32_t addr = (uint32_t)__cvta_generic_to_shared(row);
    if (trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(addr)
                     : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(addr)
                     : "memory");
}
__device__ __forceinline__ void mma_bf16_16x8x16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

/* an fp32 or bf16 element as fp32, and an fp32 result into an fp32 or bf16 element (kernels templated on their
 * element types) */
__device__ __forceinline__ float load_f(const float *p) { return *p; }
__device__ __forceinline__ float load_f(const uint16_t *p) { return bf16_to_f32(*p); }
__device__ __forceinline__ void store_out(float *p, float v) { *p = v; }
__device__ __forceinline__ void store_out(uint16_t *p, float v) { *p = f32_to_bf16(v); }

/* --- 16-byte vector accesses (one ld/st.global.v4 for 4 fp32 or 8 bf16 values, where a scalar loop issues 4 or 8):
 * the memory-bound kernels' vector paths. The address must be 16-byte aligned (a GPU faults on a misaligned vector
 * access; the emulator reports it), which each kernel's host code checks (aligned16) along with its row lengths,
 * falling back to W = 1 (scalar accesses, any address) where they do not allow it. --- */
#ifdef MEDUSA_CUDA_EMU
#define VEC16_CHECK(p) cuda_emu_check_vector(p)
#else
#define VEC16_CHECK(p) ((void)0)
#endif
__device__ __forceinline__ uint4 ld16(const void *p) {
    VEC16_CHECK(p);
    return *(const uint4 *)p;
}
__device__ __forceinline__ void st16(void *p, uint4 v) {
    VEC16_CHECK(p);
    *(uint4 *)p = v;
}
__device__ __forceinline__ float4 ld16f(const float *p) {
    VEC16_CHECK(p);
    return *(const float4 *)p;
}
__device__ __forceinline__ void st16f(float *p, float4 v) {
    VEC16_CHECK(p);
    *(float4 *)p = v;
}
/* the two bf16 values of a 32-bit word (the lower address in the low half) widened, and two rounded into one */
__device__ __forceinline__ float bf16_lo(uint32_t w) { return bf16_to_f32((uint16_t)(w & 0xffffu)); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return bf16_to_f32((uint16_t)(w >> 16)); }
__device__ __forceinline__ uint32_t bf16x2(float lo, float hi) {
    return (uint32_t)f32_to_bf16(lo) | (uint32_t)f32_to_bf16(hi) << 16;
}

/* W consecutive elements from p as fp32 (load_vec), W fp32 values into them (store_vec: bf16 rounded as store_out
 * rounds), or copied bit for bit (copy_vec): W = 1 any address; else W x the element's size a multiple of 16 bytes,
 * at a 16-byte aligned address. The values are those of load_f and store_out, element by element. */
template <int W> __device__ __forceinline__ void load_vec(const float *p, float (&v)[W]) {
    static_assert(W == 1 || W % 4 == 0, "fp32 vectors: 4 values");
    if constexpr (W == 1) {
        v[0] = *p;
    } else {
        for (int i = 0; i < W; i += 4) {
            float4 r = ld16f(p + i);
            v[i] = r.x, v[i + 1] = r.y, v[i + 2] = r.z, v[i + 3] = r.w;
        }
    }
}
template <int W> __device__ __forceinline__ void load_vec(const uint16_t *p, float (&v)[W]) {
    static_assert(W == 1 || W % 8 == 0, "bf16 vectors: 8 values");
    if constexpr (W == 1) {
        v[0] = bf16_to_f32(*p);
    } else {
        for (int i = 0; i < W; i += 8) {
            uint4 r = ld16(p + i);
            v[i] = bf16_lo(r.x), v[i + 1] = bf16_hi(r.x), v[i + 2] = bf16_lo(r.y), v[i + 3] = bf16_hi(r.y);
            v[i + 4] = bf16_lo(r.z), v[i + 5] = bf16_hi(r.z), v[i + 6] = bf16_lo(r.w), v[i + 7] = bf16_hi(r.w);
        }
    }
}
template <int W> __device__ __forceinline__ void store_vec(float *p, const float (&v)[W]) {
    static_assert(W == 1 || W % 4 == 0, "fp32 vectors: 4 values");
    if constexpr (W == 1) {
        *p = v[0];
    } else {
        for (int i = 0; i < W; i += 4) st16f(p + i, make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]));
    }
}
template <int W> __device__ __forceinline__ void store_vec(uint16_t *p, const float (&v)[W]) {
    static_assert(W == 1 || W % 8 == 0, "bf16 vectors: 8 values");
    if constexpr (W == 1) {
        *p = f32_to_bf16(v[0]);
    } else {
        for (int i = 0; i < W; i += 8)
            st16(p + i, make_uint4(bf16x2(v[i], v[i + 1]), bf16x2(v[i + 2], v[i + 3]), bf16x2(v[i + 4], v[i + 5]),
                                   bf16x2(v[i + 6], v[i + 7])));
    }
}
template <int W, class Elem> __device__ __forceinline__ void copy_vec(Elem *dst, const Elem *src) {
    static_assert(W == 1 || W * sizeof(Elem) % 16 == 0, "16-byte vectors");
    if constexpr (W == 1) {
        *dst = *src;
    } else {
        for (int i = 0; i < W; i += 16 / (int)sizeof(Elem)) st16(dst + i, ld16(src + i));
    }
}
/* the elements per 16-byte vector */
template <class Elem> constexpr int vec_width() { return 16 / (int)sizeof(Elem); }
/* host: whether every pointer is 16-byte aligned (NULL counts as aligned) */
static inline bool aligned16(std::initializer_list<const void *> ptrs) {
    for (const void *p : ptrs)
        if ((uintptr_t)p % 16 != 0) return false;
    return true;
}

/* The block's sum, returned to every thread. `scratch` is __shared__ [32] of the caller. */
template <class T> __device__ __forceinline__ T block_sum(T v, T *scratch) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads(); /* scratch may still be read by a previous reduction */
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : (T)0;
    return warp_sum(v);
}

/* --- the ops (kernels/ops.h semantics), one .cu per family, and helpers shared between the files --- */
cublasHandle_t cuda_cublas(void);
cublasLtHandle_t cuda_cublaslt(void);
/* the ops (kernels/ops.def): cuda_<op> for each op of struct Backend */
#define OP(ret, op, params, args) ret cuda_##op params;
#include "../ops.def"
#undef OP
/* softmax_xent over bf16 logits [T, V] (the heads' GEMM's), with grads their bf16 gradient written over them (else
 * losses and ranks alone) */
void cuda_softmax_xent_bf16(uint16_t *logits, int grads, float *losses, int32_t *ranks, XentTargets targets, int T,
                            int V, float dscale);

#endif
