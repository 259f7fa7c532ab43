#include "batch_decode.h"

#include <stdlib.h>
#include <string.h>

#include "decoder.h"

void batch_decoder_init(BatchDecoder *d, const Model *m, int n_slots, int slot_len, int pass_tokens, int stop_id,
                        float temperature, float top_p) {
    memset(d, 0, sizeof *d);
    const Backend *be = m->be;
    int H = m->config.hidden_size, V = m->config.vocab_size;
    d->m = m;
    d->stop_id = stop_id;
    d->temperature = temperature;
    d->top_p = top_p;
    slot_cache_init(&d->cache, m, n_slots, slot_len, pass_tokens);
    forward_state_init(&d->state, m, pass_tokens);
    d->slots = xcalloc((size_t)n_slots, sizeof(BatchSlot));
    d->hidden = be->alloc(sizeof(float) * (size_t)pass_tokens * H);
    d->last_hidden = be->alloc(sizeof(float) * (size_t)n_slots * H);
    d->logits = be->alloc(sizeof(float) * (size_t)n_slots * V);
    d->ids = be->alloc(sizeof(int32_t) * (size_t)n_slots);
    d->host_ids = xmalloc(sizeof(int32_t) * (size_t)n_slots);
    if (temperature > 0) {
        d->host_logits = xmalloc(sizeof(float) * (size_t)n_slots * V);
        d->probs = xmalloc(sizeof(float) * (size_t)V);
    }
    d->tokens = xmalloc(sizeof(int32_t) * (size_t)pass_tokens);
    d->run_slot = xmalloc(sizeof(int32_t) * (size_t)n_slots);
    d->run_len = xmalloc(sizeof(int32_t) * (size_t)n_slots);
}

void batch_decoder_free(BatchDecoder *d) {
    const Backend *be = d->m->be;
    for (int i = 0; i < d->cache.n_slots; i++) free(d->slots[i].ctx);
    free(d->slots);
    be->free(d->hidden);
    be->free(d->last_hidden);
    be->free(d->logits);
    be->free(d->ids);
    free(d->host_ids);
    free(d->host_logits);
    free(d->probs);
    free(d->tokens);
    free(d->run_slot);
    free(d->run_len);
    forward_state_free(&d->state, d->m);
    slot_cache_free(&d->cache, d->m);
    memset(d, 0, sizeof *d);
}

int batch_decoder_start(BatchDecoder *d, int slot, const int32_t *prompt, int n, int max_new, uint64_t seed) {
    BatchSlot *s = &d->slots[slot];
    if (s->active && s->end == REPLY_RUNNING) fatal("batch decoding: slot %d is still generating", slot);
    if (n < 1 || n >= d->cache.slot_len || max_new < 1) return 0;
    /* the cache holds s->ctx[0..len): keep what the new prompt shares, but run its last token again for its logits */
    int keep = 0, len = d->cache.len[slot];
    while (keep < len && keep < n - 1 && s->ctx[keep] == prompt[keep]) keep++;
    d->cache.len[slot] = keep;
    if (n + max_new + 1 > s->cap) s->ctx = xrealloc(s->ctx, sizeof(int32_t) * (size_t)(s->cap = n + max_new + 1));
    memcpy(s->ctx, prompt, sizeof(int32_t) * (size_t)n);
    s->n_ctx = s->n_prompt = n;
    s->max_new = max_new;
    s->end = REPLY_RUNNING;
    s->active = 1;
    rng_seed(&s->rng, seed);
    return 1;
}

const int32_t *batch_decoder_reply(const BatchDecoder *d, int slot, int *n, ReplyEnd *end) {
    const BatchSlot *s = &d->slots[slot];
    *n = s->n_ctx - s->n_prompt - (s->end == REPLY_STOP);
    *end = s->end;
    return s->ctx + s->n_prompt;
}

void batch_decoder_release(BatchDecoder *d, int slot) { d->slots[slot].active = 0; }

/* Appends a generated token and decides whether the reply goes on. */
static void append(BatchDecoder *d, BatchSlot *s, int32_t token) {
    if (s->n_ctx == s->cap) s->ctx = xrealloc(s->ctx, sizeof(int32_t) * (size_t)(s->cap *= 2));
    s->ctx[s->n_ctx++] = token;
    if (token == d->stop_id) s->end = REPLY_STOP;
    else if (s->n_ctx - s->n_prompt >= s->max_new) s->end = REPLY_LENGTH;
    else if (s->n_ctx >= d->cache.slot_len) s->end = REPLY_CONTEXT; /* the next token would have no row */
}

int batch_decoder_step(BatchDecoder *d) {
    const Backend *be = d->m->be;
    int H = d->m->config.hidden_size, V = d->m->config.vocab_size;
    int n_runs = 0, T = 0, budget = d->cache.pass_tokens;
    /* generating slots first (one token each: pass_tokens >= n_slots), then prompts in chunks */
    for (int phase = 0; phase < 2; phase++)
        for (int i = 0; i < d->cache.n_slots && T < budget; i++) {
            BatchSlot *s = &d->slots[i];
            int uncached = s->n_ctx - d->cache.len[i];
            if (!s->active || s->end != REPLY_RUNNING || (phase == 0) != (uncached == 1)) continue;
            int take = uncached < budget - T ? uncached : budget - T;
            memcpy(d->tokens + T, s->ctx + d->cache.len[i], sizeof(int32_t) * (size_t)take);
            d->run_slot[n_runs] = i;
            d->run_len[n_runs++] = take;
            T += take;
        }
    if (n_runs == 0) return 0;
    model_forward_slots(d->m, &d->state, &d->cache, d->tokens, d->run_slot, d->run_len, n_runs, d->hidden);
    d->passes++;
    /* the runs that reach the end of their context give the next token: their last rows through the lm_head */
    int n_next = 0, row = 0;
    for (int r = 0; r < n_runs; r++) {
        row += d->run_len[r];
        int i = d->run_slot[r];
        if (d->cache.len[i] != d->slots[i].n_ctx) continue; /* a prompt chunk with more to come */
        be->copy(d->last_hidden + (size_t)n_next * H, d->hidden + (size_t)(row - 1) * H, sizeof(float) * (size_t)H);
        d->run_slot[n_next++] = i;
    }
    if (n_next == 0) return 0;
    model_logits(d->m, d->logits, d->last_hidden, n_next);
    if (d->temperature > 0) {
        be->download(d->host_logits, d->logits, sizeof(float) * (size_t)n_next * V);
        for (int j = 0; j < n_next; j++) {
            BatchSlot *s = &d->slots[d->run_slot[j]];
            d->host_ids[j] =
                sample_top_p(d->host_logits + (size_t)j * V, V, d->temperature, d->top_p, &s->rng, d->probs);
        }
    } else {
        be->top_k(d->ids, d->logits, n_next, V, 1);
        be->download(d->host_ids, d->ids, sizeof(int32_t) * (size_t)n_next);
    }
    for (int j = 0; j < n_next; j++) {
        if (d->host_ids[j] < 0) fatal("batch decoding: the model's logits are all NaN (a damaged model file?)");
        append(d, &d->slots[d->run_slot[j]], d->host_ids[j]);
    }
    d->generated += n_next;
    return n_next;
}
