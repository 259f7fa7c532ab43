/* Element types of stored tensors, and the block formats of quantised weights (ggml's, as GGUF files hold them):
 * their sizes and the one dequantisation rule that the file readers (formats/), every backend's quantised matmul
 * (kernels/) and the tests share. Device code (kernels/cuda) compiles the inline functions too. */
#ifndef MEDUSA_DTYPE_H
#define MEDUSA_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"

/* (new types go at the end: the values stay) */
typedef enum {
    DT_F32,
    DT_F16,
    DT_BF16,
    DT_I32,
    DT_Q8_0,
    DT_Q4_0,
    DT_Q4_1,
    DT_I64,
    DT_Q4_K,
    DT_Q5_K,
    DT_Q6_K,
    DT_Q5_0,
    DT_Q5_1
} DType;

static inline const char *dtype_name(DType t) {
    static const char *names[] = {"F32", "F16",  "BF16", "I32",  "Q8_0", "Q4_0", "Q4_1",
                                  "I64", "Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q5_1"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

/* Weights are dequantised in groups of DTYPE_GROUP consecutive elements of a row: a block of the 32-element formats,
 * a sub-block of the K-quants' 256-element super-blocks; every weight format's row length is a multiple of it. */
#define DTYPE_GROUP 32

/* Elements per block of a type (1 for the plain ones) and, in *block_bytes, the block's size; 0 for no type. */
static inline MEDUSA_HD int dtype_block(DType t, size_t *block_bytes) {
    switch (t) {
    case DT_F32:
    case DT_I32:
        *block_bytes = 4;
        return 1;
    case DT_I64:
        *block_bytes = 8;
        return 1;
    case DT_F16:
    case DT_BF16:
        *block_bytes = 2;
        return 1;
    case DT_Q8_0: /* f16 scale d, 32 x int8 q: d q */
        *block_bytes = 34;
        return 32;
    case DT_Q4_0: /* f16 d, 16 bytes: element j the low nibble of byte j, element 16 + j its high one: d (q - 8) */
        *block_bytes = 18;
        return 32;
    case DT_Q4_1: /* f16 d, f16 min m, 16 bytes of nibbles as Q4_0: d q + m */
        *block_bytes = 20;
        return 32;
    case DT_Q5_0: /* f16 d, little-endian uint32 qh (bit e: element e's fifth), nibbles as Q4_0: d (q - 16) */
        *block_bytes = 22;
        return 32;
    case DT_Q5_1: /* f16 d, f16 min m, qh and nibbles as Q5_0: d q + m */
        *block_bytes = 24;
        return 32;
    case DT_Q4_K: /* f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles */
        *block_bytes = 144;
        return 256;
    case DT_Q5_K: /* as Q4_K, and 32 bytes of fifth bits */
        *block_bytes = 176;
        return 256;
    case DT_Q6_K: /* 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales, f16 d */
        *block_bytes = 210;
        return 256;
    }
    *block_bytes = 0;
    return 0;
}

/* whether the type can hold a weight matrix for the quantised matmul (the types above other than fp32 and integers) */
static inline MEDUSA_HD int dtype_is_packed_weight(DType t) {
    size_t block_bytes;
    return t != DT_F32 && t != DT_I32 && t != DT_I64 && dtype_block(t, &block_bytes) != 0;
}

/* Bytes of a row of `cols` elements (a whole number of blocks; 0 where cols is not one). */
static inline MEDUSA_HD size_t dtype_row_bytes(DType t, int64_t cols) {
    size_t block_bytes;
    int per_block = dtype_block(t, &block_bytes);
    if (per_block == 0 || cols < 0 || cols % per_block != 0) return 0;
    return (size_t)(cols / per_block) * block_bytes;
}

/* IEEE half (little-endian, at p) to float: exact */
static inline MEDUSA_HD float dtype_half(const uint8_t *p) {
    uint32_t h = (uint32_t)p[0] | ((uint32_t)p[1] << 8);
    uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
    if (exp == 0 && mant == 0) {
        bits = sign;
    } else if (exp == 0) { /* subnormal: renormalise */
        uint32_t e = 0;
        while ((mant & 0x400u) == 0) mant <<= 1, e++;
        bits = sign | ((113u - e) << 23) | ((mant & 0x3ffu) << 13);
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* little-endian uint32 at p (a Q5_0/Q5_1 block's fifth bits) */
static inline MEDUSA_HD uint32_t dtype_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* sub-block j's 6-bit scale and min of a Q4_K/Q5_K super-block's 12 scale bytes */
static inline MEDUSA_HD void dtype_k_scale_min(const uint8_t *s, int j, int *scale, int *min) {
    if (j < 4) {
        *scale = s[j] & 0x3f;
        *min = s[j + 4] & 0x3f;
    } else {
        *scale = (s[j + 4] & 0x0f) | ((s[j - 4] >> 2) & 0x30);
        *min = (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30);
    }
}

/* Elements 32 g .. 32 g + 31 of a run of blocks `data` (a row, or a whole tensor) as fp32: as ggml's dequantize_row_*
 * and the gguf package compute them, in fp32 and in their order of operations (a K-quant's scale times its sub-block
 * scale first), so the floats are the same bit for bit. Every product here is exact in fp32 except Q6_K's last, so a
 * compiler that fuses a multiply and an add (-ffp-contract) cannot change a value: a SIMD build of the same
 * expressions gives the same floats. */
static inline MEDUSA_HD void dtype_dequantize_group(DType t, const uint8_t *data, int64_t g, float *out) {
    switch (t) {
    case DT_F32:
        memcpy(out, data + 128 * g, 128);
        return;
    case DT_F16:
        for (int i = 0; i < 32; i++) out[i] = dtype_half(data + 64 * g + 2 * i);
        return;
    case DT_BF16:
        for (int i = 0; i < 32; i++) {
            const uint8_t *p = data + 64 * g + 2 * i;
            out[i] = bf16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
        }
        return;
    case DT_Q8_0: {
        const uint8_t *blk = data + 34 * g;
        float d = dtype_half(blk);
        for (int i = 0; i < 32; i++) out[i] = d * (float)(int8_t)blk[2 + i];
        return;
    }
    case DT_Q4_0: {
        const uint8_t *blk = data + 18 * g;
        float d = dtype_half(blk);
        for (int i = 0; i < 16; i++) {
            out[i] = d * (float)((blk[2 + i] & 0x0f) - 8);
            out[i + 16] = d * (float)((blk[2 + i] >> 4) - 8);
        }
        return;
    }
    case DT_Q4_1: {
        const uint8_t *blk = data + 20 * g;
        float d = dtype_half(blk), m = dtype_half(blk + 2);
        for (int i = 0; i < 16; i++) {
            out[i] = d * (float)(blk[4 + i] & 0x0f) + m;
            out[i + 16] = d * (float)(blk[4 + i] >> 4) + m;
        }
        return;
    }
    case DT_Q5_0:
    case DT_Q5_1: { /* element i < 16: the low nibble of byte i, element 16 + i its high one; bit e of qh the fifth */
        const uint8_t *blk = data + (t == DT_Q5_0 ? 22 : 24) * g, *qs = blk + (t == DT_Q5_0 ? 6 : 8);
        float d = dtype_half(blk), m = t == DT_Q5_1 ? dtype_half(blk + 2) : 0.0f;
        uint32_t qh = dtype_u32(qs - 4);
        for (int i = 0; i < 16; i++) {
            int lo = (qs[i] & 0x0f) | (int)((qh >> i) & 1) << 4, hi = (qs[i] >> 4) | (int)((qh >> (i + 16)) & 1) << 4;
            out[i] = t == DT_Q5_0 ? d * (float)(lo - 16) : d * (float)lo + m;
            out[i + 16] = t == DT_Q5_0 ? d * (float)(hi - 16) : d * (float)hi + m;
        }
        return;
    }
    case DT_Q4_K:
    case DT_Q5_K: { /* sub-block j: element i is nibble j % 2 of byte 32 (j / 2) + i (Q5_K: plus bit j of qh[i] as its
                     * fifth bit), times d * scale, less dmin * min */
        const uint8_t *blk = data + (t == DT_Q4_K ? 144 : 176) * (g / 8);
        int j = (int)(g % 8), sc, m;
        dtype_k_scale_min(blk + 4, j, &sc, &m);
        float dj = dtype_half(blk) * (float)sc, mj = dtype_half(blk + 2) * (float)m;
        const uint8_t *qh = blk + 16, *qs = blk + (t == DT_Q4_K ? 16 : 48) + 32 * (j / 2);
        for (int i = 0; i < 32; i++) {
            int q = (qs[i] >> (4 * (j % 2))) & 0x0f;
            if (t == DT_Q5_K) q |= ((qh[i] >> j) & 1) << 4;
            out[i] = dj * (float)q - mj;
        }
        return;
    }
    case DT_Q6_K: { /* element e of the super-block: low nibble (shift 4 ((e % 128) / 64)) of ql[64 (e / 128) + e % 64],
                     * high bits (shift 2 ((e % 128) / 32)) of qh[32 (e / 128) + e % 32], less 32, times
                     * d * scales[e / 16]; a group of 32 has one of each shift */
        const uint8_t *blk = data + 210 * (g / 8);
        int e0 = 32 * (int)(g % 8), h = e0 / 128, r = e0 % 128;
        const uint8_t *ql = blk + 64 * h + r % 64, *qh = blk + 128 + 32 * h;
        const int8_t *scales = (const int8_t *)(blk + 192);
        float d = dtype_half(blk + 208);
        for (int i = 0; i < 32; i++) {
            int lo = (ql[i] >> (4 * (r / 64))) & 0x0f, hi = (qh[i] >> (2 * (r / 32))) & 0x03;
            out[i] = (d * (float)scales[(e0 + i) / 16]) * (float)((lo | (hi << 4)) - 32);
        }
        return;
    }
    default:
        return;
    }
}

#endif
