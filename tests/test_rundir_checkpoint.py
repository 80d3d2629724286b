"""Run directory files and checkpoints survive kills at the worst moment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from specsweep.sweep.grid.identity import claim
from specsweep.sweep.run.checkpoint import save_checkpoint
from specsweep.sweep.rundir import JsonlAppender, RunConfigChanged, RunDir, iter_jsonl, load_latest_checkpoint


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir(tmp_path)
    save_checkpoint(run, 10, {"w": torch.ones(3)}, keep=2)

    def dying_save(obj, f, *a, **k):  # a kill in the middle of the write
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run, 20, {"w": torch.zeros(3)}, keep=2)
    monkeypatch.undo()
    assert [s for s, _ in run.checkpoints()] == [10]
    state = load_latest_checkpoint(run)
    assert state["step"] == 10 and torch.equal(state["w"], torch.ones(3))


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    save_checkpoint(run, 10, {"w": torch.ones(3)}, keep=3)
    save_checkpoint(run, 20, {"w": torch.zeros(3)}, keep=3)
    run.checkpoint_path(20).write_bytes(b"truncated")
    assert load_latest_checkpoint(run)["step"] == 10


def test_old_checkpoints_are_pruned(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    for step in (1, 2, 3, 4):
        save_checkpoint(run, step, {}, keep=2)
    assert [s for s, _ in run.checkpoints()] == [3, 4]


def test_checkpoint_restores_rng_states(tmp_path: Path) -> None:
    from specsweep.sweep.run.checkpoint import set_rng_state

    run = RunDir(tmp_path)
    torch.manual_seed(0)
    save_checkpoint(run, 1, {}, keep=1)
    expected = torch.rand(4)
    torch.rand(100)
    set_rng_state(load_latest_checkpoint(run)["rng"])
    assert torch.equal(torch.rand(4), expected)


def test_jsonl_truncation_and_torn_lines(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    w = JsonlAppender(run.metrics_file)
    w.write_many({"step": s, "x": float("nan") if s == 2 else s} for s in range(1, 6))
    w.close()
    with open(run.metrics_file, "a") as f:
        f.write('{"step": 6, "x"')  # killed mid-row
    rows = list(iter_jsonl(run.metrics_file))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[1]["x"] is None
    assert run.truncate_jsonl(run.metrics_file, 3) == 3
    assert [r["step"] for r in iter_jsonl(run.metrics_file)] == [1, 2, 3]


def test_claim_refuses_a_changed_identity(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    claim(run, {"train": {"steps": 10}, "seed": 0}, "a: 1\n")
    claim(run, {"seed": 0, "train": {"steps": 10}}, "a: 1\n")  # same identity, key order irrelevant
    with pytest.raises(RunConfigChanged, match=r"train.steps: 10 -> 20"):
        claim(run, {"train": {"steps": 20}, "seed": 0}, "a: 1\n")
    assert json.loads(run.identity_file.read_text())["train"]["steps"] == 10


def test_done_marker_is_written_atomically(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.write_done({"final_step": 3, "loss": float("inf")})
    assert run.is_done() and run.read_done() == {"final_step": 3, "loss": None}
    assert not list(tmp_path.glob(".*tmp*"))
