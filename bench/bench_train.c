/* Training throughput of Medusa heads: optimizer steps on packed batches from a token cache (frozen base
 * forward, heads forward + fused loss + backward, AdamW), after one warm-up step, reported as tokens/s with
 * the time split between the base model and the heads, and the FLOPs done (for MFU). Run by `make
 * bench-train` (cpu) and `make bench-gpu` (--device cuda) beside bench/bench_train_torch.py, which trains
 * the reference's heads on the same batches. --cached-steps N: then heads-only steps on --cache-hidden's cached
 * hidden states of the first N batches, each batch's rows uploaded in the queue before its step, against uploaded
 * beside it during the step before (Backend.upload_ahead), alternating A B A B. */
#include <stdlib.h>
#include <string.h>

#include "../common/args.h"
#include "../data/batcher.h"
#include "../train/run.h"

static void *copy_of(const void *src, size_t bytes) {
    void *dst = xmalloc(bytes ? bytes : 1);
    memcpy(dst, src, bytes);
    return dst;
}

/* Seconds per heads-only step on cached hidden states, uploaded in the queue (ahead 0) or during the step before
 * (ahead 1), over batches 1..n-1 (batch 0's upload cannot go ahead) */
static double cached_step_seconds(Trainer *t, const PackedBatch *batches, int n, int ahead) {
    double total = 0;
    for (int i = 0; i < n; i++) {
        StepMetrics sm;
        step_metrics_clear(&sm);
        double t0 = now_seconds();
        trainer_step(t, &batches[i], 1, ahead && i + 1 < n ? &batches[i + 1] : NULL, &sm);
        if (i > 0) total += now_seconds() - t0;
    }
    return total / (n - 1);
}

/* --cached-steps: the first n batches' conversations through the base model into the cache (of those conversations
 * only: a 7B's hidden states of a whole data set would be gigabytes of page-locked memory), then rounds of A B */
static void bench_cached(Trainer *t, const TokenCache *cache, int batch_tokens, int n) {
    Batcher b;
    batcher_init(&b, cache, batch_tokens, 0, 0);
    PackedBatch *batches = xmalloc(sizeof *batches * (size_t)n);
    TokenCache first = *cache; /* the conversations of the n batches: the file's first ones (file order) */
    first.n_convs = 0;
    for (int i = 0; i < n; i++) { /* each batch its own copy: the batcher reuses its storage */
        PackedBatch x = batcher_next(&b);
        batches[i] = x;
        batches[i].tokens = copy_of(x.tokens, sizeof *x.tokens * (size_t)x.n_tokens);
        batches[i].loss_mask = copy_of(x.loss_mask, (size_t)x.n_tokens);
        batches[i].seq_lens = copy_of(x.seq_lens, sizeof *x.seq_lens * (size_t)x.n_seqs);
        batches[i].convs = copy_of(x.convs, sizeof *x.convs * (size_t)x.n_seqs);
        for (int s = 0; s < x.n_seqs; s++)
            if (x.convs[s] + 1 > first.n_convs) first.n_convs = x.convs[s] + 1;
    }
    first.n_tokens = cache->conv_offsets[first.n_convs];
    trainer_cache_hidden(t, &first);
    double fill = now_seconds();
    cached_step_seconds(t, batches, n, 0); /* misses: each conversation alone through the base model, cached */
    fill = now_seconds() - fill;
    double in_queue = 0, ahead = 0;
    const int rounds = 2;
    for (int r = 0; r < rounds; r++) {
        in_queue += cached_step_seconds(t, batches, n, 0) / rounds;
        ahead += cached_step_seconds(t, batches, n, 1) / rounds;
    }
    printf("cached hidden states, heads-only steps (%d batches, filled in %.1f s, %d rounds A B): %.4f s per step with "
           "each batch's rows uploaded in the queue, %.4f s uploaded during the step before (%.3fx)%s\n",
           n, fill, rounds, in_queue, ahead, in_queue / ahead,
           t->hidden_cache->ahead_rows ? "" : " (no uploads beside the queue on this backend: the same path twice)");
    for (int i = 0; i < n; i++) {
        free((void *)batches[i].tokens), free((void *)batches[i].loss_mask);
        free((void *)batches[i].seq_lens), free((void *)batches[i].convs);
    }
    free(batches);
    batcher_free(&b);
}

int main(int argc, char **argv) {
    const char *model = NULL, *data = NULL;
    int heads = 5, batch_tokens = 2048, steps = 3, cached_steps = 0;
    DeviceFlags dev = DEVICE_FLAGS_DEFAULT;
    ArgSpec specs[] = {
        {"model", ARG_STR, &model, "base model (HF directory or .gguf)"},
        {"data", ARG_STR, &data, "token cache (*.tokens.h5)"},
        {"heads", ARG_INT, &heads, "Medusa heads"},
        {"batch-tokens", ARG_INT, &batch_tokens, "tokens per packed batch"},
        {"steps", ARG_INT, &steps, "timed optimizer steps (after one warm-up step)"},
        {"cached-steps", ARG_INT, &cached_steps,
         "then heads-only steps on cached hidden states: uploads in the queue vs ahead (0: none; else at least 2)"},
        DEVICE_FLAG_SPECS(&dev),
        LOGITS_CHUNK_FLAG_SPEC(&dev),
    };
    args_parse(argc, argv, 1, specs, sizeof specs / sizeof specs[0],
               "usage: bench_train --model PATH --data FILE.tokens.h5 [options]", NULL, 0);
    if (!model || !data) fatal("bench_train: need --model and --data");
    if (cached_steps == 1 || cached_steps < 0) fatal("bench_train: --cached-steps %d: 0, or at least 2", cached_steps);
    Startup s; /* the memory plan reserved before loading, as medusa-train does */
    startup_begin(&s, &dev, model);
    const Backend *be = s.be;
    MemoryPlanInput mi = memory_plan_training(s.dtype, heads, 1, 0, batch_tokens, s.logits_chunk, 1, 0, TARGETS_LABELS);
    mi.hidden_ahead = cached_steps > 0 && be->upload_ahead;
    Model base;
    startup_load_base(&s, &mi, 1, &base);
    TokenCache cache;
    token_cache_load(&cache, data, base.config.vocab_size);
    MedusaHeads m;
    medusa_init(&m, be, (MedusaShape){heads, 1, base.config.hidden_size, base.config.vocab_size, 0});
    Rng rng;
    rng_seed(&rng, 42);
    medusa_init_from_base(&m, &base, &rng);
    startup_ready_heads(&base, &m);
    OptimConfig oc;
    optim_defaults(&oc);
    oc.total_steps = steps + 1;
    Trainer t;
    trainer_init(&t, &base, &m, &oc, 0.8f, TARGETS_LABELS, batch_tokens, s.logits_chunk);
    Batcher b;
    batcher_init(&b, &cache, batch_tokens, 0, 0); /* file order: the torch script packs the same batches */
    double total = 0, base_s = 0, base_flops = 0, head_flops = 0;
    int64_t tokens = 0;
    for (int s = 0; s <= steps; s++) {
        PackedBatch batch = batcher_next(&b);
        StepMetrics sm;
        step_metrics_clear(&sm);
        double t0 = now_seconds();
        trainer_step(&t, &batch, 1, NULL, &sm);
        double dt = now_seconds() - t0;
        /* the base forward alone, for the split */
        double t1 = now_seconds();
        model_forward(&base, &t.state, &batch, t.hidden, NULL);
        float sync; /* a download waits for the queued kernels (trainer_step's metrics do the same) */
        be->download(&sync, t.hidden, sizeof sync);
        double db = now_seconds() - t1;
        printf("step %d: %d tokens in %d sequences, %lld head-0 targets, %.3f s (base forward %.3f s), loss %.4f\n", s,
               batch.n_tokens, batch.n_seqs, (long long)sm.valid[0], dt, db, sm.total_loss_sum);
        if (s == 0) continue; /* warm-up */
        total += dt;
        base_s += db;
        tokens += batch.n_tokens;
        base_flops += model_forward_flops(&base.config, batch.n_tokens, batch.seq_lens, batch.n_seqs);
        for (int h = 0; h < heads; h++) head_flops += medusa_train_flops(&m.shape, sm.computed[h]);
    }
    printf("medusa-c train: %d heads, %lld tokens in %d steps, %.3f s (base %.0f%%, heads %.0f%%), %.1f tokens/s\n",
           heads, (long long)tokens, steps, total, 100 * base_s / total, 100 * (total - base_s) / total,
           (double)tokens / total);
    printf(
        "medusa-c flops: %.4g per token (base forward %.4g, heads %.4g), %.4g FLOP/s (base forward alone %.4g FLOP/s), "
        "device %s, precision %s\n",
        (base_flops + head_flops) / tokens, base_flops / tokens, head_flops / tokens, (base_flops + head_flops) / total,
        base_flops / base_s, dev.device, base.weight_dtype == DT_BF16 ? "bf16" : "fp32");
    double peak = model_peak_flops(&base);
    if (peak > 0)
        printf("MFU: %.1f%% of %.0f TFLOP/s bf16 dense on %s (base forward alone: %.1f%%)\n",
               100 * (base_flops + head_flops) / total / peak, peak / 1e12, be->device,
               100 * base_flops / base_s / peak);
    else
        printf("MFU: n/a (no bf16 peak known for %s%s)\n", be->device,
               base.weight_dtype == DT_BF16 ? "" : " with fp32 weights");
    batcher_free(&b);
    if (cached_steps > 0) bench_cached(&t, &cache, batch_tokens, cached_steps);
    trainer_free(&t);
    medusa_free(&m);
    token_cache_free(&cache);
    model_free(&base);
    return 0;
}
