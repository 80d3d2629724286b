"""Run ids are deterministic, readable and built from the identifying overrides only."""

from sweep.grid.run_id import extra_tags, format_number, make_run_id, width_tag


def test_format_number() -> None:
    assert format_number(4.0) == "4"
    assert format_number(0.0625) == "0.0625"
    assert format_number(1e-3) == "0.001"
    assert format_number(True) == "true"


def test_width_tag() -> None:
    assert width_tag(4, None) == "w4"
    assert width_tag(1.5, None) == "w1.5"
    assert width_tag(4, 3072) == "D3072"


def test_make_run_id_base_and_extras_sorted() -> None:
    rid = make_run_id("gpt-tiny", "adamw", 4, None, 0,
                      overrides=["train.steps=12000", "model.n_head=6", "optim=adamw", "model.ffn_mult=4",
                                 "logger=none", "+sweep=demo", "hydra.sweep.dir=/x"],
                      exclude=["logger"])
    assert rid == "gpt-tiny_adamw_w4_h6_steps12000_s0"


def test_excluded_and_base_keys_never_enter_the_id() -> None:
    assert extra_tags(["seed=3", "optim.rank_fraction=0.5", "train.log_every=5"], ["train.log_every"]) == []


def test_paths_are_named_by_their_last_component() -> None:
    assert extra_tags(["data.path=/a/b/tiny.txt"], []) == ["pathtiny.txt"]
