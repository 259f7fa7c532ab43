/* Every op of the CUDA backend against the CPU reference backend on random inputs: a table of rows (op, shape,
 * element type, tolerance) run on the backend under test, then whole-model checks. `make test` links it with the CUDA
 * sources compiled by the CPU emulator (tests/cudaemu); `make test-cuda` links the same file with the nvcc-built
 * backend (test_cuda_ops_gpu) and runs it on a GPU, where `--perf` gives each row's time per call and GFLOP/s or GB/s
 * (main() lists the options). */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "../common/rng.h"
#include "../infer/decoder.h"
#include "../kernels/ops.h"
#include "../model/llama.h"
#include "../model/medusa.h"
#include "../model/memory_plan.h"
#include "../train/trainer.h"
#include "test.h"

static const Backend *cpu, *gpu;
static Rng rng;

/* The emulator counts cudaMalloc calls (tests/cudaemu); on a GPU (make test-cuda) the counter is absent. */
long cuda_emu_malloc_calls(void) __attribute__((weak));
int cuda_emu_gemm_truncates(void) __attribute__((weak));
/* The bf16 GEMMs sum as the CPU's do: in the emulator, unless it truncates as a GPU's tensor cores may
 * (CUDA_EMU_GEMM=truncate, tests/cuda_ops_truncating.sh, which checks the GPU's tolerances below on the CPU). */
static int gemm_sums_like_cpu(void) { return cuda_emu_malloc_calls && !cuda_emu_gemm_truncates(); }

/* The tolerance of a bf16 GEMM's fp32 output, a sum of K products. The emulator sums them with OpenBLAS as the CPU
 * does, and `emulated` holds there. A GPU's tensor cores may truncate at each addition: K additions with unit
 * roundoff 2^-23 can then be off by K x 2^-23 of the sum of the products' magnitudes, which these inputs keep within
 * a few times the largest output. That is 3.8e-3 at K = 32000 (the classifier's input gradient, a sum over the
 * vocabulary, which the emulator's truncating GEMMs leave 4.2e-5 off), while a wrong operand or layout is off by
 * O(1). */
static double gemm_tol(int K, double emulated) {
    double truncating = K * ldexp(1.0, -23);
    return gemm_sums_like_cpu() || truncating < emulated ? emulated : truncating;
}

static float *random_floats(size_t n, float scale) {
    float *x = xmalloc(sizeof(float) * (n ? n : 1));
    fill_uniform(x, n, scale, &rng);
    return x;
}

static void *to_gpu(const void *host, size_t bytes) {
    void *dev = gpu->alloc(bytes ? bytes : 1);
    if (bytes) gpu->upload(dev, host, bytes);
    return dev;
}

static float *from_gpu(const void *dev, size_t n) {
    float *host = xmalloc(sizeof(float) * (n ? n : 1));
    if (n) gpu->download(host, dev, sizeof(float) * n);
    return host;
}

/* Downloads `dev` and compares it with the CPU's `want`: the max error relative to the largest |want|. */
static void expect_close(const char *what, const float *dev, const float *want, size_t n, double tol) {
    float *got = from_gpu(dev, n);
    double abs_err, rel_err;
    max_errors(got, want, n, &abs_err, &rel_err);
    CHECK(rel_err <= tol, "%s: max abs err %.3g, rel err %.3g (tol %.0e)", what, abs_err, rel_err, tol);
    free(got);
}

/* Parameters after AdamW steps on gradients that differ by rounding, on a GPU. Where a gradient is itself at rounding
 * level (a sum that cancels), its sign may differ between the backends, and AdamW's normalised step then moves that
 * parameter apart by up to twice its largest step, (1 - beta1) / sqrt(1 - beta2) = 3.2 times the learning rate, on
 * every step. So all but 1 in 1000 parameters must agree within 1e-4 of the largest, and every one within
 * 2 x 3.2 x the sum of the learning rates so far (a wrong update moves most parameters). */
static void expect_adamw_close(const char *what, const float *dev, const float *want, size_t n, double lr_sum) {
    float *got = from_gpu(dev, n);
    double scale = 0, worst = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    size_t apart = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        apart += !(d <= 1e-4 * scale);
        if (!(d <= worst)) worst = d; /* NaN propagates */
    }
    CHECK(apart * 1000 <= n && worst <= 6.4 * lr_sum,
          "%s: %zu of %zu apart by more than 1e-4 of the largest (at most 1 in 1000), max abs err %.3g (at most %.3g: "
          "2 x AdamW's largest steps)",
          what, apart, n, worst, 6.4 * lr_sum);
    free(got);
}

/* --- the op table: one row per (op, shape, element type, tolerance), each checked on every backend under test
 * against the CPU reference (and, with --perf, timed on each backend) --- */

/* A row's shape: p[] as its op's check and bench read it (OP_PARAMS names them); tol: the largest error allowed
 * against the CPU, relative to the reference's largest magnitude (0: equal); check: NULL for a row that is only timed
 * (--perf). */
typedef struct OpRow OpRow;
struct OpRow {
    const char *op;    /* the op of kernels/ops.def that it checks and times */
    const char *dtype; /* its element type */
    int p[10];
    double tol;
    void (*check)(const OpRow *r);
    const char *label; /* the case in words, where the shape does not say it */
};

/* The backend's collectives (kernels/cuda/comm.cu) on a communicator of one process: NCCL, or in the emulated build its
 * stand-in over MPI (tests/cudaemu/nccl.h); a sum over one rank leaves x as it was, a whole buffer or a slice of it
 * (the trainer's per-head buckets). Across ranks: tests/e2e_mpi_cuda.sh. */
static void test_comm(void) {
    if (!gpu->comm_open) {
        printf("  skipped: collectives (the backend was built without NCCL, or the emulator without MPI)\n");
        return;
    }
    unsigned char *id = xcalloc(1, gpu->comm_id_bytes);
    gpu->comm_new_id(id);
    void *comm = gpu->comm_open(id, 0, 1, "the op test's communicator");
    size_t n = 3000, bytes = sizeof(float) * n;
    float *x = random_floats(n, 1.0f), *back = xmalloc(bytes), *d = to_gpu(x, bytes);
    gpu->comm_sum(comm, d, n);
    gpu->comm_sum(comm, d + 1000, 1000);
    gpu->comm_wait(comm);
    gpu->download(back, d, bytes);
    CHECK(!memcmp(back, x, bytes), "%s: sums over a communicator of one rank (whole, then a slice) leave x as it was",
          gpu->comm_library);
    gpu->comm_close(comm);
    EXPECT_FATAL(gpu->comm_open(id, 1, 1, "a bad rank"), "a bad rank",
                 "comm_open of rank 1 in a communicator of 1: fatal, naming the communicator");
    gpu->free(d);
    free(id);
    free(x);
    free(back);
}

/* --gemm-tune: a GEMM shape's first use times the heuristic's algorithms and keeps the fastest; with the emulator's
 * first algorithm made 2 ms slower (CUDA_EMU_LT_SLOW_FIRST) the tuner must drop it, the product staying the CPU's;
 * a later call of the shape is not timed again. (On a GPU there is no slow first: the test then checks the count.) */
static void test_gemm_tune(void) {
    int T = 5, IC = 48, OC = 40; /* a shape no other test uses, so that its plan is made here */
    float *w = random_floats((size_t)OC * IC, 0.5f), *x = random_floats((size_t)T * IC, 1.0f);
    uint16_t *w16 = xmalloc(sizeof(uint16_t) * (size_t)OC * IC);
    for (int i = 0; i < OC * IC; i++) w16[i] = f32_to_bf16(w[i]);
    float *want = xmalloc(sizeof(float) * (size_t)T * OC);
    cpu->matmul_bf16(want, x, w16, NULL, T, IC, OC);
    float *dx = to_gpu(x, sizeof(float) * (size_t)T * IC), *dout = gpu->alloc(sizeof(float) * (size_t)T * OC);
    uint16_t *dw = to_gpu(w16, sizeof(uint16_t) * (size_t)OC * IC);
    int emulated = !strcmp(gpu->device, "CUDA emulator on the CPU");
    if (emulated) setenv("CUDA_EMU_LT_SLOW_FIRST", "1", 1);
    gpu->set_gemm_tune(1);
    CudaGemmTuning before = cuda_gemm_tuning();
    gpu->matmul_bf16(dout, dx, dw, NULL, T, IC, OC);
    CudaGemmTuning after = cuda_gemm_tuning();
    expect_close("matmul_bf16 after --gemm-tune timed its algorithms", dout, want, (size_t)T * OC, 1e-5);
    CHECK(after.shapes == before.shapes + 1 && (!emulated || after.changed == before.changed + 1),
          "--gemm-tune: the new shape timed once (%d shape), the slowed first algorithm dropped (%d changed)",
          after.shapes - before.shapes, after.changed - before.changed);
    gpu->matmul_bf16(dout, dx, dw, NULL, T, IC, OC);
    CHECK(cuda_gemm_tuning().shapes == after.shapes, "--gemm-tune: the shape's second use is not timed again");
    gpu->set_gemm_tune(0);
    unsetenv("CUDA_EMU_LT_SLOW_FIRST");
    gpu->free(dx), gpu->free(dout), gpu->free(dw);
    free(w), free(x), free(w16), free(want);
}

/* Uploads through the pinned staging slots: more uploads than slots, each of other bytes from one reused host buffer,
 * all arrive (a slot is rewritten only after its copy), none waits for the queue; one larger than a slot is a
 * synchronous copy and is counted. */
static void test_staged_uploads(void) {
    enum { N = 40, ELEMS = 1000 };
    float host[ELEMS], *dev[N];
    CudaBlockingCopies before = cuda_blocking_copies();
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < ELEMS; j++) host[j] = (float)(i * ELEMS + j);
        dev[i] = to_gpu(host, sizeof host);
    }
    CudaBlockingCopies queued = cuda_blocking_copies();
    int arrived = 1;
    for (int i = 0; i < N; i++) {
        float *back = from_gpu(dev[i], ELEMS);
        for (int j = 0; j < ELEMS; j++) arrived &= back[j] == (float)(i * ELEMS + j);
        free(back);
        gpu->free(dev[i]);
    }
    size_t big = (size_t)3 << 20;
    float *large = random_floats(big / sizeof(float), 1.0f), *d = to_gpu(large, big);
    CudaBlockingCopies after = cuda_blocking_copies();
    float *back = from_gpu(d, big / sizeof(float));
    CHECK(arrived && queued.uploads == before.uploads && after.uploads == queued.uploads + 1 &&
              !memcmp(back, large, big),
          "%d uploads of 4 KB through the staging slots: all arrived, none waited for the queue; one of 3 MiB: copied, "
          "counted as blocking (%lld)",
          N, after.uploads - queued.uploads);
    /* from page-locked memory, 3 MiB and a part of it: queued, not counted */
    float *locked = gpu->alloc_host(big), *d2 = gpu->alloc(big);
    memcpy(locked, large, big);
    CudaBlockingCopies start = cuda_blocking_copies();
    gpu->upload(d2, locked, big);
    gpu->upload(d, locked + 1000, 4000 * sizeof(float));
    CudaBlockingCopies end = cuda_blocking_copies();
    float *back2 = from_gpu(d2, big / sizeof(float)), *part = from_gpu(d, 4000);
    CHECK(locked && end.uploads == start.uploads && !memcmp(back2, large, big) &&
              !memcmp(part, large + 1000, 4000 * sizeof(float)),
          "uploads from page-locked host memory (alloc_host) of 3 MiB and of 16 KB inside it: arrived, none counted as "
          "blocking (%lld)",
          end.uploads - start.uploads);
    /* download_queued: into page-locked memory queued (there after the next download); into pageable memory, waits */
    memset(locked, 0, big);
    float *pageable = xcalloc(4000, sizeof(float)), one;
    CudaBlockingCopies down_start = cuda_blocking_copies();
    gpu->download_queued(locked + 5, d, 4000 * sizeof(float));
    CudaBlockingCopies queued_down = cuda_blocking_copies();
    gpu->download_queued(pageable, d, 4000 * sizeof(float));
    CudaBlockingCopies waited_down = cuda_blocking_copies();
    gpu->download(&one, d, sizeof one);
    CHECK(queued_down.downloads == down_start.downloads && waited_down.downloads == down_start.downloads + 1 &&
              !memcmp(locked + 5, large + 1000, 4000 * sizeof(float)) && locked[4] == 0 && locked[4005] == 0 &&
              !memcmp(pageable, large + 1000, 4000 * sizeof(float)),
          "download_queued of 16 KB into page-locked memory: not counted as blocking, there after the next download; "
          "into pageable memory: a download (%lld counted)",
          waited_down.downloads - queued_down.downloads);
    free(pageable);
    gpu->free_host(locked);
    gpu->free(d), gpu->free(d2);
    free(large), free(back), free(back2), free(part);
}

static void test_memory(void) {
    size_t n = 1000;
    float *x = random_floats(n, 1.0f), *back = xmalloc(sizeof(float) * n);
    float *a = to_gpu(x, sizeof(float) * n), *b = gpu->alloc(sizeof(float) * n);
    gpu->copy(b, a, sizeof(float) * n);
    gpu->download(back, b, sizeof(float) * n);
    CHECK(!memcmp(back, x, sizeof(float) * n), "upload, copy, download round trip");
    gpu->fill_zero(b, sizeof(float) * n);
    gpu->download(back, b, sizeof(float) * n);
    int zero = 1;
    for (size_t i = 0; i < n; i++) zero &= back[i] == 0.0f;
    CHECK(zero, "fill_zero");
    gpu->free(a);
    void *again = gpu->alloc(sizeof(float) * n);
    CHECK(again == a, "a freed block is cached and handed out again (no cudaFree/cudaMalloc per step)");
    gpu->free(again);
    gpu->free(b);
    EXPECT_FATAL(gpu->free(x), "did not allocate", "freeing a host pointer through the backend is an error");
    free(x);
    free(back);
}

/* embedding, then rmsnorm of its rows */
static void check_embedding(const OpRow *r) {
    int T = r->p[0], C = r->p[1], V = r->p[2];
    float *table = random_floats((size_t)V * C, 1.0f), *w = random_floats(C, 1.0f);
    int32_t *tokens = xmalloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) tokens[t] = (int32_t)rng_below(&rng, V);
    float *want = xmalloc(sizeof(float) * T * C), *norm = xmalloc(sizeof(float) * T * C);
    cpu->embedding(want, tokens, table, T, C);
    cpu->rmsnorm(norm, want, w, T, C, 1e-5f);

    float *d_table = to_gpu(table, sizeof(float) * V * C), *d_w = to_gpu(w, sizeof(float) * C);
    int32_t *d_tokens = to_gpu(tokens, sizeof(int32_t) * (size_t)T);
    float *d_out = gpu->alloc(sizeof(float) * T * C), *d_norm = gpu->alloc(sizeof(float) * T * C);
    gpu->embedding(d_out, d_tokens, d_table, T, C);
    char what[96];
    snprintf(what, sizeof what, "embedding (T=%d, C=%d)", T, C);
    expect_close(what, d_out, want, (size_t)T * C, r->tol);
    gpu->rmsnorm(d_norm, d_out, d_w, T, C, 1e-5f);
    snprintf(what, sizeof what, "rmsnorm (T=%d, C=%d)", T, C);
    expect_close(what, d_norm, norm, (size_t)T * C, 1e-5);
    gpu->free(d_table), gpu->free(d_w), gpu->free(d_tokens), gpu->free(d_out), gpu->free(d_norm);
    free(table), free(w), free(want), free(norm), free(tokens);
}

static void check_matmul(const OpRow *r) {
    int T = r->p[0], IC = r->p[1], OC = r->p[2], with_bias = r->p[3];
    float *in = random_floats((size_t)T * IC, 1.0f), *w = random_floats((size_t)OC * IC, 0.5f);
    float *bias = with_bias ? random_floats(OC, 1.0f) : NULL, *want = xmalloc(sizeof(float) * T * OC);
    cpu->matmul(want, in, w, bias, T, IC, OC);
    float *d_in = to_gpu(in, sizeof(float) * T * IC), *d_w = to_gpu(w, sizeof(float) * OC * IC);
    float *d_bias = bias ? to_gpu(bias, sizeof(float) * OC) : NULL, *d_out = gpu->alloc(sizeof(float) * T * OC);
    gpu->matmul(d_out, d_in, d_w, d_bias, T, IC, OC);
    char what[96];
    snprintf(what, sizeof what, "matmul T=%d IC=%d OC=%d %s", T, IC, OC, bias ? "+ bias" : "no bias");
    expect_close(what, d_out, want, (size_t)T * OC, r->tol);
    gpu->free(d_in), gpu->free(d_w), gpu->free(d_out);
    if (d_bias) gpu->free(d_bias);
    free(in), free(w), free(bias), free(want);
}

/* Gradients accumulate onto non-zero buffers; `which` selects the outputs (1 dinp, 2 dweight, 4 dbias). */
static void check_matmul_backward(const OpRow *r) {
    int T = r->p[0], IC = r->p[1], OC = r->p[2], which = r->p[3];
    size_t n_in = (size_t)T * IC, n_w = (size_t)OC * IC;
    float *in = random_floats(n_in, 1.0f), *w = random_floats(n_w, 0.5f), *dout = random_floats((size_t)T * OC, 1.0f);
    float *dinp = random_floats(n_in, 1.0f), *dw = random_floats(n_w, 1.0f), *db = random_floats(OC, 1.0f);
    float *d_in = to_gpu(in, sizeof(float) * n_in), *d_w = to_gpu(w, sizeof(float) * n_w);
    float *d_dout = to_gpu(dout, sizeof(float) * T * OC), *d_dinp = to_gpu(dinp, sizeof(float) * n_in);
    float *d_dw = to_gpu(dw, sizeof(float) * n_w), *d_db = to_gpu(db, sizeof(float) * OC);
    cpu->matmul_backward(which & 1 ? dinp : NULL, which & 2 ? dw : NULL, which & 4 ? db : NULL, dout, in, w, T, IC, OC);
    gpu->matmul_backward(which & 1 ? d_dinp : NULL, which & 2 ? d_dw : NULL, which & 4 ? d_db : NULL, d_dout, d_in, d_w,
                         T, IC, OC);
    char what[96];
    snprintf(what, sizeof what, "matmul_backward T=%d IC=%d OC=%d dinp", T, IC, OC);
    expect_close(what, d_dinp, dinp, n_in, r->tol);
    snprintf(what, sizeof what, "matmul_backward T=%d IC=%d OC=%d dweight", T, IC, OC);
    expect_close(what, d_dw, dw, n_w, r->tol);
    snprintf(what, sizeof what, "matmul_backward T=%d IC=%d OC=%d dbias", T, IC, OC);
    expect_close(what, d_db, db, OC, r->tol);
    gpu->free(d_in), gpu->free(d_w), gpu->free(d_dout), gpu->free(d_dinp), gpu->free(d_dw), gpu->free(d_db);
    free(in), free(w), free(dout), free(dinp), free(dw), free(db);
}

/* --- bf16 weights: the CUDA GEMMs (cuBLASLt) against the CPU's, which widen the same bf16 values to fp32,
 * so only the order of the fp32 sums differs; and both against the fp32 op, which they must differ from by
 * no more than bf16 rounding (and by something: the rounding must happen). --- */
static uint16_t *random_bf16(size_t n, float scale) {
    float *x = random_floats(n, scale);
    uint16_t *b = xmalloc(sizeof(uint16_t) * (n ? n : 1));
    cpu->to_bf16(b, x, n);
    free(x);
    return b;
}
static float *widened(const uint16_t *b, size_t n) {
    float *x = xmalloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_float(b[i]);
    return x;
}
/* relative error of a bf16 result against the fp32 op, which must be > 0 and within the rounding of the inputs */
static void expect_bf16_rounding(const char *what, const float *got, const float *fp32, size_t n) {
    double abs_err, rel_err;
    max_errors(got, fp32, n, &abs_err, &rel_err);
    CHECK(rel_err > 0 && rel_err <= 2e-2, "%s vs the fp32 op: rel err %.3g (bf16 inputs: 0 < err <= 2e-2)", what,
          rel_err);
}

static void check_to_bf16(const OpRow *r) {
    /* round to nearest even, by hand: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 (0x3f80, 0x3f81) -> even
     * 0x3f80; 1 + 3 * 2^-8 is halfway between 0x3f81 and 0x3f82 -> 0x3f82; NaN stays NaN, inf stays inf */
    float x[6] = {1.00390625f, 1.01171875f, -2.0f, INFINITY, NAN, 3.0e38f};
    uint16_t want[6] = {0x3f80, 0x3f82, 0xc000, 0x7f80, 0, 0x7f62}, got[6], cpu_got[6];
    float *d_x = to_gpu(x, sizeof x);
    uint16_t *d_b = gpu->alloc(sizeof got);
    gpu->to_bf16(d_b, d_x, 6);
    gpu->download(got, d_b, sizeof got);
    cpu->to_bf16(cpu_got, x, 6);
    int ok = 1;
    for (int i = 0; i < 6; i++) ok &= i == 4 ? (got[i] & 0x7fff) > 0x7f80 : got[i] == want[i];
    CHECK(ok && !memcmp(got, cpu_got, sizeof got),
          "to_bf16: ties to even, inf, NaN, 3e38 (%04x %04x %04x %04x %04x %04x)", got[0], got[1], got[2], got[3],
          got[4], got[5]);
    size_t n = (size_t)r->p[0], off = (size_t)r->p[1]; /* off: misaligned by one element (the scalar path) */
    float *big = random_floats(n, 100.0f);
    uint16_t *d_big0 = gpu->alloc(sizeof(uint16_t) * (n + off)), *d_big = d_big0 + off,
             *c_big = xmalloc(sizeof(uint16_t) * n), *g_big = xmalloc(sizeof(uint16_t) * n);
    float *d_src0 = gpu->alloc(sizeof(float) * (n + off)), *d_src = d_src0 + off;
    gpu->upload(d_src, big, sizeof(float) * n);
    gpu->to_bf16(d_big, d_src, n);
    gpu->download(g_big, d_big, sizeof(uint16_t) * n);
    cpu->to_bf16(c_big, big, n);
    CHECK(!memcmp(g_big, c_big, sizeof(uint16_t) * n), "to_bf16: %zu random values%s bit-identical to the CPU's", n,
          off ? " (misaligned)" : "");
    gpu->free(d_x), gpu->free(d_b), gpu->free(d_big0), gpu->free(d_src0);
    free(big), free(c_big), free(g_big);
}

static void check_embedding_bf16(const OpRow *r) {
    int T = r->p[0], C = r->p[1], V = r->p[2];
    uint16_t *table = random_bf16((size_t)V * C, 1.0f);
    int32_t *tokens = xmalloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) tokens[t] = (int32_t)rng_below(&rng, V);
    float *want = xmalloc(sizeof(float) * T * C), *wide = widened(table, (size_t)V * C),
          *ref = xmalloc(sizeof(float) * T * C);
    cpu->embedding_bf16(want, tokens, table, T, C);
    cpu->embedding(ref, tokens, wide, T, C);
    CHECK(!memcmp(want, ref, sizeof(float) * T * C), "embedding_bf16 (CPU) == embedding of the widened table");
    uint16_t *d_table = to_gpu(table, sizeof(uint16_t) * V * C);
    int32_t *d_tokens = to_gpu(tokens, sizeof(int32_t) * (size_t)T);
    float *d_out = gpu->alloc(sizeof(float) * T * C);
    gpu->embedding_bf16(d_out, d_tokens, d_table, T, C);
    char what[96];
    snprintf(what, sizeof what, "embedding_bf16 (T=%d, C=%d)", T, C);
    expect_close(what, d_out, want, (size_t)T * C, r->tol);
    gpu->free(d_table), gpu->free(d_tokens), gpu->free(d_out);
    free(table), free(want), free(wide), free(ref), free(tokens);
}

/* matmul_q on the weight format p[4] (a DType) into a band of a wider output (ldo = OC + 3), then embedding_q of
 * some of its rows: the GPU's against the CPU's (whose exactness tests/test_matmul_q checks) */
static void check_matmul_q(const OpRow *r) {
    int T = r->p[0], IC = r->p[1], OC = r->p[2], with_bias = r->p[3], ldo = OC + 3;
    DType type = (DType)r->p[4];
    uint8_t *w = random_packed_rows(type, OC, IC, &rng);
    size_t w_bytes = dtype_row_bytes(type, IC) * (size_t)OC;
    float *in = random_floats((size_t)T * IC, 1.0f), *bias = with_bias ? random_floats(OC, 1.0f) : NULL;
    float *want = random_floats((size_t)T * ldo, 1.0f); /* the band's outside must stay as it was */
    float *d_out = to_gpu(want, sizeof(float) * T * ldo), *d_in = to_gpu(in, sizeof(float) * T * IC);
    float *d_bias = bias ? to_gpu(bias, sizeof(float) * OC) : NULL;
    void *d_w = to_gpu(w, w_bytes);
    cpu->matmul_q(want, ldo, in, w, type, bias, T, IC, OC);
    gpu->matmul_q(d_out, ldo, d_in, d_w, type, d_bias, T, IC, OC);
    char what[96];
    snprintf(what, sizeof what, "matmul_q %s T=%d IC=%d OC=%d %s", dtype_name(type), T, IC, OC,
             bias ? "+ bias" : "no bias");
    expect_close(what, d_out, want, (size_t)T * ldo, r->tol);
    int32_t tokens[3] = {OC - 1, 0, OC / 2};
    float *emb = xmalloc(sizeof(float) * 3 * IC), *d_emb = gpu->alloc(sizeof(float) * 3 * IC);
    int32_t *d_tokens = to_gpu(tokens, sizeof tokens);
    cpu->embedding_q(emb, tokens, w, type, 3, IC);
    gpu->embedding_q(d_emb, d_tokens, d_w, type, 3, IC);
    float *got = from_gpu(d_emb, (size_t)3 * IC);
    CHECK(!memcmp(got, emb, sizeof(float) * 3 * IC), "embedding_q %s C=%d: the CPU's floats, bit for bit",
          dtype_name(type), IC);
    gpu->free(d_out), gpu->free(d_in), gpu->free(d_w), gpu->free(d_emb), gpu->free(d_tokens);
    if (d_bias) gpu->free(d_bias);
    free(w), free(in), free(bias), free(want), free(emb), free(got);
}

/* Counts the bf16 values of the GPU's result (downloaded) one step from the CPU's, and fails on any further apart:
 * the two fp32 results before rounding differ by ~1e-6, which can move a value across a rounding boundary. */
static void expect_bf16_steps(const char *what, const uint16_t *d_got, const uint16_t *want, size_t n) {
    uint16_t *got = xmalloc(sizeof(uint16_t) * (n ? n : 1));
    gpu->download(got, d_got, sizeof(uint16_t) * n);
    size_t apart = 0, far = 0;
    for (size_t i = 0; i < n; i++) {
        int steps = abs((int)got[i] - (int)want[i]); /* adjacent bf16 values of one sign differ by 1 */
        apart += steps == 1, far += steps > 1;
    }
    CHECK(far == 0, "%s: CUDA within one bf16 step of the CPU (%zu of %zu values one step apart)", what, apart, n);
    free(got);
}

/* matmul_bf16_out: the CPU's is matmul_bf16_in's fp32 product rounded, plus bias rounded again, bit for bit; the GPU's
 * within one bf16 step of it without a bias, and within bf16 rounding of the largest value with one (a step of the
 * product can be many steps of a smaller sum). */
static void test_matmul_bf16_out(const uint16_t *in16, const uint16_t *w, const uint16_t *d_in16, const uint16_t *d_w,
                                 const float *bias, const float *d_bias, int T, int IC, int OC) {
    size_t n = (size_t)T * OC;
    float *product = xmalloc(sizeof(float) * n);
    uint16_t *want = xmalloc(sizeof(uint16_t) * n), *got = xmalloc(sizeof(uint16_t) * n);
    cpu->matmul_bf16_in(product, in16, w, NULL, T, IC, OC, 0);
    for (size_t i = 0; i < n; i++) {
        float rounded = bf16_to_float(float_to_bf16(product[i]));
        want[i] = float_to_bf16(bias ? rounded + bias[i % OC] : rounded);
    }
    cpu->matmul_bf16_out(got, in16, w, bias, T, IC, OC);
    char what[96];
    snprintf(what, sizeof what, "matmul_bf16_out T=%d IC=%d OC=%d %s", T, IC, OC, bias ? "+ bias" : "no bias");
    CHECK(!memcmp(got, want, sizeof(uint16_t) * n), "%s (CPU) == the rounded product%s", what,
          bias ? " + bias, rounded" : "");
    uint16_t *d_out16 = gpu->alloc(sizeof(uint16_t) * n);
    gpu->matmul_bf16_out(d_out16, d_in16, d_w, d_bias, T, IC, OC);
    if (bias) {
        float *wide_want = widened(want, n), *d_wide = gpu->alloc(sizeof(float) * n);
        gpu->download(got, d_out16, sizeof(uint16_t) * n);
        float *wide_got = widened(got, n);
        gpu->upload(d_wide, wide_got, sizeof(float) * n);
        expect_close(what, d_wide, wide_want, n, 1e-2);
        gpu->free(d_wide);
        free(wide_want), free(wide_got);
    } else {
        expect_bf16_steps(what, d_out16, want, n);
    }
    gpu->free(d_out16);
    free(product), free(want), free(got);
}

/* matmul_bf16, then matmul_bf16_in (with and without accumulate) and matmul_bf16_out on its input rounded */
static void check_matmul_bf16(const OpRow *r) {
    int T = r->p[0], IC = r->p[1], OC = r->p[2], with_bias = r->p[3];
    float *in = random_floats((size_t)T * IC, 1.0f), *bias = with_bias ? random_floats(OC, 1.0f) : NULL;
    uint16_t *w = random_bf16((size_t)OC * IC, 0.5f);
    float *wide = widened(w, (size_t)OC * IC), *want = xmalloc(sizeof(float) * T * OC),
          *fp32 = xmalloc(sizeof(float) * T * OC);
    cpu->matmul_bf16(want, in, w, bias, T, IC, OC);
    cpu->matmul(fp32, in, wide, bias, T, IC, OC);
    char what[96];
    snprintf(what, sizeof what, "matmul_bf16 T=%d IC=%d OC=%d %s", T, IC, OC, bias ? "+ bias" : "no bias");
    expect_bf16_rounding(what, want, fp32, (size_t)T * OC);
    float *d_in = to_gpu(in, sizeof(float) * T * IC), *d_bias = bias ? to_gpu(bias, sizeof(float) * OC) : NULL;
    uint16_t *d_w = to_gpu(w, sizeof(uint16_t) * OC * IC);
    float *d_out = gpu->alloc(sizeof(float) * T * OC);
    gpu->matmul_bf16(d_out, d_in, d_w, d_bias, T, IC, OC);
    expect_close(what, d_out, want, (size_t)T * OC, gemm_tol(IC, r->tol));
    /* matmul_bf16_in on the input rounded beforehand: the CPU's result is matmul_bf16's, bit for bit */
    uint16_t *in16 = xmalloc(sizeof(uint16_t) * T * IC);
    cpu->to_bf16(in16, in, (size_t)T * IC);
    float *from16 = xmalloc(sizeof(float) * T * OC);
    cpu->matmul_bf16_in(from16, in16, w, bias, T, IC, OC, 0);
    CHECK(!memcmp(from16, want, sizeof(float) * T * OC), "%s: matmul_bf16_in (CPU) on the rounded input == matmul_bf16",
          what);
    uint16_t *d_in16 = to_gpu(in16, sizeof(uint16_t) * T * IC);
    gpu->matmul_bf16_in(d_out, d_in16, d_w, d_bias, T, IC, OC, 0);
    snprintf(what, sizeof what, "matmul_bf16_in T=%d IC=%d OC=%d %s", T, IC, OC, bias ? "+ bias" : "no bias");
    expect_close(what, d_out, want, (size_t)T * OC, gemm_tol(IC, r->tol));
    /* accumulate: the product added to what out holds (a residual stream), as out + matmul_bf16 */
    float *acc = random_floats((size_t)T * OC, 4.0f), *acc_want = xmalloc(sizeof(float) * T * OC);
    for (size_t i = 0; i < (size_t)T * OC; i++) acc_want[i] = acc[i] + want[i];
    gpu->upload(d_out, acc, sizeof(float) * T * OC);
    cpu->matmul_bf16_in(acc, in16, w, bias, T, IC, OC, 1);
    double abs_err, rel_err;
    max_errors(acc, acc_want, (size_t)T * OC, &abs_err, &rel_err);
    CHECK(rel_err <= 1e-6, "%s, accumulate (CPU): out + product, rel err %.3g", what, rel_err);
    gpu->matmul_bf16_in(d_out, d_in16, d_w, d_bias, T, IC, OC, 1);
    snprintf(what, sizeof what, "matmul_bf16_in T=%d IC=%d OC=%d %s, accumulate", T, IC, OC,
             bias ? "+ bias" : "no bias");
    expect_close(what, d_out, acc, (size_t)T * OC, gemm_tol(IC, r->tol));
    free(acc), free(acc_want);
    test_matmul_bf16_out(in16, w, d_in16, d_w, bias, d_bias, T, IC, OC);
    gpu->free(d_in), gpu->free(d_w), gpu->free(d_out), gpu->free(d_in16);
    if (d_bias) gpu->free(d_bias);
    free(in), free(w), free(bias), free(wide), free(want), free(fp32), free(in16), free(from16);
}

/* The ops that make bf16 activations: on each backend the fp32 op's result (on the bf16 inputs widened) rounded, bit
 * for bit; the GPU's within one bf16 step of the CPU's. rmsnorm_bf16 (fp32 x), glu_bf16 (bf16 gate/up rows),
 * rope_qkv_bf16 (bf16 q/k/v rows; q, k and v written one after another here). */
static void check_bf16_producer(const OpRow *r) {
    int op = !strcmp(r->op, "rmsnorm_bf16") ? 0 : !strcmp(r->op, "glu_bf16") ? 1 : 2;
    /* rmsnorm_bf16 {T, C}; glu_bf16 {T, inter, activation}: C = 2 inter; rope_qkv_bf16 {T, heads, kv heads, head_dim,
     * theta} */
    int T = r->p[0], nh = r->p[1], nkv = r->p[2], hd = r->p[3];
    int C = op == 0 ? r->p[1] : op == 1 ? 2 * r->p[1] : (nh + 2 * nkv) * hd;
    size_t n = (size_t)T * C, nq = (size_t)T * nh * hd, nk = (size_t)T * nkv * hd;
    int32_t *pos = xmalloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) pos[t] = t * 157;
    float *x = random_floats(n, 3.0f), *w = random_floats(C, 1.0f);
    uint16_t *x16 = xmalloc(sizeof(uint16_t) * n);
    cpu->to_bf16(x16, x, n);
    float *xw = widened(x16, n), *ref = xmalloc(sizeof(float) * n);
    uint16_t *cpu16 = xmalloc(sizeof(uint16_t) * n), *rounded16 = xmalloc(sizeof(uint16_t) * n),
             *gpu16 = xmalloc(sizeof(uint16_t) * n);
    float *d_x = to_gpu(x, sizeof(float) * n), *d_xw = to_gpu(xw, sizeof(float) * n),
          *d_w = to_gpu(w, sizeof(float) * C), *d_ref = gpu->alloc(sizeof(float) * n);
    uint16_t *d_x16 = to_gpu(x16, sizeof(uint16_t) * n), *d16 = gpu->alloc(sizeof(uint16_t) * n),
             *d_rounded16 = gpu->alloc(sizeof(uint16_t) * n);
    int32_t *d_pos = to_gpu(pos, sizeof(int32_t) * (size_t)T);
    float theta = (float)r->p[4], inv_freq[512];
    for (int j = 0; j < hd / 2; j++) inv_freq[j] = rope_inv_freq(j, hd, theta);
    {
        const char *name = r->op;
        size_t count = op == 1 ? n / 2 : n;
        if (op == 0) {
            cpu->rmsnorm(ref, x, w, T, C, 1e-5f), cpu->rmsnorm_bf16(cpu16, x, w, T, C, 1e-5f);
            gpu->rmsnorm(d_ref, d_x, d_w, T, C, 1e-5f), gpu->rmsnorm_bf16(d16, d_x, d_w, T, C, 1e-5f);
        } else if (op == 1) {
            GluActivation act = (GluActivation)r->p[2];
            cpu->glu(ref, xw, T, C / 2, act), cpu->glu_bf16(cpu16, x16, T, C / 2, act);
            gpu->glu(d_ref, d_xw, T, C / 2, act), gpu->glu_bf16(d16, d_x16, T, C / 2, act);
        } else {
            cpu->rope_qkv(ref, ref + nq, ref + nq + nk, xw, pos, T, nh, nkv, hd, inv_freq);
            cpu->rope_qkv_bf16(cpu16, cpu16 + nq, cpu16 + nq + nk, x16, pos, T, nh, nkv, hd, inv_freq);
            gpu->rope_qkv(d_ref, d_ref + nq, d_ref + nq + nk, d_xw, d_pos, T, nh, nkv, hd, inv_freq);
            gpu->rope_qkv_bf16(d16, d16 + nq, d16 + nq + nk, d_x16, d_pos, T, nh, nkv, hd, inv_freq);
        }
        cpu->to_bf16(rounded16, ref, count);
        CHECK(!memcmp(cpu16, rounded16, sizeof(uint16_t) * count), "%s (CPU) == to_bf16 of the fp32 op", name);
        gpu->to_bf16(d_rounded16, d_ref, count);
        gpu->download(gpu16, d16, sizeof(uint16_t) * count);
        gpu->download(rounded16, d_rounded16, sizeof(uint16_t) * count);
        CHECK(!memcmp(gpu16, rounded16, sizeof(uint16_t) * count), "%s (CUDA) == to_bf16 of the fp32 op", name);
        expect_bf16_steps(name, d16, cpu16, count);
    }
    gpu->free(d_x), gpu->free(d_xw), gpu->free(d_w), gpu->free(d_ref), gpu->free(d_x16), gpu->free(d16);
    gpu->free(d_rounded16), gpu->free(d_pos);
    free(x), free(w), free(x16), free(xw), free(ref), free(cpu16), free(rounded16), free(gpu16), free(pos);
}

/* `which` as in test_matmul_backward, on operands rounded beforehand; gradients accumulate onto non-zero buffers */
static void check_matmul_backward_bf16(const OpRow *r) {
    int T = r->p[0], IC = r->p[1], OC = r->p[2], which = r->p[3];
    size_t n_in = (size_t)T * IC, n_w = (size_t)OC * IC;
    float *in = random_floats(n_in, 1.0f), *dout = random_floats((size_t)T * OC, 1.0f);
    uint16_t *w = random_bf16(n_w, 0.5f);
    float *wide = widened(w, n_w);
    float *init[3] = {random_floats(n_in, 1.0f), random_floats(n_w, 1.0f), random_floats(OC, 1.0f)};
    size_t sizes[3] = {n_in, n_w, (size_t)OC};
    float *want[3], *fp32[3], *dev[3];
    for (int i = 0; i < 3; i++) {
        want[i] = xmalloc(sizeof(float) * sizes[i]), fp32[i] = xmalloc(sizeof(float) * sizes[i]);
        memcpy(want[i], init[i], sizeof(float) * sizes[i]), memcpy(fp32[i], init[i], sizeof(float) * sizes[i]);
        dev[i] = to_gpu(init[i], sizeof(float) * sizes[i]);
    }
    uint16_t *in16 = xmalloc(sizeof(uint16_t) * n_in), *dout16 = xmalloc(sizeof(uint16_t) * (size_t)T * OC);
    cpu->to_bf16(in16, in, n_in), cpu->to_bf16(dout16, dout, (size_t)T * OC);
#define PICK(arr, i) (which & (1 << (i)) ? (arr)[i] : NULL)
    cpu->matmul_backward_bf16(PICK(want, 0), PICK(want, 1), PICK(want, 2), dout, dout16, in16, w, T, IC, OC);
    cpu->matmul_backward(PICK(fp32, 0), PICK(fp32, 1), PICK(fp32, 2), dout, in, wide, T, IC, OC);
    float *d_dout = to_gpu(dout, sizeof(float) * T * OC);
    uint16_t *d_w = to_gpu(w, sizeof(uint16_t) * n_w), *d_in16 = to_gpu(in16, sizeof(uint16_t) * n_in),
             *d_dout16 = to_gpu(dout16, sizeof(uint16_t) * (size_t)T * OC);
    gpu->matmul_backward_bf16(PICK(dev, 0), PICK(dev, 1), PICK(dev, 2), d_dout, d_dout16, d_in16, d_w, T, IC, OC);
#undef PICK
    static const char *names[3] = {"dinp", "dweight", "dbias"};
    for (int i = 0; i < 3; i++) {
        char what[96];
        snprintf(what, sizeof what, "matmul_backward_bf16 T=%d IC=%d OC=%d %s", T, IC, OC, names[i]);
        expect_close(what, dev[i], want[i], sizes[i], gemm_tol(i == 0 ? OC : T, r->tol)); /* dinp sums over OC, dW T */
        /* dbias sums the fp32 dout, so it equals the fp32 op's */
        if (which & (1 << i) && i < 2) expect_bf16_rounding(what, want[i], fp32[i], sizes[i]);
        gpu->free(dev[i]);
        free(init[i]), free(want[i]), free(fp32[i]);
    }
    gpu->free(d_in16), gpu->free(d_dout), gpu->free(d_dout16), gpu->free(d_w);
    free(in), free(dout), free(w), free(wide), free(in16), free(dout16);
}

/* qk_norm: each q and k head of the q/k/v rows normed in place, v untouched; qk_norm_bf16 on the rows rounded to bf16
 * equals to_bf16 of qk_norm on them widened (CPU bit for bit; the GPU within one bf16 step) */
static void check_qk_norm(const OpRow *r) {
    int T = r->p[0], nh = r->p[1], nkv = r->p[2], hd = r->p[3];
    size_t n = (size_t)T * (nh + 2 * nkv) * hd, vq = (size_t)(nh + nkv) * hd, row = (size_t)(nh + 2 * nkv) * hd;
    float *x = random_floats(n, 3.0f), *qw = random_floats((size_t)hd, 1.0f), *kw = random_floats((size_t)hd, 1.0f);
    float *want = xmalloc(sizeof(float) * n);
    memcpy(want, x, sizeof(float) * n);
    cpu->qk_norm(want, qw, kw, T, nh, nkv, hd, 1e-6f);
    int v_kept = 1;
    for (int t = 0; t < T; t++) v_kept &= !memcmp(want + t * row + vq, x + t * row + vq, sizeof(float) * nkv * hd);
    CHECK(v_kept, "qk_norm (CPU): the v columns are untouched");
    float *d_x = to_gpu(x, sizeof(float) * n), *d_qw = to_gpu(qw, sizeof(float) * hd),
          *d_kw = to_gpu(kw, sizeof(float) * hd);
    gpu->qk_norm(d_x, d_qw, d_kw, T, nh, nkv, hd, 1e-6f);
    char what[96];
    snprintf(what, sizeof what, "qk_norm (T=%d, %d q heads, %d kv heads of %d)", T, nh, nkv, hd);
    expect_close(what, d_x, want, n, r->tol);
    uint16_t *x16 = xmalloc(sizeof(uint16_t) * n), *cpu16 = xmalloc(sizeof(uint16_t) * n),
             *rounded16 = xmalloc(sizeof(uint16_t) * n);
    cpu->to_bf16(x16, x, n);
    float *xw = widened(x16, n);
    memcpy(cpu16, x16, sizeof(uint16_t) * n);
    cpu->qk_norm_bf16(cpu16, qw, kw, T, nh, nkv, hd, 1e-6f);
    cpu->qk_norm(xw, qw, kw, T, nh, nkv, hd, 1e-6f);
    cpu->to_bf16(rounded16, xw, n);
    CHECK(!memcmp(cpu16, rounded16, sizeof(uint16_t) * n), "qk_norm_bf16 (CPU) == to_bf16 of qk_norm");
    uint16_t *d16 = to_gpu(x16, sizeof(uint16_t) * n);
    gpu->qk_norm_bf16(d16, d_qw, d_kw, T, nh, nkv, hd, 1e-6f);
    expect_bf16_steps("qk_norm_bf16", d16, cpu16, n);
    gpu->free(d_x), gpu->free(d_qw), gpu->free(d_kw), gpu->free(d16);
    free(x), free(qw), free(kw), free(want), free(x16), free(cpu16), free(rounded16), free(xw);
}

/* rope_qkv: q/k/v rows split, q and k rotated; v is copied exactly */
static void check_rope_qkv(const OpRow *r) {
    int T = r->p[0], nh = r->p[1], nkv = r->p[2], hd = r->p[3];
    float theta = (float)r->p[4], inv_freq[512];
    for (int j = 0; j < hd / 2; j++) inv_freq[j] = rope_inv_freq(j, hd, theta);
    size_t nq = (size_t)T * nh * hd, nk = (size_t)T * nkv * hd, n = nq + 2 * nk;
    float *qkv = random_floats(n, 1.0f), *want = xmalloc(sizeof(float) * n);
    int32_t *pos = xmalloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) pos[t] = t < 3 ? t : t == 3 ? 37 : t == 4 ? 511 : 2047; /* positions 0 .. 2047 */
    float *d_qkv = to_gpu(qkv, sizeof(float) * n), *d_out = gpu->alloc(sizeof(float) * n);
    int32_t *d_pos = to_gpu(pos, sizeof(int32_t) * (size_t)T);
    cpu->rope_qkv(want, want + nq, want + nq + nk, qkv, pos, T, nh, nkv, hd, inv_freq);
    gpu->rope_qkv(d_out, d_out + nq, d_out + nq + nk, d_qkv, d_pos, T, nh, nkv, hd, inv_freq);
    int v_copied = 1;
    for (int t = 0; t < T; t++)
        v_copied &= !memcmp(want + nq + nk + (size_t)t * nkv * hd,
                            qkv + (size_t)t * (nh + 2 * nkv) * hd + (nh + nkv) * hd, sizeof(float) * nkv * hd);
    CHECK(v_copied, "rope_qkv (CPU): v is the rows' last kv_dim columns");
    char what[96];
    snprintf(what, sizeof what, "rope_qkv q (d=%d, theta %g, positions up to 2047)", hd, theta);
    expect_close(what, d_out, want, nq, r->tol);
    snprintf(what, sizeof what, "rope_qkv k (d=%d, theta %g, positions up to 2047)", hd, theta);
    expect_close(what, d_out + nq, want + nq, nk, r->tol);
    snprintf(what, sizeof what, "rope_qkv v (d=%d)", hd);
    expect_close(what, d_out + nq + nk, want + nq + nk, nk, 0.0);
    gpu->free(d_qkv), gpu->free(d_out), gpu->free(d_pos);
    free(qkv), free(want), free(pos);
}

/* A tree of n nodes after `cache` cached keys, node i's parent (i - 1) / arity: every node's key range is the cache and
 * the tree ([0, cache + n)), and its row of mask [n, n] marks itself and its ancestors. */
static void tree_after_cache(int n, int cache, int arity, int32_t *key_begin, int32_t *key_end, uint8_t *mask) {
    memset(mask, 0, (size_t)n * n);
    for (int i = 0; i < n; i++) {
        key_begin[i] = 0, key_end[i] = cache + n;
        for (int a = i; a >= 0; a = a == 0 ? -1 : (a - 1) / arity) mask[i * n + a] = 1;
    }
}

/* Attention rows: p = {layout, T, row0, heads, kv heads, head_dim, extra, misaligned}, over Tk = row0 + T keys. */
enum {
    ATT_PACKED, /* causal sequences packed back to back: lengths packed_lens[extra] */
    ATT_CAUSAL, /* one causal sequence */
    ATT_DECODE, /* T queries after row0 cached keys (a decoding step, a prompt after a cache): query t sees keys
                 * [0, row0 + t + 1); extra > 0: query 0's range ends at key `extra` (within the first of many slices)
                 */
    ATT_TREE,   /* a tree of T nodes after row0 cached keys, node i's parent (i - 1) / extra (tree_after_cache) */
};
static const int packed_lens[][5] = {{5, 11, 41}, {7, 40, 70, 3}, {1024, 1024, 1024, 1024}}; /* zero-terminated */

/* a row's key ranges and tree mask (NULL without one) */
/* An attention row's scoring: p[8] the soft cap (0: none), p[9] a query_pre_attn_scalar (the scale its ^-0.5; 0: the
 * usual 1 / sqrt(head_dim)) */
static AttentionScoring attention_row_scoring(const int *p) {
    return (AttentionScoring){p[9] ? 1.0f / sqrtf((float)p[9]) : 1.0f / sqrtf((float)p[5]), (float)p[8]};
}

static void attention_ranges(const int *p, int32_t **key_begin, int32_t **key_end, uint8_t **mask) {
    int layout = p[0], T = p[1], row0 = p[2], extra = p[6];
    int32_t *kb = xmalloc(sizeof(int32_t) * (size_t)T), *ke = xmalloc(sizeof(int32_t) * (size_t)T);
    *mask = NULL;
    if (layout == ATT_PACKED) {
        int t = 0;
        for (int s = 0, start = 0; s < 5 && packed_lens[extra][s]; start += packed_lens[extra][s++])
            for (int i = 0; i < packed_lens[extra][s] && t < T; i++, t++) kb[t] = start, ke[t] = t + 1;
        ensure(t == T);
    } else if (layout == ATT_CAUSAL) {
        for (int t = 0; t < T; t++) kb[t] = 0, ke[t] = t + 1;
    } else if (layout == ATT_DECODE) {
        for (int t = 0; t < T; t++) kb[t] = 0, ke[t] = row0 + t + 1;
        if (extra > 0) ke[0] = extra;
    } else {
        *mask = xmalloc((size_t)T * T);
        tree_after_cache(T, row0, extra, kb, ke, *mask);
    }
    *key_begin = kb, *key_end = ke;
}

/* One attention call on both backends: T queries over Tk keys with the row's ranges and mask.
 * bf16: the GPU's attention_bf16 on bf16 q, k, v against the CPU's attention on them widened; they then differ
 * only by the rounding of the probabilities (and the order of the sums). Misaligned (bf16 == 2): q, k and v start one
 * element past an aligned address (the tensor-core kernel's 16-byte tile loads cannot take them). */
static void check_attention(const OpRow *r) {
    int T = r->p[1], row0 = r->p[2], nh = r->p[3], nkv = r->p[4], hd = r->p[5], Tk = row0 + T;
    int bf16 = !strcmp(r->dtype, "bf16") ? 1 + r->p[7] : 0;
    AttentionScoring sc = attention_row_scoring(r->p);
    const char *what = r->label;
    int32_t *kb, *ke;
    uint8_t *mask;
    attention_ranges(r->p, &kb, &ke, &mask);
    size_t nq = (size_t)T * nh * hd, nk = (size_t)Tk * nkv * hd;
    float *q = random_floats(nq, 1.0f), *k = random_floats(nk, 1.0f), *v = random_floats(nk, 1.0f);
    float *want = xmalloc(sizeof(float) * nq);
    float *d_q = to_gpu(q, sizeof(float) * nq), *d_k = to_gpu(k, sizeof(float) * nk),
          *d_v = to_gpu(v, sizeof(float) * nk);
    uint16_t *qkv16[3] = {NULL, NULL, NULL}, *d_qkv16[3] = {NULL, NULL, NULL};
    if (bf16) { /* the inputs in bf16, and q, k, v their widened values */
        float *xs[3] = {q, k, v};
        size_t ns[3] = {nq, nk, nk};
        for (int i = 0; i < 3; i++) {
            qkv16[i] = xmalloc(sizeof(uint16_t) * ns[i]);
            cpu->to_bf16(qkv16[i], xs[i], ns[i]);
            for (size_t j = 0; j < ns[i]; j++) xs[i][j] = bf16_to_float(qkv16[i][j]);
            d_qkv16[i] = gpu->alloc(sizeof(uint16_t) * (ns[i] + 1));
            gpu->upload(d_qkv16[i] + (bf16 == 2), qkv16[i], sizeof(uint16_t) * ns[i]);
        }
    }
    cpu->attention(want, q, k, v, kb, ke, mask, row0, T, nh, nkv, hd, sc);
    int32_t *d_kb = to_gpu(kb, sizeof(int32_t) * T), *d_ke = to_gpu(ke, sizeof(int32_t) * T);
    uint8_t *d_mask = mask ? to_gpu(mask, (size_t)T * T) : NULL;
    float *d_out = gpu->alloc(sizeof(float) * nq);
    char label[160];
    snprintf(label, sizeof label, "attention%s %s (T=%d Tk=%d heads %d/%d d=%d)", bf16 ? "_bf16" : "", what, T, Tk, nh,
             nkv, hd);
    if (bf16) { /* a bf16 output: compared widened, in fp32 */
        uint16_t *d_out16 = gpu->alloc(sizeof(uint16_t) * nq), *cpu16 = xmalloc(sizeof(uint16_t) * nq),
                 *rounded = xmalloc(sizeof(uint16_t) * nq);
        int skip = bf16 == 2;
        gpu->attention_bf16(d_out16, d_qkv16[0] + skip, d_qkv16[1] + skip, d_qkv16[2] + skip, d_kb, d_ke, d_mask, row0,
                            T, nh, nkv, hd, sc);
        gpu->download(cpu16, d_out16, sizeof(uint16_t) * nq);
        float *wide = widened(cpu16, nq);
        gpu->upload(d_out, wide, sizeof(float) * nq);
        expect_close(label, d_out, want, nq, r->tol);
        cpu->attention_bf16(cpu16, qkv16[0], qkv16[1], qkv16[2], kb, ke, mask, row0, T, nh, nkv, hd, sc);
        cpu->to_bf16(rounded, want, nq);
        CHECK(!memcmp(cpu16, rounded, sizeof(uint16_t) * nq), "%s: the CPU's is its attention rounded to bf16", label);
        gpu->free(d_out16);
        free(cpu16), free(rounded), free(wide);
        for (int i = 0; i < 3; i++) gpu->free(d_qkv16[i]), free(qkv16[i]);
    } else {
        gpu->attention(d_out, d_q, d_k, d_v, d_kb, d_ke, d_mask, row0, T, nh, nkv, hd, sc);
        expect_close(label, d_out, want, nq, r->tol);
    }
    gpu->free(d_q), gpu->free(d_k), gpu->free(d_v), gpu->free(d_kb), gpu->free(d_ke), gpu->free(d_out);
    if (d_mask) gpu->free(d_mask);
    free(q), free(k), free(v), free(want), free(kb), free(ke), free(mask);
}
/* copy_rows: moves in order within each block, where an earlier move reads a row a later one writes (kv_cache_keep:
 * keep [1, 2] reads row 1 before it is overwritten by row 2), the last move reads the row the first one wrote, and
 * more moves than the CUDA kernel takes at once. */
static void check_copy_rows(const OpRow *r) {
    int n_moves = r->p[0], blocks = r->p[1], width = r->p[2], rows = 2 * n_moves + 4;
    size_t block_floats = (size_t)(rows + 1) * width, n = block_floats * blocks; /* a spare row between blocks */
    float *x = random_floats(n, 1.0f), *want = xmalloc(sizeof(float) * n), *got = xmalloc(sizeof(float) * n);
    int32_t *src = xmalloc(sizeof(int32_t) * n_moves), *dst = xmalloc(sizeof(int32_t) * n_moves);
    for (int i = 0; i < n_moves; i++) dst[i] = 2 + i, src[i] = 3 + 2 * i; /* move 0 reads row 3, move 1 writes it */
    src[n_moves - 1] = 2, dst[n_moves - 1] = rows - 1;                    /* the first move's result, moved on */
    memcpy(want, x, sizeof(float) * n);
    for (int b = 0; b < blocks; b++) /* the definition, one move at a time */
        for (int i = 0; i < n_moves; i++)
            memcpy(want + b * block_floats + (size_t)dst[i] * width, want + b * block_floats + (size_t)src[i] * width,
                   sizeof(float) * width);
    memcpy(got, x, sizeof(float) * n);
    cpu->copy_rows(got, sizeof(float) * block_floats, blocks, src, dst, n_moves, sizeof(float) * width);
    CHECK(!memcmp(got, want, sizeof(float) * n), "copy_rows (CPU), %d moves in order in each of %d blocks", n_moves,
          blocks);
    float *d_x = to_gpu(x, sizeof(float) * n);
    gpu->copy_rows(d_x, sizeof(float) * block_floats, blocks, src, dst, n_moves, sizeof(float) * width);
    char what[96];
    snprintf(what, sizeof what, "copy_rows, %d moves in order in each of %d blocks", n_moves, blocks);
    expect_close(what, d_x, want, n, r->tol);
    gpu->free(d_x);
    free(x), free(want), free(got), free(src), free(dst);
}

/* glu {T, inter, activation}: the CPU's against the formula in double on the gate/up layout (gate the first inter
 * columns of a row, up the last), the GPU's against the CPU's; more rows than a grid's y dimension takes (65535): the
 * kernels walk the rest */
static void check_glu(const OpRow *r) {
    int T = r->p[0], inter = r->p[1];
    GluActivation act = (GluActivation)r->p[2];
    size_t n = (size_t)T * inter;
    float *a = random_floats(2 * n, 6.0f), *want = xmalloc(sizeof(float) * n);
    float *d_a = to_gpu(a, sizeof(float) * 2 * n), *d_out = gpu->alloc(sizeof(float) * n);
    cpu->glu(want, a, T, inter, act);
    double layout_err = 0;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < inter; j++) {
            double g = a[(size_t)t * 2 * inter + j], u = a[(size_t)t * 2 * inter + inter + j];
            double activated = act == GLU_GELU_TANH ? 0.5 * g * (1 + tanh(sqrt(2 / M_PI) * (g + 0.044715 * g * g * g)))
                                                    : g / (1 + exp(-g));
            layout_err = fmax(layout_err, fabs(want[(size_t)t * inter + j] - activated * u));
        }
    const char *name = act == GLU_GELU_TANH ? "gelu_tanh" : "silu";
    CHECK(layout_err < 1e-5, "glu (CPU) of gate/up rows [%d, 2 x %d]: %s(row[j]) * row[%d + j], max err %.2g", T, inter,
          name, inter, layout_err);
    gpu->glu(d_out, d_a, T, inter, act);
    char what[96];
    snprintf(what, sizeof what, "glu (%s), gate/up rows [%d, 2 x %d]", name, T, inter);
    expect_close(what, d_out, want, n, r->tol);
    gpu->free(d_a), gpu->free(d_out);
    free(a), free(want);
}

/* residual_add, scale, softcap {n, misaligned}: a over [-6, 6], b over [-2, 2] (scale: a times sqrt(640), Gemma's
 * embedding scale); misaligned: the tensors start one float past a 16-byte
 * boundary (the kernels' scalar path) */
static void check_elementwise(const OpRow *r) {
    size_t n = (size_t)r->p[0], off = (size_t)r->p[1];
    float *a = random_floats(n, 6.0f), *b = random_floats(n, 2.0f), *want = xmalloc(sizeof(float) * n);
    float *d_a0 = gpu->alloc(sizeof(float) * (n + off)), *d_b0 = gpu->alloc(sizeof(float) * (n + off)),
          *d_out0 = gpu->alloc(sizeof(float) * (n + off));
    float *d_a = d_a0 + off, *d_b = d_b0 + off, *d_out = d_out0 + off, *d_got = d_out;
    gpu->upload(d_a, a, sizeof(float) * n), gpu->upload(d_b, b, sizeof(float) * n);
    if (!strcmp(r->op, "softcap")) { /* a over [-6, 6] times 10: capped at 30, most values bent */
        for (size_t i = 0; i < n; i++) a[i] *= 10.0f;
        memcpy(want, a, sizeof(float) * n);
        cpu->softcap(want, 30.0f, n);
        double err = 0;
        for (size_t i = 0; i < n; i++) err = fmax(err, fabs(want[i] - 30.0 * tanh(a[i] / 30.0)));
        CHECK(err < 1e-5, "softcap (CPU): 30 tanh(x / 30), max err %.2g", err);
        gpu->upload(d_a, a, sizeof(float) * n);
        gpu->softcap(d_a, 30.0f, n);
        d_got = d_a;
    } else if (!strcmp(r->op, "scale")) {
        memcpy(want, a, sizeof(float) * n);
        cpu->scale(want, sqrtf(640.0f), n);
        size_t differ = 0;
        for (size_t i = 0; i < n; i++) differ += want[i] != a[i] * sqrtf(640.0f);
        CHECK(differ == 0, "scale (CPU): x * s in fp32 on each element (%zu differ)", differ);
        gpu->scale(d_a, sqrtf(640.0f), n);
        d_got = d_a;
    } else {
        memcpy(want, a, sizeof(float) * n);
        cpu->residual_add(want, b, n);
        gpu->residual_add(d_a, d_b, n);
        d_got = d_a;
    }
    char what[96];
    snprintf(what, sizeof what, "%s n=%zu%s", r->op, n, off ? " misaligned" : "");
    expect_close(what, d_got, want, n, r->tol);
    gpu->free(d_a0), gpu->free(d_b0), gpu->free(d_out0);
    free(a), free(b), free(want);
}

/* The heads' chain: resblock_forward {T, C, misaligned, bias and bf16 out} and silu_backward {n, misaligned, bf16 out}.
 * The CPU's against the formulas in double (out = x + silu(z + bias), dz = dout * silu'(z), silu' = s (1 + z (1 - s))),
 * the GPU's against the CPU's, each bf16 copy equal to to_bf16 of its own fp32 result; z over [-6, 6], x and dout over
 * [-2, 2], the bias over [-1, 1]. misaligned: the tensors start one float past a 16-byte boundary (the scalar path, as
 * rows of C % 8 != 0 take). */
static void check_head_chain(const OpRow *r) {
    int forward = !strcmp(r->op, "resblock_forward");
    int T = forward ? r->p[0] : 1, C = forward ? r->p[1] : r->p[0], off = r->p[forward ? 2 : 1];
    int extras = r->p[forward ? 3 : 2]; /* bias (forward) and the bf16 copy */
    size_t n = (size_t)T * C;
    float *z = random_floats(n, 6.0f), *x = random_floats(n, 2.0f), *bias = random_floats((size_t)C, 1.0f);
    float *out = xmalloc(sizeof(float) * n), *z_cpu = xmalloc(sizeof(float) * n);
    uint16_t *out16 = xmalloc(sizeof(uint16_t) * n), *rounded16 = xmalloc(sizeof(uint16_t) * n);
    memcpy(z_cpu, z, sizeof(float) * n);
    float *d_z0 = gpu->alloc(sizeof(float) * (n + off)), *d_x0 = gpu->alloc(sizeof(float) * (n + off)),
          *d_out0 = gpu->alloc(sizeof(float) * (n + off)), *d_bias0 = gpu->alloc(sizeof(float) * (size_t)(C + off));
    uint16_t *d_out16_0 = gpu->alloc(sizeof(uint16_t) * (n + 16));
    float *d_z = d_z0 + off, *d_x = d_x0 + off, *d_out = d_out0 + off, *d_bias = d_bias0 + off;
    uint16_t *d_out16 = extras ? d_out16_0 + 8 * off + off : NULL; /* an odd bf16 offset: 2 bytes past 16 */
    gpu->upload(d_z, z, sizeof(float) * n), gpu->upload(d_x, x, sizeof(float) * n);
    gpu->upload(d_bias, bias, sizeof(float) * (size_t)C);
    double err = 0;
    if (forward) {
        cpu->resblock_forward(out, extras ? out16 : NULL, z_cpu, x, extras ? bias : NULL, T, C);
        gpu->resblock_forward(d_out, d_out16, d_z, d_x, extras ? d_bias : NULL, T, C);
        for (size_t i = 0; i < n; i++) {
            double pre = (double)z[i] + (extras ? bias[i % (size_t)C] : 0.0f);
            err = fmax(err, fabs(out[i] - (x[i] + pre / (1 + exp(-pre)))));
        }
    } else {
        cpu->silu_backward(out, extras ? out16 : NULL, x, z, n);
        gpu->silu_backward(d_out, d_out16, d_x, d_z, n);
        for (size_t i = 0; i < n; i++) {
            double sg = 1 / (1 + exp(-(double)z[i]));
            err = fmax(err, fabs(out[i] - x[i] * sg * (1 + z[i] * (1 - sg))));
        }
    }
    char what[128];
    int used = forward ? snprintf(what, sizeof what, "%s %d x %d", r->op, T, C)
                       : snprintf(what, sizeof what, "%s n=%d", r->op, C);
    snprintf(what + used, sizeof what - (size_t)used, "%s%s", off ? " misaligned" : "",
             extras ? (forward ? ", bias, bf16 copy" : ", bf16 copy") : "");
    CHECK(err < 1e-5, "%s (CPU): the formula in double, max err %.2g", what, err);
    expect_close(what, d_out, out, n, r->tol);
    if (forward && extras) {
        snprintf(what + strlen(what), sizeof what - strlen(what), ": z + bias in place");
        expect_close(what, d_z, z_cpu, n, r->tol);
    }
    if (extras) {
        cpu->to_bf16(rounded16, out, n);
        CHECK(!memcmp(out16, rounded16, sizeof(uint16_t) * n), "%s (CPU): bf16 copy == to_bf16 of its result", r->op);
        float *got = from_gpu(d_out, n);
        cpu->to_bf16(rounded16, got, n);
        gpu->download(out16, d_out16, sizeof(uint16_t) * n);
        CHECK(!memcmp(out16, rounded16, sizeof(uint16_t) * n), "%s (CUDA): bf16 copy == to_bf16 of its result", r->op);
        free(got);
    }
    gpu->free(d_z0), gpu->free(d_x0), gpu->free(d_out0), gpu->free(d_bias0), gpu->free(d_out16_0);
    free(z), free(x), free(bias), free(out), free(z_cpu), free(out16), free(rounded16);
}

/* fill_zero {bytes}: every byte of a block of random values zeroed, the bytes after it kept */
static void check_fill_zero(const OpRow *r) {
    size_t bytes = (size_t)r->p[0], n = bytes / sizeof(float) + 2;
    float *x = random_floats(n, 1.0f), *want = xmalloc(sizeof(float) * n);
    memcpy(want, x, sizeof(float) * n);
    memset(want, 0, bytes);
    float *d_x = to_gpu(x, sizeof(float) * n);
    gpu->fill_zero(d_x, bytes);
    cpu->fill_zero(x, bytes);
    char what[96];
    snprintf(what, sizeof what, "fill_zero of %zu bytes (CPU and CUDA), the next ones kept", bytes);
    CHECK(!memcmp(x, want, sizeof(float) * n), "%s: CPU", what);
    expect_close(what, d_x, want, n, r->tol);
    gpu->free(d_x);
    free(x), free(want);
}

/* top_k on both backends against a brute-force reference (the order by value, then the lower column): rows
 * with ties (values on a coarse grid), -inf, NaN, and fewer than k numbers. */
static void check_top_k(const OpRow *r) {
    int rows = r->p[0], cols = r->p[1], k = r->p[2];
    float *x = random_floats((size_t)rows * cols, 4.0f);
    for (size_t i = 0; i < (size_t)rows * cols; i++) x[i] = roundf(x[i] * 4) / 4; /* many ties */
    x[3] = -INFINITY, x[5] = NAN, x[cols + 1] = INFINITY;
    for (int c = 0; c < cols; c++) x[(size_t)(rows - 1) * cols + c] = c < k / 2 ? (float)c : NAN; /* few numbers */
    int32_t *want = xmalloc(sizeof(int32_t) * (size_t)rows * k), *cpu_got = xmalloc(sizeof(int32_t) * (size_t)rows * k);
    for (int r = 0; r < rows; r++) { /* reference: k passes, each the first entry after the previous pick */
        const float *row = x + (size_t)r * cols;
        int prev = -1;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int c = 0; c < cols; c++) {
                if (isnan(row[c]) || (prev >= 0 && !topk_after(row[c], c, row[prev], prev))) continue;
                if (j > 0 && prev < 0) continue;
                if (best < 0 || topk_after(row[best], best, row[c], c)) best = c;
            }
            want[(size_t)r * k + j] = prev = best;
        }
    }
    cpu->top_k(cpu_got, x, rows, cols, k);
    float *d_x = to_gpu(x, sizeof(float) * (size_t)rows * cols);
    int32_t *d_idx = gpu->alloc(sizeof(int32_t) * (size_t)rows * k), *got = xmalloc(sizeof(int32_t) * (size_t)rows * k);
    gpu->top_k(d_idx, d_x, rows, cols, k);
    gpu->download(got, d_idx, sizeof(int32_t) * (size_t)rows * k);
    size_t n = sizeof(int32_t) * (size_t)rows * k;
    int last_row_ok = got[(size_t)(rows - 1) * k + k / 2] == -1 && (k < 2 || got[(size_t)(rows - 1) * k] == k / 2 - 1);
    CHECK(!memcmp(cpu_got, want, n) && !memcmp(got, want, n) && last_row_ok,
          "top_k %d x %d, k = %d: cpu and cuda ids identical to the brute-force order (ties, -inf, NaN, short rows)",
          rows, cols, k);
    gpu->free(d_x), gpu->free(d_idx);
    free(x), free(want), free(cpu_got), free(got);
}

/* The ranks of given ids: ties (rounded values), NaN entries in a row (never above an id), an id at a NaN, +inf and
 * -inf logit (RANK_NOT_FINITE: within no top k), an absent id (-1); cpu and cuda against a brute-force count. */
static void check_rank_ids(const OpRow *r) {
    int rows = r->p[0], cols = r->p[1];
    size_t n = (size_t)rows * cols;
    float *x = random_floats(n, 4.0f);
    for (size_t i = 0; i < n; i++) x[i] = roundf(x[i] * 4) / 4; /* many ties */
    int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)rows), *want = xmalloc(sizeof(int32_t) * (size_t)rows);
    for (int r = 0; r < rows; r++) ids[r] = (int32_t)rng_below(&rng, cols);
    x[5] = NAN, x[(size_t)cols + 2] = NAN, ids[1] = 2; /* row 0: a NaN entry; row 1: the id's logit is NaN */
    x[(size_t)2 * cols + ids[2]] = INFINITY, x[(size_t)3 * cols + ids[3]] = -INFINITY, ids[4] = -1;
    for (int r = 0; r < rows; r++) {
        const float *row = x + (size_t)r * cols;
        want[r] = ids[r] < 0 ? -1 : isfinite(row[ids[r]]) ? 0 : RANK_NOT_FINITE;
        if (want[r] == 0)
            for (int c = 0; c < cols; c++) want[r] += row[c] > row[ids[r]];
    }
    int32_t *cpu_got = xmalloc(sizeof(int32_t) * (size_t)rows), *got = xmalloc(sizeof(int32_t) * (size_t)rows);
    cpu->rank_ids(cpu_got, x, ids, rows, cols);
    float *d_x = to_gpu(x, sizeof(float) * n);
    int32_t *d_ids = to_gpu(ids, sizeof(int32_t) * (size_t)rows), *d_ranks = gpu->alloc(sizeof(int32_t) * rows);
    gpu->rank_ids(d_ranks, d_x, d_ids, rows, cols);
    gpu->download(got, d_ranks, sizeof(int32_t) * (size_t)rows);
    size_t bytes = sizeof(int32_t) * (size_t)rows;
    int cases_ok =
        want[1] == RANK_NOT_FINITE && want[2] == RANK_NOT_FINITE && want[3] == RANK_NOT_FINITE && want[4] == -1;
    CHECK(!memcmp(cpu_got, want, bytes) && !memcmp(got, want, bytes) && cases_ok,
          "rank_ids %d x %d: cpu and cuda ranks equal the brute-force count (ties, NaN entries; NaN, +inf and -inf "
          "logits ranked RANK_NOT_FINITE, an absent id -1); row 0 rank %d",
          rows, cols, want[0]);
    gpu->free(d_x), gpu->free(d_ids), gpu->free(d_ranks);
    free(x), free(ids), free(want), free(cpu_got), free(got);
}

/* softmax_xent with its targets ranked (the labels: ignored rows -1, the max rank 0, the min V-1), then with other ids
 * ranked than the targets (distillation: a row with no target ranked, a row with a target and nothing ranked, an id at
 * a NaN and at a -inf logit: RANK_NOT_FINITE), against the brute-force count. */
static void check_softmax_xent(const OpRow *r) {
    int V = r->p[1];
    enum { T = 9 }; /* the cases below are rows 0..8 */
    size_t n = (size_t)T * V;
    float *logits = random_floats(n, 8.0f);
    int32_t targets[T] = {3, -1, V - 1, 0, -1, V / 2, 77, 1, V - 2};
    int32_t others[T] = {5, 7, -1, 0, 9, V / 2 + 1, 77, V - 3, V * 3 / 5};
    logits[(size_t)3 * V + 0] = 20.0f;     /* row 3: target is the max, rank 0 */
    logits[(size_t)6 * V + 77] = -20.0f;   /* row 6: target is the min, rank V-1 */
    logits[(size_t)8 * V + 5] = -INFINITY; /* row 8: masked-out logits get probability 0 */
    logits[(size_t)8 * V + V * 3 / 5] = -INFINITY;
    logits[(size_t)4 * V + 9] = NAN; /* row 4 (no target): a NaN logit */
    float dscale = 1.0f / 7.0f;      /* mean over the 7 rows with a target */
    for (int pass = 0; pass < 2; pass++) {
        const int32_t *ranked = pass ? others : targets;
        int32_t want[T];
        for (int t = 0; t < T; t++) {
            const float *row = logits + (size_t)t * V;
            int id = ranked[t];
            want[t] = id < 0 ? -1 : isfinite(row[id]) ? 0 : RANK_NOT_FINITE;
            if (want[t] == 0)
                for (int i = 0; i < V; i++) want[t] += row[i] > row[id];
        }
        float *x = xmalloc(sizeof(float) * n), *d_logits = to_gpu(logits, sizeof(float) * n), loss[T],
              *d_loss = gpu->alloc(sizeof loss);
        memcpy(x, logits, sizeof(float) * n);
        int32_t rank[T], gpu_rank[T], *d_rank = gpu->alloc(sizeof rank), *d_targets = to_gpu(targets, sizeof targets),
                                      *d_ranked = to_gpu(ranked, sizeof targets);
        cpu->softmax_xent(x, loss, rank, (XentTargets){.targets = targets, .ranked = ranked}, T, V, dscale);
        gpu->softmax_xent(d_logits, d_loss, d_rank, (XentTargets){.targets = d_targets, .ranked = d_ranked}, T, V,
                          dscale);
        const char *mode = pass ? "other ids ranked" : "targets ranked";
        char what[128];
        snprintf(what, sizeof what, "softmax_xent V=%d, %s: losses (2 ignored rows)", V, mode);
        expect_close(what, d_loss, loss, T, r->tol);
        snprintf(what, sizeof what, "softmax_xent V=%d, %s: dlogits in place (a row with -inf logits)", V, mode);
        expect_close(what, d_logits, x, n, r->tol);
        gpu->download(gpu_rank, d_rank, sizeof gpu_rank);
        int same = !memcmp(gpu_rank, want, sizeof want) && !memcmp(rank, want, sizeof want);
        int cases = pass ? rank[1] > 0 && rank[2] == -1 && rank[4] == RANK_NOT_FINITE && rank[8] == RANK_NOT_FINITE
                         : rank[1] == -1 && rank[3] == 0 && rank[6] == V - 1;
        CHECK(same && cases, "softmax_xent V=%d, %s: cpu and cuda ranks equal the brute-force count (%s)", V, mode,
              pass ? "a row without a target ranked, one with a target and no id, ids at NaN and -inf logits"
                   : "ignored -1, max 0, min V-1");
        gpu->free(d_logits), gpu->free(d_loss), gpu->free(d_rank), gpu->free(d_targets), gpu->free(d_ranked);
        free(x);
    }
    free(logits);
}

/* softmax_xent with soft targets (a teacher's logits): losses KL(q || p) and dlogits dscale (p - q) in place on cpu and
 * cuda, and the CPU's against a direct double-precision evaluation of the formula; a teacher row with -inf logits
 * (q = 0 there, where the row's own are -inf too), a confident teacher, a row equal to its teacher (KL 0); other ids
 * ranked (the labels), one row with none. */
static void check_soft_xent(const OpRow *r) {
    int V = r->p[1];
    enum { T = 6 }; /* the cases below are rows 0..5 */
    size_t n = (size_t)T * V;
    float *z = random_floats(n, 6.0f), *u = random_floats(n, 6.0f);
    int32_t ranked[T] = {0, 5, -1, 7, V - 1, 2};
    u[(size_t)1 * V + 3] = z[(size_t)1 * V + 3] = -INFINITY;
    u[(size_t)1 * V + V / 2] = z[(size_t)1 * V + V / 2] = -INFINITY;
    u[(size_t)2 * V + 7] = 30.0f;
    memcpy(z + (size_t)3 * V, u + (size_t)3 * V, sizeof(float) * (size_t)V);
    float dscale = 1.0f / T, want_loss[T], *want_grad = xmalloc(sizeof(float) * n);
    int32_t want_rank[T];
    for (int t = 0; t < T; t++) { /* the reference, in double */
        const float *zr = z + (size_t)t * V, *ur = u + (size_t)t * V;
        double zmax = -INFINITY, umax = -INFINITY, zs = 0, us = 0, kl = 0;
        for (int i = 0; i < V; i++) zmax = fmax(zmax, zr[i]), umax = fmax(umax, ur[i]);
        for (int i = 0; i < V; i++) zs += exp(zr[i] - zmax), us += exp(ur[i] - umax);
        /* both sums >= 1: each maximum contributes exp(0) */
        // cppcheck-suppress invalidFunctionArg
        double zlse = zmax + log(zs), ulse = umax + log(us);
        for (int i = 0; i < V; i++) {
            double q = exp(ur[i] - ulse), p = exp(zr[i] - zlse);
            if (q > 0) kl += q * ((ur[i] - ulse) - (zr[i] - zlse));
            want_grad[(size_t)t * V + i] = (float)(dscale * (p - q));
        }
        want_loss[t] = (float)kl;
        want_rank[t] = ranked[t] < 0 ? -1 : 0;
        for (int i = 0; ranked[t] >= 0 && i < V; i++) want_rank[t] += zr[i] > zr[ranked[t]];
    }
    float *d_z = to_gpu(z, sizeof(float) * n), *d_u = to_gpu(u, sizeof(float) * n), loss[T],
          *d_loss = gpu->alloc(sizeof loss);
    int32_t rank[T], gpu_rank[T], *d_rank = gpu->alloc(sizeof rank), *d_ranked = to_gpu(ranked, sizeof ranked);
    cpu->softmax_xent(z, loss, rank, (XentTargets){.teacher = u, .ranked = ranked}, T, V, dscale);
    gpu->softmax_xent(d_z, d_loss, d_rank, (XentTargets){.teacher = d_u, .ranked = d_ranked}, T, V, dscale);
    double abs_err, loss_err, grad_err;
    max_errors(loss, want_loss, T, &abs_err, &loss_err);
    max_errors(z, want_grad, n, &abs_err, &grad_err);
    CHECK(
        loss_err <= 1e-5 && grad_err <= 1e-5 && fabs(loss[3]) <= 1e-6 && loss[2] > 1,
        "soft targets V=%d, cpu against the formula in double: KL rel err %.3g, gradient %.3g (tol 1e-5); a row equal "
        "to its teacher %.2g, a confident teacher %.3f",
        V, loss_err, grad_err, loss[3], loss[2]);
    char what[96];
    snprintf(what, sizeof what, "soft targets V=%d: losses (KL)", V);
    expect_close(what, d_loss, loss, T, r->tol);
    snprintf(what, sizeof what, "soft targets V=%d: dlogits in place (a teacher with -inf logits)", V);
    expect_close(what, d_z, z, n, r->tol);
    gpu->download(gpu_rank, d_rank, sizeof gpu_rank);
    CHECK(!memcmp(rank, want_rank, sizeof rank) && !memcmp(gpu_rank, want_rank, sizeof rank),
          "soft targets V=%d: cpu and cuda ranks of the ranked ids equal the brute-force count", V);
    gpu->free(d_z), gpu->free(d_u), gpu->free(d_loss), gpu->free(d_rank), gpu->free(d_ranked);
    free(z), free(u), free(want_grad);
}

/* The peak rates MFU is reported against, by the names CUDA gives devices; the emulator's has none. */
static void test_peak_flops(void) {
    static const struct {
        const char *name;
        double tflops;
    } cases[] = {
        {"NVIDIA A100-SXM4-80GB", 312},
        {"NVIDIA A100 80GB PCIe", 312},
        {"NVIDIA H100 80GB HBM3", 989},
        {"NVIDIA H100 PCIe", 756},
        {"NVIDIA H100 NVL", 835},
        {"NVIDIA H200", 989},
        {"NVIDIA H200 NVL", 835},
        {"NVIDIA GH200 480GB", 989},
        {"NVIDIA L40S", 362},
        {"NVIDIA L40", 181},
        {"NVIDIA L4", 121},
        {"NVIDIA GeForce RTX 4090", 0},
        {"Tesla T4", 0},
    };
    int ok = 1;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double got = gpu_bf16_peak_flops(cases[i].name) / 1e12;
        if (got != cases[i].tflops) {
            printf("       %s: %g TFLOP/s, expected %g\n", cases[i].name, got, cases[i].tflops);
            ok = 0;
        }
    }
    CHECK(ok,
          "bf16 peak by device name: %zu names (A100, H100 SXM/PCIe/NVL, H200 SXM/NVL, GH200, L40S, L40, L4; 0 for "
          "others)",
          sizeof cases / sizeof cases[0]);
    CHECK(gpu->device && gpu->device[0] && gpu->peak_bf16_flops == gpu_bf16_peak_flops(gpu->device) &&
              cpu->peak_bf16_flops == 0,
          "the cuda backend names its device (%s, peak %g TFLOP/s); the cpu has no peak", gpu->device,
          gpu->peak_bf16_flops / 1e12);
}

/* The rank of an id in each row of bf16(x) w^T, in double (the count of logits above the id's, those near it left
 * out; -1 for no id), and its slack: the count of other logits within `tol` of the largest |logit| of the id's, which
 * a GEMM summing in another order (a GPU's tensor cores) may put on either side of it. */
static int reference_ranks(const float *x, const uint16_t *w, const int32_t *targets, int rows, int IC, int V,
                           double tol, int32_t *rank, int32_t *slack) {
    double *logits = xmalloc(sizeof(double) * (size_t)V);
    int uncertain = 0;
    double *xr = xmalloc(sizeof(double) * (size_t)IC);
    for (int r = 0; r < rows; r++) {
        for (int i = 0; i < IC; i++) xr[i] = bf16_to_f32(f32_to_bf16(x[(size_t)r * IC + i]));
        double largest = 0;
        for (int v = 0; v < V; v++) {
            double sum = 0;
            for (int i = 0; i < IC; i++) sum += xr[i] * bf16_to_f32(w[(size_t)v * IC + i]);
            logits[v] = sum;
            largest = fmax(largest, fabs(sum));
        }
        rank[r] = targets[r] < 0 ? -1 : 0;
        slack[r] = 0;
        if (targets[r] < 0) continue;
        double target = logits[targets[r]], window = tol * largest;
        for (int v = 0; v < V; v++) {
            if (v == targets[r]) continue;
            if (fabs(logits[v] - target) <= window) slack[r]++;
            else rank[r] += logits[v] > target;
        }
        uncertain += slack[r] > 0;
    }
    free(logits), free(xr);
    return uncertain;
}

/* The heads' classifier on a bf16 lm_head: losses, ranks and the gradients accumulated into non-zero dx and dweight
 * against the CPU's composition (the bf16 GEMM's logits rounded, softmax_xent, the rounded gradient's GEMMs), with
 * other ids ranked than the targets (distillation: ranks of the labels, a row without a target ranked, a row with one
 * not); then without gradients (evaluation), its targets ranked, which must leave dx and dweight alone; then soft
 * targets (a teacher's logits) with gradients. */
static void check_classifier_bf16(const OpRow *r) {
    int rows = r->p[0], IC = r->p[1], V = r->p[2];
    size_t n_x = (size_t)rows * IC, n_w = (size_t)V * IC;
    float *x = random_floats(n_x, 1.0f), *dx = random_floats(n_x, 1.0f), *dw = random_floats(n_w, 1.0f);
    uint16_t *w = random_bf16(n_w, 0.5f), *x16 = xmalloc(sizeof(uint16_t) * n_x);
    cpu->to_bf16(x16, x, n_x);
    int32_t *targets = xmalloc(sizeof(int32_t) * (size_t)rows), *others = xmalloc(sizeof(int32_t) * (size_t)rows);
    for (int r = 0; r < rows; r++) targets[r] = r % 5 == 2 ? -1 : (int32_t)rng_below(&rng, V);
    for (int r = 0; r < rows; r++) others[r] = r % 7 == 3 ? -1 : r % 3 == 0 ? targets[r] : (int32_t)rng_below(&rng, V);
    int32_t *want_rank = xmalloc(sizeof(int32_t) * (size_t)rows), *slack = xmalloc(sizeof(int32_t) * (size_t)rows);
    float dscale = 0.25f;
    float *logits = xmalloc(sizeof(float) * (size_t)rows * V), *loss = xmalloc(sizeof(float) * (size_t)rows);
    int32_t *rank = xmalloc(sizeof(int32_t) * (size_t)rows), *gpu_rank = xmalloc(sizeof(int32_t) * (size_t)rows);
    uint16_t *d_x = to_gpu(x16, sizeof(uint16_t) * n_x);
    float *d_dx = to_gpu(dx, sizeof(float) * n_x), *d_dw = to_gpu(dw, sizeof(float) * n_w),
          *d_logits = gpu->alloc(sizeof(float) * (size_t)rows * V), *d_loss = gpu->alloc(sizeof(float) * (size_t)rows);
    uint16_t *d_w = to_gpu(w, sizeof(uint16_t) * n_w);
    int32_t *d_targets = to_gpu(targets, sizeof(int32_t) * (size_t)rows), *d_rank = gpu->alloc(sizeof(int32_t) * rows),
            *d_others = to_gpu(others, sizeof(int32_t) * (size_t)rows);
    float *teacher = random_floats((size_t)rows * V, 4.0f), *d_teacher = to_gpu(teacher, sizeof(float) * rows * V);
    static const char *modes[3] = {"with gradients, other ids ranked", "without gradients, targets ranked",
                                   "soft targets, with gradients"};
    for (int pass = 0; pass < 3; pass++) { /* training, evaluation, training on a teacher's logits */
        int grads = pass != 1;
        const int32_t *ranked = pass == 1 ? targets : others;
        /* the logits' rounding to bf16 (half an ulp: 2^-9 of each) may tie the ranked one with its neighbours */
        int uncertain =
            reference_ranks(x, w, ranked, rows, IC, V, 2 * gemm_tol(IC, r->tol) + 1.0 / 256, want_rank, slack);
        XentTargets on_cpu = {.targets = targets, .teacher = pass == 2 ? teacher : NULL, .ranked = ranked},
                    on_gpu = {.targets = d_targets,
                              .teacher = pass == 2 ? d_teacher : NULL,
                              .ranked = pass == 1 ? d_targets : d_others};
        cpu->classifier_bf16(logits, loss, rank, on_cpu, x16, w, grads ? dx : NULL, grads ? dw : NULL, rows, IC, V,
                             grads ? dscale : 0.0f);
        gpu->classifier_bf16(d_logits, d_loss, d_rank, on_gpu, d_x, d_w, grads ? d_dx : NULL, grads ? d_dw : NULL, rows,
                             IC, V, grads ? dscale : 0.0f);
        char what[128];
        const char *mode = modes[pass];
        snprintf(what, sizeof what, "classifier_bf16 %d x %d -> %d %s: losses", rows, IC, V, mode);
        expect_close(what, d_loss, loss, (size_t)rows, gemm_tol(IC, r->tol));
        snprintf(what, sizeof what, "classifier_bf16 %d x %d -> %d %s: dx (accumulated)", rows, IC, V, mode);
        expect_close(what, d_dx, dx, n_x, gemm_tol(V, r->tol));
        snprintf(what, sizeof what, "classifier_bf16 %d x %d -> %d %s: dweight (accumulated)", rows, IC, V, mode);
        expect_close(what, d_dw, dw, n_w, gemm_tol(rows, r->tol));
        gpu->download(gpu_rank, d_rank, sizeof(int32_t) * (size_t)rows);
        int unranked = pass == 1 ? 2 : 3, ranks_ok = rank[unranked] == -1 && gpu_rank[unranked] == -1;
        for (int r = 0; r < rows; r++) /* the near logits count above the target or not: [rank, rank + slack] */
            ranks_ok &= rank[r] >= want_rank[r] && rank[r] <= want_rank[r] + slack[r] && gpu_rank[r] >= want_rank[r] &&
                        gpu_rank[r] <= want_rank[r] + slack[r];
        CHECK(ranks_ok,
              "classifier_bf16 %d x %d -> %d %s: ranks (cpu and cuda) equal to the double-precision ones (no id: -1), "
              "but for logits within the GEMM tolerance of the ranked one's, which may count above it or not (%d rows "
              "have one)",
              rows, IC, V, mode, uncertain);
    }
    gpu->free(d_x), gpu->free(d_dx), gpu->free(d_dw), gpu->free(d_logits), gpu->free(d_loss), gpu->free(d_w);
    gpu->free(d_targets), gpu->free(d_rank), gpu->free(d_others), gpu->free(d_teacher);
    free(x), free(x16), free(dx), free(dw), free(w), free(targets), free(others), free(teacher), free(logits),
        free(loss), free(rank);
    free(gpu_rank), free(want_rank), free(slack);
}

/* classifier_bf16 rounds its logits to bf16 before the softmax, as a bf16 GEMM's output is (PyTorch's bf16 linear):
 * x = [1, 1] on lm_head rows [256, 0] and [256, 1] gives logits 256 and 257, and 257 rounds to 256 (bf16 steps by 2
 * there, ties to even), so the loss of the first is log 2 = 0.6931 on both backends (1.3133 unrounded). */
static void test_classifier_bf16_rounds_logits(void) {
    float x[2] = {1.0f, 1.0f}, w32[4] = {256.0f, 0.0f, 256.0f, 1.0f}, logits[2], loss[2];
    uint16_t x16[2], w16[4];
    cpu->to_bf16(x16, x, 2), cpu->to_bf16(w16, w32, 4);
    int32_t target = 0, rank;
    XentTargets t = {.targets = &target, .ranked = &target};
    cpu->classifier_bf16(logits, &loss[0], &rank, t, x16, w16, NULL, NULL, 1, 2, 2, 0.0f);
    uint16_t *d_x = to_gpu(x16, sizeof x16), *d_w = to_gpu(w16, sizeof w16);
    int32_t *d_target = to_gpu(&target, sizeof target), *d_rank = gpu->alloc(sizeof(int32_t));
    float *d_logits = gpu->alloc(sizeof logits), *d_loss = gpu->alloc(sizeof(float));
    XentTargets dt = {.targets = d_target, .ranked = d_target};
    gpu->classifier_bf16(d_logits, d_loss, d_rank, dt, d_x, d_w, NULL, NULL, 1, 2, 2, 0.0f);
    gpu->download(&loss[1], d_loss, sizeof(float));
    CHECK(
        fabs(loss[0] - log(2.0)) < 1e-6 && fabs(loss[1] - log(2.0)) < 1e-6,
        "classifier_bf16 rounds the logits to bf16: logits 256 and 257 -> 256 and 256, loss log 2 = 0.6931 (cpu %.4f, "
        "cuda %.4f; 1.3133 unrounded)",
        loss[0], loss[1]);
    gpu->free(d_x), gpu->free(d_w), gpu->free(d_target), gpu->free(d_rank), gpu->free(d_logits), gpu->free(d_loss);
}

/* Typical acceptance's statistics: entropies and candidate probabilities at two temperatures, a row with -inf
 * logits, padded (-1) ids; the CPU's against a direct double-precision evaluation of the same formula. */
static void check_softmax_entropy(const OpRow *r) {
    int V = r->p[1];
    enum { ROWS = 6, IDS = 10 }; /* the cases below are rows 0..5 */
    size_t n = (size_t)ROWS * V;
    float *x = random_floats(n, 6.0f);
    x[(size_t)2 * V + 1] = -INFINITY, x[(size_t)2 * V + V / 2] = -INFINITY;
    x[(size_t)4 * V + 7] = 40.0f; /* a confident row: entropy near 0 */
    int32_t ids[ROWS * IDS];
    for (int i = 0; i < ROWS * IDS; i++) ids[i] = i % 4 == 3 ? -1 : (int32_t)rng_below(&rng, V);
    ids[2 * IDS] = 1, ids[4 * IDS] = 7; /* a -inf logit (p = 0) and the confident row's top token */
    float *d_x = to_gpu(x, sizeof(float) * n), *d_h = gpu->alloc(sizeof(float) * ROWS),
          *d_p = gpu->alloc(sizeof(float) * ROWS * IDS);
    int32_t *d_ids = to_gpu(ids, sizeof ids);
    for (int pass = 0; pass < 2; pass++) {
        float temperature = pass ? 0.7f : 1.3f, h[ROWS], p[ROWS * IDS];
        cpu->softmax_entropy(h, p, x, ids, ROWS, V, IDS, temperature);
        double worst = 0;
        for (int r = 0; r < ROWS; r++) { /* the reference formula in double */
            const float *row = x + (size_t)r * V;
            double mx = -INFINITY, sum = 0, ent = 0;
            for (int i = 0; i < V; i++) mx = fmax(mx, row[i] / (double)temperature);
            for (int i = 0; i < V; i++) sum += exp(row[i] / (double)temperature - mx);
            for (int i = 0; i < V; i++) {
                double q = exp(row[i] / (double)temperature - mx) / sum;
                ent -= q * log(q + 1e-5);
            }
            worst = fmax(worst, fabs(h[r] - ent) / fmax(ent, 1e-3));
            for (int j = 0; j < IDS; j++) {
                int id = ids[r * IDS + j];
                double want = id >= 0 ? exp(row[id] / (double)temperature - mx) / sum : 0;
                worst = fmax(worst, fabs(p[r * IDS + j] - want) / fmax(want, 1e-6));
            }
        }
        CHECK(worst < 1e-4 && p[2 * IDS] == 0.0f && p[4 * IDS] > 0.99f && h[4] < 1e-3,
              "softmax_entropy (CPU) V=%d T=%.1f: entropies and probabilities within %.2g of double precision "
              "(-inf logit: p %g; confident row: p %.4f, entropy %.2g)",
              V, temperature, worst, p[2 * IDS], p[4 * IDS], h[4]);
        gpu->softmax_entropy(d_h, d_p, d_x, d_ids, ROWS, V, IDS, temperature);
        char what[96];
        snprintf(what, sizeof what, "softmax_entropy V=%d T=%.1f entropies", V, temperature);
        expect_close(what, d_h, h, ROWS, r->tol);
        snprintf(what, sizeof what, "softmax_entropy V=%d T=%.1f candidate probabilities", V, temperature);
        expect_close(what, d_p, p, ROWS * IDS, r->tol);
    }
    gpu->free(d_x), gpu->free(d_h), gpu->free(d_p), gpu->free(d_ids);
    free(x);
}

/* Whether `bytes` bytes on the device equal the host's, bit for bit */
static int gpu_equals(const void *dev, const void *host, size_t bytes) {
    void *back = xmalloc(bytes);
    gpu->download(back, dev, bytes);
    int same = !memcmp(back, host, bytes);
    free(back);
    return same;
}

/* p[1]: with the parameters' bf16 copy, which on each backend must be to_bf16 of its own fp32 result bit for bit (so
 * the GPU's is within one bf16 step of the CPU's). Step 1 clips by the host's coefficient, step 2 by the gradients'
 * sum of squares on the device (each backend's own sum_squares; clipped), step 3 likewise without clipping; every
 * step zeroes the gradients. Then a NaN and an infinite sum of squares: nothing may change, gradients included. */
static void check_adamw(const OpRow *r) {
    size_t n = (size_t)r->p[0];
    float *p = random_floats(n, 1.0f), *m = xcalloc(n, sizeof(float)), *v = xcalloc(n, sizeof(float));
    float *d_p = to_gpu(p, sizeof(float) * n), *d_m = to_gpu(m, sizeof(float) * n), *d_v = to_gpu(v, sizeof(float) * n);
    uint16_t *b = r->p[1] ? xmalloc(sizeof(uint16_t) * n) : NULL,
             *d_b = r->p[1] ? gpu->alloc(sizeof(uint16_t) * n) : NULL;
    double sum, *d_sum = gpu->alloc(sizeof(double));
    float *zeros = xcalloc(n, sizeof(float));
    for (int t = 1; t <= 5; t++) {
        float *g = random_floats(n, 0.1f), *d_g = to_gpu(g, sizeof(float) * n);
        double lr = 1e-3, beta1 = 0.9, beta2 = 0.999;
        AdamWStep step = {
            .decay = (float)(1.0 - lr * 0.01),
            .beta1_weight = (float)(1.0 - beta1),
            .beta2 = (float)beta2,
            .beta2_weight = (float)(1.0 - beta2),
            .bias_correction2_sqrt = (float)sqrt(1.0 - pow(beta2, t)),
            .step_size = (float)(lr / (1.0 - pow(beta1, t))),
            .eps = 1e-8f,
            .grad_scale = 0.5f,
            .max_grad_norm = t == 2 ? 0.5f * sqrtf(0.01f / 3 * (float)n) : -1.0f, /* about half the norm */
        };
        if (t == 1) {
            cpu->adamw(p, b, g, m, v, n, &step, NULL);
            gpu->adamw(d_p, d_b, d_g, d_m, d_v, n, &step, NULL);
        } else if (t <= 3) {
            cpu->sum_squares(&sum, g, n);
            gpu->sum_squares(d_sum, d_g, n);
            CHECK(clip_factor(sqrt(sum), step.max_grad_norm) < (t == 2 ? 0.6f : 1.01f) &&
                      clip_factor(sqrt(sum), step.max_grad_norm) > (t == 2 ? 0.4f : 0.99f),
                  "adamw step %d: clip coefficient %g", t, clip_factor(sqrt(sum), step.max_grad_norm));
            cpu->adamw(p, b, g, m, v, n, &step, &sum);
            gpu->adamw(d_p, d_b, d_g, d_m, d_v, n, &step, d_sum);
        } else { /* a non-finite norm: nothing written */
            sum = t == 4 ? NAN : INFINITY;
            gpu->upload(d_sum, &sum, sizeof sum);
            float *p0 = from_gpu(d_p, n), *m0 = from_gpu(d_m, n), *v0 = from_gpu(d_v, n);
            float *hp = xmalloc(sizeof(float) * n), *hm = xmalloc(sizeof(float) * n), *hv = xmalloc(sizeof(float) * n),
                  *hg = xmalloc(sizeof(float) * n);
            memcpy(hp, p, sizeof(float) * n), memcpy(hm, m, sizeof(float) * n), memcpy(hv, v, sizeof(float) * n);
            memcpy(hg, g, sizeof(float) * n);
            uint16_t *hb = b ? xmalloc(sizeof(uint16_t) * n) : NULL, *b0 = b ? xmalloc(sizeof(uint16_t) * n) : NULL;
            if (b) memcpy(hb, b, sizeof(uint16_t) * n), gpu->download(b0, d_b, sizeof(uint16_t) * n);
            cpu->adamw(p, b, g, m, v, n, &step, &sum);
            gpu->adamw(d_p, d_b, d_g, d_m, d_v, n, &step, d_sum);
            size_t fb = sizeof(float) * n;
            CHECK(!memcmp(p, hp, fb) && !memcmp(m, hm, fb) && !memcmp(v, hv, fb) && !memcmp(g, hg, fb) &&
                      (!b || !memcmp(b, hb, sizeof(uint16_t) * n)),
                  "adamw, CPU, %s sum of squares: params, moments, gradients and bf16 copy unchanged",
                  t == 4 ? "a NaN" : "an infinite");
            CHECK(gpu_equals(d_p, p0, fb) && gpu_equals(d_m, m0, fb) && gpu_equals(d_v, v0, fb) &&
                      gpu_equals(d_g, g, fb) && (!b || gpu_equals(d_b, b0, sizeof(uint16_t) * n)),
                  "adamw, CUDA, %s sum of squares: params, moments, gradients and bf16 copy unchanged",
                  t == 4 ? "a NaN" : "an infinite");
            free(p0), free(m0), free(v0), free(hp), free(hm), free(hv), free(hg), free(hb), free(b0);
            gpu->free(d_g);
            free(g);
            continue;
        }
        CHECK(!memcmp(g, zeros, sizeof(float) * n) && gpu_equals(d_g, zeros, sizeof(float) * n),
              "adamw step %d: the gradients zeroed on both backends", t);
        gpu->free(d_g);
        free(g);
    }
    expect_close("adamw 3 steps: params", d_p, p, n, r->tol);
    expect_close("adamw 3 steps: first moment", d_m, m, n, r->tol);
    expect_close("adamw 3 steps: second moment", d_v, v, n, r->tol);
    if (b) {
        uint16_t *want = xmalloc(sizeof(uint16_t) * n), *got = xmalloc(sizeof(uint16_t) * n);
        float *gpu_p = from_gpu(d_p, n);
        cpu->to_bf16(want, p, n);
        CHECK(!memcmp(b, want, sizeof(uint16_t) * n), "adamw 3 steps, CPU: bf16 copy == to_bf16(params), %zu values",
              n);
        cpu->to_bf16(want, gpu_p, n);
        gpu->download(got, d_b, sizeof(uint16_t) * n);
        CHECK(!memcmp(got, want, sizeof(uint16_t) * n), "adamw 3 steps, CUDA: bf16 copy == to_bf16(params), %zu values",
              n);
        expect_bf16_steps("adamw 3 steps: bf16 copy", d_b, b, n);
        gpu->free(d_b);
        free(b), free(want), free(got), free(gpu_p);
    }
    gpu->free(d_p), gpu->free(d_m), gpu->free(d_v), gpu->free(d_sum);
    free(p), free(m), free(v), free(zeros);
}

static void check_sum_squares(const OpRow *r) {
    size_t n = (size_t)r->p[0];
    float *x = random_floats(n, 3.0f), *d_x = to_gpu(x, sizeof(float) * n);
    double want, got, *d_sum = gpu->alloc(sizeof(double));
    cpu->sum_squares(&want, x, n);
    gpu->sum_squares(d_sum, d_x, n);
    gpu->download(&got, d_sum, sizeof got);
    double rel = fabs(got - want) / want;
    CHECK(rel <= r->tol, "sum_squares n=%zu: %.17g vs %.17g, rel err %.3g (tol %.0e)", n, got, want, rel, r->tol);
    gpu->free(d_x), gpu->free(d_sum);
    free(x);
}

/* --- the table: every row runs on every backend under test (the CUDA backend, emulated or on a GPU) against the
 * CPU. Rows whose check also covers companion ops say so: embedding checks rmsnorm on its rows, matmul_bf16 checks
 * matmul_bf16_in and matmul_bf16_out on its input rounded, a bf16 producer checks the fp32 op it rounds. tol: the
 * error allowed relative to the reference's largest magnitude (a GEMM's with gemm_tol, on a GPU); 0: equal, or for
 * the bf16 producers within one bf16 step. The last rows (check NULL) time the companion ops on shapes of their own,
 * for --perf; model_rows, for --perf too, are a 7B Llama's (hidden 4096, intermediate 11008, 32 heads of 128,
 * vocabulary 32000; 4096-token batches, a decoding step, a 64-node tree). --- */
#define NO_CHECK NULL, NULL
static const OpRow op_rows[] = {
    {"embedding", "f32", {13, 300, 50}, 0, check_embedding, "and rmsnorm of its rows"},
    {"embedding", "f32", {7, 4096, 30}, 0, check_embedding, "and rmsnorm of its rows (16-byte vectors)"},
    {"embedding", "f32", {5, 250, 20}, 0, check_embedding, "and rmsnorm of its rows (rows not whole vectors: scalar)"},
    {"matmul", "f32", {9, 70, 33, 1}, 1e-5, check_matmul, NULL},
    {"matmul", "f32", {9, 70, 33, 0}, 1e-5, check_matmul, NULL},
    {"matmul", "f32", {1, 64, 48, 1}, 1e-5, check_matmul, NULL},
    {"matmul_q", "q4_1", {1, 256, 37, 1, DT_Q4_1}, 1e-5, check_matmul_q, "and embedding_q"},
    {"matmul_q", "q8_0", {3, 96, 20, 0, DT_Q8_0}, 1e-5, check_matmul_q, "and embedding_q"},
    {"matmul_q", "q4_0", {7, 64, 9, 1, DT_Q4_0}, 1e-5, check_matmul_q, "and embedding_q"},
    {"matmul_q", "q5_0", {4, 128, 13, 1, DT_Q5_0}, 1e-5, check_matmul_q, "and embedding_q"},
    {"matmul_q", "q5_1", {1, 96, 70, 0, DT_Q5_1}, 1e-5, check_matmul_q, "and embedding_q"},
    {"matmul_q", "f16", {30, 64, 33, 1, DT_F16}, 1e-5, check_matmul_q, "and embedding_q"},
    {"matmul_q", "bf16", {2, 128, 5, 0, DT_BF16}, 1e-5, check_matmul_q, "and embedding_q"},
    {"matmul_q", "q4_k", {5, 512, 11, 1, DT_Q4_K}, 1e-5, check_matmul_q, "and embedding_q"},
    {"matmul_q", "q5_k", {1, 256, 64, 0, DT_Q5_K}, 1e-5, check_matmul_q, "and embedding_q"},
    {"matmul_q", "q6_k", {26, 256, 17, 1, DT_Q6_K}, 1e-5, check_matmul_q, "and embedding_q"},
    {"matmul_backward", "f32", {37, 20, 45, 7}, 1e-5, check_matmul_backward, NULL},
    {"matmul_backward", "f32", {5, 16, 8, 2}, 1e-5, check_matmul_backward, NULL},
    {"matmul_backward", "f32", {5, 16, 8, 5}, 1e-5, check_matmul_backward, NULL},
    {"to_bf16", "f32", {100003}, 0, check_to_bf16, "and ties, inf, NaN"},
    {"to_bf16", "f32", {1001, 1}, 0, check_to_bf16, "misaligned (scalar)"},
    {"embedding_bf16", "bf16", {11, 96, 40}, 0, check_embedding_bf16, NULL},
    {"embedding_bf16", "bf16", {5, 100, 20}, 0, check_embedding_bf16, "rows not whole vectors: scalar"},
    {"matmul_bf16", "bf16", {9, 70, 33, 1}, 1e-5, check_matmul_bf16, "and matmul_bf16_in, matmul_bf16_out"},
    {"matmul_bf16", "bf16", {1, 64, 48, 0}, 1e-5, check_matmul_bf16, "and matmul_bf16_in, matmul_bf16_out"},
    {"matmul_bf16", "bf16", {40, 256, 300, 0}, 1e-5, check_matmul_bf16, "and matmul_bf16_in, matmul_bf16_out"},
    {"rmsnorm_bf16", "bf16", {13, 300}, 0, check_bf16_producer, "and rmsnorm"},
    {"rmsnorm_bf16", "bf16", {5, 4096}, 0, check_bf16_producer, "and rmsnorm (16-byte vectors)"},
    {"glu_bf16", "bf16", {13, 150, GLU_SILU}, 0, check_bf16_producer, "and glu (silu)"},
    {"glu_bf16", "bf16", {13, 150, GLU_GELU_TANH}, 0, check_bf16_producer, "and glu (gelu_tanh)"},
    {"glu_bf16", "bf16", {13, 160, GLU_SILU}, 0, check_bf16_producer, "and glu (silu; 16-byte vectors)"},
    {"rope_qkv_bf16", "bf16", {13, 3, 1, 60, 10000}, 0, check_bf16_producer, "and rope_qkv"},
    {"rope_qkv_bf16", "bf16", {5, 4, 2, 64, 10000}, 0, check_bf16_producer, "and rope_qkv (16-byte vectors)"},
    {"matmul_backward_bf16", "bf16", {37, 20, 45, 7}, 1e-5, check_matmul_backward_bf16, NULL},
    {"matmul_backward_bf16", "bf16", {5, 16, 8, 2}, 1e-5, check_matmul_backward_bf16, NULL},
    {"matmul_backward_bf16", "bf16", {5, 16, 8, 5}, 1e-5, check_matmul_backward_bf16, NULL},
    {"qk_norm", "f32", {7, 4, 2, 16}, 1e-5, check_qk_norm, "and qk_norm_bf16"},
    {"qk_norm", "f32", {3, 2, 1, 128}, 1e-5, check_qk_norm, "and qk_norm_bf16"},
    {"rope_qkv", "f32", {6, 4, 2, 16, 10000}, 1e-5, check_rope_qkv, NULL},
    {"rope_qkv", "f32", {6, 4, 2, 128, 500000}, 1e-5, check_rope_qkv, NULL},
    {"rope_qkv", "f32", {6, 3, 1, 20, 10000}, 1e-5, check_rope_qkv, "pairs not in groups of 4: scalar"},
    {"attention", "f32", {ATT_PACKED, 57, 0, 4, 2, 16, 0}, 2e-5, check_attention, "packed causal, 3 sequences, GQA"},
    {"attention", "f32", {ATT_PACKED, 57, 0, 6, 2, 64, 0}, 2e-5, check_attention, "packed causal, 3 sequences, GQA"},
    {"attention", "f32", {ATT_PACKED, 57, 0, 2, 2, 40, 0}, 2e-5, check_attention, "packed causal, 3 sequences, MHA"},
    {"attention", "f32", {ATT_PACKED, 57, 0, 2, 1, 128, 0}, 2e-5, check_attention, "packed causal, 3 sequences, MQA"},
    {"attention", "f32", {ATT_PACKED, 57, 0, 2, 1, 200, 0}, 2e-5, check_attention, "packed causal, 3 sequences, GQA"},
    /* one long sequence: many key tiles, the online softmax rescaling many times */
    {"attention", "f32", {ATT_CAUSAL, 300, 0, 2, 1, 64}, 2e-5, check_attention, "causal, one sequence"},
    {"attention", "f32", {ATT_DECODE, 3, 70, 4, 2, 32}, 2e-5, check_attention, "KV-cache decode"},
    /* decoding over a long cache: the keys cut into slices whose partial softmax states are merged (5 slices of 700
     * keys; one query's range ends within the first slice, so the later ones see none of its keys); a tree after a
     * long cache (4 slices) */
    {"attention",
     "f32",
     {ATT_DECODE, 3, 697, 4, 2, 64, 50},
     2e-5,
     check_attention,
     "KV-cache decode, 700 keys in slices"},
    {"attention", "f32", {ATT_DECODE, 1, 699, 2, 2, 128}, 2e-5, check_attention, "KV-cache decode, 700 keys in slices"},
    {"attention",
     "f32",
     {ATT_TREE, 6, 520, 4, 2, 64, 2},
     2e-5,
     check_attention,
     "tree mask after 520 cached keys, in slices"},
    /* a tree of 20 nodes (16 queries per block, two blocks per head) after a long cache, in slices */
    {"attention",
     "f32",
     {ATT_TREE, 20, 520, 4, 2, 128, 2},
     2e-5,
     check_attention,
     "20-node tree after 520 cached keys, in slices"},
    {"attention_bf16",
     "bf16",
     {ATT_TREE, 20, 520, 4, 2, 64, 2},
     1e-2,
     check_attention,
     "20-node tree after 520 cached keys, in slices (tensor cores)"},
    /* tensor cores: a 40-node tree (two full warps and a part of a third in a 64-query block) after 300 keys in
     * slices, with head_dim 128; a 20-node tree after 45 keys (no slices); a 24-token prompt continuing a 100-token
     * cache (causal, no mask) */
    {"attention_bf16",
     "bf16",
     {ATT_TREE, 40, 300, 4, 2, 128, 3},
     1e-2,
     check_attention,
     "40-node tree after 300 cached keys, in slices (tensor cores)"},
    {"attention_bf16",
     "bf16",
     {ATT_TREE, 20, 45, 2, 1, 64, 2},
     1e-2,
     check_attention,
     "20-node tree after 45 cached keys (tensor cores)"},
    {"attention_bf16",
     "bf16",
     {ATT_DECODE, 24, 100, 4, 2, 128},
     1e-2,
     check_attention,
     "24-token prompt after 100 cached keys (tensor cores)"},
    /* tree verification: 6 tree nodes after 45 cached keys (parents 0, 0, 1, 1, 2); node i sees the cache and its
     * ancestors */
    {"attention", "f32", {ATT_TREE, 6, 45, 4, 2, 16, 2}, 2e-5, check_attention, "tree mask"},
    {"attention", "f32", {ATT_TREE, 6, 45, 4, 1, 64, 2}, 2e-5, check_attention, "tree mask"},
    /* the scores' scale and soft cap (Gemma): a query_pre_attn_scalar other than head_dim, soft-capping at 1 (every
     * score bent), on the CUDA-core kernel, its key slices and the tensor cores */
    {"attention",
     "f32",
     {ATT_PACKED, 57, 0, 4, 2, 64, 0, 0, 1, 7},
     2e-5,
     check_attention,
     "packed causal, soft cap 1, scale 7^-0.5"},
    {"attention", "f32", {ATT_DECODE, 3, 697, 4, 2, 64, 50, 0, 2, 0}, 2e-5, check_attention, "decode in slices, cap 2"},
    {"attention_bf16",
     "bf16",
     {ATT_PACKED, 120, 0, 4, 2, 64, 1, 0, 1, 7},
     1e-2,
     check_attention,
     "packed causal, soft cap 1, scale 7^-0.5 (tensor cores)"},
    {"attention_bf16",
     "bf16",
     {ATT_TREE, 20, 45, 2, 1, 128, 2, 0, 3, 0},
     1e-2,
     check_attention,
     "tree after 45 cached keys, cap 3 (tensor cores)"},
    /* the tensor-core kernel (packed batches, head_dim 64 or 128): ragged sequences across its 64-query tiles, GQA,
     * one sequence longer than a key tile, a tail tile with padding rows */
    {"attention_bf16",
     "bf16",
     {ATT_PACKED, 120, 0, 4, 2, 64, 1},
     1e-2,
     check_attention,
     "packed causal, 4 sequences, GQA"},
    {"attention_bf16",
     "bf16",
     {ATT_PACKED, 120, 0, 2, 2, 128, 1},
     1e-2,
     check_attention,
     "packed causal, 4 sequences, MHA"},
    {"attention_bf16", "bf16", {ATT_CAUSAL, 300, 0, 1, 1, 128}, 1e-2, check_attention, "causal, one sequence"},
    {"attention_bf16",
     "bf16",
     {ATT_PACKED, 120, 0, 4, 2, 64, 1, 1},
     1e-2,
     check_attention,
     "packed causal, misaligned q/k/v (CUDA cores)"},
    /* the shapes it leaves to the CUDA-core kernel: a tree mask, a decoding step, head_dim 40 */
    {"attention_bf16", "bf16", {ATT_TREE, 6, 45, 4, 1, 64, 2}, 1e-2, check_attention, "tree mask (CUDA cores)"},
    {"attention_bf16", "bf16", {ATT_DECODE, 3, 70, 4, 2, 64}, 1e-2, check_attention, "KV-cache decode (CUDA cores)"},
    /* the CUDA-core kernel's K/V loads: 16-byte vectors, or scalar for a misaligned tensor or a head_dim not a multiple
     * of the vector; head_dim 256 reads V from global memory */
    {"attention_bf16",
     "bf16",
     {ATT_DECODE, 3, 697, 4, 2, 64, 50, 1},
     1e-2,
     check_attention,
     "KV-cache decode in slices, misaligned (CUDA cores, scalar loads)"},
    {"attention_bf16",
     "bf16",
     {ATT_DECODE, 2, 300, 2, 1, 256},
     1e-2,
     check_attention,
     "KV-cache decode, d=256 (CUDA cores, V from global memory)"},
    {"attention", "f32", {ATT_DECODE, 3, 200, 4, 2, 30}, 2e-5, check_attention, "KV-cache decode, d=30 (scalar loads)"},
    {"attention",
     "f32",
     {ATT_DECODE, 2, 300, 4, 2, 254},
     2e-5,
     check_attention,
     "KV-cache decode, d=254 (scalar loads, V from global memory)"},
    {"attention_bf16",
     "bf16",
     {ATT_DECODE, 3, 697, 4, 2, 64, 50},
     1e-2,
     check_attention,
     "KV-cache decode, 700 keys in slices (CUDA cores)"},
    {"attention_bf16",
     "bf16",
     {ATT_PACKED, 57, 0, 2, 2, 40, 0},
     1e-2,
     check_attention,
     "packed causal, d=40 (CUDA cores)"},
    {"glu", "f32", {10, 50, GLU_SILU}, 1e-6, check_glu, NULL},
    {"glu", "f32", {10, 50, GLU_GELU_TANH}, 1e-6, check_glu, "GeLU-tanh (Gemma)"},
    {"glu", "f32", {70000, 1, GLU_SILU}, 1e-6, check_glu, "more rows than a grid's y dimension"},
    {"glu", "f32", {10, 64, GLU_SILU}, 1e-6, check_glu, "16-byte vectors"},
    {"resblock_forward", "f32", {25, 40, 0, 1}, 1e-6, check_head_chain, NULL},
    {"resblock_forward", "f32", {25, 40, 0, 0}, 1e-6, check_head_chain, NULL},
    {"silu_backward", "f32", {1000, 0, 1}, 1e-6, check_head_chain, NULL},
    {"silu_backward", "f32", {1000, 0, 0}, 1e-6, check_head_chain, NULL},
    {"residual_add", "f32", {1000}, 1e-7, check_elementwise, NULL},
    {"scale", "f32", {1000}, 0, check_elementwise, NULL},
    {"softcap", "f32", {1000}, 1e-6, check_elementwise, NULL},
    /* a tail after the last 16-byte vector; misaligned tensors (the scalar path) */
    {"resblock_forward", "f32", {7, 100, 0, 1}, 1e-6, check_head_chain, NULL},
    {"resblock_forward", "f32", {25, 40, 1, 1}, 1e-6, check_head_chain, NULL},
    {"silu_backward", "f32", {1003, 0, 1}, 1e-6, check_head_chain, NULL},
    {"silu_backward", "f32", {1000, 1, 1}, 1e-6, check_head_chain, NULL},
    {"residual_add", "f32", {1003}, 1e-7, check_elementwise, NULL},
    {"residual_add", "f32", {1000, 1}, 1e-7, check_elementwise, NULL},
    {"scale", "f32", {1003}, 0, check_elementwise, NULL},
    {"scale", "f32", {1000, 1}, 0, check_elementwise, NULL},
    {"softcap", "f32", {1003}, 1e-6, check_elementwise, NULL},
    {"softcap", "f32", {1000, 1}, 1e-6, check_elementwise, NULL},
    {"fill_zero", "f32", {4004}, 0, check_fill_zero, NULL},
    {"copy_rows", "f32", {4, 3, 300}, 0, check_copy_rows, NULL},
    {"copy_rows", "f32", {70, 3, 300}, 0, check_copy_rows, "more moves than one launch takes"},
    {"copy_rows", "f32", {4, 3, 301}, 0, check_copy_rows, "rows not whole 16-byte vectors"},
    {"top_k", "f32", {7, 1000, 1}, 0, check_top_k, NULL},
    {"top_k", "f32", {6, 32000, 10}, 0, check_top_k, NULL},
    {"top_k", "f32", {3, 50, 16}, 0, check_top_k, NULL},
    {"rank_ids", "f32", {7, 1000}, 0, check_rank_ids, NULL},
    {"rank_ids", "f32", {6, 32000}, 0, check_rank_ids, NULL},
    {"softmax_xent", "f32", {9, 1000}, 1e-5, check_softmax_xent, NULL},
    {"softmax_xent", "f32", {9, 32000}, 1e-5, check_softmax_xent, NULL},
    {"softmax_xent", "f32", {6, 1000, 1}, 1e-5, check_soft_xent, "soft targets"},
    {"softmax_xent", "f32", {6, 32000, 1}, 1e-5, check_soft_xent, "soft targets"},
    {"softmax_xent", "f32", {9, 1001}, 1e-5, check_softmax_xent, "rows of odd length: no vectors"},
    {"softmax_xent", "f32", {6, 1001, 1}, 1e-5, check_soft_xent, "soft targets, rows of odd length"},
    {"classifier_bf16", "bf16", {37, 64, 1000}, 1e-5, check_classifier_bf16, NULL},
    {"classifier_bf16", "bf16", {9, 128, 32000}, 1e-5, check_classifier_bf16, NULL},
    {"classifier_bf16", "bf16", {11, 64, 1004}, 1e-5, check_classifier_bf16, "rows of 4 mod 8 logits: no vectors"},
    {"softmax_entropy", "f32", {6, 1000, 10}, 1e-5, check_softmax_entropy, NULL},
    {"softmax_entropy", "f32", {6, 32000, 10}, 1e-5, check_softmax_entropy, NULL},
    {"adamw", "f32", {3000}, 1e-6, check_adamw, "3 steps"},
    {"adamw", "f32", {3001, 1}, 1e-6, check_adamw, "3 steps, with the bf16 copy"},
    {"sum_squares", "f32", {1}, 1e-12, check_sum_squares, NULL},
    {"sum_squares", "f32", {1000}, 1e-12, check_sum_squares, NULL},
    {"sum_squares", "f32", {300007}, 1e-12, check_sum_squares, NULL},

    /* the ops checked as companions above, on small shapes of their own for --perf */
    {"rmsnorm", "f32", {13, 300}, 0, NO_CHECK},
    {"qk_norm_bf16", "bf16", {7, 4, 2, 16}, 0, NO_CHECK},
    {"matmul_bf16_in", "bf16", {9, 70, 33, 1}, 0, NO_CHECK},
    {"matmul_bf16_out", "bf16", {9, 70, 33, 1}, 0, NO_CHECK},
    {"embedding_q", "q8_0", {13, 256, 50, 0, DT_Q8_0}, 0, NO_CHECK},
};
enum { N_ROWS = sizeof op_rows / sizeof op_rows[0] };
/* model-sized rows, for --perf on the backend under test alone (too large for the emulator and the CPU) */
static const OpRow model_rows[] = {
    {"embedding", "f32", {4096, 4096, 32000}, 0, NO_CHECK},
    {"embedding_bf16", "bf16", {4096, 4096, 32000}, 0, NO_CHECK},
    {"rmsnorm", "f32", {4096, 4096}, 0, NO_CHECK},
    {"rmsnorm_bf16", "bf16", {4096, 4096}, 0, NO_CHECK},
    {"matmul", "f32", {4096, 4096, 4096, 0}, 0, NO_CHECK},
    {"matmul", "f32", {1, 4096, 4096, 0}, 0, NO_CHECK},
    {"matmul_q", "q4_k", {1, 4096, 4096, 0, DT_Q4_K}, 0, NO_CHECK},
    {"matmul_q", "q8_0", {64, 4096, 4096, 0, DT_Q8_0}, 0, NO_CHECK},
    {"matmul_bf16", "bf16", {4096, 4096, 4096, 0}, 0, NO_CHECK},
    {"matmul_bf16_in", "bf16", {4096, 4096, 4096, 1}, 0, NULL, "o_proj"},
    {"matmul_bf16_in", "bf16", {4096, 11008, 4096, 1}, 0, NULL, "down"},
    {"matmul_bf16_in", "bf16", {1, 11008, 4096, 1}, 0, NULL, "down"},
    {"matmul_bf16_in", "bf16", {64, 11008, 4096, 1}, 0, NULL, "down"},
    {"matmul_bf16_out", "bf16", {4096, 4096, 12288, 0}, 0, NULL, "q/k/v"},
    {"matmul_bf16_out", "bf16", {4096, 4096, 22016, 0}, 0, NULL, "gate/up"},
    {"matmul_bf16_out", "bf16", {1, 4096, 22016, 0}, 0, NULL, "gate/up"},
    {"matmul_bf16_out", "bf16", {64, 4096, 22016, 0}, 0, NULL, "gate/up"},
    {"matmul_backward", "f32", {4096, 4096, 4096, 3}, 0, NO_CHECK},
    {"matmul_backward_bf16", "bf16", {4096, 4096, 4096, 3}, 0, NO_CHECK},
    {"rope_qkv", "f32", {4096, 32, 32, 128, 10000}, 0, NO_CHECK},
    {"qk_norm_bf16", "bf16", {4096, 32, 8, 128}, 0, NO_CHECK},
    {"rope_qkv_bf16", "bf16", {4096, 32, 32, 128, 10000}, 0, NO_CHECK},
    {"attention", "f32", {ATT_PACKED, 4096, 0, 32, 32, 128, 2}, 0, NULL, "packed causal, 4 x 1024"},
    {"attention_bf16", "bf16", {ATT_PACKED, 4096, 0, 32, 32, 128, 2}, 0, NULL, "packed causal, 4 x 1024"},
    {"attention_bf16", "bf16", {ATT_DECODE, 1, 2047, 32, 32, 128}, 0, NULL, "decoding step after 2047 keys"},
    {"attention_bf16", "bf16", {ATT_TREE, 64, 2047, 32, 32, 128, 8}, 0, NULL, "64-node tree after 2047 keys"},
    {"glu", "f32", {4096, 11008, GLU_SILU}, 0, NO_CHECK},
    {"glu_bf16", "bf16", {4096, 11008, GLU_SILU}, 0, NO_CHECK},
    {"glu", "f32", {4096, 11008, GLU_GELU_TANH}, 0, NO_CHECK},
    {"residual_add", "f32", {4096 * 4096}, 0, NO_CHECK},
    {"scale", "f32", {4096 * 4096}, 0, NO_CHECK},
    {"softcap", "f32", {4096 * 4096}, 0, NO_CHECK},
    {"resblock_forward", "f32", {4096, 4096, 0, 1}, 0, NO_CHECK},
    {"silu_backward", "f32", {4096 * 4096, 0, 1}, 0, NO_CHECK},
    {"fill_zero", "f32", {1 << 28}, 0, NO_CHECK},
    {"copy_rows", "bf16", {8, 64, 2048}, 0, NULL, "kv_cache_keep: 8 rows of 32 layers' keys and values"},
    {"to_bf16", "f32", {5 * 4096 * 4096}, 0, NO_CHECK},
    {"top_k", "f32", {64, 32000, 10}, 0, NO_CHECK},
    {"rank_ids", "f32", {4096, 32000}, 0, NO_CHECK},
    {"softmax_xent", "f32", {4096, 32000}, 0, NO_CHECK},
    {"softmax_xent", "f32", {4096, 32000, 1}, 0, NULL, "soft targets"},
    {"softmax_entropy", "f32", {64, 32000, 10}, 0, NO_CHECK},
    {"classifier_bf16", "bf16", {4096, 4096, 32000}, 0, NULL, "with gradients"},
    {"adamw", "f32", {5 * 4096 * 4096, 1}, 0, NULL, "5 heads' ResBlocks, with their bf16 copy"},
    {"sum_squares", "f32", {5 * 4096 * 4096}, 0, NO_CHECK},
};
#undef NO_CHECK
enum { N_MODEL_ROWS = sizeof model_rows / sizeof model_rows[0] };

/* A row's shape in words: its op's parameter names (OP_PARAMS) with the row's values */
static const struct {
    const char *ops, *names;
} OP_PARAMS[] = {
    {" embedding embedding_bf16 ", "T C V"},
    {" matmul_q ", "T IC OC bias type"},
    {" embedding_q ", "T C V - type"},
    {" rmsnorm rmsnorm_bf16 ", "T C"},
    {" matmul matmul_bf16 matmul_bf16_out ", "T IC OC bias"},
    {" matmul_bf16_in ", "T IC OC accumulate"},
    {" matmul_backward matmul_backward_bf16 ", "T IC OC outputs"},
    {" rope_qkv rope_qkv_bf16 ", "T heads kv_heads head_dim theta"},
    {" qk_norm qk_norm_bf16 ", "T heads kv_heads head_dim"},
    {" attention attention_bf16 ", "layout T row0 heads kv_heads head_dim extra misaligned"},
    {" copy_rows ", "moves blocks row_elements"},
    {" glu glu_bf16 ", "T inter act"},
    {" residual_add scale softcap to_bf16 sum_squares ", "n"},
    {" residual_add scale softcap to_bf16 ", "n misaligned"},
    {" resblock_forward ", "T C misaligned bias_bf16"},
    {" silu_backward ", "n misaligned bf16"},
    {" adamw ", "n bf16_copy"},
    {" fill_zero ", "bytes"},
    {" softmax_xent ", "T V soft"},
    {" rank_ids ", "rows cols"},
    {" softmax_entropy ", "rows cols ids"},
    {" classifier_bf16 ", "rows IC V"},
    {" top_k ", "rows cols k"},
};
static void row_shape(const OpRow *r, char *buf, size_t size) {
    char key[64];
    snprintf(key, sizeof key, " %s ", r->op);
    const char *names = "";
    for (size_t i = 0; i < sizeof OP_PARAMS / sizeof OP_PARAMS[0]; i++)
        if (strstr(OP_PARAMS[i].ops, key)) names = OP_PARAMS[i].names;
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; *names && i < 8 && used < size; i++) {
        size_t len = strcspn(names, " ");
        static const char *const layouts[] = {"packed", "causal", "decode", "tree"};
        if (i == 0 && !strncmp(names, "layout", len)) /* attention's, by name */
            used += (size_t)snprintf(buf + used, size - used, "%s", layouts[r->p[0]]);
        else used += (size_t)snprintf(buf + used, size - used, "%s%.*s=%d", i ? " " : "", (int)len, names, r->p[i]);
        names += len + (names[len] == ' ');
    }
}

/* --- every op counted as the rows call it on the backend under test, through wrappers made from ops.def --- */
enum {
#define OP(ret, op, params, args) OP_ID_##op,
#include "../kernels/ops.def"
#undef OP
    N_OPS
};
static const char *const op_names[N_OPS] = {
#define OP(ret, op, params, args) #op,
#include "../kernels/ops.def"
#undef OP
};
static const Backend *counted_inner;
static long op_calls[N_OPS];
#define CALL_void(call) call;
#define CALL_double(call) return call;
#define OP(ret, op, params, args)                                                                                      \
    static ret counted_##op params {                                                                                   \
        op_calls[OP_ID_##op]++;                                                                                        \
        CALL_##ret(counted_inner->op args)                                                                             \
    }
#include "../kernels/ops.def"
#undef OP
static Backend counted(const Backend *inner) {
    Backend b = *inner;
    counted_inner = inner;
#define OP(ret, op, params, args) b.op = counted_##op;
#include "../kernels/ops.def"
#undef OP
    return b;
}

/* backend_check: a table with an op left out is refused at start-up, naming the backend and the op */
static void test_backend_check(void) {
    Backend b = *cpu;
    b.name = "broken";
    b.matmul_bf16_out = NULL;
    EXPECT_FATAL(backend_check(&b), "backend broken: its table leaves matmul_bf16_out unset",
                 "backend_check names the backend and the op its table leaves unset");
    b = *cpu;
    b.copy = NULL;
    EXPECT_FATAL(backend_check(&b), "leaves copy unset", "backend_check: a memory function too");
    backend_check(cpu);
    backend_check(gpu);
    CHECK(1, "backend_check: the cpu and cuda tables are complete (%d ops)", N_OPS);
}

/* Every row whose op matches `only` (NULL: all) on the backend under test, each with its own seed (a row's inputs do
 * not depend on the rows before it); then every op must have been called. */
static void run_op_table(const Backend *under_test, const char *only) {
    Backend wrapped = counted(under_test);
    const Backend *saved = gpu;
    gpu = &wrapped;
    memset(op_calls, 0, sizeof op_calls);
    int rows = 0;
    for (int i = 0; i < N_ROWS; i++) {
        const OpRow *r = &op_rows[i];
        if (!r->check || (only && strcmp(r->op, only))) continue;
        rng_seed(&rng, 1234 + (uint64_t)i);
        r->check(r);
        rows++;
    }
    gpu = saved;
    if (only) return;
    char missing[512] = "";
    for (int op = 0; op < N_OPS; op++)
        if (!op_calls[op]) snprintf(missing + strlen(missing), sizeof missing - strlen(missing), " %s", op_names[op]);
    CHECK(!missing[0], "the table's %d rows called every op of kernels/ops.def (%d) on %s%s%s", rows, N_OPS,
          under_test->name, missing[0] ? "; never called:" : "", missing);
}

/* --- --perf: each row timed per backend, with its rate (GFLOP/s for GEMMs, attention and the classifier; GB/s of the
 * bytes an op must move, each input read once and each output written once, for the others) --- */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
/* the calls queued before it are done (download waits for the device) */
static void bench_sync(const Backend *be, const void *ptr) {
    float x;
    if (!be->is_host) be->download(&x, ptr, sizeof x);
}
/* `call` once (a GPU's first launch loads its kernel), then repeated, 4 times more each round, until a round takes
 * 50 ms (bench_once: one round of one call): seconds per call */
static int bench_once;
#define TIME_CALLS(seconds, be, sync_ptr, call)                                                                        \
    do {                                                                                                               \
        call;                                                                                                          \
        bench_sync(be, sync_ptr);                                                                                      \
        for (long reps_ = 1;; reps_ *= 4) {                                                                            \
            double t0_ = now_s();                                                                                      \
            for (long i_ = 0; i_ < reps_; i_++) call;                                                                  \
            bench_sync(be, sync_ptr);                                                                                  \
            double dt_ = now_s() - t0_;                                                                                \
            if (dt_ >= 0.05 || reps_ >= 4096 || bench_once) {                                                          \
                seconds = dt_ / (double)reps_;                                                                         \
                break;                                                                                                 \
            }                                                                                                          \
        }                                                                                                              \
    } while (0)

/* A row's buffers on one backend, freed together; filled from a 4 MiB pattern of random values (fp32, or bf16) */
typedef struct {
    const Backend *be;
    void *ptr[24];
    int n;
} BenchBufs;
enum { FILL_NONE, FILL_F32, FILL_BF16 };
static void *bench_buf(BenchBufs *b, size_t bytes, int fill) {
    enum { PATTERN = 1 << 20 };
    static float pattern[PATTERN];
    static uint16_t pattern16[2 * PATTERN];
    if (pattern[0] == 0.0f) {
        for (int i = 0; i < PATTERN; i++) pattern[i] = 2.0f * rng_uniform(&rng) - 1.0f;
        cpu->to_bf16(pattern16, pattern, PATTERN);
        cpu->to_bf16(pattern16 + PATTERN, pattern, PATTERN);
    }
    ensure(b->n < 24);
    void *dev = b->ptr[b->n++] = b->be->alloc(bytes ? bytes : 1);
    for (size_t at = 0; fill != FILL_NONE && at < bytes; at += sizeof pattern) {
        size_t len = bytes - at < sizeof pattern ? bytes - at : sizeof pattern;
        b->be->upload((char *)dev + at, fill == FILL_F32 ? (const void *)pattern : (const void *)pattern16, len);
    }
    if (fill == FILL_NONE) b->be->fill_zero(dev, bytes);
    return dev;
}
/* n ids below `below` (and -1 where `every` > 0 divides the index) */
static int32_t *bench_ids(BenchBufs *b, size_t n, int below) {
    int32_t *ids = xmalloc(sizeof(int32_t) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) ids[i] = (int32_t)rng_below(&rng, (uint64_t)below);
    int32_t *dev = bench_buf(b, sizeof(int32_t) * n, FILL_NONE);
    b->be->upload(dev, ids, sizeof(int32_t) * n);
    free(ids);
    return dev;
}

/* Seconds per call of the row's op on `be`, and the work of a call (flops, or bytes moved) */
static double bench_row(const Backend *be, const OpRow *r, double *flops, double *bytes) {
    BenchBufs b = {.be = be};
    const int *p = r->p;
    const char *op = r->op;
    double s = 0;
    *flops = 0, *bytes = 0;
#define IS(name) (!strcmp(op, name))
#define F32(n) ((float *)bench_buf(&b, sizeof(float) * (size_t)(n), FILL_F32))
#define BF16(n) ((uint16_t *)bench_buf(&b, sizeof(uint16_t) * (size_t)(n), FILL_BF16))
#define ZERO(n, type) ((type *)bench_buf(&b, sizeof(type) * (size_t)(n), FILL_NONE))
    if (IS("matmul_q") || IS("embedding_q")) { /* zero bytes: valid blocks of every format */
        int T = p[0], IC = p[1], OC = p[2];
        DType type = (DType)p[4];
        size_t row_bytes = dtype_row_bytes(type, IC);
        void *w = ZERO(row_bytes * (size_t)OC, uint8_t);
        float *out = ZERO((size_t)T * (IS("matmul_q") ? OC : IC), float);
        if (IS("matmul_q")) {
            float *in = F32((size_t)T * IC), *bias = p[3] ? F32(OC) : NULL;
            TIME_CALLS(s, be, out, be->matmul_q(out, OC, in, w, type, bias, T, IC, OC));
            *flops = 2.0 * T * IC * OC;
        } else {
            int32_t *tokens = bench_ids(&b, (size_t)T, OC);
            TIME_CALLS(s, be, out, be->embedding_q(out, tokens, w, type, T, IC));
            *bytes = (double)T * (row_bytes + 4.0 * IC);
        }
    } else if (IS("embedding") || IS("embedding_bf16")) {
        int T = p[0], C = p[1], V = p[2];
        int32_t *tokens = bench_ids(&b, (size_t)T, V);
        float *out = ZERO((size_t)T * C, float);
        if (IS("embedding")) {
            float *table = F32((size_t)V * C);
            TIME_CALLS(s, be, out, be->embedding(out, tokens, table, T, C));
        } else {
            uint16_t *table = BF16((size_t)V * C);
            TIME_CALLS(s, be, out, be->embedding_bf16(out, tokens, table, T, C));
        }
        *bytes = (double)T * C * (IS("embedding") ? 8 : 6);
    } else if (IS("rmsnorm") || IS("rmsnorm_bf16")) {
        int T = p[0], C = p[1];
        float *x = F32((size_t)T * C), *w = F32(C);
        if (IS("rmsnorm")) {
            float *out = ZERO((size_t)T * C, float);
            TIME_CALLS(s, be, out, be->rmsnorm(out, x, w, T, C, 1e-5f));
        } else {
            uint16_t *out = ZERO((size_t)T * C, uint16_t);
            TIME_CALLS(s, be, out, be->rmsnorm_bf16(out, x, w, T, C, 1e-5f));
        }
        *bytes = (double)T * C * (IS("rmsnorm") ? 8 : 6);
    } else if (IS("matmul") || IS("matmul_bf16") || IS("matmul_bf16_in") || IS("matmul_bf16_out")) {
        int T = p[0], IC = p[1], OC = p[2];
        float *bias = IS("matmul_bf16_in") || !p[3] ? NULL : F32(OC), *out = ZERO((size_t)T * OC, float);
        if (IS("matmul")) {
            float *in = F32((size_t)T * IC), *w = F32((size_t)OC * IC);
            TIME_CALLS(s, be, out, be->matmul(out, in, w, bias, T, IC, OC));
        } else if (IS("matmul_bf16")) {
            float *in = F32((size_t)T * IC);
            uint16_t *w = BF16((size_t)OC * IC);
            TIME_CALLS(s, be, out, be->matmul_bf16(out, in, w, bias, T, IC, OC));
        } else if (IS("matmul_bf16_in")) { /* p[3]: accumulate */
            uint16_t *in = BF16((size_t)T * IC), *w = BF16((size_t)OC * IC);
            TIME_CALLS(s, be, out, be->matmul_bf16_in(out, in, w, NULL, T, IC, OC, p[3]));
        } else {
            uint16_t *in = BF16((size_t)T * IC), *w = BF16((size_t)OC * IC), *out16 = ZERO((size_t)T * OC, uint16_t);
            TIME_CALLS(s, be, out16, be->matmul_bf16_out(out16, in, w, bias, T, IC, OC));
        }
        *flops = 2.0 * T * IC * OC;
    } else if (IS("matmul_backward") || IS("matmul_backward_bf16")) {
        int T = p[0], IC = p[1], OC = p[2], which = p[3];
        float *dout = F32((size_t)T * OC), *in = F32((size_t)T * IC);
        float *dinp = which & 1 ? ZERO((size_t)T * IC, float) : NULL,
              *dw = which & 2 ? ZERO((size_t)OC * IC, float) : NULL, *db = which & 4 ? ZERO(OC, float) : NULL;
        if (IS("matmul_backward")) {
            float *w = F32((size_t)OC * IC);
            TIME_CALLS(s, be, dout, be->matmul_backward(dinp, dw, db, dout, in, w, T, IC, OC));
        } else {
            uint16_t *w = BF16((size_t)OC * IC), *dout16 = BF16((size_t)T * OC), *in16 = BF16((size_t)T * IC);
            TIME_CALLS(s, be, dout, be->matmul_backward_bf16(dinp, dw, db, dout, dout16, in16, w, T, IC, OC));
        }
        *flops = 2.0 * T * IC * OC * ((which & 1) + (which >> 1 & 1));
    } else if (IS("rope_qkv") || IS("rope_qkv_bf16")) {
        int T = p[0], nh = p[1], nkv = p[2], hd = p[3];
        size_t nq = (size_t)T * nh * hd, nk = (size_t)T * nkv * hd;
        int32_t *pos = bench_ids(&b, (size_t)T, 4096);
        float inv_freq[512];
        for (int j = 0; j < hd / 2; j++) inv_freq[j] = rope_inv_freq(j, hd, (float)p[4]);
        if (IS("rope_qkv")) {
            float *qkv = F32(nq + 2 * nk), *out = ZERO(nq + 2 * nk, float);
            TIME_CALLS(s, be, out, be->rope_qkv(out, out + nq, out + nq + nk, qkv, pos, T, nh, nkv, hd, inv_freq));
        } else {
            uint16_t *qkv = BF16(nq + 2 * nk), *out = ZERO(nq + 2 * nk, uint16_t);
            TIME_CALLS(s, be, out, be->rope_qkv_bf16(out, out + nq, out + nq + nk, qkv, pos, T, nh, nkv, hd, inv_freq));
        }
        *bytes = 2.0 * (double)(nq + 2 * nk) * (IS("rope_qkv") ? 4 : 2);
    } else if (IS("qk_norm") || IS("qk_norm_bf16")) {
        int T = p[0], nh = p[1], nkv = p[2], hd = p[3];
        size_t n = (size_t)T * (nh + 2 * nkv) * hd;
        float *qw = F32((size_t)hd), *kw = F32((size_t)hd);
        if (IS("qk_norm")) {
            float *qkv = F32(n);
            TIME_CALLS(s, be, qkv, be->qk_norm(qkv, qw, kw, T, nh, nkv, hd, 1e-6f));
        } else {
            uint16_t *qkv = BF16(n);
            TIME_CALLS(s, be, qkv, be->qk_norm_bf16(qkv, qw, kw, T, nh, nkv, hd, 1e-6f));
        }
        *bytes = 2.0 * (double)T * (nh + nkv) * hd * (IS("qk_norm") ? 4 : 2);
    } else if (IS("attention") || IS("attention_bf16")) {
        int T = p[1], row0 = p[2], nh = p[3], nkv = p[4], hd = p[5], Tk = row0 + T;
        AttentionScoring sc = attention_row_scoring(p);
        int32_t *kb, *ke;
        uint8_t *mask;
        attention_ranges(p, &kb, &ke, &mask);
        double pairs = 0; /* (query, key) pairs attended */
        for (int t = 0; t < T; t++)
            for (int j = kb[t]; j < ke[t]; j++) pairs += !mask || j < row0 || mask[(size_t)t * T + j - row0];
        int32_t *d_kb = bench_buf(&b, sizeof(int32_t) * (size_t)T, FILL_NONE),
                *d_ke = bench_buf(&b, sizeof(int32_t) * (size_t)T, FILL_NONE);
        be->upload(d_kb, kb, sizeof(int32_t) * (size_t)T), be->upload(d_ke, ke, sizeof(int32_t) * (size_t)T);
        uint8_t *d_mask = mask ? bench_buf(&b, (size_t)T * T, FILL_NONE) : NULL;
        if (mask) be->upload(d_mask, mask, (size_t)T * T);
        size_t nq = (size_t)T * nh * hd, nk = (size_t)Tk * nkv * hd;
        if (IS("attention")) {
            float *q = F32(nq), *k = F32(nk), *v = F32(nk), *out = ZERO(nq, float);
            TIME_CALLS(s, be, out, be->attention(out, q, k, v, d_kb, d_ke, d_mask, row0, T, nh, nkv, hd, sc));
        } else {
            uint16_t *q = BF16(nq), *k = BF16(nk), *v = BF16(nk), *out = ZERO(nq, uint16_t);
            TIME_CALLS(s, be, out, be->attention_bf16(out, q, k, v, d_kb, d_ke, d_mask, row0, T, nh, nkv, hd, sc));
        }
        *flops = 4.0 * hd * nh * pairs; /* q k^T and p v */
        free(kb), free(ke), free(mask);
    } else if (IS("copy_rows")) {
        int moves = p[0], blocks = p[1], rows = 2 * moves + 5;
        size_t row_bytes = (size_t)p[2] * (!strcmp(r->dtype, "bf16") ? 2 : 4);
        int32_t *src = xmalloc(sizeof(int32_t) * (size_t)moves), *dst = xmalloc(sizeof(int32_t) * (size_t)moves);
        for (int i = 0; i < moves; i++) dst[i] = 2 + i, src[i] = 3 + 2 * i;
        void *x = bench_buf(&b, row_bytes * rows * blocks, FILL_F32);
        TIME_CALLS(s, be, x, be->copy_rows(x, row_bytes * rows, blocks, src, dst, moves, row_bytes));
        *bytes = 2.0 * moves * blocks * (double)row_bytes;
        free(src), free(dst);
    } else if (IS("glu") || IS("glu_bf16")) {
        int T = p[0], inter = p[1];
        GluActivation act = (GluActivation)p[2];
        size_t n = (size_t)T * inter;
        if (IS("glu")) {
            float *gu = F32(2 * n), *out = ZERO(n, float);
            TIME_CALLS(s, be, out, be->glu(out, gu, T, inter, act));
        } else {
            uint16_t *gu = BF16(2 * n), *out = ZERO(n, uint16_t);
            TIME_CALLS(s, be, out, be->glu_bf16(out, gu, T, inter, act));
        }
        *bytes = 3.0 * (double)n * (IS("glu") ? 4 : 2);
    } else if (IS("resblock_forward")) { /* the heads' chain as training runs it: bias and bf16 copy */
        int T = p[0], C = p[1];
        size_t n = (size_t)T * C;
        float *z = F32(n), *x = F32(n), *bias = F32(C), *out = ZERO(n, float);
        uint16_t *out16 = ZERO(n, uint16_t);
        TIME_CALLS(s, be, out, be->resblock_forward(out, out16, z, x, bias, T, C));
        *bytes = (double)n * 18;
    } else if (IS("silu_backward")) {
        size_t n = (size_t)p[0];
        float *dout = F32(n), *z = F32(n), *dz = ZERO(n, float);
        uint16_t *dz16 = ZERO(n, uint16_t);
        TIME_CALLS(s, be, dz, be->silu_backward(dz, dz16, dout, z, n));
        *bytes = (double)n * 14;
    } else if (IS("residual_add") || IS("scale") || IS("softcap") || IS("to_bf16") || IS("sum_squares")) {
        size_t n = (size_t)p[0];
        float *x = F32(n), *y = F32(n);
        if (IS("residual_add")) {
            TIME_CALLS(s, be, x, be->residual_add(x, y, n));
        } else if (IS("scale")) {
            TIME_CALLS(s, be, x, be->scale(x, 1.0f, n));
        } else if (IS("softcap")) {
            TIME_CALLS(s, be, x, be->softcap(x, 30.0f, n));
        } else if (IS("to_bf16")) {
            uint16_t *out16 = ZERO(n, uint16_t);
            TIME_CALLS(s, be, out16, be->to_bf16(out16, x, n));
        } else {
            double *sum = bench_buf(&b, sizeof(double), FILL_NONE);
            TIME_CALLS(s, be, sum, be->sum_squares(sum, x, n));
        }
        *bytes = (double)n * (IS("to_bf16") ? 6 : IS("sum_squares") ? 4 : 12);
    } else if (IS("fill_zero")) {
        size_t n = (size_t)p[0];
        void *x = bench_buf(&b, n, FILL_NONE);
        TIME_CALLS(s, be, x, be->fill_zero(x, n));
        *bytes = (double)n;
    } else if (IS("adamw")) {
        size_t n = (size_t)p[0];
        float *param = F32(n), *grad = F32(n), *m = ZERO(n, float), *v = ZERO(n, float);
        uint16_t *copy = p[1] ? ZERO(n, uint16_t) : NULL;
        AdamWStep step = {.decay = 0.99999f,
                          .beta1_weight = 0.1f,
                          .beta2 = 0.999f,
                          .beta2_weight = 0.001f,
                          .bias_correction2_sqrt = 0.1f,
                          .step_size = 1e-3f,
                          .eps = 1e-8f,
                          .grad_scale = 1.0f};
        TIME_CALLS(s, be, param, be->adamw(param, copy, grad, m, v, n, &step, NULL));
        *bytes = (double)n * (copy ? 34 : 32); /* the gradients zeroed too */
    } else if (IS("softmax_xent") || IS("rank_ids") || IS("softmax_entropy") || IS("top_k")) {
        int T = p[0], V = p[1];
        float *x = F32((size_t)T * V), *small = ZERO((size_t)T * 16, float);
        int32_t *ids = bench_ids(&b, (size_t)T * 16, V), *ranks = ZERO((size_t)T * 16, int32_t);
        if (IS("softmax_xent")) {
            float *teacher = p[2] ? F32((size_t)T * V) : NULL;
            XentTargets targets = {.targets = ids, .teacher = teacher, .ranked = ids};
            TIME_CALLS(s, be, small, be->softmax_xent(x, small, ranks, targets, T, V, 1.0f / (float)T));
            *bytes = (double)T * V * 4 * (teacher ? 3 : 2);
        } else if (IS("rank_ids")) {
            TIME_CALLS(s, be, ranks, be->rank_ids(ranks, x, ids, T, V));
            *bytes = (double)T * V * 4;
        } else if (IS("softmax_entropy")) {
            TIME_CALLS(s, be, small, be->softmax_entropy(small, small + T, x, ids, T, V, p[2], 0.7f));
            *bytes = (double)T * V * 4;
        } else {
            TIME_CALLS(s, be, ranks, be->top_k(ranks, x, T, V, p[2]));
            *bytes = (double)T * V * 4;
        }
    } else if (IS("classifier_bf16")) {
        int rows = p[0], IC = p[1], V = p[2];
        float *logits = ZERO((size_t)rows * V, float), *loss = ZERO(rows, float);
        float *dx = ZERO((size_t)rows * IC, float), *dw = ZERO((size_t)V * IC, float);
        uint16_t *x = BF16((size_t)rows * IC), *w = BF16((size_t)V * IC);
        int32_t *targets = bench_ids(&b, (size_t)rows, V), *ranks = ZERO(rows, int32_t);
        XentTargets t = {.targets = targets, .ranked = targets};
        TIME_CALLS(s, be, loss, be->classifier_bf16(logits, loss, ranks, t, x, w, dx, dw, rows, IC, V, 1.0f / rows));
        *flops = 6.0 * rows * IC * V; /* the logits' GEMM and the two gradients' */
    } else {
        fatal("test_cuda_ops --perf: no bench for op %s", op);
    }
#undef IS
#undef F32
#undef BF16
#undef ZERO
    for (int i = 0; i < b.n; i++) be->free(b.ptr[i]);
    return s;
}

/* --perf's benches, each op's on its first (smallest) checked row, one call each on the backend under test: a smoke
 * test of the timing code that only --perf runs otherwise */
static void test_benches(const Backend *under_test) {
    int benched[N_OPS] = {0}, n = 0, bad = 0;
    bench_once = 1;
    for (int i = 0; i < N_ROWS; i++) {
        const OpRow *r = &op_rows[i];
        int op = 0;
        while (op < N_OPS && strcmp(op_names[op], r->op)) op++;
        if (op == N_OPS || benched[op]) continue;
        benched[op] = 1, n++;
        double flops, bytes, s = bench_row(under_test, r, &flops, &bytes);
        if (!(s > 0 && (flops > 0 || bytes > 0)))
            printf("       %s: %g s, %g flops, %g bytes\n", r->op, s, flops, bytes), bad++;
    }
    bench_once = 0;
    CHECK(n == N_OPS && !bad, "--perf's bench of each op (%d of %d) runs on %s, with a time and its work", n, N_OPS,
          under_test->name);
}

/* One line per row and backend: the CPU times the rows that are not model-sized, the backend under test every row;
 * `only`: the rows of that op; `small`: no model-sized row (a dry run on the emulator). */
static void run_perf(const Backend *under_test, const char *only, int small) {
    printf("per op row and backend: time per call, and GFLOP/s (GEMMs, attention, the classifier) or GB/s (bytes each "
           "input read and each output written once)\n");
    for (int i = 0; i < N_ROWS + (small ? 0 : N_MODEL_ROWS); i++) {
        int model_sized = i >= N_ROWS;
        const OpRow *r = model_sized ? &model_rows[i - N_ROWS] : &op_rows[i];
        if (only && strcmp(r->op, only)) continue;
        const Backend *backends[2] = {model_sized ? NULL : cpu, under_test};
        const char *label = r->label && strncmp(r->label, "and ", 4) ? r->label : NULL; /* not the companion ops */
        char shape[160];
        row_shape(r, shape, sizeof shape);
        for (int k = 0; k < 2; k++) {
            if (!backends[k]) continue;
            rng_seed(&rng, 1234 + (uint64_t)i);
            double flops, bytes, s = bench_row(backends[k], r, &flops, &bytes);
            printf("  perf %-20s %-4s %-56s %-4s %10.2f us/call %10.1f %s%s%s\n", r->op, r->dtype, shape,
                   backends[k]->name, s * 1e6, (flops > 0 ? flops : bytes) / s / 1e9, flops > 0 ? "GFLOP/s" : "GB/s",
                   label ? "  " : "", label ? label : "");
            fflush(stdout);
        }
    }
}

/* The tolerances of the heads' loss, gradients and gradient norm on the two backends. With bf16 weights the heads'
 * logits are rounded to bf16 as their GEMM writes them, and a logit whose fp32 sums differ in their last bits between
 * the backends (any other order of the sums, even the emulator's) may round to the other bf16 neighbour, a 2^-8 step
 * of it, which moves its probability's gradient by as much times the logit; an element of the logits' gradient may
 * round to the other neighbour too, and after a step a parameter that differs by rounding may round to another bf16
 * value for the heads' GEMMs, which moves gradients as much: they agree to bf16 rounding (3.4e-3 measured on the
 * truncating emulator at the first step, 4.4e-3 with base-kl targets), the losses to 1e-4 there (a KL divergence, a
 * difference of two cross-entropies over such logits, 5.3e-5 apart). */
typedef struct {
    double loss, grads, norm;
} HeadTols;
static HeadTols head_tols(DType weights, int V) {
    if (weights == DT_BF16) return (HeadTols){gemm_sums_like_cpu() ? 1e-5 : 1e-4, 1e-2, 1e-3};
    return (HeadTols){1e-5, gemm_tol(V, 1e-4), 1e-5};
}

/* One forward and backward pass of the heads on both backends with targets from the base model (base, each backend's
 * own; the heads' parameters equal): losses, top-k hits on the labels, gradients; the gradients are cleared after. */
static void check_distillation(MedusaHeads *hc, MedusaHeads *hg, MedusaWork *wc, MedusaWork *wg, const MedusaBase *bc,
                               const MedusaBase *bg, const float *hidden, const float *d_hidden, const int32_t *tokens,
                               const uint8_t *loss_mask, const int32_t *seq_lens, int T, DType weights,
                               const char *name) {
    MedusaBatchStats sc, sg;
    medusa_forward_backward(hc, wc, hidden, tokens, loss_mask, seq_lens, 2, T, bc, 0.8f, 1.0f, &sc);
    medusa_forward_backward(hg, wg, d_hidden, tokens, loss_mask, seq_lens, 2, T, bg, 0.8f, 1.0f, &sg);
    double loss_err = fabs(sg.total_loss - sc.total_loss) / fabs(sc.total_loss);
    HeadTols tol = head_tols(weights, hc->shape.head_vocab);
    long hits_diff = 0;
    for (int h = 0; h < hc->shape.n_heads; h++)
        for (int k = 0; k < MEDUSA_TOPK; k++) {
            long d = labs((long)sc.hits[h][k] - (long)sg.hits[h][k]);
            if (d > hits_diff) hits_diff = d;
        }
    CHECK(loss_err <= tol.loss && hits_diff <= 1,
          "medusa, --targets %s: loss %.6f vs %.6f (rel err %.2g, tol %.0e), top-k hits on the labels differ by at "
          "most %ld (tol 1)",
          name, sg.total_loss, sc.total_loss, loss_err, tol.loss, hits_diff);
    char what[96];
    snprintf(what, sizeof what, "medusa, --targets %s: gradients of %zu parameters", name, hc->n_params);
    expect_close(what, hg->grads, hc->grads, hc->n_params, tol.grads);
    hc->be->fill_zero(hc->grads, sizeof(float) * hc->n_params);
    hg->be->fill_zero(hg->grads, sizeof(float) * hg->n_params);
}

/* --targets base-kl with truncated heads (every other token) on both backends: the teacher's lm_head is the base's rows
 * for the map, gathered in its storage precision (model_lm_head_subset). */
static void check_truncated_kl(const Model *mc, const Model *mg, const float *hidden, const float *d_hidden,
                               const int32_t *tokens, const uint8_t *loss_mask, const int32_t *seq_lens, int T,
                               DType weights) {
    int H = mc->config.hidden_size, V = mc->config.vocab_size, Vh = V / 2;
    int32_t *map = xmalloc(sizeof(int32_t) * (size_t)Vh);
    for (int r = 0; r < Vh; r++) map[r] = 2 * r;
    MedusaShape shape = {3, 1, H, V, Vh};
    MedusaHeads hc, hg;
    MedusaWork wc, wg;
    Rng r1, r2;
    rng_seed(&r1, 8), rng_seed(&r2, 8);
    medusa_init(&hc, cpu, shape), medusa_init(&hg, gpu, shape);
    medusa_set_token_map(&hc, map), medusa_set_token_map(&hg, map);
    medusa_init_from_base(&hc, mc, &r1), medusa_init_from_base(&hg, mg, &r2);
    if (weights == DT_BF16) medusa_use_bf16(&hc), medusa_use_bf16(&hg);
    medusa_enable_grads(&hc), medusa_enable_grads(&hg);
    medusa_work_init(&wc, &hc, T, 8), medusa_work_init(&wg, &hg, T, 8);
    medusa_work_enable_teacher(&wc, &hc), medusa_work_enable_teacher(&wg, &hg);
    Matrix lm_c = model_lm_head_subset(mc, map, Vh), lm_g = model_lm_head_subset(mg, map, Vh);
    MedusaBase kl_c = {.targets = TARGETS_BASE_KL, .model = mc, .lm_head = &lm_c},
               kl_g = {.targets = TARGETS_BASE_KL, .model = mg, .lm_head = &lm_g};
    check_distillation(&hc, &hg, &wc, &wg, &kl_c, &kl_g, hidden, d_hidden, tokens, loss_mask, seq_lens, T, weights,
                       "base-kl with truncated heads");
    matrix_free(cpu, &lm_c), matrix_free(gpu, &lm_g);
    medusa_work_free(&wc, &hc), medusa_work_free(&wg, &hg);
    medusa_free(&hc), medusa_free(&hg);
    free(map);
}

/* An optimizer step whose gradient norm is not finite (a NaN, then an infinite gradient) changes nothing on the heads'
 * backend: parameters, their bf16 copy, AdamW's moments, its step count and the gradients stay bit for bit. */
static void check_nonfinite_step(MedusaHeads *h, AdamState *a, const OptimConfig *oc) {
    const Backend *be = h->be;
    size_t n = h->n_params, bytes = sizeof(float) * n;
    float *before = xmalloc(4 * bytes), *after = xmalloc(4 * bytes);
    uint16_t *copy_before = xmalloc(sizeof(uint16_t) * n), *copy_after = xmalloc(sizeof(uint16_t) * n);
    for (int k = 0; k < 2; k++) {
        float bad = k ? INFINITY : NAN, small = 1e-3f;
        be->upload(h->grads + n / 3, &small, sizeof small);
        be->upload(h->grads + n / 2, &bad, sizeof bad);
        const float *state[4] = {h->params, a->m, a->v, h->grads};
        for (int i = 0; i < 4; i++) be->download(before + i * n, state[i], bytes);
        if (h->params_bf16) be->download(copy_before, h->params_bf16, sizeof(uint16_t) * n);
        int step = a->step;
        double norm = optim_step(h, a, oc);
        for (int i = 0; i < 4; i++) be->download(after + i * n, state[i], bytes);
        if (h->params_bf16) be->download(copy_after, h->params_bf16, sizeof(uint16_t) * n);
        CHECK(
            !isfinite(norm) && a->step == step && !memcmp(before, after, 4 * bytes) &&
                (!h->params_bf16 || !memcmp(copy_before, copy_after, sizeof(uint16_t) * n)),
            "%s: a step with %s gradient (norm %g) leaves the parameters%s, moments, gradients and step count as they "
            "were",
            be->name, k ? "an infinite" : "a NaN", norm, h->params_bf16 ? ", their bf16 copy" : "");
    }
    be->fill_zero(h->grads, bytes);
    free(before), free(after), free(copy_before), free(copy_after);
}

/* The whole model path on both backends: packed forward, cached decoding, tree verification, then Medusa
 * heads' loss, gradients and three AdamW steps. The emulator makes device memory inaccessible to host code,
 * so this also proves that model/ and train/ only touch backend memory through the backend. */
static void test_end_to_end(DType weights) {
    const char *path = "tests/fixtures/models/tiny_qwen2"; /* attention biases, GQA */
    printf("end to end, %s weights:\n", weights == DT_BF16 ? "bf16" : "fp32");
    Model mc, mg;
    model_load(&mc, path, cpu, weights);
    model_load(&mg, path, gpu, weights);
    int H = mc.config.hidden_size, V = mc.config.vocab_size;
    enum { T = 24 };
    int32_t tokens[T], seq_lens[2] = {9, 15};
    uint8_t loss_mask[T];
    rng_seed(&rng, 5678); /* its own draws, whatever rows the op table has */
    for (int t = 0; t < T; t++) tokens[t] = (int32_t)rng_below(&rng, V), loss_mask[t] = t % 7 != 0;
    PackedBatch batch = {.n_tokens = T, .tokens = tokens, .n_seqs = 2, .seq_lens = seq_lens};
    /* bf16 GEMM inputs: the two sides sum in different orders, so a value on a bf16 rounding boundary can round
     * either way, a 2^-8 step that the layers after it carry on */
    double tol = weights == DT_BF16 ? 1e-2 : 1e-4;
    ForwardState sc, sg;
    forward_state_init(&sc, &mc, T);
    forward_state_init(&sg, &mg, T);
    float *hidden = xmalloc(sizeof(float) * T * H), *logits = xmalloc(sizeof(float) * T * V);
    float *d_hidden = gpu->alloc(sizeof(float) * T * H), *d_logits = gpu->alloc(sizeof(float) * T * V);
    model_forward(&mc, &sc, &batch, hidden, logits);
    model_forward(&mg, &sg, &batch, d_hidden, d_logits);
    expect_close("model_forward tiny_qwen2, 2 packed sequences: hidden", d_hidden, hidden, (size_t)T * H, tol);
    expect_close("model_forward tiny_qwen2, 2 packed sequences: logits", d_logits, logits, (size_t)T * V, tol);

    /* decoding: a 9-token prompt into the KV cache, then a 4-node tree after it, keeping nodes 0 and 2 */
    KVCache cc, cg;
    kv_cache_init(&cc, &mc, 32);
    kv_cache_init(&cg, &mg, 32);
    model_forward_cached(&mc, &sc, &cc, tokens, 9, hidden, logits);
    model_forward_cached(&mg, &sg, &cg, tokens, 9, d_hidden, d_logits);
    expect_close("model_forward_cached, 9-token prompt: logits", d_logits, logits, (size_t)9 * V, tol);
    int32_t depth[4] = {0, 1, 1, 2}, keep[2] = {0, 2};
    uint8_t mask[16] = {1, 0, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1, 1};
    model_forward_tree(&mc, &sc, &cc, tokens + 9, depth, mask, 4, hidden, logits);
    uint8_t *d_mask = to_gpu(mask, sizeof mask);
    model_forward_tree(&mg, &sg, &cg, tokens + 9, depth, d_mask, 4, d_hidden, d_logits);
    expect_close("model_forward_tree, 4 nodes: logits", d_logits, logits, (size_t)4 * V, tol);
    gpu->free(d_mask);
    kv_cache_keep(&cc, &mc, keep, 2);
    kv_cache_keep(&cg, &mg, keep, 2);
    model_forward_cached(&mc, &sc, &cc, tokens + 13, 1, hidden, logits);
    model_forward_cached(&mg, &sg, &cg, tokens + 13, 1, d_hidden, d_logits);
    expect_close("decoding after kv_cache_keep: logits", d_logits, logits, (size_t)V, tol);

    /* Medusa heads on the packed batch's hidden states */
    model_forward(&mc, &sc, &batch, hidden, NULL);
    model_forward(&mg, &sg, &batch, d_hidden, NULL);
    MedusaShape shape = {3, 1, H, V, 0};
    MedusaHeads hc, hg;
    MedusaWork wc, wg;
    AdamState ac, ag;
    OptimConfig oc;
    optim_defaults(&oc);
    oc.total_steps = 10;
    oc.weight_decay = 0.01;
    Rng r1, r2;
    rng_seed(&r1, 7), rng_seed(&r2, 7);
    medusa_init(&hc, cpu, shape), medusa_init(&hg, gpu, shape);
    medusa_init_from_base(&hc, &mc, &r1), medusa_init_from_base(&hg, &mg, &r2);
    if (weights == DT_BF16) medusa_use_bf16(&hc), medusa_use_bf16(&hg);
    medusa_enable_grads(&hc), medusa_enable_grads(&hg);
    medusa_work_init(&wc, &hc, T, 8), medusa_work_init(&wg, &hg, T, 8);
    adam_init(&ac, &hc), adam_init(&ag, &hg);
    /* targets from the base model, before any step: its greedy choices (the CPU's, for both backends) */
    int32_t choice[T];
    model_forward(&mc, &sc, &batch, hidden, logits);
    for (int t = 0; t < T; t++) choice[t] = row_argmax(logits + (size_t)t * V, V);
    MedusaBase argmax = {.targets = TARGETS_BASE_ARGMAX, .choice = choice};
    check_distillation(&hc, &hg, &wc, &wg, &argmax, &argmax, hidden, d_hidden, tokens, loss_mask, seq_lens, T, weights,
                       "base-argmax");
    /* and its distribution (each backend's own base model's logits) */
    medusa_work_enable_teacher(&wc, &hc), medusa_work_enable_teacher(&wg, &hg);
    MedusaBase kl_c = {.targets = TARGETS_BASE_KL, .model = &mc, .lm_head = &mc.lm_head},
               kl_g = {.targets = TARGETS_BASE_KL, .model = &mg, .lm_head = &mg.lm_head};
    check_distillation(&hc, &hg, &wc, &wg, &kl_c, &kl_g, hidden, d_hidden, tokens, loss_mask, seq_lens, T, weights,
                       "base-kl");
    check_truncated_kl(&mc, &mg, hidden, d_hidden, tokens, loss_mask, seq_lens, T, weights);
    double lr_sum = 0;
    for (int step = 1; step <= 3; step++) { /* step 1 has lr 0 (warm-up) */
        MedusaBatchStats st_c, st_g;
        memset(&st_c, 0, sizeof st_c), memset(&st_g, 0, sizeof st_g);
        medusa_forward_backward(&hc, &wc, hidden, tokens, loss_mask, seq_lens, 2, T, NULL, 0.8f, 1.0f, &st_c);
        medusa_forward_backward(&hg, &wg, d_hidden, tokens, loss_mask, seq_lens, 2, T, NULL, 0.8f, 1.0f, &st_g);
        HeadTols tol = head_tols(weights, V);
        double loss_err = fabs(st_g.total_loss - st_c.total_loss) / fabs(st_c.total_loss);
        /* a target within rounding of another logit may change rank when the GEMM sums in another order (a
         * GPU's cuBLAS): one hit either way per head and k is allowed */
        long hits_diff = 0;
        for (int h = 0; h < (int)(sizeof st_c.hits / sizeof st_c.hits[0]); h++)
            for (int k = 0; k < MEDUSA_TOPK; k++) {
                long d = labs((long)st_c.hits[h][k] - (long)st_g.hits[h][k]);
                if (d > hits_diff) hits_diff = d;
            }
        CHECK(loss_err <= tol.loss && hits_diff <= 1,
              "medusa step %d: loss %.6f vs %.6f (rel err %.2g, tol %.0e), top-k hits differ by at most %ld (tol 1)",
              step, st_g.total_loss, st_c.total_loss, loss_err, tol.loss, hits_diff);
        char what[96];
        snprintf(what, sizeof what, "medusa step %d: gradients of %zu parameters", step, hc.n_params);
        expect_close(what, hg.grads, hc.grads, hc.n_params, tol.grads);
        double norm_c = optim_step(&hc, &ac, &oc), norm_g = optim_step(&hg, &ag, &oc);
        CHECK(fabs(norm_g - norm_c) <= tol.norm * norm_c, "medusa step %d: gradient norm %.6f vs %.6f (tol %.0e)", step,
              norm_g, norm_c, tol.norm);
        lr_sum += lr_at(&oc, step - 1);
        snprintf(what, sizeof what, "medusa step %d: parameters after AdamW", step);
        if (gemm_sums_like_cpu()) expect_close(what, hg.params, hc.params, hc.n_params, 1e-4);
        else expect_adamw_close(what, hg.params, hc.params, hc.n_params, lr_sum);
    }
    check_nonfinite_step(&hc, &ac, &oc), check_nonfinite_step(&hg, &ag, &oc);
    adam_free(&ac, &hc), adam_free(&ag, &hg);
    medusa_work_free(&wc, &hc), medusa_work_free(&wg, &hg);
    medusa_free(&hc), medusa_free(&hg);
    kv_cache_free(&cc, &mc), kv_cache_free(&cg, &mg);
    forward_state_free(&sc, &mc), forward_state_free(&sg, &mg);
    model_free(&mc), model_free(&mg);
    gpu->free(d_hidden), gpu->free(d_logits);
    free(hidden), free(logits);
}

/* --- device memory: one reserved arena carved up (kernels/cuda/backend_cuda.cu) --- */

static long malloc_calls(void) { return cuda_emu_malloc_calls ? cuda_emu_malloc_calls() : -1; }

/* What stmt writes to stderr, into buf. */
#define CAPTURE_STDERR(buf, stmt)                                                                                      \
    do {                                                                                                               \
        FILE *tmp_ = tmpfile();                                                                                        \
        fflush(stderr);                                                                                                \
        int saved_ = dup(2);                                                                                           \
        dup2(fileno(tmp_), 2);                                                                                         \
        stmt;                                                                                                          \
        fflush(stderr);                                                                                                \
        dup2(saved_, 2);                                                                                               \
        close(saved_);                                                                                                 \
        rewind(tmp_);                                                                                                  \
        size_t n_ = fread(buf, 1, sizeof buf - 1, tmp_);                                                               \
        buf[n_] = '\0';                                                                                                \
        fclose(tmp_);                                                                                                  \
    } while (0)

static const char *TINY = "tests/fixtures/models/tiny_qwen2";

static const char *target_name(TargetKind k) {
    return k == TARGETS_BASE_KL ? "base-kl" : k == TARGETS_BASE_ARGMAX ? "base-argmax" : "labels";
}
enum { TRAIN_TOKENS = 96, TRAIN_CHUNK = 40, TRAIN_HEADS = 3, TRAIN_HEAD_VOCAB = 100, DECODE_LEN = 64 };

/* As train/run.c plans it: bf16 weights make the heads' GEMMs bf16 too. */
static MemoryPlan training_plan(const ModelConfig *c, DType weights, TargetKind targets, int head_vocab) {
    MemoryPlanInput in =
        memory_plan_training(weights, TRAIN_HEADS, 1, head_vocab, TRAIN_TOKENS, TRAIN_CHUNK, 1, 0, targets);
    return memory_plan(c, &in);
}

/* The run's one reservation; more than the GPU has is refused with the sizes named. */
static size_t test_reserve(void) {
    ModelConfig c;
    config_load(&c, TINY);
    size_t bytes = 0; /* the largest of the runs planned below */
    for (int w = 0; w < 2; w++)
        for (int k = 0; k < 3; k++)
            for (int v = 0; v < 2; v++) {
                MemoryPlan plan = training_plan(&c, w ? DT_BF16 : DT_F32, (TargetKind)k, v ? TRAIN_HEAD_VOCAB : 0);
                if (memory_plan_reserve_bytes(&plan) > bytes) bytes = memory_plan_reserve_bytes(&plan);
            }
    long calls = malloc_calls();
    EXPECT_FATAL(gpu->reserve((size_t)1 << 40), "GiB free", "reserving 1 TiB: the plan needs more than the GPU has");
    EXPECT_FATAL(gpu->reserve(gpu->memory_available() - ((size_t)100 << 20)), "kept free for cuBLAS",
                 "a plan that would leave under 256 MiB free beside it is refused");
    gpu->reserve(bytes);
    if (calls >= 0)
        CHECK(malloc_calls() == calls + 1,
              "reserve: one cudaMalloc of %.1f MiB (the refused ones are checked against the free memory first): %ld "
              "calls",
              bytes / 1048576.0, malloc_calls() - calls);
    EXPECT_FATAL(gpu->reserve(bytes), "already reserved", "a second reserve is an error");
    return bytes;
}

/* Carving, reuse and coalescing on the empty arena, then exhaustion falling back to cudaMalloc. */
static void test_arena(size_t reserved) {
    long calls = malloc_calls();
    char *a = gpu->alloc(1000), *b = gpu->alloc(5000), *c = gpu->alloc(1);
    CHECK(b == a + 1024 && c == b + 5120 && (uintptr_t)a % 256 == 0,
          "blocks are carved in order, 256-byte aligned: b - a = %td, c - b = %td", b - a, c - b);
    gpu->free(b);
    char *small = gpu->alloc(300), *b2 = gpu->alloc(4000);
    CHECK(small == b && b2 == b + 512, "first fit: a 300-byte block takes the start of b's hole, 4000 bytes the rest");
    gpu->free(small), gpu->free(b2);
    b2 = gpu->alloc(5000);
    CHECK(b2 == b, "the freed neighbours merged: a block of b's size reuses b's address");
    gpu->free(a), gpu->free(c), gpu->free(b2);
    char *all = gpu->alloc(reserved);
    CHECK(all == a, "all freed: the arena is one free block again (the whole %.1f MiB from its start)",
          reserved / 1048576.0);
    gpu->free(all);
    if (calls >= 0) CHECK(malloc_calls() == calls, "carving the arena made no cudaMalloc calls");

    /* exhaustion: a block bigger than the arena comes from a new chunk, with one warning */
    char warning[1024], second[1024];
    float x[4] = {1, 2, 3, 4}, back[4] = {0};
    float *big = NULL, *more = NULL;
    CAPTURE_STDERR(warning, big = gpu->alloc(reserved + (1 << 20)));
    if (calls >= 0) CHECK(malloc_calls() == calls + 1, "exhausted arena: a new chunk from one cudaMalloc");
    gpu->upload(big + 1000, x, sizeof x);
    gpu->download(back, big + 1000, sizeof back);
    CHECK(!memcmp(x, back, sizeof x) && strstr(warning, "underestimated") && strstr(warning, "MiB over the plan"),
          "exhausted arena: the block works, and the plan is reported short: %.300s", warning);
    CAPTURE_STDERR(second, more = gpu->alloc(reserved + (2 << 20)));
    CHECK(second[0] == '\0', "only one warning per run (a second overrun printed %zu bytes)", strlen(second));
    gpu->free(big), gpu->free(more);
    gpu->peak_bytes(); /* the next measurement starts here */
}

/* A training run as train/run.c makes it, on the reserved arena: the steps make no cudaMalloc call, and
 * the bytes in use at the peak are what the plan says (it leaves out only the 256-byte rounding and a few
 * scalars). head_vocab: truncated heads (their map the first head_vocab tokens), 0 for full ones. */
static void test_planned_training(DType weights, TargetKind targets, int head_vocab) {
    gpu->peak_bytes(); /* a new measurement */
    Model m;
    model_load(&m, TINY, gpu, weights);
    MemoryPlan plan = training_plan(&m.config, weights, targets, head_vocab);
    int H = m.config.hidden_size, V = m.config.vocab_size;
    MedusaHeads heads;
    medusa_init(&heads, gpu, (MedusaShape){TRAIN_HEADS, 1, H, V, head_vocab});
    Rng r;
    rng_seed(&r, 3);
    medusa_init_from_base(&heads, &m, &r);
    if (weights == DT_BF16) medusa_use_bf16(&heads);
    OptimConfig oc;
    optim_defaults(&oc);
    oc.total_steps = 4;
    Trainer t;
    trainer_init(&t, &m, &heads, &oc, 0.8f, targets, TRAIN_TOKENS, TRAIN_CHUNK);
    int32_t tokens[TRAIN_TOKENS], seq_lens[3] = {30, 50, 16};
    uint8_t mask[TRAIN_TOKENS];
    for (int i = 0; i < TRAIN_TOKENS; i++) tokens[i] = (int32_t)rng_below(&rng, V), mask[i] = i % 5 != 0;
    PackedBatch batch = {
        .n_tokens = TRAIN_TOKENS, .tokens = tokens, .loss_mask = mask, .n_seqs = 3, .seq_lens = seq_lens};
    PackedBatch micro[2] = {batch, batch};
    StepMetrics metrics;
    step_metrics_clear(&metrics);
    for (int step = 1; step <= 2; step++) { /* step s: s micro-batches */
        long calls = malloc_calls();
        CudaBlockingCopies before = cuda_blocking_copies();
        double norm = trainer_step(&t, micro, step, NULL, &metrics);
        CudaBlockingCopies after = cuda_blocking_copies();
        if (calls >= 0)
            CHECK(
                malloc_calls() == calls && isfinite(norm),
                "%s training step %d, %s targets, head vocabulary %d (forward, 3 heads' loss and backward, AdamW): %ld "
                "cudaMalloc calls",
                dtype_name(weights), step, target_name(targets), heads.shape.head_vocab, malloc_calls() - calls);
        /* the copies that wait for the device: per step one, the micro-batches' losses and ranks (medusa.c) with the
         * gradient norm's sum of squares (trainer.c, optim.c: AdamW reads it on the device); with base-argmax
         * targets, per micro-batch the base model's choices with their ranks (trainer.c) */
        long long downloads = after.downloads - before.downloads, uploads = after.uploads - before.uploads;
        long long budget = step * (targets == TARGETS_BASE_ARGMAX) + 1;
        CHECK(downloads == budget,
              "%s training step %d of %d micro-batches, %s targets: %lld downloads (%lld), %lld uploads",
              dtype_name(weights), step, step, target_name(targets), downloads, budget, uploads);
    }
    /* the cuBLASLt workspace (bf16), a constant on both sides, is left out of the comparison */
    double workspace = weights == DT_BF16 ? 32 << 20 : 0, peak = (double)gpu->peak_bytes() - workspace;
    double planned = plan.total - workspace;
    CHECK(peak <= planned * 1.02 && peak >= planned * 0.95,
          "%s training, %s targets, head vocabulary %d: peak %.1f KiB vs the plan's %.1f KiB (%.2f%%, tolerance "
          "-5%%..+2%%)",
          dtype_name(weights), target_name(targets), heads.shape.head_vocab, peak / 1024, planned / 1024,
          100 * (peak / planned - 1));
    trainer_free(&t);
    medusa_free(&heads);
    model_free(&m);
}

/* --cache-hidden on the GPU: the cache in page-locked host memory (Backend.alloc_host; test_staged_uploads: an upload
 * from there of any size is queued), a step that caches its conversations queues their rows' downloads into it
 * (download_queued: the step's one blocking download is its results'), a step on a batch whose conversations are all
 * cached uploads their rows without a blocking copy, and the rows that arrive are bit for bit those the base model gave
 * when they were cached (the hidden states after the first step, a miss per conversation). */
static void test_cached_hidden_upload(void) {
    enum { TOKENS = 96 };
    Model m;
    model_load(&m, TINY, gpu, DT_F32);
    int H = m.config.hidden_size, V = m.config.vocab_size;
    MedusaHeads heads;
    medusa_init(&heads, gpu, (MedusaShape){2, 1, H, V, 0});
    Rng r;
    rng_seed(&r, 5);
    medusa_init_from_base(&heads, &m, &r);
    OptimConfig oc;
    optim_defaults(&oc);
    oc.total_steps = 2;
    Trainer t;
    trainer_init(&t, &m, &heads, &oc, 0.8f, TARGETS_LABELS, TOKENS, TOKENS);
    int32_t tokens[TOKENS], seq_lens[2] = {40, 56};
    uint8_t mask[TOKENS];
    for (int i = 0; i < TOKENS; i++) tokens[i] = (int32_t)rng_below(&r, V), mask[i] = 1;
    int64_t offsets[3] = {0, 40, TOKENS}, convs[2] = {0, 1};
    TokenCache data = {.n_tokens = TOKENS, .n_convs = 2, .tokens = tokens, .loss_mask = mask, .conv_offsets = offsets};
    char log[4096] = "";
    CAPTURE_STDERR(log, trainer_cache_hidden(&t, &data));
    PackedBatch batch = {
        .n_tokens = TOKENS, .tokens = tokens, .loss_mask = mask, .n_seqs = 2, .seq_lens = seq_lens, .convs = convs};
    StepMetrics metrics;
    step_metrics_clear(&metrics);
    size_t n = (size_t)TOKENS * H;
    CudaBlockingCopies filling = cuda_blocking_copies();
    trainer_step(&t, &batch, 1, NULL, &metrics); /* two misses: computed, cached */
    long long fill_downloads = cuda_blocking_copies().downloads - filling.downloads;
    float *computed = from_gpu(t.hidden, n);
    gpu->fill_zero(t.hidden, sizeof(float) * n);
    CudaBlockingCopies before = cuda_blocking_copies();
    trainer_step(&t, &batch, 1, NULL, &metrics); /* two hits: uploaded from the cache */
    CudaBlockingCopies after = cuda_blocking_copies();
    float *uploaded = from_gpu(t.hidden, n);
    CHECK(strstr(log, "(page-locked)") && t.hidden_cache->hits == 2 && t.hidden_cache->misses == 2 &&
              fill_downloads == 1 && after.uploads == before.uploads && !memcmp(uploaded, computed, sizeof(float) * n),
          "--cache-hidden: page-locked cache, a step that caches 2 conversations: %lld blocking downloads (the step's "
          "results: the rows are queued into the cache), a step of the 2 cached: %lld blocking uploads, the rows the "
          "base model gave bit for bit",
          fill_downloads, after.uploads - before.uploads);
    free(computed), free(uploaded);
    trainer_free(&t);
    medusa_free(&heads);
    model_free(&m);
}

/* --cache-hidden's uploads beside the queue (HiddenCache.ahead_rows): steps of two micro-batches, each conversation of
 * the second micro-batch and of the next step's first uploaded while the micro-batch before runs once they are cached,
 * train the heads bit for bit as the same trainer without them (its ahead_rows taken away). The emulator runs such a
 * copy only when the backend's stream waits for it (tests/cudaemu/cuda_emu.h), so rows read before the wait would be
 * the buffer's earlier ones (NaN at first) and the steps would differ. */
static void test_hidden_uploaded_ahead(void) {
    enum { TOKENS = 96, STEPS = 3 };
    Model m;
    model_load(&m, TINY, gpu, DT_F32);
    int H = m.config.hidden_size, V = m.config.vocab_size;
    int32_t tokens[2 * TOKENS], seq_lens[4] = {40, 56, 30, 66};
    uint8_t mask[2 * TOKENS];
    Rng r;
    rng_seed(&r, 9);
    for (int i = 0; i < 2 * TOKENS; i++) tokens[i] = (int32_t)rng_below(&r, V), mask[i] = 1;
    int64_t offsets[5] = {0, 40, TOKENS, TOKENS + 30, 2 * TOKENS}, convs[4] = {0, 1, 2, 3};
    TokenCache data = {
        .n_tokens = 2 * TOKENS, .n_convs = 4, .tokens = tokens, .loss_mask = mask, .conv_offsets = offsets};
    PackedBatch micro[2];
    for (int b = 0; b < 2; b++)
        micro[b] = (PackedBatch){.n_tokens = TOKENS,
                                 .tokens = tokens + b * TOKENS,
                                 .loss_mask = mask + b * TOKENS,
                                 .n_seqs = 2,
                                 .seq_lens = seq_lens + 2 * b,
                                 .convs = convs + 2 * b};
    OptimConfig oc;
    optim_defaults(&oc);
    oc.total_steps = STEPS;
    MedusaHeads heads[2];
    Trainer t[2];
    double norms[2][STEPS];
    CudaBlockingCopies before[2], after[2];
    char log[4096];
    for (int k = 0; k < 2; k++) { /* k = 0: with uploads ahead */
        medusa_init(&heads[k], gpu, (MedusaShape){2, 1, H, V, 0});
        rng_seed(&r, 5);
        medusa_init_from_base(&heads[k], &m, &r);
        trainer_init(&t[k], &m, &heads[k], &oc, 0.8f, TARGETS_LABELS, TOKENS, TOKENS);
        CAPTURE_STDERR(log, trainer_cache_hidden(&t[k], &data));
        if (k == 1) gpu->free(t[k].hidden_cache->ahead_rows), t[k].hidden_cache->ahead_rows = NULL;
        StepMetrics metrics;
        step_metrics_clear(&metrics);
        for (int step = 0; step < STEPS; step++) {
            if (step == 1) before[k] = cuda_blocking_copies();
            norms[k][step] = trainer_step(&t[k], micro, 2, step + 1 < STEPS ? &micro[0] : NULL, &metrics);
        }
        after[k] = cuda_blocking_copies();
    }
    size_t n = heads[0].n_params;
    float *ahead = from_gpu(heads[0].params, n), *plain = from_gpu(heads[1].params, n);
    const HiddenCache *c = t[0].hidden_cache;
    /* the first step: 4 misses, then the next step's first micro-batch ahead; the later steps' micro-batches all ahead
     */
    CHECK(
        c->ahead_hits == 2 * (STEPS - 1) && c->hits == t[1].hidden_cache->hits && c->misses == 4 &&
            after[0].ahead - before[0].ahead == 2 * (2 * (STEPS - 1) - 1) && after[0].uploads == before[0].uploads &&
            after[1].ahead == before[1].ahead && !memcmp(norms[0], norms[1], sizeof norms[0]) &&
            !memcmp(ahead, plain, sizeof(float) * n),
        "--cache-hidden, %d steps of 2 micro-batches: %lld batches' rows uploaded ahead (%lld copies beside the queue "
        "after the first step, %lld blocking), the heads bit for bit those of the trainer without",
        STEPS, (long long)c->ahead_hits, after[0].ahead - before[0].ahead, after[0].uploads - before[0].uploads);
    free(ahead), free(plain);
    for (int k = 0; k < 2; k++) trainer_free(&t[k]), medusa_free(&heads[k]);
    model_free(&m);
}

/* The copies that wait for the device per decoding step (plain greedy, or Medusa with the decoder's tree, greedy or
 * with typical acceptance at `temperature`), at most `budget` downloads: the difference between a long and a short
 * generation over the difference of their steps, so that the prefill's copies cancel out. A plain step downloads its
 * argmax; a Medusa step its nodes' argmaxes with the heads' candidates at every node (infer/decoder.c), and with
 * typical acceptance the nodes' entropies and children's probabilities in the same copy; each uploads its pass's
 * layout (llama.c), typical acceptance the nodes' children's tokens too. */
static void check_decoding_copies(Decoder *d, const int32_t *prompt, int n_prompt, int medusa, float temperature,
                                  int budget) {
    int32_t out[32];
    DecodeOptions o;
    decode_options_defaults(&o);
    o.temperature = temperature;
    CudaBlockingCopies at[2];
    int steps[2];
    for (int k = 0; k < 2; k++) {
        DecodeStats st;
        CudaBlockingCopies before = cuda_blocking_copies();
        int max_new = k ? 24 : 1;
        if (medusa) decode_medusa(d, prompt, n_prompt, max_new, -1, &o, out, NULL, NULL, &st);
        else decode_plain(d, prompt, n_prompt, max_new, -1, &o, out, NULL, NULL, &st);
        at[k] = cuda_blocking_copies();
        at[k].downloads -= before.downloads, at[k].uploads -= before.uploads;
        steps[k] = st.steps;
    }
    int n = steps[1] - steps[0];
    double downloads = (double)(at[1].downloads - at[0].downloads) / n,
           uploads = (double)(at[1].uploads - at[0].uploads) / n;
    CHECK(n > 0 && downloads <= budget,
          "%s %s decoding, %d more steps: %.2f downloads per step (at most %d), %.2f uploads",
          temperature > 0 ? "typical" : "greedy", medusa ? "Medusa" : "plain", n, downloads, budget, uploads);
}

/* The tiny model on a backend with TRAIN_HEADS full-vocabulary heads made from its lm_head, r seeded with seed first */
static void load_tiny_with_heads(const Backend *be, Model *m, MedusaHeads *heads, DType weights, Rng *r,
                                 uint64_t seed) {
    model_load(m, TINY, be, weights);
    medusa_init(heads, be, (MedusaShape){TRAIN_HEADS, 1, m->config.hidden_size, m->config.vocab_size, 0});
    rng_seed(r, seed);
    medusa_init_from_base(heads, m, r);
}

/* Medusa decoding as medusa-infer sets it up: no cudaMalloc, and the peak is the decoding plan's. */
static void test_planned_decoding(void) {
    gpu->peak_bytes(); /* a new measurement, the training run's blocks freed */
    Model m;
    MedusaHeads heads;
    Rng r;
    load_tiny_with_heads(gpu, &m, &heads, DT_F32, &r, 4);
    int V = m.config.vocab_size;
    MedusaTree tree;
    tree_from_json(&tree, "[[0], [1], [0, 0], [0, 1], [1, 0]]", "test tree");
    MemoryPlanInput in = memory_plan_decoding(DT_F32, TRAIN_HEADS, 1, 0, DECODE_LEN, tree.n_nodes);
    MemoryPlan plan = memory_plan(&m.config, &in);
    long calls = malloc_calls();
    Decoder d;
    decoder_init(&d, &m, &heads, &tree, DECODE_LEN);
    int32_t prompt[20], out[32];
    for (int i = 0; i < 20; i++) prompt[i] = (int32_t)rng_below(&rng, V);
    DecodeOptions o;
    decode_options_defaults(&o);
    DecodeStats st;
    int n = decode_medusa(&d, prompt, 20, 24, -1, &o, out, NULL, NULL, &st);
    if (calls >= 0)
        CHECK(malloc_calls() == calls, "Medusa decoding of %d tokens: %ld cudaMalloc calls", n, malloc_calls() - calls);
    double peak = (double)gpu->peak_bytes();
    CHECK(peak <= plan.total * 1.02 && peak >= plan.total * 0.95,
          "decoding peak %.1f KiB vs the plan's %.1f KiB (%.2f%%, tolerance -5%%..+2%%)", peak / 1024,
          plan.total / 1024, 100 * (peak / plan.total - 1));
    check_decoding_copies(&d, prompt, 20, 0, 0.0f, 1);
    check_decoding_copies(&d, prompt, 20, 1, 0.0f, 1);
    check_decoding_copies(&d, prompt, 20, 1, 0.7f, 1);
    decoder_free(&d);
    tree_free(&tree);
    medusa_free(&heads);
    model_free(&m);
}

/* Plain and greedy Medusa decoding with each step captured and replayed as a CUDA graph (Backend.run_step) against
 * the same with graphs off: the tokens and the last step's logits equal bit for bit (a replay that kept a step's
 * arguments, the cache's length among them, would differ from the second step on), the first step of each shape run
 * plainly (the plain forward pass, the tree's, the heads after it), the others captured, each updating the graph before
 * it, and a capture that fails falling back to plain steps with a warning. With fp32 weights the tokens are also the
 * CPU backend's (the reference). */
static void test_graph_decoding(DType weights) {
    enum { NEW = 20 };
    MedusaTree tree;
    tree_from_json(&tree, "[[0], [1], [0, 0], [0, 1], [1, 0]]", "test tree");
    Model m;
    MedusaHeads heads;
    Rng r;
    load_tiny_with_heads(gpu, &m, &heads, weights, &r, 11);
    int V = m.config.vocab_size;
    int32_t prompt[16], out[3][2][NEW + 8];
    for (int i = 0; i < 16; i++) prompt[i] = (int32_t)rng_below(&r, V);
    float *logits[3];
    int n[3][2], steps[3][2];
    CudaGraphStats before[3], after[3];
    char warning[4096] = "";
    for (int run = 0; run < 3; run++) { /* graphs off, on, on with every capture failing */
        cuda_set_graphs(run > 0);
        if (run == 2) setenv("CUDA_EMU_GRAPH_INVALIDATE", "1", 1);
        Decoder d;
        decoder_init(&d, &m, &heads, &tree, DECODE_LEN);
        DecodeOptions o;
        decode_options_defaults(&o);
        DecodeStats st;
        before[run] = cuda_graph_stats();
        CAPTURE_STDERR(warning, {
            n[run][0] = decode_plain(&d, prompt, 16, NEW, -1, &o, out[run][0], NULL, NULL, &st);
            steps[run][0] = st.steps;
            n[run][1] = decode_medusa(&d, prompt, 16, NEW, -1, &o, out[run][1], NULL, NULL, &st);
            steps[run][1] = st.steps;
        });
        after[run] = cuda_graph_stats();
        logits[run] = xmalloc(sizeof(float) * (size_t)V);
        gpu->download(logits[run], d.logits, sizeof(float) * (size_t)V);
        decoder_free(&d);
        unsetenv("CUDA_EMU_GRAPH_INVALIDATE");
    }
    cuda_set_graphs(1);
    for (int run = 1; run < 3; run++)
        for (int k = 0; k < 2; k++)
            CHECK(n[run][k] == n[0][k] && !memcmp(out[run][k], out[0][k], sizeof(int32_t) * (size_t)n[0][k]) &&
                      (k == 0 || !memcmp(logits[run], logits[0], sizeof(float) * (size_t)V)),
                  "%s %s decoding with %s: %d tokens in %d steps, as without graphs (%d in %d)%s", dtype_name(weights),
                  k ? "Medusa" : "plain", run == 1 ? "CUDA graphs" : "graph captures failing", n[run][k], steps[run][k],
                  n[0][k], steps[0][k], k ? ", last logits equal bit for bit" : "");
    /* a plain step is a forward pass; a Medusa step a forward pass, then the heads at every node (argmax_rows) */
    long long total = steps[1][0] + 2LL * steps[1][1];
    long long captured = after[1].captured - before[1].captured, plain = after[1].plain - before[1].plain;
    long long updated = after[1].updated - before[1].updated, made = after[1].instantiated - before[1].instantiated;
    CHECK(after[0].captured == before[0].captured && captured + plain == total && captured >= total - 3 &&
              updated + made == captured && made <= 3,
          "%s: graphs off, no capture; on, %lld steps: %lld captured (%lld updated, %lld instantiated), %lld plain",
          dtype_name(weights), total, captured, updated, made, plain);
    CHECK(strstr(warning, "could not be captured as a CUDA graph") && after[2].captured == before[2].captured,
          "%s: a capture that fails: a warning, then plain steps (%lld captured): %.200s", dtype_name(weights),
          after[2].captured - before[2].captured, warning);
    if (weights == DT_F32) {
        Model cm;
        MedusaHeads ch;
        Rng cr;
        load_tiny_with_heads(cpu, &cm, &ch, weights, &cr, 11); /* the same heads and prompt */
        int32_t cprompt[16], cout[2][NEW + 8];
        for (int i = 0; i < 16; i++) cprompt[i] = (int32_t)rng_below(&cr, V);
        Decoder d;
        decoder_init(&d, &cm, &ch, &tree, DECODE_LEN);
        DecodeOptions o;
        decode_options_defaults(&o);
        DecodeStats st;
        int cn[2] = {decode_plain(&d, cprompt, 16, NEW, -1, &o, cout[0], NULL, NULL, &st),
                     decode_medusa(&d, cprompt, 16, NEW, -1, &o, cout[1], NULL, NULL, &st)};
        for (int k = 0; k < 2; k++)
            CHECK(!memcmp(cprompt, prompt, sizeof prompt) && cn[k] == n[1][k] &&
                      !memcmp(cout[k], out[1][k], sizeof(int32_t) * (size_t)cn[k]),
                  "%s %s decoding with CUDA graphs: the CPU backend's %d tokens", dtype_name(weights),
                  k ? "Medusa" : "plain", cn[k]);
        decoder_free(&d);
        medusa_free(&ch);
        model_free(&cm);
    }
    for (int run = 0; run < 3; run++) free(logits[run]);
    medusa_free(&heads);
    model_free(&m);
    tree_free(&tree);
}

/* The demo model on the emulated GPU with bf16 weights, tensor-core attention included (head_dim 64; the
 * fixture's second sequence, 140 tokens): top-1 agreement with transformers' fp32 logits
 * (tests/gen/gen_models.py). Unguarded device memory: the guard's mprotect calls would take minutes here. */
void cuda_emu_guard_device_memory(int on) __attribute__((weak));
/* Medusa decoding with typical acceptance at temperature 0.7 on both backends: the CUDA side's acceptance reads
 * entropies and candidate probabilities from softmax_entropy, the CPU's the same op on the host, so the tokens must
 * agree. */
static void test_typical_decoding(void) {
    const Backend *backends[2] = {cpu, gpu};
    int32_t out[2][40], prompt[12];
    int n[2], steps[2];
    MedusaTree tree;
    tree_from_json(&tree, "[[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0]]", "test tree");
    for (int b = 0; b < 2; b++) {
        Model m;
        model_load(&m, TINY, backends[b], DT_F32);
        int H = m.config.hidden_size, V = m.config.vocab_size;
        Rng r;
        rng_seed(&r, 9);
        for (int i = 0; i < 12; i++) prompt[i] = (int32_t)rng_below(&r, V);
        MedusaHeads heads;
        medusa_init(&heads, backends[b], (MedusaShape){TRAIN_HEADS, 1, H, V, 0});
        medusa_init_from_base(&heads, &m, &r);
        Decoder d;
        decoder_init(&d, &m, &heads, &tree, DECODE_LEN);
        DecodeOptions o;
        decode_options_defaults(&o);
        o.temperature = 0.7f;
        DecodeStats st;
        n[b] = decode_medusa(&d, prompt, 12, 32, -1, &o, out[b], NULL, NULL, &st);
        steps[b] = st.steps;
        decoder_free(&d);
        medusa_free(&heads);
        model_free(&m);
    }
    CHECK(n[0] == n[1] && steps[0] == steps[1] && !memcmp(out[0], out[1], sizeof(int32_t) * (size_t)n[0]),
          "typical acceptance (T=0.7): %d tokens in %d steps on the CPU, %d in %d on CUDA, identical", n[0], steps[0],
          n[1], steps[1]);
    tree_free(&tree);
}

/* Greedy Medusa decoding on the GPU's own paths: a 16-row tree is verified by the tensor-core attention and plain
 * steps by the CUDA-core one, both over a cache long enough to be cut into key slices (276 keys), so the two sum in
 * other orders and round bf16 activations apart. The outputs must be equal, or part only at a near-tie of the base
 * model's logits (greedy_compare, bf16's window); heads start as the base's lm_head, so some candidates are
 * accepted. The prompt: the fixture's conversation, then its start again. */
static void test_smollm2_medusa_greedy(const Model *m, const int32_t *seq, int n_seq) {
#ifdef __SANITIZE_ADDRESS__
    /* its kernels run in the op tests above; here, with a fiber switch a system call, it would take most of an hour */
    (void)m, (void)seq, (void)n_seq;
    printf("  skip greedy Medusa decoding on SmolLM2 under AddressSanitizer\n");
    return;
#endif
    enum { PROMPT = 260, NEW = 16 };
    int32_t prompt[PROMPT], plain[NEW + 8], medusa[NEW + 8];
    for (int i = 0; i < PROMPT; i++) prompt[i] = seq[i % n_seq];
    MedusaTree tree;
    tree_from_json(
        &tree, "[[0], [1], [2], [3], [4], [5], [6], [7], [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [0, 0, 0]]",
        "16-row tree");
    MedusaHeads heads;
    medusa_init(&heads, gpu, (MedusaShape){tree.n_heads_used, 1, m->config.hidden_size, m->config.vocab_size, 0});
    Rng r;
    rng_seed(&r, 6);
    medusa_init_from_base(&heads, m, &r);
    medusa_use_bf16(&heads);
    Decoder d;
    decoder_init(&d, m, &heads, &tree, PROMPT + NEW + tree.n_nodes + 1);
    DecodeOptions o;
    decode_options_defaults(&o);
    DecodeStats sp, sm;
    int np = decode_plain(&d, prompt, PROMPT, NEW, -1, &o, plain, NULL, NULL, &sp);
    int nm = decode_medusa(&d, prompt, PROMPT, NEW, -1, &o, medusa, NULL, NULL, &sm);
    GreedyComparison c = greedy_compare(&d, prompt, PROMPT, plain, np, medusa, nm, GREEDY_TIE_WINDOW_BF16);
    CHECK(np == NEW && c.match != GREEDY_DIFFER,
          "SmolLM2, bf16, emulated GPU: greedy Medusa (16-row tree on the tensor cores, %.2f tokens per step) vs "
          "plain greedy, %d tokens after a %d-token prompt: %s",
          (double)nm / sm.steps, np, PROMPT,
          c.match == GREEDY_EQUAL      ? "equal"
          : c.match == GREEDY_NEAR_TIE ? "parting at a near-tie"
                                       : "DIFFERENT");
    if (c.match != GREEDY_EQUAL)
        printf("       they part at token %d: base logits %.5g (plain's token) vs %.5g, largest %.4g\n", c.at,
               c.logit_a, c.logit_b, c.largest);
    decoder_free(&d);
    medusa_free(&heads);
    tree_free(&tree);
}

static void test_smollm2_bf16(void) {
    const char *path =
        getenv("MEDUSA_SMOLLM2_GGUF") ? getenv("MEDUSA_SMOLLM2_GGUF") : "cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (strcmp(path, "none") == 0) { /* said explicitly: a GPU machine the 94 MB model cannot reach */
        printf("  skip SmolLM2 with bf16 weights (MEDUSA_SMOLLM2_GGUF=none)\n");
        return;
    }
    if (!file_exists(path)) {
        CHECK(0, "SmolLM2 GGUF present at %s (run data/fetch_demo.sh)", path);
        return;
    }
    WeightSet ref;
    weights_open_safetensors_file(&ref, "tests/fixtures/models/smollm2_ref.safetensors");
    int64_t T, n_seqs, n_top1;
    int32_t *tokens = weights_load_i32(&ref, "tokens", &T);
    int32_t *seq_lens = weights_load_i32(&ref, "seq_lens", &n_seqs);
    int32_t *top1 = weights_load_i32(&ref, "top1", &n_top1);
    ensure(tokens && seq_lens && top1 && n_top1 == T);
    if (cuda_emu_guard_device_memory) cuda_emu_guard_device_memory(0);
    int32_t *seq = tokens + seq_lens[0];
    T = seq_lens[1];
    Model m;
    model_load(&m, path, gpu, DT_BF16);
    int V = m.config.vocab_size, H = m.config.hidden_size;
    ForwardState s;
    forward_state_init(&s, &m, (int)T);
    float *d_hidden = gpu->alloc(sizeof(float) * (size_t)T * H), *d_logits = gpu->alloc(sizeof(float) * (size_t)T * V);
    PackedBatch b = {.n_tokens = (int)T, .tokens = seq, .n_seqs = 1, .seq_lens = seq_lens + 1};
    model_forward(&m, &s, &b, d_hidden, d_logits);
    float *logits = from_gpu(d_logits, (size_t)T * V);
    int agree = 0;
    for (int t = 0; t < T; t++) {
        const float *row = logits + (size_t)t * V;
        int best = row_argmax(row, V);
        agree += best == top1[seq_lens[0] + t];
    }
    CHECK(agree >= 0.95 * (double)T,
          "SmolLM2, bf16 weights, emulated GPU (head_dim %d): top-1 agreement with transformers %d/%lld (>= 95%%)",
          m.config.head_dim, agree, (long long)T);

    /* tree verification on the tensor cores: a 20-node binary tree after a 60-token prompt, every path of which is the
     * sequence itself, so node i's logits are the packed pass's at position 60 + depth(i) */
    enum { TP = 60, TN = 20 };
    ensure(T >= TP + 5);
    int32_t depth[TN] = {0}, tree_tokens[TN], key_begin[TN], key_end[TN];
    uint8_t mask[TN * TN];
    tree_after_cache(TN, TP, 2, key_begin, key_end, mask); /* model_forward_tree makes the key ranges itself */
    for (int i = 0; i < TN; i++) {
        depth[i] = i == 0 ? 0 : depth[(i - 1) / 2] + 1;
        tree_tokens[i] = seq[TP + depth[i]];
    }
    KVCache cache;
    kv_cache_init(&cache, &m, TP + TN);
    float *d_tree_logits = gpu->alloc(sizeof(float) * (size_t)TN * V);
    uint8_t *d_mask = to_gpu(mask, sizeof mask);
    model_forward_cached(&m, &s, &cache, seq, TP, d_hidden, d_tree_logits);
    model_forward_tree(&m, &s, &cache, tree_tokens, depth, d_mask, TN, d_hidden, d_tree_logits);
    float *tree_logits = from_gpu(d_tree_logits, (size_t)TN * V);
    double worst = 0;
    int same = 0;
    for (int i = 0; i < TN; i++) {
        const float *want = logits + (size_t)(TP + depth[i]) * V, *got = tree_logits + (size_t)i * V;
        double abs_err, rel_err;
        max_errors(got, want, (size_t)V, &abs_err, &rel_err);
        worst = fmax(worst, rel_err);
        same += row_argmax(got, V) == row_argmax(want, V);
    }
    CHECK(worst <= 3e-2 && same >= TN - 1,
          "SmolLM2, emulated GPU: a 20-node tree after a 60-token cache gives the packed pass's logits (max rel err "
          "%.3g, tol 3e-2; argmax equal on %d/%d nodes)",
          worst, same, TN);
    kv_cache_free(&cache, &m);
    gpu->free(d_tree_logits), gpu->free(d_mask);
    free(tree_logits);
    gpu->free(d_hidden), gpu->free(d_logits);
    forward_state_free(&s, &m);
    test_smollm2_medusa_greedy(&m, seq, (int)T);
    model_free(&m);
    weights_close(&ref);
    free(tokens), free(seq_lens), free(top1), free(logits);
    if (cuda_emu_guard_device_memory) cuda_emu_guard_device_memory(1);
}

/* test_cuda_ops [--op NAME] [--perf [--small]]: --op runs that op's rows of the table only (no other test);
 * --perf times the rows instead of checking them (one line per row and backend). */
int main(int argc, char **argv) {
    const char *only = NULL;
    int perf = 0, small = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--perf")) perf = 1;
        else if (!strcmp(argv[i], "--small")) small = 1;
        else if (!strcmp(argv[i], "--op") && i + 1 < argc) only = argv[++i];
        else fatal("usage: %s [--op NAME] [--perf [--small]]", argv[0]);
    }
    cpu = backend_cpu();
    gpu = backend_cuda();
    rng_seed(&rng, 1234);
    printf("CUDA backend (%s) against the CPU backend\n", gpu->name);
    if (perf) { /* no "passed, failed" line: it checks nothing */
        run_perf(gpu, only, small);
        return 0;
    }
    if (only) {
        run_op_table(gpu, only);
        return test_summary();
    }
    CHECK(backend_by_name("cpu") == cpu, "backend_by_name(\"cpu\")");
    EXPECT_FATAL(backend_by_name("tpu"), "unknown device", "backend_by_name rejects an unknown device");
    test_backend_check();
    size_t reserved = test_reserve(); /* before anything else is allocated */
    test_arena(reserved);
    test_planned_training(DT_F32, TARGETS_LABELS, 0);
    test_planned_training(DT_F32, TARGETS_BASE_ARGMAX, 0);
    test_planned_training(DT_F32, TARGETS_BASE_KL, TRAIN_HEAD_VOCAB);
    test_planned_decoding();
    test_planned_training(DT_BF16, TARGETS_BASE_ARGMAX, 0);
    test_planned_training(DT_BF16, TARGETS_BASE_KL, 0);
    test_planned_training(DT_BF16, TARGETS_LABELS, 0); /* last: the bf16 GEMM scratch and workspace stay allocated */
    test_memory();
    test_comm();
    test_gemm_tune();
    test_staged_uploads();
    test_cached_hidden_upload();
    test_hidden_uploaded_ahead();
    run_op_table(gpu, NULL);
    test_classifier_bf16_rounds_logits();
    test_benches(gpu);
    test_peak_flops();
    test_end_to_end(DT_F32);
    test_end_to_end(DT_BF16);
    test_typical_decoding();
    test_graph_decoding(DT_F32);
    test_graph_decoding(DT_BF16);
    test_smollm2_bf16();
    return test_summary();
}
