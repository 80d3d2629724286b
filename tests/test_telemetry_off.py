"""A run with telemetry=off ends without telemetry warnings (issue 21 item 10: close() read
``Telemetry.distributed``, an attribute only an enabled Telemetry had)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from specsweep.sweep.rundir import RunDir
from tests.conftest import FAST


@pytest.mark.slow
def test_telemetry_off_run_ends_without_a_telemetry_warning(env, compose, tmp_path: Path, caplog) -> None:
    from specsweep.sweep.grid.spec import build_run_spec
    from specsweep.sweep.run.trainer import train_run

    args = [*FAST, "telemetry=off", "train.steps=3", "train.eval_every=3"]
    spec = build_run_spec(compose(args), args)
    assert not spec.telemetry.enabled
    with caplog.at_level(logging.DEBUG):
        train_run(spec, tmp_path / "run")
    run = RunDir(tmp_path / "run")
    assert run.is_done()
    assert "telemetry" not in run.read_done()  # the run did run with telemetry off
    noisy = [r.getMessage() for r in caplog.records
             if r.levelno >= logging.WARNING and ("telemetry" in r.name or "distributed" in r.getMessage())]
    assert noisy == []
