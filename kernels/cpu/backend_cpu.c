/* The CPU backend's op table: host memory, fp32 reference kernels. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/common.h"
#include "cpu_ops.h"

static void *cpu_alloc(size_t bytes) { return xmalloc(bytes); }
static void cpu_free(void *ptr) { free(ptr); }
static void cpu_copy(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static void cpu_reserve(size_t bytes) { (void)bytes; } /* malloc serves each tensor */
static size_t cpu_peak_bytes(void) { return 0; }
static size_t cpu_memory_available(void) { return (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE); }

const Backend *backend_cpu(void) {
    static const Backend cpu = {
        .name = "cpu",
        .device = "cpu",
        .is_host = 1,
        .prefers_bf16 = 0,
        .default_logits_chunk = 512, /* the CPU's cache wants few rows */
        .alloc = cpu_alloc,
        .free = cpu_free,
        .upload = cpu_copy,
        .download = cpu_copy,
        .download_queued = cpu_copy,
        .copy = cpu_copy,
        .reserve = cpu_reserve,
        .peak_bytes = cpu_peak_bytes,
        .memory_available = cpu_memory_available,
#define OP(ret, op, params, args) .op = cpu_##op,
#include "../ops.def"
#undef OP
    };
    static int checked;
    if (!checked) backend_check(&cpu), checked = 1;
    return &cpu;
}
