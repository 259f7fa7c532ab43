/* Linear layer on OpenBLAS: out[T,OC] = in[T,IC] @ W[OC,IC]^T + bias. */
#include <cblas.h>
#include <string.h>

#include "cpu_ops.h"

void cpu_matmul_forward(float *out, const float *in, const float *weight, const float *bias, int T, int IC, int OC) {
    /* one row (decoding): sgemm would repack the whole weight matrix on every call; gemv streams it once */
    if (T == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, OC, IC, 1.0f, weight, IC, in, 1, 0.0f, out, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, OC, IC, 1.0f, in, IC, weight, IC, 0.0f, out, OC);
    if (bias) {
#pragma omp parallel for if ((size_t)T * OC > 65536)
        for (int t = 0; t < T; t++)
            for (int o = 0; o < OC; o++) out[(size_t)t * OC + o] += bias[o];
    }
}

void cpu_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *in,
                         const float *weight, int T, int IC, int OC) {
    if (dinp) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, IC, OC, 1.0f, dout, OC, weight, IC, 1.0f, dinp, IC);
    if (dweight) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, T, 1.0f, dout, OC, in, IC, 1.0f, dweight, IC);
    if (dbias) {
#pragma omp parallel for
        for (int o = 0; o < OC; o++) {
            float sum = 0;
            for (int t = 0; t < T; t++) sum += dout[(size_t)t * OC + o];
            dbias[o] += sum;
        }
    }
}
