"""Is a process still alive? Who this process is, in terms another process can check later.

A process is named by its host, pid and start time. Only a checker on the same host (same boot,
same pid namespace) can look the pid up; the start time guards against a reused pid, and a zombie
(killed, not yet reaped) counts as gone. Elsewhere the answer is "cannot tell" (None), and callers
fall back to heartbeat ages and scheduler states.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Any, Mapping, Optional


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


@lru_cache(maxsize=1)
def host_key() -> str:
    """Hostname, boot id and pid namespace: two processes with equal keys see the same pids."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return f"{socket.gethostname()}|{_read('/proc/sys/kernel/random/boot_id')}|{pidns}"


def _stat(pid: int) -> Optional[list[str]]:
    """Fields of /proc/<pid>/stat after the command name (state first), or None if there is none."""
    text = _read(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    return text.rsplit(")", 1)[1].split()


def process_start(pid: int) -> Optional[int]:
    """Start time of ``pid`` in clock ticks since boot (Linux), or None."""
    fields = _stat(pid)
    try:
        return int(fields[19]) if fields else None  # field 22 of stat; fields[0] is field 3
    except (IndexError, ValueError):
        return None


def this_process() -> dict[str, Any]:
    """Host, host key, pid and start time of the calling process (JSON-ready)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "host_key": host_key(), "pid": pid, "pid_start": process_start(pid)}


def process_gone(info: Mapping[str, Any]) -> Optional[bool]:
    """Whether the process described by ``info`` (see this_process) has ended.

    True: gone (no such pid, a zombie, or the pid now belongs to another process); False: alive;
    None: cannot tell from here (another host or pid namespace, or no /proc).
    """
    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host_key") != host_key() or not os.path.isdir("/proc/self"):
        return None
    fields = _stat(pid)
    if fields is None:
        return True
    if fields[0] in ("Z", "X"):  # killed, waiting to be reaped by its parent
        return True
    start = info.get("pid_start")
    return start is not None and process_start(pid) != start
