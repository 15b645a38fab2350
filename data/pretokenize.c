/*
 * data/pretokenize.c — the pre-tokenizer regex and its PCRE2 matcher (see pretokenize.h).
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "data/pretokenize.h"

#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

/* ---------------------------------------------------------------------------------------------- */
/* the regex                                                                                        */

/* CJK: each character a piece. Code point ranges (the same in every Unicode version and in both
 * engines, where script properties are not: PCRE2 reads \p{Han} as Script_Extensions, Oniguruma as
 * Script): Hangul Jamo; CJK radicals; CJK symbols and punctuation (but the ideographic space U+3000,
 * which is whitespace), kana, bopomofo, compatibility jamo, strokes, enclosed and compatibility forms;
 * CJK ideographs with extension A; Hangul Jamo extended and syllables; compatibility ideographs; the
 * punctuation of the fullwidth forms and the halfwidth kana and hangul; kana supplements; the
 * ideographs of planes 2 and 3. */
#define PT_CJK                                                                                     \
    "\\x{1100}-\\x{11FF}\\x{2E80}-\\x{2FDF}\\x{3001}-\\x{4DBF}\\x{4E00}-\\x{9FFF}\\x{A960}-\\x{A97F}"  \
    "\\x{AC00}-\\x{D7FF}\\x{F900}-\\x{FAFF}\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF20}\\x{FF3B}-\\x{FF40}"  \
    "\\x{FF5B}-\\x{FFDC}\\x{FFE0}-\\x{FFEE}\\x{1AFF0}-\\x{1B16F}\\x{20000}-\\x{3FFFF}"
/* Whitespace, spelled out (\s differs between PCRE2 and Oniguruma at U+0085). */
#define PT_SPACE "\\t\\n\\x{0B}\\f\\r\\x{85}\\p{Z}"
/* o200k's [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] and [\p{Ll}\p{Lm}\p{Lo}\p{M}] without CJK, written
 * as negated classes (neither engine subtracts classes the same way): letters and marks are everything
 * but the categories C N P S Z. */
#define PT_UPPER "[^\\p{C}\\p{N}\\p{P}\\p{S}\\p{Z}\\p{Ll}" PT_CJK "]"
#define PT_LOWER "[^\\p{C}\\p{N}\\p{P}\\p{S}\\p{Z}\\p{Lu}\\p{Lt}" PT_CJK "]"
/* One leading character that is no letter, digit, newline or CJK (a space, a symbol). */
#define PT_LEAD "[^\\r\\n\\p{L}\\p{N}" PT_CJK "]?"
/* o200k's (?i:'s|'t|'re|'ve|'m|'ll|'d) with the case spelled out. */
#define PT_CONTRACTION "(?:'[sStTmMdD]|'[rR][eE]|'[vV][eE]|'[lL][lL])?"

const char LOOM_PRETOKENIZE_REGEX[] =
    "[" PT_CJK "]"
    "|" PT_LEAD PT_UPPER "*" PT_LOWER "+" PT_CONTRACTION
    "|" PT_LEAD PT_UPPER "+" PT_LOWER "*" PT_CONTRACTION
    "|\\p{N}"
    "| ?[^" PT_SPACE "\\p{L}\\p{N}" PT_CJK "]+[\\r\\n/]*"
    "|[" PT_SPACE "]*[\\r\\n]+"
    "|[" PT_SPACE "]+(?![^" PT_SPACE "])"
    "|[" PT_SPACE "]+";

/* ---------------------------------------------------------------------------------------------- */
/* compiled regex and matching                                                                      */

struct loom_pretok {
    pcre2_code *code;
    char *where;
};

struct loom_pretok_match {
    pcre2_match_data *md;
};

struct loom_pretok *loom_pretok_compile(const char *regex, const char *where, char *why, size_t cap) {
    int err = 0;
    PCRE2_SIZE err_at = 0;
    uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)regex, PCRE2_ZERO_TERMINATED, options, &err, &err_at, NULL);
    if (!code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        snprintf(why, cap, "bad pre-tokenizer regex at offset %zu: %s", (size_t)err_at, (const char *)msg);
        return NULL;
    }
    /* without JIT (a platform PCRE2 lacks it for) matching is slower but the same */
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    struct loom_pretok *p = calloc_check(1, sizeof *p);
    p->code = code;
    size_t n = strlen(where);
    p->where = malloc_check(n + 1);
    memcpy(p->where, where, n + 1);
    return p;
}

struct loom_pretok *loom_pretok_init(const char *regex, const char *where) {
    char why[512];
    struct loom_pretok *p = loom_pretok_compile(regex, where, why, sizeof why);
    if (!p) loom_input_error(where, "the pre-tokenizer regex must compile with PCRE2 (UTF mode)", "%s", why);
    return p;
}

void loom_pretok_free(struct loom_pretok *p) {
    if (!p) return;
    pcre2_code_free(p->code);
    free(p->where);
    free(p);
}

struct loom_pretok_match *loom_pretok_match_init(const struct loom_pretok *p) {
    struct loom_pretok_match *m = calloc_check(1, sizeof *m);
    m->md = pcre2_match_data_create_from_pattern(p->code, NULL);
    CHECK(m->md != NULL, "out of memory creating PCRE2 match data");
    return m;
}

void loom_pretok_match_free(struct loom_pretok_match *m) {
    if (!m) return;
    pcre2_match_data_free(m->md);
    free(m);
}

size_t loom_pretok_next(const struct loom_pretok *p, struct loom_pretok_match *m, const char *text, size_t len,
                        size_t pos) {
    int rc = pcre2_match(p->code, (PCRE2_SPTR)text, len, pos, 0, m->md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return len;
    if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT ||
        rc == PCRE2_ERROR_JIT_STACKLIMIT) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        loom_input_error(p->where, "simplify the pre-tokenizer regex (nested repeats can backtrack without end)",
                         "the pre-tokenizer regex fails on the text at byte %zu: %s", pos, (const char *)msg);
    }
    CHECK(rc > 0, "PCRE2 match failed with code %d at byte %zu", rc, pos);
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(m->md);
    /* an empty match would never advance: take one byte */
    if (ov[0] > pos) return ov[0];
    return ov[1] > pos ? ov[1] : pos + 1;
}
