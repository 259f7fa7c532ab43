/* Linear layer on weights kept in their file's format (F16, BF16, GGUF's block formats): each group of 32 weights
 * is dequantised in registers by common/dtype.h's rule (the same floats) and multiplied with the fp32 activations,
 * products summed in fp32. Decoding reads the weights once per token, so reading 4-8x fewer bytes than fp32 weights is
 * what makes it fast; tree verification's few rows take each decoded group for all of them; prefill and training
 * (more than CPU_SMALL_ROWS rows) dequantise tiles of rows for OpenBLAS sgemm. Built for AVX-512, for AVX2 with FMA
 * and for baseline x86-64 / any other target (simd.h), chosen at run time. */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/common.h"
#include "cpu_ops.h"
#include "simd.h"

typedef float Vec16 __attribute__((vector_size(64)));
typedef int32_t Int16 __attribute__((vector_size(64)));

/* input rows multiplied with each decoded group while it is in registers */
#define FUSED_ROWS 4

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
static const Vec16 IOTA16 = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
#define Q_ISA 2
#define Q_NAME(f) f##_avx512
#define Q_ATTR SIMD_AVX512
#include "matmul_q_body.h"
#undef Q_ISA
#undef Q_NAME
#undef Q_ATTR
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define Q_ISA 1
#define Q_NAME(f) f##_avx2
#define Q_ATTR SIMD_AVX2_FMA
#include "matmul_q_body.h"
#undef Q_ISA
#undef Q_NAME
#undef Q_ATTR
#pragma GCC pop_options
#endif
#define Q_ISA 0
#define Q_NAME(f) f##_baseline
#define Q_ATTR
#include "matmul_q_body.h"
#undef Q_ISA
#undef Q_NAME
#undef Q_ATTR

/* the entry points of the build this CPU runs (simd.h's simd_level) */
typedef struct {
    void (*rows)(float *, int, const float *, const uint8_t *, DType, int, int, int, int);
    void (*decode_rows)(DType, const uint8_t *, size_t, int, int, float *);
} Build;
static Build build(void) {
#if defined(__x86_64__) || defined(__i386__)
    SimdLevel level = simd_level();
    if (level == SIMD_LEVEL_AVX512) return (Build){rows_avx512, decode_rows_avx512};
    if (level == SIMD_LEVEL_AVX2) return (Build){rows_avx2, decode_rows_avx2};
#endif
    return (Build){rows_baseline, decode_rows_baseline};
}

int cpu_matmul_q_simd(void) {
#if defined(__x86_64__) || defined(__i386__)
    return simd_level() >= SIMD_LEVEL_AVX2;
#else
    return 0;
#endif
}

static void check_type(DType type, int IC) {
    if (!dtype_is_packed_weight(type) || dtype_row_bytes(type, IC) == 0)
        fatal("matmul_q: a %s weight cannot have rows of %d elements", dtype_name(type), IC);
}

void cpu_widen_rows(float *dst, const void *weight, DType type, int o0, int n, int IC) {
    if (type == DT_BF16) { /* the bf16 GEMMs' reference widens this way */
        cpu_widen(dst, (const uint16_t *)weight + (size_t)o0 * IC, (size_t)n * IC);
        return;
    }
    check_type(type, IC);
    Build b = build();
    size_t row_bytes = dtype_row_bytes(type, IC);
    const uint8_t *rows = (const uint8_t *)weight + row_bytes * (size_t)o0;
#pragma omp parallel
    { /* each thread a share of the rows */
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int r0 = (int)((int64_t)n * id / nt), r1 = (int)((int64_t)n * (id + 1) / nt);
        b.decode_rows(type, rows + row_bytes * (size_t)r0, row_bytes, r1 - r0, IC, dst + (size_t)IC * r0);
    }
}

void cpu_matmul_q(float *out, int ldo, const float *in, const void *weight, DType type, const float *bias, int T,
                  int IC, int OC) {
    if (T == 0 || OC == 0) return;
    check_type(type, IC);
    Build b = build();
    if (T <= CPU_SMALL_ROWS) {
#pragma omp parallel if ((size_t)OC * IC > 65536)
        {
            /* each thread an even share of the weight rows, in pairs */
            int n = omp_get_num_threads(), id = omp_get_thread_num(), pairs = (OC + 1) / 2;
            int o0 = 2 * (int)((int64_t)pairs * id / n), o1 = 2 * (int)((int64_t)pairs * (id + 1) / n);
            b.rows(out, ldo, in, weight, type, T, IC, o0, o1 < OC ? o1 : OC);
        }
    } else { /* prefill, training: decoded tiles of rows through sgemm */
        cpu_matmul_widened(out, ldo, in, weight, type, T, IC, OC, 0.0f);
    }
    if (bias) {
#pragma omp parallel for if ((size_t)T * OC > 65536)
        for (int t = 0; t < T; t++)
            for (int o = 0; o < OC; o++) out[(size_t)t * ldo + o] += bias[o];
    }
}

void cpu_embedding_q(float *out, const int32_t *tokens, const void *table, DType type, int T, int C) {
    check_type(type, C);
    size_t row_bytes = dtype_row_bytes(type, C);
    for (int t = 0; t < T; t++) {
        const uint8_t *row = (const uint8_t *)table + row_bytes * (size_t)tokens[t];
        for (int g = 0; g < C / DTYPE_GROUP; g++)
            dtype_dequantize_group(type, row, g, out + (size_t)t * C + DTYPE_GROUP * g);
    }
}
