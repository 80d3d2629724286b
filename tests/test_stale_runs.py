"""A run killed without a chance to say so (SIGKILL, OOM, lost node) is reported stale and resubmitted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specsweep.sweep import liveness, status
from specsweep.sweep.cluster import slurm, states
from specsweep.sweep.rundir import sweepdir
from specsweep.sweep.rundir import RunDir, iter_jsonl
from tests.conftest import FAST, ROOT, ended, run_id_for, run_train, wait_until_held


def _run_dir(root: Path, run_id: str, **status_fields) -> RunDir:
    rd = RunDir(root / run_id)
    rd.path.mkdir(parents=True)
    rd.identity_file.write_text("{}")
    rd.update_status(axes={"steps": 100}, **status_fields)
    return rd


def _dead_pid() -> int:
    """A pid that just ended (reaped): no process has it now."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- units ------------------------------------------------------------------------------------------------
def test_heartbeat_names_the_process_and_follows_the_step(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    rd = RunDir(tmp_path / "run")
    step = {"now": 5}
    with rd.heartbeat(world_size=2, every_s=3600, step=lambda: step["now"]) as beat:
        first = rd.read_heartbeat()
        step["now"] = 9
        beat.beat()
        second = rd.read_heartbeat()
    assert first["pid"] == os.getpid() and first["host_key"] == liveness.host_key()
    assert first["slurm_job"] == "77_3" and first["world_size"] == 2 and first["step"] == 5
    assert second["step"] == 9 and second["unix"] >= first["unix"]
    assert liveness.process_gone(first) is False
    assert not list(rd.path.glob(".heartbeat.json.tmp-*"))


def test_a_dead_process_or_an_old_heartbeat_means_stale_a_live_one_never() -> None:
    now = time.time()
    here = liveness.this_process()
    other = {**here, "host": "node7", "host_key": "node7|x|y"}
    dead = {**here, "pid": _dead_pid(), "pid_start": None}
    assert "is gone" in states.why_stale({**dead, "unix": now}, None, None, 600, now)
    # Alive on this host: never stale, however old its heartbeat (it may be busy or held).
    assert states.why_stale({**here, "unix": now - 10_000}, None, None, 0, now) is None
    # Elsewhere only the age tells.
    assert states.why_stale({**other, "unix": now - 30}, None, None, 600, now) is None
    assert "no heartbeat for 11 min" in states.why_stale({**other, "unix": now - 660}, None, None, 600, now)
    # A live SLURM job, or one whose state cannot be read, is never taken for dead.
    assert states.why_stale({**dead, "unix": now}, "5_1", "PENDING", 600, now) is None
    assert states.why_stale({**dead, "unix": now}, "5_1", None, 600, now) is None
    assert states.why_stale({}, None, None, 0, now) is None  # no heartbeat: --stale decides


def test_status_reports_stale_runs_and_resubmits_them(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(slurm, "available", lambda: False)
    sweepdir.record_launch(tmp_path, [(r, [f"seed={i}"]) for i, r in enumerate("abcd")], ["seed=0,1,2,3"], [])
    now = time.time()
    here = liveness.this_process()
    beats = {"a": {**here, "pid": _dead_pid(), "pid_start": None, "unix": now},            # killed here
             "b": {**here, "unix": now - 5000},                                             # alive here
             "c": {**here, "host": "n2", "host_key": "n2|x|y", "unix": now - 700},          # silent elsewhere
             "d": {**here, "host": "n2", "host_key": "n2|x|y", "unix": now - 100}}          # recent elsewhere
    for run_id, beat in beats.items():
        rd = _run_dir(tmp_path, run_id, status="requeued" if run_id == "c" else "running", step=40)
        rd.heartbeat_file.write_text(json.dumps(beat))
    rows = {r.run_id: r for r in states.collect(tmp_path, now=now)}
    assert {k: r.state for k, r in rows.items()} == {"a": "stale", "b": "running", "c": "stale", "d": "running"}
    assert "is gone" in rows["a"].detail and "no heartbeat for 12 min" in rows["c"].detail
    assert states.collect(tmp_path, stale_after=60, now=now)[3].state == "stale"  # the threshold is the CLI's
    assert states.resubmit(tmp_path, list(rows.values()), [], dry_run=True) == 0
    assert "hydra.sweeper.only=['a','c']" in capsys.readouterr().out

    assert status.main([str(tmp_path), "--stale-after", "60"]) == 0
    table = capsys.readouterr().out
    assert "4 runs: 3 stale, 1 running" in table, table
    with pytest.raises(SystemExit):
        status.main([str(tmp_path), "--stale-after", "-1"])


# ---- end to end ---------------------------------------------------------------------------------------------
def _status(env: dict, sweep_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specsweep.sweep.status", str(sweep_dir), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _train(run: RunDir) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in iter_jsonl(run.metrics_file) if "train_loss" in r]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_run_is_stale_and_its_resubmission_matches_an_uninterrupted_run(env: dict, tmp_path: Path) -> None:
    common = [*FAST, "train.steps=12", "train.log_every=1", "train.ckpt_every=4"]
    run_train([*common, "sweep_name=straight"], env)
    straight = RunDir(tmp_path / "runs" / "straight" / run_id_for(*common))
    sweep_dir = tmp_path / "runs" / "killed"
    run = RunDir(sweep_dir / run_id_for(*common))
    gate = tmp_path / "gate"
    # Held after step 6: checkpoint 4 is on disk, step 5 and 6 are trained and logged, run.json says running.
    proc = subprocess.Popen([sys.executable, "-m", "specsweep.sweep.train", "-m", *common, "sweep_name=killed"], cwd=ROOT,
                            env={**env, "SPECSWEEP_HOLD": f"6:{gate}"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_held(gate, 6, ended(proc))
        live = _status(env, sweep_dir, "--json", "--stale-after", "0")
        row = json.loads(live.stdout.splitlines()[0])
        assert row["state"] == "running" and "heartbeat" in row["detail"], live.stdout + live.stderr
        assert run.read_heartbeat()["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert run.read_status()["status"] == "running" and [s for s, _ in run.checkpoints()] == [4]

    table = _status(env, sweep_dir)
    line = next(ln for ln in table.stdout.splitlines() if run.path.name in ln)
    assert line.startswith("stale") and f"pid {proc.pid}" in line and "is gone" in line, table.stdout
    assert "1 runs: 1 stale" in table.stdout

    (gate / "release").touch()  # the relaunch inherits the recorded SPECSWEEP_HOLD: let it pass
    again = _status(env, sweep_dir, "--resubmit")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resubmitting 1 runs" in again.stdout
    assert run.is_done() and "1 runs: 1 done" in _status(env, sweep_dir).stdout
    a, b = _train(straight), _train(run)
    assert [s for s, _ in b] == [s for s, _ in a] == list(range(1, 13))
    assert [v for _, v in b] == pytest.approx([v for _, v in a], rel=1e-6, abs=1e-7)
    assert run.read_done()["final_eval_loss"] == pytest.approx(straight.read_done()["final_eval_loss"], rel=1e-6)
