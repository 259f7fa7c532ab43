/* Linear layer on OpenBLAS: out[T,OC] = in[T,IC] @ W[OC,IC]^T + bias; its backward; the same on bf16 weights, and the
 * heads' classifier on them (as kernels/cuda/matmul.cu). */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/common.h"
#include "cpu_ops.h"
#include "simd.h"

/* Decoding and tree verification multiply a few input rows by every weight row: there the weights stream from memory
 * once, in pairs of rows, each pair dotted with up to 4 input rows at a time while it sits in L1, 8 independent vector
 * accumulators (so that the FMA units never wait on one another's results). OpenBLAS sgemm first repacks the whole
 * weight matrix, and its gemv reached a third of this bandwidth on the 49k-row lm_head. Beyond CPU_SMALL_ROWS rows
 * sgemm's cache blocking wins (measured on SmolLM2's shapes, 2 cores, weights from DRAM: bench/matmul_rows_cpu_vm.txt).
 * Compiled for AVX2 with FMA and for baseline x86-64 (simd.h). */

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
    if (T <= CPU_SMALL_ROWS) {
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

/* --- bf16 weights: the reference for the tensor-core GEMMs. Operands are widened (or rounded and widened) to fp32,
 * which is exact for bf16 values, so what differs from a GPU is the order of the fp32 sums and their fusion into
 * FMAs. Weights are widened a block of rows at a time to keep the scratch small. (Only conversions, OpenBLAS calls and
 * additions: this file's -ffp-contract=fast has no product to fuse in them.) --- */

/* x rounded to bf16 and widened back: the fp32 value a tensor core sees */
static float *rounded_copy(const float *x, size_t n) {
    float *out = xmalloc(sizeof(float) * (n ? n : 1));
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = bf16_to_f32(f32_to_bf16(x[i]));
    return out;
}

/* weight rows widened per block: about 4 MB of fp32 scratch */
static int block_rows(int IC) { return IC >= (1 << 20) ? 1 : (1 << 20) / IC; }

void cpu_matmul_widened(float *out, int ldo, const float *x, const void *weight, DType type, int T, int IC, int OC,
                        float beta) {
    int rows = block_rows(IC);
    float *w = xmalloc(sizeof(float) * (size_t)(rows < OC ? rows : OC) * IC);
    for (int o0 = 0; o0 < OC; o0 += rows) {
        int n = OC - o0 < rows ? OC - o0 : rows;
        cpu_widen_rows(w, weight, type, o0, n, IC);
        if (T == 1) cblas_sgemv(CblasRowMajor, CblasNoTrans, n, IC, 1.0f, w, IC, x, 1, beta, out + o0, 1);
        else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n, IC, 1.0f, x, IC, w, IC, beta, out + o0, ldo);
    }
    free(w);
}

/* out = beta * out + x @ weight^T + bias, x holding bf16 values widened to fp32 */
static void matmul_widened(float *out, const float *x, const uint16_t *weight, const float *bias, int T, int IC, int OC,
                           float beta) {
    cpu_matmul_widened(out, OC, x, weight, DT_BF16, T, IC, OC, beta);
    if (bias) {
#pragma omp parallel for if ((size_t)T * OC > PAR_MIN)
        for (int t = 0; t < T; t++)
            for (int o = 0; o < OC; o++) out[(size_t)t * OC + o] += bias[o];
    }
}

void cpu_matmul_bf16(float *out, const float *in, const uint16_t *weight, const float *bias, int T, int IC, int OC) {
    if (T == 0 || OC == 0) return;
    float *x = rounded_copy(in, (size_t)T * IC);
    matmul_widened(out, x, weight, bias, T, IC, OC, 0.0f);
    free(x);
}

void cpu_matmul_bf16_in(float *out, const uint16_t *in, const uint16_t *weight, const float *bias, int T, int IC,
                        int OC, int accumulate) {
    if (T == 0 || OC == 0) return;
    float *x = xmalloc(sizeof(float) * (size_t)T * IC);
    cpu_widen(x, in, (size_t)T * IC);
    matmul_widened(out, x, weight, bias, T, IC, OC, accumulate ? 1.0f : 0.0f);
    free(x);
}

/* dinp += g @ W and dweight += g^T @ x on widened bf16 operands g [T, OC], x [T, IC] (fp32 arrays of bf16 values) */
static void backward_widened(float *dinp, float *dweight, const float *g, const float *x, const uint16_t *weight, int T,
                             int IC, int OC) {
    if (dinp) {
        int rows = block_rows(IC);
        float *w = xmalloc(sizeof(float) * (size_t)rows * IC);
        for (int o0 = 0; o0 < OC; o0 += rows) { /* dinp += g[:, block] @ W[block, :] */
            int n = OC - o0 < rows ? OC - o0 : rows;
            cpu_widen(w, weight + (size_t)o0 * IC, (size_t)n * IC);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, IC, n, 1.0f, g + o0, OC, w, IC, 1.0f, dinp, IC);
        }
        free(w);
    }
    if (dweight) cpu_matmul_backward(NULL, dweight, NULL, g, x, NULL, T, IC, OC);
}

/* bf16 values widened into a new fp32 array (NULL for NULL) */
static float *widened_copy(const uint16_t *x, size_t n) {
    if (!x) return NULL;
    float *out = xmalloc(sizeof(float) * (n ? n : 1));
    cpu_widen(out, x, n);
    return out;
}

void cpu_matmul_backward_bf16(float *dinp, float *dweight, float *dbias, const float *dout, const uint16_t *dout_bf16,
                              const uint16_t *in_bf16, const uint16_t *weight, int T, int IC, int OC) {
    if (T == 0 || OC == 0) return;
    if (dinp || dweight) {
        float *g = widened_copy(dout_bf16, (size_t)T * OC), *x = dweight ? widened_copy(in_bf16, (size_t)T * IC) : NULL;
        backward_widened(dinp, dweight, g, x, weight, T, IC, OC);
        free(g);
        free(x);
    }
    if (dbias) cpu_matmul_backward(NULL, NULL, dbias, dout, NULL, NULL, T, IC, OC);
}

void cpu_matmul_bf16_out(uint16_t *out, const uint16_t *in, const uint16_t *weight, const float *bias, int T, int IC,
                         int OC) {
    if (T == 0 || OC == 0) return;
    size_t n = (size_t)T * OC;
    float *product = xmalloc(sizeof(float) * n);
    cpu_matmul_bf16_in(product, in, weight, NULL, T, IC, OC, 0);
    if (bias) {
#pragma omp parallel for if (n > PAR_MIN)
        for (size_t i = 0; i < n; i++) product[i] = bf16_to_f32(f32_to_bf16(product[i])) + bias[i % (size_t)OC];
    }
    cpu_to_bf16(out, product, n);
    free(product);
}

/* the reference composition: the bf16 GEMM's logits rounded, softmax_xent in place on them, its gradient rounded and
 * the two gradient GEMMs */
void cpu_classifier_bf16(float *logits, float *losses, int32_t *ranks, XentTargets targets, const uint16_t *x,
                         const uint16_t *weight, float *dx, float *dweight, int rows, int IC, int V, float dscale) {
    if (rows == 0) return;
    size_t n = (size_t)rows * V;
    float *xw = widened_copy(x, (size_t)rows * IC);
    matmul_widened(logits, xw, weight, NULL, rows, IC, V, 0.0f);
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) logits[i] = bf16_to_f32(f32_to_bf16(logits[i]));
    cpu_softmax_xent(logits, losses, ranks, targets, rows, V, dscale);
    if (dx || dweight) {
#pragma omp parallel for if (n > PAR_MIN)
        for (size_t i = 0; i < n; i++) logits[i] = bf16_to_f32(f32_to_bf16(logits[i]));
        backward_widened(dx, dweight, logits, xw, weight, rows, IC, V);
    }
    free(xw);
}
