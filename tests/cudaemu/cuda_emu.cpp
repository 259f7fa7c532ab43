/* The CUDA emulator's runtime: block scheduler (threads as ucontext fibers), cudart on host memory,
 * cublasSgemm on OpenBLAS. See cuda_emu.h.
 * "Device" memory comes from one reserved arena that is inaccessible (PROT_NONE) except while a kernel,
 * a cudaMemcpy/cudaMemset or a cuBLAS call runs, so host code that dereferences a device pointer crashes
 * here as it would with a real GPU, with a message naming the cause. */
#include "cuda_emu.h"

#include <cblas.h>
#include <elf.h>
#include <link.h>

#include "../../kernels/math_common.h"
#include <sanitizer/asan_interface.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace {

enum FiberState { READY, AT_SYNCTHREADS, AT_SYNCWARP, DONE };

/* Switching fibers: on x86-64 a few instructions (callee-saved registers, FP control words, the stack
 * pointer); ucontext's swapcontext also saves the signal mask, a system call per switch, which made the
 * emulator spend most of its time in the kernel. ucontext stays for other CPUs and under AddressSanitizer,
 * which knows about swapcontext's stack changes. */
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define EMU_FAST_SWITCH 1
#endif

struct Fiber {
#ifdef EMU_FAST_SWITCH
    void *sp;
#else
    ucontext_t ctx;
#endif
    char *stack;
    FiberState state;
};

const size_t kStackBytes = 256 << 10;

std::vector<Fiber> fibers;             /* one per thread of the running block; stacks are reused */
std::vector<unsigned> warp_generation; /* completed warp barriers, selects the shuffle buffer */
std::vector<uint64_t> warp_slots;      /* [warp][2][32] double-buffered shuffle exchange */
std::vector<uint32_t> mma_slots;       /* [warp][2][32][6] the same for mma fragments: a[4], b[2] */
struct AsyncCopy {
    void *dst;
    const void *src; /* NULL: zeros */
    int group;       /* the thread's commit group, counted from 0; -1 until committed */
};
struct AsyncCopies {
    std::vector<AsyncCopy> pending;
    int committed = 0; /* groups committed so far */
};
std::vector<AsyncCopies> async_copies; /* per thread of the block, until its waits */
#ifdef EMU_FAST_SWITCH
void *scheduler_sp;
#else
ucontext_t scheduler;
#endif
unsigned current, n_threads;
const char *running_kernel;
const std::function<void()> *kernel_body;
cudaError_t last_error = cudaSuccess;

[[noreturn]] void emu_fail(const char *what) {
    fprintf(stderr, "cuda_emu: kernel %s, block (%u,%u,%u): %s\n", running_kernel, blockIdx.x, blockIdx.y, blockIdx.z,
            what);
    abort();
}

#ifdef EMU_FAST_SWITCH
} // namespace
/* Pushes the callee-saved registers and MXCSR / x87 control word, stores the stack pointer in *save, and
 * continues on the stack `load` (which a previous switch saved, or fiber_start prepared). */
extern "C" void cuda_emu_switch(void **save, void *load);
__asm__(".text\n"
        ".globl cuda_emu_switch\n"
        ".type cuda_emu_switch,@function\n"
        "cuda_emu_switch:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
        "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
        "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
        "  ret\n"
        ".size cuda_emu_switch, .-cuda_emu_switch\n");
namespace {
#endif

void fiber_main() {
    (*kernel_body)();
    if (!async_copies[current].pending.empty()) emu_fail("cp.async copies never waited for (cp_async_wait_group)");
    fibers[current].state = DONE;
#ifdef EMU_FAST_SWITCH
    void *unused;
    cuda_emu_switch(&unused, scheduler_sp); /* never resumed */
#endif                                      /* else returning resumes the scheduler through uc_link */
}

/* Prepares fiber f to run fiber_main when it is first switched to. */
void fiber_start(Fiber &f) {
#ifdef EMU_FAST_SWITCH
    /* what cuda_emu_switch pops: FP control words, six registers, then fiber_main as the return address,
     * placed so that fiber_main starts with the stack aligned as after a call */
    uintptr_t top = ((uintptr_t)f.stack + kStackBytes - 16) & ~(uintptr_t)15;
    uint64_t *slot = (uint64_t *)top;
    slot[0] = (uint64_t)(uintptr_t)&fiber_main;
    slot[1] = 0;
    slot -= 7;
    memset(slot, 0, 7 * sizeof(uint64_t));
    uint32_t control[2] = {0x1f80, 0x037f}; /* default MXCSR and x87 control word */
    memcpy(slot, control, sizeof control);
    f.sp = slot;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &scheduler;
    makecontext(&f.ctx, fiber_main, 0);
#endif
}

void switch_to_fiber(unsigned t) {
#ifdef EMU_FAST_SWITCH
    cuda_emu_switch(&scheduler_sp, fibers[t].sp);
#else
    swapcontext(&scheduler, &fibers[t].ctx);
#endif
}

void wait_as(FiberState state) {
    if (!kernel_body) {
        fprintf(stderr, "cuda_emu: barrier or shuffle called outside a kernel\n");
        abort();
    }
    fibers[current].state = state;
#ifdef EMU_FAST_SWITCH
    cuda_emu_switch(&fibers[current].sp, scheduler_sp);
#else
    swapcontext(&fibers[current].ctx, &scheduler);
#endif
}

void set_thread_index(unsigned tid) {
    threadIdx.x = tid % blockDim.x;
    threadIdx.y = tid / blockDim.x % blockDim.y;
    threadIdx.z = tid / (blockDim.x * blockDim.y);
}

/* Releases every warp whose live lanes all wait at a warp barrier; true when one was released. */
bool release_warps() {
    bool released = false;
    for (unsigned w = 0; w * 32 < n_threads; w++) {
        unsigned end = (w + 1) * 32 < n_threads ? (w + 1) * 32 : n_threads, waiting = 0, done = 0;
        for (unsigned t = w * 32; t < end; t++) {
            waiting += fibers[t].state == AT_SYNCWARP;
            done += fibers[t].state == DONE;
        }
        if (waiting == 0 || waiting + done < end - w * 32) continue;
        if (done) emu_fail("warp shuffle or __syncwarp after some lanes of the warp exited");
        for (unsigned t = w * 32; t < end; t++) fibers[t].state = READY;
        warp_generation[w]++;
        released = true;
    }
    return released;
}

/* CUDA_EMU_ORDER=reverse runs a block's threads from the last to the first between barriers: a kernel that reads
 * what another thread wrote without a barrier between them then sees the other order, as a GPU may show it. */
bool reverse_order() {
    static const bool reverse = getenv("CUDA_EMU_ORDER") && strcmp(getenv("CUDA_EMU_ORDER"), "reverse") == 0;
    return reverse;
}

void run_block() {
    for (unsigned t = 0; t < n_threads; t++) {
        fiber_start(fibers[t]);
        fibers[t].state = READY;
    }
    for (;;) {
        for (unsigned i = 0; i < n_threads; i++) {
            unsigned t = reverse_order() ? n_threads - 1 - i : i;
            if (fibers[t].state != READY) continue;
            current = t;
            set_thread_index(t);
            switch_to_fiber(t);
        }
        if (release_warps()) continue;
        unsigned waiting = 0, done = 0;
        for (unsigned t = 0; t < n_threads; t++) {
            waiting += fibers[t].state == AT_SYNCTHREADS;
            done += fibers[t].state == DONE;
        }
        if (done == n_threads) return;
        if (waiting + done < n_threads)
            emu_fail("deadlock: threads wait at different barriers (divergent __syncthreads?)");
        if (done) emu_fail("__syncthreads() not reached by every thread of the block (some exited)");
        for (unsigned t = 0; t < n_threads; t++) fibers[t].state = READY;
    }
}

/* --- device memory arena: bump allocation, freed blocks reused by size --- */
const size_t kArenaBytes = (size_t)1 << 38; /* reserved address space, not memory */
char *arena;
size_t arena_used;
std::unordered_map<char *, size_t> live_blocks;
std::multimap<size_t, char *> free_blocks;
int device_access_depth;
long malloc_calls;

void on_segv(int sig, siginfo_t *info, void *) {
    char *addr = (char *)info->si_addr;
    if (arena && addr >= arena && addr < arena + kArenaBytes) {
        static const char msg[] = "cuda_emu: host code touched device memory (a device pointer used on the host: "
                                  "use the backend's upload/download/copy)\n";
        ssize_t ignored = write(2, msg, sizeof msg - 1);
        (void)ignored;
    }
    signal(sig, SIG_DFL); /* re-raised on return: the default crash and core dump */
}

void arena_init() {
    if (arena) return;
    void *p = mmap(NULL, kArenaBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        perror("cuda_emu: reserving the device memory arena");
        abort();
    }
    arena = (char *)p;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, NULL);
}

bool guard_device_memory = true;
size_t open_bytes; /* with the guard off: [arena, arena + open_bytes) is accessible */

void set_device_access(bool on) {
    if (!guard_device_memory) {                    /* open what was allocated since */
        size_t start = open_bytes & ~(size_t)4095; /* mprotect takes whole pages */
        if (arena_used > open_bytes && mprotect(arena + start, arena_used - start, PROT_READ | PROT_WRITE)) {
            perror("cuda_emu: mprotect");
            abort();
        }
        open_bytes = arena_used;
        return;
    }
    if (arena_used && mprotect(arena, arena_used, on ? PROT_READ | PROT_WRITE : PROT_NONE)) {
        perror("cuda_emu: mprotect");
        abort();
    }
}

/* Device memory is readable and writable for the lifetime of one of these (kernels, copies, GEMMs). */
struct DeviceAccess {
    DeviceAccess() {
        if (device_access_depth++ == 0) set_device_access(true);
    }
    ~DeviceAccess() {
        if (--device_access_depth == 0) set_device_access(false);
    }
};

} // namespace

void cuda_emu_syncthreads(void) { wait_as(AT_SYNCTHREADS); }
void cuda_emu_syncwarp(void) { wait_as(AT_SYNCWARP); }

uint64_t *cuda_emu_shuffle_slots(int *lane) {
    unsigned w = current / 32;
    *lane = (int)(current % 32);
    return &warp_slots[(w * 2 + (warp_generation[w] & 1)) * 32];
}

/* A kernel's __shared__ arrays (function statics here) as (address, bytes), found in this program's symbol table: a
 * static local of the function whose mangled name is _Z<encoding> is the writable object _ZZ<encoding>E<name>
 * (the Itanium C++ ABI's local-name). Section attributes, which would gather them without a symbol table, are
 * ignored on a template's statics. Arrays of __device__ functions the kernel calls are not found (none has any). */
typedef std::vector<std::pair<char *, size_t>> SharedArrays;

/* f(symbol, name, in a writable section) for each symbol of this program's symbol table (read once) */
template <class F> void for_each_symbol(F f) {
    static std::vector<char> image;
    if (image.empty()) {
        FILE *file = fopen("/proc/self/exe", "rb");
        if (!file) {
            perror("cuda_emu: /proc/self/exe");
            abort();
        }
        char chunk[1 << 16];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, file)) > 0) image.insert(image.end(), chunk, chunk + n);
        fclose(file);
    }
    const Elf64_Ehdr *header = (const Elf64_Ehdr *)image.data();
    const Elf64_Shdr *sections = (const Elf64_Shdr *)(image.data() + header->e_shoff);
    for (int s = 0; s < header->e_shnum; s++) {
        if (sections[s].sh_type != SHT_SYMTAB) continue;
        const Elf64_Sym *symbols = (const Elf64_Sym *)(image.data() + sections[s].sh_offset);
        const char *names = image.data() + sections[sections[s].sh_link].sh_offset;
        for (size_t i = 0; i < sections[s].sh_size / sizeof(Elf64_Sym); i++) {
            const Elf64_Sym &symbol = symbols[i];
            bool writable = symbol.st_shndx < header->e_shnum && (sections[symbol.st_shndx].sh_flags & SHF_WRITE);
            f(symbol, names + symbol.st_name, writable);
        }
    }
}

const SharedArrays &shared_arrays(const void *kernel) {
    static std::unordered_map<const void *, SharedArrays> found;
    static uintptr_t load_bias = 0;
    static bool biased = false;
    if (!biased) { /* the first object dl_iterate_phdr reports is the program */
        dl_iterate_phdr([](struct dl_phdr_info *info, size_t, void *) { return load_bias = info->dlpi_addr, 1; }, NULL);
        biased = true;
    }
    auto it = found.find(kernel);
    if (it != found.end()) return it->second;
    std::string prefix;
    for_each_symbol([&](const Elf64_Sym &symbol, const char *name, bool) {
        if (ELF64_ST_TYPE(symbol.st_info) == STT_FUNC && symbol.st_value + load_bias == (uintptr_t)kernel &&
            strncmp(name, "_Z", 2) == 0)
            prefix = std::string("_ZZ") + (name + 2) + "E";
    });
    if (prefix.empty()) {
        fprintf(stderr, "cuda_emu: no symbol names the kernel at %p (a stripped program?)\n", kernel);
        abort();
    }
    SharedArrays &arrays = found[kernel];
    for_each_symbol([&](const Elf64_Sym &symbol, const char *name, bool writable) {
        if (ELF64_ST_TYPE(symbol.st_info) == STT_OBJECT && writable &&
            strncmp(name, prefix.c_str(), prefix.size()) == 0)
            arrays.push_back({(char *)(symbol.st_value + load_bias), (size_t)symbol.st_size});
    });
    return arrays;
}

void cuda_emu_run(const char *kernel_name, const void *kernel, dim3 grid, dim3 block, size_t shmem,
                  const std::function<void()> &body) {
    unsigned long threads = (unsigned long)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535 || shmem > 48 * 1024) {
        fprintf(stderr,
                "cuda_emu: kernel %s: invalid launch configuration grid (%u,%u,%u) block (%u,%u,%u) shmem %zu\n",
                kernel_name, grid.x, grid.y, grid.z, block.x, block.y, block.z, shmem);
        last_error = cudaErrorInvalidConfiguration;
        return;
    }
    if (shmem) {
        fprintf(stderr, "cuda_emu: kernel %s: dynamic shared memory is not emulated\n", kernel_name);
        abort();
    }
    while (fibers.size() < threads) {
        void *stack =
            mmap(NULL, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (stack == MAP_FAILED) {
            perror("cuda_emu: mmap fiber stack");
            abort();
        }
        fibers.push_back(Fiber{});
        fibers.back().stack = (char *)stack;
    }
    n_threads = (unsigned)threads;
    unsigned n_warps = (n_threads + 31) / 32;
    warp_generation.assign(n_warps, 0);
    warp_slots.assign((size_t)n_warps * 64, 0);
    mma_slots.assign((size_t)n_warps * 64 * 6, 0);
    async_copies.assign(n_threads, {});
    gridDim = grid;
    blockDim = block;
    running_kernel = kernel_name;
    kernel_body = &body;
    DeviceAccess access;
    /* CUDA_EMU_ORDER=reverse runs the blocks last to first too: a block that reads what another block of the same
     * launch writes sees the write in one order and misses it in the other */
    unsigned long n_blocks = (unsigned long)grid.x * grid.y * grid.z;
    for (unsigned long i = 0; i < n_blocks; i++) {
        unsigned long b = reverse_order() ? n_blocks - 1 - i : i;
        blockIdx = dim3((unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / grid.x / grid.y));
        /* shared memory holds what an earlier block left there: NaN here, so reading it before writing shows */
        for (const auto &array : shared_arrays(kernel)) memset(array.first, 0xff, array.second);
        run_block();
    }
    kernel_body = NULL;
}

/* Each lane posts its fragments, the warp meets, and each lane computes its 4 accumulators from the A row and B
 * column it needs, gathered from the lanes that hold them (the layout of cuda_common.cuh's mma_bf16_16x8x16).
 * Products of bf16 values are exact in fp32; the sum runs in k order. */
void cuda_emu_mma_bf16_16x8x16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    unsigned w = current / 32;
    int lane = (int)(current % 32);
    if ((w + 1) * 32 > n_threads) emu_fail("mma.sync in a warp of fewer than 32 threads");
    uint32_t *slots = &mma_slots[(w * 2 + (warp_generation[w] & 1)) * 32 * 6];
    memcpy(&slots[lane * 6], a, 4 * sizeof(uint32_t));
    memcpy(&slots[lane * 6 + 4], b, 2 * sizeof(uint32_t));
    cuda_emu_syncwarp();
    auto half = [&](int holder, int reg, int hi) {
        uint32_t bits = (slots[holder * 6 + reg] >> (16 * hi)) & 0xffffu;
        bits <<= 16;
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    };
    int group = lane / 4, quad = lane % 4;
    for (int e = 0; e < 4; e++) {
        int row = group + (e >= 2 ? 8 : 0), col = 2 * quad + e % 2;
        float sum = d[e];
        for (int kk = 0; kk < 16; kk++) {
            /* A[row][kk]: lane (row % 8) * 4 + (kk % 8) / 2, register (row >= 8) + 2 (kk >= 8); B[kk][col]: lane
             * col * 4 + (kk % 8) / 2, register (kk >= 8); low half for even kk */
            float x = half(row % 8 * 4 + kk % 8 / 2, (row >= 8) + 2 * (kk >= 8), kk % 2);
            float y = half(col * 4 + kk % 8 / 2, 4 + (kk >= 8), kk % 2);
            sum += x * y;
        }
        d[e] = sum;
    }
}

void cuda_emu_check_vector(const void *p) {
    if ((uintptr_t)p % 16 != 0) emu_fail("a 16-byte vector access at an address not 16-byte aligned");
}

void cuda_emu_ldmatrix_x4(uint32_t r[4], const uint16_t *row, bool trans) {
    if ((uintptr_t)row % 16 != 0) emu_fail("ldmatrix: a row address not 16-byte aligned");
    int lane;
    uint64_t *slots = cuda_emu_shuffle_slots(&lane);
    slots[lane] = (uint64_t)(uintptr_t)row;
    cuda_emu_syncwarp();
    auto at = [&](int matrix, int j) { return (const uint16_t *)(uintptr_t)slots[8 * matrix + j]; };
    for (int i = 0; i < 4; i++) {
        uint16_t lo, hi;
        if (trans) { /* column lane / 4 of rows 2 (lane % 4) and the next */
            lo = at(i, 2 * (lane % 4))[lane / 4];
            hi = at(i, 2 * (lane % 4) + 1)[lane / 4];
        } else { /* row lane / 4, columns 2 (lane % 4) and the next */
            lo = at(i, lane / 4)[2 * (lane % 4)];
            hi = at(i, lane / 4)[2 * (lane % 4) + 1];
        }
        r[i] = (uint32_t)lo | (uint32_t)hi << 16;
    }
}

/* The destination is poisoned (all bits set: a NaN in fp32 and bf16) at once and gets its bytes at the wait, the two
 * ends of the window in which the hardware may write them: a read before the wait, or a read of the buffer by
 * another thread while the copy is in flight (a missing barrier before reusing a tile), sees NaN. */
void cuda_emu_cp_async16(void *smem, const void *gmem, bool valid) {
    if ((uintptr_t)smem % 16 != 0 || (valid && (uintptr_t)gmem % 16 != 0))
        emu_fail("cp.async: an address not 16-byte aligned");
    memset(smem, 0xff, 16);
    async_copies[current].pending.push_back({smem, valid ? gmem : NULL, -1});
}

void cuda_emu_cp_async_commit(void) {
    AsyncCopies &mine = async_copies[current];
    for (AsyncCopy &c : mine.pending)
        if (c.group < 0) c.group = mine.committed;
    mine.committed++;
}

void cuda_emu_cp_async_wait_pending(int n) {
    AsyncCopies &mine = async_copies[current];
    int landed_below = mine.committed - n; /* groups before this one are complete */
    std::vector<AsyncCopy> still;
    for (const AsyncCopy &c : mine.pending) {
        if (c.group < 0 || c.group >= landed_below) {
            still.push_back(c);
            continue;
        }
        if (c.src) memcpy(c.dst, c.src, 16);
        else memset(c.dst, 0, 16);
    }
    mine.pending.swap(still);
}

/* --- cudart on host memory --- */
/* --- stream capture: the recorded operations of the capture under way --- */
namespace {
struct EmuOp {
    int kind;
    std::function<void()> run;
};
struct {
    bool active, invalid;
    std::vector<EmuOp> ops;
} capture;
/* a call a capture forbids: it fails and invalidates the capture */
bool forbidden_in_capture(const char *call) {
    if (!capture.active) return false;
    fprintf(stderr, "cuda_emu: %s during stream capture (not allowed: the capture is invalidated)\n", call);
    capture.invalid = true;
    last_error = cudaErrorStreamCaptureUnsupported;
    return true;
}
} // namespace
void cuda_emu_enqueue(int kind, std::function<void()> op) {
    if (capture.active) capture.ops.push_back(EmuOp{kind, std::move(op)});
    else op();
}
struct CUgraph_st {
    std::vector<EmuOp> ops;
};
struct CUgraphExec_st {
    std::vector<EmuOp> ops;
};
cudaError_t cudaStreamBeginCapture(cudaStream_t, enum cudaStreamCaptureMode) {
    if (capture.active) return last_error = cudaErrorIllegalState;
    capture.active = true, capture.invalid = false;
    capture.ops.clear();
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t *graph) {
    if (!capture.active) return last_error = cudaErrorIllegalState;
    capture.active = false;
    const char *invalidate = getenv("CUDA_EMU_GRAPH_INVALIDATE"); /* read at each capture: a test sets it */
    *graph = NULL;
    if (capture.invalid || (invalidate && strcmp(invalidate, "0")))
        return last_error = cudaErrorStreamCaptureInvalidated;
    *graph = new CUgraph_st{std::move(capture.ops)};
    capture.ops.clear();
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long) {
    if (!graph) return last_error = cudaErrorInvalidValue;
    *exec = new CUgraphExec_st{graph->ops};
    return cudaSuccess;
}
cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph, cudaGraphExecUpdateResultInfo *info) {
    bool same = exec && graph && exec->ops.size() == graph->ops.size();
    for (size_t i = 0; same && i < graph->ops.size(); i++) same = exec->ops[i].kind == graph->ops[i].kind;
    *info = cudaGraphExecUpdateResultInfo{same ? cudaGraphExecUpdateSuccess : cudaGraphExecUpdateErrorTopologyChanged,
                                          NULL, NULL};
    if (!same) return last_error = cudaErrorGraphExecUpdateFailure;
    exec->ops = graph->ops;
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t) {
    if (!exec || capture.active)
        return last_error = capture.active ? cudaErrorStreamCaptureUnsupported : cudaErrorInvalidValue;
    for (EmuOp &op : exec->ops) op.run();
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    delete graph;
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    delete exec;
    return cudaSuccess;
}

/* --- streams: a non-blocking stream's held copies and memsets (cuda_emu.h), run in order up to an event's mark --- */
struct CUstream_st {
    std::vector<std::function<void()>> held;
    size_t issued = 0, done = 0; /* operations issued on the stream, run so far: held[i] is operation done + i */
};
struct CUevent_st {
    double seconds;
    cudaStream_t stream; /* the held stream it was last recorded on (NULL: the backend's) */
    size_t mark;         /* that stream's operations issued up to the record */
};
namespace {
std::vector<cudaStream_t> held_streams;
void run_held(cudaStream_t stream, size_t upto) {
    if (!stream) return;
    size_t n = std::min(upto - std::min(upto, stream->done), stream->held.size());
    for (size_t i = 0; i < n; i++) stream->held[i]();
    stream->held.erase(stream->held.begin(), stream->held.begin() + (ptrdiff_t)n);
    stream->done += n;
}
void run_all_held(void) {
    for (cudaStream_t s : held_streams) run_held(s, s->issued);
}
/* an operation on `stream`: held there, or issued on the backend's stream (run, or captured) */
void issue_on(cudaStream_t stream, int kind, std::function<void()> op) {
    if (!stream) return cuda_emu_enqueue(kind, std::move(op));
    stream->held.push_back(std::move(op));
    stream->issued++;
}
} // namespace

cudaError_t cudaMalloc(void **ptr, size_t bytes) {
    arena_init();
    if (forbidden_in_capture("cudaMalloc")) return last_error;
    malloc_calls++;
    size_t size = (bytes + 255) & ~(size_t)255;
    if (!size) size = 256;
    auto reuse = free_blocks.lower_bound(size);
    char *block;
    if (reuse != free_blocks.end() && reuse->first <= 2 * size) {
        block = reuse->second;
        size = reuse->first;
        free_blocks.erase(reuse);
    } else {
        if (arena_used + size > kArenaBytes) return last_error = cudaErrorMemoryAllocation;
        block = arena + arena_used;
        arena_used += size;
    }
    live_blocks[block] = size;
    *ptr = block;
    cuda_emu_mark_block(block, bytes, size);
    return cudaSuccess;
}

/* Fresh device memory holds whatever was there before: here NaN bytes (all bits set), so a kernel that reads
 * memory nobody wrote computes NaN instead of the zeros a fresh mapping would give. Under AddressSanitizer the
 * bytes of a block past those asked for, and freed blocks, are poisoned: a kernel, copy or GEMM that reaches past
 * a tensor's end, or into a freed one, is reported. */
void cuda_emu_mark_block(void *ptr, size_t bytes, size_t size) {
    /* freed: its whole pages given back, so that mprotect keeps to the pages in use (it costs per page) */
    if (!bytes) {
        ASAN_POISON_MEMORY_REGION(ptr, size);
        uintptr_t first = ((uintptr_t)ptr + 4095) & ~(uintptr_t)4095, end = ((uintptr_t)ptr + size) & ~(uintptr_t)4095;
        if (end > first) madvise((void *)first, end - first, MADV_DONTNEED);
        return;
    }
    ASAN_UNPOISON_MEMORY_REGION(ptr, size);
    if (!guard_device_memory) set_device_access(true); /* opens the pages allocated since the last kernel */
    if (!guard_device_memory || device_access_depth) {
        memset(ptr, 0xff, size);
    } else {
        /* the block's pages alone opened, for a moment: the whole arena's would cost as much as a kernel's access */
        char *first = (char *)((uintptr_t)ptr & ~(uintptr_t)4095);
        size_t span = ((char *)ptr + size - first + 4095) & ~(size_t)4095;
        if (mprotect(first, span, PROT_READ | PROT_WRITE) ||
            (memset(ptr, 0xff, size), mprotect(first, span, PROT_NONE))) {
            perror("cuda_emu: mprotect");
            abort();
        }
    }
    ASAN_POISON_MEMORY_REGION((char *)ptr + bytes, size - bytes);
}
cudaError_t cudaFree(void *ptr) {
    if (forbidden_in_capture("cudaFree")) return last_error;
    run_all_held(); /* cudaFree synchronises the device */
    if (!ptr) return cudaSuccess;
    auto it = live_blocks.find((char *)ptr);
    if (it == live_blocks.end()) return last_error = cudaErrorInvalidValue; /* not from cudaMalloc, or freed twice */
    free_blocks.emplace(it->second, it->first);
    cuda_emu_mark_block(it->first, 0, it->second);
    live_blocks.erase(it);
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **ptr, size_t bytes) {
    *ptr = malloc(bytes ? bytes : 1);
    return *ptr ? cudaSuccess : last_error = cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void *ptr) {
    run_all_held(); /* as cudaFree */
    free(ptr);
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    size_t live = 0;
    for (auto &block : live_blocks) live += block.second;
    *free_bytes = kArenaBytes - live;
    *total_bytes = kArenaBytes;
    return cudaSuccess;
}
long cuda_emu_malloc_calls(void) { return malloc_calls; }
void cuda_emu_guard_device_memory(int on) {
    guard_device_memory = on != 0;
    open_bytes = 0;
    set_device_access(!on);
}
static void copy_bytes(void *dst, const void *src, size_t bytes) {
    DeviceAccess access;
    if (bytes) memmove(dst, src, bytes);
}
static void set_bytes(void *ptr, int value, size_t bytes) {
    DeviceAccess access;
    if (bytes) memset(ptr, value, bytes);
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind) {
    if (forbidden_in_capture("cudaMemcpy")) return last_error;
    copy_bytes(dst, src, bytes);
    return cudaSuccess;
}
/* the source's bytes are read when the copy runs (a captured copy from the host reads them at each replay) */
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind, cudaStream_t stream) {
    issue_on(stream, 1, [=] { copy_bytes(dst, src, bytes); });
    return cudaSuccess;
}
cudaError_t cudaMemset(void *ptr, int value, size_t bytes) {
    if (forbidden_in_capture("cudaMemset")) return last_error;
    set_bytes(ptr, value, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream) {
    issue_on(stream, 2, [=] { set_bytes(ptr, value, bytes); });
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
    if (forbidden_in_capture("cudaDeviceSynchronize")) return last_error;
    run_all_held();
    return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int *count) {
    *count = 1;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device) {
    if (device != 0) return cudaErrorInvalidValue;
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "CUDA emulator on the CPU");
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *stream) {
    *stream = NULL;
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
    if (!(flags & cudaStreamNonBlocking)) return cudaStreamCreate(stream);
    *stream = new CUstream_st;
    held_streams.push_back(*stream);
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    if (!stream) return cudaSuccess;
    run_held(stream, stream->issued); /* CUDA finishes a destroyed stream's work */
    held_streams.erase(std::find(held_streams.begin(), held_streams.end(), stream));
    delete stream;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    if (forbidden_in_capture("cudaStreamSynchronize")) return last_error;
    if (stream) run_held(stream, stream->issued);
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
    if (!event) return last_error = cudaErrorInvalidValue;
    /* the work before the event runs now (no later than the waiting stream's next operation needs it) */
    if (event->stream != stream) run_held(event->stream, event->mark);
    return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t stream) {
    if (stream) run_held(stream, stream->issued);
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
    return device == 0 ? cudaSuccess : last_error = cudaErrorInvalidValue; /* one emulated device */
}

cudaError_t cudaEventCreate(cudaEvent_t *event) {
    *event = new CUevent_st{0, NULL, 0};
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int) { return cudaEventCreate(event); }
cudaError_t cudaEventQuery(cudaEvent_t event) {
    if (!event) return last_error = cudaErrorInvalidValue;
    run_held(event->stream, event->mark);
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
    delete event;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    issue_on(stream, 3, [=] {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        event->seconds = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    });
    event->stream = stream, event->mark = stream ? stream->issued : 0; /* the record itself included */
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    if (forbidden_in_capture("cudaEventSynchronize")) return last_error;
    if (event) run_held(event->stream, event->mark);
    return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    *ms = (float)((end->seconds - start->seconds) * 1e3);
    return cudaSuccess;
}
cudaError_t cudaGetLastError(void) {
    cudaError_t err = last_error;
    last_error = cudaSuccess;
    return err;
}
cudaError_t cudaPeekAtLastError(void) { return last_error; }
const char *cudaGetErrorString(cudaError_t err) {
    switch (err) {
    case cudaSuccess:
        return "no error";
    case cudaErrorInvalidValue:
        return "invalid argument";
    case cudaErrorMemoryAllocation:
        return "out of memory";
    case cudaErrorInvalidConfiguration:
        return "invalid configuration argument";
    case cudaErrorInsufficientDriver:
        return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice:
        return "no CUDA-capable device is detected";
    case cudaErrorNotReady:
        return "device not ready";
    case cudaErrorIllegalState:
        return "the operation cannot be performed in the present state";
    case cudaErrorStreamCaptureUnsupported:
        return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
        return "operation failed due to a previous error during capture";
    case cudaErrorGraphExecUpdateFailure:
        return "the graph update was not performed because it included changes which violated constraints specific "
               "to instantiated graph update";
    }
    return "unknown error";
}

/* --- cuBLAS on OpenBLAS (both column-major BLAS) --- */
struct cublasContext {
    int unused;
};
cublasStatus_t cublasCreate(cublasHandle_t *handle) {
    *handle = new cublasContext{0};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) {
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
const char *cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS:
        return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_EXECUTION_FAILED:
        return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "unknown cuBLAS status";
}
cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                           const float *beta, float *C, int ldc) {
    /* cuBLAS's argument checks: leading dimensions must cover the stored rows */
    int a_rows = transa == CUBLAS_OP_N ? m : k, b_rows = transb == CUBLAS_OP_N ? k : n;
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (m < 0 || n < 0 || k < 0 || lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) ||
        ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    float a = *alpha, b = *beta; /* host scalars: read at the call, as a captured GEMM keeps them */
    cuda_emu_enqueue(0, [=] {
        DeviceAccess access;
        cblas_sgemm(CblasColMajor, transa == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                    transb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, a, A, lda, B, ldb, b, C, ldc);
    });
    return CUBLAS_STATUS_SUCCESS;
}

/* --- cuBLASLt: descriptors are plain structs; the matmul widens bf16 operands and runs cblas_sgemm --- */
struct cublasLtContext {
    int unused;
};
struct cublasLtMatmulDescOpaque {
    cublasComputeType_t compute;
    cudaDataType scale;
    cublasOperation_t op_a, op_b;
};
struct cublasLtMatrixLayoutOpaque {
    cudaDataType type;
    uint64_t rows, cols;
    int64_t ld;
};
struct cublasLtMatmulPreferenceOpaque {
    size_t max_workspace;
    uint32_t min_alignment[4]; /* A, B, C, D; cuBLASLt's default is 256 bytes */
};
cublasStatus_t cublasLtCreate(cublasLtHandle_t *handle) {
    *handle = new cublasLtContext{0};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *desc, cublasComputeType_t compute, cudaDataType scale) {
    *desc = new cublasLtMatmulDescOpaque{compute, scale, CUBLAS_OP_N, CUBLAS_OP_N};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t size) {
    if (size != sizeof(cublasOperation_t)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(attr == CUBLASLT_MATMUL_DESC_TRANSA ? &desc->op_a : &desc->op_b, buf, size);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
    delete desc;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
    /* cuBLASLt's check: a column-major layout's leading dimension covers its rows */
    if (ld < (int64_t)(rows > 1 ? rows : 1)) return CUBLAS_STATUS_INVALID_VALUE;
    *layout = new cublasLtMatrixLayoutOpaque{type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
    delete layout;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref) {
    *pref = new cublasLtMatmulPreferenceOpaque{0, {256, 256, 256, 256}};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t size) {
    if (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
        if (size != sizeof(size_t)) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&pref->max_workspace, buf, size);
        return CUBLAS_STATUS_SUCCESS;
    }
    if (attr >= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES && attr <= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES) {
        if (size != sizeof(uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&pref->min_alignment[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES], buf, size);
        return CUBLAS_STATUS_SUCCESS;
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    delete pref;
    return CUBLAS_STATUS_SUCCESS;
}
/* the combinations the emulator (and the backend) use: bf16 A/B, fp32 compute and scale, C and D both fp32 or
 * both bf16 */
static bool lt_supported(cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                         cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d) {
    return desc->compute == CUBLAS_COMPUTE_32F && desc->scale == CUDA_R_32F && a->type == CUDA_R_16BF &&
           b->type == CUDA_R_16BF && (c->type == CUDA_R_32F || c->type == CUDA_R_16BF) && d->type == c->type;
}
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t *results, int *returned) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
    *returned = 0;
    if (!lt_supported(desc, a, b, c, d)) return CUBLAS_STATUS_NOT_SUPPORTED;
    /* up to three equivalent algorithms (data[4]: the rank), each remembering the alignments it was chosen for,
     * which cublasLtMatmul then requires */
    int n = requested < 3 ? requested : 3;
    for (int r = 0; r < n; r++) {
        memset(&results[r], 0, sizeof results[r]);
        for (int i = 0; i < 4; i++) results[r].algo.data[i] = pref ? pref->min_alignment[i] : 256;
        results[r].algo.data[4] = (uint64_t)r;
    }
    *returned = n;
    return CUBLAS_STATUS_SUCCESS;
}
/* a stored bf16 matrix (column-major rows x cols, leading dimension ld) widened to a packed fp32 one */
static std::vector<float> widen_bf16(const void *src, cublasLtMatrixLayout_t layout) {
    std::vector<float> out(layout->rows * layout->cols);
    const uint16_t *x = (const uint16_t *)src;
    for (uint64_t j = 0; j < layout->cols; j++)
        for (uint64_t i = 0; i < layout->rows; i++) out[j * layout->rows + i] = bf16_to_f32(x[j * layout->ld + i]);
    return out;
}
float cuda_emu_device_math(float correct, int max_ulps, float x, float y) {
    static const int on = getenv("CUDA_EMU_MATH") && strcmp(getenv("CUDA_EMU_MATH"), "ulp") == 0;
    if (!on || !kernel_body || !isfinite(correct) || correct == 0.0f || correct == 1.0f) return correct;
    uint32_t bx, by;
    memcpy(&bx, &x, 4);
    memcpy(&by, &y, 4);
    uint64_t h = ((uint64_t)bx << 32 | by) * 0x9e3779b97f4a7c15ull; /* Fibonacci hashing: the ulps from the arguments */
    int ulps = (int)((h >> 40) % (uint64_t)(2 * max_ulps + 1)) - max_ulps;
    for (; ulps > 0; ulps--) correct = nextafterf(correct, INFINITY);
    for (; ulps < 0; ulps++) correct = nextafterf(correct, -INFINITY);
    return correct;
}

/* CUDA_EMU_GEMM=truncate: cuBLASLt's bf16 GEMMs sum as tensor cores may, instead of as the CPU does: the products
 * (exact) in groups of 4 added to the fp32 accumulator, rounding toward zero, and beta C added after (the op test's
 * classifier input gradient, a sum over 32,000 products, is 4.2e-5 off this way, against 6.4e-7 in OpenBLAS's order).
 */
extern "C" int cuda_emu_gemm_truncates(void) {
    static const int truncates = getenv("CUDA_EMU_GEMM") && strcmp(getenv("CUDA_EMU_GEMM"), "truncate") == 0;
    return truncates;
}
static float toward_zero(double x) {
    float r = (float)x;
    return fabs((double)r) > fabs(x) ? nextafterf(r, 0.0f) : r;
}
/* column-major out[m,n] = alpha op(A)[m,k] op(B)[k,n] + beta out, A and B compact (leading dimension their rows) */
static void truncating_gemm(cublasLtMatmulDesc_t desc, uint64_t m, uint64_t n, uint64_t k, float alpha, const float *A,
                            uint64_t a_rows, const float *B, uint64_t b_rows, float beta, float *out, int ld_out) {
    bool ta = desc->op_a != CUBLAS_OP_N, tb = desc->op_b != CUBLAS_OP_N;
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t i = 0; i < m; i++) {
            float acc = 0.0f;
            for (uint64_t k0 = 0; k0 < k; k0 += 4) {
                double group = 0.0;
                for (uint64_t p = k0; p < k0 + 4 && p < k; p++)
                    group += (double)(ta ? A[p + i * a_rows] : A[i + p * a_rows]) *
                             (tb ? B[j + p * b_rows] : B[p + j * b_rows]);
                acc = toward_zero((double)acc + group);
            }
            float *o = &out[i + j * (uint64_t)ld_out];
            *o = alpha * acc + (beta != 0.0f ? beta * *o : 0.0f);
        }
}
cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t a, const void *B, cublasLtMatrixLayout_t b, const void *beta,
                              const void *C, cublasLtMatrixLayout_t c, void *D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t *algo, void *, size_t, cudaStream_t) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    /* CUDA_EMU_LT_REFUSE_FIRST=1: the heuristic's first algorithm is refused, as a library may, so that the caller's
     * fallback to the next runs */
    static const int refuse_first =
        getenv("CUDA_EMU_LT_REFUSE_FIRST") && strcmp(getenv("CUDA_EMU_LT_REFUSE_FIRST"), "0");
    if (refuse_first && algo && algo->data[4] == 0) return CUBLAS_STATUS_NOT_SUPPORTED;
    /* CUDA_EMU_LT_SLOW_FIRST=1 (read at each call): the heuristic's first algorithm takes 2 ms more than the others,
     * so that --gemm-tune's timing has a slower one to drop */
    const char *slow_first = getenv("CUDA_EMU_LT_SLOW_FIRST");
    if (slow_first && strcmp(slow_first, "0") && algo && algo->data[4] == 0) {
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        do clock_gettime(CLOCK_MONOTONIC, &t);
        while ((double)(t.tv_sec - t0.tv_sec) + 1e-9 * (double)(t.tv_nsec - t0.tv_nsec) < 2e-3);
    }
    /* as on a GPU, an algorithm chosen for more alignment than a pointer has fails (no algo: the default 256) */
    const void *operands[4] = {A, B, C, D};
    for (int i = 0; i < 4; i++) {
        uint64_t need = algo ? algo->data[i] : 256;
        if (need == 0 || (uintptr_t)operands[i] % need != 0) {
            fprintf(stderr,
                    "cuda_emu: cublasLtMatmul: operand %c at %p is not %llu-byte aligned as its algorithm "
                    "requires (set CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*)\n",
                    "ABCD"[i], operands[i], (unsigned long long)need);
            return CUBLAS_STATUS_INVALID_VALUE;
        }
    }
    if (!lt_supported(desc, a, b, c, d)) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (C != D || c->rows != d->rows || c->cols != d->cols || c->ld != d->ld) return CUBLAS_STATUS_NOT_SUPPORTED;
    uint64_t m = c->rows, n = c->cols;
    uint64_t k = desc->op_a == CUBLAS_OP_N ? a->cols : a->rows;
    /* op(A) must be m x k and op(B) k x n */
    if ((desc->op_a == CUBLAS_OP_N ? a->rows : a->cols) != m || (desc->op_b == CUBLAS_OP_N ? b->rows : b->cols) != k ||
        (desc->op_b == CUBLAS_OP_N ? b->cols : b->rows) != n)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    /* the descriptors and host scalars as they are at the call, as a captured GEMM keeps them */
    cublasLtMatmulDescOpaque dc = *desc;
    cublasLtMatrixLayoutOpaque la = *a, lb = *b, ld = *d;
    float al = *(const float *)alpha, be = *(const float *)beta;
    cuda_emu_enqueue(0, [=]() mutable {
        DeviceAccess access;
        std::vector<float> wa = widen_bf16(A, &la), wb = widen_bf16(B, &lb);
        bool narrow = ld.type == CUDA_R_16BF; /* summed in fp32, then rounded once into D */
        std::vector<float> wd = narrow ? widen_bf16(D, &ld) : std::vector<float>();
        float *out = narrow ? wd.data() : (float *)D;
        int ld_out = narrow ? (int)ld.rows : (int)ld.ld;
        if (cuda_emu_gemm_truncates())
            truncating_gemm(&dc, m, n, k, al, wa.data(), la.rows, wb.data(), lb.rows, be, out, ld_out);
        else
            cblas_sgemm(CblasColMajor, dc.op_a == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                        dc.op_b == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, (int)m, (int)n, (int)k, al, wa.data(),
                        (int)la.rows, wb.data(), (int)lb.rows, be, out, ld_out);
        if (narrow)
            for (uint64_t j = 0; j < n; j++)
                for (uint64_t i = 0; i < m; i++) ((uint16_t *)D)[j * ld.ld + i] = f32_to_bf16(wd[j * m + i]);
    });
    return CUBLAS_STATUS_SUCCESS;
}
