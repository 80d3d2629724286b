"""The README's grid and the demo, with default settings, measure HEAD/MID/TAIL and fill the fit's
window (issue 21, item 3).

Before, the README grid (`specsweep-train -m optim=adamw,muon model.ffn_mult=1,2,4`) logged 4
events (steps 1, 100, 200, 300: the window of 5 took step 1) and every bucket covariance had
too few rows (~300 of the 1000 required). Checked on the composed configs and on two real
training steps of the widest FFN (D = 256) with the default data, batch and telemetry.
"""

from __future__ import annotations

import pandas as pd
import pytest

from specsweep.metrics.buckets import BUCKETS
from specsweep.metrics.schedule import AGGREGATION_EVENTS, event_steps
from specsweep.sweep.rundir import RunDir, iter_jsonl

README_GRID = [[f"optim={o}", f"model.ffn_mult={m}"] for o in ("adamw", "muon") for m in (1, 2, 4)]
DEMO = ["+sweep=demo"]


@pytest.mark.parametrize("extra", [[], DEMO], ids=["readme-grid", "demo"])
def test_default_grids_put_at_least_a_full_window_of_trained_events(compose, extra):
    for point in README_GRID:
        cfg = compose([*extra, *point])
        events = event_steps(int(cfg.train.steps), int(cfg.telemetry.every))
        assert cfg.telemetry.event_weights == "after_update"  # no event sees the untrained model
        assert len(events) >= AGGREGATION_EVENTS, (point, events)
        assert cfg.telemetry.buckets and cfg.telemetry.enabled


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("extra", [[], DEMO], ids=["readme-grid", "demo"])
def test_default_grids_measure_every_bucket_at_every_event(env, compose, tmp_path, extra):
    from specsweep.sweep.grid.spec import build_run_spec
    from specsweep.sweep.run.trainer import train_run

    args = [*extra, "optim=adamw", "model.ffn_mult=4", "train.steps=2", "logger=none", "train.progress=false"]
    cfg = compose(args)
    train_run(build_run_spec(cfg, args), tmp_path / "run")
    records = pd.DataFrame(list(iter_jsonl(RunDir(tmp_path / "run").spectra_file)))
    buckets = records[records["bucket"].isin(BUCKETS)]
    assert sorted(buckets["step"].unique()) == [1, 2]
    assert set(buckets["bucket"]) == set(BUCKETS) and set(buckets["site"]) == {"pre", "post"}
    assert (buckets["status"] == "ok").all(), buckets[buckets["status"] != "ok"][["step", "bucket", "n_rows"]]
    assert (buckets["n_rows"] >= cfg.telemetry.min_bucket_rows).all()
    assert (buckets["n_over_d"] >= 2).all()  # the documented floor: at least 2 rows per dimension
