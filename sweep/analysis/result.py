"""FitResult: everything one analysis computed, and the files written from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Comparison:
    """Our β beside published β (``sweep.fit --compare``; built by ``analysis.compare``)."""

    table: pd.DataFrame          # paper_comparison.csv: one row per (our β row, published row)
    source: str                  # what the values were compared with
    summary: str                 # one line: how many rows matched, or why none did
    not_compared: list[str] = field(default_factory=list)  # "labels: reason" of rows without a match


@dataclass
class FitResult:
    """The tables of one fit (``fitting.fit_points``), plus the figures, report and files that
    ``specsweep-fit`` wrote from them."""

    out_dir: Path
    points: pd.DataFrame
    runs: pd.DataFrame
    beta_table: pd.DataFrame
    summary: pd.DataFrame
    group_cols: list[str]
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)
    power: pd.DataFrame = field(default_factory=pd.DataFrame)  # power.csv (sweep/analysis/power.py)
    beta_steps: pd.DataFrame = field(default_factory=pd.DataFrame)
    matched_pairs: pd.DataFrame | None = None
    matched: pd.DataFrame | None = None
    gain_shift: pd.DataFrame | None = None
    comparison: Comparison | None = None  # --compare: our β beside the published β
    figures: list[Path] = field(default_factory=list)
    report: Path | None = None
    files: list[Path] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    # what the fit did with each run's window, per run × site × bucket × metric (metrics.window_audit)
    notes: pd.DataFrame = field(default_factory=pd.DataFrame)
    excluded: list[tuple[str, str]] = field(default_factory=list)
    rule: str = ""
    ci_method: str = ""
    rule_short: str = ""       # the rule in a few words, for figure titles
    err_meaning: str = ""      # what a point's ``err`` is under the rule (error bars, report)
    sweep_name: str = ""       # the sweep(s) analysed, for titles
    as_of: str = ""            # live fits: "as of step S, N of M runs"; empty for a final fit
    status: dict = field(default_factory=dict)  # status.json: label, step, runs used of all, left out
