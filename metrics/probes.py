"""Probes: capture FFN pre/post-activation covariances of any nn.Module by module-name patterns.

Usage in a training loop (gradient accumulation included)::

    probe = attach_probes(model, bucket_of_token=buckets)        # no hooks yet
    if telemetry_step:
        with probe.capturing():                                   # hooks on
            for idx, targets in micro_batches:
                probe.set_tokens(idx)                             # before every forward
                loss = model(idx, targets)[1]; loss.backward()
        records = probe.compute(step)                             # or snapshot() + finalize
    probe.detach()

At scale, hand the probe's collector to `metrics.pipeline.EventPipeline` instead of compute():
rank-sharded pooling, hard ranks at every event, bounded asynchronous decomposition, costs.

Hooks exist only inside `capturing()`, so ordinary steps pay nothing.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from specsweep.metrics.buckets import BUCKETS
from specsweep.metrics.collector import SpectrumCollector, bucket_order
from specsweep.metrics.records import finalize_snapshot
from specsweep.metrics.buckets import SITES
from specsweep.metrics.snapshot import TelemetryOptions, TelemetrySnapshot
from specsweep.metrics.spectral import DEFAULT_RENYI_ALPHAS

# Ordered by preference: a gated FFN's pre-activation site is its gate branch.
DEFAULT_PRE_PATTERNS: tuple[str, ...] = ("*blocks.*.ffn.gate", "*blocks.*.ffn.up")
DEFAULT_POST_PATTERNS: tuple[str, ...] = ("*blocks.*.ffn.down",)

_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def _match_layers(model: nn.Module, patterns: Sequence[str]) -> dict[int, tuple[str, nn.Module]]:
    """layer index -> (name, module), the layer index being the first integer in the module name.

    Where several modules of one layer match, the earliest pattern wins (gate before up).
    """
    found: dict[int, tuple[int, str, nn.Module]] = {}
    unnumbered = 0
    for name, module in model.named_modules():
        for rank, pattern in enumerate(patterns):
            if fnmatch.fnmatchcase(name, pattern):
                m = _LAYER_INDEX.search(name)
                if m is not None:
                    layer = int(m.group(1))
                else:
                    layer, unnumbered = unnumbered, unnumbered + 1
                if layer not in found or rank < found[layer][0]:
                    found[layer] = (rank, name, module)
                break
    return {layer: (name, module) for layer, (_, name, module) in sorted(found.items())}


class FFNProbe:
    """Covariance probes at the pre (module output) and post (module input) sites of every layer.

    Args:
        model: any module; sites are found by fnmatch patterns on `named_modules()` names.
        pre_patterns: modules whose forward OUTPUT is the pre-activation (first match per layer wins).
        post_patterns: modules whose forward INPUT is the post-activation.
        sites: which of ("pre", "post") to capture.
        bucket_of_token: per-vocab-id bucket array (metrics.buckets); None = global records only.
        min_bucket_rows: HEAD/MID/TAIL records with fewer rows are flagged (paper: 1000).
        subsample: fraction of sequences kept per batch (same rows for pre and post); 1 = all.
        seed: seed of the subsampling generator.
        renyi_alphas, keep_eigenvalues, paper_eps: see metrics.snapshot.TelemetryOptions.
        accum_dtype: float32 (default policy) or float64.
        bf16_matmul: None (default) = bf16 GEMM inputs with fp32 output on CUDA, exact fp32 on CPU;
            False forces IEEE fp32 (see CovarianceAccumulator).
        gram_below_dim: keep rows while n < D and decompose the n×n Gram matrix then.
        limit_bucket_rows: allow `set_tokens(..., bucket_rows=k)`: only the first k sequences of a
            forward go into HEAD/MID/TAIL, the others into the global covariance only.
    Activations must be laid out [B, S, D] (or [B·S, D]) in the same order as the ids passed to
    `set_tokens`; rows are labelled by the INPUT token id's bucket.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        pre_patterns: Sequence[str] = DEFAULT_PRE_PATTERNS,
        post_patterns: Sequence[str] = DEFAULT_POST_PATTERNS,
        sites: Sequence[str] = SITES,
        bucket_of_token: np.ndarray | torch.Tensor | None = None,
        min_bucket_rows: int = 1000,
        subsample: float = 1.0,
        seed: int = 0,
        renyi_alphas: Sequence[float] = DEFAULT_RENYI_ALPHAS,
        keep_eigenvalues: bool = False,
        paper_eps: bool = False,
        accum_dtype: torch.dtype = torch.float32,
        bf16_matmul: bool | None = None,
        gram_below_dim: bool = True,
        limit_bucket_rows: bool = False,
    ) -> None:
        bad = [s for s in sites if s not in SITES]
        if bad or not sites:
            raise ValueError(f"sites must be a non-empty subset of {SITES}, got {list(sites)}")
        if not 0.0 < subsample <= 1.0:
            raise ValueError(f"subsample must be in (0, 1], got {subsample}")
        self.sites = tuple(s for s in SITES if s in sites)
        self.modules: dict[tuple[int, str], tuple[str, nn.Module]] = {}
        if "pre" in self.sites:
            for layer, hit in _match_layers(model, pre_patterns).items():
                self.modules[(layer, "pre")] = hit
        if "post" in self.sites:
            for layer, hit in _match_layers(model, post_patterns).items():
                self.modules[(layer, "post")] = hit
        if not self.modules:
            raise ValueError(f"no module of the model matches {list(pre_patterns) + list(post_patterns)}")
        self.layers = sorted({layer for layer, _ in self.modules})
        self.options = TelemetryOptions(
            renyi_alphas=tuple(renyi_alphas), min_bucket_rows=min_bucket_rows,
            keep_eigenvalues=keep_eigenvalues, paper_eps=paper_eps,
        )
        self.subsample = subsample
        self._generator = torch.Generator().manual_seed(seed)
        self._table = torch.as_tensor(bucket_of_token).to(torch.int64) if bucket_of_token is not None else None
        self._rest = bool(limit_bucket_rows) and self._table is not None  # a REST group: set_tokens(bucket_rows=...)
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = None
        dims = {key: _site_dim(module, key[1]) for key, (_, module) in self.modules.items()}
        self.collector = SpectrumCollector(
            sorted(self.modules), dims=dims, buckets=self._table is not None,
            accum_dtype=accum_dtype, bf16_matmul=bf16_matmul, keep_rows=gram_below_dim,
            device=device, rest=self._rest,
        )
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._batch: _BatchRows | None = None
        self._generation = 0
        self._seen: dict[tuple[int, str], int] = {}
        self.ignored_forwards = 0  # repeated forwards for one set_tokens (e.g. checkpoint recompute)

    # ------------------------------------------------------------------ capture control
    @property
    def active(self) -> bool:
        """True while hooks are registered (inside `capturing()`)."""
        return bool(self._handles)

    @contextlib.contextmanager
    def capturing(self) -> Iterator[FFNProbe]:
        """Register the hooks for the duration of the block; state accumulates until snapshot."""
        if self.active:
            raise RuntimeError("probe is already capturing")
        self._batch, self._generation, self._seen = None, 0, {}
        for (layer, site), (_, module) in self.modules.items():
            if site == "pre":
                hook = module.register_forward_hook(self._pre_hook(layer))
            else:
                hook = module.register_forward_pre_hook(self._post_hook(layer))
            self._handles.append(hook)
        try:
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._batch = None

    def set_tokens(self, idx: torch.Tensor, bucket_rows: int | None = None) -> None:
        """Declare the input token ids ([B, S]) of the next forward; required with buckets or
        subsampling. Each site then counts one forward per call; a repeated forward with the
        same tokens (activation-checkpoint recompute) is ignored. A no-op when not capturing.
        ``bucket_rows``: only sequences ``[0, bucket_rows)`` of this forward feed HEAD/MID/TAIL (all
        feed the global covariance); needs ``limit_bucket_rows``. None: all of them."""
        if bucket_rows is not None and not self._rest:
            raise ValueError("set_tokens(bucket_rows=...) needs a bucketed FFNProbe(limit_bucket_rows=True)")
        if not self.active:
            return
        if idx.dim() == 1:
            idx = idx.unsqueeze(0)
        b, s = idx.shape[0], idx.shape[-1]
        rows = None
        if self.subsample < 1.0:
            keep = max(1, round(self.subsample * b))
            seqs = torch.randperm(b, generator=self._generator)[:keep].sort().values
            rows = (seqs[:, None] * s + torch.arange(s)[None, :]).reshape(-1).to(idx.device)  # [keep·S]
        sizes = None
        if self._table is not None:
            if self._table.device != idx.device:
                self._table = self._table.to(idx.device)
            flat = idx.reshape(-1)
            if flat.numel() and int(flat.max()) >= self._table.numel():  # a clear error, not a CUDA assert
                raise ValueError(f"token id {int(flat.max())} outside the bucket table ({self._table.numel()})")
            labels = self._table[flat if rows is None else flat[rows]]
            if bucket_rows is not None and bucket_rows < b:  # later sequences: global rows only (id 3)
                seq = (torch.arange(flat.numel(), device=idx.device) if rows is None else rows) // s
                labels = torch.where(seq >= bucket_rows, len(BUCKETS), labels)
            order, sizes = bucket_order(labels, len(self.collector.groups))
            rows = order if rows is None else rows[order]
        self._batch = _BatchRows(total=idx.numel(), rows=rows, sizes=sizes)
        self._generation += 1

    # ------------------------------------------------------------------ hooks
    def _pre_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output) -> None:
            out = output if isinstance(output, torch.Tensor) else output[0]
            self._capture(layer, "pre", out)

        return hook

    def _post_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple) -> None:
            self._capture(layer, "post", args[0])

        return hook

    def _capture(self, layer: int, site: str, x: torch.Tensor) -> None:
        batch = self._batch
        needs_tokens = self._table is not None or self.subsample < 1.0
        if needs_tokens and batch is None:
            raise RuntimeError("call probe.set_tokens(idx) before each forward while capturing")
        if self._generation and self._seen.get((layer, site)) == self._generation:
            self.ignored_forwards += 1
            return
        self._seen[(layer, site)] = self._generation
        timer = self.collector.capture_timer
        token = timer.start(x.device) if timer.enabled else None
        x2d = x.detach().reshape(-1, x.shape[-1])  # [B·S, D]
        sizes = None
        if batch is not None:
            if x2d.shape[0] != batch.total:
                raise ValueError(
                    f"layer {layer} {site}: {x2d.shape[0]} activation rows but {batch.total} token ids"
                )
            if batch.rows is not None:
                x2d = x2d.index_select(0, batch.rows)  # [kept rows, D], grouped by bucket
            sizes = batch.sizes
        self.collector.add(layer, site, x2d, sizes)
        timer.stop(token)

    # ------------------------------------------------------------------ results
    def reset(self) -> None:
        """Drop all accumulated rows."""
        self.collector.reset()

    def all_reduce_(self, group: dist.ProcessGroup | None = None) -> None:
        """Pool every accumulator over data-parallel ranks (collective: call on all ranks)."""
        self.collector.all_reduce_(group)

    def snapshot(
        self, step: int, device: torch.device | str | None = "cpu", reduce: bool | None = None, reset: bool = True
    ) -> TelemetrySnapshot:
        """Copy the covariances out (to `device`; None keeps them on the accumulator device).

        reduce: all-reduce across torch.distributed ranks first; None = when dist is initialized
        with more than one rank. The result goes to `metrics.finalize_snapshot`, here or in a worker.
        """
        if reduce is None:
            reduce = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if reduce:
            self.all_reduce_()
        return self.collector.snapshot(step, self.options, device=device, reset=reset)

    def compute(self, step: int, reduce: bool | None = None) -> list[dict]:
        """Synchronous records of this event (snapshot + finalize); resets the accumulators."""
        return finalize_snapshot(self.snapshot(step, device=None, reduce=reduce))

    def detach(self) -> None:
        """Remove any hook and drop state; the probe is unusable afterwards."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.collector.reset()
        self.modules.clear()


class _BatchRows:
    """Row selection of the current batch: all rows (None) or an index grouped by bucket."""

    __slots__ = ("total", "rows", "sizes")

    def __init__(self, total: int, rows: torch.Tensor | None, sizes: list[int] | None) -> None:
        self.total, self.rows, self.sizes = total, rows, sizes


def _site_dim(module: nn.Module, site: str) -> int | None:
    """D of a site when the module says it (nn.Linear); else learnt from the first activation."""
    attr = "out_features" if site == "pre" else "in_features"
    value = getattr(module, attr, None)
    return int(value) if isinstance(value, int) else None


def attach_probes(model: nn.Module, **kwargs) -> FFNProbe:
    """FFNProbe(model, **kwargs): probes on the contract names `blocks.{i}.ffn.{gate|up,down}`."""
    return FFNProbe(model, **kwargs)
