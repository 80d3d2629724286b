"""Telemetry events as the paper labels them (issue 20, item 6; paper-notes §4b).

Event s is the forward of batch s+1 (our 1-based steps) on the weights after s updates; no event
sees the untrained model; the last event (s = N) is a no-grad eval-mode pass on the batch after
training. ``telemetry.event_weights=before_update`` keeps the old labels (step s's own forward,
s-1 updates). Proved on real tiny runs at a constant learning rate, where the weights after k
updates do not depend on the run's length: every after_update event equals the before_update
event one step later, the last one included (a run one step longer measures it in training).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from specsweep.sweep.grid.spec import TelemetrySpec
from specsweep.sweep.run.event_timing import after_step_event, event_lag, train_event, updates_at
from specsweep.sweep.rundir import RunDir, iter_jsonl
from tests.conftest import FAST

# every event, constant LR, no clipping differences: weights after k updates independent of steps
BASE = ["train.warmup_steps=0", "train.decay_frac=0.0", "telemetry.every=1", "telemetry.buckets=false",
        "telemetry.sites=[post]", "train.ckpt_every=100", "train.eval_every=100"]


def _spec(**kw) -> TelemetrySpec:
    base = dict(enabled=True, every=2, tokens="train", probe_batches=1, sites=["post"], buckets=False,
                min_bucket_rows=2, subsample=1.0, renyi_alphas=[], log_eigenvalues=False)
    return TelemetrySpec(**{**base, **kw})


def test_which_forward_measures_which_event():
    paper, old, probe = _spec(), _spec(event_weights="before_update"), _spec(tokens="probe")
    # steps 1..5, every 2: events 1, 2, 4, 5
    assert [train_event(paper, 5, s) for s in range(1, 6)] == [None, 1, 2, None, 4]
    assert [after_step_event(paper, 5, s) for s in range(1, 6)] == [False, False, False, False, True]
    assert [train_event(old, 5, s) for s in range(1, 6)] == [1, 2, None, 4, 5]
    assert not any(after_step_event(old, 5, s) for s in range(1, 6))
    assert [after_step_event(probe, 5, s) for s in range(1, 6)] == [True, True, False, True, True]
    assert (event_lag(paper), event_lag(old), event_lag(probe)) == (1, 0, 0)
    assert (updates_at(paper, 1), updates_at(old, 1), updates_at(probe, 1)) == (1, 0, 1)
    assert train_event(paper, 1, 1) is None and after_step_event(paper, 1, 1)  # one step: the final pass only


def _train(compose, path: Path, overrides: list[str]) -> pd.DataFrame:
    from specsweep.sweep.grid.spec import build_run_spec
    from specsweep.sweep.run.trainer import train_run

    args = [*FAST, *BASE, *overrides]
    train_run(build_run_spec(compose(args), args), path)
    return pd.DataFrame(list(iter_jsonl(RunDir(path).spectra_file)))


def _by_step(frame: pd.DataFrame) -> dict[int, list[float]]:
    frame = frame.sort_values(["step", "layer"])
    return {int(s): sub["hard_rank"].round(4).tolist() for s, sub in frame.groupby("step")}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_paper_events_see_the_weights_after_s_updates_and_the_last_is_the_batch_after_training(
        env, compose, tmp_path):
    paper = _train(compose, tmp_path / "paper", ["train.steps=4"])
    old = _train(compose, tmp_path / "old", ["train.steps=5", "telemetry.event_weights=before_update"])
    assert sorted(paper["step"].unique()) == [1, 2, 3, 4]
    assert (paper["updates"] == paper["step"]).all()          # no event sees the untrained model
    assert (old["updates"] == old["step"] - 1).all() and (old.loc[old["step"] == 1, "updates"] == 0).all()
    p, o = _by_step(paper), _by_step(old)
    # event s (after s updates, batch s+1) == the old labels' event s+1; s = 4 is the no-grad
    # eval-mode pass on batch 5, which the 5-step run measured while training on it
    for s in (1, 2, 3, 4):
        assert p[s] == pytest.approx(o[s + 1], rel=1e-4), s
    assert p[1] != pytest.approx(o[1], rel=1e-4)  # the old step-1 event: the untrained model


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_resume_between_an_event_and_its_measurement_keeps_every_event_once(env, compose, tmp_path):
    """Event 2 is measured during step 3, after the checkpoint at step 2: a run that dies after
    writing it resumes from step 2, drops it and measures it again, exactly as before."""
    whole = _train(compose, tmp_path / "whole", ["train.steps=4"])
    path = tmp_path / "cut"
    args = ["train.steps=4", "train.ckpt_every=2", "train.keep_checkpoints=5"]
    _train(compose, path, args)
    run = RunDir(path)
    # make it look as if the run died during step 4: checkpoint 2 newest, events 1-3 and step-3
    # rows on disk, no DONE
    for ckpt in run.path.glob("checkpoints/ckpt_*04.pt"):
        ckpt.unlink()
    run.done_file.unlink()
    run.truncate_jsonl(run.spectra_file, 3)
    run.truncate_jsonl(run.metrics_file, 3)
    resumed = _train(compose, path, args)
    assert sorted(resumed["step"].tolist()) == sorted(whole["step"].tolist())  # each event once
    assert _by_step(resumed) == _by_step(whole)
    costs = [r["step"] for r in iter_jsonl(run.metrics_file) if "telemetry_on" in r]
    assert costs == [1, 2, 3, 4]
