/*
 * core/rng.h — counter-based random numbers: Philox4x32-10 (Salmon et al., "Parallel Random Numbers:
 * As Easy as 1, 2, 3", SC 2011).
 *
 * A value is a pure function of (seed, stream, index): any rank can produce any slice of a tensor's
 * initialisation or any sample's randomness without replaying a sequence, so results do not depend
 * on the parallel layout.
 */
#ifndef LOOM_CORE_RNG_H
#define LOOM_CORE_RNG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One Philox4x32-10 block: out = bijection of ctr under key. */
void loom_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* 64 random bits for (seed, stream, index). */
uint64_t loom_rng_u64(uint64_t seed, uint64_t stream, uint64_t index);
/* Uniform double in [0, 1) with 53 random bits. */
double loom_rng_uniform(uint64_t seed, uint64_t stream, uint64_t index);
/* Standard normal for (seed, stream, index) (Box-Muller over one Philox block per pair of indices). */
double loom_rng_normal(uint64_t seed, uint64_t stream, uint64_t index);
/* out[j] = mean + std * normal(seed, stream, offset + j), j < n. */
void loom_rng_normal_fill(float *out, size_t n, uint64_t seed, uint64_t stream, uint64_t offset,
                          float mean, float std);

#ifdef __cplusplus
}
#endif
#endif
