/*
 * data/prep.c — `loom data prep`: text files -> token shards (see prep.h).
 *
 * Everything that can be wrong with the command line or the inputs is checked before the first shard is
 * created, so a refused run leaves nothing behind. Input files are read in chunks; tokens stream into the
 * current shard writer, and a new shard starts when the current one holds --shard-tokens tokens (a shard
 * boundary may fall inside a document; the continuation starts document 0 of the next shard).
 */
#define _XOPEN_SOURCE 700

#include "data/prep.h"

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"
#include "data/bytetok.h"
#include "data/shard.h"

#define PREP_USAGE                                                                                  \
    "usage: loom data prep --tokenizer bytes --source NAME --in FILE [FILE ...] --out DIR "        \
    "[--shard-tokens N] [--frame-tokens N]"
#define PREP_HINT "run `loom data prep --help` for the options"
#define PREP_CHUNK_BYTES (1u << 20)
#define PREP_PROGRESS_SECONDS 0.25

/* ---------------------------------------------------------------------------------------------- */
/* options                                                                                         */

struct prep_options {
    const char *tokenizer;
    const char *source;
    const char *out_dir;
    const char **inputs;       /* [n_inputs] */
    int n_inputs;
    int64_t shard_tokens;
    int64_t frame_tokens;
};

static void prep_usage(FILE *f) {
    fprintf(f,
            "%s\n"
            "\n"
            "Tokenize text files into token shards. Each input file is one document, followed by <|eos|>.\n"
            "\n"
            "  --tokenizer NAME     tokenizer; this build has the built-in byte tokenizer `bytes`\n"
            "  --source NAME        source name; shards are DIR/NAME-00000.tok, NAME-00001.tok, ...\n"
            "  --in FILE [FILE...]  input text files, one document each\n"
            "  --out DIR            output directory (created if missing)\n"
            "  --shard-tokens N     tokens per shard (default 100M; suffixes K M B T)\n"
            "  --frame-tokens N     tokens per compressed frame (default 65536)\n"
            "  --help               print this help\n",
            PREP_USAGE);
}

/* Integer with an optional decimal suffix K M B T ("100M", "1.5K"); the result must be a whole number.
 * Returns 0 on success. */
static int prep_parse_count(const char *text, int64_t *out) {
    const char *p = text;
    uint64_t whole = 0, frac = 0;
    int whole_digits = 0, frac_digits = 0;
    for (; *p >= '0' && *p <= '9'; p++, whole_digits++) {
        if (whole > (uint64_t)INT64_MAX / 10) return -1;
        whole = whole * 10 + (uint64_t)(*p - '0');
    }
    if (*p == '.') {
        for (p++; *p >= '0' && *p <= '9'; p++, frac_digits++) {
            if (frac_digits == 12) return -1;
            frac = frac * 10 + (uint64_t)(*p - '0');
        }
    }
    if (whole_digits + frac_digits == 0) return -1;
    int exp10 = 0;
    switch (*p) {
    case 'K': case 'k': exp10 = 3; p++; break;
    case 'M': case 'm': exp10 = 6; p++; break;
    case 'B': case 'b': exp10 = 9; p++; break;
    case 'T': case 't': exp10 = 12; p++; break;
    default: break;
    }
    if (*p != '\0') return -1;
    while (frac_digits > 0 && frac % 10 == 0) {
        frac /= 10;
        frac_digits--;
    }
    if (frac_digits > exp10) return -1;
    uint64_t mult = 1, frac_mult = 1;
    for (int i = 0; i < exp10; i++) mult *= 10;
    for (int i = 0; i < exp10 - frac_digits; i++) frac_mult *= 10;
    uint64_t frac_value = frac * frac_mult;
    if (whole > ((uint64_t)INT64_MAX - frac_value) / mult) return -1;
    *out = (int64_t)(whole * mult + frac_value);
    return 0;
}

/* The value of option argv[*i] ("--opt VALUE" or "--opt=VALUE"). */
static const char *prep_value(int argc, char **argv, int *i, const char *name, const char *eq) {
    if (eq) return eq + 1;
    if (*i + 1 >= argc || strncmp(argv[*i + 1], "--", 2) == 0)
        loom_input_error(name, PREP_HINT, "missing value");
    return argv[++*i];
}

static int64_t prep_count_option(const char *name, const char *text, int64_t lo, int64_t hi) {
    int64_t v = 0;
    if (prep_parse_count(text, &v) != 0)
        loom_input_error(name, "give a whole number, optionally with a suffix K M B T (e.g. 100M)",
                         "cannot parse '%s' as a count", text);
    if (v < lo || v > hi)
        loom_input_error(name, NULL, "%lld is out of range %lld..%lld", (long long)v, (long long)lo, (long long)hi);
    return v;
}

/* Parse argv into o. Returns 1 when --help was given. */
static int prep_parse_args(struct prep_options *o, int argc, char **argv) {
    o->shard_tokens = 100000000;
    o->frame_tokens = 65536;
    o->inputs = calloc_check((size_t)argc, sizeof *o->inputs);
    int collecting_inputs = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            if (!collecting_inputs || arg[0] == '-')
                loom_input_error(arg, PREP_HINT, "unexpected argument");
            o->inputs[o->n_inputs++] = arg;
            continue;
        }
        collecting_inputs = 0;
        const char *eq = strchr(arg, '=');
        size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
        char name[64];
        if (name_len >= sizeof name) loom_input_error(arg, PREP_HINT, "unknown option");
        memcpy(name, arg, name_len);
        name[name_len] = '\0';
        if (strcmp(name, "--help") == 0) {
            return 1;
        } else if (strcmp(name, "--tokenizer") == 0) {
            o->tokenizer = prep_value(argc, argv, &i, name, eq);
        } else if (strcmp(name, "--source") == 0) {
            o->source = prep_value(argc, argv, &i, name, eq);
        } else if (strcmp(name, "--out") == 0) {
            o->out_dir = prep_value(argc, argv, &i, name, eq);
        } else if (strcmp(name, "--in") == 0) {
            if (eq) o->inputs[o->n_inputs++] = eq + 1;
            collecting_inputs = 1;
        } else if (strcmp(name, "--shard-tokens") == 0) {
            o->shard_tokens = prep_count_option(name, prep_value(argc, argv, &i, name, eq), 1, INT64_MAX);
        } else if (strcmp(name, "--frame-tokens") == 0) {
            o->frame_tokens = prep_count_option(name, prep_value(argc, argv, &i, name, eq), 1,
                                                LOOM_SHARD_MAX_FRAME_TOKENS);
        } else {
            loom_input_error(name, PREP_HINT, "unknown option");
        }
    }
    if (!o->tokenizer) loom_input_error("--tokenizer", PREP_USAGE, "required option missing");
    if (!o->source) loom_input_error("--source", PREP_USAGE, "required option missing");
    if (o->n_inputs == 0) loom_input_error("--in", PREP_USAGE, "required option missing (at least one file)");
    if (!o->out_dir) loom_input_error("--out", PREP_USAGE, "required option missing");
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* checks on the inputs and the output directory                                                   */

static void prep_check_source_name(const char *name) {
    int ok = name[0] != '\0' && name[0] != '.' && name[0] != '-';
    for (const char *p = name; ok && *p; p++) {
        char c = *p;
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
             c == '.';
    }
    if (!ok)
        loom_input_error("--source", "use letters, digits, '_', '-' and '.' (not first)", "bad source name '%s'",
                         name);
}

/* Every input is a readable regular file; returns the total size in bytes. */
static uint64_t prep_check_inputs(const struct prep_options *o) {
    uint64_t total = 0;
    for (int i = 0; i < o->n_inputs; i++) {
        const char *path = o->inputs[i];
        struct stat st;
        if (stat(path, &st) != 0) loom_input_error(path, NULL, "cannot read input file: %s", strerror(errno));
        if (!S_ISREG(st.st_mode)) loom_input_error(path, NULL, "input is not a regular file");
        if (access(path, R_OK) != 0) loom_input_error(path, NULL, "cannot read input file: %s", strerror(errno));
        total += (uint64_t)st.st_size;
    }
    return total;
}

static void prep_mkdir_p(const char *dir) {
    size_t len = strlen(dir);
    char *path = malloc_check(len + 1);
    memcpy(path, dir, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (path[i] != '/' && path[i] != '\0') continue;
        char saved = path[i];
        path[i] = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            loom_input_error(dir, NULL, "cannot create output directory %s: %s", path, strerror(errno));
        path[i] = saved;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) loom_input_error(dir, NULL, "output path is not a directory");
    free(path);
}

/* Is `entry` a shard name of source: SOURCE-<digits>.tok ? */
static int prep_is_shard_of(const char *entry, const char *source) {
    size_t sl = strlen(source), el = strlen(entry);
    if (el < sl + 1 + 1 + 4 || strncmp(entry, source, sl) != 0 || entry[sl] != '-') return 0;
    if (strcmp(entry + el - 4, ".tok") != 0) return 0;
    for (size_t i = sl + 1; i < el - 4; i++)
        if (entry[i] < '0' || entry[i] > '9') return 0;
    return 1;
}

static void prep_refuse_existing(const char *dir, const char *source) {
    DIR *d = opendir(dir);
    if (!d) loom_input_error(dir, NULL, "cannot list output directory: %s", strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!prep_is_shard_of(e->d_name, source)) continue;
        char where[4096];
        snprintf(where, sizeof where, "%s/%s", dir, e->d_name);
        loom_input_error(where, "remove them or choose another --out",
                         "shards of source '%s' already exist in %s; refusing to overwrite", source, dir);
    }
    closedir(d);
}

/* ---------------------------------------------------------------------------------------------- */
/* progress line                                                                                   */

struct prep_progress {
    const char *source;
    double t0, last;
    uint64_t total_bytes, bytes, tokens;
};

static double prep_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void prep_fmt_count(char *buf, size_t size, double v) {
    if (v < 1e3) snprintf(buf, size, "%.0f", v);
    else if (v < 1e6) snprintf(buf, size, "%.1fK", v / 1e3);
    else if (v < 1e9) snprintf(buf, size, "%.1fM", v / 1e6);
    else if (v < 1e12) snprintf(buf, size, "%.1fB", v / 1e9);
    else snprintf(buf, size, "%.1fT", v / 1e12);
}

static void prep_fmt_duration(char *buf, size_t size, double seconds) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else snprintf(buf, size, "%ld:%02ld", s / 60, s % 60);
}

/* Redraw the line when a quarter second has passed since the last draw, or always when final. */
static void prep_progress_show(struct prep_progress *pg, int final) {
    double now = prep_now();
    if (!final && now - pg->last < PREP_PROGRESS_SECONDS) return;
    pg->last = now;
    double elapsed = now - pg->t0 > 1e-3 ? now - pg->t0 : 1e-3;
    double byte_rate = (double)pg->bytes / elapsed;
    char tokens[32], tok_rate[32], eta[32];
    prep_fmt_count(tokens, sizeof tokens, (double)pg->tokens);
    prep_fmt_count(tok_rate, sizeof tok_rate, (double)pg->tokens / elapsed);
    uint64_t left = pg->total_bytes > pg->bytes ? pg->total_bytes - pg->bytes : 0;
    if (left == 0) snprintf(eta, sizeof eta, "0:00");
    else if (byte_rate <= 0) snprintf(eta, sizeof eta, "?");
    else prep_fmt_duration(eta, sizeof eta, (double)left / byte_rate);
    fprintf(stderr, "\rprep %s: %.1f MB read, %.1f MB/s, %s tokens, %s tok/s, ETA %s   ", pg->source,
            (double)pg->bytes / 1e6, byte_rate / 1e6, tokens, tok_rate, eta);
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

/* ---------------------------------------------------------------------------------------------- */
/* tokens -> shards                                                                                */

struct prep_writer {
    const struct prep_options *o;
    char *shard_path;          /* buffer for DIR/NAME-NNNNN.tok */
    size_t shard_path_size;
    struct loom_shard_writer *w;   /* NULL between shards */
    int shards;
};

static void prep_open_shard(struct prep_writer *pw) {
    snprintf(pw->shard_path, pw->shard_path_size, "%s/%s-%05d.tok", pw->o->out_dir, pw->o->source, pw->shards);
    pw->w = loom_shard_writer_open(pw->shard_path, LOOM_BYTES_VOCAB, loom_bytetok_hash(),
                                   (uint32_t)pw->o->frame_tokens);
    pw->shards++;
}

static void prep_emit(struct prep_writer *pw, const int32_t *ids, size_t n) {
    uint64_t per_shard = (uint64_t)pw->o->shard_tokens;
    while (n > 0) {
        if (!pw->w) prep_open_shard(pw);
        uint64_t room = per_shard - loom_shard_writer_tokens(pw->w);
        size_t m = (uint64_t)n < room ? n : (size_t)room;
        loom_shard_writer_append(pw->w, ids, m);
        ids += m;
        n -= m;
        if (loom_shard_writer_tokens(pw->w) == per_shard) {
            loom_shard_writer_close(pw->w);
            pw->w = NULL;
        }
    }
}

static void prep_end_document(struct prep_writer *pw) {
    if (pw->w) loom_shard_writer_end_document(pw->w);
}

/* ---------------------------------------------------------------------------------------------- */

int data_prep_main(int argc, char **argv) {
    struct prep_options o = {0};
    if (prep_parse_args(&o, argc, argv)) {
        prep_usage(stdout);
        free(o.inputs);
        return 0;
    }
    if (strcmp(o.tokenizer, "bytes") != 0)
        loom_input_error("--tokenizer", "only the built-in byte tokenizer (`bytes`) is available in this build",
                         "unknown tokenizer '%s'", o.tokenizer);
    prep_check_source_name(o.source);
    uint64_t total_bytes = prep_check_inputs(&o);

    /* drop trailing slashes so shard paths read DIR/NAME-00000.tok */
    size_t dir_len = strlen(o.out_dir);
    char *out_dir = malloc_check(dir_len + 1);
    memcpy(out_dir, o.out_dir, dir_len + 1);
    while (dir_len > 1 && out_dir[dir_len - 1] == '/') out_dir[--dir_len] = '\0';
    o.out_dir = out_dir;
    prep_mkdir_p(o.out_dir);
    prep_refuse_existing(o.out_dir, o.source);

    struct prep_writer pw = {.o = &o};
    pw.shard_path_size = dir_len + strlen(o.source) + 32;
    pw.shard_path = malloc_check(pw.shard_path_size);
    struct prep_progress pg = {.source = o.source, .total_bytes = total_bytes};
    pg.t0 = pg.last = prep_now();

    unsigned char *text = malloc_check(PREP_CHUNK_BYTES);
    int32_t *ids = malloc_check(PREP_CHUNK_BYTES * sizeof *ids);
    const int32_t eos = LOOM_BYTES_EOS;
    for (int i = 0; i < o.n_inputs; i++) {
        FILE *f = fopen(o.inputs[i], "rb");
        if (!f) loom_input_error(o.inputs[i], NULL, "cannot read input file: %s", strerror(errno));
        size_t got;
        while ((got = fread(text, 1, PREP_CHUNK_BYTES, f)) > 0) {
            size_t n = loom_bytetok_encode(text, got, ids);
            prep_emit(&pw, ids, n);
            pg.bytes += got;
            pg.tokens += n;
            prep_progress_show(&pg, 0);
        }
        CHECK(!ferror(f), "reading %s: %s", o.inputs[i], strerror(errno));
        fclose(f);
        prep_emit(&pw, &eos, 1);
        pg.tokens++;
        prep_end_document(&pw);
    }
    if (pw.w) loom_shard_writer_close(pw.w);
    prep_progress_show(&pg, 1);
    fprintf(stderr, "prep %s: %llu tokens in %d documents -> %d shards in %s\n", o.source,
            (unsigned long long)pg.tokens, o.n_inputs, pw.shards, o.out_dir);

    free(ids);
    free(text);
    free(pw.shard_path);
    free(out_dir);
    free(o.inputs);
    return 0;
}
