"""Grids on a real SLURM cluster (a private single-node SLURM 22.05 with accounting, started here).

The session fixture installs the Debian packages if needed (apt-get, as root) and starts munged,
MariaDB, slurmdbd, slurmctld and slurmd from tests/slurm_cluster.py; every daemon is stopped by
PID at the end. Not root / no apt-get: the tests skip with the reason. Every wait has a timeout,
and a failed wait prints the queue, sacct and the jobs' logs.

Nothing here depends on how fast the machine trains: a run that must be interrupted mid-way is held
at a known step (SPECSWEEP_HOLD, sweep/run/hold.py; the jobs inherit the submitting environment) until
the signal or the requeue has landed. The time-limit test waits for SLURM's own clock (a USR2 sent
30-60 s into a 2-minute job), so its run is submitted when the module starts and checked last, while
the other tests use the cluster.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from specsweep.sweep.rundir import RunDir, iter_jsonl
from specsweep.sweep.rundir.sweepdir import latest_jobs
from tests.conftest import (FAST, HELD_TIMEOUT_S, ROOT, RUN_TIMEOUT_S, hold_env, pid_alive, release, run_id_for,
                            run_train, user_project, wait_until_held)
from tests.slurm_cluster import Cluster, ClusterUnavailable

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("time_limit_run", "reference_started")]

SLURM = ["hydra/launcher=slurm", "resources=smoke"]
# Interrupted mid-run by holding it at a step (never by hoping it is still training).
RUN = [*FAST, "train.steps=40", "train.log_every=1"]
RUN_ID = run_id_for(*RUN)


# ---- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    if os.environ.get("SPECSWEEP_SKIP_SLURM"):
        pytest.skip("SPECSWEEP_SKIP_SLURM is set")
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except ClusterUnavailable as e:
        pytest.skip(f"no SLURM test cluster on this machine: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def senv_base(slurm: Cluster, tmp_path_factory: pytest.TempPathFactory, data_cache: Path) -> dict[str, str]:
    base = tmp_path_factory.mktemp("slurm_env")
    return {
        **os.environ, **slurm.env,
        "SPECSWEEP_RUNS": str(base / "runs"), "SPECSWEEP_DATA": str(data_cache),
        "WANDB_MODE": "offline", "WANDB_DIR": str(base / "wandb"), "WANDB_SILENT": "true",
        "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1",
    }


@pytest.fixture
def senv(senv_base: dict[str, str], env: dict[str, str]) -> dict[str, str]:
    """The usual test environment (tmp runs/data/W&B folders) plus SLURM_CONF of the test cluster."""
    return {**env, "SLURM_CONF": senv_base["SLURM_CONF"]}


@pytest.fixture(scope="module")
def reference_started(senv_base: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """RUN trained locally, uninterrupted (started with the module, in the background)."""
    out = tmp_path_factory.mktemp("reference")
    proc = subprocess.Popen([sys.executable, "-m", "specsweep.sweep.train", "-m", f"hydra.sweep.dir={out}", *RUN], cwd=ROOT,
                            env=senv_base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield proc, RunDir(out / RUN_ID)
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture
def reference(reference_started) -> RunDir:
    """What every interrupted SLURM run must reproduce."""
    proc, run = reference_started
    # Started with the module, it may or may not have finished yet: wait for it (hang guard).
    output = proc.communicate(timeout=RUN_TIMEOUT_S)[0] if proc.poll() is None else ""
    assert proc.returncode == 0 and run.is_done(), (output or "")[-3000:]
    return run


TIME_LIMIT_STEPS = 40
TIME_LIMIT_HOLD = 10  # held there until SLURM's warning signal: still running when it comes


@pytest.fixture(scope="module")
def time_limit_run(senv_base: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run held at a step until its SLURM time-limit warning comes (queued, not waited for).

    --time=2 and --signal=USR2@60: slurmctld sends USR2 30-60 s after the start (it checks time
    limits every 30 s) and kills at 120 s. The run holds after step TIME_LIMIT_HOLD until the signal,
    however fast it trains. Returns the sweep folder and the hold's gate folder.
    """
    out, gate = tmp_path_factory.mktemp("time_limit"), tmp_path_factory.mktemp("time_limit_gate")
    submit([*FAST, f"train.steps={TIME_LIMIT_STEPS}", "train.log_every=1", "train.ckpt_every=100000",
            "resources.timeout_min=2", "hydra.launcher.signal_delay_s=60"],
           hold_env(senv_base, gate, TIME_LIMIT_HOLD), out)
    return out, gate


# ---- helpers ----------------------------------------------------------------------------------------
def submit(args: list[str], env: dict[str, str], out: Path, wait: bool = False, check: bool = True, cwd: Path = ROOT,
           timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Launch on the test cluster; with ``wait`` until the jobs end (``timeout``: hang guard)."""
    return run_train(["-m", f"hydra.sweep.dir={out}", *SLURM, f"hydra.launcher.wait={str(wait).lower()}", *args],
                     env, timeout=timeout, check=check, cwd=cwd)


def slurm_cmd(env: dict[str, str], *cmd: str) -> str:
    return subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=60).stdout  # hang guard


def diagnostics(env: dict[str, str], out: Path) -> str:
    parts = ["squeue:\n" + slurm_cmd(env, "squeue", "-r"),
             "sacct:\n" + slurm_cmd(env, "sacct", "-a", "-X", "-D", "-o", "JobID,JobName,State,ExitCode,Elapsed")]
    for log in sorted((out / ".submitit").glob("*/*_log.*"))[-6:]:
        parts.append(f"{log}:\n" + log.read_text(errors="replace")[-1500:])
    return "\n".join(parts)


def wait_for(pred: Callable[[], bool], timeout: float, what: str, env: dict[str, str], out: Path) -> None:
    """Poll ``pred`` until true; ``timeout`` only turns a hang into a failure (with diagnostics)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnostics(env, out)}")
        time.sleep(0.5)  # polling interval only


def wait_held(gate: Path, step: int, run: RunDir, env: dict[str, str], out: Path) -> int:
    """Wait until the SLURM job's run is held after ``step`` (it waits there); return its pid."""
    def gone() -> str | None:
        status = run.read_status().get("status")
        return f"it is {status}" if run.is_done() or status in ("failed", "diverged") else None

    try:
        return wait_until_held(gate, step, gone, timeout=HELD_TIMEOUT_S)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{diagnostics(env, out)}") from None


def train_log(run: RunDir) -> str:
    path = run.path / "train.log"
    return path.read_text(errors="replace") if path.exists() else ""


def train_rows(run: RunDir) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in iter_jsonl(run.metrics_file) if "train_loss" in r]


def eval_rows(run: RunDir) -> list[tuple[int, float]]:
    return [(r["step"], r["eval_loss"]) for r in iter_jsonl(run.metrics_file) if "eval_loss" in r]


def assert_same_run(run: RunDir, reference: RunDir) -> None:
    """Same curve as the uninterrupted run: every step once, no gap, same values, same spectra."""
    a, b = train_rows(reference), train_rows(run)
    assert [s for s, _ in b] == [s for s, _ in a]
    assert [v for _, v in b] == pytest.approx([v for _, v in a], rel=1e-6, abs=1e-7)
    ea, eb = eval_rows(reference), eval_rows(run)
    assert [s for s, _ in eb] == [s for s, _ in ea]
    assert [v for _, v in eb] == pytest.approx([v for _, v in ea], rel=1e-6)
    key = lambda r: (r["step"], r["layer"], r["site"], r["bucket"])  # noqa: E731
    sa = {key(r): r["hard_rank"] for r in iter_jsonl(reference.spectra_file)}
    sb = {key(r): r["hard_rank"] for r in iter_jsonl(run.spectra_file)}
    assert sorted(sb) == sorted(sa)
    assert run.read_done()["final_eval_loss"] == pytest.approx(reference.read_done()["final_eval_loss"], rel=1e-6)


def status(env: dict[str, str], out: Path, *args: str) -> subprocess.CompletedProcess:
    """``specsweep-status OUT ARGS`` (``--resubmit`` may wait for jobs: the timeout is a hang guard)."""
    return subprocess.run([sys.executable, "-m", "specsweep.sweep.status", str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


# ---- tests ------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)  # hang guards, like every timeout here: the first test also starts the cluster
@pytest.mark.parametrize("args,needle", [
    (["resources.gpus_per_node=4"], "resources.gpus_per_node=4 but nodes of partition 'debug' have at most 0 GPUs"),
    (["cluster.partition=nope"], "partition 'nope' does not exist on this cluster"),
    (["cluster.partition=nope", "hydra.launcher.check_resources=false"], "Invalid partition name specified"),
])
def test_bad_resource_requests_are_refused_before_anything_runs(senv: dict, tmp_path: Path, args: list,
                                                                 needle: str) -> None:
    out = tmp_path / "bad"
    proc = submit([*FAST, "train.steps=2", *args], senv, out, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert needle in text, text[-3000:]
    assert "not submitted" in text or "sbatch refused" in text
    assert not latest_jobs(out)


@pytest.mark.timeout(480)
def test_grid_is_one_job_array_and_finishes(senv: dict, tmp_path: Path) -> None:
    out = tmp_path / "grid"
    args = ["optim=adamw,muon", "model.ffn_mult=1,2", *FAST, "train.steps=8"]
    # Submitted from a user's folder with its own models/, sweep/, ... packages: the jobs start there.
    proc = submit(args, senv, out, wait=True, cwd=user_project(tmp_path / "project"))
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert names == sorted(run_id_for(f"optim={o}", f"model.ffn_mult={w}", *FAST, "train.steps=8")
                           for o in ("adamw", "muon") for w in (1, 2))
    assert all(RunDir(out / n).is_done() for n in names)
    jobs = latest_jobs(out)
    arrays = {j["job_id"].split("_")[0] for j in jobs.values()}
    assert len(arrays) == 1 and sorted(j["job_id"].split("_")[1] for j in jobs.values()) == ["0", "1", "2", "3"]
    array = arrays.pop()
    script = (out / ".submitit" / array / f"{array}_submission.sh").read_text()
    assert "#SBATCH --array=0-3%" in script and "#SBATCH --signal=USR2@120" in script
    # The results are on disk a moment before SLURM records the tasks as completed.
    wait_for(lambda: sorted(slurm_cmd(senv, "sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", array).split())
             == [f"{array}_{i}|COMPLETED" for i in range(4)], 120, "4 completed array tasks in sacct", senv, out)
    assert "submitted 4 runs as SLURM job array" in proc.stdout + proc.stderr

    table = status(senv, out)
    assert table.returncode == 0 and "4 runs: 4 done" in table.stdout, table.stdout + table.stderr
    # Relaunching submits nothing: every run is skipped before launch.
    again = submit(args, senv, out, wait=True)
    assert "4 finished and skipped" in again.stdout + again.stderr
    assert len(latest_jobs(out)) == 4 and {j["job_id"].split("_")[0] for j in latest_jobs(out).values()} == {array}


@pytest.mark.timeout(480)
def test_failing_run_is_reported_while_the_others_finish(senv: dict, tmp_path: Path) -> None:
    # model.vocab_size=100 is below the corpus vocabulary (512): that run fails when it builds its model.
    # max_array_size=2 splits the 3 runs into two arrays.
    out = tmp_path / "fail"
    proc = submit(["model.vocab_size=100,512,600", *FAST, "train.steps=6", "cluster.max_array_size=2"],
                  senv, out, wait=True, check=False)
    text = proc.stdout + proc.stderr
    bad, *good = (run_id_for(f"model.vocab_size={v}", *FAST, "train.steps=6") for v in (100, 512, 600))
    assert proc.returncode != 0
    assert "1 of 3 runs failed" in text and bad in text, text[-3000:]
    assert all(RunDir(out / g).is_done() for g in good)
    assert RunDir(out / bad).read_status()["status"] == "failed"
    assert len({j["job_id"].split("_")[0] for j in latest_jobs(out).values()}) == 2  # split at MaxArraySize

    table = status(senv, out)
    line = next(ln for ln in table.stdout.splitlines() if bad in ln)
    assert line.startswith("failed") and "vocab" in line, table.stdout
    assert "3 runs: 2 done, 1 failed" in table.stdout
    dry = status(senv, out, "--resubmit", "--dry-run")
    assert "resubmitting 1 runs" in dry.stdout and f"hydra.sweeper.only=['{bad}']" in dry.stdout, dry.stdout
    # A real resubmission relaunches the recorded command (here: wait=true) for the failed run alone.
    before = latest_jobs(out)
    again = status(senv, out, "--resubmit")
    text = again.stdout + again.stderr
    assert "launching 1 of the grid's runs" in text and "2 finished and skipped" in text, text[-3000:]
    assert again.returncode != 0 and "1 of 1 runs failed" in text  # the same bad vocabulary, failed again
    after = latest_jobs(out)
    assert after[bad]["job_id"] != before[bad]["job_id"] and all(after[g] == before[g] for g in good)


@pytest.mark.timeout(480)
def test_preempted_run_checkpoints_requeues_and_resumes_identically(senv: dict, tmp_path: Path,
                                                                     reference: RunDir) -> None:
    import submitit

    out, gate = tmp_path / "preempt", tmp_path / "gate"
    # No periodic checkpoint before the end: only the one written on the signal can resume the run.
    # Held after step 20 until the signal lands; the requeued attempt resumes after 20 and never holds again.
    submit([*RUN, "train.ckpt_every=1000", "resources.timeout_min=30"], hold_env(senv, gate, 20), out)
    run = RunDir(out / RUN_ID)
    job_id = latest_jobs(out)[RUN_ID]["job_id"]
    wait_held(gate, 20, run, senv, out)
    os.environ["SLURM_CONF"] = senv["SLURM_CONF"]  # submitit's scancel runs in this process
    try:
        submitit.SlurmJob(folder=out / ".submitit" / "%j", job_id=job_id)._interrupt()  # SIGTERM, then USR2
    finally:
        os.environ.pop("SLURM_CONF", None)
    # Hang guard: the stop, the requeue (SLURM schedules every 5 s here) and 20 steps take seconds.
    wait_for(run.is_done, RUN_TIMEOUT_S, "the requeued run to finish", senv, out)
    log = train_log(run)
    stopped = re.search(r"stopped at step (\d+), checkpoint written; the job is requeued", log)
    resumed = re.search(r"resumed \S+ from step (\d+)", log)
    assert stopped and resumed and stopped.group(1) == resumed.group(1) == "20", log[-3000:]
    assert "this job is preempted" in log and "Requeued job" in log
    assert_same_run(run, reference)
    assert latest_jobs(out)[RUN_ID]["job_id"] == job_id  # the same job, requeued


@pytest.mark.timeout(480)
def test_admin_requeue_resumes_from_the_last_periodic_checkpoint(senv: dict, tmp_path: Path,
                                                                  reference: RunDir) -> None:
    out, gate = tmp_path / "requeue", tmp_path / "gate"
    # Held after step 25, between the periodic checkpoints at 20 and 30, until the requeue has landed.
    submit([*RUN, "train.ckpt_every=10", "resources.timeout_min=30"], hold_env(senv, gate, 25), out)
    run = RunDir(out / RUN_ID)
    job_id = latest_jobs(out)[RUN_ID]["job_id"]
    pid = wait_held(gate, 25, run, senv, out)
    subprocess.run(["scontrol", "requeue", job_id], env=senv, check=True, timeout=60)
    # SLURM ends the first attempt (SIGTERM, SIGKILL after KillWait=5 s); the bound is a hang guard.
    wait_for(lambda: not pid_alive(pid), 120, "the first attempt to end", senv, out)
    release(gate, 25)  # the requeued attempt passes step 25 again: let it go on
    wait_for(run.is_done, RUN_TIMEOUT_S, "the requeued run to finish", senv, out)
    log = train_log(run)
    resumed = re.search(r"resumed \S+ from step (\d+)", log)
    stopped = re.search(r"stopped at step (\d+)", log)
    # A run that does not act on SLURM's SIGTERM dies by SIGKILL and resumes from its last periodic
    # checkpoint (20); one that checkpoints on SIGTERM resumes where it was held (25).
    assert resumed and resumed.group(1) == ("25" if stopped else "20"), log[-3000:]
    assert not stopped or stopped.group(1) == "25", log[-3000:]
    assert_same_run(run, reference)


@pytest.mark.timeout(480)
def test_two_tasks_train_one_run_with_ddp(senv: dict, tmp_path: Path) -> None:
    """One job, two srun tasks (gloo on CPU): the run matches the single-process run, rank 0 writes."""
    common = [*FAST, "train.steps=12", "train.log_every=1", "telemetry.every=6"]
    local = tmp_path / "single"
    run_train(["-m", f"hydra.sweep.dir={local}", *common], senv)
    out = tmp_path / "ddp"
    submit([*common, "resources.tasks_per_node=2"], senv, out, wait=True)
    run_id = run_id_for(*common)
    one, two = RunDir(local / run_id), RunDir(out / run_id)
    assert two.is_done()
    log = (two.path / "train.log").read_text()
    assert "rank 0/2 (slurm" in log and "rank 1/2 (slurm" in log
    assert [s for s, _ in train_rows(two)] == list(range(1, 13))  # one row per step: only rank 0 writes
    assert [v for _, v in train_rows(two)] == pytest.approx([v for _, v in train_rows(one)], rel=1e-4)
    # Telemetry covariances are reduced onto owner ranks: rank 0 records statistics of both ranks' rows.
    rows = lambda r: {(x["step"], x["layer"], x["site"], x["bucket"]): x for x in iter_jsonl(r.spectra_file)}  # noqa: E731
    r1, r2 = rows(one), rows(two)
    assert sorted(r1) == sorted(r2)
    for k, x in r1.items():
        assert r2[k]["n_rows"] == x["n_rows"]
        if x["status"] == "ok":
            assert r2[k]["hard_rank"] == pytest.approx(x["hard_rank"], rel=1e-3)


@pytest.mark.timeout(600)
def test_time_limit_signal_checkpoints_requeues_and_resumes(senv_base: dict,
                                                            time_limit_run: tuple[Path, Path]) -> None:
    out, gate = time_limit_run
    (run_id, job), = latest_jobs(out).items()
    run = RunDir(out / run_id)
    # SLURM's clock: the job starts when a CPU is free, USR2 comes 30-60 s later. Hang guard.
    wait_for(lambda: "stopped at step" in train_log(run), 420, "the time-limit signal to stop the run", senv_base, out)
    # A signal that came before the hold step (a slow start) leaves a later attempt to pass it again.
    release(gate)
    wait_for(run.is_done, RUN_TIMEOUT_S, "the run with a 2-minute time limit to finish", senv_base, out)
    log = train_log(run)
    assert "this job is timed-out" in log and "Requeued job" in log, log[-3000:]
    stops = re.findall(r"stopped at step (\d+), checkpoint written; the job is requeued", log)
    resumes = re.findall(r"resumed \S+ from step (\d+)", log)
    # Held until the signal: it stops at the hold step (or before it, if the signal beat training there).
    assert stops and resumes and resumes[0] == stops[0] and int(stops[0]) <= TIME_LIMIT_HOLD, log[-3000:]
    assert set(resumes) <= set(stops), log[-3000:]  # every attempt resumes from a checkpoint written on a stop
    steps = [s for s, _ in train_rows(run)]
    assert steps == list(range(1, TIME_LIMIT_STEPS + 1))  # every step once across the attempts
    job_id = job["job_id"]
    states = slurm_cmd(senv_base, "sacct", "-X", "-D", "-n", "-P", "-o", "JobID,State", "-j", job_id).split()
    assert f"{job_id}|COMPLETED" in states and f"{job_id}|REQUEUED" in states, states
