"""Training throughput of our GPT vs a minimal nanoGPT-style reference at the same shape.

Three models of the GPT-2 124M shape (12 layers, d_model 768, 12 heads, FFN 4x, vocab 50304,
untied head) train with the same AdamW and the same batch; steps alternate between them so that
machine noise hits all alike:

  ours          models.GPT as the paper configures it (RoPE, QK RMSNorm, ReLU², parameter-free RMSNorm)
  ours_refarch  models.GPT configured as the reference (GELU, learned positions, no QK norm, GPT-2
                init); what still differs from the reference: parameter-free RMSNorm instead of
                LayerNorm (models/ has no LayerNorm), no biases, separate q/k/v projections
  reference     nanoGPT-style (LayerNorm, GELU, learned positions, fused qkv, biases)

ours_refarch / reference is the cost of our implementation at (almost) the same architecture;
ours / ours_refarch is the cost of the paper's architecture. Prints ms/step, tokens/s and the
ratios (> 1 means the first is faster); the last line is machine-readable:
`<name>_ms=.. <name>_tok_s=.. ... ratio_ours_ref=.. ratio_refarch_ref=.. ratio_ours_refarch=..`.
The issue's goal: ours ≥ 1.1x nanoGPT, whose GPT-2 124M step took 31.2 ms (≈ 393k tokens/s) at
12 x 1024 tokens, bf16, compiled, on one H100 (infra-facts.md).

    python benchmarks/throughput.py                       # CPU: ~1-2 minutes on 2 idle cores
    python benchmarks/throughput.py --device cuda         # 12 x 1024 tokens/step, bf16, compile
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from specsweep.models import GPT, GPTConfig  # noqa: E402

VOCAB, N_LAYER, N_HEAD, D_MODEL, FFN_MULT = 50304, 12, 12, 768, 4
MODELS = ("ours", "ours_refarch", "reference")
# nanoGPT's GPT-2 124M on one H100 (bf16, compiled, 12 x 1024 tokens per step): infra-facts.md
ANCHOR_MS, ANCHOR_TOKENS = 31.2, 12 * 1024
GOAL_RATIO = 1.1  # issue 15: ours at least 1.1x the reference


# ---- the reference: nanoGPT-style block (LayerNorm, GELU MLP, learned positions, fused qkv)


class RefAttention(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, d = x.shape
        # [B, S, 3d] -> 3 x [B, n_head, S, head_dim]
        q, k, v = self.qkv(x).view(B, S, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, S, d))


class RefBlock(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = RefAttention(d, n_head)
        self.mlp = nn.Sequential(nn.Linear(d, FFN_MULT * d), nn.GELU(), nn.Linear(FFN_MULT * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class RefGPT(nn.Module):
    """GPT-2 as nanoGPT writes it, but with an untied head so the parameter shapes match ours."""

    def __init__(self, context_len: int, n_layer: int = N_LAYER) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, D_MODEL)
        self.wpe = nn.Embedding(context_len, D_MODEL)
        self.blocks = nn.ModuleList(RefBlock(D_MODEL, N_HEAD) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(D_MODEL)
        self.lm_head = nn.Linear(D_MODEL, VOCAB, bias=False)
        for p in self.parameters():
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss


def build_models(names: list[str], context_len: int, n_layer: int) -> dict[str, nn.Module]:
    """The models asked for, by name (MODELS), on the CPU."""
    shape = dict(vocab_size=VOCAB, n_layer=n_layer, n_head=N_HEAD, d_model=D_MODEL,
                 context_len=context_len, ffn_mult=FFN_MULT)
    builders = {
        "ours": lambda: GPT(GPTConfig(**shape)),
        "ours_refarch": lambda: GPT(GPTConfig(**shape, activation="gelu", pos_encoding="learned",
                                              qk_norm=False, init_std_rule="gpt2")),
        "reference": lambda: RefGPT(context_len, n_layer),
    }
    return {name: builders[name]() for name in names}


def summary_line(ms: dict[str, float], rate: dict[str, float]) -> str:
    """The machine-readable last line: per model ms/step and tokens/s, then the ratios of tokens/s."""
    parts = [f"{name}_ms={ms[name]:.2f} {name}_tok_s={rate[name]:.1f}" for name in ms]
    pairs = {"ratio_ours_ref": ("ours", "reference"), "ratio_refarch_ref": ("ours_refarch", "reference"),
             "ratio_ours_refarch": ("ours", "ours_refarch")}
    parts += [f"{key}={rate[a] / rate[b]:.3f}" for key, (a, b) in pairs.items() if a in rate and b in rate]
    return " ".join(parts)


# ---- timing ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--steps", type=int, help="timed steps per model (cpu 3, cuda 20)")
    p.add_argument("--warmup", type=int, help="untimed steps per model first (cpu 1, cuda 5)")
    p.add_argument("--batch", type=int, help="sequences per step (cpu 2, cuda 12)")
    p.add_argument("--seq", type=int, help="tokens per sequence (cpu 128, cuda 1024)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile both models (default: on for cuda, off for cpu)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                   help="bf16 = autocast on cuda (default there); fp32 on cpu")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated subset of {','.join(MODELS)} (default: all)")
    p.add_argument("--n-layer", type=int, default=N_LAYER,
                   help=f"blocks per model (default {N_LAYER}, the GPT-2 124M shape; fewer for a smoke run)")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models or len(set(args.models)) != len(args.models):
        p.error(f"--models takes distinct names from {','.join(MODELS)}, got {','.join(args.models) or 'none'}")
    if args.n_layer < 1:
        p.error(f"--n-layer must be >= 1, got {args.n_layer}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device == "cuda"
    defaults = dict(steps=20, warmup=5, batch=12, seq=1024) if cuda else dict(steps=3, warmup=1, batch=2, seq=128)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.compile is None:
        args.compile = cuda
    if args.dtype == "auto":
        args.dtype = "bf16" if cuda else "fp32"
    if args.dtype == "bf16" and not cuda:
        p.error("--dtype bf16 is only supported with --device cuda")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    context_len = max(args.seq, 1024)
    models = {name: m.to(device) for name, m in build_models(args.models, context_len, args.n_layer).items()}
    fused = device.type == "cuda"  # the fused AdamW kernel is CUDA-only
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=3e-4, weight_decay=0.01, fused=fused)
                  for name, m in models.items()}
    steppers = {name: torch.compile(m) if args.compile else m for name, m in models.items()}

    idx = torch.randint(0, VOCAB, (args.batch, args.seq + 1), device=device)
    inputs, targets = idx[:, :-1], idx[:, 1:]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.dtype == "bf16"
                else contextlib.nullcontext())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step(name: str) -> float:
        """One forward/backward/AdamW step; returns its wall time in seconds."""
        sync()
        start = time.perf_counter()
        with autocast:
            _, loss = steppers[name](inputs, targets)
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)
        sync()
        assert math.isfinite(loss.item()), f"{name}: loss is not finite"
        return time.perf_counter() - start

    gpu = f" gpu={torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"device={device}{gpu} torch={torch.__version__} dtype={args.dtype} compile={args.compile} "
          f"batch={args.batch} seq={args.seq} n_layer={args.n_layer} steps={args.steps} (+{args.warmup} warm-up) "
          f"threads={torch.get_num_threads()}")
    for name, m in models.items():
        print(f"  {name:12s} params={sum(p.numel() for p in m.parameters()) / 1e6:.1f}M")
    for _ in range(args.warmup):
        for name in models:
            train_step(name)
    elapsed = dict.fromkeys(models, 0.0)
    for _ in range(args.steps):  # alternate so that drift in machine load hits both alike
        for name in models:
            elapsed[name] += train_step(name)

    tokens = args.steps * args.batch * args.seq
    rate = {name: tokens / seconds for name, seconds in elapsed.items()}
    ms = {name: seconds / args.steps * 1e3 for name, seconds in elapsed.items()}
    for name in models:
        print(f"  {name:12s} {rate[name]:10.1f} tokens/s  ({ms[name]:.1f} ms/step)")
    for a, b in (("ours", "reference"), ("ours_refarch", "reference"), ("ours", "ours_refarch")):
        if a in rate and b in rate:
            print(f"ratio {a}/{b} = {rate[a] / rate[b]:.3f}")
    if device.type == "cuda" and "ours" in rate and "reference" in rate:
        ratio = rate["ours"] / rate["reference"]
        print(f"goal ours/reference >= {GOAL_RATIO}: {'met' if ratio >= GOAL_RATIO else 'NOT met'} ({ratio:.3f})")
    if device.type == "cuda" and "ours" in ms and args.batch * args.seq == ANCHOR_TOKENS:
        print(f"nanoGPT's H100 anchor ({ANCHOR_MS} ms/step at 12 x 1024 tokens) / ours = {ANCHOR_MS / ms['ours']:.3f}"
              f" (a figure from another machine: the side-by-side ratio above is the measurement)")
    print(summary_line(ms, rate))


if __name__ == "__main__":
    main()
