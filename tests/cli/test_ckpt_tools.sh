#!/usr/bin/env bash
# tests/cli/test_ckpt_tools.sh — `loom ckpt info | verify | export` (train/ckpt_cli.c) on checkpoints written by
# training: the tiny dense MLA model (configs/runs/debug.ini), the tiny MHA + MoE model (configs/runs/debug-moe.ini,
# dots1-shaped, with --model.vocab_size=5000 so that the embedding and head outgrow one 1 MiB chunk) and a dense MHA
# variant (no Hugging Face architecture), 3 steps each, a checkpoint at step 3.
#
# info: exit 0, the meta data, the model kind, every tensor with its shape (layers.0.self_attn.q_a_proj.weight
# [64, 128], an expert's down_proj [128, 96], the router biases [8]) and the parameter total of `loom info -c`.
# verify: the line "ok: PATH: N tensors, M parameters, all finite" with M from `loom info -c`; and it must catch
# (exit 2, the tensor named) a NaN in a weight, an inf in a second moment, a missing weight, a wrong shape, a
# missing moment and a missing router bias (copies edited with h5py).
#
# h5dump: reads a checkpoint's attributes and /model/norm.weight; reads the zstd + bf16 export with
# HDF5_PLUGIN_PATH=build/plugins (values printed, filter 32015 listed) and fails on it without the plugin (so the
# filter is really used).
#
# h5py (`pip install h5py hdf5plugin` when missing, else skip): the HDF5 exports (bf16 and fp32) hold every /model
# and /buffers tensor with the root attributes, each chunked (whole, or row blocks of at most 1 MiB) and filtered
# by 32015; fp32 values equal the checkpoint's exactly; bf16 ones read through dset.astype('float32') equal the
# checkpoint's rounded to nearest even in numpy (the router biases stay fp32). Read once with hdf5plugin's zstd
# filter (the standard one; no plugin path) and once with HDF5_PLUGIN_PATH=build/plugins. The other direction: a
# checkpoint whose /model tensors hdf5plugin recompressed with its zstd reads in loom (verify, and an fp32 export
# equal to the original).
#
# safetensors: parsed with struct + json; every tensor under its Hugging Face name ("model." + the loom name, lm_head
# as is, the router biases from /buffers), dtype, shape, contiguous offsets, header padded to 8; values equal the
# checkpoint's (bf16 bits = numpy RNE, fp32 exact); config.json with the youtu (dense MLA) or dots1 (MHA + MoE)
# keys and values from the run's config, model_type "loom" and a note on stderr for dense MHA. When torch and
# transformers import, the exports load with AutoModelForCausalLM and give finite logits (else skip).
#
# String attributes written as variable-length UTF-8 (as h5py writes str) read like the fixed-length ones.
#
# Bad input exits 2 with one `loom: error:` line and no HDF5 error stack: a missing file, a text file, a truncated
# checkpoint, a wrong format attribute, a newer version, an export over an existing output without --force (the
# output untouched), an unknown --dtype.
#
# Run from the repository root with ./loom built: bash tests/cli/test_ckpt_tools.sh
set -u
source "$(dirname "$0")/lib.sh"
require_loom ckpt_tools

PLUGINS=$PWD/build/plugins
mkdir -p "$tmp/no-plugins"
show() { echo "exit status $rc; stdout: $(tail -c 600 "$tmp/out"); stderr: $(tail -c 800 "$tmp/err")"; }

# train NAME ARGS...: 3 steps with a checkpoint at step 3; the checkpoint's path in $ckpt
train() {
    local name=$1
    shift
    run train "$@" --train.steps=3 --checkpoint.every=3 --train.run_dir="$tmp/$name"
    ckpt="$tmp/$name/checkpoints/step_00000003.h5"
    if [ "$rc" -ne 0 ] || [ ! -s "$ckpt" ]; then
        fail "ckpt_tools/train/$name" "\`loom train $* --checkpoint.every=3\` wrote no $ckpt: $(show)"
        return 1
    fi
    ok "ckpt_tools/train/$name"
}

# total_params ARGS...: the parameter total `loom info ARGS` prints
total_params() { "$LOOM" info "$@" | awk '/total parameters/ {print $3}'; }

# expect_error NAME MUST ARGS...: `loom ARGS` exits 2 with a first line `loom: error: ...` matching MUST (an extended
# regex), no HDF5 error stack and no crash
expect_error() {
    local name=$1 must=$2
    shift 2
    run "$@"
    local line
    line=$(grep -m1 '^loom: error: ' "$tmp/err")
    if [ "$rc" -ne 2 ]; then
        fail "$name" "\`loom $*\`: want exit status 2: $(show)"
    elif ! grep -qE -- "$must" <<<"$line"; then
        fail "$name" "\`loom $*\`: want a line 'loom: error: ...' matching /$must/: $(show)"
    elif grep -qE 'HDF5-DIAG|^\[rank|[Ss]egmentation|Abort' "$tmp/err"; then
        fail "$name" "\`loom $*\`: an HDF5 error stack or a crash: $(show)"
    else
        ok "$name"
    fi
}

t0=$SECONDS
train dense -c configs/runs/debug.ini && DENSE=$ckpt || DENSE=
train moe -c configs/runs/debug-moe.ini --model.vocab_size=5000 && MOE=$ckpt || MOE=
train mha -c configs/runs/debug.ini --model.attention=mha --model.rope_style=half && MHA=$ckpt || MHA=
DENSE_PARAMS=$(total_params -c configs/runs/debug.ini)
MOE_PARAMS=$(total_params -c configs/runs/debug-moe.ini --model.vocab_size=5000)
echo "# training: $((SECONDS - t0)) s"

# ---------------------------------------------------------------------------------------------------
# info and verify

# info_has NAME REGEX...: every extended regex matches a line of the last stdout
info_has() {
    local name=$1 re
    shift
    if [ "$rc" -ne 0 ]; then
        fail "$name" "$(show)"
        return
    fi
    for re in "$@"; do
        if ! grep -qE -- "$re" "$tmp/out"; then
            fail "$name" "no line matches /$re/ in: $(head -c 1500 "$tmp/out")"
            return
        fi
    done
    ok "$name"
}

if [ -n "$DENSE" ]; then
    run ckpt info "$DENSE"
    info_has ckpt_tools/info/dense '^step +3$' '^format +loom-checkpoint version 1$' \
        '^layout +dp=1 tp=1 pp=1 ep=1 zero=0 world=1$' '^model +mla .*2 layers, width 128' \
        '^  /model/layers\.0\.self_attn\.q_a_proj\.weight +\[64, 128\] +fp32 ' \
        '^  /optim/exp_avg_sq/norm\.weight +\[128\] +fp32 ' "^  parameters +$DENSE_PARAMS "
    run ckpt verify "$DENSE"
    info_has ckpt_tools/verify/dense "^ok: $DENSE: 26 tensors, $DENSE_PARAMS parameters, all finite$"
fi
if [ -n "$MOE" ]; then
    run ckpt info "$MOE"
    info_has ckpt_tools/info/moe '^model +mha .*MoE: 8 experts of width 96, top-2, 1 shared, first 1 dense' \
        '^  /model/layers\.2\.mlp\.experts\.7\.down_proj\.weight +\[128, 96\] +fp32 ' \
        '^  /model/lm_head\.weight +\[5000, 128\] +fp32 ' \
        '^  /buffers/layers\.1\.mlp\.gate\.e_score_correction_bias +\[8\] +fp32 ' "^  parameters +$MOE_PARAMS "
    run ckpt verify "$MOE"
    info_has ckpt_tools/verify/moe "^ok: $MOE: 86 tensors, $MOE_PARAMS parameters, all finite$"
fi

# ---------------------------------------------------------------------------------------------------
# h5dump, and the compressed HDF5 export

if [ -n "$DENSE" ]; then
    h5dump -A "$DENSE" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ "$rc" -eq 0 ] && grep -q '"loom-checkpoint"' "$tmp/out" && grep -q 'ATTRIBUTE "config"' "$tmp/out" &&
        grep -q 'ATTRIBUTE "layout"' "$tmp/out"; then
        ok ckpt_tools/h5dump/attributes
    else
        fail ckpt_tools/h5dump/attributes "\`h5dump -A $DENSE\`: $(show)"
    fi
    h5dump -d /model/norm.weight "$DENSE" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ "$rc" -eq 0 ] && grep -qE '^ +\(0\): [-0-9.e]+, ' "$tmp/out"; then
        ok ckpt_tools/h5dump/dataset
    else
        fail ckpt_tools/h5dump/dataset "\`h5dump -d /model/norm.weight $DENSE\`: $(show)"
    fi
fi

BF16_H5=$tmp/release-bf16.h5
FP32_H5=$tmp/release-fp32.h5
if [ -n "$MOE" ]; then
    run ckpt export "$MOE" --format hdf5 --out "$BF16_H5"
    bf16_rc=$rc
    run ckpt export "$MOE" --format=hdf5 --out="$FP32_H5" --dtype=fp32
    if [ "$bf16_rc" -eq 0 ] && [ "$rc" -eq 0 ] && [ -s "$BF16_H5" ] && [ -s "$FP32_H5" ]; then
        ok ckpt_tools/export_hdf5/run
    else
        fail ckpt_tools/export_hdf5/run "bf16 export exit $bf16_rc; fp32: $(show)"
    fi
fi
if [ -s "$BF16_H5" ]; then
    run ckpt verify "$BF16_H5"
    info_has ckpt_tools/export_hdf5/verify "^ok: $BF16_H5: 86 tensors, $MOE_PARAMS parameters, all finite$"
    HDF5_PLUGIN_PATH=$PLUGINS h5dump -d /model/norm.weight "$BF16_H5" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ "$rc" -eq 0 ] && grep -qE '^ +\(0\): [-0-9.e]+, ' "$tmp/out"; then
        ok ckpt_tools/h5dump/compressed_with_plugin
    else
        fail ckpt_tools/h5dump/compressed_with_plugin "\`HDF5_PLUGIN_PATH=$PLUGINS h5dump -d /model/norm.weight\`: $(show)"
    fi
    HDF5_PLUGIN_PATH=$PLUGINS h5dump -p -H -d /model/embed_tokens.weight "$BF16_H5" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ "$rc" -eq 0 ] && grep -q 'FILTER_ID 32015' "$tmp/out" && grep -qE 'CHUNKED \( 4096, 128 \)' "$tmp/out"; then
        ok ckpt_tools/h5dump/filter_and_chunks
    else
        fail ckpt_tools/h5dump/filter_and_chunks "want filter 32015 and chunks of 4096 x 128 bf16 (1 MiB): $(show)"
    fi
    HDF5_PLUGIN_PATH=$tmp/no-plugins h5dump -d /model/norm.weight "$BF16_H5" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ "$rc" -ne 0 ] && grep -qiE 'unable to print|error' "$tmp/out" "$tmp/err"; then
        ok ckpt_tools/h5dump/compressed_without_plugin_fails
    else
        fail ckpt_tools/h5dump/compressed_without_plugin_fails "h5dump read the compressed dataset with no plugin: $(show)"
    fi
fi

# ---------------------------------------------------------------------------------------------------
# python checks (numpy + h5py; the safetensors parser needs only struct + json)

cat >"$tmp/ckcmp.py" <<'EOF'
import configparser, json, os, shutil, struct, sys
import numpy as np

MIB = 1 << 20
ZSTD = 32015
problems = []

def verdict(name):
    print(f"ok {name}" if not problems else f"FAIL {name}: " + "; ".join(problems[:5]))

def bf16_rne(a):
    """float32 -> bf16 bits, round to nearest even (finite inputs)"""
    u = np.ascontiguousarray(a, dtype="<f4").view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)

def bf16_value(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)

def tensors(f):
    """{"/model/NAME": dataset} for /model and /buffers"""
    out = {}
    for g in ("model", "buffers"):
        if g in f:
            for k, d in f[g].items():
                out[f"/{g}/{k}"] = d
    return out

def first_diff(a, b):
    i = np.flatnonzero(a.ravel() != b.ravel())
    return f"element {i[0]} of {i.size} differing: {a.ravel()[i[0]]!r} vs {b.ravel()[i[0]]!r}" if i.size else None

def ini(f):
    c = configparser.ConfigParser(interpolation=None)
    cfg = f.attrs["config"]
    c.read_string(cfg.decode() if isinstance(cfg, bytes) else cfg)
    return c

def h5(name, ckpt, bf16_path, fp32_path):
    """the HDF5 exports against the checkpoint"""
    import h5py
    with h5py.File(ckpt, "r") as c, h5py.File(bf16_path, "r") as b, h5py.File(fp32_path, "r") as s:
        want = tensors(c)
        for label, f, bf16 in (("bf16", b, True), ("fp32", s, False)):
            got = tensors(f)
            if set(got) != set(want):
                problems.append(f"{label}: tensors {sorted(set(got) ^ set(want))[:4]} differ")
                continue
            for k in c.attrs:
                if not np.array_equal(np.asarray(c.attrs[k]), np.asarray(f.attrs[k])):
                    problems.append(f"{label}: root attribute {k} differs")
            if [k for k in f if k not in ("model", "buffers")]:
                problems.append(f"{label}: holds more than /model and /buffers: {list(f)}")
            row_blocks = 0
            for k, d in got.items():
                ref = want[k][...]
                bias = k.startswith("/buffers/")
                size = d.id.get_type().get_size()
                esize = 2 if bf16 and not bias else 4
                if size != esize:
                    problems.append(f"{label}: {k} stored in {size} bytes, want {esize}")
                if str(ZSTD) not in d._filters:
                    problems.append(f"{label}: {k} has filters {d._filters}, not {ZSTD}")
                nbytes = ref.size * esize
                rows = max(1, MIB // (int(np.prod(ref.shape[1:])) * esize)) if nbytes > MIB else ref.shape[0]
                if d.chunks != (min(rows, ref.shape[0]),) + ref.shape[1:]:
                    problems.append(f"{label}: {k} chunks {d.chunks} for shape {ref.shape} ({nbytes} bytes)")
                row_blocks += d.chunks != ref.shape
                v = d.astype("float32")[...]
                expect = bf16_value(bf16_rne(ref)) if esize == 2 else ref
                if v.shape != ref.shape or v.dtype != np.float32:
                    problems.append(f"{label}: {k} reads as {v.dtype}{v.shape}, want float32{ref.shape}")
                elif (why := first_diff(v, expect)):
                    problems.append(f"{label}: {k}: {why}")
            if not row_blocks:
                problems.append(f"{label}: no tensor was split into row blocks (vocab 5000 should be)")
    verdict(name)

def same(name, a_path, b_path):
    """/model and /buffers of b equal a's exactly"""
    import h5py
    with h5py.File(a_path, "r") as a, h5py.File(b_path, "r") as b:
        ta, tb = tensors(a), tensors(b)
        if set(ta) != set(tb):
            problems.append(f"tensors {sorted(set(ta) ^ set(tb))[:4]} differ")
        for k in sorted(set(ta) & set(tb)):
            if (why := first_diff(ta[k][...], tb[k].astype("float32")[...])):
                problems.append(f"{k}: {why}")
    verdict(name)

def hf_name(k):
    g, n = k[1:].split("/", 1)
    return n if n == "lm_head.weight" else "model." + n

YOUTU = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "q_lora_rank",
         "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "head_dim", "intermediate_size",
         "vocab_size", "rms_norm_eps", "rope_theta", "rope_interleave", "tie_word_embeddings", "attention_bias",
         "mlp_bias", "torch_dtype"]
DOTS1 = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
         "intermediate_size", "moe_intermediate_size", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
         "first_k_dense_replace", "norm_topk_prob", "routed_scaling_factor", "scoring_func", "n_group", "topk_group",
         "rope_theta", "rms_norm_eps", "tie_word_embeddings", "vocab_size", "max_position_embeddings", "torch_dtype"]

def config_expect(c, arch, dtype):
    m, e, t = c["model"], c["moe"], c["train"]
    i = lambda s, k: int(s[k])
    b = lambda s, k: s[k].strip().lower() == "true"
    heads, hidden = i(m, "num_heads"), i(m, "hidden_size")
    common = dict(hidden_size=hidden, num_hidden_layers=i(m, "num_layers"), num_attention_heads=heads,
                  intermediate_size=i(m, "intermediate_size"), vocab_size=i(m, "vocab_size"),
                  rms_norm_eps=float(m["rms_norm_eps"]), rope_theta=float(m["rope_theta"]),
                  tie_word_embeddings=b(m, "tie_word_embeddings"),
                  torch_dtype="bfloat16" if dtype == "bf16" else "float32")
    if arch == "youtu":
        return dict(common, architectures=["YoutuForCausalLM"], model_type="youtu", num_key_value_heads=heads,
                    q_lora_rank=i(m, "q_lora_rank") or None, kv_lora_rank=i(m, "kv_lora_rank"),
                    qk_nope_head_dim=i(m, "qk_nope_head_dim"), qk_rope_head_dim=i(m, "qk_rope_head_dim"),
                    v_head_dim=i(m, "v_head_dim") or i(m, "qk_nope_head_dim"), head_dim=i(m, "qk_rope_head_dim"),
                    rope_interleave=m["rope_style"] == "interleaved", attention_bias=False, mlp_bias=False)
    return dict(common, architectures=["Dots1ForCausalLM"], model_type="dots1",
                num_key_value_heads=i(m, "num_kv_heads") or heads, head_dim=i(m, "head_dim") or hidden // heads,
                moe_intermediate_size=i(e, "intermediate"), n_routed_experts=i(e, "experts"),
                n_shared_experts=i(e, "shared"), num_experts_per_tok=i(e, "top_k"),
                first_k_dense_replace=i(e, "first_dense"), norm_topk_prob=b(e, "norm_topk"),
                routed_scaling_factor=float(e["scaling"]), scoring_func="noaux_tc", n_group=i(e, "groups"),
                topk_group=i(e, "topk_groups"), max_position_embeddings=i(t, "seq_len"))

def st(name, ckpt, out_dir, dtype, arch):
    """DIR/model.safetensors and DIR/config.json against the checkpoint"""
    import h5py
    path = os.path.join(out_dir, "model.safetensors")
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = raw[8:8 + n]
    data = raw[8 + n:]
    if n % 8:
        problems.append(f"header length {n} is not a multiple of 8")
    if head.rstrip(b" ") != head.rstrip() or not head.rstrip().endswith(b"}"):
        problems.append("the header is not JSON padded with spaces")
    header = json.loads(head)
    if header.pop("__metadata__", None) != {"format": "pt"}:
        problems.append("__metadata__ is not {\"format\": \"pt\"}")
    spans = sorted(tuple(v["data_offsets"]) for v in header.values())
    if spans and (spans[0][0] != 0 or spans[-1][1] != len(data) or any(a[1] != b[0] for a, b in zip(spans, spans[1:]))):
        problems.append(f"data offsets do not tile the {len(data)} data bytes")
    with h5py.File(ckpt, "r") as f:
        want = {hf_name(k): (k, d[...]) for k, d in tensors(f).items()}
        c = ini(f)
    if set(header) != set(want):
        problems.append(f"names differ: {sorted(set(header) ^ set(want))[:6]}")
    for hname in sorted(set(header) & set(want)):
        k, ref = want[hname]
        h = header[hname]
        bf16 = dtype == "bf16" and not k.startswith("/buffers/")
        if h["dtype"] != ("BF16" if bf16 else "F32") or h["shape"] != list(ref.shape):
            problems.append(f"{hname}: {h['dtype']}{h['shape']}, want {'BF16' if bf16 else 'F32'}{list(ref.shape)}")
            continue
        a, b = h["data_offsets"]
        if b - a != ref.size * (2 if bf16 else 4):
            problems.append(f"{hname}: {b - a} bytes for {ref.size} values")
            continue
        got = np.frombuffer(data[a:b], dtype="<u2" if bf16 else "<f4").reshape(ref.shape)
        if (why := first_diff(got, bf16_rne(ref) if bf16 else ref)):
            problems.append(f"{hname}: {why}")
    cj = json.load(open(os.path.join(out_dir, "config.json")))
    if arch == "loom":
        if cj.get("model_type") != "loom" or cj.get("model", {}).get("attention") != c["model"]["attention"]:
            problems.append(f"config.json: want model_type loom with the raw [model] keys: {cj}")
    else:
        expect = config_expect(c, arch, dtype)
        keys = YOUTU if arch == "youtu" else DOTS1
        for k in keys + ["architectures", "model_type"]:
            if k not in cj:
                problems.append(f"config.json: no {k}")
            elif k == "max_position_embeddings":
                if cj[k] < expect[k]:
                    problems.append(f"config.json: {k} = {cj[k]} < train.seq_len {expect[k]}")
            elif cj[k] != expect[k]:
                problems.append(f"config.json: {k} = {cj[k]!r}, want {expect[k]!r}")
    verdict(name)

def hf_load(name, out_dir):
    """loads with transformers; finite logits; the embedding equals the safetensors one"""
    try:
        import torch, transformers
    except ImportError:
        print(f"skip {name}: torch/transformers not installed")
        return
    try:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(out_dir, torch_dtype=torch.float32,
                                                                        output_loading_info=True)
    except (ValueError, KeyError) as e:
        model_type = json.load(open(os.path.join(out_dir, "config.json")))["model_type"]
        if model_type in str(e) or "does not recognize" in str(e):
            print(f"skip {name}: transformers {transformers.__version__} has no {model_type}: {str(e)[:160]}")
            return
        raise
    missing = [k for k in info.get("missing_keys", []) if "rotary" not in k and "inv_freq" not in k]
    if missing or info.get("unexpected_keys") or info.get("mismatched_keys"):
        problems.append(f"loading: missing {missing[:4]} unexpected {info.get('unexpected_keys', [])[:4]} "
                        f"mismatched {info.get('mismatched_keys', [])[:4]}")
    vocab = model.config.vocab_size
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4, 5]])).logits
    if tuple(logits.shape) != (1, 5, vocab) or not torch.isfinite(logits).all():
        problems.append(f"logits {tuple(logits.shape)} finite {bool(torch.isfinite(logits).all())}")
    verdict(name)

def edit(src, dst, kind):
    """a copy of the checkpoint with one thing wrong (or recompressed by hdf5plugin)"""
    import h5py
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        if kind == "format":
            f.attrs["format"] = np.bytes_(b"other-checkpoint")
        elif kind == "version":
            f.attrs["version"] = np.int32(2)
        elif kind == "nan":
            d = f["model/layers.1.mlp.experts.3.up_proj.weight"]
            d[5, 7] = np.nan
        elif kind == "moment_inf":
            f["optim/exp_avg_sq/layers.0.self_attn.o_proj.weight"][3, 2] = np.inf
        elif kind == "missing":
            del f["model/norm.weight"]
        elif kind == "shape":
            del f["model/norm.weight"]
            f.create_dataset("model/norm.weight", data=np.ones(127, np.float32))
        elif kind == "moment_missing":
            del f["optim/exp_avg/layers.1.self_attn.kv_b_proj.weight"]
        elif kind == "bias_missing":
            del f["buffers/layers.2.mlp.gate.e_score_correction_bias"]
        elif kind == "vlstrings":  # h5py writes str attributes as variable-length UTF-8
            for k in ("format", "config", "layout"):
                v = f.attrs[k]
                f.attrs[k] = v.decode() if isinstance(v, bytes) else v
            if not f.attrs.get_id("config").get_type().is_variable_str():
                raise SystemExit("h5py wrote a fixed-length string")
        elif kind == "hdf5plugin":
            import hdf5plugin
            for k in list(f["model"]):
                a = f["model"][k][...]
                del f["model"][k]
                f["model"].create_dataset(k, data=a, chunks=a.shape, **hdf5plugin.Zstd(clevel=5))
            if str(ZSTD) not in f["model/embed_tokens.weight"]._filters:
                raise SystemExit("hdf5plugin did not apply zstd")

mode, a = sys.argv[1], sys.argv[2:]
if mode == "h5":
    if a[0] == "hdf5plugin":
        import hdf5plugin  # registers the standard zstd filter with h5py's HDF5
    h5(*a[1:])
elif mode == "same":
    same(*a)
elif mode == "st":
    st(*a)
elif mode == "hf":
    hf_load(*a)
elif mode == "edit":
    edit(*a)
EOF
# check ARGS...: the python check; its ok/FAIL/skip lines, a FAIL when it gives none
check() {
    local out
    out=$(python3 "$tmp/ckcmp.py" "$@" 2>&1)
    if ! grep -qE '^(ok|FAIL|skip) ' <<<"$out"; then out="FAIL $2: the check gave no verdict: $(tail -c 1500 <<<"$out")"; fi
    grep -E '^(ok|FAIL|skip) ' <<<"$out"
    failures=$((failures + $(grep -c '^FAIL' <<<"$out")))
}

t0=$SECONDS
have_h5py=1
if ! python3 -c 'import h5py, hdf5plugin, numpy' 2>/dev/null; then
    timeout 300 python3 -m pip install --quiet --disable-pip-version-check h5py hdf5plugin >"$tmp/pip.log" 2>&1
    if ! python3 -c 'import h5py, hdf5plugin, numpy' 2>/dev/null; then
        have_h5py=0
        why="h5py/hdf5plugin cannot be had ($(python3 -c 'import h5py, hdf5plugin, numpy' 2>&1 | tail -1); pip: $(
            grep -m1 -iE '^error' "$tmp/pip.log" || echo "no error line"))"
        for t in h5py/hdf5plugin h5py/plugin_path h5py/hdf5plugin_written safetensors/values verify_catches \
            error/format error/version info/variable_length_strings; do
            echo "skip ckpt_tools/$t: $why"
        done
    fi
fi
echo "# h5py: $((SECONDS - t0)) s"

if [ "$have_h5py" -eq 1 ] && [ -s "$BF16_H5" ] && [ -s "$FP32_H5" ]; then
    HDF5_PLUGIN_PATH=$tmp/no-plugins check h5 hdf5plugin ckpt_tools/h5py/hdf5plugin "$MOE" "$BF16_H5" "$FP32_H5"
    HDF5_PLUGIN_PATH=$PLUGINS check h5 plugin-path ckpt_tools/h5py/plugin_path "$MOE" "$BF16_H5" "$FP32_H5"
    # the other direction: zstd written by hdf5plugin, read by loom
    theirs=$tmp/hdf5plugin-written.h5
    if python3 "$tmp/ckcmp.py" edit "$MOE" "$theirs" hdf5plugin >"$tmp/out" 2>"$tmp/err"; then
        run ckpt verify "$theirs"
        if [ "$rc" -ne 0 ]; then
            fail ckpt_tools/h5py/hdf5plugin_written "\`loom ckpt verify\` of hdf5plugin's zstd: $(show)"
        else
            run ckpt export "$theirs" --format hdf5 --dtype fp32 --out "$tmp/theirs-fp32.h5"
            if [ "$rc" -ne 0 ]; then
                fail ckpt_tools/h5py/hdf5plugin_written "export of hdf5plugin's zstd: $(show)"
            else
                HDF5_PLUGIN_PATH=$PLUGINS check same ckpt_tools/h5py/hdf5plugin_written "$MOE" "$tmp/theirs-fp32.h5"
            fi
        fi
    else
        fail ckpt_tools/h5py/hdf5plugin_written "h5py + hdf5plugin could not recompress: $(tail -c 600 "$tmp/err")"
    fi
fi

# ---------------------------------------------------------------------------------------------------
# safetensors

# export_st NAME CKPT DIR DTYPE ARCH: export, then the python comparison
export_st() {
    local name=$1 ck=$2 dir=$3 dtype=$4 arch=$5
    run ckpt export "$ck" --format safetensors --out "$dir" --dtype "$dtype"
    if [ "$rc" -ne 0 ] || [ ! -s "$dir/model.safetensors" ] || [ ! -s "$dir/config.json" ]; then
        fail "$name" "\`loom ckpt export $ck --format safetensors --out $dir --dtype $dtype\`: $(show)"
        return 1
    fi
    if [ "$arch" = loom ] && ! grep -q 'note: .*model_type "loom"' "$tmp/err"; then
        fail "$name" "no note on stderr about model_type loom: $(show)"
        return 1
    fi
    if [ "$have_h5py" -eq 1 ]; then check st "$name" "$ck" "$dir" "$dtype" "$arch"; else ok "$name/written"; fi
}
[ -n "$DENSE" ] && export_st ckpt_tools/safetensors/dense_bf16 "$DENSE" "$tmp/hf-dense" bf16 youtu
[ -n "$DENSE" ] && export_st ckpt_tools/safetensors/dense_fp32 "$DENSE" "$tmp/hf-dense-fp32" fp32 youtu
[ -n "$MOE" ] && export_st ckpt_tools/safetensors/moe_bf16 "$MOE" "$tmp/hf-moe" bf16 dots1
[ -n "$MOE" ] && export_st ckpt_tools/safetensors/moe_fp32 "$MOE" "$tmp/hf-moe-fp32" fp32 dots1
[ -n "$MHA" ] && export_st ckpt_tools/safetensors/mha_loom "$MHA" "$tmp/hf-mha" bf16 loom

if python3 -c 'import torch, transformers' 2>/dev/null; then
    [ -s "$tmp/hf-dense-fp32/model.safetensors" ] && check hf ckpt_tools/transformers_load/youtu "$tmp/hf-dense-fp32"
    [ -s "$tmp/hf-moe-fp32/model.safetensors" ] && check hf ckpt_tools/transformers_load/dots1 "$tmp/hf-moe-fp32"
else
    echo "skip ckpt_tools/transformers_load: torch/transformers not installed"
fi

# ---------------------------------------------------------------------------------------------------
# bad input

t0=$SECONDS
expect_error ckpt_tools/error/missing_file "$tmp/nope\.h5: cannot open: No such file" ckpt info "$tmp/nope.h5"
echo "not a checkpoint" >"$tmp/text.h5"
expect_error ckpt_tools/error/not_hdf5 "$tmp/text\.h5: not an HDF5 file" ckpt verify "$tmp/text.h5"
expect_error ckpt_tools/error/usage 'unknown ckpt command' ckpt frobnicate "$tmp/text.h5"
if [ -n "$DENSE" ]; then
    head -c $(($(stat -c %s "$DENSE") / 2)) "$DENSE" >"$tmp/truncated.h5"
    expect_error ckpt_tools/error/truncated "$tmp/truncated\.h5: .*(truncated|damaged|not an HDF5)" \
        ckpt verify "$tmp/truncated.h5"
    expect_error ckpt_tools/error/unknown_dtype "--dtype: unknown dtype 'fp8'" \
        ckpt export "$DENSE" --format safetensors --out "$tmp/hf-x" --dtype fp8
    if [ -s "$tmp/hf-dense/model.safetensors" ]; then
        sum=$(md5sum <"$tmp/hf-dense/model.safetensors")
        expect_error ckpt_tools/error/export_exists "$tmp/hf-dense/model\.safetensors: exists" \
            ckpt export "$DENSE" --format safetensors --out "$tmp/hf-dense" --dtype fp32
        [ "$(md5sum <"$tmp/hf-dense/model.safetensors")" = "$sum" ] && [ ! -e "$tmp/hf-dense/model.safetensors.tmp" ] ||
            fail ckpt_tools/error/export_exists "the existing model.safetensors was changed or a .tmp left"
        run ckpt export "$DENSE" --format safetensors --out "$tmp/hf-dense" --force
        [ "$rc" -eq 0 ] && ok ckpt_tools/export/force || fail ckpt_tools/export/force "$(show)"
    fi
fi
if [ -s "$BF16_H5" ]; then
    expect_error ckpt_tools/error/export_hdf5_exists "$BF16_H5: exists" ckpt export "$MOE" --format hdf5 --out "$BF16_H5"
fi
# edited copies (h5py): format, version, and what verify must catch
if [ "$have_h5py" -eq 1 ] && [ -n "$DENSE" ] && [ -n "$MOE" ]; then
    # bad NAME KIND SOURCE MUST COMMAND: a copy of SOURCE edited by KIND; `loom ckpt COMMAND` on it must exit 2
    bad() {
        local name=$1 kind=$2 src=$3 must=$4 cmd=$5
        if ! python3 "$tmp/ckcmp.py" edit "$src" "$tmp/$kind.h5" "$kind" >"$tmp/out" 2>"$tmp/err"; then
            fail "$name" "h5py could not make the copy: $(tail -c 600 "$tmp/err")"
            return
        fi
        expect_error "$name" "$tmp/$kind\.h5: $must" ckpt "$cmd" "$tmp/$kind.h5"
    }
    if python3 "$tmp/ckcmp.py" edit "$DENSE" "$tmp/vlstrings.h5" vlstrings >"$tmp/out" 2>"$tmp/err"; then
        run ckpt info "$tmp/vlstrings.h5"
        info_has ckpt_tools/info/variable_length_strings '^layout +dp=1 tp=1 pp=1 ep=1 zero=0 world=1$' '^model +mla '
        run ckpt verify "$tmp/vlstrings.h5"
        info_has ckpt_tools/verify/variable_length_strings "^ok: $tmp/vlstrings.h5: 26 tensors, "
    else
        fail ckpt_tools/info/variable_length_strings "h5py could not make the copy: $(tail -c 600 "$tmp/err")"
    fi
    bad ckpt_tools/error/format format "$DENSE" 'format attribute is "other-checkpoint", not "loom-checkpoint"' info
    bad ckpt_tools/error/version version "$DENSE" 'format version 2; this loom reads version 1' verify
    bad ckpt_tools/verify_catches/nan nan "$MOE" \
        '/model/layers\.1\.mlp\.experts\.3\.up_proj\.weight: non-finite value nan at \[5, 7\]' verify
    bad ckpt_tools/verify_catches/moment_inf moment_inf "$DENSE" \
        '/optim/exp_avg_sq/layers\.0\.self_attn\.o_proj\.weight: non-finite value inf at \[3, 2\]' verify
    bad ckpt_tools/verify_catches/missing missing "$DENSE" '/model/norm\.weight: missing' verify
    bad ckpt_tools/verify_catches/shape shape "$DENSE" '/model/norm\.weight: shape \[127\], .* says \[128\]' verify
    bad ckpt_tools/verify_catches/moment_missing moment_missing "$DENSE" \
        '/optim/exp_avg/layers\.1\.self_attn\.kv_b_proj\.weight: missing' verify
    bad ckpt_tools/verify_catches/bias_missing bias_missing "$MOE" \
        '/buffers/layers\.2\.mlp\.gate\.e_score_correction_bias: missing' verify
fi
echo "# errors: $((SECONDS - t0)) s"

[ "$failures" -eq 0 ]
