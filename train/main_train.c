/* medusa-train: train Medusa heads on a frozen base model (see train/run.h), or re-export a checkpoint. */
#include <stdlib.h>
#include <string.h>

#include "../common/args.h"
#include "../common/dist.h"
#include "../model/medusa_io.h"
#include "run.h"

static const char *USAGE_TRAIN =
    "usage: medusa-train --model PATH --data TRAIN.tokens.h5 [--val VAL.tokens.h5] --out RUN_DIR [options]\n"
    "       medusa-train export --ckpt FILE|RUN_DIR --out DIR [--format v1|vllm] [--dtype f32|bf16]\n\n"
    "Trains K Medusa heads (ResBlocks + lm_head) on the frozen base model (a Hugging Face directory or a .gguf\n"
    "file) with the reference recipe: AdamW, cosine schedule with linear warm-up, global-norm clipping, loss of\n"
    "head i weighted by head-decay^i. Batches pack whole conversations up to --batch-tokens tokens (the\n"
    "reference's max length 2048); a step is --grad-accum batches. Writes RUN_DIR/metrics.jsonl,\n"
    "RUN_DIR/ckpt-<step>.h5 (atomic; also on SIGINT/SIGTERM, exit 130) and RUN_DIR/medusa (Medusa v1 export).\n"
    "--resume continues the latest checkpoint bit for bit. A non-finite loss, gradient or parameter stops the run\n"
    "with an error naming the last (finite) checkpoint; no non-finite state is ever saved or exported.\n"
    "`make plot RUN=RUN_DIR` draws the curves.";

static int export_main(int argc, char **argv) {
    const char *ckpt = NULL, *out = NULL, *format = "v1", *dtype = "f32";
    ArgSpec specs[] = {
        {"ckpt", ARG_STR, &ckpt, "checkpoint file, or a run directory (its latest checkpoint)"},
        {"out", ARG_STR, &out, "output directory"},
        {"format", ARG_STR, &format, "v1 (Medusa, TensorRT-LLM) or vllm"},
        {"dtype", ARG_STR, &dtype, "f32 or bf16"},
    };
    args_parse(argc, argv, 2, specs, sizeof specs / sizeof specs[0],
               "usage: medusa-train export --ckpt FILE|RUN_DIR --out DIR [--format v1|vllm] [--dtype f32|bf16]", NULL,
               0);
    if (!ckpt || !out) fatal("export needs --ckpt and --out (see --help)");
    MedusaFormat f = strcmp(format, "v1") == 0     ? MEDUSA_FORMAT_V1
                     : strcmp(format, "vllm") == 0 ? MEDUSA_FORMAT_VLLM
                                                   : -1;
    if ((int)f < 0) fatal("--format %s: expected v1 or vllm", format);
    DType dt = strcmp(dtype, "f32") == 0 ? DT_F32 : strcmp(dtype, "bf16") == 0 ? DT_BF16 : DT_I32;
    if (dt == DT_I32) fatal("--dtype %s: expected f32 or bf16", dtype);
    char *path = dir_exists(ckpt) ? checkpoint_latest(ckpt) : xstrdup(ckpt);
    if (!path) fatal("%s: no ckpt-<step>.h5 in this directory", ckpt);
    MedusaHeads m;
    medusa_init(&m, backend_cpu(), checkpoint_shape(path));
    CheckpointMeta meta = {0};
    checkpoint_load(path, &m, NULL, &meta);
    cJSON *cfg = cJSON_Parse(meta.config_json);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(cfg, "model");
    medusa_export(&m, out, f, dt, cJSON_IsString(model) ? model->valuestring : "");
    printf("exported %s (step %lld: %d heads x %d layers) to %s (%s, %s)\n", path, (long long)meta.step,
           m.shape.n_heads, m.shape.n_layers, out, format, dtype);
    cJSON_Delete(cfg);
    free(meta.config_json);
    free(path);
    medusa_free(&m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "export") == 0) return export_main(argc, argv);
    TrainConfig c;
    train_config_defaults(&c);
    ArgSpec specs[] = {
        {"model", ARG_STR, &c.model, "base model: Hugging Face directory or .gguf file"},
        {"data", ARG_STR, &c.data, "training token cache (*.tokens.h5 from medusa-data)"},
        {"val", ARG_STR, &c.val, "validation token cache (optional)"},
        {"out", ARG_STR, &c.out, "run directory (checkpoints, metrics.jsonl, medusa/)"},
        {"heads", ARG_INT, &c.heads, "number of Medusa heads"},
        {"layers", ARG_INT, &c.layers, "ResBlocks per head"},
        {"head-decay", ARG_DOUBLE, &c.head_decay, "loss weight of head i is decay^i (1 = unweighted sum)"},
        {"lr", ARG_DOUBLE, &c.optim.lr, "peak learning rate (AdamW)"},
        {"weight-decay", ARG_DOUBLE, &c.optim.weight_decay, "AdamW weight decay (weights only, never biases)"},
        {"warmup-ratio", ARG_DOUBLE, &c.optim.warmup_ratio, "linear warm-up steps = ceil(ratio * total steps)"},
        {"max-grad-norm", ARG_DOUBLE, &c.optim.max_grad_norm, "global gradient-norm clip (0 = off)"},
        {"epochs", ARG_INT, &c.epochs, "passes over the training data"},
        {"max-steps", ARG_INT, &c.max_steps, "total optimizer steps (overrides --epochs when > 0)"},
        {"batch-tokens", ARG_INT, &c.batch_tokens, "tokens per packed batch (longer conversations are cut)"},
        {"grad-accum", ARG_INT, &c.grad_accum, "batches per optimizer step"},
        {"seed", ARG_INT, &c.seed, "seed of the head init and the data order"},
        {"eval-every", ARG_INT, &c.eval_every, "evaluate on --val every N steps (0 = only at the end)"},
        {"eval-batches", ARG_INT, &c.eval_batches, "validation batches per evaluation (0 = all)"},
        {"save-every", ARG_INT, &c.save_every, "checkpoint every N steps (0 = only at the end)"},
        {"keep-checkpoints", ARG_INT, &c.keep_checkpoints, "checkpoints kept in the run directory (0 = all)"},
        {"log-every", ARG_INT, &c.log_every, "metrics.jsonl line every N steps"},
        {"resume", ARG_FLAG, &c.resume, "continue from the latest checkpoint in --out"},
        DEVICE_FLAG_SPECS(&c.dev),
        {"time-budget", ARG_DOUBLE, &c.time_budget, "stop cleanly (checkpoint + export) before N seconds (0 = none)"},
        {"stop-after", ARG_INT, &c.stop_after, "stop cleanly after step N, keeping the schedule of the full run"},
        {"export-dtype", ARG_STR, &c.export_dtype, "dtype of the final export: f32 or bf16"},
        LOGITS_CHUNK_FLAG_SPEC(&c.dev),
        {"head-vocab", ARG_INT, &c.head_vocab, "heads predict only the N most frequent trained targets (0 = all)"},
        {"cache-hidden", ARG_FLAG, &c.cache_hidden,
         "keep the base model's hidden states in host memory (data tokens x hidden x 4 bytes): epochs after the first "
         "skip the base model"},
        {"pipeline", ARG_INT, &c.pipeline,
         "under mpirun: ranks per copy of the base model, its layers divided over them (the heads on the last); the "
         "ranks form ranks/N data-parallel pipelines"},
        {"targets", ARG_STR, &c.targets,
         "what head i at position t learns: labels (the data's token at t+2+i), base-argmax (the base model's "
         "greedy choice for it: the argmax of its logits at row t+1+i) or base-kl (their softmax, by KL)"},
    };
    args_parse(argc, argv, 1, specs, sizeof specs / sizeof specs[0], USAGE_TRAIN, NULL, 0);
    dist_init(&argc, &argv); /* under mpirun: one rank of a data-parallel run */
    int status = train_run(&c);
    dist_finalize();
    /* a stop at --time-budget or --stop-after is a clean end (exit 0); a signal exits 130 */
    return status == TRAIN_INTERRUPTED ? 130 : 0;
}
