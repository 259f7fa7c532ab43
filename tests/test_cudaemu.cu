/* The CUDA emulator's own checks (tests/cudaemu): each strictness the op tests rely on is shown to catch the
 * mistake it is there for, on a small kernel that makes it. A mistake that aborts the emulator runs in a child
 * process (this program again, with the case's name), whose exit status and message are checked.
 * Compiled like kernels/cuda (g++ -x c++ -include tests/cudaemu/cuda_emu.h). */
#include <stdlib.h>
#include <sys/wait.h>

#include <string>

#include "../kernels/cuda/cuda_common.cuh"
extern "C" {
#include "test.h"
}

static const int kN = 64;

/* a block of kN threads: out[t] = in[t] */
__global__ void copy_kernel(float *out, const float *in) { out[threadIdx.x] = in[threadIdx.x]; }

/* a block of kN threads: out[t] = v */
__global__ void fill_kernel(float *out, float v) { out[threadIdx.x] = v; }

/* Each block reads what the block before it wrote in the same launch: a race between blocks. */
__global__ void chain_kernel(int *x) {
    int b = blockIdx.x;
    if (threadIdx.x == 0) x[b] = b == 0 ? 1 : x[b - 1] + 1;
}

/* Each thread reads what the next thread writes, without a barrier between: a race between threads. */
__global__ void neighbour_kernel(int *out) {
    __shared__ int s[kN];
    int t = threadIdx.x;
    s[t] = -1;
    __syncthreads();
    s[t] = t;
    out[t] = s[(t + 1) % kN];
}

/* One thread stages 4 floats with cp.async and reads the tile before and after waiting for it. */
__global__ void early_read_kernel(float *out, const float *in) {
    __shared__ __align__(16) float tile[4];
    cp_async16(tile, in, true);
    cp_async_commit();
    out[0] = tile[0];
    cp_async_wait_group<0>();
    out[1] = tile[0];
}

__global__ void divergent_barrier_kernel(float *out) {
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 0.0f;
}

__global__ void shuffle_after_exit_kernel(float *out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (float)threadIdx.x, 1);
}

/* Block 0 fills a shared tile, every block reads it: the other blocks read shared memory nobody wrote in their block
 * (on a GPU, what an earlier block left). A template, whose statics the emulator finds by their symbols too. */
template <int N> __global__ void shared_unwritten_kernel(float *out) {
    __shared__ float tile[N];
    if (blockIdx.x == 0) tile[threadIdx.x] = 1.0f;
    __syncthreads();
    out[blockIdx.x * N + threadIdx.x] = tile[threadIdx.x];
}

/* The tensor-core fragment layouts as CuTe writes them (NVIDIA/cutlass include/cute/atom/mma_traits_sm80.hpp:
 * SM80_16x8x16_F32BF16BF16F32_TN; copy_traits_sm75.hpp: SM75_U32x4_LDSM_N, SM75_U16x8_LDSM_T), as (lane, value) ->
 * offset maps: a second reading of the layouts, apart from the PTX ISA's tables the emulator follows, so that the
 * attention kernel's fragments are not checked only against the same reading they were built from. */
__device__ int cute_mma_a(int lane, int v) { /* m + 16 k of A [16 x 16] */
    return 32 * (lane % 4) + lane / 4 + 16 * (v % 2) + 8 * (v / 2 % 2) + 128 * (v / 4);
}
__device__ int cute_mma_b(int lane, int v) {
    return 16 * (lane % 4) + lane / 4 + 8 * (v % 2) + 64 * (v / 2);
} /* n + 8 k */
__device__ int cute_mma_c(int lane, int v) {
    return 32 * (lane % 4) + lane / 4 + 16 * (v % 2) + 8 * (v / 2);
} /* m + 16 n */
/* the bit of the four 8 x 8 b16 matrices (1024 bits each, rows of 128) that register r, half h of a lane holds */
static int cute_ldsm_bit(int lane, int r, int h, bool trans) {
    return trans ? 256 * (lane % 4) + 16 * (lane / 4) + 128 * h + 1024 * r : 32 * lane + 1024 * r + 16 * h;
}

/* d = c + a b for row-major a [16 x 16], b [16 x 8] (k x n), c and d [16 x 8], through fragments laid out as CuTe's */
__global__ void mma_layout_kernel(float *d, const float *a, const float *b, const float *c) {
    int lane = threadIdx.x;
    uint32_t fa[4] = {0, 0, 0, 0}, fb[2] = {0, 0};
    float acc[4];
    for (int v = 0; v < 8; v++) {
        int mk = cute_mma_a(lane, v);
        fa[v / 2] |= (uint32_t)f32_to_bf16(a[mk % 16 * 16 + mk / 16]) << (16 * (v % 2));
    }
    for (int v = 0; v < 4; v++) {
        int nk = cute_mma_b(lane, v);
        fb[v / 2] |= (uint32_t)f32_to_bf16(b[nk / 8 * 8 + nk % 8]) << (16 * (v % 2));
    }
    for (int v = 0; v < 4; v++) acc[v] = c[cute_mma_c(lane, v) % 16 * 8 + cute_mma_c(lane, v) / 16];
    mma_bf16_16x8x16(acc, fa, fb);
    for (int v = 0; v < 4; v++) d[cute_mma_c(lane, v) % 16 * 8 + cute_mma_c(lane, v) / 16] = acc[v];
}

/* ldmatrix.x4 of four 8 x 8 b16 matrices whose 32 rows lie at the shared-memory rows slot[0..31] of a 64-row tile:
 * lane l posts the address of row l % 8 of matrix l / 8; out[lane * 4 + r] = its register r */
__global__ void ldmatrix_layout_kernel(uint32_t *out, const uint16_t *tile, const int *slot, int trans) {
    __shared__ __align__(16) uint16_t rows[64 * 8];
    int lane = threadIdx.x;
    for (int i = lane; i < 64 * 8; i += 32) rows[i] = tile[i];
    __syncthreads();
    uint32_t r[4];
    ldmatrix_x4(r, &rows[slot[lane] * 8], trans != 0);
    for (int i = 0; i < 4; i++) out[lane * 4 + i] = r[i];
}

/* out[i] = expf(x[i]), out[n + i] = powf(500000, x[i]), out[2n + i] = sinf(2047 x[i]) in a kernel */
__global__ void math_kernel(float *out, const float *x, int n) {
    int i = threadIdx.x;
    if (i >= n) return;
    out[i] = expf(x[i]);
    out[n + i] = powf(500000.0f, x[i]);
    out[2 * n + i] = sinf(2047.0f * x[i]);
}

/* reads one element past the end of `in` */
__global__ void past_end_kernel(float *out, const float *in, int n) { out[0] = in[n]; }

static float *device_floats(int n) {
    float *p = NULL;
    CUDA_CHECK(cudaMalloc(&p, sizeof(float) * n));
    return p;
}

template <typename T> static T *to_device(const T *host, int n) {
    T *p = NULL;
    CUDA_CHECK(cudaMalloc(&p, sizeof(T) * n));
    CUDA_CHECK(cudaMemcpy(p, host, sizeof(T) * n, cudaMemcpyHostToDevice));
    return p;
}

static void check_mma_layout(void) {
    float a[16 * 16], b[16 * 8], c[16 * 8], d[16 * 8];
    srand(7);
    int wrong = 0;
    for (int trial = 0; trial < 8; trial++) {
        for (float &x : a) x = (float)(rand() % 17 - 8);
        for (float &x : b) x = (float)(rand() % 17 - 8);
        for (float &x : c) x = (float)(rand() % 17 - 8);
        float *da = to_device(a, 256), *db = to_device(b, 128), *dc = to_device(c, 128), *dd = device_floats(128);
        LAUNCH(mma_layout_kernel, 1, 32, 0, dd, (const float *)da, (const float *)db, (const float *)dc);
        CUDA_CHECK(cudaMemcpy(d, dd, sizeof d, cudaMemcpyDeviceToHost));
        for (int m = 0; m < 16; m++)
            for (int n = 0; n < 8; n++) {
                float want = c[m * 8 + n];
                for (int k = 0; k < 16; k++) want += a[m * 16 + k] * b[k * 8 + n]; /* exact: small integers */
                wrong += d[m * 8 + n] != want;
            }
        for (float *p : {da, db, dc, dd}) CUDA_CHECK(cudaFree(p));
    }
    CHECK(wrong == 0, "mma.m16n8k16 with fragments in CuTe's SM80 layouts gives c + a b: %d of %d outputs wrong", wrong,
          8 * 128);
}

static void check_ldmatrix_layout(bool trans) {
    uint16_t tile[64 * 8] = {0};
    int slot[64];
    for (int i = 0; i < 64; i++) slot[i] = i;
    for (int i = 63; i > 0; i--) std::swap(slot[i], slot[rand() % (i + 1)]);
    for (int i = 0; i < 32; i++) /* row i: row i % 8 of matrix i / 8, at a scattered 16-byte slot */
        for (int col = 0; col < 8; col++) tile[slot[i] * 8 + col] = (uint16_t)(1 + i * 8 + col);
    uint16_t *dtile = to_device(tile, 64 * 8);
    int *dslot = to_device(slot, 32);
    uint32_t *dout = NULL, out[32 * 4];
    CUDA_CHECK(cudaMalloc(&dout, sizeof out));
    LAUNCH(ldmatrix_layout_kernel, 1, 32, 0, dout, (const uint16_t *)dtile, (const int *)dslot, (int)trans);
    CUDA_CHECK(cudaMemcpy(out, dout, sizeof out, cudaMemcpyDeviceToHost));
    int wrong = 0;
    for (int lane = 0; lane < 32; lane++)
        for (int r = 0; r < 4; r++)
            for (int h = 0; h < 2; h++) {
                int bit = cute_ldsm_bit(lane, r, h, trans); /* matrix bit / 1024, row bit % 1024 / 128, column */
                int want = 1 + (bit / 1024 * 8 + bit % 1024 / 128) * 8 + bit % 128 / 16;
                wrong += (uint16_t)(out[lane * 4 + r] >> (16 * h)) != want;
            }
    CHECK(wrong == 0, "ldmatrix.x4%s gives each lane the elements of CuTe's layout: %d of 256 wrong",
          trans ? ".trans" : "", wrong);
    CUDA_CHECK(cudaFree(dtile));
    CUDA_CHECK(cudaFree(dslot));
    CUDA_CHECK(cudaFree(dout));
}

/* the distance between two floats of one sign in units in the last place */
static int ulps_apart(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    return abs(ia - ib);
}

/* The cases run in a child process; each prints what the parent checks. */
static int run_case(const char *name) {
    float *a = device_floats(kN), *b = device_floats(kN);
    float host[kN];
    int ints[kN];
    if (!strcmp(name, "chain") || !strcmp(name, "neighbour")) {
        int *x = NULL;
        CUDA_CHECK(cudaMalloc(&x, sizeof ints));
        CUDA_CHECK(cudaMemset(x, 0, sizeof ints));
        if (!strcmp(name, "chain")) LAUNCH(chain_kernel, kN, 32, 0, x);
        else LAUNCH(neighbour_kernel, 1, kN, 0, x);
        CUDA_CHECK(cudaMemcpy(ints, x, sizeof ints, cudaMemcpyDeviceToHost));
        printf("result %d %d\n", ints[0], ints[kN - 2]);
    } else if (!strcmp(name, "divergent_barrier")) {
        LAUNCH(divergent_barrier_kernel, 1, kN, 0, a);
    } else if (!strcmp(name, "shuffle_after_exit")) {
        LAUNCH(shuffle_after_exit_kernel, 1, 32, 0, a);
    } else if (!strcmp(name, "host_touch")) {
        printf("%f\n", a[0]);
    } else if (!strcmp(name, "past_end")) {
        float *in = device_floats(kN - 1);
        CUDA_CHECK(cudaMemset(in, 0, sizeof(float) * (kN - 1)));
        LAUNCH(past_end_kernel, 1, 1, 0, b, in, kN - 1);
        CUDA_CHECK(cudaMemcpy(host, b, sizeof(float), cudaMemcpyDeviceToHost));
        printf("result %f\n", host[0]);
    } else if (!strcmp(name, "device_math")) {
        /* the largest distance in ulps of each function from glibc's, on the device and on the host */
        for (int i = 0; i < kN; i++) host[i] = -1.0f + 2.0f * (float)i / kN;
        CUDA_CHECK(cudaMemcpy(a, host, sizeof host, cudaMemcpyHostToDevice));
        float *out = device_floats(3 * kN), got[3 * kN];
        LAUNCH(math_kernel, 1, kN, 0, out, (const float *)a, kN);
        CUDA_CHECK(cudaMemcpy(got, out, sizeof got, cudaMemcpyDeviceToHost));
        int device[3] = {0, 0, 0}, on_host = 0;
        for (int i = 0; i < kN; i++) {
            float want[3] = {(expf)(host[i]), (powf)(500000.0f, host[i]), (sinf)(2047.0f * host[i])};
            for (int f = 0; f < 3; f++) device[f] = std::max(device[f], ulps_apart(got[f * kN + i], want[f]));
            on_host = std::max(on_host, ulps_apart(powf(500000.0f, host[i]), want[1]));
        }
        printf("result %d %d %d %d\n", device[0], device[1], device[2], on_host);
    } else {
        fprintf(stderr, "test_cudaemu: unknown case %s\n", name);
        return 2;
    }
    return 0;
}

/* Runs this program on case NAME with the environment's assignments ENV (NULL: none; threads first to last); its
 * output, stderr too, into *out. */
static int child(const char *self, const char *name, const char *env, std::string *out) {
    std::string cmd = std::string("CUDA_EMU_ORDER=forward CUDA_EMU_MATH= ") + (env ? env : "") +
                      " ASAN_OPTIONS=detect_leaks=0 '" + self + "' " + name + " 2>&1";
    FILE *p = popen(cmd.c_str(), "r");
    if (!p) fatal("test_cudaemu: cannot run %s", self);
    char line[1024];
    out->clear();
    while (fgets(line, sizeof line, p)) *out += line;
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static bool has(const std::string &s, const char *needle) { return s.find(needle) != std::string::npos; }
static std::string first_line(const std::string &s) { return s.substr(0, s.find('\n')); }
/* the line of a case's output after `tag` (other lines: the sanitizers' notes) */
static std::string line_after(const std::string &s, const char *tag) {
    size_t at = s.find(tag);
    return at == std::string::npos ? "(none)" : first_line(s.substr(at + strlen(tag)));
}
static std::string result(const std::string &s) { return line_after(s, "result "); }
static std::string report(const std::string &s) { return line_after(s, "cuda_emu: "); }

/* Stream capture as kernels/cuda/backend_cuda.cu's run_step uses it: captured work runs only at the graph's launch,
 * with the arguments it was captured with; an update with a graph of the same operations takes the new arguments, one
 * with another operation is refused; a synchronous copy during a capture fails and invalidates it. */
static void check_graphs(void) {
    float *x = device_floats(kN), host[kN];
    cudaStream_t s = cuda_stream();
    auto capture = [&](float v, bool memset_too) {
        cudaGraph_t g;
        CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        if (memset_too) CUDA_CHECK(cudaMemsetAsync(x, 0, sizeof(float), s));
        LAUNCH(fill_kernel, 1, kN, 0, x, v);
        CUDA_CHECK(cudaStreamEndCapture(s, &g));
        return g;
    };
    auto first = [&] {
        CUDA_CHECK(cudaMemcpy(host, x, sizeof host, cudaMemcpyDeviceToHost));
        return host[0];
    };
    LAUNCH(fill_kernel, 1, kN, 0, x, 1.0f);
    cudaGraph_t g = capture(2.0f, false);
    float before = first();
    cudaGraphExec_t exec;
    CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
    CUDA_CHECK(cudaGraphLaunch(exec, s));
    float launched = first();
    cudaGraph_t same = capture(3.0f, false), other = capture(4.0f, true);
    cudaGraphExecUpdateResultInfo info, refused;
    cudaError_t up = cudaGraphExecUpdate(exec, same, &info);
    CUDA_CHECK(cudaGraphLaunch(exec, s));
    float updated = first();
    cudaError_t down = cudaGraphExecUpdate(exec, other, &refused);
    (void)cudaGetLastError();
    CHECK(before == 1.0f && launched == 2.0f && up == cudaSuccess && updated == 3.0f &&
              down == cudaErrorGraphExecUpdateFailure && refused.result == cudaGraphExecUpdateErrorTopologyChanged,
          "graphs: a captured launch runs at the graph's launch (%g before, %g after), an update with the same "
          "operations takes new arguments (%g), one with another operation is refused",
          before, launched, updated);
    for (cudaGraph_t each : {g, same, other}) CUDA_CHECK(cudaGraphDestroy(each));
    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    fflush(stderr);
    cudaError_t copy = cudaMemcpy(host, x, sizeof host, cudaMemcpyDeviceToHost);
    cudaGraph_t invalid = NULL;
    cudaError_t end = cudaStreamEndCapture(s, &invalid);
    (void)cudaGetLastError();
    CHECK(copy == cudaErrorStreamCaptureUnsupported && end == cudaErrorStreamCaptureInvalidated && !invalid,
          "graphs: a synchronous copy during a capture fails (%s) and invalidates the capture (%s)",
          cudaGetErrorString(copy), cudaGetErrorString(end));
    CUDA_CHECK(cudaFree(x));
}

/* A non-blocking stream's copy runs as late as CUDA allows (kernels/cuda/backend_cuda.cu's upload_ahead): a kernel
 * that reads its destination without waiting for it reads the bytes from before it; after the backend's stream waits
 * for an event recorded behind it, the copy's bytes; a copy issued after that event stays held until it too is waited
 * for (or the host synchronises). */
static void check_held_stream(void) {
    float *x = device_floats(kN), *out = device_floats(kN), host[kN], two[kN], three[kN];
    for (int i = 0; i < kN; i++) two[i] = 2.0f, three[i] = 3.0f;
    cudaStream_t side;
    cudaEvent_t copied;
    CUDA_CHECK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&copied, cudaEventDisableTiming));
    auto read = [&] {
        LAUNCH(copy_kernel, 1, kN, 0, out, x);
        CUDA_CHECK(cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost));
        return host[0];
    };
    LAUNCH(fill_kernel, 1, kN, 0, x, 1.0f);
    CUDA_CHECK(cudaMemcpyAsync(x, two, sizeof two, cudaMemcpyHostToDevice, side));
    float unwaited = read();
    CUDA_CHECK(cudaEventRecord(copied, side));
    CUDA_CHECK(cudaMemcpyAsync(x, three, sizeof three, cudaMemcpyHostToDevice, side));
    CUDA_CHECK(cudaStreamWaitEvent(cuda_stream(), copied, 0));
    float waited = read();
    CUDA_CHECK(cudaStreamSynchronize(side));
    float synchronised = read();
    CHECK(unwaited == 1.0f && waited == 2.0f && synchronised == 3.0f,
          "non-blocking stream: a copy not waited for is not seen (%g), one waited for is (%g), one after the awaited "
          "event only once the stream is synchronised (%g)",
          unwaited, waited, synchronised);
    CUDA_CHECK(cudaEventDestroy(copied));
    CUDA_CHECK(cudaStreamDestroy(side));
    CUDA_CHECK(cudaFree(x));
    CUDA_CHECK(cudaFree(out));
}

int main(int argc, char **argv) {
    if (argc > 1) return run_case(argv[1]);
    check_graphs();
    check_held_stream();
    const char *self = argv[0];
    float host[kN], in_host[kN];
    for (int i = 0; i < kN; i++) in_host[i] = (float)i + 0.5f;

    /* device memory nobody wrote reads as NaN, not the zeros of a fresh host mapping */
    float *unwritten = device_floats(kN), *out = device_floats(kN), *in = device_floats(kN);
    LAUNCH(copy_kernel, 1, kN, 0, out, unwritten);
    CUDA_CHECK(cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost));
    int nans = 0;
    for (int i = 0; i < kN; i++) nans += isnan(host[i]);
    CHECK(nans == kN, "device memory nobody wrote reads as NaN (%d of %d values)", nans, kN);
    CUDA_CHECK(cudaFree(unwritten));

    /* a cp.async destination read before its group is waited for reads NaN; after, the copied value */
    CUDA_CHECK(cudaMemcpy(in, in_host, sizeof in_host, cudaMemcpyHostToDevice));
    LAUNCH(early_read_kernel, 1, 1, 0, out, in);
    CUDA_CHECK(cudaMemcpy(host, out, 2 * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(isnan(host[0]) && host[1] == in_host[0], "cp.async: read before the wait %f, after %f (want NaN, then %g)",
          host[0], host[1], in_host[0]);

    /* mma.m16n8k16 and ldmatrix.x4 (plain, transposed) against CuTe's layouts: exact on small integers */
    check_mma_layout();
    check_ldmatrix_layout(false);
    check_ldmatrix_layout(true);

    /* shared memory a block did not write reads as NaN (not what the previous block left) */
    LAUNCH(shared_unwritten_kernel<kN / 2>, 2, kN / 2, 0, out);
    CUDA_CHECK(cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost));
    int ones = 0;
    nans = 0;
    for (int i = 0; i < kN / 2; i++) ones += host[i] == 1.0f;
    for (int i = kN / 2; i < kN; i++) nans += isnan(host[i]);
    CHECK(ones == kN / 2 && nans == kN / 2,
          "__shared__ memory: the block that wrote it reads %d/%d ones, the next block NaN where it did not write "
          "(%d/%d)",
          ones, kN / 2, nans, kN / 2);

    /* an invalid launch configuration is a launch error, as on a GPU */
    cuda_emu_launch("copy_kernel", 1, 1025, 0, copy_kernel, out, (const float *)in);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "a block of 1025 threads is refused at launch");

    /* races show as a difference between the two orders the emulator runs threads and blocks in */
    std::string fwd, rev;
    child(self, "chain", NULL, &fwd);
    child(self, "chain", "CUDA_EMU_ORDER=reverse", &rev);
    CHECK(result(fwd) == "1 63" && result(rev) == "1 1",
          "a block reading another block's output of the same launch: \"%s\" first to last, \"%s\" last to first",
          result(fwd).c_str(), result(rev).c_str());
    child(self, "neighbour", NULL, &fwd);
    child(self, "neighbour", "CUDA_EMU_ORDER=reverse", &rev);
    CHECK(result(fwd) == "-1 -1" && result(rev) == "1 63",
          "a thread reading another's write without a barrier: \"%s\" first to last, \"%s\" last to first",
          result(fwd).c_str(), result(rev).c_str());

    /* CUDA_EMU_MATH=ulp: a kernel's expf, powf and sinf answer within CUDA's documented errors (2, 8 and 2 ulp) of
     * glibc's, and not always glibc's answer; host code's powf stays glibc's */
    child(self, "device_math", NULL, &fwd);
    child(self, "device_math", "CUDA_EMU_MATH=ulp", &rev);
    int d_exp = -1, d_pow = -1, d_sin = -1, d_host = -1;
    sscanf(result(rev).c_str(), "%d %d %d %d", &d_exp, &d_pow, &d_sin, &d_host);
    CHECK(result(fwd) == "0 0 0 0" && d_exp >= 1 && d_exp <= 2 && d_pow >= 1 && d_pow <= 8 && d_sin >= 1 &&
              d_sin <= 2 && d_host == 0,
          "device math: glibc's answers by default (%s); under CUDA_EMU_MATH=ulp the largest distances in ulps are "
          "expf %d, powf %d, sinf %d, and host code's powf %d",
          result(fwd).c_str(), d_exp, d_pow, d_sin, d_host);

    /* undefined behaviour on a GPU stops the emulator with the kernel named */
    std::string msg;
    int rc = child(self, "divergent_barrier", NULL, &msg);
    CHECK(rc != 0 && has(msg, "divergent_barrier_kernel") && has(msg, "__syncthreads"),
          "a __syncthreads() not reached by every thread is reported: %s", report(msg).c_str());
    rc = child(self, "shuffle_after_exit", NULL, &msg);
    CHECK(rc != 0 && has(msg, "shuffle_after_exit_kernel") && has(msg, "exited"),
          "a shuffle after lanes of the warp exited is reported: %s", report(msg).c_str());
    rc = child(self, "host_touch", NULL, &msg);
    CHECK(rc != 0 && has(msg, "host code touched device memory"),
          "host code reading device memory crashes with a message: %s", report(msg).c_str());
#ifdef __SANITIZE_ADDRESS__
    rc = child(self, "past_end", NULL, &msg);
    CHECK(rc != 0 && has(msg, "ERROR: AddressSanitizer") && has(msg, "past_end_kernel"),
          "under AddressSanitizer a kernel reading past a tensor's end is reported (exit status %d)", rc);
#else
    rc = child(self, "past_end", NULL, &msg);
    CHECK(rc == 0 && result(msg).find("nan") != std::string::npos,
          "without AddressSanitizer a read past a tensor's end reads the NaN of unwritten memory (%s; make "
          "test-asan reports it)",
          result(msg).c_str());
#endif
    return test_summary();
}
