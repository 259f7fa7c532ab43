/* NCCL stand-in for the CUDA emulator: the calls kernels/cuda/comm.cu makes, over MPI (nccl_emu.cpp), so that the
 * emulated build runs comm.cu's real code paths across the ranks of an mpirun (tests/e2e_mpi_cuda.sh) and in one
 * process (tests/test_cuda_ops.c). The emulated build puts this directory first on the include path.
 *   - ncclGetUniqueId: the calling process's MPI_COMM_WORLD rank and a serial number (NCCL's id holds its root's
 *     address: the same rendezvous). Without MPI (a process not started by mpirun) only communicators of one rank.
 *   - ncclCommInitRankConfig: the ranks send their (rank, world rank) to the id's root, which answers with the list;
 *     all make an MPI communicator of them (MPI_Comm_create_group: collective over those ranks only, as NCCL's init).
 *     The id's root must be one of them, as comm.cu's callers ensure (group rank 0 makes the id).
 *   - ncclAllReduce (fp32 sum): MPI_Allreduce on a host copy of the emulated device memory (cudaMemcpy both ways);
 *     ncclSend / ncclRecv: MPI_Send / MPI_Recv the same way. Every operation is done when the call returns (the
 *     emulator has no concurrency: streams are always idle), and ncclCommGetAsyncError always answers ncclSuccess;
 *     MPI's own errors end the job (MPI_ERRORS_ARE_FATAL).
 * Not emulated: non-blocking progress (ncclInProgress), groups (ncclGroupStart/End), other types and operations
 * (they return ncclInvalidArgument). */
#ifndef MEDUSA_NCCL_EMU_H
#define MEDUSA_NCCL_EMU_H

#include <stddef.h>

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
} ncclResult_t;

#define NCCL_UNIQUE_ID_BYTES 128
typedef struct {
    char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;
typedef struct ncclComm *ncclComm_t;
typedef enum { ncclFloat = 7 } ncclDataType_t;
typedef enum { ncclSum = 0 } ncclRedOp_t;
typedef struct {
    int blocking;
} ncclConfig_t;
#define NCCL_CONFIG_INITIALIZER                                                                                        \
    { 1 }

const char *ncclGetErrorString(ncclResult_t result);
const char *ncclGetLastError(ncclComm_t comm);
ncclResult_t ncclGetUniqueId(ncclUniqueId *id);
ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t *config);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async_error);
ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream);
ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream);
ncclResult_t ncclCommFinalize(ncclComm_t comm);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommAbort(ncclComm_t comm);

#endif
