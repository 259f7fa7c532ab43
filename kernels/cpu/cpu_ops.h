/* CPU reference implementations of kernels/ops.h (fp32, and bf16 weights widened to fp32; OpenMP, OpenBLAS). */
#ifndef MEDUSA_CPU_OPS_H
#define MEDUSA_CPU_OPS_H

#include "../ops.h"

/* Below this many elements a parallel region costs more than the loop (a decoding step has one row). */
#define PAR_MIN 32768

void cpu_embedding_forward(float *out, const int32_t *tokens, const float *table, int T, int C);
void cpu_rmsnorm_forward(float *out, const float *x, const float *weight, int T, int C, float eps);
void cpu_matmul_forward(float *out, const float *in, const float *weight, const float *bias, int T, int IC, int OC);
void cpu_attention_forward(float *out, const float *q, const float *k, const float *v, const int32_t *key_begin,
                           const int32_t *key_end, const uint8_t *mask, int row0, int T, int n_heads, int n_kv_heads,
                           int head_dim);
void cpu_rope_qkv(float *q, float *k, float *v, const float *qkv, const int32_t *pos, int T, int n_heads,
                  int n_kv_heads, int head_dim, float theta);
void cpu_swiglu_forward(float *out, const float *gate_up, int T, int inter);
void cpu_residual_add(float *x, const float *y, size_t n);
void cpu_copy_rows(void *x, size_t block_bytes, int n_blocks, const int32_t *src, const int32_t *dst, int n,
                   size_t row_bytes);
void cpu_fill_zero(void *ptr, size_t bytes);
void cpu_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *in,
                         const float *weight, int T, int IC, int OC);
void cpu_resblock_forward(float *out, const float *x, const float *z, size_t n);
void cpu_silu_backward(float *dz, const float *dout, const float *z, size_t n);
void cpu_top_k(int32_t *idx, const float *x, int rows, int cols, int k);
void cpu_softmax_xent(float *logits, float *losses, int32_t *ranks, XentTargets targets, int T, int V, float dscale);
void cpu_rank_ids(int32_t *ranks, const float *x, const int32_t *ids, int rows, int cols);
void cpu_classifier_bf16(float *logits, float *losses, int32_t *ranks, XentTargets targets, const float *x,
                         const uint16_t *weight, float *dx, float *dweight, int rows, int IC, int V, float dscale);
void cpu_softmax_entropy(float *entropy, float *probs, const float *x, const int32_t *ids, int rows, int cols,
                         int n_ids, float temperature);
/* one row of softmax_entropy: p = softmax(x / temperature) into probs (cols floats); returns the entropy */
double cpu_softmax_entropy_row(const float *x, int cols, float temperature, float *probs);
void cpu_adamw(float *param, const float *grad, float *m, float *v, size_t n, const AdamWStep *step);
double cpu_sum_squares(const float *x, size_t n);
void cpu_matmul_bf16(float *out, const float *in, const uint16_t *weight, const float *bias, int T, int IC, int OC);
void cpu_matmul_backward_bf16(float *dinp, float *dweight, float *dbias, const float *dout, const float *in,
                              const uint16_t *weight, int T, int IC, int OC);
void cpu_matmul_bf16_in(float *out, const uint16_t *in, const uint16_t *weight, const float *bias, int T, int IC,
                        int OC, int accumulate);
void cpu_rmsnorm_bf16(uint16_t *out, const float *x, const float *weight, int T, int C, float eps);
void cpu_matmul_bf16_out(uint16_t *out, const uint16_t *in, const uint16_t *weight, const float *bias, int T, int IC,
                         int OC);
void cpu_rope_qkv_bf16(uint16_t *q, uint16_t *k, uint16_t *v, const uint16_t *qkv, const int32_t *pos, int T,
                       int n_heads, int n_kv_heads, int head_dim, float theta);
void cpu_swiglu_bf16(uint16_t *out, const uint16_t *gate_up, int T, int inter);
void cpu_embedding_bf16(float *out, const int32_t *tokens, const uint16_t *table, int T, int C);
void cpu_to_bf16(uint16_t *out, const float *x, size_t n);
void cpu_attention_bf16(uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                        const int32_t *key_begin, const int32_t *key_end, const uint8_t *mask, int row0, int T,
                        int n_heads, int n_kv_heads, int head_dim);

#endif
