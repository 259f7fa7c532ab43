/* Attention over explicit key ranges (packed causal batches, KV-cache decoding, tree verification), with
 * grouped-query heads, as a flash-style kernel: scores are never stored, each query keeps an online
 * softmax (running max m, running sum l, unnormalised output acc) over tiles of 32 keys.
 * Block: Q warps, one query each, all on the same head (Q = 16 for a tree or a prompt, 4 for a decoding step); the
 * block loads each K and V tile once into shared memory for its queries, so a tree of 64 nodes reads the cache 4
 * times per head instead of once per node. Within a tile lane j scores key j; then every lane accumulates the
 * p-weighted V rows for its output elements c = lane, lane + 32, ...
 * Decoding (a few queries over a long KV cache) would leave most of the GPU idle with one block per (4 queries,
 * head), so there the key range is cut into slices (gridDim.z, flash-decoding): each block writes its partial
 * softmax state (max, sum, unnormalised output) and attention_merge_kernel combines them. */
#include "cuda_common.cuh"

#ifndef MEDUSA_CUDA_EMU /* tests/cudaemu/cuda_emu.h emulates wmma */
#include <cuda_bf16.h>
#include <mma.h>
#endif

static const int kTile = 32;

/* Queries (warps) per block: 16 when there are as many (a tree, a prompt), else 4; 4 for head_dim above 128, whose
 * K and V tiles fill the 48 KiB of static shared memory otherwise. */
static int queries_per_block(int T, int head_dim) { return T >= 16 && head_dim <= 128 ? 16 : 4; }

/* where one query's partial state in a key slice starts: max, sum, then the head_dim unnormalised outputs */
__device__ __forceinline__ size_t partial_at(int split, int t, int h, int T, int n_heads, int head_dim) {
    return (((size_t)split * T + t) * n_heads + h) * (size_t)(head_dim + 2);
}

/* head_dim <= HD, HD a multiple of 32; Q queries per block; In and Out float or bf16. V tiles are staged in shared
 * memory up to HD 128; above, the V rows are read from global memory (the two tiles would not fit). */
template <int HD, int Q, class In, class Out>
__global__ void attention_kernel(Out *out, float *partials, const In *q, const In *k, const In *v,
                                 const int32_t *key_begin, const int32_t *key_end, const uint8_t *mask, int row0, int T,
                                 int n_heads, int n_kv_heads, int head_dim) {
    constexpr bool kSharedV = HD <= 128;
    __shared__ float k_tile[kTile][HD + 1]; /* +1: lane j reads row j without bank conflicts */
    __shared__ float v_tile[kSharedV ? kTile : 1][kSharedV ? HD : 1];
    __shared__ float q_rows[Q][HD];
    __shared__ float p_rows[Q][kTile];
    __shared__ int ranges[Q][2];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int t = blockIdx.x * Q + warp, h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    size_t q_stride = (size_t)n_heads * head_dim, kv_stride = (size_t)n_kv_heads * head_dim;
    const float scale = 1.0f / sqrtf((float)head_dim);
    bool active = t < T;
    int begin = active ? key_begin[t] : 0, end = active ? key_end[t] : 0;
    for (int c = lane; c < HD; c += 32)
        q_rows[warp][c] = active && c < head_dim ? load_f(&q[t * q_stride + h * head_dim + c]) : 0.0f;
    if (lane == 0) {
        ranges[warp][0] = begin;
        ranges[warp][1] = end;
    }
    __syncthreads();
    int lo = 0x7fffffff, hi = 0; /* the union of the block's key ranges */
    for (int w = 0; w < Q; w++)
        if (ranges[w][0] < ranges[w][1]) {
            lo = min(lo, ranges[w][0]);
            hi = max(hi, ranges[w][1]);
        }

    /* this block's slice of the union's key tiles (all of them without a split) */
    int n_tiles = hi > lo ? (hi - lo + kTile - 1) / kTile : 0, per_split = (n_tiles + gridDim.z - 1) / gridDim.z;
    int slice_lo = lo + (int)blockIdx.z * per_split * kTile, slice_hi = min(hi, slice_lo + per_split * kTile);

    float m = -INFINITY, l = 0.0f, acc[HD / 32];
    for (int i = 0; i < HD / 32; i++) acc[i] = 0.0f;
    for (int j0 = slice_lo; j0 < slice_hi; j0 += kTile) {
        __syncthreads(); /* everyone is done with the previous tile */
        for (int e = threadIdx.x; e < kTile * head_dim; e += blockDim.x) {
            int r = e / head_dim, c = e % head_dim;
            bool key = j0 + r < slice_hi;
            size_t at = (size_t)(j0 + r) * kv_stride + kvh * head_dim + c;
            k_tile[r][c] = key ? load_f(&k[at]) : 0.0f;
            if (kSharedV) v_tile[r][c] = key ? load_f(&v[at]) : 0.0f;
        }
        __syncthreads();
        if (j0 >= end || j0 + kTile <= begin) continue; /* warp-uniform: this query has no key in the tile */
        int j = j0 + lane;
        float s = -INFINITY;
        bool visible = j >= begin && j < end && j < slice_hi &&
                       (!mask || j < row0 || mask[(size_t)t * T + (j - row0)]); /* tree: ancestors only */
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
        int n_keys = min(kTile, slice_hi - j0);
        for (int r = 0; r < n_keys; r++) {
            float pr = p_rows[warp][r];
            if (pr == 0.0f) continue;
            const In *v_row = v + (size_t)(j0 + r) * kv_stride + kvh * head_dim;
            for (int i = 0; i < HD / 32; i++) {
                int c = lane + 32 * i;
                if (c < head_dim) acc[i] += pr * (kSharedV ? v_tile[r][c] : load_f(&v_row[c]));
            }
        }
        __syncwarp(); /* p_rows is rewritten by the next tile */
    }
    if (!active) return;
    if (gridDim.z > 1) { /* a slice: its partial state, for attention_merge_kernel */
        float *state = partials + partial_at(blockIdx.z, t, h, T, n_heads, head_dim);
        if (lane == 0) state[0] = m, state[1] = l;
        for (int i = 0; i < HD / 32; i++) {
            int c = lane + 32 * i;
            if (c < head_dim) state[2 + c] = acc[i];
        }
        return;
    }
    float inv = l > 0.0f ? 1.0f / l : 0.0f; /* no visible key: zeros */
    for (int i = 0; i < HD / 32; i++) {
        int c = lane + 32 * i;
        if (c < head_dim) store_out(&out[t * q_stride + h * head_dim + c], acc[i] * inv);
    }
}

/* out[t, h] from the slices' partial states: each rescaled to the largest max, summed, normalised */
template <class Out>
__global__ void attention_merge_kernel(Out *out, const float *partials, int splits, int T, int n_heads, int head_dim) {
    int t = blockIdx.x, h = blockIdx.y;
    float m = -INFINITY, l = 0.0f;
    for (int z = 0; z < splits; z++) {
        const float *state = partials + partial_at(z, t, h, T, n_heads, head_dim);
        if (state[1] > 0.0f) m = fmaxf(m, state[0]); /* a slice without a visible key has sum 0 */
    }
    for (int z = 0; z < splits; z++) {
        const float *state = partials + partial_at(z, t, h, T, n_heads, head_dim);
        if (state[1] > 0.0f) l += state[1] * expf(state[0] - m);
    }
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
        float o = 0.0f;
        for (int z = 0; z < splits; z++) {
            const float *state = partials + partial_at(z, t, h, T, n_heads, head_dim);
            if (state[1] > 0.0f) o += state[2 + c] * expf(state[0] - m);
        }
        store_out(&out[((size_t)t * n_heads + h) * head_dim + c], o * inv);
    }
}

template <class Out>
static void merge_slices(Out *out, const float *partials, int splits, int T, int n_heads, int head_dim) {
    static const std::string name = kernel_name("attention_merge_kernel", {elem_name<Out>()});
    LAUNCH_AS(name.c_str(), attention_merge_kernel<Out>, dim3(T, n_heads), 128, 0, out, partials, splits, T, n_heads,
              head_dim);
}

/* Key slices for a decoding step or a tree after a cache, whose blocks of `queries` queries per head are few: none
 * for a packed batch (row0 = 0), which has blocks enough, or when the blocks already fill a GPU (2 per SM of an A100
 * or H100); else one per ATTENTION_SPLIT_MIN_KEYS keys, at most ATTENTION_SPLIT_MAX. */
static int key_splits(int T, int queries, int row0, int n_heads) {
    const int kBusyBlocks = 256;
    if (row0 == 0 || (size_t)T * n_heads > ATTENTION_SPLIT_ROWS || (int)ceil_div(T, queries) * n_heads >= kBusyBlocks)
        return 1;
    int splits = (row0 + T) / ATTENTION_SPLIT_MIN_KEYS;
    return splits < 2 ? 1 : min(splits, ATTENTION_SPLIT_MAX);
}

/* the slices' partial states: allocated at the first split, the same size after (the decoding plan counts it) */
static float *split_partials(int head_dim) {
    static float *partials = NULL;
    static int for_head_dim = 0;
    if (head_dim > for_head_dim) {
        backend_cuda()->free(partials);
        partials = (float *)backend_cuda()->alloc(ATTENTION_SPLIT_BYTES(head_dim));
        for_head_dim = head_dim;
    }
    return partials;
}

template <int HD, int Q, class In, class Out>
static void launch_attention(dim3 grid, Out *out, float *partials, const In *q, const In *k, const In *v,
                             const int32_t *key_begin, const int32_t *key_end, const uint8_t *mask, int row0, int T,
                             int n_heads, int n_kv_heads, int head_dim) {
    static const std::string name =
        kernel_name("attention_kernel", {std::to_string(HD), std::to_string(Q), elem_name<In>(), elem_name<Out>()});
    LAUNCH_AS(name.c_str(), (attention_kernel<HD, Q, In, Out>), grid, 32 * Q, 0, out, partials, q, k, v, key_begin,
              key_end, mask, row0, T, n_heads, n_kv_heads, head_dim);
}

template <int HD, class In, class Out>
static void launch_attention(int queries, dim3 grid, Out *out, float *partials, const In *q, const In *k, const In *v,
                             const int32_t *key_begin, const int32_t *key_end, const uint8_t *mask, int row0, int T,
                             int n_heads, int n_kv_heads, int head_dim) {
    if (queries == 16)
        launch_attention<HD, 16>(grid, out, partials, q, k, v, key_begin, key_end, mask, row0, T, n_heads, n_kv_heads,
                                 head_dim);
    else
        launch_attention<HD, 4>(grid, out, partials, q, k, v, key_begin, key_end, mask, row0, T, n_heads, n_kv_heads,
                                head_dim);
}

template <class In, class Out>
static void attention_cuda_cores(Out *out, const In *q, const In *k, const In *v, const int32_t *key_begin,
                                 const int32_t *key_end, const uint8_t *mask, int row0, int T, int n_heads,
                                 int n_kv_heads, int head_dim) {
    if (T == 0) return;
    if (head_dim > 256) fatal("cuda attention: head_dim %d > 256 is not supported", head_dim);
    int queries = queries_per_block(T, head_dim), splits = key_splits(T, queries, row0, n_heads);
    float *partials = splits > 1 ? split_partials(head_dim) : NULL;
    dim3 grid(ceil_div(T, queries), n_heads, splits);
    if (head_dim <= 32)
        launch_attention<32>(queries, grid, out, partials, q, k, v, key_begin, key_end, mask, row0, T, n_heads,
                             n_kv_heads, head_dim);
    else if (head_dim <= 64)
        launch_attention<64>(queries, grid, out, partials, q, k, v, key_begin, key_end, mask, row0, T, n_heads,
                             n_kv_heads, head_dim);
    else if (head_dim <= 128)
        launch_attention<128>(queries, grid, out, partials, q, k, v, key_begin, key_end, mask, row0, T, n_heads,
                              n_kv_heads, head_dim);
    else
        launch_attention<256, 4>(grid, out, partials, q, k, v, key_begin, key_end, mask, row0, T, n_heads, n_kv_heads,
                                 head_dim);
    if (splits > 1) merge_slices(out, partials, splits, T, n_heads, head_dim);
}

void cuda_attention(float *out, const float *q, const float *k, const float *v, const int32_t *key_begin,
                    const int32_t *key_end, const uint8_t *mask, int row0, int T, int n_heads, int n_kv_heads,
                    int head_dim) {
    attention_cuda_cores(out, q, k, v, key_begin, key_end, mask, row0, T, n_heads, n_kv_heads, head_dim);
}

/* --- tensor-core attention for packed batches, prompts and trees (--precision bf16) ---
 * Block: kTcQueries consecutive queries of one head, 4 warps, over the union of their key ranges (or one slice of
 * it, gridDim.z, when a tree or a prompt after a long cache makes too few blocks: the partial states then go to
 * attention_merge_kernel as the CUDA-core kernel's do); keys >= row0 pass through the tree mask when there is one.
 * Per tile of kTcKeys keys:
 * - S = Q K^T on the tensor cores (bf16 operands, fp32 accumulation; one 16x16 tile of S per warp);
 * - 4 lanes per query row update the online softmax (running max and sum, shuffles within the 4) and write
 *   P = exp(S - max) rounded to bf16;
 * - the fp32 output rows held in shared memory are rescaled, unless no row's max grew (wmma fragments have no
 *   portable row layout, so the per-row rescaling happens in shared memory);
 * - O += P V on the tensor cores, the accumulator loaded from and stored back to shared memory.
 * Shared memory for head_dim 128: 46.6 KiB. */
static const int kTcQueries = 32, kTcKeys = 32, kTcWarps = 4;
static const int kRowThreads = 32 * kTcWarps / kTcQueries; /* threads per query row in the softmax: 4 */

/* *dst = bf16(x); returns the rounded value */
__device__ __forceinline__ float store_bf16(__nv_bfloat16 *dst, float x) {
    uint16_t bits = f32_to_bf16(x);
    memcpy(dst, &bits, sizeof bits);
    return bf16_to_f32(bits);
}
/* 8 bf16 values, 16 bytes: the Q, K and V tiles are copied from global memory in these (the rows of a head are
 * 16-byte aligned: head_dim is a multiple of 16 and the tensors start aligned, which cuda_attention_bf16 checks) */
struct __align__(16) Bf16x8 {
    uint32_t bits[4];
};
static const int kChunk = 8;

template <int HD> /* head_dim == HD, a multiple of 16 */
__global__ void attention_tc_kernel(uint16_t *out, float *partials, const uint16_t *q, const uint16_t *k,
                                    const uint16_t *v, const int32_t *key_begin, const int32_t *key_end,
                                    const uint8_t *mask, int row0, int T, int n_heads, int n_kv_heads) {
    using namespace nvcuda;
    __shared__ __align__(32) __nv_bfloat16 q_tile[kTcQueries * HD];
    __shared__ __align__(32) __nv_bfloat16 k_tile[kTcKeys * HD];
    __shared__ __align__(32) __nv_bfloat16 v_tile[kTcKeys * HD];
    __shared__ __align__(32) __nv_bfloat16 p_tile[kTcQueries * kTcKeys];
    __shared__ __align__(32) float s_tile[kTcQueries * kTcKeys];
    __shared__ __align__(32) float o_rows[kTcQueries * HD];
    __shared__ float row_max[kTcQueries], row_sum[kTcQueries], row_scale[kTcQueries];
    __shared__ int rescale; /* some row's running max grew in this tile */
    __shared__ int row_begin[kTcQueries], row_end[kTcQueries];
    int warp = threadIdx.x / 32, t0 = blockIdx.x * kTcQueries, h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    size_t q_stride = (size_t)n_heads * HD, kv_stride = (size_t)n_kv_heads * HD;
    const float scale = 1.0f / sqrtf((float)HD);

    for (int e = threadIdx.x; e < kTcQueries * HD / kChunk; e += blockDim.x) {
        int r = e / (HD / kChunk), c = e % (HD / kChunk) * kChunk, t = t0 + r;
        Bf16x8 chunk = {};
        if (t < T) chunk = *(const Bf16x8 *)&q[t * q_stride + h * HD + c];
        *(Bf16x8 *)&q_tile[r * HD + c] = chunk;
    }
    for (int e = threadIdx.x; e < kTcQueries * HD; e += blockDim.x) o_rows[e] = 0.0f;
    if (threadIdx.x < kTcQueries) {
        int r = threadIdx.x, t = t0 + r;
        row_begin[r] = t < T ? key_begin[t] : 0;
        row_end[r] = t < T ? key_end[t] : 0; /* an empty range: the row stays zero */
        row_max[r] = -INFINITY;
        row_sum[r] = 0.0f;
    }
    __syncthreads();
    int lo = 0x7fffffff, hi = 0; /* the union of the block's key ranges */
    for (int r = 0; r < kTcQueries; r++)
        if (row_begin[r] < row_end[r]) {
            lo = min(lo, row_begin[r]);
            hi = max(hi, row_end[r]);
        }

    /* this block's slice of the union's key tiles (all of them without a split) */
    int n_tiles = hi > lo ? (hi - lo + kTcKeys - 1) / kTcKeys : 0, per_split = (n_tiles + gridDim.z - 1) / gridDim.z;
    int slice_lo = lo + (int)blockIdx.z * per_split * kTcKeys, slice_hi = min(hi, slice_lo + per_split * kTcKeys);

    for (int j0 = slice_lo; j0 < slice_hi; j0 += kTcKeys) {
        __syncthreads(); /* the previous tile's K, V and P are no longer read */
        if (threadIdx.x == 0) rescale = 0;
        for (int e = threadIdx.x; e < kTcKeys * HD / kChunk; e += blockDim.x) {
            int r = e / (HD / kChunk), c = e % (HD / kChunk) * kChunk, j = j0 + r;
            Bf16x8 k_chunk = {}, v_chunk = {};
            if (j < slice_hi) {
                size_t at = (size_t)j * kv_stride + kvh * HD + c;
                k_chunk = *(const Bf16x8 *)&k[at];
                v_chunk = *(const Bf16x8 *)&v[at];
            }
            *(Bf16x8 *)&k_tile[r * HD + c] = k_chunk;
            *(Bf16x8 *)&v_tile[r * HD + c] = v_chunk;
        }
        __syncthreads();
        { /* S = Q K^T: warp w computes the 16x16 tile (w / 2, w % 2) */
            int tr = warp / 2, tc = warp % 2;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> s_acc;
            wmma::fill_fragment(s_acc, 0.0f);
            for (int d = 0; d < HD; d += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> qa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> kb; /* K^T */
                wmma::load_matrix_sync(qa, q_tile + tr * 16 * HD + d, HD);
                wmma::load_matrix_sync(kb, k_tile + tc * 16 * HD + d, HD);
                wmma::mma_sync(s_acc, qa, kb, s_acc);
            }
            wmma::store_matrix_sync(s_tile + tr * 16 * kTcKeys + tc * 16, s_acc, kTcKeys, wmma::mem_row_major);
        }
        __syncthreads();
        { /* online softmax: kRowThreads neighbouring lanes per query row, each over a quarter of the keys */
            int r = threadIdx.x / kRowThreads, c0 = threadIdx.x % kRowThreads * (kTcKeys / kRowThreads);
            bool seen[kTcKeys / kRowThreads];
            float m_old = row_max[r], m_new = m_old;
            for (int c = c0; c < c0 + kTcKeys / kRowThreads; c++) {
                int j = j0 + c;
                /* in the slice and the row's range (empty for a padding row); a tree node sees only its ancestors */
                bool visible = j < slice_hi && j >= row_begin[r] && j < row_end[r] &&
                               (!mask || j < row0 || mask[(size_t)(t0 + r) * T + (j - row0)]);
                seen[c - c0] = visible;
                if (visible) m_new = fmaxf(m_new, s_tile[r * kTcKeys + c] * scale);
            }
            for (int offset = 1; offset < kRowThreads; offset *= 2)
                m_new = fmaxf(m_new, __shfl_xor_sync(0xffffffffu, m_new, offset));
            float sum = 0.0f;
            for (int c = c0; c < c0 + kTcKeys / kRowThreads; c++) /* the sum of the rounded values PV uses */
                sum += store_bf16(&p_tile[r * kTcKeys + c],
                                  seen[c - c0] ? expf(s_tile[r * kTcKeys + c] * scale - m_new) : 0.0f);
            for (int offset = 1; offset < kRowThreads; offset *= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
            if (c0 == 0) {
                /* no visible key yet (m_new = -inf): nothing to rescale */
                float correction = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
                row_scale[r] = correction;
                if (correction != 1.0f) rescale = 1;
                row_sum[r] = row_sum[r] * correction + sum;
                row_max[r] = m_new;
            }
        }
        __syncthreads();
        if (rescale) /* block-uniform; once the maxima settle, most tiles skip this pass over the output rows */
            for (int e = threadIdx.x; e < kTcQueries * HD; e += blockDim.x) o_rows[e] *= row_scale[e / HD];
        __syncthreads();
        /* O += P V: output tiles (row tile, column tile) dealt round-robin to the warps */
        for (int tile = warp; tile < (kTcQueries / 16) * (HD / 16); tile += kTcWarps) {
            int tr = tile / (HD / 16), tc = tile % (HD / 16);
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> o_acc;
            wmma::load_matrix_sync(o_acc, o_rows + tr * 16 * HD + tc * 16, HD, wmma::mem_row_major);
            for (int kk = 0; kk < kTcKeys; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> pa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> vb;
                wmma::load_matrix_sync(pa, p_tile + tr * 16 * kTcKeys + kk, kTcKeys);
                wmma::load_matrix_sync(vb, v_tile + kk * HD + tc * 16, HD);
                wmma::mma_sync(o_acc, pa, vb, o_acc);
            }
            wmma::store_matrix_sync(o_rows + tr * 16 * HD + tc * 16, o_acc, HD, wmma::mem_row_major);
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < kTcQueries * HD; e += blockDim.x) {
        int r = e / HD, c = e % HD, t = t0 + r;
        if (t >= T) continue;
        if (gridDim.z > 1) { /* a slice: its partial state, for attention_merge_kernel */
            float *state = partials + partial_at(blockIdx.z, t, h, T, n_heads, HD);
            if (c == 0) state[0] = row_max[r], state[1] = row_sum[r];
            state[2 + c] = o_rows[e];
        } else {
            store_out(&out[t * q_stride + h * HD + c], row_sum[r] > 0.0f ? o_rows[e] / row_sum[r] : 0.0f);
        }
    }
}

/* Tensor cores for a head_dim they tile when there are queries enough to fill part of a 32-query tile (a packed
 * batch, a prompt, a tree); the CUDA-core kernel for decoding steps (a few queries), other head sizes and tensors not
 * 16-byte aligned. */
void cuda_attention_bf16(uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                         const int32_t *key_begin, const int32_t *key_end, const uint8_t *mask, int row0, int T,
                         int n_heads, int n_kv_heads, int head_dim) {
    const int kMinQueries = 16;
    bool aligned = ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v) % sizeof(Bf16x8) == 0;
    if (T < kMinQueries || (head_dim != 64 && head_dim != 128) || !aligned) {
        attention_cuda_cores(out, q, k, v, key_begin, key_end, mask, row0, T, n_heads, n_kv_heads, head_dim);
        return;
    }
    int splits = key_splits(T, kTcQueries, row0, n_heads);
    float *partials = splits > 1 ? split_partials(head_dim) : NULL;
    dim3 grid(ceil_div(T, kTcQueries), n_heads, splits), block(32 * kTcWarps);
    if (head_dim == 64)
        LAUNCH(attention_tc_kernel<64>, grid, block, 0, out, partials, q, k, v, key_begin, key_end, mask, row0, T,
               n_heads, n_kv_heads);
    else
        LAUNCH(attention_tc_kernel<128>, grid, block, 0, out, partials, q, k, v, key_begin, key_end, mask, row0, T,
               n_heads, n_kv_heads);
    if (splits > 1) merge_slices(out, partials, splits, T, n_heads, head_dim);
}
