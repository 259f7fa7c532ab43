/* The q/k/v GEMM's rows split into q, k and v, with the rotary embedding on q and k (fp32 or bf16 rows; Hugging
 * Face half-rotation layout: element j of a head pairs with j + head_dim/2). Per token (grid y), one thread per
 * (head, rotated pair) over the q heads followed by the k heads, then one per element of v. */
#include "cuda_common.cuh"

/* The rotary frequencies of a head's pairs, the model's host table (computed there as the reference computes them: the
 * device's powf is not correctly rounded, and an ulp of a frequency moves the angle at position 2048 by 1e-4). Passed
 * by value (512 bytes of kernel parameters, read in place: __grid_constant__). */
enum { ROPE_MAX_PAIRS = 128 };
struct RopeFreqs {
    float f[ROPE_MAX_PAIRS];
};

template <class Elem> /* float, or bf16 widened and rounded back */
__global__ void rope_qkv_kernel(Elem *q, Elem *k, Elem *v, const Elem *qkv, const int32_t *pos, int T, int n_heads,
                                int n_kv_heads, int head_dim, const __grid_constant__ RopeFreqs freqs) {
    int half = head_dim / 2, q_dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim;
    int rotations = (n_heads + n_kv_heads) * half, w = blockIdx.x * blockDim.x + threadIdx.x;
    if (w >= rotations + kv_dim) return;
    int j = w % half, h = w / half; /* for a rotation */
    /* the angle in fp32, as the reference computes it */
    float angle_step = w < rotations ? freqs.f[j] : 0.0f;
    for (int t = blockIdx.y; t < T; t += gridDim.y) {
        const Elem *row = qkv + (size_t)t * (q_dim + 2 * kv_dim);
        if (w >= rotations) { /* v: copied */
            int c = w - rotations;
            v[(size_t)t * kv_dim + c] = row[q_dim + kv_dim + c];
            continue;
        }
        float angle = (float)pos[t] * angle_step;
        float c = cosf(angle), s = sinf(angle);
        const Elem *in = row + h * head_dim; /* the k heads follow the q heads in a row */
        Elem *out =
            h < n_heads ? q + (size_t)t * q_dim + h * head_dim : k + (size_t)t * kv_dim + (h - n_heads) * head_dim;
        float a = load_f(&in[j]), b = load_f(&in[j + half]);
        store_out(&out[j], a * c - b * s);
        store_out(&out[j + half], b * c + a * s);
    }
}

template <class Elem>
static void rope_qkv(Elem *q, Elem *k, Elem *v, const Elem *qkv, const int32_t *pos, int T, int n_heads, int n_kv_heads,
                     int head_dim, const float *inv_freq) {
    int per_token = (n_heads + n_kv_heads) * (head_dim / 2) + n_kv_heads * head_dim;
    static const std::string name = kernel_name("rope_qkv_kernel", {elem_name<Elem>()});
    if (T == 0) return;
    if (head_dim / 2 > ROPE_MAX_PAIRS)
        fatal("cuda rope: head_dim %d > %d is not supported", head_dim, 2 * ROPE_MAX_PAIRS);
    RopeFreqs freqs;
    for (int j = 0; j < head_dim / 2; j++) freqs.f[j] = inv_freq[j];
    profile_next_bytes(2.0 * sizeof(Elem) * T * (n_heads + 2 * n_kv_heads) * head_dim + 4.0 * T);
    LAUNCH_AS(name.c_str(), rope_qkv_kernel<Elem>, row_grid(per_token, T, 256), 256, 0, q, k, v, qkv, pos, T, n_heads,
              n_kv_heads, head_dim, freqs);
}
void cuda_rope_qkv(float *q, float *k, float *v, const float *qkv, const int32_t *pos, int T, int n_heads,
                   int n_kv_heads, int head_dim, const float *inv_freq) {
    rope_qkv(q, k, v, qkv, pos, T, n_heads, n_kv_heads, head_dim, inv_freq);
}
void cuda_rope_qkv_bf16(uint16_t *q, uint16_t *k, uint16_t *v, const uint16_t *qkv, const int32_t *pos, int T,
                        int n_heads, int n_kv_heads, int head_dim, const float *inv_freq) {
    rope_qkv(q, k, v, qkv, pos, T, n_heads, n_kv_heads, head_dim, inv_freq);
}
