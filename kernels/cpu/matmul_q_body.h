/* One build of matmul_q's kernels, included by kernels/cpu/matmul_q.c once per instruction set with Q_ISA (0: baseline,
 * 1: AVX2 + FMA + F16C, 2: AVX-512), Q_NAME(f) (f with the build's suffix) and Q_ATTR (its target attribute) defined,
 * and the compiler's target set to it (#pragma GCC target), so that the intrinsics below are available. (No include
 * guard: it is included once per build.)
 *
 * A build works in vectors of its width, QW floats (16 on AVX-512, else 8: GCC lowers wider generic vectors through
 * the stack on AVX2, 15x slower), a group of 32 weights being QP = 32 / QW of them. The primitives widen QW bytes,
 * shorts or halves to 32-bit lanes in one instruction each on x86 (GCC's generic vector code widens them one lane at a
 * time). */

#if Q_ISA == 2
#define QW 16
typedef Vec16 Q_NAME(QVec);
typedef Int16 Q_NAME(QInt);
static ALWAYS_INLINE Int16 Q_NAME(bytes)(const uint8_t *p) {
    return (Int16)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}
static ALWAYS_INLINE Int16 Q_NAME(sbytes)(const uint8_t *p) {
    return (Int16)_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p));
}
static ALWAYS_INLINE Int16 Q_NAME(shorts)(const uint8_t *p) {
    return (Int16)_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
}
static ALWAYS_INLINE Vec16 Q_NAME(halves)(const uint8_t *p) {
    return (Vec16)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static ALWAYS_INLINE Vec16 Q_NAME(floats_of)(Int16 q) { return (Vec16)_mm512_cvtepi32_ps((__m512i)q); }
static ALWAYS_INLINE Vec16 Q_NAME(load)(const float *p) { return (Vec16)_mm512_loadu_ps(p); }
static ALWAYS_INLINE float Q_NAME(sum)(Vec16 v) { return _mm512_reduce_add_ps((__m512)v); }
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
/* 16 in lane i where bit e0 + i of h is set, else 0 (a Q5_0/Q5_1 element's fifth bit, in place) */
static ALWAYS_INLINE Int16 Q_NAME(fifth_bits)(uint32_t h, int e0) {
    return (Int16)_mm512_maskz_set1_epi32((__mmask16)(h >> e0), 16);
}
#elif Q_ISA == 1
#define QW 8
typedef Vec8 Q_NAME(QVec);
typedef Int8 Q_NAME(QInt);
static ALWAYS_INLINE Int8 Q_NAME(bytes)(const uint8_t *p) {
    return (Int8)_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
}
static ALWAYS_INLINE Int8 Q_NAME(sbytes)(const uint8_t *p) {
    return (Int8)_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
}
static ALWAYS_INLINE Int8 Q_NAME(shorts)(const uint8_t *p) {
    return (Int8)_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
}
static ALWAYS_INLINE Vec8 Q_NAME(halves)(const uint8_t *p) {
    return (Vec8)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static ALWAYS_INLINE Vec8 Q_NAME(floats_of)(Int8 q) { return (Vec8)_mm256_cvtepi32_ps((__m256i)q); }
static ALWAYS_INLINE Vec8 Q_NAME(load)(const float *p) { return (Vec8)_mm256_loadu_ps(p); }
static ALWAYS_INLINE float Q_NAME(sum)(Vec8 v) {
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s4, _mm_movehdup_ps(s4)));
}
static ALWAYS_INLINE float Q_NAME(half1)(const uint8_t *p) { return _cvtsh_ss((unsigned short)(p[0] | (p[1] << 8))); }
#else
#define QW 8
typedef Vec8 Q_NAME(QVec);
typedef Int8 Q_NAME(QInt);
typedef uint8_t Q_NAME(U8x8) __attribute__((vector_size(8)));
typedef int8_t Q_NAME(S8x8) __attribute__((vector_size(8)));
typedef uint16_t Q_NAME(U16x8) __attribute__((vector_size(16)));
static ALWAYS_INLINE Int8 Q_NAME(bytes)(const uint8_t *p) {
    Q_NAME(U8x8) v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, Int8);
}
static ALWAYS_INLINE Int8 Q_NAME(sbytes)(const uint8_t *p) {
    Q_NAME(S8x8) v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, Int8);
}
static ALWAYS_INLINE Int8 Q_NAME(shorts)(const uint8_t *p) {
    Q_NAME(U16x8) v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, Int8);
}
static ALWAYS_INLINE Vec8 Q_NAME(halves)(const uint8_t *p) {
    Vec8 v = vec8_splat(0.0f);
    for (int i = 0; i < 8; i++) v[i] = dtype_half(p + 2 * i);
    return v;
}
static ALWAYS_INLINE Vec8 Q_NAME(floats_of)(Int8 q) { return __builtin_convertvector(q, Vec8); }
static ALWAYS_INLINE Vec8 Q_NAME(load)(const float *p) { return vec8_load(p); }
static ALWAYS_INLINE float Q_NAME(sum)(Vec8 v) { return vec8_sum(v); }
static ALWAYS_INLINE float Q_NAME(half1)(const uint8_t *p) { return dtype_half(p); }
#endif
#define QP (32 / QW)

#if Q_ISA != 2
/* 16 in lane i where bit e0 + i of h is set, else 0 (a Q5_0/Q5_1 element's fifth bit, in place) */
static ALWAYS_INLINE Int8 Q_NAME(fifth_bits)(uint32_t h, int e0) {
    const Int8 lanes = {0, 1, 2, 3, 4, 5, 6, 7};
    Int8 bits = (Int8){0} + (int32_t)(h >> e0); /* every lane h: each then shifted by its own count */
    return ((bits >> lanes) & 1) << 4;
}
#endif

/* Group g (elements 32 g .. 32 g + 31) of a row of `type`, as dtype_dequantize_group computes it, into w[0..QP): part p
 * holds elements QW p .. QW p + QW - 1. `type` is a constant wherever this is inlined, so the switch folds away, and so
 * do the branches on the part's place (e0 < 16). */
static ALWAYS_INLINE void Q_NAME(decode_group)(DType type, const uint8_t *row, int g, Q_NAME(QVec) * w) {
    switch (type) {
    case DT_F32:
        for (int p = 0; p < QP; p++) memcpy(&w[p], row + sizeof(float) * (size_t)(32 * g + QW * p), sizeof w[p]);
        return;
    case DT_F16:
        for (int p = 0; p < QP; p++) w[p] = Q_NAME(halves)(row + 64 * g + 2 * QW * p);
        return;
    case DT_BF16:
        for (int p = 0; p < QP; p++) w[p] = (Q_NAME(QVec))(Q_NAME(shorts)(row + 64 * g + 2 * QW * p) << 16);
        return;
    case DT_Q8_0: {
        const uint8_t *blk = row + 34 * g;
        float d = Q_NAME(half1)(blk);
        for (int p = 0; p < QP; p++) w[p] = d * Q_NAME(floats_of)(Q_NAME(sbytes)(blk + 2 + QW * p));
        return;
    }
    case DT_Q4_0:
    case DT_Q4_1: { /* element e: the low nibble of byte e, or for e >= 16 the high nibble of byte e - 16 */
        const uint8_t *blk = row + (type == DT_Q4_0 ? 18 : 20) * g, *qs = blk + (type == DT_Q4_0 ? 2 : 4);
        float d = Q_NAME(half1)(blk), m = type == DT_Q4_1 ? Q_NAME(half1)(blk + 2) : 0.0f;
#if Q_ISA == 2
        /* d q is exact: fusing the add rounds the same */
        Vec16 table = type == DT_Q4_0 ? d * (IOTA16 - 8.0f) : d * IOTA16 + m; /* the 16 values a nibble stands for */
        Int16 q = Q_NAME(bytes)(qs);
        w[0] = Q_NAME(lookup16)(table, q);
        w[1] = Q_NAME(lookup16)(table, q >> 4);
#else
        for (int p = 0; p < QP; p++) {
            int e0 = QW * p;
            Q_NAME(QInt) q = Q_NAME(bytes)(qs + (e0 & 15));
            q = e0 < 16 ? q & 15 : q >> 4;
            w[p] = type == DT_Q4_0 ? d * Q_NAME(floats_of)(q - 8) : d * Q_NAME(floats_of)(q) + m;
        }
#endif
        return;
    }
    case DT_Q5_0:
    case DT_Q5_1: { /* as Q4_0/Q4_1, and bit e of the uint32 qh element e's fifth bit */
        const uint8_t *blk = row + (type == DT_Q5_0 ? 22 : 24) * g, *qs = blk + (type == DT_Q5_0 ? 6 : 8);
        float d = Q_NAME(half1)(blk), m = type == DT_Q5_1 ? Q_NAME(half1)(blk + 2) : 0.0f;
        uint32_t qh = dtype_u32(qs - 4);
#if Q_ISA == 2
        /* the 32 values of a 5-bit q, in two tables of 16 (d q exact: fusing the add rounds the same) */
        Vec16 table = type == DT_Q5_0 ? d * (IOTA16 - 16.0f) : d * IOTA16 + m;
        Vec16 upper = type == DT_Q5_0 ? d * IOTA16 : d * (IOTA16 + 16.0f) + m;
        Int16 q = Q_NAME(bytes)(qs);
        w[0] = Q_NAME(lookup32)(table, upper, (q & 15) | Q_NAME(fifth_bits)(qh, 0));
        w[1] = Q_NAME(lookup32)(table, upper, (q >> 4) | Q_NAME(fifth_bits)(qh, 16));
#else
        for (int p = 0; p < QP; p++) {
            int e0 = QW * p;
            Q_NAME(QInt) q = Q_NAME(bytes)(qs + (e0 & 15));
            q = (e0 < 16 ? q & 15 : q >> 4) | Q_NAME(fifth_bits)(qh, e0);
            w[p] = type == DT_Q5_0 ? d * Q_NAME(floats_of)(q - 16) : d * Q_NAME(floats_of)(q) + m;
        }
#endif
        return;
    }
    case DT_Q4_K:
    case DT_Q5_K: { /* sub-block j: element i is nibble j % 2 of byte 32 (j / 2) + i (Q5_K: plus bit j of qh[i] as its
                     * fifth bit), times d * scale, less dmin * min */
        const uint8_t *blk = row + (type == DT_Q4_K ? 144 : 176) * (g / 8);
        int j = g % 8, sc, mn;
        dtype_k_scale_min(blk + 4, j, &sc, &mn);
        float dj = Q_NAME(half1)(blk) * (float)sc, mj = Q_NAME(half1)(blk + 2) * (float)mn;
        const uint8_t *qs = blk + (type == DT_Q4_K ? 16 : 48) + 32 * (j / 2), *qh = blk + 16;
        int shift = 4 * (j % 2);
#if Q_ISA == 2
        Vec16 table = dj * IOTA16 - mj;
        Vec16 upper = type == DT_Q5_K ? dj * (IOTA16 + 16.0f) - mj : table;
#endif
        for (int p = 0; p < QP; p++) {
            Q_NAME(QInt) q = (Q_NAME(bytes)(qs + QW * p) >> shift) & 15;
            if (type == DT_Q5_K) q |= ((Q_NAME(bytes)(qh + QW * p) >> j) & 1) << 4;
#if Q_ISA == 2
            /* 16 values, or 32 with the fifth bit picking the upper table */
            w[p] = type == DT_Q4_K ? Q_NAME(lookup16)(table, q) : Q_NAME(lookup32)(table, upper, q);
#else
            w[p] = dj * Q_NAME(floats_of)(q) - mj;
#endif
        }
        return;
    }
    case DT_Q6_K: {
        const uint8_t *blk = row + 210 * (g / 8);
        int e0 = 32 * (g % 8), h = e0 / 128, r = e0 % 128;
        const uint8_t *ql = blk + 64 * h + r % 64, *qh = blk + 128 + 32 * h;
        int lo_shift = 4 * (r / 64), hi_shift = 2 * (r / 32);
        const int8_t *scales = (const int8_t *)(blk + 192);
        float d = Q_NAME(half1)(blk + 208);
        for (int p = 0; p < QP; p++) {
            Q_NAME(QInt)
            q = ((Q_NAME(bytes)(ql + QW * p) >> lo_shift) & 15) | (((Q_NAME(bytes)(qh + QW * p) >> hi_shift) & 3) << 4);
            w[p] = (d * (float)scales[(e0 + QW * p) / 16]) * Q_NAME(floats_of)(q - 32);
        }
        return;
    }
    default: /* not a weight format: cpu_matmul_q refuses it before any row */
        for (int p = 0; p < QP; p++) w[p] = (Q_NAME(QVec)){0};
        return;
    }
}

/* out[(t0 + t) * ldo + o + r] for r < R weight rows (R <= 2) and t < N input rows (N <= FUSED_ROWS): each group of the
 * R rows decoded once and multiplied with the N rows' inputs; R and N are constants once inlined. A group's parts go
 * to two sums in turn (even parts, odd parts: two chains of FMAs per row), so that a row's sum is made in one order
 * whatever T and its place among the rows: tree verification then reproduces a one-row step bit for bit. */
static ALWAYS_INLINE void Q_NAME(dot_group_rows)(float *out, int ldo, const float *in, const uint8_t *weight,
                                                 DType type, size_t row_bytes, int IC, int o, int R, int t0, int N) {
    const uint8_t *wr[2] = {weight + row_bytes * (size_t)o, weight + row_bytes * (size_t)(o + R - 1)};
    const float *x[FUSED_ROWS];
    for (int t = 0; t < FUSED_ROWS; t++) x[t] = in + (size_t)(t0 + (t < N ? t : 0)) * IC;
    Q_NAME(QVec) acc[2][FUSED_ROWS][2];
    for (int r = 0; r < R; r++) /* only those in use: a memset of all of them cost a tenth of a short row */
        for (int t = 0; t < N; t++) acc[r][t][0] = acc[r][t][1] = (Q_NAME(QVec)){0};
    int groups = IC / DTYPE_GROUP;
    size_t group_bytes = row_bytes / (size_t)groups;
    for (int g = 0; g < groups; g++) {
        Q_NAME(QVec) w[2][QP];
#pragma GCC unroll 2
        for (int r = 0; r < R; r++) {
            /* the rows after these, from DRAM, while these are in use */
            __builtin_prefetch(wr[r] + 2 * row_bytes + group_bytes * (size_t)g);
            Q_NAME(decode_group)(type, wr[r], g, w[r]);
        }
#pragma GCC unroll 4
        for (int t = 0; t < N; t++) {
#pragma GCC unroll 4
            for (int p = 0; p < QP; p++) {
                Q_NAME(QVec) xv = Q_NAME(load)(x[t] + 32 * g + QW * p);
#pragma GCC unroll 2
                for (int r = 0; r < R; r++) acc[r][t][p % 2] += w[r][p] * xv;
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < N; t++) out[(size_t)(t0 + t) * ldo + o + r] = Q_NAME(sum)(acc[r][t][0] + acc[r][t][1]);
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
        Q_NAME(QVec) w[QP];
        Q_NAME(decode_group)(type, row, g, w);
        memcpy(dst + 32 * g, w, sizeof w);
    }
}

/* Weight rows o0 <= o < o1 for T <= CPU_SMALL_ROWS input rows, FUSED_ROWS at a time, each pass decoding the weights
 * again: decoding a pair of rows once into a buffer and reading it back for every FUSED_ROWS rows measured slower
 * (a 5-row tree step 1.2x, 8 rows 1.3x; bench_matmul_q) than decoding in registers again. */
static ALWAYS_INLINE void Q_NAME(rows_typed)(float *out, int ldo, const float *in, const uint8_t *weight, DType type,
                                             int T, int IC, int o0, int o1) {
    size_t row_bytes = dtype_row_bytes(type, IC);
    for (int o = o0; o < o1; o += 2)
        for (int t0 = 0; t0 < T; t0 += FUSED_ROWS) Q_NAME(dot_rows)
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
    case DT_Q5_0:
        Q_NAME(rows_typed)(out, ldo, in, weight, DT_Q5_0, T, IC, o0, o1);
        break;
    case DT_Q5_1:
        Q_NAME(rows_typed)(out, ldo, in, weight, DT_Q5_1, T, IC, o0, o1);
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

#undef QW
#undef QP
