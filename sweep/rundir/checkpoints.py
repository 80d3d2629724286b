"""checkpoints/ckpt_<step>.pt: written atomically, read as plain data, newest readable one wins.

A checkpoint holds plain data only (tensors, numbers, strings, lists, dicts), and is loaded with
``torch.load(weights_only=True)``: a file that needs anything else to unpickle (a crafted
``ckpt_*.pt`` would run code on resume) is treated as corrupt and skipped. What goes into one is
the trainer's business (sweep/run/checkpoint.py); where it lies and how it is read is this module's.

torch is imported inside the functions: the rest of the package serves ``sweep.status`` and
``sweep.fit``, which read run directories without it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from specsweep.sweep import liveness
from specsweep.sweep.rundir.files import os_error_in
from specsweep.sweep.rundir.layout import RunDir

log = logging.getLogger("specsweep.checkpoint")


def write_checkpoint(run_dir: RunDir, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` (plus its ``step``) for ``step`` under a temporary name, rename it, then prune.

    A kill during the write leaves at worst a stray temporary file and the previous checkpoint
    intact; a failed write (disk full) removes its temporary file and raises OSError naming the
    checkpoint.
    """
    import torch  # heavy: see the module docstring

    path = run_dir.checkpoint_path(step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({**state, "step": step}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        # torch reports a failed write (disk full) as RuntimeError "unexpected pos", raised while
        # handling the OSError (os_error_in); a failed write() does not say which file
        cause = os_error_in(e)
        if cause is not None and not cause.filename:
            raise OSError(cause.errno, f"writing checkpoint: {cause.strerror}", str(path)) from e
        raise
    prune_checkpoints(run_dir, keep)
    for stray in path.parent.glob(".ckpt_*.tmp-*"):
        if stray != tmp and not _writer_alive(stray):
            stray.unlink(missing_ok=True)
    return path


def _writer_alive(tmp: Path) -> bool:
    """Whether the process named by a temporary checkpoint's pid suffix may still be writing it.

    Only one process trains a run (its claim, sweep/rundir/claim.py), so another's temporary file is
    a killed attempt's; still, no process removes a file whose writer is alive on this host (the
    pid is looked up here: under the claim, no process of another host writes into the run). A zombie
    counts as gone (sweep/liveness.py); where /proc cannot tell, a signal-0 probe decides."""
    try:
        pid = int(tmp.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return False
    gone = liveness.process_gone({"pid": pid, "host_key": liveness.host_key()})
    if gone is not None:
        return not gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


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


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load one checkpoint as plain data; raise ValueError (naming it) if it is not one."""
    import torch  # heavy: see the module docstring

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, corrupt, or not plain data (pickle.UnpicklingError)
        raise ValueError(f"checkpoint {path} is unreadable: {_why_unreadable(e)}") from e
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} is unreadable: holds a {type(state).__name__}, not a dict")
    return state


def load_latest_checkpoint(run_dir: RunDir, map_location: Any = "cpu",
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
