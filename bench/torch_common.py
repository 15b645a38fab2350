"""bench/torch_common.py — what the PyTorch baselines (bench/torch_dense.py, bench/torch_moe.py) share: PyTorch with a
CUDA device, the timed steps, and MFU. Imported from the scripts' own folder: run them as python3 bench/torch_*.py."""
import sys
import time


def cuda_torch(prog, seed):
    """(torch, 0) when PyTorch sees a CUDA device, seeded with seed and TF32 off (the bf16 matmuls run under autocast,
    fp32 ones stay fp32 as loom's do); else (None, exit status) after saying why on stderr: 3 when PyTorch is not
    importable, 2 when it sees no CUDA device"""
    try:
        import torch
    except ImportError:
        print(f"{prog}: PyTorch is not importable (pip install torch)", file=sys.stderr)
        return None, 3
    if not torch.cuda.is_available():
        print(f"{prog}: no CUDA device visible to PyTorch", file=sys.stderr)
        return None, 2
    torch.manual_seed(seed)
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch, 0


def timed_steps(torch, step, warmup, steps):
    """step() `warmup` times, then `steps` times, each of those timed to its end on the GPU (peak memory counted from
    the first of them): (seconds of the warmup, the timed steps' seconds, step()'s last result)"""
    out = None
    t0 = time.perf_counter()
    for _ in range(warmup):
        out = step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return warmup_s, times, out


def mfu(flops_per_token, tokens_per_s, peak_tflops):
    """the fraction of the peak that flops_per_token x tokens_per_s is"""
    return flops_per_token * tokens_per_s / (peak_tflops * 1e12)
