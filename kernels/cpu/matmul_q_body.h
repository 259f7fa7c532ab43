/* One build of matmul_q's kernels, included by kernels/cpu/matmul_q.c once per instruction set with Q_ISA (0: baseline,
 * 1: AVX2 + FMA + F16C, 2: AVX-512), Q_NAME(f) (f with the build's suffix) and Q_ATTR (its target attribute) defined,
 * and the compiler's target set to it (#pragma GCC target), so that the intrinsics below are available. GCC's generic
 * vector code widens bytes to 32-bit lanes one at a time; the intrinsics do it in one instruction. (No include guard:
 * it is included once per build.) */

#if Q_ISA == 2
static ALWAYS_INLINE Int16 Q_NAME(bytes16)(const uint8_t *p) {
    return (Int16)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}
static ALWAYS_INLINE Int16 Q_NAME(sbytes16)(const uint8_t *p) {
    return (Int16)_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p));
}
static ALWAYS_INLINE Int16 Q_NAME(shorts16)(const uint8_t *p) {
    return (Int16)_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
}
static ALWAYS_INLINE Vec16 Q_NAME(halves16)(const uint8_t *p) {
    return (Vec16)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static ALWAYS_INLINE Vec16 Q_NAME(vec16_of)(Int16 q) { return (Vec16)_mm512_cvtepi32_ps((__m512i)q); }
static ALWAYS_INLINE float Q_NAME(vec16_sum)(Vec16 v) { return _mm512_reduce_add_ps((__m512)v); }
static ALWAYS_INLINE float Q_NAME(half1)(const uint8_t *p) { return _cvtsh_ss((unsigned short)(p[0] | (p[1] << 8))); }
/* Table look-ups in registers: a 4-bit format's weight is one of 16 values per group, d k + m for k = 0..15, each
 * computed once by the group's rule (the same floats) and then picked by the nibble (vpermps reads an index's low 4
 * bits, vpermt2ps its low 5), one instruction where converting and scaling each weight takes two. */
static ALWAYS_INLINE Vec16 Q_NAME(lookup16)(Vec16 table, Int16 idx) {
    return (Vec16)_mm512_permutexvar_ps((__m512i)idx, (__m512)table);
}
static ALWAYS_INLINE Vec16 Q_NAME(lookup32)(Vec16 low, Vec16 high, Int16 idx) {
    return (Vec16)_mm512_permutex2var_ps((__m512)low, (__m512i)idx, (__m512)high);
}
#elif Q_ISA == 1
/* a 16-lane vector from two 8-lane halves */
static ALWAYS_INLINE Int16 Q_NAME(join)(__m256i lo, __m256i hi) {
    union {
        __m256i h[2];
        Int16 v;
    } u = {{lo, hi}};
    return u.v;
}
static ALWAYS_INLINE Int16 Q_NAME(bytes16)(const uint8_t *p) {
    return Q_NAME(join)(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)),
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8))));
}
static ALWAYS_INLINE Int16 Q_NAME(sbytes16)(const uint8_t *p) {
    return Q_NAME(join)(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)),
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8))));
}
static ALWAYS_INLINE Int16 Q_NAME(shorts16)(const uint8_t *p) {
    return Q_NAME(join)(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)),
                        _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 16))));
}
static ALWAYS_INLINE Vec16 Q_NAME(halves16)(const uint8_t *p) {
    union {
        __m256 h[2];
        Vec16 v;
    } u = {{_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
            _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)))}};
    return u.v;
}
static ALWAYS_INLINE Vec16 Q_NAME(vec16_of)(Int16 q) {
    union {
        Int16 v;
        __m256i h[2];
    } in = {q};
    union {
        __m256 h[2];
        Vec16 v;
    } out = {{_mm256_cvtepi32_ps(in.h[0]), _mm256_cvtepi32_ps(in.h[1])}};
    return out.v;
}
static ALWAYS_INLINE float Q_NAME(vec16_sum)(Vec16 v) {
    union {
        Vec16 v;
        __m256 h[2];
    } u = {v};
    __m256 s8 = _mm256_add_ps(u.h[0], u.h[1]);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s4, _mm_movehdup_ps(s4)));
}
static ALWAYS_INLINE float Q_NAME(half1)(const uint8_t *p) { return _cvtsh_ss((unsigned short)(p[0] | (p[1] << 8))); }
#else
static ALWAYS_INLINE Int16 Q_NAME(bytes16)(const uint8_t *p) {
    Bytes16 b;
    memcpy(&b, p, sizeof b);
    return __builtin_convertvector(b, Int16);
}
static ALWAYS_INLINE Int16 Q_NAME(sbytes16)(const uint8_t *p) {
    SBytes16 b;
    memcpy(&b, p, sizeof b);
    return __builtin_convertvector(b, Int16);
}
static ALWAYS_INLINE Int16 Q_NAME(shorts16)(const uint8_t *p) {
    Shorts16 h;
    memcpy(&h, p, sizeof h);
    return __builtin_convertvector(h, Int16);
}
static ALWAYS_INLINE Vec16 Q_NAME(halves16)(const uint8_t *p) {
    Vec16 v;
    for (int i = 0; i < 16; i++) v[i] = dtype_half(p + 2 * i);
    return v;
}
static ALWAYS_INLINE Vec16 Q_NAME(vec16_of)(Int16 q) { return __builtin_convertvector(q, Vec16); }
static ALWAYS_INLINE float Q_NAME(vec16_sum)(Vec16 v) {
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += v[i];
    return s;
}
static ALWAYS_INLINE float Q_NAME(half1)(const uint8_t *p) { return dtype_half(p); }
#endif

/* Group g (elements 32 g .. 32 g + 31) of a row of `type`, as dtype_dequantize_group computes it: elements 0-15 in
 * *lo, 16-31 in *hi. `type` is a constant wherever this is inlined, so the switch folds away. */
static ALWAYS_INLINE void Q_NAME(decode_group)(DType type, const uint8_t *row, int g, Vec16 *lo, Vec16 *hi) {
    switch (type) {
    case DT_F32:
        *lo = vec16_load((const float *)row + 32 * g);
        *hi = vec16_load((const float *)row + 32 * g + 16);
        return;
    case DT_F16:
        *lo = Q_NAME(halves16)(row + 64 * g);
        *hi = Q_NAME(halves16)(row + 64 * g + 32);
        return;
    case DT_BF16: {
        *lo = (Vec16)(Q_NAME(shorts16)(row + 64 * g) << 16);
        *hi = (Vec16)(Q_NAME(shorts16)(row + 64 * g + 32) << 16);
        return;
    }
    case DT_Q8_0: {
        const uint8_t *blk = row + 34 * g;
        float d = Q_NAME(half1)(blk);
        *lo = d * Q_NAME(vec16_of)(Q_NAME(sbytes16)(blk + 2));
        *hi = d * Q_NAME(vec16_of)(Q_NAME(sbytes16)(blk + 18));
        return;
    }
    case DT_Q4_0: {
        const uint8_t *blk = row + 18 * g;
        Int16 q = Q_NAME(bytes16)(blk + 2);
        float d = Q_NAME(half1)(blk);
#if Q_ISA == 2
        Vec16 table = d * (IOTA16 - 8.0f); /* the 16 values a nibble stands for */
        *lo = Q_NAME(lookup16)(table, q);
        *hi = Q_NAME(lookup16)(table, q >> 4);
#else
        *lo = d * Q_NAME(vec16_of)((q & 15) - 8);
        *hi = d * Q_NAME(vec16_of)((q >> 4) - 8);
#endif
        return;
    }
    case DT_Q4_1: {
        const uint8_t *blk = row + 20 * g;
        Int16 q = Q_NAME(bytes16)(blk + 4);
#if Q_ISA == 2
        /* d and m converted together, each then broadcast */
        int32_t dm_bits;
        memcpy(&dm_bits, blk, sizeof dm_bits);
        __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(dm_bits));
        Vec16 d = (Vec16)_mm512_broadcastss_ps(dm), m = (Vec16)_mm512_broadcastss_ps(_mm_movehdup_ps(dm));
        Vec16 table = d * IOTA16 + m; /* d q is exact: fusing the add rounds the same */
        *lo = Q_NAME(lookup16)(table, q);
        *hi = Q_NAME(lookup16)(table, q >> 4);
#else
        float d = Q_NAME(half1)(blk), m = Q_NAME(half1)(blk + 2);
        *lo = d * Q_NAME(vec16_of)(q & 15) + m;
        *hi = d * Q_NAME(vec16_of)(q >> 4) + m;
#endif
        return;
    }
    case DT_Q4_K:
    case DT_Q5_K: {
        const uint8_t *blk = row + (type == DT_Q4_K ? 144 : 176) * (g / 8);
        int j = g % 8, sc, mn;
        dtype_k_scale_min(blk + 4, j, &sc, &mn);
        float dj = Q_NAME(half1)(blk) * (float)sc, mj = Q_NAME(half1)(blk + 2) * (float)mn;
        const uint8_t *qs = blk + (type == DT_Q4_K ? 16 : 48) + 32 * (j / 2);
        int shift = 4 * (j % 2);
        Int16 q0 = (Q_NAME(bytes16)(qs) >> shift) & 15, q1 = (Q_NAME(bytes16)(qs + 16) >> shift) & 15;
        if (type == DT_Q5_K) {
            q0 |= ((Q_NAME(bytes16)(blk + 16) >> j) & 1) << 4;
            q1 |= ((Q_NAME(bytes16)(blk + 32) >> j) & 1) << 4;
        }
#if Q_ISA == 2
        Vec16 table = dj * IOTA16 - mj;
        if (type == DT_Q4_K) {
            *lo = Q_NAME(lookup16)(table, q0);
            *hi = Q_NAME(lookup16)(table, q1);
        } else { /* 32 values: the fifth bit picks the upper table */
            Vec16 upper = dj * (IOTA16 + 16.0f) - mj;
            *lo = Q_NAME(lookup32)(table, upper, q0);
            *hi = Q_NAME(lookup32)(table, upper, q1);
        }
#else
        *lo = dj * Q_NAME(vec16_of)(q0) - mj;
        *hi = dj * Q_NAME(vec16_of)(q1) - mj;
#endif
        return;
    }
    case DT_Q6_K: {
        const uint8_t *blk = row + 210 * (g / 8);
        int e0 = 32 * (g % 8), h = e0 / 128, r = e0 % 128;
        const uint8_t *ql = blk + 64 * h + r % 64, *qh = blk + 128 + 32 * h;
        int lo_shift = 4 * (r / 64), hi_shift = 2 * (r / 32);
        Int16 q0 = ((Q_NAME(bytes16)(ql) >> lo_shift) & 15) | (((Q_NAME(bytes16)(qh) >> hi_shift) & 3) << 4);
        Int16 q1 = ((Q_NAME(bytes16)(ql + 16) >> lo_shift) & 15) | (((Q_NAME(bytes16)(qh + 16) >> hi_shift) & 3) << 4);
        const int8_t *scales = (const int8_t *)(blk + 192);
        float d = Q_NAME(half1)(blk + 208);
        *lo = (d * (float)scales[e0 / 16]) * Q_NAME(vec16_of)(q0 - 32);
        *hi = (d * (float)scales[e0 / 16 + 1]) * Q_NAME(vec16_of)(q1 - 32);
        return;
    }
    default: /* not a weight format: cpu_matmul_q refuses it before any row */
        *lo = *hi = (Vec16){0};
        return;
    }
}

/* out[(t0 + t) * ldo + o + r] for r < R weight rows (R <= 2) and t < N input rows (N <= FUSED_ROWS): each group of the
 * R rows decoded once and multiplied with the N rows' inputs; R and N are constants once inlined. */
static ALWAYS_INLINE void Q_NAME(dot_group_rows)(float *out, int ldo, const float *in, const uint8_t *weight,
                                                 DType type, size_t row_bytes, int IC, int o, int R, int t0, int N) {
    const uint8_t *w[2] = {weight + row_bytes * (size_t)o, weight + row_bytes * (size_t)(o + R - 1)};
    const float *x[FUSED_ROWS];
    for (int t = 0; t < FUSED_ROWS; t++) x[t] = in + (size_t)(t0 + (t < N ? t : 0)) * IC;
    /* each group's halves in sums of their own (two chains of FMAs per row), so that a row's sum is made in one order
     * whatever T and its place among the rows: tree verification then reproduces a one-row step bit for bit */
    Vec16 acc[2][FUSED_ROWS], acc_hi[2][FUSED_ROWS];
    for (int r = 0; r < R; r++) /* only those in use: a memset of all of them cost a tenth of a short row */
        for (int t = 0; t < N; t++) acc[r][t] = acc_hi[r][t] = (Vec16){0};
    int groups = IC / DTYPE_GROUP;
    size_t group_bytes = row_bytes / (size_t)groups;
    for (int g = 0; g < groups; g++) {
        Vec16 lo[2], hi[2];
#pragma GCC unroll 2
        for (int r = 0; r < R; r++) {
            /* the rows after these, from DRAM, while these are in use */
            __builtin_prefetch(w[r] + 2 * row_bytes + group_bytes * (size_t)g);
            Q_NAME(decode_group)(type, w[r], g, &lo[r], &hi[r]);
        }
#pragma GCC unroll 4
        for (int t = 0; t < N; t++) {
            Vec16 xl = vec16_load(x[t] + 32 * g), xh = vec16_load(x[t] + 32 * g + 16);
#pragma GCC unroll 2
            for (int r = 0; r < R; r++) {
                acc[r][t] += lo[r] * xl;
                acc_hi[r][t] += hi[r] * xh;
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < N; t++) out[(size_t)(t0 + t) * ldo + o + r] = Q_NAME(vec16_sum)(acc[r][t] + acc_hi[r][t]);
}

/* dot_group_rows with literal R and N, so that each case inlines with its accumulators in registers */
static ALWAYS_INLINE void Q_NAME(dot_rows)(float *out, int ldo, const float *in, const uint8_t *weight, DType type,
                                           size_t row_bytes, int IC, int o, int pair, int t0, int N) {
#define DOT(R, N) Q_NAME(dot_group_rows)(out, ldo, in, weight, type, row_bytes, IC, o, R, t0, N)
    if (pair) {
        switch (N) {
        case 4:
            DOT(2, 4);
            break;
        case 3:
            DOT(2, 3);
            break;
        case 2:
            DOT(2, 2);
            break;
        default:
            DOT(2, 1);
        }
    } else {
        switch (N) {
        case 4:
            DOT(1, 4);
            break;
        case 3:
            DOT(1, 3);
            break;
        case 2:
            DOT(1, 2);
            break;
        default:
            DOT(1, 1);
        }
    }
#undef DOT
}

/* a row of `type` decoded into dst (IC floats) */
static ALWAYS_INLINE void Q_NAME(decode_row)(DType type, const uint8_t *row, int IC, float *dst) {
    for (int g = 0; g < IC / DTYPE_GROUP; g++) {
        Vec16 lo, hi;
        Q_NAME(decode_group)(type, row, g, &lo, &hi);
        memcpy(dst + 32 * g, &lo, sizeof lo);
        memcpy(dst + 32 * g + 16, &hi, sizeof hi);
    }
}

/* Weight rows o0 <= o < o1 for T <= CPU_SMALL_ROWS input rows, FUSED_ROWS at a time, each pass decoding the weights
 * again: decoding a pair of rows once into a buffer and reading it back for every FUSED_ROWS rows measured slower
 * (a 5-row tree step 1.2x, 8 rows 1.3x; bench_matmul_q) than decoding in registers again. */
static ALWAYS_INLINE void Q_NAME(rows_typed)(float *out, int ldo, const float *in, const uint8_t *weight, DType type,
                                             int T, int IC, int o0, int o1) {
    size_t row_bytes = dtype_row_bytes(type, IC);
    for (int o = o0; o < o1; o += 2)
        for (int t0 = 0; t0 < T; t0 += FUSED_ROWS)
            Q_NAME(dot_rows)
            (out, ldo, in, weight, type, row_bytes, IC, o, o + 1 < o1, t0, T - t0 < FUSED_ROWS ? T - t0 : FUSED_ROWS);
}

/* the build's entry points: the type's case inlined into each */
Q_ATTR static void Q_NAME(rows)(float *out, int ldo, const float *in, const uint8_t *weight, DType type, int T, int IC,
                                int o0, int o1) {
    switch (type) {
    case DT_F16:
        Q_NAME(rows_typed)(out, ldo, in, weight, DT_F16, T, IC, o0, o1);
        break;
    case DT_BF16:
        Q_NAME(rows_typed)(out, ldo, in, weight, DT_BF16, T, IC, o0, o1);
        break;
    case DT_Q8_0:
        Q_NAME(rows_typed)(out, ldo, in, weight, DT_Q8_0, T, IC, o0, o1);
        break;
    case DT_Q4_0:
        Q_NAME(rows_typed)(out, ldo, in, weight, DT_Q4_0, T, IC, o0, o1);
        break;
    case DT_Q4_1:
        Q_NAME(rows_typed)(out, ldo, in, weight, DT_Q4_1, T, IC, o0, o1);
        break;
    case DT_Q4_K:
        Q_NAME(rows_typed)(out, ldo, in, weight, DT_Q4_K, T, IC, o0, o1);
        break;
    case DT_Q5_K:
        Q_NAME(rows_typed)(out, ldo, in, weight, DT_Q5_K, T, IC, o0, o1);
        break;
    case DT_Q6_K:
        Q_NAME(rows_typed)(out, ldo, in, weight, DT_Q6_K, T, IC, o0, o1);
        break;
    default:
        break;
    }
}

Q_ATTR static void Q_NAME(decode_rows)(DType type, const uint8_t *rows, size_t row_bytes, int n, int IC, float *dst) {
    for (int i = 0; i < n; i++) Q_NAME(decode_row)(type, rows + row_bytes * (size_t)i, IC, dst + (size_t)IC * i);
}
