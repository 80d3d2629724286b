"""State of every run of a sweep, and relaunch of the unfinished ones (``specsweep-status``).

    specsweep-status SWEEP_DIR                      # one line per run, then counts
    specsweep-status SWEEP_DIR --json               # the same as JSON lines (with each id's overrides)
    specsweep-status SWEEP_DIR --ids                # each run id and the overrides behind it
    specsweep-status SWEEP_DIR --resubmit           # relaunch failed / stale / interrupted / never started runs
    specsweep-status SWEEP_DIR --resubmit resources.timeout_min=600   # ... with changed overrides

States: done, diverged, running, pending (queued, not started yet), requeued (preempted or at its
time limit, checkpointed, waiting to resume), interrupted (stopped outside SLURM; relaunch resumes
it), failed (with the last error line: the run's own error, or the SLURM job's end state and the
last line of its log), stale (run.json says running or requeued but the run is dead: killed with
SIGKILL, out of memory, its machine lost), not started (a grid point without a run directory).

A run is stale when no live SLURM job is recorded for it and its heartbeat (heartbeat.json, rewritten
every 30 s by the training process) shows it dead: its process is gone (checked when this command
runs on the run's host), or the heartbeat is older than --stale-after (default 600 s) on another
host. A run whose SLURM job is still live, whose job state cannot be read, or whose process is
still alive on this host is never stale.

The grid comes from SWEEP_DIR/.specsweep/grid.json, written by the sweeper at every launch (see
sweep/rundir/sweepdir.py); the SLURM job of each run from .specsweep/jobs.jsonl, and its state from squeue
and sacct. Sweep directories written before grid.json existed show only the runs that have a
directory. --resubmit reruns the recorded launch command restricted to the chosen runs
(``hydra.sweeper.only``): failed, stale, interrupted and not started ones; runs that are done,
diverged, running or still queued are left alone, and resumed runs continue from their newest
checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

from specsweep.sweep.commands import prog
from specsweep.sweep.cluster.states import STALE_AFTER_S, collect, format_ids, format_table, resubmit


def main(argv: Optional[Sequence[str]] = None) -> int:
    name = prog("status")
    examples = "\n".join(line.replace("specsweep-status", name).replace("SWEEP_DIR", "runs/demo")
                         for line in __doc__.split("\n\n")[1].splitlines())
    ap = argparse.ArgumentParser(prog=name, description=__doc__.split("\n\n")[0],
                                 epilog=f"examples:\n{examples}", formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("overrides", nargs="*", help="extra overrides for --resubmit (e.g. resources.timeout_min=600)")
    ap.add_argument("--resubmit", action="store_true",
                    help="relaunch failed, stale, interrupted and never started runs")
    ap.add_argument("--stale-after", type=float, default=STALE_AFTER_S, metavar="SECONDS",
                    help="a run on another host whose heartbeat is older than this is stale, i.e. dead "
                         f"(default {STALE_AFTER_S:.0f}; on the run's own host a gone process counts at once)")
    ap.add_argument("--stale", action="store_true",
                    help="with --resubmit: also relaunch runs still shown running/requeued without a live SLURM "
                         "job (no heartbeat, SLURM state unknown, or a recent heartbeat), for runs you know are dead")
    ap.add_argument("--dry-run", action="store_true", help="print the relaunch command only")
    ap.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    ap.add_argument("--ids", action="store_true",
                    help="each run id with the overrides behind it (spelled out, or in its hash)")
    a = ap.parse_args(argv)
    if not a.sweep_dir.is_dir():
        print(f"no such sweep directory: {a.sweep_dir}", file=sys.stderr)
        return 2
    if a.stale_after < 0:
        ap.error("--stale-after must be >= 0 seconds")
    rows = collect(a.sweep_dir, stale_after=a.stale_after)
    if a.json:
        for r in rows:
            print(json.dumps({k: v for k, v in asdict(r).items() if k != "launch"}))
    elif a.ids:
        print(format_ids(rows))
    else:
        print(format_table(rows))
    if a.overrides and not a.resubmit:
        ap.error("overrides are only used with --resubmit")
    if a.resubmit:
        return resubmit(a.sweep_dir, rows, a.overrides, dry_run=a.dry_run, stale_running=a.stale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
