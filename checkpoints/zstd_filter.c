/*
 * checkpoints/zstd_filter.c — HDF5 filter 32015: each chunk is one zstd frame (no header of our own,
 * as in hdf5plugin and the HDF Group's plugin). cd_values[0], when given, is the compression level.
 */
#include "checkpoints/zstd_filter.h"

#include <stdlib.h>
#include <zstd.h>

/* HDF5 chunks are smaller than 4 GiB */
#define ZSTD_FILTER_CHUNK_MAX 0xffffffffull

/* The one zstd frame src[0..n) into a malloc'd *out: its size, or 0 on any problem (also for an empty
 * frame: HDF5 has no empty chunks, and a filter returning 0 has failed). The content size in the frame
 * header is only a claim — a damaged chunk can claim gigabytes in a few bytes — so the output grows as data
 * come out, up to that claim, instead of being allocated from it. */
static size_t zstd_frame_decompress(const void *src, size_t n, void **out) {
    unsigned long long size = ZSTD_getFrameContentSize(src, n);
    if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN || size == 0 ||
        size > ZSTD_FILTER_CHUNK_MAX)
        return 0;
    size_t cap = size < 4 * (unsigned long long)n + 4096 ? (size_t)size : 4 * n + 4096;
    unsigned char *dst = malloc(cap);
    ZSTD_DStream *ds = ZSTD_createDStream();
    ZSTD_inBuffer in = {src, n, 0};
    ZSTD_outBuffer o = {dst, cap, 0};
    int ok = dst && ds && !ZSTD_isError(ZSTD_initDStream(ds));
    while (ok) {
        size_t in_at = in.pos, out_at = o.pos;
        size_t r = ZSTD_decompressStream(ds, &o, &in);
        if (ZSTD_isError(r)) {
            ok = 0;
        } else if (r == 0) {
            break; /* the frame is complete */
        } else if (o.pos == o.size) {
            if (cap == size) ok = 0; /* more data than the header says */
            cap = 2 * (unsigned long long)cap < size ? 2 * cap : (size_t)size;
            unsigned char *grown = ok ? realloc(dst, cap) : NULL;
            if (grown) dst = grown, o.dst = dst, o.size = cap;
            else ok = 0;
        } else {
            ok = in.pos < in.size && (in.pos > in_at || o.pos > out_at); /* else the frame is cut short */
        }
    }
    ZSTD_freeDStream(ds);
    if (!ok || o.pos != size || in.pos != n) {
        free(dst);
        return 0;
    }
    *out = dst;
    return o.pos;
}

static size_t zstd_filter(unsigned int flags, size_t cd_nelmts, const unsigned int cd_values[], size_t nbytes,
                          size_t *buf_size, void **buf) {
    void *out = NULL;
    size_t n;
    if (flags & H5Z_FLAG_REVERSE) {
        n = zstd_frame_decompress(*buf, nbytes, &out);
        if (n == 0) return 0;
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
