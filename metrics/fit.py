"""Spectral scaling-law fits: rank ∝ width^β, their intervals, β tables and comparisons.

Everything here is plain NumPy/SciPy/pandas on in-memory arrays and DataFrames; reading run
directories, the command line's rule syntax, tables and figures live in ``sweep/analysis/``.

Conventions (docs/definitions.md §7):

* β is the OLS slope of ln R on ln D; its 95 % interval is slope ± t_{0.975}(n−2)·SE with the
  exact Student-t quantile (the paper's CIs are such *fit* intervals from one run per width).
* Seeds are combined by averaging ln R per width before fitting, so n is the number of widths.
* Δβ = β_soft − β_hard is fitted directly as the slope of ln(R_soft/R_hard) on ln D, which keeps
  the soft/hard pairing of each run in its interval.
* The per-run scalar they fit comes from ``metrics.aggregation`` (the paper's rule by default).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats


RANK_METRICS: tuple[str, str] = ("soft_rank", "hard_rank")
DELTA_METRIC = "delta_beta"
"""Name of the pseudo-metric whose slope is Δβ = β_soft − β_hard (ln R_soft/R_hard on ln D)."""

T_CI_METHOD = "t(n-2) {level:.0%} fit interval"
NO_CI_TWO_WIDTHS = "none: 2 widths (a t-interval needs >= 3)"
NO_FIT = "none: no fit"

FIT_COLUMNS: tuple[str, ...] = (
    "beta", "beta_lower", "beta_upper", "intercept", "r_squared", "std_err",
    "n_widths", "n_points", "ci_method", "note",
)


# --------------------------------------------------------------------------------------------
# Core OLS on log-log points
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PowerLawFit:
    """One log-log fit ln y = intercept + beta·ln D (for Δβ, y = R_soft/R_hard)."""

    beta: float
    beta_lower: float
    beta_upper: float
    intercept: float
    r_squared: float
    std_err: float
    n_widths: int
    n_points: int
    ci_method: str
    note: str = ""

    @property
    def ok(self) -> bool:
        """True when a slope was estimated (possibly without an interval)."""
        return math.isfinite(self.beta)

    def as_dict(self) -> dict:
        return asdict(self)


def _no_fit(n_widths: int, n_points: int, note: str) -> PowerLawFit:
    nan = float("nan")
    return PowerLawFit(nan, nan, nan, nan, nan, nan, n_widths, n_points, NO_FIT, note)


def t_quantile(level: float, dof: int) -> float:
    """Exact two-sided Student-t quantile t_{(1+level)/2}(dof), e.g. 2.4469 for 95 % and dof 6."""
    return float(stats.t.ppf(0.5 + level / 2.0, dof))


def fit_log_slope(
    ln_width: np.ndarray, ln_value: np.ndarray, *, level: float = 0.95, n_points: int | None = None,
    note: str = "",
) -> PowerLawFit:
    """OLS of ``ln_value`` on ``ln_width`` (one point per distinct width) with a t(n−2) interval.

    Fewer than 2 widths gives no fit; exactly 2 gives the slope through both points and no
    interval (there are no residual degrees of freedom), said so in ``ci_method``.
    """
    x = np.asarray(ln_width, dtype=float)
    y = np.asarray(ln_value, dtype=float)
    n = int(x.size)
    n_points = n if n_points is None else n_points
    notes = [note] if note else []
    if n != np.unique(x).size:
        raise ValueError("fit_log_slope expects one point per width; average seeds first")
    if n < 2:
        notes.append(f"no fit: {n} width(s), a slope needs >= 2")
        return _no_fit(n, n_points, "; ".join(notes))
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    beta = float(((x - xm) * (y - ym)).sum() / sxx)
    intercept = float(ym - beta * xm)
    resid = y - (intercept + beta * x)
    ss_res = float((resid ** 2).sum())
    ss_tot = float(((y - ym) ** 2).sum())
    r_squared = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    if n == 2:
        notes.append("2 widths: slope only, no interval")
        nan = float("nan")
        return PowerLawFit(beta, nan, nan, intercept, r_squared, nan, n, n_points,
                           NO_CI_TWO_WIDTHS, "; ".join(notes))
    std_err = math.sqrt(ss_res / (n - 2) / sxx)
    half = t_quantile(level, n - 2) * std_err
    return PowerLawFit(beta, beta - half, beta + half, intercept, r_squared, std_err, n, n_points,
                       T_CI_METHOD.format(level=level), "; ".join(notes))


def mean_log_by_width(ln_width: np.ndarray, ln_value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ln values per distinct width (how seeds are combined before a fit)."""
    x = np.asarray(ln_width, dtype=float)
    y = np.asarray(ln_value, dtype=float)
    xs, inv = np.unique(x, return_inverse=True)
    sums = np.bincount(inv, weights=y, minlength=xs.size)
    counts = np.bincount(inv, minlength=xs.size)
    return xs, sums / np.maximum(counts, 1)


def _valid_log_pairs(widths: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray, str]:
    """ln D and ln R for the usable points, plus a reason for every point left out."""
    w = np.asarray(widths, dtype=float)
    v = np.asarray(values, dtype=float)
    if w.shape != v.shape:
        raise ValueError(f"widths and values differ in length: {w.shape} vs {v.shape}")
    reasons = []
    bad_value = ~np.isfinite(v) | (v <= 0)
    bad_width = ~np.isfinite(w) | (w <= 0)
    if (np.isfinite(v) & (v <= 0)).any():
        reasons.append(f"excluded {int((np.isfinite(v) & (v <= 0)).sum())} non-positive value(s) "
                       f"at width(s) {sorted(set(w[np.isfinite(v) & (v <= 0)].tolist()))}")
    if (~np.isfinite(v)).any():
        reasons.append(f"excluded {int((~np.isfinite(v)).sum())} missing value(s)")
    if bad_width.any():
        reasons.append(f"excluded {int(bad_width.sum())} point(s) with a non-positive width")
    keep = ~(bad_value | bad_width)
    return np.log(w[keep]), np.log(v[keep]), "; ".join(reasons)


def fit_power_law(widths: Sequence[float], ranks: Sequence[float], *, level: float = 0.95) -> PowerLawFit:
    """Fit R = A·D^β; several values at one width (seeds) are averaged in log space first.

    Non-positive or missing ranks are excluded and the reason is put in ``note``.
    """
    x, y, note = _valid_log_pairs(widths, ranks)
    xu, yu = mean_log_by_width(x, y)
    return fit_log_slope(xu, yu, level=level, n_points=int(x.size), note=note)


def fit_delta_beta(
    widths: Sequence[float], soft: Sequence[float], hard: Sequence[float], *, level: float = 0.95
) -> PowerLawFit:
    """Δβ = β_soft − β_hard as the slope of ln(R_soft/R_hard) on ln D (pairs taken run by run).

    The same computation as the ``delta_beta`` rows of :func:`fit_beta_table` (the pairing in
    :func:`log_points`), for one series given as arrays: public API for callers holding arrays.
    """
    w = np.asarray(widths, dtype=float)
    s = np.asarray(soft, dtype=float)
    h = np.asarray(hard, dtype=float)
    if s.shape != h.shape:
        raise ValueError("soft and hard ranks must be paired run by run (same length)")
    if w.shape != s.shape:
        raise ValueError(f"widths and values differ in length: {w.shape} vs {s.shape}")
    run = np.arange(s.size).astype(str)  # each position is one run: its soft and hard rank pair up
    points = pd.DataFrame({"ffn_width": np.concatenate([w, w]), "run_id": np.concatenate([run, run]),
                           "metric": ["soft_rank"] * s.size + ["hard_rank"] * s.size,
                           "value": np.concatenate([s, h])})
    logs, _ = log_points(points, [], pair_cols=("run_id",))
    delta = logs[logs["metric"] == DELTA_METRIC]
    x, y = delta["ln_width"].to_numpy(float), delta["ln_value"].to_numpy(float)
    bad_pair = ~(np.isfinite(s) & np.isfinite(h) & (s > 0) & (h > 0))
    bad_width = ~np.isfinite(w) | (w <= 0)
    # Report the real reason (a non-positive rank) before a bad width, as one note.
    note = (f"excluded {int(bad_pair.sum())} pair(s) with a missing or non-positive rank" if bad_pair.any()
            else f"excluded {int(bad_width.sum())} point(s) with a non-positive width" if bad_width.any()
            else "")
    xu, yu = mean_log_by_width(x, y)
    return fit_log_slope(xu, yu, level=level, n_points=int(x.size), note=note)


# --------------------------------------------------------------------------------------------
# Two-group comparison and bootstrap
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SlopeComparison:
    """β_b − β_a from one pooled regression ln R ~ ln D × group, with a t-test on the interaction."""

    diff: float
    diff_lower: float
    diff_upper: float
    std_err: float
    t_stat: float
    p_value: float
    dof: int
    ci_method: str
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def compare_slopes(
    widths_a: Sequence[float], ranks_a: Sequence[float],
    widths_b: Sequence[float], ranks_b: Sequence[float], *, level: float = 0.95,
) -> SlopeComparison:
    """Pooled OLS ln R = a + β·ln D + c·[B] + Δ·ln D·[B]; Δ = β_b − β_a with a t(n−4) test.

    Each group is first reduced to one mean ln R per width, like a single fit. The residual
    variance is pooled over both groups, which is what makes this tighter than comparing two
    separate intervals.
    """
    xa, ya, _ = _valid_log_pairs(widths_a, ranks_a)
    xb, yb, _ = _valid_log_pairs(widths_b, ranks_b)
    xa, ya = mean_log_by_width(xa, ya)
    xb, yb = mean_log_by_width(xb, yb)
    nan = float("nan")
    if xa.size < 2 or xb.size < 2:
        return SlopeComparison(nan, nan, nan, nan, nan, nan, 0, NO_FIT,
                               f"needs >= 2 widths per group (got {xa.size} and {xb.size})")
    x = np.concatenate([xa, xb])
    y = np.concatenate([ya, yb])
    g = np.concatenate([np.zeros(xa.size), np.ones(xb.size)])
    design = np.column_stack([np.ones_like(x), x, g, x * g])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    diff = float(coef[3])
    dof = int(x.size - 4)
    if dof < 1:
        return SlopeComparison(diff, nan, nan, nan, nan, nan, dof, NO_CI_TWO_WIDTHS,
                               "no residual degrees of freedom: slope difference only")
    resid = y - design @ coef
    sigma2 = float(resid @ resid) / dof
    cov = sigma2 * np.linalg.inv(design.T @ design)
    se = math.sqrt(max(float(cov[3, 3]), 0.0))
    t_stat = diff / se if se > 0 else (math.inf if diff != 0 else nan)
    p_value = float(2.0 * stats.t.sf(abs(t_stat), dof)) if math.isfinite(t_stat) else (0.0 if diff else nan)
    half = t_quantile(level, dof) * se
    return SlopeComparison(diff, diff - half, diff + half, se, t_stat, p_value, dof,
                           f"pooled OLS interaction, t(n-4) {level:.0%}")


@dataclass(frozen=True)
class BootstrapInterval:
    lower: float
    upper: float
    n_boot: int
    method: str
    note: str = ""


def bootstrap_beta(
    widths: Sequence[float], values: Sequence[float], units: Sequence[object], *,
    unit_name: str = "seed", n_boot: int = 1000, level: float = 0.95, rng_seed: int = 0,
) -> BootstrapInterval:
    """Percentile bootstrap of β: resample ``units`` (seeds or layers) with replacement within
    each width, average ln R per width, refit. Reported next to, never instead of, the t-interval
    (at 3–8 widths bootstraps under-cover; optimizers-and-metrics.md §3)."""
    x, y, _ = _valid_log_pairs(widths, values)
    unit_arr = np.asarray(units, dtype=object)
    valid = np.isfinite(np.asarray(values, float)) & (np.asarray(values, float) > 0)
    unit_arr = unit_arr[valid & (np.asarray(widths, float) > 0)]
    nan = float("nan")
    method = f"percentile bootstrap over {unit_name}s within width (B={n_boot})"
    xs = np.unique(x)
    if xs.size < 2:
        return BootstrapInterval(nan, nan, 0, "none", "fewer than 2 widths")
    per_width = [y[x == xv] for xv in xs]
    if max(len(p) for p in per_width) < 2 or len(set(unit_arr.tolist())) < 2:
        return BootstrapInterval(nan, nan, 0, "none", f"one {unit_name} per width: nothing to resample")
    rng = np.random.default_rng(rng_seed)
    # Resampled mean ln R per width: shape (n_boot, n_widths); widths with one unit stay fixed.
    means = np.column_stack([
        p[rng.integers(0, len(p), size=(n_boot, len(p)))].mean(axis=1) for p in per_width
    ])
    xc = xs - xs.mean()
    slopes = (means - means.mean(axis=1, keepdims=True)) @ xc / float(xc @ xc)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(slopes, [alpha, 1.0 - alpha])
    return BootstrapInterval(float(lo), float(hi), n_boot, method)


# --------------------------------------------------------------------------------------------
# Tables of fits over a long points DataFrame
# --------------------------------------------------------------------------------------------

@dataclass
class FitTable:
    """A table of fits plus the messages explaining skipped or degraded groups."""

    table: pd.DataFrame
    messages: list[str]


def _group_label(keys: Sequence[str], values: tuple) -> str:
    parts = [f"{k}={v}" for k, v in zip(keys, values) if not _is_missing(v)]
    return ", ".join(parts) if parts else "(all)"


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_tuple(key: object) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def log_points(
    points: pd.DataFrame, group_cols: Sequence[str], *, width_col: str = "ffn_width",
    value_col: str = "value", pair_cols: Sequence[str] = ("seed", "run_id"),
    metrics: Sequence[str] | None = None, with_delta: bool = True,
) -> tuple[pd.DataFrame, list[str]]:
    """Long frame of ln D and ln R per series point, with Δβ rows (ln R_soft/R_hard) added.

    Output columns: group_cols, metric, bucket, site, width, unit, ln_width, ln_value.
    ``unit`` identifies the run inside a width (seed, else run id) for pairing and bootstrap.
    Non-positive or missing values are dropped, each drop explained in the messages.
    """
    messages: list[str] = []
    frame = points.copy()
    for col in ("bucket", "site"):
        if col not in frame.columns:
            frame[col] = "global" if col == "bucket" else "post"
    if metrics is not None:
        frame = frame[frame["metric"].isin(list(metrics))]
    present_pairs = [c for c in pair_cols if c in frame.columns]
    unit = pd.Series("0", index=frame.index)
    for i, col in enumerate(present_pairs):
        unit = frame[col].astype(str) if i == 0 else unit + "/" + frame[col].astype(str)
    frame["unit"] = unit
    series_cols = [*group_cols, "metric", "bucket", "site"]
    value = pd.to_numeric(frame[value_col], errors="coerce")
    width = pd.to_numeric(frame[width_col], errors="coerce")
    bad = ~(np.isfinite(value) & (value > 0) & np.isfinite(width) & (width > 0))
    if bad.any():
        for key, sub in frame[bad].groupby(series_cols, dropna=False):
            v = pd.to_numeric(sub[value_col], errors="coerce")
            kind = "non-positive" if (v <= 0).any() else "missing"
            messages.append(f"{_group_label(series_cols, _as_tuple(key))}: excluded {len(sub)} "
                            f"{kind} value(s) at {width_col} {sorted(sub[width_col].tolist())}")
    frame = frame[~bad].assign(width=width[~bad].astype(float), ln_width=np.log(width[~bad].astype(float)),
                               ln_value=np.log(value[~bad].astype(float)))
    keep = [*series_cols, "width", "unit", "ln_width", "ln_value"]
    out = frame[keep]
    if with_delta and {"soft_rank", "hard_rank"} <= set(out["metric"].unique()):
        out = pd.concat([out, _delta_rows(out, group_cols)[keep]], ignore_index=True)
    return out.reset_index(drop=True), messages


def _delta_rows(logs: pd.DataFrame, group_cols: Sequence[str]) -> pd.DataFrame:
    """Δβ rows of a log frame: ln R_soft − ln R_hard of the same run (unit) at the same width.

    The one place Δβ's pairing is defined: every Δβ of this module (β tables, comparisons,
    matched loss, :func:`fit_delta_beta`) is fitted on these rows.
    """
    idx = [*group_cols, "bucket", "site", "width", "unit", "ln_width"]
    # Merge (not pivot) so that missing group keys such as rank_fraction=NaN still pair up.
    soft = logs[logs["metric"] == "soft_rank"].groupby(idx, dropna=False)["ln_value"].mean()
    hard = logs[logs["metric"] == "hard_rank"].groupby(idx, dropna=False)["ln_value"].mean()
    both = pd.merge(soft.rename("soft").reset_index(), hard.rename("hard").reset_index(), on=idx)
    return both.assign(metric=DELTA_METRIC, ln_value=both["soft"] - both["hard"])


def _iter_series(logs: pd.DataFrame, series_cols: Sequence[str]):
    """Yield (key dict, ln_width, ln_value, unit) per series, slicing sorted NumPy arrays
    (one groupby for all series keeps big β-over-steps tables fast)."""
    codes = logs.groupby(list(series_cols), dropna=False, sort=True).ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    ends = np.r_[starts[1:], sorted_codes.size]
    keys = logs[list(series_cols)].iloc[order[starts]].to_dict("records")
    x = logs["ln_width"].to_numpy(float)[order]
    y = logs["ln_value"].to_numpy(float)[order]
    units = logs["unit"].to_numpy(object)[order]
    for key, a, b in zip(keys, starts, ends):
        yield key, x[a:b], y[a:b], units[a:b]


def fit_beta_table(
    points: pd.DataFrame, group_cols: Sequence[str], *, width_col: str = "ffn_width",
    value_col: str = "value", level: float = 0.95, metrics: Sequence[str] | None = None,
    bootstrap: bool = True, n_boot: int = 1000, unit_name: str = "seed",
) -> FitTable:
    """β for every group × metric × bucket × site, plus ``delta_beta`` rows (Δβ = β_soft − β_hard).

    Groups that cannot be fit keep a row with NaN β and the reason in ``note``; every such reason
    is also returned in ``messages``. A bootstrap interval (``boot_lower``/``boot_upper``,
    labelled in ``boot_method``) is added where some width has several seeds.
    """
    group_cols = list(group_cols)
    logs, messages = log_points(points, group_cols, width_col=width_col, value_col=value_col,
                                metrics=metrics)
    series_cols = [*group_cols, "metric", "bucket", "site"]
    rows = []
    if logs.empty:
        messages.append("no usable points to fit")
        return FitTable(pd.DataFrame(columns=[*series_cols, *FIT_COLUMNS]), messages)
    notes: dict[tuple[str, str], list[str]] = {}
    for key, x, y, units in _iter_series(logs, series_cols):
        xu, yu = mean_log_by_width(x, y)
        fit = fit_log_slope(xu, yu, level=level, n_points=int(x.size))
        row = key | fit.as_dict()
        row["n_units_max"] = max(Counter(w for w, _ in set(zip(x.tolist(), units.tolist()))).values())
        if bootstrap and row["n_units_max"] > 1 and fit.ok:
            boot = bootstrap_beta(np.exp(x), np.exp(y), units, unit_name=unit_name, n_boot=n_boot,
                                  level=level)
            row |= {"boot_lower": boot.lower, "boot_upper": boot.upper, "boot_method": boot.method}
        else:
            row |= {"boot_lower": float("nan"), "boot_upper": float("nan"), "boot_method": ""}
        if fit.note:
            group = _group_label(group_cols, tuple(key[c] for c in group_cols))
            notes.setdefault((group, fit.note), []).append(f"{key['metric']}/{key['bucket']}/{key['site']}")
        rows.append(row)
    # One message per group and reason, not one per metric × bucket × site.
    for (group, note), series in notes.items():
        which = ", ".join(series) if len(series) <= 3 else f"{len(series)} series"
        messages.append(f"{group}: {note} [{which}]")
    table = pd.DataFrame(rows)
    return FitTable(table, messages)


def beta_summary(beta_table: pd.DataFrame, group_cols: Sequence[str]) -> pd.DataFrame:
    """Wide view: one row per group × bucket × site with β_soft, β_hard, Δβ and their intervals."""
    idx = [*group_cols, "bucket", "site"]
    parts = []
    for metric, short in (("soft_rank", "soft"), ("hard_rank", "hard"), (DELTA_METRIC, "delta")):
        sub = beta_table[beta_table["metric"] == metric]
        if sub.empty:
            continue
        cols = {"beta": f"beta_{short}", "beta_lower": f"{short}_lower", "beta_upper": f"{short}_upper"}
        part = sub[idx + list(cols)].rename(columns=cols).set_index(idx)
        if short == "hard":
            part = part.join(sub.set_index(idx)[["n_widths"]])
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=idx)
    return pd.concat(parts, axis=1).reset_index()


def compare_groups(
    points: pd.DataFrame, group_cols: Sequence[str], by: str, reference: object, *,
    width_col: str = "ffn_width", value_col: str = "value", level: float = 0.95,
) -> FitTable:
    """Compare every value of ``by`` (e.g. optimizer) to ``reference`` within each other group,
    metric (incl. Δβ), bucket and site, by the pooled interaction test of :func:`compare_slopes`."""
    logs, messages = log_points(points, group_cols, width_col=width_col, value_col=value_col)
    rest = [c for c in group_cols if c != by]
    series_cols = [*rest, "metric", "bucket", "site"]
    rows = []
    for key, sub in logs.groupby(series_cols, dropna=False, sort=True):
        key = _as_tuple(key)
        ref = sub[sub[by] == reference]
        if ref.empty:
            continue
        for other, osub in sub[sub[by] != reference].groupby(by, dropna=False, sort=True):
            cmp = compare_slopes(np.exp(ref["ln_width"]), np.exp(ref["ln_value"]),
                                 np.exp(osub["ln_width"]), np.exp(osub["ln_value"]), level=level)
            rows.append(dict(zip(series_cols, key)) | {f"{by}_ref": reference, by: other} | cmp.as_dict())
            if cmp.note:
                messages.append(f"{_group_label(series_cols, key)} {other} vs {reference}: {cmp.note}")
    return FitTable(pd.DataFrame(rows), messages)


# --------------------------------------------------------------------------------------------
# Matched-loss pairing and the optimizer-gain vs architecture-shift rule
# --------------------------------------------------------------------------------------------

def match_runs_by_loss(
    runs: pd.DataFrame, tol: float, *, config_col: str = "config", width_col: str = "ffn_width",
    loss_col: str = "eval_loss", relative: bool = False,
) -> pd.DataFrame:
    """Pairs of configurations (optimizer/budget) at the same width whose eval loss is within ``tol``.

    Losses are averaged over seeds per config × width first. ``relative`` compares
    |a − b| / mean(a, b) instead of |a − b|. Returns one row per config pair × shared width with
    columns config_a, config_b, width, loss_a, loss_b, gap, matched.
    """
    cols = ["config_a", "config_b", "width", "loss_a", "loss_b", "gap", "matched"]
    frame = runs[[config_col, width_col, loss_col]].copy()
    frame[loss_col] = pd.to_numeric(frame[loss_col], errors="coerce")
    frame = frame.dropna(subset=[loss_col])
    mean_loss = frame.groupby([config_col, width_col])[loss_col].mean().unstack(config_col)
    rows = []
    for a, b in itertools.combinations(sorted(mean_loss.columns, key=str), 2):
        both = mean_loss[[a, b]].dropna()
        for width, (la, lb) in both.iterrows():
            gap = abs(la - lb) / ((la + lb) / 2.0) if relative else abs(la - lb)
            rows.append((a, b, width, la, lb, gap, bool(gap <= tol)))
    return pd.DataFrame(rows, columns=cols)


def compare_matched_configs(
    points: pd.DataFrame, pairs: pd.DataFrame, *, config_col: str = "config",
    width_col: str = "ffn_width", value_col: str = "value", min_widths: int = 2, level: float = 0.95,
) -> FitTable:
    """For each config pair, fit β (soft, hard, Δβ) of both on their loss-matched widths only and
    compare them with the pooled interaction test."""
    messages: list[str] = []
    rows = []
    matched = pairs[pairs["matched"]] if not pairs.empty else pairs
    for (a, b), sub in matched.groupby(["config_a", "config_b"], sort=True):
        widths = sorted(sub["width"].tolist())
        if len(widths) < min_widths:
            messages.append(f"matched loss {a} vs {b}: only {len(widths)} matched width(s) "
                            f"{widths}, need {min_widths}")
            continue
        subset = points[points[config_col].isin([a, b]) & points[width_col].isin(widths)]
        logs, _ = log_points(subset, [config_col], width_col=width_col, value_col=value_col)
        for (metric, bucket, site), series in logs.groupby(["metric", "bucket", "site"], sort=True):
            sa = series[series[config_col] == a]
            sb = series[series[config_col] == b]
            fa = fit_log_slope(*mean_log_by_width(sa["ln_width"], sa["ln_value"]), level=level)
            fb = fit_log_slope(*mean_log_by_width(sb["ln_width"], sb["ln_value"]), level=level)
            cmp = compare_slopes(np.exp(sa["ln_width"]), np.exp(sa["ln_value"]),
                                 np.exp(sb["ln_width"]), np.exp(sb["ln_value"]), level=level)
            rows.append({"config_a": a, "config_b": b, "n_matched": len(widths),
                         "widths": ";".join(f"{w:g}" for w in widths), "metric": metric,
                         "bucket": bucket, "site": site, "beta_a": fa.beta, "beta_b": fb.beta,
                         "diff": cmp.diff, "diff_lower": cmp.diff_lower,
                         "diff_upper": cmp.diff_upper, "p_value": cmp.p_value,
                         "ci_method": cmp.ci_method})
    if pairs.empty or not pairs["matched"].any():
        messages.append("matched loss: no pair of configurations is within the tolerance at any width")
    return FitTable(pd.DataFrame(rows), messages)


def optimizer_gain_vs_arch_shift(
    beta_table: pd.DataFrame, *, arch_col: str, baseline: object, optimizer_col: str = "optimizer",
    reference: object = "adamw", metrics: Sequence[str] = RANK_METRICS,
) -> pd.DataFrame:
    """The paper's rule (paper-notes §5d) per metric × bucket × site × optimizer × alternative arch:

    optimizer gain = max over optimizers of β at the baseline architecture − β of ``reference`` there;
    architecture shift = |β(alternative arch) − β(baseline arch)| for that optimizer;
    ``gain_exceeds_shift`` says whether the gain is larger.
    """
    table = beta_table[beta_table["metric"].isin(list(metrics))]
    cols = ["metric", "bucket", "site", optimizer_col, arch_col, "beta_baseline", "beta_alt",
            "optimizer_gain", "arch_shift", "gain_exceeds_shift"]
    rows = []
    for (metric, bucket, site), sub in table.groupby(["metric", "bucket", "site"], sort=True):
        base = sub[sub[arch_col] == baseline].set_index(optimizer_col)["beta"]
        if reference not in base.index or base.dropna().empty:
            continue
        gain = float(base.max() - base[reference])
        for (opt, arch), alt in sub[sub[arch_col] != baseline].groupby([optimizer_col, arch_col], sort=True):
            if opt not in base.index:
                continue
            shift = abs(float(alt["beta"].iloc[0]) - float(base[opt]))
            rows.append((metric, bucket, site, opt, arch, float(base[opt]), float(alt["beta"].iloc[0]),
                         gain, shift, bool(gain > shift)))
    return pd.DataFrame(rows, columns=cols)
