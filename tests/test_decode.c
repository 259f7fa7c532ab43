/* Decoding: acceptance rules against the reference evaluate_posterior, and whole tree steps against its
 * generate_candidates + evaluate_posterior on a tree with padded paths (fixture from tests/gen/gen_acceptance.py);
 * losslessness: greedy Medusa decoding must reproduce plain greedy decoding token for token (tiny test models, 24
 * prompts, several trees, heads that never, sometimes and always agree with the base model), as must typical
 * acceptance at a vanishing temperature; and at temperature 0.7 every step's first token is the base model's argmax. */
#include <cJSON.h>
#include <stdlib.h>

#include "../infer/acceptance.h"
#include "../infer/decoder.h"
#include "../train/optim.h"
#include "test.h"

/* The numbers of a JSON array, nested arrays flattened, into out; returns how many. */
static int json_floats(const cJSON *a, float *out) {
    int n = 0;
    for (const cJSON *x = a->child; x; x = x->next)
        if (cJSON_IsArray(x)) n += json_floats(x, out + n);
        else out[n++] = (float)x->valuedouble;
    return n;
}
static int json_ints(const cJSON *a, int32_t *out) {
    int n = 0;
    for (const cJSON *x = a->child; x; x = x->next)
        if (cJSON_IsArray(x)) n += json_ints(x, out + n);
        else out[n++] = x->valueint;
    return n;
}
static double json_number(const cJSON *o, const char *key) { return cJSON_GetObjectItem(o, key)->valuedouble; }

/* evaluate_posterior on candidate paths, each node's statistics from the backend ops the decoder uses (top_k,
 * softmax_entropy). */
static void check_path_acceptance(const cJSON *root, float eps, float alpha) {
    const Backend *be = backend_cpu();
    int V = (int)json_number(root, "V"), P = (int)json_number(root, "paths"), D = (int)json_number(root, "depth");
    float *logits = xmalloc(sizeof(float) * (size_t)P * D * V), *entropy = xmalloc(sizeof(float) * (size_t)P * D);
    int32_t *cand = xmalloc(sizeof(int32_t) * (size_t)P * D), *amax = xmalloc(sizeof(int32_t) * (size_t)P * D);
    int32_t *next = xmalloc(sizeof(int32_t) * (size_t)P * D);
    float *cand_prob = xmalloc(sizeof(float) * (size_t)P * D), *thr = xmalloc(sizeof(float) * (size_t)P * D);
    uint8_t *valid = xmalloc((size_t)P * D);
    memset(valid, 1, (size_t)P * D);
    int n_greedy = 0, ok_greedy = 0, n_typical = 0, ok_typical = 0;
    for (const cJSON *c = cJSON_GetObjectItem(root, "cases")->child; c; c = c->next) {
        float temperature = (float)json_number(c, "temperature");
        json_floats(cJSON_GetObjectItem(c, "logits"), logits);
        json_ints(cJSON_GetObjectItem(c, "candidates"), cand);
        int want_best = (int)json_number(c, "best"), want_len = (int)json_number(c, "accept_length");
        int best, len;
        if (temperature == 0) {
            be->top_k(amax, logits, P * D, V, 1);
            len = accept_greedy(cand, valid, amax, P, D, &best);
            n_greedy++;
            ok_greedy += len == want_len && best == want_best;
        } else {
            /* node j's row: the probability of the candidate at j+1 */
            for (int r = 0; r < P * D; r++) next[r] = r % D + 1 < D ? cand[r + 1] : -1;
            be->softmax_entropy(entropy, cand_prob, logits, next, P * D, V, 1, temperature);
            for (int r = 0; r < P * D; r++) thr[r] = typical_cut(entropy[r], eps, alpha);
            len = accept_typical(cand_prob, thr, valid, P, D, &best);
            n_typical++;
            ok_typical += len == want_len && best == want_best;
        }
    }
    CHECK(n_greedy > 0 && ok_greedy == n_greedy, "greedy acceptance: %d/%d cases match the reference (path and length)",
          ok_greedy, n_greedy);
    CHECK(n_typical > 0 && ok_typical == n_typical,
          "typical acceptance: %d/%d cases match the reference (path and length)", ok_typical, n_typical);
    free(logits);
    free(entropy);
    free(cand);
    free(amax);
    free(next);
    free(cand_prob);
    free(thr);
    free(valid);
}

/* Whole steps on a tree with paths of different lengths, against the reference's generate_candidates (fast mode: the
 * root is the base model's argmax at every temperature) and evaluate_posterior, through TreeStep as the decoder runs
 * it. Past a shorter path's leaf medusa-c accepts nothing, the reference reads token 0 against the wrong row: the
 * fixture's expected result is the reference's with those entries made unacceptable, and its own result where the
 * two differ is counted. */
static void check_step_acceptance(const cJSON *fixture, float eps, float alpha) {
    const Backend *be = backend_cpu();
    char *tree_json = cJSON_PrintUnformatted(cJSON_GetObjectItem(fixture, "tree"));
    MedusaTree t;
    tree_from_json(&t, tree_json, "acceptance.json");
    int V = (int)json_number(fixture, "V"), K = (int)json_number(fixture, "heads"), N = t.n_nodes;
    int PD = t.n_leaves * t.max_depth;
    TreeStep s;
    tree_step_init(&s, &t);
    float *base = xmalloc(sizeof(float) * (size_t)V), *heads = xmalloc(sizeof(float) * (size_t)K * V);
    float *tree_logits = xmalloc(sizeof(float) * (size_t)N * V), *entropy = xmalloc(sizeof(float) * (size_t)N);
    float *child_probs = xmalloc(sizeof(float) * (size_t)N * TREE_TOPK);
    int32_t *candidates = xmalloc(sizeof(int32_t) * (size_t)(1 + K * TREE_TOPK));
    int32_t *node_argmax = xmalloc(sizeof(int32_t) * (size_t)N), *want_tree = xmalloc(sizeof(int32_t) * (size_t)N);
    int32_t *want_paths = xmalloc(sizeof(int32_t) * (size_t)PD);
    int n = 0, n_typical = 0, same_candidates = 0, ok = 0, padded_steps = 0, ref_differs = 0, ref_same = 0;
    for (const cJSON *c = cJSON_GetObjectItem(fixture, "steps")->child; c; c = c->next, n++) {
        float temperature = (float)json_number(c, "temperature");
        json_floats(cJSON_GetObjectItem(c, "base_logits"), base);
        json_floats(cJSON_GetObjectItem(c, "medusa_logits"), heads);
        json_floats(cJSON_GetObjectItem(c, "tree_logits"), tree_logits);
        int n_tree = json_ints(cJSON_GetObjectItem(c, "tree_candidates"), want_tree);
        int n_paths = json_ints(cJSON_GetObjectItem(c, "cart_candidates"), want_paths);
        be->top_k(candidates, base, 1, V, 1);
        be->top_k(candidates + 1, heads, K, V, TREE_TOPK);
        tree_step_candidates(&s, candidates);
        same_candidates += n_tree == N && n_paths == PD && !memcmp(s.tree_tokens, want_tree, sizeof(int32_t) * N) &&
                           !memcmp(s.paths, want_paths, sizeof(int32_t) * PD);
        int best, len;
        if (temperature == 0) {
            be->top_k(node_argmax, tree_logits, N, V, 1);
            len = tree_step_accept_greedy(&s, node_argmax, &best);
        } else {
            be->softmax_entropy(entropy, child_probs, tree_logits, s.child_ids, N, V, TREE_TOPK, temperature);
            len = tree_step_accept_typical(&s, entropy, child_probs, eps, alpha, &best);
            n_typical++;
        }
        int want_best = (int)json_number(c, "best"), want_len = (int)json_number(c, "accept_length");
        int ref_best = (int)json_number(c, "ref_best"), ref_len = (int)json_number(c, "ref_accept_length");
        ok += best == want_best && len == want_len;
        if (cJSON_IsTrue(cJSON_GetObjectItem(c, "ref_reads_padding"))) {
            padded_steps++;
            ref_differs += best != ref_best || len != ref_len;
        } else {
            ref_same += best == ref_best && len == ref_len;
        }
    }
    CHECK(n > 0 && same_candidates == n,
          "tree steps: tokens of the tree and of its %d padded paths equal the reference generate_candidates' (root "
          "by argmax) in %d/%d steps",
          t.n_leaves, same_candidates, n);
    CHECK(n_typical > 0 && ok == n && ref_same == n - padded_steps,
          "tree steps: accepted path and length equal evaluate_posterior's in %d/%d steps (%d at T > 0); the "
          "reference's own result in all %d steps where it stays within the paths",
          ok, n, n_typical, n - padded_steps);
    CHECK(padded_steps > 0 && ref_differs > 0,
          "tree steps: in %d steps the reference accepts past a path's leaf (token 0 read against the wrong row); "
          "medusa-c ends paths at their leaf, so %d of its results differ from the reference's own there",
          padded_steps, ref_differs);
    tree_step_free(&s);
    tree_free(&t);
    cJSON_free(tree_json);
    free(base);
    free(heads);
    free(tree_logits);
    free(entropy);
    free(child_probs);
    free(candidates);
    free(node_argmax);
    free(want_tree);
    free(want_paths);
}

static void check_acceptance(void) {
    cJSON *root = read_json("tests/fixtures/acceptance.json");
    float eps = (float)json_number(root, "epsilon"), alpha = (float)json_number(root, "alpha");
    check_path_acceptance(root, eps, alpha);
    check_step_acceptance(cJSON_GetObjectItem(root, "step_cases"), eps, alpha);
    cJSON_Delete(root);
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
    PackedBatch b = {.n_tokens = T, .tokens = tokens, .n_seqs = N_PROMPTS, .seq_lens = seq_lens};
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

/* Where each Medusa step's tokens start in the output (the decoder hands each step's tokens to the sink at once). */
typedef struct {
    int starts[MAX_NEW], n_steps, n_tokens;
} StepStarts;

static void record_step(const int32_t *tokens, int n, void *user) {
    (void)tokens;
    StepStarts *s = user;
    s->starts[s->n_steps++] = s->n_tokens;
    s->n_tokens += n;
}

/* Typical acceptance at temperature 0.7: every step starts with the base model's argmax after the tokens before it
 * (the reference's generate_candidates in its default fast mode), computed again by a prefill of those tokens on the
 * plain decoder; a prefill sums in another order than the tree pass, so a token within fp32 rounding of the argmax
 * counts as a near-tie. */
static void check_typical_roots(Decoder *plain, Decoder *medusa, const Prompts *p, const char *model_path,
                                const char *tree_name) {
    int V = plain->base->config.vocab_size, steps = 0, near_ties = 0, wrong = 0;
    DecodeOptions o;
    decode_options_defaults(&o);
    o.temperature = 0.7f;
    for (int i = 0; i < N_PROMPTS; i++) {
        int32_t out[MAX_NEW + 16], context[16 + MAX_NEW + 16];
        StepStarts st = {{0}, 0, 0};
        DecodeStats ds;
        int n = decode_medusa(medusa, p->tokens[i], p->n[i], MAX_NEW, -1, &o, out, record_step, &st, &ds);
        memcpy(context, p->tokens[i], sizeof(int32_t) * (size_t)p->n[i]);
        memcpy(context + p->n[i], out, sizeof(int32_t) * (size_t)n);
        for (int k = 0; k < st.n_steps; k++, steps++) {
            const float *logits = decoder_logits_after(plain, context, p->n[i] + st.starts[k]);
            int32_t want = row_argmax(logits, V), got = out[st.starts[k]];
            GreedyComparison c;
            if (got == want) continue;
            if (greedy_near_tie(logits, V, got, want, GREEDY_TIE_WINDOW_FP32, &c) == GREEDY_NEAR_TIE) near_ties++;
            else wrong++;
        }
    }
    CHECK(wrong == 0,
          "%s, tree %s: typical acceptance at temperature 0.7: %d/%d steps start with the base model's argmax (%d "
          "near-ties)",
          model_path, tree_name, steps - wrong - near_ties, steps, near_ties);
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
    /* noisy heads: paths accepted part of the way, so the roots come from nodes at every depth */
    if (kind == HEADS_NOISY) check_typical_roots(&plain, &medusa, &p, model_path, tree_name);
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

/* Sliding-window attention (Mistral in every layer, Gemma 3 in some): greedy decoding through the KV cache equals
 * transformers' on a model whose window (4 positions) slides past a 6-token prompt, and Medusa decoding with a tree
 * shallower than the window is lossless; a deeper tree is refused. */
static void check_sliding_window(const char *path) {
    WeightSet ref;
    char *greedy = path_join(path, "greedy.safetensors");
    weights_open_safetensors_file(&ref, greedy);
    free(greedy);
    const WeightTensor *prompt = weights_find(&ref, "prompt"), *want = weights_find(&ref, "greedy");
    ensure(prompt && want && prompt->dtype == DT_I32 && want->dtype == DT_I32);
    int n_prompt = (int)prompt->shape[0], n_new = (int)want->shape[0];
    Model m;
    model_load(&m, path, backend_cpu(), DT_F32);
    Decoder d;
    decoder_init(&d, &m, NULL, NULL, 64);
    DecodeOptions o;
    decode_options_defaults(&o);
    int32_t got[64];
    DecodeStats st;
    int n = decode_plain(&d, (const int32_t *)prompt->data, n_prompt, n_new, -1, &o, got, NULL, NULL, &st);
    int same = n == n_new && memcmp(got, want->data, sizeof(int32_t) * (size_t)n_new) == 0;
    CHECK(m.config.sliding_window == 4 && same,
          "%s (sliding window %d): %d greedy tokens through the KV cache equal transformers' (first %d %d %d)", path,
          m.config.sliding_window, n_new, got[0], got[1], got[2]);
    decoder_free(&d);
    model_free(&m);
    weights_close(&ref);
    check_model(path, "small_8");
    MedusaTree deep;
    tree_load(&deep, "configs/trees/chain_4.json");
    Model mm;
    model_load(&mm, path, backend_cpu(), DT_F32);
    MedusaHeads h = {0};
    EXPECT_FATAL(check_lossless(&mm, path, &deep, "chain_4", HEADS_FROM_BASE, &h), "sliding window",
                 "%s: a tree as deep as the sliding window is refused", path);
    tree_free(&deep);
}

int main(void) {
    check_acceptance();
    check_greedy_compare("tests/fixtures/models/tiny_llama");
    check_model("tests/fixtures/models/tiny_llama", "small_8");
    check_model("tests/fixtures/models/tiny_llama", "mc_sim_7b_63");
    check_model("tests/fixtures/models/tiny_qwen2", "chain_4");
    check_sliding_window("tests/fixtures/models/tiny_mistral_sw");
    check_sliding_window("tests/fixtures/models/tiny_gemma3");
    check_sliding_window("tests/fixtures/models/tiny_gemma2");
    return test_summary();
}
