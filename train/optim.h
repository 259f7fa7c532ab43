/* AdamW over the flat head parameters, with global-norm clipping and the cosine schedule with linear
 * warm-up that Hugging Face's get_cosine_schedule_with_warmup computes. */
#ifndef MEDUSA_OPTIM_H
#define MEDUSA_OPTIM_H

#include "../model/medusa.h"

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    float warmup_ratio; /* warm-up steps = ceil(ratio * total_steps) */
    float max_grad_norm; /* <= 0 disables clipping */
    int total_steps;
} OptimConfig;

typedef struct {
    float *m, *v; /* backend memory, like the parameters */
    int step;     /* optimizer steps taken */
} AdamState;

void optim_defaults(OptimConfig *c);
int warmup_steps(const OptimConfig *c);
/* learning rate used by optimizer step `step` (0-based) */
float lr_at(const OptimConfig *c, int step);

void adam_init(AdamState *s, const MedusaHeads *m);
void adam_free(AdamState *s, const MedusaHeads *m);
/* Clips the accumulated gradients to max_grad_norm, applies one AdamW step and zeroes the gradients.
 * Returns the gradient norm before clipping (NaN/Inf when the gradients are not finite; then nothing is
 * changed). */
double optim_step(MedusaHeads *m, AdamState *s, const OptimConfig *c);

#endif
