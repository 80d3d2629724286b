"""Atomic writes and JSON-safe values: how every file of a run directory is written; the OSError
behind a failed write (os_error_in).

Every file that a reader might see half-written is written to a temporary name in the same folder
and renamed (``os.replace`` is atomic on POSIX), so a kill at any moment leaves either the old or
the new version.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional


def atomic_write_bytes(path: Path, data: bytes, sync: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a partial one.

    A failed write (disk full, permission denied) leaves the old file, no temporary one, and raises
    OSError naming ``path``. ``sync=False`` skips the fsync (still atomic for other processes; a
    power cut may lose it).
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:  # a failed write() does not say which file
            raise OSError(e.errno, f"writing {path.name}: {e.strerror}", str(path)) from e
        raise


def atomic_write_text(path: Path, text: str, sync: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), sync)


def os_error_in(error: BaseException) -> Optional[OSError]:
    """The OSError behind ``error``: itself, or the one a RuntimeError was raised from or while
    handling (torch reports a full disk during a save as RuntimeError 'unexpected pos', raised
    while handling the ENOSPC OSError)."""
    if isinstance(error, OSError):
        return error if error.errno is not None else None
    if isinstance(error, RuntimeError):
        behind = error.__cause__ or error.__context__
        if isinstance(behind, OSError) and behind.errno is not None:
            return behind
    return None


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


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second (the timestamps of run.json, the sweep record,
    claim.lock and an analysis's status.json)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
