/*
 * core/list.c — comma-separated lists (see list.h).
 */
#include "core/list.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"

int loom_list_each(const char *text, int (*fn)(char *item, int i, void *ctx), void *ctx, int *count) {
    char *copy = strdup(text ? text : "");
    CHECK(copy != NULL, "out of memory");
    int n = 0, rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok && !rc; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ' || *tok == '\t') tok++;
        char *end = tok + strlen(tok);
        while (end > tok && (end[-1] == ' ' || end[-1] == '\t')) *--end = 0;
        if (!*tok) continue;
        rc = fn(tok, n++, ctx);
    }
    free(copy);
    if (count) *count = n;
    return rc;
}
