/* Training runs end to end on the tiny fixture model: a run stopped after N steps and resumed from its
 * checkpoint in fresh state ends bit-identical (params, AdamW moments, data cursor, metrics) to a run of 2N
 * steps; SIGTERM finishes the step and saves; a failed checkpoint write leaves the previous file intact and no
 * temp file; resuming with other settings and a diverging loss fail with clear messages. */
#include <cJSON.h>
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/rng.h"
#include "../data/batcher.h"
#include "../model/medusa_io.h"
#include "../train/run.h"
#include "loaded_ckpt.h"
#include "test.h"

#define BASE "tests/fixtures/medusa/base"
enum { V = 384 };

/* Random conversations: BOS, a masked prompt, a trained reply. */
static char *write_cache(const char *name, int n_convs, uint64_t seed) {
    char *path = tmp_path(name);
    TokenCacheWriter w;
    token_cache_writer_open(&w, path);
    Rng rng;
    rng_seed(&rng, seed);
    int32_t ids[80];
    uint8_t mask[80];
    for (int c = 0; c < n_convs; c++) {
        int n = 12 + (int)rng_below(&rng, 60), prompt = 2 + (int)rng_below(&rng, (uint64_t)n / 2);
        for (int i = 0; i < n; i++) {
            ids[i] = i == 0 ? 1 : 2 + (int)rng_below(&rng, V - 2);
            mask[i] = i >= prompt;
        }
        token_cache_writer_add(&w, ids, mask, n);
    }
    TokenCacheMeta meta = {0};
    meta.vocab_size = V;
    snprintf(meta.split, sizeof meta.split, "%s", name);
    token_cache_writer_close(&w, &meta);
    return path;
}

static TrainConfig config(const char *out, const char *data, const char *val) {
    TrainConfig c;
    train_config_defaults(&c);
    c.model = BASE;
    c.data = data;
    c.val = val;
    c.out = out;
    c.heads = 3;
    c.batch_tokens = 128;
    c.grad_accum = 2;
    c.max_steps = 8;
    c.log_every = 2;
    c.eval_every = 4;
    c.eval_batches = 2;
    c.save_every = 4;
    c.optim.lr = 1e-2;
    c.optim.weight_decay = 0.01;
    return c;
}

/* train lines of metrics.jsonl that report a positive throughput in tokens/s and in TFLOP/s */
static int train_lines_with_throughput(const char *dir) {
    char *p = path_join(dir, "metrics.jsonl");
    char *text = read_whole_file(p, NULL);
    free(p);
    int n = 0;
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *split = cJSON_GetObjectItem(j, "split"), *tok = cJSON_GetObjectItem(j, "tokens_per_s"),
                    *flops = cJSON_GetObjectItem(j, "tflops_per_s");
        n += cJSON_IsString(split) && strcmp(split->valuestring, "train") == 0 && cJSON_IsNumber(tok) &&
             tok->valuedouble > 0 && cJSON_IsNumber(flops) && flops->valuedouble > 0;
        cJSON_Delete(j);
    }
    free(text);
    return n;
}

/* metrics.jsonl without the wall-clock fields, one line per entry. */
static char *metrics_without_timing(const char *dir) {
    char *p = path_join(dir, "metrics.jsonl");
    char *text = read_whole_file(p, NULL);
    free(p);
    if (!text) return xstrdup("");
    size_t cap = strlen(text) + 1, n = 0;
    char *out = xcalloc(cap, 1);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        cJSON_DeleteItemFromObject(j, "tokens_per_s");
        cJSON_DeleteItemFromObject(j, "tflops_per_s");
        cJSON_DeleteItemFromObject(j, "elapsed_s");
        char *s = cJSON_PrintUnformatted(j);
        n += (size_t)snprintf(out + n, cap - n, "%s\n", s);
        free(s);
        cJSON_Delete(j);
    }
    free(text);
    return out;
}

static int count_lines(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p++) n++;
    return n;
}

static int has_temp_files(const char *dir) {
    DIR *d = opendir(dir);
    int found = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) found |= strstr(e->d_name, ".tmp") != NULL;
    if (d) closedir(d);
    return found;
}

static char *read_file_or_empty(const char *dir, const char *name, size_t *size) {
    char *p = path_join(dir, name);
    char *t = read_whole_file(p, size);
    free(p);
    return t;
}

static double json_number(const char *line, const char *key) {
    cJSON *j = cJSON_Parse(line);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    double x = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    cJSON_Delete(j);
    return x;
}

static void check_export_eval(const char *run, const char *val_path, const char *metrics) {
    Model base;
    model_load(&base, BASE, backend_cpu(), DT_F32);
    MedusaHeads m;
    char *dir = path_join(run, "medusa");
    medusa_import(&m, dir, backend_cpu(), base.config.hidden_size, V);
    TokenCache val;
    token_cache_load(&val, val_path, V);
    Trainer t;
    trainer_init(&t, &base, &m, NULL, 0.8f, TARGETS_LABELS, 128, 512);
    StepMetrics em;
    evaluate(&t, &val, 128, 2, &em);
    cJSON *o = cJSON_CreateObject();
    eval_metrics_to_json(&em, m.shape.n_heads, o);
    char *ours = cJSON_PrintUnformatted(o);
    const char *last = strrchr(metrics, '{');
    int same = 1;
    for (int i = 0; i < m.shape.n_heads; i++)
        for (int k = 1; k <= MEDUSA_TOPK; k++) {
            char key[48];
            snprintf(key, sizeof key, "medusa%d_top%d", i, k);
            same &= json_number(ours, key) == json_number(last, key);
            snprintf(key, sizeof key, "medusa%d_base_top%d", i, k);
            same &= json_number(ours, key) == json_number(last, key);
        }
    same &= json_number(ours, "loss") == json_number(last, "loss");
    same &= json_number(ours, "base_top1") == json_number(last, "base_top1");
    CHECK(same && em.base_valid > 0,
          "exported heads re-imported and evaluated: loss %.6f, base_top1 and every medusa{i}_top{k} and "
          "medusa{i}_base_top{k} equal the run's final eval line (medusa0_top5 %.4f, medusa0_base_top5 %.4f)",
          json_number(ours, "loss"), json_number(ours, "medusa0_top5"), json_number(ours, "medusa0_base_top5"));
    free(ours);
    cJSON_Delete(o);
    trainer_free(&t);
    medusa_free(&m);
    token_cache_free(&val);
    model_free(&base);
    free(dir);
}

/* Runs `whole` to its end, and `split` (the same settings elsewhere) stopped after step `stop`, then resumed in a
 * fresh state to the end. */
static void run_whole_and_split(TrainConfig *whole, TrainConfig *split, int stop) {
    CHECK(train_run(whole) == TRAIN_DONE, "%d-step run finishes", whole->max_steps);
    split->stop_after = stop;
    CHECK(train_run(split) == TRAIN_STOPPED, "run stopped after step %d (schedule of %d steps kept)", stop,
          split->max_steps);
    split->stop_after = 0;
    split->resume = 1;
    CHECK(train_run(split) == TRAIN_DONE, "resumed run finishes");
}

static void test_resume(const char *data, const char *val) {
    printf("resume: 8 steps in one go vs 4 steps, stop, resume in fresh state, 4 steps\n");
    char *a = tmp_path("a"), *b = tmp_path("b");
    TrainConfig ca = config(a, data, val), cb = config(b, data, val);
    run_whole_and_split(&ca, &cb, 4);

    char *pa = path_join(a, "ckpt-8.h5"), *pb = path_join(b, "ckpt-8.h5");
    Loaded la, lb;
    load_ckpt(&la, pa);
    load_ckpt(&lb, pb);
    size_t n = la.heads.n_params;
    int params = memcmp(la.heads.params, lb.heads.params, sizeof(float) * n) == 0;
    int moments =
        memcmp(la.adam.m, lb.adam.m, sizeof(float) * n) == 0 && memcmp(la.adam.v, lb.adam.v, sizeof(float) * n) == 0;
    int cursor = la.meta.step == 8 && lb.meta.step == 8 &&
                 memcmp(la.meta.cursor, lb.meta.cursor, sizeof la.meta.cursor) == 0 &&
                 la.meta.metrics[0] == lb.meta.metrics[0];
    double abs_err, rel_err;
    max_errors(la.heads.params, lb.heads.params, n, &abs_err, &rel_err);
    CHECK(params && moments && cursor,
          "step 8: %zu params bitwise equal (max abs diff %.3g), AdamW moments equal, same data cursor (epoch %lld, "
          "conversation %lld) and tokens seen",
          n, abs_err, (long long)la.meta.cursor[0], (long long)la.meta.cursor[1]);
    Loaded l4;
    char *p4 = path_join(a, "ckpt-4.h5");
    load_ckpt(&l4, p4);
    max_errors(l4.heads.params, la.heads.params, n, &abs_err, &rel_err);
    CHECK(abs_err > 0, "training moved the params between steps 4 and 8 (max abs change %.3g)", abs_err);
    /* saved and loaded in slices of 97 floats, across many slice borders: the same arrays come back */
    char *sliced = tmp_path("sliced.h5");
    size_t slice = checkpoint_slice_floats;
    checkpoint_slice_floats = 97;
    checkpoint_save(sliced, &l4.heads, &l4.adam, &l4.meta);
    Loaded ls;
    load_ckpt(&ls, sliced);
    checkpoint_slice_floats = slice;
    CHECK(n > 97 * 10 && memcmp(ls.heads.params, l4.heads.params, sizeof(float) * n) == 0 &&
              memcmp(ls.adam.m, l4.adam.m, sizeof(float) * n) == 0 &&
              memcmp(ls.adam.v, l4.adam.v, sizeof(float) * n) == 0 && ls.meta.step == 4,
          "a checkpoint written and read 97 floats at a time holds the same %zu params and moments", n);
    free_ckpt(&ls);
    free(sliced);
    free_ckpt(&l4);
    free(p4);
    free_ckpt(&la);
    free_ckpt(&lb);

    char *ma = metrics_without_timing(a), *mb = metrics_without_timing(b);
    CHECK(strcmp(ma, mb) == 0 && count_lines(ma, "\"split\":\"train\"") == 4 &&
              count_lines(ma, "\"split\":\"eval\"") == 2,
          "metrics.jsonl identical apart from timing: 4 train lines, 2 eval lines");
    CHECK(train_lines_with_throughput(a) == 4, "each train line reports tokens/s and TFLOP/s");
    printf("       last line: %.200s\n", strrchr(ma, '{') ? strrchr(ma, '{') : "");
    size_t sa, sb;
    char *ea = read_file_or_empty(a, "medusa/medusa_lm_head.safetensors", &sa);
    char *eb = read_file_or_empty(b, "medusa/medusa_lm_head.safetensors", &sb);
    CHECK(ea && eb && sa == sb && memcmp(ea, eb, sa) == 0, "final exports byte-identical (%zu bytes)", sa);
    free(ea);
    free(eb);
    /* medusa-eval's path: the exported heads, re-imported and evaluated, give the run's final eval line */
    check_export_eval(a, val, ma);
    free(ma);
    free(mb);

    /* settings that change the run cannot be resumed; an existing run is never overwritten silently */
    TrainConfig bad = cb;
    bad.optim.lr = 2e-2;
    EXPECT_FATAL(train_run(&bad), "lr is 0.02 in this run but 0.01 in the checkpoint",
                 "resume with another --lr is fatal");
    bad = cb;
    bad.batch_tokens = 256;
    EXPECT_FATAL(train_run(&bad), "batch-tokens", "resume with another --batch-tokens is fatal");
    bad = cb;
    bad.resume = 0;
    EXPECT_FATAL(train_run(&bad), "already holds checkpoints", "a new run into a directory with checkpoints is fatal");

    /* a failed save (file size limit) leaves the previous checkpoint byte-identical and no temp file */
    size_t before_size, after_size;
    char *before = read_file_or_empty(b, "ckpt-8.h5", &before_size);
    Loaded l;
    load_ckpt(&l, pb);
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 64 * 1024;
    signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &lim);
    EXPECT_FATAL(checkpoint_save(pb, &l.heads, &l.adam, &l.meta), "write failed: File too large",
                 "checkpoint write past the file size limit fails");
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, SIG_DFL);
    char *after = read_file_or_empty(b, "ckpt-8.h5", &after_size);
    CHECK(before && after && before_size == after_size && memcmp(before, after, before_size) == 0 && !has_temp_files(b),
          "after the failed save: ckpt-8.h5 unchanged (%zu bytes), no temp file left", before_size);
    free_ckpt(&l);
    free(before);
    free(after);
    free(pa);
    free(pb);
    free(a);
    free(b);
}

/* A dead process's pid: a child that has exited and been reaped. */
static pid_t dead_pid(void) {
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    waitpid(pid, NULL, 0);
    return pid;
}

/* A run stopped off the --log-every grid (and saving off it) and resumed logs the lines of the uninterrupted run: the
 * steps since the last line travel in the checkpoint. Temp files a killed process left in the run directory (a
 * checkpoint's, an export directory's) are removed when the run starts; a live process's are not. */
static void test_resume_off_grid(const char *data, const char *val) {
    printf("resume off the log grid: --log-every 3, --save-every 5, stopped after step 4; stale temp files\n");
    char *a = tmp_path("grid_a"), *b = tmp_path("grid_b");
    TrainConfig ca = config(a, data, val), cb = config(b, data, val);
    ca.log_every = cb.log_every = 3;
    ca.save_every = cb.save_every = 5;
    ca.max_steps = cb.max_steps = 10;
    run_whole_and_split(&ca, &cb, 4);
    char *ma = metrics_without_timing(a), *mb = metrics_without_timing(b);
    CHECK(strcmp(ma, mb) == 0 && count_lines(ma, "\"split\":\"train\"") == 4,
          "metrics.jsonl identical to the uninterrupted run's apart from timing (train lines at steps 3, 6, 9, 10)");
    if (strcmp(ma, mb) != 0) printf("       uninterrupted:\n%s       resumed:\n%s", ma, mb);
    free(mb);

    /* temp files of a dead process and of a live one, then a resume (from step 10: nothing to train) */
    pid_t dead = dead_pid();
    char name[4][96];
    snprintf(name[0], sizeof name[0], "ckpt-15.h5.tmp%d", (int)dead);
    snprintf(name[1], sizeof name[1], "metrics.jsonl.tmp%d", (int)dead);
    snprintf(name[2], sizeof name[2], "medusa.tmp%d", (int)dead);
    snprintf(name[3], sizeof name[3], "ckpt-15.h5.tmp%d", (int)getppid());
    for (int i = 0; i < 4; i++) {
        char *p = path_join(b, name[i]);
        if (i == 2) {
            ensure(mkdir(p, 0755) == 0);
            char *inner = path_join(p, "config.json");
            FILE *f = fopen(inner, "w");
            ensure(f && fclose(f) == 0);
            free(inner);
        } else {
            FILE *f = fopen(p, "w");
            ensure(f && fputs("partial", f) >= 0 && fclose(f) == 0);
        }
        free(p);
    }
    cb.resume = 1;
    CHECK(train_run(&cb) == TRAIN_DONE, "the finished run resumed again");
    mb = metrics_without_timing(b);
    CHECK(strcmp(ma, mb) == 0, "... logs nothing more: its final evaluation was logged before its last checkpoint");
    free(ma);
    free(mb);
    int gone = 1;
    for (int i = 0; i < 3; i++) {
        char *p = path_join(b, name[i]);
        struct stat st;
        gone &= stat(p, &st) != 0;
        free(p);
    }
    char *live = path_join(b, name[3]);
    CHECK(gone && file_exists(live),
          "a dead process's checkpoint, metrics and export temps were removed at start-up; a live one's (%s) kept",
          name[3]);
    unlink(live);
    free(live);
    free(a);
    free(b);
}

/* --targets: a run learning the base model's choices trains (its eval lines still measure the labels and the
 * agreement), is stored in its checkpoints, and resuming it with other targets, or a labels run with these, is refused;
 * an unknown name is an error. A base-kl run of truncated heads stopped and resumed ends as the uninterrupted run. */
static void test_targets(const char *data, const char *val) {
    printf("--targets: base-argmax and base-kl runs, and resume refuses other targets\n");
    char *dir = tmp_path("argmax");
    TrainConfig c = config(dir, data, val);
    c.targets = "base-argmax";
    c.max_steps = 4;
    c.stop_after = 2;
    CHECK(train_run(&c) == TRAIN_STOPPED, "base-argmax run stopped after step 2");
    c.stop_after = 0;
    c.resume = 1;
    CHECK(train_run(&c) == TRAIN_DONE, "base-argmax run resumed to step 4");
    char *metrics = metrics_without_timing(dir);
    const char *last = strrchr(metrics, '{');
    double loss = json_number(last, "loss"), agree = json_number(last, "medusa0_base_top5");
    CHECK(strstr(last, "\"split\":\"eval\"") && isfinite(loss) && agree >= 0 && agree <= 1,
          "its final eval line: loss %.4f on the labels, medusa0_base_top5 %.4f", loss, agree);
    TrainConfig bad = c;
    bad.targets = "labels";
    EXPECT_FATAL(train_run(&bad), "targets is (absent) in this run but \"base-argmax\" in the checkpoint",
                 "resuming a base-argmax run with --targets labels is refused");
    char *labels_dir = tmp_path("b"); /* test_resume's labels run */
    bad = config(labels_dir, data, val);
    bad.resume = 1;
    bad.targets = "base-argmax";
    EXPECT_FATAL(train_run(&bad), "targets is \"base-argmax\" in this run but (absent) in the checkpoint",
                 "resuming a labels run with --targets base-argmax is refused");
    bad = c;
    bad.targets = "base-kl";
    EXPECT_FATAL(train_run(&bad), "targets is \"base-kl\" in this run but \"base-argmax\" in the checkpoint",
                 "resuming a base-argmax run with --targets base-kl is refused");
    char *kl_a = tmp_path("kl_a"), *kl_b = tmp_path("kl_b");
    TrainConfig ka = config(kl_a, data, val), kb = config(kl_b, data, val);
    ka.targets = kb.targets = "base-kl";
    ka.head_vocab = kb.head_vocab = 96;
    ka.max_steps = kb.max_steps = 4;
    kb.stop_after = 2;
    CHECK(train_run(&ka) == TRAIN_DONE && train_run(&kb) == TRAIN_STOPPED, "base-kl runs of 96-token heads");
    kb.stop_after = 0;
    kb.resume = 1;
    CHECK(train_run(&kb) == TRAIN_DONE, "the stopped base-kl run resumed to step 4");
    char *pa = path_join(kl_a, "ckpt-4.h5"), *pb = path_join(kl_b, "ckpt-4.h5");
    Loaded la, lb;
    load_ckpt(&la, pa);
    load_ckpt(&lb, pb);
    char *ma = metrics_without_timing(kl_a);
    double kl = json_number(ma, "loss"); /* the first line: step 2's training loss */
    CHECK(la.heads.shape.head_vocab == 96 &&
              memcmp(la.heads.params, lb.heads.params, sizeof(float) * la.heads.n_params) == 0 &&
              memcmp(la.adam.v, lb.adam.v, sizeof(float) * la.heads.n_params) == 0 && isfinite(kl) && kl > 0,
          "base-kl, stopped after step 2 and resumed: %zu params and moments at step 4 bitwise the uninterrupted run's "
          "(first logged KL %.4f)",
          la.heads.n_params, kl);
    free_ckpt(&la);
    free_ckpt(&lb);
    free(ma);
    free(pa);
    free(pb);
    free(kl_a);
    free(kl_b);
    bad.targets = "teacher";
    EXPECT_FATAL(train_run(&bad), "--targets teacher: expected labels, base-argmax or base-kl",
                 "an unknown --targets is fatal");
    free(metrics);
    free(labels_dir);
    free(dir);
}

static void test_diverge(const char *data) {
    printf("divergence: a huge learning rate makes the loss non-finite\n");
    char *dir = tmp_path("nan");
    TrainConfig c = config(dir, data, NULL);
    c.optim.lr = 1e30;
    c.optim.warmup_ratio = 0;
    c.save_every = 1;
    EXPECT_FATAL(train_run(&c), "training diverged", "non-finite loss stops the run with a clear message");
    char *p = path_join(dir, "ckpt-1.h5");
    Loaded l;
    load_ckpt(&l, p);
    CHECK(l.meta.step == 1 && !has_temp_files(dir), "the last checkpoint (step 1) is intact and loads");
    free_ckpt(&l);
    free(p);
    free(dir);
}

/* A copy of the fixture base model (in the scratch directory, as name) with a NaN written into element `index` of
 * `tensor`. */
static char *damaged_model(const char *name, const char *tensor, int index) {
    char *dir = tmp_path(name);
    ensure(mkdir(dir, 0755) == 0);
    size_t size;
    char *cfg = read_whole_file(BASE "/config.json", &size), *cfg_path = path_join(dir, "config.json");
    FILE *f = fopen(cfg_path, "wb");
    ensure(cfg && f && fwrite(cfg, 1, size, f) == size && fclose(f) == 0);
    char *w = read_whole_file(BASE "/model.safetensors", &size), *w_path = path_join(dir, "model.safetensors");
    uint64_t header = 0;
    memcpy(&header, w, 8);
    char *json = xcalloc(header + 1, 1);
    memcpy(json, w + 8, header);
    cJSON *h = cJSON_Parse(json);
    const cJSON *offsets = cJSON_GetObjectItem(cJSON_GetObjectItem(h, tensor), "data_offsets");
    ensure(cJSON_IsArray(offsets));
    float nan = NAN;
    memcpy(w + 8 + header + (size_t)cJSON_GetArrayItem(offsets, 0)->valuedouble + sizeof(float) * (size_t)index, &nan,
           sizeof nan);
    f = fopen(w_path, "wb");
    ensure(f && fwrite(w, 1, size, f) == size && fclose(f) == 0);
    cJSON_Delete(h);
    free(json);
    free(w);
    free(w_path);
    free(cfg);
    free(cfg_path);
    return dir;
}

/* An evaluation of finite heads on a damaged base model fails naming the model. */
static void eval_damaged_base(const char *path, const char *why, const TokenCache *vc, const char *what) {
    Model bad;
    model_load(&bad, path, backend_cpu(), DT_F32);
    MedusaHeads m;
    medusa_init(&m, backend_cpu(), (MedusaShape){2, 1, bad.config.hidden_size, V, 0});
    memset(m.params, 0, sizeof(float) * m.n_params);
    Trainer t;
    trainer_init(&t, &bad, &m, NULL, 0.8f, TARGETS_LABELS, 128, 64);
    t.base_name = path;
    char want[512];
    snprintf(want, sizeof want, "%s: %s", path, why);
    StepMetrics em;
    EXPECT_FATAL(evaluate(&t, vc, 128, 1, &em), want, "evaluating on a base model with a NaN %s names the model", what);
    trainer_free(&t);
    medusa_free(&m);
    model_free(&bad);
}

/* Non-finite values: an optimizer step that overflows the parameters (finite loss and gradient) is never saved or
 * exported, and never prunes a good checkpoint; a damaged checkpoint or base model is named as such, not taken for a
 * divergence; an evaluation never reports a number computed from NaN (heads or base model). */
static void test_nonfinite(const char *data, const char *val) {
    printf("non-finite values: overflowing updates, damaged checkpoints and models, NaN in evaluation\n");
    char *dir = tmp_path("overflow");
    TrainConfig c = config(dir, data, NULL);
    c.optim.lr = 1e39;
    c.optim.warmup_ratio = 0;
    c.max_steps = 1;
    EXPECT_FATAL(train_run(&c),
                 "training diverged: the heads' parameters or AdamW moments are not finite after optimizer step 1 (try "
                 "a lower --lr); ckpt-1.h5 not written; no checkpoint was written",
                 "--lr 1e39 --max-steps 1: the overflowing update is an error, not an all-NaN checkpoint");
    char *export_dir = path_join(dir, "medusa");
    CHECK(!checkpoint_latest(dir) && !dir_exists(export_dir) && !has_temp_files(dir),
          "no checkpoint, no export and no temp file written");
    free(export_dir);
    free(dir);

    /* lr 0 at step 0 (warm-up), 1e39 / 2 at step 1: ckpt-1 is good, step 2 overflows; --keep-checkpoints 1 keeps it */
    dir = tmp_path("overflow_keep");
    c = config(dir, data, NULL);
    c.optim.lr = 1e39;
    c.optim.warmup_ratio = 0.25; /* 2 warm-up steps of 8 */
    c.save_every = 1;
    c.keep_checkpoints = 1;
    char *p1 = path_join(dir, "ckpt-1.h5");
    char want[512];
    snprintf(want, sizeof want,
             "after optimizer step 2 (try a lower --lr); ckpt-2.h5 not written; the last checkpoint, "
             "%s, is intact",
             p1);
    EXPECT_FATAL(train_run(&c), want, "a good checkpoint, then an overflowing step: the error names the good one");
    char *latest = checkpoint_latest(dir);
    int finite = 0;
    if (latest && strcmp(latest, p1) == 0) {
        Loaded l;
        load_ckpt(&l, p1);
        finite = trainer_all_finite(l.heads.be, l.heads.params, l.heads.n_params);
        free_ckpt(&l);
    }
    CHECK(finite && !has_temp_files(dir), "with --keep-checkpoints 1, ckpt-1.h5 is kept (the latest), finite, no temp");
    free(latest);

    /* the divergence message after a checkpoint names it and is true */
    c = config(dir, data, NULL);
    c.optim.lr = 1e39;
    c.optim.warmup_ratio = 0.25;
    c.save_every = 1;
    c.keep_checkpoints = 1;
    c.resume = 1;
    EXPECT_FATAL(train_run(&c), want, "resumed: the same error, the same checkpoint kept");

    /* a damaged checkpoint (a NaN in its parameters) is named when resumed, not blamed on the learning rate */
    Loaded l;
    load_ckpt(&l, p1);
    l.heads.params[17] = NAN;
    checkpoint_save(p1, &l.heads, &l.adam, &l.meta);
    free_ckpt(&l);
    snprintf(want, sizeof want, "%s: the checkpoint's parameters or AdamW moments are not finite (a damaged file?)",
             p1);
    EXPECT_FATAL(train_run(&c), want, "resuming a checkpoint with a NaN parameter names the checkpoint");
    free(p1);
    free(dir);

    /* a damaged base model: NaN hidden states (final norm) or a NaN lm_head (the heads start as its copy) */
    char *bad_norm = damaged_model("nan_norm", "model.norm.weight", 5);
    char *bad_head = damaged_model("nan_lm_head", "lm_head.weight", 64 * 7 + 3);
    dir = tmp_path("nan_base");
    c = config(dir, data, NULL);
    c.model = bad_norm;
    snprintf(want, sizeof want, "%s: the base model's hidden states are not finite", bad_norm);
    EXPECT_FATAL(train_run(&c), want, "training on a base model with a NaN weight names the model, at step 1");
    rmdir(dir);
    c.model = bad_head;
    snprintf(want, sizeof want, "%s: the heads initialised from the base model's lm_head are not finite", bad_head);
    EXPECT_FATAL(train_run(&c), want, "a NaN in the base model's lm_head is named at start-up");

    /* evaluation: NaN heads, a NaN base lm_head, NaN base hidden states are errors naming their source; an all-NaN
     * head's logits are misses for every k */
    TokenCache vc;
    Model good;
    model_load(&good, BASE, backend_cpu(), DT_F32);
    token_cache_load(&vc, val, V);
    MedusaHeads m;
    medusa_init(&m, backend_cpu(), (MedusaShape){2, 1, good.config.hidden_size, V, 0});
    Rng rng;
    rng_seed(&rng, 3);
    medusa_init_from_base(&m, &good, &rng);
    Trainer t;
    trainer_init(&t, &good, &m, NULL, 0.8f, TARGETS_LABELS, 128, 64);
    t.base_name = BASE;
    t.heads_name = "heads.safetensors";
    StepMetrics em;
    evaluate(&t, &vc, 128, 1, &em);
    int64_t hits = em.hits[0][4];
    CHECK(isfinite(em.total_loss_sum) && hits > 0, "good heads: finite loss %.4f, head 0 top-5 hits %lld",
          em.total_loss_sum, (long long)hits);
    float saved = m.params[m.n_params - 1];
    m.params[m.n_params - 1] = NAN; /* one weight of head 1's lm_head: one logit per row */
    EXPECT_FATAL(evaluate(&t, &vc, 128, 1, &em), "heads.safetensors: the heads' parameters are not finite",
                 "one NaN weight in the heads: the evaluation fails naming the heads, reports nothing");
    m.params[m.n_params - 1] = saved;
    for (size_t i = 0; i < m.n_params; i++) m.params[i] = NAN;
    PackedBatch pb;
    Batcher batcher;
    batcher_init(&batcher, &vc, 128, 0, 0);
    pb = batcher_next(&batcher);
    model_forward(&good, &t.state, &pb, t.hidden, NULL);
    MedusaBatchStats st;
    MedusaBase mb = {.targets = TARGETS_LABELS};
    medusa_forward_backward(&m, &t.work, t.hidden, pb.tokens, pb.loss_mask, pb.seq_lens, pb.n_seqs, pb.n_tokens, &mb,
                            0.8f, 0.0f, &st);
    int64_t nan_hits = 0;
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < MEDUSA_TOPK; k++) nan_hits += st.hits[h][k];
    CHECK(nan_hits == 0 && st.valid[0] > 0 && !isfinite(st.total_loss),
          "all-NaN heads: 0 top-1..5 hits of %lld targets (a non-finite logit is a miss), loss %g",
          (long long)st.valid[0], st.total_loss);
    batcher_free(&batcher);
    trainer_free(&t);
    medusa_free(&m);
    model_free(&good);
    eval_damaged_base(bad_norm, "the base model's hidden states are not finite", &vc, "norm weight");
    eval_damaged_base(bad_head, "the base model's logits are not finite", &vc, "lm_head weight");
    token_cache_free(&vc);
    free(bad_norm);
    free(bad_head);
    free(dir);
}

/* SIGTERM in the middle of a long run: the step finishes, a checkpoint is written, exit status 130. */
static void test_signal(const char *data) {
    printf("signal: SIGTERM during training\n");
    char *dir = tmp_path("sig");
    TrainConfig c = config(dir, data, NULL);
    c.max_steps = 1000000;
    c.log_every = 1;
    c.save_every = 0;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        log_verbosity = 0;
        _exit(train_run(&c));
    }
    char *metrics = path_join(dir, "metrics.jsonl");
    for (int i = 0; i < 1000; i++) { /* wait until it is training */
        size_t size = 0;
        char *t = read_whole_file(metrics, &size);
        free(t);
        if (size > 0) break;
        usleep(10000);
    }
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    char *latest = checkpoint_latest(dir);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 130 && latest && !has_temp_files(dir),
          "exit status %d, checkpoint %s written", WIFEXITED(status) ? WEXITSTATUS(status) : -1,
          latest ? latest : "(none)");
    if (latest) {
        Loaded l;
        load_ckpt(&l, latest);
        CHECK(l.meta.step > 0, "it holds step %lld", (long long)l.meta.step);
        free_ckpt(&l);
    }
    free(latest);
    free(metrics);
    free(dir);
}

/* The heads' agreement with the base model's greedy choice, by brute force over the full logits: at each position t
 * with a target for head i, the argmax of the base model's logits at row t+1+i (argmax) within the top k of head i's
 * logits at t (medusa_logits); for a truncated head a choice outside its token map is a miss. want[i][k-1]; returns
 * the choices outside the map. */
static int brute_agreement(MedusaHeads *m, const float *hidden, const PackedBatch *b, const int *argmax,
                           int64_t want[][MEDUSA_TOPK]) {
    int K = m->shape.n_heads, Vh = m->shape.head_vocab, T = b->n_tokens, outside = 0;
    float *logits = xmalloc(sizeof(float) * (size_t)K * T * Vh);
    int32_t *targets = xmalloc(sizeof(int32_t) * (size_t)K * T);
    MedusaWork w;
    medusa_work_init(&w, m, T, T);
    medusa_logits(m, &w, hidden, T, logits);
    medusa_targets(K, b->tokens, b->loss_mask, b->seq_lens, b->n_seqs, T, targets);
    for (int h = 0; h < K; h++)
        for (int t = 0; t < T; t++) {
            if (targets[(size_t)h * T + t] < 0) continue; /* a target: row t + 1 + h lies in the batch */
            int choice = argmax[t + 1 + h], row = m->token_index ? m->token_index[choice] : choice;
            outside += row < 0;
            if (row < 0) continue;
            const float *l = logits + ((size_t)h * T + t) * Vh;
            int rank = 0;
            for (int v = 0; v < Vh; v++) rank += l[v] > l[row];
            for (int k = 0; k < MEDUSA_TOPK; k++) want[h][k] += rank <= k;
        }
    medusa_work_free(&w, m);
    free(logits);
    free(targets);
    return outside;
}

/* Evaluation's base top-1 on t+1, its logits ranked in chunks of 7 rows (borders inside both sequences) and of 512
 * (one chunk), against the argmax of model_forward's full [T, V] logits (golden-tested against transformers). Over
 * half the tokens are the base model's own greedy picks, so over half the targets are hits. The heads'
 * agreement with the base model's choices (medusa{i}_base_top{k}) from the same chunked pass, with full and truncated
 * heads, against brute_agreement. */
static void test_eval_base_top1(void) {
    printf("evaluation: the base model's top-1 and the heads' agreement with its choices, from logits in chunks\n");
    enum { T = 128 };
    Model base;
    model_load(&base, BASE, backend_cpu(), DT_F32);
    int vocab = base.config.vocab_size, H = base.config.hidden_size;
    int32_t tokens[T], seq_lens[2] = {60, T - 60};
    uint8_t loss_mask[T];
    Rng rng;
    rng_seed(&rng, 11);
    for (int i = 0; i < T; i++) tokens[i] = (int32_t)rng_below(&rng, (uint64_t)vocab), loss_mask[i] = i % 7 != 3;
    PackedBatch pb = {.n_tokens = T, .tokens = tokens, .n_seqs = 2, .seq_lens = seq_lens};
    ForwardState fs;
    forward_state_init(&fs, &base, T);
    float *hidden = xmalloc(sizeof(float) * (size_t)T * H);
    float *logits = xmalloc(sizeof(float) * (size_t)T * vocab);
    int argmax[T];
    /* the first sequence is the base's greedy continuation of 3 tokens, the second greedy at every other position;
     * every seventh token is masked (no target, for the base's top-1 and the heads alike) */
    for (int pass = 0; pass < T; pass++) { /* left to right: a token changes only the logits after it */
        model_forward(&base, &fs, &pb, hidden, logits);
        for (int i = 0; i < T; i++) argmax[i] = row_argmax(logits + (size_t)i * vocab, vocab);
        if (pass + 1 < T && pass + 1 != seq_lens[0] && (pass + 1 < seq_lens[0] ? pass >= 2 : pass % 2 == 0))
            tokens[pass + 1] = argmax[pass];
    }
    long want_valid = 0, want_hits = 0;
    for (int i = 0; i < T - 1; i++) {
        if (i == seq_lens[0] - 1 || !loss_mask[i + 1]) continue; /* a sequence's last token has no target */
        want_valid++;
        want_hits += argmax[i] == tokens[i + 1];
    }
    PackedBatch b = {.n_tokens = T, .tokens = tokens, .loss_mask = loss_mask, .n_seqs = 2, .seq_lens = seq_lens};
    int32_t map[128];
    for (int r = 0; r < 128; r++) map[r] = 3 * r; /* every third token */
    for (int truncated = 0; truncated < 2; truncated++) {
        MedusaHeads m;
        medusa_init(&m, backend_cpu(), (MedusaShape){3, 1, H, vocab, truncated ? 128 : 0});
        if (truncated) medusa_set_token_map(&m, map);
        /* head h's lm_head row for token v: the sum of the hidden states at the positions t (two in three) whose base
         * choice at t+1+h is v (ResBlocks with W = 0, b = 0 pass the hidden state on), a classifier fitted to part of
         * this batch, so the heads agree with the base on many rows but not on all */
        int32_t targets[3 * T];
        medusa_targets(3, tokens, loss_mask, seq_lens, 2, T, targets);
        memset(m.params, 0, sizeof(float) * m.n_params);
        for (int h = 0; h < 3; h++)
            for (int t = 0; t < T; t++) {
                if (targets[h * T + t] < 0 || t % 3 == 0) continue; /* a target: row t + 1 + h lies in the batch */
                int choice = argmax[t + 1 + h], row = truncated ? (choice % 3 ? -1 : choice / 3) : choice;
                if (row < 0) continue;
                float *lm = medusa_lm_head(&m, m.params, h) + (size_t)row * H;
                for (int i = 0; i < H; i++) lm[i] += hidden[(size_t)t * H + i];
            }
        int64_t want[3][MEDUSA_TOPK] = {{0}};
        int outside = brute_agreement(&m, hidden, &b, argmax, want);
        for (int c = 0; c < 2; c++) {
            int chunk = c == 0 ? 7 : 512;
            Trainer t;
            trainer_init(&t, &base, &m, NULL, 0.8f, TARGETS_LABELS, T, chunk);
            StepMetrics em;
            step_metrics_clear(&em);
            trainer_eval_batch(&t, &b, &em);
            if (!truncated)
                CHECK(
                    em.base_valid == want_valid && em.base_hits == want_hits && want_hits > want_valid / 2,
                    "logits in chunks of %d rows: base top-1 %lld of %lld targets, as the full logits' argmax (%ld of "
                    "%ld)",
                    chunk, (long long)em.base_hits, (long long)em.base_valid, want_hits, want_valid);
            int same = 1, informative = 1;
            for (int h = 0; h < 3; h++)
                for (int k = 0; k < MEDUSA_TOPK; k++) same &= em.agree[h][k] == want[h][k];
            for (int h = 0; h < 3; h++) informative &= want[h][0] > 0 && want[h][4] < em.valid[h];
            CHECK(same && informative && (!truncated || outside > 0),
                  "%s heads, chunks of %d rows: agreement with the base model's choice at t+1+i equals the brute force "
                  "over the full logits for every head and k (head 0 top-1..5: %lld %lld %lld %lld %lld of %lld%s)",
                  truncated ? "truncated (128-token map)" : "full-vocabulary", chunk, (long long)em.agree[0][0],
                  (long long)em.agree[0][1], (long long)em.agree[0][2], (long long)em.agree[0][3],
                  (long long)em.agree[0][4], (long long)em.valid[0],
                  truncated ? "; choices outside the map are misses" : "");
            trainer_free(&t);
        }
        medusa_free(&m);
    }
    forward_state_free(&fs, &base);
    free(hidden);
    free(logits);
    model_free(&base);
}

/* --cache-hidden: each conversation's hidden states computed once (alone through the base model) and reused in later
 * epochs. A run stopped and resumed equals the uninterrupted one bit for bit; the cached rows equal the packed batch's
 * forward pass within fp32 rounding (a batch's GEMMs sum each row in the same order, so usually exactly). */
static void test_cache_hidden(const char *data) {
    printf("--cache-hidden: 24 steps (3 epochs) vs 12 + resume + 12; evaluation from the cache vs the packed pass\n");
    char *a = tmp_path("cache_a"), *b = tmp_path("cache_b");
    TrainConfig ca = config(a, data, NULL), cb = config(b, data, NULL);
    ca.cache_hidden = cb.cache_hidden = 1;
    ca.max_steps = cb.max_steps = 24;
    ca.eval_every = cb.eval_every = 0;
    run_whole_and_split(&ca, &cb, 12); /* the resumed run fills its cache again */
    char *pa = path_join(a, "ckpt-24.h5"), *pb = path_join(b, "ckpt-24.h5");
    Loaded la, lb;
    load_ckpt(&la, pa);
    load_ckpt(&lb, pb);
    CHECK(la.meta.cursor[0] >= 2 && memcmp(la.heads.params, lb.heads.params, sizeof(float) * la.heads.n_params) == 0,
          "step 24 (epoch %lld): %zu params bitwise equal after the resume", (long long)la.meta.cursor[0],
          la.heads.n_params);
    cb.cache_hidden = 0;
    EXPECT_FATAL(train_run(&cb), "cache-hidden", "a run without --cache-hidden refuses to resume one with it");
    free_ckpt(&la);
    free_ckpt(&lb);

    /* a batch evaluated from the cache (first filling it, then reading it) and from the packed pass */
    TokenCache cache;
    Model base;
    model_load(&base, BASE, backend_cpu(), DT_F32);
    token_cache_load(&cache, data, base.config.vocab_size);
    MedusaHeads heads;
    medusa_init(&heads, backend_cpu(), (MedusaShape){2, 1, base.config.hidden_size, base.config.vocab_size, 0});
    Rng rng;
    rng_seed(&rng, 5);
    medusa_init_from_base(&heads, &base, &rng);
    Trainer plain, cached;
    trainer_init(&plain, &base, &heads, NULL, 0.8f, TARGETS_LABELS, 128, 64);
    trainer_init(&cached, &base, &heads, NULL, 0.8f, TARGETS_LABELS, 128, 64);
    trainer_cache_hidden(&cached, &cache);
    Batcher batcher;
    batcher_init(&batcher, &cache, 128, 3, 1);
    PackedBatch tb = batcher_next(&batcher);
    StepMetrics mp, m1, m2;
    step_metrics_clear(&mp), step_metrics_clear(&m1), step_metrics_clear(&m2);
    trainer_eval_batch(&plain, &tb, &mp);
    trainer_eval_batch(&cached, &tb, &m1);
    int64_t misses = cached.hidden_cache->misses;
    trainer_eval_batch(&cached, &tb, &m2);
    double err1 = fabs(m1.total_loss_sum - mp.total_loss_sum) / fabs(mp.total_loss_sum),
           err2 = fabs(m2.total_loss_sum - mp.total_loss_sum) / fabs(mp.total_loss_sum);
    CHECK(misses == tb.n_seqs && cached.hidden_cache->hits == tb.n_seqs && err1 <= 1e-6 && err2 <= 1e-6 &&
              m2.hits[0][0] == mp.hits[0][0],
          "a batch of %d conversations: computed once, then read from the cache; loss %.6f vs the packed pass's %.6f "
          "(rel. error %.1e, %.1e; tolerance 1e-6)",
          tb.n_seqs, m2.total_loss_sum, mp.total_loss_sum, err1, err2);
    batcher_free(&batcher);
    trainer_free(&plain);
    trainer_free(&cached);
    medusa_free(&heads);
    token_cache_free(&cache);
    model_free(&base);
    free(pa);
    free(pb);
    free(a);
    free(b);
}

int main(void) {
    log_verbosity = 0;
    make_tmpdir("/tmp/test_train_XXXXXX");
    char *data = write_cache("train.tokens.h5", 48, 1), *val = write_cache("val.tokens.h5", 8, 2);
    test_signal(data); /* first: libgomp's thread pool does not survive fork, so fork before OpenMP runs */
    test_resume(data, val);
    test_resume_off_grid(data, val);
    test_targets(data, val);
    test_diverge(data);
    test_nonfinite(data, val);
    test_eval_base_top1();
    test_cache_hidden(data);
    remove_tmpdir();
    free(data);
    free(val);
    return test_summary();
}
