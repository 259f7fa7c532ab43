/* Decoding: acceptance rules against the reference evaluate_posterior (fixture from
 * tests/gen/gen_acceptance.py), and losslessness: greedy Medusa decoding must reproduce plain greedy
 * decoding token for token (tiny test models, 24 prompts, several trees, heads that never, sometimes and
 * always agree with the base model), as must typical acceptance at a vanishing temperature. */
#include <cJSON.h>
#include <stdlib.h>

#include "../infer/acceptance.h"
#include "../infer/decoder.h"
#include "../train/optim.h"
#include "test.h"

static void check_acceptance(void) {
    char *text = read_whole_file("tests/fixtures/acceptance.json", NULL);
    ensure(text);
    cJSON *root = cJSON_Parse(text);
    free(text);
    int V = cJSON_GetObjectItem(root, "V")->valueint, P = cJSON_GetObjectItem(root, "paths")->valueint;
    int D = cJSON_GetObjectItem(root, "depth")->valueint;
    float eps = (float)cJSON_GetObjectItem(root, "epsilon")->valuedouble,
          alpha = (float)cJSON_GetObjectItem(root, "alpha")->valuedouble;
    float *logits = xmalloc(sizeof(float) * (size_t)P * D * V), *probs = xmalloc(sizeof(float) * (size_t)V);
    int32_t *cand = xmalloc(sizeof(int32_t) * (size_t)P * D), *amax = xmalloc(sizeof(int32_t) * (size_t)P * D);
    float *cand_prob = xmalloc(sizeof(float) * (size_t)P * D), *thr = xmalloc(sizeof(float) * (size_t)P * D);
    uint8_t *valid = xmalloc((size_t)P * D);
    memset(valid, 1, (size_t)P * D);
    int n_greedy = 0, ok_greedy = 0, n_typical = 0, ok_typical = 0;
    for (cJSON *c = cJSON_GetObjectItem(root, "cases")->child; c; c = c->next) {
        float temperature = (float)cJSON_GetObjectItem(c, "temperature")->valuedouble;
        int i = 0;
        for (cJSON *x = cJSON_GetObjectItem(c, "logits")->child; x; x = x->next) logits[i++] = (float)x->valuedouble;
        i = 0;
        for (cJSON *row = cJSON_GetObjectItem(c, "candidates")->child; row; row = row->next)
            for (cJSON *x = row->child; x; x = x->next) cand[i++] = x->valueint;
        int want_best = cJSON_GetObjectItem(c, "best")->valueint,
            want_len = cJSON_GetObjectItem(c, "accept_length")->valueint;
        int best, len;
        if (temperature == 0) {
            for (int r = 0; r < P * D; r++) {
                const float *row = logits + (size_t)r * V;
                int b = 0;
                for (int v = 1; v < V; v++)
                    if (row[v] > row[b]) b = v;
                amax[r] = b;
            }
            len = accept_greedy(cand, valid, amax, P, D, &best);
            n_greedy++;
            ok_greedy += len == want_len && best == want_best;
        } else {
            for (int p = 0; p < P; p++)
                for (int j = 0; j + 1 < D; j++) {
                    thr[p * D + j] =
                        typical_threshold(logits + (size_t)(p * D + j) * V, V, temperature, eps, alpha, probs);
                    cand_prob[p * D + j] = probs[cand[p * D + j + 1]];
                }
            len = accept_typical(cand_prob, thr, valid, P, D, &best);
            n_typical++;
            ok_typical += len == want_len && best == want_best;
        }
    }
    CHECK(n_greedy > 0 && ok_greedy == n_greedy, "greedy acceptance: %d/%d cases match the reference (path and length)",
          ok_greedy, n_greedy);
    CHECK(n_typical > 0 && ok_typical == n_typical,
          "typical acceptance: %d/%d cases match the reference (path and length)", ok_typical, n_typical);
    cJSON_Delete(root);
    free(logits);
    free(probs);
    free(cand);
    free(amax);
    free(cand_prob);
    free(thr);
    free(valid);
}

/* Heads for the lossless checks: copies of the base lm_head (the reference initialisation), random heads
 * with peaked outputs (confident and mostly wrong: acceptance only by chance), heads trained on the
 * model's own greedy continuations of the test prompts (they agree with the base, so long paths are
 * accepted and the KV-cache compaction after multi-token steps is exercised), and those heads with noise
 * (paths accepted part of the way, often not the first path). */
typedef enum { HEADS_FROM_BASE, HEADS_PEAKED, HEADS_AGREEING, HEADS_NOISY } HeadKind;
static const char *const head_kind_names[] = {"from-base", "random-peaked", "trained-to-agree", "noisy-agreeing"};

#define N_PROMPTS 24
#define MAX_NEW 40

typedef struct {
    int32_t tokens[N_PROMPTS][16];
    int n[N_PROMPTS];
} Prompts;

static void make_prompts(Prompts *p, int vocab, uint64_t seed) {
    Rng rng;
    rng_seed(&rng, seed);
    for (int i = 0; i < N_PROMPTS; i++) {
        p->n[i] = 3 + (int)rng_below(&rng, 10);
        for (int j = 0; j < p->n[i]; j++) p->tokens[i][j] = (int32_t)rng_below(&rng, (uint64_t)vocab);
    }
}

static void fill_uniform(float *x, size_t n, float scale, Rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = scale * (2.0f * rng_uniform(rng) - 1.0f);
}

/* Trains the heads (AdamW on the Medusa loss) on each prompt followed by its plain greedy continuation. */
static void train_to_agree(MedusaHeads *heads, const Model *m, const Prompts *p, Rng *rng) {
    int T = 0, H = m->config.hidden_size;
    int32_t tokens[N_PROMPTS * (16 + MAX_NEW)], seq_lens[N_PROMPTS];
    Decoder d;
    decoder_init(&d, m, NULL, NULL, 128);
    DecodeOptions o;
    decode_options_defaults(&o);
    for (int i = 0; i < N_PROMPTS; i++) {
        memcpy(tokens + T, p->tokens[i], sizeof(int32_t) * (size_t)p->n[i]);
        DecodeStats st;
        int n = decode_plain(&d, p->tokens[i], p->n[i], MAX_NEW, -1, &o, tokens + T + p->n[i], NULL, NULL, &st);
        seq_lens[i] = p->n[i] + n;
        T += seq_lens[i];
    }
    decoder_free(&d);
    uint8_t *mask = xmalloc((size_t)T);
    memset(mask, 1, (size_t)T);
    float *hidden = xmalloc(sizeof(float) * (size_t)T * H);
    ForwardState s;
    forward_state_init(&s, m, T);
    PackedBatch b = {T, tokens, N_PROMPTS, seq_lens};
    model_forward(m, &s, &b, hidden, NULL);
    forward_state_free(&s, m);
    medusa_init_from_base(heads, m, rng);
    medusa_enable_grads(heads);
    MedusaWork w;
    medusa_work_init(&w, heads, T, T);
    OptimConfig oc;
    optim_defaults(&oc);
    oc.lr = 3e-2;
    oc.warmup_ratio = 0;
    oc.max_grad_norm = 0;
    oc.total_steps = 1 << 20; /* a nearly constant learning rate */
    AdamState adam;
    adam_init(&adam, heads);
    MedusaBatchStats st;
    for (int step = 0; step < 60; step++) {
        medusa_forward_backward(heads, &w, hidden, tokens, mask, seq_lens, N_PROMPTS, T, NULL, 1.0f, 1.0f, &st);
        optim_step(heads, &adam, &oc);
    }
    adam_free(&adam, heads);
    printf("  trained-to-agree heads: final loss %.3f, head 0 top-1 %.2f on the greedy continuations\n", st.total_loss,
           (double)st.hits[0][0] / (double)st.valid[0]);
    medusa_work_free(&w, heads);
    free(hidden);
    free(mask);
}

/* The heads of a kind; agreeing heads are trained once per tree and copied (trained: NULL the first time). */
static void make_heads(MedusaHeads *heads, const Model *m, int n_heads, HeadKind kind, const Prompts *p,
                       const MedusaHeads *trained) {
    MedusaShape shape = {n_heads, 1, m->config.hidden_size, m->config.vocab_size, 0};
    medusa_init(heads, m->be, shape);
    Rng rng;
    rng_seed(&rng, 5);
    if (kind == HEADS_FROM_BASE) medusa_init_from_base(heads, m, &rng);
    if (kind == HEADS_PEAKED) fill_uniform(heads->params, heads->n_params, 1.0f, &rng); /* logits spread ~5 */
    if (kind == HEADS_AGREEING || kind == HEADS_NOISY) {
        if (trained) heads->be->copy(heads->params, trained->params, sizeof(float) * heads->n_params);
        else train_to_agree(heads, m, p, &rng);
    }
    if (kind == HEADS_NOISY) {
        float *noise = xmalloc(sizeof(float) * heads->n_params);
        fill_uniform(noise, heads->n_params, 0.4f, &rng);
        heads->be->residual_add(heads->params, noise, heads->n_params);
        free(noise);
    }
}

/* Greedy Medusa decoding == plain greedy decoding on every prompt; returns the tokens per step. Also
 * checks that typical acceptance at a vanishing temperature (only the argmax is typical) is greedy too. */
static double check_lossless(const Model *m, const char *model_path, const MedusaTree *tree, const char *tree_name,
                             HeadKind kind, MedusaHeads *trained) {
    Prompts p;
    make_prompts(&p, m->config.vocab_size, 11);
    MedusaHeads heads;
    make_heads(&heads, m, tree->n_heads_used, kind, &p, trained->params ? trained : NULL);
    Decoder plain, medusa;
    decoder_init(&plain, m, NULL, NULL, 128);
    decoder_init(&medusa, m, &heads, tree, 128);
    DecodeOptions o, cold;
    decode_options_defaults(&o);
    cold = o;
    cold.temperature = 1e-6f;
    int same = 0, same_cold = 0, steps = 0, tokens = 0;
    for (int i = 0; i < N_PROMPTS; i++) {
        int32_t a[MAX_NEW + 16], b[MAX_NEW + 16], c[MAX_NEW + 16];
        DecodeStats sa, sb, sc;
        int na = decode_plain(&plain, p.tokens[i], p.n[i], MAX_NEW, -1, &o, a, NULL, NULL, &sa);
        int nb = decode_medusa(&medusa, p.tokens[i], p.n[i], MAX_NEW, -1, &o, b, NULL, NULL, &sb);
        int nc = decode_medusa(&medusa, p.tokens[i], p.n[i], MAX_NEW, -1, &cold, c, NULL, NULL, &sc);
        same += na == nb && memcmp(a, b, sizeof(int32_t) * (size_t)na) == 0;
        same_cold += na == nc && memcmp(a, c, sizeof(int32_t) * (size_t)na) == 0;
        steps += sb.steps; /* each verification step emits the accepted tokens and the base model's next */
        tokens += nb;
    }
    double per_step = (double)tokens / steps;
    CHECK(same == N_PROMPTS,
          "%s, tree %s, %s heads: greedy Medusa == plain greedy on %d/%d prompts (%.2f tokens per step)", model_path,
          tree_name, head_kind_names[kind], same, N_PROMPTS, per_step);
    CHECK(same_cold == N_PROMPTS,
          "%s, tree %s, %s heads: typical acceptance at temperature 1e-6 == plain greedy on %d/%d prompts", model_path,
          tree_name, head_kind_names[kind], same_cold, N_PROMPTS);
    decoder_free(&plain);
    decoder_free(&medusa);
    if (kind == HEADS_AGREEING) *trained = heads;
    else medusa_free(&heads);
    return per_step;
}

static void check_model(const char *model_path, const char *tree_name) {
    Model m;
    model_load(&m, model_path, backend_cpu(), DT_F32);
    char tree_path[128];
    snprintf(tree_path, sizeof tree_path, "configs/trees/%s.json", tree_name);
    MedusaTree tree;
    tree_load(&tree, tree_path);
    MedusaHeads trained = {0};
    check_lossless(&m, model_path, &tree, tree_name, HEADS_FROM_BASE, &trained);
    double peaked = check_lossless(&m, model_path, &tree, tree_name, HEADS_PEAKED, &trained);
    double agreeing = check_lossless(&m, model_path, &tree, tree_name, HEADS_AGREEING, &trained);
    double noisy = check_lossless(&m, model_path, &tree, tree_name, HEADS_NOISY, &trained);
    /* acceptance must actually happen, or the checks above would hold for a decoder that never accepts */
    CHECK(agreeing > 3.0 && noisy > 1.2 && noisy < agreeing,
          "%s, tree %s: tokens per step %.2f with random-peaked heads, %.2f with agreeing heads (> 3), %.2f with noisy "
          "ones (between)",
          model_path, tree_name, peaked, agreeing, noisy);
    medusa_free(&trained);
    tree_free(&tree);
    model_free(&m);
}

/* medusa-infer --bench's verdict where greedy Medusa and plain greedy outputs part: a near-tie of the base model's
 * logits (rounding) or a decoding error. The parting outputs are made from a real plain decoding by putting the
 * runner-up or the least likely token at one position. */
static void check_greedy_compare(const char *model_path) {
    float row[5] = {1.0f, 5.0f, 4.95f, -2.0f, NAN};
    GreedyComparison c;
    CHECK(greedy_near_tie(row, 4, 1, 2, 2e-2f, &c) == GREEDY_NEAR_TIE &&
              greedy_near_tie(row, 4, 1, 2, 5e-3f, &c) == GREEDY_DIFFER &&
              greedy_near_tie(row, 4, 1, 3, 2e-2f, &c) == GREEDY_DIFFER && c.logit_b == -2.0f && c.largest == 5.0f &&
              greedy_near_tie(row, 5, 1, 4, 1.0f, &c) == GREEDY_DIFFER,
          "greedy_near_tie: logits 5 vs 4.95 a near-tie within 2%% of the largest, not within 0.5%%; 5 vs -2 and 5 vs "
          "NaN differ");

    Model m;
    model_load(&m, model_path, backend_cpu(), DT_F32);
    int V = m.config.vocab_size;
    Prompts p;
    make_prompts(&p, V, 5);
    Decoder d;
    decoder_init(&d, &m, NULL, NULL, 128);
    DecodeOptions o;
    decode_options_defaults(&o);
    int32_t a[16], b[16], context[32];
    DecodeStats st;
    int n = decode_plain(&d, p.tokens[0], p.n[0], 16, -1, &o, a, NULL, NULL, &st);
    const int at = 5;
    memcpy(context, p.tokens[0], sizeof(int32_t) * (size_t)p.n[0]);
    memcpy(context + p.n[0], a, sizeof(int32_t) * at);
    const float *logits = decoder_logits_after(&d, context, p.n[0] + at);
    int runner_up = a[at] == 0 ? 1 : 0, least = 0;
    float largest = 0;
    for (int i = 0; i < V; i++) {
        if (i != a[at] && logits[i] > logits[runner_up]) runner_up = i;
        if (logits[i] < logits[least]) least = i;
        largest = fmaxf(largest, fabsf(logits[i]));
    }
    float gap = (logits[a[at]] - logits[runner_up]) / largest;
    CHECK(n == 16 && row_argmax(logits, V) == a[at],
          "%s: the logits after the prompt and %d decoded tokens (one prefill) have the decoded token %d as argmax",
          model_path, at, a[at]);

    GreedyComparison same = greedy_compare(&d, p.tokens[0], p.n[0], a, n, a, n, 2e-2f);
    memcpy(b, a, sizeof b);
    b[at] = runner_up;
    GreedyComparison tie = greedy_compare(&d, p.tokens[0], p.n[0], a, n, b, n, gap * 1.01f);
    GreedyComparison apart = greedy_compare(&d, p.tokens[0], p.n[0], a, n, b, n, gap * 0.99f);
    b[at] = least;
    GreedyComparison wrong = greedy_compare(&d, p.tokens[0], p.n[0], a, n, b, n, GREEDY_TIE_WINDOW_BF16);
    GreedyComparison shorter = greedy_compare(&d, p.tokens[0], p.n[0], a, n, a, at, 1.0f);
    CHECK(same.match == GREEDY_EQUAL && tie.match == GREEDY_NEAR_TIE && tie.at == at && tie.logit_a == logits[a[at]] &&
              apart.match == GREEDY_DIFFER && apart.at == at && wrong.match == GREEDY_DIFFER &&
              shorter.match == GREEDY_DIFFER && shorter.at == at,
          "greedy_compare on %s: equal outputs equal; token %d swapped for the runner-up (%.3g below, relative to the "
          "largest logit) a near-tie within %.3g, a decoding error within %.3g; for the least likely token a decoding "
          "error within the bf16 window; an output that stops early differs",
          model_path, at, (double)gap, (double)gap * 1.01, (double)gap * 0.99);
    decoder_free(&d);
    model_free(&m);
}

int main(void) {
    check_acceptance();
    check_greedy_compare("tests/fixtures/models/tiny_llama");
    check_model("tests/fixtures/models/tiny_llama", "small_8");
    check_model("tests/fixtures/models/tiny_llama", "mc_sim_7b_63");
    check_model("tests/fixtures/models/tiny_qwen2", "chain_4");
    return test_summary();
}
