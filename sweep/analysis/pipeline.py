"""One analysis, start to end: read the runs, choose what to fit, fit, write the folder, publish.

``run_fit`` is what ``specsweep-fit`` does once (and ``--watch`` at every refit): it reads
the run directories (or a points CSV), reduces each run's telemetry to one value per metric ×
bucket × site, fits β, writes the tables, figures, report.md and status.json into a staging
folder and swaps it in for the analysis folder (sweep/analysis/outdir.py).

Which runs enter: by default the finished ones, each at its own last checkpoints; ``live=True``
also takes unfinished runs, all cut at their latest common telemetry step
(sweep/analysis/live.py). Either way the runs left out are counted against all runs of the
sweep (its grid record included) and listed with their reasons.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from specsweep.metrics.aggregation import AggregationRule

from specsweep.metrics.fit import RANK_METRICS
from specsweep.metrics.window_audit import notes_frame
from specsweep.sweep.analysis import outdir
from specsweep.sweep.analysis.compare import compare_published, load_published
from specsweep.sweep.analysis.figures import write_figures
from specsweep.sweep.analysis.fitting import fit_points
from specsweep.sweep.analysis.live import Census, NothingToFit, at_common_step, live_label, take_census
from specsweep.sweep.analysis.power import DEFAULT_RESOLVE
from specsweep.sweep.analysis.points import build_points, build_step_points, read_points_file
from specsweep.sweep.analysis.read import FinishedRun, NoRunDirectories, SweepError, load_sweeps
from specsweep.sweep.analysis.report import write_report, write_tables
from specsweep.sweep.analysis.result import FitResult
from specsweep.sweep.analysis.rules import err_meaning, parse_rule, rule_short


def default_out(sweep_dirs: Sequence[str | Path], points_file: str | Path | None) -> Path:
    """SWEEP_DIR/analysis, or FILE_fit/ next to a points file."""
    if points_file is not None:
        return Path(points_file).parent / f"{Path(points_file).stem}_fit"
    if not sweep_dirs:
        raise SweepError("no sweep directory given")
    return Path(sweep_dirs[0]) / "analysis"


def _read_runs(sweep_dirs: Sequence[str | Path], rule: AggregationRule, live: bool,
               planned: Mapping[str, Sequence[str]] | None
               ) -> tuple[list[FinishedRun], Census, int | None, list[str]]:
    """(runs to fit, census, common step or None, warnings)."""
    try:
        contents = load_sweeps(sweep_dirs, live=live)
    except NoRunDirectories:
        n_planned = sum(len(v) for v in (planned or {}).values())
        if n_planned:  # a recorded grid whose runs have not started yet
            raise NothingToFit(f"none of the {n_planned} runs of the sweep record has started", False) from None
        raise
    census = take_census(contents, planned)
    runs, step = contents.runs, None
    if live and not census.all_ended:
        runs, step, short = at_common_step(runs, rule)
        census.left_out += short
    if not runs:
        reasons = "; ".join(f"{Path(p).name}: {r}" for p, r in census.left_out[:10])
        what = "no run has a full aggregation window yet" if live else "no finished runs to analyse"
        raise NothingToFit(f"{what} ({len(census.left_out)} of {census.n_total} left out: {reasons})",
                           census.all_ended)
    return runs, census, step, contents.warnings


def run_fit(
    sweep_dirs: Sequence[str | Path] = (), out_dir: str | Path | None = None, *,
    rule: str | AggregationRule = "paper", matched_loss: float | None = None,
    figures: bool = True, points_file: str | Path | None = None, window_k: int = 3,
    full_windows: bool = False,
    n_boot: int = 1000, level: float = 0.95, arch_baseline: tuple[str, str] | None = None,
    reference_optimizer: str = "adamw", metrics: Sequence[str] = RANK_METRICS,
    figure_sites: Sequence[str] | None = None, live: bool = False,
    planned: Mapping[str, Sequence[str]] | None = None, extra_files: Mapping[str, str] | None = None,
    compare: str | Path | None = None, resolve: float = DEFAULT_RESOLVE,
) -> FitResult:
    """The whole analysis of sweeps (or of a points CSV): read, aggregate, fit, then write the
    tables, figures, report.md and status.json and publish them as ``out_dir`` in one swap.

    ``window_k``: β over training from trailing windows of up to that many events, one point per
    event (``full_windows``: windows of exactly that many only).
    ``live``: fit unfinished runs too, at their latest common step (``sweep.fit --watch``).
    ``planned``: sweep dir -> run ids of its grid record, so that runs not started yet count.
    ``extra_files``: name -> text written into the folder with the rest (e.g. a workspace spec).
    ``compare``: "paper" or a published β table (CSV): our β beside the published ones where the
    experiment matches (sweep/analysis/compare.py), in the tables, report and β figure.
    Raises SweepError when there is nothing to analyse; problems with single runs or groups
    become entries of ``FitResult.messages``; runs not used are in ``FitResult.excluded``.
    """
    rule_obj = rule if isinstance(rule, AggregationRule) else parse_rule(rule)
    if points_file is not None and sweep_dirs:
        raise SweepError("give either sweep directories or --points, not both")
    if points_file is None and not sweep_dirs:
        raise SweepError("no sweep directory given")
    out = Path(out_dir) if out_dir else default_out(sweep_dirs, points_file)
    outdir.check_replaceable(out)
    published = load_published(compare) if compare is not None else None  # a bad table: error first

    messages: list[str] = []
    notes: list[dict] = []
    loaded: list[FinishedRun] = []
    census, step = None, None
    provenance: dict[str, Any] = {"rule": rule_obj.describe() if points_file is None else
                                  "as given in the points file"}
    if points_file is not None:
        points = read_points_file(points_file)
        provenance["points_file"] = str(points_file)
        provenance["points_sha256"] = hashlib.sha256(Path(points_file).read_bytes()).hexdigest()[:16]
        sweep_name = Path(points_file).stem
    else:
        loaded, census, step, warnings = _read_runs(sweep_dirs, rule_obj, live, planned)
        messages += warnings
        points, msgs = build_points(loaded, rule_obj, metrics, notes=notes)
        messages += msgs
        if points.empty:
            raise SweepError("no run produced a usable value under rule " + rule_obj.describe())
        provenance["sweep_dirs"] = [str(Path(d).resolve()) for d in sweep_dirs]
        sweep_name = "+".join(dict.fromkeys(r.sweep_dir.name for r in loaded))

    staging = outdir.staging_dir(out)
    try:
        step_points = (build_step_points(loaded, window_k, metrics, partial=not full_windows)
                       if loaded and window_k >= 1 else pd.DataFrame())
        result = fit_points(points, staging, runs=loaded, step_points=step_points, rule=provenance["rule"],
                            level=level, n_boot=n_boot, matched_loss=matched_loss,
                            arch_baseline=arch_baseline, reference_optimizer=reference_optimizer,
                            resolve=resolve, notes=notes_frame(notes))
        result.messages[:0] = messages  # what reading found comes first, as it happened first
        if published is not None:
            result.comparison = compare_published(result.beta_table, result.points, result.group_cols,
                                                  published)
        result.rule_short = rule_short(rule_obj) if points_file is None else "rule as given in the points file"
        result.err_meaning = err_meaning(rule_obj) if points_file is None else "err column of the points file"
        result.sweep_name = sweep_name
        status = _status(census, step, live, points["run_id"].nunique() if "run_id" in points.columns else 0)
        result.status = status
        result.as_of = status["label"] if status.get("partial") else ""
        result.excluded = list(census.left_out) if census else []
        provenance["status"] = status
        write_tables(result)
        if figures:
            result.figures = write_figures(result, figure_sites)
            result.files += result.figures
        result.report = write_report(result, provenance)
        result.files.append(result.report)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
            result.files.append(staging / name)
        result.files.append(outdir.write_status(staging, status))
        outdir.publish(staging, out)
    except BaseException:
        outdir.discard(staging)  # the published analysis stays as it was
        raise
    _move_paths(result, staging, out)
    return result


def _status(census: Census | None, step: int | None, live: bool, n_used: int) -> dict[str, Any]:
    """status.json and the label of titles and tables: what this analysis is of."""
    if census is None:
        return {"label": "points file", "partial": False, "final": True}
    final = census.all_ended
    if live and not final:
        label = live_label(step, n_used, census.n_total)
    elif n_used < census.n_total:
        label = f"finished runs only, {n_used} of {census.n_total} runs"
    else:
        label = f"all {census.n_total} runs finished"
    return {"label": label, "as_of_step": step, "n_runs": n_used, "n_total": census.n_total,
            "n_ended": census.n_ended, "final": final, "live": bool(live and not final),
            "partial": n_used < census.n_total or bool(live and not final),
            "left_out": [{"run": Path(p).name, "reason": r} for p, r in census.left_out],
            "left_out_summary": census.summary(n_used)}


def _move_paths(result: FitResult, staging: Path, out: Path) -> None:
    """Paths in the result point into the published folder, not the staging one."""
    def moved(p: Path) -> Path:
        p = Path(p)
        return out / p.relative_to(staging) if p.is_relative_to(staging) else p

    result.out_dir = out
    result.files = [moved(p) for p in result.files]
    result.figures = [moved(p) for p in result.figures]
    result.report = moved(result.report) if result.report else None
