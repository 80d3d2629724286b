"""What a planned run will cost before anything runs (``sweep.plan``): compute, disk, telemetry.

Every figure is an estimate with a stated basis:

- throughput: ``plan.tokens_per_s`` (training tokens per second per GPU) when given; else a measured
  anchor, nanoGPT's GPT-2 124M at about 393k tokens/s on one H100 (bf16, torch.compile, 12 x 1024
  tokens per step: 31.2 ms; infra-facts.md), scaled by training FLOPs per token (6 x matrix
  parameters + 12 x layers x d_model x context for attention); jobs without a GPU use CPU_ANCHOR
  (measured on the mini grid). Data-parallel ranks are assumed to
  scale linearly, so GPU-hours do not depend on the GPU count; the optimizer step itself
  (Newton-Schulz, Dion's power iteration: under 1% of a 524k-token step's FLOPs) is left out;
- evaluation: a forward pass, a third of a training token's FLOPs, over its tokens at every eval;
- checkpoints: fp32 weights plus the optimizer state of each parameter role (``state_bytes``),
  times ``train.keep_checkpoints`` (what stays on disk after the run);
- spectra: telemetry records x RECORD_BYTES (a spectra.jsonl line);
- checkpoint writes: every ``train.ckpt_every`` steps, at the profile's write rate (in the wall time);
- telemetry time: ``metrics.costmodel.estimate_run`` (GPU jobs only) with its H100 profile, or with
  a calibration file measured on the machine (``plan.calibration=FILE``, benchmarks/gpu_check.sh),
  whose measured throughput (``ours_tok_s`` at the anchor's shape) then replaces the anchor; with
  ``train.compile`` the telemetry steps' eager cost and the checkpoints' drains are counted.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from specsweep.metrics.costmodel import H100, DeviceProfile, ModelShape, RunTelemetryCost, estimate_run
from specsweep.metrics.schedule import checkpoint_steps, event_steps, spectrum_steps
from specsweep.models import GPT, GPTConfig
from specsweep.optim.dion import dion_rank, transposes
from specsweep.optim.routing import role_of
from specsweep.sweep.data.hub_bins import is_hub_bins
from specsweep.sweep.data.prepared import META_FILE
from specsweep.sweep.data.spec import DEFAULT_BPE_VOCAB
from specsweep.sweep.data.tokenizer import ByteTokenizer, TiktokenTokenizer
from specsweep.sweep.grid.spec import RunSpec

ANCHOR_TOKENS_PER_S = 393_000.0
ANCHOR_MODEL = GPTConfig(vocab_size=50_304, n_layer=12, n_head=12, d_model=768, context_len=1024, ffn_mult=4)
ANCHOR = ("nanoGPT GPT-2 124M, about 393k tokens/s on one H100 (bf16, torch.compile, 12 x 1024 tokens "
          "per step; infra-facts.md), scaled by training FLOPs per token")
# A CPU job (resources without GPUs): conf/sweep/mini.yaml's runs trained at about 20 GFLOP/s by the
# FLOPs/token count below (gpt-mini 4 x 64, D = 64..512: 6.6k-11k tokens/s on one thread of this
# project's 2-core machine, shared with other jobs).
CPU_FLOPS_PER_S = 20e9
CPU_ANCHOR = ("conf/sweep/mini.yaml's runs, about 20 GFLOP/s on one thread of a shared 2-core machine "
              "(6.6k-11k tokens/s), scaled by training FLOPs per token")
# One spectra.jsonl line: 502 bytes measured with the 4 default Rényi orders; about 20 more per order.
RECORD_BYTES = 520
WEIGHT_BYTES = 4  # fp32 master weights in every checkpoint


def train_flops_per_token(model: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token of ``model`` at context ``seq_len`` (metrics.costmodel's formula)."""
    return ModelShape(n_layer=model.n_layer, d_model=model.d_model, ffn_width=model.ffn_hidden_dim,
                      vocab=model.vocab_size, gated=model.gated, seq_len=seq_len).flops_per_token()


def anchor_tokens_per_s(model: GPTConfig, seq_len: int) -> float:
    """The anchor's tokens/s per GPU scaled to ``model`` by FLOPs per token."""
    anchor = train_flops_per_token(ANCHOR_MODEL, ANCHOR_MODEL.context_len)
    return ANCHOR_TOKENS_PER_S * anchor / train_flops_per_token(model, seq_len)


def _prepared_vocab(data) -> Optional[int]:
    """The vocabulary of an already prepared data folder (its meta.json), else None."""
    meta = Path(data.path).expanduser() / META_FILE if data.path and "???" not in str(data.path) else None
    try:
        return int(json.loads(meta.read_text())["vocab_size"]) if meta is not None and meta.is_file() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _indexes_bins(data) -> bool:
    """Whether preparing ``data`` indexes existing .bin shards (hub or local) rather than tokenizing text."""
    src = data.source or data.path
    if not src or str(src).startswith("hf:"):
        return False
    if is_hub_bins(src):
        return True
    p = Path(str(src)).expanduser()
    return p.suffix == ".bin" or (p.is_dir() and any(p.glob("*.bin")))


def planned_vocab(spec: RunSpec) -> int:
    """The vocabulary the run's model will have: model.vocab_size, else what its data's tokenizer gives."""
    if not spec.vocab_from_data:
        return spec.model.vocab_size
    data = spec.data
    if data.kind == "synthetic":
        return int(data.vocab_size or 512)
    tokenizer = data.tokenizer or ("byte" if data.kind == "text" else "gpt2")
    if data.kind == "shards":
        prepared = _prepared_vocab(data)
        if prepared is not None:
            return prepared
        if data.vocab_size and tokenizer in ("gpt2", "byte") and _indexes_bins(data):
            return int(data.vocab_size)  # existing shards indexed with counts of this length (GPT-2 padded: 50,304)
    if tokenizer == "gpt2":
        return TiktokenTokenizer().vocab_size  # known without loading the vocabulary
    if tokenizer == "byte":
        return ByteTokenizer().vocab_size
    return int(data.vocab_size or DEFAULT_BPE_VOCAB)


def _other_state(optimizer: str, role: str, hparams: dict) -> int:
    """Optimizer-state bytes per element of a non-matrix parameter."""
    if optimizer == "adamw":
        return 8  # exp_avg, exp_avg_sq (fp32)
    if role == "scalar" and hparams.get("scalar_optimizer") == "adamw":
        return 8
    if optimizer == "dion" and hparams.get("state_dtype") in ("bfloat16", "float16"):
        return 2  # Dion's Lion momentum in its state dtype (the paper's mixed precision)
    return 4  # Lion's exp_avg (fp32): embeddings, head, scalars of muon/normuon, everything of lion


@functools.lru_cache(maxsize=64)
def _parameters(fields: tuple) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """(name, shape, optimizer role) of every parameter of the GPT with these config fields, built
    on the meta device (no memory, no init work; cached: the widths of a grid repeat)."""
    with torch.device("meta"):
        net = GPT(GPTConfig(**dict(fields)))
    return tuple((name, tuple(p.shape), role_of(name, p)) for name, p in net.named_parameters())


def state_bytes(model: GPTConfig, optimizer: str, hparams: dict) -> tuple[int, int]:
    """(parameter count, optimizer-state bytes) of ``model`` trained with ``optimizer``.

    Built on the meta device (no memory, no init work): block matrices take AdamW's two fp32
    moments, Muon's fp32 momentum, NorMuon's momentum and per-row second moment, or Dion's momentum
    and Q (n x r, or m x r for a wide matrix it transposes; r = ceil(rank_fraction * min(m, n))) in
    its state dtype; the rest Lion's one moment.
    """
    n_params, total = 0, 0
    dion_dtype = hparams.get("state_dtype")
    dion_elem = 2 if dion_dtype in ("bfloat16", "float16") else 4
    for name, shape, role in _parameters(tuple((f.name, getattr(model, f.name)) for f in dataclasses.fields(model))):
        n = math.prod(shape)
        n_params += n
        if role != "matrix" or optimizer in ("adamw", "lion"):
            total += n * (_other_state(optimizer, role, hparams) if optimizer != "lion" else 4)
        elif optimizer == "muon":
            total += n * 4
        elif optimizer == "normuon":
            total += n * 4 + shape[0] * 4
        elif optimizer == "dion":
            r = dion_rank(shape, float(hparams.get("rank_fraction", 0.0625)))
            side = shape[0] if transposes(shape, hparams.get("transpose_wide", True)) else shape[1]
            total += (n + side * r) * dion_elem
        else:  # an optimizer registered later: assume two fp32 moments
            total += n * 8
    return n_params, total


def _n_evals(steps: int, every: int, at_start: bool) -> int:
    return len({s for s in range(every, steps + 1, every)} | {steps}) + int(at_start)


@dataclass
class RunEstimate:
    """Estimated cost of one run: ``ranks`` data-parallel GPUs, or one CPU job (``gpu`` False)."""

    gpu: bool
    ranks: int
    micro_batch: int               # sequences per rank per forward
    grad_accum: int                # micro-batches per step on ``ranks`` ranks
    tokens_per_step: int
    tokens: int                    # training tokens of the whole run
    vocab: int
    params: int
    tokens_per_s: float            # per GPU (per CPU job)
    train_s: float                 # wall seconds on ``ranks`` GPUs
    eval_s: float
    n_evals: int
    events: int                    # telemetry events, and how many of them carry full spectra
    spectrum_events: int
    telemetry: Optional[RunTelemetryCost]  # the cost model's estimate (GPU jobs only: an H100 or calibrated profile)
    checkpoint_bytes: int          # one checkpoint
    kept_checkpoint_bytes: int     # train.keep_checkpoints of them
    spectra_records: int
    spectra_bytes: int
    ckpt_s: float = 0.0            # checkpoint writes over the run

    @property
    def wall_s(self) -> float:
        return self.train_s + self.eval_s + self.ckpt_s + (self.telemetry.telemetry_s if self.telemetry else 0.0)

    @property
    def device_hours(self) -> float:
        """GPU-hours (all ranks) of a GPU job; hours of a CPU job."""
        return self.wall_s * self.ranks / 3600.0

    def as_dict(self) -> dict[str, Any]:
        tel = self.telemetry
        return {
            "device": "gpu" if self.gpu else "cpu", "ranks": self.ranks, "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum, "tokens_per_step": self.tokens_per_step, "tokens": self.tokens,
            "vocab": self.vocab, "params": self.params, "tokens_per_s": round(self.tokens_per_s, 1),
            "train_hours": self.train_s / 3600, "eval_hours": self.eval_s / 3600, "n_evals": self.n_evals,
            "gpu_hours": self.device_hours if self.gpu else 0.0, "device_hours": self.device_hours,
            "wall_hours": self.wall_s / 3600,
            "checkpoint_bytes": self.checkpoint_bytes, "kept_checkpoint_bytes": self.kept_checkpoint_bytes,
            "spectra_records": self.spectra_records, "spectra_bytes": self.spectra_bytes,
            "telemetry": {
                "events": self.events, "spectrum_events": self.spectrum_events,
                "hard_rank_only_events": self.events - self.spectrum_events,
                **({} if tel is None else {
                    "spectrum_every": tel.spectrum_every, "decompose_on": tel.decompose_on,
                    "seconds": tel.telemetry_s, "share_of_wall_time": tel.share, "reason": tel.reason}),
            } if self.events else None,
        }


def default_tokens_per_s(model: GPTConfig, seq_len: int, gpu: bool) -> float:
    """The anchor's rate scaled to ``model``: ANCHOR on a GPU, CPU_ANCHOR in a CPU job."""
    if gpu:
        return anchor_tokens_per_s(model, seq_len)
    return CPU_FLOPS_PER_S / train_flops_per_token(model, seq_len)


def estimate(spec: RunSpec, ranks: int, tokens_per_s: Optional[float] = None, gpu: bool = True,
             calibration: Optional[DeviceProfile] = None) -> RunEstimate:
    """Estimate one validated run on ``ranks`` GPUs, or as one CPU job (``gpu`` False);
    ``tokens_per_s``: measured training tokens/s per GPU (per CPU job), None: the anchor, or the
    calibration's measured rate; ``calibration``: the profile measured on the machine (None: H100)."""
    t, tel = spec.train.split(ranks), spec.telemetry
    vocab = planned_vocab(spec)
    model = spec.model_config(vocab)
    tokens_per_step = t.sequences_per_step * t.seq_len
    prof = calibration or H100
    measured = (calibration.measured.get("ours_tok_s") if calibration is not None and gpu else None)
    if not tokens_per_s and measured:  # ours at the anchor's shape, measured there: scaled by FLOPs
        tokens_per_s = float(measured) * anchor_tokens_per_s(model, t.seq_len) / ANCHOR_TOKENS_PER_S
    tps = float(tokens_per_s) if tokens_per_s else default_tokens_per_s(model, t.seq_len, gpu)
    step_s = tokens_per_step / (tps * ranks)
    n_evals = _n_evals(t.steps, t.eval_every, t.eval_at_start)
    eval_tokens = spec.data.eval_tokens or t.eval_batches * t.batch_size * t.seq_len
    eval_s = n_evals * eval_tokens / (3.0 * tps * ranks)
    params, opt_bytes = state_bytes(model, spec.optimizer.name, spec.optimizer.hparams)
    ckpt = params * WEIGHT_BYTES + opt_bytes
    cost, events, spectra = None, 0, 0
    if tel.enabled:
        sites = len(tel.sites)
        rows = (tokens_per_step * tel.subsample if tel.tokens == "train"
                else tel.probe_batches * t.batch_size * t.seq_len)
        shape = ModelShape(n_layer=model.n_layer, d_model=model.d_model, ffn_width=model.ffn_hidden_dim,
                           vocab=vocab, sites=sites, buckets=bool(tel.buckets), gated=model.gated, seq_len=t.seq_len)
        if gpu:
            cost = estimate_run(
                shape, t.steps, tel.every, max(1, math.ceil(rows)), step_seconds=step_s, device=prof, ranks=ranks,
                decompose_on=tel.decompose_on, spectrum_every=tel.spectrum_every, max_in_flight=tel.max_in_flight,
                ckpt_every=t.ckpt_every, micro_batch_rows=(t.batch_size // ranks) * t.seq_len,
                compile=bool(t.compile) and tel.tokens == "train", ckpt_bytes=ckpt, other_s=eval_s,
            )
            events, spectra = cost.n_events, cost.n_spectrum_events
        else:  # "auto" is decided at run time from the machine: counted as a spectrum at every event
            k = tel.spectrum_every if isinstance(tel.spectrum_every, int) else 1
            events, spectra = len(event_steps(t.steps, tel.every)), len(spectrum_steps(t.steps, tel.every, k))
    if cost is not None:  # the cost model's checkpoint writes: the plan's wall time and the telemetry share agree
        ckpt_s = cost.ckpt_s
    else:
        n_ckpts = len(checkpoint_steps(t.steps, t.ckpt_every)) if t.ckpt_every else 1
        ckpt_s = n_ckpts * ckpt / prof.ckpt_bytes_per_s if gpu else 0.0
    records = events * model.n_layer * len(tel.sites) * (4 if tel.buckets else 1)
    return RunEstimate(
        gpu=gpu, ranks=ranks, micro_batch=t.batch_size // ranks, grad_accum=t.grad_accum,
        tokens_per_step=tokens_per_step, tokens=t.steps * tokens_per_step, vocab=vocab, params=params,
        tokens_per_s=tps, train_s=t.steps * step_s, eval_s=eval_s, n_evals=n_evals, events=events,
        spectrum_events=spectra, telemetry=cost, checkpoint_bytes=ckpt, kept_checkpoint_bytes=ckpt * t.keep_checkpoints,
        spectra_records=records, spectra_bytes=records * RECORD_BYTES, ckpt_s=ckpt_s,
    )
