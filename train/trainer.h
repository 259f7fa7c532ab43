/* One training or evaluation step of the Medusa heads on packed batches: the frozen base model's forward,
 * the heads' fused loss and backward, gradient accumulation and the AdamW step. Used by medusa-train and
 * medusa-eval alike. */
#ifndef MEDUSA_TRAINER_H
#define MEDUSA_TRAINER_H

#include "../common/packed_batch.h"
#include "../data/token_cache.h"
#include "optim.h"

/* The frozen base model's final hidden states of every training conversation, in host memory, filled the first time a
 * conversation is trained on, so that later epochs skip the base model's forward pass (--cache-hidden). Each
 * conversation goes through the base model alone: its rows do not depend on the batch it is packed in (the packing
 * changes every epoch), so a resumed run computes the same values. */
typedef struct {
    float *rows;            /* [n_tokens, H]: conversation c from its offset in the token cache */
    int page_locked;        /* rows come from Backend.alloc_host (else malloc) */
    int32_t *len;           /* [n_convs] rows of each conversation filled (0: none yet) */
    const int64_t *offsets; /* the token cache's conv_offsets */
    int64_t n_convs, hits, misses;
    /* The next batch's rows, uploaded beside the queue while a step runs (Backend.upload_ahead, with a page-locked
     * cache): ahead_rows [max_tokens, H] backend (NULL: no such uploads) receives the conversations ahead_convs with
     * their ahead_lens (ahead_seqs of them; 0: none under way), and takes the place of Trainer.hidden when that batch
     * comes. */
    float *ahead_rows;
    int ahead_seqs;
    int32_t *ahead_lens;
    int64_t *ahead_convs, ahead_hits; /* ahead_hits: batches whose rows arrived that way */
} HiddenCache;

typedef struct {
    const Model *base;
    MedusaHeads *heads;
    AdamState adam;
    OptimConfig optim;
    float head_decay;
    TargetKind targets; /* what the heads learn (medusa-train --targets) */
    int max_tokens;
    ForwardState state;
    MedusaWork work;
    float *hidden;             /* [max_tokens, H] backend */
    int32_t *choice;           /* [max_tokens] host: the base model's greedy choice at each row (MedusaBase) */
    Matrix teacher_lm_head;    /* TARGETS_BASE_KL with truncated heads: the base's lm_head rows for their map; else no
                                * parts */
    HiddenCache *hidden_cache; /* NULL: the base model runs on every batch */
    int ranks; /* data-parallel ranks (pipelines) whose gradients each step sums (common/dist.h); 1: this one alone */
    /* for error messages (NULL: not named): the base model's path, where the heads came from, and what a divergence
     * leaves behind (e.g. "the last checkpoint, RUN/ckpt-4.h5, is intact") */
    const char *base_name, *heads_name, *diverge_note;
} Trainer;

/* Sums of per-head statistics over batches, for logging and evaluation. */
typedef struct {
    double loss_sum[64]; /* sum over batches of head i's mean loss */
    double total_loss_sum;
    int64_t valid[64], computed[64], hits[64][MEDUSA_TOPK];
    int64_t agree[64][MEDUSA_TOPK]; /* the base model's choice within head i's top k (evaluation) */
    int64_t base_valid, base_hits;  /* the base model's own top-1 on t+1 (evaluation) */
    int batches;
    int64_t tokens;
} StepMetrics;

/* heads NULL: a pipeline stage before the last (common/dist.h), which runs its part of the base model (base->part) on
 * each batch and passes the residual stream to the next stage; trainer_step and trainer_eval_batch then take part in
 * the collectives and return 0 / add nothing. optim NULL: evaluation only (no gradients, no optimizer state). targets:
 * what trainer_step's heads learn (evaluation always measures them against the labels and the base model's choices);
 * with TARGETS_BASE_KL the heads' token map must be final (a resumed run's checkpoint holds the same one: its data and
 * settings are checked equal). */
void trainer_init(Trainer *t, const Model *base, MedusaHeads *heads, const OptimConfig *optim, float head_decay,
                  TargetKind targets, int max_tokens, int logits_chunk);
void trainer_free(Trainer *t);
/* Keeps the base model's hidden states of data's conversations in host memory (HiddenCache); the size is
 * data->n_tokens x hidden x 4 bytes, fatal when it exceeds the host's memory. On a backend with upload_ahead and a
 * page-locked cache, a second [max_tokens, H] buffer of hidden states on the backend receives the next batch's rows. */
void trainer_cache_hidden(Trainer *t, const TokenCache *data);

/* Runs `n` micro-batches, accumulating gradients scaled by 1/n, then one optimizer step. With t->ranks > 1 every rank
 * runs its own n micro-batches, the gradients are scaled by 1/(n x ranks) and summed over the ranks, and metrics get
 * every rank's statistics. Returns the gradient norm before clipping; a non-finite loss or gradient stops the run with
 * a clear message (nothing is applied) that tells a damaged base model (non-finite hidden states) or heads (non-finite
 * parameters before the step) from a divergence. next (or NULL): the next step's first micro-batch, whose cached hidden
 * states are uploaded while this step's last micro-batch runs (each micro-batch's during the one before it). */
double trainer_step(Trainer *t, const PackedBatch *micro, int n, const PackedBatch *next, StepMetrics *metrics);

/* Forward only: head losses and top-k hits, the base model's top-1, and the heads' agreement with the base model's
 * greedy choices (MedusaBase) on a batch. A non-finite loss (the heads' or the base model's own) is fatal, naming the
 * base model or the heads as the source: an evaluation never reports a number computed from NaN or infinite values. */
void trainer_eval_batch(Trainer *t, const PackedBatch *b, StepMetrics *metrics);

void step_metrics_clear(StepMetrics *m);
/* Every data-parallel rank's statistics summed into each rank's (common/dist.h); nothing with one rank. */
void step_metrics_sum_ranks(StepMetrics *m);

/* 1 when every one of the n floats (backend memory) is finite: their sum of squares (in double) is. */
int trainer_all_finite(const Backend *be, const float *x, size_t n);

#endif
