"""Issue 22 item 2: one process per run.

A run directory is claimed (fcntl.lockf on claim.lock) before set-up and held until the process
ends, kill -9 included; a second launcher skips a claimed run with one line naming host, pid and
SLURM job, and goes on; temporary checkpoint files of a live process are never removed by another.
Processes are synchronised by hold points and pipes, never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specsweep.sweep.cluster.states import collect
from specsweep.sweep.rundir import RunClaimed, RunDir, iter_jsonl, write_checkpoint
from tests.conftest import FAST, ROOT, ended, hold_env, release, run_id_for, run_train, wait_until_held

# A process that claims a run directory, says so on stdout, then waits for its stdin to close.
_HOLDER = """
import sys
from specsweep.sweep.rundir import RunDir
claim = RunDir(sys.argv[1]).claim()
print("claimed", flush=True)
sys.stdin.read()
"""


def _hold_claim(run_dir: Path, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run_dir)], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "claimed"  # blocks until the claim is taken
    return proc


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)


def test_a_claimed_run_is_refused_to_another_process_until_the_holder_dies(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    holder = _hold_claim(run.path, {**os.environ, "SLURM_JOB_ID": "4242"})
    try:
        with pytest.raises(RunClaimed) as err:
            run.claim()
        line = str(err.value)
        assert "\n" not in line and f"pid {holder.pid}" in line and "SLURM job 4242" in line and "host " in line
        assert err.value.holder["pid"] == holder.pid
        assert run.claim_holder()["pid"] == holder.pid  # seen without taking the lock
        assert run.claim_holder()["pid"] == holder.pid  # ... so probing twice does not free it
        holder.send_signal(signal.SIGKILL)  # kill -9: the kernel drops the lock
        holder.wait(timeout=60)
        assert run.claim_holder() is None
        with run.claim():  # taken now; a third process is refused while this one holds it
            third = subprocess.run([sys.executable, "-c", _HOLDER, str(run.path)], cwd=ROOT, stdin=subprocess.DEVNULL,
                                   capture_output=True, text=True, timeout=120)
            assert third.returncode != 0 and "RunClaimed" in third.stderr and f"pid {os.getpid()}" in third.stderr
    finally:
        _kill(holder)


def test_a_requeued_job_waits_for_its_previous_attempts_claim(tmp_path: Path, monkeypatch) -> None:
    run = RunDir(tmp_path / "run")
    holder = _hold_claim(run.path, {**os.environ, "SLURM_JOB_ID": "77"})
    try:
        monkeypatch.setenv("SLURM_JOB_ID", "77")  # the same job, restarted
        with pytest.raises(RunClaimed):
            run.claim(wait_s=0)  # still held after the wait: refused, not trained twice
        holder.stdin.close()  # the previous attempt ends while the new one waits
        with run.claim(wait_s=120) as claim:
            assert claim.path.name == "claim.lock"
    finally:
        _kill(holder)


def test_sweep_status_reports_a_claimed_run_as_running_not_stale(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run = RunDir(sweep / "gpt-tiny_adamw_w4_s0")
    run.update_status(run_id=run.path.name, status="running", step=10)
    # The heartbeat says dead (another host, an hour old) but a live process holds the run.
    run.heartbeat_file.write_text(json.dumps({"host": "elsewhere", "host_key": "elsewhere|x|y", "pid": 1,
                                              "unix": time.time() - 3600}))
    assert collect(sweep, stale_after=60)[0].state == "stale"
    holder = _hold_claim(run.path)
    try:
        row = collect(sweep, stale_after=60)[0]
        assert row.state == "running" and f"claimed by host " in row.detail and f"pid {holder.pid}" in row.detail
    finally:
        _kill(holder)


def test_a_checkpoint_write_never_removes_a_live_processs_temporary_file(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.ckpt_dir.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        live = run.ckpt_dir / f".ckpt_00000010.pt.tmp-{sleeper.pid}"
        live.write_bytes(b"half written")
        dead = run.ckpt_dir / ".ckpt_00000010.pt.tmp-999999999"  # no such pid
        dead.write_bytes(b"left by a killed attempt")
        write_checkpoint(run, 20, {"x": 1}, keep=2)
        assert live.exists() and not dead.exists()
    finally:
        _kill(sleeper)


def test_a_checkpoint_write_removes_a_zombie_writers_temporary_file(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.ckpt_dir.mkdir(parents=True)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.time() + 10  # exited, not reaped: a zombie until wait()
        while time.time() < deadline and not Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            time.sleep(0.02)
        stray = run.ckpt_dir / f".ckpt_00000010.pt.tmp-{zombie.pid}"
        stray.write_bytes(b"left by a killed attempt")
        write_checkpoint(run, 20, {"x": 1}, keep=2)
        assert not stray.exists()
    finally:
        zombie.wait()


# ---- end to end ------------------------------------------------------------------------------------
def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "specsweep.sweep.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_second_launch_skips_a_held_run_and_a_launch_after_kill_9_resumes_it(env: dict, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    run = RunDir(tmp_path / "runs" / "default" / run_id_for(*FAST))
    first = _start(FAST, hold_env(env, gate, 10))
    try:
        pid = wait_until_held(gate, 10, ended(first))  # step 10 checkpointed, the claim held
        second = run_train(FAST, env)  # exit status 0: the skip is not an error
        out = second.stdout + second.stderr
        lines = [line for line in out.splitlines() if "being trained by another process" in line]
        assert len(lines) == 1 and f"pid {pid}" in lines[0] and "SLURM job none" in lines[0], out
        assert "Traceback" not in out and not run.is_done()
        assert [s for s, _ in run.checkpoints()] == [10]  # the second one wrote nothing of its own
        first.send_signal(signal.SIGKILL)  # the holder dies without a word: its claim goes with it
        first.wait(timeout=60)
    finally:
        _kill(first)
    assert run.read_status()["status"] == "running"  # what kill -9 leaves
    third = run_train(FAST, env)
    assert "from step 10" in third.stdout + third.stderr
    assert run.is_done()
    steps = [r["step"] for r in iter_jsonl(run.metrics_file) if "train_loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 30  # resumed once, no row twice


@pytest.mark.slow
def test_two_identical_grids_at_once_train_each_run_once(env: dict, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    grid = ["-m", *FAST, "optim=adamw,muon", "sweep_name=twice"]
    first = _start(grid, hold_env(env, gate, 10))  # holds in its first run (adamw)
    try:
        wait_until_held(gate, 10, ended(first))
        second = run_train(grid, env)  # skips adamw (claimed), trains muon
        out = second.stdout + second.stderr
        assert sum("being trained by another process" in line for line in out.splitlines()) == 1, out
        release(gate)
        rest, _ = first.communicate(timeout=300)
        assert first.returncode == 0, rest
    finally:
        _kill(first)
    assert "is already done" in rest  # muon, trained by the second grid meanwhile
    sweep = tmp_path / "runs" / "twice"
    runs = [RunDir(p) for p in sorted(sweep.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 2 and all(r.is_done() for r in runs)
    for r in runs:  # each trained by one process: one start, every step once
        steps = [row["step"] for row in iter_jsonl(r.metrics_file) if "train_loss" in row]
        assert steps == sorted(set(steps)) and steps[-1] == 30
        assert not list(r.ckpt_dir.glob(".ckpt_*.tmp-*"))
