"""EventPipeline on one process: exact records, hard-rank-only events, a bounded backlog, costs."""

import threading

import pytest
import torch

import specsweep.metrics.pipeline as pipeline_mod
from specsweep.metrics import EventPipeline, attach_probes, finalize_snapshot, frequency_buckets
from test_metrics_probes import COUNTS, WIDTH, TinyLM, _micro_batches

FULL_ONLY = ("soft_rank", "entropy", "eee", "js", "renyi_0.5", "renyi_3", "renyi_inf", "min_eig", "neg_mass")
N_MATRICES = 2 * 2 * 4  # layers × sites × (global, head, mid, tail)


def _setup(**probe_kwargs):
    torch.manual_seed(0)
    model = TinyLM()
    probe = attach_probes(model, bucket_of_token=frequency_buckets(COUNTS), **probe_kwargs)
    batches = _micro_batches()

    def capture():  # the same rows every time: every event has the same covariances
        with probe.capturing():
            for idx in batches:
                probe.set_tokens(idx)
                model(idx)

    return probe, capture


def _restep(records, step):
    return [{**r, "step": step} for r in records]


@pytest.mark.parametrize("mode", [
    {"decompose_on": "cpu", "pool": "thread", "workers": 2},
    {"decompose_on": "device"},
])
def test_spectrum_event_records_equal_probe_compute(mode):
    probe, capture = _setup(min_bucket_rows=30, accum_dtype=torch.float64)
    capture()
    want = probe.compute(step=3)
    assert {r["status"] for r in want} == {"ok"} and len(want) == N_MATRICES
    with EventPipeline(probe.collector, probe.options, **mode) as pipe:
        capture()
        done = pipe.end_event(3, spectrum=True) + pipe.drain()
    assert [e.step for e in done] == [3] and done[0].spectrum
    assert done[0].records == want
    assert all(r["spectrum"] is True for r in want)


def test_an_event_needed_at_once_is_decomposed_in_place_beside_the_pool():
    """on_device: an event a checkpoint or DONE waits for is decomposed now, on the accumulators'
    device, by a CPU-pool pipeline; the records are the pool's, the event is settled on return."""
    probe, capture = _setup(min_bucket_rows=30, accum_dtype=torch.float64)
    with EventPipeline(probe.collector, probe.options, decompose_on="cpu", pool="thread", workers=2) as pipe:
        capture()
        pooled = pipe.end_event(1, spectrum=True) + pipe.drain()
        capture()
        now = pipe.end_event(2, spectrum=True, on_device=True)
        assert pipe.in_flight == 0 and [e.step for e in now] == [2]  # nothing left for drain()
    assert now[0].records == _restep(pooled[0].records, 2)
    assert now[0].cost.sync_decompose_s > 0 and now[0].cost.decompose_s == 0
    assert pooled[0].cost.sync_decompose_s == 0 and pooled[0].cost.decompose_s > 0


def test_hard_rank_only_event_carries_the_same_hard_ranks_and_nothing_else():
    # min_bucket_rows=100 flags HEAD (~60 rows): flagged records carry the flag too
    probe, capture = _setup(min_bucket_rows=100)
    with EventPipeline(probe.collector, probe.options, decompose_on="cpu", pool="thread") as pipe:
        capture()
        done = pipe.end_event(1, spectrum=True)
        capture()
        done += pipe.end_event(2, spectrum=False)
        done += pipe.drain()
    full, hard = done[0].records, done[1].records
    assert [e.spectrum for e in done] == [True, False]
    assert len(full) == len(hard) == N_MATRICES
    assert {r["status"] for r in full} == {"ok", "too_few_rows"}
    for a, b in zip(full, hard):
        assert a["spectrum"] is True and b["spectrum"] is False
        assert a.keys() == b.keys()
        for key in ("layer", "site", "bucket", "n_rows", "dim", "n_over_d", "sampling", "status"):
            assert a[key] == b[key], key
        for key in FULL_ONLY:
            assert b[key] is None, key
        if a["status"] == "ok":  # the trace formula, identical in both events; Rényi-2 is the same number
            assert b["hard_rank"] == a["hard_rank"] == a["renyi_2"] == b["renyi_2"]
            assert a["soft_rank"] is not None and a["js"] is not None
        else:
            assert b["hard_rank"] is None and a["hard_rank"] is None


def test_hard_rank_events_copy_nothing_to_the_host(monkeypatch):
    copies = []
    real = pipeline_mod._to_host
    monkeypatch.setattr(pipeline_mod, "_to_host", lambda t, shared: copies.append(t) or real(t, shared))
    probe, capture = _setup(min_bucket_rows=100)  # HEAD is flagged (too few rows)
    with EventPipeline(probe.collector, probe.options, decompose_on="cpu", pool="thread") as pipe:
        capture()
        (event,) = pipe.end_event(1, spectrum=False)
        assert copies == [] and pipe.held_bytes()["host"] == 0
        assert event.cost.matrices == 0 and event.cost.decompose_s == 0
        capture()
        (event,) = pipe.end_event(2, spectrum=True) + pipe.drain()  # finished in either call
        ok = sum(r["status"] == "ok" for r in event.records)
        assert 0 < ok < N_MATRICES and event.cost.matrices == ok
        assert len(copies) == 3 * ok  # m2, mean, rows slot of each decomposed matrix only
    with EventPipeline(probe.collector, probe.options, decompose_on="device") as pipe:
        copies.clear()
        capture()
        pipe.end_event(3, spectrum=True)
        assert copies == []  # synchronous decomposition where the accumulators are


@pytest.mark.parametrize("max_in_flight", [1, 2])
def test_slow_decomposition_makes_the_caller_wait_and_bounds_the_backlog(max_in_flight):
    probe, capture = _setup(min_bucket_rows=30, gram_below_dim=False)
    capture()
    want = probe.compute(step=0)
    workers = 2
    lock = threading.Lock()
    gates = {}  # step -> released by on_wait, i.e. only once the caller blocks on that step
    pending: dict[int, int] = {}  # step -> parts submitted and not finished
    concurrent_at_submit = []
    waits = []
    held = []

    def slow(snapshot):
        # generous bound: a broken pipeline that never waits would otherwise hang the test
        assert gates[snapshot.step].wait(120), f"step {snapshot.step} was never waited for"
        records = finalize_snapshot(snapshot)
        with lock:
            pending[snapshot.step] -= 1
        return records

    pipe = EventPipeline(probe.collector, probe.options, decompose_on="cpu", pool="thread", workers=workers,
                         max_in_flight=max_in_flight, decompose=slow,
                         on_wait=lambda step: (waits.append(step), held.append(pipe.held_bytes()["host"]),
                                               gates[step].set()))
    submit = pipe._pool.submit

    def spy(fn, task, snapshot):  # every part handed to the pool, and what was still running then
        with lock:
            others = {s for s, n in pending.items() if n > 0 and s != snapshot.step}
            concurrent_at_submit.append((snapshot.step, len(others)))
            pending[snapshot.step] = pending.get(snapshot.step, 0) + 1
        return submit(fn, task, snapshot)

    pipe._pool.submit = spy
    spectrum_steps = list(range(1, max_in_flight + 2))
    done = []
    for step in spectrum_steps:
        gates[step] = threading.Event()
        capture()
        done += pipe.end_event(step, spectrum=True)
        held.append(pipe.held_bytes()["host"])
        assert pipe.in_flight <= max_in_flight
    # the (max_in_flight + 1)-th event had to wait for the first, and only for it
    assert waits == [1] and [e.step for e in done] == [1]
    capture()
    done += pipe.end_event(99, spectrum=False)  # hard ranks only: never waits, queued in order
    assert waits == [1] and [e.step for e in done] == [1]
    done += pipe.drain()
    pipe.close()
    assert waits == spectrum_steps and pipe.in_flight == 0
    assert [e.step for e in done] == [*spectrum_steps, 99]
    # never more than max_in_flight events handed to the pool at once
    assert max(n for _, n in concurrent_at_submit) == max_in_flight - 1
    # the wait is charged to the event waited for; exact records at the end
    for event in done:
        assert (event.cost.wait_s > 0) == event.spectrum
        if event.spectrum:
            assert event.records == _restep(want, event.step)
            assert event.cost.decompose_s > 0
    # memory held for the pool: at most max_in_flight events' matrices (+ working copies)
    d = WIDTH
    per_event = N_MATRICES * (d * d * 4 + d * 8) + 16 * d * d * workers
    assert 0 < max(held) <= max_in_flight * per_event
    assert max(e.cost.host_mib for e in done) * 2**20 <= max_in_flight * per_event + N_MATRICES * (d * d * 4 + d * 8)


def test_cost_fields():
    probe, capture = _setup(min_bucket_rows=30)
    with EventPipeline(probe.collector, probe.options, decompose_on="cpu", pool="thread") as pipe:
        capture()
        first = pipe.end_event(1, spectrum=True) + pipe.drain()
        capture()
        second = pipe.end_event(2, spectrum=False)
    with EventPipeline(probe.collector, probe.options, decompose_on="device", time_capture=False) as pipe:
        capture()
        third = pipe.end_event(3, spectrum=True)
    costs = [e.cost for e in (*first, *second, *third)]
    assert set(costs[0].as_dict()) == {
        "step", "spectrum", "capture_s", "reduce_s", "snapshot_s", "hard_rank_s", "sync_decompose_s",
        "decompose_s", "wait_s", "interval_s", "host_mib", "device_mib", "matrices", "eager_s", "critical_s",
    }
    a, b, c = costs
    assert (a.spectrum, b.spectrum, c.spectrum) == (True, False, True)
    assert a.capture_s > 0 and b.capture_s > 0 and c.capture_s is None
    assert a.interval_s is None and b.interval_s > 0
    assert a.decompose_s > 0 and a.sync_decompose_s == 0 and a.matrices == N_MATRICES
    assert b.decompose_s == b.sync_decompose_s == 0 and b.matrices == 0 and b.hard_rank_s > 0
    assert c.sync_decompose_s > 0 and c.decompose_s == 0 and c.wait_s == 0
    for cost in costs:
        assert cost.critical_s == pytest.approx(
            (cost.capture_s or 0) + cost.reduce_s + cost.snapshot_s + cost.hard_rank_s + cost.sync_decompose_s)
        assert cost.host_mib > 0 and cost.device_mib == 0  # CPU accumulators: all host memory


def test_failed_decomposition_is_raised_at_collection():
    def broken(snapshot):
        raise ValueError("eigvalsh did not converge")

    probe, capture = _setup()
    with EventPipeline(probe.collector, probe.options, decompose_on="cpu", pool="thread", decompose=broken) as pipe:
        capture()
        with pytest.raises(ValueError, match="converge"):  # at end_event if already done, else drain
            pipe.end_event(1, spectrum=True)
            pipe.drain()


def test_bad_arguments_fail_before_work():
    probe, _ = _setup()
    for kwargs in ({"decompose_on": "auto"}, {"pool": "fork"}, {"max_in_flight": 0}, {"workers": 0},
                   {"bucket_scope": "rank1"}, {"eig_dtype": torch.bfloat16}):
        with pytest.raises(ValueError):
            EventPipeline(probe.collector, probe.options, **kwargs)


@pytest.mark.slow
def test_process_pool_equals_thread_pool():
    probe, capture = _setup(min_bucket_rows=30)
    results = {}
    for pool in ("thread", "process"):
        with EventPipeline(probe.collector, probe.options, decompose_on="cpu", pool=pool, workers=2) as pipe:
            capture()
            (event,) = pipe.end_event(5, spectrum=True) + pipe.drain()
        results[pool] = event.records
    assert results["process"] == results["thread"]
