/*
 * checkpoints/ckpt.c — writing and reading checkpoints (see ckpt.h for the format).
 *
 * Every rank builds the whole model's parameter table, so every rank creates the same datasets in the
 * same order (HDF5 metadata operations are collective) and then takes part in each dataset's collective
 * write, with its own slab selected or nothing. A rank's piece of a tensor is a run [a, b) of its flat
 * buffer inside the tensor's local part (rows row0.., columns col0.. of the whole); in the file that run
 * is a union of at most three hyperslabs (a partial first row, whole rows, a partial last row), whose
 * row-major order is the order of the run, so memory and file selections line up element for element.
 * Memory type equals file type (native float, little-endian float32), so collective I/O is not turned
 * into independent I/O by a type conversion.
 *
 * Who writes what: the ranks holding the same weights (the dp replicas of a tp rank and stage, or for
 * routed experts the ranks with the same experts) divide each tensor's buffer between them in even shares
 * — under ZeRO-1 exactly the shares of the optimizer state they own — so they write in parallel;
 * replicated tensors only from tp rank 0; a tied embedding only from the first stage. Reading is simpler: each rank reads everything it holds (hyperslab reads), whatever layout
 * wrote the file.
 */
#include "checkpoints/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"
#include "model/params.h"

/* ---------------------------------------------------------------------------------------------- */
/* small HDF5 helpers                                                                               */

#define H5_CHECK(call, ...) CHECK((call) >= 0, __VA_ARGS__)

/* A write that fails (a disk that fills up, a folder that turned read-only) skips the checkpoint, as a full
 * disk found beforehand does, with no crash and no rank left waiting: each rank keeps its first failure
 * here, and after every collective step of the write the ranks agree whether any of them failed
 * (write_ok), so that all of them stop before the next collective call. */
static struct {
    const char *dir;  /* the checkpoint folder, whose file system is asked for the cause */
    int failed;
    char what[640];   /* what this rank was writing, and why it failed */
} io_error;

/* Why a write failed. HDF5 reports a short MPI-IO write (a disk that filled up) without the system's
 * reason, so errno is taken when it holds a file-system error, else what the file system says now. */
static const char *write_cause(int err) {
    if (err == ENOSPC || err == EDQUOT || err == EROFS || err == EACCES || err == EIO || err == EFBIG)
        return strerror(err);
    struct statvfs v;
    if (statvfs(io_error.dir, &v) == 0 && (v.f_flag & ST_RDONLY)) return strerror(EROFS);
    if (statvfs(io_error.dir, &v) == 0 && (double)v.f_bavail * (double)v.f_frsize < (1 << 20)) return strerror(ENOSPC);
    return "an I/O error (HDF5 gave no reason)";
}

/* Notes this rank's first failure (ok false: what it was doing, and why); returns ok. */
__attribute__((format(printf, 2, 3))) static int write_note(int ok, const char *fmt, ...) {
    if (ok || io_error.failed) return ok;
    int err = errno;
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(io_error.what, sizeof io_error.what, "%s: %s", what, write_cause(err));
    io_error.failed = 1;
    return ok;
}

/* Every rank's verdict on the collective step just taken (collective): 1 when no rank has failed so far.
 * This rank's ok is noted as by write_note. A rank that failed waits for the others at most AGREE_SECONDS,
 * then aborts the job: the MPI-IO library may have left them inside the failed call (ROMIO returns the
 * error on the failing rank only, and HDF5 1.10 then skips there the collective call that resets the file
 * view), and an abort is better than a hang. */
enum { AGREE_SECONDS = 60 };

__attribute__((format(printf, 3, 4))) static int write_ok(const struct loom_topology *topo, int ok, const char *fmt,
                                                          ...) {
    if (!ok && !io_error.failed) {
        char what[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        write_note(0, "%s", what);
    }
    int any = io_error.failed, done = 0;
    MPI_Request req;
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, topo->world_comm.mpi, &req));
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (!done) {
        if (!io_error.failed) {
            MPI_CHECK(MPI_Wait(&req, MPI_STATUS_IGNORE));
            break;
        }
        MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (!done && t.tv_sec - t0.tv_sec > AGREE_SECONDS)
            loom_fatal(__FILE__, __LINE__, "write_ok",
                       "%s; the other ranks did not get out of the failed collective write in %d s (the MPI-IO "
                       "library left them there), so the job stops",
                       io_error.what, AGREE_SECONDS);
        if (!done) usleep(1000);
    }
    errno = 0; /* what the next step leaves in errno is its own */
    return !any;
}

/* The lowest failing rank and its failure, on every rank (collective). */
static int write_failure(const struct loom_topology *topo, char what[640]) {
    int mine = io_error.failed ? topo->rank : topo->world, first = 0;
    MPI_CHECK(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, topo->world_comm.mpi));
    memcpy(what, io_error.what, sizeof io_error.what);
    MPI_CHECK(MPI_Bcast(what, (int)sizeof io_error.what, MPI_CHAR, first, topo->world_comm.mpi));
    return first;
}

static void attr_write(hid_t obj, const char *name, hid_t type, const void *value) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (write_note(a >= 0, "creating the attribute %s", name))
        write_note(H5Awrite(a, type, value) >= 0, "writing the attribute %s", name);
    if (a >= 0) H5Aclose(a);
    H5Sclose(space);
}

static void attr_i64(hid_t obj, const char *name, int64_t v) { attr_write(obj, name, H5T_NATIVE_INT64, &v); }

static void attr_str(hid_t obj, const char *name, const char *text) {
    hid_t t = H5Tcopy(H5T_C_S1);
    size_t n = strlen(text);
    H5Tset_size(t, n ? n : 1);
    H5Tset_strpad(t, H5T_STR_NULLTERM);
    attr_write(obj, name, t, n ? text : "");
    H5Tclose(t);
}

/* reading: every failure is the file's fault (exit 2 naming it) */
struct reader {
    const char *path;
    hid_t file;
};

_Noreturn static void bad_file(const struct reader *r, const char *hint, const char *what, const char *name) {
    loom_input_error(r->path, hint, "%s%s%s", what, name ? " " : "", name ? name : "");
}

static int attr_exists(hid_t obj, const char *name) { return H5Aexists(obj, name) > 0; }

static void attr_read(const struct reader *r, hid_t obj, const char *name, hid_t type, void *value) {
    if (!attr_exists(obj, name)) bad_file(r, NULL, "not a loom checkpoint: no attribute", name);
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0 || H5Aread(a, type, value) < 0) bad_file(r, "the file may be truncated", "cannot read attribute", name);
    H5Aclose(a);
}

static int64_t attr_read_i64(const struct reader *r, hid_t obj, const char *name) {
    int64_t v;
    attr_read(r, obj, name, H5T_NATIVE_INT64, &v);
    return v;
}

/* A string attribute (fixed or variable length), malloc'd. */
static char *attr_read_str(const struct reader *r, hid_t obj, const char *name) {
    if (!attr_exists(obj, name)) bad_file(r, NULL, "not a loom checkpoint: no attribute", name);
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : -1;
    if (t < 0 || H5Tget_class(t) != H5T_STRING) bad_file(r, NULL, "not a string attribute:", name);
    char *out;
    if (H5Tis_variable_str(t) > 0) {
        char *v = NULL;
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        if (H5Aread(a, mt, &v) < 0 || !v) bad_file(r, NULL, "cannot read attribute", name);
        out = strdup(v);
        H5free_memory(v);
        H5Tclose(mt);
    } else {
        size_t n = H5Tget_size(t);
        out = calloc_check(n + 1, 1);
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, n + 1); /* room for the terminator of a null-padded string */
        if (H5Aread(a, mt, out) < 0) bad_file(r, NULL, "cannot read attribute", name);
        H5Tclose(mt);
    }
    H5Tclose(t);
    H5Aclose(a);
    return out;
}

/* ---------------------------------------------------------------------------------------------- */
/* selections                                                                                       */

/* The file selection of the run [a, b) of parameter p's local part (offsets into the rank's flat
 * buffer): the elements' places in the whole [rows, cols] tensor. */
static void select_run(hid_t space, const struct loom_param *p, size_t a, size_t b) {
    H5Sselect_none(space);
    if (a >= b) return;
    size_t k0 = a - p->offset, k1 = b - p->offset;
    if (p->shape.ndim == 1) {
        hsize_t start = (hsize_t)(p->row0 + k0), count = k1 - k0;
        H5_CHECK(H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, NULL, &count, NULL), "selecting %s", p->name);
        return;
    }
    size_t lc = (size_t)p->local.dims[1];
    size_t r0 = k0 / lc, r1 = (k1 - 1) / lc; /* local rows the run touches */
    struct block { size_t row, c0, rows, cols; } blk[3];
    int n = 0;
    if (r0 == r1) {
        blk[n++] = (struct block){r0, k0 % lc, 1, k1 - k0};
    } else {
        size_t full0 = r0, full1 = r1 + 1;
        if (k0 % lc) blk[n++] = (struct block){r0, k0 % lc, 1, lc - k0 % lc}, full0 = r0 + 1;
        if (k1 % lc) full1 = r1;
        if (full1 > full0) blk[n++] = (struct block){full0, 0, full1 - full0, lc};
        if (k1 % lc) blk[n++] = (struct block){r1, 0, 1, k1 % lc};
    }
    for (int i = 0; i < n; i++) {
        hsize_t start[2] = {(hsize_t)(p->row0 + blk[i].row), (hsize_t)(p->col0 + blk[i].c0)};
        hsize_t count[2] = {blk[i].rows, blk[i].cols};
        H5_CHECK(H5Sselect_hyperslab(space, i ? H5S_SELECT_OR : H5S_SELECT_SET, start, NULL, count, NULL),
                "selecting %s", p->name);
    }
}

/* How the tensor writes of the checkpoint being written went: HDF5 says after each collective write
 * whether it stayed collective (H5Pget_mpio_no_collective_cause); a fallback to independent I/O is
 * reported. LOOM_CKPT_TEST_MEMTYPE=double (a test hook) writes from double memory to force one. */
static struct {
    long writes, independent;
    uint32_t causes;
} io_stats;

/* Writes (collectively: every rank calls it for every dataset) the run [a, b) of p from `src` (backend
 * memory holding element `base` at src[0]); a >= b: this rank writes nothing. 0 when the write failed. */
static int write_run(const struct loom_ops *ops, hid_t dset, hid_t dxpl, const struct loom_param *p, size_t a,
                      size_t b, const float *src, size_t base) {
    hid_t fspace = H5Dget_space(dset);
    hsize_t n = a < b ? b - a : 0, one = 1;
    hid_t mspace = H5Screate_simple(1, n ? &n : &one, NULL);
    float *host = NULL;
    const char *hook = getenv("LOOM_CKPT_TEST_MEMTYPE");
    int as_double = hook && strcmp(hook, "double") == 0;
    double *wide = NULL;
    if (n) {
        select_run(fspace, p, a, b);
        host = malloc_check(sizeof(float) * n);
        ops->to_host(host, src + (a - base), sizeof(float) * n);
        if (as_double) {
            wide = malloc_check(sizeof(double) * n);
            for (hsize_t i = 0; i < n; i++) wide[i] = host[i];
        }
    } else {
        H5Sselect_none(fspace);
        H5Sselect_none(mspace);
    }
    const void *buf = wide ? (const void *)wide : host ? (const void *)host : (const void *)&one;
    int ok = H5Dwrite(dset, as_double ? H5T_NATIVE_DOUBLE : H5T_NATIVE_FLOAT, mspace, fspace, dxpl, buf) >= 0;
    if (ok) {
        uint32_t local_cause = 0, global_cause = 0;
        H5_CHECK(H5Pget_mpio_no_collective_cause(dxpl, &local_cause, &global_cause), "H5Pget_mpio_no_collective_cause");
        io_stats.writes++;
        if (global_cause != H5D_MPIO_COLLECTIVE) io_stats.independent++, io_stats.causes |= global_cause;
    }
    free(wide);
    free(host);
    H5Sclose(mspace);
    H5Sclose(fspace);
    return ok;
}

/* ---------------------------------------------------------------------------------------------- */
/* who holds what                                                                                   */

static int is_routed_expert(const struct loom_ckpt_state *s, const struct loom_param *p) {
    return p->expert >= 0 && s->topo->ep > 1;
}

/* the part of the buffer (dense 0, routed experts 1) a parameter is in */
static const struct loom_shard_part *part_of(const struct loom_ckpt_state *s, const struct loom_param *p) {
    return &s->shards->part[is_routed_expert(s, p) ? 1 : 0];
}

/* this rank's copy counts over tp and pp: one tp rank for replicated tensors, the first stage for a tied
 * embedding */
static int canonical(const struct loom_ckpt_state *s, const struct loom_param *p) {
    if (strcmp(p->name, "embed_tokens.weight") == 0 && !s->model->stage.first) return 0;
    if (p->shard == LOOM_SHARD_REPLICATED || (p->shard == LOOM_SHARD_EXPERT && !is_routed_expert(s, p)))
        return s->topo->tp_rank == 0;
    return 1;
}

/* the run [*a, *b) of p's local part this rank writes. The ranks of a part's group (dp, or edp for routed
 * experts) hold the same weights, and the same moments unless ZeRO-1 gave each its share: either way
 * rank r of the group writes the r-th even share of the part (its ZeRO-1 share), so the group's ranks
 * write in parallel and each element once. */
static void write_span(const struct loom_ckpt_state *s, const struct loom_param *p, size_t *a, size_t *b) {
    *a = *b = 0;
    if (!canonical(s, p)) return;
    const struct loom_shard_part *part = part_of(s, p);
    size_t len = part->end - part->begin, n = (size_t)part->comm->size, r = (size_t)part->comm->rank;
    size_t share_lo = part->begin + len * r / n, share_hi = part->begin + len * (r + 1) / n;
    size_t lo = p->offset > share_lo ? p->offset : share_lo;
    size_t hi = p->offset + p->numel < share_hi ? p->offset + p->numel : share_hi;
    if (lo < hi) *a = lo, *b = hi;
}

/* the MoE blocks of this stage, in block order: global block index of the k-th */
static int stage_moe_block(const struct loom_model *m, int k) {
    for (int l = m->stage.layer_lo; l < m->stage.layer_hi; l++)
        if (loom_model_layer_is_moe(&m->cfg, l) && k-- == 0) return l;
    return -1;
}

/* ---------------------------------------------------------------------------------------------- */
/* writing                                                                                          */

void loom_ckpt_dir(const struct loom_config *cfg, char *out, size_t size) {
    if (cfg->checkpoint.dir && cfg->checkpoint.dir[0]) snprintf(out, size, "%s", cfg->checkpoint.dir);
    else snprintf(out, size, "%s/checkpoints", cfg->train.run_dir);
}

/* 0, or the errno of a folder that cannot be made */
static int mkdir_p(const char *dir) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *q = buf + 1; *q; q++)
        if (*q == '/') {
            *q = 0;
            mkdir(buf, 0777);
            *q = '/';
        }
    return mkdir(buf, 0777) == 0 || errno == EEXIST ? 0 : errno;
}

static void fsync_path(const char *path, int dir) {
    int fd = open(path, dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    CHECK(fd >= 0, "cannot open %s to sync it: %s", path, strerror(errno));
    CHECK(fsync(fd) == 0 || (dir && errno == EINVAL), "cannot sync %s: %s", path, strerror(errno));
    close(fd);
}

/* A test hook: LOOM_CKPT_KILL_AT=created|tensors|closed|renamed kills rank 0 with SIGKILL at that point
 * of the write, so the tests can check what a crash leaves behind. */
static void kill_point(int rank, const char *point) {
    const char *at = getenv("LOOM_CKPT_KILL_AT");
    if (rank == 0 && at && strcmp(at, point) == 0) {
        fprintf(stderr, "loom: LOOM_CKPT_KILL_AT=%s: killing rank 0 in the middle of a checkpoint\n", point);
        fflush(stderr);
        raise(SIGKILL);
    }
}

static char *config_text(const struct loom_config *cfg) { return loom_config_to_string(cfg); }

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* keep the newest `keep` step_*.h5 of dir (the releases are hard links in dir/releases and stay) */
static void retain(const char *dir, int64_t keep) {
    DIR *d = opendir(dir);
    if (!d) return;
    char **names = NULL;
    size_t n = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (strncmp(e->d_name, "step_", 5) || len < 4 || strcmp(e->d_name + len - 3, ".h5")) continue;
        if (n == cap) {
            char **grown = realloc(names, sizeof *names * (cap = cap ? 2 * cap : 16));
            CHECK(grown != NULL, "out of memory");
            names = grown;
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, by_name);
    for (size_t i = 0; i < n; i++) {
        if (keep > 0 && i + (size_t)keep < n) {
            char path[4400];
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            unlink(path);
        }
        free(names[i]);
    }
    free(names);
}

/* The latest checkpoint's name, for messages ("none" when there is none). */
static void latest_name(const char *dir, char was[256]) {
    char latest[4300];
    snprintf(latest, sizeof latest, "%s/latest", dir);
    snprintf(was, 256, "none");
    FILE *lf = fopen(latest, "r");
    if (lf) {
        if (fgets(was, 256, lf)) was[strcspn(was, "\n")] = 0;
        fclose(lf);
    }
}

/* Rank 0 reserves the file's room on the disk (`bytes`) before the collective writes. A disk that fills up
 * during a collective MPI-IO write can leave ranks inside the MPI library, where no agreement reaches them
 * (Open MPI's OMPIO on more than two ranks, ROMIO under HDF5 1.10); a failed reservation is found before
 * any tensor. HDF5 sets the file to its real size when it closes it. 0 when the disk has not the room.
 * A test hook: LOOM_TEST_CKPT_NO_RESERVE=1 leaves the reservation out. */
static int reserve(const char *path, double bytes) {
    const char *hook = getenv("LOOM_TEST_CKPT_NO_RESERVE");
    if (hook && strcmp(hook, "1") == 0) return 1;
    int fd = open(path, O_WRONLY);
    if (fd < 0) return 0;
    int ok = fallocate(fd, 0, 0, (off_t)bytes) == 0 || errno == EOPNOTSUPP || errno == ENOSYS;
    int err = errno;
    close(fd);
    errno = err;
    return ok;
}

/* Writes the checkpoint file tmp (collective; rank 0 first reserves `need` bytes for it). 1 when every
 * rank wrote its part and the file is closed; 0 on every rank when a rank could not write (see io_error):
 * the ranks stop together after the collective step that failed, and the file is closed without its data. */
static int write_file(const struct loom_ckpt_state *s, const struct loom_ckpt_meta *meta, const char *dir,
                      const char *tmp, double need) {
    const struct loom_config *cfg = s->cfg;
    const struct loom_topology *topo = s->topo;
    struct loom_model *m = s->model;
    int rank = topo->rank;
    memset(&io_error, 0, sizeof io_error);
    io_error.dir = dir;
    errno = 0;

    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5_CHECK(H5Pset_fapl_mpio(fapl, topo->world_comm.mpi, MPI_INFO_NULL), "H5Pset_fapl_mpio");
    H5Pset_all_coll_metadata_ops(fapl, 1);
    H5Pset_coll_metadata_write(fapl, 1);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (!write_ok(topo, f >= 0, "creating %s", tmp)) {
        if (f >= 0) H5Fclose(f);
        return 0;
    }
    kill_point(rank, "created");
    int ok = write_ok(topo, rank != 0 || reserve(tmp, need), "reserving %.1f MB for %s", need / 1e6, tmp);

    /* root attributes */
    int32_t version = LOOM_CKPT_VERSION;
    attr_str(f, "format", LOOM_CKPT_FORMAT);
    attr_write(f, "version", H5T_NATIVE_INT32, &version);
    attr_i64(f, "step", meta->step);
    attr_i64(f, "tokens", meta->tokens);
    attr_i64(f, "samples", meta->samples);
    attr_i64(f, "seed", meta->seed);
    attr_write(f, "loss_scale", H5T_NATIVE_DOUBLE, &meta->loss_scale);
    attr_i64(f, "loss_scale_good_steps", meta->scale_good_steps);
    attr_i64(f, "schedule_tokens", meta->schedule_tokens);
    attr_i64(f, "skipped_steps", meta->skipped_steps);
    char *text = config_text(cfg), layout[256];
    attr_str(f, "config", text);
    free(text);
    snprintf(layout, sizeof layout, "dp=%d tp=%d pp=%d ep=%d zero=%d world=%d", topo->dp, topo->tp, topo->pp, topo->ep,
             cfg->parallel.zero ? 1 : 0, topo->world);
    attr_str(f, "layout", layout);

    hid_t g_model = H5Gcreate2(f, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t g_buf = H5Gcreate2(f, "buffers", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t g_optim = H5Gcreate2(f, "optim", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t g_m = g_optim >= 0 ? H5Gcreate2(g_optim, "exp_avg", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
    hid_t g_v = g_optim >= 0 ? H5Gcreate2(g_optim, "exp_avg_sq", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
    hid_t g_data = H5Gcreate2(f, "data", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ok = write_ok(topo, g_model >= 0 && g_buf >= 0 && g_optim >= 0 && g_m >= 0 && g_v >= 0 && g_data >= 0,
                  "creating the groups of %s", tmp) && ok;
    if (ok) attr_i64(g_optim, "step", s->adamw[0].step);

    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    H5_CHECK(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE), "H5Pset_dxpl_mpio");
    memset(&io_stats, 0, sizeof io_stats);

    /* tensors: the whole model's table, the same on every rank */
    struct loom_param_table whole;
    loom_params_build(&whole, &cfg->model, &cfg->optim);
    hid_t groups[3] = {g_model, g_m, g_v};
    const char *group_names[3] = {"model", "optim/exp_avg", "optim/exp_avg_sq"};
    for (int i = 0; i < whole.count && ok; i++) {
        const struct loom_param *w = &whole.params[i];
        hsize_t dims[2] = {(hsize_t)w->shape.dims[0], w->shape.ndim > 1 ? (hsize_t)w->shape.dims[1] : 1};
        hid_t space = H5Screate_simple(w->shape.ndim > 1 ? 2 : 1, dims, NULL);
        int li = loom_params_find(&m->table, w->name);
        const struct loom_param *p = li >= 0 ? &m->table.params[li] : NULL;
        for (int g = 0; g < 3 && ok; g++) {
            hid_t d = H5Dcreate2(groups[g], w->name, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
            ok = write_ok(topo, d >= 0, "creating /%s/%s in %s", group_names[g], w->name, tmp);
            if (ok) {
                size_t a = 0, b = 0;
                if (p) write_span(s, p, &a, &b);
                const struct loom_adamw *o = p ? &s->adamw[is_routed_expert(s, p) ? 1 : 0] : NULL;
                const float *src = g == 0 ? m->master : g == 1 ? (o ? o->m : NULL) : (o ? o->v : NULL);
                size_t base = g == 0 || !o ? 0 : o->lo;
                ok = write_ok(topo, write_run(m->ops, d, dxpl, p, a, b, src, base), "writing /%s/%s to %s",
                              group_names[g], w->name, tmp);
            }
            if (d >= 0) H5Dclose(d);
        }
        H5Sclose(space);
        if (i == whole.count / 2) kill_point(rank, "tensors");
    }

    /* router biases: one per MoE block, from the first rank of the block's stage */
    int E = (int)cfg->model.moe.experts;
    int stage_rank0 = topo->tp_rank == 0 && topo->dp_rank == 0;
    for (int l = 0; l < cfg->model.num_layers && ok; l++) {
        if (!loom_model_layer_is_moe(&cfg->model, l)) continue;
        char bname[96];
        snprintf(bname, sizeof bname, "layers.%d.mlp.gate.e_score_correction_bias", l);
        hsize_t n = (hsize_t)E, one = 1;
        hid_t space = H5Screate_simple(1, &n, NULL);
        hid_t d = H5Dcreate2(g_buf, bname, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        ok = write_ok(topo, d >= 0, "creating /buffers/%s in %s", bname, tmp);
        if (ok) {
            const float *bias = NULL;
            if (stage_rank0 && l >= m->stage.layer_lo && l < m->stage.layer_hi)
                for (int k = 0; k < m->moe_layers; k++)
                    if (stage_moe_block(m, k) == l) bias = m->router_bias + (size_t)k * E;
            hid_t mspace = H5Screate_simple(1, bias ? &n : &one, NULL);
            if (!bias) H5Sselect_none(space), H5Sselect_none(mspace);
            ok = write_ok(topo,
                          H5Dwrite(d, H5T_NATIVE_FLOAT, mspace, space, dxpl,
                                   bias ? (const void *)bias : (const void *)&one) >= 0,
                          "writing /buffers/%s to %s", bname, tmp);
            H5Sclose(mspace);
        }
        if (d >= 0) H5Dclose(d);
        H5Sclose(space);
    }

    /* the sampler: the same on every rank; attributes are written collectively with the same values */
    const struct loom_sampler_state *st = s->sampler;
    char sources[LOOM_MAX_SOURCES * (LOOM_SECTION_NAME_MAX + 1) + 1] = "";
    int ns = s->streams->nstreams;
    for (int i = 0; i < ns; i++) {
        strcat(sources, s->streams->streams[i].source->name);
        if (i + 1 < ns) strcat(sources, "\n");
    }
    if (ok) {
        attr_i64(g_data, "sample", st->sample);
        attr_i64(g_data, "tokens", st->tokens);
        attr_str(g_data, "sources", sources);
    }
    for (int which = 0; which < 2 && ok; which++) {
        hsize_t n = (hsize_t)ns, one = 1;
        hid_t space = H5Screate_simple(1, ns ? &n : &one, NULL);
        hid_t d = H5Dcreate2(g_data, which ? "epoch" : "cursor", H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT,
                             H5P_DEFAULT);
        ok = write_ok(topo, d >= 0, "creating the sampler state in %s", tmp);
        if (ok) {
            int64_t zero = 0;
            hid_t mspace = H5Screate_simple(1, ns ? &n : &one, NULL);
            if (rank != 0) H5Sselect_none(space), H5Sselect_none(mspace);
            ok = write_ok(topo,
                          H5Dwrite(d, H5T_NATIVE_INT64, mspace, space, dxpl,
                                   ns ? (which ? st->epoch : st->cursor) : &zero) >= 0,
                          "writing the sampler state to %s", tmp);
            H5Sclose(mspace);
        }
        if (d >= 0) H5Dclose(d);
        H5Sclose(space);
    }

    /* the metadata while the file is open, so that a failure there still leaves it closable */
    if (ok) ok = write_ok(topo, H5Fflush(f, H5F_SCOPE_GLOBAL) >= 0, "writing the metadata of %s", tmp);
    loom_params_free(&whole);
    H5Pclose(dxpl);
    hid_t all[] = {g_m, g_v, g_optim, g_model, g_buf, g_data};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i] >= 0) H5Gclose(all[i]);
    /* a failed write: the partial file's space back first (it is deleted anyway), so that closing it, which
     * writes what metadata is left, can finish on a full disk */
    if (!ok && rank == 0 && truncate(tmp, 0) != 0) printf("loom: warning: cannot empty %s: %s\n", tmp, strerror(errno));
    if (!ok) MPI_CHECK(MPI_Barrier(topo->world_comm.mpi));
    int closed = H5Fclose(f) >= 0;
    return write_ok(topo, closed, "closing %s", tmp) && ok;
}

int loom_ckpt_save(const struct loom_ckpt_state *s, const struct loom_ckpt_meta *meta, int64_t prev_tokens,
                   double *seconds) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const struct loom_config *cfg = s->cfg;
    const struct loom_topology *topo = s->topo;
    int rank = topo->rank;
    char dir[4096], name[64], path[4200], tmp[4300], was[256] = "none";
    loom_ckpt_dir(cfg, dir, sizeof dir);
    snprintf(name, sizeof name, "step_%08lld.h5", (long long)meta->step);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    /* room for it first: a full disk skips this checkpoint, says so, and leaves the previous one as latest
     * (three float32 copies of every parameter, and a few KiB of metadata per dataset) */
    int room = 1;
    double need = 0;
    if (rank == 0) {
        latest_name(dir, was);
        struct loom_param_table whole;
        loom_params_build(&whole, &cfg->model, &cfg->optim);
        need = 12.0 * (double)whole.total + 3 * 4096.0 * whole.count + (1 << 20);
        loom_params_free(&whole);
        struct statvfs v;
        int err = mkdir_p(dir);
        /* a test hook: LOOM_TEST_CKPT_FREE_BYTES=N makes this check see N bytes free, so that a disk that fills
         * up during the write can be tested (with LOOM_TEST_CKPT_NO_RESERVE, see reserve) */
        const char *free_hook = getenv("LOOM_TEST_CKPT_FREE_BYTES");
        int got = !err && statvfs(dir, &v) == 0;
        if (got && free_hook) v.f_bavail = strtoull(free_hook, NULL, 10) / (v.f_frsize ? v.f_frsize : 1);
        if (err) {
            printf("loom: warning: checkpoint %s skipped: cannot create %s: %s; latest stays %s\n", name, dir,
                   strerror(err), was);
            room = 0;
        } else if (got && (double)v.f_bavail * (double)v.f_frsize < need) {
            printf("loom: warning: checkpoint %s skipped: it needs about %.1f MB and %s has %.1f MB free (no space left "
                   "on the device); latest stays %s\n",
                   name, need / 1e6, dir, (double)v.f_bavail * (double)v.f_frsize / 1e6, was);
            room = 0;
        }
        fflush(stdout);
    }
    MPI_CHECK(MPI_Bcast(&room, 1, MPI_INT, 0, topo->world_comm.mpi));
    *seconds = 0;
    if (!room) return 0;

    /* a write that failed on any rank: every rank stops, the partial file goes, the previous one stays */
    if (!write_file(s, meta, dir, tmp, need)) {
        char what[640];
        int who = write_failure(topo, what);
        if (rank == 0) {
            int kept = access(tmp, F_OK) == 0 && unlink(tmp) != 0;
            printf("loom: warning: checkpoint %s skipped: %s (rank %d); %s, latest stays %s\n", name, what, who,
                   kept ? "the partial file could not be removed" : "no partial file is left", was);
            fflush(stdout);
        }
        MPI_CHECK(MPI_Barrier(topo->world_comm.mpi));
        clock_gettime(CLOCK_MONOTONIC, &t1);
        *seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        return 0;
    }

    /* make it durable, then visible, then the latest */
    if (rank == 0) {
        kill_point(rank, "closed");
        fsync_path(tmp, 0);
        CHECK(rename(tmp, path) == 0, "renaming %s: %s", tmp, strerror(errno));
        fsync_path(dir, 1);
        kill_point(rank, "renamed");
        char latest[4300], latest_tmp[4400];
        snprintf(latest, sizeof latest, "%s/latest", dir);
        snprintf(latest_tmp, sizeof latest_tmp, "%s.tmp", latest);
        FILE *lf = fopen(latest_tmp, "w");
        CHECK(lf && fprintf(lf, "%s\n", name) > 0 && fflush(lf) == 0 && fsync(fileno(lf)) == 0 && fclose(lf) == 0,
              "writing %s: %s", latest_tmp, strerror(errno));
        CHECK(rename(latest_tmp, latest) == 0, "renaming %s: %s", latest_tmp, strerror(errno));
        int64_t every = cfg->checkpoint.release_every;
        if (every > 0 && meta->tokens / every > prev_tokens / every) {
            char rdir[4300], rpath[4400];
            snprintf(rdir, sizeof rdir, "%s/releases", dir);
            int err = mkdir_p(rdir);
            CHECK(err == 0, "cannot create %s: %s", rdir, strerror(err));
            snprintf(rpath, sizeof rpath, "%s/%s", rdir, name);
            unlink(rpath);
            CHECK(link(path, rpath) == 0, "linking the release %s: %s", rpath, strerror(errno));
            fsync_path(rdir, 1);
        }
        retain(dir, cfg->checkpoint.keep);
        fsync_path(dir, 1);
    }
    MPI_CHECK(MPI_Barrier(topo->world_comm.mpi));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (rank == 0) {
        struct stat st;
        double mb = stat(path, &st) == 0 ? (double)st.st_size / 1e6 : 0;
        if (io_stats.independent)
            printf("loom: warning: checkpoint %s: %ld of %ld tensor writes fell back to independent I/O (HDF5 "
                   "no-collective cause 0x%x)\n", name, io_stats.independent, io_stats.writes, (unsigned)io_stats.causes);
        printf("loom train: checkpoint %s (%.1f MB in %.2f s, %ld tensor writes, %s)\n", path, mb, *seconds,
               io_stats.writes, io_stats.independent ? "some independent" : "all collective");
        fflush(stdout);
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* reading                                                                                          */

int loom_ckpt_resume_path(const struct loom_config *cfg, char *path, size_t size) {
    const char *r = cfg->checkpoint.resume;
    if (!r || !r[0]) return 0;
    if (strcmp(r, "auto") != 0) {
        snprintf(path, size, "%s", r);
        return 1;
    }
    char dir[4096], latest[4200], name[256] = "";
    loom_ckpt_dir(cfg, dir, sizeof dir);
    snprintf(latest, sizeof latest, "%s/latest", dir);
    FILE *f = fopen(latest, "r");
    if (!f) return 0;
    int got = fgets(name, sizeof name, f) != NULL;
    fclose(f);
    name[strcspn(name, "\r\n")] = 0;
    if (!got || !name[0] || strchr(name, '/'))
        loom_input_error(latest, "remove it to start fresh, or set checkpoint.resume to a checkpoint file",
                         "does not name a checkpoint file");
    snprintf(path, size, "%s/%s", dir, name);
    return 1;
}

/* the [model] and [moe] keys whose values differ between this run and the checkpoint's config text */
struct kv {
    char section[64], key[64];
    const char *value; /* into the text, to the end of the line */
    int vlen;
};

static int parse_kv(char *text, struct kv *out, int max) {
    int n = 0;
    char section[64] = "";
    for (char *line = text; line && *line && n < max;) {
        char *end = strchr(line, '\n');
        int len = end ? (int)(end - line) : (int)strlen(line);
        if (line[0] == '[') {
            snprintf(section, sizeof section, "%.*s", (int)strcspn(line + 1, "]\n"), line + 1);
        } else if (line[0] != '#' && line[0] != ';' && memchr(line, '=', (size_t)len)) {
            struct kv *e = &out[n++];
            snprintf(e->section, sizeof e->section, "%s", section);
            int klen = (int)strcspn(line, " =");
            snprintf(e->key, sizeof e->key, "%.*s", klen, line);
            const char *v = (const char *)memchr(line, '=', (size_t)len) + 1;
            while (*v == ' ') v++;
            e->value = v;
            e->vlen = (int)(line + len - v);
        }
        line = end ? end + 1 : NULL;
    }
    return n;
}

static void model_key_diff(const struct loom_config *cfg, const char *there, char *out, size_t size) {
    struct loom_config other;
    loom_config_init(&other);
    loom_config_load_string(&other, there, "the checkpoint's config");
    char *a = config_text(cfg), *b = config_text(&other);
    enum { MAX_KV = 1024 };
    struct kv *ka = malloc_check(sizeof *ka * MAX_KV), *kb = malloc_check(sizeof *kb * MAX_KV);
    int na = parse_kv(a, ka, MAX_KV), nb = parse_kv(b, kb, MAX_KV);
    out[0] = 0;
    for (int i = 0; i < na; i++) {
        if (strcmp(ka[i].section, "model") && strcmp(ka[i].section, "moe")) continue;
        const struct kv *hit = NULL;
        for (int j = 0; j < nb && !hit; j++)
            if (!strcmp(kb[j].section, ka[i].section) && !strcmp(kb[j].key, ka[i].key)) hit = &kb[j];
        if (hit && hit->vlen == ka[i].vlen && !strncmp(hit->value, ka[i].value, (size_t)ka[i].vlen)) continue;
        char item[256];
        snprintf(item, sizeof item, "%s%s.%s is %.*s there, %.*s here", out[0] ? "; " : "", ka[i].section, ka[i].key,
                 hit ? hit->vlen : 5, hit ? hit->value : "unset", ka[i].vlen, ka[i].value);
        if (strlen(out) + strlen(item) + 1 < size) strcat(out, item);
    }
    free(ka);
    free(kb);
    free(a);
    free(b);
    loom_config_free(&other);
}

static void shape_text(char *out, size_t size, int ndim, const hsize_t *dims) {
    if (ndim == 1) snprintf(out, size, "[%llu]", (unsigned long long)dims[0]);
    else snprintf(out, size, "[%llu, %llu]", (unsigned long long)dims[0], (unsigned long long)dims[1]);
}

/* Opens group/name and checks it is float32-convertible data of the whole shape of w. */
static hid_t open_tensor(const struct reader *r, const struct loom_config *cfg, const char *ckpt_config,
                         const char *group, const struct loom_param *w) {
    char full[LOOM_PARAM_NAME_MAX + 64];
    snprintf(full, sizeof full, "/%s/%s", group, w->name);
    if (H5Lexists(r->file, full, H5P_DEFAULT) <= 0) {
        char diff[1024];
        model_key_diff(cfg, ckpt_config, diff, sizeof diff);
        loom_input_error(r->path, "resume with the model config the checkpoint was written with",
                         "tensor %s is missing (%s)", full, diff[0] ? diff : "the model configs agree: damaged file?");
    }
    hid_t d = H5Dopen2(r->file, full, H5P_DEFAULT);
    if (d < 0) bad_file(r, "the file may be truncated", "cannot open", full);
    hid_t space = H5Dget_space(d), type = H5Dget_type(d);
    int ndim = H5Sget_simple_extent_ndims(space);
    hsize_t dims[2] = {0, 0};
    if (ndim >= 1 && ndim <= 2) H5Sget_simple_extent_dims(space, dims, NULL);
    hsize_t want[2] = {(hsize_t)w->shape.dims[0], w->shape.ndim > 1 ? (hsize_t)w->shape.dims[1] : 1};
    int wnd = w->shape.ndim > 1 ? 2 : 1;
    if (ndim != wnd || dims[0] != want[0] || (wnd == 2 && dims[1] != want[1])) {
        char got[64], exp[64], diff[1024];
        shape_text(got, sizeof got, ndim, dims);
        shape_text(exp, sizeof exp, wnd, want);
        model_key_diff(cfg, ckpt_config, diff, sizeof diff);
        loom_input_error(r->path, "resume with the model config the checkpoint was written with",
                         "tensor %s is %s in the checkpoint, %s in this model (%s)", full, got, exp,
                         diff[0] ? diff : "the model configs agree: damaged file?");
    }
    if (H5Tget_class(type) != H5T_FLOAT) bad_file(r, NULL, "not floating-point data:", full);
    H5Tclose(type);
    H5Sclose(space);
    return d;
}

/* reads the run [a, b) of p's local part into dst (backend memory holding element `base` at dst[0]) */
static void read_run(const struct reader *r, const struct loom_ops *ops, hid_t dset, const struct loom_param *p,
                     size_t a, size_t b, float *dst, size_t base) {
    if (a >= b) return;
    hid_t fspace = H5Dget_space(dset);
    hsize_t n = b - a;
    hid_t mspace = H5Screate_simple(1, &n, NULL);
    select_run(fspace, p, a, b);
    float *host = malloc_check(sizeof(float) * n);
    if (H5Dread(dset, H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT, host) < 0)
        bad_file(r, "the file may be truncated or damaged", "cannot read", p->name);
    ops->from_host(dst + (a - base), host, sizeof(float) * n);
    free(host);
    H5Sclose(mspace);
    H5Sclose(fspace);
}

void loom_ckpt_load(const struct loom_ckpt_state *s, const char *path, int weights_only, struct loom_ckpt_meta *meta) {
    const struct loom_config *cfg = s->cfg;
    struct loom_model *m = s->model;
    /* a bad file is seen by every rank alike, but a rank may fail alone on a tensor only it reads: each
     * rank that finds a problem reports it and takes the job down with exit 2 */
    loom_error_set_collective(0);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    struct reader r = {.path = path};
    if (access(path, R_OK) != 0)
        loom_input_error(path, weights_only ? "check checkpoint.init_from" : "check checkpoint.resume",
                         "cannot read the checkpoint: %s", strerror(errno));
    if (H5Fis_hdf5(path) <= 0)
        loom_input_error(path, "a loom checkpoint is an HDF5 file (step_*.h5)", "not an HDF5 file (or truncated)");
    r.file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (r.file < 0) loom_input_error(path, NULL, "cannot open the HDF5 file (truncated or damaged?)");

    char *format = attr_read_str(&r, r.file, "format");
    if (strcmp(format, LOOM_CKPT_FORMAT) != 0)
        loom_input_error(path, NULL, "format is \"%s\", not \"%s\"", format, LOOM_CKPT_FORMAT);
    free(format);
    int32_t version;
    attr_read(&r, r.file, "version", H5T_NATIVE_INT32, &version);
    if (version > LOOM_CKPT_VERSION || version < 1)
        loom_input_error(path, "read it with the loom version that wrote it, or a newer one",
                         "format version %d; this build reads versions 1..%d", version, LOOM_CKPT_VERSION);
    char *ckpt_config = attr_read_str(&r, r.file, "config");
    memset(meta, 0, sizeof *meta);
    meta->step = attr_read_i64(&r, r.file, "step");
    meta->tokens = attr_read_i64(&r, r.file, "tokens");
    meta->samples = attr_read_i64(&r, r.file, "samples");
    meta->seed = attr_read_i64(&r, r.file, "seed");
    attr_read(&r, r.file, "loss_scale", H5T_NATIVE_DOUBLE, &meta->loss_scale);
    meta->scale_good_steps = attr_read_i64(&r, r.file, "loss_scale_good_steps");
    meta->schedule_tokens = attr_read_i64(&r, r.file, "schedule_tokens");
    meta->skipped_steps = attr_read_i64(&r, r.file, "skipped_steps");

    /* every tensor of the whole model must be there at its shape (checked on every rank alike) */
    struct loom_param_table whole;
    loom_params_build(&whole, &cfg->model, &cfg->optim);
    for (int i = 0; i < whole.count; i++) {
        const struct loom_param *w = &whole.params[i];
        int li = loom_params_find(&m->table, w->name);
        const struct loom_param *p = li >= 0 ? &m->table.params[li] : NULL;
        hid_t d = open_tensor(&r, cfg, ckpt_config, "model", w);
        if (p) read_run(&r, m->ops, d, p, p->offset, p->offset + p->numel, m->master, 0);
        H5Dclose(d);
        if (weights_only) continue;
        for (int g = 0; g < 2; g++) {
            d = open_tensor(&r, cfg, ckpt_config, g ? "optim/exp_avg_sq" : "optim/exp_avg", w);
            if (p) {
                struct loom_adamw *o = &s->adamw[is_routed_expert(s, p) ? 1 : 0];
                size_t a = p->offset > o->lo ? p->offset : o->lo;
                size_t b = p->offset + p->numel < o->hi ? p->offset + p->numel : o->hi;
                read_run(&r, m->ops, d, p, a, b, g ? o->v : o->m, o->lo);
            }
            H5Dclose(d);
        }
    }
    loom_params_free(&whole);

    /* router biases of this stage's MoE blocks */
    int E = (int)cfg->model.moe.experts;
    for (int k = 0; k < m->moe_layers; k++) {
        struct loom_param b = {.shape = loom_shape_1d(E)};
        snprintf(b.name, sizeof b.name, "layers.%d.mlp.gate.e_score_correction_bias", stage_moe_block(m, k));
        hid_t d = open_tensor(&r, cfg, ckpt_config, "buffers", &b);
        if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, m->router_bias + (size_t)k * E) < 0)
            bad_file(&r, "the file may be truncated", "cannot read", b.name);
        H5Dclose(d);
    }

    if (!weights_only) {
        hid_t g_optim = H5Gopen2(r.file, "optim", H5P_DEFAULT);
        if (g_optim < 0) bad_file(&r, NULL, "no group", "/optim");
        int64_t step = attr_read_i64(&r, g_optim, "step");
        for (int k = 0; k < LOOM_SHARD_PARTS; k++) s->adamw[k].step = step;
        H5Gclose(g_optim);

        /* the sampler: cursors by source name, so a run may resume with sources added or reordered */
        hid_t g = H5Gopen2(r.file, "data", H5P_DEFAULT);
        if (g < 0) bad_file(&r, NULL, "no group", "/data");
        struct loom_sampler_state *st = s->sampler;
        memset(st, 0, sizeof *st);
        st->sample = attr_read_i64(&r, g, "sample");
        st->tokens = attr_read_i64(&r, g, "tokens");
        char *names = attr_read_str(&r, g, "sources");
        int64_t cursor[LOOM_MAX_SOURCES] = {0}, epoch[LOOM_MAX_SOURCES] = {0};
        int nfile = 0;
        char *saveptr = NULL, *file_names[LOOM_MAX_SOURCES];
        for (char *t = strtok_r(names, "\n", &saveptr); t && nfile < LOOM_MAX_SOURCES; t = strtok_r(NULL, "\n", &saveptr))
            file_names[nfile++] = t;
        for (int which = 0; which < 2 && nfile; which++) {
            hid_t d = H5Dopen2(g, which ? "epoch" : "cursor", H5P_DEFAULT);
            hid_t space = d >= 0 ? H5Dget_space(d) : -1;
            if (space < 0 || H5Sget_simple_extent_npoints(space) != nfile ||
                H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, which ? epoch : cursor) < 0)
                bad_file(&r, NULL, "damaged sampler state", which ? "/data/epoch" : "/data/cursor");
            H5Sclose(space);
            H5Dclose(d);
        }
        for (int i = 0; i < s->streams->nstreams; i++)
            for (int j = 0; j < nfile; j++)
                if (strcmp(s->streams->streams[i].source->name, file_names[j]) == 0)
                    st->cursor[i] = cursor[j], st->epoch[i] = epoch[j];
        free(names);
        H5Gclose(g);
    }
    free(ckpt_config);
    H5Fclose(r.file);
    loom_model_sync_weights(m);
    loom_error_set_collective(1);
    MPI_CHECK(MPI_Barrier(s->topo->world_comm.mpi));
}
