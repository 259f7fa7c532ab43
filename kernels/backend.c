/* Backend selection for the --device flag, and the peak rates that MFU is reported against. */
#include <cblas.h>
#include <omp.h>
#include <string.h>

#include "../common/common.h"
#include "cpu/cpu_ops.h"
#include "ops.h"

void backend_check(const Backend *b) {
    const char *name = b->name ? b->name : "(unnamed)";
#define CHECK_MEMBER(member)                                                                                           \
    if (!b->member) fatal("backend %s: its table leaves %s unset (kernels/ops.h, kernels/ops.def)", name, #member);
    CHECK_MEMBER(alloc)
    CHECK_MEMBER(free)
    CHECK_MEMBER(upload)
    CHECK_MEMBER(download)
    CHECK_MEMBER(download_queued)
    CHECK_MEMBER(copy)
    CHECK_MEMBER(reserve)
    CHECK_MEMBER(peak_bytes)
    CHECK_MEMBER(memory_available)
#define OP(ret, op, params, args) CHECK_MEMBER(op)
#include "ops.def"
#undef OP
#undef CHECK_MEMBER
}

const Backend *backend_by_name(const char *name) {
    if (!strcmp(name, "cpu")) return backend_cpu();
    if (!strcmp(name, "cuda")) {
#ifdef MEDUSA_CUDA
        return backend_cuda();
#else
        fatal("--device cuda: this build has no CUDA backend (nvcc not found at build time)");
#endif
    }
    fatal("--device %s: unknown device (expected cpu or cuda)", name);
}

double gpu_bf16_peak_flops(const char *device_name) {
    /* part: matched in the name, first match wins: the H100, H200 and L40 variants before the plain names */
    static const struct {
        const char *part;
        double tflops;
    } table[] = {
        {"A100", 312},     {"A800", 312}, {"H100 PCIe", 756}, {"H100 NVL", 835}, {"H100", 989}, {"H800", 989},
        {"H200 NVL", 835}, {"H200", 989}, {"L40S", 362},      {"L40", 181},      {"L4", 121},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strstr(device_name, table[i].part)) return table[i].tflops * 1e12;
    return 0;
}

int backend_prefers_native(const Backend *b) { return b->is_host && cpu_matmul_q_simd(); }

void set_threads(int threads) {
    if (threads <= 0) return;
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
}
