"""Which steps are telemetry events, which events carry full spectra, and which steps checkpoint.

Every event gets hard ranks (trace formula, milliseconds); only some get eigendecompositions:
every event of the fit's aggregation window (the last `last_k` events, the final step included;
known in advance from the step count and cadence) and every `spectrum_every`-th event before it.
The cadence may also be chosen by the run itself (`keep_up_every`, `SpectrumCadence.observe`)
so that decomposition keeps up; the window is always exact.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping

AGGREGATION_EVENTS = 5  # the paper's rule: median of the last 5 logged events (paper-notes §2)


def _check(total_steps: int, every: int) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be ≥ 1, got {total_steps}")
    if every < 1:
        raise ValueError(f"every must be ≥ 1, got {every}")


def event_steps(total_steps: int, every: int) -> list[int]:
    """Event steps in order: step 1, every multiple of `every`, and the last step."""
    _check(total_steps, every)
    return sorted({1, total_steps, *range(every, total_steps + 1, every)})


def checkpoint_steps(total_steps: int, ckpt_every: int) -> list[int]:
    """Steps at which a run writes a checkpoint, in order: every multiple of `ckpt_every` and the
    last step (the trainer saves at ``step % ckpt_every == 0 or last``)."""
    _check(total_steps, ckpt_every)
    return sorted({total_steps, *range(ckpt_every, total_steps + 1, ckpt_every)})


def is_event(step: int, total_steps: int, every: int) -> bool:
    """True on the steps of `event_steps` (constant time)."""
    return step == 1 or step == total_steps or (1 <= step <= total_steps and step % every == 0)


def aggregation_window(total_steps: int, every: int, last_k: int = AGGREGATION_EVENTS) -> list[int]:
    """The last `last_k` event steps (the final step included): 6000 steps, every 200 -> 5200..6000."""
    if last_k < 1:
        raise ValueError(f"last_k must be ≥ 1, got {last_k}")
    return event_steps(total_steps, every)[-last_k:]


def spectrum_steps(
    total_steps: int, every: int, spectrum_every: int = 1, last_k: int = AGGREGATION_EVENTS
) -> list[int]:
    """Event steps that carry full spectra: the aggregation window, and before it every
    `spectrum_every`-th event counted from the first (1 = every event)."""
    if spectrum_every < 1:
        raise ValueError(f"spectrum_every must be ≥ 1, got {spectrum_every}")
    events = event_steps(total_steps, every)
    window = set(aggregation_window(total_steps, every, last_k))
    return [s for i, s in enumerate(events) if s in window or i % spectrum_every == 0]


def keep_up_every(decompose_s: float, interval_s: float, budget: float = 1.0) -> int:
    """Smallest k ≥ 1 with decompose_s ≤ budget · k · interval_s.

    One decomposition every k events keeps up when it fits in the time k events take.
    budget: the share of that time decomposition may use; 1.0 for a CPU pool (it only has to keep
    up), the allowed share of wall time when it runs on the training device (its time is
    added to the steps).
    """
    if not interval_s > 0 or not budget > 0:
        raise ValueError(f"interval_s and budget must be > 0, got {interval_s}, {budget}")
    if not decompose_s > 0:
        return 1
    # the 1e-9 keeps an exact fit (d = b·k·t) at k instead of k + 1 despite round-off
    return max(1, math.ceil(decompose_s / (budget * interval_s) * (1 - 1e-9)))


class SpectrumCadence:
    """Decides, event by event, whether an event carries a full spectrum.

    spectrum_every: a fixed k (then `decide` equals membership in `spectrum_steps`, a pure
    function of the step, so a resumed run decides the same), or None for an adaptive k: start at
    `start_every` and re-choose it with `observe` after each measured event. Adaptive state
    (k, last spectrum step) survives a resume through `state_dict` / `load_state_dict`.
    Under DDP every rank must decide the same: feed `observe` values agreed across ranks
    (EventCost from EventPipeline is).
    """

    def __init__(
        self,
        total_steps: int,
        every: int,
        spectrum_every: int | None = 1,
        *,
        last_k: int = AGGREGATION_EVENTS,
        budget: float = 1.0,
        start_every: int = 1,
    ) -> None:
        self.events = event_steps(total_steps, every)
        self.window = aggregation_window(total_steps, every, last_k)
        self.total_steps, self.every = total_steps, every
        self.adaptive = spectrum_every is None
        k = start_every if spectrum_every is None else spectrum_every
        if k < 1:
            raise ValueError(f"spectrum_every must be ≥ 1 or None (adaptive), got {k}")
        if not budget > 0:
            raise ValueError(f"budget must be > 0, got {budget}")
        self.spectrum_every = k
        self.budget = budget
        self.last_spectrum_step: int | None = None

    def is_event(self, step: int) -> bool:
        return is_event(step, self.total_steps, self.every)

    def _index(self, step: int) -> int:
        i = bisect.bisect_left(self.events, step)
        if i == len(self.events) or self.events[i] != step:
            raise ValueError(f"step {step} is not a telemetry event (every {self.every}, {self.total_steps} steps)")
        return i

    def decide(self, step: int) -> bool:
        """Whether the event at `step` carries a spectrum; call once per event, in step order."""
        i = self._index(step)
        if step >= self.window[0]:
            carries = True
        elif not self.adaptive:
            carries = i % self.spectrum_every == 0
        elif self.last_spectrum_step is None:
            carries = True  # first event (or first after a resume without state)
        else:
            carries = i - self._index(self.last_spectrum_step) >= self.spectrum_every
        if carries:
            self.last_spectrum_step = step
        return carries

    def upcoming(self, step: int, n: int = 1) -> list[int]:
        """The next `n` (or fewer) spectrum events after `step` as the current k decides them, `step`
        taken to carry one; changes nothing (for planning where the next spectrum goes)."""
        i = self._index(step)
        out: list[int] = []
        last = i
        for j in range(i + 1, len(self.events)):
            if len(out) == n:
                break
            s = self.events[j]
            every_kth = (j - last >= self.spectrum_every) if self.adaptive else (j % self.spectrum_every == 0)
            if s >= self.window[0] or every_kth:
                out.append(s)
                last = j
        return out

    def observe(self, decompose_s: float, interval_s: float) -> int:
        """Adaptive mode: re-choose k from one spectrum event's decomposition seconds and the
        seconds between events (`keep_up_every`); returns k. A no-op for a fixed k."""
        if self.adaptive and interval_s > 0:
            self.spectrum_every = keep_up_every(decompose_s, interval_s, self.budget)
        return self.spectrum_every

    def state_dict(self) -> dict:
        return {"spectrum_every": self.spectrum_every, "last_spectrum_step": self.last_spectrum_step}

    def load_state_dict(self, state: Mapping) -> None:
        if self.adaptive:
            self.spectrum_every = int(state["spectrum_every"])
        last = state.get("last_spectrum_step")
        self.last_spectrum_step = int(last) if last is not None else None
