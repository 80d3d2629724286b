"""The analysis folder, replaced whole: a fit writes into a staging folder beside it and then
swaps the two, so that a reader (a person, a notebook, ``--watch``'s next refit) sees the previous
analysis or the new one, never a half-written one.

On Linux the swap is one ``renameat2(RENAME_EXCHANGE)`` call (the path always holds a complete
analysis); elsewhere it is two renames (for an instant the path is absent, never partial). What
the analysis does not write itself but keeps in its folder (W&B run folders, run directories
rebuilt from W&B, the workspace spec) is carried over into the new folder before the swap.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from specsweep.sweep import liveness
from specsweep.sweep.analysis.defaults import SNIPPET_FILE, SPEC_FILE
from specsweep.sweep.errors import SweepError
from specsweep.sweep.rundir import atomic_write_text, json_safe, now_iso

STATUS_FILE = "status.json"
REPORT_FILE = "report.md"
WANDB_DIR = "wandb"
RUNS_DIR = "runs"  # the run directories that --from-wandb rebuilds (sweep/analysis/wandb_io.py)
# Entries of an analysis folder that a refit does not rewrite and must not lose.
CARRIED = (WANDB_DIR, RUNS_DIR, SPEC_FILE, SNIPPET_FILE)
_STAGING = ".{name}.staging-{pid}"
_OLD = ".{name}.old-{pid}"
_OWNER = ".owner.json"  # in a staging folder: the fit that writes it (sweep.liveness.this_process)


def check_replaceable(out: Path) -> None:
    """Refuse (SweepError) to replace a folder that is not an analysis folder: an existing,
    non-empty folder without status.json or report.md (e.g. ``--out .``)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SweepError(f"--out {out} is a file, not a folder")
    analysis = (out / STATUS_FILE).is_file() or (out / REPORT_FILE).is_file()
    # entries that a refit carries over (runs rebuilt by --from-wandb into a new --out) lose nothing
    if any(p.name not in CARRIED for p in out.iterdir()) and not analysis:
        raise SweepError(f"{out} holds files but no {STATUS_FILE} or {REPORT_FILE}, so it is not an "
                         "analysis folder; the analysis replaces its folder whole, so choose another --out")


def staging_dir(out: Path) -> Path:
    """A fresh, empty folder beside ``out`` to write the next analysis into."""
    remove_dead_staging(out)
    staging = out.parent / _STAGING.format(name=out.name, pid=os.getpid())
    if staging.exists():
        shutil.rmtree(staging)  # left over by a killed fit of this process id
    staging.mkdir(parents=True)
    (staging / _OWNER).write_text(json.dumps(liveness.this_process()))
    return staging


def _owner_gone(folder: Path, pid: str) -> bool:
    """Whether the fit that made a staging (or old) folder has ended: its owner record says so
    (same host only), or, for a folder without one, no process of that pid lives on this host."""
    try:
        info = json.loads((folder / _OWNER).read_text())
    except (OSError, ValueError):
        info = {"pid": int(pid), "host_key": liveness.host_key()} if pid.isdigit() else {}
    return bool(info) and info.get("pid") != os.getpid() and liveness.process_gone(info) is True


def remove_dead_staging(out: Path) -> list[Path]:
    """Remove the staging and old folders beside ``out`` left by killed fits (never those of a
    fit still running, nor those of another host, which cannot be checked from here)."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for pattern in (_STAGING, _OLD):
        prefix = pattern.format(name=out.name, pid="")
        for folder in out.parent.glob(f"{glob.escape(prefix)}*"):
            pid = folder.name[len(prefix):]
            if folder.is_dir() and pid.isdigit() and _owner_gone(folder, pid):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish(staging: Path, out: Path) -> None:
    """Make ``staging`` the analysis folder ``out``: carry over CARRIED entries, swap, drop the old."""
    (staging / _OWNER).unlink(missing_ok=True)  # its pid keeps it from removal (remove_dead_staging)
    if out.exists():
        for name in CARRIED:
            if (out / name).exists() and not (staging / name).exists():
                os.replace(out / name, staging / name)
        if _exchange(staging, out):
            shutil.rmtree(staging, ignore_errors=True)  # now the old analysis
            return
        old = out.parent / _OLD.format(name=out.name, pid=os.getpid())
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


def discard(staging: Path) -> None:
    """Remove a staging folder after a failed fit (the published analysis is untouched)."""
    shutil.rmtree(staging, ignore_errors=True)


def write_status(folder: Path, status: Mapping[str, Any]) -> Path:
    """status.json: what the analysis is of (label, step, runs used of all), with a timestamp."""
    data = {**status, "updated": now_iso()}
    path = folder / STATUS_FILE
    atomic_write_text(path, json.dumps(json_safe(data), indent=1, sort_keys=True))
    return path
