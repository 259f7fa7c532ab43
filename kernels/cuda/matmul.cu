/* Linear layer on cuBLAS (fp32 sgemm). Row-major X[R,C] is column-major X^T, so out = in @ W^T is, in
 * cuBLAS's terms, out^T[OC,T] = W[IC,OC]^T * in^T[IC,T]. */
#include "cuda_common.cuh"

__global__ void add_bias_kernel(float *out, const float *bias, int T, int OC) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)T * OC) out[i] += bias[i % OC];
}

/* dbias[o] += sum_t dout[t,o]: 32 columns per block, 8 row slices summed per column, then combined. */
__global__ void bias_backward_kernel(float *dbias, const float *dout, int T, int OC) {
    __shared__ float partial[8][33];
    int col = blockIdx.x * 32 + threadIdx.x, slice = threadIdx.y;
    float sum = 0.0f;
    if (col < OC)
        for (int t = slice; t < T; t += 8) sum += dout[(size_t)t * OC + col];
    partial[slice][threadIdx.x] = sum;
    __syncthreads();
    if (slice == 0 && col < OC) {
        for (int s = 1; s < 8; s++) sum += partial[s][threadIdx.x];
        dbias[col] += sum;
    }
}

void cuda_matmul(float *out, const float *in, const float *weight, const float *bias, int T, int IC, int OC) {
    const float one = 1.0f, zero = 0.0f;
    if (T == 0 || OC == 0) return;
    CUBLAS_CHECK(cublasSgemm(cuda_cublas(), CUBLAS_OP_T, CUBLAS_OP_N, OC, T, IC, &one, weight, IC, in, IC, &zero, out,
                             OC));
    if (bias) LAUNCH(add_bias_kernel, ceil_div((size_t)T * OC, 256), 256, 0, out, bias, T, OC);
}

void cuda_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *in,
                          const float *weight, int T, int IC, int OC) {
    const float one = 1.0f;
    if (T == 0 || OC == 0) return;
    /* dinp^T[IC,T] += W^T[IC,OC] * dout^T[OC,T] */
    if (dinp)
        CUBLAS_CHECK(cublasSgemm(cuda_cublas(), CUBLAS_OP_N, CUBLAS_OP_N, IC, T, OC, &one, weight, IC, dout, OC, &one,
                                 dinp, IC));
    /* dweight^T[IC,OC] += in^T[IC,T] * dout[T,OC] */
    if (dweight)
        CUBLAS_CHECK(cublasSgemm(cuda_cublas(), CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, T, &one, in, IC, dout, OC, &one,
                                 dweight, IC));
    if (dbias) LAUNCH(bias_backward_kernel, ceil_div(OC, 32), dim3(32, 8), 0, dbias, dout, T, OC);
}
