/* Linear layer on OpenBLAS: out[T,OC] = in[T,IC] @ W[OC,IC]^T + bias. */
#include <cblas.h>
#include <omp.h>
#include <string.h>

#include "cpu_ops.h"

/* A few input rows against weight rows [o0, o1): each weight row is read once, while it is in L1, and
 * dotted with every input row. Compiled for AVX-512, AVX2 and baseline x86-64, picked at load time. */
__attribute__((target_clones("avx512f", "avx2", "default")))
static void matmul_rows(float *out, const float *in, const float *weight, int T, int IC, int OC, int o0, int o1) {
    for (int o = o0; o < o1; o++) {
        const float *w = weight + (size_t)o * IC;
        int t = 0;
        for (; t + 2 <= T; t += 2) {
            const float *x0 = in + (size_t)t * IC, *x1 = x0 + IC;
            float a0 = 0, a1 = 0;
#pragma omp simd reduction(+ : a0, a1)
            for (int i = 0; i < IC; i++) {
                a0 += w[i] * x0[i];
                a1 += w[i] * x1[i];
            }
            out[(size_t)t * OC + o] = a0;
            out[(size_t)(t + 1) * OC + o] = a1;
        }
        for (; t < T; t++) {
            const float *x = in + (size_t)t * IC;
            float a = 0;
#pragma omp simd reduction(+ : a)
            for (int i = 0; i < IC; i++) a += w[i] * x[i];
            out[(size_t)t * OC + o] = a;
        }
    }
}

/* Up to this many rows the streaming kernel beat OpenBLAS sgemm on SmolLM2's shapes (2 cores, weights
 * from DRAM); beyond, sgemm's blocking wins. */
#define FEW_ROWS 12

void cpu_matmul_forward(float *out, const float *in, const float *weight, const float *bias, int T, int IC, int OC) {
    if (T <= FEW_ROWS) {
        /* decoding and tree verification: the weights stream from memory once, where sgemm first repacks
         * them all; OpenBLAS's gemv reached a third of this bandwidth on the 49k-row lm_head */
#pragma omp parallel if ((size_t)OC * IC > 65536)
        {
            int n = omp_get_num_threads(), id = omp_get_thread_num();
            matmul_rows(out, in, weight, T, IC, OC, (int)((int64_t)OC * id / n), (int)((int64_t)OC * (id + 1) / n));
        }
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, OC, IC, 1.0f, in, IC, weight, IC, 0.0f, out, OC);
    }
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
