"""Scaling-law analysis of a sweep: ``specsweep-fit SWEEP_DIR [...]`` (= ``python -m specsweep.sweep.fit``).

Reads the run directories (docs/contracts.md), reduces each run's telemetry to one value per
metric × bucket × site (paper rule by default), fits β with ``metrics.fit`` and writes, into the
analysis folder (replaced whole, never half-written): points.csv, runs.csv, beta_table.csv (long,
with delta_beta rows), beta_summary.csv (wide), beta_steps.csv, optimizer_comparison.csv, power.csv,
optional matched-loss and architecture tables, paper_comparison.csv (--compare), figures (PNG + PDF, and all in one PDF),
report.md and status.json. One bad run never stops the analysis: it is listed with its reason
and left out. Without --watch only finished runs are fitted; --watch refits while the sweep runs.

The steps live in ``sweep/analysis/`` (pipeline: read → points → fitting → report and figures;
watch, wandb_io, workspace; ``command`` carries out a parsed command line); this module parses the
command line, so that ``--help`` loads nothing heavy.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from specsweep.sweep.analysis.defaults import DEFAULT_RESOLVE, SNIPPET_FILE, SPEC_FILE
from specsweep.sweep.commands import prog
from specsweep.sweep.errors import SweepError

__all__ = ["SweepError", "main", "run_fit"]
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
                        f"its spec to OUT/{SPEC_FILE} (and {SNIPPET_FILE})")
    g.add_argument("--apply-spec", metavar="FILE", help=f"with --wandb-workspace: save a {SPEC_FILE} "
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    problem = _usage_error(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from specsweep.sweep.analysis.command import run_command  # pandas, SciPy, matplotlib: not for --help

    return run_command(args)


def __getattr__(name: str) -> Any:
    """``sweep.fit.run_fit``: the fit as a function (sweep/analysis/pipeline.py), imported on use."""
    if name == "run_fit":
        from specsweep.sweep.analysis.pipeline import run_fit

        return run_fit
    raise AttributeError(f"module 'specsweep.sweep.fit' has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
