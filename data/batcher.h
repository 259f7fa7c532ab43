/* Packed batches for training: whole conversations, in an order shuffled per epoch by seed, packed
 * into batches of at most batch_tokens tokens with their sequence lengths (the forward pass restarts
 * positions and attention at each sequence). A conversation longer than batch_tokens is cut to it.
 * The cursor (epoch, position in the epoch's order) is all the state there is, so a run restored from
 * a saved cursor produces exactly the batches it would have. */
#ifndef MEDUSA_BATCHER_H
#define MEDUSA_BATCHER_H

#include "../common/packed_batch.h"
#include "token_cache.h"

typedef struct {
    const TokenCache *cache;
    int batch_tokens;
    uint64_t seed;
    int shuffle;
    int64_t epoch, position; /* the next conversation is order[position] of this epoch */
    int64_t *order;          /* [n_convs] this epoch's permutation */
    int32_t *tokens;         /* the current batch's storage */
    uint8_t *loss_mask;
    int32_t *seq_lens;
    int64_t *convs;
} Batcher;

/* shuffle = 0 keeps the file's order every epoch (evaluation). */
void batcher_init(Batcher *b, const TokenCache *cache, int batch_tokens, uint64_t seed, int shuffle);
void batcher_free(Batcher *b);

/* The next batch (valid until the next call); an epoch's last batch may be short, and the following
 * call starts the next epoch. */
PackedBatch batcher_next(Batcher *b);

/* Batches in the given epoch (packing depends on its order), for schedules and progress. */
int64_t batcher_epoch_batches(const Batcher *b, int64_t epoch);

/* The cursor as words for a checkpoint: epoch, position, and what must match on restore (seed,
 * batch_tokens, number of conversations). */
#define BATCHER_CURSOR_WORDS 5
void batcher_save_cursor(const Batcher *b, int64_t words[BATCHER_CURSOR_WORDS]);
/* Fatal when the cursor was saved with another seed, batch size or data set. */
void batcher_restore_cursor(Batcher *b, const int64_t words[BATCHER_CURSOR_WORDS]);

#endif
