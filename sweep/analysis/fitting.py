"""β of a points table: fits per group, optimizer comparisons, matched loss, gain vs shift.

The statistics are ``metrics.fit``'s; this module decides what is fitted against what (groups,
labels, the reference optimizer, the architecture axis) and collects the tables in a FitResult.
It writes no file and draws nothing: ``sweep.analysis.report`` and ``sweep.analysis.figures``
do that from the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from specsweep.metrics import fit as mfit

from specsweep.metrics import aggregation as magg
from specsweep.sweep.analysis.power import DEFAULT_RESOLVE, power_table
from specsweep.metrics import window_audit as audit
from specsweep.sweep.analysis.points import (BUCKET_ORDER, SITE_ORDER, WIDTH_COL, fmt_key, group_columns,
                                   group_labels, run_columns)
from specsweep.sweep.analysis.read import FinishedRun
from specsweep.sweep.analysis.result import FitResult

ARCH_AXES = ("n_head", "postln_frac", "pos_encoding", "norm_placement", "activation", "norm",
             "ffn_type", "n_layer", "d_model", "model")
# Axes that define an optimizer configuration (compared as one unit against the reference).
OPTIMIZER_AXES = ("optimizer", "rank_fraction")


def fit_points(
    points: pd.DataFrame, out_dir: Path, *, runs: Sequence[FinishedRun] = (),
    step_points: pd.DataFrame | None = None, rule: str = "", level: float = 0.95,
    n_boot: int = 1000, matched_loss: float | None = None,
    arch_baseline: tuple[str, str] | None = None, reference_optimizer: str = "adamw",
    resolve: float = DEFAULT_RESOLVE,
    notes: pd.DataFrame | None = None,
) -> FitResult:
    """Fit β for every group of ``points`` (plus Δβ rows), compare each optimizer with the
    reference, fit β over training from ``step_points`` (sliding windows), and, when asked, the
    matched-loss comparison and the optimizer-gain vs architecture-shift rule.

    ``notes``: what reading did with each run's window (metrics.window_audit); the β rows they
    concern get their codes in a ``flags`` column.
    ``runs`` are the finished runs behind the points (empty for a points file); ``out_dir`` and
    ``rule`` (its description) are recorded in the result for the writers. Problems with single
    groups become entries of ``FitResult.messages``.
    """
    messages: list[str] = []
    group_cols = group_columns(points)
    points = points.copy()
    points["label"] = group_labels(points, group_cols)
    messages += magg.window_mismatches(points, group_cols)
    if "seed" in points.columns and len(group_cols):
        per_width = points.groupby([*group_cols, WIDTH_COL], dropna=False)["seed"].nunique()
        if per_width.max() > 1:
            messages.append(f"several seeds per width (up to {per_width.max()}): ln R averaged over "
                            "seeds per width before fitting; bootstrap intervals over seeds added")

    table = mfit.fit_beta_table(points, group_cols, level=level, n_boot=n_boot, metrics=None)
    messages += table.messages
    beta_table = table.table
    if not beta_table.empty:
        beta_table.insert(0, "label", group_labels(beta_table, group_cols, varying_from=points))
    beta_table = _sort_table(beta_table)
    summary = mfit.beta_summary(beta_table, ["label", *group_cols]) if not beta_table.empty else pd.DataFrame()
    summary = _sort_table(summary)

    result = FitResult(out_dir, points, pd.DataFrame(), beta_table, summary, group_cols,
                       messages=messages, rule=rule, ci_method=mfit.T_CI_METHOD.format(level=level))
    result.runs = _runs_table(runs, points, group_cols)
    result.notes = notes if notes is not None else pd.DataFrame(columns=audit.NOTE_COLUMNS)
    _flag_rows(result)

    # Optimizer vs reference: pooled interaction test per metric × bucket × site.
    if "optimizer" in group_cols and points["optimizer"].nunique() > 1:
        _compare_optimizers(result, reference_optimizer, level)
    if "optimizer" in group_cols:  # every pair: Δβ, interval, MDD, what would resolve ``resolve``
        result.power = power_table(points, group_cols, target=resolve, reference=reference_optimizer)

    if step_points is not None and not step_points.empty:
        steps = mfit.fit_beta_table(step_points, [*group_cols, "end_step"], level=level, bootstrap=False)
        bs = steps.table
        if not bs.empty:
            bs.insert(0, "label", group_labels(bs, group_cols, varying_from=points))
            # events in each point's trailing window (fewer than k at the first events)
            bs["n_events"] = bs["end_step"].map(step_points.groupby("end_step")["n_events"].min())
        result.beta_steps = bs

    if matched_loss is not None:
        _matched_loss(result, matched_loss, level)

    arch = _detect_arch_axis(group_cols, points, arch_baseline)
    if arch_baseline is not None and arch is None:
        messages.append(f"--arch-baseline {arch_baseline[0]}={arch_baseline[1]}: no such axis value")
    if arch is not None and "optimizer" in group_cols and not beta_table.empty:
        _gain_vs_shift(result, arch, reference_optimizer)
    return result


def _flag_rows(result: FitResult) -> None:
    """A ``flags`` column on the β table and its summary: the codes of the notes that concern each
    row (metrics.window_audit.NOTE_CODES; '' when its points are clean)."""
    if result.runs.empty or "run_id" not in result.runs.columns:
        return
    cols = [c for c in result.group_cols if c in result.runs.columns]
    run_groups = result.runs[["run_id", *cols]]
    for name in ("beta_table", "summary"):
        table = getattr(result, name)
        if not table.empty:
            table["flags"] = audit.beta_row_flags(table, result.notes, run_groups, cols)


def _sort_table(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame
    keys = {"bucket": {b: i for i, b in enumerate(BUCKET_ORDER)},
            "site": {s: i for i, s in enumerate(SITE_ORDER)}}
    order = [c for c in ("label", "site", "bucket", "metric") if c in frame.columns]
    return frame.sort_values(order, key=lambda s: s.map(keys[s.name]).fillna(99) if s.name in keys else s,
                             kind="stable").reset_index(drop=True)


def _detect_arch_axis(group_cols: Sequence[str], points: pd.DataFrame,
                      override: tuple[str, str] | None) -> tuple[str, Any] | None:
    """The architecture axis to compare against the optimizer effect, and its baseline value."""
    if override is not None:
        axis, raw = override
        if axis not in points.columns:
            return None
        for value in points[axis].dropna().unique():
            if fmt_key(value) == raw:
                return axis, value
        return None
    for axis in ARCH_AXES:
        if axis in group_cols and points[axis].nunique() > 1:
            # Baseline = the value most runs use (the paper's default architecture).
            counts = points.groupby(axis)["run_id" if "run_id" in points.columns else "value"].nunique()
            return axis, counts.idxmax()
    return None


def _compare_optimizers(result: FitResult, reference_optimizer: str, level: float) -> None:
    """Each optimizer (with its own knobs, e.g. Dion's rank_fraction) against the reference,
    within every combination of the remaining keys."""
    opt_cols = [c for c in OPTIMIZER_AXES if c in result.group_cols]
    rest = [c for c in result.group_cols if c not in opt_cols]
    points = result.points.assign(opt=group_labels(result.points, opt_cols))
    # Case-insensitive, so released tables spelling "AdamW" find the default reference.
    is_ref = points["optimizer"].astype(str).str.lower() == reference_optimizer.lower()
    labels = sorted(points["opt"].unique())
    ref = points.loc[is_ref, "opt"].iloc[0] if is_ref.any() else labels[0]
    cmp = mfit.compare_groups(points, [*rest, "opt"], "opt", ref, level=level)
    result.comparisons = cmp.table.rename(columns={"opt_ref": "optimizer_ref", "opt": "optimizer"})
    result.messages.extend(cmp.messages)


def _runs_table(runs: Sequence[FinishedRun], points: pd.DataFrame, group_cols: Sequence[str]) -> pd.DataFrame:
    if runs:
        rows = [{"run_id": r.run_id, "sweep": r.sweep_dir.name, **run_columns(r),
                 "eval_loss": r.eval_loss, "train_loss": r.train_loss, "config_hash": r.config_hash,
                 "run_dir": str(r.run_dir)} for r in runs]
        frame = pd.DataFrame(rows)
    else:
        keep = [c for c in [*group_cols, WIDTH_COL, "seed", "run_id", "eval_loss"] if c in points.columns]
        frame = points[keep].drop_duplicates().reset_index(drop=True)
    for key in group_cols:
        if key not in frame.columns:
            frame[key] = np.nan
    frame["label"] = group_labels(frame, group_cols, varying_from=points)
    return frame


def _matched_loss(result: FitResult, tol: float, level: float) -> None:
    runs = result.runs
    if "eval_loss" not in runs.columns or runs["eval_loss"].notna().sum() == 0:
        result.messages.append("matched loss: no eval loss recorded for any run; comparison skipped")
        return
    pairs = mfit.match_runs_by_loss(runs, tol, config_col="label", width_col=WIDTH_COL)
    result.matched_pairs = pairs
    points = result.points.assign(config=result.points["label"])
    cmp = mfit.compare_matched_configs(points, pairs, config_col="config", level=level)
    result.matched = cmp.table
    result.messages += cmp.messages


def _gain_vs_shift(result: FitResult, arch: tuple[str, Any], reference_optimizer: str) -> None:
    axis, baseline = arch
    table = result.beta_table
    others = [c for c in result.group_cols if c != axis]
    labelled = table.assign(opt_label=group_labels(table, others, varying_from=result.points))
    is_ref = labelled["optimizer"].astype(str).str.lower() == reference_optimizer.lower()
    refs = labelled.loc[is_ref, "opt_label"].unique()
    if len(refs) == 0:
        result.messages.append(f"optimizer gain vs {axis} shift: no {reference_optimizer} runs; skipped")
        return
    frame = mfit.optimizer_gain_vs_arch_shift(labelled, arch_col=axis, baseline=baseline,
                                              optimizer_col="opt_label", reference=refs[0])
    result.gain_shift = frame.rename(columns={"opt_label": "optimizer"})
    if not frame.empty:
        result.messages.append(
            f"optimizer gain vs {axis} shift (baseline {axis}={fmt_key(baseline)}): gain exceeds "
            f"shift in {int(frame['gain_exceeds_shift'].sum())} of {len(frame)} comparisons")
