/* The fused q/k/v projection's rows split into q, k and v, with the rotary embedding on q and k (fp32 or bf16 rows;
 * Hugging Face half-rotation layout: element j of a head pairs with j + head_dim/2). One thread per (token, head,
 * rotated pair) over the q heads followed by the k heads, then one per element of v. */
#include "cuda_common.cuh"

template <class Elem> /* float, or bf16 widened and rounded back */
__global__ void rope_qkv_kernel(Elem *q, Elem *k, Elem *v, const Elem *qkv, const int32_t *pos, int T, int n_heads,
                                int n_kv_heads, int head_dim, float theta) {
    int half = head_dim / 2, heads = n_heads + n_kv_heads;
    size_t q_dim = (size_t)n_heads * head_dim, kv_dim = (size_t)n_kv_heads * head_dim, row = q_dim + 2 * kv_dim;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x, rotations = (size_t)T * heads * half;
    if (i >= rotations) { /* v: copied */
        size_t e = i - rotations;
        if (e < (size_t)T * kv_dim) v[e] = qkv[e / kv_dim * row + q_dim + kv_dim + e % kv_dim];
        return;
    }
    int j = (int)(i % half), h = (int)(i / half % heads), t = (int)(i / half / heads);
    /* angle in fp32, as the reference computes it */
    float angle = (float)pos[t] * rope_inv_freq(j, head_dim, theta);
    float c = cosf(angle), s = sinf(angle);
    const Elem *in = qkv + (size_t)t * row + (size_t)h * head_dim; /* the k heads follow the q heads in a row */
    Elem *out = h < n_heads ? q + (size_t)t * q_dim + (size_t)h * head_dim
                            : k + (size_t)t * kv_dim + (size_t)(h - n_heads) * head_dim;
    float a = load_f(&in[j]), b = load_f(&in[j + half]);
    store_out(&out[j], a * c - b * s);
    store_out(&out[j + half], b * c + a * s);
}

template <class Elem>
static void rope_qkv(Elem *q, Elem *k, Elem *v, const Elem *qkv, const int32_t *pos, int T, int n_heads, int n_kv_heads,
                     int head_dim, float theta) {
    size_t n = (size_t)T * ((n_heads + n_kv_heads) * (head_dim / 2) + n_kv_heads * head_dim);
    if (n)
        LAUNCH(rope_qkv_kernel<Elem>, ceil_div(n, 256), 256, 0, q, k, v, qkv, pos, T, n_heads, n_kv_heads, head_dim,
               theta);
}
void cuda_rope_qkv(float *q, float *k, float *v, const float *qkv, const int32_t *pos, int T, int n_heads,
                   int n_kv_heads, int head_dim, float theta) {
    rope_qkv(q, k, v, qkv, pos, T, n_heads, n_kv_heads, head_dim, theta);
}
void cuda_rope_qkv_bf16(uint16_t *q, uint16_t *k, uint16_t *v, const uint16_t *qkv, const int32_t *pos, int T,
                        int n_heads, int n_kv_heads, int head_dim, float theta) {
    rope_qkv(q, k, v, qkv, pos, T, n_heads, n_kv_heads, head_dim, theta);
}
