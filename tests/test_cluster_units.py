"""Cluster plumbing without a cluster: rank detection, the stop flag, sinfo checks, sweep records, status."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from specsweep.sweep.cluster import states
from specsweep.sweep.run import distributed
from specsweep.sweep.cluster import slurm
from specsweep.sweep.rundir import sweepdir
from specsweep.sweep.run.signals import StopRequest
from specsweep.sweep.rundir import RunDir


# ---- ranks --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nodelist,first", [
    ("vm", "vm"), ("gpu[003-004,9],cpu1", "gpu003"), ("node[7,9]", "node7"), ("a1,b2", "a1"),
])
def test_first_host_of_a_slurm_node_list(nodelist: str, first: str) -> None:
    assert distributed.first_host(nodelist) == first


def test_rank_detection_from_torchrun_slurm_or_nothing() -> None:
    assert distributed.detect({}) == distributed.SINGLE
    env = distributed.detect({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.master_addr, env.master_port, env.is_main) == (1, 2, "h", 1234, False)
    step = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
            "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_JOB_ID": "123457"}
    env = distributed.detect(step)
    assert (env.rank, env.world_size, env.local_rank, env.master_addr) == (3, 4, 1, "gpu01")
    assert env.master_port == 20000 + 123457 % 40000 and env.source == "slurm"
    # One task, or the batch script itself (no step): a plain single process.
    assert distributed.detect({**step, "SLURM_STEP_NUM_TASKS": "1"}) == distributed.SINGLE
    assert distributed.detect({k: v for k, v in step.items() if k != "SLURM_STEP_ID"}) == distributed.SINGLE


# ---- the stop flag ---------------------------------------------------------------------------------------
def test_signal_sets_a_flag_then_hand_over_chains_to_the_displaced_handler() -> None:
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))
    try:
        with StopRequest(signal.SIGUSR2) as stop:
            assert not stop.requested and stop.requeues
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.requested and calls == []  # our handler only set the flag
            with pytest.raises(SystemExit) as exit_info:
                stop.hand_over()
            assert calls == [signal.SIGUSR2]  # e.g. submitit: requeue (and exit, which it did not here)
            assert exit_info.value.code == 128 + signal.SIGUSR2
        assert signal.getsignal(signal.SIGUSR2) is not stop._on_signal
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_without_a_displaced_handler_the_run_exits_as_interrupted() -> None:
    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        with StopRequest(signal.SIGUSR2) as stop:
            assert not stop.requeues
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.requested
            with pytest.raises(SystemExit):
                stop.hand_over()
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR2, previous)


# ---- sinfo checks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,minutes", [("infinite", None), ("30", 30), ("4:00:00", 240), ("1-12:00:00", 2160),
                                          ("05:30", 5.5)])
def test_slurm_time_limits_parse(text: str, minutes) -> None:
    assert slurm.parse_minutes(text) == minutes


def test_resource_requests_are_checked_against_the_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    out = "cpu*|up|10|64|256000|(null)|2-00:00:00\ngpu|up|4|32|512000|gpu:a100:4(S:0-1)|1-00:00:00\n"
    monkeypatch.setattr(slurm, "_run", lambda cmd, timeout=60: out)
    ok = dict(partition=None, nodes=1, tasks_per_node=1, cpus_per_task=4, gpus_per_node=0, mem_gb=8, timeout_min=60)
    assert slurm.check_request(**ok) == []
    assert slurm.check_request(**{**ok, "partition": "gpu", "gpus_per_node": 4, "tasks_per_node": 4}) == []
    [msg] = slurm.check_request(**{**ok, "gpus_per_node": 1})
    assert "at most 0 GPUs" in msg and "'cpu'" in msg
    [msg] = slurm.check_request(**{**ok, "partition": "gpu", "gpus_per_node": 8})
    assert "gpus_per_node=8" in msg and "at most 4" in msg
    [msg] = slurm.check_request(**{**ok, "partition": "big"})
    assert "'big' does not exist" in msg and "cpu (default), gpu" in msg
    problems = slurm.check_request(**{**ok, "partition": "gpu", "mem_gb": 1000, "timeout_min": 3000, "cpus_per_task": 64})
    assert len(problems) == 3


# ---- sweep records and status ------------------------------------------------------------------------------
def _run_dir(root: Path, run_id: str, **status_fields) -> RunDir:
    rd = RunDir(root / run_id)
    rd.path.mkdir(parents=True)
    rd.identity_file.write_text("{}")
    if status_fields:
        rd.update_status(axes={"steps": 100}, **status_fields)
    return rd


def test_status_lists_every_grid_point_and_resubmits_only_unfinished(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(slurm, "available", lambda: False)
    sweepdir.record_launch(tmp_path, [(r, [f"seed={i}"]) for i, r in enumerate("abcdef")],
                           ["seed=0,1,2,3,4,5"], ["hydra/launcher=slurm", "hydra.mode=MULTIRUN"])
    _run_dir(tmp_path, "a", status="done", step=100).write_done({"final_step": 100, "final_eval_loss": 2.5})
    _run_dir(tmp_path, "b", status="failed", step=40, error="Traceback...\nValueError: bad vocab")
    _run_dir(tmp_path, "c", status="diverged", step=10, error="train loss nan at step 10")
    _run_dir(tmp_path, "d", status="interrupted", step=50)
    _run_dir(tmp_path, "e", status="requeued", step=60)
    rows = {r.run_id: r for r in states.collect(tmp_path)}
    assert [rows[k].state for k in "abcdef"] == ["done", "failed", "diverged", "interrupted", "requeued", "not started"]
    assert rows["b"].detail == "ValueError: bad vocab" and rows["a"].detail == "eval loss 2.5000"
    table = states.format_table(list(rows.values()))
    assert "6 runs:" in table and "1 not started" in table

    assert states.resubmit(tmp_path, list(rows.values()), ["resources.timeout_min=600"], dry_run=True) == 0
    out = capsys.readouterr().out
    assert "resubmitting 3 runs" in out and "hydra.sweeper.only=['b','d','f']" in out
    assert "hydra/launcher=slurm" in out and "hydra.mode=MULTIRUN" not in out
    assert f"hydra.sweep.dir={tmp_path.resolve()}" in out and "['b','d','f'] resources.timeout_min=600" in out


def test_status_reports_a_job_that_slurm_killed(tmp_path: Path, monkeypatch) -> None:
    sweepdir.record_launch(tmp_path, [("a", ["seed=0"]), ("b", ["seed=1"]), ("c", ["seed=2"])], ["seed=0,1,2"], [])
    sweepdir.record_jobs(tmp_path, [("a", ["seed=0"], "7_0"), ("b", ["seed=1"], "7_1"), ("c", ["seed=2"], "7_2")])
    _run_dir(tmp_path, "a", status="running", step=30)
    _run_dir(tmp_path, "b", status="running", step=30)
    log = tmp_path / ".submitit" / "7_0" / "7_0_0_log.err"
    log.parent.mkdir(parents=True)
    log.write_text("slurmstepd: error: Detected 1 oom_kill event in StepId=7.0. Some of the step tasks have been OOM Killed.\n")
    monkeypatch.setattr(slurm, "available", lambda: True)
    monkeypatch.setattr(slurm, "job_states", lambda ids: {"7_0": "OUT_OF_MEMORY", "7_1": "RUNNING", "7_2": "PENDING"})
    rows = {r.run_id: r for r in states.collect(tmp_path)}
    assert rows["a"].state == "failed" and "OUT_OF_MEMORY" in rows["a"].detail and "oom_kill" in rows["a"].detail
    assert rows["b"].state == "running" and rows["c"].state == "pending"
    assert [r.run_id for r in rows.values() if r.state in states.RESUBMITTABLE] == ["a"]


def test_launches_are_recorded_once_and_merged(tmp_path: Path) -> None:
    i = sweepdir.record_launch(tmp_path, [("a", ["x=1"])], ["x=1,2"], ["hydra.mode=MULTIRUN"])
    j = sweepdir.record_launch(tmp_path, [("a", ["x=1"]), ("b", ["x=2"])], ["x=1,2"],
                               ["hydra.mode=MULTIRUN", "hydra.sweeper.only=['b']"])
    k = sweepdir.record_launch(tmp_path, [("c", ["x=3"])], ["x=3"], [])
    grid = json.loads(sweepdir.grid_file(tmp_path).read_text())
    assert (i, j, k) == (0, 0, 1) and len(grid["launches"]) == 2
    assert {r: v["launch"] for r, v in grid["runs"].items()} == {"a": 0, "b": 0, "c": 1}


# ---- configs --------------------------------------------------------------------------------------------
def test_slurm_launcher_takes_site_facts_and_job_shape_from_their_groups(compose) -> None:
    cfg = compose(["hydra/launcher=slurm", "cluster=example", "resources=gpu4", "cluster.partition=h100"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SpecsweepSlurmLauncher")
    assert (launcher.partition, launcher.account, launcher.gpus_per_node, launcher.tasks_per_node) == ("h100", "my_project", 4, 4)
    assert launcher.setup[0].startswith("module load") and launcher.additional_parameters["mail-type"] == "FAIL"
    assert launcher.wait is False and launcher.max_array_size == 1001
    # Neither group enters the run id or the identity: any cluster or GPU count trains the same run.
    assert cfg.run_id == compose([]).run_id
    from specsweep.sweep.grid.identity import identity_of

    assert identity_of(cfg) == identity_of(compose(["resources=cpu"]))
