"""bench/torch_moe.py — loom's dots-shaped MoE layer stack in PyTorch, for scripts/bench_gpu.sh: tokens/s and MFU.

The layer of model/moe.c (shared/reference/MODELS.md A: dots.llm1, DeepSeek-V3 routing):
  router (fp32):  s = sigmoid(x W_gate^T);  chosen = topk(s + bias, K);  w = s[chosen] / (sum + 1e-20) * 2.5
  routed:         sum over the chosen experts e of w_e * down_e(silu(gate_e x) * up_e x)
  shared:         down(silu(gate x) * up x) of width shared x expert width, added unscaled
  balance loss:   alpha * sum_i f_i P_i per sequence (DeepSeek-V3 eqs. 17-20), f from the chosen experts (no
                  gradient), P the mean over the sequence of s / sum(s); alpha 1e-4, divided by the sequences
The stack: LAYERS such layers, each one's output the next one's input (no attention, no norms: the layer alone,
as bench/moe_grouped.c runs loom's), forward then backward of sum(out * dout) + the balance losses; no optimizer.
Parameters fp32 (loom keeps fp32 masters), the experts' matmuls in bf16 with fp32 accumulation, the router in fp32.

Two ways to run the routed experts:
  loop     the assignments sorted by expert (a stable sort), then one SwiGLU per expert over its rows (the row
           counts come to the host, as loom's do), the outputs weighted and added back with index_add_
  grouped  torch._grouped_mm (PyTorch 2.8 and later, sm90) over the assignments sorted by expert, each expert's
           rows padded to a multiple of 16 (its alignment rule), three grouped GEMMs per layer; left out (with a
           note) when this PyTorch has no _grouped_mm or it fails on this GPU

FLOPs per token: 6 x active parameters per layer (router E C, K experts 3 I C each, shared 3 S I C) x LAYERS,
the count bench/moe_grouped.c uses. MFU = that x tokens/s / --peak-tflops.

Prints one line `result impl=... tokens_per_s=... ...` for scripts/bench_gpu.sh. Needs a CUDA GPU and PyTorch.
Usage: python3 bench/torch_moe.py --impl loop|grouped [--tokens 8192 --seq 1024 --layers 4 ...]
"""
import argparse
import sys

from torch_common import cuda_torch, mfu, timed_steps


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=("loop", "grouped"), default="loop")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--seq", type=int, default=1024, help="tokens per sequence (the balance loss is per sequence)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=6)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--expert-width", type=int, default=1408)
    p.add_argument("--shared", type=int, default=2)
    p.add_argument("--scaling", type=float, default=2.5)
    p.add_argument("--alpha", type=float, default=1e-4)
    p.add_argument("--init-std", type=float, default=0.006)
    p.add_argument("--steps", type=int, default=5, help="timed passes")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=0.0, help="for MFU; 0 = do not print MFU")
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args()


ALIGN = 16  # torch._grouped_mm: each group's rows a multiple of 16


def build(args, torch):
    nn, F = torch.nn, torch.nn.functional
    E, K, C, I, SI = args.experts, args.top_k, args.width, args.expert_width, args.shared * args.expert_width

    def param(*shape):
        return nn.Parameter(torch.empty(*shape).normal_(0.0, args.init_std))

    class MoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = param(E, C)                      # router [E, C]
            self.register_buffer("bias", torch.zeros(E))  # score-correction bias (no gradient)
            self.w_gate, self.w_up, self.w_down = param(E, I, C), param(E, I, C), param(E, C, I)
            self.s_gate, self.s_up, self.s_down = param(SI, C), param(SI, C), param(C, SI)

        def route(self, x):
            """x [N, C] -> scores [N, E] fp32, chosen [N, K], weights [N, K] fp32"""
            with torch.autocast("cuda", enabled=False):
                s = torch.sigmoid(x.float() @ self.gate.t())
                chosen = torch.topk(s + self.bias, K, dim=-1).indices
                w = s.gather(1, chosen)
                w = w / (w.sum(-1, keepdim=True) + 1e-20) * args.scaling
            return s, chosen, w

        def balance(self, s, chosen):
            """alpha / sequences * sum_b sum_i f_i P_i, f_i = E / (K T) x (tokens of the sequence choosing i)"""
            B, T = s.shape[0] // args.seq, args.seq
            hits = torch.zeros(B, E, device=s.device).scatter_add_(
                1, chosen.view(B, T * K), torch.ones(B, T * K, device=s.device))
            f = hits * (E / (K * T))
            P = (s / s.sum(-1, keepdim=True)).view(B, T, E).mean(1)
            return args.alpha / B * (f * P).sum()

        def experts_loop(self, x, counts):
            """x [NK, C] sorted by expert, counts [E] on the host -> [NK, C]"""
            out, at = [], 0
            for e, n in enumerate(counts):
                if n:
                    xe = x[at:at + n]
                    h = F.silu(F.linear(xe, self.w_gate[e])) * F.linear(xe, self.w_up[e])
                    out.append(F.linear(h, self.w_down[e]))
                at += n
            return torch.cat(out)

        def experts_grouped(self, x, ends):
            """x [R, C] bf16, each expert's rows padded to ALIGN (zero rows), ends [E] int32 cumulative -> [R, C]"""
            wg, wu, wd = (w.to(torch.bfloat16).transpose(-2, -1) for w in (self.w_gate, self.w_up, self.w_down))
            h = F.silu(torch._grouped_mm(x, wg, offs=ends)) * torch._grouped_mm(x, wu, offs=ends)
            return torch._grouped_mm(h, wd, offs=ends)

        def forward(self, x):
            N = x.shape[0]
            s, chosen, w = self.route(x)
            flat = chosen.reshape(-1)                    # assignment a = n K + j
            order = torch.argsort(flat, stable=True)      # assignments grouped by expert, token order inside
            tokens = order // K
            if args.impl == "loop":
                counts = torch.bincount(flat, minlength=E).tolist()
                ys = self.experts_loop(x[tokens], counts)
            else:
                counts = torch.bincount(flat, minlength=E)
                padded = (counts + ALIGN - 1) // ALIGN * ALIGN
                ends = torch.cumsum(padded, 0)
                first = torch.cumsum(counts, 0) - counts  # each expert's first assignment in `order`
                e_sorted = flat[order]
                dest = (ends - padded)[e_sorted] + torch.arange(N * K, device=x.device) - first[e_sorted]
                rows = int(ends[-1])                      # the padded rows (a host sync, as the loop's counts)
                xs = x.new_zeros(rows, x.shape[1]).index_copy(0, dest, x[tokens])
                ys = self.experts_grouped(xs, ends.to(torch.int32))[dest]
            routed = ys.new_zeros(N, ys.shape[1]).index_add(0, tokens, ys * w.reshape(-1)[order, None].to(ys.dtype))
            shared = F.linear(F.silu(F.linear(x, self.s_gate)) * F.linear(x, self.s_up), self.s_down)
            return routed.to(shared.dtype) + shared, self.balance(s, chosen)

    return nn.ModuleList(MoE() for _ in range(args.layers))


def main():
    args = parse_args()
    torch, status = cuda_torch("torch_moe", args.seed)
    if torch is None:
        return status
    if args.tokens % args.seq:
        print("torch_moe: --tokens must be a multiple of --seq", file=sys.stderr)
        return 2
    if args.impl == "grouped" and not hasattr(torch, "_grouped_mm"):
        print(f"torch_moe: PyTorch {torch.__version__} has no torch._grouped_mm", file=sys.stderr)
        return 4
    dev = torch.device("cuda")
    layers = build(args, torch).to(dev)
    E, K, C, I = args.experts, args.top_k, args.width, args.expert_width
    active = E * C + K * 3 * I * C + 3 * args.shared * I * C
    fpt = 6.0 * active * args.layers
    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)
    x0 = torch.randn(args.tokens, C, device=dev, generator=gen).to(torch.bfloat16)
    dout = torch.randn(args.tokens, C, device=dev, generator=gen).to(torch.bfloat16)

    def step():
        x, bal = x0, 0.0
        with torch.autocast("cuda", dtype=torch.bfloat16):
            for layer in layers:
                x, b = layer(x)
                bal = bal + b
            loss = (x.float() * dout.float()).sum() + bal
        loss.backward()
        for p in layers.parameters():
            p.grad = None
        return loss.detach()

    print(f"torch_moe: impl={args.impl} torch={torch.__version__} device=\"{torch.cuda.get_device_name(0)}\" "
          f"tokens={args.tokens} layers={args.layers} experts={E} top_k={K} width={C} expert_width={I} "
          f"shared={args.shared} flops_per_token={fpt:.6g}", flush=True)
    _, times, _ = timed_steps(torch, step, args.warmup, args.steps)
    best = min(times)
    tok_s = args.tokens / best
    line = (f"result impl={args.impl} tokens_per_s={tok_s:.1f} step_s={best:.4f} flops_per_token={fpt:.6g} "
            f"peak_mem_gib={torch.cuda.max_memory_allocated() / 2**30:.1f}")
    if args.peak_tflops > 0:
        line += f" mfu={mfu(fpt, tok_s, args.peak_tflops):.4f}"
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
