/* Golden tests of the base model: our packed-batch hidden states and logits against transformers
 * (fixtures from tests/gen/gen_models.py), for safetensors (fp32, bf16 sharded, f16) and GGUF
 * (F32/F16/BF16/Q8_0/Q4_0/Q4_1) models, plus the KV-cache path against the packed path; and the CPU matmul's
 * few-row kernel (decoding, trees) against a product summed in double, and the vector exp of the CPU's attention
 * softmax against libm's exp in double. */
#include <stdlib.h>
#include <unistd.h>

#include "../common/rng.h"
#include "../kernels/cpu/simd.h"
#include "../kernels/math_common.h"
#include "../model/llama.h"
#include "test.h"

#define REL_TOL 1e-4

typedef struct {
    int32_t *tokens, *seq_lens;
    int64_t n_tokens, n_seqs;
    float *hidden, *logits;
} Reference;

static void load_reference(Reference *r, const char *path, int hidden_size, int vocab) {
    WeightSet w;
    weights_open_safetensors_file(&w, path);
    r->tokens = weights_load_i32(&w, "tokens", &r->n_tokens);
    r->seq_lens = weights_load_i32(&w, "seq_lens", &r->n_seqs);
    ensure(r->tokens && r->seq_lens);
    int64_t hs[2] = {r->n_tokens, hidden_size}, ls[2] = {r->n_tokens, vocab};
    r->hidden = weights_load_f32(&w, "hidden", 2, hs, 1);
    r->logits = weights_load_f32(&w, "logits", 2, ls, 1);
    weights_close(&w);
}

static void free_reference(Reference *r) {
    free(r->tokens);
    free(r->seq_lens);
    free(r->hidden);
    free(r->logits);
}

/* Loads `model_path` (with native storage: the file's formats, matmul_q), runs the reference batch packed, compares
 * hidden states and logits. */
static void check_model(const char *label, const char *model_path, const char *ref_path, int native) {
    if (!file_exists(ref_path)) {
        CHECK(0, "%s: fixture %s present", label, ref_path);
        return;
    }
    Model m;
    if (native) model_load_native(&m, model_path, backend_cpu());
    else model_load(&m, model_path, backend_cpu(), DT_F32);
    int H = m.config.hidden_size, V = m.config.vocab_size;
    Reference r;
    load_reference(&r, ref_path, H, V);
    int T = (int)r.n_tokens;
    ForwardState s;
    forward_state_init(&s, &m, T);
    float *hidden = xmalloc(sizeof(float) * (size_t)T * H), *logits = xmalloc(sizeof(float) * (size_t)T * V);
    PackedBatch b = {.n_tokens = T, .tokens = r.tokens, .n_seqs = (int)r.n_seqs, .seq_lens = r.seq_lens};
    model_forward(&m, &s, &b, hidden, logits);
    double abs_h, rel_h, abs_l, rel_l;
    max_errors(hidden, r.hidden, (size_t)T * H, &abs_h, &rel_h);
    max_errors(logits, r.logits, (size_t)T * V, &abs_l, &rel_l);
    CHECK(rel_h <= REL_TOL, "%s: hidden states max abs err %.3g, rel %.3g (tol %.0e)", label, abs_h, rel_h, REL_TOL);
    CHECK(rel_l <= REL_TOL, "%s: logits max abs err %.3g, rel %.3g (tol %.0e)", label, abs_l, rel_l, REL_TOL);

    /* The KV-cache path must reproduce the packed path: decode the last sequence token by token. */
    KVCache cache;
    int last_len = r.seq_lens[r.n_seqs - 1], start = T - last_len;
    kv_cache_init(&cache, &m, last_len);
    float *step_logits = xmalloc(sizeof(float) * (size_t)V), *step_hidden = xmalloc(sizeof(float) * (size_t)H);
    double worst = 0;
    int first = 3; /* a multi-token prefill, then single tokens */
    float *pre_h = xmalloc(sizeof(float) * (size_t)first * H), *pre_l = xmalloc(sizeof(float) * (size_t)first * V);
    model_forward_cached(&m, &s, &cache, r.tokens + start, first, pre_h, pre_l);
    for (int i = 0; i < first * V; i++) {
        double d = fabs(pre_l[i] - logits[(size_t)start * V + i]);
        if (d > worst) worst = d;
    }
    for (int t = first; t < last_len; t++) {
        model_forward_cached(&m, &s, &cache, r.tokens + start + t, 1, step_hidden, step_logits);
        for (int i = 0; i < V; i++) {
            double d = fabs(step_logits[i] - logits[(size_t)(start + t) * V + i]);
            if (d > worst) worst = d;
        }
    }
    CHECK(worst <= 1e-4, "%s: KV-cache decoding vs packed forward, max abs logit diff %.3g", label, worst);
    free(pre_h);
    free(pre_l);
    free(step_logits);
    free(step_hidden);
    kv_cache_free(&cache, &m);
    free(hidden);
    free(logits);
    forward_state_free(&s, &m);
    free_reference(&r);
    model_free(&m);
}

/* cpu matmul against a double-precision product with bias, for every row count the few-row kernel takes and past
 * it (sgemm), on shapes with an odd number of weight rows (a last unpaired row, and one split between threads) and
 * input widths that are not multiples of its 8-wide vectors */
static void test_matmul_rows(void) {
    const Backend *cpu = backend_cpu();
    const int shapes[][2] = {{7, 3}, {9, 5}, {37, 33}, {576, 300}, {1000, 1025}};
    Rng rng;
    rng_seed(&rng, 7);
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        int IC = shapes[k][0], OC = shapes[k][1], max_T = 30;
        float *x = xmalloc(sizeof(float) * (size_t)max_T * IC), *w = xmalloc(sizeof(float) * (size_t)IC * OC);
        float *bias = xmalloc(sizeof(float) * (size_t)OC), *y = xmalloc(sizeof(float) * (size_t)max_T * OC);
        for (int i = 0; i < max_T * IC; i++) x[i] = rng_uniform(&rng) - 0.5f;
        for (int i = 0; i < IC * OC; i++) w[i] = rng_uniform(&rng) - 0.5f;
        for (int i = 0; i < OC; i++) bias[i] = rng_uniform(&rng) - 0.5f;
        double worst = 0;
        for (int T = 1; T <= max_T; T++) {
            cpu->matmul(y, x, w, bias, T, IC, OC);
            for (int t = 0; t < T; t++)
                for (int o = 0; o < OC; o++) {
                    double want = bias[o];
                    for (int i = 0; i < IC; i++) want += (double)x[t * IC + i] * w[(size_t)o * IC + i];
                    double err = fabs(y[t * OC + o] - want) / (1.0 + fabs(want));
                    if (!(err <= worst)) worst = err;
                }
        }
        CHECK(worst < 1e-5, "cpu matmul %dx%d, 1..%d rows: max rel err %.2g vs a double-precision product (tol 1e-5)",
              IC, OC, max_T, worst);
        free(x), free(w), free(bias), free(y);
    }
}

/* vec8_silu's special inputs, against silu_f */
static const float silu_inputs[8] = {-INFINITY, INFINITY, -100.0f, 100.0f, 0.0f, -1.0f, 2.0f, NAN};

/* worst relative error of vec8_exp over [-87, 88.7] (the softmax's scores minus their max, and SwiGLU's exp(-gate)),
 * and its special values, in the build the CPU picks */
static double exp_worst(Vec8 special[2]) {
    double worst = 0;
    for (int i = 0; i <= 1 << 21; i++) {
        float x = -87.0f + (87.0f + 88.7f) * (float)i / (float)(1 << 21);
        double want = exp((double)x), got = vec8_exp(vec8_splat(x))[0];
        if (!(fabs(got - want) <= worst * want)) worst = fabs(got - want) / want;
    }
    special[0] = vec8_exp((Vec8){-INFINITY, NAN, 0.0f, -100.0f, -1e-30f, INFINITY, 88.73f, 1000.0f});
    special[1] = vec8_silu(vec8_load(silu_inputs));
    return worst;
}
SIMD_AVX2_FMA static double exp_worst_avx2(Vec8 special[2]) { return exp_worst(special); }
static void test_vec8_exp(void) {
    Vec8 s[2];
    double worst = simd_avx2_fma() ? exp_worst_avx2(s) : exp_worst(s);
    CHECK(worst < 2.4e-7, "vec8_exp on [-87, 88.7] (%s build): max rel err %.2g vs exp in double (tol 2.4e-7, 4 ulp)",
          simd_avx2_fma() ? "AVX2+FMA" : "baseline", worst);
    const Vec8 e = s[0], silu = s[1];
    CHECK(e[0] == 0.0f && isnan(e[1]) && e[2] == 1.0f && e[3] == 0.0f && e[4] == 1.0f && isinf(e[5]) && isinf(e[6]) &&
              isinf(e[7]),
          "vec8_exp: exp(-inf) = 0, NaN stays NaN, exp(0) = 1, 0 below FLT_MIN's log, exp(-1e-30) = 1, inf for inf and "
          "above FLT_MAX's log (got %g %g %g %g %g %g %g %g)",
          e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]);
    int same = 1;
    for (int i = 0; i < 8; i++) {
        float want = silu_f(silu_inputs[i]);
        same = same &&
               ((isnan(want) && isnan(silu[i])) || silu[i] == want || fabsf(silu[i] - want) <= 2.4e-7f * fabsf(want));
    }
    CHECK(same, "vec8_silu equals silu_f within 4 ulp at +-inf, +-100, 0, -1, 2 and NaN (got %g %g %g %g %g %g %g %g)",
          silu[0], silu[1], silu[2], silu[3], silu[4], silu[5], silu[6], silu[7]);
}

/* A config.json that asks for a computation this model code does not implement is refused, naming the field. */
static void check_config_refusals(void) {
    static const struct {
        const char *extra, *needle;
    } cases[] = {
        {"\"hidden_act\": \"gelu_pytorch_tanh\"", "hidden_act"},
        {"\"final_logit_softcapping\": 30.0", "final_logit_softcapping"},
        {"\"attention_logit_softcapping\": 50.0", "attention_logit_softcapping"},
        {"\"mlp_bias\": true", "mlp_bias"},
        {"\"partial_rotary_factor\": 0.5", "partial_rotary_factor"},
        {"\"use_sliding_window\": true", "use_sliding_window"},
        {"\"rope_scaling\": {\"rope_type\": \"ntk\", \"factor\": 4.0}", "ntk"},
        {"\"rope_scaling\": {\"rope_type\": \"yarn\"}", "factor"},
        {"\"rope_scaling\": {\"rope_type\": \"longrope\", \"short_factor\": [1.0], \"long_factor\": [1.0, 2.0]}",
         "short_factor"},
        {"\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}", "low_freq_factor"},
    };
    char path[] = "/tmp/medusa-config-XXXXXX";
    int fd = mkstemp(path);
    ensure(fd >= 0);
    close(fd);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        FILE *f = fopen(path, "w");
        ensure(f);
        fprintf(f,
                "{\"model_type\": \"llama\", \"hidden_size\": 8, \"intermediate_size\": 16, \"num_hidden_layers\": 1, "
                "\"num_attention_heads\": 2, \"vocab_size\": 4, %s}",
                cases[i].extra);
        fclose(f);
        ModelConfig c;
        EXPECT_FATAL(config_from_json(&c, path), cases[i].needle, "config.json with %s is refused", cases[i].extra);
    }
    unlink(path);
}

/* longrope within its original context only, dynamic within max_position: a later position is refused (transformers
 * would switch to other frequencies for the whole sequence, the cached keys keeping the old ones), and the context is
 * capped there */
static void check_rope_limit(const char *path, int limit, const char *type) {
    Model m;
    model_load(&m, path, backend_cpu(), DT_F32);
    int n = m.config.rope_max_position + 1, H = m.config.hidden_size;
    CHECK(m.config.rope_max_position == limit && m.config.max_position == limit,
          "%s: %s limits positions and the context to %d (got %d, %d)", path, type, limit, m.config.rope_max_position,
          m.config.max_position);
    ForwardState s;
    forward_state_init(&s, &m, n);
    int32_t *tokens = xcalloc((size_t)n, sizeof(int32_t));
    float *hidden = xmalloc(sizeof(float) * (size_t)n * H);
    PackedBatch b = {.n_tokens = n, .tokens = tokens, .n_seqs = 1, .seq_lens = &n};
    EXPECT_FATAL(model_forward(&m, &s, &b, hidden, NULL), type, "%s: a sequence of %d tokens is refused", path, n);
    free(tokens);
    free(hidden);
    forward_state_free(&s, &m);
    model_free(&m);
}

/* a GGUF mixing formats as llama.cpp's _M files do: q (Q8_0), k (F16) and v (Q4_1) of a layer, gate (Q4_0) and up
 * (Q8_0), o_proj BF16, down Q4_1 (tests/gen/gen_models.py's MIXED_TYPES) */
#define MIXED_GGUF "tiny_llama/gguf/tiny_llama.MIXED.gguf"

/* native storage keeps each stacked matrix's tensors in their own formats, as parts in order */
static void check_mixed_parts(void) {
    Model m;
    model_load_native(&m, "tests/fixtures/models/" MIXED_GGUF, backend_cpu());
    const LayerWeights *w = &m.layers[0];
    const ModelConfig *c = &m.config;
    int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    int ok = w->wqkv.n_parts == 3 && w->wqkv.part[0].type == DT_Q8_0 && w->wqkv.part[0].rows == q &&
             w->wqkv.part[1].type == DT_F16 && w->wqkv.part[1].rows == kv && w->wqkv.part[2].type == DT_Q4_1 &&
             w->wqkv.part[2].rows == kv && w->w_gate_up.n_parts == 2 && w->w_gate_up.part[0].type == DT_Q4_0 &&
             w->w_gate_up.part[1].type == DT_Q8_0 && w->wo.n_parts == 1 && w->wo.part[0].type == DT_BF16 &&
             m.embed.part[0].type == DT_Q8_0 && m.lm_head.part[0].type == DT_F16;
    CHECK(ok, "mixed GGUF native: q/k/v kept as 3 parts (Q8_0, F16, Q4_1), gate/up as 2 (Q4_0, Q8_0), o BF16, "
              "embedding Q8_0, lm_head F16");
    model_free(&m);
}

/* A base split in parts (pipeline stages): each part loads only its layers (the embedding on the first, the final norm
 * and lm_head on the last, a tied lm_head bringing the embedding), and running them in turn, the residual stream passed
 * on, gives the whole model's hidden states bit for bit (the same ops on the same values). */
static void check_model_parts(const char *path, int split) {
    Model whole, first, last;
    model_load(&whole, path, backend_cpu(), DT_F32);
    int L = whole.config.n_layers, H = whole.config.hidden_size, V = whole.config.vocab_size;
    model_load_part(&first, path, backend_cpu(), DT_F32, 0, (ModelPart){0, split});
    model_load_part(&last, path, backend_cpu(), DT_F32, 0, (ModelPart){split, L});
    int tied = whole.config.tie_word_embeddings;
    CHECK(first.embed.n_parts == 1 && !first.final_norm && first.lm_head.n_parts == 0 &&
              first.layers[split - 1].wqkv.n_parts == 1 && first.layers[split].wqkv.n_parts == 0 &&
              (last.embed.n_parts == 1) == tied && last.final_norm && last.lm_head.n_parts == 1 &&
              last.layers[split - 1].wqkv.n_parts == 0 && last.layers[L - 1].wqkv.n_parts == 1,
          "%s: layers 0-%d hold the embedding, %d-%d the final norm and lm_head%s", path, split - 1, split, L - 1,
          tied ? " (tied: the embedding)" : "");
    int32_t lens[2] = {5, 7}, tokens[12];
    for (int i = 0; i < 12; i++) tokens[i] = (i * 37 + 11) % V;
    PackedBatch b = {.n_tokens = 12, .tokens = tokens, .n_seqs = 2, .seq_lens = lens};
    ForwardState sw, s1, s2;
    forward_state_init(&sw, &whole, 12), forward_state_init(&s1, &first, 12), forward_state_init(&s2, &last, 12);
    float *hw = xmalloc(sizeof(float) * 12 * (size_t)H), *hp = xmalloc(sizeof(float) * 12 * (size_t)H);
    model_forward(&whole, &sw, &b, hw, NULL);
    model_forward(&first, &s1, &b, NULL, NULL);
    memcpy(s2.x, s1.x, sizeof(float) * 12 * (size_t)H);
    model_forward(&last, &s2, &b, hp, NULL);
    CHECK(memcmp(hw, hp, sizeof(float) * 12 * (size_t)H) == 0,
          "%s: layers 0-%d then %d-%d (the residual stream passed on) give the whole model's hidden states exactly",
          path, split - 1, split, L - 1);
    free(hw), free(hp);
    forward_state_free(&sw, &whole), forward_state_free(&s1, &first), forward_state_free(&s2, &last);
    model_free(&whole), model_free(&first), model_free(&last);
    EXPECT_FATAL(model_load_part(&first, path, backend_cpu(), DT_F32, 0, (ModelPart){L, L + 1}), "layers",
                 "%s: a part beyond the model's layers is refused", path);
}

int main(void) {
    test_matmul_rows();
    test_vec8_exp();
    check_config_refusals();
    check_model_parts("tests/fixtures/models/tiny_llama", 1);
    check_model_parts("tests/fixtures/models/tiny_tied/gguf/tiny_tied.F32.gguf", 1);
    check_model_parts("tests/fixtures/models/tiny_gemma3", 2);
    const char *dir = "tests/fixtures/models";
    struct {
        const char *label, *model, *ref;
        int native;
    } cases[] = {
        {"tiny_llama (GQA, untied)", "tiny_llama", "tiny_llama/ref.safetensors", 0},
        {"tiny_qwen2 (biases)", "tiny_qwen2", "tiny_qwen2/ref.safetensors", 0},
        {"tiny_tied (tied embeddings)", "tiny_tied", "tiny_tied/ref.safetensors", 0},
        {"tiny_mistral_sw (sliding window 4)", "tiny_mistral_sw", "tiny_mistral_sw/ref.safetensors", 0},
        {"tiny_qwen3 (q/k norm, head_dim 32, tied)", "tiny_qwen3", "tiny_qwen3/ref.safetensors", 0},
        {"tiny_phi3 (fused qkv and gate_up, sliding window 6)", "tiny_phi3", "tiny_phi3/ref.safetensors", 0},
        {"tiny_gemma3 (norms 1 + w around blocks, scaled embeddings, GeLU-tanh, windowed/global layers)", "tiny_gemma3",
         "tiny_gemma3/ref.safetensors", 0},
        {"tiny_gemma2 (soft-capped scores and logits, query_pre_attn_scalar 24, every other layer windowed)",
         "tiny_gemma2", "tiny_gemma2/ref.safetensors", 0},
        {"tiny_llama3_rope (rope scaling llama3)", "tiny_llama3_rope", "tiny_llama3_rope/ref.safetensors", 0},
        {"tiny_linear_rope (rope scaling linear, 4.x config)", "tiny_linear_rope", "tiny_linear_rope/ref.safetensors",
         0},
        {"tiny_yarn_rope (rope scaling yarn, transformers' defaults)", "tiny_yarn_rope",
         "tiny_yarn_rope/ref.safetensors", 0},
        {"tiny_yarn_qwen2 (yarn: beta 16/2 untruncated, mscale / mscale_all_dim, 4.x config)", "tiny_yarn_qwen2",
         "tiny_yarn_qwen2/ref.safetensors", 0},
        {"tiny_dynamic_rope (dynamic NTK within max_position: the default frequencies, 4.x \"type\")",
         "tiny_dynamic_rope", "tiny_dynamic_rope/ref.safetensors", 0},
        {"tiny_phi3_longrope (longrope's short factors, Phi-3's \"su\" config)", "tiny_phi3_longrope",
         "tiny_phi3_longrope/ref.safetensors", 0},
        {"tiny_phi3_longrope GGUF F32 (fused attn_qkv / ffn_up, rope_factors_short, sliding window)",
         "tiny_phi3_longrope/gguf/tiny_phi3_longrope.F32.gguf", "tiny_phi3_longrope/ref.safetensors", 0},
        {"tiny_llama bf16 sharded", "tiny_llama_bf16_sharded", "tiny_llama_bf16_sharded/ref.safetensors", 0},
        {"tiny_llama f16", "tiny_llama_f16", "tiny_llama_f16/ref.safetensors", 0},
        {"tiny_llama GGUF F32", "tiny_llama/gguf/tiny_llama.F32.gguf", "tiny_llama/gguf/ref_F32.safetensors", 0},
        {"tiny_llama GGUF F16", "tiny_llama/gguf/tiny_llama.F16.gguf", "tiny_llama/gguf/ref_F16.safetensors", 0},
        {"tiny_llama GGUF BF16", "tiny_llama/gguf/tiny_llama.BF16.gguf", "tiny_llama/gguf/ref_BF16.safetensors", 0},
        {"tiny_llama GGUF Q8_0", "tiny_llama/gguf/tiny_llama.Q8_0.gguf", "tiny_llama/gguf/ref_Q8_0.safetensors", 0},
        {"tiny_llama GGUF Q4_0", "tiny_llama/gguf/tiny_llama.Q4_0.gguf", "tiny_llama/gguf/ref_Q4_0.safetensors", 0},
        {"tiny_llama GGUF Q4_1", "tiny_llama/gguf/tiny_llama.Q4_1.gguf", "tiny_llama/gguf/ref_Q4_1.safetensors", 0},
        {"tiny_tied GGUF F32", "tiny_tied/gguf/tiny_tied.F32.gguf", "tiny_tied/gguf/ref_F32.safetensors", 0},
        {"tiny_hd64 GGUF F32 (head_dim 64, 2 heads / 1 kv head)", "tiny_hd64/gguf/tiny_hd64.F32.gguf",
         "tiny_hd64/gguf/ref_F32.safetensors", 0},
        /* native storage: the matrices as the file holds them, through matmul_q */
        {"tiny_llama GGUF F16 native", "tiny_llama/gguf/tiny_llama.F16.gguf", "tiny_llama/gguf/ref_F16.safetensors", 1},
        {"tiny_llama GGUF BF16 native", "tiny_llama/gguf/tiny_llama.BF16.gguf", "tiny_llama/gguf/ref_BF16.safetensors",
         1},
        {"tiny_llama GGUF Q8_0 native", "tiny_llama/gguf/tiny_llama.Q8_0.gguf", "tiny_llama/gguf/ref_Q8_0.safetensors",
         1},
        {"tiny_llama GGUF Q4_0 native", "tiny_llama/gguf/tiny_llama.Q4_0.gguf", "tiny_llama/gguf/ref_Q4_0.safetensors",
         1},
        {"tiny_llama GGUF Q4_1 native", "tiny_llama/gguf/tiny_llama.Q4_1.gguf", "tiny_llama/gguf/ref_Q4_1.safetensors",
         1},
        {"tiny_llama GGUF F32 native (fp32 kept as fp32)", "tiny_llama/gguf/tiny_llama.F32.gguf",
         "tiny_llama/gguf/ref_F32.safetensors", 1},
        {"tiny_llama f16 native (safetensors)", "tiny_llama_f16", "tiny_llama_f16/ref.safetensors", 1},
        {"tiny_qwen2 native (biases through matmul_q's bias)", "tiny_qwen2", "tiny_qwen2/ref.safetensors", 1},
        {"tiny_llama GGUF mixed formats", MIXED_GGUF, "tiny_llama/gguf/ref_MIXED.safetensors", 0},
        {"tiny_llama GGUF mixed formats native (stacked matrices in parts)", MIXED_GGUF,
         "tiny_llama/gguf/ref_MIXED.safetensors", 1},
    };
    check_mixed_parts();
    check_rope_limit("tests/fixtures/models/tiny_phi3_longrope", 32, "longrope");
    check_rope_limit("tests/fixtures/models/tiny_phi3_longrope/gguf/tiny_phi3_longrope.F32.gguf", 32, "longrope");
    check_rope_limit("tests/fixtures/models/tiny_dynamic_rope", 256, "dynamic");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *model = path_join(dir, cases[i].model), *ref = path_join(dir, cases[i].ref);
        check_model(cases[i].label, model, ref, cases[i].native);
        free(model);
        free(ref);
    }
    return test_summary();
}
