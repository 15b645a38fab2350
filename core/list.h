/*
 * core/list.h — comma-separated config lists ("web:0.75, stem:0.20", "a.tok, shards/").
 */
#ifndef LOOM_CORE_LIST_H
#define LOOM_CORE_LIST_H

#ifdef __cplusplus
extern "C" {
#endif

/* Calls fn(item, i, ctx) for each non-empty item of text, split on commas and trimmed of blanks; the
 * item is a writable copy. A nonzero return from fn stops the walk and is returned; else 0. *count
 * (may be NULL) gets the number of items visited. */
int loom_list_each(const char *text, int (*fn)(char *item, int i, void *ctx), void *ctx, int *count);

#ifdef __cplusplus
}
#endif
#endif
