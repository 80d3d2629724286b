"""Lion (Chen et al., 2023): sign of an interpolated momentum, decoupled weight decay."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from specsweep.optim import hparams as hp
from specsweep.optim.base import StatefulOptimizer, run_closure
from specsweep.optim.bundle import OptimizerBundle
from specsweep.optim.registry import register
from specsweep.optim.routing import ROLES, route_parameters


class Lion(StatefulOptimizer):
    """Lion:  c = β1·m + (1−β1)·g;  x ← x·(1 − lr·wd) − lr·sign(c);  m ← β2·m + (1−β2)·g."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        # momentum dtype (None: the parameter's); a lower one also rounds the gradient to it
        # before the interpolations, as upstream's Lion with a mixed-precision momentum
        self.state_dtype = None if state_dtype is None else hp.dtype("state_dtype", state_dtype)
        defaults = {
            "lr": hp.number("lr", lr, low=0.0),
            "betas": hp.betas("betas", betas),
            "weight_decay": hp.number("weight_decay", weight_decay, low=0.0),
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, dtype=self.state_dtype)
                m = state["exp_avg"]
                g = p.grad.to(m.dtype)
                direction = m.lerp(g, 1 - beta1).sign_()
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(direction, alpha=-lr)
                m.lerp_(g, 1 - beta2)
        return loss


@register("lion")
def build_lion(
    model: nn.Module,
    *,
    lr: float = 3e-4,
    betas: Sequence[float] = (0.9, 0.99),
    weight_decay: float = 0.1,
) -> OptimizerBundle:
    """Lion everywhere (not in the paper): Lion-paper defaults (lr 10x below AdamW's, wd 10x
    above); weight decay on block matrices only, as for AdamW."""
    routed = route_parameters(model)
    lr = hp.number("lr", lr, low=0.0)
    groups = [
        {"params": routed.params(role), "role": role, "algorithm": "lion", "lr": lr, "base_lr": lr,
         "weight_decay": weight_decay if role == "matrix" else 0.0}
        for role in ROLES if routed.params(role)
    ]
    optimizer = Lion(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    return OptimizerBundle("lion", [optimizer], routed, {role: "lion" for role in ROLES},
                           {"lr": lr, "betas": betas, "weight_decay": weight_decay})
