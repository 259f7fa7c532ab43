/* Per-element math shared by every backend so that all of them compute it the same way. */
#ifndef MEDUSA_MATH_COMMON_H
#define MEDUSA_MATH_COMMON_H

#include <math.h>

#ifdef __CUDACC__
#define MEDUSA_HD __host__ __device__
#else
#define MEDUSA_HD

static inline MEDUSA_HD float silu_f(float x) { return x / (1.0f + expf(-x)); }

/* Rotary frequency of pair j for a head of head_dim (as Hugging Face computes inv_freq). */
static inline MEDUSA_HD float rope_inv_freq(int j, int head_dim, float theta) {
    return 1.0f / powf(theta, (float)(2 * j) / (float)head_dim);
}

#endif

/* d silu(z)/dz = s(z) * (1 + z * (1 - s(z))), s the logistic function */
static inline MEDUSA_HD float silu_grad_f(float z) {
    float s = 1.0f / (1.0f + expf(-z));
    return s * (1.0f + z * (1.0f - s));
}

/* One AdamW update of a single parameter, as torch.optim.AdamW computes it. */
static inline MEDUSA_HD void adamw_update(float *p, float g, float *m, float *v, float lr, float beta1, float beta2,
                                          float eps, float weight_decay, float bias_correction1,
                                          float bias_correction2_sqrt) {
    *p -= lr * weight_decay * *p;
    *m = beta1 * *m + (1.0f - beta1) * g;
    *v = beta2 * *v + (1.0f - beta2) * g * g;
    float denom = sqrtf(*v) / bias_correction2_sqrt + eps;
    *p -= (lr / bias_correction1) * (*m / denom);
}

#endif
