"""Learning-rate schedule of the paper: optional linear warmup, constant, linear decay to 0."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from specsweep.optim.bundle import OptimizerBundle


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, decay_frac: float = 0.2) -> float:
    """Multiplier of the base lr at 0-based `step` of a `total_steps` run.

    warmup: (step + 1) / warmup_steps while step < warmup_steps (the first step is not wasted
    at lr 0); decay: (total_steps - step) / (decay_frac * total_steps) once that is below 1, so
    the factor is 1 at step (1 - decay_frac)·total_steps, 1/(decay_frac·total_steps) at the last
    step and 0 at step == total_steps. The smaller of the two applies.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if isinstance(decay_frac, bool) or not isinstance(decay_frac, (int, float)) or not 0 <= decay_frac <= 1:
        raise ValueError(f"decay_frac must be in [0, 1], got {decay_frac!r}")
    factor = 1.0
    if step < warmup_steps:
        factor = (step + 1) / warmup_steps
    if decay_frac > 0:
        factor = min(factor, (total_steps - step) / (decay_frac * total_steps))
    elif step >= total_steps:
        factor = 0.0
    return max(0.0, min(1.0, factor))


def set_lr(bundle: OptimizerBundle, factor: float) -> None:
    """Set `lr = base_lr * factor` in every param group of the bundle."""
    for group in bundle.param_groups:
        group["lr"] = group["base_lr"] * factor
