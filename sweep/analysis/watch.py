"""``sweep.fit --watch``: refit while a sweep runs, until every run of its grid has ended.

Each refit is a complete live analysis (sweep/analysis/pipeline.py with ``live=True``): runs cut
at their latest common telemetry step, labelled "as of step S, N of M runs", published by one
swap of the analysis folder, and optionally pushed to one W&B analysis run. Between refits the
loop sleeps ``every`` seconds; Ctrl-C stops it, leaving the last complete analysis in place.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from typing import Callable, Optional

from specsweep.sweep.analysis.live import NothingToFit
from specsweep.sweep.analysis.result import FitResult


def _now() -> str:
    return _dt.datetime.now().strftime("%H:%M:%S")


def watch(refit: Callable[[], FitResult], *, every: float, once: bool = False,
          show: Callable[[FitResult], None], push: Optional[Callable[[FitResult], None]] = None,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Refit, show, push, sleep; returns the exit status (0: stopped by itself, on Ctrl-C or
    after one refit with ``once``; 2: every run ended and none could be fitted)."""
    try:
        while True:
            try:
                result = refit()
            except NothingToFit as err:
                print(f"[{_now()}] nothing to fit yet: {err}", file=sys.stderr)
                if err.all_ended:
                    print("every run of the grid has ended and none can be fitted; stopping", file=sys.stderr)
                    return 2
            else:
                show(result)
                if push is not None:
                    push(result)
                if result.status.get("final"):
                    print(f"[{_now()}] every run of the grid has ended: this analysis is final; stopping",
                          file=sys.stderr)
                    return 0
            if once:
                return 0
            print(f"[{_now()}] next refit in {every:g} s (Ctrl-C stops; the analysis folder keeps the "
                  "last complete refit)", file=sys.stderr)
            sleep(every)
    except KeyboardInterrupt:
        print(f"\n[{_now()}] stopped by Ctrl-C; the analysis folder holds the last complete refit",
              file=sys.stderr)
        return 0
