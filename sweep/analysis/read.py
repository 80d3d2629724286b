"""The finished runs of one or more sweeps, read through ``sweep.rundir`` (docs/contracts.md).

A run that cannot be used (diverged, failed, unfinished, unreadable, without telemetry) is not an
error: it is listed with its reason and left out, and the analysis goes on with the others.
With ``live=True`` (``sweep.fit --watch``) unfinished runs are read too, with what they have
logged so far.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from specsweep.models.config import ffn_hidden_dim
from specsweep.sweep import rundir
from specsweep.sweep.errors import SweepError  # input that leaves nothing to analyse (the CLI exits 2)

WIDTH_COL = "ffn_width"
"""The run axis (and points-table column) holding the FFN hidden width D."""


class NoRunDirectories(SweepError):
    """The sweep directories hold no run directory (yet)."""


@dataclass
class FinishedRun:
    """One finished run as the analysis sees it: its axes, telemetry records and final losses."""

    run_id: str
    run_dir: Path
    sweep_dir: Path
    axes: dict[str, Any]
    config_hash: str | None
    spectra: pd.DataFrame
    eval_loss: float
    train_loss: float
    ended: bool = True  # False: a run still going (read with live=True)
    eval_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, eval loss), by step


@dataclass
class SweepContents:
    runs: list[FinishedRun]
    excluded: list[tuple[str, str]]  # (run path, reason)
    warnings: list[str]
    run_names: dict[str, list[str]] = field(default_factory=dict)  # sweep dir -> its run folders' names
    ended: set[str] = field(default_factory=set)  # paths of run dirs whose run has ended


class _Skip(Exception):
    """A run left out of the analysis, with the reason as its message."""


# Columns every telemetry record has (docs/contracts.md); a spectra file without them is unusable.
_RECORD_KEYS = {"step", "layer", "site", "bucket"}


def _eval_curve(metric_rows: list[dict]) -> list[tuple[int, float]]:
    curve = {int(r.get("step", -1)): _as_float(r["eval_loss"]) for r in metric_rows
             if r.get("eval_loss") is not None}
    return sorted(curve.items())


def _last_eval_loss(metric_rows: list[dict]) -> float:
    curve = _eval_curve(metric_rows)
    return curve[-1][1] if curve else float("nan")


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def load_run(run_dir: Path, sweep_dir: Path, warnings: list[str], live: bool = False) -> FinishedRun:
    """Load one run directory; raises _Skip with the reason when it cannot be used. ``live``:
    a run without its completion marker is read as it is so far instead of being left out."""
    run = rundir.RunDir(run_dir)
    status_name, done_name = run.status_file.name, run.done_file.name
    spectra_name, metrics_name = run.spectra_file.name, run.metrics_file.name
    try:
        info = rundir.load_status(run)
    except (OSError, json.JSONDecodeError) as err:
        raise _Skip(f"unreadable {status_name} ({err})") from None
    status = str(info.get("status", "unknown"))
    run_id = str(info.get("run_id") or run_dir.name)
    if status in rundir.EXCLUDED_STATUSES:
        detail = f": {info['error']}" if info.get("error") else ""
        raise _Skip(f"{status}{detail}")
    ended = run.done_file.is_file()
    if not ended and not live:
        raise _Skip(f"unfinished (status={status}, step={info.get('step')})")
    done = rundir.load_done(run) if ended else {}
    if done is None:
        done = {}
        warnings.append(f"{run_id}: {done_name} is not valid JSON; final losses read from {metrics_name}")
    if ended and status != rundir.STATUS_DONE:
        # The completion marker is written last and atomically: it outranks a stale status field.
        warnings.append(f"{run_id}: {status_name} says status={status} but {done_name} exists; "
                        "treated as done")
    axes = dict(info.get("axes") or {})
    if axes.get(WIDTH_COL) is None and axes.get("ffn_mult") is not None and axes.get("d_model") is not None:
        # a run.json of an older version without the width: D from the knobs, as the model derives it
        axes[WIDTH_COL] = ffn_hidden_dim(float(axes["d_model"]), float(axes["ffn_mult"]), None)
    for key in ("optimizer", WIDTH_COL):
        if axes.get(key) is None:
            raise _Skip(f"{status_name} axes lack {key!r}")
    if not run.spectra_file.is_file():
        raise _Skip(f"no {spectra_name}")
    rows, bad = rundir.read_jsonl_rows(run.spectra_file)
    if bad:
        warnings.append(f"{run_id}: skipped {bad} unreadable line(s) in {spectra_name}")
    spectra = pd.DataFrame(rows)
    missing = _RECORD_KEYS - set(spectra.columns)
    if spectra.empty or missing:
        raise _Skip(f"{spectra_name} is empty" if spectra.empty else f"{spectra_name} lacks {sorted(missing)}")
    metric_rows: list[dict] = []
    if run.metrics_file.is_file():
        metric_rows, _ = rundir.read_jsonl_rows(run.metrics_file)
    eval_loss = _as_float(done.get("final_eval_loss"))
    if not math.isfinite(eval_loss):
        eval_loss = _last_eval_loss(metric_rows)
    train_loss = _as_float(done.get("final_train_loss"))
    return FinishedRun(run_id, run_dir, sweep_dir, axes, info.get("config_hash"), spectra, eval_loss,
                       train_loss, ended=ended, eval_curve=_eval_curve(metric_rows))


def load_sweeps(sweep_dirs: Sequence[str | Path], live: bool = False) -> SweepContents:
    """All finished runs of the given sweep dirs (``live``: and the unfinished ones, as they are
    so far); others are listed in ``excluded``."""
    runs, excluded, warnings, n_dirs = [], [], [], 0
    run_names: dict[str, list[str]] = {}
    ended: set[str] = set()
    for raw in sweep_dirs:
        sweep_dir = Path(raw)
        if not sweep_dir.is_dir():
            raise SweepError(f"sweep directory not found: {sweep_dir}")
        run_dirs, orphans = rundir.find_run_dirs(sweep_dir)
        excluded.extend(orphans)
        n_dirs += len(run_dirs) + len(orphans)
        run_names[str(sweep_dir)] = [Path(p).name for p in [*run_dirs, *(o for o, _ in orphans)]]
        ended.update(str(o) for o, _ in orphans)  # run files without a status: nothing will finish them
        ended.update(str(p) for p in run_dirs if rundir.run_has_ended(p))
        for run_dir in run_dirs:
            try:
                runs.append(load_run(run_dir, sweep_dir, warnings, live=live))
            except _Skip as skip:
                excluded.append((str(run_dir), str(skip)))
            except Exception as err:  # noqa: BLE001 - one bad run must not stop the sweep
                excluded.append((str(run_dir), f"unreadable ({type(err).__name__}: {err})"))
    if n_dirs == 0:
        raise NoRunDirectories(f"no run directories (folders with {rundir.RUN_MARKER}) found in "
                         + ", ".join(str(d) for d in sweep_dirs))
    seen: dict[str, Path] = {}
    for run in runs:
        if run.run_id in seen:
            warnings.append(f"run_id {run.run_id} appears in {seen[run.run_id]} and {run.run_dir}; "
                            "both are kept")
        seen.setdefault(run.run_id, run.run_dir)
    return SweepContents(runs, excluded, warnings, run_names, ended)
