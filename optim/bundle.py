"""OptimizerBundle: several torch optimizers (one per algorithm) driven as one."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from specsweep.optim.base import run_closure
from specsweep.optim.routing import ROLES, RoutedParams

STATE_FORMAT = 1


class OptimizerBundle:
    """Steps, zeroes, saves and restores a list of torch optimizers together.

    Every param group carries `role` (matrix/embedding/head/scalar), `algorithm` and
    `base_lr`; the training loop sets `group["lr"] = group["base_lr"] * factor`.
    """

    def __init__(
        self,
        name: str,
        optimizers: Sequence[torch.optim.Optimizer],
        routed: RoutedParams,
        role_algorithms: Mapping[str, str],
        hparams: Mapping[str, Any] | None = None,
    ) -> None:
        if not optimizers:
            raise ValueError("an OptimizerBundle needs at least one optimizer")
        for opt in optimizers:
            for group in opt.param_groups:
                for key in ("role", "algorithm", "base_lr"):
                    if key not in group:
                        raise ValueError(f"param group of {type(opt).__name__} lacks {key!r}")
        self.name = name
        self.optimizers = list(optimizers)
        self.routed = routed
        self.role_algorithms = dict(role_algorithms)
        self.hparams = {k: _plain(v) for k, v in (hparams or {}).items()}  # JSON-friendly, for logging

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """All param groups of all optimizers (live dicts: editing `lr` takes effect)."""
        # recomputed on each access: torch replaces the group dicts on load_state_dict
        return [g for opt in self.optimizers for g in opt.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of every optimizer; a closure is evaluated once, before the steps."""
        loss = run_closure(closure)
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "name": self.name,
            "algorithms": [type(opt).__name__ for opt in self.optimizers],
            "optimizers": [opt.state_dict() for opt in self.optimizers],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore every optimizer; the bundle must have been built the same way."""
        mine = [type(opt).__name__ for opt in self.optimizers]
        if state_dict.get("format") != STATE_FORMAT or state_dict.get("algorithms") != mine:
            raise ValueError(
                f"optimizer state does not match this bundle: saved "
                f"{state_dict.get('name')!r} {state_dict.get('algorithms')}, have {self.name!r} {mine}"
            )
        for opt, sd in zip(self.optimizers, state_dict["optimizers"]):
            opt.load_state_dict(sd)

    def summary(self) -> dict[str, Any]:
        """Tensors and scalar parameters per role, with the algorithm, lr and wd of each."""
        groups: dict[str, dict[str, Any]] = {}
        for role in ROLES:
            n_tensors, n_params = self.routed.counts(role)
            groups[role] = {"algorithm": self.role_algorithms.get(role), "tensors": n_tensors,
                            "params": n_params, "lr": None, "weight_decay": None}
        for group in self.param_groups:
            entry = groups[group["role"]]
            entry["lr"] = group["base_lr"]
            entry["weight_decay"] = group.get("weight_decay")
        return {
            "optimizer": self.name,
            "groups": groups,
            "total_tensors": sum(g["tensors"] for g in groups.values()),
            "total_params": sum(g["params"] for g in groups.values()),
        }

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{role}={g['algorithm']}({g['tensors']} tensors, {g['params']:,} params)"
            for role, g in self.summary()["groups"].items() if g["tensors"]
        )
        return f"OptimizerBundle({self.name}: {parts})"


def _plain(value: Any) -> Any:
    """Lists for sequences (OmegaConf ListConfig, tuples), names for dtypes."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value
