"""A key that some arms of a mixed grid have and others don't (issue 20 item 1).

conf/optim_shared/keys.yaml gives every optimizer's config a slot for every optimizer's keys, so
``-m optim=adamw,muon optim.lion_betas=[...]`` composes for both arms; the sweep layer applies the
override to the arms whose optimizer takes the key and drops it (run id and identity unaffected)
for the others. A key that no arm takes is still refused, before anything launches.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from specsweep.optim import hparam_defaults, hparam_owners
from specsweep.sweep.errors import ConfigError, SweepError
from specsweep.sweep.grid.expand import CONF_DIR
from specsweep.sweep.grid.planning import make_plan, plan_json
from specsweep.sweep.grid.spec import build_run_spec

GRID = ["optim=adamw,muon,dion", "model.ffn_mult=2"]


def _runs(*overrides: str) -> dict[str, dict]:
    """optimizer name -> its run record in sweep.plan's JSON."""
    runs = plan_json(make_plan([*GRID, *overrides]))["runs"]
    assert len({r["optimizer"] for r in runs}) == len(runs)
    return {r["optimizer"]: r for r in runs}


def test_slots_are_exactly_every_optimizers_keys() -> None:
    slots = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "optim_shared" / "keys.yaml"))
    assert list(slots)[0] == "name" and slots.pop("name") is None
    assert sorted(slots) == sorted(hparam_owners()) and set(slots.values()) == {None}
    # the Lion side of muon/normuon/dion is declared once, with the paper's β (paper-notes §4b)
    lion = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "optim_shared" / "lion_groups.yaml"))
    assert lion["lion_betas"] == [0.9, 0.95]
    assert all(set(lion) <= set(hparam_defaults(n)) for n in ("muon", "normuon", "dion"))


OVERRIDES = {"lion_betas": ("[0.9,0.99]", [0.9, 0.99]), "rank_fraction": ("0.25", 0.25),
             "ns_eps": ("1e-7", 1e-7), "betas": ("[0.8,0.9]", [0.8, 0.9])}


def test_an_override_reaches_the_arms_that_take_it_and_leaves_the_others_alone() -> None:
    base = _runs()
    with_keys = _runs(*(f"optim.{k}={text}" for k, (text, _) in OVERRIDES.items()))
    for name, run in with_keys.items():
        own = hparam_defaults(name)
        for key, (_, value) in OVERRIDES.items():
            if key in own:
                assert run["optimizer_hparams"][key] == value, (name, key)
            else:  # dropped
                assert key not in run["optimizer_hparams"], (name, key)
    # of these, adamw takes betas only
    assert with_keys["adamw"]["optimizer_hparams"] == {**base["adamw"]["optimizer_hparams"], "betas": [0.8, 0.9]}
    only_foreign = _runs("optim.lion_betas=[0.9,0.99]", "optim.ns_eps=1e-7")
    # the same adamw run as without the overrides: same id, same hyper-parameters
    assert only_foreign["adamw"]["run_id"] == base["adamw"]["run_id"]
    assert only_foreign["adamw"]["optimizer_hparams"] == base["adamw"]["optimizer_hparams"]
    assert only_foreign["muon"]["run_id"] != base["muon"]["run_id"]


def test_a_swept_foreign_key_collapses_to_one_run_for_the_arms_without_it() -> None:
    grid = ["optim=adamw,muon", "model.ffn_mult=2", "optim.lion_betas=[0.9,0.95],[0.9,0.99]"]
    runs = plan_json(make_plan(grid))["runs"]
    assert sorted(r["optimizer"] for r in runs) == ["adamw", "muon", "muon"]


def test_a_key_no_arm_takes_is_refused() -> None:
    with pytest.raises(SweepError, match=r"optim.lion_betas: no optimizer of this grid takes it .*muon"):
        make_plan(["optim=adamw,lion", "optim.lion_betas=[0.9,0.99]"])
    with pytest.raises(SweepError, match=r"optim.rank_fraction: no optimizer of this grid takes it"):
        make_plan(["optim=adamw,muon", "optim.rank_fraction=0.25"])
    with pytest.raises(Exception, match="Could not override 'optim.lion_beta'"):  # a typo: no slot, Hydra refuses it
        make_plan(["optim=adamw,muon", "optim.lion_beta=[0.9,0.99]"])


def test_a_single_run_refuses_a_key_its_optimizer_does_not_take(compose) -> None:
    overrides = ["optim=adamw", "optim.lion_betas=[0.9,0.99]"]
    refused = r"optim.lion_betas: not a hyper-parameter of adamw \(only of dion, muon, normuon\)"
    with pytest.raises(ConfigError, match=refused):
        build_run_spec(compose(overrides), overrides)
    ok = ["optim=muon", "optim.lion_betas=[0.9,0.99]"]
    spec = build_run_spec(compose(ok), ok)
    assert spec.optimizer.hparams["lion_betas"] == [0.9, 0.99]
    # the recorded config (config.yaml, W&B) shows muon's keys only, not the other optimizers' slots
    assert set(spec.config["optim"]) == {"name", *hparam_defaults("muon")}


@pytest.mark.slow
def test_a_mixed_grid_trains_with_a_key_only_one_arm_has(env: dict, tmp_path) -> None:
    import json

    from tests.conftest import FAST, run_id_for, run_train

    run_train(["-m", *FAST, "optim=adamw,muon", "optim.lion_betas=[0.9,0.99]", "train.steps=2",
               "sweep_name=mixed"], env)
    adamw = run_id_for(*FAST, "optim=adamw", "train.steps=2", "sweep_name=mixed")
    muon = run_id_for(*FAST, "optim=muon", "optim.lion_betas=[0.9,0.99]", "train.steps=2", "sweep_name=mixed")
    runs = tmp_path / "runs" / "mixed"
    assert sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted([adamw, muon])
    assert "lion_betas" not in json.loads((runs / adamw / "identity.json").read_text())["optim"]
    assert json.loads((runs / muon / "identity.json").read_text())["optim"]["lion_betas"] == [0.9, 0.99]


def test_the_plan_lists_the_paper_optimizer_settings_of_each_run() -> None:
    runs = plan_json(make_plan(["+preset=paper", "optim=adamw,muon,dion", "model.ffn_mult=2"]))["runs"]
    got = {r["optimizer"]: (r["lion_betas"], r["ns_eps"], r["dion_transpose_wide"]) for r in runs}
    assert got == {"adamw": (None, None, None), "muon": ([0.9, 0.95], 1e-8, None),
                   "dion": ([0.9, 0.95], None, True)}
