/* A real model's GGUF against transformers reading the same file (a fixture from tests/gen: gen_models.py for
 * SmolLM2, gen_gemma3.py for Gemma 3): top-1 agreement over a packed batch with the fp32 weights, bf16 weights and
 * native storage, and greedy tokens decoded with the KV cache identical to transformers' generate()
 * (tests/test_smollm2.c, tests/test_gemma3.c). */
#ifndef MEDUSA_TESTS_REAL_MODEL_H
#define MEDUSA_TESTS_REAL_MODEL_H

#include <stdlib.h>

#include "../infer/decoder.h"
#include "test.h"

typedef struct {
    WeightSet file;
    int64_t T, n_seqs, n_prompt, n_greedy;
    int32_t *tokens, *seq_lens, *top1, *prompt, *greedy;
    float *top1_logit, *top2_logit;
} RealModelRef;

static void real_model_ref_open(RealModelRef *r, const char *path) {
    weights_open_safetensors_file(&r->file, path);
    int64_t n_top1;
    r->tokens = weights_load_i32(&r->file, "tokens", &r->T);
    r->seq_lens = weights_load_i32(&r->file, "seq_lens", &r->n_seqs);
    r->top1 = weights_load_i32(&r->file, "top1", &n_top1);
    r->prompt = weights_load_i32(&r->file, "prompt_ids", &r->n_prompt);
    r->greedy = weights_load_i32(&r->file, "greedy_ids", &r->n_greedy);
    int64_t shape[1] = {r->T};
    r->top1_logit = weights_load_f32(&r->file, "top1_logit", 1, shape, 1);
    r->top2_logit = weights_load_f32(&r->file, "top2_logit", 1, shape, 1);
    ensure(r->tokens && r->seq_lens && r->top1 && r->prompt && r->greedy && n_top1 == r->T);
}

static void real_model_ref_close(RealModelRef *r) {
    weights_close(&r->file);
    void *arrays[] = {r->tokens, r->seq_lens, r->top1, r->prompt, r->greedy, r->top1_logit, r->top2_logit};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) free(arrays[i]);
}

/* The packed batch's logits [T, V] (malloc'd) from model m */
static float *real_model_logits(const Model *m, const RealModelRef *r) {
    int V = m->config.vocab_size, H = m->config.hidden_size;
    ForwardState s;
    forward_state_init(&s, m, (int)r->T);
    float *hidden = xmalloc(sizeof(float) * (size_t)r->T * H), *logits = xmalloc(sizeof(float) * (size_t)r->T * V);
    PackedBatch b = {.n_tokens = (int)r->T, .tokens = r->tokens, .n_seqs = (int)r->n_seqs, .seq_lens = r->seq_lens};
    model_forward(m, &s, &b, hidden, logits);
    forward_state_free(&s, m);
    free(hidden);
    return logits;
}

/* Top-1 agreement of logits [T, V] with transformers' (>= min_rate), and the largest error of the logit at the
 * reference's top-1 (< max_err; and > 0 when nonzero is set: rounded weights must not look exact). */
static void check_top1(const char *label, const RealModelRef *r, const float *logits, int V, double min_rate,
                       double max_err, int nonzero) {
    int agree = 0, near_ties = 0;
    double err = 0;
    for (int t = 0; t < r->T; t++) {
        const float *row = logits + (size_t)t * V;
        agree += row_argmax(row, V) == r->top1[t];
        near_ties += r->top1_logit[t] - r->top2_logit[t] < 1e-3f;
        err = fmax(err, fabs(row[r->top1[t]] - r->top1_logit[t]));
    }
    double rate = (double)agree / (double)r->T;
    CHECK(r->T >= 256 && rate >= min_rate && err < max_err && (!nonzero || err > 0),
          "%s: top-1 agreement with transformers %d/%lld = %.2f%% (>= %.0f%%; %d near-ties), logit at the reference's "
          "top-1 within %g (max err %.3g)",
          label, agree, (long long)r->T, 100 * rate, 100 * min_rate, near_ties, max_err, err);
}

/* n_greedy greedy tokens after the prompt, decoded with the KV cache, against transformers' generate() */
static void check_greedy(const Model *m, const char *label, const RealModelRef *r) {
    Decoder d;
    decoder_init(&d, m, NULL, NULL, 512);
    DecodeOptions o;
    decode_options_defaults(&o);
    int32_t out[64];
    DecodeStats st;
    int n_greedy = (int)r->n_greedy;
    ensure(n_greedy <= 64);
    int n = decode_plain(&d, r->prompt, (int)r->n_prompt, n_greedy, -1, &o, out, NULL, NULL, &st), first_diff = -1;
    for (int i = 0; i < n && i < n_greedy && first_diff < 0; i++)
        if (out[i] != r->greedy[i]) first_diff = i;
    CHECK(n == n_greedy && first_diff < 0,
          "%s: %d greedy tokens identical to transformers generate() (first difference at %d)", label, n_greedy,
          first_diff);
    printf("  %s: greedy decoding %.1f tokens/s (CPU, KV cache)\n", label, st.new_tokens / st.seconds);
    decoder_free(&d);
}

/* The whole check of a real model: fp32 weights (logits and greedy tokens), bf16 weights (close, not equal), native
 * storage (the fp32 model's logits up to the order of the sums; greedy tokens). */
static void check_real_model(const char *name, const char *path, const char *ref_path) {
    RealModelRef r;
    real_model_ref_open(&r, ref_path);
    char label[128];
    Model m;
    model_load(&m, path, backend_cpu(), DT_F32);
    int V = m.config.vocab_size;
    float *logits = real_model_logits(&m, &r);
    check_top1(name, &r, logits, V, 0.99, 1e-2, 0);

    Model mb; /* bf16 weights (the GPU default) against the same fp32 reference: close, not equal */
    model_load(&mb, path, backend_cpu(), DT_BF16);
    float *logits_bf16 = real_model_logits(&mb, &r);
    snprintf(label, sizeof label, "%s with bf16 weights", name);
    check_top1(label, &r, logits_bf16, V, 0.95, 1.0, 1);
    model_free(&mb);
    free(logits_bf16);

    /* native storage (the GGUF's blocks through matmul_q, the CPU's default for a GGUF) */
    Model mn;
    model_load_native(&mn, path, backend_cpu());
    float *logits_native = real_model_logits(&mn, &r);
    double native_abs, native_rel;
    max_errors(logits_native, logits, (size_t)r.T * V, &native_abs, &native_rel);
    int same_top1 = 0;
    for (int t = 0; t < r.T; t++)
        same_top1 += row_argmax(logits_native + (size_t)t * V, V) == row_argmax(logits + (size_t)t * V, V);
    CHECK(native_rel <= 1e-5 && same_top1 == r.T,
          "%s native: logits vs the dequantised fp32 model max abs %.3g, rel %.3g (tol 1e-5); top-1 the same at "
          "%d/%lld positions",
          name, native_abs, native_rel, same_top1, (long long)r.T);
    snprintf(label, sizeof label, "%s native", name);
    check_top1(label, &r, logits_native, V, 0.99, 1e-2, 0);
    free(logits_native);
    check_greedy(&mn, label, &r);
    model_free(&mn);

    check_greedy(&m, name, &r);
    model_free(&m);
    free(logits);
    real_model_ref_close(&r);
}

#endif
