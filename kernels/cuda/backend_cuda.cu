/* The CUDA backend's op table: device memory through cudart, one cuBLAS handle on the backend's stream.
 * Every op is asynchronous on that stream, and so is upload() of up to a staging slot's bytes or from page-locked
 * memory (alloc_host), and download_queued() into page-locked memory; download() and other larger uploads synchronise
 * (cuda_blocking_copies counts them).
 * upload_ahead() copies on a second stream beside it. Decoding steps may run as CUDA graphs (run_step). */
#include <algorithm>
#include <iterator>
#include <map>
#include <unordered_map>
#include <vector>

#include "cuda_common.cuh"

bool cuda_sync_debug(void) {
    static const int on = getenv("MEDUSA_CUDA_SYNC") && strcmp(getenv("MEDUSA_CUDA_SYNC"), "0") != 0;
    return on;
}

void cuda_check_after(const char *name) {
    cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess)
        fatal("cuda: %s failed: %s (MEDUSA_CUDA_SYNC=1 checks after every launch)", name, cudaGetErrorString(err));
}

cudaStream_t cuda_stream(void) {
    static cudaStream_t stream;
    static bool made;
    if (!made) CUDA_CHECK(cudaStreamCreate(&stream)); /* blocking: ordered with the legacy stream's copies */
    made = true;
    return stream;
}
cublasHandle_t cuda_cublas(void) {
    static cublasHandle_t handle;
    if (!handle) {
        CUBLAS_CHECK(cublasCreate(&handle));
        CUBLAS_CHECK(cublasSetStream(handle, cuda_stream()));
    }
    return handle;
}
cublasLtHandle_t cuda_cublaslt(void) {
    static cublasLtHandle_t handle;
    if (!handle) CUBLAS_CHECK(cublasLtCreate(&handle));
    return handle;
}

/* Device memory: one arena of the run's planned peak (reserve: a single cudaMalloc at start-up) carved into
 * 256-byte aligned blocks. cudaMalloc is slow and cudaFree synchronises the device, while the model allocates
 * the same small buffers on every step; one allocation up front also makes a plan that cannot fit fail at
 * once instead of hours in. Each chunk keeps its free blocks ordered by address: alloc takes the first that
 * fits (deterministic: the same calls give the same addresses) and free merges a block with its free
 * neighbours. When the plan was too small, or reserve was never called, more chunks come from cudaMalloc.
 * Reuse is safe because all work runs in order on the default stream. */
struct Chunk {
    char *base;
    size_t size;
    std::map<char *, size_t> free_blocks; /* address -> bytes */
};
static std::vector<Chunk> chunks; /* chunks[0] is the reserved arena when reserve was called first */
static bool capturing;            /* a decoding step is being captured as a CUDA graph (run_step) */
static std::unordered_map<void *, size_t> live_blocks;
static size_t reserved_bytes, bytes_in_use, peak_in_use;
static const size_t kAlign = 256, kMinChunk = (size_t)64 << 20;

static double gib(size_t bytes) { return (double)bytes / (1024.0 * 1024 * 1024); }

/* The emulator fills a block handed out with NaN bytes and, under AddressSanitizer, poisons what lies past the
 * bytes asked for and every free block, so a kernel reading memory nobody wrote, past a tensor's end or in a
 * freed tensor shows in the tests (`bytes` 0: freed). Nothing to do on a GPU. */
static void mark_block(void *ptr, size_t bytes, size_t size) {
#ifdef MEDUSA_CUDA_EMU
    cuda_emu_mark_block(ptr, bytes, size);
#else
    (void)ptr, (void)bytes, (void)size;
#endif
}

static void add_chunk(char *base, size_t size) {
    chunks.push_back(Chunk{base, size, {}});
    chunks.back().free_blocks[base] = size;
    mark_block(base, 0, size);
}

/* What must stay free beside the arena: cuBLAS's own workspaces, and the code of each kernel CUDA loads at its first
 * launch (lazy module loading, CUDA's default: loading every module at start-up, cuBLAS's thousands of kernels
 * included, can cost seconds and hundreds of MB per process). The handles are made before the arena is taken. */
static const size_t kHeadroom = (size_t)256 << 20;

static void cuda_reserve(size_t bytes) {
    if (reserved_bytes) fatal("cuda backend: device memory was already reserved (%.2f GiB)", gib(reserved_bytes));
    size_t size = (bytes + kAlign - 1) / kAlign * kAlign;
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    void *base = NULL;
    if (size + kHeadroom > free_bytes || cudaMalloc(&base, size) != cudaSuccess) {
        (void)cudaGetLastError();
        fatal("cuda backend: the memory plan needs %.2f GiB (and %.2f GiB kept free for cuBLAS) but the GPU has %.2f "
              "GiB free (of %.2f GiB): use a smaller --batch-tokens or --logits-chunk, fewer heads, or a bigger GPU",
              gib(size), gib(kHeadroom), gib(free_bytes), gib(total_bytes));
    }
    reserved_bytes = size;
    add_chunk((char *)base, size);
    if (chunks.size() > 1) std::rotate(chunks.begin(), chunks.end() - 1, chunks.end()); /* searched first */
}

/* A new chunk from cudaMalloc for a block of `size` the chunks cannot hold; one warning per run. */
static Chunk &grow(size_t size) {
    if (capturing) /* cudaMalloc is not allowed then: a step's buffers come from its first, plain run */
        fatal(
            "cuda backend: a block of %.1f MiB was asked for while capturing a decoding step as a CUDA graph, and the "
            "memory plan has no room for it (MEDUSA_CUDA_GRAPHS=0 runs steps without graphs)",
            (double)size / (1 << 20));
    static bool warned;
    if (!warned) {
        warned = true;
        if (reserved_bytes) {
            size_t need = bytes_in_use + size, over = need > reserved_bytes ? need - reserved_bytes : 0;
            log_warn("cuda backend: the memory plan underestimated: %.3f GiB reserved, %.3f GiB in use and a block of "
                     "%.1f MiB does not fit (%.1f MiB over the plan); further chunks come from cudaMalloc",
                     gib(reserved_bytes), gib(bytes_in_use), (double)size / (1 << 20), (double)over / (1 << 20));
        } else {
            log_warn("cuda backend: no memory plan reserved device memory; chunks come from cudaMalloc as needed");
        }
    }
    size_t chunk = std::max(size, kMinChunk);
    void *base = NULL;
    if (cudaMalloc(&base, chunk) != cudaSuccess) { /* the minimum chunk may not fit where the block does */
        (void)cudaGetLastError();
        chunk = size;
        if (cudaMalloc(&base, chunk) != cudaSuccess) {
            (void)cudaGetLastError();
            size_t free_bytes = 0, total_bytes = 0;
            CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
            fatal("cuda backend: out of device memory allocating %.3f GiB (%.2f GiB in use, %.2f GiB free of %.2f GiB)",
                  gib(size), gib(bytes_in_use), gib(free_bytes), gib(total_bytes));
        }
    }
    add_chunk((char *)base, chunk);
    return chunks.back();
}

static void *cuda_alloc(size_t bytes) {
    size_t size = bytes ? (bytes + kAlign - 1) / kAlign * kAlign : kAlign;
    Chunk *from = NULL;
    std::map<char *, size_t>::iterator fit;
    for (Chunk &c : chunks) {
        fit = std::find_if(c.free_blocks.begin(), c.free_blocks.end(),
                           [&](const std::pair<char *const, size_t> &b) { return b.second >= size; });
        if (fit != c.free_blocks.end()) {
            from = &c;
            break;
        }
    }
    if (!from) {
        from = &grow(size);
        fit = from->free_blocks.begin();
    }
    char *ptr = fit->first;
    size_t rest = fit->second - size;
    from->free_blocks.erase(fit);
    if (rest) from->free_blocks[ptr + size] = rest;
    live_blocks[ptr] = size;
    mark_block(ptr, bytes, size);
    bytes_in_use += size;
    peak_in_use = std::max(peak_in_use, bytes_in_use);
    return ptr;
}

static void cuda_free(void *ptr) {
    if (!ptr) return;
    auto live = live_blocks.find(ptr);
    if (live == live_blocks.end()) fatal("cuda backend: free of a pointer it did not allocate (or freed twice)");
    char *block = (char *)ptr;
    size_t size = live->second;
    live_blocks.erase(live);
    mark_block(ptr, 0, size);
    bytes_in_use -= size;
    Chunk &c = *std::find_if(chunks.begin(), chunks.end(),
                             [&](const Chunk &k) { return block >= k.base && block < k.base + k.size; });
    auto next = c.free_blocks.lower_bound(block);
    if (next != c.free_blocks.end() && block + size == next->first) { /* merge with the free block after */
        size += next->second;
        next = c.free_blocks.erase(next);
    }
    if (next != c.free_blocks.begin()) { /* and with the one before */
        auto prev = std::prev(next);
        if (prev->first + prev->second == block) {
            prev->second += size;
            return;
        }
    }
    c.free_blocks[block] = size;
}

static size_t cuda_peak_bytes(void) {
    size_t peak = peak_in_use;
    peak_in_use = bytes_in_use;
    return peak;
}

static size_t cuda_memory_available(void) {
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return free_bytes;
}

/* Every upload and download waits for the queued kernels: the counts tell how often a step makes the GPU idle. */
static CudaBlockingCopies blocking_copies;
extern "C" CudaBlockingCopies cuda_blocking_copies(void) { return blocking_copies; }

/* Uploads of up to a slot's bytes pass through pinned staging slots taken in turn: the host copies its bytes into the
 * slot and the device copies them from there in the queue's order (cudaMemcpyAsync from pinned memory does not wait
 * for the queue, as a copy from pageable memory does), so a step's small uploads (a pass's layout, a batch's tokens
 * and targets) never make the host wait. A slot is written again only after the event recorded behind its last copy
 * has passed: the host waits only when the device is kStagingSlots uploads behind. Uploads from page-locked blocks
 * (alloc_host: cached hidden states) are queued from there directly, whatever their size; other larger uploads (the
 * weights at load) copy synchronously and count as blocking. */
static const int kStagingSlots = 16;
static const size_t kStagingSlotBytes = 1 << 20;
static struct {
    char *host;
    cudaEvent_t copied;
} staging[kStagingSlots];
static int staging_next;

/* page-locked host blocks (alloc_host): start -> bytes */
static std::map<const char *, size_t> host_blocks;
static void *cuda_alloc_host(size_t bytes) {
    void *ptr = NULL;
    if (cudaMallocHost(&ptr, bytes ? bytes : 1) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    host_blocks[(const char *)ptr] = bytes;
    return ptr;
}
static void cuda_free_host(void *ptr) {
    if (!ptr) return;
    host_blocks.erase((const char *)ptr);
    CUDA_CHECK(cudaFreeHost(ptr));
}
static bool in_page_locked_block(const void *src, size_t bytes) {
    auto after = host_blocks.upper_bound((const char *)src);
    if (after == host_blocks.begin()) return false;
    auto block = std::prev(after);
    return (const char *)src + bytes <= block->first + block->second;
}

static void cuda_upload(void *dst, const void *host_src, size_t bytes) {
    profile_next_bytes((double)bytes);
    ProfileScope profile("upload");
    if (in_page_locked_block(host_src, bytes)) { /* a DMA copy in the queue's order, straight from the source */
        CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, cuda_stream()));
        return;
    }
    if (bytes > kStagingSlotBytes) {
        blocking_copies.uploads++;
        CUDA_CHECK(cudaMemcpy(dst, host_src, bytes, cudaMemcpyHostToDevice));
        return;
    }
    auto &slot = staging[staging_next];
    staging_next = (staging_next + 1) % kStagingSlots;
    CUDA_CHECK(cudaEventSynchronize(slot.copied)); /* its previous copy */
    memcpy(slot.host, host_src, bytes);
    CUDA_CHECK(cudaMemcpyAsync(dst, slot.host, bytes, cudaMemcpyHostToDevice, cuda_stream()));
    CUDA_CHECK(cudaEventRecord(slot.copied, cuda_stream()));
}
/* Uploads beside the queue (Backend.upload_ahead): a non-blocking stream of their own, so that a copy engine moves the
 * next batch's rows while the kernels run. Each waits for the work queued on the backend's stream before it (which
 * may still read its destination); await_uploads orders the work queued after it behind all of them. */
static cudaStream_t copy_stream;
static cudaEvent_t queued_before, copied_ahead;
static void cuda_upload_ahead(void *dst, const void *host_src, size_t bytes) {
    if (!in_page_locked_block(host_src, bytes))
        fatal(
            "cuda: upload_ahead from memory that is not page-locked (Backend.alloc_host): it would copy synchronously");
    CUDA_CHECK(cudaEventRecord(queued_before, cuda_stream()));
    CUDA_CHECK(cudaStreamWaitEvent(copy_stream, queued_before, 0));
    CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, copy_stream));
    blocking_copies.ahead++;
}
static void cuda_await_uploads(void) {
    CUDA_CHECK(cudaEventRecord(copied_ahead, copy_stream));
    CUDA_CHECK(cudaStreamWaitEvent(cuda_stream(), copied_ahead, 0));
}
static void cuda_download(void *host_dst, const void *src, size_t bytes) {
    profile_next_bytes((double)bytes);
    ProfileScope profile("download");
    blocking_copies.downloads++;
    CUDA_CHECK(cudaMemcpy(host_dst, src, bytes, cudaMemcpyDeviceToHost));
}
static void cuda_download_queued(void *host_dst, const void *src, size_t bytes) {
    if (!in_page_locked_block(host_dst, bytes)) return cuda_download(host_dst, src, bytes);
    profile_next_bytes((double)bytes);
    ProfileScope profile("download");
    CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, cuda_stream()));
}
static void cuda_copy(void *dst, const void *src, size_t bytes) {
    profile_next_bytes(2.0 * (double)bytes);
    ProfileScope profile("copy");
    CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}

/* CUDA graphs for decoding steps (Backend.run_step). A step's few hundred small kernels cost the GPU a launch gap each
 * when issued one by one; captured into a graph they run back to back. Each step is captured again (the host's cost of
 * issuing its launches, without the GPU's gaps) and the instantiated graph of the same (owner, shape) takes its
 * parameters (cudaGraphExecUpdate: the KV cache's length and the split of its keys change every step); when the step's
 * work changed shape (attention starting to split its keys, another GEMM algorithm), the graph is instantiated anew.
 * The first step of an (owner, shape) runs plainly: what it allocates or times at first use (the GEMMs' workspace and
 * --gemm-tune, scratch buffers) must not happen under capture. MEDUSA_CUDA_GRAPHS=0, MEDUSA_CUDA_SYNC and
 * MEDUSA_CUDA_PROFILE run every step plainly. */
struct StepGraph {
    bool warm;
    cudaGraphExec_t exec;
};
static std::map<std::pair<const void *, int>, StepGraph> step_graphs;
static CudaGraphStats graph_stats;
static bool graphs_on = !(getenv("MEDUSA_CUDA_GRAPHS") && strcmp(getenv("MEDUSA_CUDA_GRAPHS"), "0") == 0);
extern "C" CudaGraphStats cuda_graph_stats(void) { return graph_stats; }
extern "C" void cuda_set_graphs(int on) { graphs_on = on != 0; }
const char *cuda_capture_hint(void) {
    return capturing ? " (while capturing a decoding step as a CUDA graph: MEDUSA_CUDA_GRAPHS=0 runs steps without)"
                     : "";
}
/* at exit, after a run that captured steps: how the graphs were kept (many instantiations mean updates refused) */
static void report_graphs(void) {
    log_info("cuda graphs: %lld decoding steps captured (%lld graphs updated in place, %lld instantiated), %lld run "
             "plainly",
             graph_stats.captured, graph_stats.updated, graph_stats.instantiated, graph_stats.plain);
}
static void cuda_run_step(const void *owner, int shape, void (*queue)(void *ctx), void *ctx) {
    StepGraph &g = step_graphs[std::make_pair(owner, shape)];
    if (!graphs_on || cuda_sync_debug() || cuda_profiling() || !g.warm) {
        g.warm = true;
        graph_stats.plain++;
        queue(ctx);
        return;
    }
    capturing = true;
    CUDA_CHECK(cudaStreamBeginCapture(cuda_stream(), cudaStreamCaptureModeThreadLocal));
    queue(ctx);
    cudaGraph_t graph = NULL;
    cudaError_t err = cudaStreamEndCapture(cuda_stream(), &graph);
    capturing = false;
    if (err != cudaSuccess) { /* nothing captured ran: the step runs plainly, and so do the run's others */
        (void)cudaGetLastError();
        log_warn("cuda: a decoding step could not be captured as a CUDA graph (%s); steps run without graphs",
                 cudaGetErrorString(err));
        graphs_on = false;
        graph_stats.plain++;
        queue(ctx);
        return;
    }
    if (graph_stats.captured++ == 0) atexit(report_graphs);
    if (g.exec) {
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate(g.exec, graph, &info) == cudaSuccess) {
            graph_stats.updated++;
        } else {
            (void)cudaGetLastError();
            CUDA_CHECK(cudaGraphExecDestroy(g.exec));
            g.exec = NULL;
        }
    }
    if (!g.exec) {
        CUDA_CHECK(cudaGraphInstantiate(&g.exec, graph, 0));
        graph_stats.instantiated++;
    }
    CUDA_CHECK(cudaGraphDestroy(graph));
    CUDA_CHECK(cudaGraphLaunch(g.exec, cuda_stream()));
}

extern "C" const Backend *backend_cuda(void) {
    static Backend cuda;
    if (!cuda.name) {
        int devices = 0;
        cudaError_t err = cudaGetDeviceCount(&devices);
        if (err != cudaSuccess || devices == 0)
            fatal("--device cuda: no usable CUDA GPU (%s)%s",
                  err != cudaSuccess ? cudaGetErrorString(err) : "none found",
                  err == cudaErrorInsufficientDriver || err == cudaErrorNoDevice
                      ? ": `nvidia-smi` should list the GPU; without an NVIDIA driver, use --device cpu"
                      : "");
        cuda.alloc = cuda_alloc;
        cuda.free = cuda_free;
        cuda.upload = cuda_upload;
        cuda.download = cuda_download;
        cuda.download_queued = cuda_download_queued;
        cuda.copy = cuda_copy;
        cuda.reserve = cuda_reserve;
        cuda.peak_bytes = cuda_peak_bytes;
        cuda.memory_available = cuda_memory_available;
        cuda.alloc_host = cuda_alloc_host;
        cuda.free_host = cuda_free_host;
        cuda.upload_ahead = cuda_upload_ahead;
        cuda.await_uploads = cuda_await_uploads;
#define OP(ret, op, params, args) cuda.op = cuda_##op;
#include "../ops.def"
#undef OP
        /* a GPU per process: under an MPI launcher the ranks of a node take its GPUs in turn (NCCL cannot join two
         * ranks on one GPU); a launcher that shows each rank one GPU (CUDA_VISIBLE_DEVICES) gives it device 0 */
        const char *local = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
        if (!local) local = getenv("MPI_LOCALRANKID"); /* MPICH's Hydra */
        if (!local) local = getenv("SLURM_LOCALID");
        int device = local ? atoi(local) % devices : 0;
        CUDA_CHECK(cudaSetDevice(device));
        static cudaDeviceProp prop;
        CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
        cuda.device = prop.name;
        cuda.peak_bf16_flops = gpu_bf16_peak_flops(prop.name);
        cuda.name = "cuda";
        cuda.is_host = 0;
        cuda.prefers_bf16 = 1;
        cuda.default_logits_chunk = 4096; /* the lm_head GEMMs want many rows (4096 x 32000 is 0.5 GB) */
        for (auto &slot : staging) {
            CUDA_CHECK(cudaMallocHost(&slot.host, kStagingSlotBytes));
            CUDA_CHECK(cudaEventCreateWithFlags(&slot.copied, cudaEventDisableTiming));
            CUDA_CHECK(cudaEventRecord(slot.copied, cuda_stream()));
        }
        CUDA_CHECK(cudaStreamCreateWithFlags(&copy_stream, cudaStreamNonBlocking));
        CUDA_CHECK(cudaEventCreateWithFlags(&queued_before, cudaEventDisableTiming));
        CUDA_CHECK(cudaEventCreateWithFlags(&copied_ahead, cudaEventDisableTiming));
        cuda_comm_setup(&cuda);
        cuda.set_gemm_tune = cuda_set_gemm_tune;
        cuda.run_step = cuda_run_step;
        cuda_cublas(); /* the handles' memory too is taken before reserve() */
        cuda_cublaslt();
        backend_check(&cuda);
    }
    return &cuda;
}
