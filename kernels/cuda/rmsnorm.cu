/* RMSNorm: one block per row; the sum of squares is a block reduction. The bf16 variant writes the same
 * values rounded, as the input of the bf16 GEMMs that follow. */
#include "cuda_common.cuh"

/* W = 8: each thread reads 8 consecutive values of x and the weight as two 16-byte vectors (rows of a multiple of 8,
 * x and the weight 16-byte aligned) and writes its 8 outputs as one (bf16) or two (fp32) vectors where out is aligned
 * too, else one by one; W = 1: one value at a time. A thread sums the squares of its values in order, so the sum's
 * order depends on W (and only on W: rmsnorm and rmsnorm_bf16 of the same x get the same rstd, whatever out). */
template <class Out, int W>
__global__ void rmsnorm_kernel(Out *out, const float *x, const float *weight, int C, float eps, bool vector_out) {
    __shared__ float scratch[32];
    const float *row = x + (size_t)blockIdx.x * C;
    float ss = 0.0f;
    for (int c = threadIdx.x * W; c < C; c += blockDim.x * W) {
        float v[W];
        load_vec(row + c, v);
        for (int i = 0; i < W; i++) ss += v[i] * v[i];
    }
    ss = block_sum(ss, scratch);
    float rstd = rsqrtf(ss / (float)C + eps);
    Out *o = out + (size_t)blockIdx.x * C;
    for (int c = threadIdx.x * W; c < C; c += blockDim.x * W) {
        float v[W], w[W];
        load_vec(row + c, v);
        load_vec(weight + c, w);
        for (int i = 0; i < W; i++) v[i] = v[i] * rstd * w[i];
        if (vector_out) store_vec(o + c, v);
        else
            for (int i = 0; i < W; i++) store_out(&o[c + i], v[i]);
    }
}

template <class Out> static void rmsnorm(Out *out, const float *x, const float *weight, int T, int C, float eps) {
    const int kVec = 8;
    static const std::string name = kernel_name("rmsnorm_kernel", {elem_name<Out>(), "1"}),
                             vec_name = kernel_name("rmsnorm_kernel", {elem_name<Out>(), std::to_string(kVec)});
    if (T == 0) return;
    profile_next_bytes((4.0 + sizeof(Out)) * T * C + 4.0 * C);
    if (C % kVec == 0 && aligned16({x, weight}))
        LAUNCH_AS(vec_name.c_str(), (rmsnorm_kernel<Out, kVec>), T, 256, 0, out, x, weight, C, eps, aligned16({out}));
    else LAUNCH_AS(name.c_str(), (rmsnorm_kernel<Out, 1>), T, 256, 0, out, x, weight, C, eps, false);
}
void cuda_rmsnorm(float *out, const float *x, const float *weight, int T, int C, float eps) {
    rmsnorm(out, x, weight, T, C, eps);
}
void cuda_rmsnorm_bf16(uint16_t *out, const float *x, const float *weight, int T, int C, float eps) {
    rmsnorm(out, x, weight, T, C, eps);
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
