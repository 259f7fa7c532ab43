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
        .copy = cpu_copy,
        .reserve = cpu_reserve,
        .peak_bytes = cpu_peak_bytes,
        .memory_available = cpu_memory_available,
        .embedding = cpu_embedding_forward,
        .rmsnorm = cpu_rmsnorm_forward,
        .matmul = cpu_matmul_forward,
        .rope_qkv = cpu_rope_qkv,
        .attention = cpu_attention_forward,
        .swiglu = cpu_swiglu_forward,
        .residual_add = cpu_residual_add,
        .copy_rows = cpu_copy_rows,
        .fill_zero = cpu_fill_zero,
        .matmul_backward = cpu_matmul_backward,
        .resblock_forward = cpu_resblock_forward,
        .silu_backward = cpu_silu_backward,
        .softmax_xent = cpu_softmax_xent,
        .rank_ids = cpu_rank_ids,
        .softmax_entropy = cpu_softmax_entropy,
        .adamw = cpu_adamw,
        .sum_squares = cpu_sum_squares,
        .matmul_bf16 = cpu_matmul_bf16,
        .matmul_backward_bf16 = cpu_matmul_backward_bf16,
        .classifier_bf16 = cpu_classifier_bf16,
        .matmul_bf16_in = cpu_matmul_bf16_in,
        .matmul_bf16_out = cpu_matmul_bf16_out,
        .rope_qkv_bf16 = cpu_rope_qkv_bf16,
        .rmsnorm_bf16 = cpu_rmsnorm_bf16,
        .swiglu_bf16 = cpu_swiglu_bf16,
        .embedding_bf16 = cpu_embedding_bf16,
        .attention_bf16 = cpu_attention_bf16,
        .top_k = cpu_top_k,
        .to_bf16 = cpu_to_bf16,
    };
    return &cpu;
}
