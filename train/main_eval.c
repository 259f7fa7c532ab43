/* medusa-eval: top-1..5 accuracy of every Medusa head (medusa{i}_top{k}), its agreement with the base model's greedy
 * choice (medusa{i}_base_top{k}) and the base model's own top-1 on held-out conversations. */
#include <stdlib.h>
#include <string.h>

#include "../common/args.h"
#include "../common/dist.h"
#include "../formats/atomic_file.h"
#include "../model/medusa_io.h"
#include "../model/startup.h"
#include "run.h"

static const char *USAGE =
    "usage: medusa-eval --model PATH (--medusa DIR | --ckpt FILE|RUN_DIR) --data VAL.tokens.h5 [options]\n\n"
    "Evaluates Medusa heads (an export in the v1 or vLLM layout, or a training checkpoint) on a token cache:\n"
    "head i at position t predicts the token at t+2+i; only trained (assistant) targets count. Prints a table\n"
    "of medusa{i}_top{k} for k = 1..5 (the data's token within head i's top k), beside it medusa{i}_base_top{k}\n"
    "(the base model's own greedy choice for that token, given the true prefix, within the top k: what decoding\n"
    "accepts, the input of medusa-infer tune), and the base model's top-1 on t+1; writes them as JSON with --json.";

/* The table on stdout and, with json, the metrics as JSON (atomically). */
static void report(const StepMetrics *m, int K, double seconds, const char *json, const char *model, const char *heads,
                   const char *data) {
    printf("%-10s %-39s %-8s %-8s  %s\n", "", "top-k holds the data's token", "", "",
           "top-k holds the base model's greedy choice");
    printf("%-10s %7s %7s %7s %7s %7s %8s %8s ", "head", "top1", "top2", "top3", "top4", "top5", "loss", "targets");
    printf(" %7s %7s %7s %7s %7s\n", "top1", "top2", "top3", "top4", "top5");
    for (int i = 0; i < K; i++) {
        double n = m->valid[i] ? (double)m->valid[i] : 1;
        printf("medusa%-4d", i);
        for (int k = 0; k < MEDUSA_TOPK; k++) printf(" %7.4f", (double)m->hits[i][k] / n);
        printf(" %8.4f %8lld ", m->batches ? m->loss_sum[i] / m->batches : 0.0, (long long)m->valid[i]);
        for (int k = 0; k < MEDUSA_TOPK; k++) printf(" %7.4f", (double)m->agree[i][k] / n);
        printf("\n");
    }
    double base_top1 = m->base_valid ? (double)m->base_hits / (double)m->base_valid : 0;
    printf("base model top-1 on t+1: %.4f (%lld targets)\n", base_top1, (long long)m->base_valid);
    printf("%d batches, %lld tokens in %.1f s (%.0f tokens/s)\n", m->batches, (long long)m->tokens, seconds,
           seconds > 0 ? (double)m->tokens / seconds : 0);

    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "model", model);
        cJSON_AddStringToObject(o, "heads", heads);
        cJSON_AddStringToObject(o, "data", data);
        cJSON_AddNumberToObject(o, "batches", m->batches);
        cJSON_AddNumberToObject(o, "tokens", (double)m->tokens);
        eval_metrics_to_json(m, K, o);
        char *text = cJSON_Print(o);
        size_t n = strlen(text);
        text = xrealloc(text, n + 2);
        text[n] = '\n';
        text[n + 1] = '\0';
        write_file_atomic(json, text, n + 1);
        free(text);
        cJSON_Delete(o);
    }
}

int main(int argc, char **argv) {
    const char *model = NULL, *medusa = NULL, *ckpt = NULL, *data = NULL, *json = NULL;
    int max_batches = 0, batch_tokens = 2048, pipeline = 1;
    DeviceFlags dev = DEVICE_FLAGS_DEFAULT;
    double head_decay = 0.8;
    ArgSpec specs[] = {
        {"model", ARG_STR, &model, "base model: Hugging Face directory or .gguf file"},
        {"medusa", ARG_STR, &medusa, "exported heads (config.json + weights, v1 or vLLM layout)"},
        {"ckpt", ARG_STR, &ckpt, "or a training checkpoint (file, or run directory: its latest)"},
        {"data", ARG_STR, &data, "token cache to evaluate on (*.tokens.h5)"},
        {"max-batches", ARG_INT, &max_batches, "evaluate at most N packed batches (0 = all)"},
        {"batch-tokens", ARG_INT, &batch_tokens, "tokens per packed batch"},
        {"head-decay", ARG_DOUBLE, &head_decay, "weight of head i in the reported total loss"},
        {"json", ARG_STR, &json, "also write the metrics to this JSON file"},
        {"pipeline", ARG_INT, &pipeline,
         "under mpirun: ranks per copy of the base model, its layers divided over them (as medusa-train's)"},
        DEVICE_FLAG_SPECS(&dev),
        LOGITS_CHUNK_FLAG_SPEC(&dev),
    };
    args_parse(argc, argv, 1, specs, sizeof specs / sizeof specs[0], USAGE, NULL, 0);
    dist_init(&argc, &argv); /* under mpirun the ranks share the batches */
    if (!model || !data || (!medusa == !ckpt)) fatal("need --model, --data and one of --medusa or --ckpt (see --help)");
    if (pipeline < 1) fatal("--pipeline %d: expected at least 1", pipeline);
    dist_set_stages(pipeline);
    Startup s;
    startup_begin(&s, &dev, model);
    int H = s.config.hidden_size, V = s.config.vocab_size;
    char *ckpt_path = NULL;
    MedusaShape shape;
    if (medusa) {
        shape = medusa_import_shape(medusa, H, V);
    } else {
        ckpt_path = dir_exists(ckpt) ? checkpoint_latest(ckpt) : xstrdup(ckpt);
        if (!ckpt_path) fatal("%s: no ckpt-<step>.h5 in this directory", ckpt);
        shape = checkpoint_shape(ckpt_path);
        if (shape.hidden != H || shape.vocab != V)
            fatal("%s: heads of hidden size %d and vocabulary %d do not fit the base model (%d, %d)", ckpt_path,
                  shape.hidden, shape.vocab, H, V);
    }
    MemoryPlanInput mi = memory_plan_training(s.dtype, shape.n_heads, shape.n_layers, shape.head_vocab, batch_tokens,
                                              s.logits_chunk, 0, 1, TARGETS_LABELS);
    if (pipeline > 1) mi = pipeline_plan(&s, &mi, pipeline);
    Model base;
    startup_load_base(&s, &mi, log_verbosity >= 1, &base);
    MedusaHeads heads = {0};
    if (model_part_last(&base) && medusa) { /* the heads live on a pipeline's last stage */
        medusa_import(&heads, medusa, s.be, H, V);
    } else if (model_part_last(&base)) {
        medusa_init(&heads, s.be, shape);
        CheckpointMeta meta = {0};
        checkpoint_load(ckpt_path, &heads, NULL, &meta);
        free(meta.config_json);
    }
    if (heads.params) startup_ready_heads(&base, &heads);
    TokenCache cache;
    token_cache_load(&cache, data, V);
    token_cache_check_model(&cache, data, model);
    Trainer t;
    trainer_init(&t, &base, heads.params ? &heads : NULL, NULL, (float)head_decay, TARGETS_LABELS, batch_tokens,
                 s.logits_chunk);
    t.base_name = model;
    t.heads_name = medusa ? medusa : ckpt_path;
    double t0 = now_seconds();
    StepMetrics m;
    evaluate(&t, &cache, batch_tokens, max_batches, &m);
    double seconds = now_seconds() - t0;

    if (dist_rank() == dist_lead_rank())
        report(&m, heads.shape.n_heads, seconds, json, model, medusa ? medusa : ckpt_path, data);
    trainer_free(&t);
    medusa_free(&heads);
    token_cache_free(&cache);
    model_free(&base);
    free(ckpt_path);
    dist_finalize();
    return 0;
}
