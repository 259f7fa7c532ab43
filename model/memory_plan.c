#include "memory_plan.h"

MemoryPlan memory_plan(const ModelConfig *c, const MemoryPlanInput *in) {
    MemoryPlan p = {0};
    double H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size, T = in->batch_tokens;
    double q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    double layer = 2 * H + H * q + 2 * H * kv + q * H + 3 * H * I + (c->attention_bias ? q + 2 * kv : 0);
    double base = V * H * (c->tie_word_embeddings ? 1 : 2) + H + c->n_layers * layer;
    p.base_weights = base * in->weight_bytes;
    double Vh = in->head_vocab > 0 ? in->head_vocab : V;
    double heads = in->n_heads * (in->n_layers * (H * H + H) + Vh * H);
    p.head_params = heads * 4; /* fp32 master weights */
    p.head_copy = heads * in->head_copy_bytes;
    if (in->train) {
        p.head_grads = heads * 4;
        p.adam_state = heads * 8;
    }
    /* frozen base: one layer's activations live at a time (x, xn, proj, q, att, k, v, gate, up) + final hidden */
    p.base_activations = T * (4 * H + 2 * q + 2 * kv + 2 * I) * in->act_bytes;
    /* heads run one after another: block outputs and pre-activations of one head, dx, dz, the gathered rows */
    p.head_activations = T * H * (2.0 * (in->n_layers > 0 ? in->n_layers : 1) + 3) * 4;
    p.logits = (double)in->logits_chunk * Vh * 4;
    p.total = p.base_weights + p.head_params + p.head_copy + p.head_grads + p.adam_state + p.base_activations +
              p.head_activations + p.logits;
    return p;
}

static void line(FILE *out, const char *what, double bytes) { fprintf(out, "  %-34s %9.2f GiB\n", what, bytes / (1024.0 * 1024 * 1024)); }

void memory_plan_print(const MemoryPlan *p, FILE *out, double budget_bytes) {
    fprintf(out, "memory plan:\n");
    line(out, "base model weights (frozen)", p->base_weights);
    line(out, "head parameters (fp32)", p->head_params);
    if (p->head_copy > 0) line(out, "head weights, GEMM copy", p->head_copy);
    if (p->head_grads > 0) line(out, "head gradients (fp32)", p->head_grads);
    if (p->adam_state > 0) line(out, "AdamW moments (fp32)", p->adam_state);
    line(out, "base activations (one layer live)", p->base_activations);
    line(out, "head activations", p->head_activations);
    line(out, "logits chunk", p->logits);
    line(out, "total", p->total);
    if (budget_bytes > 0)
        fprintf(out, "  %-34s %9.2f GiB (%s)\n", "available", budget_bytes / (1024.0 * 1024 * 1024),
                p->total <= budget_bytes ? "fits" : "DOES NOT FIT");
}
