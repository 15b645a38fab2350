/*
 * tests/fuzz/fuzz_tokenizer.c — fuzz target: the tokenizer.json loader (data/tokenizer_json.c, data/bpe.c,
 * the pre-tokenizer regex of data/pretokenize.c), as `loom data prep|encode|decode --tokenizer FILE` load it.
 *
 * The input is the file up to its first NUL byte; what follows the NUL (at most TEXT_MAX bytes) is text to
 * encode. A tokenizer that loads encodes that text and a fixed sample of prose, digits, CJK, whitespace runs
 * and invalid UTF-8, and decodes the ids: every id must lie in the vocabulary, and decoding must give back
 * the text byte for byte (byte-level BPE covers every byte, so nothing may be lost or added).
 *
 * Seeds (tests/fuzz/corpus/tokenizer/): trained.json by `loom data tokenizer-train --vocab-size 300`, and
 * two edits of it: compact (merges as pairs, two specials, text to encode) and simple-regex (another regex,
 * a vocabulary token that is also special).
 */
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer.h"
#include "tests/fuzz/fuzz.h"

enum { TEXT_MAX = 512 };

static const char SAMPLE[] = "Hello world! It's 2024: 12345 apples\n\n\tand   spaces  \r\n"
                             "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c caf\xc3\xa9 "
                             "\xf0\x9f\x99\x82 \xff\xfe\x80 bad utf-8 <|eos|> don't DON'T";

struct tokenizer_case {
    char path[4200];
    const char *text;
    size_t text_len;
    struct loom_tokenizer *t;  /* once loaded; freed here also when encoding stops on an input error */
    struct loom_ids ids;
};

static void round_trip(struct tokenizer_case *c, const char *text, size_t len) {
    c->ids.n = 0;
    loom_tokenizer_encode(c->t, text, len, &c->ids);
    uint32_t vocab = loom_tokenizer_vocab_size(c->t);
    for (size_t i = 0; i < c->ids.n; i++)
        if (c->ids.ids[i] < 0 || (uint32_t)c->ids.ids[i] >= vocab)
            fuzz_fail("id %d at %zu is outside the vocabulary of %u", c->ids.ids[i], i, vocab);
    size_t back_len = 0;
    char *back = loom_tokenizer_decode(c->t, c->ids.ids, c->ids.n, &back_len);
    if (back_len != len || memcmp(back, text, len) != 0)
        fuzz_fail("decode(encode(text)) gives %zu bytes for %zu (%zu ids)", back_len, len, c->ids.n);
    free(back);
}

static void tokenizer_check(void *arg) {
    struct tokenizer_case *c = arg;
    c->t = loom_tokenizer_load(c->path);
    loom_tokenizer_eos(c->t);
    round_trip(c, SAMPLE, sizeof SAMPLE - 1);
    round_trip(c, c->text, c->text_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct tokenizer_case c = {0};
    fuzz_path(c.path, sizeof c.path, "tokenizer.json");
    const uint8_t *nul = memchr(data, '\0', size);
    size_t file_len = nul ? (size_t)(nul - data) : size;
    fuzz_write_file(c.path, data, file_len);
    c.text = nul ? (const char *)nul + 1 : "";
    c.text_len = nul ? size - file_len - 1 : 0;
    if (c.text_len > TEXT_MAX) c.text_len = TEXT_MAX;
    fuzz_guarded(tokenizer_check, &c);
    loom_tokenizer_free(c.t);
    loom_ids_free(&c.ids);
    return 0;
}
