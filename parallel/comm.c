/*
 * parallel/comm.c — the communication layer over MPI (see comm.h).
 */
#include "parallel/comm.h"

#include <limits.h>
#include <string.h>

#include "core/error.h"

enum { CHUNK = 1 << 28 }; /* floats per MPI call: below INT_MAX, and big enough to be rare */

void loom_comm_from_mpi(struct loom_comm *c, MPI_Comm mpi) {
    c->mpi = mpi;
    MPI_CHECK(MPI_Comm_rank(mpi, &c->rank));
    MPI_CHECK(MPI_Comm_size(mpi, &c->size));
}

void loom_comm_free(struct loom_comm *c) {
    if (c->mpi != MPI_COMM_NULL && c->mpi != MPI_COMM_WORLD && c->mpi != MPI_COMM_SELF) MPI_Comm_free(&c->mpi);
    c->mpi = MPI_COMM_NULL;
}

static MPI_Request *next_request(struct loom_comm_handle *h) {
    CHECK(h->count < LOOM_COMM_MAX_REQUESTS, "more than %d requests in one handle", LOOM_COMM_MAX_REQUESTS);
    return &h->requests[h->count++];
}

void loom_allreduce_start(const struct loom_comm *c, float *buf, size_t n, struct loom_comm_handle *h) {
    h->count = 0;
    for (size_t off = 0; off < n; off += CHUNK) {
        int k = (int)(n - off < CHUNK ? n - off : CHUNK);
        MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf + off, k, MPI_FLOAT, MPI_SUM, c->mpi, next_request(h)));
    }
}

void loom_reduce_scatter_start(const struct loom_comm *c, const float *send, float *recv, size_t n,
                               struct loom_comm_handle *h) {
    h->count = 0;
    CHECK(n <= INT_MAX, "reduce-scatter of %zu floats per rank", n);
    MPI_CHECK(MPI_Ireduce_scatter_block(send, recv, (int)n, MPI_FLOAT, MPI_SUM, c->mpi, next_request(h)));
}

void loom_reduce_scatterv_start(const struct loom_comm *c, const float *send, float *recv, const int *counts,
                                struct loom_comm_handle *h) {
    h->count = 0;
    MPI_CHECK(MPI_Ireduce_scatter(send, recv, counts, MPI_FLOAT, MPI_SUM, c->mpi, next_request(h)));
}

void loom_allgatherv_inplace_start(const struct loom_comm *c, float *buf, const int *counts, const int *displs,
                                   struct loom_comm_handle *h) {
    h->count = 0;
    MPI_CHECK(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs, MPI_FLOAT, c->mpi,
                              next_request(h)));
}

void loom_allgather_start(const struct loom_comm *c, const float *send, float *recv, size_t n,
                          struct loom_comm_handle *h) {
    h->count = 0;
    CHECK(n <= INT_MAX, "all-gather of %zu floats per rank", n);
    MPI_CHECK(MPI_Iallgather(send, (int)n, MPI_FLOAT, recv, (int)n, MPI_FLOAT, c->mpi, next_request(h)));
}

void loom_alltoallv_start(const struct loom_comm *c, const float *send, const int *scounts, const int *sdispls,
                          float *recv, const int *rcounts, const int *rdispls, struct loom_comm_handle *h) {
    h->count = 0;
    MPI_CHECK(MPI_Ialltoallv(send, scounts, sdispls, MPI_FLOAT, recv, rcounts, rdispls, MPI_FLOAT, c->mpi,
                             next_request(h)));
}

void loom_alltoall_int(const struct loom_comm *c, const int *send, int *recv, int n) {
    MPI_CHECK(MPI_Alltoall(send, n, MPI_INT, recv, n, MPI_INT, c->mpi));
}

void loom_send_start(const struct loom_comm *c, const float *buf, size_t n, int peer, int tag,
                     struct loom_comm_handle *h) {
    h->count = 0;
    for (size_t off = 0; off < n; off += CHUNK) {
        int k = (int)(n - off < CHUNK ? n - off : CHUNK);
        MPI_CHECK(MPI_Isend(buf + off, k, MPI_FLOAT, peer, tag, c->mpi, next_request(h)));
    }
}

void loom_recv_start(const struct loom_comm *c, float *buf, size_t n, int peer, int tag,
                     struct loom_comm_handle *h) {
    h->count = 0;
    for (size_t off = 0; off < n; off += CHUNK) {
        int k = (int)(n - off < CHUNK ? n - off : CHUNK);
        MPI_CHECK(MPI_Irecv(buf + off, k, MPI_FLOAT, peer, tag, c->mpi, next_request(h)));
    }
}

void loom_comm_wait(struct loom_comm_handle *h) {
    if (h->count) MPI_CHECK(MPI_Waitall(h->count, h->requests, MPI_STATUSES_IGNORE));
    h->count = 0;
}

void loom_allreduce_double(const struct loom_comm *c, double *v, int n) {
    if (c->size > 1) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, c->mpi));
}

void loom_allreduce_long(const struct loom_comm *c, long *v, int n) {
    if (c->size > 1) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_LONG, MPI_SUM, c->mpi));
}

void loom_allreduce_max_float(const struct loom_comm *c, float *v, size_t n) {
    CHECK(n <= INT_MAX, "max-reduce of %zu floats", n);
    if (c->size > 1) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, (int)n, MPI_FLOAT, MPI_MAX, c->mpi));
}

void loom_allreduce_max_double(const struct loom_comm *c, double *v, int n) {
    if (c->size > 1) MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_MAX, c->mpi));
}
