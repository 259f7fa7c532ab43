#include "optim.h"

#include <math.h>
#include <string.h>

void optim_defaults(OptimConfig *c) {
    c->lr = 1e-3f;
    c->beta1 = 0.9f;
    c->beta2 = 0.999f;
    c->eps = 1e-8f;
    c->weight_decay = 0.0f;
    c->warmup_ratio = 0.1f;
    c->max_grad_norm = 1.0f;
    c->total_steps = 1;
}

int warmup_steps(const OptimConfig *c) { return (int)ceil((double)c->warmup_ratio * c->total_steps); }

float lr_at(const OptimConfig *c, int step) {
    int warmup = warmup_steps(c);
    if (step < warmup) return c->lr * (float)step / (float)(warmup > 1 ? warmup : 1);
    double progress = (double)(step - warmup) / (double)(c->total_steps - warmup > 1 ? c->total_steps - warmup : 1);
    double factor = 0.5 * (1.0 + cos(M_PI * progress));
    return c->lr * (float)(factor > 0 ? factor : 0);
}

void adam_init(AdamState *s, const MedusaHeads *m) {
    size_t bytes = sizeof(float) * m->n_params;
    s->m = m->be->alloc(bytes);
    s->v = m->be->alloc(bytes);
    m->be->fill_zero(s->m, bytes);
    m->be->fill_zero(s->v, bytes);
    s->step = 0;
}

void adam_free(AdamState *s, const MedusaHeads *m) {
    m->be->free(s->m);
    m->be->free(s->v);
    memset(s, 0, sizeof *s);
}

double optim_step(MedusaHeads *m, AdamState *s, const OptimConfig *c) {
    const Backend *be = m->be;
    double norm = sqrt(be->sum_squares(m->grads, m->n_params));
    if (!isfinite(norm)) return norm;
    /* torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1 */
    float scale = 1.0f;
    if (c->max_grad_norm > 0) {
        float coef = c->max_grad_norm / (float)(norm + 1e-6);
        if (coef < 1.0f) scale = coef;
    }
    float lr = lr_at(c, s->step);
    s->step++;
    be->adamw(m->params, m->grads, s->m, s->v, m->n_params, lr, c->beta1, c->beta2, c->eps, c->weight_decay, s->step, scale);
    be->fill_zero(m->grads, sizeof(float) * m->n_params);
    return norm;
}
