"""Every config file composes and validates; bad values are caught before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sweep.spec import ConfigError, build_run_spec, identity_of
from tests.conftest import CONF, ROOT

# Groups selected in conf/train.yaml's defaults list (chosen with `group=option`); every other
# folder of conf/ is an optional group (`+group=option`) or a Hydra group (`hydra/x=option`).
PRIVATE = {"local"}  # git-ignored site configs


def _default_groups() -> set[str]:
    entries = OmegaConf.to_container(OmegaConf.load(CONF / "train.yaml"))["defaults"]
    groups = set()
    for entry in entries:
        if isinstance(entry, dict):
            key = next(iter(entry)).removeprefix("optional ").strip()
            if not key.startswith("override "):
                groups.add(key)
    return groups


DEFAULT_GROUPS = _default_groups()


def _all_options() -> list[tuple[str, str]]:
    found = []
    for path in sorted(CONF.rglob("*.yaml")):
        group = path.parent.relative_to(CONF).as_posix()
        if group != "." and group.split("/")[0] not in PRIVATE:
            found.append((group, path.stem))
    return found


def _override(group: str, option: str) -> str:
    if group in DEFAULT_GROUPS or group.startswith("hydra/"):
        return f"{group}={option}"
    return f"+{group}={option}"


def test_the_option_list_covers_the_main_groups() -> None:
    groups = {g for g, _ in _all_options()}
    assert {"model", "optim", "data", "telemetry", "logger", "sweep", "preset"} <= groups


@pytest.mark.parametrize("group,option", _all_options())
def test_every_config_file_composes_and_validates(compose, group: str, option: str) -> None:
    overrides = [_override(group, option)]
    if (group, option) == ("data", "text"):
        overrides.append(f"data.path={ROOT / 'README.md'}")  # any text file validates
    cfg = compose(overrides)
    if group == "data" and option != "synthetic" and "path" in cfg.data.keys() and (group, option) != ("data", "text"):
        # Corpora prepared elsewhere: composition works, and a missing folder is a clear error.
        with pytest.raises(ConfigError, match="data"):
            build_run_spec(compose(overrides + ["data.path=/nonexistent/prepared"]))
        return
    spec = build_run_spec(cfg)
    assert spec.run_id == cfg.run_id
    assert spec.optim_name == cfg.optim.name


@pytest.mark.parametrize("sweep", sorted(p.stem for p in (CONF / "sweep").glob("*.yaml")))
def test_every_named_sweep_declares_grid_params(compose, sweep: str) -> None:
    params = compose([f"+sweep={sweep}"]).hydra.sweeper.params
    assert params, f"conf/sweep/{sweep}.yaml declares no hydra.sweeper.params"


def test_demo_sweep_grid_is_at_least_two_optimizers_by_three_widths(compose) -> None:
    params = compose(["+sweep=demo"]).hydra.sweeper.params
    assert {"adamw", "muon"} <= set(params["optim"].split(","))
    assert len(params["model.ffn_mult"].split(",")) >= 3


def test_default_run_id_and_dirs_have_no_timestamp(compose) -> None:
    cfg = compose([])
    assert cfg.run_id == "gpt-tiny_adamw_w4_s0"
    assert str(cfg.hydra.run.dir).endswith("/default/gpt-tiny_adamw_w4_s0")
    assert cfg.hydra.sweep.subdir == cfg.run_id


def test_run_id_follows_axes_and_extra_overrides(compose) -> None:
    cfg = compose(["optim=muon", "model.ffn_mult=2", "seed=3", "model.n_head=2", "logger=none"])
    assert cfg.run_id == "gpt-tiny_muon_w2_h2_s3"
    assert compose(["model.ffn_width=96"]).run_id == "gpt-tiny_adamw_D96_s0"


def test_key_typo_is_rejected_at_compose_time(compose) -> None:
    with pytest.raises(Exception, match="ffn_mlt"):
        compose(["model.ffn_mlt=2"])


def test_unknown_group_option_is_rejected(compose) -> None:
    with pytest.raises(Exception, match="sgd"):
        compose(["optim=sgd"])


@pytest.mark.parametrize("override,needle", [
    ("model.ffn_mult=0", "ffn_mult"),
    ("model.ffn_mult=-2", "ffn_mult"),
    ("model.ffn_mult=1.01", "not an integer width"),
    ("model.ffn_width=0", "ffn_width"),
    ("model.ffn_width=96.5", "ffn_width"),
    ("train.steps=0", "train.steps"),
    ("telemetry.subsample=0", "telemetry.subsample"),
    ("optim.lr=-1", "lr"),
])
def test_bad_values_raise_config_error_naming_the_key(compose, override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build_run_spec(compose([override]))


def test_missing_text_file_is_a_config_error(compose, tmp_path: Path) -> None:
    cfg = compose(["data=text", f"data.path={tmp_path / 'nope.txt'}"])
    with pytest.raises(ConfigError, match="no such file"):
        build_run_spec(cfg)


def test_identity_ignores_volatile_keys(compose) -> None:
    a = identity_of(compose([]))
    b = identity_of(compose(["train.device=cpu", "logger=none", "train.log_every=3"]))
    c = identity_of(compose(["train.steps=31"]))
    assert a == b
    assert a != c
    assert "logger" not in a and "paths" not in a
    assert OmegaConf.create(a).train.steps == 300
