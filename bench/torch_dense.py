"""bench/torch_dense.py — loom's dense MLA model in PyTorch, for scripts/bench_gpu.sh: training tokens/s and MFU.

The architecture of model/model.c (shared/reference/MODELS.md B and C: Youtu-LLM / DeepSeek-V3 MLA):
  block (pre-norm):  h = x + Attn(RMSNorm(x));  out = h + MLP(RMSNorm(h))
  MLA:  q = W_UQ RMSNorm(W_DQ x), per head [q_nope (dn) | q_rope (dr)], RoPE on q_rope;
        [c_kv (rkv) | k_rope (dr)] = W_DKV x, RMSNorm on c_kv only, RoPE on k_rope: ONE key shared by all heads;
        per head [k_nope (dn) | v (dv)] = W_UKV c_kv;  k = [k_nope | k_rope];  causal softmax(q k^T / sqrt(dn + dr)) v;
        out = W_O [heads].  RoPE interleaved: pairs (2i, 2i+1), frequencies theta^(-2i/dr).
  MLP:  SwiGLU, down(silu(gate x) * up x).  Tied head: logits = RMSNorm(x) E^T.  Loss: cross-entropy in fp32.
No biases. Parameter names follow the Hugging Face checkpoints, as loom's table does.

Training step: micro-batches of B x T random token ids (gradient accumulation to the global batch), forward and
backward under bf16 autocast (fp32 master weights, matmuls in bf16, norms' statistics and the loss in fp32), global
gradient-norm clipping at 1.0, fused AdamW (betas 0.9 / 0.95, weight decay 0.1 on matrices only, as loom's
defaults: optim.decay_norms / decay_embeddings false). Eager, or with torch.compile on the model (the optimizer step
is the fused CUDA kernel either way).

Attention: torch.nn.functional.scaled_dot_product_attention, causal. MLA's q/k head width (dn + dr = 192) differs
from its v width (dv = 128). --attn pad (default) zero-pads v to 192 and drops the padding of the output: exact, and
every fused backend (FlashAttention-2 included) accepts equal widths, at the price of 50% more work in P V (and its
backward); MFU below counts only the useful FLOPs, so the padding shows as lost MFU. --attn native hands v at 128
and lets PyTorch pick a backend that accepts unequal widths (cuDNN or memory-efficient attention where available,
else the math fallback).

FLOPs per token, as loom counts them (model/params.c, loom_model_count): 6 x matmul parameters (every weight
matrix, the tied head once, no norms) + 6 L T H (dqk + dv) / 2 for causal attention. MFU = that x tokens/s / peak.
The script also prints the 6 x parameters figure (6N).

Prints one line `result mode=... tokens_per_s=... ...` for scripts/bench_gpu.sh. Needs a CUDA GPU and PyTorch >= 2.1.
Usage: python3 bench/torch_dense.py --mode eager|compile [--layers 14 --seq 4096 --batch 1 --global-batch 8 ...]
"""
import argparse
import math
import sys

from torch_common import cuda_torch, mfu, timed_steps


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("eager", "compile"), default="eager")
    p.add_argument("--attn", choices=("pad", "native"), default="pad")
    # Youtu-LLM-2B dimensions (configs/models/youtu-2b.ini) with 14 layers instead of 32: 1,005,934,592 parameters
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=14)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--q-lora", type=int, default=1536)
    p.add_argument("--kv-lora", type=int, default=512)
    p.add_argument("--qk-nope", type=int, default=128)
    p.add_argument("--qk-rope", type=int, default=64)
    p.add_argument("--v-head", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=6144)
    p.add_argument("--rope-theta", type=float, default=1.6e6)
    p.add_argument("--eps", type=float, default=1e-6)
    p.add_argument("--init-std", type=float, default=0.019764)
    p.add_argument("--embed-init-std", type=float, default=0.039528)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1, help="sequences per micro-batch")
    p.add_argument("--global-batch", type=int, default=8, help="sequences per optimizer step")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens there)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--peak-tflops", type=float, default=0.0, help="for MFU; 0 = do not print MFU")
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args()


def build(args, torch):
    nn, F = torch.nn, torch.nn.functional

    def rms_norm(x, weight, eps):
        """statistics in fp32, output in the input's dtype (loom keeps rstd in fp32 too)"""
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return (y * weight.float()).to(x.dtype)

    class RMSNorm(nn.Module):
        def __init__(self, n, eps):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n))
            self.eps = eps

        def forward(self, x):
            return rms_norm(x, self.weight, self.eps)

    def linear(i, o):
        return nn.Linear(i, o, bias=False)

    def rope_interleaved(x, cos, sin):
        """x [..., T, heads, d]: pairs (2i, 2i+1) rotated by pos * theta^(-2i/d) (DeepSeek-V3 inference/model.py)"""
        x0, x1 = x[..., 0::2].float(), x[..., 1::2].float()
        y0, y1 = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        return torch.stack((y0, y1), dim=-1).flatten(-2).to(x.dtype)

    class MLA(nn.Module):
        def __init__(self):
            super().__init__()
            H, dn, dr, dv = args.heads, args.qk_nope, args.qk_rope, args.v_head
            self.q_a_proj = linear(args.hidden, args.q_lora)
            self.q_a_layernorm = RMSNorm(args.q_lora, args.eps)
            self.q_b_proj = linear(args.q_lora, H * (dn + dr))
            self.kv_a_proj_with_mqa = linear(args.hidden, args.kv_lora + dr)
            self.kv_a_layernorm = RMSNorm(args.kv_lora, args.eps)
            self.kv_b_proj = linear(args.kv_lora, H * (dn + dv))
            self.o_proj = linear(H * dv, args.hidden)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            H, dn, dr, dv = args.heads, args.qk_nope, args.qk_rope, args.v_head
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))).view(B, T, H, dn + dr)
            q_nope, q_rope = q.split((dn, dr), dim=-1)
            c_kv, k_rope = self.kv_a_proj_with_mqa(x).split((args.kv_lora, dr), dim=-1)
            kv = self.kv_b_proj(self.kv_a_layernorm(c_kv)).view(B, T, H, dn + dv)
            k_nope, v = kv.split((dn, dv), dim=-1)
            q = torch.cat((q_nope, rope_interleaved(q_rope, cos, sin)), dim=-1)
            k_rope = rope_interleaved(k_rope.unsqueeze(2), cos, sin).expand(B, T, H, dr)  # shared by every head
            k = torch.cat((k_nope, k_rope), dim=-1)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, d]
            scale = 1.0 / math.sqrt(dn + dr)
            if args.attn == "pad" and dv < dn + dr:
                v = F.pad(v, (0, dn + dr - dv))
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)[..., :dv]
            else:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
            return self.o_proj(o.transpose(1, 2).reshape(B, T, H * dv))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = linear(args.hidden, args.intermediate)
            self.up_proj = linear(args.hidden, args.intermediate)
            self.down_proj = linear(args.intermediate, args.hidden)

        def forward(self, x):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm = RMSNorm(args.hidden, args.eps)
            self.self_attn = MLA()
            self.post_attention_layernorm = RMSNorm(args.hidden, args.eps)
            self.mlp = MLP()

        def forward(self, x, cos, sin):
            h = x + self.self_attn(self.input_layernorm(x), cos, sin)
            return h + self.mlp(self.post_attention_layernorm(h))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(args.vocab, args.hidden)
            self.layers = nn.ModuleList(Block() for _ in range(args.layers))
            self.norm = RMSNorm(args.hidden, args.eps)
            dr = args.qk_rope
            inv_freq = args.rope_theta ** (-torch.arange(0, dr, 2, dtype=torch.float64) / dr)
            ang = torch.arange(args.seq, dtype=torch.float64)[:, None] * inv_freq[None, :]  # angles in double
            self.register_buffer("cos", ang.cos().float()[:, None, :], persistent=False)  # [T, 1, dr/2]
            self.register_buffer("sin", ang.sin().float()[:, None, :], persistent=False)

        def forward(self, ids, targets):
            x = self.embed_tokens(ids)
            for layer in self.layers:
                x = layer(x, self.cos, self.sin)
            logits = self.norm(x) @ self.embed_tokens.weight.t()  # tied head (bf16 under autocast)
            return F.cross_entropy(logits.float().reshape(-1, args.vocab), targets.reshape(-1))

    model = Model()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, args.embed_init_std if name == "embed_tokens.weight" else args.init_std)
    return model


def flops_per_token(args, model):
    """loom's count (model/params.c): 6 x matmul weights (the tied head once, norms excluded) + causal attention"""
    matmul = sum(p.numel() for p in model.parameters() if p.dim() == 2)
    attn = 6.0 * args.layers * args.seq * args.heads * (args.qk_nope + args.qk_rope + args.v_head) / 2.0
    return 6.0 * matmul + attn


def main():
    args = parse_args()
    torch, status = cuda_torch("torch_dense", args.seed)
    if torch is None:
        return status
    if args.global_batch % args.batch:
        print("torch_dense: --global-batch must be a multiple of --batch", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    model = build(args, torch).to(dev)
    params = sum(p.numel() for p in model.parameters())
    fpt = flops_per_token(args, model)
    decay = [p for p in model.parameters() if p.dim() == 2 and p is not model.embed_tokens.weight]
    rest = [p for p in model.parameters() if not (p.dim() == 2 and p is not model.embed_tokens.weight)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    step_fn = torch.compile(model) if args.mode == "compile" else model
    accum = args.global_batch // args.batch
    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)

    def train_step():
        total = 0.0
        for _ in range(accum):
            ids = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=dev, generator=gen)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = step_fn(ids[:, :-1], ids[:, 1:]) / accum
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    print(f"torch_dense: mode={args.mode} attn={args.attn} torch={torch.__version__} "
          f"device=\"{torch.cuda.get_device_name(0)}\" params={params} flops_per_token={fpt:.4g} "
          f"micro_batch={args.batch}x{args.seq} global_batch={args.global_batch}", flush=True)
    warm_s, times, loss = timed_steps(torch, train_step, args.warmup, args.steps)
    tokens = args.global_batch * args.seq
    tok_s = tokens * len(times) / sum(times)
    line = (f"result mode={args.mode} attn={args.attn} tokens_per_s={tok_s:.1f} step_s={sum(times) / len(times):.4f} "
            f"loss={loss.item():.4f} params={params} flops_per_token={fpt:.6g} warmup_s={warm_s:.1f} "
            f"peak_mem_gib={torch.cuda.max_memory_allocated() / 2**30:.1f}")
    if args.peak_tflops > 0:
        line += (f" mfu={mfu(fpt, tok_s, args.peak_tflops):.4f}"
                 f" mfu_6n={mfu(6.0 * params, tok_s, args.peak_tflops):.4f}")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
