/* Element-wise ops: embedding lookup (fp32 and bf16 tables), the gated MLP's product (SwiGLU 8 lanes at a time: its
 * exp, not memory, bounds it; GeLU-tanh by tanhf, one at a time), scaling, residual add, the heads' ResBlock, rounding
 * to bf16 and widening from it. */
#include <string.h>

#include "../../common/common.h"
#include "../math_common.h"
#include "cpu_ops.h"
#include "simd.h"

void cpu_embedding(float *out, const int32_t *tokens, const float *table, int T, int C) {
#pragma omp parallel for if ((size_t)T * C > PAR_MIN)
    for (int t = 0; t < T; t++) memcpy(out + (size_t)t * C, table + (size_t)tokens[t] * C, sizeof(float) * (size_t)C);
}

/* one row of SwiGLU, 8 lanes at a time (exp is most of its cost), the tail by glu_f */
static ALWAYS_INLINE void swiglu_row(float *out, const float *gate, const float *up, int inter) {
    int j = 0;
    for (; j + 8 <= inter; j += 8) vec8_store(out + j, vec8_silu(vec8_load(gate + j)) * vec8_load(up + j));
    for (; j < inter; j++) out[j] = glu_f(GLU_SILU, gate[j], up[j]);
}
SIMD_AVX2_FMA static void swiglu_row_avx2(float *out, const float *gate, const float *up, int inter) {
    swiglu_row(out, gate, up, inter);
}
static void swiglu_row_baseline(float *out, const float *gate, const float *up, int inter) {
    swiglu_row(out, gate, up, inter);
}

void cpu_embedding_bf16(float *out, const int32_t *tokens, const uint16_t *table, int T, int C) {
#pragma omp parallel for if ((size_t)T * C > PAR_MIN)
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c++) out[(size_t)t * C + c] = bf16_to_f32(table[(size_t)tokens[t] * C + c]);
}

static void gelu_tanh_row(float *out, const float *gate, const float *up, int inter) {
    for (int j = 0; j < inter; j++) out[j] = glu_f(GLU_GELU_TANH, gate[j], up[j]);
}

void cpu_glu(float *out, const float *gate_up, int T, int inter, GluActivation act) {
    void (*row)(float *, const float *, const float *, int) = act == GLU_GELU_TANH ? gelu_tanh_row
                                                              : simd_avx2_fma()    ? swiglu_row_avx2
                                                                                   : swiglu_row_baseline;
#pragma omp parallel for if ((size_t)T * inter > PAR_MIN)
    for (int t = 0; t < T; t++) {
        const float *gate = gate_up + (size_t)t * 2 * inter;
        row(out + (size_t)t * inter, gate, gate + inter, inter);
    }
}

void cpu_glu_bf16(uint16_t *out, const uint16_t *gate_up, int T, int inter, GluActivation act) {
#pragma omp parallel for if ((size_t)T * inter > PAR_MIN)
    for (int t = 0; t < T; t++) {
        const uint16_t *gate = gate_up + (size_t)t * 2 * inter, *up = gate + inter;
        for (int j = 0; j < inter; j++)
            out[(size_t)t * inter + j] = f32_to_bf16(glu_f(act, bf16_to_f32(gate[j]), bf16_to_f32(up[j])));
    }
}

void cpu_scale(float *x, float s, size_t n) {
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

void cpu_softcap(float *x, float cap, size_t n) {
#pragma omp parallel for if (n > PAR_MIN / 8)
    for (size_t i = 0; i < n; i++) x[i] = softcap_f(x[i], cap);
}

void cpu_copy_rows(void *x, size_t block_bytes, int n_blocks, const int32_t *src, const int32_t *dst, int n,
                   size_t row_bytes) {
    for (int b = 0; b < n_blocks; b++) {
        char *block = (char *)x + (size_t)b * block_bytes;
        for (int i = 0; i < n; i++)
            if (src[i] != dst[i])
                memmove(block + (size_t)dst[i] * row_bytes, block + (size_t)src[i] * row_bytes, row_bytes);
    }
}

void cpu_residual_add(float *x, const float *y, size_t n) {
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

void cpu_resblock_forward(float *out, uint16_t *out_bf16, float *z, const float *x, const float *bias, int T, int C) {
    size_t n = (size_t)T * C;
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        if (bias) z[i] += bias[i % (size_t)C];
        out[i] = x[i] + silu_f(z[i]);
        if (out_bf16) out_bf16[i] = f32_to_bf16(out[i]);
    }
}

void cpu_silu_backward(float *dz, uint16_t *dz_bf16, const float *dout, const float *z, size_t n) {
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        dz[i] = dout[i] * silu_grad_f(z[i]);
        if (dz_bf16) dz_bf16[i] = f32_to_bf16(dz[i]);
    }
}

void cpu_fill_zero(void *ptr, size_t bytes) { memset(ptr, 0, bytes); }

void cpu_to_bf16(uint16_t *out, const float *x, size_t n) {
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = f32_to_bf16(x[i]);
}

/* bf16 values widened to fp32 (exact), and into a new array */
void cpu_widen(float *out, const uint16_t *x, size_t n) {
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = bf16_to_f32(x[i]);
}
float *cpu_widened_copy(const uint16_t *x, size_t n) {
    float *out = xmalloc(sizeof(float) * (n ? n : 1));
    cpu_widen(out, x, n);
    return out;
}
