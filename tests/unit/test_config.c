/*
 * tests/unit/test_config.c — the config machinery: defaults, K M B T suffixes, files with includes,
 * --section.key=value overrides, input errors with their did-you-mean hints, and the printed config
 * reading back to identical values.
 *
 * loom_input_error() exits the process, so each error case runs in a forked child whose stderr is
 * captured; the parent checks the exit status (2), the message and the hint. The error module's hooks for
 * the fuzz targets (a jump instead of the exit) and for messages about stored configs (a context) too.
 */
#define _XOPEN_SOURCE 700

#include "core/config.h"
#include "core/error.h"
#include "tests/test.h"

#include <errno.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------------- */
/* temporary files                                                                                  */

#define TMP_FILES_MAX 64

static char tmp_dir[64];
static char *tmp_files[TMP_FILES_MAX];   /* files and folders to remove, in creation order */
static int tmp_count;

static char *tmp_path(const char *rel) {
    size_t n = strlen(tmp_dir) + 1 + strlen(rel) + 1;
    char *path = malloc(n);
    snprintf(path, n, "%s/%s", tmp_dir, rel);
    return path;
}

static void tmp_remember(char *path) {
    if (tmp_count == TMP_FILES_MAX) {
        fprintf(stderr, "test_config: too many temporary files\n");
        exit(1);
    }
    tmp_files[tmp_count++] = path;
}

static void tmp_mkdir(const char *rel) {
    char *path = tmp_path(rel);
    if (mkdir(path, 0700) != 0) {
        fprintf(stderr, "test_config: mkdir %s: %s\n", path, strerror(errno));
        exit(1);
    }
    tmp_remember(path);
}

/* Write text to tmp_dir/rel; returns the full path (owned by the cleanup list). */
static const char *tmp_write(const char *rel, const char *text) {
    char *path = tmp_path(rel);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "test_config: cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
    fputs(text, f);
    fclose(f);
    tmp_remember(path);
    return path;
}

static void tmp_cleanup(void) {
    for (int i = tmp_count - 1; i >= 0; i--) {
        remove(tmp_files[i]);
        free(tmp_files[i]);
    }
    rmdir(tmp_dir);
}

/* ---------------------------------------------------------------------------------------------- */
/* running a call that must fail with an input error                                               */

static void call_load(const char *path) {
    struct loom_config cfg;
    loom_config_init(&cfg);
    loom_config_load(&cfg, path);
    loom_config_free(&cfg);
}

static void call_load_string(const char *text) {
    struct loom_config cfg;
    loom_config_init(&cfg);
    loom_config_load_string(&cfg, text, "ref.ini");
    loom_config_free(&cfg);
}

static void call_set_arg(const char *arg) {
    struct loom_config cfg;
    loom_config_init(&cfg);
    loom_config_set_arg(&cfg, arg);
    loom_config_free(&cfg);
}

/* Run fn(arg) in a child; check it exits 2 with "loom: error:", `want` in its stderr, and (when
 * want_hint is not NULL) a "hint:" line containing want_hint. */
static void expect_input_error(const char *name, void (*fn)(const char *), const char *arg, const char *want,
                               const char *want_hint) {
    char out[8192];
    int code = test_run_child(fn, arg, out, sizeof out);
    int ok = code == 2 && strncmp(out, "loom: error: ", 13) == 0 && strstr(out, want) != NULL;
    test_result(ok, name, "exit status %d (want 2); stderr was:\n%s(want it to contain \"%s\")", code, out, want);
    if (!want_hint) return;
    const char *hint = strstr(out, "\nhint: ");
    char hint_name[256];
    snprintf(hint_name, sizeof hint_name, "%s.hint", name);
    test_result(hint && strstr(hint, want_hint) != NULL, hint_name, "stderr was:\n%s(want a hint line with \"%s\")",
                out, want_hint);
}

/* ---------------------------------------------------------------------------------------------- */
/* binary input, and the error module's hooks (core/error.h)                                        */

static void call_error_twice(const char *arg) {
    (void)arg;
    jmp_buf env;
    if (setjmp(env) == 0) {
        loom_error_set_jump(&env);
        loom_input_error("first", NULL, "taken by the hook");
    }
    loom_input_error("second", NULL, "exits: the hook was cleared");
}

static void call_error_in_context(const char *arg) {
    loom_error_set_context(arg);
    loom_input_error("model.num_heads", NULL, "must be positive");
}

static void test_binary_and_hooks(void) {
    static const char nul_text[] = "[train]\nsteps = 5\0junk\n";
    char *p = tmp_path("e_nul.ini");
    FILE *f = fopen(p, "wb");
    fwrite(nul_text, 1, sizeof nul_text - 1, f);
    fclose(f);
    tmp_remember(p);
    expect_input_error("config.nul_byte", call_load, p, "e_nul.ini:2: NUL byte (binary data)", "a config file is text");
    expect_input_error("config.include_device", call_load, tmp_write("e_zero.ini", "include = /dev/zero\n"),
                       "/dev/zero:1: NUL byte", NULL);

    /* the fuzz targets' hook: the error comes back here, once */
    struct loom_config cfg;
    loom_config_init(&cfg);
    jmp_buf env;
    volatile int jumped = 0;
    int code = setjmp(env);
    if (code == 0) {
        loom_error_set_jump(&env);
        loom_config_load_string(&cfg, "[train]\nsteps = many\n", "hook.ini");
        loom_error_set_jump(NULL);
    } else {
        jumped = 1;
    }
    test_result(jumped && code == LOOM_EXIT_INPUT, "error.hook.returns", "setjmp gave %d (want %d)", code,
                LOOM_EXIT_INPUT);
    loom_config_free(&cfg);
    char out[4096];
    code = test_run_child(call_error_twice, "", out, sizeof out);
    test_result(code == 2 && strstr(out, "loom: error: first: taken by the hook\n") &&
                    strstr(out, "loom: error: second: exits"),
                "error.hook.once", "exit status %d (want 2); stderr was:\n%s", code, out);
    code = test_run_child(call_error_in_context, "ckpt.h5 (config attribute)", out, sizeof out);
    const char *want = "loom: error: ckpt.h5 (config attribute): model.num_heads: must be positive\n";
    test_result(code == 2 && strcmp(out, want) == 0, "error.context", "exit status %d (want 2); stderr was:\n%s",
                code, out);
}

/* ---------------------------------------------------------------------------------------------- */
/* comparing configs through the key table                                                          */

/* A named key's field is that of the first instance of its section (see instances_add). */
static void *field_of(const struct loom_key *k, const struct loom_config *cfg) {
    const char *base = (const char *)cfg;
    for (size_t i = 0; k->named && i < loom_config_nnamed; i++)
        if (strcmp(loom_config_named[i].prefix, k->section) == 0) base += loom_config_named[i].array_offset;
    return (char *)base + k->offset;
}

/* Gives cfg one instance, named `t`, of every named section ([source.t], [phase.t]) at its defaults. */
static void instances_add(struct loom_config *cfg) {
    for (size_t i = 0; i < loom_config_nnamed; i++) {
        char section[64];
        snprintf(section, sizeof section, "%s.t", loom_config_named[i].prefix);
        for (size_t j = 0; j < loom_config_nkeys; j++) {
            const struct loom_key *k = &loom_config_keys[j];
            if (!k->named || strcmp(k->section, loom_config_named[i].prefix) != 0) continue;
            loom_config_set(cfg, section, k->name, k->def, "test");
            break;
        }
    }
}

/* "model" for a plain key, "source.t" for a named one */
static const char *section_of(const struct loom_key *k, char *buf, size_t cap) {
    if (!k->named) return k->section;
    snprintf(buf, cap, "%s.t", k->section);
    return buf;
}

/* 1 when section.key holds the same value in a and b (doubles compared bit for bit). */
static int key_equal(const struct loom_key *k, const struct loom_config *a, const struct loom_config *b) {
    const void *fa = field_of(k, a), *fb = field_of(k, b);
    switch (k->type) {
    case LOOM_KEY_INT: return *(const int64_t *)fa == *(const int64_t *)fb;
    case LOOM_KEY_FLOAT: return memcmp(fa, fb, sizeof(double)) == 0;
    case LOOM_KEY_BOOL:
    case LOOM_KEY_ENUM: return *(const int *)fa == *(const int *)fb;
    case LOOM_KEY_STRING: return strcmp(*(char *const *)fa, *(char *const *)fb) == 0;
    }
    return 0;
}

static void key_format(char *buf, size_t cap, const struct loom_key *k, const struct loom_config *cfg) {
    const void *f = field_of(k, cfg);
    switch (k->type) {
    case LOOM_KEY_INT: snprintf(buf, cap, "%lld", (long long)*(const int64_t *)f); break;
    case LOOM_KEY_FLOAT: snprintf(buf, cap, "%.17g", *(const double *)f); break;
    case LOOM_KEY_BOOL:
    case LOOM_KEY_ENUM: snprintf(buf, cap, "%d", *(const int *)f); break;
    case LOOM_KEY_STRING: snprintf(buf, cap, "\"%s\"", *(char *const *)f); break;
    }
}

/* Check every key of `got` equals `want`; one result named `name`, naming the first difference. */
static void configs_equal(const char *name, const struct loom_config *got, const struct loom_config *want) {
    for (size_t i = 0; i < loom_config_nkeys; i++) {
        const struct loom_key *k = &loom_config_keys[i];
        if (key_equal(k, got, want)) continue;
        char g[256], w[256];
        key_format(g, sizeof g, k, got);
        key_format(w, sizeof w, k, want);
        test_result(0, name, "%s.%s: got %s want %s", k->section, k->name, g, w);
        return;
    }
    test_result(1, name, "");
}

static int choice_count(const char *choices) {
    int n = 1;
    for (const char *c = choices; *c; c++) n += *c == '|';
    return n;
}

/* Give every key a value different from its default. */
static void config_perturb(struct loom_config *cfg) {
    for (size_t i = 0; i < loom_config_nkeys; i++) {
        const struct loom_key *k = &loom_config_keys[i];
        void *f = field_of(k, cfg);
        switch (k->type) {
        case LOOM_KEY_INT: *(int64_t *)f = *(int64_t *)f * 3 + 12345678901 + (int64_t)i; break;
        case LOOM_KEY_FLOAT: *(double *)f = *(double *)f * 1.1 + 1.0 / (3.0 + (double)i); break;
        case LOOM_KEY_BOOL: *(int *)f = !*(int *)f; break;
        case LOOM_KEY_ENUM: *(int *)f = (*(int *)f + 1) % choice_count(k->choices); break;
        case LOOM_KEY_STRING: {
            char **s = f;
            char buf[256];
            snprintf(buf, sizeof buf, "some dir/%s.%s:x=1,y.tok", k->section, k->name);
            free(*s);
            *s = strdup(buf);
            break;
        }
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* 1. defaults                                                                                      */

static void test_defaults(void) {
    struct loom_config cfg, one;
    loom_config_init(&cfg);
    loom_config_init(&one);
    instances_add(&cfg);
    instances_add(&one);
    int bad = 0;
    char first[512] = "";
    for (size_t i = 0; i < loom_config_nkeys; i++) {
        const struct loom_key *k = &loom_config_keys[i];
        char section[64];
        loom_config_set(&one, section_of(k, section, sizeof section), k->name, k->def, "default");
        if (!key_equal(k, &one, &cfg) && !bad++)
            snprintf(first, sizeof first, "%s.%s = %s differs after init", k->section, k->name, k->def);
    }
    test_result(bad == 0, "config.defaults.parse", "%d keys: first %s", bad, first);
    test_result(cfg.model.attention == LOOM_ATTENTION_MLA, "config.defaults.attention", "got %d", cfg.model.attention);
    test_result(cfg.schedule.lr == 3e-4, "config.defaults.lr", "got %.17g", cfg.schedule.lr);
    test_result(cfg.schedule.kind == LOOM_SCHEDULE_COSINE, "config.defaults.schedule_kind", "got %d",
                cfg.schedule.kind);
    test_result(strcmp(cfg.train.run_dir, "runs/default") == 0, "config.defaults.run_dir", "got \"%s\"",
                cfg.train.run_dir);
    test_result(cfg.train.steps == 100 && cfg.model.tie_word_embeddings == 1 && cfg.model.rms_norm_eps == 1e-6 &&
                    strcmp(cfg.data.train, "") == 0,
                "config.defaults.misc", "steps %lld tie %d eps %g train \"%s\"", (long long)cfg.train.steps,
                cfg.model.tie_word_embeddings, cfg.model.rms_norm_eps, cfg.data.train);
    const char *mha = loom_config_choice("model", "attention", LOOM_ATTENTION_MHA);
    const char *wsd = loom_config_choice("schedule", "kind", LOOM_SCHEDULE_WSD);
    const char *mla = loom_config_choice("model", "attention", LOOM_ATTENTION_MLA);
    test_result(strcmp(mha, "mha") == 0 && strcmp(wsd, "wsd") == 0 && strcmp(mla, "mla") == 0, "config.choice",
                "got %s %s %s", mha, wsd, mla);
    loom_config_free(&cfg);
    loom_config_free(&one);
}

/* ---------------------------------------------------------------------------------------------- */
/* 2. suffixes                                                                                      */

static void test_suffixes(void) {
    static const struct { const char *text; int64_t want; } good[] = {
        { "11T", 11000000000000LL }, { "1.5B", 1500000000LL }, { "64M", 64000000LL }, { "4096", 4096 },
        { "-3", -3 }, { "0.5K", 500 }, { "+7", 7 }, { "2k", 2000 }, { "-1.5K", -1500 }, { "1.5000K", 1500 },
        { "0.000001T", 1000000 }, { "9223372036854775807", INT64_MAX }, { "-9223372036854775808", INT64_MIN },
        { "0", 0 },
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char name[128];
        snprintf(name, sizeof name, "config.suffix.%s", good[i].text);
        int64_t v = -42;
        int rc = loom_parse_count(good[i].text, &v);
        test_result(rc == 0 && v == good[i].want, name, "rc %d, got %lld want %lld", rc, (long long)v,
                    (long long)good[i].want);
    }
    static const char *const bad[] = { "1.5", "12X", "", "99999999999T", "9223372036854775808", "1.2345K",
                                       "K", "-", "1.K", "1 K", " 5", "5 ", "1e3", "0x10", "--5", "1.5.5K",
                                       "9.223372036854775807B" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char name[128];
        snprintf(name, sizeof name, "config.suffix.reject[%s]", bad[i]);
        int64_t v = -42;
        int rc = loom_parse_count(bad[i], &v);
        test_result(rc != 0 && v == -42, name, "accepted as %lld (rc %d)", (long long)v, rc);
    }

    struct loom_config cfg;
    loom_config_init(&cfg);
    loom_config_set_arg(&cfg, "--log.peak_tflops=1.5K");
    test_result(cfg.log.peak_tflops == 1500.0, "config.suffix.float_1.5K", "got %.17g", cfg.log.peak_tflops);
    loom_config_set_arg(&cfg, "--log.peak_tflops=0.1K");
    test_result(cfg.log.peak_tflops == 100.0, "config.suffix.float_0.1K", "got %.17g", cfg.log.peak_tflops);
    loom_config_set_arg(&cfg, "--log.peak_tflops=0x1p4");
    test_result(cfg.log.peak_tflops == 16.0, "config.float.hex", "got %.17g", cfg.log.peak_tflops);
    loom_config_set_arg(&cfg, "--schedule.warmup_tokens=2.5M");
    test_result(cfg.schedule.warmup_tokens == 2500000, "config.suffix.key_2.5M", "got %lld",
                (long long)cfg.schedule.warmup_tokens);
    loom_config_free(&cfg);

    expect_input_error("config.suffix.overflow_key", call_set_arg, "--train.steps=99999999999T", "out of range",
                       NULL);
    expect_input_error("config.float.reject_nan", call_set_arg, "--schedule.lr=nan",
                       "[schedule] lr = nan: expected a finite number", NULL);
    expect_input_error("config.float.reject_inf", call_set_arg, "--schedule.lr=1e999", "expected a finite number",
                       NULL);
    expect_input_error("config.float.reject_empty", call_set_arg, "--schedule.lr=", "expected a finite number", NULL);
}

/* ---------------------------------------------------------------------------------------------- */
/* 3. files and includes                                                                            */

static void test_files(void) {
    tmp_mkdir("sub");
    tmp_write("base.ini", "; shared settings\n[model]\nhidden_size = 64\nnum_layers = 2\n[train]\nsteps = 50\n");
    tmp_write("sub/extra.ini", "[optim]\ninclude = more.ini\nbeta2 = 0.99\n");
    tmp_write("sub/more.ini", "[optim]\nbeta1 = 0.8\nbeta2 = 0.5\n");
    const char *main_ini = tmp_write("main.ini",
                                     "# the run\n"
                                     "include = base.ini\n"
                                     "[model]\n"
                                     "hidden_size = 128\n"
                                     "    num_heads = 8      # indented, with a comment\n"
                                     "attention = MHA\n"
                                     "[train]\n"
                                     "seq_len = 1K ; another comment\n"
                                     "run_dir = runs/a b\n"
                                     "include = sub/extra.ini\n"
                                     "\n"
                                     "[schedule]\n"
                                     "kind = wsd\n"
                                     "anneal = 1B:3e-5:cosine, 2B:0\n"
                                     "[data]\n"
                                     "train =\n");
    struct loom_config cfg;
    loom_config_init(&cfg);
    loom_config_load(&cfg, main_ini);
    test_result(cfg.model.hidden_size == 128, "config.file.override_include", "hidden_size %lld want 128",
                (long long)cfg.model.hidden_size);
    test_result(cfg.model.num_layers == 2 && cfg.train.steps == 50, "config.file.from_include",
                "num_layers %lld want 2, steps %lld want 50", (long long)cfg.model.num_layers,
                (long long)cfg.train.steps);
    test_result(cfg.model.num_heads == 8, "config.file.indented_comment", "num_heads %lld want 8",
                (long long)cfg.model.num_heads);
    test_result(cfg.train.seq_len == 1000 && cfg.model.attention == LOOM_ATTENTION_MHA &&
                    cfg.schedule.kind == LOOM_SCHEDULE_WSD,
                "config.file.values", "seq_len %lld attention %d kind %d", (long long)cfg.train.seq_len,
                cfg.model.attention, cfg.schedule.kind);
    test_result(strcmp(cfg.train.run_dir, "runs/a b") == 0 &&
                    strcmp(cfg.schedule.anneal, "1B:3e-5:cosine, 2B:0") == 0 && strcmp(cfg.data.train, "") == 0,
                "config.file.strings", "run_dir \"%s\" anneal \"%s\" train \"%s\"", cfg.train.run_dir,
                cfg.schedule.anneal, cfg.data.train);
    test_result(cfg.optim.beta1 == 0.8 && cfg.optim.beta2 == 0.99, "config.file.nested_include",
                "beta1 %.17g want 0.8, beta2 %.17g want 0.99 (sub/extra.ini sets it after including more.ini)",
                cfg.optim.beta1, cfg.optim.beta2);
    test_result(cfg.model.vocab_size == 512 && cfg.optim.eps == 1e-8, "config.file.untouched_defaults",
                "vocab_size %lld eps %g", (long long)cfg.model.vocab_size, cfg.optim.eps);

    /* an include after a key overrides it: later wins */
    const char *later = tmp_write("later.ini", "[train]\nsteps = 7\ninclude = base.ini\nseed = 9\n");
    loom_config_load(&cfg, later);
    test_result(cfg.train.steps == 50 && cfg.train.seed == 9, "config.file.later_wins", "steps %lld want 50, seed %lld",
                (long long)cfg.train.steps, (long long)cfg.train.seed);

    /* a string source: includes resolve from the current directory */
    char text[512];
    snprintf(text, sizeof text, "[train]\nsteps = 3\ninclude = %s/base.ini\n[log]\nevery = 2\n", tmp_dir);
    loom_config_load_string(&cfg, text, "inline");
    test_result(cfg.train.steps == 50 && cfg.log.every == 2, "config.string.load", "steps %lld every %lld",
                (long long)cfg.train.steps, (long long)cfg.log.every);
    loom_config_free(&cfg);

    const char *cyc_a = tmp_write("cyc_a.ini", "[train]\ninclude = cyc_b.ini\n");
    tmp_write("cyc_b.ini", "[model]\nhidden_size = 8\ninclude = ./cyc_a.ini\n");
    expect_input_error("config.include.cycle", call_load, cyc_a, "include cycle:", NULL);
    const char *self = tmp_write("self.ini", "include = self.ini\n");
    expect_input_error("config.include.self", call_load, self, "self.ini:1: include cycle", NULL);

    for (int i = 0; i <= 17; i++) {
        char rel[32], body[64];
        snprintf(rel, sizeof rel, "deep%d.ini", i);
        snprintf(body, sizeof body, "include = deep%d.ini\n", i + 1);
        tmp_write(rel, i < 17 ? body : "[train]\nsteps = 1\n");
    }
    char *deep0 = tmp_path("deep0.ini");
    expect_input_error("config.include.too_deep", call_load, deep0, "includes nested deeper than 16", NULL);
    free(deep0);

    const char *missing = tmp_write("missing.ini", "[train]\nsteps = 2\ninclude = nothere.ini\n");
    expect_input_error("config.include.missing", call_load, missing,
                       "nothere.ini: cannot read config file (No such file or directory)", "missing.ini:3");
}

/* ---------------------------------------------------------------------------------------------- */
/* 4. overrides                                                                                     */

static void test_overrides(void) {
    const char *path = tmp_write("ovr.ini", "[train]\nsteps = 10\nseed = 5\n[model]\ntie_word_embeddings = yes\n");
    struct loom_config cfg;
    loom_config_init(&cfg);
    loom_config_load(&cfg, path);
    loom_config_set_arg(&cfg, "--train.steps=2K");
    loom_config_set_arg(&cfg, "model.tie_word_embeddings=OFF");
    loom_config_set_arg(&cfg, "--model.attention=mha");
    loom_config_set_arg(&cfg, "-schedule.lr=1e-3");
    loom_config_set_arg(&cfg, "--data.train=/data/a.tok,/data/b c.tok");
    loom_config_set_arg(&cfg, "--schedule.kind=constant");
    test_result(cfg.train.steps == 2000 && cfg.train.seed == 5, "config.override.int", "steps %lld want 2000, seed %lld",
                (long long)cfg.train.steps, (long long)cfg.train.seed);
    test_result(cfg.model.tie_word_embeddings == 0, "config.override.bool", "got %d", cfg.model.tie_word_embeddings);
    test_result(cfg.model.attention == LOOM_ATTENTION_MHA && cfg.schedule.kind == LOOM_SCHEDULE_CONSTANT,
                "config.override.enum", "attention %d kind %d", cfg.model.attention, cfg.schedule.kind);
    test_result(cfg.schedule.lr == 1e-3, "config.override.float", "got %.17g", cfg.schedule.lr);
    test_result(strcmp(cfg.data.train, "/data/a.tok,/data/b c.tok") == 0, "config.override.string", "got \"%s\"",
                cfg.data.train);

    static const struct { const char *text; int want; } words[] = {
        { "true", 1 }, { "False", 0 }, { "YES", 1 }, { "no", 0 }, { "on", 1 }, { "Off", 0 }, { "1", 1 }, { "0", 0 },
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        loom_config_set(&cfg, "optim", "decay_norms", words[i].text, "test");
        if (cfg.optim.decay_norms != words[i].want && !bad++)
            test_result(0, "config.override.bool_words", "%s gave %d", words[i].text, cfg.optim.decay_norms);
    }
    if (!bad) test_result(1, "config.override.bool_words", "");
    loom_config_free(&cfg);
}

/* ---------------------------------------------------------------------------------------------- */
/* 5. input errors                                                                                  */

static void test_errors(void) {
    const char *p;
    p = tmp_write("e_key.ini", "[model]\nhidden_size = 64\nhiden_size = 32\n");
    expect_input_error("config.unknown_key", call_load, p, "e_key.ini:3: [model] hiden_size: unknown key",
                       "did you mean model.hidden_size?");
    p = tmp_write("e_section.ini", "[train]\n[modle]\nhidden_size = 32\n");
    expect_input_error("config.unknown_section", call_load, p, "e_section.ini:2: unknown section [modle]",
                       "did you mean [model]?");
    p = tmp_write("e_section_empty.ini", "[train]\nsteps = 1\n[shcedule]\n");
    expect_input_error("config.unknown_section.empty", call_load, p, "e_section_empty.ini:3: unknown section",
                       "did you mean [schedule]?");
    p = tmp_write("e_section_far.ini", "[parallelism_settings]\n");
    expect_input_error("config.unknown_section.far", call_load, p, "unknown section [parallelism_settings]",
                       "model, moe, train, optim, schedule, data, source.NAME, curriculum, phase.NAME, eval, parallel, pipeline, precision, checkpoint, log");
    p = tmp_write("e_int.ini", "[train]\n\nsteps = abc\n");
    expect_input_error("config.bad_int", call_load, p,
                       "e_int.ini:3: [train] steps = abc: expected an integer (suffixes K M B T allowed)",
                       "train.steps: optimizer steps to run");
    p = tmp_write("e_enum.ini", "[model]\nattention = gqa\n");
    expect_input_error("config.bad_enum", call_load, p, "e_enum.ini:2: [model] attention = gqa: expected one of mla|mha",
                       NULL);
    expect_input_error("config.bad_bool", call_set_arg, "--model.qk_norm=maybe",
                       "[model] qk_norm = maybe: expected a boolean: true/false, yes/no, on/off or 1/0", NULL);
    p = tmp_write("e_outside.ini", "steps = 5\n[train]\n");
    expect_input_error("config.outside_section", call_load, p, "e_outside.ini:1: steps: key outside any section",
                       "train.steps");
    p = tmp_write("e_syntax.ini", "[train]\nsteps 5\n");
    expect_input_error("config.syntax", call_load, p, "e_syntax.ini:2: cannot parse `steps 5`", NULL);
    p = tmp_write("e_bracket.ini", "[train\nsteps = 5\n");
    expect_input_error("config.syntax.bracket", call_load, p, "e_bracket.ini:1: unterminated section header", NULL);
    char long_text[600];
    snprintf(long_text, sizeof long_text, "[data]\ntrain = %0500d\n[train]\nsteps = x\n", 7);
    p = tmp_write("e_long.ini", long_text);
    expect_input_error("config.long_line", call_load, p, "e_long.ini:2: line is longer than", NULL);
    expect_input_error("config.string.comment_at_start", call_set_arg, "--data.train=#x",
                       "`#` at the start of a value starts a comment in a config file", NULL);
    expect_input_error("config.string.error_names_source", call_load_string, "[log]\nevery = 1\nevery = often\n",
                       "ref.ini:3: [log] every = often", NULL);

    expect_input_error("config.override.unknown_key", call_set_arg, "--model.hiden_size=5",
                       "--model.hiden_size=5: [model] hiden_size: unknown key", "did you mean model.hidden_size?");
    expect_input_error("config.override.unknown_section", call_set_arg, "--trian.steps=5",
                       "--trian.steps=5: unknown section [trian]", "did you mean [train]?");
    expect_input_error("config.override.wrong_section", call_set_arg, "--train.lr=1e-3", "[train] lr: unknown key",
                       "did you mean schedule.lr?");
    expect_input_error("config.override.far_key", call_set_arg, "--optim.zzzzzzzzzzzz=1", "unknown key",
                       "the keys of [optim] are beta1, beta2, eps, weight_decay");
    expect_input_error("config.override.no_section", call_set_arg, "--steps=5", "--steps=5: malformed override",
                       "overrides look like --section.key=value (did you mean --train.steps=5?)");
    expect_input_error("config.override.no_equals", call_set_arg, "--train.steps", "--train.steps: malformed override",
                       "overrides look like --section.key=value");
    expect_input_error("config.override.empty_key", call_set_arg, "--train.=5", "malformed override",
                       "overrides look like --section.key=value");
    char long_arg[400];
    snprintf(long_arg, sizeof long_arg, "--data.train=%0300d", 1);
    expect_input_error("config.string.too_long", call_set_arg, long_arg, "would not read back", NULL);
    expect_input_error("config.string.comment", call_set_arg, "--train.run_dir=runs/a #1",
                       "`#` after whitespace starts a comment", NULL);
    expect_input_error("config.string.trailing_space", call_set_arg, "--train.run_dir=runs/a ",
                       "trailing whitespace", NULL);
    expect_input_error("config.missing_file", call_load, "/nonexistent/loom.ini",
                       "/nonexistent/loom.ini: cannot read config file (No such file or directory)", NULL);
    expect_input_error("config.directory", call_load, tmp_dir, "cannot read config file (Is a directory)", NULL);
}

/* ---------------------------------------------------------------------------------------------- */
/* 6. round trip                                                                                    */

static void roundtrip(const char *name, const struct loom_config *cfg) {
    char *text = loom_config_to_string(cfg);
    struct loom_config back;
    loom_config_init(&back);
    loom_config_load_string(&back, text, name);
    configs_equal(name, &back, cfg);
    loom_config_free(&back);
    free(text);
}

static void test_roundtrip(void) {
    struct loom_config cfg, def;
    loom_config_init(&cfg);
    loom_config_init(&def);
    instances_add(&cfg);
    instances_add(&def);
    roundtrip("config.roundtrip.defaults", &cfg);

    config_perturb(&cfg);
    int same = 0;
    char first[128] = "";
    for (size_t i = 0; i < loom_config_nkeys; i++) {
        const struct loom_key *k = &loom_config_keys[i];
        if (key_equal(k, &cfg, &def) && !same++) snprintf(first, sizeof first, "%s.%s", k->section, k->name);
    }
    test_result(same == 0, "config.roundtrip.all_changed", "%d keys still at their default, first %s", same, first);
    roundtrip("config.roundtrip.changed", &cfg);

    cfg.model.rms_norm_eps = 4.9406564584124654e-324;
    cfg.model.init_std = 0.1 + 0.2;
    cfg.schedule.lr = 1.0 / 3.0;
    cfg.log.peak_tflops = 1.7976931348623157e308;
    cfg.optim.beta1 = -0.0;
    cfg.optim.beta2 = 123456789012345678.0;
    cfg.train.seed = INT64_MIN;
    cfg.train.steps = INT64_MAX;
    roundtrip("config.roundtrip.extremes", &cfg);

    char *text = loom_config_to_string(&def);
    test_result(strncmp(text, "[model]\n# ", 10) == 0 && strstr(text, "\nattention = mla\n") &&
                    strstr(text, "\nlr = 0.0003\n") && strstr(text, "\nrope_theta = 10000\n") &&
                    strstr(text, "\ntie_word_embeddings = true\n") && strstr(text, "\n[log]\n"),
                "config.write.format", "text was:\n%s", text);
    free(text);
    loom_config_free(&cfg);
    loom_config_free(&def);
}

/* ---------------------------------------------------------------------------------------------- */

/* ---------------------------------------------------------------------------------------------- */
/* named sections: [source.NAME], [phase.NAME]                                                      */

static void test_named(void) {
    struct loom_config cfg;
    loom_config_init(&cfg);
    const char *p = tmp_write("named.ini",
                              "[source.web]\nshards = a/*.tok\n\n[source.code]\nshards = b\nloss_mask = assistant\n"
                              "[phase.one]\nuntil = 2M\nweights = web:3, code:1\n[source.web]\ntokens = 5B\n");
    loom_config_load(&cfg, p);
    loom_config_set_arg(&cfg, "--source.code.heldout=c/h.tok");
    loom_config_set_arg(&cfg, "--phase.two.ramp=1K");
    int ok = cfg.nsources == 2 && strcmp(cfg.sources[0].name, "web") == 0 && strcmp(cfg.sources[1].name, "code") == 0 &&
             strcmp(cfg.sources[0].shards, "a/*.tok") == 0 && cfg.sources[0].tokens == 5000000000LL &&
             cfg.sources[0].loss_mask == LOOM_LOSS_MASK_ALL && cfg.sources[1].loss_mask == LOOM_LOSS_MASK_ASSISTANT &&
             strcmp(cfg.sources[1].heldout, "c/h.tok") == 0 && strcmp(cfg.sources[1].shards, "b") == 0;
    test_result(ok, "config.named.sources", "nsources %d, [0] %s shards \"%s\" tokens %lld, [1] %s mask %d",
                cfg.nsources, cfg.sources[0].name, cfg.sources[0].shards, (long long)cfg.sources[0].tokens,
                cfg.nsources > 1 ? cfg.sources[1].name : "-", cfg.nsources > 1 ? cfg.sources[1].loss_mask : -1);
    ok = cfg.nphases == 2 && strcmp(cfg.phases[0].name, "one") == 0 && cfg.phases[0].until == 2000000 &&
         strcmp(cfg.phases[0].weights, "web:3, code:1") == 0 && strcmp(cfg.phases[1].name, "two") == 0 &&
         cfg.phases[1].ramp == 1000 && cfg.phases[1].until == 0 && strcmp(cfg.phases[1].weights, "") == 0;
    test_result(ok, "config.named.phases", "nphases %d", cfg.nphases);

    /* written and read back: same instances in the same order with the same values */
    char *text = loom_config_to_string(&cfg);
    struct loom_config back;
    loom_config_init(&back);
    loom_config_load_string(&back, text, "named-roundtrip");
    ok = back.nsources == 2 && back.nphases == 2 && strcmp(back.sources[1].name, "code") == 0 &&
         strcmp(back.sources[1].heldout, "c/h.tok") == 0 && back.sources[0].tokens == 5000000000LL &&
         back.phases[1].ramp == 1000 && strstr(text, "[source.web]") && strstr(text, "[phase.two]");
    test_result(ok, "config.named.roundtrip", "text was:\n%s", text);
    free(text);
    loom_config_free(&back);
    loom_config_free(&cfg);

    p = tmp_write("e_named_key.ini", "[source.web]\nshard = x\n");
    expect_input_error("config.named.unknown_key", call_load, p, "[source.web] shard: unknown key",
                       "did you mean source.shards?");
    p = tmp_write("e_named_bare.ini", "[source]\nshards = x\n");
    expect_input_error("config.named.bare", call_load, p, "[source] needs a name", "[source.NAME]");
    p = tmp_write("e_named_badname.ini", "[phase.a b]\nuntil = 1\n");
    expect_input_error("config.named.bad_name", call_load, p, "needs a name", "letters, digits");
    p = tmp_write("e_named_typo.ini", "[sorce.web]\nshards = x\n");
    expect_input_error("config.named.typo", call_load, p, "unknown section [sorce.web]", "did you mean [source.web]?");
    expect_input_error("config.named.enum", call_set_arg, "--source.web.loss_mask=some", "expected one of all|assistant",
                       NULL);
}

int main(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/loom_test_config_XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        fprintf(stderr, "test_config: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    test_defaults();
    test_suffixes();
    test_files();
    test_overrides();
    test_errors();
    test_binary_and_hooks();
    test_roundtrip();
    test_named();
    tmp_cleanup();
    return test_exit();
}
