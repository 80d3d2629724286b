"""Every config file composes and validates; bad values are caught before any work starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from specsweep.models import GPTConfig
from specsweep.sweep.data import DataSpec
from specsweep.sweep.errors import ConfigError
from specsweep.sweep.grid.identity import container, identity_of
from specsweep.sweep.grid.run_id import digest_of
from specsweep.sweep.grid.spec import build_run_spec
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
        # Any text file big enough for the default batches validates: the built-in corpus is.
        overrides += ["data.path=builtin:tinyshakespeare.txt"]
    cfg = compose(overrides)
    if group == "data" and option != "synthetic" and "path" in cfg.data.keys() and (group, option) != ("data", "text"):
        # Corpora prepared elsewhere: composition works, and a missing folder is a clear error.
        with pytest.raises(ConfigError, match="data"):
            build_run_spec(compose(overrides + ["data.path=/nonexistent/prepared"]))
        return
    if cfg.data.kind != "synthetic" and group != "data":
        # Presets and grids on real corpora (paper: FineWeb, mini: a text file) validate apart from
        # their data files, which are a clear error while they are not there.
        spec = build_run_spec(cfg, check_files=False)
        missing = compose(overrides + ["data.path=/nonexistent/prepared"])
        with pytest.raises(ConfigError, match="data.path: .*/nonexistent/prepared"):
            build_run_spec(missing)
        assert spec.run_id == cfg.run_id
        return
    spec = build_run_spec(cfg)
    assert spec.run_id == cfg.run_id
    assert spec.optimizer.name == cfg.optim.name


def test_run_spec_is_typed_all_the_way_down(compose) -> None:
    overrides = ["model.ffn_mult=2", "optim=muon", "optim.lr=0.01"]
    cfg = compose(overrides)
    spec = build_run_spec(cfg, list(cfg.hydra.overrides.task))
    assert isinstance(spec.model, GPTConfig) and spec.model.ffn_hidden_dim == 128
    assert isinstance(spec.data, DataSpec) and spec.data.kind == "synthetic"
    assert spec.optimizer.name == "muon" and spec.optimizer.hparams["lr"] == 0.01
    # model.vocab_size is unset: the model takes the prepared data's vocabulary
    assert spec.vocab_from_data and spec.model_config(512).vocab_size == 512
    assert spec.axes["ffn_width"] == 128 and spec.axes["optimizer"] == "muon" and spec.axes["optim.lr"] == 0.01
    assert spec.identity == identity_of(cfg) and "logger" not in spec.identity and "logger" in spec.config
    assert f"run_id: gpt-tiny_muon_w2_s0_{spec.run_id_record['hash']}" in spec.config_yaml()
    assert spec.run_id_record == {"hash": spec.run_id[-6:], "tags": {}, "hashed": {"optim.lr": 0.01}}
    fixed = build_run_spec(compose(["model.vocab_size=600"]))
    assert not fixed.vocab_from_data and fixed.model_config(512).vocab_size == 600
    with pytest.raises(ValueError, match="model.vocab_size=600 < data vocabulary 700"):
        fixed.model_config(700)


def test_model_problems_are_gpt_config_messages(compose) -> None:
    raw = container(compose([]))  # a plain dict takes keys the config schema would refuse
    with pytest.raises(ConfigError, match=r"model.ffn_mult must be a number > 0, got 'two'"):
        build_run_spec(compose(["model.ffn_mult=two"]))
    with pytest.raises(ConfigError, match=r"model.d_model \(64\) must be divisible by n_head \(3\)"):
        build_run_spec(compose(["model.n_head=3"]))
    with pytest.raises(ConfigError, match=r"model: .*unexpected keyword argument 'ffn_mlt'"):
        build_run_spec({**raw, "model": {**raw["model"], "ffn_mlt": 2}})


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
    assert cfg.run_id == f"gpt-tiny_muon_w2_s3_{digest_of({'model.n_head': 2})}"
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


@pytest.mark.parametrize("override,needle", [
    ("telemetry.spectrum_every=0", "telemetry.spectrum_every: a positive integer or auto, got 0"),
    ("telemetry.spectrum_every=sometimes", "telemetry.spectrum_every: a positive integer or auto"),
    ("telemetry.decompose_on=tpu", "telemetry.decompose_on: auto | cpu | gpu, got 'tpu'"),
    ("telemetry.decompose_workers=0", "telemetry.decompose_workers: a positive integer or auto"),
    ("telemetry.max_in_flight=0", "telemetry.max_in_flight: must be a positive integer, got 0"),
    ("telemetry.bucket_scope=rank1", "telemetry.bucket_scope: all | rank0, got 'rank1'"),
])
def test_bad_telemetry_at_scale_keys_are_one_clear_line_each(compose, override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        build_run_spec(compose([override]))


def test_telemetry_at_scale_keys_accept_their_values(compose) -> None:
    spec = build_run_spec(compose(["telemetry.spectrum_every=auto", "telemetry.decompose_on=cpu",
                                   "telemetry.decompose_workers=3", "telemetry.max_in_flight=2",
                                   "telemetry.bucket_scope=rank0"]))
    t = spec.telemetry
    assert (t.spectrum_every, t.decompose_on, t.decompose_workers, t.max_in_flight, t.bucket_scope) == (
        "auto", "cpu", 3, 2, "rank0")
    with pytest.raises(ConfigError, match="gpu needs a CUDA device, but train.device=cpu"):
        build_run_spec(compose(["telemetry.decompose_on=gpu", "train.device=cpu"]))
    # where and how spectra are decomposed does not change the records: a relaunch may change it
    moved = ["telemetry.decompose_on=cpu", "telemetry.decompose_workers=3", "telemetry.max_in_flight=2"]
    assert identity_of(compose(moved)) == identity_of(compose([]))
    assert identity_of(compose(["telemetry.spectrum_every=2"])) != identity_of(compose([]))


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


# ---- data inputs checked before any run directory exists (issue 12 item 13) -----------------------

def _shard(path: Path, n_tokens: int) -> Path:
    from specsweep.sweep.data.shards import write_shard

    import numpy as np

    return write_shard(path, np.arange(n_tokens) % 256)


def _bad_text(tmp_path: Path, case: str) -> tuple[Path, Path]:
    """(data.path, the file the error must name) of a broken text corpus."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    good = "All the world's a stage, and all the men and women merely players.\n" * 400
    if case == "empty file":
        (folder / "empty.txt").write_text("")
        return folder / "empty.txt", folder / "empty.txt"
    if case == "binary file":
        (folder / "model.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
        return folder / "model.txt", folder / "model.txt"
    if case == "not utf-8":
        (folder / "latin1.txt").write_bytes("café naïve ".encode("latin-1") * 500)
        return folder / "latin1.txt", folder / "latin1.txt"
    if case == "binary file in a folder":
        (folder / "a.txt").write_text(good)
        (folder / "b.txt").write_bytes(b"\0\1\2" * 1000)
        return folder, folder / "b.txt"
    if case == "empty folder of empty files":
        (folder / "a.txt").write_text("")
        (folder / "b.txt").write_text("")
        return folder, folder
    if case == "too small for the batches":
        (folder / "small.txt").write_text(good[:3000])
        return folder / "small.txt", folder / "small.txt"
    raise AssertionError(case)


@pytest.mark.parametrize("case,needle", [
    ("empty file", "is empty"),
    ("binary file", "is not a text file"),
    ("not utf-8", "is not UTF-8 text (byte 0xe9 at offset 3)"),
    ("binary file in a folder", "is not a text file"),
    ("empty folder of empty files", "is empty"),
    ("too small for the batches", "is too small for this run"),
])
def test_bad_text_data_is_refused_naming_the_file(compose, tmp_path: Path, case: str, needle: str) -> None:
    path, culprit = _bad_text(tmp_path, case)
    with pytest.raises(ConfigError) as err:
        build_run_spec(compose(["data=text", f"data.path={path}", "data.val_fraction=0.5"]))
    text = str(err.value)
    assert needle in text and str(culprit) in text, text


def test_text_data_big_enough_for_the_batches_validates(compose, tmp_path: Path) -> None:
    # The size check is a bound, not a guess: a corpus just big enough passes.
    text = tmp_path / "ok.txt"
    text.write_text("x" * 20_000)
    cfg = compose(["data=text", f"data.path={text}", "data.val_fraction=0.5"])
    assert build_run_spec(cfg).data.path == str(text)
    with pytest.raises(ConfigError, match=f"{text} is too small.*training split.*train.batch_size"):
        build_run_spec(compose(["data=text", f"data.path={text}", "data.val_fraction=0.5", "train.batch_size=200"]))


def test_synthetic_data_too_small_for_the_batches_is_refused(compose) -> None:
    with pytest.raises(ConfigError, match="synthetic corpus is too small.*validation split holds 1000 tokens"):
        build_run_spec(compose(["data.val_tokens=1000"]))


def test_missing_prepared_folder_names_the_whole_prepare_command(compose, tmp_path: Path) -> None:
    # The prepare hint used to drop the data.source the user gave.
    corpus, prepared = tmp_path / "corpus", tmp_path / "prepared"
    with pytest.raises(ConfigError) as err:
        build_run_spec(compose(["data=local", f"data.source={corpus}", f"data.path={prepared}"]))
    assert f"specsweep-prepare data=local data.path={prepared} data.source={corpus}" in str(err.value)
    with pytest.raises(ConfigError, match="data.source: missing"):
        build_run_spec(compose(["data=local", f"data.path={prepared}"]))


def test_damaged_or_unfinished_shard_folders_are_refused_naming_the_file(compose, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(shards / "x_train_000.bin", 50_000)
    val = _shard(shards / "x_val_000.bin", 20_000)
    args = ["data=fineweb10b", "data.source=null", f"data.path={shards}"]
    build_run_spec(compose(args))  # a folder of good shards validates
    val.write_bytes(val.read_bytes()[:-10])
    with pytest.raises(ConfigError, match=f"{val}: truncated shard"):
        build_run_spec(compose(args))
    val.unlink()
    _shard(val, 100)
    with pytest.raises(ConfigError, match=f"{shards} is too small.*validation split holds 100 tokens"):
        build_run_spec(compose(args))
    (shards / "meta.json").write_text("{not json")
    with pytest.raises(ConfigError, match=f"{shards / 'meta.json'} is unreadable or damaged"):
        build_run_spec(compose(args))
    (shards / "meta.json").unlink()
    (shards / "progress.json").write_text("{}")
    with pytest.raises(ConfigError, match="preparation is not finished.*specsweep-prepare data=fineweb10b"):
        build_run_spec(compose(["data=fineweb10b", f"data.path={shards}"]))


def test_data_order_and_eval_budget_are_checked_before_any_run(compose, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.order: random \| sequential, got 'shuffled'"):
        build_run_spec(compose(["data.order=shuffled"]))
    with pytest.raises(ConfigError, match="data.eval_tokens: 1000 is not a multiple of the sequence length 64"):
        build_run_spec(compose(["data.eval_tokens=1000"]))
    # The inputs are the first N tokens, the targets reach one further: N + 1 are needed.
    with pytest.raises(ConfigError, match="validation split holds 8320 tokens, data.eval_tokens=8320 needs"):
        build_run_spec(compose(["data.val_tokens=8320", "data.eval_tokens=8320"]))
    spec = build_run_spec(compose(["data.val_tokens=8321", "data.eval_tokens=8320", "data.order=sequential"]))
    assert spec.data.order == "sequential" and spec.data.eval_tokens == 8320
    # Two shards of 600 tokens offer the 16 random windows of 65 tokens a batch draws, but neither
    # holds one sequential micro-batch of 16 x 64 + 1 tokens.
    shards = tmp_path / "shards"
    shards.mkdir()
    for name in ("x_train_000.bin", "x_train_001.bin"):
        _shard(shards / name, 600)
    _shard(shards / "x_val_000.bin", 20_000)
    args = ["data=fineweb10b", "data.source=null", f"data.path={shards}", "train.batch_size=16"]
    build_run_spec(compose(args))
    with pytest.raises(ConfigError, match=f"{shards} is too small.*data.order=sequential needs a shard of 1025 tokens"):
        build_run_spec(compose([*args, "data.order=sequential"]))
