/* bf16-weight ops on the CPU: the reference for the tensor-core GEMMs. Operands are widened (or rounded and
 * widened) to fp32, which is exact for bf16 values, so what differs from a GPU is the order of the fp32 sums
 * and their fusion into FMAs. Weights are widened a block of rows at a time to keep the scratch small. */
#include <cblas.h>
#include <stdlib.h>

#include "../../common/common.h"
#include "cpu_ops.h"

static void widen(float *out, const uint16_t *x, size_t n) {
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = bf16_to_f32(x[i]);
}

/* x rounded to bf16 and widened back: the fp32 value a tensor core sees */
static float *rounded_copy(const float *x, size_t n) {
    float *out = xmalloc(sizeof(float) * (n ? n : 1));
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = bf16_to_f32(f32_to_bf16(x[i]));
    return out;
}

void cpu_to_bf16(uint16_t *out, const float *x, size_t n) {
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = f32_to_bf16(x[i]);
}

void cpu_embedding_bf16(float *out, const int32_t *tokens, const uint16_t *table, int T, int C) {
#pragma omp parallel for if ((size_t)T * C > PAR_MIN)
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c++) out[(size_t)t * C + c] = bf16_to_f32(table[(size_t)tokens[t] * C + c]);
}

/* weight rows widened per block: about 4 MB of fp32 scratch */
static int block_rows(int IC) { return IC >= (1 << 20) ? 1 : (1 << 20) / IC; }

/* out = beta * out + x @ weight^T + bias, x holding bf16 values widened to fp32 */
static void matmul_widened(float *out, const float *x, const uint16_t *weight, const float *bias, int T, int IC, int OC,
                           float beta) {
    int rows = block_rows(IC);
    float *w = xmalloc(sizeof(float) * (size_t)rows * IC);
    for (int o0 = 0; o0 < OC; o0 += rows) {
        int n = OC - o0 < rows ? OC - o0 : rows;
        widen(w, weight + (size_t)o0 * IC, (size_t)n * IC);
        if (T == 1) cblas_sgemv(CblasRowMajor, CblasNoTrans, n, IC, 1.0f, w, IC, x, 1, beta, out + o0, 1);
        else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n, IC, 1.0f, x, IC, w, IC, beta, out + o0, OC);
    }
    free(w);
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
    widen(x, in, (size_t)T * IC);
    matmul_widened(out, x, weight, bias, T, IC, OC, accumulate ? 1.0f : 0.0f);
    free(x);
}

void cpu_matmul_backward_bf16(float *dinp, float *dweight, float *dbias, const float *dout, const float *in,
                              const uint16_t *weight, int T, int IC, int OC) {
    if (T == 0 || OC == 0) return;
    float *g = rounded_copy(dout, (size_t)T * OC);
    if (dinp) {
        int rows = block_rows(IC);
        float *w = xmalloc(sizeof(float) * (size_t)rows * IC);
        for (int o0 = 0; o0 < OC; o0 += rows) { /* dinp += dout[:, block] @ W[block, :] */
            int n = OC - o0 < rows ? OC - o0 : rows;
            widen(w, weight + (size_t)o0 * IC, (size_t)n * IC);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, IC, n, 1.0f, g + o0, OC, w, IC, 1.0f, dinp, IC);
        }
        free(w);
    }
    if (dweight) {
        float *x = rounded_copy(in, (size_t)T * IC);
        cpu_matmul_backward(NULL, dweight, NULL, g, x, NULL, T, IC, OC);
        free(x);
    }
    free(g);
    if (dbias) cpu_matmul_backward(NULL, NULL, dbias, dout, NULL, NULL, T, IC, OC);
}

/* a bf16 array widened into a new fp32 one */
static float *widened_copy(const uint16_t *x, size_t n) {
    float *out = xmalloc(sizeof(float) * (n ? n : 1));
    widen(out, x, n);
    return out;
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

void cpu_rope_qkv_bf16(uint16_t *q, uint16_t *k, uint16_t *v, const uint16_t *qkv, const int32_t *pos, int T,
                       int n_heads, int n_kv_heads, int head_dim, float theta) {
    size_t nq = (size_t)T * n_heads * head_dim, nk = (size_t)T * n_kv_heads * head_dim;
    float *wide = widened_copy(qkv, nq + 2 * nk), *split = xmalloc(sizeof(float) * (nq + 2 * nk));
    cpu_rope_qkv(split, split + nq, split + nq + nk, wide, pos, T, n_heads, n_kv_heads, head_dim, theta);
    cpu_to_bf16(q, split, nq);
    cpu_to_bf16(k, split + nq, nk);
    cpu_to_bf16(v, split + nq + nk, nk); /* exact: widened bf16 values */
    free(wide);
    free(split);
}

void cpu_attention_bf16(uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                        const int32_t *key_begin, const int32_t *key_end, const uint8_t *mask, int row0, int T,
                        int n_heads, int n_kv_heads, int head_dim) {
    size_t n = (size_t)T * n_heads * head_dim, kv_n = (size_t)(row0 + T) * n_kv_heads * head_dim;
    float *wq = widened_copy(q, n), *wk = widened_copy(k, kv_n), *wv = widened_copy(v, kv_n);
    float *exact = xmalloc(sizeof(float) * (n ? n : 1));
    cpu_attention(exact, wq, wk, wv, key_begin, key_end, mask, row0, T, n_heads, n_kv_heads, head_dim);
    cpu_to_bf16(out, exact, n);
    free(exact);
    free(wq);
    free(wk);
    free(wv);
}
