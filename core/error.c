/*
 * core/error.c — fatal handler and input errors (see error.h for the two kinds).
 */
#include "core/error.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

static int g_rank = 0;
static int g_world = 1;
static int g_collective = 0;
static const char *g_context = NULL;
static jmp_buf *g_jump = NULL;

void loom_error_set_rank(int rank, int world_size) {
    g_rank = rank;
    g_world = world_size;
}

void loom_error_set_collective(int collective) { g_collective = collective; }

void loom_error_set_context(const char *context) { g_context = context; }

void loom_error_set_jump(jmp_buf *env) { g_jump = env; }

static int mpi_running(void) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    return init && !fin;
}

_Noreturn static void exit_all(int status) {
    fflush(stdout);
    fflush(stderr);
    if (mpi_running()) {
        if (g_world > 1) MPI_Abort(MPI_COMM_WORLD, status);
        MPI_Finalize();
    }
    exit(status);
}

_Noreturn void loom_fatal(const char *file, int line, const char *stmt, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[rank %d] %s:%d: %s: %s\n", g_rank, file, line, stmt, msg);
    if (g_jump) {
        fflush(stderr);
        abort();
    }
    exit_all(LOOM_EXIT_RUNTIME);
}

_Noreturn void loom_input_error(const char *where, const char *hint, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int print = !g_collective || g_rank == 0;
    if (print) {
        char at[8192] = "";
        if (g_context) snprintf(at, sizeof at, "%s: ", g_context);
        if (where && where[0]) snprintf(at + strlen(at), sizeof at - strlen(at), "%s: ", where);
        fprintf(stderr, "loom: error: %s%s\n", at, msg);
        if (hint && hint[0]) fprintf(stderr, "hint: %s\n", hint);
    }
    fflush(stderr);
    if (g_jump) {
        jmp_buf *env = g_jump;
        g_jump = NULL;
        g_context = NULL;
        longjmp(*env, LOOM_EXIT_INPUT);
    }
    if (g_collective && mpi_running()) {
        /* every rank reached the same verdict: leave together, no abort banner */
        MPI_Finalize();
        exit(LOOM_EXIT_INPUT);
    }
    exit_all(LOOM_EXIT_INPUT);
}

/* ---------------------------------------------------------------------------------------------- */
/* the LOOM_TEST_DIE hook                                                                           */

static long long g_step;

void loom_test_die_step(long long step) { g_step = step; }

void loom_test_die_at(const char *point) {
    static int parsed, rank = -1;
    static long long step;
    static char where[16], how[16] = "signal";
    if (!parsed) {
        const char *spec = getenv("LOOM_TEST_DIE");
        parsed = 1;
        if (spec && sscanf(spec, "%15[^:]:%lld:%d:%15s", where, &step, &rank, how) < 3) rank = -1;
    }
    if (rank != g_rank || step != g_step || strcmp(where, point) != 0) return;
    rank = -1; /* once */
    if (strcmp(how, "exit") == 0)
        loom_fatal(__FILE__, __LINE__, "LOOM_TEST_DIE", "a failure injected at %s of step %lld", point, step);
    if (strcmp(how, "input") == 0)
        loom_input_error("LOOM_TEST_DIE", NULL, "a bad input injected at %s of step %lld", point, step);
    fprintf(stderr, "loom: LOOM_TEST_DIE: killing rank %d at %s of step %lld\n", g_rank, point, step);
    fflush(stderr);
    raise(SIGKILL);
}

void *loom_malloc_check(size_t size, const char *file, int line) {
    void *p = malloc(size ? size : 1);
    if (!p) loom_fatal(file, line, "malloc", "out of memory allocating %zu bytes", size);
    return p;
}

void *loom_calloc_check(size_t n, size_t size, const char *file, int line) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) loom_fatal(file, line, "calloc", "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

FILE *loom_fopen_check(const char *path, const char *mode, const char *file, int line) {
    FILE *f = fopen(path, mode);
    if (!f) loom_fatal(file, line, "fopen", "cannot open %s (mode %s): %s", path, mode, strerror(errno));
    return f;
}
