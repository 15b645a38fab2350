/*
 * checkpoints/h5x.c — the bf16 type and the zstd filter's registration (see h5x.h).
 */
#include "checkpoints/h5x.h"

#include "checkpoints/zstd_filter.h"
#include "core/error.h"

hid_t loom_h5_bf16_type(void) {
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    /* the order of the calls matters: HDF5 checks each field against the current size and precision */
    CHECK(t >= 0 && H5Tset_fields(t, 15, 7, 8, 0, 7) >= 0 && H5Tset_precision(t, 16) >= 0 && H5Tset_offset(t, 0) >= 0 &&
              H5Tset_size(t, 2) >= 0 && H5Tset_ebias(t, 127) >= 0,
          "cannot make the HDF5 bf16 type");
    return t;
}

void loom_h5_zstd_register(void) {
    if (H5Zfilter_avail(LOOM_H5Z_ZSTD) > 0) return;
    CHECK(H5Zregister(&loom_zstd_filter_class) >= 0, "cannot register the zstd HDF5 filter");
}
