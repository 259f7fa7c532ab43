/* The CUDA backend's op table: device memory through cudart, one cuBLAS handle on the default stream.
 * Every op is asynchronous on the default stream; download() synchronises. */
#include <map>
#include <unordered_map>

#include "cuda_common.cuh"

cublasHandle_t cuda_cublas(void) {
    static cublasHandle_t handle;
    if (!handle) CUBLAS_CHECK(cublasCreate(&handle));
    return handle;
}

/* Caching allocator: cudaFree synchronises the device and cudaMalloc is slow, while the model allocates
 * the same small buffers on every decoding step; freed blocks are kept by size and handed out again.
 * Reuse is safe because all work runs in order on the default stream. */
static std::unordered_map<void *, size_t> live_blocks;
static std::multimap<size_t, void *> cached_blocks;

static void release_cached_blocks(void) {
    for (auto &block : cached_blocks) CUDA_CHECK(cudaFree(block.second));
    cached_blocks.clear();
}

static void *cuda_alloc(size_t bytes) {
    size_t size = (bytes + 511) & ~(size_t)511;
    if (!size) size = 512;
    void *ptr = NULL;
    auto cached = cached_blocks.find(size);
    if (cached != cached_blocks.end()) {
        ptr = cached->second;
        cached_blocks.erase(cached);
    } else if (cudaMalloc(&ptr, size) != cudaSuccess) {
        (void)cudaGetLastError(); /* out of memory: give the cache back and retry once */
        release_cached_blocks();
        CUDA_CHECK(cudaMalloc(&ptr, size));
    }
    live_blocks[ptr] = size;
    return ptr;
}

static void cuda_free(void *ptr) {
    if (!ptr) return;
    auto live = live_blocks.find(ptr);
    if (live == live_blocks.end()) fatal("cuda backend: free of a pointer it did not allocate (or freed twice)");
    cached_blocks.emplace(live->second, ptr);
    live_blocks.erase(live);
}
static void cuda_upload(void *dst, const void *host_src, size_t bytes) {
    CUDA_CHECK(cudaMemcpy(dst, host_src, bytes, cudaMemcpyHostToDevice));
}
static void cuda_download(void *host_dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpy(host_dst, src, bytes, cudaMemcpyDeviceToHost));
}
static void cuda_copy(void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}
static void cuda_fill_zero(void *ptr, size_t bytes) { CUDA_CHECK(cudaMemset(ptr, 0, bytes)); }

extern "C" const Backend *backend_cuda(void) {
    static Backend cuda;
    if (!cuda.name) {
        int devices = 0;
        cudaError_t err = cudaGetDeviceCount(&devices);
        if (err != cudaSuccess || devices == 0)
            fatal("--device cuda: no usable CUDA GPU (%s)", err != cudaSuccess ? cudaGetErrorString(err) : "none found");
        cuda.alloc = cuda_alloc;
        cuda.free = cuda_free;
        cuda.upload = cuda_upload;
        cuda.download = cuda_download;
        cuda.copy = cuda_copy;
        cuda.embedding = cuda_embedding;
        cuda.rmsnorm = cuda_rmsnorm;
        cuda.matmul = cuda_matmul;
        cuda.rope = cuda_rope;
        cuda.attention = cuda_attention;
        cuda.swiglu = cuda_swiglu;
        cuda.residual_add = cuda_residual_add;
        cuda.fill_zero = cuda_fill_zero;
        cuda.matmul_backward = cuda_matmul_backward;
        cuda.resblock_forward = cuda_resblock_forward;
        cuda.silu_backward = cuda_silu_backward;
        cuda.softmax_xent = cuda_softmax_xent;
        cuda.adamw = cuda_adamw;
        cuda.sum_squares = cuda_sum_squares;
        cuda.name = "cuda";
    }
    return &cuda;
}
