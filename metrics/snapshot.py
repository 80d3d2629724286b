"""The seam between capture and decomposition: covariance state copied out of the accumulators.

`take_snapshot` runs on the training critical path (copies, a few D² reductions, hard ranks by
trace/Frobenius); `records.finalize_snapshot` does the eigendecompositions and can run later, in a
worker thread or process (everything here is plain tensors and numbers, hence picklable).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from specsweep.metrics.covariance import CovarianceAccumulator
from specsweep.metrics.spectral import DEFAULT_RENYI_ALPHAS, hard_rank_of_matrix


@dataclass(frozen=True)
class TelemetryOptions:
    """How records are computed from covariances.

    min_bucket_rows: a HEAD/MID/TAIL bucket with fewer rows is flagged "too_few_rows" (paper: 1000);
    the global bucket only needs 2 rows.
    keep_eigenvalues: add an "eigenvalues" key (np.ndarray, float64, descending, length D).
    paper_eps: the papers' epsilons (see metrics.spectral) instead of exact conventions.
    eig_dtype: dtype of the eigendecomposition, torch.float64 (default) or torch.float32.
    """

    renyi_alphas: tuple[float, ...] = DEFAULT_RENYI_ALPHAS
    min_bucket_rows: int = 1000
    keep_eigenvalues: bool = False
    paper_eps: bool = False
    eig_dtype: torch.dtype = torch.float64

    def __post_init__(self) -> None:
        if self.eig_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"eig_dtype must be torch.float32 or torch.float64, got {self.eig_dtype}")


@dataclass
class CovarianceSnapshot:
    """One (layer, site, bucket) accumulator at snapshot time."""

    layer: int
    site: str
    bucket: str
    n: int
    dim: int | None
    m2: torch.Tensor | None = None  # [D, D] centred scatter (accumulation dtype)
    mean: torch.Tensor | None = None  # [D] float64
    rows: torch.Tensor | None = None  # [n, D] raw rows when n < D and kept (Gram path)
    finite: bool = True
    trace: float = 0.0  # tr M2 (float64)
    mean_sq: float = 0.0  # ‖mean‖²: the scale that round-off noise in M2 is relative to
    accum_eps: float = 0.0  # machine epsilon of the accumulation dtype
    hard_rank: float | None = None  # (tr M2)² / ‖M2‖²_F, computed inline


@dataclass
class TelemetrySnapshot:
    """Everything `finalize_snapshot` needs to produce the records of one telemetry event.

    spectrum: the event is decomposed (full spectrum metrics); False = hard ranks only, and the
    entries then need no tensors at all.
    """

    step: int
    options: TelemetryOptions
    entries: list[CovarianceSnapshot] = field(default_factory=list)
    spectrum: bool = True

    def tensor_bytes(self) -> dict[str, int]:
        """Bytes of the tensors held, by device type ({"cpu": ..., "cuda": ...})."""
        out: dict[str, int] = {}
        for entry in self.entries:
            for t in (entry.m2, entry.mean, entry.rows):
                if t is not None:
                    out[t.device.type] = out.get(t.device.type, 0) + t.numel() * t.element_size()
        return out


def snapshot_accumulator(
    acc: CovarianceAccumulator,
    layer: int,
    site: str,
    bucket: str,
    device: torch.device | str | None = "cpu",
    take: bool = False,
    keep_tensors: bool = True,
    timings: dict[str, float] | None = None,
) -> CovarianceSnapshot:
    """Copy one accumulator's state (to `device`; None keeps it where it is) plus cheap scalars.

    take: the accumulator is about to be reset, so its tensors may be moved rather than copied
    (no extra D² memory when the snapshot stays on the accumulator's device).
    keep_tensors: False keeps only the scalars (hard-rank-only events: nothing is copied).
    timings: if given, seconds spent in the hard rank are added to timings["hard_rank_s"].
    """
    snap = CovarianceSnapshot(
        layer=layer, site=site, bucket=bucket, n=acc.n, dim=acc.dim,
        accum_eps=float(torch.finfo(acc.dtype).eps),
    )
    if acc.n == 0 or acc.m2 is None:
        return snap
    m2, mean = acc.m2, acc.mean
    finite = bool(torch.isfinite(m2).all().item()) and bool(torch.isfinite(mean).all().item())
    snap.finite = finite
    if finite:
        snap.trace = float(torch.diagonal(m2).sum(dtype=torch.float64).item())
        snap.mean_sq = float(torch.dot(mean, mean).item())
        t0 = time.perf_counter()
        snap.hard_rank = hard_rank_of_matrix(m2) if snap.trace > 0 else math.nan
        if timings is not None:
            timings["hard_rank_s"] = timings.get("hard_rank_s", 0.0) + time.perf_counter() - t0
    if not keep_tensors:
        return snap
    target = torch.device(device) if device is not None else m2.device
    # non_blocking is not used: a pinned-memory pool would be needed to make it pay
    snap.m2 = m2.to(target, copy=not take)
    snap.mean = mean.to(target, copy=not take)
    rows = acc.rows()  # a fresh concatenation already
    if rows is not None:
        snap.rows = rows.to(target)
    return snap
