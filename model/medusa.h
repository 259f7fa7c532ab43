/* Medusa heads: K heads, each L ResBlocks (x + SiLU(W x + b)) then its own lm_head, reading the base model's
 * final-norm hidden states; head i predicts the token at t+2+i. Forward, fused loss and backward for
 * training, and logits for decoding. All parameters live in one flat buffer so the optimizer, clipping and
 * checkpoints treat them as one vector. */
#ifndef MEDUSA_MEDUSA_H
#define MEDUSA_MEDUSA_H

#include "../common/rng.h"
#include "llama.h"

#define MEDUSA_TOPK 5

/* head_vocab: rows of each head's lm_head (vLLM's truncated_vocab_size); 0 means the full vocabulary.
 * Truncated heads predict only the tokens of their token_map; medusa_init stores the effective value. */
typedef struct {
    int n_heads, n_layers, hidden, vocab, head_vocab;
} MedusaShape;

typedef struct {
    MedusaShape shape;
    const Backend *be;
    size_t n_params;
    float *params;         /* backend memory; per head: L x (W [H,H], b [H]) then lm_head [Vh,H] */
    float *grads;          /* same layout, NULL until medusa_enable_grads */
    uint16_t *params_bf16; /* backend memory, params rounded to bf16 for the GEMMs; NULL: fp32 GEMMs */
    int32_t *token_map;    /* host [Vh]: lm_head row r predicts token token_map[r]; NULL for the full vocabulary */
    int32_t *token_index;  /* host [V]: the inverse, -1 for a token outside the map; NULL for the full vocabulary */
} MedusaHeads;

/* Makes the heads' GEMMs take bf16 operands (fp32 accumulation, fp32 master weights and gradients): a bf16
 * copy of the parameters is kept, made here, rewritten by each AdamW step as it updates the parameters and by
 * checkpoint_load. Call again after changing params any other way. */
void medusa_use_bf16(MedusaHeads *m);

/* Per-head result of one batch. */
typedef struct {
    double loss[64];                /* mean cross-entropy of head i over its valid positions */
    int64_t valid[64];              /* positions with a trained target */
    int64_t computed[64];           /* of those, the ones in head i's vocabulary: the rows its lm_head ran on */
    int64_t hits[64][MEDUSA_TOPK];  /* hits[i][k-1]: target within head i's top k */
    int64_t agree[64][MEDUSA_TOPK]; /* agree[i][k-1]: the base model's choice within head i's top k (MedusaBase) */
    double total_loss;              /* sum_i decay^i * loss[i] */
    /* left by medusa_forward_backward_queued for medusa_stats_collect: where head i's rows start in the work's results,
     * how many have a loss, its weight decay^i, and whether the base's choices were ranked */
    size_t results_at[64];
    int64_t n_loss[64];
    float weight[64];
    int ranked_choices;
} MedusaBatchStats;

/* What head i at position t learns (medusa-train --targets). The positions are the labels' whatever the targets: those
 * whose token t+2+i is trained (loss_mask) and in t's sequence. */
typedef enum {
    TARGETS_LABELS,      /* the data's token at t+2+i (the reference method) */
    TARGETS_BASE_ARGMAX, /* the base model's greedy choice for it (MedusaBase.choice at row t+1+i), a hard label */
    TARGETS_BASE_KL,     /* the base model's distribution for it: softmax of its logits at row t+1+i, by KL */
} TargetKind;

/* What the heads see of the base model besides its hidden states. */
typedef struct {
    TargetKind targets;
    /* host [T]: the base model's greedy choice at each row (the argmax of its logits there), -1 where its largest logit
     * is not finite. Head i at position t guesses the token the base chooses at row t+1+i, given the true prefix: a
     * forward-only pass counts in MedusaBatchStats.agree, over the positions where head i has a target, how often
     * that choice is within the head's top k (a choice outside a truncated head's token map, or none, is a miss; a
     * non-finite logit never a hit). What decoding's verification accepts is that choice, so this agreement, not the
     * accuracy on the data's tokens, predicts the accepted length. TARGETS_BASE_ARGMAX learns it: a position without
     * one, or with one outside a truncated head's map, has no loss; top-k accuracy is still the labels'. */
    const int32_t *choice;
    /* TARGETS_BASE_KL: the base model and its lm_head, or for truncated heads its rows for their token map
     * (model_lm_head_subset), so that the teacher is the base's distribution restricted to the map's tokens and
     * renormalised. Its logits are computed a chunk of rows at a time, into the work's teacher buffer; every position
     * has a loss, reported as the KL divergence (the labels' top-k accuracy beside it). */
    const Model *model;
    const Matrix *lm_head;
} MedusaBase;

/* Scratch for batches up to max_tokens, logits computed chunk_rows rows at a time. */
typedef struct {
    int max_tokens, chunk_rows;
    float *act;     /* [L][T,H]: block outputs */
    float *pre;     /* [L][T,H]: Linear outputs before SiLU */
    float *dx, *dz; /* [T,H] */
    /* heads with a bf16 copy (medusa_use_bf16 before medusa_work_init): each block's input rounded for its GEMM, which
     * its weight gradient reads again ([L+1][T,H]: the gathered hidden rows, then block l's output, the lm_head's
     * input), and dz rounded for the block's gradient GEMMs ([T,H]); NULL otherwise */
    uint16_t *act_bf16, *dz_bf16;
    float *logits;                         /* [chunk_rows, V] */
    int32_t *targets, *ranked;             /* [T] on the backend: the loss's targets, the labels' lm_head rows */
    float *rows_hidden;                    /* [T,H]: the hidden rows a head has targets for, gathered */
    int32_t *rows;                         /* [T] backend: their positions */
    int32_t *choices;                      /* [T] backend: the base model's choices' lm_head rows */
    int32_t *host_targets;                 /* [K][T] */
    int32_t *host_rows, *host_row_targets; /* [T] */
    int32_t *host_ranked, *host_choices;   /* [T] */
    /* TARGETS_BASE_KL (medusa_work_enable_teacher): the base's logits for a chunk of rows [chunk_rows, Vh], the hidden
     * rows they come from [chunk_rows, H], and per row of a head the row of hidden [T] (backend and host) */
    float *teacher, *teacher_hidden;
    int32_t *teacher_rows, *host_teacher_rows;
    /* the per-row results of the batches whose statistics are pending, head after head: its rows' losses, then their
     * ranks (int32), then with MedusaBatchStats.ranked_choices the base's choices' ranks (int32); backend and host,
     * results_capacity 4-byte words, so that a step's batches leave the device in one download */
    float *results, *host_results;
    size_t results_capacity, results_used;
    /* one backend double just before results (medusa_work_scalar), and its host copy after medusa_stats_collect */
    double *scalar, scalar_value;
    int scalar_pending;
    void *host_block; /* host_results' allocation, starting with the scalar's copy */
    /* called by medusa_forward_backward_queued as soon as head h's work of the batch is queued (its gradients' last
     * update), for every head in the order they run (0 to K-1), one with nothing to learn too: a data-parallel step
     * starts that head's gradient sum over the ranks there, while the next head's work runs. NULL: none. */
    void (*head_done)(void *ctx, int head);
    void *head_done_ctx;
} MedusaWork;

/* Truncated heads (0 < head_vocab < vocab) start with the map 0..Vh-1; set the real one before use. */
void medusa_init(MedusaHeads *m, const Backend *be, MedusaShape shape);
/* map: Vh distinct token ids in increasing order. */
void medusa_set_token_map(MedusaHeads *m, const int32_t *map);
/* The token that lm_head row r predicts. */
static inline int medusa_row_token(const MedusaHeads *m, int r) { return m->token_map ? m->token_map[r] : r; }
/* Reference initialisation: W = 0, b ~ U(-1/sqrt(H), 1/sqrt(H)), lm_head = copy of the base lm_head
 * (its rows token_map[r] for truncated heads). */
void medusa_init_from_base(MedusaHeads *m, const Model *base, Rng *rng);
void medusa_enable_grads(MedusaHeads *m);
/* frees the heads; nothing for a zeroed MedusaHeads (never initialised) */
void medusa_free(MedusaHeads *m);

/* Views into the flat buffer (works for params and grads alike). */
float *medusa_linear_w(const MedusaHeads *m, float *base, int head, int layer);
float *medusa_linear_b(const MedusaHeads *m, float *base, int head, int layer);
float *medusa_lm_head(const MedusaHeads *m, float *base, int head);

void medusa_work_init(MedusaWork *w, const MedusaHeads *m, int max_tokens, int chunk_rows);
void medusa_work_free(MedusaWork *w, const MedusaHeads *m);
/* The teacher's buffers of TARGETS_BASE_KL (MedusaWork), freed by medusa_work_free. */
void medusa_work_enable_teacher(MedusaWork *w, const MedusaHeads *m);
/* Room for the results of n_batches batches before medusa_stats_collect (medusa_work_init makes room for one); only
 * between collections. */
void medusa_work_reserve_batches(MedusaWork *w, const MedusaHeads *m, int n_batches);

/* Targets of head i at position t: tokens[t+2+i] when it lies in the same sequence and loss_mask is set;
 * -1 (ignored) otherwise. targets is [K][T] on the host. */
void medusa_targets(int n_heads, const int32_t *tokens, const uint8_t *loss_mask, const int32_t *seq_lens, int n_seqs,
                    int T, int32_t *targets);

/* Forward + loss on hidden [T,H] (backend memory). With truncated heads a target outside the token map is
 * left out of the loss but still counts in valid[] as a miss, so top-k accuracy covers every target. With grad_scale >
 * 0 the gradients (scaled by grad_scale, e.g. 1/accumulation) are ADDED to m->grads. head_decay weights head i by
 * decay^i. Each head runs only on the rows it has a target for (gathered): an ignored position contributes nothing to
 * the loss or the gradients, so skipping it is exact and saves the masked share of the work. base may be NULL. */
void medusa_forward_backward(MedusaHeads *m, MedusaWork *w, const float *hidden, const int32_t *tokens,
                             const uint8_t *loss_mask, const int32_t *seq_lens, int n_seqs, int T,
                             const MedusaBase *base, float head_decay, float grad_scale, MedusaBatchStats *stats);
/* The same, leaving the batch's per-row results on the backend: stats' valid and computed are set, its loss, hits,
 * agree and total_loss wait for medusa_stats_collect, so that several batches (a step's micro-batches) cost one
 * download. */
void medusa_forward_backward_queued(MedusaHeads *m, MedusaWork *w, const float *hidden, const int32_t *tokens,
                                    const uint8_t *loss_mask, const int32_t *seq_lens, int n_seqs, int T,
                                    const MedusaBase *base, float head_decay, float grad_scale,
                                    MedusaBatchStats *stats);
/* Completes the statistics of the n batches queued since the last collection, in their order: one download, which
 * also brings the work's scalar when medusa_work_scalar was called since. */
void medusa_stats_collect(const MedusaHeads *m, MedusaWork *w, MedusaBatchStats *stats, int n);
/* A backend double for the caller to write before the next medusa_stats_collect, which downloads it with the batches'
 * results in the same copy into w->scalar_value (a training step's gradient sum of squares: one download per step). */
double *medusa_work_scalar(MedusaWork *w);

/* FLOPs of training one head on `rows` rows (MedusaBatchStats.computed), a multiply-add counted as 2: the lm_head's
 * forward, input and weight gradients (3 x 2 x Vh x H), each ResBlock's forward and weight gradient (2 x 2 x H x H)
 * and, above block 0, its input gradient (block 0's is never formed: the base is frozen). */
double medusa_train_flops(const MedusaShape *s, int64_t rows);

/* Decoding: logits of every head for rows of hidden [T,H] → out [K][T,Vh] (backend memory); row index r
 * of a head's logits is token medusa_row_token(m, r). */
void medusa_logits(const MedusaHeads *m, MedusaWork *w, const float *hidden, int T, float *out);

#endif
