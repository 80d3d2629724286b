"""Entry point: ``specsweep-train [overrides]`` (= ``python -m specsweep.sweep.train``; one run) or ``-m`` (a grid).

    specsweep-train model.ffn_mult=2 optim=muon
    specsweep-train -m optim=adamw,muon model.ffn_mult=1,2,4
    specsweep-train -m +sweep=demo            # a named grid from conf/sweep/

``--help`` shows more examples (conf/hydra/help/specsweep_train.yaml).
"""

from __future__ import annotations

import sys
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import specsweep.sweep.grid.resolvers  # noqa: F401  (registers ${run_id:} before Hydra composes)
from specsweep.sweep.commands import CONF_DIR
from specsweep.sweep.credentials import exit_if_credentials_in
from specsweep.sweep.run.faults import as_run_fault
from specsweep.sweep.rundir import RunDir


def _job_record(cfg: DictConfig, hydra_cfg: DictConfig) -> dict[str, str]:
    """Hydra's record of the job (its .hydra/ files), for the trainer to write once the launch is
    accepted: ``hydra.output_subdir`` is null so that Hydra does not write it before the task runs
    (a refused launch would overwrite the record of the run it refuses)."""
    return {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})),
        "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task),
    }


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    """Train one run; return its objective (train.objective) for sweepers that optimise it.

    Our own sweeper reads each run's state from its run directory; Optuna-style sweepers take the
    float: the final eval loss by default, +inf for a diverged run (sweep/run/trainer.py objective).
    """
    # These import torch: only the job pays for it, not `--help` or `--cfg`.
    from specsweep.sweep.grid.spec import build_run_spec
    from specsweep.sweep.run.trainer import objective, train_run

    hydra_cfg = HydraConfig.get()
    run_path = Path(hydra_cfg.runtime.output_dir)
    try:
        spec = build_run_spec(cfg, list(hydra_cfg.overrides.task), grid=hydra_cfg.mode == RunMode.MULTIRUN)
    except BaseException:
        RunDir(run_path).remove_if_empty()  # Hydra made it for a job that will not run
        raise
    try:
        result = train_run(spec, run_path, _job_record(cfg, hydra_cfg))
    except Exception as e:  # a fault of the run's files: one line naming file and run (sweep/run/faults.py)
        fault = as_run_fault(e, spec.run_id, run_path)
        if fault is None:
            raise
        raise fault from e
    return objective(result, spec.train.objective)


def cli() -> None:
    """The ``specsweep-train`` console script (and ``python -m specsweep.sweep.train``)."""
    # Before Hydra sees the arguments: it would echo them (job labels, launcher log lines,
    # .hydra/overrides.yaml, multirun.yaml, grid.json).
    exit_if_credentials_in(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
