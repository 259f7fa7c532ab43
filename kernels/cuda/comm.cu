/* Collectives between processes on device memory (Backend.comm_*, used by train/collective.c): NCCL, in builds that
 * define MEDUSA_NCCL (the Makefile does where it finds nccl.h and libnccl; the emulated build compiles this file
 * against tests/cudaemu/nccl.h, a stand-in over MPI). Without it the fields stay NULL and collectives go through host
 * memory and MPI.
 *
 * Each communicator has its own stream, created non-blocking so that it has no implicit order with the default stream
 * the ops run on: a collective is queued there behind an event recorded on the default stream (so it reads what the
 * work queued before it wrote), and the default stream's later work goes on meanwhile; the trainer's per-head gradient
 * sums thus overlap the next head's backward. comm_wait records an event on the communicator's stream, waits for it
 * on the host, and orders the default stream after it.
 *
 * Communicators are non-blocking (ncclConfig_t.blocking = 0): no NCCL call waits for the other ranks. Every call's
 * result is checked, naming the call; a call in progress and every wait poll ncclCommGetAsyncError (and the event)
 * until done, an error, or MEDUSA_NCCL_TIMEOUT seconds (default 300), after which the communicator is aborted
 * (ncclCommAbort) and the run stops with a message naming the communicator and the operation: a dead or stuck peer
 * never hangs a run. */
#include "cuda_common.cuh"

#ifdef MEDUSA_NCCL
#include <nccl.h>
#include <stdlib.h>
#include <time.h>

struct Comm {
    ncclComm_t nccl;
    cudaStream_t stream;     /* the communicator's own, non-blocking */
    cudaEvent_t ready, done; /* the default stream's queued work; the communicator's */
    int rank, size;
    char name[96];  /* what it is for (train/collective.c) */
    char last[128]; /* the last operation queued, for the messages */
};

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double timeout_seconds(void) {
    static double seconds = -1;
    if (seconds < 0) {
        const char *env = getenv("MEDUSA_NCCL_TIMEOUT");
        char *end = NULL;
        seconds = env ? strtod(env, &end) : 300;
        if (env && (end == env || *end || !(seconds > 0)))
            fatal("MEDUSA_NCCL_TIMEOUT=%s: expected a number of seconds above 0", env);
    }
    return seconds;
}

/* aborts the communicator (its kernels stop waiting for peers) and stops the run */
MEDUSA_NORETURN static void comm_fail(Comm *c, const char *what, const char *why) {
    if (c->nccl) (void)ncclCommAbort(c->nccl);
    fatal("nccl: %s on %s (rank %d of %d): %s; communicator aborted", what, c->name, c->rank, c->size, why);
}

/* Until no call is in progress on the communicator and, with an event, the device has reached it (polling) */
static void settle(Comm *c, const char *what, cudaEvent_t event) {
    double start = seconds_now(), limit = timeout_seconds();
    for (long polls = 0;; polls++) {
        ncclResult_t state = ncclSuccess, r = ncclCommGetAsyncError(c->nccl, &state);
        char why[320];
        if (r != ncclSuccess) {
            snprintf(why, sizeof why, "ncclCommGetAsyncError: %s", ncclGetErrorString(r));
            comm_fail(c, what, why);
        }
        if (state != ncclSuccess && state != ncclInProgress) {
            snprintf(why, sizeof why, "%s (%s)", ncclGetErrorString(state), ncclGetLastError(c->nccl));
            comm_fail(c, what, why);
        }
        if (state == ncclSuccess) {
            if (!event) return;
            cudaError_t e = cudaEventQuery(event);
            if (e == cudaSuccess) return;
            if (e != cudaErrorNotReady) {
                snprintf(why, sizeof why, "cudaEventQuery: %s", cudaGetErrorString(e));
                comm_fail(c, what, why);
            }
        }
        if (seconds_now() - start > limit) {
            snprintf(why, sizeof why,
                     "not done after %.0f s (MEDUSA_NCCL_TIMEOUT): another rank is dead or stuck, or the ranks did not "
                     "call the same collectives",
                     limit);
            comm_fail(c, what, why);
        }
        if (polls >= 1000) { /* after a short spin, a poll every 100 us */
            struct timespec pause = {0, 100000};
            nanosleep(&pause, NULL);
        }
    }
}

/* every NCCL call on a communicator: its result checked, one in progress waited for */
static void nccl_call(Comm *c, ncclResult_t r, const char *call) {
    if (r == ncclInProgress) settle(c, call, NULL);
    else if (r != ncclSuccess) comm_fail(c, call, ncclGetErrorString(r));
}
#define NCCL_CALL(c, call) nccl_call((c), (call), #call)

static void cuda_comm_new_id(void *id) {
    ncclUniqueId uid;
    ncclResult_t r = ncclGetUniqueId(&uid);
    if (r != ncclSuccess) fatal("nccl: ncclGetUniqueId: %s", ncclGetErrorString(r));
    memcpy(id, &uid, sizeof uid);
}

static void *cuda_comm_open(const void *id, int rank, int size, const char *name) {
    Comm *c = (Comm *)xcalloc(1, sizeof *c);
    c->rank = rank, c->size = size;
    snprintf(c->name, sizeof c->name, "%s", name);
    ncclUniqueId uid;
    memcpy(&uid, id, sizeof uid);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0; /* returns at once; settle() waits with the timeout */
    NCCL_CALL(c, ncclCommInitRankConfig(&c->nccl, size, uid, rank, &config));
    settle(c, "ncclCommInitRankConfig", NULL);
    CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&c->done, cudaEventDisableTiming));
    return c;
}

/* the communicator's stream waits for the work queued so far on the backend's stream */
static Comm *after_queued_work(void *comm) {
    Comm *c = (Comm *)comm;
    CUDA_CHECK(cudaEventRecord(c->ready, cuda_stream()));
    CUDA_CHECK(cudaStreamWaitEvent(c->stream, c->ready, 0));
    return c;
}

static void cuda_comm_sum(void *comm, float *x, size_t n) {
    Comm *c = after_queued_work(comm);
    snprintf(c->last, sizeof c->last, "ncclAllReduce (sum of %zu floats)", n);
    NCCL_CALL(c, ncclAllReduce(x, x, n, ncclFloat, ncclSum, c->nccl, c->stream));
}

static void cuda_comm_send(void *comm, const float *x, size_t n, int peer) {
    Comm *c = after_queued_work(comm);
    snprintf(c->last, sizeof c->last, "ncclSend (%zu floats to rank %d)", n, peer);
    NCCL_CALL(c, ncclSend(x, n, ncclFloat, peer, c->nccl, c->stream));
}

static void cuda_comm_recv(void *comm, float *x, size_t n, int peer) {
    Comm *c = after_queued_work(comm);
    snprintf(c->last, sizeof c->last, "ncclRecv (%zu floats from rank %d)", n, peer);
    NCCL_CALL(c, ncclRecv(x, n, ncclFloat, peer, c->nccl, c->stream));
}

static void cuda_comm_wait(void *comm) {
    Comm *c = (Comm *)comm;
    CUDA_CHECK(cudaEventRecord(c->done, c->stream));
    char what[160];
    snprintf(what, sizeof what, "waiting for %s", c->last[0] ? c->last : "its operations");
    settle(c, what, c->done);
    CUDA_CHECK(cudaStreamWaitEvent(cuda_stream(), c->done, 0)); /* reached already: the backend's order, stated */
}

static void cuda_comm_close(void *comm) {
    Comm *c = (Comm *)comm;
    cuda_comm_wait(c);
    NCCL_CALL(c, ncclCommFinalize(c->nccl));
    settle(c, "ncclCommFinalize", NULL);
    ncclResult_t r = ncclCommDestroy(c->nccl);
    if (r != ncclSuccess) fatal("nccl: ncclCommDestroy on %s: %s", c->name, ncclGetErrorString(r));
    CUDA_CHECK(cudaEventDestroy(c->ready));
    CUDA_CHECK(cudaEventDestroy(c->done));
    CUDA_CHECK(cudaStreamDestroy(c->stream));
    free(c);
}

void cuda_comm_setup(Backend *b) {
    b->comm_library = "NCCL";
    b->comm_id_bytes = sizeof(ncclUniqueId);
    b->comm_new_id = cuda_comm_new_id;
    b->comm_open = cuda_comm_open;
    b->comm_sum = cuda_comm_sum;
    b->comm_send = cuda_comm_send;
    b->comm_recv = cuda_comm_recv;
    b->comm_wait = cuda_comm_wait;
    b->comm_close = cuda_comm_close;
}

#else /* no NCCL: collectives through host memory and MPI */

void cuda_comm_setup(Backend *b) { (void)b; }

#endif
