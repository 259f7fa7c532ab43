/* Linear layer on OpenBLAS: out[T,OC] = in[T,IC] @ W[OC,IC]^T + bias. */
#include <cblas.h>
#include <string.h>

#include "cpu_ops.h"

void cpu_matmul_forward(float *out, const float *in, const float *weight, const float *bias, int T, int IC, int OC) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, OC, IC, 1.0f, in, IC, weight, IC, 0.0f, out, OC);
    if (bias) {
#pragma omp parallel for
        for (int t = 0; t < T; t++)
            for (int o = 0; o < OC; o++) out[(size_t)t * OC + o] += bias[o];
    }
}
