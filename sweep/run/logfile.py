"""The run's ``train.log`` handler (conf/hydra/job_logging/specsweep.yaml): opened lazily, never fatal.

Hydra configures job logging before the task runs. With logging's own FileHandler, a run directory
that cannot be written (read-only, disk full) fails inside Hydra with "Unable to configure handler
'file'" before specsweep can say anything, and a finished read-only run could not even be skipped.
This handler opens the file at the first record (a launch refused before it logs leaves no file)
and, if the file cannot be opened or written, says so once on stderr and goes on without it: the
console still gets every record, and the run reports the real problem itself.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional


class RunLogFile(logging.FileHandler):
    """Append to ``filename``, opened at the first record; an OSError disables it with one warning."""

    def __init__(self, filename: str, mode: str = "a", encoding: Optional[str] = "utf-8") -> None:
        super().__init__(filename, mode=mode, encoding=encoding, delay=True)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        if self.stream is None:
            try:
                self.stream = self._open()
            except OSError as e:
                self._give_up(e)
                return
        logging.StreamHandler.emit(self, record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # e.g. disk full: stop writing the file, say it once
            self._give_up(error)
        else:
            super().handleError(record)

    def _give_up(self, error: OSError) -> None:
        self.failed = True
        sys.stderr.write(f"warning: cannot write the log file {self.baseFilename} "
                         f"({error.strerror or error}); logging to the console only\n")
