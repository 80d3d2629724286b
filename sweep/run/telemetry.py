"""Spectral telemetry inside the training loop: cadence, token policy, files and the logger.

The math lives in ``metrics``; this module decides *when* and *on which tokens* to measure, and
where the records go. Only the covariance update and a snapshot (copies plus hard ranks) sit on the
training loop's critical path; eigendecompositions run in a background worker, and every pending
event is written before a checkpoint or the DONE marker, so a resumed run has no gaps.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from metrics import BackgroundFinalizer, FFNProbe, finalize_snapshot, frequency_buckets, metric_keys
from sweep.grid.spec import TelemetrySpec
from sweep.rundir import JsonlAppender

log = logging.getLogger("specsweep.telemetry")

RecordSink = Callable[[list[dict]], None]
# (step, {"L<layer:02d>_<site>_<bucket>": eigenvalues}) of one event, when eigenvalues are kept.
EigenSink = Callable[[int, dict], None]


class Telemetry:
    """FFN eigenspectrum telemetry of one run (a no-op when disabled)."""

    def __init__(self, model: torch.nn.Module, spec: TelemetrySpec, counts: Optional[np.ndarray], *,
                 total_steps: int, spectra_file: Path, eigen_dir: Path,
                 sink: Optional[RecordSink] = None, background: bool = True,
                 eigen_sink: Optional[EigenSink] = None, write: bool = True) -> None:
        # write=False: a DDP rank > 0, which takes part in the covariance all-reduce of every event
        # (FFNProbe.snapshot is a collective) and leaves decomposing and writing to rank 0.
        self.write = write
        self.spec = spec
        self.total_steps = total_steps
        self.eigen_dir = eigen_dir
        self.sink = sink
        self.eigen_sink = eigen_sink
        self.logged_metrics = metric_keys(spec.renyi_alphas)
        self.probe: Optional[FFNProbe] = None
        self._writer: Optional[JsonlAppender] = None
        self._finalizer: Optional[BackgroundFinalizer] = None
        self._last: list[dict] = []
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
        )
        if not write:
            return
        self._writer = JsonlAppender(spectra_file)
        self._finalizer = BackgroundFinalizer("thread") if background else None

    def due(self, step: int) -> bool:
        """First step, every ``every`` steps, and the last step."""
        if self.probe is None:
            return False
        return step == 1 or step % self.spec.every == 0 or step == self.total_steps

    @contextlib.contextmanager
    def capturing(self, active: bool) -> Iterator[None]:
        if active and self.probe is not None:
            with self.probe.capturing():
                yield
        else:
            yield

    def set_tokens(self, idx: torch.Tensor) -> None:
        if self.probe is not None:
            self.probe.set_tokens(idx)

    @torch.no_grad()
    def measure_probe(self, model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                      device: torch.device, autocast: Callable[[], Any]) -> None:
        """Capture on fixed held-out batches (telemetry.tokens=probe), in eval mode."""
        assert self.probe is not None
        was_training = model.training
        model.eval()
        with self.probe.capturing():
            for x, _ in batches:
                x = x.to(device)
                self.probe.set_tokens(x)
                with autocast():
                    model(x)
        model.train(was_training)

    def finish_event(self, step: int) -> None:
        """Snapshot this step's covariances and queue their decomposition."""
        assert self.probe is not None
        snapshot = self.probe.snapshot(step, device="cpu")
        if not self.write:
            return
        if self._finalizer is None:
            self._emit(finalize_snapshot(snapshot))
            return
        self._finalizer.submit(snapshot)
        for records in self._finalizer.ready():
            self._emit(records)

    def drain(self) -> None:
        """Write every pending event (before a checkpoint and before DONE)."""
        if self._finalizer is not None:
            for records in self._finalizer.drain():
                self._emit(records)

    def _emit(self, records: list[dict]) -> None:
        if not records:
            return
        eigen = {}
        for r in records:
            values = r.pop("eigenvalues", None)
            if values is not None:
                eigen[f"L{int(r['layer']):02d}_{r['site']}_{r['bucket']}"] = np.asarray(values, dtype=np.float32)
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

    def close(self) -> None:
        try:
            self.drain()
        finally:
            if self._finalizer is not None:
                self._finalizer.close()
            if self._writer is not None:
                self._writer.close()
            if self.probe is not None:
                self.probe.detach()
