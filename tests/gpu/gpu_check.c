/*
 * tests/gpu/gpu_check.c — the harness of the CUDA backend's op tests (see gpu_check.h): buffers on both backends,
 * the comparison by tolerance kind, and the per-dtype child processes. Empty in a build without the CUDA backend.
 */
#include "tests/gpu/gpu_check.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/error.h"
#include "tests/test.h"
#ifdef LOOM_CUDA
#include "model/cuda/ops_cuda.h"

#define KEPT_RTOL 1e-5      /* of the tensor's max: fp32 outputs, and every output in fp32 */
#define GEMM_RTOL 1e-4      /* of the tensor's max: fp32 GEMM and attention outputs */
#define ULP_FLOOR 0x1p-6    /* elements below M / 64 are measured in the ulp of M / 64 */
#define MAX_ULPS 4.0
#define ATTN_ULPS 2.0       /* attention: ulps at the tensor's max */
#define ATTN_ZERO_ATOL 1e-5 /* attention: |got| where the exact gradient is 0 throughout */
#define FRAC_OVER_1ULP 0.01

enum loom_dtype dt;
const char *dt_name;
const struct loom_ops *be[2];
int side;
int verbose;
uint64_t rng_state;

static const char *test_label; /* gpu_test.name */

/* ---------------------------------------------------------------------------------------------- */
/* buffers                                                                                          */

#define MAX_LIVE 512
static void *host_live[MAX_LIVE], *dev_live[2][MAX_LIVE];
static int n_host_live, n_dev_live[2];

void *host_alloc(size_t bytes) {
    CHECK(n_host_live < MAX_LIVE, "too many live host buffers");
    return host_live[n_host_live++] = calloc_check(1, bytes ? bytes : 1);
}

void *device_alloc(int s, size_t bytes) {
    CHECK(n_dev_live[s] < MAX_LIVE, "too many live device buffers");
    void *d = dev_live[s][n_dev_live[s]++] = be[s]->alloc(bytes);
    CHECK(d != NULL || bytes == 0, "%s: alloc(%zu) failed", be[s]->name, bytes);
    return d;
}

void release_all(void) {
    for (int i = 0; i < n_host_live; i++) free(host_live[i]);
    for (int s = 0; s < 2; s++) {
        for (int i = 0; i < n_dev_live[s]; i++) be[s]->free(dev_live[s][i]);
        n_dev_live[s] = 0;
    }
    n_host_live = 0;
}

void fill_f32(float *x, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++) x[i] = (float)test_rng_uniform(&rng_state, lo, hi);
}

void fill_act(float *x, size_t n, double lo, double hi) {
    fill_f32(x, n, lo, hi);
    loom_round_array(dt, x, n);
}

float *rand_f32(size_t n, double lo, double hi) {
    float *x = host_alloc(n * sizeof(float));
    fill_f32(x, n, lo, hi);
    return x;
}

float *rand_act(size_t n, double lo, double hi) {
    float *x = host_alloc(n * sizeof(float));
    fill_act(x, n, lo, hi);
    return x;
}

float *poison_host(size_t n) {
    float *x = host_alloc(n * sizeof(float));
    memset(x, 0xFF, n * sizeof(float));
    return x;
}

struct pair pair_of(const void *host, size_t n) {
    struct pair p = {{NULL, NULL}, n};
    for (int s = 0; s < 2; s++) {
        p.s[s] = device_alloc(s, n * 4);
        be[s]->from_host(p.s[s], host, n * 4);
    }
    return p;
}

struct pair pair_poisoned(size_t n) { return pair_of(poison_host(n), n); }

void poison(struct pair p) {
    float *x = poison_host(p.n);
    for (int s = 0; s < 2; s++) be[s]->from_host(p.s[s], x, p.n * 4);
}

void *fetch(struct pair p, int s) {
    void *h = host_alloc(p.n * 4);
    be[s]->to_host(h, p.s[s], p.n * 4);
    return h;
}

/* ---------------------------------------------------------------------------------------------- */
/* comparison                                                                                       */

const char *nm(const char *fmt, ...) {
    static char buf[256];
    int k = snprintf(buf, sizeof buf, "gpu.%s.%s.", test_label, dt_name);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + k, sizeof buf - (size_t)k, fmt, ap);
    va_end(ap);
    return buf;
}

/* one ulp of the compute dtype at magnitude x >= 0 (bf16: 8 significant bits, fp16: 11 and subnormals
 * below 2^-14) */
static double dtype_ulp(double x) {
    int bits = dt == LOOM_BF16 ? 8 : 11, emin = dt == LOOM_BF16 ? -126 : -14, e = emin + 1;
    if (x > 0) frexp(x, &e); /* x = m 2^e, m in [0.5, 1): x lies in [2^(e-1), 2^e) */
    int b = e - 1 < emin ? emin : e - 1;
    return ldexp(1.0, b - (bits - 1));
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

int compare(const char *name, const float *got, const float *want, size_t n, enum check_kind kind) {
    size_t bad = n;
    double M = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(want[i])) M = fmax(M, fabs(want[i]));
    /* poison, NaN, inf and bit-exact checks first */
    for (size_t i = 0; i < n && bad == n; i++) {
        if (isnan(want[i])) {
            if (!same_bits(got[i], want[i])) {
                test_result(0, name, "element %zu outside the op's output window was written: %.9g (bits %08x), "
                            "want the NaN poison untouched (n %zu)", i, (double)got[i], f32_bits(got[i]), n);
                return 0;
            }
        } else if (isnan(got[i])) {
            test_result(0, name, "element %zu is NaN (bits %08x), want %.9g: left poisoned, or computed as NaN (n %zu)",
                        i, f32_bits(got[i]), (double)want[i], n);
            return 0;
        } else if ((kind == KIND_EXACT || !isfinite(want[i])) && !same_bits(got[i], want[i])) {
            bad = i;
        }
    }
    if (bad < n) {
        test_result(0, name, "element %zu: got %.9g (bits %08x), want %.9g (bits %08x) bit for bit (n %zu)", bad,
                    (double)got[bad], f32_bits(got[bad]), (double)want[bad], f32_bits(want[bad]), n);
        return 0;
    }
    if (kind == KIND_EXACT) {
        test_result(1, name, "");
        return 1;
    }
    if (kind == KIND_ATTN && M == 0) {
        size_t worst = 0;
        for (size_t i = 0; i < n; i++)
            if (fabs(got[i]) > fabs(got[worst])) worst = i;
        int ok = n == 0 || fabs(got[worst]) <= ATTN_ZERO_ATOL;
        if (verbose) printf("# %s: want 0 throughout, max |got| %.3g\n", name, n ? fabs(got[worst]) : 0.0);
        test_result(ok, name, "element %zu: got %.9g, want 0 (the whole tensor is 0; limit %.0e)", worst,
                    n ? (double)got[worst] : 0.0, ATTN_ZERO_ATOL);
        return ok;
    }

    if (dt == LOOM_F32 || kind == KIND_KEPT) {
        double rtol = kind == KIND_OUT_GEMM || kind == KIND_ATTN ? GEMM_RTOL : KEPT_RTOL, atol = rtol * M;
        size_t worst = 0;
        double worst_d = -1;
        for (size_t i = 0; i < n; i++) {
            if (isnan(want[i]) || !isfinite(want[i])) continue;
            double d = fabs((double)got[i] - want[i]);
            if (!(d <= worst_d)) worst_d = d, worst = i;
        }
        int ok = worst_d <= atol;
        if (verbose) printf("# %s: max |diff| %.3g = %.3g of max |want| %.3g (limit %.0e)\n", name, worst_d,
                            M > 0 ? worst_d / M : 0.0, M, rtol);
        test_result(ok, name, "element %zu: got %.9g want %.9g; max |diff| %.3g = %.3g of max |want| %.3g "
                    "(limit %.0e of it, n %zu)", worst, (double)got[worst], (double)want[worst], worst_d,
                    M > 0 ? worst_d / M : 0.0, M, rtol, n);
        return ok;
    }

    /* bf16 / fp16: ulps of the dtype */
    double floor_mag = kind == KIND_ATTN ? M : M * ULP_FLOOR, max_u = 0, d2 = 0, w2 = 0;
    size_t worst = 0, over = 0, counted = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(want[i]) || !isfinite(want[i])) continue;
        double d = fabs((double)got[i] - want[i]);
        double u = d / dtype_ulp(fmax(fabs(want[i]), floor_mag));
        if (!(u <= max_u)) max_u = u, worst = i;
        over += u > 1;
        counted++;
        d2 += d * d;
        w2 += (double)want[i] * want[i];
    }
    double rel_l2 = w2 > 0 ? sqrt(d2 / w2) : sqrt(d2);
    double l2_limit = dt == LOOM_BF16 ? 1e-2 : 2e-3;
    double u_limit = kind == KIND_ATTN ? ATTN_ULPS : MAX_ULPS;
    double frac = counted ? (double)over / counted : 0;
    int ok = max_u <= u_limit && rel_l2 <= l2_limit && (kind == KIND_ATTN || frac <= FRAC_OVER_1ULP);
    if (verbose) printf("# %s: max %.2f ulps, %.3g%% > 1 ulp, relative L2 %.3g\n", name, max_u, 100 * frac, rel_l2);
    test_result(ok, name, "worst element %zu: got %.9g want %.9g (%.2f ulps of %s at %s, limit %.0f); %.3g%% of "
                "elements > 1 ulp (limit %s); relative L2 %.3g (limit %.0e); n %zu", worst, (double)got[worst],
                (double)want[worst], max_u, dt_name, kind == KIND_ATTN ? "max |want|" : "max(|want|, max |want| / 64)",
                u_limit, 100 * frac, kind == KIND_ATTN ? "none" : "1%", rel_l2, l2_limit, n);
    return ok;
}

int check(const char *name, struct pair p, enum check_kind kind) {
    return compare(name, fetch(p, 0), fetch(p, 1), p.n, kind);
}

/* ---------------------------------------------------------------------------------------------- */
/* one dtype per process; with no argument, one child process per dtype                            */

static int run_dtype(const struct gpu_test *t, const char *name) {
    if (strcmp(name, "fp32") == 0) dt = LOOM_F32;
    else if (strcmp(name, "bf16") == 0) dt = LOOM_BF16;
    else if (strcmp(name, "fp16") == 0) dt = LOOM_F16;
    else {
        fprintf(stderr, "usage: test_%s_gpu [fp32|bf16|fp16]\n", t->name);
        return 2;
    }
    dt_name = name;
    verbose = getenv("LOOM_TEST_VERBOSE") && strcmp(getenv("LOOM_TEST_VERBOSE"), "0") != 0;
    rng_state = t->seed;
    be[0] = loom_ops_cuda(0, dt);
    if (!be[0]) {
        test_result(0, nm("backend"), "loom_ops_cuda(0, %s) returned NULL (see its message on stderr)", name);
        return test_exit();
    }
    be[1] = loom_ops_cpu_mixed(loom_ops_cpu(1), dt);
    t->run();
    return test_exit();
}

/* Runs this program on one dtype, passing its output through; a child that fails without a FAIL line (a
 * CHECK, a crash) gets one here. The parent has touched CUDA, so the child execs at once. */
static int run_child(const struct gpu_test *t, const char *name) {
    char argv0[64];
    snprintf(argv0, sizeof argv0, "test_%s_gpu", t->name);
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execl("/proc/self/exe", argv0, name, (char *)NULL);
        fprintf(stderr, "exec /proc/self/exe: %s\n", strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    FILE *in = fdopen(fds[0], "r");
    CHECK(in != NULL, "fdopen: %s", strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    int fails = 0;
    while (getline(&line, &cap, in) > 0) {
        fputs(line, stdout);
        fflush(stdout);
        fails += strncmp(line, "FAIL ", 5) == 0;
    }
    free(line);
    fclose(in);
    int status = 0;
    waitpid(pid, &status, 0);
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok && fails == 0) {
        if (WIFSIGNALED(status))
            printf("FAIL gpu.%s.%s: the test process was killed by signal %d (see stderr)\n", t->name, name,
                   WTERMSIG(status));
        else
            printf("FAIL gpu.%s.%s: the test process exited with status %d without a FAIL line (a CHECK: see "
                   "stderr)\n", t->name, name, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    return ok ? 0 : 1;
}

int gpu_test_main(int argc, char **argv, const struct gpu_test *t) {
    test_label = t->name;
    if (argc == 2) return run_dtype(t, argv[1]);
    if (loom_cuda_devices() == 0) {
        printf("FAIL gpu.%s: no CUDA device is visible; make test-gpu must run on a GPU machine\n", t->name);
        return 2;
    }
    int failed = 0;
    failed |= run_child(t, "fp32");
    failed |= run_child(t, "bf16");
    failed |= run_child(t, "fp16");
    return failed;
}

#endif /* LOOM_CUDA */
