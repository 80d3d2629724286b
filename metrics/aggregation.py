"""One number per run: the aggregation rules that reduce a run's telemetry records (step × layer ×
site × bucket) to one value per series, and the trailing windows of β over training.

The default is the paper's rule: per layer the median of the last ``AGGREGATION_EVENTS`` (5;
``metrics/schedule.py`` holds the one definition) logged events, then the median over layers, with
±1 SD (ddof=1) of the layer medians as error. Plain pandas/NumPy, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from specsweep.metrics.fit import RANK_METRICS, _as_tuple, _group_label
from specsweep.metrics.schedule import AGGREGATION_EVENTS



@dataclass(frozen=True)
class AggregationRule:
    """How one run's telemetry (step × layer records) is reduced to one value per series.

    kind: ``paper`` (median of the last ``last_k`` valid checkpoints per layer, then median over
    layers, ±1 SD of layer medians), ``mean`` (same with means), ``layer`` (one layer, median of
    its last ``last_k`` checkpoints, ±1 SD over those checkpoints) or ``window`` (paper rule on
    the steps in [step_min, step_max]).
    """

    kind: str = "paper"
    last_k: int = AGGREGATION_EVENTS
    layer: int | None = None
    step_min: int | None = None
    step_max: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("paper", "mean", "layer", "window"):
            raise ValueError(f"unknown aggregation rule {self.kind!r}")
        if self.kind == "layer" and self.layer is None:
            raise ValueError("rule 'layer' needs a layer index")
        if self.kind == "window" and (self.step_min is None or self.step_max is None):
            raise ValueError("rule 'window' needs step_min and step_max")
        if self.last_k < 1:
            raise ValueError("last_k must be >= 1")

    def describe(self) -> str:
        if self.kind == "paper":
            return (f"paper: per layer median of the last {self.last_k} logged checkpoints, "
                    "median over layers, err = 1 SD (ddof=1) of layer medians")
        if self.kind == "mean":
            return (f"mean: per layer mean of the last {self.last_k} logged checkpoints, "
                    "mean over layers, err = 1 SD (ddof=1) of layer means")
        if self.kind == "layer":
            return (f"layer {self.layer}: median of its last {self.last_k} logged checkpoints, "
                    "err = 1 SD over those checkpoints")
        return (f"window {self.step_min}-{self.step_max}: per layer median over the steps in the "
                "window, median over layers, err = 1 SD of layer medians")


def melt_records(records: pd.DataFrame, metrics: Sequence[str] = RANK_METRICS) -> pd.DataFrame:
    """Telemetry records (one row per step, layer, site, bucket) -> long rows with a finite value."""
    present = [m for m in metrics if m in records.columns]
    if records.empty or not present:
        return pd.DataFrame(columns=["step", "layer", "site", "bucket", "metric", "value"])
    frame = records
    if "status" in frame.columns:
        # A record whose status is not "ok" carries no metric values by contract.
        frame = frame[frame["status"].fillna("ok").astype(str) == "ok"]
    long = frame.melt(id_vars=["step", "layer", "site", "bucket"], value_vars=present,
                      var_name="metric", value_name="value")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    return long[np.isfinite(long["value"])].reset_index(drop=True)


_SERIES = ["site", "bucket", "metric"]


def layer_values(records: pd.DataFrame, rule: AggregationRule,
                 metrics: Sequence[str] = RANK_METRICS) -> pd.DataFrame:
    """Per-layer reduced values of one run: columns site, bucket, metric, layer, value,
    spread (SD over the checkpoints used), n_steps, step_min, step_max."""
    long = melt_records(records, metrics)
    if rule.kind == "window":
        long = long[(long["step"] >= rule.step_min) & (long["step"] <= rule.step_max)]
    if rule.kind == "layer":
        long = long[long["layer"] == rule.layer]
    keys = [*_SERIES, "layer"]
    long = long.sort_values([*keys, "step"], kind="stable")
    if rule.kind != "window":
        # The last k checkpoints that carry a valid value, per layer (as the paper's code does).
        long = long.groupby(keys, sort=False).tail(rule.last_k)
    values = long.groupby(keys, sort=True)["value"]
    steps = long.groupby(keys, sort=True)["step"]
    out = pd.DataFrame({
        "value": values.mean() if rule.kind == "mean" else values.median(),
        "spread": values.std(), "n_steps": steps.nunique(), "step_min": steps.min(),
        "step_max": steps.max()})
    return out.reset_index()


def _reduce_layers(per_layer: pd.DataFrame, keys: list[str], reducer: str) -> pd.DataFrame:
    g = per_layer.groupby(keys, sort=True)
    return pd.DataFrame({
        "value": g["value"].mean() if reducer == "mean" else g["value"].median(),
        "err": g["value"].std(), "n_layers": g["layer"].nunique(), "n_steps": g["n_steps"].max(),
        "window_start": g["step_min"].min(), "window_end": g["step_max"].max()}).reset_index()


TRACE_ONLY_METRICS: frozenset[str] = frozenset({"hard_rank", "renyi_2"})
"""Metrics that every telemetry record carries (the trace formula); all others need a spectrum
(metrics.records.TRACE_METRICS, restated here to keep this module free of torch)."""


def needs_spectrum(metric: str) -> bool:
    """Whether a metric exists only in records of events that were eigendecomposed."""
    return metric not in TRACE_ONLY_METRICS


def window_steps(records: pd.DataFrame, rule: AggregationRule) -> list[int]:
    """The telemetry steps a rule aggregates over: the run's last ``last_k`` logged steps (of
    ``rule.layer`` for the layer rule), or its steps in [step_min, step_max]."""
    if records.empty or "step" not in records.columns:
        return []
    frame = records
    if rule.kind == "layer" and "layer" in frame.columns:
        frame = frame[frame["layer"] == rule.layer]
    steps = sorted(int(s) for s in pd.unique(frame["step"]))
    if rule.kind == "window":
        return [s for s in steps if rule.step_min <= s <= rule.step_max]
    return steps[-rule.last_k:]


def _without_spectrum(records: pd.DataFrame) -> pd.Series:
    """Per record: whether it says it carries no spectrum (``spectrum`` a false bool; any other value counts as one)."""
    return records["spectrum"].map(lambda v: isinstance(v, (bool, np.bool_)) and not v)


def spectrum_gaps(records: pd.DataFrame, rule: AggregationRule) -> list[int]:
    """Steps of the rule's window whose records carry no spectrum (``spectrum`` false: hard ranks
    only). A record without the key (files written before it existed) counts as a spectrum."""
    if "spectrum" not in records.columns:
        return []
    window = window_steps(records, rule)
    sub = records[records["step"].isin(window)]
    without = _without_spectrum(sub)
    return sorted(int(s) for s in pd.unique(sub.loc[without, "step"]))


def spectrum_records(records: pd.DataFrame) -> pd.DataFrame:
    """The records of eigendecomposed events (a missing ``spectrum`` counts as true)."""
    if "spectrum" not in records.columns:
        return records
    return records[~_without_spectrum(records)]


def aggregate_records(records: pd.DataFrame, rule: AggregationRule | None = None,
                      metrics: Sequence[str] = RANK_METRICS) -> pd.DataFrame:
    """One value per (site, bucket, metric) of one run under ``rule`` (default: the paper's).

    Columns: site, bucket, metric, value, err, n_layers, n_steps, window_start, window_end.
    """
    rule = rule or AggregationRule()
    per_layer = layer_values(records, rule, metrics)
    cols = [*_SERIES, "value", "err", "n_layers", "n_steps", "window_start", "window_end"]
    if per_layer.empty:
        return pd.DataFrame(columns=cols)
    out = _reduce_layers(per_layer, _SERIES, "mean" if rule.kind == "mean" else "median")
    if rule.kind == "layer":
        # One layer: the spread is over its checkpoints, not over layers.
        out["err"] = per_layer.set_index(_SERIES)["spread"].reindex(
            pd.MultiIndex.from_frame(out[_SERIES])).to_numpy(dtype=float)
    # A single layer has no spread across layers; report 0 like the paper's code.
    out["err"] = out["err"].fillna(0.0)
    return out[cols]


def sliding_window_records(records: pd.DataFrame, k: int = 3,
                           metrics: Sequence[str] = RANK_METRICS, partial: bool = True) -> pd.DataFrame:
    """Paper-rule values over the trailing window of up to ``k`` logged checkpoints ending at each
    checkpoint of one run: one point per checkpoint from the first, the first k-1 from the
    checkpoints so far (the paper's trajectories); ``partial=False``: only full windows of k.

    Columns: end_step, n_events (checkpoints in the window), site, bucket, metric, value, err,
    n_layers. Feeding these to :func:`fit_beta_table` with ``end_step`` as an extra group column
    gives β over training.
    """
    cols = ["end_step", "n_events", *_SERIES, "value", "err", "n_layers"]
    long = melt_records(records, metrics)
    if long.empty or k < 1:
        return pd.DataFrame(columns=cols)
    steps = np.sort(pd.unique(records["step"]))
    idx = np.searchsorted(steps, long["step"].to_numpy())
    # Each row belongs to the k windows that end at its own checkpoint or the k-1 after it.
    copies = [long.assign(window=idx + offset) for offset in range(k)]
    rep = pd.concat(copies, ignore_index=True)
    rep = rep[(rep["window"] >= (0 if partial else k - 1)) & (rep["window"] < steps.size)]
    keys = ["window", *_SERIES, "layer"]
    per_layer = rep.groupby(keys, sort=True)["value"].median().reset_index()
    g = per_layer.groupby(["window", *_SERIES], sort=True)["value"]
    out = pd.DataFrame({"value": g.median(), "err": g.std().fillna(0.0),
                        "n_layers": g.count()}).reset_index()
    out["end_step"] = steps[out["window"].to_numpy()]
    out["n_events"] = np.minimum(out["window"].to_numpy() + 1, k)
    return out[cols]


def window_mismatches(points: pd.DataFrame, group_cols: Sequence[str]) -> list[str]:
    """Messages for fit groups whose runs were aggregated over different step windows."""
    if not {"window_start", "window_end"} <= set(points.columns):
        return []
    messages = []
    run_key = ["run_id"] if "run_id" in points.columns else []
    for key, sub in _groupby(points, group_cols):
        spans = sub.groupby(run_key)[["window_start", "window_end"]].agg(["min", "max"]) if run_key else None
        windows = (sub[["window_start", "window_end"]].drop_duplicates() if spans is None else
                   pd.DataFrame({"a": spans[("window_start", "min")], "b": spans[("window_end", "max")]})
                   .drop_duplicates())
        if len(windows) > 1:
            text = sorted(f"{a:g}-{b:g}" for a, b in windows.to_numpy(dtype=float) if np.isfinite([a, b]).all())
            messages.append(f"{_group_label(group_cols, key)}: runs use different aggregation windows "
                            f"(steps {', '.join(text)}); β mixes checkpoints from different training times")
    return messages


def _groupby(frame: pd.DataFrame, cols: Sequence[str]):
    """Iterate (key tuple, sub-frame) over ``cols``; the whole frame as one group when cols is empty."""
    if not cols:
        yield (), frame
        return
    for key, sub in frame.groupby(list(cols), dropna=False, sort=True):
        yield _as_tuple(key), sub
