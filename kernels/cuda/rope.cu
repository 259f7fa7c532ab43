/* Rotary embedding, Hugging Face half-rotation layout: element j of a head pairs with j + head_dim/2.
 * One thread per (token, pair j, head) over the q heads followed by the k heads. */
#include "cuda_common.cuh"

__global__ void rope_kernel(float *q, float *k, const int32_t *pos, int T, int n_heads, int n_kv_heads, int head_dim,
                            float theta) {
    int half = head_dim / 2, heads = n_heads + n_kv_heads;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * heads * half) return;
    int j = (int)(i % half), h = (int)(i / half % heads), t = (int)(i / half / heads);
    /* angle in fp32, as the reference computes it */
    float angle = (float)pos[t] * rope_inv_freq(j, head_dim, theta);
    float c = cosf(angle), s = sinf(angle);
    float *v = h < n_heads ? q + ((size_t)t * n_heads + h) * head_dim
                           : k + ((size_t)t * n_kv_heads + (h - n_heads)) * head_dim;
    float a = v[j], b = v[j + half];
    v[j] = a * c - b * s;
    v[j + half] = b * c + a * s;
}

void cuda_rope(float *q, float *k, const int32_t *pos, int T, int n_heads, int n_kv_heads, int head_dim, float theta) {
    size_t n = (size_t)T * (n_heads + n_kv_heads) * (head_dim / 2);
    if (n) LAUNCH(rope_kernel, ceil_div(n, 256), 256, 0, q, k, pos, T, n_heads, n_kv_heads, head_dim, theta);
}
