#!/usr/bin/env bash
# scripts/bench_gpu.sh — `make bench-gpu`: loom against PyTorch on one GPU, same model, same run.
#
#   1. bench/gemm_peak.c: the cuBLAS GEMM rate at 8192^3 (bf16, fp16 with fp32 accumulation; TF32; fp32): the
#      measured peak. bench/bench_attention.c: causal attention at Youtu's MLA shape (B 1, T 4096, H 16, q/k 192,
#      v 128), flash attention against the materialised [B,H,T,T] kernels, forward and backward, TFLOP/s.
#   2. loom: `loom train` on the CUDA backend, a Youtu-shaped dense MLA model of about 1B parameters
#      (configs/models/youtu-2b.ini with 14 of its 32 layers: 1,005,934,592 parameters), bf16, seq 4096, random
#      token ids, AdamW; tokens/s = tokens of the timed steps / their time (metrics.jsonl, after the warm-up steps).
#   3. PyTorch, when python3 can import torch with CUDA: bench/torch_dense.py, the same model, eager and
#      torch.compile, same batch geometry and step count.
#   4. A markdown table: tokens/s, the ratio to loom, and MFU against the measured bf16 GEMM peak and against the
#      datasheet bf16 dense (no sparsity) peak of the GPU (NVIDIA datasheets: H100 SXM 989, H100 PCIe 756, H200 989,
#      A100 312 TFLOP/s). Every row's MFU uses loom's FLOPs per token (`loom info`: 6 x matmul parameters + causal
#      attention 6 L T H (dqk + dv) / 2), so the rows compare as tokens/s do.
#   5. MoE (section at the end): bench/moe_grouped.c, loom's grouped expert GEMMs against one dense GEMM of the same
#      size, and a stack of dots-shaped MoE layers forward and backward, against bench/torch_moe.py (PyTorch: a loop
#      over the experts, and torch._grouped_mm where present); a second table with the same columns and the ratios.
#
# The micro-batch is the largest of 4, 2, 1 (dividing the global batch) whose `loom info` memory estimate fits in 85%
# of the GPU's memory, stepping down when loom runs out of memory; PyTorch runs the same micro-batch.
# Environment: LAYERS (14), SEQ (4096), GLOBAL_BATCH (8 sequences), MICRO_BATCH (auto), STEPS (10 timed),
# WARMUP (3), PYTHON (python3), CC (mpicc, for gemm_peak).
# Exit status: 2 when no GPU is visible (or no CUDA toolkit to build gemm_peak with), 1 when loom's run fails
# (the table is printed first), else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
layers=${LAYERS:-14}
seq=${SEQ:-4096}
global=${GLOBAL_BATCH:-8}
steps=${STEPS:-10}
warmup=${WARMUP:-3}
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say() { echo "bench-gpu: $*" >&2; }

# ---------------------------------------------------------------------------------------------------
# a GPU, the CUDA toolkit, the GEMM peak

if command -v nvidia-smi >/dev/null && ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    say "no GPU is visible (nvidia-smi -L lists none): run make bench-gpu on a GPU machine"
    exit 2
fi
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
cuda_home=${CUDA_HOME:-$(dirname "$(dirname "$nvcc")")}
if [ ! -f "$cuda_home/include/cublas_v2.h" ]; then
    say "no CUDA toolkit found (looked for $cuda_home/include/cublas_v2.h; set CUDA_HOME)"
    exit 2
fi
mkdir -p build/bench
if ! "${CC:-mpicc}" -O2 -std=c11 -Wall -Wextra -I"$cuda_home/include" bench/gemm_peak.c -L"$cuda_home/lib64" \
    -Wl,-rpath,"$cuda_home/lib64" -lcublas -lcudart -o build/bench/gemm_peak; then
    say "building bench/gemm_peak.c failed"
    exit 1
fi
build/bench/gemm_peak 8192 5 >"$work/gemm.txt"
rc=$?
if [ "$rc" -eq 2 ]; then
    say "no CUDA device is visible to the CUDA runtime: run make bench-gpu on a GPU machine"
    exit 2
elif [ "$rc" -ne 0 ]; then
    say "gemm_peak failed (exit status $rc)"
    exit 1
fi
gpu_name=$(sed -n 's/^device name="\(.*\)" sm=.*/\1/p' "$work/gemm.txt")
gpu_mem=$(sed -n 's/^device .* memory_gib=\([0-9.]*\).*/\1/p' "$work/gemm.txt")
peak=$(sed -n 's/^gemm dtype=bf16 .* best_tflops=\([0-9.]*\) .*/\1/p' "$work/gemm.txt")
case "$gpu_name" in
    *H100*PCIe*) datasheet=756 ;;
    *H100*) datasheet=989 ;;
    *H200*) datasheet=989 ;;
    *A100*) datasheet=312 ;;
    *) datasheet= ;;
esac
if [ -z "$peak" ] || [ -z "$gpu_mem" ]; then
    say "could not read gemm_peak's output: $(cat "$work/gemm.txt")"
    exit 1
fi
say "$gpu_name, $gpu_mem GiB; cuBLAS bf16 GEMM 8192^3: $peak TFLOP/s (datasheet ${datasheet:-unknown})"

# attention kernels: flash against materialised (a failure is reported with the table, not fatal)
attn_note=
say "attention: flash vs materialised at B 1, T 4096, H 16, q/k 192, v 128"
if ! ${MAKE:-make} -s build/bench/bench_attention >"$work/attn-build.log" 2>&1; then
    attn_note="building bench/bench_attention.c failed: $(tail -c 300 "$work/attn-build.log" | tr '\n' ' ')"
elif ! build/bench/bench_attention >"$work/attn.txt" 2>&1; then
    attn_note="bench_attention failed: $(tail -c 300 "$work/attn.txt" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------------------------------------------
# loom

cat >"$work/loom.ini" <<EOF
# scripts/bench_gpu.sh: Youtu-LLM-2B dimensions with $layers layers
include = $PWD/configs/models/youtu-2b.ini

[model]
num_layers = $layers

[train]
steps = $((warmup + steps))
seq_len = $seq
global_batch = $global
device = cuda

[precision]
compute = bf16

[data]
kind = random

[schedule]
kind = constant
lr = 3e-4

[log]
every = 1
peak_tflops = $peak
EOF

# info KEY MB: a number from `loom info` at micro-batch MB ("total" memory in GiB, "FLOPs per token", ...)
info() {
    ./loom info -c "$work/loom.ini" --train.micro_batch="$2" 2>/dev/null | "$python" -c '
import re, sys
key, text = sys.argv[1], sys.stdin.read()
if key == "memory":
    m = re.search(r"^# memory.*?^\s+total\s+([0-9.]+) (B|KiB|MiB|GiB|TiB)", text, re.S | re.M)
    print(float(m.group(1)) * 1024 ** ("B KiB MiB GiB TiB".split().index(m.group(2)) - 3))
else:
    print(re.search(r"^\s+" + re.escape(key) + r"\s+([0-9.e+]+)", text, re.M).group(1))
' "$1"
}

if [ ! -x ./loom ]; then
    say "./loom is missing: run make bench-gpu (it builds loom first)"
    exit 1
fi
flops_per_token=$(info "FLOPs per token" 1) || { say "loom info failed on $work/loom.ini"; exit 1; }
params=$(info "total parameters" 1)
candidates=${MICRO_BATCH:-4 2 1}
mb=
for b in $candidates; do
    [ $((global % b)) -eq 0 ] || continue
    if [ -n "${MICRO_BATCH:-}" ] || "$python" -c "import sys; sys.exit(0 if float('$(info memory "$b")') <= 0.85 * float('$gpu_mem') else 1)"; then
        mb="$mb $b"
    fi
done
[ -n "$mb" ] || mb=1
loom_tps= loom_mb= loom_note= last_b=
for b in $mb; do
    last_b=$b
    say "loom: micro-batch $b, global batch $global x $seq, $((warmup + steps)) steps"
    ./loom train -c "$work/loom.ini" --train.micro_batch="$b" --train.run_dir="$work/loom-mb$b" \
        >"$work/loom-mb$b.log" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        loom_mb=$b
        loom_tps=$("$python" - "$work/loom-mb$b/metrics.jsonl" "$warmup" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
per_step = rows[0]["tokens"] / rows[0]["step"]
timed = rows[int(sys.argv[2]):]
print(f"{per_step * len(timed) / sum(r['time']['step'] for r in timed):.1f}")
PY
)
        break
    fi
    loom_note="exit status $rc: $(tail -c 300 "$work/loom-mb$b.log" | tr '\n' ' ')"
    say "loom at micro-batch $b failed: $loom_note"
    grep -qiE 'out of memory|cudaErrorMemoryAllocation' "$work/loom-mb$b.log" || break
done
mb_used=${loom_mb:-$last_b}

# ---------------------------------------------------------------------------------------------------
# PyTorch

torch_note=
declare -A torch_tps torch_mem torch_fail
if ! torch_version=$("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    torch_note="PyTorch is not importable by $python (pip install torch, or set PYTHON): its rows are left out"
elif ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    torch_note="PyTorch $torch_version sees no CUDA device (a CPU-only build?): its rows are left out"
else
    for mode in eager compile; do
        say "PyTorch $torch_version $mode: micro-batch $mb_used"
        "$python" bench/torch_dense.py --mode "$mode" --layers "$layers" --seq "$seq" --batch "$mb_used" \
            --global-batch "$global" --steps "$steps" --warmup "$warmup" --peak-tflops "$peak" \
            >"$work/torch-$mode.log" 2>&1
        rc=$?
        line=$(grep '^result ' "$work/torch-$mode.log")
        if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
            torch_fail[$mode]="exit status $rc: $(tail -c 300 "$work/torch-$mode.log" | tr '\n' ' ')"
            say "PyTorch $mode failed: ${torch_fail[$mode]}"
            continue
        fi
        torch_tps[$mode]=$(sed -n 's/.* tokens_per_s=\([0-9.]*\).*/\1/p' <<<"$line")
        torch_mem[$mode]=$(sed -n 's/.* peak_mem_gib=\([0-9.]*\).*/\1/p' <<<"$line")
        tparams=$(sed -n 's/.* params=\([0-9]*\).*/\1/p' <<<"$line")
        [ "$tparams" = "$params" ] || say "note: PyTorch's model has $tparams parameters, loom's $params"
    done
fi

# ---------------------------------------------------------------------------------------------------
# the table

"$python" - "$gpu_name" "$peak" "${datasheet:-0}" "$flops_per_token" "$params" "$layers" "$seq" "$mb_used" "$global" \
    "$warmup" "$steps" "${loom_tps:-0}" "${torch_tps[eager]:-0}" "${torch_tps[compile]:-0}" \
    "${torch_mem[eager]:-}" "${torch_mem[compile]:-}" "$work/gemm.txt" <<'PY'
import datetime, re, sys
(name, peak, sheet, fpt, params, layers, seq, mb, gb, warm, steps, loom, eager, comp, mem_e, mem_c,
 gemm_file) = sys.argv[1:]
peak, sheet, fpt, loom = float(peak), float(sheet), float(fpt), float(loom)
print(f"## loom vs PyTorch: dense MLA training on {name} ({datetime.date.today()})\n")
print(f"Model: Youtu-LLM-2B dimensions with {layers} layers ({int(params):,} parameters, tied head), seq {seq}, "
      f"micro-batch {mb}, global batch {gb} ({int(gb) * int(seq)} tokens/step), bf16 (fp32 masters), AdamW with "
      f"clipping, random token ids; {warm} warm-up then {steps} timed steps. FLOPs per token {fpt:.4g} "
      f"(6 x matmul parameters + causal attention, loom's count, for every row).\n")
print("| GEMM 8192^3 (cuBLAS) | best TFLOP/s | median TFLOP/s |\n|---|---|---|")
for line in open(gemm_file):
    m = re.match(r"gemm dtype=(\S+) n=\d+ best_tflops=(\S+) median_tflops=(\S+)", line)
    if m:
        print(f"| {m.group(1)} | {m.group(2)} | {m.group(3)} |")
print()
rows = [("loom (CUDA backend, bf16)", loom, ""),
        ("PyTorch eager (bf16 autocast, SDPA, v padded to 192)", float(eager), mem_e),
        ("PyTorch torch.compile (same)", float(comp), mem_c)]
sheet_head = f"MFU vs datasheet ({sheet:g} TFLOP/s)" if sheet else "MFU vs datasheet (unknown GPU)"
print(f"| implementation | tokens/s | vs loom | MFU vs measured bf16 GEMM ({peak:g} TFLOP/s) | {sheet_head} | "
      "peak memory (PyTorch) |")
print("|---|---|---|---|---|---|")
for label, tps, mem in rows:
    if tps <= 0:
        print(f"| {label} | n/a | | | | |")
        continue
    ratio = f"{tps / loom:.2f}x" if loom > 0 else "n/a"
    mfu_sheet = f"{100 * fpt * tps / (sheet * 1e12):.1f}%" if sheet else "n/a"
    print(f"| {label} | {tps:,.0f} | {ratio} | {100 * fpt * tps / (peak * 1e12):.1f}% | {mfu_sheet} | "
          f"{mem + ' GiB' if mem else ''} |")
PY
if [ -z "$attn_note" ]; then
    "$python" - "$work/attn.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
shape = re.search(r"^attention shape (.*)$", text, re.M).group(1)
rows = {}
for m in re.finditer(r"^attention dtype=(\S+) path=(\S+) dir=(\S+) ms=(\S+) tflops=(\S+)$", text, re.M):
    rows.setdefault((m.group(1), m.group(2)), {})[m.group(3)] = (m.group(4), m.group(5))
print(f"\n## Causal attention kernels, {shape} (bench/bench_attention.c)\n")
print("FLOPs: forward 2 B H T^2 (Dqk + Dv) / 2, backward 2.5x that.\n")
print("| dtype | path | forward ms | forward TFLOP/s | backward ms | backward TFLOP/s |\n|---|---|---|---|---|---|")
for (dt, path), d in rows.items():
    f, b = d.get("forward", ("n/a", "n/a")), d.get("backward", ("n/a", "n/a"))
    print(f"| {dt} | {path} | {f[0]} | {f[1]} | {b[0]} | {b[1]} |")
for m in re.finditer(r"^attention dtype=(\S+) flash_vs_materialised (.*)$", text, re.M):
    print(f"\n{m.group(1)}: flash vs materialised, max |diff| / max |materialised|: {m.group(2)}", end="")
print()
PY
else
    echo "attention: $attn_note"
fi
[ -n "$loom_note" ] && [ -z "$loom_tps" ] && echo "loom failed: $loom_note"
[ -n "$torch_note" ] && echo "note: $torch_note"
for mode in eager compile; do
    [ -n "${torch_fail[$mode]:-}" ] && echo "PyTorch $mode failed: ${torch_fail[$mode]}"
done

# ---------------------------------------------------------------------------------------------------
# MoE: a stack of dots-shaped MoE layers (width 2048, 64 experts of width 1408, top-6, 2 shared) on this GPU,
# forward and backward of the layers alone: loom (bench/moe_grouped.c, which also times its grouped GEMMs against
# one dense GEMM of the same size) against PyTorch (bench/torch_moe.py: a loop over the experts, and
# torch._grouped_mm where this PyTorch has it). Environment: MOE_LAYERS (4), MOE_TOKENS (8192), MOE_SEQ (1024).

moe_args=(--tokens "${MOE_TOKENS:-8192}" --seq "${MOE_SEQ:-1024}" --layers "${MOE_LAYERS:-4}" --experts 64 --top-k 6
    --width 2048 --expert-width 1408 --shared 2)
moe_notes=()
say "MoE: loom (bench/moe_grouped) ${moe_args[*]}"
if ! make -s build/bench/moe_grouped >"$work/moe-build.log" 2>&1; then
    moe_notes+=("building bench/moe_grouped failed: $(tail -c 300 "$work/moe-build.log" | tr '\n' ' ')")
elif ! build/bench/moe_grouped "${moe_args[@]}" --peak-tflops "$peak" >"$work/moe-loom.txt" 2>"$work/moe-loom.err"; then
    moe_notes+=("loom's MoE bench failed: $(tail -c 300 "$work/moe-loom.err" | tr '\n' ' ')")
fi
grep -q 'loop over cublasGemmEx' "$work/moe-loom.err" 2>/dev/null &&
    moe_notes+=("loom: $(grep -m1 'loop over cublasGemmEx' "$work/moe-loom.err")")
if [ -z "$torch_note" ]; then
    for impl in loop grouped; do
        say "MoE: PyTorch $impl"
        "$python" bench/torch_moe.py --impl "$impl" "${moe_args[@]}" --peak-tflops "$peak" >"$work/moe-torch-$impl.log" 2>&1
        rc=$?
        grep -q '^result ' "$work/moe-torch-$impl.log" ||
            moe_notes+=("PyTorch $impl: exit status $rc: $(tail -c 300 "$work/moe-torch-$impl.log" | tr '\n' ' ')")
    done
fi
echo
"$python" - "$gpu_name" "$peak" "${datasheet:-0}" "$work/moe-loom.txt" "$work/moe-torch-loop.log" \
    "$work/moe-torch-grouped.log" <<'PY'
import datetime, os, re, sys
name, peak, sheet, loom_file, loop_file, grouped_file = sys.argv[1:]
peak, sheet = float(peak), float(sheet)

def fields(path, prefix):
    """key=value pairs of the lines of `path` starting with `prefix`"""
    if not os.path.exists(path):
        return []
    return [dict(re.findall(r"(\w+)=(\S+)", l)) for l in open(path) if l.startswith(prefix)]

layer = (fields(loom_file, "layer ") or [{}])[0]
gemms = fields(loom_file, "grouped op=")
rows = [("loom (CUDA backend, bf16; grouped GEMMs)", layer),
        ("PyTorch eager, loop over the experts", (fields(loop_file, "result ") or [{}])[0]),
        ("PyTorch eager, torch._grouped_mm", (fields(grouped_file, "result ") or [{}])[0])]
fpt = float(layer.get("flops_per_token") or next((r["flops_per_token"] for _, r in rows if r), 0))
print(f"## loom vs PyTorch: dots-shaped MoE layers on {name} ({datetime.date.today()})\n")
print(f"{layer.get('layers', '?')} MoE layers of width 2048: 64 experts of width 1408, top-6, 2 shared experts (one "
      f"SwiGLU of 2816), fp32 sigmoid router with the score-correction bias, the sequence-wise balance loss; "
      f"{layer.get('tokens', '?')} tokens; forward and backward of the layer stack alone (no attention, no "
      f"optimizer), bf16 with fp32 parameters. FLOPs per token {fpt:.4g} (6 x active parameters, every row).\n")
loom = float(layer.get("tokens_per_s", 0))
sheet_head = f"MFU vs datasheet ({sheet:g} TFLOP/s)" if sheet else "MFU vs datasheet (unknown GPU)"
print(f"| implementation | tokens/s | vs loom | MFU (active) vs measured bf16 GEMM ({peak:g} TFLOP/s) | {sheet_head} |")
print("|---|---|---|---|---|")
for label, r in rows:
    tps = float(r.get("tokens_per_s", 0))
    if tps <= 0:
        print(f"| {label} | n/a | | | |")
        continue
    ratio = f"{tps / loom:.2f}x" if loom > 0 else "n/a"
    mfu_sheet = f"{100 * fpt * tps / (sheet * 1e12):.1f}%" if sheet else "n/a"
    print(f"| {label} | {tps:,.0f} | {ratio} | {100 * fpt * tps / (peak * 1e12):.1f}% | {mfu_sheet} |")
if gemms:
    g0 = gemms[0]
    print(f"\n| expert GEMM ({g0['rows']} rows over {g0['experts']} experts, {g0['c']} -> {g0['oc']}) | loom grouped "
          f"TFLOP/s | one dense GEMM of the same size | grouped / dense | grouped / measured peak |")
    print("|---|---|---|---|---|")
    for g in gemms:
        grouped, dense = float(g["grouped_tflops"]), float(g["dense_tflops"])
        print(f"| {g['op']} | {grouped:.1f} | {dense:.1f} | {float(g['ratio']):.2f} | {grouped / peak:.2f} |")
PY
for note in "${moe_notes[@]}"; do echo "MoE: $note"; done

[ -n "$loom_tps" ] || exit 1
exit 0
