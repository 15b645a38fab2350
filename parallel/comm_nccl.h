/*
 * parallel/comm_nccl.h — the comm layer's NCCL path (parallel/comm_nccl.cu), called by parallel/comm.c only.
 *
 * Built with the CUDA backend (LOOM_CUDA). Plain C with opaque types, so no CUDA or NCCL header leaks out, and
 * no MPI: comm.c broadcasts the unique id and keeps the handles. Every operation works on device memory of
 * this process's GPU, is queued behind the backend's compute stream, and leaves in *done the event that marks
 * its end; loom_nccl_wait makes the compute stream wait for that event (the host never blocks).
 */
#ifndef LOOM_PARALLEL_COMM_NCCL_H
#define LOOM_PARALLEL_COMM_NCCL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct loom_nccl;

enum { LOOM_NCCL_ID_BYTES = 128 }; /* NCCL_UNIQUE_ID_BYTES (comm_nccl.cu checks) */

/* Rank 0 of the world draws the id the world communicator is made from. */
void loom_nccl_unique_id(unsigned char id[LOOM_NCCL_ID_BYTES]);
/* The world's communicator (collective over every rank, all with the same id). compute_stream: the backend's
 * stream (a cudaStream_t). One world per process. p2p: give the group a second communicator for point-to-point
 * traffic (see comm_nccl.cu). */
struct loom_nccl *loom_nccl_world(const unsigned char id[LOOM_NCCL_ID_BYTES], int size, int rank,
                                  void *compute_stream, int p2p);
/* A group's communicator split from the world's (collective over the world): ranks with the same color form a
 * group, ordered by key (ties by world rank), as MPI_Comm_split orders them; checked against the rank and size
 * the caller expects. color < 0: this rank is in no group, and the result is NULL. */
struct loom_nccl *loom_nccl_split(struct loom_nccl *world, int color, int key, int rank, int size, int p2p);
/* Waits for the group's queued operations and destroys its communicators (in the same order on every rank). */
void loom_nccl_free(struct loom_nccl *n);

/* buf[0..n) summed (max: the maximum taken) over the group, in place */
void loom_nccl_allreduce(struct loom_nccl *n, float *buf, size_t count, int max, void **done);
/* recv[0..count) = the sum over the group of send[rank*count ..+ count) */
void loom_nccl_reduce_scatter(struct loom_nccl *n, const float *send, float *recv, size_t count, void **done);
/* rank r receives counts[r] floats, the sum of send[counts[0] + .. + counts[r-1] ..+ counts[r]) */
void loom_nccl_reduce_scatterv(struct loom_nccl *n, const float *send, float *recv, const int *counts, void **done);
/* buf[displs[r] ..+ counts[r]) on every rank = rank r's, in place */
void loom_nccl_allgatherv_inplace(struct loom_nccl *n, float *buf, const int *counts, const int *displs,
                                  void **done);
/* recv[r*count ..+ count) = rank r's send[0..count) */
void loom_nccl_allgather(struct loom_nccl *n, const float *send, float *recv, size_t count, void **done);
/* send[sdispls[r] ..+ scounts[r]) to each rank r, recv[rdispls[r] ..+ rcounts[r]) from each */
void loom_nccl_alltoallv(struct loom_nccl *n, const float *send, const int *scounts, const int *sdispls, float *recv,
                         const int *rcounts, const int *rdispls, void **done);
/* Point-to-point with group rank peer (not this rank), matched in the order they are issued per pair and
 * direction; the group needs p2p. */
void loom_nccl_send(struct loom_nccl *n, const float *buf, size_t count, int peer, void **done);
void loom_nccl_recv(struct loom_nccl *n, float *buf, size_t count, int peer, void **done);
/* The compute stream waits for the operation *done marks; *done is cleared (its event goes back to a pool). */
void loom_nccl_wait(void **done);

#ifdef __cplusplus
}
#endif
#endif
