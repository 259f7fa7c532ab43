/* Linear layer: fp32 weights on cuBLAS (sgemm), bf16 weights on cuBLASLt (below). Row-major X[R,C] is
 * column-major X^T, so out = in @ W^T is, in cuBLAS's terms, out^T[OC,T] = W[IC,OC]^T * in^T[IC,T]. */
#include <map>
#include <tuple>
#include <utility>

#include "cuda_common.cuh"

template <class Elem> /* float, or bf16: the sum rounded */
__global__ void add_bias_kernel(Elem *out, const float *bias, int T, int OC) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= OC) return;
    for (int t = blockIdx.y; t < T; t += gridDim.y) {
        Elem *x = &out[(size_t)t * OC + o];
        store_out(x, load_f(x) + bias[o]);
    }
}
template <class Elem> static void add_bias(Elem *out, const float *bias, int T, int OC) {
    static const std::string name = kernel_name("add_bias_kernel", {elem_name<Elem>()});
    profile_next_bytes(2.0 * sizeof(Elem) * T * OC + 4.0 * OC);
    LAUNCH_AS(name.c_str(), add_bias_kernel<Elem>, row_grid(OC, T, 256), 256, 0, out, bias, T, OC);
}

/* dbias[o] += sum_t dout[t,o]: 32 columns per block, 8 row slices summed per column, then combined. */
__global__ void bias_backward_kernel(float *dbias, const float *dout, int T, int OC) {
    __shared__ float partial[8][33];
    int col = blockIdx.x * 32 + threadIdx.x, slice = threadIdx.y;
    float sum = 0.0f;
    if (col < OC)
        for (int t = slice; t < T; t += 8) sum += dout[(size_t)t * OC + col];
    partial[slice][threadIdx.x] = sum;
    __syncthreads();
    if (slice == 0 && col < OC) {
        for (int s = 1; s < 8; s++) sum += partial[s][threadIdx.x];
        dbias[col] += sum;
    }
}

static void bias_backward(float *dbias, const float *dout, int T, int OC) {
    profile_next_bytes(4.0 * T * OC + 8.0 * OC);
    LAUNCH(bias_backward_kernel, ceil_div(OC, 32), dim3(32, 8), 0, dbias, dout, T, OC);
}

void cuda_matmul(float *out, const float *in, const float *weight, const float *bias, int T, int IC, int OC) {
    const float one = 1.0f, zero = 0.0f;
    if (T == 0 || OC == 0) return;
    {
        ProfileScope profile("cublasSgemm TN", OC, T, IC, 4, 4, false);
        CUBLAS_CHECK(
            cublasSgemm(cuda_cublas(), CUBLAS_OP_T, CUBLAS_OP_N, OC, T, IC, &one, weight, IC, in, IC, &zero, out, OC));
    }
    if (bias) add_bias(out, bias, T, OC);
}

void cuda_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *in,
                          const float *weight, int T, int IC, int OC) {
    const float one = 1.0f;
    if (T == 0 || OC == 0) return;
    /* dinp^T[IC,T] += W^T[IC,OC] * dout^T[OC,T] */
    if (dinp) {
        ProfileScope profile("cublasSgemm NN", IC, T, OC, 4, 4, true);
        CUBLAS_CHECK(cublasSgemm(cuda_cublas(), CUBLAS_OP_N, CUBLAS_OP_N, IC, T, OC, &one, weight, IC, dout, OC, &one,
                                 dinp, IC));
    }
    /* dweight^T[IC,OC] += in^T[IC,T] * dout[T,OC] */
    if (dweight) {
        ProfileScope profile("cublasSgemm NT", IC, OC, T, 4, 4, true);
        CUBLAS_CHECK(
            cublasSgemm(cuda_cublas(), CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, T, &one, in, IC, dout, OC, &one, dweight, IC));
    }
    if (dbias) bias_backward(dbias, dout, T, OC);
}

/* --- bf16 weights on the tensor cores: cuBLASLt, bf16 A/B, fp32 or bf16 C/D, fp32 accumulation --- */

/* matmul_bf16's fp32 input rounded before its GEMM (the base's lm_head on the final norm's rows); the buffer only
 * grows, so after the first step of a run no allocation happens here */
static const uint16_t *rounded_input(const float *x, size_t n) {
    static uint16_t *buffer;
    static size_t elems;
    if (n > elems) {
        backend_cuda()->free(buffer);
        buffer = (uint16_t *)backend_cuda()->alloc(sizeof(uint16_t) * n);
        elems = n;
    }
    cuda_to_bf16(buffer, x, n);
    return buffer;
}

static const size_t kLtWorkspaceBytes = 32u << 20; /* what cuBLASLt's faster kernels ask for on sm_90 */

/* A GEMM shape's cuBLASLt descriptors and the heuristic's algorithms, best first, made once: building them and
 * asking the heuristic costs tens of microseconds, as much as a decoding step's small GEMMs themselves. An algorithm
 * that cublasLtMatmul refuses (a driver or library that disagrees with its own heuristic) is dropped for the next. */
static const int kLtAlgorithms = 8;
struct GemmPlan {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algos[kLtAlgorithms];
    int n_algos, chosen;
    bool tuned;
};
/* ops, m, n, k, lda, ldb, ldc, C's type, and the alignment of A, B and C (the algorithm is chosen for it) */
typedef std::tuple<int, int, int, int, int, int, int, int, int, uint32_t, uint32_t, uint32_t> GemmKey;

/* the largest power of two up to 256 that divides the address: cuBLASLt assumes 256 unless told less, and an
 * algorithm picked for 256-byte aligned operands fails on a pointer into the middle of a tensor */
static uint32_t alignment(const void *ptr) {
    uint32_t a = 256;
    while (a > 1 && (uintptr_t)ptr % a != 0) a /= 2;
    return a;
}

static GemmPlan &gemm_plan(cublasOperation_t op_a, cublasOperation_t op_b, int m, int n, int k, int lda, int ldb,
                           int ldc, cudaDataType c_type, uint32_t align_a, uint32_t align_b, uint32_t align_c) {
    static std::map<GemmKey, GemmPlan> plans;
    GemmKey key(op_a, op_b, m, n, k, lda, ldb, ldc, c_type, align_a, align_b, align_c);
    auto found = plans.find(key);
    if (found != plans.end()) return found->second;
    GemmPlan p;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
    /* a layout describes the matrix as stored, before op() */
    CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, op_a == CUBLAS_OP_N ? m : k, op_a == CUBLAS_OP_N ? k : m, lda));
    CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, op_b == CUBLAS_OP_N ? k : n, op_b == CUBLAS_OP_N ? n : k, ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, c_type, m, n, ldc));
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &kLtWorkspaceBytes, sizeof kLtWorkspaceBytes));
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c}, /* D is C (in place) */
    };
    for (const auto &al : aligns)
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, al.first, &al.second, sizeof al.second));
    cublasLtMatmulHeuristicResult_t heuristic[kLtAlgorithms];
    p.n_algos = 0, p.chosen = 0, p.tuned = false;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(cuda_cublaslt(), p.desc, p.a, p.b, p.c, p.c, pref, kLtAlgorithms,
                                                heuristic, &p.n_algos));
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    if (p.n_algos == 0) fatal("cublasLt: no bf16 GEMM algorithm for m=%d n=%d k=%d", m, n, k);
    for (int i = 0; i < p.n_algos; i++) p.algos[i] = heuristic[i].algo;
    return plans.emplace(key, p).first->second;
}

/* --gemm-tune: a shape's candidates timed at its first use (cuda_set_gemm_tune) */
static bool tune_gemms;
static CudaGemmTuning tuning;
void cuda_set_gemm_tune(int on) { tune_gemms = on != 0; }
extern "C" CudaGemmTuning cuda_gemm_tuning(void) { return tuning; }

/* Each of the heuristic's algorithms timed on the shape's own operands (a warm-up, then the fastest of 3 runs) into a
 * scratch output outside the memory plan's arena, so that an accumulating GEMM's C is not touched; the plan then
 * tries them fastest first, without those that were refused. A scratch output that does not fit leaves the
 * heuristic's order. */
static void tune_plan(GemmPlan &p, int m, int n, int k, const uint16_t *A, const uint16_t *B, size_t c_elem, int ldc,
                      void *workspace) {
    p.tuned = true;
    void *C = NULL;
    size_t bytes = c_elem * (size_t)ldc * (size_t)n;
    if (cudaMalloc(&C, bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        log_warn("--gemm-tune: no room for the %.1f MiB scratch output of the GEMM m=%d n=%d k=%d; the heuristic's "
                 "order is kept",
                 (double)bytes / (1 << 20), m, n, k);
        return;
    }
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    const float one = 1.0f, zero = 0.0f;
    float best[kLtAlgorithms];
    int order[kLtAlgorithms], kept = 0;
    for (int i = 0; i < p.n_algos; i++) {
        float fastest = 0;
        bool refused = false;
        for (int run = 0; run < 4 && !refused; run++) {
            CUDA_CHECK(cudaEventRecord(start, cuda_stream()));
            refused = cublasLtMatmul(cuda_cublaslt(), p.desc, &one, A, p.a, B, p.b, &zero, C, p.c, C, p.c, &p.algos[i],
                                     workspace, kLtWorkspaceBytes, cuda_stream()) != CUBLAS_STATUS_SUCCESS;
            CUDA_CHECK(cudaEventRecord(stop, cuda_stream()));
            CUDA_CHECK(cudaEventSynchronize(stop));
            float ms;
            CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
            if (run == 1 || (run > 1 && ms < fastest)) fastest = ms; /* run 0 warms up */
        }
        if (refused) continue;
        int at = kept++; /* insertion by time, ties to the heuristic's order */
        for (; at > 0 && fastest < best[at - 1]; at--) best[at] = best[at - 1], order[at] = order[at - 1];
        best[at] = fastest, order[at] = i;
    }
    CUDA_CHECK(cudaEventDestroy(start));
    CUDA_CHECK(cudaEventDestroy(stop));
    CUDA_CHECK(cudaFree(C));
    if (kept == 0) return; /* every one refused: the call itself reports it */
    float first = -1;      /* the heuristic's first, when it ran */
    for (int i = 0; i < kept; i++)
        if (order[i] == 0) first = best[i];
    cublasLtMatmulAlgo_t algos[kLtAlgorithms];
    for (int i = 0; i < kept; i++) algos[i] = p.algos[order[i]];
    for (int i = 0; i < kept; i++) p.algos[i] = algos[i];
    p.n_algos = kept, p.chosen = 0;
    tuning.shapes++;
    if (order[0] != 0) tuning.changed++;
    if (order[0] != 0)
        log_info("--gemm-tune: GEMM m=%d n=%d k=%d: algorithm %d of the heuristic's %d, %.3f ms (its first: %s%.3f ms)",
                 m, n, k, order[0] + 1, kept, best[0], first < 0 ? "refused, " : "", first < 0 ? 0.0f : first);
    else
        log_debug("--gemm-tune: GEMM m=%d n=%d k=%d: the heuristic's first is the fastest of %d (%.3f ms)", m, n, k,
                  kept, best[0]);
}

/* Column-major C[m,n] = op(A)[m,k] op(B)[k,n] + beta C, as cublasSgemm's arguments; A and B bf16, C fp32 or bf16
 * (c_type). */
static void gemm_bf16(cublasOperation_t op_a, cublasOperation_t op_b, int m, int n, int k, const uint16_t *A, int lda,
                      const uint16_t *B, int ldb, float beta, void *C, cudaDataType c_type, int ldc) {
    static void *workspace = NULL;
    if (!workspace) workspace = backend_cuda()->alloc(kLtWorkspaceBytes);
    GemmPlan &p = gemm_plan(op_a, op_b, m, n, k, lda, ldb, ldc, c_type, alignment(A), alignment(B), alignment(C));
    if (tune_gemms && !p.tuned) tune_plan(p, m, n, k, A, B, c_type == CUDA_R_16BF ? 2 : 4, ldc, workspace);
    const float one = 1.0f;
    static const char *const kinds[2][2] = {{"cublasLt bf16 NN", "cublasLt bf16 NT"},
                                            {"cublasLt bf16 TN", "cublasLt bf16 TT"}};
    ProfileScope profile(kinds[op_a == CUBLAS_OP_T][op_b == CUBLAS_OP_T], m, n, k, 2, c_type == CUDA_R_16BF ? 2 : 4,
                         beta != 0.0f);
    for (;;) {
        cublasStatus_t st = cublasLtMatmul(cuda_cublaslt(), p.desc, &one, A, p.a, B, p.b, &beta, C, p.c, C, p.c,
                                           &p.algos[p.chosen], workspace, kLtWorkspaceBytes, cuda_stream());
        if (st == CUBLAS_STATUS_SUCCESS) break;
        /* a refusal happens before any work: the next algorithm computes the same product */
        if (st != CUBLAS_STATUS_NOT_SUPPORTED && st != CUBLAS_STATUS_INVALID_VALUE &&
            st != CUBLAS_STATUS_EXECUTION_FAILED)
            fatal("cublasLt: bf16 GEMM m=%d n=%d k=%d: %s", m, n, k, cublasGetStatusString(st));
        if (p.chosen + 1 >= p.n_algos)
            fatal("cublasLt: bf16 GEMM m=%d n=%d k=%d: all %d algorithms of the heuristic refused (last: %s)", m, n, k,
                  p.n_algos, cublasGetStatusString(st));
        static int warned;
        if (!warned++)
            log_warn("cublasLt: algorithm %d of %d refused for the bf16 GEMM m=%d n=%d k=%d (%s); using the next "
                     "(further refusals are not reported)",
                     p.chosen + 1, p.n_algos, m, n, k, cublasGetStatusString(st));
        p.chosen++;
    }
    if (cuda_sync_debug()) cuda_check_after(kinds[op_a == CUBLAS_OP_T][op_b == CUBLAS_OP_T]);
}

void cuda_matmul_bf16_in(float *out, const uint16_t *in, const uint16_t *weight, const float *bias, int T, int IC,
                         int OC, int accumulate) {
    if (T == 0 || OC == 0) return;
    gemm_bf16(CUBLAS_OP_T, CUBLAS_OP_N, OC, T, IC, weight, IC, in, IC, accumulate ? 1.0f : 0.0f, out, CUDA_R_32F, OC);
    if (bias) add_bias(out, bias, T, OC);
}

void cuda_matmul_bf16_out(uint16_t *out, const uint16_t *in, const uint16_t *weight, const float *bias, int T, int IC,
                          int OC) {
    if (T == 0 || OC == 0) return;
    gemm_bf16(CUBLAS_OP_T, CUBLAS_OP_N, OC, T, IC, weight, IC, in, IC, 0.0f, out, CUDA_R_16BF, OC);
    if (bias) add_bias(out, bias, T, OC);
}

void cuda_matmul_bf16(float *out, const float *in, const uint16_t *weight, const float *bias, int T, int IC, int OC) {
    if (T == 0 || OC == 0) return;
    cuda_matmul_bf16_in(out, rounded_input(in, (size_t)T * IC), weight, bias, T, IC, OC, 0);
}

/* The two gradient GEMMs of out = in @ W^T on bf16 operands, accumulated into fp32: dinp += g @ W and
 * dweight += g^T @ x (either may be NULL; x is only read for dweight). */
static void backward_gemms_bf16(float *dinp, float *dweight, const uint16_t *g, const uint16_t *x,
                                const uint16_t *weight, int T, int IC, int OC) {
    if (dinp) gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_N, IC, T, OC, weight, IC, g, OC, 1.0f, dinp, CUDA_R_32F, IC);
    if (dweight) gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, T, x, IC, g, OC, 1.0f, dweight, CUDA_R_32F, IC);
}

void cuda_matmul_backward_bf16(float *dinp, float *dweight, float *dbias, const float *dout, const uint16_t *dout_bf16,
                               const uint16_t *in_bf16, const uint16_t *weight, int T, int IC, int OC) {
    if (T == 0 || OC == 0) return;
    backward_gemms_bf16(dinp, dweight, dout_bf16, in_bf16, weight, T, IC, OC);
    if (dbias) bias_backward(dbias, dout, T, OC);
}

/* The logits leave their GEMM in bf16 and the softmax writes the bf16 gradient over them, which both gradient GEMMs
 * read: per logit 2 bytes written, 4 read and 2 written again, against fp32 logits' 4, 8 and 2 */
void cuda_classifier_bf16(float *logits, float *losses, int32_t *ranks, XentTargets targets, const uint16_t *x,
                          const uint16_t *weight, float *dx, float *dweight, int rows, int IC, int V, float dscale) {
    if (rows == 0) return;
    uint16_t *logits_bf16 = (uint16_t *)logits;
    cuda_matmul_bf16_out(logits_bf16, x, weight, NULL, rows, IC, V);
    int grads = dx || dweight;
    cuda_softmax_xent_bf16(logits_bf16, grads, losses, ranks, targets, rows, V, dscale);
    if (grads) backward_gemms_bf16(dx, dweight, logits_bf16, x, weight, rows, IC, V);
}
