/*
 * parallel/comm_nccl.cu — the comm layer's NCCL path (see comm_nccl.h; comm.c calls it, comm.h is the API).
 *
 * Communicators. The world's is made from a unique id that rank 0 draws and comm.c broadcasts over MPI; each
 * parallel axis's is split from it (ncclCommSplit) with the color and key its MPI communicator was split with
 * (parallel/topology.c), so a rank has the same group rank in both (checked at the split).
 *
 * Streams and events. Each communicator has a non-blocking stream of its own, at the highest priority so that
 * communication kernels do not queue behind compute kernels. Starting an operation records an event on the
 * compute stream and makes the communicator's stream wait for it: the operation reads what compute queued
 * before the start wrote, and overwrites nothing that compute queued before the start still reads. The NCCL
 * call goes on the communicator's stream, and an event recorded after it goes into the handle. The wait makes
 * the compute stream wait for that event: compute queued after the wait sees the result, and the host never
 * blocks. Completion events come from a pool, taken at the start and given back at the wait (a stream's wait
 * binds to the event's latest record at the time of the wait call, so the event may be recorded again at once).
 *
 * Point-to-point. The operations of one communicator run one after another in the order they were issued (one
 * stream each), and a send larger than NCCL's buffers holds its stream until the peer's receive runs. In the 1F1B
 * steady state a stage sends activations to the next stage
 * and then receives gradients from it, while that stage sends gradients and then receives activations: on one
 * communicator the two sends would wait for each other for ever (MPI, which buffers and progresses sends on
 * its own, does not mind). A group that carries point-to-point traffic (p2p) therefore has a second
 * communicator, with its own stream: transfers toward higher group ranks travel on the first, toward lower
 * ranks on the second. Each direction's data flow has no cycle (a stage receives micro-batch j, then passes it
 * on) and every rank issues its transfers in the data's order, so each direction progresses by itself. NCCL
 * matches a pair's transfers in issue order, not by tag; the pipeline's schedule issues them in the same order
 * on both sides.
 *
 * Several communicators may run at once (each axis's, both directions): as in every framework that overlaps
 * communication, this relies on the NCCL kernels of different communicators fitting on the GPU together. A call
 * that synchronizes the whole device (cudaFree, when the backend frees or grows a buffer) also waits for the
 * operations in flight, not only the waited ones: that is safe where every peer issues its matching operations
 * without first waiting for this host, as the collectives (issued by every rank of a group at the same point)
 * and the pipeline's transfers (issued by each stage as its schedule reaches them) do.
 */
#include "parallel/comm_nccl.h"

#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>
#include <nccl.h>

#include "core/error.h"
#include "core/error_cuda.h"

#define NCCL_CHECK(call)                                                                                               \
    do {                                                                                                               \
        ncclResult_t nccl_rc_ = (call);                                                                                \
        if (nccl_rc_ != ncclSuccess)                                                                                   \
            loom_fatal(__FILE__, __LINE__, #call, "NCCL error %d: %s (%s)", (int)nccl_rc_,                             \
                       ncclGetErrorString(nccl_rc_), ncclGetLastError(NULL));                                          \
    } while (0)

static_assert(LOOM_NCCL_ID_BYTES == NCCL_UNIQUE_ID_BYTES && sizeof(ncclUniqueId) == NCCL_UNIQUE_ID_BYTES,
              "LOOM_NCCL_ID_BYTES must be the size of an ncclUniqueId");

/* one communicator and the stream its operations run on */
struct lane {
    ncclComm_t comm;               /* NULL: no such lane */
    cudaStream_t stream;
};

struct loom_nccl {
    int rank, size;
    struct lane main;              /* collectives, and point-to-point toward higher ranks */
    struct lane down;              /* point-to-point toward lower ranks (a p2p group) */
};

/* process-wide: the compute stream and the events */
static struct {
    cudaStream_t compute;          /* the backend's stream */
    cudaEvent_t ready;             /* recorded on the compute stream at every start */
    cudaEvent_t *idle;             /* completion events in no handle */
    int nidle, cap;
    int groups;                    /* live struct loom_nccl; the events go with the last */
} g;

/* ---------------------------------------------------------------------------------------------- */
/* events and lanes                                                                                 */

static cudaEvent_t event_take(void) {
    if (g.nidle) return g.idle[--g.nidle];
    cudaEvent_t e;
    CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
}

static void event_give(cudaEvent_t e) {
    if (g.nidle == g.cap) {
        int cap = g.cap ? 2 * g.cap : 64;
        cudaEvent_t *grown = (cudaEvent_t *)realloc(g.idle, sizeof *grown * (size_t)cap);
        CHECK(grown != NULL, "out of memory for %d CUDA events", cap);
        g.idle = grown, g.cap = cap;
    }
    g.idle[g.nidle++] = e;
}

static void lane_init(struct lane *l, ncclComm_t comm) {
    int least = 0, greatest = 0;
    CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    l->comm = comm;
    CUDA_CHECK(cudaStreamCreateWithPriority(&l->stream, cudaStreamNonBlocking, greatest));
}

static void lane_free(struct lane *l) {
    if (!l->comm) return;
    CUDA_CHECK(cudaStreamSynchronize(l->stream));
    NCCL_CHECK(ncclCommFinalize(l->comm));
    NCCL_CHECK(ncclCommDestroy(l->comm));
    CUDA_CHECK(cudaStreamDestroy(l->stream));
    l->comm = NULL;
}

/* The lane's stream waits for the compute queued so far; returns that stream. */
static cudaStream_t lane_begin(const struct lane *l) {
    CUDA_CHECK(cudaEventRecord(g.ready, g.compute));
    CUDA_CHECK(cudaStreamWaitEvent(l->stream, g.ready, 0));
    return l->stream;
}

/* *done = an event after everything the lane's stream holds */
static void lane_end(const struct lane *l, void **done) {
    cudaEvent_t e = event_take();
    CUDA_CHECK(cudaEventRecord(e, l->stream));
    *done = (void *)e;
}

/* The lane of a transfer from group rank `from` to group rank `to`. */
static const struct lane *lane_toward(const struct loom_nccl *n, int from, int to) {
    CHECK(from != to, "a point-to-point transfer from rank %d to itself", from);
    CHECK(n->down.comm != NULL, "point-to-point on a group made without its second communicator (p2p)");
    return to > from ? &n->main : &n->down;
}

/* ---------------------------------------------------------------------------------------------- */
/* communicators                                                                                    */

static struct loom_nccl *group_new(ncclComm_t comm, int p2p) {
    struct loom_nccl *n = (struct loom_nccl *)calloc_check(1, sizeof *n);
    NCCL_CHECK(ncclCommUserRank(comm, &n->rank));
    NCCL_CHECK(ncclCommCount(comm, &n->size));
    lane_init(&n->main, comm);
    if (p2p) {
        /* the same ranks in the same order: one color, keyed by rank */
        ncclComm_t second = NULL;
        NCCL_CHECK(ncclCommSplit(comm, 0, n->rank, &second, NULL));
        CHECK(second != NULL, "ncclCommSplit gave no second communicator");
        lane_init(&n->down, second);
    }
    g.groups++;
    return n;
}

extern "C" void loom_nccl_unique_id(unsigned char id[LOOM_NCCL_ID_BYTES]) {
    ncclUniqueId u;
    NCCL_CHECK(ncclGetUniqueId(&u));
    memcpy(id, u.internal, LOOM_NCCL_ID_BYTES);
}

extern "C" struct loom_nccl *loom_nccl_world(const unsigned char id[LOOM_NCCL_ID_BYTES], int size, int rank,
                                             void *compute_stream, int p2p) {
    CHECK(g.groups == 0, "one NCCL world per process (%d groups are live)", g.groups);
    CHECK(compute_stream != NULL, "the NCCL path needs the CUDA backend's stream: start the backend first");
    g.compute = (cudaStream_t)compute_stream;
    CUDA_CHECK(cudaEventCreateWithFlags(&g.ready, cudaEventDisableTiming));
    ncclUniqueId u;
    memcpy(u.internal, id, LOOM_NCCL_ID_BYTES);
    ncclComm_t comm = NULL;
    NCCL_CHECK(ncclCommInitRank(&comm, size, u, rank));
    struct loom_nccl *n = group_new(comm, p2p);
    CHECK(n->rank == rank && n->size == size, "the NCCL world has this process as rank %d of %d, MPI as %d of %d",
          n->rank, n->size, rank, size);
    return n;
}

extern "C" struct loom_nccl *loom_nccl_split(struct loom_nccl *world, int color, int key, int rank, int size,
                                             int p2p) {
    ncclComm_t comm = NULL;
    NCCL_CHECK(ncclCommSplit(world->main.comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &comm, NULL));
    if (color < 0) {
        CHECK(comm == NULL, "ncclCommSplit put a rank without a color in a group");
        return NULL;
    }
    CHECK(comm != NULL, "ncclCommSplit gave no communicator for color %d", color);
    struct loom_nccl *n = group_new(comm, p2p);
    CHECK(n->rank == rank && n->size == size, "NCCL split (color %d, key %d): rank %d of %d, MPI's split: %d of %d",
          color, key, n->rank, n->size, rank, size);
    return n;
}

extern "C" void loom_nccl_free(struct loom_nccl *n) {
    if (!n) return;
    lane_free(&n->down);
    lane_free(&n->main);
    free(n);
    if (--g.groups > 0) return;
    /* the last group: the compute stream may still wait on recorded events, which CUDA keeps until done */
    for (int i = 0; i < g.nidle; i++) CUDA_CHECK(cudaEventDestroy(g.idle[i]));
    free(g.idle);
    CUDA_CHECK(cudaEventDestroy(g.ready));
    memset(&g, 0, sizeof g);
}

/* ---------------------------------------------------------------------------------------------- */
/* operations (a zero count queues no NCCL call: every rank sees the same counts, so all skip alike) */

extern "C" void loom_nccl_allreduce(struct loom_nccl *n, float *buf, size_t count, int max, void **done) {
    cudaStream_t s = lane_begin(&n->main);
    if (count) NCCL_CHECK(ncclAllReduce(buf, buf, count, ncclFloat32, max ? ncclMax : ncclSum, n->main.comm, s));
    lane_end(&n->main, done);
}

extern "C" void loom_nccl_reduce_scatter(struct loom_nccl *n, const float *send, float *recv, size_t count,
                                         void **done) {
    cudaStream_t s = lane_begin(&n->main);
    if (count) NCCL_CHECK(ncclReduceScatter(send, recv, count, ncclFloat32, ncclSum, n->main.comm, s));
    lane_end(&n->main, done);
}

/* one reduce per share, rooted at its owner, fused into one launch by the group */
extern "C" void loom_nccl_reduce_scatterv(struct loom_nccl *n, const float *send, float *recv, const int *counts,
                                          void **done) {
    cudaStream_t s = lane_begin(&n->main);
    NCCL_CHECK(ncclGroupStart());
    size_t at = 0;
    for (int r = 0; r < n->size; r++) {
        /* recv is read on the root only (NCCL ignores it elsewhere) */
        if (counts[r])
            NCCL_CHECK(ncclReduce(send + at, recv, (size_t)counts[r], ncclFloat32, ncclSum, r, n->main.comm, s));
        at += (size_t)counts[r];
    }
    NCCL_CHECK(ncclGroupEnd());
    lane_end(&n->main, done);
}

/* one in-place broadcast per share, rooted at its owner, fused into one launch by the group */
extern "C" void loom_nccl_allgatherv_inplace(struct loom_nccl *n, float *buf, const int *counts, const int *displs,
                                             void **done) {
    cudaStream_t s = lane_begin(&n->main);
    NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < n->size; r++) {
        float *share = buf + displs[r];
        if (counts[r]) NCCL_CHECK(ncclBroadcast(share, share, (size_t)counts[r], ncclFloat32, r, n->main.comm, s));
    }
    NCCL_CHECK(ncclGroupEnd());
    lane_end(&n->main, done);
}

extern "C" void loom_nccl_allgather(struct loom_nccl *n, const float *send, float *recv, size_t count, void **done) {
    cudaStream_t s = lane_begin(&n->main);
    if (count) NCCL_CHECK(ncclAllGather(send, recv, count, ncclFloat32, n->main.comm, s));
    lane_end(&n->main, done);
}

/* this rank's own share is a device copy; the rest one send and one receive per peer, grouped so they all
 * progress together */
extern "C" void loom_nccl_alltoallv(struct loom_nccl *n, const float *send, const int *scounts, const int *sdispls,
                                    float *recv, const int *rcounts, const int *rdispls, void **done) {
    int me = n->rank;
    CHECK(scounts[me] == rcounts[me], "all-to-all-v: rank %d sends itself %d floats and receives %d", me, scounts[me],
          rcounts[me]);
    cudaStream_t s = lane_begin(&n->main);
    if (scounts[me])
        CUDA_CHECK(cudaMemcpyAsync(recv + rdispls[me], send + sdispls[me], sizeof(float) * (size_t)scounts[me],
                                   cudaMemcpyDeviceToDevice, s));
    NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < n->size; r++) {
        if (r == me) continue;
        if (scounts[r])
            NCCL_CHECK(ncclSend(send + sdispls[r], (size_t)scounts[r], ncclFloat32, r, n->main.comm, s));
        if (rcounts[r])
            NCCL_CHECK(ncclRecv(recv + rdispls[r], (size_t)rcounts[r], ncclFloat32, r, n->main.comm, s));
    }
    NCCL_CHECK(ncclGroupEnd());
    lane_end(&n->main, done);
}

extern "C" void loom_nccl_send(struct loom_nccl *n, const float *buf, size_t count, int peer, void **done) {
    const struct lane *l = lane_toward(n, n->rank, peer);
    cudaStream_t s = lane_begin(l);
    if (count) NCCL_CHECK(ncclSend(buf, count, ncclFloat32, peer, l->comm, s));
    lane_end(l, done);
}

extern "C" void loom_nccl_recv(struct loom_nccl *n, float *buf, size_t count, int peer, void **done) {
    const struct lane *l = lane_toward(n, peer, n->rank);
    cudaStream_t s = lane_begin(l);
    if (count) NCCL_CHECK(ncclRecv(buf, count, ncclFloat32, peer, l->comm, s));
    lane_end(l, done);
}

extern "C" void loom_nccl_wait(void **done) {
    cudaEvent_t e = (cudaEvent_t)*done;
    CUDA_CHECK(cudaStreamWaitEvent(g.compute, e, 0));
    event_give(e);
    *done = NULL;
}
