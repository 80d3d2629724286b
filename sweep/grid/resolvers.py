"""OmegaConf resolvers used by conf/ (registered when sweep.train is imported), and what they read
of the job: its overrides and the keys its sweeper declares."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from specsweep.sweep.grid.run_id import RunIdParts, run_id_parts_from_config


def _hydra_node(root: Any) -> Any:
    # While Hydra resolves hydra.sweep.subdir (and in the sweeper's preflight) the root still holds
    # the `hydra` node; inside the task function it has been removed and HydraConfig carries it.
    if "hydra" in root:
        return root.hydra
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def job_overrides(root: Any) -> list[str]:
    """The job's task overrides (Hydra's ``overrides.task``); [] outside a Hydra job."""
    node = _hydra_node(root)
    return list(node.overrides.task) if node is not None else []


def sweeper_keys(root: Any) -> list[str]:
    """Keys the job's sweeper declares in ``hydra.sweeper.params`` (a named grid's axes, an Optuna
    search space): they are spelled out in the run id."""
    node = _hydra_node(root)
    params = node.sweeper.get("params") if node is not None and "sweeper" in node else None
    return [str(k) for k in params] if params else []


def run_id_parts_of(root: Any) -> RunIdParts:
    """The run id rule applied to a composed job config (sweep/grid/run_id.py)."""
    return run_id_parts_from_config(root, job_overrides(root), sweeper_keys(root))


def _run_id(*, _root_: Any) -> str:
    return run_id_parts_of(_root_).run_id


def register() -> None:
    """Register ``${run_id:}``; idempotent."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _run_id)


register()
