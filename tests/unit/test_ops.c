/*
 * tests/unit/test_ops.c — checks every op of the CPU backend (model/ops.h) against a double reference.
 *
 * Forward ops are compared with straightforward double-precision loops written here (no BLAS).
 * Backward ops are compared with central finite differences of L = sum(w * forward(x)) for a fixed
 * random weighting w (w is the dout handed to the op), evaluated in double through the reference
 * forward with h = 1e-6, so the numeric gradient is good to ~1e-9 and the tolerance only has to
 * cover the op's fp32 rounding. Larger shapes, too big for finite differences, are checked against
 * the double analytic gradient instead.
 *
 * The gradient rule of ops.h is pinned down by starting every output buffer from nonzero values:
 * parameter gradients and accumulate=1 outputs must add to them, activation gradients must overwrite
 * them, and strided ops must leave every element outside their window exactly as it was.
 *
 * Tolerances, as |got - want| <= atol + rtol * |want|:
 *   forward vs double reference      atol 1e-6, rtol 1e-5
 *   fp32 gradient vs double FD       atol 2e-6, rtol 2e-5
 *   fp32 sums of K ~ 100 products    atol 3e-5, rtol 1e-5 (rounding grows like sqrt(K) * 6e-8 * sum|terms|)
 *   exactly rounded element-wise ops atol 0,    rtol 1e-7 (one fp32 rounding is <= 6e-8 relative)
 *   pure copies / untouched elements exact
 *   scatter_add_rows in index order  exact against the same sequential fp32 loop (ops.h fixes the order)
 *   vocabulary-parallel loss pieces  as the fused cross-entropy: rowmax and tlogit exact, the rest forward
 *                                    or gradient tolerance against both the fused op and the double reference
 */
#include <stdint.h>
#include <string.h>

#include "core/error.h"
#include "model/ops.h"
#include "tests/test.h"

#define FWD_ATOL 1e-6
#define FWD_RTOL 1e-5
#define BWD_ATOL 2e-6
#define BWD_RTOL 2e-5
#define EW_RTOL 1e-7
#define FD_H 1e-6

static const struct loom_ops *ops;

/* ---------------------------------------------------------------------------------------------- */
/* helpers: names, random numbers, tracked buffers, finite differences                           */

/* xorshift64*, fixed seed: the same inputs every run */
static uint64_t rng_state = 0x853c49e6748fea9bull;

/* Every buffer a test makes is tracked here and released by release_all() at the end of the test. */
#define MAX_LIVE 256
static void *host_live[MAX_LIVE];
static void *dev_live[MAX_LIVE];
static int n_host_live, n_dev_live;

static void *host_alloc(size_t bytes) {
    CHECK(n_host_live < MAX_LIVE, "too many live host buffers");
    return host_live[n_host_live++] = calloc_check(1, bytes);
}

static void *dev_alloc(size_t bytes) {
    CHECK(n_dev_live < MAX_LIVE, "too many live device buffers");
    void *p = ops->alloc(bytes);
    CHECK(p != NULL || bytes == 0, "ops->alloc(%zu) failed", bytes);
    return dev_live[n_dev_live++] = p;
}

static void release_all(void) {
    for (int i = 0; i < n_host_live; i++) free(host_live[i]);
    for (int i = 0; i < n_dev_live; i++) ops->free(dev_live[i]);
    n_host_live = n_dev_live = 0;
}

static float *rand_floats(size_t n, double lo, double hi) {
    float *x = host_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)test_rng_uniform(&rng_state, lo, hi);
    return x;
}

static float *dev_from(const void *host, size_t bytes) {
    float *d = dev_alloc(bytes);
    ops->from_host(d, host, bytes);
    return d;
}

static float *dev_floats(const float *host, size_t n) { return dev_from(host, n * sizeof(float)); }

static float *host_floats(const float *dev, size_t n) {
    float *h = host_alloc(n * sizeof(float));
    ops->to_host(h, dev, n * sizeof(float));
    return h;
}

static double *dbl(const float *x, size_t n) {
    double *d = host_alloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

static double *dzeros(size_t n) { return host_alloc(n * sizeof(double)); }

static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* want[i] = base[i] + add[i] (the expected value of an accumulating output) */
static double *plus(const float *base, const double *add, size_t n) {
    double *s = dzeros(n);
    for (size_t i = 0; i < n; i++) s[i] = (double)base[i] + add[i];
    return s;
}

/* dst[r*cols + c] = src[r*ld + c]: the [rows, cols] window of a row-strided buffer */
static float *gather_f(const float *src, int rows, int cols, int ld) {
    float *dst = host_alloc((size_t)rows * cols * sizeof(float));
    for (int r = 0; r < rows; r++)
        memcpy(dst + (size_t)r * cols, src + (size_t)r * ld, cols * sizeof(float));
    return dst;
}

static double *gather_d(const double *src, int rows, int cols, int ld) {
    double *dst = dzeros((size_t)rows * cols);
    for (int r = 0; r < rows; r++)
        memcpy(dst + (size_t)r * cols, src + (size_t)r * ld, cols * sizeof(double));
    return dst;
}

/* touched[i] = 1 for i in the first cols columns of each row of a buffer with row stride ld */
static unsigned char *window_mask(size_t n, int rows, int ld, int cols) {
    unsigned char *m = host_alloc(n);
    for (int r = 0; r < rows; r++) memset(m + (size_t)r * ld, 1, cols);
    return m;
}

/* Every element outside the mask must be bit-for-bit what it was before the op. */
static void check_untouched(const char *nm, const float *got, const float *orig,
                            const unsigned char *touched, size_t n) {
    size_t bad = n;
    for (size_t i = 0; i < n && bad == n; i++)
        if (!touched[i] && memcmp(&got[i], &orig[i], sizeof(float)) != 0) bad = i;
    test_result(bad == n, nm, "element %zu outside the op's window changed: %.9g, was %.9g", bad,
                bad < n ? (double)got[bad] : 0.0, bad < n ? (double)orig[bad] : 0.0);
}

/* grad[i] = (L(x + h e_i) - L(x - h e_i)) / 2h, with x a buffer the loss reads through ctx. */
typedef double (*loss_fn)(void *ctx);

static double *fd_gradient(double *x, size_t n, loss_fn loss, void *ctx) {
    double *grad = dzeros(n);
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + FD_H;
        double lp = loss(ctx);
        x[i] = x0 - FD_H;
        double lm = loss(ctx);
        x[i] = x0;
        grad[i] = (lp - lm) / (2 * FD_H);
    }
    return grad;
}

/* ---------------------------------------------------------------------------------------------- */
/* memory                                                                                         */

static void test_memory(void) {
    size_t n = 1000, bytes = n * sizeof(float);
    double *zeros = dzeros(n);
    float *d = dev_alloc(bytes);
    test_close("ops.memory.alloc_zeroed", host_floats(d, n), zeros, n, 0, 0);
    float *x = rand_floats(n, -1, 1);
    ops->from_host(d, x, bytes);
    test_close("ops.memory.roundtrip", host_floats(d, n), dbl(x, n), n, 0, 0);
    ops->zero(d, bytes);
    test_close("ops.memory.zero", host_floats(d, n), zeros, n, 0, 0);
    release_all();
}

/* ---------------------------------------------------------------------------------------------- */
/* matmul: out[N,OC] = inp[N,C] @ weight[OC,C]^T                                                  */

static void matmul_ref(double *out, const double *x, const double *w, int N, int C, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = 0;
            for (int c = 0; c < C; c++) s += x[(size_t)n * C + c] * w[(size_t)o * C + c];
            out[(size_t)n * OC + o] = s;
        }
}

struct matmul_ctx {
    double *x, *w, *wo, *out;
    int N, C, OC;
};

static double matmul_loss(void *p) {
    struct matmul_ctx *m = p;
    matmul_ref(m->out, m->x, m->w, m->N, m->C, m->OC);
    return dot(m->out, m->wo, (size_t)m->N * m->OC);
}

/* fd: gradients by finite differences; otherwise by the double formulas
 * dinp = dout @ weight, dweight = dout^T @ inp. atol: for forward and backward alike. */
static void test_matmul_case(const char *tag, int N, int C, int OC, int fd, double atol, double rtol) {
    size_t nx = (size_t)N * C, nw = (size_t)OC * C, no = (size_t)N * OC;
    float *x = rand_floats(nx, -1, 1), *w = rand_floats(nw, -1, 1), *dout = rand_floats(no, -1, 1);
    float *d_x = dev_floats(x, nx), *d_w = dev_floats(w, nw), *d_dout = dev_floats(dout, no);

    struct matmul_ctx m = {dbl(x, nx), dbl(w, nw), dbl(dout, no), dzeros(no), N, C, OC};
    double *want = dzeros(no);
    matmul_ref(want, m.x, m.w, N, C, OC);
    float *d_out = dev_alloc(no * sizeof(float));
    ops->matmul_forward(d_out, d_x, d_w, N, C, OC);
    test_close(test_name("ops.matmul%s.forward", tag), host_floats(d_out, no), want, no, atol, rtol);

    double *gx, *gw;
    if (fd) {
        gx = fd_gradient(m.x, nx, matmul_loss, &m);
        gw = fd_gradient(m.w, nw, matmul_loss, &m);
    } else {
        gx = dzeros(nx);
        gw = dzeros(nw);
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) {
                double g = m.wo[(size_t)n * OC + o];
                for (int c = 0; c < C; c++) {
                    gx[(size_t)n * C + c] += g * m.w[(size_t)o * C + c];
                    gw[(size_t)o * C + c] += g * m.x[(size_t)n * C + c];
                }
            }
    }

    /* accumulate = 0 overwrites whatever dinp held */
    float *d_dx = dev_floats(rand_floats(nx, -100, 100), nx);
    ops->matmul_backward_input(d_dx, d_dout, d_w, N, C, OC, 0);
    test_close(test_name("ops.matmul%s.backward_input", tag), host_floats(d_dx, nx), gx, nx, atol, rtol);

    float *init = rand_floats(nx, -1, 1);
    float *d_dx_acc = dev_floats(init, nx);
    ops->matmul_backward_input(d_dx_acc, d_dout, d_w, N, C, OC, 1);
    test_close(test_name("ops.matmul%s.backward_input.accumulate", tag), host_floats(d_dx_acc, nx),
               plus(init, gx, nx), nx, atol, rtol);

    float *winit = rand_floats(nw, -1, 1);
    float *d_dw = dev_floats(winit, nw);
    ops->matmul_backward_weight(d_dw, d_dout, d_x, N, C, OC);
    test_close(test_name("ops.matmul%s.backward_weight", tag), host_floats(d_dw, nw), plus(winit, gw, nw), nw,
               atol, rtol);
    release_all();
}

static void test_matmul(void) {
    test_matmul_case("", 5, 7, 6, 1, BWD_ATOL, BWD_RTOL);
    /* sums of 67..129 products: see the tolerance table at the top */
    test_matmul_case(".large", 67, 129, 95, 0, 3e-5, 1e-5);
}

/* ---------------------------------------------------------------------------------------------- */
/* embedding: out[n] = wte[ids[n]], zeros where ids[n] < 0; dwte[ids[n]] += dout[n] where ids[n] >= 0 */

struct embedding_ctx {
    double *wte, *wo, *out;
    const int *ids;
    int N, C;
};

static void embedding_ref(double *out, const int *ids, const double *wte, int N, int C) {
    for (int n = 0; n < N; n++) {
        if (ids[n] >= 0) memcpy(out + (size_t)n * C, wte + (size_t)ids[n] * C, C * sizeof(double));
        else memset(out + (size_t)n * C, 0, C * sizeof(double));
    }
}

static double embedding_loss(void *p) {
    struct embedding_ctx *e = p;
    embedding_ref(e->out, e->ids, e->wte, e->N, e->C);
    return dot(e->out, e->wo, (size_t)e->N * e->C);
}

/* The output starts as garbage, so a row of zeros for a negative id must be written, not assumed. */
static void test_embedding_case(const char *tag, const int *ids, int N, int V, int C) {
    size_t nw = (size_t)V * C, no = (size_t)N * C;
    float *wte = rand_floats(nw, -1, 1), *dout = rand_floats(no, -1, 1);
    float *d_wte = dev_floats(wte, nw), *d_dout = dev_floats(dout, no);
    int *d_ids = (int *)dev_from(ids, sizeof(int) * N);

    struct embedding_ctx e = {dbl(wte, nw), dbl(dout, no), dzeros(no), ids, N, C};
    double *want = dzeros(no);
    embedding_ref(want, ids, e.wte, N, C);
    float *d_out = dev_floats(rand_floats(no, -100, 100), no);
    ops->embedding_forward(d_out, d_ids, d_wte, N, C);
    test_close(test_name("ops.embedding%s.forward", tag), host_floats(d_out, no), want, no, 0, 0);

    double *g = fd_gradient(e.wte, nw, embedding_loss, &e);
    float *init = rand_floats(nw, -1, 1);
    float *d_dwte = dev_floats(init, nw);
    ops->embedding_backward(d_dwte, d_dout, d_ids, N, C);
    test_close(test_name("ops.embedding%s.backward", tag), host_floats(d_dwte, nw), plus(init, g, nw), nw,
               BWD_ATOL, BWD_RTOL);
    release_all();
}

static void test_embedding(void) {
    static const int ids[] = {3, 1, 3, 0, 9, 3, 1, 7};                 /* 3 three times, 1 twice */
    static const int ids_tp[] = {-1, 4, -1, 0, 4, -1, -7, 2, 4, -1}; /* ids another tp rank holds: < 0 */
    test_embedding_case("", ids, 8, 10, 6);
    test_embedding_case(".negative_ids", ids_tp, 10, 5, 6);
}

/* ---------------------------------------------------------------------------------------------- */
/* RMSNorm over the first C columns of row-strided buffers (Zhang & Sennrich 2019)                */

static void rmsnorm_ref(double *out, double *rstd, const double *x, const double *w, int N, int C,
                        int ld_out, int ld_inp, double eps) {
    for (int n = 0; n < N; n++) {
        const double *xr = x + (size_t)n * ld_inp;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += xr[c] * xr[c];
        double r = 1.0 / sqrt(ss / C + eps);
        if (rstd) rstd[n] = r;
        for (int c = 0; c < C; c++) out[(size_t)n * ld_out + c] = xr[c] * r * w[c];
    }
}

struct rmsnorm_ctx {
    double *x, *w, *wo, *out;
    int N, C, ld_out, ld_inp;
    double eps;
};

static double rmsnorm_loss(void *p) {
    struct rmsnorm_ctx *r = p;
    rmsnorm_ref(r->out, NULL, r->x, r->w, r->N, r->C, r->ld_out, r->ld_inp, r->eps);
    double s = 0;
    for (int n = 0; n < r->N; n++)
        for (int c = 0; c < r->C; c++) {
            size_t i = (size_t)n * r->ld_out + c;
            s += r->wo[i] * r->out[i];
        }
    return s;
}

/* Columns outside the window hold large sentinels: an op that reads them gets visibly wrong values,
 * one that writes them fails the untouched check. */
static float *strided_rand(int rows, int cols, int ld, double lo, double hi, float sentinel) {
    float *x = host_alloc((size_t)rows * ld * sizeof(float));
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < ld; c++)
            x[(size_t)r * ld + c] =
                c < cols ? (float)test_rng_uniform(&rng_state, lo, hi) : sentinel + (float)(r * ld + c);
    return x;
}

static void test_rmsnorm_case(const char *tag, int N, int C, int ld_out, int ld_inp) {
    const float eps = 1e-5f;
    size_t nx = (size_t)N * ld_inp, no = (size_t)N * ld_out;
    float *x = strided_rand(N, C, ld_inp, -2, 2, 1000.0f);
    for (int c = 0; c < C; c++) x[ld_inp + c] *= 3e-3f; /* row 1: mean(x^2) ~ eps, so eps matters */
    float *w = rand_floats(C, 0.5, 1.5);
    float *dout = strided_rand(N, C, ld_out, -1, 1, 1e4f);
    float *d_x = dev_floats(x, nx), *d_w = dev_floats(w, C), *d_dout = dev_floats(dout, no);

    struct rmsnorm_ctx r = {dbl(x, nx), dbl(w, C), dbl(dout, no), dzeros(no), N, C, ld_out, ld_inp, eps};
    double *want = dzeros(no), *want_rstd = dzeros(N);
    rmsnorm_ref(want, want_rstd, r.x, r.w, N, C, ld_out, ld_inp, eps);

    float *out0 = strided_rand(N, 0, ld_out, 0, 0, -2000.0f);
    float *d_out = dev_floats(out0, no), *d_rstd = dev_floats(rand_floats(N, -100, 100), N);
    ops->rmsnorm_forward(d_out, d_rstd, d_x, d_w, N, C, ld_out, ld_inp, eps);
    float *out = host_floats(d_out, no);
    test_close(test_name("ops.rmsnorm%s.forward", tag), gather_f(out, N, C, ld_out), gather_d(want, N, C, ld_out),
               (size_t)N * C, FWD_ATOL, FWD_RTOL);
    test_close(test_name("ops.rmsnorm%s.rstd", tag), host_floats(d_rstd, N), want_rstd, N, FWD_ATOL, FWD_RTOL);
    if (ld_out > C)
        check_untouched(test_name("ops.rmsnorm%s.forward.untouched", tag), out, out0,
                        window_mask(no, N, ld_out, C), no);

    double *gx = fd_gradient(r.x, nx, rmsnorm_loss, &r);
    double *gw = fd_gradient(r.w, C, rmsnorm_loss, &r);
    float *dx0 = strided_rand(N, C, ld_inp, -100, 100, -3000.0f); /* window: garbage to overwrite */
    float *winit = rand_floats(C, -1, 1);
    float *d_dx = dev_floats(dx0, nx), *d_dw = dev_floats(winit, C);
    ops->rmsnorm_backward(d_dx, d_dw, d_dout, d_x, d_w, d_rstd, N, C, ld_out, ld_inp);
    float *dx = host_floats(d_dx, nx);
    test_close(test_name("ops.rmsnorm%s.backward.dinp", tag), gather_f(dx, N, C, ld_inp),
               gather_d(gx, N, C, ld_inp), (size_t)N * C, BWD_ATOL, BWD_RTOL);
    test_close(test_name("ops.rmsnorm%s.backward.dweight", tag), host_floats(d_dw, C), plus(winit, gw, C), C,
               BWD_ATOL, BWD_RTOL);
    if (ld_inp > C)
        check_untouched(test_name("ops.rmsnorm%s.backward.untouched", tag), dx, dx0,
                        window_mask(nx, N, ld_inp, C), nx);
    release_all();
}

static void test_rmsnorm(void) {
    test_rmsnorm_case("", 4, 8, 8, 8);
    test_rmsnorm_case(".strided", 5, 7, 12, 10);
}

/* ---------------------------------------------------------------------------------------------- */
/* RoPE (Su et al. 2021, RoFormer): rotate pairs by pos * theta^(-2i/D)                           */

/* In place on a double buffer laid out like the op's: (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos). */
static void rope_ref(double *x, int N, int T, int H, int ld, int head_stride, int D, double theta,
                     int interleaved) {
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++) {
            double *xh = x + (size_t)n * ld + (size_t)h * head_stride;
            for (int i = 0; i < D / 2; i++) {
                double a = (n % T) * pow(theta, -2.0 * i / D), c = cos(a), s = sin(a);
                int i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + D / 2;
                double x0 = xh[i0], x1 = xh[i1];
                xh[i0] = x0 * c - x1 * s;
                xh[i1] = x0 * s + x1 * c;
            }
        }
}

struct rope_ctx {
    double *x, *wo, *tmp;
    size_t n;
    int off, N, T, H, ld, head_stride, D, interleaved;
    double theta;
};

static double rope_loss(void *p) {
    struct rope_ctx *r = p;
    memcpy(r->tmp, r->x, r->n * sizeof(double));
    rope_ref(r->tmp + r->off, r->N, r->T, r->H, r->ld, r->head_stride, r->D, r->theta, r->interleaved);
    return dot(r->tmp, r->wo, r->n);
}

/* The rope window starts `off` columns into each row's buffer: the MLA case ropes the last D
 * columns of each head of width head_stride, in rows that also hold other data (ld > H*head_stride). */
static void test_rope_case(const char *tag, int interleaved, int N, int T, int H, int ld, int head_stride,
                           int D, int off, float theta) {
    const char *style = interleaved ? "interleaved" : "half";
    size_t n = (size_t)N * ld;
    float *x = rand_floats(n, -1, 1), *dout = rand_floats(n, -1, 1);
    unsigned char *touched = host_alloc(n);
    for (int r = 0; r < N; r++)
        for (int h = 0; h < H; h++) memset(touched + (size_t)r * ld + off + (size_t)h * head_stride, 1, D);

    struct rope_ctx c = {dbl(x, n), dbl(dout, n), dzeros(n), n, off, N, T, H, ld, head_stride, D, interleaved,
                         theta};
    double *want = dzeros(n);
    memcpy(want, c.x, n * sizeof(double));
    rope_ref(want + off, N, T, H, ld, head_stride, D, theta, interleaved);
    float *d_x = dev_floats(x, n);
    ops->rope_forward(d_x + off, N, T, H, ld, head_stride, D, theta, interleaved);
    float *got = host_floats(d_x, n);
    test_close(test_name("ops.rope.%s%s.forward", style, tag), got, want, n, FWD_ATOL, FWD_RTOL);
    check_untouched(test_name("ops.rope.%s%s.forward.untouched", style, tag), got, x, touched, n);

    /* outside the window the op is the identity, so the gradient there is dout itself */
    double *g = fd_gradient(c.x, n, rope_loss, &c);
    float *d_dx = dev_floats(dout, n);
    ops->rope_backward(d_dx + off, N, T, H, ld, head_stride, D, theta, interleaved);
    float *dx = host_floats(d_dx, n);
    test_close(test_name("ops.rope.%s%s.backward", style, tag), dx, g, n, BWD_ATOL, BWD_RTOL);
    check_untouched(test_name("ops.rope.%s%s.backward.untouched", style, tag), dx, dout, touched, n);
    release_all();
}

static void test_rope(void) {
    for (int interleaved = 1; interleaved >= 0; interleaved--) {
        /* two sequences of T = 4, H = 2 heads of width 8, packed */
        test_rope_case("", interleaved, 8, 4, 2, 16, 8, 8, 0, 10000.0f);
        /* MLA: 3 heads of 6 nope + 4 rope columns, rows padded to 35, rope on columns 6..9 of each head */
        test_rope_case(".mla", interleaved, 8, 4, 3, 35, 10, 4, 6, 500.0f);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* causal attention with grouped key/value heads                                                  */

struct attn_shape {
    int B, T, H, Hkv, Dqk, Dv;
    double scale;
};

/* probs may be NULL */
static void attention_ref(double *out, double *probs, const double *q, const double *k, const double *v,
                          const struct attn_shape *s) {
    int B = s->B, T = s->T, H = s->H, Hkv = s->Hkv, Dqk = s->Dqk, Dv = s->Dv;
    double p[64];
    CHECK(T <= 64, "reference attention handles T <= 64");
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int hk = h / (H / Hkv);
            for (int t = 0; t < T; t++) {
                const double *qt = q + (((size_t)b * T + t) * H + h) * Dqk;
                double mx = -INFINITY, sum = 0;
                for (int u = 0; u <= t; u++) {
                    const double *ku = k + (((size_t)b * T + u) * Hkv + hk) * Dqk;
                    double d = 0;
                    for (int i = 0; i < Dqk; i++) d += qt[i] * ku[i];
                    p[u] = d * s->scale;
                    if (p[u] > mx) mx = p[u];
                }
                for (int u = 0; u <= t; u++) sum += (p[u] = exp(p[u] - mx));
                double *ot = out + (((size_t)b * T + t) * H + h) * Dv;
                for (int i = 0; i < Dv; i++) ot[i] = 0;
                for (int u = 0; u <= t; u++) {
                    p[u] /= sum;
                    if (probs) probs[(((size_t)b * H + h) * T + t) * T + u] = p[u];
                    const double *vu = v + (((size_t)b * T + u) * Hkv + hk) * Dv;
                    for (int i = 0; i < Dv; i++) ot[i] += p[u] * vu[i];
                }
            }
        }
}

/* The analytic gradient: dP = dout v^T, dS = P (dP - rowsum(P dP)), dq = scale dS k, dk = scale dS^T q,
 * dv = P^T dout, summed over the query heads sharing a kv head. */
static void attention_backward_ref(double *dq, double *dk, double *dv, const double *dout, const double *q,
                                   const double *k, const double *v, const struct attn_shape *s) {
    int B = s->B, T = s->T, H = s->H, Hkv = s->Hkv, Dqk = s->Dqk, Dv = s->Dv;
    size_t nq = (size_t)B * T * H, no = nq * Dv;
    double *out = dzeros(no), *probs = dzeros((size_t)B * H * T * T);
    attention_ref(out, probs, q, k, v, s);
    memset(dq, 0, nq * Dqk * sizeof(double));
    memset(dk, 0, (size_t)B * T * Hkv * Dqk * sizeof(double));
    memset(dv, 0, (size_t)B * T * Hkv * Dv * sizeof(double));
    double dp[64];
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int hk = h / (H / Hkv);
            for (int t = 0; t < T; t++) {
                const double *pt = probs + (((size_t)b * H + h) * T + t) * T;
                const double *do_t = dout + (((size_t)b * T + t) * H + h) * Dv;
                double rs = 0;
                for (int u = 0; u <= t; u++) {
                    dp[u] = dot(do_t, v + (((size_t)b * T + u) * Hkv + hk) * Dv, Dv);
                    rs += pt[u] * dp[u];
                }
                for (int u = 0; u <= t; u++) {
                    double ds = pt[u] * (dp[u] - rs) * s->scale;
                    size_t qi = (((size_t)b * T + t) * H + h) * Dqk;
                    size_t ki = (((size_t)b * T + u) * Hkv + hk) * Dqk;
                    size_t vi = (((size_t)b * T + u) * Hkv + hk) * Dv;
                    for (int i = 0; i < Dqk; i++) {
                        dq[qi + i] += ds * k[ki + i];
                        dk[ki + i] += ds * q[qi + i];
                    }
                    for (int i = 0; i < Dv; i++) dv[vi + i] += pt[u] * do_t[i];
                }
            }
        }
}

struct attn_ctx {
    double *q, *k, *v, *wo, *out;
    struct attn_shape s;
};

static double attention_loss(void *p) {
    struct attn_ctx *a = p;
    attention_ref(a->out, NULL, a->q, a->k, a->v, &a->s);
    return dot(a->out, a->wo, (size_t)a->s.B * a->s.T * a->s.H * a->s.Dv);
}

/* fd: gradients by finite differences; otherwise by attention_backward_ref. */
static void test_attention_case(const char *tag, int B, int T, int H, int Hkv, int Dqk, int Dv, int fd) {
    struct attn_shape s = {B, T, H, Hkv, Dqk, Dv, 1.0 / sqrt((double)Dqk)};
    size_t nq = (size_t)B * T * H * Dqk, nk = (size_t)B * T * Hkv * Dqk, nv = (size_t)B * T * Hkv * Dv;
    size_t no = (size_t)B * T * H * Dv, np = (size_t)B * H * T * T;
    float *q = rand_floats(nq, -2, 2), *k = rand_floats(nk, -1, 1), *v = rand_floats(nv, -1, 1);
    float *dout = rand_floats(no, -1, 1);
    float *d_q = dev_floats(q, nq), *d_k = dev_floats(k, nk), *d_v = dev_floats(v, nv);
    float *d_dout = dev_floats(dout, no);

    struct attn_ctx a = {dbl(q, nq), dbl(k, nk), dbl(v, nv), dbl(dout, no), dzeros(no), s};
    double *want = dzeros(no), *want_probs = dzeros(np);
    attention_ref(want, want_probs, a.q, a.k, a.v, &s);
    /* probs starts as garbage: only its causal part is specified, the backward check catches an op
     * that reads the rest */
    size_t nsaved = ops->attention_saved_floats(B, T, H, Dqk, Dv);
    test_result(nsaved == np, test_name("ops.attention%s.saved_floats", tag),
                "attention_saved_floats = %zu, want the probabilities B*H*T*T = %zu", nsaved, np);
    float *d_out = dev_floats(rand_floats(no, -100, 100), no);
    float *d_probs = dev_floats(rand_floats(np, -100, 100), np);
    ops->attention_forward(d_out, d_probs, d_q, d_k, d_v, B, T, H, Hkv, Dqk, Dv, (float)s.scale);
    test_close(test_name("ops.attention%s.forward", tag), host_floats(d_out, no), want, no, FWD_ATOL, FWD_RTOL);

    float *probs = host_floats(d_probs, np);
    size_t ncausal = (size_t)B * H * T * (T + 1) / 2, j = 0;
    float *got_causal = host_alloc(ncausal * sizeof(float));
    double *want_causal = dzeros(ncausal);
    for (size_t bh = 0; bh < (size_t)B * H; bh++)
        for (int t = 0; t < T; t++)
            for (int u = 0; u <= t; u++, j++) {
                got_causal[j] = probs[(bh * T + t) * T + u];
                want_causal[j] = want_probs[(bh * T + t) * T + u];
            }
    test_close(test_name("ops.attention%s.probs", tag), got_causal, want_causal, ncausal, FWD_ATOL, FWD_RTOL);

    double *gq, *gk, *gv;
    if (fd) {
        gq = fd_gradient(a.q, nq, attention_loss, &a);
        gk = fd_gradient(a.k, nk, attention_loss, &a);
        gv = fd_gradient(a.v, nv, attention_loss, &a);
    } else {
        gq = dzeros(nq);
        gk = dzeros(nk);
        gv = dzeros(nv);
        attention_backward_ref(gq, gk, gv, a.wo, a.q, a.k, a.v, &s);
    }
    float *d_dq = dev_floats(rand_floats(nq, -100, 100), nq);
    float *d_dk = dev_floats(rand_floats(nk, -100, 100), nk);
    float *d_dv = dev_floats(rand_floats(nv, -100, 100), nv);
    ops->attention_backward(d_dq, d_dk, d_dv, d_dout, d_out, d_probs, d_q, d_k, d_v, B, T, H, Hkv, Dqk, Dv,
                            (float)s.scale);
    test_close(test_name("ops.attention%s.backward.dq", tag), host_floats(d_dq, nq), gq, nq, BWD_ATOL, BWD_RTOL);
    test_close(test_name("ops.attention%s.backward.dk", tag), host_floats(d_dk, nk), gk, nk, BWD_ATOL, BWD_RTOL);
    test_close(test_name("ops.attention%s.backward.dv", tag), host_floats(d_dv, nv), gv, nv, BWD_ATOL, BWD_RTOL);
    release_all();
}

static void test_attention(void) {
    test_attention_case("", 2, 5, 4, 2, 6, 4, 1);          /* GQA, Dqk != Dv */
    test_attention_case(".mha", 2, 5, 4, 4, 6, 4, 1);      /* Hkv = H */
    test_attention_case(".mqa", 1, 4, 3, 1, 5, 3, 1);      /* Hkv = 1 */
    test_attention_case(".large", 2, 37, 4, 2, 24, 16, 0); /* analytic gradient */
}

/* ---------------------------------------------------------------------------------------------- */
/* SwiGLU (Shazeer 2020): out = silu(gate) * up                                                   */

struct swiglu_ctx {
    double *gate, *up, *wo;
    size_t n;
};

static double swiglu_loss(void *p) {
    struct swiglu_ctx *s = p;
    double l = 0;
    for (size_t i = 0; i < s->n; i++) l += s->wo[i] * s->gate[i] / (1 + exp(-s->gate[i])) * s->up[i];
    return l;
}

static void test_swiglu(void) {
    enum { N = 5, F = 13 };
    size_t n = N * F;
    float *gate = rand_floats(n, -6, 6), *up = rand_floats(n, -1, 1), *dout = rand_floats(n, -1, 1);
    float *d_gate = dev_floats(gate, n), *d_up = dev_floats(up, n), *d_dout = dev_floats(dout, n);
    struct swiglu_ctx s = {dbl(gate, n), dbl(up, n), dbl(dout, n), n};

    double *want = dzeros(n);
    for (size_t i = 0; i < n; i++) want[i] = s.gate[i] / (1 + exp(-s.gate[i])) * s.up[i];
    float *d_out = dev_floats(rand_floats(n, -100, 100), n);
    ops->swiglu_forward(d_out, d_gate, d_up, N, F);
    test_close("ops.swiglu.forward", host_floats(d_out, n), want, n, FWD_ATOL, FWD_RTOL);

    double *gg = fd_gradient(s.gate, n, swiglu_loss, &s), *gu = fd_gradient(s.up, n, swiglu_loss, &s);
    float *d_dgate = dev_floats(rand_floats(n, -100, 100), n);
    float *d_dup = dev_floats(rand_floats(n, -100, 100), n);
    ops->swiglu_backward(d_dgate, d_dup, d_dout, d_gate, d_up, N, F);
    test_close("ops.swiglu.backward.dgate", host_floats(d_dgate, n), gg, n, BWD_ATOL, BWD_RTOL);
    test_close("ops.swiglu.backward.dup", host_floats(d_dup, n), gu, n, BWD_ATOL, BWD_RTOL);
    release_all();
}

/* ---------------------------------------------------------------------------------------------- */
/* element-wise                                                                                   */

static void test_elementwise(void) {
    size_t n = 1001;
    float *a = rand_floats(n, -1, 1), *b = rand_floats(n, -1, 1);
    float *d_a = dev_floats(a, n), *d_b = dev_floats(b, n);
    double *want = dzeros(n);

    for (size_t i = 0; i < n; i++) want[i] = (double)a[i] + b[i];
    float *d_out = dev_floats(rand_floats(n, -100, 100), n);
    ops->add(d_out, d_a, d_b, n);
    test_close("ops.add", host_floats(d_out, n), want, n, 0, EW_RTOL);

    ops->accumulate(d_a, d_b, n);
    test_close("ops.accumulate", host_floats(d_a, n), want, n, 0, EW_RTOL);

    for (size_t i = 0; i < n; i++) want[i] = (double)b[i] * -1.75;
    ops->scale(d_b, -1.75f, n);
    test_close("ops.scale", host_floats(d_b, n), want, n, 0, EW_RTOL);

    /* copy_2d: a [5, 7] window between buffers of row strides 9 (src) and 11 (dst) */
    enum { ROWS = 5, COLS = 7, LD_SRC = 9, LD_DST = 11 };
    size_t ns = ROWS * LD_SRC, nd = ROWS * LD_DST;
    float *src = strided_rand(ROWS, COLS, LD_SRC, -1, 1, 1e4f), *dst0 = rand_floats(nd, -1, 1);
    float *d_src = dev_floats(src, ns);
    unsigned char *touched = window_mask(nd, ROWS, LD_DST, COLS);
    double *want_copy = dzeros(ROWS * COLS), *want_acc = dzeros(ROWS * COLS);
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < COLS; c++) {
            want_copy[r * COLS + c] = src[r * LD_SRC + c];
            want_acc[r * COLS + c] = (double)dst0[r * LD_DST + c] + src[r * LD_SRC + c];
        }
    for (int accumulate = 0; accumulate <= 1; accumulate++) {
        const char *mode = accumulate ? "accumulate" : "copy";
        float *d_dst = dev_floats(dst0, nd);
        ops->copy_2d(d_dst, LD_DST, d_src, LD_SRC, ROWS, COLS, accumulate);
        float *dst = host_floats(d_dst, nd);
        test_close(test_name("ops.copy_2d.%s", mode), gather_f(dst, ROWS, COLS, LD_DST),
                   accumulate ? want_acc : want_copy, ROWS * COLS, 0, accumulate ? EW_RTOL : 0);
        check_untouched(test_name("ops.copy_2d.%s.untouched", mode), dst, dst0, touched, nd);
    }
    release_all();
}

/* ---------------------------------------------------------------------------------------------- */
/* rows by index (the MoE permutation): gather_rows, and its two adjoints scatter_add_rows, row_dot */

/* L = sum_i w[i] . (scale[i] * src[idx[i]]) (scale NULL: 1): the loss of a gather weighted by w. Its
 * gradient is scatter_add_rows(dsrc, w, idx, scale) for src and row_dot(dscale, w, src, idx) for scale. */
struct gather_ctx {
    double *src, *scale, *wo;
    const int *idx;
    int n, C;
};

static double gather_loss(void *p) {
    struct gather_ctx *g = p;
    double l = 0;
    for (int i = 0; i < g->n; i++) {
        double s = g->scale ? g->scale[i] : 1.0;
        for (int c = 0; c < g->C; c++) l += g->wo[(size_t)i * g->C + c] * s * g->src[(size_t)g->idx[i] * g->C + c];
    }
    return l;
}

static void test_rows_by_index(void) {
    enum { S = 7, C = 9, NI = 10, ND = 12 }; /* S source rows, NI indices, gather output of ND >= NI rows */
    static const int idx[NI] = {3, 0, 6, 3, 3, 1, 6, 5, 0, 2}; /* 3 three times, 0 and 6 twice, 4 never */
    float *src = rand_floats(S * C, -1, 1), *scale = rand_floats(NI, -2, 2), *dout = rand_floats(NI * C, -1, 1);
    scale[4] = 0;
    float *d_src = dev_floats(src, S * C), *d_scale = dev_floats(scale, NI), *d_dout = dev_floats(dout, NI * C);
    int *d_idx = (int *)dev_from(idx, sizeof idx);

    /* gather_rows: rows NI.. of dst are beyond n and must keep their values */
    float *dst0 = rand_floats(ND * C, -100, 100);
    unsigned char *touched = window_mask(ND * C, NI, C, C);
    double *want = dzeros(NI * C), *want_scaled = dzeros(NI * C);
    for (int i = 0; i < NI; i++)
        for (int c = 0; c < C; c++) {
            want[i * C + c] = src[idx[i] * C + c];
            want_scaled[i * C + c] = (double)scale[i] * src[idx[i] * C + c];
        }
    for (int scaled = 0; scaled <= 1; scaled++) {
        const char *mode = scaled ? ".scale" : "";
        float *d_dst = dev_floats(dst0, ND * C);
        ops->gather_rows(d_dst, d_src, d_idx, scaled ? d_scale : NULL, NI, C);
        float *dst = host_floats(d_dst, ND * C);
        test_close(test_name("ops.gather_rows%s", mode), dst, scaled ? want_scaled : want, NI * C, 0,
                   scaled ? EW_RTOL : 0);
        check_untouched(test_name("ops.gather_rows%s.untouched", mode), dst, dst0, touched, ND * C);
    }

    /* scatter_add_rows onto a nonzero dst is the src gradient of the gather; row_dot its scale gradient */
    double *ones = dzeros(NI);
    for (int i = 0; i < NI; i++) ones[i] = 1;
    struct gather_ctx g = {dbl(src, S * C), dbl(scale, NI), dbl(dout, NI * C), idx, NI, C};
    double *gsrc = fd_gradient(g.src, S * C, gather_loss, &g);
    double *gscale = fd_gradient(g.scale, NI, gather_loss, &g);
    g.scale = ones;
    double *gsrc_unscaled = fd_gradient(g.src, S * C, gather_loss, &g);
    float *init = rand_floats(S * C, -1, 1);
    for (int scaled = 0; scaled <= 1; scaled++) {
        float *d_dsrc = dev_floats(init, S * C);
        ops->scatter_add_rows(d_dsrc, d_dout, d_idx, scaled ? d_scale : NULL, NI, C);
        test_close(test_name("ops.scatter_add_rows%s", scaled ? ".scale" : ""), host_floats(d_dsrc, S * C),
                   plus(init, scaled ? gsrc : gsrc_unscaled, S * C), S * C, BWD_ATOL, BWD_RTOL);
    }
    float *d_dscale = dev_floats(rand_floats(NI, -100, 100), NI);
    ops->row_dot(d_dscale, d_dout, d_src, d_idx, NI, C);
    test_close("ops.row_dot", host_floats(d_dscale, NI), gscale, NI, BWD_ATOL, BWD_RTOL);
    release_all();
}

/* "Rows of dst summed in i order": values spread over 12 decades, so fp32 sums depend on their order,
 * and the op must equal this sequential fp32 loop bit for bit (for any thread count). */
static void test_scatter_add_order(void) {
    enum { S = 3, C = 40, NI = 16 };
    static const int idx[NI] = {2, 0, 2, 2, 1, 2, 0, 2, 2, 1, 0, 2, 2, 0, 2, 2};
    float *src = rand_floats(NI * C, -1, 1), *scale = rand_floats(NI, 0.5, 2), *dst0 = rand_floats(S * C, -1, 1);
    for (int i = 0; i < NI * C; i++) src[i] *= (float)pow(10, floor(test_rng_uniform(&rng_state, -6, 6)));
    float *d_src = dev_floats(src, NI * C), *d_scale = dev_floats(scale, NI);
    int *d_idx = (int *)dev_from(idx, sizeof idx);
    for (int scaled = 0; scaled <= 1; scaled++) {
        const char *mode = scaled ? ".scale" : "";
        float *fwd = host_alloc(S * C * sizeof(float)), *rev = host_alloc(S * C * sizeof(float));
        memcpy(fwd, dst0, S * C * sizeof(float));
        memcpy(rev, dst0, S * C * sizeof(float));
        for (int i = 0; i < NI; i++)
            for (int c = 0; c < C; c++) {
                float s = scaled ? scale[i] : 1.0f, sr = scaled ? scale[NI - 1 - i] : 1.0f;
                fwd[idx[i] * C + c] += s * src[i * C + c];
                rev[idx[NI - 1 - i] * C + c] += sr * src[(NI - 1 - i) * C + c];
            }
        int differ = 0;
        for (int i = 0; i < S * C; i++) differ += memcmp(&fwd[i], &rev[i], sizeof(float)) != 0;
        test_result(differ > 0, test_name("ops.scatter_add_rows%s.order.data_order_sensitive", mode),
                    "summing in reverse order changed no element: the order check below could not fail");
        float *d_dst = dev_floats(dst0, S * C);
        ops->scatter_add_rows(d_dst, d_src, d_idx, scaled ? d_scale : NULL, NI, C);
        test_close(test_name("ops.scatter_add_rows%s.order", mode), host_floats(d_dst, S * C), dbl(fwd, S * C), S * C,
                   0, 0);
    }
    release_all();
}

/* ---------------------------------------------------------------------------------------------- */
/* cross-entropy                                                                                  */

static void cross_entropy_ref(double *losses, const double *logits, const int *targets, int N, int V) {
    for (int n = 0; n < N; n++) {
        const double *l = logits + (size_t)n * V;
        double mx = -INFINITY, s = 0;
        for (int i = 0; i < V; i++) mx = l[i] > mx ? l[i] : mx;
        for (int i = 0; i < V; i++) s += exp(l[i] - mx);
        losses[n] = targets[n] < 0 ? 0 : mx + log(s) - l[targets[n]];
    }
}

struct ce_ctx {
    double *logits, *losses, dloss;
    const int *targets;
    int N, V;
};

static double cross_entropy_loss(void *p) {
    struct ce_ctx *c = p;
    cross_entropy_ref(c->losses, c->logits, c->targets, c->N, c->V);
    double s = 0;
    for (int n = 0; n < c->N; n++) s += c->losses[n];
    return s * c->dloss;
}

static void test_cross_entropy(void) {
    enum { N = 6, V = 11 };
    static const int targets[N] = {3, 0, -1, 10, 5, 3};
    const float dloss = 0.2f;
    float *logits = rand_floats(N * V, -3, 3);
    for (int i = 0; i < V; i++) logits[4 * V + i] *= 40; /* up to +-120: exp overflows fp32 unless shifted */
    float *d_logits = dev_floats(logits, N * V);
    int *d_targets = (int *)dev_from(targets, sizeof targets);

    struct ce_ctx c = {dbl(logits, N * V), dzeros(N), dloss, targets, N, V};
    double *want = dzeros(N);
    cross_entropy_ref(want, c.logits, targets, N, V);
    double *g = fd_gradient(c.logits, N * V, cross_entropy_loss, &c);

    float *d_losses = dev_floats(rand_floats(N, -100, 100), N);
    ops->cross_entropy(d_losses, NULL, d_logits, d_targets, N, V, dloss);
    test_close("ops.cross_entropy.loss", host_floats(d_losses, N), want, N, FWD_ATOL, FWD_RTOL);
    test_close("ops.cross_entropy.loss.logits_unchanged", host_floats(d_logits, N * V), dbl(logits, N * V),
               N * V, 0, 0);

    float *d_dlogits = dev_floats(rand_floats(N * V, -100, 100), N * V);
    d_losses = dev_floats(rand_floats(N, -100, 100), N);
    ops->cross_entropy(d_losses, d_dlogits, d_logits, d_targets, N, V, dloss);
    test_close("ops.cross_entropy.backward.loss", host_floats(d_losses, N), want, N, FWD_ATOL, FWD_RTOL);
    test_close("ops.cross_entropy.backward.dlogits", host_floats(d_dlogits, N * V), g, N * V,
               BWD_ATOL, BWD_RTOL);

    float *d_alias = dev_floats(logits, N * V);
    d_losses = dev_floats(rand_floats(N, -100, 100), N);
    ops->cross_entropy(d_losses, d_alias, d_alias, d_targets, N, V, dloss);
    test_close("ops.cross_entropy.alias.loss", host_floats(d_losses, N), want, N, FWD_ATOL, FWD_RTOL);
    test_close("ops.cross_entropy.alias.dlogits", host_floats(d_alias, N * V), g, N * V, BWD_ATOL, BWD_RTOL);
    release_all();
}

/* ---------------------------------------------------------------------------------------------- */
/* vocabulary-parallel cross-entropy (Megatron): xent_rowmax, xent_sumexp, xent_finish            */

/* The [N, V] logits split into `parts` vocabulary slices starting at v0[0..parts-1], one per simulated
 * tensor-parallel rank, each slice a separate buffer as on its own rank. Between the steps the host does
 * what the tp collectives do: rowmax by max over the slices, sumexp and tlogit by sum in slice order.
 * Every slice must report the same losses: the fused op's (and the double reference); the slices'
 * dlogits put side by side must be the fused op's dlogits (and the finite-difference gradient). */
static void test_xent_case(const char *tag, const float *logits, const int *targets, int N, int V,
                           const int *v0, int parts, float dloss, const double *want, const double *g,
                           const float *fused_losses, const float *fused_dlogits) {
    int *d_targets = (int *)dev_from(targets, sizeof(int) * N);
    float *rowmax = host_alloc(N * sizeof(float)), *sumexp = host_alloc(N * sizeof(float));
    float *tlogit = host_alloc(N * sizeof(float));
    float *d_slice[8];
    CHECK(parts <= 8, "at most 8 slices");
    for (int n = 0; n < N; n++) rowmax[n] = -INFINITY;

    for (int r = 0; r < parts; r++) {
        int Vr = (r + 1 < parts ? v0[r + 1] : V) - v0[r];
        float *slice = host_alloc((size_t)N * Vr * sizeof(float));
        for (int n = 0; n < N; n++) memcpy(slice + (size_t)n * Vr, logits + (size_t)n * V + v0[r], Vr * sizeof(float));
        d_slice[r] = dev_floats(slice, (size_t)N * Vr);
        double *want_max = dzeros(N);
        for (int n = 0; n < N; n++) {
            want_max[n] = -INFINITY;
            for (int i = 0; i < Vr; i++) want_max[n] = fmax(want_max[n], slice[(size_t)n * Vr + i]);
        }
        float *d_max = dev_floats(rand_floats(N, -100, 100), N);
        ops->xent_rowmax(d_max, d_slice[r], N, Vr);
        float *got = host_floats(d_max, N);
        test_close(test_name("ops.xent%s.rank%d.rowmax", tag, r), got, want_max, N, 0, 0);
        for (int n = 0; n < N; n++) rowmax[n] = fmaxf(rowmax[n], got[n]);
    }

    float *d_rowmax = dev_floats(rowmax, N);
    for (int r = 0; r < parts; r++) {
        int Vr = (r + 1 < parts ? v0[r + 1] : V) - v0[r];
        double *want_se = dzeros(N), *want_tl = dzeros(N);
        for (int n = 0; n < N; n++) {
            for (int i = 0; i < Vr; i++) want_se[n] += exp((double)logits[(size_t)n * V + v0[r] + i] - rowmax[n]);
            int t = targets[n] - v0[r];
            want_tl[n] = targets[n] >= 0 && t >= 0 && t < Vr ? logits[(size_t)n * V + targets[n]] : 0;
        }
        float *d_se = dev_floats(rand_floats(N, -100, 100), N), *d_tl = dev_floats(rand_floats(N, -100, 100), N);
        ops->xent_sumexp(d_se, d_tl, d_slice[r], d_targets, d_rowmax, N, Vr, v0[r]);
        float *se = host_floats(d_se, N), *tl = host_floats(d_tl, N);
        test_close(test_name("ops.xent%s.rank%d.sumexp", tag, r), se, want_se, N, FWD_ATOL, FWD_RTOL);
        test_close(test_name("ops.xent%s.rank%d.tlogit", tag, r), tl, want_tl, N, 0, 0);
        for (int n = 0; n < N; n++) {
            sumexp[n] = r ? sumexp[n] + se[n] : se[n];
            tlogit[n] = r ? tlogit[n] + tl[n] : tl[n];
        }
    }

    /* finish: losses only, into separate dlogits, and in place (dlogits == logits) */
    float *d_sumexp = dev_floats(sumexp, N), *d_tlogit = dev_floats(tlogit, N);
    double *fused_l = dbl(fused_losses, N), *fused_g = dbl(fused_dlogits, (size_t)N * V);
    float *dl_sep = host_alloc((size_t)N * V * sizeof(float)), *dl_alias = host_alloc((size_t)N * V * sizeof(float));
    for (int r = 0; r < parts; r++) {
        int Vr = (r + 1 < parts ? v0[r + 1] : V) - v0[r];
        size_t nr = (size_t)N * Vr;
        float *d_losses = dev_floats(rand_floats(N, -100, 100), N);
        ops->xent_finish(d_losses, NULL, d_slice[r], d_targets, d_rowmax, d_sumexp, d_tlogit, N, Vr, v0[r], dloss);
        float *losses = host_floats(d_losses, N);
        test_close(test_name("ops.xent%s.rank%d.loss", tag, r), losses, want, N, FWD_ATOL, FWD_RTOL);
        test_close(test_name("ops.xent%s.rank%d.loss.vs_fused", tag, r), losses, fused_l, N, FWD_ATOL, FWD_RTOL);

        float *d_dl = dev_floats(rand_floats(nr, -100, 100), nr);
        d_losses = dev_floats(rand_floats(N, -100, 100), N);
        ops->xent_finish(d_losses, d_dl, d_slice[r], d_targets, d_rowmax, d_sumexp, d_tlogit, N, Vr, v0[r], dloss);
        test_close(test_name("ops.xent%s.rank%d.backward.loss", tag, r), host_floats(d_losses, N), fused_l, N,
                   FWD_ATOL, FWD_RTOL);
        float *dl = host_floats(d_dl, nr);

        d_losses = dev_floats(rand_floats(N, -100, 100), N);
        ops->xent_finish(d_losses, d_slice[r], d_slice[r], d_targets, d_rowmax, d_sumexp, d_tlogit, N, Vr, v0[r],
                         dloss);
        test_close(test_name("ops.xent%s.rank%d.alias.loss", tag, r), host_floats(d_losses, N), fused_l, N,
                   FWD_ATOL, FWD_RTOL);
        float *da = host_floats(d_slice[r], nr);
        for (int n = 0; n < N; n++) {
            memcpy(dl_sep + (size_t)n * V + v0[r], dl + (size_t)n * Vr, Vr * sizeof(float));
            memcpy(dl_alias + (size_t)n * V + v0[r], da + (size_t)n * Vr, Vr * sizeof(float));
        }
    }
    size_t nl = (size_t)N * V;
    test_close(test_name("ops.xent%s.dlogits.vs_fused", tag), dl_sep, fused_g, nl, BWD_ATOL, BWD_RTOL);
    test_close(test_name("ops.xent%s.dlogits", tag), dl_sep, g, nl, BWD_ATOL, BWD_RTOL);
    test_close(test_name("ops.xent%s.alias.dlogits.vs_fused", tag), dl_alias, fused_g, nl, BWD_ATOL, BWD_RTOL);
    test_close(test_name("ops.xent%s.alias.dlogits", tag), dl_alias, g, nl, BWD_ATOL, BWD_RTOL);
}

static void test_xent(void) {
    enum { N = 7, V = 11 };
    /* slices [0,5) [5,11) and [0,3) [3,7) [7,11): every slice holds some row's target; row 2 is ignored */
    static const int targets[N] = {3, 2, -1, 10, 5, 0, 8};
    static const int two[] = {0, 5}, three[] = {0, 3, 7};
    const float dloss = 0.2f;
    float *logits = rand_floats(N * V, -3, 3);
    for (int i = 0; i < V; i++) logits[4 * V + i] *= 40; /* up to +-120: exp overflows fp32 unless shifted */
    logits[1 * V + 9] = 7; /* row 1: its largest logit in the last slice, its target (2) in the first */

    struct ce_ctx c = {dbl(logits, N * V), dzeros(N), dloss, targets, N, V};
    double *want = dzeros(N);
    cross_entropy_ref(want, c.logits, targets, N, V);
    double *g = fd_gradient(c.logits, N * V, cross_entropy_loss, &c);

    float *d_logits = dev_floats(logits, N * V), *d_dlogits = dev_alloc(N * V * sizeof(float));
    int *d_targets = (int *)dev_from(targets, sizeof targets);
    float *d_losses = dev_alloc(N * sizeof(float));
    ops->cross_entropy(d_losses, d_dlogits, d_logits, d_targets, N, V, dloss);
    float *fused_losses = host_floats(d_losses, N), *fused_dlogits = host_floats(d_dlogits, N * V);

    test_xent_case(".tp1", logits, targets, N, V, two, 1, dloss, want, g, fused_losses, fused_dlogits);
    test_xent_case(".tp2", logits, targets, N, V, two, 2, dloss, want, g, fused_losses, fused_dlogits);
    test_xent_case(".tp3", logits, targets, N, V, three, 3, dloss, want, g, fused_losses, fused_dlogits);
    release_all();
}

/* ---------------------------------------------------------------------------------------------- */
/* optimizer                                                                                      */

static void test_sum_squares(void) {
    size_t n = 50021; /* long enough for a backend to split it into chunks or threads */
    float *x = rand_floats(n, -3, 3);
    float *d_x = dev_floats(x, n);
    double want = 0;
    for (size_t i = 0; i < n; i++) want += (double)x[i] * x[i];
    double got = ops->sum_squares(d_x, n), again = ops->sum_squares(d_x, n);
    /* the products of fp32 values are exact in double; only the summation order may differ */
    test_result(fabs(got - want) <= 1e-11 * want, "ops.sum_squares",
                "got %.17g want %.17g (rel diff %.3g, rtol 1e-11)", got, want, fabs(got - want) / want);
    test_result(memcmp(&got, &again, sizeof got) == 0, "ops.sum_squares.deterministic",
                "two calls gave %.17g and %.17g", got, again);
    double one_thread = loom_ops_cpu(1)->sum_squares(d_x, n);
    ops = loom_ops_cpu(2);
    test_result(memcmp(&got, &one_thread, sizeof got) == 0, "ops.sum_squares.thread_independent",
                "2 threads gave %.17g, 1 thread %.17g", got, one_thread);
    double empty = ops->sum_squares(d_x, 0);
    test_result(empty == 0, "ops.sum_squares.empty", "n = 0 gave %.17g", empty);
    release_all();
}

/* The update of ops.h in double, on double state. */
static void adamw_ref(double *p, const float *grad, double *m, double *v, size_t n, double lr, double b1,
                      double b2, double eps, double wd, double gs, long step) {
    double c1 = 1 - pow(b1, (double)step), c2 = 1 - pow(b2, (double)step);
    for (size_t i = 0; i < n; i++) {
        double g = grad[i] * gs;
        p[i] -= lr * wd * p[i];
        m[i] = b1 * m[i] + (1 - b1) * g;
        v[i] = b2 * v[i] + (1 - b2) * g * g;
        p[i] -= lr * (m[i] / c1) / (sqrt(v[i] / c2) + eps);
    }
}

static void test_adamw(void) {
    size_t n = 37;
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
    static const long steps[] = {1, 2, 3, 4, 5, 1000};
    float *p = rand_floats(n, -1, 1);
    double *want_p = dbl(p, n), *want_m = dzeros(n), *want_v = dzeros(n);
    float *d_p = dev_floats(p, n), *d_m = dev_alloc(n * sizeof(float)), *d_v = dev_alloc(n * sizeof(float));
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        float *grad = rand_floats(n, -2, 2);
        grad[0] = 0;     /* a parameter with no gradient still decays */
        grad[1] = 2e-7f; /* sqrt(v_hat) ~ 1e-7: eps = 1e-8 changes its update by 10% */
        float *d_grad = dev_floats(grad, n);
        ops->adamw_update(d_p, d_grad, d_m, d_v, n, lr, b1, b2, eps, wd, gs, steps[s]);
        adamw_ref(want_p, grad, want_m, want_v, n, lr, b1, b2, eps, wd, gs, steps[s]);
        if (steps[s] == 5 || steps[s] == 1000) {
            const char *tag = steps[s] == 5 ? "" : ".step1000";
            test_close(test_name("ops.adamw%s.param", tag), host_floats(d_p, n), want_p, n, 1e-7, FWD_RTOL);
            test_close(test_name("ops.adamw%s.m", tag), host_floats(d_m, n), want_m, n, 1e-8, FWD_RTOL);
            test_close(test_name("ops.adamw%s.v", tag), host_floats(d_v, n), want_v, n, 1e-10, FWD_RTOL);
        }
    }
    release_all();
}

/* ---------------------------------------------------------------------------------------------- */

int main(void) {
    ops = loom_ops_cpu(2);
    test_memory();
    test_matmul();
    test_embedding();
    test_rmsnorm();
    test_rope();
    test_attention();
    test_swiglu();
    test_elementwise();
    test_rows_by_index();
    test_scatter_add_order();
    test_cross_entropy();
    test_xent();
    test_sum_squares();
    test_adamw();
    return test_exit();
}
