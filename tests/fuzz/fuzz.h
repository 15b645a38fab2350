/*
 * tests/fuzz/fuzz.h — what the fuzz targets (tests/fuzz/fuzz_*.c) share.
 *
 * Each target is one libFuzzer entry point, LLVMFuzzerTestOneInput, that writes the input where loom reads
 * its kind of file (a scratch folder of the process) and runs loom's reader on it. A bad input must end in
 * loom_input_error: under fuzz_guarded the error longjmps back here (core/error.h, loom_error_set_jump)
 * and the target returns. Anything else — a CHECK or other abort, a crash, a sanitizer report, a hang, an
 * exit — is a bug, reported by libFuzzer (`make fuzz`) or by tests/fuzz/replay.c (`make test`).
 */
#ifndef LOOM_TESTS_FUZZ_H
#define LOOM_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

/* libFuzzer's entry points; tests/fuzz/replay.c calls the same ones. */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The scratch folder of this process (made on first use under $TMPDIR or /tmp, removed at exit). */
const char *fuzz_dir(void);
/* dir/name in out (cap bytes). */
void fuzz_path(char *out, size_t cap, const char *name);
/* Empties the scratch folder (files and folders in it). */
void fuzz_dir_clear(void);
/* Writes data[0..size) to path (created or truncated). */
void fuzz_write_file(const char *path, const void *data, size_t size);

/* Runs fn(arg) with input errors returning here. 0 when fn returned, LOOM_EXIT_INPUT when it stopped on an
 * input error; then the clean-up set by fuzz_set_cleanup has run, and fuzz_release() has closed what the
 * abandoned call left open in the scratch folder. */
int fuzz_guarded(void (*fn)(void *), void *arg);
/* A target's own clean-up after a rejected input (closing library handles), run before fuzz_release. */
void fuzz_set_cleanup(void (*cleanup)(void));
/* Closes the descriptors and unmaps the mappings of files in the scratch folder. */
void fuzz_release(void);

/* Prints "fuzz: broken invariant: ..." to stderr and aborts: a finding, like a crash. */
_Noreturn void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
