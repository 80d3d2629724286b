"""Finalize telemetry snapshots off the training critical path (a worker thread or process).

    finalizer = BackgroundFinalizer("thread")
    finalizer.submit(probe.snapshot(step))          # host copies; returns at once
    for records in finalizer.ready(): write(records) # completed events, in submission order
    write_all(finalizer.drain())                     # before marking the run done

Threads suffice when the decomposition is LAPACK/cuSOLVER (they release the GIL); processes
isolate the CPU work completely (snapshots must then live on the CPU: the default).
The queue is unbounded: a training loop should use metrics.pipeline.EventPipeline (bounded by
max_in_flight, rank-sharded, hard-rank-only events, a cost per event).
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

from metrics.records import finalize_snapshot
from metrics.snapshot import TelemetrySnapshot


class BackgroundFinalizer:
    """Runs `finalize_snapshot` on submitted snapshots in a pool; results in submission order."""

    def __init__(self, mode: str = "thread", max_workers: int = 1) -> None:
        if mode == "thread":
            self._pool: Executor = ThreadPoolExecutor(max_workers, thread_name_prefix="telemetry")
        elif mode == "process":
            # spawn: forking a process that holds a CUDA context is unsafe
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers, mp_context=ctx)
        else:
            raise ValueError(f"mode must be 'thread' or 'process', got {mode!r}")
        self._pending: deque[Future] = deque()

    def submit(self, snapshot: TelemetrySnapshot) -> Future:
        """Queue one event; the future's result is its list of records."""
        future = self._pool.submit(finalize_snapshot, snapshot)
        self._pending.append(future)
        return future

    @property
    def pending(self) -> int:
        """Events submitted and not yet collected."""
        return len(self._pending)

    def ready(self) -> list[list[dict]]:
        """Records of the events finished so far (head of the queue only, to keep the order)."""
        out = []
        while self._pending and self._pending[0].done():
            out.append(self._pending.popleft().result())
        return out

    def drain(self) -> list[list[dict]]:
        """Wait for every pending event and return their records in submission order."""
        out = []
        while self._pending:
            out.append(self._pending.popleft().result())
        return out

    def close(self) -> None:
        """Wait for pending work and stop the workers (collect results with drain() first)."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> BackgroundFinalizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
