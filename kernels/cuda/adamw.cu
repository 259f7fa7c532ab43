/* AdamW (one thread per parameter, the update shared with the CPU in math_common.h, and its bf16 copy) and the sum of
 * squares for the global gradient norm (double per thread, block reduction, per-block partials summed on
 * the host in a fixed order, so the result is deterministic). */
#include "cuda_common.cuh"

__global__ void adamw_kernel(float *param, uint16_t *param_bf16, const float *grad, float *m, float *v, size_t n,
                             AdamWStep step) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    adamw_update(&param[i], grad[i], &m[i], &v[i], &step);
    if (param_bf16) param_bf16[i] = f32_to_bf16(param[i]);
}

void cuda_adamw(float *param, uint16_t *param_bf16, const float *grad, float *m, float *v, size_t n,
                const AdamWStep *step) {
    if (n == 0) return;
    /* param, grad, m, v read; param, m, v (and the bf16 copy) written */
    profile_next_bytes((param_bf16 ? 30.0 : 28.0) * n);
    LAUNCH(adamw_kernel, ceil_div(n, 256), 256, 0, param, param_bf16, grad, m, v, n, *step);
}

static const unsigned kSumBlocks = 256, kSumThreads = 512;

__global__ void sum_squares_kernel(double *partials, const float *x, size_t n) {
    __shared__ double scratch[32];
    double sum = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        sum += (double)x[i] * x[i];
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

double cuda_sum_squares(const float *x, size_t n) {
    static double *partials; /* from the backend's arena, like every buffer: no cudaMalloc in the step loop */
    if (!partials) partials = (double *)backend_cuda()->alloc(sizeof(double) * kSumBlocks);
    if (n == 0) return 0.0;
    unsigned blocks = ceil_div(n, kSumThreads) < kSumBlocks ? ceil_div(n, kSumThreads) : kSumBlocks;
    profile_next_bytes(4.0 * n);
    LAUNCH(sum_squares_kernel, blocks, kSumThreads, 0, partials, x, n);
    double host[kSumBlocks], sum = 0.0;
    backend_cuda()->download(host, partials, sizeof(double) * blocks); /* counted with the other downloads */
    for (unsigned b = 0; b < blocks; b++) sum += host[b];
    return sum;
}
