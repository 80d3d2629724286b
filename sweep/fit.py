"""Post-hoc scaling-law analysis of a finished sweep: ``python -m sweep.fit SWEEP_DIR [...]``.

Reads the run directories (docs/contracts.md), reduces each run's telemetry to one value per
metric × bucket × site (paper rule by default), fits β with ``metrics.fit`` and writes, into the
analysis folder: points.csv, runs.csv, beta_table.csv (long, with delta_beta rows),
beta_summary.csv (wide), beta_steps.csv, optimizer_comparison.csv, optional matched-loss and
architecture tables, figures (PNG + PDF) and report.md. One bad run never stops the analysis:
it is listed with its reason and left out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from metrics import fit as mfit
from sweep.errors import SweepError  # input that leaves nothing to analyse: the CLI exits with status 2

WIDTH_COL = "ffn_width"
REQUIRED_POINT_COLUMNS = ("optimizer", WIDTH_COL, "metric", "bucket", "site", "value")
# Columns of a points table that are values, provenance or width-like, never grouping keys.
# ffn_mult co-varies with ffn_width, so grouping by it would leave one width per group.
NON_KEY_COLUMNS = frozenset({
    "run_id", "sweep", "value", "err", "err_low", "err_high", "seed", WIDTH_COL, "ffn_hidden_dim",
    "ffn_mult", "width_multiplier", "metric", "bucket", "site", "n_layers", "n_layers_used",
    "n_steps", "window_start", "window_end", "final_samples", "final_steps", "eval_loss",
    "train_loss", "config_hash", "rule", "aggregation", "status", "label", "config",
})
# Points-file column aliases, so released tables (e.g. the paper's) can be re-fitted as they are.
POINT_ALIASES = {"ffn_hidden_dim": WIDTH_COL}
ARCH_AXES = ("n_head", "postln_frac", "pos_encoding", "norm_placement", "activation", "norm",
             "ffn_type", "n_layer", "d_model", "model")
# Axes that define an optimizer configuration (compared as one unit against the reference).
OPTIMIZER_AXES = ("optimizer", "rank_fraction")
BUCKET_ORDER = ("global", "head", "mid", "tail")
SITE_ORDER = ("post", "pre")
LOSS_COLUMNS = ("eval_loss", "train_loss")


# --------------------------------------------------------------------------------------------
# Reading run directories
# --------------------------------------------------------------------------------------------

@dataclass
class RunData:
    """One finished run: its axes, telemetry records and final losses."""

    run_id: str
    run_dir: Path
    sweep_dir: Path
    axes: dict[str, Any]
    config_hash: str | None
    spectra: pd.DataFrame
    eval_loss: float
    train_loss: float


@dataclass
class SweepContents:
    runs: list[RunData]
    excluded: list[tuple[str, str]]  # (run path, reason)
    warnings: list[str]
    n_run_dirs: int


class _Skip(Exception):
    """A run left out of the analysis, with the reason as its message."""


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Rows of a JSON-lines file and the number of unreadable lines (e.g. a torn last line)."""
    rows, bad = [], 0
    with path.open() as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    return rows, bad


def find_run_dirs(sweep_dir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Run directories of a sweep (children holding run.json; the dir itself if it is a run)."""
    if (sweep_dir / "run.json").is_file():
        return [sweep_dir], []
    runs, orphans = [], []
    for child in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (child / "run.json").is_file():
            runs.append(child)
        elif any((child / name).exists() for name in ("spectra.jsonl", "metrics.jsonl", "DONE")):
            orphans.append((str(child), "has run files but no run.json"))
    return runs, orphans


def _last_eval_loss(metric_rows: list[dict]) -> float:
    evals = [r for r in metric_rows if r.get("eval_loss") is not None]
    if not evals:
        return float("nan")
    return float(max(evals, key=lambda r: r.get("step", -1))["eval_loss"])


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def load_run(run_dir: Path, sweep_dir: Path, warnings: list[str]) -> RunData:
    """Load one run directory; raises _Skip with the reason when it cannot be used."""
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise _Skip(f"unreadable run.json ({err})") from None
    status = str(info.get("status", "unknown"))
    run_id = str(info.get("run_id") or run_dir.name)
    if status in ("diverged", "failed"):
        detail = f": {info['error']}" if info.get("error") else ""
        raise _Skip(f"{status}{detail}")
    done_path = run_dir / "DONE"
    if not done_path.is_file():
        raise _Skip(f"unfinished (status={status}, step={info.get('step')})")
    try:
        done = json.loads(done_path.read_text() or "{}")
    except json.JSONDecodeError:
        done = {}
        warnings.append(f"{run_id}: DONE is not valid JSON; final losses read from metrics.jsonl")
    if status != "done":
        # DONE is written last and atomically, so it outranks a stale status field.
        warnings.append(f"{run_id}: run.json says status={status} but DONE exists; treated as done")
    axes = dict(info.get("axes") or {})
    if axes.get(WIDTH_COL) is None and axes.get("ffn_mult") is not None and axes.get("d_model") is not None:
        axes[WIDTH_COL] = int(round(float(axes["ffn_mult"]) * float(axes["d_model"])))
    for key in ("optimizer", WIDTH_COL):
        if axes.get(key) is None:
            raise _Skip(f"run.json axes lack {key!r}")
    spectra_path = run_dir / "spectra.jsonl"
    if not spectra_path.is_file():
        raise _Skip("no spectra.jsonl")
    rows, bad = read_jsonl(spectra_path)
    if bad:
        warnings.append(f"{run_id}: skipped {bad} unreadable line(s) in spectra.jsonl")
    spectra = pd.DataFrame(rows)
    missing = {"step", "layer", "site", "bucket"} - set(spectra.columns)
    if spectra.empty or missing:
        raise _Skip("spectra.jsonl is empty" if spectra.empty else f"spectra.jsonl lacks {sorted(missing)}")
    metric_rows: list[dict] = []
    if (run_dir / "metrics.jsonl").is_file():
        metric_rows, _ = read_jsonl(run_dir / "metrics.jsonl")
    eval_loss = _as_float(done.get("final_eval_loss"))
    if not math.isfinite(eval_loss):
        eval_loss = _last_eval_loss(metric_rows)
    train_loss = _as_float(done.get("final_train_loss"))
    return RunData(run_id, run_dir, sweep_dir, axes, info.get("config_hash"), spectra, eval_loss, train_loss)


def load_sweeps(sweep_dirs: Sequence[str | Path]) -> SweepContents:
    """All finished runs of the given sweep dirs; others are listed in ``excluded``."""
    runs, excluded, warnings, n_dirs = [], [], [], 0
    for raw in sweep_dirs:
        sweep_dir = Path(raw)
        if not sweep_dir.is_dir():
            raise SweepError(f"sweep directory not found: {sweep_dir}")
        run_dirs, orphans = find_run_dirs(sweep_dir)
        excluded.extend(orphans)
        n_dirs += len(run_dirs) + len(orphans)
        for run_dir in run_dirs:
            try:
                runs.append(load_run(run_dir, sweep_dir, warnings))
            except _Skip as skip:
                excluded.append((str(run_dir), str(skip)))
            except Exception as err:  # noqa: BLE001 - one bad run must not stop the sweep
                excluded.append((str(run_dir), f"unreadable ({type(err).__name__}: {err})"))
    if n_dirs == 0:
        raise SweepError("no run directories (folders with run.json) found in "
                         + ", ".join(str(d) for d in sweep_dirs))
    seen: dict[str, Path] = {}
    for run in runs:
        if run.run_id in seen:
            warnings.append(f"run_id {run.run_id} appears in {seen[run.run_id]} and {run.run_dir}; "
                            "both are kept")
        seen.setdefault(run.run_id, run.run_dir)
    return SweepContents(runs, excluded, warnings, n_dirs)


# --------------------------------------------------------------------------------------------
# Points tables
# --------------------------------------------------------------------------------------------

def _run_columns(run: RunData) -> dict[str, Any]:
    cols: dict[str, Any] = {"run_id": run.run_id, "sweep": run.sweep_dir.name}
    for key, value in run.axes.items():
        cols[key] = value if (value is None or np.isscalar(value)) else json.dumps(value)
    return cols


def build_points(runs: Sequence[RunData], rule: mfit.AggregationRule,
                 metrics: Sequence[str] = mfit.RANK_METRICS) -> tuple[pd.DataFrame, list[str]]:
    """points.csv rows: one per run × metric × bucket × site, axes as columns, value and err."""
    frames, messages = [], []
    for run in runs:
        try:
            agg = mfit.aggregate_records(run.spectra, rule, metrics)
        except Exception as err:  # noqa: BLE001
            messages.append(f"{run.run_id}: aggregation failed ({type(err).__name__}: {err}); run left out")
            continue
        if agg.empty:
            messages.append(f"{run.run_id}: no valid {'/'.join(metrics)} values under rule "
                            f"'{rule.describe()}'; run left out")
            continue
        extra = {"eval_loss": run.eval_loss, "train_loss": run.train_loss,
                 "config_hash": run.config_hash}
        frames.append(agg.assign(**_run_columns(run), **extra))
    if not frames:
        return pd.DataFrame(), messages
    points = pd.concat(frames, ignore_index=True)
    # Column order: identity, then the run's axes, then the series and its value columns.
    tail = ["metric", "bucket", "site", "value", "err", "n_layers", "n_steps", "window_start",
            "window_end", "eval_loss", "train_loss", "config_hash"]
    first = ["run_id", "sweep"]
    axes = [c for c in points.columns if c not in first and c not in tail]
    return points[first + axes + tail], messages


def build_step_points(runs: Sequence[RunData], k: int,
                      metrics: Sequence[str] = mfit.RANK_METRICS) -> pd.DataFrame:
    """Per-run paper-rule values over sliding windows of ``k`` checkpoints (for β over steps)."""
    frames = []
    for run in runs:
        try:
            sw = mfit.sliding_window_records(run.spectra, k, metrics)
        except Exception:  # noqa: BLE001 - dynamics are optional; the terminal fit still stands
            continue
        if not sw.empty:
            frames.append(sw.assign(**_run_columns(run)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_points_file(path: str | Path) -> pd.DataFrame:
    """A user-supplied points table; aliases (ffn_hidden_dim) are renamed, labels lower-cased."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"points file not found: {path}")
    try:
        points = pd.read_csv(path)
    except Exception as err:  # noqa: BLE001
        raise SweepError(f"cannot read points file {path}: {err}") from None
    for alias, name in POINT_ALIASES.items():
        if alias in points.columns and name not in points.columns:
            points = points.rename(columns={alias: name})
    missing = [c for c in REQUIRED_POINT_COLUMNS if c not in points.columns]
    if missing:
        raise SweepError(f"points file {path} lacks column(s) {missing}; needs at least "
                         f"{list(REQUIRED_POINT_COLUMNS)}")
    if points.empty:
        raise SweepError(f"points file {path} has no rows")
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
            v = _fmt_key(v)
            parts.append(v if k == "optimizer" else f"{k}={v}")
        return " ".join(parts) if parts else "(all)"

    if frame.empty:
        return pd.Series([], dtype=str)
    return frame.apply(label, axis=1).astype(str)


def _fmt_key(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --------------------------------------------------------------------------------------------
# Fitting orchestration
# --------------------------------------------------------------------------------------------

@dataclass
class FitResult:
    """Everything ``run_fit`` computed and wrote."""

    out_dir: Path
    points: pd.DataFrame
    runs: pd.DataFrame
    beta_table: pd.DataFrame
    summary: pd.DataFrame
    group_cols: list[str]
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)
    beta_steps: pd.DataFrame = field(default_factory=pd.DataFrame)
    matched_pairs: pd.DataFrame | None = None
    matched: pd.DataFrame | None = None
    gain_shift: pd.DataFrame | None = None
    figures: list[Path] = field(default_factory=list)
    report: Path | None = None
    files: list[Path] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)
    rule: str = ""
    ci_method: str = ""


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
            if _fmt_key(value) == raw:
                return axis, value
        return None
    for axis in ARCH_AXES:
        if axis in group_cols and points[axis].nunique() > 1:
            # Baseline = the value most runs use (the paper's default architecture).
            counts = points.groupby(axis)["run_id" if "run_id" in points.columns else "value"].nunique()
            return axis, counts.idxmax()
    return None


def run_fit(
    sweep_dirs: Sequence[str | Path] = (), out_dir: str | Path | None = None, *,
    rule: str | mfit.AggregationRule = "paper", matched_loss: float | None = None,
    figures: bool = True, points_file: str | Path | None = None, window_k: int = 3,
    n_boot: int = 1000, level: float = 0.95, arch_baseline: tuple[str, str] | None = None,
    reference_optimizer: str = "adamw", metrics: Sequence[str] = mfit.RANK_METRICS,
    figure_sites: Sequence[str] | None = None,
) -> FitResult:
    """Aggregate, fit and write the analysis of finished sweeps (or of a points CSV).

    Raises SweepError when there is nothing to analyse; problems with single runs or groups
    become entries of ``FitResult.messages``.
    """
    rule_obj = rule if isinstance(rule, mfit.AggregationRule) else mfit.parse_rule(rule)
    messages: list[str] = []
    excluded: list[tuple[str, str]] = []
    if points_file is not None and sweep_dirs:
        raise SweepError("give either sweep directories or --points, not both")
    if points_file is None and not sweep_dirs:
        raise SweepError("no sweep directory given")

    loaded: list[RunData] = []
    provenance: dict[str, Any] = {"rule": rule_obj.describe() if points_file is None else
                                  "as given in the points file"}
    if points_file is not None:
        points = read_points_file(points_file)
        provenance["points_file"] = str(points_file)
        provenance["points_sha256"] = hashlib.sha256(Path(points_file).read_bytes()).hexdigest()[:16]
        out = Path(out_dir) if out_dir else Path(points_file).parent / f"{Path(points_file).stem}_fit"
    else:
        contents = load_sweeps(sweep_dirs)
        excluded = contents.excluded
        messages += contents.warnings
        loaded = contents.runs
        if not loaded:
            reasons = "; ".join(f"{Path(p).name}: {r}" for p, r in excluded[:10])
            raise SweepError(f"no finished runs to analyse ({len(excluded)} excluded: {reasons})")
        points, msgs = build_points(loaded, rule_obj, metrics)
        messages += msgs
        if points.empty:
            raise SweepError("no run produced a usable value under rule " + rule_obj.describe())
        provenance["sweep_dirs"] = [str(Path(d).resolve()) for d in sweep_dirs]
        out = Path(out_dir) if out_dir else Path(sweep_dirs[0]) / "analysis"
    out.mkdir(parents=True, exist_ok=True)

    group_cols = group_columns(points)
    points = points.copy()
    points["label"] = group_labels(points, group_cols)
    messages += mfit.window_mismatches(points, group_cols)
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

    result = FitResult(out, points, pd.DataFrame(), beta_table, summary, group_cols,
                       messages=messages, excluded=excluded, rule=provenance["rule"],
                       ci_method=mfit.T_CI_METHOD.format(level=level))
    result.runs = _runs_table(loaded, points, group_cols)

    # Optimizer vs reference: pooled interaction test per metric × bucket × site.
    if "optimizer" in group_cols and points["optimizer"].nunique() > 1:
        _compare_optimizers(result, reference_optimizer, level)

    if loaded and window_k >= 1:
        step_points = build_step_points(loaded, window_k, metrics)
        if not step_points.empty:
            sp_cols = [*group_cols, "end_step"]
            steps = mfit.fit_beta_table(step_points, sp_cols, level=level, bootstrap=False)
            bs = steps.table
            if not bs.empty:
                bs.insert(0, "label", group_labels(bs, group_cols, varying_from=points))
            result.beta_steps = bs

    if matched_loss is not None:
        _matched_loss(result, matched_loss, level)

    arch = _detect_arch_axis(group_cols, points, arch_baseline)
    if arch_baseline is not None and arch is None:
        messages.append(f"--arch-baseline {arch_baseline[0]}={arch_baseline[1]}: no such axis value")
    if arch is not None and "optimizer" in group_cols and not beta_table.empty:
        _gain_vs_shift(result, arch, reference_optimizer)

    _write_tables(result)
    if figures:
        result.figures = write_figures(result, figure_sites)
        result.files += result.figures
    result.report = write_report(result, provenance)
    result.files.append(result.report)
    return result


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


def _runs_table(runs: Sequence[RunData], points: pd.DataFrame, group_cols: Sequence[str]) -> pd.DataFrame:
    if runs:
        rows = [{"run_id": r.run_id, "sweep": r.sweep_dir.name, **_run_columns(r),
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
            f"optimizer gain vs {axis} shift (baseline {axis}={_fmt_key(baseline)}): gain exceeds "
            f"shift in {int(frame['gain_exceeds_shift'].sum())} of {len(frame)} comparisons")


def _write_tables(result: FitResult) -> None:
    out = result.out_dir
    tables = {
        "points.csv": result.points.drop(columns=["label"], errors="ignore"),
        "runs.csv": result.runs,
        "beta_table.csv": result.beta_table,
        "beta_summary.csv": result.summary,
        "beta_steps.csv": result.beta_steps,
        "optimizer_comparison.csv": result.comparisons,
        "matched_pairs.csv": result.matched_pairs,
        "matched_loss.csv": result.matched,
        "gain_vs_shift.csv": result.gain_shift,
    }
    for name, frame in tables.items():
        if frame is None or (frame.empty and name not in ("points.csv", "beta_table.csv")):
            continue
        frame.to_csv(out / name, index=False)
        result.files.append(out / name)


# --------------------------------------------------------------------------------------------
# Figures (matplotlib Agg; each figure as PNG and PDF under <out>/figures/)
# --------------------------------------------------------------------------------------------

_METRIC_TITLES = {"soft_rank": "soft rank R_soft", "hard_rank": "hard rank R_hard",
                  mfit.DELTA_METRIC: "Δβ = β_soft − β_hard"}


def _pyplot():
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


# --------------------------------------------------------------------------------------------
# Terminal table and report
# --------------------------------------------------------------------------------------------

def _ci_text(beta: float, lo: float, hi: float, signed: bool = False) -> str:
    if not np.isfinite(beta):
        return "—"
    b = f"{beta:+.3f}" if signed else f"{beta:.3f}"
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{b} [{lo:.2f}, {hi:.2f}]"
    return f"{b} [no CI]"


def beta_rows(summary: pd.DataFrame) -> list[list[str]]:
    """Rows (group, bucket, site, n, β_soft, β_hard, Δβ) of the compact β table."""
    rows = []
    for _, r in summary.iterrows():
        get = lambda k: float(r[k]) if k in r and pd.notna(r[k]) else float("nan")  # noqa: E731
        n = r.get("n_widths")
        rows.append([str(r["label"]), str(r["bucket"]), str(r["site"]),
                     "" if pd.isna(n) else str(int(n)),
                     _ci_text(get("beta_soft"), get("soft_lower"), get("soft_upper")),
                     _ci_text(get("beta_hard"), get("hard_lower"), get("hard_upper")),
                     _ci_text(get("beta_delta"), get("delta_lower"), get("delta_upper"), signed=True)])
    return rows


BETA_HEADER = ["group", "bucket", "site", "n", "β_soft [95% CI]", "β_hard [95% CI]", "Δβ [95% CI]"]


def format_beta_table(result: FitResult) -> str:
    """The compact, aligned β table printed at the end of the CLI."""
    rows = beta_rows(result.summary)
    if not rows:
        return "β table: no group could be fitted (see the messages above)"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(BETA_HEADER)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    title = (f"β table — rank ∝ D^β, OLS of ln R on ln D; CI: {result.ci_method}; "
             f"Δβ = β_soft − β_hard\naggregation: {result.rule}")
    return "\n".join([title, line(BETA_HEADER), line(["-" * w for w in widths]), *map(line, rows)])


def _md_table(frame: pd.DataFrame, digits: int = 3) -> str:
    if frame is None or frame.empty:
        return "_(none)_"

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.{digits}g}" if abs(v) >= 1000 else f"{v:.{digits}f}"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    sep = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def write_report(result: FitResult, provenance: dict[str, Any]) -> Path:
    """report.md: provenance, β tables, comparisons and figure links in one page."""
    out = result.out_dir
    lines = ["# Spectral scaling-law fit", "",
             "Generated by `python -m sweep.fit`. β is the slope of ln(rank) on ln(D) "
             "(D = FFN hidden width); Δβ = β_soft − β_hard is fitted directly on "
             "ln(R_soft/R_hard).", "", "## Provenance", ""]
    if "sweep_dirs" in provenance:
        lines += [f"- Sweep directories: {', '.join(f'`{d}`' for d in provenance['sweep_dirs'])}"]
    if "points_file" in provenance:
        lines += [f"- Points file: `{provenance['points_file']}` (sha256 {provenance['points_sha256']}…)"]
    n_runs = result.points["run_id"].nunique() if "run_id" in result.points.columns else len(result.runs)
    lines += [f"- Runs used: {n_runs}; excluded: {len(result.excluded)}",
              f"- Aggregation rule: {result.rule}",
              f"- Confidence intervals: {result.ci_method} (OLS, exact Student-t quantile); "
              "2 widths give a slope without an interval, < 2 widths no fit. These are fit "
              "intervals across widths, not seed variance.",
              "- Seeds: ln R averaged over seeds per width before fitting; where several seeds "
              "exist, `boot_lower`/`boot_upper` in beta_table.csv give a percentile bootstrap over "
              "seeds (labelled in `boot_method`).",
              f"- Grouping keys: {', '.join(result.group_cols) or '(none)'}"]
    if "seed" in result.runs.columns:
        seeds = sorted(map(str, result.runs["seed"].dropna().unique()))
        lines.append(f"- Seeds present: {', '.join(seeds)}")
    if result.excluded:
        lines += ["", "Excluded runs:", ""]
        lines += [f"- `{Path(p).name}`: {reason}" for p, reason in result.excluded]
    runs_cols = [c for c in ("run_id", "label", WIDTH_COL, "seed", "eval_loss", "config_hash")
                 if c in result.runs.columns]
    lines += ["", "<details><summary>Runs and config hashes</summary>", "",
              _md_table(result.runs[runs_cols]), "", "</details>", ""]
    lines += ["## β table", "", "```", format_beta_table(result), "```", ""]
    if not result.comparisons.empty:
        cols = [c for c in ("metric", "bucket", "site", "optimizer_ref", "optimizer", "diff",
                            "diff_lower", "diff_upper", "p_value") if c in result.comparisons.columns]
        lines += ["## Optimizer vs reference (pooled ln R ~ ln D × optimizer, t-test on the interaction)",
                  "", _md_table(result.comparisons[cols]), ""]
    if result.matched is not None:
        lines += ["## Matched-loss comparison", "", _md_table(result.matched.drop(columns=["ci_method"], errors="ignore")), ""]
    if result.gain_shift is not None:
        lines += ["## Optimizer gain vs architecture shift (paper rule)", "", _md_table(result.gain_shift), ""]
    if result.figures:
        lines += ["## Figures", ""]
        lines += [f"- [{p.stem}]({p.relative_to(out).as_posix()})" for p in result.figures if p.suffix == ".png"]
        lines += [f"\n![{p.stem}]({p.relative_to(out).as_posix()})" for p in result.figures
                  if p.suffix == ".png" and p.stem.startswith(("rank_vs_width_post", "beta_by_bucket_post"))]
        lines.append("")
    if result.messages:
        lines += ["## Messages", ""] + [f"- {m}" for m in result.messages] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweep.fit", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dirs", nargs="*", help="sweep directories (or single run directories)")
    p.add_argument("--out", help="analysis folder (default: SWEEP_DIR/analysis, or FILE_fit/ "
                   "next to a --points file)")
    p.add_argument("--rule", default="paper", help="paper | mean | layer:K | window:A-B (default paper)")
    p.add_argument("--matched-loss", type=float, metavar="TOL",
                   help="pair configs whose final eval loss differs by at most TOL (nats) at a width")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG/PDF figures")
    p.add_argument("--points", metavar="FILE.csv", help="fit a points table instead of run dirs")
    p.add_argument("--window-k", type=int, default=3, help="checkpoints per sliding window for β(t)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples over seeds")
    p.add_argument("--reference", default="adamw", help="reference optimizer for comparisons")
    p.add_argument("--arch-baseline", metavar="AXIS=VALUE",
                   help="architecture axis and baseline for the gain-vs-shift rule (default: auto)")
    from sweep import wandb_io

    wandb_io.add_cli_args(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        rule = mfit.parse_rule(args.rule)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    arch = None
    if args.arch_baseline:
        if "=" not in args.arch_baseline:
            print("error: --arch-baseline must look like AXIS=VALUE (e.g. n_head=12)", file=sys.stderr)
            return 2
        arch = tuple(args.arch_baseline.split("=", 1))
    try:
        if args.from_wandb:  # runs rebuilt from W&B (sweep/wandb_io.py); local dirs stay the default
            from sweep import wandb_io

            args.sweep_dirs, args.out = wandb_io.materialize_sources(args.from_wandb, args.out)
        result = run_fit(args.sweep_dirs, args.out, rule=rule, matched_loss=args.matched_loss,
                         figures=not args.no_figures, points_file=args.points, window_k=args.window_k,
                         n_boot=args.n_boot, arch_baseline=arch, reference_optimizer=args.reference)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, reason in result.excluded:
        print(f"warning: excluded {path}: {reason}", file=sys.stderr)
    for message in result.messages[:_MAX_NOTES]:
        print(f"note: {message}", file=sys.stderr)
    if len(result.messages) > _MAX_NOTES:
        print(f"note: ... {len(result.messages) - _MAX_NOTES} more notes in {result.report}", file=sys.stderr)
    print(format_beta_table(result))
    fig = next((p for p in result.figures if p.suffix == ".png"), None)
    print(f"\nwrote {len(result.files)} files to {result.out_dir} (report: {result.report})"
          + (f"; e.g. figure {fig}" if fig else ""))
    if args.wandb:
        from sweep import wandb_io

        folder = wandb_io.push_analysis(result, args.sweep_dirs, mode=args.wandb,
                                        project=args.wandb_project, entity=args.wandb_entity)
        if folder is not None:
            print(f"W&B analysis run: {folder}" + (f" (upload: wandb sync {folder})"
                                                   if folder.name.startswith("offline-run") else ""))
    return 0


_MAX_NOTES = 5  # the terminal gets the first few; report.md has them all

if __name__ == "__main__":
    sys.exit(main())
