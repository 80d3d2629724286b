"""The paper's stream advance, per micro-batch and per rank (issue 20 item 5, paper-notes §4b).

The paper's loader (modded-nanogpt's DistributedDataLoader, one per rank) is replayed here as the
stateful rule §4b states, on "virtual" shards (lengths only), and compared with the stateless
sweep.data.order.SequentialStream at every micro-batch of the paper's runs; then on real token
arrays through TokenBatches/StepBatches for several splits of our own run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specsweep.sweep.data.checks import TokenNeeds, check_data
from specsweep.sweep.data.loader import StepBatches, TokenBatches
from specsweep.sweep.data.order import SequentialStream, leading_rows
from specsweep.sweep.data.spec import DataSpec
from specsweep.sweep.errors import DataError
from tests.test_data_order import shards

# kjj0/fineweb10B-gpt2's 103 training shards, in name order (paper-notes §3, §4b)
KJJ0_TRAIN = [100_000_000] * 102 + [55_376_574]


def paper_starts(lengths: list[int], B: int, T: int, rank: int, world: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(shard, first token) of the first ``n`` micro-batches of one rank of the paper's loader:
    start at rank*B*T; after each micro-batch move on by B*T*world, and go to the next shard (the
    first after the last) when pos + B*T*world + 1 passes the shard's end."""
    shard, pos = 0, rank * B * T
    out_s, out_p = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    stride = B * T * world
    for k in range(n):
        out_s[k], out_p[k] = shard, pos
        pos += stride
        if pos + stride + 1 > lengths[shard]:
            shard, pos = (shard + 1) % len(lengths), rank * B * T
    return out_s, out_p


@pytest.mark.parametrize("world,B,accum,steps", [(4, 64, 4, 6000), (8, 16, 8, 8000)], ids=["160m", "350m"])
def test_every_micro_batch_of_the_papers_runs_starts_where_its_loader_started(world, B, accum, steps) -> None:
    T = 512
    stream = SequentialStream(KJJ0_TRAIN, rows=B, seq_len=T, ranks=world, accum=accum)
    n = (steps + 1) * accum  # every micro-batch of training, and the batch after it (the final event)
    k = np.arange(n)
    for rank in range(world):
        shard, start = stream.position(rank, k)
        want_shard, want_start = paper_starts(KJJ0_TRAIN, B, T, rank, world, n)
        assert np.array_equal(shard, want_shard) and np.array_equal(start, want_start), rank
    # and through the step's sequences (paper order): rank p's micro-batch i, row b
    for step in (0, 189, 190, 2500, steps - 1):
        shard, start = stream.block_rows(step, np.arange(world * accum * B))
        p, i, b = np.divmod(np.arange(world * accum * B), accum * B)[0], (np.arange(world * accum * B) // B) % accum, \
            np.arange(world * accum * B) % B
        ws, wp = stream.position(p, step * accum + i)
        assert np.array_equal(shard, ws) and np.array_equal(start, wp + b * T)


def test_the_old_per_step_stream_drifted_after_step_189_the_new_one_does_not() -> None:
    # What the fix changes (paper-notes §4b): one check per step agreed with the paper up to step 189.
    T, seqs = 512, np.arange(1024)
    paper = SequentialStream(KJJ0_TRAIN, rows=64, seq_len=T, ranks=4, accum=4)
    per_step = SequentialStream(KJJ0_TRAIN, rows=1024, seq_len=T)  # data.stream_* null: one block per step

    def tokens(stream: SequentialStream, step: int) -> np.ndarray:  # the step's sequences, as a set
        shard, start = stream.block_rows(step, seqs)
        return np.sort(shard * 10**9 + start)

    same = [np.array_equal(tokens(paper, s), tokens(per_step, s)) for s in range(200)]
    assert all(same[:190]) and not same[190]


@pytest.mark.parametrize("ours", [(1, 2, 8), (2, 2, 4), (4, 2, 2), (4, 1, 4), (4, 4, 1), (8, 2, 1)],
                         ids=lambda v: "world{}-micro{}-accum{}".format(*v))
def test_any_split_of_our_run_reads_the_papers_tokens(ours: tuple[int, int, int]) -> None:
    # The paper's layout: 4 ranks x 2 sequences x accumulation 2 (16 sequences per step) of T = 8;
    # shard lengths chosen so that its ranks leave shards at different micro-batches.
    W, B, A, T = 4, 2, 2, 8
    lengths = [641, 300, 1000, 129]
    src = shards(*lengths)
    world, micro, accum = ours
    assert world * micro * accum == W * B * A
    loaders = []
    for r in range(world):
        steps = TokenBatches(src, micro, T, seed=0, rank=r, world_size=accum * world, order="sequential",
                             stream=(W, B))
        loaders.append(StepBatches(steps, accum, rank=r, world_size=world))
    paper = [paper_starts(lengths, B, T, p, W, 40 * A) for p in range(W)]
    for step in range(40):  # several passes over the shards
        got = torch.cat([loaders[r].get(step * accum + m)[0] for r in range(world) for m in range(accum)])
        want = torch.cat([torch.from_numpy(src[paper[p][0][k]][paper[p][1][k]:paper[p][1][k] + B * T].copy()).view(B, T)
                          for p in range(W) for k in range(step * A, (step + 1) * A)])
        assert torch.equal(got, want), step
    # with our ranks and micro-batch equal to the paper's, each rank holds its paper rank's rows
    if ours == (4, 2, 2):
        for r in range(4):
            x = loaders[r].get(9 * 2 + 1)[0]  # step 9, micro-batch 1
            s, p = paper[r][0][9 * 2 + 1], paper[r][1][9 * 2 + 1]
            assert torch.equal(x.reshape(-1), torch.from_numpy(src[s][p:p + B * T].copy()))


def test_leading_rows_are_the_papers_rank0_rows_for_any_split() -> None:
    # 1024 sequences per step, the first 256 in the paper's order (its rank 0 at 4 GPUs x 64)
    for world, micro, accum in ((1, 64, 16), (4, 64, 4), (8, 64, 2), (2, 16, 32), (1, 1024, 1)):
        held = sum(leading_rows(256, r, m, accum, micro) for r in range(world) for m in range(accum))
        assert held == 256
        for r in range(world):
            for m in range(accum):
                first = (r * accum + m) * micro
                assert leading_rows(256, r, m, accum, micro) == max(0, min(micro, 256 - first))


def test_the_stream_layout_must_divide_the_step_and_be_set_whole() -> None:
    needs = TokenNeeds(seq_len=8, train_rows=16, val_rows=4)
    base = {"kind": "synthetic", "order": "sequential"}
    assert check_data({**base, "stream_ranks": 4, "stream_rows": 2}, needs, files=False) == []
    assert "must divide the 16 sequences" in check_data({**base, "stream_ranks": 3, "stream_rows": 2}, needs,
                                                        files=False)[0]
    assert "set both" in check_data({**base, "stream_ranks": 4}, needs, files=False)[0]
    assert "positive integer" in check_data({**base, "stream_ranks": 0, "stream_rows": 2}, needs, files=False)[0]
    with pytest.raises(DataError, match="must divide"):
        TokenBatches(shards(1000), 2, 8, seed=0, world_size=3, order="sequential", stream=(2, 2))
    assert DataSpec(stream_ranks=4, stream_rows=64).stream() == (4, 64) and DataSpec().stream() is None
