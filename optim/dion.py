"""Dion (Ahn et al., 2025), single-device form, as the paper's vendored microsoft/dion ran it.

Per 2-D weight X (m × n) with gradient G, rank r = ceil(rank_fraction · min(m, n)). A wide
matrix (m < n, e.g. the FFN down-projection d × D) runs on Mᵀ (as upstream, `transpose_wide`),
so the power iteration's orthonormal factor P lives on the long side; below, M stands for that
orientation (M̃ = Mᵀ when transposed: P is n × r and Q is m × r), square and tall ones as they are:
    M ← M + G
    P ← orth(M̃·Q)                      QR, or randomized Cholesky-QR (oversample 1.25)
    R ← M̃ᵀ·P
    M̃ ← M̃ − (1 − μ)·P·Rᵀ               error feedback: what the rank-r step did not apply
                                        stays in M undecayed; what it applied decays by μ
    Q ← R / column_norms(R)             warm start of the next power iteration
    X ← X·(1 − lr·wd);  X ← X − lr·sqrt(m/n)·(P·Qᵀ, transposed back to m × n)
An all-zero M gives P = 0 and keeps Q (upstream's fix_all_zero_or_nan).

Precision as the paper's mixed-precision setting: M and Q stored in `state_dtype` (bf16) and
the products P, R, P·Rᵀ, P·Qᵀ computed in `product_dtype` (bf16; orth and the column norms run
in fp32 inside). `product_dtype="float32"`: every product in fp32, each state rounded once per
step.

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

from specsweep.optim import hparams as hp
from specsweep.optim.base import MatrixOptimizer, run_closure
from specsweep.optim.bundle import OptimizerBundle
from specsweep.optim.matrix_bundle import LION_BETAS, build_matrix_bundle
from specsweep.optim.registry import register

ORTHOGONALIZE_METHODS = ("rcqr", "qr")
DION_EPS = 1e-8
# sketch rows are rounded up to a multiple of this (as upstream) for matmul-friendly shapes
_SKETCH_MULTIPLE = 128


def dion_rank(shape: tuple[int, ...] | torch.Size, rank_fraction: float) -> int:
    """Rank r = ceil(rank_fraction · min(m, n)) of the update of an (m, n) weight."""
    return max(1, math.ceil(rank_fraction * min(shape[0], shape[1])))


def orthonormalize(P: torch.Tensor, method: str = "rcqr", oversample: float = 1.25,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Orthonormal basis (m × r, in P's dtype; computed in fp32) of the columns of P (m × r).

    "qr": Householder QR. "rcqr": randomized Cholesky-QR: QR of a Gaussian sketch S·P
    (k = ceil(oversample·r / 128)·128 rows; S·P in P's dtype, as upstream) preconditions P,
    then one Cholesky-QR pass makes it orthonormal to working precision; cheaper than QR for
    tall P. Square or wide P always uses QR.
    """
    dtype = P.dtype
    m, r = P.shape
    if method == "qr" or m <= r:
        return torch.linalg.qr(P.float()).Q.to(dtype)
    if method != "rcqr":
        raise ValueError(f"orthogonalize must be one of {list(ORTHOGONALIZE_METHODS)}, got {method!r}")
    k = math.ceil(oversample * r / _SKETCH_MULTIPLE) * _SKETCH_MULTIPLE
    S = (torch.randn(k, m, device=P.device, generator=generator) / math.sqrt(k)).to(dtype)
    R = torch.linalg.qr((S @ P).float(), mode="r").R
    P = torch.linalg.solve_triangular(R, P.float(), upper=True, left=False)
    R, _ = torch.linalg.cholesky_ex(P.mT @ P, upper=True)
    return torch.linalg.solve_triangular(R, P, upper=True, left=False).to(dtype)


def transposes(shape: tuple[int, ...] | torch.Size, transpose_wide: bool = True) -> bool:
    """Whether Dion runs on Mᵀ for a weight of this shape: wide (m < n) ones, when asked."""
    return bool(transpose_wide) and shape[0] < shape[1]


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
    transpose: bool = False,
    product_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One Dion step on X (m × n), updating the states M (m × n) and Q in place; returns P.

    ``transpose``: run on Mᵀ (Q is m × r, P n × r); else Q is n × r and P m × r. Products run
    in ``product_dtype``: float32 works on an fp32 copy of M (rounded into M once), a lower
    precision adds G into M in its storage dtype and multiplies in ``product_dtype`` (upstream).
    """
    if product_dtype == torch.float32:
        work = M.float().add_(G.float())
        target = work
    else:
        M.add_(G)
        work = M.to(product_dtype)
        target = M
    A = work.mT if transpose else work
    Q0 = Q.to(product_dtype)
    P = orth(A @ Q0).to(product_dtype)
    R = A.mT @ P
    # all-zero M: P = 0 and Q kept (upstream's fix_all_zero_or_nan; no host sync)
    nonzero = work.ne(0).any()
    P = P.nan_to_num() * nonzero
    R = R.nan_to_num() * nonzero + Q0 * ~nonzero
    (target.mT if transpose else target).add_((P @ R.mT).mul_(-(1 - mu)))
    if target.data_ptr() != M.data_ptr():
        M.copy_(target)
    R32 = R.float()
    Q_new = (R32 / (torch.linalg.vector_norm(R32, dim=0, keepdim=True) + eps)).to(product_dtype)
    Q.copy_(Q_new)
    m, n = X.shape
    update = (P @ Q_new.mT).mul_(-lr * math.sqrt(m / n))
    X.mul_(1 - lr * weight_decay)
    X.add_(update.mT if transpose else update)
    return P


class Dion(MatrixOptimizer):
    """Dion for 2-D weights (paper defaults: lr 0.02, μ 0.95, wd 0.01, RCQR, bf16 states and
    products, wide matrices transposed).

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
        transpose_wide: bool = True,
        product_dtype: torch.dtype | str = torch.bfloat16,
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
            "transpose_wide": hp.boolean("transpose_wide", transpose_wide),
            "product_dtype": hp.dtype("product_dtype", product_dtype),
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
        side = p.shape[0] if transposes(p.shape, group["transpose_wide"]) else p.shape[1]
        Q = torch.randn(side, r, device=p.device, generator=self._generator(p, group, 0))
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
                    eps=group["eps"], transpose=transposes(p.shape, group["transpose_wide"]),
                    product_dtype=group["product_dtype"],
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
    transpose_wide: bool = True,
    product_dtype: str = "bfloat16",
    lion_lr: float | None = None,
    lion_betas: Sequence[float] = LION_BETAS,
    lion_weight_decay: float = 0.0,
    head_lr: float | None = None,
    scalar_optimizer: str = "lion",
) -> OptimizerBundle:
    """Dion on block matrices; Lion on embeddings, head (lr/sqrt(d_model)) and scalars, its
    momentum in `state_dtype` too (the paper's mixed precision)."""
    hparams = {k: v for k, v in locals().items() if k != "model"}
    return build_matrix_bundle(
        model, name="dion", algorithm="dion",
        make_matrix_optimizer=lambda groups: Dion(
            groups, lr=lr, mu=mu, weight_decay=weight_decay, rank_fraction=rank_fraction,
            orthogonalize=orthogonalize, rcqr_oversample=rcqr_oversample,
            state_dtype=state_dtype, eps=eps, seed=seed, transpose_wide=transpose_wide,
            product_dtype=product_dtype),
        lr=lr, weight_decay=weight_decay, lion_lr=lion_lr, lion_betas=lion_betas,
        lion_weight_decay=lion_weight_decay, head_lr=head_lr, scalar_optimizer=scalar_optimizer,
        lion_state_dtype=state_dtype, hparams=hparams,
    )
