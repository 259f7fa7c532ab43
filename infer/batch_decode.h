/* Batched generation: many independent prompts decoded together, one token each per pass, so that a pass is a
 * few-row GEMM over the weights instead of one row per sequence (continuous batching: a slot that finishes takes a
 * new prompt while the others go on; prompts are prefilled in chunks within the same passes). Plain decoding, greedy
 * or sampled; what self-distillation generates its data with (infer/distill.c). */
#ifndef MEDUSA_BATCH_DECODE_H
#define MEDUSA_BATCH_DECODE_H

#include "../common/rng.h"
#include "../model/llama.h"

typedef enum { REPLY_RUNNING, REPLY_STOP, REPLY_LENGTH, REPLY_CONTEXT } ReplyEnd;

typedef struct {
    int32_t *ctx; /* the prompt, then the generated tokens (the stop token included) */
    int n_ctx, cap;
    int n_prompt, max_new;
    ReplyEnd end; /* REPLY_RUNNING while generating */
    int active;
    Rng rng;
} BatchSlot;

typedef struct {
    const Model *m;
    SlotCache cache;
    ForwardState state;
    BatchSlot *slots;
    int stop_id;
    float temperature, top_p;
    float *hidden, *last_hidden, *logits; /* backend: [pass_tokens, H], [n_slots, H], [n_slots, V] */
    int32_t *ids, *host_ids;              /* backend / host: the next token of each run that ends a context */
    float *host_logits, *probs;           /* sampling: the rows, and scratch */
    int32_t *tokens, *run_slot, *run_len; /* a pass's runs (host) */
    int64_t generated, passes;            /* totals */
} BatchDecoder;

/* n_slots prompts at once, each with at most slot_len tokens of prompt and reply, passes of at most pass_tokens
 * tokens (>= n_slots). Generation stops after stop_id (>= 0). temperature 0: greedy; else sampling from the top_p
 * nucleus. */
void batch_decoder_init(BatchDecoder *d, const Model *m, int n_slots, int slot_len, int pass_tokens, int stop_id,
                        float temperature, float top_p);
void batch_decoder_free(BatchDecoder *d);

/* Starts a reply of at most max_new tokens after prompt[0..n) in slot (idle or done), sampling with its own seed.
 * Keys and values of the slot's previous context that the prompt starts with are kept (the next turn of a
 * conversation prefills only its new tokens). Returns 0 when the prompt leaves no room in the slot. */
int batch_decoder_start(BatchDecoder *d, int slot, const int32_t *prompt, int n, int max_new, uint64_t seed);
/* One pass: every generating slot's next token, then prompt chunks in the tokens left. Returns the tokens generated
 * (0 when no slot is active). */
int batch_decoder_step(BatchDecoder *d);
/* The reply of a slot (without the stop token); *end says why it ended. */
const int32_t *batch_decoder_reply(const BatchDecoder *d, int slot, int *n, ReplyEnd *end);
/* Frees the slot for batch_decoder_start (its cache is kept for a prompt that continues it). */
void batch_decoder_release(BatchDecoder *d, int slot);

#endif
