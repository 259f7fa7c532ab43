/* Scaled dot-product attention over an explicit key range per query (packed causal batches, KV-cache
 * decoding and tree verification all reduce to this), with grouped-query heads sharing K/V.
 * Queries that share their first key (one sequence of a packed batch, or one decoding step) form a block
 * whose scores are one GEMM per head: S = Q K^T, masked, softmax, O = S V; a block of a few queries (decoding, trees)
 * takes them one by one (attend_small). */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>

#include "../../common/common.h"
#include "cpu_ops.h"
#include "simd.h"

typedef struct {
    int q0, nq; /* queries [q0, q0+nq) */
    int k0, nk; /* keys [k0, k0+nk): the union of the block's ranges */
} Block;

/* row[0..n) = softmax(row[0..n)) in place, -inf entries (masked keys) giving 0, zeros when every entry is -inf;
 * vectorised, the tail through a vector padded with -inf, so that every entry goes through the same exp */
static ALWAYS_INLINE void softmax_inplace(float *row, int n) {
    Vec8 vmax = vec8_splat(-INFINITY), tail = vec8_splat(-INFINITY);
    int body = n / 8 * 8;
    memcpy(&tail, row + body, sizeof(float) * (size_t)(n - body));
    for (int j = 0; j < body; j += 8) vmax = vec8_max(vmax, vec8_load(row + j));
    float maxv = vec8_hmax(vec8_max(vmax, tail));
    if (maxv == -INFINITY) {
        memset(row, 0, sizeof(float) * (size_t)n);
        return;
    }
    Vec8 vsum = vec8_splat(0.0f);
    for (int j = 0; j < body; j += 8) {
        Vec8 e = vec8_exp(vec8_load(row + j) - maxv);
        vec8_store(row + j, e);
        vsum += e;
    }
    tail = vec8_exp(tail - maxv);
    memcpy(row + body, &tail, sizeof(float) * (size_t)(n - body));
    float inv = 1.0f / (vec8_sum(vsum) + vec8_sum(tail));
    for (int j = 0; j < n; j++) row[j] *= inv;
}
SIMD_AVX2_FMA static void softmax_avx2(float *row, int n) { softmax_inplace(row, n); }
static void softmax_baseline(float *row, int n) { softmax_inplace(row, n); }

/* A small block's queries one at a time (decoding, a tree, a short prompt): the scores as dot products, the softmax,
 * then the values' weighted sum, each in one order whatever the block's size, so that a tree node's attention equals a
 * one-token step's bit for bit, and without OpenBLAS's per-call costs (two small GEMMs per head and layer were a third
 * of a 3-row tree step on SmolLM2-135M). */
typedef float Vec4 __attribute__((vector_size(16)));

/* Lane i of the result: the sum of lanes 0..7 of the i-th vector, added in lane order from 0 (vec8_sum's order, so
 * each sum is bit for bit vec8_sum's), for four vectors at once: transposed, the sums are 8 vertical additions. */
static ALWAYS_INLINE Vec4 vec8_sum4(Vec8 a, Vec8 b, Vec8 c, Vec8 d) {
    Vec8 ab_lo = __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11);
    Vec8 ab_hi = __builtin_shufflevector(a, b, 4, 12, 5, 13, 6, 14, 7, 15);
    Vec8 cd_lo = __builtin_shufflevector(c, d, 0, 8, 1, 9, 2, 10, 3, 11);
    Vec8 cd_hi = __builtin_shufflevector(c, d, 4, 12, 5, 13, 6, 14, 7, 15);
    Vec4 s = {0.0f, 0.0f, 0.0f, 0.0f};
    s += __builtin_shufflevector(ab_lo, cd_lo, 0, 1, 8, 9); /* lane 0 of a, b, c, d */
    s += __builtin_shufflevector(ab_lo, cd_lo, 2, 3, 10, 11);
    s += __builtin_shufflevector(ab_lo, cd_lo, 4, 5, 12, 13);
    s += __builtin_shufflevector(ab_lo, cd_lo, 6, 7, 14, 15);
    s += __builtin_shufflevector(ab_hi, cd_hi, 0, 1, 8, 9); /* lane 4 */
    s += __builtin_shufflevector(ab_hi, cd_hi, 2, 3, 10, 11);
    s += __builtin_shufflevector(ab_hi, cd_hi, 4, 5, 12, 13);
    s += __builtin_shufflevector(ab_hi, cd_hi, 6, 7, 14, 15);
    return s;
}

/* q . k over head_dim for keys k_0 .. k_{KN-1} (KN = 1 or 4): two chains of FMAs per key over the 8-wide body, the
 * chains' sum reduced in lane order, then the tail in order: every key's dot in one order, whichever KN. */
static ALWAYS_INLINE void dot_keys(float *dots, const float *q, const float *const *kj, int KN, int head_dim) {
    int body = head_dim / 8 * 8, d = 0;
    Vec8 acc[4][2];
#pragma GCC unroll 4
    for (int i = 0; i < KN; i++) acc[i][0] = acc[i][1] = vec8_splat(0.0f);
    for (; d + 16 <= body; d += 16) {
        Vec8 q0 = vec8_load(q + d), q1 = vec8_load(q + d + 8);
#pragma GCC unroll 4
        for (int i = 0; i < KN; i++) {
            acc[i][0] += q0 * vec8_load(kj[i] + d);
            acc[i][1] += q1 * vec8_load(kj[i] + d + 8);
        }
    }
    if (d < body)
        for (int i = 0; i < KN; i++) acc[i][0] += vec8_load(q + d) * vec8_load(kj[i] + d);
    if (KN == 4) {
        Vec4 s = vec8_sum4(acc[0][0] + acc[0][1], acc[1][0] + acc[1][1], acc[2][0] + acc[2][1], acc[3][0] + acc[3][1]);
        for (int i = 0; i < 4; i++) dots[i] = s[i];
    } else {
        dots[0] = vec8_sum(acc[0][0] + acc[0][1]);
    }
    for (int i = 0; i < KN; i++)
        for (int e = body; e < head_dim; e++) dots[i] += q[e] * kj[i][e];
}

/* A small block's queries one at a time (decoding, a tree, a short prompt): the scores as dot products, the softmax,
 * then the values' weighted sum, each in one order whatever the block's size, so that a tree node's attention equals a
 * one-token step's bit for bit, and without OpenBLAS's per-call costs (two small GEMMs per head and layer were a third
 * of a 3-row tree step on SmolLM2-135M). Dot products go four keys at a time (their sums reduced together), and the
 * weighted sum keeps 64 output values in registers over all keys. */
static ALWAYS_INLINE void attend_small(float *out, const float *q, const float *k, const float *v,
                                       const int32_t *key_end, const uint8_t *mask, int row0, int T, const Block *b,
                                       int h, int group, int head_dim, size_t q_stride, size_t kv_stride,
                                       AttentionScoring sc, float *scores) {
    int kvh = h / group, body = head_dim / 8 * 8;
    const float *kb = k + (size_t)b->k0 * kv_stride + (size_t)kvh * head_dim;
    const float *vb = v + (size_t)b->k0 * kv_stride + (size_t)kvh * head_dim;
    for (int i = 0; i < b->nq; i++) {
        int t = b->q0 + i, n = key_end[t] - b->k0;
        const float *qt = q + (size_t)t * q_stride + (size_t)h * head_dim;
        int j = 0;
        for (; j + 4 <= n; j += 4) {
            const float *kj[4] = {kb + (size_t)j * kv_stride, kb + (size_t)(j + 1) * kv_stride,
                                  kb + (size_t)(j + 2) * kv_stride, kb + (size_t)(j + 3) * kv_stride};
            dot_keys(scores + j, qt, kj, 4, head_dim);
        }
        for (; j < n; j++) {
            const float *kj[1] = {kb + (size_t)j * kv_stride};
            dot_keys(scores + j, qt, kj, 1, head_dim);
        }
        for (j = 0; j < n; j++) scores[j] = attention_logit(sc, scores[j]);
        if (mask) /* a tree node sees only its ancestors among the keys from row0 on */
            for (j = row0 - b->k0 > 0 ? row0 - b->k0 : 0; j < n; j++)
                if (!mask[(size_t)t * T + (b->k0 + j - row0)]) scores[j] = -INFINITY;
        softmax_inplace(scores, n);
        /* sum_j p_j v_j, j in order from 0 (as if accumulated in place in ot) */
        float *ot = out + (size_t)t * q_stride + (size_t)h * head_dim;
        int d = 0;
        for (; d + 64 <= body; d += 64) {
            Vec8 acc[8];
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++) acc[c] = vec8_splat(0.0f);
            for (j = 0; j < n; j++) {
                const float *vj = vb + (size_t)j * kv_stride + d;
                float p = scores[j];
#pragma GCC unroll 8
                for (int c = 0; c < 8; c++) acc[c] = acc[c] + p * vec8_load(vj + 8 * c);
            }
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++) vec8_store(ot + d + 8 * c, acc[c]);
        }
        memset(ot + d, 0, sizeof(float) * (size_t)(head_dim - d));
        for (j = 0; j < n; j++) {
            const float *vj = vb + (size_t)j * kv_stride;
            float p = scores[j];
            for (int e = d; e < body; e += 8) vec8_store(ot + e, vec8_load(ot + e) + p * vec8_load(vj + e));
            for (int e = body; e < head_dim; e++) ot[e] += p * vj[e];
        }
    }
}
#define ATTEND_SMALL_ARGS                                                                                              \
    float *out, const float *q, const float *k, const float *v, const int32_t *key_end, const uint8_t *mask, int row0, \
        int T, const Block *b, int h, int group, int head_dim, size_t q_stride, size_t kv_stride, AttentionScoring sc, \
        float *scores
SIMD_AVX2_FMA static void attend_small_avx2(ATTEND_SMALL_ARGS) {
    attend_small(out, q, k, v, key_end, mask, row0, T, b, h, group, head_dim, q_stride, kv_stride, sc, scores);
}
static void attend_small_baseline(ATTEND_SMALL_ARGS) {
    attend_small(out, q, k, v, key_end, mask, row0, T, b, h, group, head_dim, q_stride, kv_stride, sc, scores);
}
#undef ATTEND_SMALL_ARGS

static void attend_block(float *out, const float *q, const float *k, const float *v, const int32_t *key_end,
                         const uint8_t *mask, int row0, int T, const Block *b, int h, int group, int head_dim,
                         size_t q_stride, size_t kv_stride, AttentionScoring sc, float *scores) {
    if (b->nq <= CPU_SMALL_ROWS) {
        (simd_avx2_fma() ? attend_small_avx2 : attend_small_baseline)(out, q, k, v, key_end, mask, row0, T, b, h, group,
                                                                      head_dim, q_stride, kv_stride, sc, scores);
        return;
    }
    int kvh = h / group;
    const float *qb = q + (size_t)b->q0 * q_stride + (size_t)h * head_dim;
    const float *kb = k + (size_t)b->k0 * kv_stride + (size_t)kvh * head_dim;
    const float *vb = v + (size_t)b->k0 * kv_stride + (size_t)kvh * head_dim;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b->nq, b->nk, head_dim, 1.0f, qb, (int)q_stride, kb,
                (int)kv_stride, 0.0f, scores, b->nk);
    for (int i = 0; i < b->nq; i++) {
        int t = b->q0 + i;
        float *row = scores + (size_t)i * b->nk;
        int n = key_end[t] - b->k0; /* keys past this query's range are masked */
        for (int j = 0; j < n; j++) row[j] = attention_logit(sc, row[j]);
        if (mask) /* a tree node sees only its ancestors among the keys from row0 on */
            for (int j = row0 - b->k0 > 0 ? row0 - b->k0 : 0; j < n; j++)
                if (!mask[(size_t)t * T + (b->k0 + j - row0)]) row[j] = -INFINITY;
        (simd_avx2_fma() ? softmax_avx2 : softmax_baseline)(row, n);
        for (int j = n; j < b->nk; j++) row[j] = 0.0f;
    }
    float *ob = out + (size_t)b->q0 * q_stride + (size_t)h * head_dim;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b->nq, head_dim, b->nk, 1.0f, scores, b->nk, vb,
                (int)kv_stride, 0.0f, ob, (int)q_stride);
}

void cpu_attention(float *out, const float *q, const float *k, const float *v, const int32_t *key_begin,
                   const int32_t *key_end, const uint8_t *mask, int row0, int T, int n_heads, int n_kv_heads,
                   int head_dim, AttentionScoring scoring) {
    /* split the queries into blocks of equal key_begin, at most 256 queries each to bound the score buffer */
    Block *blocks = malloc(sizeof(Block) * (size_t)(T > 0 ? T : 1));
    int n_blocks = 0;
    size_t max_scores = 1, work = 0;
    for (int t = 0; t < T;) {
        Block b = {t, 0, key_begin[t], 0};
        int end_max = 0;
        while (t < T && key_begin[t] == b.k0 && b.nq < 256) {
            if (key_end[t] > end_max) end_max = key_end[t];
            t++;
            b.nq++;
        }
        b.nk = end_max - b.k0;
        if ((size_t)b.nq * (size_t)b.nk > max_scores) max_scores = (size_t)b.nq * (size_t)b.nk;
        work += (size_t)b.nq * (size_t)b.nk;
        blocks[n_blocks++] = b;
    }
    int group = n_heads / n_kv_heads;
    size_t q_stride = (size_t)n_heads * head_dim, kv_stride = (size_t)n_kv_heads * head_dim;
    /* a decoding step over a short context is cheaper than waking the other threads; from ~100 keys (SmolLM2's 576-wide
     * queries) the heads are shared out: 2 ms of a 10 ms step over 300 keys, when the threads wait by spinning briefly
     * (medusa-infer on an idle machine), against 1.6 ms more when each region wakes sleeping threads */
#pragma omp parallel if (work * q_stride > (1 << 16))
    {
        float *scores = malloc(sizeof(float) * max_scores);
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int bi = 0; bi < n_blocks; bi++)
            for (int h = 0; h < n_heads; h++)
                attend_block(out, q, k, v, key_end, mask, row0, T, &blocks[bi], h, group, head_dim, q_stride, kv_stride,
                             scoring, scores);
        free(scores);
    }
    free(blocks);
}

void cpu_attention_bf16(uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                        const int32_t *key_begin, const int32_t *key_end, const uint8_t *mask, int row0, int T,
                        int n_heads, int n_kv_heads, int head_dim, AttentionScoring scoring) {
    size_t n = (size_t)T * n_heads * head_dim, kv_n = (size_t)(row0 + T) * n_kv_heads * head_dim;
    float *wq = cpu_widened_copy(q, n), *wk = cpu_widened_copy(k, kv_n), *wv = cpu_widened_copy(v, kv_n);
    float *exact = xmalloc(sizeof(float) * (n ? n : 1));
    cpu_attention(exact, wq, wk, wv, key_begin, key_end, mask, row0, T, n_heads, n_kv_heads, head_dim, scoring);
    cpu_to_bf16(out, exact, n);
    free(exact);
    free(wq);
    free(wk);
    free(wv);
}
