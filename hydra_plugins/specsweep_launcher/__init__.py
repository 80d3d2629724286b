"""Hydra launcher for SLURM: the whole grid as job arrays through submitit.

Built on hydra-submitit-launcher's job wrapper (its ``__call__`` runs one Hydra job, its
``checkpoint`` makes submitit requeue the same job on preemption or time limit), with what the
PyPI plugin lacks: srun arguments, arrays split at the cluster's MaxArraySize, a check of the
request against ``sinfo`` before anything is submitted, a record of which SLURM job runs which run
(for ``specsweep-status``), killed jobs reported as failed runs instead of aborting the
sweep, and ``wait=false``: return as soon as the arrays are queued.

Configs: ``conf/hydra/launcher/slurm.yaml`` fills this schema from the ``cluster`` (site facts) and
``resources`` (per-job shape) groups.
"""

# No `from __future__ import annotations`: Hydra executes plugin modules outside sys.modules while
# scanning, and dataclasses with string annotations need their module there.
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

from specsweep.sweep.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class SpecsweepSlurmConf:
    _target_: str = "hydra_plugins.specsweep_launcher.SpecsweepSlurmLauncher"
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    # Return once the arrays are queued (follow with `specsweep-status DIR`), or wait for
    # every job and print the sweep summary.
    wait: bool = False
    # --- which cluster (conf/cluster) ---
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    setup: List[str] = field(default_factory=list)
    srun_args: List[str] = field(default_factory=list)
    additional_parameters: Dict[str, Any] = field(default_factory=dict)
    max_array_size: int = 1000
    array_parallelism: int = 64
    exclude: Optional[str] = None
    # --- what resources (conf/resources) ---
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: Optional[int] = None
    cpus_per_task: Optional[int] = None
    mem_gb: Optional[float] = None
    timeout_min: int = 60
    constraint: Optional[str] = None
    gres: Optional[str] = None
    # --- behaviour ---
    name: str = "specsweep"
    signal_delay_s: int = 120          # USR2 this long before the time limit (checkpoint + requeue)
    max_num_timeout: int = 20          # requeues after time limits (preemptions are not counted)
    stderr_to_stdout: bool = False
    check_resources: bool = True       # compare the request with `sinfo` before submitting
    python: Optional[str] = None       # interpreter on the nodes; default: this one (sys.executable)


ConfigStore.instance().store(group="hydra/launcher", name="specsweep_slurm", node=SpecsweepSlurmConf,
                             provider="specsweep")


class LaunchError(UserError):
    """The grid could not be submitted (bad resource request, sbatch refused it)."""


class SpecsweepSlurmLauncher(BaseSubmititLauncher):
    _EXECUTOR = "slurm"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)  # resolves every value to plain containers
        self.run_ids: Optional[List[str]] = None
        self.job_nums: Optional[List[int]] = None

    def set_run_ids(self, run_ids: Sequence[str], job_nums: Optional[Sequence[int]] = None) -> None:
        """Run ids of the next launch(), in order (the sweeper knows them; used for the job record),
        and their grid positions (hydra.job.num; default: initial_job_idx on)."""
        self.run_ids = list(run_ids)
        self.job_nums = list(job_nums) if job_nums is not None else None

    # ---- submission ------------------------------------------------------------------------------
    def _executor(self) -> Any:
        import submitit

        p = self.params
        ex = submitit.SlurmExecutor(folder=p["submitit_folder"], max_num_timeout=int(p["max_num_timeout"]),
                                    **({"python": p["python"]} if p.get("python") else {}))
        # torch would otherwise start one thread per core of the node, whatever the job was given.
        setup = ['export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"', *(p.get("setup") or [])]
        sbatch: Dict[str, Any] = dict(
            job_name=p["name"], partition=p.get("partition"), account=p.get("account"), qos=p.get("qos"),
            time=int(p["timeout_min"]), nodes=int(p["nodes"]), ntasks_per_node=int(p["tasks_per_node"]),
            cpus_per_task=p.get("cpus_per_task"), gpus_per_node=p.get("gpus_per_node") or None,
            mem=f"{int(float(p['mem_gb']) * 1024)}MB" if p.get("mem_gb") else None,
            constraint=p.get("constraint"), exclude=p.get("exclude"), gres=p.get("gres"),
            setup=setup, srun_args=list(p.get("srun_args") or []),
            additional_parameters=dict(p.get("additional_parameters") or {}),
            array_parallelism=int(p["array_parallelism"]), signal_delay_s=int(p["signal_delay_s"]),
            stderr_to_stdout=bool(p["stderr_to_stdout"]),
        )
        ex.update_parameters(**{k: v for k, v in sbatch.items() if v is not None})
        return ex

    def _check(self) -> None:
        from specsweep.sweep.cluster import slurm

        p = self.params
        if not slurm.available():
            raise LaunchError("hydra/launcher=slurm needs the SLURM commands (sbatch, sinfo) on this machine: "
                              "run the command on a login node of the cluster")
        if not p.get("check_resources", True):
            return
        problems = slurm.check_request(
            partition=p.get("partition"), nodes=int(p["nodes"]), tasks_per_node=int(p["tasks_per_node"]),
            cpus_per_task=p.get("cpus_per_task"), gpus_per_node=p.get("gpus_per_node"),
            mem_gb=p.get("mem_gb"), timeout_min=int(p["timeout_min"]))
        if problems:
            raise LaunchError("the grid was not submitted; the resource request does not fit the cluster:\n  "
                              + "\n  ".join(problems)
                              + "\n(set cluster.* / resources.* on the command line, or hydra.launcher.check_resources=false)")

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from specsweep.sweep.rundir import sweepdir

        assert self.config is not None
        n = len(job_overrides)
        assert n > 0
        run_ids = self.run_ids if self.run_ids and len(self.run_ids) == n else [None] * n
        nums = self.job_nums if self.job_nums and len(self.job_nums) == n else [initial_job_idx + i for i in range(n)]
        self.run_ids = self.job_nums = None
        self._check()
        executor = self._executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        size = max(1, int(self.params["max_array_size"]))
        jobs: List[Any] = []
        for start in range(0, n, size):
            chunk = list(range(start, min(n, start + size)))
            args = []
            for i in chunk:
                idx = nums[i]
                log.info("\t#%d : %s", idx, " ".join(filter_overrides(job_overrides[i])))
                args.append((list(job_overrides[i]), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                             Singleton.get_state()))
            try:
                submitted = executor.map_array(self, *zip(*args))
            except Exception as e:
                before = sorted({j.job_id.split("_")[0] for j in jobs})
                raise LaunchError(
                    f"sbatch refused the job array of runs {start}..{chunk[-1]}: {str(e).strip() or type(e).__name__}"
                    + (f"\narrays already submitted: {', '.join(before)} (scancel them or let them run)" if before else "")
                ) from e
            jobs += submitted
            sweepdir.record_jobs(sweep_dir, [(run_ids[i], list(job_overrides[i]), j.job_id)
                                             for i, j in zip(chunk, submitted)])
            first = submitted[0].job_id
            log.info("submitted %d runs as SLURM %s %s", len(submitted), "job array" if "_" in first else "job",
                     first.split("_")[0])
        if not self.params.get("wait", False) and not self._results_needed():
            return [_submitted(o, j.job_id) for o, j in zip(job_overrides, jobs)]
        return [_result(o, j) for o, j in zip(job_overrides, jobs)]


    def _results_needed(self) -> bool:
        """Whether the sweeper needs each job's result (an Optuna-style sweeper proposes the next
        trials from them): then launch() waits for the jobs even with wait=false."""
        assert self.config is not None
        sweeper = str(self.config.hydra.sweeper.get("_target_", ""))
        if sweeper.startswith("hydra_plugins.specsweep_sweeper."):
            return False
        log.info("waiting for the jobs (hydra.launcher.wait=false does not apply): %s needs their results",
                 sweeper.rsplit(".", 1)[-1] or "the sweeper")
        return True


class Submitted(str):
    """Return value of a job that was queued and not waited for: its SLURM job id."""


def _submitted(overrides: Sequence[str], job_id: str) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), status=JobStatus.UNKNOWN)
    ret._return_value = Submitted(job_id)
    return ret


def _result(overrides: Sequence[str], job: Any) -> JobReturn:
    """The job's JobReturn; a job that ended without one (killed, cancelled, out of memory) fails."""
    try:
        return job.results()[0]
    except Exception as e:  # submitit's UncompletedJobError / FailedJobError
        state = getattr(job, "state", "UNKNOWN")
        ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        ret._return_value = RuntimeError(f"SLURM job {job.job_id} ended without a result (state {state}): "
                                         f"{lines[-1] if lines else type(e).__name__}; log: {job.paths.stderr}")
        return ret
