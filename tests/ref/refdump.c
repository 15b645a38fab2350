/*
 * tests/ref/refdump.c — reader for the reference dumps (format in refdump.h).
 */
#include "tests/ref/refdump.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"

#define REF_MAGIC "LOOMREF1"
#define REF_VERSION 1u
#define REF_MAX_ENTRIES 1000000u

struct loom_refdump {
    char *path;
    int count;
    struct loom_ref_entry *entries;
};

/* A cursor over the file bytes; every read checks that the bytes are there. */
struct cursor {
    const unsigned char *buf;
    size_t size, pos;
    const char *path;
};

static void need(const struct cursor *c, size_t n, const char *what) {
    CHECK(n <= c->size - c->pos, "%s: truncated reference dump: %s needs %zu bytes at offset %zu, %zu left",
          c->path, what, n, c->pos, c->size - c->pos);
}

static uint32_t read_u32(struct cursor *c, const char *what) {
    need(c, 4, what);
    const unsigned char *p = c->buf + c->pos;
    c->pos += 4;
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int64_t read_i64(struct cursor *c, const char *what) {
    need(c, 8, what);
    const unsigned char *p = c->buf + c->pos;
    c->pos += 8;
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return (int64_t)v;
}

static int host_is_little_endian(void) {
    const uint32_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static char *strdup_check(const char *s, size_t n) {
    char *out = malloc_check(n + 1);
    memcpy(out, s, n);
    out[n] = '\0';
    return out;
}

struct loom_refdump *loom_refdump_load(const char *path) {
    CHECK(host_is_little_endian(), "reference dumps are read on little-endian hosts only");
    FILE *f = fopen_check(path, "rb");
    CHECK(fseek(f, 0, SEEK_END) == 0, "%s: cannot seek", path);
    long end = ftell(f);
    CHECK(end >= 0, "%s: cannot tell the file size", path);
    CHECK(fseek(f, 0, SEEK_SET) == 0, "%s: cannot seek", path);
    size_t size = (size_t)end;
    unsigned char *buf = malloc_check(size > 0 ? size : 1);
    CHECK(fread(buf, 1, size, f) == size, "%s: short read", path);
    fclose(f);

    struct cursor c = {buf, size, 0, path};
    need(&c, 8, "magic");
    CHECK(memcmp(buf, REF_MAGIC, 8) == 0, "%s: not a loom reference dump (bad magic)", path);
    c.pos = 8;
    uint32_t version = read_u32(&c, "version");
    CHECK(version == REF_VERSION, "%s: reference dump version %u, expected %u", path, version, REF_VERSION);
    uint32_t count = read_u32(&c, "entry count");
    CHECK(count <= REF_MAX_ENTRIES, "%s: implausible entry count %u", path, count);

    struct loom_refdump *d = calloc_check(1, sizeof *d);
    d->path = strdup_check(path, strlen(path));
    d->count = (int)count;
    d->entries = calloc_check(count > 0 ? count : 1, sizeof *d->entries);

    for (uint32_t i = 0; i < count; i++) {
        struct loom_ref_entry *e = &d->entries[i];
        uint32_t name_len = read_u32(&c, "name length");
        CHECK(name_len > 0 && name_len <= 4096, "%s: entry %u: bad name length %u", path, i, name_len);
        need(&c, name_len, "name");
        const char *name_bytes = (const char *)buf + c.pos;
        CHECK(memchr(name_bytes, '\0', name_len) == NULL, "%s: entry %u: name contains a NUL byte", path, i);
        e->name = strdup_check(name_bytes, name_len);
        c.pos += name_len;
        for (uint32_t j = 0; j < i; j++)
            CHECK(strcmp(d->entries[j].name, e->name) != 0, "%s: duplicate entry '%s'", path, e->name);

        uint32_t dtype = read_u32(&c, "dtype");
        CHECK(dtype <= LOOM_REF_TEXT, "%s: entry '%s': unknown dtype %u", path, e->name, dtype);
        uint32_t ndim = read_u32(&c, "ndim");
        CHECK(ndim <= LOOM_REF_MAX_DIMS, "%s: entry '%s': ndim %u exceeds %d", path, e->name, ndim,
              LOOM_REF_MAX_DIMS);
        CHECK(dtype != LOOM_REF_TEXT || ndim == 1, "%s: entry '%s': text must have ndim 1, has %u", path,
              e->name, ndim);
        e->dtype = (int)dtype;
        e->ndim = (int)ndim;
        int64_t n = 1;
        for (uint32_t k = 0; k < ndim; k++) {
            int64_t dim = read_i64(&c, "dims");
            CHECK(dim >= 0, "%s: entry '%s': negative dimension %lld", path, e->name, (long long)dim);
            CHECK(dim == 0 || n <= (int64_t)size / dim, "%s: entry '%s': shape larger than the file",
                  path, e->name);
            e->dims[k] = dim;
            n *= dim;
        }
        e->count = n;
        size_t elem = dtype == LOOM_REF_TEXT ? 1 : 4;
        size_t bytes = (size_t)n * elem;
        need(&c, bytes, e->name);
        char *data = malloc_check(bytes + (dtype == LOOM_REF_TEXT ? 1 : 0) + 1);
        memcpy(data, buf + c.pos, bytes);
        if (dtype == LOOM_REF_TEXT) data[bytes] = '\0';
        e->data = data;
        c.pos += bytes;
    }
    CHECK(c.pos == size, "%s: %zu trailing bytes after the last entry", path, size - c.pos);
    free(buf);
    return d;
}

const struct loom_ref_entry *loom_refdump_get(const struct loom_refdump *d, const char *name) {
    for (int i = 0; i < d->count; i++)
        if (strcmp(d->entries[i].name, name) == 0) return &d->entries[i];
    return NULL;
}

const struct loom_ref_entry *loom_refdump_need(const struct loom_refdump *d, const char *name) {
    const struct loom_ref_entry *e = loom_refdump_get(d, name);
    CHECK(e != NULL, "%s: reference dump has no entry %s", d->path, name);
    return e;
}

void loom_refdump_batch(const struct loom_refdump *d, int *B, int *T, int **inputs, int **targets) {
    const struct loom_ref_entry *ids = loom_refdump_need(d, "ids");
    int b_ = (int)ids->dims[0], t_ = (int)ids->dims[1] - 1;
    const int32_t *raw = ids->data;
    *inputs = malloc_check(sizeof(int) * (size_t)b_ * t_);
    *targets = malloc_check(sizeof(int) * (size_t)b_ * t_);
    for (int b = 0; b < b_; b++)
        for (int t = 0; t < t_; t++) {
            (*inputs)[b * t_ + t] = raw[b * (t_ + 1) + t];
            (*targets)[b * t_ + t] = raw[b * (t_ + 1) + t + 1];
        }
    *B = b_, *T = t_;
}

int loom_refdump_count(const struct loom_refdump *d) { return d->count; }

const struct loom_ref_entry *loom_refdump_entry(const struct loom_refdump *d, int i) {
    CHECK(i >= 0 && i < d->count, "%s: entry index %d out of range [0, %d)", d->path, i, d->count);
    return &d->entries[i];
}

void loom_refdump_free(struct loom_refdump *d) {
    if (!d) return;
    for (int i = 0; i < d->count; i++) {
        free((void *)d->entries[i].name);
        free((void *)d->entries[i].data);
    }
    free(d->entries);
    free(d->path);
    free(d);
}
