"""What telemetry cost: one metrics.jsonl row per event and the whole run's totals.

The rows are ``step`` and ``telemetry_<field>`` of ``metrics.EventCost``; the totals are kept in
checkpoints so that a resumed run adds up (sweep/run/telemetry.py fills both).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import deque
from typing import Any

from specsweep.metrics import EventCost

COST_PREFIX = "telemetry_"
"""Prefix of the cost keys in metrics.jsonl; W&B shows ``telemetry_wait_s`` as ``telemetry/wait_s``."""


def cost_row(cost: EventCost, on: str) -> dict:
    """The metrics.jsonl row of one event's cost: ``step`` and ``telemetry_<field>`` for every
    EventCost field (critical_s, decompose_s, wait_s, host_mib, device_mib, spectrum, matrices,
    ...), plus ``telemetry_on``: where its spectra were decomposed (cpu | gpu; none without)."""
    row: dict[str, Any] = {"step": cost.step}
    row.update({COST_PREFIX + k: v for k, v in cost.as_dict().items() if k != "step"})
    row[COST_PREFIX + "on"] = on if cost.spectrum else "none"
    return row


@dataclasses.dataclass
class TelemetryTotals:
    """What telemetry cost over the whole run (kept in checkpoints, so a resumed run adds up)."""

    events: int = 0
    spectrum_events: int = 0
    critical_s: float = 0.0  # added to the steps by the events themselves
    wait_s: float = 0.0  # the loop waiting for decompositions (next event due, checkpoint, end)
    decompose_s: float = 0.0  # asynchronous decomposition (off the critical path)
    peak_host_mib: float = 0.0
    peak_device_mib: float = 0.0

    def add(self, cost: EventCost) -> None:
        self.events += 1
        self.spectrum_events += bool(cost.spectrum)
        self.critical_s += cost.critical_s
        self.wait_s += cost.wait_s
        self.decompose_s += cost.decompose_s
        self.peak_host_mib = max(self.peak_host_mib, cost.host_mib)
        self.peak_device_mib = max(self.peak_device_mib, cost.device_mib)


class EagerSteps:
    """train.compile=true runs telemetry steps on the eager module (the hooks need it): the recent
    compiled steps' median, and each telemetry step's excess over it, which minus the event's
    capture is its ``eager_s`` (counted in critical_s)."""

    def __init__(self) -> None:
        self.compiled: deque[float] = deque(maxlen=32)
        self.excess: dict[int, float] = {}  # telemetry step -> seconds beyond a compiled step

    def note(self, step: int, seconds: float, event: bool) -> None:
        if not event:
            self.compiled.append(seconds)
        elif self.compiled:
            self.excess[step] = seconds - statistics.median(self.compiled)

    def note_extra(self, step: int, seconds: float) -> None:
        """A forward only telemetry needs: all its seconds are beyond what training would spend."""
        self.excess[step] = seconds

    def settle(self, cost: EventCost) -> None:
        extra = self.excess.pop(cost.step, None)
        if extra is not None:
            cost.eager_s = max(0.0, extra - (cost.capture_s or 0.0))
