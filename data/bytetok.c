/*
 * data/bytetok.c — the built-in byte tokenizer (see bytetok.h).
 */
#include "data/bytetok.h"

#include <string.h>

#include <xxhash.h>

#include "core/error.h"

static const char *const BYTETOK_SPECIALS[3] = {"<|bos|>", "<|eos|>", "<|pad|>"};

uint64_t loom_bytetok_hash(void) {
    static const char name[] = "loom-bytes-v1";
    return XXH64(name, sizeof name - 1, 0);
}

size_t loom_bytetok_encode(const unsigned char *text, size_t n, int32_t *out) {
    for (size_t i = 0; i < n; i++) out[i] = text[i];
    return n;
}

size_t loom_bytetok_decode(const int32_t *ids, size_t n, unsigned char *out) {
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        CHECK(id >= 0 && id < LOOM_BYTES_VOCAB, "id %d at position %zu outside the byte vocabulary (%d)", id, i,
              LOOM_BYTES_VOCAB);
        if (id < 256) {
            out[len++] = (unsigned char)id;
        } else {
            const char *text = BYTETOK_SPECIALS[id - 256];
            size_t k = strlen(text);
            memcpy(out + len, text, k);
            len += k;
        }
    }
    return len;
}
