"""AdamW as the paper ran it: one lr everywhere, weight decay on block matrices only."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from specsweep.optim import hparams as hp
from specsweep.optim.bundle import OptimizerBundle
from specsweep.optim.registry import register
from specsweep.optim.routing import ROLES, route_parameters


@register("adamw")
def build_adamw(
    model: nn.Module,
    *,
    lr: float = 3e-3,
    betas: Sequence[float] = (0.9, 0.95),
    eps: float = 1e-8,
    weight_decay: float = 0.01,
) -> OptimizerBundle:
    """torch.optim.AdamW; wd on block matrices, 0 on embeddings, head and scalars.

    Uses the fused kernel when every parameter is on CUDA, torch's default (foreach on
    GPUs, a per-tensor loop on CPU) otherwise.
    """
    hparams = {k: v for k, v in locals().items() if k != "model"}
    lr = hp.number("lr", lr, low=0.0)
    betas_ = hp.betas("betas", betas)
    eps = hp.number("eps", eps, low=0.0)
    weight_decay = hp.number("weight_decay", weight_decay, low=0.0)
    routed = route_parameters(model)
    groups = [
        {"params": routed.params(role), "role": role, "algorithm": "adamw", "lr": lr, "base_lr": lr,
         "weight_decay": weight_decay if role == "matrix" else 0.0}
        for role in ROLES if routed.params(role)
    ]
    all_cuda = all(p.is_cuda for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas_, eps=eps, weight_decay=weight_decay,
                                  fused=True if all_cuda else None)
    return OptimizerBundle("adamw", [optimizer], routed, {role: "adamw" for role in ROLES}, hparams)
