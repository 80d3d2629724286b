"""Spectral telemetry inside the training loop: which steps, which tokens, where records go, what it cost.

The math lives in ``metrics``; this module decides *when* and *on which tokens* to measure, *where*
spectra are decomposed, and where records and costs go. Every event goes through
``metrics.pipeline.EventPipeline``: under DDP each matrix is reduced onto one owner rank, which
decomposes its share (rank 0 gathers the records); hard ranks are computed at every event, full
spectra only where ``metrics.schedule.SpectrumCadence`` says (the fit's aggregation window and
every ``telemetry.spectrum_every``-th event before it, or a cadence chosen from measured costs);
at most ``telemetry.max_in_flight`` events are decomposed at once, and when the next one is due the
loop waits (the wait is part of the event's cost). Every event is written, records to
``spectra.jsonl`` and one cost row to ``metrics.jsonl``, before a checkpoint and before DONE.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist

from specsweep.metrics import EventCost, EventPipeline, FFNProbe, FinishedEvent, SpectrumCadence, finalize_snapshot
from specsweep.metrics import costmodel as cm
from specsweep.metrics import placement
from specsweep.metrics import collective_device, frequency_buckets, metric_keys
from specsweep.metrics.pipeline import time_host_work
from specsweep.metrics.schedule import keep_up_every
from specsweep.sweep.data.order import leading_rows
from specsweep.sweep.grid.spec import TelemetrySpec
from specsweep.sweep.rundir import JsonlAppender
from specsweep.sweep.run import distributed
from specsweep.sweep.run.event_timing import updates_at
from specsweep.sweep.run.telemetry_costs import EagerSteps, TelemetryTotals, cost_row

log = logging.getLogger("specsweep.telemetry")

RecordSink = Callable[[list[dict]], None]
# (step, {"L<layer:02d>_<site>_<bucket>": eigenvalues}) of one event, when eigenvalues are kept.
EigenSink = Callable[[int, dict], None]
# One metrics.jsonl row per event: {"step", "telemetry_<field>": ...} (cost_row).
CostSink = Callable[[dict], None]
Decompose = Callable[[Any], list[dict]]

class Telemetry:
    """FFN eigenspectrum telemetry of one run (a no-op when disabled).

    Every rank of a DDP run builds one (the event pipeline is a collective); only the one built
    with ``write=True`` (rank 0) writes records and costs. ``state``: what ``state_dict`` returned
    at the checkpoint the run resumes from (cadence, decomposition place, totals).
    ``decompose``: records of a spectrum snapshot (``metrics.finalize_snapshot``; picklable when
    the pool is a process pool).
    """

    def __init__(self, model: torch.nn.Module, spec: TelemetrySpec, counts: Optional[np.ndarray], *,
                 total_steps: int, spectra_file: Path, eigen_dir: Path, ckpt_every: Optional[int] = None,
                 sink: Optional[RecordSink] = None, eigen_sink: Optional[EigenSink] = None,
                 cost_sink: Optional[CostSink] = None, write: bool = True,
                 state: Optional[Mapping[str, Any]] = None, decompose: Optional[Decompose] = None,
                 grad_accum: int = 1) -> None:
        self.write = write
        self.grad_accum = grad_accum  # micro-batches per step (telemetry.bucket_sequences counts the step's rows)
        self.spec = spec
        self.total_steps = total_steps
        self.ckpt_every = ckpt_every
        # decompose_on=auto on CUDA resolved to the CPU pool: an event whose records are needed
        # before the pool would finish them goes to the GPU (_device_now)
        self.per_event_device = False
        # measured in this run (kept in checkpoints): one event's decomposition in the pool (first
        # from one timed eigvalsh) and on the device, and its copy to the host, in seconds
        measured = (state or {}).get("measured") or {}
        self._pool_s: Optional[float] = measured.get("pool_s")
        self._device_s: Optional[float] = measured.get("device_s")
        self._copy_s: Optional[float] = measured.get("copy_s")
        self.eigen_dir = eigen_dir
        self.sink = sink
        self.eigen_sink = eigen_sink
        self.cost_sink = cost_sink
        self.logged_metrics = metric_keys(spec.renyi_alphas)
        self.totals = TelemetryTotals()
        self.probe: Optional[FFNProbe] = None
        self.cadence: Optional[SpectrumCadence] = None
        self.pipeline: Optional[EventPipeline] = None
        self._writer: Optional[JsonlAppender] = None
        self._last: list[dict] = []
        self._step_s: Optional[float] = None  # seconds per step, from the time between events
        self.eager = EagerSteps()  # train.compile=true: the telemetry steps' eager cost
        # set before the early return: close() reads it on a telemetry=off run too
        self.distributed = distributed.active()
        if not spec.enabled:
            return
        buckets = None
        if spec.buckets:
            if counts is None:
                log.warning("no corpus frequency table for this data; HEAD/MID/TAIL buckets disabled")
            else:
                buckets = frequency_buckets(counts)
        self.probe = FFNProbe(
            model, sites=list(spec.sites), bucket_of_token=buckets,
            min_bucket_rows=spec.min_bucket_rows, subsample=float(spec.subsample),
            renyi_alphas=[float(a) for a in spec.renyi_alphas], keep_eigenvalues=spec.log_eigenvalues,
            limit_bucket_rows=spec.bucket_sequences is not None,
        )
        self._decompose = decompose or finalize_snapshot
        self.device = next(model.parameters()).device
        self.cuda = self.device.type == "cuda"
        adaptive = spec.spectrum_every == "auto"
        self.cadence = SpectrumCadence(total_steps, spec.every, None if adaptive else int(spec.spectrum_every))
        state = state or {}
        if state.get("totals"):
            known = {f.name for f in dataclasses.fields(TelemetryTotals)}
            self.totals = TelemetryTotals(**{k: v for k, v in state["totals"].items() if k in known})
        if state.get("cadence"):
            self.cadence.load_state_dict(state["cadence"])
        self.on, self.reason, self._provisional = self._initial_place(state)
        self.per_event_device = bool(state.get("per_event_device")) and self.on == "cpu" and self.cuda
        self.cadence.budget = placement.cadence_budget(self.on)
        self.pipeline = self._pipeline(self.on)
        if write:
            self._writer = JsonlAppender(spectra_file)
            k = self.cadence.spectrum_every
            when = ("at every event" if k == 1 and not adaptive else
                    f"on the last {len(self.cadence.window)} events and every "
                    + ("k-th before them (k chosen from measured costs)" if adaptive else f"{k}-th before them"))
            log.info("telemetry: spectra %s, decomposed on %s (%s); at most %d event(s) in flight",
                     when, self.on, self.reason, spec.max_in_flight)

    @property
    def enabled(self) -> bool:
        return self.probe is not None

    # ---- where spectra are decomposed ------------------------------------------------------------
    def _initial_place(self, state: Mapping[str, Any]) -> tuple[str, str, bool]:
        """(place, reason, provisional). ``auto`` on CUDA decomposes on the GPU until the time
        between two events is measured, then decides once (``_decide_place``); a resumed run keeps
        the decision of its first attempt."""
        requested = self.spec.decompose_on
        if requested != "auto" or not self.cuda:
            # the rule's own messages: "no accelerator", or gpu refused on a CPU-only run
            try:
                decision = placement.decide_decompose_on(requested, accelerator=self.cuda, cpu_decompose_s=0.0,
                                                  interval_s=1.0, host_bytes_needed=0, host_bytes_available=1)
            except ValueError as e:
                raise ValueError(f"telemetry.decompose_on: {e}") from None
            return decision.on, decision.reason, False
        if state.get("decompose_on") in ("cpu", "gpu"):
            return state["decompose_on"], f"{state.get('reason')} (decided before the resume)", False
        return "gpu", "until the time between events is measured", True

    def _workers(self) -> int:
        """CPU pool size: telemetry.decompose_workers, or the cores this rank may use minus the
        trainer's, at most one per (layer, bucket) unit (an event is not split finer)."""
        if self.spec.decompose_workers != "auto":
            return int(self.spec.decompose_workers)
        cores = placement.host_resources().cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        busy = 1 if self.cuda else torch.get_num_threads()
        assert self.probe is not None
        units = len(self.probe.layers) * (4 if self.probe.collector.buckets else 1)  # GLOBAL + HEAD/MID/TAIL
        return max(1, min(cores - busy, units))

    def _pipeline(self, on: str) -> EventPipeline:
        assert self.probe is not None
        return EventPipeline(
            self.probe.collector, self.probe.options, decompose_on="cpu" if on == "cpu" else "device",
            workers=self._workers() if on == "cpu" else 1,
            # CUDA: a process pool keeps the trainer's GIL free; CPU: threads use the host tensors (no copy)
            pool="process" if self.cuda else "thread",
            max_in_flight=int(self.spec.max_in_flight), bucket_scope=self.spec.bucket_scope,
            decompose=self._decompose, on_wait=self._on_wait,
        )

    def _decide_place(self) -> None:
        """decompose_on=auto on CUDA, once the time between events is known: ``placement.decide_decompose_on`` fed
        only with this run's measurements (the device's decomposition of the first spectrum event, the
        time between events, one fp64 eigvalsh on one host core and one device→host copy timed now,
        this host's cores and MemAvailable); the same answer on every rank."""
        assert self.probe is not None and self.cadence is not None and self._step_s is not None
        dims = [d for d in self.probe.collector.dims().values() if d]
        shape = cm.EventShape(layers=len(self.probe.layers), width=max(dims), rows=1, sites=len(self.probe.sites),
                              buckets=self.probe.collector.buckets, ranks=dist.get_world_size() if self.distributed else 1)
        workers = self._workers()
        eig_s, copy_s = time_host_work(shape.width, self.device)
        if self.distributed:  # every rank decides (and sets its cadence) from the same, slowest figures
            eig_s, copy_s = self._agreed_max([eig_s, copy_s])
        self._pool_s = -(-shape.matrices_per_rank // workers) * eig_s  # until the pool itself is measured
        self._copy_s = shape.matrices_per_rank * copy_s
        _, host = cm.event_memory(shape, True, workers, int(self.spec.max_in_flight))
        fixed_k = 1 if self.spec.spectrum_every == "auto" else int(self.spec.spectrum_every)
        interval = self._step_s * self.spec.every
        decision = placement.decide_decompose_on(
            "auto", accelerator=True, cpu_decompose_s=self._pool_s, interval_s=fixed_k * interval,
            host_bytes_needed=host["cpu"], host_bytes_available=placement.host_resources().mem_available_bytes,
            device_s=self._device_s, copy_s=self._copy_s)
        on, reason = decision.on, decision.reason + " (measured in this run)"
        if self.distributed and not self._agreed(on == "cpu", dist.ReduceOp.MIN) and on == "cpu":
            on, reason = "gpu", "another rank's CPU pool would not keep up"
        self._provisional, self.per_event_device = False, on == "cpu"
        if self.write:
            log.info("telemetry: decompose_on=auto -> %s: %s", on, reason)
        self.reason = reason
        if on != self.on:
            assert self.pipeline is not None and self.pipeline.in_flight == 0  # synchronous so far
            self.pipeline.close()
            self.on = on
            self.pipeline = self._pipeline(on)
            self.cadence.budget = placement.cadence_budget(on)
        if self.cadence.adaptive and on == "cpu":  # the pool's k from the timed eig until the pool is measured
            self.cadence.spectrum_every = keep_up_every(self._pool_s, interval)

    def _device_now(self, step: int) -> bool:
        """Whether this spectrum event goes to the GPU although the run decomposes on the CPU pool:
        the trainer will need its records (at a checkpoint, DONE, or for the pool's next event)
        sooner than the pool would deliver them, by more than the GPU takes (rule
        ``placement.decompose_on_device_now``, fed with this run's measured times)."""
        if (not (self.per_event_device and self.on == "cpu") or self._step_s is None
                or None in (self._device_s, self._pool_s, self._copy_s)):
            return False
        assert self.cadence is not None
        slots = int(self.spec.max_in_flight)
        need = placement.needed_at(step, self.total_steps, self.ckpt_every, self.cadence.upcoming(step, slots), slots)
        now = placement.decompose_on_device_now(self._device_s, self._pool_s, self._copy_s, (need - step) * self._step_s)
        if self.distributed:  # every rank must close the event the same way: the device if any rank says so
            now = self._agreed(now, dist.ReduceOp.MAX)
        return now

    @staticmethod
    def _agreed(flag: bool, op: Any) -> bool:
        """One flag agreed over the ranks (ReduceOp.MIN: every rank's, MAX: any rank's); a collective."""
        return Telemetry._agreed_max([1.0 if flag else 0.0], op)[0] > 0.0

    @staticmethod
    def _agreed_max(values: list[float], op: Any = None) -> list[float]:
        """Values reduced over the ranks (default: their maximum); a collective."""
        t = torch.tensor(values, dtype=torch.float64, device=collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op is None else op)
        return t.tolist()

    def _on_wait(self, step: int) -> None:
        if self.write:
            log.info("telemetry: waiting for the decomposition of step %d (max_in_flight=%d)", step, self.spec.max_in_flight)

    # ---- the loop's calls ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def capturing(self, active: bool) -> Iterator[None]:
        if active and self.probe is not None:
            with self.probe.capturing():
                yield
        else:
            yield

    def set_tokens(self, idx: torch.Tensor, micro: Optional[int] = None) -> None:
        """The ids of this rank's next forward, micro-batch ``micro`` of the step. telemetry.bucket_sequences
        = n: HEAD/MID/TAIL take only the rows among the step's first n sequences in the paper's order
        (sweep.data.order.leading_rows), whichever rank holds them; the global covariance takes all."""
        n, probe = self.spec.bucket_sequences, self.probe
        if probe is not None:
            rank = dist.get_rank() if self.distributed else 0
            limited = n is not None and micro is not None and probe.collector.buckets
            probe.set_tokens(idx, leading_rows(n, rank, micro, self.grad_accum, idx.shape[0]) if limited else None)

    @torch.no_grad()
    def measure_probe(self, model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                      device: torch.device, autocast: Callable[[], Any]) -> None:
        """Capture on ``batches`` in eval mode, no grad: the held-out probe (tokens=probe) or the
        batch after training (the last event, sweep/run/event_timing.py)."""
        assert self.probe is not None
        was_training = model.training
        model.eval()
        with self.probe.capturing():
            for micro, (x, _) in enumerate(batches):
                x = x.to(device)
                # the batch after training is a step's micro-batches: bucket_sequences picks its rows
                self.set_tokens(x, micro if self.spec.tokens == "train" else None)
                with autocast():
                    model(x)
        model.train(was_training)

    def finish_event(self, step: int) -> None:
        """Close this step's event (hard ranks now, the spectrum when the cadence says so), and
        write the events finished so far. Under DDP a collective on every rank; may wait for an
        earlier event's decomposition (max_in_flight)."""
        assert self.pipeline is not None and self.cadence is not None
        spectrum = self.cadence.decide(step)
        self._handle(self.pipeline.end_event(step, spectrum, on_device=spectrum and self._device_now(step)))
        if self._provisional and self._step_s is not None:
            self._decide_place()

    def drain(self) -> None:
        """Write every pending event (before a checkpoint and before DONE); a collective under DDP."""
        if self.pipeline is not None:
            self._handle(self.pipeline.drain())

    def note_compiled_step(self, step: int, seconds: float, event: bool) -> None:
        """train.compile=true: a step's seconds, ``step`` the event label when it measures one (a
        telemetry step's excess over the compiled steps is its eager_s: EagerSteps)."""
        if self.probe is not None:
            self.eager.note(step, seconds, event)

    def note_extra_forward(self, step: int, seconds: float) -> None:
        """A forward only telemetry needs (the batch after training, the held-out probe): all its
        seconds beyond the capture are the event's eager_s, counted in critical_s."""
        if self.probe is not None:
            self.eager.note_extra(step, seconds)

    def _handle(self, events: list[FinishedEvent]) -> None:
        for event in events:  # in step order; costs are the same on every rank
            self.eager.settle(event.cost)
            self._observe(event)
            if self.write:
                self._emit(event.records)
                if self.cost_sink is not None:
                    self.cost_sink(cost_row(event.cost, self._place_of(event.cost)))

    @staticmethod
    def _place_of(cost: EventCost) -> str:
        return "gpu" if cost.sync_decompose_s > 0 else "cpu"

    def _observe(self, event: FinishedEvent) -> None:
        """Totals, seconds per step, and (spectrum_every=auto) the cadence from measured costs."""
        assert self.cadence is not None
        cost = event.cost
        self.totals.add(cost)
        i = self.cadence.events.index(cost.step)
        if cost.interval_s is not None and i > 0:
            self._step_s = cost.interval_s / (cost.step - self.cadence.events[i - 1])
        if event.spectrum and cost.matrices > 0:  # measured decomposition times, for _device_now
            if cost.sync_decompose_s > 0:
                self._device_s = cost.sync_decompose_s
            elif cost.decompose_s > 0:
                self._pool_s = cost.decompose_s
        if (event.spectrum and self.cadence.adaptive and self._step_s is not None
                and self._place_of(cost) == self.on and cost.matrices > 0):
            spent = cost.sync_decompose_s if self.on == "gpu" else cost.decompose_s
            before = self.cadence.spectrum_every
            k = self.cadence.observe(spent, self._step_s * self.spec.every)
            if k != before and self.write:
                log.info("telemetry: spectra every %d event(s) from now on (decomposition %.3g s, %.3g s "
                         "between events, on %s)", k, spent, self._step_s * self.spec.every, self.on)

    def _emit(self, records: list[dict]) -> None:
        if not records:
            return
        eigen = {}
        for r in records:
            values = r.pop("eigenvalues", None)
            if values is not None:
                eigen[f"L{int(r['layer']):02d}_{r['site']}_{r['bucket']}"] = np.asarray(values, dtype=np.float32)
        for r in records:  # the optimizer updates behind the measured weights (0: the untrained model)
            r["updates"] = updates_at(self.spec, int(r["step"]))
        if eigen:
            self.eigen_dir.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(self.eigen_dir / f"step_{int(records[0]['step']):08d}.npz", **eigen)
        assert self._writer is not None
        self._writer.write_many(records)
        self._last = records
        if self.sink is not None:
            self.sink(records)
        if eigen and self.eigen_sink is not None:
            self.eigen_sink(int(records[0]["step"]), eigen)

    # ---- state and summaries ------------------------------------------------------------------------
    def state_dict(self) -> Optional[dict]:
        """Plain data for the checkpoint (take it after ``drain``): cadence, place, totals."""
        if self.cadence is None:
            return None
        return {"cadence": self.cadence.state_dict(),
                "decompose_on": None if self._provisional else self.on, "reason": self.reason,
                "per_event_device": self.per_event_device,
                "measured": {"pool_s": self._pool_s, "device_s": self._device_s, "copy_s": self._copy_s},
                "totals": dataclasses.asdict(self.totals)}

    def run_summary(self, wall_s: float) -> Optional[dict]:
        """The whole run's telemetry: its share of wall time ((critical path + waits) / wall), the
        seconds behind it, the counts of events with and without spectra, peak memory."""
        if self.cadence is None:
            return None
        t = self.totals
        added = t.critical_s + t.wait_s
        return {"share": added / wall_s if wall_s > 0 else None, "critical_s": t.critical_s, "wait_s": t.wait_s,
                "decompose_s": t.decompose_s, "events": t.events, "spectrum_events": t.spectrum_events,
                "hard_rank_only_events": t.events - t.spectrum_events, "decompose_on": self.on,
                "spectrum_every": self.cadence.spectrum_every, "peak_host_mib": t.peak_host_mib,
                "peak_device_mib": t.peak_device_mib}

    def summary(self) -> dict[str, float]:
        """Median over layers of the last event's ranks, per site and bucket (for run summaries)."""
        out: dict[str, float] = {}
        groups: dict[tuple[str, str, str], list[float]] = {}
        for r in self._last:
            if r.get("status") != "ok":
                continue
            for m in ("soft_rank", "hard_rank"):
                if r.get(m) is not None:
                    groups.setdefault((r["site"], r["bucket"], m), []).append(float(r[m]))
        for (site, bucket, m), values in groups.items():
            out[f"final/{site}/{bucket}/{m}"] = float(np.median(values))
        return out

    def close(self, drain: bool = True) -> None:
        """Stop the pool, close the file, remove the hooks. ``drain``: first write what is pending,
        on one process only (under DDP that is a collective, which a failing rank must not enter;
        the loop drains before every normal ending)."""
        try:
            if drain and not self.distributed:
                self.drain()
        except Exception as e:  # noqa: BLE001 - called in error paths too: never mask the first error
            log.warning("telemetry: pending events not written (%s: %s)", type(e).__name__, e)
        finally:
            if self.pipeline is not None:
                self.pipeline.close()
            if self._writer is not None:
                self._writer.close()
            if self.probe is not None:
                self.probe.detach()
