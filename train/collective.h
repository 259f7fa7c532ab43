/* Collectives on backend memory between the ranks of a run (common/dist.h's groups): the heads' gradients summed over
 * the pipelines, the residual stream passed from one pipeline stage to the next. Through host memory and MPI. */
#ifndef MEDUSA_COLLECTIVE_H
#define MEDUSA_COLLECTIVE_H

#include "../common/dist.h"
#include "../kernels/ops.h"

/* Sums x [n] (backend memory) over the group's ranks, in place on each. */
void collective_sum(const Backend *be, DistGroup g, float *x, size_t n);
/* x [n] (backend memory) to / from another stage of this rank's pipeline. */
void collective_send(const Backend *be, const float *x, size_t n, int stage);
void collective_recv(const Backend *be, float *x, size_t n, int stage);

#endif
