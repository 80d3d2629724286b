"""Covariance accumulators per (layer, site, bucket), shared by the probes and the one-shot API."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

from metrics.buckets import BUCKETS
from metrics.covariance import CovarianceAccumulator
from metrics.snapshot import GLOBAL, TelemetryOptions, TelemetrySnapshot, snapshot_accumulator


def bucket_order(labels: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Row order that groups rows by bucket id (0 HEAD, 1 MID, 2 TAIL) and the group sizes.

    Sorting once per batch lets every layer and site split its rows with one gather and views,
    and costs one host sync (the sizes) per batch instead of one per hook.
    """
    labels = labels.reshape(-1)
    order = torch.argsort(labels, stable=True)
    sizes = torch.bincount(labels.to(torch.int64), minlength=len(BUCKETS))
    if sizes.numel() > len(BUCKETS):
        raise ValueError(f"bucket ids must lie in [0, {len(BUCKETS)})")
    return order, [int(s) for s in sizes.tolist()]


class SpectrumCollector:
    """Accumulators for each (layer, site) and bucket; the global one is derived exactly.

    With buckets, only HEAD/MID/TAIL are accumulated and GLOBAL is their Chan merge at snapshot
    time: one GEMM per row instead of two.
    """

    def __init__(
        self,
        keys: Iterable[tuple[int, str]],
        *,
        dims: dict[tuple[int, str], int | None] | None = None,
        buckets: bool = False,
        accum_dtype: torch.dtype = torch.float32,
        bf16_matmul: bool = False,
        keep_rows: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        self.keys = list(keys)
        self.buckets = buckets
        self._groups = list(BUCKETS) if buckets else [GLOBAL]
        dims = dims or {}
        self.acc: dict[tuple[int, str, str], CovarianceAccumulator] = {
            (layer, site, group): CovarianceAccumulator(
                dims.get((layer, site)), device=device, dtype=accum_dtype,
                bf16_matmul=bf16_matmul, keep_rows=keep_rows,
            )
            for layer, site in self.keys
            for group in self._groups
        }

    def add(self, layer: int, site: str, x: torch.Tensor, bucket_sizes: Sequence[int] | None = None) -> None:
        """Add rows x ([N, D]); with buckets, x is grouped by bucket with `bucket_sizes` rows each."""
        for group in self._groups:  # an empty bucket still reports its site's D
            acc = self.acc[(layer, site, group)]
            if acc.dim is None:
                acc.dim = int(x.shape[-1])
        if not self.buckets:
            self.acc[(layer, site, GLOBAL)].update(x)
            return
        if bucket_sizes is None:
            raise ValueError("bucketed collector needs bucket_sizes (rows grouped by bucket)")
        for name, chunk in zip(BUCKETS, torch.split(x, list(bucket_sizes), dim=0)):
            if chunk.shape[0]:
                self.acc[(layer, site, name)].update(chunk)

    def reset(self) -> None:
        """Forget all rows."""
        for acc in self.acc.values():
            acc.reset()

    def all_reduce_(self, group: dist.ProcessGroup | None = None) -> None:
        """Sum every accumulator over the ranks of `group` (collective; same order on all ranks)."""
        for key in sorted(self.acc):
            self.acc[key].all_reduce_(group)

    def snapshot(
        self,
        step: int,
        options: TelemetryOptions,
        device: torch.device | str | None = "cpu",
        reset: bool = True,
    ) -> TelemetrySnapshot:
        """Copy all state into a TelemetrySnapshot (see metrics.snapshot); optionally reset."""
        snap = TelemetrySnapshot(step=step, options=options)
        for layer, site in self.keys:
            parts = [self.acc[(layer, site, g)] for g in self._groups]
            if self.buckets:
                merged = CovarianceAccumulator(
                    parts[0].dim, device=parts[0].device, dtype=parts[0].dtype,
                    keep_rows=parts[0].keep_rows,
                )
                for part in parts:
                    merged.merge(part)
                snap.entries.append(snapshot_accumulator(merged, layer, site, GLOBAL, device, take=True))
                del merged
            for group, part in zip(self._groups, parts):
                snap.entries.append(snapshot_accumulator(part, layer, site, group, device, take=reset))
                if reset:
                    part.reset()  # drop the reference now: the snapshot owns the tensors
        if reset:
            self.reset()
        return snap
