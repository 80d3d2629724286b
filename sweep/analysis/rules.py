"""The command line's aggregation rules: ``paper``, ``mean``, ``layer:K``, ``window:A-B``.

The rules themselves (what each one computes) are ``metrics.fit.AggregationRule``; this module
only reads the text a user types after ``--rule``.
"""

from __future__ import annotations

from specsweep.metrics.aggregation import AggregationRule
from specsweep.metrics.schedule import AGGREGATION_EVENTS


def parse_rule(spec: str, *, last_k: int = AGGREGATION_EVENTS) -> AggregationRule:
    """Parse ``paper``, ``mean``, ``layer:K`` or ``window:A-B`` into an :class:`AggregationRule`."""
    spec = spec.strip()
    try:
        if spec in ("paper", "mean"):
            return AggregationRule(spec, last_k=last_k)
        if spec.startswith("layer:"):
            return AggregationRule("layer", last_k=last_k, layer=int(spec.split(":", 1)[1]))
        if spec.startswith("window:"):
            lo, hi = spec.split(":", 1)[1].split("-")
            a, b = int(lo), int(hi)
            if a > b:
                raise ValueError
            return AggregationRule("window", last_k=last_k, step_min=a, step_max=b)
    except ValueError as err:
        raise ValueError(f"bad aggregation rule {spec!r}: {err}".rstrip(": ")) from None
    raise ValueError(f"bad aggregation rule {spec!r}; use paper, mean, layer:K or window:A-B")


def rule_short(rule: AggregationRule) -> str:
    """The rule in a few words, for figure titles (``describe()`` has the full sentence)."""
    if rule.kind == "paper":
        return f"paper rule (median of last {rule.last_k} ckpts per layer, median over layers)"
    if rule.kind == "mean":
        return f"mean rule (mean of last {rule.last_k} ckpts per layer, mean over layers)"
    if rule.kind == "layer":
        return f"layer {rule.layer} (median of its last {rule.last_k} ckpts)"
    return f"window {rule.step_min}-{rule.step_max} (median per layer, median over layers)"


def err_meaning(rule: AggregationRule) -> str:
    """What the ``err`` of a point is under ``rule`` (error bars in the figures, report.md)."""
    if rule.kind == "layer":
        return f"±1 SD over layer {rule.layer}'s last {rule.last_k} checkpoints"
    per_layer = "means" if rule.kind == "mean" else "medians"
    return f"±1 SD across layer {per_layer} (the paper's band)"
