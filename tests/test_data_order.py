"""The paper's sequential data order and evaluation on the first N validation tokens (issue 15).

Shards here hold "position tokens": token i of shard s is ``s * 20_000 + i``, so every row tells
which shard and offset it was cut from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from specsweep.sweep.data.loader import TokenBatches
from specsweep.sweep.data.order import SequentialStream, eval_batch_rows
from specsweep.sweep.data.run_data import load_run_data
from specsweep.sweep.data.spec import DataSpec
from specsweep.sweep.data.shards import write_shard
from specsweep.sweep.errors import DataError
from specsweep.sweep.rundir import RunDir
from tests.conftest import FAST, run_id_for, run_train

SHARD = 20_000


def shards(*lengths: int) -> list[np.ndarray]:
    return [np.arange(s * SHARD, s * SHARD + n, dtype=np.int64) for s, n in enumerate(lengths)]


def where(x: torch.Tensor) -> tuple[int, int]:
    """(shard, offset) of the first token of a batch (or row)."""
    first = int(x.reshape(-1)[0])
    return first // SHARD, first % SHARD


def global_batch(src: list[np.ndarray], k: int, rows: int, world: int, seq_len: int) -> torch.Tensor:
    """Global micro-batch k as the ranks of a ``world``-rank job cut it, rank 0's rows first."""
    parts = [TokenBatches(src, rows // world, seq_len, seed=0, rank=r, world_size=world, order="sequential").get(k)
             for r in range(world)]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


class PaperLoader:
    """The paper's stateful loader, as paper-notes §4 "Data order" describes it (one rank of it)."""

    def __init__(self, src: list[np.ndarray], B: int, T: int, rank: int, world: int) -> None:
        self.src, self.B, self.T, self.rank, self.world = src, B, T, rank, world
        self.shard, self.pos = 0, rank * B * T

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = self.B, self.T
        buf = torch.from_numpy(self.src[self.shard][self.pos:self.pos + B * T + 1].copy())
        self.pos += B * T * self.world
        if self.pos + B * T * self.world + 1 > len(self.src[self.shard]):  # the next stride would pass the end
            self.shard, self.pos = (self.shard + 1) % len(self.src), self.rank * B * T
        return buf[:-1].view(B, T), buf[1:].view(B, T)


# ---------------------------------------------------------------- the stream

def test_sequential_batches_are_contiguous_and_in_order(tmp_path: Path) -> None:
    paths = [write_shard(tmp_path / f"train_{i:03d}.bin", t) for i, t in enumerate(shards(1000, 700))]
    loader = TokenBatches(paths, batch_size=4, seq_len=16, seed=123, order="sequential")
    starts = []
    for k in range(loader.stream.n_batches):
        x, y = loader.get(k)
        assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
        flat = x.reshape(-1)  # one contiguous run of 4 * 16 tokens, then the targets one further
        assert torch.equal(flat, torch.arange(int(flat[0]), int(flat[0]) + 64))
        assert torch.equal(y.reshape(-1), flat + 1)
        starts.append(where(x))
    # (1000 - 1) // 64 = 15 batches from shard 0, then (700 - 1) // 64 = 10 from shard 1, each 64 further
    assert starts == [(0, 64 * i) for i in range(15)] + [(1, 64 * i) for i in range(10)]
    assert torch.equal(loader.get(3)[0], TokenBatches(paths, 4, 16, seed=7, order="sequential").get(3)[0])


@pytest.mark.parametrize("length,fits", [(3 * 64 + 1, 3), (3 * 64, 2), (64, 0), (65, 1)])
def test_a_shard_holds_floor_of_length_minus_one_over_the_stride(length: int, fits: int) -> None:
    # The +1 target token must lie in the same shard: a shard of k*stride + 1 tokens holds k batches.
    assert SequentialStream([length, 1000], rows=4, seq_len=16).per_shard.tolist() == [fits, 15]


def test_sequential_skips_the_shard_tail_and_wraps_after_the_last_shard() -> None:
    src = shards(200, 50, 300)  # stride 64: 3 batches (tail of 7 skipped), none (too short), 4 (tail of 43)
    loader = TokenBatches(src, batch_size=2, seq_len=32, seed=0, order="sequential")
    assert loader.stream.per_shard.tolist() == [3, 0, 4] and loader.stream.n_batches == 7
    order = [where(loader.get(k)[0]) for k in range(15)]
    one_pass = [(0, 0), (0, 64), (0, 128), (2, 0), (2, 64), (2, 128), (2, 192)]
    assert order == one_pass + one_pass + one_pass[:1]
    x, y = loader.get(2)  # the last batch of shard 0 ends at token 192, its targets at 193 <= 199
    assert int(y.max()) == 192 and int(x.max()) == 191
    with pytest.raises(DataError, match="no shard holds one global micro-batch"):
        TokenBatches(shards(60, 64), batch_size=2, seq_len=32, seed=0, order="sequential")
    # a stream micro-batch (stride + 1 tokens) is what a shard must hold, not the whole step
    with pytest.raises(DataError, match=r"no shard holds one global micro-batch.* 2 x 1 sequences of 32 .*need a "
                                        r"shard of 65 tokens; the longest has 64"):
        TokenBatches(shards(60, 64), batch_size=4, seq_len=32, seed=0, order="sequential", stream=(2, 1))


@pytest.mark.parametrize("world", [2, 4])
def test_the_global_batch_is_the_same_on_one_and_on_several_ranks(world: int) -> None:
    src = shards(1000, 333, 700)
    rows, seq_len = 8, 8
    one = TokenBatches(src, rows, seq_len, seed=0, order="sequential")
    for k in list(range(0, 40)) + [1000, 12345]:  # across shard ends and wraps
        x, y = global_batch(src, k, rows, world, seq_len)
        assert torch.equal(x, one.get(k)[0]) and torch.equal(y, one.get(k)[1])


def test_resume_at_k_equals_the_uninterrupted_stream() -> None:
    src = shards(1000, 333, 700)
    straight = PaperLoader(src, B=4, T=16, rank=0, world=1)
    expected = [straight.next() for _ in range(60)]  # over two passes through the shards
    first = TokenBatches(src, 4, 16, seed=0, order="sequential")
    assert all(torch.equal(first.get(k)[0], x) and torch.equal(first.get(k)[1], y) for k, (x, y) in enumerate(expected))
    resumed = TokenBatches(src, 4, 16, seed=0, order="sequential")  # a new process, nothing carried over
    for k in range(37, 60):
        assert torch.equal(resumed.get(k)[0], expected[k][0])


def test_ranks_read_what_the_papers_loader_reads_where_it_keeps_them_together() -> None:
    # (L - 1) % 64 >= 32 for every shard: the paper's rank 1 advances with rank 0.
    src = shards(1000, 700)
    for rank in (0, 1):
        paper = PaperLoader(src, B=2, T=16, rank=rank, world=2)
        ours = TokenBatches(src, 2, 16, seed=0, rank=rank, world_size=2, order="sequential")
        for k in range(40):
            assert torch.equal(ours.get(k)[0], paper.next()[0])


def test_the_papers_loader_desynchronises_ranks_at_a_shard_end_ours_does_not() -> None:
    # The documented difference (sweep.data.order): shard 0 has (641 - 1) % 64 = 0 < 32 = rank 1's
    # offset, so the paper's rank 1 leaves it one batch before rank 0 does.
    src = shards(641, 700)
    paper = [PaperLoader(src, B=2, T=16, rank=r, world=2) for r in (0, 1)]
    ours = [TokenBatches(src, 2, 16, seed=0, rank=r, world_size=2, order="sequential") for r in (0, 1)]
    for k in range(10):
        p0, p1 = paper[0].next()[0], paper[1].next()[0]
        o0, o1 = ours[0].get(k)[0], ours[1].get(k)[0]
        assert torch.equal(o0, p0) and where(o1) == (where(o0)[0], where(o0)[1] + 32)
        if k == 9:  # the last batch of shard 0: the paper's rank 1 already reads shard 1
            assert where(p1) == (1, 32) and where(o1) == (0, 9 * 64 + 32)


# ---------------------------------------------------------------- evaluation on the first N tokens

@pytest.mark.parametrize("world,n_seq", [(1, 12), (2, 12), (4, 12), (1, 16), (4, 16), (2, 10)])
def test_eval_covers_exactly_the_first_n_tokens_on_any_number_of_ranks(world: int, n_seq: int) -> None:
    T, rows = 16, 8
    val = shards(n_seq * T + 1 + 500)[0]  # the split is longer than what is evaluated
    per_rank = [TokenBatches(val, rows // world, T, seed=0, rank=r, world_size=world).first_tokens(n_seq * T)
                for r in range(world)]
    n_batches = {len(b) for b in per_rank}
    assert len(n_batches) == 1  # every rank evaluates equally many batches ...
    assert len({x.shape for b in per_rank for x, _ in b}) == 1  # ... of equally many rows, at most `rows` in all
    xs = torch.cat([per_rank[r][i][0] for i in range(n_batches.pop()) for r in range(world)])
    ys = torch.cat([per_rank[r][i][1] for i in range(len(per_rank[0])) for r in range(world)])
    assert torch.equal(xs.reshape(-1), torch.arange(n_seq * T))  # inputs: tokens 0 .. N-1, in order
    assert torch.equal(ys.reshape(-1), torch.arange(1, n_seq * T + 1))  # targets: 1 .. N
    again = TokenBatches(val, rows // world, T, seed=5, rank=0, world_size=world).first_tokens(n_seq * T)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again, per_rank[0]))  # identical at every evaluation


def test_paper_eval_budget_splits_into_full_batches() -> None:
    # 10,485,760 tokens = 20480 sequences of 512; a global micro-batch of 256 rows on 4 GPUs
    assert eval_batch_rows(20480, 256, 4) == 256 and 20480 // 256 == 80
    assert eval_batch_rows(20480, 96, 1) == 80  # 96 does not divide 20480: the largest divisor below does
    assert eval_batch_rows(12, 8, 4) == 4


def test_eval_budget_errors_name_the_problem() -> None:
    val = shards(1025)[0]
    loader = TokenBatches(val, 4, 16, seed=0)
    assert len(loader.first_tokens(1024)) == 16  # N + 1 tokens are enough
    with pytest.raises(DataError, match="multiple of the sequence length 16"):
        loader.first_tokens(1000)
    with pytest.raises(DataError, match="1025 tokens.*64 windows.*65 are needed"):
        loader.first_tokens(1040)
    with pytest.raises(DataError, match="3 sequences do not split evenly over 2 ranks"):
        TokenBatches(val, 2, 16, seed=0, world_size=2).first_tokens(48)


# ---------------------------------------------------------------- through load_run_data and the trainer

def _load(tmp_path: Path, data: dict, batch_size: int = 4, eval_batches: int = 2, **ranks: int):
    """load_run_data of ``data`` (a config mapping) as the trainer calls it."""
    return load_run_data(DataSpec.from_mapping(data), tmp_path / "cache", seed=0, batch_size=batch_size,
                         seq_len=16, eval_batches=eval_batches, **ranks)


def test_run_data_reads_the_order_and_the_eval_budget(tmp_path: Path) -> None:
    data = {"kind": "synthetic", "vocab_size": 64, "train_tokens": 20_000, "val_tokens": 2_000,
            "order": "sequential", "eval_tokens": 1024}
    run = _load(tmp_path, data, rank=1, world_size=2)
    assert run.train.order == "sequential" and run.n_eval_batches == 8  # 64 sequences, 8 rows a batch
    assert all(x.shape == (4, 16) for x, _ in run.eval_batches)
    train = np.concatenate([np.fromfile(p, dtype="<u2", offset=1024) for p in run.prepared.train_paths])
    assert torch.equal(run.train.get(0)[0].reshape(-1), torch.from_numpy(train[64:128].astype(np.int64)))
    plain = _load(tmp_path, {**data, "order": "random", "eval_tokens": None})
    assert plain.train.order == "random" and plain.n_eval_batches == 2  # train.eval_batches


def test_an_unfinished_folder_met_at_run_time_is_a_data_error(tmp_path: Path) -> None:
    # Preflight passed, then the folder changed under the run: a short DataError, not a traceback.
    folder = tmp_path / "prepared"
    folder.mkdir()
    (folder / "progress.json").write_text(json.dumps({"shards": []}))
    data = {"kind": "shards", "name": "local", "path": str(folder), "source": str(tmp_path / "corpus")}
    with pytest.raises(DataError, match="preparation is not finished.*specsweep-prepare data=local"):
        _load(tmp_path, data)


@pytest.mark.slow
def test_sequential_order_and_eval_budget_train_end_to_end(env: dict, tmp_path: Path) -> None:
    common = [*FAST, "data.order=sequential", "train.steps=12", "train.grad_accum=2"]
    # 4096 tokens = 64 sequences of 64 = 8 batches of 8 rows: the windows of train.eval_batches=8,
    # so both runs train alike and must report the same loss if the trainer evaluates every batch.
    run_train([*common, "data.eval_tokens=4096", "train.eval_batches=2", "sweep_name=budget"], env)
    run_train([*common, "train.eval_batches=8", "sweep_name=batches"], env)
    (budget,), (batches,) = [list((tmp_path / "runs" / name).iterdir()) for name in ("budget", "batches")]
    assert budget.name == run_id_for(*common)  # data.order identifies the run (its hash); the eval budget does not
    assert RunDir(budget).read_run_id_record()["hashed"]["data.order"] == "sequential"
    done = json.loads((budget / "DONE").read_text())
    assert done["final_step"] == 12 and np.isfinite(done["final_eval_loss"])
    assert done["final_eval_loss"] == pytest.approx(json.loads((batches / "DONE").read_text())["final_eval_loss"],
                                                    rel=1e-6)
    config = (budget / "config.yaml").read_text()
    assert "order: sequential" in config and "eval_tokens: 4096" in config
