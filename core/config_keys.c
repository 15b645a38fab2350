/*
 * core/config_keys.c — every config key, declared once: section, name, type, default, meaning.
 * The parser, `loom info`, the resolved-config writer and the README's key list read this table.
 */
#include "core/config.h"

#include <stddef.h>

#define K(sec, field, type, def, choices, meaning) \
    { #sec, #field, LOOM_KEY_##type, offsetof(struct loom_config, sec.field), def, choices, meaning, 0 }
#define KM(field, type, def, choices, meaning) \
    { "moe", #field, LOOM_KEY_##type, offsetof(struct loom_config, model.moe.field), def, choices, meaning, 0 }
#define NAMED(sec, elem, field, type, def, choices, meaning) \
    { #sec, #field, LOOM_KEY_##type, offsetof(struct elem, field), def, choices, meaning, 1 }

const struct loom_key loom_config_keys[] = {
    /* [model] */
    K(model, attention, ENUM, "mla", "mla|mha", "attention kind: multi-head latent (DeepSeek-V3) or multi-head/GQA"),
    K(model, vocab_size, INT, "512", NULL, "vocabulary size (embedding and head rows)"),
    K(model, hidden_size, INT, "256", NULL, "model width C"),
    K(model, num_layers, INT, "4", NULL, "number of transformer blocks"),
    K(model, num_heads, INT, "4", NULL, "attention (query) heads"),
    K(model, num_kv_heads, INT, "0", NULL, "mha: key/value heads for GQA; 0 = num_heads"),
    K(model, head_dim, INT, "0", NULL, "mha: q/k head width; 0 = hidden_size / num_heads"),
    K(model, v_head_dim, INT, "0", NULL, "value head width; 0 = head_dim (mha) or qk_nope_head_dim (mla)"),
    K(model, q_lora_rank, INT, "0", NULL, "mla: query latent width (0 = full-rank q projection)"),
    K(model, kv_lora_rank, INT, "64", NULL, "mla: key/value latent width"),
    K(model, qk_nope_head_dim, INT, "32", NULL, "mla: per-head q/k width without RoPE"),
    K(model, qk_rope_head_dim, INT, "16", NULL, "mla: per-head q/k width with RoPE (one rope key shared by all heads)"),
    K(model, intermediate_size, INT, "768", NULL, "SwiGLU hidden width"),
    K(model, rope_theta, FLOAT, "10000", NULL, "RoPE base"),
    K(model, rope_style, ENUM, "interleaved", "interleaved|half",
      "RoPE pairing: adjacent pairs (DeepSeek/Youtu) or first half with second half (Llama/dots.llm1)"),
    K(model, rms_norm_eps, FLOAT, "1e-6", NULL, "RMSNorm epsilon"),
    K(model, tie_word_embeddings, BOOL, "true", NULL, "LM head shares the embedding matrix"),
    K(model, qk_norm, BOOL, "false", NULL, "mha: RMSNorm over head_dim on q and k before RoPE (dots.llm1)"),
    K(model, init_std, FLOAT, "0.02", NULL, "std of the normal init of matrices"),
    K(model, embed_init_std, FLOAT, "0", NULL, "std of the embedding init; 0 = init_std"),

    /* [moe] */
    KM(experts, INT, "0", NULL, "routed experts per MoE layer; 0 = dense MLP everywhere"),
    KM(top_k, INT, "2", NULL, "routed experts per token"),
    KM(shared, INT, "0", NULL, "shared experts (one SwiGLU of width shared x intermediate, added unscaled)"),
    KM(intermediate, INT, "0", NULL, "width of one expert's SwiGLU"),
    KM(first_dense, INT, "0", NULL, "the first layers keep the dense MLP (dots.llm1: 1)"),
    KM(scaling, FLOAT, "1", NULL, "routed_scaling_factor on the routed weights (dots.llm1: 2.5)"),
    KM(norm_topk, BOOL, "true", NULL, "normalise the top-k weights to sum 1 before scaling"),
    KM(score, ENUM, "sigmoid", "sigmoid|softmax", "router scores"),
    KM(groups, INT, "1", NULL, "expert groups for group-limited routing (DeepSeek-V3); 1 = off"),
    KM(topk_groups, INT, "1", NULL, "groups kept per token under group-limited routing"),
    KM(bias_update_rate, FLOAT, "1e-3", NULL, "aux-loss-free balancing rate gamma; 0 = off"),
    KM(balance_alpha, FLOAT, "1e-4", NULL, "weight alpha of the sequence-wise balance loss; 0 = off"),

    /* [train] */
    K(train, steps, INT, "100", NULL, "optimizer steps to run"),
    K(train, seed, INT, "1234", NULL, "seed of parameter init and data order"),
    K(train, seq_len, INT, "256", NULL, "tokens per sequence T"),
    K(train, micro_batch, INT, "4", NULL, "sequences per forward/backward"),
    K(train, global_batch, INT, "8", NULL, "sequences per optimizer step (gradient accumulation fills it)"),
    K(train, run_dir, STRING, "runs/default", NULL, "run folder: resolved config, metrics.jsonl"),
    K(train, threads, INT, "0", NULL, "CPU threads; 0 = every core"),
    K(train, recompute, ENUM, "none", "none|selective|full",
      "activation recomputation: selective = attention probabilities, full = whole dense blocks (MoE blocks keep theirs)"),
    K(train, device, ENUM, "auto", "auto|cpu|cuda",
      "backend: the CUDA backend (model/cuda) or the CPU one; auto = cuda when built with it and a GPU is visible"),
    K(train, batch_schedule, STRING, "", NULL,
      "global batch ramp \"TOKENS:SEQUENCES, ...\": from TOKENS consumed on, SEQUENCES per step"),
    K(train, max_nonfinite_steps, INT, "8", NULL,
      "stop (exit 1) after this many consecutive steps whose gradients are not finite (each is skipped); 0 = never"),
    K(train, stop_after, INT, "0", NULL,
      "stop after this step, writing a checkpoint when checkpointing is on (a planned pre-emption); the "
      "schedule still spans train.steps; 0 = run to train.steps"),

    /* [optim] */
    K(optim, beta1, FLOAT, "0.9", NULL, "AdamW beta1"),
    K(optim, beta2, FLOAT, "0.95", NULL, "AdamW beta2"),
    K(optim, eps, FLOAT, "1e-8", NULL, "AdamW epsilon"),
    K(optim, weight_decay, FLOAT, "0.1", NULL, "decoupled weight decay"),
    K(optim, decay_norms, BOOL, "false", NULL, "apply weight decay to norm weights"),
    K(optim, decay_embeddings, BOOL, "false", NULL, "apply weight decay to the embedding (and a tied head)"),
    K(optim, grad_clip, FLOAT, "1.0", NULL, "clip gradients to this global L2 norm; 0 = off"),

    /* [schedule] */
    K(schedule, kind, ENUM, "cosine", "constant|cosine|linear|wsd", "learning-rate shape after warmup"),
    K(schedule, lr, FLOAT, "3e-4", NULL, "peak learning rate"),
    K(schedule, min_lr, FLOAT, "0", NULL, "cosine/linear: final learning rate"),
    K(schedule, warmup_tokens, INT, "0", NULL, "linear warmup length in tokens"),
    K(schedule, decay_tokens, INT, "0", NULL, "cosine/linear: decay length after warmup in tokens; 0 = rest of the run"),
    K(schedule, anneal_start, INT, "0", NULL, "wsd: token count where annealing begins (end of the stable phase)"),
    K(schedule, anneal, STRING, "", NULL,
      "wsd: annealing segments \"TOKENS:LR[:linear|cosine], ...\", each from the previous LR to LR over TOKENS"),

    /* [data] */
    K(data, kind, ENUM, "shards", "shards|random", "training tokens: shard files, or uniform random ids (benchmarks)"),
    K(data, train, STRING, "", NULL,
      "shorthand for one source named `train`: shard files, folders or globs (or use [source.NAME])"),

    /* [source.NAME] */
    NAMED(source, loom_source_config, shards, STRING, "", NULL, "shard files (*.tok), folders of them, or globs"),
    NAMED(source, loom_source_config, heldout, STRING, "", NULL, "held-out shards for [eval], same forms"),
    NAMED(source, loom_source_config, loss_mask, ENUM, "all", "all|assistant",
          "tokens in the loss: all, or only those the shard marks (assistant turns of trajectories)"),
    NAMED(source, loom_source_config, tokens, INT, "0", NULL,
          "size assumed by `loom data plan` when the shards are not at hand; 0 = count the shards"),

    /* [curriculum] and [phase.NAME] */
    K(curriculum, phases, STRING, "", NULL, "phase names in order; empty = one phase weighting sources by size"),
    K(curriculum, max_epochs, FLOAT, "4", NULL, "`loom data plan` warns when a source repeats more often"),
    NAMED(phase, loom_phase_config, until, INT, "0", NULL, "tokens consumed when the phase ends (0 = end of run)"),
    NAMED(phase, loom_phase_config, weights, STRING, "", NULL, "mixture \"source:weight, ...\" (normalised)"),
    NAMED(phase, loom_phase_config, ramp, INT, "0", NULL,
          "blend linearly from the previous phase's mixture over this many tokens; 0 = switch at once"),
    NAMED(phase, loom_phase_config, seq_len, INT, "0", NULL, "sequence length in this phase; 0 = train.seq_len"),
    NAMED(phase, loom_phase_config, rope_theta, FLOAT, "0", NULL, "RoPE base in this phase; 0 = model.rope_theta"),

    /* [eval] */
    K(eval, every, INT, "0", NULL, "held-out loss per source every N steps; 0 = never"),
    K(eval, sequences, INT, "16", NULL, "held-out sequences per source in each evaluation (the same ones every time)"),

    /* [parallel] */
    K(parallel, dp, INT, "1", NULL, "data-parallel ranks"),
    K(parallel, tp, INT, "1", NULL, "tensor-parallel ranks (Megatron column/row split)"),
    K(parallel, pp, INT, "1", NULL, "pipeline stages"),
    K(parallel, ep, INT, "1", NULL, "expert-parallel ranks, drawn from the dp x tp ranks of a stage"),
    K(parallel, micro_batches, INT, "0", NULL,
      "micro-batches per step on each dp rank; 0 = train.global_batch / (dp x train.micro_batch)"),
    K(parallel, zero, INT, "0", NULL, "1 = ZeRO-1: shard the optimizer state over dp, all-gather parameters"),
    K(parallel, stage_layers, STRING, "", NULL, "layers per pipeline stage, e.g. 3,3,2; empty = as even as possible"),

    /* [pipeline] */
    K(pipeline, schedule, ENUM, "1f1b", "1f1b|gpipe",
      "pipeline schedule: one-forward-one-backward (Megatron), or all forwards then all backwards"),
    K(pipeline, overlap_moe_a2a, BOOL, "false", NULL,
      "in 1F1B's steady phase interleave a forward and a backward so MoE all-to-alls hide behind compute"),

    /* [precision] */
    K(precision, compute, ENUM, "fp32", "fp32|bf16|fp16",
      "dtype of activations, gradients and matmul weights; masters, moments, router, softmax and loss stay fp32"),
    K(precision, loss_scale, FLOAT, "0", NULL,
      "a static loss scale; 0 = dynamic with fp16, none (1) with bf16 and fp32"),
    K(precision, initial_scale, FLOAT, "65536", NULL, "dynamic loss scaling: the first scale"),
    K(precision, growth_factor, FLOAT, "2", NULL, "dynamic loss scaling: the scale grows by this factor"),
    K(precision, growth_interval, INT, "1000", NULL, "dynamic loss scaling: after this many steps without overflow"),
    K(precision, backoff_factor, FLOAT, "0.5", NULL, "dynamic loss scaling: the scale shrinks by this on an overflow"),
    K(precision, min_scale, FLOAT, "1", NULL, "dynamic loss scaling: the scale never goes below this"),

    /* [checkpoint] */
    K(checkpoint, every, INT, "0", NULL, "write a checkpoint every N steps; 0 = never on a step count"),
    K(checkpoint, every_tokens, INT, "0", NULL, "write a checkpoint every N tokens; 0 = never on a token count"),
    K(checkpoint, every_minutes, FLOAT, "0", NULL, "write a checkpoint every M minutes of wall time; 0 = never on time"),
    K(checkpoint, dir, STRING, "", NULL, "checkpoint folder; empty = RUN_DIR/checkpoints"),
    K(checkpoint, keep, INT, "3", NULL, "keep the last K checkpoints, delete older ones (releases are kept)"),
    K(checkpoint, release_every, INT, "0", NULL,
      "tokens: keep the first checkpoint past every multiple for good, linked into DIR/releases; 0 = none"),
    K(checkpoint, resume, STRING, "", NULL,
      "resume everything from a checkpoint: a path, or auto = DIR/latest when there is one; empty = start fresh"),
    K(checkpoint, init_from, STRING, "", NULL,
      "start a new run from a checkpoint's weights (fresh optimizer, schedule and data position)"),
    K(checkpoint, final, BOOL, "true", NULL, "write a checkpoint when the run ends (when any checkpointing is on)"),

    /* [log] */
    K(log, every, INT, "10", NULL, "print the progress line every N steps"),
    K(log, peak_tflops, FLOAT, "0", NULL, "peak TFLOP/s for MFU; 0 = measure an fp32 GEMM at start"),
    K(log, dump_grads, STRING, "", NULL,
      "debugging: after step 1 write each rank's reduced gradients to PREFIX.rankR.bin (parity tests)"),
    K(log, dump_logits, STRING, "", NULL,
      "studies (one process): after every step append the logits of step 1's first micro-batch to FILE (float32)"),
};

const size_t loom_config_nkeys = sizeof loom_config_keys / sizeof loom_config_keys[0];

#define NAMED_SECTION(prefix, array, count, elem, max) \
    { prefix, offsetof(struct loom_config, array), offsetof(struct loom_config, count), sizeof(struct elem), max }

const struct loom_named_section loom_config_named[] = {
    NAMED_SECTION("source", sources, nsources, loom_source_config, LOOM_MAX_SOURCES),
    NAMED_SECTION("phase", phases, nphases, loom_phase_config, LOOM_MAX_PHASES),
};

const size_t loom_config_nnamed = sizeof loom_config_named / sizeof loom_config_named[0];
