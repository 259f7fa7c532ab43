#include "medusa.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static size_t block_params(const MedusaShape *s) { return (size_t)s->hidden * s->hidden + (size_t)s->hidden; }
static size_t head_params(const MedusaShape *s) {
    return (size_t)s->n_layers * block_params(s) + (size_t)s->head_vocab * s->hidden;
}

float *medusa_linear_w(const MedusaHeads *m, float *base, int head, int layer) {
    return base + (size_t)head * head_params(&m->shape) + (size_t)layer * block_params(&m->shape);
}
float *medusa_linear_b(const MedusaHeads *m, float *base, int head, int layer) {
    return medusa_linear_w(m, base, head, layer) + (size_t)m->shape.hidden * m->shape.hidden;
}
float *medusa_lm_head(const MedusaHeads *m, float *base, int head) {
    return base + (size_t)head * head_params(&m->shape) + (size_t)m->shape.n_layers * block_params(&m->shape);
}

void medusa_init(MedusaHeads *m, const Backend *be, MedusaShape shape) {
    if (shape.n_heads < 1 || shape.n_heads > 64 || shape.n_layers < 0 || shape.n_layers > 16)
        fatal("medusa: %d heads x %d layers is out of range (1..64 heads, 0..16 layers)", shape.n_heads,
              shape.n_layers);
    if (shape.head_vocab < 0 || shape.head_vocab > shape.vocab)
        fatal("medusa: head vocabulary %d is out of range (0..%d)", shape.head_vocab, shape.vocab);
    if (shape.head_vocab == 0) shape.head_vocab = shape.vocab;
    memset(m, 0, sizeof *m);
    m->shape = shape;
    m->be = be;
    if (shape.head_vocab < shape.vocab) {
        m->token_map = xmalloc(sizeof(int32_t) * (size_t)shape.head_vocab);
        m->token_index = xmalloc(sizeof(int32_t) * (size_t)shape.vocab);
        for (int r = 0; r < shape.head_vocab; r++) m->token_map[r] = r;
        medusa_set_token_map(m, m->token_map);
    }
    m->n_params = (size_t)shape.n_heads * head_params(&shape);
    m->params = be->alloc(sizeof(float) * m->n_params);
    be->fill_zero(m->params, sizeof(float) * m->n_params);
}

void medusa_set_token_map(MedusaHeads *m, const int32_t *map) {
    const MedusaShape *s = &m->shape;
    if (!m->token_map) fatal("medusa: a token map given to full-vocabulary heads");
    for (int r = 0; r < s->head_vocab; r++)
        if (map[r] < 0 || map[r] >= s->vocab || (r > 0 && map[r] <= map[r - 1]))
            fatal("medusa: token map entry %d (%d) is out of range or out of order", r, map[r]);
    memmove(m->token_map, map, sizeof(int32_t) * (size_t)s->head_vocab);
    for (int v = 0; v < s->vocab; v++) m->token_index[v] = -1;
    for (int r = 0; r < s->head_vocab; r++) m->token_index[map[r]] = r;
}

void medusa_init_from_base(MedusaHeads *m, const Model *base, Rng *rng) {
    const MedusaShape *s = &m->shape;
    const Backend *be = m->be;
    size_t H = (size_t)s->hidden;
    float bound = 1.0f / sqrtf((float)s->hidden); /* PyTorch Linear's default bias init */
    float *bias = xmalloc(sizeof(float) * H);
    /* each lm_head starts as the base's rows (token_map's, or all of them), widened to fp32 */
    int32_t *rows = xmalloc(sizeof(int32_t) * (size_t)s->head_vocab);
    for (int r = 0; r < s->head_vocab; r++) rows[r] = m->token_map ? m->token_map[r] : r;
    int32_t *rows_dev = be->alloc(sizeof(int32_t) * (size_t)s->head_vocab);
    be->upload(rows_dev, rows, sizeof(int32_t) * (size_t)s->head_vocab);
    for (int h = 0; h < s->n_heads; h++) {
        for (int l = 0; l < s->n_layers; l++) {
            be->fill_zero(medusa_linear_w(m, m->params, h, l), sizeof(float) * H * H);
            for (size_t i = 0; i < H; i++) bias[i] = (2.0f * rng_uniform(rng) - 1.0f) * bound;
            be->upload(medusa_linear_b(m, m->params, h, l), bias, sizeof(float) * H);
        }
        model_lm_head_rows(base, medusa_lm_head(m, m->params, h), rows_dev, s->head_vocab);
    }
    be->free(rows_dev);
    free(rows);
    free(bias);
}

void medusa_enable_grads(MedusaHeads *m) {
    if (!m->grads) m->grads = m->be->alloc(sizeof(float) * m->n_params);
    m->be->fill_zero(m->grads, sizeof(float) * m->n_params);
}

void medusa_free(MedusaHeads *m) {
    if (!m->params) return; /* never made (a pipeline stage without heads) */
    m->be->free(m->params);
    if (m->params_bf16) m->be->free(m->params_bf16);
    if (m->grads) m->be->free(m->grads);
    free(m->token_map);
    free(m->token_index);
    memset(m, 0, sizeof *m);
}

void medusa_work_init(MedusaWork *w, const MedusaHeads *m, int max_tokens, int chunk_rows) {
    const Backend *be = m->be;
    const MedusaShape *s = &m->shape;
    size_t TH = (size_t)max_tokens * s->hidden;
    memset(w, 0, sizeof *w);
    w->max_tokens = max_tokens;
    w->chunk_rows = chunk_rows < max_tokens ? chunk_rows : max_tokens;
    size_t blocks = (size_t)(s->n_layers > 0 ? s->n_layers : 1);
    w->act = be->alloc(sizeof(float) * TH * blocks);
    w->pre = be->alloc(sizeof(float) * TH * blocks);
    w->dx = be->alloc(sizeof(float) * TH);
    w->dz = be->alloc(sizeof(float) * TH);
    if (m->params_bf16) {
        w->act_bf16 = be->alloc(sizeof(uint16_t) * TH * (blocks + 1));
        w->dz_bf16 = be->alloc(sizeof(uint16_t) * TH);
    }
    w->logits = be->alloc(sizeof(float) * (size_t)w->chunk_rows * s->head_vocab);
    /* a head's targets for all its rows: one upload per head, not per chunk (each copy waits for the device's queue to
     * drain) */
    w->targets = be->alloc(sizeof(int32_t) * (size_t)max_tokens);
    w->ranked = be->alloc(sizeof(int32_t) * (size_t)max_tokens);
    w->rows_hidden = be->alloc(sizeof(float) * TH);
    w->rows = be->alloc(sizeof(int32_t) * (size_t)max_tokens);
    w->choices = be->alloc(sizeof(int32_t) * (size_t)max_tokens);
    w->host_targets = xmalloc(sizeof(int32_t) * (size_t)max_tokens * s->n_heads);
    w->host_rows = xmalloc(sizeof(int32_t) * (size_t)max_tokens);
    w->host_row_targets = xmalloc(sizeof(int32_t) * (size_t)max_tokens);
    w->host_ranked = xmalloc(sizeof(int32_t) * (size_t)max_tokens);
    w->host_choices = xmalloc(sizeof(int32_t) * (size_t)max_tokens);
    medusa_work_reserve_batches(w, m, 1);
}

/* a batch's results: per head and row a loss, a rank and a choice's rank */
void medusa_work_reserve_batches(MedusaWork *w, const MedusaHeads *m, int n_batches) {
    size_t words = (size_t)n_batches * m->shape.n_heads * w->max_tokens * 3;
    if (words <= w->results_capacity) return;
    if (w->results_used || w->scalar_pending)
        fatal("medusa: results reserved while %zu words are pending", w->results_used + 2 * w->scalar_pending);
    if (w->scalar) m->be->free(w->scalar);
    free(w->host_block);
    /* the scalar first (8-byte aligned), then the results */
    size_t bytes = sizeof(double) + sizeof(float) * words;
    w->scalar = m->be->alloc(bytes);
    w->results = (float *)(void *)(w->scalar + 1);
    w->host_block = xmalloc(bytes);
    w->host_results = (float *)(void *)((double *)w->host_block + 1);
    w->results_capacity = words;
}

double *medusa_work_scalar(MedusaWork *w) {
    w->scalar_pending = 1;
    return w->scalar;
}

void medusa_work_enable_teacher(MedusaWork *w, const MedusaHeads *m) {
    const Backend *be = m->be;
    w->teacher = be->alloc(sizeof(float) * (size_t)w->chunk_rows * m->shape.head_vocab);
    w->teacher_hidden = be->alloc(sizeof(float) * (size_t)w->chunk_rows * m->shape.hidden);
    w->teacher_rows = be->alloc(sizeof(int32_t) * (size_t)w->max_tokens);
    w->host_teacher_rows = xmalloc(sizeof(int32_t) * (size_t)w->max_tokens);
}

void medusa_work_free(MedusaWork *w, const MedusaHeads *m) {
    const Backend *be = m->be;
    if (w->teacher) {
        be->free(w->teacher);
        be->free(w->teacher_hidden);
        be->free(w->teacher_rows);
        free(w->host_teacher_rows);
    }
    void *dev[] = {w->act,     w->pre,    w->dx,   w->dz,      w->act_bf16,    w->dz_bf16, w->logits,
                   w->targets, w->ranked, w->rows, w->choices, w->rows_hidden, w->scalar};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) be->free(dev[i]);
    free(w->host_targets);
    free(w->host_rows);
    free(w->host_row_targets);
    free(w->host_ranked);
    free(w->host_choices);
    free(w->host_block);
    memset(w, 0, sizeof *w);
}

void medusa_targets(int n_heads, const int32_t *tokens, const uint8_t *loss_mask, const int32_t *seq_lens, int n_seqs,
                    int T, int32_t *targets) {
    int start = 0;
    for (int s = 0; s < n_seqs; s++) {
        int end = start + seq_lens[s];
        for (int t = start; t < end; t++) {
            for (int h = 0; h < n_heads; h++) {
                int j = t + 2 + h; /* the base lm_head predicts t+1, head h predicts t+2+h */
                targets[(size_t)h * T + t] = j < end && loss_mask[j] ? tokens[j] : -1;
            }
        }
        start = end;
    }
    ensure(start == T);
}

void medusa_use_bf16(MedusaHeads *m) {
    if (!m->params_bf16) m->params_bf16 = m->be->alloc(sizeof(uint16_t) * m->n_params);
    m->be->to_bf16(m->params_bf16, m->params, m->n_params);
}

/* W's bf16 copy, for a weight W inside params */
static const uint16_t *bf16_copy(const MedusaHeads *m, const float *weight) {
    return m->params_bf16 + (weight - m->params);
}

/* out = in @ W^T for a weight W inside params: through W's bf16 copy (on in_bf16, in rounded) when there is one */
static void head_matmul(const MedusaHeads *m, float *out, const float *in, const uint16_t *in_bf16, const float *weight,
                        int T, int IC, int OC) {
    if (m->params_bf16) m->be->matmul_bf16_in(out, in_bf16, bf16_copy(m, weight), NULL, T, IC, OC, 0);
    else m->be->matmul(out, in, weight, NULL, T, IC, OC);
}

/* Head h's lm_head on `rows` rows x (one chunk; x_bf16 the same rows rounded, with a bf16 copy): logits into the work's
 * chunk buffer, their losses (against the work's targets, or the chunk's teacher logits when given) and the ranks of
 * `ranked` at row r0 of losses and ranks, and with dx the gradients: dx += dlogits W and the lm_head's own. On bf16
 * weights one backend op (classifier_bf16) does it all. With choice_ranks (forward only) the base model's choices are
 * ranked in the logits first. */
static void head_classifier(const MedusaHeads *m, MedusaWork *w, const int32_t *ranked, const float *teacher,
                            const float *x, const uint16_t *x_bf16, int h, float *dx, int r0, int rows, float dscale,
                            float *losses, int32_t *ranks, int32_t *choice_ranks) {
    const Backend *be = m->be;
    int H = m->shape.hidden, V = m->shape.head_vocab;
    const float *lm = medusa_lm_head(m, m->params, h);
    float *dlm = dx ? medusa_lm_head(m, m->grads, h) : NULL;
    XentTargets targets = {.targets = teacher ? NULL : w->targets + r0, .teacher = teacher, .ranked = ranked + r0};
    losses += r0, ranks += r0;
    if (choice_ranks) {
        head_matmul(m, w->logits, x, x_bf16, lm, rows, H, V);
        be->rank_ids(choice_ranks + r0, w->logits, w->choices + r0, rows, V);
        be->softmax_xent(w->logits, losses, ranks, targets, rows, V, 0.0f);
        return;
    }
    if (m->params_bf16) {
        be->classifier_bf16(w->logits, losses, ranks, targets, x_bf16, bf16_copy(m, lm), dx, dlm, rows, H, V, dscale);
        return;
    }
    be->matmul(w->logits, x, lm, NULL, rows, H, V);
    be->softmax_xent(w->logits, losses, ranks, targets, rows, V, dscale);
    if (dx) be->matmul_backward(dx, dlm, NULL, w->logits, x, lm, rows, H, V); /* the logits now hold dlogits */
}

/* Runs head h's ResBlocks over all T rows: block l maps its input x to act[l] = x + silu(pre[l]),
 * pre[l] = W x + b; the first block's input is the hidden state. With a bf16 copy each block's input is rounded once,
 * by the op before it (to_bf16 for the hidden rows, unless hidden_rounded says slice 0 already holds them;
 * resblock_forward for the blocks' outputs), into w->act_bf16, whose slice L is the lm_head's input. Returns the last
 * block's output (the hidden rows for a head without blocks). */
static const float *blocks_forward(const MedusaHeads *m, MedusaWork *w, const float *hidden, int hidden_rounded, int h,
                                   int T) {
    const Backend *be = m->be;
    int H = m->shape.hidden;
    size_t TH = (size_t)T * H;
    uint16_t *x_bf16 = w->act_bf16;
    if (m->params_bf16 && !hidden_rounded) {
        if (!x_bf16) fatal("medusa: bf16 heads on work buffers made before their bf16 copy (medusa_use_bf16)");
        be->to_bf16(x_bf16, hidden, TH);
    }
    const float *x = hidden;
    for (int l = 0; l < m->shape.n_layers; l++) {
        float *z = w->pre + (size_t)l * TH, *out = w->act + (size_t)l * TH;
        const float *bias = medusa_linear_b(m, m->params, h, l);
        head_matmul(m, z, x, x_bf16, medusa_linear_w(m, m->params, h, l), T, H, H);
        be->resblock_forward(out, x_bf16 ? x_bf16 + TH : NULL, z, x, bias, T, H);
        x = out;
        if (x_bf16) x_bf16 += TH;
    }
    return x;
}

/* the lm_head's input of blocks_forward over T rows, rounded (NULL without a bf16 copy) */
static const uint16_t *blocks_output_bf16(const MedusaHeads *m, const MedusaWork *w, int T) {
    return m->params_bf16 ? w->act_bf16 + (size_t)m->shape.n_layers * T * m->shape.hidden : NULL;
}

/* The lm_head row of a token: the token itself, or its place in a truncated head's map (-1 outside it) */
static int token_row(const MedusaHeads *m, int token) { return m->token_index ? m->token_index[token] : token; }

static void head_finished(const MedusaWork *w, int h) {
    if (w->head_done) w->head_done(w->head_done_ctx, h);
}

void medusa_forward_backward_queued(MedusaHeads *m, MedusaWork *w, const float *hidden, const int32_t *tokens,
                                    const uint8_t *loss_mask, const int32_t *seq_lens, int n_seqs, int T,
                                    const MedusaBase *base, float head_decay, float grad_scale,
                                    MedusaBatchStats *stats) {
    const Backend *be = m->be;
    const MedusaShape *s = &m->shape;
    int H = s->hidden, L = s->n_layers;
    if (T > w->max_tokens) fatal("medusa: batch of %d tokens exceeds the work buffers' %d", T, w->max_tokens);
    int train = grad_scale > 0;
    if (train && !m->grads) fatal("medusa: gradients requested before medusa_enable_grads");
    TargetKind kind = base ? base->targets : TARGETS_LABELS;
    const int32_t *choice = base ? base->choice : NULL;
    if (kind == TARGETS_BASE_ARGMAX && !choice) fatal("medusa: base-argmax targets without the base model's choices");
    if (kind == TARGETS_BASE_KL && !(base->model && base->lm_head && w->teacher))
        fatal("medusa: base-kl targets without the base model or the teacher's buffers");
    int agree = choice && !train; /* the heads' agreement with the base's choices */
    memset(stats, 0, sizeof *stats);
    stats->ranked_choices = agree;
    medusa_targets(s->n_heads, tokens, loss_mask, seq_lens, n_seqs, T, w->host_targets);

    float weight = 1.0f;
    /* head_finished in the loop's step: after every head, those that `continue` early too */
    for (int h = 0; h < s->n_heads; head_finished(w, h), h++, weight *= head_decay) {
        const int32_t *targets = w->host_targets + (size_t)h * T;
        /* rows with a loss (a target in the head's map, or the base's distribution), a label the head can rank or a
         * base choice to rank: gathered into rows_hidden; a label outside the map is a miss */
        int n = 0, valid = 0, n_loss = 0;
        for (int t = 0; t < T; t++) {
            if (targets[t] < 0) continue;
            valid++;
            int row = token_row(m, targets[t]), choice_row = -1;
            if (choice && choice[t + 1 + h] >= 0) choice_row = token_row(m, choice[t + 1 + h]);
            int loss_row = kind == TARGETS_BASE_ARGMAX ? choice_row : row;
            int has_loss = kind == TARGETS_BASE_KL || loss_row >= 0;
            if (!has_loss && row < 0 && !(agree && choice_row >= 0)) continue; /* a miss either way */
            if (kind == TARGETS_BASE_KL) w->host_teacher_rows[n] = t + 1 + h;
            w->host_rows[n] = t;
            w->host_row_targets[n] = loss_row;
            w->host_ranked[n] = row;
            w->host_choices[n++] = choice_row;
            n_loss += has_loss;
        }
        stats->valid[h] = valid;
        stats->computed[h] = n;
        stats->n_loss[h] = n_loss;
        stats->weight[h] = weight;
        if (n == 0) continue; /* nothing to learn here; PyTorch would give NaN for an empty mean */
        size_t words = (size_t)n * (2 + agree);
        if (w->results_used + words > w->results_capacity)
            fatal("medusa: more batches queued than medusa_work_reserve_batches made room for");
        stats->results_at[h] = w->results_used;
        float *losses = w->results + w->results_used;
        int32_t *ranks = (int32_t *)(void *)(losses + n), *choice_ranks = agree ? ranks + n : NULL; /* 4-byte words */
        w->results_used += words;
        size_t nH = (size_t)n * H;
        be->upload(w->rows, w->host_rows, sizeof(int32_t) * (size_t)n);
        if (kind == TARGETS_BASE_KL) be->upload(w->teacher_rows, w->host_teacher_rows, sizeof(int32_t) * (size_t)n);
        else be->upload(w->targets, w->host_row_targets, sizeof(int32_t) * (size_t)n);
        /* with the labels as the loss's targets they are also what is ranked */
        const int32_t *ranked = kind == TARGETS_LABELS ? w->targets : w->ranked;
        if (ranked == w->ranked) be->upload(w->ranked, w->host_ranked, sizeof(int32_t) * (size_t)n);
        if (agree) be->upload(w->choices, w->host_choices, sizeof(int32_t) * (size_t)n);
        be->embedding(w->rows_hidden, w->rows, hidden, n, H); /* a row gather */
        int learn = train && n_loss > 0;
        float dscale = learn ? weight * grad_scale / (float)n_loss : 0.0f;
        const float *x_last = blocks_forward(m, w, w->rows_hidden, 0, h, n); /* each head gathers its own rows */
        const uint16_t *x_last_bf16 = blocks_output_bf16(m, w, n);
        if (learn) be->fill_zero(w->dx, sizeof(float) * nH);
        /* equal chunks: a short tail chunk would make a thin, slow GEMM */
        int n_chunks = (n + w->chunk_rows - 1) / w->chunk_rows, per = (n + n_chunks - 1) / n_chunks;
        for (int r0 = 0; r0 < n; r0 += per) {
            int rows = n - r0 < per ? n - r0 : per;
            const float *teacher = NULL;
            if (kind == TARGETS_BASE_KL) { /* the base's logits at rows t+1+h: its hidden rows through its lm_head */
                be->embedding(w->teacher_hidden, w->teacher_rows + r0, hidden, rows, H);
                model_linear(base->model, w->teacher, w->teacher_hidden, base->lm_head, NULL, rows, H, s->head_vocab);
                float cap = base->model->config.final_softcap; /* the distribution the base model samples from */
                if (cap > 0) be->softcap(w->teacher, cap, (size_t)rows * s->head_vocab);
                teacher = w->teacher;
            }
            head_classifier(m, w, ranked, teacher, x_last + (size_t)r0 * H,
                            x_last_bf16 ? x_last_bf16 + (size_t)r0 * H : NULL, h, learn ? w->dx + (size_t)r0 * H : NULL,
                            r0, rows, dscale, losses, ranks, choice_ranks);
        }
        if (!learn) continue;
        for (int l = L - 1; l >= 0; l--) {
            const float *x_in = l == 0 ? w->rows_hidden : w->act + (size_t)(l - 1) * nH,
                        *weight = medusa_linear_w(m, m->params, h, l);
            float *dweight = medusa_linear_w(m, m->grads, h, l), *dbias = medusa_linear_b(m, m->grads, h, l);
            be->silu_backward(w->dz, m->params_bf16 ? w->dz_bf16 : NULL, w->dx, w->pre + (size_t)l * nH, nH);
            /* dx already holds the residual path's gradient; add the branch's (not needed below block 0: the
             * base model is frozen) */
            float *dinp = l > 0 ? w->dx : NULL;
            if (m->params_bf16)
                be->matmul_backward_bf16(dinp, dweight, dbias, w->dz, w->dz_bf16, w->act_bf16 + (size_t)l * nH,
                                         bf16_copy(m, weight), n, H, H);
            else be->matmul_backward(dinp, dweight, dbias, w->dz, x_in, weight, n, H, H);
        }
    }
}

void medusa_forward_backward(MedusaHeads *m, MedusaWork *w, const float *hidden, const int32_t *tokens,
                             const uint8_t *loss_mask, const int32_t *seq_lens, int n_seqs, int T,
                             const MedusaBase *base, float head_decay, float grad_scale, MedusaBatchStats *stats) {
    medusa_forward_backward_queued(m, w, hidden, tokens, loss_mask, seq_lens, n_seqs, T, base, head_decay, grad_scale,
                                   stats);
    medusa_stats_collect(m, w, stats, 1);
}

void medusa_stats_collect(const MedusaHeads *m, MedusaWork *w, MedusaBatchStats *stats, int n) {
    /* from the scalar when it was asked for, else from the results */
    size_t skip = w->scalar_pending ? 0 : sizeof(double), bytes = sizeof(double) + sizeof(float) * w->results_used;
    if (bytes > skip) m->be->download((char *)w->host_block + skip, (char *)(void *)w->scalar + skip, bytes - skip);
    if (w->scalar_pending) memcpy(&w->scalar_value, w->host_block, sizeof(double));
    w->results_used = 0;
    w->scalar_pending = 0;
    for (MedusaBatchStats *s = stats; s < stats + n; s++) {
        for (int h = 0; h < m->shape.n_heads; h++) {
            int64_t rows = s->computed[h];
            if (rows == 0) continue;
            const float *losses = w->host_results + s->results_at[h];
            const int32_t *ranks = (const int32_t *)(const void *)(losses + rows), *choice_ranks = ranks + rows;
            double loss_sum = 0; /* in row order, in double */
            for (int64_t i = 0; i < rows; i++) {
                loss_sum += losses[i];
                for (int k = 0; k < MEDUSA_TOPK; k++) s->hits[h][k] += ranks[i] >= 0 && ranks[i] <= k;
                if (s->ranked_choices)
                    for (int k = 0; k < MEDUSA_TOPK; k++)
                        s->agree[h][k] += choice_ranks[i] >= 0 && choice_ranks[i] <= k;
            }
            s->loss[h] = s->n_loss[h] ? loss_sum / (double)s->n_loss[h] : 0.0;
            s->total_loss += (double)s->weight[h] * s->loss[h];
        }
    }
}

double medusa_train_flops(const MedusaShape *s, int64_t rows) {
    double H = s->hidden, Vh = s->head_vocab > 0 ? s->head_vocab : s->vocab;
    double blocks = s->n_layers > 0 ? 3.0 * s->n_layers - 1 : 0; /* H x H products per row, forward and backward */
    return 2.0 * (3 * Vh * H + blocks * H * H) * (double)rows;
}

void medusa_logits(const MedusaHeads *m, MedusaWork *w, const float *hidden, int T, float *out) {
    const MedusaShape *s = &m->shape;
    if (T > w->max_tokens) fatal("medusa: %d rows exceed the work buffers' %d", T, w->max_tokens);
    for (int h = 0; h < s->n_heads; h++) {
        const float *x = blocks_forward(m, w, hidden, h > 0, h, T); /* the same rows for every head */
        head_matmul(m, out + (size_t)h * T * s->head_vocab, x, blocks_output_bf16(m, w, T),
                    medusa_lm_head(m, m->params, h), T, s->hidden, s->head_vocab);
    }
}
