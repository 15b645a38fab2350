/*
 * data/curriculum.h — sources and the curriculum: the data mixture as a function of tokens consumed.
 *
 * Phases are keyed by cumulative tokens: phase i covers [until(i-1), until(i)) and has weights over
 * the sources. Entering a phase either switches at once or blends linearly from the previous
 * phase's weights over `ramp` tokens (the Youtu-LLM recipe moves commonsense -> STEM -> agentic
 * this way). A phase may also set the sequence length and the RoPE base (context extension).
 * `train.batch_schedule` ramps the global batch by tokens consumed (dots.llm1: 64M -> 96M -> 128M).
 * Everything here is a pure function of the config and a token count.
 */
#ifndef LOOM_DATA_CURRICULUM_H
#define LOOM_DATA_CURRICULUM_H

#include <stdint.h>

#include "core/config.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { LOOM_MAX_BATCH_STEPS = 16 };

struct loom_curriculum_phase {
    char name[LOOM_SECTION_NAME_MAX];
    int64_t start, end;            /* tokens; end = INT64_MAX for an open last phase */
    int64_t ramp;                  /* tokens of linear blend from the previous phase at the start */
    double weights[LOOM_MAX_SOURCES]; /* normalised to sum 1 */
    int64_t seq_len;               /* resolved (never 0) */
    double rope_theta;             /* resolved (never 0) */
};

struct loom_curriculum {
    int nsources;
    const struct loom_source_config *sources[LOOM_MAX_SOURCES]; /* into the config */
    int nphases;
    struct loom_curriculum_phase phases[LOOM_MAX_PHASES];
    int nbatch;                    /* batch schedule: from batch_from[i] tokens on, batch_seqs[i] sequences */
    int64_t batch_from[LOOM_MAX_BATCH_STEPS + 1];
    int64_t batch_seqs[LOOM_MAX_BATCH_STEPS + 1];
};

/* The sources of a config: its [source.NAME] sections, plus one named `train` from the data.train
 * shorthand. Returns the count and fills out[]. */
int loom_config_sources(const struct loom_config *cfg, const struct loom_source_config **out,
                        struct loom_source_config *shorthand);

/* Builds and checks the curriculum. size[s] (tokens of source s, or NULL) sets the weights of the
 * implicit single phase when [curriculum] names none (proportional to size; equal when NULL).
 * Bad weights, phase order, unknown sources, a bad batch schedule: exit 2 naming the key. */
void loom_curriculum_build(struct loom_curriculum *c, const struct loom_config *cfg, const int64_t *size);

/* Every source a phase draws from (weight > 0 there, or in the phase a ramp blends from) holds at
 * least one sample of that phase's sequence length: else exit 2 naming phase.NAME.seq_len. */
void loom_curriculum_check_sizes(const struct loom_curriculum *c, const int64_t *size);

/* Index of the phase holding token position `tokens`. */
int loom_curriculum_phase_at(const struct loom_curriculum *c, int64_t tokens);
/* The mixture at token position `tokens` (ramps applied); w has nsources entries summing to 1. */
void loom_curriculum_weights_at(const struct loom_curriculum *c, int64_t tokens, double *w);
/* Sequence length, RoPE base and global batch (sequences) in force at `tokens`. */
int64_t loom_curriculum_seq_len_at(const struct loom_curriculum *c, int64_t tokens);
double loom_curriculum_rope_theta_at(const struct loom_curriculum *c, int64_t tokens);
int64_t loom_curriculum_batch_at(const struct loom_curriculum *c, int64_t tokens);
/* The largest sequence length and global batch of the run (sizes the buffers). */
int64_t loom_curriculum_max_seq_len(const struct loom_curriculum *c);
int64_t loom_curriculum_max_batch(const struct loom_curriculum *c);

/* ∫ w_s(t) dt over [a, b): tokens expected from each source there, in closed form. */
void loom_curriculum_integrate(const struct loom_curriculum *c, int64_t a, int64_t b, double *tokens);

#ifdef __cplusplus
}
#endif
#endif
