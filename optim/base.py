"""Shared base of our optimizers: exact-dtype state restore and the 2-D check of matrix optimizers."""

from __future__ import annotations

import itertools
from typing import Any, Callable

import torch


def run_closure(closure: Callable[[], Any] | None) -> Any:
    """Evaluate an optimizer closure with gradients enabled (torch's ``step(closure)`` convention)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class StatefulOptimizer(torch.optim.Optimizer):
    """torch Optimizer whose load_state_dict keeps each state tensor's SAVED dtype.

    torch casts every floating state tensor to its parameter's dtype on load; that would turn
    bf16 states (Dion keeps M and Q in bf16, as the paper does) into fp32 and break bitwise
    resume.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_ids = itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        id_to_param = dict(zip(saved_ids, params))
        saved_dtypes = {
            id_to_param[pid]: {k: v.dtype for k, v in st.items() if torch.is_tensor(v)}
            for pid, st in state_dict["state"].items() if pid in id_to_param
        }
        super().load_state_dict(state_dict)
        for param, dtypes in saved_dtypes.items():
            state = self.state[param]
            for key, dt in dtypes.items():
                if state[key].dtype != dt:
                    state[key] = state[key].to(dt)


class MatrixOptimizer(StatefulOptimizer):
    """Base of optimizers that only accept 2-D parameters (Muon, NorMuon, Dion)."""

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"{type(self).__name__} only takes 2-D parameters, got one of shape "
                        f"{tuple(p.shape)}; route it to the scalar optimizer"
                    )
