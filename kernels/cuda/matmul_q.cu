/* matmul and embedding on weights kept in their file's format (kernels/ops.def: matmul_q, embedding_q): each group of
 * 32 weights dequantised by common/dtype.h's rule, the CPU's, and multiplied with fp32 activations in fp32. A warp per
 * output row: the lanes take the row's groups in turn and their sums meet in a warp reduction. Written for being
 * exact and simple (a GPU keeps its base weights in bf16 by default: --precision auto), not for speed. */
#include "cuda_common.cuh"

static const unsigned kWarps = 4; /* output rows per block */
static const int kRowsAtOnce = 4; /* input rows that share each decoded group */

__global__ void matmul_q_kernel(float *out, int ldo, const float *in, const uint8_t *weight, DType type,
                                size_t row_bytes, const float *bias, int T, int IC, int OC) {
    int o = blockIdx.x * kWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (o >= OC) return; /* the whole warp: o is the same in its lanes */
    const uint8_t *row = weight + row_bytes * (size_t)o;
    int groups = IC / DTYPE_GROUP;
    for (int t0 = 0; t0 < T; t0 += kRowsAtOnce) {
        float acc[kRowsAtOnce] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int g = lane; g < groups; g += 32) {
            float w[DTYPE_GROUP];
            dtype_dequantize_group(type, row, g, w);
            for (int t = 0; t < kRowsAtOnce && t0 + t < T; t++) {
                const float *x = in + (size_t)(t0 + t) * IC + DTYPE_GROUP * g;
                for (int i = 0; i < DTYPE_GROUP; i++) acc[t] += w[i] * x[i];
            }
        }
        for (int t = 0; t < kRowsAtOnce; t++) {
            float sum = warp_sum(acc[t]);
            if (lane == 0 && t0 + t < T) out[(size_t)(t0 + t) * ldo + o] = sum + (bias ? bias[o] : 0.0f);
        }
    }
}

/* one thread per group of a row, the rows on grid y */
__global__ void embedding_q_kernel(float *out, const int32_t *tokens, const uint8_t *table, DType type,
                                   size_t row_bytes, int T, int C) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= C / DTYPE_GROUP) return;
    for (int t = blockIdx.y; t < T; t += gridDim.y)
        dtype_dequantize_group(type, table + row_bytes * (size_t)tokens[t], g, out + (size_t)t * C + DTYPE_GROUP * g);
}

static size_t checked_row_bytes(DType type, int IC, const char *op) {
    size_t row_bytes = dtype_row_bytes(type, IC);
    if (!dtype_is_packed_weight(type) || row_bytes == 0)
        fatal("%s: a %s weight cannot have rows of %d elements", op, dtype_name(type), IC);
    return row_bytes;
}

void cuda_matmul_q(float *out, int ldo, const float *in, const void *weight, DType type, const float *bias, int T,
                   int IC, int OC) {
    if (T == 0 || OC == 0) return;
    size_t row_bytes = checked_row_bytes(type, IC, "matmul_q");
    profile_next_bytes((double)row_bytes * OC + 4.0 * T * (IC + OC));
    LAUNCH(matmul_q_kernel, ceil_div((size_t)OC, kWarps), 32 * kWarps, 0, out, ldo, in, (const uint8_t *)weight, type,
           row_bytes, bias, T, IC, OC);
}

void cuda_embedding_q(float *out, const int32_t *tokens, const void *table, DType type, int T, int C) {
    if (T == 0 || C == 0) return;
    size_t row_bytes = checked_row_bytes(type, C, "embedding_q");
    profile_next_bytes(((double)row_bytes + 4.0 * C) * T);
    LAUNCH(embedding_q_kernel, row_grid(C / DTYPE_GROUP, T, 128), 128, 0, out, tokens, (const uint8_t *)table, type,
           row_bytes, T, C);
}
