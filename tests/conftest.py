"""Shared fixtures: isolated run/data/W&B folders, Hydra composition, subprocess runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

# Small, fast settings for end-to-end runs of the tiny model on the synthetic corpus
# (conf/preset/smoke.yaml; the run ids get the tag "smoke").
FAST = ["+preset=smoke", "logger=none"]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared-data cache for the whole session (the synthetic corpus is built once)."""
    return tmp_path_factory.mktemp("data_cache")


@pytest.fixture
def env(tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for a run: runs under tmp_path, shared data cache, W&B kept off the network/home."""
    runs = tmp_path / "runs"
    values = {
        "SPECSWEEP_RUNS": str(runs),
        "SPECSWEEP_DATA": str(data_cache),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_SILENT": "true",
        "HYDRA_FULL_ERROR": "1",
        "OMP_NUM_THREADS": "1",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return {**os.environ, **values}


def run_train(args: Sequence[str], env: dict[str, str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m sweep.train ARGS`` in a subprocess, from the repository root."""
    proc = subprocess.run(
        [sys.executable, "-m", "sweep.train", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"sweep.train {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture
def compose():
    """Compose conf/train.yaml with overrides, as Hydra does for a run (hydra node included)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    import sweep.grid.resolvers  # noqa: F401

    def _compose(overrides: Sequence[str] = ()):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose(config_name="train", overrides=list(overrides), return_hydra_config=True)

    return _compose
