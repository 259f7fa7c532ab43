/* Rotary embedding on fp32 or bf16 q and k, Hugging Face half-rotation layout: element j of a head pairs with
 * j + head_dim/2. One thread per (token, pair j, head) over the q heads followed by the k heads. */
#include "cuda_common.cuh"

template <class Elem> /* float, or bf16 widened and rounded back */
__global__ void rope_kernel(Elem *q, Elem *k, const int32_t *pos, int T, int n_heads, int n_kv_heads, int head_dim,
                            float theta) {
    int half = head_dim / 2, heads = n_heads + n_kv_heads;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * heads * half) return;
    int j = (int)(i % half), h = (int)(i / half % heads), t = (int)(i / half / heads);
    /* angle in fp32, as the reference computes it */
    float angle = (float)pos[t] * rope_inv_freq(j, head_dim, theta);
    float c = cosf(angle), s = sinf(angle);
    Elem *v = h < n_heads ? q + ((size_t)t * n_heads + h) * head_dim
                          : k + ((size_t)t * n_kv_heads + (h - n_heads)) * head_dim;
    float a = load_f(&v[j]), b = load_f(&v[j + half]);
    store_out(&v[j], a * c - b * s);
    store_out(&v[j + half], b * c + a * s);
}

template <class Elem>
static void rope(Elem *q, Elem *k, const int32_t *pos, int T, int n_heads, int n_kv_heads, int head_dim, float theta) {
    size_t n = (size_t)T * (n_heads + n_kv_heads) * (head_dim / 2);
    if (n) LAUNCH(rope_kernel<Elem>, ceil_div(n, 256), 256, 0, q, k, pos, T, n_heads, n_kv_heads, head_dim, theta);
}
void cuda_rope(float *q, float *k, const int32_t *pos, int T, int n_heads, int n_kv_heads, int head_dim, float theta) {
    rope(q, k, pos, T, n_heads, n_kv_heads, head_dim, theta);
}
void cuda_rope_bf16(uint16_t *q, uint16_t *k, const int32_t *pos, int T, int n_heads, int n_kv_heads, int head_dim,
                    float theta) {
    rope(q, k, pos, T, n_heads, n_kv_heads, head_dim, theta);
}
