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
typedef uint8_t Bytes16 __attribute__((vector_size(16)));
typedef int8_t SBytes16 __attribute__((vector_size(16)));
typedef uint16_t Halves16 __attribute__((vector_size(32)));

/* input rows multiplied with each decoded group while it is in registers; more rows go through a decoded copy */
#define FUSED_ROWS 4

static ALWAYS_INLINE Vec16 vec16_load(const float *p) {
    Vec16 v;
    memcpy(&v, p, sizeof v);
    return v;
}
static ALWAYS_INLINE Int16 bytes16(const uint8_t *p) {
    Bytes16 b;
    memcpy(&b, p, sizeof b);
    return __builtin_convertvector(b, Int16);
}
static ALWAYS_INLINE Vec16 vec16_of(Int16 q) { return __builtin_convertvector(q, Vec16); }
static ALWAYS_INLINE float vec16_sum(Vec16 v) {
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += v[i];
    return s;
}
/* 16 IEEE halves to floats: exact, as dtype_half (F16C's conversion in the x86 builds) */
static ALWAYS_INLINE Vec16 halves16(const uint8_t *p) {
#if defined(__FLT16_MAX__)
    typedef _Float16 F16x16 __attribute__((vector_size(32)));
    F16x16 h;
    memcpy(&h, p, sizeof h);
    return __builtin_convertvector(h, Vec16);
#else
    Vec16 v;
    for (int i = 0; i < 16; i++) v[i] = dtype_half(p + 2 * i);
    return v;
#endif
}
static ALWAYS_INLINE float half1(const uint8_t *p) {
#if defined(__FLT16_MAX__)
    _Float16 h;
    memcpy(&h, p, sizeof h);
    return (float)h;
#else
    return dtype_half(p);
#endif
}

/* Group g (elements 32 g .. 32 g + 31) of a row of `type`, as dtype_dequantize_group computes it: elements 0-15 in
 * *lo, 16-31 in *hi. `type` is a constant wherever this is inlined, so the switch folds away. */
static ALWAYS_INLINE void decode_group(DType type, const uint8_t *row, int g, Vec16 *lo, Vec16 *hi) {
    switch (type) {
    case DT_F32:
        *lo = vec16_load((const float *)row + 32 * g);
        *hi = vec16_load((const float *)row + 32 * g + 16);
        return;
    case DT_F16:
        *lo = halves16(row + 64 * g);
        *hi = halves16(row + 64 * g + 32);
        return;
    case DT_BF16: {
        Halves16 h[2];
        memcpy(h, row + 64 * g, sizeof h);
        *lo = (Vec16)(__builtin_convertvector(h[0], Int16) << 16);
        *hi = (Vec16)(__builtin_convertvector(h[1], Int16) << 16);
        return;
    }
    case DT_Q8_0: {
        const uint8_t *blk = row + 34 * g;
        SBytes16 q[2];
        memcpy(q, blk + 2, sizeof q);
        float d = half1(blk);
        *lo = d * __builtin_convertvector(q[0], Vec16);
        *hi = d * __builtin_convertvector(q[1], Vec16);
        return;
    }
    case DT_Q4_0: {
        const uint8_t *blk = row + 18 * g;
        Int16 q = bytes16(blk + 2);
        float d = half1(blk);
        *lo = d * vec16_of((q & 15) - 8);
        *hi = d * vec16_of((q >> 4) - 8);
        return;
    }
    case DT_Q4_1: {
        const uint8_t *blk = row + 20 * g;
        Int16 q = bytes16(blk + 4);
        float d = half1(blk), m = half1(blk + 2);
        *lo = d * vec16_of(q & 15) + m; /* d q is exact: fusing the add rounds the same */
        *hi = d * vec16_of(q >> 4) + m;
        return;
    }
    case DT_Q4_K:
    case DT_Q5_K: {
        const uint8_t *blk = row + (type == DT_Q4_K ? 144 : 176) * (g / 8);
        int j = g % 8, sc, mn;
        dtype_k_scale_min(blk + 4, j, &sc, &mn);
        float dj = half1(blk) * (float)sc, mj = half1(blk + 2) * (float)mn;
        const uint8_t *qs = blk + (type == DT_Q4_K ? 16 : 48) + 32 * (j / 2);
        int shift = 4 * (j % 2);
        Int16 q0 = (bytes16(qs) >> shift) & 15, q1 = (bytes16(qs + 16) >> shift) & 15;
        if (type == DT_Q5_K) {
            q0 |= ((bytes16(blk + 16) >> j) & 1) << 4;
            q1 |= ((bytes16(blk + 32) >> j) & 1) << 4;
        }
        *lo = dj * vec16_of(q0) - mj;
        *hi = dj * vec16_of(q1) - mj;
        return;
    }
    case DT_Q6_K: {
        const uint8_t *blk = row + 210 * (g / 8);
        int e0 = 32 * (g % 8), h = e0 / 128, r = e0 % 128;
        const uint8_t *ql = blk + 64 * h + r % 64, *qh = blk + 128 + 32 * h;
        int lo_shift = 4 * (r / 64), hi_shift = 2 * (r / 32);
        Int16 q0 = ((bytes16(ql) >> lo_shift) & 15) | (((bytes16(qh) >> hi_shift) & 3) << 4);
        Int16 q1 = ((bytes16(ql + 16) >> lo_shift) & 15) | (((bytes16(qh + 16) >> hi_shift) & 3) << 4);
        const int8_t *scales = (const int8_t *)(blk + 192);
        float d = half1(blk + 208);
        *lo = (d * (float)scales[e0 / 16]) * vec16_of(q0 - 32);
        *hi = (d * (float)scales[e0 / 16 + 1]) * vec16_of(q1 - 32);
        return;
    }
    default: /* not a weight format: cpu_matmul_q refuses it before any row */
        *lo = *hi = (Vec16){0};
        return;
    }
}

/* out[(t0 + t) * ldo + o + r] for r < R weight rows (R <= 2) and t < N input rows (N <= FUSED_ROWS): each group of the
 * R rows decoded once and multiplied with the N rows' inputs; R and N are constants once inlined. */
static ALWAYS_INLINE void dot_group_rows(float *out, int ldo, const float *in, const uint8_t *weight, DType type,
                                         size_t row_bytes, int IC, int o, int R, int t0, int N) {
    const uint8_t *w[2] = {weight + row_bytes * (size_t)o, weight + row_bytes * (size_t)(o + R - 1)};
    const float *x[FUSED_ROWS];
    for (int t = 0; t < FUSED_ROWS; t++) x[t] = in + (size_t)(t0 + (t < N ? t : 0)) * IC;
    Vec16 acc[2][FUSED_ROWS];
    memset(acc, 0, sizeof acc);
    int groups = IC / DTYPE_GROUP;
    size_t group_bytes = row_bytes / (size_t)groups;
    for (int g = 0; g < groups; g++) {
        Vec16 lo[2], hi[2];
#pragma GCC unroll 2
        for (int r = 0; r < R; r++) {
            /* the rows after these, from DRAM, while these are in use */
            __builtin_prefetch(w[r] + 2 * row_bytes + group_bytes * (size_t)g);
            decode_group(type, w[r], g, &lo[r], &hi[r]);
        }
#pragma GCC unroll 4
        for (int t = 0; t < N; t++) {
            Vec16 xl = vec16_load(x[t] + 32 * g), xh = vec16_load(x[t] + 32 * g + 16);
#pragma GCC unroll 2
            for (int r = 0; r < R; r++) {
                acc[r][t] += lo[r] * xl;
                acc[r][t] += hi[r] * xh;
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < N; t++) out[(size_t)(t0 + t) * ldo + o + r] = vec16_sum(acc[r][t]);
}

/* dot_group_rows with literal R and N, so that each case inlines with its accumulators in registers */
static ALWAYS_INLINE void dot_rows(float *out, int ldo, const float *in, const uint8_t *weight, DType type,
                                   size_t row_bytes, int IC, int o, int pair, int t0, int N) {
#define DOT(R, N) dot_group_rows(out, ldo, in, weight, type, row_bytes, IC, o, R, t0, N)
    if (pair) {
        switch (N) {
        case 4: DOT(2, 4); break;
        case 3: DOT(2, 3); break;
        case 2: DOT(2, 2); break;
        default: DOT(2, 1);
        }
    } else {
        switch (N) {
        case 4: DOT(1, 4); break;
        case 3: DOT(1, 3); break;
        case 2: DOT(1, 2); break;
        default: DOT(1, 1);
        }
    }
#undef DOT
}

/* a row of `type` decoded into dst (IC floats) */
static ALWAYS_INLINE void decode_row(DType type, const uint8_t *row, int IC, float *dst) {
    for (int g = 0; g < IC / DTYPE_GROUP; g++) {
        Vec16 lo, hi;
        decode_group(type, row, g, &lo, &hi);
        memcpy(dst + 32 * g, &lo, sizeof lo);
        memcpy(dst + 32 * g + 16, &hi, sizeof hi);
    }
}

/* Weight rows o0 <= o < o1 for T <= CPU_SMALL_ROWS input rows. Up to FUSED_ROWS rows decode each group in registers;
 * more decode each pair of weight rows once into `scratch` (2 IC floats) and run the fp32 case over them. */
static ALWAYS_INLINE void rows_typed(float *out, int ldo, const float *in, const uint8_t *weight, DType type, int T,
                                    int IC, int o0, int o1, float *scratch) {
    size_t row_bytes = dtype_row_bytes(type, IC);
    for (int o = o0; o < o1; o += 2) {
        int pair = o + 1 < o1;
        if (T <= FUSED_ROWS) {
            dot_rows(out, ldo, in, weight, type, row_bytes, IC, o, pair, 0, T);
            continue;
        }
        decode_row(type, weight + row_bytes * (size_t)o, IC, scratch);
        if (pair) decode_row(type, weight + row_bytes * (size_t)(o + 1), IC, scratch + IC);
        for (int t0 = 0; t0 < T; t0 += FUSED_ROWS) {
            int n = T - t0 < FUSED_ROWS ? T - t0 : FUSED_ROWS;
            /* the decoded pair as a 2-row fp32 matrix whose row 0 is weight row o */
            dot_rows(out + o, ldo, in, (const uint8_t *)scratch, DT_F32, sizeof(float) * (size_t)IC, IC, 0, pair,
                     t0, n);
        }
    }
}

/* one build of the kernel: the type's case inlined into each */
#define ROWS_BUILD(suffix, attr)                                                                                       \
    attr static void rows_##suffix(float *out, int ldo, const float *in, const uint8_t *weight, DType type, int T,   \
                                   int IC, int o0, int o1, float *scratch) {                                           \
        switch (type) {                                                                                                \
        case DT_F16: rows_typed(out, ldo, in, weight, DT_F16, T, IC, o0, o1, scratch); break;                          \
        case DT_BF16: rows_typed(out, ldo, in, weight, DT_BF16, T, IC, o0, o1, scratch); break;                        \
        case DT_Q8_0: rows_typed(out, ldo, in, weight, DT_Q8_0, T, IC, o0, o1, scratch); break;                        \
        case DT_Q4_0: rows_typed(out, ldo, in, weight, DT_Q4_0, T, IC, o0, o1, scratch); break;                        \
        case DT_Q4_1: rows_typed(out, ldo, in, weight, DT_Q4_1, T, IC, o0, o1, scratch); break;                        \
        case DT_Q4_K: rows_typed(out, ldo, in, weight, DT_Q4_K, T, IC, o0, o1, scratch); break;                        \
        case DT_Q5_K: rows_typed(out, ldo, in, weight, DT_Q5_K, T, IC, o0, o1, scratch); break;                        \
        case DT_Q6_K: rows_typed(out, ldo, in, weight, DT_Q6_K, T, IC, o0, o1, scratch); break;                        \
        default: break;                                                                                                \
        }                                                                                                              \
    }                                                                                                                  \
    attr static void decode_rows_##suffix(DType type, const uint8_t *rows, size_t row_bytes, int n, int IC,          \
                                          float *dst) {                                                                \
        for (int i = 0; i < n; i++) decode_row(type, rows + row_bytes * (size_t)i, IC, dst + (size_t)IC * i);         \
    }
ROWS_BUILD(avx512, SIMD_AVX512)
ROWS_BUILD(avx2, SIMD_AVX2_FMA)
ROWS_BUILD(baseline, )
#undef ROWS_BUILD

typedef void RowsFn(float *, int, const float *, const uint8_t *, DType, int, int, int, int, float *);
typedef void DecodeFn(DType, const uint8_t *, size_t, int, int, float *);

static void check_type(DType type, int IC) {
    if (!dtype_is_packed_weight(type) || dtype_row_bytes(type, IC) == 0)
        fatal("matmul_q: a %s weight cannot have rows of %d elements", dtype_name(type), IC);
}

void cpu_matmul_q(float *out, int ldo, const float *in, const void *weight, DType type, const float *bias, int T,
                  int IC, int OC) {
    if (T == 0 || OC == 0) return;
    check_type(type, IC);
    SimdLevel level = simd_level();
    RowsFn *rows = level == SIMD_LEVEL_AVX512 ? rows_avx512 : level == SIMD_LEVEL_AVX2 ? rows_avx2 : rows_baseline;
    DecodeFn *decode = level == SIMD_LEVEL_AVX512 ? decode_rows_avx512 : level == SIMD_LEVEL_AVX2 ? decode_rows_avx2
                                                                                     : decode_rows_baseline;
    size_t row_bytes = dtype_row_bytes(type, IC);
    if (T <= CPU_SMALL_ROWS) {
#pragma omp parallel if ((size_t)OC * IC > 65536)
        {
            /* each thread an even share of the weight rows, in pairs */
            int n = omp_get_num_threads(), id = omp_get_thread_num(), pairs = (OC + 1) / 2;
            int o0 = 2 * (int)((int64_t)pairs * id / n), o1 = 2 * (int)((int64_t)pairs * (id + 1) / n);
            float *scratch = T > FUSED_ROWS ? xmalloc(sizeof(float) * 2 * (size_t)IC) : NULL;
            rows(out, ldo, in, weight, type, T, IC, o0, o1 < OC ? o1 : OC, scratch);
            free(scratch);
        }
    } else { /* tiles of about 4 MB of decoded rows through sgemm */
        int tile = IC >= (1 << 20) ? 1 : (1 << 20) / IC;
        float *w = xmalloc(sizeof(float) * (size_t)(tile < OC ? tile : OC) * IC);
        for (int o0 = 0; o0 < OC; o0 += tile) {
            int n = OC - o0 < tile ? OC - o0 : tile;
#pragma omp parallel for if ((size_t)n * IC > 65536)
            for (int i = 0; i < n; i++)
                decode(type, (const uint8_t *)weight + row_bytes * (size_t)(o0 + i), row_bytes, 1, IC,
                       w + (size_t)IC * i);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n, IC, 1.0f, in, IC, w, IC, 0.0f, out + o0, ldo);
        }
        free(w);
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
