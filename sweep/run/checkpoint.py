"""Checkpoints: complete training state, written atomically, newest complete one wins on resume.

A checkpoint holds plain data only (tensors, numbers, strings, lists, dicts; RNG states converted
to those), and is loaded with ``torch.load(weights_only=True)``: a file that needs anything else to
unpickle (a crafted ``ckpt_*.pt`` would run code on resume) is treated as corrupt and skipped.
"""

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
    """Write ``state`` for ``step`` under a temporary name, rename it, then prune old ones.

    A kill during the write leaves at worst a stray temporary file and the previous checkpoint
    intact; a failed write (disk full) removes its temporary file and raises OSError naming the
    checkpoint.
    """
    path = run_dir.checkpoint_path(step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({**state, "step": step, "rng": rng_state()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:  # a failed write() does not say which file
            raise OSError(e.errno, f"writing checkpoint: {e.strerror}", str(path)) from e
        raise
    prune_checkpoints(run_dir, keep)
    for stray in path.parent.glob(".ckpt_*.tmp-*"):
        if stray != tmp:
            stray.unlink(missing_ok=True)
    return path


def prune_checkpoints(run_dir: RunDir, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for _, old in run_dir.checkpoints()[:-keep]:
        old.unlink(missing_ok=True)


def _why_unreadable(e: BaseException) -> str:
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:  # torch's message is a page of advice; the reason is one sentence of it
        reason = text.split(marker, 1)[1].strip().split(". ", 1)[0]
        return f"holds objects other than tensors and plain data ({reason})"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(e).__name__}: {first[:200]}"


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint as plain data; raise ValueError (naming it) if it is not one."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, corrupt, or not plain data (pickle.UnpicklingError)
        raise ValueError(f"checkpoint {path} is unreadable: {_why_unreadable(e)}") from e
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} is unreadable: holds a {type(state).__name__}, not a dict")
    return state


def load_latest_checkpoint(run_dir: RunDir, map_location: str | torch.device = "cpu",
                           unreadable: Optional[list[Path]] = None) -> Optional[dict[str, Any]]:
    """The newest checkpoint that loads; a corrupt newest one falls back to the one before.

    Each skipped file is logged with the reason and appended to ``unreadable`` when given.
    """
    for step, path in reversed(run_dir.checkpoints()):
        try:
            state = load_checkpoint(path, map_location)
        except ValueError as e:
            log.warning("%s; trying an older one", e)
            if unreadable is not None:
                unreadable.append(path)
            continue
        if state.get("step") != step:
            log.warning("checkpoint %s has step %s, expected %d; skipped", path, state.get("step"), step)
            if unreadable is not None:
                unreadable.append(path)
            continue
        return state
    return None
