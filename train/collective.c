#include "collective.h"

#include <stdio.h>
#include <stdlib.h>

#include "../common/common.h"

#define N_GROUPS 3 /* DistGroup's values */

static struct {
    const Backend *be;
    void *comm;            /* the backend's communicator for the group, once opened */
    DistRequest **pending; /* host memory: the MPI sums started and not yet waited for */
    int n_pending, capacity;
} groups[N_GROUPS];

static void close_comms(void) {
    for (int g = 0; g < N_GROUPS; g++) {
        if (groups[g].comm) groups[g].be->comm_close(groups[g].comm);
        groups[g].comm = NULL;
    }
}

/* The backend's communicator for the group (opened at its first use, collectively over its ranks), or NULL where the
 * backend has none or the group is one rank */
static void *group_comm(const Backend *be, DistGroup g) {
    if (!be->comm_open || dist_group_size(g) == 1) return NULL;
    if (groups[g].comm) {
        if (groups[g].be != be) fatal("collective: one group's communicator used with two backends");
        return groups[g].comm;
    }
    static const char *const what[N_GROUPS] = {"all ranks", "the ranks of stage", "the stages of pipeline"};
    char name[96];
    int size = dist_group_size(g);
    if (g == DIST_WORLD) snprintf(name, sizeof name, "%s (%d)", what[g], size);
    else
        snprintf(name, sizeof name, "%s %d (%d ranks)", what[g], g == DIST_STAGE ? dist_stage() : dist_pipeline(),
                 size);
    unsigned char *id = xcalloc(1, be->comm_id_bytes);
    if (dist_group_rank(g) == 0) be->comm_new_id(id);
    dist_bcast(g, id, be->comm_id_bytes, 0);
    void *comm = be->comm_open(id, dist_group_rank(g), size, name);
    free(id);
    static int registered;
    if (!registered) dist_at_finalize(close_comms), registered = 1;
    groups[g].be = be, groups[g].comm = comm;
    if (g == DIST_STAGE)
        log_info("gradients summed by %s on the device over %d ranks, a head at a time as its backward ends",
                 be->comm_library, size);
    else log_info("%s: %s on the device", name, be->comm_library);
    return comm;
}

void collective_sum_start(const Backend *be, DistGroup g, float *x, size_t n) {
    if (dist_group_size(g) == 1) return;
    void *comm = group_comm(be, g);
    if (comm) {
        be->comm_sum(comm, x, n);
        return;
    }
    if (be->is_host) {
        DistRequest *r = dist_sum_floats_start(g, x, n);
        if (!r) return;
        if (groups[g].n_pending == groups[g].capacity) {
            groups[g].capacity = groups[g].capacity ? 2 * groups[g].capacity : 16;
            groups[g].pending = xrealloc(groups[g].pending, sizeof(DistRequest *) * (size_t)groups[g].capacity);
        }
        groups[g].pending[groups[g].n_pending++] = r;
        return;
    }
    float *host = xmalloc(sizeof(float) * n);
    be->download(host, x, sizeof(float) * n);
    dist_sum_floats(g, host, n);
    be->upload(x, host, sizeof(float) * n);
    free(host);
}

void collective_wait(const Backend *be, DistGroup g) {
    if (groups[g].comm) be->comm_wait(groups[g].comm);
    for (int i = 0; i < groups[g].n_pending; i++) dist_wait(groups[g].pending[i]);
    groups[g].n_pending = 0;
}

void collective_send(const Backend *be, const float *x, size_t n, int stage) {
    void *comm = group_comm(be, DIST_PIPE);
    if (comm) {
        be->comm_send(comm, x, n, stage);
        be->comm_wait(comm);
        return;
    }
    if (be->is_host) {
        dist_send_floats(x, n, stage);
        return;
    }
    float *host = xmalloc(sizeof(float) * n);
    be->download(host, x, sizeof(float) * n);
    dist_send_floats(host, n, stage);
    free(host);
}

void collective_recv(const Backend *be, float *x, size_t n, int stage) {
    void *comm = group_comm(be, DIST_PIPE);
    if (comm) {
        be->comm_recv(comm, x, n, stage);
        be->comm_wait(comm);
        return;
    }
    if (be->is_host) {
        dist_recv_floats(x, n, stage);
        return;
    }
    float *host = xmalloc(sizeof(float) * n);
    dist_recv_floats(host, n, stage);
    be->upload(x, host, sizeof(float) * n);
    free(host);
}
