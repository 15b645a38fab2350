/*
 * tests/test.h — the tiny harness every C test uses.
 *
 * A test binary prints one line per check: "ok NAME" or "FAIL NAME: details", and exits non-zero
 * when any check failed. tests/run.sh counts the lines of every test and prints
 * "N passed, N failed".
 */
#ifndef LOOM_TESTS_TEST_H
#define LOOM_TESTS_TEST_H

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* float <-> its bit pattern, and splitmix64 (Steele et al. 2014) for fixed pseudo-random test inputs that
 * do not depend on core/rng (each test keeps its own state, so its inputs are the same every run) */
static inline uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static inline float bits_f32(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static inline uint64_t test_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* the failed checks; weak, so that a test made of several files (tests/gpu/gpu_check.c) keeps one count */
__attribute__((weak)) int test_failures = 0;

__attribute__((unused)) static void test_result(int ok, const char *name, const char *fmt, ...) {
    if (ok) {
        printf("ok %s\n", name);
    } else {
        va_list ap;
        va_start(ap, fmt);
        printf("FAIL %s: ", name);
        vprintf(fmt, ap);
        printf("\n");
        va_end(ap);
        test_failures++;
    }
    fflush(stdout);
}

/* Compare n values: |got - want| <= atol + rtol * |want| everywhere. On failure, names the worst
 * element (largest excess over its tolerance) with both values and the max abs difference. */
__attribute__((unused)) static int test_close(const char *name, const float *got, const double *want, size_t n,
                      double atol, double rtol) {
    size_t worst = 0;
    double worst_excess = -INFINITY, max_abs = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d == d)) d = INFINITY;
        double excess = d - (atol + rtol * fabs(want[i]));
        if (d > max_abs) max_abs = d;
        if (excess > worst_excess) { worst_excess = excess; worst = i; }
    }
    int ok = n == 0 || worst_excess <= 0;
    test_result(ok, name, "worst element %zu: got %.9g want %.9g (max |diff| %.3g, atol %.1g rtol %.1g, n %zu)",
                worst, n ? (double)got[worst] : 0.0, n ? want[worst] : 0.0, max_abs, atol, rtol, n);
    return ok;
}

/* got against want, n ints: the first mismatch fails check NAME */
__attribute__((unused)) static int test_same_ints(const char *name, const int *got, const int *want, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i]) {
            test_result(0, name, "element %zu: got %d, want %d (n %zu)", i, got[i], want[i], n);
            return 0;
        }
    test_result(1, name, "");
    return 1;
}

/* xorshift64*: the next uniform double in [lo, hi) from *state (a fixed nonzero seed gives the same
 * numbers every run). */
__attribute__((unused)) static double test_rng_uniform(uint64_t *state, double lo, double hi) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    uint64_t r = *state * 0x2545F4914F6CDD1Dull;
    return lo + (hi - lo) * ((double)(r >> 11) * 0x1.0p-53);
}

/* Run fn(arg) in a forked child whose stderr goes into a pipe (the child exits 0 when fn returns, after
 * writing "(the call returned without an error)"). Returns the child's exit status, -1 when it did not
 * exit normally or could not be started; its stderr, NUL-terminated and cut to cap - 1 bytes, is left in
 * err (when pipe or fork fails, that failure). */
__attribute__((unused)) static int test_run_child(void (*fn)(const char *arg), const char *arg, char *err,
                                                  size_t cap) {
    err[0] = '\0';
    int fds[2];
    if (pipe(fds) != 0) {
        snprintf(err, cap, "pipe: %s", strerror(errno));
        return -1;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, cap, "fork: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], STDERR_FILENO);
        close(fds[1]);
        fn(arg);
        fprintf(stderr, "(the call returned without an error)\n");
        fflush(stderr);
        _exit(0);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t got;
    while (n + 1 < cap && (got = read(fds[0], err + n, cap - 1 - n)) > 0) n += (size_t)got;
    err[n] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* printf into a buffer that lives until the next call: check names built from loop variables */
__attribute__((format(printf, 1, 2), unused)) static const char *test_name(const char *fmt, ...) {
    static char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

__attribute__((unused)) static int test_exit(void) { return test_failures ? 1 : 0; }

#endif
