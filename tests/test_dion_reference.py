"""Dion against a straight re-implementation of the paper's vendored microsoft/dion (issue 20 item 2).

The reference below is written from upstream's single-device algorithm (dion_update_ddp with one
rank; paper-notes §4b): a wide matrix (m < n) runs on Mᵀ so that P lives on its long side and Q
is m × r; every product runs in the states' dtype (the paper's mixed precision: bf16), the
orthogonalisation and column norms in fp32 inside; an all-zero M gives P = 0 and keeps Q.
Both sides start from the same Q and use Householder QR (upstream's RCQR draws its sketch from
the global RNG; its result does not depend on the sketch beyond rounding and column signs, which
cancel in P·Qᵀ; our RCQR is checked against QR in test_optim).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from specsweep.optim import build_optimizer
from specsweep.optim.dion import Dion, transposes

SHAPES = {"tall": (48, 24), "square": (32, 32), "wide": (24, 64)}
STEPS = 24


def _reference_step(X: torch.Tensor, G: torch.Tensor, M: torch.Tensor, Q: torch.Tensor, *, lr: float,
                    mu: float, wd: float, eps: float = 1e-8) -> None:
    """One upstream Dion step (X, M, Q updated in place); M and Q hold the working dtype."""
    transposed = X.shape[0] < X.shape[1]
    M.add_(G)
    A = M.mT if transposed else M
    Qw = Q.to(M.dtype)
    P = torch.linalg.qr((A @ Qw).float()).Q.to(M.dtype)
    R = A.mT @ P
    if not bool((M != 0).any()):
        P, R = torch.zeros_like(P), Qw
    feedback = (R @ P.mT) if transposed else (P @ R.mT)
    M.add_(feedback * -(1 - mu))
    R32 = R.float()
    Qn = (R32 / (R32.square().sum(dim=0, keepdim=True).sqrt() + eps)).to(M.dtype)
    update = (Qn @ P.mT) if transposed else (P @ Qn.mT)
    X.mul_(1 - lr * wd)
    X.add_(update * -(math.sqrt(X.shape[0] / X.shape[1]) * lr))
    Q.copy_(Qn)


def _run_both(shape: tuple[int, int], dtype: str, steps: int = STEPS) -> tuple[torch.Tensor, torch.Tensor, Dion]:
    torch.manual_seed(20)
    init = 0.1 * torch.randn(*shape)
    grads = [torch.randn(*shape) for _ in range(steps)]
    ours = nn.Parameter(init.clone())
    opt = Dion([ours], lr=0.02, mu=0.95, weight_decay=0.01, rank_fraction=0.25, orthogonalize="qr",
               state_dtype=dtype, product_dtype=dtype)
    state = opt._init_state(ours, opt.param_groups[0])
    X, M, Q = init.clone(), state["momentum"].clone(), state["Q"].clone()  # the same initial Q
    for g in grads:
        ours.grad = g.clone()
        opt.step()
        _reference_step(X, g, M, Q, lr=0.02, mu=0.95, wd=0.01)
    return ours.detach(), X, opt


@pytest.mark.parametrize("kind", list(SHAPES))
def test_dion_matches_the_reference_in_fp32(kind: str) -> None:
    shape = SHAPES[kind]
    ours, ref, opt = _run_both(shape, "float32")
    r = math.ceil(0.25 * min(shape))
    assert opt.state[opt.param_groups[0]["params"][0]]["Q"].shape == (min(shape), r)  # Q on the short side
    # measured: max |diff| <= 6e-8 on weights of size ~0.3 after 24 steps (fp32 rounding); the
    # untransposed power iteration on the wide matrix differs by 1.2e-2
    assert (ours - ref).abs().max().item() < 1e-6


@pytest.mark.parametrize("kind", list(SHAPES))
def test_dion_matches_the_reference_in_bf16(kind: str) -> None:
    ours, ref, _ = _run_both(SHAPES[kind], "bfloat16")
    # the same bf16 products in the same order: measured bitwise equal; fp32 products with bf16
    # states (the former behaviour) differ by 7e-4 .. 1.7e-3
    assert (ours - ref).abs().max().item() < 1e-6


def test_wide_matrices_run_transposed_unless_switched_off() -> None:
    assert transposes((24, 64)) and not transposes((64, 24)) and not transposes((32, 32))
    assert not transposes((24, 64), transpose_wide=False)
    torch.manual_seed(21)
    g = torch.randn(24, 64)
    results = {}
    for flag in (True, False):
        X = nn.Parameter(torch.zeros(24, 64))
        opt = Dion([X], rank_fraction=0.25, state_dtype="float32", product_dtype="float32", transpose_wide=flag)
        X.grad = g.clone()
        opt.step()
        results[flag] = (X.detach().clone(), opt.state[X]["Q"].shape)
    assert results[True][1] == (24, 6) and results[False][1] == (64, 6)
    # two different power iterations (different random Q on different sides): different steps
    assert not torch.allclose(results[True][0], results[False][0], atol=1e-4)


def test_dion_bundle_keeps_lion_momentum_and_products_in_bf16_or_fp32() -> None:
    from test_optim import make_model, train  # the shared tiny model and its training loop

    for dtype, torch_dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        model = make_model()
        bundle = build_optimizer(model, "dion", rank_fraction=0.25, state_dtype=dtype, product_dtype=dtype)
        train(model, bundle, range(2))
        lion = bundle.optimizers[1]
        assert {s["exp_avg"].dtype for s in lion.state.values()} == {torch_dtype}
        dion = bundle.optimizers[0]
        assert {s["momentum"].dtype for s in dion.state.values()} == {torch_dtype}
        assert dion.param_groups[0]["product_dtype"] == torch_dtype
        # the FFN down-projection (d x D, wide) is transposed: Q on its d side
        down = model.blocks[0].ffn.down.weight
        if down.shape[0] < down.shape[1]:
            assert dion.state[down]["Q"].shape[0] == down.shape[0]
