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
#include <vector>

#include "cuda_common.cuh"

static const int kTile = 32;

/* Queries (warps) per block: 16 when there are as many (a tree, a prompt), else 4; 4 for head_dim above 128, whose
 * K and V tiles fill the 48 KiB of static shared memory otherwise. */
static int queries_per_block(int T, int head_dim) { return T >= 16 && head_dim <= 128 ? 16 : 4; }

/* where one query's partial state in a key slice starts: max, sum, then the head_dim unnormalised outputs */
__device__ __forceinline__ size_t partial_at(int split, int t, int h, int T, int n_heads, int head_dim) {
    return (((size_t)split * T + t) * n_heads + h) * (size_t)(head_dim + 2);
}

/* head_dim <= HD, HD a multiple of 32; Q queries per block; In and Out float or bf16. V tiles are staged in shared
 * memory up to HD 128; above, the V rows are read from global memory (the two tiles would not fit).
 * K and V are read in chunks of W elements: W = 16-byte vectors (4 fp32 or 8 bf16) where head_dim is a multiple of W
 * and k and v are 16-byte aligned (then every head's row is), else W = 1. Each thread stages the same chunk column of
 * every r_step-th row of a tile (its row and column found once, with the GQA head's offset: no division per
 * element). Read from global memory (HD 256), V's chunks belong to the lanes in turn, lane l accumulating output
 * columns 32 W g + W l .. + W - 1 in acc[W g ..]; from shared memory, columns l + 32 i (no bank conflicts). */
template <int HD, int Q, int W, class In, class Out>
__global__ void attention_kernel(Out *out, float *partials, const In *q, const In *k, const In *v,
                                 const int32_t *key_begin, const int32_t *key_end, const uint8_t *mask, int row0, int T,
                                 int n_heads, int n_kv_heads, int head_dim, AttentionScoring sc) {
    constexpr bool kSharedV = HD <= 128;
    constexpr int AW = kSharedV ? 1 : W;    /* acc[i] is output column (i / AW) 32 AW + lane AW + i % AW */
    __shared__ float k_tile[kTile][HD + 1]; /* +1: lane j reads row j without bank conflicts */
    __shared__ float v_tile[kSharedV ? kTile : 1][kSharedV ? HD : 1];
    __shared__ float q_rows[Q][HD];
    __shared__ float p_rows[Q][kTile];
    __shared__ int ranges[Q][2];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int t = blockIdx.x * Q + warp, h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    size_t q_stride = (size_t)n_heads * head_dim, kv_stride = (size_t)n_kv_heads * head_dim;
    const In *k_head = k + (size_t)kvh * head_dim, *v_head = v + (size_t)kvh * head_dim; /* key 0's row of the head */
    bool active = t < T;
    /* this thread's share of a tile's loads: chunk columns c_first, + c_step, ... of rows r_first, + r_step, ... */
    int chunks = head_dim / W, r_first, r_step, c_first, c_step;
    if (chunks <= (int)blockDim.x) { /* whole rows of chunks per pass; the threads past the last whole row idle */
        r_step = blockDim.x / chunks, r_first = threadIdx.x / chunks;
        c_first = threadIdx.x - r_first * chunks, c_step = chunks;
        if (r_first >= r_step) r_first = kTile;
    } else { /* a row per pass (scalar loads of a long row) */
        r_step = 1, r_first = 0, c_first = threadIdx.x, c_step = blockDim.x;
    }
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
        for (int r = r_first; r < kTile; r += r_step) {
            bool key = j0 + r < slice_hi;
            size_t at = key ? (size_t)(j0 + r) * kv_stride : 0;
            for (int cc = c_first; cc < chunks; cc += c_step) {
                int c = cc * W;
                float kv[W], vv[W];
                if (key) load_vec(k_head + at + c, kv);
                else
                    for (int i = 0; i < W; i++) kv[i] = 0.0f;
                for (int i = 0; i < W; i++) k_tile[r][c + i] = kv[i];
                if constexpr (kSharedV) {
                    if (key) load_vec(v_head + at + c, vv);
                    else
                        for (int i = 0; i < W; i++) vv[i] = 0.0f;
                    for (int i = 0; i < W; i++) v_tile[r][c + i] = vv[i];
                }
            }
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
            s = attention_logit(sc, dot);
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
            if constexpr (kSharedV) {
                for (int i = 0; i < HD / 32; i++) {
                    int c = lane + 32 * i;
                    if (c < head_dim) acc[i] += pr * v_tile[r][c];
                }
            } else { /* this lane's chunks of the V row: whole chunks, head_dim being a multiple of W */
                const In *v_row = v_head + (size_t)(j0 + r) * kv_stride;
                for (int g = 0; g < HD / 32 / W; g++) {
                    int c = 32 * W * g + W * lane;
                    if (c < head_dim) {
                        float vv[W];
                        load_vec(v_row + c, vv);
                        for (int i = 0; i < W; i++) acc[W * g + i] += pr * vv[i];
                    }
                }
            }
        }
        __syncwarp(); /* p_rows is rewritten by the next tile */
    }
    if (!active) return;
    if (gridDim.z > 1) { /* a slice: its partial state, for attention_merge_kernel */
        float *state = partials + partial_at(blockIdx.z, t, h, T, n_heads, head_dim);
        if (lane == 0) state[0] = m, state[1] = l;
        for (int i = 0; i < HD / 32; i++) {
            int c = i / AW * 32 * AW + lane * AW + i % AW;
            if (c < head_dim) state[2 + c] = acc[i];
        }
        return;
    }
    float inv = l > 0.0f ? 1.0f / l : 0.0f; /* no visible key: zeros */
    for (int i = 0; i < HD / 32; i++) {
        int c = i / AW * 32 * AW + lane * AW + i % AW;
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
    profile_next_bytes((double)T * n_heads * (4.0 * splits * (head_dim + 2) + sizeof(Out) * head_dim));
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
                             int n_heads, int n_kv_heads, int head_dim, AttentionScoring sc) {
    constexpr int kVec = vec_width<In>();
    static const std::string name = kernel_name("attention_kernel", {std::to_string(HD), std::to_string(Q), "1",
                                                                     elem_name<In>(), elem_name<Out>()}),
                             vec_name = kernel_name("attention_kernel",
                                                    {std::to_string(HD), std::to_string(Q), std::to_string(kVec),
                                                     elem_name<In>(), elem_name<Out>()});
    if (head_dim % kVec == 0 && aligned16({k, v}))
        LAUNCH_AS(vec_name.c_str(), (attention_kernel<HD, Q, kVec, In, Out>), grid, 32 * Q, 0, out, partials, q, k, v,
                  key_begin, key_end, mask, row0, T, n_heads, n_kv_heads, head_dim, sc);
    else
        LAUNCH_AS(name.c_str(), (attention_kernel<HD, Q, 1, In, Out>), grid, 32 * Q, 0, out, partials, q, k, v,
                  key_begin, key_end, mask, row0, T, n_heads, n_kv_heads, head_dim, sc);
}

template <int HD, class In, class Out>
static void launch_attention(int queries, dim3 grid, Out *out, float *partials, const In *q, const In *k, const In *v,
                             const int32_t *key_begin, const int32_t *key_end, const uint8_t *mask, int row0, int T,
                             int n_heads, int n_kv_heads, int head_dim, AttentionScoring sc) {
    if (queries == 16)
        launch_attention<HD, 16>(grid, out, partials, q, k, v, key_begin, key_end, mask, row0, T, n_heads, n_kv_heads,
                                 head_dim, sc);
    else
        launch_attention<HD, 4>(grid, out, partials, q, k, v, key_begin, key_end, mask, row0, T, n_heads, n_kv_heads,
                                head_dim, sc);
}

/* under MEDUSA_CUDA_PROFILE: the FLOPs of S = Q K^T and O = P V over the queries' key ranges (a tree mask's hidden
 * keys counted too), credited to the next launch so that the profile table gives the kernel's rate */
static void profile_attention_flops(const int32_t *key_begin, const int32_t *key_end, int T, int n_heads,
                                    int head_dim) {
    if (!cuda_profiling()) return;
    std::vector<int32_t> begin((size_t)T), end((size_t)T);
    CUDA_CHECK(cudaMemcpy(begin.data(), key_begin, sizeof(int32_t) * (size_t)T, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(end.data(), key_end, sizeof(int32_t) * (size_t)T, cudaMemcpyDeviceToHost));
    double keys = 0;
    for (int t = 0; t < T; t++) keys += end[(size_t)t] > begin[(size_t)t] ? end[(size_t)t] - begin[(size_t)t] : 0;
    profile_next_flops(4.0 * head_dim * n_heads * keys);
}

template <class In, class Out>
static void attention_cuda_cores(Out *out, const In *q, const In *k, const In *v, const int32_t *key_begin,
                                 const int32_t *key_end, const uint8_t *mask, int row0, int T, int n_heads,
                                 int n_kv_heads, int head_dim, AttentionScoring sc) {
    if (T == 0) return;
    if (head_dim > 256) fatal("cuda attention: head_dim %d > 256 is not supported", head_dim);
    int queries = queries_per_block(T, head_dim), splits = key_splits(T, queries, row0, n_heads);
    float *partials = splits > 1 ? split_partials(head_dim) : NULL;
    dim3 grid(ceil_div(T, queries), n_heads, splits);
    profile_attention_flops(key_begin, key_end, T, n_heads, head_dim);
    if (head_dim <= 32)
        launch_attention<32>(queries, grid, out, partials, q, k, v, key_begin, key_end, mask, row0, T, n_heads,
                             n_kv_heads, head_dim, sc);
    else if (head_dim <= 64)
        launch_attention<64>(queries, grid, out, partials, q, k, v, key_begin, key_end, mask, row0, T, n_heads,
                             n_kv_heads, head_dim, sc);
    else if (head_dim <= 128)
        launch_attention<128>(queries, grid, out, partials, q, k, v, key_begin, key_end, mask, row0, T, n_heads,
                              n_kv_heads, head_dim, sc);
    else
        launch_attention<256, 4>(grid, out, partials, q, k, v, key_begin, key_end, mask, row0, T, n_heads, n_kv_heads,
                                 head_dim, sc);
    if (splits > 1) merge_slices(out, partials, splits, T, n_heads, head_dim);
}

void cuda_attention(float *out, const float *q, const float *k, const float *v, const int32_t *key_begin,
                    const int32_t *key_end, const uint8_t *mask, int row0, int T, int n_heads, int n_kv_heads,
                    int head_dim, AttentionScoring scoring) {
    attention_cuda_cores(out, q, k, v, key_begin, key_end, mask, row0, T, n_heads, n_kv_heads, head_dim, scoring);
}

/* --- tensor-core attention for packed batches, prompts and trees (--precision bf16) ---
 * Flash-attention 2's arrangement on mma.sync (cuda_common.cuh's mma_bf16_16x8x16): a block of kMmaWarps warps
 * takes kMmaQueries consecutive queries of one head, 16 per warp, and each warp keeps its queries' Q fragments,
 * running maxima and sums and output accumulators in registers over the whole key range (or one slice of it,
 * gridDim.z, when a tree or a prompt after a long cache makes too few blocks: the partial states then go to
 * attention_merge_kernel as the CUDA-core kernel's do). Per tile of kMmaKeys keys, whose K and V rows the block
 * stages in shared memory by cp.async (the next tile's K in flight during this tile's softmax and P V, its V during
 * the next S):
 * - S = Q K^T, 8 keys per instruction, bf16 operands and fp32 accumulation, K's fragments read by ldmatrix;
 * - the online softmax on S where the accumulator layout leaves it: a lane holds two query rows (groupID and
 *   groupID + 8), which the 4 lanes of its group share, so row maxima and sums take two shuffles;
 * - P = exp(S - max) rounded to bf16 is already in the A-operand layout of the second product (the accumulators of
 *   keys 16c..16c+7 and 16c+8..16c+15 are the two halves of A's 16-key chunk c), and O is rescaled in registers;
 * - O += P V, V's fragments read by a transposing ldmatrix.
 * Keys at or after row0 pass through the tree mask when there is one; a warp whose queries see no key of a tile
 * skips it. P V multiplies every staged row, so a NaN or infinity in a K or V row within the block's key span
 * reaches rows that do not attend to it (0 x NaN), unlike the CPU's; the rows of a packed batch and a KV cache are
 * all written before any attention reads them. Shared memory for head_dim 128: 34 KiB. */
static const int kMmaWarps = 4, kMmaQueries = 16 * kMmaWarps, kMmaKeys = 64;
/* bf16 elements after each staged K or V row: with rows (head_dim + 8) * 2 bytes apart, the 8 rows an ldmatrix phase
 * reads fall in distinct shared-memory banks */
static const int kRowPad = 8;

/* K and V rows are staged in 16-byte chunks (8 bf16 values): the rows of a head are 16-byte aligned, since head_dim
 * is a multiple of 16 and the tensors start aligned, which cuda_attention_bf16 checks */
static const int kChunkBytes = 16;

/* two bf16 values at a 4-byte aligned address, the first in the low half (a cast, not memcpy, which nvcc would make
 * four byte loads of) */
__device__ __forceinline__ uint32_t load_u32(const uint16_t *p) { return *(const uint32_t *)p; }
__device__ __forceinline__ uint32_t pack_bf16x2(uint16_t lo, uint16_t hi) { return (uint32_t)lo | (uint32_t)hi << 16; }

/* Stages keys j0..j0 + kMmaKeys - 1 of one head's K or V rows (zeros past slice_hi) into a padded tile, every 16-byte
 * chunk in flight at once (cp.async does not wait for its data), and commits them as one group; nothing but the
 * commit when j0 is past the slice. */
template <int HD>
__device__ __forceinline__ void stage_tile(uint16_t *tile, const uint16_t *src, int j0, int slice_hi, size_t kv_stride,
                                           int kvh) {
    if (j0 < slice_hi)
        for (int e = threadIdx.x; e < kMmaKeys * HD / 8; e += 32 * kMmaWarps) {
            int r = e / (HD / 8), c = e % (HD / 8) * 8, j = j0 + r;
            size_t at = j < slice_hi ? (size_t)j * kv_stride + kvh * HD + c : 0;
            cp_async16(&tile[r * (HD + kRowPad) + c], &src[at], j < slice_hi);
        }
    cp_async_commit();
}

/* The online softmax over one tile's scores s (a lane's rows i = 0, 1: groupID and groupID + 8), in base 2 (exp2f is
 * one instruction, expf several): scale and mask (element e: row i = e / 2, key j0 + 8n + 2 quad + e % 2), the rows'
 * new maxima, P = exp2(S - max) rounded to bf16 and packed as A fragments (the accumulators of keys 16c..16c+7 and
 * 16c+8..16c+15 are the two halves of A's 16-key chunk c), the sums of the rounded values that P V uses, and O
 * rescaled. Most tiles of a long sequence are whole for both rows (no mask, no range end), which skips the per-key
 * tests. */
template <int HD>
__device__ __forceinline__ void softmax_tile(float (&s)[kMmaKeys / 8][4], uint32_t (&pa)[kMmaKeys / 16][4],
                                             float (&o)[HD / 8][4], float row_max[2], float row_sum[2], int j0,
                                             int tile_hi, const int row[2], const int begin[2], const int end[2],
                                             const uint8_t *mask, int row0, int T, int quad, AttentionScoring sc) {
    const float kLog2e = 1.4426950408889634f, scale_log2 = sc.scale * kLog2e;
    float tile_max[2] = {-INFINITY, -INFINITY};
    bool whole = !(mask && j0 + kMmaKeys > row0) && j0 + kMmaKeys <= tile_hi;
    for (int i = 0; i < 2; i++) whole = whole && begin[i] <= j0 && j0 + kMmaKeys <= end[i];
    for (int n = 0; n < kMmaKeys / 8; n++)
        for (int e = 0; e < 4; e++) {
            int i = e / 2, j = j0 + 8 * n + 2 * quad + e % 2;
            bool visible = whole || (j < tile_hi && j >= begin[i] && j < end[i] &&
                                     (!mask || j < row0 || mask[(size_t)row[i] * T + (j - row0)]));
            s[n][e] = !visible         ? -INFINITY
                      : sc.softcap > 0 ? attention_logit(sc, s[n][e]) * kLog2e
                                       : s[n][e] * scale_log2;
            tile_max[i] = fmaxf(tile_max[i], s[n][e]);
        }
    float correction[2];
    for (int i = 0; i < 2; i++) {
        tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 1));
        tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 2));
        float m_new = fmaxf(row_max[i], tile_max[i]);
        correction[i] = m_new == -INFINITY ? 1.0f : exp2f(row_max[i] - m_new); /* 0 at the first visible key */
        row_max[i] = m_new;
    }
    float tile_sum[2] = {0.0f, 0.0f};
    for (int n = 0; n < kMmaKeys / 8; n++) {
        uint16_t p[4];
        for (int e = 0; e < 4; e++) {
            int i = e / 2;
            p[e] = f32_to_bf16(s[n][e] == -INFINITY ? 0.0f : exp2f(s[n][e] - row_max[i]));
            tile_sum[i] += bf16_to_f32(p[e]);
        }
        pa[n / 2][n % 2 * 2] = pack_bf16x2(p[0], p[1]);     /* row groupID */
        pa[n / 2][n % 2 * 2 + 1] = pack_bf16x2(p[2], p[3]); /* row groupID + 8 */
    }
    for (int i = 0; i < 2; i++) {
        tile_sum[i] += __shfl_xor_sync(0xffffffffu, tile_sum[i], 1);
        tile_sum[i] += __shfl_xor_sync(0xffffffffu, tile_sum[i], 2);
        row_sum[i] = row_sum[i] * correction[i] + tile_sum[i];
    }
    for (int n = 0; n < HD / 8; n++)
        for (int e = 0; e < 4; e++) o[n][e] *= correction[e / 2];
}

template <int HD> /* head_dim == HD, a multiple of 16 */
__global__ void attention_mma_kernel(uint16_t *out, float *partials, const uint16_t *q, const uint16_t *k,
                                     const uint16_t *v, const int32_t *key_begin, const int32_t *key_end,
                                     const uint8_t *mask, int row0, int T, int n_heads, int n_kv_heads,
                                     AttentionScoring sc) {
    constexpr int kStride = HD + kRowPad;
    __shared__ __align__(16) uint16_t k_tile[kMmaKeys * kStride];
    __shared__ __align__(16) uint16_t v_tile[kMmaKeys * kStride];
    __shared__ int warp_lo[kMmaWarps], warp_hi[kMmaWarps];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, quad = lane % 4;
    int h = blockIdx.y, kvh = h / (n_heads / n_kv_heads);
    size_t q_stride = (size_t)n_heads * HD, kv_stride = (size_t)n_kv_heads * HD;

    /* this lane's query rows (i = 0: groupID, 1: groupID + 8) and their key ranges (empty past T) */
    int row[2], begin[2], end[2];
    for (int i = 0; i < 2; i++) {
        row[i] = blockIdx.x * kMmaQueries + warp * 16 + group + 8 * i;
        begin[i] = row[i] < T ? key_begin[row[i]] : 0;
        end[i] = row[i] < T ? key_end[row[i]] : 0;
    }
    /* Q as A fragments, chunk c holding dims 16c..16c+15: register r has row i = r & 1, columns +8 for r >= 2 */
    uint32_t qa[HD / 16][4];
    for (int c = 0; c < HD / 16; c++)
        for (int r = 0; r < 4; r++) {
            int i = r & 1, col = 16 * c + 2 * quad + (r >= 2 ? 8 : 0);
            qa[c][r] = row[i] < T ? load_u32(&q[row[i] * q_stride + h * HD + col]) : 0u;
        }

    /* the warp's key range (the union of its rows'), then the block's */
    int lo = 0x7fffffff, hi = 0;
    for (int i = 0; i < 2; i++)
        if (begin[i] < end[i]) lo = min(lo, begin[i]), hi = max(hi, end[i]);
    for (int offset = 4; offset < 32; offset *= 2) { /* across the groups: the 4 lanes of a group hold the same rows */
        lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, offset));
        hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
    }
    if (lane == 0) warp_lo[warp] = lo, warp_hi[warp] = hi;
    __syncthreads();
    int block_lo = 0x7fffffff, block_hi = 0;
    for (int w = 0; w < kMmaWarps; w++)
        if (warp_lo[w] < warp_hi[w]) block_lo = min(block_lo, warp_lo[w]), block_hi = max(block_hi, warp_hi[w]);

    /* this block's slice of the union's key tiles (all of them without a split) */
    int n_tiles = block_hi > block_lo ? (block_hi - block_lo + kMmaKeys - 1) / kMmaKeys : 0;
    int per_split = (n_tiles + gridDim.z - 1) / gridDim.z;
    int slice_lo = block_lo + (int)blockIdx.z * per_split * kMmaKeys;
    int slice_hi = min(block_hi, slice_lo + per_split * kMmaKeys);

    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
    float o[HD / 8][4]; /* output columns 8n..8n+7 in the accumulator layout */
    for (int n = 0; n < HD / 8; n++)
        for (int e = 0; e < 4; e++) o[n][e] = 0.0f;
    /* K and V tiles travel as separate cp.async groups into one buffer each, in flash-attention 2's order: the next
     * tile's K is in flight while this tile's softmax and P V run, and the next tile's V while the next S = Q K^T
     * runs. Each wait leaves the most recent group (the other matrix's) in flight; a tile with no successor commits
     * an empty group, so the count holds to the end. */
    if (slice_lo < slice_hi) {
        stage_tile<HD>(k_tile, k, slice_lo, slice_hi, kv_stride, kvh);
        stage_tile<HD>(v_tile, v, slice_lo, slice_hi, kv_stride, kvh);
    }
    for (int j0 = slice_lo; j0 < slice_hi; j0 += kMmaKeys) {
        int tile_hi = min(slice_hi, j0 + kMmaKeys);
        /* warp-uniform: some query of the warp sees a key of this tile */
        bool sees = lo < tile_hi && hi > j0;
        cp_async_wait_group<1>(); /* this tile's K, while its V may still be in flight */
        __syncthreads();

        /* S = Q K^T: B = K^T, whose column n is key row n of the tile. One ldmatrix takes keys 8n..8n+7 for dim chunks
         * c and c + 1: matrix i holds dims 16c + 8i.., lane 8i + j points at key 8n + j */
        float s[kMmaKeys / 8][4];
        if (sees)
            for (int n = 0; n < kMmaKeys / 8; n++) {
                for (int e = 0; e < 4; e++) s[n][e] = 0.0f;
                const uint16_t *key = &k_tile[(8 * n + lane % 8) * kStride + 8 * (lane / 8)];
                for (int c = 0; c < HD / 16; c += 2) {
                    uint32_t b[4];
                    ldmatrix_x4(b, key + 16 * c, false);
                    mma_bf16_16x8x16(s[n], qa[c], b);
                    mma_bf16_16x8x16(s[n], qa[c + 1], b + 2);
                }
            }
        __syncthreads(); /* every warp is done with k_tile */
        stage_tile<HD>(k_tile, k, j0 + kMmaKeys, slice_hi, kv_stride, kvh);

        uint32_t pa[kMmaKeys / 16][4]; /* P rounded to bf16 as A fragments, chunk c: keys 16c..16c+15 */
        if (sees) softmax_tile<HD>(s, pa, o, row_max, row_sum, j0, tile_hi, row, begin, end, mask, row0, T, quad, sc);
        cp_async_wait_group<1>(); /* this tile's V, while the next K may still be in flight */
        __syncthreads();

        /* O += P V: B = V, whose column n is dim 8n + groupID, two keys per register */
        if (sees)
            for (int c = 0; c < kMmaKeys / 16; c++) {
                /* one transposing ldmatrix takes keys 16c..16c+15 for dim tiles n and n + 1: matrix i holds keys
                 * 16c + 8 (i % 2).. and dims 8 (n + i / 2).., lane 8i + j points at its row j */
                const uint16_t *rows = &v_tile[(16 * c + 8 * (lane / 8 % 2) + lane % 8) * kStride + 8 * (lane / 16)];
                for (int n = 0; n < HD / 8; n += 2) {
                    uint32_t b[4];
                    ldmatrix_x4(b, rows + 8 * n, true);
                    mma_bf16_16x8x16(o[n], pa[c], b);
                    mma_bf16_16x8x16(o[n + 1], pa[c], b + 2);
                }
            }
        __syncthreads(); /* every warp is done with v_tile */
        stage_tile<HD>(v_tile, v, j0 + kMmaKeys, slice_hi, kv_stride, kvh);
    }

    for (int i = 0; i < 2; i++) {
        if (row[i] >= T) continue;
        if (gridDim.z > 1) { /* a slice: its partial state, for attention_merge_kernel */
            float *state = partials + partial_at(blockIdx.z, row[i], h, T, n_heads, HD);
            if (quad == 0) state[0] = row_max[i] * 0.6931471805599453f, state[1] = row_sum[i]; /* base e again */
            for (int n = 0; n < HD / 8; n++) {
                state[2 + 8 * n + 2 * quad] = o[n][2 * i];
                state[2 + 8 * n + 2 * quad + 1] = o[n][2 * i + 1];
            }
        } else {
            float inv = row_sum[i] > 0.0f ? 1.0f / row_sum[i] : 0.0f; /* no visible key: zeros */
            uint16_t *dst = &out[row[i] * q_stride + h * HD + 2 * quad];
            for (int n = 0; n < HD / 8; n++) {
                *(uint32_t *)&dst[8 * n] =
                    pack_bf16x2(f32_to_bf16(o[n][2 * i] * inv), f32_to_bf16(o[n][2 * i + 1] * inv));
            }
        }
    }
}

/* Tensor cores for a head_dim they tile when there are queries enough to fill part of a block (a packed batch, a
 * prompt, a tree); the CUDA-core kernel for decoding steps (a few queries), other head sizes and tensors not 16-byte
 * aligned. */
void cuda_attention_bf16(uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                         const int32_t *key_begin, const int32_t *key_end, const uint8_t *mask, int row0, int T,
                         int n_heads, int n_kv_heads, int head_dim, AttentionScoring scoring) {
    const int kMinQueries = 16;
    bool aligned = ((uintptr_t)out | (uintptr_t)q | (uintptr_t)k | (uintptr_t)v) % kChunkBytes == 0;
    if (T < kMinQueries || (head_dim != 64 && head_dim != 128) || !aligned) {
        attention_cuda_cores(out, q, k, v, key_begin, key_end, mask, row0, T, n_heads, n_kv_heads, head_dim, scoring);
        return;
    }
    int splits = key_splits(T, kMmaQueries, row0, n_heads);
    float *partials = splits > 1 ? split_partials(head_dim) : NULL;
    dim3 grid(ceil_div(T, kMmaQueries), n_heads, splits), block(32 * kMmaWarps);
    profile_attention_flops(key_begin, key_end, T, n_heads, head_dim);
    if (head_dim == 64)
        LAUNCH(attention_mma_kernel<64>, grid, block, 0, out, partials, q, k, v, key_begin, key_end, mask, row0, T,
               n_heads, n_kv_heads, scoring);
    else
        LAUNCH(attention_mma_kernel<128>, grid, block, 0, out, partials, q, k, v, key_begin, key_end, mask, row0, T,
               n_heads, n_kv_heads, scoring);
    if (splits > 1) merge_slices(out, partials, splits, T, n_heads, head_dim);
}
