/*
 * core/config.c — parsing, setting and printing the run configuration (see config.h).
 *
 * Every operation walks the key table of core/config_keys.c: a key's type says how its text is
 * parsed and printed, its offset says where the value lives in struct loom_config.
 *
 * Files are read by libinih through a line reader of our own (ini_parse_stream), which gives each
 * handler call its line number and checks each line before libinih sees it:
 *   - leading whitespace is removed, so indented keys are plain keys (never libinih continuations);
 *   - `;` or `#` after whitespace starts a comment, as does either at the start of a line;
 *   - section headers must be closed and name a known section (even a section with no keys);
 *   - other lines must be `key = value` (or `key: value`);
 *   - a line longer than libinih's line buffer is an error, not a silent split;
 *   - a NUL byte is an error (binary data, or a device like /dev/zero that would never end).
 * All errors are reported in line order and exit 2 through loom_input_error(). A string value is
 * refused when loom_config_write could not print it so that it reads back unchanged.
 */
#define _XOPEN_SOURCE 700

#include "core/config.h"
#include "core/error.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <ini.h>

#define INCLUDE_DEPTH_MAX 16
#define WHERE_MAX 4096
#define HINT_MAX 2048

/* ---------------------------------------------------------------------------------------------- */
/* small helpers                                                                                    */

static char *str_dup_n(const char *s, size_t n) {
    char *d = malloc_check(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static char *str_dup(const char *s) { return str_dup_n(s, strlen(s)); }

/* Append formatted text to buf (capacity cap), truncating quietly when full. */
static void str_append(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void str_append(char *buf, size_t cap, const char *fmt, ...) {
    size_t len = strlen(buf);
    if (len + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + len, cap - len, fmt, ap);
    va_end(ap);
}

/* base: the config for a plain key, the section's element for a named one */
static void *key_field(const struct loom_key *k, const void *base) { return (char *)base + k->offset; }

/* Optimal string alignment distance (Levenshtein plus adjacent transpositions), so that the typo
 * "modle" is one edit from "model". Strings longer than 127 characters count as far from all. */
static int edit_distance(const char *a, const char *b) {
    enum { N = 128 };
    size_t na = strlen(a), nb = strlen(b);
    if (na >= N || nb >= N) return INT_MAX / 2;
    int rows[3][N];
    int *prev2 = rows[0], *prev = rows[1], *cur = rows[2];
    for (size_t j = 0; j <= nb; j++) prev[j] = (int)j;
    for (size_t i = 1; i <= na; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= nb; j++) {
            int cost = a[i - 1] != b[j - 1];
            int d = prev[j - 1] + cost;
            if (prev[j] + 1 < d) d = prev[j] + 1;
            if (cur[j - 1] + 1 < d) d = cur[j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && prev2[j - 2] + 1 < d)
                d = prev2[j - 2] + 1;
            cur[j] = d;
        }
        int *t = prev2;
        prev2 = prev;
        prev = cur;
        cur = t;
    }
    return prev[nb];
}

/* How far a suggestion may be from what was typed and still be offered. */
static int close_enough(int distance, const char *typed) {
    int limit = (int)strlen(typed) / 3;
    return distance <= (limit > 2 ? limit : 2);
}

/* ---------------------------------------------------------------------------------------------- */
/* the key table                                                                                    */

/* The named-section kind of "source.web" (and of the bare prefix "source"), or NULL; *inst is set to
 * the instance name ("web", or "" for the bare prefix). */
static const struct loom_named_section *named_split(const char *section, const char **inst) {
    const char *dot = strchr(section, '.');
    size_t n = dot ? (size_t)(dot - section) : strlen(section);
    for (size_t i = 0; i < loom_config_nnamed; i++) {
        const struct loom_named_section *ns = &loom_config_named[i];
        if (strlen(ns->prefix) == n && strncmp(ns->prefix, section, n) == 0) {
            *inst = dot ? dot + 1 : "";
            return ns;
        }
    }
    return NULL;
}

static int instance_name_ok(const char *inst) {
    if (!inst[0] || strlen(inst) >= LOOM_SECTION_NAME_MAX) return 0;
    for (const char *c = inst; *c; c++)
        if (!isalnum((unsigned char)*c) && *c != '_' && *c != '-') return 0;
    return 1;
}

static const struct loom_key *key_find(const char *section, const char *name) {
    const char *inst;
    const struct loom_named_section *ns = named_split(section, &inst);
    const char *want = ns ? ns->prefix : section;
    for (size_t i = 0; i < loom_config_nkeys; i++) {
        const struct loom_key *k = &loom_config_keys[i];
        if (k->named == (ns != NULL) && strcmp(k->section, want) == 0 && strcmp(k->name, name) == 0) return k;
    }
    return NULL;
}

static int section_known(const char *section) {
    const char *inst;
    if (named_split(section, &inst)) return instance_name_ok(inst);
    for (size_t i = 0; i < loom_config_nkeys; i++)
        if (!loom_config_keys[i].named && strcmp(loom_config_keys[i].section, section) == 0) return 1;
    return 0;
}

/* Instance `inst` of a named section: found, or (when create) made with every key's default. */
static void *instance_get(struct loom_config *cfg, const struct loom_named_section *ns, const char *inst,
                          const char *where);

/* The known section nearest to `section`, or NULL when none is close. */
static const char *section_nearest(const char *section) {
    static char suggestion[256];
    const char *dot = strchr(section, '.');
    const char *best = NULL;
    int best_d = INT_MAX;
    for (size_t i = 0; i < loom_config_nkeys; i++) {
        const struct loom_key *k = &loom_config_keys[i];
        int d;
        if (k->named && dot) {
            char head[128];
            snprintf(head, sizeof head, "%.*s", (int)(dot - section), section);
            d = edit_distance(head, k->section);
        } else {
            d = edit_distance(section, k->section) + (k->named ? 1 : 0);
        }
        if (d < best_d) {
            best_d = d;
            best = k->section;
        }
    }
    if (!best || !close_enough(best_d, section)) return NULL;
    const char *inst;
    if (named_split(best, &inst)) {
        snprintf(suggestion, sizeof suggestion, "%s.%s", best, dot ? dot + 1 : "NAME");
        return suggestion;
    }
    return best;
}

/* The key nearest to section.name: by the whole dotted name, or by the bare name at one extra edit
 * for a key of another section (so `[train] lr` finds schedule.lr). NULL when none is close. */
static const struct loom_key *key_nearest(const char *section, const char *name) {
    char typed[256], full[256];
    snprintf(typed, sizeof typed, "%s.%s", section, name);
    const struct loom_key *best = NULL;
    int best_d = INT_MAX;
    for (size_t i = 0; i < loom_config_nkeys; i++) {
        const struct loom_key *k = &loom_config_keys[i];
        snprintf(full, sizeof full, "%s.%s", k->section, k->name);
        int d = edit_distance(typed, full);
        const char *inst;
        const struct loom_named_section *ns = named_split(section, &inst);
        int same = ns ? k->named && strcmp(ns->prefix, k->section) == 0 : strcmp(section, k->section) == 0;
        int d_name = edit_distance(name, k->name) + !same;
        if (d_name < d) d = d_name;
        if (d < best_d) {
            best_d = d;
            best = k;
        }
    }
    return best && close_enough(best_d, name) ? best : NULL;
}

/* "model, train, ..., source.NAME, ..." in table order. */
static void sections_list(char *buf, size_t cap) {
    const char *last = NULL;
    for (size_t i = 0; i < loom_config_nkeys; i++) {
        const struct loom_key *k = &loom_config_keys[i];
        if (last && strcmp(last, k->section) == 0) continue;
        str_append(buf, cap, "%s%s%s", last ? ", " : "", k->section, k->named ? ".NAME" : "");
        last = k->section;
    }
}

_Noreturn static void key_unknown(const char *section, const char *name, const char *where) {
    char hint[HINT_MAX] = "";
    const char *inst;
    const struct loom_named_section *ns = named_split(section, &inst);
    if (ns && !instance_name_ok(inst)) {
        str_append(hint, sizeof hint, "name it [%s.NAME], NAME of letters, digits, _ and - (at most %d)", ns->prefix,
                   LOOM_SECTION_NAME_MAX - 1);
        loom_input_error(where, hint, "[%s] needs a name", section);
    }
    if (!section_known(section)) {
        const char *near = section_nearest(section);
        if (near) {
            str_append(hint, sizeof hint, "did you mean [%s]?", near);
        } else {
            str_append(hint, sizeof hint, "the sections are ");
            sections_list(hint, sizeof hint);
        }
        loom_input_error(where, hint, "unknown section [%s]", section);
    }
    const struct loom_key *near = key_nearest(section, name);
    if (near) {
        str_append(hint, sizeof hint, "did you mean %s.%s?", near->section, near->name);
    } else {
        str_append(hint, sizeof hint, "the keys of [%s] are", section);
        const char *want = ns ? ns->prefix : section;
        int first = 1;
        for (size_t i = 0; i < loom_config_nkeys; i++) {
            const struct loom_key *k = &loom_config_keys[i];
            if (k->named != (ns != NULL) || strcmp(k->section, want) != 0) continue;
            str_append(hint, sizeof hint, "%s %s", first ? "" : ",", k->name);
            first = 0;
        }
    }
    loom_input_error(where, hint, "[%s] %s: unknown key", section, name);
}

/* ---------------------------------------------------------------------------------------------- */
/* values: text -> typed field                                                                      */

enum { COUNT_OK = 0, COUNT_MALFORMED = -1, COUNT_RANGE = -2 };

/* Decimal exponent of a K M B T suffix (either case), 0 for anything else. */
static int suffix_exponent(char c) {
    switch (c) {
    case 'K': case 'k': return 3;
    case 'M': case 'm': return 6;
    case 'B': case 'b': return 9;
    case 'T': case 't': return 12;
    default: return 0;
    }
}

/* Exact integer arithmetic: the whole part, then the scale, then the fraction digits that the scale
 * turns into whole units. A fraction that does not come out whole ("1.5", "1.2345K") is rejected. */
int loom_parse_count(const char *text, int64_t *out) {
    const char *p = text;
    int neg = 0;
    if (*p == '+' || *p == '-') neg = *p++ == '-';
    const uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    uint64_t v = 0;
    int ndigits = 0;
    for (; isdigit((unsigned char)*p); p++, ndigits++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (limit - d) / 10) return COUNT_RANGE;
        v = v * 10 + d;
    }
    const char *frac = NULL;
    int nfrac = 0;
    if (*p == '.') {
        frac = ++p;
        for (; isdigit((unsigned char)*p); p++) nfrac++;
        if (nfrac == 0) return COUNT_MALFORMED;
    }
    if (ndigits + nfrac == 0) return COUNT_MALFORMED;
    int exponent = suffix_exponent(*p);
    if (exponent) p++;
    if (*p != '\0') return COUNT_MALFORMED;
    if (frac && !exponent) return COUNT_MALFORMED;
    while (nfrac > 0 && frac[nfrac - 1] == '0') nfrac--;
    if (nfrac > exponent) return COUNT_MALFORMED;
    for (int i = 0; i < exponent; i++) {
        if (v > limit / 10) return COUNT_RANGE;
        v *= 10;
    }
    uint64_t f = 0;
    for (int i = 0; i < nfrac; i++) f = f * 10 + (uint64_t)(frac[i] - '0');
    for (int i = nfrac; i < exponent; i++) f *= 10;
    if (v > limit - f) return COUNT_RANGE;
    v += f;
    if (!neg) *out = (int64_t)v;
    else *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    return COUNT_OK;
}

/* A finite double: strtod syntax over the whole text, or a number followed by a K M B T suffix
 * (rewritten as an exponent so the result is correctly rounded: "0.1K" is exactly 100). */
static int float_parse(const char *text, double *out) {
    if (text[0] == '\0' || isspace((unsigned char)text[0])) return -1;
    char *end;
    double v = strtod(text, &end);
    if (*end != '\0') {
        size_t n = strlen(text);
        int exponent = suffix_exponent(text[n - 1]);
        char buf[128];
        if (!exponent || n < 2 || n > 100) return -1;
        snprintf(buf, sizeof buf, "%.*se%d", (int)(n - 1), text, exponent);
        v = strtod(buf, &end);
        if (*end != '\0') return -1;
    }
    if (!isfinite(v)) return -1;
    *out = v;
    return 0;
}

static const char *const bool_words[] = { "true", "false", "yes", "no", "on", "off", "1", "0" };

static int bool_parse(const char *text, int *out) {
    for (size_t i = 0; i < sizeof bool_words / sizeof bool_words[0]; i++) {
        if (strcasecmp(text, bool_words[i]) == 0) {
            *out = i % 2 == 0;
            return 0;
        }
    }
    return -1;
}

/* Index of `text` among the "a|b|c" choices (case-insensitive), or -1. */
static int enum_parse(const char *choices, const char *text) {
    size_t n = strlen(text);
    int index = 0;
    for (const char *c = choices;; index++) {
        const char *bar = strchr(c, '|');
        size_t len = bar ? (size_t)(bar - c) : strlen(c);
        if (len == n && strncasecmp(c, text, n) == 0) return index;
        if (!bar) return -1;
        c = bar + 1;
    }
}

/* A string must survive loom_config_write and a reload unchanged: one line that libinih reads whole,
 * no comment marker after whitespace, no surrounding whitespace (libinih trims it). 0 when it does. */
static int string_check(const struct loom_key *k, const char *text, char *why, size_t cap) {
    size_t n = strlen(text);
    int longest = INI_MAX_LINE - 2 - (int)strlen(k->name) - 3;
    if ((int)n > longest) {
        snprintf(why, cap, "longer than %d characters, so it would not read back from a config file", longest);
        return -1;
    }
    if (n > 0 && (isspace((unsigned char)text[0]) || isspace((unsigned char)text[n - 1]))) {
        snprintf(why, cap, "leading or trailing whitespace would be lost in a config file");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (iscntrl((unsigned char)text[i]) && text[i] != '\t') {
            snprintf(why, cap, "control characters (such as a newline) cannot be written to a config file");
            return -1;
        }
        if ((text[i] == '#' || text[i] == ';') && (i == 0 || isspace((unsigned char)text[i - 1]))) {
            /* (at the start too: the writer puts a space after `=`) */
            snprintf(why, cap, "`%c` %s starts a comment in a config file", text[i],
                     i == 0 ? "at the start of a value" : "after whitespace");
            return -1;
        }
    }
    return 0;
}

/* Store the value of `text` in cfg. 0 on success; else -1, with what was expected written to why. */
static int value_parse(const struct loom_key *k, const char *text, void *base, char *why, size_t cap) {
    void *field = key_field(k, base);
    switch (k->type) {
    case LOOM_KEY_INT: {
        int64_t v;
        int rc = loom_parse_count(text, &v);
        if (rc == COUNT_OK) {
            *(int64_t *)field = v;
            return 0;
        }
        snprintf(why, cap, "%s", rc == COUNT_RANGE ? "integer out of range (at most 9223372036854775807 in magnitude)"
                                                   : "expected an integer (suffixes K M B T allowed)");
        return -1;
    }
    case LOOM_KEY_FLOAT: {
        double v;
        if (float_parse(text, &v) == 0) {
            *(double *)field = v;
            return 0;
        }
        snprintf(why, cap, "expected a finite number (suffixes K M B T allowed)");
        return -1;
    }
    case LOOM_KEY_BOOL: {
        int v;
        if (bool_parse(text, &v) == 0) {
            *(int *)field = v;
            return 0;
        }
        snprintf(why, cap, "expected a boolean: true/false, yes/no, on/off or 1/0");
        return -1;
    }
    case LOOM_KEY_ENUM: {
        int v = enum_parse(k->choices, text);
        if (v >= 0) {
            *(int *)field = v;
            return 0;
        }
        snprintf(why, cap, "expected one of %s", k->choices);
        return -1;
    }
    case LOOM_KEY_STRING: {
        char **s = field;
        if (string_check(k, text, why, cap) != 0) return -1;
        free(*s);
        *s = str_dup(text);
        return 0;
    }
    }
    snprintf(why, cap, "key has unknown type %d", (int)k->type);
    return -1;
}

/* ---------------------------------------------------------------------------------------------- */
/* init, free, set                                                                                  */

void loom_config_init(struct loom_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < loom_config_nkeys; i++) {
        const struct loom_key *k = &loom_config_keys[i];
        if (k->named) continue;
        char why[256];
        CHECK(value_parse(k, k->def, cfg, why, sizeof why) == 0, "default of %s.%s = \"%s\" does not parse: %s",
              k->section, k->name, k->def, why);
    }
}

static char *instance_at(const struct loom_config *cfg, const struct loom_named_section *ns, int i) {
    return (char *)cfg + ns->array_offset + (size_t)i * ns->elem_size;
}

static int *instance_count(const struct loom_config *cfg, const struct loom_named_section *ns) {
    return (int *)((char *)cfg + ns->count_offset);
}

static void *instance_get(struct loom_config *cfg, const struct loom_named_section *ns, const char *inst,
                          const char *where) {
    int *count = instance_count(cfg, ns);
    for (int i = 0; i < *count; i++)
        if (strcmp(instance_at(cfg, ns, i), inst) == 0) return instance_at(cfg, ns, i);
    if (*count == ns->max)
        loom_input_error(where, NULL, "more than %d [%s.NAME] sections", ns->max, ns->prefix);
    char *elem = instance_at(cfg, ns, (*count)++);
    memset(elem, 0, ns->elem_size);
    snprintf(elem, LOOM_SECTION_NAME_MAX, "%s", inst);
    for (size_t i = 0; i < loom_config_nkeys; i++) {
        const struct loom_key *k = &loom_config_keys[i];
        if (!k->named || strcmp(k->section, ns->prefix) != 0) continue;
        char why[256];
        CHECK(value_parse(k, k->def, elem, why, sizeof why) == 0, "default of %s.%s = \"%s\" does not parse: %s",
              k->section, k->name, k->def, why);
    }
    return elem;
}

static void strings_free(void *base, int named, const char *section) {
    for (size_t i = 0; i < loom_config_nkeys; i++) {
        const struct loom_key *k = &loom_config_keys[i];
        if (k->type != LOOM_KEY_STRING || k->named != named || (section && strcmp(k->section, section) != 0)) continue;
        char **s = key_field(k, base);
        free(*s);
        *s = NULL;
    }
}

void loom_config_free(struct loom_config *cfg) {
    strings_free(cfg, 0, NULL);
    for (size_t n = 0; n < loom_config_nnamed; n++) {
        const struct loom_named_section *ns = &loom_config_named[n];
        for (int i = 0; i < *instance_count(cfg, ns); i++) strings_free(instance_at(cfg, ns, i), 1, ns->prefix);
        *instance_count(cfg, ns) = 0;
    }
}

void loom_config_set(struct loom_config *cfg, const char *section, const char *name, const char *value,
                     const char *where) {
    const struct loom_key *k = key_find(section, name);
    if (!k || !section_known(section)) key_unknown(section, name, where);
    const char *inst;
    const struct loom_named_section *ns = named_split(section, &inst);
    void *base = ns ? instance_get(cfg, ns, inst, where) : cfg;
    char why[256];
    if (value_parse(k, value, base, why, sizeof why) == 0) return;
    char hint[HINT_MAX] = "";
    str_append(hint, sizeof hint, "%s.%s: %s", k->section, k->name, k->meaning);
    loom_input_error(where, hint, "[%s] %s = %s: %s", section, name, value, why);
}

void loom_config_set_arg(struct loom_config *cfg, const char *arg) {
    const char *p = arg;
    for (int i = 0; i < 2 && *p == '-'; i++) p++;
    const char *eq = strchr(p, '=');
    const char *dot = NULL;
    for (const char *c = p; eq && c < eq; c++)
        if (*c == '.') dot = c;
    if (!eq || !dot || dot == p || dot + 1 == eq) {
        char hint[HINT_MAX] = "overrides look like --section.key=value";
        if (eq && !dot) {
            char *name = str_dup_n(p, (size_t)(eq - p));
            const struct loom_key *near = key_nearest("", name);
            if (near) str_append(hint, sizeof hint, " (did you mean --%s.%s%s?)", near->section, near->name, eq);
            free(name);
        }
        loom_input_error(arg, hint, "malformed override");
    }
    char *section = str_dup_n(p, (size_t)(dot - p));
    char *name = str_dup_n(dot + 1, (size_t)(eq - dot - 1));
    loom_config_set(cfg, section, name, eq + 1, arg);
    free(section);
    free(name);
}

/* ---------------------------------------------------------------------------------------------- */
/* files and includes                                                                               */

/* One INI text being parsed: a file or a string, and the chain of files that included it. It lives on the
 * stack and holds no heap memory, so an input error leaves nothing allocated but the open descriptor. */
struct ini_source {
    struct loom_config *cfg;
    const char *name;                  /* shown in messages */
    char dir[PATH_MAX];                /* prefix for relative includes: "" or ending in '/' */
    char real[PATH_MAX];               /* canonical path for cycle detection; "" for a string */
    int fd;                            /* a file source, read through buf, or -1 and ... */
    char buf[4096];
    size_t buf_at, buf_len;            /* the unread bytes of buf */
    const char *text;                  /* ... the unread rest of a string source */
    int line;                          /* line last handed to libinih */
    int read_errno;                    /* nonzero when reading the file failed */
    int depth;                         /* 0 for the top-level source */
    const struct ini_source *parent;   /* the includer, or NULL */
};

_Noreturn static void source_error(const struct ini_source *src, int line, const char *hint, const char *fmt,
                                   ...) __attribute__((format(printf, 4, 5)));
_Noreturn static void source_error(const struct ini_source *src, int line, const char *hint, const char *fmt,
                                   ...) {
    char where[WHERE_MAX], msg[1024];
    snprintf(where, sizeof where, "%s:%d", src->name, line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    loom_input_error(where, hint, "%s", msg);
}

/* Refills the buffer of a file source when it is empty; 0 at the end of the file or on a read error (then
 * kept in read_errno). */
static int source_fill(struct ini_source *src) {
    if (src->buf_at < src->buf_len) return 1;
    ssize_t n;
    do n = read(src->fd, src->buf, sizeof src->buf);
    while (n < 0 && errno == EINTR);
    if (n < 0) src->read_errno = errno ? errno : EIO;
    src->buf_at = 0;
    src->buf_len = n > 0 ? (size_t)n : 0;
    return n > 0;
}

/* Fetch the next raw line (at most num - 1 characters) into str; 0 at the end. A NUL byte (a binary file,
 * or a device such as /dev/zero that never ends) is an error: text after it would be lost unseen. */
static int source_fetch(struct ini_source *src, char *str, int num) {
    if (src->fd >= 0) {
        size_t n = 0;
        while (n + 1 < (size_t)num && source_fill(src)) {
            char c = src->buf[src->buf_at++];
            if (c == '\0') source_error(src, src->line + 1, "a config file is text", "NUL byte (binary data)");
            str[n++] = c;
            if (c == '\n') break;
        }
        str[n] = '\0';
        return n > 0;
    }
    if (*src->text == '\0') return 0;
    size_t n = 0;
    while (n + 1 < (size_t)num && src->text[n] != '\0') {
        if (src->text[n++] == '\n') break;
    }
    memcpy(str, src->text, n);
    str[n] = '\0';
    src->text += n;
    return 1;
}

static int source_at_end(struct ini_source *src) {
    if (src->fd < 0) return *src->text == '\0';
    return !source_fill(src);
}

/* Normalise one line in place (see the top of the file) and check its shape. */
static void line_check(struct ini_source *src, char *str) {
    if (src->line == 1 && (unsigned char)str[0] == 0xEF && (unsigned char)str[1] == 0xBB &&
        (unsigned char)str[2] == 0xBF)
        memmove(str, str + 3, strlen(str + 3) + 1);
    char *p = str;
    while (isspace((unsigned char)*p)) p++;
    memmove(str, p, strlen(p) + 1);
    if (str[0] == '\0' || str[0] == ';' || str[0] == '#') return;
    for (char *c = str + 1; *c; c++) {
        if ((*c == ';' || *c == '#') && isspace((unsigned char)c[-1])) {
            *c = '\0';
            break;
        }
    }
    if (str[0] == '[') {
        char *end = strchr(str, ']');
        if (!end) source_error(src, src->line, "a section header looks like [model]", "unterminated section header");
        *end = '\0';
        if (!section_known(str + 1)) {
            char where[WHERE_MAX];
            snprintf(where, sizeof where, "%s:%d", src->name, src->line);
            key_unknown(str + 1, "", where);
        }
        *end = ']';
        return;
    }
    const char *sep = strpbrk(str, "=:");
    if (!sep) {
        str[strcspn(str, "\r\n")] = '\0';
        source_error(src, src->line, "lines are `key = value`, `[section]` or comments starting with # or ;",
                     "cannot parse `%s`", str);
    }
    if (sep == str) source_error(src, src->line, "lines are `key = value`", "missing key name");
}

/* libinih's line reader: one line per call, so src->line is the line of the next handler call. */
static char *source_read(char *str, int num, void *stream) {
    struct ini_source *src = stream;
    if (!source_fetch(src, str, num)) return NULL;
    src->line++;
    size_t len = strlen(str);
    if (len > 0 && str[len - 1] != '\n' && !source_at_end(src))
        source_error(src, src->line, "shorten the line (a long list of data files can name a folder instead)",
                     "line is longer than %d characters", num - 2);
    line_check(src, str);
    return str;
}

static void source_parse_file(struct loom_config *cfg, const char *path, const struct ini_source *parent);

static void source_include(struct ini_source *src, const char *value) {
    if (value[0] == '\0') source_error(src, src->line, NULL, "include: needs a file name");
    const char *prefix = value[0] == '/' ? "" : src->dir;
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s%s", prefix, value) >= (int)sizeof path)
        source_error(src, src->line, NULL, "include: the path %s%s is longer than %d characters", prefix, value,
                     PATH_MAX - 1);
    source_parse_file(src->cfg, path, src);
}

static int source_handle(void *user, const char *section, const char *name, const char *value) {
    struct ini_source *src = user;
    if (strcmp(name, "include") == 0) {
        source_include(src, value);
        return 1;
    }
    if (section[0] == '\0') {
        char hint[HINT_MAX] = "put it below its [section] header";
        const struct loom_key *near = key_nearest("", name);
        if (near) str_append(hint, sizeof hint, " (did you mean %s.%s?)", near->section, near->name);
        source_error(src, src->line, hint, "%s: key outside any section", name);
    }
    char where[WHERE_MAX];
    snprintf(where, sizeof where, "%s:%d", src->name, src->line);
    loom_config_set(src->cfg, section, name, value, where);
    return 1;
}

static void source_run(struct ini_source *src) {
    int rc = ini_parse_stream(source_read, src, source_handle, src);
    CHECK(rc != -2, "libinih ran out of memory parsing %s", src->name);
    if (src->read_errno) loom_input_error(src->name, NULL, "cannot read config file (%s)", strerror(src->read_errno));
    if (rc > 0) source_error(src, rc, NULL, "syntax error");
}

static void source_parse_file(struct loom_config *cfg, const char *path, const struct ini_source *parent) {
    char hint[HINT_MAX] = "";
    if (parent) str_append(hint, sizeof hint, "included from %s:%d", parent->name, parent->line);
    int fd;
    do fd = open(path, O_RDONLY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) loom_input_error(path, hint, "cannot read config file (%s)", strerror(errno));
    struct ini_source src = { .cfg = cfg, .name = path, .fd = fd, .parent = parent };
    src.depth = parent ? parent->depth + 1 : 0;
    if (!realpath(path, src.real)) snprintf(src.real, sizeof src.real, "%s", path);
    for (const struct ini_source *p = parent; p; p = p->parent) {
        if (!p->real[0] || strcmp(p->real, src.real) != 0) continue;
        const struct ini_source *chain[INCLUDE_DEPTH_MAX + 2];
        int n = 0;
        for (const struct ini_source *q = parent; q && n < INCLUDE_DEPTH_MAX + 2; q = q->parent) chain[n++] = q;
        char msg[HINT_MAX] = "include cycle: ";
        for (int i = n - 1; i >= 0; i--) str_append(msg, sizeof msg, "%s -> ", chain[i]->name);
        str_append(msg, sizeof msg, "%s", path);
        source_error(parent, parent->line, NULL, "%s", msg);
    }
    if (src.depth > INCLUDE_DEPTH_MAX)
        source_error(parent, parent->line, NULL, "includes nested deeper than %d files", INCLUDE_DEPTH_MAX);
    const char *slash = strrchr(path, '/');
    snprintf(src.dir, sizeof src.dir, "%.*s", slash ? (int)(slash - path + 1) : 0, path);
    source_run(&src);
    close(fd);
}

void loom_config_load(struct loom_config *cfg, const char *path) { source_parse_file(cfg, path, NULL); }

void loom_config_load_string(struct loom_config *cfg, const char *text, const char *name) {
    struct ini_source src = { .cfg = cfg, .name = name, .fd = -1, .text = text };
    source_run(&src);
}

/* ---------------------------------------------------------------------------------------------- */
/* printing                                                                                         */

/* The shortest text that strtod reads back to exactly v; whole numbers below 1e15 without exponent. */
static void float_format(char *buf, size_t cap, double v) {
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, cap, "%.0f", v);
        return;
    }
    for (int precision = 1; precision <= 17; precision++) {
        snprintf(buf, cap, "%.*g", precision, v);
        if (strtod(buf, NULL) == v) return;
    }
}

/* Choice v of "a|b|c": its start, and its length in *len. NULL when v is out of range. */
static const char *choice_find(const char *choices, int v, size_t *len) {
    if (v < 0) return NULL;
    const char *c = choices;
    for (int i = 0; i < v && c; i++) {
        c = strchr(c, '|');
        if (c) c++;
    }
    if (c) *len = strcspn(c, "|");
    return c;
}

static void write_key(FILE *f, const struct loom_key *k, const void *base) {
    if (k->type == LOOM_KEY_ENUM) fprintf(f, "# %s (%s)\n", k->meaning, k->choices);
    else fprintf(f, "# %s\n", k->meaning);
    const void *field = key_field(k, base);
    const char *string = k->type == LOOM_KEY_STRING ? *(char *const *)field : NULL;
    fprintf(f, string && !string[0] ? "%s =" : "%s = ", k->name);
    char buf[64];
    switch (k->type) {
    case LOOM_KEY_INT: fprintf(f, "%" PRId64, *(const int64_t *)field); break;
    case LOOM_KEY_FLOAT:
        float_format(buf, sizeof buf, *(const double *)field);
        fputs(buf, f);
        break;
    case LOOM_KEY_BOOL: fputs(*(const int *)field ? "true" : "false", f); break;
    case LOOM_KEY_ENUM: {
        size_t len = 0;
        const char *c = choice_find(k->choices, *(const int *)field, &len);
        CHECK(c != NULL, "%s.%s holds %d, not an index into %s", k->section, k->name, *(const int *)field,
              k->choices);
        fprintf(f, "%.*s", (int)len, c);
        break;
    }
    case LOOM_KEY_STRING: fputs(string ? string : "", f); break;
    }
    fputc('\n', f);
}

/* Every instance of a named section, each with all of its keys. */
static void write_named(FILE *f, const struct loom_config *cfg, const char *prefix) {
    const char *inst;
    const struct loom_named_section *ns = named_split(prefix, &inst);
    for (int i = 0; i < *instance_count(cfg, ns); i++) {
        const char *elem = instance_at(cfg, ns, i);
        fprintf(f, "\n[%s.%s]\n", prefix, elem);
        for (size_t j = 0; j < loom_config_nkeys; j++) {
            const struct loom_key *k = &loom_config_keys[j];
            if (k->named && strcmp(k->section, prefix) == 0) write_key(f, k, elem);
        }
    }
}

void loom_config_write(FILE *f, const struct loom_config *cfg) {
    const char *section = NULL;
    int first = 1;
    for (size_t i = 0; i < loom_config_nkeys; i++) {
        const struct loom_key *k = &loom_config_keys[i];
        if (section && strcmp(section, k->section) == 0) {
            if (!k->named) write_key(f, k, cfg);
            continue;
        }
        section = k->section;
        if (k->named) {
            write_named(f, cfg, k->section);
            continue;
        }
        fprintf(f, "%s[%s]\n", first ? "" : "\n", k->section);
        first = 0;
        write_key(f, k, cfg);
    }
}

char *loom_config_to_string(const struct loom_config *cfg) {
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size);
    CHECK(f != NULL, "open_memstream: %s", strerror(errno));
    loom_config_write(f, cfg);
    CHECK(fclose(f) == 0, "writing the config to memory: %s", strerror(errno));
    return text;
}

/* Choice names split out of the table's "a|b|c" strings, kept for the life of the process. */
#define CHOICE_NAMES_MAX 64
#define CHOICE_NAME_LEN 32
static struct {
    const char *choices;
    int v;
    char name[CHOICE_NAME_LEN];
} choice_names[CHOICE_NAMES_MAX];
static int choice_count;

const char *loom_config_choice(const char *section, const char *name, int v) {
    const struct loom_key *k = key_find(section, name);
    CHECK(k != NULL && k->type == LOOM_KEY_ENUM, "%s.%s is not an enum key", section, name);
    for (int i = 0; i < choice_count; i++)
        if (choice_names[i].choices == k->choices && choice_names[i].v == v) return choice_names[i].name;
    size_t len = 0;
    const char *c = choice_find(k->choices, v, &len);
    CHECK(c != NULL, "enum value %d out of range for %s.%s (%s)", v, section, name, k->choices);
    CHECK(choice_count < CHOICE_NAMES_MAX && len < CHOICE_NAME_LEN, "enum name table too small");
    choice_names[choice_count].choices = k->choices;
    choice_names[choice_count].v = v;
    memcpy(choice_names[choice_count].name, c, len);
    choice_names[choice_count].name[len] = '\0';
    return choice_names[choice_count++].name;
}
