/*
 * core/tensor.h — shapes and typed views of memory.
 *
 * loom keeps tensors in flat buffers (one allocation for all parameters, one per activation); a
 * `struct loom_tensor` names a region of such a buffer with its dtype and shape, so that parameter
 * tables, checkpoints and exports share one description of "what is stored where".
 */
#ifndef LOOM_CORE_TENSOR_H
#define LOOM_CORE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { LOOM_MAX_DIMS = 4 };

struct loom_shape {
    int ndim;
    int64_t dims[LOOM_MAX_DIMS];
};

struct loom_tensor {
    void *data;
    enum loom_dtype dtype;
    struct loom_shape shape;
};

struct loom_shape loom_shape_1d(int64_t n);
struct loom_shape loom_shape_2d(int64_t rows, int64_t cols);
int64_t loom_shape_numel(const struct loom_shape *s);
int loom_shape_equal(const struct loom_shape *a, const struct loom_shape *b);
/* "[2048, 6144]"; returns the length snprintf would print */
int loom_shape_format(const struct loom_shape *s, char *buf, size_t n);

size_t loom_tensor_bytes(const struct loom_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
