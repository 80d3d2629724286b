"""What a checkpoint holds beyond the model and optimizer: every RNG state, as plain data.

Where checkpoints lie and how they are written and read (atomically, ``weights_only``) belongs to
the run directory (sweep/rundir/checkpoints.py).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specsweep.sweep.rundir import RunDir, write_checkpoint


def rng_state() -> dict[str, Any]:
    """Every RNG state of the process as plain data (loadable with weights_only=True)."""
    version, mt, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    np.random.set_state((npy["name"], npy["keys"].cpu().numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(run_dir: RunDir, step: int, state: dict[str, Any], keep: int) -> Path:
    """Checkpoint ``state`` at ``step`` with the process's RNG states (see write_checkpoint)."""
    return write_checkpoint(run_dir, step, {**state, "rng": rng_state()}, keep)
