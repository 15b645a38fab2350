/*
 * parallel/comm.h — the communication layer: one API over MPI (NCCL slots in behind it later).
 *
 * Collectives on fp32 buffers (sums), started asynchronously and completed with loom_comm_wait, so
 * a caller can overlap communication with compute. Counts may exceed INT_MAX: large payloads are
 * split into several requests inside one handle.
 */
#ifndef LOOM_PARALLEL_COMM_H
#define LOOM_PARALLEL_COMM_H

#include <stddef.h>

#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

struct loom_comm {
    MPI_Comm mpi;
    int rank, size;
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
};

struct loom_ops;
/* Backend memory that MPI cannot read (a GPU's, when ranks share one GPU and NCCL cannot be used): from
 * now on every float operation below copies its buffers to host memory through ops, runs MPI there and
 * copies the results back at the wait. Process-wide; NULL turns it off. */
void loom_comm_stage_through_host(const struct loom_ops *ops);
/* Buffers this process has staged through host memory so far. */
long loom_comm_staged_buffers(void);

void loom_comm_from_mpi(struct loom_comm *c, MPI_Comm mpi);
void loom_comm_free(struct loom_comm *c);

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
