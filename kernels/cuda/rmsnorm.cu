/* RMSNorm: one block per row; the sum of squares is a block reduction. The bf16 variant writes the same
 * values rounded, as the input of the bf16 GEMMs that follow. */
#include "cuda_common.cuh"

template <class Out> __global__ void rmsnorm_kernel(Out *out, const float *x, const float *weight, int C, float eps) {
    __shared__ float scratch[32];
    const float *row = x + (size_t)blockIdx.x * C;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += row[c] * row[c];
    ss = block_sum(ss, scratch);
    float rstd = rsqrtf(ss / (float)C + eps);
    Out *o = out + (size_t)blockIdx.x * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) store_out(&o[c], row[c] * rstd * weight[c]);
}

void cuda_rmsnorm(float *out, const float *x, const float *weight, int T, int C, float eps) {
    if (T == 0) return;
    profile_next_bytes(8.0 * T * C + 4.0 * C);
    LAUNCH(rmsnorm_kernel<float>, T, 256, 0, out, x, weight, C, eps);
}
void cuda_rmsnorm_bf16(uint16_t *out, const float *x, const float *weight, int T, int C, float eps) {
    if (T == 0) return;
    profile_next_bytes(6.0 * T * C + 4.0 * C);
    LAUNCH(rmsnorm_kernel<uint16_t>, T, 256, 0, out, x, weight, C, eps);
}

/* Qwen3's q/k norm: one block of 32 threads per (head, token), in place; Elem float or bf16 (widened, rounded back) */
template <class Elem>
__global__ void qk_norm_kernel(Elem *qkv, const float *q_weight, const float *k_weight, int n_heads, int n_kv_heads,
                               int head_dim, float eps) {
    int h = blockIdx.x, t = blockIdx.y;
    Elem *x = qkv + (size_t)t * (n_heads + 2 * n_kv_heads) * head_dim + (size_t)h * head_dim;
    const float *w = h < n_heads ? q_weight : k_weight;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < head_dim; c += 32) {
        float v = load_f(&x[c]);
        ss += v * v;
    }
    ss = warp_sum(ss);
    float rstd = rsqrtf(ss / (float)head_dim + eps);
    __syncwarp();
    for (int c = threadIdx.x; c < head_dim; c += 32) store_out(&x[c], load_f(&x[c]) * rstd * w[c]);
}

template <class Elem>
static void qk_norm(Elem *qkv, const float *q_weight, const float *k_weight, int T, int n_heads, int n_kv_heads,
                    int head_dim, float eps) {
    if (T == 0) return;
    if (T > 65535) fatal("cuda qk_norm: %d rows exceed the grid's 65535", T);
    static const std::string name = kernel_name("qk_norm_kernel", {elem_name<Elem>()});
    profile_next_bytes(2.0 * sizeof(Elem) * T * (n_heads + n_kv_heads) * head_dim);
    LAUNCH_AS(name.c_str(), qk_norm_kernel<Elem>, dim3(n_heads + n_kv_heads, T), 32, 0, qkv, q_weight, k_weight,
              n_heads, n_kv_heads, head_dim, eps);
}
void cuda_qk_norm(float *qkv, const float *q_weight, const float *k_weight, int T, int n_heads, int n_kv_heads,
                  int head_dim, float eps) {
    qk_norm(qkv, q_weight, k_weight, T, n_heads, n_kv_heads, head_dim, eps);
}
void cuda_qk_norm_bf16(uint16_t *qkv, const float *q_weight, const float *k_weight, int T, int n_heads, int n_kv_heads,
                       int head_dim, float eps) {
    qk_norm(qkv, q_weight, k_weight, T, n_heads, n_kv_heads, head_dim, eps);
}
