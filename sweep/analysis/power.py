"""What a sweep can resolve (docs/power.md): for every pair of optimizers × metric × bucket × site,
Δβ with its interval and the minimum detectable difference (MDD), and what would resolve a given
Δβ (``--resolve``): power.csv, the block ``sweep.fit`` prints and the report's section.

The statistics are ``metrics.power``'s; this module picks the pairs and words the answer. It is
a block of its own in the report (other sections belong to other parts of the fit).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Any, Sequence

import numpy as np
import pandas as pd

from specsweep.metrics import fit as mfit
from specsweep.metrics import power as mpow
from specsweep.sweep.analysis.defaults import DEFAULT_RESOLVE
from specsweep.sweep.analysis.points import BUCKET_ORDER, SITE_ORDER

OPT_COLS = ("optimizer", "rank_fraction")
POWER_FILE = "power.csv"
METRIC_SHORT = {"soft_rank": "β_soft", "hard_rank": "β_hard", mfit.DELTA_METRIC: "(β_soft−β_hard)"}
_PRINTED = 12  # lines of the printed block; power.csv and report.md have every row


def opt_label(optimizer: Any, rank_fraction: Any = None) -> str:
    """'adamw', 'dion r=1/16': one optimizer configuration, spelled the same for runs, grids and
    the published tables."""
    name = str(optimizer).strip().lower()
    try:
        rf = float(Fraction(str(rank_fraction))) if rank_fraction not in (None, "") else math.nan
    except (ValueError, ZeroDivisionError):
        rf = math.nan
    if math.isnan(rf):
        return name
    return f"{name} r={Fraction(rf).limit_denominator(1024)}"


def _labels(frame: pd.DataFrame) -> pd.Series:
    rf = frame["rank_fraction"] if "rank_fraction" in frame.columns else pd.Series(None, index=frame.index)
    return pd.Series([opt_label(o, r) for o, r in zip(frame["optimizer"], rf)], index=frame.index)


def series_noises(points: pd.DataFrame, group_cols: Sequence[str]) -> pd.DataFrame:
    """One row per (other group keys, optimizer, metric, bucket, site) with its ``noise``
    (metrics.power.SeriesNoise from the points: slope, SE, residual and seed scatter)."""
    rest = [c for c in group_cols if c not in OPT_COLS]
    logs, _ = mfit.log_points(points, list(group_cols))
    cols = [*rest, "optimizer_label", "metric", "bucket", "site", "noise"]
    if logs.empty or "optimizer" not in logs.columns:
        return pd.DataFrame(columns=cols)
    logs = logs.assign(optimizer_label=_labels(logs))
    rows = []
    for key, sub in logs.groupby([*rest, "optimizer_label", "metric", "bucket", "site"], dropna=False, sort=True):
        rows.append([*mfit._as_tuple(key), mpow.series_noise(sub["ln_width"].to_numpy(float),
                                                                   sub["ln_value"].to_numpy(float))])
    return pd.DataFrame(rows, columns=cols)


def pair_order(labels: Sequence[str], reference: str) -> list[str]:
    """The reference last, so every Δβ reads 'other − reference'."""
    return sorted(labels, key=lambda s: (s.split(" ")[0] == reference.lower(), s))


def pair_row(a: mpow.SeriesNoise, b: mpow.SeriesNoise, target: float) -> dict[str, Any]:
    """Δβ = β_a − β_b, interval, MDD, and what would resolve ``target`` (same widths, more seeds;
    or the ladder continued at the same seeds)."""
    d = mpow.difference(a, b)
    widths = sorted(math.exp(v) for v in set(a.ln_widths) | set(b.ln_widths))
    seeds = max(1, min(a.n_seeds, b.n_seeds))
    row = {"beta_a": a.beta, "beta_b": b.beta, **d.as_dict(), "n_widths_a": len(a.ln_widths),
           "n_widths_b": len(b.ln_widths), "seeds": seeds,
           "seed_noise": "measured" if a.seed_split and b.seed_split else "assumed (1 seed: all scatter)",
           "resolve": target, "seeds_needed": np.nan, "widths_needed": "", "note": ""}
    if not math.isfinite(d.mdd):
        row["note"] = ("no interval: each fit needs >= 3 widths" if min(len(a.ln_widths), len(b.ln_widths)) < 3
                       else "no interval: both fits go through their points exactly (no residual scatter)")
        return row
    need = mpow.needed_for(target, a, b, widths, seeds)
    row["seeds_needed"] = need.seeds if need.seeds is not None else np.nan
    row["widths_needed"] = ";".join(f"{w:g}" for w in need.widths) if need.widths else ""
    row["note"] = "; ".join(x for x in (need.why_seeds, need.why_widths) if x)
    return row


def power_table(points: pd.DataFrame, group_cols: Sequence[str], *, target: float = DEFAULT_RESOLVE,
                reference: str = "adamw") -> pd.DataFrame:
    """power.csv: every pair of optimizers within each combination of the other group keys, per
    metric (Δβ rows included), bucket and site."""
    noises = series_noises(points, group_cols)
    rest = [c for c in group_cols if c not in OPT_COLS]
    rows = []
    if noises.empty:
        return pd.DataFrame()
    for key, sub in noises.groupby([*rest, "metric", "bucket", "site"], dropna=False, sort=True):
        by_opt = dict(zip(sub["optimizer_label"], sub["noise"]))
        for a, b in itertools.combinations(pair_order(list(by_opt), reference), 2):
            rows.append(dict(zip([*rest, "metric", "bucket", "site"], mfit._as_tuple(key)))
                        | {"optimizer_a": a, "optimizer_b": b} | pair_row(by_opt[a], by_opt[b], target))
    return pd.DataFrame(rows)


# ---- words --------------------------------------------------------------------------------------

def _need_text(r: pd.Series) -> str:
    if r["mdd"] <= r["resolve"]:
        return f"to resolve {r['resolve']:g}: this sweep already does"
    parts = []
    if pd.notna(r.get("seeds_needed")):
        n = int(r["seeds_needed"])
        parts.append(f"{n} seed{'s' if n > 1 else ''} per width (now {int(r['seeds'])})")
    if r.get("widths_needed"):
        w = [float(v) for v in str(r["widths_needed"]).split(";")]
        parts.append(f"{len(w)} widths D={w[0]:.0f}..{w[-1]:.0f}")
    if not parts:
        return f"to resolve {r['resolve']:g}: {r['note'] or 'out of reach'}"
    why = f" (seeds: {r['note']})" if pd.isna(r.get("seeds_needed")) and r.get("note") else ""
    return f"to resolve {r['resolve']:g}: " + " or ".join(parts) + why


def verdict(r: pd.Series) -> str:
    """One line: 'muon − adamw β_hard (global, post) = +0.05 ± 0.30; this sweep resolves
    |Δβ| ≥ 0.42; to resolve 0.1: ...'."""
    what = f"{r['optimizer_a']} − {r['optimizer_b']} {METRIC_SHORT.get(r['metric'], r['metric'])} ({r['bucket']}, {r['site']})"
    if not math.isfinite(r["delta"]):
        return f"{what}: no fit"
    if not math.isfinite(r["mdd"]):
        return f"{what} = {r['delta']:+.2f}, no interval ({r['note']}); this sweep cannot resolve any Δβ"
    half = (r["upper"] - r["lower"]) / 2.0
    delta = f"{r['delta']:+.2f}".replace("-0.00", "+0.00")  # below display precision: no sign
    said = "resolved: the interval excludes 0" if r["resolved"] else "not resolved"
    return (f"{what} = {delta} ± {half:.2f} ({said}); this sweep resolves |Δβ| ≥ {r['mdd']:.2f}; "
            + _need_text(r))


def series_order(metric: str, bucket: str, site: str) -> tuple[int, int, int]:
    """Sort key of a metric × bucket × site series in the power block and sweep.plan's resolution:
    post-activation first (the paper's claims; every other site after it), buckets in
    ``BUCKET_ORDER`` (others last), hard rank before soft rank."""
    return (int(site != SITE_ORDER[0]),
            BUCKET_ORDER.index(bucket) if bucket in BUCKET_ORDER else len(BUCKET_ORDER),
            int(metric != "hard_rank"))


def _headline(table: pd.DataFrame) -> pd.DataFrame:
    """Rows shown first: post-activation (the paper's claims), hard and soft rank, global first."""
    sub = table[table["metric"].isin(["hard_rank", "soft_rank"])]
    keys = [series_order(*k) for k in zip(sub["metric"], sub["bucket"], sub["site"])]
    sub = sub.assign(**{c: [k[i] for k in keys] for i, c in enumerate(("_s", "_b", "_m"))})
    return sub.sort_values(["_s", "_b", "_m", "optimizer_a", "optimizer_b"], kind="stable")


def summary_lines(table: pd.DataFrame) -> list[str]:
    """What the sweep can and cannot show, in two plain sentences."""
    if table is None or table.empty:
        return []
    known = table[np.isfinite(table["mdd"].astype(float))]
    if known.empty:
        return ["cannot show: any difference between optimizers: no pair has an interval (each fit needs >= 3 widths)"]
    res = known[known["resolved"].astype(bool)]
    headline = _headline(res)
    shown = headline if not headline.empty else res
    named = ", ".join(f"{r.optimizer_a} − {r.optimizer_b} {METRIC_SHORT.get(r.metric, r.metric)} ({r.bucket}, {r.site})"
                      for r in shown.head(4).itertuples()) + (" ..." if len(res) > 4 else "")
    m = known["mdd"].astype(float)
    lines = [f"can show: {len(res)} of {len(known)} optimizer differences are resolved (95% interval excludes 0)"
             + f": {named}" if len(res) else
             f"can show: no optimizer difference: none of the {len(known)} intervals excludes 0"]
    lines.append(f"cannot show: differences below its MDD, {m.min():.2f} to {m.max():.2f} (median {m.median():.2f}); "
                 "a true difference that small is missed more than 1 time in 5")
    return lines


def power_block(table: pd.DataFrame, limit: int = _PRINTED) -> str:
    """The block ``sweep.fit`` prints after the β table."""
    if table is None or table.empty:
        return ""
    head = _headline(table)
    lines = ["what this sweep can resolve (Δβ of two fits, two-sided 5% level, 80% power; docs/power.md):"]
    lines += [f"  {verdict(r)}" for _, r in head.head(limit).iterrows()]
    if len(table) > min(limit, len(head)):
        lines.append(f"  ... {len(table) - min(limit, len(head))} more rows in {POWER_FILE} / report.md")
    lines += summary_lines(table)
    return "\n".join(lines)


def report_section(table: pd.DataFrame, md_table) -> list[str]:
    """report.md's section: the plain answer, the statistics in one paragraph, every row."""
    if table is None or table.empty:
        return []
    cols = [c for c in ("optimizer_a", "optimizer_b", "metric", "bucket", "site", "delta", "lower", "upper",
                        "df", "mdd", "seeds", "seeds_needed", "widths_needed", "note") if c in table.columns]
    return ["## What this sweep can resolve", "",
            *[f"- {line}" for line in summary_lines(table)], "",
            "Δβ = β_a − β_b of two independent OLS fits of ln R on ln D; SE(Δβ) = sqrt(SE_a² + SE_b²); "
            "df = min(df_a, df_b) (n_widths − 2 each); interval Δβ ± t(0.975, df)·SE. MDD: the smallest "
            "|Δβ| that a two-sided 5% test detects with 80% power (noncentral t, exact). `seeds_needed` "
            f"(same widths) and `widths_needed` (the width ladder continued, same seeds) would bring the "
            f"MDD down to {table['resolve'].iloc[0]:g}. Statistics and assumptions: docs/power.md.", "",
            *[f"- {verdict(r)}" for _, r in _headline(table).iterrows()], "",
            "<details><summary>Every pair, metric, bucket and site (power.csv)</summary>", "",
            md_table(table[cols]), "", "</details>", ""]
