/* A decoding step's Linears (q/k/v, o, gate/up, down per layer, then the lm_head) on the weights kept in the file's
 * formats (model_load_native: matmul_q) beside the same weights dequantised to fp32 (matmul), for a few row counts
 * (decoding: 1; tree verification: more), alternating A B A B; prints ms per step, the bytes of weights it read and
 * the rate. The kernel's dev harness: MEDUSA_CPU_SIMD=avx2 (or baseline) runs a narrower build.
 *   bench_matmul_q --model PATH.gguf [--rows 1,4,8,16] [--reps 5] */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../model/llama.h"

static size_t matrix_bytes(const Matrix *w, int IC) {
    size_t bytes = 0;
    for (int p = 0; p < w->n_parts; p++) bytes += dtype_row_bytes(w->part[p].type, IC) * (size_t)w->part[p].rows;
    return bytes;
}

enum { N_KINDS = 5 };
static const char *KIND_NAMES[N_KINDS] = {"q/k/v", "o", "gate/up", "down", "lm_head"};

/* one Linear, its seconds added to seconds[kind] */
static void linear(const Model *m, float *out, const float *in, const Matrix *w, int T, int IC, int OC, int kind,
                   double *seconds, size_t *bytes) {
    double t0 = now_seconds();
    model_linear(m, out, in, w, NULL, T, IC, OC);
    seconds[kind] += now_seconds() - t0;
    *bytes += matrix_bytes(w, IC);
}

/* one step's Linears on T rows; returns the seconds (per kind in `seconds`) and the weight bytes read */
static double step(const Model *m, const float *in, float *out, int T, size_t *bytes, double *seconds) {
    const ModelConfig *c = &m->config;
    int H = c->hidden_size, I = c->intermediate_size, q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    double t0 = now_seconds();
    *bytes = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const LayerWeights *w = &m->layers[l];
        linear(m, out, in, &w->wqkv, T, H, q + 2 * kv, 0, seconds, bytes);
        linear(m, out, in, &w->wo, T, q, H, 1, seconds, bytes);
        linear(m, out, in, &w->w_gate_up, T, H, 2 * I, 2, seconds, bytes);
        linear(m, out, in, &w->w_down, T, I, H, 3, seconds, bytes);
    }
    linear(m, out, in, &m->lm_head, T, H, c->vocab_size, 4, seconds, bytes);
    return now_seconds() - t0;
}

int main(int argc, char **argv) {
    const char *path = NULL, *rows_s = "1,4,8,16";
    int reps = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) path = argv[++i];
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows_s = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else fatal("usage: bench_matmul_q --model PATH.gguf [--rows 1,4,8,16] [--reps 5]");
    }
    if (!path || reps < 1) fatal("bench_matmul_q: need --model (and --reps >= 1)");
    Model native, fp32;
    model_load_native(&native, path, backend_cpu());
    model_load(&fp32, path, backend_cpu(), DT_F32);
    const ModelConfig *c = &native.config;
    int widest = c->vocab_size > 2 * c->intermediate_size ? c->vocab_size : 2 * c->intermediate_size;
    printf("# bench_matmul_q: %s, %d layers + lm_head, %d threads, best of %d (A B A B)\n", path, c->n_layers,
           omp_get_max_threads(), reps);
    printf("%5s %12s %10s %9s %12s %10s %9s %7s\n", "rows", "native ms", "MB read", "GB/s", "fp32 ms", "MB read",
           "GB/s", "ratio");
    for (char *p = (char *)rows_s; *p; p += *p == ',') {
        int T = (int)strtol(p, &p, 10);
        if (T < 1 || T > 4096) fatal("bench_matmul_q: --rows takes counts in 1..4096");
        size_t in_n = (size_t)T * (c->intermediate_size > c->hidden_size ? c->intermediate_size : c->hidden_size);
        float *in = xcalloc(in_n, sizeof(float)), *out = xmalloc(sizeof(float) * (size_t)T * widest);
        for (size_t i = 0; i < in_n; i++) in[i] = (float)((i * 7919) % 200) / 100.0f - 1.0f;
        double best_q = 1e30, best_f = 1e30, kinds_q[N_KINDS] = {0}, kinds_f[N_KINDS] = {0};
        size_t bytes_q = 0, bytes_f = 0;
        for (int r = 0; r < reps; r++) {
            double sq = step(&native, in, out, T, &bytes_q, kinds_q), sf = step(&fp32, in, out, T, &bytes_f, kinds_f);
            if (sq < best_q) best_q = sq;
            if (sf < best_f) best_f = sf;
        }
        printf("%5d %12.2f %10.1f %9.2f %12.2f %10.1f %9.2f %6.2fx\n", T, best_q * 1e3, bytes_q / 1e6,
               bytes_q / best_q / 1e9, best_f * 1e3, bytes_f / 1e6, bytes_f / best_f / 1e9, best_f / best_q);
        printf("      mean ms per step:");
        for (int k = 0; k < N_KINDS; k++)
            printf(" %s %.2f (fp32 %.2f)", KIND_NAMES[k], kinds_q[k] / reps * 1e3, kinds_f[k] / reps * 1e3);
        printf("\n");
        free(in), free(out);
    }
    model_free(&native), model_free(&fp32);
    return 0;
}
