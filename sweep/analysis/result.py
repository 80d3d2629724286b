"""FitResult: everything one analysis computed, and the files written from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class FitResult:
    """The tables of one fit (``fitting.fit_points``), plus the figures, report and files that
    ``python -m sweep.fit`` wrote from them."""

    out_dir: Path
    points: pd.DataFrame
    runs: pd.DataFrame
    beta_table: pd.DataFrame
    summary: pd.DataFrame
    group_cols: list[str]
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)
    beta_steps: pd.DataFrame = field(default_factory=pd.DataFrame)
    matched_pairs: pd.DataFrame | None = None
    matched: pd.DataFrame | None = None
    gain_shift: pd.DataFrame | None = None
    figures: list[Path] = field(default_factory=list)
    report: Path | None = None
    files: list[Path] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)
    rule: str = ""
    ci_method: str = ""
