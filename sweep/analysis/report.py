"""The written analysis: CSV tables, the β table printed by ``specsweep-fit``, report.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from specsweep.sweep.analysis.notes import NOTES_FILE, flags_legend, notes_markdown
from specsweep.sweep.analysis.points import WIDTH_COL
from specsweep.sweep.analysis.power import POWER_FILE, report_section
from specsweep.sweep.analysis.result import FitResult


def _is_empty(column: pd.Series) -> bool:
    return bool(column.isna().all() or column.astype(str).str.strip().isin(["", "nan", "None"]).all())


def csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A table as written to CSV: columns empty in every row dropped (``note`` when every group
    was fitted, ``boot_*`` without seeds, an axis no run set), and ``label`` where it only
    repeats ``optimizer``. A table without rows keeps its header."""
    if frame.empty:
        return frame
    drop = [c for c in frame.columns if _is_empty(frame[c])]
    if {"label", "optimizer"} <= set(frame.columns) and (
            frame["label"].astype(str) == frame["optimizer"].astype(str)).all():
        drop.append("label")
    return frame.drop(columns=drop)


def write_tables(result: FitResult) -> None:
    """The result's tables as CSV files in ``result.out_dir`` (added to ``result.files``); empty
    optional tables are not written; empty or duplicate columns are dropped (``csv_frame``)."""
    out = result.out_dir
    tables = {
        "points.csv": result.points.drop(columns=["label"], errors="ignore"),
        "runs.csv": result.runs,
        "beta_table.csv": result.beta_table,
        "beta_summary.csv": result.summary,
        "beta_steps.csv": result.beta_steps,
        "optimizer_comparison.csv": result.comparisons,
        POWER_FILE: result.power,
        "matched_pairs.csv": result.matched_pairs,
        "matched_loss.csv": result.matched,
        "gain_vs_shift.csv": result.gain_shift,
        COMPARISON_FILE: result.comparison.table if result.comparison is not None else None,
        NOTES_FILE: result.notes if not result.notes.empty else None,
    }
    for name, frame in tables.items():
        if frame is None or (frame.empty and name not in ("points.csv", "beta_table.csv")):
            continue
        csv_frame(frame).to_csv(out / name, index=False)
        result.files.append(out / name)


def _ci_text(beta: float, lo: float, hi: float, signed: bool = False) -> str:
    if not np.isfinite(beta):
        return "—"
    b = f"{beta:+.3f}" if signed else f"{beta:.3f}"
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{b} [{lo:.2f}, {hi:.2f}]"
    return f"{b} [no CI]"


def beta_rows(summary: pd.DataFrame) -> list[list[str]]:
    """Rows (group, bucket, site, n, β_soft, β_hard, Δβ) of the compact β table."""
    rows = []
    for _, r in summary.iterrows():
        get = lambda k: float(r[k]) if k in r and pd.notna(r[k]) else float("nan")  # noqa: E731
        n = r.get("n_widths")
        rows.append([str(r["label"]), str(r["bucket"]), str(r["site"]),
                     "" if pd.isna(n) else str(int(n)),
                     _ci_text(get("beta_soft"), get("soft_lower"), get("soft_upper")),
                     _ci_text(get("beta_hard"), get("hard_lower"), get("hard_upper")),
                     _ci_text(get("beta_delta"), get("delta_lower"), get("delta_upper"), signed=True),
                     str(r["flags"]) if "flags" in r and pd.notna(r["flags"]) else ""])
    return rows


BETA_HEADER = ["group", "bucket", "site", "n", "β_soft [95% CI]", "β_hard [95% CI]", "Δβ [95% CI]", "flags"]


def format_beta_table(result: FitResult) -> str:
    """The compact, aligned β table printed at the end of the CLI."""
    rows = beta_rows(result.summary)
    if not rows:
        return "β table: no group could be fitted (see the messages above)"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(BETA_HEADER)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    title = (f"β table — rank ∝ D^β, OLS of ln R on ln D; CI: {result.ci_method}; "
             f"Δβ = β_soft − β_hard\naggregation: {result.rule}")
    if result.status.get("label"):
        title += f"\nruns: {result.status['label']}"
    legend = flags_legend({c for r in rows for c in r[-1].split()})
    return "\n".join([title, line(BETA_HEADER), line(["-" * w for w in widths]), *map(line, rows),
                      *([legend] if legend else [])])


COMPARISON_FILE = "paper_comparison.csv"
COMPARISON_HEADER = ["group", "bucket", "site", "metric", "widths", "ours [95% CI]", "published [95% CI]",
                     "diff", "overlap", "published in"]


def comparison_rows(table: pd.DataFrame) -> list[list[str]]:
    """Rows of the printed comparison: a group is its optimizer ('dion 1/16') unless two groups
    share one, then its label; widths 'ours/published'; overlap yes/no (* without both intervals)."""
    key = ["optimizer", "bucket", "site", "metric", "published_in"]
    dup = table.duplicated(key, keep=False)
    rows = []
    for (_, r), twin in zip(table.iterrows(), dup):
        n_ours, n_pub = r["n_widths"], r["published_n_widths"]
        widths = "/".join("?" if pd.isna(n) else str(int(n)) for n in (n_ours, n_pub))
        overlap = "—" if pd.isna(r["overlap"]) else ("yes" if r["overlap"] else "no") + (
            "" if r["overlap_basis"] == "intervals" else "*")
        rows.append([str(r["label"]) if twin else str(r["optimizer"]), str(r["bucket"]), str(r["site"]),
                     str(r["metric"]).replace("_rank", ""), widths,
                     _ci_text(r["beta"], r["beta_lower"], r["beta_upper"]),
                     _ci_text(r["published_beta"], r["published_lower"], r["published_upper"]),
                     _diff_text(r["diff"]), overlap, str(r["published_in"])])
    return rows


def _diff_text(diff: float) -> str:
    if pd.isna(diff):
        return "—"
    text = f"{diff:+.3f}"
    return "+0.000" if text == "-0.000" else text  # a difference below display precision has no sign


def comparison_summary(result: FitResult) -> str:
    """One line: rows matched, the largest difference, intervals that overlap (or why no match)."""
    comp = result.comparison
    if comp is None or comp.table.empty:
        return comp.summary if comp is not None else ""
    t = comp.table
    known = t["overlap"].dropna()
    return (f"{comp.summary}; max |diff| = {t['diff'].abs().max():.2g}; intervals overlap in "
            f"{int(known.astype(bool).sum())} of {len(known)}")


def format_comparison(result: FitResult) -> str:
    """The comparison with published β printed after the β table (or why there is none)."""
    comp = result.comparison
    if comp is None:
        return ""
    head = f"compared with published β: {comp.source}\n{comparison_summary(result)}"
    tail = [f"not compared: {line}" for line in comp.not_compared[:5]]
    if len(comp.not_compared) > 5:
        tail.append(f"... {len(comp.not_compared) - 5} more in {COMPARISON_FILE} / report.md")
    if comp.table.empty:  # the summary names the reasons (all of them are in report.md)
        return head
    rows = comparison_rows(comp.table)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(COMPARISON_HEADER)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    notes = ["diff = ours − published; overlap: the two 95% intervals overlap"
             + ("; * one side has no interval: whether the other β lies inside the one there is"
                if any(r[8].endswith("*") for r in rows) else "")]
    return "\n".join([head, line(COMPARISON_HEADER), line(["-" * w for w in widths]), *map(line, rows),
                      *notes, *tail])


def _md_table(frame: pd.DataFrame, digits: int = 3) -> str:
    if frame is None or frame.empty:
        return "_(none)_"

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.{digits}g}" if abs(v) >= 1000 else f"{v:.{digits}f}"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    sep = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def write_report(result: FitResult, provenance: dict[str, Any]) -> Path:
    """report.md: provenance, β tables, comparisons and figure links in one page."""
    out = result.out_dir
    lines = ["# Spectral scaling-law fit", "",
             "Generated by `specsweep-fit`. β is the slope of ln(rank) on ln(D) "
             "(D = FFN hidden width); Δβ = β_soft − β_hard is fitted directly on "
             "ln(R_soft/R_hard).", "", "## Provenance", ""]
    if "sweep_dirs" in provenance:
        lines += [f"- Sweep directories: {', '.join(f'`{d}`' for d in provenance['sweep_dirs'])}"]
    if "points_file" in provenance:
        lines += [f"- Points file: `{provenance['points_file']}` (sha256 {provenance['points_sha256']}…)"]
    n_runs = result.points["run_id"].nunique() if "run_id" in result.points.columns else len(result.runs)
    status = provenance.get("status") or {}
    if status.get("n_total") is not None:
        lines += [f"- **Runs: {status['label']}** (used {n_runs} of {status['n_total']}; "
                  f"{status.get('n_ended', 0)} of {status['n_total']} have ended)"]
        if status.get("live"):
            lines += [f"- Live fit: every run is cut at step {status['as_of_step']}, the latest telemetry "
                      "step that all runs used have reached; running runs without a full aggregation window "
                      "by then are left out (listed below), ended ones enter as the final fit takes them."]
    lines += [f"- Runs used: {n_runs}; excluded: {len(result.excluded)}",
              f"- Aggregation rule: {result.rule}",
              f"- Confidence intervals: {result.ci_method} (OLS, exact Student-t quantile); "
              "2 widths give a slope without an interval, < 2 widths no fit. These are fit "
              "intervals across widths, not seed variance.",
              "- Seeds: ln R averaged over seeds per width before fitting; where several seeds "
              "exist, `boot_lower`/`boot_upper` in beta_table.csv give a percentile bootstrap over "
              "seeds (labelled in `boot_method`).",
              f"- Grouping keys: {', '.join(result.group_cols) or '(none)'}"]
    if "seed" in result.runs.columns:
        seeds = sorted(map(str, result.runs["seed"].dropna().unique()))
        lines.append(f"- Seeds present: {', '.join(seeds)}")
    lines += [f"- `err` (points.csv, error bars of rank_vs_width): {result.err_meaning or 'see the rule'}, "
              "in rank units, computed per run from its per-layer values under the aggregation rule "
              "(0 for a single layer); figures average it over seeds. The fit does not use it: β is "
              "an unweighted OLS of ln R on ln D."]
    if result.excluded:
        lines += ["", "Excluded runs:", ""]
        lines += [f"- `{Path(p).name}`: {reason}" for p, reason in result.excluded]
    runs_cols = [c for c in ("run_id", "label", WIDTH_COL, "seed", "eval_loss", "config_hash")
                 if c in result.runs.columns]
    lines += ["", "<details><summary>Runs and config hashes</summary>", "",
              _md_table(result.runs[runs_cols]), "", "</details>", ""]
    lines += ["## β table", "", "```", format_beta_table(result), "```", ""]
    lines += notes_markdown(result.notes)
    if not result.comparisons.empty:
        cols = [c for c in ("metric", "bucket", "site", "optimizer_ref", "optimizer", "diff",
                            "diff_lower", "diff_upper", "p_value") if c in result.comparisons.columns]
        lines += ["## Optimizer vs reference (pooled ln R ~ ln D × optimizer, t-test on the interaction)",
                  "", _md_table(result.comparisons[cols]), ""]
    lines += report_section(result.power, _md_table)
    if result.matched is not None:
        lines += ["## Matched-loss comparison", "", _md_table(result.matched.drop(columns=["ci_method"], errors="ignore")), ""]
    if result.gain_shift is not None:
        lines += ["## Optimizer gain vs architecture shift (paper rule)", "", _md_table(result.gain_shift), ""]
    if result.comparison is not None:
        lines += _comparison_section(result)
    if result.figures:
        lines += ["## Figures", ""]
        lines += [f"- [{p.stem}]({p.relative_to(out).as_posix()})" for p in result.figures if p.suffix == ".png"]
        lines += [f"\n![{p.stem}]({p.relative_to(out).as_posix()})" for p in result.figures
                  if p.suffix == ".png" and p.stem.startswith(("rank_vs_width_post", "beta_by_bucket_post"))]
        lines.append("")
    if result.messages:
        lines += ["## Messages", ""] + [f"- {m}" for m in result.messages] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _comparison_section(result: FitResult) -> list[str]:
    comp = result.comparison
    lines = ["## Compared with published β", "",
             f"Published values: {comp.source}. \"Table 2\" is the paper's 160M main sweep (β_soft / "
             "β_hard per optimizer, global and HEAD/MID/TAIL, post-activation); the file each value "
             f"comes from is in `{COMPARISON_FILE}` (`published_files`). A β row is compared where its "
             "experiment matches: model size (d_model, n_layer, n_head), architecture, optimizer and "
             "Dion rank fraction, steps, bucket, site and metric (other settings, e.g. learning rate "
             "or data, are not checked). diff = ours − published; overlap: the two 95% intervals "
             "overlap (* where one side has none: whether the other β lies inside it).", "",
             f"**{comparison_summary(result)}**", ""]
    if not comp.table.empty:
        rows = comparison_rows(comp.table)
        frame = pd.DataFrame(rows, columns=COMPARISON_HEADER)
        lines += [_md_table(frame), ""]
    if comp.not_compared:
        lines += ["Not compared:", ""] + [f"- {line}" for line in comp.not_compared] + [""]
    return lines
