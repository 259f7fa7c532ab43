/* RMSNorm: one block per row; the sum of squares is a block reduction. The bf16 variant writes the same
 * values rounded, as the input of the bf16 GEMMs that follow. */
#include "cuda_common.cuh"

template <class Out> __global__ void rmsnorm_kernel(Out *out, const float *x, const float *weight, int C, float eps) {
    __shared__ float scratch[32];
    const float *row = x + (size_t)blockIdx.x * C;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += row[c] * row[c];
    ss = block_sum(ss, scratch);
    float rstd = rsqrtf(ss / (float)C + eps);
    Out *o = out + (size_t)blockIdx.x * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) store_out(&o[c], row[c] * rstd * weight[c]);
}

void cuda_rmsnorm(float *out, const float *x, const float *weight, int T, int C, float eps) {
    if (T == 0) return;
    profile_next_bytes(8.0 * T * C + 4.0 * C);
    LAUNCH(rmsnorm_kernel<float>, T, 256, 0, out, x, weight, C, eps);
}
void cuda_rmsnorm_bf16(uint16_t *out, const float *x, const float *weight, int T, int C, float eps) {
    if (T == 0) return;
    profile_next_bytes(6.0 * T * C + 4.0 * C);
    LAUNCH(rmsnorm_kernel<uint16_t>, T, 256, 0, out, x, weight, C, eps);
}
