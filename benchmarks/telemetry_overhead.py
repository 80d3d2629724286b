"""Telemetry cost: paper-shaped accumulators per FFN width (--preset), or telemetry on vs off in training.

Paper mode (`--preset paper160m | paper350m`): builds the accumulators of one event at the paper's
shape (layers × {pre, post} × {HEAD, MID, TAIL} accumulated, GLOBAL merged at snapshot, as
metrics.collector does) for every FFN width, on the available device, and times the code path the
trainer runs (sweep/run/telemetry.py): capture (SpectrumCollector.add, what the probe hooks call),
then `metrics.EventPipeline.end_event` for the snapshot (merge, checks, hard ranks: a hard-rank-only
event), the host copy of a spectrum event decomposed on the CPU pool, and the decomposition itself
(fp64 eigvalsh + metrics) on the accelerator (decompose_on=gpu) and by one CPU pool worker. Figures it cannot measure here it extrapolates with metrics.costmodel: capture linearly
in rows, decomposition as D³ above --max-width; every figure says which (legend under the table).
It prints per width the critical path, decomposition, peak extra memory and the projected share of
wall time at cadence 100 and 200, with a spectrum at every event and with sparse spectra (the last
5 events + every k-th), then the same projected from the H100 anchors of telemetry-cost.md. The
last line is `critical_path_s=.. decomposition_s=.. peak_host_mib=.. peak_device_mib=..` for the
largest measured width.

    python benchmarks/telemetry_overhead.py --preset paper160m --max-width 1536   # CPU: ~1-3 min
    python benchmarks/telemetry_overhead.py --preset paper350m --device cuda      # all widths, 524,288 rows

Training mode (no --preset): blocks of `--every` training steps alternate between telemetry off and
on (the order flips each round to cancel drift); an "on" block ends with one telemetry event. Both
modes replay the same batches. Prints the overhead ratio and the added milliseconds per event.

    python benchmarks/telemetry_overhead.py                       # CPU, tiny GPT, every 10 steps
    python benchmarks/telemetry_overhead.py --device cuda         # GPT-2 160M shape, D = 3072,
                                                                  # 524k tokens/step, cadence 100
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from specsweep.metrics import EventCost, EventPipeline, attach_probes, frequency_buckets  # noqa: E402
from specsweep.metrics import costmodel as cm  # noqa: E402
from specsweep.metrics import placement  # noqa: E402
from specsweep.metrics.collector import SpectrumCollector  # noqa: E402
from specsweep.metrics.covariance import _bf16_scatter  # noqa: E402
from specsweep.metrics.buckets import SITES  # noqa: E402
from specsweep.metrics.snapshot import TelemetryOptions, TelemetrySnapshot  # noqa: E402


# =============================================================================== paper mode
@dataclass(frozen=True)
class Preset:
    name: str
    layers: int
    d_model: int
    widths: tuple[int, ...]
    rows: int  # rows (tokens) of one event: the global batch
    steps: int  # the paper's run length (for the sparse-spectra schedule)
    micro_batch_rows: int  # rows per capture call: one micro-batch on one device


PRESETS = {
    # paper-notes.md §4: 6000 steps, 1024 x 512 tokens per step, micro-batch 64 sequences per device
    "paper160m": Preset("paper160m", 12, 768, tuple(768 * k for k in range(1, 9)), 524_288, 6000, 64 * 512),
    "paper350m": Preset("paper350m", 24, 1024, tuple(1024 * k for k in range(1, 5)), 524_288, 8000, 16 * 512),
    "tiny": Preset("tiny", 2, 32, (32, 64, 128), 8192, 200, 1024),  # smoke tests
}
LEGEND = """\
columns: seconds per event on one rank: capture (critical path) and its ratio to the bare covariance GEMMs
  of the same rows (floor_x); snapshot = GLOBAL merges, checks, hard ranks; critical_s = capture + snapshot;
  +copy_s = device->host copy, added to the critical path when spectra are decomposed on the CPU of a GPU
  machine; eig_gpu_s = 96 fp64 eigvalsh on the accelerator (inline: all of it is added to wall time);
  eig_cpu_s = the same on the CPU pool (off the critical path while it keeps up); memory: peak extra host /
  device MiB (measured: RSS / CUDA allocation over one event's capture, snapshot and decomposition sample;
  projected: in-flight snapshot + pool workers, where the largest cadence decomposes); share of wall time
  over a run with a spectrum at every event (all) and with sparse spectra (last 5 events + every k-th,
  k from the cost model), decomposed where `on` says (decompose_on=auto: the cheaper place over the run;
  with the cpu pool, events needed before the pool would finish them go to the accelerator when faster).
tags: m measured here; n measured here on fewer rows, linear in rows; i interpolated between measured widths;
  x extrapolated in D (capture per row and snapshot as D^2, decomposition as D^3); a assumed (step_s: FLOP
  estimate at an assumed rate); g given; p projected; the share columns are projections by metrics.costmodel"""
OPTIONS = TelemetryOptions(min_bucket_rows=1)  # measured rows are few: decompose every bucket anyway


@dataclass
class WidthMeasurement:
    width: int
    rows: int  # rows captured per (layer, site)
    capture_s: float  # median of the interleaved repetitions
    floor_s: float  # the bare covariance GEMMs of the same rows and pairs, median, interleaved with capture
    ratios: list[float]  # capture / floor of each repetition
    snapshot_s: float
    copy_s: float | None  # device → host copy of the snapshot (CUDA only)
    copy_bytes: int
    eig_gpu_s: float | None  # per matrix
    eig_cpu_s: float | None  # per matrix, one thread
    host_mib: float
    device_mib: float


class _HostPeak:
    """Peak resident memory of this process above a baseline (VmHWM reset via clear_refs)."""

    def __init__(self) -> None:
        self.resettable = True
        self.samples: list[int] = []
        _release_freed_memory()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            self.resettable = False
        self.base = self._read("VmRSS")

    @staticmethod
    def _read(key: str) -> int:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def sample(self) -> None:
        self.samples.append(self._read("VmRSS"))

    def mib(self) -> float:
        peak = self._read("VmHWM") if self.resettable else max(self.samples or [self.base])
        return max(0, peak - self.base) / cm.MIB


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc), so that the next baseline RSS is honest."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _no_records(snapshot: TelemetrySnapshot) -> list[dict]:
    """A decomposition that does nothing (to time the host copy of a spectrum event alone)."""
    return []


def _event(collector: SpectrumCollector, capture, *, decompose_on: str, spectrum: bool, **kwargs) -> EventCost:
    """Capture (unless None: the collector holds rows already), then one event through the trainer's
    EventPipeline (one worker thread for "cpu"): its cost."""
    if capture is not None:
        capture()
    with EventPipeline(collector, OPTIONS, decompose_on=decompose_on, workers=1, pool="thread",
                       time_capture=False, measure_cuda_peak=False, **kwargs) as pipe:
        (event,) = pipe.end_event(1, spectrum=spectrum) + pipe.drain()
    return event.cost


def _sizes(n: int) -> list[int]:
    """Rows per HEAD/MID/TAIL: occurrence-mass tertiles, about a third each."""
    third = n // 3
    return [third, third, n - 2 * third]


def measure_width(preset: Preset, d: int, device: torch.device, rows: int, eig_sample: int, cpu_eig: bool,
                  repeats: int, gen: torch.Generator) -> WidthMeasurement:
    """Time one event at width d with the real code paths; rows = rows per (layer, site)."""
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    host = _HostPeak()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        dev_base = torch.cuda.memory_allocated(device)
    keys = [(layer, site) for layer in range(preset.layers) for site in SITES]
    collector = SpectrumCollector(keys, dims={k: d for k in keys}, buckets=True, bf16_matmul=None,
                                  keep_rows=False, device=device)
    chunk = min(rows, preset.micro_batch_rows)
    n_chunks = max(1, rows // chunk)
    act_dtype = torch.bfloat16 if cuda else torch.float32  # what a training forward hands the hooks
    x = torch.randn(chunk, d, generator=gen).to(device, act_dtype)  # [chunk, D], grouped by bucket
    sizes = _sizes(chunk)

    def capture() -> None:
        for layer, site in keys:
            for _ in range(n_chunks):
                collector.add(layer, site, x, sizes)

    # the floor: the bare GEMMs of the same bucket chunks, every (layer, site) pair, the same rows
    parts = [p.to(torch.bfloat16) if cuda else p.float() for p in torch.split(x, sizes)]

    def floor() -> None:
        for _ in range(len(keys) * n_chunks):
            for p in parts:
                _bf16_scatter(p) if cuda else p.t() @ p

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    collector.add(0, "pre", x, sizes)  # warm-up: allocator, kernels, BLAS first call
    floor()
    caps, floors = [], []
    for r in range(repeats):  # interleaved, the order flipping each repetition; the capture runs last
        if r % 2:
            caps.append(timed(lambda: (collector.reset(), capture())))
            floors.append(timed(floor))
        else:
            floors.append(timed(floor))
            caps.append(timed(lambda: (collector.reset(), capture())))
    capture_s, floor_s = statistics.median(caps), statistics.median(floors)
    ratios = [c / f for c, f in zip(caps, floors)]
    host.sample()
    del parts

    # the snapshot of a hard-rank-only event (merge, checks, hard ranks), as the trainer runs it
    hard = _event(collector, None, decompose_on="device", spectrum=False)  # the rows of the last capture
    snapshot_s = hard.reduce_s + hard.snapshot_s + hard.hard_rank_s
    host.sample()
    copy_s, copy_bytes = None, 0
    if cuda:  # a spectrum event for the CPU pool also copies the matrices to host memory
        pooled = _event(collector, capture, decompose_on="cpu", spectrum=True, decompose=_no_records)
        copy_s = max(0.0, pooled.snapshot_s - hard.snapshot_s)
        copy_bytes = len(keys) * 4 * d * d * 4  # fp32 GLOBAL + HEAD/MID/TAIL per (layer, site)
        host.sample()
    del x
    collector.reset()

    # decomposition of `eig_sample` full-rank matrices (2·D rows of pre / ReLU² post activations)
    layers = max(1, eig_sample // 2)
    sample_keys = [(layer, site) for layer in range(layers) for site in SITES]
    sample = SpectrumCollector(sample_keys, dims={k: d for k in sample_keys}, buckets=False, bf16_matmul=None,
                               keep_rows=False, device=device)
    pre = [torch.randn(2 * d, d, generator=gen) * torch.rand(d, generator=gen).add(0.2) for _ in range(layers)]

    def capture_sample() -> None:  # [2D, D] rows per (layer, site)
        for layer, p in enumerate(pre):
            sample.add(layer, "pre", p.to(device, act_dtype))
            sample.add(layer, "post", F.relu(p).square().to(device, act_dtype))

    n_mat = len(sample_keys)
    eig_gpu_s = eig_cpu_s = None
    if cuda:
        _event(sample, capture_sample, decompose_on="device", spectrum=True)  # warm-up: cuSOLVER handles
        eig_gpu_s = _event(sample, capture_sample, decompose_on="device", spectrum=True).sync_decompose_s / n_mat
    if cpu_eig:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one pool worker = one thread
        try:
            eig_cpu_s = _event(sample, capture_sample, decompose_on="cpu", spectrum=True).decompose_s / n_mat
        finally:
            torch.set_num_threads(threads)
    host.sample()
    device_mib = 0.0
    if cuda:
        device_mib = (torch.cuda.max_memory_allocated(device) - dev_base) / cm.MIB
    host_mib = host.mib()
    del sample, collector
    return WidthMeasurement(d, n_chunks * chunk, capture_s, floor_s, ratios, snapshot_s, copy_s, copy_bytes,
                            eig_gpu_s, eig_cpu_s, host_mib, device_mib)


def profile_from(measured: list[WidthMeasurement], preset: Preset, device: torch.device,
                 resources: placement.HostResources) -> cm.DeviceProfile:
    """A cost-model profile whose anchors are this run's measurements."""
    cuda = device.type == "cuda"
    pairs = preset.layers * len(SITES)
    matrices = pairs * 4
    rows = measured[0].rows
    stamp = f"this benchmark on {device.type}, torch {torch.__version__}"
    cpu_pts = tuple((m.width, m.eig_cpu_s) for m in measured if m.eig_cpu_s)
    gpu_pts = tuple((m.width, m.eig_gpu_s) for m in measured if m.eig_gpu_s)
    floor_rate = max(2.0 * m.width**2 * m.rows * pairs / m.floor_s for m in measured)  # FLOP/s
    copies = [m.copy_bytes / m.copy_s for m in measured if m.copy_s]
    return cm.DeviceProfile(
        name=f"{device.type} here ({stamp})",
        accelerator=cuda,
        capture_row_s=cm.Anchors(tuple((m.width, m.capture_s / (pairs * m.rows)) for m in measured), 2.0,
                                 f"SpectrumCollector.add of {rows} rows per (layer, site), {stamp}"),
        capture_rows=rows,
        gemm_row_s=cm.Anchors(tuple((m.width, m.floor_s / (pairs * m.rows)) for m in measured), 2.0,
                              f"bare covariance GEMMs, {stamp}"),
        snapshot_matrix_s=cm.Anchors(tuple((m.width, m.snapshot_s / matrices) for m in measured), 2.0,
                                     f"EventPipeline.end_event of a hard-rank-only event, {stamp}"),
        eig_core_s=cm.Anchors(cpu_pts, 3.0, f"EventPipeline, one CPU pool worker of one thread (fp64), {stamp}"),
        eig_device_s=cm.Anchors(gpu_pts, 3.0, f"EventPipeline decompose_on=gpu on {device} (fp64), {stamp}") if gpu_pts else None,
        copy_bytes_per_s=statistics.median(copies) if copies else 1e12,
        flops_per_s=0.5 * floor_rate,
        cores=resources.cores,
        host_mem_bytes=resources.mem_available_bytes,
        basis={
            "copy_bytes_per_s": "measured: snapshot device→host" if copies else "not used (no accelerator)",
            "flops_per_s": "assumed: half the measured covariance GEMM rate",
            "cores": resources.source, "host_mem_bytes": resources.source,
        },
    )


def _tag(basis: str) -> str:
    """One-letter basis of a figure: m measured, n measured on fewer rows (linear in N),
    i interpolated between measured widths, x extrapolated in D, a assumed."""
    if basis.startswith("extrapolated"):
        return "x"
    if basis.startswith("interpolated"):
        return "i"
    if basis.startswith("measured"):
        return "n" if "linear in N" in basis else "m"
    return "a"


def _fmt(value: float | None, tag: str = "", width: int = 9) -> str:
    if value is None:
        return "—".rjust(width + 2)
    text = f"{value:.3g}" if value < 1000 else f"{value:.0f}"
    return f"{text:>{width}}{tag:1s} "


def _shares(preset: Preset, d: int, cadence: int, step_s: float, prof: cm.DeviceProfile,
            resources: placement.HostResources, decompose_on: str) -> tuple[cm.RunTelemetryCost, cm.RunTelemetryCost]:
    shape = cm.ModelShape(preset.layers, preset.d_model, d)
    common = dict(steps=preset.steps, every=cadence, tokens_per_step=preset.rows, step_seconds=step_s,
                  device=prof, decompose_on=decompose_on, resources=resources,
                  micro_batch_rows=preset.micro_batch_rows)
    return cm.estimate_run(shape, spectrum_every=1, **common), cm.estimate_run(shape, spectrum_every="auto", **common)


def print_table(preset: Preset, prof: cm.DeviceProfile, measured: dict[int, WidthMeasurement], workers: int,
                resources: placement.HostResources, cadences: list[int], step_seconds: float | None,
                decompose_on: str, title: str) -> None:
    print(title)
    head = (f"{'D':>6} {'capture_s':>11} {'floor_x':>8} {'snapshot_s':>11} {'critical_s':>11} {'+copy_s':>11} "
            f"{'eig_gpu_s':>11} {'eig_cpu_s':>11} {'host_MiB':>11} {'dev_MiB':>11} {'step_s':>8}")
    for c in cadences:
        head += f"  {'@' + str(c) + ': all / sparse  k on':>24}"
    print(head)
    for d in preset.widths:
        ev = cm.event_estimate(cm.EventShape(preset.layers, d, preset.rows, chunk_rows=preset.micro_batch_rows),
                           prof, workers=workers)
        step_s = step_seconds or cm.estimate_step_seconds(
            cm.ModelShape(preset.layers, preset.d_model, d), preset.rows, prof.flops_per_s)
        runs = [_shares(preset, d, c, step_s, prof, resources, decompose_on) for c in cadences]
        on = runs[-1][0].decompose_on  # memory columns: where the largest cadence decomposes
        m = measured.get(d)
        cap_tag = _tag(ev.basis["capture_s"])
        ratio = f"{ev.capture_s / ev.gemm_floor_s:7.2f}{'m' if m else 'p'}" if ev.gemm_floor_s else f"{'—':>8}"
        host_mib = m.host_mib if m else ev.peak_host_mib(on)
        dev_mib = m.device_mib if m else ev.peak_device_mib(on)
        copy = _fmt(ev.copy_s, _tag(ev.basis["copy_s"])) if ev.accelerator else _fmt(None)
        gpu = _fmt(ev.decompose_gpu_s, _tag(ev.basis["decompose_gpu_s"])) if ev.accelerator else _fmt(None)
        line = (f"{d:>6} {_fmt(ev.capture_s, cap_tag)}{ratio} {_fmt(ev.snapshot_s, _tag(ev.basis['snapshot_s']))}"
                f"{_fmt(ev.critical_path_s('cpu', spectra=False), cap_tag)}{copy}{gpu}"
                f"{_fmt(ev.decompose_cpu_s, _tag(ev.basis['decompose_cpu_s']))}"
                f"{_fmt(host_mib, 'm' if m else 'p')}{_fmt(dev_mib, 'm' if m else 'p')}{step_s:7.3g}{'g' if step_seconds else 'a'}")
        for dense, sparse in runs:
            line += f"  {dense.share:6.2%} / {sparse.share:6.2%} {sparse.spectrum_every:>2} {sparse.decompose_on}"
        print(line)


def paper_main(args: argparse.Namespace) -> None:
    t_start = time.perf_counter()
    preset = PRESETS[args.preset]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(args.threads or 1)
    max_width = args.max_width or (max(preset.widths) if cuda else 1536)
    widths = [d for d in preset.widths if d <= max_width]
    if not widths:
        raise SystemExit(f"--max-width {max_width} is below the smallest width {min(preset.widths)} of {preset.name}")
    rows = args.rows or (preset.rows if cuda else 2048)
    repeats = args.repeats or 5
    if repeats < 5:
        raise SystemExit(f"--repeats {repeats}: capture and floor are compared over at least 5 interleaved repetitions")
    cpu_eig_max = args.cpu_eig_max_width or (3072 if cuda else max_width)
    resources = placement.host_resources()
    workers = args.workers or placement.pool_workers(resources.cores)
    cadences = [int(c) for c in args.cadences.split(",")]
    gen = torch.Generator().manual_seed(args.seed)
    print(f"preset {preset.name}: {preset.layers} layers x {len(SITES)} sites x 4 buckets = "
          f"{preset.layers * len(SITES) * 4} matrices per event, {preset.rows:,} rows per event, widths "
          f"{','.join(map(str, preset.widths))}; device {device}, torch {torch.__version__}, "
          f"{resources.cores} cores ({workers} pool workers), {resources.mem_available_bytes / cm.GIB:.1f} GiB available")
    print(f"measuring D <= {max_width} with {rows:,} rows per (layer, site) in chunks of "
          f"{min(rows, preset.micro_batch_rows):,}, {repeats} repetition(s); decomposition on "
          f"{args.eig_sample} full-rank matrices per width (CPU: one thread, D <= {cpu_eig_max})")
    measured: dict[int, WidthMeasurement] = {}
    for d in widths:
        t0, c0 = time.perf_counter(), time.process_time()
        m = measure_width(preset, d, device, rows, args.eig_sample, d <= cpu_eig_max, repeats, gen)
        measured[d] = m
        print(f"  D={d}: capture / GEMM floor, {repeats} interleaved repetitions at {m.rows:,} rows/pair (measured "
              f"here): median capture {m.capture_s:.3g} s, floor {m.floor_s:.3g} s, ratio median "
              f"{statistics.median(m.ratios):.2f} (spread {min(m.ratios):.2f}-{max(m.ratios):.2f}); both scale "
              f"linearly to {preset.rows:,} rows in the tables (x{preset.rows / m.rows:.0f}, projected)")
        print(f"  D={d}: capture {m.capture_s:.3g} s for {m.rows:,} rows/pair (GEMM floor {m.floor_s:.3g} s), "
              f"snapshot {m.snapshot_s:.3g} s" + (f", copy to host {m.copy_s:.3g} s" if m.copy_s else "")
              + (f", eig/matrix GPU {m.eig_gpu_s * 1e3:.1f} ms" if m.eig_gpu_s else "")
              + (f", eig/matrix 1 CPU thread {m.eig_cpu_s * 1e3:.0f} ms" if m.eig_cpu_s else "")
              + f"; peak +{m.host_mib:.0f} MiB host, +{m.device_mib:.0f} MiB device  "
              f"[{time.perf_counter() - t0:.1f} s wall, process CPU / wall {(time.process_time() - c0) / (time.perf_counter() - t0):.2f}]")
    prof = profile_from(list(measured.values()), preset, device, resources)
    default_step = "given" if args.step_seconds else (
        f"estimated per width from FLOPs at {prof.flops_per_s / 1e12:.3g} TFLOP/s (half the measured GEMM rate)")
    print()
    print_table(preset, prof, measured, workers, resources, cadences, args.step_seconds, args.decompose_on,
                f"per event on this {device.type} (seconds per event at {preset.rows:,} rows; step_s {default_step}; "
                f"sparse = last 5 events + every k-th, run of {preset.steps} steps):")
    print(LEGEND)
    print("\n".join(prof.describe()))
    if not cuda:
        print("note: timings are wall clock on one thread; a process CPU / wall ratio well below 1 above means "
              "other processes shared the cores, and the measured seconds are that much inflated")
    if args.write_calibration:
        cm.save_profile(args.write_calibration, prof, {
            **{f"capture_floor_x_{m.width}": statistics.median(m.ratios) for m in measured.values()},
            **{f"capture_floor_spread_{m.width}": max(m.ratios) - min(m.ratios) for m in measured.values()},
            "rows_per_pair": rows, "repeats": repeats})
        print(f"calibration written to {args.write_calibration} (read by sweep.plan plan.calibration=FILE)")
    ref = cm.load_profile(args.calibration) if args.calibration else cm.H100
    print()
    print_table(preset, ref, {}, placement.pool_workers(ref.cores), placement.HostResources(ref.cores, ref.host_mem_bytes, "profile"),
                cadences, None, args.decompose_on,
                (f"projection from the calibration {args.calibration} ({ref.name}); every figure projected (p) "
                 "from its measured anchors:" if args.calibration else
                 "projection for one H100 from the constants of telemetry-cost.md, nothing measured here (torch 2.11; "
                 "capture = bare bf16 GEMM, N rows through GEMMs; step_s from FLOPs at 400 TFLOP/s; 16 host cores, "
                 "128 GiB):"))
    print(f"wall time of this benchmark: {time.perf_counter() - t_start:.0f} s")
    last = measured[widths[-1]]
    ev = cm.event_estimate(cm.EventShape(preset.layers, last.width, preset.rows, chunk_rows=preset.micro_batch_rows),
                       prof, workers=workers)
    step_s = args.step_seconds or cm.estimate_step_seconds(
        cm.ModelShape(preset.layers, preset.d_model, last.width), preset.rows, prof.flops_per_s)
    on = cm.estimate_run(cm.ModelShape(preset.layers, preset.d_model, last.width), preset.steps, cadences[-1],
                         preset.rows, step_s, prof, decompose_on=args.decompose_on, resources=resources).decompose_on
    print(" ".join(f"capture_floor_x_{m.width}={statistics.median(m.ratios):.3f}" for m in measured.values())
          + " (measured here, interleaved medians)")
    print(f"critical_path_s={ev.critical_path_s(on):.4f} decomposition_s={ev.decomposition_s(on):.4f} "
          f"peak_host_mib={last.host_mib:.1f} peak_device_mib={last.device_mib:.1f}")


def _paper_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--preset", default=None, choices=tuple(PRESETS),
                    help="paper-shaped accumulators per width (omit for the training on/off mode)")
    ap.add_argument("--max-width", type=int, default=None, help="largest width measured (default: all on cuda, 1536 on cpu)")
    ap.add_argument("--rows", type=int, default=None,
                    help="rows captured per (layer, site) (default: the full 524,288 on cuda, 2048 on cpu)")
    ap.add_argument("--step-seconds", type=float, default=None,
                    help="seconds per training step (default: FLOP estimate at half the measured GEMM rate)")
    ap.add_argument("--cadences", default="100,200", help="telemetry cadences for the share columns")
    ap.add_argument("--workers", type=int, default=None, help="CPU pool workers (default: available cores - 1)")
    ap.add_argument("--eig-sample", type=int, default=2, help="matrices decomposed per width (pre/post pairs)")
    ap.add_argument("--cpu-eig-max-width", type=int, default=None,
                    help="largest width timed on one CPU thread (default: --max-width on cpu, 3072 on cuda)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="capture and GEMM-floor repetitions, interleaved, medians kept (default and minimum 5)")
    ap.add_argument("--write-calibration", default=None, metavar="FILE",
                    help="write what was measured as a calibration file (sweep.plan plan.calibration=FILE)")
    ap.add_argument("--calibration", default=None, metavar="FILE",
                    help="project from this calibration file instead of the H100 constants")
    ap.add_argument("--decompose-on", default="auto", choices=placement.DECOMPOSE_ON)


# =============================================================================== training mode
@dataclass
class Shape:
    n_layer: int
    n_head: int
    d_model: int
    ffn_mult: int
    vocab: int
    seq: int
    micro_batch: int  # sequences per micro-batch
    micro_steps: int  # micro-batches per optimizer step


SHAPES = {
    "tiny": Shape(n_layer=4, n_head=4, d_model=64, ffn_mult=4, vocab=512, seq=64, micro_batch=8, micro_steps=2),
    # GPT-2 160M as in the paper: 12 x 768, D = 3072, 1024 x 512 = 524,288 tokens per step
    "gpt2_160m": Shape(
        n_layer=12, n_head=12, d_model=768, ffn_mult=4, vocab=50304, seq=512, micro_batch=32, micro_steps=32
    ),
}


class _StandInBlock(nn.Module):
    """Used only when models.GPT does not import: causal attention + ReLU² FFN, contract names."""

    def __init__(self, d: int, n_head: int, width: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.ffn = nn.Module()
        self.ffn.up = nn.Linear(d, width, bias=False)
        self.ffn.down = nn.Linear(width, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(F.rms_norm(x, (d,))).view(b, s, 3, self.n_head, d // self.n_head).unbind(2)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.o(att.transpose(1, 2).reshape(b, s, d))
        return x + self.ffn.down(F.relu(self.ffn.up(F.rms_norm(x, (d,)))).square())


class _StandInGPT(nn.Module):
    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.wte = nn.Embedding(shape.vocab, shape.d_model)
        self.blocks = nn.ModuleList(
            _StandInBlock(shape.d_model, shape.n_head, shape.ffn_mult * shape.d_model) for _ in range(shape.n_layer)
        )
        self.lm_head = nn.Linear(shape.d_model, shape.vocab, bias=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor):
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(F.rms_norm(x, (x.shape[-1],)))
        return logits, F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def build_model(shape: Shape) -> tuple[nn.Module, str]:
    try:
        from specsweep.models import GPT, GPTConfig

        cfg = GPTConfig(
            vocab_size=shape.vocab, n_layer=shape.n_layer, n_head=shape.n_head, d_model=shape.d_model,
            context_len=shape.seq, ffn_mult=shape.ffn_mult,
        )
        return GPT(cfg), "models.GPT"
    except Exception as exc:  # written in parallel by another engineer
        print(f"models.GPT unavailable ({type(exc).__name__}: {exc}); using the stand-in model")
        return _StandInGPT(shape), "stand-in"


def zipf_probs(vocab: int, exponent: float = 1.1) -> torch.Tensor:
    p = 1.0 / np.arange(1, vocab + 1) ** exponent
    return torch.from_numpy(p / p.sum())


def _training_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--shape", default=None, choices=tuple(SHAPES), help="default: tiny on cpu, gpt2_160m on cuda")
    ap.add_argument("--every", type=int, default=None, help="steps per telemetry event (default 10 cpu, 100 cuda)")
    ap.add_argument("--rounds", type=int, default=None, help="off/on block pairs measured (default 4 cpu, 1 cuda)")
    ap.add_argument("--finalize", default="inline", choices=("inline", "thread"))
    ap.add_argument("--min-bucket-rows", type=int, default=None, help="default 100 on cpu (tiny batch), 1000 on cuda")
    ap.add_argument("--accum-dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--capture", default="auto", choices=("auto", "bf16", "fp32"),
                    help="capture GEMM precision: auto = bf16 inputs/fp32 output on CUDA, exact fp32 on CPU")


def training_main(args: argparse.Namespace) -> None:
    args.device = args.device or "cpu"

    cuda = args.device == "cuda"
    shape = SHAPES[args.shape or ("gpt2_160m" if cuda else "tiny")]
    every = args.every or (100 if cuda else 10)
    rounds = args.rounds or (1 if cuda else 4)
    min_rows = args.min_bucket_rows or (1000 if cuda else 100)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if args.threads or not cuda:
        torch.set_num_threads(args.threads or 1)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # what training scripts do; the probe turns it off
        torch.backends.cudnn.allow_tf32 = True

    model, model_kind = build_model(shape)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    probs = zipf_probs(shape.vocab)
    # "corpus" counts from a large sample of the same distribution -> HEAD/MID/TAIL table
    gen = torch.Generator().manual_seed(args.seed)
    corpus = torch.multinomial(probs, 2_000_000, replacement=True, generator=gen)
    table = frequency_buckets(np.bincount(corpus.numpy(), minlength=shape.vocab))
    probe = attach_probes(
        model, bucket_of_token=table, min_bucket_rows=min_rows,
        accum_dtype=getattr(torch, args.accum_dtype),
        bf16_matmul={"auto": None, "bf16": True, "fp32": False}[args.capture],
    )
    # the trainer's event path: decomposed inline on the model's device, or by a CPU pool worker
    pipeline = EventPipeline(probe.collector, probe.options, pool="thread",
                             decompose_on="device" if args.finalize == "inline" else "cpu")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext

    def make_step_batches(n_steps: int) -> list[list[torch.Tensor]]:
        steps = []
        for _ in range(n_steps):
            toks = torch.multinomial(
                probs, shape.micro_steps * shape.micro_batch * (shape.seq + 1), replacement=True, generator=gen
            ).view(shape.micro_steps, shape.micro_batch, shape.seq + 1)
            steps.append([t.to(device) for t in toks])  # micro-batches [b, S + 1]
        return steps

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def train_step(micro: list[torch.Tensor], telemetry: bool) -> None:
        ctx = probe.capturing() if telemetry else contextlib.nullcontext()
        with ctx:
            for tokens in micro:
                idx, tgt = tokens[:, :-1], tokens[:, 1:]
                probe.set_tokens(idx)  # no-op outside capturing()
                with autocast():
                    _, loss = model(idx, tgt)
                (loss / len(micro)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    event = {"capture_s": [], "step_off_s": [], "finalize_s": [], "critical_s": [], "records": None,
             "peak_on": [], "peak_off": []}

    def run_block(batches: list, telemetry: bool, step0: int) -> float:
        sync()
        t_block = time.perf_counter()
        for i, micro in enumerate(batches):
            last = i == len(batches) - 1
            if cuda and last:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            train_step(micro, telemetry and last)
            sync()
            t1 = time.perf_counter()
            if telemetry and last:
                event["capture_s"].append(t1 - t0)
                finished = pipeline.end_event(step0 + i + 1, spectrum=True)
                sync()
                if finished:
                    event["records"] = finished[-1].records
                event["critical_s"].append(time.perf_counter() - t1)
                if cuda:
                    event["peak_on"].append(torch.cuda.max_memory_allocated() - base)
            else:
                event["step_off_s"].append(t1 - t0)  # every step without an event, both modes
                if cuda:
                    event["peak_off"].append(torch.cuda.max_memory_allocated() - base)
        sync()
        return time.perf_counter() - t_block

    print(f"model={model_kind} shape={shape} device={device} every={every} rounds={rounds} "
          f"finalize={args.finalize} accum={args.accum_dtype} capture={args.capture} threads={torch.get_num_threads()}")
    # warm-up: one plain block and one event (allocator, LAPACK and autograd first-call costs)
    warm = make_step_batches(2)
    run_block(warm, False, 0)
    run_block(warm, True, 0)
    pipeline.drain()
    for key in event:
        event[key] = [] if key != "records" else None

    total = {False: 0.0, True: 0.0}
    step = 0
    for r in range(rounds):
        batches = make_step_batches(every)
        for telemetry in ((False, True) if r % 2 == 0 else (True, False)):
            total[telemetry] += run_block(batches, telemetry, step)
        step += every
    t = time.perf_counter()
    drained = pipeline.drain()
    wait_s = time.perf_counter() - t
    if drained:
        event["records"] = drained[-1].records
    pipeline.close()

    n_events = rounds
    steps_off = rounds * every
    off_ms = 1e3 * total[False] / steps_off
    added_ms = 1e3 * (total[True] - total[False]) / n_events
    step_ms = 1e3 * statistics.median(event["step_off_s"])
    capture_extra_ms = 1e3 * statistics.median(event["capture_s"]) - step_ms
    critical_ms = 1e3 * statistics.median(event["critical_s"])
    robust_added_ms = capture_extra_ms + critical_ms
    records = event["records"]
    statuses = {}
    for rec in records:
        statuses[rec["status"]] = statuses.get(rec["status"], 0) + 1
    print(f"records per event: {len(records)} (layers x sites x buckets); statuses {statuses}")
    what = "snapshot+finalize" if args.finalize == "inline" else "snapshot (critical path)"
    print(f"step time without an event: median {step_ms:.1f} ms (block mean, telemetry off: {off_ms:.1f} ms)")
    print(f"overhead ratio at cadence {every}, block totals: {total[True] / total[False]:.4f}  "
          f"(on {total[True]:.2f} s / off {total[False]:.2f} s, {steps_off} steps each; "
          f"added {added_ms:.1f} ms per event)")
    print(f"overhead ratio at cadence {every}, from medians: {1 + robust_added_ms / (every * step_ms):.4f}  "
          f"(added per event {robust_added_ms:.1f} ms = capture in the step {capture_extra_ms:.1f} ms"
          f" + {what} {critical_ms:.1f} ms)")
    if args.finalize != "inline":
        print(f"background finalize still pending at the end: waited {1e3 * wait_s:.1f} ms")
    if every != 100:
        print(f"projected overhead at a 100-step cadence (medians): {robust_added_ms / (100 * step_ms):.2%}")
    state = sum(p.numel() * p.element_size() for acc in probe.collector.acc.values()
                for p in (acc.m2, acc.mean) if p is not None)
    d = next(iter(probe.collector.acc.values())).dim
    n_acc = len(probe.collector.acc)
    print(f"accumulator state: {n_acc} x D^2 (D={d}) = {n_acc * d * d * 4 / 2**20:.1f} MiB fp32 while capturing"
          f" (now {state / 2**20:.1f} MiB after reset)")
    if cuda:
        extra = max(event["peak_on"]) - max(event["peak_off"])
        print(f"peak GPU memory of a telemetry step above a plain step: {extra / 2**20:.0f} MiB")
    sample = next(r for r in records if r["status"] == "ok")
    print("sample record:", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in sample.items()})



# =============================================================================== validate mode
VALIDATE = {  # a run where telemetry is a clear share of wall time on 2 CPU cores, in about 1-2 minutes
    "n_layer": 2, "d_model": 64, "n_head": 4, "ffn_mult": 8, "context_len": 64, "vocab": 512,
    "steps": 100, "batch_size": 16, "every": 5, "spectrum_every": 4,
}


def validate_main(args: argparse.Namespace) -> None:
    """Train a short CPU run with telemetry (specsweep-train), time this machine's kernels on the
    same shape (capture through FFNProbe's hooks, the snapshot and hard ranks of an event, fp64
    decomposition on one thread: EventPipeline, as the trainer runs them), feed them to
    metrics.costmodel.estimate_run with the run's own non-telemetry seconds per step, and compare
    the predicted telemetry share with the one the run's DONE records."""
    import json
    import subprocess
    import tempfile

    from specsweep.metrics.costmodel import Anchors, DeviceProfile, ModelShape, estimate_run
    from specsweep.metrics.placement import HostResources, host_resources

    v = dict(VALIDATE)
    tokens_per_step = v["batch_size"] * v["context_len"]
    width = v["ffn_mult"] * v["d_model"]
    torch.set_num_threads(1)  # the run's trainer thread (train.num_threads=1); the pool gets the other cores
    with tempfile.TemporaryDirectory(prefix="validate_") as tmp:
        cmd = [sys.executable, "-m", "specsweep.sweep.train", "logger=none", "data=synthetic", f"data.vocab_size={v['vocab']}",
               "model=tiny", f"model.n_layer={v['n_layer']}", f"model.d_model={v['d_model']}",
               f"model.n_head={v['n_head']}", f"model.ffn_mult={v['ffn_mult']}", f"model.context_len={v['context_len']}",
               f"train.steps={v['steps']}", f"train.batch_size={v['batch_size']}", f"train.eval_every={v['steps']}",
               f"train.ckpt_every={v['steps']}", "train.eval_batches=1", "train.num_threads=1", "train.device=cpu",
               "train.progress=false", f"telemetry.every={v['every']}", f"telemetry.spectrum_every={v['spectrum_every']}",
               "telemetry.decompose_on=cpu", "telemetry.min_bucket_rows=64", "sweep_name=validate",
               f"paths.runs_root={tmp}/runs", f"paths.data_root={tmp}/data"]
        print("run:", " ".join(cmd[1:]))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"},
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if proc.returncode != 0:
            raise SystemExit(f"the validation run failed:\n{proc.stderr[-3000:]}")
        (done_file,) = [p for p in __import__("pathlib").Path(tmp, "runs").rglob("DONE")]
        done = json.loads(done_file.read_text())
    tel, wall = done["telemetry"], float(done["wall_s"])
    measured_s = tel["critical_s"] + tel["wait_s"]
    print(f"run: {time.perf_counter() - t0:.0f} s wall (process), DONE: wall_s {wall:.1f}, telemetry "
          f"{measured_s:.2f} s (critical {tel['critical_s']:.2f} + wait {tel['wait_s']:.2f}) over {tel['events']} "
          f"events, {tel['spectrum_events']} with spectra, share {tel['share']:.3f}")
    # this machine's kernel times on the run's shape, through the trainer's code paths
    from specsweep.models import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=v["vocab"], n_layer=v["n_layer"], n_head=v["n_head"], d_model=v["d_model"],
                          context_len=v["context_len"], ffn_mult=v["ffn_mult"]))
    gen = torch.Generator().manual_seed(args.seed)
    probs = zipf_probs(v["vocab"])
    table = frequency_buckets(np.bincount(torch.multinomial(probs, 200_000, replacement=True, generator=gen).numpy(),
                                          minlength=v["vocab"]))
    probe = attach_probes(model, bucket_of_token=table, min_bucket_rows=64)
    idx = torch.multinomial(probs, tokens_per_step, replacement=True, generator=gen).view(v["batch_size"], -1)
    pairs = v["n_layer"] * len(SITES)
    matrices = pairs * 4
    caps, snaps, eigs, steps = [], [], [], []
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def train_step() -> float:  # a plain step (forward, backward, update), as the run's steps without an event
        t0 = time.perf_counter()
        _, loss = model(idx, idx.roll(-1, 1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for r in range(6):  # the first is a warm-up; steps and kernels alternate, so that load hits both alike
        steps.append(train_step())
        with torch.no_grad():
            with EventPipeline(probe.collector, probe.options, decompose_on="device", pool="thread") as pipe:
                with probe.capturing():
                    probe.set_tokens(idx)
                    model(idx)
                (hard,) = pipe.end_event(1, spectrum=False)
                with probe.capturing():
                    probe.set_tokens(idx)
                    model(idx)
                (full,) = pipe.end_event(2, spectrum=True)
        steps.append(train_step())
        if r:
            caps.append(hard.cost.capture_s)
            snaps.append(hard.cost.reduce_s + hard.cost.snapshot_s + hard.cost.hard_rank_s)
            eigs.append(full.cost.sync_decompose_s)
    probe.detach()
    cap, snap, eig = statistics.median(caps), statistics.median(snaps), statistics.median(eigs)
    step_s = statistics.median(steps[2:])
    print(f"kernels here (medians of 5, one thread, alternating with plain training steps of "
          f"{step_s * 1e3:.1f} ms): capture {cap * 1e3:.1f} ms per event ({tokens_per_step} rows x "
          f"{pairs} pairs), snapshot + hard ranks {snap * 1e3:.1f} ms, fp64 decomposition {eig * 1e3:.0f} ms "
          f"({matrices} matrices of D={width})")
    stamp = "validate: measured here"
    res = host_resources()
    prof = DeviceProfile(
        name=f"cpu here ({stamp})", accelerator=False,
        capture_row_s=Anchors(((width, cap / (pairs * tokens_per_step)),), 2.0, stamp), capture_rows=tokens_per_step,
        snapshot_matrix_s=Anchors(((width, snap / matrices),), 2.0, stamp),
        eig_core_s=Anchors(((width, eig / matrices),), 3.0, stamp), eig_device_s=None,
        copy_bytes_per_s=1e12, flops_per_s=1e12, cores=res.cores, host_mem_bytes=res.mem_available_bytes,
    )
    # the step time measured here beside the kernels (not the run's): a shared machine's load then
    # scales both alike, and the share compares like with like
    pred = estimate_run(ModelShape(v["n_layer"], v["d_model"], width, vocab=v["vocab"]), v["steps"], v["every"],
                        tokens_per_step, step_s, prof, decompose_on="cpu", spectrum_every=v["spectrum_every"],
                        resources=HostResources(res.cores, res.mem_available_bytes), ckpt_every=v["steps"])
    predicted = pred.telemetry_s / (step_s * v["steps"] + pred.telemetry_s)
    measured = tel["share"]
    print(f"predicted: telemetry {pred.telemetry_s:.2f} s (of which waits {pred.wait_s:.2f} s) over {pred.n_events} "
          f"events, {pred.n_spectrum_events} with spectra, at {step_s * 1e3:.1f} ms per step measured here "
          f"(the run: {(wall - measured_s) / v['steps'] * 1e3:.1f} ms per step without telemetry, evals included)")
    print(f"predicted_share={predicted:.4f} measured_share={measured:.4f} ratio={measured / predicted:.3f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, choices=("cpu", "cuda"),
                    help="default: cuda when available in paper mode, cpu in training mode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default 1 on cpu: OpenMP spin-waits ruin timings on a busy host)")
    ap.add_argument("--validate", action="store_true",
                    help="train a short CPU run with telemetry and compare its measured telemetry share with the "
                         "cost model's prediction from kernel times measured here (last line: predicted_share=..)")
    _paper_args(ap)
    _training_args(ap)
    args = ap.parse_args(argv)
    if args.validate:
        validate_main(args)
    elif args.preset:
        paper_main(args)
    else:
        training_main(args)


if __name__ == "__main__":
    main()
