"""The finished runs of one or more sweeps, read through ``sweep.rundir`` (docs/contracts.md).

A run that cannot be used (diverged, failed, unfinished, unreadable, without telemetry) is not an
error: it is listed with its reason and left out, and the analysis goes on with the others.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from sweep import rundir

WIDTH_COL = "ffn_width"
"""The run axis (and points-table column) holding the FFN hidden width D."""


class SweepError(Exception):
    """Input that leaves nothing to analyse (the CLI exits with status 2)."""


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


@dataclass
class SweepContents:
    runs: list[FinishedRun]
    excluded: list[tuple[str, str]]  # (run path, reason)
    warnings: list[str]
    n_run_dirs: int


class _Skip(Exception):
    """A run left out of the analysis, with the reason as its message."""


# Columns every telemetry record has (docs/contracts.md); a spectra file without them is unusable.
_RECORD_KEYS = {"step", "layer", "site", "bucket"}


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


def load_run(run_dir: Path, sweep_dir: Path, warnings: list[str]) -> FinishedRun:
    """Load one run directory; raises _Skip with the reason when it cannot be used."""
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
    if not run.done_file.is_file():
        raise _Skip(f"unfinished (status={status}, step={info.get('step')})")
    done = rundir.load_done(run)
    if done is None:
        done = {}
        warnings.append(f"{run_id}: {done_name} is not valid JSON; final losses read from {metrics_name}")
    if status != rundir.STATUS_DONE:
        # The completion marker is written last and atomically: it outranks a stale status field.
        warnings.append(f"{run_id}: {status_name} says status={status} but {done_name} exists; "
                        "treated as done")
    axes = dict(info.get("axes") or {})
    if axes.get(WIDTH_COL) is None and axes.get("ffn_mult") is not None and axes.get("d_model") is not None:
        axes[WIDTH_COL] = int(round(float(axes["ffn_mult"]) * float(axes["d_model"])))
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
    return FinishedRun(run_id, run_dir, sweep_dir, axes, info.get("config_hash"), spectra, eval_loss, train_loss)


def load_sweeps(sweep_dirs: Sequence[str | Path]) -> SweepContents:
    """All finished runs of the given sweep dirs; others are listed in ``excluded``."""
    runs, excluded, warnings, n_dirs = [], [], [], 0
    for raw in sweep_dirs:
        sweep_dir = Path(raw)
        if not sweep_dir.is_dir():
            raise SweepError(f"sweep directory not found: {sweep_dir}")
        run_dirs, orphans = rundir.find_run_dirs(sweep_dir)
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
        raise SweepError(f"no run directories (folders with {rundir.RUN_MARKER}) found in "
                         + ", ".join(str(d) for d in sweep_dirs))
    seen: dict[str, Path] = {}
    for run in runs:
        if run.run_id in seen:
            warnings.append(f"run_id {run.run_id} appears in {seen[run.run_id]} and {run.run_dir}; "
                            "both are kept")
        seen.setdefault(run.run_id, run.run_dir)
    return SweepContents(runs, excluded, warnings, n_dirs)
