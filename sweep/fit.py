"""Scaling-law analysis of a sweep: ``specsweep-fit SWEEP_DIR [...]`` (= ``python -m sweep.fit``).

Reads the run directories (docs/contracts.md), reduces each run's telemetry to one value per
metric × bucket × site (paper rule by default), fits β with ``metrics.fit`` and writes, into the
analysis folder (replaced whole, never half-written): points.csv, runs.csv, beta_table.csv (long,
with delta_beta rows), beta_summary.csv (wide), beta_steps.csv, optimizer_comparison.csv, power.csv,
optional matched-loss and architecture tables, paper_comparison.csv (--compare), figures (PNG + PDF, and all in one PDF),
report.md and status.json. One bad run never stops the analysis: it is listed with its reason
and left out. Without --watch only finished runs are fitted; --watch refits while the sweep runs.

The steps live in ``sweep/analysis/`` (pipeline: read → points → fitting → report and figures;
watch, wandb_io, workspace); this module parses the command line and prints what the user needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from sweep.commands import prog
from sweep.grid import sweepdir
from sweep.analysis import wandb_io, workspace
from sweep.analysis.pipeline import default_out, run_fit
from sweep.analysis.power import DEFAULT_RESOLVE, power_block
from sweep.errors import SweepError
from sweep.analysis.notes import notes_block
from sweep.analysis.report import format_beta_table, format_comparison
from sweep.analysis.result import FitResult
from sweep.analysis.rules import parse_rule
from sweep.analysis.watch import watch

__all__ = ["SweepError", "main", "run_fit"]
_MAX_NOTES = 5  # the terminal gets the first few; report.md has them all
_EXAMPLES = """examples:
  {prog} runs/demo                          finished runs: beta table, figures, report (runs/demo/analysis/)
  {prog} runs/demo --watch --every 300      refit while the sweep runs ("as of step S, N of M runs")
  {prog} runs/demo --watch --once           one live refit (cron, scripts)
  {prog} runs/demo --rule layer:5 --out /tmp/fit5   another aggregation rule, another folder
  {prog} runs/paper_160m --compare paper    published beta beside ours where the sweep matches
  {prog} --points points.csv                fit a points table (e.g. the paper's released points)
  {prog} runs/demo --wandb offline          also log the analysis as a W&B run (upload: wandb sync)
  {prog} --from-wandb ENTITY/PROJECT/GROUP  rebuild the runs from W&B, then fit
"""
_MAX_EXCLUDED = 10


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    name = prog("fit")
    p = argparse.ArgumentParser(prog=name, description=__doc__.split("\n\n")[0],
                                epilog=_EXAMPLES.format(prog=name), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dirs", nargs="*", help="sweep directories (or single run directories)")
    p.add_argument("--out", help="analysis folder (default: SWEEP_DIR/analysis, or FILE_fit/ "
                   "next to a --points file)")
    p.add_argument("--rule", default="paper", help="paper | mean | layer:K | window:A-B (default paper)")
    p.add_argument("--matched-loss", type=float, metavar="TOL",
                   help="pair configs whose final eval loss differs by at most TOL (nats) at a width")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG/PDF figures")
    p.add_argument("--points", metavar="FILE.csv", help="fit a points table instead of run dirs")
    p.add_argument("--window-k", type=int, default=3, help="β(t): trailing windows of up to K checkpoints, "
                   "one point per checkpoint from the first (default 3, as the paper's trajectories)")
    p.add_argument("--full-windows", action="store_true", help="β(t) from full windows of K checkpoints only")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples over seeds")
    p.add_argument("--reference", default="adamw", help="reference optimizer for comparisons")
    p.add_argument("--resolve", type=float, default=DEFAULT_RESOLVE, metavar="DBETA",
                   help=f"say how many seeds or widths would resolve this |Δβ| between optimizers "
                        f"(default {DEFAULT_RESOLVE}; docs/power.md)")
    p.add_argument("--arch-baseline", metavar="AXIS=VALUE",
                   help="architecture axis and baseline for the gain-vs-shift rule (default: auto)")
    p.add_argument("--compare", metavar="paper|FILE.csv",
                   help="put the published β beside ours where the sweep matches a published experiment "
                        "(model size, optimizer, bucket, steps; post-activation): 'paper' = the tables "
                        "released with paper 1 (Table 2 etc.), or a CSV in the same long format (columns: "
                        "sweep/analysis/compare.py); adds paper_comparison.csv, a report section, a "
                        "printed table and hollow markers in the β figure")
    live = p.add_argument_group("live β while the sweep runs")
    live.add_argument("--watch", action="store_true",
                      help="refit every --every seconds, unfinished runs included, all cut at their latest "
                           "common telemetry step ('as of step S, N of M runs'); stops when every run of "
                           "the grid has ended, or on Ctrl-C")
    live.add_argument("--every", type=float, default=300, metavar="SECONDS", help="seconds between refits (300)")
    live.add_argument("--once", action="store_true", help="with --watch: one refit, then exit (cron, tests)")
    g = p.add_argument_group("W&B (optional; local run directories are the default source)")
    g.add_argument("--wandb", nargs="?", const="online", choices=("online", "offline"),
                   help="push the β tables, figures and report as a job_type=analysis run in the "
                        "sweep's W&B group (offline: files under OUT/wandb, upload with `wandb sync`); "
                        "with --watch every refit goes to one run")
    g.add_argument("--wandb-project", help="W&B project (default: logger.project of the runs, else specsweep)")
    g.add_argument("--wandb-entity", help="W&B entity (default: logger.entity of the runs / your default)")
    g.add_argument("--wandb-workspace", action="store_true",
                   help="create the sweep's comparison view (README) on the W&B server; offline, write "
                        f"its spec to OUT/{workspace.SPEC_FILE} (and {workspace.SNIPPET_FILE})")
    g.add_argument("--apply-spec", metavar="FILE", help=f"with --wandb-workspace: save a {workspace.SPEC_FILE} "
                   "written offline on the server (no fit)")
    g.add_argument("--from-wandb", metavar="ENTITY/PROJECT/GROUP|DIR", action="append",
                   help="read the runs from W&B instead of local run directories: a W&B group through "
                        "the API (needs WANDB_API_KEY), or a folder with W&B run folders (offline runs); "
                        "the rebuilt run directories go to OUT/runs")
    return p.parse_args(argv)


def _usage_error(args: argparse.Namespace) -> str | None:
    if args.once and not args.watch:
        return "--once goes with --watch"
    if args.watch and (args.points or args.from_wandb):
        return "--watch needs sweep directories (not --points or --from-wandb)"
    if args.apply_spec and not args.wandb_workspace:
        return "--apply-spec goes with --wandb-workspace"
    if args.watch and args.every <= 0:
        return "--every must be > 0 seconds"
    if not args.resolve > 0:
        return f"--resolve must be a difference of β > 0, got {args.resolve:g}"
    if args.arch_baseline and "=" not in args.arch_baseline:
        return "--arch-baseline must look like AXIS=VALUE (e.g. n_head=12)"
    return None


def _planned(sweep_dirs: Sequence[str]) -> dict[str, list[str]]:
    """Run ids of each sweep's grid record (runs launched, started or not)."""
    return {str(Path(d)): sorted(sweepdir.read_grid(Path(d)).get("runs", {})) for d in sweep_dirs}


def _show(result: FitResult, header: str = "") -> None:
    if header:
        print(header, file=sys.stderr)
    for path, reason in result.excluded[:_MAX_EXCLUDED]:
        print(f"warning: excluded {path}: {reason}", file=sys.stderr)
    if len(result.excluded) > _MAX_EXCLUDED:
        print(f"warning: ... {len(result.excluded) - _MAX_EXCLUDED} more excluded runs in {result.report}",
              file=sys.stderr)
    summary = result.status.get("left_out_summary")
    if summary:
        hint = "" if result.status.get("live") else " (only finished runs are fitted; --watch fits running runs)"
        print(f"note: {summary}{hint}", file=sys.stderr)
    for message in result.messages[:_MAX_NOTES]:
        print(f"note: {message}", file=sys.stderr)
    if len(result.messages) > _MAX_NOTES:
        print(f"note: ... {len(result.messages) - _MAX_NOTES} more notes in {result.report}", file=sys.stderr)
    for line in notes_block(result.notes):
        print(line, file=sys.stderr)
    print(format_beta_table(result))
    if not result.power.empty:
        print("\n" + power_block(result.power))
    if result.comparison is not None:
        print("\n" + format_comparison(result))
    fig = next((p for p in result.figures if p.suffix == ".png"), None)
    print(f"\nwrote {len(result.files)} files to {result.out_dir} (report: {result.report})"
          + (f"; e.g. figure {fig}" if fig else ""), flush=True)


def _push(result: FitResult, args: argparse.Namespace, live: bool) -> None:
    folder = wandb_io.push_analysis(result, args.sweep_dirs, mode=args.wandb, project=args.wandb_project,
                                    entity=args.wandb_entity, live=live)
    if folder is not None:
        print(f"W&B analysis run: {folder}" + (f" (upload: wandb sync {folder})"
                                               if folder.name.startswith("offline-run") else ""))


def _workspace(spec: dict[str, Any], out: Path) -> None:
    """Save the view online, else say where its spec is and how to apply it."""
    reason = workspace.offline_reason()
    if reason is None:
        try:
            print(f"W&B workspace: {workspace.apply_spec(spec)}")
            return
        except Exception as err:  # noqa: BLE001 - no key, no server: the spec is on disk either way
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    spec_file = out / workspace.SPEC_FILE
    print(f"W&B workspace not created ({reason}); its spec is in {spec_file} (and "
          f"{out / workspace.SNIPPET_FILE}). Once online: python -m sweep.fit --wandb-workspace "
          f"--apply-spec {spec_file}", file=sys.stderr)


def _apply(path: str) -> int:
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        print(f"error: cannot read workspace spec {path}: {err}", file=sys.stderr)
        return 2
    reason = workspace.offline_reason()
    try:
        if reason:
            raise RuntimeError(reason)
        print(f"W&B workspace: {workspace.apply_spec(spec)}")
        return 0
    except Exception as err:  # noqa: BLE001
        print(f"error: workspace not saved ({type(err).__name__}: {err})", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    problem = _usage_error(args)
    try:
        rule = parse_rule(args.rule)
    except ValueError as err:
        problem = problem or str(err)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.apply_spec:
        return _apply(args.apply_spec)
    arch = tuple(args.arch_baseline.split("=", 1)) if args.arch_baseline else None
    try:
        if args.from_wandb:  # runs rebuilt from W&B (sweep/analysis/wandb_io.py); local dirs stay the default
            args.sweep_dirs, args.out = wandb_io.materialize_sources(args.from_wandb, args.out)
        spec = None
        if args.wandb_workspace:
            groups, group, project, entity = wandb_io.wandb_target(args.sweep_dirs, args.wandb_project,
                                                                   args.wandb_entity)
            spec = workspace.build_spec(groups or [group], project, entity)
        options = dict(rule=rule, matched_loss=args.matched_loss, figures=not args.no_figures,
                       points_file=args.points, window_k=args.window_k, full_windows=args.full_windows,
                       n_boot=args.n_boot,
                       arch_baseline=arch, reference_optimizer=args.reference, compare=args.compare,
                       resolve=args.resolve,
                       extra_files=workspace.spec_files(spec) if spec else None)
        out = Path(args.out) if args.out else default_out(args.sweep_dirs, args.points)
        if args.watch:
            if spec:
                _workspace(spec, out)
            return watch(lambda: run_fit(args.sweep_dirs, out, live=True, planned=_planned(args.sweep_dirs),
                                         **options),
                         every=args.every, once=args.once,
                         show=lambda r: _show(r, f"\n=== refit: {r.status.get('label')} ==="),
                         push=(lambda r: _push(r, args, live=True)) if args.wandb else None)
        result = run_fit(args.sweep_dirs, out, planned=None if args.points else _planned(args.sweep_dirs),
                         **options)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _show(result)
    if args.wandb:
        _push(result, args, live=False)
    if spec:
        _workspace(spec, result.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
