/* The CPU's matmul and embedding on weights kept in their file's format (matmul_q, embedding_q) against the fp32 ops
 * on the same weights dequantised by formats/weights.c (whose K-quants and Q5_0/Q5_1 test_kquants checks against the
 * gguf package, and whose Q4_0/Q4_1/Q8_0 test_smollm2's logits check against transformers): every type, the decoding,
 * tree and prefill row counts, every SIMD build this CPU runs (each in a child process, MEDUSA_CPU_SIMD set). The
 * decoded weights must be the same floats bit for bit (one-hot inputs read them out), the products within 1e-5 of the
 * fp32 path relative to the sum of |w x|. */
#include <sys/wait.h>
#include <unistd.h>

#include "../formats/weights.h"
#include "../kernels/cpu/cpu_ops.h"
#include "../kernels/cpu/simd.h"
#include "test.h"

static Rng rng;

static float *random_floats(size_t n) {
    float *x = xmalloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = (float)((int)rng_below(&rng, 2001) - 1000) / 500.0f;
    return x;
}

/* one-hot input rows read the weights out: out[t, o] = w[o, i + t] exactly (up to the sign of a zero, which the sum
 * with +0 loses) */
static void check_decoded(DType type, const uint8_t *w, const float *ref, int OC, int IC) {
    float in[4 * 512], out[4 * 64];
    int differ = 0;
    for (int i = 0; i < IC; i += 4) {
        memset(in, 0, sizeof(float) * 4 * (size_t)IC);
        for (int t = 0; t < 4; t++) in[t * IC + i + t] = 1.0f;
        cpu_matmul_q(out, OC, in, w, type, NULL, 4, IC, OC);
        for (int t = 0; t < 4; t++)
            for (int o = 0; o < OC; o++) differ += out[t * OC + o] != ref[(size_t)o * IC + i + t];
    }
    float emb[2 * 512];
    int32_t tokens[2] = {OC - 1, 0};
    cpu_embedding_q(emb, tokens, w, type, 2, IC);
    int emb_differ = memcmp(emb, ref + (size_t)(OC - 1) * IC, sizeof(float) * IC) != 0 ||
                     memcmp(emb + IC, ref, sizeof(float) * IC) != 0;
    CHECK(differ == 0 && emb_differ == 0,
          "%s [%d, %d]: decoded weights == dequantised (%d differ%s; embedding_q bit for bit)", dtype_name(type), OC,
          IC, differ, emb_differ ? "; embedding_q differs" : "");
}

/* matmul_q vs matmul on the dequantised weights: a band of columns of a wider output, with and without bias */
static void check_products(DType type, int T, int IC, int OC) {
    uint8_t *w = random_packed_rows(type, OC, IC, &rng);
    float *ref_w = xmalloc(sizeof(float) * (size_t)OC * IC);
    weights_dequantize(type, w, ref_w, (int64_t)OC * IC);
    float *in = random_floats((size_t)T * IC), *bias = random_floats((size_t)OC);
    int pad = 3, ldo = OC + pad;
    float *want = xmalloc(sizeof(float) * (size_t)T * OC), *got = xmalloc(sizeof(float) * (size_t)T * ldo);
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        const float *b = with_bias ? bias : NULL;
        cpu_matmul(want, in, ref_w, b, T, IC, OC);
        for (int i = 0; i < T * ldo; i++) got[i] = 7.0f; /* the band's outside must stay */
        cpu_matmul_q(got, ldo, in, w, type, b, T, IC, OC);
        double worst = 0;
        int outside = 0;
        for (int t = 0; t < T; t++) {
            for (int o = 0; o < OC; o++) {
                double scale = b ? fabs(b[o]) : 0;
                for (int i = 0; i < IC; i++) scale += fabs((double)ref_w[(size_t)o * IC + i] * in[(size_t)t * IC + i]);
                double err =
                    fabs((double)got[(size_t)t * ldo + o] - want[(size_t)t * OC + o]) / (scale > 0 ? scale : 1);
                if (!(err <= worst)) worst = err;
            }
            for (int o = OC; o < ldo; o++) outside += got[(size_t)t * ldo + o] != 7.0f;
        }
        CHECK(worst <= 1e-5 && outside == 0, "%s T=%d IC=%d OC=%d%s: |matmul_q - matmul| / sum|w x| = %.2e (<= 1e-5)%s",
              dtype_name(type), T, IC, OC, b ? " + bias" : "", worst, outside ? "; wrote outside its band" : "");
    }
    if (T == 1) check_decoded(type, w, ref_w, OC < 64 ? OC : 64, IC < 512 ? IC : 512);
    free(w), free(ref_w), free(in), free(bias), free(want), free(got);
}

/* A row's result does not depend on how many rows a call takes (up to CPU_SMALL_ROWS): a tree's rows equal one-row
 * decoding steps bit for bit, which greedy Medusa decoding's equality with plain decoding rests on. */
static void check_row_count_invariance(DType type) {
    int IC = 512, OC = 9, max_T = CPU_SMALL_ROWS;
    uint8_t *w = random_packed_rows(type, OC, IC, &rng);
    float *in = random_floats((size_t)max_T * IC), *all = xmalloc(sizeof(float) * (size_t)max_T * OC);
    float *some = xmalloc(sizeof(float) * (size_t)max_T * OC);
    cpu_matmul_q(all, OC, in, w, type, NULL, max_T, IC, OC);
    int differ = 0;
    for (int T = 1; T < max_T; T++) {
        cpu_matmul_q(some, OC, in, w, type, NULL, T, IC, OC);
        differ += memcmp(some, all, sizeof(float) * (size_t)T * OC) != 0;
        /* and the rows from the middle of a tree: the same row at another place */
        cpu_matmul_q(some, OC, in + (size_t)(max_T - T) * IC, w, type, NULL, T, IC, OC);
        differ += memcmp(some, all + (size_t)(max_T - T) * OC, sizeof(float) * (size_t)T * OC) != 0;
    }
    CHECK(differ == 0, "%s: each row's result bit for bit the same for T = 1..%d rows at any place (%d calls differ)",
          dtype_name(type), max_T, differ);
    free(w), free(in), free(all), free(some);
}

static void run_checks(void) {
    rng_seed(&rng, 12345);
    const DType types[] = {DT_F16, DT_BF16, DT_Q8_0, DT_Q4_0, DT_Q4_1, DT_Q5_0, DT_Q5_1, DT_Q4_K, DT_Q5_K, DT_Q6_K};
    /* decoding (1), the fused rows (2-4), trees (5-24: decoded pairs), prefill (25+: sgemm on tiles) */
    const int row_counts[] = {1, 2, 3, 4, 5, 9, 24, 25, 40};
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++)
        for (size_t r = 0; r < sizeof row_counts / sizeof row_counts[0]; r++)
            check_products(types[k], row_counts[r], 512, 7 + 2 * (int)r); /* odd row counts: a single last row */
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) check_row_count_invariance(types[k]);
    /* enough rows for every thread to take a share */
    check_products(DT_Q4_1, 1, 256, 301);
    check_products(DT_Q6_K, 6, 768, 300);
    EXPECT_FATAL(cpu_matmul_q(NULL, 1, NULL, NULL, DT_Q4_K, NULL, 1, 100, 1), "rows of 100 elements",
                 "matmul_q refuses a row length that is not whole blocks");
    EXPECT_FATAL(cpu_matmul_q(NULL, 1, NULL, NULL, DT_F32, NULL, 1, 64, 1), "F32 weight",
                 "matmul_q refuses a type that is not a packed weight format");
}

/* In a child process (the build is chosen once per process): this build's checks, or none where the CPU lacks it. */
static void run_build(const char *name, int fd) {
    setenv("MEDUSA_CPU_SIMD", name, 1);
    test_fatal_msg[0] = '\0';
    set_fatal_hook(test_fatal_hook);
    volatile int refused = 0;
    if (setjmp(test_fatal_jmp) == 0) simd_level();
    else refused = 1;
    set_fatal_hook(NULL);
    if (refused) printf("-- %s build: not run (%s)\n", name, test_fatal_msg);
    else {
        printf("-- %s build\n", name);
        run_checks();
        int simd = strcmp(name, "baseline") != 0;
        CHECK(backend_prefers_native(backend_cpu()) == simd,
              "--precision auto keeps a GGUF's formats on the CPU with the %s build: %s", name, simd ? "yes" : "no");
    }
    int counts[2] = {test_passed, test_failed};
    ensure(write(fd, counts, sizeof counts) == (ssize_t)sizeof counts);
    fflush(stdout);
}

int main(void) {
    static const char *names[] = {"baseline", "avx2", "avx512"};
    int total_passed = 0, total_failed = 0;
    for (int level = 0; level < 3; level++) {
        int fds[2];
        ensure(pipe(fds) == 0);
        fflush(stdout);
        pid_t pid = fork();
        ensure(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            run_build(names[level], fds[1]);
            _exit(0);
        }
        close(fds[1]);
        int counts[2], status;
        if (read(fds[0], counts, sizeof counts) != (ssize_t)sizeof counts) counts[0] = 0, counts[1] = 1; /* it died */
        close(fds[0]);
        waitpid(pid, &status, 0);
        total_passed += counts[0], total_failed += counts[1];
    }
    test_passed = total_passed, test_failed = total_failed;
    return test_summary();
}
