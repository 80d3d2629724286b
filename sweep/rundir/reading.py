"""Finding, reading and rebuilding run directories for the analysis and the sweep's status.

sweep.analysis reads runs only through these (and RunDir), so it spells no file name or status value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from specsweep.sweep.rundir.layout import STATUS_DIVERGED, STATUS_DONE, STATUS_FAILED, RunDir, RunDirError

EXCLUDED_STATUSES = (STATUS_DIVERGED, STATUS_FAILED)
"""Statuses of runs that ended without a result: the analysis leaves them out."""

ENDED_STATUSES = (STATUS_DONE, STATUS_DIVERGED, STATUS_FAILED)
"""Statuses of runs that will not log anything more (unless relaunched): the live analysis stops
waiting for them."""

RUN_MARKER = RunDir(".").status_file.name
"""Name of the file that makes a folder a run directory (its status file)."""


def find_run_dirs(sweep_dir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Run directories of a sweep (children holding a status file; ``sweep_dir`` itself if it is a
    run) and ``(folder, reason)`` for children that hold run files but no status file."""
    if RunDir(sweep_dir).status_file.is_file():
        return [sweep_dir], []
    runs, orphans = [], []
    for child in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        run = RunDir(child)
        try:
            if run.status_file.is_file():
                runs.append(child)
            elif any(p.exists() for p in (run.spectra_file, run.metrics_file, run.done_file)):
                orphans.append((str(child), f"has run files but no {run.status_file.name}"))
        except OSError as e:  # a folder that cannot be searched (permissions)
            orphans.append((str(child), f"unreadable: {e.strerror or e}"))
    return runs, orphans


def load_status(run: RunDir) -> Any:
    """The status file as written, whatever JSON value it holds; raises OSError or
    json.JSONDecodeError so that a reader can say why a run is unusable (:meth:`RunDir.read_status`
    instead gives ``{}`` for a missing or empty file and raises RunDirError for one it cannot read
    or that is not a JSON object)."""
    return json.loads(run.status_file.read_text())


def load_done(run: RunDir) -> Any:
    """The DONE marker's summary: ``{}`` for an empty marker, None when it is not valid JSON."""
    try:
        return json.loads(run.done_file.read_text() or "{}")
    except json.JSONDecodeError:
        return None


def write_run_files(path: Path, status: dict[str, Any], metrics: Iterable[dict[str, Any]],
                    spectra: Iterable[dict[str, Any]], done: dict[str, Any] | None) -> Path:
    """Write a run directory from its contents: status file, metrics and spectra rows, and the DONE
    marker when ``done`` is given (used to rebuild runs whose local files are gone, e.g. from W&B)."""
    run = RunDir(path)
    run.path.mkdir(parents=True, exist_ok=True)
    run.status_file.write_text(json.dumps(status, indent=1))
    for target, rows in ((run.metrics_file, metrics), (run.spectra_file, spectra)):
        target.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if done is not None:
        run.done_file.write_text(json.dumps(done))
    return run.path


def run_has_ended(path: Path) -> bool:
    """True when the run in ``path`` is finished, diverged or failed, or its status file is missing
    or unreadable (the trainer writes it atomically, so nothing will complete it)."""
    run = RunDir(path)
    if run.is_done():
        return True
    try:
        status = run.read_status()
    except RunDirError:
        return True
    return not status or status.get("status") in ENDED_STATUSES
