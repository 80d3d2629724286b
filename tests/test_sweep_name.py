"""The default sweep name of a grid launched without sweep_name= (issue 16 item 3).

End to end (folders on disk, a relaunch, the W&B group): tests/test_train_e2e.py
test_grid_puts_one_directory_per_run_under_sweep_dir.
"""

from __future__ import annotations

from specsweep.sweep.grid.sweep_name import default_sweep_name, grid_sweep_name, name_given

EXCLUDE = ["logger", "paths", "cluster", "resources", "sweep_name", "telemetry", "train.log_every"]


def _grid(**axes: str) -> list[list[str]]:
    """The jobs of a basic sweeper's grid (cartesian product of comma lists)."""
    jobs: list[list[str]] = [[]]
    for key, values in axes.items():
        jobs = [job + [f"{key}={v}"] for job in jobs for v in values.split(",")]
    return jobs


def test_name_shows_the_swept_keys_and_a_hash_of_the_grid() -> None:
    name = grid_sweep_name(_grid(optim="adamw,muon", **{"model.ffn_mult": "1,2,4"}), EXCLUDE)
    assert name.startswith("grid-ffn_mult-optim-") and len(name.rsplit("-", 1)[1]) == 6


def test_same_grid_same_name_whatever_the_order_or_non_identifying_keys() -> None:
    a = grid_sweep_name([j + ["+preset=smoke"] for j in _grid(optim="adamw,muon", **{"model.ffn_mult": "1,2"})],
                        EXCLUDE)
    b = grid_sweep_name([["+preset=smoke", "logger=none", "resources.timeout_min=600", *j]
                         for j in _grid(**{"model.ffn_mult": "2,1"}, optim="muon,adamw")], EXCLUDE)
    assert a == b


def test_different_grids_never_share_a_name() -> None:
    names = {
        grid_sweep_name(_grid(optim="adamw,muon"), EXCLUDE),
        grid_sweep_name(_grid(optim="adamw,muon,dion"), EXCLUDE),
        grid_sweep_name(_grid(optim="adamw,muon", **{"train.steps": "10"}), EXCLUDE),
        grid_sweep_name(_grid(optim="adamw", **{"model.ffn_mult": "1,2"}), EXCLUDE),
        grid_sweep_name(_grid(**{"model.ffn_mult": "1,2"}), EXCLUDE),
    }
    assert len(names) == 5


def test_a_grid_of_nothing_identifying_is_the_default_sweep() -> None:
    assert grid_sweep_name(_grid(logger="none,wandb_offline"), EXCLUDE) == "default"
    assert grid_sweep_name([[]], EXCLUDE) == "default"


def test_a_given_name_wins() -> None:
    jobs = _grid(optim="adamw,muon")
    assert name_given(["sweep_name=mine", "optim=adamw,muon"], "mine")
    assert name_given(["+sweep=demo"], "demo")  # the named grid's file sets it
    assert name_given(["sweep_name=default"], "default")  # asked for explicitly
    assert default_sweep_name(["+sweep=demo"], "demo", jobs, EXCLUDE) is None
    assert default_sweep_name(["optim=adamw,muon"], "default", jobs, EXCLUDE) == grid_sweep_name(jobs, EXCLUDE)


def test_the_sweep_folder_follows_the_name(compose) -> None:
    """hydra.sweep.dir is ${paths.runs_root}/${sweep_name}: the name set before it is read moves it."""
    cfg = compose(["sweep_name=grid-optim-abc123"])
    assert str(cfg.hydra.sweep.dir).endswith("/grid-optim-abc123")
