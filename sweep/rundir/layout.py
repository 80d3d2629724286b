"""A run directory: resolved config, status, heartbeat, metrics, spectra, checkpoints and the DONE marker.

Every file that a reader might see half-written is written to a temporary name in the same folder
and renamed (``os.replace`` is atomic on POSIX), so a kill at any moment leaves either the old or
the new version. JSON-lines files are append-only and truncated back to the checkpoint step on
resume, so a resumed run continues the same curve without duplicated rows.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

from sweep import liveness

log = logging.getLogger("specsweep.rundir")

from sweep.errors import UserError

STATUS_RUNNING = "running"
STATUS_DONE = "done"
STATUS_DIVERGED = "diverged"
STATUS_FAILED = "failed"
STATUS_INTERRUPTED = "interrupted"
STATUS_REQUEUED = "requeued"      # stopped by SLURM preemption/time limit, checkpointed, job requeued
TERMINAL_STATUSES = (STATUS_DONE, STATUS_DIVERGED)
HEARTBEAT_EVERY_S = 30.0  # period of heartbeat.json (sweep.status calls a run stale after --stale-after)

_CKPT_RE = re.compile(r"^ckpt_(\d{8})\.pt$")


class RunConfigChanged(UserError):
    """The run directory belongs to a run with a different configuration."""


class RunDirError(RuntimeError):
    """The run directory cannot be used (not writable, unreadable record)."""


class JsonlError(ValueError):
    """A JSON-lines file holds a line that is neither a JSON object nor a torn last row."""


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
    """The current UTC time, ISO 8601 to the second (run.json's timestamps)."""
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
        self.heartbeat_file = self.path / "heartbeat.json"
        self._status_lock = threading.Lock()
        self._status_final = False

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
        try:
            beat = json.loads(self.heartbeat_file.read_text())
        except (OSError, ValueError):
            return {}
        return beat if isinstance(beat, dict) else {}

    def heartbeat(self, world_size: int = 1, every_s: float = HEARTBEAT_EVERY_S,
                  step: Optional[Callable[[], Any]] = None) -> "Heartbeat":
        return Heartbeat(self, world_size=world_size, every_s=every_s, step=step)

    # ---- identity -----------------------------------------------------------------------------
    def recorded_identity(self) -> tuple[Any, str]:
        """What the directory says about the identity of its run, and where it says it.

        identity.json; if that is gone, the identity of the recorded config.yaml; else the config
        hash stored in the newest readable checkpoint (a str); ``(None, "")`` for a new directory.
        Reads only: a refused launch must not change the directory it refuses.
        """
        if self.identity_file.exists():
            try:
                return json.loads(self.identity_file.read_text()), str(self.identity_file)
            except (OSError, ValueError) as e:
                raise RunDirError(f"cannot read {self.identity_file}: {e}") from e
        if self.config_file.exists():
            from omegaconf import OmegaConf

            from sweep.grid.spec import identity_of

            try:
                recorded = OmegaConf.to_container(OmegaConf.load(self.config_file), resolve=False)
            except Exception:  # noqa: BLE001 - unparsable: the checkpoints still tell
                recorded = None
            if isinstance(recorded, dict):
                return json_safe(identity_of(recorded)), str(self.config_file)
        if self.checkpoints():
            from sweep.run.checkpoint import load_latest_checkpoint

            state = load_latest_checkpoint(self, map_location="cpu")
            if state is not None and isinstance(state.get("config_hash"), str):
                return state["config_hash"], str(self.checkpoint_path(int(state["step"])))
        return None, ""

    def check_identity(self, identity: Mapping[str, Any]) -> str:
        """Hash of ``identity``; raise RunConfigChanged if the directory holds another run.

        Resuming (or skipping as finished) a run that was started with a different configuration
        would silently mix two runs, so the differing keys are listed instead.
        """
        digest = config_hash(identity)
        old, source = self.recorded_identity()
        if old is None:
            return digest
        old_digest = old if isinstance(old, str) else config_hash(old)
        if old_digest == digest:
            return digest
        if isinstance(old, str):
            detail = f"its checkpoint {source} was written under config hash {old}, this config hashes to {digest}"
        else:
            changes = _diff_keys(old, json_safe(dict(identity)))
            shown = "\n  ".join(changes[:20]) + ("\n  ..." if len(changes) > 20 else "")
            detail = f"changed keys (recorded in {Path(source).name}):\n  {shown}"
        raise RunConfigChanged(
            f"run directory {self.path} holds a run started with a different config; "
            f"refusing to resume it with this one. {detail}\n"
            "Use a new sweep_name (or paths.runs_root), add the key to the grid so it "
            "enters the run id, or delete the old run directory."
        )

    def claim(self, identity: Mapping[str, Any], config_yaml: str) -> str:
        """Check the identity (see check_identity), then record it and the resolved config."""
        digest = self.check_identity(identity)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if not self.identity_file.exists():
                atomic_write_text(self.identity_file, json.dumps(json_safe(dict(identity)), indent=2, sort_keys=True))
            atomic_write_text(self.config_file, config_yaml)
        except OSError as e:
            raise RunDirError(f"cannot write to the run directory {self.path}: {e.strerror or e}") from e
        return digest

    def remove_if_empty(self) -> None:
        """Remove the directory (and then its parent) if empty: what a refused launch leaves."""
        for folder in (self.path, self.path.parent):
            try:
                folder.rmdir()  # only ever succeeds on an empty directory
            except OSError:
                return

    # ---- checkpoints --------------------------------------------------------------------------
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
    def truncate_jsonl(self, path: Path, max_step: int) -> int:
        """Drop rows with step > max_step (and a torn last line); returns rows kept.

        Any other junk (a line that is not a JSON object, bytes that are not text, a row whose step
        is not a number) raises JsonlError naming the file and line.
        """
        if not path.exists():
            return 0
        kept = []
        for n, row in numbered_jsonl(path, strict=True):
            step = row.get("step", 0)
            if isinstance(step, bool) or not isinstance(step, (int, float)):
                raise JsonlError(f"{path}, line {n}: step {step!r} is not a number")
            if step <= max_step:
                kept.append(row)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        return len(kept)


def slurm_job_id(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """This process's SLURM job as jobs.jsonl names it (``123`` or array task ``123_4``), or None."""
    e = os.environ if environ is None else environ
    if e.get("SLURM_ARRAY_JOB_ID") and e.get("SLURM_ARRAY_TASK_ID"):
        return f"{e['SLURM_ARRAY_JOB_ID']}_{e['SLURM_ARRAY_TASK_ID']}"
    return e.get("SLURM_JOB_ID") or None


class Heartbeat:
    """``heartbeat.json`` of a live run, rewritten every ``every_s`` seconds by a daemon thread.

    It holds the time (ISO and unix seconds), host, pid and its start time, the SLURM job, the
    number of ranks and the current step, so ``sweep.status`` can tell a live run from a dead one
    whose run.json still says running (SIGKILL, out of memory, node lost). The thread costs one small
    un-fsynced atomic write per period and never touches the training loop; ``step`` is a callable
    the thread reads. A failed write (disk full, read-only) is logged once and retried next period.
    """

    def __init__(self, run_dir: RunDir, world_size: int = 1, every_s: float = HEARTBEAT_EVERY_S,
                 step: Optional[Callable[[], Any]] = None) -> None:
        self.run_dir, self.every_s, self.step = run_dir, float(every_s), step
        self._fixed = {**liveness.this_process(), "slurm_job": slurm_job_id(), "world_size": int(world_size),
                       "every_s": self.every_s}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._warned = False

    def beat(self) -> None:
        try:
            step = self.step() if self.step is not None else None
        except Exception:  # the step source is not ready yet
            step = None
        now = time.time()
        stamp = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(timespec="seconds")
        fields = {**self._fixed, "time": stamp, "unix": round(now, 3), "step": step}
        try:
            atomic_write_text(self.run_dir.heartbeat_file, json.dumps(json_safe(fields), sort_keys=True), sync=False)
        except OSError as e:
            if not self._warned:
                log.warning("cannot write %s (%s); sweep.status may report the run stale",
                            self.run_dir.heartbeat_file, e)
                self._warned = True

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beat()

    def start(self) -> "Heartbeat":
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="specsweep-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def numbered_jsonl(path: Path, strict: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a JSON-lines file; a torn final line (killed mid-write) is skipped.

    A torn line is the last one, without its newline, starting like a row. Other lines that are
    not JSON objects raise JsonlError naming the file and line if ``strict``, else are skipped.
    """
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            text = raw.strip()
            if not text:
                continue
            problem = ""
            try:
                row = json.loads(text.decode("utf-8"))
                if not isinstance(row, dict):
                    problem = f"not a JSON object: {text[:60].decode('utf-8', 'replace')!r}"
            except UnicodeDecodeError:
                problem = "not UTF-8 text"
            except json.JSONDecodeError as e:
                problem = f"not JSON ({e.msg}): {text[:60].decode('utf-8', 'replace')!r}"
            if not problem:
                yield n, row
                continue
            torn = not raw.endswith(b"\n") and text.startswith(b"{")
            if strict and not torn:
                raise JsonlError(f"{path}, line {n}: {problem}")


def iter_jsonl(path: Path, strict: bool = False) -> Iterator[dict[str, Any]]:
    """Rows of a JSON-lines file (see numbered_jsonl)."""
    for _, row in numbered_jsonl(path, strict):
        yield row


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


# ---- finding, reading and rebuilding run directories for the analysis ---------------------------
# (sweep.analysis reads runs only through these, so it spells no file name or status value.)

EXCLUDED_STATUSES = (STATUS_DIVERGED, STATUS_FAILED)
"""Statuses of runs that ended without a result: the analysis leaves them out."""

RUN_MARKER = RunDir(".").status_file.name
"""Name of the file that makes a folder a run directory (its status file)."""


def find_run_dirs(sweep_dir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Run directories of a sweep (children holding a status file; ``sweep_dir`` itself if it is a
    run) and ``(folder, reason)`` for children that hold run files but no status file."""
    if RunDir(sweep_dir).status_file.is_file():
        return [sweep_dir], []
    runs, orphans = [], []
    for child in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        run = RunDir(child)
        if run.status_file.is_file():
            runs.append(child)
        elif any(p.exists() for p in (run.spectra_file, run.metrics_file, run.done_file)):
            orphans.append((str(child), f"has run files but no {run.status_file.name}"))
    return runs, orphans


def read_jsonl_rows(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a JSON-lines file and the number of unreadable lines (a torn last line, a line that
    is not a JSON object); unlike :func:`iter_jsonl` it counts what it skips."""
    rows, bad = [], 0
    with path.open() as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    return rows, bad


def load_status(run: RunDir) -> Any:
    """The status file as written; raises OSError or json.JSONDecodeError (which
    :meth:`RunDir.read_status` turns into ``{}``) so that a reader can say why a run is unusable."""
    return json.loads(run.status_file.read_text())


def load_done(run: RunDir) -> Any:
    """The DONE marker's summary: ``{}`` for an empty marker, None when it is not valid JSON."""
    try:
        return json.loads(run.done_file.read_text() or "{}")
    except json.JSONDecodeError:
        return None


def write_run_files(path: Path, status: dict[str, Any], metrics: Iterable[dict[str, Any]],
                    spectra: Iterable[dict[str, Any]], done: dict[str, Any] | None) -> Path:
    """Write a run directory from its contents: status file, metrics and spectra rows, and the DONE
    marker when ``done`` is given (used to rebuild runs whose local files are gone, e.g. from W&B)."""
    run = RunDir(path)
    run.path.mkdir(parents=True, exist_ok=True)
    run.status_file.write_text(json.dumps(status, indent=1))
    for target, rows in ((run.metrics_file, metrics), (run.spectra_file, spectra)):
        target.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if done is not None:
        run.done_file.write_text(json.dumps(done))
    return run.path


ENDED_STATUSES = (STATUS_DONE, STATUS_DIVERGED, STATUS_FAILED)
"""Statuses of runs that will not log anything more (unless relaunched): the live analysis stops
waiting for them."""


def run_has_ended(path: Path) -> bool:
    """True when the run in ``path`` is finished, diverged or failed, or its status file is missing
    or unreadable (the trainer writes it atomically, so nothing will complete it)."""
    run = RunDir(path)
    if run.is_done():
        return True
    status = run.read_status()
    return not status or status.get("status") in ENDED_STATUSES
