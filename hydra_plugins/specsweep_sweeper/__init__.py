"""Hydra sweeper plugin for specsweep.

Hydra only instantiates plugins that live in the ``hydra_plugins`` namespace, so this package is a
thin shell: the grid expansion (Hydra's basic one, optionally over ``arms``) is
``sweep.grid.expand``, which ``sweep.plan`` shares, and the preflight (validation, run-id
collisions, skipping finished runs) and the end-of-sweep summary live in ``sweep.grid.preflight``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class SpecSweeper(BasicSweeper):
    """Basic grid sweeper that checks the whole grid before launching any job."""

    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict] = None,
                 only: Optional[List[str]] = None, arms: Optional[list] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params or {})
        self.only = list(only) if only else None  # launch only these run ids (sweep.status --resubmit)
        self.arms = arms  # alternatives that set several keys at once (sweep.grid.expand)

    def sweep(self, arguments: List[str]) -> Any:
        from sweep.grid import sweepdir
        from sweep.grid.expand import grid_jobs
        from sweep.grid.preflight import plan_sweep, restrict_plan, summarize_results

        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        jobs = grid_jobs(self.params, arguments, self.hydra_context.config_loader, self.arms)

        plan = plan_sweep(self.hydra_context.config_loader, self.config, jobs)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        sweepdir.record_launch(sweep_dir, [(j.run_id, j.overrides) for j in plan.jobs],
                               list(self.config.hydra.overrides.task), list(self.config.hydra.overrides.hydra))
        if self.only is not None:
            restrict_plan(plan, self.only)

        todo = plan.to_launch
        size = self.max_batch_size or len(todo) or 1
        returns: List[Sequence[JobReturn]] = []
        for start in range(0, len(todo), size):
            batch = [job.overrides for job in todo[start:start + size]]
            if hasattr(self.launcher, "set_run_ids"):  # the SLURM launcher records job id -> run id
                self.launcher.set_run_ids([job.run_id for job in todo[start:start + size]])
            returns.append(self.launcher.launch(batch, initial_job_idx=start))
        summarize_results(plan, [r for batch in returns for r in batch])
        return returns
