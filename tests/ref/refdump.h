/*
 * tests/ref/refdump.h — reader for the reference dumps written by scripts/make_reference.py.
 *
 * File format (little-endian):
 *   char magic[8] = "LOOMREF1"; uint32 version = 1; uint32 count;
 *   count entries: uint32 name_len; name bytes (no NUL); uint32 dtype; uint32 ndim; int64 dims[ndim];
 *                  data: prod(dims) elements of 4 bytes (f32 / i32), or of 1 byte (utf-8 text, ndim = 1).
 *
 * The loader reads the whole file, validates it completely and CHECK-fails (core/error.h) on anything
 * malformed. Every entry's data lives in its own allocation (suitably aligned for float / int32_t); text
 * data is followed by a NUL so it can be used as a C string. Entries stay valid until loom_refdump_free.
 */
#ifndef LOOM_TESTS_REF_REFDUMP_H
#define LOOM_TESTS_REF_REFDUMP_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_REF_F32 0
#define LOOM_REF_I32 1
#define LOOM_REF_TEXT 2
#define LOOM_REF_MAX_DIMS 8

struct loom_ref_entry {
    const char *name;
    int dtype;                       /* LOOM_REF_F32, LOOM_REF_I32 or LOOM_REF_TEXT */
    int ndim;
    int64_t dims[LOOM_REF_MAX_DIMS];
    int64_t count;                   /* product of dims (bytes, for text; the NUL is not counted) */
    const void *data;                /* const float *, const int32_t * or const char * (NUL-terminated) */
};

struct loom_refdump;                 /* the whole file, loaded */

struct loom_refdump *loom_refdump_load(const char *path);
/* The entry called `name`, or NULL if the dump has none. */
const struct loom_ref_entry *loom_refdump_get(const struct loom_refdump *d, const char *name);
/* The same, exiting with a message naming the dump when it is missing. */
const struct loom_ref_entry *loom_refdump_need(const struct loom_refdump *d, const char *name);
/* The dump's batch: "ids" [B, T + 1] split into inputs and next-token targets [B * T] (malloc'd). */
void loom_refdump_batch(const struct loom_refdump *d, int *B, int *T, int **inputs, int **targets);
/* Entries in file order, for listing. */
int loom_refdump_count(const struct loom_refdump *d);
const struct loom_ref_entry *loom_refdump_entry(const struct loom_refdump *d, int i);
void loom_refdump_free(struct loom_refdump *d);

#ifdef __cplusplus
}
#endif
#endif
