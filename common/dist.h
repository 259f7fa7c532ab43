/* Processes of one run over MPI (`mpirun -np N medusa-train ...`, also across nodes): the only code that speaks MPI.
 * Ranks form pipelines of `stages` consecutive ranks (medusa-train --pipeline; 1 by default): rank r is stage
 * r % stages of pipeline r / stages. Each pipeline holds one copy of the frozen base, its layers divided over its
 * stages; the pipelines share the data (data parallelism). Built without MPI, or started without an MPI launcher, a
 * run is one rank and nothing here communicates. */
#ifndef MEDUSA_DIST_H
#define MEDUSA_DIST_H

#include <stddef.h>
#include <stdint.h>

/* Joins the MPI job when an MPI launcher started the process (and the build has MPI); quiets the log of ranks > 0. */
void dist_init(int *argc, char ***argv);
/* Leaves the MPI job (after a clean end; a rank that exits otherwise ends the whole job through the launcher), first
 * calling the functions given to dist_at_finalize, last given first. */
void dist_finalize(void);
/* fn runs in dist_finalize while MPI still works (a layer above closing what it opened over MPI: train/collective.c's
 * device communicators); at most 8. */
void dist_at_finalize(void (*fn)(void));
int dist_rank(void);
int dist_size(void);

/* Divides the ranks into pipelines of `stages` (every rank calls it with the same value before any group's collective;
 * fatal when the ranks are not a multiple of it). Until then every rank is a pipeline of one stage. */
void dist_set_stages(int stages);
int dist_stages(void);    /* stages of a pipeline */
int dist_stage(void);     /* this rank's stage in its pipeline */
int dist_pipelines(void); /* pipelines: the data-parallel width */
int dist_pipeline(void);  /* this rank's pipeline */
/* The rank that speaks for the run (prints, logs, writes checkpoints and exports): the last stage of pipeline 0, which
 * holds the heads (rank 0 without pipelines). */
int dist_lead_rank(void);

typedef enum {
    DIST_WORLD, /* every rank */
    DIST_STAGE, /* the ranks at this rank's stage, one per pipeline: the last stage's sum the heads' gradients */
    DIST_PIPE,  /* the stages of this rank's pipeline */
} DistGroup;
int dist_group_rank(DistGroup g);
int dist_group_size(DistGroup g);

/* Sums over a group's ranks, in place on each (host memory). */
void dist_sum_floats(DistGroup g, float *x, size_t n);
void dist_sum_doubles(DistGroup g, double *x, size_t n);
void dist_sum_int64(DistGroup g, int64_t *x, size_t n);
/* The same sum started and left to run (MPI_Iallreduce): x must stay untouched until dist_wait returns, which ends the
 * request. NULL where there is nothing to wait for (a group of one). */
typedef struct DistRequest DistRequest;
DistRequest *dist_sum_floats_start(DistGroup g, float *x, size_t n);
void dist_wait(DistRequest *r);
/* The largest of every rank's value (a decision any rank may take, such as stopping, taken by all). */
int dist_max_int(int x);
/* Bytes of the group's rank `root` copied to every rank of the group (host memory). */
void dist_bcast(DistGroup g, void *x, size_t bytes, int root);
/* Floats to or from another stage of this rank's pipeline (host memory; blocks until the other side takes them). */
void dist_send_floats(const float *x, size_t n, int stage);
void dist_recv_floats(float *x, size_t n, int stage);
/* Fatal on every rank whose text differs from rank 0's (the settings of a run, say), naming what. */
void dist_check_same(const char *what, const char *text);

#endif
