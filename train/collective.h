/* Collectives on backend memory between the ranks of a run (common/dist.h's groups): the heads' gradients summed over
 * the pipelines, the residual stream passed from one pipeline stage to the next. On the backend's own collectives where
 * it has them (Backend.comm_*: NCCL on CUDA), one communicator per group opened at the group's first collective
 * (its rank 0 makes the id, dist_bcast hands it to the others) and closed by dist_finalize; otherwise through host
 * memory and MPI. */
#ifndef MEDUSA_COLLECTIVE_H
#define MEDUSA_COLLECTIVE_H

#include "../common/dist.h"
#include "../kernels/ops.h"

/* Sums x [n] (backend memory) over the group's ranks, in place on each: started after the work queued on the backend
 * and left to run (the backend's communicator, or MPI_Iallreduce on host memory; the copy through host memory of a
 * device without them is done at once): x must not change until collective_wait(be, g) has returned, after which
 * every sum started in the group is done. */
void collective_sum_start(const Backend *be, DistGroup g, float *x, size_t n);
void collective_wait(const Backend *be, DistGroup g);
/* x [n] (backend memory) to / from another stage of this rank's pipeline. */
void collective_send(const Backend *be, const float *x, size_t n, int stage);
void collective_recv(const Backend *be, float *x, size_t n, int stage);

#endif
