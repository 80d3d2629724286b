"""Without SLURM: a USR2 stops a run at a step boundary with a checkpoint; two local ranks train one run."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from specsweep.sweep.rundir import RunDir, iter_jsonl
from tests.conftest import FAST, ROOT, RUN_TIMEOUT_S, ended, hold_env, run_id_for, run_train, wait_until_held

pytestmark = pytest.mark.slow


def _train(run: RunDir) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in iter_jsonl(run.metrics_file) if "train_loss" in r]


@pytest.mark.timeout(300)
def test_usr2_checkpoints_at_the_step_boundary_and_a_relaunch_resumes(env: dict, tmp_path: Path) -> None:
    common = [*FAST, "train.steps=40", "train.log_every=1", "train.ckpt_every=1000"]
    run_train([*common, "sweep_name=straight"], env)
    straight = RunDir(tmp_path / "runs" / "straight" / run_id_for(*common))
    run = RunDir(tmp_path / "runs" / "usr2" / run_id_for(*common))
    gate = tmp_path / "gate"
    # Held after step 20 until the signal lands: the signal reaches a run mid-way, however fast it trains.
    proc = subprocess.Popen([sys.executable, "-m", "specsweep.sweep.train", *common, "sweep_name=usr2"], cwd=ROOT,
                            env=hold_env(env, gate, 20), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_held(gate, 20, ended(proc))
        proc.send_signal(signal.SIGUSR2)
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGUSR2, out[-3000:]
    status = run.read_status()
    assert status["status"] == "interrupted" and status["step"] == 20
    assert [s for s, _ in run.checkpoints()] == [20]  # written on the signal, not periodically
    assert [s for s, _ in _train(run)] == list(range(1, 21))

    resumed = run_train([*common, "sweep_name=usr2"], env)
    assert "from step 20" in resumed.stdout + resumed.stderr
    a, b = _train(straight), _train(run)
    assert [s for s, _ in b] == [s for s, _ in a] == list(range(1, 41))
    assert [v for _, v in b] == pytest.approx([v for _, v in a], rel=1e-6, abs=1e-7)
    # telemetry: one cost row per event across both attempts; the run's totals count both
    costs = [r["step"] for r in iter_jsonl(run.metrics_file) if "telemetry_critical_s" in r]
    assert costs == [1, 10, 20, 30, 40]
    done = json.loads(run.done_file.read_text())["telemetry"]
    assert (done["events"], done["spectrum_events"]) == (5, 5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(args: list[str], env: dict) -> None:
    """One run as two torchrun-style local ranks (RANK/WORLD_SIZE) on gloo."""
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "specsweep.sweep.train", *args], cwd=ROOT,
                              env={**env, "RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=RUN_TIMEOUT_S)[0] for p in procs]  # hang guard (e.g. a rank that never joins)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)


def _records(run: RunDir) -> dict[tuple, dict]:
    return {(r["step"], r["layer"], r["site"], r["bucket"]): r for r in iter_jsonl(run.spectra_file)}


def _assert_same_records(got: dict, want: dict) -> None:
    """Same records; values equal up to the fp32 round-off of pooling in another order (and of
    DDP's gradient averaging, which moves the weights by ~1e-6 between the two runs)."""
    assert got.keys() == want.keys()
    for key, w in want.items():
        g = got[key]
        assert g.keys() == w.keys(), key
        for name, value in w.items():
            if isinstance(value, float) and name not in ("min_eig", "neg_mass"):
                assert g[name] == pytest.approx(value, rel=1e-3), (key, name)
            elif not isinstance(value, float):
                assert g[name] == value, (key, name)


def _rank0_bucket_rows(compose, overrides: list[str], steps: list[int]) -> dict[tuple[int, str], int]:
    """(step, bucket) -> rows of HEAD/MID/TAIL in rank 0's share of that step's batches."""
    from specsweep.metrics import frequency_buckets
    from specsweep.sweep.data.run_data import load_run_data
    from specsweep.sweep.grid.spec import build_run_spec

    spec = build_run_spec(compose(overrides))
    t = spec.train
    data = load_run_data(spec.data, spec.data_root, seed=spec.seed, batch_size=t.batch_size // 2,
                         seq_len=t.seq_len, eval_batches=t.eval_batches, rank=0, world_size=2)
    table = frequency_buckets(data.counts)
    out = {}
    for step in steps:
        # event s measures step s+1's batch (the weights after s updates; the last one: the batch
        # after training), sweep/run/event_timing.py
        tokens = torch.cat([data.train.get(step * t.grad_accum + m)[0].reshape(-1) for m in range(t.grad_accum)])
        counts = np.bincount(table[tokens.numpy()], minlength=3)
        out.update({(step, bucket): int(n) for bucket, n in zip(("head", "mid", "tail"), counts)})
    return out


@pytest.mark.timeout(600)
def test_two_local_ranks_match_one_process(env: dict, tmp_path: Path, compose) -> None:
    """RANK/WORLD_SIZE (torchrun-style) ranks on gloo: same losses, and the rank-sharded telemetry
    (each matrix reduced onto its owner rank, decomposed there, records gathered on rank 0) gives
    the single process's records; bucket_scope=rank0 builds HEAD/MID/TAIL from rank 0's rows only."""
    common = [*FAST, "train.steps=10", "train.log_every=1", "telemetry.every=5"]
    run_train([*common, "sweep_name=one"], env)
    _two_ranks([*common, "sweep_name=two"], env)
    one = RunDir(tmp_path / "runs" / "one" / run_id_for(*common))
    two = RunDir(tmp_path / "runs" / "two" / run_id_for(*common))
    assert two.is_done() and [s for s, _ in _train(two)] == list(range(1, 11))
    assert [v for _, v in _train(two)] == pytest.approx([v for _, v in _train(one)], rel=1e-4)
    s1, s2 = _records(one), _records(two)
    assert {k[0] for k in s1} == {1, 5, 10} and all(r["spectrum"] for r in s1.values())
    _assert_same_records(s2, s1)
    # one cost row per event on rank 0, none written by rank 1 (rank 0 alone writes metrics.jsonl)
    costs = [r for r in iter_jsonl(two.metrics_file) if "telemetry_critical_s" in r]
    assert [r["step"] for r in costs] == [1, 5, 10]

    _two_ranks([*common, "sweep_name=rank0", "telemetry.bucket_scope=rank0"], env)
    rank0 = RunDir(tmp_path / "runs" / "rank0" / run_id_for(*common))
    s0 = _records(rank0)
    # the global matrices still pool every rank's rows: the same records as bucket_scope=all
    _assert_same_records({k: r for k, r in s0.items() if k[3] == "global"},
                         {k: r for k, r in s2.items() if k[3] == "global"})
    want = _rank0_bucket_rows(compose, [*common], [1, 5, 10])
    for (step, layer, site, bucket), r in s0.items():
        if bucket != "global":
            assert r["n_rows"] == want[(step, bucket)], (step, layer, site, bucket)
            assert r["n_rows"] < s2[(step, layer, site, bucket)]["n_rows"]
    for step in (1, 5, 10):  # rank 0's rows are half of every step's rows
        assert sum(want[(step, b)] for b in ("head", "mid", "tail")) * 2 == s0[(step, 0, "pre", "global")]["n_rows"]
