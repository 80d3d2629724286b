"""Our grid sweeper follows Hydra's conventions on our own config (issue 22 items 13-16):

13. ``hydra.sweep.subdir=${hydra.job.num}`` (Hydra's default layout): each job's number is set before
    its folder is read, and a relaunch keeps every run's number (and so its folder);
14. ``${hydra:...}`` in a job's config resolves in the preflight and in the job, as under the basic
    sweeper (also given on the command line);
15. the automatic sweep name is on each job's config, not in its overrides (override_dirname,
    .hydra/overrides.yaml, the returned overrides);
16. the sweep record keeps the launch's overrides as typed, so ``sweep.status --resubmit`` relaunches
    the grid that was launched (``train.steps=${seed}`` over a swept seed).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra._internal.callbacks import Callbacks
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.types import HydraContext
from omegaconf import OmegaConf

from specsweep.sweep.rundir import sweepdir
from specsweep.sweep.grid.expand import compose_multirun, given_overrides
from specsweep.sweep.grid.preflight import PlannedJob, launch_batches, plan_sweep
from specsweep.sweep.grid.sweep_name import NamedSweepLoader, launch_sweep_name
from tests.conftest import FAST, ROOT, RUN_TIMEOUT_S, run_train

NUM_LAYOUT = "hydra.sweep.subdir=${hydra.job.num}"
HYDRA_KEYS = ["+note=${hydra:runtime.choices.optim}", "+cwd=${hydra:runtime.cwd}"]


def _plan(overrides: list[str]):
    master, loader, jobs = compose_multirun(overrides)
    return plan_sweep(loader, master, jobs, check_files=False)


class _Launcher:
    """Stands in for a launcher: what Hydra's launchers are given (job overrides, initial_job_idx)
    and the job config they compose from them through the sweeper's context."""

    def __init__(self, sweeper: Any) -> None:
        self.hydra_context, self.config = sweeper.hydra_context, sweeper.config
        self.jobs: list[tuple[int, list[str], str]] = []  # (hydra.job.num, overrides, sweep_name)

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        for i, overrides in enumerate(job_overrides):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            self.jobs.append((initial_job_idx + i, list(overrides), str(cfg.sweep_name)))
        return [JobReturn(overrides=list(o)) for o in job_overrides]


def _sweep(overrides: list[str]) -> tuple[_Launcher, str]:
    """Our sweeper on ``-m OVERRIDES`` as Hydra runs it (setup, then sweep with the overrides as
    typed), with a launcher that records instead of training; (the launcher, the sweep's folder)."""
    master, loader, _ = compose_multirun(overrides)
    sweeper = Plugins.instance().instantiate_sweeper(
        config=master, hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks(master)),
        task_function=lambda cfg: None)
    assert type(sweeper).__name__ == "SpecSweeper"
    sweeper.launcher = launcher = _Launcher(sweeper)
    sweeper.sweep(OmegaConf.to_container(master.hydra.overrides.task, resolve=False))
    return launcher, str(sweeper.config.hydra.sweep.dir)


# ---- 13: the job number exists before the folder is read ----------------------------------------------
def test_preflight_numbers_jobs_before_reading_their_folder(env: dict) -> None:
    plan = _plan(["optim=adamw,muon", NUM_LAYOUT, *FAST])
    assert [j.num for j in plan.jobs] == [0, 1]
    assert [j.run_dir.name for j in plan.jobs] == ["0", "1"]
    assert len({j.run_id for j in plan.jobs}) == 2


def test_a_relaunch_keeps_each_runs_job_number() -> None:
    def job(num: int) -> PlannedJob:
        return PlannedJob([f"seed={num}"], f"r{num}", Path(str(num)), "todo", num=num)

    todo = [job(0), job(2), job(3), job(4)]  # run 1 finished: skipped
    nums = [[j.num for j in b] for b in launch_batches(todo, None)]
    assert nums == [[0], [2, 3, 4]]  # each launcher call numbers from its first job's position
    assert [[j.num for j in b] for b in launch_batches(todo, 2)] == [[0], [2, 3], [4]]
    # The SLURM launcher takes each job's number: one array for the whole relaunch.
    assert [[j.num for j in b] for b in launch_batches(todo, None, numbered=True)] == [[0, 2, 3, 4]]


def test_the_sweeper_keeps_each_runs_job_number_on_relaunch(env: dict) -> None:
    launcher, sweep_dir = _sweep(["optim=adamw,muon,lion", NUM_LAYOUT, *FAST])
    assert [(num, o[0]) for num, o, _ in launcher.jobs] == [(0, "optim=adamw"), (1, "optim=muon"), (2, "optim=lion")]
    (Path(sweep_dir) / "1").mkdir(parents=True)
    (Path(sweep_dir) / "1" / "DONE").write_text("{}")  # the middle run finished
    launcher, _ = _sweep(["optim=adamw,muon,lion", NUM_LAYOUT, *FAST])
    assert [(num, o[0]) for num, o, _ in launcher.jobs] == [(0, "optim=adamw"), (2, "optim=lion")]


# ---- 14: ${hydra:...} resolves as in the job ------------------------------------------------------------
def test_hydra_interpolations_resolve_in_the_preflight(env: dict) -> None:
    master, loader, jobs = compose_multirun(["optim=adamw,muon", *HYDRA_KEYS, *FAST])
    assert launch_sweep_name(master, jobs) is not None  # the sweeper's setup reads the overrides as typed
    plan = plan_sweep(loader, master, jobs, check_files=False)
    assert [j.spec.config["note"] for j in plan.jobs] == ["adamw", "muon"]
    assert {j.spec.config["cwd"] for j in plan.jobs} == {os.getcwd()}
    assert not HydraConfig.initialized()  # the main process is left as Hydra leaves it


# ---- 15: the sweep name is not a job override -----------------------------------------------------------
def test_the_sweeper_sets_the_sweep_name_on_each_job_not_in_its_overrides(env: dict) -> None:
    launcher, sweep_dir = _sweep(["optim=adamw,muon", *FAST])
    name = Path(sweep_dir).name
    assert name.startswith("grid-optim-")
    assert [(o, n) for _, o, n in launcher.jobs] == [(["optim=adamw", *FAST], name), (["optim=muon", *FAST], name)]
    recorded = sweepdir.read_grid(Path(sweep_dir))["runs"].values()
    assert all(not any("sweep_name" in o for o in r["overrides"]) for r in recorded)


def test_the_sweep_name_is_set_on_the_job_not_in_its_overrides(env: dict) -> None:
    master, loader, jobs = compose_multirun(["optim=adamw,muon", *FAST])
    name = launch_sweep_name(master, jobs)
    assert name is not None and name.startswith("grid-optim-")
    named = NamedSweepLoader(loader, name)
    cfg = named.load_sweep_config(master, jobs[0])
    assert cfg.sweep_name == name and str(cfg.paths.sweep_dir).endswith(f"/{name}")
    assert not any("sweep_name" in o for o in cfg.hydra.overrides.task)
    assert "sweep_name" not in str(cfg.hydra.job.override_dirname)
    plan = plan_sweep(named, master, jobs, check_files=False)
    assert all(j.run_dir.parent.name == name and j.spec.sweep_name == name for j in plan.jobs)
    # The SLURM launcher pickles its context (the job is composed on the node).
    again = pickle.loads(pickle.dumps(named))
    assert again.sweep_name == name and again.load_sweep_config(master, jobs[1]).sweep_name == name


# ---- 16: the launch is recorded as typed -------------------------------------------------------------------
def test_the_launch_overrides_are_kept_as_typed(env: dict) -> None:
    master, _, _ = compose_multirun(["seed=4,5", "train.steps=${seed}", NUM_LAYOUT, *FAST])
    assert "train.steps=${seed}" in given_overrides(master)  # not train.steps=0 (seed has no value yet)
    assert NUM_LAYOUT in given_overrides(master, "hydra")


# ---- all four on a real grid, relaunched by sweep.status --resubmit ------------------------------------------
@pytest.mark.slow
def test_a_grid_in_hydras_layout_with_hydra_interpolations_resubmits_as_launched(env: dict, tmp_path: Path) -> None:
    run_train(["-m", "seed=4,5", "train.steps=${seed}", NUM_LAYOUT, *HYDRA_KEYS, *FAST], env)
    (sweep_dir,) = [p for p in (tmp_path / "runs").iterdir()]
    assert sweep_dir.name.startswith("grid-seed-")
    for num, steps in ((0, 4), (1, 5)):
        run = sweep_dir / str(num)
        assert json.loads((run / "DONE").read_text())["final_step"] == steps
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["note"] == "adamw" and config["cwd"] == str(ROOT) and config["sweep_name"] == sweep_dir.name
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        hydra_cfg = OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra
        assert not any("sweep_name" in o for o in overrides), overrides
        assert "sweep_name" not in hydra_cfg.job.override_dirname and hydra_cfg.job.num == num
    launch = sweepdir.read_grid(sweep_dir)["launches"][0]
    assert "train.steps=${seed}" in launch["task_overrides"] and NUM_LAYOUT in launch["hydra_overrides"]

    # Run 1 lost: the status finds run 0 in its folder, and the resubmission relaunches the grid as
    # typed (train.steps=5 for seed 5) into run 1's folder (its job number kept).
    done_0 = (sweep_dir / "0" / "DONE").read_text()
    for f in sorted((sweep_dir / "1").rglob("*"), reverse=True):
        f.rmdir() if f.is_dir() else f.unlink()
    (sweep_dir / "1").rmdir()
    status = [sys.executable, "-m", "specsweep.sweep.status", str(sweep_dir)]
    proc = subprocess.run([*status, "--resubmit"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resubmitting 1 runs" in proc.stdout and "train.steps=${seed}" in proc.stdout
    assert json.loads((sweep_dir / "1" / "DONE").read_text())["final_step"] == 5
    assert (sweep_dir / "0" / "DONE").read_text() == done_0
    assert sorted(p.name for p in sweep_dir.iterdir() if not p.name.startswith(".")) == ["0", "1", "multirun.yaml"]
    shown = subprocess.run(status, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S).stdout
    assert "2 runs: 2 done" in shown, shown


def test_the_slurm_launcher_gives_each_job_its_grid_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relaunch that skips finished runs is one array whose jobs keep their hydra.job.num."""
    from hydra_plugins.specsweep_launcher import SpecsweepSlurmLauncher

    class Executor:
        def map_array(self, fn, overrides, dir_keys, nums, *rest):
            self.nums = list(nums)
            return [type("Job", (), {"job_id": f"7_{i}"})() for i in range(len(nums))]

    executor = Executor()
    launcher = SpecsweepSlurmLauncher(wait=False, max_array_size=1000)
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)},
                                                  "sweeper": {"_target_": "hydra_plugins.specsweep_sweeper.SpecSweeper"}}})
    monkeypatch.setattr(launcher, "_check", lambda: None)
    monkeypatch.setattr(launcher, "_executor", lambda: executor)
    launcher.set_run_ids(["a", "c"], [0, 2])
    launcher.launch([["seed=0"], ["seed=2"]], initial_job_idx=0)
    assert executor.nums == [0, 2]
    launcher.launch([["seed=3"]], initial_job_idx=3)  # no numbers given: from initial_job_idx on
    assert executor.nums == [3]
