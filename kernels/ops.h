/* The one op interface: every op the model needs, independent of where it runs. The CPU backend
 * (kernels/cpu) is the reference; other backends implement the same table and are tested against it.
 * Tensors are row-major arrays in the backend's memory; shapes are given per call. */
#ifndef MEDUSA_OPS_H
#define MEDUSA_OPS_H

#include <stddef.h>
#include <stdint.h>

typedef struct Backend Backend;

struct Backend {
    const char *name;

    /* memory */
    void *(*alloc)(size_t bytes);
    void (*free)(void *ptr);
    void (*upload)(void *dst, const void *host_src, size_t bytes);
    void (*download)(void *host_dst, const void *src, size_t bytes);

    /* out[t,:] = table[tokens[t],:]  (T x C) */
    void (*embedding)(float *out, const int32_t *tokens, const float *table, int T, int C);
    /* out = x / rms(x) * weight, per row of C */
    void (*rmsnorm)(float *out, const float *x, const float *weight, int T, int C, float eps);
    /* out[T,OC] = in[T,IC] @ weight[OC,IC]^T (+ bias[OC] when not NULL): a PyTorch Linear */
    void (*matmul)(float *out, const float *in, const float *weight, const float *bias, int T, int IC, int OC);
    /* rotary embedding in place on q [T, n_heads*head_dim] and k [T, n_kv_heads*head_dim] at positions pos[T]
     * (Hugging Face layout: the two rotated halves are the first and second half of each head) */
    void (*rope)(float *q, float *k, const int32_t *pos, int T, int n_heads, int n_kv_heads, int head_dim, float theta);
    /* softmax(q k^T / sqrt(d)) v per head with grouped-query sharing; query t attends to keys
     * key_begin[t] <= j < key_end[t] (rows of k/v). q/out: [T, n_heads*d]; k/v: [Tk, n_kv_heads*d]. */
    void (*attention)(float *out, const float *q, const float *k, const float *v, const int32_t *key_begin,
                      const int32_t *key_end, int T, int n_heads, int n_kv_heads, int head_dim);
    /* out = silu(gate) * up, n elements */
    void (*swiglu)(float *out, const float *gate, const float *up, size_t n);
    /* x += y, n elements */
    void (*residual_add)(float *x, const float *y, size_t n);
};

const Backend *backend_cpu(void);

#endif
