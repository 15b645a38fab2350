/*
 * checkpoints/ckpt.h — HDF5 checkpoints: one file per checkpoint, written collectively with parallel
 * HDF5 (MPI-IO), every tensor at its global shape, so any dp / tp / pp / ep layout reads any checkpoint.
 *
 * File format "loom-checkpoint", version 1:
 *
 *   /                   attributes: format (string "loom-checkpoint"), version (int32 1), step, tokens,
 *                       samples, seed (int64), loss_scale (float64), loss_scale_good_steps,
 *                       schedule_tokens, skipped_steps (int64: the loss scaler and the schedule's position),
 *                       config (string: the resolved INI text of the run), layout (string
 *                       "dp=2 tp=2 pp=2 ep=1 zero=1 world=8")
 *   /model/NAME         float32, the fp32 master weight NAME of the parameter table at its whole shape
 *                       ([rows, cols] matrices, [n] vectors): embed_tokens.weight, layers.L.*, norm.weight,
 *                       lm_head.weight (untied only)
 *   /buffers/NAME       float32: layers.L.mlp.gate.e_score_correction_bias [experts] of each MoE block
 *   /optim              attribute step (int64: AdamW updates done)
 *   /optim/exp_avg/NAME, /optim/exp_avg_sq/NAME   float32, AdamW's moments at the weight's shape
 *   /data               attributes sample, tokens (int64), sources (string: source names, one per line);
 *                       datasets cursor, epoch (int64 [sources]): the sampler state after `step` steps
 *
 * Files live in DIR (checkpoint.dir, default RUN_DIR/checkpoints) as step_%08lld.h5; DIR/latest holds the
 * file name of the newest complete one. Writing goes to NAME.tmp, which is closed, synced and renamed;
 * then `latest` is replaced by rename, so a crash at any moment leaves the previous checkpoint as latest.
 * A write that fails on any rank (a full disk, a read-only folder) is skipped on every rank with a warning,
 * NAME.tmp removed and `latest` left as it was (loom_ckpt_save).
 */
#ifndef LOOM_CHECKPOINTS_CKPT_H
#define LOOM_CHECKPOINTS_CKPT_H

#include <stdint.h>

#include "core/config.h"
#include "data/sampler.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "parallel/grads.h"
#include "parallel/topology.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_CKPT_FORMAT "loom-checkpoint"
enum { LOOM_CKPT_VERSION = 1 };

/* What a checkpoint holds besides the tensors. */
struct loom_ckpt_meta {
    int64_t step, tokens, samples, seed;
    double loss_scale;
    int64_t scale_good_steps;      /* steps since the dynamic loss scale last changed */
    int64_t schedule_tokens;       /* tokens of the steps taken (skipped steps do not move the schedule) */
    int64_t skipped_steps;
};

/* Everything a rank contributes to or takes from a checkpoint. */
struct loom_ckpt_state {
    const struct loom_config *cfg;
    struct loom_topology *topo;
    struct loom_model *model;
    const struct loom_shards *shards;
    struct loom_adamw *adamw;               /* [LOOM_SHARD_PARTS], one per part of the buffer */
    struct loom_sampler_state *sampler;     /* after `step` steps */
    const struct loom_sampler *streams;     /* the source names */
};

/* The checkpoint folder of a run. */
void loom_ckpt_dir(const struct loom_config *cfg, char *out, size_t size);

/* Writes DIR/step_%08lld.h5 (collective over the world), then points DIR/latest at it and applies the
 * retention (checkpoint.keep, checkpoint.release_every; prev_tokens: tokens at the previous checkpoint,
 * to tell whether this one is the first past a release multiple); *seconds: the time it took. Returns 1,
 * or 0 on every rank when the checkpoint was skipped with a warning: too little room on the disk for it,
 * or a write that failed on any rank (a disk that filled up, a folder that turned read-only; the partial
 * file is removed). Either way `latest` stays the previous checkpoint. */
int loom_ckpt_save(const struct loom_ckpt_state *s, const struct loom_ckpt_meta *meta, int64_t prev_tokens,
                   double *seconds);

/* The checkpoint checkpoint.resume names ("auto": DIR/latest when present) into path; 0 when there is
 * none to resume from (resume empty, or auto without a latest). */
int loom_ckpt_resume_path(const struct loom_config *cfg, char *path, size_t size);

/* Reads a checkpoint into this rank's part of the model (collective over the world). weights_only:
 * checkpoint.init_from, the weights and router biases only; else everything (moments, optimizer step,
 * sampler state, meta). Bad files exit 2 naming the file and the problem. */
void loom_ckpt_load(const struct loom_ckpt_state *s, const char *path, int weights_only, struct loom_ckpt_meta *meta);

#ifdef __cplusplus
}
#endif
#endif
