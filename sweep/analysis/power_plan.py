"""``sweep.plan``'s resolution (docs/power.md): before a grid runs, the smallest Δβ between two of
its optimizers it could resolve, and the seeds or widths that would resolve ``plan.resolve``.

The noise comes from a pilot: an existing sweep directory (its runs' scatter about their power
laws, seeds included) or ``paper``, the published fits bundled in ``published/`` (one run per
width: σ = std_err · sqrt(Σ (ln D − mean ln D)²) over the paper's widths, D = 768·{1..8} at 160M
(Table 2 and the Dion rank sweep), 1024·{1..4} at 350M). The design (widths and seeds per optimizer) is the planned grid's.
"""

from __future__ import annotations

import itertools
import math
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from specsweep.metrics import power as mpow
from specsweep.metrics.aggregation import AggregationRule
from specsweep.sweep.analysis.compare import PAPER_MODELS, experiment_of
from specsweep.sweep.analysis.defaults import DEFAULT_RESOLVE, PAPER
from specsweep.sweep.analysis.points import build_points, group_columns
from specsweep.sweep.analysis.power import METRIC_SHORT, opt_label, pair_order, series_noises, series_order
from specsweep.sweep.analysis.read import NoRunDirectories, load_sweeps
from specsweep.sweep.errors import SweepError

# scale -> the tables with its fits (the d_model of its width ladder: compare.PAPER_MODELS)
PUBLISHED = {"160m": ("main_beta_table.csv", "frequency_bucket_beta_table.csv",
                      "dion_tail_rank_sweep_beta_table.csv"),
             "350m": ("tail_350m_beta_table.csv",)}
Key = tuple[str, str, str, str]  # optimizer label, metric, bucket, site


def published_noises(scale: str = "160m") -> dict[Key, mpow.SeriesNoise]:
    """The noise of every published fit of one model scale (post-activation, one seed)."""
    out: dict[Key, mpow.SeriesNoise] = {}
    folder = resources.files("specsweep.sweep.analysis") / "published"
    for name in PUBLISHED[scale]:
        with resources.as_file(folder / name) as path:
            frame = pd.read_csv(path)
        for r in frame.to_dict("records"):
            exp = experiment_of(r, published=True)  # d_model from model_scale, Dion's rank fraction
            key = (opt_label(exp.optimizer, exp.rank_fraction), r["metric"], r.get("bucket", "global"), "post")
            lw = [math.log(exp.d_model * k) for k in range(1, int(r["n_widths"]) + 1)]
            out.setdefault(key, mpow.noise_from_published(float(r["beta"]), float(r["std_err"]), lw))
    return out


def sweep_noises(pilot: str | Path) -> dict[Key, mpow.SeriesNoise]:
    """The noise of every series of a finished pilot sweep (paper aggregation rule); where other
    axes vary, the series with the most widths per optimizer × metric × bucket × site."""
    try:
        contents = load_sweeps([pilot])
    except NoRunDirectories:
        raise SweepError(f"plan.pilot={pilot}: no run directories there") from None
    if not contents.runs:
        raise SweepError(f"plan.pilot={pilot}: no finished runs to take the scatter from")
    points, _ = build_points(contents.runs, AggregationRule())
    if points.empty:
        raise SweepError(f"plan.pilot={pilot}: no run has telemetry values to fit")
    noises = series_noises(points, group_columns(points))
    out: dict[Key, mpow.SeriesNoise] = {}
    for r in noises.itertuples():
        key = (r.optimizer_label, r.metric, r.bucket, r.site)
        if key not in out or len(r.noise.ln_widths) > len(out[key].ln_widths):
            out[key] = r.noise
    return out


def pilot_noises(pilot: str, scale: str = "160m") -> tuple[dict[Key, mpow.SeriesNoise], str]:
    """(noise per series, where it comes from) of ``plan.pilot``."""
    if pilot == PAPER:
        return published_noises(scale), (f"the published {scale.upper()} fits ({', '.join(PUBLISHED[scale])}; "
                                         f"one run per width, D = {PAPER_MODELS[scale][0]}·k)")
    path = Path(pilot)
    if not path.is_dir():
        raise SweepError(f"plan.pilot={pilot}: not a sweep directory (or 'paper' for the published fits)")
    return sweep_noises(path), f"the pilot sweep {path}"


def plan_resolution(design: Mapping[str, tuple[Sequence[float], int]], noises: Mapping[Key, mpow.SeriesNoise],
                    target: float = DEFAULT_RESOLVE, reference: str = "adamw",
                    metrics: Sequence[str] = ("hard_rank", "soft_rank")) -> list[dict[str, Any]]:
    """One row per pair of the grid's optimizers × metric × bucket × site the pilot has noise for:
    the MDD of the planned design (widths, seeds per width) and what would resolve ``target``."""
    rows = []
    series = sorted({(m, b, s) for (_, m, b, s) in noises if m in metrics}, key=lambda k: series_order(*k))
    pairs = list(itertools.combinations(pair_order(list(design), reference), 2))
    pairs.sort(key=lambda p: p[1].split(" ")[0] != reference.lower())  # against the reference first
    for a, b in pairs:
        missing = [o for o in (a, b) if not any(k[0] == o for k in noises)]
        if missing:
            rows.append({"optimizer_a": a, "optimizer_b": b, "note": f"the pilot has no fits of {', '.join(missing)}"})
            continue
        for metric, bucket, site in series:
            na, nb = noises.get((a, metric, bucket, site)), noises.get((b, metric, bucket, site))
            if na is None or nb is None:
                continue
            widths = sorted(set(design[a][0]) | set(design[b][0]))
            seeds = min(design[a][1], design[b][1])
            lw = [math.log(w) for w in widths]
            row = {"optimizer_a": a, "optimizer_b": b, "metric": metric, "bucket": bucket, "site": site,
                   "widths": widths, "seeds": seeds,
                   "mdd": mpow.design_mdd(na, nb, lw, lw, seeds, seeds),  # NaN -> None below (plan.out is JSON)
                   "seed_noise": "measured" if na.seed_split and nb.seed_split else "assumed (1 seed: all scatter)",
                   "resolve": target}
            if math.isfinite(row["mdd"]):
                need = mpow.needed_for(target, na, nb, widths, seeds)
                row |= {"seeds_needed": need.seeds, "widths_needed": need.widths,
                        "note": "; ".join(x for x in (need.why_seeds, need.why_widths) if x)}
            else:
                row |= {"mdd": None, "note": "no interval: the grid needs >= 3 widths per optimizer"}
            rows.append(row)
    return rows


def resolution_text(rows: Sequence[Mapping[str, Any]], source: str, target: float, limit: int = 12) -> str:
    """The block ``sweep.plan`` prints: per pair × metric (post-activation) the MDD of every
    bucket, and what would resolve ``target`` in the first bucket (global); plan.out has all."""
    lines = [f"resolution (Δβ between two optimizers, two-sided 5% level, 80% power; noise from {source}; "
             "docs/power.md)"]
    if not rows:
        return lines[0] + "\n  nothing to compare: the grid has fewer than 2 optimizer configurations with telemetry"
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("site", "post") == "post":
            groups.setdefault((r["optimizer_a"], r["optimizer_b"], r.get("metric")), []).append(r)
    for (a, b, metric), group in list(groups.items())[:limit]:
        what = f"{a} − {b}"
        if metric is None:
            lines.append(f"  {what}: {group[0]['note']}")
            continue
        what += f" {METRIC_SHORT.get(metric, metric)}"
        mdds = ", ".join(f"{r['bucket']} {r['mdd']:.2f}" for r in group if r["mdd"] is not None)
        first = group[0]
        if not mdds:
            lines.append(f"  {what}: {first['note']}")
            continue
        need = []
        if first.get("seeds_needed"):
            need.append(f"{first['seeds_needed']} seeds per width")
        if first.get("widths_needed"):
            w = first["widths_needed"]
            need.append(f"{len(w)} widths D={w[0]:.0f}..{w[-1]:.0f} at {first['seeds']} seed(s)")
        if first["mdd"] is not None and first["mdd"] <= target:
            need = ["this grid already does"]
        lines.append(f"  {what}: resolves |Δβ| ≥ {mdds}; to resolve {target:g} ({first['bucket']}): "
                     + (" or ".join(need) if need else first.get("note") or "out of reach"))
    if len(groups) > limit:
        lines.append(f"  ... {len(groups) - limit} more pairs × metrics (plan.out=FILE.json: \"resolution\")")
    if any(str(r.get("seed_noise", "")).startswith("assumed") for r in rows):
        lines.append("  seeds: the pilot has one run per width, so all of its scatter is taken as seed noise "
                     "(an optimistic bound on what seeds buy)")
    return "\n".join(lines)


def grid_design(specs: Sequence[Any]) -> dict[str, tuple[list[float], int]]:
    """Optimizer label -> (the grid's widths D, fewest distinct seeds at one of them), over the
    runs with telemetry (duck-typed RunSpecs: optimizer, model, seed, telemetry)."""
    seeds: dict[str, dict[float, set]] = {}
    for s in specs:
        if not s.telemetry.enabled:
            continue
        label = opt_label(s.optimizer.name, s.optimizer.hparams.get("rank_fraction"))
        seeds.setdefault(label, {}).setdefault(float(s.model.ffn_hidden_dim), set()).add(s.seed)
    return {k: (sorted(v), min(len(x) for x in v.values())) for k, v in seeds.items()}


def grid_resolution(specs: Sequence[Any], pilot: str = PAPER, target: float = DEFAULT_RESOLVE,
                    reference: str = "adamw") -> tuple[list[dict[str, Any]], str]:
    """(rows, printed block) of a planned grid; nothing when it has fewer than 2 optimizer
    configurations with telemetry. The published noise is the 350M one for a 350M grid."""
    design = grid_design(specs)
    if len(design) < 2:
        return [], ""
    big = any((s.model.d_model, s.model.n_layer) == PAPER_MODELS["350m"][:2] for s in specs)
    noises, source = pilot_noises(pilot, "350m" if big else "160m")
    rows = plan_resolution(design, noises, target, reference)
    return rows, resolution_text(rows, source, target)
