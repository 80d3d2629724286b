"""Points tables: one value per run × metric × bucket × site, with the run's axes as columns.

``build_points`` reduces each finished run's telemetry under an aggregation rule
(``metrics.fit.aggregate_records``); ``read_points_file`` reads a released table instead (e.g.
the paper's). ``group_columns`` and ``group_labels`` say which columns define a fit group and
how a group is named in tables and figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from specsweep.metrics import fit as mfit

from specsweep.metrics import aggregation as magg
from specsweep.metrics import window_audit as audit
from specsweep.metrics.buckets import BUCKETS, GLOBAL, SITES
from specsweep.sweep.analysis.read import WIDTH_COL, FinishedRun, SweepError

REQUIRED_POINT_COLUMNS = ("optimizer", WIDTH_COL, "metric", "bucket", "site", "value")
# Columns of a points table that are values, provenance or width-like, never grouping keys.
# ffn_mult co-varies with ffn_width, so grouping by it would leave one width per group.
NON_KEY_COLUMNS = frozenset({
    "run_id", "sweep", "value", "err", "err_low", "err_high", "seed", WIDTH_COL, "ffn_hidden_dim",
    "ffn_mult", "width_multiplier", "metric", "bucket", "site", "n_layers", "n_layers_used",
    "n_steps", "n_events", "window_start", "window_end", "final_samples", "final_steps", "eval_loss",
    "train_loss", "config_hash", "rule", "aggregation", "status", "label", "config",
})
# Points-file column aliases, so released tables (e.g. the paper's) can be re-fitted as they are.
POINT_ALIASES = {"ffn_hidden_dim": WIDTH_COL}
# Order of buckets and sites in tables and figures: global first, then the frequency buckets;
# post (the FFN output, where the paper's claims live) before pre (SITES is in forward order).
BUCKET_ORDER: tuple[str, ...] = (GLOBAL, *BUCKETS)
SITE_ORDER: tuple[str, ...] = tuple(reversed(SITES))


def run_columns(run: FinishedRun) -> dict[str, Any]:
    """The run's identity and axes as table columns (a non-scalar axis as JSON text)."""
    cols: dict[str, Any] = {"run_id": run.run_id, "sweep": run.sweep_dir.name}
    for key, value in run.axes.items():
        cols[key] = value if (value is None or np.isscalar(value)) else json.dumps(value)
    return cols


def build_points(runs: Sequence[FinishedRun], rule: magg.AggregationRule,
                 metrics: Sequence[str] = mfit.RANK_METRICS,
                 notes: list[dict] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """points.csv rows: one per run × metric × bucket × site, axes as columns, value and err.

    Events before the first update never enter a window. A run whose aggregation window holds
    events without spectra (telemetry.spectrum_every > 1 and a window that is not the trainer's,
    e.g. a live fit mid-run) gets no points of the metrics that need a spectrum (soft rank,
    entropy, ...): older events with spectra are never used instead. Its hard-rank points stay.
    ``notes``: filled with what was done and why, per run × site × bucket × metric
    (metrics.window_audit: short windows, untrained events, invalid bucket events, no point).
    """
    frames, messages = [], []
    notes = [] if notes is None else notes
    for run in runs:
        used = list(metrics)
        records = audit.trained_records(run.spectra)
        gaps = magg.spectrum_gaps(records, rule)
        refused = [m for m in used if magg.needs_spectrum(m)] if gaps else []
        if refused:
            used = [m for m in used if m not in refused]
            notes += [{"run_id": run.run_id, "site": audit.ANY, "bucket": audit.ANY, "metric": m,
                       "code": audit.NO_SPECTRUM, "what": "no point",
                       "why": f"window step {', '.join(map(str, gaps))} carried hard ranks only"} for m in refused]
            messages.append(
                f"{run.run_id}: no {'/'.join(refused)} points: step(s) {', '.join(map(str, gaps))} of its "
                f"aggregation window carry hard ranks only (spectrum=false: telemetry decomposed no "
                f"spectrum there), and a soft-rank β from events without spectra would fall back to "
                f"older events; its {'/'.join(used) or 'other'} points are kept")
            if not used:
                continue
        try:
            agg = magg.aggregate_records(records, rule, used)
        except Exception as err:  # noqa: BLE001
            messages.append(f"{run.run_id}: aggregation failed ({type(err).__name__}: {err}); run left out")
            continue
        notes += audit.audit_window(run.run_id, run.spectra, rule, agg, used)
        if agg.empty:
            messages.append(f"{run.run_id}: no valid {'/'.join(used)} values under rule "
                            f"'{rule.describe()}'; run left out")
            continue
        extra = {"eval_loss": run.eval_loss, "train_loss": run.train_loss,
                 "config_hash": run.config_hash}
        frames.append(agg.assign(**run_columns(run), **extra))
    if not frames:
        return pd.DataFrame(), messages
    points = pd.concat(frames, ignore_index=True)
    # Column order: identity, then the run's axes, then the series and its value columns.
    tail = ["metric", "bucket", "site", "value", "err", "n_layers", "n_steps", "window_start",
            "window_end", "eval_loss", "train_loss", "config_hash"]
    first = ["run_id", "sweep"]
    axes = [c for c in points.columns if c not in first and c not in tail]
    return points[first + axes + tail], messages


def build_step_points(runs: Sequence[FinishedRun], k: int,
                      metrics: Sequence[str] = mfit.RANK_METRICS, partial: bool = True) -> pd.DataFrame:
    """Per-run paper-rule values over trailing windows of up to ``k`` checkpoints (for β over
    steps; ``partial=False``: full windows only), one per event after the first update; metrics
    that need a spectrum slide over the events that carry one."""
    frames = []
    spectral = [m for m in metrics if magg.needs_spectrum(m)]
    trace = [m for m in metrics if not magg.needs_spectrum(m)]
    for run in runs:
        trained = audit.trained_records(run.spectra)
        for records, subset in ((magg.spectrum_records(trained), spectral), (trained, trace)):
            if not subset:
                continue
            try:
                sw = magg.sliding_window_records(records, k, subset, partial=partial)
            except Exception:  # noqa: BLE001 - dynamics are optional; the terminal fit still stands
                continue
            if not sw.empty:
                frames.append(sw.assign(**run_columns(run)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """A user-supplied CSV table (``what`` names it in errors); a missing, unreadable or empty file
    is a SweepError, a short message naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{what} not found: {path}")
    try:
        frame = pd.read_csv(path)
    except Exception as err:  # noqa: BLE001
        raise SweepError(f"cannot read {what} {path}: {err}") from None
    if frame.empty:
        raise SweepError(f"{what} {path} has no rows")
    return frame


def read_points_file(path: str | Path) -> pd.DataFrame:
    """A user-supplied points table; aliases (ffn_hidden_dim) are renamed, labels lower-cased."""
    points = read_table(path, "points file")
    for alias, name in POINT_ALIASES.items():
        if alias in points.columns and name not in points.columns:
            points = points.rename(columns={alias: name})
    missing = [c for c in REQUIRED_POINT_COLUMNS if c not in points.columns]
    if missing:
        raise SweepError(f"points file {path} lacks column(s) {missing}; needs at least "
                         f"{list(REQUIRED_POINT_COLUMNS)}")
    for col in ("metric", "bucket", "site"):
        points[col] = points[col].astype(str).str.strip().str.lower()
    if "err" not in points.columns and {"err_low", "err_high"} <= set(points.columns):
        points["err"] = (points["err_high"] - points["err_low"]) / 2.0
    return points


def group_columns(points: pd.DataFrame) -> list[str]:
    """Grouping keys: every column that is not a value, provenance or width/seed column."""
    return [c for c in points.columns if c not in NON_KEY_COLUMNS]


def group_labels(frame: pd.DataFrame, keys: Sequence[str], varying_from: pd.DataFrame | None = None) -> pd.Series:
    """Short labels from the keys that vary ('adamw', 'dion rank_fraction=0.0625')."""
    ref = frame if varying_from is None else varying_from
    varying = [k for k in keys if k in ref.columns and ref[k].astype(str).nunique(dropna=False) > 1]
    if not varying:
        varying = [k for k in keys if k == "optimizer"]

    def label(row: pd.Series) -> str:
        parts = []
        for k in varying:
            v = row[k]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            v = fmt_key(v)
            parts.append(v if k == "optimizer" else f"{k}={v}")
        return " ".join(parts) if parts else "(all)"

    if frame.empty:
        return pd.Series([], dtype=str)
    return frame.apply(label, axis=1).astype(str)


def fmt_key(value: Any) -> str:
    """A key value as shown in labels (1.0 -> '1')."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
