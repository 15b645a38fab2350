/*
 * data/sampler.c — sources as token streams and the layout-independent global sample stream
 * (see sampler.h).
 */
#include "data/sampler.h"

#include <dirent.h>
#include <errno.h>
#include <glob.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "core/list.h"
#include "core/rng.h"
#include "data/shard.h"

/* Philox streams: each purpose draws from its own, keyed by the run seed */
enum {
    STREAM_SOURCE = 0x736f7572,    /* "sour": which source global sample g comes from */
    STREAM_ORDER = 0x6f726465,     /* "orde": shard order of a source's epoch */
    STREAM_RANDOM = 0x72616e64,    /* "rand": tokens of data.kind = random */
};

/* ---------------------------------------------------------------------------------------------- */
/* opening sources                                                                                  */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static void stream_add(struct loom_stream *st, const char *path) {
    st->shards = realloc(st->shards, sizeof(*st->shards) * (st->nshards + 1));
    CHECK(st->shards != NULL, "out of memory");
    st->shards[st->nshards++] = loom_shard_open(path);
}

static void stream_add_folder(struct loom_stream *st, const char *key, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) loom_input_error(dir, NULL, "cannot open folder (%s)", strerror(errno));
    char **names = NULL;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!ends_with(e->d_name, ".tok")) continue;
        names = realloc(names, sizeof(char *) * (n + 1));
        CHECK(names != NULL, "out of memory");
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        names[n] = malloc_check(len);
        snprintf(names[n], len, "%s/%s", dir, e->d_name);
        n++;
    }
    closedir(d);
    if (n == 0) {
        char hint[512];
        snprintf(hint, sizeof hint, "listed in %s; make shards with `loom data prep --out FOLDER`", key);
        loom_input_error(dir, hint, "folder holds no *.tok shards");
    }
    qsort(names, n, sizeof(char *), cmp_str);
    for (int i = 0; i < n; i++) {
        stream_add(st, names[i]);
        free(names[i]);
    }
    free(names);
}

struct item_ctx {
    struct loom_stream *st;
    const char *key;
};

static int stream_add_item(char *item, int i, void *vctx) {
    (void)i;
    struct loom_stream *st = ((struct item_ctx *)vctx)->st;
    const char *key = ((struct item_ctx *)vctx)->key;
    if (strpbrk(item, "*?[")) {
        glob_t g;
        int rc = glob(item, 0, NULL, &g);
        if (rc != 0 || g.gl_pathc == 0) {
            if (rc == 0) globfree(&g);
            loom_input_error(key, "check the pattern; it is matched against files when training starts",
                             "`%s` matches no file", item);
        }
        for (size_t j = 0; j < g.gl_pathc; j++) stream_add(st, g.gl_pathv[j]); /* glob sorts its matches */
        globfree(&g);
        return 0;
    }
    struct stat sb;
    if (stat(item, &sb) != 0) {
        char hint[512];
        snprintf(hint, sizeof hint, "listed in %s, which takes shard files, folders of *.tok, or globs", key);
        loom_input_error(item, hint, "cannot read (%s)", strerror(errno));
    }
    if (S_ISDIR(sb.st_mode)) stream_add_folder(st, key, item);
    else stream_add(st, item);
    return 0;
}

static void stream_open(struct loom_stream *st, const struct loom_source_config *src, int heldout) {
    memset(st, 0, sizeof *st);
    st->source = src;
    st->masked = src->loss_mask == LOOM_LOSS_MASK_ASSISTANT;
    const char *list = heldout ? src->heldout : src->shards;
    char key[96];
    snprintf(key, sizeof key, "source.%s.%s", src->name, heldout ? "heldout" : "shards");
    if (!list || !list[0]) {
        if (heldout) return;
        loom_input_error(key, "list the source's shard files, folders or globs", "source has no shards");
    }
    struct item_ctx x = {.st = st, .key = key};
    loom_list_each(list, stream_add_item, &x, NULL);
    if (st->nshards == 0) loom_input_error(key, NULL, "names no shard");
    for (int i = 0; i < st->nshards; i++) st->total += loom_shard_tokens(st->shards[i]);
}

void loom_sampler_open(struct loom_sampler *s, const struct loom_config *cfg, int heldout) {
    memset(s, 0, sizeof *s);
    s->seed = (uint64_t)cfg->train.seed;
    s->vocab = cfg->model.vocab_size;
    s->random = cfg->data.kind == LOOM_DATA_RANDOM;
    if (s->random) return;

    static struct loom_source_config shorthand;
    const struct loom_source_config *sources[LOOM_MAX_SOURCES];
    s->nstreams = loom_config_sources(cfg, sources, &shorthand);
    if (s->nstreams == 0)
        loom_input_error("data", "define [source.NAME] sections (or data.train), or set data.kind = random",
                         "no training data");
    const struct loom_shard *first = NULL;
    for (int i = 0; i < s->nstreams; i++) {
        struct loom_stream *st = &s->streams[i];
        stream_open(st, sources[i], heldout);
        for (int j = 0; j < st->nshards; j++) {
            const struct loom_shard *sh = st->shards[j];
            if ((int64_t)loom_shard_vocab(sh) > s->vocab)
                loom_input_error(loom_shard_path(sh), "raise model.vocab_size or re-tokenize the data",
                                 "shard vocabulary %u is larger than model.vocab_size %lld", loom_shard_vocab(sh),
                                 (long long)s->vocab);
            if (first && loom_shard_tokenizer_hash(sh) != loom_shard_tokenizer_hash(first))
                loom_input_error(loom_shard_path(sh), "every shard of a run must come from one tokenizer",
                                 "tokenizer differs from that of %s", loom_shard_path(first));
            if (!first) first = sh;
        }
    }
}

void loom_sampler_close(struct loom_sampler *s) {
    for (int i = 0; i < s->nstreams; i++) {
        for (int j = 0; j < s->streams[i].nshards; j++) loom_shard_close(s->streams[i].shards[j]);
        free(s->streams[i].shards);
        free(s->streams[i].order);
        free(s->streams[i].order_start);
    }
    free(s->window);
    free(s->mask);
    memset(s, 0, sizeof *s);
}

int64_t loom_source_tokens(const struct loom_source_config *src) {
    struct loom_stream st;
    stream_open(&st, src, 0);
    for (int j = 0; j < st.nshards; j++) loom_shard_close(st.shards[j]);
    free(st.shards);
    return st.total;
}

void loom_sampler_sizes(const struct loom_sampler *s, int64_t *size) {
    for (int i = 0; i < s->nstreams; i++) size[i] = s->streams[i].total;
}

/* ---------------------------------------------------------------------------------------------- */
/* reading windows                                                                                  */

static void window_reserve(struct loom_sampler *s, int64_t n) {
    if (n <= s->window_cap) return;
    s->window = realloc(s->window, sizeof(int32_t) * n);
    s->mask = realloc(s->mask, n);
    CHECK(s->window && s->mask, "out of memory for a window of %lld tokens", (long long)n);
    s->window_cap = n;
}

/* The shard order of a source's epoch: a Fisher-Yates shuffle seeded by (seed, source, epoch), with
 * each shard's first position in that order; cached until the source moves to another epoch. */
static void epoch_order(struct loom_sampler *s, int src, int64_t epoch) {
    struct loom_stream *st = &s->streams[src];
    if (st->order && st->order_epoch == epoch) return;
    int n = st->nshards;
    if (!st->order) {
        st->order = malloc_check(sizeof(int) * n);
        st->order_start = malloc_check(sizeof(int64_t) * (n + 1));
    }
    int *perm = st->order;
    for (int j = 0; j < n; j++) perm[j] = j;
    uint64_t stream = ((uint64_t)STREAM_ORDER << 32) ^ ((uint64_t)src << 24);
    for (int j = n - 1; j > 0; j--) {
        int k = (int)(loom_rng_u64(s->seed, stream, ((uint64_t)epoch << 32) | (uint64_t)j) % (uint64_t)(j + 1));
        int t = perm[j];
        perm[j] = perm[k];
        perm[k] = t;
    }
    st->order_start[0] = 0;
    for (int j = 0; j < n; j++) st->order_start[j + 1] = st->order_start[j] + loom_shard_tokens(st->shards[perm[j]]);
    st->order_epoch = epoch;
}

/* count tokens (and mask bytes) of source src's epoch-ordered stream from position pos */
static void stream_read(struct loom_sampler *s, int src, int64_t epoch, int64_t pos, int64_t count, int32_t *out,
                        uint8_t *mask) {
    epoch_order(s, src, epoch);
    const struct loom_stream *st = &s->streams[src];
    CHECK(pos + count <= st->order_start[st->nshards], "read past the end of source %s", st->source->name);
    /* the shard holding pos: the last start <= pos */
    int lo = 0, hi = st->nshards - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (st->order_start[mid] <= pos) lo = mid;
        else hi = mid - 1;
    }
    for (int i = lo; count > 0; i++) {
        struct loom_shard *sh = st->shards[st->order[i]];
        int64_t local = pos - st->order_start[i], n = st->order_start[i + 1] - pos;
        int64_t take = n < count ? n : count;
        if (take <= 0) continue;
        loom_shard_read(sh, local, take, out);
        if (mask) loom_shard_read_mask(sh, local, take, mask);
        out += take;
        if (mask) mask += take;
        pos += take;
        count -= take;
    }
}

/* Window of T + 1 tokens from source src at its cursor; moves the cursor (into a new epoch when the
 * window would run past the end). Reads the tokens only when `read` is set. */
static void source_take(struct loom_sampler *s, int src, int64_t T, int read) {
    struct loom_sampler_state *st = &s->state;
    const struct loom_stream *stream = &s->streams[src];
    if (stream->total < T + 1) {
        char key[96];
        snprintf(key, sizeof key, "source.%s.shards", stream->source->name);
        loom_input_error(key, "give the source more data or use a shorter sequence length",
                         "%lld tokens, fewer than one sample of %lld", (long long)stream->total, (long long)(T + 1));
    }
    if (st->cursor[src] + T + 1 > stream->total) {
        st->epoch[src]++;
        st->cursor[src] = 0;
    }
    if (read) stream_read(s, src, st->epoch[src], st->cursor[src], T + 1, s->window, stream->masked ? s->mask : NULL);
    st->cursor[src] += T;
}

/* inverse CDF of the mixture at u in [0, 1) */
static int mixture_pick(const double *w, int n, double u) {
    double acc = 0;
    int last = 0;
    for (int i = 0; i < n; i++) {
        if (w[i] <= 0) continue;
        acc += w[i];
        last = i;
        if (u < acc) return i;
    }
    return last;
}

void loom_sampler_next_batch(struct loom_sampler *s, const struct loom_curriculum *c, int64_t batch, int64_t T,
                             int64_t r0, int64_t r1, int *inputs, int *targets, int *src) {
    struct loom_sampler_state *st = &s->state;
    window_reserve(s, T + 1);
    double w[LOOM_MAX_SOURCES];
    for (int64_t i = 0; i < batch; i++) {
        int64_t g = st->sample + i;
        int read = i >= r0 && i < r1;
        int *in = inputs + (i - r0) * T, *tg = targets + (i - r0) * T;
        if (s->random) {
            if (read) {
                for (int64_t t = 0; t <= T; t++)
                    s->window[t] = (int32_t)(loom_rng_u64(s->seed, STREAM_RANDOM, (uint64_t)g * (T + 1) + t) %
                                             (uint64_t)s->vocab);
                for (int64_t t = 0; t < T; t++) {
                    in[t] = s->window[t];
                    tg[t] = s->window[t + 1];
                }
                if (src) src[i - r0] = -1;
            }
            continue;
        }
        loom_curriculum_weights_at(c, st->tokens + i * T, w);
        int k = mixture_pick(w, s->nstreams, loom_rng_uniform(s->seed, STREAM_SOURCE, (uint64_t)g));
        source_take(s, k, T, read);
        if (!read) continue;
        int masked = s->streams[k].masked;
        for (int64_t t = 0; t < T; t++) {
            in[t] = s->window[t];
            tg[t] = masked && !s->mask[t + 1] ? -1 : s->window[t + 1];
        }
        if (src) src[i - r0] = k;
    }
    st->sample += batch;
    st->tokens += batch * T;
}

int loom_sampler_heldout(struct loom_sampler *s, int source, int64_t k, int64_t T, int *inputs, int *targets) {
    const struct loom_stream *stream = &s->streams[source];
    if ((k + 1) * T + 1 > stream->total) return 0;
    window_reserve(s, T + 1);
    stream_read(s, source, 0, k * T, T + 1, s->window, stream->masked ? s->mask : NULL);
    for (int64_t t = 0; t < T; t++) {
        inputs[t] = s->window[t];
        targets[t] = stream->masked && !s->mask[t + 1] ? -1 : s->window[t + 1];
    }
    return 1;
}
