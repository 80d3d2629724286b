"""Time of one optimizer step per optimizer, relative to AdamW, at the GPT-2 160M shapes.

Parameters only (no forward/backward): 12 blocks of attention q, k, v, o (768 x 768) and an FFN
of width 3072 (up 3072 x 768, down 768 x 3072), token embedding and untied head of
50304 x 768, with fixed random gradients. Optimizers take turns step by step so that machine
noise hits all alike; the median step time of each is divided by AdamW's.

    python benchmarks/optimizer_step.py --layers 2           # CPU: ~2 minutes on 2 idle cores
    python benchmarks/optimizer_step.py --device cuda        # if a GPU is available

On CPU Newton-Schulz runs in fp32 by default (--ns-dtype): this CPU family has no bf16 matmul
units and bf16 matmuls measured 20x slower than fp32. A Muon step at 12 layers is ~1.6 TFLOP of
Newton-Schulz, minutes on 2 cores: use --layers to time a slice (embeddings stay full size).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from specsweep.optim import build_optimizer  # noqa: E402

VOCAB, D_MODEL, FFN_WIDTH, N_LAYER = 50304, 768, 3072, 12


def make_params(n_layer: int, device: torch.device) -> nn.Module:
    """A parameter-only module with the contract's names and the 160M shapes."""
    model = nn.Module()
    model.wte = nn.Embedding(VOCAB, D_MODEL)
    model.blocks = nn.ModuleList()
    for _ in range(n_layer):
        block = nn.Module()
        block.attn = nn.Module()
        for name in ("q", "k", "v", "o"):
            setattr(block.attn, name, nn.Linear(D_MODEL, D_MODEL, bias=False))
        block.ffn = nn.Module()
        block.ffn.up = nn.Linear(D_MODEL, FFN_WIDTH, bias=False)
        block.ffn.down = nn.Linear(FFN_WIDTH, D_MODEL, bias=False)
        model.blocks.append(block)
    model.lm_head = nn.Linear(D_MODEL, VOCAB, bias=False)
    model.to(device)
    g = torch.Generator(device=device).manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, device=device, generator=g) * 1e-3
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per optimizer (after 1 warm-up)")
    parser.add_argument("--layers", type=int, default=N_LAYER)
    parser.add_argument("--ns-dtype", default=None, help="Muon/NorMuon NS dtype (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--optimizers", default="adamw,muon,normuon,dion-r0.5,dion-r0.0625,lion")
    args = parser.parse_args()
    device = torch.device(args.device)
    ns_dtype = args.ns_dtype or ("bfloat16" if device.type == "cuda" else "float32")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    # one set of parameters and gradients shared by all optimizers (each keeps its own state):
    # the weights drift under several optimizers, which does not change the cost of a step
    model = make_params(args.layers, device)
    runs = {}
    for label in args.optimizers.split(","):
        name, _, rank = label.partition("-r")
        hparams = {"rank_fraction": float(rank)} if rank else {}
        if name in ("muon", "normuon"):
            hparams["ns_dtype"] = ns_dtype
        runs[label] = build_optimizer(model, name, **hparams)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"device {device}, {args.layers} layers, {n_params / 1e6:.1f}M parameters, "
          f"NS dtype {ns_dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}")

    times: dict[str, list[float]] = {label: [] for label in runs}
    for it in range(args.steps + 1):
        for label, bundle in runs.items():
            sync()
            start = time.perf_counter()
            bundle.step()
            sync()
            if it > 0:  # the first step allocates state
                times[label].append(time.perf_counter() - start)
    base = statistics.median(times["adamw"]) if "adamw" in times else None
    print(f"{'optimizer':<14}{'median step':>14}{'vs adamw':>10}")
    for label, ts in times.items():
        t = statistics.median(ts)
        ratio = f"{t / base:8.2f}x" if base else "      -"
        print(f"{label:<14}{t * 1e3:11.1f} ms{ratio:>10}")


if __name__ == "__main__":
    main()
