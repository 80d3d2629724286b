"""Several processes in one run (one per GPU, or per CPU slot): torch.distributed from the environment.

Where the ranks come from, first match wins:
  1. torchrun-style variables RANK, WORLD_SIZE (LOCAL_RANK, MASTER_ADDR, MASTER_PORT);
  2. a SLURM job step with more than one task (``srun``, which submitit uses): SLURM_PROCID,
     SLURM_STEP_NUM_TASKS, SLURM_LOCALID, the first host of the step's node list, and a port
     derived from SLURM_JOB_ID (unique per array task) unless MASTER_PORT is set.
Otherwise the run is a single process and no process group is created.

Use one task per GPU through srun rather than torchrun: torchrun does not forward SLURM's
preemption signal to its workers. The backend is NCCL on CUDA devices and gloo on CPU.

A rank that crashes, is killed or hangs must not leave the others blocked in a collective until the
process group's timeout (10 min): every rank runs a :class:`Watchdog` that notices it within
seconds (an error, or a dead process on the same host) or after ``SPECSWEEP_PEER_TIMEOUT_S``
seconds without a heartbeat (default 60: a hung rank, a lost node), logs which rank and why, lets
rank 0 record the run as failed, and ends the process.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
import torch.distributed as dist

from specsweep.sweep import liveness

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


POLL_S = 2.0            # how often each rank beats and looks at its peers
PEER_TIMEOUT_S = 60.0   # a peer whose heartbeat stands still this long is taken for hung or lost
PEER_TIMEOUT_ENV = "SPECSWEEP_PEER_TIMEOUT_S"  # overrides PEER_TIMEOUT_S
STORE_TIMEOUT_S = 30.0  # bound of one store operation of the watchdog

# Called on a rank before the watchdog ends its process (rank 0: record the run as failed).
FailureHook = Callable[[DistEnv, str], None]


class Watchdog:
    """Tells each rank when a peer crashed, died or hung, so it exits instead of waiting in a collective.

    Through its own client of the process group's TCP store (served by rank 0's process), every
    rank publishes its host and pid once, a heartbeat counter every ``poll_s``, its error text if
    its block raises, and a "left" flag when it leaves. A daemon thread looks at the store every
    ``poll_s`` (a few small requests, off the training path): any rank's published error; rank 0
    also watches every peer, the others watch rank 0. A watched rank is lost when its process is
    gone (same host: checked at once) or its counter has not moved for ``peer_timeout_s`` (measured
    on the local clock, so clocks of different nodes never matter); the others lose rank 0 when its
    store stops answering. Then the thread logs the reason, publishes it, calls ``on_failure`` and
    ends the process with ``os._exit(1)``: the main thread may be blocked in a C++ collective that
    Python cannot interrupt (checkpoints on disk stay valid; the run resumes from the newest).
    """

    def __init__(self, store: Any, env: DistEnv, on_failure: Optional[FailureHook] = None,
                 poll_s: float = POLL_S, peer_timeout_s: float = PEER_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic, exit: Callable[[int], Any] = os._exit) -> None:
        self.store, self.env, self.on_failure = store, env, on_failure
        self.poll_s, self.peer_timeout_s, self.clock, self._exit = poll_s, peer_timeout_s, clock, exit
        self.watched = list(range(1, env.world_size)) if env.is_main else [0]
        self._seen: dict[int, tuple[int, float]] = {}  # peer -> (heartbeat count, local time it last moved)
        self._info: dict[int, dict[str, Any]] = {}
        self._left: set[int] = set()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ---- what a rank publishes --------------------------------------------------------------------
    def start(self) -> "Watchdog":
        self.store.set(f"info/{self.env.rank}", json.dumps(liveness.this_process()))
        self.beat()
        with contextlib.suppress(Exception):  # the ranks start together (the group just formed)
            self.store.wait([f"info/{p}" for p in self.watched], datetime.timedelta(seconds=STORE_TIMEOUT_S))
            for p in self.watched:
                self._peer_info(p)  # known before anything can go wrong: a dead rank is then named
        self._thread = threading.Thread(target=self._monitor, name="specsweep-watchdog", daemon=True)
        self._thread.start()
        return self

    def beat(self) -> None:
        self.store.add(f"hb/{self.env.rank}", 1)

    def publish_error(self, text: str, cause: str = "self") -> None:
        """Record this rank's error; ``cause`` "peer" marks a rank that only stops because of another."""
        self.store.set(f"error/{self.env.rank}", json.dumps({"error": text[-2000:], "cause": cause}))
        self.store.add("failures", 1)  # a round trip: the error is stored once this returns

    # ---- what it sees -------------------------------------------------------------------------------
    def _peer(self, p: int) -> str:
        info = self._peer_info(p)
        return f"rank {p} (pid {info['pid']} on {info['host']})" if info else f"rank {p}"

    def _peer_info(self, p: int) -> Optional[dict[str, Any]]:
        if p not in self._info and self.store.check([f"info/{p}"]):
            self._info[p] = json.loads(self.store.get(f"info/{p}"))
        return self._info.get(p)

    def _has_left(self, p: int) -> bool:
        if p not in self._left and self.store.check([f"left/{p}"]):
            self._left.add(p)
        return p in self._left

    def failure(self, causes: tuple[str, ...] = ("self", "peer")) -> Optional[str]:
        """A published error of another rank (one it raised itself first), or None."""
        if int(self.store.add("failures", 0)) == 0:
            return None
        found = {}
        for p in range(self.env.world_size):
            if p != self.env.rank and self.store.check([f"error/{p}"]):
                found[p] = json.loads(self.store.get(f"error/{p}"))
        for cause in causes:
            for p, e in sorted(found.items()):
                if e.get("cause") == cause:
                    return f"{self._peer(p)} failed: {e.get('error')}"
        return None

    def verdict(self, causes: tuple[str, ...] = ("self", "peer")) -> Optional[str]:
        """Why this rank cannot go on (a peer failed, died or hung), or None while all is well."""
        now = self.clock()
        suspects = []
        for p in self.watched:
            if self._has_left(p):
                continue
            info = self._peer_info(p)
            count = int(self.store.add(f"hb/{p}", 0))
            last = self._seen.get(p)
            if last is None or last[0] != count:
                self._seen[p] = (count, now)
            if info is not None and liveness.process_gone(info):
                suspects.append((p, f"{self._peer(p)} died without reporting an error "
                                    "(killed: SIGKILL, out of memory, ...)"))
            elif last is not None and last[0] == count and now - last[1] > self.peer_timeout_s:
                suspects.append((p, f"{self._peer(p)} sent no heartbeat for {now - last[1]:.0f} s "
                                    "(hung, or its node is gone)"))
        # Errors are read after the left flags: a rank publishes its error before it leaves.
        reason = self.failure(causes)
        if reason:
            return reason
        for p, why in suspects:
            if not self._has_left(p):  # not a rank that left cleanly just now
                return why
        return None

    def _lost_store(self, error: BaseException) -> str:
        info = self._info.get(0)
        if info is not None and liveness.process_gone(info):
            return f"{self._peer(0)} died (the process group's store it served is gone)"
        return (f"lost contact with rank 0 ({self.env.master_addr}:{self.env.master_port}): its process "
                f"ended or its node is unreachable ({type(error).__name__}: {str(error).splitlines()[0][:200]})")

    # ---- the thread -----------------------------------------------------------------------------------
    def _monitor(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.beat()
                reason = self.verdict()
            except (RuntimeError, OSError) as e:  # the store is unreachable: rank 0, which serves it, is gone
                if self._stop.is_set() or 0 in self._left:
                    return
                reason = self._lost_store(e)
            except Exception:  # a fault of the watchdog itself must not end a healthy run
                log.warning("rank %d: watchdog check failed", self.env.rank, exc_info=True)
                continue
            if reason and not self._stop.is_set():
                self.fail(reason)
                return

    def fail(self, reason: str) -> None:
        """Log, publish and record ``reason``, then end this process."""
        log.error("%s; rank %d stops: the run cannot go on without every rank", reason, self.env.rank)
        try:
            self.publish_error(f"stopped: {reason}", cause="peer")
            self.store.set(f"left/{self.env.rank}", "failed")
        except Exception:
            pass  # the store may be the thing that is gone
        if self.on_failure is not None:
            try:
                self.on_failure(self.env, reason)
            except Exception:
                log.exception("could not record the failure")
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self._exit(1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.poll_s + STORE_TIMEOUT_S)
        self._thread = None

    def leave(self, error: Optional[BaseException]) -> Optional[str]:
        """Stop watching, publish ``error`` (if any) and this rank's "left" flag; returns what went
        wrong with a peer, if anything (with an error of its own: the likely cause of it).

        Rank 0 serves the store, so it then stays until every peer has left, failed or died
        (bounded by ``peer_timeout_s``).
        """
        self.stop()
        # With an error of our own, peers that merely stopped because of it explain nothing.
        causes = ("self",) if error is not None else ("self", "peer")
        try:
            if error is not None:
                self.publish_error(f"{type(error).__name__}: {error}")
            self.store.set(f"left/{self.env.rank}", "error" if error is not None else "ok")
            if not self.env.is_main:
                return self.verdict(causes) if error is not None else None
            deadline = self.clock() + self.peer_timeout_s + self.poll_s
            while self.clock() < deadline:
                reason = self.verdict(causes)
                if reason or all(self._has_left(p) for p in self.watched):
                    return reason
                time.sleep(min(self.poll_s, 0.1))
        except Exception as e:  # the store is gone: so is rank 0, which served it
            if error is not None and not self.env.is_main and 0 not in self._left:
                return self._lost_store(e)
        return None


def peer_timeout(environ: Optional[Mapping[str, str]] = None) -> float:
    """Seconds without a heartbeat after which a peer rank counts as hung or lost."""
    value = (os.environ if environ is None else environ).get(PEER_TIMEOUT_ENV, "").strip()
    if not value:
        return PEER_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{PEER_TIMEOUT_ENV}={value!r}: expected a number of seconds > 0")
    return seconds


def _start_watchdog(env: DistEnv, on_failure: Optional[FailureHook], peer_timeout_s: float) -> Optional[Watchdog]:
    try:
        client = dist.TCPStore(env.master_addr, env.master_port, None, False,
                               datetime.timedelta(seconds=STORE_TIMEOUT_S), wait_for_workers=False)
        return Watchdog(dist.PrefixStore("specsweep/watchdog/", client), env, on_failure,
                        peer_timeout_s=peer_timeout_s).start()
    except Exception as e:  # no watchdog: a dead rank then holds the others up to the group's timeout
        log.warning("rank %d: no watchdog over the other ranks (%s: %s)", env.rank, type(e).__name__, e)
        return None


@contextlib.contextmanager
def session(device_name: str, environ: Optional[Mapping[str, str]] = None, timeout_s: float = 600,
            on_peer_failure: Optional[FailureHook] = None,
            peer_timeout_s: Optional[float] = None) -> Iterator[DistEnv]:
    """Join the run's process group for the duration of the block (nothing to do for one process).

    ``timeout_s`` bounds how long ranks wait for each other in a collective; a rank that failed or
    died ends the others sooner through the :class:`Watchdog`, which calls ``on_peer_failure`` before
    it ends a process. An exception of this rank is published for the others; a rank whose own
    block failed (often because of a peer) logs the peer's failure too and passes it to
    ``on_peer_failure``.
    ``peer_timeout_s`` defaults to ``$SPECSWEEP_PEER_TIMEOUT_S``, else ``PEER_TIMEOUT_S``.
    """
    env = detect(environ)
    if not env.enabled:
        yield env
        return
    if peer_timeout_s is None:
        peer_timeout_s = peer_timeout(environ)
    device = pick_device(device_name, env)
    backend = "nccl" if device.type == "cuda" else "gloo"
    log.info("rank %d/%d (%s, local %d) joins %s process group at %s:%d", env.rank, env.world_size,
             env.source, env.local_rank, backend, env.master_addr, env.master_port)
    dist.init_process_group(backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
                            rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    watchdog = _start_watchdog(env, on_peer_failure, peer_timeout_s)
    root = logging.getLogger()
    level = root.level
    if not env.is_main:
        root.setLevel(logging.WARNING)  # one copy of the run's log, from rank 0
    error: Optional[BaseException] = None
    try:
        yield env
    except SystemExit:  # a planned stop (preemption: every rank stops at the same step)
        raise
    except BaseException as e:
        error = e
        raise
    finally:
        root.setLevel(level)
        if watchdog is not None:
            reason = watchdog.leave(error)
            if reason and isinstance(error, Exception):  # this rank failed, most likely because of it
                log.error("%s (this rank then stopped with %s: %s)", reason, type(error).__name__, error)
                if on_peer_failure is not None:
                    on_peer_failure(env, reason)
            elif reason:
                log.warning("%s", reason)
        if dist.is_initialized():
            dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (a no-op for one process)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank (a collective on every rank; ``flag`` for one process)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return bool(t.item() > 0)


def barrier() -> None:
    if active():
        dist.barrier()
