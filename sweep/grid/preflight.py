"""Whole-grid checks before a multirun launches anything, and the summary after it ends.

Hydra cannot resume a multirun and has no skip-if-done, so the sweep does it: every job of the grid
is composed and validated first (a typo in the 40th job must not surface after 39 runs trained),
run ids are checked for collisions, and jobs whose run directory is already DONE (or diverged) are
skipped, so relaunching a grid only runs what is left.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig

from sweep.credentials import redact_text
from sweep.errors import SweepError, UserError
from sweep.grid.identity import check_identity
from sweep.grid.spec import RunSpec, build_run_spec
from sweep.rundir import STATUS_DIVERGED, STATUS_DONE, STATUS_FAILED, RunDir, RunDirError

log = logging.getLogger("specsweep.sweep")


@dataclass
class PlannedJob:
    overrides: list[str]
    run_id: str
    run_dir: Path
    state: str  # "todo" | "resume" | "left" (not in hydra.sweeper.only) | the run's status done/diverged
    id_record: dict = field(default_factory=dict)  # the overrides behind the run id (RunIdParts.record)
    spec: Optional[RunSpec] = None  # the validated run (sweep.plan estimates from it)


@dataclass
class SweepPlan:
    jobs: list[PlannedJob] = field(default_factory=list)

    @property
    def to_launch(self) -> list[PlannedJob]:
        return [j for j in self.jobs if j.state in ("todo", "resume")]


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


def plan_sweep(config_loader: Any, master_config: DictConfig, jobs: Sequence[Sequence[str]],
               check_files: bool = True) -> SweepPlan:
    """Compose and validate every job; raise SweepError on any invalid job or run-id collision.

    ``check_files=False``: the data files are not looked at (``sweep.plan`` reports them apart).
    """
    plan = SweepPlan()
    errors: list[str] = []
    by_id: dict[str, list[tuple[str, str]]] = defaultdict(list)  # run id -> [(label, identity hash)]
    for overrides in jobs:
        label = redact_text(" ".join(overrides))  # a refused override may carry a credential
        try:
            cfg = config_loader.load_sweep_config(master_config, list(overrides))
            spec = build_run_spec(cfg, list(overrides), check_files=check_files)
            run_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
            digest = check_identity(RunDir(run_dir), spec.identity)
        except UserError as e:  # ConfigError, RunConfigChanged
            errors.append(f"job [{label}]: {e}")
            continue
        except Exception as e:  # composition errors from Hydra/OmegaConf
            errors.append(f"job [{label}]: {type(e).__name__}: {e}")
            continue
        if any(d == digest for _, d in by_id[spec.run_id]):
            # Same run (e.g. adamw under an optim.rank_fraction axis it does not use): launch once.
            log.info("  [%s] is the same run as an earlier grid point (%s); launched once", label, spec.run_id)
            by_id[spec.run_id].append((label, digest))
            continue
        by_id[spec.run_id].append((label, digest))
        plan.jobs.append(PlannedJob(list(overrides), spec.run_id, run_dir, _job_state(run_dir), spec.run_id_record,
                                    spec))
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


def summarize_results(plan: SweepPlan, results: Sequence[Any]) -> None:
    """Log one line per run and raise SweepError if any launched run failed (the others finished).

    Runs that a launcher only queued (SLURM with hydra.launcher.wait=false) are listed with their
    job id; ``python -m sweep.status SWEEP_DIR`` follows them.
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
        log.info("%d runs queued; follow them with: python -m sweep.status %s", queued, sweep_dir)
    if failed:
        raise SweepError(f"{len(failed)} of {len(plan.to_launch)} runs failed:\n  " + "\n  ".join(failed))
