/* AdamW (one thread per parameter, the update shared with the CPU in math_common.h, and its bf16 copy) and the sum of
 * squares for the global gradient norm (double per thread, block reduction, then the per-block partials summed by one
 * thread in a fixed order, so the result is deterministic). The sum stays on the device: AdamW reads it there and
 * computes the clipping coefficient per thread, so that an optimizer step needs no copy to the host. */
#include "cuda_common.cuh"

__global__ void adamw_kernel(float *param, uint16_t *param_bf16, float *grad, float *m, float *v, size_t n,
                             AdamWStep step, const double *grad_sum_squares) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    if (grad_sum_squares) {
        double norm = sqrt(*grad_sum_squares);
        if (!isfinite(norm)) return; /* nothing applied: the host reports the norm */
        step.grad_scale = clip_factor(norm, step.max_grad_norm);
    }
    adamw_update(&param[i], grad[i], &m[i], &v[i], &step);
    grad[i] = 0.0f;
    if (param_bf16) param_bf16[i] = f32_to_bf16(param[i]);
}

void cuda_adamw(float *param, uint16_t *param_bf16, float *grad, float *m, float *v, size_t n, const AdamWStep *step,
                const double *grad_sum_squares) {
    if (n == 0) return;
    /* param, grad, m, v read; param, grad (zeroed), m, v (and the bf16 copy) written */
    profile_next_bytes((param_bf16 ? 34.0 : 32.0) * n);
    LAUNCH(adamw_kernel, ceil_div(n, 256), 256, 0, param, param_bf16, grad, m, v, n, *step, grad_sum_squares);
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

/* the partials in block order, as the host summed them */
__global__ void sum_partials_kernel(double *sum, const double *partials, unsigned blocks) {
    double total = 0.0;
    for (unsigned b = 0; b < blocks; b++) total += partials[b];
    *sum = total;
}

void cuda_sum_squares(double *sum, const float *x, size_t n) {
    static double *partials; /* from the backend's arena, like every buffer: no cudaMalloc in the step loop */
    if (!partials) partials = (double *)backend_cuda()->alloc(sizeof(double) * kSumBlocks);
    if (n == 0) {
        cuda_fill_zero(sum, sizeof(double));
        return;
    }
    unsigned blocks = ceil_div(n, kSumThreads) < kSumBlocks ? ceil_div(n, kSumThreads) : kSumBlocks;
    profile_next_bytes(4.0 * n);
    LAUNCH(sum_squares_kernel, blocks, kSumThreads, 0, partials, x, n);
    profile_next_bytes(8.0 * (blocks + 1));
    LAUNCH(sum_partials_kernel, 1, 1, 0, sum, partials, blocks);
}
