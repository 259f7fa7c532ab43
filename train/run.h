/* A whole training run of Medusa heads, as medusa-train drives it: load the base model and token caches,
 * initialise or resume the heads, step through the epochs with logging (metrics.jsonl), periodic
 * evaluation and atomic checkpoints, stop cleanly on a signal or a time budget, and export at the end.
 * Also the evaluation loop and metric naming shared with medusa-eval. */
#ifndef MEDUSA_RUN_H
#define MEDUSA_RUN_H

#include <cJSON.h>
#include <signal.h>

#include "../data/token_cache.h"
#include "../model/startup.h"
#include "checkpoint.h"
#include "trainer.h"

typedef struct {
    const char *model, *data, *val, *out, *export_dtype;
    DeviceFlags dev; /* --device --precision --threads --logits-chunk */
    int heads, layers;
    double head_decay;
    OptimConfig optim; /* --lr --weight-decay --warmup-ratio --max-grad-norm (optim_defaults); total_steps derived */
    int epochs, max_steps, batch_tokens, grad_accum, seed;
    int eval_every, eval_batches, save_every, log_every, keep_checkpoints;
    int resume;
    int head_vocab;      /* heads predict only the N most frequent trained target tokens; 0: all */
    const char *targets; /* what the heads learn: labels, base-argmax, base-kl (TargetKind) */
    int cache_hidden;    /* keep the base model's hidden states in host memory after the first epoch */
    int stop_after;      /* stop cleanly (checkpoint + export) after this many steps in total; 0: never */
    double time_budget;  /* seconds; stop cleanly when the next step would not fit; 0: none */
    int pipeline;        /* MPI ranks per copy of the base, its layers divided over them (common/dist.h); 1: none */
} TrainConfig;

void train_config_defaults(TrainConfig *c);

enum { TRAIN_DONE = 0, TRAIN_STOPPED = 3, TRAIN_INTERRUPTED = 130 };
/* Runs (or resumes) a training run; returns TRAIN_DONE, TRAIN_STOPPED (time budget / stop_after) or
 * TRAIN_INTERRUPTED (SIGINT/SIGTERM: the current step finished and was saved). */
int train_run(const TrainConfig *c);

/* --pipeline P (common/dist.h's stages set): the base's layers divided over the stages by their memory plans
 * (memory_plan_stages), which the lead prints; returns this rank's stage's plan input (its part of the base). */
MemoryPlanInput pipeline_plan(const Startup *s, const MemoryPlanInput *whole, int stages);
/* Evaluation over the first max_batches packed batches of a cache (all when <= 0), in file order; data-parallel ranks
 * (common/dist.h) each take every N-th batch and every rank gets the sums (all ranks must call it). */
void evaluate(Trainer *t, const TokenCache *cache, int batch_tokens, int max_batches, StepMetrics *out);
/* Adds loss, medusa{i}_loss and medusa{i}_top{k} (k = 1..5) of accumulated metrics to obj. */
void metrics_to_json(const StepMetrics *m, int n_heads, cJSON *obj);
/* metrics_to_json and what evaluation adds: base_top1 (the base model's own top-1 on t+1) and medusa{i}_base_top{k},
 * the share of head i's positions where its top k holds the base model's greedy choice (MedusaBase). */
void eval_metrics_to_json(const StepMetrics *m, int n_heads, cJSON *obj);

#endif
