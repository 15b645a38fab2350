/*
 * parallel/comm.c — the communication layer over MPI, and the dispatch to NCCL (see comm.h).
 */
#include "parallel/comm.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "model/ops.h"
#ifdef LOOM_CUDA
#include "parallel/comm_nccl.h"
/* a group with an NCCL communicator does `call` and returns; the MPI code after it is the other paths */
#define NCCL_PATH(c, call)                                                                                             \
    do {                                                                                                               \
        if ((c)->nccl) {                                                                                               \
            call;                                                                                                      \
            return;                                                                                                    \
        }                                                                                                              \
    } while (0)
#else
#define NCCL_PATH(c, call) ((void)0)
#endif

enum { CHUNK = 1 << 28 }; /* floats per MPI call: below INT_MAX, and big enough to be rare */

void loom_comm_from_mpi(struct loom_comm *c, MPI_Comm mpi) {
    c->mpi = mpi;
    c->nccl = NULL;
    MPI_CHECK(MPI_Comm_rank(mpi, &c->rank));
    MPI_CHECK(MPI_Comm_size(mpi, &c->size));
}

void loom_comm_free(struct loom_comm *c) {
#ifdef LOOM_CUDA
    loom_nccl_free(c->nccl);
#endif
    c->nccl = NULL;
    if (c->mpi != MPI_COMM_NULL && c->mpi != MPI_COMM_WORLD && c->mpi != MPI_COMM_SELF) MPI_Comm_free(&c->mpi);
    c->mpi = MPI_COMM_NULL;
}

/* NCCL communicators (see comm.h) */
void loom_comm_nccl_world(struct loom_comm *world, void *compute_stream, int p2p) {
#ifdef LOOM_CUDA
    unsigned char id[LOOM_NCCL_ID_BYTES];
    if (world->rank == 0) loom_nccl_unique_id(id);
    MPI_CHECK(MPI_Bcast(id, LOOM_NCCL_ID_BYTES, MPI_BYTE, 0, world->mpi));
    world->nccl = loom_nccl_world(id, world->size, world->rank, compute_stream, p2p);
#else
    (void)world, (void)compute_stream, (void)p2p;
    CHECK(0, "NCCL needs the CUDA backend, which this build does not have");
#endif
}

void loom_comm_nccl_split(struct loom_comm *c, const struct loom_comm *world, int color, int key, int p2p) {
#ifdef LOOM_CUDA
    CHECK(world->nccl != NULL, "an NCCL split before the NCCL world");
    int in = color != MPI_UNDEFINED;
    CHECK(in == (c->mpi != MPI_COMM_NULL) && (!in || color >= 0), "NCCL split with color %d of a group %s MPI",
          color, c->mpi != MPI_COMM_NULL ? "in" : "not in");
    c->nccl = loom_nccl_split(world->nccl, in ? color : -1, key, c->rank, c->size, p2p);
#else
    (void)c, (void)world, (void)color, (void)key, (void)p2p;
    CHECK(0, "NCCL needs the CUDA backend, which this build does not have");
#endif
}

/* staging through host memory (see comm.h) */
static const struct loom_ops *staging;

static long staged_buffers;

void loom_comm_stage_through_host(const struct loom_ops *ops) { staging = ops; }
long loom_comm_staged_buffers(void) { return staged_buffers; }

static void handle_reset(struct loom_comm_handle *h) { h->count = 0, h->nstage = 0, h->done = NULL; }

/* The buffer MPI works on for backend buffer `buf` of `bytes`: buf itself, or a host copy (copied in when
 * copy_in; copied back to buf at the wait when copy_back) */
static void *staged(struct loom_comm_handle *h, const void *buf, size_t bytes, int copy_in, int copy_back) {
    if (!staging) return (void *)buf;
    CHECK(h->nstage < 2, "more than two staged buffers in one handle");
    struct loom_comm_stage *s = &h->stage[h->nstage++];
    staged_buffers++;
    s->host = malloc_check(bytes ? bytes : 1);
    s->back = copy_back ? (void *)buf : NULL;
    s->bytes = bytes;
    if (copy_in && bytes) staging->to_host(s->host, buf, bytes);
    return s->host;
}

static size_t extent(const int *counts, const int *displs, int n) {
    size_t end = 0;
    for (int r = 0; r < n; r++)
        if (counts[r] && (size_t)displs[r] + (size_t)counts[r] > end) end = (size_t)displs[r] + (size_t)counts[r];
    return end;
}

static MPI_Request *next_request(struct loom_comm_handle *h) {
    CHECK(h->count < LOOM_COMM_MAX_REQUESTS, "more than %d requests in one handle", LOOM_COMM_MAX_REQUESTS);
    return &h->requests[h->count++];
}

void loom_allreduce_start(const struct loom_comm *c, float *buf, size_t n, struct loom_comm_handle *h) {
    handle_reset(h);
    NCCL_PATH(c, loom_nccl_allreduce(c->nccl, buf, n, 0, &h->done));
    buf = staged(h, buf, sizeof(float) * n, 1, 1);
    for (size_t off = 0; off < n; off += CHUNK) {
        int k = (int)(n - off < CHUNK ? n - off : CHUNK);
        MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf + off, k, MPI_FLOAT, MPI_SUM, c->mpi, next_request(h)));
    }
}

void loom_reduce_scatter_start(const struct loom_comm *c, const float *send, float *recv, size_t n,
                               struct loom_comm_handle *h) {
    handle_reset(h);
    NCCL_PATH(c, loom_nccl_reduce_scatter(c->nccl, send, recv, n, &h->done));
    CHECK(n <= INT_MAX, "reduce-scatter of %zu floats per rank", n);
    send = staged(h, send, sizeof(float) * n * (size_t)c->size, 1, 0);
    recv = staged(h, recv, sizeof(float) * n, 0, 1);
    MPI_CHECK(MPI_Ireduce_scatter_block(send, recv, (int)n, MPI_FLOAT, MPI_SUM, c->mpi, next_request(h)));
}

void loom_reduce_scatterv_start(const struct loom_comm *c, const float *send, float *recv, const int *counts,
                                struct loom_comm_handle *h) {
    handle_reset(h);
    NCCL_PATH(c, loom_nccl_reduce_scatterv(c->nccl, send, recv, counts, &h->done));
    size_t total = 0;
    for (int r = 0; r < c->size; r++) total += (size_t)counts[r];
    send = staged(h, send, sizeof(float) * total, 1, 0);
    recv = staged(h, recv, sizeof(float) * (size_t)counts[c->rank], 0, 1);
    MPI_CHECK(MPI_Ireduce_scatter(send, recv, counts, MPI_FLOAT, MPI_SUM, c->mpi, next_request(h)));
}

void loom_allgatherv_inplace_start(const struct loom_comm *c, float *buf, const int *counts, const int *displs,
                                   struct loom_comm_handle *h) {
    handle_reset(h);
    NCCL_PATH(c, loom_nccl_allgatherv_inplace(c->nccl, buf, counts, displs, &h->done));
    buf = staged(h, buf, sizeof(float) * extent(counts, displs, c->size), 1, 1);
    MPI_CHECK(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs, MPI_FLOAT, c->mpi,
                              next_request(h)));
}

void loom_allgather_start(const struct loom_comm *c, const float *send, float *recv, size_t n,
                          struct loom_comm_handle *h) {
    handle_reset(h);
    NCCL_PATH(c, loom_nccl_allgather(c->nccl, send, recv, n, &h->done));
    CHECK(n <= INT_MAX, "all-gather of %zu floats per rank", n);
    send = staged(h, send, sizeof(float) * n, 1, 0);
    recv = staged(h, recv, sizeof(float) * n * (size_t)c->size, 0, 1);
    MPI_CHECK(MPI_Iallgather(send, (int)n, MPI_FLOAT, recv, (int)n, MPI_FLOAT, c->mpi, next_request(h)));
}

void loom_alltoallv_start(const struct loom_comm *c, const float *send, const int *scounts, const int *sdispls,
                          float *recv, const int *rcounts, const int *rdispls, struct loom_comm_handle *h) {
    handle_reset(h);
    NCCL_PATH(c, loom_nccl_alltoallv(c->nccl, send, scounts, sdispls, recv, rcounts, rdispls, &h->done));
    send = staged(h, send, sizeof(float) * extent(scounts, sdispls, c->size), 1, 0);
    recv = staged(h, recv, sizeof(float) * extent(rcounts, rdispls, c->size), 1, 1);
    MPI_CHECK(MPI_Ialltoallv(send, scounts, sdispls, MPI_FLOAT, recv, rcounts, rdispls, MPI_FLOAT, c->mpi,
                             next_request(h)));
}

void loom_alltoall_int(const struct loom_comm *c, const int *send, int *recv, int n) {
    MPI_CHECK(MPI_Alltoall(send, n, MPI_INT, recv, n, MPI_INT, c->mpi));
}

void loom_send_start(const struct loom_comm *c, const float *buf, size_t n, int peer, int tag,
                     struct loom_comm_handle *h) {
    handle_reset(h);
    NCCL_PATH(c, loom_nccl_send(c->nccl, buf, n, peer, &h->done));
    buf = staged(h, buf, sizeof(float) * n, 1, 0);
    for (size_t off = 0; off < n; off += CHUNK) {
        int k = (int)(n - off < CHUNK ? n - off : CHUNK);
        MPI_CHECK(MPI_Isend(buf + off, k, MPI_FLOAT, peer, tag, c->mpi, next_request(h)));
    }
}

void loom_recv_start(const struct loom_comm *c, float *buf, size_t n, int peer, int tag,
                     struct loom_comm_handle *h) {
    handle_reset(h);
    NCCL_PATH(c, loom_nccl_recv(c->nccl, buf, n, peer, &h->done));
    buf = staged(h, buf, sizeof(float) * n, 0, 1);
    for (size_t off = 0; off < n; off += CHUNK) {
        int k = (int)(n - off < CHUNK ? n - off : CHUNK);
        MPI_CHECK(MPI_Irecv(buf + off, k, MPI_FLOAT, peer, tag, c->mpi, next_request(h)));
    }
}

void loom_comm_wait(struct loom_comm_handle *h) {
#ifdef LOOM_CUDA
    if (h->done) loom_nccl_wait(&h->done);
#endif
    if (h->count) MPI_CHECK(MPI_Waitall(h->count, h->requests, MPI_STATUSES_IGNORE));
    for (int i = 0; i < h->nstage; i++) {
        struct loom_comm_stage *s = &h->stage[i];
        if (s->back && s->bytes) staging->from_host(s->back, s->host, s->bytes);
        free(s->host);
    }
    h->count = 0, h->nstage = 0, h->done = NULL;
}

void loom_allreduce_double(const struct loom_comm *c, double *v, int n) {
    if (c->size > 1) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, c->mpi));
}

void loom_allreduce_long(const struct loom_comm *c, long *v, int n) {
    if (c->size > 1) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_LONG, MPI_SUM, c->mpi));
}

void loom_allreduce_max_float(const struct loom_comm *c, float *v, size_t n) {
    CHECK(n <= INT_MAX, "max-reduce of %zu floats", n);
    if (c->size < 2) return;
    struct loom_comm_handle h;
    handle_reset(&h);
    NCCL_PATH(c, loom_nccl_allreduce(c->nccl, v, n, 1, &h.done); loom_comm_wait(&h));
    float *buf = staged(&h, v, sizeof(float) * n, 1, 1);
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_MAX, c->mpi));
    loom_comm_wait(&h);
}

void loom_allreduce_max_double(const struct loom_comm *c, double *v, int n) {
    if (c->size > 1) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_MAX, c->mpi));
}
