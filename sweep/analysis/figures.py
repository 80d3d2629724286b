"""Figures of a fit (matplotlib Agg): each as PNG and PDF under ``<out>/figures/``, and all of
them, one per page, in ``figures/all_figures.pdf``.

rank vs width with the fitted power laws, β per bucket with intervals, the soft/hard phase map,
final loss vs width and β over training. Every figure carries the caption of ``style.caption``
(sweep, steps, seeds, rule) as its title, one legend below the panels, and the colours of
``style.palette``. The ``figure_*`` functions build a figure (None when there is nothing to
draw); ``write_figures`` saves them; a figure that fails becomes a message, never an exception.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from specsweep.metrics import fit as mfit
from specsweep.sweep.analysis.points import BUCKET_ORDER, SITE_ORDER, WIDTH_COL
from specsweep.sweep.analysis.result import FitResult
from specsweep.sweep.analysis.figure_frame import (
    NOTE_STEP,
    errorbar_handle,
    finish,
    group_handles,
    plain_log_ticks,
    pyplot,
    reserve_top,
)
from specsweep.sweep.analysis.style import optimizer_of_labels, ordered_labels, palette, width_offsets

COMBINED_PDF = "all_figures.pdf"
_METRIC_TITLES = {"soft_rank": "soft rank R_soft", "hard_rank": "hard rank R_hard",
                  mfit.DELTA_METRIC: "Δβ = β_soft − β_hard"}
_DPI = 110


def colours_of(result: FitResult) -> dict[str, str]:
    """The colour of every group label of the result (the same in all its figures)."""
    return palette(optimizer_of_labels(result.points))


def _ordered(values: Sequence[str], order: Sequence[str]) -> list[str]:
    values = list(dict.fromkeys(values))
    return sorted(values, key=lambda v: (order.index(v) if v in order else len(order), v))


def _geo_mean_by_width(sub: pd.DataFrame) -> pd.DataFrame:
    sub = sub[pd.to_numeric(sub["value"], errors="coerce") > 0]
    err = sub["err"] if "err" in sub.columns else pd.Series(0.0, index=sub.index)
    return (sub.assign(ln=np.log(sub["value"].astype(float)), e=pd.to_numeric(err, errors="coerce"))
            .groupby(WIDTH_COL).agg(ln=("ln", "mean"), err=("e", "mean")).reset_index()
            .assign(value=lambda f: np.exp(f["ln"])))


def figure_rank_vs_width(result: FitResult, site: str) -> Any:
    """Rank vs width (log-log) per bucket, soft and hard, with the fitted power law per group;
    groups offset along x so their points and bars stay apart."""
    plt = pyplot()
    pts = result.points[(result.points["site"] == site) & result.points["metric"].isin(mfit.RANK_METRICS)]
    buckets = _ordered(pts["bucket"].unique(), BUCKET_ORDER)
    if not buckets:
        return None
    colours = colours_of(result)
    labels = ordered_labels(colours, pts["label"].unique())
    widths = pts[WIDTH_COL].astype(float).tolist()
    offsets = width_offsets(labels, widths)
    fig, axes = plt.subplots(len(buckets), 2, figsize=(9.5, 2.9 * len(buckets) + 0.9), squeeze=False,
                             sharex=True)
    fits = result.beta_table
    for i, bucket in enumerate(buckets):
        for j, metric in enumerate(mfit.RANK_METRICS):
            ax = axes[i, j]
            notes = []
            for label in labels:
                sub = pts[(pts["bucket"] == bucket) & (pts["metric"] == metric) & (pts["label"] == label)]
                agg = _geo_mean_by_width(sub)
                if agg.empty:
                    continue
                ax.errorbar(agg[WIDTH_COL] * offsets[label], agg["value"],
                            yerr=agg["err"].fillna(0).clip(upper=agg["value"] * 0.999),
                            fmt="o", ms=4, capsize=2, color=colours[label], alpha=0.9)
                row = fits[(fits["label"] == label) & (fits["metric"] == metric)
                           & (fits["bucket"] == bucket) & (fits["site"] == site)]
                if not row.empty and np.isfinite(row["beta"].iloc[0]):
                    d = np.geomspace(agg[WIDTH_COL].min(), agg[WIDTH_COL].max(), 20)
                    # drawn with the group's offset too, so the line goes through its points
                    ax.plot(d * offsets[label], np.exp(row["intercept"].iloc[0]) * d ** row["beta"].iloc[0],
                            color=colours[label], lw=1.3)
                    notes.append((label, f"β={row['beta'].iloc[0]:.2f}"))
            ax.set_xscale("log")
            ax.set_yscale("log")
            reserve_top(ax, NOTE_STEP * len(notes) + 0.06)
            for k, (label, text) in enumerate(notes):  # β of each group, in its colour, top left
                ax.text(0.03, 0.97 - NOTE_STEP * k, text, transform=ax.transAxes, fontsize=7,
                        color=colours[label], va="top")
            plain_log_ticks(ax, widths=widths)
            ax.set_ylabel(_METRIC_TITLES[metric])
            ax.set_title(f"{bucket} · {site} · {metric}", fontsize=9)
            ax.grid(True, alpha=0.25)
        for ax in axes[-1]:
            ax.set_xlabel("FFN width D (groups offset for legibility)")
    handles, names = group_handles(colours, labels)
    bar, bar_text = errorbar_handle(f"{result.err_meaning or 'err of the points table'}"
                                     + (", mean over seeds" if _has_seeds(result) else ""))
    from matplotlib.lines import Line2D

    handles += [Line2D([], [], color="0.4", lw=1.3), bar]
    names += ["fit: R = A·D^β (OLS of ln R on ln D)", bar_text]
    return finish(fig, result, handles, names)


def _has_seeds(result: FitResult) -> bool:
    return "seed" in result.runs.columns and result.runs["seed"].nunique() > 1


def _draw_published(ax: Any, rows: pd.DataFrame, buckets: list[str], x_of: Callable[[int], float],
                    colour: str) -> None:
    """Published β beside ours: hollow markers with dashed interval bars (no bar without one)."""
    rows = rows[rows["bucket"].isin(buckets)]
    if not rows.empty:
        beta = rows["published_beta"].to_numpy(float)
        err = np.nan_to_num([beta - rows["published_lower"].to_numpy(float),
                             rows["published_upper"].to_numpy(float) - beta])
        bars = ax.errorbar([x_of(buckets.index(b)) for b in rows["bucket"]], beta, yerr=err, fmt="o",
                           mfc="none", capsize=3, color=colour)
        for line in bars.lines[2]:
            line.set_linestyle("--")


def figure_beta_by_bucket(result: FitResult, site: str) -> Any:
    """β per group × bucket with 95 % intervals: soft, hard and Δβ panels; with --compare, the
    published β (hollow, dashed interval) beside ours."""
    plt = pyplot()
    table = result.beta_table[result.beta_table["site"] == site]
    metrics = [m for m in (*mfit.RANK_METRICS, mfit.DELTA_METRIC) if m in set(table["metric"])]
    if table.empty or not metrics:
        return None
    buckets = _ordered(table["bucket"].unique(), BUCKET_ORDER)
    colours = colours_of(result)
    labels = ordered_labels(colours, table["label"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.9 * len(metrics), 3.9), squeeze=False)
    width = 0.8 / max(len(labels), 1)
    comp = result.comparison
    published = comp.table[comp.table["site"] == site] if comp is not None else pd.DataFrame()
    shift = 0.22 * width if not published.empty else 0.0  # ours left, published right of the slot
    for ax, metric in zip(axes[0], metrics):
        for k, label in enumerate(labels):
            rows = table[(table["metric"] == metric) & (table["label"] == label)].set_index("bucket")
            xs, ys, lo, hi = [], [], [], []
            for b_i, bucket in enumerate(buckets):
                if bucket not in rows.index:
                    continue
                r = rows.loc[bucket]
                xs.append(b_i - 0.4 + width * (k + 0.5) - shift)
                ys.append(r["beta"])
                lo.append(r["beta"] - r["beta_lower"] if np.isfinite(r["beta_lower"]) else 0.0)
                hi.append(r["beta_upper"] - r["beta"] if np.isfinite(r["beta_upper"]) else 0.0)
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, color=colours[label])
            if not published.empty:
                _draw_published(ax, published[(published["label"] == label) & (published["metric"] == metric)],
                                buckets, lambda b_i, k=k: b_i - 0.4 + width * (k + 0.5) + shift, colours[label])
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(len(buckets)), buckets)
        ax.set_title(("β of " if metric != mfit.DELTA_METRIC else "") + _METRIC_TITLES[metric]
                     + f" ({site})", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("β")
    handles, names = group_handles(colours, labels)
    bar, _ = errorbar_handle("")
    handles, names = [*handles, bar], [*names, f"error bar: {result.ci_method or '95% interval'}"]
    if not published.empty:
        from matplotlib.lines import Line2D

        cited = dict.fromkeys(c for text in published["published_in"] for c in str(text).split("; "))
        handles.append(Line2D([], [], color="0.4", marker="o", mfc="none", ls="--"))
        names.append(f"hollow: published β [95% CI] ({'; '.join(list(cited)[:3])})")
    return finish(fig, result, handles, names)


def figure_phase_map(result: FitResult, site: str) -> Any:
    """Soft/hard phase map: x = ln R_soft / ln D, y = ln R_hard / ln D (log D is the normalizer).

    R_hard ≤ R_soft always, so the region above the diagonal is forbidden; the diagonal is the
    frontier R_hard = R_soft (no asymmetry). One trajectory per group across widths, marker size
    growing with the width (smallest to largest D, as in the legend). Buckets without both ranks
    get no panel.
    """
    plt = pyplot()
    pts = result.points[(result.points["site"] == site) & result.points["metric"].isin(mfit.RANK_METRICS)]
    pts = pts[pd.to_numeric(pts["value"], errors="coerce") > 0]
    colours = colours_of(result)
    all_widths = sorted(pts[WIDTH_COL].astype(float).unique())
    size = {w: 10 + 40 * i / max(len(all_widths) - 1, 1) for i, w in enumerate(all_widths)}
    panels = []
    for bucket in _ordered(pts["bucket"].unique(), BUCKET_ORDER):
        sub = pts[pts["bucket"] == bucket].assign(ln=lambda f: np.log(f["value"].astype(float)))
        wide = sub.pivot_table(index=["label", WIDTH_COL], columns="metric", values="ln", aggfunc="mean")
        if {"soft_rank", "hard_rank"} <= set(wide.columns):
            wide = wide.dropna().reset_index()
            if not wide.empty:
                panels.append((bucket, wide))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.5 * len(panels), 4.4), squeeze=False)
    for ax, (bucket, wide) in zip(axes[0], panels):
        # The forbidden region and the frontier are labelled in place, which keeps the legend to
        # the groups and the marker sizes.
        ax.fill_between([0, 1], [0, 1], [1, 1], color="0.88")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.text(0.05, 0.93, "forbidden\nR_hard > R_soft", fontsize=7, color="0.35", va="top")
        ax.text(0.62, 0.58, "R_hard = R_soft", fontsize=7, color="0.2", rotation=45, rotation_mode="anchor",
                ha="left", va="bottom", transform_rotates_text=True)
        for label in ordered_labels(colours, wide["label"].unique()):
            g = wide[wide["label"] == label].sort_values(WIDTH_COL)
            ln_d = np.log(g[WIDTH_COL].astype(float))
            x, y = g["soft_rank"] / ln_d, g["hard_rank"] / ln_d
            ax.plot(x, y, "-", color=colours[label], lw=0.8, alpha=0.6)
            ax.scatter(x, y, s=[size[float(w)] for w in g[WIDTH_COL]], color=colours[label], zorder=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("ln R_soft / ln D")
        ax.set_title(f"phase map · {bucket} · {site}", fontsize=9)
    axes[0, 0].set_ylabel("ln R_hard / ln D")
    from matplotlib.legend_handler import HandlerTuple
    from matplotlib.lines import Line2D

    labels = ordered_labels(colours, pd.concat([w["label"] for _, w in panels]).unique())
    handles, names = group_handles(colours, labels)
    ends = (all_widths[0], all_widths[-1]) if len(all_widths) > 1 else all_widths[:1]
    # One entry for the marker sizes: the smallest and the largest width side by side.
    handles.append(tuple(Line2D([], [], color="0.5", marker="o", ls="none", ms=np.sqrt(size[w])) for w in ends))
    names.append("marker size: D = " + " … ".join(f"{w:g}" for w in ends))
    return finish(fig, result, handles, names, handler_map={tuple: HandlerTuple(ndivide=None)})


def figure_loss_vs_width(result: FitResult) -> Any:
    """Final eval loss vs width per group (mean over seeds; bars ±1 SD over seeds)."""
    runs = result.runs
    if "eval_loss" not in runs.columns or not np.isfinite(pd.to_numeric(runs["eval_loss"], errors="coerce")).any():
        return None
    plt = pyplot()
    colours = colours_of(result)
    labels = ordered_labels(colours, [lab for lab in runs["label"].unique() if lab in colours])
    widths = runs[WIDTH_COL].astype(float).tolist()
    offsets = width_offsets(labels, widths)
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    for label in labels:
        sub = runs[runs["label"] == label]
        agg = sub.groupby(WIDTH_COL)["eval_loss"].agg(["mean", "std"]).reset_index().dropna(subset=["mean"])
        ax.errorbar(agg[WIDTH_COL] * offsets[label], agg["mean"], yerr=agg["std"].fillna(0), fmt="o-",
                    ms=4, capsize=2, color=colours[label])
    ax.set_xscale("log")
    plain_log_ticks(ax, "x", widths=widths)
    ax.set_xlabel("FFN width D (groups offset for legibility)")
    ax.set_ylabel("final eval loss")
    ax.set_title("final eval loss vs width", fontsize=9)
    ax.grid(True, alpha=0.25)
    handles, names = group_handles(colours, labels)
    if _has_seeds(result):
        bar, text = errorbar_handle("±1 SD over seeds")
        handles, names = [*handles, bar], [*names, text]
    return finish(fig, result, handles, names)


# The two 95% bands of one panel: β_soft's filled, β_hard's lighter and hatched, each with its swatch.
BAND_STYLE = {"soft_rank": {"alpha": 0.18}, "hard_rank": {"alpha": 0.10, "hatch": "////"}}


def figure_beta_over_steps(result: FitResult, site: str) -> Any:
    """β over training from sliding windows of checkpoints: one row of panels per group, one
    column per bucket (small multiples, shared axes), β_soft solid and β_hard dashed with their
    95 % bands."""
    bs = result.beta_steps
    if bs.empty:
        return None
    bs = bs[(bs["site"] == site) & bs["metric"].isin(mfit.RANK_METRICS)]
    if bs.empty or not np.isfinite(bs["beta"]).any():
        return None
    plt = pyplot()
    colours = colours_of(result)
    buckets = _ordered(bs["bucket"].unique(), BUCKET_ORDER)
    labels = ordered_labels(colours, [lab for lab in bs["label"].unique() if lab in colours])
    fig, axes = plt.subplots(len(labels), len(buckets), figsize=(2.7 * len(buckets) + 0.6, 2.1 * len(labels) + 1.1),
                             squeeze=False, sharex=True, sharey=True)
    for i, label in enumerate(labels):
        for j, bucket in enumerate(buckets):
            ax = axes[i, j]
            for metric, style in (("soft_rank", "-"), ("hard_rank", "--")):
                g = bs[(bs["label"] == label) & (bs["bucket"] == bucket) & (bs["metric"] == metric)]
                g = g.sort_values("end_step")
                if g.empty:
                    continue
                ax.plot(g["end_step"], g["beta"], style, color=colours[label], lw=1.3)
                ax.fill_between(g["end_step"], g["beta_lower"], g["beta_upper"], color=colours[label],
                                lw=0, **BAND_STYLE[metric])
            ax.grid(True, alpha=0.3)
            if i == 0:
                ax.set_title(f"{bucket} · {site}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{label}\nβ", fontsize=8, color=colours[label])
            if i == len(labels) - 1:
                ax.set_xlabel("step (window end)")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles, names = group_handles(colours, labels, marker="")
    band = result.ci_method or "95% interval"
    handles += [Line2D([], [], color="0.3", ls="-"), Line2D([], [], color="0.3", ls="--"),
                Patch(color="0.3", lw=0, **BAND_STYLE["soft_rank"]), Patch(color="0.3", lw=0, **BAND_STYLE["hard_rank"])]
    names += ["β_soft", "β_hard", f"β_soft band: {band}", f"β_hard band: {band}"]
    return finish(fig, result, handles, names)


def build_figures(result: FitResult, sites: Sequence[str] | None = None) -> list[tuple[str, Any]]:
    """(file stem, matplotlib figure) of every figure that has something to draw, for ``sites``
    (default: post only, where the paper's claims live, or the one site present). A figure that
    fails becomes a message of the result."""
    present = _ordered(result.points["site"].unique(), SITE_ORDER)
    sites = [s for s in (sites or present[:1]) if s in present]
    jobs: list[tuple[str, Callable[[], Any]]] = []
    for s in sites:
        jobs += [(f"rank_vs_width_{s}", lambda s=s: figure_rank_vs_width(result, s)),
                 (f"beta_by_bucket_{s}", lambda s=s: figure_beta_by_bucket(result, s)),
                 (f"phase_map_{s}", lambda s=s: figure_phase_map(result, s)),
                 (f"beta_over_steps_{s}", lambda s=s: figure_beta_over_steps(result, s))]
    jobs.append(("loss_vs_width", lambda: figure_loss_vs_width(result)))
    built = []
    for stem, make in jobs:
        try:
            fig = make()
        except Exception as err:  # noqa: BLE001
            result.messages.append(f"figure {stem} failed: {type(err).__name__}: {err}")
            pyplot().close("all")
            continue
        if fig is not None:
            built.append((stem, fig))
    return built


def write_figures(result: FitResult, sites: Sequence[str] | None = None) -> list[Path]:
    """Save every figure as ``figures/<stem>.png`` and ``.pdf``, and all of them, one per page,
    as ``figures/all_figures.pdf``; returns the paths."""
    from matplotlib.backends.backend_pdf import PdfPages

    plt = pyplot()
    fig_dir = Path(result.out_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    built = build_figures(result, sites)
    if not built:
        return paths
    with PdfPages(fig_dir / COMBINED_PDF) as pdf:
        for stem, fig in built:
            for ext in ("png", "pdf"):
                fig.savefig(fig_dir / f"{stem}.{ext}", dpi=_DPI)
                paths.append(fig_dir / f"{stem}.{ext}")
            pdf.savefig(fig)
            plt.close(fig)
    paths.append(fig_dir / COMBINED_PDF)
    return paths
