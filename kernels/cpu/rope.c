/* Rotary position embedding, Hugging Face layout: element j of a head pairs with element j + head_dim/2; on fp32 and
 * on bf16 rows. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/common.h"
#include "../math_common.h"
#include "cpu_ops.h"

static void rotate_heads(float *x, int n_heads, int head_dim, const float *cos_t, const float *sin_t) {
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        for (int j = 0; j < half; j++) {
            float a = v[j], b = v[j + half];
            v[j] = a * cos_t[j] - b * sin_t[j];
            v[j + half] = b * cos_t[j] + a * sin_t[j];
        }
    }
}

/* q and k rotated in place at positions pos */
static void rotate_qk(float *q, float *k, const int32_t *pos, int T, int n_heads, int n_kv_heads, int head_dim,
                      const float *inv_freq) {
    int half = head_dim / 2;
#pragma omp parallel if ((size_t)T * (n_heads + n_kv_heads) * head_dim > PAR_MIN)
    {
        float cos_t[512], sin_t[512]; /* head_dim <= 1024 */
#pragma omp for
        for (int t = 0; t < T; t++) {
            for (int j = 0; j < half; j++) {
                /* angle in fp32 as the reference computes it, cos/sin of that angle */
                float angle = (float)pos[t] * inv_freq[j];
                cos_t[j] = cosf(angle);
                sin_t[j] = sinf(angle);
            }
            rotate_heads(q + (size_t)t * n_heads * head_dim, n_heads, head_dim, cos_t, sin_t);
            rotate_heads(k + (size_t)t * n_kv_heads * head_dim, n_kv_heads, head_dim, cos_t, sin_t);
        }
    }
}

void cpu_rope_qkv(float *q, float *k, float *v, const float *qkv, const int32_t *pos, int T, int n_heads,
                  int n_kv_heads, int head_dim, const float *inv_freq) {
    size_t q_dim = (size_t)n_heads * head_dim, kv_dim = (size_t)n_kv_heads * head_dim, row = q_dim + 2 * kv_dim;
#pragma omp parallel for if ((size_t)T * row > PAR_MIN)
    for (int t = 0; t < T; t++) {
        const float *r = qkv + (size_t)t * row;
        memcpy(q + (size_t)t * q_dim, r, sizeof(float) * q_dim);
        memcpy(k + (size_t)t * kv_dim, r + q_dim, sizeof(float) * kv_dim);
        memcpy(v + (size_t)t * kv_dim, r + q_dim + kv_dim, sizeof(float) * kv_dim);
    }
    rotate_qk(q, k, pos, T, n_heads, n_kv_heads, head_dim, inv_freq);
}

void cpu_rope_qkv_bf16(uint16_t *q, uint16_t *k, uint16_t *v, const uint16_t *qkv, const int32_t *pos, int T,
                       int n_heads, int n_kv_heads, int head_dim, const float *inv_freq) {
    size_t nq = (size_t)T * n_heads * head_dim, nk = (size_t)T * n_kv_heads * head_dim;
    float *wide = cpu_widened_copy(qkv, nq + 2 * nk), *split = xmalloc(sizeof(float) * (nq + 2 * nk));
    cpu_rope_qkv(split, split + nq, split + nq + nk, wide, pos, T, n_heads, n_kv_heads, head_dim, inv_freq);
    cpu_to_bf16(q, split, nq);
    cpu_to_bf16(k, split + nq, nk);
    cpu_to_bf16(v, split + nq + nk, nk); /* exact: widened bf16 values */
    free(wide);
    free(split);
}
