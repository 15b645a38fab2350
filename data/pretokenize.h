/*
 * data/pretokenize.h — the pre-tokenizer of loom's BPE: a regex that cuts text into pieces ("words")
 * that BPE never merges across.
 *
 * LOOM_PRETOKENIZE_REGEX carries the Youtu-LLM rules: each CJK ideograph, kana, hangul syllable and
 * CJK punctuation mark is a piece of its own; every digit (\p{N}) is a piece of its own; the rest is
 * split as GPT-4o (o200k) does: words with their case and an optional leading space or symbol,
 * English contractions, punctuation runs, newline runs and whitespace runs. The same string is
 * stored in tokenizer.json, where the Hugging Face `tokenizers` library runs it with Oniguruma, so it
 * keeps to what both engines read alike: code point ranges instead of script properties, explicit
 * character classes instead of \s and (?i). Only characters assigned after the Unicode version of the
 * PCRE2 tables (14.0 in PCRE2 10.42) can be classed differently by the two.
 *
 * Matching runs in PCRE2 with UTF + UCP + JIT and PCRE2_MATCH_INVALID_UTF: bytes that are not valid
 * UTF-8 match nothing and form pieces of their own (the stretch between two matches), so any byte
 * string splits and every byte lands in exactly one piece.
 */
#ifndef LOOM_DATA_PRETOKENIZE_H
#define LOOM_DATA_PRETOKENIZE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

extern const char LOOM_PRETOKENIZE_REGEX[];

struct loom_pretok;        /* a compiled regex; read-only once made, shared by threads */
struct loom_pretok_match;  /* per-thread match state */

/* Compiles regex (UTF-8); `where` (copied) names it in later errors. NULL when PCRE2 cannot compile it, with
 * the reason in why. */
struct loom_pretok *loom_pretok_compile(const char *regex, const char *where, char *why, size_t cap);
/* The same; a regex PCRE2 cannot compile is an input error naming `where`. */
struct loom_pretok *loom_pretok_init(const char *regex, const char *where);
void loom_pretok_free(struct loom_pretok *p);

struct loom_pretok_match *loom_pretok_match_init(const struct loom_pretok *p);
void loom_pretok_match_free(struct loom_pretok_match *m);

/* The end of the piece of text[0..len) that starts at pos (< len): the end of the match found at
 * pos, or where the next match starts (the stretch of invalid UTF-8 before it), or len. A regex that PCRE2
 * gives up on (its backtracking or memory limit: a pattern of nested repeats, from a tokenizer file) is an
 * input error naming the `where` of the regex. */
size_t loom_pretok_next(const struct loom_pretok *p, struct loom_pretok_match *m, const char *text, size_t len,
                        size_t pos);

#ifdef __cplusplus
}
#endif
#endif
