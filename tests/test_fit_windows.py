"""Honest windows (issue 21, items 1-2; issue 20, item 7).

- one definition of the aggregation window (metrics.schedule.AGGREGATION_EVENTS), and
  ``sweep.fit`` and ``--watch`` take the same runs and points;
- a point from a short window, an untrained event, a bucket without enough rows or with no valid
  value at all is never silently used or dropped: notes per run × bucket, flags on the β rows,
  a block on the console and in report.md;
- β over training: trailing windows of up to k events, one point per event from the first.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from specsweep.metrics.aggregation import AggregationRule, sliding_window_records
from specsweep.metrics.schedule import AGGREGATION_EVENTS
from specsweep.sweep import rundir
from specsweep.sweep.analysis.rules import parse_rule
from specsweep.sweep.fit import main, run_fit

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (64, 128, 256)


def _record(step: int, layer: int, bucket: str, width: int, updates: int | None, ok: bool = True) -> dict:
    rec = {"step": step, "layer": layer, "site": "post", "bucket": bucket,
           "status": "ok" if ok else "too_few_rows", "n_rows": 900 if ok else 100}
    if updates is not None:
        rec["updates"] = updates
    scale = {"global": 1.0, "head": 0.5, "tail": 0.3}[bucket] * (1 + 0.1 * layer) * (1 + step / 1e4)
    rec["hard_rank"] = scale * width ** 0.6 if ok else None
    rec["soft_rank"] = scale * 2 * width ** 0.4 if ok else None
    return rec


def _write(sweep: Path, width: int, steps: list[int], *, lag: int = 0, bad: dict | None = None,
           ended: bool = True, updates: bool = True) -> str:
    """One run: events at ``steps`` (``updates`` = step - lag), ``bad``: bucket -> steps at which
    it had too few rows."""
    run_id = f"adamw-{width}"
    spectra = [_record(s, layer, b, width, s - lag if updates else None, ok=s not in (bad or {}).get(b, ()))
               for s in steps for layer in (0, 1) for b in ("global", "head", "tail")]
    axes = {"model": "tiny", "optimizer": "adamw", "ffn_width": width, "d_model": 64, "seed": 0}
    info = {"run_id": run_id, "sweep": sweep.name, "axes": axes, "step": steps[-1],
            "status": rundir.STATUS_DONE if ended else rundir.STATUS_RUNNING}
    done = {"run_id": run_id, "final_step": steps[-1], "final_eval_loss": 3.0, "final_train_loss": 3.1}
    rundir.write_run_files(sweep / run_id, info, [{"step": steps[-1], "eval_loss": 3.0}], spectra,
                           done if ended else None)
    return run_id


@pytest.fixture(autouse=True)
def _quiet(tmp_path, monkeypatch):
    for k, v in {"WANDB_MODE": "offline", "WANDB_DIR": tmp_path / "wandb", "WANDB_SILENT": "true",
                 "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(k, str(v))


def test_one_definition_of_the_window():
    assert AggregationRule().last_k == AGGREGATION_EVENTS == parse_rule("paper").last_k
    assert parse_rule("layer:0").last_k == AGGREGATION_EVENTS
    # no second spelling of the window size in the fit, the analysis or the schedule's users
    literal = re.compile(r"last_k\s*(:\s*int\s*)?=\s*\d")
    for path in [*ROOT.glob("metrics/*.py"), *ROOT.glob("sweep/**/*.py")]:
        assert not literal.search(path.read_text()), path


def test_beta_over_training_takes_partial_trailing_windows():
    steps = [1, 100, 200, 300, 400, 500]
    records = pd.DataFrame([{"step": s, "layer": 0, "site": "post", "bucket": "global", "status": "ok",
                             "hard_rank": float(i + 1), "soft_rank": float(i + 1)} for i, s in enumerate(steps)])
    partial = sliding_window_records(records, 3, ["hard_rank"])
    assert partial["end_step"].tolist() == steps  # one point per event from the first
    assert partial["n_events"].tolist() == [1, 2, 3, 3, 3, 3]
    assert partial["value"].tolist() == [1.0, 1.5, 2.0, 3.0, 4.0, 5.0]  # trailing medians
    full = sliding_window_records(records, 3, ["hard_rank"], partial=False)
    assert full["end_step"].tolist() == steps[2:] and (full["n_events"] == 3).all()


def test_fit_says_what_it_did_with_each_window_and_flags_the_beta_rows(tmp_path, capsys):
    sweep = tmp_path / "sw"
    full = list(range(100, 701, 100))
    clean = _write(sweep, 64, full)
    rows = _write(sweep, 128, full, bad={"head": full, "tail": [600, 700]})
    short = _write(sweep, 256, [1, 100, 200], lag=1)  # the old labels: step 1 = the untrained model
    assert main([str(sweep), "--no-figures", "--n-boot", "10"]) == 0
    out = capsys.readouterr()
    result = run_fit([sweep], tmp_path / "out", figures=False, n_boot=10)
    notes = result.notes
    by = {(r.run_id, r.bucket, r.metric, r.code) for r in notes.itertuples()}
    assert not (notes["run_id"] == clean).any()
    assert {(rows, "head", m, "no_point") for m in ("soft_rank", "hard_rank")} <= by
    tail = notes[(notes["run_id"] == rows) & (notes["bucket"] == "tail")]
    assert set(tail["code"]) == {"invalid_events"} and tail["what"].str.contains("older events").all()
    assert tail["why"].str.contains("too_few_rows at step 600, 700").all()
    assert {(short, "*", "*", "untrained"), (short, "*", "*", "short_window")} <= by
    assert notes.loc[notes["code"] == "short_window", "what"].iloc[0] == f"point from 2 of {AGGREGATION_EVENTS} events"
    # the untrained event is left out: the short run's points rest on steps 100 and 200 only
    pts = result.points[result.points["run_id"] == short]
    assert (pts["window_start"] == 100).all() and (pts["n_steps"] == 2).all()
    # β rows carry the codes of the notes that concern them
    flags = result.summary.set_index("bucket")["flags"]
    assert flags["global"] == "u w" and flags["head"] == "u w x" and flags["tail"] == "r u w"
    assert (result.beta_table["flags"].str.len() > 0).all()
    # said on the console (a block, and the flags column with its legend) and in the report
    assert "points: what the fit did with each run's window" in out.err
    assert "flags: u = an event before the first update" in out.out
    report = result.report.read_text()
    assert "## Points: what the fit did with each run's window" in report and f"| {rows} | post | head |" in report
    assert (result.out_dir / "point_notes.csv").is_file()


def test_fit_and_watch_take_the_same_runs_and_points(tmp_path):
    """Finished runs with fewer events than the window are taken by both (and noted); before,
    --watch refused them ('needs 5') while the final fit took them."""
    sweep = tmp_path / "sw"
    for width in WIDTHS:
        _write(sweep, width, [100, 200, 300, 400])  # 4 events, all after the first update
    running = _write(sweep, 512, [100, 200], ended=False)
    final = run_fit([sweep], tmp_path / "final", figures=False, n_boot=10)
    live = run_fit([sweep], tmp_path / "live", figures=False, n_boot=10, live=True)
    assert running not in set(final.points["run_id"]) and running not in set(live.points["run_id"])
    cols = ["run_id", "metric", "bucket", "site", "value", "window_start", "window_end"]
    key = ["run_id", "metric", "bucket", "site"]
    pd.testing.assert_frame_equal(final.points[cols].sort_values(key).reset_index(drop=True),
                                  live.points[cols].sort_values(key).reset_index(drop=True))
    assert set(final.notes["code"]) == {"short_window"} == set(live.notes["code"])
    assert np.allclose(final.summary["beta_hard"], live.summary["beta_hard"])
    assert not any(math.isnan(b) for b in final.summary["beta_hard"])
