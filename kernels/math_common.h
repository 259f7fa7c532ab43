/* Per-element math shared by every backend so that all of them compute it the same way. */
#ifndef MEDUSA_MATH_COMMON_H
#define MEDUSA_MATH_COMMON_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../common/bf16.h" /* MEDUSA_HD and the bf16 rounding, shared with the host code */

/* the activation of a gated MLP, down(act(gate) * up): SwiGLU's silu (Llama and most families) or GeLU-tanh (Gemma) */
typedef enum { GLU_SILU, GLU_GELU_TANH } GluActivation;

static inline MEDUSA_HD float silu_f(float x) { return x / (1.0f + expf(-x)); }
/* GeLU with the tanh approximation, as torch computes gelu(approximate="tanh") in fp32 (Gemma's MLP) */
static inline MEDUSA_HD float gelu_tanh_f(float x) {
    const float beta = 0.7978845608028654f, kappa = 0.044715f; /* sqrt(2 / pi) */
    float inner = beta * (x + kappa * (x * x * x));
    return 0.5f * x * (1.0f + tanhf(inner));
}
/* the gated MLP's product: act(gate) * up */
static inline MEDUSA_HD float glu_f(GluActivation act, float gate, float up) {
    return (act == GLU_GELU_TANH ? gelu_tanh_f(gate) : silu_f(gate)) * up;
}

/* How attention turns a query-key dot product into a softmax logit: scale * dot (scale 1 / sqrt(head_dim), or a
 * family's own: Gemma's query_pre_attn_scalar^-0.5, yarn's and longrope's factor squared folded in), then with
 * softcap > 0 softcap * tanh(s / softcap) (Gemma 2's attention soft-capping), as transformers' eager attention does. */
typedef struct {
    float scale, softcap;
} AttentionScoring;

/* cap * tanh(x / cap), in transformers' order of operations */
static inline MEDUSA_HD float softcap_f(float x, float cap) { return tanhf(x / cap) * cap; }

static inline MEDUSA_HD float attention_logit(AttentionScoring sc, float dot) {
    float s = sc.scale * dot;
    return sc.softcap > 0 ? softcap_f(s, sc.softcap) : s;
}

/* Rotary frequency of pair j for a head of head_dim (as Hugging Face computes inv_freq). */
static inline MEDUSA_HD float rope_inv_freq(int j, int head_dim, float theta) {
    return 1.0f / powf(theta, (float)(2 * j) / (float)head_dim);
}

/* d silu(z)/dz = s(z) * (1 + z * (1 - s(z))), s the logistic function */
static inline MEDUSA_HD float silu_grad_f(float z) {
    float s = 1.0f / (1.0f + expf(-z));
    return s * (1.0f + z * (1.0f - s));
}

/* Scalars of one AdamW step. torch.optim.AdamW holds its hyper-parameters as Python floats (double) and
 * rounds each derived scalar to fp32 once; computing them the same way matters: 1 - (float)0.999 is 1.3e-5
 * away from (float)(1 - 0.999), which shows in the second moment. */
typedef struct {
    float decay;                 /* 1 - lr * weight_decay */
    float beta1_weight;          /* 1 - beta1 */
    float beta2, beta2_weight;   /* beta2, 1 - beta2 */
    float bias_correction2_sqrt; /* sqrt(1 - beta2^t) */
    float step_size;             /* lr / (1 - beta1^t) */
    float eps;
    float grad_scale;    /* clipping coefficient applied to the gradient first (adamw without a device norm) */
    float max_grad_norm; /* adamw with the gradients' sum of squares on the device: clip_factor's max_norm */
} AdamWStep;

/* torch.nn.utils.clip_grad_norm_'s coefficient, in fp32, for gradients of global norm `norm`: max_norm / (norm + 1e-6)
 * when that is below 1, else 1; a negative max_norm: no clipping (1). */
static inline MEDUSA_HD float clip_factor(double norm, float max_norm) {
    if (max_norm < 0.0f) return 1.0f;
    float coef = max_norm / ((float)norm + 1e-6f);
    return coef < 1.0f ? coef : 1.0f;
}

/* The rank of a NaN or infinite logit (rank_ids, softmax_xent): within no top k, so a non-finite logit never counts as
 * a hit. */
#define RANK_NOT_FINITE INT32_MAX
/* The rank of an id whose logit is v, `above` logits being strictly greater: -1 for no id (id < 0). */
static inline MEDUSA_HD int32_t rank_of(int id, float v, int above) {
    return id < 0 ? -1 : isfinite(v) ? above : RANK_NOT_FINITE;
}

/* Top-k order: larger first, equal values by the lower index. True when (v, i) comes strictly after (pv, pi);
 * a NaN never does, so it is never taken. */
static inline MEDUSA_HD int topk_after(float v, int i, float pv, int pi) { return v < pv || (v == pv && i > pi); }

/* One AdamW update of a single parameter, in torch's operation order (single-tensor CPU path):
 * p *= decay; m.lerp_(g, 1 - beta1); v = v * beta2 + (1 - beta2) * g * g;
 * p -= step_size * m / (sqrt(v) / bias_correction2_sqrt + eps). */
static inline MEDUSA_HD void adamw_update(float *p, float g, float *m, float *v, const AdamWStep *s) {
    g *= s->grad_scale;
    *p *= s->decay;
    *m += s->beta1_weight * (g - *m);
    *v = *v * s->beta2 + s->beta2_weight * g * g;
    float denom = sqrtf(*v) / s->bias_correction2_sqrt + s->eps;
    *p -= s->step_size * *m / denom;
}

#endif
