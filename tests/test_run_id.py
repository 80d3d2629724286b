"""Run ids are short, deterministic and built from the identifying overrides only (issue 16 item 4)."""

from __future__ import annotations

import json

import yaml

from specsweep.sweep.grid.run_id import format_number, make_run_id, width_tag
from tests.conftest import CONF


def test_format_number() -> None:
    assert format_number(4.0) == "4"
    assert format_number(0.0625) == "0.0625"
    assert format_number(1e-3) == "0.001"
    assert format_number(True) == "true"


def test_width_tag() -> None:
    assert width_tag(4, None) == "w4"
    assert width_tag(1.5, None) == "w1.5"
    assert width_tag(4, 3072) == "D3072"


def test_prefix_alone_when_nothing_else_identifies_the_run() -> None:
    rid = make_run_id("gpt-tiny", "adamw", 4, None, 0,
                      overrides=["optim=adamw", "model.ffn_mult=4", "logger=none", "+sweep=demo", "hydra.sweep.dir=/x",
                                 "seed=0", "optim.rank_fraction=0.5", "train.log_every=5"],
                      exclude=["logger", "train.log_every"])
    assert rid == "gpt-tiny_adamw_w4_s0"
    assert make_run_id("gpt2-160m", "dion-r0.0625", 8, None, 1337) == "gpt2-160m_dion-r0.0625_w8_s1337"


def test_other_identifying_overrides_are_one_short_hash_independent_of_order() -> None:
    from specsweep.sweep.grid.run_id import digest_of, run_id_parts

    a = run_id_parts("gpt-tiny", "adamw", 4, None, 0, overrides=["train.steps=12000", "model.n_head=6"])
    b = run_id_parts("gpt-tiny", "adamw", 4, None, 0, overrides=["model.n_head=6", "train.steps=12000"])
    assert a == b and a.run_id == f"gpt-tiny_adamw_w4_s0_{a.digest}" and len(a.digest) == 6
    assert a.hashed == {"model.n_head": "6", "train.steps": "12000"} and a.tags == {}
    assert a.digest == digest_of(a.hashed)
    c = run_id_parts("gpt-tiny", "adamw", 4, None, 0, overrides=["train.steps=12001", "model.n_head=6"])
    assert c.run_id != a.run_id and c.run_id.startswith("gpt-tiny_adamw_w4_s0_")
    assert a.record() == {"hash": a.digest, "tags": {}, "hashed": a.hashed}


def test_swept_keys_of_the_sweeper_are_spelled_out_and_lossy_tags_are_hashed_too() -> None:
    from specsweep.sweep.grid.run_id import digest_of, run_id_parts

    tagged = run_id_parts("gpt2-160m", "adamw", 1, None, 1337, overrides=["model.n_head=6"],
                          tag_keys=["model.n_head"], value_of=lambda k, v: int(v))
    assert tagged.run_id == "gpt2-160m_adamw_w1_h6_s1337" and tagged.tags == {"model.n_head": 6}
    # An Optuna lr of full precision: the tag is rounded, so the exact value goes into the hash.
    lr = 0.0031622776601683794
    rounded = run_id_parts("gpt-tiny", "adamw", 4, None, 0, overrides=[f"optim.lr={lr}"], tag_keys=["optim.lr"],
                           value_of=lambda k, v: float(v))
    assert rounded.run_id == f"gpt-tiny_adamw_w4_lr0.00316228_s0_{digest_of({'optim.lr': lr})}"
    exact = run_id_parts("gpt-tiny", "adamw", 4, None, 0, overrides=["optim.lr=0.001"], tag_keys=["+optim.lr"],
                         value_of=lambda k, v: float(v))
    assert exact.run_id == "gpt-tiny_adamw_w4_lr0.001_s0"


def test_evaluation_cadence_and_settings_never_name_a_run(compose) -> None:
    base = compose([]).run_id
    for override in ("train.eval_every=7", "train.eval_batches=3", "train.log_every=3", "train.ckpt_every=9",
                     "train.objective=train_loss", "telemetry.every=5", "logger=none", "train.device=cpu"):
        assert compose([override]).run_id == base, override


def test_ids_hash_config_values_not_their_spelling(compose) -> None:
    assert compose(["optim.lr=1e-3"]).run_id == compose(["optim.lr=0.001"]).run_id
    assert compose(["optim.lr=1e-3"]).run_id != compose(["optim.lr=2e-3"]).run_id


def test_the_issue_example_is_short_now(compose) -> None:
    long = ["data=text", "data.path=builtin:tinyshakespeare.txt", "model.context_len=128",
            "model.d_model=128", "model.n_layer=4", "train.batch_size=16", "train.eval_every=100",
            "train.steps=500"]
    rid = compose(long).run_id
    assert rid.startswith("gpt-tiny_adamw_w4_s0_") and len(rid) == len("gpt-tiny_adamw_w4_s0_") + 6
    # without the evaluation cadence it is the same run
    assert compose([o for o in long if not o.startswith("train.eval_every")]).run_id == rid


def test_named_grid_axes_are_readable(compose) -> None:
    """A named grid's swept keys (hydra.sweeper.params) are spelled out; the lr search's lr too."""
    cfg = compose(["+sweep=lr_search", "hydra/sweeper=optuna", "optim.lr=0.001", "model.ffn_mult=2"])
    assert cfg.run_id == "gpt-tiny_adamw_w2_lr0.001_s0"
    assert str(cfg.sweep_name) == "lr_search_adamw_w2"


def test_run_id_exclude_holds_every_volatile_key() -> None:
    """A key a relaunch may change (volatile) cannot name a run; the converse does not hold: the
    evaluation and telemetry settings do not name a run, yet a relaunch may not change them."""
    train = yaml.safe_load((CONF / "train.yaml").read_text())
    excluded = set(train["run_id_exclude"])
    # a key is excluded by itself or by a section above it (telemetry covers telemetry.max_in_flight)
    covered = lambda key: any(key == e or key.startswith(e + ".") for e in excluded)  # noqa: E731
    assert [k for k in train["volatile_keys"] if not covered(k)] == []
    assert {"train.eval_every", "train.eval_batches", "telemetry"} <= set(train["run_id_exclude"])
    assert not {"train.eval_every", "train.eval_batches", "telemetry"} & set(train["volatile_keys"])


def test_identity_json_records_the_overrides_behind_the_id(compose, tmp_path) -> None:
    from specsweep.sweep.grid.identity import check_identity, claim
    from specsweep.sweep.grid.spec import build_run_spec
    from specsweep.sweep.rundir import RunDir, json_safe

    cfg = compose(["+preset=smoke", "train.steps=40", "train.log_every=1"])
    spec = build_run_spec(cfg, list(cfg.hydra.overrides.task))
    assert spec.run_id_record == {"hash": spec.run_id.rsplit("_", 1)[1], "tags": {},
                                  "hashed": {"preset": "smoke", "train.steps": 40}}
    run = RunDir(tmp_path / spec.run_id)
    claim(run, spec.identity, spec.config_yaml(), spec.run_id_record)
    assert json.loads(run.identity_file.read_text())["_run_id"] == spec.run_id_record
    assert run.read_run_id_record() == spec.run_id_record
    assert run.read_identity() == json_safe(spec.identity)  # the record is not part of the identity
    check_identity(run, spec.identity)  # a relaunch still matches

