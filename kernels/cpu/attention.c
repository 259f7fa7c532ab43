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
        for (int j = 0; j < n; j++) {
            const float *kj = kb + (size_t)j * kv_stride;
            Vec8 acc[2] = {vec8_splat(0.0f), vec8_splat(0.0f)}; /* two chains of FMAs */
            int d = 0;
            for (; d + 16 <= body; d += 16) {
                acc[0] += vec8_load(qt + d) * vec8_load(kj + d);
                acc[1] += vec8_load(qt + d + 8) * vec8_load(kj + d + 8);
            }
            if (d < body) acc[0] += vec8_load(qt + d) * vec8_load(kj + d);
            float dot = vec8_sum(acc[0] + acc[1]);
            for (int d = body; d < head_dim; d++) dot += qt[d] * kj[d];
            scores[j] = attention_logit(sc, dot);
        }
        if (mask) /* a tree node sees only its ancestors among the keys from row0 on */
            for (int j = row0 - b->k0 > 0 ? row0 - b->k0 : 0; j < n; j++)
                if (!mask[(size_t)t * T + (b->k0 + j - row0)]) scores[j] = -INFINITY;
        softmax_inplace(scores, n);
        float *ot = out + (size_t)t * q_stride + (size_t)h * head_dim; /* sum_j p_j v_j, j in order, in place */
        memset(ot, 0, sizeof(float) * (size_t)head_dim);
        for (int j = 0; j < n; j++) {
            const float *vj = vb + (size_t)j * kv_stride;
            float p = scores[j];
            for (int d = 0; d < body; d += 8) vec8_store(ot + d, vec8_load(ot + d) + p * vec8_load(vj + d));
            for (int d = body; d < head_dim; d++) ot[d] += p * vj[d];
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
