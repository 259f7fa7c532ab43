/* Memory-bound element-wise ops: one thread per element; those over rows (embedding, the gated MLP's product) one per
 * column of a row with the rows on grid y (row_grid). */
#include "cuda_common.cuh"

static const unsigned kThreads = 256;

/* out[t, c] = table[tokens[t], c] widened to fp32 (a table of fp32 or bf16) */
template <class Elem>
__global__ void embedding_kernel(float *out, const int32_t *tokens, const Elem *table, int T, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int t = blockIdx.y; t < T; t += gridDim.y) out[(size_t)t * C + c] = load_f(&table[(size_t)tokens[t] * C + c]);
}

__global__ void to_bf16_kernel(uint16_t *out, const float *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_bf16(x[i]);
}

/* out [T, inter] from the gate/up rows [T, 2 inter] */
template <class Elem> __global__ void glu_kernel(Elem *out, const Elem *gate_up, int T, int inter, GluActivation act) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= inter) return;
    for (int t = blockIdx.y; t < T; t += gridDim.y) {
        const Elem *gate = gate_up + (size_t)t * 2 * inter + j;
        store_out(&out[(size_t)t * inter + j], glu_f(act, load_f(gate), load_f(gate + inter)));
    }
}

__global__ void scale_kernel(float *x, float s, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

__global__ void softcap_kernel(float *x, float cap, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = softcap_f(x[i], cap);
}

__global__ void residual_add_kernel(float *x, const float *y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

/* The row lists travel as a kernel argument: one launch, no upload. */
struct RowMoves {
    enum { kMax = 64 };
    int n;
    int32_t src[kMax], dst[kMax];
};

/* one thread per (block, 32-bit word of a row): the moves run in order in each thread, so a move that reads a row
 * an earlier one wrote sees the new values, as the sequential definition says */
__global__ void copy_rows_kernel(uint32_t *x, size_t block_words, RowMoves moves, size_t row_words) {
    size_t col = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= row_words) return;
    uint32_t *block = x + (size_t)blockIdx.y * block_words;
    for (int i = 0; i < moves.n; i++)
        block[(size_t)moves.dst[i] * row_words + col] = block[(size_t)moves.src[i] * row_words + col];
}

__global__ void resblock_forward_kernel(float *out, const float *x, const float *z, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i] + silu_f(z[i]);
}

__global__ void silu_backward_kernel(float *dz, const float *dout, const float *z, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dz[i] = dout[i] * silu_grad_f(z[i]);
}

void cuda_embedding(float *out, const int32_t *tokens, const float *table, int T, int C) {
    if (T == 0 || C == 0) return;
    profile_next_bytes(8.0 * T * C);
    LAUNCH(embedding_kernel<float>, row_grid(C, T, kThreads), kThreads, 0, out, tokens, table, T, C);
}
void cuda_embedding_bf16(float *out, const int32_t *tokens, const uint16_t *table, int T, int C) {
    if (T == 0 || C == 0) return;
    profile_next_bytes(6.0 * T * C);
    LAUNCH(embedding_kernel<uint16_t>, row_grid(C, T, kThreads), kThreads, 0, out, tokens, table, T, C);
}
void cuda_to_bf16(uint16_t *out, const float *x, size_t n) {
    if (n == 0) return;
    profile_next_bytes(6.0 * n);
    LAUNCH(to_bf16_kernel, ceil_div(n, kThreads), kThreads, 0, out, x, n);
}
void cuda_glu(float *out, const float *gate_up, int T, int inter, GluActivation act) {
    if (T == 0 || inter == 0) return;
    profile_next_bytes(12.0 * T * inter);
    LAUNCH(glu_kernel<float>, row_grid(inter, T, kThreads), kThreads, 0, out, gate_up, T, inter, act);
}
void cuda_glu_bf16(uint16_t *out, const uint16_t *gate_up, int T, int inter, GluActivation act) {
    if (T == 0 || inter == 0) return;
    profile_next_bytes(6.0 * T * inter);
    LAUNCH(glu_kernel<uint16_t>, row_grid(inter, T, kThreads), kThreads, 0, out, gate_up, T, inter, act);
}
void cuda_scale(float *x, float s, size_t n) {
    if (n == 0) return;
    profile_next_bytes(8.0 * n);
    LAUNCH(scale_kernel, ceil_div(n, kThreads), kThreads, 0, x, s, n);
}
void cuda_softcap(float *x, float cap, size_t n) {
    if (n == 0) return;
    profile_next_bytes(8.0 * n);
    LAUNCH(softcap_kernel, ceil_div(n, kThreads), kThreads, 0, x, cap, n);
}
void cuda_residual_add(float *x, const float *y, size_t n) {
    if (n == 0) return;
    profile_next_bytes(12.0 * n);
    LAUNCH(residual_add_kernel, ceil_div(n, kThreads), kThreads, 0, x, y, n);
}
void cuda_copy_rows(void *x, size_t block_bytes, int n_blocks, const int32_t *src, const int32_t *dst, int n,
                    size_t row_bytes) {
    if (row_bytes % 4 || block_bytes % 4)
        fatal("copy_rows: rows of %zu bytes in blocks of %zu: not whole words", row_bytes, block_bytes);
    size_t row_words = row_bytes / 4;
    if (n_blocks == 0 || row_words == 0) return;
    for (int i0 = 0; i0 < n; i0 += RowMoves::kMax) { /* chunks in stream order keep the sequential meaning */
        RowMoves moves;
        moves.n = n - i0 < RowMoves::kMax ? n - i0 : RowMoves::kMax;
        for (int i = 0; i < moves.n; i++) moves.src[i] = src[i0 + i], moves.dst[i] = dst[i0 + i];
        profile_next_bytes(2.0 * (double)row_bytes * moves.n * n_blocks);
        LAUNCH(copy_rows_kernel, dim3(ceil_div(row_words, kThreads), (unsigned)n_blocks), kThreads, 0, (uint32_t *)x,
               block_bytes / 4, moves, row_words);
    }
}
void cuda_resblock_forward(float *out, const float *x, const float *z, size_t n) {
    if (n == 0) return;
    profile_next_bytes(12.0 * n);
    LAUNCH(resblock_forward_kernel, ceil_div(n, kThreads), kThreads, 0, out, x, z, n);
}
void cuda_silu_backward(float *dz, const float *dout, const float *z, size_t n) {
    if (n == 0) return;
    profile_next_bytes(12.0 * n);
    LAUNCH(silu_backward_kernel, ceil_div(n, kThreads), kThreads, 0, dz, dout, z, n);
}

void cuda_fill_zero(void *ptr, size_t bytes) {
    profile_next_bytes((double)bytes);
    ProfileScope profile("fill_zero");
    CUDA_CHECK(cudaMemset(ptr, 0, bytes));
}
