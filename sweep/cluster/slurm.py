"""Small read-only queries of a SLURM cluster: what partitions offer, what state jobs are in.

Used by the SLURM launcher (check a resource request before submitting a grid, so a typo in the
partition or too many GPUs fails in seconds with a readable message instead of a bare sbatch
error) and by ``specsweep-status`` (is the job of a run pending, running, requeued, gone?).
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterable, Optional

_GPU_RE = re.compile(r"gpu(?::[^:,()]+)?:(\d+)")


def available() -> bool:
    return all(shutil.which(c) for c in ("sbatch", "sinfo", "squeue"))


def _run(cmd: list[str], timeout: float = 60) -> Optional[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def parse_minutes(limit: str) -> Optional[float]:
    """SLURM time limit (``infinite``, ``30``, ``4:00:00``, ``1-12:00:00``) in minutes; None = no limit."""
    limit = limit.strip()
    if not limit or limit in ("infinite", "UNLIMITED", "n/a"):
        return None
    days = 0
    if "-" in limit:
        d, limit = limit.split("-", 1)
        days = int(d)
    parts = [int(p) for p in limit.split(":")]
    if len(parts) == 1:
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, m, s = 0, parts[0], parts[1]
    else:
        h, m, s = parts[-3], parts[-2], parts[-1]
    return days * 1440 + h * 60 + m + s / 60


@dataclass
class Partition:
    name: str
    default: bool
    up: bool
    nodes: int
    cpus: int           # most CPUs on one node
    mem_mb: int         # most memory on one node
    gpus: int           # most GPUs on one node
    gres: str
    max_minutes: Optional[float]


def partitions() -> Optional[list[Partition]]:
    """Partitions as sinfo reports them (one entry per partition), or None if sinfo fails."""
    out = _run(["sinfo", "-h", "-o", "%P|%a|%D|%c|%m|%G|%l"])
    if out is None:
        return None
    found: dict[str, Partition] = {}
    for line in out.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 7:
            continue
        name, avail, nodes, cpus, mem, gres, limit = fields
        default = name.endswith("*")
        name = name.rstrip("*")
        gpus = max([int(g) for g in _GPU_RE.findall(gres)] or [0])
        p = found.get(name)
        entry = Partition(name, default, avail.startswith("up"), int(nodes or 0), _int(cpus), _int(mem), gpus,
                          gres if gres not in ("(null)", "") else "none", parse_minutes(limit))
        if p is None:
            found[name] = entry
        else:  # several node configurations in one partition: keep the most each offers
            p.nodes += entry.nodes
            p.cpus, p.mem_mb, p.gpus = max(p.cpus, entry.cpus), max(p.mem_mb, entry.mem_mb), max(p.gpus, entry.gpus)
    return list(found.values())


def _int(text: str) -> int:
    m = re.match(r"\d+", text)
    return int(m.group()) if m else 0


def check_request(*, partition: Optional[str], nodes: int, tasks_per_node: int, cpus_per_task: Optional[int],
                  gpus_per_node: Optional[int], mem_gb: Optional[float], timeout_min: int) -> list[str]:
    """What in a per-job request no node of the partition can satisfy ([] = fits, or sinfo unusable)."""
    parts = partitions()
    if not parts:
        return []
    names = ", ".join(p.name + (" (default)" if p.default else "") for p in parts)
    if partition:
        chosen = [p for p in parts if p.name == partition]
        if not chosen:
            return [f"partition '{partition}' does not exist on this cluster (cluster.partition); "
                    f"partitions: {names}"]
    else:
        chosen = [p for p in parts if p.default]
        if not chosen:
            return [f"this cluster has no default partition: set cluster.partition to one of {names}"]
    p = chosen[0]
    problems = []
    if not p.up:
        problems.append(f"partition '{p.name}' is not up")
    gpus = int(gpus_per_node or 0)
    if gpus > p.gpus:
        problems.append(f"resources.gpus_per_node={gpus} but nodes of partition '{p.name}' have at most "
                        f"{p.gpus} GPUs (gres: {p.gres})")
    cpus = tasks_per_node * int(cpus_per_task or 1)
    if cpus > p.cpus:
        problems.append(f"resources.tasks_per_node x resources.cpus_per_task = {cpus} CPUs per node but nodes of "
                        f"partition '{p.name}' have at most {p.cpus}")
    if mem_gb and mem_gb * 1024 > p.mem_mb:
        problems.append(f"resources.mem_gb={mem_gb:g} but nodes of partition '{p.name}' have at most "
                        f"{p.mem_mb / 1024:.1f} GB")
    if nodes > p.nodes:
        problems.append(f"resources.nodes={nodes} but partition '{p.name}' has {p.nodes} nodes")
    if p.max_minutes is not None and timeout_min > p.max_minutes:
        problems.append(f"resources.timeout_min={timeout_min} exceeds the time limit of partition '{p.name}' "
                        f"({p.max_minutes:g} min)")
    return problems


def job_states(job_ids: Iterable[str]) -> dict[str, str]:
    """SLURM state of each job (``123`` or array task ``123_4``): squeue for live jobs, sacct for ended ones.

    Jobs that neither knows are left out.
    """
    ids = sorted({j for j in job_ids if j})
    if not ids:
        return {}
    arrays = sorted({j.split("_")[0] for j in ids})
    states: dict[str, str] = {}
    out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(arrays)])
    for line in (out or "").splitlines():
        fields = line.strip().split("|")
        if len(fields) >= 2:
            states[fields[0]] = fields[1].split()[0]  # "CANCELLED by 0" -> "CANCELLED"
    # Not "-j": squeue fails on a list that holds one job it no longer knows.
    out = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"])
    for line in (out or "").splitlines():
        fields = line.strip().split("|")
        if len(fields) == 2:
            states[fields[0]] = fields[1]
    return {j: states[j] for j in ids if j in states}


LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
               "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}
