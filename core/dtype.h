/*
 * core/dtype.h — storage dtypes and their conversions.
 *
 * bf16 and fp16 are produced from fp32 by round-to-nearest-even, as GPU hardware stores them; fp16
 * overflows to inf and keeps subnormals. The CPU backend uses the round-trip functions to emulate
 * reduced precision at exactly the points where a GPU stores that dtype.
 */
#ifndef LOOM_CORE_DTYPE_H
#define LOOM_CORE_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum loom_dtype { LOOM_F32, LOOM_BF16, LOOM_F16 };

size_t loom_dtype_size(enum loom_dtype dt);
const char *loom_dtype_name(enum loom_dtype dt);

uint16_t loom_f32_to_bf16(float x);
float loom_bf16_to_f32(uint16_t h);
uint16_t loom_f32_to_f16(float x);
float loom_f16_to_f32(uint16_t h);

/* x rounded to dtype and back (identity for LOOM_F32) */
float loom_round_to(enum loom_dtype dt, float x);
void loom_round_array(enum loom_dtype dt, float *x, size_t n);

#ifdef __cplusplus
}
#endif
#endif
