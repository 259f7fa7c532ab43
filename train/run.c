#include "run.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/dist.h"
#include "../data/batcher.h"
#include "../formats/atomic_file.h"
#include "../model/medusa_io.h"

void train_config_defaults(TrainConfig *c) {
    memset(c, 0, sizeof *c);
    c->dev = (DeviceFlags)DEVICE_FLAGS_DEFAULT;
    c->export_dtype = "f32";
    c->targets = "labels";
    c->heads = 5;
    c->layers = 1;
    c->head_decay = 0.8;
    optim_defaults(&c->optim);
    c->epochs = 2;
    c->batch_tokens = 2048;
    c->grad_accum = 1;
    c->seed = 42;
    c->eval_every = 500;
    c->eval_batches = 20;
    c->save_every = 500;
    c->log_every = 10;
    c->keep_checkpoints = 2;
    c->pipeline = 1;
}

void metrics_to_json(const StepMetrics *m, int n_heads, cJSON *obj) {
    char key[48];
    cJSON_AddNumberToObject(obj, "loss", m->batches ? m->total_loss_sum / m->batches : NAN);
    for (int i = 0; i < n_heads; i++) {
        snprintf(key, sizeof key, "medusa%d_loss", i);
        cJSON_AddNumberToObject(obj, key, m->batches ? m->loss_sum[i] / m->batches : NAN);
        for (int k = 0; k < MEDUSA_TOPK; k++) {
            snprintf(key, sizeof key, "medusa%d_top%d", i, k + 1);
            cJSON_AddNumberToObject(obj, key, m->valid[i] ? (double)m->hits[i][k] / (double)m->valid[i] : 0.0);
        }
    }
}

void eval_metrics_to_json(const StepMetrics *m, int n_heads, cJSON *obj) {
    metrics_to_json(m, n_heads, obj);
    char key[48];
    for (int i = 0; i < n_heads; i++)
        for (int k = 0; k < MEDUSA_TOPK; k++) {
            snprintf(key, sizeof key, "medusa%d_base_top%d", i, k + 1);
            cJSON_AddNumberToObject(obj, key, m->valid[i] ? (double)m->agree[i][k] / (double)m->valid[i] : 0.0);
        }
    cJSON_AddNumberToObject(obj, "base_top1", m->base_valid ? (double)m->base_hits / (double)m->base_valid : 0);
}

void evaluate(Trainer *t, const TokenCache *cache, int batch_tokens, int max_batches, StepMetrics *out) {
    Batcher b;
    batcher_init(&b, cache, batch_tokens, 0, 0);
    int64_t n = batcher_epoch_batches(&b, 0);
    if (max_batches > 0 && max_batches < n) n = max_batches;
    step_metrics_clear(out);
    for (int64_t i = 0; i < n; i++) {
        PackedBatch batch = batcher_next(&b);
        if (i % dist_pipelines() != dist_pipeline()) continue; /* data-parallel ranks share the batches */
        batch.convs = NULL; /* the hidden-state cache holds the training conversations, not these */
        trainer_eval_batch(t, &batch, out);
    }
    batcher_free(&b);
    step_metrics_sum_ranks(out);
}

/* ---- run state ---- */

/* A checkpoint's config_json holds, under this key beside the run's settings, what metrics.jsonl needs to go on as an
 * uninterrupted run's: the steps since the last "train" line (their sums, and the seconds they took), so that a run
 * resumed between two log steps (--save-every or a stop off the --log-every grid) logs the same lines, and the step of
 * the last evaluation (the final one is logged before the last checkpoint is written; a run killed after it does not
 * log it twice). Sums of losses are C99 hex floats ("%a"), exact. */
#define LOG_WINDOW_KEY "log window"

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

/* The settings a resumed run must share with the checkpoint, named as their flags. */
static char *identity_json(const TrainConfig *c, const TokenCache *data) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "heads", c->heads);
    cJSON_AddNumberToObject(j, "layers", c->layers);
    cJSON_AddNumberToObject(j, "head-decay", c->head_decay);
    cJSON_AddNumberToObject(j, "lr", c->optim.lr);
    cJSON_AddNumberToObject(j, "weight-decay", c->optim.weight_decay);
    cJSON_AddNumberToObject(j, "warmup-ratio", c->optim.warmup_ratio);
    cJSON_AddNumberToObject(j, "max-grad-norm", c->optim.max_grad_norm);
    cJSON_AddNumberToObject(j, "epochs", c->epochs);
    cJSON_AddNumberToObject(j, "max-steps", c->max_steps);
    cJSON_AddNumberToObject(j, "batch-tokens", c->batch_tokens);
    /* the batches of a step over all ranks: a run resumes on any ranks x --grad-accum with the same product */
    cJSON_AddNumberToObject(j, "grad-accum", c->grad_accum * dist_pipelines());
    cJSON_AddNumberToObject(j, "seed", c->seed);
    cJSON_AddNumberToObject(j, "data tokens", (double)data->n_tokens);
    cJSON_AddNumberToObject(j, "data conversations", (double)data->n_convs);
    if (c->head_vocab > 0) cJSON_AddNumberToObject(j, "head-vocab", c->head_vocab); /* absent: full, as before */
    if (c->cache_hidden) cJSON_AddBoolToObject(j, "cache-hidden", 1); /* each conversation's own forward pass */
    if (strcmp(c->targets, "labels") != 0) cJSON_AddStringToObject(j, "targets", c->targets); /* absent: labels */
    cJSON_AddStringToObject(j, "model", c->model);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

/* Every setting except the model path (a moved model is fine: its shape is checked) must match, including those
 * written only when not at their default (absent on one side). */
static void check_resume_config(const char *ckpt, const char *saved, const char *now) {
    cJSON *a = cJSON_Parse(saved), *b = cJSON_Parse(now);
    if (!cJSON_IsObject(a)) fatal("%s: the checkpoint's run configuration is not valid JSON", ckpt);
    for (int side = 0; side < 2; side++)
        for (cJSON *it = (side ? a : b)->child; it; it = it->next) {
            if (strcmp(it->string, "model") == 0 || strcmp(it->string, LOG_WINDOW_KEY) == 0) continue;
            cJSON *other = cJSON_GetObjectItemCaseSensitive(side ? b : a, it->string);
            if (other && cJSON_Compare(other, it, 1)) continue;
            char *theirs = other ? cJSON_PrintUnformatted(other) : xstrdup("(absent)"),
                 *ours = cJSON_PrintUnformatted(it);
            fatal("%s: cannot resume: %s is %s in this run but %s in the checkpoint%s; resume with the same settings "
                  "and data, or start a new run with another --out",
                  ckpt, it->string, side ? theirs : ours, side ? ours : theirs,
                  strcmp(it->string, "grad-accum") == 0
                      ? " (the batches of a step over every rank: data-parallel ranks or pipelines x --grad-accum)"
                      : "");
        }
    cJSON_Delete(a);
    cJSON_Delete(b);
}

static int64_t line_step(const char *line) {
    cJSON *j = cJSON_Parse(line);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "step");
    int64_t step = cJSON_IsNumber(s) ? (int64_t)s->valuedouble : INT64_MAX;
    cJSON_Delete(j);
    return step;
}

/* Opens metrics.jsonl for appending; on resume first drops the lines logged after the checkpoint's step
 * (a run killed after its last checkpoint logged steps the resumed run will log again). The trimmed file replaces the
 * old one atomically: a kill during the rewrite leaves the old history whole. */
static FILE *open_metrics(const char *path, int64_t resume_step) {
    if (resume_step >= 0) {
        size_t size;
        char *text = read_whole_file(path, &size);
        if (text) {
            char *kept = xmalloc(size + 2); /* a last line without its newline gets one */
            size_t n = 0;
            for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
                if (line_step(line) <= resume_step) n += (size_t)sprintf(kept + n, "%s\n", line);
            write_file_atomic(path, kept, n);
            free(kept);
            free(text);
        }
    }
    FILE *f = fopen(path, resume_step >= 0 ? "a" : "w");
    if (!f) fatal("%s: cannot open for writing: %s", path, strerror(errno));
    return f;
}

static void write_metrics_line(FILE *f, cJSON *obj) {
    if (!f) { /* a rank other than 0 */
        cJSON_Delete(obj);
        return;
    }
    char *s = cJSON_PrintUnformatted(obj);
    fprintf(f, "%s\n", s);
    fflush(f);
    free(s);
    cJSON_Delete(obj);
}

/* Deletes all but the newest `keep` checkpoints of the run directory. */
static void prune_checkpoints(const char *dir, int keep) {
    if (keep <= 0) return;
    for (;;) {
        DIR *d = opendir(dir);
        if (!d) return;
        long oldest = -1;
        int count = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            long step;
            char tail[8];
            if (sscanf(e->d_name, "ckpt-%ld.%7s", &step, tail) == 2 && strcmp(tail, "h5") == 0) {
                count++;
                if (oldest < 0 || step < oldest) oldest = step;
            }
        }
        closedir(d);
        if (count <= keep) return;
        char name[64];
        snprintf(name, sizeof name, "ckpt-%ld.h5", oldest);
        char *p = path_join(dir, name);
        if (unlink(p) != 0) log_warn("%s: cannot remove old checkpoint: %s", p, strerror(errno));
        free(p);
    }
}

/* A temp file or directory NAME.tmp<pid> (atomic_file.h's, medusa_export's) left by a process that no longer runs:
 * a kill inside a checkpoint write or an export. This process has written nothing yet, so its own pid counts as gone.
 */
static int stale_temp(const char *name) {
    const char *t = NULL;
    for (const char *p = strstr(name, ".tmp"); p; p = strstr(p + 1, ".tmp")) t = p;
    if (!t || !t[4]) return 0;
    char *end;
    long pid = strtol(t + 4, &end, 10);
    if (*end || pid <= 0) return 0;
    return pid == (long)getpid() || (kill((pid_t)pid, 0) != 0 && errno == ESRCH);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* Removes the stale temp files and directories in dir and in its export (dir/medusa), naming each. */
static void remove_stale_temps(const char *dir) {
    char *export_dir = path_join(dir, "medusa");
    const char *dirs[2] = {dir, export_dir};
    for (int i = 0; i < 2; i++) {
        DIR *d = opendir(dirs[i]);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (!stale_temp(e->d_name)) continue;
            char *p = path_join(dirs[i], e->d_name);
            if (nftw(p, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
                fatal("%s: cannot remove this temp file of an interrupted run: %s", p, strerror(errno));
            log_info("removed %s, left by an interrupted run", p);
            free(p);
        }
        if (d) closedir(d);
    }
    free(export_dir);
}

/* A training run: what its phases (run_open, run_steps, run_finish, run_close) share. */
typedef struct {
    const TrainConfig *c;
    Startup s;
    Model base;
    TokenCache data, val;
    Batcher batcher;
    OptimConfig oc; /* c->optim with the run's total steps */
    MedusaHeads heads;
    Trainer t;
    Rng rng;
    char *config_json; /* the settings a resume must share */
    char *resume_path; /* the checkpoint continued, or NULL */
    FILE *metrics;     /* metrics.jsonl */
    char *metrics_path;
    int64_t step; /* optimizer steps done */
    int64_t last_eval, last_save;
    double t_start; /* when the run began, for --time-budget */
    double tokens_seen, train_seconds;
    double save_seconds; /* duration of the last save */
    char note[4200];     /* what a divergence leaves behind (Trainer.diverge_note) */
    StepMetrics window;  /* the steps since the last "train" line of metrics.jsonl */
    double window_start, window_base_flops;
    int64_t cursor[BATCHER_CURSOR_WORDS]; /* the data cursor after the steps done, which a checkpoint records (the
                                           * batcher runs a step ahead: run_steps) */
} Run;

static cJSON *exact(double x) {
    char text[40];
    snprintf(text, sizeof text, "%a", x);
    return cJSON_CreateString(text);
}

static cJSON *window_to_json(const Run *r) {
    const StepMetrics *w = &r->window;
    int K = r->c->heads;
    double valid[64], computed[64], hits[64 * MEDUSA_TOPK];
    for (int i = 0; i < K; i++) {
        valid[i] = (double)w->valid[i], computed[i] = (double)w->computed[i];
        for (int k = 0; k < MEDUSA_TOPK; k++) hits[i * MEDUSA_TOPK + k] = (double)w->hits[i][k];
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "batches", w->batches);
    cJSON_AddNumberToObject(j, "tokens", (double)w->tokens);
    cJSON_AddItemToObject(j, "total_loss_sum", exact(w->total_loss_sum));
    cJSON *loss_sum = cJSON_AddArrayToObject(j, "loss_sum");
    for (int i = 0; i < K; i++) cJSON_AddItemToArray(loss_sum, exact(w->loss_sum[i]));
    cJSON_AddItemToObject(j, "valid", cJSON_CreateDoubleArray(valid, K));
    cJSON_AddItemToObject(j, "computed", cJSON_CreateDoubleArray(computed, K));
    cJSON_AddItemToObject(j, "hits", cJSON_CreateDoubleArray(hits, K * MEDUSA_TOPK));
    cJSON_AddItemToObject(j, "base_flops", exact(r->window_base_flops));
    cJSON_AddNumberToObject(j, "seconds", now_seconds() - r->window_start);
    cJSON_AddNumberToObject(j, "last_eval", (double)r->last_eval);
    return j;
}

static double window_number(const cJSON *j, const char *key, int index, const char *path) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
    if (index >= 0) x = cJSON_IsArray(x) ? cJSON_GetArrayItem(x, index) : NULL;
    char *end = NULL;
    double v = cJSON_IsNumber(x) ? x->valuedouble : cJSON_IsString(x) ? strtod(x->valuestring, &end) : NAN;
    if ((cJSON_IsString(x) && (end == x->valuestring || *end)) || isnan(v))
        fatal("%s: the checkpoint's log window has no valid \"%s\"", path, key);
    return v;
}

/* Restores the log window a checkpoint saved (none in one written before it was kept: the window starts empty). */
static void window_from_json(Run *r, const char *config_json, const char *path) {
    cJSON *cfg = cJSON_Parse(config_json);
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(cfg, LOG_WINDOW_KEY);
    StepMetrics *w = &r->window;
    step_metrics_clear(w);
    r->window_base_flops = 0;
    r->window_start = now_seconds();
    if (j) {
        w->batches = (int)window_number(j, "batches", -1, path);
        w->tokens = (int64_t)window_number(j, "tokens", -1, path);
        w->total_loss_sum = window_number(j, "total_loss_sum", -1, path);
        for (int i = 0; i < r->c->heads; i++) {
            w->loss_sum[i] = window_number(j, "loss_sum", i, path);
            w->valid[i] = (int64_t)window_number(j, "valid", i, path);
            w->computed[i] = (int64_t)window_number(j, "computed", i, path);
            for (int k = 0; k < MEDUSA_TOPK; k++)
                w->hits[i][k] = (int64_t)window_number(j, "hits", i * MEDUSA_TOPK + k, path);
        }
        r->window_base_flops = window_number(j, "base_flops", -1, path);
        r->window_start -= window_number(j, "seconds", -1, path);
        r->last_eval = (int64_t)window_number(j, "last_eval", -1, path);
    }
    cJSON_Delete(cfg);
}

/* The last checkpoint written or resumed, for the divergence message. */
static void note_checkpoint(Run *r, const char *path) {
    if (path) snprintf(r->note, sizeof r->note, "the last checkpoint, %s, is intact", path);
    else snprintf(r->note, sizeof r->note, "no checkpoint was written");
    r->t.diverge_note = r->note;
}

/* What a checkpoint holds besides the metadata: parameters and both AdamW moments, every value finite. */
static int state_finite(const Run *r) {
    const MedusaHeads *m = &r->heads;
    return trainer_all_finite(m->be, m->params, m->n_params) && trainer_all_finite(m->be, r->t.adam.m, m->n_params) &&
           trainer_all_finite(m->be, r->t.adam.v, m->n_params);
}

/* An optimizer step can overflow the parameters with a finite loss and gradient: no such state is ever saved,
 * exported or evaluated, so the checkpoints kept, and the one a divergence message names, are all finite. */
static void check_diverged(Run *r, const char *skipped) {
    if (r->heads.params && !state_finite(r)) /* a pipeline stage before the last holds none */
        fatal("training diverged: the heads' parameters or AdamW moments are not finite after optimizer step %lld (try "
              "a lower --lr); %s; %s",
              (long long)r->step, skipped, r->note);
}

static void save(Run *r, int64_t step) {
    r->last_save = step;
    if (dist_rank() != dist_lead_rank()) return; /* the ranks hold the same state: the lead writes it */
    CheckpointMeta meta = {0};
    meta.step = step;
    memcpy(meta.rng, r->rng.s, sizeof meta.rng);
    memcpy(meta.cursor, r->cursor, sizeof r->cursor);
    meta.metrics[0] = r->tokens_seen;
    meta.metrics[1] = r->train_seconds;
    cJSON *cfg = cJSON_Parse(r->config_json);
    cJSON_AddItemToObject(cfg, LOG_WINDOW_KEY, window_to_json(r));
    meta.config_json = cJSON_PrintUnformatted(cfg);
    cJSON_Delete(cfg);
    char name[64];
    snprintf(name, sizeof name, "ckpt-%lld.h5", (long long)step);
    char *path = path_join(r->c->out, name);
    char skipped[80];
    snprintf(skipped, sizeof skipped, "%s not written", name);
    check_diverged(r, skipped);
    double t0 = now_seconds();
    checkpoint_save(path, &r->heads, &r->t.adam, &meta);
    r->save_seconds = now_seconds() - t0;
    log_info("saved %s", path);
    note_checkpoint(r, path);
    free(path);
    free(meta.config_json);
    prune_checkpoints(r->c->out, r->c->keep_checkpoints);
}

static DType export_dtype(const char *name) {
    if (strcmp(name, "f32") == 0) return DT_F32;
    if (strcmp(name, "bf16") == 0) return DT_BF16;
    fatal("--export-dtype %s: expected f32 or bf16", name);
}

typedef struct {
    int64_t count;
    int32_t id;
} TokenCount;

static int by_count_desc(const void *a, const void *b) {
    const TokenCount *x = a, *y = b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static int by_id(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The n most frequent trained targets (loss_mask set) of the cache, ties to the smaller id, always with
 * EOS, sorted by id into map; returns the share of trained targets the map covers. */
static double frequent_targets(const TokenCache *data, int V, int eos, int n, int32_t *map) {
    TokenCount *c = xcalloc((size_t)V, sizeof(TokenCount));
    for (int v = 0; v < V; v++) c[v].id = v;
    int64_t total = 0, covered = 0;
    for (int64_t i = 0; i < data->n_tokens; i++)
        if (data->loss_mask[i]) c[data->tokens[i]].count++, total++;
    qsort(c, (size_t)V, sizeof(TokenCount), by_count_desc);
    int has_eos = eos < 0 || eos >= V;
    for (int i = 0; i < n; i++) {
        map[i] = c[i].id;
        covered += c[i].count;
        has_eos |= c[i].id == eos;
    }
    if (!has_eos) { /* EOS takes the last place */
        for (int i = 0; i < V; i++)
            if (c[i].id == eos) covered += c[i].count - c[n - 1].count;
        map[n - 1] = eos;
    }
    qsort(map, (size_t)n, sizeof(int32_t), by_id);
    free(c);
    return total ? (double)covered / (double)total : 1.0;
}

/* --targets: labels, base-argmax, base-kl */
static TargetKind target_kind(const char *name) {
    if (strcmp(name, "labels") == 0) return TARGETS_LABELS;
    if (strcmp(name, "base-argmax") == 0) return TARGETS_BASE_ARGMAX;
    if (strcmp(name, "base-kl") == 0) return TARGETS_BASE_KL;
    fatal("--targets %s: expected labels, base-argmax or base-kl", name);
}

static void validate(const TrainConfig *c) {
    if (!c->model || !c->data || !c->out) fatal("--model, --data and --out are required (see --help)");
    if (c->heads < 1 || c->heads > 64) fatal("--heads %d: expected 1..64", c->heads);
    if (c->layers < 0 || c->layers > 16) fatal("--layers %d: expected 0..16", c->layers);
    if (c->batch_tokens < 16) fatal("--batch-tokens %d: expected at least 16", c->batch_tokens);
    if (c->grad_accum < 1) fatal("--grad-accum %d: expected at least 1", c->grad_accum);
    if (c->epochs < 1 && c->max_steps < 1) fatal("--epochs %d: expected at least 1 (or --max-steps)", c->epochs);
    if (!(c->optim.lr > 0) || !(c->optim.warmup_ratio >= 0 && c->optim.warmup_ratio <= 1) ||
        !(c->optim.weight_decay >= 0))
        fatal("--lr must be > 0, --warmup-ratio in [0, 1], --weight-decay >= 0");
    if (c->log_every < 1) fatal("--log-every %d: expected at least 1", c->log_every);
    if (c->head_vocab < 0) fatal("--head-vocab %d: expected 0 (full vocabulary) or a token count", c->head_vocab);
    if (c->pipeline < 1) fatal("--pipeline %d: expected at least 1", c->pipeline);
    if (c->pipeline > 1 && c->cache_hidden)
        fatal("--cache-hidden with --pipeline %d: the hidden-state cache needs the whole base in one process",
              c->pipeline);
    export_dtype(c->export_dtype);
    target_kind(c->targets);
}

MemoryPlanInput pipeline_plan(const Startup *s, const MemoryPlanInput *whole, int stages) {
    ModelPart *part = xmalloc(sizeof *part * (size_t)stages);
    MemoryPlan *plan = xmalloc(sizeof *plan * (size_t)stages);
    memory_plan_stages(&s->config, whole, stages, part, plan);
    log_info("pipeline of %d stages over %d ranks (%d pipeline%s), the heads on the last stage:", stages, dist_size(),
             dist_pipelines(), dist_pipelines() > 1 ? "s" : "");
    double unit = plan[stages - 1].total >= 1 << 30 ? 1 << 30 : 1 << 20; /* GiB, or MiB for a small model */
    for (int i = 0; i < stages; i++)
        log_info("  stage %d: layers %d-%d%s%s, %.2f %s planned (base weights %.2f)", i, part[i].layer_begin,
                 part[i].layer_end - 1, i == 0 ? " + embedding" : "", i == stages - 1 ? " + lm_head + heads" : "",
                 plan[i].total / unit, unit > 1 << 20 ? "GiB" : "MiB", plan[i].base_weights / unit);
    MemoryPlanInput in = memory_plan_stage_input(&s->config, whole, part[dist_stage()]);
    free(part);
    free(plan);
    return in;
}

/* A resumed pipeline: the stages before the last hold no heads and read no checkpoint; the last stage, which read
 * it, gives them where the run is (its step and data cursor; the random state only initialises the heads) */
static void resume_stage(Run *r) {
    if (dist_stages() == 1) return;
    int64_t words[BATCHER_CURSOR_WORDS];
    if (r->heads.params) batcher_save_cursor(&r->batcher, words);
    dist_bcast(DIST_PIPE, words, sizeof words, dist_stages() - 1);
    batcher_restore_cursor(&r->batcher, words);
    dist_bcast(DIST_PIPE, &r->step, sizeof r->step, dist_stages() - 1);
    r->last_save = r->step;
}

/* Start-up: the run directory checked, the memory planned, the base model, data, heads and optimizer made, and on
 * --resume the checkpoint's state restored. */
static void run_open(Run *r, const TrainConfig *c) {
    validate(c);
    dist_set_stages(c->pipeline);
    memset(r, 0, sizeof *r);
    r->c = c;
    r->t_start = now_seconds();
    startup_begin(&r->s, &c->dev, c->model);
    if (mkdir(c->out, 0755) != 0 && errno != EEXIST)
        fatal("%s: cannot create the run directory: %s", c->out, strerror(errno));
    if (dist_rank() == dist_lead_rank()) remove_stale_temps(c->out); /* its own, from a run that was killed */
    r->resume_path = checkpoint_latest(c->out);
    if (c->resume && !r->resume_path) fatal("%s: --resume given but the directory holds no ckpt-<step>.h5", c->out);
    if (!c->resume && r->resume_path)
        fatal("%s: the run directory already holds checkpoints (%s); pass --resume to continue it or choose another "
              "--out",
              c->out, r->resume_path);

    const ModelConfig *mc = &r->s.config;
    int Vh = c->head_vocab > 0 && c->head_vocab < mc->vocab_size ? c->head_vocab : mc->vocab_size;
    TargetKind targets = target_kind(c->targets);
    MemoryPlanInput mi = memory_plan_training(r->s.dtype, c->heads, c->layers, Vh, c->batch_tokens, r->s.logits_chunk,
                                              1, c->val != NULL, targets);
    mi.micro_batches = c->grad_accum;
    mi.hidden_ahead = c->cache_hidden && r->s.be->upload_ahead; /* trainer_cache_hidden's second buffer */
    if (c->pipeline > 1) mi = pipeline_plan(&r->s, &mi, c->pipeline);
    startup_load_base(&r->s, &mi, log_verbosity >= 1, &r->base);
    int has_heads = model_part_last(&r->base); /* the last stage of a pipeline holds the heads */
    int H = r->base.config.hidden_size, V = r->base.config.vocab_size;
    token_cache_load(&r->data, c->data, V);
    token_cache_check_model(&r->data, c->data, c->model);
    if (c->val) {
        token_cache_load(&r->val, c->val, V);
        token_cache_check_model(&r->val, c->val, c->model);
    }

    batcher_init(&r->batcher, &r->data, c->batch_tokens, (uint64_t)c->seed, 1);
    int64_t micro_total = 0;
    for (int e = 0; e < c->epochs; e++) micro_total += batcher_epoch_batches(&r->batcher, e);
    r->oc = c->optim;
    int64_t per_step = (int64_t)c->grad_accum * dist_pipelines(); /* batches of one optimizer step, all ranks' */
    r->oc.total_steps =
        c->max_steps > 0 ? c->max_steps : (int)(micro_total / per_step > 0 ? micro_total / per_step : 1);

    rng_seed(&r->rng, (uint64_t)c->seed);
    if (has_heads) {
        medusa_init(&r->heads, r->s.be, (MedusaShape){c->heads, c->layers, H, V, Vh});
        if (r->heads.token_map) {
            double coverage = frequent_targets(&r->data, V, r->base.config.eos_token_id, Vh, r->heads.token_map);
            medusa_set_token_map(&r->heads, r->heads.token_map);
            log_info("heads predict the %d most frequent target tokens: %.2f%% of the trained targets", Vh,
                     100 * coverage);
        }
        medusa_init_from_base(&r->heads, &r->base, &r->rng);
        startup_ready_heads(&r->base, &r->heads);
    }
    trainer_init(&r->t, &r->base, has_heads ? &r->heads : NULL, &r->oc, (float)c->head_decay, targets, c->batch_tokens,
                 r->s.logits_chunk);
    if (c->cache_hidden) trainer_cache_hidden(&r->t, &r->data);
    r->t.base_name = c->model;
    note_checkpoint(r, NULL);

    r->config_json = identity_json(c, &r->data);
    dist_check_same("settings and data", r->config_json);
    r->last_eval = r->last_save = -1;
    if (r->resume_path && has_heads) {
        CheckpointMeta meta = {0};
        checkpoint_load(r->resume_path, &r->heads, &r->t.adam, &meta);
        if (!state_finite(r))
            fatal("%s: the checkpoint's parameters or AdamW moments are not finite (a damaged file?); resume from an "
                  "earlier checkpoint (move this one away) or start a new run",
                  r->resume_path);
        check_resume_config(r->resume_path, meta.config_json, r->config_json);
        window_from_json(r, meta.config_json, r->resume_path);
        int64_t words[BATCHER_CURSOR_WORDS];
        memcpy(words, meta.cursor, sizeof words);
        batcher_restore_cursor(&r->batcher, words);
        memcpy(r->rng.s, meta.rng, sizeof r->rng.s);
        r->step = r->last_save = meta.step;
        r->tokens_seen = meta.metrics[0];
        r->train_seconds = meta.metrics[1];
        free(meta.config_json);
        log_info("resumed from %s at step %lld of %d", r->resume_path, (long long)r->step, r->oc.total_steps);
        note_checkpoint(r, r->resume_path);
    } else if (has_heads && !state_finite(r)) { /* the heads start as copies of the base model's lm_head */
        fatal("%s: the heads initialised from the base model's lm_head are not finite: the model holds NaN or infinite "
              "weights (a damaged model file?)",
              c->model);
    }
    if (r->resume_path) resume_stage(r);
    log_info("training %d heads x %d layers on %lld conversations (%lld tokens): %d steps of %d x %d tokens, lr %g, "
             "targets: %s",
             c->heads, c->layers, (long long)r->data.n_convs, (long long)r->data.n_tokens, r->oc.total_steps,
             c->grad_accum * dist_pipelines(), c->batch_tokens, c->optim.lr, c->targets);
    if (dist_pipelines() > 1)
        log_info("data parallel over %d %s: each takes %d of every step's %d batches", dist_pipelines(),
                 c->pipeline > 1 ? "pipelines" : "ranks", c->grad_accum, c->grad_accum * dist_pipelines());
    if (!r->resume_path) r->window_start = now_seconds();
    r->metrics_path = path_join(c->out, "metrics.jsonl");
    if (dist_rank() == dist_lead_rank()) r->metrics = open_metrics(r->metrics_path, r->resume_path ? r->step : -1);
}

/* An evaluation on --val, logged as an "eval" line of metrics.jsonl (epoch: where training is, or < 0 to leave out). */
static void run_eval(Run *r, double epoch) {
    check_diverged(r, "no evaluation");
    StepMetrics em;
    evaluate(&r->t, &r->val, r->c->batch_tokens, r->c->eval_batches, &em);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "split", "eval");
    cJSON_AddNumberToObject(o, "step", (double)r->step);
    if (epoch >= 0) cJSON_AddNumberToObject(o, "epoch", epoch);
    eval_metrics_to_json(&em, r->c->heads, o);
    write_metrics_line(r->metrics, o);
    r->last_eval = r->step;
}

/* The "train" line of metrics.jsonl for the steps since the last one (window, over dt seconds, base_flops of base
 * forward passes), and the progress bar's summary of it into extra. */
static void log_window(Run *r, const StepMetrics *window, double dt, double base_flops, double epoch, double lr,
                       double norm, char *extra, size_t extra_size) {
    const TrainConfig *c = r->c;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "split", "train");
    cJSON_AddNumberToObject(o, "step", (double)r->step);
    cJSON_AddNumberToObject(o, "epoch", epoch);
    cJSON_AddNumberToObject(o, "lr", lr);
    cJSON_AddNumberToObject(o, "grad_norm", norm);
    metrics_to_json(window, c->heads, o);
    double flops = base_flops; /* the base forward's, and each head's on the rows it trained */
    for (int i = 0; i < c->heads; i++) flops += medusa_train_flops(&r->heads.shape, window->computed[i]);
    double tflops = dt > 0 ? flops / dt / 1e12 : 0;
    double peak = model_peak_flops(&r->base);
    cJSON_AddNumberToObject(o, "tokens_per_s", dt > 0 ? (double)window->tokens / dt : 0);
    cJSON_AddNumberToObject(o, "tflops_per_s", tflops);
    if (peak > 0) cJSON_AddNumberToObject(o, "mfu", tflops * 1e12 / peak);
    cJSON_AddNumberToObject(o, "elapsed_s", r->train_seconds);
    int n = snprintf(extra, extra_size, "loss %.3f top1", window->total_loss_sum / window->batches);
    for (int i = 0; i < c->heads && n < (int)extra_size - 16; i++)
        n += snprintf(extra + n, extra_size - (size_t)n, " %.2f",
                      window->valid[i] ? (double)window->hits[i][0] / (double)window->valid[i] : 0.0);
    n += snprintf(extra + n, extra_size - (size_t)n, " | %.0f tok/s, %.3g TFLOP/s",
                  dt > 0 ? (double)window->tokens / dt : 0, tflops);
    if (peak > 0 && n < (int)extra_size)
        snprintf(extra + n, extra_size - (size_t)n, " (%.0f%% MFU)", 100 * tflops * 1e12 / peak);
    write_metrics_line(r->metrics, o);
}

/* A step's batches: this rank's micro-batches in their own storage (the batcher reuses its), the base model's FLOPs on
 * every rank's, and the data cursor after them */
typedef struct {
    int32_t *tokens, *seq_lens;
    uint8_t *loss_mask;
    int64_t *convs;
    PackedBatch *micro;
    double base_flops;
    int64_t cursor[BATCHER_CURSOR_WORDS];
} StepBatches;

static void step_batches_init(StepBatches *s, int micro_batches, int batch_tokens) {
    size_t n = (size_t)micro_batches * (size_t)batch_tokens;
    s->tokens = xmalloc(sizeof *s->tokens * n);
    s->seq_lens = xmalloc(sizeof *s->seq_lens * n);
    s->loss_mask = xmalloc(n);
    s->convs = xmalloc(sizeof *s->convs * n);
    s->micro = xmalloc(sizeof *s->micro * (size_t)micro_batches);
}

static void step_batches_free(StepBatches *s) {
    free(s->tokens);
    free(s->seq_lens);
    free(s->loss_mask);
    free(s->convs);
    free(s->micro);
}

/* The next step's A x ranks batches, in the data order of one process with that accumulation: rank k takes the k-th
 * run of A (every rank reads them all, so the data order and the resume cursor are the ranks' own) */
static void fetch_step(Run *r, StepBatches *s) {
    int A = r->c->grad_accum;
    size_t BT = (size_t)r->c->batch_tokens;
    s->base_flops = 0;
    for (int i = 0; i < A * dist_pipelines(); i++) {
        PackedBatch b = batcher_next(&r->batcher);
        s->base_flops += model_forward_flops(&r->base.config, b.n_tokens, b.seq_lens, b.n_seqs);
        if (i / A != dist_pipeline()) continue;
        size_t at = (size_t)(i % A) * BT;
        memcpy(s->tokens + at, b.tokens, sizeof(int32_t) * (size_t)b.n_tokens);
        memcpy(s->loss_mask + at, b.loss_mask, (size_t)b.n_tokens);
        memcpy(s->seq_lens + at, b.seq_lens, sizeof(int32_t) * (size_t)b.n_seqs);
        memcpy(s->convs + at, b.convs, sizeof(int64_t) * (size_t)b.n_seqs);
        s->micro[i % A] = (PackedBatch){b.n_tokens,    s->tokens + at, s->loss_mask + at, b.n_seqs, s->seq_lens + at,
                                        s->convs + at, b.epoch};
    }
    batcher_save_cursor(&r->batcher, s->cursor);
}

/* The optimizer steps, until the last one, a signal, --stop-after or --time-budget; returns the run's status. The
 * batches are fetched a step ahead, so that the next step's first batch is known while a step runs (trainer_step's
 * next: its cached hidden states are uploaded meanwhile); checkpoints record the cursor after the steps done. */
static int run_steps(Run *r) {
    const TrainConfig *c = r->c;
    batcher_save_cursor(&r->batcher, r->cursor);
    StepBatches batches[2], *step = &batches[0], *next = &batches[1];
    for (int k = 0; k < 2; k++) step_batches_init(&batches[k], c->grad_accum, c->batch_tokens);

    stop_signal = 0;
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND; /* a second Ctrl-C kills at once */
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    int total_steps = r->oc.total_steps;
    Progress prog;
    progress_start(&prog, "train", total_steps - r->step);
    StepMetrics *window = &r->window; /* restored on resume */
    double last_step_seconds = 0;
    int64_t start_step = r->step;
    int status = TRAIN_DONE;
    char extra[256] = "";
    if (r->step < total_steps) fetch_step(r, next);
    while (r->step < total_steps) {
        double t0 = now_seconds();
        StepBatches *swap = step;
        step = next, next = swap;
        int has_next = r->step + 1 < total_steps;
        if (has_next) fetch_step(r, next);
        r->window_base_flops += step->base_flops;
        double lr = lr_at(&r->oc, (int)r->step);
        int64_t tokens_before = window->tokens;
        double norm = trainer_step(&r->t, step->micro, c->grad_accum, has_next ? &next->micro[0] : NULL, window);
        r->step++;
        memcpy(r->cursor, step->cursor, sizeof r->cursor);
        last_step_seconds = now_seconds() - t0;
        r->train_seconds += last_step_seconds;
        r->tokens_seen += (double)(window->tokens - tokens_before);
        double epoch = (double)r->cursor[0] + (double)r->cursor[1] / (double)r->data.n_convs; /* epoch, position */

        if (r->step % c->log_every == 0 || r->step == total_steps) {
            log_window(r, window, now_seconds() - r->window_start, r->window_base_flops, epoch, lr, norm, extra,
                       sizeof extra);
            step_metrics_clear(window);
            r->window_start = now_seconds(), r->window_base_flops = 0;
        }
        progress_update(&prog, r->step - start_step, extra);

        double aside = now_seconds(); /* evaluation and saving are not training throughput */
        if (c->val && c->eval_every > 0 && r->step % c->eval_every == 0) run_eval(r, epoch);
        else if (c->val && r->step == total_steps) run_eval(r, -1); /* the final one, logged before its checkpoint */
        if (c->save_every > 0 && r->step % c->save_every == 0) save(r, r->step);
        r->window_start += now_seconds() - aside;
        /* stop when one more step plus the final save and export (timed at the last save, else guessed at
         * 200 MB/s for the 3 x params checkpoint and the export) would not fit; a stop any rank wants, all take */
        double finish = r->save_seconds > 0 ? 1.5 * r->save_seconds : 16.0 * (double)r->heads.n_params / 2e8;
        int over_budget =
            c->time_budget > 0 && now_seconds() - r->t_start + 1.5 * last_step_seconds + finish > c->time_budget;
        int stop = stop_signal ? TRAIN_INTERRUPTED
                   : (c->stop_after > 0 && r->step >= c->stop_after) || (over_budget && r->step < total_steps)
                       ? TRAIN_STOPPED
                       : TRAIN_DONE;
        if (dist_size() > 1) stop = dist_max_int(stop); /* TRAIN_INTERRUPTED > TRAIN_STOPPED > TRAIN_DONE */
        if (stop != TRAIN_DONE) {
            status = stop;
            break;
        }
    }
    progress_finish(&prog, r->step - start_step, extra);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    for (int k = 0; k < 2; k++) step_batches_free(&batches[k]);
    return status;
}

/* The end: a last evaluation when the run finished, a checkpoint of the last step, and the export unless a signal
 * stopped it. */
static void run_finish(Run *r, int status) {
    const TrainConfig *c = r->c;
    const HiddenCache *cache = r->t.hidden_cache;
    if (cache) {
        char ahead[96] = "";
        if (cache->ahead_rows)
            snprintf(ahead, sizeof ahead, "; %lld batches' rows uploaded while the batch before ran",
                     (long long)cache->ahead_hits);
        log_info("hidden-state cache: %lld conversations' rows from the cache, %lld through the base model%s",
                 (long long)cache->hits, (long long)cache->misses, ahead);
    }
    if (status == TRAIN_DONE && c->val && r->last_eval != r->step) run_eval(r, -1);
    if (r->last_save != r->step) save(r, r->step);
    if (status == TRAIN_INTERRUPTED) {
        log_info("interrupted by signal %d after step %lld: checkpoint saved; continue with --resume", (int)stop_signal,
                 (long long)r->step);
        return;
    }
    if (dist_rank() != dist_lead_rank()) return;
    char *dir = path_join(c->out, "medusa");
    medusa_export(&r->heads, dir, MEDUSA_FORMAT_V1, export_dtype(c->export_dtype), c->model);
    log_info("%s after step %lld of %d: heads exported to %s", status == TRAIN_DONE ? "finished" : "stopped",
             (long long)r->step, r->oc.total_steps, dir);
    free(dir);
}

static void run_close(Run *r) {
    if (r->metrics) fclose(r->metrics);
    free(r->metrics_path);
    free(r->config_json);
    free(r->resume_path);
    trainer_free(&r->t);
    medusa_free(&r->heads);
    batcher_free(&r->batcher);
    if (r->c->val) token_cache_free(&r->val);
    token_cache_free(&r->data);
    model_free(&r->base);
}

int train_run(const TrainConfig *c) {
    Run *r = xmalloc(sizeof *r);
    run_open(r, c);
    int status = run_steps(r);
    run_finish(r, status);
    run_close(r);
    free(r);
    return status;
}
