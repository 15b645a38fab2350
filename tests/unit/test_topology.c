/*
 * tests/unit/test_topology.c — the rank grid arithmetic (parallel/topology.h), no MPI needed.
 *
 * For every layout (dp, tp, pp) with dp * tp * pp <= 64:
 *   - coordinates <-> rank round trip, every coordinate in range, every grid point hit exactly once;
 *   - the order is tp fastest, then dp, then pp: walking pp (outer), dp, tp (inner) counts 0, 1, 2, ...;
 *   - a tensor-parallel group (same dp and pp) is tp consecutive ranks in tp order;
 *   - a data-parallel group (same tp and pp) has stride tp;
 *   - a pipeline stage is the contiguous block [s dp tp, (s + 1) dp tp), and the pipeline neighbours of
 *     a rank (same tp and dp, stage +- 1) are rank +- dp tp.
 * Each property is one check over all layouts (the failure names the first layout and rank that
 * breaks it). The checkers first run on grids broken on purpose (dp fastest; pp fastest; a broken round trip) and
 * must reject them — the "control" checks. A few ranks worked out by hand, and the grid that
 * loom_topology_print shows, are compared with literal expectations.
 */
#include <string.h>

#include "parallel/topology.h"
#include "tests/test.h"

#define MAX_WORLD 64

struct grid {
    const char *name;
    struct loom_coords (*coords)(int rank, int dp, int tp, int pp);
    int (*rank)(struct loom_coords c, int dp, int tp, int pp);
};

/* ---------------------------------------------------------------------------------------------- */
/* wrong grids for the controls                                                                     */

/* dp fastest, then tp, then pp: a consistent bijection, but not the Megatron order */
static struct loom_coords dp_first_coords(int rank, int dp, int tp, int pp) {
    (void)pp;
    struct loom_coords c = {.dp_rank = rank % dp, .tp_rank = rank / dp % tp, .pp_rank = rank / (dp * tp)};
    return c;
}
static int dp_first_rank(struct loom_coords c, int dp, int tp, int pp) {
    (void)pp;
    return c.dp_rank + dp * (c.tp_rank + tp * c.pp_rank);
}

/* pp fastest, then tp, then dp */
static struct loom_coords pp_first_coords(int rank, int dp, int tp, int pp) {
    (void)dp;
    struct loom_coords c = {.pp_rank = rank % pp, .tp_rank = rank / pp % tp, .dp_rank = rank / (pp * tp)};
    return c;
}
static int pp_first_rank(struct loom_coords c, int dp, int tp, int pp) {
    (void)dp;
    return c.pp_rank + pp * (c.tp_rank + tp * c.dp_rank);
}

/* the right coordinates, but rank() swaps tp and dp digits when both axes are > 1 */
static int swapped_rank(struct loom_coords c, int dp, int tp, int pp) {
    (void)pp;
    if (dp > 1 && tp > 1 && c.dp_rank < tp && c.tp_rank < dp) {
        int t = c.tp_rank;
        c.tp_rank = c.dp_rank;
        c.dp_rank = t;
    }
    return loom_topology_rank(c, dp, tp, pp);
}

/* ---------------------------------------------------------------------------------------------- */
/* property checkers: each returns 1 when the grid has the property for layout (dp, tp, pp), else 0
 * with the reason in why                                                                         */

static int same_coords(struct loom_coords a, struct loom_coords b) {
    return a.tp_rank == b.tp_rank && a.dp_rank == b.dp_rank && a.pp_rank == b.pp_rank;
}

static int prop_round_trip(const struct grid *g, int dp, int tp, int pp, char *why, size_t n) {
    int world = dp * tp * pp;
    static int seen[MAX_WORLD];
    memset(seen, 0, sizeof seen);
    for (int r = 0; r < world; r++) {
        struct loom_coords c = g->coords(r, dp, tp, pp);
        if (c.tp_rank < 0 || c.tp_rank >= tp || c.dp_rank < 0 || c.dp_rank >= dp || c.pp_rank < 0 || c.pp_rank >= pp) {
            snprintf(why, n, "rank %d -> tp %d dp %d pp %d is out of range", r, c.tp_rank, c.dp_rank, c.pp_rank);
            return 0;
        }
        int back = g->rank(c, dp, tp, pp);
        if (back != r) {
            snprintf(why, n, "rank %d -> tp %d dp %d pp %d -> rank %d", r, c.tp_rank, c.dp_rank, c.pp_rank, back);
            return 0;
        }
    }
    /* and from the coordinates' side: every grid point maps to a distinct rank in range that maps back */
    for (int s = 0; s < pp; s++)
        for (int d = 0; d < dp; d++)
            for (int t = 0; t < tp; t++) {
                struct loom_coords c = {.tp_rank = t, .dp_rank = d, .pp_rank = s};
                int r = g->rank(c, dp, tp, pp);
                if (r < 0 || r >= world || seen[r]++ || !same_coords(g->coords(r, dp, tp, pp), c)) {
                    snprintf(why, n, "tp %d dp %d pp %d -> rank %d: out of range, taken twice or not mapping back",
                             t, d, s, r);
                    return 0;
                }
            }
    return 1;
}

static int prop_order(const struct grid *g, int dp, int tp, int pp, char *why, size_t n) {
    int next = 0;
    for (int s = 0; s < pp; s++)
        for (int d = 0; d < dp; d++)
            for (int t = 0; t < tp; t++, next++) {
                struct loom_coords want = {.tp_rank = t, .dp_rank = d, .pp_rank = s};
                struct loom_coords c = g->coords(next, dp, tp, pp);
                int r = g->rank(want, dp, tp, pp);
                if (r != next || !same_coords(c, want)) {
                    snprintf(why, n,
                             "want rank %d = tp %d dp %d pp %d (tp fastest, then dp, then pp); rank(tp %d dp %d pp %d) "
                             "= %d, coords(%d) = tp %d dp %d pp %d",
                             next, t, d, s, t, d, s, r, next, c.tp_rank, c.dp_rank, c.pp_rank);
                    return 0;
                }
            }
    return 1;
}

static int prop_tp_group(const struct grid *g, int dp, int tp, int pp, char *why, size_t n) {
    for (int r = 0; r < dp * tp * pp; r++) {
        struct loom_coords c = g->coords(r, dp, tp, pp);
        int base = g->rank((struct loom_coords){.tp_rank = 0, .dp_rank = c.dp_rank, .pp_rank = c.pp_rank}, dp, tp, pp);
        for (int k = 0; k < tp; k++) {
            struct loom_coords m = c;
            m.tp_rank = k;
            int got = g->rank(m, dp, tp, pp);
            if (got != base + k || base % tp) {
                snprintf(why, n, "tp group of rank %d (dp %d pp %d): member tp %d is rank %d, want %d (block of %d from %d)",
                         r, c.dp_rank, c.pp_rank, k, got, base + k, tp, base);
                return 0;
            }
        }
    }
    return 1;
}

static int prop_dp_group(const struct grid *g, int dp, int tp, int pp, char *why, size_t n) {
    for (int r = 0; r < dp * tp * pp; r++) {
        struct loom_coords c = g->coords(r, dp, tp, pp);
        int self = g->rank(c, dp, tp, pp);
        for (int k = 0; k < dp; k++) {
            struct loom_coords m = c;
            m.dp_rank = k;
            int got = g->rank(m, dp, tp, pp), want = self + (k - c.dp_rank) * tp;
            if (got != want) {
                snprintf(why, n, "dp group of rank %d (tp %d pp %d): member dp %d is rank %d, want %d (stride tp = %d)",
                         r, c.tp_rank, c.pp_rank, k, got, want, tp);
                return 0;
            }
        }
    }
    return 1;
}

static int prop_pipeline(const struct grid *g, int dp, int tp, int pp, char *why, size_t n) {
    int block = dp * tp;
    for (int r = 0; r < dp * tp * pp; r++) {
        struct loom_coords c = g->coords(r, dp, tp, pp);
        if (c.pp_rank != r / block) {
            snprintf(why, n, "rank %d is in stage %d, want %d (stages are contiguous blocks of dp x tp = %d ranks)", r,
                     c.pp_rank, r / block, block);
            return 0;
        }
        struct loom_coords prev = c, next = c;
        prev.pp_rank--, next.pp_rank++;
        if (c.pp_rank > 0 && g->rank(prev, dp, tp, pp) != r - block) {
            snprintf(why, n, "previous stage's neighbour of rank %d is %d, want %d (rank - dp tp)", r,
                     g->rank(prev, dp, tp, pp), r - block);
            return 0;
        }
        if (c.pp_rank + 1 < pp && g->rank(next, dp, tp, pp) != r + block) {
            snprintf(why, n, "next stage's neighbour of rank %d is %d, want %d (rank + dp tp)", r,
                     g->rank(next, dp, tp, pp), r + block);
            return 0;
        }
    }
    return 1;
}

/* no property: for counting the layouts of the sweep */
static int prop_none(const struct grid *g, int dp, int tp, int pp, char *why, size_t n) {
    (void)g, (void)dp, (void)tp, (void)pp, (void)why, (void)n;
    return 1;
}

typedef int (*prop_fn)(const struct grid *g, int dp, int tp, int pp, char *why, size_t n);

/* runs prop over every layout with dp tp pp <= MAX_WORLD; returns 1 when all pass, else 0 with the
 * first failing layout in why; *layouts counts the layouts tried */
static int prop_all(prop_fn prop, const struct grid *g, char *why, size_t n, int *layouts) {
    *layouts = 0;
    for (int dp = 1; dp <= MAX_WORLD; dp++)
        for (int tp = 1; dp * tp <= MAX_WORLD; tp++)
            for (int pp = 1; dp * tp * pp <= MAX_WORLD; pp++) {
                ++*layouts;
                char sub[400];
                if (!prop(g, dp, tp, pp, sub, sizeof sub)) {
                    snprintf(why, n, "%s grid, dp %d tp %d pp %d: %s", g->name, dp, tp, pp, sub);
                    return 0;
                }
            }
    return 1;
}

static const struct {
    const char *name;
    prop_fn fn;
} props[] = {
    {"round_trip", prop_round_trip}, {"order_tp_dp_pp", prop_order}, {"tp_group_consecutive", prop_tp_group},
    {"dp_group_stride_tp", prop_dp_group}, {"pipeline_neighbours", prop_pipeline},
};
#define NPROPS (sizeof props / sizeof props[0])

static const struct grid loom_grid = {"loom", loom_topology_coords, loom_topology_rank};

/* ---------------------------------------------------------------------------------------------- */

/* every checker rejects a grid broken on purpose for its property */
static void test_controls(void) {
    const struct grid dp_first = {"dp-first", dp_first_coords, dp_first_rank};
    const struct grid pp_first = {"pp-first", pp_first_coords, pp_first_rank};
    const struct grid swapped = {"swapped", loom_topology_coords, swapped_rank};
    const struct grid *wrong[NPROPS] = {&swapped, &dp_first, &dp_first, &dp_first, &pp_first};
    char why[600], name[100];
    int layouts;
    for (size_t i = 0; i < NPROPS; i++) {
        int passed = prop_all(props[i].fn, wrong[i], why, sizeof why, &layouts);
        snprintf(name, sizeof name, "topology/control/%s", props[i].name);
        test_result(!passed, name, "the checker accepts the %s grid", wrong[i]->name);
    }
    /* dp-first and pp-first are bijections: the round-trip checker must accept them (it is not just
     * rejecting everything) */
    int a = prop_all(prop_round_trip, &dp_first, why, sizeof why, &layouts);
    int b = prop_all(prop_round_trip, &pp_first, why, sizeof why, &layouts);
    test_result(a && b, "topology/control/round_trip_accepts_bijections", "%s", why);
}

static void test_properties(void) {
    char why[600], name[100];
    int layouts = 0;
    for (size_t i = 0; i < NPROPS; i++) {
        int ok = prop_all(props[i].fn, &loom_grid, why, sizeof why, &layouts);
        snprintf(name, sizeof name, "topology/%s", props[i].name);
        test_result(ok, name, "%s", why);
    }
    /* the sweep covers every layout with product <= 64: sum over n <= 64 of the ordered triples with
     * product n (the 3-factor divisor function), 1 + 3 + 3 + 6 + ... */
    prop_all(prop_none, &loom_grid, why, sizeof why, &layouts);
    int want = 0;
    for (int n = 1; n <= MAX_WORLD; n++)
        for (int a = 1; a <= n; a++)
            if (n % a == 0)
                for (int b = 1; b <= n / a; b++)
                    if ((n / a) % b == 0) want++;
    test_result(layouts == want && layouts > 500, "topology/layout_count", "swept %d layouts, want %d", layouts, want);
}

/* ranks worked out by hand */
static void test_examples(void) {
    static const struct {
        int dp, tp, pp, rank, tp_rank, dp_rank, pp_rank;
    } ex[] = {
        {2, 2, 2, 5, 1, 0, 1},  /* the DESIGN example */
        {2, 2, 2, 0, 0, 0, 0},  {2, 2, 2, 1, 1, 0, 0}, {2, 2, 2, 2, 0, 1, 0}, {2, 2, 2, 3, 1, 1, 0},
        {2, 2, 2, 4, 0, 0, 1},  {2, 2, 2, 6, 0, 1, 1}, {2, 2, 2, 7, 1, 1, 1},
        {4, 1, 1, 3, 0, 3, 0},  /* pure dp: rank = dp rank */
        {1, 4, 1, 3, 3, 0, 0},  /* pure tp: rank = tp rank */
        {1, 1, 4, 3, 0, 0, 3},  /* pure pp: rank = stage */
        {3, 2, 2, 7, 1, 0, 1},  /* 7 = 1 + 2 (0 + 3 * 1) */
        {3, 2, 2, 10, 0, 2, 1}, /* 10 = 0 + 2 (2 + 3 * 1) */
        {2, 4, 8, 63, 3, 1, 7}, {2, 4, 8, 37, 1, 1, 4}, /* 37 = 1 + 4 (1 + 2 * 4) */
        {1, 8, 8, 20, 4, 0, 2}, {8, 1, 8, 20, 0, 4, 2}, {8, 8, 1, 20, 4, 2, 0},
    };
    for (size_t i = 0; i < sizeof ex / sizeof ex[0]; i++) {
        char name[100];
        snprintf(name, sizeof name, "topology/example/dp%d_tp%d_pp%d_rank%d", ex[i].dp, ex[i].tp, ex[i].pp, ex[i].rank);
        struct loom_coords c = loom_topology_coords(ex[i].rank, ex[i].dp, ex[i].tp, ex[i].pp);
        struct loom_coords want = {.tp_rank = ex[i].tp_rank, .dp_rank = ex[i].dp_rank, .pp_rank = ex[i].pp_rank};
        int back = loom_topology_rank(want, ex[i].dp, ex[i].tp, ex[i].pp);
        test_result(same_coords(c, want) && back == ex[i].rank, name,
                    "coords(%d) = tp %d dp %d pp %d, want tp %d dp %d pp %d; rank(want) = %d", ex[i].rank, c.tp_rank,
                    c.dp_rank, c.pp_rank, want.tp_rank, want.dp_rank, want.pp_rank, back);
    }
}

/* loom_topology_print: one line per stage, [tp group] per dp rank (only the sizes are read, so a
 * struct filled by hand will do) */
static void test_print(void) {
    struct loom_topology t;
    memset(&t, 0, sizeof t);
    t.dp = 2, t.tp = 2, t.pp = 2, t.ep = 1, t.world = 8;
    char buf[2048] = {0};
    FILE *f = fmemopen(buf, sizeof buf - 1, "w");
    if (!f) {
        test_result(0, "topology/print", "fmemopen failed");
        return;
    }
    loom_topology_print(&t, f);
    fclose(f);
    int ok = strstr(buf, "  stage 0: [0 1] [2 3]\n") && strstr(buf, "  stage 1: [4 5] [6 7]\n") &&
             strstr(buf, "dp 2 x tp 2 x pp 2 = 8 ranks") && !strstr(buf, "stage 2");
    test_result(ok, "topology/print", "dp2 tp2 pp2 printed as:\n%s", buf);
}

int main(void) {
    test_controls();
    test_properties();
    test_examples();
    test_print();
    return test_exit();
}
