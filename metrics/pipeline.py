"""Telemetry events end to end, bounded and accounted: pool, snapshot, hard ranks, decomposition.

    pipeline = EventPipeline(probe.collector, probe.options, decompose_on="cpu", workers=4)
    ...capture the event's forwards with probe.capturing()...
    for event in pipeline.end_event(step, spectrum=cadence.decide(step)):  # collective under DDP
        write(event.records, event.cost)      # records on rank 0 only; cost on every rank
    for event in pipeline.drain(): write(...) # before a checkpoint and before DONE
    pipeline.close()

Per event, on the critical path: pooling over ranks (each matrix reduced to its owner, see
metrics.sharding), a snapshot (finite checks, traces) and hard ranks by the trace formula. Events
that carry spectra are then decomposed either synchronously on the accumulators' device
(decompose_on="gpu"/"device", its time is critical-path time) or in a CPU pool (decompose_on="cpu":
fp64 on host copies of the matrices this rank owns). At most `max_in_flight` events are in the
pool: the next spectrum event first waits for a slot (the wait is recorded on the event waited
for), so host memory is bounded by max_in_flight events' matrices. Events without spectra copy
nothing to the host and are finished at once. Finished events come back in step order.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from specsweep.metrics.collector import SpectrumCollector
from specsweep.metrics.records import entry_status, finalize_snapshot, record_order_key
from specsweep.metrics.sharding import BUCKET_SCOPES, collective_device, decomposition_cost, matrix_owners, reduce_to_owners
from specsweep.metrics.snapshot import CovarianceSnapshot, TelemetryOptions, TelemetrySnapshot, snapshot_accumulator

DECOMPOSE_ON: tuple[str, ...] = ("cpu", "gpu", "device")  # gpu = device: the accumulators' device
POOLS: tuple[str, ...] = ("process", "thread")
MIB = float(2**20)

Decompose = Callable[[TelemetrySnapshot], list[dict]]


@dataclass
class EventCost:
    """What one telemetry event cost. Seconds are wall time; under DDP every field is the maximum
    over ranks (the same numbers on every rank, so decisions taken from them agree).

    capture_s: the covariance updates in the hooks (CUDA: GPU time of their kernels); None when
        not measured. reduce_s: pooling over ranks (moving the state out on one process).
        snapshot_s: finite checks, traces and host copies. hard_rank_s: the trace formula.
        sync_decompose_s: decomposition on the critical path (decompose_on="gpu"/"device").
        decompose_s: wall time of the asynchronous decomposition (first task start to last end).
        wait_s: how long the caller was blocked waiting for THIS event's decomposition (when the
        next event needed its slot, or in drain). interval_s: seconds since the previous
        end_event (None for the first). host_mib / device_mib: peak memory telemetry held while
        this event was in flight (tensors held: accumulators, snapshots of every event in flight,
        the fp64 working copies of running decompositions; on CUDA plus the allocator's measured
        peak during the event). matrices: matrices decomposed on the busiest rank. eager_s: under
        train.compile=true, the telemetry step's time on the eager module beyond a compiled step
        and its capture (set by the trainer).
    """

    step: int
    spectrum: bool
    capture_s: float | None = None
    reduce_s: float = 0.0
    snapshot_s: float = 0.0
    hard_rank_s: float = 0.0
    sync_decompose_s: float = 0.0
    decompose_s: float = 0.0
    wait_s: float = 0.0
    interval_s: float | None = None
    host_mib: float = 0.0
    device_mib: float = 0.0
    matrices: int = 0
    eager_s: float = 0.0

    @property
    def critical_s(self) -> float:
        """Seconds added to the training step by this event itself (waits not included)."""
        return ((self.capture_s or 0.0) + self.reduce_s + self.snapshot_s + self.hard_rank_s + self.sync_decompose_s
                + self.eager_s)

    def as_dict(self) -> dict:
        """Plain fields plus critical_s, for a metrics line."""
        return {**dataclasses.asdict(self), "critical_s": self.critical_s}

    _FLOATS = ("capture_s", "reduce_s", "snapshot_s", "hard_rank_s", "sync_decompose_s", "decompose_s",
               "wait_s", "interval_s", "host_mib", "device_mib", "matrices")


@dataclass
class FinishedEvent:
    """One event's records (all of them on rank 0 of the group, [] elsewhere) and its cost."""

    step: int
    spectrum: bool
    records: list[dict]
    cost: EventCost


@dataclass
class _Event:
    cost: EventCost
    records: list[dict] | None = None  # this rank's records once known
    futures: list[Future] = field(default_factory=list)
    settled: bool = False  # records known; deterministic across ranks (see _settle)
    error: BaseException | None = None
    host_bytes: int = 0  # host tensors held for the pool while in flight
    peak_host: int = 0
    peak_device: int = 0


def _decompose_task(fn: Decompose, snapshot: TelemetrySnapshot) -> tuple[list[dict], float, float]:
    """Worker side: (records, start, end); perf_counter is CLOCK_MONOTONIC, comparable across processes."""
    start = time.perf_counter()
    records = fn(snapshot)
    return records, start, time.perf_counter()


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _noop() -> None:
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_host(t: torch.Tensor | None, shared: bool) -> torch.Tensor | None:
    """A host tensor with t's values; in shared memory for a process pool (then pickling it sends
    a handle, not a copy). A host tensor that needs no sharing is returned as it is."""
    if t is None:
        return None
    if t.device.type == "cpu":
        return t.share_memory_() if shared else t
    out = torch.empty(t.shape, dtype=t.dtype, device="cpu")
    if shared:
        out.share_memory_()
    out.copy_(t)
    return out


def _work_units(entries: list[CovarianceSnapshot]) -> dict[tuple[int, str], list[CovarianceSnapshot]]:
    units: dict[tuple[int, str], list[CovarianceSnapshot]] = {}
    for entry in entries:
        units.setdefault((entry.layer, entry.bucket), []).append(entry)
    return units


def _entry_cost(entry: CovarianceSnapshot) -> float:
    if entry.m2 is None and entry.rows is None:
        return 0.0
    size = entry.rows.shape[0] if entry.rows is not None and entry.n < (entry.dim or 0) else entry.dim
    return decomposition_cost(size)


def split_snapshot(snapshot: TelemetrySnapshot, parts: int) -> list[TelemetrySnapshot]:
    """At most `parts` snapshots that together hold every entry, balanced by decomposition cost.

    Both sites of a (layer, bucket) stay together so JS(pre ‖ post) is computed in one piece.
    """
    units = _work_units(snapshot.entries)
    order = sorted(units, key=lambda u: -sum(_entry_cost(e) for e in units[u]))
    bins: list[list[CovarianceSnapshot]] = [[] for _ in range(max(1, parts))]
    load = [0.0] * len(bins)
    for unit in order:
        i = min(range(len(bins)), key=lambda b: (load[b], b))
        bins[i] += units[unit]
        load[i] += sum(_entry_cost(e) for e in units[unit])
    return [
        TelemetrySnapshot(snapshot.step, snapshot.options, entries, spectrum=snapshot.spectrum)
        for entries in bins if entries
    ]


class EventPipeline:
    """Pools, snapshots and decomposes telemetry events of one collector, bounded and accounted.

    Args:
        collector: the probe's SpectrumCollector (FFNProbe.collector).
        options: how records are computed (FFNProbe.options).
        decompose_on: "cpu" (a pool: fp64 on host copies, off the critical path) or "gpu" /
            "device" (synchronous on the accumulators' device, its time on the critical path).
            The caller resolves "auto" (with the cost model) before building the pipeline.
        workers: pool size for "cpu"; an event's matrices are split over the workers.
        pool: "process" (spawned worker processes, tensors passed through shared memory) or
            "thread" (LAPACK releases the GIL; no host copy when the accumulators are on the CPU).
        threads_per_worker: torch threads in each worker process.
        max_in_flight: spectrum events that may be decomposing at once (≥ 1).
        bucket_scope: "all" (bucket matrices pooled over ranks) or "rank0" (rank 0's rows only,
            the paper's rank0_local; the global matrix always pools every rank).
        eig_dtype: override options.eig_dtype (torch.float64 by default).
        decompose: records of a spectrum snapshot (default finalize_snapshot); injectable for tests,
            and must be picklable for a process pool.
        group: the torch.distributed group (None = the default group when initialized).
        time_capture: measure the capture cost (enables the collector's CaptureTimer).
        measure_cuda_peak: on CUDA, reset the allocator's peak statistics at each event and report
            the peak (this clobbers torch.cuda.max_memory_allocated for other readers).
        on_wait: called with an event's step just before the caller blocks on its decomposition
            (to log that telemetry holds the loop).
    Under DDP, end_event / poll / drain are collectives: every rank calls them in the same order
    with the same arguments.
    """

    def __init__(
        self,
        collector: SpectrumCollector,
        options: TelemetryOptions,
        *,
        decompose_on: str = "cpu",
        workers: int = 1,
        pool: str = "process",
        threads_per_worker: int = 1,
        max_in_flight: int = 1,
        bucket_scope: str = "all",
        eig_dtype: torch.dtype | None = None,
        decompose: Decompose = finalize_snapshot,
        group: dist.ProcessGroup | None = None,
        time_capture: bool = True,
        measure_cuda_peak: bool = True,
        on_wait: Callable[[int], None] | None = None,
    ) -> None:
        if decompose_on not in DECOMPOSE_ON:
            raise ValueError(f"decompose_on must be one of {DECOMPOSE_ON} (resolve 'auto' first), got {decompose_on!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if workers < 1 or threads_per_worker < 1:
            raise ValueError(f"workers and threads_per_worker must be ≥ 1, got {workers}, {threads_per_worker}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be ≥ 1, got {max_in_flight}")
        if bucket_scope not in BUCKET_SCOPES:
            raise ValueError(f"bucket_scope must be one of {BUCKET_SCOPES}, got {bucket_scope!r}")
        self.collector = collector
        self.options = options if eig_dtype is None else dataclasses.replace(options, eig_dtype=eig_dtype)
        self.asynchronous = decompose_on == "cpu"
        self.workers = workers
        self.pool_kind = pool
        self.max_in_flight = max_in_flight
        self.bucket_scope = bucket_scope
        self.decompose = decompose
        self.group = group
        self.measure_cuda_peak = measure_cuda_peak
        self.on_wait = on_wait
        distributed = dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size(group) if distributed else 1
        self.rank = dist.get_rank(group) if distributed else 0
        collector.capture_timer.enabled = time_capture
        self._events: deque[_Event] = deque()
        self._last_end: float | None = None
        self._pool: Executor | None = None
        if self.asynchronous:
            if pool == "process":
                # spawn: forking a process that holds a CUDA context is unsafe
                self._pool = ProcessPoolExecutor(
                    workers, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker, initargs=(threads_per_worker,),
                )
                for _ in range(workers):  # start the workers (torch import) now, not at the first event
                    self._pool.submit(_noop)
            else:
                self._pool = ThreadPoolExecutor(workers, thread_name_prefix="telemetry")

    # ------------------------------------------------------------------ the event
    def end_event(self, step: int, spectrum: bool, on_device: bool = False) -> list[FinishedEvent]:
        """Close the event whose rows the collector holds; returns the events finished so far.

        Waits first (recorded as the waited event's wait_s) while max_in_flight spectrum events
        are decomposing, then pools, snapshots and starts or does the decomposition. The collector
        is reset. ``on_device``: decompose this event now on the accumulators' device even when
        the pipeline decomposes on the CPU pool (an event whose records are needed at once, before
        a checkpoint or DONE, where waiting for the pool would take longer). Under DDP a
        collective, with the same step, spectrum flag and on_device on every rank.
        """
        if self.world > 1:
            self._check_same_event(int(step), bool(spectrum), bool(on_device))
        t_start = time.perf_counter()
        cost = EventCost(step=int(step), spectrum=bool(spectrum))
        cost.interval_s = t_start - self._last_end if self._last_end is not None else None
        self._last_end = t_start
        device = self._device()
        cost.capture_s = self.collector.capture_timer.take_seconds()
        acc_bytes = self.collector.tensor_bytes()
        acc_host = acc_bytes.get("cpu", 0)
        acc_device = sum(v for k, v in acc_bytes.items() if k != "cpu")
        host_before = acc_host + self._held_host()
        asynchronous = spectrum and self.asynchronous and not on_device

        # 1. a free slot before anything is copied to the host: memory bounded by max_in_flight
        while asynchronous and self.in_flight >= self.max_in_flight:
            self._wait(next(e for e in self._events if not e.settled), blocking=True)  # the oldest
        cuda_base = self._cuda_peak_start(device)

        # 2. pool: each matrix onto its owner rank (one process: move the state out)
        t0 = time.perf_counter()
        if self.world > 1:
            owners = matrix_owners(self.collector.matrix_keys, self.collector.dims(), self.world)
            pooled = reduce_to_owners(self.collector, owners, bucket_scope=self.bucket_scope, group=self.group)
        else:
            pooled = self.collector.take_local()
        _sync(device)
        cost.reduce_s = time.perf_counter() - t0

        # 3. snapshot: scalars and hard ranks always; tensors only when decomposed, on the host
        # only for the pool
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        snapshot = TelemetrySnapshot(step=int(step), options=self.options, spectrum=bool(spectrum))
        shared = self.pool_kind == "process"
        for key in list(pooled):
            entry = snapshot_accumulator(pooled.pop(key), *key, device=None, take=True,
                                         keep_tensors=bool(spectrum), timings=timings)
            if entry_status(entry, self.options.min_bucket_rows) != "ok":
                entry.m2 = entry.mean = entry.rows = None  # a flagged record: nothing to decompose
            elif asynchronous:
                entry.m2, entry.mean, entry.rows = (_to_host(t, shared) for t in (entry.m2, entry.mean, entry.rows))
            snapshot.entries.append(entry)
        _sync(device)
        cost.hard_rank_s = timings.get("hard_rank_s", 0.0)
        cost.snapshot_s = time.perf_counter() - t0 - cost.hard_rank_s
        decomposed = [e for e in snapshot.entries if _entry_cost(e) > 0]
        cost.matrices = len(decomposed) if spectrum else 0

        # 4. records now, or decomposition started
        event = _Event(cost)
        if not spectrum:
            event.records = finalize_snapshot(snapshot)
            event.settled = True
        elif not asynchronous:
            t0 = time.perf_counter()
            try:
                event.records = self.decompose(snapshot)
            except Exception as exc:  # reported at collection, on every rank
                event.error = exc
            _sync(device)
            cost.sync_decompose_s = time.perf_counter() - t0
            event.settled = True
        else:
            held = snapshot.tensor_bytes()
            # each running task holds an fp64 copy of its matrix and LAPACK's copy of that
            biggest = max((e.dim or 0 for e in decomposed), default=0)
            working = 16 * biggest * biggest * min(self.workers, len(decomposed))
            event.host_bytes = held.get("cpu", 0) + working
            assert self._pool is not None
            event.futures = [self._pool.submit(_decompose_task, self.decompose, part)
                             for part in split_snapshot(snapshot, self.workers)]
        del snapshot, pooled

        # 5. memory: what telemetry held at this event's peak (host: before or after the wait)
        cuda_extra = self._cuda_peak_extra(device, cuda_base)
        event.peak_device = acc_device + cuda_extra
        held_now = self._held_host() + event.host_bytes
        event.peak_host = max(host_before, held_now)
        for other in self._events:
            if not other.settled:
                other.peak_host = max(other.peak_host, held_now)
        self._events.append(event)
        return self._collect()

    def poll(self) -> list[FinishedEvent]:
        """Events finished since the last call, without waiting (one process: every finished
        decomposition; under DDP only what end_event/drain already settled). Collective under DDP."""
        return self._collect()

    def drain(self) -> list[FinishedEvent]:
        """Wait for every event and return all unreturned ones, in step order (call before a
        checkpoint and before DONE). Collective under DDP."""
        for event in self._events:
            if not event.settled:
                self._wait(event, blocking=True)
        return self._collect()

    @property
    def in_flight(self) -> int:
        """Spectrum events whose decomposition has not been collected."""
        return sum(1 for e in self._events if not e.settled)

    def held_bytes(self) -> dict[str, int]:
        """Bytes telemetry holds now: {"host": snapshots in flight + working copies, "accumulators": ...}."""
        acc = self.collector.tensor_bytes()
        return {"host": self._held_host(), "accumulators": sum(acc.values())}

    def close(self) -> None:
        """Stop the workers; events not drained are dropped (no collective: safe in error paths)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._events.clear()

    def __enter__(self) -> EventPipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _device(self) -> torch.device:
        for acc in self.collector.acc.values():
            if acc.device is not None:
                return acc.device
        return torch.device("cpu")

    def _held_host(self) -> int:
        return sum(e.host_bytes for e in self._events if not all(f.done() for f in e.futures))

    def _cuda_peak_start(self, device: torch.device) -> int | None:
        if device.type != "cuda" or not self.measure_cuda_peak:
            return None
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)

    def _cuda_peak_extra(self, device: torch.device, base: int | None) -> int:
        if base is None:
            return 0
        return max(0, torch.cuda.max_memory_allocated(device) - base)

    def _wait(self, event: _Event, blocking: bool = False) -> None:
        """Block until the event's decomposition is done; settle it and charge it the wait."""
        if blocking and self.on_wait is not None and not all(f.done() for f in event.futures):
            self.on_wait(event.cost.step)
        t0 = time.perf_counter()
        spans = []
        records: list[dict] = []
        for future in event.futures:
            try:
                part, start, end = future.result()
                records += part
                spans.append((start, end))
            except Exception as exc:  # reported at collection, on every rank
                event.error = event.error or exc
        event.cost.wait_s += time.perf_counter() - t0
        if spans:
            event.cost.decompose_s = max(e for _, e in spans) - min(s for s, _ in spans)
        event.records = sorted(records, key=record_order_key)
        event.settled = True

    def _collect(self) -> list[FinishedEvent]:
        if self.world == 1:  # no other rank to agree with: anything finished may be settled
            for event in self._events:
                if not event.settled and all(f.done() for f in event.futures):
                    self._wait(event)
        out = []
        while self._events and self._events[0].settled:
            out.append(self._finish(self._events.popleft()))
        return out

    def _finish(self, event: _Event) -> FinishedEvent:
        cost = event.cost
        cost.host_mib = event.peak_host / MIB
        cost.device_mib = event.peak_device / MIB
        records = event.records or []
        if self.world > 1:
            records = self._agree_and_gather(event)
        elif event.error is not None:
            raise event.error
        return FinishedEvent(cost.step, cost.spectrum, records, cost)

    def _check_same_event(self, step: int, spectrum: bool, on_device: bool = False) -> None:
        """Every rank must close the same event the same way, or the collectives that follow pair
        up wrongly (a hang or wrong numbers); one tiny all-reduce turns that into an error everywhere."""
        how = float(spectrum) + 2.0 * float(on_device)  # one number for (spectrum, on_device)
        values = torch.tensor([step, how, -step, -how], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self.group)
        hi_step, hi_how, lo_step, lo_how = values.tolist()
        if hi_step != -lo_step or hi_how != -lo_how:
            lo, hi = int(-lo_how), int(hi_how)
            raise ValueError(
                f"ranks disagree on the telemetry event: steps {-lo_step:g}..{hi_step:g}, spectrum "
                f"{bool(lo & 1)}..{bool(hi & 1)}, on_device {bool(lo & 2)}..{bool(hi & 2)}; decide it from "
                f"values agreed over ranks (EventCost)"
            )

    def _comm_device(self) -> torch.device:
        return collective_device(self.group)

    def _agree_and_gather(self, event: _Event) -> list[dict]:
        """Max of every cost field and an error flag over ranks; this event's records to rank 0."""
        cost = event.cost
        values = [-1.0 if getattr(cost, k) is None else float(getattr(cost, k)) for k in EventCost._FLOATS]
        flags = torch.tensor([*values, 1.0 if event.error is not None else 0.0], dtype=torch.float64,
                             device=self._comm_device())
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)
        for name, value in zip(EventCost._FLOATS, flags.tolist()):
            if name in ("capture_s", "interval_s") and value < 0:
                setattr(cost, name, None)
            else:
                setattr(cost, name, int(value) if name == "matrices" else value)
        dst = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        gathered: list | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(event.records if event.error is None else None, gathered, dst=dst, group=self.group)
        if event.error is not None:
            raise event.error
        if flags[-1].item() > 0:
            raise RuntimeError(f"telemetry decomposition of step {cost.step} failed on another rank")
        if gathered is None:
            return []
        return sorted((r for part in gathered for r in (part or [])), key=record_order_key)


def time_host_work(width: int, device: torch.device) -> tuple[float, float]:
    """(seconds of one fp64 eigvalsh of a width x width matrix on one host thread, seconds of one
    width x width fp32 copy from ``device`` to the host), timed here, best of two."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(width, width, generator=gen, dtype=torch.float64)
    sym, src = a + a.T, a.float().to(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a pool worker runs one thread
    try:
        eig = min(_timed(lambda: torch.linalg.eigvalsh(sym)) for _ in range(2))
    finally:
        torch.set_num_threads(threads)
    copy = min(_timed(lambda: src.to("cpu", copy=True)) for _ in range(2))
    return eig, copy


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
