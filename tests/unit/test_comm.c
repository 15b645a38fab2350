/*
 * tests/unit/test_comm.c — the communication layer (parallel/comm.h) on however many ranks it runs:
 * alone under tests/run.sh, and on 3 ranks under mpirun from tests/cli/test_comm.sh. Each collective's
 * result is checked against values every rank can compute for itself.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "core/error.h"
#include "parallel/comm.h"
#include "tests/test.h"

/* the value rank r contributes at index i */
static float value(int r, size_t i) { return (float)(r * 1000 + (int)(i % 997)) * 0.5f; }

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    struct loom_comm c;
    loom_comm_from_mpi(&c, MPI_COMM_WORLD);
    int P = c.size, me = c.rank;
    char name[128];
    struct loom_comm_handle h;

    /* all-reduce, async: several in flight at once */
    enum { N = 5000 };
    float *a = malloc_check(sizeof(float) * N), *b = malloc_check(sizeof(float) * N);
    for (size_t i = 0; i < N; i++) a[i] = value(me, i), b[i] = -value(me, i);
    struct loom_comm_handle h2;
    loom_allreduce_start(&c, a, N, &h);
    loom_allreduce_start(&c, b, N, &h2);
    loom_comm_wait(&h2);
    loom_comm_wait(&h);
    int ok = 1;
    for (size_t i = 0; i < N && ok; i++) {
        double want = 0;
        for (int r = 0; r < P; r++) want += value(r, i);
        ok = fabs(a[i] - want) <= 1e-6 * fabs(want) + 1e-6 && fabs(b[i] + want) <= 1e-6 * fabs(want) + 1e-6;
    }
    snprintf(name, sizeof name, "comm.allreduce.%dranks", P);
    test_result(ok, name, "sums differ");

    /* reduce-scatter then all-gather gives the all-reduce */
    size_t n = 7;
    float *send = malloc_check(sizeof(float) * n * P), *part = malloc_check(sizeof(float) * n);
    float *all = malloc_check(sizeof(float) * n * P);
    for (size_t i = 0; i < n * P; i++) send[i] = value(me, i);
    loom_reduce_scatter_start(&c, send, part, n, &h);
    loom_comm_wait(&h);
    loom_allgather_start(&c, part, all, n, &h);
    loom_comm_wait(&h);
    ok = 1;
    for (size_t i = 0; i < n * P && ok; i++) {
        double want = 0;
        for (int r = 0; r < P; r++) want += value(r, i);
        ok = fabs(all[i] - want) <= 1e-6 * fabs(want) + 1e-6;
    }
    snprintf(name, sizeof name, "comm.reduce_scatter_allgather.%dranks", P);
    test_result(ok, name, "reduce-scatter + all-gather differs from the sum");

    /* uneven shares: reduce-scatterv and all-gatherv in place */
    int *counts = malloc_check(sizeof(int) * P), *displs = malloc_check(sizeof(int) * P);
    size_t total = 0;
    for (int r = 0; r < P; r++) displs[r] = (int)total, counts[r] = 3 + r, total += (size_t)counts[r];
    float *full = malloc_check(sizeof(float) * total), *mine = malloc_check(sizeof(float) * counts[me]);
    for (size_t i = 0; i < total; i++) full[i] = value(me, i);
    loom_reduce_scatterv_start(&c, full, mine, counts, &h);
    loom_comm_wait(&h);
    memcpy(full + displs[me], mine, sizeof(float) * counts[me]);
    loom_allgatherv_inplace_start(&c, full, counts, displs, &h);
    loom_comm_wait(&h);
    ok = 1;
    for (size_t i = 0; i < total && ok; i++) {
        double want = 0;
        for (int r = 0; r < P; r++) want += value(r, i);
        ok = fabs(full[i] - want) <= 1e-6 * fabs(want) + 1e-6;
    }
    snprintf(name, sizeof name, "comm.uneven_shards.%dranks", P);
    test_result(ok, name, "uneven reduce-scatter + all-gather differs from the sum");

    /* all-to-all-v: rank r sends (r + 1) values to each peer q, valued 100 r + q */
    int *sc = malloc_check(sizeof(int) * P), *sd = malloc_check(sizeof(int) * P);
    int *rc = malloc_check(sizeof(int) * P), *rd = malloc_check(sizeof(int) * P);
    int stot = 0, rtot = 0;
    for (int q = 0; q < P; q++) {
        sc[q] = me + 1, sd[q] = stot, stot += sc[q];
        rc[q] = q + 1, rd[q] = rtot, rtot += rc[q];
    }
    float *ss = malloc_check(sizeof(float) * stot), *rr = malloc_check(sizeof(float) * rtot);
    for (int q = 0; q < P; q++)
        for (int k = 0; k < sc[q]; k++) ss[sd[q] + k] = (float)(100 * me + q);
    loom_alltoallv_start(&c, ss, sc, sd, rr, rc, rd, &h);
    loom_comm_wait(&h);
    ok = 1;
    for (int q = 0; q < P && ok; q++)
        for (int k = 0; k < rc[q] && ok; k++) ok = rr[rd[q] + k] == (float)(100 * q + me);
    snprintf(name, sizeof name, "comm.alltoallv.%dranks", P);
    test_result(ok, name, "all-to-all-v delivered the wrong values");

    /* send/recv around a ring */
    float out[4] = {(float)me, (float)me + 0.5f, 2.0f, 3.0f}, in[4] = {0};
    struct loom_comm_handle hs, hr;
    loom_recv_start(&c, in, 4, (me + P - 1) % P, 7, &hr);
    loom_send_start(&c, out, 4, (me + 1) % P, 7, &hs);
    loom_comm_wait(&hr);
    loom_comm_wait(&hs);
    int prev = (me + P - 1) % P;
    snprintf(name, sizeof name, "comm.ring.%dranks", P);
    test_result(in[0] == (float)prev && in[1] == (float)prev + 0.5f && in[3] == 3.0f, name,
                "got %g %g from rank %d", in[0], in[1], prev);

    free(a), free(b), free(send), free(part), free(all), free(counts), free(displs), free(full), free(mine);
    free(sc), free(sd), free(rc), free(rd), free(ss), free(rr);
    int failures = test_exit();
    MPI_Finalize();
    return failures;
}
