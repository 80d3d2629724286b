"""The command line's aggregation rules: ``paper``, ``mean``, ``layer:K``, ``window:A-B``.

The rules themselves (what each one computes) are ``metrics.fit.AggregationRule``; this module
only reads the text a user types after ``--rule``.
"""

from __future__ import annotations

from metrics.fit import AggregationRule


def parse_rule(spec: str, *, last_k: int = 5) -> AggregationRule:
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
