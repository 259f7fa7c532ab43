/* AdamW over the flat head parameters, with global-norm clipping and the cosine schedule with linear
 * warm-up that Hugging Face's get_cosine_schedule_with_warmup computes. */
#ifndef MEDUSA_OPTIM_H
#define MEDUSA_OPTIM_H

#include "../model/medusa.h"

/* Doubles, like the Python floats of the reference, so derived scalars round the same way (a float warm-up
 * ratio of 0.1 times 10 steps would ceil to 2 warm-up steps). */
typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
    double warmup_ratio;  /* warm-up steps = ceil(ratio * total_steps) */
    double max_grad_norm; /* <= 0 disables clipping */
    int total_steps;
} OptimConfig;

typedef struct {
    float *m, *v;        /* backend memory, like the parameters */
    double *sum_squares; /* backend: optim_step's sum of squares of the gradients */
    int step;            /* optimizer steps taken */
} AdamState;

void optim_defaults(OptimConfig *c);
int warmup_steps(const OptimConfig *c);
/* learning rate used by optimizer step `step` (0-based) */
double lr_at(const OptimConfig *c, int step);

void adam_init(AdamState *s, const MedusaHeads *m);
void adam_free(AdamState *s, const MedusaHeads *m);
/* Clips the accumulated gradients to max_grad_norm, applies one AdamW step and zeroes the gradients.
 * Returns the gradient norm before clipping (NaN/Inf when the gradients are not finite; then nothing is
 * changed). Weight decay applies to the weights only, never to the ResBlock biases (Hugging Face Trainer's
 * parameter groups). optim_queue, one download of the sum of squares, optim_finish. */
double optim_step(MedusaHeads *m, AdamState *s, const OptimConfig *c);
/* optim_step without waiting for the device: the gradients' sum of squares into the backend double sum_squares, and
 * AdamW reading it there (clip coefficient, and no update at all where the norm is not finite), so that the sum can
 * leave the device with the step's other results (MedusaWork's scalar) in one download. Counts the step; then
 * optim_finish with the downloaded sum gives the norm and uncounts a step that was not applied. */
void optim_queue(MedusaHeads *m, AdamState *s, const OptimConfig *c, double *sum_squares);
double optim_finish(AdamState *s, double sum_squares);
/* The update part of optim_step given the gradients' global norm. With a bf16 copy of the heads (medusa_use_bf16)
 * AdamW writes it too: no separate rounding pass. */
void optim_apply(MedusaHeads *m, AdamState *s, const OptimConfig *c, double grad_norm);

#endif
