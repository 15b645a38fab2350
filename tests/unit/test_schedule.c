/*
 * tests/unit/test_schedule.c — pipeline schedules (parallel/schedule.h).
 *
 * For every stages in 1..8, micro-batches in 1..16 and both kinds, the schedules of all stages are
 * built and checked: each micro-batch's forward and backward exactly once per stage, in increasing
 * order, forward first; the send/receive adjacency rules; the sends of each link matched one for one
 * by the neighbour's receives; the number of micro-batches in flight; Megatron's warmup count.
 *
 * Then all stages run together in a simulation of the executor: each stage walks its list in
 * order, a receive blocks until the neighbour has executed the matching send, sends never block
 * (posted non-blocking, completed later). The simulation must finish (no deadlock), and it keeps
 * time: a forward costs tf units, a backward tb, communication is free, each action starts as soon
 * as the previous action of its stage and (for a receive) the matching send are done. With T the
 * time the last stage finishes, every stage must be busy m (tf + tb) and idle T - m (tf + tb), a
 * fraction of exactly (p - 1) / (m + p - 1) — the ideal pipeline bubble, checked in integers — for
 * (tf, tb) = (1, 2) and (1, 1).
 *
 * Every checker is first shown to reject a schedule broken on purpose (the "control" checks), and a
 * few small schedules are compared with lists worked out by hand from Megatron-LM's
 * forward_backward_pipelining_without_interleaving.
 */
#include <string.h>

#include "core/error.h"
#include "parallel/schedule.h"
#include "tests/test.h"

#define MAX_STAGES 8
#define MAX_MICRO 16
#define MAX_ACTIONS (6 * MAX_MICRO)

/* ---------------------------------------------------------------------------------------------- */
/* hand-written schedules                                                                           */

/* Fills s (actions from malloc) from text such as "RF0 F0 SF0 RB0 B0 SB0"; returns 0 on a bad token. */
static int schedule_parse(struct loom_pipeline_schedule *s, enum loom_pipeline_kind kind, int stage, int stages,
                          int micro_batches, const char *text) {
    static const struct { const char *code; enum loom_action_kind kind; } codes[] = {
        {"RF", LOOM_ACT_RECV_FORWARD},  {"SF", LOOM_ACT_SEND_FORWARD},  {"F", LOOM_ACT_FORWARD},
        {"RB", LOOM_ACT_RECV_BACKWARD}, {"SB", LOOM_ACT_SEND_BACKWARD}, {"B", LOOM_ACT_BACKWARD},
    };
    s->kind = kind;
    s->stage = stage;
    s->stages = stages;
    s->micro_batches = micro_batches;
    s->count = 0;
    s->actions = malloc_check(MAX_ACTIONS * sizeof *s->actions);
    for (const char *p = text; *p;) {
        while (*p == ' ') p++;
        if (!*p) break;
        size_t i = 0;
        while (i < sizeof codes / sizeof codes[0] && strncmp(p, codes[i].code, strlen(codes[i].code)) != 0) i++;
        if (i == sizeof codes / sizeof codes[0] || s->count == MAX_ACTIONS) return 0;
        p += strlen(codes[i].code);
        char *end;
        long micro = strtol(p, &end, 10);
        if (end == p) return 0;
        p = end;
        s->actions[s->count].kind = codes[i].kind;
        s->actions[s->count].micro = (int)micro;
        s->count++;
    }
    return 1;
}

static void schedule_format(const struct loom_pipeline_schedule *s, char *out, size_t cap) {
    static const char *const code[] = {"RF", "F", "SF", "RB", "B", "SB"};
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; i < s->count && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%s%d", i ? " " : "", code[s->actions[i].kind], s->actions[i].micro);
}

/* ---------------------------------------------------------------------------------------------- */
/* checks of one stage                                                                              */

/* Each micro-batch forward once and backward once, forward first; forwards in increasing order,
 * backwards in increasing order. */
static int check_computations(const struct loom_pipeline_schedule *s, char *err, size_t cap) {
    int m = s->micro_batches, next_f = 0, next_b = 0;
    for (int i = 0; i < s->count; i++) {
        const struct loom_action *a = &s->actions[i];
        if (a->micro < 0 || a->micro >= m) {
            snprintf(err, cap, "action %d (%s) names micro-batch %d", i, loom_action_name(a->kind), a->micro);
            return 0;
        }
        if (a->kind == LOOM_ACT_FORWARD) {
            if (a->micro != next_f) {
                snprintf(err, cap, "action %d: forward %d where forward %d was due", i, a->micro, next_f);
                return 0;
            }
            next_f++;
        } else if (a->kind == LOOM_ACT_BACKWARD) {
            if (a->micro != next_b) {
                snprintf(err, cap, "action %d: backward %d where backward %d was due", i, a->micro, next_b);
                return 0;
            }
            if (a->micro >= next_f) {
                snprintf(err, cap, "action %d: backward %d before its forward", i, a->micro);
                return 0;
            }
            next_b++;
        }
    }
    if (next_f != m || next_b != m) {
        snprintf(err, cap, "%d forwards and %d backwards for %d micro-batches", next_f, next_b, m);
        return 0;
    }
    return 1;
}

/* 1 when action i exists and is (kind, micro). */
static int action_is(const struct loom_pipeline_schedule *s, int i, enum loom_action_kind kind, int micro) {
    return i >= 0 && i < s->count && s->actions[i].kind == kind && s->actions[i].micro == micro;
}

/* The adjacency rules of schedule.h, both ways: every computation has its communication next to it,
 * and every communication sits next to its computation. */
static int check_adjacency(const struct loom_pipeline_schedule *s, char *err, size_t cap) {
    int first = s->stage == 0, last = s->stage == s->stages - 1;
    for (int i = 0; i < s->count; i++) {
        enum loom_action_kind k = s->actions[i].kind;
        int mb = s->actions[i].micro;
        const char *why = NULL;
        switch (k) {
        case LOOM_ACT_RECV_FORWARD:
            if (first) why = "on the first stage";
            else if (!action_is(s, i + 1, LOOM_ACT_FORWARD, mb)) why = "not followed by its forward";
            break;
        case LOOM_ACT_SEND_FORWARD:
            if (last) why = "on the last stage";
            else if (!action_is(s, i - 1, LOOM_ACT_FORWARD, mb)) why = "not preceded by its forward";
            break;
        case LOOM_ACT_RECV_BACKWARD:
            if (last) why = "on the last stage";
            else if (!action_is(s, i + 1, LOOM_ACT_BACKWARD, mb)) why = "not followed by its backward";
            break;
        case LOOM_ACT_SEND_BACKWARD:
            if (first) why = "on the first stage";
            else if (!action_is(s, i - 1, LOOM_ACT_BACKWARD, mb)) why = "not preceded by its backward";
            break;
        case LOOM_ACT_FORWARD:
            if (!first && !action_is(s, i - 1, LOOM_ACT_RECV_FORWARD, mb)) why = "not preceded by its receive";
            else if (!last && !action_is(s, i + 1, LOOM_ACT_SEND_FORWARD, mb)) why = "not followed by its send";
            break;
        case LOOM_ACT_BACKWARD:
            if (!last && !action_is(s, i - 1, LOOM_ACT_RECV_BACKWARD, mb)) why = "not preceded by its receive";
            else if (!first && !action_is(s, i + 1, LOOM_ACT_SEND_BACKWARD, mb)) why = "not followed by its send";
            break;
        }
        if (why) {
            snprintf(err, cap, "action %d (%s %d) %s", i, loom_action_name(s->actions[i].kind), mb, why);
            return 0;
        }
    }
    return 1;
}

/* The computations only, as a string: "FFFBFBBB". */
static void computations_string(const struct loom_pipeline_schedule *s, char *out) {
    int n = 0;
    for (int i = 0; i < s->count; i++) {
        if (s->actions[i].kind == LOOM_ACT_FORWARD) out[n++] = 'F';
        else if (s->actions[i].kind == LOOM_ACT_BACKWARD) out[n++] = 'B';
    }
    out[n] = '\0';
}

/* Megatron's shape: F^w (F B)^(m-w) B^w with w = min(p - s - 1, m) warmup forwards, so w + 1 forwards
 * (all m when m <= w) run before the first backward. */
static int check_warmup(const struct loom_pipeline_schedule *s, char *err, size_t cap) {
    int m = s->micro_batches, w = s->stages - s->stage - 1;
    if (w > m) w = m;
    char got[2 * MAX_ACTIONS + 1], want[2 * MAX_MICRO + 1];
    computations_string(s, got);
    int n = 0;
    for (int i = 0; i < w; i++) want[n++] = 'F';
    for (int i = 0; i < m - w; i++) {
        want[n++] = 'F';
        want[n++] = 'B';
    }
    for (int i = 0; i < w; i++) want[n++] = 'B';
    want[n] = '\0';
    int before = (int)strcspn(got, "B");
    if (strcmp(got, want) != 0 || before != (w < m ? w + 1 : m)) {
        snprintf(err, cap, "computations %s (%d forwards before the first backward), want %s (warmup %d)", got,
                 before, want, w);
        return 0;
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* checks of all stages together                                                                    */

/* The micro-batch ids of stage s's actions of one kind, in order; returns how many. */
static int ids_of(const struct loom_pipeline_schedule *s, enum loom_action_kind kind, int *ids) {
    int n = 0;
    for (int i = 0; i < s->count; i++)
        if (s->actions[i].kind == kind && n < MAX_ACTIONS) ids[n++] = s->actions[i].micro;
    return n;
}

static int same_ids(const int *a, int na, const int *b, int nb) {
    return na == nb && (na == 0 || memcmp(a, b, (size_t)na * sizeof *a) == 0);
}

/* On each link, the sends of one side are the receives of the other, in the same order. */
static int check_links(const struct loom_pipeline_schedule *sch, int p, char *err, size_t cap) {
    int a[MAX_ACTIONS], b[MAX_ACTIONS];
    for (int s = 0; s + 1 < p; s++) {
        int na = ids_of(&sch[s], LOOM_ACT_SEND_FORWARD, a), nb = ids_of(&sch[s + 1], LOOM_ACT_RECV_FORWARD, b);
        if (!same_ids(a, na, b, nb)) {
            snprintf(err, cap, "stage %d sends %d forwards, stage %d receives %d, or in another order", s, na,
                     s + 1, nb);
            return 0;
        }
        na = ids_of(&sch[s + 1], LOOM_ACT_SEND_BACKWARD, a);
        nb = ids_of(&sch[s], LOOM_ACT_RECV_BACKWARD, b);
        if (!same_ids(a, na, b, nb)) {
            snprintf(err, cap, "stage %d sends %d backwards, stage %d receives %d, or in another order", s + 1,
                     na, s, nb);
            return 0;
        }
    }
    return 1;
}

/* One direction of one link: the messages sent so far, and how many the receiver has taken. */
struct queue {
    int sent, taken;
    int micro[MAX_ACTIONS];
    long time[MAX_ACTIONS];
};

/* Runs the p stages together as described at the top of the file. Returns 1 when every stage reaches
 * the end of its list with every message received; *makespan gets the time the last stage finishes,
 * busy[s] the time stage s computed. Returns 0 with the reason in err on a deadlock (naming where
 * each stage waits), a receive that gets another micro-batch than it names, a message to or from
 * beyond the ends of the pipeline, or a message left unreceived. */
static int simulate(const struct loom_pipeline_schedule *sch, int p, long tf, long tb, long *makespan, long *busy,
                    char *err, size_t cap) {
    static struct queue fwd[MAX_STAGES], bwd[MAX_STAGES]; /* link l: l -> l+1, and l+1 -> l */
    int pc[MAX_STAGES] = {0};
    long clock[MAX_STAGES] = {0};
    memset(fwd, 0, sizeof fwd);
    memset(bwd, 0, sizeof bwd);
    for (int s = 0; s < p; s++) busy[s] = 0;

    for (;;) {
        int progress = 0, done = 0;
        for (int s = 0; s < p; s++) {
            for (; pc[s] < sch[s].count; pc[s]++) {
                const struct loom_action *a = &sch[s].actions[pc[s]];
                int recv = a->kind == LOOM_ACT_RECV_FORWARD || a->kind == LOOM_ACT_RECV_BACKWARD;
                int send = a->kind == LOOM_ACT_SEND_FORWARD || a->kind == LOOM_ACT_SEND_BACKWARD;
                int peer = a->kind == LOOM_ACT_RECV_FORWARD || a->kind == LOOM_ACT_SEND_BACKWARD ? s - 1 : s + 1;
                if ((recv || send) && (peer < 0 || peer >= p)) {
                    snprintf(err, cap, "stage %d action %d (%s %d) talks to stage %d", s, pc[s],
                             loom_action_name(a->kind), a->micro, peer);
                    return 0;
                }
                struct queue *q = NULL;
                if (a->kind == LOOM_ACT_RECV_FORWARD) q = &fwd[s - 1];
                else if (a->kind == LOOM_ACT_SEND_FORWARD) q = &fwd[s];
                else if (a->kind == LOOM_ACT_RECV_BACKWARD) q = &bwd[s];
                else if (a->kind == LOOM_ACT_SEND_BACKWARD) q = &bwd[s - 1];
                if (recv) {
                    if (q->taken == q->sent) break; /* blocked until the peer sends */
                    if (q->micro[q->taken] != a->micro) {
                        snprintf(err, cap, "stage %d action %d (%s %d) receives micro-batch %d", s, pc[s],
                                 loom_action_name(a->kind), a->micro, q->micro[q->taken]);
                        return 0;
                    }
                    if (q->time[q->taken] > clock[s]) clock[s] = q->time[q->taken];
                    q->taken++;
                } else if (send) {
                    if (q->sent == MAX_ACTIONS) {
                        snprintf(err, cap, "stage %d sends more than %d messages", s, MAX_ACTIONS);
                        return 0;
                    }
                    q->micro[q->sent] = a->micro;
                    q->time[q->sent] = clock[s];
                    q->sent++;
                } else {
                    long cost = a->kind == LOOM_ACT_FORWARD ? tf : tb;
                    clock[s] += cost;
                    busy[s] += cost;
                }
                progress = 1;
            }
            done += pc[s] == sch[s].count;
        }
        if (done == p) break;
        if (!progress) {
            size_t n = (size_t)snprintf(err, cap, "deadlock:");
            for (int s = 0; s < p && n < cap; s++) {
                if (pc[s] == sch[s].count) continue;
                const struct loom_action *a = &sch[s].actions[pc[s]];
                n += (size_t)snprintf(err + n, cap - n, " stage %d waits at action %d (%s %d);", s, pc[s],
                                      loom_action_name(a->kind), a->micro);
            }
            return 0;
        }
    }
    for (int l = 0; l + 1 < p; l++) {
        if (fwd[l].taken != fwd[l].sent || bwd[l].taken != bwd[l].sent) {
            snprintf(err, cap, "link %d-%d: %d of %d forwards and %d of %d backwards received", l, l + 1,
                     fwd[l].taken, fwd[l].sent, bwd[l].taken, bwd[l].sent);
            return 0;
        }
    }
    *makespan = 0;
    for (int s = 0; s < p; s++)
        if (clock[s] > *makespan) *makespan = clock[s];
    return 1;
}

/* Simulate with forward tf and backward tb; every stage computes m (tf + tb) and idles the fraction
 * (p - 1) / (m + p - 1) of the step: (T - busy) (m + p - 1) == T (p - 1) in integers. */
static int check_bubble(const struct loom_pipeline_schedule *sch, int p, long tf, long tb, char *err, size_t cap) {
    long T, busy[MAX_STAGES];
    if (!simulate(sch, p, tf, tb, &T, busy, err, cap)) return 0;
    long m = sch[0].micro_batches;
    for (int s = 0; s < p; s++) {
        if (busy[s] != m * (tf + tb) || (T - busy[s]) * (m + p - 1) != T * (p - 1)) {
            snprintf(err, cap, "stage %d: step %ld, busy %ld, idle %ld/%ld; want busy %ld, idle %ld/%ld", s, T,
                     busy[s], T - busy[s], T, m * (tf + tb), (long)p - 1, m + p - 1);
            return 0;
        }
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* the sweep over stages 1..8, micro-batches 1..16                                                  */

/* One named check over many schedules: ok until the first failure, whose case and reason it keeps. */
struct verdict {
    const char *name;
    int ok, cases;
    char detail[512];
};

static void verdict_add(struct verdict *v, int ok, int p, int stage, int m, const char *err) {
    v->cases++;
    if (ok || !v->ok) return;
    v->ok = 0;
    if (stage >= 0) snprintf(v->detail, sizeof v->detail, "stages %d stage %d m %d: %s", p, stage, m, err);
    else snprintf(v->detail, sizeof v->detail, "stages %d m %d: %s", p, m, err);
}

static void verdict_report(const struct verdict *v, const char *kind) {
    char name[96];
    snprintf(name, sizeof name, "%s_%s", kind, v->name);
    test_result(v->ok && v->cases > 0, name, "%s (%d cases checked)", v->ok ? "no case checked" : v->detail,
                v->cases);
}

enum { V_COMPUTATIONS, V_ADJACENCY, V_IN_FLIGHT, V_WARMUP, V_LINKS, V_DEADLOCK, V_BUBBLE_12, V_BUBBLE_11, V_N };

static void test_sweep(enum loom_pipeline_kind kind) {
    struct verdict v[V_N] = {
        [V_COMPUTATIONS] = {"computations", 1, 0, ""}, [V_ADJACENCY] = {"adjacency", 1, 0, ""},
        [V_IN_FLIGHT] = {"in_flight", 1, 0, ""},       [V_WARMUP] = {"warmup", 1, 0, ""},
        [V_LINKS] = {"links", 1, 0, ""},               [V_DEADLOCK] = {"deadlock_free", 1, 0, ""},
        [V_BUBBLE_12] = {"bubble_f1_b2", 1, 0, ""},    [V_BUBBLE_11] = {"bubble_f1_b1", 1, 0, ""},
    };
    char err[400];
    for (int p = 1; p <= MAX_STAGES; p++) {
        for (int m = 1; m <= MAX_MICRO; m++) {
            struct loom_pipeline_schedule sch[MAX_STAGES];
            for (int s = 0; s < p; s++) {
                loom_pipeline_schedule_build(&sch[s], kind, s, p, m);
                int ok = sch[s].kind == kind && sch[s].stage == s && sch[s].stages == p && sch[s].micro_batches == m;
                if (!ok) snprintf(err, sizeof err, "schedule records kind %d stage %d of %d, %d micro-batches",
                                  (int)sch[s].kind, sch[s].stage, sch[s].stages, sch[s].micro_batches);
                else ok = check_computations(&sch[s], err, sizeof err);
                verdict_add(&v[V_COMPUTATIONS], ok, p, s, m, err);
                verdict_add(&v[V_ADJACENCY], check_adjacency(&sch[s], err, sizeof err), p, s, m, err);

                int most = loom_pipeline_schedule_max_in_flight(&sch[s]);
                int want = kind == LOOM_PIPELINE_GPIPE ? m : (p - s < m ? p - s : m);
                ok = most == want && (kind == LOOM_PIPELINE_GPIPE || most <= p - s);
                snprintf(err, sizeof err, "%d in flight, want %d", most, want);
                verdict_add(&v[V_IN_FLIGHT], ok, p, s, m, err);

                if (kind == LOOM_PIPELINE_1F1B)
                    verdict_add(&v[V_WARMUP], check_warmup(&sch[s], err, sizeof err), p, s, m, err);
            }
            verdict_add(&v[V_LINKS], check_links(sch, p, err, sizeof err), p, -1, m, err);
            long T, busy[MAX_STAGES];
            verdict_add(&v[V_DEADLOCK], simulate(sch, p, 1, 2, &T, busy, err, sizeof err), p, -1, m, err);
            verdict_add(&v[V_BUBBLE_12], check_bubble(sch, p, 1, 2, err, sizeof err), p, -1, m, err);
            verdict_add(&v[V_BUBBLE_11], check_bubble(sch, p, 1, 1, err, sizeof err), p, -1, m, err);
            for (int s = 0; s < p; s++) loom_pipeline_schedule_free(&sch[s]);
        }
    }
    for (int i = 0; i < V_N; i++)
        if (i != V_WARMUP || kind == LOOM_PIPELINE_1F1B) verdict_report(&v[i], loom_pipeline_kind_name(kind));
}

/* ---------------------------------------------------------------------------------------------- */
/* the checkers reject broken schedules                                                             */

static void free_all(struct loom_pipeline_schedule *sch, int p) {
    for (int s = 0; s < p; s++) free(sch[s].actions);
}

/* Parses p hand-written stages; returns 0 (after a FAIL line) when one does not parse. */
static int parse_all(struct loom_pipeline_schedule *sch, int p, int m, const char *const *text, const char *name) {
    for (int s = 0; s < p; s++) {
        if (!schedule_parse(&sch[s], LOOM_PIPELINE_1F1B, s, p, m, text[s])) {
            test_result(0, name, "stage %d does not parse: %s", s, text[s]);
            free_all(sch, s + 1);
            return 0;
        }
    }
    return 1;
}

static void test_controls(void) {
    char err[400] = "";
    struct loom_pipeline_schedule sch[MAX_STAGES];
    long T, busy[MAX_STAGES];

    /* forwards 1 and 2 swapped */
    const char *swapped[] = {"F0 SF0 F2 SF2 F1 SF1 RB0 B0 RB1 B1 RB2 B2"};
    if (parse_all(sch, 1, 3, swapped, "control_computations")) {
        int ok = !check_computations(&sch[0], err, sizeof err) && strstr(err, "forward 2 where forward 1");
        test_result(ok, "control_computations", "forwards out of order not rejected (\"%s\")", err);
        free_all(sch, 1);
    }

    /* first stage of two, SEND_FORWARD 1 missing */
    const char *unsent[] = {"F0 SF0 F1 RB0 B0 RB1 B1"};
    if (parse_all(sch, 1, 2, unsent, "control_adjacency")) {
        sch[0].stages = 2;
        int ok = !check_adjacency(&sch[0], err, sizeof err) && strstr(err, "forward 1) not followed by its send");
        test_result(ok, "control_adjacency", "missing send not rejected (\"%s\")", err);
        free_all(sch, 1);
    }

    /* the last stage runs its backwards in reverse order, the first in increasing order */
    const char *reversed[] = {"F0 SF0 F1 SF1 RB0 B0 RB1 B1", "RF0 F0 RF1 F1 B1 SB1 B0 SB0"};
    if (parse_all(sch, 2, 2, reversed, "control_links")) {
        int ok = !check_links(sch, 2, err, sizeof err) && strstr(err, "stage 1 sends 2 backwards");
        test_result(ok, "control_links", "backwards sent out of order not rejected (\"%s\")", err);
        ok = !simulate(sch, 2, 1, 2, &T, busy, err, sizeof err) && strstr(err, "receives micro-batch 1");
        test_result(ok, "control_simulate_mismatch", "wrong micro-batch received not rejected (\"%s\")", err);
        free_all(sch, 2);
    }

    /* each stage waits for the other first */
    const char *stuck[] = {"RB0 B0 F0 SF0", "RF0 F0 B0 SB0"};
    if (parse_all(sch, 2, 1, stuck, "control_deadlock")) {
        int ok = !simulate(sch, 2, 1, 2, &T, busy, err, sizeof err) &&
                 strstr(err, "deadlock: stage 0 waits at action 0 (recv_backward 0); stage 1 waits at action 0");
        test_result(ok, "control_deadlock", "deadlock not detected (\"%s\")", err);
        free_all(sch, 2);
    }

    /* no pipelining: valid and deadlock-free, but each micro-batch goes through all stages alone:
     * step 12 with forward 1 and backward 2, where the bubble formula wants 9 */
    const char *serial[] = {"F0 SF0 RB0 B0 F1 SF1 RB1 B1", "RF0 F0 B0 SB0 RF1 F1 B1 SB1"};
    if (parse_all(sch, 2, 2, serial, "control_bubble")) {
        int ok = simulate(sch, 2, 1, 2, &T, busy, err, sizeof err) && T == 12 && busy[0] == 6 && busy[1] == 6;
        test_result(ok, "control_serial_timing", "step %ld busy %ld %ld, want 12 6 6 (%s)", T, busy[0], busy[1], err);
        ok = !check_bubble(sch, 2, 1, 2, err, sizeof err) && strstr(err, "step 12");
        test_result(ok, "control_bubble", "serial schedule passed the bubble check (\"%s\")", err);
        free_all(sch, 2);
    }

    /* a message sent and never received */
    const char *unreceived[] = {"F0 SF0 RB0 B0", "RF0 F0 B0 SB0 B0 SB0"};
    if (parse_all(sch, 2, 1, unreceived, "control_unreceived")) {
        int ok = !simulate(sch, 2, 1, 2, &T, busy, err, sizeof err) && strstr(err, "1 of 2 backwards received");
        test_result(ok, "control_unreceived", "unreceived message not rejected (\"%s\")", err);
        free_all(sch, 2);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* small schedules worked out by hand                                                               */

static void expect_schedule(enum loom_pipeline_kind kind, int stage, int stages, int m, const char *want) {
    struct loom_pipeline_schedule s;
    loom_pipeline_schedule_build(&s, kind, stage, stages, m);
    char got[8 * MAX_ACTIONS], name[96];
    schedule_format(&s, got, sizeof got);
    snprintf(name, sizeof name, "golden_%s_p%d_m%d_stage%d", loom_pipeline_kind_name(kind), stages, m, stage);
    test_result(strcmp(got, want) == 0, name, "got  %s\n     want %s", got, want);
    loom_pipeline_schedule_free(&s);
}

static void test_golden(void) {
    /* 1F1B, 3 stages, 4 micro-batches: warmup 2, 1, 0 */
    expect_schedule(LOOM_PIPELINE_1F1B, 0, 3, 4, "F0 SF0 F1 SF1 F2 SF2 RB0 B0 F3 SF3 RB1 B1 RB2 B2 RB3 B3");
    expect_schedule(LOOM_PIPELINE_1F1B, 1, 3, 4,
                    "RF0 F0 SF0 RF1 F1 SF1 RB0 B0 SB0 RF2 F2 SF2 RB1 B1 SB1 RF3 F3 SF3 RB2 B2 SB2 RB3 B3 SB3");
    expect_schedule(LOOM_PIPELINE_1F1B, 2, 3, 4, "RF0 F0 B0 SB0 RF1 F1 B1 SB1 RF2 F2 B2 SB2 RF3 F3 B3 SB3");
    /* fewer micro-batches than warmup slots: all forwards, then all backwards */
    expect_schedule(LOOM_PIPELINE_1F1B, 0, 4, 2, "F0 SF0 F1 SF1 RB0 B0 RB1 B1");
    /* one stage: forward and backward alternate, no communication */
    expect_schedule(LOOM_PIPELINE_1F1B, 0, 1, 3, "F0 B0 F1 B1 F2 B2");
    /* GPipe, middle stage */
    expect_schedule(LOOM_PIPELINE_GPIPE, 1, 3, 2, "RF0 F0 SF0 RF1 F1 SF1 RB0 B0 SB0 RB1 B1 SB1");
}

/* ---------------------------------------------------------------------------------------------- */
/* names, printing, bad arguments                                                                   */

static void test_names(void) {
    static const char *const want[] = {"recv_forward", "forward",  "send_forward",
                                       "recv_backward", "backward", "send_backward"};
    int ok = 1;
    for (int k = LOOM_ACT_RECV_FORWARD; k <= LOOM_ACT_SEND_BACKWARD && ok; k++)
        ok = strcmp(loom_action_name((enum loom_action_kind)k), want[k]) == 0;
    ok = ok && strcmp(loom_pipeline_kind_name(LOOM_PIPELINE_1F1B), "1f1b") == 0 &&
         strcmp(loom_pipeline_kind_name(LOOM_PIPELINE_GPIPE), "gpipe") == 0;
    test_result(ok, "names", "action or kind names differ from recv_forward ... send_backward, 1f1b, gpipe");
}

static void test_print(void) {
    struct loom_pipeline_schedule s;
    loom_pipeline_schedule_build(&s, LOOM_PIPELINE_1F1B, 0, 2, 3);
    char got[1024] = "";
    FILE *f = tmpfile();
    if (f) {
        loom_pipeline_schedule_print(&s, f);
        rewind(f);
        size_t n = fread(got, 1, sizeof got - 1, f);
        got[n] = '\0';
        fclose(f);
    }
    const char *want = "# pipeline schedule 1f1b: stage 0 of 2, 3 micro-batches, 12 actions, at most 2 in flight\n"
                       "F0\nSF0\nF1\nSF1\nRB0\nB0\nF2\nSF2\nRB1\nB1\nRB2\nB2\n";
    test_result(strcmp(got, want) == 0, "print", "printed:\n%s\nwant:\n%s", got, want);
    loom_pipeline_schedule_free(&s);
    test_result(s.actions == NULL && s.count == 0, "free", "free left actions %p, count %d", (void *)s.actions,
                s.count);
}

static void build_bad(const char *arg) {
    struct loom_pipeline_schedule s;
    if (strcmp(arg, "stage") == 0) loom_pipeline_schedule_build(&s, LOOM_PIPELINE_1F1B, 4, 4, 8);
    else if (strcmp(arg, "micro") == 0) loom_pipeline_schedule_build(&s, LOOM_PIPELINE_GPIPE, 0, 2, 0);
    else loom_pipeline_schedule_build(&s, (enum loom_pipeline_kind)7, 0, 2, 2);
}

static void test_bad_arguments(void) {
    static const char *const cases[][2] = {
        {"stage", "stage 4 of 4"}, {"micro", "0 micro-batches"}, {"kind", "unknown pipeline kind 7"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[1024], name[64];
        int code = test_run_child(build_bad, cases[i][0], err, sizeof err);
        snprintf(name, sizeof name, "bad_%s", cases[i][0]);
        test_result(code == 1 && strstr(err, cases[i][1]) != NULL, name, "exit %d, stderr: %s", code, err);
    }
}

int main(void) {
    test_controls();
    test_golden();
    test_sweep(LOOM_PIPELINE_1F1B);
    test_sweep(LOOM_PIPELINE_GPIPE);
    test_names();
    test_print();
    test_bad_arguments();
    return test_exit();
}
