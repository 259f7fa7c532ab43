/* Attention over explicit key ranges (packed causal batches, KV-cache decoding, tree verification), with
 * grouped-query heads, as a flash-style kernel: scores are never stored, each query keeps an online
 * softmax (running max m, running sum l, unnormalised output acc) over tiles of 32 keys.
 * Block: kQueries warps, one query each, all on the same head; the block loads each K tile once into shared
 * memory for its queries. Within a tile lane j scores key j; then every lane accumulates the p-weighted V
 * rows for its output elements c = lane, lane + 32, ... (V rows are read coalesced from global memory). */
#include "cuda_common.cuh"

static const int kQueries = 4, kTile = 32;

template <int HD> /* head_dim <= HD, HD a multiple of 32 */
__global__ void attention_kernel(float *out, const float *q, const float *k, const float *v, const int32_t *key_begin,
                                 const int32_t *key_end, const uint8_t *mask, int mask_start, int T, int n_heads,
                                 int n_kv_heads, int head_dim) {
    __shared__ float k_tile[kTile][HD + 1]; /* +1: lane j reads row j without bank conflicts */
    __shared__ float q_rows[kQueries][HD];
    __shared__ float p_rows[kQueries][kTile];
    __shared__ int ranges[kQueries][2];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int t = blockIdx.x * kQueries + warp, h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    size_t q_stride = (size_t)n_heads * head_dim, kv_stride = (size_t)n_kv_heads * head_dim;
    const float scale = 1.0f / sqrtf((float)head_dim);
    bool active = t < T;
    int begin = active ? key_begin[t] : 0, end = active ? key_end[t] : 0;
    for (int c = lane; c < HD; c += 32) q_rows[warp][c] = active && c < head_dim ? q[t * q_stride + h * head_dim + c] : 0.0f;
    if (lane == 0) {
        ranges[warp][0] = begin;
        ranges[warp][1] = end;
    }
    __syncthreads();
    int lo = 0x7fffffff, hi = 0; /* the union of the block's key ranges */
    for (int w = 0; w < kQueries; w++)
        if (ranges[w][0] < ranges[w][1]) {
            lo = min(lo, ranges[w][0]);
            hi = max(hi, ranges[w][1]);
        }

    float m = -INFINITY, l = 0.0f, acc[HD / 32];
    for (int i = 0; i < HD / 32; i++) acc[i] = 0.0f;
    for (int j0 = lo; j0 < hi; j0 += kTile) {
        __syncthreads(); /* everyone is done with the previous tile */
        for (int e = threadIdx.x; e < kTile * head_dim; e += blockDim.x) {
            int r = e / head_dim, c = e % head_dim;
            k_tile[r][c] = j0 + r < hi ? k[(size_t)(j0 + r) * kv_stride + kvh * head_dim + c] : 0.0f;
        }
        __syncthreads();
        if (j0 >= end || j0 + kTile <= begin) continue; /* warp-uniform: this query has no key in the tile */
        int j = j0 + lane;
        float s = -INFINITY;
        bool visible = j >= begin && j < end &&
                       (!mask || j < mask_start || mask[(size_t)t * T + (j - mask_start)]); /* tree: ancestors only */
        if (visible) {
            float dot = 0.0f;
            for (int c = 0; c < head_dim; c++) dot += q_rows[warp][c] * k_tile[lane][c];
            s = dot * scale;
        }
        float tile_max = warp_max(s);
        if (tile_max == -INFINITY) continue; /* warp-uniform: every key of the tile masked */
        float m_new = fmaxf(m, tile_max);
        float correction = expf(m - m_new); /* 0 on the first visible tile (m = -inf) */
        float p = visible ? expf(s - m_new) : 0.0f;
        l = l * correction + warp_sum(p);
        m = m_new;
        p_rows[warp][lane] = p;
        __syncwarp();
        for (int i = 0; i < HD / 32; i++) acc[i] *= correction;
        int n_keys = min(kTile, hi - j0);
        for (int r = 0; r < n_keys; r++) {
            float pr = p_rows[warp][r];
            if (pr == 0.0f) continue;
            const float *v_row = v + (size_t)(j0 + r) * kv_stride + kvh * head_dim;
            for (int i = 0; i < HD / 32; i++) {
                int c = lane + 32 * i;
                if (c < head_dim) acc[i] += pr * v_row[c];
            }
        }
        __syncwarp(); /* p_rows is rewritten by the next tile */
    }
    if (!active) return;
    float inv = l > 0.0f ? 1.0f / l : 0.0f; /* no visible key: zeros */
    for (int i = 0; i < HD / 32; i++) {
        int c = lane + 32 * i;
        if (c < head_dim) out[t * q_stride + h * head_dim + c] = acc[i] * inv;
    }
}

void cuda_attention(float *out, const float *q, const float *k, const float *v, const int32_t *key_begin,
                    const int32_t *key_end, const uint8_t *mask, int mask_start, int T, int n_heads, int n_kv_heads,
                    int head_dim) {
    if (T == 0) return;
    dim3 grid(ceil_div(T, kQueries), n_heads), block(32 * kQueries);
    if (head_dim <= 32)
        LAUNCH(attention_kernel<32>, grid, block, 0, out, q, k, v, key_begin, key_end, mask, mask_start, T, n_heads,
               n_kv_heads, head_dim);
    else if (head_dim <= 64)
        LAUNCH(attention_kernel<64>, grid, block, 0, out, q, k, v, key_begin, key_end, mask, mask_start, T, n_heads,
               n_kv_heads, head_dim);
    else if (head_dim <= 128)
        LAUNCH(attention_kernel<128>, grid, block, 0, out, q, k, v, key_begin, key_end, mask, mask_start, T, n_heads,
               n_kv_heads, head_dim);
    else if (head_dim <= 256)
        LAUNCH(attention_kernel<256>, grid, block, 0, out, q, k, v, key_begin, key_end, mask, mask_start, T, n_heads,
               n_kv_heads, head_dim);
    else
        fatal("cuda attention: head_dim %d > 256 is not supported", head_dim);
}
