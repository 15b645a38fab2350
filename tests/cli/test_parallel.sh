#!/usr/bin/env bash
# tests/cli/test_parallel.sh — multi-rank `loom train` through scripts/launch.sh (every launch under `timeout`).
#
# Parity (DESIGN 5: any layout gives the single-process result up to floating-point reordering): the tiny
# MLA model (debug.ini, tied head) and an MHA/GQA variant with QK-norm (untied head), 4 layers so that pp4
# has a layer per stage, global batch 8, 10 steps. Every layout's 10 losses match the single-process run to
# 1e-5 relative, and so does step 1's gradient norm (later norms: 1e-4, the trajectories drift apart by
# rounding). Every layout's gradient dump after step 1 (--log.dump_grads: PREFIX.rankR.bin with the [lo, hi)
# of the rank's flat buffer that is reduced, PREFIX.rankR.map placing each tensor's slice of rows and columns
# in it) matches the single-process gradients element by element, every slice of every rank against the same
# rows and columns of the whole tensor, within [lo, hi) under ZeRO-1 (1e-5 relative + 1e-6 max|g| of that
# tensor; 4e-6 with tp > 1, which changes the forward arithmetic: see GRAD_ATOL_FRAC_TP); over all ranks every
# element of every single-process tensor is compared at least once (tp-replicated tensors, a tied embedding on
# the first and last stage, and dp replicas are compared every time they occur); the ranks with the same map
# (one stage and tp rank) are dp of them, and under ZeRO-1 their shards tile [0, total) exactly. Controls: a
# run with another seed, a loss nudged past its tolerance, and, in the single-process gradients cut like a
# dp2 x tp2 x pp2 ZeRO-1 layout, elements nudged past their tolerance, a slice one row off, a tensor missing
# from a map, and broken shard tilings must all be caught by the same comparisons. Layouts with tp or pp > 1
# print `skip` while `loom train` answers them with exit status 2 and "not available in this build".
#
# Bad layouts (world size, tp not dividing heads / kv heads / vocab / FFN width, pp > layers, batch
# splits) and an existing run folder: exit status 2 from the launch, exit status 2 from every rank
# (counted by a wrapper, with Open MPI told not to kill the other ranks when the first one exits), no
# hang, a `loom: error: KEY` line, nothing started and nothing written.
#
# Run from the repository root with ./loom built: bash tests/cli/test_parallel.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom parallel

DEBUG=configs/runs/debug.ini
STEPS=10
LIMIT=120 # seconds for any one launch
MHA_ARGS=(--model.attention=mha --model.num_kv_heads=2 --model.head_dim=32 --model.qk_norm=true
    --model.rope_style=half --model.tie_word_embeddings=false)

# launch NP ARGS...: `loom ARGS` on NP ranks; exit status in $rc, stdout/stderr in $tmp/out, $tmp/err
launch() {
    local np=$1
    shift
    timeout -k 10 "$LIMIT" scripts/launch.sh -np "$np" "$LOOM" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}
show() { echo "exit status $rc; stdout: $(tail -c 600 "$tmp/out"); stderr: $(tail -c 1200 "$tmp/err")"; }
timed_out() { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; }

# ---------------------------------------------------------------------------------------------------
# comparisons (python3 with the standard library only)

cat >"$tmp/compare.py" <<'EOF'
import array, json, math, sys

LOSS_RTOL = 1e-5         # every step's loss
GNORM1_RTOL = 1e-5       # step 1's gradient norm (the same gradients, reduced in another order)
GNORM_RTOL = 1e-4        # later steps' gradient norms (the trajectories drift apart by float rounding)
GRAD_RTOL = 1e-5         # gradients after step 1: |g - r| <= GRAD_RTOL |r| + GRAD_ATOL_FRAC max|r of that tensor|
GRAD_ATOL_FRAC = 1e-6
# With tp > 1 the forward pass itself is computed in another order (row-parallel partial sums added across the
# tp ranks, each rank's heads apart), and the backward carries that rounding: measured over seeds 42..46 on both
# models, the worst element of tp2 and dp2 x tp2 x pp2 reached 0.72..1.28 of the tolerance above (MHA k_proj,
# q_proj, q_norm behind the QK-norm; MLA q_a/q_b_proj and their norms), and 0.20..0.33 of it with 4e-6; the
# differences are uncorrelated with the gradients (|correlation| < 0.05 on the large tensors: no scale error),
# with an rms ~1.2e-6 of the rms gradient, ~4x the spread between single-process runs that only accumulate
# their micro-batches in another order. dp and pp only reorder sums (worst 0.22..0.62 and < 0.06 of 1e-6).
GRAD_ATOL_FRAC_TP = 4e-6

def verdict(name, problems):
    print(f"FAIL {name}: " + "; ".join(problems[:4]) if problems else f"ok {name}")

def read_metrics(path, steps):
    rows = [json.loads(line) for line in open(path)]
    if len(rows) != steps:
        raise ValueError(f"{path}: {len(rows)} lines, want {steps}")
    return rows

def rel(a, b):
    r = abs(a - b) / abs(a) if a else abs(b)
    return r if r == r else math.inf

def metric_problems(ref, got):
    """losses and gradient norms of every step against the single-process run"""
    problems = []
    for key, tol in (("loss", lambda i: LOSS_RTOL), ("grad_norm", lambda i: GNORM1_RTOL if i == 0 else GNORM_RTOL)):
        worst = max(range(len(ref)), key=lambda i: rel(ref[i][key], got[i][key]) / tol(i))
        r = rel(ref[worst][key], got[worst][key])
        if r > tol(worst):
            problems.append(f"step {worst + 1} {key} {got[worst][key]!r}, single process {ref[worst][key]!r} (relative "
                            f"difference {r:.3g} > {tol(worst):g}); {key} by step: " +
                            " ".join(f"{g[key]:.7g}" for g in got) + " vs single process " +
                            " ".join(f"{r_[key]:.7g}" for r_ in ref))
    return problems

def cmp_metrics(name, ref_path, got_path, steps):
    try:
        ref, got = read_metrics(ref_path, steps), read_metrics(got_path, steps)
    except Exception as e:
        return verdict(name, [str(e)])
    verdict(name, metric_problems(ref, got))

def load_dump(prefix, rank):
    """PREFIX.rankR.bin (int64 lo, hi, total, float32 g[lo:hi]) and PREFIX.rankR.map (per tensor of the flat
    buffer: name offset row0 col0 local_rows local_cols rows cols)"""
    path = f"{prefix}.rank{rank}.bin"
    with open(path, "rb") as f:
        head = array.array("q")
        head.fromfile(f, 3)
        data = f.read()
    if sys.byteorder != "little":
        head.byteswap()
    lo, hi, total = head
    if len(data) != 4 * (hi - lo) or not (0 <= lo <= hi <= total):
        raise ValueError(f"{path}: header lo {lo} hi {hi} total {total} with {len(data)} bytes of gradients")
    g = array.array("f")
    g.frombytes(data)
    if sys.byteorder != "little":
        g.byteswap()
    tensors = []
    with open(f"{prefix}.rank{rank}.map") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            try:
                if len(parts) != 8:
                    raise ValueError
                tensors.append((parts[0], *map(int, parts[1:])))
            except ValueError:
                raise ValueError(f"{prefix}.rank{rank}.map line {n}: {line.strip()!r}, want a name and 7 integers")
    if not tensors:
        raise ValueError(f"{prefix}.rank{rank}.map names no tensor")
    return dict(lo=lo, hi=hi, total=total, g=g, tensors=tensors)

def reference(prefix):
    """the single-process dump, checked (the whole buffer, every tensor whole and finite), and per tensor name
    (offset, rows, cols, max|g|)"""
    ref = load_dump(prefix, 0)
    lo, hi, total, g = ref["lo"], ref["hi"], ref["total"], ref["g"]
    if (lo, hi) != (0, total):
        raise ValueError(f"the single-process dump holds [{lo}, {hi}) of {total}")
    refs, end = {}, 0
    for name, off, r0, c0, lr, lc, rows, cols in sorted(ref["tensors"], key=lambda t: t[1]):
        if (r0, c0, lr, lc) != (0, 0, rows, cols) or off < end or off + rows * cols > total or name in refs:
            raise ValueError(f"the single-process map: {name} at {off}, rows {r0}.. and cols {c0}.. of "
                             f"{lr}x{lc} of [{rows}, {cols}] (not whole, overlapping, repeated or past {total})")
        end = off + rows * cols
        gmax = max(map(abs, g[off:end]))
        if not math.isfinite(math.fsum(map(abs, g[off:end]))):
            raise ValueError(f"the single-process gradient of {name} is not finite")
        refs[name] = (off, rows, cols, gmax)
    return ref, refs

def map_problems(rank, d, refs):
    """a rank's map against the single-process tensors: known names, whole shapes, local parts inside the
    whole, slices inside the buffer and apart; gives the problems and the tensors fit to compare"""
    problems, good, seen = [], [], set()
    for t in d["tensors"]:
        name, off, r0, c0, lr, lc, rows, cols = t
        if name in seen:
            problems.append(f"rank {rank}: {name} twice in its map")
        elif name not in refs:
            problems.append(f"rank {rank}: {name} is not a tensor of the single-process model")
        elif (rows, cols) != refs[name][1:3]:
            problems.append(f"rank {rank}: {name} whole [{rows}, {cols}], single process {list(refs[name][1:3])}")
        elif not (0 <= r0 and 1 <= lr and r0 + lr <= rows and 0 <= c0 and 1 <= lc and c0 + lc <= cols):
            problems.append(f"rank {rank}: {name} rows {r0}..{r0 + lr - 1}, cols {c0}..{c0 + lc - 1} outside [{rows}, {cols}]")
        elif off < 0 or off + lr * lc > d["total"]:
            problems.append(f"rank {rank}: {name} [{off}, {off + lr * lc}) outside its buffer of {d['total']}")
        else:
            good.append(t)
        seen.add(name)
    spans = sorted((t[1], t[1] + t[4] * t[5], t[0]) for t in good)
    problems += [f"rank {rank}: {a[2]} [{a[0]}, {a[1]}) overlaps {b[2]} at {b[0]}" for a, b in zip(spans, spans[1:])
                 if b[0] < a[1]]
    return problems, good

def segments(t, lo, hi):
    """the part inside [lo, hi) of the flat buffer of the rank's slice t of a whole tensor, as runs
    (index into g[lo:hi], row-major index into the whole tensor, length)"""
    name, off, r0, c0, lr, lc, rows, cols = t
    a, b = max(off, lo), min(off + lr * lc, hi)
    if a >= b:
        return
    k0, k1 = a - off, b - off  # local elements k0..k1-1, row-major
    if lc == cols:  # whole rows: one run in both
        yield a - lo, r0 * cols + k0, k1 - k0
        return
    for r in range(k0 // lc, (k1 - 1) // lc + 1):
        s, e = max(k0, r * lc), min(k1, (r + 1) * lc)
        yield off + s - lo, (r0 + r) * cols + c0 + s - r * lc, e - s

def at(name, cols, i):
    return f"{name}[{i // cols}, {i % cols}]" if cols > 1 else f"{name}[{i}]"

def check_grads(ref, refs, dumps, dp, zero, atol_frac=GRAD_ATOL_FRAC):
    """every rank's every tensor slice, where inside its [lo, hi), against the same elements of the single-
    process tensor, |g - r| <= GRAD_RTOL |r| + atol_frac max|r of that tensor|; gives the problems with the
    values and maps (naming each failing rank's worst element), with the coverage (every single-process element
    in some rank's compared slice), with the shards (ranks with the same map are one stage and tp rank's dp
    replicas: dp of them, each [0, total) without ZeRO, their [lo, hi) tiling [0, total) under ZeRO-1), and
    the worst element over all ranks (its fraction of the tolerance, where), the number of elements compared and
    of distinct dumps"""
    values, cover, shards = [], [], []
    covered = {name: bytearray(rows * cols) for name, (_, rows, cols, _) in refs.items()}
    worst, compared, copies = (-1.0, ""), 0, {}
    rg = ref["g"]
    for rank, d in enumerate(dumps):
        problems, good = map_problems(rank, d, refs)
        values += problems
        lo, hi, g = d["lo"], d["hi"], d["g"]
        if not zero and (lo, hi) != (0, d["total"]):
            values.append(f"rank {rank} holds [{lo}, {hi}), want all of [0, {d['total']}) without ZeRO")
        # a dump identical to an earlier rank's (dp replicas without ZeRO) compares the same: once is enough
        key = (tuple(d["tensors"]), lo, hi, g.tobytes())
        if copies.setdefault(key, rank) != rank:
            continue
        rank_worst, bad = (-1.0, None), 0
        for t in good:
            name, cols = t[0], t[7]
            off, _, _, gmax = refs[name]
            atol = atol_frac * gmax
            if atol > 0:
                ratio = lambda a, b: abs(a - b) / (GRAD_RTOL * abs(a) + atol)
            else:  # an all-zero gradient: exactly
                ratio = lambda a, b: 0.0 if a == b else math.inf
            for gi, wi, n in segments(t, lo, hi):
                compared += n
                covered[name][wi:wi + n] = b"\1" * n
                ratios = list(map(ratio, rg[off + wi:off + wi + n], g[gi:gi + n]))
                total = sum(ratios)
                nan = total != total  # NaN anywhere (max would pass over it)
                w = math.inf if nan else max(ratios)
                if w > rank_worst[0]:
                    j = next(j for j, r in enumerate(ratios) if r != r) if nan else ratios.index(w)
                    rank_worst = (w, (t, gi + j, wi + j))
                if w > 1:
                    bad += sum(1 for r in ratios if not r <= 1)
        if rank_worst[1] is None:
            continue
        w, (t, gi, wi) = rank_worst
        name, cols = t[0], t[7]
        a, b, gmax = rg[refs[name][0] + wi], g[gi], refs[name][3]
        tol = GRAD_RTOL * abs(a) + atol_frac * gmax
        where = f"rank {rank} {at(name, cols, wi)} (element {lo + gi} of its [{lo}, {hi}))"
        if w > worst[0]:
            worst = (w, f"{where}: {b!r}, single process {a!r}, |diff| {abs(a - b):.3g}, tolerance {tol:.3g}")
        if w > 1:
            values.append(f"{where}: {b!r}, single process {a!r} (|diff| {abs(a - b):.3g} > {GRAD_RTOL:g} |g| + "
                          f"{atol_frac:g} max|g| = {tol:.3g}; max|g| of {name} {gmax:.3g}; {bad} element"
                          f"{'s' if bad != 1 else ''} of rank {rank} off)")
    for name, (_, rows, cols, _) in refs.items():
        missing = covered[name].count(0)
        if missing:
            cover.append(f"{missing} of the {rows * cols} elements of {name} [{rows}, {cols}] in no rank's compared "
                         f"slice, the first {at(name, cols, covered[name].index(0))}")
    groups = {}
    for rank, d in enumerate(dumps):
        groups.setdefault(tuple(d["tensors"]), []).append(rank)
    if sorted(len(g) for g in groups.values()) != [dp] * (len(dumps) // dp):
        values.append(f"ranks with the same map: " + ", ".join(" ".join(map(str, g)) for g in groups.values()) +
                      f"; want {len(dumps) // dp} groups of {dp} (one per stage and tp rank)")
    if zero:
        for ranks in groups.values():
            totals = {dumps[r]["total"] for r in ranks}
            if len(totals) != 1:
                shards.append(f"ranks {ranks} with the same map have totals {sorted(totals)}")
                continue
            shards += shard_problems([(dumps[r]["lo"], dumps[r]["hi"]) for r in ranks], totals.pop(), ranks)
    return values, cover, shards, worst, (compared, len(copies))

def shard_problems(spans, total, ranks=None):
    """the (lo, hi) of the dp ranks (numbered `ranks`, else 0..) tile [0, total) exactly, and no rank holds
    everything"""
    order = sorted((lo, hi, r) for r, (lo, hi) in zip(ranks or range(len(spans)), spans))
    at, bad = 0, []
    for lo, hi, r in order:
        if lo != at:
            bad.append(f"rank {r} starts at {lo}, want {at}")
        at = hi
    if at != total:
        bad.append(f"the shards end at {at}, want {total}")
    if len(spans) > 1 and any(hi - lo == total for lo, hi in spans):
        bad.append("a rank holds the whole buffer")
    if bad:
        bad.insert(0, "shards " + " ".join(f"rank {r} [{lo}, {hi})" for lo, hi, r in order))
    return bad

def cmp_grads(name, ref_prefix, got_prefix, nranks, dp, tp, zero):
    """each rank's dump after step 1 against the single-process one, tensor slice by tensor slice (check_grads):
    verdicts NAME (values and maps), NAME_coverage, and under ZeRO-1 NAME_shards; a comment with the worst element"""
    names = [name, name + "_coverage"] + ([name + "_shards"] if zero else [])
    try:
        ref, refs = reference(ref_prefix)
        dumps = [load_dump(got_prefix, r) for r in range(nranks)]
    except Exception as e:
        for n in names:
            verdict(n, [str(e)])
        return
    atol_frac = GRAD_ATOL_FRAC_TP if tp > 1 else GRAD_ATOL_FRAC
    *results, worst, compared = check_grads(ref, refs, dumps, dp, zero, atol_frac)
    for n, problems in zip(names, results):
        verdict(n, problems)
    print(f"# {name}: {compared[0]} elements compared in {compared[1]} distinct dumps of {nranks} ranks, the worst at "
          f"{worst[0]:.3g} of its tolerance "
          f"({GRAD_RTOL:g} |g| + {atol_frac:g} max|g|): {worst[1]}")

def split(ref, dp, tp, pp, zero, fill=math.nan):
    """the single-process dump cut like a dp x tp x pp layout (for the controls): blocks into pp stages, the
    embedding on the first and the last stage (as a tied one is), other tensors outside the blocks on the last;
    matrices by turns split by rows over tp, by columns, or whole, vectors whole; slices padded to 16 floats
    with `fill`; under ZeRO-1 each of the dp replicas holds [lo, hi) of a 1/dp share"""
    layers = 1 + max(int(t[0].split(".")[1]) for t in ref["tensors"] if t[0].startswith("layers."))
    g, dumps = ref["g"], []
    for rank in range(dp * tp * pp):
        d, tr, s = rank // (tp * pp), rank // pp % tp, rank % pp
        buf, tensors = array.array("f"), []
        for i, (name, off, _, _, _, _, rows, cols) in enumerate(ref["tensors"]):
            if name.startswith("layers."):
                keep = int(name.split(".")[1]) * pp // layers == s
            else:
                keep = s == pp - 1 or (s == 0 and name.startswith("embed_tokens"))
            if not keep:
                continue
            r0, c0, lr, lc = 0, 0, rows, cols
            if cols > 1 and i % 3 == 0 and rows % tp == 0:
                lr = rows // tp
                r0 = lr * tr
            elif cols > 1 and i % 3 == 1 and cols % tp == 0:
                lc = cols // tp
                c0 = lc * tr
            tensors.append((name, len(buf), r0, c0, lr, lc, rows, cols))
            for r in range(r0, r0 + lr):
                buf.extend(g[off + r * cols + c0:off + r * cols + c0 + lc])
            buf.extend(array.array("f", [fill]) * (-len(buf) % 16))
        n = len(buf)
        lo, hi = (n * d // dp, n * (d + 1) // dp) if zero else (0, n)
        dumps.append(dict(lo=lo, hi=hi, total=n, g=buf[lo:hi], tensors=tensors))
    return dumps

def control(name, ref_metrics, other_metrics, steps, ref_prefix, other_prefix):
    """the comparisons tell runs apart: another seed (losses, gradients), a loss off by 2e-5, and, in the
    single-process gradients cut like dp2 x tp2 x pp2 under ZeRO-1 (split: NaN padding that must not be read,
    slices of rows and of columns, a second embedding), single elements off by twice their tolerance (in a column
    slice of a shard that starts past 0, in the second embedding), a slice one row off, a tensor left out of a
    map, and shards with a gap, an overlap, a short end, one rank holding all"""
    problems = []
    ref_m, other_m = read_metrics(ref_metrics, steps), read_metrics(other_metrics, steps)
    if not metric_problems(ref_m, other_m):
        problems.append("the metrics of seed 43 pass for the single-process run's")
    nudged = [dict(r) for r in ref_m]
    nudged[steps - 1]["loss"] *= 1 + 2 * LOSS_RTOL
    if not metric_problems(ref_m, nudged) or metric_problems(ref_m, ref_m):
        problems.append("a last loss off by 2e-5 relative is not caught, or identical metrics are not accepted")

    ref, refs = reference(ref_prefix)
    other, _ = reference(other_prefix)
    dp, tp, pp = 2, 2, 2
    def check(dumps):
        return check_grads(ref, refs, dumps, dp, 1)[:3]
    dumps = split(ref, dp, tp, pp, 1)
    if any(check(dumps)):
        problems.append(f"the single-process gradients cut like dp2 x tp2 x pp2 ZeRO-1 do not pass: {check(dumps)}")
    values, *_ = check(split(other, dp, tp, pp, 1))
    if not values:
        problems.append("the gradients of seed 43 pass for the single-process run's")
    # one element off in a column slice (col0 > 0) of rank 7 (second dp replica: lo > 0), one in rank 1's embedding
    # (the last stage's copy); each named, nothing else
    want = []
    for rank, pick in ((7, lambda t: t[3] > 0), (1, lambda t: t[0].startswith("embed_tokens"))):
        d = dumps[rank]
        t = next(t for t in d["tensors"] if pick(t) and any(segments(t, d["lo"], d["hi"])))
        runs = list(segments(t, d["lo"], d["hi"]))
        gi, wi, n = runs[len(runs) // 2]
        gi, wi = gi + n // 2, wi + n // 2
        a = ref["g"][refs[t[0]][0] + wi]
        d["g"][gi] += 2 * (GRAD_RTOL * abs(a) + GRAD_ATOL_FRAC * refs[t[0]][3])
        want.append(f"rank {rank} {at(t[0], t[7], wi)} ")
    values, cover, shards = check(dumps)
    if len(values) != 2 or any(sum(w in v for v in values) != 1 for w in want) or cover or shards:
        problems.append(f"two elements off by twice their tolerance are not named as {want}: {values} {cover} {shards}")
    # a row-split slice of rank 0 (tp rank 0) claimed one row further down
    dumps = split(ref, dp, tp, pp, 1)
    d = dumps[0]
    i, t = next((i, t) for i, t in enumerate(d["tensors"]) if t[4] < t[6] and any(segments(t, d["lo"], d["hi"])))
    d["tensors"][i] = t[:2] + (t[2] + 1,) + t[3:]
    values, *_ = check(dumps)
    if not any(f"rank 0 {t[0]}[" in v for v in values):
        problems.append(f"{t[0]} on rank 0 read one row off is not caught: {values}")
    # a block's slice inside rank 0's share (no other rank holds it there) left out of its map
    dumps = split(ref, dp, tp, pp, 1)
    d = dumps[0]
    t = next(t for t in d["tensors"] if t[0].startswith("layers.") and t[4:6] != t[6:8] and d["lo"] <= t[1] and
             t[1] + t[4] * t[5] <= d["hi"])
    d["tensors"].remove(t)
    values, cover, shards = check(dumps)
    if not any(t[0] + " " in c for c in cover):
        problems.append(f"{t[0]} left out of rank 0's map is not caught by the coverage: {values} {cover} {shards}")
    for spans in ([(0, 5), (6, 10)], [(0, 6), (5, 10)], [(0, 5), (5, 9)], [(0, 10), (10, 10)]):
        if not shard_problems(spans, 10):
            problems.append(f"shards {spans} of 10 pass as a tiling")
    if shard_problems([(5, 10), (0, 5)], 10):
        problems.append("shards [(5, 10), (0, 5)] of 10 are not accepted")
    verdict(name, problems)

mode, args = sys.argv[1], sys.argv[2:]
if mode == "metrics":
    cmp_metrics(args[0], args[1], args[2], int(args[3]))
elif mode == "grads":
    cmp_grads(args[0], args[1], args[2], *map(int, args[3:7]))
elif mode == "control":
    control(args[0], args[1], args[2], int(args[3]), args[4], args[5])
EOF
compare() {
    local out
    out=$(python3 "$tmp/compare.py" "$@" 2>&1)
    if ! grep -qE '^(ok|FAIL) ' <<<"$out"; then out="FAIL $2: the comparison gave no verdict: $out"; fi
    echo "$out"
    failures=$((failures + $(grep -c '^FAIL' <<<"$out")))
}

# ---------------------------------------------------------------------------------------------------
# parity

# layouts: "dp tp pp zero"
LAYOUTS=("2 1 1 0" "2 1 1 1" "4 1 1 0" "4 1 1 1"
    "1 2 1 0" "1 1 2 0" "1 1 4 0" "2 2 1 0" "2 2 1 1" "1 2 2 0" "2 1 2 0" "2 1 2 1" "2 2 2 0" "2 2 2 1")

parity() { # MODEL MICRO_BATCH ARGS...
    local model=$1 mb=$2
    shift 2
    local base=(train -c "$DEBUG" "$@" --model.num_layers=4 --train.steps=$STEPS --train.global_batch=8
        --train.micro_batch="$mb" --train.threads=1 --log.peak_tflops=0.1)
    local ref="$tmp/$model-ref"
    launch 1 "${base[@]}" --train.run_dir="$ref" --log.dump_grads="$ref-g"
    if [ "$rc" -ne 0 ] || [ ! -s "$ref/metrics.jsonl" ] || [ ! -s "$ref-g.rank0.bin" ]; then
        fail "parallel/$model/single_process" "$(show)"
        return
    fi
    ok "parallel/$model/single_process"
    for layout in "${LAYOUTS[@]}"; do
        read -r dp tp pp zero <<<"$layout"
        local np=$((dp * tp * pp)) name="dp${dp}_tp${tp}_pp${pp}" dir
        [ "$dp" -gt 1 ] && name+="_zero$zero"
        dir="$tmp/$model-$name"
        local args=("${base[@]}" --parallel.dp="$dp" --parallel.tp="$tp" --parallel.pp="$pp" --parallel.zero="$zero"
            --train.run_dir="$dir" --log.dump_grads="$dir-g")
        local t0=$SECONDS
        launch "$np" "${args[@]}"
        local label="parallel/$model/$name"
        if [ "$rc" -eq 2 ] && [ $((tp * pp)) -gt 1 ] && grep -q 'not available in this build' "$tmp/err"; then
            echo "skip $label: $(grep -m1 '^loom: error:' "$tmp/err")"
            continue
        fi
        if timed_out; then
            fail "$label/run" "no result after $LIMIT s on $np ranks (hang?): $(show)"
            continue
        elif [ "$rc" -ne 0 ] || [ ! -s "$dir/metrics.jsonl" ]; then
            fail "$label/run" "$np ranks: $(show)"
            continue
        fi
        ok "$label/run"
        echo "# $label: $np ranks, $((SECONDS - t0)) s"
        compare metrics "$label/losses" "$ref/metrics.jsonl" "$dir/metrics.jsonl" "$STEPS"
        compare grads "$label/grads" "$ref-g" "$dir-g" "$np" "$dp" "$tp" "$zero"
        rm -f "$dir-g".rank*.bin "$dir-g".rank*.map
    done
    # the control: another seed is told apart by both comparisons
    launch 1 "${base[@]}" --train.seed=43 --train.run_dir="$tmp/$model-seed43" --log.dump_grads="$tmp/$model-seed43-g"
    if [ "$rc" -ne 0 ]; then
        fail "parallel/$model/control" "--train.seed=43: $(show)"
    else
        compare control "parallel/$model/control" "$ref/metrics.jsonl" "$tmp/$model-seed43/metrics.jsonl" "$STEPS" \
            "$ref-g" "$tmp/$model-seed43-g"
    fi
}

t0=$SECONDS
parity mla 1
parity mha 2 "${MHA_ARGS[@]}"
echo "# parity: $((SECONDS - t0)) s"
t0=$SECONDS

# ---------------------------------------------------------------------------------------------------
# errors on every rank

# the wrapper every rank runs in launch_each: runs the command, writes its exit status to DIR/rankR.rc
cat >"$tmp/rank_status.sh" <<'EOF'
#!/bin/sh
dir=$1
shift
"$@"
status=$?
echo "$status" >"$dir/rank${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${SLURM_PROCID:-unknown}}}.rc"
exit "$status"
EOF
chmod +x "$tmp/rank_status.sh"

# launch_each NP ARGS...: like launch, but every rank's exit status lands in $tmp/rc/rankR.rc; Open MPI
# would otherwise kill the other ranks as soon as the first one exits non-zero (and then mpirun's own exit
# status is 0: launch gives that one)
launch_each() {
    local np=$1
    shift
    rm -rf "$tmp/rc"
    mkdir -p "$tmp/rc"
    OMPI_MCA_orte_abort_on_non_zero_status=0 timeout -k 10 "$LIMIT" scripts/launch.sh -np "$np" \
        "$tmp/rank_status.sh" "$tmp/rc" "$LOOM" "$@" >"$tmp/out_each" 2>"$tmp/err_each"
    rc_each=$?
}

# expect_error NAME NP KEY MUST ARGS...: `loom train ARGS` on NP ranks must exit 2 (the launch and every
# rank), within the time limit, with a `loom: error: KEY: ...` line (MUST, an extended regex, found in
# it), no progress on stdout, no crash, and nothing written to the run folder (unless RUN_DIR is given:
# then the caller checks it)
ncase=0
expect_error() {
    local name="parallel/error/$1" np=$2 key=$3 must=$4
    shift 4
    ncase=$((ncase + 1))
    local run=${RUN_DIR:-$tmp/error-run-$ncase}
    local args=(train "$@" --train.run_dir="$run")
    launch "$np" "${args[@]}"
    local line
    line=$(grep -m1 '^loom: error: ' "$tmp/err")
    local what="\`scripts/launch.sh -np $np loom ${args[*]}\`: $(show)"
    if timed_out; then
        fail "$name" "no result after $LIMIT s (hang?): $what"
        return
    elif [ "$rc" -ne 2 ]; then
        fail "$name" "want exit status 2 from the launch: $what"
        return
    elif [[ "$line" != "loom: error: $key: "* ]] || ! grep -qE -- "$must" <<<"$line"; then
        fail "$name" "want a line 'loom: error: $key: ...' matching /$must/: $what"
        return
    elif grep -v '^loom: error: ' "$tmp/err" | grep -qE 'MPI_ABORT|^\[rank [0-9]+\]|[Ss]egmentation|signal [0-9]'; then
        fail "$name" "a crash or an abort instead of a clean exit: $what"
        return
    elif grep -qE '^step |tok/s|^loom train:' "$tmp/out"; then
        fail "$name" "stdout shows a run starting: $what"
        return
    elif [ -z "${RUN_DIR:-}" ] && { [ -e "$run/metrics.jsonl" ] || [ -e "$run/config.ini" ]; }; then
        fail "$name" "a run was started in $run ($(ls "$run")): $what"
        return
    fi
    # every rank's own exit status
    launch_each "$np" "${args[@]}"
    local statuses
    statuses=$(for r in $(seq 0 $((np - 1))); do cat "$tmp/rc/rank$r.rc" 2>/dev/null || echo missing; done | tr '\n' ' ')
    local want
    want=$(for _ in $(seq "$np"); do printf '2 '; done)
    if [ "$rc_each" -eq 124 ] || [ "$rc_each" -eq 137 ]; then
        fail "$name" "with every rank's status recorded: no result after $LIMIT s (hang?); stderr: $(tail -c 800 "$tmp/err_each")"
    elif [ "$statuses" != "$want" ] || [ "$(ls "$tmp/rc" | wc -l)" -ne "$np" ]; then
        fail "$name" "exit status per rank 0..$((np - 1)): $statuses(want $want); files $(ls "$tmp/rc" | tr '\n' ' '); stderr: $(tail -c 800 "$tmp/err_each")"
    else
        ok "$name"
    fi
}

expect_error world_dp2_on_4 4 parallel 'dp\(2\)\*tp\(1\)\*pp\(1\) = 2 != world size 4' -c "$DEBUG" --parallel.dp=2
expect_error world_dp4_on_2 2 parallel 'dp\(4\)\*tp\(1\)\*pp\(1\) = 4 != world size 2' -c "$DEBUG" --parallel.dp=4 \
    --train.global_batch=8
expect_error tp3_heads 3 parallel.tp 'model\.num_heads' -c "$DEBUG" --parallel.tp=3
expect_error tp4_kv_heads 4 parallel.tp 'model\.num_kv_heads' -c "$DEBUG" "${MHA_ARGS[@]}" --parallel.tp=4
expect_error tp2_odd_vocab 2 parallel.tp 'model\.vocab_size' -c "$DEBUG" --parallel.tp=2 --model.vocab_size=321
expect_error tp2_odd_ffn 2 parallel.tp 'model\.intermediate_size' -c "$DEBUG" --parallel.tp=2 --model.intermediate_size=385
expect_error pp3_two_layers 3 parallel.pp '3 stages for 2 layers' -c "$DEBUG" --parallel.pp=3
expect_error micro_batches_3 2 parallel.micro_batches '3 micro-batches' -c "$DEBUG" --parallel.dp=2 \
    --train.global_batch=8 --parallel.micro_batches=3
expect_error global_batch_dp4 4 train.global_batch 'parallel.dp = 4' -c "$DEBUG" --parallel.dp=4 --train.global_batch=6

# an existing run folder (the MLA single-process run above, or a fresh one) stops every rank, and its
# files stay as they were
exist="$tmp/mla-ref"
if [ ! -s "$exist/metrics.jsonl" ]; then
    exist="$tmp/existing"
    launch 1 train -c "$DEBUG" --train.steps=2 --train.run_dir="$exist"
fi
if [ ! -s "$exist/metrics.jsonl" ]; then
    fail parallel/error/existing_run "no run to collide with in $exist: $(show)"
else
    before=$(cat "$exist/metrics.jsonl" "$exist/config.ini" | cksum)
    files_before=$(ls "$exist")
    RUN_DIR=$exist expect_error existing_run 4 train.run_dir 'already holds a run' -c "$DEBUG" --parallel.dp=4 \
        --train.global_batch=8 --train.seed=7
    if [ "$(cat "$exist/metrics.jsonl" "$exist/config.ini" | cksum)" = "$before" ] && [ "$(ls "$exist")" = "$files_before" ]; then
        ok parallel/error/existing_run_untouched
    else
        fail parallel/error/existing_run_untouched "$exist changed: files now $(ls "$exist" | tr '\n' ' ') (before: $(tr '\n' ' ' <<<"$files_before"))"
    fi
fi
echo "# errors: $((SECONDS - t0)) s"

[ "$failures" -eq 0 ]
