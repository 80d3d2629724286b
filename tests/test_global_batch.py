"""A fixed global batch whatever the GPU count (train.global_batch), and the eval at step 0 (issue 15).

The paper's 524,288 tokens per step are ``train.global_batch`` sequences; ``train.micro_batch`` per
GPU per forward sets the accumulation on a given number of ranks. The split is volatile: the same
run, the same data per step, on 1, 2 or 4 GPUs, and a run resumes on another GPU count.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from specsweep.sweep.data.loader import StepBatches, TokenBatches
from specsweep.sweep.errors import ConfigError
from specsweep.sweep.grid.identity import identity_of
from specsweep.sweep.grid.spec import build_run_spec
from tests.conftest import FAST, run_train
from tests.test_data_order import shards

GLOBAL = ["train.global_batch=8", "train.batch_size=null", "train.grad_accum=null"]


def _step_rows(src: list[np.ndarray], order: str, step: int, micro: int, world: int, accum: int) -> torch.Tensor:
    """The rows every rank reads at ``step``, in (rank, micro-batch) order: the step's global batch
    (rank r holds its rows' block of the step, the paper's order, sweep.data.order)."""
    parts = []
    for rank in range(world):
        steps = TokenBatches(src, micro, 16, seed=3, rank=rank, world_size=accum * world, order=order)
        loader = StepBatches(steps, accum, rank=rank, world_size=world)
        parts.append([loader.get(step * accum + m)[0] for m in range(accum)])
    return torch.cat([parts[r][m] for r in range(world) for m in range(accum)])


@pytest.mark.parametrize("order", ["sequential", "random"])
def test_a_step_reads_the_same_global_batch_however_it_is_split(order: str) -> None:
    src = shards(3000, 2500)
    for step in (0, 1, 5):
        whole = _step_rows(src, order, step, micro=8, world=1, accum=1)
        assert whole.shape == (8, 16)
        for micro, world, accum in ((2, 1, 4), (2, 2, 2), (1, 4, 2), (4, 2, 1)):
            assert torch.equal(_step_rows(src, order, step, micro, world, accum), whole), (micro, world, accum)
    if order == "sequential":  # the paper's stream: consecutive steps are consecutive runs of tokens
        first = _step_rows(src, order, 0, 8, 1, 1).reshape(-1)
        second = _step_rows(src, order, 1, 2, 2, 2).reshape(-1)
        assert int(second[0]) == int(first[-1]) + 1


def test_global_batch_settings_are_checked_before_any_run(compose) -> None:
    spec = build_run_spec(compose([*GLOBAL, "train.micro_batch=2"]))
    assert (spec.train.global_batch, spec.train.micro_batch, spec.train.sequences_per_step) == (8, 2, 8)
    split = spec.train.split(2)
    assert (split.batch_size, split.grad_accum) == (4, 2)  # 2 ranks x 2 sequences, 2 micro-batches
    with pytest.raises(ConfigError, match="train.batch_size: must be null with train.global_batch"):
        build_run_spec(compose(["train.global_batch=8"]))
    with pytest.raises(ConfigError, match="global_batch=8 does not split into micro-batches of "
                                          r"train.micro_batch=3 .*on 1 ranks \(resources"):
        build_run_spec(compose([*GLOBAL, "train.micro_batch=3"]))
    with pytest.raises(ConfigError, match="on 4 ranks"):  # 4 GPUs x 4 sequences > 8
        build_run_spec(compose([*GLOBAL, "train.micro_batch=4", "resources=gpu4"]))
    with pytest.raises(ConfigError, match="train.micro_batch: only with train.global_batch"):
        build_run_spec(compose(["train.micro_batch=2"]))


def test_the_split_is_not_part_of_a_run(compose) -> None:
    one = compose([*GLOBAL, "train.micro_batch=2", "resources=gpu"])
    other = compose([*GLOBAL, "train.micro_batch=4", "resources=gpu4", "train.eval_at_start=true"])
    assert identity_of(one) == identity_of(other)
    assert one.run_id == other.run_id
    assert identity_of(compose([*GLOBAL])) != identity_of(compose(["train.global_batch=16", "train.batch_size=null",
                                                                  "train.grad_accum=null"]))


@pytest.mark.slow
def test_a_run_trains_alike_and_resumes_on_another_split(env: dict, tmp_path: Path) -> None:
    common = [*FAST, *GLOBAL, "train.steps=10", "train.ckpt_every=5"]
    run_train([*common, "train.micro_batch=8", "sweep_name=whole"], env)
    run_train([*common, "train.micro_batch=2", "train.eval_at_start=true", "sweep_name=split"], env)
    (whole,), (split,) = [list((tmp_path / "runs" / n).iterdir()) for n in ("whole", "split")]
    rows = {n: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            for n, d in (("whole", whole), ("split", split))}
    losses = {n: [r["train_loss"] for r in rs if "train_loss" in r] for n, rs in rows.items()}
    # the same data and the same mean gradient, up to the order of float sums
    assert np.allclose(losses["whole"], losses["split"], rtol=1e-3)
    assert [r["tokens"] for r in rows["whole"] if r["step"] == 10 and "train_loss" in r][0] == 8 * 10 * 64
    # eval at step 0 only where asked, before the first train row
    assert rows["split"][0]["step"] == 0 and "eval_loss" in rows["split"][0]
    assert all(r["step"] > 0 for r in rows["whole"])
    # the same run on another split: a relaunch finds it done (not "config changed")
    proc = run_train([*common, "train.micro_batch=4", "sweep_name=whole"], env)
    assert "already done" in proc.stdout + proc.stderr
