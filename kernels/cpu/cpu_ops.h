/* CPU reference implementations of kernels/ops.h (fp32, OpenMP, OpenBLAS). */
#ifndef MEDUSA_CPU_OPS_H
#define MEDUSA_CPU_OPS_H

#include "../ops.h"

void cpu_embedding_forward(float *out, const int32_t *tokens, const float *table, int T, int C);
void cpu_rmsnorm_forward(float *out, const float *x, const float *weight, int T, int C, float eps);
void cpu_matmul_forward(float *out, const float *in, const float *weight, const float *bias, int T, int IC, int OC);
void cpu_rope_forward(float *q, float *k, const int32_t *pos, int T, int n_heads, int n_kv_heads, int head_dim, float theta);
void cpu_attention_forward(float *out, const float *q, const float *k, const float *v, const int32_t *key_begin,
                           const int32_t *key_end, int T, int n_heads, int n_kv_heads, int head_dim);
void cpu_swiglu_forward(float *out, const float *gate, const float *up, size_t n);
void cpu_residual_add(float *x, const float *y, size_t n);

#endif
