"""Covariance accumulators per (layer, site, bucket), shared by the probes and the one-shot API."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

from specsweep.metrics.buckets import BUCKETS, REST
from specsweep.metrics.covariance import CovarianceAccumulator
from specsweep.metrics.buckets import GLOBAL
from specsweep.metrics.snapshot import TelemetryOptions, TelemetrySnapshot, snapshot_accumulator


def bucket_order(labels: torch.Tensor, groups: int = len(BUCKETS)) -> tuple[torch.Tensor, list[int]]:
    """Row order that groups rows by bucket id (0 HEAD, 1 MID, 2 TAIL, 3 REST when ``groups`` = 4)
    and the group sizes.

    Sorting once per batch lets every layer and site split its rows with one gather and views,
    and costs one host sync (the sizes) per batch instead of one per hook.
    """
    labels = labels.reshape(-1)
    order = torch.argsort(labels, stable=True)
    sizes = torch.bincount(labels.to(torch.int64), minlength=groups)
    if sizes.numel() > groups:
        raise ValueError(f"bucket ids must lie in [0, {groups})")
    return order, [int(s) for s in sizes.tolist()]


class CaptureTimer:
    """Time spent capturing rows (FFNProbe's hooks: bucket grouping and covariance updates), per event.

    CUDA: event pairs around each capture on the current stream, read after a synchronisation
    (the stream is serial, so a pair brackets exactly the capture kernels); CPU: wall clock.
    Off by default: an enabled timer costs two CUDA events per hook call.
    """

    def __init__(self) -> None:
        self.enabled = False
        self._cpu_s = 0.0
        self._cuda: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def start(self, device: torch.device) -> object:
        """A token for `stop`; None when disabled."""
        if not self.enabled:
            return None
        if device.type == "cuda":
            begin = torch.cuda.Event(enable_timing=True)
            begin.record()
            return begin
        return time.perf_counter()

    def stop(self, token: object) -> None:
        if token is None:
            return
        if isinstance(token, float):
            self._cpu_s += time.perf_counter() - token
        else:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._cuda.append((token, end))  # type: ignore[arg-type]

    def take_seconds(self) -> float | None:
        """Capture seconds since the last call (waits for the recorded CUDA work); None if disabled."""
        if not self.enabled:
            return None
        total = self._cpu_s
        if self._cuda:
            self._cuda[-1][1].synchronize()
            total += sum(a.elapsed_time(b) for a, b in self._cuda) / 1e3
        self._cpu_s, self._cuda = 0.0, []
        return total


class SpectrumCollector:
    """Accumulators for each (layer, site) and bucket; the global one is derived exactly.

    With buckets, only HEAD/MID/TAIL are accumulated and GLOBAL is their Chan merge at snapshot
    time: one GEMM per row instead of two. ``rest``: a fourth group (bucket id 3, metrics.buckets.REST)
    for rows that count in GLOBAL but in no HEAD/MID/TAIL matrix (rows outside the bucket rows of a
    step, FFNProbe.set_tokens' ``bucket_rows``); it is never reported on its own.
    """

    def __init__(
        self,
        keys: Iterable[tuple[int, str]],
        *,
        dims: dict[tuple[int, str], int | None] | None = None,
        buckets: bool = False,
        accum_dtype: torch.dtype = torch.float32,
        bf16_matmul: bool | None = None,
        keep_rows: bool = True,
        device: torch.device | str | None = None,
        rest: bool = False,
    ) -> None:
        self.keys = list(keys)
        self.buckets = buckets
        self._groups = [*BUCKETS, *([REST] if rest else [])] if buckets else [GLOBAL]
        self.capture_timer = CaptureTimer()
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
        for name, chunk in zip(self._groups, torch.split(x, list(bucket_sizes), dim=0)):
            if chunk.shape[0]:
                self.acc[(layer, site, name)].update(chunk)

    def reset(self) -> None:
        """Forget all rows."""
        for acc in self.acc.values():
            acc.reset()

    @property
    def groups(self) -> list[str]:
        """The accumulated groups per (layer, site): HEAD/MID/TAIL (and REST), or GLOBAL alone."""
        return list(self._groups)

    @property
    def matrix_keys(self) -> list[tuple[int, str, str]]:
        """Every (layer, site, bucket) of a snapshot, GLOBAL included, in a rank-independent order."""
        groups = [GLOBAL, *BUCKETS] if self.buckets else [GLOBAL]
        return [(layer, site, g) for layer, site in sorted(self.keys) for g in groups]

    def dims(self) -> dict[tuple[int, str], int | None]:
        """D of every (layer, site) (None until known)."""
        return {(layer, site): self.acc[(layer, site, self._groups[0])].dim for layer, site in self.keys}

    def tensor_bytes(self) -> dict[str, int]:
        """Bytes of accumulator state held, by device type."""
        out: dict[str, int] = {}
        for acc in self.acc.values():
            rows = acc._rows or []
            for t in (acc.m2, acc.mean, *rows):
                if t is not None:
                    out[t.device.type] = out.get(t.device.type, 0) + t.numel() * t.element_size()
        return out

    def take(self, key: tuple[int, str, str]) -> CovarianceAccumulator:
        """Move one accumulator's state out: the returned object holds it, the collector's is reset."""
        acc = self.acc[key]
        out = copy.copy(acc)  # shares n, mean, m2 and the rows list; keeps every setting of acc
        acc.reset()  # rebinds acc's state, leaving `out`'s alone
        return out

    def take_local(self) -> dict[tuple[int, str, str], CovarianceAccumulator]:
        """This process's accumulators by (layer, site, bucket), GLOBAL included (the exact Chan
        merge of the buckets when bucketed), moved out without copies; the collector is reset."""
        out: dict[tuple[int, str, str], CovarianceAccumulator] = {}
        for layer, site in self.keys:
            parts = [self.take((layer, site, g)) for g in self._groups]
            if self.buckets:
                out[(layer, site, GLOBAL)] = self._merged(parts)
            for group, part in zip(self._groups, parts):
                if group != REST:
                    out[(layer, site, group)] = part
        return out

    @staticmethod
    def _merged(parts: Sequence[CovarianceAccumulator]) -> CovarianceAccumulator:
        merged = CovarianceAccumulator(
            parts[0].dim, device=parts[0].device, dtype=parts[0].dtype, keep_rows=parts[0].keep_rows,
        )
        for part in parts:
            merged.merge(part)
        return merged

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
                merged = self._merged(parts)
                snap.entries.append(snapshot_accumulator(merged, layer, site, GLOBAL, device, take=True))
                del merged
            for group, part in zip(self._groups, parts):
                if group != REST:
                    snap.entries.append(snapshot_accumulator(part, layer, site, group, device, take=reset))
                if reset:
                    part.reset()  # drop the reference now: the snapshot owns the tensors
        if reset:
            self.reset()
        return snap
