#include "trainer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/dist.h"
#include "collective.h"

void step_metrics_clear(StepMetrics *m) { memset(m, 0, sizeof *m); }

void trainer_init(Trainer *t, const Model *base, MedusaHeads *heads, const OptimConfig *optim, float head_decay,
                  TargetKind targets, int max_tokens, int logits_chunk) {
    memset(t, 0, sizeof *t);
    t->base = base;
    t->heads = heads;
    if (optim) t->optim = *optim;
    t->head_decay = head_decay;
    t->targets = targets;
    t->max_tokens = max_tokens;
    t->ranks = optim ? dist_pipelines() : 1;
    forward_state_init(&t->state, base, max_tokens);
    t->hidden = base->be->alloc(sizeof(float) * (size_t)max_tokens * base->config.hidden_size);
    if (!heads) return; /* a pipeline stage before the last: its layers' forward only */
    medusa_work_init(&t->work, heads, max_tokens, logits_chunk);
    if (targets == TARGETS_BASE_KL) {
        medusa_work_enable_teacher(&t->work, heads);
        if (heads->token_map)
            t->teacher_lm_head = model_lm_head_subset(base, heads->token_map, heads->shape.head_vocab);
    }
    t->choice = xmalloc(sizeof(int32_t) * (size_t)max_tokens);
    if (optim) {
        medusa_enable_grads(heads);
        adam_init(&t->adam, heads);
    }
}

void trainer_free(Trainer *t) {
    forward_state_free(&t->state, t->base);
    if (t->heads) medusa_work_free(&t->work, t->heads);
    t->base->be->free(t->hidden);
    free(t->choice);
    HiddenCache *c = t->hidden_cache;
    if (c) {
        const Backend *be = t->base->be;
        if (c->ahead_rows) {
            be->await_uploads(); /* the copies under way finish before their memory is handed out again */
            be->free(c->ahead_rows);
            free(c->ahead_lens);
            free(c->ahead_convs);
        }
        if (c->page_locked) be->free_host(c->rows);
        else free(c->rows);
        free(c->len);
        free(c);
    }
    matrix_free(t->base->be, &t->teacher_lm_head);
    if (t->adam.m) adam_free(&t->adam, t->heads);
    memset(t, 0, sizeof *t);
}

static void accumulate(StepMetrics *m, const MedusaBatchStats *s, int n_heads, int n_tokens) {
    for (int h = 0; h < n_heads; h++) {
        m->loss_sum[h] += s->loss[h];
        m->valid[h] += s->valid[h];
        m->computed[h] += s->computed[h];
        for (int k = 0; k < MEDUSA_TOPK; k++) m->hits[h][k] += s->hits[h][k], m->agree[h][k] += s->agree[h][k];
    }
    m->total_loss_sum += s->total_loss;
    m->batches++;
    m->tokens += n_tokens;
}

void trainer_cache_hidden(Trainer *t, const TokenCache *data) {
    double bytes = (double)data->n_tokens * t->base->config.hidden_size * sizeof(float);
    double host = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (bytes > 0.8 * host)
        fatal("--cache-hidden: the base model's hidden states of %lld tokens take %.1f GiB, more than 80%% of this "
              "host's %.1f GiB of memory",
              (long long)data->n_tokens, bytes / (1 << 30), host / (1 << 30));
    HiddenCache *c = t->hidden_cache = xcalloc(1, sizeof *c);
    /* page-locked where the backend has such memory (a GPU): a batch's rows are then uploaded without the host waiting,
     * up to half the host's memory (more locked pages would starve the system) */
    const Backend *be = t->base->be;
    if (be->alloc_host && bytes <= 0.5 * host) c->rows = be->alloc_host((size_t)bytes);
    c->page_locked = c->rows != NULL;
    if (!c->rows) c->rows = xmalloc((size_t)bytes > 0 ? (size_t)bytes : 1);
    log_info("caching the base model's hidden states of %lld conversations in host memory: %.2f GiB%s",
             (long long)data->n_convs, bytes / (1 << 30),
             c->page_locked ? " (page-locked)"
             : be->alloc_host
                 ? " (not page-locked: over half the host's memory, or refused; each batch's upload waits for the GPU)"
                 : "");
    c->len = xcalloc((size_t)data->n_convs, sizeof *c->len);
    c->offsets = data->conv_offsets;
    c->n_convs = data->n_convs;
    if (c->page_locked && be->upload_ahead) {
        c->ahead_rows = be->alloc(sizeof(float) * (size_t)t->max_tokens * t->base->config.hidden_size);
        c->ahead_lens = xmalloc(sizeof *c->ahead_lens * (size_t)t->max_tokens);
        c->ahead_convs = xmalloc(sizeof *c->ahead_convs * (size_t)t->max_tokens);
    }
}

/* Conversation conv's place in the cache (fatal for a conversation the data does not have) */
static float *conv_rows(const Trainer *t, int64_t conv) {
    const HiddenCache *c = t->hidden_cache;
    if (conv < 0 || conv >= c->n_convs)
        fatal("hidden-state cache: conversation %lld of %lld", (long long)conv, (long long)c->n_convs);
    return c->rows + (size_t)c->offsets[conv] * (size_t)t->base->config.hidden_size;
}

/* The batch's rows uploaded beside the queue into ahead_rows, when the cache holds all of them (the work queued so far,
 * which may still read ahead_rows, goes first) */
static void upload_ahead(Trainer *t, const PackedBatch *b) {
    HiddenCache *c = t->hidden_cache;
    if (!c || !c->ahead_rows || !b || !b->convs) return;
    for (int s = 0; s < b->n_seqs; s++) {
        conv_rows(t, b->convs[s]); /* a conversation the data has */
        if (c->len[b->convs[s]] != b->seq_lens[s]) return;
    }
    size_t H = (size_t)t->base->config.hidden_size, row = 0;
    for (int s = 0; s < b->n_seqs; row += (size_t)b->seq_lens[s++])
        t->base->be->upload_ahead(c->ahead_rows + row * H, conv_rows(t, b->convs[s]),
                                  sizeof(float) * (size_t)b->seq_lens[s] * H);
    c->ahead_seqs = b->n_seqs;
    memcpy(c->ahead_lens, b->seq_lens, sizeof *c->ahead_lens * (size_t)b->n_seqs);
    memcpy(c->ahead_convs, b->convs, sizeof *c->ahead_convs * (size_t)b->n_seqs);
}

/* Whether the batch's rows were uploaded ahead: they then become t->hidden (the buffer it held receives the next
 * batch's) once the work queued from here on waits for them */
static int take_ahead(Trainer *t, const PackedBatch *b) {
    HiddenCache *c = t->hidden_cache;
    if (!c->ahead_seqs || c->ahead_seqs != b->n_seqs ||
        memcmp(c->ahead_lens, b->seq_lens, sizeof *b->seq_lens * (size_t)b->n_seqs) ||
        memcmp(c->ahead_convs, b->convs, sizeof *b->convs * (size_t)b->n_seqs))
        return 0;
    t->base->be->await_uploads();
    float *rows = t->hidden;
    t->hidden = c->ahead_rows, c->ahead_rows = rows;
    c->ahead_seqs = 0;
    c->hits += b->n_seqs;
    c->ahead_hits++;
    return 1;
}

/* The base model's final hidden states of the batch into t->hidden: from the cache where it holds them (each
 * conversation alone through the base model the first time). A pipeline stage runs its layers between the previous
 * stage's residual stream and the next's. */
static void base_forward(Trainer *t, const PackedBatch *b) {
    HiddenCache *c = t->hidden_cache;
    if (!c || !b->convs) {
        const Model *m = t->base;
        size_t n = (size_t)b->n_tokens * m->config.hidden_size;
        if (!model_part_first(m)) collective_recv(m->be, t->state.x, n, dist_stage() - 1);
        model_forward(m, &t->state, b, t->hidden, NULL);
        if (!model_part_last(m)) collective_send(m->be, t->state.x, n, dist_stage() + 1);
        return;
    }
    if (take_ahead(t, b)) return;
    const Backend *be = t->base->be;
    size_t H = (size_t)t->base->config.hidden_size, row = 0;
    for (int s = 0; s < b->n_seqs; row += (size_t)b->seq_lens[s++]) {
        int64_t conv = b->convs[s];
        int len = b->seq_lens[s];
        float *cached = conv_rows(t, conv), *dev = t->hidden + row * H;
        if (c->len[conv] == len) {
            be->upload(dev, cached, sizeof(float) * (size_t)len * H);
            c->hits++;
            continue;
        }
        PackedBatch one = {.n_tokens = len, .tokens = b->tokens + row, .n_seqs = 1, .seq_lens = &b->seq_lens[s]};
        model_forward(t->base, &t->state, &one, dev, NULL);
        be->download_queued(cached, dev, sizeof(float) * (size_t)len * H); /* page-locked: no wait per conversation */
        c->len[conv] = len;
        c->misses++;
    }
}

int trainer_all_finite(const Backend *be, const float *x, size_t n) {
    double *sum_dev = be->alloc(sizeof(double)), sum;
    be->sum_squares(sum_dev, x, n);
    be->download(&sum, sum_dev, sizeof sum);
    be->free(sum_dev);
    return isfinite(sum);
}

/* A non-finite loss in an evaluation of batch b (the heads' when `base` is 0, else the base model's own on t+1):
 * fatal, naming what holds the non-finite values. The base model's hidden states are the heads' input and depend on
 * nothing trained, so non-finite ones mean damaged base weights, at any step of training too. */
static void nonfinite_loss(const Trainer *t, const PackedBatch *b, double loss, int base) {
    const Backend *be = t->base->be;
    const char *model = t->base_name ? t->base_name : "the base model";
    if (!trainer_all_finite(be, t->hidden, (size_t)b->n_tokens * t->base->config.hidden_size))
        fatal("%s: the base model's hidden states are not finite (NaN or infinite weights: a damaged model file?)",
              model);
    if (base)
        fatal("%s: the base model's logits are not finite (NaN or infinite lm_head weights: a damaged model file?)",
              model);
    if (!trainer_all_finite(be, t->heads->params, t->heads->n_params))
        fatal("%s: the heads' parameters are not finite (NaN or infinite values: a damaged file?)",
              t->heads_name ? t->heads_name : "heads");
    fatal("%s: the heads' loss is %g on finite hidden states and parameters (logits beyond float range?)",
          t->heads_name ? t->heads_name : "heads", loss);
}

/* The base model's logits on the batch's hidden states, a chunk of rows at a time (a batch's full [T, V] would be the
 * largest buffer of an evaluation): its greedy choice at every row into t->choice (top_k's argmax; -1 where that logit
 * is not finite, which rank_ids tells), and with metrics its own top-1 on t+1 (the fused softmax's rank) */
static void base_choices(Trainer *t, const PackedBatch *b, StepMetrics *metrics) {
    const Backend *be = t->base->be;
    int V = t->base->config.vocab_size, H = t->base->config.hidden_size, T = b->n_tokens;
    int32_t *targets = xmalloc(sizeof(int32_t) * (size_t)T), *ranks = xmalloc(sizeof(int32_t) * (size_t)T);
    int start = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        int end = start + b->seq_lens[s];
        for (int i = start; i < end; i++) targets[i] = i + 1 < end && b->loss_mask[i + 1] ? b->tokens[i + 1] : -1;
        start = end;
    }
    int chunk = t->work.chunk_rows < T ? t->work.chunk_rows : T;
    float *logits = be->alloc(sizeof(float) * (size_t)chunk * V);
    int32_t *targets_dev = be->alloc(sizeof(int32_t) * (size_t)T), *ranks_dev = be->alloc(sizeof(int32_t) * (size_t)T);
    /* the choices, then their ranks: one download (each waits for the device) */
    int32_t *choice_dev = be->alloc(sizeof(int32_t) * 2 * (size_t)T), *choice_ranks = choice_dev + T;
    float *losses_dev = be->alloc(sizeof(float) * (size_t)T);
    be->upload(targets_dev, targets, sizeof(int32_t) * (size_t)T);
    for (int r0 = 0; r0 < T; r0 += chunk) {
        int rows = T - r0 < chunk ? T - r0 : chunk;
        model_logits(t->base, logits, t->hidden + (size_t)r0 * H, rows);
        be->top_k(choice_dev + r0, logits, rows, V, 1);
        be->rank_ids(choice_ranks + r0, logits, choice_dev + r0, rows, V);
        XentTargets next = {.targets = targets_dev + r0, .ranked = targets_dev + r0};
        if (metrics) be->softmax_xent(logits, losses_dev + r0, ranks_dev + r0, next, rows, V, 0.0f);
    }
    if (metrics) {
        /* a row's loss is finite only when its every logit is: a NaN logit elsewhere in the row leaves the target's
         * rank looking like a hit, so no rank of a non-finite row may count */
        float *losses = xmalloc(sizeof(float) * (size_t)T);
        be->download(losses, losses_dev, sizeof(float) * (size_t)T);
        be->download(ranks, ranks_dev, sizeof(int32_t) * (size_t)T);
        for (int i = 0; i < T; i++) {
            if (ranks[i] >= 0 && !isfinite(losses[i])) nonfinite_loss(t, b, losses[i], 1);
            metrics->base_valid += ranks[i] >= 0;
            metrics->base_hits += ranks[i] == 0;
        }
        free(losses);
    }
    int32_t *choices = xmalloc(sizeof(int32_t) * 2 * (size_t)T);
    be->download(choices, choice_dev, sizeof(int32_t) * 2 * (size_t)T);
    for (int i = 0; i < T; i++) t->choice[i] = choices[T + i] == 0 ? choices[i] : -1;
    free(choices);
    be->free(logits);
    be->free(targets_dev);
    be->free(ranks_dev);
    be->free(choice_dev);
    be->free(losses_dev);
    free(targets);
    free(ranks);
}

void step_metrics_sum_ranks(StepMetrics *m) {
    if (dist_size() == 1) return;
    dist_sum_doubles(DIST_WORLD, m->loss_sum, 64);
    dist_sum_doubles(DIST_WORLD, &m->total_loss_sum, 1);
    dist_sum_int64(DIST_WORLD, m->valid, 64);
    dist_sum_int64(DIST_WORLD, m->computed, 64);
    dist_sum_int64(DIST_WORLD, &m->hits[0][0], 64 * MEDUSA_TOPK);
    dist_sum_int64(DIST_WORLD, &m->agree[0][0], 64 * MEDUSA_TOPK);
    int64_t counts[4] = {m->base_valid, m->base_hits, m->batches, m->tokens};
    dist_sum_int64(DIST_WORLD, counts, 4);
    m->base_valid = counts[0], m->base_hits = counts[1], m->batches = (int)counts[2], m->tokens = counts[3];
}

static void add_metrics(StepMetrics *into, const StepMetrics *m) {
    for (int h = 0; h < 64; h++) {
        into->loss_sum[h] += m->loss_sum[h];
        into->valid[h] += m->valid[h];
        into->computed[h] += m->computed[h];
        for (int k = 0; k < MEDUSA_TOPK; k++) into->hits[h][k] += m->hits[h][k], into->agree[h][k] += m->agree[h][k];
    }
    into->total_loss_sum += m->total_loss_sum;
    into->base_valid += m->base_valid;
    into->base_hits += m->base_hits;
    into->batches += m->batches;
    into->tokens += m->tokens;
}

static void diverged(const Trainer *t, const char *what, double value, int step) {
    fatal("training diverged: the %s is %g at optimizer step %d (try a lower --lr)%s%s", what, value, step,
          t->diverge_note ? "; " : "", t->diverge_note ? t->diverge_note : "");
}

/* The work's head_done in a step's last micro-batch: head h's gradients are complete, and their sum over the pipelines
 * starts while the next head's work runs (a bucket per head; the flat gradients hold the heads one after another) */
static void sum_head_grads(void *ctx, int h) {
    const MedusaHeads *m = ((const Trainer *)ctx)->heads;
    size_t per_head = m->n_params / (size_t)m->shape.n_heads;
    collective_sum_start(m->be, DIST_STAGE, m->grads + (size_t)h * per_head, per_head);
}

double trainer_step(Trainer *t, const PackedBatch *micro, int n, const PackedBatch *next, StepMetrics *metrics) {
    if (!t->heads) { /* a pipeline stage before the last: its part of each micro-batch, passed on */
        for (int i = 0; i < n; i++) base_forward(t, &micro[i]);
        StepMetrics none; /* the last stages' statistics are summed over every rank */
        step_metrics_clear(&none);
        step_metrics_sum_ranks(&none);
        return 0;
    }
    StepMetrics own; /* this rank's, summed over the ranks after the micro-batches */
    StepMetrics *into = metrics;
    if (dist_size() > 1) step_metrics_clear(&own), into = &own; /* every rank's sum: a pipeline's other stages too */
    /* the micro-batches' losses and ranks stay on the device until the step's end: one download for all of them */
    MedusaBatchStats *s = xmalloc(sizeof *s * (size_t)n);
    medusa_work_reserve_batches(&t->work, t->heads, n);
    for (int i = 0; i < n; i++) {
        base_forward(t, &micro[i]);
        upload_ahead(t, i + 1 < n ? &micro[i + 1] : next); /* while this one's heads run */
        MedusaBase base = {.targets = t->targets, .model = t->base};
        base.lm_head = t->teacher_lm_head.n_parts ? &t->teacher_lm_head : &t->base->lm_head;
        if (t->targets == TARGETS_BASE_ARGMAX) {
            base_choices(t, &micro[i], NULL);
            base.choice = t->choice;
        }
        t->work.head_done = i == n - 1 && t->ranks > 1 ? sum_head_grads : NULL, t->work.head_done_ctx = t;
        medusa_forward_backward_queued(t->heads, &t->work, t->hidden, micro[i].tokens, micro[i].loss_mask,
                                       micro[i].seq_lens, micro[i].n_seqs, micro[i].n_tokens, &base, t->head_decay,
                                       1.0f / (float)(n * t->ranks), &s[i]);
    }
    t->work.head_done = NULL;
    if (t->ranks > 1) collective_wait(t->heads->be, DIST_STAGE); /* the heads' sums started in the last micro-batch */
    /* the gradient norm and AdamW queued behind the micro-batches, AdamW reading the norm on the device (and applying
     * nothing where it is not finite): the norm leaves the device with the micro-batches' losses and ranks, the step's
     * one download. A non-finite loss then stops the run as before, the step's update unsaved. */
    int step = t->adam.step + 1;
    optim_queue(t->heads, &t->adam, &t->optim, medusa_work_scalar(&t->work));
    medusa_stats_collect(t->heads, &t->work, s, n);
    double norm = optim_finish(&t->adam, t->work.scalar_value);
    for (int i = 0; i < n; i++) {
        if (!isfinite(s[i].total_loss)) {
            /* the base model's fault whenever its hidden states are not finite, at any step: this micro-batch's again
             * (t->hidden holds the last one's), or on a pipeline's last stage, which cannot have a batch sent again,
             * the last one's */
            const PackedBatch *seen = model_part_first(t->base) ? &micro[i] : &micro[n - 1];
            if (seen != &micro[n - 1]) base_forward(t, seen);
            if (!trainer_all_finite(t->base->be, t->hidden, (size_t)seen->n_tokens * t->base->config.hidden_size))
                nonfinite_loss(t, seen, s[i].total_loss, 0);
            diverged(t, "loss", s[i].total_loss, step);
        }
        accumulate(into, &s[i], t->heads->shape.n_heads, micro[i].n_tokens);
    }
    free(s);
    if (dist_size() > 1) {
        step_metrics_sum_ranks(&own);
        add_metrics(metrics, &own);
    }
    if (!isfinite(norm)) diverged(t, "gradient norm", norm, step);
    return norm;
}

void trainer_eval_batch(Trainer *t, const PackedBatch *b, StepMetrics *metrics) {
    base_forward(t, b);
    if (!t->heads) return; /* a pipeline stage before the last */
    base_choices(t, b, metrics);
    MedusaBatchStats s;
    MedusaBase base = {.targets = TARGETS_LABELS, .choice = t->choice};
    medusa_forward_backward(t->heads, &t->work, t->hidden, b->tokens, b->loss_mask, b->seq_lens, b->n_seqs, b->n_tokens,
                            &base, t->head_decay, 0.0f, &s);
    if (!isfinite(s.total_loss)) nonfinite_loss(t, b, s.total_loss, 0);
    accumulate(metrics, &s, t->heads->shape.n_heads, b->n_tokens);
}
