/* The q/k/v GEMM's rows split into q, k and v, with the rotary embedding on q and k (fp32 or bf16 rows; Hugging
 * Face half-rotation layout: element j of a head pairs with j + head_dim/2). Per token (grid y), one thread per
 * (head, group of W rotated pairs) over the q heads followed by the k heads, then one per W elements of v. */
#include "cuda_common.cuh"

/* The rotary frequencies of a head's pairs, the model's host table (computed there as the reference computes them: the
 * device's powf is not correctly rounded, and an ulp of a frequency moves the angle at position 2048 by 1e-4). Passed
 * by value (512 bytes of kernel parameters, read in place: __grid_constant__). */
enum { ROPE_MAX_PAIRS = 128 };
struct RopeFreqs {
    float f[ROPE_MAX_PAIRS];
};

/* W consecutive pairs per thread: W = 16-byte vectors (4 fp32 or 8 bf16: in[j..j+W) and in[j+half..j+half+W) loaded,
 * out written, v copied as vectors) where half is a multiple of W and the tensors are 16-byte aligned, else 1. Each
 * element's angle and rotation are computed as on the scalar path. */
template <class Elem, int W> /* float, or bf16 widened and rounded back */
__global__ void rope_qkv_kernel(Elem *q, Elem *k, Elem *v, const Elem *qkv, const int32_t *pos, int T, int n_heads,
                                int n_kv_heads, int head_dim, const __grid_constant__ RopeFreqs freqs) {
    int half = head_dim / 2, q_dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim, groups = half / W;
    int rotations = (n_heads + n_kv_heads) * groups, w = blockIdx.x * blockDim.x + threadIdx.x;
    if (w >= rotations + kv_dim / W) return;
    int h = w / groups, j = (w - h * groups) * W; /* for a rotation: pairs j..j+W-1 of head h */
    /* the angles in fp32, as the reference computes them */
    float angle_step[W];
    for (int i = 0; i < W; i++) angle_step[i] = w < rotations ? freqs.f[j + i] : 0.0f;
    for (int t = blockIdx.y; t < T; t += gridDim.y) {
        const Elem *row = qkv + (size_t)t * (q_dim + 2 * kv_dim);
        if (w >= rotations) { /* v: copied */
            int c = (w - rotations) * W;
            copy_vec<W>(&v[(size_t)t * kv_dim + c], &row[q_dim + kv_dim + c]);
            continue;
        }
        const Elem *in = row + h * head_dim; /* the k heads follow the q heads in a row */
        Elem *out =
            h < n_heads ? q + (size_t)t * q_dim + h * head_dim : k + (size_t)t * kv_dim + (h - n_heads) * head_dim;
        float a[W], b[W];
        load_vec(&in[j], a);
        load_vec(&in[j + half], b);
        for (int i = 0; i < W; i++) {
            float angle = (float)pos[t] * angle_step[i];
            float c = cosf(angle), s = sinf(angle), x = a[i], y = b[i];
            a[i] = x * c - y * s;
            b[i] = y * c + x * s;
        }
        store_vec(&out[j], a);
        store_vec(&out[j + half], b);
    }
}

template <class Elem>
static void rope_qkv(Elem *q, Elem *k, Elem *v, const Elem *qkv, const int32_t *pos, int T, int n_heads, int n_kv_heads,
                     int head_dim, const float *inv_freq) {
    constexpr int kVec = vec_width<Elem>();
    static const std::string name = kernel_name("rope_qkv_kernel", {elem_name<Elem>(), "1"}),
                             vec_name = kernel_name("rope_qkv_kernel", {elem_name<Elem>(), std::to_string(kVec)});
    if (T == 0) return;
    if (head_dim / 2 > ROPE_MAX_PAIRS)
        fatal("cuda rope: head_dim %d > %d is not supported", head_dim, 2 * ROPE_MAX_PAIRS);
    RopeFreqs freqs;
    for (int j = 0; j < head_dim / 2; j++) freqs.f[j] = inv_freq[j];
    profile_next_bytes(2.0 * sizeof(Elem) * T * (n_heads + 2 * n_kv_heads) * head_dim + 4.0 * T);
    bool vector = head_dim % (2 * kVec) == 0 && aligned16({q, k, v, qkv});
    int W = vector ? kVec : 1, per_token = (n_heads + n_kv_heads) * (head_dim / 2 / W) + n_kv_heads * head_dim / W;
    if (vector)
        LAUNCH_AS(vec_name.c_str(), (rope_qkv_kernel<Elem, kVec>), row_grid(per_token, T, 256), 256, 0, q, k, v, qkv,
                  pos, T, n_heads, n_kv_heads, head_dim, freqs);
    else
        LAUNCH_AS(name.c_str(), (rope_qkv_kernel<Elem, 1>), row_grid(per_token, T, 256), 256, 0, q, k, v, qkv, pos, T,
                  n_heads, n_kv_heads, head_dim, freqs);
}
void cuda_rope_qkv(float *q, float *k, float *v, const float *qkv, const int32_t *pos, int T, int n_heads,
                   int n_kv_heads, int head_dim, const float *inv_freq) {
    rope_qkv(q, k, v, qkv, pos, T, n_heads, n_kv_heads, head_dim, inv_freq);
}
void cuda_rope_qkv_bf16(uint16_t *q, uint16_t *k, uint16_t *v, const uint16_t *qkv, const int32_t *pos, int T,
                        int n_heads, int n_kv_heads, int head_dim, const float *inv_freq) {
    rope_qkv(q, k, v, qkv, pos, T, n_heads, n_kv_heads, head_dim, inv_freq);
}
