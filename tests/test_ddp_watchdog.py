"""A rank that crashes, dies or hangs ends the other ranks within seconds, not at the group's 10-min timeout."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from specsweep.sweep import liveness
from specsweep.sweep.run.distributed import DistEnv, Watchdog, peer_timeout
from specsweep.sweep.rundir import RunDir
from tests.conftest import FAST, ROOT, ended, run_id_for, wait_until_held


# ---- the watchdog on a store in this process, with a clock the test moves ---------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _Exited(Exception):
    pass


def _exit(code: int) -> None:
    raise _Exited(code)


def _pair(world: int = 2, timeout: float = 60.0):
    store, clock = dist.HashStore(), _Clock()
    dogs = [Watchdog(store, DistEnv(rank=r, world_size=world), poll_s=1.0, peer_timeout_s=timeout,
                     clock=clock, exit=_exit) for r in range(world)]
    for d in dogs:  # what start() publishes, without the thread
        d.store.set(f"info/{d.env.rank}", json.dumps({**liveness.this_process(), "host_key": f"far|{d.env.rank}"}))
        d.beat()
    return dogs, clock


def test_a_published_error_of_any_rank_is_seen_by_the_others() -> None:
    (r0, r1, r2), _ = _pair(world=3)
    assert r0.verdict() is None and r1.verdict() is None and r2.verdict() is None
    r2.publish_error("ValueError: bad shard")
    assert r0.verdict() == f"rank 2 (pid {os.getpid()} on {socket.gethostname()}) failed: ValueError: bad shard"
    assert "ValueError: bad shard" in r1.verdict()  # rank 1 watches rank 0 only, but errors reach everyone
    assert r2.verdict() is None


def test_a_silent_peer_is_lost_after_the_timeout_a_beating_one_never() -> None:
    (r0, r1), clock = _pair(timeout=60)
    assert r0.verdict() is None and r1.verdict() is None
    for _ in range(10):  # both beat: time passes, nobody is lost
        clock.t += 30
        r0.beat(), r1.beat()
        assert r0.verdict() is None and r1.verdict() is None
    clock.t += 30
    r0.beat()
    assert r0.verdict() is None  # rank 1 silent for 30 s only
    clock.t += 31
    assert "rank 1" in r0.verdict() and "no heartbeat for 61 s" in r0.verdict()
    assert r1.verdict() is None  # rank 0 beat 31 s ago


def test_a_peer_that_left_cleanly_is_not_lost_and_rank_0_waits_for_its_peers() -> None:
    (r0, r1), clock = _pair(timeout=60)
    r0.verdict()
    r1.leave(None)
    clock.t += 500
    assert r0.verdict() is None and r0.leave(None) is None


def test_a_dead_process_on_this_host_is_lost_at_once_and_recorded_before_the_exit() -> None:
    (r0, r1), _ = _pair()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    r0.store.set("info/1", json.dumps({**liveness.this_process(), "pid": dead.pid, "pid_start": None}))
    r0._info.clear()
    why = r0.verdict()
    assert why.startswith(f"rank 1 (pid {dead.pid} on ") and "died without reporting an error" in why
    recorded = []
    r0.on_failure = lambda env, reason: recorded.append((env.rank, reason))
    with pytest.raises(_Exited):
        r0.fail(why)
    assert recorded == [(0, why)]
    assert "stopped: rank 1" in r1.failure()  # the others learn why rank 0 stops


def test_a_store_that_stops_answering_means_rank_0_is_gone(caplog) -> None:
    (_, r1), _ = _pair()

    class Gone:  # every request fails as on a closed connection
        def __getattr__(self, name):
            def refuse(*args, **kwargs):
                raise RuntimeError("Failed to recv, got 0 bytes. Connection was likely closed.")
            return refuse

    exits: list[int] = []
    r1.store, r1.poll_s, r1._exit = Gone(), 0.01, exits.append
    r1._monitor()  # returns once it has given up (here: exit only records)
    assert exits == [1]
    assert "lost contact with rank 0" in caplog.text and "Connection was likely closed" in caplog.text


def test_the_peer_timeout_comes_from_the_environment() -> None:
    assert peer_timeout({}) == 60.0 and peer_timeout({"SPECSWEEP_PEER_TIMEOUT_S": "7.5"}) == 7.5
    for bad in ("0", "-3", "soon"):
        with pytest.raises(ValueError, match="SPECSWEEP_PEER_TIMEOUT_S"):
            peer_timeout({"SPECSWEEP_PEER_TIMEOUT_S": bad})


# ---- two real ranks on gloo ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Generous bound: the watchdog needs about one poll (2 s) to notice a dead process on this host; the
# process group's own timeout, the behaviour before it, is 600 s.
PROMPT_S = 120
RUN_ID = run_id_for(*FAST, "train.steps=10")


def _ranks(env: dict, tmp_path: Path, holds: dict[int, str], **extra: str) -> list[subprocess.Popen]:
    port = str(_free_port())
    args = [*FAST, "train.steps=10", "train.log_every=1", "sweep_name=two"]
    procs = []
    for r in (0, 1):
        e = {**env, "RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, **extra}
        if r in holds:
            e["SPECSWEEP_HOLD"] = holds[r]
        procs.append(subprocess.Popen([sys.executable, "-m", "specsweep.sweep.train", *args], cwd=ROOT, env=e,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _finish(proc: subprocess.Popen) -> tuple[int, str, float]:
    """Exit code, output and seconds until the process ended (killed after PROMPT_S)."""
    t0 = time.time()
    try:
        out, _ = proc.communicate(timeout=PROMPT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return -1, out, time.time() - t0
    return proc.returncode, out, time.time() - t0


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_rank_ends_the_other_promptly(env: dict, tmp_path: Path, victim: int) -> None:
    gate = tmp_path / "gate"
    procs = _ranks(env, tmp_path, {0: f"3:{gate}", 1: f"3:{gate}"})
    try:
        for r in (0, 1):
            wait_until_held(gate, 3, ended(procs[r]), rank=r)
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        (gate / "release").touch()
        survivor = 1 - victim
        code, out, seconds = _finish(procs[survivor])
    finally:
        _kill_all(procs)
    assert code not in (0, -1), f"rank {survivor} did not stop within {PROMPT_S} s:\n{out[-3000:]}"
    lines = [ln for ln in out.splitlines() if f"rank {victim} (pid {procs[victim].pid}" in ln]
    assert lines and "died" in lines[0], out[-3000:]
    run = RunDir(tmp_path / "runs" / "two" / RUN_ID)
    status = run.read_status()
    assert status["status"] == "failed" or victim == 0  # a dead rank 0 leaves run.json to sweep.status
    if victim == 1:
        assert f"rank 1 (pid {procs[1].pid}" in status["error"] and "died" in status["error"]
        assert "died without reporting an error" in (run.path / "train.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_hung_rank_ends_the_other_after_the_peer_timeout(env: dict, tmp_path: Path) -> None:
    # SIGSTOP: rank 1's process and sockets stay, so gloo alone would wait out its 600 s timeout.
    # 15 s without a heartbeat is far beyond the 2 s beat period of a live rank, even on a busy machine.
    gate = tmp_path / "gate"
    procs = _ranks(env, tmp_path, {0: f"3:{gate}", 1: f"3:{gate}"}, SPECSWEEP_PEER_TIMEOUT_S="15")
    try:
        for r in (0, 1):
            wait_until_held(gate, 3, ended(procs[r]), rank=r)
        procs[1].send_signal(signal.SIGSTOP)
        (gate / "release").touch()
        code, out, seconds = _finish(procs[0])
    finally:
        _kill_all(procs)  # SIGKILL ends a stopped process too
    assert code not in (0, -1), f"rank 0 did not stop within {PROMPT_S} s:\n{out[-3000:]}"
    assert f"rank 1 (pid {procs[1].pid} on {socket.gethostname()}) sent no heartbeat for" in out, out[-3000:]
    status = RunDir(tmp_path / "runs" / "two" / RUN_ID).read_status()
    assert status["status"] == "failed" and "rank 1" in status["error"] and "no heartbeat" in status["error"]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_an_exception_on_rank_1_reaches_rank_0s_log_and_run_json(env: dict, tmp_path: Path) -> None:
    # Rank 1 alone raises after step 3: its hold folder cannot be made (a file is in the way), while
    # rank 0, not held, goes on into step 4's all-reduce and waits there for rank 1.
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    procs = _ranks(env, tmp_path, {1: f"3:{blocker / 'gate'}"})
    try:
        code1, out1, _ = _finish(procs[1])
        code0, out0, seconds = _finish(procs[0])
    finally:
        _kill_all(procs)
    assert code1 != 0 and "NotADirectoryError" in out1, out1[-3000:]
    assert code0 not in (0, -1), f"rank 0 did not stop within {PROMPT_S} s:\n{out0[-3000:]}"
    assert f"rank 1 (pid {procs[1].pid} on {socket.gethostname()}) failed: NotADirectoryError" in out0, out0[-3000:]
    run = RunDir(tmp_path / "runs" / "two" / RUN_ID)
    status = run.read_status()
    assert status["status"] == "failed" and "rank 1" in status["error"]
    assert "NotADirectoryError" in status["error"] and str(blocker) in status["error"]
