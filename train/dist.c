#include "dist.h"

#include <stdlib.h>
#include <string.h>

#include "../common/common.h"

#ifdef MEDUSA_MPI
#include <mpi.h>

static int rank, size = 1, joined;

/* a launcher's environment: OpenMPI's mpirun, or a PMI launcher (Slurm's srun, MPICH's Hydra) */
static int launched_by_mpi(void) { return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK"); }

void dist_init(int *argc, char ***argv) {
    if (!launched_by_mpi()) return;
    if (MPI_Init(argc, argv) != MPI_SUCCESS) fatal("MPI_Init failed");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL); /* a failed call ends the job, never hangs it */
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    joined = 1;
    if (rank > 0) log_verbosity = 0; /* rank 0 speaks for the run; errors are printed by any rank */
}

void dist_finalize(void) {
    if (joined) MPI_Finalize();
    joined = 0;
}

int dist_rank(void) { return rank; }
int dist_size(void) { return size; }

/* MPI counts are ints: large arrays go in slices */
static void sum(void *x, size_t n, size_t elem, MPI_Datatype type) {
    const size_t slice = (size_t)1 << 28;
    for (size_t i = 0; i < n; i += slice) {
        size_t m = n - i < slice ? n - i : slice;
        MPI_Allreduce(MPI_IN_PLACE, (char *)x + i * elem, (int)m, type, MPI_SUM, MPI_COMM_WORLD);
    }
}

void dist_sum_floats(float *x, size_t n) {
    if (size > 1) sum(x, n, sizeof *x, MPI_FLOAT);
}
void dist_sum_doubles(double *x, size_t n) {
    if (size > 1) sum(x, n, sizeof *x, MPI_DOUBLE);
}
void dist_sum_int64(int64_t *x, size_t n) {
    if (size > 1) sum(x, n, sizeof *x, MPI_INT64_T);
}

int dist_max_int(int x) {
    if (size > 1) MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return x;
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
void dist_finalize(void) {}
int dist_rank(void) { return 0; }
int dist_size(void) { return 1; }
void dist_sum_floats(float *x, size_t n) { (void)x, (void)n; }
void dist_sum_doubles(double *x, size_t n) { (void)x, (void)n; }
void dist_sum_int64(int64_t *x, size_t n) { (void)x, (void)n; }
int dist_max_int(int x) { return x; }
void dist_check_same(const char *what, const char *text) { (void)what, (void)text; }

#endif
