"""NorMuon: Muon whose orthogonalised update is normalised per output neuron (row).

After Newton–Schulz, in fp32, with one second-moment entry per row of U:
    v  ← lerp(v, mean_over_columns(U²), 1 − β2)
    U' ← U / (sqrt(v) + eps)
    U' ← U' · ‖U‖_F / ‖U'‖_F                  keep Muon's update norm
then the weight update is Muon's (decoupled wd, lr·sqrt(fan_out/fan_in)).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from specsweep.optim import hparams as hp
from specsweep.optim.bundle import OptimizerBundle
from specsweep.optim.matrix_bundle import LION_BETAS, build_matrix_bundle
from specsweep.optim.muon import Muon
from specsweep.optim.newton_schulz import NS_EPS, PAPER_NS_COEFFICIENTS
from specsweep.optim.registry import register

NORMUON_EPS = 1e-8


def normuon_normalise(ortho: torch.Tensor, v: torch.Tensor, beta2: float, eps: float = NORMUON_EPS) -> torch.Tensor:
    """Update the per-row second moment `v` (shape (m, 1), fp32) in place; return the
    row-normalised, norm-preserving update in fp32."""
    u = ortho.float()
    v.lerp_(u.square().mean(dim=-1, keepdim=True), 1 - beta2)
    normalised = u / (v.sqrt() + eps)
    # rescale to ‖U‖_F; the clamp only matters for an all-zero update
    return normalised.mul_(torch.linalg.matrix_norm(u) / torch.linalg.matrix_norm(normalised).clamp_min(eps))


class NorMuon(Muon):
    """Muon with NorMuon's per-row normalisation (β2 = 0.95 as in the paper)."""

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
        beta2: float = 0.95,
        normuon_eps: float = NORMUON_EPS,
    ) -> None:
        super().__init__(
            params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
            adjust_lr=adjust_lr, ns_coefficients=ns_coefficients, ns_steps=ns_steps,
            ns_dtype=ns_dtype, ns_eps=ns_eps,
            beta2=hp.number("beta2", beta2, low=0.0, high=1.0, high_open=True),
            normuon_eps=hp.number("normuon_eps", normuon_eps, low=0.0, low_open=True),
        )

    def _direction(self, p: torch.Tensor, ortho: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        state = self.state[p]
        if "second_moment" not in state:
            state["second_moment"] = torch.zeros(p.shape[0], 1, device=p.device, dtype=torch.float32)
        return normuon_normalise(ortho, state["second_moment"], group["beta2"], group["normuon_eps"])


@register("normuon")
def build_normuon(
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
    beta2: float = 0.95,
    normuon_eps: float = NORMUON_EPS,
    lion_lr: float | None = None,
    lion_betas: Sequence[float] = LION_BETAS,
    lion_weight_decay: float = 0.0,
    head_lr: float | None = None,
    scalar_optimizer: str = "lion",
) -> OptimizerBundle:
    """NorMuon on block matrices; Lion on embeddings, head (lr/sqrt(d_model)) and scalars."""
    hparams = {k: v for k, v in locals().items() if k != "model"}
    return build_matrix_bundle(
        model, name="normuon", algorithm="normuon",
        make_matrix_optimizer=lambda groups: NorMuon(
            groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
            adjust_lr=adjust_lr, ns_coefficients=ns_coefficients, ns_steps=ns_steps,
            ns_dtype=ns_dtype, ns_eps=ns_eps, beta2=beta2, normuon_eps=normuon_eps),
        lr=lr, weight_decay=weight_decay, lion_lr=lion_lr, lion_betas=lion_betas,
        lion_weight_decay=lion_weight_decay, head_lr=head_lr, scalar_optimizer=scalar_optimizer,
        hparams=hparams,
    )
