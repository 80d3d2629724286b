"""What was launched into a sweep directory, kept next to the runs for ``specsweep-status``.

``SWEEP_DIR/.specsweep/grid.json``
    every grid point ever launched into the directory (run id -> overrides, launch, and the
    overrides behind the run id: ``id``, see sweep/grid/run_id.py RunIdParts.record) and every
    distinct launch command (command-line task and hydra overrides, working directory, SPECSWEEP_*
    environment), so the status command knows the runs that never started and can relaunch them;
``SWEEP_DIR/.specsweep/jobs.jsonl``
    one row per submitted SLURM job (run id, overrides, job id, time); the newest row of a run wins.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from specsweep.sweep.credentials import is_secret_name, refuse_secret_arguments
from specsweep.sweep.errors import SweepError
from specsweep.sweep.rundir.files import atomic_write_text, now_iso
from specsweep.sweep.rundir.jsonl import iter_jsonl

log = logging.getLogger("specsweep.sweep")

META = ".specsweep"
# Overrides that say how a launch was made, not which runs it holds: rewritten on relaunch.
_RELAUNCH_DROP = ("hydra.mode=", "hydra.sweeper.only=", "hydra.sweep.dir=")
# Environment of a launch that a relaunch must not inherit: a test's hold point is not the grid's.
_NOT_RECORDED = ("SPECSWEEP_HOLD",)


def grid_file(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / META / "grid.json"


def jobs_file(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / META / "jobs.jsonl"


def read_grid(sweep_dir: Path) -> dict[str, Any]:
    path = grid_file(sweep_dir)
    if not path.exists():
        return {"launches": [], "runs": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {"launches": [], "runs": {}}


def record_launch(sweep_dir: Path, runs: Iterable[tuple[str, Sequence[str]]], task_overrides: Sequence[str],
                  hydra_overrides: Sequence[str], id_records: Optional[Mapping[str, Mapping[str, Any]]] = None,
                  run_dirs: Optional[Mapping[str, Path]] = None) -> int:
    """Add a launch and its grid points to grid.json; returns the launch's index.

    ``task_overrides``/``hydra_overrides``: as typed (interpolations unresolved), so that a relaunch
    is the same grid. ``id_records``: run id -> the overrides behind it (RunIdParts.record), shown by
    ``sweep.status --ids``. ``run_dirs``: run id -> its folder, recorded ("dir") when it is not
    ``SWEEP_DIR/<run id>`` (e.g. ``hydra.sweep.subdir=${hydra.job.num}``).
    """
    grid = read_grid(sweep_dir)
    launch = {
        "task_overrides": list(task_overrides),
        "hydra_overrides": [o for o in hydra_overrides if not o.startswith(_RELAUNCH_DROP)],
        "cwd": os.getcwd(),
        # Credentials (a SPECSWEEP_*_TOKEN) stay in the environment, never in the sweep directory;
        # a test's hold point is not part of the grid.
        "env": {k: v for k, v in os.environ.items()
                if k.startswith("SPECSWEEP_") and not is_secret_name(k) and k not in _NOT_RECORDED},
    }
    same = [i for i, old in enumerate(grid["launches"])
            if {k: old.get(k) for k in launch} == launch]
    if same:
        index = same[0]
    else:
        grid["launches"].append(launch)
        index = len(grid["launches"]) - 1
    grid["launches"][index]["time"] = now_iso()
    for run_id, overrides in runs:
        grid["runs"][run_id] = {"overrides": list(overrides), "launch": index}
        if id_records and run_id in id_records:
            grid["runs"][run_id]["id"] = dict(id_records[run_id])
        folder = run_dir_name(sweep_dir, run_dirs[run_id]) if run_dirs and run_id in run_dirs else run_id
        if folder != run_id:
            grid["runs"][run_id]["dir"] = folder
    atomic_write_text(grid_file(sweep_dir), json.dumps(grid, indent=1, sort_keys=True))
    return index


def run_dir_name(sweep_dir: Path, run_dir: Path) -> str:
    """A run's folder as grid.json keeps it: relative to the sweep directory when inside it."""
    try:
        return str(Path(run_dir).resolve().relative_to(Path(sweep_dir).resolve()))
    except ValueError:
        return str(Path(run_dir).resolve())


def run_folder(sweep_dir: Path, run_id: str, grid: Mapping[str, Any]) -> Path:
    """Where a recorded run lives: its recorded folder, else ``SWEEP_DIR/<run id>``."""
    return Path(sweep_dir) / ((grid.get("runs") or {}).get(run_id, {}).get("dir") or run_id)


def record_jobs(sweep_dir: Path, rows: Iterable[tuple[Optional[str], Sequence[str], str]]) -> None:
    """Append (run id, overrides, SLURM job id) rows to jobs.jsonl."""
    path = jobs_file(sweep_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    now = now_iso()
    with open(path, "a") as f:
        for run_id, overrides, job_id in rows:
            f.write(json.dumps({"run_id": run_id, "overrides": list(overrides), "job_id": job_id,
                                "submitted": now}) + "\n")


def latest_jobs(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Newest job row per run id."""
    path = jobs_file(sweep_dir)
    out: dict[str, dict[str, Any]] = {}
    if path.exists():
        for row in iter_jsonl(path):
            if row.get("run_id"):
                out[row["run_id"]] = row
    return out


def relaunch_command(launch: dict[str, Any], sweep_dir: Path, run_ids: Sequence[str],
                     extra: Sequence[str] = ()) -> list[str]:
    """Arguments after ``specsweep-train`` that relaunch ``run_ids`` of a recorded launch.

    Raises SweepError (the argument shown redacted) if an ``extra`` argument carries a credential.
    """
    problem = refuse_secret_arguments(extra, "extra argument")
    if problem:
        raise SweepError(problem)
    only = ",".join(f"'{r}'" for r in run_ids)
    return ["-m", *launch["task_overrides"], *launch["hydra_overrides"],
            f"hydra.sweep.dir={Path(sweep_dir).resolve()}", f"hydra.sweeper.only=[{only}]", *extra]


def unrecorded_launch(sweep_dir: Path, error: OSError, to_launch: int) -> None:
    """A launch that could not be recorded (multirun.yaml, grid.json): SweepError naming the file
    when runs are to be launched; a note when there is nothing to launch (a finished grid in a
    read-only directory is skipped and the command succeeds)."""
    where = error.filename or sweep_dir
    if to_launch:
        raise SweepError(f"cannot record the launch in {where}: {error.strerror or error} "
                         f"({to_launch} runs to launch)") from error
    log.info("cannot record this launch in %s (%s); nothing to launch", where, error.strerror or error)

