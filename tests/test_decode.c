/* Decoding: acceptance rules against the reference evaluate_posterior (fixture from
 * tests/gen/gen_acceptance.py), and losslessness: greedy Medusa decoding must reproduce plain greedy
 * decoding token for token (tiny test model, heads initialised from the base, several trees). */
#include <cJSON.h>
#include <stdlib.h>

#include "../infer/acceptance.h"
#include "../infer/decoder.h"
#include "test.h"

static void check_acceptance(void) {
    char *text = read_whole_file("tests/fixtures/acceptance.json", NULL);
    ensure(text);
    cJSON *root = cJSON_Parse(text);
    free(text);
    int V = cJSON_GetObjectItem(root, "V")->valueint, P = cJSON_GetObjectItem(root, "paths")->valueint;
    int D = cJSON_GetObjectItem(root, "depth")->valueint;
    float eps = (float)cJSON_GetObjectItem(root, "epsilon")->valuedouble, alpha = (float)cJSON_GetObjectItem(root, "alpha")->valuedouble;
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
        int want_best = cJSON_GetObjectItem(c, "best")->valueint, want_len = cJSON_GetObjectItem(c, "accept_length")->valueint;
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
                    thr[p * D + j] = typical_threshold(logits + (size_t)(p * D + j) * V, V, temperature, eps, alpha, probs);
                    cand_prob[p * D + j] = probs[cand[p * D + j + 1]];
                }
            len = accept_typical(cand_prob, thr, valid, P, D, &best);
            n_typical++;
            ok_typical += len == want_len && best == want_best;
        }
    }
    CHECK(n_greedy > 0 && ok_greedy == n_greedy, "greedy acceptance: %d/%d cases match the reference (path and length)", ok_greedy, n_greedy);
    CHECK(n_typical > 0 && ok_typical == n_typical, "typical acceptance: %d/%d cases match the reference (path and length)", ok_typical, n_typical);
    cJSON_Delete(root);
    free(logits);
    free(probs);
    free(cand);
    free(amax);
    free(cand_prob);
    free(thr);
    free(valid);
}

static void check_lossless(const char *model_path, const char *tree_name) {
    Model m;
    model_load(&m, model_path, backend_cpu());
    char tree_path[128];
    snprintf(tree_path, sizeof tree_path, "configs/trees/%s.json", tree_name);
    MedusaTree tree;
    tree_load(&tree, tree_path);
    MedusaHeads heads;
    MedusaShape shape = {tree.n_heads_used, 1, m.config.hidden_size, m.config.vocab_size};
    medusa_init(&heads, m.be, shape);
    Rng rng;
    rng_seed(&rng, 5);
    medusa_init_from_base(&heads, &m, &rng);
    Decoder plain, medusa;
    decoder_init(&plain, &m, NULL, NULL, 256);
    decoder_init(&medusa, &m, &heads, &tree, 256);
    DecodeOptions o;
    decode_options_defaults(&o);
    int same = 0, prompts = 20, max_new = 40, steps = 0, tokens = 0;
    for (int p = 0; p < prompts; p++) {
        int32_t prompt[16], a[64], b[128];
        int n_prompt = 3 + (int)rng_below(&rng, 10);
        for (int i = 0; i < n_prompt; i++) prompt[i] = (int32_t)rng_below(&rng, (uint64_t)m.config.vocab_size);
        DecodeStats sa, sb;
        int na = decode_plain(&plain, prompt, n_prompt, max_new, -1, &o, a, NULL, NULL, &sa);
        int nb = decode_medusa(&medusa, prompt, n_prompt, max_new, -1, &o, b, NULL, NULL, &sb);
        int equal = na == nb && memcmp(a, b, sizeof(int32_t) * (size_t)na) == 0;
        same += equal;
        steps += sb.steps + 1;
        tokens += nb;
    }
    CHECK(same == prompts, "%s, tree %s: greedy Medusa == plain greedy on %d/%d prompts (%.2f tokens per step)", model_path,
          tree_name, same, prompts, (double)tokens / steps);
    decoder_free(&plain);
    decoder_free(&medusa);
    medusa_free(&heads);
    tree_free(&tree);
    model_free(&m);
}

int main(void) {
    check_acceptance();
    check_lossless("tests/fixtures/models/tiny_llama", "small_8");
    check_lossless("tests/fixtures/models/tiny_llama", "mc_sim_7b_63");
    check_lossless("tests/fixtures/models/tiny_qwen2", "chain_4");
    return test_summary();
}
