/* Scaled dot-product attention over an explicit key range per query (packed causal batches and KV-cache
 * decoding both reduce to this), with grouped-query heads sharing K/V. */
#include <math.h>
#include <stdlib.h>

#include "cpu_ops.h"

void cpu_attention_forward(float *out, const float *q, const float *k, const float *v, const int32_t *key_begin,
                           const int32_t *key_end, const uint8_t *mask, int mask_start, int T, int n_heads,
                           int n_kv_heads, int head_dim) {
    int group = n_heads / n_kv_heads;
    size_t q_stride = (size_t)n_heads * head_dim, kv_stride = (size_t)n_kv_heads * head_dim;
    float scale = 1.0f / sqrtf((float)head_dim);
    int max_keys = 0;
    for (int t = 0; t < T; t++)
        if (key_end[t] - key_begin[t] > max_keys) max_keys = key_end[t] - key_begin[t];
#pragma omp parallel
    {
        float *scores = malloc(sizeof(float) * (size_t)(max_keys > 0 ? max_keys : 1));
#pragma omp for collapse(2) schedule(dynamic, 4)
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < n_heads; h++) {
                const float *qv = q + t * q_stride + (size_t)h * head_dim;
                int kvh = h / group;
                int begin = key_begin[t], n = key_end[t] - begin;
                const uint8_t *mask_row = mask ? mask + (size_t)t * T : NULL;
                float maxs = -INFINITY;
                for (int j = 0; j < n; j++) {
                    if (mask_row && begin + j >= mask_start && !mask_row[begin + j - mask_start]) {
                        scores[j] = -INFINITY; /* not an ancestor in the tree */
                        continue;
                    }
                    const float *kv = k + (size_t)(begin + j) * kv_stride + (size_t)kvh * head_dim;
                    float s = 0;
                    for (int d = 0; d < head_dim; d++) s += qv[d] * kv[d];
                    s *= scale;
                    scores[j] = s;
                    if (s > maxs) maxs = s;
                }
                float sum = 0;
                for (int j = 0; j < n; j++) {
                    scores[j] = scores[j] == -INFINITY ? 0.0f : expf(scores[j] - maxs);
                    sum += scores[j];
                }
                float *o = out + t * q_stride + (size_t)h * head_dim;
                for (int d = 0; d < head_dim; d++) o[d] = 0;
                for (int j = 0; j < n; j++) {
                    const float *vv = v + (size_t)(begin + j) * kv_stride + (size_t)kvh * head_dim;
                    float p = scores[j] / sum;
                    if (p == 0.0f) continue;
                    for (int d = 0; d < head_dim; d++) o[d] += p * vv[d];
                }
            }
        }
        free(scores);
    }
}
