"""Figures of a fit (matplotlib Agg; each figure as PNG and PDF under ``<out>/figures/``).

rank vs width with the fitted power laws, β per bucket with intervals, the soft/hard phase map,
final loss vs width and β over training. ``write_figures`` draws them all; a figure that fails
becomes a message of the result, never an exception.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from metrics import fit as mfit
from sweep.analysis.points import BUCKET_ORDER, SITE_ORDER, WIDTH_COL
from sweep.analysis.result import FitResult

_METRIC_TITLES = {"soft_rank": "soft rank R_soft", "hard_rank": "hard rank R_hard",
                  mfit.DELTA_METRIC: "Δβ = β_soft − β_hard"}


def _pyplot():
    # Imported here: matplotlib is slow to import and only needed when figures are drawn.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    plt = _pyplot()
    cycle = plt.get_cmap("tab10")
    return {lab: cycle(i % 10) for i, lab in enumerate(sorted(set(labels)))}


def _ordered(values: Sequence[str], order: Sequence[str]) -> list[str]:
    values = list(dict.fromkeys(values))
    return sorted(values, key=lambda v: (order.index(v) if v in order else len(order), v))


def _plain_log_ticks(ax: Any, axis: str = "both", widths: Sequence[float] | None = None) -> None:
    """'%g' labels on log axes: mathtext tick labels dominate drawing time for small figures."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

    targets = [ax.xaxis, ax.yaxis] if axis == "both" else [getattr(ax, f"{axis}axis")]
    for target in targets:
        if target is ax.xaxis and widths is not None:
            target.set_major_locator(FixedLocator(sorted(set(widths))))  # ticks at the swept widths
        else:
            target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        target.set_minor_locator(NullLocator())


def _save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    plt = _pyplot()
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    fig.tight_layout()  # once, instead of bbox_inches="tight" re-laying out every format
    paths = []
    for ext in ("png", "pdf"):
        path = fig_dir / f"{stem}.{ext}"
        fig.savefig(path, dpi=110)
        paths.append(path)
    plt.close(fig)
    return paths


def _geo_mean_by_width(sub: pd.DataFrame) -> pd.DataFrame:
    sub = sub[pd.to_numeric(sub["value"], errors="coerce") > 0]
    err = sub["err"] if "err" in sub.columns else pd.Series(0.0, index=sub.index)
    return (sub.assign(ln=np.log(sub["value"].astype(float)), e=pd.to_numeric(err, errors="coerce"))
            .groupby(WIDTH_COL).agg(ln=("ln", "mean"), err=("e", "mean")).reset_index()
            .assign(value=lambda f: np.exp(f["ln"])))


def figure_rank_vs_width(result: FitResult, site: str) -> list[Path]:
    """Rank vs width (log-log) per bucket, soft and hard, with the fitted power law per group."""
    plt = _pyplot()
    pts = result.points[result.points["site"] == site]
    buckets = _ordered(pts["bucket"].unique(), BUCKET_ORDER)
    colors = _colors(result.points["label"])
    fig, axes = plt.subplots(len(buckets), 2, figsize=(10, 3.2 * len(buckets)), squeeze=False,
                             sharex=True)
    fits = result.beta_table
    for i, bucket in enumerate(buckets):
        for j, metric in enumerate(mfit.RANK_METRICS):
            ax = axes[i, j]
            for label, sub in pts[(pts["bucket"] == bucket) & (pts["metric"] == metric)].groupby("label"):
                agg = _geo_mean_by_width(sub)
                if agg.empty:
                    continue
                ax.errorbar(agg[WIDTH_COL], agg["value"], yerr=agg["err"].fillna(0).clip(upper=agg["value"] * 0.999),
                            fmt="o", ms=4, capsize=2, color=colors[label], alpha=0.85)
                row = fits[(fits["label"] == label) & (fits["metric"] == metric)
                           & (fits["bucket"] == bucket) & (fits["site"] == site)]
                name = label
                if not row.empty and np.isfinite(row["beta"].iloc[0]):
                    d = np.geomspace(agg[WIDTH_COL].min(), agg[WIDTH_COL].max(), 50)
                    ax.plot(d, np.exp(row["intercept"].iloc[0]) * d ** row["beta"].iloc[0],
                            color=colors[label], lw=1.4)
                    name = f"{label}: β={row['beta'].iloc[0]:.2f}"
                ax.plot([], [], color=colors[label], marker="o", label=name)
            ax.set_xscale("log")
            ax.set_yscale("log")
            _plain_log_ticks(ax, widths=pts[WIDTH_COL].astype(float).tolist())
            ax.set_xlabel("FFN width D")
            ax.set_ylabel(_METRIC_TITLES[metric])
            ax.set_title(f"{bucket} · {site} · {metric}")
            ax.grid(True, alpha=0.25)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    return _save(fig, result.out_dir, f"rank_vs_width_{site}")


def figure_beta_by_bucket(result: FitResult, site: str) -> list[Path]:
    """β per group × bucket with 95 % intervals: soft, hard and Δβ panels."""
    plt = _pyplot()
    table = result.beta_table[result.beta_table["site"] == site]
    buckets = _ordered(table["bucket"].unique(), BUCKET_ORDER)
    labels = sorted(table["label"].unique())
    colors = _colors(result.points["label"])
    metrics = [m for m in (*mfit.RANK_METRICS, mfit.DELTA_METRIC) if m in set(table["metric"])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    width = 0.8 / max(len(labels), 1)
    for ax, metric in zip(axes[0], metrics):
        for k, label in enumerate(labels):
            rows = table[(table["metric"] == metric) & (table["label"] == label)].set_index("bucket")
            xs, ys, lo, hi = [], [], [], []
            for b_i, bucket in enumerate(buckets):
                if bucket not in rows.index:
                    continue
                r = rows.loc[bucket]
                xs.append(b_i - 0.4 + width * (k + 0.5))
                ys.append(r["beta"])
                lo.append(r["beta"] - r["beta_lower"] if np.isfinite(r["beta_lower"]) else 0.0)
                hi.append(r["beta_upper"] - r["beta"] if np.isfinite(r["beta_upper"]) else 0.0)
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, color=colors[label], label=label)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(len(buckets)), buckets)
        ax.set_title(("β of " if metric != mfit.DELTA_METRIC else "") + _METRIC_TITLES[metric] + f" ({site})")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("β  (95% t-interval)")
    axes[0, -1].legend(fontsize=7)
    return _save(fig, result.out_dir, f"beta_by_bucket_{site}")


def figure_phase_map(result: FitResult, site: str) -> list[Path]:
    """Soft/hard phase map: x = ln R_soft / ln D, y = ln R_hard / ln D (log D is the normalizer).

    R_hard ≤ R_soft always, so the region above the diagonal is forbidden; the diagonal is the
    frontier R_hard = R_soft (no asymmetry). One trajectory per group across widths.
    """
    plt = _pyplot()
    pts = result.points[(result.points["site"] == site) & result.points["metric"].isin(mfit.RANK_METRICS)]
    pts = pts[pd.to_numeric(pts["value"], errors="coerce") > 0]
    buckets = _ordered(pts["bucket"].unique(), BUCKET_ORDER)
    colors = _colors(result.points["label"])
    fig, axes = plt.subplots(1, len(buckets), figsize=(3.8 * len(buckets), 3.9), squeeze=False)
    for ax, bucket in zip(axes[0], buckets):
        ax.fill_between([0, 1], [0, 1], [1, 1], color="0.85", label="forbidden: R_hard > R_soft")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="frontier R_hard = R_soft")
        sub = pts[pts["bucket"] == bucket].assign(ln=lambda f: np.log(f["value"].astype(float)))
        wide = sub.pivot_table(index=["label", WIDTH_COL], columns="metric", values="ln", aggfunc="mean")
        if {"soft_rank", "hard_rank"} <= set(wide.columns):
            wide = wide.dropna().reset_index()
            for label, g in wide.groupby("label"):
                g = g.sort_values(WIDTH_COL)
                ln_d = np.log(g[WIDTH_COL].astype(float))
                x, y = g["soft_rank"] / ln_d, g["hard_rank"] / ln_d
                ax.plot(x, y, "-", color=colors[label], lw=0.8, alpha=0.6)
                ax.scatter(x, y, s=12 + 30 * np.arange(len(g)) / max(len(g) - 1, 1),
                           color=colors[label], label=label, zorder=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("ln R_soft / ln D")
        ax.set_ylabel("ln R_hard / ln D")
        ax.set_title(f"phase map · {bucket} · {site}")
    axes[0, -1].legend(fontsize=6, loc="upper left")
    return _save(fig, result.out_dir, f"phase_map_{site}")


def figure_loss_vs_width(result: FitResult) -> list[Path]:
    """Final eval loss vs width per group (mean ± SD over seeds)."""
    runs = result.runs
    if "eval_loss" not in runs.columns or not np.isfinite(pd.to_numeric(runs["eval_loss"], errors="coerce")).any():
        return []
    plt = _pyplot()
    colors = _colors(result.points["label"])
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for label, sub in runs.groupby("label"):
        agg = sub.groupby(WIDTH_COL)["eval_loss"].agg(["mean", "std"]).reset_index().dropna(subset=["mean"])
        ax.errorbar(agg[WIDTH_COL], agg["mean"], yerr=agg["std"].fillna(0), fmt="o-", ms=4,
                    capsize=2, color=colors.get(label), label=label)
    ax.set_xscale("log")
    _plain_log_ticks(ax, "x", widths=runs[WIDTH_COL].astype(float).tolist())
    ax.set_xlabel("FFN width D")
    ax.set_ylabel("final eval loss")
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=7)
    return _save(fig, result.out_dir, "loss_vs_width")


def figure_beta_over_steps(result: FitResult, site: str) -> list[Path]:
    """β_soft (solid) and β_hard (dashed) over training, from sliding windows of checkpoints."""
    bs = result.beta_steps
    if bs.empty:
        return []
    bs = bs[(bs["site"] == site) & bs["metric"].isin(mfit.RANK_METRICS)]
    if bs.empty or not np.isfinite(bs["beta"]).any():
        return []
    plt = _pyplot()
    buckets = _ordered(bs["bucket"].unique(), BUCKET_ORDER)
    colors = _colors(result.points["label"])
    fig, axes = plt.subplots(1, len(buckets), figsize=(4 * len(buckets), 3.4), squeeze=False, sharey=True)
    for ax, bucket in zip(axes[0], buckets):
        for (label, metric), g in bs[bs["bucket"] == bucket].groupby(["label", "metric"]):
            g = g.sort_values("end_step")
            style = "-" if metric == "soft_rank" else "--"
            ax.plot(g["end_step"], g["beta"], style, color=colors.get(label),
                    label=f"{label} {'soft' if metric == 'soft_rank' else 'hard'}")
            ax.fill_between(g["end_step"], g["beta_lower"], g["beta_upper"], color=colors.get(label), alpha=0.12)
        ax.set_title(f"β over training · {bucket} · {site}")
        ax.set_xlabel("step (window end)")
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_ylabel("β")
    axes[0, -1].legend(fontsize=6)
    return _save(fig, result.out_dir, f"beta_over_steps_{site}")


def write_figures(result: FitResult, sites: Sequence[str] | None = None) -> list[Path]:
    """All figures for ``sites`` (default: post only, where the paper's claims live, or the one
    site present); a failing figure becomes a message, never an exception."""
    paths: list[Path] = []
    present = _ordered(result.points["site"].unique(), SITE_ORDER)
    sites = [s for s in (sites or present[:1]) if s in present]
    jobs = [(f, s) for s in sites for f in (figure_rank_vs_width, figure_beta_by_bucket,
                                            figure_phase_map, figure_beta_over_steps)]
    jobs.append((figure_loss_vs_width, None))
    for func, site in jobs:
        try:
            paths += func(result, site) if site is not None else func(result)
        except Exception as err:  # noqa: BLE001
            result.messages.append(f"figure {func.__name__}({site or ''}) failed: {type(err).__name__}: {err}")
            _pyplot().close("all")
    return paths
