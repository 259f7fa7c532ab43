#include "optim.h"

#include <math.h>
#include <string.h>

void optim_defaults(OptimConfig *c) {
    c->lr = 1e-3;
    c->beta1 = 0.9;
    c->beta2 = 0.999;
    c->eps = 1e-8;
    c->weight_decay = 0.0;
    c->warmup_ratio = 0.1;
    c->max_grad_norm = 1.0;
    c->total_steps = 1;
}

int warmup_steps(const OptimConfig *c) { return (int)ceil((double)c->warmup_ratio * c->total_steps); }

double lr_at(const OptimConfig *c, int step) {
    int warmup = warmup_steps(c);
    if (step < warmup) return c->lr * (double)step / (double)(warmup > 1 ? warmup : 1);
    double progress = (double)(step - warmup) / (double)(c->total_steps - warmup > 1 ? c->total_steps - warmup : 1);
    double factor = 0.5 * (1.0 + cos(M_PI * progress));
    return c->lr * (factor > 0 ? factor : 0);
}

void adam_init(AdamState *s, const MedusaHeads *m) {
    size_t bytes = sizeof(float) * m->n_params;
    s->m = m->be->alloc(bytes);
    s->v = m->be->alloc(bytes);
    s->sum_squares = m->be->alloc(sizeof(double));
    m->be->fill_zero(s->m, bytes);
    m->be->fill_zero(s->v, bytes);
    s->step = 0;
}

void adam_free(AdamState *s, const MedusaHeads *m) {
    m->be->free(s->m);
    m->be->free(s->v);
    m->be->free(s->sum_squares);
    memset(s, 0, sizeof *s);
}

/* The step's scalars (the next step's: s->step advances), without clipping (grad_scale 1) */
static AdamWStep next_step(AdamState *s, const OptimConfig *c) {
    double lr = lr_at(c, s->step);
    int t = ++s->step;
    double bc1 = 1.0 - pow(c->beta1, t), bc2 = 1.0 - pow(c->beta2, t);
    return (AdamWStep){
        .decay = (float)(1.0 - lr * c->weight_decay),
        .beta1_weight = (float)(1.0 - c->beta1),
        .beta2 = (float)c->beta2,
        .beta2_weight = (float)(1.0 - c->beta2),
        .bias_correction2_sqrt = (float)sqrt(bc2),
        .step_size = (float)(lr / bc1),
        .eps = (float)c->eps,
        .grad_scale = 1.0f,
        .max_grad_norm = c->max_grad_norm > 0 ? (float)c->max_grad_norm : -1.0f,
    };
}

/* AdamW on the run p[0..n) of the flat parameter vector (and of its bf16 copy); n added to *done */
static void adamw_range(MedusaHeads *m, AdamState *s, float *p, size_t n, const AdamWStep *step,
                        const double *grad_sum_squares, size_t *done) {
    size_t off = (size_t)(p - m->params);
    m->be->adamw(p, m->params_bf16 ? m->params_bf16 + off : NULL, m->grads + off, s->m + off, s->v + off, n, step,
                 grad_sum_squares);
    *done += n;
}

/* AdamW over every parameter, the ResBlocks' biases without weight decay; each gradient is zeroed as it is used */
static void adamw_all(MedusaHeads *m, AdamState *s, const AdamWStep *decayed, const double *grad_sum_squares) {
    const MedusaShape *sh = &m->shape;
    size_t H = (size_t)sh->hidden, done = 0;
    AdamWStep plain = *decayed; /* biases: no weight decay */
    plain.decay = 1.0f;
    for (int h = 0; h < sh->n_heads; h++) {
        for (int l = 0; l < sh->n_layers; l++) {
            adamw_range(m, s, medusa_linear_w(m, m->params, h, l), H * H, decayed, grad_sum_squares, &done);
            adamw_range(m, s, medusa_linear_b(m, m->params, h, l), H, &plain, grad_sum_squares, &done);
        }
        adamw_range(m, s, medusa_lm_head(m, m->params, h), (size_t)sh->head_vocab * H, decayed, grad_sum_squares,
                    &done);
    }
    if (done != m->n_params) fatal("optimizer: %zu of %zu parameters updated", done, m->n_params); /* and zeroed */
}

void optim_apply(MedusaHeads *m, AdamState *s, const OptimConfig *c, double grad_norm) {
    /* torch.nn.utils.clip_grad_norm_ (in fp32): scale by max_norm / (norm + 1e-6) when that is below 1 */
    AdamWStep step = next_step(s, c);
    step.grad_scale = clip_factor(grad_norm, step.max_grad_norm);
    adamw_all(m, s, &step, NULL);
}

void optim_queue(MedusaHeads *m, AdamState *s, const OptimConfig *c, double *sum_squares) {
    m->be->sum_squares(sum_squares, m->grads, m->n_params);
    AdamWStep step = next_step(s, c);
    adamw_all(m, s, &step, sum_squares);
}

double optim_finish(AdamState *s, double sum_squares) {
    double norm = sqrt(sum_squares);
    if (!isfinite(norm)) s->step--; /* nothing was applied */
    return norm;
}

double optim_step(MedusaHeads *m, AdamState *s, const OptimConfig *c) {
    optim_queue(m, s, c, s->sum_squares);
    double sum;
    m->be->download(&sum, s->sum_squares, sizeof sum);
    return optim_finish(s, sum);
}
