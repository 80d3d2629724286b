"""Dion (Ahn et al., 2025), single-device form, as the paper's vendored microsoft/dion ran it.

Per 2-D weight X (m × n) with gradient G, rank r = ceil(rank_fraction · min(m, n)),
state M (m × n) and Q (n × r):
    M ← M + G
    P ← orth(M·Q)                       QR, or randomized Cholesky-QR (oversample 1.25)
    R ← Mᵀ·P
    M ← M − (1 − μ)·P·Rᵀ                error feedback: what the rank-r step did not apply
                                        stays in M undecayed; what it applied decays by μ
    Q ← R / column_norms(R)             warm start of the next power iteration
    X ← X·(1 − lr·wd);  X ← X − lr·sqrt(m/n)·P·Qᵀ

M and Q are stored in `state_dtype` (bf16 in the paper) but every product runs in fp32 and
each state is rounded once per step.

What the distributed form adds (not needed on one device): M and Q are sharded like the
weight (FSDP2 / tensor parallel), so M·Q and Mᵀ·P become local matmuls plus an all-reduce of
the small m×r or n×r products; orth runs as a distributed randomized Cholesky-QR (a shared
random sketch, an all-reduce of the r×r Gram matrix); and with data parallelism the full
gradient all-reduce is replaced by the all-reduce of these low-rank factors ("compressed DP
gradient sync"), the error feedback keeping what compression dropped. On one device all of
that reduces to the algebra above.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from optim import hparams as hp
from optim.base import MatrixOptimizer, run_closure
from optim.bundle import OptimizerBundle
from optim.matrix_bundle import build_matrix_bundle
from optim.registry import register

ORTHOGONALIZE_METHODS = ("rcqr", "qr")
DION_EPS = 1e-8
# sketch rows are rounded up to a multiple of this (as upstream) for matmul-friendly shapes
_SKETCH_MULTIPLE = 128


def dion_rank(shape: tuple[int, ...] | torch.Size, rank_fraction: float) -> int:
    """Rank r = ceil(rank_fraction · min(m, n)) of the update of an (m, n) weight."""
    return max(1, math.ceil(rank_fraction * min(shape[0], shape[1])))


def orthonormalize(P: torch.Tensor, method: str = "rcqr", oversample: float = 1.25,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Orthonormal basis (m × r, fp32) of the columns of P (m × r).

    "qr": Householder QR. "rcqr": randomized Cholesky-QR: QR of a Gaussian sketch S·P
    (k = ceil(oversample·r / 128)·128 rows) preconditions P, then one Cholesky-QR pass
    makes it orthonormal to working precision; cheaper than QR for tall P. Square or wide
    P always uses QR.
    """
    P = P.float()
    m, r = P.shape
    if method == "qr" or m <= r:
        return torch.linalg.qr(P).Q
    if method != "rcqr":
        raise ValueError(f"orthogonalize must be one of {list(ORTHOGONALIZE_METHODS)}, got {method!r}")
    k = math.ceil(oversample * r / _SKETCH_MULTIPLE) * _SKETCH_MULTIPLE
    S = torch.randn(k, m, device=P.device, dtype=P.dtype, generator=generator) / math.sqrt(k)
    R = torch.linalg.qr(S @ P, mode="r").R
    P = torch.linalg.solve_triangular(R, P, upper=True, left=False)
    R, _ = torch.linalg.cholesky_ex(P.mT @ P, upper=True)
    return torch.linalg.solve_triangular(R, P, upper=True, left=False)


@torch.no_grad()
def dion_matrix_update(
    X: torch.Tensor,
    G: torch.Tensor,
    M: torch.Tensor,
    Q: torch.Tensor,
    *,
    lr: float,
    mu: float,
    weight_decay: float,
    orth: Callable[[torch.Tensor], torch.Tensor],
    eps: float = DION_EPS,
) -> torch.Tensor:
    """One Dion step on X, updating the states M and Q in place; returns P (m × r, fp32)."""
    M32 = M.float().add_(G.float())
    P = orth(M32 @ Q.float())
    R = M32.mT @ P
    M32.addmm_(P, R.mT, alpha=-(1 - mu))
    M.copy_(M32)
    Q.copy_(R / (torch.linalg.vector_norm(R, dim=0, keepdim=True) + eps))
    m, n = X.shape
    X.mul_(1 - lr * weight_decay)
    X.add_((P @ Q.float().mT).to(X.dtype), alpha=-lr * math.sqrt(m / n))
    return P


class Dion(MatrixOptimizer):
    """Dion for 2-D weights (paper defaults: lr 0.02, μ 0.95, wd 0.01, RCQR, bf16 states).

    Randomness (initial Q, RCQR sketches) comes from generators seeded by (seed, parameter
    index, step): it never touches the global RNG, and a resumed run draws the same sketches.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        mu: float = 0.95,
        weight_decay: float = 0.01,
        rank_fraction: float = 1.0,
        orthogonalize: str = "rcqr",
        rcqr_oversample: float = 1.25,
        state_dtype: torch.dtype | str | None = torch.bfloat16,
        eps: float = DION_EPS,
        seed: int = 0,
    ) -> None:
        defaults = {
            "lr": hp.number("lr", lr, low=0.0),
            "mu": hp.number("mu", mu, low=0.0, high=1.0),
            "weight_decay": hp.number("weight_decay", weight_decay, low=0.0),
            "rank_fraction": hp.number("rank_fraction", rank_fraction, low=0.0, high=1.0, low_open=True),
            "orthogonalize": hp.choice("orthogonalize", orthogonalize, ORTHOGONALIZE_METHODS),
            "rcqr_oversample": hp.number("rcqr_oversample", rcqr_oversample, low=1.0),
            "state_dtype": None if state_dtype is None else hp.dtype("state_dtype", state_dtype),
            "eps": hp.number("eps", eps, low=0.0, low_open=True),
            "seed": hp.integer("seed", seed, low=0),
        }
        super().__init__(params, defaults)
        self._index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}

    def _generator(self, p: torch.Tensor, group: dict[str, Any], step: int) -> torch.Generator:
        gen = torch.Generator(device=p.device)
        # distinct, reproducible stream per (seed, parameter, step)
        gen.manual_seed(((group["seed"] * 1_000_003 + self._index[p]) * 1_000_033 + step) % 2**63)
        return gen

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[p]
        dtype = group["state_dtype"] or p.dtype
        r = dion_rank(p.shape, group["rank_fraction"])
        state["step"] = 0
        state["momentum"] = torch.zeros_like(p, dtype=dtype)
        Q = torch.randn(p.shape[1], r, device=p.device, generator=self._generator(p, group, 0))
        state["Q"] = Q.to(dtype)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p] or self._init_state(p, group)
                state["step"] += 1
                gen = self._generator(p, group, state["step"])
                dion_matrix_update(
                    p, p.grad, state["momentum"], state["Q"],
                    lr=group["lr"], mu=group["mu"], weight_decay=group["weight_decay"],
                    orth=lambda P: orthonormalize(P, group["orthogonalize"], group["rcqr_oversample"], gen),
                    eps=group["eps"],
                )
        return loss


def _dion_tag(hparams: Mapping[str, Any]) -> str:
    return f"dion-r{hp.number('rank_fraction', hparams['rank_fraction']):g}"


@register("dion", tag=_dion_tag)
def build_dion(
    model: nn.Module,
    *,
    lr: float = 0.02,
    mu: float = 0.95,
    weight_decay: float = 0.01,
    rank_fraction: float = 0.0625,
    orthogonalize: str = "rcqr",
    rcqr_oversample: float = 1.25,
    state_dtype: str = "bfloat16",
    eps: float = DION_EPS,
    seed: int = 0,
    lion_lr: float | None = None,
    lion_betas: Sequence[float] = (0.95, 0.98),
    lion_weight_decay: float = 0.0,
    head_lr: float | None = None,
    scalar_optimizer: str = "lion",
) -> OptimizerBundle:
    """Dion on block matrices; Lion on embeddings, head (lr/sqrt(d_model)) and scalars."""
    hparams = {k: v for k, v in locals().items() if k != "model"}
    return build_matrix_bundle(
        model, name="dion", algorithm="dion",
        make_matrix_optimizer=lambda groups: Dion(
            groups, lr=lr, mu=mu, weight_decay=weight_decay, rank_fraction=rank_fraction,
            orthogonalize=orthogonalize, rcqr_oversample=rcqr_oversample,
            state_dtype=state_dtype, eps=eps, seed=seed),
        lr=lr, weight_decay=weight_decay, lion_lr=lion_lr, lion_betas=lion_betas,
        lion_weight_decay=lion_weight_decay, head_lr=head_lr, scalar_optimizer=scalar_optimizer,
        hparams=hparams,
    )
