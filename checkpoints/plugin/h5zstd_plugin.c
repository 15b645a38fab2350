/*
 * checkpoints/plugin/h5zstd_plugin.c — the zstd filter (checkpoints/zstd_filter.c) as an HDF5 plugin:
 * HDF5 finds it in HDF5_PLUGIN_PATH when a dataset names filter 32015 and no such filter is registered.
 */
#include <H5PLextern.h>

#include "checkpoints/zstd_filter.h"

H5PL_type_t H5PLget_plugin_type(void) { return H5PL_TYPE_FILTER; }
const void *H5PLget_plugin_info(void) { return &loom_zstd_filter_class; }
