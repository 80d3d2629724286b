"""Muon as the paper ran it (vendored microsoft/dion), not torch.optim.Muon.

Per 2-D weight X of shape (fan_out, fan_in), with gradient G:
    M ← μ·M + G                              momentum buffer (sum form, not EMA)
    U ← μ·M + G   (Nesterov)   or   U ← M
    O ← NS(U)                                quintic Newton–Schulz, bf16, 5 distinct tuples
    X ← X·(1 − lr·wd)                        decoupled weight decay with the UNadjusted lr
    X ← X − lr·scale·O                       scale = sqrt(fan_out/fan_in), unclamped ("spectral_norm")

Differences from torch.optim.Muon (2.13): one NS tuple instead of five, scale
sqrt(max(1, out/in)) ("original"), and an EMA momentum buffer, which only rescales U by (1 − μ)
and so disappears in NS's Frobenius normalisation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from specsweep.optim import hparams as hp
from specsweep.optim.base import MatrixOptimizer, run_closure
from specsweep.optim.bundle import OptimizerBundle
from specsweep.optim.matrix_bundle import LION_BETAS, build_matrix_bundle
from specsweep.optim.newton_schulz import NS_EPS, PAPER_NS_COEFFICIENTS, coefficient_schedule, newton_schulz
from specsweep.optim.registry import register

ADJUST_LR_MODES = ("spectral_norm", "original", "none")


def update_scale(shape: Sequence[int], adjust_lr: str) -> float:
    """Multiplier of lr for an orthogonalised update of a (fan_out, fan_in) weight."""
    fan_out, fan_in = shape[0], shape[1]
    if adjust_lr == "spectral_norm":
        return math.sqrt(fan_out / fan_in)
    if adjust_lr == "original":
        return math.sqrt(max(1.0, fan_out / fan_in))
    if adjust_lr == "none":
        return 1.0
    raise ValueError(f"adjust_lr must be one of {list(ADJUST_LR_MODES)}, got {adjust_lr!r}")


class Muon(MatrixOptimizer):
    """Muon for 2-D weights; every default is the paper's, pinned here explicitly.

    Same-shape weights are orthogonalised in one batched Newton–Schulz call.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.01,
        adjust_lr: str = "spectral_norm",
        ns_coefficients: Sequence[Sequence[float]] = PAPER_NS_COEFFICIENTS,
        ns_steps: int = 5,
        ns_dtype: torch.dtype | str = torch.bfloat16,
        ns_eps: float = NS_EPS,
        **extra_defaults: Any,
    ) -> None:
        coefficients = hp.coefficients("ns_coefficients", ns_coefficients)
        defaults = {
            "lr": hp.number("lr", lr, low=0.0),
            "momentum": hp.number("momentum", momentum, low=0.0, high=1.0, high_open=True),
            "nesterov": hp.boolean("nesterov", nesterov),
            "weight_decay": hp.number("weight_decay", weight_decay, low=0.0),
            "adjust_lr": hp.choice("adjust_lr", adjust_lr, ADJUST_LR_MODES),
            "ns_coefficients": coefficient_schedule(coefficients, hp.integer("ns_steps", ns_steps, low=1)),
            # "auto": bf16 on CUDA (the paper), fp32 on CPU, where bf16 matmul is ~20x slower
            "ns_dtype": None if ns_dtype == "auto" else hp.dtype("ns_dtype", ns_dtype),
            "ns_eps": hp.number("ns_eps", ns_eps, low=0.0),
            **extra_defaults,
        }
        super().__init__(params, defaults)

    def _direction(self, p: torch.Tensor, ortho: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """Hook between Newton–Schulz and the weight update (NorMuon normalises here)."""
        return ortho

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            mu = group["momentum"]
            params, updates = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(p.grad)
                params.append(p)
                updates.append(p.grad.add(buf, alpha=mu) if group["nesterov"] else buf)
            for p, ortho in zip(params, self._orthogonalise(updates, group)):
                direction = self._direction(p, ortho, group)
                lr = group["lr"]
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(direction, alpha=-lr * update_scale(p.shape, group["adjust_lr"]))
        return loss

    def _orthogonalise(self, updates: list[torch.Tensor], group: dict[str, Any]) -> list[torch.Tensor]:
        # one batched NS call per distinct shape: the 12 FFN-up (or attention) matrices of a
        # model share a shape, and a batched matmul amortises launches on a GPU
        dtype = group["ns_dtype"]
        if dtype is None and updates:
            dtype = torch.bfloat16 if updates[0].is_cuda else torch.float32
        kwargs = {"coefficients": group["ns_coefficients"], "dtype": dtype, "eps": group["ns_eps"]}
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, u in enumerate(updates):
            by_shape[tuple(u.shape)].append(i)
        out: list[torch.Tensor] = [None] * len(updates)  # type: ignore[list-item]
        for indices in by_shape.values():
            if len(indices) == 1:
                out[indices[0]] = newton_schulz(updates[indices[0]], **kwargs)
                continue
            batch = newton_schulz(torch.stack([updates[i].to(dtype) for i in indices]), **kwargs)
            for i, o in zip(indices, batch.unbind(0)):
                out[i] = o
        return out


@register("muon")
def build_muon(
    model: nn.Module,
    *,
    lr: float = 0.02,
    momentum: float = 0.95,
    nesterov: bool = True,
    weight_decay: float = 0.01,
    adjust_lr: str = "spectral_norm",
    ns_coefficients: Sequence[Sequence[float]] = PAPER_NS_COEFFICIENTS,
    ns_steps: int = 5,
    ns_dtype: str = "auto",
    ns_eps: float = NS_EPS,
    lion_lr: float | None = None,
    lion_betas: Sequence[float] = LION_BETAS,
    lion_weight_decay: float = 0.0,
    head_lr: float | None = None,
    scalar_optimizer: str = "lion",
) -> OptimizerBundle:
    """Paper's Muon on block matrices; Lion on embeddings, head (lr/sqrt(d_model)) and scalars."""
    hparams = {k: v for k, v in locals().items() if k != "model"}
    return build_matrix_bundle(
        model, name="muon", algorithm="muon",
        make_matrix_optimizer=lambda groups: Muon(
            groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
            adjust_lr=adjust_lr, ns_coefficients=ns_coefficients, ns_steps=ns_steps,
            ns_dtype=ns_dtype, ns_eps=ns_eps),
        lr=lr, weight_decay=weight_decay, lion_lr=lion_lr, lion_betas=lion_betas,
        lion_weight_decay=lion_weight_decay, head_lr=head_lr, scalar_optimizer=scalar_optimizer,
        hparams=hparams,
    )
