"""Telemetry on vs off, same model and data, measured side by side in one run.

Blocks of `--every` training steps alternate between telemetry off and on (the order flips each
round to cancel drift); an "on" block ends with one telemetry event: capture over every
micro-batch of the step, then snapshot + finalize (inline, or in a background thread). Both modes
replay the same batches. Prints the overhead ratio, the added milliseconds per event and their
breakdown; on CUDA also peak extra GPU memory.

    python benchmarks/telemetry_overhead.py                       # CPU, tiny GPT, every 10 steps
    python benchmarks/telemetry_overhead.py --device cuda         # GPT-2 160M shape, D = 3072,
                                                                  # 524k tokens/step, cadence 100
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metrics import BackgroundFinalizer, attach_probes, frequency_buckets  # noqa: E402


@dataclass
class Shape:
    n_layer: int
    n_head: int
    d_model: int
    ffn_mult: int
    vocab: int
    seq: int
    micro_batch: int  # sequences per micro-batch
    micro_steps: int  # micro-batches per optimizer step


SHAPES = {
    "tiny": Shape(n_layer=4, n_head=4, d_model=64, ffn_mult=4, vocab=512, seq=64, micro_batch=8, micro_steps=2),
    # GPT-2 160M as in the paper: 12 x 768, D = 3072, 1024 x 512 = 524,288 tokens per step
    "gpt2_160m": Shape(
        n_layer=12, n_head=12, d_model=768, ffn_mult=4, vocab=50304, seq=512, micro_batch=32, micro_steps=32
    ),
}


class _StandInBlock(nn.Module):
    """Used only when models.GPT does not import: causal attention + ReLU² FFN, contract names."""

    def __init__(self, d: int, n_head: int, width: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.ffn = nn.Module()
        self.ffn.up = nn.Linear(d, width, bias=False)
        self.ffn.down = nn.Linear(width, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(F.rms_norm(x, (d,))).view(b, s, 3, self.n_head, d // self.n_head).unbind(2)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.o(att.transpose(1, 2).reshape(b, s, d))
        return x + self.ffn.down(F.relu(self.ffn.up(F.rms_norm(x, (d,)))).square())


class _StandInGPT(nn.Module):
    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.wte = nn.Embedding(shape.vocab, shape.d_model)
        self.blocks = nn.ModuleList(
            _StandInBlock(shape.d_model, shape.n_head, shape.ffn_mult * shape.d_model) for _ in range(shape.n_layer)
        )
        self.lm_head = nn.Linear(shape.d_model, shape.vocab, bias=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor):
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(F.rms_norm(x, (x.shape[-1],)))
        return logits, F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def build_model(shape: Shape) -> tuple[nn.Module, str]:
    try:
        from models import GPT, GPTConfig

        cfg = GPTConfig(
            vocab_size=shape.vocab, n_layer=shape.n_layer, n_head=shape.n_head, d_model=shape.d_model,
            context_len=shape.seq, ffn_mult=shape.ffn_mult,
        )
        return GPT(cfg), "models.GPT"
    except Exception as exc:  # written in parallel by another engineer
        print(f"models.GPT unavailable ({type(exc).__name__}: {exc}); using the stand-in model")
        return _StandInGPT(shape), "stand-in"


def zipf_probs(vocab: int, exponent: float = 1.1) -> torch.Tensor:
    p = 1.0 / np.arange(1, vocab + 1) ** exponent
    return torch.from_numpy(p / p.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--shape", default=None, choices=tuple(SHAPES), help="default: tiny on cpu, gpt2_160m on cuda")
    ap.add_argument("--every", type=int, default=None, help="steps per telemetry event (default 10 cpu, 100 cuda)")
    ap.add_argument("--rounds", type=int, default=None, help="off/on block pairs measured (default 4 cpu, 1 cuda)")
    ap.add_argument("--finalize", default="inline", choices=("inline", "thread"))
    ap.add_argument("--min-bucket-rows", type=int, default=None, help="default 100 on cpu (tiny batch), 1000 on cuda")
    ap.add_argument("--accum-dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--bf16-matmul", action="store_true", help="CUDA: bf16 GEMM inputs, fp32 output")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default 1 on cpu: OpenMP spin-waits ruin timings on a busy host)")
    args = ap.parse_args()

    cuda = args.device == "cuda"
    shape = SHAPES[args.shape or ("gpt2_160m" if cuda else "tiny")]
    every = args.every or (100 if cuda else 10)
    rounds = args.rounds or (1 if cuda else 4)
    min_rows = args.min_bucket_rows or (1000 if cuda else 100)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if args.threads or not cuda:
        torch.set_num_threads(args.threads or 1)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # what training scripts do; the probe turns it off
        torch.backends.cudnn.allow_tf32 = True

    model, model_kind = build_model(shape)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    probs = zipf_probs(shape.vocab)
    # "corpus" counts from a large sample of the same distribution -> HEAD/MID/TAIL table
    gen = torch.Generator().manual_seed(args.seed)
    corpus = torch.multinomial(probs, 2_000_000, replacement=True, generator=gen)
    table = frequency_buckets(np.bincount(corpus.numpy(), minlength=shape.vocab))
    probe = attach_probes(
        model, bucket_of_token=table, min_bucket_rows=min_rows,
        accum_dtype=getattr(torch, args.accum_dtype), bf16_matmul=args.bf16_matmul,
    )
    finalizer = BackgroundFinalizer("thread") if args.finalize == "thread" else None
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext

    def make_step_batches(n_steps: int) -> list[list[torch.Tensor]]:
        steps = []
        for _ in range(n_steps):
            toks = torch.multinomial(
                probs, shape.micro_steps * shape.micro_batch * (shape.seq + 1), replacement=True, generator=gen
            ).view(shape.micro_steps, shape.micro_batch, shape.seq + 1)
            steps.append([t.to(device) for t in toks])  # micro-batches [b, S + 1]
        return steps

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def train_step(micro: list[torch.Tensor], telemetry: bool) -> None:
        ctx = probe.capturing() if telemetry else contextlib.nullcontext()
        with ctx:
            for tokens in micro:
                idx, tgt = tokens[:, :-1], tokens[:, 1:]
                probe.set_tokens(idx)  # no-op outside capturing()
                with autocast():
                    _, loss = model(idx, tgt)
                (loss / len(micro)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    event = {"capture_s": [], "step_off_s": [], "finalize_s": [], "critical_s": [], "records": None,
             "peak_on": [], "peak_off": []}

    def run_block(batches: list, telemetry: bool, step0: int) -> float:
        sync()
        t_block = time.perf_counter()
        for i, micro in enumerate(batches):
            last = i == len(batches) - 1
            if cuda and last:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            train_step(micro, telemetry and last)
            sync()
            t1 = time.perf_counter()
            if telemetry and last:
                event["capture_s"].append(t1 - t0)
                if finalizer is None:
                    records = probe.compute(step0 + i)
                    sync()
                    event["finalize_s"].append(time.perf_counter() - t1)
                    event["records"] = records
                else:
                    finalizer.submit(probe.snapshot(step0 + i, device="cpu"))
                    sync()
                event["critical_s"].append(time.perf_counter() - t1)
                if cuda:
                    event["peak_on"].append(torch.cuda.max_memory_allocated() - base)
            else:
                event["step_off_s"].append(t1 - t0)  # every step without an event, both modes
                if cuda:
                    event["peak_off"].append(torch.cuda.max_memory_allocated() - base)
        sync()
        return time.perf_counter() - t_block

    print(f"model={model_kind} shape={shape} device={device} every={every} rounds={rounds} "
          f"finalize={args.finalize} accum={args.accum_dtype} threads={torch.get_num_threads()}")
    # warm-up: one plain block and one event (allocator, LAPACK and autograd first-call costs)
    warm = make_step_batches(2)
    run_block(warm, False, 0)
    run_block(warm, True, 0)
    if finalizer is not None:
        finalizer.drain()
    for key in event:
        event[key] = [] if key != "records" else None

    total = {False: 0.0, True: 0.0}
    step = 0
    for r in range(rounds):
        batches = make_step_batches(every)
        for telemetry in ((False, True) if r % 2 == 0 else (True, False)):
            total[telemetry] += run_block(batches, telemetry, step)
        step += every
    wait_s = 0.0
    if finalizer is not None:
        t = time.perf_counter()
        drained = finalizer.drain()
        wait_s = time.perf_counter() - t
        event["records"] = drained[-1]
        finalizer.close()

    n_events = rounds
    steps_off = rounds * every
    off_ms = 1e3 * total[False] / steps_off
    added_ms = 1e3 * (total[True] - total[False]) / n_events
    step_ms = 1e3 * statistics.median(event["step_off_s"])
    capture_extra_ms = 1e3 * statistics.median(event["capture_s"]) - step_ms
    critical_ms = 1e3 * statistics.median(event["critical_s"])
    robust_added_ms = capture_extra_ms + critical_ms
    records = event["records"]
    statuses = {}
    for rec in records:
        statuses[rec["status"]] = statuses.get(rec["status"], 0) + 1
    print(f"records per event: {len(records)} (layers x sites x buckets); statuses {statuses}")
    what = "snapshot+finalize" if finalizer is None else "snapshot (critical path)"
    print(f"step time without an event: median {step_ms:.1f} ms (block mean, telemetry off: {off_ms:.1f} ms)")
    print(f"overhead ratio at cadence {every}, block totals: {total[True] / total[False]:.4f}  "
          f"(on {total[True]:.2f} s / off {total[False]:.2f} s, {steps_off} steps each; "
          f"added {added_ms:.1f} ms per event)")
    print(f"overhead ratio at cadence {every}, from medians: {1 + robust_added_ms / (every * step_ms):.4f}  "
          f"(added per event {robust_added_ms:.1f} ms = capture in the step {capture_extra_ms:.1f} ms"
          f" + {what} {critical_ms:.1f} ms)")
    if finalizer is not None:
        print(f"background finalize still pending at the end: waited {1e3 * wait_s:.1f} ms")
    if every != 100:
        print(f"projected overhead at a 100-step cadence (medians): {robust_added_ms / (100 * step_ms):.2%}")
    state = sum(p.numel() * p.element_size() for acc in probe.collector.acc.values()
                for p in (acc.m2, acc.mean) if p is not None)
    d = next(iter(probe.collector.acc.values())).dim
    n_acc = len(probe.collector.acc)
    print(f"accumulator state: {n_acc} x D^2 (D={d}) = {n_acc * d * d * 4 / 2**20:.1f} MiB fp32 while capturing"
          f" (now {state / 2**20:.1f} MiB after reset)")
    if cuda:
        extra = max(event["peak_on"]) - max(event["peak_off"])
        print(f"peak GPU memory of a telemetry step above a plain step: {extra / 2**20:.0f} MiB")
    sample = next(r for r in records if r["status"] == "ok")
    print("sample record:", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in sample.items()})


if __name__ == "__main__":
    main()
