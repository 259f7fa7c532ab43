/* CPU reference implementations of kernels/ops.h (fp32, and bf16 weights widened to fp32; OpenMP, OpenBLAS). */
#ifndef MEDUSA_CPU_OPS_H
#define MEDUSA_CPU_OPS_H

#include "../ops.h"

/* Below this many elements a parallel region costs more than the loop (a decoding step has one row). */
#define PAR_MIN 32768
/* Up to this many input rows (decoding, tree verification) a matmul streams the weights past the rows itself; beyond,
 * OpenBLAS sgemm's cache blocking wins (kernels/cpu/matmul.c) */
#define CPU_SMALL_ROWS 24

/* the ops (kernels/ops.def): cpu_<op> for each op of struct Backend */
#define OP(ret, op, params, args) ret cpu_##op params;
#include "../ops.def"
#undef OP

/* Rows o0 .. o0 + n - 1 of a weight matrix of `type` (fp32 is not one: BF16, F16 or a block format) widened to fp32
 * into dst [n, IC] (kernels/cpu/matmul_q.c: the same floats as matmul_q multiplies) */
void cpu_widen_rows(float *dst, const void *weight, DType type, int o0, int n, int IC);
/* out[t, o] (rows ldo apart) = beta out[t, o] + x[t, :] . W[o, :], the weight rows widened a block of about 4 MB at a
 * time (cpu_widen_rows) for OpenBLAS: the bf16 GEMMs' reference and matmul_q beyond CPU_SMALL_ROWS rows */
void cpu_matmul_widened(float *out, int ldo, const float *x, const void *weight, DType type, int T, int IC, int OC,
                        float beta);
/* whether matmul_q runs a SIMD build on this CPU (backend_prefers_native) */
int cpu_matmul_q_simd(void);
/* bf16 values widened to fp32, in place or into a new array (xmalloc) */
void cpu_widen(float *out, const uint16_t *x, size_t n);
float *cpu_widened_copy(const uint16_t *x, size_t n);
/* one row of softmax_entropy: p = softmax(x / temperature) into probs (cols floats); returns the entropy */
double cpu_softmax_entropy_row(const float *x, int cols, float temperature, float *probs);

#endif
