/* 8-float vectors (GCC vector extensions) for the CPU kernels that OpenBLAS does not cover: on x86-64 compiled once for
 * AVX2 with FMA and once for baseline x86-64 (two SSE registers per vector), the AVX2 build picked at run time (the
 * quantised matmul has an AVX-512 build too, SIMD_AVX512, on 16-float vectors). A
 * kernel body is an always-inline function that two thin wrappers instantiate, one with SIMD_AVX2_FMA. On other
 * architectures (aarch64) SIMD_AVX2_FMA is empty and simd_avx2_fma() 0, so both wrappers are the baseline build and it
 * runs: the vector extensions are portable C for GCC and clang, which lower them to the target's vector registers
 * (NEON: two per vector) or to scalar code where it has none. Files using these build with -ffp-contract=fast (the
 * Makefile), so products and sums fuse into FMAs where the CPU has them, and -Wno-psabi: every function here is
 * inlined, so no vector crosses a call and GCC's note on the ABI of vector returns without AVX does not apply. */
#ifndef MEDUSA_CPU_SIMD_H
#define MEDUSA_CPU_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define ALWAYS_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__) || defined(__i386__)
#define SIMD_AVX2_FMA __attribute__((target("avx2,fma,f16c")))
#define SIMD_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#else
#define SIMD_AVX2_FMA
#define SIMD_AVX512
#endif

typedef float Vec8 __attribute__((vector_size(32)));
typedef int32_t Int8 __attribute__((vector_size(32)));

/* The builds a kernel may have, narrowest first. */
typedef enum { SIMD_LEVEL_BASELINE, SIMD_LEVEL_AVX2, SIMD_LEVEL_AVX512 } SimdLevel;
/* The widest build this CPU runs (from the flags libgcc detected at start-up; never above baseline off x86), or a
 * narrower one that the environment variable MEDUSA_CPU_SIMD names (baseline, avx2 or avx512), so that tests and
 * benchmarks can run every build on one machine. A wider one than the CPU has is refused. */
SimdLevel simd_level(void);
static inline int simd_avx2_fma(void) { return simd_level() >= SIMD_LEVEL_AVX2; }

static ALWAYS_INLINE Vec8 vec8_load(const float *p) {
    Vec8 v;
    memcpy(&v, p, sizeof v);
    return v;
}
static ALWAYS_INLINE void vec8_store(float *p, Vec8 v) { memcpy(p, &v, sizeof v); }
static ALWAYS_INLINE Vec8 vec8_splat(float x) { return (Vec8){x, x, x, x, x, x, x, x}; }
/* where mask (all ones or zeros per lane, as a comparison gives), a; else b */
static ALWAYS_INLINE Vec8 vec8_select(Int8 mask, Vec8 a, Vec8 b) {
    return (Vec8)((mask & (Int8)a) | (~mask & (Int8)b));
}
static ALWAYS_INLINE Vec8 vec8_max(Vec8 a, Vec8 b) { return vec8_select(a > b, a, b); }
static ALWAYS_INLINE float vec8_sum(Vec8 v) {
    float s = 0.0f;
    for (int i = 0; i < 8; i++) s += v[i];
    return s;
}
static ALWAYS_INLINE float vec8_hmax(Vec8 v) {
    float m = v[0];
    for (int i = 1; i < 8; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* exp(x) per lane, within 2 ulp of expf (Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2, a degree-6 polynomial for
 * exp(r), 2^n from the exponent bits, in two factors so that n = 128 near the top of the range stays finite); 0 below
 * ln(FLT_MIN) and for -inf, inf above ln(FLT_MAX), NaN for NaN */
static ALWAYS_INLINE Vec8 vec8_exp(Vec8 x) {
    const float kMin = -87.33654475f, kMax = 88.72283905f, kLog2e = 1.44269504088896341f;
    const float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
    const float kRound = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer, kept in the low mantissa bits */
    Int8 under = x<vec8_splat(kMin), over = x> vec8_splat(kMax);
    x = vec8_select(under, vec8_splat(kMin), vec8_select(over, vec8_splat(kMax), x));
    Vec8 t = x * kLog2e + kRound;
    Vec8 n = t - kRound;
    Int8 n_int = (Int8)t - (Int8)vec8_splat(kRound);
    Vec8 r = x - n * kLn2Hi;
    r = r - n * kLn2Lo;
    Vec8 p = vec8_splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    Vec8 y = p * (r * r) + r + 1.0f;
    Int8 n_half = n_int >> 1; /* 2^n = 2^(n/2) 2^(n - n/2), each factor a normal float for n in [-126, 128] */
    y = y * (Vec8)((n_half + 127) << 23) * (Vec8)((n_int - n_half + 127) << 23);
    return vec8_select(under, vec8_splat(0.0f), vec8_select(over, vec8_splat(INFINITY), y));
}

/* silu(x) = x / (1 + exp(-x)) per lane, as math_common.h's silu_f */
static ALWAYS_INLINE Vec8 vec8_silu(Vec8 x) { return x / (1.0f + vec8_exp(-x)); }

#endif
