"""Streaming covariance: micro-batch and rank merges equal the one-shot two-pass covariance."""

import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from specsweep.metrics import CovarianceAccumulator
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


# ---------------------------------------------------------------- capture precision (issue 14)
def _soft_hard(cov: np.ndarray) -> tuple[float, float]:
    lam = np.clip(np.linalg.eigvalsh(cov), 0.0, None)
    p = lam / lam.sum()
    nz = p[p > 0]
    return float(np.exp(-(nz * np.log(nz)).sum())), float(lam.sum() ** 2 / (lam**2).sum())


def _bf16_errors(x: np.ndarray, device: str, bf16_matmul, chunks: int = 8) -> tuple[float, float, float]:
    """(cov, soft rank, hard rank) relative errors of the accumulator against fp64 of the same
    bf16-valued rows (bf16 is what autocast activations are)."""
    xb = torch.from_numpy(x).to(torch.bfloat16)
    ref = cov_two_pass(xb.double().numpy())
    acc = CovarianceAccumulator(x.shape[1], bf16_matmul=bf16_matmul)
    for chunk in torch.chunk(xb.to(device), chunks):
        acc.update(chunk)
    cov = acc.cov().cpu()
    (s, h), (s_ref, h_ref) = _soft_hard(cov.numpy()), _soft_hard(ref)
    return _rel(cov, ref), abs(s / s_ref - 1), abs(h / h_ref - 1)


def test_default_precision_is_bf16_on_cuda_and_exact_fp32_on_cpu():
    from specsweep.metrics.covariance import default_bf16_matmul

    assert default_bf16_matmul("cuda") and default_bf16_matmul(torch.device("cuda", 0))
    assert not default_bf16_matmul("cpu")
    assert CovarianceAccumulator(8, device="cuda").bf16_gemm  # resolved without touching a GPU
    assert not CovarianceAccumulator(8, device="cuda", bf16_matmul=False).bf16_gemm  # IEEE fp32 on request
    cpu = CovarianceAccumulator(16)
    x = torch.from_numpy(activations("relu2", 500, 16, seed=4)).float()
    cpu.update(x)
    assert not cpu.bf16_gemm
    exact = CovarianceAccumulator(16, bf16_matmul=False)
    exact.update(x)
    assert torch.equal(cpu.m2, exact.m2)  # the CPU default is the exact fp32 path, bit for bit
    assert cpu.copy().bf16_matmul is None  # a copy keeps "device default", not a resolved choice


@pytest.mark.parametrize("kind", ["random", "relu2"])
def test_bf16_inputs_fp32_accumulation_accuracy_emulated_on_cpu(kind):
    # On a CPU bf16_matmul=True rounds the centred rows to bf16 exactly as the CUDA path does and
    # multiplies them in fp32 (products of bf16 values are exact in fp32): the CUDA numerics, slowly.
    x = activations(kind, 16384, 128, seed=5)
    err_cov, err_soft, err_hard = _bf16_errors(x, "cpu", True)
    assert err_cov < 2e-3 and err_soft < 2e-4 and err_hard < 2e-4
    assert err_cov > 1e-6  # the rounding really happened (the exact path is at ~1e-7)


def test_bf16_path_centres_before_rounding():
    # a large common offset: bf16 cannot even represent the spread of raw values around 1000
    # (its spacing there is 4), so rounding must come after the fp32 centring
    x = (activations("random", 4000, 32, seed=1) * 0.01 + 1000.0).astype(np.float32)
    acc = CovarianceAccumulator(32, bf16_matmul=True)
    for chunk in np.array_split(x, 8):
        acc.update(torch.from_numpy(chunk))
    assert _rel(acc.cov(), cov_two_pass(x.astype(np.float64))) < 1e-3
    # the mean is exact up to the bf16 rounding of the centred values: a tiny fraction of the spread
    x64 = x.astype(np.float64)
    assert np.all(np.abs(acc.mean.numpy() - x64.mean(0)) < 1e-3 * x64.std(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["random", "relu2"])
def test_cuda_default_bf16_gemm_accuracy_against_fp64(kind):
    torch.backends.cuda.matmul.allow_tf32 = True  # what training scripts set; capture must not use it
    try:
        x = activations(kind, 65536, 512, seed=6)
        err_cov, err_soft, err_hard = _bf16_errors(x, "cuda", None)  # the default on CUDA
        assert err_cov < 2e-3 and err_soft < 5e-4 and err_hard < 5e-4  # a bf16 OUTPUT errs ~7e-2
        assert err_cov > 1e-6  # bf16 inputs were used by default
        exact = _bf16_errors(x, "cuda", False)  # IEEE fp32 on request: TF32 stays off
        assert exact[0] < 1e-5
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
