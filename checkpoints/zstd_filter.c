/*
 * checkpoints/zstd_filter.c — HDF5 filter 32015: each chunk is one zstd frame (no header of our own,
 * as in hdf5plugin and the HDF Group's plugin). cd_values[0], when given, is the compression level.
 */
#include "checkpoints/zstd_filter.h"

#include <stdlib.h>
#include <zstd.h>

static size_t zstd_filter(unsigned int flags, size_t cd_nelmts, const unsigned int cd_values[], size_t nbytes,
                          size_t *buf_size, void **buf) {
    void *out = NULL;
    size_t n;
    if (flags & H5Z_FLAG_REVERSE) {
        unsigned long long size = ZSTD_getFrameContentSize(*buf, nbytes);
        if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN) return 0;
        out = malloc(size ? (size_t)size : 1);
        if (!out) return 0;
        n = ZSTD_decompress(out, (size_t)size, *buf, nbytes);
    } else {
        int level = cd_nelmts > 0 ? (int)cd_values[0] : 3;
        size_t cap = ZSTD_compressBound(nbytes);
        out = malloc(cap);
        if (!out) return 0;
        n = ZSTD_compress(out, cap, *buf, nbytes, level);
    }
    if (ZSTD_isError(n)) {
        free(out);
        return 0; /* HDF5 reports the filter's failure */
    }
    free(*buf); /* HDF5 allocates chunk buffers with the C library */
    *buf = out;
    *buf_size = n;
    return n;
}

const H5Z_class2_t loom_zstd_filter_class = {
    .version = H5Z_CLASS_T_VERS,
    .id = 32015,
    .encoder_present = 1,
    .decoder_present = 1,
    .name = "zstd (loom; HDF5 filter 32015)",
    .can_apply = NULL,
    .set_local = NULL,
    .filter = zstd_filter,
};
