/* Golden tests of the Medusa heads against PyTorch (fixtures from tests/gen/gen_medusa.py, see
 * tests/fixtures/medusa/README.md): per-head logits, losses, top-k hits and every gradient (L = 1 and 2),
 * clip + AdamW with the HF cosine schedule over 3 steps, gradient accumulation, the initialisation's distribution,
 * and the v1 / vLLM exports. */
#include <cJSON.h>
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../model/medusa_io.h"
#include "../train/optim.h"
#include "test.h"

#define FIX "tests/fixtures/medusa/"
#define TOL 1e-5           /* per tensor, relative to its largest magnitude */
#define TOL_OPTIM 1e-6     /* clip + AdamW alone, from the reference gradients */
#define TOL_W_TRAINED 1e-4 /* ResBlock W trained from zero: Adam amplifies fp32 noise (fixture README) */

enum { K = 3, H = 64, V = 384, N_BATCHES = 3 };

typedef struct {
    int T, n_seqs;
    int32_t *tokens, *seq_lens;
    uint8_t *mask;
    float *hidden;
} FixtureBatch;

static FixtureBatch batches[N_BATCHES];

static void load_batches(void) {
    WeightSet w;
    weights_open_safetensors_file(&w, FIX "batches.safetensors");
    char key[64];
    for (int b = 0; b < N_BATCHES; b++) {
        FixtureBatch *fb = &batches[b];
        int64_t n, ns, nm;
        snprintf(key, sizeof key, "tokens.%d", b);
        fb->tokens = weights_load_i32(&w, key, &n);
        snprintf(key, sizeof key, "seq_lens.%d", b);
        fb->seq_lens = weights_load_i32(&w, key, &ns);
        snprintf(key, sizeof key, "loss_mask.%d", b);
        int32_t *mask = weights_load_i32(&w, key, &nm);
        ensure(fb->tokens && fb->seq_lens && mask && nm == n);
        fb->T = (int)n;
        fb->n_seqs = (int)ns;
        fb->mask = xmalloc((size_t)n);
        for (int64_t i = 0; i < n; i++) fb->mask[i] = (uint8_t)mask[i];
        free(mask);
        snprintf(key, sizeof key, "hidden.%d", b);
        int64_t shape[2] = {n, H};
        fb->hidden = weights_load_f32(&w, key, 2, shape, 1);
    }
    weights_close(&w);
}

/* Compares n floats with a named fixture tensor of the given shape; returns the relative error. */
static double compare(const WeightSet *w, const char *key, const float *got, int n_dims, int64_t d0, int64_t d1,
                      double tol, const char *label) {
    int64_t shape[2] = {d0, d1};
    float *want = weights_load_f32(w, key, n_dims, shape, 1);
    double abs_err, rel_err;
    max_errors(got, want, (size_t)d0 * (size_t)(n_dims == 2 ? d1 : 1), &abs_err, &rel_err);
    CHECK(rel_err <= tol, "%s %s: max abs err %.3g, rel %.3g (tol %.0e)", label, key, abs_err, rel_err, tol);
    free(want);
    return rel_err;
}

static float scalar(const WeightSet *w, const char *key, int index, int count) {
    int64_t shape[1] = {count};
    float *v = weights_load_f32(w, key, 1, shape, 1);
    float x = v[index];
    free(v);
    return x;
}

/* The losses of a case whose keys start with prefix ("loss", "loss.{i}") */
static void check_stats(const WeightSet *w, const MedusaBatchStats *s, const char *prefix, const char *label) {
    char key[64];
    double worst = 0;
    for (int i = 0; i < K; i++) {
        snprintf(key, sizeof key, "%sloss.%d", prefix, i);
        double want = scalar(w, key, 0, 1), e = fabs(s->loss[i] - want) / fabs(want);
        if (e > worst) worst = e;
    }
    snprintf(key, sizeof key, "%sloss", prefix);
    double want = scalar(w, key, 0, 1), e_total = fabs(s->total_loss - want) / fabs(want);
    CHECK(worst <= TOL && e_total <= TOL,
          "%s: per-head losses rel err %.3g, weighted total %.6f rel err %.3g (tol %.0e)", label, worst, s->total_loss,
          e_total, TOL);
}

/* Valid positions and top-1..5 hits of every head ("valid.{i}", "hits.{i}" after prefix), exactly */
static void check_hits(const WeightSet *w, const MedusaBatchStats *s, const char *prefix, const char *label) {
    char key[64];
    int hits_ok = 1;
    for (int i = 0; i < K; i++) {
        int64_t n;
        snprintf(key, sizeof key, "%svalid.%d", prefix, i);
        int32_t *valid = weights_load_i32(w, key, &n);
        snprintf(key, sizeof key, "%shits.%d", prefix, i);
        int32_t *hits = weights_load_i32(w, key, &n);
        hits_ok &= valid[0] == s->valid[i];
        for (int k = 0; k < MEDUSA_TOPK; k++) hits_ok &= hits[k] == s->hits[i][k];
        printf("       head %d: valid %lld, hits top1..5 %lld %lld %lld %lld %lld\n", i, (long long)s->valid[i],
               (long long)s->hits[i][0], (long long)s->hits[i][1], (long long)s->hits[i][2], (long long)s->hits[i][3],
               (long long)s->hits[i][4]);
        free(valid);
        free(hits);
    }
    CHECK(hits_ok, "%s: valid positions and top-1..5 hits of every head equal the reference exactly", label);
}

/* The fixture's case-A heads (export_ref) loaded by our importer. */
static void load_case_a_heads(MedusaHeads *m) { medusa_import(m, FIX "export_ref", backend_cpu(), H, V); }

static void test_case_a(void) {
    printf("case A: forward, loss, top-k hits, gradients (L = 1)\n");
    MedusaHeads m;
    load_case_a_heads(&m);
    FixtureBatch *b = &batches[0];
    MedusaWork work;
    medusa_work_init(&work, &m, b->T, 16); /* several logits chunks, one of them partial */
    WeightSet w;
    weights_open_safetensors_file(&w, FIX "case_a.safetensors");
    char key[64];

    float *logits = xmalloc(sizeof(float) * (size_t)K * b->T * V);
    medusa_logits(&m, &work, b->hidden, b->T, logits);
    for (int i = 0; i < K; i++) {
        snprintf(key, sizeof key, "logits.%d", i);
        compare(&w, key, logits + (size_t)i * b->T * V, 2, b->T, V, TOL, "case A");
    }
    free(logits);

    medusa_enable_grads(&m);
    MedusaBatchStats s;
    medusa_forward_backward(&m, &work, b->hidden, b->tokens, b->mask, b->seq_lens, b->n_seqs, b->T, NULL, 0.8f, 1.0f,
                            &s);
    check_stats(&w, &s, "", "case A");
    check_hits(&w, &s, "", "case A");
    for (int i = 0; i < K; i++) {
        snprintf(key, sizeof key, "grad.%d.0.linear.weight", i);
        compare(&w, key, medusa_linear_w(&m, m.grads, i, 0), 2, H, H, TOL, "case A");
        snprintf(key, sizeof key, "grad.%d.0.linear.bias", i);
        compare(&w, key, medusa_linear_b(&m, m.grads, i, 0), 1, H, 0, TOL, "case A");
        snprintf(key, sizeof key, "grad.%d.1.weight", i);
        compare(&w, key, medusa_lm_head(&m, m.grads, i), 2, V, H, TOL, "case A");
    }

    /* evaluation (grad_scale 0) gives the same statistics and leaves the gradients alone */
    float before = m.grads[123];
    MedusaBatchStats e;
    medusa_forward_backward(&m, &work, b->hidden, b->tokens, b->mask, b->seq_lens, b->n_seqs, b->T, NULL, 0.8f, 0.0f,
                            &e);
    CHECK(e.total_loss == s.total_loss && e.hits[2][4] == s.hits[2][4] && m.grads[123] == before,
          "case A: forward-only pass gives the same loss and hits and no gradient");
    weights_close(&w);
    medusa_work_free(&work, &m);
    medusa_free(&m);
}

/* Case A with bf16 GEMM operands (the GPU default) against the same fp32 PyTorch reference: within bf16
 * rounding, and not equal to it (the rounding must happen). */
static void test_case_a_bf16(void) {
    printf("case A, bf16 GEMMs (fp32 accumulation and master weights)\n");
    const double tol = 3e-2;
    MedusaHeads m;
    load_case_a_heads(&m);
    medusa_use_bf16(&m);
    medusa_enable_grads(&m);
    FixtureBatch *b = &batches[0];
    MedusaWork work;
    medusa_work_init(&work, &m, b->T, 16);
    WeightSet w;
    weights_open_safetensors_file(&w, FIX "case_a.safetensors");
    MedusaBatchStats s;
    medusa_forward_backward(&m, &work, b->hidden, b->tokens, b->mask, b->seq_lens, b->n_seqs, b->T, NULL, 0.8f, 1.0f,
                            &s);
    double want = scalar(&w, "loss", 0, 1), e_total = fabs(s.total_loss - want) / fabs(want);
    CHECK(e_total > 0 && e_total <= 1e-2, "case A bf16: weighted loss %.6f vs %.6f, rel err %.3g (0 < err <= 1e-2)",
          s.total_loss, want, e_total);
    char key[64];
    double worst = 0;
    for (int i = 0; i < K; i++) {
        double e;
        snprintf(key, sizeof key, "grad.%d.0.linear.weight", i);
        e = compare(&w, key, medusa_linear_w(&m, m.grads, i, 0), 2, H, H, tol, "case A bf16");
        worst = e > worst ? e : worst;
        snprintf(key, sizeof key, "grad.%d.1.weight", i);
        e = compare(&w, key, medusa_lm_head(&m, m.grads, i), 2, V, H, tol, "case A bf16");
        worst = e > worst ? e : worst;
    }
    CHECK(worst > 1e-5, "case A bf16: gradients differ from fp32's (max rel err %.3g): the operands were rounded",
          worst);
    weights_close(&w);
    medusa_work_free(&work, &m);
    medusa_free(&m);
}

static void test_case_a2(void) {
    printf("case A2: two independent ResBlocks per head\n");
    MedusaHeads a;
    load_case_a_heads(&a);
    MedusaHeads m;
    medusa_init(&m, backend_cpu(), (MedusaShape){K, 2, H, V, 0});
    WeightSet w;
    weights_open_safetensors_file(&w, FIX "case_a2.safetensors");
    char key[64];
    int64_t hh[2] = {H, H}, h1[1] = {H};
    for (int i = 0; i < K; i++) {
        memcpy(medusa_linear_w(&m, m.params, i, 0), medusa_linear_w(&a, a.params, i, 0), sizeof(float) * H * H);
        memcpy(medusa_linear_b(&m, m.params, i, 0), medusa_linear_b(&a, a.params, i, 0), sizeof(float) * H);
        memcpy(medusa_lm_head(&m, m.params, i), medusa_lm_head(&a, a.params, i), sizeof(float) * V * H);
        snprintf(key, sizeof key, "param.%d.1.linear.weight", i);
        float *x = weights_load_f32(&w, key, 2, hh, 1);
        memcpy(medusa_linear_w(&m, m.params, i, 1), x, sizeof(float) * H * H);
        free(x);
        snprintf(key, sizeof key, "param.%d.1.linear.bias", i);
        x = weights_load_f32(&w, key, 1, h1, 1);
        memcpy(medusa_linear_b(&m, m.params, i, 1), x, sizeof(float) * H);
        free(x);
    }
    medusa_free(&a);
    FixtureBatch *b = &batches[0];
    MedusaWork work;
    medusa_work_init(&work, &m, b->T, 64);
    medusa_enable_grads(&m);
    MedusaBatchStats s;
    medusa_forward_backward(&m, &work, b->hidden, b->tokens, b->mask, b->seq_lens, b->n_seqs, b->T, NULL, 0.8f, 1.0f,
                            &s);
    check_stats(&w, &s, "", "case A2");
    for (int i = 0; i < K; i++)
        for (int l = 0; l < 2; l++) {
            snprintf(key, sizeof key, "grad.%d.%d.linear.weight", i, l);
            compare(&w, key, medusa_linear_w(&m, m.grads, i, l), 2, H, H, TOL, "case A2");
            snprintf(key, sizeof key, "grad.%d.%d.linear.bias", i, l);
            compare(&w, key, medusa_linear_b(&m, m.grads, i, l), 1, H, 0, TOL, "case A2");
        }
    compare(&w, "grad.2.2.weight", medusa_lm_head(&m, m.grads, 2), 2, V, H, TOL, "case A2");
    weights_close(&w);
    medusa_work_free(&work, &m);
    medusa_free(&m);
}

/* Targets from the base model (--targets; case_base_<kind>.safetensors): case A's heads, and the same truncated to the
 * fixture's token map (keys "map."), learn from the base model's logits at row t+1+i on batch 0 (its lm_head on the
 * fixture's hidden states, model_linear as training computes them; for base-kl and truncated heads its rows for the
 * map): losses, top-k hits on the labels and gradients (every ResBlock's, the last head's lm_head) against PyTorch. */
static void test_targets(const Model *base, TargetKind kind, const char *name, const char *path) {
    printf("--targets %s: loss, top-k hits on the labels, gradients\n", name);
    FixtureBatch *b = &batches[0];
    char key[64], label[64];
    WeightSet w;
    weights_open_safetensors_file(&w, path);
    float *logits = xmalloc(sizeof(float) * (size_t)b->T * V);
    model_linear(base, logits, b->hidden, &base->lm_head, NULL, b->T, H, V);
    int32_t *choice = xmalloc(sizeof(int32_t) * (size_t)b->T);
    for (int t = 0; t < b->T; t++) choice[t] = row_argmax(logits + (size_t)t * V, V);
    free(logits);
    for (int truncated = 0; truncated < 2; truncated++) {
        const char *prefix = truncated ? "map." : "";
        MedusaHeads a, m;
        load_case_a_heads(&a);
        if (truncated) { /* case A's ResBlocks, and its lm_head rows for the map's tokens */
            int64_t n;
            int32_t *map = weights_load_i32(&w, "map.token_map", &n);
            medusa_init(&m, backend_cpu(), (MedusaShape){K, 1, H, V, (int)n});
            medusa_set_token_map(&m, map);
            for (int i = 0; i < K; i++) {
                memcpy(medusa_linear_w(&m, m.params, i, 0), medusa_linear_w(&a, a.params, i, 0),
                       sizeof(float) * (H * H + H));
                for (int r = 0; r < (int)n; r++)
                    memcpy(medusa_lm_head(&m, m.params, i) + (size_t)r * H,
                           medusa_lm_head(&a, a.params, i) + (size_t)map[r] * H, sizeof(float) * H);
            }
            free(map);
            medusa_free(&a);
        } else {
            m = a;
        }
        medusa_enable_grads(&m);
        MedusaWork work;
        medusa_work_init(&work, &m, b->T, 16);
        MedusaBase mb = {.targets = kind, .choice = choice, .model = base, .lm_head = &base->lm_head};
        Matrix subset = {0}; /* truncated heads' teacher: the base's lm_head rows for their map */
        if (kind == TARGETS_BASE_KL) {
            medusa_work_enable_teacher(&work, &m);
            if (truncated) subset = model_lm_head_subset(base, m.token_map, m.shape.head_vocab), mb.lm_head = &subset;
        }
        MedusaBatchStats s;
        medusa_forward_backward(&m, &work, b->hidden, b->tokens, b->mask, b->seq_lens, b->n_seqs, b->T, &mb, 0.8f, 1.0f,
                                &s);
        snprintf(label, sizeof label, "--targets %s, %s heads", name, truncated ? "truncated" : "full-vocabulary");
        check_stats(&w, &s, prefix, label);
        check_hits(&w, &s, prefix, label);
        for (int i = 0; i < K; i++) {
            snprintf(key, sizeof key, "%sgrad.%d.0.linear.weight", prefix, i);
            compare(&w, key, medusa_linear_w(&m, m.grads, i, 0), 2, H, H, TOL, label);
            snprintf(key, sizeof key, "%sgrad.%d.0.linear.bias", prefix, i);
            compare(&w, key, medusa_linear_b(&m, m.grads, i, 0), 1, H, 0, TOL, label);
        }
        snprintf(key, sizeof key, "%sgrad.%d.1.weight", prefix, K - 1);
        compare(&w, key, medusa_lm_head(&m, m.grads, K - 1), 2, m.shape.head_vocab, H, TOL, label);
        matrix_free(base->be, &subset);
        medusa_work_free(&work, &m);
        medusa_free(&m);
    }
    free(choice);
    weights_close(&w);
}

/* The fixtures' training hyper-parameters (README): lr 1e-2, weight decay 0.01 on weights only. */
static OptimConfig fixture_optim(int total_steps, double warmup_ratio) {
    OptimConfig c;
    optim_defaults(&c);
    c.lr = 1e-2;
    c.weight_decay = 0.01;
    c.warmup_ratio = warmup_ratio;
    c.total_steps = total_steps;
    return c;
}

/* How samples fit U(-bound, bound), PyTorch's nn.Linear bias init (reset_parameters: bound = 1/sqrt(in_features)):
 * every one within the bound and the largest |x| in its last 14/n of it (a U(-b, b) sample falls short of that with
 * probability e^-14), the mean and the mean square within 5 standard errors of 0 and bound^2/3, and the
 * Kolmogorov-Smirnov distance to the uniform CDF below its 0.1% critical value 1.95/sqrt(n). */
typedef struct {
    double max_abs, mean, mean_sq, ks;
    int ok;
} UniformFit;

static int compare_floats(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static UniformFit uniform_fit(const float *x, size_t n, double bound) {
    UniformFit f = {0, 0, 0, 0, 0};
    float *sorted = xmalloc(sizeof(float) * n);
    memcpy(sorted, x, sizeof(float) * n);
    qsort(sorted, n, sizeof(float), compare_floats);
    for (size_t i = 0; i < n; i++) {
        f.max_abs = fmax(f.max_abs, fabs(sorted[i]));
        f.mean += sorted[i] / (double)n;
        f.mean_sq += (double)sorted[i] * sorted[i] / (double)n;
        double cdf = fmin(fmax((sorted[i] + bound) / (2 * bound), 0), 1);
        f.ks = fmax(f.ks, fmax(fabs(cdf - (double)i / n), fabs(cdf - (double)(i + 1) / n)));
    }
    free(sorted);
    double b2 = bound * bound, sn = sqrt((double)n);
    f.ok = f.max_abs <= bound && f.max_abs >= bound * (1 - 14.0 / n) && fabs(f.mean) <= 5 * bound / sqrt(3) / sn &&
           fabs(f.mean_sq - b2 / 3) <= 5 * sqrt(4.0 / 45) * b2 / sn && f.ks <= 1.95 / sn;
    return f;
}

static void print_fit(const char *what, const UniformFit *f, double bound) {
    printf("  %-44s max|x| %.5f (bound %.5f), mean %+.2e, mean square / (bound^2/3) %.4f, KS %.4f: %s\n", what,
           f->max_abs, bound, f->mean, f->mean_sq / (bound * bound / 3), f->ks, f->ok ? "fits" : "does not fit");
}

/* medusa_init_from_base against the reference ResBlock (nn.Linear(H, H), then zeros_ on its weight) and the
 * reference lm_head copy: 64 heads x 16 blocks of H = 64 biases (65,536 samples) must fit U(-1/sqrt(H), 1/sqrt(H)),
 * as the biases PyTorch drew for case B's fixture do (192 samples); wrong distributions planted in their place must
 * not fit. W is zero, each block draws its own bias, and each lm_head is the base model's. */
static void test_init(const Model *base) {
    enum { HEADS = 64, LAYERS = 16 };
    MedusaHeads m;
    medusa_init(&m, backend_cpu(), (MedusaShape){HEADS, LAYERS, H, V, 0});
    Rng rng;
    rng_seed(&rng, 3);
    medusa_init_from_base(&m, base, &rng);
    size_t n = (size_t)HEADS * LAYERS * H;
    float *bias = xmalloc(sizeof(float) * n);
    int w_zero = 1, distinct = 1, lm_copy = 1;
    for (int h = 0; h < HEADS; h++) {
        for (int l = 0; l < LAYERS; l++) {
            const float *w = medusa_linear_w(&m, m.params, h, l), *b = medusa_linear_b(&m, m.params, h, l);
            for (int i = 0; i < H * H; i++) w_zero &= w[i] == 0.0f;
            float *dst = bias + ((size_t)h * LAYERS + l) * H;
            memcpy(dst, b, sizeof(float) * H);
            if (h + l > 0) distinct &= memcmp(dst, dst - H, sizeof(float) * H) != 0;
        }
        lm_copy &= !memcmp(medusa_lm_head(&m, m.params, h), base->lm_head.part[0].data, sizeof(float) * V * H);
    }
    CHECK(w_zero && distinct && lm_copy,
          "init: ResBlock W exactly zero in all %d blocks, each block's bias its own draw, every lm_head the base "
          "model's",
          HEADS * LAYERS);
    double bound = 1.0 / sqrt(H);
    UniformFit ours = uniform_fit(bias, n, bound);
    print_fit("medusa_init_from_base, 65,536 biases", &ours, bound);

    WeightSet w;
    weights_open_safetensors_file(&w, FIX "case_b.safetensors");
    float torch_bias[K * H];
    for (int i = 0; i < K; i++) {
        char key[64];
        snprintf(key, sizeof key, "init.%d.0.linear.bias", i);
        int64_t shape[1] = {H};
        float *x = weights_load_f32(&w, key, 1, shape, 1);
        memcpy(torch_bias + i * H, x, sizeof(float) * H);
        free(x);
    }
    weights_close(&w);
    UniformFit torch = uniform_fit(torch_bias, K * H, bound);
    print_fit("PyTorch nn.Linear(64, 64), 192 biases", &torch, bound);
    CHECK(ours.ok && torch.ok,
          "init: the biases fit U(-1/sqrt(H), 1/sqrt(H)), H = %d, as PyTorch's own draws do (max|x| %.5f, KS %.4f "
          "over %zu; PyTorch's KS %.4f over %d)",
          H, ours.max_abs, ours.ks, n, torch.ks, K * H);

    /* planted: scales 0.97 and 1.03, kaiming_uniform's weight bound sqrt(6/H), U(0, bound), a normal of the same
     * variance */
    const char *names[5] = {"scale 0.97", "scale 1.03", "bound sqrt(6/H)", "U(0, bound)", "normal, same variance"};
    float *wrong = xmalloc(sizeof(float) * n);
    int rejected = 0;
    for (int k = 0; k < 5; k++) {
        for (size_t i = 0; i < n; i++) {
            double u = rng_uniform(&rng), u2 = rng_uniform(&rng), uniform = (2 * u - 1) * bound;
            double normal = sqrt(-2 * log(1 - u)) * cos(2 * M_PI * u2) * bound / sqrt(3);
            double planted[5] = {0.97 * uniform, 1.03 * uniform, sqrt(6.0) * uniform, u * bound, normal};
            wrong[i] = (float)planted[k];
        }
        UniformFit f = uniform_fit(wrong, n, bound);
        print_fit(names[k], &f, bound);
        rejected += !f.ok;
    }
    CHECK(rejected == 5, "init: %d/5 planted wrong distributions are told apart from U(-1/sqrt(H), 1/sqrt(H))",
          rejected);
    free(wrong);
    free(bias);
    medusa_free(&m);
}

/* Reference init: W = 0, b = case B's init.*, lm_heads = the base model's lm_head. */
static void reference_init(MedusaHeads *m, const Model *base, const WeightSet *b_fix) {
    medusa_init(m, backend_cpu(), (MedusaShape){K, 1, H, V, 0});
    Rng rng;
    rng_seed(&rng, 1);
    medusa_init_from_base(m, base, &rng);
    char key[64];
    int64_t h1[1] = {H};
    double w_max = 0;
    for (int i = 0; i < K; i++) {
        snprintf(key, sizeof key, "init.%d.0.linear.bias", i);
        float *x = weights_load_f32(b_fix, key, 1, h1, 1);
        memcpy(medusa_linear_b(m, m->params, i, 0), x, sizeof(float) * H);
        free(x);
        snprintf(key, sizeof key, "init.%d.0.linear.weight", i);
        int64_t hh[2] = {H, H};
        x = weights_load_f32(b_fix, key, 2, hh, 1);
        for (int j = 0; j < H * H; j++) w_max = fmax(w_max, fabs(x[j] - medusa_linear_w(m, m->params, i, 0)[j]));
        free(x);
    }
    ensure(w_max == 0); /* our init's W is the reference's zero matrix */
}

/* Gradients of the ResBlock params entering a step vs gin{s}.* */
static void compare_gin(const WeightSet *w, const MedusaHeads *m, const char *prefix, const char *label) {
    char key[64];
    for (int i = 0; i < K; i++) {
        snprintf(key, sizeof key, "%s.%d.0.linear.weight", prefix, i);
        compare(w, key, medusa_linear_w(m, m->grads, i, 0), 2, H, H, TOL, label);
        snprintf(key, sizeof key, "%s.%d.0.linear.bias", prefix, i);
        compare(w, key, medusa_linear_b(m, m->grads, i, 0), 1, H, 0, TOL, label);
    }
}

static void compare_params(const WeightSet *w, const MedusaHeads *m, const float *base, const char *prefix,
                           double tol_w, double tol_b, double tol_lm, int lm_heads_from, const char *label) {
    char key[64];
    for (int i = 0; i < K; i++) {
        snprintf(key, sizeof key, "%s.%d.0.linear.weight", prefix, i);
        compare(w, key, medusa_linear_w(m, (float *)base, i, 0), 2, H, H, tol_w, label);
        snprintf(key, sizeof key, "%s.%d.0.linear.bias", prefix, i);
        compare(w, key, medusa_linear_b(m, (float *)base, i, 0), 1, H, 0, tol_b, label);
        if (i < lm_heads_from) continue;
        snprintf(key, sizeof key, "%s.%d.1.weight", prefix, i);
        compare(w, key, medusa_lm_head(m, (float *)base, i), 2, V, H, tol_lm, label);
    }
}

/* Case B, three steps of one batch each: gradients entering each step, grad norm, lr, the step's loss, the
 * params and moments after the last step; then the optimizer alone replayed from the reference gradients. */
static void test_case_b(const Model *base) {
    printf("case B: 3 AdamW steps, cosine schedule with warm-up, clipping\n");
    WeightSet w;
    weights_open_safetensors_file(&w, FIX "case_b.safetensors");
    MedusaHeads m;
    reference_init(&m, base, &w);
    medusa_enable_grads(&m);
    AdamState adam;
    adam_init(&adam, &m);
    OptimConfig c = fixture_optim(3, 0.1);
    MedusaWork work;
    medusa_work_init(&work, &m, 64, 64);
    char prefix[16], label[32];
    for (int s = 0; s < 3; s++) {
        FixtureBatch *b = &batches[s];
        MedusaBatchStats st;
        medusa_forward_backward(&m, &work, b->hidden, b->tokens, b->mask, b->seq_lens, b->n_seqs, b->T, NULL, 0.8f,
                                1.0f, &st);
        snprintf(prefix, sizeof prefix, "gin%d", s);
        snprintf(label, sizeof label, "case B step %d", s);
        compare_gin(&w, &m, prefix, label);
        float want_loss = scalar(&w, "step_loss", s, 3), want_norm = scalar(&w, "grad_norm", s, 3);
        float want_lr = scalar(&w, "lr", s, 3), lr = (float)lr_at(&c, s);
        double norm = optim_step(&m, &adam, &c);
        double e_loss = fabs(st.total_loss - want_loss) / want_loss, e_norm = fabs(norm - want_norm) / want_norm;
        CHECK(e_loss <= TOL && e_norm <= TOL && lr == want_lr,
              "%s: loss %.6f (rel err %.2g), grad norm %.6f (rel err %.2g), lr %g (want %g)", label, st.total_loss,
              e_loss, norm, e_norm, (double)lr, (double)want_lr);
    }
    compare_params(&w, &m, m.params, "step2", TOL_W_TRAINED, TOL, TOL, 0, "case B end to end");
    char key[64];
    for (int i = 0; i < K; i++) {
        snprintf(key, sizeof key, "exp_avg.%d.0.linear.weight", i);
        compare(&w, key, medusa_linear_w(&m, adam.m, i, 0), 2, H, H, TOL, "case B end to end");
        snprintf(key, sizeof key, "exp_avg_sq.%d.0.linear.bias", i);
        compare(&w, key, medusa_linear_b(&m, adam.v, i, 0), 1, H, 0, TOL, "case B end to end");
    }

    /* the optimizer alone: reference gradients and norms in, params and moments out (lm_heads have no stored
     * gradients: they get zero, so only the ResBlock params are compared) */
    adam_free(&adam, &m);
    medusa_free(&m);
    reference_init(&m, base, &w);
    medusa_enable_grads(&m);
    adam_init(&adam, &m);
    int64_t hh[2] = {H, H}, h1[1] = {H};
    for (int s = 0; s < 3; s++) {
        for (int i = 0; i < K; i++) {
            snprintf(key, sizeof key, "gin%d.%d.0.linear.weight", s, i);
            float *x = weights_load_f32(&w, key, 2, hh, 1);
            memcpy(medusa_linear_w(&m, m.grads, i, 0), x, sizeof(float) * H * H);
            free(x);
            snprintf(key, sizeof key, "gin%d.%d.0.linear.bias", s, i);
            x = weights_load_f32(&w, key, 1, h1, 1);
            memcpy(medusa_linear_b(&m, m.grads, i, 0), x, sizeof(float) * H);
            free(x);
        }
        optim_apply(&m, &adam, &c, scalar(&w, "grad_norm", s, 3));
    }
    for (int i = 0; i < K; i++) {
        snprintf(key, sizeof key, "step2.%d.0.linear.weight", i);
        compare(&w, key, medusa_linear_w(&m, m.params, i, 0), 2, H, H, TOL_OPTIM, "case B optimizer alone");
        snprintf(key, sizeof key, "step2.%d.0.linear.bias", i);
        compare(&w, key, medusa_linear_b(&m, m.params, i, 0), 1, H, 0, TOL_OPTIM, "case B optimizer alone");
        snprintf(key, sizeof key, "exp_avg.%d.0.linear.weight", i);
        compare(&w, key, medusa_linear_w(&m, adam.m, i, 0), 2, H, H, TOL_OPTIM, "case B optimizer alone");
        snprintf(key, sizeof key, "exp_avg_sq.%d.0.linear.weight", i);
        compare(&w, key, medusa_linear_w(&m, adam.v, i, 0), 2, H, H, TOL_OPTIM, "case B optimizer alone");
        snprintf(key, sizeof key, "exp_avg_sq.%d.0.linear.bias", i);
        compare(&w, key, medusa_linear_b(&m, adam.v, i, 0), 1, H, 0, TOL_OPTIM, "case B optimizer alone");
    }
    adam_free(&adam, &m);
    medusa_work_free(&work, &m);
    medusa_free(&m);
    weights_close(&w);
}

/* Case C: batches 0 and 1 accumulated (each loss / 2) into one step with lr 0.01 (no warm-up). */
static void test_case_c(const Model *base) {
    printf("case C: gradient accumulation over 2 micro-batches\n");
    WeightSet wb, w;
    weights_open_safetensors_file(&wb, FIX "case_b.safetensors");
    weights_open_safetensors_file(&w, FIX "case_c.safetensors");
    MedusaHeads m;
    reference_init(&m, base, &wb);
    weights_close(&wb);
    medusa_enable_grads(&m);
    AdamState adam;
    adam_init(&adam, &m);
    OptimConfig c = fixture_optim(1, 0.0);
    MedusaWork work;
    medusa_work_init(&work, &m, 64, 64);
    double loss = 0;
    for (int b = 0; b < 2; b++) {
        MedusaBatchStats st;
        FixtureBatch *fb = &batches[b];
        medusa_forward_backward(&m, &work, fb->hidden, fb->tokens, fb->mask, fb->seq_lens, fb->n_seqs, fb->T, NULL,
                                0.8f, 0.5f, &st);
        loss += st.total_loss / 2;
    }
    compare_gin(&w, &m, "gin0", "case C");
    float want_loss = scalar(&w, "step_loss", 0, 1), want_norm = scalar(&w, "grad_norm", 0, 1);
    double norm = optim_step(&m, &adam, &c);
    double e_loss = fabs(loss - want_loss) / want_loss, e_norm = fabs(norm - want_norm) / want_norm;
    CHECK(e_loss <= TOL && e_norm <= TOL && (float)lr_at(&c, 0) == scalar(&w, "lr", 0, 1),
          "case C: mean loss %.6f (rel err %.2g), grad norm %.6f (rel err %.2g), lr %g", loss, e_loss, norm, e_norm,
          (double)lr_at(&c, 0));
    compare_params(&w, &m, m.params, "step0", TOL_W_TRAINED, TOL, 2e-5, K - 1, "case C");
    adam_free(&adam, &m);
    medusa_work_free(&work, &m);
    medusa_free(&m);
    weights_close(&w);
}

/* Our base forward feeds the heads the fixture's hidden states (after the final RMSNorm). */
static void test_hidden(const Model *base) {
    FixtureBatch *b = &batches[1];
    ForwardState fs;
    forward_state_init(&fs, base, b->T);
    float *hidden = xmalloc(sizeof(float) * (size_t)b->T * H);
    PackedBatch pb = {.n_tokens = b->T, .tokens = b->tokens, .n_seqs = b->n_seqs, .seq_lens = b->seq_lens};
    model_forward(base, &fs, &pb, hidden, NULL);
    double abs_err, rel_err;
    max_errors(hidden, b->hidden, (size_t)b->T * H, &abs_err, &rel_err);
    CHECK(rel_err <= 1e-5, "base forward of batch 1: hidden states after the final norm, max abs err %.3g, rel %.3g",
          abs_err, rel_err);
    free(hidden);
    forward_state_free(&fs, base);
}

/* ---- export ---- */

/* Both files hold the same keys, shapes, dtypes and bit-identical values. */
static void compare_safetensors(const char *got_path, const char *want_path, const char *label) {
    WeightSet g, w;
    weights_open_safetensors_file(&g, got_path);
    weights_open_safetensors_file(&w, want_path);
    int same = g.n_tensors == w.n_tensors, values = 1;
    for (int i = 0; i < w.n_tensors && same; i++) {
        const WeightTensor *b = &w.tensors[i], *a = weights_find(&g, b->name);
        if (!a || a->dtype != b->dtype || a->n_dims != b->n_dims ||
            memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)b->n_dims) != 0 || a->nbytes != b->nbytes) {
            printf("       %s: tensor %s differs in presence, dtype or shape\n", label, b->name);
            same = 0;
            break;
        }
        values &= memcmp(a->data, b->data, b->nbytes) == 0;
    }
    CHECK(same && values, "%s: %d tensors, same names, dtypes, shapes and bit-identical values as %s", label,
          w.n_tensors, want_path);
    weights_close(&g);
    weights_close(&w);
}

/* Every key of want's config.json is in got's with an equal value (numbers, strings, booleans). */
static void compare_config(const char *got_dir, const char *want_dir, const char *label) {
    char *gp = path_join(got_dir, "config.json"), *wp = path_join(want_dir, "config.json");
    char *gt = read_whole_file(gp, NULL), *wt = read_whole_file(wp, NULL);
    cJSON *g = cJSON_Parse(gt), *w = cJSON_Parse(wt);
    int ok = g && w, n = 0;
    for (cJSON *it = w ? w->child : NULL; it && ok; it = it->next) {
        cJSON *v = cJSON_GetObjectItemCaseSensitive(g, it->string);
        if (!v || !cJSON_Compare(v, it, 1)) {
            printf("       %s: config key \"%s\" differs\n", label, it->string);
            ok = 0;
        }
        n++;
    }
    CHECK(ok, "%s: config.json has the reference's %d keys with equal values", label, n);
    cJSON_Delete(g);
    cJSON_Delete(w);
    free(gt);
    free(wt);
    free(gp);
    free(wp);
}

static void test_export(void) {
    printf("export: Medusa v1 and vLLM layouts\n");
    MedusaHeads m;
    load_case_a_heads(&m);
    make_tmpdir("/tmp/test_medusa_XXXXXX");
    char *v1 = tmp_path("v1"), *vllm = tmp_path("vllm"), *bf = tmp_path("bf16");
    medusa_export(&m, v1, MEDUSA_FORMAT_V1, DT_F32, "tests/fixtures/medusa/base");
    medusa_export(&m, vllm, MEDUSA_FORMAT_VLLM, DT_F32, NULL);
    char *p = path_join(v1, "medusa_lm_head.safetensors");
    compare_safetensors(p, FIX "export_ref/medusa_lm_head.safetensors", "v1 export");
    free(p);
    p = path_join(vllm, "model.safetensors");
    compare_safetensors(p, FIX "export_vllm_ref/model.safetensors", "vLLM export");
    free(p);
    compare_config(v1, FIX "export_ref", "v1 export");
    compare_config(vllm, FIX "export_vllm_ref", "vLLM export");

    /* import(export) is the identity, in both layouts; bf16 rounds each value once */
    const char *dirs[2] = {v1, vllm};
    for (int f = 0; f < 2; f++) {
        MedusaHeads r;
        medusa_import(&r, dirs[f], backend_cpu(), H, V);
        int same = r.n_params == m.n_params && r.shape.n_layers == 1 && r.shape.n_heads == K &&
                   memcmp(r.params, m.params, sizeof(float) * m.n_params) == 0;
        CHECK(same, "%s export re-imported: %zu parameters bit-identical", f ? "vLLM" : "v1", m.n_params);
        medusa_free(&r);
    }
    medusa_export(&m, bf, MEDUSA_FORMAT_V1, DT_BF16, "x");
    MedusaHeads r;
    medusa_import(&r, bf, backend_cpu(), H, V);
    double abs_err, rel_err;
    max_errors(r.params, m.params, m.n_params, &abs_err, &rel_err);
    int rounded = 1;
    for (size_t i = 0; i < m.n_params; i++) rounded &= r.params[i] == bf16_to_float(float_to_bf16(m.params[i]));
    CHECK(rounded, "bf16 export re-imported: every value is the bf16 rounding of ours (max abs err %.3g)", abs_err);
    medusa_free(&r);
    EXPECT_FATAL(medusa_import(&r, v1, backend_cpu(), 32, V), "hidden_size",
                 "import into a base of another hidden size fails");
    char *weights_file = path_join(v1, "medusa_lm_head.safetensors"); /* a file where a directory goes */
    EXPECT_FATAL(medusa_import(&r, weights_file, backend_cpu(), H, V),
                 "not a directory: exported heads are a directory",
                 "import from a file (a checkpoint, say) names it and says what is expected");
    free(weights_file);

    remove_tmpdir();
    free(v1);
    free(vllm);
    free(bf);
    medusa_free(&m);
}

/* Names in dir's parent starting with dir's name and a ".": temp siblings of an export. */
static int temp_siblings(const char *parent, const char *name) {
    DIR *d = opendir(parent);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) n += strncmp(e->d_name, name, strlen(name)) == 0 && e->d_name[strlen(name)] == '.';
    if (d) closedir(d);
    return n;
}

/* The export in dir: 1 when it is heads a's (the v1 layout) or b's (vLLM's) whole, config and weights alike. */
static int export_whole(const char *dir, const MedusaHeads *a, const MedusaHeads *b) {
    char *v1 = path_join(dir, "medusa_lm_head.safetensors"), *vllm = path_join(dir, "model.safetensors");
    int has_v1 = file_exists(v1), has_vllm = file_exists(vllm);
    free(v1);
    free(vllm);
    if (has_v1 == has_vllm) return 0;
    MedusaHeads r;
    medusa_import(&r, dir, backend_cpu(), H, V);
    const MedusaHeads *want = has_v1 ? a : b;
    int same = r.n_params == want->n_params && memcmp(r.params, want->params, sizeof(float) * r.n_params) == 0;
    medusa_free(&r);
    return same;
}

/* An export replaces its directory whole: another layout's files never stay beside the new ones, a directory holding
 * other files is refused, a killed export's temp directory is removed by the next, and an export killed at random
 * moments (SIGKILL) always leaves the old export or the new one, never a mix. */
static void test_export_atomic(void) {
    printf("export: the directory replaced whole, also when killed\n");
    MedusaHeads a, b;
    load_case_a_heads(&a);
    load_case_a_heads(&b);
    for (size_t i = 0; i < b.n_params; i++) b.params[i] *= 2;
    char root[] = "/tmp/test_medusa_atomic_XXXXXX";
    ensure(mkdtemp(root));
    char *dir = path_join(root, "heads");
    medusa_export(&a, dir, MEDUSA_FORMAT_V1, DT_F32, "x");
    medusa_export(&b, dir, MEDUSA_FORMAT_VLLM, DT_F32, NULL);
    CHECK(
        export_whole(dir, &a, &b) && temp_siblings(root, "heads") == 0,
        "a vLLM export over a v1 one: only the vLLM files remain (no stale medusa_lm_head.safetensors), no temp left");
    char *foreign = path_join(dir, "notes.txt");
    FILE *f = fopen(foreign, "w");
    ensure(f && fclose(f) == 0);
    EXPECT_FATAL(medusa_export(&a, dir, MEDUSA_FORMAT_V1, DT_F32, "x"),
                 "holds notes.txt, which is not part of an export",
                 "an export into a directory holding other files is refused");
    unlink(foreign);
    free(foreign);
    CHECK(export_whole(dir, &a, &b) && temp_siblings(root, "heads") == 0, "... and leaves it as it was");

    /* killed exports, alternating layouts and heads */
    Rng rng;
    rng_seed(&rng, 9);
    int whole = 0, rounds = 24, stale_seen = 0;
    for (int i = 0; i < rounds; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            set_fatal_hook(NULL);
            for (int k = 0;; k++)
                medusa_export(k % 2 ? &b : &a, dir, k % 2 ? MEDUSA_FORMAT_VLLM : MEDUSA_FORMAT_V1, DT_F32, "x");
        }
        usleep((useconds_t)(200 + rng_below(&rng, 20000)));
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        stale_seen += temp_siblings(root, "heads") > 0;
        whole += export_whole(dir, &a, &b);
    }
    CHECK(whole == rounds,
          "%d exports killed at random moments: the directory held one whole export each time (%d/%d; "
          "%d kills left a temp directory)",
          rounds, whole, rounds, stale_seen);
    medusa_export(&a, dir, MEDUSA_FORMAT_V1, DT_F32, "x");
    CHECK(export_whole(dir, &a, &b) && temp_siblings(root, "heads") == 0,
          "the next export removes the killed exports' temp directories");
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    if (system(cmd) != 0) printf("       (could not remove %s)\n", root);
    free(dir);
    medusa_free(&a);
    medusa_free(&b);
}

int main(void) {
    test_export_atomic(); /* first: it forks, and libgomp's thread pool does not survive fork */
    load_batches();
    Model base;
    model_load(&base, FIX "base", backend_cpu(), DT_F32);
    test_case_a();
    test_case_a_bf16();
    test_case_a2();
    test_case_b(&base);
    test_case_c(&base);
    test_targets(&base, TARGETS_BASE_ARGMAX, "base-argmax", FIX "case_base_argmax.safetensors");
    test_targets(&base, TARGETS_BASE_KL, "base-kl", FIX "case_base_kl.safetensors");
    test_hidden(&base);
    test_init(&base);
    test_export();
    model_free(&base);
    for (int b = 0; b < N_BATCHES; b++) {
        free(batches[b].tokens);
        free(batches[b].seq_lens);
        free(batches[b].mask);
        free(batches[b].hidden);
    }
    return test_summary();
}
