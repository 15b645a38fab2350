/*
 * bench/bench_loader.c — loader throughput against raw zstd decompression of the same shards.
 *
 *   build/bench/bench_loader FOLDER SEQ_LEN BATCH BATCHES
 *
 * Prints two lines, `raw tokens_per_s=...` (every token frame of every shard in FOLDER decompressed
 * with ZSTD_decompressDCtx, nothing else) and `loader tokens_per_s=...` (the training sampler: source
 * choice, cursors, window reads across frames, targets), each over the same number of tokens, and
 * their ratio. scripts/bench_loader.sh runs it and compares with what a training step consumes.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zstd.h>

#include "core/config.h"
#include "core/error.h"
#include "data/curriculum.h"
#include "data/sampler.h"
#include "data/shard.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t read_u64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static uint32_t read_u32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Decompress every token frame of one shard; returns its tokens. */
static int64_t raw_shard(const char *path, ZSTD_DCtx *dctx, void *buf, size_t cap) {
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0, "cannot open %s", path);
    struct stat st;
    CHECK(fstat(fd, &st) == 0, "cannot stat %s", path);
    const unsigned char *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    CHECK(p != MAP_FAILED, "cannot map %s", path);
    uint32_t token_bytes = read_u32(p + 12), frame_tokens = read_u32(p + 20);
    uint64_t tokens = read_u64(p + 24), frames = read_u64(p + 40);
    uint64_t index = read_u64(p + st.st_size - LOOM_SHARD_FOOTER_BYTES);
    int64_t done = 0;
    for (uint64_t f = 0; f < frames; f++) {
        uint64_t off = read_u64(p + index + 16 * f), size = read_u64(p + index + 16 * f + 8);
        size_t want = (size_t)(f + 1 < frames ? frame_tokens : tokens - f * frame_tokens) * token_bytes;
        CHECK(want <= cap, "frame larger than the buffer");
        size_t got = ZSTD_decompressDCtx(dctx, buf, cap, p + off, size);
        CHECK(!ZSTD_isError(got) && got == want, "frame %llu of %s", (unsigned long long)f, path);
        done += (int64_t)(got / token_bytes);
    }
    munmap((void *)p, (size_t)st.st_size);
    close(fd);
    return done;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: bench_loader FOLDER SEQ_LEN BATCH BATCHES\n");
        return 2;
    }
    const char *folder = argv[1];
    int64_t T = atoll(argv[2]), batch = atoll(argv[3]), batches = atoll(argv[4]);

    /* raw: every frame of every shard, repeated until as many tokens as the loader reads */
    DIR *d = opendir(folder);
    CHECK(d != NULL, "cannot open %s", folder);
    char paths[256][512];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256)
        if (strstr(e->d_name, ".tok")) snprintf(paths[n++], sizeof paths[0], "%s/%s", folder, e->d_name);
    closedir(d);
    CHECK(n > 0, "no shards in %s", folder);
    size_t cap = (size_t)LOOM_SHARD_MAX_FRAME_TOKENS * 4;
    void *buf = malloc_check(cap);
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    int64_t want = T * batch * batches, raw = 0;
    double t0 = now_s();
    while (raw < want)
        for (int i = 0; i < n && raw < want; i++) raw += raw_shard(paths[i], dctx, buf, cap);
    double raw_s = now_s() - t0;
    ZSTD_freeDCtx(dctx);
    free(buf);

    /* loader: the training sampler over the same folder as one source */
    struct loom_config cfg;
    loom_config_init(&cfg);
    char v[64];
    loom_config_set(&cfg, "data", "train", folder, "bench");
    snprintf(v, sizeof v, "%lld", (long long)T);
    loom_config_set(&cfg, "train", "seq_len", v, "bench");
    snprintf(v, sizeof v, "%lld", (long long)batch);
    loom_config_set(&cfg, "train", "global_batch", v, "bench");
    loom_config_set(&cfg, "train", "micro_batch", v, "bench");
    loom_config_set(&cfg, "model", "vocab_size", "1000000", "bench");
    struct loom_sampler s;
    loom_sampler_open(&s, &cfg, 0);
    struct loom_curriculum c;
    int64_t size[LOOM_MAX_SOURCES];
    loom_sampler_sizes(&s, size);
    loom_curriculum_build(&c, &cfg, size);
    int *inputs = malloc_check(sizeof(int) * (size_t)(T * batch));
    int *targets = malloc_check(sizeof(int) * (size_t)(T * batch));
    int *src = malloc_check(sizeof(int) * (size_t)batch);
    t0 = now_s();
    for (int64_t b = 0; b < batches; b++) loom_sampler_next_batch(&s, &c, batch, T, 0, batch, inputs, targets, src);
    double loader_s = now_s() - t0;

    double raw_tps = raw / raw_s, loader_tps = (double)want / loader_s;
    printf("raw tokens_per_s=%.0f tokens=%lld\n", raw_tps, (long long)raw);
    printf("loader tokens_per_s=%.0f tokens=%lld\n", loader_tps, (long long)want);
    printf("ratio loader/raw=%.2f\n", loader_tps / raw_tps);
    free(inputs);
    free(targets);
    free(src);
    loom_sampler_close(&s);
    loom_config_free(&cfg);
    return 0;
}
