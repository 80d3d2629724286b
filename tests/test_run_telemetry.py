"""Telemetry in the trainer (sweep/run/telemetry.py): bounded decomposition with recorded waits, a
cost row per event, the run's share in DONE, sparse spectra with an exact aggregation window (the
same β as spectra at every event), and cadence state carried through checkpoints."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch

import specsweep.sweep.run.telemetry as telemetry_mod
from specsweep.metrics import EventCost, FinishedEvent
from specsweep.models import GPT, GPTConfig
from specsweep.sweep.grid.spec import TelemetrySpec
from specsweep.sweep.rundir import RunDir, iter_jsonl
from specsweep.sweep.run.telemetry import Telemetry
from tests.conftest import FAST, run_train

N_MATRICES = 2 * 2 * 4  # tiny GPT: layers × sites × (global, head, mid, tail)
COST_KEYS = {"step", "telemetry_spectrum", "telemetry_capture_s", "telemetry_reduce_s", "telemetry_snapshot_s",
             "telemetry_hard_rank_s", "telemetry_sync_decompose_s", "telemetry_decompose_s", "telemetry_wait_s",
             "telemetry_interval_s", "telemetry_host_mib", "telemetry_device_mib", "telemetry_matrices",
             "telemetry_eager_s", "telemetry_critical_s", "telemetry_on"}


def _train_here(compose, run_path: Path, overrides: list[str]) -> RunDir:
    """One run in this process (so that a test can slow the decomposition down with monkeypatch)."""
    from specsweep.sweep.grid.spec import build_run_spec
    from specsweep.sweep.run.trainer import train_run

    args = [*FAST, *overrides]
    train_run(build_run_spec(compose(args), args), run_path)
    return RunDir(run_path)


def _costs(run: RunDir) -> list[dict]:
    return [r for r in iter_jsonl(run.metrics_file) if "telemetry_critical_s" in r]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("max_in_flight", [1, 2])
def test_max_in_flight_bounds_the_backlog_and_the_loop_records_its_wait(env, compose, tmp_path, monkeypatch,
                                                                        max_in_flight):
    # A decomposition that cannot finish before the loop waits for it: released only by the
    # pipeline's on_wait (the loop is about to block on that event), so every event is waited for
    # and nothing depends on how fast this machine is.
    real = telemetry_mod.finalize_snapshot
    gates: dict[int, threading.Event] = {}
    lock = threading.Lock()
    running: set[int] = set()
    seen: list[tuple[int, set[int]]] = []  # (step, other events in the pool when it started)

    def gate(step: int) -> threading.Event:
        with lock:
            return gates.setdefault(step, threading.Event())

    def slow(snapshot):
        with lock:
            seen.append((snapshot.step, set(running)))
            running.add(snapshot.step)
        assert gate(snapshot.step).wait(120), f"the loop never waited for step {snapshot.step}"  # hang guard
        try:
            return real(snapshot)
        finally:
            with lock:
                running.discard(snapshot.step)

    waited: list[int] = []
    on_wait = Telemetry._on_wait

    def release(self, step: int) -> None:
        waited.append(step)
        on_wait(self, step)
        gate(step).set()

    backlog: list[tuple[int, int]] = []  # (event, events handed to the pool and not yet collected)

    class Pipeline(telemetry_mod.EventPipeline):
        def end_event(self, step, spectrum, on_device=False):
            assert not on_device  # decompose_on=cpu asked for: every spectrum goes to the pool
            out = super().end_event(step, spectrum, on_device)
            backlog.append((step, self.in_flight))
            return out

    monkeypatch.setattr(telemetry_mod, "finalize_snapshot", slow)
    monkeypatch.setattr(telemetry_mod, "EventPipeline", Pipeline)
    monkeypatch.setattr(Telemetry, "_on_wait", release)
    run = _train_here(compose, tmp_path / "run", [
        "train.steps=30", "telemetry.every=5", "train.ckpt_every=1000", "telemetry.decompose_on=cpu",
        "telemetry.decompose_workers=1", f"telemetry.max_in_flight={max_in_flight}"])
    events = [1, 5, 10, 15, 20, 25, 30]
    # never more than max_in_flight events in the pool: the next one waits for the oldest first
    assert backlog == [(s, min(i + 1, max_in_flight)) for i, s in enumerate(events)]
    assert [s for s, _ in seen] == events and all(len(others) < max_in_flight for _, others in seen)
    assert waited == events  # each event waited for once: by a later event or by the final drain
    costs = _costs(run)
    assert [c["step"] for c in costs] == events
    for cost in costs:  # the wait is recorded on the event waited for, with sane costs
        assert set(cost) == COST_KEYS
        assert cost["telemetry_spectrum"] is True and cost["telemetry_on"] == "cpu"
        assert cost["telemetry_wait_s"] > 0 and cost["telemetry_decompose_s"] > 0
        assert cost["telemetry_matrices"] == N_MATRICES and cost["telemetry_sync_decompose_s"] == 0
        assert 0 < cost["telemetry_capture_s"] < cost["telemetry_critical_s"]
        assert cost["telemetry_host_mib"] > 0 and cost["telemetry_device_mib"] == 0
    assert costs[0]["telemetry_interval_s"] is None and all(c["telemetry_interval_s"] > 0 for c in costs[1:])
    # exact records of every event, on disk before DONE
    records = list(iter_jsonl(run.spectra_file))
    assert sorted({r["step"] for r in records}) == events and len(records) == len(events) * N_MATRICES
    done = json.loads(run.done_file.read_text())["telemetry"]
    assert (done["events"], done["spectrum_events"], done["hard_rank_only_events"]) == (7, 7, 0)
    assert done["wait_s"] == pytest.approx(sum(c["telemetry_wait_s"] for c in costs))
    assert done["critical_s"] == pytest.approx(sum(c["telemetry_critical_s"] for c in costs))
    assert done["share"] == pytest.approx((done["critical_s"] + done["wait_s"]) / json.loads(
        run.done_file.read_text())["wall_s"])
    assert done["decompose_on"] == "cpu" and done["peak_host_mib"] > 0


def _tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, n_layer=2, n_head=2, d_model=16, context_len=8))


def _tiny_telemetry(tmp_path: Path, state=None, model=None, **spec) -> Telemetry:
    model = model if model is not None else _tiny_model()
    fields = dict(enabled=True, every=10, tokens="train", probe_batches=1, sites=["pre", "post"], buckets=False,
                  min_bucket_rows=2, subsample=1.0, renyi_alphas=[2.0], log_eigenvalues=False)
    return Telemetry(model, TelemetrySpec(**{**fields, **spec}), None, total_steps=200,
                     spectra_file=tmp_path / "spectra.jsonl", eigen_dir=tmp_path / "eig", state=state)


def test_adaptive_cadence_and_totals_survive_a_checkpoint(tmp_path):
    first = _tiny_telemetry(tmp_path, spectrum_every="auto")
    try:
        assert first.on == "cpu" and first.reason == "no accelerator"
        for step in (1, 10):  # spectra at the first events: nothing measured yet
            assert first.cadence.decide(step)
        # measured: 25 s of decomposition, 10 steps of 1 s between events -> every 3rd event
        for step, interval in ((1, None), (10, 9.0)):
            cost = EventCost(step=step, spectrum=True, decompose_s=25.0, interval_s=interval, matrices=4)
            first._observe(FinishedEvent(step, True, [], cost))
        assert first.cadence.spectrum_every == 3
        assert [first.cadence.decide(s) for s in (20, 30, 40, 50)] == [False, False, True, False]
        state = json.loads(json.dumps(first.state_dict()))  # plain data, as in a checkpoint
    finally:
        first.close()
    resumed = _tiny_telemetry(tmp_path, state=state, spectrum_every="auto")
    try:  # the same decisions after the resume as the first attempt would have taken
        assert resumed.cadence.spectrum_every == 3 and resumed.totals.events == 2
        assert [resumed.cadence.decide(s) for s in (60, 70, 80)] == [False, True, False]
        assert resumed.run_summary(100.0)["spectrum_events"] == 2
    finally:
        resumed.close()


def test_decompose_on_gpu_without_cuda_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="telemetry.decompose_on: decompose_on=gpu needs a CUDA device"):
        _tiny_telemetry(tmp_path, decompose_on="gpu")


# ---- sparse spectra on the demo grid: the same β as spectra at every event ----------------------------
DEMO = ["-m", "+sweep=demo", "optim=adamw", "train.steps=80", "telemetry.every=10", "logger=none"]
EVENTS = [1, 10, 20, 30, 40, 50, 60, 70, 80]
WINDOW = EVENTS[-5:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sparse_spectra_keep_the_window_exact_and_the_fit_gives_the_same_beta(env, tmp_path):
    from specsweep.sweep.fit import run_fit

    run_train([*DEMO, "sweep_name=dense"], env, timeout=600)
    run_train([*DEMO, "sweep_name=sparse", "telemetry.spectrum_every=2"], env, timeout=600)
    dense_dir, sparse_dir = tmp_path / "runs" / "dense", tmp_path / "runs" / "sparse"
    names = sorted(p.name for p in dense_dir.iterdir() if (p / "DONE").exists())
    assert len(names) == 3 and names == sorted(p.name for p in sparse_dir.iterdir() if (p / "DONE").exists())
    key = lambda r: (r["step"], r["layer"], r["site"], r["bucket"])  # noqa: E731
    for name in names:
        dense = {key(r): r for r in iter_jsonl(RunDir(dense_dir / name).spectra_file)}
        sparse = {key(r): r for r in iter_jsonl(RunDir(sparse_dir / name).spectra_file)}
        assert dense.keys() == sparse.keys() and sorted({k[0] for k in dense}) == EVENTS
        with_spectra = sorted({k[0] for k, r in sparse.items() if r["spectrum"]})
        assert with_spectra == [1, 20, *WINDOW]  # every 2nd event before the window, all of the window
        for k, r in sparse.items():
            if r["spectrum"]:  # the window (and every k-th event): the very same records
                assert r == dense[k], k
            else:  # the others: hard ranks (the same numbers), nothing that needs a spectrum
                assert r["hard_rank"] == dense[k]["hard_rank"] and r["renyi_2"] == dense[k]["renyi_2"]
                assert r["soft_rank"] is None and r["entropy"] is None and r["js"] is None
        costs = [r for r in iter_jsonl(RunDir(sparse_dir / name).metrics_file) if "telemetry_critical_s" in r]
        assert [c["step"] for c in costs] == EVENTS
        assert [c["telemetry_spectrum"] for c in costs] == [s in with_spectra for s in EVENTS]
        assert all((c["telemetry_matrices"] > 0) == c["telemetry_spectrum"] for c in costs)
        done = json.loads((sparse_dir / name / "DONE").read_text())["telemetry"]
        assert (done["spectrum_events"], done["hard_rank_only_events"]) == (7, 2)
    dense_fit = run_fit([dense_dir], figures=False, n_boot=0)
    sparse_fit = run_fit([sparse_dir], figures=False, n_boot=0)
    assert not any("hard ranks only" in m for m in sparse_fit.messages)
    cols = ["metric", "bucket", "site", "beta", "beta_lower", "beta_upper", "n_widths"]
    table = lambda r: r.beta_table[cols].sort_values(cols[:3]).reset_index(drop=True)  # noqa: E731
    assert set(table(dense_fit)["metric"]) >= {"soft_rank", "hard_rank"}
    pd.testing.assert_frame_equal(table(sparse_fit), table(dense_fit))
    # and a fit on a window that includes events without spectra refuses their soft rank
    partial = run_fit([sparse_dir], rule="window:1-40", figures=False, n_boot=0)
    refused = [m for m in partial.messages if "hard ranks only" in m]
    assert len(refused) == 3 and all("step(s) 10, 30 of its aggregation window" in m for m in refused)
    assert set(partial.points["metric"]) == {"hard_rank"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_decompose_on_auto_decides_once_from_the_measured_time_between_events(tmp_path):
    """The CUDA rule of decompose_on=auto, run with the accumulators on the CPU (``cuda`` set by
    hand): spectra on the device until the time between events is known, then the rule fed with
    this run's measured times and this host's cores and memory, kept across a resume."""
    gpt = _tiny_model()
    tel = _tiny_telemetry(tmp_path, model=gpt, decompose_on="auto", decompose_workers=2)
    try:
        tel.cuda = True
        tel.on, tel.reason, tel._provisional = tel._initial_place({})
        assert (tel.on, tel._provisional) == ("gpu", True)
        tel.pipeline.close()
        tel.pipeline = tel._pipeline("gpu")
        assert not tel.pipeline.asynchronous
        # events far apart in time (1 s per step): a CPU pool keeps up with 8 matrices of D=64
        tel._observe(FinishedEvent(1, True, [], EventCost(step=1, spectrum=True, interval_s=None)))
        tel._observe(FinishedEvent(10, True, [], EventCost(step=10, spectrum=True, interval_s=9.0)))
        tel._decide_place()
        assert tel.on == "cpu" and not tel._provisional and "keeps up" in tel.reason and "measured" in tel.reason
        assert tel.pipeline.asynchronous and tel.pipeline.pool_kind == "process" and tel.pipeline.workers == 2
        assert tel.cadence.budget == 1.0
        # a real event through the spawned process pool, as on a CUDA run
        records: list[dict] = []
        tel.sink = records.extend
        with tel.capturing(True):
            idx = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(0))
            tel.set_tokens(idx)
            gpt(idx)
        tel.finish_event(20)
        tel.drain()
        assert {r["step"] for r in records} == {20} and len(records) == 4 and all(r["spectrum"] for r in records)
        state = tel.state_dict()
        assert state["decompose_on"] == "cpu"
        assert tel._initial_place(state)[0] == "cpu"  # a resumed run does not decide again
        # where later spectra go, with measured times of 5 s in the pool and 0.1 s on the device:
        # the pool when it is done before the trainer needs the records, else the device
        assert tel.per_event_device and state["per_event_device"]
        tel._pool_s, tel._device_s = 5.0, 0.1
        assert not tel._device_now(100)  # the next spectrum event is 10 s away
        assert tel._device_now(200)  # DONE waits for the last event at once
        tel.ckpt_every = 50
        assert tel._device_now(50) and not tel._device_now(140)  # a checkpoint at once / 10 s later
        tel.ckpt_every = None
        costs: list[dict] = []
        tel.cost_sink = costs.append
        with tel.capturing(True):
            tel.set_tokens(idx)
            gpt(idx)
        tel.finish_event(200)
        assert tel.pipeline.in_flight == 0 and {r["step"] for r in records} == {20, 200}
        assert costs[-1]["telemetry_on"] == "gpu" and costs[-1]["telemetry_sync_decompose_s"] > 0
        # events close together: the CPU pool would fall behind, spectra stay on the device
        tel._step_s, tel._provisional = 1e-6, True
        tel._decide_place()
        assert tel.on == "gpu" and "s between events" in tel.reason and not tel.pipeline.asynchronous
        assert not tel.per_event_device
        assert tel.cadence.budget == 0.01
    finally:
        tel.close(drain=False)


def test_cost_rows_and_the_run_share_reach_wandb_under_telemetry(env, tmp_path):
    import wandb

    from specsweep.sweep.analysis import wandb_io
    from specsweep.sweep.grid.spec import LoggerSpec
    from specsweep.sweep.run.wandb_logger import WandbLogger

    spec = LoggerSpec(backend="wandb", project="p", entity=None, mode="offline", system_metrics=False, console="off")
    try:
        logger = WandbLogger(spec, sweep_name="s", run_id="r", run_dir=tmp_path / "run", config={"seed": 0},
                             axes={"optimizer": "adamw"}, wandb_id="telemetrycost01")
        cost = EventCost(step=10, spectrum=True, capture_s=0.5, decompose_s=2.0, wait_s=0.25, interval_s=30.0,
                         host_mib=100.0, matrices=96)
        row = telemetry_mod.cost_row(cost, "cpu")
        assert row["telemetry_critical_s"] == 0.5 and row["telemetry_on"] == "cpu"
        logger.log(row, row["step"])  # what the loop does with every cost row
        logger.summary({"telemetry/share": 0.01, "telemetry/spectrum_events": 7})
        logger.finish()
        (folder,) = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
        parsed = wandb_io.read_offline_run(folder)
    finally:
        wandb.teardown()
    (history,) = [h for h in parsed["history"] if "telemetry/critical_s" in h]
    assert history["trainer/step"] == 10 and history["telemetry/wait_s"] == 0.25
    assert history["telemetry/decompose_s"] == 2.0 and history["telemetry/matrices"] == 96
    assert history["telemetry/spectrum"] is True and "telemetry/interval_s" in history
    assert not any(k.startswith("train/") for k in history)  # not mistaken for a train row
    summary = parsed["summary"]["summary"]
    assert summary["telemetry/share"] == 0.01 and summary["telemetry/spectrum_events"] == 7
