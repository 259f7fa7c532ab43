#include "memory_plan.h"

#include <math.h>
#include <stdlib.h>

double memory_plan_matrix_elements(const ModelConfig *c) {
    double H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    double q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    return V * H * (c->tie_word_embeddings ? 1 : 2) + c->n_layers * (H * q + 2 * H * kv + q * H + 3 * H * I);
}

MemoryPlan memory_plan(const ModelConfig *c, const MemoryPlanInput *in) {
    MemoryPlan p = {0};
    double H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size, T = in->batch_tokens;
    double q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    ModelPart part = in->part;
    if (part.layer_end == 0) part.layer_end = c->n_layers;
    int layers = part.layer_end - part.layer_begin, first = part.layer_begin == 0, last = part.layer_end == c->n_layers;
    double embedding = first || (last && c->tie_word_embeddings) ? V * H : 0;
    double lm_head = last && !c->tie_word_embeddings ? V * H : 0;
    double matrices = embedding + lm_head + layers * (H * q + 2 * H * kv + q * H + 3 * H * I);
    /* norms, biases: fp32 */
    double vectors = (last ? H : 0) + layers * (2 * H + (c->attention_bias ? q + 2 * kv : 0));
    p.base_weights = matrices * in->weight_bytes + vectors * 4;
    double Vh = in->head_vocab > 0 ? in->head_vocab : V;
    double heads = in->n_heads * (in->n_layers * (H * H + H) + Vh * H);
    p.head_params = heads * 4; /* fp32 master weights */
    p.head_copy = heads * in->head_copy_bytes;
    if (in->teacher && Vh < V) p.teacher_weights = Vh * H * in->weight_bytes;
    if (in->train) {
        p.head_grads = heads * 4;
        p.adam_state = heads * 8;
    }
    /* frozen base: one layer's activations live at a time: the fp32 residual stream x and final hidden; the q/k/v
     * GEMM's rows and q, k, v split from them, the gate/up rows; the normed input, attention's output, o_proj/down's
     * output and the gated MLP's product (fp32 weights; bf16 weights: every GEMM input in one bf16 buffer, the residual
     * GEMMs adding into x, and with sandwich_norms a block's fp32 output and its norm); the int32 layout (positions,
     * tokens, key ranges: 5 rows) */
    double gemm_inputs = in->weight_bytes == 2 ? fmax(fmax(H, q), I) * 2 + (c->sandwich_norms ? 2 * H * 4 : 0)
                                               : (2 * H + q + I) * in->act_bytes;
    p.base_activations = T * (2 * H * 4 + (2 * (q + 2 * kv) + 2 * I) * in->act_bytes + gemm_inputs) + T * 4 * 5;
    if (in->hidden_ahead) p.base_activations += T * H * 4;
    p.kv_cache = 2.0 * layers * in->kv_len * kv * in->act_bytes;
    if (in->kv_len >= 2 * ATTENTION_SPLIT_MIN_KEYS) p.attention_split = (double)ATTENTION_SPLIT_BYTES(c->head_dim);
    /* heads run one after another: block outputs and pre-activations of one head, dx, dz, the gathered rows
     * and per row its position, the base model's choice and its rank, the label's row; per chunk row a loss, a rank and
     * a target */
    double Th = in->head_tokens > 0 ? in->head_tokens : T;
    double chunk = in->logits_chunk < Th ? in->logits_chunk : Th;
    double blocks = in->n_layers > 0 ? in->n_layers : 1;
    if (in->n_heads > 0) p.head_activations = Th * H * (2 * blocks + 3) * 4 + Th * 16 + chunk * 12;
    /* each head's per-row loss, rank and choice's rank for the batches of a step, downloaded together */
    p.head_activations += (in->micro_batches > 1 ? in->micro_batches : 1) * in->n_heads * Th * 12;
    if (in->teacher) p.head_activations += chunk * H * 4 + Th * 4; /* the teacher's hidden rows and their positions */
    p.logits = (in->n_heads > 0 ? chunk * Vh * 4 : 0) * (in->teacher ? 2 : 1) + (double)in->vocab_rows * V * 4;
    if (in->weight_bytes == 2 || in->head_copy_bytes == 2) {
        /* the final norm's rows rounded for the base's lm_head; the heads' blocks' inputs and the lm_head's rounded by
         * the ops before them, and dz rounded for the gradient GEMMs (MedusaWork.act_bf16, dz_bf16); cuBLASLt's
         * workspace */
        double heads_bf16 = in->head_copy_bytes == 2 && in->n_heads > 0 ? Th * H * (blocks + 2) : 0;
        p.bf16_operands = (T * H + heads_bf16) * 2 + (32 << 20);
    }
    p.total = p.base_weights + p.teacher_weights + p.head_params + p.head_copy + p.head_grads + p.adam_state +
              p.base_activations + p.kv_cache + p.head_activations + p.logits + p.bf16_operands + p.attention_split;
    return p;
}

MemoryPlanInput memory_plan_training(DType weights, int n_heads, int n_layers, int head_vocab, int batch_tokens,
                                     int logits_chunk, int train, int evaluate, TargetKind targets) {
    int base_logits = evaluate || targets == TARGETS_BASE_ARGMAX;
    return (MemoryPlanInput){
        .weight_bytes = weights == DT_BF16 ? 2 : 4,
        .act_bytes = weights == DT_BF16 ? 2 : 4, /* model_act_bytes */
        .head_copy_bytes = weights == DT_BF16 ? 2 : 0,
        .n_heads = n_heads,
        .n_layers = n_layers,
        .batch_tokens = batch_tokens,
        .logits_chunk = logits_chunk,
        .train = train,
        .head_vocab = head_vocab,
        .vocab_rows = base_logits ? (logits_chunk < batch_tokens ? logits_chunk : batch_tokens) : 0,
        .teacher = targets == TARGETS_BASE_KL,
    };
}

MemoryPlanInput memory_plan_decoding(DType weights, int n_heads, int n_layers, int head_vocab, int max_len,
                                     int tree_nodes) {
    return (MemoryPlanInput){
        .weight_bytes = weights == DT_BF16 ? 2 : 4,
        .act_bytes = weights == DT_BF16 ? 2 : 4,       /* model_act_bytes: the KV cache too */
        .head_copy_bytes = weights == DT_BF16 ? 2 : 0, /* bf16 heads' GEMMs over a bf16 base (medusa_use_bf16) */
        .n_heads = n_heads,
        .n_layers = n_layers,
        .batch_tokens = max_len,
        .logits_chunk = tree_nodes,
        .head_vocab = head_vocab,
        .head_tokens = tree_nodes,
        .vocab_rows = tree_nodes * (1 + n_heads),
        .kv_len = max_len + tree_nodes,
    };
}

MemoryPlanInput memory_plan_generation(DType weights, int n_slots, int slot_len, int pass_tokens) {
    return (MemoryPlanInput){
        .weight_bytes = weights == DT_BF16 ? 2 : 4,
        .act_bytes = weights == DT_BF16 ? 2 : 4, /* model_act_bytes: the KV cache too */
        .batch_tokens = pass_tokens,
        .vocab_rows = n_slots,
        .kv_len = n_slots * slot_len + pass_tokens,
    };
}

MemoryPlanInput memory_plan_stage_input(const ModelConfig *c, const MemoryPlanInput *whole, ModelPart part) {
    MemoryPlanInput in = *whole;
    in.part = part;
    if (part.layer_end != 0 && part.layer_end != c->n_layers) /* the heads and the base's logits are the last's */
        in.n_heads = 0, in.vocab_rows = 0, in.teacher = 0;
    return in;
}

void memory_plan_stages(const ModelConfig *c, const MemoryPlanInput *whole, int stages, ModelPart *part,
                        MemoryPlan *plan) {
    if (stages < 1 || stages > c->n_layers)
        fatal("%d pipeline stages for a model of %d layers: expected 1..%d", stages, c->n_layers, c->n_layers);
    /* every layer costs the same: each goes to the stage whose plan would stay the smallest with it (a stage's layer
     * count is all that matters, the stages then take them in order) */
    int *count = xcalloc((size_t)stages, sizeof(int));
    for (int s = 0; s < stages; s++) count[s] = 1;
    for (int l = stages; l < c->n_layers; l++) {
        int best = 0;
        double best_total = 0;
        for (int s = 0; s < stages; s++) {
            /* the stage with one more layer, placed where its kind is (first, last, or in between) */
            ModelPart grown = s == stages - 1 ? (ModelPart){c->n_layers - count[s] - 1, c->n_layers}
                              : s == 0        ? (ModelPart){0, count[s] + 1}
                                              : (ModelPart){1, count[s] + 2};
            MemoryPlanInput in = memory_plan_stage_input(c, whole, grown);
            double total = memory_plan(c, &in).total;
            if (s == 0 || total < best_total) best = s, best_total = total;
        }
        count[best]++;
    }
    for (int s = 0, begin = 0; s < stages; begin += count[s++]) {
        part[s] = (ModelPart){begin, begin + count[s]};
        if (plan) {
            MemoryPlanInput in = memory_plan_stage_input(c, whole, part[s]);
            plan[s] = memory_plan(c, &in);
        }
    }
    free(count);
}

size_t memory_plan_reserve_bytes(const MemoryPlan *p) { return (size_t)(p->total * 1.05) + ((size_t)64 << 20); }

/* GiB for real models, MiB for small ones (a tiny test model would print only zeros) */
static void line(FILE *out, const char *what, double bytes, double unit) {
    fprintf(out, "  %-34s %9.2f %s\n", what, bytes / unit, unit >= 1 << 30 ? "GiB" : "MiB");
}

void memory_plan_print(const MemoryPlan *p, FILE *out, double budget_bytes, const char *budget_label) {
    double unit = p->total >= 1 << 30 ? 1 << 30 : 1 << 20;
    fprintf(out, "memory plan:\n");
    line(out, "base model weights (frozen)", p->base_weights, unit);
    if (p->teacher_weights > 0) line(out, "base lm_head rows of the heads' map", p->teacher_weights, unit);
    line(out, "head parameters (fp32)", p->head_params, unit);
    if (p->head_copy > 0) line(out, "head weights, GEMM copy", p->head_copy, unit);
    if (p->head_grads > 0) line(out, "head gradients (fp32)", p->head_grads, unit);
    if (p->adam_state > 0) line(out, "AdamW moments (fp32)", p->adam_state, unit);
    line(out, "base activations (one layer live)", p->base_activations, unit);
    if (p->kv_cache > 0) line(out, "KV cache", p->kv_cache, unit);
    if (p->attention_split > 0) line(out, "attention key slices (decoding)", p->attention_split, unit);
    line(out, "head activations", p->head_activations, unit);
    line(out, "logits", p->logits, unit);
    if (p->bf16_operands > 0) line(out, "bf16 GEMM operands + workspace", p->bf16_operands, unit);
    line(out, "total", p->total, unit);
    if (budget_bytes > 0)
        fprintf(out, "  %-34s %9.2f GiB (%s)\n", budget_label ? budget_label : "available",
                budget_bytes / (1024.0 * 1024 * 1024), p->total <= budget_bytes ? "fits" : "DOES NOT FIT");
}

void memory_plan_reserve(const MemoryPlan *p, const Backend *be, int print) {
    if (print) {
        char where[128]; /* "available on NVIDIA H200" */
        snprintf(where, sizeof where, "available on %s", be->device);
        memory_plan_print(p, stderr, (double)be->memory_available(), where);
    }
    be->reserve(memory_plan_reserve_bytes(p));
}
