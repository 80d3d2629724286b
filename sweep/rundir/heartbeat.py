"""heartbeat.json: proof of life of a running run, written by a daemon thread of its rank 0."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from specsweep.sweep import liveness
from specsweep.sweep.rundir.files import atomic_write_text, json_safe

log = logging.getLogger("specsweep.rundir")

HEARTBEAT_EVERY_S = 30.0  # period of heartbeat.json (sweep.status calls a run stale after --stale-after)


def slurm_job_id(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """This process's SLURM job as jobs.jsonl names it (``123`` or array task ``123_4``), or None."""
    e = os.environ if environ is None else environ
    if e.get("SLURM_ARRAY_JOB_ID") and e.get("SLURM_ARRAY_TASK_ID"):
        return f"{e['SLURM_ARRAY_JOB_ID']}_{e['SLURM_ARRAY_TASK_ID']}"
    return e.get("SLURM_JOB_ID") or None


def read_heartbeat(path: Path) -> dict[str, Any]:
    """The last heartbeat written to ``path`` (see Heartbeat), or {} if there is none."""
    try:
        beat = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return beat if isinstance(beat, dict) else {}


class Heartbeat:
    """The heartbeat file of a live run, rewritten every ``every_s`` seconds by a daemon thread.

    It holds the time (ISO and unix seconds), host, pid and its start time, the SLURM job, the
    number of ranks and the current step, so ``sweep.status`` can tell a live run from a dead one
    whose run.json still says running (SIGKILL, out of memory, node lost). The thread costs one small
    un-fsynced atomic write per period and never touches the training loop; ``step`` is a callable
    the thread reads. A failed write (disk full, read-only) is logged once and retried next period.
    """

    def __init__(self, path: Path, world_size: int = 1, every_s: float = HEARTBEAT_EVERY_S,
                 step: Optional[Callable[[], Any]] = None) -> None:
        self.path, self.every_s, self.step = path, float(every_s), step
        self._fixed = {**liveness.this_process(), "slurm_job": slurm_job_id(), "world_size": int(world_size),
                       "every_s": self.every_s}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._warned = False

    def beat(self) -> None:
        try:
            step = self.step() if self.step is not None else None
        except Exception:  # the step source is not ready yet
            step = None
        now = time.time()
        stamp = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(timespec="seconds")
        fields = {**self._fixed, "time": stamp, "unix": round(now, 3), "step": step}
        try:
            atomic_write_text(self.path, json.dumps(json_safe(fields), sort_keys=True), sync=False)
        except OSError as e:
            if not self._warned:
                log.warning("cannot write %s (%s); sweep.status may report the run stale", self.path, e)
                self._warned = True

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beat()

    def start(self) -> "Heartbeat":
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="specsweep-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
