"""What the earlier attempts of a W&B run hold, read from their run files in the run directory.

W&B writes a run's ``.wandb`` file in blocks, about every 15 s (``x_transaction_log_flush_interval``)
or when a 32 KiB block fills: a process killed before that leaves the last seconds of its rows
unwritten, possibly all of them. A resumed run asks :func:`logged_up_to` which step the earlier
attempts got to and logs the rest again from the local files (``replay_after_resume``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

LEET_TIMEOUT_S = 120  # reading a long run's file on a slow file system; past it: replay everything


def _last_step(folder: Path) -> Optional[int]:
    """The last ``trainer/step`` in one W&B run folder's file (None: none, or unreadable)."""
    exe = shutil.which("wandb", path=os.path.dirname(sys.executable)) or shutil.which("wandb")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "leet", "inspect", "--json", "--summary", str(folder)], capture_output=True,
                              text=True, timeout=LEET_TIMEOUT_S, stdin=subprocess.DEVNULL)
        step = (json.loads(proc.stdout).get("summary") or {}).get("trainer/step") if proc.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, AttributeError):
        return None
    return int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None


def logged_up_to(run_dir: Path, wandb_id: str, current: Optional[Path] = None) -> Optional[int]:
    """The last step that any earlier attempt of W&B run ``wandb_id`` wrote to its file (its rows
    up to the step before it are all there); None when none wrote a step. ``current``: the folder
    of the attempt that asks, left out."""
    steps = [_last_step(folder) for folder in sorted(Path(run_dir, "wandb").glob(f"*run-*-{wandb_id}"))
             if folder.is_dir() and (current is None or folder.resolve() != current.resolve())]
    return max((s for s in steps if s is not None), default=None)
