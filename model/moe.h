/*
 * model/moe.h — the dots.llm1 / DeepSeek-V3 mixture-of-experts MLP of one block.
 *
 * Router in fp32: sigmoid (or softmax) scores; experts chosen by score + score-correction bias (the
 * aux-loss-free balancing buffer), weighted by the unbiased scores normalised over the top-k and
 * scaled by routed_scaling_factor; routed experts are SwiGLUs run on their tokens gathered into one
 * contiguous block per expert (a grouped GEMM on the CPU is one sgemm per expert); the shared experts
 * are one SwiGLU of width shared x intermediate added unscaled. No token is dropped. The sequence-wise
 * balance loss alpha * sum_i f_i P_i (DeepSeek-V3 eqs. 17-20) adds its gradient to the router.
 */
#ifndef LOOM_MODEL_MOE_H
#define LOOM_MODEL_MOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct loom_model;
struct loom_moe_layer;

/* The MoE state of global block `layer` for one activation slot of B x T_max tokens. */
struct loom_moe_layer *loom_moe_layer_create(const struct loom_model *m, int layer, int B, int T_max);
void loom_moe_layer_free(const struct loom_model *m, struct loom_moe_layer *L);
/* Floats of device activations it holds (for reports), and what a layer for B x T would hold. */
size_t loom_moe_layer_floats(const struct loom_moe_layer *L);
struct loom_model_config;
size_t loom_moe_activation_floats(const struct loom_model_config *cfg, int B, int T);

/* out[N,C] = MoE(x[N,C]). bias[E] (host) steers the choice; load[E] (host) += tokens sent to each
 * expert; *balance (host) += this micro-batch's balance loss (already weighted, see bal_scale). */
void loom_moe_forward(const struct loom_model *m, struct loom_moe_layer *L, const float *x, float *out,
                      const float *bias, int64_t *load, double *balance, float bal_scale);
/* dx[N,C] = d(loss)/dx (assigned); parameter gradients +=. dout is d(loss)/d(out). */
void loom_moe_backward(const struct loom_model *m, struct loom_moe_layer *L, const float *x, const float *dout,
                       float *dx);

/* The same in three phases (0, 1, 2), so a caller can run other work while a phase's all-to-all is in
 * flight: phase 0 routes, starts the dispatch and runs the shared experts; phase 1 runs this rank's
 * experts and starts the combine; phase 2 adds the routed outputs (backward: the router gradient).
 * Running the phases back to back is loom_moe_forward / loom_moe_backward exactly. */
enum { LOOM_MOE_PHASES = 3 };
void loom_moe_forward_phase(const struct loom_model *m, struct loom_moe_layer *L, int phase, const float *x,
                            float *out, const float *bias, int64_t *load, double *balance, float bal_scale);
void loom_moe_backward_phase(const struct loom_model *m, struct loom_moe_layer *L, int phase, const float *x,
                             const float *dout, float *dx);

/* The aux-loss-free update after a step: b_i += rate * sign(mean(load) - load_i). */
void loom_moe_bias_update(float *bias, const int64_t *load, int experts, double rate);

#ifdef __cplusplus
}
#endif
#endif
