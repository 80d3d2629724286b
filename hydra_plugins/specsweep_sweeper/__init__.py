"""Hydra sweeper plugin for specsweep.

Hydra only instantiates plugins that live in the ``hydra_plugins`` namespace, so this package is a
thin shell: the grid expansion (Hydra's basic one, optionally over ``arms``) is
``sweep.grid.expand``, which ``sweep.plan`` shares; the preflight (validation, run-id
collisions, skipping finished runs) and the end-of-sweep summary live in ``sweep.grid.preflight``,
and the default sweep name of a grid in ``sweep.grid.sweep_name``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, read_write

from specsweep.sweep.errors import UserError
from specsweep.sweep.grid.expand import given_overrides
from specsweep.sweep.grid.sweep_name import NamedSweepLoader, launch_sweep_name

log = logging.getLogger(__name__)

# hydra-submitit-launcher's stock SLURM launcher (hydra/launcher=submitit_slurm).
_STOCK_SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
STOCK_SLURM_REFUSED = (
    "hydra/launcher=submitit_slurm (hydra-submitit-launcher's stock launcher) is not supported: it ignores "
    "cluster= and resources=, waits until every job has ended, and records no job ids for "
    "`specsweep-status`. Use hydra/launcher=slurm (also submitit: job arrays from cluster= and "
    "resources=, checked against sinfo, returns once queued), or a cluster= site file that selects it "
    "(conf/cluster/example.yaml)."
)


class SpecSweeper(BasicSweeper):
    """Basic grid sweeper that checks the whole grid before launching any job."""

    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict] = None,
                 only: Optional[List[str]] = None, arms: Optional[list] = None, **foreign: Any) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params or {})
        # Settings of another sweeper (e.g. +sweep=lr_search without hydra/sweeper=optuna): refused
        # in setup(), where the message reaches the user as a short error.
        self.foreign = sorted(foreign)
        self.only = list(only) if only else None  # launch only these run ids (sweep.status --resubmit)
        self.arms = arms  # alternatives that set several keys at once (sweep.grid.expand)
        self.sweep_name: Optional[str] = None       # the grid's default name, when the launch gives none

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        if config.hydra.launcher.get("_target_") == _STOCK_SLURM:
            raise UserError(STOCK_SLURM_REFUSED)
        if self.foreign:
            raise UserError(
                f"hydra.sweeper.{', hydra.sweeper.'.join(self.foreign)}: not settings of specsweep's sweeper but of "
                "another one (a file such as conf/sweep/lr_search.yaml needs hydra/sweeper=optuna on the command line)")
        # The grid's name must be on the config before the launcher is made (its job name) and
        # before hydra.sweep.dir (${paths.runs_root}/${sweep_name}) is read; every job composed
        # through the context's loader (the preflight's and the launcher's) gets it on its config.
        self.sweep_name = self._default_sweep_name(hydra_context, config)
        if self.sweep_name is not None:
            with read_write(config):
                config.sweep_name = self.sweep_name
            hydra_context = HydraContext(config_loader=NamedSweepLoader(hydra_context.config_loader, self.sweep_name),
                                         callbacks=hydra_context.callbacks)
            log.info("sweep_name not given: this grid's runs go to %s (sweep_name=%s)",
                     config.hydra.sweep.dir, self.sweep_name)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def _default_sweep_name(self, hydra_context: HydraContext, config: DictConfig) -> Optional[str]:
        from specsweep.sweep.grid.expand import grid_jobs

        jobs = grid_jobs(self.params, given_overrides(config), hydra_context.config_loader, self.arms)
        return launch_sweep_name(config, jobs)

    def sweep(self, arguments: List[str]) -> Any:
        from specsweep.sweep.rundir import sweepdir
        from specsweep.sweep.grid.expand import grid_jobs
        from specsweep.sweep.grid.preflight import launch_batches, plan_sweep, restrict_plan, summarize_results

        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        arguments = list(arguments)
        jobs = grid_jobs(self.params, arguments, self.hydra_context.config_loader, self.arms)

        plan = plan_sweep(self.hydra_context.config_loader, self.config, jobs)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
            sweepdir.record_launch(sweep_dir, [(j.run_id, j.overrides) for j in plan.jobs],
                                   given_overrides(self.config), given_overrides(self.config, "hydra"),
                                   id_records={j.run_id: j.id_record for j in plan.jobs},
                                   run_dirs={j.run_id: j.run_dir for j in plan.jobs})
        except OSError as e:  # a read-only sweep directory is fine when every run is finished
            sweepdir.unrecorded_launch(sweep_dir, e, to_launch=len(plan.to_launch))
        if self.only is not None:
            restrict_plan(plan, self.only)

        # Each job keeps its grid position as hydra.job.num (hydra.sweep.subdir=${hydra.job.num}),
        # also when finished runs are skipped. The SLURM launcher records job id -> run id and
        # takes the numbers; any other launcher numbers a call's jobs from initial_job_idx on.
        ours = hasattr(self.launcher, "set_run_ids")
        returns: List[Sequence[JobReturn]] = []
        for batch in launch_batches(plan.to_launch, self.max_batch_size, numbered=ours):
            if ours:
                self.launcher.set_run_ids([job.run_id for job in batch], [job.num for job in batch])
            returns.append(self.launcher.launch([job.overrides for job in batch], initial_job_idx=batch[0].num))
        summarize_results(plan, [r for batch in returns for r in batch])
        return returns
