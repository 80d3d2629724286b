"""Whole-grid checks before a multirun launches anything, and the summary after it ends.

Hydra cannot resume a multirun and has no skip-if-done, so the sweep does it: every job of the grid
is composed and validated first (a typo in the 40th job must not surface after 39 runs trained),
run ids are checked for collisions, and jobs whose run directory is already DONE (or diverged) are
skipped, so relaunching a grid only runs what is left.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from specsweep.sweep.credentials import env_secrets, redact_argument
from specsweep.sweep.errors import SweepError, UserError
from specsweep.sweep.grid.identity import check_identity
from specsweep.sweep.grid.run_id import foreign_optim_overrides, parse_override
from specsweep.sweep.grid.spec import RunSpec, build_run_spec
from specsweep.sweep.rundir import STATUS_DIVERGED, STATUS_DONE, STATUS_FAILED, RunDir, RunDirError

log = logging.getLogger("specsweep.sweep")


@dataclass
class PlannedJob:
    overrides: list[str]
    run_id: str
    run_dir: Path
    state: str  # "todo" | "resume" | "left" (not in hydra.sweeper.only) | the run's status done/diverged
    id_record: dict = field(default_factory=dict)  # the overrides behind the run id (RunIdParts.record)
    spec: Optional[RunSpec] = None  # the validated run (sweep.plan estimates from it)
    num: int = 0  # hydra.job.num: the grid point's position in the grid, as Hydra's basic sweeper numbers it


@dataclass
class SweepPlan:
    jobs: list[PlannedJob] = field(default_factory=list)

    @property
    def to_launch(self) -> list[PlannedJob]:
        return [j for j in self.jobs if j.state in ("todo", "resume")]


class _OptimKeyUse:
    """Which ``optim.K`` overrides of a grid some job's optimizer takes: an arm without K ignores its
    override (e.g. adamw beside muon under optim.lion_betas=...), but a K that no optimizer of the
    grid takes is a mistake (optim=adamw optim.lion_betas=...), refused before anything launches."""

    def __init__(self) -> None:
        self.ignored: dict[str, tuple[str, list[str]]] = {}  # key -> (an optimizer without it, its owners)
        self.taken: set[str] = set()

    def add(self, optimizer: str, overrides: Sequence[str]) -> None:
        foreign = foreign_optim_overrides(optimizer, overrides)
        for key, owners in foreign.items():
            self.ignored.setdefault(key, (optimizer, owners))
        self.taken |= {k for k in (parse_override(o)[0] for o in overrides)
                       if k.startswith("optim.") and k not in foreign}

    def unused(self) -> list[str]:
        return [f"{key}: no optimizer of this grid takes it ({optimizer} does not; only {', '.join(owners)} do)"
                for key, (optimizer, owners) in sorted(self.ignored.items()) if key not in self.taken]


def _job_state(run_dir: Path) -> str:
    rd = RunDir(run_dir)
    if rd.is_done():
        return STATUS_DONE
    try:
        if rd.read_status().get("status") == STATUS_DIVERGED:
            return STATUS_DIVERGED
    except RunDirError:
        pass  # launched: its job says which file is unreadable, and the others go on

    return "resume" if rd.checkpoints() else "todo"


@contextlib.contextmanager
def job_config(config_loader: Any, master_config: DictConfig, overrides: Sequence[str], num: int) -> Any:
    """Yield (the job's composed config, its run directory) as a launcher and Hydra's ``run_job``
    make them: ``hydra.job.num``/``id`` set before the folder (``hydra.sweep.subdir``) is read, and
    HydraConfig set to the job's config while it is read, so ``${hydra:...}`` resolves as in the job
    (``hydra.runtime.output_dir`` included). HydraConfig is restored afterwards."""
    cfg = config_loader.load_sweep_config(master_config, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = num
        cfg.hydra.job.num = num
    hydra_config = HydraConfig.instance()
    before = hydra_config.cfg
    try:
        hydra_config.set_config(cfg)
        run_dir = Path(os.path.abspath(os.path.join(str(OmegaConf.select(cfg, "hydra.sweep.dir")),
                                                    str(OmegaConf.select(cfg, "hydra.sweep.subdir")))))
        with read_write(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = str(run_dir)
        hydra_config.set_config(cfg)
        yield cfg, run_dir
    finally:
        hydra_config.cfg = before


def plan_sweep(config_loader: Any, master_config: DictConfig, jobs: Sequence[Sequence[str]],
               check_files: bool = True) -> SweepPlan:
    """Compose and validate every job; raise SweepError on any invalid job or run-id collision.

    ``check_files=False``: the data files are not looked at (``sweep.plan`` reports them apart).
    """
    plan = SweepPlan()
    errors: list[str] = []
    by_id: dict[str, list[tuple[str, str]]] = defaultdict(list)  # run id -> [(label, identity hash)]
    optim_keys = _OptimKeyUse()
    secrets = env_secrets()  # the environment, scanned once for all the labels
    for num, overrides in enumerate(jobs):
        label = " ".join(redact_argument(o, secrets) for o in overrides)  # a refused override may carry a credential
        try:
            with job_config(config_loader, master_config, overrides, num) as (cfg, run_dir):
                spec = build_run_spec(cfg, list(overrides), check_files=check_files, grid=True)
            digest = check_identity(RunDir(run_dir), spec.identity)
        except UserError as e:  # ConfigError, RunConfigChanged
            errors.append(f"job [{label}]: {e}")
            continue
        except Exception as e:  # composition errors from Hydra/OmegaConf
            errors.append(f"job [{label}]: {type(e).__name__}: {e}")
            continue
        optim_keys.add(spec.optimizer.name, overrides)
        if any(d == digest for _, d in by_id[spec.run_id]):
            # Same run (e.g. adamw under an optim.rank_fraction axis it does not use): launch once.
            log.info("  [%s] is the same run as an earlier grid point (%s); launched once", label, spec.run_id)
            by_id[spec.run_id].append((label, digest))
            continue
        by_id[spec.run_id].append((label, digest))
        plan.jobs.append(PlannedJob(list(overrides), spec.run_id, run_dir, _job_state(run_dir), spec.run_id_record,
                                    spec, num))
    errors += optim_keys.unused()
    for run_id, entries in by_id.items():
        if len({d for _, d in entries}) > 1:
            errors.append(
                f"run id collision: {len(entries)} grid points map to '{run_id}' with different configs: "
                + "; ".join(f"[{lb}]" for lb, _ in entries)
                + ". The differing key is listed in run_id_exclude or is not an override; "
                "remove it from run_id_exclude or give each point a distinct sweep_name."
            )
    if errors:
        raise SweepError("the grid was not launched:\n" + "\n".join(errors))
    counts = defaultdict(int)
    for j in plan.jobs:
        counts[j.state] += 1
    log.info(
        "sweep plan: %d runs (%d new, %d to resume, %d finished and skipped, %d diverged and skipped)",
        len(plan.jobs), counts["todo"], counts["resume"], counts[STATUS_DONE], counts[STATUS_DIVERGED],
    )
    for j in plan.jobs:
        if j.state in (STATUS_DONE, STATUS_DIVERGED):
            log.info("  skip %s (%s): %s", j.run_id, j.state, j.run_dir)
    return plan


def restrict_plan(plan: SweepPlan, only: Sequence[str]) -> None:
    """Launch only the runs named in ``only`` (hydra.sweeper.only); the others are left alone."""
    wanted = set(only)
    unknown = sorted(wanted - {j.run_id for j in plan.jobs})
    if unknown:
        raise SweepError(f"hydra.sweeper.only names runs that are not in this grid: {', '.join(unknown)}")
    for j in plan.jobs:
        if j.run_id not in wanted and j.state in ("todo", "resume"):
            j.state = "left"
    log.info("hydra.sweeper.only: launching %d of the grid's runs", len(plan.to_launch))


def launch_batches(todo: Sequence[PlannedJob], max_batch_size: Optional[int],
                   numbered: bool = False) -> list[list[PlannedJob]]:
    """The launcher calls for ``todo``: at most ``max_batch_size`` jobs each. A launcher numbers a
    call's jobs from its ``initial_job_idx`` on, so a call holds consecutive grid positions (a
    relaunch that skips finished runs keeps every run's ``hydra.job.num``) unless the launcher takes
    each job's number (``numbered``: the SLURM launcher, one array for the whole call)."""
    size = max_batch_size or len(todo) or 1
    batches: list[list[PlannedJob]] = []
    for job in todo:
        last = batches[-1] if batches else None
        if last is not None and len(last) < size and (numbered or job.num == last[-1].num + 1):
            last.append(job)
        else:
            batches.append([job])
    return batches


def summarize_results(plan: SweepPlan, results: Sequence[Any]) -> None:
    """Log one line per run and raise SweepError if any launched run failed (the others finished).

    Runs that a launcher only queued (SLURM with hydra.launcher.wait=false) are listed with their
    job id; ``specsweep-status SWEEP_DIR`` follows them.
    """
    failed: list[str] = []
    queued = 0
    for job, result in zip(plan.to_launch, results):
        try:
            status = RunDir(job.run_dir).read_status().get("status", "unknown")
        except RunDirError:
            status = "unreadable"
        error = getattr(result, "_return_value", None)
        if getattr(result, "status", None) is not None and result.status.name == "UNKNOWN" and isinstance(error, str):
            log.info("  %-10s %s (SLURM job %s)", "queued", job.run_dir, error)
            queued += 1
            continue
        if getattr(result, "status", None) is not None and result.status.name == "FAILED":
            failed.append(f"{job.run_id}: {type(error).__name__}: {error}")
            status = STATUS_FAILED
        log.info("  %-10s %s", status, job.run_dir)
    sweep_dir = plan.jobs[0].run_dir.parent if plan.jobs else None
    log.info("run directories: %s", sweep_dir)
    if queued:
        log.info("%d runs queued; follow them with: specsweep-status %s", queued, sweep_dir)
    if failed:
        raise SweepError(f"{len(failed)} of {len(plan.to_launch)} runs failed:\n  " + "\n  ".join(failed))
