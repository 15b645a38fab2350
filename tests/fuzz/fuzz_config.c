/*
 * tests/fuzz/fuzz_config.c — fuzz target: config files (core/config.c) and their validation
 * (core/config_validate.c), as `loom info -c FILE --section.key=value ...` reads them.
 *
 * The input is the text of main.ini, which may hold more files and overrides in lines that INI reads as
 * comments:
 *   #@file NAME        the lines after it, up to the next #@file, are the file NAME (letters, digits, . _ -)
 *                      beside main.ini, so that `include = NAME` finds it (and includes can nest or cycle)
 *   #@set ARG          ARG is applied after loading as the override --ARG
 * A config that loads is written out with loom_config_write and read back: the two must give the same text
 * (config.c promises every value it accepts survives the round trip). Then it is validated, as `loom info`
 * does and as `loom train` does on one process.
 *
 * Seeds (tests/fuzz/corpus/config/): the configs of configs/ with their includes as #@file parts, a typo and
 * an include cycle.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/error.h"
#include "tests/fuzz/fuzz.h"

enum { SETS_MAX = 16 };

struct config_case {
    char main[4200];
    int nsets;
    char *sets[SETS_MAX];
    struct loom_config cfg;
};

/* Splits the input into the files of the scratch folder and the overrides. */
static void config_split(struct config_case *c, const uint8_t *data, size_t size) {
    char path[4300];
    fuzz_path(c->main, sizeof c->main, "main.ini");
    FILE *out = fopen(c->main, "wb");
    const char *p = (const char *)data, *end = p + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        if (len > 7 && memcmp(p, "#@file ", 7) == 0) {
            char name[33];
            size_t n = 0;
            for (size_t i = 7; i < len && n < sizeof name - 1; i++) {
                char ch = p[i];
                if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                    ch == '_' || ch == '-')
                    name[n++] = ch;
            }
            name[n] = '\0';
            if (n == 0 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) snprintf(name, sizeof name, "x");
            fclose(out);
            fuzz_path(path, sizeof path, name);
            out = fopen(path, "ab");
        } else if (len > 6 && memcmp(p, "#@set ", 6) == 0 && c->nsets < SETS_MAX) {
            size_t n = len - 6 - (nl != NULL);
            char *arg = malloc(n + 1);
            memcpy(arg, p + 6, n);
            arg[n] = '\0';
            c->sets[c->nsets++] = arg;
        }
        fwrite(p, 1, len, out);
        p += len;
    }
    fclose(out);
}

static void config_load(void *arg) {
    struct config_case *c = arg;
    loom_config_load(&c->cfg, c->main);
    for (int i = 0; i < c->nsets; i++) loom_config_set_arg(&c->cfg, c->sets[i]);
}

/* as `loom info` validates (no world), and as `loom train` does on one process */
static void config_validate(void *arg) {
    struct config_case *c = arg;
    loom_config_validate(&c->cfg, 0);
}

static void config_validate_world(void *arg) {
    struct config_case *c = arg;
    loom_config_validate(&c->cfg, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct config_case *c = calloc(1, sizeof *c);
    fuzz_dir_clear();
    config_split(c, data, size);
    loom_config_init(&c->cfg);
    if (fuzz_guarded(config_load, c) == 0) {
        /* outside the guard: the written text failing to load is a bug, not bad input */
        char *text = loom_config_to_string(&c->cfg);
        struct loom_config again;
        loom_config_init(&again);
        loom_config_load_string(&again, text, "the written config");
        char *text2 = loom_config_to_string(&again);
        if (strcmp(text, text2) != 0)
            fuzz_fail("the config changes when written and read back:\n%s\n---\n%s", text, text2);
        free(text);
        free(text2);
        loom_config_free(&again);
        fuzz_guarded(config_validate, c);
        fuzz_guarded(config_validate_world, c);
    }
    loom_config_free(&c->cfg);
    for (int i = 0; i < c->nsets; i++) free(c->sets[i]);
    free(c);
    return 0;
}
