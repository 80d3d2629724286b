"""A run directory's layout: its file names, run statuses, run.json, DONE and the identity record.

docs/contracts.md shows the layout. Every file a reader might see half-written is written
atomically (sweep/rundir/files.py); JSON-lines files are truncated back to the checkpoint step on
resume (sweep/rundir/jsonl.py).
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from omegaconf import OmegaConf

from specsweep.sweep.errors import UserError
from specsweep.sweep.rundir.files import atomic_write_text, json_safe, now_iso
from specsweep.sweep.rundir.claim import Claim, holder_of
from specsweep.sweep.rundir.heartbeat import HEARTBEAT_EVERY_S, Heartbeat, read_heartbeat
from specsweep.sweep.rundir.jsonl import truncate_jsonl

STATUS_RUNNING = "running"
STATUS_DONE = "done"
STATUS_DIVERGED = "diverged"
STATUS_FAILED = "failed"
STATUS_INTERRUPTED = "interrupted"
STATUS_REQUEUED = "requeued"      # stopped by SLURM preemption/time limit, checkpointed, job requeued

_CKPT_RE = re.compile(r"^ckpt_(\d{8})\.pt$")
# identity.json also holds the overrides behind the run id (sweep/grid/run_id.py RunIdParts.record)
# under this key, which is not part of the identity.
_RUN_ID_KEY = "_run_id"


class RunConfigChanged(UserError):
    """The run directory belongs to a run with a different configuration."""


class RunDirError(RuntimeError):
    """The run directory cannot be used (not writable, unreadable record)."""


def _json_object(path: Path, raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw`` (the bytes of ``path``); {} for an empty file."""
    text = raw.strip(b" \t\r\n\0")
    if not text:
        return {}
    try:
        value = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise RunDirError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise RunDirError(f"{path}: not a JSON object")
    return value


class RunDir:
    """Paths and small atomic operations of one run's directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.config_file = self.path / "config.yaml"
        self.identity_file = self.path / "identity.json"
        self.status_file = self.path / "run.json"
        self.metrics_file = self.path / "metrics.jsonl"
        self.spectra_file = self.path / "spectra.jsonl"
        self.eigen_dir = self.path / "eigenvalues"
        self.ckpt_dir = self.path / "checkpoints"
        self.done_file = self.path / "DONE"
        self.heartbeat_file = self.path / "heartbeat.json"
        self.job_record_dir = self.path / ".hydra"  # Hydra's record of the job (its own file names)
        self._status_lock = threading.Lock()
        self._status_final = False

    # ---- status -------------------------------------------------------------------------------
    def is_done(self) -> bool:
        return self.done_file.exists()

    def read_status(self) -> dict[str, Any]:
        """run.json; {} when there is none or it is empty (or NUL bytes: a power cut before its data
        reached the disk). RunDirError naming the file when it cannot be read or is not a JSON object."""
        try:
            raw = self.status_file.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise RunDirError(f"{self.status_file}: {e.strerror or e}") from e
        return _json_object(self.status_file, raw)

    def update_status(self, final: bool = False, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into run.json. ``final``: the last word of this process; later updates
        (e.g. from a main thread still unwinding while a watchdog thread ends the process) are dropped."""
        with self._status_lock:
            if self._status_final:
                return self.read_status()
            status = self.read_status()
            status.update(fields)
            status["updated"] = now_iso()
            atomic_write_text(self.status_file, json.dumps(json_safe(status), indent=2, sort_keys=True))
            self._status_final = final
            return status

    def write_done(self, summary: Mapping[str, Any]) -> None:
        """The completion marker: written last, atomically."""
        atomic_write_text(self.done_file, json.dumps(json_safe(dict(summary)), indent=2, sort_keys=True))

    def read_done(self) -> dict[str, Any]:
        return json.loads(self.done_file.read_text())

    # ---- heartbeat ----------------------------------------------------------------------------
    def read_heartbeat(self) -> dict[str, Any]:
        """The last heartbeat of the run's process (see Heartbeat), or {} if there is none."""
        return read_heartbeat(self.heartbeat_file)

    def heartbeat(self, world_size: int = 1, every_s: float = HEARTBEAT_EVERY_S,
                  step: Optional[Callable[[], Any]] = None) -> Heartbeat:
        return Heartbeat(self.heartbeat_file, world_size=world_size, every_s=every_s, step=step)

    # ---- claim: one process per run (sweep/rundir/claim.py) ------------------------------------
    def claim(self, wait_s: Optional[float] = None) -> Claim:
        """Take the run for this process until released or the process ends; RunClaimed if a live
        process holds it."""
        try:
            return Claim.take(self.path, wait_s)
        except OSError as e:  # not RunClaimed: a directory this process cannot lock in (read-only, ...)
            raise RunDirError(f"cannot write to the run directory {self.path}: {e.strerror or e}") from e

    def claim_holder(self) -> Optional[dict[str, Any]]:
        """Who holds the run now (host, pid, slurm_job, since), None if nobody. Never call it in
        the holder's own process: closing its probe would drop the holder's lock."""
        return holder_of(self.path)

    # ---- identity record ------------------------------------------------------------------------
    # What identifies a run and how a relaunch is checked against this record is the grid's policy
    # (sweep/grid/identity.py); this class only reads and writes the files.
    def read_identity(self) -> Optional[dict[str, Any]]:
        """identity.json as recorded at the claim, None if there is none; RunDirError if unreadable."""
        recorded = self._read_identity_file()
        if recorded is not None:
            recorded.pop(_RUN_ID_KEY, None)
        return recorded

    def read_run_id_record(self) -> Optional[dict[str, Any]]:
        """The overrides behind the run id, as recorded at the claim (None for runs claimed before
        it was recorded, or not claimed)."""
        try:
            recorded = self._read_identity_file()
        except RunDirError:
            return None
        record = (recorded or {}).get(_RUN_ID_KEY)
        return record if isinstance(record, dict) else None

    def _read_identity_file(self) -> Optional[dict[str, Any]]:
        if not self.identity_file.exists():
            return None
        try:
            return json.loads(self.identity_file.read_text())
        except (OSError, ValueError) as e:
            raise RunDirError(f"cannot read {self.identity_file}: {e}") from e

    def read_config(self) -> Optional[dict[str, Any]]:
        """config.yaml (the resolved config) as a dict; None if it is missing or unparsable."""
        if not self.config_file.exists():
            return None
        try:
            recorded = OmegaConf.to_container(OmegaConf.load(self.config_file), resolve=False)
        except Exception:  # noqa: BLE001 - unparsable: the caller falls back to other records
            return None
        return recorded if isinstance(recorded, dict) else None

    def record_identity(self, identity: Mapping[str, Any], config_yaml: str,
                        run_id_record: Optional[Mapping[str, Any]] = None) -> None:
        """Write identity.json (once: the first claim's stays), with the overrides behind the run id
        (``run_id_record``), and config.yaml."""
        record = {**identity, **({_RUN_ID_KEY: dict(run_id_record)} if run_id_record is not None else {})}
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if not self.identity_file.exists():
                atomic_write_text(self.identity_file, json.dumps(json_safe(record), indent=2, sort_keys=True))
            atomic_write_text(self.config_file, config_yaml)
        except OSError as e:
            raise RunDirError(f"cannot write to the run directory {self.path}: {e.strerror or e}") from e

    def write_job_record(self, files: Mapping[str, str]) -> None:
        """Hydra's record of the job (file name -> text) into its folder, once the launch is accepted."""
        for name, text in files.items():
            atomic_write_text(self.job_record_dir / name, text)

    def remove_if_empty(self) -> None:
        """Remove the directory (and then its parent) if empty: what a refused launch leaves."""
        for folder in (self.path, self.path.parent):
            try:
                folder.rmdir()  # only ever succeeds on an empty directory
            except OSError:
                return

    # ---- checkpoints (written and read by sweep/rundir/checkpoints.py) --------------------------
    def checkpoint_step(self) -> int:
        """Step of the newest checkpoint file on disk (0: none), what a relaunch resumes from."""
        found = self.checkpoints()
        return found[-1][0] if found else 0

    def checkpoint_path(self, step: int) -> Path:
        return self.ckpt_dir / f"ckpt_{step:08d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints (temporary files excluded), oldest first."""
        if not self.ckpt_dir.is_dir():
            return []
        found = []
        for p in self.ckpt_dir.iterdir():
            m = _CKPT_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    # ---- json lines ---------------------------------------------------------------------------
    def truncate_jsonl(self, path: Path, max_step: int, max_step_of: Optional[Callable[[dict], int]] = None) -> int:
        """Drop rows with step > max_step (see sweep.rundir.jsonl.truncate_jsonl); returns rows kept."""
        return truncate_jsonl(path, max_step, max_step_of)
