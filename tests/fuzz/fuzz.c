/*
 * tests/fuzz/fuzz.c — the scratch folder, the input-error guard and the clean-up after a rejected input
 * (see fuzz.h).
 *
 * A rejected input leaves behind whatever the abandoned call had open: file descriptors, FILE streams,
 * mappings. Over millions of inputs those would exhaust the process, so after each rejection every
 * descriptor and mapping of a file inside the scratch folder is closed: /proc/self/fd and /proc/self/maps
 * say which (Linux). Memory the call had allocated stays allocated; the fuzzers run with detect_leaks=0.
 */
#include "tests/fuzz/fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/error.h"

static char g_dir[4096];

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag;
    if (ftw->level > 0 || strcmp(path, g_dir) == 0) remove(path);
    return 0;
}

static void dir_remove(void) {
    if (!g_dir[0]) return;
    nftw(g_dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *fuzz_dir(void) {
    if (g_dir[0]) return g_dir;
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/loom-fuzz-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    CHECK(mkdtemp(g_dir) != NULL, "cannot make a scratch folder %s: %s", g_dir, strerror(errno));
    atexit(dir_remove);
    return g_dir;
}

void fuzz_path(char *out, size_t cap, const char *name) {
    int n = snprintf(out, cap, "%s/%s", fuzz_dir(), name);
    CHECK(n > 0 && (size_t)n < cap, "scratch path %s/%s too long", fuzz_dir(), name);
}

static int clear_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag;
    if (ftw->level > 0) CHECK(remove(path) == 0, "cannot remove %s: %s", path, strerror(errno));
    return 0;
}

void fuzz_dir_clear(void) { nftw(fuzz_dir(), clear_one, 16, FTW_DEPTH | FTW_PHYS); }

void fuzz_write_file(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot create %s: %s", path, strerror(errno));
    CHECK((size == 0 || fwrite(data, 1, size, f) == size) && fclose(f) == 0, "cannot write %s: %s", path,
          strerror(errno));
}

/* ---------------------------------------------------------------------------------------------- */

static int in_dir(const char *path) {
    size_t n = strlen(g_dir);
    return g_dir[0] && strncmp(path, g_dir, n) == 0 && path[n] == '/';
}

void fuzz_release(void) {
    DIR *d = opendir("/proc/self/fd");
    CHECK(d != NULL, "cannot list /proc/self/fd: %s", strerror(errno));
    int fds[1024], nfds = 0;
    for (struct dirent *e; (e = readdir(d)) && nfds < 1024;) {
        char link[300], target[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n <= 0) continue;
        target[n] = '\0';
        if (in_dir(target)) fds[nfds++] = atoi(e->d_name);
    }
    closedir(d);
    for (int i = 0; i < nfds; i++) close(fds[i]);

    FILE *maps = fopen("/proc/self/maps", "r");
    CHECK(maps != NULL, "cannot read /proc/self/maps: %s", strerror(errno));
    uintptr_t lo[256], hi[256];
    int nmaps = 0;
    char line[8192];
    while (fgets(line, sizeof line, maps) && nmaps < 256) {
        uintptr_t a, b;
        int at = 0;
        if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " %*s %*s %*s %*s %n", &a, &b, &at) != 2 || at == 0) continue;
        char *path = line + at;
        path[strcspn(path, "\n")] = '\0';
        if (in_dir(path)) lo[nmaps] = a, hi[nmaps++] = b;
    }
    fclose(maps);
    for (int i = 0; i < nmaps; i++) munmap((void *)lo[i], hi[i] - lo[i]);
}

static void (*g_cleanup)(void);

void fuzz_set_cleanup(void (*cleanup)(void)) { g_cleanup = cleanup; }

int fuzz_guarded(void (*fn)(void *), void *arg) {
    jmp_buf env;
    if (setjmp(env) != 0) {
        if (g_cleanup) g_cleanup();
        fuzz_release();
        return LOOM_EXIT_INPUT;
    }
    loom_error_set_jump(&env);
    fn(arg);
    loom_error_set_jump(NULL);
    return 0;
}

_Noreturn void fuzz_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("fuzz: broken invariant: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fflush(stderr);
    abort();
}
