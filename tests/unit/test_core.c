/*
 * tests/unit/test_core.c — storage dtypes (core/dtype.h) and counter-based random numbers
 * (core/rng.h).
 *
 * Conversions are checked against references written here a different way: rounding is done on the
 * value in double (the two representable neighbours at the target's precision, nearest wins, ties
 * to the even significand), and the result is encoded field by field, so the bit tricks of
 * core/dtype.c are not repeated. Hand-picked edge cases (ties both ways, overflow, subnormals, NaN,
 * signed zero) come first, then millions of random inputs with a fixed seed.
 *
 * Philox4x32-10 is pinned down by the known-answer vectors of Random123 (kat_vectors); the
 * distributions by sample moments over 1e6 draws, with tolerances of 6 standard errors.
 */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "core/dtype.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "tests/test.h"

/* ---------------------------------------------------------------------------------------------- */
/* helpers                                                                                          */

static uint64_t mix_state = 0x1234567887654321ull;
static uint64_t mix64(void) { return test_splitmix64(&mix_state); }

/* |a| (finite, >= 0) rounded to nearest, ties to even, in a binary format with `sig` significand
 * bits (implicit bit included) and smallest normal exponent emin; values that round to 2^emax_p1
 * or beyond are inf. Works on the value in double: a / ulp is exact, so floor() gives the lower
 * neighbour and the remainder decides. */
static double ref_round(double a, int sig, int emin, int emax_p1) {
    if (a == 0) return 0;
    int e;
    frexp(a, &e);                                    /* a in [2^(e-1), 2^e) */
    int ulp_exp = (e - 1 < emin ? emin : e - 1) - (sig - 1);
    double q = ldexp(a, -ulp_exp);
    double lo = floor(q), rem = q - lo;
    double r = rem > 0.5 ? lo + 1 : rem < 0.5 ? lo : (fmod(lo, 2.0) == 0 ? lo : lo + 1);
    double v = ldexp(r, ulp_exp);
    return v >= ldexp(1.0, emax_p1) ? INFINITY : v;
}

/* bf16: 8 significand bits, exponent range of fp32 */
static double ref_bf16_value(float x) { return ref_round(fabs((double)x), 8, -126, 128); }

/* Encode a value representable in bf16 (or inf) field by field. */
static uint16_t ref_bf16_encode(int neg, double v) {
    uint16_t sign = neg ? 0x8000 : 0;
    if (isinf(v)) return sign | 0x7f80;
    if (v < ldexp(1.0, -126)) return sign | (uint16_t)ldexp(v, 133); /* subnormal: v = mant * 2^-133 */
    int e;
    frexp(v, &e);                                                   /* v in [2^(e-1), 2^e) */
    uint16_t mant = (uint16_t)((ldexp(v, 1 - e) - 1.0) * 128.0);
    return sign | (uint16_t)((e - 1 + 127) << 7) | mant;
}

static double ref_bf16_decode(uint16_t h) {
    int neg = h >> 15, exp = (h >> 7) & 0xff, mant = h & 0x7f;
    double v;
    if (exp == 0xff) v = mant ? NAN : INFINITY;
    else if (exp == 0) v = ldexp(mant, -133);
    else v = ldexp(1.0 + mant / 128.0, exp - 127);
    return neg ? -v : v;
}

/* fp16: 11 significand bits, normal exponents -14..15 */
static double ref_f16_value(float x) { return ref_round(fabs((double)x), 11, -14, 16); }

static uint16_t ref_f16_encode(int neg, double v) {
    uint16_t sign = neg ? 0x8000 : 0;
    if (isinf(v)) return sign | 0x7c00;
    if (v < ldexp(1.0, -14)) return sign | (uint16_t)ldexp(v, 24);  /* subnormal: v = mant * 2^-24 */
    int e;
    frexp(v, &e);
    uint16_t mant = (uint16_t)((ldexp(v, 1 - e) - 1.0) * 1024.0);
    return sign | (uint16_t)((e - 1 + 15) << 10) | mant;
}

static double ref_f16_decode(uint16_t h) {
    int neg = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    double v;
    if (exp == 0x1f) v = mant ? NAN : INFINITY;
    else if (exp == 0) v = ldexp(mant, -24);
    else v = ldexp(1.0 + mant / 1024.0, exp - 15);
    return neg ? -v : v;
}

static int bf16_is_nan(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0; }
static int f16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }

/* The reference result for x: the encoded bits, or -1 for "any NaN". */
static int32_t ref_bf16(float x) {
    if (isnan(x)) return -1;
    return ref_bf16_encode(signbit(x) != 0, ref_bf16_value(x));
}

static int32_t ref_f16(float x) {
    if (isnan(x)) return -1;
    return ref_f16_encode(signbit(x) != 0, ref_f16_value(x));
}

/* Check one conversion against its reference; counts mismatches and remembers the first. */
struct conv_check {
    long n, bad;
    uint32_t first_in;
    uint16_t first_got;
    int32_t first_want;
};

static void conv_one(struct conv_check *c, float x, uint16_t got, int32_t want, int (*is_nan)(uint16_t)) {
    c->n++;
    int ok = want < 0 ? is_nan(got) : got == (uint16_t)want;
    if (ok) return;
    if (c->bad++ == 0) {
        c->first_in = f32_bits(x);
        c->first_got = got;
        c->first_want = want;
    }
}

static void conv_report(const struct conv_check *c, const char *name) {
    test_result(c->bad == 0, name, "%ld of %ld inputs differ; first: input bits 0x%08x (%.9g) got 0x%04x want %s0x%04x",
                c->bad, c->n, c->first_in, (double)bits_f32(c->first_in), c->first_got,
                c->first_want < 0 ? "NaN, not " : "", c->first_want < 0 ? 0 : (unsigned)c->first_want);
}

/* Expect an exact result for one named input. */
static void expect_bits(const char *name, float x, uint16_t got, uint16_t want) {
    test_result(got == want, name, "input %.9g (0x%08x): got 0x%04x want 0x%04x", (double)x, f32_bits(x), got, want);
}

/* ---------------------------------------------------------------------------------------------- */
/* bf16                                                                                             */

static void test_bf16_edges(void) {
    float one = 1.0f;
    float tie_down = 1.0f + 0x1p-8f;             /* halfway between 1 (even) and 1 + 2^-7 (odd) */
    float tie_up = 1.0f + 3 * 0x1p-8f;           /* halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even) */
    expect_bits("bf16_one", one, loom_f32_to_bf16(one), 0x3f80);
    expect_bits("bf16_tie_rounds_down_to_even", tie_down, loom_f32_to_bf16(tie_down), 0x3f80);
    expect_bits("bf16_tie_rounds_up_to_even", tie_up, loom_f32_to_bf16(tie_up), 0x3f82);
    expect_bits("bf16_above_tie_rounds_up", nextafterf(tie_down, 2.0f), loom_f32_to_bf16(nextafterf(tie_down, 2.0f)),
                0x3f81);
    expect_bits("bf16_below_tie_rounds_down", nextafterf(tie_up, 0.0f), loom_f32_to_bf16(nextafterf(tie_up, 0.0f)),
                0x3f81);
    expect_bits("bf16_negative_tie_down", -tie_down, loom_f32_to_bf16(-tie_down), 0xbf80);
    expect_bits("bf16_negative_tie_up", -tie_up, loom_f32_to_bf16(-tie_up), 0xbf82);
    expect_bits("bf16_negative_above_tie", -nextafterf(tie_down, 2.0f), loom_f32_to_bf16(-nextafterf(tie_down, 2.0f)),
                0xbf81);

    float maxf = bits_f32(0x7f7f0000u);          /* largest finite bf16, (2 - 2^-7) * 2^127 */
    float below_overflow = bits_f32(0x7f7f7fffu);
    float overflow_tie = bits_f32(0x7f7f8000u);  /* halfway to 2^128: the odd max rounds to inf */
    expect_bits("bf16_max_finite_stays", maxf, loom_f32_to_bf16(maxf), 0x7f7f);
    expect_bits("bf16_below_overflow_stays_finite", below_overflow, loom_f32_to_bf16(below_overflow), 0x7f7f);
    expect_bits("bf16_overflow_tie_to_inf", overflow_tie, loom_f32_to_bf16(overflow_tie), 0x7f80);
    expect_bits("bf16_flt_max_to_inf", FLT_MAX, loom_f32_to_bf16(FLT_MAX), 0x7f80);
    expect_bits("bf16_neg_flt_max_to_neg_inf", -FLT_MAX, loom_f32_to_bf16(-FLT_MAX), 0xff80);
    expect_bits("bf16_inf", INFINITY, loom_f32_to_bf16(INFINITY), 0x7f80);
    expect_bits("bf16_neg_inf", -INFINITY, loom_f32_to_bf16(-INFINITY), 0xff80);
    expect_bits("bf16_zero", 0.0f, loom_f32_to_bf16(0.0f), 0x0000);
    expect_bits("bf16_neg_zero", -0.0f, loom_f32_to_bf16(-0.0f), 0x8000);

    /* bf16 subnormals are multiples of 2^-133 */
    float sub1 = bits_f32(0x00010000u), half_sub = bits_f32(0x00008000u), above_half = bits_f32(0x00008001u);
    float sub_tie_1_2 = bits_f32(0x00018000u), tiny = bits_f32(0x00000001u), top_sub = bits_f32(0x007fffffu);
    expect_bits("bf16_smallest_subnormal_exact", sub1, loom_f32_to_bf16(sub1), 0x0001);
    expect_bits("bf16_half_smallest_subnormal_ties_to_zero", half_sub, loom_f32_to_bf16(half_sub), 0x0000);
    expect_bits("bf16_above_half_subnormal_rounds_up", above_half, loom_f32_to_bf16(above_half), 0x0001);
    expect_bits("bf16_subnormal_tie_to_even", sub_tie_1_2, loom_f32_to_bf16(sub_tie_1_2), 0x0002);
    expect_bits("bf16_fp32_denormal_to_zero", tiny, loom_f32_to_bf16(tiny), 0x0000);
    expect_bits("bf16_neg_fp32_denormal_to_neg_zero", -tiny, loom_f32_to_bf16(-tiny), 0x8000);
    expect_bits("bf16_subnormal_rounds_into_normal", top_sub, loom_f32_to_bf16(top_sub), 0x0080);

    /* NaN stays NaN, including payloads that live only in the low 16 bits (truncation would give inf) */
    uint32_t nans[] = {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0xffffffffu, 0x7f80ffffu, 0x7fbfffffu};
    int nan_ok = 1;
    uint32_t nan_bad = 0;
    uint16_t nan_got = 0;
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        uint16_t h = loom_f32_to_bf16(bits_f32(nans[i]));
        if (!bf16_is_nan(h) && nan_ok) nan_ok = 0, nan_bad = nans[i], nan_got = h;
    }
    test_result(nan_ok, "bf16_nan_stays_nan", "input 0x%08x gave 0x%04x, not a NaN", nan_bad, nan_got);
}

static void test_bf16_decode_all(void) {
    long bad = 0;
    uint32_t first = 0;
    float got_first = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float got = loom_bf16_to_f32((uint16_t)h);
        double want = ref_bf16_decode((uint16_t)h);
        int ok = isnan(want) ? isnan(got) : ((double)got == want && !signbit(got) == !(h >> 15));
        if (!ok && bad++ == 0) first = h, got_first = got;
    }
    test_result(bad == 0, "bf16_to_f32_exact_all_65536", "%ld patterns differ; first 0x%04x: got %.9g want %.9g", bad,
                first, (double)got_first, ref_bf16_decode((uint16_t)first));
}

static void test_bf16_random(void) {
    struct conv_check all = {0}, ties = {0};
    for (long i = 0; i < 2000000; i++) {
        float x = bits_f32((uint32_t)mix64());
        conv_one(&all, x, loom_f32_to_bf16(x), ref_bf16(x), bf16_is_nan);
    }
    /* random upper halves with the low half at, just below and just above a tie */
    static const uint32_t lows[] = {0x7fffu, 0x8000u, 0x8001u, 0x0000u, 0xffffu};
    for (long i = 0; i < 250000; i++) {
        uint64_t r = mix64();
        float x = bits_f32(((uint32_t)r & 0xffff0000u) | lows[(r >> 8) % 5]);
        conv_one(&ties, x, loom_f32_to_bf16(x), ref_bf16(x), bf16_is_nan);
    }
    conv_report(&all, "bf16_matches_reference_2M_random_bits");
    conv_report(&ties, "bf16_matches_reference_near_ties");
}

/* ---------------------------------------------------------------------------------------------- */
/* fp16                                                                                             */

static void test_f16_edges(void) {
    float tie_down = 1.0f + 0x1p-11f, tie_up = 1.0f + 3 * 0x1p-11f;
    expect_bits("f16_one", 1.0f, loom_f32_to_f16(1.0f), 0x3c00);
    expect_bits("f16_tie_rounds_down_to_even", tie_down, loom_f32_to_f16(tie_down), 0x3c00);
    expect_bits("f16_tie_rounds_up_to_even", tie_up, loom_f32_to_f16(tie_up), 0x3c02);
    expect_bits("f16_above_tie_rounds_up", nextafterf(tie_down, 2.0f), loom_f32_to_f16(nextafterf(tie_down, 2.0f)),
                0x3c01);
    expect_bits("f16_below_tie_rounds_down", nextafterf(tie_up, 0.0f), loom_f32_to_f16(nextafterf(tie_up, 0.0f)),
                0x3c01);
    expect_bits("f16_negative_tie_down", -tie_down, loom_f32_to_f16(-tie_down), 0xbc00);
    expect_bits("f16_negative_tie_up", -tie_up, loom_f32_to_f16(-tie_up), 0xbc02);

    expect_bits("f16_max_finite_65504", 65504.0f, loom_f32_to_f16(65504.0f), 0x7bff);
    expect_bits("f16_65519.99_stays_finite", 65519.99f, loom_f32_to_f16(65519.99f), 0x7bff);
    expect_bits("f16_65520_to_inf", 65520.0f, loom_f32_to_f16(65520.0f), 0x7c00);
    expect_bits("f16_neg_65520_to_neg_inf", -65520.0f, loom_f32_to_f16(-65520.0f), 0xfc00);
    expect_bits("f16_1e10_to_inf", 1e10f, loom_f32_to_f16(1e10f), 0x7c00);
    expect_bits("f16_flt_max_to_inf", FLT_MAX, loom_f32_to_f16(FLT_MAX), 0x7c00);
    expect_bits("f16_inf", INFINITY, loom_f32_to_f16(INFINITY), 0x7c00);
    expect_bits("f16_neg_inf", -INFINITY, loom_f32_to_f16(-INFINITY), 0xfc00);
    expect_bits("f16_zero", 0.0f, loom_f32_to_f16(0.0f), 0x0000);
    expect_bits("f16_neg_zero", -0.0f, loom_f32_to_f16(-0.0f), 0x8000);

    float s24 = 0x1p-24f, s25 = 0x1p-25f;
    expect_bits("f16_smallest_subnormal_2^-24", s24, loom_f32_to_f16(s24), 0x0001);
    expect_bits("f16_2^-25_ties_to_zero", s25, loom_f32_to_f16(s25), 0x0000);
    expect_bits("f16_neg_2^-25_ties_to_neg_zero", -s25, loom_f32_to_f16(-s25), 0x8000);
    expect_bits("f16_above_2^-25_rounds_to_2^-24", nextafterf(s25, 1.0f), loom_f32_to_f16(nextafterf(s25, 1.0f)),
                0x0001);
    expect_bits("f16_below_2^-25_to_zero", nextafterf(s25, 0.0f), loom_f32_to_f16(nextafterf(s25, 0.0f)), 0x0000);
    expect_bits("f16_subnormal_tie_3*2^-25_to_even", 3 * s25, loom_f32_to_f16(3 * s25), 0x0002);
    expect_bits("f16_subnormal_tie_5*2^-25_to_even", 5 * s25, loom_f32_to_f16(5 * s25), 0x0002);
    expect_bits("f16_2^-26_to_zero", 0x1p-26f, loom_f32_to_f16(0x1p-26f), 0x0000);
    expect_bits("f16_largest_subnormal", 1023 * s24, loom_f32_to_f16(1023 * s24), 0x03ff);
    expect_bits("f16_subnormal_tie_into_normal", 1023.5f * s24, loom_f32_to_f16(1023.5f * s24), 0x0400);
    expect_bits("f16_smallest_normal_2^-14", 0x1p-14f, loom_f32_to_f16(0x1p-14f), 0x0400);
    expect_bits("f16_neg_subnormal", -37 * s24, loom_f32_to_f16(-37 * s24), 0x8025);
    expect_bits("f16_fp32_denormal_to_zero", bits_f32(1), loom_f32_to_f16(bits_f32(1)), 0x0000);

    uint32_t nans[] = {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0xffffffffu, 0x7f801fffu};
    int nan_ok = 1;
    uint32_t nan_bad = 0;
    uint16_t nan_got = 0;
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        uint16_t h = loom_f32_to_f16(bits_f32(nans[i]));
        if (!f16_is_nan(h) && nan_ok) nan_ok = 0, nan_bad = nans[i], nan_got = h;
    }
    test_result(nan_ok, "f16_nan_stays_nan", "input 0x%08x gave 0x%04x, not a NaN", nan_bad, nan_got);
}

static void test_f16_all_halves(void) {
    long bad = 0, bad_rt = 0;
    uint32_t first = 0, first_rt = 0;
    float got_first = 0;
    uint16_t rt_got = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float x = loom_f16_to_f32((uint16_t)h);
        double want = ref_f16_decode((uint16_t)h);
        int ok = isnan(want) ? isnan(x) : ((double)x == want && !signbit(x) == !(h >> 15));
        if (!ok && bad++ == 0) first = h, got_first = x;
        if (f16_is_nan((uint16_t)h)) continue;
        uint16_t back = loom_f32_to_f16(x);
        if (back != h && bad_rt++ == 0) first_rt = h, rt_got = back;
    }
    test_result(bad == 0, "f16_to_f32_exact_all_65536", "%ld patterns differ; first 0x%04x: got %.9g want %.9g", bad,
                first, (double)got_first, ref_f16_decode((uint16_t)first));
    test_result(bad_rt == 0, "f16_round_trip_every_non_nan_half", "%ld halves differ; first 0x%04x came back 0x%04x",
                bad_rt, first_rt, rt_got);
}

static void test_f16_random(void) {
    struct conv_check range = {0}, ties = {0}, any = {0};
    /* sign random, fp32 exponent 2^-27 .. 2^17 (zero, subnormal, normal and overflow results), mantissa random */
    for (long i = 0; i < 2000000; i++) {
        uint64_t r = mix64();
        uint32_t exp = 127 - 27 + (uint32_t)((r >> 32) % 45);
        float x = bits_f32(((uint32_t)(r >> 63) << 31) | (exp << 23) | ((uint32_t)r & 0x7fffffu));
        conv_one(&range, x, loom_f32_to_f16(x), ref_f16(x), f16_is_nan);
    }
    /* normal-range inputs whose 13 dropped mantissa bits sit at, just below or just above a tie */
    static const uint32_t lows[] = {0x0fffu, 0x1000u, 0x1001u, 0x0000u, 0x1fffu};
    for (long i = 0; i < 250000; i++) {
        uint64_t r = mix64();
        uint32_t exp = 127 - 14 + (uint32_t)((r >> 32) % 31);
        uint32_t bits = ((uint32_t)(r >> 63) << 31) | (exp << 23) | ((uint32_t)r & 0x7fe000u) | lows[(r >> 40) % 5];
        float x = bits_f32(bits);
        conv_one(&ties, x, loom_f32_to_f16(x), ref_f16(x), f16_is_nan);
    }
    for (long i = 0; i < 500000; i++) {
        float x = bits_f32((uint32_t)mix64());
        conv_one(&any, x, loom_f32_to_f16(x), ref_f16(x), f16_is_nan);
    }
    conv_report(&range, "f16_matches_reference_2M_half_range");
    conv_report(&ties, "f16_matches_reference_near_ties");
    conv_report(&any, "f16_matches_reference_random_bits");
}

/* ---------------------------------------------------------------------------------------------- */
/* loom_round_to / loom_round_array                                                                 */

static void test_round_to(void) {
    enum { N = 4096 };
    static float x[N], arr[N];
    for (int i = 0; i < N; i++) {
        uint64_t r = mix64();
        /* mostly ordinary magnitudes, some arbitrary bit patterns (NaN, inf, huge, tiny) */
        x[i] = (i % 8 == 7) ? bits_f32((uint32_t)r) : (float)(((double)(r >> 11) * 0x1p-53 - 0.5) * 1e5);
    }
    enum loom_dtype dts[] = {LOOM_F32, LOOM_BF16, LOOM_F16};
    const char *names[] = {"round_to_f32_identity", "round_to_bf16_matches_scalar", "round_to_f16_matches_scalar"};
    const char *arr_names[] = {"round_array_f32_identity", "round_array_bf16_matches_scalar",
                               "round_array_f16_matches_scalar"};
    for (int d = 0; d < 3; d++) {
        long bad = 0, bad_arr = 0;
        int first = -1, first_arr = -1;
        memcpy(arr, x, sizeof arr);
        loom_round_array(dts[d], arr, N);
        for (int i = 0; i < N; i++) {
            float want = dts[d] == LOOM_F32 ? x[i]
                         : dts[d] == LOOM_BF16 ? loom_bf16_to_f32(loom_f32_to_bf16(x[i]))
                                               : loom_f16_to_f32(loom_f32_to_f16(x[i]));
            float got = loom_round_to(dts[d], x[i]);
            if (f32_bits(got) != f32_bits(want) && bad++ == 0) first = i;
            if (f32_bits(arr[i]) != f32_bits(want) && bad_arr++ == 0) first_arr = i;
        }
        int i0 = first < 0 ? 0 : first, i1 = first_arr < 0 ? 0 : first_arr;
        test_result(bad == 0, names[d], "%ld of %d differ; first input 0x%08x gave 0x%08x", bad, N, f32_bits(x[i0]),
                    f32_bits(loom_round_to(dts[d], x[i0])));
        test_result(bad_arr == 0, arr_names[d], "%ld of %d differ; first input 0x%08x gave 0x%08x", bad_arr, N,
                    f32_bits(x[i1]), f32_bits(arr[i1]));
    }
    test_result(loom_dtype_size(LOOM_F32) == 4 && loom_dtype_size(LOOM_BF16) == 2 && loom_dtype_size(LOOM_F16) == 2,
                "dtype_sizes", "got f32 %zu bf16 %zu f16 %zu, want 4 2 2", loom_dtype_size(LOOM_F32),
                loom_dtype_size(LOOM_BF16), loom_dtype_size(LOOM_F16));
}

/* ---------------------------------------------------------------------------------------------- */
/* Philox4x32-10                                                                                    */

static void test_philox_kat(void) {
    /* Random123 kat_vectors, philox4x32 with 10 rounds */
    static const struct {
        uint32_t ctr[4], key[2], want[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
        {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {0xffffffffu, 0xffffffffu},
         {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
        {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, {0xa4093822u, 0x299f31d0u},
         {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
    };
    for (int i = 0; i < 3; i++) {
        uint32_t out[4];
        loom_philox4x32(kat[i].ctr, kat[i].key, out);
        char name[32];
        snprintf(name, sizeof name, "philox4x32_10_kat_%d", i);
        test_result(memcmp(out, kat[i].want, sizeof out) == 0, name,
                    "got {0x%08x, 0x%08x, 0x%08x, 0x%08x} want {0x%08x, 0x%08x, 0x%08x, 0x%08x}", out[0], out[1], out[2],
                    out[3], kat[i].want[0], kat[i].want[1], kat[i].want[2], kat[i].want[3]);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* distributions                                                                                    */

enum { DRAWS = 1000000 };

static void expect_near(const char *name, double got, double want, double se) {
    test_result(fabs(got - want) <= 6 * se, name, "got %.6f want %.6f (|diff| %.3g > 6 standard errors = %.3g)", got,
                want, fabs(got - want), 6 * se);
}

static void test_uniform(void) {
    double s = 0, s2 = 0, lo = 1, hi = 0;
    for (long i = 0; i < DRAWS; i++) {
        double u = loom_rng_uniform(1234, 7, (uint64_t)i);
        s += u;
        s2 += u * u;
        if (u < lo) lo = u;
        if (u > hi) hi = u;
    }
    double mean = s / DRAWS, var = s2 / DRAWS - mean * mean;
    test_result(lo >= 0.0 && hi < 1.0, "uniform_in_0_1", "min %.17g max %.17g over %d draws", lo, hi, DRAWS);
    expect_near("uniform_mean", mean, 0.5, sqrt(1.0 / 12 / DRAWS));
    /* sample variance of U(0,1): standard error sqrt((mu4 - sigma^4) / n) = sqrt(1/180 / n) */
    expect_near("uniform_variance", var, 1.0 / 12, sqrt(1.0 / 180 / DRAWS));
}

static void test_normal(void) {
    double s = 0, s2 = 0;
    long within = 0;
    for (long i = 0; i < DRAWS; i++) {
        double z = loom_rng_normal(99, 3, (uint64_t)i);
        s += z;
        s2 += z * z;
        within += fabs(z) < 1.0;
    }
    double mean = s / DRAWS, var = s2 / DRAWS - mean * mean, p = 0.682689492137086;
    expect_near("normal_mean", mean, 0.0, sqrt(1.0 / DRAWS));
    expect_near("normal_variance", var, 1.0, sqrt(2.0 / DRAWS));
    expect_near("normal_within_one_sigma", (double)within / DRAWS, p, sqrt(p * (1 - p) / DRAWS));
}

/* How many of the first n draws coincide between two (seed, stream, index offset) triples. */
static int count_equal_u64(uint64_t seed_a, uint64_t stream_a, uint64_t off_a, uint64_t seed_b, uint64_t stream_b,
                           uint64_t off_b, int n) {
    int eq = 0;
    for (int i = 0; i < n; i++)
        eq += loom_rng_u64(seed_a, stream_a, off_a + (uint64_t)i) == loom_rng_u64(seed_b, stream_b, off_b + (uint64_t)i);
    return eq;
}

static void test_streams(void) {
    /* each pair differs in one input only, including the high 32 bits of each 64-bit word */
    struct {
        const char *name;
        uint64_t a[3], b[3];
    } pairs[] = {
        {"rng_seeds_differ", {1, 0, 0}, {2, 0, 0}},
        {"rng_seed_high_bits_matter", {1, 0, 0}, {1 + (1ull << 32), 0, 0}},
        {"rng_streams_differ", {1, 0, 0}, {1, 1, 0}},
        {"rng_stream_high_bits_matter", {1, 5, 0}, {1, 5 + (1ull << 32), 0}},
        {"rng_index_high_bits_matter", {1, 0, 0}, {1, 0, 1ull << 32}},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        int eq = count_equal_u64(pairs[i].a[0], pairs[i].a[1], pairs[i].a[2], pairs[i].b[0], pairs[i].b[1],
                                 pairs[i].b[2], 1000);
        test_result(eq == 0, pairs[i].name, "%d of 1000 draws equal", eq);
    }
    double n_a = loom_rng_normal(1, 0, 10), n_b = loom_rng_normal(2, 0, 10), n_c = loom_rng_normal(1, 1, 10);
    test_result(n_a != n_b && n_a != n_c, "rng_normal_depends_on_seed_and_stream", "normal(1,0,10) %.17g, (2,0,10) %.17g, (1,1,10) %.17g",
                n_a, n_b, n_c);
    test_result(loom_rng_u64(42, 9, 123456) == loom_rng_u64(42, 9, 123456) &&
                    loom_rng_normal(42, 9, 77) == loom_rng_normal(42, 9, 77),
                "rng_pure_function", "two calls with the same (seed, stream, index) differ");
}

static void test_normal_fill(void) {
    enum { N = 10000, K = 1237, M = 3001 };   /* odd offset: the slice starts inside a Box-Muller pair */
    static float whole[N], again[N], slice[M], threads1[N];
    const float mean = 0.25f, std = 0.02f;
    loom_rng_normal_fill(whole, N, 2024, 11, 0, mean, std);
    loom_rng_normal_fill(again, N, 2024, 11, 0, mean, std);
    loom_rng_normal_fill(slice, M, 2024, 11, K, mean, std);
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    loom_rng_normal_fill(threads1, N, 2024, 11, 0, mean, std);
    omp_set_num_threads(saved);

    int first = -1;
    for (int j = 0; j < M && first < 0; j++)
        if (f32_bits(slice[j]) != f32_bits(whole[K + j])) first = j;
    test_result(first < 0, "normal_fill_slice_equals_whole", "slice[%d] = %.9g but whole[%d] = %.9g", first,
                first < 0 ? 0.0 : (double)slice[first], K + first, first < 0 ? 0.0 : (double)whole[K + first]);
    test_result(memcmp(whole, again, sizeof whole) == 0, "normal_fill_same_run_to_run", "two fills differ");
    test_result(memcmp(whole, threads1, sizeof whole) == 0, "normal_fill_independent_of_threads",
                "fill with %d threads differs from fill with 1", saved);

    int bad = -1;
    for (int j = 0; j < N && bad < 0; j++) {
        double z = loom_rng_normal(2024, 11, (uint64_t)j);
        if (fabs(whole[j] - (mean + std * z)) > 1e-6 * (fabs(mean) + std * fabs(z))) bad = j;
    }
    test_result(bad < 0, "normal_fill_is_mean_plus_std_normal", "element %d: got %.9g want %.9g", bad,
                bad < 0 ? 0.0 : (double)whole[bad], bad < 0 ? 0.0 : mean + std * loom_rng_normal(2024, 11, (uint64_t)bad));
    int diff = 0;
    loom_rng_normal_fill(again, N, 2025, 11, 0, mean, std);
    for (int j = 0; j < N; j++) diff += again[j] != whole[j];
    test_result(diff > N - 10, "normal_fill_depends_on_seed", "only %d of %d values changed with the seed", diff, N);
}

/* ---------------------------------------------------------------------------------------------- */

/* ---------------------------------------------------------------------------------------------- */
/* shapes                                                                                           */

static void test_shapes(void) {
    struct loom_shape a = loom_shape_2d(2048, 6144), b = loom_shape_1d(2048);
    struct loom_shape c = {.ndim = 4, .dims = {2, 3, 5, 7}};
    test_result(loom_shape_numel(&a) == 2048LL * 6144, "tensor.numel.2d", "got %lld", (long long)loom_shape_numel(&a));
    test_result(loom_shape_numel(&c) == 210, "tensor.numel.4d", "got %lld", (long long)loom_shape_numel(&c));
    test_result(!loom_shape_equal(&a, &b) && loom_shape_equal(&a, &a), "tensor.equal", "equality is wrong");
    char buf[64];
    int len = loom_shape_format(&a, buf, sizeof buf);
    test_result(strcmp(buf, "[2048, 6144]") == 0 && len == 12, "tensor.format.2d", "got \"%s\" (%d)", buf, len);
    loom_shape_format(&b, buf, sizeof buf);
    test_result(strcmp(buf, "[2048]") == 0, "tensor.format.1d", "got \"%s\"", buf);
    char small[6];
    len = loom_shape_format(&c, small, sizeof small);
    test_result(len == 12 && strcmp(small, "[2, 3") == 0, "tensor.format.truncated", "got \"%s\" (%d)", small, len);
    struct loom_tensor t = {.data = NULL, .dtype = LOOM_BF16, .shape = c};
    test_result(loom_tensor_bytes(&t) == 420, "tensor.bytes.bf16", "got %zu", loom_tensor_bytes(&t));
}

int main(void) {
    test_shapes();
    test_bf16_edges();
    test_bf16_decode_all();
    test_bf16_random();
    test_f16_edges();
    test_f16_all_halves();
    test_f16_random();
    test_round_to();
    test_philox_kat();
    test_uniform();
    test_normal();
    test_streams();
    test_normal_fill();
    return test_exit();
}
