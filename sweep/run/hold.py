"""Hold a run at a step boundary until released: deterministic fault injection, whatever the speed.

    SPECSWEEP_HOLD="25:/tmp/gate"          hold after step 25
    SPECSWEEP_HOLD="10,40:/tmp/gate"       hold after step 10 and after step 40

After the named step is complete (logged, evaluated, checkpointed when due), every rank of the run
writes ``<dir>/held_<step>_rank<r>`` (its pid inside) and waits until ``<dir>/release_<step>`` or
``<dir>/release`` exists, or until a stop signal arrives (then the loop handles the signal as
usual). Tests use it to send a signal, kill a process or requeue a job while the run is known to
be at a given step, instead of hoping that training is still going; a person can use it to look at
a run directory at a chosen step. Unset (the default), it costs one dictionary lookup per run.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Mapping, Optional

log = logging.getLogger("specsweep.hold")

ENV = "SPECSWEEP_HOLD"
POLL_S = 0.05


class Hold:
    """Parsed ``SPECSWEEP_HOLD``: the steps to hold after and the folder of marker files."""

    def __init__(self, steps: set[int], folder: Path, rank: int = 0) -> None:
        self.steps, self.folder, self.rank = steps, folder, rank

    @classmethod
    def from_env(cls, rank: int = 0, environ: Optional[Mapping[str, str]] = None) -> Optional["Hold"]:
        value = (os.environ if environ is None else environ).get(ENV, "").strip()
        if not value:
            return None
        steps, sep, folder = value.partition(":")
        try:
            parsed = {int(s) for s in steps.split(",") if s.strip()}
        except ValueError:
            parsed = set()
        if not sep or not folder or not parsed:
            raise ValueError(f"{ENV}={value!r}: expected STEP[,STEP...]:FOLDER")
        return cls(parsed, Path(folder), rank)

    def marker(self, step: int) -> Path:
        return self.folder / f"held_{step}_rank{self.rank}"

    def released(self, step: int) -> bool:
        return (self.folder / f"release_{step}").exists() or (self.folder / "release").exists()

    def at(self, step: int, stop_requested: Callable[[], bool]) -> None:
        """Block after ``step`` if it is a hold step, until released or a stop is requested."""
        if step not in self.steps or self.released(step):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.marker(step).write_text(str(os.getpid()))
        log.info("held after step %d (%s); waiting for %s", step, ENV, self.folder / f"release_{step}")
        while not self.released(step) and not stop_requested():
            time.sleep(POLL_S)
