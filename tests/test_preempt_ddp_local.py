"""Without SLURM: a USR2 stops a run at a step boundary with a checkpoint; two local ranks train one run."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.rundir import RunDir, iter_jsonl
from tests.conftest import FAST, ROOT, RUN_TIMEOUT_S, ended, hold_env, run_id_for, run_train, wait_until_held

pytestmark = pytest.mark.slow


def _train(run: RunDir) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in iter_jsonl(run.metrics_file) if "train_loss" in r]


@pytest.mark.timeout(300)
def test_usr2_checkpoints_at_the_step_boundary_and_a_relaunch_resumes(env: dict, tmp_path: Path) -> None:
    common = [*FAST, "train.steps=40", "train.log_every=1", "train.ckpt_every=1000"]
    run_train([*common, "sweep_name=straight"], env)
    straight = RunDir(tmp_path / "runs" / "straight" / run_id_for(*common))
    run = RunDir(tmp_path / "runs" / "usr2" / run_id_for(*common))
    gate = tmp_path / "gate"
    # Held after step 20 until the signal lands: the signal reaches a run mid-way, however fast it trains.
    proc = subprocess.Popen([sys.executable, "-m", "sweep.train", *common, "sweep_name=usr2"], cwd=ROOT,
                            env=hold_env(env, gate, 20), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_held(gate, 20, ended(proc))
        proc.send_signal(signal.SIGUSR2)
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGUSR2, out[-3000:]
    status = run.read_status()
    assert status["status"] == "interrupted" and status["step"] == 20
    assert [s for s, _ in run.checkpoints()] == [20]  # written on the signal, not periodically
    assert [s for s, _ in _train(run)] == list(range(1, 21))

    resumed = run_train([*common, "sweep_name=usr2"], env)
    assert "from step 20" in resumed.stdout + resumed.stderr
    a, b = _train(straight), _train(run)
    assert [s for s, _ in b] == [s for s, _ in a] == list(range(1, 41))
    assert [v for _, v in b] == pytest.approx([v for _, v in a], rel=1e-6, abs=1e-7)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_two_local_ranks_match_one_process(env: dict, tmp_path: Path) -> None:
    """RANK/WORLD_SIZE (torchrun-style) ranks on gloo: same losses and exactly merged telemetry."""
    common = [*FAST, "train.steps=10", "train.log_every=1", "telemetry.every=5"]
    run_train([*common, "sweep_name=one"], env)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "sweep.train", *common, "sweep_name=two"], cwd=ROOT,
                              env={**env, "RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=RUN_TIMEOUT_S)[0] for p in procs]  # hang guard (e.g. a rank that never joins)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    one = RunDir(tmp_path / "runs" / "one" / run_id_for(*common))
    two = RunDir(tmp_path / "runs" / "two" / run_id_for(*common))
    assert two.is_done() and [s for s, _ in _train(two)] == list(range(1, 11))
    assert [v for _, v in _train(two)] == pytest.approx([v for _, v in _train(one)], rel=1e-4)
    key = lambda r: (r["step"], r["layer"], r["site"], r["bucket"])  # noqa: E731
    s1 = {key(r): r for r in iter_jsonl(one.spectra_file)}
    s2 = {key(r): r for r in iter_jsonl(two.spectra_file)}
    assert s1.keys() == s2.keys()
    assert all(s2[k]["n_rows"] == s1[k]["n_rows"] for k in s1)
