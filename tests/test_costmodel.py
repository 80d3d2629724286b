"""Telemetry cost model: extrapolation laws, the H100 anchors against telemetry-cost.md, the
decompose_on rule, the event schedule and the run timeline (pure arithmetic, no timing)."""

import math

import pytest

from specsweep.metrics import costmodel as cm
from specsweep.metrics import placement
from specsweep.metrics.schedule import event_steps, keep_up_every, spectrum_steps

GIB = 2**30


def test_anchors_measured_interpolated_extrapolated():
    a = cm.Anchors(((200, 8.0), (100, 1.0)), 3.0, "test")
    assert a.at(100) == (1.0, cm.MEASURED) and a.at(200) == (8.0, cm.MEASURED)
    value, basis = a.at(400)
    assert value == pytest.approx(64.0) and basis == cm.extrapolated(3.0)
    assert a.at(50)[0] == pytest.approx(1.0 / 8.0)
    value, basis = a.at(150)  # power law through the two neighbours (slope 3 here)
    assert value == pytest.approx(1.5**3) and basis == cm.INTERPOLATED
    with pytest.raises(ValueError):
        cm.Anchors((), 2.0, "empty")
    with pytest.raises(ValueError):
        cm.Anchors(((100, 0.0),), 2.0, "zero")


def test_capture_is_linear_in_rows_and_decomposition_cubic_beyond_the_anchors():
    ev1 = cm.event_estimate(cm.EventShape(12, 3072, 65_536), "h100", workers=16)
    ev2 = cm.event_estimate(cm.EventShape(12, 3072, 4 * 65_536), "h100", workers=16)
    assert ev2.capture_s == pytest.approx(4 * ev1.capture_s)
    assert ev1.basis["capture_s"] == cm.MEASURED  # 65,536 rows per GEMM: exactly the anchor
    assert "linear in N" in ev2.basis["capture_s"]
    big = cm.event_estimate(cm.EventShape(12, 24_576, 65_536), "h100", workers=16)
    top = cm.event_estimate(cm.EventShape(12, 12_288, 65_536), "h100", workers=16)
    assert big.decompose_gpu_s == pytest.approx(8 * top.decompose_gpu_s)
    assert big.capture_s == pytest.approx(4 * top.capture_s)
    assert big.basis["decompose_gpu_s"].startswith("extrapolated")
    # ranks split rows and matrices
    two = cm.event_estimate(cm.EventShape(12, 3072, 4 * 65_536, ranks=2), "h100", workers=16)
    assert two.capture_s == pytest.approx(ev2.capture_s / 2)
    assert two.decompose_gpu_s == pytest.approx(ev2.decompose_gpu_s / 2)


# telemetry-cost.md, "The arithmetic for one event at GPT-2 160M" (capture priced at 2N GEMM rows)
@pytest.mark.parametrize("d,capture,eig_gpu,eig_cpu16,between,share", [
    (768, 0.06, 0.74, 4.0, 130.0, 0.006),
    (3072, 0.6, 5.9, 53.0, 180.0, 0.036),
    (6144, 2.4, 29.0, 7 * 60.0, 280.0, 0.11),
])
def test_h100_anchors_reproduce_the_telemetry_cost_table(d, capture, eig_gpu, eig_cpu16, between, share):
    ev = cm.event_estimate(cm.EventShape(12, d, 524_288, gemm_passes=2), "h100", workers=16)
    assert ev.capture_s == pytest.approx(capture, rel=0.05)
    assert ev.decompose_gpu_s == pytest.approx(eig_gpu, rel=0.03)
    assert ev.decompose_cpu_s == pytest.approx(eig_cpu16, rel=0.06)
    per_event = ev.critical_path_s("gpu") + ev.decomposition_s("gpu")
    assert per_event / between == pytest.approx(share, abs=0.005 if share > 0.05 else 0.0006)
    # the same through a whole run: every=200 on 6000 steps, spectra at every event, on the GPU
    run = cm.estimate_run(cm.ModelShape(12, 768, d), 6000, 200, 524_288, between / 200, "h100",
                          decompose_on="gpu", spectrum_every=1, gemm_passes=2)
    assert run.n_events == run.n_spectrum_events == 31
    assert run.telemetry_s == pytest.approx(31 * per_event)
    assert run.overhead == pytest.approx(31 / 30 * share, rel=0.1)  # 31 events in 30 intervals
    assert run.share == pytest.approx(run.telemetry_s / (run.train_s + run.telemetry_s))


def test_h100_memory_and_step_time_estimates():
    ev = cm.event_estimate(cm.EventShape(12, 6144, 524_288), "h100", workers=15)
    # "an fp32 copy of all 96 covariances is 14.5 GB at D=6144"
    assert ev.host_bytes["cpu"] >= 96 * 6144**2 * 4 == pytest.approx(14.5e9, rel=0.01)
    assert ev.device_bytes["gpu"] >= 96 * 6144**2 * 4
    assert ev.host_bytes["gpu"] < 10 * 2**20  # only the eigenvalues come back
    # ~130 s and ~280 s between events at cadence 200 (FLOP estimate at 400 TFLOP/s)
    for d, between in ((768, 130.0), (6144, 280.0)):
        step = cm.estimate_step_seconds(cm.ModelShape(12, 768, d), 524_288, cm.H100.flops_per_s)
        assert 200 * step == pytest.approx(between, rel=0.05)


def test_collector_design_halves_the_capture_floor():
    one = cm.event_estimate(cm.EventShape(12, 6144, 524_288), "h100")
    two = cm.event_estimate(cm.EventShape(12, 6144, 524_288, gemm_passes=2), "h100")
    assert one.capture_s == pytest.approx(two.capture_s / 2)
    assert one.capture_s / one.gemm_floor_s == pytest.approx(1.0)


def test_decompose_on_rule():
    keeps_up = dict(accelerator=True, cpu_decompose_s=50.0, interval_s=180.0,
                    host_bytes_needed=8 * GIB, host_bytes_available=64 * GIB)
    assert placement.decide_decompose_on("auto", **keeps_up).on == "cpu"
    too_slow = {**keeps_up, "cpu_decompose_s": 425.0, "interval_s": 280.0}
    decision = placement.decide_decompose_on("auto", **too_slow)
    assert decision.on == "gpu" and "425" in decision.reason
    no_ram = {**keeps_up, "host_bytes_needed": 60 * GIB}  # > 80% of 64 GiB
    decision = placement.decide_decompose_on("auto", **no_ram)
    assert decision.on == "gpu" and "GiB" in decision.reason
    assert placement.decide_decompose_on("auto", **{**no_ram, "host_bytes_available": 100 * GIB}).on == "cpu"
    assert placement.decide_decompose_on("cpu", **too_slow).on == "cpu"  # an explicit choice is kept
    assert placement.decide_decompose_on("gpu", **keeps_up).on == "gpu"
    cpu_only = {**too_slow, "accelerator": False}
    assert placement.decide_decompose_on("auto", **cpu_only).on == "cpu"
    with pytest.raises(ValueError, match="CUDA"):
        placement.decide_decompose_on("gpu", **cpu_only)
    with pytest.raises(ValueError, match="decompose_on"):
        placement.decide_decompose_on("tpu", **keeps_up)


def test_run_decision_uses_the_given_resources():
    shape = cm.ModelShape(12, 768, 3072)
    roomy = cm.estimate_run(shape, 6000, 200, 524_288, 0.9, "h100", resources=placement.HostResources(16, 256 * GIB))
    assert roomy.decompose_on == "cpu"  # 7 × 8.9 s on 15 workers < 180 s between events
    assert roomy.spectrum_every == 1 and "cheaper place by the cost model" in roomy.reason
    few_cores = cm.estimate_run(shape, 6000, 200, 524_288, 0.9, "h100", resources=placement.HostResources(2, 256 * GIB))
    # 96 × 8.9 s on one worker does not keep up with every event: the pool takes every 5th event
    # before the window, the window's events (needed sooner than the pool finishes) go to the GPU
    assert few_cores.decompose_on == "cpu" and few_cores.spectrum_every == 5
    on_gpu = cm.estimate_run(shape, 6000, 200, 524_288, 0.9, "h100", resources=placement.HostResources(2, 256 * GIB),
                             decompose_on="gpu")
    assert few_cores.telemetry_s < on_gpu.telemetry_s
    small_ram = cm.estimate_run(shape, 6000, 200, 524_288, 0.9, "h100", resources=placement.HostResources(16, 4 * GIB))
    assert small_ram.decompose_on == "gpu"


def test_event_schedule_and_sparse_spectra_come_from_metrics_schedule():
    # one owner per fact: the cost model prices the schedule that the trainer runs
    assert not hasattr(cm, "spectrum_flags") and not hasattr(cm, "choose_spectrum_every")
    assert cm.event_steps is event_steps
    shape = cm.ModelShape(12, 768, 3072)
    run = cm.estimate_run(shape, 6000, 200, 524_288, 0.9, "h100", spectrum_every=4)
    assert run.n_events == len(event_steps(6000, 200)) == 31
    assert run.n_spectrum_events == len(spectrum_steps(6000, 200, 4)) == len(range(0, 26, 4)) + 5
    assert placement.cadence_budget("cpu") == 1.0 and placement.cadence_budget("gpu") == placement.GPU_SHARE_BUDGET == 0.01
    assert keep_up_every(425.0, 280.0, placement.cadence_budget("cpu")) == 2
    assert keep_up_every(100.0, 280.0, placement.cadence_budget("cpu")) == 1
    assert keep_up_every(29.0, 280.0, placement.cadence_budget("gpu")) == 11
    with pytest.raises(ValueError, match="place"):
        placement.cadence_budget("tpu")


def _toy_profile(decompose_s: float) -> cm.DeviceProfile:
    """CPU-only profile: capture 1 s per event of EventShape(1, 100, 1000), decomposition
    `decompose_s` for its 8 matrices on one worker, negligible snapshot."""
    return cm.DeviceProfile(
        name="toy", accelerator=False,
        capture_row_s=cm.Anchors(((100, 1.0 / 2000),), 2.0, "toy"), capture_rows=1000,
        snapshot_matrix_s=cm.Anchors(((100, 1e-15),), 2.0, "toy"),
        eig_core_s=cm.Anchors(((100, decompose_s / 8),), 3.0, "toy"), eig_device_s=None,
        copy_bytes_per_s=1e9, flops_per_s=1e9, cores=2, host_mem_bytes=GIB,
    )


@pytest.mark.parametrize("in_flight,ckpt_every,telemetry_s,wait_s", [
    # events at steps 1, 100, 200, 300 (1 s/step), 1 s critical path, 150 s decomposition each:
    # one in flight -> each event waits for the previous one, the end waits for the last
    (1, None, 305.0, 301.0),
    (2, None, 302.0, 298.0),  # two in flight: the waits move to the end
    (2, 200, 403.0, 399.0),  # a checkpoint at step 200 drains everything first
])
def test_cpu_pool_timeline_bounded_by_in_flight(in_flight, ckpt_every, telemetry_s, wait_s):
    run = cm.estimate_run(cm.ModelShape(1, 10, 100, sites=2), 300, 100, 1000, 1.0, _toy_profile(150.0),
                          spectrum_every=1, resources=placement.HostResources(2, GIB), max_in_flight=in_flight,
                          ckpt_every=ckpt_every)
    assert run.decompose_on == "cpu" and run.reason == "no accelerator"
    assert run.n_events == 4 and run.critical_path_s == pytest.approx(1.0)
    assert run.telemetry_s == pytest.approx(telemetry_s)
    assert run.wait_s == pytest.approx(wait_s)


def test_sparse_spectra_cost_less_and_auto_keeps_up():
    shape = cm.ModelShape(12, 768, 6144)
    dense = cm.estimate_run(shape, 6000, 200, 524_288, 1.4, "h100", spectrum_every=1)
    sparse = cm.estimate_run(shape, 6000, 200, 524_288, 1.4, "h100", decompose_on="gpu")
    assert dense.decompose_on == sparse.decompose_on == "gpu"  # the pool (7 min per event) cannot keep up
    assert sparse.spectrum_every > 1 and sparse.n_spectrum_events >= 5
    assert sparse.telemetry_s < dense.telemetry_s / 2
    # outside the window the GPU decompositions stay within the 1% budget of training time
    outside = sparse.n_spectrum_events - 5
    assert outside * sparse.decomposition_s <= 0.01 * sparse.train_s * 1.05
    # auto: the pool every 2nd event before the window (it keeps up), the window on the GPU: cheaper
    auto = cm.estimate_run(shape, 6000, 200, 524_288, 1.4, "h100")
    assert (auto.decompose_on, auto.spectrum_every) == ("cpu", 2) and auto.telemetry_s < sparse.telemetry_s
    assert auto.share < 0.03


def test_an_event_waited_for_at_once_is_decomposed_on_the_gpu_when_that_is_faster():
    # 160M, D=3072, every 200 steps on one H100: the CPU pool keeps up between events, but DONE
    # (and a checkpoint at a spectrum event) would wait for a whole pool decomposition (~60 s)
    shape = cm.ModelShape(12, 768, 3072)
    kw = dict(spectrum_every=1, ckpt_every=1000)
    pool_only = cm.estimate_run(shape, 6000, 200, 524_288, 0.97, "h100", decompose_on="cpu", **kw)
    auto = cm.estimate_run(shape, 6000, 200, 524_288, 0.97, "h100", **kw)
    assert pool_only.decompose_on == auto.decompose_on == "cpu"
    ev = auto.event
    assert ev.decompose_gpu_s < ev.decompose_cpu_s < 200 * 0.97
    # 6 events needed at once (checkpoints at 1000..5000 and the end) cost the GPU decomposition
    # instead of the host copy and the wait for the pool; the others are the pool's
    saved = 6 * (ev.decompose_cpu_s + ev.copy_s - ev.decompose_gpu_s)
    assert pool_only.telemetry_s - auto.telemetry_s == pytest.approx(saved, rel=1e-6)
    assert auto.share < 0.01 < pool_only.share
    forced_off = cm.estimate_run(shape, 6000, 200, 524_288, 0.97, "h100", per_event_device=False, **kw)
    # without per-event placement the pool loses to the GPU here; with it the pool wins
    assert forced_off.decompose_on == "gpu" and auto.telemetry_s < forced_off.telemetry_s < pool_only.telemetry_s


def test_when_the_trainer_needs_an_event_and_where_it_is_decomposed():
    # the end, the next checkpoint (at or after the step), the max_in_flight-th next spectrum event
    assert placement.needed_at(6000, 6000, 1000, []) == 6000
    assert placement.needed_at(800, 6000, 1000, [1200, 1600]) == 1000
    assert placement.needed_at(1000, 6000, 1000, [1200]) == 1000
    assert placement.needed_at(1200, 6000, 1000, [1400, 1600], max_in_flight=1) == 1400
    assert placement.needed_at(1200, 6000, None, [1400, 1600], max_in_flight=2) == 1600
    assert placement.needed_at(1200, 6000, None, [1400], max_in_flight=2) == 6000
    # device 29 s vs pool 496 s: needed at once or 284 s later -> device; 568 s later -> pool
    assert placement.decompose_on_device_now(29.0, 496.0, 1.45, 0.0)
    assert placement.decompose_on_device_now(29.0, 496.0, 1.45, 284.0)
    assert not placement.decompose_on_device_now(29.0, 496.0, 1.45, 568.0)
    assert not placement.decompose_on_device_now(None, 496.0, 1.45, 0.0)  # no accelerator


def test_estimate_run_for_a_grid_point_and_bad_input():
    run = cm.estimate_run(cm.ModelShape(24, 1024, 4096), 8000, 400, 524_288)  # step time from FLOPs
    assert 0 < run.share < 1 and run.decompose_on in ("cpu", "gpu")
    assert run.basis["step_s"].startswith("estimated from FLOPs")
    assert run.event.shape.matrices == 192 and "wall time" in run.summary()
    with pytest.raises(ValueError, match="unknown device profile"):
        cm.estimate_run(cm.ModelShape(12, 768, 768), 100, 10, 1024, 1.0, "tpu-v9")
    with pytest.raises(ValueError, match="spectrum_every"):
        cm.estimate_run(cm.ModelShape(12, 768, 768), 100, 10, 1024, 1.0, spectrum_every=0)
    with pytest.raises(ValueError):
        cm.estimate_run(cm.ModelShape(12, 768, 768), 0, 10, 1024, 1.0)
    with pytest.raises(ValueError):
        cm.EventShape(12, 0, 1024)


def test_host_resources_and_a_calibration_file(tmp_path):
    res = placement.host_resources()
    assert res.cores >= 1 and res.mem_available_bytes > 0
    path = str(tmp_path / "cal.json")
    cm.save_profile(path, cm.H100, {"ours_tok_s": 1.0})
    prof = cm.load_profile(path)
    assert prof.capture_row_s == cm.H100.capture_row_s and prof.eig_device_s == cm.H100.eig_device_s
    assert prof.measured == {"ours_tok_s": 1.0} and "calibration cal.json" in prof.name
    ev = cm.event_estimate(cm.EventShape(2, 128, 4096), prof)
    assert ev.capture_s == cm.event_estimate(cm.EventShape(2, 128, 4096), cm.H100).capture_s
