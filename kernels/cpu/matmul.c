/* Linear layer on OpenBLAS: out[T,OC] = in[T,IC] @ W[OC,IC]^T + bias. */
#include <cblas.h>
#include <omp.h>
#include <string.h>

#include "cpu_ops.h"

/* Measured on SmolLM2's shapes (2 cores, weights from DRAM): up to 4 rows, streaming one weight row at a
 * time is fastest; up to 32 the register-blocked kernel beats OpenBLAS sgemm, which first repacks the
 * whole weight matrix; beyond, sgemm's cache blocking wins. Both kernels are compiled for AVX-512, AVX2
 * and baseline x86-64, picked at load time. */
#define STREAMING_ROWS 4
#define FEW_ROWS 32
#define MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))

/* out[t, o] for input rows t < T and weight rows o0 <= o < o1, one weight row at a time: it is read
 * once, while it is in L1, and dotted with every input row. */
MULTIVERSION
static void rows_streaming(float *out, const float *in, const float *weight, int T, int IC, int OC, int o0, int o1) {
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

/* The same with more rows, where the arithmetic dominates: 4 weight rows x 4 input rows per pass, 16
 * independent accumulators, so that the FMA units do not wait on one another. */
MULTIVERSION
static void rows_blocked(float *out, const float *in, const float *weight, int T, int IC, int OC, int o0, int o1) {
    int o = o0;
    for (; o + 4 <= o1; o += 4) {
        const float *w0 = weight + (size_t)o * IC, *w1 = w0 + IC, *w2 = w1 + IC, *w3 = w2 + IC;
        int t = 0;
        for (; t + 4 <= T; t += 4) {
            const float *x0 = in + (size_t)t * IC, *x1 = x0 + IC, *x2 = x1 + IC, *x3 = x2 + IC;
            float a00 = 0, a01 = 0, a02 = 0, a03 = 0, a10 = 0, a11 = 0, a12 = 0, a13 = 0;
            float a20 = 0, a21 = 0, a22 = 0, a23 = 0, a30 = 0, a31 = 0, a32 = 0, a33 = 0;
#pragma omp simd reduction(+ : a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33)
            for (int i = 0; i < IC; i++) {
                float y0 = x0[i], y1 = x1[i], y2 = x2[i], y3 = x3[i];
                a00 += w0[i] * y0, a01 += w0[i] * y1, a02 += w0[i] * y2, a03 += w0[i] * y3;
                a10 += w1[i] * y0, a11 += w1[i] * y1, a12 += w1[i] * y2, a13 += w1[i] * y3;
                a20 += w2[i] * y0, a21 += w2[i] * y1, a22 += w2[i] * y2, a23 += w2[i] * y3;
                a30 += w3[i] * y0, a31 += w3[i] * y1, a32 += w3[i] * y2, a33 += w3[i] * y3;
            }
            float *r = out + (size_t)t * OC + o;
            r[0] = a00, r[1] = a10, r[2] = a20, r[3] = a30, r += OC;
            r[0] = a01, r[1] = a11, r[2] = a21, r[3] = a31, r += OC;
            r[0] = a02, r[1] = a12, r[2] = a22, r[3] = a32, r += OC;
            r[0] = a03, r[1] = a13, r[2] = a23, r[3] = a33;
        }
        if (t < T) rows_streaming(out + (size_t)t * OC, in + (size_t)t * IC, weight, T - t, IC, OC, o, o + 4);
    }
    if (o < o1) rows_streaming(out, in, weight, T, IC, OC, o, o1);
}

void cpu_matmul_forward(float *out, const float *in, const float *weight, const float *bias, int T, int IC, int OC) {
    if (T <= FEW_ROWS) {
        /* decoding and tree verification: the weights stream from memory once, where sgemm first repacks
         * them all; OpenBLAS's gemv reached a third of this bandwidth on the 49k-row lm_head */
#pragma omp parallel if ((size_t)OC * IC > 65536)
        {
            int n = omp_get_num_threads(), id = omp_get_thread_num();
            int o0 = (int)((int64_t)OC * id / n), o1 = (int)((int64_t)OC * (id + 1) / n);
            if (T <= STREAMING_ROWS) rows_streaming(out, in, weight, T, IC, OC, o0, o1);
            else rows_blocked(out, in, weight, T, IC, OC, o0, o1);
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
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, IC, OC, 1.0f, dout, OC, weight, IC, 1.0f, dinp, IC);
    if (dweight)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, T, 1.0f, dout, OC, in, IC, 1.0f, dweight, IC);
    if (dbias) {
#pragma omp parallel for
        for (int o = 0; o < OC; o++) {
            float sum = 0;
            for (int t = 0; t < T; t++) sum += dout[(size_t)t * OC + o];
            dbias[o] += sum;
        }
    }
}
