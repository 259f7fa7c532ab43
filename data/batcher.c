#include "batcher.h"

#include <stdlib.h>
#include <string.h>

#include "../common/rng.h"

/* The epoch's conversation order: a Fisher-Yates shuffle seeded by (seed, epoch) alone, so any epoch's
 * order can be recomputed from the cursor. */
static void epoch_order(const Batcher *b, int64_t epoch, int64_t *order) {
    int64_t n = b->cache->n_convs;
    for (int64_t i = 0; i < n; i++) order[i] = i;
    if (!b->shuffle) return;
    Rng rng;
    rng_seed(&rng, b->seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(epoch + 1)));
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_below(&rng, (uint64_t)i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

static int conv_len(const Batcher *b, int64_t conv) {
    int64_t n = b->cache->conv_offsets[conv + 1] - b->cache->conv_offsets[conv];
    return n < b->batch_tokens ? (int)n : b->batch_tokens;
}

void batcher_init(Batcher *b, const TokenCache *cache, int batch_tokens, uint64_t seed, int shuffle) {
    memset(b, 0, sizeof *b);
    if (cache->n_convs == 0) fatal("the token cache has no conversations to train on");
    if (batch_tokens < 1) fatal("batch size must be at least 1 token (got %d)", batch_tokens);
    b->cache = cache;
    b->batch_tokens = batch_tokens;
    b->seed = seed;
    b->shuffle = shuffle;
    b->order = xmalloc((size_t)cache->n_convs * sizeof *b->order);
    b->tokens = xmalloc((size_t)batch_tokens * sizeof *b->tokens);
    b->loss_mask = xmalloc((size_t)batch_tokens);
    b->seq_lens = xmalloc((size_t)batch_tokens * sizeof *b->seq_lens);
    b->convs = xmalloc((size_t)batch_tokens * sizeof *b->convs);
    epoch_order(b, 0, b->order);
}

void batcher_free(Batcher *b) {
    free(b->order);
    free(b->tokens);
    free(b->loss_mask);
    free(b->seq_lens);
    free(b->convs);
    memset(b, 0, sizeof *b);
}

PackedBatch batcher_next(Batcher *b) {
    const TokenCache *c = b->cache;
    if (b->position >= c->n_convs) {
        b->epoch++;
        b->position = 0;
        epoch_order(b, b->epoch, b->order);
    }
    PackedBatch batch = {0, b->tokens, b->loss_mask, 0, b->seq_lens, b->convs, b->epoch};
    while (b->position < c->n_convs) {
        int64_t conv = b->order[b->position];
        int len = conv_len(b, conv);
        if (batch.n_seqs > 0 && batch.n_tokens + len > b->batch_tokens) break;
        int64_t at = c->conv_offsets[conv];
        memcpy(b->tokens + batch.n_tokens, c->tokens + at, (size_t)len * sizeof *b->tokens);
        memcpy(b->loss_mask + batch.n_tokens, c->loss_mask + at, (size_t)len);
        b->convs[batch.n_seqs] = conv;
        b->seq_lens[batch.n_seqs++] = len;
        batch.n_tokens += len;
        b->position++;
    }
    return batch;
}

int64_t batcher_epoch_batches(const Batcher *b, int64_t epoch) {
    int64_t n = b->cache->n_convs, batches = 0;
    int64_t *order = xmalloc((size_t)n * sizeof *order);
    epoch_order(b, epoch, order);
    for (int64_t i = 0, used = 0; i < n; i++) {
        int len = conv_len(b, order[i]);
        if (i == 0 || used + len > b->batch_tokens) {
            batches++;
            used = 0;
        }
        used += len;
    }
    free(order);
    return batches;
}

void batcher_save_cursor(const Batcher *b, int64_t words[BATCHER_CURSOR_WORDS]) {
    words[0] = b->epoch;
    words[1] = b->position;
    words[2] = (int64_t)b->seed;
    words[3] = b->batch_tokens;
    words[4] = b->cache->n_convs;
}

void batcher_restore_cursor(Batcher *b, const int64_t words[BATCHER_CURSOR_WORDS]) {
    if ((uint64_t)words[2] != b->seed || words[3] != b->batch_tokens || words[4] != b->cache->n_convs)
        fatal("the saved data position does not fit this run: it was saved with seed %llu, %lld-token batches and "
              "%lld conversations; this run has seed %llu, %d-token batches and %lld conversations",
              (unsigned long long)words[2], (long long)words[3], (long long)words[4], (unsigned long long)b->seed,
              b->batch_tokens, (long long)b->cache->n_convs);
    if (words[0] < 0 || words[1] < 0 || words[1] > b->cache->n_convs)
        fatal("the saved data position (epoch %lld, conversation %lld) is out of range", (long long)words[0],
              (long long)words[1]);
    b->epoch = words[0];
    b->position = words[1];
    epoch_order(b, b->epoch, b->order);
}
