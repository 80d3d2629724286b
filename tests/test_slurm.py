"""Grids on a real SLURM cluster (a private single-node SLURM 22.05 with accounting, started here).

The session fixture installs the Debian packages if needed (apt-get, as root) and starts munged,
MariaDB, slurmdbd, slurmctld and slurmd from tests/slurm_cluster.py; every daemon is stopped by
PID at the end. Not root / no apt-get: the tests skip with the reason. Every wait has a timeout,
and a failed wait prints the queue, sacct and the jobs' logs.

The time-limit test needs SLURM's own clock (a USR2 sent 20-50 s into a 2-minute job), so its run
is submitted when the module starts and checked last, while the other tests use the cluster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from sweep.rundir import RunDir, iter_jsonl
from sweep.grid.sweepdir import latest_jobs
from tests.conftest import FAST, ROOT, run_train
from tests.slurm_cluster import Cluster, ClusterUnavailable

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("time_limit_run", "reference_started")]

SLURM = ["hydra/launcher=slurm", "resources=smoke"]
# Long enough (~0.05 s a step) for a signal or a requeue to land mid-run.
RUN = [*FAST, "train.steps=300", "train.log_every=1"]
RUN_ID = "gpt-tiny_adamw_w4_smoke_steps300_s0"


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
    proc = subprocess.Popen([sys.executable, "-m", "sweep.train", "-m", f"hydra.sweep.dir={out}", *RUN], cwd=ROOT,
                            env=senv_base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield proc, RunDir(out / RUN_ID)
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture
def reference(reference_started) -> RunDir:
    """What every interrupted SLURM run must reproduce."""
    proc, run = reference_started
    output = proc.communicate(timeout=240)[0] if proc.poll() is None else ""
    assert proc.returncode == 0 and run.is_done(), (output or "")[-3000:]
    return run


TIME_LIMIT_STEPS = 1200  # ~55 s of training alone: still running when the warning signal comes


@pytest.fixture(scope="module")
def time_limit_run(senv_base: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run longer than its SLURM time limit allows before the warning signal (queued, not waited for).

    --time=2 and --signal=USR2@70: slurmctld sends USR2 20-50 s after the start (it checks time
    limits every 30 s), while the run is still training.
    """
    out = tmp_path_factory.mktemp("time_limit")
    submit([*FAST, f"train.steps={TIME_LIMIT_STEPS}", "train.log_every=1", "train.ckpt_every=100000",
            "telemetry.every=500", "resources.timeout_min=2",
            "hydra.launcher.signal_delay_s=70"], senv_base, out)
    return out


# ---- helpers ----------------------------------------------------------------------------------------
def submit(args: list[str], env: dict[str, str], out: Path, wait: bool = False, check: bool = True,
           timeout: float = 240) -> subprocess.CompletedProcess:
    return run_train(["-m", f"hydra.sweep.dir={out}", *SLURM, f"hydra.launcher.wait={str(wait).lower()}", *args],
                     env, timeout=timeout, check=check)


def slurm_cmd(env: dict[str, str], *cmd: str) -> str:
    return subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=60).stdout


def diagnostics(env: dict[str, str], out: Path) -> str:
    parts = ["squeue:\n" + slurm_cmd(env, "squeue", "-r"),
             "sacct:\n" + slurm_cmd(env, "sacct", "-a", "-X", "-D", "-o", "JobID,JobName,State,ExitCode,Elapsed")]
    for log in sorted((out / ".submitit").glob("*/*_log.*"))[-6:]:
        parts.append(f"{log}:\n" + log.read_text(errors="replace")[-1500:])
    return "\n".join(parts)


def wait_for(pred: Callable[[], bool], timeout: float, what: str, env: dict[str, str], out: Path) -> None:
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnostics(env, out)}")
        time.sleep(0.5)


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
    return subprocess.run([sys.executable, "-m", "sweep.status", str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


# ---- tests ------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
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


@pytest.mark.timeout(240)
def test_grid_is_one_job_array_and_finishes(senv: dict, tmp_path: Path) -> None:
    out = tmp_path / "grid"
    args = ["optim=adamw,muon", "model.ffn_mult=1,2", *FAST, "train.steps=8"]
    proc = submit(args, senv, out, wait=True)
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert names == ["gpt-tiny_adamw_w1_smoke_steps8_s0", "gpt-tiny_adamw_w2_smoke_steps8_s0",
                     "gpt-tiny_muon_w1_smoke_steps8_s0", "gpt-tiny_muon_w2_smoke_steps8_s0"]
    assert all(RunDir(out / n).is_done() for n in names)
    jobs = latest_jobs(out)
    arrays = {j["job_id"].split("_")[0] for j in jobs.values()}
    assert len(arrays) == 1 and sorted(j["job_id"].split("_")[1] for j in jobs.values()) == ["0", "1", "2", "3"]
    array = arrays.pop()
    script = (out / ".submitit" / array / f"{array}_submission.sh").read_text()
    assert "#SBATCH --array=0-3%" in script and "#SBATCH --signal=USR2@120" in script
    # The results are on disk a moment before SLURM records the tasks as completed.
    wait_for(lambda: sorted(slurm_cmd(senv, "sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", array).split())
             == [f"{array}_{i}|COMPLETED" for i in range(4)], 60, "4 completed array tasks in sacct", senv, out)
    assert "submitted 4 runs as SLURM job array" in proc.stdout + proc.stderr

    table = status(senv, out)
    assert table.returncode == 0 and "4 runs: 4 done" in table.stdout, table.stdout + table.stderr
    # Relaunching submits nothing: every run is skipped before launch.
    again = submit(args, senv, out, wait=True)
    assert "4 finished and skipped" in again.stdout + again.stderr
    assert len(latest_jobs(out)) == 4 and {j["job_id"].split("_")[0] for j in latest_jobs(out).values()} == {array}


@pytest.mark.timeout(300)
def test_failing_run_is_reported_while_the_others_finish(senv: dict, tmp_path: Path) -> None:
    # model.vocab_size=100 is below the corpus vocabulary (512): that run fails when it builds its model.
    # max_array_size=2 splits the 3 runs into two arrays.
    out = tmp_path / "fail"
    proc = submit(["model.vocab_size=100,512,600", *FAST, "train.steps=6", "cluster.max_array_size=2"],
                  senv, out, wait=True, check=False)
    text = proc.stdout + proc.stderr
    bad = "gpt-tiny_adamw_w4_vocab-size100_smoke_steps6_s0"
    good = ["gpt-tiny_adamw_w4_vocab-size512_smoke_steps6_s0", "gpt-tiny_adamw_w4_vocab-size600_smoke_steps6_s0"]
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


@pytest.mark.timeout(300)
def test_preempted_run_checkpoints_requeues_and_resumes_identically(senv: dict, tmp_path: Path,
                                                                     reference: RunDir) -> None:
    import submitit

    out = tmp_path / "preempt"
    # No periodic checkpoint before the end: only the one written on the signal can resume the run.
    submit([*RUN, "train.ckpt_every=1000", "resources.timeout_min=30"], senv, out)
    run = RunDir(out / RUN_ID)
    job_id = latest_jobs(out)[RUN_ID]["job_id"]
    wait_for(lambda: run.metrics_file.exists() and len(train_rows(run)) >= 20, 150, "step 20", senv, out)
    os.environ["SLURM_CONF"] = senv["SLURM_CONF"]  # submitit's scancel runs in this process
    try:
        submitit.SlurmJob(folder=out / ".submitit" / "%j", job_id=job_id)._interrupt()  # SIGTERM, then USR2
    finally:
        os.environ.pop("SLURM_CONF", None)
    wait_for(run.is_done, 180, "the requeued run to finish", senv, out)
    log = (run.path / "train.log").read_text()
    stopped = re.search(r"stopped at step (\d+), checkpoint written; the job is requeued", log)
    resumed = re.search(r"resumed \S+ from step (\d+)", log)
    assert stopped and resumed and stopped.group(1) == resumed.group(1), log[-3000:]
    assert 20 <= int(stopped.group(1)) < 300
    assert "this job is preempted" in log and "Requeued job" in log
    assert_same_run(run, reference)
    assert latest_jobs(out)[RUN_ID]["job_id"] == job_id  # the same job, requeued


@pytest.mark.timeout(300)
def test_admin_requeue_resumes_from_the_last_periodic_checkpoint(senv: dict, tmp_path: Path,
                                                                  reference: RunDir) -> None:
    out = tmp_path / "requeue"
    submit([*RUN, "train.ckpt_every=10", "resources.timeout_min=30"], senv, out)
    run = RunDir(out / RUN_ID)
    job_id = latest_jobs(out)[RUN_ID]["job_id"]
    wait_for(lambda: run.metrics_file.exists() and len(train_rows(run)) >= 25, 150, "step 25", senv, out)
    subprocess.run(["scontrol", "requeue", job_id], env=senv, check=True, timeout=60)  # no signal to the job
    wait_for(run.is_done, 180, "the requeued run to finish", senv, out)
    log = (run.path / "train.log").read_text()
    resumed = re.search(r"resumed \S+ from step (\d+)", log)
    assert resumed and int(resumed.group(1)) % 10 == 0 and int(resumed.group(1)) >= 20, log[-3000:]
    assert "stopped at step" not in log
    assert_same_run(run, reference)


@pytest.mark.timeout(240)
def test_two_tasks_train_one_run_with_ddp(senv: dict, tmp_path: Path) -> None:
    """One job, two srun tasks (gloo on CPU): the run matches the single-process run, rank 0 writes."""
    common = [*FAST, "train.steps=12", "train.log_every=1", "telemetry.every=6"]
    local = tmp_path / "single"
    run_train(["-m", f"hydra.sweep.dir={local}", *common], senv, timeout=180)
    out = tmp_path / "ddp"
    submit([*common, "resources.tasks_per_node=2"], senv, out, wait=True)
    run_id = "gpt-tiny_adamw_w4_smoke_steps12_s0"
    one, two = RunDir(local / run_id), RunDir(out / run_id)
    assert two.is_done()
    log = (two.path / "train.log").read_text()
    assert "rank 0/2 (slurm" in log and "rank 1/2 (slurm" in log
    assert [s for s, _ in train_rows(two)] == list(range(1, 13))  # one row per step: only rank 0 writes
    assert [v for _, v in train_rows(two)] == pytest.approx([v for _, v in train_rows(one)], rel=1e-4)
    # Telemetry covariances are all-reduced: rank 0 records statistics of both ranks' rows.
    rows = lambda r: {(x["step"], x["layer"], x["site"], x["bucket"]): x for x in iter_jsonl(r.spectra_file)}  # noqa: E731
    r1, r2 = rows(one), rows(two)
    assert sorted(r1) == sorted(r2)
    for k, x in r1.items():
        assert r2[k]["n_rows"] == x["n_rows"]
        if x["status"] == "ok":
            assert r2[k]["hard_rank"] == pytest.approx(x["hard_rank"], rel=1e-3)


@pytest.mark.timeout(360)
def test_time_limit_signal_checkpoints_requeues_and_resumes(senv_base: dict, time_limit_run: Path) -> None:
    out = time_limit_run
    (run_id, job), = latest_jobs(out).items()
    run = RunDir(out / run_id)
    wait_for(run.is_done, 330, "the run with a 2-minute time limit to finish", senv_base, out)
    log = (run.path / "train.log").read_text()
    assert "this job is timed-out" in log and "Requeued job" in log, log[-3000:]
    stops = re.findall(r"stopped at step (\d+), checkpoint written; the job is requeued", log)
    resumes = re.findall(r"resumed \S+ from step (\d+)", log)
    assert stops and stops == resumes, log[-3000:]
    steps = [s for s, _ in train_rows(run)]
    assert steps == list(range(1, TIME_LIMIT_STEPS + 1))  # every step once across the attempts
    job_id = job["job_id"]
    states = slurm_cmd(senv_base, "sacct", "-X", "-D", "-n", "-P", "-o", "JobID,State", "-j", job_id).split()
    assert f"{job_id}|COMPLETED" in states and f"{job_id}|REQUEUED" in states, states
