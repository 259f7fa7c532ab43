/* RMSNorm: x / sqrt(mean(x^2) + eps) * weight, accumulated in double for a stable reference. */
#include <math.h>
#include <stdlib.h>

#include "../math_common.h"
#include "cpu_ops.h"

static float row_rstd(const float *row, int C, float eps) {
    double ss = 0;
    for (int c = 0; c < C; c++) ss += (double)row[c] * row[c];
    return (float)(1.0 / sqrt(ss / C + eps));
}

void cpu_rmsnorm(float *out, const float *x, const float *weight, int T, int C, float eps) {
/* a few rows (decoding, a tree) are not worth a parallel region: waking the threads costs more than the rows */
#pragma omp parallel for if ((size_t)T * C > PAR_MIN)
    for (int t = 0; t < T; t++) {
        const float *row = x + (size_t)t * C;
        float rstd = row_rstd(row, C, eps), *o = out + (size_t)t * C;
        for (int c = 0; c < C; c++) o[c] = row[c] * rstd * weight[c];
    }
}

void cpu_rmsnorm_bf16(uint16_t *out, const float *x, const float *weight, int T, int C, float eps) {
#pragma omp parallel for if ((size_t)T * C > PAR_MIN)
    for (int t = 0; t < T; t++) {
        const float *row = x + (size_t)t * C;
        float rstd = row_rstd(row, C, eps);
        uint16_t *o = out + (size_t)t * C;
        for (int c = 0; c < C; c++) o[c] = f32_to_bf16(row[c] * rstd * weight[c]);
    }
}

/* head h of row t: q heads first, then k heads (the q/k/v row's layout) */
static float *qk_head(float *qkv, int t, int h, int n_heads, int n_kv_heads, int head_dim) {
    size_t row = (size_t)(n_heads + 2 * n_kv_heads) * head_dim;
    return qkv + (size_t)t * row + (size_t)h * head_dim;
}

void cpu_qk_norm(float *qkv, const float *q_weight, const float *k_weight, int T, int n_heads, int n_kv_heads,
                 int head_dim, float eps) {
    int heads = n_heads + n_kv_heads;
#pragma omp parallel for if ((size_t)T * heads * head_dim > PAR_MIN)
    for (int t = 0; t < T; t++)
        for (int h = 0; h < heads; h++) {
            float *x = qk_head(qkv, t, h, n_heads, n_kv_heads, head_dim);
            const float *w = h < n_heads ? q_weight : k_weight;
            float rstd = row_rstd(x, head_dim, eps);
            for (int c = 0; c < head_dim; c++) x[c] = x[c] * rstd * w[c];
        }
}

void cpu_qk_norm_bf16(uint16_t *qkv, const float *q_weight, const float *k_weight, int T, int n_heads, int n_kv_heads,
                      int head_dim, float eps) {
    size_t n = (size_t)T * (n_heads + 2 * n_kv_heads) * head_dim;
    float *wide = cpu_widened_copy(qkv, n);
    cpu_qk_norm(wide, q_weight, k_weight, T, n_heads, n_kv_heads, head_dim, eps);
    for (size_t i = 0; i < n; i++) qkv[i] = f32_to_bf16(wide[i]);
    free(wide);
}
