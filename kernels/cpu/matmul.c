/* Linear layer on OpenBLAS: out[T,OC] = in[T,IC] @ W[OC,IC]^T + bias. */
#include <cblas.h>
#include <omp.h>
#include <string.h>

#include "cpu_ops.h"
#include "simd.h"

/* Decoding and tree verification multiply a few input rows by every weight row: there the weights stream from memory
 * once, in pairs of rows, each pair dotted with up to 4 input rows at a time while it sits in L1, 8 independent vector
 * accumulators (so that the FMA units never wait on one another's results). OpenBLAS sgemm first repacks the whole
 * weight matrix, and its gemv reached a third of this bandwidth on the 49k-row lm_head. Beyond SMALL_ROWS rows sgemm's
 * cache blocking wins (measured on SmolLM2's shapes, 2 cores, weights from DRAM: bench/matmul_rows_cpu_vm.txt).
 * Compiled for AVX2 with FMA and for baseline x86-64 (simd.h). */
#define SMALL_ROWS 24

/* out[t, o + r] for r < R weight rows and t0 <= t < t0 + N input rows (R <= 2, N <= 4, constants once inlined) */
static ALWAYS_INLINE void dot_block(float *out, const float *in, const float *weight, int IC, int OC, int o, int R,
                                    int t0, int N) {
    const float *w[2] = {weight + (size_t)o * IC, weight + (size_t)(o + R - 1) * IC};
    const float *x[4];
    for (int t = 0; t < 4; t++) x[t] = in + (size_t)(t0 + (t < N ? t : 0)) * IC;
    Vec8 acc[2][4];
    memset(acc, 0, sizeof acc);
    int i = 0;
    for (; i + 8 <= IC; i += 8) {
        Vec8 wv[2];
#pragma GCC unroll 2
        for (int r = 0; r < R; r++) {
            /* the next pair of weight rows, from DRAM, while this one is in use: the hardware prefetcher alone left
             * the loop waiting on its loads once it had more than one input row to multiply */
            __builtin_prefetch(w[r] + i + 2 * (size_t)IC);
            wv[r] = vec8_load(w[r] + i);
        }
#pragma GCC unroll 4
        for (int t = 0; t < N; t++) {
            Vec8 xv = vec8_load(x[t] + i);
#pragma GCC unroll 2
            for (int r = 0; r < R; r++) acc[r][t] += wv[r] * xv;
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < N; t++) {
            float sum = vec8_sum(acc[r][t]);
            for (int j = i; j < IC; j++) sum += w[r][j] * x[t][j];
            out[(size_t)(t0 + t) * OC + o + r] = sum;
        }
}

/* dot_block with a literal input-row count, so that each case inlines into a kernel with its accumulators in
 * registers (R is a literal at both call sites) */
static ALWAYS_INLINE void dot_rows(float *out, const float *in, const float *weight, int IC, int OC, int o, int R,
                                   int t0, int N) {
    switch (N) {
    case 4:
        dot_block(out, in, weight, IC, OC, o, R, t0, 4);
        break;
    case 3:
        dot_block(out, in, weight, IC, OC, o, R, t0, 3);
        break;
    case 2:
        dot_block(out, in, weight, IC, OC, o, R, t0, 2);
        break;
    default:
        dot_block(out, in, weight, IC, OC, o, R, t0, 1);
    }
}

/* out[t, o] for all T input rows and weight rows o0 <= o < o1 */
static ALWAYS_INLINE void rows_few(float *out, const float *in, const float *weight, int T, int IC, int OC, int o0,
                                   int o1) {
    for (int o = o0; o < o1; o += 2)
        for (int t0 = 0; t0 < T; t0 += 4) {
            int n = T - t0 < 4 ? T - t0 : 4;
            if (o + 1 < o1) dot_rows(out, in, weight, IC, OC, o, 2, t0, n);
            else dot_rows(out, in, weight, IC, OC, o, 1, t0, n); /* the last row of an odd count */
        }
}

SIMD_AVX2_FMA static void rows_few_avx2(float *out, const float *in, const float *weight, int T, int IC, int OC, int o0,
                                        int o1) {
    rows_few(out, in, weight, T, IC, OC, o0, o1);
}
static void rows_few_baseline(float *out, const float *in, const float *weight, int T, int IC, int OC, int o0, int o1) {
    rows_few(out, in, weight, T, IC, OC, o0, o1);
}

void cpu_matmul(float *out, const float *in, const float *weight, const float *bias, int T, int IC, int OC) {
    if (T <= SMALL_ROWS) {
#pragma omp parallel if ((size_t)OC * IC > 65536)
        {
            /* each thread an even share of the weight rows */
            int n = omp_get_num_threads(), id = omp_get_thread_num(), pairs = (OC + 1) / 2;
            int o0 = 2 * (int)((int64_t)pairs * id / n), o1 = 2 * (int)((int64_t)pairs * (id + 1) / n);
            (simd_avx2_fma() ? rows_few_avx2 : rows_few_baseline)(out, in, weight, T, IC, OC, o0, o1 < OC ? o1 : OC);
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
