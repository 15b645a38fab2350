/*
 * parallel/comm.h — the communication layer: one API over MPI and NCCL.
 *
 * Collectives on fp32 buffers (sums), started asynchronously and completed with loom_comm_wait, so
 * a caller can overlap communication with compute. Counts may exceed INT_MAX: large payloads are
 * split into several requests inside one handle.
 *
 * Three paths, the same semantics (a caller leaves a buffer it handed to a start alone until the wait):
 *   - MPI on the buffers themselves (host memory: the CPU backend);
 *   - MPI on host copies of backend buffers (loom_comm_stage_through_host: ranks that share a GPU);
 *   - NCCL on device memory, for a group given an NCCL communicator (loom_comm_nccl_world / _split, builds
 *     with the CUDA backend): work is queued behind the backend's compute stream on a stream of the
 *     communicator's own, and loom_comm_wait makes the compute stream wait for it without blocking the host
 *     (parallel/comm_nccl.cu). Point-to-point transfers are then matched by their order per pair of ranks
 *     and direction, not by tag.
 * The small blocking host helpers (allreduce_double / long / max_double, alltoall_int) are MPI on every path.
 */
#ifndef LOOM_PARALLEL_COMM_H
#define LOOM_PARALLEL_COMM_H

#include <stddef.h>

#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

struct loom_nccl;

struct loom_comm {
    MPI_Comm mpi;
    int rank, size;
    struct loom_nccl *nccl;        /* set: the float operations run on NCCL (parallel/comm_nccl.h) */
};

enum { LOOM_COMM_MAX_REQUESTS = 64 };

/* a host copy of a backend buffer while a staged operation is in flight */
struct loom_comm_stage {
    void *host;                    /* malloc'd; freed at the wait */
    void *back;                    /* backend memory the host copy goes back to at the wait, or NULL */
    size_t bytes;
};

struct loom_comm_handle {
    int count;
    MPI_Request requests[LOOM_COMM_MAX_REQUESTS];
    int nstage;
    struct loom_comm_stage stage[2];
    void *done;                    /* NCCL: the event marking the operation's end, or NULL */
};

struct loom_ops;
/* Backend memory that MPI cannot read (a GPU's, when ranks share one GPU and NCCL cannot be used): from
 * now on every float operation below copies its buffers to host memory through ops, runs MPI there and
 * copies the results back at the wait. Process-wide; NULL turns it off. */
void loom_comm_stage_through_host(const struct loom_ops *ops);
/* Buffers this process has staged through host memory so far. */
long loom_comm_staged_buffers(void);

void loom_comm_from_mpi(struct loom_comm *c, MPI_Comm mpi);
/* Frees the MPI communicator (unless world or self) and the NCCL one; in the same order on every rank. */
void loom_comm_free(struct loom_comm *c);

/* NCCL (builds with the CUDA backend; elsewhere these fail). The world group's communicator, from a unique id
 * rank 0 draws and broadcasts over world->mpi (collective over the world). compute_stream: the backend's stream
 * (loom_cuda_stream()), which every NCCL operation waits for and which waits for them. */
void loom_comm_nccl_world(struct loom_comm *world, void *compute_stream, int p2p);
/* Group c's communicator, split from the world's with the color and key c->mpi was split from the world with
 * (collective over the world; MPI_UNDEFINED: this rank is in no group, c stays on MPI). p2p: a second
 * communicator for point-to-point transfers, so sends toward higher and lower ranks never queue behind each
 * other (a pipeline's). */
void loom_comm_nccl_split(struct loom_comm *c, const struct loom_comm *world, int color, int key, int p2p);

/* buf[0..n) summed over the group, in place */
void loom_allreduce_start(const struct loom_comm *c, float *buf, size_t n, struct loom_comm_handle *h);
/* recv[0..n) = the sum over the group of send[rank*n .. (rank+1)*n) */
void loom_reduce_scatter_start(const struct loom_comm *c, const float *send, float *recv, size_t n,
                               struct loom_comm_handle *h);
/* The same with uneven shares: rank r receives counts[r] floats, the sum of send[displs[r] ..+ counts[r]). */
void loom_reduce_scatterv_start(const struct loom_comm *c, const float *send, float *recv, const int *counts,
                                struct loom_comm_handle *h);
/* buf[displs[r] ..+ counts[r]) on every rank = rank r's part of buf, in place. */
void loom_allgatherv_inplace_start(const struct loom_comm *c, float *buf, const int *counts, const int *displs,
                                   struct loom_comm_handle *h);
/* recv[r*n .. (r+1)*n) = rank r's send[0..n) */
void loom_allgather_start(const struct loom_comm *c, const float *send, float *recv, size_t n,
                          struct loom_comm_handle *h);
/* rank r sends send[sdispls[r] ..+ scounts[r]) to each peer and receives rcounts[r] floats from each */
void loom_alltoallv_start(const struct loom_comm *c, const float *send, const int *scounts, const int *sdispls,
                          float *recv, const int *rcounts, const int *rdispls, struct loom_comm_handle *h);
/* n ints to every rank of the group, n from every rank (blocking) */
void loom_alltoall_int(const struct loom_comm *c, const int *send, int *recv, int n);
void loom_send_start(const struct loom_comm *c, const float *buf, size_t n, int peer, int tag,
                     struct loom_comm_handle *h);
void loom_recv_start(const struct loom_comm *c, float *buf, size_t n, int peer, int tag,
                     struct loom_comm_handle *h);
void loom_comm_wait(struct loom_comm_handle *h);

/* Blocking helpers for small host values. */
void loom_allreduce_double(const struct loom_comm *c, double *v, int n);
void loom_allreduce_long(const struct loom_comm *c, long *v, int n);
void loom_allreduce_max_double(const struct loom_comm *c, double *v, int n);
void loom_allreduce_max_float(const struct loom_comm *c, float *v, size_t n);

#ifdef __cplusplus
}
#endif
#endif
