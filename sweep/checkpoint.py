"""Checkpoints: complete training state, written atomically, newest complete one wins on resume."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from sweep.rundir import RunDir

log = logging.getLogger("specsweep.checkpoint")


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: RunDir, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` for ``step`` under a temporary name, rename it, then prune old ones.

    A kill during the write leaves a stray temporary file and the previous checkpoint intact.
    """
    path = run_dir.checkpoint_path(step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save({**state, "step": step, "rng": rng_state()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for _, old in run_dir.checkpoints()[:-keep]:
        old.unlink(missing_ok=True)
    for stray in path.parent.glob(".ckpt_*.tmp-*"):
        if stray != tmp:
            stray.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(run_dir: RunDir, map_location: str | torch.device = "cpu") -> Optional[dict[str, Any]]:
    """The newest checkpoint that loads; a corrupt newest one falls back to the one before."""
    for step, path in reversed(run_dir.checkpoints()):
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:  # truncated or corrupt file
            log.warning("checkpoint %s is unreadable (%s); trying an older one", path, e)
            continue
        if state.get("step") != step:
            log.warning("checkpoint %s has step %s, expected %d; skipped", path, state.get("step"), step)
            continue
        return state
    return None
