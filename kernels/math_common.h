/* Per-element math shared by every backend so that all of them compute it the same way. */
#ifndef MEDUSA_MATH_COMMON_H
#define MEDUSA_MATH_COMMON_H

#include <math.h>

#ifdef __CUDACC__
#define MEDUSA_HD __host__ __device__
#else
#define MEDUSA_HD
#endif

static inline MEDUSA_HD float silu_f(float x) { return x / (1.0f + expf(-x)); }

/* Rotary frequency of pair j for a head of head_dim (as Hugging Face computes inv_freq). */
static inline MEDUSA_HD float rope_inv_freq(int j, int head_dim, float theta) {
    return 1.0f / powf(theta, (float)(2 * j) / (float)head_dim);
}

#endif
