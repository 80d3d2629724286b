"""OmegaConf resolvers used by conf/ (registered when sweep.train is imported)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from sweep.grid.run_id import run_id_from_config


def _task_overrides(root: Any) -> list[str]:
    # While Hydra resolves hydra.sweep.subdir the root still holds the `hydra` node; inside the
    # task function it has been removed and HydraConfig carries it instead.
    if "hydra" in root:
        return list(root.hydra.overrides.task)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


def _run_id(*, _root_: Any) -> str:
    return run_id_from_config(_root_, _task_overrides(_root_))


def register() -> None:
    """Register ``${run_id:}``; idempotent."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _run_id)


register()
