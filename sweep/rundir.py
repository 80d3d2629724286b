"""A run directory: resolved config, status, metrics, spectra, checkpoints and the DONE marker.

Every file that a reader might see half-written is written to a temporary name in the same folder
and renamed (``os.replace`` is atomic on POSIX), so a kill at any moment leaves either the old or
the new version. JSON-lines files are append-only and truncated back to the checkpoint step on
resume, so a resumed run continues the same curve without duplicated rows.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from sweep.errors import UserError

STATUS_RUNNING = "running"
STATUS_DONE = "done"
STATUS_DIVERGED = "diverged"
STATUS_FAILED = "failed"
STATUS_INTERRUPTED = "interrupted"
STATUS_REQUEUED = "requeued"      # stopped by SLURM preemption/time limit, checkpointed, job requeued
TERMINAL_STATUSES = (STATUS_DONE, STATUS_DIVERGED)

_CKPT_RE = re.compile(r"^ckpt_(\d{8})\.pt$")


class RunConfigChanged(UserError):
    """The run directory belongs to a run with a different configuration."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively; numpy scalars become Python ones."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, TypeError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def config_hash(identity: Mapping[str, Any]) -> str:
    """Stable short hash of the identity-relevant part of a resolved config."""
    blob = json.dumps(json_safe(dict(identity)), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = sorted(set(old) | set(new))
        out: list[str] = []
        for k in keys:
            out += _diff_keys(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


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

    # ---- status -------------------------------------------------------------------------------
    def is_done(self) -> bool:
        return self.done_file.exists()

    def read_status(self) -> dict[str, Any]:
        if not self.status_file.exists():
            return {}
        try:
            return json.loads(self.status_file.read_text())
        except json.JSONDecodeError:
            return {}

    def update_status(self, **fields: Any) -> dict[str, Any]:
        status = self.read_status()
        status.update(fields)
        status["updated"] = _now()
        atomic_write_text(self.status_file, json.dumps(json_safe(status), indent=2, sort_keys=True))
        return status

    def write_done(self, summary: Mapping[str, Any]) -> None:
        """The completion marker: written last, atomically."""
        atomic_write_text(self.done_file, json.dumps(json_safe(dict(summary)), indent=2, sort_keys=True))

    def read_done(self) -> dict[str, Any]:
        return json.loads(self.done_file.read_text())

    # ---- identity -----------------------------------------------------------------------------
    def check_identity(self, identity: Mapping[str, Any]) -> str:
        """Hash of ``identity``; raise RunConfigChanged if the directory holds another run.

        Resuming (or skipping as finished) a run that was started with a different configuration
        would silently mix two runs, so the differing keys are listed instead.
        """
        digest = config_hash(identity)
        if self.identity_file.exists():
            old = json.loads(self.identity_file.read_text())
            if config_hash(old) != digest:
                changes = _diff_keys(old, json_safe(dict(identity)))
                shown = "\n  ".join(changes[:20]) + ("\n  ..." if len(changes) > 20 else "")
                raise RunConfigChanged(
                    f"run directory {self.path} holds a run started with a different config; "
                    f"refusing to resume it with this one. Changed keys:\n  {shown}\n"
                    "Use a new sweep_name (or paths.runs_root), add the key to the grid so it "
                    "enters the run id, or delete the old run directory."
                )
        return digest

    def claim(self, identity: Mapping[str, Any], config_yaml: str) -> str:
        """Check the identity (see check_identity), then record it and the resolved config."""
        digest = self.check_identity(identity)
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.identity_file.exists():
            atomic_write_text(self.identity_file, json.dumps(json_safe(dict(identity)), indent=2, sort_keys=True))
        atomic_write_text(self.config_file, config_yaml)
        return digest

    # ---- checkpoints --------------------------------------------------------------------------
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
    def truncate_jsonl(self, path: Path, max_step: int) -> int:
        """Drop rows with step > max_step (and a torn last line); returns rows kept."""
        if not path.exists():
            return 0
        kept = [row for row in iter_jsonl(path) if int(row.get("step", 0)) <= max_step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        return len(kept)


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSON-lines file; a torn final line (killed mid-write) is skipped."""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


class JsonlAppender:
    """Append-only JSON-lines writer, flushed per row so a crash loses at most the current row."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a")

    def write(self, row: Mapping[str, Any]) -> None:
        self._f.write(json.dumps(json_safe(dict(row))) + "\n")
        self._f.flush()

    def write_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self._f.write(json.dumps(json_safe(dict(row))) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()
