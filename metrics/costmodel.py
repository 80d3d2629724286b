"""Cost model of spectral telemetry: time, memory and share of wall time, known before a grid runs.

Plain arithmetic on a `DeviceProfile`: per-width anchors (measured costs) and a few scalars; away
from the anchors:

- capture (the covariance GEMMs) is linear in the rows N of an event; per row it follows the
  anchors in D (power law between the two neighbouring anchors) and grows as D² beyond them;
- an fp64 eigendecomposition grows as D³ beyond its anchors;
- snapshot work per matrix (GLOBAL merge, finiteness check, hard rank by trace/Frobenius) as D².

Every estimate says, per figure, whether it is measured, interpolated, extrapolated or assumed.
Profiles: `H100` (anchors measured on one H100 with torch 2.11), or a calibration file written by
`benchmarks/telemetry_overhead.py --write-calibration` on the machine at hand (`load_profile`;
`sweep.plan plan.calibration=FILE`). `estimate_run` prices a whole run for `sweep.plan` and the
benchmark; a run decides from its own measurements only (`metrics.placement`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from dataclasses import replace as dataclasses_replace

from specsweep.metrics.placement import (GPU_SHARE_BUDGET, MEM_HEADROOM, HostResources, cadence_budget, decide_decompose_on,
                               decompose_on_device_now, needed_at, pool_workers)
from specsweep.metrics.schedule import AGGREGATION_EVENTS, checkpoint_steps, event_steps, keep_up_every, spectrum_steps

MEASURED, INTERPOLATED, ASSUMED = "measured", "interpolated", "assumed"  # the basis of a figure
MIB, GIB = 2**20, 2**30


def extrapolated(power: float) -> str:
    """Basis label of a figure extrapolated from an anchor as D^power."""
    return f"extrapolated ∝D^{power:g}"


@dataclass(frozen=True)
class Anchors:
    """Measured values of one per-width cost; `at(D)` interpolates and extrapolates them.

    points: (D, value) pairs, measured. power: the growth law in D outside the measured range.
    source: where and how the points were measured (one line).
    """

    points: tuple[tuple[int, float], ...]
    power: float
    source: str

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("Anchors need at least one (D, value) point")
        if any(d <= 0 or not v > 0 for d, v in self.points):
            raise ValueError(f"anchor widths and values must be positive, got {self.points}")
        object.__setattr__(self, "points", tuple(sorted((int(d), float(v)) for d, v in self.points)))

    def at(self, d: int) -> tuple[float, str]:
        """(value at width d, basis): measured at an anchor, power-law interpolated between the two
        neighbouring anchors, or extrapolated from the nearest one as D^power."""
        pts = self.points
        for dk, vk in pts:
            if dk == d:
                return vk, MEASURED
        if d < pts[0][0] or d > pts[-1][0]:
            dk, vk = pts[0] if d < pts[0][0] else pts[-1]
            return vk * (d / dk) ** self.power, extrapolated(self.power)
        for (da, va), (db, vb) in zip(pts, pts[1:]):
            if da < d < db:
                slope = math.log(vb / va) / math.log(db / da)
                return va * (d / da) ** slope, INTERPOLATED
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class DeviceProfile:
    """Measured costs of one machine (per rank: one accelerator and its share of the host).

    capture_row_s: seconds per row per (layer, site) of the capture path, timed on `capture_rows`
        rows (capture of N rows is extrapolated linearly from there).
    snapshot_matrix_s: seconds per matrix of the snapshot (merge, finiteness, hard rank).
    eig_core_s: fp64 eigvalsh of one D×D matrix by one CPU pool worker (core-seconds).
    eig_device_s: fp64 eigvalsh of one matrix on the accelerator (None: no accelerator).
    gemm_row_s: the bare covariance GEMM per row (the capture floor), when known.
    copy_bytes_per_s: device → host copy rate of a snapshot (only paid to decompose on the CPU).
    flops_per_s: effective training FLOP rate, for step-time estimates.
    eager_slowdown: an uncompiled step's time over a compiled one's (train.compile=true runs
        telemetry steps on the eager module: each event costs (eager_slowdown - 1) steps more).
    ckpt_bytes_per_s: checkpoint write rate (a checkpoint stops training while it is written).
    cores / host_mem_bytes: what a CPU pool may use when the caller gives no HostResources.
    basis: provenance of the scalar fields (measured / assumed, and how).
    """

    name: str
    accelerator: bool
    capture_row_s: Anchors
    capture_rows: int
    snapshot_matrix_s: Anchors
    eig_core_s: Anchors
    eig_device_s: Anchors | None
    copy_bytes_per_s: float
    flops_per_s: float
    cores: int
    host_mem_bytes: int
    basis: Mapping[str, str] = field(default_factory=dict)
    gemm_row_s: Anchors | None = None
    eager_slowdown: float = 1.0
    ckpt_bytes_per_s: float = 1e9
    measured: Mapping[str, float] = field(default_factory=dict)  # other figures of a calibration file

    def describe(self) -> list[str]:
        """One line per figure source, for printing next to an estimate."""
        lines = [f"profile {self.name}"]
        for label, anchors in (("capture per row", self.capture_row_s), ("GEMM floor per row", self.gemm_row_s),
                               ("snapshot per matrix", self.snapshot_matrix_s),
                               ("eig fp64 per matrix, one CPU worker", self.eig_core_s),
                               ("eig fp64 per matrix, accelerator", self.eig_device_s)):
            if anchors is not None:
                widths = ",".join(str(d) for d, _ in anchors.points)
                lines.append(f"  {label}: measured at D={widths} ({anchors.source}); beyond: ∝D^{anchors.power:g}")
        for key in ("copy_bytes_per_s", "flops_per_s", "eager_slowdown", "ckpt_bytes_per_s", "cores", "host_mem_bytes"):
            lines.append(f"  {key}={getattr(self, key):.4g}: {self.basis.get(key, ASSUMED)}")
        return lines


# --------------------------------------------------------------------------- built-in anchors
_H100_SRC = "one H100, torch 2.11, CUDA 13 (telemetry-cost.md)"
_ROWS_H100 = 65_536
# Per matrix of 65,536 centred rows: XᵀX with bf16 inputs and fp32 output (the GEMM floor).
_H100_COV_BF16_S = {768: 0.155e-3, 1536: 0.41e-3, 3072: 1.56e-3, 6144: 6.4e-3, 12288: 27e-3}
_H100_EIG_FP64_S = {768: 7.7e-3, 1536: 18e-3, 3072: 62e-3, 6144: 303e-3, 12288: 1604e-3}

H100 = DeviceProfile(
    name="h100 (anchors measured on one H100, torch 2.11: telemetry-cost.md)",
    accelerator=True,
    capture_row_s=Anchors(
        tuple((d, s / _ROWS_H100) for d, s in _H100_COV_BF16_S.items()), 2.0,
        f"bare bf16→fp32 covariance GEMM of 65,536 rows, {_H100_SRC}; passes around it not included",
    ),
    capture_rows=_ROWS_H100,
    gemm_row_s=Anchors(
        tuple((d, s / _ROWS_H100) for d, s in _H100_COV_BF16_S.items()), 2.0,
        f"bf16→fp32 covariance GEMM of 65,536 rows, {_H100_SRC}",
    ),
    # hard rank of 96 matrices of 3072: 9.4 ms; the merge and checks are D² passes of the same order
    snapshot_matrix_s=Anchors(((3072, 9.4e-3 / 96),), 2.0, f"hard rank by trace/Frobenius, {_H100_SRC}"),
    # one matrix on 16 threads of the host: 43 ms at 768 (an fp32 figure), 554 ms at 3072 (fp64);
    # as core-seconds (× 16) a pool worker is assumed no faster per core than one threaded call
    eig_core_s=Anchors(
        ((768, 16 * 0.043), (3072, 16 * 0.554)), 3.0,
        "16-thread eigvalsh on the H100 host × 16 cores (D=768 figure is fp32), telemetry-cost.md",
    ),
    eig_device_s=Anchors(tuple(_H100_EIG_FP64_S.items()), 3.0, f"torch.linalg.eigvalsh fp64, {_H100_SRC}"),
    copy_bytes_per_s=10e9,
    flops_per_s=400e12,
    cores=16,
    host_mem_bytes=128 * GIB,
    eager_slowdown=1.3,
    ckpt_bytes_per_s=1e9,
    basis={
        "copy_bytes_per_s": "assumed (not measured): ~10 GB/s pageable device→host",
        "flops_per_s": "assumed: ~400 TFLOP/s effective, the estimate of telemetry-cost.md",
        "eager_slowdown": "assumed: an eager bf16 step 1.3x a compiled one (not measured on an H100)",
        "ckpt_bytes_per_s": "assumed: 1 GB/s to local disk",
        "cores": "assumed: 12–16 spare host cores per GPU (telemetry-cost.md)",
        "host_mem_bytes": "assumed: 128 GiB of host RAM per GPU",
    },
)

PROFILES: dict[str, DeviceProfile] = {"h100": H100}


def profile(device: DeviceProfile | str) -> DeviceProfile:
    """A DeviceProfile, or a built-in one by name ("h100"); a calibration file is read by `load_profile`."""
    if isinstance(device, DeviceProfile):
        return device
    try:
        return PROFILES[device.lower()]
    except KeyError:
        raise ValueError(f"unknown device profile {device!r}; built in: {sorted(PROFILES)} "
                         "(a calibration file: load_profile(FILE))") from None


_ANCHOR_FIELDS = ("capture_row_s", "gemm_row_s", "snapshot_matrix_s", "eig_core_s", "eig_device_s")
_SCALAR_FIELDS = ("name", "accelerator", "capture_rows", "copy_bytes_per_s", "flops_per_s", "cores",
                  "host_mem_bytes", "eager_slowdown", "ckpt_bytes_per_s")


def save_profile(path: str, prof: DeviceProfile, extra: Mapping | None = None) -> None:
    """Write `prof` as a calibration file (JSON); `extra`: other measured figures kept beside it."""
    data: dict = {k: getattr(prof, k) for k in _SCALAR_FIELDS}
    for k in _ANCHOR_FIELDS:
        a = getattr(prof, k)
        data[k] = None if a is None else {"points": [list(p) for p in a.points], "power": a.power, "source": a.source}
    data["basis"] = dict(prof.basis)
    data["measured"] = {**prof.measured, **(extra or {})}
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1)


def load_profile(path: str) -> DeviceProfile:
    """The DeviceProfile of a calibration file; ValueError naming the file when it is not one."""
    try:
        with open(path) as fh:
            data = json.load(fh)
        kwargs = {k: data[k] for k in _SCALAR_FIELDS if k in data}
        for k in _ANCHOR_FIELDS:
            a = data.get(k)
            kwargs[k] = None if a is None else Anchors(tuple(tuple(p) for p in a["points"]), float(a["power"]), a["source"])
        prof = DeviceProfile(basis=dict(data.get("basis", {})), measured=dict(data.get("measured", {})), **kwargs)
    except FileNotFoundError:
        raise ValueError(f"calibration file {path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"calibration file {path} is not one ({type(e).__name__}: {e})") from None
    return dataclasses_replace(prof, name=f"{prof.name} [calibration {os.path.basename(path)}]")


# --------------------------------------------------------------------------- one event
@dataclass(frozen=True)
class EventShape:
    """What one telemetry event captures and decomposes.

    rows: rows (tokens) of the event over all ranks; each rank captures rows / ranks of them and
    owns matrices / ranks of the decompositions (the rank-sharded design).
    gemm_passes: GEMM rows per captured row. 1 = metrics.collector: HEAD/MID/TAIL accumulated and
    GLOBAL merged at snapshot; 2 = GLOBAL accumulated separately (what telemetry-cost.md priced).
    chunk_rows: rows per capture call on one rank (a micro-batch), for the transient memory.
    """

    layers: int
    width: int
    rows: int
    sites: int = 2
    buckets: bool = True
    ranks: int = 1
    gemm_passes: int = 1
    chunk_rows: int = 32_768
    accum_bytes: int = 4

    def __post_init__(self) -> None:
        for name in ("layers", "width", "rows", "sites", "ranks", "gemm_passes", "chunk_rows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EventShape.{name} must be ≥ 1, got {getattr(self, name)}")

    @property
    def pairs(self) -> int:
        return self.layers * self.sites

    @property
    def matrices(self) -> int:
        """Records (and eigendecompositions) per event: GLOBAL + HEAD/MID/TAIL per (layer, site)."""
        return self.pairs * (4 if self.buckets else 1)

    @property
    def accumulators(self) -> int:
        return self.pairs * (3 if self.buckets else 1)

    @property
    def rows_per_rank(self) -> int:
        return math.ceil(self.rows / self.ranks)

    @property
    def matrices_per_rank(self) -> int:
        return math.ceil(self.matrices / self.ranks)


@dataclass(frozen=True)
class EventEstimate:
    """Predicted per-rank cost of one event. `on` = where spectra are decomposed: "cpu" (a pool of `workers`
    processes, fp64) or "gpu" (the accelerator, fp64, inline)."""

    shape: EventShape
    profile: str
    accelerator: bool
    workers: int
    max_in_flight: int
    capture_s: float
    snapshot_s: float
    copy_s: float
    decompose_cpu_s: float
    decompose_gpu_s: float | None
    gemm_floor_s: float | None
    device_bytes: Mapping[str, int]
    host_bytes: Mapping[str, int]
    basis: Mapping[str, str]

    def critical_path_s(self, on: str, spectra: bool = True) -> float:
        """Seconds added to the training step: capture, snapshot, and the host copy of the
        covariances when spectra are decomposed on the CPU of an accelerator machine."""
        _check_on(on, self.accelerator)
        copy = self.copy_s if (on == "cpu" and spectra) else 0.0
        return self.capture_s + self.snapshot_s + copy

    def decomposition_s(self, on: str) -> float:
        """Seconds to decompose one event's matrices (owned by this rank) where `on` says."""
        _check_on(on, self.accelerator)
        return self.decompose_cpu_s if on == "cpu" else float(self.decompose_gpu_s)

    def peak_host_mib(self, on: str) -> float:
        _check_on(on, self.accelerator)
        return self.host_bytes[on] / MIB

    def peak_device_mib(self, on: str) -> float:
        _check_on(on, self.accelerator)
        return self.device_bytes[on] / MIB


def _check_on(on: str, accelerator: bool) -> None:
    if on not in ("cpu", "gpu"):
        raise ValueError(f"decomposition place must be 'cpu' or 'gpu', got {on!r}")
    if on == "gpu" and not accelerator:
        raise ValueError("decompose_on=gpu needs an accelerator (this profile has none)")


def event_estimate(
    shape: EventShape,
    device: DeviceProfile | str = "h100",
    *,
    workers: int | None = None,
    max_in_flight: int = 1,
) -> EventEstimate:
    """Time and memory of one event on one rank, with a CPU pool of `workers` (default: the
    profile's cores minus one for the trainer)."""
    prof = profile(device)
    if workers is None:
        workers = pool_workers(prof.cores)
    if workers < 1 or max_in_flight < 1:
        raise ValueError("workers and max_in_flight must be ≥ 1")
    d, m = shape.width, shape.matrices_per_rank
    basis: dict[str, str] = {}

    row_s, b = prof.capture_row_s.at(d)
    gemm_rows = shape.rows_per_rank * shape.gemm_passes
    capture_s = shape.pairs * gemm_rows * row_s
    basis["capture_s"] = b if gemm_rows == prof.capture_rows else f"{b} at {prof.capture_rows} rows; linear in N"
    gemm_floor_s = None
    if prof.gemm_row_s is not None:
        gemm_floor_s = shape.pairs * gemm_rows * prof.gemm_row_s.at(d)[0]

    snap_s, basis["snapshot_s"] = prof.snapshot_matrix_s.at(d)
    snapshot_s = m * snap_s
    snapshot_bytes = m * d * d * shape.accum_bytes
    copy_s = snapshot_bytes / prof.copy_bytes_per_s if prof.accelerator else 0.0
    basis["copy_s"] = prof.basis.get("copy_bytes_per_s", ASSUMED) if prof.accelerator else "no copy (host state)"

    core_s, b = prof.eig_core_s.at(d)
    decompose_cpu_s = math.ceil(m / workers) * core_s  # whole matrices per worker
    basis["decompose_cpu_s"] = f"{b}; {m} matrices on {workers} workers"
    decompose_gpu_s = None
    if prof.eig_device_s is not None:
        dev_s, b = prof.eig_device_s.at(d)
        decompose_gpu_s = m * dev_s
        basis["decompose_gpu_s"] = b

    device_bytes, host_bytes = event_memory(shape, prof.accelerator, workers, max_in_flight)
    basis["memory"] = "model: fp32 scatters, one fp64 copy + workspace per decomposition in flight"
    return EventEstimate(
        shape=shape, profile=prof.name, accelerator=prof.accelerator, workers=workers,
        max_in_flight=max_in_flight, capture_s=capture_s, snapshot_s=snapshot_s, copy_s=copy_s,
        decompose_cpu_s=decompose_cpu_s, decompose_gpu_s=decompose_gpu_s, gemm_floor_s=gemm_floor_s,
        device_bytes=device_bytes, host_bytes=host_bytes, basis=basis,
    )


def event_memory(shape: EventShape, accelerator: bool, workers: int, in_flight: int) -> tuple[dict, dict]:
    """Peak extra bytes held by telemetry on the accelerator and the host, per decomposition place
    (a model of the tensors held; the run's auto rule uses it with this machine's MemAvailable)."""
    d, s = shape.width, shape.accum_bytes
    mat = d * d * s
    acc = shape.accumulators * (mat + 8 * d)  # scatter + fp64 mean
    snapshot = shape.matrices_per_rank * mat  # bucket scatters moved out + GLOBAL merged
    eig_work = 2 * d * d * 8  # fp64 copy + eigvalsh workspace
    worker = mat + eig_work  # a pool worker: its fp32 matrix and the fp64 work
    rows = min(shape.chunk_rows, shape.rows_per_rank)
    if accelerator:
        # bf16 centred copy of one chunk [rows, D + pad], the padded fp32 GEMM output, its [D, D] copy
        chunk = rows * (d + 8) * 2 + (d + 8) ** 2 * 4 + mat
        device = {"cpu": acc + max(chunk, mat), "gpu": max(acc + chunk, snapshot + eig_work)}
        host = {"cpu": in_flight * snapshot + workers * worker, "gpu": shape.matrices_per_rank * d * 8}
        return device, host
    chunk = 2 * rows * d * s + mat  # fp32 copy and centred copy of the chunk, the GEMM output
    return {"cpu": 0}, {"cpu": acc + chunk + in_flight * snapshot + workers * worker}


# --------------------------------------------------------------------------- one run
@dataclass(frozen=True)
class ModelShape:
    """The model's telemetry-relevant shape. gated: a gated FFN (three D×d_model matrices); seq_len:
    the context the attention scores span (0: not counted)."""

    n_layer: int
    d_model: int
    ffn_width: int
    vocab: int = 50_304
    sites: int = 2
    buckets: bool = True
    gated: bool = False
    seq_len: int = 0

    def flops_per_token(self) -> float:
        """Training FLOPs per token, the one formula of the project: 6 × (block matrices + LM head)
        + 12 × layers × d_model × seq_len (the attention scores and their weighted sum)."""
        ffn = (3 if self.gated else 2) * self.d_model * self.ffn_width
        matrices = self.n_layer * (4 * self.d_model**2 + ffn) + self.vocab * self.d_model
        return 6.0 * matrices + 12.0 * self.n_layer * self.d_model * self.seq_len


def estimate_step_seconds(shape: ModelShape, tokens_per_step: int, flops_per_s: float) -> float:
    """Seconds per optimizer step at an effective FLOP rate (e.g. ~130/180/280 s per 200 steps at
    D = 768/3072/6144 for GPT-2 160M on one H100 at 400 TFLOP/s, as telemetry-cost.md estimates)."""
    return shape.flops_per_token() * tokens_per_step / flops_per_s


@dataclass(frozen=True)
class RunTelemetryCost:
    """Telemetry cost of one training run (per-event figures are per rank)."""

    decompose_on: str
    reason: str
    spectrum_every: int
    n_events: int
    n_spectrum_events: int
    step_s: float
    train_s: float
    telemetry_s: float  # wall time added over the run: critical paths, GPU decompositions, waits
    wait_s: float  # of which: the trainer waiting for the CPU pool (in-flight bound, checkpoints, end)
    critical_path_s: float  # one event with spectra
    decomposition_s: float  # one event's decomposition, where it runs
    peak_host_mib: float
    peak_device_mib: float
    event: EventEstimate
    basis: Mapping[str, str]
    ckpt_s: float = 0.0  # checkpoint writes over the run (training stops meanwhile)
    other_s: float = 0.0  # other wall time outside the steps (evaluations), as given
    eager_s: float = 0.0  # per event: the eager step's extra time under train.compile=true

    @property
    def wall_s(self) -> float:
        return self.train_s + self.ckpt_s + self.other_s + self.telemetry_s

    @property
    def share(self) -> float:
        """Telemetry's share of the run's wall time (steps, checkpoint writes, other, telemetry)."""
        return self.telemetry_s / self.wall_s

    @property
    def overhead(self) -> float:
        """Telemetry time relative to training time (what telemetry-cost.md calls the share)."""
        return self.telemetry_s / self.train_s

    def summary(self) -> str:
        return (f"telemetry {self.share:.1%} of wall time ({self.telemetry_s:.0f} s over {self.n_events} events, "
                f"{self.n_spectrum_events} with spectra, every {self.spectrum_every}), decomposed on "
                f"{self.decompose_on}: {self.reason}")


def estimate_run(
    shape: ModelShape,
    steps: int,
    every: int,
    tokens_per_step: int,
    step_seconds: float | None = None,
    device: DeviceProfile | str = "h100",
    *,
    ranks: int = 1,
    decompose_on: str = "auto",
    spectrum_every: int | str = "auto",
    window: int = AGGREGATION_EVENTS,
    resources: HostResources | None = None,
    max_in_flight: int = 1,
    ckpt_every: int | None = None,
    gemm_passes: int = 1,
    gpu_budget: float = GPU_SHARE_BUDGET,
    micro_batch_rows: int = 32_768,
    per_event_device: bool | None = None,
    compile: bool = False,
    ckpt_bytes: int = 0,
    other_s: float = 0.0,
) -> RunTelemetryCost:
    """Telemetry cost of a run of `steps` steps with an event every `every` steps.

    step_seconds: wall seconds per optimizer step (None: from FLOPs at the profile's rate × ranks).
    spectrum_every: "auto" (`metrics.schedule.keep_up_every` with `cadence_budget(on, gpu_budget)`),
        or k (1 = a spectrum at every event); which events carry spectra is
        `metrics.schedule.spectrum_steps` (the last `window` events and every k-th before them).
    resources: cores/memory per rank for the CPU pool (None: the profile's).
    Events without a spectrum cost their critical path only (capture, snapshot, hard ranks). With
    decomposition on the GPU a spectrum costs its full time inline; on the CPU pool the trainer
    waits when `max_in_flight` events are still being decomposed, before a checkpoint and at the end.
    per_event_device: on the CPU pool of an accelerator machine, decompose an event on the device
        instead when the pool would make the trainer wait longer (`decompose_on_device_now`: the
        last event, one before a checkpoint, consecutive window events the pool cannot keep up
        with); None: as a run does, i.e. with decompose_on=auto.
    decompose_on=auto on an accelerator: the CPU pool (with per-event device decompositions) or
    the device, whichever this estimate finds cheaper, unless host memory rules the pool out.
    compile: train.compile=true; its telemetry steps run the eager module, (eager_slowdown - 1)
        steps more per event (counted in the critical path, as the run counts it).
    ckpt_bytes: bytes of one checkpoint; writing one stops training (ckpt_bytes_per_s), counted in
        the wall time (`ckpt_s`), as are `other_s` seconds outside the steps (evaluations).
    """
    prof = profile(device)
    if steps < 1 or every < 1 or tokens_per_step < 1 or ranks < 1:
        raise ValueError("steps, every, tokens_per_step and ranks must be ≥ 1")
    basis: dict[str, str] = {}
    if step_seconds is None:
        step_seconds = estimate_step_seconds(shape, tokens_per_step, prof.flops_per_s * ranks)
        basis["step_s"] = f"estimated from FLOPs at {prof.flops_per_s * ranks / 1e12:.0f} TFLOP/s ({prof.basis.get('flops_per_s', ASSUMED)})"
    else:
        basis["step_s"] = "given"
    if not step_seconds > 0:
        raise ValueError(f"step_seconds must be positive, got {step_seconds}")
    res = resources or HostResources(prof.cores, prof.host_mem_bytes, source="profile")
    workers = pool_workers(res.cores)
    ev_shape = EventShape(
        layers=shape.n_layer, width=shape.ffn_width, rows=tokens_per_step, sites=shape.sites,
        buckets=shape.buckets, ranks=ranks, gemm_passes=gemm_passes,
        chunk_rows=max(1, min(micro_batch_rows, math.ceil(tokens_per_step / ranks))),
    )
    ev = event_estimate(ev_shape, prof, workers=workers, max_in_flight=max_in_flight)
    interval = every * step_seconds
    decision = decide_decompose_on(
        decompose_on, accelerator=prof.accelerator, cpu_decompose_s=ev.decompose_cpu_s, interval_s=interval,
        host_bytes_needed=ev.host_bytes["cpu"], host_bytes_available=res.mem_available_bytes,
    )
    if not (spectrum_every == "auto" or (isinstance(spectrum_every, int) and spectrum_every >= 1)):
        raise ValueError(f"spectrum_every must be 'auto' or a positive int, got {spectrum_every!r}")
    if per_event_device is None:
        per_event_device = decompose_on == "auto"
    eager_s = (prof.eager_slowdown - 1.0) * step_seconds if compile else 0.0
    if compile:
        basis["eager_s"] = f"{eager_s:.3g} s per event: eager_slowdown {prof.basis.get('eager_slowdown', ASSUMED)}"
    ev_steps = event_steps(steps, every)
    ckpts = set(checkpoint_steps(steps, ckpt_every)) if ckpt_every else set()  # the last step included

    def timeline(on: str) -> tuple[int, list[bool], float, float]:
        """(k, spectrum flag per event, telemetry seconds added, of which waits) with spectra on `on`."""
        decomp = ev.decomposition_s(on)
        k = (keep_up_every(decomp, interval, cadence_budget(on, gpu_budget)) if spectrum_every == "auto"
             else int(spectrum_every))
        with_spectra = spectrum_steps(steps, every, k, window)  # in step order
        chosen = set(with_spectra)
        spectra_at = {s: s in chosen for s in ev_steps}
        here = per_event_device and on == "cpu" and prof.accelerator
        clock, prev, added, wait = 0.0, 0, 0.0, 0.0
        finishes: list[float] = []  # CPU pool: when each submitted event's decomposition ends
        for s in sorted(set(ev_steps) | ckpts):
            clock += (s - prev) * step_seconds
            prev = s
            if s in spectra_at:
                spectra = spectra_at[s]
                cost = ev.critical_path_s(on, spectra) + eager_s
                if spectra and here:
                    later = [t for t in with_spectra if t > s]
                    until = (needed_at(s, steps, ckpt_every, later, max_in_flight) - s) * step_seconds
                    if decompose_on_device_now(ev.decompose_gpu_s, decomp, ev.copy_s, until):
                        cost = ev.critical_path_s("gpu", True) + ev.decomposition_s("gpu") + eager_s
                        spectra = False  # nothing handed to the pool
                if spectra and on == "gpu":
                    cost += decomp
                elif spectra:  # at most max_in_flight decompositions running: wait for the oldest
                    if len(finishes) >= max_in_flight:
                        w = max(0.0, finishes[-max_in_flight] - clock)
                        wait, cost = wait + w, cost + w
                    start = max(clock + cost, finishes[-1] if finishes else 0.0)
                    finishes.append(start + decomp)
                clock += cost
                added += cost
            if s in ckpts or s == steps:  # records are written before a checkpoint and before DONE
                w = max(0.0, (finishes[-1] if finishes else 0.0) - clock)
                clock, added, wait = clock + w, added + w, wait + w
        return k, [spectra_at[s] for s in ev_steps], added, wait

    on, reason = decision.on, decision.reason
    memory_ok = ev.host_bytes["cpu"] <= MEM_HEADROOM * res.mem_available_bytes
    if decompose_on == "auto" and prof.accelerator and memory_ok:  # both places: the cheaper one
        runs = {place: timeline(place) for place in ("cpu", "gpu")}
        on = min(runs, key=lambda place: (runs[place][2], place != "gpu"))  # a tie: the pool would sit idle
        k, flags, added, wait = runs[on]
        pool = " (an event goes to the device when the pool would make the trainer wait longer)" if per_event_device else ""
        reason = (f"the cheaper place by the cost model: {runs['cpu'][2]:.0f} s of telemetry over the run with "
                  f"the CPU pool{pool}, {runs['gpu'][2]:.0f} s on the device")
    else:
        k, flags, added, wait = timeline(on)
    basis.update({f"event.{k_}": v for k_, v in ev.basis.items()})
    ckpt_s = len(ckpts) * ckpt_bytes / prof.ckpt_bytes_per_s
    basis["ckpt_s"] = f"{len(ckpts)} checkpoints of {ckpt_bytes / GIB:.2f} GiB, {prof.basis.get('ckpt_bytes_per_s', ASSUMED)}"
    return RunTelemetryCost(ckpt_s=ckpt_s, other_s=float(other_s), eager_s=eager_s,
        decompose_on=on, reason=reason, spectrum_every=k, n_events=len(ev_steps),
        n_spectrum_events=sum(flags), step_s=step_seconds, train_s=steps * step_seconds, telemetry_s=added,
        wait_s=wait, critical_path_s=ev.critical_path_s(on, True) + eager_s, decomposition_s=ev.decomposition_s(on),
        peak_host_mib=ev.peak_host_mib(on), peak_device_mib=ev.peak_device_mib(on), event=ev, basis=basis,
    )
