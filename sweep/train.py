"""Entry point: ``python -m sweep.train [overrides]`` (one run) or ``-m`` (a grid).

    python -m sweep.train model.ffn_mult=2 optim=muon
    python -m sweep.train -m optim=adamw,muon model.ffn_mult=1,2,4
    python -m sweep.train -m +sweep=demo            # a named grid from conf/sweep/
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import sweep.grid.resolvers  # noqa: F401  (registers ${run_id:} before Hydra composes)
from sweep.credentials import exit_if_credentials_in


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> Any:
    from sweep.run.trainer import train_run

    return train_run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    # Before Hydra sees the arguments: it would echo them (job labels, launcher log lines,
    # .hydra/overrides.yaml, multirun.yaml, grid.json).
    exit_if_credentials_in(sys.argv[1:])
    main()
