"""Bundle layout of the paper's matrix optimizers (Muon, NorMuon, Dion).

Block matrices go to the matrix optimizer; token/position embeddings and the LM head go to
Lion (β = (0.9, 0.95) as the paper's runs had them, paper-notes §4b; wd 0; head lr =
lr / sqrt(d_model)); scalars (norm gains, biases)
go to Lion too, or to AdamW when configured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from specsweep.optim import hparams as hp
from specsweep.optim.bundle import OptimizerBundle
from specsweep.optim.lion import Lion
from specsweep.optim.routing import route_parameters

SCALAR_OPTIMIZERS = ("lion", "adamw")
# Lion β of embeddings/head/scalars: what the paper's vendored optimizers ran (their constructor
# default; the (0.95, 0.98) its factory wrote into the groups was never read).
LION_BETAS = (0.9, 0.95)
# AdamW settings for the scalar group when scalar_optimizer == "adamw" (the paper's AdamW)
SCALAR_ADAMW_BETAS = (0.9, 0.95)
SCALAR_ADAMW_EPS = 1e-8


def _group(params: list[nn.Parameter], role: str, algorithm: str, lr: float, **extra: Any) -> dict[str, Any]:
    return {"params": params, "role": role, "algorithm": algorithm, "lr": lr, "base_lr": lr, **extra}


def build_matrix_bundle(
    model: nn.Module,
    *,
    name: str,
    algorithm: str,
    make_matrix_optimizer: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
    lr: float,
    weight_decay: float,
    lion_lr: float | None,
    lion_betas: Sequence[float],
    lion_weight_decay: float,
    head_lr: float | None,
    scalar_optimizer: str,
    hparams: Mapping[str, Any],
    lion_state_dtype: str | None = None,
) -> OptimizerBundle:
    """Route `model`, build the matrix optimizer with `make_matrix_optimizer([group])` and the
    Lion (and maybe AdamW) optimizer for the rest; `lion_lr=None` means `lr` (one lr for all,
    as in the paper), `head_lr=None` means lion_lr / sqrt(d_model); `lion_state_dtype`: Lion's
    momentum dtype (None: the parameter's)."""
    lr = hp.number("lr", lr, low=0.0)
    lion_lr = lr if lion_lr is None else hp.number("lion_lr", lion_lr, low=0.0)
    betas = hp.betas("lion_betas", lion_betas)
    lion_wd = hp.number("lion_weight_decay", lion_weight_decay, low=0.0)
    scalar_optimizer = hp.choice("scalar_optimizer", scalar_optimizer, SCALAR_OPTIMIZERS)
    routed = route_parameters(model)
    if head_lr is None:
        d_model = routed.d_model()
        head_lr = lion_lr / math.sqrt(d_model) if d_model else lion_lr
    else:
        head_lr = hp.number("head_lr", head_lr, low=0.0)

    optimizers: list[torch.optim.Optimizer] = []
    roles = {"matrix": algorithm, "embedding": "lion", "head": "lion", "scalar": scalar_optimizer}
    if routed.params("matrix"):
        optimizers.append(make_matrix_optimizer(
            [_group(routed.params("matrix"), "matrix", algorithm, lr, weight_decay=weight_decay)]))
    lion_groups = [
        _group(routed.params("embedding"), "embedding", "lion", lion_lr),
        _group(routed.params("head"), "head", "lion", head_lr),
    ]
    if scalar_optimizer == "lion":
        lion_groups.append(_group(routed.params("scalar"), "scalar", "lion", lion_lr))
    lion_groups = [g for g in lion_groups if g["params"]]
    if lion_groups:
        optimizers.append(Lion(lion_groups, lr=lion_lr, betas=betas, weight_decay=lion_wd,
                               state_dtype=lion_state_dtype))
    if scalar_optimizer == "adamw" and routed.params("scalar"):
        optimizers.append(torch.optim.AdamW(
            [_group(routed.params("scalar"), "scalar", "adamw", lion_lr)],
            lr=lion_lr, betas=SCALAR_ADAMW_BETAS, eps=SCALAR_ADAMW_EPS, weight_decay=0.0))
    return OptimizerBundle(name, optimizers, routed, roles, hparams)
