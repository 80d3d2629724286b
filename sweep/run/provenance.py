"""Where a run comes from: the SLURM job that ran it and the git commit of the code it ran.

Goes into each run's W&B config under ``provenance`` (``provenance.slurm_job_id``,
``provenance.git_commit``, ...), so a W&B run can be traced to its job and its code. Never fails:
what cannot be found is left out (SLURM) or None (git).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping, Optional

# SLURM variable -> provenance key, recorded when set.
SLURM_VARS = {"SLURM_JOB_ID": "slurm_job_id", "SLURM_ARRAY_JOB_ID": "slurm_array_job_id",
              "SLURM_ARRAY_TASK_ID": "slurm_array_task_id", "SLURM_JOB_NODELIST": "slurm_job_nodelist"}
GIT_TIMEOUT_S = 10  # a git call on a slow network file system; past it the commit is just unknown
# The checkout the running code is imported from (the folder holding sweep/).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def _git(root: Path, *args: str) -> Optional[str]:
    exe = shutil.which("git")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "-C", str(root), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(root: Path = PACKAGE_ROOT) -> dict[str, Any]:
    """``git_commit`` and ``git_dirty`` (tracked files changed) of the checkout at ``root``; both
    None when ``root`` is not the top of a git checkout (an installed package inside some other
    repository's ignored folder does not count as that repository's code)."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != Path(root).resolve():
        return {"git_commit": None, "git_dirty": None}
    commit = _git(root, "rev-parse", "HEAD")
    changes = _git(root, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": None if changes is None else bool(changes)}


def run_provenance(environ: Optional[Mapping[str, str]] = None, root: Path = PACKAGE_ROOT) -> dict[str, Any]:
    """The SLURM job id, array job id and index, node list (those set) and the git state."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {key: environ[var] for var, key in SLURM_VARS.items() if environ.get(var)}
    out.update(git_state(root))
    return out
