"""How the figures look, decided once: colours per optimizer, the title line, the x offsets.

- :func:`palette`: one colour per group label, the same in every figure and every analysis
  (AdamW is always blue, Muon orange, ...); labels that share an optimizer (``dion
  rank_fraction=0.25``, ``dion rank_fraction=0.5``) get shades of its colour.
- :func:`caption`: the line every figure carries: sweep, steps, seeds, aggregation rule (and,
  while a sweep runs, "as of step S, N of M runs").
- :func:`width_offsets`: multiplicative x offsets so that points of different groups at the same
  width do not hide each other on a log axis.
"""

from __future__ import annotations

import colorsys
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from specsweep.sweep.analysis.result import FitResult

# Fixed order of the known optimizers: index i gets colour i of matplotlib's tab10 cycle.
OPTIMIZER_ORDER: tuple[str, ...] = ("adamw", "muon", "normuon", "dion", "lion")
_TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
# Lightness changes for the 2nd, 3rd, ... label of the same optimizer.
_SHADES = (0.0, -0.18, 0.18, -0.32, 0.32, -0.42, 0.42)


def _shade(hex_colour: str, amount: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    h, lum, s = colorsys.rgb_to_hls(r, g, b)
    lum = min(0.92, max(0.08, lum + amount))
    return "#" + "".join(f"{round(c * 255):02x}" for c in colorsys.hls_to_rgb(h, lum, s))


def optimizer_of_labels(frame: pd.DataFrame) -> dict[str, str]:
    """label -> optimizer name (lower case) from a table with both columns."""
    if frame.empty or "label" not in frame.columns:
        return {}
    if "optimizer" not in frame.columns:
        return {str(lab): str(lab).split(" ")[0].lower() for lab in frame["label"].unique()}
    pairs = frame[["label", "optimizer"]].drop_duplicates("label")
    return {str(lab): str(opt).lower() for lab, opt in pairs.itertuples(index=False)}


def palette(label_optimizer: Mapping[str, str]) -> dict[str, str]:
    """A colour per label: the optimizer's fixed colour (OPTIMIZER_ORDER), others by name after
    them; the k-th label (sorted) of one optimizer gets the k-th shade of that colour."""
    optimizers = sorted(set(label_optimizer.values()),
                        key=lambda o: (OPTIMIZER_ORDER.index(o) if o in OPTIMIZER_ORDER else 99, o))
    base: dict[str, str] = {}
    spare = iter(c for i, c in enumerate(_TAB10) if i >= len(OPTIMIZER_ORDER))
    for opt in optimizers:
        if opt in OPTIMIZER_ORDER:
            base[opt] = _TAB10[OPTIMIZER_ORDER.index(opt)]
        else:
            base[opt] = next(spare, "#333333")
    colours: dict[str, str] = {}
    for opt in optimizers:
        labels = sorted(lab for lab, o in label_optimizer.items() if o == opt)
        for k, lab in enumerate(labels):
            colours[lab] = _shade(base[opt], _SHADES[k % len(_SHADES)]) if k else base[opt]
    return colours


def ordered_labels(colours: Mapping[str, str], labels: Sequence[str]) -> list[str]:
    """``labels`` in palette order (optimizer order, then name)."""
    order = {lab: i for i, lab in enumerate(colours)}
    return sorted(dict.fromkeys(labels), key=lambda lab: (order.get(lab, len(order)), lab))


def width_offsets(labels: Sequence[str], widths: Sequence[float], spread: float = 0.15) -> dict[str, float]:
    """Multiplicative x offset per label, symmetric around 1: the groups together span ``spread``
    of the smallest gap between two widths on the log axis (at most ±4 %)."""
    n = len(labels)
    if n <= 1:
        return {lab: 1.0 for lab in labels}
    logs = np.unique(np.log(np.asarray([w for w in widths if w and w > 0], dtype=float)))
    gap = float(np.min(np.diff(logs))) if logs.size > 1 else np.log(2.0)
    step = min(spread * gap, 0.08) / (n - 1)
    return {lab: float(np.exp(step * (k - (n - 1) / 2))) for k, lab in enumerate(labels)}


def _list_text(values: Sequence[Any]) -> str:
    vals = sorted({int(v) if float(v).is_integer() else v for v in values})
    if len(vals) > 2 and all(isinstance(v, int) for v in vals) and vals == list(range(vals[0], vals[-1] + 1)):
        return f"{vals[0]}–{vals[-1]}"
    return ", ".join(map(str, vals))


def caption(result: FitResult) -> str:
    """"<sweep> · <steps> steps · seeds 0, 1 · <rule>" (+ " · as of step S, N of M runs")."""
    runs, points = result.runs, result.points
    parts = [result.sweep_name or "sweep"]
    steps = pd.to_numeric(runs["steps"], errors="coerce").dropna() if "steps" in runs.columns else pd.Series([], dtype=float)
    if steps.empty and "window_end" in points.columns:
        steps = pd.to_numeric(points["window_end"], errors="coerce").dropna().agg(["max"])
    if not steps.empty:
        parts.append(f"{_list_text(steps.unique())} steps")
    seed_col = runs if "seed" in runs.columns else points
    seeds = pd.to_numeric(seed_col["seed"], errors="coerce").dropna() if "seed" in seed_col.columns else pd.Series([], dtype=float)
    if not seeds.empty:
        parts.append(f"seed{'s' if seeds.nunique() > 1 else ''} {_list_text(seeds.unique())}")
    parts.append(result.rule_short or result.rule)
    if result.as_of:
        parts.append(result.as_of)
    return " · ".join(p for p in parts if p)
