/*
 * tests/test.h — the tiny harness every C test uses.
 *
 * A test binary prints one line per check: "ok NAME" or "FAIL NAME: details", and exits non-zero
 * when any check failed. tests/run.sh counts the lines of every test and prints
 * "N passed, N failed".
 */
#ifndef LOOM_TESTS_TEST_H
#define LOOM_TESTS_TEST_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int test_failures = 0;

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

__attribute__((unused)) static int test_exit(void) { return test_failures ? 1 : 0; }

#endif
