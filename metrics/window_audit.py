"""What went into each run's aggregation window, and what was left out: the fit's per-run notes.

A point (one value per run × site × bucket × metric) must never silently rest on fewer events than
the window (``metrics.schedule.AGGREGATION_EVENTS``), on an event that measured the untrained model,
on events whose bucket had too few rows, or on events without spectra; nor may such a point vanish
without a word. ``audit_window`` returns the records the aggregation may use (events before the
first update removed) and one note per run × site × bucket × metric concerned, with a code
(``NOTE_CODES``) that marks the β rows the note touches (``beta_row_flags``).

Plain pandas; the wording of the console block and the report lives in ``sweep/analysis/``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from specsweep.metrics.aggregation import AggregationRule, window_steps

from specsweep.metrics.fit import DELTA_METRIC, RANK_METRICS

ANY = "*"  # a note about every site, bucket or metric of the run
UNTRAINED, SHORT, INVALID, NO_POINT, NO_SPECTRUM = (
    "untrained", "short_window", "invalid_events", "no_point", "no_spectrum")
# One letter per kind of note, shown in the β table's flags column (legend: NOTE_LEGEND).
NOTE_CODES = {UNTRAINED: "u", SHORT: "w", INVALID: "r", NO_POINT: "x", NO_SPECTRUM: "s"}
NOTE_LEGEND = {
    UNTRAINED: "an event before the first update (the untrained model) left out of the window",
    SHORT: "a point from fewer events than the window (the run logged no more)",
    INVALID: "window events without a valid value (e.g. too_few_rows): point from fewer or older events",
    NO_POINT: "no valid value at any event: the run gives no point",
    NO_SPECTRUM: "window events without spectra: no soft-rank point",
}
NOTE_COLUMNS = ["run_id", "site", "bucket", "metric", "code", "what", "why"]


def untrained_steps(records: pd.DataFrame) -> list[int]:
    """Steps whose events measured the untrained model: ``updates`` == 0. Records written before the
    ``updates`` key existed measured step s on step s's own forward, so their step 1 is untrained."""
    if records.empty or "step" not in records.columns:
        return []
    if "updates" in records.columns:
        updates = pd.to_numeric(records["updates"], errors="coerce")
        return sorted(int(s) for s in pd.unique(records.loc[updates == 0, "step"]))
    return [1] if (records["step"] == 1).any() else []


def trained_records(records: pd.DataFrame) -> pd.DataFrame:
    """The records of events after the first update."""
    return _without_steps(records, untrained_steps(records))


def _without_steps(records: pd.DataFrame, steps: Sequence[int]) -> pd.DataFrame:
    return records[~records["step"].isin(steps)] if steps else records


def _steps_text(steps: Sequence[int]) -> str:
    steps = sorted(int(s) for s in steps)
    return ", ".join(map(str, steps)) if len(steps) <= 4 else f"{steps[0]}…{steps[-1]} ({len(steps)} events)"


def _note(run_id: str, code: str, what: str, why: str, site: str = ANY, bucket: str = ANY,
          metric: str = ANY) -> dict:
    return {"run_id": run_id, "site": site, "bucket": bucket, "metric": metric, "code": code,
            "what": what, "why": why}


def audit_window(run_id: str, records: pd.DataFrame, rule: AggregationRule, points: pd.DataFrame,
                 metrics: Sequence[str] = RANK_METRICS) -> list[dict]:
    """Notes on one run's points (``points``: its ``aggregate_records`` rows, built from
    ``trained_records(records)``), per site × bucket × metric: short window, untrained events left
    out, window events without a valid value (the point then rests on fewer or older events), and
    series with no point at all."""
    notes: list[dict] = []
    bad = untrained_steps(records)
    in_window = set(window_steps(records, rule)) if bad else set()
    untrained = [s for s in bad if s in in_window]
    if untrained:
        notes.append(_note(run_id, UNTRAINED, "left out",
                           f"step {_steps_text(untrained)} measured the untrained model (before the first update)"))
    clean = _without_steps(records, bad)
    window = window_steps(clean, rule)
    if rule.kind != "window" and len(window) < rule.last_k:
        notes.append(_note(run_id, SHORT, f"point from {len(window)} of {rule.last_k} events",
                           f"the run logged {len(window)} event(s) after the first update "
                           f"(steps {_steps_text(window) or 'none'})"))
    sub = clean[clean["step"].isin(window)]
    if sub.empty:
        return notes
    status = sub["status"].fillna("ok").astype(str) if "status" in sub.columns else pd.Series("ok", index=sub.index)
    have = {(r.site, r.bucket, r.metric): r for r in points.itertuples(index=False)} if not points.empty else {}
    for (site, bucket), rows in sub.groupby(["site", "bucket"], sort=True):
        st = status.loc[rows.index]
        bad = rows[st != "ok"]
        reasons = "; ".join(f"{reason} at step {_steps_text(grp['step'].unique())}"
                            for reason, grp in bad.groupby(st[st != "ok"], sort=True))
        for metric in metrics:
            if metric not in clean.columns:
                continue
            point = have.get((site, bucket, metric))
            if point is None:
                why = reasons or "no finite value in the window"
                notes.append(_note(run_id, NO_POINT, "no point", why, site, bucket, metric))
            elif not bad.empty:
                older = np.isfinite(point.window_start) and point.window_start < window[0]
                what = (f"point from older events (steps {int(point.window_start)}–{int(point.window_end)})"
                        if older else f"point from {int(point.n_steps)} of {len(window)} window events")
                notes.append(_note(run_id, INVALID, what, reasons, site, bucket, metric))
    return notes


def notes_frame(notes: Sequence[dict]) -> pd.DataFrame:
    return pd.DataFrame(list(notes), columns=NOTE_COLUMNS)


def _matches(value: object, target: object) -> bool:
    return str(value) == ANY or str(value) == str(target)


def beta_row_flags(rows: pd.DataFrame, notes: pd.DataFrame, run_groups: pd.DataFrame,
                   group_cols: Sequence[str]) -> pd.Series:
    """For each row of a β table (``group_cols`` + site, bucket and, where present, metric), the
    codes of the notes on runs of its group that concern it, e.g. ``"w x"`` ('' when none).
    ``run_groups``: run_id and the group columns of every run (a Δβ row is concerned by notes
    on either rank metric)."""
    if rows.empty or notes.empty:
        return pd.Series([""] * len(rows), index=rows.index, dtype=str)
    keyed = notes.merge(run_groups.drop_duplicates("run_id"), on="run_id", how="inner")
    out = []
    for _, row in rows.iterrows():
        mine = keyed
        for col in group_cols:
            if col in mine.columns:
                mine = mine[mine[col].astype(str) == str(row[col])]
        codes = set()
        for n in mine.itertuples(index=False):
            if not (_matches(n.site, row["site"]) and _matches(n.bucket, row["bucket"])):
                continue
            metric = row.get("metric", ANY)
            if metric in (ANY, DELTA_METRIC) or _matches(n.metric, metric):
                codes.add(NOTE_CODES[n.code])
        out.append(" ".join(sorted(codes)))
    return pd.Series(out, index=rows.index, dtype=str)
