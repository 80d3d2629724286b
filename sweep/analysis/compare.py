"""Our β beside published β: ``specsweep-fit SWEEP_DIR --compare paper`` (or ``FILE.csv``).

- ``load_published``: the β tables released with paper 1 (package data in ``published/``; its
  README names the repository, commit and licence), or a user's table in the same long format;
- ``experiment_of``: which experiment a row is of (model size, architecture, optimizer and Dion
  rank fraction, steps), read from our run axes or from the paper's own column names;
- ``match_published``: the published rows of one β row's experiment, bucket, site and metric,
  or why there are none (a pure function);
- ``compare_published``: every β_soft / β_hard row of a fit beside its published rows.

A published table (``--compare FILE.csv``) has one row per β; the paper's released
``*_beta_table.csv`` files are in this format as they are. Columns:

  optimizer, metric (soft_rank | hard_rank), beta            required
  model_scale (160m | 350m), or d_model and n_layer          the model (required)
  n_head or head_count                                       default: the paper's for model_scale
  bucket (global | head | mid | tail), site                  default global, post
  beta_lower, beta_upper, n_widths, r_squared                optional (no interval: no overlap test)
  rank_fraction or dion_rank_fraction (0.0625 or "1/16")     Dion's rank fraction
  steps                                                      default: the paper's for model_scale
                                                             (160m 6000, 350m 8000), else any
  activation, pos_encoding, norm_placement, postln_frac      default: the paper's architecture
  citation, paper_experiment                                 shown with the values (default: file name)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from specsweep.metrics.fit import RANK_METRICS
from specsweep.sweep.analysis.defaults import PAPER
from specsweep.sweep.analysis.points import read_table
from specsweep.sweep.analysis.result import Comparison
from specsweep.sweep.errors import SweepError

PAPER_SOURCE = ("paper 1 (Jha & Reagen, \"Same Architecture, Different Capacity\"): the β tables released "
                "in github.com/optimizer-scaling-laws/spectral-scaling-laws results/processed/ "
                "(commit 6803c68, MIT licence)")
# The paper's models (paper-notes §4): name -> (d_model, n_layer, n_head), and its step counts.
PAPER_MODELS = {"160m": (768, 12, 12), "350m": (1024, 24, 32)}
PAPER_STEPS = {"160m": 6000, "350m": 8000}
PAPER_ARCH = (("activation", "relu2"), ("pos_encoding", "rope"), ("norm_placement", "pre"),
              ("postln_frac", 0.0))
# The released tables, in citation order (a β found in several files cites them in this order).
PAPER_TABLES = (
    ("main_beta_table.csv", "Table 2"),
    ("frequency_bucket_beta_table.csv", "Table 2"),
    ("dion_tail_rank_sweep_beta_table.csv", "Dion rank sweep (TAIL)"),
    ("tail_350m_beta_table.csv", "350M TAIL"),
    ("matched_loss_terminal_beta_table.csv", "matched-loss comparison"),
    ("architecture_vs_optimizer_beta_values.csv", "attention-rank intervention (6 heads; read off a figure, no CI)"),
)
# Its 12-head rows are Table 2 rounded to 3 decimals: only the 6-head intervention is new.
_ROW_FILTER: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "architecture_vs_optimizer_beta_values.csv": lambda f: f["head_count"] == 6}
_SAME_BETA = 1e-9  # rows of two files with β this close are one published value


@dataclass(frozen=True)
class Experiment:
    """What a β row is of, beyond bucket, site and metric. None: not recorded (matches any)."""

    d_model: int | None = None
    n_layer: int | None = None
    n_head: int | None = None
    optimizer: str | None = None
    rank_fraction: float | None = None
    steps: int | None = None
    arch: tuple[tuple[str, Any], ...] = PAPER_ARCH

    def model_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in (("d_model", self.d_model), ("n_layer", self.n_layer),
                                                  ("n_head", self.n_head)) if v is not None) or "unknown"

    def optimizer_text(self) -> str:
        """'adamw', 'dion 1/16'."""
        if self.rank_fraction is None:
            return str(self.optimizer)
        frac = Fraction(self.rank_fraction).limit_denominator(1024)
        text = f"{frac.numerator}/{frac.denominator}" if math.isclose(float(frac), self.rank_fraction) \
            else f"{self.rank_fraction:g}"
        return f"{self.optimizer} {text}"


@dataclass
class Published:
    """Published β rows (dicts: exp, bucket, site, metric, beta, beta_lower, beta_upper, n_widths,
    r_squared, published_in, files, experiment) and what they are (for the report)."""

    rows: list[dict[str, Any]]
    source: str


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        str(value).strip().lower() in ("", "nan", "none")


def _int(value: Any) -> int | None:
    return None if _blank(value) else int(float(value))


def _fraction(value: Any) -> float | None:
    """0.0625, "0.0625" or "1/16" -> 0.0625."""
    if _blank(value):
        return None
    text = str(value).strip()
    return float(Fraction(text)) if "/" in text else float(text)


def _last_step(value: Any) -> int | None:
    """The paper's ``final_steps`` ("5200;5400;...;6000") -> 6000."""
    if _blank(value):
        return None
    return max(int(float(s)) for s in str(value).split(";") if s.strip())


def _scale(*names: Any) -> str | None:
    """'160m' from model_scale '160m', model_name 'GPT2-160M' or our model name 'gpt2-160m'."""
    for name in names:
        found = re.search(r"(\d+)\s*m\b", str(name).lower()) if not _blank(name) else None
        if found and f"{found.group(1)}m" in PAPER_MODELS:
            return f"{found.group(1)}m"
    return None


def experiment_of(row: Mapping[str, Any], *, published: bool = False) -> Experiment:
    """The experiment of a row: our run axes (d_model, n_layer, n_head, optimizer, rank_fraction,
    steps, activation, pos_encoding, norm_placement, postln_frac) or the paper's columns
    (model_scale "160m", optimizer "AdamW", dion_rank_fraction "1/2", head_count, final_steps
    "5200;...;6000", optimizer_variant "adamw_12k" = 12000 steps). Explicit sizes win over a
    model name. ``published``: without a step count, a paper model's rows get the paper's."""
    def get(*keys: str) -> Any:
        return next((row[k] for k in keys if k in row and not _blank(row[k])), None)

    scale = _scale(get("model_scale"), get("model_name"), get("model"))
    d_model, n_layer, n_head = PAPER_MODELS.get(scale, (None, None, None)) if scale else (None, None, None)
    d_model = _int(get("d_model")) or d_model
    n_layer = _int(get("n_layer")) or n_layer
    n_head = _int(get("n_head", "head_count")) or n_head
    optimizer = None if get("optimizer") is None else str(get("optimizer")).strip().lower()
    variant = str(get("optimizer_variant") or "").lower()
    rank = None
    if optimizer == "dion":
        rank = _fraction(get("rank_fraction", "dion_rank_fraction", "rank_fraction_float"))
        found = re.search(r"_r(\d+)_(\d+)", variant)
        if rank is None and found:
            rank = int(found.group(1)) / int(found.group(2))
    steps = _int(get("steps")) or _last_step(get("final_steps"))
    found = re.search(r"_(\d+)k$", variant)
    if steps is None and found:
        steps = int(found.group(1)) * 1000
    if steps is None and published and scale:
        steps = PAPER_STEPS[scale]
    arch = []
    for key, default in PAPER_ARCH:
        value = get(key)
        arch.append((key, default if value is None else float(value) if isinstance(default, float)
                     else str(value).strip().lower()))
    return Experiment(d_model, n_layer, n_head, optimizer, rank, steps, tuple(arch))


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return True
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _listing(values: Sequence[Any]) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values))


def _by_optimizer(exps: Any) -> list[str]:
    """'adamw', 'dion 1/2', 'dion 1/4', ... 'muon': by name, then larger Dion rank first."""
    return [e.optimizer_text() for e in sorted(set(exps), key=lambda e: (str(e.optimizer), -(e.rank_fraction or 0)))]


def _models_text(cands: Sequence[Mapping]) -> str:
    sizes: dict[tuple, list[int]] = {}
    for p in cands:
        e = p["exp"]
        sizes.setdefault((e.d_model, e.n_layer), []).append(e.n_head)
    return "; ".join(f"d_model={d}, n_layer={n}, n_head={' or '.join(map(str, dict.fromkeys(h)))}"
                     for (d, n), h in sizes.items())


def _same_model(ours: Experiment, pub: Experiment) -> bool:
    return ours.d_model is not None and ours.n_layer is not None and all(
        _same(getattr(ours, k), getattr(pub, k)) for k in ("d_model", "n_layer", "n_head"))


def _same_optimizer(ours: Experiment, pub: Experiment) -> bool:
    if ours.optimizer != pub.optimizer or (ours.rank_fraction is None) != (pub.rank_fraction is None):
        return False
    return _same(ours.rank_fraction, pub.rank_fraction)


def _arch_reason(ours: Experiment, pub: Experiment) -> str:
    differ = [f"{k}={x}" for (k, x), (_, y) in zip(ours.arch, pub.arch) if not _same(x, y)]
    return f"{', '.join(differ)} (published: {', '.join(f'{k}={y}' for k, y in pub.arch)})"


def match_published(ours: Experiment, bucket: str, site: str, metric: str,
                    published: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], str]:
    """The published rows with the experiment, bucket, site and metric of one of our β rows,
    or ([], why none): model size first, then architecture, optimizer (and Dion rank fraction),
    steps, site, bucket, metric. A field that either side did not record matches any value."""
    opt = ours.optimizer_text()
    stages: tuple[tuple[Callable[[Mapping], bool], Callable[[list], str]], ...] = (
        # (test of a published row, the reason when no row passes it, from the rows before it)
        (lambda p: _same_model(ours, p["exp"]), lambda c: f"model {ours.model_text()} (published: {_models_text(c)})"),
        (lambda p: all(_same(x, y) for (_, x), (_, y) in zip(ours.arch, p["exp"].arch)),
         lambda c: _arch_reason(ours, c[0]["exp"])),
        (lambda p: _same_optimizer(ours, p["exp"]),
         lambda c: f"optimizer {opt} (published for this model: {_listing(_by_optimizer(p['exp'] for p in c))})"),
        (lambda p: _same(ours.steps, p["exp"].steps),
         lambda c: f"steps={ours.steps} (published: {_listing([p['exp'].steps for p in c])})"),
        (lambda p: p["site"] == site, lambda c: f"site={site} (published: {_listing([p['site'] for p in c])} only)"),
        (lambda p: p["bucket"] == bucket,
         lambda c: f"bucket={bucket} (published for {opt}: {_listing([p['bucket'] for p in c])})"),
        (lambda p: p["metric"] == metric,
         lambda c: f"metric={metric} (published: {_listing([p['metric'] for p in c])})"),
    )
    cands = list(published)
    for test, why in stages:
        kept = [p for p in cands if test(p)]
        if not kept:
            return [], why(cands) if cands else "no published rows"
        cands = kept
    return cands, ""


# --------------------------------------------------------------------------------------------
# Published tables
# --------------------------------------------------------------------------------------------

def _rows_of(frame: pd.DataFrame, name: str, citation: str) -> list[dict[str, Any]]:
    missing = [c for c in ("optimizer", "metric", "beta") if c not in frame.columns]
    if missing:
        raise SweepError(f"published table {name} lacks column(s) {missing} (see `specsweep-fit "
                         "--help`, --compare)")
    rows = []
    for i, row in enumerate(frame.to_dict("records"), start=2):  # line 1 is the header
        where = f"published table {name} line {i}"
        try:
            exp = experiment_of(row, published=True)
        except (ValueError, ZeroDivisionError) as err:
            raise SweepError(f"{where}: {err}") from None
        if exp.d_model is None or exp.n_layer is None:
            raise SweepError(f"{where}: no model size (give model_scale 160m|350m, or d_model and n_layer)")
        metric = str(row["metric"]).strip().lower()
        if metric not in RANK_METRICS:
            raise SweepError(f"{where}: metric {row['metric']!r} is not one of {list(RANK_METRICS)}")
        num = pd.to_numeric(pd.Series([row.get(k) for k in ("beta", "beta_lower", "beta_upper",
                                                            "n_widths", "r_squared")]), errors="coerce")
        if not math.isfinite(num[0]):
            raise SweepError(f"{where}: beta {row['beta']!r} is not a number")
        rows.append({"exp": exp, "metric": metric,
                     "bucket": "global" if _blank(row.get("bucket")) else str(row["bucket"]).strip().lower(),
                     "site": "post" if _blank(row.get("site")) else str(row["site"]).strip().lower(),
                     "beta": float(num[0]), "beta_lower": float(num[1]), "beta_upper": float(num[2]),
                     "n_widths": num[3], "r_squared": float(num[4]),
                     "published_in": citation if _blank(row.get("citation")) else str(row["citation"]),
                     "files": name, "experiment": "" if _blank(row.get("paper_experiment"))
                     else str(row["paper_experiment"])})
    return rows


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= _SAME_BETA


def _merge_duplicates(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per published value: rows of several files with the same experiment, bucket,
    site, metric and β (and interval) become one that cites every file."""
    kept: list[dict[str, Any]] = []
    for row in rows:
        twin = next((k for k in kept if all(k[f] == row[f] for f in ("exp", "bucket", "site", "metric"))
                     and all(_close(k[f], row[f]) for f in ("beta", "beta_lower", "beta_upper"))), None)
        if twin is None:
            kept.append(dict(row))
            continue
        for field in ("published_in", "files", "experiment"):
            parts = [p for p in (twin[field], row[field]) if p]
            twin[field] = "; ".join(dict.fromkeys("; ".join(parts).split("; ")))
    return kept


def load_published(source: str | Path) -> Published:
    """``"paper"``: paper 1's released β tables (``published/``); else a CSV file in the same
    long format (module docstring). Raises SweepError on a table that cannot be used."""
    rows: list[dict[str, Any]] = []
    if str(source) == PAPER:
        folder = resources.files("specsweep.sweep.analysis") / "published"
        for name, citation in PAPER_TABLES:
            with resources.as_file(folder / name) as path:
                frame = pd.read_csv(path)
            if name in _ROW_FILTER:
                frame = frame[_ROW_FILTER[name](frame)]
            rows += _rows_of(frame, name, citation)
        return Published(_merge_duplicates(rows), PAPER_SOURCE)
    path = Path(source)
    if not path.is_file():
        raise SweepError(f"--compare: {path} is neither 'paper' nor a CSV file")
    frame = read_table(path, "--compare table")
    return Published(_merge_duplicates(_rows_of(frame, path.name, path.name)), f"the table {path}")


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------

COLUMNS = ["label", "optimizer", "d_model", "n_layer", "n_head", "steps", "bucket", "site", "metric",
           "n_widths", "beta", "beta_lower", "beta_upper", "published_beta", "published_lower",
           "published_upper", "published_n_widths", "published_r_squared", "diff", "overlap",
           "overlap_basis", "published_in", "published_files", "published_experiment"]


def _overlap(ours: Mapping[str, float], pub: Mapping[str, float]) -> tuple[bool | None, str]:
    """Whether the two intervals overlap; with one interval missing, whether the other β lies
    inside the one there is; (None, "") without either."""
    o_ok = math.isfinite(ours["beta_lower"]) and math.isfinite(ours["beta_upper"])
    p_ok = math.isfinite(pub["beta_lower"]) and math.isfinite(pub["beta_upper"])
    if o_ok and p_ok:
        return max(ours["beta_lower"], pub["beta_lower"]) <= min(ours["beta_upper"], pub["beta_upper"]), "intervals"
    if o_ok:
        return ours["beta_lower"] <= pub["beta"] <= ours["beta_upper"], "published β in our interval"
    if p_ok and math.isfinite(ours["beta"]):
        return pub["beta_lower"] <= ours["beta"] <= pub["beta_upper"], "our β in the published interval"
    return None, ""


def _with_steps(rows: pd.DataFrame, points: pd.DataFrame, group_cols: Sequence[str]) -> pd.DataFrame:
    """A points file's ``final_steps`` (the paper's column) as the steps of each fitted group."""
    if "steps" in rows.columns or "final_steps" not in points.columns:
        return rows
    steps = points.assign(steps=points["final_steps"].map(_last_step))
    if not group_cols:
        return rows.assign(steps=steps["steps"].max())
    per_group = steps.groupby(list(group_cols), dropna=False)["steps"].max().reset_index()
    return rows.merge(per_group, on=list(group_cols), how="left")


def compare_published(beta_table: pd.DataFrame, points: pd.DataFrame, group_cols: Sequence[str],
                      published: Published) -> Comparison:
    """Every β_soft / β_hard row of a fit beside the published rows of its experiment, bucket,
    site and metric (diff = ours − published, overlap of the intervals); the rows without one
    are listed with the reason."""
    rows = beta_table[beta_table["metric"].isin(RANK_METRICS)] if not beta_table.empty else beta_table
    out, skipped = [], {}
    for r in _with_steps(rows, points, group_cols).to_dict("records"):
        try:
            exp = experiment_of(r)
        except (ValueError, ZeroDivisionError) as err:  # e.g. a points file's d_model "abc"
            skipped.setdefault(f"its experiment cannot be read ({err})", []).append(str(r.get("label")))
            continue
        matches, why = match_published(exp, r["bucket"], r["site"], r["metric"], published.rows)
        if not matches:
            skipped.setdefault(why, []).append(str(r.get("label", exp.optimizer_text())))
        for p in matches:
            overlap, basis = _overlap(r, p)
            out.append({"label": r.get("label"), "optimizer": exp.optimizer_text(), "d_model": exp.d_model,
                        "n_layer": exp.n_layer, "n_head": exp.n_head, "steps": exp.steps,
                        "bucket": r["bucket"], "site": r["site"], "metric": r["metric"],
                        "n_widths": r.get("n_widths"), "beta": r["beta"], "beta_lower": r["beta_lower"],
                        "beta_upper": r["beta_upper"], "published_beta": p["beta"],
                        "published_lower": p["beta_lower"], "published_upper": p["beta_upper"],
                        "published_n_widths": p["n_widths"], "published_r_squared": p["r_squared"],
                        "diff": r["beta"] - p["beta"], "overlap": overlap, "overlap_basis": basis,
                        "published_in": p["published_in"], "published_files": p["files"],
                        "published_experiment": p["experiment"]})
    table = pd.DataFrame(out, columns=COLUMNS)
    for col in ("d_model", "n_layer", "n_head", "steps", "n_widths", "published_n_widths"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype("Int64")  # counts, not 8.0
    not_compared = [f"{', '.join(dict.fromkeys(labels))}: {why}" for why, labels in skipped.items()]
    n_rows, n_matched = len(rows), len(rows) - sum(map(len, skipped.values()))
    if table.empty:
        summary = (("no published experiment matches this sweep: " + "; ".join(list(skipped)[:3]))
                   if skipped else "this fit has no β_soft/β_hard rows to compare")
    else:
        summary = (f"{n_matched} of {n_rows} β_soft/β_hard rows of this fit match a published experiment "
                   f"({len(table)} comparisons)")
    return Comparison(table, published.source, summary, not_compared)
