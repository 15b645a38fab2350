"""tests/cli/gradcmp.py — multi-rank runs against the single-process run: metrics and gradient dumps.

The comparison logic shared by tests/cli/test_parallel.sh and tests/cli/test_moe.sh, as a module that shell
tests import (python3 with the standard library only):

    sys.path.insert(0, "tests/cli"); import gradcmp

and as a command line, printing `ok NAME` / `FAIL NAME: ...` verdicts and `# ...` comments:

    python3 tests/cli/gradcmp.py metrics NAME REF_METRICS GOT_METRICS STEPS
    python3 tests/cli/gradcmp.py grads NAME REF_PREFIX GOT_PREFIX NRANKS REPLICAS TP ZERO [EP]

metrics: every step's loss (1e-5 relative) and gradient norm (1e-5 at step 1, 1e-4 later) of GOT against REF.
grads: the dumps PREFIX.rankR.bin/.map (--log.dump_grads) of NRANKS ranks against the single-process dump,
every slice of every rank element by element (1e-5 relative + 1e-6 max|g| of that tensor; 4e-6 with TP > 1
or EP > 1, which change the forward arithmetic: see GRAD_ATOL_FRAC_TP and GRAD_ATOL_FRAC_EP),
with the coverage (every single-process element compared somewhere) and, with ZERO = 1, the shards. REPLICAS
is the number of ranks that must share each map: dp without expert parallelism (the dp replicas of one stage
and tp rank), dp / ep with it (ranks of a stage holding the same experts). Verdicts NAME, NAME_coverage and
under ZeRO-1 NAME_shards.
"""
import array
import json
import math
import sys

LOSS_RTOL = 1e-5         # every step's loss
GNORM1_RTOL = 1e-5       # step 1's gradient norm (the same gradients, reduced in another order)
GNORM_RTOL = 1e-4        # later steps' gradient norms (the trajectories drift apart by float rounding)
GRAD_RTOL = 1e-5         # gradients after step 1: |g - r| <= GRAD_RTOL |r| + GRAD_ATOL_FRAC max|r of that tensor|
GRAD_ATOL_FRAC = 1e-6
# With tp > 1 the forward pass itself is computed in another order (row-parallel partial sums added across the
# tp ranks, each rank's heads apart), and the backward carries that rounding: measured over seeds 42..46 on both
# models of tests/cli/test_parallel.sh, the worst element of tp2 and dp2 x tp2 x pp2 reached 0.72..1.28 of the
# tolerance above (MHA k_proj, q_proj, q_norm behind the QK-norm; MLA q_a/q_b_proj and their norms), and
# 0.20..0.33 of it with 4e-6; the differences are uncorrelated with the gradients (|correlation| < 0.05 on the
# large tensors: no scale error), with an rms ~1.2e-6 of the rms gradient, ~4x the spread between single-process
# runs that only accumulate their micro-batches in another order. dp and pp only reorder sums (worst 0.22..0.62
# and < 0.06 of 1e-6).
GRAD_ATOL_FRAC_TP = 4e-6
# With ep > 1 the forward pass changes too: each expert's GEMMs run over the tokens gathered from the ep ranks
# (several micro-batches at once, in another row order). Measured on the tiny MoE model (tests/cli/test_moe.sh:
# dp2 ep2, dp4 ep4, dp4 ep2, dp2 pp2 ep2; seeds 42..46, global batch 8 of micro-batches of 1) the worst element
# reached 0.44..1.12 of the 1e-6 tolerance (layers.0 q_norm behind the QK-norm, seed 42), 0.19..0.44 of 4e-6;
# the single process with micro-batches of 2 instead of 1 (the same gradients, another GEMM shape) already
# differs by 0.44..0.59 of 1e-6, plain dp2 by 0.27..0.61; the differences are uncorrelated with the gradients
# (|correlation| < 0.09 on the large tensors), and losses, router biases and expert loads match.
GRAD_ATOL_FRAC_EP = 4e-6


def verdict(name, problems):
    print(f"FAIL {name}: " + "; ".join(problems[:4]) if problems else f"ok {name}")
    return not problems


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
    return verdict(name, metric_problems(ref, got))


def load_dump(prefix, rank):
    """PREFIX.rankR.bin (int64 total, S, S pairs lo, hi, then float32 g[lo:hi] of each span in turn) and
    PREFIX.rankR.map (per tensor of the flat buffer: name offset row0 col0 local_rows local_cols rows cols).
    Gives spans [(lo, hi)] and g, their gradients one after the other (see pieces)."""
    path = f"{prefix}.rank{rank}.bin"
    with open(path, "rb") as f:
        head = array.array("q")
        head.fromfile(f, 2)
        if sys.byteorder != "little":
            head.byteswap()
        total, nspans = head
        if not 1 <= nspans <= 16:
            raise ValueError(f"{path}: {nspans} spans")
        flat = array.array("q")
        flat.fromfile(f, 2 * nspans)
        if sys.byteorder != "little":
            flat.byteswap()
        data = f.read()
    spans = list(zip(flat[0::2], flat[1::2]))
    ends = [0] + [hi for _, hi in spans]
    if len(data) != 4 * sum(hi - lo for lo, hi in spans) or any(not (e <= lo <= hi <= total) for (lo, hi), e in
                                                                 zip(spans, ends)):
        raise ValueError(f"{path}: spans {spans} of {total} with {len(data)} bytes of gradients")
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
    return dict(spans=spans, total=total, g=g, tensors=tensors)


def pieces(d):
    """the spans (lo, hi) of a dump with where each starts in d["g"]"""
    base = 0
    for lo, hi in d["spans"]:
        yield lo, hi, base
        base += hi - lo


def reference(prefix):
    """the single-process dump, checked (the whole buffer, every tensor whole and finite), and per tensor name
    (offset, rows, cols, max|g|)"""
    ref = load_dump(prefix, 0)
    total, g = ref["total"], ref["g"]
    if ref["spans"] != [(0, total)]:
        raise ValueError(f"the single-process dump holds {ref['spans']} of {total}")
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


def shard_problems(spans, total, ranks=None):
    """the (lo, hi) of the dp ranks (numbered `ranks`, else 0..) tile [0, total) exactly, and no rank holds
    everything"""
    order = sorted((lo, hi, r) for r, (lo, hi) in zip(ranks or range(len(spans)), spans))
    at_, bad = 0, []
    for lo, hi, r in order:
        if lo != at_:
            bad.append(f"rank {r} starts at {lo}, want {at_}")
        at_ = hi
    if at_ != total:
        bad.append(f"the shards end at {at_}, want {total}")
    if len(spans) > 1 and any(hi - lo == total for lo, hi in spans):
        bad.append("a rank holds the whole buffer")
    if bad:
        bad.insert(0, "shards " + " ".join(f"rank {r} [{lo}, {hi})" for lo, hi, r in order))
    return bad


def zero_problems(dumps):
    """ZeRO-1 shares: the buffer's dense part [0, split) is divided over the ranks with the same dense tensors
    (dp), the routed experts [split, total) (the expert tensors, which come last) over the ranks holding the same
    experts (edp): in each such group the ranks' spans cut to the part tile it exactly"""
    problems = []
    def split_of(d):
        offs = [t[1] for t in d["tensors"] if ".mlp.experts." in t[0]]
        return min(offs) if offs else d["total"]
    for expert in (False, True):
        groups = {}
        for rank, d in enumerate(dumps):
            key = tuple(t for t in d["tensors"] if (".mlp.experts." in t[0]) == expert)
            if key:
                groups.setdefault(key, []).append(rank)
        for ranks in groups.values():
            ends = {(split_of(dumps[r]), dumps[r]["total"]) for r in ranks}
            if len(ends) != 1:
                problems.append(f"ranks {ranks} with the same {'expert' if expert else 'dense'} tensors have parts "
                                f"{sorted(ends)}")
                continue
            split, total = ends.pop()
            a, b = (split, total) if expert else (0, split)
            cut = [[(max(lo, a) - a, min(hi, b) - a) for lo, hi in dumps[r]["spans"] if min(hi, b) > max(lo, a)]
                   for r in ranks]
            if any(len(c) > 1 for c in cut):
                problems.append(f"ranks {ranks}: more than one span in the {'expert' if expert else 'dense'} part")
                continue
            problems += [("experts: " if expert else "") + p for p in
                         shard_problems([c[0] if c else (0, 0) for c in cut], b - a, ranks)]
    return problems


def check_grads(ref, refs, dumps, replicas, zero, atol_frac=GRAD_ATOL_FRAC):
    """every rank's every tensor slice, where inside its [lo, hi), against the same elements of the single-
    process tensor, |g - r| <= GRAD_RTOL |r| + atol_frac max|r of that tensor|; gives the problems with the
    values and maps (naming each failing rank's worst element), with the coverage (every single-process element
    in some rank's compared slice), with the shards (ranks with the same map come in groups of `replicas`, each
    [0, total) without ZeRO, their [lo, hi) tiling [0, total) under ZeRO-1), and the worst element over all
    ranks (its fraction of the tolerance, where), the number of elements compared and of distinct dumps"""
    values, cover, shards = [], [], []
    covered = {name: bytearray(rows * cols) for name, (_, rows, cols, _) in refs.items()}
    worst, compared, copies = (-1.0, ""), 0, {}
    rg = ref["g"]
    for rank, d in enumerate(dumps):
        problems, good = map_problems(rank, d, refs)
        values += problems
        g = d["g"]
        if not zero and d["spans"] != [(0, d["total"])]:
            values.append(f"rank {rank} holds {d['spans']}, want all of [0, {d['total']}) without ZeRO")
        # a dump identical to an earlier rank's (replicas without ZeRO) compares the same: once is enough
        key = (tuple(d["tensors"]), tuple(d["spans"]), g.tobytes())
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
            for gi, wi, n in ((base + gi, wi, n) for lo, hi, base in pieces(d) for gi, wi, n in segments(t, lo, hi)):
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
        lo, hi, base = next(p for p in pieces(d) if p[2] <= gi < p[2] + p[1] - p[0])
        where = f"rank {rank} {at(name, cols, wi)} (element {lo + gi - base} of its [{lo}, {hi}))"
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
    if sorted(len(g) for g in groups.values()) != [replicas] * (len(dumps) // replicas):
        values.append(f"ranks with the same map: " + ", ".join(" ".join(map(str, g)) for g in groups.values()) +
                      f"; want {len(dumps) // replicas} groups of {replicas}")
    if zero:
        shards = zero_problems(dumps)
    return values, cover, shards, worst, (compared, len(copies))


def atol_frac_for(tp, ep=1):
    return max(GRAD_ATOL_FRAC_TP if tp > 1 else GRAD_ATOL_FRAC, GRAD_ATOL_FRAC_EP if ep > 1 else GRAD_ATOL_FRAC)


def cmp_grads(name, ref_prefix, got_prefix, nranks, replicas, tp, zero, ep=1):
    """each rank's dump after step 1 against the single-process one, tensor slice by tensor slice (check_grads):
    verdicts NAME (values and maps), NAME_coverage, and under ZeRO-1 NAME_shards; a comment with the worst
    element. True when every verdict is ok."""
    names = [name, name + "_coverage"] + ([name + "_shards"] if zero else [])
    try:
        ref, refs = reference(ref_prefix)
        dumps = [load_dump(got_prefix, r) for r in range(nranks)]
    except Exception as e:
        for n in names:
            verdict(n, [str(e)])
        return False
    atol_frac = atol_frac_for(tp, ep)
    *results, worst, compared = check_grads(ref, refs, dumps, replicas, zero, atol_frac)
    good = all([verdict(n, problems) for n, problems in zip(names, results)])
    print(f"# {name}: {compared[0]} elements compared in {compared[1]} distinct dumps of {nranks} ranks, the worst at "
          f"{worst[0]:.3g} of its tolerance "
          f"({GRAD_RTOL:g} |g| + {atol_frac:g} max|g|): {worst[1]}")
    return good


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "metrics":
        cmp_metrics(args[0], args[1], args[2], int(args[3]))
    elif mode == "grads":
        cmp_grads(args[0], args[1], args[2], *map(int, args[3:8]))
    else:
        sys.exit(f"gradcmp.py: unknown mode {mode!r} (metrics or grads)")
