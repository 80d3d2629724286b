"""Live β while a sweep runs (issue 16, item 10): ``sweep.fit --watch`` on a sweep whose runs
progress and finish between refits, driven deterministically: the test itself writes each run's
telemetry (through the sweep.rundir API) up to a chosen step between two ``--watch --once``
refits, so nothing depends on how fast the machine is.

Planted truth as in tests/test_fit.py: rank = A·D^β(step), β ramping up to its planted value by
step 500, so a fit at step S recovers β(S).
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

try:
    from test_fit import LAYER_FACTOR, PREFACTOR, beta_at_step, planted_beta
except ImportError:  # tests/ imported as a package
    from tests.test_fit import LAYER_FACTOR, PREFACTOR, beta_at_step, planted_beta

from specsweep.metrics.fit import RANK_METRICS
from specsweep.sweep import rundir
from specsweep.sweep.rundir import sweepdir
from specsweep.sweep.analysis import outdir
from specsweep.metrics.aggregation import AggregationRule
from specsweep.sweep.analysis.live import NothingToFit, at_common_step
from specsweep.sweep.analysis.read import FinishedRun
from specsweep.sweep.analysis.style import caption
from specsweep.sweep.analysis.watch import watch
from specsweep.sweep.fit import main, run_fit

D_MODEL = 64
EVERY = 50        # telemetry cadence
FINAL = 1000      # steps of every run
GRID = [(opt, mult) for opt in ("adamw", "muon") for mult in (1, 2, 4)]
NOT_STARTED = ("muon", 8)  # in the sweep record, never started


def _run_id(opt: str, mult: int) -> str:
    return f"{opt}-w{mult}"


def write_progress(sweep: Path, opt: str, mult: int, upto: int, status: str | None = None) -> Path:
    """The run directory of (opt, mult) as it is after step ``upto`` (DONE at FINAL)."""
    run_id, width = _run_id(opt, mult), mult * D_MODEL
    rng = np.random.default_rng(zlib.crc32(run_id.encode()))
    steps = list(range(EVERY, upto + 1, EVERY))
    spectra = []
    for step in steps:
        for layer, lf in enumerate(LAYER_FACTOR):
            for bucket in ("global", "tail"):
                rec = {"step": step, "layer": layer, "site": "post", "bucket": bucket, "status": "ok"}
                for metric in RANK_METRICS:
                    beta = beta_at_step(planted_beta(opt, metric, bucket), step)
                    rec[metric] = PREFACTOR[opt][metric] * lf * width ** beta * math.exp(rng.normal(0, 0.02))
                spectra.append(rec)
    loss = 3.0 + (width / D_MODEL) ** -0.3
    metrics = [{"step": s, "train_loss": loss + 1000 / s} for s in steps]
    metrics += [{"step": s, "eval_loss": loss + 500 / s} for s in steps[1::2]]
    done = upto >= FINAL and status is None
    axes = {"model": "tiny", "optimizer": opt, "ffn_width": width, "ffn_mult": mult, "d_model": D_MODEL,
            "seed": 0, "steps": FINAL}
    info = {"run_id": run_id, "sweep": sweep.name, "axes": axes, "step": upto, "error": None,
            "status": status or (rundir.STATUS_DONE if done else rundir.STATUS_RUNNING)}
    summary = {"run_id": run_id, "final_step": FINAL, "final_eval_loss": loss + 0.5,
               "final_train_loss": loss + 1.0} if done else None
    return rundir.write_run_files(sweep / run_id, info, metrics, spectra, summary)


def record_grid(sweep: Path) -> None:
    """The sweep record of a launch of GRID + NOT_STARTED (what the sweeper writes)."""
    points = [*GRID, NOT_STARTED]
    sweepdir.record_launch(sweep, [(_run_id(o, m), [f"optim={o}", f"model.ffn_mult={m}"]) for o, m in points],
                           ["optim=adamw,muon"], [])


@pytest.fixture
def sweep(tmp_path, monkeypatch) -> Path:
    for k, v in {"WANDB_MODE": "offline", "WANDB_DIR": tmp_path / "wandb", "WANDB_SILENT": "true",
                 "WANDB_DATA_DIR": tmp_path / "wandb-data", "WANDB_CACHE_DIR": tmp_path / "wandb-cache",
                 "WANDB_CONFIG_DIR": tmp_path / "wandb-config", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(k, str(v))
    root = tmp_path / "live"
    root.mkdir()
    record_grid(root)
    return root


def _state_1(sweep: Path) -> None:
    """adamw at step 600, muon w1 at 400, muon w2 at 200 (4 telemetry steps: too short for the
    paper rule's 5), muon w4 at 800, muon w8 not started."""
    for mult in (1, 2, 4):
        write_progress(sweep, "adamw", mult, 600)
    write_progress(sweep, "muon", 1, 400)
    write_progress(sweep, "muon", 2, 200)
    write_progress(sweep, "muon", 4, 800)


def _status(out: Path) -> dict:
    return json.loads((out / outdir.STATUS_FILE).read_text())


def _beta(out: Path, opt: str, metric: str = "soft_rank", bucket: str = "global") -> float:
    t = pd.read_csv(out / "beta_table.csv")
    return float(t[(t.optimizer == opt) & (t.metric == metric) & (t.bucket == bucket)]["beta"].iloc[0])


def _siblings(out: Path) -> list[str]:
    """Everything beside the analysis folder that is not a run directory (staging leftovers)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith("."+out.name))


def test_watch_once_refits_at_the_latest_common_step_as_runs_finish(sweep, capsys):
    out = sweep / "analysis"
    _state_1(sweep)
    assert main([str(sweep), "--watch", "--once", "--no-figures", "--n-boot", "50"]) == 0
    printed = capsys.readouterr()
    label = "as of step 400, 5 of 7 runs"
    status = _status(out)
    assert status["label"] == label and status["as_of_step"] == 400
    assert (status["n_runs"], status["n_total"], status["final"], status["live"]) == (5, 7, False, True)
    reasons = {r["run"]: r["reason"] for r in status["left_out"]}
    assert reasons == {"muon-w2": "too short: 4 telemetry step(s) so far, the rule needs 5",
                       "muon-w8": "not started (in the sweep record, no run directory yet)"}
    assert f"runs: {label}" in printed.out and label in printed.err  # table title and refit header
    assert label in (out / "report.md").read_text()
    points = pd.read_csv(out / "points.csv")
    assert set(points["window_end"]) == {400} and points["run_id"].nunique() == 5
    # The paper rule at S = 400 takes the checkpoints 200-400 (median: step 300), so β is the
    # planted ramp's value at step 300 (0.8 of the final one).
    planted = planted_beta("adamw", "soft_rank", "global")
    assert _beta(out, "adamw") == pytest.approx(beta_at_step(planted, 300), abs=0.03)
    assert abs(_beta(out, "adamw") - planted) > 0.1
    assert _siblings(out) == []

    # Between refits: muon w1 and w2 go on, muon w4 finishes, adamw goes to 700.
    for mult in (1, 2, 4):
        write_progress(sweep, "adamw", mult, 700)
    write_progress(sweep, "muon", 1, 900)
    write_progress(sweep, "muon", 2, 800)
    write_progress(sweep, "muon", 4, FINAL)
    assert main([str(sweep), "--watch", "--once", "--no-figures", "--n-boot", "50"]) == 0
    status = _status(out)
    assert status["label"] == "as of step 700, 6 of 7 runs" and status["n_ended"] == 1
    assert set(pd.read_csv(out / "points.csv")["window_end"]) == {700}
    assert _beta(out, "muon") == pytest.approx(planted_beta("muon", "soft_rank", "global"), abs=0.03)

    # Everything ends (the last grid point diverges right away): the refit is the final, ordinary
    # fit, and --watch (without --once) stops by itself after it.
    for opt, mult in GRID:
        write_progress(sweep, opt, mult, FINAL)
    write_progress(sweep, *NOT_STARTED, 200, status=rundir.STATUS_DIVERGED)
    capsys.readouterr()
    assert main([str(sweep), "--watch", "--every", "3600", "--no-figures", "--n-boot", "50"]) == 0
    status = _status(out)
    assert status["final"] and not status["live"] and status["label"] == "finished runs only, 6 of 7 runs"
    assert "this analysis is final; stopping" in capsys.readouterr().err
    assert set(pd.read_csv(out / "points.csv")["window_end"]) == {FINAL}


def test_fit_without_watch_fits_finished_runs_and_says_what_it_left_out(sweep, capsys):
    _state_1(sweep)
    write_progress(sweep, "muon", 4, FINAL)
    write_progress(sweep, "adamw", 4, FINAL)
    write_progress(sweep, "adamw", 1, 300, status=rundir.STATUS_DIVERGED)
    assert main([str(sweep), "--no-figures", "--n-boot", "50"]) == 0
    err = capsys.readouterr().err
    assert ("note: used 2 of 7 runs; left out 5: 1 diverged, 3 unfinished, 1 not started "
            "(only finished runs are fitted; --watch fits running runs)") in err
    status = _status(sweep / "analysis")
    assert status["label"] == "finished runs only, 2 of 7 runs" and status["as_of_step"] is None


def test_watch_waits_while_nothing_can_be_fitted_and_stops_on_ctrl_c(sweep, capsys):
    calls = []
    planned = {str(sweep): sorted(sweepdir.read_grid(sweep)["runs"])}

    def refit():
        calls.append(1)
        return run_fit([sweep], live=True, planned=planned, figures=False)

    def interrupt(seconds):
        raise KeyboardInterrupt

    assert not any(sweep.glob("*-w*"))  # no run has started: nothing to fit, keep waiting
    with pytest.raises(NothingToFit, match="none of the 7 runs of the sweep record has started"):
        refit()
    write_progress(sweep, "adamw", 1, 200)  # started, but no full window yet
    assert watch(refit, every=60, show=lambda r: None, sleep=interrupt) == 0
    assert len(calls) == 2 and "nothing to fit yet: no run has a full aggregation window yet" in capsys.readouterr().err
    assert not (sweep / "analysis").exists()


def test_the_analysis_folder_is_replaced_whole(sweep, monkeypatch):
    out = sweep / "analysis"
    _state_1(sweep)
    planned = {str(sweep): sorted(sweepdir.read_grid(sweep)["runs"])}
    run_fit([sweep], live=True, figures=False, n_boot=50, planned=planned)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / outdir.WANDB_DIR).mkdir()
    (out / outdir.WANDB_DIR / "offline-run-x").write_text("kept")  # W&B files are carried over

    # A refit that dies half-way (after its tables, before its report) leaves the old analysis.
    write_progress(sweep, "muon", 1, 900)
    from specsweep.sweep.analysis import pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(pipeline, "write_report", broken)
    with pytest.raises(RuntimeError):
        run_fit([sweep], live=True, figures=False, n_boot=50, planned=planned)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == {**before, Path("wandb/offline-run-x"): b"kept"} and _siblings(out) == []
    monkeypatch.undo()

    # The swap: right before it, the published folder is still the old, complete analysis and
    # the staging folder the new, complete one; after it, the new one, and nothing else beside.
    seen = {}
    real_publish = outdir.publish

    def checked_publish(staging, target):
        seen["old"] = _status(target)["label"]
        seen["new"] = _status(staging)["label"]
        seen["staged"] = sorted(p.name for p in staging.iterdir())
        real_publish(staging, target)

    monkeypatch.setattr(outdir, "publish", checked_publish)
    result = run_fit([sweep], live=True, figures=False, n_boot=50, planned=planned)
    assert seen["old"] == "as of step 400, 5 of 7 runs" and seen["new"] == "as of step 600, 5 of 7 runs"
    assert {"report.md", "status.json", "points.csv", "beta_table.csv"} <= set(seen["staged"])
    assert _status(out)["label"] == seen["new"] and (out / "wandb" / "offline-run-x").read_text() == "kept"
    assert all(p.is_relative_to(out) and p.exists() for p in result.files) and _siblings(out) == []
    assert caption(result).endswith(" · as of step 600, 5 of 7 runs")  # every figure's title


def test_refuses_to_replace_a_folder_that_is_not_an_analysis(sweep, tmp_path, capsys):
    _state_1(sweep)
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("mine")
    assert main([str(sweep), "--out", str(mine), "--watch", "--once", "--no-figures"]) == 2
    assert "not an analysis folder" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["todo.txt"]


@pytest.mark.slow
def test_watch_pushes_every_refit_into_one_offline_wandb_run(sweep):
    from specsweep.sweep.analysis import wandb_io
    from specsweep.sweep.wandb_keys import stable_wandb_id

    out = sweep / "analysis"
    _state_1(sweep)
    assert main([str(sweep), "--watch", "--once", "--no-figures", "--n-boot", "50", "--wandb", "offline"]) == 0
    for mult in (1, 2, 4):
        write_progress(sweep, "adamw", mult, 700)
    write_progress(sweep, "muon", 1, 900)
    write_progress(sweep, "muon", 2, 800)
    assert main([str(sweep), "--watch", "--once", "--no-figures", "--n-boot", "50", "--wandb", "offline"]) == 0
    folders = sorted((out / "wandb").glob("offline-run-*"))
    assert len(folders) == 2  # one per refit, carried over across the folder swaps
    parsed = [wandb_io.read_offline_run(f) for f in folders]
    wid = stable_wandb_id("live", wandb_io.LIVE_ANALYSIS)
    assert [p["run"]["run_id"] for p in parsed] == [wid, wid]
    assert all(p["run"]["job_type"] == "analysis" and p["run"]["run_group"] == "live" for p in parsed)
    rows = [h for p in parsed for h in p["history"] if "live/step" in h]
    assert [(h["live/step"], h["live/n_runs"], h["live/n_total"]) for h in rows] == [(400, 5, 7), (700, 6, 7)]
    assert rows[1]["beta/adamw/post/global/soft"] == pytest.approx(_beta(out, "adamw"), rel=1e-9)
    assert rows[0]["beta/adamw/post/global/soft"] < rows[1]["beta/adamw/post/global/soft"]  # β(t) emerging


def test_publish_falls_back_to_two_renames_without_an_atomic_exchange(tmp_path, monkeypatch):
    out = tmp_path / "analysis"
    for label in ("first", "second"):
        staging = outdir.staging_dir(out)
        outdir.write_status(staging, {"label": label})
        monkeypatch.setattr(outdir, "_exchange", lambda a, b: False)  # e.g. not Linux
        outdir.publish(staging, out)
        assert _status(out)["label"] == label and sorted(p.name for p in tmp_path.iterdir()) == ["analysis"]


def _live_run(run_id: str, steps: list[int], ended: bool) -> FinishedRun:
    """A run as sweep.fit --watch reads it: one telemetry record per step (step 1: untrained)."""
    spectra = pd.DataFrame([{"step": s, "layer": 0, "site": "post", "bucket": "global", "soft_rank": 1.0}
                            for s in steps])
    return FinishedRun(run_id=run_id, run_dir=Path(run_id), sweep_dir=Path("."), axes={}, config_hash=None,
                       spectra=spectra, eval_loss=3.0 if ended else math.nan, train_loss=math.nan,
                       ended=ended)


def test_an_ended_run_with_a_short_window_does_not_pull_the_common_step_down():
    rule = AggregationRule()  # paper rule: the last 5 telemetry steps
    short = _live_run("short", [1, 100], ended=True)       # ended after one event past the first update
    going = _live_run("going", [1, *range(100, 700, 100)], ended=False)  # 6 events, up to step 600
    kept, step, left = at_common_step([short, going], rule)
    assert step == 600 and left == []
    assert [r.run_id for r in kept] == ["short", "going"]
    assert [sorted(set(r.spectra["step"])) for r in kept] == [[1, 100], [1, *range(100, 700, 100)]]


def test_an_ended_run_with_only_the_untrained_event_is_left_out_of_the_live_fit():
    rule = AggregationRule()
    untrained = _live_run("untrained", [1], ended=True)
    going = _live_run("going", [1, *range(100, 700, 100)], ended=False)
    kept, step, left = at_common_step([untrained, going], rule)
    assert step == 600 and [r.run_id for r in kept] == ["going"]
    assert [(run, reason.startswith("too short: 0 telemetry step(s)")) for run, reason in left] == [
        ("untrained", True)]
