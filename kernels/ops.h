/* The one op interface: every op the model needs, independent of where it runs. The CPU backend
 * (kernels/cpu) is the reference; other backends implement the same table and are tested against it.
 * Tensors are row-major arrays in the backend's memory; shapes are given per call. */
#ifndef MEDUSA_OPS_H
#define MEDUSA_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "math_common.h"

typedef struct Backend Backend;

/* A GPU backend cuts the keys of a few queries over a long cache (decoding, a tree) into up to ATTENTION_SPLIT_MAX
 * slices of at least ATTENTION_SPLIT_MIN_KEYS keys, for (queries x heads) up to ATTENTION_SPLIT_ROWS, and
 * merges their partial softmax states from a scratch of ATTENTION_SPLIT_BYTES(head_dim), which decoding's memory
 * plan counts. */
#define ATTENTION_SPLIT_MAX 16
#define ATTENTION_SPLIT_MIN_KEYS 128
#define ATTENTION_SPLIT_ROWS 4096 /* a 64-node tree over 64 heads */
#define ATTENTION_SPLIT_BYTES(head_dim)                                                                                \
    ((size_t)ATTENTION_SPLIT_MAX * ATTENTION_SPLIT_ROWS * (size_t)((head_dim) + 2) * sizeof(float))

/* What the fused softmax cross-entropy compares each row of logits [T, V] with (backend memory, an entry per row). */
typedef struct {
    /* hard targets: row t's loss is -log softmax(logits)[targets[t]] and its gradient dscale * (softmax -
     * onehot(targets[t])); a row with a negative target has loss 0 and a zero gradient */
    const int32_t *targets;
    /* or soft ones (targets then unused): a teacher's logits [T, V], whose softmax q every row learns; its loss is
     * KL(q || p) = sum_j q_j (log q_j - log p_j) with p = softmax(logits) (a term with q_j = 0 is 0), the cross-entropy
     * with soft targets less q's entropy, and its gradient dscale * (p - q). NULL: hard targets. */
    const float *teacher;
    /* the ids whose ranks the op reports: the targets themselves, or the data's tokens when the targets are another
     * model's (distillation), so that top-k accuracy is measured on the data either way */
    const int32_t *ranked;
} XentTargets;

struct Backend {
    const char *name;
    /* the device in words ("NVIDIA H200"; "cpu"), and its dense bf16 tensor peak in FLOP/s (gpu_bf16_peak_flops of that
     * name; 0 where unknown, and on the CPU) for the MFU of bf16 runs */
    const char *device;
    double peak_bf16_flops;
    /* what callers ask of a backend instead of its name */
    int is_host;              /* its memory is host memory (pointers are usable by the CPU) */
    int prefers_bf16;         /* --precision auto stores the base weights in bf16 here (tensor cores) */
    int default_logits_chunk; /* rows of lm_head logits computed at once when --logits-chunk is 0 */

    /* memory */
    void *(*alloc)(size_t bytes);
    void (*free)(void *ptr);
    void (*upload)(void *dst, const void *host_src, size_t bytes);
    void (*download)(void *host_dst, const void *src, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes); /* within the backend's memory */
    /* the run's planned peak (model/memory_plan.h): a backend with device memory takes it as one allocation
     * up front and serves alloc() from it, so nothing is allocated from the device in the step loop */
    void (*reserve)(size_t bytes);
    /* the most bytes in use at once since the previous call (or start-up), to check the plan against; each
     * call starts a new measurement from what is in use then. 0 where not tracked (the CPU). */
    size_t (*peak_bytes)(void);
    /* bytes a run could still take: free device memory, or the host's physical memory on the CPU */
    size_t (*memory_available)(void);

    /* out[t,:] = table[tokens[t],:]  (T x C) */
    void (*embedding)(float *out, const int32_t *tokens, const float *table, int T, int C);
    /* out = x / rms(x) * weight, per row of C */
    void (*rmsnorm)(float *out, const float *x, const float *weight, int T, int C, float eps);
    /* out[T,OC] = in[T,IC] @ weight[OC,IC]^T (+ bias[OC] when not NULL): a PyTorch Linear */
    void (*matmul)(float *out, const float *in, const float *weight, const float *bias, int T, int IC, int OC);
    /* The fused q/k/v projection's rows qkv [T, q_dim + 2 kv_dim] (q_dim = n_heads*head_dim, kv_dim =
     * n_kv_heads*head_dim) split into q [T, q_dim], k and v [T, kv_dim], with the rotary embedding applied to q and k
     * at positions pos[T] (Hugging Face layout: the two rotated halves are the first and second half of each head). k
     * and v may be rows of a KV cache. */
    void (*rope_qkv)(float *q, float *k, float *v, const float *qkv, const int32_t *pos, int T, int n_heads,
                     int n_kv_heads, int head_dim, float theta);
    /* softmax(q k^T / sqrt(d)) v per head with grouped-query sharing; query t attends to keys
     * key_begin[t] <= j < key_end[t] (rows of k/v). q/out: [T, n_heads*d]; k/v: [row0 + T, n_kv_heads*d], the
     * T new rows after row0 others (a KV cache's length; 0 for a packed batch), so no range ends past row0 + T.
     * With a tree mask [T, T] (tree decoding), a key j >= row0 is attended only when
     * mask[t*T + j - row0] is set: the T new tokens see only their ancestors. A backend may spread the keys of
     * a small batch over a long cache across blocks (ATTENTION_SPLIT_*). A GPU backend reads a block of queries'
     * keys over the union of their ranges, weighting those outside a query's range by zero: every row from the smallest
     * key_begin to the largest key_end of a call must be finite (0 x NaN is NaN), even where no range covers it. */
    void (*attention)(float *out, const float *q, const float *k, const float *v, const int32_t *key_begin,
                      const int32_t *key_end, const uint8_t *mask, int row0, int T, int n_heads, int n_kv_heads,
                      int head_dim);
    /* Row moves within n_blocks blocks of rows (block b at x + b * block_bytes, rows of row_bytes bytes; both
     * multiples of 4): in each block, for i = 0..n-1 in order, row dst[i] = row src[i] (a later move may read what an
     * earlier one wrote). The row lists are host arrays. One call keeps the accepted tree rows of every layer's keys
     * and values, whatever their element type. */
    void (*copy_rows)(void *x, size_t block_bytes, int n_blocks, const int32_t *src, const int32_t *dst, int n,
                      size_t row_bytes);
    /* out[t, j] = silu(gate) * up, with gate = gate_up[t, j] and up = gate_up[t, inter + j]: the gate/up GEMM's
     * rows [T, 2 inter] into out [T, inter] (inter: the MLP's intermediate size) */
    void (*swiglu)(float *out, const float *gate_up, int T, int inter);
    /* x += y, n elements */
    void (*residual_add)(float *x, const float *y, size_t n);

    /* --- training (Medusa heads) --- */
    void (*fill_zero)(void *ptr, size_t bytes);
    /* backward of matmul: dinp[T,IC] += dout @ weight; dweight[OC,IC] += dout^T @ in; dbias[OC] += sum_t dout
     * (each output skipped when NULL) */
    void (*matmul_backward)(float *dinp, float *dweight, float *dbias, const float *dout, const float *in,
                            const float *weight, int T, int IC, int OC);
    /* Medusa ResBlock tail: out = x + silu(z), z the Linear's output */
    void (*resblock_forward)(float *out, const float *x, const float *z, size_t n);
    /* dz = dout * silu'(z) */
    void (*silu_backward)(float *dz, const float *dout, const float *z, size_t n);
    /* Fused softmax cross-entropy over rows of logits [T,V], never storing probabilities: each row's loss against its
     * target (hard or soft, XentTargets) into losses[t], the row overwritten with its gradient, and ranks[t] the rank
     * of ranked[t] in the row as rank_ids gives it (the number of logits strictly greater than its own, so top-k hit
     * <=> rank < k; -1 where ranked[t] < 0, RANK_NOT_FINITE for a non-finite logit). */
    void (*softmax_xent)(float *logits, float *losses, int32_t *ranks, XentTargets targets, int T, int V, float dscale);
    /* ranks[r]: the number of entries of row r of x [rows, cols] strictly greater than x[r, ids[r]] (so ids[r] is
     * within the row's top k <=> ranks[r] < k, ties counting for it; NaN entries never count above it), -1 where ids[r]
     * < 0, RANK_NOT_FINITE where x[r, ids[r]] is NaN or infinite. Evaluation ranks the base model's choices in the
     * heads' logits with it. */
    void (*rank_ids)(int32_t *ranks, const float *x, const int32_t *ids, int rows, int cols);
    /* Typical acceptance's statistics over rows of logits x [rows, cols], so that no row need leave the device:
     * with p = softmax(x[r] / temperature), entropy[r] = -sum_i p_i log(p_i + 1e-5) (the reference's form) and
     * probs[r*n_ids + j] = p[ids[r*n_ids + j]] (0 where the id is negative). */
    void (*softmax_entropy)(float *entropy, float *probs, const float *x, const int32_t *ids, int rows, int cols,
                            int n_ids, float temperature);
    /* AdamW (decoupled weight decay, bias correction) with the step's scalars (kernels/math_common.h). */
    void (*adamw)(float *param, const float *grad, float *m, float *v, size_t n, const AdamWStep *step);
    /* sum of squares of x, as a host double (for the global gradient norm) */
    double (*sum_squares)(const float *x, size_t n);

    /* --- bf16 weights (uint16_t bit patterns, kernels/math_common.h): bf16 activations between the base model's ops,
     * an fp32 residual stream, fp32 heads with bf16 GEMM copies --- */
    /* matmul with a bf16 weight: the input is rounded to bf16 first (what a tensor core takes), products are
     * exact in fp32 and summed in fp32; bias and out stay fp32 */
    void (*matmul_bf16)(float *out, const float *in, const uint16_t *weight, const float *bias, int T, int IC, int OC);
    /* matmul_backward with a bf16 weight: dout and in are rounded to bf16 for the products, which are summed
     * into the fp32 dinp/dweight; dbias sums the fp32 dout */
    void (*matmul_backward_bf16)(float *dinp, float *dweight, float *dbias, const float *dout, const float *in,
                                 const uint16_t *weight, int T, int IC, int OC);
    /* The heads' classifier on a bf16 lm_head weight [V, IC], for rows of fp32 activations x [rows, IC]: logits =
     * x @ weight^T (matmul_bf16's) into the scratch `logits` [rows, V], softmax_xent's losses and ranks, and when dx or
     * dweight is given, softmax_xent's gradient dlogits rounded to bf16 into dx [rows, IC] += dlogits @ weight and
     * dweight [V, IC] += dlogits^T @ x (matmul_backward_bf16's products; either may be NULL).
     * `logits` holds nothing useful after. Called per chunk of rows, so no probabilities are stored; on a GPU the
     * softmax writes the bf16 gradient the GEMMs take directly, and x is rounded once for both of its GEMMs. */
    void (*classifier_bf16)(float *logits, float *losses, int32_t *ranks, XentTargets targets, const float *x,
                            const uint16_t *weight, float *dx, float *dweight, int rows, int IC, int V, float dscale);
    /* matmul_bf16 on an input already rounded to bf16 by the op that made it (rmsnorm_bf16, attention_bf16,
     * swiglu_bf16). With accumulate the product is added to out (a residual branch summed into the stream by the GEMM
     * itself) */
    void (*matmul_bf16_in)(float *out, const uint16_t *in, const uint16_t *weight, const float *bias, int T, int IC,
                           int OC, int accumulate);
    /* matmul_bf16_in with a bf16 result, what the next op reads (q/k/v, gate/up): the fp32 sum rounded, then
     * bias (when not NULL) added and the sum rounded again (a GEMM writing bf16, then a bias add) */
    void (*matmul_bf16_out)(uint16_t *out, const uint16_t *in, const uint16_t *weight, const float *bias, int T, int IC,
                            int OC);
    /* rmsnorm with its fp32 result rounded to bf16: the input of the bf16 GEMMs that follow */
    void (*rmsnorm_bf16)(uint16_t *out, const float *x, const float *weight, int T, int C, float eps);
    /* rope_qkv on bf16 rows: each rotated pair widened, rotated in fp32 as rope_qkv does, rounded; v copied */
    void (*rope_qkv_bf16)(uint16_t *q, uint16_t *k, uint16_t *v, const uint16_t *qkv, const int32_t *pos, int T,
                          int n_heads, int n_kv_heads, int head_dim, float theta);
    /* swiglu of bf16 gate/up rows in fp32, rounded: the down projection's input */
    void (*swiglu_bf16)(uint16_t *out, const uint16_t *gate_up, int T, int inter);
    /* out[t,:] = table[tokens[t],:] widened to fp32 */
    void (*embedding_bf16)(float *out, const int32_t *tokens, const uint16_t *table, int T, int C);
    /* attention on bf16 q, k and v (a bf16 KV cache), its output rounded to bf16 (o_proj's input): the products may
     * take the probabilities rounded to bf16 too (softmax and sums in fp32), so within bf16 rounding of attention
     * on the widened inputs. The CPU computes that exactly, then rounds; a GPU uses its tensor cores where they pay
     * (large packed batches). */
    void (*attention_bf16)(uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                           const int32_t *key_begin, const int32_t *key_end, const uint8_t *mask, int row0, int T,
                           int n_heads, int n_kv_heads, int head_dim);
    /* idx[r*k + j], j < k: the k largest entries of row r of x [rows, cols], largest first, equal values by the
     * lower column (topk_after); NaN never taken, -1 where a row has fewer than k others. k <= 16: greedy
     * decoding's argmax (k = 1) and the tree's candidates (k = 10) leave the device as ids, not logits. */
    void (*top_k)(int32_t *idx, const float *x, int rows, int cols, int k);
    /* out = bf16(x), n elements (the low-precision copy of trained weights) */
    void (*to_bf16)(uint16_t *out, const float *x, size_t n);
};

const Backend *backend_cpu(void);
/* Applies --threads (> 0) to the host's OpenMP and OpenBLAS threads. */
void set_threads(int threads);
/* kernels/cuda (only in builds with nvcc, which define MEDUSA_CUDA) */
const Backend *backend_cuda(void);
/* "cpu" or "cuda" (the --device flag); fatal for an unknown name or a CUDA-less build */
const Backend *backend_by_name(const char *name);
/* A GPU's dense bf16 tensor peak in FLOP/s (vendor data sheets, without sparsity) from its device name, as CUDA
 * reports it ("NVIDIA A100-SXM4-80GB"); 0 for a GPU not in the table. */
double gpu_bf16_peak_flops(const char *device_name);

#endif
