"""Telemetry records: from covariance snapshots (finalize) or in one shot from an activation tensor.

A record is one dict per (step, layer, site, bucket) with exactly the keys of docs/contracts.md.
Degenerate inputs give a flagged record (status != "ok", metric values None), never an exception
and never a silent number. `spectrum` says what an event carries: True = every metric (the
covariance was decomposed); False = hard rank and Rényi-2 only (trace formula), every other
metric None.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from specsweep.metrics.buckets import BUCKETS
from specsweep.metrics.collector import SpectrumCollector, bucket_order
from specsweep.metrics.buckets import GLOBAL, SITES
from specsweep.metrics.snapshot import CovarianceSnapshot, TelemetryOptions, TelemetrySnapshot
from specsweep.metrics.spectral import DEFAULT_RENYI_ALPHAS, js_divergence, renyi_key, spectrum_metrics

# Carried by every event: (tr C)² / ‖C‖²_F needs no decomposition, and Rényi-2 is the same number.
TRACE_METRICS: tuple[str, ...] = ("hard_rank", renyi_key(2.0))

# Round-off floor for "zero variance": tr C below (ZERO_VAR_ULPS · eps)² · ‖mean‖² is what centring
# constant rows leaves behind in the accumulation dtype, not signal.
ZERO_VAR_ULPS = 10.0
# Eigenvalues within NOISE_BAND · |most negative eigenvalue| of zero are round-off (exact mode).
NOISE_BAND = 2.0


def sampling_label(n_over_d: float) -> str:
    """N/D regime: "well" (≥ 10), "moderate" (≥ 3), "under" (< 3)."""
    if n_over_d >= 10:
        return "well"
    if n_over_d >= 3:
        return "moderate"
    return "under"


def metric_keys(renyi_alphas: Iterable[float]) -> list[str]:
    """Metric keys of a record, in record order."""
    return ["soft_rank", "hard_rank", "entropy", "eee", "js"] + [renyi_key(a) for a in renyi_alphas]


def entry_status(entry: CovarianceSnapshot, min_bucket_rows: int) -> str:
    """"ok", or why the entry gets a flagged record (then it is never decomposed)."""
    if entry.n == 0:
        return "empty"
    if entry.n < 2 or (entry.bucket != GLOBAL and entry.n < min_bucket_rows):
        return "too_few_rows"
    if not entry.finite:
        return "nonfinite"
    floor = (ZERO_VAR_ULPS * entry.accum_eps) ** 2 * entry.mean_sq * entry.n
    if not entry.trace > floor:
        return "all_zero"  # zero variance: all-zero (or constant) activations
    return "ok"


def _spectrum(entry: CovarianceSnapshot, paper_eps: bool, eig_dtype: torch.dtype = torch.float64
              ) -> tuple[np.ndarray, float, float]:
    """(eigenvalues descending, float64, length D; min raw eigenvalue; negative mass).

    eigvalsh in `eig_dtype` (float64 by default) on the snapshot's device; the n×n Gram matrix
    when rows were kept (n < D), zero-padded to D (the covariance has D − n + 1 zero eigenvalues
    there). min_eig and the negative mass Σ|λ<0| / Σ|λ| describe the raw eigenvalues; the returned
    spectrum has the round-off band around zero set to 0 (exact mode only).
    """
    denom = entry.n - 1 + (1e-12 if paper_eps else 0.0)
    if entry.rows is not None and entry.n < entry.dim:
        x = entry.rows.to(torch.float64)
        x = x - x.mean(dim=0)  # [n, D]
        mat = ((x @ x.t()) / denom).to(eig_dtype)  # [n, n] Gram: same nonzero eigenvalues as xᵀx / denom
    else:
        mat = entry.m2.to(eig_dtype) / denom  # [D, D]
    raw = torch.linalg.eigvalsh(mat).cpu().numpy().astype(np.float64)
    min_eig = float(raw.min())
    total_abs = np.abs(raw).sum()
    neg_mass = float(np.abs(raw[raw < 0]).sum() / total_abs) if total_abs > 0 else 0.0
    clean = raw
    if not paper_eps and min_eig < 0:
        # Round-off spreads the zero eigenvalues of a rank-deficient covariance (pre-activations
        # have rank ≤ d_model < D) symmetrically around 0; the most negative one measures that
        # band. Zeroing |λ| ≤ NOISE_BAND·|λ_min| removes the positive half too, which otherwise
        # biases Rényi α < 1 (≈1e-3 at D = 512 with fp32 accumulation) and leaves signal intact.
        clean = np.where(raw <= NOISE_BAND * -min_eig, 0.0, raw)
    lam = np.zeros(entry.dim, dtype=np.float64)
    lam[: raw.size] = np.sort(clean)[::-1]
    return lam, min_eig, neg_mass


def _empty_record(step: int, entry: CovarianceSnapshot, keys: Sequence[str], spectrum: bool) -> dict:
    rec: dict = {"step": step, "layer": entry.layer, "site": entry.site, "bucket": entry.bucket}
    rec.update({k: None for k in keys})
    n_over_d = entry.n / entry.dim if entry.dim else None
    rec.update({
        "n_rows": entry.n,
        "dim": entry.dim,
        "n_over_d": n_over_d,
        "sampling": sampling_label(n_over_d) if n_over_d is not None else "under",
        "status": "ok",
        "spectrum": spectrum,
        "min_eig": None,
        "neg_mass": None,
    })
    return rec


def finalize_snapshot(snapshot: TelemetrySnapshot) -> list[dict]:
    """Records of one telemetry event: eigendecompositions and metrics for every entry.

    Pure function of the snapshot, safe to run in a worker thread or process. Records are sorted
    by `record_order_key` (layer, then bucket global/head/mid/tail, then site); JS(pre ‖ post) is
    filled on both rows of a (layer, bucket) when both sites are ok and in the snapshot.
    A snapshot with spectrum=False decomposes nothing: its records carry the inline hard rank
    (and Rényi-2, the same number) and None for the other metrics.
    """
    opts = snapshot.options
    keys = metric_keys(opts.renyi_alphas)
    records: list[dict] = []
    spectra: dict[tuple[int, str, str], np.ndarray] = {}
    for entry in snapshot.entries:
        rec = _empty_record(snapshot.step, entry, keys, snapshot.spectrum)
        status = entry_status(entry, opts.min_bucket_rows)
        rec["status"] = status
        if status == "ok" and not snapshot.spectrum:
            rec.update({k: entry.hard_rank for k in TRACE_METRICS if k in rec})
        elif status == "ok":
            lam, min_eig, neg_mass = _spectrum(entry, opts.paper_eps, opts.eig_dtype)
            values = spectrum_metrics(lam, opts.renyi_alphas, opts.paper_eps)
            if not opts.paper_eps and entry.hard_rank is not None:
                # (tr C)² / ‖C‖²_F from the inline fp64 reduction: equal to the eigenvalue PR up to
                # round-off, and available without the decomposition; the same number in every
                # event, decomposed or not
                values.update({k: entry.hard_rank for k in TRACE_METRICS if k in values})
            rec.update(values)
            rec["min_eig"], rec["neg_mass"] = min_eig, neg_mass
            if opts.keep_eigenvalues:
                rec["eigenvalues"] = lam
            spectra[(entry.layer, entry.site, entry.bucket)] = lam
        records.append(rec)
    for rec in records:
        if rec["status"] != "ok":
            continue
        pre = spectra.get((rec["layer"], "pre", rec["bucket"]))
        post = spectra.get((rec["layer"], "post", rec["bucket"]))
        if pre is not None and post is not None:
            rec["js"] = js_divergence(pre, post, opts.paper_eps)
    records.sort(key=record_order_key)
    return records


def spectral_records(
    acts: torch.Tensor | Mapping[str, torch.Tensor],
    token_ids: torch.Tensor | np.ndarray | None = None,
    bucket_of_token: torch.Tensor | np.ndarray | None = None,
    *,
    step: int = 0,
    layer: int = 0,
    site: str = "pre",
    renyi_alphas: Sequence[float] = DEFAULT_RENYI_ALPHAS,
    min_bucket_rows: int = 1000,
    keep_eigenvalues: bool = False,
    paper_eps: bool = False,
    accum_dtype: torch.dtype = torch.float64,
    gram_below_dim: bool = True,
) -> list[dict]:
    """Records of one activation tensor (or {"pre": ..., "post": ...} of the same tokens).

    acts: [B, S, D] or [N, D] per site. token_ids: [B, S] or [N] input token ids, needed with
    `bucket_of_token` (per-vocab-id bucket array from specsweep.metrics.buckets): then records for global,
    head, mid and tail, else global only. JS is filled when both sites are given.
    """
    by_site = dict(acts) if isinstance(acts, Mapping) else {site: acts}
    for name in by_site:
        if name not in SITES:
            raise ValueError(f"site must be one of {SITES}, got {name!r}")
    sizes = None
    order = None
    if bucket_of_token is not None:
        if token_ids is None:
            raise ValueError("bucket_of_token needs token_ids")
        ids = torch.as_tensor(token_ids).reshape(-1).to(torch.int64)
        table = torch.as_tensor(bucket_of_token).to(torch.int64)
        order, sizes = bucket_order(table[ids])
    sites = [s for s in SITES if s in by_site]
    collector = SpectrumCollector(
        [(layer, s) for s in sites], buckets=bucket_of_token is not None,
        accum_dtype=accum_dtype, keep_rows=gram_below_dim,
    )
    for s in sites:
        x = by_site[s]
        x2d = x.reshape(-1, x.shape[-1])  # [N, D]
        if order is not None:
            if x2d.shape[0] != order.numel():
                raise ValueError(f"{s}: {x2d.shape[0]} rows but {order.numel()} token ids")
            x2d = x2d.index_select(0, order.to(x2d.device))
        collector.add(layer, s, x2d, sizes)
    options = TelemetryOptions(
        renyi_alphas=tuple(renyi_alphas), min_bucket_rows=min_bucket_rows,
        keep_eigenvalues=keep_eigenvalues, paper_eps=paper_eps,
    )
    return finalize_snapshot(collector.snapshot(step, options, device=None))


def record_order_key(rec: Mapping) -> tuple:
    """Sort key (step, layer, bucket global/head/mid/tail, site pre/post) for record tables."""
    bucket_rank = ([GLOBAL] + list(BUCKETS)).index(rec["bucket"])
    return (rec["step"], rec["layer"], bucket_rank, SITES.index(rec["site"]))


__all__ = [
    "TRACE_METRICS", "entry_status", "finalize_snapshot", "spectral_records", "sampling_label", "metric_keys",
    "record_order_key",
]
