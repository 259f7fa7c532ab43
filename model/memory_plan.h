/* The memory a training or decoding run needs, computed from the shapes before anything is allocated and
 * printed at start-up, so a run that cannot fit fails at once instead of hours in. */
#ifndef MEDUSA_MEMORY_PLAN_H
#define MEDUSA_MEMORY_PLAN_H

#include <stdio.h>

#include "config.h"

typedef struct {
    int weight_bytes;     /* bytes per base weight element: 4 on the CPU (fp32), 2 on CUDA (bf16) */
    int act_bytes;        /* bytes per activation element */
    int head_copy_bytes;  /* extra low-precision copy of the head weights for the GEMMs (0 if none) */
    int n_heads, n_layers;
    int batch_tokens;     /* tokens per packed batch */
    int logits_chunk;     /* rows of head logits materialised at once */
    int train;            /* grads + AdamW state */
    int head_vocab;       /* rows of each head's lm_head; 0: the full vocabulary */
} MemoryPlanInput;

typedef struct {
    double base_weights, head_params, head_grads, adam_state, head_copy;
    double base_activations, head_activations, logits, total; /* bytes */
} MemoryPlan;

MemoryPlan memory_plan(const ModelConfig *c, const MemoryPlanInput *in);
void memory_plan_print(const MemoryPlan *p, FILE *out, double budget_bytes);

#endif
