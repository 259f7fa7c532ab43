/* Heads over a truncated vocabulary (--head-vocab): logits, loss, gradients and accuracy against the same
 * heads posed as a full-vocabulary problem over the mapped tokens; export/import in both layouts, checkpoint
 * round trip, and lossless greedy Medusa decoding. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../infer/decoder.h"
#include "../model/medusa_io.h"
#include "../train/checkpoint.h"
#include "test.h"

#define K 3
#define T 48

/* Every third token, plus the last one: a sorted map of about V/3 tokens. */
static int make_map(int V, int32_t *map) {
    int n = 0;
    for (int v = 0; v < V; v += 3) map[n++] = v;
    if (map[n - 1] != V - 1) map[n++] = V - 1;
    return n;
}

static void randomise(MedusaHeads *m, Rng *rng, float scale) {
    float *p = xmalloc(sizeof(float) * m->n_params);
    fill_uniform(p, m->n_params, scale, rng);
    m->be->upload(m->params, p, sizeof(float) * m->n_params);
    free(p);
}

static double max_diff(const float *a, const float *b, size_t n) {
    double abs_err, rel_err;
    max_errors(a, b, n, &abs_err, &rel_err);
    return abs_err;
}

/* Truncated heads vs (a) full-vocabulary heads whose lm_head rows token_map[r] are the truncated rows, for
 * the logits, and (b) full heads over a vocabulary of Vh tokens trained on the remapped targets with the
 * unmapped ones masked out, for loss, gradients and hits. */
static void check_math(const Model *base) {
    const Backend *be = backend_cpu();
    int H = base->config.hidden_size, V = base->config.vocab_size;
    int32_t *map = xmalloc(sizeof(int32_t) * (size_t)V);
    int Vh = make_map(V, map);
    Rng rng;
    rng_seed(&rng, 3);
    MedusaHeads tr, full, restricted;
    medusa_init(&tr, be, (MedusaShape){K, 1, H, V, Vh});
    medusa_set_token_map(&tr, map);
    medusa_init_from_base(&tr, base, &rng);
    float *lm = xmalloc(sizeof(float) * (size_t)V * H), *row = xmalloc(sizeof(float) * (size_t)H);
    be->download(lm, base->lm_head.part[0].data, sizeof(float) * (size_t)V * H);
    be->download(row, medusa_lm_head(&tr, tr.params, 1) + (size_t)7 * H, sizeof(float) * (size_t)H);
    CHECK(max_diff(row, lm + (size_t)map[7] * H, (size_t)H) == 0, "init: truncated lm_head row 7 is base row %d",
          map[7]);
    randomise(&tr, &rng, 0.3f);

    medusa_init(&full, be, (MedusaShape){K, 1, H, V, 0});
    randomise(&full, &rng, 0.3f);
    float *p = xmalloc(sizeof(float) * full.n_params), *q = xmalloc(sizeof(float) * tr.n_params);
    be->download(p, full.params, sizeof(float) * full.n_params);
    be->download(q, tr.params, sizeof(float) * tr.n_params);
    for (int h = 0; h < K; h++) {
        memcpy(medusa_linear_w(&full, p, h, 0), medusa_linear_w(&tr, q, h, 0), sizeof(float) * ((size_t)H * H + H));
        for (int r = 0; r < Vh; r++)
            memcpy(medusa_lm_head(&full, p, h) + (size_t)map[r] * H, medusa_lm_head(&tr, q, h) + (size_t)r * H,
                   sizeof(float) * (size_t)H);
    }
    be->upload(full.params, p, sizeof(float) * full.n_params);

    float *hidden_host = xmalloc(sizeof(float) * (size_t)T * H);
    fill_uniform(hidden_host, (size_t)T * H, 1.0f, &rng);
    float *hidden = be->alloc(sizeof(float) * (size_t)T * H);
    be->upload(hidden, hidden_host, sizeof(float) * (size_t)T * H);

    MedusaWork wt, wf;
    medusa_work_init(&wt, &tr, T, 16);
    medusa_work_init(&wf, &full, T, 16);
    float *lt = be->alloc(sizeof(float) * (size_t)K * T * Vh), *lf = be->alloc(sizeof(float) * (size_t)K * T * V);
    medusa_logits(&tr, &wt, hidden, T, lt);
    medusa_logits(&full, &wf, hidden, T, lf);
    float *ht = xmalloc(sizeof(float) * (size_t)K * T * Vh), *hf = xmalloc(sizeof(float) * (size_t)K * T * V);
    be->download(ht, lt, sizeof(float) * (size_t)K * T * Vh);
    be->download(hf, lf, sizeof(float) * (size_t)K * T * V);
    double err = 0;
    for (int h = 0; h < K; h++)
        for (int t = 0; t < T; t++)
            for (int r = 0; r < Vh; r++) {
                double d =
                    fabs(ht[((size_t)h * T + t) * Vh + r] - hf[((size_t)h * T + t) * V + medusa_row_token(&tr, r)]);
                if (d > err) err = d;
            }
    CHECK(err < 1e-5,
          "truncated logits [%d,%d,%d] == the mapped columns of full-vocabulary logits (max err %.2g, tol 1e-5)", K, T,
          Vh, err);

    /* loss and gradients: two sequences, tokens half inside the map, half outside */
    int32_t tokens[T], tokens_r[T], seq_lens[2] = {30, T - 30};
    uint8_t mask[T], mask_r[T];
    int outside = 0;
    for (int t = 0; t < T; t++) {
        tokens[t] = (int32_t)(rng_uniform(&rng) * V) % V;
        mask[t] = t % 5 != 0;
        int r = tr.token_index[tokens[t]];
        tokens_r[t] = r < 0 ? 0 : r;
        mask_r[t] = mask[t] && r >= 0;
        outside += mask[t] && r < 0;
    }
    medusa_init(&restricted, be, (MedusaShape){K, 1, H, Vh, 0});
    be->copy(restricted.params, tr.params, sizeof(float) * tr.n_params); /* same layout */
    medusa_enable_grads(&tr);
    medusa_enable_grads(&restricted);
    MedusaWork wr;
    medusa_work_init(&wr, &restricted, T, 16);
    MedusaBatchStats st, sr, sf;
    medusa_forward_backward(&tr, &wt, hidden, tokens, mask, seq_lens, 2, T, NULL, 0.8f, 0.5f, &st);
    medusa_forward_backward(&restricted, &wr, hidden, tokens_r, mask_r, seq_lens, 2, T, NULL, 0.8f, 0.5f, &sr);
    medusa_forward_backward(&full, &wf, hidden, tokens, mask, seq_lens, 2, T, NULL, 0.8f, 0.0f, &sf);
    float *gt = xmalloc(sizeof(float) * tr.n_params), *gr = xmalloc(sizeof(float) * tr.n_params);
    be->download(gt, tr.grads, sizeof(float) * tr.n_params);
    be->download(gr, restricted.grads, sizeof(float) * tr.n_params);
    double gerr = max_diff(gt, gr, tr.n_params), lerr = fabs(st.total_loss - sr.total_loss);
    int hits_ok = 1, valid_ok = 1;
    for (int h = 0; h < K; h++) {
        /* the truncated head computes only its in-map rows: the restricted problem's targets */
        valid_ok &= st.valid[h] == sf.valid[h] && st.valid[h] > sr.valid[h] && st.computed[h] == sr.valid[h] &&
                    sf.computed[h] == sf.valid[h];
        for (int k = 0; k < MEDUSA_TOPK; k++) hits_ok &= st.hits[h][k] == sr.hits[h][k];
    }
    CHECK(outside > 5 && lerr < 1e-5,
          "loss over in-map targets == restricted problem's (%.6f vs %.6f, err %.2g, tol 1e-5; %d targets outside)",
          st.total_loss, sr.total_loss, lerr, outside);
    CHECK(gerr < 1e-6, "gradients == restricted problem's (max err %.2g, tol 1e-6)", gerr);
    CHECK(valid_ok && hits_ok,
          "accuracy counts every target (head 0: %lld valid as with full heads, %lld in the map and computed), hits "
          "equal",
          (long long)st.valid[0], (long long)st.computed[0]);

    /* one AdamW step over the whole parameter vector, lm_head rows included */
    OptimConfig oc;
    optim_defaults(&oc);
    oc.total_steps = 10;
    AdamState at, ar;
    adam_init(&at, &tr);
    adam_init(&ar, &restricted);
    optim_step(&tr, &at, &oc);
    optim_step(&restricted, &ar, &oc);
    be->download(gt, tr.params, sizeof(float) * tr.n_params);
    be->download(gr, restricted.params, sizeof(float) * tr.n_params);
    be->download(q, medusa_lm_head(&tr, tr.grads, K - 1), sizeof(float) * (size_t)Vh * H);
    double perr = max_diff(gt, gr, tr.n_params), gmax = 0;
    for (size_t i = 0; i < (size_t)Vh * H; i++) gmax = fmax(gmax, fabs(q[i]));
    CHECK(perr < 1e-6 && gmax == 0,
          "AdamW step == restricted problem's (max err %.2g, tol 1e-6), last lm_head's gradient cleared", perr);
    adam_free(&at, &tr);
    adam_free(&ar, &restricted);
    medusa_work_free(&wt, &tr);
    medusa_work_free(&wf, &full);
    medusa_work_free(&wr, &restricted);
    be->free(lt);
    be->free(lf);
    be->free(hidden);
    medusa_free(&tr);
    medusa_free(&full);
    medusa_free(&restricted);
    free(map), free(lm), free(row), free(p), free(q), free(hidden_host), free(ht), free(hf), free(gt), free(gr);
}

static int same_heads(const MedusaHeads *a, const MedusaHeads *b) {
    if (memcmp(&a->shape, &b->shape, sizeof a->shape) != 0 || !a->token_map || !b->token_map) return 0;
    float *x = xmalloc(sizeof(float) * a->n_params), *y = xmalloc(sizeof(float) * a->n_params);
    a->be->download(x, a->params, sizeof(float) * a->n_params);
    b->be->download(y, b->params, sizeof(float) * a->n_params);
    int same = memcmp(x, y, sizeof(float) * a->n_params) == 0 &&
               memcmp(a->token_map, b->token_map, sizeof(int32_t) * (size_t)a->shape.head_vocab) == 0;
    free(x);
    free(y);
    return same;
}

static void check_files(const Model *base) {
    const Backend *be = backend_cpu();
    int H = base->config.hidden_size, V = base->config.vocab_size;
    int32_t *map = xmalloc(sizeof(int32_t) * (size_t)V);
    int Vh = make_map(V, map);
    Rng rng;
    rng_seed(&rng, 9);
    MedusaHeads m, r;
    medusa_init(&m, be, (MedusaShape){K, 1, H, V, Vh});
    medusa_set_token_map(&m, map);
    randomise(&m, &rng, 0.5f);
    make_tmpdir("/tmp/test_head_vocab_XXXXXX");
    const char *names[] = {"v1", "vllm"};
    for (int f = 0; f < 2; f++) {
        char *sub = tmp_path(names[f]);
        medusa_export(&m, sub, f == 0 ? MEDUSA_FORMAT_V1 : MEDUSA_FORMAT_VLLM, DT_F32, "base");
        medusa_import(&r, sub, be, H, V);
        CHECK(same_heads(&m, &r), "%s export/import: %d-token heads, token_map and weights round trip exactly",
              names[f], Vh);
        medusa_free(&r);
        free(sub);
    }
    char *ckpt = tmp_path("ckpt-1.h5");
    AdamState adam;
    adam_init(&adam, &m);
    CheckpointMeta meta = {0};
    meta.config_json = "{}";
    checkpoint_save(ckpt, &m, &adam, &meta);
    MedusaShape s = checkpoint_shape(ckpt);
    medusa_init(&r, be, s);
    CheckpointMeta back = {0};
    checkpoint_load(ckpt, &r, NULL, &back);
    CHECK(s.head_vocab == Vh && same_heads(&m, &r), "checkpoint: head vocabulary %d, token_map and weights restored",
          s.head_vocab);
    free(back.config_json);
    medusa_free(&r);
    medusa_init(&r, be, (MedusaShape){K, 1, H, V, 0});
    EXPECT_FATAL(checkpoint_load(ckpt, &r, NULL, &back), "--head-vocab", "resuming truncated heads as full ones fails");
    medusa_free(&r);
    adam_free(&adam, &m);
    medusa_free(&m);
    free(ckpt);
    free(map);
    remove_tmpdir();
}

/* Greedy Medusa decoding with truncated heads (from the base lm_head, so they often agree) == plain greedy. */
static void check_decoding(const Model *base) {
    int H = base->config.hidden_size, V = base->config.vocab_size;
    int32_t *map = xmalloc(sizeof(int32_t) * (size_t)V);
    int Vh = make_map(V, map);
    MedusaTree tree;
    tree_load(&tree, "configs/trees/small_8.json");
    MedusaHeads heads;
    medusa_init(&heads, base->be, (MedusaShape){tree.n_heads_used, 1, H, V, Vh});
    medusa_set_token_map(&heads, map);
    Rng rng;
    rng_seed(&rng, 5);
    medusa_init_from_base(&heads, base, &rng);
    Decoder plain, medusa;
    decoder_init(&plain, base, NULL, NULL, 128);
    decoder_init(&medusa, base, &heads, &tree, 128);
    DecodeOptions o;
    decode_options_defaults(&o);
    int same = 0, steps = 0, tokens = 0, n_prompts = 4;
    for (int i = 0; i < n_prompts; i++) {
        int32_t prompt[8], a[80], b[80];
        for (int j = 0; j < 8; j++) prompt[j] = (int32_t)(rng_uniform(&rng) * V) % V;
        DecodeStats sa, sb;
        int na = decode_plain(&plain, prompt, 8, 64, -1, &o, a, NULL, NULL, &sa);
        int nb = decode_medusa(&medusa, prompt, 8, 64, -1, &o, b, NULL, NULL, &sb);
        same += na == nb && memcmp(a, b, sizeof(int32_t) * (size_t)na) == 0;
        steps += sb.steps;
        tokens += nb;
    }
    CHECK(same == n_prompts,
          "greedy Medusa with %d-token heads == plain greedy on %d/%d prompts (%.2f tokens per step)", Vh, same,
          n_prompts, (double)tokens / steps);
    decoder_free(&plain);
    decoder_free(&medusa);
    medusa_free(&heads);
    tree_free(&tree);
    free(map);
}

int main(void) {
    Model base;
    model_load(&base, "tests/fixtures/models/tiny_llama", backend_cpu(), DT_F32);
    check_math(&base);
    check_files(&base);
    check_decoding(&base);
    model_free(&base);
    return test_summary();
}
