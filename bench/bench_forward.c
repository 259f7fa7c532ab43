/* CPU forward throughput: a packed batch of --tokens tokens (sequences of --seq-len) through the base model,
 * best of --reps runs, reported as tokens/s. Run by `make bench` beside bench/bench_forward_torch.py. */
#include <stdlib.h>
#include <string.h>

#include "../model/llama.h"

int main(int argc, char **argv) {
    const char *model_path = NULL;
    int T = 2048, seq_len = 512, reps = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model_path = argv[++i];
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seq-len") && i + 1 < argc) seq_len = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_forward --model PATH [--tokens 2048] [--seq-len 512] [--reps 3]\n");
            return 2;
        }
    }
    if (!model_path || T <= 0 || seq_len <= 0 || T % seq_len != 0)
        fatal("bench_forward: need --model and --tokens divisible by --seq-len");
    Model m;
    model_load(&m, model_path, backend_cpu(), DT_F32);
    ForwardState s;
    forward_state_init(&s, &m, T);
    int32_t *tokens = xmalloc(sizeof(int32_t) * (size_t)T);
    srand(1234);
    for (int t = 0; t < T; t++) tokens[t] = rand() % m.config.vocab_size;
    int n_seqs = T / seq_len;
    int32_t *lens = xmalloc(sizeof(int32_t) * (size_t)n_seqs);
    for (int i = 0; i < n_seqs; i++) lens[i] = seq_len;
    PackedBatch b = {.n_tokens = T, .tokens = tokens, .n_seqs = n_seqs, .seq_lens = lens};
    float *hidden = xmalloc(sizeof(float) * (size_t)T * m.config.hidden_size);
    float *logits = xmalloc(sizeof(float) * (size_t)T * m.config.vocab_size);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_seconds();
        model_forward(&m, &s, &b, hidden, logits);
        double dt = now_seconds() - t0;
        if (dt < best) best = dt;
    }
    printf("medusa-c forward: %d tokens (%d x %d), best of %d: %.3f s, %.1f tokens/s\n", T, n_seqs, seq_len, reps, best,
           T / best);
    free(tokens);
    free(lens);
    free(hidden);
    free(logits);
    forward_state_free(&s, &m);
    model_free(&m);
    return 0;
}
