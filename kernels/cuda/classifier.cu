/* Fused softmax cross-entropy (llm.c style): one block per row reads the logits twice and writes the
 * gradient over them (for the heads on bf16 weights both in bf16: the GEMMs write and read it so), so probabilities for
 * the whole vocabulary are never stored.
 * Pass 1: each thread keeps an online (max, sum of exp) over its strided logits (and a teacher's, for soft targets)
 * and counts the logits above the ranked id's; the block merges them. Pass 2: dlogits = dscale * (softmax - onehot),
 * or dscale * (softmax - softmax(teacher)) with the KL's terms summed. */
#include "cuda_common.cuh"

static const unsigned kThreads = 512;

/* Merges online-softmax states: sum is relative to max. */
__device__ __forceinline__ void softmax_merge(float *max, float *sum, float other_max, float other_sum) {
    float m = fmaxf(*max, other_max);
    if (m == -INFINITY) return; /* both empty */
    *sum = *sum * expf(*max - m) + other_sum * expf(other_max - m);
    *max = m;
}

/* adds x to an online-softmax state */
__device__ __forceinline__ void softmax_add(float *max, float *sum, float x) {
    if (x == -INFINITY) return; /* exp(-inf - -inf) would be NaN while max is still -inf */
    if (x > *max) {
        *sum *= expf(*max - x);
        *max = x;
    }
    *sum += expf(x - *max);
}

/* the block's online-softmax state, in every thread (scratch: __shared__ [32] each) */
__device__ __forceinline__ void block_softmax_state(float *max, float *sum, float *max_scratch, float *sum_scratch) {
    for (int offset = 16; offset > 0; offset /= 2) {
        float other_max = __shfl_xor_sync(0xffffffffu, *max, offset);
        float other_sum = __shfl_xor_sync(0xffffffffu, *sum, offset);
        softmax_merge(max, sum, other_max, other_sum);
    }
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    if (lane == 0) max_scratch[warp] = *max, sum_scratch[warp] = *sum;
    __syncthreads();
    *max = -INFINITY, *sum = 0.0f;
    for (int w = 0; w < n_warps; w++) softmax_merge(max, sum, max_scratch[w], sum_scratch[w]);
}

/* The count of the row's logits strictly greater than bar, over the block (every thread gets it). */
template <class Elem>
__device__ __forceinline__ int block_count_above(const Elem *row, int V, float bar, int *scratch) {
    int n = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) n += load_f(&row[i]) > bar;
    return block_sum(n, scratch);
}

/* Elem: float or bf16 (the heads' GEMM's logits), the gradient of the same type written over them (dlogits ==
 * logits: every thread reads the values it needs of the row before a block reduction, and the gradient's pass writes
 * only the elements it has just read); dlogits NULL: losses and ranks alone. The passes over the row take W consecutive
 * elements per thread: a 16-byte vector (4 fp32 or 8 bf16 values) where rows are whole vectors (V % W == 0) and the
 * buffers aligned, else 1. */
template <class Elem, int W>
__global__ void softmax_xent_kernel(const Elem *logits, Elem *dlogits, float *losses, int32_t *ranks,
                                    XentTargets targets, int V, float dscale) {
    __shared__ float max_scratch[32], sum_scratch[32];
    __shared__ int rank_scratch[32];
    int t = blockIdx.x, target = targets.targets[t], id = targets.ranked[t];
    const Elem *row = logits + (size_t)t * V;
    /* the ranked logit, and what the count is against: +inf (nothing above it) where there is none to count */
    float ranked = id >= 0 ? load_f(&row[id]) : 0.0f, bar = id >= 0 && isfinite(ranked) ? ranked : INFINITY;
    /* the conditions below are uniform over the block: no gradient wanted, a row without a target */
    Elem *grad = dlogits ? dlogits + (size_t)t * V : NULL;
    if (target < 0) {
        int above = bar < INFINITY ? block_count_above(row, V, bar, rank_scratch) : 0;
        __syncthreads(); /* every thread has read the ranked logit before the gradient is written over the row */
        if (grad)
            for (int i = threadIdx.x; i < V; i += blockDim.x) store_out(&grad[i], 0.0f);
        if (threadIdx.x == 0) {
            losses[t] = 0.0f;
            ranks[t] = rank_of(id, ranked, above);
        }
        return;
    }
    float target_logit = load_f(&row[target]), max = -INFINITY, sum = 0.0f;
    int above = 0;
    for (int i = threadIdx.x * W; i < V; i += blockDim.x * W) {
        float x[W];
        load_vec(row + i, x);
        for (int e = 0; e < W; e++) {
            above += x[e] > bar;
            softmax_add(&max, &sum, x[e]);
        }
    }
    block_softmax_state(&max, &sum, max_scratch, sum_scratch);
    above = block_sum(above, rank_scratch);
    if (threadIdx.x == 0) {
        losses[t] = logf(sum) - (target_logit - max);
        ranks[t] = rank_of(id, ranked, above);
    }
    if (!grad) return;
    float scale = dscale / sum;
    for (int i = threadIdx.x * W; i < V; i += blockDim.x * W) {
        float x[W];
        load_vec(row + i, x);
        for (int e = 0; e < W; e++) {
            float g = expf(x[e] - max) * scale;
            x[e] = i + e == target ? g - dscale : g;
        }
        store_vec(grad + i, x);
    }
}

/* Soft targets, q = softmax(teacher row): both rows' online softmax states and the ranked id's count in one pass,
 * then q, p, the gradient dscale * (p - q) and the terms of KL(q || p) = sum q (log q - log p) (double, as the CPU's;
 * a term with q = 0 is 0). */
template <class Elem, int W>
__global__ void soft_xent_kernel(const Elem *logits, Elem *dlogits, float *losses, int32_t *ranks, XentTargets targets,
                                 int V, float dscale) {
    __shared__ float max_scratch[32], sum_scratch[32], tmax_scratch[32], tsum_scratch[32];
    __shared__ int rank_scratch[32];
    __shared__ double kl_scratch[32];
    int t = blockIdx.x, id = targets.ranked[t];
    const Elem *row = logits + (size_t)t * V;
    const float *teacher = targets.teacher + (size_t)t * V;
    float ranked = id >= 0 ? load_f(&row[id]) : 0.0f, bar = id >= 0 && isfinite(ranked) ? ranked : INFINITY;
    Elem *grad = dlogits ? dlogits + (size_t)t * V : NULL;
    float max = -INFINITY, sum = 0.0f, tmax = -INFINITY, tsum = 0.0f;
    int above = 0;
    for (int i = threadIdx.x * W; i < V; i += blockDim.x * W) {
        float x[W], q[W];
        load_vec(row + i, x);
        load_vec(teacher + i, q);
        for (int e = 0; e < W; e++) {
            above += x[e] > bar;
            softmax_add(&max, &sum, x[e]);
            softmax_add(&tmax, &tsum, q[e]);
        }
    }
    block_softmax_state(&max, &sum, max_scratch, sum_scratch);
    block_softmax_state(&tmax, &tsum, tmax_scratch, tsum_scratch);
    above = block_sum(above, rank_scratch);
    double lse = max + log((double)sum), tlse = tmax + log((double)tsum), kl = 0.0; /* log-sum-exps */
    for (int i = threadIdx.x * W; i < V; i += blockDim.x * W) {
        float x[W], tx[W];
        load_vec(row + i, x);
        load_vec(teacher + i, tx);
        for (int e = 0; e < W; e++) {
            float p = expf(x[e] - max) / sum, q = expf(tx[e] - tmax) / tsum;
            if (q > 0) kl += q * ((tx[e] - tlse) - (x[e] - lse));
            x[e] = dscale * (p - q);
        }
        if (grad) store_vec(grad + i, x);
    }
    kl = block_sum(kl, kl_scratch);
    if (threadIdx.x == 0) {
        losses[t] = (float)kl;
        ranks[t] = rank_of(id, ranked, above);
    }
}

template <class Elem, int W>
static void launch_softmax_xent(const Elem *logits, Elem *dlogits, float *losses, int32_t *ranks, XentTargets targets,
                                int T, int V, float dscale) {
    static const std::string hard = kernel_name("softmax_xent_kernel", {elem_name<Elem>(), std::to_string(W)}),
                             soft = kernel_name("soft_xent_kernel", {elem_name<Elem>(), std::to_string(W)});
    if (targets.teacher)
        LAUNCH_AS(soft.c_str(), (soft_xent_kernel<Elem, W>), T, kThreads, 0, logits, dlogits, losses, ranks, targets, V,
                  dscale);
    else
        LAUNCH_AS(hard.c_str(), (softmax_xent_kernel<Elem, W>), T, kThreads, 0, logits, dlogits, losses, ranks, targets,
                  V, dscale);
}

template <class Elem>
static void softmax_xent(const Elem *logits, Elem *dlogits, float *losses, int32_t *ranks, XentTargets targets, int T,
                         int V, float dscale) {
    constexpr int kVec = vec_width<Elem>();
    if (T == 0) return;
    double teacher_bytes = targets.teacher ? 4.0 * T * V : 0;
    profile_next_bytes((double)T * V * sizeof(Elem) * (dlogits ? 2 : 1) + teacher_bytes + 20.0 * T);
    if (V % kVec == 0 && aligned16({logits, dlogits, targets.teacher}))
        launch_softmax_xent<Elem, kVec>(logits, dlogits, losses, ranks, targets, T, V, dscale);
    else launch_softmax_xent<Elem, 1>(logits, dlogits, losses, ranks, targets, T, V, dscale);
}

void cuda_softmax_xent(float *logits, float *losses, int32_t *ranks, XentTargets targets, int T, int V, float dscale) {
    softmax_xent(logits, logits, losses, ranks, targets, T, V, dscale);
}

void cuda_softmax_xent_bf16(uint16_t *logits, int grads, float *losses, int32_t *ranks, XentTargets targets, int T,
                            int V, float dscale) {
    softmax_xent(logits, grads ? logits : NULL, losses, ranks, targets, T, V, dscale);
}

/* The ranks of given ids, one block per row: each thread counts its strided entries above the id's, the block sums. */
__global__ void rank_ids_kernel(int32_t *ranks, const float *x, const int32_t *ids, int cols) {
    __shared__ int scratch[32];
    const float *row = x + (size_t)blockIdx.x * cols;
    int id = ids[blockIdx.x];
    float v = id >= 0 ? row[id] : 0.0f;
    int above = id >= 0 && isfinite(v) ? block_count_above(row, cols, v, scratch) : 0; /* uniform over the block */
    if (threadIdx.x == 0) ranks[blockIdx.x] = rank_of(id, v, above);
}

void cuda_rank_ids(int32_t *ranks, const float *x, const int32_t *ids, int rows, int cols) {
    if (rows == 0) return;
    profile_next_bytes(4.0 * rows * cols + 8.0 * rows);
    LAUNCH(rank_ids_kernel, rows, kThreads, 0, ranks, x, ids, cols);
}

/* Typical acceptance's statistics, one block per row: the softmax at a temperature (an online pass), then the
 * entropy in the reference's form (terms and sum in double, as the CPU's) and the row's candidates' probabilities. */
__global__ void softmax_entropy_kernel(float *entropy, float *probs, const float *x, const int32_t *ids, int V,
                                       int n_ids, float temperature) {
    __shared__ float max_scratch[32], sum_scratch[32];
    __shared__ double entropy_scratch[32];
    const float *row = x + (size_t)blockIdx.x * V;
    float max = -INFINITY, sum = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) softmax_add(&max, &sum, row[i] / temperature);
    block_softmax_state(&max, &sum, max_scratch, sum_scratch);
    double h = 0.0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float p = expf(row[i] / temperature - max) / sum;
        h -= p * log((double)p + 1e-5);
    }
    h = block_sum(h, entropy_scratch);
    if (threadIdx.x == 0) entropy[blockIdx.x] = (float)h;
    for (int j = threadIdx.x; j < n_ids; j += blockDim.x) {
        int id = ids[(size_t)blockIdx.x * n_ids + j];
        probs[(size_t)blockIdx.x * n_ids + j] = id >= 0 ? expf(row[id] / temperature - max) / sum : 0.0f;
    }
}

void cuda_softmax_entropy(float *entropy, float *probs, const float *x, const int32_t *ids, int rows, int cols,
                          int n_ids, float temperature) {
    if (rows == 0) return;
    profile_next_bytes(4.0 * rows * cols + 8.0 * rows * n_ids);
    LAUNCH(softmax_entropy_kernel, rows, kThreads, 0, entropy, probs, x, ids, cols, n_ids, temperature);
}

/* --- top-k: one block per row, k rounds; round j takes the first entry (topk_after order) after the one
 * round j-1 took, so nothing is stored but the previous pick. k <= 16 passes over a row of logits are a few
 * microseconds, against downloading the row. --- */
static const unsigned kTopkThreads = 256;

/* (v, i) before (bv, bi) in top-k order; i < 0 is "none", after everything */
__device__ __forceinline__ bool topk_before(float v, int i, float bv, int bi) {
    return i >= 0 && (bi < 0 || topk_after(bv, bi, v, i));
}

/* the warp's first (v, i) in top-k order, in every lane */
__device__ __forceinline__ void warp_first(float *v, int *i) {
    for (int offset = 16; offset > 0; offset /= 2) {
        float ov = __shfl_xor_sync(0xffffffffu, *v, offset);
        int oi = __shfl_xor_sync(0xffffffffu, *i, offset);
        if (topk_before(ov, oi, *v, *i)) *v = ov, *i = oi;
    }
}

__global__ void top_k_kernel(int32_t *idx, const float *x, int cols, int k) {
    __shared__ float warp_v[32];
    __shared__ int warp_i[32];
    __shared__ float prev_v;
    __shared__ int prev_i;
    const float *row = x + (size_t)blockIdx.x * cols;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    for (int j = 0; j < k; j++) {
        float pv = j ? prev_v : 0.0f;
        int pi = j ? prev_i : -1;
        float bv = 0.0f;
        int bi = -1;
        if (j == 0 || pi >= 0)
            for (int c = threadIdx.x; c < cols; c += blockDim.x) {
                float v = row[c];
                if ((j == 0 ? !isnan(v) : topk_after(v, c, pv, pi)) && topk_before(v, c, bv, bi)) bv = v, bi = c;
            }
        warp_first(&bv, &bi);
        __syncthreads(); /* the previous round's prev and scratch are read */
        if (lane == 0) warp_v[warp] = bv, warp_i[warp] = bi;
        __syncthreads();
        if (warp == 0) {
            bv = lane < n_warps ? warp_v[lane] : 0.0f;
            bi = lane < n_warps ? warp_i[lane] : -1;
            warp_first(&bv, &bi);
            if (lane == 0) {
                idx[(size_t)blockIdx.x * k + j] = bi;
                prev_v = bv, prev_i = bi;
            }
        }
        __syncthreads();
    }
}

void cuda_top_k(int32_t *idx, const float *x, int rows, int cols, int k) {
    if (rows == 0 || k == 0) return;
    if (k > 16) fatal("cuda top_k: k = %d, at most 16", k);
    profile_next_bytes(4.0 * rows * cols);
    LAUNCH(top_k_kernel, rows, kTopkThreads, 0, idx, x, cols, k);
}
