/*
 * data/tokcli.c — `loom data tokenizer-train`, `loom data encode`, `loom data decode` (see tokcli.h).
 *
 * tokenizer-train checks its command line, special tokens, inputs and output path before it reads any
 * text, and writes the tokenizer only when training is done, so a refused run writes nothing.
 */
#include "data/tokcli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "data/bpe.h"
#include "data/tokenizer.h"

#define TRAIN_USAGE                                                                                  \
    "usage: loom data tokenizer-train --in FILE [FILE ...] --vocab-size N --out PATH [--min-frequency N] " \
    "[--special TOKEN ...]"
#define ENCODE_USAGE "usage: loom data encode --tokenizer T < text > ids"
#define DECODE_USAGE "usage: loom data decode --tokenizer T < ids > text"

/* Declared in every tokenizer loom trains, in this order after the learned tokens. */
static const char *const TOKCLI_SPECIALS[] = {
    "<|bos|>", "<|eos|>", "<|pad|>", "<think>", "</think>", "<tool_call>", "</tool_call>", "<observation>",
    "</observation>",
};
#define TOKCLI_N_SPECIALS ((int)(sizeof TOKCLI_SPECIALS / sizeof *TOKCLI_SPECIALS))

/* ---------------------------------------------------------------------------------------------- */
/* command lines                                                                                    */

/* One option of argv: its name ("--out") and, for "--out=PATH", the value after '='. */
struct tokcli_option {
    char name[64];
    const char *eq_value;
};

/* Splits argv[i] into an option; returns 0 when it is not one (a plain argument). */
static int tokcli_option(const char *arg, const char *hint, struct tokcli_option *o) {
    if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') return 0;
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    if (len >= sizeof o->name) loom_input_error(arg, hint, "unknown option");
    memcpy(o->name, arg, len);
    o->name[len] = '\0';
    o->eq_value = eq ? eq + 1 : NULL;
    return 1;
}

/* The value of option o at argv[*i] ("--opt VALUE" or "--opt=VALUE"). */
static const char *tokcli_value(int argc, char **argv, int *i, const struct tokcli_option *o, const char *hint) {
    if (o->eq_value) return o->eq_value;
    if (*i + 1 >= argc || strncmp(argv[*i + 1], "--", 2) == 0) loom_input_error(o->name, hint, "missing value");
    return argv[++*i];
}

static int64_t tokcli_integer(const char *name, const char *text, int64_t lo, int64_t hi) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || text[0] == '+' || text[0] == ' ')
        loom_input_error(name, NULL, "'%s' is not a whole number", text);
    if (v < lo || v > hi)
        loom_input_error(name, NULL, "%lld is out of range %lld..%lld", v, (long long)lo, (long long)hi);
    return v;
}

/* ---------------------------------------------------------------------------------------------- */
/* tokenizer-train                                                                                  */

#define TRAIN_HINT "run `loom data tokenizer-train --help` for the options"

struct train_options {
    const char **inputs;
    int n_inputs;
    const char **specials; /* the defaults, then those given */
    int n_specials;
    int64_t vocab_size;
    int64_t min_frequency;
    const char *out;
    const char *vocab_size_text;
};

static void train_usage(FILE *f) {
    fprintf(f,
            "%s\n"
            "\n"
            "Train byte-level BPE (Youtu-LLM pre-tokenization: CJK characters and digits one token each, GPT-4o-style\n"
            "English) and write it as a Hugging Face tokenizer.json.\n"
            "\n"
            "  --in FILE [FILE...]   training text: plain text files, or JSONL files (*.jsonl) whose lines hold a\n"
            "                        \"text\" string or \"segments\" with \"text\" strings\n"
            "  --vocab-size N        tokens in all: 256 bytes + merges + special tokens\n"
            "  --out PATH            the tokenizer.json to write (must not exist)\n"
            "  --min-frequency N     stop when no pair occurs N times (default 2)\n"
            "  --special TOKEN...    special tokens besides the built-in ones:\n"
            "                        <|bos|> <|eos|> <|pad|> <think> </think> <tool_call> </tool_call>\n"
            "                        <observation> </observation>\n"
            "  --help                print this help\n",
            TRAIN_USAGE);
}

/* Parses argv into o; returns 1 when --help was given. */
static int train_parse_args(struct train_options *o, int argc, char **argv) {
    o->min_frequency = 2;
    o->inputs = calloc_check((size_t)argc, sizeof *o->inputs);
    o->specials = calloc_check((size_t)argc + TOKCLI_N_SPECIALS, sizeof *o->specials);
    for (int k = 0; k < TOKCLI_N_SPECIALS; k++) o->specials[o->n_specials++] = TOKCLI_SPECIALS[k];
    enum { COLLECT_NONE, COLLECT_INPUTS, COLLECT_SPECIALS } collecting = COLLECT_NONE;
    for (int i = 1; i < argc; i++) {
        struct tokcli_option opt;
        if (!tokcli_option(argv[i], TRAIN_HINT, &opt)) {
            if (collecting == COLLECT_INPUTS) o->inputs[o->n_inputs++] = argv[i];
            else if (collecting == COLLECT_SPECIALS) o->specials[o->n_specials++] = argv[i];
            else loom_input_error(argv[i], TRAIN_HINT, "unexpected argument");
            continue;
        }
        collecting = COLLECT_NONE;
        if (strcmp(opt.name, "--help") == 0) {
            return 1;
        } else if (strcmp(opt.name, "--in") == 0) {
            if (opt.eq_value) o->inputs[o->n_inputs++] = opt.eq_value;
            collecting = COLLECT_INPUTS;
        } else if (strcmp(opt.name, "--special") == 0) {
            if (opt.eq_value) o->specials[o->n_specials++] = opt.eq_value;
            collecting = COLLECT_SPECIALS;
        } else if (strcmp(opt.name, "--vocab-size") == 0) {
            o->vocab_size_text = tokcli_value(argc, argv, &i, &opt, TRAIN_HINT);
        } else if (strcmp(opt.name, "--min-frequency") == 0) {
            o->min_frequency = tokcli_integer(opt.name, tokcli_value(argc, argv, &i, &opt, TRAIN_HINT), 1, INT64_MAX);
        } else if (strcmp(opt.name, "--out") == 0) {
            o->out = tokcli_value(argc, argv, &i, &opt, TRAIN_HINT);
        } else {
            loom_input_error(opt.name, TRAIN_HINT, "unknown option");
        }
    }
    if (o->n_inputs == 0) loom_input_error("--in", TRAIN_USAGE, "required option missing (at least one file)");
    if (!o->vocab_size_text) loom_input_error("--vocab-size", TRAIN_USAGE, "required option missing");
    if (!o->out) loom_input_error("--out", TRAIN_USAGE, "required option missing");
    /* a built-in special given again is the same token */
    int n = TOKCLI_N_SPECIALS;
    for (int k = TOKCLI_N_SPECIALS; k < o->n_specials; k++) {
        int builtin = 0;
        for (int d = 0; d < TOKCLI_N_SPECIALS; d++) builtin |= strcmp(o->specials[k], TOKCLI_SPECIALS[d]) == 0;
        if (!builtin) o->specials[n++] = o->specials[k];
    }
    o->n_specials = n;
    o->vocab_size = tokcli_integer("--vocab-size", o->vocab_size_text, 256 + o->n_specials, INT32_MAX);
    return 0;
}

static void train_check_paths(const struct train_options *o) {
    for (int i = 0; i < o->n_inputs; i++) {
        struct stat st;
        if (stat(o->inputs[i], &st) != 0 || access(o->inputs[i], R_OK) != 0)
            loom_input_error(o->inputs[i], NULL, "cannot read input file: %s", strerror(errno));
        if (!S_ISREG(st.st_mode)) loom_input_error(o->inputs[i], NULL, "input is not a regular file");
    }
    struct stat st;
    if (stat(o->out, &st) == 0)
        loom_input_error(o->out, "remove it or choose another --out", "tokenizer file exists; refusing to overwrite");
    size_t len = strlen(o->out);
    char *dir = malloc_check(len + 2);
    memcpy(dir, o->out, len + 1);
    char *slash = strrchr(dir, '/');
    if (!slash) strcpy(dir, ".");
    else if (slash == dir) dir[1] = '\0';
    else *slash = '\0';
    if (access(dir, W_OK) != 0)
        loom_input_error(o->out, NULL, "cannot write into directory %s: %s", dir, strerror(errno));
    free(dir);
}

static int train_is_jsonl(const char *path) {
    size_t n = strlen(path);
    return n >= 6 && strcmp(path + n - 6, ".jsonl") == 0;
}

/* The text of one JSONL record: "text", or the "text" of every "segments" entry joined. */
static void train_add_record(struct loom_bpe_trainer *tr, const char *line, size_t len, const char *path,
                             size_t line_no) {
    char where[4096];
    snprintf(where, sizeof where, "%s:%zu", path, line_no);
    const char *end = NULL;
    cJSON *rec = cJSON_ParseWithLengthOpts(line, len, &end, 0);
    while (rec && end < line + len && (*end == ' ' || *end == '\t' || *end == '\r')) end++;
    if (!cJSON_IsObject(rec) || end != line + len) loom_input_error(where, NULL, "not a JSON object");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(rec, "text");
    const cJSON *segments = cJSON_GetObjectItemCaseSensitive(rec, "segments");
    if (cJSON_IsString(text)) {
        loom_bpe_trainer_add(tr, text->valuestring, strlen(text->valuestring));
    } else if (cJSON_IsArray(segments)) {
        size_t total = 0;
        for (const cJSON *s = segments->child; s; s = s->next) {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(s, "text");
            if (!cJSON_IsString(t)) loom_input_error(where, NULL, "a segment without a \"text\" string");
            total += strlen(t->valuestring);
        }
        char *joined = malloc_check(total + 1), *o = joined;
        for (const cJSON *s = segments->child; s; s = s->next) {
            const char *t = cJSON_GetObjectItemCaseSensitive(s, "text")->valuestring;
            size_t n = strlen(t);
            memcpy(o, t, n);
            o += n;
        }
        loom_bpe_trainer_add(tr, joined, total);
        free(joined);
    } else {
        loom_input_error(where, "each JSONL line needs \"text\" or \"segments\": [{\"text\": ...}]",
                         "no \"text\" string and no \"segments\" array");
    }
    cJSON_Delete(rec);
}

static void train_read_file(struct loom_bpe_trainer *tr, const char *path) {
    struct stat st;
    CHECK(stat(path, &st) == 0, "stat %s: %s", path, strerror(errno));
    fprintf(stderr, "tokenizer-train: reading %s (%.1f MB)\n", path, (double)st.st_size / 1e6);
    if (st.st_size == 0) return;
    FILE *f = fopen(path, "rb");
    if (!f) loom_input_error(path, NULL, "cannot read input file: %s", strerror(errno));
    size_t size = (size_t)st.st_size;
    char *text = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fileno(f), 0);
    CHECK(text != MAP_FAILED, "mmap %s: %s", path, strerror(errno));
    if (!train_is_jsonl(path)) {
        loom_bpe_trainer_add(tr, text, size);
    } else {
        size_t line_no = 0;
        for (size_t pos = 0; pos < size;) {
            const char *nl = memchr(text + pos, '\n', size - pos);
            size_t end = nl ? (size_t)(nl - text) : size;
            line_no++;
            size_t k = pos;
            while (k < end && (text[k] == ' ' || text[k] == '\t' || text[k] == '\r')) k++;
            if (k < end) train_add_record(tr, text + pos, end - pos, path, line_no);
            pos = end + 1;
        }
    }
    munmap(text, size);
    fclose(f);
}

int data_tokenizer_train_main(int argc, char **argv) {
    struct train_options o = {0};
    if (train_parse_args(&o, argc, argv)) {
        train_usage(stdout);
        free(o.inputs);
        free(o.specials);
        return 0;
    }
    train_check_paths(&o);
    struct loom_bpe_trainer *tr = loom_bpe_trainer_init(o.specials, o.n_specials);
    for (int i = 0; i < o.n_inputs; i++) train_read_file(tr, o.inputs[i]);
    struct loom_bpe *b = loom_bpe_trainer_finish(tr, (uint32_t)o.vocab_size, (uint64_t)o.min_frequency, stderr);
    loom_bpe_trainer_free(tr);
    loom_bpe_save_json(b, o.out);
    fprintf(stderr, "tokenizer-train: wrote %s: %u tokens (256 bytes, %u merges, %d special)\n", o.out, b->n_tokens,
            b->n_merges, o.n_specials);
    loom_bpe_free(b);
    free(o.inputs);
    free(o.specials);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* encode and decode                                                                                */

/* Parses "--tokenizer T [--help]" into *tokenizer; returns 1 when --help was given. */
static int codec_parse_args(int argc, char **argv, const char *usage, const char **tokenizer) {
    char hint[128];
    snprintf(hint, sizeof hint, "run `loom data %s --help` for the options", argv[0]);
    for (int i = 1; i < argc; i++) {
        struct tokcli_option opt;
        if (!tokcli_option(argv[i], hint, &opt)) loom_input_error(argv[i], hint, "unexpected argument");
        if (strcmp(opt.name, "--help") == 0) return 1;
        if (strcmp(opt.name, "--tokenizer") != 0) loom_input_error(opt.name, hint, "unknown option");
        *tokenizer = tokcli_value(argc, argv, &i, &opt, hint);
    }
    if (!*tokenizer) loom_input_error("--tokenizer", usage, "required option missing");
    return 0;
}

static void codec_usage(const char *usage, const char *what) {
    printf("%s\n\n%s\n\n"
           "  --tokenizer T   a tokenizer.json (from `loom data tokenizer-train`) or `bytes`\n"
           "  --help          print this help\n",
           usage, what);
}

/* Writes v in decimal at p; returns the end. */
static char *codec_put_int(char *p, int32_t v) {
    char digits[12];
    int n = 0;
    uint32_t u = (uint32_t)v;
    if (v < 0) {
        *p++ = '-';
        u = 0u - u;
    }
    do digits[n++] = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    while (n > 0) *p++ = digits[--n];
    return p;
}

int data_encode_main(int argc, char **argv) {
    const char *name = NULL;
    if (codec_parse_args(argc, argv, ENCODE_USAGE, &name)) {
        codec_usage(ENCODE_USAGE, "Print the token ids of each line of standard input as one line of space-separated\n"
                                  "integers. The newline ending a line is not encoded; special tokens are never\n"
                                  "produced.");
        return 0;
    }
    struct loom_tokenizer *t = loom_tokenizer_load(name);
    static char outbuf[1 << 20];
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    struct loom_ids ids = {0};
    char *line = NULL, *text = NULL;
    size_t line_cap = 0, text_cap = 0;
    ssize_t got;
    while ((got = getline(&line, &line_cap, stdin)) > 0) {
        size_t len = (size_t)got;
        if (line[len - 1] == '\n') len--;
        ids.n = 0;
        loom_tokenizer_encode(t, line, len, &ids);
        if (12 * ids.n + 1 > text_cap) {
            text_cap = 2 * (12 * ids.n + 1);
            text = realloc(text, text_cap);
            CHECK(text != NULL, "out of memory");
        }
        char *p = text;
        for (size_t i = 0; i < ids.n; i++) {
            if (i) *p++ = ' ';
            p = codec_put_int(p, ids.ids[i]);
        }
        *p++ = '\n';
        CHECK(fwrite(text, 1, (size_t)(p - text), stdout) == (size_t)(p - text), "writing ids: %s", strerror(errno));
    }
    CHECK(!ferror(stdin), "reading standard input: %s", strerror(errno));
    CHECK(fflush(stdout) == 0, "writing ids: %s", strerror(errno));
    free(line);
    free(text);
    loom_ids_free(&ids);
    loom_tokenizer_free(t);
    return 0;
}

int data_decode_main(int argc, char **argv) {
    const char *name = NULL;
    if (codec_parse_args(argc, argv, DECODE_USAGE, &name)) {
        codec_usage(DECODE_USAGE, "Print the text of each line of space-separated token ids on standard input, one\n"
                                  "line each (special tokens as their text).");
        return 0;
    }
    struct loom_tokenizer *t = loom_tokenizer_load(name);
    uint32_t vocab = loom_tokenizer_vocab_size(t);
    static char outbuf[1 << 20];
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    struct loom_ids ids = {0};
    char *line = NULL;
    size_t line_cap = 0, line_no = 0;
    ssize_t got;
    while ((got = getline(&line, &line_cap, stdin)) > 0) {
        line_no++;
        if (line[got - 1] == '\n') line[got - 1] = '\0';
        ids.n = 0;
        char where[64];
        snprintf(where, sizeof where, "stdin line %zu", line_no);
        for (char *p = line; *p;) {
            if (*p == ' ' || *p == '\t' || *p == '\r') {
                p++;
                continue;
            }
            char *end = p;
            while (*end >= '0' && *end <= '9') end++;
            if (end == p || (*end != '\0' && *end != ' ' && *end != '\t' && *end != '\r')) {
                char *stop = p;
                while (*stop && *stop != ' ' && *stop != '\t') stop++;
                *stop = '\0';
                loom_input_error(where, "each line holds token ids separated by spaces", "'%.40s' is not a token id",
                                 p);
            }
            long long id = end - p > 10 ? LLONG_MAX : strtoll(p, NULL, 10);
            if (id >= vocab)
                loom_input_error(where, NULL, "token id %.*s is out of range 0..%u", (int)(end - p), p, vocab - 1);
            loom_ids_push(&ids, (int32_t)id);
            p = end;
        }
        size_t len = 0;
        char *text = loom_tokenizer_decode(t, ids.ids, ids.n, &len);
        CHECK(fwrite(text, 1, len, stdout) == len && putchar('\n') != EOF, "writing text: %s", strerror(errno));
        free(text);
    }
    CHECK(!ferror(stdin), "reading standard input: %s", strerror(errno));
    CHECK(fflush(stdout) == 0, "writing text: %s", strerror(errno));
    free(line);
    loom_ids_free(&ids);
    loom_tokenizer_free(t);
    return 0;
}
