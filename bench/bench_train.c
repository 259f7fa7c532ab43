/* CPU training throughput of Medusa heads: optimizer steps on packed batches from a token cache (frozen base
 * forward, heads forward + fused loss + backward, AdamW), after one warm-up step, reported as tokens/s with
 * the time split between the base model and the heads. Run by `make bench-train` beside
 * bench/bench_train_torch.py, which trains the reference's heads on the same batches. */
#include <stdlib.h>
#include <string.h>

#include "../common/args.h"
#include "../data/batcher.h"
#include "../train/run.h"

int main(int argc, char **argv) {
    const char *model = NULL, *data = NULL;
    int heads = 5, batch_tokens = 2048, steps = 3, threads = 0, logits_chunk = 512;
    ArgSpec specs[] = {
        {"model", ARG_STR, &model, "base model (HF directory or .gguf)"},
        {"data", ARG_STR, &data, "token cache (*.tokens.h5)"},
        {"heads", ARG_INT, &heads, "Medusa heads"},
        {"batch-tokens", ARG_INT, &batch_tokens, "tokens per packed batch"},
        {"steps", ARG_INT, &steps, "timed optimizer steps (after one warm-up step)"},
        {"threads", ARG_INT, &threads, "CPU threads (0 = OpenMP default)"},
        {"logits-chunk", ARG_INT, &logits_chunk, "rows of head logits computed at once"},
    };
    args_parse(argc, argv, 1, specs, sizeof specs / sizeof specs[0],
               "usage: bench_train --model PATH --data FILE.tokens.h5 [options]", NULL, 0);
    if (!model || !data) fatal("bench_train: need --model and --data");
    set_threads(threads);
    Model base;
    model_load(&base, model, backend_cpu(), DT_F32);
    TokenCache cache;
    token_cache_load(&cache, data, base.config.vocab_size);
    MedusaHeads m;
    medusa_init(&m, backend_cpu(), (MedusaShape){heads, 1, base.config.hidden_size, base.config.vocab_size, 0});
    Rng rng;
    rng_seed(&rng, 42);
    medusa_init_from_base(&m, &base, &rng);
    OptimConfig oc;
    optim_defaults(&oc);
    oc.total_steps = steps + 1;
    Trainer t;
    trainer_init(&t, &base, &m, &oc, 0.8f, batch_tokens, logits_chunk);
    Batcher b;
    batcher_init(&b, &cache, batch_tokens, 0, 0); /* file order: the torch script packs the same batches */
    double total = 0, base_s = 0;
    int64_t tokens = 0, trained = 0;
    for (int s = 0; s <= steps; s++) {
        Batch batch = batcher_next(&b);
        TrainBatch tb = {batch.n_tokens, batch.tokens, batch.loss_mask, batch.n_seqs, batch.seq_lens};
        StepMetrics sm;
        step_metrics_clear(&sm);
        double t0 = now_seconds();
        trainer_step(&t, &tb, 1, &sm);
        double dt = now_seconds() - t0;
        /* the base forward alone, for the split */
        PackedBatch pb = {batch.n_tokens, batch.tokens, batch.n_seqs, batch.seq_lens};
        double t1 = now_seconds();
        model_forward(&base, &t.state, &pb, t.hidden, NULL);
        double db = now_seconds() - t1;
        printf("step %d: %d tokens in %d sequences, %lld head-0 targets, %.3f s (base forward %.3f s), loss %.4f\n", s,
               batch.n_tokens, batch.n_seqs, (long long)sm.valid[0], dt, db, sm.total_loss_sum);
        if (s == 0) continue; /* warm-up */
        total += dt;
        base_s += db;
        tokens += batch.n_tokens;
        trained += sm.valid[0];
    }
    printf("medusa-c train: %d heads, %lld tokens in %d steps, %.3f s (base %.0f%%, heads %.0f%%), %.1f tokens/s\n", heads,
           (long long)tokens, steps, total, 100 * base_s / total, 100 * (total - base_s) / total, (double)tokens / total);
    batcher_free(&b);
    trainer_free(&t);
    medusa_free(&m);
    token_cache_free(&cache);
    model_free(&base);
    return 0;
}
