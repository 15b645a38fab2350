/*
 * data/loader.c — shard-backed training samples (see loader.h).
 */
#include "data/loader.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "core/rng.h"
#include "data/shard.h"

enum { RNG_STREAM_DATA = 0x64617461 }; /* "data" */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static void add_shard(struct loom_loader *l, const char *path) {
    l->shards = realloc(l->shards, sizeof(*l->shards) * (l->nshards + 1));
    CHECK(l->shards != NULL, "out of memory");
    l->shards[l->nshards++] = loom_shard_open(path);
}

/* a folder contributes its *.tok files in name order */
static void add_folder(struct loom_loader *l, const char *dir) {
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
    if (n == 0) loom_input_error(dir, "make shards with `loom data prep --out FOLDER`", "folder holds no *.tok shards");
    qsort(names, n, sizeof(char *), cmp_str);
    for (int i = 0; i < n; i++) {
        add_shard(l, names[i]);
        free(names[i]);
    }
    free(names);
}

void loom_loader_open(struct loom_loader *l, const struct loom_config *cfg) {
    memset(l, 0, sizeof *l);
    l->seq_len = cfg->train.seq_len;
    l->vocab = cfg->model.vocab_size;
    l->seed = (uint64_t)cfg->train.seed;
    l->window = malloc_check(sizeof(int32_t) * (l->seq_len + 1));
    if (cfg->data.kind == LOOM_DATA_RANDOM) {
        l->random = 1;
        return;
    }
    char *list = strdup(cfg->data.train);
    CHECK(list != NULL, "out of memory");
    char *save = NULL;
    for (char *item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        while (*item == ' ') item++;
        char *end = item + strlen(item);
        while (end > item && end[-1] == ' ') *--end = 0;
        if (!*item) continue;
        struct stat st;
        if (stat(item, &st) != 0)
            loom_input_error(item, "data.train lists shard files or folders of them", "cannot read (%s)", strerror(errno));
        if (S_ISDIR(st.st_mode)) add_folder(l, item);
        else add_shard(l, item);
    }
    free(list);
    if (l->nshards == 0) loom_input_error("data.train", NULL, "names no shard");

    l->starts = malloc_check(sizeof(int64_t) * (l->nshards + 1));
    for (int i = 0; i < l->nshards; i++) {
        struct loom_shard *s = l->shards[i];
        if ((int64_t)loom_shard_vocab(s) > l->vocab)
            loom_input_error(loom_shard_path(s), "raise model.vocab_size or re-tokenize the data",
                             "shard vocabulary %u is larger than model.vocab_size %lld", loom_shard_vocab(s),
                             (long long)l->vocab);
        if (loom_shard_tokenizer_hash(s) != loom_shard_tokenizer_hash(l->shards[0]))
            loom_input_error(loom_shard_path(s), "every shard of a run must come from one tokenizer",
                             "tokenizer differs from that of %s", loom_shard_path(l->shards[0]));
        l->starts[i] = l->total;
        l->total += loom_shard_tokens(s);
    }
    l->starts[l->nshards] = l->total;
    if (l->total < l->seq_len + 1)
        loom_input_error("data.train", "use more text or a shorter train.seq_len",
                         "%lld tokens in all, fewer than one sample of %lld", (long long)l->total,
                         (long long)(l->seq_len + 1));
}

void loom_loader_close(struct loom_loader *l) {
    for (int i = 0; i < l->nshards; i++) loom_shard_close(l->shards[i]);
    free(l->shards);
    free(l->starts);
    free(l->window);
    memset(l, 0, sizeof *l);
}

/* count tokens of the stream from position pos, across shard boundaries */
static void stream_read(struct loom_loader *l, int64_t pos, int64_t count, int32_t *out) {
    int i = 0;
    while (pos >= l->starts[i + 1]) i++;
    while (count > 0) {
        int64_t local = pos - l->starts[i];
        int64_t n = l->starts[i + 1] - pos;
        if (n > count) n = count;
        loom_shard_read(l->shards[i], local, n, out);
        out += n;
        pos += n;
        count -= n;
        i++;
    }
}

void loom_loader_sample(struct loom_loader *l, int64_t g, int *inputs, int *targets) {
    int64_t T = l->seq_len;
    if (l->random) {
        for (int64_t t = 0; t <= T; t++)
            l->window[t] = (int32_t)(loom_rng_u64(l->seed, RNG_STREAM_DATA, (uint64_t)g * (T + 1) + t) % l->vocab);
    } else {
        uint64_t span = (uint64_t)(l->total - T); /* window starts 0 .. total - T - 1 */
        int64_t start = (int64_t)(loom_rng_u64(l->seed, RNG_STREAM_DATA, (uint64_t)g) % span);
        stream_read(l, start, T + 1, l->window);
    }
    for (int64_t t = 0; t < T; t++) {
        inputs[t] = l->window[t];
        targets[t] = l->window[t + 1];
    }
}
