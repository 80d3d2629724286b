"""CUDA paths that CPU runs cannot reach (`pytest -m gpu`; skipped without a CUDA device).

bf16 autocast training, the trainer's compiled path with telemetry against its eager path, Muon's
bf16 Newton–Schulz against fp32, and eigendecompositions on the GPU against the CPU. The
bf16-in/fp32-out covariance capture against fp64 is in test_metrics_covariance.py (also `gpu`).
Part (d) of benchmarks/gpu_check.sh runs them on a lent GPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from specsweep.metrics import FFNProbe, finalize_snapshot, frequency_buckets
from metrics_reference import activations
from specsweep.models import GPT, GPTConfig
from specsweep.optim import PAPER_NS_COEFFICIENTS, build_optimizer, newton_schulz
from tests.conftest import FAST, run_train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytestmark = [pytest.mark.gpu, needs_cuda]
needs_hydra = pytest.mark.skipif(importlib.util.find_spec("hydra") is None,
                                 reason="needs hydra-core (benchmarks/gpu_wheels.sh carries it to a GPU machine)")

CUDA = torch.device("cuda")
VOCAB = 512


def _tiny_gpt(device: torch.device) -> GPT:
    torch.manual_seed(0)  # the same weights on every device
    return GPT(GPTConfig(vocab_size=VOCAB, n_layer=2, n_head=4, d_model=128, context_len=128)).to(device)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten().cpu(), b.double().flatten().cpu()
    return float(a @ b / (a.norm() * b.norm()))


# ---- bf16 autocast training --------------------------------------------------------------------


def test_bf16_autocast_training_steps_are_finite_and_lower_the_loss():
    # the trainer's step on CUDA: bf16 autocast forward, fp32 loss, Muon (bf16 Newton–Schulz on CUDA)
    model = _tiny_gpt(CUDA)
    optimizer = build_optimizer(model, "muon")
    gen = torch.Generator().manual_seed(1)
    batch = torch.randint(0, VOCAB, (8, 129), generator=gen).to(CUDA)
    x, y = batch[:, :-1], batch[:, 1:]
    losses = []
    for _ in range(8):  # one fixed batch: the loss must go down
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            logits, loss = model(x, y)
        assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32  # autocast on, fp32 loss
        loss.backward()
        assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


# ---- the trainer's compiled path with telemetry --------------------------------------------------


def _train_records(env: dict[str, str], tmp_path, device: str, compile_: bool) -> tuple[list[dict], list[dict]]:
    """(metrics rows, spectra records) of a short sweep.train run on ``device``."""
    name = f"compile_{str(compile_).lower()}"
    run_train([*FAST, f"sweep_name={name}", f"train.device={device}", f"train.compile={str(compile_).lower()}",
               "train.steps=6", "train.log_every=1", "train.eval_every=6", "train.ckpt_every=6",
               "telemetry.every=3"], env)
    (run,) = [p for p in (tmp_path / "runs" / name).iterdir() if p.is_dir() and not p.name.startswith(".")]

    def read(file: str) -> list[dict]:
        return [json.loads(line) for line in (run / file).read_text().splitlines() if line.strip()]

    return read("metrics.jsonl"), read("spectra.jsonl")


def _key(record: dict) -> tuple:
    return record["step"], record["layer"], record["site"], record["bucket"]


def _train_losses(rows: list[dict]) -> list[float]:
    return [r["train_loss"] for r in rows if "train_loss" in r]


@needs_hydra
def test_compiled_training_with_telemetry_records_equal_eager_within_bf16(env, tmp_path):
    # train.compile=true: ordinary steps go through torch.compile, telemetry steps through the hooks;
    # the records must be those of an eager run (bf16 autocast on both), event by event
    eager_rows, eager = _train_records(env, tmp_path, CUDA.type, compile_=False)
    compiled_rows, compiled = _train_records(env, tmp_path, CUDA.type, compile_=True)
    assert sorted(map(_key, compiled)) == sorted(map(_key, eager))
    assert {r["step"] for r in eager} == {1, 3, 6}
    assert {r["status"] for r in eager} == {"ok"}
    by_key = {_key(r): r for r in eager}
    for r in compiled:
        e = by_key[_key(r)]
        assert (r["n_rows"], r["status"]) == (e["n_rows"], e["status"]), _key(r)  # hooks fired once per row
        for metric in ("hard_rank", "soft_rank", "entropy"):
            assert r[metric] == pytest.approx(e[metric], rel=2e-2), (_key(r), metric)
    # train rows: every step, finite, the same losses within bf16 (the compiled steps train the same model)
    assert len(_train_losses(compiled_rows)) == 6 and all(math.isfinite(v) for v in _train_losses(compiled_rows))
    np.testing.assert_allclose(_train_losses(compiled_rows), _train_losses(eager_rows), rtol=2e-2)


# ---- Muon's Newton–Schulz in bf16 on CUDA ------------------------------------------------------------


@pytest.mark.parametrize("shape", [(768, 768), (768, 3072), (3072, 768), (4, 768, 3072)])
def test_newton_schulz_bf16_on_cuda_matches_fp32(shape):
    gen = torch.Generator().manual_seed(2)
    # a gradient-like matrix: a few strong directions on top of noise
    g = torch.randn(*shape, generator=gen) + 5 * torch.randn(*shape[:-1], 4, generator=gen) @ torch.randn(
        *shape[:-2], 4, shape[-1], generator=gen) / shape[-1] ** 0.5
    ref = newton_schulz(g.double(), PAPER_NS_COEFFICIENTS, dtype=torch.float32)  # fp32 on the CPU
    out = newton_schulz(g.to(CUDA), PAPER_NS_COEFFICIENTS, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == g.shape
    for o, r in zip(out.reshape(-1, *shape[-2:]), ref.reshape(-1, *shape[-2:])):
        assert _cosine(o, r) >= 0.99


def test_muon_step_on_cuda_uses_bf16_and_matches_an_fp32_step():
    # ns_dtype=auto picks bf16 on CUDA (the paper's setting); its update must point where fp32's does
    cpu_model, cuda_model = _tiny_gpt(torch.device("cpu")), _tiny_gpt(CUDA)
    before = {n: p.detach().cpu().clone() for n, p in cpu_model.named_parameters()}
    gen = torch.Generator().manual_seed(3)
    for (_, p), (_, q) in zip(cpu_model.named_parameters(), cuda_model.named_parameters()):
        grad = torch.randn(p.shape, generator=gen)
        p.grad, q.grad = grad.clone(), grad.to(CUDA)
    cpu_opt = build_optimizer(cpu_model, "muon", ns_dtype="float32")
    cuda_opt = build_optimizer(cuda_model, "muon")  # auto
    cpu_opt.step()
    cuda_opt.step()
    matrices = [n for n in before if ".attn." in n or ".ffn." in n]  # the Muon-routed block matrices
    assert matrices
    cuda_params = dict(cuda_model.named_parameters())
    for n in matrices:
        want = dict(cpu_model.named_parameters())[n].detach() - before[n]
        got = cuda_params[n].detach().cpu() - before[n]
        assert _cosine(got, want) >= 0.99, n
        assert float(got.norm() / want.norm()) == pytest.approx(1.0, abs=0.05), n


# ---- eigendecomposition on the GPU vs the CPU ------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_eigvalsh_on_cuda_matches_cpu_fp64(dtype, tol):
    x = activations("relu2", 8192, 2048, seed=4)  # a post-activation-like covariance, D = 2048
    cov = torch.from_numpy(np.cov(x, rowvar=False))
    want = torch.linalg.eigvalsh(cov).numpy()  # fp64 on the CPU
    got = torch.linalg.eigvalsh(cov.to(CUDA, dtype)).double().cpu().numpy()
    assert _rel(got, want) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_telemetry_records_decomposed_on_cuda_match_the_cpu(dtype, tol):
    # one event's covariances captured on CUDA, decomposed where they are (decompose_on=gpu) and on
    # the CPU in fp64 (the pool's path): same eigenvalues and metrics
    model = _tiny_gpt(CUDA)
    counts = np.bincount(np.random.default_rng(5).zipf(1.2, 200_000) % VOCAB, minlength=VOCAB)
    probe = FFNProbe(model, bucket_of_token=frequency_buckets(counts), min_bucket_rows=100, keep_eigenvalues=True)
    idx = torch.from_numpy(np.random.default_rng(6).zipf(1.2, (32, 128)) % VOCAB).to(CUDA)
    with probe.capturing(), torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        probe.set_tokens(idx)
        model(idx)
    on_cuda = probe.snapshot(1, device=None, reset=False)
    on_cpu = probe.snapshot(1, device="cpu")
    assert all(e.m2.device.type == CUDA.type for e in on_cuda.entries if e.m2 is not None)
    on_cuda = dataclasses.replace(on_cuda, options=dataclasses.replace(on_cuda.options, eig_dtype=dtype))
    got, want = finalize_snapshot(on_cuda), finalize_snapshot(on_cpu)
    assert len(got) == len(want) == 2 * 2 * 4  # layers x sites x buckets
    assert {r["status"] for r in want} == {"ok"}
    for g, w in zip(got, want):
        assert (g["layer"], g["site"], g["bucket"], g["n_rows"]) == (w["layer"], w["site"], w["bucket"], w["n_rows"])
        assert _rel(g["eigenvalues"], w["eigenvalues"]) < tol
        for metric in ("soft_rank", "hard_rank", "entropy"):
            assert g[metric] == pytest.approx(w[metric], rel=tol), (g["layer"], g["site"], g["bucket"], metric)
