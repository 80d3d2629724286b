"""Which events carry spectra: the aggregation window always, every k-th event before it."""

import pytest

from specsweep.metrics import SpectrumCadence, aggregation_window, event_steps, is_event, keep_up_every, spectrum_steps
from specsweep.metrics.schedule import checkpoint_steps


def test_event_steps_and_window_at_paper_scale():
    events = event_steps(6000, 200)
    assert events[:3] == [1, 200, 400] and events[-1] == 6000 and len(events) == 31
    assert aggregation_window(6000, 200) == [5200, 5400, 5600, 5800, 6000]
    assert all(is_event(s, 6000, 200) for s in events)
    assert sum(is_event(s, 6000, 200) for s in range(0, 6002)) == len(events)
    # the last step is an event even off the cadence, and it ends the window
    assert event_steps(1050, 200)[-2:] == [1000, 1050]
    assert aggregation_window(1050, 200) == [400, 600, 800, 1000, 1050]
    # fewer events than the window: all of them
    assert aggregation_window(10, 5) == [1, 5, 10] == spectrum_steps(10, 5, spectrum_every=7)


def test_checkpoint_steps_are_the_multiples_and_the_last_step():
    """As the trainer saves: ``step % ckpt_every == 0 or last``."""
    assert checkpoint_steps(6000, 1000) == [1000, 2000, 3000, 4000, 5000, 6000]
    assert checkpoint_steps(10, 4) == [4, 8, 10]
    assert checkpoint_steps(3, 100) == [3]
    assert checkpoint_steps(10, 4) == [s for s in range(1, 11) if s % 4 == 0 or s == 10]
    with pytest.raises(ValueError):
        checkpoint_steps(10, 0)


def test_spectrum_steps_window_exact_and_every_kth_before():
    assert spectrum_steps(6000, 200, spectrum_every=1) == event_steps(6000, 200)
    steps = spectrum_steps(6000, 200, spectrum_every=5)
    # events 0, 5, 10, ... (steps 1, 1000, 2000, ...) and the whole window
    assert steps == [1, 1000, 2000, 3000, 4000, 5000, 5200, 5400, 5600, 5800, 6000]
    with pytest.raises(ValueError):
        spectrum_steps(6000, 200, spectrum_every=0)
    with pytest.raises(ValueError):
        event_steps(0, 200)


def test_keep_up_every():
    # 96 CPU decompositions of ~7 min against ~280 s between events: every 2nd event
    assert keep_up_every(420.0, 280.0) == 2
    assert keep_up_every(560.0, 280.0) == 2  # an exact fit keeps up
    assert keep_up_every(561.0, 280.0) == 3
    assert keep_up_every(10.0, 280.0) == 1 and keep_up_every(0.0, 280.0) == 1
    # on the training device, with 3 % of wall time allowed: 29 s / (0.03 · 280 s) -> 4
    assert keep_up_every(29.0, 280.0, budget=0.03) == 4
    with pytest.raises(ValueError):
        keep_up_every(1.0, 0.0)


def test_fixed_cadence_decides_as_the_pure_function():
    cadence = SpectrumCadence(6000, 200, spectrum_every=5)
    assert [s for s in event_steps(6000, 200) if cadence.decide(s)] == spectrum_steps(6000, 200, 5)
    # a fixed cadence is a pure function of the step: a resumed run decides the same
    fresh = SpectrumCadence(6000, 200, spectrum_every=5)
    assert fresh.decide(3000) and not fresh.decide(3200) and fresh.decide(5200)
    assert fresh.observe(1e6, 1.0) == 5  # observe does not move a fixed k
    with pytest.raises(ValueError, match="not a telemetry event"):
        fresh.decide(201)


def test_adaptive_cadence_keeps_up_and_keeps_the_window():
    cadence = SpectrumCadence(6000, 200, spectrum_every=None)
    events = event_steps(6000, 200)
    decided = {}
    for step in events:
        decided[step] = cadence.decide(step)
        if decided[step]:
            cadence.observe(decompose_s=420.0, interval_s=280.0)  # -> every 2nd event
    assert cadence.spectrum_every == 2
    before = [s for s in events if s < 5200]
    assert [s for s in before if decided[s]] == before[::2]
    assert all(decided[s] for s in aggregation_window(6000, 200))
    # the adaptive state survives a resume
    state = SpectrumCadence(6000, 200, None)
    for step in events[:4]:
        state.decide(step)
        state.observe(420.0, 280.0)
    resumed = SpectrumCadence(6000, 200, None)
    resumed.load_state_dict(state.state_dict())
    assert [resumed.decide(s) for s in events[4:10]] == [state.decide(s) for s in events[4:10]]


@pytest.mark.parametrize("adaptive", [False, True])
def test_upcoming_spectra_are_what_decide_will_say(adaptive):
    """upcoming() plans without deciding: the next spectrum events are those decide() then picks."""
    cadence = SpectrumCadence(6000, 200, spectrum_every=None if adaptive else 5)
    if adaptive:
        cadence.spectrum_every = 5
    events = event_steps(6000, 200)
    for step in events:
        if cadence.decide(step):
            planned = cadence.upcoming(step, 2)
            later = [s for s in events if s > step]
            probe = SpectrumCadence(6000, 200, spectrum_every=None if adaptive else 5)
            probe.load_state_dict(cadence.state_dict())
            assert planned == [s for s in later if probe.decide(s)][:2], step
    assert SpectrumCadence(6000, 200, 5).upcoming(4000, 3) == [5000, 5200, 5400]
    assert SpectrumCadence(6000, 200, 5).upcoming(6000) == []
