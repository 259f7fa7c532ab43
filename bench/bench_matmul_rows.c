/* The CPU matmul for a few input rows (decoding and tree verification: kernels/cpu/matmul.c) beside OpenBLAS sgemm on
 * every Linear of a model's decoding step (q/k/v, o, gate/up, down per layer, then the lm_head), weights in fp32 from
 * DRAM: for each row count T, the step's matmul time (best of --reps, the counts interleaved so that a busy minute
 * hits all of them), its cost relative to T = 1, and sgemm's. Each product is checked against sgemm first.
 *   bench_matmul_rows --model PATH [--rows 1,2,3,4,6,8,12,16,24,32] [--reps 6] */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "../model/config.h"

enum { MAX_COUNTS = 16 };

typedef struct {
    int in, out;
} Shape;

int main(int argc, char **argv) {
    const char *model_path = NULL, *rows_s = "1,2,3,4,6,8,12,16,24,32";
    int reps = 6;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model_path = argv[++i];
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows_s = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_matmul_rows --model PATH [--rows 1,2,4,8] [--reps 6]\n");
            return 2;
        }
    }
    if (!model_path || reps < 1) fatal("bench_matmul_rows: need --model (and --reps >= 1)");
    int counts[MAX_COUNTS], n_counts = 0, max_rows = 1;
    for (char *p = (char *)rows_s; *p && n_counts < MAX_COUNTS; p += *p == ',') {
        long v = strtol(p, &p, 10);
        if (v < 1 || v > 4096) fatal("bench_matmul_rows: --rows takes counts in 1..4096");
        counts[n_counts++] = (int)v;
        if (v > max_rows) max_rows = (int)v;
    }
    ModelConfig c;
    config_load(&c, model_path);
    int q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
    Shape layer[4] = {{c.hidden_size, q_dim + 2 * kv_dim},
                      {q_dim, c.hidden_size},
                      {c.hidden_size, 2 * c.intermediate_size},
                      {c.intermediate_size, c.hidden_size}};
    int n_mats = 4 * c.n_layers + 1;
    Shape *shapes = xmalloc(sizeof(Shape) * (size_t)n_mats);
    float **weights = xmalloc(sizeof(float *) * (size_t)n_mats);
    size_t total = 0, widest = 0;
    srand(1);
    for (int i = 0; i < n_mats; i++) {
        shapes[i] = i + 1 < n_mats ? layer[i % 4] : (Shape){c.hidden_size, c.vocab_size};
        size_t n = (size_t)shapes[i].in * shapes[i].out;
        weights[i] = xmalloc(sizeof(float) * n);
        for (size_t j = 0; j < n; j++) weights[i][j] = (float)rand() / RAND_MAX - 0.5f;
        total += n;
        if ((size_t)shapes[i].out > widest) widest = (size_t)shapes[i].out;
        if ((size_t)shapes[i].in > widest) widest = (size_t)shapes[i].in;
    }
    float *x = xmalloc(sizeof(float) * (size_t)max_rows * widest);
    for (size_t j = 0; j < (size_t)max_rows * widest; j++) x[j] = (float)rand() / RAND_MAX - 0.5f;
    float *ours = xmalloc(sizeof(float) * (size_t)max_rows * widest),
          *blas = xmalloc(sizeof(float) * max_rows * widest);
    const Backend *cpu = backend_cpu();

    double worst = 0; /* the kernel against sgemm on each kind of matrix, at every count */
    for (int k = 0; k < n_counts; k++)
        for (int i = 0; i < 5 && i < n_mats; i++) {
            int m = i < 4 ? i : n_mats - 1, T = counts[k];
            cpu->matmul(ours, x, weights[m], NULL, T, shapes[m].in, shapes[m].out);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, shapes[m].out, shapes[m].in, 1.0f, x, shapes[m].in,
                        weights[m], shapes[m].in, 0.0f, blas, shapes[m].out);
            double diff = 0, scale = 0; /* relative to the largest output: sums of mixed signs cancel */
            for (size_t j = 0; j < (size_t)T * shapes[m].out; j++) {
                diff = fmax(diff, fabs(ours[j] - blas[j]));
                scale = fmax(scale, fabs(blas[j]));
            }
            if (diff / scale > worst) worst = diff / scale;
        }
    if (worst > 1e-4) fatal("bench_matmul_rows: the kernel differs from sgemm (max rel err %.3g)", worst);

    double best[MAX_COUNTS][2];
    for (int k = 0; k < n_counts; k++) best[k][0] = best[k][1] = 1e30;
    for (int r = 0; r < reps; r++)
        for (int k = 0; k < n_counts; k++)
            for (int side = 0; side < 2; side++) {
                int T = counts[k];
                double t0 = now_seconds();
                for (int i = 0; i < n_mats; i++) {
                    if (side == 0) cpu->matmul(ours, x, weights[i], NULL, T, shapes[i].in, shapes[i].out);
                    else
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, shapes[i].out, shapes[i].in, 1.0f, x,
                                    shapes[i].in, weights[i], shapes[i].in, 0.0f, blas, shapes[i].out);
                }
                double dt = now_seconds() - t0;
                if (dt < best[k][side]) best[k][side] = dt;
            }
    printf("# %d matmuls per step (%.0f MB of fp32 weights); kernel vs sgemm max rel err %.2g\n", n_mats,
           total * 4.0 / 1e6, worst);
    printf("%5s %12s %10s %8s %12s %10s\n", "rows", "medusa-c ms", "vs 1 row", "GB/s", "sgemm ms", "vs ours");
    for (int k = 0; k < n_counts; k++)
        printf("%5d %12.2f %9.2fx %8.1f %12.2f %9.2fx\n", counts[k], 1e3 * best[k][0], best[k][0] / best[0][0],
               total * 4.0 / best[k][0] / 1e9, 1e3 * best[k][1], best[k][1] / best[k][0]);
    return 0;
}
