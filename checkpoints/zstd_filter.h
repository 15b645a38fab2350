/*
 * checkpoints/zstd_filter.h — the zstd filter's class, shared by the library (h5x.c registers it) and
 * the plugin (plugin/h5zstd_plugin.c hands it to HDF5). It calls no HDF5 function, so the plugin can be
 * loaded by any HDF5 library without linking one.
 */
#ifndef LOOM_CHECKPOINTS_ZSTD_FILTER_H
#define LOOM_CHECKPOINTS_ZSTD_FILTER_H

#include <hdf5.h>

extern const H5Z_class2_t loom_zstd_filter_class;

#endif
