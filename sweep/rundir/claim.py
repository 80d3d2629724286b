"""claim.lock: one process trains a run at a time.

Before a run is set up, its rank 0 takes an exclusive POSIX record lock (``fcntl.lockf``) on
``<run dir>/claim.lock`` and keeps it until the run ends. POSIX record locks are the kind that NFS
(v3 through lockd, v4 natively) and Lustre/GPFS share between hosts (``flock`` is local-only on
some of them), and the kernel (or the NFS server, once the client's lease lapses) drops them when
the process dies, ``kill -9`` and a lost node included: nothing stale is ever left to clean up.
The file itself stays (removing a lock file races with a process about to lock it); it holds the
holder's host, pid, start time and SLURM job, which a launcher that finds the run claimed names
in its one-line message.

POSIX locks belong to a process: a second lock from the same process succeeds, and closing *any*
descriptor of the file in the holder drops its lock. So the holder never opens the file again,
and ``holder_of`` (for ``sweep.status``) tests the lock with ``F_GETLK``, which takes nothing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import struct
import time
from pathlib import Path
from typing import Any, Optional

from specsweep.sweep import liveness
from specsweep.sweep.rundir.files import now_iso
from specsweep.sweep.rundir.heartbeat import slurm_job_id

log = logging.getLogger("specsweep.rundir")

CLAIM_FILE = "claim.lock"
# A requeued SLURM job may restart before the lock of its previous attempt is gone (the old
# process still exiting, or an NFS lease of a lost node not yet expired): it waits this long.
CLAIM_WAIT_ENV = "SPECSWEEP_CLAIM_WAIT_S"
CLAIM_WAIT_S = 180.0
_BUSY = (errno.EACCES, errno.EAGAIN)


class RunClaimed(Exception):
    """The run is being trained by another live process (``holder``: what its claim file says)."""

    def __init__(self, run_dir: Path, holder: dict[str, Any]) -> None:
        self.run_dir, self.holder = Path(run_dir), dict(holder)
        super().__init__(f"{self.run_dir.name} is being trained by another process ({describe(holder)}); skipped")


def describe(holder: dict[str, Any]) -> str:
    """``host h1, pid 123, SLURM job 77_3, since 2026-...`` from a claim record."""
    job = holder.get("slurm_job")
    return (f"host {holder.get('host') or '?'}, pid {holder.get('pid') or '?'}, "
            f"SLURM job {job if job else 'none'}, since {holder.get('since') or '?'}")


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class Claim:
    """An exclusive claim of one run directory, held until :meth:`release` or the process ends."""

    def __init__(self, path: Path, fd: Optional[int]) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def take(cls, run_dir: Path, wait_s: Optional[float] = None) -> "Claim":
        """Claim ``run_dir`` (made if missing); RunClaimed if a live process holds it.

        A holder of the same SLURM job (this job's previous attempt, requeued) is waited for up to
        ``wait_s`` (default ``$SPECSWEEP_CLAIM_WAIT_S`` or CLAIM_WAIT_S) seconds. A file system
        without record locks (ENOLCK, e.g. NFS mounted ``nolock``) is logged and the run goes on
        unclaimed, as before claims existed.
        """
        path = Path(run_dir) / CLAIM_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        me = {**liveness.this_process(), "slurm_job": slurm_job_id(),
              "since": now_iso()}
        deadline: Optional[float] = None
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno == errno.ENOLCK:
                    log.warning("%s: the file system takes no locks (%s); the run is not protected against a "
                                "second launch", path, e.strerror)
                    os.close(fd)
                    return cls(path, None)
                if e.errno not in _BUSY:
                    os.close(fd)
                    raise
            holder = _read(fd)
            if not (me["slurm_job"] and holder.get("slurm_job") == me["slurm_job"]):
                os.close(fd)
                raise RunClaimed(Path(run_dir), holder)
            if deadline is None:  # our own job's previous attempt: it is going away
                wait = float(os.environ.get(CLAIM_WAIT_ENV, CLAIM_WAIT_S)) if wait_s is None else wait_s
                deadline = time.monotonic() + wait
                log.info("%s is still claimed by this job's previous attempt (%s); waiting up to %.0f s",
                         run_dir, describe(holder), wait)
            if time.monotonic() >= deadline:
                os.close(fd)
                raise RunClaimed(Path(run_dir), holder)
            time.sleep(1.0)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me, sort_keys=True).encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the lock; the file (and its record of the last holder) stays
            self._fd = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


# struct flock as the kernel lays it out on Linux (x86-64, arm64): l_type, l_whence, l_start,
# l_len, l_pid (native alignment).
_FLOCK = "hhqqi"


def holder_of(run_dir: Path) -> Optional[dict[str, Any]]:
    """The claim record of the live process that holds ``run_dir``, or None if nobody holds it
    (or it cannot be told: no claim file, no read access, no lock support). Takes no lock."""
    path = Path(run_dir) / CLAIM_FILE
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, probe))[0]
        return (_read(fd) or {"host": None}) if kind != fcntl.F_UNLCK else None
    except OSError:
        return None
    finally:
        os.close(fd)
