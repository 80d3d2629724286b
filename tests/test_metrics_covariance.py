"""Streaming covariance: micro-batch and rank merges equal the one-shot two-pass covariance."""

import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metrics import CovarianceAccumulator
from metrics_reference import activations, cov_two_pass


def _rel(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.numpy() - b) / np.linalg.norm(b))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_micro_batches_equal_one_shot(dtype, tol):
    x = activations("relu2", 1001, 40, seed=0)
    acc = CovarianceAccumulator(40, dtype=dtype)
    for chunk in np.split(x, [1, 7, 300, 301, 650]):  # uneven, including a single row
        acc.update(torch.from_numpy(chunk))
    assert acc.n == 1001
    assert acc.cov().dtype == torch.float64
    assert _rel(acc.cov(), cov_two_pass(x)) < tol
    np.testing.assert_allclose(acc.mean.numpy(), x.mean(0), rtol=1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_simulated_ranks_merge_with_between_means_correction(dtype, tol):
    # ranks see shards with very different means: only the between-means term makes them agree
    shards = [activations("random", n, 24, seed=s) + 10.0 * s for s, n in enumerate((50, 3, 400, 120))]
    accs = []
    for shard in shards:
        acc = CovarianceAccumulator(24, dtype=dtype)
        for chunk in np.array_split(shard, 3):
            acc.update(torch.from_numpy(chunk))
        accs.append(acc)
    merged = CovarianceAccumulator(24, dtype=dtype)
    for acc in accs:
        merged.merge(acc)
    assert merged.n == sum(len(s) for s in shards)
    assert _rel(merged.cov(), cov_two_pass(np.concatenate(shards))) < tol
    # merge order does not matter, and the sources are left untouched
    other = accs[3].copy().merge(accs[1]).merge(accs[0]).merge(accs[2])
    assert _rel(other.cov(), cov_two_pass(np.concatenate(shards))) < tol
    assert accs[0].n == 50


def test_fp32_centring_survives_a_large_offset():
    # an uncentred fp32 second moment loses everything here; per-chunk centring does not
    x = activations("random", 4000, 32, seed=1) * 0.01 + 1000.0
    acc = CovarianceAccumulator(32, dtype=torch.float32)
    for chunk in np.array_split(x, 8):
        acc.update(torch.from_numpy(chunk).float())
    assert _rel(acc.cov(), cov_two_pass(x.astype(np.float32).astype(np.float64))) < 1e-3


def test_small_counts_and_paper_denominator():
    acc = CovarianceAccumulator(5)
    assert acc.cov() is None
    acc.update(torch.zeros(0, 5))
    acc.update(torch.ones(1, 5))
    assert acc.n == 1 and acc.cov() is None
    acc.update(torch.zeros(1, 5))
    assert torch.allclose(acc.cov(), torch.full((5, 5), 0.5, dtype=torch.float64))
    assert acc.cov(paper_eps=True)[0, 0].item() == pytest.approx(0.5 / (1 + 1e-12), rel=1e-15)
    with pytest.raises(ValueError):
        acc.update(torch.zeros(3, 4))


def test_rows_kept_only_below_dim():
    acc = CovarianceAccumulator(8, dtype=torch.float64, keep_rows=True)
    acc.update(torch.randn(3, 8, dtype=torch.float64))
    acc.update(torch.randn(4, 8, dtype=torch.float64))
    assert acc.rows().shape == (7, 8)
    acc.update(torch.randn(1, 8, dtype=torch.float64))
    assert acc.rows() is None  # n = D: the covariance path takes over


def _ddp_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        shard = activations("relu2", 60 + 40 * rank, 16, seed=rank) + 5.0 * rank
        acc = CovarianceAccumulator(16, dtype=torch.float64)
        acc.update(torch.from_numpy(shard))
        empty = CovarianceAccumulator(16, dtype=torch.float64)  # a rank with no rows still takes part
        if rank == 1:
            empty.update(torch.from_numpy(shard[:7]))
        acc.all_reduce_()
        empty.all_reduce_()
        if rank == 0:
            torch.save({"cov": acc.cov(), "n": acc.n, "cov_empty": empty.cov(), "n_empty": empty.n}, out_file)
    finally:
        dist.destroy_process_group()


def test_all_reduce_across_real_ranks_equals_one_shot():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.pt")
        # fork: spawn would re-import torch in each rank (~10 s here)
        mp.start_processes(
            _ddp_worker, args=(2, os.path.join(tmp, "init"), out), nprocs=2, join=True, start_method="fork"
        )
        got = torch.load(out)
    shards = [activations("relu2", 60 + 40 * r, 16, seed=r) + 5.0 * r for r in range(2)]
    assert got["n"] == 160
    assert _rel(got["cov"], cov_two_pass(np.concatenate(shards))) < 1e-12
    assert got["n_empty"] == 7
    assert _rel(got["cov_empty"], cov_two_pass(shards[1][:7])) < 1e-12
