"""When a telemetry event is measured, relative to the optimizer update of its step.

``telemetry.event_weights=after_update`` (the paper's labels, the default): the event labelled s
sees the weights after s updates. With the training tokens it is the forward of step s+1 (batch
s+1 in our 1-based steps, train mode, all its micro-batches); the last event (s = N) is a no-grad
eval-mode pass over the batch after training; no event sees the untrained model.
``before_update``: the event labelled s is step s's own forward, before its update (s-1 updates;
the step-1 event measures the untrained model). With ``telemetry.tokens=probe`` every event is a
pass over the held-out batches after step s's update, in either setting.
"""

from __future__ import annotations

from typing import Optional

from specsweep.metrics.schedule import is_event
from specsweep.sweep.grid.spec import TelemetrySpec


def event_lag(spec: TelemetrySpec) -> int:
    """Steps between an event's label and the step whose forward measures it (1 or 0). A checkpoint
    at step c < N holds the events up to c - lag: the one labelled c is measured after it."""
    return int(spec.enabled and spec.tokens == "train" and spec.event_weights == "after_update")


def train_event(spec: TelemetrySpec, total_steps: int, step: int) -> Optional[int]:
    """The event that step ``step``'s training forward measures, or None."""
    if not spec.enabled or spec.tokens != "train":
        return None
    lag = event_lag(spec)
    event = step - lag
    if event < 1 or (lag and event >= total_steps) or not is_event(event, total_steps, spec.every):
        return None
    return event


def after_step_event(spec: TelemetrySpec, total_steps: int, step: int) -> bool:
    """Whether an event labelled ``step`` is measured right after step ``step``'s update by an extra
    no-grad eval-mode pass: every event with tokens=probe; the last one under after_update."""
    if not spec.enabled or not is_event(step, total_steps, spec.every):
        return False
    return spec.tokens == "probe" or bool(event_lag(spec) and step == total_steps)


def updates_at(spec: TelemetrySpec, step: int) -> int:
    """Optimizer updates behind the weights the event labelled ``step`` measured (0: untrained)."""
    return step - int(spec.tokens == "train" and spec.event_weights == "before_update")
