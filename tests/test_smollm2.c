/* The real demo model, SmolLM2-135M-Instruct (Q4_1 GGUF): our logits against transformers loading the same
 * GGUF (fixture from tests/gen/gen_models.py) — top-1 agreement over a packed batch — and 32 greedy tokens
 * decoded with the KV cache, identical to transformers' generate(). */
#include <stdlib.h>

#include "../infer/decoder.h"
#include "test.h"

static const char *model_path(void) {
    const char *env = getenv("MEDUSA_SMOLLM2_GGUF");
    return env ? env : "cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

/* n_greedy greedy tokens after the prompt, decoded with the KV cache, against transformers' generate() */
static void check_greedy(const Model *m, const char *label, const int32_t *prompt, int n_prompt, const int32_t *greedy,
                         int n_greedy) {
    Decoder d;
    decoder_init(&d, m, NULL, NULL, 512);
    DecodeOptions o;
    decode_options_defaults(&o);
    int32_t out[64];
    DecodeStats st;
    int n = decode_plain(&d, prompt, n_prompt, n_greedy, -1, &o, out, NULL, NULL, &st), first_diff = -1;
    for (int i = 0; i < n && i < n_greedy && first_diff < 0; i++)
        if (out[i] != greedy[i]) first_diff = i;
    CHECK(n == n_greedy && first_diff < 0,
          "%s: %d greedy tokens identical to transformers generate() (first difference at %d)", label, n_greedy,
          first_diff);
    printf("  %s: greedy decoding %.1f tokens/s (CPU, KV cache)\n", label, st.new_tokens / st.seconds);
    decoder_free(&d);
}

int main(void) {
    const char *path = model_path();
    if (!file_exists(path)) {
        /* make test fetches it first; running this binary alone without the model is a setup error */
        CHECK(0, "SmolLM2 GGUF present at %s (run data/fetch_demo.sh)", path);
        return test_summary();
    }
    WeightSet ref;
    weights_open_safetensors_file(&ref, "tests/fixtures/models/smollm2_ref.safetensors");
    int64_t T, n_seqs, n_top1, n_prompt, n_greedy;
    int32_t *tokens = weights_load_i32(&ref, "tokens", &T);
    int32_t *seq_lens = weights_load_i32(&ref, "seq_lens", &n_seqs);
    int32_t *top1 = weights_load_i32(&ref, "top1", &n_top1);
    int32_t *prompt = weights_load_i32(&ref, "prompt_ids", &n_prompt);
    int32_t *greedy = weights_load_i32(&ref, "greedy_ids", &n_greedy);
    int64_t shape[1] = {T};
    float *top1_logit = weights_load_f32(&ref, "top1_logit", 1, shape, 1);
    float *top2_logit = weights_load_f32(&ref, "top2_logit", 1, shape, 1);
    ensure(tokens && seq_lens && top1 && prompt && greedy && n_top1 == T);

    Model m;
    model_load(&m, path, backend_cpu(), DT_F32);
    int V = m.config.vocab_size, H = m.config.hidden_size;
    ForwardState s;
    forward_state_init(&s, &m, (int)T);
    float *hidden = xmalloc(sizeof(float) * (size_t)T * H), *logits = xmalloc(sizeof(float) * (size_t)T * V);
    PackedBatch b = {.n_tokens = (int)T, .tokens = tokens, .n_seqs = (int)n_seqs, .seq_lens = seq_lens};
    model_forward(&m, &s, &b, hidden, logits);
    int agree = 0, near_ties = 0;
    double max_logit_err = 0;
    for (int t = 0; t < T; t++) {
        const float *row = logits + (size_t)t * V;
        int best = row_argmax(row, V);
        agree += best == top1[t];
        near_ties += top1_logit[t] - top2_logit[t] < 1e-3f;
        double e = fabs(row[top1[t]] - top1_logit[t]);
        if (e > max_logit_err) max_logit_err = e;
    }
    double rate = (double)agree / (double)T;
    printf("  SmolLM2: top-1 agreement %d/%lld = %.2f%% (%d near-ties), max |logit - reference| at the reference "
           "top-1: %.3g\n",
           agree, (long long)T, 100 * rate, near_ties, max_logit_err);
    CHECK(T >= 256 && rate >= 0.99, "SmolLM2: top-1 agreement with transformers %.2f%% over %lld positions (>= 99%%)",
          100 * rate, (long long)T);
    CHECK(max_logit_err < 1e-2, "SmolLM2: reference top-1 logit within 1e-2 (max err %.3g)", max_logit_err);
    forward_state_free(&s, &m);

    /* bf16 weights (the GPU default) against the same fp32 reference: close, not equal */
    Model mb;
    model_load(&mb, path, backend_cpu(), DT_BF16);
    ForwardState sb;
    forward_state_init(&sb, &mb, (int)T);
    float *logits_bf16 = xmalloc(sizeof(float) * (size_t)T * V);
    model_forward(&mb, &sb, &b, hidden, logits_bf16);
    int agree_bf16 = 0;
    double bf16_err = 0;
    for (int t = 0; t < T; t++) {
        const float *row = logits_bf16 + (size_t)t * V;
        int best = row_argmax(row, V);
        agree_bf16 += best == top1[t];
        double e = fabs(row[top1[t]] - top1_logit[t]);
        if (e > bf16_err) bf16_err = e;
    }
    double rate_bf16 = (double)agree_bf16 / (double)T;
    CHECK(rate_bf16 >= 0.95 && bf16_err > 0 && bf16_err < 1.0,
          "SmolLM2 with bf16 weights: top-1 agreement %.2f%% (>= 95%%), reference top-1 logit err %.3g (0 < err < 1)",
          100 * rate_bf16, bf16_err);
    forward_state_free(&sb, &mb);
    model_free(&mb);
    free(logits_bf16);

    /* native storage (the GGUF's Q4_1 and Q8_0 blocks through matmul_q, the CPU's default for a GGUF): the fp32
     * model's logits up to the order of the sums, and the same greedy tokens */
    Model mn;
    model_load_native(&mn, path, backend_cpu());
    ForwardState sn;
    forward_state_init(&sn, &mn, (int)T);
    float *logits_native = xmalloc(sizeof(float) * (size_t)T * V);
    model_forward(&mn, &sn, &b, hidden, logits_native);
    double native_abs, native_rel;
    max_errors(logits_native, logits, (size_t)T * V, &native_abs, &native_rel);
    int native_same_top1 = 0;
    for (int t = 0; t < T; t++)
        native_same_top1 += row_argmax(logits_native + (size_t)t * V, V) == row_argmax(logits + (size_t)t * V, V);
    CHECK(native_rel <= 1e-5 && native_same_top1 == T,
          "SmolLM2 native Q4_1: logits vs the dequantised fp32 model max abs %.3g, rel %.3g (tol 1e-5); top-1 the same "
          "at %d/%lld positions",
          native_abs, native_rel, native_same_top1, (long long)T);
    /* and against transformers' reading of the same GGUF, as the fp32 path above */
    int native_agree = 0;
    double native_ref_err = 0;
    for (int t = 0; t < T; t++) {
        const float *row = logits_native + (size_t)t * V;
        native_agree += row_argmax(row, V) == top1[t];
        native_ref_err = fmax(native_ref_err, fabs(row[top1[t]] - top1_logit[t]));
    }
    CHECK(native_agree >= 0.99 * T && native_ref_err < 1e-2,
          "SmolLM2 native Q4_1: top-1 agreement with transformers %d/%lld (>= 99%%), reference top-1 logit within 1e-2 "
          "(max err %.3g)",
          native_agree, (long long)T, native_ref_err);
    forward_state_free(&sn, &mn);
    free(logits_native);

    check_greedy(&mn, "SmolLM2 native Q4_1", prompt, (int)n_prompt, greedy, (int)n_greedy);
    model_free(&mn);
    check_greedy(&m, "SmolLM2", prompt, (int)n_prompt, greedy, (int)n_greedy);
    model_free(&m);
    weights_close(&ref);
    free(hidden);
    free(logits);
    free(tokens);
    free(seq_lens);
    free(top1);
    free(prompt);
    free(greedy);
    free(top1_logit);
    free(top2_logit);
    return test_summary();
}
