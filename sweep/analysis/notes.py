"""The fit's account of each run's aggregation window, as the console and report.md show it.

The notes themselves (per run × site × bucket × metric: what was done and why) come from
``metrics.window_audit``; this module only words them: a short block for the console (one line per
kind of note and bucket, counting runs), the legend of the β table's ``flags`` column, and the full
table for report.md and ``point_notes.csv``.
"""

from __future__ import annotations

import pandas as pd

from specsweep.metrics.window_audit import NOTE_CODES, NOTE_LEGEND

NOTES_FILE = "point_notes.csv"
_MAX_LINES = 8


def _where(row: pd.Series) -> str:
    parts = [str(row[c]) for c in ("bucket", "site", "metric") if "*" not in str(row[c])]
    return "/".join(parts) or "all points"


def notes_block(notes: pd.DataFrame) -> list[str]:
    """Console lines: per kind of note and bucket/site/metric, how many runs and an example."""
    if notes is None or notes.empty:
        return []
    lines = [f"points: what the fit did with each run's window ({len(notes)} note(s); flags in the β table):"]
    groups = list(notes.groupby(["code", "bucket", "site"], sort=False))
    for (code, *_), sub in groups[:_MAX_LINES]:
        first = sub.iloc[0].copy()
        first["metric"] = "+".join(dict.fromkeys(sub["metric"].astype(str)))
        runs = sub["run_id"].unique()
        who = f"{len(runs)} run(s), e.g. {runs[0]}"
        lines.append(f"  [{NOTE_CODES[code]}] {_where(first)}: {first['what']} ({first['why']}) — {who}")
    if len(groups) > _MAX_LINES:
        lines.append(f"  ... {len(groups) - _MAX_LINES} more in report.md / {NOTES_FILE}")
    return lines


def flags_legend(codes: set[str]) -> str:
    """'flags: w = ..., x = ...' for the codes that appear ('' when none)."""
    used = [(letter, NOTE_LEGEND[code]) for code, letter in NOTE_CODES.items() if letter in codes]
    return "flags: " + "; ".join(f"{letter} = {text}" for letter, text in used) if used else ""


def notes_markdown(notes: pd.DataFrame) -> list[str]:
    """report.md section: every note, one row per run × site × bucket × metric."""
    if notes is None or notes.empty:
        return ["## Points: what the fit did with each run's window", "",
                "Every point rests on a full window of events after the first update, with a valid "
                "value at each.", ""]
    rows = ["| run | site | bucket | metric | flag | what | why |", "|---|---|---|---|---|---|---|"]
    rows += [f"| {r.run_id} | {r.site} | {r.bucket} | {r.metric} | {NOTE_CODES[r.code]} | {r.what} | {r.why} |"
             for r in notes.itertuples(index=False)]
    return ["## Points: what the fit did with each run's window", "",
            flags_legend(set(NOTE_CODES.values())), "", *rows, ""]
