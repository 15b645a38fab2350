/*
 * train/info.c — `loom info -c FILE`: the resolved config, the parameter table, parameter counts,
 * FLOPs per token and the memory a run needs, computed without allocating the model.
 */
#include <stdio.h>

#include "core/config.h"
#include "model/model.h"
#include "model/params.h"
#include "train/cli.h"

static const char *USAGE = "loom info -c CONFIG [--section.key=value ...]";

static void print_bytes(const char *what, double bytes) {
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) bytes /= 1024, u++;
    printf("  %-34s %10.2f %s\n", what, bytes, unit[u]);
}

static void print_count(const char *what, int64_t n) {
    printf("  %-34s %16lld  (%.3f B)\n", what, (long long)n, n / 1e9);
}

int loom_info_main(int argc, char **argv) {
    struct loom_config cfg;
    loom_cli_load_config(&cfg, argc, argv, USAGE, 0);

    printf("# resolved config\n");
    loom_config_write(stdout, &cfg);

    struct loom_param_table t;
    loom_params_build(&t, &cfg.model, &cfg.optim);
    printf("\n# parameters\n");
    printf("  %-52s %-14s %14s  %-6s %-10s %s\n", "name", "shape", "numel", "init", "sharding", "decay");
    for (int i = 0; i < t.count; i++) {
        const struct loom_param *p = &t.params[i];
        char shape[32];
        loom_shape_format(&p->shape, shape, sizeof shape);
        char init[16];
        if (p->init == LOOM_INIT_ONES) snprintf(init, sizeof init, "ones");
        else snprintf(init, sizeof init, "N(%.3g)", p->init_std);
        printf("  %-52s %-14s %14zu  %-6s %-10s %s\n", p->name, shape, p->numel, init,
               loom_shard_style_name(p->shard), p->decay ? "yes" : "no");
    }

    struct loom_model_counts c;
    loom_model_count(&c, &t, &cfg.model, cfg.train.seq_len);
    int64_t tokens_per_step = cfg.train.global_batch * cfg.train.seq_len;
    printf("\n# counts\n");
    print_count("total parameters", c.total_params);
    print_count("active parameters per token", c.active_params);
    print_count("matmul parameters per token", c.matmul_params);
    printf("  %-34s %16.4g  (6 x matmul params + causal attention at seq_len %lld)\n", "FLOPs per token",
           c.flops_per_token, (long long)cfg.train.seq_len);
    printf("  %-34s %16.4g\n", "FLOPs per step", c.flops_per_token * (double)tokens_per_step);
    printf("  %-34s %16lld\n", "tokens per step", (long long)tokens_per_step);
    printf("  %-34s %16lld\n", "tokens in the run", (long long)(tokens_per_step * cfg.train.steps));

    double act = (double)loom_model_activation_floats(&cfg.model, (int)cfg.train.micro_batch,
                                                      (int)cfg.train.seq_len) * 4.0;
    double weights = (double)t.total * 4.0;
    printf("\n# memory (fp32, one process)\n");
    print_bytes("parameters", weights);
    print_bytes("gradients", weights);
    print_bytes("AdamW moments", 2 * weights);
    print_bytes("activations (one micro-batch)", act);
    print_bytes("total", 4 * weights + act);
    loom_params_free(&t);
    loom_config_free(&cfg);
    return 0;
}
