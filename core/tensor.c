/*
 * core/tensor.c — shapes and tensor views (see tensor.h).
 */
#include "core/tensor.h"

#include <stdio.h>

#include "core/error.h"

struct loom_shape loom_shape_1d(int64_t n) {
    struct loom_shape s = {.ndim = 1, .dims = {n}};
    return s;
}

struct loom_shape loom_shape_2d(int64_t rows, int64_t cols) {
    struct loom_shape s = {.ndim = 2, .dims = {rows, cols}};
    return s;
}

int64_t loom_shape_numel(const struct loom_shape *s) {
    CHECK(s->ndim >= 0 && s->ndim <= LOOM_MAX_DIMS, "bad rank %d", s->ndim);
    int64_t n = 1;
    for (int i = 0; i < s->ndim; i++) n *= s->dims[i];
    return n;
}

int loom_shape_equal(const struct loom_shape *a, const struct loom_shape *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->dims[i] != b->dims[i]) return 0;
    return 1;
}

int loom_shape_format(const struct loom_shape *s, char *buf, size_t n) {
    int len = snprintf(buf, n, "[");
    for (int i = 0; i < s->ndim; i++)
        len += snprintf(buf + (len < (int)n ? len : (int)n), len < (int)n ? n - len : 0, "%s%lld", i ? ", " : "",
                        (long long)s->dims[i]);
    len += snprintf(buf + (len < (int)n ? len : (int)n), len < (int)n ? n - len : 0, "]");
    return len;
}

size_t loom_tensor_bytes(const struct loom_tensor *t) {
    return (size_t)loom_shape_numel(&t->shape) * loom_dtype_size(t->dtype);
}
