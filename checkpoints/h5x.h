/*
 * checkpoints/h5x.h — what loom adds to HDF5: a bf16 float type and the zstd filter.
 *
 * bf16 is an HDF5 float type of 16 bits with bf16's fields (sign bit 15, exponent bits 7..14 with bias
 * 127, mantissa bits 0..6, implied leading one), so HDF5 reads it as float like any other float and
 * h5py reads it as floats. Writing goes the other way round: HDF5 1.10's float -> bf16 conversion drops
 * the carry when rounding reaches the next power of two (-0.2498 becomes -0.125) and rounds ties away
 * from zero, so loom rounds with loom_f32_to_bf16 (round to nearest even) and writes the bf16 bits with
 * this type as both memory and file type (tests/unit/test_h5x.c measures both). The zstd filter compresses each chunk into one zstd frame under
 * filter id 32015, the id registered with The HDF Group and used by hdf5plugin and the HDF Group's
 * plugins, so their readers decode our files and ours decodes theirs; build/plugins/libh5zstd.so is
 * the same filter as a plugin for h5dump and h5py (HDF5_PLUGIN_PATH=build/plugins).
 */
#ifndef LOOM_CHECKPOINTS_H5X_H
#define LOOM_CHECKPOINTS_H5X_H

#include <hdf5.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { LOOM_H5Z_ZSTD = 32015 };

/* A new bf16 type (little-endian); the caller closes it with H5Tclose. */
hid_t loom_h5_bf16_type(void);
/* Registers the zstd filter with this process's HDF5 (once; later calls do nothing). */
void loom_h5_zstd_register(void);

#ifdef __cplusplus
}
#endif
#endif
