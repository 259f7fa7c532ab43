/* Data-parallel training over MPI ranks (`mpirun -np N medusa-train ...`, also across nodes): every rank holds the
 * frozen base and the heads and takes its share of each optimizer step's batches; the head gradients and the step's
 * statistics are summed over the ranks before the step, so all ranks apply the same update. Rank 0 alone logs,
 * evaluates, checkpoints and exports. Built without MPI, or started without an MPI launcher, a run is one rank and
 * nothing here communicates. */
#ifndef MEDUSA_DIST_H
#define MEDUSA_DIST_H

#include <stddef.h>
#include <stdint.h>

/* Joins the MPI job when an MPI launcher started the process (and the build has MPI); quiets the log of ranks > 0. */
void dist_init(int *argc, char ***argv);
/* Leaves the MPI job (after a clean end; a rank that exits otherwise ends the whole job through the launcher). */
void dist_finalize(void);
int dist_rank(void);
int dist_size(void);

/* Sums over the ranks, in place on every rank (host memory). */
void dist_sum_floats(float *x, size_t n);
void dist_sum_doubles(double *x, size_t n);
void dist_sum_int64(int64_t *x, size_t n);
/* The largest of every rank's value (a decision any rank may take, such as stopping, taken by all). */
int dist_max_int(int x);
/* Fatal on every rank whose text differs from rank 0's (the settings of a run, say), naming what. */
void dist_check_same(const char *what, const char *text);

#endif
