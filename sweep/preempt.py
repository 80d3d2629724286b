"""Stop at a step boundary on SLURM's preemption / time-limit signal, then requeue.

submitit installs a handler for its preemption signal (USR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` says
otherwise) that requeues the job and exits at once: whatever was trained since the last periodic
checkpoint would be lost. :class:`StopRequest` puts its own handler in front of it. The signal only
sets a flag; the training loop looks at the flag at every step boundary, drains telemetry, writes a
checkpoint and the run status, and only then calls the handler it replaced (submitit's: requeue and
exit). Without a replaced handler (a plain ``kill -USR2`` outside SLURM) the process exits with
code 128 + signal number and the run is marked "interrupted"; relaunching it resumes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any, Optional

log = logging.getLogger("specsweep.preempt")


def preempt_signal() -> signal.Signals:
    """The signal submitit uses for preemption and time limits (USR2 by default)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
    return getattr(signal, name if name.startswith("SIG") else f"SIG{name}")


class StopRequest:
    """A flag set by the preemption signal, and the handler it displaced (use as a context manager)."""

    def __init__(self, signum: Optional[int] = None) -> None:
        self.signum = signal.Signals(signum) if signum is not None else preempt_signal()
        self.received: Optional[int] = None
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> "StopRequest":
        # Python delivers signals to the main thread only; elsewhere the flag stays down.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(self.signum)
            signal.signal(self.signum, self._on_signal)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self.received = signum  # nothing else here: the loop logs and acts at its next step boundary

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def requeues(self) -> bool:
        """Whether a displaced handler (submitit's) takes over after our checkpoint."""
        return callable(self._previous)

    def hand_over(self) -> None:
        """After the checkpoint: run the displaced handler (submitit requeues and exits), else exit.

        Never returns normally: a handler that returns (submitit on ranks > 0) is followed by exit.
        """
        signum = self.received if self.received is not None else int(self.signum)
        previous = self._previous
        self.uninstall()
        if callable(previous):
            log.info("handing over to %s", getattr(previous, "__qualname__", previous))
            previous(signum, None)
        raise SystemExit(128 + int(signum))
