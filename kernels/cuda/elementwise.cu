/* Memory-bound element-wise ops: one thread per element, or per 16-byte vector of elements (W > 1: 4 fp32 or 8 bf16
 * values in one load or store) where the tensors are 16-byte aligned and, for those over rows (embedding, the gated
 * MLP's product: one thread per column group of a row, the rows on grid y, row_grid), the rows' lengths are multiples
 * of W. The per-element math is the same on both paths, so they give the same bits. */
#include "cuda_common.cuh"

static const unsigned kThreads = 256;

/* out[t, c] = table[tokens[t], c] widened to fp32 (a table of fp32 or bf16), W columns per thread */
template <class Elem, int W>
__global__ void embedding_kernel(float *out, const int32_t *tokens, const Elem *table, int T, int C) {
    int c = (blockIdx.x * blockDim.x + threadIdx.x) * W;
    if (c >= C) return;
    for (int t = blockIdx.y; t < T; t += gridDim.y) {
        float v[W];
        load_vec(&table[(size_t)tokens[t] * C + c], v);
        store_vec(&out[(size_t)t * C + c], v);
    }
}

/* out [T, inter] from the gate/up rows [T, 2 inter], W columns per thread */
template <class Elem, int W>
__global__ void glu_kernel(Elem *out, const Elem *gate_up, int T, int inter, GluActivation act) {
    int j = (blockIdx.x * blockDim.x + threadIdx.x) * W;
    if (j >= inter) return;
    for (int t = blockIdx.y; t < T; t += gridDim.y) {
        const Elem *gate = gate_up + (size_t)t * 2 * inter + j;
        float g[W], u[W], o[W];
        load_vec(gate, g);
        load_vec(gate + inter, u);
        for (int i = 0; i < W; i++) o[i] = glu_f(act, g[i], u[i]);
        store_vec(&out[(size_t)t * inter + j], o);
    }
}

/* The flat element-wise ops, out[i] = f(a[i], b[i]) over n elements (in place where out is a), as functors: one kernel
 * for all. A thread takes W consecutive elements (a 16-byte vector of each input and of out where W > 1), the last
 * thread a tail of fewer one by one. */
struct ScaleOp {
    static const bool kBinary = false;
    float s;
    __device__ float operator()(float x, float) const { return x * s; }
};
struct SoftcapOp {
    static const bool kBinary = false;
    float cap;
    __device__ float operator()(float x, float) const { return softcap_f(x, cap); }
};
struct AddOp {
    static const bool kBinary = true;
    __device__ float operator()(float x, float y) const { return x + y; }
};
struct RoundOp { /* to_bf16: the value itself, rounded by the bf16 store */
    static const bool kBinary = false;
    __device__ float operator()(float x, float) const { return x; }
};

template <int W, class Out, class F>
__global__ void map_kernel(Out *out, const float *a, const float *b, size_t n, F f) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * W;
    if (i >= n) return;
    if (i + W <= n) {
        float x[W], y[W] = {};
        load_vec(a + i, x);
        if constexpr (F::kBinary) load_vec(b + i, y);
        for (int e = 0; e < W; e++) x[e] = f(x[e], y[e]);
        store_vec(out + i, x);
    } else { /* the tail */
        for (; i < n; i++) store_out(&out[i], f(a[i], F::kBinary ? b[i] : 0.0f));
    }
}

/* out = f(a, b) over n elements: W elements per thread (16-byte vectors of each tensor: 4 fp32 values, or 8 for a bf16
 * out) where every tensor is 16-byte aligned, else one */
template <class Out, class F>
static void map_elements(const char *name, Out *out, const float *a, const float *b, size_t n, F f,
                         double bytes_per_element) {
    constexpr int kVec = vec_width<Out>() > 4 ? vec_width<Out>() : 4;
    if (n == 0) return;
    profile_next_bytes(bytes_per_element * (double)n);
    if (aligned16({out, a, b}))
        LAUNCH_AS(name, (map_kernel<kVec, Out, F>), ceil_div(ceil_div(n, kVec), kThreads), kThreads, 0, out, a, b, n,
                  f);
    else LAUNCH_AS(name, (map_kernel<1, Out, F>), ceil_div(n, kThreads), kThreads, 0, out, a, b, n, f);
}

/* The row lists travel as a kernel argument: one launch, no upload. */
struct RowMoves {
    enum { kMax = 64 };
    int n;
    int32_t src[kMax], dst[kMax];
};

/* one thread per (block, word of a row: 4 bytes, or 16 (uint4) where rows and blocks are whole 16-byte vectors and x
 * is aligned): the moves run in order in each thread, so a move that reads a row an earlier one wrote sees the new
 * values, as the sequential definition says */
__device__ __forceinline__ void copy_word(uint32_t *dst, const uint32_t *src) { *dst = *src; }
__device__ __forceinline__ void copy_word(uint4 *dst, const uint4 *src) { st16(dst, ld16(src)); }
template <class Word> __global__ void copy_rows_kernel(Word *x, size_t block_words, RowMoves moves, size_t row_words) {
    size_t col = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= row_words) return;
    Word *block = x + (size_t)blockIdx.y * block_words;
    for (int i = 0; i < moves.n; i++)
        copy_word(&block[(size_t)moves.dst[i] * row_words + col], &block[(size_t)moves.src[i] * row_words + col]);
}

template <class Elem> static void embedding(float *out, const int32_t *tokens, const Elem *table, int T, int C) {
    constexpr int kVec = vec_width<Elem>() > 4 ? vec_width<Elem>() : 4; /* 8 bf16 in, two fp32 vectors out */
    static const std::string name = kernel_name("embedding_kernel", {elem_name<Elem>(), "1"}),
                             vec_name = kernel_name("embedding_kernel", {elem_name<Elem>(), std::to_string(kVec)});
    if (T == 0 || C == 0) return;
    profile_next_bytes((4.0 + sizeof(Elem)) * T * C);
    if (C % kVec == 0 && aligned16({out, table}))
        LAUNCH_AS(vec_name.c_str(), (embedding_kernel<Elem, kVec>), row_grid(C / kVec, T, kThreads), kThreads, 0, out,
                  tokens, table, T, C);
    else
        LAUNCH_AS(name.c_str(), (embedding_kernel<Elem, 1>), row_grid(C, T, kThreads), kThreads, 0, out, tokens, table,
                  T, C);
}
void cuda_embedding(float *out, const int32_t *tokens, const float *table, int T, int C) {
    embedding(out, tokens, table, T, C);
}
void cuda_embedding_bf16(float *out, const int32_t *tokens, const uint16_t *table, int T, int C) {
    embedding(out, tokens, table, T, C);
}
void cuda_to_bf16(uint16_t *out, const float *x, size_t n) {
    map_elements("to_bf16_kernel", out, x, (const float *)NULL, n, RoundOp{}, 6.0);
}
template <class Elem> static void glu(Elem *out, const Elem *gate_up, int T, int inter, GluActivation act) {
    constexpr int kVec = vec_width<Elem>();
    static const std::string name = kernel_name("glu_kernel", {elem_name<Elem>(), "1"}),
                             vec_name = kernel_name("glu_kernel", {elem_name<Elem>(), std::to_string(kVec)});
    if (T == 0 || inter == 0) return;
    profile_next_bytes(3.0 * sizeof(Elem) * T * inter);
    if (inter % kVec == 0 && aligned16({out, gate_up}))
        LAUNCH_AS(vec_name.c_str(), (glu_kernel<Elem, kVec>), row_grid(inter / kVec, T, kThreads), kThreads, 0, out,
                  gate_up, T, inter, act);
    else
        LAUNCH_AS(name.c_str(), (glu_kernel<Elem, 1>), row_grid(inter, T, kThreads), kThreads, 0, out, gate_up, T,
                  inter, act);
}
void cuda_glu(float *out, const float *gate_up, int T, int inter, GluActivation act) {
    glu(out, gate_up, T, inter, act);
}
void cuda_glu_bf16(uint16_t *out, const uint16_t *gate_up, int T, int inter, GluActivation act) {
    glu(out, gate_up, T, inter, act);
}
void cuda_scale(float *x, float s, size_t n) {
    map_elements("scale_kernel", x, x, (const float *)NULL, n, ScaleOp{s}, 8.0);
}
void cuda_softcap(float *x, float cap, size_t n) {
    map_elements("softcap_kernel", x, x, (const float *)NULL, n, SoftcapOp{cap}, 8.0);
}
void cuda_residual_add(float *x, const float *y, size_t n) {
    map_elements("residual_add_kernel", x, x, y, n, AddOp{}, 12.0);
}
void cuda_copy_rows(void *x, size_t block_bytes, int n_blocks, const int32_t *src, const int32_t *dst, int n,
                    size_t row_bytes) {
    if (row_bytes % 4 || block_bytes % 4)
        fatal("copy_rows: rows of %zu bytes in blocks of %zu: not whole words", row_bytes, block_bytes);
    bool vector = row_bytes % 16 == 0 && block_bytes % 16 == 0 && aligned16({x});
    size_t word = vector ? 16 : 4, row_words = row_bytes / word;
    if (n_blocks == 0 || row_words == 0) return;
    for (int i0 = 0; i0 < n; i0 += RowMoves::kMax) { /* chunks in stream order keep the sequential meaning */
        RowMoves moves;
        moves.n = n - i0 < RowMoves::kMax ? n - i0 : RowMoves::kMax;
        for (int i = 0; i < moves.n; i++) moves.src[i] = src[i0 + i], moves.dst[i] = dst[i0 + i];
        profile_next_bytes(2.0 * (double)row_bytes * moves.n * n_blocks);
        dim3 grid(ceil_div(row_words, kThreads), (unsigned)n_blocks);
        if (vector)
            LAUNCH_AS("copy_rows_kernel<uint4>", copy_rows_kernel<uint4>, grid, kThreads, 0, (uint4 *)x,
                      block_bytes / word, moves, row_words);
        else
            LAUNCH_AS("copy_rows_kernel<uint32_t>", copy_rows_kernel<uint32_t>, grid, kThreads, 0, (uint32_t *)x,
                      block_bytes / word, moves, row_words);
    }
}
/* The heads' chain, one pass each way: z += bias, out = x + silu(z) and its bf16 copy for the next GEMM (forward);
 * dz = dout * silu'(z) and its bf16 copy for the gradient GEMMs (backward). W elements per thread: 8 (16-byte vectors
 * of the bf16 output, two of each fp32 tensor) where every tensor is 16-byte aligned (and, forward, the rows and so the
 * bias's slices are whole vectors), else 1. */
template <int W>
__global__ void resblock_forward_kernel(float *out, uint16_t *out_bf16, float *z, const float *x, const float *bias,
                                        size_t n, int C) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * W;
    if (i >= n) return;
    float zv[W], xv[W];
    load_vec(z + i, zv);
    load_vec(x + i, xv);
    if (bias) {
        float bv[W];
        load_vec(bias + i % (size_t)C, bv);
        for (int e = 0; e < W; e++) zv[e] += bv[e];
        store_vec(z + i, zv);
    }
    for (int e = 0; e < W; e++) xv[e] += silu_f(zv[e]);
    store_vec(out + i, xv);
    if (out_bf16) store_vec(out_bf16 + i, xv);
}

template <int W>
__global__ void silu_backward_kernel(float *dz, uint16_t *dz_bf16, const float *dout, const float *z, size_t n) {
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * W;
    if (i >= n) return;
    if (i + W > n) { /* the tail */
        for (; i < n; i++) {
            dz[i] = dout[i] * silu_grad_f(z[i]);
            if (dz_bf16) dz_bf16[i] = f32_to_bf16(dz[i]);
        }
        return;
    }
    float dv[W], zv[W];
    load_vec(dout + i, dv);
    load_vec(z + i, zv);
    for (int e = 0; e < W; e++) dv[e] *= silu_grad_f(zv[e]);
    store_vec(dz + i, dv);
    if (dz_bf16) store_vec(dz_bf16 + i, dv);
}

void cuda_resblock_forward(float *out, uint16_t *out_bf16, float *z, const float *x, const float *bias, int T, int C) {
    size_t n = (size_t)T * C;
    if (n == 0) return;
    profile_next_bytes((12.0 + (bias ? 4 : 0) + (out_bf16 ? 2 : 0)) * (double)n);
    if (C % 8 == 0 && aligned16({out, out_bf16, z, x, bias}))
        LAUNCH_AS("resblock_forward_kernel<8>", resblock_forward_kernel<8>, ceil_div(ceil_div(n, 8), kThreads),
                  kThreads, 0, out, out_bf16, z, x, bias, n, C);
    else
        LAUNCH_AS("resblock_forward_kernel<1>", resblock_forward_kernel<1>, ceil_div(n, kThreads), kThreads, 0, out,
                  out_bf16, z, x, bias, n, C);
}
void cuda_silu_backward(float *dz, uint16_t *dz_bf16, const float *dout, const float *z, size_t n) {
    if (n == 0) return;
    profile_next_bytes((12.0 + (dz_bf16 ? 2 : 0)) * (double)n);
    if (aligned16({dz, dz_bf16, dout, z}))
        LAUNCH_AS("silu_backward_kernel<8>", silu_backward_kernel<8>, ceil_div(ceil_div(n, 8), kThreads), kThreads, 0,
                  dz, dz_bf16, dout, z, n);
    else
        LAUNCH_AS("silu_backward_kernel<1>", silu_backward_kernel<1>, ceil_div(n, kThreads), kThreads, 0, dz, dz_bf16,
                  dout, z, n);
}

void cuda_fill_zero(void *ptr, size_t bytes) {
    profile_next_bytes((double)bytes);
    ProfileScope profile("fill_zero");
    CUDA_CHECK(cudaMemset(ptr, 0, bytes));
}
