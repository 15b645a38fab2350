/*
 * core/dtype.c — fp32 <-> bf16 / fp16 with round-to-nearest-even (IEEE 754-2008 binary16; bfloat16
 * is the top half of binary32).
 */
#include "core/dtype.h"

#include <string.h>

size_t loom_dtype_size(enum loom_dtype dt) { return dt == LOOM_F32 ? 4 : 2; }

const char *loom_dtype_name(enum loom_dtype dt) {
    switch (dt) {
    case LOOM_F32: return "fp32";
    case LOOM_BF16: return "bf16";
    case LOOM_F16: return "fp16";
    }
    return "?";
}

static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* ---------------------------------------------------------------------------------------------- */
/* bf16                                                                                             */

uint16_t loom_f32_to_bf16(float x) {
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays quiet NaN */
    uint32_t lsb = (u >> 16) & 1u;
    u += 0x7fffu + lsb; /* ties to even; overflow carries into inf as it should */
    return (uint16_t)(u >> 16);
}

float loom_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

/* ---------------------------------------------------------------------------------------------- */
/* fp16                                                                                             */

uint16_t loom_f32_to_f16(float x) {
    uint32_t u = f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;          /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00u;         /* >= 65520 rounds to inf (and inf) */
    if (a < 0x38800000u) {                               /* below the smallest normal 2^-14 */
        if (a < 0x33000000u) return sign;                /* below half the smallest subnormal */
        /* subnormal: round(x * 2^24) to an integer mantissa, ties to even */
        uint32_t exp = a >> 23;
        uint32_t mant = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - exp;                      /* x * 2^24 = mant * 2^-(126 - exp) */
        uint32_t r = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (r & 1u))) r++;
        return sign | (uint16_t)r;
    }
    /* normal: rebias exponent 127 -> 15, keep 10 mantissa bits, round to nearest even */
    uint32_t r = a - 0x38000000u;                        /* exponent - 112 */
    uint32_t lsb = (r >> 13) & 1u;
    r += 0xfffu + lsb;
    return sign | (uint16_t)(r >> 13);
}

float loom_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        /* subnormal: mant * 2^-24 */
        float v = (float)mant * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

/* ---------------------------------------------------------------------------------------------- */

float loom_round_to(enum loom_dtype dt, float x) {
    switch (dt) {
    case LOOM_BF16: return loom_bf16_to_f32(loom_f32_to_bf16(x));
    case LOOM_F16: return loom_f16_to_f32(loom_f32_to_f16(x));
    case LOOM_F32: break;
    }
    return x;
}

void loom_round_array(enum loom_dtype dt, float *x, size_t n) {
    if (dt == LOOM_F32) return;
    for (size_t i = 0; i < n; i++) x[i] = loom_round_to(dt, x[i]);
}
