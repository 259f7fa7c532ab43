/* The memory a training, evaluation or decoding run needs, computed from the shapes before anything is
 * allocated and printed at start-up, so a run that cannot fit fails at once instead of hours in. A device
 * backend reserves it as one allocation (Backend.reserve) and serves every tensor from it. */
#ifndef MEDUSA_MEMORY_PLAN_H
#define MEDUSA_MEMORY_PLAN_H

#include <stddef.h>
#include <stdio.h>

#include "../formats/weights.h"
#include "../kernels/ops.h"
#include "config.h"
#include "medusa.h"

typedef struct {
    double weight_bytes; /* bytes per base weight element: 4 (fp32), 2 (bf16 storage), or with native storage the
                          * file's formats' average (0.56 for Q4_0's 18 bytes per 32 weights) */
    int act_bytes;       /* bytes per activation element between the base's ops and of the KV cache (the residual
                          * stream and the final hidden states are fp32) */
    int head_copy_bytes; /* extra low-precision copy of the head weights for the GEMMs (0 if none) */
    int n_heads, n_layers;
    int batch_tokens;  /* tokens per base-model pass: a packed batch, or a decoding run's prompt */
    int logits_chunk;  /* rows of head logits materialised at once */
    int train;         /* grads + AdamW state */
    int head_vocab;    /* rows of each head's lm_head; 0: the full vocabulary */
    int head_tokens;   /* rows the heads run on; 0: batch_tokens */
    int vocab_rows;    /* rows of full-vocabulary logits besides the heads' chunk (evaluation: the base
                        * model's on a chunk of tokens; decoding: the base model's and each head's per tree node) */
    int kv_len;        /* rows of the KV cache (decoding); 0: none */
    int micro_batches; /* batches whose heads' per-row results wait on the device for one download (a step's
                        * micro-batches: --grad-accum); 0: one */
    int teacher;       /* soft targets (base-kl): the base's logits for a chunk of head rows beside the heads', the
                        * hidden rows they come from, and for truncated heads the base lm_head's rows for their map */
    int hidden_ahead;  /* a second buffer of final hidden states, which the next batch's cached ones are uploaded into
                        * while a step runs (--cache-hidden on a device: train/trainer.h) */
    ModelPart part;    /* the base's layers held (a pipeline stage: memory_plan_stage_input); {0, 0}: all of it */
} MemoryPlanInput;

typedef struct {
    double base_weights, head_params, head_grads, adam_state, head_copy;
    double teacher_weights; /* base-kl with truncated heads: the base lm_head's rows for the heads' map */
    double base_activations, kv_cache, head_activations, logits;
    double bf16_operands;   /* bf16 GEMMs: activations rounded to bf16 just before one (the largest input and output
                             * gradient; the normed inputs and SwiGLU's are made in bf16 by the base's forward) and
                             * the cuBLASLt workspace (kernels/cuda/matmul.cu) */
    double attention_split; /* decoding: partial softmax states of key slices (ATTENTION_SPLIT_BYTES, kernels/ops.h) */
    double total;           /* bytes */
} MemoryPlan;

MemoryPlan memory_plan(const ModelConfig *c, const MemoryPlanInput *in);
/* The elements of the base model's weight matrices (embedding, lm_head unless tied, the layers' projections). */
double memory_plan_matrix_elements(const ModelConfig *c);
/* The input for train/trainer.c: packed batches of batch_tokens through the base model, the heads' logits in chunks of
 * logits_chunk rows; train adds fp32 gradients and AdamW moments, evaluate (or base-argmax targets) the base model's
 * logits on a chunk of logits_chunk rows too (its own top-1, its choices), base-kl targets the teacher's (the base's
 * logits over the heads' vocabulary). Heads over a bf16 base (DT_BF16) run their GEMMs in bf16 too. */
MemoryPlanInput memory_plan_training(DType weights, int n_heads, int n_layers, int head_vocab, int batch_tokens,
                                     int logits_chunk, int train, int evaluate, TargetKind targets);
/* The input for infer/decoder.c: prompts of up to max_len tokens prefilled in one pass, a KV cache of
 * max_len + tree_nodes rows, then tree_nodes rows per step through the base model and the heads
 * (n_heads = 0 and tree_nodes = 1 for plain decoding). Heads over a bf16 base (weights DT_BF16) run their
 * GEMMs in bf16 too. */
MemoryPlanInput memory_plan_decoding(DType weights, int n_heads, int n_layers, int head_vocab, int max_len,
                                     int tree_nodes);
/* The input for infer/batch_decode.c: n_slots sequences of up to slot_len tokens in a KV cache, passes of up to
 * pass_tokens tokens through the base model, the base model's logits for one row per slot. */
MemoryPlanInput memory_plan_generation(DType weights, int n_slots, int slot_len, int pass_tokens);
/* The input of one pipeline stage of a run (medusa-train --pipeline) that `whole` plans as one process: the part's
 * layers, the embedding on the first stage, the final norm, lm_head, the heads and the base's logits on the last. */
MemoryPlanInput memory_plan_stage_input(const ModelConfig *c, const MemoryPlanInput *whole, ModelPart part);
/* The base's layers divided over `stages` consecutive stages (every stage at least one layer) so that the largest
 * stage's plan is as small as it can be: part[stages] and, when plan is not NULL, each stage's plan[stages]. */
void memory_plan_stages(const ModelConfig *c, const MemoryPlanInput *whole, int stages, ModelPart *part,
                        MemoryPlan *plan);
/* What a device reserves for a plan: the total plus 5% and 64 MiB for what the plan leaves out, the 256-byte
 * rounding of each tensor and the gaps between blocks that short-lived buffers of other sizes leave. */
size_t memory_plan_reserve_bytes(const MemoryPlan *p);
/* the plan's lines, then with budget_bytes > 0 the budget, labelled `available` (or the label given) */
void memory_plan_print(const MemoryPlan *p, FILE *out, double budget_bytes, const char *budget_label);
/* What every binary does before loading anything: prints the plan beside what the backend has free (when print), then
 * reserves it on the backend (one device allocation that every tensor is carved from; nothing on the CPU). A plan that
 * cannot fit the GPU is a fatal error here, before any weight is read. */
void memory_plan_reserve(const MemoryPlan *p, const Backend *be, int print);

#endif
