/* The one batch type: n_seqs whole conversations packed into n_tokens rows, positions restarting at 0 in each and no
 * attention across them. The batcher (data/) makes it; the model (model/) reads the tokens and the sequence lengths;
 * training reads the loss mask and the conversations too. */
#ifndef MEDUSA_PACKED_BATCH_H
#define MEDUSA_PACKED_BATCH_H

#include <stdint.h>

typedef struct {
    int n_tokens;
    const int32_t *tokens;
    const uint8_t *loss_mask; /* 1 = the token is a trained target; NULL where no loss is taken */
    int n_seqs;
    const int32_t *seq_lens;
    const int64_t *convs; /* the conversation (index in its token cache) of each sequence, or NULL */
    int64_t epoch;        /* the batcher's epoch the batch belongs to */
} PackedBatch;

#endif
