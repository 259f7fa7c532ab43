/* bfloat16 rounding, one rule for the host code and every backend (kernels/math_common.h includes it, so CUDA
 * device code compiles it too). */
#ifndef MEDUSA_BF16_H
#define MEDUSA_BF16_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define MEDUSA_HD __host__ __device__
#else
#define MEDUSA_HD
#endif

/* bfloat16 as its bit pattern (the upper half of an fp32): widening is exact; narrowing rounds to nearest
 * even, as tensor cores and torch do, and keeps NaN a (quiet) NaN. */
static inline MEDUSA_HD float bf16_to_f32(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
static inline MEDUSA_HD uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

#endif
