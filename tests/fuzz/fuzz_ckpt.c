/*
 * tests/fuzz/fuzz_ckpt.c — fuzz target: the checkpoint reader of `loom ckpt info` and `loom ckpt verify`
 * (train/ckpt_cli.c over checkpoints/ckpt.h's format), run on one file as the command runs them.
 *
 * The input is one of two things:
 *   - an HDF5 file (it starts with HDF5's signature), written as it is: damaged checkpoints;
 *   - otherwise a description of a checkpoint, one item a line, from which the target builds a well-formed
 *     HDF5 file with the HDF5 library: checkpoints whose structure, attributes, types, shapes, values and
 *     stored config are wrong in every way the format allows, which byte mutations of a real file would
 *     rarely produce without breaking HDF5's own checksums and B-trees first:
 *       g PATH                      a group (its parents made as needed)
 *       a PATH NAME TYPE VALUE      attribute NAME of the object at PATH; TYPE s (string; \n and \\ escapes),
 *                                   v (variable-length string), i (int64), i32, u8, d (float64), f (float32)
 *       d PATH TYPE DIMS VALUE [z]  dataset of TYPE f32, f64, f16, bf16, i64, i32 or s8 (8-byte strings), shape
 *                                   DIMS ("-" a scalar, else N or NxM... up to 5 dimensions), every element
 *                                   VALUE (a number, nan, inf, -inf); z: chunked and zstd-compressed
 *     Items the HDF5 library refuses are skipped. At most BUILD_ELEMENTS elements in all.
 * A rejected file must end in loom's input error; the HDF5 handles the abandoned command left open are
 * then closed (the library keeps them in tables of its own).
 *
 * Seeds (tests/fuzz/corpus/ckpt/): micro.h5, written by `loom train` for a one-layer MLA model of width 8,
 * and micro-bf16-zstd.h5, its `loom ckpt export --format hdf5 --dtype bf16`; micro.txt and
 * micro-zstd-nan.txt, descriptions of the same checkpoint (compressed, one tensor of NaNs), and moe.txt, of
 * a two-layer MoE model with bf16 weights and two data sources.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hdf5.h>

#include "checkpoints/h5x.h"
#include "tests/fuzz/fuzz.h"
#include "train/cli.h"

enum { BUILD_ELEMENTS = 1 << 20, LINE_MAX_BYTES = 1 << 16 };

static const char HDF5_SIGNATURE[8] = {'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};

/* ---------------------------------------------------------------------------------------------- */
/* building a file from a description                                                               */

/* The next space-separated word of *p (NULL at the end of the line). */
static char *word(char **p) {
    while (**p == ' ') (*p)++;
    if (!**p) return NULL;
    char *w = *p;
    while (**p && **p != ' ') (*p)++;
    if (**p) *(*p)++ = '\0';
    return w;
}

/* Undoes \n and \\ in place. */
static void unescape(char *s) {
    char *o = s;
    for (; *s; s++) {
        if (s[0] == '\\' && s[1] == 'n') *o++ = '\n', s++;
        else if (s[0] == '\\' && s[1] == '\\') *o++ = '\\', s++;
        else *o++ = *s;
    }
    *o = '\0';
}

/* The file type of a type name (the caller closes it), or -1. */
static hid_t type_of(const char *name) {
    if (strcmp(name, "f32") == 0 || strcmp(name, "f") == 0) return H5Tcopy(H5T_IEEE_F32LE);
    if (strcmp(name, "f64") == 0 || strcmp(name, "d") == 0) return H5Tcopy(H5T_IEEE_F64LE);
    if (strcmp(name, "i64") == 0 || strcmp(name, "i") == 0) return H5Tcopy(H5T_STD_I64LE);
    if (strcmp(name, "i32") == 0) return H5Tcopy(H5T_STD_I32LE);
    if (strcmp(name, "u8") == 0) return H5Tcopy(H5T_STD_U8LE);
    if (strcmp(name, "bf16") == 0) return loom_h5_bf16_type();
    if (strcmp(name, "f16") == 0) {
        hid_t t = H5Tcopy(H5T_IEEE_F32LE);
        H5Tset_fields(t, 15, 10, 5, 0, 10);
        H5Tset_precision(t, 16);
        H5Tset_offset(t, 0);
        H5Tset_size(t, 2);
        H5Tset_ebias(t, 15);
        return t;
    }
    if (strcmp(name, "s8") == 0) {
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, 8);
        return t;
    }
    return -1;
}

static double number_of(const char *text) {
    if (!text) return 0;
    if (strcmp(text, "nan") == 0) return NAN;
    if (strcmp(text, "inf") == 0) return INFINITY;
    if (strcmp(text, "-inf") == 0) return -INFINITY;
    return strtod(text, NULL);
}

/* a PATH NAME TYPE VALUE */
static void build_attr(hid_t f, char *rest) {
    char *path = word(&rest), *name = word(&rest), *type = word(&rest);
    if (!path || !name || !type) return;
    hid_t obj = H5Oopen(f, path, H5P_DEFAULT);
    if (obj < 0) return;
    hid_t space = H5Screate(H5S_SCALAR);
    if (strcmp(type, "s") == 0 || strcmp(type, "v") == 0) {
        unescape(rest);
        hid_t t = H5Tcopy(H5T_C_S1);
        int var = type[0] == 'v';
        H5Tset_size(t, var ? H5T_VARIABLE : (strlen(rest) ? strlen(rest) : 1));
        hid_t a = H5Acreate2(obj, name, t, space, H5P_DEFAULT, H5P_DEFAULT);
        if (a >= 0) {
            const char *v = rest;
            H5Awrite(a, t, var ? (const void *)&v : (const void *)rest);
            H5Aclose(a);
        }
        H5Tclose(t);
    } else {
        hid_t t = type_of(type);
        if (t >= 0) {
            double v = number_of(word(&rest));
            hid_t a = H5Acreate2(obj, name, t, space, H5P_DEFAULT, H5P_DEFAULT);
            if (a >= 0) {
                H5Awrite(a, H5T_NATIVE_DOUBLE, &v);
                H5Aclose(a);
            }
            H5Tclose(t);
        }
    }
    H5Sclose(space);
    H5Oclose(obj);
}

/* d PATH TYPE DIMS VALUE [z] */
static void build_dataset(hid_t f, hid_t lcpl, char *rest, size_t *budget) {
    char *path = word(&rest), *type = word(&rest), *dims_text = word(&rest), *value = word(&rest);
    char *flag = word(&rest);
    if (!path || !type || !dims_text) return;
    hsize_t dims[5];
    int ndim = 0;
    size_t numel = 1;
    if (strcmp(dims_text, "-") != 0) {
        for (char *d = dims_text; *d && ndim < 5;) {
            char *end;
            unsigned long long n = strtoull(d, &end, 10);
            if (end == d || n > BUILD_ELEMENTS || (n && numel > BUILD_ELEMENTS / n)) return;
            dims[ndim++] = n;
            numel *= (size_t)n;
            d = *end == 'x' ? end + 1 : end;
            if (*end && *end != 'x') return;
        }
    }
    if (numel > *budget) return;
    *budget -= numel;
    hid_t t = type_of(type);
    if (t < 0) return;
    hid_t space = ndim ? H5Screate_simple(ndim, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (flag && strcmp(flag, "z") == 0 && ndim > 0) {
        hsize_t chunk[5];
        for (int i = 0; i < ndim; i++) chunk[i] = dims[i] ? (dims[i] < 64 ? dims[i] : 64) : 1;
        H5Pset_chunk(dcpl, ndim, chunk);
        unsigned level = 3;
        H5Pset_filter(dcpl, LOOM_H5Z_ZSTD, H5Z_FLAG_MANDATORY, 1, &level);
    }
    hid_t d = H5Dcreate2(f, path, t, space, lcpl, dcpl, H5P_DEFAULT);
    if (d >= 0) {
        if (H5Tget_class(t) == H5T_STRING) {
            char *buf = calloc(numel ? numel : 1, 8);
            for (size_t i = 0; i < numel; i++) snprintf(buf + 8 * i, 8, "%s", value ? value : "");
            H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
            free(buf);
        } else {
            double v = number_of(value);
            double *buf = malloc(sizeof *buf * (numel ? numel : 1));
            for (size_t i = 0; i < numel; i++) buf[i] = v;
            H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
            free(buf);
        }
        H5Dclose(d);
    }
    H5Pclose(dcpl);
    H5Sclose(space);
    H5Tclose(t);
}

static void build_file(const char *path, const uint8_t *data, size_t size) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) fuzz_fail("cannot create %s", path);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    size_t budget = BUILD_ELEMENTS;
    char *line = malloc(LINE_MAX_BYTES);
    for (size_t at = 0; at < size;) {
        const uint8_t *nl = memchr(data + at, '\n', size - at);
        size_t len = (nl ? (size_t)(nl - data) : size) - at;
        size_t n = len < LINE_MAX_BYTES - 1 ? len : LINE_MAX_BYTES - 1;
        memcpy(line, data + at, n);
        line[n] = '\0';
        at += len + 1;
        char *rest = line;
        char *kind = word(&rest);
        if (!kind) continue;
        if (strcmp(kind, "g") == 0) {
            char *g = word(&rest);
            hid_t id = g ? H5Gcreate2(f, g, lcpl, H5P_DEFAULT, H5P_DEFAULT) : -1;
            if (id >= 0) H5Gclose(id);
        } else if (strcmp(kind, "a") == 0) {
            build_attr(f, rest);
        } else if (strcmp(kind, "d") == 0) {
            build_dataset(f, lcpl, rest, &budget);
        }
    }
    free(line);
    H5Pclose(lcpl);
    if (H5Fclose(f) < 0) fuzz_fail("cannot close %s", path);
}

/* ---------------------------------------------------------------------------------------------- */

/* Closes every HDF5 object still open: what a command stopped by an input error left behind. */
static void h5_close_all(void) {
    ssize_t n = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (n <= 0) return;
    hid_t *ids = malloc(sizeof *ids * (size_t)n);
    n = H5Fget_obj_ids(H5F_OBJ_ALL, H5F_OBJ_ALL, (size_t)n, ids);
    for (int pass = 0; pass < 2; pass++) {
        for (ssize_t i = 0; i < n; i++) {
            H5I_type_t type = H5Iget_type(ids[i]);
            if (pass == 0 && type == H5I_DATASET) H5Dclose(ids[i]);
            else if (pass == 0 && type == H5I_GROUP) H5Gclose(ids[i]);
            else if (pass == 0 && type == H5I_DATATYPE) H5Tclose(ids[i]);
            else if (pass == 0 && type == H5I_ATTR) H5Aclose(ids[i]);
            else if (pass == 1 && type == H5I_FILE) H5Fclose(ids[i]);
        }
    }
    free(ids);
}

static void finalize_mpi(void) {
    int done = 0;
    MPI_Finalized(&done);
    if (!done) MPI_Finalize();
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    MPI_Init(argc, argv);
    atexit(finalize_mpi);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    loom_h5_zstd_register();
    fuzz_set_cleanup(h5_close_all);
    return 0;
}

static void ckpt_run(void *arg) {
    char **argv = arg;
    loom_ckpt_main(3, argv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[4200];
    fuzz_dir_clear();
    fuzz_path(path, sizeof path, "step_00000001.h5");
    if (size >= sizeof HDF5_SIGNATURE && memcmp(data, HDF5_SIGNATURE, sizeof HDF5_SIGNATURE) == 0)
        fuzz_write_file(path, data, size);
    else
        build_file(path, data, size);
    char *info[] = {"ckpt", "info", path, NULL}, *verify[] = {"ckpt", "verify", path, NULL};
    fuzz_guarded(ckpt_run, info);
    fuzz_guarded(ckpt_run, verify);
    h5_close_all();
    return 0;
}
