/*
 * data/shard.c — token shard writer and validating reader (the format is in shard.h).
 *
 * The writer compresses each full frame as soon as it fills, so it holds one frame of tokens plus the
 * indexes. Mask frames go after all token frames in the file, so a masked writer keeps them compressed
 * in memory and writes them at close. The header is only known at close, so close writes it over a
 * placeholder and then reads the file back once to checksum it. The reader maps the file, validates
 * everything (decompressing every frame once), and afterwards keeps one decompressed token frame and
 * one decompressed mask frame as caches.
 */
#define _XOPEN_SOURCE 700

#include "data/shard.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>
#include <zstd.h>

#include "core/error.h"

#define SHARD_MAGIC "LOOMTOK1"
#define SHARD_END_MAGIC "LOOMEND1"
#define SHARD_ZSTD_LEVEL 3
#define SHARD_MAX_VOCAB (1u << 31)
#define SHARD_IO_CHUNK (1u << 20)

/* ---------------------------------------------------------------------------------------------- */
/* little-endian fields and the header                                                             */

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

struct shard_header {
    uint32_t version, token_bytes, vocab_size, frame_tokens;
    uint64_t token_count, doc_count, frame_count, tokenizer_hash;
    uint32_t flags, reserved;
};

static void header_encode(unsigned char *out, const struct shard_header *h) {
    memcpy(out, SHARD_MAGIC, 8);
    put_u32(out + 8, h->version);
    put_u32(out + 12, h->token_bytes);
    put_u32(out + 16, h->vocab_size);
    put_u32(out + 20, h->frame_tokens);
    put_u64(out + 24, h->token_count);
    put_u64(out + 32, h->doc_count);
    put_u64(out + 40, h->frame_count);
    put_u64(out + 48, h->tokenizer_hash);
    put_u32(out + 56, h->flags);
    put_u32(out + 60, h->reserved);
}

static void header_decode(struct shard_header *h, const unsigned char *in) {
    h->version = get_u32(in + 8);
    h->token_bytes = get_u32(in + 12);
    h->vocab_size = get_u32(in + 16);
    h->frame_tokens = get_u32(in + 20);
    h->token_count = get_u64(in + 24);
    h->doc_count = get_u64(in + 32);
    h->frame_count = get_u64(in + 40);
    h->tokenizer_hash = get_u64(in + 48);
    h->flags = get_u32(in + 56);
    h->reserved = get_u32(in + 60);
}

/* ---------------------------------------------------------------------------------------------- */
/* writer                                                                                          */

struct loom_shard_writer {
    char *path;
    char *tmp_path;
    int fd;
    struct shard_header h;
    unsigned char *raw;        /* [frame_tokens * token_bytes] the frame being filled */
    size_t raw_tokens;         /* tokens in raw */
    void *zbuf;                /* [zcap] one compressed frame */
    size_t zcap;
    ZSTD_CCtx *cctx;
    uint64_t offset;           /* file offset where the next frame goes */
    uint64_t *frames;          /* [frame_count * 2] offset, compressed size */
    size_t frames_cap;
    uint64_t *docs;            /* [doc_count] first token of each document */
    size_t docs_cap;
    int doc_pending;           /* the next token starts a new document */
    /* loss mask; mask_bits is NULL in a shard without one */
    unsigned char *mask_bits;  /* [ceil(frame_tokens / 8)] mask bits of the frame being filled */
    unsigned char *mask_z;     /* [mask_z_len] the compressed mask frames so far, back to back */
    size_t mask_z_len, mask_z_cap;
    uint64_t *mask_frames;     /* [frame_count * 2] offset within mask_z, compressed size */
    size_t mask_frames_cap;
};

static void *grow(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return p;
    size_t n = *cap ? *cap : 64;
    while (n < need) n *= 2;
    void *q = realloc(p, n * elem);
    CHECK(q != NULL, "out of memory growing an index to %zu entries", n);
    *cap = n;
    return q;
}

static void write_all(int fd, const void *buf, size_t n, const char *path) {
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        CHECK(k > 0, "writing %s: %s", path, strerror(errno));
        p += k;
        n -= (size_t)k;
    }
}

static void pwrite_all(int fd, const void *buf, size_t n, uint64_t off, const char *path) {
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t k = pwrite(fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        CHECK(k > 0, "writing %s: %s", path, strerror(errno));
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
}

static void pread_all(int fd, void *buf, size_t n, uint64_t off, const char *path) {
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t k = pread(fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        CHECK(k > 0, "reading back %s: %s", path, k < 0 ? strerror(errno) : "unexpected end of file");
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
}

static struct loom_shard_writer *writer_open(const char *path, uint32_t vocab_size, uint64_t tokenizer_hash,
                                             uint32_t frame_tokens, uint32_t flags) {
    CHECK(vocab_size > 0 && vocab_size <= SHARD_MAX_VOCAB, "vocab size %u out of range", vocab_size);
    CHECK(frame_tokens > 0 && frame_tokens <= LOOM_SHARD_MAX_FRAME_TOKENS,
          "frame_tokens %u out of range 1..%u", frame_tokens, LOOM_SHARD_MAX_FRAME_TOKENS);
    struct loom_shard_writer *w = calloc_check(1, sizeof *w);
    size_t len = strlen(path);
    w->path = malloc_check(len + 1);
    memcpy(w->path, path, len + 1);
    w->tmp_path = malloc_check(len + 5);
    memcpy(w->tmp_path, path, len);
    memcpy(w->tmp_path + len, ".tmp", 5);

    w->fd = open(w->tmp_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (w->fd < 0) loom_input_error(w->tmp_path, NULL, "cannot create shard: %s", strerror(errno));

    w->h.version = LOOM_SHARD_VERSION;
    w->h.token_bytes = vocab_size <= 65536 ? 2 : 4;
    w->h.vocab_size = vocab_size;
    w->h.frame_tokens = frame_tokens;
    w->h.tokenizer_hash = tokenizer_hash;
    w->h.flags = flags;
    size_t raw_bytes = (size_t)frame_tokens * w->h.token_bytes;
    w->raw = malloc_check(raw_bytes);
    w->zcap = ZSTD_compressBound(raw_bytes);
    w->zbuf = malloc_check(w->zcap);
    w->cctx = ZSTD_createCCtx();
    CHECK(w->cctx != NULL, "ZSTD_createCCtx failed");
    if (flags & LOOM_SHARD_FLAG_LOSS_MASK) w->mask_bits = calloc_check((frame_tokens + 7) / 8, 1);

    unsigned char placeholder[LOOM_SHARD_HEADER_BYTES] = {0};
    write_all(w->fd, placeholder, sizeof placeholder, w->tmp_path);
    w->offset = LOOM_SHARD_HEADER_BYTES;
    return w;
}

struct loom_shard_writer *loom_shard_writer_open(const char *path, uint32_t vocab_size,
                                                 uint64_t tokenizer_hash, uint32_t frame_tokens) {
    return writer_open(path, vocab_size, tokenizer_hash, frame_tokens, 0);
}

struct loom_shard_writer *loom_shard_writer_open_masked(const char *path, uint32_t vocab_size,
                                                        uint64_t tokenizer_hash, uint32_t frame_tokens) {
    return writer_open(path, vocab_size, tokenizer_hash, frame_tokens, LOOM_SHARD_FLAG_LOSS_MASK);
}

/* Compress the mask bits of the frame being filled onto the end of mask_z and clear them. */
static void writer_flush_mask(struct loom_shard_writer *w, uint64_t f) {
    size_t nbytes = (w->raw_tokens + 7) / 8;
    size_t bound = ZSTD_compressBound(nbytes);
    w->mask_z = grow(w->mask_z, &w->mask_z_cap, w->mask_z_len + bound, 1);
    size_t csize = ZSTD_compressCCtx(w->cctx, w->mask_z + w->mask_z_len, bound, w->mask_bits, nbytes,
                                     SHARD_ZSTD_LEVEL);
    CHECK(!ZSTD_isError(csize), "zstd compression failed: %s", ZSTD_getErrorName(csize));
    w->mask_frames = grow(w->mask_frames, &w->mask_frames_cap, 2 * (f + 1), sizeof *w->mask_frames);
    w->mask_frames[2 * f] = w->mask_z_len;
    w->mask_frames[2 * f + 1] = csize;
    w->mask_z_len += csize;
    memset(w->mask_bits, 0, nbytes);
}

static void writer_flush_frame(struct loom_shard_writer *w) {
    if (w->raw_tokens == 0) return;
    size_t csize = ZSTD_compressCCtx(w->cctx, w->zbuf, w->zcap, w->raw,
                                     w->raw_tokens * w->h.token_bytes, SHARD_ZSTD_LEVEL);
    CHECK(!ZSTD_isError(csize), "zstd compression failed: %s", ZSTD_getErrorName(csize));
    uint64_t f = w->h.frame_count;
    w->frames = grow(w->frames, &w->frames_cap, 2 * (f + 1), sizeof *w->frames);
    w->frames[2 * f] = w->offset;
    w->frames[2 * f + 1] = csize;
    write_all(w->fd, w->zbuf, csize, w->tmp_path);
    w->offset += csize;
    if (w->mask_bits) writer_flush_mask(w, f);
    w->h.frame_count++;
    w->raw_tokens = 0;
}

/* mask NULL: every token counts in the loss. */
static void writer_append(struct loom_shard_writer *w, const int32_t *tokens, const uint8_t *mask, size_t n) {
    uint32_t tb = w->h.token_bytes;
    for (size_t i = 0; i < n; i++) {
        int32_t id = tokens[i];
        CHECK(id >= 0 && (uint32_t)id < w->h.vocab_size, "token id %d (input position %zu) outside vocab size %u",
              id, i, w->h.vocab_size);
        if (w->h.token_count == 0 || w->doc_pending) {
            w->docs = grow(w->docs, &w->docs_cap, w->h.doc_count + 1, sizeof *w->docs);
            w->docs[w->h.doc_count++] = w->h.token_count;
            w->doc_pending = 0;
        }
        unsigned char *p = w->raw + w->raw_tokens * tb;
        if (tb == 2) {
            p[0] = (unsigned char)id;
            p[1] = (unsigned char)(id >> 8);
        } else {
            put_u32(p, (uint32_t)id);
        }
        if (w->mask_bits) {
            uint8_t bit = mask ? mask[i] : 1;
            CHECK(bit <= 1, "mask byte %u (input position %zu) is not 0 or 1", bit, i);
            w->mask_bits[w->raw_tokens / 8] |= (unsigned char)(bit << (w->raw_tokens % 8));
        }
        w->raw_tokens++;
        w->h.token_count++;
        if (w->raw_tokens == w->h.frame_tokens) writer_flush_frame(w);
    }
}

void loom_shard_writer_append(struct loom_shard_writer *w, const int32_t *tokens, size_t n) {
    writer_append(w, tokens, NULL, n);
}

void loom_shard_writer_append_masked(struct loom_shard_writer *w, const int32_t *tokens, const uint8_t *mask,
                                     size_t n) {
    CHECK(w->mask_bits != NULL, "%s: masked append to a shard opened without a loss mask", w->path);
    writer_append(w, tokens, mask, n);
}

void loom_shard_writer_end_document(struct loom_shard_writer *w) { w->doc_pending = 1; }

uint64_t loom_shard_writer_tokens(const struct loom_shard_writer *w) { return w->h.token_count; }

/* Write n u64 values little-endian through a small staging buffer. */
static void writer_put_u64s(struct loom_shard_writer *w, const uint64_t *v, size_t n) {
    unsigned char stage[8 * 4096];
    while (n > 0) {
        size_t m = n < 4096 ? n : 4096;
        for (size_t i = 0; i < m; i++) put_u64(stage + 8 * i, v[i]);
        write_all(w->fd, stage, 8 * m, w->tmp_path);
        w->offset += 8 * m;
        v += m;
        n -= m;
    }
}

static void fsync_parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    size_t len = slash ? (size_t)(slash - path) : 0;
    char *dir = malloc_check(len + 2);
    if (!slash) {
        strcpy(dir, ".");
    } else if (len == 0) {
        strcpy(dir, "/");
    } else {
        memcpy(dir, path, len);
        dir[len] = '\0';
    }
    int fd = open(dir, O_RDONLY);
    CHECK(fd >= 0, "opening directory %s: %s", dir, strerror(errno));
    CHECK(fsync(fd) == 0, "fsync of directory %s: %s", dir, strerror(errno));
    close(fd);
    free(dir);
}

void loom_shard_writer_close(struct loom_shard_writer *w) {
    writer_flush_frame(w);
    if (w->mask_bits) {
        uint64_t mask_start = w->offset;
        write_all(w->fd, w->mask_z, w->mask_z_len, w->tmp_path);
        w->offset += w->mask_z_len;
        for (uint64_t f = 0; f < w->h.frame_count; f++) w->mask_frames[2 * f] += mask_start;
    }
    uint64_t index_offset = w->offset;
    writer_put_u64s(w, w->frames, 2 * w->h.frame_count);
    if (w->mask_bits) writer_put_u64s(w, w->mask_frames, 2 * w->h.frame_count);
    writer_put_u64s(w, w->docs, w->h.doc_count);

    unsigned char header[LOOM_SHARD_HEADER_BYTES];
    header_encode(header, &w->h);
    pwrite_all(w->fd, header, sizeof header, 0, w->tmp_path);

    /* checksum: everything written so far, read back, then the index_offset field */
    unsigned char footer[LOOM_SHARD_FOOTER_BYTES];
    put_u64(footer, index_offset);
    XXH64_state_t *xs = XXH64_createState();
    CHECK(xs != NULL, "XXH64_createState failed");
    XXH64_reset(xs, 0);
    unsigned char *chunk = malloc_check(SHARD_IO_CHUNK);
    for (uint64_t off = 0; off < w->offset;) {
        size_t m = w->offset - off < SHARD_IO_CHUNK ? (size_t)(w->offset - off) : SHARD_IO_CHUNK;
        pread_all(w->fd, chunk, m, off, w->tmp_path);
        XXH64_update(xs, chunk, m);
        off += m;
    }
    XXH64_update(xs, footer, 8);
    put_u64(footer + 8, XXH64_digest(xs));
    memcpy(footer + 16, SHARD_END_MAGIC, 8);
    XXH64_freeState(xs);
    free(chunk);
    pwrite_all(w->fd, footer, sizeof footer, w->offset, w->tmp_path);

    CHECK(fsync(w->fd) == 0, "fsync %s: %s", w->tmp_path, strerror(errno));
    CHECK(close(w->fd) == 0, "close %s: %s", w->tmp_path, strerror(errno));
    CHECK(rename(w->tmp_path, w->path) == 0, "rename %s -> %s: %s", w->tmp_path, w->path, strerror(errno));
    fsync_parent_dir(w->path);

    ZSTD_freeCCtx(w->cctx);
    free(w->zbuf);
    free(w->raw);
    free(w->frames);
    free(w->docs);
    free(w->mask_bits);
    free(w->mask_z);
    free(w->mask_frames);
    free(w->tmp_path);
    free(w->path);
    free(w);
}

/* ---------------------------------------------------------------------------------------------- */
/* reader                                                                                          */


struct loom_shard {
    char *path;
    const unsigned char *map;  /* [size] the whole file, read-only */
    size_t size;
    struct shard_header h;
    int has_mask;
    uint64_t index_offset;
    const unsigned char *frame_index;  /* [frame_count * 16] inside map */
    const unsigned char *mask_index;   /* [frame_count * 16] inside map; NULL without a mask */
    const unsigned char *doc_index;    /* [doc_count * 8] inside map */
    ZSTD_DCtx *dctx;
    unsigned char *raw;        /* [frame_tokens * token_bytes] decompression scratch */
    int32_t *cache;            /* [frame_tokens] tokens of frame cache_frame */
    int64_t cache_frame;       /* -1 when empty */
    uint8_t *mask_cache;       /* [frame_tokens] mask of frame mask_cache_frame, one byte per token */
    int64_t mask_cache_frame;  /* -1 when empty */
};

static const char *const SHARD_HINT_DAMAGED =
    "the file is damaged or incomplete; make it again with `loom data prep`";

static void shard_free(struct loom_shard *s) {
    if (s->map) munmap((void *)s->map, s->size);
    ZSTD_freeDCtx(s->dctx);
    free(s->raw);
    free(s->cache);
    free(s->mask_cache);
    free(s->path);
    free(s);
}

/* The input error for a shard that failed validation; the reader is freed first, so a caller that survives
 * the error (the fuzz targets, tests/fuzz/) is left with nothing allocated or mapped. */
_Noreturn __attribute__((format(printf, 3, 4)))
static void shard_bad(struct loom_shard *s, const char *hint, const char *fmt, ...) {
    char msg[768], where[PATH_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(where, sizeof where, "%s", s->path);
    shard_free(s);
    loom_input_error(where, hint, "%s", msg);
}

static int64_t frame_ntokens(const struct loom_shard *s, int64_t f) {
    int64_t ft = s->h.frame_tokens;
    return f < (int64_t)s->h.frame_count - 1 ? ft : (int64_t)s->h.token_count - f * ft;
}

static uint64_t mask_nbytes(int64_t ntok) { return ((uint64_t)ntok + 7) / 8; }

static void shard_unpack(const struct loom_shard *s, int64_t n) {
    if (s->h.token_bytes == 2) {
        for (int64_t i = 0; i < n; i++) s->cache[i] = (int32_t)(s->raw[2 * i] | (s->raw[2 * i + 1] << 8));
    } else {
        for (int64_t i = 0; i < n; i++) s->cache[i] = (int32_t)get_u32(s->raw + 4 * i);
    }
}

/* The mask bits in raw -> one byte per token in mask_cache. */
static void shard_unpack_mask(const struct loom_shard *s, int64_t n) {
    for (int64_t i = 0; i < n; i++) s->mask_cache[i] = (uint8_t)((s->raw[i / 8] >> (i % 8)) & 1);
}

/* Header fields and the footer: everything that does not need a frame decompressed. */
static void shard_validate_layout(struct loom_shard *s) {
    const struct shard_header *h = &s->h;
    const size_t min_size = LOOM_SHARD_HEADER_BYTES + LOOM_SHARD_FOOTER_BYTES;
    if (s->size < min_size)
        shard_bad(s, SHARD_HINT_DAMAGED, "truncated: %zu bytes, expected at least %zu", s->size, min_size);
    if (memcmp(s->map, SHARD_MAGIC, 8) != 0)
        shard_bad(s, "make shards with `loom data prep`", "not a loom token shard (bad magic)");
    header_decode(&s->h, s->map);
    if (h->version != LOOM_SHARD_VERSION)
        shard_bad(s, "this build reads shard version 1; make the shard again with this build's `loom data prep`",
                  "unsupported shard version %u", h->version);
    if (memcmp(s->map + s->size - 8, SHARD_END_MAGIC, 8) != 0)
        shard_bad(s, SHARD_HINT_DAMAGED, "truncated: end marker missing (file is %zu bytes)", s->size);
    uint64_t stored = get_u64(s->map + s->size - 16);
    uint64_t computed = XXH64(s->map, s->size - 16, 0);
    if (stored != computed)
        shard_bad(s, SHARD_HINT_DAMAGED, "checksum mismatch: file is corrupt (stored %016llx, computed %016llx)",
                  (unsigned long long)stored, (unsigned long long)computed);

    if (h->token_bytes != 2 && h->token_bytes != 4)
        shard_bad(s, SHARD_HINT_DAMAGED, "bad token width %u bytes (expected 2 or 4)", h->token_bytes);
    if (h->vocab_size == 0) shard_bad(s, SHARD_HINT_DAMAGED, "vocab size is 0");
    if (h->vocab_size > SHARD_MAX_VOCAB)
        shard_bad(s, NULL, "vocab size %u is larger than %u", h->vocab_size, SHARD_MAX_VOCAB);
    uint32_t want_bytes = h->vocab_size <= 65536 ? 2 : 4;
    if (h->token_bytes != want_bytes)
        shard_bad(s, SHARD_HINT_DAMAGED, "token width %u bytes does not match vocab size %u (expected %u)",
                  h->token_bytes, h->vocab_size, want_bytes);
    if (h->flags & ~LOOM_SHARD_FLAG_LOSS_MASK)
        shard_bad(s, "the shard was made by a newer build; read it with that build",
                  "unknown header flags 0x%x", h->flags & ~LOOM_SHARD_FLAG_LOSS_MASK);
    s->has_mask = (h->flags & LOOM_SHARD_FLAG_LOSS_MASK) != 0;
    if (h->reserved != 0) shard_bad(s, SHARD_HINT_DAMAGED, "reserved header field is %u, expected 0", h->reserved);
    if (h->frame_tokens == 0 || h->frame_tokens > LOOM_SHARD_MAX_FRAME_TOKENS)
        shard_bad(s, SHARD_HINT_DAMAGED, "frame size %u tokens out of range 1..%u", h->frame_tokens,
                  LOOM_SHARD_MAX_FRAME_TOKENS);
    if (h->token_count > (uint64_t)INT64_MAX)
        shard_bad(s, SHARD_HINT_DAMAGED, "token count %llu is too large", (unsigned long long)h->token_count);
    uint64_t want_frames = h->token_count / h->frame_tokens + (h->token_count % h->frame_tokens != 0);
    if (h->frame_count != want_frames)
        shard_bad(s, SHARD_HINT_DAMAGED, "token count %llu is inconsistent with %llu frames of %u tokens",
                  (unsigned long long)h->token_count, (unsigned long long)h->frame_count, h->frame_tokens);

    /* frames [64, index_offset), frame index, mask index, doc index, footer: exactly the file */
    uint64_t index_offset = get_u64(s->map + s->size - LOOM_SHARD_FOOTER_BYTES);
    uint64_t end = s->size - LOOM_SHARD_FOOTER_BYTES;
    uint64_t entry_bytes = s->has_mask ? 32 : 16;  /* index bytes per frame */
    int fits = index_offset >= LOOM_SHARD_HEADER_BYTES && index_offset <= end
            && h->frame_count <= (end - index_offset) / entry_bytes
            && h->doc_count <= (end - index_offset) / 8
            && index_offset + entry_bytes * h->frame_count + 8 * h->doc_count == end;
    if (!fits)
        shard_bad(s, SHARD_HINT_DAMAGED,
                  "index offset %llu with %llu frames%s and %llu documents is inconsistent with the file size %zu",
                  (unsigned long long)index_offset, (unsigned long long)h->frame_count,
                  s->has_mask ? " (with a loss mask)" : "", (unsigned long long)h->doc_count, s->size);
    s->index_offset = index_offset;
    s->frame_index = s->map + index_offset;
    s->mask_index = s->has_mask ? s->frame_index + 16 * h->frame_count : NULL;
    s->doc_index = s->frame_index + entry_bytes * h->frame_count;
}

/* Frame f of a run of frames (`kind` names it in messages) whose index entries start at `index`: it
 * starts at *expect_offset, lies before the indexes, is one zstd frame recording exactly nbytes, and
 * decompresses to them in s->raw. Advances *expect_offset past it. */
static void shard_check_frame(struct loom_shard *s, const char *kind, const unsigned char *index, int64_t f,
                              uint64_t nbytes, uint64_t *expect_offset) {
    uint64_t off = get_u64(index + 16 * f), csize = get_u64(index + 16 * f + 8);
    if (off != *expect_offset)
        shard_bad(s, SHARD_HINT_DAMAGED, "%s %lld starts at offset %llu, expected %llu", kind, (long long)f,
                  (unsigned long long)off, (unsigned long long)*expect_offset);
    if (csize == 0 || csize > s->index_offset - off)
        shard_bad(s, SHARD_HINT_DAMAGED, "%s %lld: compressed size %llu runs past the frames (end %llu)", kind,
                  (long long)f, (unsigned long long)csize, (unsigned long long)s->index_offset);
    const unsigned char *src = s->map + off;
    unsigned long long content = ZSTD_getFrameContentSize(src, csize);
    if (content == ZSTD_CONTENTSIZE_ERROR || content == ZSTD_CONTENTSIZE_UNKNOWN)
        shard_bad(s, SHARD_HINT_DAMAGED, "%s %lld is not a zstd frame with a recorded size", kind, (long long)f);
    if (content != nbytes)
        shard_bad(s, SHARD_HINT_DAMAGED, "%s %lld holds %llu bytes, expected %llu (%lld tokens)", kind,
                  (long long)f, content, (unsigned long long)nbytes, (long long)frame_ntokens(s, f));
    size_t framed = ZSTD_findFrameCompressedSize(src, csize);
    if (ZSTD_isError(framed) || framed != csize)
        shard_bad(s, SHARD_HINT_DAMAGED, "%s %lld: the index says %llu compressed bytes, the frame has %s", kind,
                  (long long)f, (unsigned long long)csize,
                  ZSTD_isError(framed) ? ZSTD_getErrorName(framed) : "a different size");
    size_t got = ZSTD_decompressDCtx(s->dctx, s->raw, nbytes, src, csize);
    if (ZSTD_isError(got))
        shard_bad(s, SHARD_HINT_DAMAGED, "%s %lld does not decompress: %s", kind, (long long)f,
                  ZSTD_getErrorName(got));
    if (got != nbytes)
        shard_bad(s, SHARD_HINT_DAMAGED, "%s %lld decompresses to %zu bytes, expected %llu", kind, (long long)f, got,
                  (unsigned long long)nbytes);
    *expect_offset = off + csize;
}

/* Every token frame, then every mask frame: back to back from the header to the frame index, each
 * decompressing to exactly its size; every id below vocab_size; every mask padding bit 0. */
static void shard_validate_frames(struct loom_shard *s) {
    const struct shard_header *h = &s->h;
    uint64_t expect_offset = LOOM_SHARD_HEADER_BYTES;
    for (int64_t f = 0; f < (int64_t)h->frame_count; f++) {
        int64_t ntok = frame_ntokens(s, f);
        shard_check_frame(s, "frame", s->frame_index, f, (uint64_t)ntok * h->token_bytes, &expect_offset);
        for (int64_t i = 0; i < ntok; i++) {
            const unsigned char *p = s->raw + i * h->token_bytes;
            uint32_t id = h->token_bytes == 2 ? (uint32_t)(p[0] | (p[1] << 8)) : get_u32(p);
            if (id >= h->vocab_size)
                shard_bad(s, "the shard was made with a larger vocabulary than its header says",
                          "token id %u at position %lld >= vocab size %u", id,
                          (long long)(f * h->frame_tokens + i), h->vocab_size);
        }
        shard_unpack(s, ntok);
        s->cache_frame = f;
    }
    for (int64_t f = 0; s->has_mask && f < (int64_t)h->frame_count; f++) {
        int64_t ntok = frame_ntokens(s, f);
        uint64_t nbytes = mask_nbytes(ntok);
        shard_check_frame(s, "mask frame", s->mask_index, f, nbytes, &expect_offset);
        if (ntok % 8 != 0 && (s->raw[nbytes - 1] >> (ntok % 8)) != 0)
            shard_bad(s, SHARD_HINT_DAMAGED, "mask frame %lld: padding bits after its %lld tokens are not 0",
                      (long long)f, (long long)ntok);
        shard_unpack_mask(s, ntok);
        s->mask_cache_frame = f;
    }
    if (expect_offset != s->index_offset)
        shard_bad(s, SHARD_HINT_DAMAGED, "%s end at offset %llu but the frame index starts at %llu",
                  s->has_mask ? "mask frames" : "frames", (unsigned long long)expect_offset,
                  (unsigned long long)s->index_offset);
}

static void shard_validate_docs(struct loom_shard *s) {
    const struct shard_header *h = &s->h;
    if (h->token_count == 0) {
        if (h->doc_count != 0)
            shard_bad(s, SHARD_HINT_DAMAGED, "%llu documents in a shard with no tokens",
                      (unsigned long long)h->doc_count);
        return;
    }
    if (h->doc_count == 0) shard_bad(s, SHARD_HINT_DAMAGED, "document index is empty but the shard has tokens");
    uint64_t prev = 0;
    for (uint64_t d = 0; d < h->doc_count; d++) {
        uint64_t start = get_u64(s->doc_index + 8 * d);
        if (d == 0 && start != 0)
            shard_bad(s, SHARD_HINT_DAMAGED, "document 0 starts at token %llu, expected 0", (unsigned long long)start);
        if (d > 0 && start <= prev)
            shard_bad(s, SHARD_HINT_DAMAGED, "document index not ascending: document %llu starts at %llu after %llu",
                      (unsigned long long)d, (unsigned long long)start, (unsigned long long)prev);
        if (start >= h->token_count)
            shard_bad(s, SHARD_HINT_DAMAGED, "document %llu starts at token %llu >= token count %llu",
                      (unsigned long long)d, (unsigned long long)start, (unsigned long long)h->token_count);
        prev = start;
    }
}

struct loom_shard *loom_shard_open(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) loom_input_error(path, NULL, "cannot open shard: %s", strerror(errno));
    struct stat st;
    CHECK(fstat(fd, &st) == 0, "fstat %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        loom_input_error(path, NULL, "not a regular file");
    }
    struct loom_shard *s = calloc_check(1, sizeof *s);
    size_t len = strlen(path);
    s->path = malloc_check(len + 1);
    memcpy(s->path, path, len + 1);
    s->cache_frame = -1;
    s->mask_cache_frame = -1;
    s->size = (size_t)st.st_size;
    if (s->size >= LOOM_SHARD_HEADER_BYTES + LOOM_SHARD_FOOTER_BYTES) {
        void *map = mmap(NULL, s->size, PROT_READ, MAP_PRIVATE, fd, 0);
        CHECK(map != MAP_FAILED, "mmap %s (%zu bytes): %s", path, s->size, strerror(errno));
        s->map = map;
    }
    close(fd);

    shard_validate_layout(s);
    /* the longest frame: frame_tokens, or all the tokens of a shard that has fewer */
    size_t frame_max = s->h.token_count < s->h.frame_tokens ? (size_t)s->h.token_count : s->h.frame_tokens;
    s->raw = malloc_check(frame_max * s->h.token_bytes);
    s->cache = malloc_check(frame_max * sizeof *s->cache);
    if (s->has_mask) s->mask_cache = malloc_check(frame_max);
    s->dctx = ZSTD_createDCtx();
    CHECK(s->dctx != NULL, "ZSTD_createDCtx failed");
    shard_validate_frames(s);
    shard_validate_docs(s);
    return s;
}

int64_t loom_shard_tokens(const struct loom_shard *s) { return (int64_t)s->h.token_count; }
int64_t loom_shard_docs(const struct loom_shard *s) { return (int64_t)s->h.doc_count; }
uint32_t loom_shard_vocab(const struct loom_shard *s) { return s->h.vocab_size; }
uint64_t loom_shard_tokenizer_hash(const struct loom_shard *s) { return s->h.tokenizer_hash; }
const char *loom_shard_path(const struct loom_shard *s) { return s->path; }
int loom_shard_has_mask(const struct loom_shard *s) { return s->has_mask; }

/* Decompress frame f of the run indexed at `index` into s->raw (nbytes, as validated at open). */
static void shard_decompress(struct loom_shard *s, const unsigned char *index, int64_t f, size_t nbytes) {
    size_t got = ZSTD_decompressDCtx(s->dctx, s->raw, nbytes, s->map + get_u64(index + 16 * f),
                                     get_u64(index + 16 * f + 8));
    CHECK(!ZSTD_isError(got) && got == nbytes, "%s: %s %lld changed since it was validated", s->path,
          index == s->mask_index ? "mask frame" : "frame", (long long)f);
}

static void shard_load_frame(struct loom_shard *s, int64_t f) {
    if (s->cache_frame == f) return;
    int64_t ntok = frame_ntokens(s, f);
    shard_decompress(s, s->frame_index, f, (size_t)ntok * s->h.token_bytes);
    shard_unpack(s, ntok);
    s->cache_frame = f;
}

static void shard_load_mask_frame(struct loom_shard *s, int64_t f) {
    if (s->mask_cache_frame == f) return;
    int64_t ntok = frame_ntokens(s, f);
    shard_decompress(s, s->mask_index, f, (size_t)mask_nbytes(ntok));
    shard_unpack_mask(s, ntok);
    s->mask_cache_frame = f;
}

static void shard_check_range(const struct loom_shard *s, int64_t start, int64_t count) {
    int64_t total = (int64_t)s->h.token_count;
    CHECK(start >= 0 && count >= 0 && start <= total && count <= total - start,
          "%s: read of %lld tokens at %lld outside the shard's %lld tokens", s->path, (long long)count,
          (long long)start, (long long)total);
}

void loom_shard_read(struct loom_shard *s, int64_t start, int64_t count, int32_t *out) {
    shard_check_range(s, start, count);
    int64_t ft = s->h.frame_tokens;
    while (count > 0) {
        int64_t f = start / ft;
        int64_t at = start - f * ft;
        shard_load_frame(s, f);
        int64_t m = frame_ntokens(s, f) - at;
        if (m > count) m = count;
        memcpy(out, s->cache + at, (size_t)m * sizeof *out);
        out += m;
        start += m;
        count -= m;
    }
}

void loom_shard_read_mask(struct loom_shard *s, int64_t start, int64_t count, uint8_t *out) {
    shard_check_range(s, start, count);
    if (!s->has_mask) {
        memset(out, 1, (size_t)count);
        return;
    }
    int64_t ft = s->h.frame_tokens;
    while (count > 0) {
        int64_t f = start / ft;
        int64_t at = start - f * ft;
        shard_load_mask_frame(s, f);
        int64_t m = frame_ntokens(s, f) - at;
        if (m > count) m = count;
        memcpy(out, s->mask_cache + at, (size_t)m);
        out += m;
        start += m;
        count -= m;
    }
}

int64_t loom_shard_doc_start(const struct loom_shard *s, int64_t doc) {
    CHECK(doc >= 0 && doc < (int64_t)s->h.doc_count, "%s: document %lld outside 0..%lld", s->path,
          (long long)doc, (long long)s->h.doc_count - 1);
    return (int64_t)get_u64(s->doc_index + 8 * doc);
}

void loom_shard_close(struct loom_shard *s) { shard_free(s); }
