/*
 * train/ckpt_cli.c — `loom ckpt`: look into, check and export the HDF5 checkpoints of checkpoints/ckpt.h.
 *
 *   loom ckpt info PATH      the meta data, the model the config describes, every tensor with its shape,
 *                            dtype and size, and totals
 *   loom ckpt verify PATH    format and version; /model against the parameter table of the config stored in
 *                            the file (names and shapes both ways), the router biases of the MoE blocks, both
 *                            AdamW moments of every weight when /optim is there, every value finite
 *   loom ckpt export PATH --format safetensors --out DIR [--dtype bf16|fp32] [--force]
 *                            DIR/model.safetensors with Hugging Face names and DIR/config.json (youtu for
 *                            dense MLA models, dots1 for MHA + MoE models, else model_type "loom")
 *   loom ckpt export PATH --format hdf5 --out FILE.h5 [--dtype bf16|fp32] [--force]
 *                            /model and /buffers chunked (the whole tensor, or blocks of rows of at most 1 MiB)
 *                            and compressed with zstd (HDF5 filter 32015), and the root attributes: the release
 *
 * These run without MPI: serial HDF5 on the default file access list, one tensor at a time, read in blocks of
 * rows so that memory stays bounded whatever the model size. Bad files exit 2 naming the file and the problem.
 *
 * Exported bf16 is rounded to nearest even by core/dtype.h and written as raw bf16 bits. HDF5's own float to
 * bf16 conversion is not used: HDF5 1.10.8 halves a value whose rounding carries into the exponent (about one
 * weight in 256), rounds ties away from zero and mis-rounds subnormals (measured by tests/unit/test_h5x.c).
 * The router biases (e_score_correction_bias) stay fp32 in every export, as in the Hugging Face checkpoints of
 * DeepSeek-V3 and dots.llm1, whose routers run in fp32.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <hdf5.h>

#include "checkpoints/ckpt.h"
#include "checkpoints/h5x.h"
#include "core/config.h"
#include "core/dtype.h"
#include "core/error.h"
#include "model/params.h"
#include "train/cli.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the safetensors writer assumes a little-endian host"
#endif

static const char *USAGE =
    "loom ckpt info PATH | verify PATH | export PATH --format safetensors|hdf5 --out DIR|FILE.h5 "
    "[--dtype bf16|fp32] [--force]";

enum { NAME_MAX_LEN = 160, BLOCK_FLOATS = 1 << 22, CHUNK_BYTES = 1 << 20 };

/* ---------------------------------------------------------------------------------------------- */
/* the file and its attributes                                                                      */

/* String attribute NAME of obj, malloc'd (fixed-length of any padding, or variable-length); NULL when absent
 * or not a string. */
static char *attr_string(hid_t obj, const char *name) {
    if (H5Aexists(obj, name) <= 0) return NULL;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t type = H5Aget_type(a);
    char *s = NULL;
    if (a >= 0 && type >= 0 && H5Tget_class(type) == H5T_STRING) {
        if (H5Tis_variable_str(type) > 0) {
            hid_t mem = H5Tcopy(H5T_C_S1);
            H5Tset_size(mem, H5T_VARIABLE);
            H5Tset_cset(mem, H5Tget_cset(type)); /* HDF5 converts between no two character sets (h5py: UTF-8) */
            char *v = NULL;
            if (H5Aread(a, mem, &v) >= 0 && v) {
                s = strdup(v);
                H5free_memory(v);
            }
            H5Tclose(mem);
        } else {
            size_t n = H5Tget_size(type);
            s = calloc_check(n + 1, 1);
            if (H5Aread(a, type, s) < 0) {
                free(s);
                s = NULL;
            } else if (H5Tget_strpad(type) == H5T_STR_SPACEPAD) {
                while (n > 0 && s[n - 1] == ' ') s[--n] = '\0';
            }
        }
    }
    if (type >= 0) H5Tclose(type);
    if (a >= 0) H5Aclose(a);
    return s;
}

/* Integer attribute NAME of obj (any integer type); 0 on success, -1 when absent or not an integer. */
static int attr_int64(hid_t obj, const char *name, int64_t *out) {
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t type = H5Aget_type(a);
    int rc = H5Tget_class(type) == H5T_INTEGER && H5Aread(a, H5T_NATIVE_INT64, out) >= 0 ? 0 : -1;
    H5Tclose(type);
    H5Aclose(a);
    return rc;
}

static int attr_double(hid_t obj, const char *name, double *out) {
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t type = H5Aget_type(a);
    H5T_class_t c = H5Tget_class(type);
    int rc = (c == H5T_FLOAT || c == H5T_INTEGER) && H5Aread(a, H5T_NATIVE_DOUBLE, out) >= 0 ? 0 : -1;
    H5Tclose(type);
    H5Aclose(a);
    return rc;
}

/* Opens PATH read-only; exits 2 when it is missing, not HDF5, damaged, or not a loom checkpoint of a
 * version this build reads. */
static hid_t ckpt_open(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) loom_input_error(path, NULL, "cannot open: %s", strerror(errno));
    if (S_ISDIR(st.st_mode)) loom_input_error(path, "give a checkpoint file (step_NNNNNNNN.h5)", "is a folder");
#if H5_VERSION_GE(1, 12, 0)
    htri_t hdf5 = H5Fis_accessible(path, H5P_DEFAULT);
#else
    htri_t hdf5 = H5Fis_hdf5(path);
#endif
    if (hdf5 <= 0) loom_input_error(path, NULL, "not an HDF5 file");
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) loom_input_error(path, NULL, "HDF5 cannot open it: truncated or damaged");
    char *format = attr_string(f, "format");
    if (!format) loom_input_error(path, NULL, "no format string attribute: not a loom checkpoint");
    if (strcmp(format, LOOM_CKPT_FORMAT) != 0)
        loom_input_error(path, NULL, "format attribute is \"%s\", not \"%s\"", format, LOOM_CKPT_FORMAT);
    free(format);
    int64_t version;
    if (attr_int64(f, "version", &version) != 0) loom_input_error(path, NULL, "no integer version attribute");
    if (version != LOOM_CKPT_VERSION)
        loom_input_error(path, "a newer or older loom wrote it", "format version %lld; this loom reads version %d",
                         (long long)version, LOOM_CKPT_VERSION);
    return f;
}

/* The run's config, from the config attribute; 0 when the file has none. It is validated as the run
 * validated it (so a damaged one cannot reach the parameter table or a division by a zero size), with
 * errors naming the file. */
static int ckpt_config(hid_t f, const char *path, struct loom_config *cfg) {
    char *text = attr_string(f, "config");
    if (!text) return 0;
    char where[512];
    snprintf(where, sizeof where, "%s (config attribute)", path);
    loom_config_init(cfg);
    loom_config_load_string(cfg, text, where);
    free(text);
    loom_error_set_context(where);
    loom_config_validate(cfg, 0);
    loom_error_set_context(NULL);
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* the datasets of a group                                                                          */

struct entry {
    char name[NAME_MAX_LEN];       /* within its group */
    int ndim;
    hsize_t dims[LOOM_MAX_DIMS];
    int64_t numel;
    const char *dtype;             /* fp32, bf16, fp16, fp64, int64, ... */
    size_t type_size;
    int is_float;
    hsize_t stored;                /* bytes in the file (after any filter) */
};

struct entries {
    struct entry *e;
    int n, cap;
};

static const char *dtype_name(hid_t type) {
    size_t size = H5Tget_size(type);
    switch (H5Tget_class(type)) {
    case H5T_FLOAT: {
        size_t spos, epos, esize, mpos, msize;
        H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize);
        if (size == 2) return esize == 8 ? "bf16" : "fp16";
        return size == 4 ? "fp32" : size == 8 ? "fp64" : "float";
    }
    case H5T_INTEGER: {
        int sign = H5Tget_sign(type) == H5T_SGN_2;
        return size == 1 ? (sign ? "int8" : "uint8") : size == 2 ? (sign ? "int16" : "uint16")
             : size == 4 ? (sign ? "int32" : "uint32") : size == 8 ? (sign ? "int64" : "uint64") : "int";
    }
    case H5T_STRING: return "string";
    default: return "other";
    }
}

/* "layers.10" after "layers.9": digit runs compare as numbers */
static int natural_cmp(const char *a, const char *b) {
    while (*a && *b) {
        if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
            char *ea, *eb;
            unsigned long long x = strtoull(a, &ea, 10), y = strtoull(b, &eb, 10);
            if (x != y) return x < y ? -1 : 1;
            if (ea - a != eb - b) return ea - a < eb - b ? -1 : 1; /* "01" is not "1" */
            a = ea, b = eb;
            continue;
        }
        if (*a != *b) return (unsigned char)*a - (unsigned char)*b;
        a++, b++;
    }
    return (unsigned char)*a - (unsigned char)*b;
}

static int entry_cmp(const void *a, const void *b) {
    return natural_cmp(((const struct entry *)a)->name, ((const struct entry *)b)->name);
}

/* H5Literate's callback cannot stop the program (exiting inside an HDF5 call crashes HDF5's own clean-up at
 * exit): it stops the iteration with the problem in `error`, which list_group then reports. */
struct list_ctx {
    struct entries *list;
    const char *path, *group;
    char error[2 * NAME_MAX_LEN];
};

static herr_t list_one(hid_t g, const char *name, const H5L_info_t *info, void *data) {
    (void)info;
    struct list_ctx *c = data;
    hid_t o = H5Oopen(g, name, H5P_DEFAULT);
    if (o < 0) {
        snprintf(c->error, sizeof c->error, "%s/%.*s: cannot open", c->group, NAME_MAX_LEN, name);
        return -1;
    }
    int is_dataset = H5Iget_type(o) == H5I_DATASET;
    H5Oclose(o);
    if (!is_dataset) return 0;
    if (strlen(name) >= NAME_MAX_LEN) {
        snprintf(c->error, sizeof c->error, "%s/%.*s...: name too long", c->group, NAME_MAX_LEN, name);
        return -1;
    }
    struct entries *l = c->list;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->e = realloc(l->e, (size_t)l->cap * sizeof *l->e);
        CHECK(l->e != NULL, "out of memory");
    }
    struct entry *e = &l->e[l->n];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    hid_t d = H5Dopen2(g, name, H5P_DEFAULT);
    hid_t space = d >= 0 ? H5Dget_space(d) : -1, type = d >= 0 ? H5Dget_type(d) : -1;
    int ok = space >= 0 && type >= 0;
    if (!ok) snprintf(c->error, sizeof c->error, "%s/%s: cannot open the dataset", c->group, name);
    e->ndim = ok ? H5Sget_simple_extent_ndims(space) : 0;
    if (ok && (e->ndim < 0 || e->ndim > LOOM_MAX_DIMS)) {
        snprintf(c->error, sizeof c->error, "%s/%s: %d dimensions (at most %d)", c->group, name, e->ndim,
                 LOOM_MAX_DIMS);
        ok = 0;
    }
    if (ok) {
        H5Sget_simple_extent_dims(space, e->dims, NULL);
        e->type_size = H5Tget_size(type);
        /* numel and its bytes fit int64 (a damaged file can claim any shape) */
        int64_t n = 1;
        for (int i = 0; ok && i < e->ndim; i++)
            ok = e->dims[i] <= INT64_MAX && !__builtin_mul_overflow(n, (int64_t)e->dims[i], &n);
        int64_t bytes;
        ok = ok && !__builtin_mul_overflow(n, (int64_t)e->type_size, &bytes);
        if (!ok) snprintf(c->error, sizeof c->error, "%s/%s: the shape is too large", c->group, name);
        e->numel = n;
    }
    if (ok) {
        e->dtype = dtype_name(type);
        e->is_float = H5Tget_class(type) == H5T_FLOAT;
        e->stored = H5Dget_storage_size(d);
        l->n++;
    }
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    if (d >= 0) H5Dclose(d);
    return ok ? 0 : -1;
}

/* The datasets directly under GROUP (e.g. "/model"), in natural name order; 0 when there is no such group. */
static int list_group(hid_t f, const char *path, const char *group, struct entries *out) {
    memset(out, 0, sizeof *out);
    if (H5Lexists(f, group, H5P_DEFAULT) <= 0) return 0;
    hid_t g = H5Gopen2(f, group, H5P_DEFAULT);
    if (g < 0) loom_input_error(path, NULL, "%s is not a group", group);
    struct list_ctx c = {.list = out, .path = path, .group = group};
    if (H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, NULL, list_one, &c) < 0) {
        H5Gclose(g);
        if (c.error[0]) loom_input_error(path, NULL, "%s", c.error);
        loom_input_error(path, NULL, "%s: cannot list its datasets", group);
    }
    H5Gclose(g);
    if (out->n) qsort(out->e, (size_t)out->n, sizeof *out->e, entry_cmp);
    return 1;
}

/* by binary search: lists are in natural name order (a 142B model has ~24k tensors in a group) */
static const struct entry *entries_find(const struct entries *l, const char *name) {
    int lo = 0, hi = l->n;
    while (lo < hi) {
        int mid = (lo + hi) / 2, c = natural_cmp(l->e[mid].name, name);
        if (c == 0) return &l->e[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

static void shape_text(const struct entry *e, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < e->ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%llu", i ? ", " : "", (unsigned long long)e->dims[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

/* ---------------------------------------------------------------------------------------------- */
/* reading a tensor in blocks of rows, as float                                                     */

struct blocks {
    const char *path;
    char dset_path[NAME_MAX_LEN + 32];
    hid_t dset, fspace;
    int ndim;
    hsize_t dims[LOOM_MAX_DIMS];
    hsize_t rows, row_elems, per_block, next;
    float *buf;                    /* [per_block * row_elems] */
};

/* Whether the file stores every element of dataset d: contiguous data of its whole size, or every chunk. A
 * dataset created but not (wholly) written reads as its fill value, which would pass for data, and its shape
 * alone could claim any size. (H5Dget_space_status cannot tell: HDF5 1.10 calls compressed chunks partly
 * allocated.) */
static int dataset_written(hid_t d, const struct entry *e) {
    if (e->numel == 0) return 1;
    hid_t dcpl = H5Dget_create_plist(d);
    H5D_layout_t layout = dcpl >= 0 ? H5Pget_layout(dcpl) : H5D_LAYOUT_ERROR;
    int ok = layout != H5D_LAYOUT_ERROR;
    if (layout == H5D_CONTIGUOUS) {
        ok = H5Dget_storage_size(d) >= (hsize_t)e->numel * e->type_size;
    } else if (layout == H5D_CHUNKED) {
        hsize_t chunk[H5S_MAX_RANK], want = 1, have = 0;
        hid_t space = H5Dget_space(d); /* HDF5 1.10 does not take H5S_ALL here */
        ok = space >= 0 && H5Pget_chunk(dcpl, H5S_MAX_RANK, chunk) == e->ndim &&
             H5Dget_num_chunks(d, space, &have) >= 0;
        if (space >= 0) H5Sclose(space);
        for (int i = 0; ok && i < e->ndim; i++) {
            ok = chunk[i] > 0;
            if (ok) want *= (e->dims[i] + chunk[i] - 1) / chunk[i];
        }
        ok = ok && have == want;
    }
    if (dcpl >= 0) H5Pclose(dcpl);
    return ok;
}

/* rows_multiple: blocks hold a multiple of this many rows (a chunk's rows, for whole-chunk writes) */
static void blocks_open(struct blocks *b, hid_t f, const char *path, const char *group, const struct entry *e,
                        hsize_t rows_multiple) {
    memset(b, 0, sizeof *b);
    b->path = path;
    snprintf(b->dset_path, sizeof b->dset_path, "%s/%s", group, e->name);
    b->dset = H5Dopen2(f, b->dset_path, H5P_DEFAULT);
    if (b->dset < 0) loom_input_error(path, NULL, "%s: cannot open the dataset", b->dset_path);
    if (!dataset_written(b->dset, e))
        loom_input_error(path, "the file is incomplete: use an earlier checkpoint",
                         "%s: the data were never written (wholly)", b->dset_path);
    b->fspace = H5Dget_space(b->dset);
    b->ndim = e->ndim;
    memcpy(b->dims, e->dims, sizeof b->dims);
    b->rows = e->ndim ? e->dims[0] : 1;
    b->row_elems = 1;
    for (int i = 1; i < e->ndim; i++) b->row_elems *= e->dims[i];
    hsize_t per = b->row_elems ? BLOCK_FLOATS / b->row_elems : 1;
    per = per / rows_multiple * rows_multiple;
    if (per < rows_multiple) per = rows_multiple;
    b->per_block = per < b->rows ? per : b->rows;
    size_t floats = (size_t)(b->per_block ? b->per_block : 1) * (b->row_elems ? b->row_elems : 1);
    b->buf = malloc_check(floats * sizeof(float));
}

/* The next block: its first row in *row0, its float count returned (0 at the end). */
static size_t blocks_next(struct blocks *b, hsize_t *row0) {
    if (b->next >= b->rows || b->row_elems == 0) return 0;
    hsize_t n = b->rows - b->next < b->per_block ? b->rows - b->next : b->per_block;
    *row0 = b->next;
    herr_t rc;
    if (b->ndim == 0) {
        rc = H5Dread(b->dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, b->buf);
    } else {
        hsize_t start[LOOM_MAX_DIMS] = {0}, count[LOOM_MAX_DIMS];
        memcpy(count, b->dims, sizeof count);
        start[0] = b->next;
        count[0] = n;
        H5Sselect_hyperslab(b->fspace, H5S_SELECT_SET, start, NULL, count, NULL);
        hid_t mspace = H5Screate_simple(b->ndim, count, NULL);
        rc = H5Dread(b->dset, H5T_NATIVE_FLOAT, mspace, b->fspace, H5P_DEFAULT, b->buf);
        H5Sclose(mspace);
    }
    if (rc < 0)
        loom_input_error(b->path, "compressed files need the zstd filter; damaged files cannot be read",
                         "%s: cannot read rows %llu..%llu", b->dset_path, (unsigned long long)b->next,
                         (unsigned long long)(b->next + n - 1));
    b->next += n;
    return (size_t)(n * b->row_elems);
}

static void blocks_close(struct blocks *b) {
    free(b->buf);
    H5Sclose(b->fspace);
    H5Dclose(b->dset);
}

/* ---------------------------------------------------------------------------------------------- */
/* the model the config describes                                                                   */

static void describe_model(const struct loom_model_config *m, char *buf, size_t cap) {
    size_t n = 0;
    if (m->attention == LOOM_ATTENTION_MLA) {
        n += (size_t)snprintf(buf + n, cap - n, "mla (q_lora_rank %lld, kv_lora_rank %lld)", (long long)m->q_lora_rank,
                              (long long)m->kv_lora_rank);
    } else {
        n += (size_t)snprintf(buf + n, cap - n, "mha (%lld kv heads, head_dim %lld%s)",
                              (long long)loom_model_kv_heads(m), (long long)loom_model_qk_head_dim(m),
                              m->qk_norm ? ", qk_norm" : "");
    }
    n += (size_t)snprintf(buf + n, cap - n, ", %lld layers, width %lld, %lld heads, vocab %lld, ",
                          (long long)m->num_layers, (long long)m->hidden_size, (long long)m->num_heads,
                          (long long)m->vocab_size);
    if (m->moe.experts > 0)
        n += (size_t)snprintf(buf + n, cap - n,
                              "MoE: %lld experts of width %lld, top-%lld, %lld shared, first %lld dense",
                              (long long)m->moe.experts, (long long)m->moe.intermediate, (long long)m->moe.top_k,
                              (long long)m->moe.shared, (long long)m->moe.first_dense);
    else
        n += (size_t)snprintf(buf + n, cap - n, "dense MLP %lld", (long long)m->intermediate_size);
    snprintf(buf + n, cap - n, ", %s head", m->tie_word_embeddings ? "tied" : "untied");
}

/* ---------------------------------------------------------------------------------------------- */
/* info                                                                                             */

static const char *TENSOR_GROUPS[] = {"/model", "/buffers", "/optim/exp_avg", "/optim/exp_avg_sq"};
enum { N_TENSOR_GROUPS = 4 };

static int ckpt_info(const char *path) {
    hid_t f = ckpt_open(path);
    int64_t v;
    double d;
    printf("checkpoint   %s\n", path);
    printf("format       %s version %d\n", LOOM_CKPT_FORMAT, LOOM_CKPT_VERSION);
    const char *ints[] = {"step", "tokens", "samples", "seed"};
    for (int i = 0; i < 4; i++) {
        if (attr_int64(f, ints[i], &v) == 0) printf("%-12s %lld\n", ints[i], (long long)v);
        else printf("%-12s (absent)\n", ints[i]);
    }
    if (attr_double(f, "loss_scale", &d) == 0) printf("loss scale   %g\n", d);
    char *layout = attr_string(f, "layout");
    printf("layout       %s\n", layout ? layout : "(absent)");
    free(layout);
    struct loom_config cfg;
    if (ckpt_config(f, path, &cfg)) {
        char desc[512];
        describe_model(&cfg.model, desc, sizeof desc);
        printf("model        %s\n", desc);
        loom_config_free(&cfg);
    } else {
        printf("model        (no config attribute)\n");
    }
    if (H5Lexists(f, "optim", H5P_DEFAULT) > 0) {
        hid_t g = H5Gopen2(f, "optim", H5P_DEFAULT);
        if (attr_int64(g, "step", &v) == 0) printf("optimizer    AdamW, %lld updates\n", (long long)v);
        H5Gclose(g);
    } else {
        printf("optimizer    (none: weights only)\n");
    }
    if (H5Lexists(f, "data", H5P_DEFAULT) > 0) {
        hid_t g = H5Gopen2(f, "data", H5P_DEFAULT);
        int64_t sample = -1, tokens = -1;
        attr_int64(g, "sample", &sample);
        attr_int64(g, "tokens", &tokens);
        char *sources = attr_string(g, "sources");
        for (char *c = sources; c && *c; c++)
            if (*c == '\n') *c = ' ';
        printf("data         sample %lld, tokens %lld, sources: %s\n", (long long)sample, (long long)tokens,
               !sources ? "(absent)" : sources[0] ? sources : "(none: random tokens)");
        free(sources);
        H5Gclose(g);
    }

    struct entries lists[N_TENSOR_GROUPS];
    int exists[N_TENSOR_GROUPS], width = 4;
    for (int k = 0; k < N_TENSOR_GROUPS; k++) {
        exists[k] = list_group(f, path, TENSOR_GROUPS[k], &lists[k]);
        for (int i = 0; i < lists[k].n; i++) {
            int w = (int)(strlen(TENSOR_GROUPS[k]) + 1 + strlen(lists[k].e[i].name));
            if (w > width) width = w;
        }
    }
    printf("\n# tensors\n");
    printf("  %-*s %-16s %-6s %12s\n", width, "name", "shape", "dtype", "MB");
    /* totals of a damaged file's claimed shapes may wrap around; each tensor's own size fits (list_one) */
    uint64_t numel[N_TENSOR_GROUPS] = {0}, bytes[N_TENSOR_GROUPS] = {0};
    hsize_t stored = 0;
    for (int k = 0; k < N_TENSOR_GROUPS; k++) {
        for (int i = 0; i < lists[k].n; i++) {
            const struct entry *e = &lists[k].e[i];
            char full[NAME_MAX_LEN + 32], shape[96];
            snprintf(full, sizeof full, "%s/%s", TENSOR_GROUPS[k], e->name);
            shape_text(e, shape, sizeof shape);
            int64_t b = e->numel * (int64_t)e->type_size;
            printf("  %-*s %-16s %-6s %12.3f\n", width, full, shape, e->dtype, b / 1e6);
            numel[k] += (uint64_t)e->numel;
            bytes[k] += (uint64_t)b;
            stored += e->stored;
        }
    }
    printf("\n# totals\n");
    uint64_t all_n = 0, all_b = 0;
    int all_t = 0;
    for (int k = 0; k < N_TENSOR_GROUPS; k++) {
        if (!exists[k]) continue;
        printf("  %-18s %6d tensors %16llu %s %16llu bytes (%.3f MB)\n", TENSOR_GROUPS[k], lists[k].n,
               (unsigned long long)numel[k], k == 0 ? "parameters" : "values    ", (unsigned long long)bytes[k],
               bytes[k] / 1e6);
        all_t += lists[k].n;
        all_n += numel[k];
        all_b += bytes[k];
    }
    for (int k = 0; k < N_TENSOR_GROUPS; k++) free(lists[k].e);
    printf("  %-18s %6d tensors %16llu values     %16llu bytes (%.3f MB; %.3f MB stored)\n", "all", all_t,
           (unsigned long long)all_n, (unsigned long long)all_b, all_b / 1e6, stored / 1e6);
    printf("  parameters         %llu (%.3f M)\n", (unsigned long long)numel[0], numel[0] / 1e6);
    H5Fclose(f);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* verify                                                                                           */

/* An expected tensor: name and shape. */
struct want {
    char name[NAME_MAX_LEN];
    struct loom_shape shape;
};

static int want_cmp(const void *a, const void *b) {
    return natural_cmp(((const struct want *)a)->name, ((const struct want *)b)->name);
}

static int shape_matches(const struct entry *e, const struct loom_shape *s) {
    if (e->ndim != s->ndim) return 0;
    for (int i = 0; i < s->ndim; i++)
        if ((int64_t)e->dims[i] != s->dims[i]) return 0;
    return 1;
}

/* GROUP holds exactly the tensors of want (names and shapes; want in natural name order), all float; exits 2 on
 * the first difference. */
static void check_names(const char *path, const char *group, const struct entries *have, const struct want *want,
                        int n_want, const char *what) {
    for (int i = 0; i < n_want; i++) {
        const struct entry *e = entries_find(have, want[i].name);
        char ws[64], hs[96];
        loom_shape_format(&want[i].shape, ws, sizeof ws);
        if (!e) loom_input_error(path, NULL, "%s/%s: missing (%s has it, %s)", group, want[i].name, what, ws);
        shape_text(e, hs, sizeof hs);
        if (!shape_matches(e, &want[i].shape))
            loom_input_error(path, NULL, "%s/%s: shape %s, %s says %s", group, e->name, hs, what, ws);
        if (!e->is_float) loom_input_error(path, NULL, "%s/%s: %s, not a float tensor", group, e->name, e->dtype);
    }
    for (int i = 0; i < have->n; i++) {
        struct want key;
        snprintf(key.name, sizeof key.name, "%s", have->e[i].name);
        if (!bsearch(&key, want, (size_t)n_want, sizeof *want, want_cmp))
            loom_input_error(path, NULL, "%s/%s: not in %s", group, have->e[i].name, what);
    }
}

/* Every value of GROUP/e finite (and >= 0 when nonneg); exits 2 naming the first bad element. */
static void check_values(hid_t f, const char *path, const char *group, const struct entry *e, int nonneg) {
    struct blocks b;
    blocks_open(&b, f, path, group, e, 1);
    hsize_t row0;
    size_t n;
    while ((n = blocks_next(&b, &row0)) > 0) {
        for (size_t i = 0; i < n; i++) {
            float x = b.buf[i];
            if (isfinite(x) && !(nonneg && x < 0)) continue;
            size_t bad = 0;
            for (size_t j = i; j < n; j++) bad += !isfinite(b.buf[j]) || (nonneg && b.buf[j] < 0);
            hsize_t flat = row0 * b.row_elems + i, idx[LOOM_MAX_DIMS] = {0};
            for (int k = e->ndim - 1; k >= 0; k--) idx[k] = flat % e->dims[k], flat /= e->dims[k];
            char at[96];
            size_t m = (size_t)snprintf(at, sizeof at, "[");
            for (int k = 0; k < e->ndim; k++)
                m += (size_t)snprintf(at + m, sizeof at - m, "%s%llu", k ? ", " : "", (unsigned long long)idx[k]);
            snprintf(at + m, sizeof at - m, "]");
            loom_input_error(path, NULL, "%s: %s %g at %s (%zu such values in rows %llu..%llu)", b.dset_path,
                             isfinite(x) ? "negative second moment" : "non-finite value", x, at, bad,
                             (unsigned long long)row0, (unsigned long long)(b.next - 1));
        }
    }
    blocks_close(&b);
}

static int ckpt_verify(const char *path) {
    hid_t f = ckpt_open(path);
    struct loom_config cfg;
    if (!ckpt_config(f, path, &cfg))
        loom_input_error(path, NULL, "no config attribute: the tensors cannot be checked against a parameter table");
    struct entries model, buffers, m1 = {0}, m2 = {0};
    if (!list_group(f, path, "/model", &model)) loom_input_error(path, NULL, "no /model group");
    /* a tensor per layer at least, and three per routed expert: a config that describes far more than the
     * file holds is refused before its parameter table is built */
    int64_t L = cfg.model.num_layers, E = cfg.model.moe.experts;
    int64_t least = L + (E > 0 ? (L - cfg.model.moe.first_dense) * 3 * E : 0);
    if (least > model.n)
        loom_input_error(path, NULL, "/model holds %d tensors; the config describes a model with at least %lld",
                         model.n, (long long)least);
    struct loom_param_table t;
    loom_params_build(&t, &cfg.model, &cfg.optim);
    struct want *params = calloc_check((size_t)t.count, sizeof *params);
    for (int i = 0; i < t.count; i++) {
        snprintf(params[i].name, sizeof params[i].name, "%s", t.params[i].name);
        params[i].shape = t.params[i].shape;
    }
    int n_bias = 0;
    struct want *biases = calloc_check((size_t)(cfg.model.num_layers > 0 ? cfg.model.num_layers : 1), sizeof *biases);
    for (int l = 0; l < cfg.model.num_layers; l++) {
        if (!loom_model_layer_is_moe(&cfg.model, l)) continue;
        snprintf(biases[n_bias].name, sizeof biases[n_bias].name, "layers.%d.mlp.gate.e_score_correction_bias", l);
        biases[n_bias++].shape = loom_shape_1d(cfg.model.moe.experts);
    }
    qsort(params, (size_t)t.count, sizeof *params, want_cmp);
    qsort(biases, (size_t)n_bias, sizeof *biases, want_cmp);

    check_names(path, "/model", &model, params, t.count, "the parameter table of the config");
    list_group(f, path, "/buffers", &buffers);
    check_names(path, "/buffers", &buffers, biases, n_bias, "the MoE blocks of the config");
    int optim = H5Lexists(f, "optim", H5P_DEFAULT) > 0;
    if (optim) {
        hid_t g = H5Gopen2(f, "optim", H5P_DEFAULT);
        int64_t step;
        if (attr_int64(g, "step", &step) != 0) loom_input_error(path, NULL, "/optim: no step attribute");
        H5Gclose(g);
        if (!list_group(f, path, "/optim/exp_avg", &m1)) loom_input_error(path, NULL, "/optim/exp_avg: missing");
        if (!list_group(f, path, "/optim/exp_avg_sq", &m2)) loom_input_error(path, NULL, "/optim/exp_avg_sq: missing");
        check_names(path, "/optim/exp_avg", &m1, params, t.count, "the parameter table of the config");
        check_names(path, "/optim/exp_avg_sq", &m2, params, t.count, "the parameter table of the config");
    }
    if (H5Lexists(f, "data", H5P_DEFAULT) > 0) {
        hid_t g = H5Gopen2(f, "data", H5P_DEFAULT);
        char *sources = attr_string(g, "sources");
        if (!sources) loom_input_error(path, NULL, "/data: no sources attribute");
        int64_t n_sources = 0, x;
        for (char *line = strtok(sources, "\n"); line; line = strtok(NULL, "\n")) n_sources++;
        free(sources);
        if (attr_int64(g, "sample", &x) != 0 || attr_int64(g, "tokens", &x) != 0)
            loom_input_error(path, NULL, "/data: the sample and tokens attributes must be integers");
        H5Gclose(g);
        struct entries data;
        list_group(f, path, "/data", &data);
        const char *need[] = {"cursor", "epoch"};
        for (int i = 0; i < 2; i++) {
            const struct entry *e = entries_find(&data, need[i]);
            if (!e) loom_input_error(path, NULL, "/data/%s: missing", need[i]);
            /* with no sources (random tokens) the writer stores one zero: HDF5 has no empty dataset */
            if (e->ndim != 1 || (int64_t)e->dims[0] != (n_sources ? n_sources : 1))
                loom_input_error(path, NULL, "/data/%s: %lld values for %lld sources", need[i], (long long)e->numel,
                                 (long long)n_sources);
        }
        free(data.e);
    }

    for (int i = 0; i < model.n; i++) check_values(f, path, "/model", &model.e[i], 0);
    for (int i = 0; i < buffers.n; i++) check_values(f, path, "/buffers", &buffers.e[i], 0);
    if (optim) {
        for (int i = 0; i < m1.n; i++) check_values(f, path, "/optim/exp_avg", &m1.e[i], 0);
        for (int i = 0; i < m2.n; i++) check_values(f, path, "/optim/exp_avg_sq", &m2.e[i], 1);
        free(m1.e);
        free(m2.e);
    }
    printf("ok: %s: %d tensors, %zu parameters, all finite\n", path, t.count, t.total);
    free(model.e);
    free(buffers.e);
    free(params);
    free(biases);
    loom_params_free(&t);
    loom_config_free(&cfg);
    H5Fclose(f);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* export: shared pieces                                                                            */

struct export_options {
    const char *path, *format, *out;
    int bf16, force;
};

/* the .tmp file an export is writing, removed when the process exits before renaming it */
static char pending_tmp[4200];
static void pending_remove(void) {
    if (pending_tmp[0]) unlink(pending_tmp);
}

static void pending_set(const char *tmp) {
    static int registered = 0;
    if (!registered) atexit(pending_remove), registered = 1;
    snprintf(pending_tmp, sizeof pending_tmp, "%s", tmp);
}

static void commit_rename(const char *tmp, const char *final) {
    CHECK(rename(tmp, final) == 0, "rename %s to %s: %s", tmp, final, strerror(errno));
    pending_tmp[0] = '\0';
}

/* mkdir -p */
static void make_dirs(const char *dir) {
    char p[4096];
    snprintf(p, sizeof p, "%s", dir);
    for (char *c = p + 1;; c++) {
        if (*c != '/' && *c != '\0') continue;
        char saved = *c;
        *c = '\0';
        struct stat st;
        if (stat(p, &st) != 0) {
            if (mkdir(p, 0777) != 0 && errno != EEXIST) loom_input_error(p, NULL, "cannot create: %s", strerror(errno));
        } else if (!S_ISDIR(st.st_mode)) {
            loom_input_error(p, "--out names the folder to write", "exists and is not a folder");
        }
        *c = saved;
        if (saved == '\0') break;
    }
}

static int is_bias(const char *group) { return strcmp(group, "/buffers") == 0; }

/* ---------------------------------------------------------------------------------------------- */
/* export: config.json                                                                              */

enum hf_arch { HF_YOUTU, HF_DOTS1, HF_NONE };

/* Which Hugging Face architecture holds the model; when none, why in `why`. */
static enum hf_arch hf_arch_of(const struct loom_model_config *m, char *why, size_t cap) {
    const struct loom_moe_config *e = &m->moe;
    if (m->attention == LOOM_ATTENTION_MLA) {
        if (e->experts == 0) return HF_YOUTU;
        snprintf(why, cap, "MLA with MoE blocks (youtu is dense; dots1 has MHA)");
        return HF_NONE;
    }
    if (e->experts == 0) snprintf(why, cap, "dense MHA (dots1 needs MoE blocks; youtu has MLA)");
    else if (e->score != LOOM_MOE_SIGMOID) snprintf(why, cap, "moe.score = softmax (dots1 routes by sigmoid)");
    else if (!m->qk_norm) snprintf(why, cap, "model.qk_norm = false (dots1 norms q and k)");
    else if (m->rope_style != LOOM_ROPE_HALF) snprintf(why, cap, "model.rope_style = interleaved (dots1 pairs halves)");
    else if (loom_model_v_head_dim(m) != loom_model_qk_head_dim(m))
        snprintf(why, cap, "v_head_dim differs from head_dim (dots1 has one head_dim)");
    else if (e->shared < 1) snprintf(why, cap, "no shared expert (dots1 has n_shared_experts >= 1)");
    else return HF_DOTS1;
    return HF_NONE;
}

static void add_int(cJSON *o, const char *key, int64_t v) { cJSON_AddNumberToObject(o, key, (double)v); }

static void add_rope(cJSON *o, double theta) {
    cJSON_AddNumberToObject(o, "rope_theta", theta);
    cJSON *rope = cJSON_AddObjectToObject(o, "rope_parameters");
    cJSON_AddStringToObject(rope, "rope_type", "default");
    cJSON_AddNumberToObject(rope, "rope_theta", theta);
    cJSON_AddNullToObject(o, "rope_scaling");
}

/* the longest sequence the run trained on: train.seq_len, or a phase's longer one */
static int64_t max_positions(const struct loom_config *cfg) {
    int64_t n = cfg->train.seq_len;
    for (int i = 0; i < cfg->nphases; i++)
        if (cfg->phases[i].seq_len > n) n = cfg->phases[i].seq_len;
    return n;
}

/* the [model] and [moe] keys as they are in the config */
static cJSON *raw_section(const struct loom_config *cfg, const char *section) {
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; i < loom_config_nkeys; i++) {
        const struct loom_key *k = &loom_config_keys[i];
        if (k->named || strcmp(k->section, section) != 0) continue;
        const char *field = (const char *)cfg + k->offset;
        switch (k->type) {
        case LOOM_KEY_INT: add_int(o, k->name, *(const int64_t *)field); break;
        case LOOM_KEY_FLOAT: cJSON_AddNumberToObject(o, k->name, *(const double *)field); break;
        case LOOM_KEY_BOOL: cJSON_AddBoolToObject(o, k->name, *(const int *)field); break;
        case LOOM_KEY_STRING: {
            const char *v = *(char *const *)field;
            cJSON_AddStringToObject(o, k->name, v ? v : "");
            break;
        }
        case LOOM_KEY_ENUM:
            cJSON_AddStringToObject(o, k->name, loom_config_choice(section, k->name, *(const int *)field));
            break;
        }
    }
    return o;
}

static cJSON *config_json(const struct loom_config *cfg, int bf16, const char *path) {
    const struct loom_model_config *m = &cfg->model;
    const struct loom_moe_config *e = &m->moe;
    char why[160] = "";
    enum hf_arch arch = hf_arch_of(m, why, sizeof why);
    cJSON *o = cJSON_CreateObject();
    cJSON *archs = cJSON_AddArrayToObject(o, "architectures");
    if (arch == HF_YOUTU) {
        cJSON_AddItemToArray(archs, cJSON_CreateString("YoutuForCausalLM"));
        cJSON_AddStringToObject(o, "model_type", "youtu");
        add_int(o, "hidden_size", m->hidden_size);
        add_int(o, "num_hidden_layers", m->num_layers);
        add_int(o, "num_attention_heads", m->num_heads);
        add_int(o, "num_key_value_heads", m->num_heads);
        if (m->q_lora_rank > 0) add_int(o, "q_lora_rank", m->q_lora_rank);
        else cJSON_AddNullToObject(o, "q_lora_rank");
        add_int(o, "kv_lora_rank", m->kv_lora_rank);
        add_int(o, "qk_nope_head_dim", m->qk_nope_head_dim);
        add_int(o, "qk_rope_head_dim", m->qk_rope_head_dim);
        add_int(o, "v_head_dim", loom_model_v_head_dim(m));
        add_int(o, "head_dim", m->qk_rope_head_dim);
        add_int(o, "intermediate_size", m->intermediate_size);
        add_int(o, "vocab_size", m->vocab_size);
        add_int(o, "max_position_embeddings", max_positions(cfg));
        cJSON_AddNumberToObject(o, "rms_norm_eps", m->rms_norm_eps);
        add_rope(o, m->rope_theta);
        cJSON_AddBoolToObject(o, "rope_interleave", m->rope_style == LOOM_ROPE_INTERLEAVED);
        cJSON_AddBoolToObject(o, "tie_word_embeddings", m->tie_word_embeddings);
        cJSON_AddBoolToObject(o, "attention_bias", 0);
        cJSON_AddBoolToObject(o, "mlp_bias", 0);
        cJSON_AddStringToObject(o, "hidden_act", "silu");
        cJSON_AddNumberToObject(o, "initializer_range", m->init_std);
    } else if (arch == HF_DOTS1) {
        cJSON_AddItemToArray(archs, cJSON_CreateString("Dots1ForCausalLM"));
        cJSON_AddStringToObject(o, "model_type", "dots1");
        add_int(o, "hidden_size", m->hidden_size);
        add_int(o, "num_hidden_layers", m->num_layers);
        add_int(o, "num_attention_heads", m->num_heads);
        add_int(o, "num_key_value_heads", loom_model_kv_heads(m));
        add_int(o, "head_dim", loom_model_qk_head_dim(m));
        add_int(o, "intermediate_size", m->intermediate_size);
        add_int(o, "moe_intermediate_size", e->intermediate);
        add_int(o, "n_routed_experts", e->experts);
        add_int(o, "n_shared_experts", e->shared);
        add_int(o, "num_experts_per_tok", e->top_k);
        add_int(o, "first_k_dense_replace", e->first_dense);
        add_int(o, "moe_layer_freq", 1);
        cJSON_AddBoolToObject(o, "norm_topk_prob", e->norm_topk);
        cJSON_AddNumberToObject(o, "routed_scaling_factor", e->scaling);
        cJSON_AddStringToObject(o, "scoring_func", "noaux_tc");
        add_int(o, "n_group", e->groups);
        add_int(o, "topk_group", e->topk_groups);
        add_rope(o, m->rope_theta);
        cJSON_AddNumberToObject(o, "rms_norm_eps", m->rms_norm_eps);
        cJSON_AddBoolToObject(o, "tie_word_embeddings", m->tie_word_embeddings);
        add_int(o, "vocab_size", m->vocab_size);
        add_int(o, "max_position_embeddings", max_positions(cfg));
        cJSON_AddBoolToObject(o, "attention_bias", 0);
        cJSON_AddStringToObject(o, "hidden_act", "silu");
        cJSON_AddNumberToObject(o, "initializer_range", m->init_std);
    } else {
        fprintf(stderr,
                "loom ckpt export: note: %s: %s has no Hugging Face architecture here (youtu: dense MLA; dots1: MHA + "
                "MoE); config.json gets model_type \"loom\" and the raw [model] and [moe] keys\n",
                path, why);
        cJSON_AddStringToObject(o, "model_type", "loom");
        cJSON_AddItemToObject(o, "model", raw_section(cfg, "model"));
        cJSON_AddItemToObject(o, "moe", raw_section(cfg, "moe"));
        add_int(o, "max_position_embeddings", max_positions(cfg));
    }
    cJSON_AddStringToObject(o, "torch_dtype", bf16 ? "bfloat16" : "float32");
    return o;
}

/* ---------------------------------------------------------------------------------------------- */
/* export: safetensors                                                                              */

struct st_tensor {
    const char *group;
    const struct entry *e;
    char hf_name[NAME_MAX_LEN + 8];
    int bf16;
    uint64_t begin, end;
};

static void write_check(FILE *fp, const void *p, size_t n, const char *file) {
    CHECK(fwrite(p, 1, n, fp) == n, "writing %s: %s", file, strerror(errno));
}

static void export_safetensors(hid_t f, const struct export_options *o, const struct loom_config *cfg,
                               struct entries *groups, const char **names, int n_groups) {
    make_dirs(o->out);
    char final[4096], tmp[4200];
    snprintf(final, sizeof final, "%s/model.safetensors", o->out);
    if (access(final, F_OK) == 0 && !o->force)
        loom_input_error(final, "add --force to replace it", "exists");

    int n = 0;
    for (int k = 0; k < n_groups; k++) n += groups[k].n;
    struct st_tensor *ts = calloc_check((size_t)(n ? n : 1), sizeof *ts);
    uint64_t offset = 0;
    n = 0;
    for (int k = 0; k < n_groups; k++) {
        for (int i = 0; i < groups[k].n; i++) {
            struct st_tensor *t = &ts[n++];
            t->group = names[k];
            t->e = &groups[k].e[i];
            if (!t->e->is_float)
                loom_input_error(o->path, NULL, "%s/%s: %s, not a float tensor", names[k], t->e->name, t->e->dtype);
            if (strcmp(t->e->name, "lm_head.weight") == 0) snprintf(t->hf_name, sizeof t->hf_name, "%s", t->e->name);
            else snprintf(t->hf_name, sizeof t->hf_name, "model.%s", t->e->name);
            t->bf16 = o->bf16 && !is_bias(names[k]);
            t->begin = offset;
            offset += (uint64_t)t->e->numel * (t->bf16 ? 2 : 4);
            t->end = offset;
        }
    }

    cJSON *header = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(header, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    for (int i = 0; i < n; i++) {
        cJSON *t = cJSON_AddObjectToObject(header, ts[i].hf_name);
        cJSON_AddStringToObject(t, "dtype", ts[i].bf16 ? "BF16" : "F32");
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < ts[i].e->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)ts[i].e->dims[d]));
        cJSON *offs = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)ts[i].begin));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)ts[i].end));
    }
    char *json = cJSON_PrintUnformatted(header);
    CHECK(json != NULL, "cJSON_PrintUnformatted");
    size_t len = strlen(json);
    uint64_t padded = (len + 7) / 8 * 8;

    snprintf(tmp, sizeof tmp, "%s.tmp", final);
    pending_set(tmp);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) loom_input_error(tmp, NULL, "cannot create: %s", strerror(errno));
    write_check(fp, &padded, 8, tmp);
    write_check(fp, json, len, tmp);
    for (uint64_t i = len; i < padded; i++) write_check(fp, " ", 1, tmp);
    free(json);
    cJSON_Delete(header);

    uint16_t *half = malloc_check((size_t)BLOCK_FLOATS * sizeof *half);
    for (int i = 0; i < n; i++) {
        struct blocks b;
        blocks_open(&b, f, o->path, ts[i].group, ts[i].e, 1);
        if ((uint64_t)b.per_block * b.row_elems > BLOCK_FLOATS)
            half = realloc(half, (size_t)(b.per_block * b.row_elems) * sizeof *half);
        CHECK(half != NULL, "out of memory");
        hsize_t row0;
        size_t got;
        while ((got = blocks_next(&b, &row0)) > 0) {
            if (ts[i].bf16) {
                for (size_t j = 0; j < got; j++) half[j] = loom_f32_to_bf16(b.buf[j]);
                write_check(fp, half, got * 2, tmp);
            } else {
                write_check(fp, b.buf, got * 4, tmp);
            }
        }
        blocks_close(&b);
    }
    free(half);
    CHECK(fflush(fp) == 0 && fsync(fileno(fp)) == 0 && fclose(fp) == 0, "closing %s: %s", tmp, strerror(errno));
    commit_rename(tmp, final);

    char cfinal[4096], ctmp[4200];
    snprintf(cfinal, sizeof cfinal, "%s/config.json", o->out);
    snprintf(ctmp, sizeof ctmp, "%s.tmp", cfinal);
    cJSON *c = config_json(cfg, o->bf16, o->path);
    char *text = cJSON_Print(c);
    CHECK(text != NULL, "cJSON_Print");
    pending_set(ctmp);
    fp = fopen(ctmp, "w");
    if (!fp) loom_input_error(ctmp, NULL, "cannot create: %s", strerror(errno));
    CHECK(fprintf(fp, "%s\n", text) > 0 && fclose(fp) == 0, "writing %s: %s", ctmp, strerror(errno));
    commit_rename(ctmp, cfinal);
    free(text);
    cJSON_Delete(c);
    printf("wrote %s (%d tensors, %s, %.3f MB) and %s\n", final, n, o->bf16 ? "bf16" : "fp32",
           (8 + padded + offset) / 1e6, cfinal);
    free(ts);
}

/* ---------------------------------------------------------------------------------------------- */
/* export: compressed HDF5                                                                          */

static herr_t copy_attr(hid_t src, const char *name, const H5A_info_t *info, void *data) {
    (void)info;
    hid_t dst = *(hid_t *)data;
    hid_t a = H5Aopen(src, name, H5P_DEFAULT);
    hid_t type = H5Aget_type(a), space = H5Aget_space(a);
    int vlen_str = H5Tis_variable_str(type) > 0;
    if (!vlen_str && H5Tdetect_class(type, H5T_VLEN) > 0) {
        fprintf(stderr, "loom ckpt export: note: root attribute %s (variable-length) not copied\n", name);
    } else {
        hid_t mem = vlen_str ? H5Tcopy(H5T_C_S1) : H5Tcopy(type);
        if (vlen_str) H5Tset_size(mem, H5T_VARIABLE), H5Tset_cset(mem, H5Tget_cset(type));
        hssize_t count = H5Sget_simple_extent_npoints(space);
        size_t bytes = (size_t)(count > 0 ? count : 1) * H5Tget_size(mem);
        void *buf = calloc_check(bytes, 1);
        CHECK(H5Aread(a, mem, buf) >= 0, "reading root attribute %s", name);
        hid_t b = H5Acreate2(dst, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
        CHECK(b >= 0 && H5Awrite(b, mem, buf) >= 0, "writing root attribute %s", name);
        H5Aclose(b);
        if (vlen_str)
            for (hssize_t i = 0; i < count; i++) H5free_memory(((char **)buf)[i]);
        free(buf);
        H5Tclose(mem);
    }
    H5Sclose(space);
    H5Tclose(type);
    H5Aclose(a);
    return 0;
}

static void export_hdf5(hid_t f, const struct export_options *o, struct entries *groups, const char **names,
                        int n_groups) {
    if (access(o->out, F_OK) == 0 && !o->force) loom_input_error(o->out, "add --force to replace it", "exists");
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", o->out);
    pending_set(tmp);
    loom_h5_zstd_register();
    hid_t out = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (out < 0) loom_input_error(tmp, NULL, "cannot create it as an HDF5 file");
    hid_t src_root = H5Gopen2(f, "/", H5P_DEFAULT), dst_root = H5Gopen2(out, "/", H5P_DEFAULT);
    CHECK(H5Aiterate2(src_root, H5_INDEX_NAME, H5_ITER_INC, NULL, copy_attr, &dst_root) >= 0,
          "copying the root attributes");
    H5Gclose(src_root);
    H5Gclose(dst_root);

    hid_t bf16 = loom_h5_bf16_type();
    int64_t raw = 0, n = 0;
    uint16_t *half = NULL;
    size_t half_cap = 0;
    for (int k = 0; k < n_groups; k++) {
        if (!groups[k].n) continue;
        hid_t g = H5Gcreate2(out, names[k], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        CHECK(g >= 0, "creating %s", names[k]);
        for (int i = 0; i < groups[k].n; i++) {
            const struct entry *e = &groups[k].e[i];
            if (!e->is_float)
                loom_input_error(o->path, NULL, "%s/%s: %s, not a float tensor", names[k], e->name, e->dtype);
            int to_bf16 = o->bf16 && !is_bias(names[k]);
            size_t esize = to_bf16 ? 2 : 4;
            /* chunks: the whole tensor up to 1 MiB, else blocks of whole rows of at most 1 MiB (one row at least) */
            hsize_t chunk[LOOM_MAX_DIMS], row_elems = 1;
            memcpy(chunk, e->dims, sizeof chunk);
            for (int d = 1; d < e->ndim; d++) row_elems *= e->dims[d];
            if (e->ndim > 0 && (uint64_t)e->numel * esize > CHUNK_BYTES) {
                hsize_t rows = CHUNK_BYTES / (row_elems * esize);
                chunk[0] = rows > 0 ? rows : 1;
            }
            hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
            const unsigned level = 3;
            if (e->ndim > 0 && e->numel > 0)
                CHECK(H5Pset_chunk(dcpl, e->ndim, chunk) >= 0 &&
                          H5Pset_filter(dcpl, LOOM_H5Z_ZSTD, H5Z_FLAG_MANDATORY, 1, &level) >= 0,
                      "chunked zstd layout for %s", e->name);
            hid_t space = H5Screate_simple(e->ndim, e->dims, NULL);
            hid_t ftype = to_bf16 ? bf16 : H5T_IEEE_F32LE;
            hid_t d = H5Dcreate2(g, e->name, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
            CHECK(d >= 0, "creating %s/%s", names[k], e->name);
            struct blocks b;
            blocks_open(&b, f, o->path, names[k], e, chunk[0] > 0 ? (e->ndim ? chunk[0] : 1) : 1);
            hsize_t row0;
            size_t got;
            while ((got = blocks_next(&b, &row0)) > 0) {
                hsize_t start[LOOM_MAX_DIMS] = {0}, count[LOOM_MAX_DIMS];
                memcpy(count, e->dims, sizeof count);
                hid_t mspace = H5S_ALL, fspace = H5S_ALL;
                if (e->ndim > 0) {
                    start[0] = row0;
                    count[0] = got / row_elems;
                    fspace = H5Dget_space(d);
                    H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL);
                    mspace = H5Screate_simple(e->ndim, count, NULL);
                }
                herr_t rc;
                if (to_bf16) {
                    if (got > half_cap) half = realloc(half, (half_cap = got) * sizeof *half);
                    CHECK(half != NULL, "out of memory");
                    for (size_t j = 0; j < got; j++) half[j] = loom_f32_to_bf16(b.buf[j]);
                    rc = H5Dwrite(d, bf16, mspace, fspace, H5P_DEFAULT, half);
                } else {
                    rc = H5Dwrite(d, H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT, b.buf);
                }
                CHECK(rc >= 0, "writing %s/%s", names[k], e->name);
                if (e->ndim > 0) H5Sclose(mspace), H5Sclose(fspace);
            }
            blocks_close(&b);
            raw += e->numel * (int64_t)esize;
            n++;
            H5Dclose(d);
            H5Sclose(space);
            H5Pclose(dcpl);
        }
        H5Gclose(g);
    }
    free(half);
    H5Tclose(bf16);
    CHECK(H5Fclose(out) >= 0, "closing %s", tmp);
    commit_rename(tmp, o->out);
    struct stat st;
    CHECK(stat(o->out, &st) == 0, "stat %s", o->out);
    printf("wrote %s (%lld tensors, %s, zstd: %.3f MB of %.3f MB)\n", o->out, (long long)n, o->bf16 ? "bf16" : "fp32",
           st.st_size / 1e6, raw / 1e6);
}

static int ckpt_export(int argc, char **argv) {
    struct export_options o = {.bf16 = 1};
    const char *dtype = "bf16";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **target = NULL;
        size_t len = strcspn(a, "=");
        if (strcmp(a, "--force") == 0) {
            o.force = 1;
            continue;
        }
        if (strncmp(a, "--format", len) == 0 && len == 8) target = &o.format;
        else if (strncmp(a, "--out", len) == 0 && len == 5) target = &o.out;
        else if (strncmp(a, "--dtype", len) == 0 && len == 7) target = &dtype;
        else if (strncmp(a, "--", 2) == 0) loom_input_error(a, USAGE, "unknown option");
        else if (o.path) loom_input_error(a, USAGE, "unexpected argument (the checkpoint is %s)", o.path);
        else {
            o.path = a;
            continue;
        }
        if (a[len] == '=') *target = a + len + 1;
        else if (i + 1 < argc) *target = argv[++i];
        else loom_input_error(a, USAGE, "missing value");
    }
    if (!o.path) loom_input_error("loom ckpt export", USAGE, "no checkpoint given");
    if (!o.format) loom_input_error("loom ckpt export", USAGE, "no --format (safetensors or hdf5)");
    if (!o.out) loom_input_error("loom ckpt export", USAGE, "no --out");
    if (strcmp(dtype, "bf16") == 0) o.bf16 = 1;
    else if (strcmp(dtype, "fp32") == 0) o.bf16 = 0;
    else loom_input_error("--dtype", "bf16 or fp32", "unknown dtype '%s'", dtype);
    int st = strcmp(o.format, "safetensors") == 0;
    if (!st && strcmp(o.format, "hdf5") != 0)
        loom_input_error("--format", "safetensors or hdf5", "unknown format '%s'", o.format);

    loom_h5_zstd_register(); /* to read an earlier compressed export */
    hid_t f = ckpt_open(o.path);
    struct loom_config cfg;
    int have_cfg = ckpt_config(f, o.path, &cfg);
    if (st && !have_cfg) loom_input_error(o.path, NULL, "no config attribute: config.json cannot be written");
    const char *names[] = {"/model", "/buffers"};
    struct entries groups[2];
    if (!list_group(f, o.path, "/model", &groups[0])) loom_input_error(o.path, NULL, "no /model group");
    list_group(f, o.path, "/buffers", &groups[1]);
    if (st) export_safetensors(f, &o, &cfg, groups, names, 2);
    else export_hdf5(f, &o, groups, names, 2);
    free(groups[0].e);
    free(groups[1].e);
    if (have_cfg) loom_config_free(&cfg);
    H5Fclose(f);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */

int loom_ckpt_main(int argc, char **argv) {
    if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        printf("usage: %s\n", USAGE);
        return 0;
    }
    if (argc < 2) loom_input_error("loom ckpt", USAGE, "missing ckpt command (info, verify, export)");
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    const char *cmd = argv[1];
    if (strcmp(cmd, "export") == 0) return ckpt_export(argc - 1, argv + 1);
    if (strcmp(cmd, "info") != 0 && strcmp(cmd, "verify") != 0)
        loom_input_error(cmd, "ckpt commands: info, verify, export", "unknown ckpt command");
    if (argc != 3) loom_input_error(cmd, USAGE, "expects one checkpoint file");
    loom_h5_zstd_register(); /* compressed exports read like checkpoints */
    return strcmp(cmd, "info") == 0 ? ckpt_info(argv[2]) : ckpt_verify(argv[2]);
}
