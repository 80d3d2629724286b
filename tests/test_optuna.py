"""Hydra's other sweepers drive specsweep (issue 16 item 1): the job returns its objective as a float,
here read back by hydra-optuna-sweeper searching the learning rate of one width."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from specsweep.sweep.rundir import RunDir
from specsweep.sweep.run.loop import RunResult
from tests.conftest import FAST, run_id_for, run_train


def test_the_objective_is_a_float_for_every_ending() -> None:
    from specsweep.sweep.run.trainer import objective

    done = RunResult("r", "done", 30, final_train_loss=2.5, final_eval_loss=3.25)
    assert objective(done, "eval_loss") == 3.25 and objective(done, "train_loss") == 2.5
    assert objective(RunResult("r", "diverged", 7, 1e9), "eval_loss") == math.inf
    assert math.isnan(objective(RunResult("r", "interrupted", 12), "eval_loss"))
    assert math.isnan(objective(RunResult("r", "done", 30, 2.5, None), "eval_loss"))


def test_an_unknown_objective_is_a_config_error(compose) -> None:
    from specsweep.sweep.errors import ConfigError
    from specsweep.sweep.grid.spec import build_run_spec

    with pytest.raises(ConfigError, match="train.objective: eval_loss | train_loss"):
        build_run_spec(compose(["train.objective=accuracy"]))


@pytest.mark.slow
def test_optuna_searches_the_learning_rate_and_reads_each_trials_loss(env: dict, tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    # Three trials over two learning rates: Optuna asks for one of them twice; that trial finds its
    # run DONE and returns the loss recorded there without training.
    args = ["-m", "+sweep=lr_search", "hydra/sweeper=optuna", *FAST, "train.steps=3", "model.ffn_mult=2",
            "optim.lr=choice(0.001,0.01)", "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=lr"]
    proc = run_train(args, env)
    sweep_dir = tmp_path / "runs" / "lr_search_adamw_w2"
    runs = {p.name: RunDir(p) for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert sorted(runs) == [run_id_for("+sweep=lr_search", "hydra/sweeper=optuna", *FAST, "train.steps=3",
                                       "model.ffn_mult=2", f"optim.lr={lr}") for lr in ("0.001", "0.01")]
    assert sorted(runs)[0].startswith("gpt-tiny_adamw_w2_lr0.001_s0_")  # the lr is spelled out
    losses = {run.read_status()["axes"]["optim.lr"]: run.read_done()["final_eval_loss"] for run in runs.values()}
    assert all(run.is_done() for run in runs.values())
    assert "is already done" in proc.stdout + proc.stderr  # the repeated trial

    study = optuna.load_study(study_name="lr", storage=storage)
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 3
    for t in trials:  # every trial's value is its run's final eval loss, from DONE
        assert t.value == pytest.approx(losses[t.params["optim.lr"]])
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(losses.values()))
    # Each trial's run records the overrides behind its id.
    record = json.loads(next(iter(runs.values())).identity_file.read_text())["_run_id"]
    assert set(record["tags"]) == {"optim.lr"} and "train.steps" in record["hashed"]

