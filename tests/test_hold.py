"""SPECSWEEP_HOLD stops a run at a known step until released (the tests' synchronisation point)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from specsweep.sweep.run.hold import Hold
from specsweep.sweep.rundir import RunDir, iter_jsonl
from tests.conftest import FAST, RUN_TIMEOUT_S, ROOT, ended, hold_env, release, run_id_for, wait_until_held

pytestmark = pytest.mark.slow


def test_parse() -> None:
    hold = Hold.from_env(environ={"SPECSWEEP_HOLD": "3,7:/tmp/x"}, rank=1)
    assert hold is not None and hold.steps == {3, 7} and hold.marker(3) == Path("/tmp/x/held_3_rank1")
    assert Hold.from_env(environ={}) is None
    with pytest.raises(ValueError, match="STEP"):
        Hold.from_env(environ={"SPECSWEEP_HOLD": "x:/tmp"})


def test_run_waits_at_the_step_until_released(env: dict, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    proc = subprocess.Popen([sys.executable, "-m", "specsweep.sweep.train", *FAST, "train.log_every=1"], cwd=ROOT,
                            env=hold_env(env, gate, 5), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until_held(gate, 5, ended(proc)) == proc.pid
        run = RunDir(tmp_path / "runs" / "default" / run_id_for(*FAST))
        # Held: step 5 is written and nothing after it, however long we look.
        assert max(r["step"] for r in iter_jsonl(run.metrics_file)) == 5 and proc.poll() is None
        release(gate, 5)
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert run.is_done()
