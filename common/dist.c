#include "dist.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

static int rank, size = 1, stages = 1;

int dist_rank(void) { return rank; }
int dist_size(void) { return size; }
int dist_stages(void) { return stages; }
int dist_stage(void) { return rank % stages; }
int dist_pipelines(void) { return size / stages; }
int dist_pipeline(void) { return rank / stages; }
int dist_lead_rank(void) { return stages - 1; }

int dist_group_rank(DistGroup g) { return g == DIST_STAGE ? dist_pipeline() : g == DIST_PIPE ? dist_stage() : rank; }
int dist_group_size(DistGroup g) { return g == DIST_STAGE ? dist_pipelines() : g == DIST_PIPE ? stages : size; }

static void (*at_finalize[8])(void);
static int n_at_finalize;

void dist_at_finalize(void (*fn)(void)) {
    if (n_at_finalize == 8) fatal("dist_at_finalize: more than 8 functions");
    at_finalize[n_at_finalize++] = fn;
}

static void run_at_finalize(void) {
    while (n_at_finalize > 0) at_finalize[--n_at_finalize]();
}

#ifdef MEDUSA_MPI
#include <mpi.h>

static int joined, verbosity; /* the log's verbosity of the rank that speaks */
static MPI_Comm stage_comm = MPI_COMM_NULL, pipe_comm = MPI_COMM_NULL;

/* a launcher's environment: OpenMPI's mpirun, or a PMI launcher (Slurm's srun, MPICH's Hydra) */
static int launched_by_mpi(void) { return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK"); }

/* A rank that exits without dist_finalize (a fatal error) takes the whole job down at once, under any launcher (Slurm's
 * srun does not end a step's other tasks by itself), instead of leaving the others waiting in a collective. */
static void abort_job(void) {
    if (joined && size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
}

void dist_init(int *argc, char ***argv) {
    if (!launched_by_mpi()) return;
    if (MPI_Init(argc, argv) != MPI_SUCCESS) fatal("MPI_Init failed");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL); /* a failed call ends the job, never hangs it */
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    joined = 1;
    atexit(abort_job);
    verbosity = log_verbosity;
    if (rank > 0) log_verbosity = 0; /* the lead rank speaks for the run; errors are printed by any rank */
}

void dist_finalize(void) {
    run_at_finalize();
    if (stage_comm != MPI_COMM_NULL) MPI_Comm_free(&stage_comm), MPI_Comm_free(&pipe_comm);
    if (joined) MPI_Finalize();
    joined = 0;
}

void dist_set_stages(int n) {
    if (size == 1 && n > 1)
        fatal("--pipeline %d: this run is one process (start it with mpirun -np N, N a multiple of %d)", n, n);
    int most = dist_max_int(n), least = -dist_max_int(-n); /* every rank's value, before groups that hang on a split */
    if (most != least)
        fatal("rank %d of %d: --pipeline %d, but another rank has %d", rank, size, n, n == most ? least : most);
    if (n < 1 || size % n != 0)
        fatal("--pipeline %d: the %d ranks are not a whole number of pipelines of %d", n, size, n);
    stages = n;
    if (!joined) return;
    if (stage_comm != MPI_COMM_NULL) MPI_Comm_free(&stage_comm), MPI_Comm_free(&pipe_comm);
    MPI_Comm_split(MPI_COMM_WORLD, dist_stage(), rank, &stage_comm);
    MPI_Comm_split(MPI_COMM_WORLD, dist_pipeline(), rank, &pipe_comm);
    log_verbosity = rank == dist_lead_rank() ? verbosity : 0;
}

static MPI_Comm comm(DistGroup g) {
    if (g == DIST_WORLD || stage_comm == MPI_COMM_NULL) return MPI_COMM_WORLD;
    return g == DIST_STAGE ? stage_comm : pipe_comm;
}

/* MPI counts are ints: large arrays go in slices */
static const size_t slice = (size_t)1 << 28;

static void sum(DistGroup g, void *x, size_t n, size_t elem, MPI_Datatype type) {
    if (dist_group_size(g) == 1) return;
    for (size_t i = 0; i < n; i += slice) {
        size_t m = n - i < slice ? n - i : slice;
        MPI_Allreduce(MPI_IN_PLACE, (char *)x + i * elem, (int)m, type, MPI_SUM, comm(g));
    }
}

void dist_sum_floats(DistGroup g, float *x, size_t n) { sum(g, x, n, sizeof *x, MPI_FLOAT); }

struct DistRequest {
    int n;
    MPI_Request req[];
};

DistRequest *dist_sum_floats_start(DistGroup g, float *x, size_t n) {
    if (dist_group_size(g) == 1 || n == 0) return NULL;
    int slices = (int)((n + slice - 1) / slice);
    DistRequest *r = xmalloc(sizeof *r + sizeof(MPI_Request) * (size_t)slices);
    r->n = slices;
    for (int s = 0; s < slices; s++) {
        size_t i = (size_t)s * slice;
        MPI_Iallreduce(MPI_IN_PLACE, x + i, (int)(n - i < slice ? n - i : slice), MPI_FLOAT, MPI_SUM, comm(g),
                       &r->req[s]);
    }
    return r;
}

void dist_wait(DistRequest *r) {
    if (!r) return;
    MPI_Waitall(r->n, r->req, MPI_STATUSES_IGNORE);
    free(r);
}
void dist_sum_doubles(DistGroup g, double *x, size_t n) { sum(g, x, n, sizeof *x, MPI_DOUBLE); }
void dist_sum_int64(DistGroup g, int64_t *x, size_t n) { sum(g, x, n, sizeof *x, MPI_INT64_T); }

int dist_max_int(int x) {
    if (size > 1) MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return x;
}

void dist_bcast(DistGroup g, void *x, size_t bytes, int root) {
    if (dist_group_size(g) == 1) return;
    for (size_t i = 0; i < bytes; i += slice)
        MPI_Bcast((char *)x + i, (int)(bytes - i < slice ? bytes - i : slice), MPI_BYTE, root, comm(g));
}

void dist_send_floats(const float *x, size_t n, int stage) {
    for (size_t i = 0; i < n; i += slice)
        MPI_Send(x + i, (int)(n - i < slice ? n - i : slice), MPI_FLOAT, stage, 0, comm(DIST_PIPE));
}

void dist_recv_floats(float *x, size_t n, int stage) {
    for (size_t i = 0; i < n; i += slice)
        MPI_Recv(x + i, (int)(n - i < slice ? n - i : slice), MPI_FLOAT, stage, 0, comm(DIST_PIPE), MPI_STATUS_IGNORE);
}

void dist_check_same(const char *what, const char *text) {
    if (size == 1) return;
    int len = rank == 0 ? (int)strlen(text) + 1 : 0;
    MPI_Bcast(&len, 1, MPI_INT, 0, MPI_COMM_WORLD);
    char *first = xmalloc((size_t)len);
    if (rank == 0) memcpy(first, text, (size_t)len);
    MPI_Bcast(first, len, MPI_CHAR, 0, MPI_COMM_WORLD);
    int differs = strcmp(first, text) != 0, any = dist_max_int(differs);
    if (differs) fatal("rank %d of %d: its %s differ from rank 0's: %s vs %s", rank, size, what, text, first);
    free(first);
    if (any) fatal("rank %d of %d: another rank's %s differ from rank 0's", rank, size, what);
}

#else /* one rank */

void dist_init(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (getenv("OMPI_COMM_WORLD_SIZE") && atoi(getenv("OMPI_COMM_WORLD_SIZE")) > 1)
        fatal("started by mpirun with %s ranks, but this build has no MPI (install libopenmpi-dev: make deps, then "
              "rebuild)",
              getenv("OMPI_COMM_WORLD_SIZE"));
}
void dist_finalize(void) { run_at_finalize(); }
void dist_set_stages(int n) {
    if (n != 1) fatal("--pipeline %d: this run is one process (start it with mpirun -np N, N a multiple of %d)", n, n);
}
void dist_sum_floats(DistGroup g, float *x, size_t n) { (void)g, (void)x, (void)n; }
void dist_sum_doubles(DistGroup g, double *x, size_t n) { (void)g, (void)x, (void)n; }
void dist_sum_int64(DistGroup g, int64_t *x, size_t n) { (void)g, (void)x, (void)n; }
DistRequest *dist_sum_floats_start(DistGroup g, float *x, size_t n) {
    (void)g, (void)x, (void)n;
    return NULL;
}
void dist_wait(DistRequest *r) { (void)r; }
int dist_max_int(int x) { return x; }
void dist_bcast(DistGroup g, void *x, size_t bytes, int root) { (void)g, (void)x, (void)bytes, (void)root; }
void dist_send_floats(const float *x, size_t n, int stage) {
    (void)x, (void)n, (void)stage;
    fatal("dist_send_floats: one process has no other stage");
}
void dist_recv_floats(float *x, size_t n, int stage) {
    (void)x, (void)n, (void)stage;
    fatal("dist_recv_floats: one process has no other stage");
}
void dist_check_same(const char *what, const char *text) { (void)what, (void)text; }

#endif
