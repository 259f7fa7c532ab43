/* The CUDA backend's op table: device memory through cudart, one cuBLAS handle on the default stream.
 * Every op is asynchronous on the default stream; download() synchronises. */
#include "cuda_common.cuh"

cublasHandle_t cuda_cublas(void) {
    static cublasHandle_t handle;
    if (!handle) CUBLAS_CHECK(cublasCreate(&handle));
    return handle;
}

static void *cuda_alloc(size_t bytes) {
    void *ptr = NULL;
    CUDA_CHECK(cudaMalloc(&ptr, bytes));
    return ptr;
}
static void cuda_free(void *ptr) { CUDA_CHECK(cudaFree(ptr)); }
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
