"""Several processes in one run (one per GPU, or per CPU slot): torch.distributed from the environment.

Where the ranks come from, first match wins:
  1. torchrun-style variables RANK, WORLD_SIZE (LOCAL_RANK, MASTER_ADDR, MASTER_PORT);
  2. a SLURM job step with more than one task (``srun``, which submitit uses): SLURM_PROCID,
     SLURM_STEP_NUM_TASKS, SLURM_LOCALID, the first host of the step's node list, and a port
     derived from SLURM_JOB_ID (unique per array task) unless MASTER_PORT is set.
Otherwise the run is a single process and no process group is created.

Use one task per GPU through srun rather than torchrun: torchrun does not forward SLURM's
preemption signal to its workers. The backend is NCCL on CUDA devices and gloo on CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
from dataclasses import dataclass
from typing import Iterator, Mapping, Optional

import torch
import torch.distributed as dist

log = logging.getLogger("specsweep.dist")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE = DistEnv()


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list: ``gpu[003-004,9],cpu1`` -> ``gpu003``."""
    m = re.match(r"\s*([^,\[\s]+)(?:\[([^\]]+)\])?", nodelist or "")
    if not m:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def detect(environ: Optional[Mapping[str, str]] = None) -> DistEnv:
    """This process's place in the run's process group, from the environment (see module doc)."""
    e = os.environ if environ is None else environ
    if "RANK" in e and "WORLD_SIZE" in e:
        rank, world = int(e["RANK"]), int(e["WORLD_SIZE"])
        return DistEnv(rank, world, int(e.get("LOCAL_RANK", rank)), e.get("MASTER_ADDR", "127.0.0.1"),
                       int(e.get("MASTER_PORT", 29500)), "env")
    world = int(e.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    if "SLURM_STEP_ID" in e and world > 1:
        nodes = e.get("SLURM_STEP_NODELIST") or e.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        port = int(e["MASTER_PORT"]) if "MASTER_PORT" in e else 20000 + int(e.get("SLURM_JOB_ID", "0")) % 40000
        return DistEnv(int(e["SLURM_PROCID"]), world, int(e.get("SLURM_LOCALID", "0")), first_host(nodes),
                       port, "slurm")
    return SINGLE


def pick_device(name: str, env: DistEnv = SINGLE) -> torch.device:
    """train.device for this rank: with several ranks, CUDA device ``local_rank`` of the node."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but CUDA is not available on this machine")
    if name.startswith("cuda") and env.enabled:
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device(name)


@contextlib.contextmanager
def session(device_name: str, environ: Optional[Mapping[str, str]] = None,
            timeout_s: float = 600) -> Iterator[DistEnv]:
    """Join the run's process group for the duration of the block (nothing to do for one process).

    ``timeout_s`` bounds how long ranks wait for each other (a rank that died leaves the others
    in a collective until then).
    """
    env = detect(environ)
    if not env.enabled:
        yield env
        return
    device = pick_device(device_name, env)
    backend = "nccl" if device.type == "cuda" else "gloo"
    log.info("rank %d/%d (%s, local %d) joins %s process group at %s:%d", env.rank, env.world_size,
             env.source, env.local_rank, backend, env.master_addr, env.master_port)
    dist.init_process_group(backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
                            rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    root = logging.getLogger()
    level = root.level
    if not env.is_main:
        root.setLevel(logging.WARNING)  # one copy of the run's log, from rank 0
    try:
        yield env
    finally:
        root.setLevel(level)
        if dist.is_initialized():
            dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (a no-op for one process)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if active():
        dist.barrier()
