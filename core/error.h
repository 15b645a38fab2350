/*
 * core/error.h — the one error header.
 *
 * Two kinds of failure, kept apart:
 *   - a broken invariant or failed system call (a bug, a full disk): CHECK / MPI_CHECK / ...,
 *     which print "[rank R] file:line: statement: message" and abort every rank (exit status 1);
 *   - bad user input (config, command line, data, checkpoint): loom_input_error(), which prints
 *     "loom: error: <where>: <what>" and an optional "hint: <what to do>" once, and exits with 2.
 */
#ifndef LOOM_CORE_ERROR_H
#define LOOM_CORE_ERROR_H

#include <setjmp.h>
#include <stdio.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_EXIT_RUNTIME 1
#define LOOM_EXIT_INPUT 2

/* Fatal runtime failure: prints and aborts all ranks. Never returns. */
#ifdef __cplusplus
#define LOOM_NORETURN [[noreturn]] /* the CUDA backend includes this header as C++ */
#else
#define LOOM_NORETURN _Noreturn
#endif

LOOM_NORETURN void loom_fatal(const char *file, int line, const char *stmt, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Bad input: one line "loom: error: WHERE: MESSAGE", then "hint: HINT" when hint is not NULL.
 * Printed by rank 0 only when `collective` input errors are in force (every rank sees the same
 * input and fails the same way); otherwise printed by the failing rank, which aborts the rest. */
LOOM_NORETURN void loom_input_error(const char *where, const char *hint, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Rank used in messages; set by the MPI layer (0 before MPI starts). */
void loom_error_set_rank(int rank, int world_size);
/* When set, input errors are assumed to be seen by every rank alike: rank 0 prints, all exit 2
 * cleanly. When clear (the default for rank-local checks such as data files), the failing rank
 * prints and aborts the others with status 2. */
void loom_error_set_collective(int collective);
/* Names the input being checked, for errors whose `where` alone would mislead: a checkpoint's stored config,
 * validated like a config file, reports "loom: error: CONTEXT: model.num_heads: ...". NULL (the default)
 * clears it; the string is not copied. */
void loom_error_set_context(const char *context);
/* A test hook for the fuzz targets (tests/fuzz/), which must return from bad input rather than exit. While
 * env is set, loom_input_error prints its lines as usual, clears the hook and the context above, and
 * longjmps to *env with value LOOM_EXIT_INPUT; loom_fatal prints its line and abort()s (so the fuzzer
 * reports the broken invariant with a stack trace) instead of exiting through MPI. NULL, the default,
 * restores normal exits. What the abandoned call had allocated or opened may stay so: the caller cleans up. */
void loom_error_set_jump(jmp_buf *env);

/* A test hook: LOOM_TEST_DIE=POINT:STEP:RANK[:signal|exit|input] makes world rank RANK die at POINT of
 * training step STEP (1-based, the first time it gets there): raise SIGKILL (signal, the default), fail
 * as a broken CHECK does (exit: "[rank R] ..." and exit status 1, every rank aborted), or fail as a bad
 * input found by that rank alone does (input: "loom: error: ..." and exit status 2, every rank aborted).
 * Points: backward (inside the backward pass), alltoall (inside an MoE expert-parallel exchange: its
 * sends posted, not yet complete). The training loop names the step with loom_test_die_step. */
void loom_test_die_step(long long step);
void loom_test_die_at(const char *point);

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) loom_fatal(__FILE__, __LINE__, #cond, __VA_ARGS__);        \
    } while (0)

#define MPI_CHECK(call)                                                         \
    do {                                                                        \
        int mpi_rc_ = (call);                                                   \
        if (mpi_rc_ != 0) loom_fatal(__FILE__, __LINE__, #call, "MPI error %d", mpi_rc_); \
    } while (0)

/* Allocation and file helpers that never return failure. */
void *loom_malloc_check(size_t size, const char *file, int line);
void *loom_calloc_check(size_t n, size_t size, const char *file, int line);
FILE *loom_fopen_check(const char *path, const char *mode, const char *file, int line);
#define malloc_check(size) loom_malloc_check((size), __FILE__, __LINE__)
#define calloc_check(n, size) loom_calloc_check((n), (size), __FILE__, __LINE__)
#define fopen_check(path, mode) loom_fopen_check((path), (mode), __FILE__, __LINE__)

#ifdef __cplusplus
}
#endif
#endif
