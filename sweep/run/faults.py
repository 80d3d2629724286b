"""Faults of a run's files at run time, reported as one short line naming the file and the run.

A disk that fills up, a run directory that turns read-only, junk in metrics.jsonl or a corrupt
identity.json are not bugs of specsweep: the console gets what happened, to which file, of which run
(a RunFault, which Hydra prints without a traceback); the traceback goes to the run's train.log
through the ``specsweep.traceback`` logger (conf/hydra/job_logging/specsweep.yaml sends it to the file
only), and ``HYDRA_FULL_ERROR=1`` still shows it on the console. Other exceptions are left alone.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Optional

from specsweep.sweep.errors import UserError
from specsweep.sweep.rundir import JsonlError, RunDirError
from specsweep.sweep.rundir.files import os_error_in

traceback_log = logging.getLogger("specsweep.traceback")


class RunFault(UserError):
    """A run stopped by a fault of its files (disk full, read-only, unreadable or junk content)."""


def describe(error: BaseException) -> Optional[str]:
    """What went wrong with which file, in one line; None when ``error`` is not a file fault."""
    if isinstance(error, (RunDirError, JsonlError)):
        return str(error)
    os_error = os_error_in(error)
    if os_error is None:
        return None
    reason = os_error.strerror or errno.errorcode.get(os_error.errno or 0, str(os_error))
    return f"{reason}: {os_error.filename}" if os_error.filename else reason


def as_run_fault(error: BaseException, run_id: str, run_path: Path) -> Optional[RunFault]:
    """A RunFault naming the file and the run for a file fault (its traceback logged to the run's
    log), None for any other exception."""
    what = describe(error)
    if what is None:
        return None
    traceback_log.error("run %s stopped: %s", run_id, what, exc_info=error)
    log_file = Path(run_path) / "train.log"  # conf/hydra/job_logging/specsweep.yaml
    return RunFault(f"run {run_id} ({run_path}) stopped: {what}\n(traceback in {log_file}; "
                    "HYDRA_FULL_ERROR=1 shows it here)")
