"""Which launcher and sweeper a command gets (issue 16 items 1-2): a cluster site file selects the
SLURM launcher, the stock submitit_slurm launcher is refused with a pointer to ours, and settings of
another sweeper without that sweeper are a clear error."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from tests.conftest import FAST, run_train

OURS = "hydra_plugins.specsweep_launcher.SpecsweepSlurmLauncher"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def _short_error_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k != "HYDRA_FULL_ERROR"}


def test_a_cluster_site_file_selects_the_slurm_launcher(compose) -> None:
    cfg = compose(["cluster=example", "resources=gpu"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == OURS
    assert launcher["partition"] == "gpu" and launcher["account"] == "my_project"  # cluster= applies
    assert launcher["gpus_per_node"] == 1 and launcher["timeout_min"] == 720       # resources= applies
    # The command line still wins over the site file; without a site file, runs stay local.
    assert compose(["cluster=example", "hydra/launcher=basic"]).hydra.launcher._target_ == BASIC
    assert compose(["resources=gpu"]).hydra.launcher._target_ == BASIC


def test_the_stock_submitit_slurm_launcher_is_refused_with_a_pointer(env: dict, tmp_path: Path) -> None:
    proc = run_train(["-m", "hydra/launcher=submitit_slurm", "optim=adamw,muon", *FAST], _short_error_env(env),
                     check=False)
    assert proc.returncode != 0
    assert "hydra/launcher=submitit_slurm" in proc.stderr and "Use hydra/launcher=slurm" in proc.stderr, proc.stderr
    assert "cluster=" in proc.stderr and "specsweep-status" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing submitted, no sweep folder


def test_another_sweepers_settings_need_that_sweeper(env: dict, tmp_path: Path) -> None:
    proc = run_train(["-m", "+sweep=lr_search", *FAST], _short_error_env(env), check=False)
    assert proc.returncode != 0
    assert "hydra/sweeper=optuna" in proc.stderr and "hydra.sweeper.n_trials" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_the_slurm_launcher_waits_for_a_sweeper_that_needs_results() -> None:
    """Optuna proposes the next trials from the results: hydra.launcher.wait=false cannot apply."""
    from hydra_plugins.specsweep_launcher import SpecsweepSlurmLauncher

    launcher = SpecsweepSlurmLauncher(wait=False)
    launcher.config = OmegaConf.create({"hydra": {"sweeper": {
        "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"}}})
    assert launcher._results_needed()
    launcher.config = OmegaConf.create({"hydra": {"sweeper": {"_target_": "hydra_plugins.specsweep_sweeper.SpecSweeper"}}})
    assert not launcher._results_needed()
