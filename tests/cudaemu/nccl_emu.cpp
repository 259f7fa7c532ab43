/* The NCCL stand-in over MPI (nccl.h says what it does and does not emulate). */
#define OMPI_SKIP_MPICXX 1
#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include <vector>

#include "cuda_emu.h"
#include "nccl.h"

struct ncclComm {
    MPI_Comm mpi; /* MPI_COMM_NULL for a communicator of one rank */
    int rank, size;
};

namespace {

/* the id: a tag, then the root's world rank and its serial number */
const char kMagic[8] = "ncclemu";
struct Id {
    char magic[8];
    int root, serial;
};
const int kTagBase = 0x4e43; /* the rendezvous' messages on MPI_COMM_WORLD, a tag per id */

bool mpi_running(void) {
    int init = 0, done = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&done);
    return init && !done;
}

/* MPI counts are ints: large arrays go in slices */
const size_t kSlice = (size_t)1 << 28;

} // namespace

const char *ncclGetErrorString(ncclResult_t result) {
    switch (result) {
    case ncclSuccess:
        return "no error";
    case ncclInvalidArgument:
        return "invalid argument";
    case ncclInvalidUsage:
        return "invalid usage";
    case ncclInProgress:
        return "in progress";
    default:
        return "unhandled error";
    }
}
const char *ncclGetLastError(ncclComm_t) { return ""; }

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    static int serial;
    Id emu;
    memcpy(emu.magic, kMagic, sizeof kMagic);
    emu.root = -1;
    if (mpi_running()) MPI_Comm_rank(MPI_COMM_WORLD, &emu.root);
    emu.serial = serial++;
    memset(id, 0, sizeof *id);
    memcpy(id->internal, &emu, sizeof emu);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t *) {
    Id emu;
    memcpy(&emu, id.internal, sizeof emu);
    if (memcmp(emu.magic, kMagic, sizeof kMagic) || nranks < 1 || rank < 0 || rank >= nranks)
        return ncclInvalidArgument;
    ncclComm *c = new ncclComm{MPI_COMM_NULL, rank, nranks};
    if (nranks > 1) {
        if (!mpi_running() || emu.root < 0) {
            delete c;
            return ncclInvalidUsage; /* several ranks need MPI */
        }
        int world, tag = kTagBase + emu.serial % 4096;
        MPI_Comm_rank(MPI_COMM_WORLD, &world);
        std::vector<int> members((size_t)nranks, -1);
        if (world == emu.root) { /* the others' (rank, world rank), then the list to each */
            members[(size_t)rank] = world;
            for (int i = 1; i < nranks; i++) {
                int pair[2];
                MPI_Recv(pair, 2, MPI_INT, MPI_ANY_SOURCE, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                if (pair[0] < 0 || pair[0] >= nranks || members[(size_t)pair[0]] >= 0) {
                    fprintf(stderr, "nccl stand-in: rank %d joined twice or is out of range\n", pair[0]);
                    MPI_Abort(MPI_COMM_WORLD, 1);
                }
                members[(size_t)pair[0]] = pair[1];
            }
            for (int r = 0; r < nranks; r++)
                if (r != rank) MPI_Send(members.data(), nranks, MPI_INT, members[(size_t)r], tag, MPI_COMM_WORLD);
        } else {
            int pair[2] = {rank, world};
            MPI_Send(pair, 2, MPI_INT, emu.root, tag, MPI_COMM_WORLD);
            MPI_Recv(members.data(), nranks, MPI_INT, emu.root, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        }
        MPI_Group all, group;
        MPI_Comm_group(MPI_COMM_WORLD, &all);
        MPI_Group_incl(all, nranks, members.data(), &group);
        MPI_Comm_create_group(MPI_COMM_WORLD, group, tag, &c->mpi);
        MPI_Group_free(&group);
        MPI_Group_free(&all);
        int got = -1;
        MPI_Comm_rank(c->mpi, &got);
        if (got != rank) {
            fprintf(stderr, "nccl stand-in: rank %d of the new communicator is MPI rank %d\n", rank, got);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
    }
    *comm = c;
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async_error) {
    if (!comm) return ncclInvalidArgument;
    *async_error = ncclSuccess;
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t) {
    if (!comm || type != ncclFloat || op != ncclSum) return ncclInvalidArgument;
    if (comm->size == 1) {
        if (sendbuff != recvbuff && count)
            cudaMemcpy(recvbuff, sendbuff, sizeof(float) * count, cudaMemcpyDeviceToDevice);
        return ncclSuccess;
    }
    std::vector<float> host(count);
    cudaMemcpy(host.data(), sendbuff, sizeof(float) * count, cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < count; i += kSlice)
        MPI_Allreduce(MPI_IN_PLACE, host.data() + i, (int)(count - i < kSlice ? count - i : kSlice), MPI_FLOAT, MPI_SUM,
                      comm->mpi);
    cudaMemcpy(recvbuff, host.data(), sizeof(float) * count, cudaMemcpyHostToDevice);
    return ncclSuccess;
}

ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t) {
    if (!comm || type != ncclFloat || peer < 0 || peer >= comm->size || peer == comm->rank) return ncclInvalidArgument;
    std::vector<float> host(count);
    cudaMemcpy(host.data(), sendbuff, sizeof(float) * count, cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < count; i += kSlice)
        MPI_Send(host.data() + i, (int)(count - i < kSlice ? count - i : kSlice), MPI_FLOAT, peer, 0, comm->mpi);
    return ncclSuccess;
}

ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t) {
    if (!comm || type != ncclFloat || peer < 0 || peer >= comm->size || peer == comm->rank) return ncclInvalidArgument;
    std::vector<float> host(count);
    for (size_t i = 0; i < count; i += kSlice)
        MPI_Recv(host.data() + i, (int)(count - i < kSlice ? count - i : kSlice), MPI_FLOAT, peer, 0, comm->mpi,
                 MPI_STATUS_IGNORE);
    cudaMemcpy(recvbuff, host.data(), sizeof(float) * count, cudaMemcpyHostToDevice);
    return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) { return comm ? ncclSuccess : ncclInvalidArgument; }

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (!comm) return ncclInvalidArgument;
    if (comm->mpi != MPI_COMM_NULL && mpi_running()) MPI_Comm_free(&comm->mpi);
    delete comm;
    return ncclSuccess;
}

/* the MPI communicator is left as it is: freeing it is collective, and an abort is followed by the end of the job */
ncclResult_t ncclCommAbort(ncclComm_t comm) {
    if (!comm) return ncclInvalidArgument;
    delete comm;
    return ncclSuccess;
}
