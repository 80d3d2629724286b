"""A cost model that can fail (issue 21, items 5, 8, 9): the run's placement rule from measured times
only, projections that count checkpoints and the compile path, calibration files read by sweep.plan."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from specsweep.metrics import EventCost, FinishedEvent
from specsweep.metrics import costmodel as cm
from specsweep.models import GPT, GPTConfig
from specsweep.sweep.grid.spec import TelemetrySpec
from specsweep.sweep.run import telemetry as telemetry_mod
from specsweep.sweep.run.telemetry import Telemetry

ROOT = Path(__file__).resolve().parents[1]


def _telemetry(tmp_path: Path, **spec) -> Telemetry:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, n_layer=2, n_head=2, d_model=16, context_len=8))
    fields = dict(enabled=True, every=10, tokens="train", probe_batches=1, sites=["pre", "post"], buckets=False,
                  min_bucket_rows=2, subsample=1.0, renyi_alphas=[2.0], log_eigenvalues=False)
    return Telemetry(model, TelemetrySpec(**{**fields, **spec}), None, total_steps=200,
                     spectra_file=tmp_path / "spectra.jsonl", eigen_dir=tmp_path / "eig")


def _no_profile(monkeypatch) -> None:
    """Whatever touches a profile or the whole-run simulation fails the test."""
    def refuse(*a, **k):
        raise AssertionError("the run's placement used the cost model's profile")
    monkeypatch.setattr(cm, "estimate_run", refuse)
    monkeypatch.setattr(cm, "event_estimate", refuse)
    monkeypatch.setattr(cm, "profile", refuse)


@pytest.mark.parametrize("eig_s, device_s, want", [
    (1e-4, 1.0, "cpu"),   # one eigvalsh here is fast: a pool of 2 keeps up with 4 matrices in 9 s
    (10.0, 1.0, "gpu"),   # 2 matrices per worker x 10 s > 9 s between events (the H100 anchors say cpu)
    (1e-4, 1e-9, "gpu"),  # the device decomposed faster than the copy to the host takes
])
def test_auto_place_on_cuda_is_decided_from_this_runs_measured_times(tmp_path, monkeypatch, eig_s, device_s, want):
    """The run-time rule of decompose_on=auto (accumulators on the CPU, ``cuda`` set by hand as in
    test_run_telemetry): only the times this run measured decide, never the H100 constants."""
    _no_profile(monkeypatch)
    monkeypatch.setattr(telemetry_mod, "time_host_work", lambda width, device: (eig_s, 1e-6))
    tel = _telemetry(tmp_path, decompose_on="auto", decompose_workers=2)
    try:
        tel.cuda = True
        tel.on, tel.reason, tel._provisional = tel._initial_place({})
        tel.pipeline.close()
        tel.pipeline = tel._pipeline("gpu")
        tel._observe(FinishedEvent(1, True, [], EventCost(step=1, spectrum=True, sync_decompose_s=device_s, matrices=4)))
        tel._observe(FinishedEvent(10, False, [], EventCost(step=10, spectrum=False, interval_s=9.0)))
        tel._decide_place()
        assert tel.on == want and "measured in this run" in tel.reason
        assert tel._device_s == device_s and tel._pool_s == pytest.approx(2 * eig_s)  # 4 matrices on 2 workers
        assert tel.state_dict()["measured"] == {"pool_s": tel._pool_s, "device_s": device_s, "copy_s": tel._copy_s}
    finally:
        tel.close(drain=False)


def test_the_trainer_holds_no_profile_and_the_decision_code_is_smaller():
    src = (ROOT / "sweep/run/telemetry.py").read_text()
    assert "H100" not in src and "estimate_run" not in src and "event_estimate" not in src
    assert not hasattr(cm, "calibrate")
    lines = sum(len((ROOT / p).read_text().splitlines()) for p in ("metrics/costmodel.py", "sweep/run/telemetry.py"))
    assert lines < 756 + 388  # the cost model and the trainer's telemetry before issue 21


def test_a_compiled_runs_eager_telemetry_step_is_counted_in_critical_s(tmp_path):
    """train.compile=true runs telemetry steps on the eager module: the excess over the compiled
    steps' median, beyond the capture, is the event's eager_s and part of its critical_s."""
    tel = _telemetry(tmp_path)
    rows: list[dict] = []
    tel.cost_sink = rows.append
    try:
        for step, seconds in ((2, 1.0), (3, 1.2), (4, 0.8)):
            tel.note_compiled_step(step, seconds, event=False)
        tel.note_compiled_step(10, 3.5, event=True)  # median 1.0; 0.5 s of it is the capture
        cost = EventCost(step=10, spectrum=False, capture_s=0.5, snapshot_s=0.1)
        tel._handle([FinishedEvent(10, False, [], cost)])
        assert cost.eager_s == pytest.approx(2.0)
        assert rows[-1]["telemetry_eager_s"] == pytest.approx(2.0)
        assert rows[-1]["telemetry_critical_s"] == pytest.approx(2.6)
        assert tel.totals.critical_s == pytest.approx(2.6)
    finally:
        tel.close(drain=False)


def test_projections_count_checkpoints_and_the_compile_path():
    shape = cm.ModelShape(12, 768, 3072)
    common = dict(steps=6000, every=200, tokens_per_step=524_288, device="h100", micro_batch_rows=32_768)
    plain = cm.estimate_run(shape, **common)
    ckpt = cm.estimate_run(shape, ckpt_every=1000, ckpt_bytes=2 * 2**30, **common)
    compiled = cm.estimate_run(shape, compile=True, **common)
    assert ckpt.telemetry_s > plain.telemetry_s  # the pool drains before every checkpoint
    assert ckpt.ckpt_s == pytest.approx(6 * 2 * 2**30 / cm.H100.ckpt_bytes_per_s)
    assert ckpt.wall_s == pytest.approx(ckpt.train_s + ckpt.ckpt_s + ckpt.telemetry_s)
    assert compiled.eager_s == pytest.approx(0.3 * plain.step_s)
    assert compiled.telemetry_s == pytest.approx(plain.telemetry_s + plain.n_events * compiled.eager_s, rel=1e-6)


def _calibration(tmp_path: Path) -> Path:
    """A calibration file as gpu_check writes it, built from a CPU-like profile: slow everything."""
    slow = cm.DeviceProfile(
        name="test machine", accelerator=True,
        capture_row_s=cm.Anchors(((768, 1e-6),), 2.0, "test"), capture_rows=65_536,
        snapshot_matrix_s=cm.Anchors(((768, 1e-3),), 2.0, "test"), eig_core_s=cm.Anchors(((768, 5.0),), 3.0, "test"),
        eig_device_s=cm.Anchors(((768, 0.5),), 3.0, "test"), copy_bytes_per_s=1e9, flops_per_s=1e14,
        cores=4, host_mem_bytes=2**34, basis={"copy_bytes_per_s": "measured: test"},
    )
    path = tmp_path / "calibration.json"
    cm.save_profile(str(path), slow, {"ours_tok_s": 100_000.0})
    return path


@pytest.mark.slow
def test_sweep_plan_reads_a_calibration_file_instead_of_the_constants(tmp_path):
    cal = _calibration(tmp_path)
    args = [sys.executable, "-m", "specsweep.sweep.plan", "+preset=paper", "model.ffn_mult=4", f"paths.runs_root={tmp_path}/runs",
            f"paths.data_root={tmp_path}/data"]
    outs = []
    for extra in ([], [f"plan.calibration={cal}"]):
        p = subprocess.run(args + extra + [f"plan.out={tmp_path}/plan{len(outs)}.json"], capture_output=True,
                           text=True, cwd=ROOT, timeout=300)
        assert p.returncode == 0, p.stderr
        outs.append((p.stdout, json.loads((tmp_path / f"plan{len(outs)}.json").read_text())))
    (h100_text, h100), (cal_text, calib) = outs
    assert "projected from the H100 constants" in h100_text and "profile measured: test machine" in cal_text
    run0, run1 = h100["runs"][0], calib["runs"][0]
    assert run1["tokens_per_s"] < run0["tokens_per_s"]  # ours measured at 100k tokens/s at the anchor's shape
    assert run1["telemetry"]["seconds"] > run0["telemetry"]["seconds"]
    bad = subprocess.run(args + [f"plan.calibration={tmp_path}/missing.json"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "plan.calibration" in bad.stderr and "does not exist" in bad.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_compiled_run_counts_its_eager_telemetry_steps_in_critical_s(env, compose, tmp_path, monkeypatch):
    """The loop under train.compile=true (torch.compile stubbed: no compiler in a unit test) hands every
    step's seconds to the telemetry; with step times fixed here (a compiled step 0.01 s, a telemetry
    step 500 s) each event after the first compiled steps carries that excess, less its measured
    capture, as eager_s in its critical_s. 500 s, far above any capture time a test could measure,
    keeps the check independent of the machine's speed (a 5 s step failed when capture took 1 s)."""
    from specsweep.sweep.grid.spec import build_run_spec
    from specsweep.sweep.rundir import RunDir, iter_jsonl
    from specsweep.sweep.run.telemetry_costs import EagerSteps
    from specsweep.sweep.run.trainer import train_run
    from tests.conftest import FAST

    monkeypatch.setattr(torch, "compile", lambda module, **kw: module)
    seen: list[tuple[int, bool]] = []
    note = EagerSteps.note

    def fixed(self, step, seconds, event):
        seen.append((step, event))
        note(self, step, 500.0 if event else 0.01, event)

    monkeypatch.setattr(EagerSteps, "note", fixed)
    args = [*FAST, "train.compile=true", "train.steps=20", "telemetry.every=10"]
    train_run(build_run_spec(compose(args), args), tmp_path / "run")
    run = RunDir(tmp_path / "run")
    # Events 1 and 10 are measured by the forwards of steps 2 and 11 (the weights after 1 and 10
    # updates), noted under their labels; event 20 by an extra pass over the batch after training.
    assert [s for s, event in seen if event] == [1, 10] and len(seen) == 20
    costs = {r["step"]: r for r in iter_jsonl(run.metrics_file) if "telemetry_critical_s" in r}
    assert set(costs) == {1, 10, 20}
    for step in (1, 10):  # a compiled step (step 1, resp. 2..10) before each to compare with
        c = costs[step]
        assert c["telemetry_eager_s"] == pytest.approx(499.99 - c["telemetry_capture_s"])
        assert c["telemetry_critical_s"] >= c["telemetry_eager_s"] > 400.0
    # the extra pass is telemetry's whole: its seconds beyond the capture, counted
    assert costs[20]["telemetry_critical_s"] >= costs[20]["telemetry_eager_s"] >= 0.0
    done = json.loads((tmp_path / "run" / "DONE").read_text())["telemetry"]
    assert done["critical_s"] == pytest.approx(sum(c["telemetry_critical_s"] for c in costs.values()))
