#!/usr/bin/env bash
# tests/cli/test_moe.sh — the tiny MoE model (configs/runs/debug-moe.ini: 3 blocks, the first dense, blocks
# 1-2 MoE with 8 experts, top-2, 1 shared) over expert-parallel layouts, through scripts/launch.sh (every
# launch under `timeout`).
#
# Parity: 10 steps, global batch 8 of micro-batches of 1, single process against dp2 ep2, dp4 ep4, dp4 ep2,
# dp2 pp2 ep2, plain dp2 (ep1), tp2 and dp2 tp2 (ep1), ep x tp (tp2 ep2, dp2 tp2 ep2, dp2 tp2 ep4: each tp
# rank dispatches its own slice of the tokens) and ZeRO-1 with experts (dp2 ep2, dp4 ep2, dp2 tp2 ep2: the dense
# part of the optimizer split over dp, the experts' over the ranks holding the same experts). Per layout: every step's loss and balance loss within 1e-5 relative and
# gradient norm as in test_parallel.sh (1e-5 at step 1, 1e-4 later); every step's `router_bias` (after that
# step's aux-loss-free update) within 1e-6 of the single-process one; every step's `expert_loads` equal, each
# block's loads summing to the step's tokens x top_k; the gradient dump after step 1 (--log.dump_grads) equal
# slice by slice to the single-process gradients (tests/cli/gradcmp.py: the comparison, tolerances and
# coverage of test_parallel.sh, 1e-5 relative + 1e-6 max|g| of the tensor, with ep > 1 4e-6 as with tp > 1:
# the expert GEMMs run over tokens gathered from several ranks, which changes the forward arithmetic, see
# GRAD_ATOL_FRAC_EP there for the measurements; the ranks sharing a map come in groups of dp / ep: the ranks
# of a stage that hold the same experts); and the expert ownership: in every ep group (ep consecutive ranks
# of a stage, the ranks ordered as parallel/topology.h says: tp fastest, then dp, then pp) every expert
# tensor of the stage's
# MoE blocks is held by exactly one rank, no rank holds an expert of another stage's block or part of an
# expert, and each rank holds experts / ep experts of each of its blocks.
#
# Uneven routing under ep2: top-1 routing with --model.init_std=1e-6 makes every router score sigmoid(~1e-9)
# = 0.5 exactly, so step 1 sends every token of every block to expert 0 (ties go to the lowest index; checked
# from `expert_loads`: one expert holds all tokens, the others none). With the learning rate at 1e-9 the scores
# stay tied, the score-correction bias alone decides, and every step sends all tokens to one expert that moves
# on step by step (0, 1, ..., 7, 0, ...: over both ep ranks). With the default rate the scores leave the tie
# by ~1e-9 and later steps' routing turns on rounding (single process and ep2 part at step 7 in one trial), so
# the rate is kept tiny to keep the load comparison exact. The ep2 run must finish with finite losses and
# match the single-process run as above.
#
# Controls: another seed fails the loss, bias, load and gradient comparisons; a router bias nudged by one
# update (1e-3), a token moved between two experts, loads that miss the token count, an expert's gradient
# element nudged past its tolerance, two experts' gradients swapped on their owner, an expert tensor missing
# from its owner, an expert moved into another ep group (each still held twice over dp4 ep2: only the
# per-group count sees it), balanced routing offered as the uneven case, and ZeRO-1 shares of dp4 ep2 that do
# not tile their part (a dense share one float short, an expert share reaching into its peer's, one widened to
# the whole expert part) must all be caught.
#
# Bad configs (ep not dividing the experts, ep not dividing dp x tp, with tp = 1 and with tp2, top_k > experts):
# exit status 2 from the launch and from every rank (counted by a wrapper), no hang, a
# `loom: error: KEY: ...` line, nothing started or written.
#
# scripts/plot_experts: writes a PNG (magic bytes) for an MoE run (default RUN_DIR/experts.png, and --out),
# exits 2 naming the problem for a dense run; `skip` when matplotlib cannot be had.
#
# Run from the repository root with ./loom built: bash tests/cli/test_moe.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom moe

MOE=configs/runs/debug-moe.ini
STEPS=10
LIMIT=120 # seconds for any one launch
BASE=(train -c "$MOE" --train.steps="$STEPS" --train.global_batch=8 --train.micro_batch=1 --train.threads=1
    --log.peak_tflops=0.1)
UNEVEN=(--moe.top_k=1 --model.init_std=1e-6 --schedule.lr=1e-9 --schedule.min_lr=0)
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" # moecmp.py imports tests/cli/gradcmp.py

# ---------------------------------------------------------------------------------------------------
# comparisons (python3 with the standard library only; the shared part in tests/cli/gradcmp.py)

cat >"$tmp/moecmp.py" <<'EOF'
import configparser, copy, math, os, re, sys
import gradcmp as G

BIAS_ATOL = 1e-6   # router biases move in steps of bias_update_rate (1e-3): equal up to float summation order
EXPERT = re.compile(r"^layers\.(\d+)\.mlp\.experts\.(\d+)\.(.+)$")
LAYER = re.compile(r"^layers\.(\d+)\.")

def top_k(run_dir):
    c = configparser.ConfigParser(interpolation=None)
    c.read(os.path.join(run_dir, "config.ini"))
    return int(c["moe"]["top_k"])

def step_tokens(rows):
    return [r["tokens"] - (rows[i - 1]["tokens"] if i else 0) for i, r in enumerate(rows)]

def loss_problems(ref, got):
    """loss and gradient norm (gradcmp), the balance loss within LOSS_RTOL, and finite losses"""
    problems = G.metric_problems(ref, got)
    for i, (r, g) in enumerate(zip(ref, got)):
        for key in ("loss", "balance_loss"):
            if not (isinstance(g.get(key), (int, float)) and math.isfinite(g[key])):
                problems.append(f"step {i + 1} {key} {g.get(key)!r} is not finite")
        if "balance_loss" in r and "balance_loss" in g and G.rel(r["balance_loss"], g["balance_loss"]) > G.LOSS_RTOL:
            problems.append(f"step {i + 1} balance_loss {g['balance_loss']!r}, single process {r['balance_loss']!r}")
    return problems

def shape(x):
    return [len(b) for b in x] if isinstance(x, list) and all(isinstance(b, list) for b in x) else None

def bias_problems(ref, got):
    problems = []
    for i, (r, g) in enumerate(zip(ref, got)):
        a, b = r.get("router_bias"), g.get("router_bias")
        if shape(a) is None or shape(a) != shape(b) or not a:
            problems.append(f"step {i + 1}: router_bias {b!r}, single process {a!r} (want the same blocks x experts)")
            continue
        for k, (ba, bb) in enumerate(zip(a, b)):
            bad = [e for e, (x, y) in enumerate(zip(ba, bb)) if not abs(x - y) <= BIAS_ATOL]
            if bad:
                problems.append(f"step {i + 1} MoE block {k}: router_bias of expert {bad[0]} {bb[bad[0]]!r}, single "
                                f"process {ba[bad[0]]!r} (|diff| > {BIAS_ATOL:g}; {len(bad)} experts off)")
    return problems

def load_problems(ref, got, k_ref, k_got):
    """expert_loads equal every step; each block's loads sum to the step's tokens x top_k in both runs"""
    problems = []
    for name, rows, k in (("single process", ref, k_ref), ("this run", got, k_got)):
        for i, (r, t) in enumerate(zip(rows, step_tokens(rows))):
            for b, loads in enumerate(r.get("expert_loads") or [None]):
                if not isinstance(loads, list) or sum(loads) != t * k or min(loads) < 0:
                    problems.append(f"{name} step {i + 1} MoE block {b}: expert_loads {loads} do not sum to {t} "
                                    f"tokens x top_k {k} = {t * k}")
    for i, (r, g) in enumerate(zip(ref, got)):
        a, b = r.get("expert_loads"), g.get("expert_loads")
        if a != b:
            problems.append(f"step {i + 1}: expert_loads {b}, single process {a}")
    return problems

def owner_problems(maps, dp, tp, pp, ep, ref_names):
    """maps: per rank its tensor names. In each ep group of each stage every expert tensor of a block on that
    stage held by exactly one rank (none of another stage's), whole experts, experts / ep per rank and block;
    gives the problems and a line saying who holds what"""
    per_stage, problems = dp * tp, []
    if len(maps) != per_stage * pp:
        return [f"{len(maps)} maps for dp {dp} x tp {tp} x pp {pp}"], ""
    stage_of = {}  # layer -> stages holding its tensors other than experts
    for rank, names in enumerate(maps):
        for n in names:
            m = LAYER.match(n)
            if m and not EXPERT.match(n):
                stage_of.setdefault(int(m.group(1)), set()).add(rank // per_stage)
    experts, parts = {}, set()  # layer -> expert ids; tensor suffixes of an expert
    for n in ref_names:
        m = EXPERT.match(n)
        if m:
            experts.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
            parts.add(m.group(3))
    if not experts:
        return ["the single-process model has no expert tensors"], ""
    for layer in sorted(experts):
        if len(stage_of.get(layer, ())) != 1:
            problems.append(f"MoE block layers.{layer} is on stages {sorted(stage_of.get(layer, ()))}, want one")
    held = [set(names) for names in maps]
    where = []
    for s in range(pp):
        for grp in range(per_stage // ep):
            ranks = [s * per_stage + grp * ep + i for i in range(ep)]
            for layer in sorted(experts):
                want = 1 if stage_of.get(layer) == {s} else 0
                for e in sorted(experts[layer]):
                    for p in sorted(parts):
                        n = f"layers.{layer}.mlp.experts.{e}.{p}"
                        by = [r for r in ranks if n in held[r]]
                        if len(by) != want:
                            problems.append(f"stage {s} ep group {grp} (ranks {ranks}): {n} held by ranks {by}, want "
                                            f"{'exactly one' if want else 'none (a block of another stage)'}")
    for rank, names in enumerate(held):
        s = rank // per_stage
        for layer in sorted(experts):
            if stage_of.get(layer) != {s}:
                continue
            mine = {e for e in experts[layer] if any(f"layers.{layer}.mlp.experts.{e}.{p}" in names for p in parts)}
            partial = [e for e in mine if not all(f"layers.{layer}.mlp.experts.{e}.{p}" in names for p in parts)]
            if partial:
                problems.append(f"rank {rank} holds only part of layers.{layer}.mlp.experts.{partial[0]}")
            if len(mine) * ep != len(experts[layer]):
                problems.append(f"rank {rank} holds {len(mine)} of the {len(experts[layer])} experts of layers.{layer} "
                                f"({sorted(mine)}), want {len(experts[layer]) // ep} with ep {ep}")
            if layer == min(l for l in experts if stage_of.get(l) == {s}):
                where.append(f"rank {rank}: {','.join(map(str, sorted(mine)))}")
    return problems, "; ".join(where)

def uneven_problems(rows):
    """step 1 of every MoE block: one expert has every routed token, the others none"""
    loads = rows[0].get("expert_loads") if rows else None
    if not isinstance(loads, list) or not loads:
        return [f"step 1 has no expert_loads: {loads!r}"]
    return [f"step 1 MoE block {b}: expert_loads {l}, want one expert with all tokens and the others 0"
            for b, l in enumerate(loads) if sorted(l)[:-1] != [0] * (len(l) - 1) or max(l) <= 0]

def names_of(prefix, nranks):
    out = []
    for r in range(nranks):
        with open(f"{prefix}.rank{r}.map") as f:
            out.append([line.split()[0] for line in f if line.strip()])
    return out

def layout(name, ref_dir, got_dir, ref_prefix, got_prefix, steps, dp, tp, pp, ep, zero=0):
    """every comparison of one layout against the single-process run"""
    nranks = dp * tp * pp
    try:
        ref, got = G.read_metrics(f"{ref_dir}/metrics.jsonl", steps), G.read_metrics(f"{got_dir}/metrics.jsonl", steps)
        k_ref, k_got = top_k(ref_dir), top_k(got_dir)
    except Exception as e:
        for n in ("losses", "router_bias", "expert_loads"):
            G.verdict(f"{name}/{n}", [str(e)])
    else:
        G.verdict(f"{name}/losses", loss_problems(ref, got))
        G.verdict(f"{name}/router_bias", bias_problems(ref, got))
        G.verdict(f"{name}/expert_loads", load_problems(ref, got, k_ref, k_got))
    # ranks holding the same tensors: of the dp x tp ranks of a stage (tp fastest), those with the same tp rank
    # (rank % tp) and the same ep rank (rank % ep), dp x tp / lcm(tp, ep) of them
    replicas = dp * tp // math.lcm(tp, ep)
    G.cmp_grads(f"{name}/grads", ref_prefix, got_prefix, nranks, replicas, tp, zero, ep)
    try:
        ref_names = names_of(ref_prefix, 1)[0]
        problems, where = owner_problems(names_of(got_prefix, nranks), dp, tp, pp, ep, ref_names)
    except Exception as e:
        problems, where = [str(e)], ""
    G.verdict(f"{name}/expert_owners", problems)
    if where:
        print(f"# {name}: experts of the first MoE block of each rank's stage: {where}")

def uneven(name, got_dir, steps):
    try:
        rows = G.read_metrics(f"{got_dir}/metrics.jsonl", steps)
    except Exception as e:
        return G.verdict(name, [str(e)])
    G.verdict(name, uneven_problems(rows))
    hot = [[l.index(max(l)) if max(l) == sum(l) else None for l in r["expert_loads"]] for r in rows]
    print(f"# {name}: the expert with all tokens, per step and block: {hot}")

def control(name, ref_dir, seed_dir, ep2_dir, steps, ref_prefix, seed_prefix, ep2_prefix, dp4_prefix, zero_prefix):
    """the comparisons tell apart what they must (see the header of test_moe.sh)"""
    problems = []
    def caught(what, found):
        if not found:
            problems.append(f"{what} is not caught")
    ref, seed = G.read_metrics(f"{ref_dir}/metrics.jsonl", steps), G.read_metrics(f"{seed_dir}/metrics.jsonl", steps)
    got = G.read_metrics(f"{ep2_dir}/metrics.jsonl", steps)
    k = top_k(ref_dir)
    if loss_problems(ref, got) or bias_problems(ref, got) or load_problems(ref, got, k, k):
        problems.append("the dp2 ep2 run does not pass the comparisons the controls start from")
    caught("seed 43's losses", loss_problems(ref, seed))
    caught("seed 43's router biases", bias_problems(ref, seed))
    caught("seed 43's expert loads", load_problems(ref, seed, k, k))
    # one bias off by one update at step 6: named; off by 5e-7: passes
    bad = copy.deepcopy(got)
    bad[5]["router_bias"][1][3] += 1e-3
    p = bias_problems(ref, bad)
    if len(p) != 1 or "step 6 MoE block 1: router_bias of expert 3" not in p[0]:
        problems.append(f"a router bias off by 1e-3 at step 6 is not named alone: {p}")
    bad = copy.deepcopy(got)
    bad[5]["router_bias"][1][3] += 5e-7
    if bias_problems(ref, bad):
        problems.append(f"a router bias off by 5e-7 does not pass: {bias_problems(ref, bad)}")
    # a token moved from one expert to another (sums kept) at step 4; one token too many in both runs
    bad = copy.deepcopy(got)
    l = bad[3]["expert_loads"][0]
    i = l.index(max(l))
    l[i] -= 1
    l[(i + 1) % len(l)] += 1
    p = load_problems(ref, bad, k, k)
    if len(p) != 1 or not p[0].startswith("step 4:"):
        problems.append(f"a token moved between experts at step 4 is not named alone: {p}")
    bad_ref = copy.deepcopy(ref)
    bad = copy.deepcopy(got)
    bad_ref[2]["expert_loads"][1][0] += 1
    bad[2]["expert_loads"][1][0] += 1
    caught("loads one token over the step's tokens x top_k", load_problems(bad_ref, bad, k, k))
    # balanced routing offered as the uneven case
    caught("balanced routing as the uneven case", uneven_problems(ref))
    # gradients: seed 43; an expert element off by twice its tolerance on its owner; two experts swapped
    rg, refs = G.reference(ref_prefix)
    other, _ = G.reference(seed_prefix)
    values, *_ = G.check_grads(rg, refs, [other], 1, 0)
    caught("seed 43's gradients", values)
    dumps = [G.load_dump(ep2_prefix, r) for r in range(2)]
    atol_frac = G.atol_frac_for(1, 2)
    check = lambda: G.check_grads(rg, refs, dumps, 1, 0, atol_frac)[:3]
    if any(check()):
        problems.append(f"the dp2 ep2 dumps do not pass: {check()}")
    d = dumps[1]
    t = next(t for t in d["tensors"] if t[0] == "layers.2.mlp.experts.6.down_proj.weight")
    wi = t[6] * t[7] // 2
    a = rg["g"][refs[t[0]][0] + wi]
    saved = d["g"][t[1] + wi]
    d["g"][t[1] + wi] += 2 * (G.GRAD_RTOL * abs(a) + atol_frac * refs[t[0]][3])
    values, cover, _ = check()
    if len(values) != 1 or f"rank 1 {G.at(t[0], t[7], wi)} " not in values[0] or cover:
        problems.append(f"an element of {t[0]} off by twice its tolerance on rank 1 is not named alone: {values} {cover}")
    d["g"][t[1] + wi] = saved
    swap = {"layers.1.mlp.experts.4.up_proj.weight": "layers.1.mlp.experts.5.up_proj.weight",
            "layers.1.mlp.experts.5.up_proj.weight": "layers.1.mlp.experts.4.up_proj.weight"}
    saved = d["tensors"]
    d["tensors"] = [(swap.get(t[0], t[0]),) + t[1:] for t in saved]
    values, cover, _ = check()
    caught("experts 4 and 5 of layers.1 swapped on rank 1", [v for v in values if "rank 1 layers.1.mlp.experts." in v])
    d["tensors"] = [t for t in saved if t[0] != "layers.2.mlp.experts.7.gate_proj.weight"]
    values, cover, _ = check()
    caught("layers.2.mlp.experts.7.gate_proj missing from rank 1 (coverage)",
           [c for c in cover if "layers.2.mlp.experts.7.gate_proj.weight " in c])
    d["tensors"] = saved
    # ownership: the dp2 ep2 and dp4 ep2 maps pass; an expert tensor dropped; an expert copied to the other rank
    # of its group; an expert moved from rank 3 (group 1) to rank 0 (group 0, where rank 1 holds it): every
    # tensor still held twice over the four ranks
    ref_names = list(refs)
    ep2 = names_of(ep2_prefix, 2)
    dp4 = names_of(dp4_prefix, 4)
    for maps, dp in ((ep2, 2), (dp4, 4)):
        if owner_problems(maps, dp, 1, 1, 2, ref_names)[0]:
            problems.append(f"the dp{dp} ep2 maps do not pass: {owner_problems(maps, dp, 1, 1, 2, ref_names)[0]}")
    bad = copy.deepcopy(ep2)
    bad[1].remove("layers.2.mlp.experts.5.up_proj.weight")
    caught("layers.2.mlp.experts.5.up_proj dropped from rank 1", owner_problems(bad, 2, 1, 1, 2, ref_names)[0])
    bad = copy.deepcopy(ep2)
    bad[1] += [n for n in bad[0] if n.startswith("layers.1.mlp.experts.0.")]
    caught("layers.1 expert 0 on both ranks of the ep group", owner_problems(bad, 2, 1, 1, 2, ref_names)[0])
    bad = copy.deepcopy(dp4)
    moved = [n for n in bad[3] if n.startswith("layers.1.mlp.experts.5.")]
    if len(moved) != 3:
        problems.append(f"rank 3 of dp4 ep2 does not hold layers.1 expert 5: {bad[3]}")
    bad[3] = [n for n in bad[3] if n not in moved]
    bad[0] += moved
    counts = {n: sum(n in m for m in bad) for n in ref_names if EXPERT.match(n)}
    if set(counts.values()) != {2}:
        problems.append(f"the moved expert changed the per-model counts: {counts}")
    caught("layers.1 expert 5 moved from ep group 1 to group 0 (each tensor still held twice)",
           owner_problems(bad, 4, 1, 1, 2, ref_names)[0])
    # ZeRO-1 shares of dp4 ep2: the dense part over the 4 ranks, the experts over ranks {0, 2} and {1, 3}; the
    # real ones pass; a dense share one float short, an expert share reaching into its peer's, and a rank that
    # keeps all its experts while its peer keeps half must be caught
    zd = [G.load_dump(zero_prefix, r) for r in range(4)]
    if G.zero_problems(zd) or any(len(d["spans"]) != 2 for d in zd):
        problems.append(f"the dp4 ep2 ZeRO-1 shares do not pass as two spans each: {[d['spans'] for d in zd]} "
                        f"{G.zero_problems(zd)}")
    else:
        for what, r, k, end, delta in (("a dense share one float short", 1, 0, 1, -1),
                                       ("an expert share reaching into its peer's", 0, 1, 1, 1),
                                       ("an expert share widened to the whole part", 3, 1, 0, None)):
            bad = copy.deepcopy(zd)
            lo, hi = bad[r]["spans"][k]
            if delta is None:
                lo = min(d["spans"][1][0] for d in zd)
            else:
                hi += delta
            bad[r]["spans"][k] = (lo, hi)
            caught(f"{what} (rank {r}: {zd[r]['spans'][k]} -> {(lo, hi)})", G.zero_problems(bad))
    G.verdict(name, problems)

mode, a = sys.argv[1], sys.argv[2:]
if mode == "layout":
    layout(a[0], a[1], a[2], a[3], a[4], *map(int, a[5:11]))
elif mode == "uneven":
    uneven(a[0], a[1], int(a[2]))
elif mode == "control":
    control(a[0], a[1], a[2], a[3], int(a[4]), a[5], a[6], a[7], a[8], a[9])
EOF
compare() {
    local out
    out=$(python3 "$tmp/moecmp.py" "$@" 2>&1)
    if ! grep -qE '^(ok|FAIL) ' <<<"$out"; then out="FAIL $2: the comparison gave no verdict: $out"; fi
    echo "$out"
    failures=$((failures + $(grep -c '^FAIL' <<<"$out")))
}

# ---------------------------------------------------------------------------------------------------
# parity

t0=$SECONDS
# single RUN_DIR ARGS...: the single-process run, gradients dumped to RUN_DIR-g
single() {
    local dir=$1
    shift
    launch 1 "${BASE[@]}" "$@" --train.run_dir="$dir" --log.dump_grads="$dir-g"
    [ "$rc" -eq 0 ] && [ -s "$dir/metrics.jsonl" ] && [ -s "$dir-g.rank0.bin" ]
}
ref="$tmp/ref"
if ! single "$ref"; then
    fail moe/single_process "$(show)"
    echo "# the single-process run failed: no parity checks"
else
    ok moe/single_process

    # layouts: "dp pp ep tp zero"
    for layout in "2 1 2 1 0" "4 1 4 1 0" "4 1 2 1 0" "2 2 2 1 0" "2 1 1 1 0" "1 1 1 2 0" "2 1 1 2 0" \
        "1 1 2 2 0" "2 1 2 2 0" "2 1 4 2 0" "2 1 2 1 1" "4 1 2 1 1" "2 1 2 2 1"; do
        read -r dp pp ep tp zero <<<"$layout"
        np=$((dp * pp * tp))
        name="dp${dp}"
        [ "$pp" -gt 1 ] && name+="_pp${pp}"
        name+="_ep${ep}"
        [ "$tp" -gt 1 ] && name+="_tp${tp}"
        [ "$zero" -gt 0 ] && name+="_zero1"
        dir="$tmp/$name"
        t1=$SECONDS
        launch "$np" "${BASE[@]}" --parallel.dp="$dp" --parallel.pp="$pp" --parallel.ep="$ep" --parallel.tp="$tp" \
            --parallel.zero="$zero" --train.run_dir="$dir" --log.dump_grads="$dir-g"
        label="moe/$name"
        launched "$label" "$np" "$dir" || continue
        echo "# $label: $np ranks, $((SECONDS - t1)) s"
        compare layout "$label" "$ref" "$dir" "$ref-g" "$dir-g" "$STEPS" "$dp" "$tp" "$pp" "$ep" "$zero"
        # the controls read the dp2 ep2 dumps and the dp4 ep2 maps
        [ "$name" != dp2_ep2 ] && [ "$name" != dp4_ep2_zero1 ] && rm -f "$dir-g".rank*.bin
    done
    echo "# parity: $((SECONDS - t0)) s"

    # -----------------------------------------------------------------------------------------------
    # uneven routing: every token to one expert

    t0=$SECONDS
    uref="$tmp/uneven-ref"
    udir="$tmp/uneven-dp2_ep2"
    if ! single "$uref" "${UNEVEN[@]}"; then
        fail moe/uneven/single_process "$(show)"
    else
        ok moe/uneven/single_process
        compare uneven moe/uneven/single_process_routing "$uref" "$STEPS"
        launch 2 "${BASE[@]}" "${UNEVEN[@]}" --parallel.dp=2 --parallel.ep=2 --train.run_dir="$udir" \
            --log.dump_grads="$udir-g"
        if timed_out; then
            fail moe/uneven/dp2_ep2/run "no result after $LIMIT s (hang?): $(show)"
        elif [ "$rc" -ne 0 ] || [ ! -s "$udir/metrics.jsonl" ]; then
            fail moe/uneven/dp2_ep2/run "$(show)"
        else
            ok moe/uneven/dp2_ep2/run
            compare uneven moe/uneven/dp2_ep2/routing "$udir" "$STEPS"
            compare layout moe/uneven/dp2_ep2 "$uref" "$udir" "$uref-g" "$udir-g" "$STEPS" 2 1 1 2
        fi
    fi
    echo "# uneven: $((SECONDS - t0)) s"

    # -----------------------------------------------------------------------------------------------
    # controls

    t0=$SECONDS
    if ! single "$tmp/seed43" --train.seed=43; then
        fail moe/control "--train.seed=43: $(show)"
    elif [ ! -s "$tmp/dp2_ep2-g.rank1.bin" ] || [ ! -s "$tmp/dp4_ep2-g.rank3.map" ] ||
        [ ! -s "$tmp/dp4_ep2_zero1-g.rank3.bin" ]; then
        fail moe/control "the dp2 ep2 dumps, the dp4 ep2 maps or the dp4 ep2 ZeRO-1 dumps are missing (their runs failed above)"
    else
        compare control moe/control "$ref" "$tmp/seed43" "$tmp/dp2_ep2" "$STEPS" "$ref-g" "$tmp/seed43-g" \
            "$tmp/dp2_ep2-g" "$tmp/dp4_ep2-g" "$tmp/dp4_ep2_zero1-g"
    fi
    echo "# controls: $((SECONDS - t0)) s"
fi

# ---------------------------------------------------------------------------------------------------
# bad configs: exit 2 on every rank

t0=$SECONDS
# expect_error NAME NP KEY MUST ARGS...: expect_launch_error (tests/cli/lib.sh) as moe/error/NAME on
# `loom train -c debug-moe.ini ARGS`
expect_error() {
    local name="moe/error/$1" np=$2 key=$3 must=$4
    shift 4
    expect_launch_error "$name" "$np" "$key" "$must" -c "$MOE" "$@"
}

expect_error ep3_experts8 3 parallel.ep '3 does not divide moe\.experts = 8' --parallel.dp=3 --parallel.ep=3 \
    --train.global_batch=6 --train.micro_batch=1
expect_error ep4_dp2 2 parallel.ep '4 does not divide dp x tp = 2' --parallel.dp=2 --parallel.ep=4
expect_error top_k9_experts8 2 moe.top_k '9 is outside 1\.\.moe\.experts = 8' --parallel.dp=2 --parallel.ep=2 \
    --moe.top_k=9
expect_error ep8_dp2_tp2 4 parallel.ep '8 does not divide dp x tp = 4' --parallel.dp=2 --parallel.tp=2 \
    --parallel.ep=8
echo "# errors: $((SECONDS - t0)) s"

# ---------------------------------------------------------------------------------------------------
# scripts/plot_experts

t0=$SECONDS
PNG_MAGIC=89504e470d0a1a0a
png() { [ -s "$1" ] && [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = "$PNG_MAGIC" ]; }
if [ ! -s "$ref/metrics.jsonl" ]; then
    fail moe/plot "no MoE run to plot (the single-process run failed)"
else
    scripts/plot_experts "$ref" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ "$rc" -eq 3 ]; then
        echo "skip moe/plot: matplotlib cannot be had: $(tail -c 300 "$tmp/err")"
    else
        if [ "$rc" -eq 0 ] && png "$ref/experts.png"; then
            ok moe/plot/default_out
        else
            fail moe/plot/default_out "\`scripts/plot_experts $ref\`: $(show); $ref holds $(ls "$ref" | tr '\n' ' ')"
        fi
        scripts/plot_experts "$tmp/uneven-dp2_ep2" --out "$tmp/plots/uneven.png" >"$tmp/out" 2>"$tmp/err"
        rc=$?
        if [ "$rc" -eq 0 ] && png "$tmp/plots/uneven.png"; then
            ok moe/plot/out
        else
            fail moe/plot/out "\`scripts/plot_experts $tmp/uneven-dp2_ep2 --out $tmp/plots/uneven.png\`: $(show)"
        fi
    fi
fi
# a dense run: exit 2, the problem named, nothing written
dense="$tmp/dense"
launch 1 train -c configs/runs/debug.ini --train.steps=2 --train.run_dir="$dense"
if [ "$rc" -ne 0 ] || [ ! -s "$dense/metrics.jsonl" ]; then
    fail moe/plot/dense "the dense run: $(show)"
else
    scripts/plot_experts "$dense" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ "$rc" -eq 2 ] && grep -q 'no MoE metrics' "$tmp/err" && [ ! -e "$dense/experts.png" ]; then
        ok moe/plot/dense
    else
        fail moe/plot/dense "want exit status 2, 'no MoE metrics' on stderr and no $dense/experts.png: $(show)"
    fi
fi
echo "# plot: $((SECONDS - t0)) s"

[ "$failures" -eq 0 ]
