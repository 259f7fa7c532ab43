/* RMSNorm: one block per row; the sum of squares is a block reduction. */
#include "cuda_common.cuh"

__global__ void rmsnorm_kernel(float *out, const float *x, const float *weight, int C, float eps) {
    __shared__ float scratch[32];
    const float *row = x + (size_t)blockIdx.x * C;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += row[c] * row[c];
    ss = block_sum(ss, scratch);
    float rstd = rsqrtf(ss / (float)C + eps);
    float *o = out + (size_t)blockIdx.x * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = row[c] * rstd * weight[c];
}

void cuda_rmsnorm(float *out, const float *x, const float *weight, int T, int C, float eps) {
    if (T > 0) LAUNCH(rmsnorm_kernel, T, 256, 0, out, x, weight, C, eps);
}
