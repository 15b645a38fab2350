/*
 * core/rng.c — Philox4x32-10, checked against the known-answer vectors of the Random123 paper's
 * reference (see tests/unit/test_core.c).
 */
#include "core/rng.h"

#include <math.h>

enum { PHILOX_ROUNDS = 10 };
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void loom_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < PHILOX_ROUNDS; r++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0, c1 = n1, c2 = n2, c3 = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

static void philox_block(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]) {
    uint32_t ctr[4] = {(uint32_t)index, (uint32_t)(index >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    loom_philox4x32(ctr, key, out);
}

uint64_t loom_rng_u64(uint64_t seed, uint64_t stream, uint64_t index) {
    uint32_t r[4];
    philox_block(seed, stream, index, r);
    return ((uint64_t)r[0] << 32) | r[1];
}

static double bits_to_unit(uint32_t hi, uint32_t lo) {
    return (double)((((uint64_t)hi << 32) | lo) >> 11) * 0x1.0p-53;
}

double loom_rng_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
    uint32_t r[4];
    philox_block(seed, stream, index, r);
    return bits_to_unit(r[0], r[1]);
}

double loom_rng_normal(uint64_t seed, uint64_t stream, uint64_t index) {
    /* indices 2i and 2i+1 share block i: the cosine and sine halves of one Box-Muller pair */
    uint32_t r[4];
    philox_block(seed, stream, index >> 1, r);
    double u1 = 1.0 - bits_to_unit(r[0], r[1]); /* (0, 1] so the log is finite */
    double u2 = bits_to_unit(r[2], r[3]);
    double rad = sqrt(-2.0 * log(u1));
    double ang = 6.283185307179586 * u2;
    return (index & 1) ? rad * sin(ang) : rad * cos(ang);
}

void loom_rng_normal_fill(float *out, size_t n, uint64_t seed, uint64_t stream, uint64_t offset, float mean,
                          float std) {
#pragma omp parallel for schedule(static)
    for (size_t j = 0; j < n; j++) out[j] = mean + std * (float)loom_rng_normal(seed, stream, offset + j);
}
