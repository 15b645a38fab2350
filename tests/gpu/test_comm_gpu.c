/*
 * tests/gpu/test_comm_gpu.c — the comm layer's NCCL path (parallel/comm_nccl.cu) against its MPI path, on two
 * ranks with a GPU each (`make test-gpu`).
 *
 * Run alone (as tests/run.sh runs it) it counts the visible GPUs: with fewer than two it prints a `skip` line and
 * passes (NCCL refuses two ranks on one GPU; tests/gpu/test_nccl_gpu.sh checks the fallback there); else it runs
 * itself on two ranks through scripts/launch.sh (`test_comm_gpu --ranks`) and passes their verdict on.
 *
 * The two ranks make the grid dp1 x tp1 x pp2 and give it NCCL communicators (loom_topology_use_nccl): world and
 * embed_comm hold both ranks, pp_comm both ranks with its second communicator for point-to-point, tp_comm and
 * the others one rank each. Every float operation of parallel/comm.h runs twice on the same inputs: on device
 * buffers through those groups (NCCL), and on host buffers through a plain MPI group of the same ranks. Outputs
 * start filled with a marker, so elements an operation must leave alone (gaps between shares, the parts of an
 * all-to-all-v buffer no peer sends) are checked too, and the two results must be equal bit for bit: inputs are
 * multiples of 0.5 below 2^20, so every sum is exact in any order. Also checked:
 *   - ordering against the compute stream: an input scaled by a kernel queued just before the start (the
 *     operation must see the scaled values), and a result scaled by a kernel queued just after the wait (the
 *     kernel must see the result), on 64 MB so that a missing dependency shows;
 *   - several operations in flight on one group, waited in the opposite order;
 *   - a send and a receive crossing between the ranks in both directions at once, 64 MB each way, and two sends
 *     in a row matched by two receives in order (the pipeline's patterns: on one NCCL communicator the crossing
 *     sends would wait for each other for ever, so a hang here means the second communicator is not used);
 *   - zero counts and empty shares;
 *   - a one-rank group (tp_comm), and tearing every communicator down.
 * Each rank checks its own results; rank 0 prints `ok` when both passed, a rank that failed prints its FAIL.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "core/error.h"
#include "model/ops.h"
#include "parallel/comm.h"
#include "parallel/topology.h"
#include "tests/test.h"
#ifdef LOOM_CUDA
#include "model/cuda/ops_cuda.h"

enum { BIG = 1 << 24 }; /* floats: 64 MB, far beyond NCCL's internal buffers */
static const float MARK = -7.25f;

static int me, P;
static const struct loom_ops *ops;

/* the verdict of a check over both ranks: rank 0 prints ok, a failing rank its FAIL */
static void verdict(const char *name, int ok, const char *why) {
    int all = ok;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
    if (all && me == 0) test_result(1, name, "");
    if (!ok) test_result(0, name, "[rank %d] %s", me, why);
}

/* rank r's value at index i: a multiple of 0.5 below 2^20 */
static float value(int r, size_t i) { return (float)((int)(i % 4093) + 5000 * r + 1) * 0.5f; }

static float *host_values(size_t n, int r) {
    float *x = malloc_check(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) x[i] = value(r, i);
    return x;
}

static float *host_marked(size_t n) {
    float *x = malloc_check(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) x[i] = MARK;
    return x;
}

static float *device_copy(const float *host, size_t n) {
    float *d = ops->alloc(sizeof(float) * (n ? n : 1));
    ops->from_host(d, host, sizeof(float) * n);
    return d;
}

/* got (device, n floats) equals want (host) bit for bit; else the first difference in why */
static int same(const float *dev, const float *want, size_t n, char *why, size_t cap) {
    float *got = malloc_check(sizeof(float) * (n ? n : 1));
    ops->to_host(got, dev, sizeof(float) * n);
    size_t i = 0;
    while (i < n && memcmp(&got[i], &want[i], sizeof(float)) == 0) i++;
    int ok = i == n;
    if (!ok) snprintf(why, cap, "element %zu of %zu: NCCL %.9g, MPI %.9g", i, n, got[i], want[i]);
    free(got);
    return ok;
}

/* ---------------------------------------------------------------------------------------------- */
/* the collectives                                                                                  */

static void check_allreduce(const struct loom_comm *nc, const struct loom_comm *mc, size_t n, const char *name) {
    char why[256] = "";
    float *h = host_values(n, me), *d = device_copy(h, n);
    struct loom_comm_handle hn, hm;
    loom_allreduce_start(nc, d, n, &hn);
    loom_allreduce_start(mc, h, n, &hm);
    loom_comm_wait(&hn);
    loom_comm_wait(&hm);
    verdict(name, same(d, h, n, why, sizeof why), why);
    ops->free(d);
    free(h);
}

static void check_max(const struct loom_comm *nc, const struct loom_comm *mc) {
    char why[256] = "";
    size_t n = 1000;
    float *h = host_values(n, me);
    for (size_t i = 0; i < n; i++) h[i] = i % 2 == (size_t)me ? h[i] : -h[i];
    float *d = device_copy(h, n);
    loom_allreduce_max_float(nc, d, n);
    loom_allreduce_max_float(mc, h, n);
    verdict("comm_gpu.allreduce_max", same(d, h, n, why, sizeof why), why);
    ops->free(d);
    free(h);
}

/* an operation from a send buffer of this rank's values into a receive buffer: reduce-scatter, all-gather */
typedef void (*send_recv_start)(const struct loom_comm *c, const float *send, float *recv, size_t n,
                                struct loom_comm_handle *h);

/* start(n) from n_send floats into n_recv marked ones, on NCCL and on MPI: the receive buffers equal */
static void check_send_recv(const char *name, send_recv_start start, const struct loom_comm *nc,
                            const struct loom_comm *mc, size_t n, size_t n_send, size_t n_recv) {
    char why[256] = "";
    float *s = host_values(n_send, me), *ds = device_copy(s, n_send);
    float *r = host_marked(n_recv), *dr = device_copy(r, n_recv);
    struct loom_comm_handle h;
    start(nc, ds, dr, n, &h);
    loom_comm_wait(&h);
    start(mc, s, r, n, &h);
    loom_comm_wait(&h);
    verdict(name, same(dr, r, n_recv, why, sizeof why), why);
    ops->free(ds), ops->free(dr);
    free(s), free(r);
}

static void check_reduce_scatter(const struct loom_comm *nc, const struct loom_comm *mc, size_t n) {
    check_send_recv(test_name("comm_gpu.reduce_scatter.%zu", n), loom_reduce_scatter_start, nc, mc, n,
                    n * (size_t)P, n);
}

static void check_allgather(const struct loom_comm *nc, const struct loom_comm *mc, size_t n) {
    check_send_recv(test_name("comm_gpu.allgather.%zu", n), loom_allgather_start, nc, mc, n, n, n * (size_t)P);
}

/* uneven shares (counts), laid out with a gap of `gap` floats after each one for the all-gatherv */
static void check_uneven(const struct loom_comm *nc, const struct loom_comm *mc, const int *counts, int gap,
                         const char *label) {
    char why[256] = "";
    int displs[2];
    size_t total = 0, extent = 0;
    for (int r = 0; r < P; r++) displs[r] = (int)extent, extent += (size_t)counts[r] + (size_t)gap, total += counts[r];
    /* reduce-scatterv: send holds every share back to back */
    float *s = host_values(total, me), *ds = device_copy(s, total);
    size_t mine = (size_t)counts[me];
    float *r = host_marked(mine), *dr = device_copy(r, mine);
    struct loom_comm_handle h;
    loom_reduce_scatterv_start(nc, ds, dr, counts, &h);
    loom_comm_wait(&h);
    loom_reduce_scatterv_start(mc, s, r, counts, &h);
    loom_comm_wait(&h);
    verdict(test_name("comm_gpu.reduce_scatterv.%s", label), same(dr, r, mine, why, sizeof why), why);
    /* all-gatherv in place: this rank's share written, the rest marked, the gaps must stay marked */
    float *b = host_marked(extent);
    for (size_t i = 0; i < mine; i++) b[(size_t)displs[me] + i] = value(me, 3 * i + 1);
    float *db = device_copy(b, extent);
    loom_allgatherv_inplace_start(nc, db, counts, displs, &h);
    loom_comm_wait(&h);
    loom_allgatherv_inplace_start(mc, b, counts, displs, &h);
    loom_comm_wait(&h);
    verdict(test_name("comm_gpu.allgatherv_inplace.%s", label), same(db, b, extent, why, sizeof why), why);
    ops->free(ds), ops->free(dr), ops->free(db);
    free(s), free(r), free(b);
}

/* all-to-all-v: rank me sends scount(me, q) floats to q; every part followed by a gap of 3 floats */
static int scount(int from, int to, int zero) { return zero ? 0 : 100 * (from + 1) + 7 * to + 1; }

static void check_alltoallv(const struct loom_comm *nc, const struct loom_comm *mc, int zero_cross) {
    char why[256] = "";
    int sc[2], sd[2], rc[2], rd[2], stot = 0, rtot = 0;
    for (int q = 0; q < P; q++) {
        sc[q] = scount(me, q, zero_cross && q != me), sd[q] = stot, stot += sc[q] + 3;
        rc[q] = scount(q, me, zero_cross && q != me), rd[q] = rtot, rtot += rc[q] + 3;
    }
    float *s = host_values((size_t)stot, me), *ds = device_copy(s, (size_t)stot);
    float *r = host_marked((size_t)rtot), *dr = device_copy(r, (size_t)rtot);
    struct loom_comm_handle h;
    loom_alltoallv_start(nc, ds, sc, sd, dr, rc, rd, &h);
    loom_comm_wait(&h);
    loom_alltoallv_start(mc, s, sc, sd, r, rc, rd, &h);
    loom_comm_wait(&h);
    verdict(zero_cross ? "comm_gpu.alltoallv.self_only" : "comm_gpu.alltoallv",
            same(dr, r, (size_t)rtot, why, sizeof why), why);
    ops->free(ds), ops->free(dr);
    free(s), free(r);
}

/* ---------------------------------------------------------------------------------------------- */
/* ordering, several in flight, point-to-point                                                      */

/* x scaled by 2 on the compute stream just before the all-reduce, the sum halved just after the wait */
static void check_ordering(const struct loom_comm *nc) {
    char why[256] = "";
    float *h = host_values(BIG, me), *d = device_copy(h, BIG);
    struct loom_comm_handle hn;
    ops->scale(d, 2.0f, BIG);
    loom_allreduce_start(nc, d, BIG, &hn);
    loom_comm_wait(&hn);
    ops->scale(d, 0.5f, BIG);
    for (size_t i = 0; i < BIG; i++) h[i] = value(0, i) + value(1, i);
    verdict("comm_gpu.ordering", same(d, h, BIG, why, sizeof why), why);
    ops->free(d);
    free(h);
}

/* three all-reduces in flight on one group, waited last first */
static void check_in_flight(const struct loom_comm *nc) {
    char why[256] = "";
    enum { K = 3 };
    size_t n = 100003;
    float *d[K], *want = malloc_check(sizeof(float) * n);
    struct loom_comm_handle h[K];
    for (int k = 0; k < K; k++) {
        float *x = host_values(n, me + k);
        d[k] = device_copy(x, n);
        free(x);
        loom_allreduce_start(nc, d[k], n, &h[k]);
    }
    int ok = 1;
    for (int k = K - 1; k >= 0; k--) loom_comm_wait(&h[k]);
    for (int k = 0; k < K && ok; k++) {
        for (size_t i = 0; i < n; i++) want[i] = value(k, i) + value(1 + k, i);
        ok = same(d[k], want, n, why, sizeof why);
    }
    verdict("comm_gpu.in_flight", ok, why);
    for (int k = 0; k < K; k++) ops->free(d[k]);
    free(want);
}

/* pp_comm: both ranks send BIG floats to the other and then receive the other's; then rank 0 sends two buffers
 * in a row, which rank 1 receives in order */
static void check_p2p(const struct loom_comm *pp) {
    char why[256] = "";
    int peer = 1 - me;
    float *h = host_values(BIG, me), *ds = device_copy(h, BIG), *dr = ops->alloc(sizeof(float) * BIG);
    struct loom_comm_handle hs, hr;
    loom_send_start(pp, ds, BIG, peer, 0, &hs);
    loom_recv_start(pp, dr, BIG, peer, 0, &hr);
    loom_comm_wait(&hr);
    loom_comm_wait(&hs);
    for (size_t i = 0; i < BIG; i++) h[i] = value(peer, i);
    verdict("comm_gpu.p2p_crossing", same(dr, h, BIG, why, sizeof why), why);

    size_t n = 4099;
    float *a = host_values(n, 7), *b = host_values(n, 9), *m = host_marked(n);
    float *da = device_copy(me == 0 ? a : m, n), *db = device_copy(me == 0 ? b : m, n);
    struct loom_comm_handle h1, h2;
    if (me == 0) {
        loom_send_start(pp, da, n, 1, 1, &h1);
        loom_send_start(pp, db, n, 1, 2, &h2);
    } else {
        loom_recv_start(pp, da, n, 0, 1, &h1);
        loom_recv_start(pp, db, n, 0, 2, &h2);
    }
    loom_comm_wait(&h2);
    loom_comm_wait(&h1);
    int ok = me == 0 || (same(da, a, n, why, sizeof why) && same(db, b, n, why, sizeof why));
    verdict("comm_gpu.p2p_in_order", ok, why);
    ops->free(ds), ops->free(dr), ops->free(da), ops->free(db);
    free(h), free(a), free(b), free(m);
}

static int run_ranks(int argc, char **argv) {
    MPI_CHECK(MPI_Init(&argc, &argv));
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    loom_error_set_rank(me, P);
    CHECK(P == 2, "test_comm_gpu --ranks runs on two ranks, not %d", P);
    MPI_Comm node;
    int local = 0;
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
    MPI_CHECK(MPI_Comm_rank(node, &local));
    MPI_Comm_free(&node);
    ops = loom_ops_cuda(local, LOOM_F32);
    CHECK(ops != NULL, "the CUDA backend did not start on device %d", local);

    struct loom_topology t;
    loom_topology_init(&t, MPI_COMM_WORLD, 1, 1, 2, 1);
    loom_topology_use_nccl(&t, loom_cuda_stream());
    int groups_ok = t.world_comm.nccl && t.pp_comm.nccl && t.embed_comm.nccl && t.tp_comm.nccl &&
                    t.pp_comm.size == 2 && t.embed_comm.size == 2 && t.tp_comm.size == 1;
    verdict("comm_gpu.groups", groups_ok, "a group without its NCCL communicator, or of the wrong size");
    struct loom_comm mpi;
    loom_comm_from_mpi(&mpi, MPI_COMM_WORLD);
    struct loom_comm self;
    loom_comm_from_mpi(&self, MPI_COMM_SELF);

    check_allreduce(&t.world_comm, &mpi, (1u << 20) + 3, "comm_gpu.allreduce");
    check_allreduce(&t.embed_comm, &mpi, 4097, "comm_gpu.allreduce.embed_comm");
    check_allreduce(&t.world_comm, &mpi, 0, "comm_gpu.allreduce.empty");
    check_allreduce(&t.tp_comm, &self, 513, "comm_gpu.allreduce.one_rank");
    check_max(&t.world_comm, &mpi);
    check_reduce_scatter(&t.world_comm, &mpi, 777);
    check_allgather(&t.world_comm, &mpi, 513);
    int uneven[2] = {1000, 17}, empty_first[2] = {0, 33};
    check_uneven(&t.world_comm, &mpi, uneven, 0, "uneven");
    check_uneven(&t.world_comm, &mpi, uneven, 5, "gaps");
    check_uneven(&t.world_comm, &mpi, empty_first, 2, "empty_share");
    check_alltoallv(&t.world_comm, &mpi, 0);
    check_alltoallv(&t.world_comm, &mpi, 1);
    check_ordering(&t.world_comm);
    check_in_flight(&t.world_comm);
    check_p2p(&t.pp_comm);

    loom_topology_free(&t);
    verdict("comm_gpu.teardown", 1, "");
    int failures = test_exit();
    MPI_Finalize();
    return failures;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--ranks") == 0) return run_ranks(argc, argv);
    int gpus = loom_cuda_devices();
    if (gpus < 2) {
        printf("skip comm_gpu: %d GPU%s visible; the NCCL path needs two ranks with a GPU each (one GPU: "
               "tests/gpu/test_nccl_gpu.sh checks the fallback)\n", gpus, gpus == 1 ? "" : "s");
        return 0;
    }
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "timeout -k 10 300 scripts/launch.sh -np 2 %s --ranks", argv[0]);
    fflush(stdout);
    int status = system(cmd);
    if (status != 0) printf("FAIL comm_gpu.launch: `%s` exited with status %d (124: no result in 300 s, a hang)\n",
                            cmd, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return status != 0;
}

#else /* !LOOM_CUDA */

int main(void) {
    printf("FAIL comm_gpu: this build has no CUDA backend (LOOM_CUDA is not defined: nvcc not found, or no "
           "model/cuda sources); make test-gpu needs one\n");
    return 2;
}

#endif
