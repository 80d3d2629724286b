"""Which runs a fit uses while a sweep is still going, and how that is labelled.

- :class:`Census`: the M runs of a sweep (every grid point of its sweep record, including those
  not started, plus every run directory), which of them have ended, and why each one the fit
  does not use was left out.
- :func:`at_common_step`: the live rule of ``sweep.fit --watch``: runs that have logged at least a
  full aggregation window are cut at the latest telemetry step S that all of them have reached,
  so every point of the fit describes the same moment of training; shorter runs are left out
  and listed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

from specsweep.metrics.aggregation import AggregationRule
from specsweep.metrics.window_audit import trained_records
from specsweep.sweep import rundir
from specsweep.sweep.analysis.read import FinishedRun, SweepContents, SweepError

NOT_STARTED = "not started (in the sweep record, no run directory yet)"
# First words of the reasons a run is left out, counted in the one-line summary (a run left out
# for its run.json status is named by that status: sweep/analysis/read.py).
_CATEGORIES = ("unfinished", *rundir.EXCLUDED_STATUSES, "not started", "too short", "window")


class NothingToFit(SweepError):
    """No run can be fitted (none finished, none with a full window yet, or all unusable);
    ``all_ended`` says whether waiting can still change that."""

    def __init__(self, message: str, all_ended: bool) -> None:
        super().__init__(message)
        self.all_ended = all_ended


@dataclass
class Census:
    """The runs of the analysed sweeps: how many (M), which have ended, which are left out."""

    n_total: int
    n_ended: int
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (run path or id, reason)

    @property
    def all_ended(self) -> bool:
        return self.n_ended >= self.n_total

    def summary(self, n_used: int) -> str:
        """'left out 3 of 8 runs: 2 unfinished, 1 diverged' ('' when none was left out)."""
        if not self.left_out:
            return ""
        counts: dict[str, int] = {}
        for _, reason in self.left_out:
            key = next((c for c in _CATEGORIES if reason.startswith(c)), "unusable")
            counts[key] = counts.get(key, 0) + 1
        parts = ", ".join(f"{n} {k}" for k, n in counts.items())
        return f"used {n_used} of {self.n_total} runs; left out {len(self.left_out)}: {parts}"


def take_census(contents: SweepContents, planned: Mapping[str, Sequence[str]] | None) -> Census:
    """M = the grid points of each sweep's record (``planned``: sweep dir -> run ids) together
    with its run directories; grid points without a directory are listed as not started."""
    left_out = list(contents.excluded)
    n_total = 0
    for sweep_dir, names in contents.run_names.items():
        expected = set((planned or {}).get(sweep_dir, ()))
        missing = sorted(expected - set(names))
        left_out += [(str(Path(sweep_dir) / rid), NOT_STARTED) for rid in missing]
        n_total += len(set(names) | expected)
    return Census(n_total=n_total, n_ended=len(contents.ended), left_out=left_out)


def telemetry_steps(run: FinishedRun) -> list[int]:
    """The run's telemetry events after the first update, ascending: the events a window counts
    (metrics.fit.window_steps after metrics.window_audit.trained_records, as the final fit)."""
    return sorted(int(s) for s in trained_records(run.spectra)["step"].dropna().unique())


def _cut(run: FinishedRun, step: int) -> FinishedRun:
    """The run as it was at ``step``: telemetry up to it, the last eval loss up to it."""
    evals = [loss for s, loss in run.eval_curve if s <= step]
    eval_loss = evals[-1] if evals else (run.eval_loss if run.ended else math.nan)
    return replace(run, spectra=run.spectra[run.spectra["step"] <= step].reset_index(drop=True),
                   eval_loss=eval_loss, train_loss=math.nan)


def at_common_step(runs: Sequence[FinishedRun], rule: AggregationRule
                   ) -> tuple[list[FinishedRun], int | None, list[tuple[str, str]]]:
    """(runs cut at the common step S, S, left-out runs with reasons).

    A run enters when it has a full aggregation window: ``rule.last_k`` telemetry steps after the
    first update (a ``window:A-B`` rule: a telemetry step at or past B); a run that has ended
    enters with what it logged, as the final fit takes it (its short window is noted there), unless
    it logged no telemetry step after the first update. S is the latest step that every entered
    run still going has reached (an ended run is cut at S too, but does not hold S back); a run
    with fewer than ``last_k`` telemetry steps up to S (other telemetry cadence) is left out as
    well. S is None when no run has a full window yet.
    """
    steps = {id(r): telemetry_steps(r) for r in runs}
    left: list[tuple[str, str]] = []
    full: list[FinishedRun] = []
    for run in runs:
        have = steps[id(run)]
        if rule.kind == "window":
            if not have or have[-1] < rule.step_max:
                left.append((str(run.run_dir), f"window {rule.step_min}-{rule.step_max} not reached yet "
                                               f"(latest telemetry step {have[-1] if have else 'none'})"))
                continue
        elif not have or (len(have) < rule.last_k and not run.ended):  # ended: enters as the final fit takes it
            left.append((str(run.run_dir), f"too short: {len(have)} telemetry step(s) so far, the rule "
                                           f"needs {rule.last_k}"))
            continue
        full.append(run)
    if not full:
        return [], None, left
    going = [r for r in full if not r.ended] or full  # an ended run does not hold S back
    common = rule.step_max if rule.kind == "window" else min(steps[id(r)][-1] for r in going)
    kept = []
    for run in full:
        n = sum(1 for s in steps[id(run)] if s <= common)
        if rule.kind != "window" and n < rule.last_k and not (run.ended and n == len(steps[id(run)])):
            left.append((str(run.run_dir), f"too short: {n} telemetry step(s) up to step {common}, "
                                           f"the rule needs {rule.last_k}"))
            continue
        kept.append(_cut(run, common))
    return kept, common, left


def live_label(step: int | None, n_used: int, n_total: int) -> str:
    """'as of step S, N of M runs'."""
    return f"as of step {step}, {n_used} of {n_total} runs"
