"""Faults and bad states of a run directory: nothing lost, nothing misreported, no way in (issue 12).

End-to-end cases start from one finished FAST run (30 steps, checkpoints at 20 and 30), copied per
test and then damaged; runs that must be hit at a known step are held there (sweep/run/hold.py).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

from specsweep.sweep.run import signals as preempt
from specsweep.sweep.grid.identity import check_identity
from specsweep.sweep.run.checkpoint import save_checkpoint
from specsweep.sweep.run.signals import StopRequest
from specsweep.sweep.rundir import (JsonlError, RunConfigChanged, RunDir, config_hash, iter_jsonl, load_checkpoint,
                          load_latest_checkpoint)
from tests.conftest import FAST, ROOT, ended, run_id_for, run_train, wait_until_held

RUN_ID = run_id_for(*FAST)


# ---- helpers ------------------------------------------------------------------------------------
def _env(root: Path, data_cache: Path) -> dict[str, str]:
    return {**os.environ, "SPECSWEEP_RUNS": str(root / "runs"), "SPECSWEEP_DATA": str(data_cache),
            "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, data_cache: Path) -> RunDir:
    """A finished FAST run; tests copy it (see _copy) instead of training their own."""
    root = tmp_path_factory.mktemp("finished")
    run_train(FAST, _env(root, data_cache))
    return RunDir(root / "runs" / "default" / RUN_ID)


def _copy(template: RunDir, env: dict, unfinish: bool = False) -> RunDir:
    """The template run under this test's runs root; ``unfinish``: as if killed after the last
    checkpoint and before DONE (status running, no DONE)."""
    run = RunDir(Path(env["SPECSWEEP_RUNS"]) / "default" / RUN_ID)
    shutil.copytree(template.path, run.path)
    if unfinish:
        run.done_file.unlink()
        run.update_status(status="running")
    return run


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _train_losses(run: RunDir) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in iter_jsonl(run.metrics_file) if "train_loss" in r]


def _launch(args: list[str], env: dict, preexec_fn: Optional[Callable[[], None]] = None,
            code: Optional[str] = None) -> subprocess.CompletedProcess:
    """``specsweep-train ARGS`` (or ``python -c CODE ARGS``), not checked."""
    head = ["-c", code] if code else ["-m", "specsweep.sweep.train"]
    return subprocess.run([sys.executable, *head, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=preexec_fn)


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "specsweep.sweep.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _obeying_permissions() -> Optional[Callable[[], None]]:
    """A preexec_fn that makes a root child obey file permissions (drops CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH from its bounding set), so that a read-only directory is read-only for the
    run; None for an ordinary user. Skips the test where the capability cannot be dropped."""
    if os.geteuid() != 0:
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def drop() -> None:
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    try:
        subprocess.run(["true"], preexec_fn=drop, check=True)
    except (subprocess.SubprocessError, OSError):
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE: a read-only directory is not read-only")
    return drop


def _make_read_only(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)


def _make_writable(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


# ---- 1: checkpoints are plain data ---------------------------------------------------------------
class _Payload:
    """Unpickling this runs code: it opens (creates) the file named by ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_crafted_checkpoint_runs_no_code_and_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = RunDir(tmp_path / "run")
    save_checkpoint(run, 10, {"w": torch.ones(3)}, keep=3)
    marker = tmp_path / "pwned"
    torch.save({"step": 20, "w": torch.zeros(3), "x": _Payload(str(marker))}, run.checkpoint_path(20))
    skipped: list[Path] = []
    with caplog.at_level("WARNING", logger="specsweep.checkpoint"):
        state = load_latest_checkpoint(run, unreadable=skipped)
    assert not marker.exists(), "loading a checkpoint ran code from it"
    assert state is not None and state["step"] == 10 and torch.equal(state["w"], torch.ones(3))
    assert skipped == [run.checkpoint_path(20)]
    assert "ckpt_00000020.pt" in caplog.text and "not an allowed global" in caplog.text


def test_checkpoint_rng_states_are_plain_data(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    save_checkpoint(run, 1, {}, keep=1)
    rng = load_checkpoint(run.checkpoint_path(1))["rng"]  # weights_only=True inside
    assert set(rng) >= {"python", "numpy", "torch"}


# ---- 3: killed after the last checkpoint, before DONE --------------------------------------------
@pytest.mark.slow
def test_kill_after_the_last_checkpoint_still_records_the_final_losses(env: dict, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    proc = _start([*FAST], {**env, "SPECSWEEP_HOLD": f"30:{gate}"})
    try:
        wait_until_held(gate, 30, ended(proc))  # step 30 checkpointed, DONE not written yet
        proc.kill()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    run = RunDir(tmp_path / "runs" / "default" / RUN_ID)
    assert not run.is_done() and [s for s, _ in run.checkpoints()] == [20, 30]

    proc = run_train([*FAST, "train.keep_checkpoints=1"], env)
    assert "from step 30" in proc.stdout + proc.stderr
    done = run.read_done()
    rows = list(iter_jsonl(run.metrics_file))
    train = [r["train_loss"] for r in rows if r["step"] == 30 and "train_loss" in r]
    evals = [r["eval_loss"] for r in rows if r["step"] == 30 and "eval_loss" in r]
    assert len(train) == len(evals) == 1  # no row lost or duplicated
    assert done["final_train_loss"] == pytest.approx(train[0], rel=1e-6)
    assert done["final_eval_loss"] == pytest.approx(evals[0], rel=1e-6)  # the deterministic eval, rerun
    assert [s for s, _ in run.checkpoints()] == [30]  # train.keep_checkpoints=1 holds after such a resume

    from specsweep.sweep.analysis.read import load_sweeps

    fitted = load_sweeps([run.path.parent]).runs
    assert len(fitted) == 1 and math.isfinite(fitted[0].train_loss) and math.isfinite(fitted[0].eval_loss)


# ---- 4: SIGTERM, SIGINT, and SIGTERM + USR2 under submitit ---------------------------------------
@pytest.fixture
def guarded_signals():
    """Handlers that keep a stray SIGTERM/SIGINT from ending pytest; they record what reached them
    (i.e. what StopRequest did not catch)."""
    reached: list[int] = []
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)}
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: reached.append(signum))
    yield reached
    for s, handler in saved.items():
        signal.signal(s, handler)


def _signal_self(signum: int, until: Callable[[], bool]) -> None:
    os.kill(os.getpid(), signum)
    deadline = time.monotonic() + 10  # delivery is immediate; the bound only guards a lost signal
    while not until() and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR2])
def test_term_int_and_usr2_each_request_a_stop_and_exit_128_plus_signal(guarded_signals: list, signum: int) -> None:
    with StopRequest() as stop:
        _signal_self(signum, lambda: stop.requested)
        assert stop.received == signum and guarded_signals == []
        assert not stop.will_requeue()  # no submitit here
        with pytest.raises(SystemExit) as exit_:
            stop.hand_over()
    assert exit_.value.code == 128 + signum


def test_a_second_sigint_aborts_at_once(guarded_signals: list) -> None:
    with StopRequest() as stop:
        _signal_self(signal.SIGINT, lambda: stop.requested)
        with pytest.raises(KeyboardInterrupt):
            _signal_self(signal.SIGINT, lambda: False)
    assert guarded_signals == []


class _FakeSubmitit:
    """Stands in for submitit's preemption handler (checkpoint_and_try_requeue)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, signum: int, frame) -> None:
        self.calls.append(signum)


def test_sigterm_then_usr2_under_submitit_requeues(guarded_signals: list, monkeypatch: pytest.MonkeyPatch) -> None:
    submitit = _FakeSubmitit()
    signal.signal(signal.SIGUSR2, submitit)
    with StopRequest(requeue_wait_s=600) as stop:
        _signal_self(signal.SIGTERM, lambda: stop.requested)
        assert not stop.preempted
        # The preemption's USR2 lands while the run waits for it after its checkpoint.
        real_sleep = time.sleep
        sent = []

        def sleep(seconds: float) -> None:
            if not sent:
                sent.append(1)
                os.kill(os.getpid(), signal.SIGUSR2)
            real_sleep(seconds)

        monkeypatch.setattr(preempt.time, "sleep", sleep)
        assert stop.will_requeue()
        with pytest.raises(SystemExit):
            stop.hand_over()
    assert submitit.calls == [signal.SIGUSR2]


def test_sigterm_alone_under_submitit_interrupts_after_a_bounded_wait(guarded_signals: list) -> None:
    submitit = _FakeSubmitit()
    signal.signal(signal.SIGUSR2, submitit)
    with StopRequest(requeue_wait_s=0.2) as stop:
        _signal_self(signal.SIGTERM, lambda: stop.requested)
        assert not stop.will_requeue()  # scancel: no USR2 follows
        with pytest.raises(SystemExit) as exit_:
            stop.hand_over()
    assert exit_.value.code == 128 + signal.SIGTERM and submitit.calls == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_checkpoint_the_step_they_claim(env: dict, tmp_path: Path, finished: RunDir,
                                                           signum: int) -> None:
    gate = tmp_path / "gate"
    proc = _start([*FAST, "train.log_every=1"], {**env, "SPECSWEEP_HOLD": f"12:{gate}"})
    try:
        wait_until_held(gate, 12, ended(proc))  # step 12 done; the last checkpoint is 10
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, out[-3000:]
    run = RunDir(tmp_path / "runs" / "default" / RUN_ID)
    status = run.read_status()
    assert status["status"] == "interrupted" and status["step"] == 12
    assert run.checkpoints()[-1][0] == 12  # the checkpoint that run.json (and sweep.status) claims

    from specsweep.sweep.status import collect

    assert "checkpoint at step 12" in collect(run.path.parent)[0].detail
    if signum == signal.SIGINT:
        return  # the resume itself is the same for both
    resumed = run_train([*FAST, "train.log_every=1"], env)
    assert "from step 12" in resumed.stdout + resumed.stderr
    every = _train_losses(run)
    assert [s for s, _ in every] == list(range(1, 31))
    logged = dict(every)
    assert [logged[s] for s, _ in _train_losses(finished)] == pytest.approx([v for _, v in _train_losses(finished)],
                                                                            rel=1e-6, abs=1e-7)


@pytest.mark.slow
def test_sigint_twice_never_claims_a_missing_checkpoint(env: dict, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    proc = _start([*FAST], {**env, "SPECSWEEP_HOLD": f"12:{gate}"})
    try:
        wait_until_held(gate, 12, ended(proc))
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)  # wherever it lands (before or after the stop checkpoint)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    run = RunDir(tmp_path / "runs" / "default" / RUN_ID)
    status = run.read_status()
    assert status["status"] == "interrupted", out[-3000:]
    assert status["step"] == run.checkpoints()[-1][0] in (10, 12)
    resumed = run_train(FAST, env)
    assert f"from step {status['step']}" in resumed.stdout + resumed.stderr and run.is_done()


# ---- 6: failures during set-up or resume are recorded, naming the file ---------------------------
@pytest.mark.parametrize("junk,problem", [(b"42\n", "not a JSON object: '42'"),
                                          (b"\x89\xfe\xff\x00junk\n", "not UTF-8 text"),
                                          (b'{"step": 10, "x', "not JSON"),
                                          (b'{"step": "ten"}\n', "step 'ten' is not a number")])
def test_junk_in_a_jsonl_file_is_an_error_naming_file_and_line(tmp_path: Path, junk: bytes, problem: str) -> None:
    run = RunDir(tmp_path)
    run.metrics_file.write_text('{"step": 1, "x": 1}\n{"step": 2, "x": 2}\n')
    with open(run.metrics_file, "ab") as f:
        f.write(b"\n" + junk + b'\n{"step": 3}\n')  # in the middle (a torn row too), after an empty line
    with pytest.raises(JsonlError, match=re.escape(f"{run.metrics_file}, line 4: {problem}")):
        run.truncate_jsonl(run.metrics_file, 2)


def test_a_torn_last_row_is_still_dropped_silently(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.metrics_file.write_bytes(b'{"step": 1}\n{"step": 2}\n{"step": 3, "train_lo')
    assert run.truncate_jsonl(run.metrics_file, 5) == 2


@pytest.mark.slow
def test_junk_in_metrics_fails_the_run_naming_file_and_line(env: dict, finished: RunDir) -> None:
    run = _copy(finished, env, unfinish=True)
    lines = len(run.metrics_file.read_bytes().splitlines())
    with open(run.metrics_file, "a") as f:
        f.write("42\n")
    proc = _launch(FAST, env)
    assert proc.returncode != 0
    status = run.read_status()
    assert status["status"] == "failed"
    assert f"{run.metrics_file}, line {lines + 1}: not a JSON object" in status["error"]
    assert f"metrics.jsonl, line {lines + 1}" in proc.stderr


@pytest.mark.slow
def test_disk_full_at_a_checkpoint_fails_the_run_and_leaves_no_temporary_file(env: dict, tmp_path: Path) -> None:
    # The second checkpoint (step 20) hits a full disk in the middle of its write.
    code = ("import errno, sys, torch\n"
            "real, calls = torch.save, []\n"
            "def save(obj, f, *a, **k):\n"
            "    calls.append(1)\n"
            "    if len(calls) == 2:\n"
            "        f.write(b'partial')\n"
            "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "    return real(obj, f, *a, **k)\n"
            "torch.save = save\n"
            "import runpy\n"
            "runpy.run_module('specsweep.sweep.train', run_name='__main__', alter_sys=True)\n")
    proc = _launch(FAST, env, code=code)
    assert proc.returncode != 0
    run = RunDir(tmp_path / "runs" / "default" / RUN_ID)
    status = run.read_status()
    assert status["status"] == "failed" and status["step"] == 10
    assert "No space left on device" in status["error"] and "ckpt_00000020.pt" in status["error"]
    assert sorted(p.name for p in run.ckpt_dir.iterdir()) == ["ckpt_00000010.pt"]
    assert not list(run.path.rglob(".*.tmp-*"))


@pytest.mark.slow
def test_read_only_run_directory_is_a_clear_error_naming_it(env: dict, finished: RunDir) -> None:
    run = _copy(finished, env, unfinish=True)
    drop = _obeying_permissions()
    _make_read_only(run.path)
    try:
        proc = _launch(FAST, env, preexec_fn=drop)
    finally:
        _make_writable(run.path)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Unable to configure handler" not in out
    assert f"cannot write to the run directory {run.path}" in out


@pytest.mark.slow
def test_checkpoint_of_another_config_fails_the_run_naming_it(env: dict, finished: RunDir) -> None:
    run = _copy(finished, env, unfinish=True)
    for _, path in run.checkpoints():
        state = load_checkpoint(path)
        torch.save({**state, "config_hash": "0123456789abcdef"}, path)
    proc = _launch(FAST, env)
    assert proc.returncode != 0
    status = run.read_status()
    assert status["status"] == "failed" and str(run.checkpoint_path(30)) in status["error"]


# ---- 7: a refused launch does not touch the run directory ----------------------------------------
@pytest.mark.slow
def test_refused_relaunch_leaves_the_run_directory_as_it_was(env: dict, finished: RunDir) -> None:
    run = _copy(finished, env)
    before = _snapshot(run.path)
    proc = _launch([*FAST, "telemetry.every=5"], env)
    assert proc.returncode != 0 and "different config" in proc.stderr
    assert _snapshot(run.path) == before


@pytest.mark.slow
def test_refusal_without_identity_json_does_not_wedge_the_run(env: dict, finished: RunDir) -> None:
    run = _copy(finished, env, unfinish=True)
    run.identity_file.unlink()
    before = _snapshot(run.path)
    proc = _launch([*FAST, "telemetry.every=5"], env)
    assert proc.returncode != 0 and "telemetry.every: 10 -> 5" in proc.stderr  # from config.yaml
    assert _snapshot(run.path) == before
    proc = _launch(FAST, env)  # the original command still resumes the run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run.is_done() and run.identity_file.exists()


def test_without_identity_or_config_the_checkpoint_hash_decides(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    mine, other = {"train": {"steps": 10}}, {"train": {"steps": 20}}
    save_checkpoint(run, 10, {"config_hash": config_hash(mine)}, keep=1)
    assert check_identity(run, mine) == config_hash(mine)
    with pytest.raises(RunConfigChanged, match="ckpt_00000010.pt"):
        check_identity(run, other)


@pytest.mark.slow
def test_single_run_failing_validation_leaves_no_directory(env: dict, tmp_path: Path) -> None:
    proc = _launch([*FAST, "model.ffn_mult=0"], env)
    assert proc.returncode != 0 and "model.ffn_mult" in proc.stderr
    runs = tmp_path / "runs"
    assert not runs.exists() or list(runs.rglob("*")) == []


# ---- 8: every checkpoint unreadable ---------------------------------------------------------------
@pytest.mark.slow
def test_all_checkpoints_unreadable_restarts_loudly_and_is_recorded(env: dict, finished: RunDir) -> None:
    run = _copy(finished, env, unfinish=True)
    bad = [p for _, p in run.checkpoints()]
    for p in bad:
        p.write_bytes(b"not a checkpoint")
    proc = _launch(FAST, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "RESTARTS FROM STEP 0" in out and all(str(p) in out for p in bad)
    restarts = run.read_status()["restarts"]
    assert len(restarts) == 1 and restarts[0]["files"] == [f"{p}.unreadable" for p in reversed(bad)]
    assert all(Path(f).exists() for f in restarts[0]["files"])
    assert run.is_done() and _train_losses(run) == _train_losses(finished)


# ---- 9: a finished read-only run is skipped -------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("multirun", [False, True])
def test_finished_read_only_run_is_skipped(env: dict, finished: RunDir, multirun: bool) -> None:
    run = _copy(finished, env)
    drop = _obeying_permissions()
    _make_read_only(run.path)
    try:
        # the grid names its sweep `default` so that it holds the copied run
        proc = _launch(["-m", *FAST, "sweep_name=default"] if multirun else FAST, env, preexec_fn=drop)
    finally:
        _make_writable(run.path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert ("1 finished and skipped" if multirun else "is already done") in out


# ---- 10: a non-finite loss or gradient stops the run before the update ---------------------------
@pytest.mark.slow
def test_non_finite_gradient_stops_before_the_update(env: dict, tmp_path: Path) -> None:
    run_train([*FAST, "optim.lr=1e6", "train.steps=12", "train.log_every=1", "train.ckpt_every=1"], env)
    run = RunDir(tmp_path / "runs" / "default" / run_id_for(*FAST, "optim.lr=1e6", "train.steps=12"))
    status = run.read_status()
    assert status["status"] == "diverged"
    rows = [r for r in iter_jsonl(run.metrics_file) if "train_loss" in r]
    *good, bad = rows
    assert bad.get("diverged") and bad["step"] == status["step"] == len(rows)
    assert bad["train_loss"] is None or bad["grad_norm"] is None
    # Every step that was applied had a finite loss and gradient norm ...
    assert all(r["train_loss"] is not None and r["grad_norm"] is not None for r in good)
    # ... and the last checkpoint, the step before, holds finite weights.
    state = load_checkpoint(run.checkpoints()[-1][1])
    assert state["step"] == bad["step"] - 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# ---- the train.log handler never takes a run down ------------------------------------------------
def test_log_file_that_cannot_be_opened_is_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import logging

    from specsweep.sweep.run.logfile import RunLogFile

    handler = RunLogFile(str(tmp_path / "no-such-dir" / "train.log"))
    assert not (tmp_path / "no-such-dir").exists()  # nothing opened before the first record
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    handler.handle(record)
    handler.handle(record)
    handler.close()
    err = capsys.readouterr().err
    assert err.count("cannot write the log file") == 1 and "no-such-dir" in err
