/* Memory-bound element-wise ops: one thread per element (embedding: per element of the output rows). */
#include "cuda_common.cuh"

static const unsigned kThreads = 256;

__global__ void embedding_kernel(float *out, const int32_t *tokens, const float *table, int T, int C) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * C) return;
    size_t t = i / C, c = i % C;
    out[i] = table[(size_t)tokens[t] * C + c];
}

__global__ void embedding_bf16_kernel(float *out, const int32_t *tokens, const uint16_t *table, int T, int C) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * C) return;
    size_t t = i / C, c = i % C;
    out[i] = bf16_to_f32(table[(size_t)tokens[t] * C + c]);
}

__global__ void to_bf16_kernel(uint16_t *out, const float *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_bf16(x[i]);
}

template <class Out> __global__ void swiglu_kernel(Out *out, const float *gate, const float *up, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) store_out(&out[i], swiglu_f(gate[i], up[i]));
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

/* one thread per (block, column): the moves run in order in each thread, so a move that reads a row an earlier
 * one wrote sees the new values, as the sequential definition says */
__global__ void copy_rows_kernel(float *x, size_t block_floats, RowMoves moves, int row_floats) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= row_floats) return;
    float *block = x + (size_t)blockIdx.y * block_floats;
    for (int i = 0; i < moves.n; i++)
        block[(size_t)moves.dst[i] * row_floats + col] = block[(size_t)moves.src[i] * row_floats + col];
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
    size_t n = (size_t)T * C;
    if (n) LAUNCH(embedding_kernel, ceil_div(n, kThreads), kThreads, 0, out, tokens, table, T, C);
}
void cuda_embedding_bf16(float *out, const int32_t *tokens, const uint16_t *table, int T, int C) {
    size_t n = (size_t)T * C;
    if (n) LAUNCH(embedding_bf16_kernel, ceil_div(n, kThreads), kThreads, 0, out, tokens, table, T, C);
}
void cuda_to_bf16(uint16_t *out, const float *x, size_t n) {
    if (n) LAUNCH(to_bf16_kernel, ceil_div(n, kThreads), kThreads, 0, out, x, n);
}
void cuda_swiglu(float *out, const float *gate, const float *up, size_t n) {
    if (n) LAUNCH(swiglu_kernel<float>, ceil_div(n, kThreads), kThreads, 0, out, gate, up, n);
}
void cuda_swiglu_bf16(uint16_t *out, const float *gate, const float *up, size_t n) {
    if (n) LAUNCH(swiglu_kernel<uint16_t>, ceil_div(n, kThreads), kThreads, 0, out, gate, up, n);
}
void cuda_residual_add(float *x, const float *y, size_t n) {
    if (n) LAUNCH(residual_add_kernel, ceil_div(n, kThreads), kThreads, 0, x, y, n);
}
void cuda_copy_rows(float *x, size_t block_floats, int n_blocks, const int32_t *src, const int32_t *dst, int n,
                    int row_floats) {
    if (n_blocks == 0 || row_floats == 0) return;
    for (int i0 = 0; i0 < n; i0 += RowMoves::kMax) { /* chunks in stream order keep the sequential meaning */
        RowMoves moves;
        moves.n = n - i0 < RowMoves::kMax ? n - i0 : RowMoves::kMax;
        for (int i = 0; i < moves.n; i++) moves.src[i] = src[i0 + i], moves.dst[i] = dst[i0 + i];
        LAUNCH(copy_rows_kernel, dim3(ceil_div((size_t)row_floats, kThreads), (unsigned)n_blocks), kThreads, 0, x,
               block_floats, moves, row_floats);
    }
}
void cuda_resblock_forward(float *out, const float *x, const float *z, size_t n) {
    if (n) LAUNCH(resblock_forward_kernel, ceil_div(n, kThreads), kThreads, 0, out, x, z, n);
}
void cuda_silu_backward(float *dz, const float *dout, const float *z, size_t n) {
    if (n) LAUNCH(silu_backward_kernel, ceil_div(n, kThreads), kThreads, 0, dz, dout, z, n);
}
