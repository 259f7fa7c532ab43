/* The one op interface: every op the model needs, independent of where it runs. The CPU backend
 * (kernels/cpu) is the reference; other backends implement the same table and are tested against it.
 * The ops and their contracts are listed once, in kernels/ops.def. Tensors are row-major arrays in the backend's
 * memory; shapes are given per call. */
#ifndef MEDUSA_OPS_H
#define MEDUSA_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "../common/dtype.h"
#include "math_common.h"

typedef struct Backend Backend;

/* A GPU backend cuts the keys of a few queries over a long cache (decoding, a tree) into up to ATTENTION_SPLIT_MAX
 * slices of at least ATTENTION_SPLIT_MIN_KEYS keys, for (queries x heads) up to ATTENTION_SPLIT_ROWS, and
 * merges their partial softmax states from a scratch of ATTENTION_SPLIT_BYTES(head_dim), which decoding's memory
 * plan counts. */
#define ATTENTION_SPLIT_MAX 16
#define ATTENTION_SPLIT_MIN_KEYS 128
#define ATTENTION_SPLIT_ROWS 4096 /* a 64-node tree over 64 heads */
#define ATTENTION_SPLIT_BYTES(head_dim)                                                                                \
    ((size_t)ATTENTION_SPLIT_MAX * ATTENTION_SPLIT_ROWS * (size_t)((head_dim) + 2) * sizeof(float))

/* What the fused softmax cross-entropy compares each row of logits [T, V] with (backend memory, an entry per row). */
typedef struct {
    /* hard targets: row t's loss is -log softmax(logits)[targets[t]] and its gradient dscale * (softmax -
     * onehot(targets[t])); a row with a negative target has loss 0 and a zero gradient */
    const int32_t *targets;
    /* or soft ones (targets then unused): a teacher's logits [T, V], whose softmax q every row learns; its loss is
     * KL(q || p) = sum_j q_j (log q_j - log p_j) with p = softmax(logits) (a term with q_j = 0 is 0), the cross-entropy
     * with soft targets less q's entropy, and its gradient dscale * (p - q). NULL: hard targets. */
    const float *teacher;
    /* the ids whose ranks the op reports: the targets themselves, or the data's tokens when the targets are another
     * model's (distillation), so that top-k accuracy is measured on the data either way */
    const int32_t *ranked;
} XentTargets;

struct Backend {
    const char *name;
    /* the device in words ("NVIDIA H200"; "cpu"), and its dense bf16 tensor peak in FLOP/s (gpu_bf16_peak_flops of that
     * name; 0 where unknown, and on the CPU) for the MFU of bf16 runs */
    const char *device;
    double peak_bf16_flops;
    /* what callers ask of a backend instead of its name */
    int is_host;              /* its memory is host memory (pointers are usable by the CPU) */
    int prefers_bf16;         /* --precision auto stores the base weights in bf16 here (tensor cores) */
    int default_logits_chunk; /* rows of lm_head logits computed at once when --logits-chunk is 0 */

    /* memory: hand-written here, not in ops.def, because they are not ops of the model: each backend keeps them private
     * (static), the CPU serves upload, download and copy with one memcpy, and the op test compares ops.def's ops
     * between backends, which these (moving bytes between the host and the backend) are the means of. backend_check
     * verifies them with the ops. */
    void *(*alloc)(size_t bytes);
    void (*free)(void *ptr);
    void (*upload)(void *dst, const void *host_src, size_t bytes);
    void (*download)(void *host_dst, const void *src, size_t bytes);
    /* download without waiting where host_dst is page-locked (alloc_host): queued behind the work, the bytes are there
     * once a later download returns (and later work queued on the backend, an upload from them included, sees them);
     * elsewhere, and on the CPU, download */
    void (*download_queued)(void *host_dst, const void *src, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes); /* within the backend's memory */
    /* the run's planned peak (model/memory_plan.h): a backend with device memory takes it as one allocation
     * up front and serves alloc() from it, so nothing is allocated from the device in the step loop */
    void (*reserve)(size_t bytes);
    /* the most bytes in use at once since the previous call (or start-up), to check the plan against; each
     * call starts a new measurement from what is in use then. 0 where not tracked (the CPU). */
    size_t (*peak_bytes)(void);
    /* bytes a run could still take: free device memory, or the host's physical memory on the CPU */
    size_t (*memory_available)(void);
    /* Host memory for a large buffer that the host uploads from again and again (--cache-hidden's hidden states):
     * page-locked on a GPU, so that an upload from it is a DMA copy queued behind the work before it, and the host does
     * not wait (the source must then stay as it is until the queue has passed the copy: until the next download, which
     * waits for it). NULL (the function) where the backend's memory is the host's; NULL (the result) where the memory
     * cannot be locked. free_host frees it. */
    void *(*alloc_host)(size_t bytes);
    void (*free_host)(void *ptr);
    /* An upload beside the queue, for the next batch's rows while a step runs: upload_ahead copies from page-locked
     * memory (alloc_host) once the work queued before the call is done (that work may still read dst), without holding
     * back the work queued after it; await_uploads makes the work queued after it wait for every such copy. dst must
     * not be read before that, nor the source changed (a download does not wait for them). NULL (both) where the
     * backend's memory is the host's. */
    void (*upload_ahead)(void *dst, const void *host_src, size_t bytes);
    void (*await_uploads)(void);

    /* Collectives between processes on the backend's own memory (kernels/cuda/comm.cu: NCCL), which
     * train/collective.c uses when they are set; all 0/NULL where the backend has none (the CPU, a CUDA build
     * without NCCL), and collectives then go through host memory and MPI (common/dist.h). Not ops: nothing in ops.def.
     * A communicator joins `size` processes, each with its `rank`, through an id of comm_id_bytes bytes that one of
     * them makes (comm_new_id) and hands to the others by other means (MPI); comm_open is collective over them and
     * `name` (what the communicator is for) appears in its errors. comm_sum (in place), comm_send and comm_recv are
     * queued after the work already queued on the backend and return at once; comm_wait returns when every one queued
     * on the communicator is done, and later work sees their results. An error, or a wait longer than
     * MEDUSA_NCCL_TIMEOUT seconds (default 300: a dead or stuck peer), aborts the communicator and is fatal, naming
     * it: a run never hangs on one. comm_close waits, then frees it. */
    const char *comm_library; /* what implements them, for the log ("NCCL") */
    size_t comm_id_bytes;
    void (*comm_new_id)(void *id);
    void *(*comm_open)(const void *id, int rank, int size, const char *name);
    void (*comm_sum)(void *comm, float *x, size_t n);
    void (*comm_send)(void *comm, const float *x, size_t n, int peer);
    void (*comm_recv)(void *comm, float *x, size_t n, int peer);
    void (*comm_wait)(void *comm);
    void (*comm_close)(void *comm);

    /* --gemm-tune: with on, each GEMM shape's candidate algorithms are timed at its first use and the fastest kept
     * for the run (cuBLASLt's heuristic order otherwise); NULL where there is nothing to choose (the CPU) */
    void (*set_gemm_tune)(int on);

    /* A decoding step: queue(ctx) queues the step's ops, which read what changes between steps from backend memory
     * written before the call or from their arguments; the backend may capture them and run them as one unit (CUDA
     * graphs), keeping what it made for each (owner, shape) pair (a decoder's state, its rows per pass) for the next
     * step of the pair. queue must not copy to or from the host. NULL where steps simply run (the CPU). */
    void (*run_step)(const void *owner, int shape, void (*queue)(void *ctx), void *ctx);

    /* the ops: one function pointer per line of ops.def, where each op's contract is */
#define OP(ret, op, params, args) ret(*op) params;
#include "ops.def"
#undef OP
};

/* Fatal, naming the backend and the member, unless every op of ops.def and every memory function is set: each
 * backend's constructor calls it on its table. */
void backend_check(const Backend *b);
const Backend *backend_cpu(void);
/* Whether a GGUF's matrices are best kept in their formats (matmul_q) on this backend and machine, what --precision
 * auto then picks: on the CPU when matmul_q has a SIMD build for it (AVX2 or AVX-512: 2-3x fp32 matmul's speed on
 * SmolLM2-135M; the portable build is slower than fp32), never on a GPU (bf16 tensor cores). */
int backend_prefers_native(const Backend *b);
/* Applies --threads (> 0) to the host's OpenMP and OpenBLAS threads. */
void set_threads(int threads);
/* kernels/cuda (only in builds with nvcc, which define MEDUSA_CUDA) */
const Backend *backend_cuda(void);
/* The CUDA backend's copies that made the host wait for the device's queue, since start-up (a test counts a step's):
 * device-to-host ones (download) and uploads larger than its pinned staging slots (1 MiB; smaller ones are queued
 * without a wait). MEDUSA_CUDA_SYNC's and the profiler's own synchronisations are left out. */
typedef struct {
    long long downloads, uploads;
    long long ahead; /* and, not blocking, the uploads beside the queue (upload_ahead) */
} CudaBlockingCopies;
CudaBlockingCopies cuda_blocking_copies(void);
/* --gemm-tune so far: GEMM shapes timed, and those whose fastest algorithm was not the heuristic's first */
typedef struct {
    int shapes, changed;
} CudaGemmTuning;
CudaGemmTuning cuda_gemm_tuning(void);
/* Decoding steps so far (Backend.run_step): run plainly (the first of each owner and shape, or with graphs off),
 * captured as CUDA graphs, and of those how many updated the graph of the step before and how many instantiated one */
typedef struct {
    long long plain, captured, updated, instantiated;
} CudaGraphStats;
CudaGraphStats cuda_graph_stats(void);
/* graphs on (the default, unless MEDUSA_CUDA_GRAPHS=0) or off for the steps that follow */
void cuda_set_graphs(int on);
/* "cpu" or "cuda" (the --device flag); fatal for an unknown name or a CUDA-less build */
const Backend *backend_by_name(const char *name);
/* A GPU's dense bf16 tensor peak in FLOP/s (vendor data sheets, without sparsity) from its device name, as CUDA
 * reports it ("NVIDIA A100-SXM4-80GB"); 0 for a GPU not in the table. */
double gpu_bf16_peak_flops(const char *device_name);

#endif
