"""Stop at a step boundary on SIGTERM, SIGINT or SLURM's preemption signal; requeue under submitit.

All three mean "stop at the next step boundary": the signal only sets a flag; the training loop
looks at it after every step, drains telemetry, writes a checkpoint and the run status, and exits.
A second SIGINT while a stop is pending aborts at once (KeyboardInterrupt, the usual Ctrl-C twice).

Under submitit: submitit handles its preemption signal (USR2 unless ``SUBMITIT_PREEMPT_SIGNAL``
says otherwise) by requeueing the job and exiting at once, which would lose whatever was trained
since the last periodic checkpoint; its SIGTERM handler only logs ("bypass"). :class:`StopRequest`
puts its own handlers in front of both. A preemption sends SIGTERM and then USR2; ``scancel`` sends
SIGTERM alone and SIGKILL after SLURM's KillWait (30 s by default). So after the checkpoint of a
SIGTERM stop the run waits a few seconds (:data:`REQUEUE_WAIT_S`) for the USR2 that a preemption
sends next: if it comes, submitit's handler requeues the job (status ``requeued``); else the run is
``interrupted``. Outside submitit the process exits with code 128 + the first signal's number and
the run is ``interrupted``; relaunching the same command resumes it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any, Optional

log = logging.getLogger("specsweep.preempt")

# How long a run stopped by SIGTERM under submitit waits, after its checkpoint, for the preemption
# signal that may follow. Well below SLURM's KillWait (30 s), which also has to cover the last step,
# the telemetry drain and the checkpoint.
REQUEUE_WAIT_S = 5.0


def preempt_signal() -> signal.Signals:
    """The signal submitit uses for preemption and time limits (USR2 by default)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
    return getattr(signal, name if name.startswith("SIG") else f"SIG{name}")


class StopRequest:
    """Flags set by the stop signals, and the handlers they displaced (use as a context manager)."""

    def __init__(self, signum: Optional[int] = None, requeue_wait_s: float = REQUEUE_WAIT_S) -> None:
        self.signum = signal.Signals(signum) if signum is not None else preempt_signal()
        self.signals = list(dict.fromkeys([self.signum, signal.SIGTERM, signal.SIGINT]))
        self.requeue_wait_s = requeue_wait_s
        self.received: Optional[int] = None  # the first stop signal
        self.preempted = False               # the preemption signal itself came
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        # Python delivers signals to the main thread only; elsewhere the flag stays down.
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.getsignal(s)
                signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

    def uninstall(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # Ctrl-C twice: abort now, the newest checkpoint on disk stays
        if self.received is None:
            self.received = signum  # nothing else here: the loop logs and acts at its next step boundary
        if signum == self.signum:
            self.preempted = True

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def requeues(self) -> bool:
        """Whether a displaced preemption handler (submitit's) can requeue the job."""
        return callable(self._previous.get(self.signum))

    def will_requeue(self) -> bool:
        """After the checkpoint: whether the job is handed to submitit for a requeue.

        A SIGTERM under submitit may be the first half of a preemption: wait (boundedly) for the
        preemption signal before deciding.
        """
        if not self.requeues:
            return False
        deadline = time.monotonic() + self.requeue_wait_s
        if not self.preempted:
            log.info("got %s under submitit: waiting up to %.0f s for %s (a preemption sends both)",
                     signal.Signals(self.received or signal.SIGTERM).name, self.requeue_wait_s, self.signum.name)
        while not self.preempted and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.preempted

    def hand_over(self) -> None:
        """After the checkpoint: run the displaced preemption handler (submitit requeues and exits),
        else exit with 128 + the first signal's number.

        Never returns normally: a handler that returns (submitit on ranks > 0) is followed by exit.
        """
        signum = self.received if self.received is not None else int(self.signum)
        previous = self._previous.get(self.signum)
        self.uninstall()
        if self.preempted and callable(previous):
            log.info("handing over to %s", getattr(previous, "__qualname__", previous))
            previous(int(self.signum), None)
        raise SystemExit(128 + int(signum))
