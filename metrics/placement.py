"""Where a run decomposes its spectra, decided from what the run itself measured (the
``telemetry.decompose_on=auto`` rule), and how often (the cadence budget): a few pure functions the
trainer calls. No device profile and no whole-run simulation here; those are the cost model's
(`metrics.costmodel`), for `sweep.plan` and the benchmark."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

DECOMPOSE_ON = ("auto", "cpu", "gpu")
MEM_HEADROOM = 0.8  # share of available host memory a CPU pool may plan to use
GIB = 2**30


@dataclass(frozen=True)
class HostResources:
    """CPU cores and host memory available to this process (per rank)."""

    cores: int
    mem_available_bytes: int
    source: str = "given"


def host_resources() -> HostResources:
    """Cores this process may run on (sched_getaffinity) and MemAvailable (/proc/meminfo, else the
    free pages)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = next((int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:")), None)
    except OSError:
        pass
    if mem is None:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return HostResources(cores=cores, mem_available_bytes=mem, source="measured (affinity, MemAvailable)")


def pool_workers(cores: int, reserve: int = 1) -> int:
    """Pool size: the cores left after `reserve` for the trainer process (at least one)."""
    return max(1, int(cores) - reserve)


@dataclass(frozen=True)
class DecomposeDecision:
    on: str  # "cpu" or "gpu"
    reason: str


def decide_decompose_on(
    requested: str,
    *,
    accelerator: bool,
    cpu_decompose_s: float,
    interval_s: float,
    host_bytes_needed: int,
    host_bytes_available: int,
    mem_headroom: float = MEM_HEADROOM,
    device_s: float | None = None,
    copy_s: float = 0.0,
) -> DecomposeDecision:
    """The `telemetry.decompose_on` rule. Pure function; a run feeds it what it measured.

    auto: the CPU pool when it decomposes an event within the time between events, its host
    memory (in-flight snapshots + workers) fits in `mem_headroom` of what is available, and the
    host copy it needs (`copy_s`) takes less than decomposing on the device (`device_s`, when
    known); otherwise the accelerator. Without an accelerator everything runs on the CPU; asking
    for "gpu" then is an error.
    """
    if requested not in DECOMPOSE_ON:
        raise ValueError(f"decompose_on must be one of {DECOMPOSE_ON}, got {requested!r}")
    if requested == "gpu" and not accelerator:
        raise ValueError("decompose_on=gpu needs a CUDA device; use cpu or auto")
    if requested != "auto":
        return DecomposeDecision(requested, f"decompose_on={requested} requested")
    if not accelerator:
        return DecomposeDecision("cpu", "no accelerator")
    budget = mem_headroom * host_bytes_available
    if host_bytes_needed > budget:
        return DecomposeDecision(
            "gpu", f"a CPU pool needs {host_bytes_needed / GIB:.1f} GiB of host RAM, "
                   f"{mem_headroom:.0%} of available is {budget / GIB:.1f} GiB")
    if cpu_decompose_s > interval_s:
        return DecomposeDecision(
            "gpu", f"the CPU pool needs {cpu_decompose_s:.1f} s per event, {interval_s:.1f} s between events")
    if device_s is not None and device_s <= copy_s:
        return DecomposeDecision(
            "gpu", f"the device decomposes an event in {device_s:.3g} s, the copy to the pool takes {copy_s:.3g} s")
    return DecomposeDecision(
        "cpu", f"the CPU pool keeps up ({cpu_decompose_s:.1f} s per event, {interval_s:.1f} s between events)")


def needed_at(step: int, total_steps: int, ckpt_every: int | None, next_spectra: Sequence[int],
              max_in_flight: int = 1) -> int:
    """The step at which the trainer waits, at the latest, for the records of the spectrum event at
    `step`: the last step (DONE), the next checkpoint (at or after `step`), or the
    `max_in_flight`-th next spectrum event (it needs a free slot in the pool)."""
    steps = [total_steps]
    if ckpt_every:
        steps.append(-(-step // ckpt_every) * ckpt_every)  # the first multiple of ckpt_every >= step
    if len(next_spectra) >= max_in_flight:
        steps.append(next_spectra[max_in_flight - 1])
    return min(steps)


def decompose_on_device_now(device_s: float | None, pool_s: float, copy_s: float, until_needed_s: float) -> bool:
    """A run whose spectra go to the CPU pool, on an accelerator: whether this one event is better
    decomposed on the device at once. The pool costs the trainer the host copy plus the wait when
    the records are needed before the pool is done (`until_needed_s` after the event: 0 before a
    checkpoint or DONE); the device costs its decomposition time."""
    if device_s is None:
        return False
    return device_s < copy_s + max(0.0, pool_s - until_needed_s)


GPU_SHARE_BUDGET = 0.01
"""Share of training time that spectra decomposed on the training device may take outside the
fit's window (the issue's target: telemetry ≤ 1% of wall time)."""


def cadence_budget(on: str, gpu_budget: float = GPU_SHARE_BUDGET) -> float:
    """The `budget` of `metrics.schedule.keep_up_every` / `SpectrumCadence` for a decomposition place:
    a CPU pool only has to keep up (1.0: one event's decomposition within k intervals); on the GPU
    its time is added to the steps, so it may use `gpu_budget` of the time between events."""
    if on not in ("cpu", "gpu"):
        raise ValueError(f"decomposition place must be 'cpu' or 'gpu', got {on!r}")
    return 1.0 if on == "cpu" else gpu_budget
