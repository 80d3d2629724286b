"""What ``specsweep-fit`` does once its arguments are parsed (sweep/fit.py parses them): fit, print
what the user needs, push to W&B, save the workspace view. Kept apart so that ``--help`` and a
usage error load none of pandas, SciPy or matplotlib."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from specsweep.sweep.analysis import wandb_io, workspace
from specsweep.sweep.analysis.notes import notes_block
from specsweep.sweep.analysis.pipeline import default_out, run_fit
from specsweep.sweep.analysis.power import power_block
from specsweep.sweep.analysis.report import format_beta_table, format_comparison
from specsweep.sweep.analysis.result import FitResult
from specsweep.sweep.analysis.rules import parse_rule
from specsweep.sweep.analysis.watch import watch
from specsweep.sweep.errors import SweepError
from specsweep.sweep.rundir import sweepdir

_MAX_NOTES = 5  # the terminal gets the first few; report.md has them all
_MAX_EXCLUDED = 10


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
          f"{out / workspace.SNIPPET_FILE}). Once online: specsweep-fit --wandb-workspace "
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


def run_command(args: argparse.Namespace) -> int:
    """Carry out a parsed, usage-checked ``specsweep-fit`` command line; the exit code."""
    try:
        rule = parse_rule(args.rule)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
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

