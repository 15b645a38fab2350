/*
 * data/prep.c — `loom data prep`: text and JSONL files -> token shards (see prep.h).
 *
 * Everything that can be wrong with the command line or the inputs is checked before the first shard is
 * created, so a refused run leaves nothing behind: a first pass parses every JSONL record (which also
 * tells whether the shards need a loss mask), the second tokenizes. Plain text is read in chunks that
 * end where the tokenizer's pre-tokenization splits anyway, so chunking never changes the tokens; JSONL
 * is read a line at a time. Tokens stream into the current shard writer, and a new shard starts when the
 * current one holds --shard-tokens tokens (a shard boundary may fall inside a document; the continuation
 * starts document 0 of the next shard).
 */
#define _XOPEN_SOURCE 700

#include "data/prep.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/error.h"
#include "data/shard.h"
#include "data/tokenizer.h"

#define PREP_USAGE                                                                                  \
    "usage: loom data prep --tokenizer bytes|TOKENIZER.json --source NAME --in FILE [FILE ...] "   \
    "--out DIR [--shard-tokens N] [--frame-tokens N]"
#define PREP_HINT "run `loom data prep --help` for the options"
#define PREP_JSONL_HINT                                                                             \
    "each line of a .jsonl input is {\"text\": \"...\"} or "                                         \
    "{\"segments\": [{\"role\": \"system|user|assistant|tool\", \"text\": \"...\"}, ...]}"
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
            "Tokenize text and JSONL files into token shards. Every document ends with <|eos|>.\n"
            "\n"
            "  --tokenizer NAME     `bytes` (the built-in byte tokenizer) or the path of a tokenizer.json\n"
            "  --source NAME        source name; shards are DIR/NAME-00000.tok, NAME-00001.tok, ...\n"
            "  --in FILE [FILE...]  input files: FILE.jsonl holds one record per line, any other file is\n"
            "                       plain text, one document\n"
            "  --out DIR            output directory (created if missing)\n"
            "  --shard-tokens N     tokens per shard (default 100M; suffixes K M B T)\n"
            "  --frame-tokens N     tokens per compressed frame (default 65536)\n"
            "  --help               print this help\n"
            "\n"
            "JSONL records:\n"
            "  {\"text\": \"...\"}                     a document; all its tokens count in the loss\n"
            "  {\"segments\": [{\"role\": R, \"text\": \"...\"}, ...]}\n"
            "                                      a trajectory; R is system, user, assistant or tool, and\n"
            "                                      only the assistant's tokens count in the loss\n"
            "Shards carry a per-token loss mask when some record has segments.\n",
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

static int prep_is_jsonl(const char *path) {
    size_t len = strlen(path);
    return len >= 6 && strcmp(path + len - 6, ".jsonl") == 0;
}

/* Every input is a readable regular file. Returns the total size in bytes; *jsonl_bytes gets the size of
 * the JSONL inputs. */
static uint64_t prep_check_inputs(const struct prep_options *o, uint64_t *jsonl_bytes) {
    uint64_t total = 0;
    *jsonl_bytes = 0;
    for (int i = 0; i < o->n_inputs; i++) {
        const char *path = o->inputs[i];
        struct stat st;
        if (stat(path, &st) != 0) loom_input_error(path, NULL, "cannot read input file: %s", strerror(errno));
        if (!S_ISREG(st.st_mode)) loom_input_error(path, NULL, "input is not a regular file");
        if (access(path, R_OK) != 0) loom_input_error(path, NULL, "cannot read input file: %s", strerror(errno));
        total += (uint64_t)st.st_size;
        if (prep_is_jsonl(path)) *jsonl_bytes += (uint64_t)st.st_size;
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

/* Refuse an output directory that already holds shards of source (a missing directory holds none). */
static void prep_refuse_existing(const char *dir, const char *source) {
    struct stat st;
    if (stat(dir, &st) != 0 && errno == ENOENT) return;
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
    int checking;              /* the first pass over the JSONL inputs: no tokens yet */
    double t0, last;
    uint64_t total_bytes, bytes, tokens;
};

static double prep_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void prep_progress_start(struct prep_progress *pg, int checking, uint64_t total_bytes) {
    pg->checking = checking;
    pg->total_bytes = total_bytes;
    pg->bytes = pg->tokens = 0;
    pg->t0 = pg->last = prep_now();
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
    uint64_t left = pg->total_bytes > pg->bytes ? pg->total_bytes - pg->bytes : 0;
    if (left == 0) snprintf(eta, sizeof eta, "0:00");
    else if (byte_rate <= 0) snprintf(eta, sizeof eta, "?");
    else prep_fmt_duration(eta, sizeof eta, (double)left / byte_rate);
    if (pg->checking) {
        fprintf(stderr, "\rprep %s: checking JSONL, %.1f of %.1f MB, %.1f MB/s, ETA %s   ", pg->source,
                (double)pg->bytes / 1e6, (double)pg->total_bytes / 1e6, byte_rate / 1e6, eta);
    } else {
        prep_fmt_count(tokens, sizeof tokens, (double)pg->tokens);
        prep_fmt_count(tok_rate, sizeof tok_rate, (double)pg->tokens / elapsed);
        fprintf(stderr, "\rprep %s: %.1f MB read, %.1f MB/s, %s tokens, %s tok/s, ETA %s   ", pg->source,
                (double)pg->bytes / 1e6, byte_rate / 1e6, tokens, tok_rate, eta);
    }
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

/* ---------------------------------------------------------------------------------------------- */
/* tokens -> shards                                                                                */

struct prep_run {
    const struct prep_options *o;
    struct loom_tokenizer *tok;
    int32_t eos;
    int masked;                /* the shards carry a loss mask */
    char *shard_path;          /* buffer for DIR/NAME-NNNNN.tok */
    size_t shard_path_size;
    struct loom_shard_writer *w;   /* NULL between shards */
    int shards;
    struct loom_ids ids;       /* the tokens of the current document (or plain-text chunk) */
    uint8_t *mask;             /* [mask_cap] their loss mask, for trajectories */
    size_t mask_cap;
    uint64_t docs, loss_tokens;
    struct prep_progress pg;
};

static void prep_open_shard(struct prep_run *r) {
    const struct prep_options *o = r->o;
    snprintf(r->shard_path, r->shard_path_size, "%s/%s-%05d.tok", o->out_dir, o->source, r->shards);
    uint32_t vocab = loom_tokenizer_vocab_size(r->tok);
    uint64_t hash = loom_tokenizer_hash(r->tok);
    r->w = r->masked ? loom_shard_writer_open_masked(r->shard_path, vocab, hash, (uint32_t)o->frame_tokens)
                     : loom_shard_writer_open(r->shard_path, vocab, hash, (uint32_t)o->frame_tokens);
    r->shards++;
}

/* Append ids[0..n) with their mask (NULL: all count) to the shards, starting new shards as they fill. */
static void prep_emit(struct prep_run *r, const int32_t *ids, const uint8_t *mask, size_t n) {
    CHECK(r->masked || mask == NULL, "a loss mask for shards made without one");
    uint64_t per_shard = (uint64_t)r->o->shard_tokens;
    for (size_t i = 0; i < n; i++) r->loss_tokens += mask ? mask[i] : 1;
    r->pg.tokens += n;
    while (n > 0) {
        if (!r->w) prep_open_shard(r);
        uint64_t room = per_shard - loom_shard_writer_tokens(r->w);
        size_t m = (uint64_t)n < room ? n : (size_t)room;
        if (mask) {
            loom_shard_writer_append_masked(r->w, ids, mask, m);
            mask += m;
        } else {
            loom_shard_writer_append(r->w, ids, m);
        }
        ids += m;
        n -= m;
        if (loom_shard_writer_tokens(r->w) == per_shard) {
            loom_shard_writer_close(r->w);
            r->w = NULL;
        }
    }
}

/* Close the current document with <|eos|>; it counts in the loss when `counts`. */
static void prep_end_document(struct prep_run *r, int counts) {
    const uint8_t bit = counts ? 1 : 0;
    prep_emit(r, &r->eos, r->masked ? &bit : NULL, 1);
    if (r->w) loom_shard_writer_end_document(r->w);
    r->docs++;
}

/* ---------------------------------------------------------------------------------------------- */
/* plain text                                                                                      */

static int prep_ascii_letter(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static int prep_ascii_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* The cuts are places where LOOM_PRETOKENIZE_REGEX (data/pretokenize.c) always splits, and BPE never
 * merges across its pieces. Two such places, both ASCII so that no UTF-8 sequence is cut: before a
 * space that follows a letter ("word| word": a letter piece takes no trailing space, so a piece starts
 * at the space), and after a newline followed by a letter or digit ("\n|word": a letter piece's
 * optional lead is never a newline, and the newline and punctuation runs stop at a letter or digit).
 * The regex has no look-behind, so the pieces after the cut do not depend on the text before it. */
size_t data_prep_text_cut(const unsigned char *text, size_t n) {
    for (size_t p = n; p-- > 1;) {
        if (text[p - 1] == '\n' && (prep_ascii_letter(text[p]) || prep_ascii_digit(text[p]))) return p;
        if (text[p] == ' ' && prep_ascii_letter(text[p - 1])) return p;
    }
    return 0;
}

/* One plain-text file = one document. Chunks of PREP_CHUNK_BYTES, cut where data_prep_text_cut allows;
 * a chunk grows past that only while no such place has been seen. */
static void prep_text_file(struct prep_run *r, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) loom_input_error(path, NULL, "cannot read input file: %s", strerror(errno));
    size_t cap = PREP_CHUNK_BYTES, len = 0;
    unsigned char *buf = malloc_check(cap);
    for (;;) {
        len += fread(buf + len, 1, cap - len, f);
        CHECK(!ferror(f), "reading %s: %s", path, strerror(errno));
        int at_end = feof(f);
        size_t cut = at_end ? len : data_prep_text_cut(buf, len);
        if (cut == 0 && at_end) break;
        if (cut == 0) {
            cap *= 2;
            buf = realloc(buf, cap);
            CHECK(buf != NULL, "out of memory reading %s in chunks of %zu bytes", path, cap);
            continue;
        }
        r->ids.n = 0;
        loom_tokenizer_encode(r->tok, (const char *)buf, cut, &r->ids);
        prep_emit(r, r->ids.ids, NULL, r->ids.n);
        memmove(buf, buf + cut, len - cut);
        len -= cut;
        r->pg.bytes += cut;
        prep_progress_show(&r->pg, 0);
    }
    fclose(f);
    free(buf);
    prep_end_document(r, 1);
}

/* ---------------------------------------------------------------------------------------------- */
/* JSONL records                                                                                   */

enum prep_role { PREP_ROLE_SYSTEM, PREP_ROLE_USER, PREP_ROLE_ASSISTANT, PREP_ROLE_TOOL, PREP_ROLE_COUNT };
static const char *const PREP_ROLE_NAMES[PREP_ROLE_COUNT] = {"system", "user", "assistant", "tool"};

/* A JSONL file being read a line at a time. */
struct prep_jsonl {
    const char *path;
    FILE *f;
    char *line;                /* [cap] getline's buffer; the current line, NUL-terminated */
    size_t cap, len;
    long long lineno;          /* 1-based number of the current line */
    cJSON *root;               /* the record being checked */
};

static void prep_jsonl_close(struct prep_jsonl *j);

/* The input error for the current line; the file and the record are released first (so that a caller that
 * survives the error, the fuzz targets of tests/fuzz/, is left with nothing open). */
_Noreturn __attribute__((format(printf, 3, 4)))
static void prep_jsonl_bad(struct prep_jsonl *j, const char *hint, const char *fmt, ...) {
    char where[4096], msg[768];
    snprintf(where, sizeof where, "%s:%lld", j->path, j->lineno);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    prep_jsonl_close(j);
    loom_input_error(where, hint, "%s", msg);
}

static void prep_jsonl_open(struct prep_jsonl *j, const char *path) {
    memset(j, 0, sizeof *j);
    j->path = path;
    j->f = fopen(path, "rb");
    if (!j->f) loom_input_error(path, NULL, "cannot read input file: %s", strerror(errno));
}

static void prep_jsonl_close(struct prep_jsonl *j) {
    fclose(j->f);
    free(j->line);
    cJSON_Delete(j->root);
    j->f = NULL;
    j->line = NULL;
    j->root = NULL;
}

/* Read the next line that is not blank into j->line; adds every byte read to *bytes. Returns 0 at the
 * end of the file. */
static int prep_jsonl_next(struct prep_jsonl *j, uint64_t *bytes) {
    for (;;) {
        errno = 0;
        ssize_t got = getline(&j->line, &j->cap, j->f);
        if (got < 0) {
            CHECK(!ferror(j->f), "reading %s: %s", j->path, strerror(errno));
            return 0;
        }
        j->len = (size_t)got;
        j->lineno++;
        *bytes += j->len;
        if (strspn(j->line, " \t\r\n") < j->len) return 1;
    }
}

/* Parse the current line as a record and check it. Returns the parsed JSON (then the caller's to delete) with
 * *text set for a text record, or *segments set (to a non-empty array of valid segments) for a
 * trajectory. */
static cJSON *prep_jsonl_record(struct prep_jsonl *j, const cJSON **text, const cJSON **segments) {
    if (strlen(j->line) != j->len) prep_jsonl_bad(j, PREP_JSONL_HINT, "the line holds a NUL byte");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(j->line, &end, 1);
    if (!root) {
        long long col = end && end >= j->line ? (long long)(end - j->line) + 1 : 1;
        prep_jsonl_bad(j, PREP_JSONL_HINT, "not valid JSON (at column %lld)", col);
    }
    j->root = root;
    if (!cJSON_IsObject(root)) prep_jsonl_bad(j, PREP_JSONL_HINT, "a record must be a JSON object");
    *text = cJSON_GetObjectItemCaseSensitive(root, "text");
    *segments = cJSON_GetObjectItemCaseSensitive(root, "segments");
    if (*text && *segments) prep_jsonl_bad(j, PREP_JSONL_HINT, "a record has `text` or `segments`, not both");
    if (!*text && !*segments) prep_jsonl_bad(j, PREP_JSONL_HINT, "the record has neither `text` nor `segments`");
    if (*text) {
        if (!cJSON_IsString(*text)) prep_jsonl_bad(j, PREP_JSONL_HINT, "`text` is not a string");
        j->root = NULL;
        return root;
    }
    if (!cJSON_IsArray(*segments)) prep_jsonl_bad(j, PREP_JSONL_HINT, "`segments` is not an array");
    if (cJSON_GetArraySize(*segments) == 0) prep_jsonl_bad(j, PREP_JSONL_HINT, "`segments` is empty");
    int k = 0;
    const cJSON *seg;
    cJSON_ArrayForEach(seg, *segments) {
        if (!cJSON_IsObject(seg)) prep_jsonl_bad(j, PREP_JSONL_HINT, "segment %d is not a JSON object", k);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(seg, "role");
        const cJSON *seg_text = cJSON_GetObjectItemCaseSensitive(seg, "text");
        if (!cJSON_IsString(role))
            prep_jsonl_bad(j, PREP_JSONL_HINT, "segment %d: `role` is %s", k, role ? "not a string" : "missing");
        int known = 0;
        for (int r = 0; r < PREP_ROLE_COUNT; r++) known |= strcmp(role->valuestring, PREP_ROLE_NAMES[r]) == 0;
        if (!known)
            prep_jsonl_bad(j, "the roles are system, user, assistant and tool", "segment %d: unknown role '%s'", k,
                           role->valuestring);
        if (!cJSON_IsString(seg_text))
            prep_jsonl_bad(j, PREP_JSONL_HINT, "segment %d: `text` is %s", k, seg_text ? "not a string" : "missing");
        k++;
    }
    j->root = NULL;
    return root;
}

/* First pass: check every record of every JSONL input. Returns whether any record is a trajectory. */
static int prep_check_jsonl(const struct prep_options *o, struct prep_progress *pg) {
    int any_segments = 0;
    for (int i = 0; i < o->n_inputs; i++) {
        if (!prep_is_jsonl(o->inputs[i])) continue;
        struct prep_jsonl j;
        prep_jsonl_open(&j, o->inputs[i]);
        while (prep_jsonl_next(&j, &pg->bytes)) {
            const cJSON *text, *segments;
            cJSON *root = prep_jsonl_record(&j, &text, &segments);
            any_segments |= segments != NULL;
            cJSON_Delete(root);
            prep_progress_show(pg, 0);
        }
        prep_jsonl_close(&j);
    }
    return any_segments;
}

/* The tokens of a trajectory into r->ids and r->mask: each segment on its own, in order; the assistant's
 * tokens count; the closing eos counts when the last segment is the assistant's. */
static void prep_trajectory(struct prep_run *r, const cJSON *segments) {
    r->ids.n = 0;
    int last_assistant = 0;
    const cJSON *seg;
    cJSON_ArrayForEach(seg, segments) {
        const char *role = cJSON_GetObjectItemCaseSensitive(seg, "role")->valuestring;
        const char *text = cJSON_GetObjectItemCaseSensitive(seg, "text")->valuestring;
        size_t before = r->ids.n;
        loom_tokenizer_encode(r->tok, text, strlen(text), &r->ids);
        if (r->ids.n > r->mask_cap) {
            r->mask_cap = r->ids.cap;
            r->mask = realloc(r->mask, r->mask_cap);
            CHECK(r->mask != NULL, "out of memory growing a loss mask to %zu tokens", r->mask_cap);
        }
        last_assistant = strcmp(role, PREP_ROLE_NAMES[PREP_ROLE_ASSISTANT]) == 0;
        /* (an empty text adds no token, and before the first token there is no mask buffer yet) */
        if (r->ids.n > before) memset(r->mask + before, last_assistant, r->ids.n - before);
    }
    prep_emit(r, r->ids.ids, r->mask, r->ids.n);
    prep_end_document(r, last_assistant);
}

/* Second pass over one JSONL file: every record is one document. */
static void prep_jsonl_file(struct prep_run *r, const char *path) {
    struct prep_jsonl j;
    prep_jsonl_open(&j, path);
    while (prep_jsonl_next(&j, &r->pg.bytes)) {
        const cJSON *text, *segments;
        cJSON *root = prep_jsonl_record(&j, &text, &segments);
        if (segments) {
            prep_trajectory(r, segments);
        } else {
            r->ids.n = 0;
            loom_tokenizer_encode(r->tok, text->valuestring, strlen(text->valuestring), &r->ids);
            prep_emit(r, r->ids.ids, NULL, r->ids.n);
            prep_end_document(r, 1);
        }
        cJSON_Delete(root);
        prep_progress_show(&r->pg, 0);
    }
    prep_jsonl_close(&j);
}

/* ---------------------------------------------------------------------------------------------- */

int data_prep_main(int argc, char **argv) {
    struct prep_options o = {0};
    if (prep_parse_args(&o, argc, argv)) {
        prep_usage(stdout);
        free(o.inputs);
        return 0;
    }
    prep_check_source_name(o.source);
    uint64_t jsonl_bytes = 0;
    uint64_t total_bytes = prep_check_inputs(&o, &jsonl_bytes);
    struct prep_run r = {.o = &o};
    r.tok = loom_tokenizer_load(o.tokenizer);
    r.eos = loom_tokenizer_eos(r.tok);
    if (r.eos < 0)
        loom_input_error(o.tokenizer, "declare <|eos|> among the tokenizer's special tokens",
                         "the tokenizer has no <|eos|> token to end documents with");

    /* drop trailing slashes so shard paths read DIR/NAME-00000.tok */
    size_t dir_len = strlen(o.out_dir);
    char *out_dir = malloc_check(dir_len + 1);
    memcpy(out_dir, o.out_dir, dir_len + 1);
    while (dir_len > 1 && out_dir[dir_len - 1] == '/') out_dir[--dir_len] = '\0';
    o.out_dir = out_dir;
    prep_refuse_existing(o.out_dir, o.source);

    r.pg.source = o.source;
    if (jsonl_bytes > 0) {
        prep_progress_start(&r.pg, 1, jsonl_bytes);
        r.masked = prep_check_jsonl(&o, &r.pg);
        prep_progress_show(&r.pg, 1);
    }
    prep_mkdir_p(o.out_dir);

    r.shard_path_size = dir_len + strlen(o.source) + 32;
    r.shard_path = malloc_check(r.shard_path_size);
    prep_progress_start(&r.pg, 0, total_bytes);
    for (int i = 0; i < o.n_inputs; i++) {
        if (prep_is_jsonl(o.inputs[i])) prep_jsonl_file(&r, o.inputs[i]);
        else prep_text_file(&r, o.inputs[i]);
    }
    if (r.w) loom_shard_writer_close(r.w);
    prep_progress_show(&r.pg, 1);
    fprintf(stderr, "prep %s: %llu tokens in %llu documents -> %d shards in %s", o.source,
            (unsigned long long)r.pg.tokens, (unsigned long long)r.docs, r.shards, o.out_dir);
    if (r.masked)
        fprintf(stderr, ", with a loss mask (%llu tokens count in the loss)", (unsigned long long)r.loss_tokens);
    fputc('\n', stderr);

    loom_ids_free(&r.ids);
    free(r.mask);
    loom_tokenizer_free(r.tok);
    free(r.shard_path);
    free(out_dir);
    free(o.inputs);
    return 0;
}
