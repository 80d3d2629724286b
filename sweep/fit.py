"""Post-hoc scaling-law analysis of a finished sweep: ``python -m sweep.fit SWEEP_DIR [...]``.

Reads the run directories (docs/contracts.md), reduces each run's telemetry to one value per
metric × bucket × site (paper rule by default), fits β with ``metrics.fit`` and writes, into the
analysis folder: points.csv, runs.csv, beta_table.csv (long, with delta_beta rows),
beta_summary.csv (wide), beta_steps.csv, optimizer_comparison.csv, optional matched-loss and
architecture tables, figures (PNG + PDF) and report.md. One bad run never stops the analysis:
it is listed with its reason and left out.

The steps live in ``sweep/analysis/`` (read → points → fitting → report and figures → wandb_io);
this module runs them in turn and prints what the user needs to see.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from metrics.fit import RANK_METRICS, AggregationRule
from sweep.analysis import wandb_io
from sweep.analysis.figures import write_figures
from sweep.analysis.fitting import fit_points
from sweep.analysis.points import build_points, build_step_points, read_points_file
from sweep.analysis.read import FinishedRun, SweepError, load_sweeps
from sweep.analysis.report import format_beta_table, write_report, write_tables
from sweep.analysis.result import FitResult
from sweep.analysis.rules import parse_rule

_MAX_NOTES = 5  # the terminal gets the first few; report.md has them all


def run_fit(
    sweep_dirs: Sequence[str | Path] = (), out_dir: str | Path | None = None, *,
    rule: str | AggregationRule = "paper", matched_loss: float | None = None,
    figures: bool = True, points_file: str | Path | None = None, window_k: int = 3,
    n_boot: int = 1000, level: float = 0.95, arch_baseline: tuple[str, str] | None = None,
    reference_optimizer: str = "adamw", metrics: Sequence[str] = RANK_METRICS,
    figure_sites: Sequence[str] | None = None,
) -> FitResult:
    """The whole analysis of finished sweeps (or of a points CSV): read, aggregate, fit, then
    write the tables, figures and report.md into ``out_dir``.

    Raises SweepError when there is nothing to analyse; problems with single runs or groups
    become entries of ``FitResult.messages``.
    """
    rule_obj = rule if isinstance(rule, AggregationRule) else parse_rule(rule)
    messages: list[str] = []
    excluded: list[tuple[str, str]] = []
    if points_file is not None and sweep_dirs:
        raise SweepError("give either sweep directories or --points, not both")
    if points_file is None and not sweep_dirs:
        raise SweepError("no sweep directory given")

    loaded: list[FinishedRun] = []
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

    step_points = (build_step_points(loaded, window_k, metrics) if loaded and window_k >= 1
                   else pd.DataFrame())
    result = fit_points(points, out, runs=loaded, step_points=step_points, rule=provenance["rule"],
                        level=level, n_boot=n_boot, matched_loss=matched_loss,
                        arch_baseline=arch_baseline, reference_optimizer=reference_optimizer)
    result.messages[:0] = messages  # what reading found comes first, as it happened first
    result.excluded = excluded

    write_tables(result)
    if figures:
        result.figures = write_figures(result, figure_sites)
        result.files += result.figures
    result.report = write_report(result, provenance)
    result.files.append(result.report)
    return result


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
    g = p.add_argument_group("W&B (optional; local run directories are the default source)")
    g.add_argument("--wandb", nargs="?", const="online", choices=("online", "offline"),
                   help="push the β tables, figures and report as a job_type=analysis run in the "
                        "sweep's W&B group (offline: files under OUT/wandb, upload with `wandb sync`)")
    g.add_argument("--wandb-project", help="W&B project (default: logger.project of the runs, else specsweep)")
    g.add_argument("--wandb-entity", help="W&B entity (default: logger.entity of the runs / your default)")
    g.add_argument("--from-wandb", metavar="ENTITY/PROJECT/GROUP|DIR", action="append",
                   help="read the runs from W&B instead of local run directories: a W&B group through "
                        "the API (needs WANDB_API_KEY), or a folder with W&B run folders (offline runs); "
                        "the rebuilt run directories go to OUT/runs")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        rule = parse_rule(args.rule)
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
        if args.from_wandb:  # runs rebuilt from W&B (sweep/analysis/wandb_io.py); local dirs stay the default
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
        folder = wandb_io.push_analysis(result, args.sweep_dirs, mode=args.wandb,
                                        project=args.wandb_project, entity=args.wandb_entity)
        if folder is not None:
            print(f"W&B analysis run: {folder}" + (f" (upload: wandb sync {folder})"
                                                   if folder.name.startswith("offline-run") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
