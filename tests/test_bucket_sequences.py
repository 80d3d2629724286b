"""HEAD/MID/TAIL from the paper's rank-0 rows whatever our split (issue 20 item 3).

``telemetry.bucket_sequences = n``: the bucket covariances take the first n sequences of the step
in the paper's order (rank-major, sweep.data.order), whichever of our ranks and micro-batches hold
them; the global covariance pools every row. Checked through sweep.run.telemetry.Telemetry (the
trainer's path: probe hooks, set_tokens per micro-batch, the event pipeline) on a tiny GPT, against
one process that measures the first n sequences (buckets) and all of them (global) directly.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from specsweep.metrics import FFNProbe, frequency_buckets
from specsweep.models import GPT, GPTConfig
from specsweep.sweep.errors import ConfigError
from specsweep.sweep.grid.spec import TelemetrySpec, build_run_spec
from specsweep.sweep.run.telemetry import Telemetry

V, T, STEP_SEQS, FIRST = 64, 16, 16, 4  # vocabulary, sequence length, sequences per step, bucket_sequences
COUNTS = (np.arange(V, 0, -1) ** 3).astype(np.int64)  # a Zipf-like table: all three buckets populated


pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, n_layer=2, n_head=2, d_model=8, context_len=T, ffn_mult=2)).eval()


def _step_tokens() -> torch.Tensor:
    """The step's global batch in the paper's order [STEP_SEQS, T]."""
    return torch.from_numpy(np.random.default_rng(5).integers(0, V, size=(STEP_SEQS, T)))


def _spec(bucket_sequences) -> TelemetrySpec:
    return TelemetrySpec(enabled=True, every=1, tokens="train", probe_batches=1, sites=["pre", "post"], buckets=True,
                         min_bucket_rows=2, subsample=1.0, renyi_alphas=[2.0], log_eigenvalues=False,
                         decompose_on="cpu", decompose_workers=1, bucket_sequences=bucket_sequences)


def _measure(rank: int, world: int, accum: int, bucket_sequences, out: Path) -> list[dict]:
    """One step through Telemetry: rank ``rank`` of ``world`` feeds its micro-batches (rank-major cut)."""
    model, x = _model(), _step_tokens()
    micro = STEP_SEQS // (world * accum)
    records: list[dict] = []
    tel = Telemetry(model, _spec(bucket_sequences), COUNTS, total_steps=1, spectra_file=out / f"s{rank}.jsonl",
                    eigen_dir=out / "eig", sink=records.extend, write=rank == 0, grad_accum=accum)
    try:
        with torch.no_grad(), tel.capturing(True):
            for m in range(accum):
                part = x[(rank * accum + m) * micro:(rank * accum + m + 1) * micro]
                tel.set_tokens(part, m)
                model(part)
        tel.finish_event(1)
        tel.drain()
    finally:
        tel.close(drain=False)
    return records


def _direct(x: torch.Tensor) -> dict:
    model = _model()
    probe = FFNProbe(model, bucket_of_token=frequency_buckets(COUNTS), min_bucket_rows=2, renyi_alphas=[2.0])
    with torch.no_grad(), probe.capturing():
        probe.set_tokens(x)
        model(x)
    return {(r["layer"], r["site"], r["bucket"]): r for r in probe.compute(1)}


def _check(records: list[dict], buckets_from: torch.Tensor) -> None:
    got = {(r["layer"], r["site"], r["bucket"]): r for r in records}
    want_global, want_buckets = _direct(_step_tokens()), _direct(buckets_from)
    assert len(got) == 2 * 2 * 4
    for key, rec in got.items():
        want = (want_global if key[2] == "global" else want_buckets)[key]
        assert rec["n_rows"] == want["n_rows"], key
        assert rec["status"] == want["status"] == "ok", key
        for metric in ("soft_rank", "hard_rank"):
            assert rec[metric] == pytest.approx(want[metric], rel=1e-4), (key, metric)


@pytest.mark.parametrize("accum", [1, 8])
def test_one_rank_any_micro_batches_gives_the_first_sequences_buckets(accum: int, tmp_path: Path) -> None:
    records = _measure(0, 1, accum, FIRST, tmp_path)
    _check(records, _step_tokens()[:FIRST])
    assert {r["n_rows"] for r in records if r["bucket"] == "global"} == {STEP_SEQS * T}
    assert sum(r["n_rows"] for r in records if r["bucket"] != "global" and r["layer"] == 0
               and r["site"] == "pre") == FIRST * T


def test_without_bucket_sequences_the_buckets_take_every_row(tmp_path: Path) -> None:
    _check(_measure(0, 1, 4, None, tmp_path), _step_tokens())


def _worker(rank: int, world: int, accum: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        records = _measure(rank, world, accum, FIRST, Path(out_dir))
        torch.save(records, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_give_the_same_buckets_as_one() -> None:
    # accum 4: the first 4 sequences are rank 0's micro-batches 0 and 1 (2 rows each); rank 1 holds none.
    accum = 4
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_worker, args=(2, accum, os.path.join(tmp, "init"), tmp), nprocs=2, join=True,
                           start_method="fork")
        rank0, rank1 = (torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in (0, 1))
    assert rank1 == []
    _check(rank0, _step_tokens()[:FIRST])


@pytest.mark.parametrize("overrides,message", [
    (["telemetry.bucket_sequences=0"], r"telemetry.bucket_sequences: a positive integer \(with telemetry.tokens=train\)"),
    (["telemetry.bucket_sequences=2048"], "telemetry.bucket_sequences: 2048 > the step's 1024 sequences"),
    (["telemetry.tokens=probe"], r"telemetry.bucket_sequences: a positive integer \(with telemetry.tokens=train\)"),
])
def test_bad_bucket_sequences_are_refused_before_work(compose, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build_run_spec(compose(["+preset=paper", *overrides]), check_files=False)
    # (the paper grids' 256 and 128: tests/test_paper_grids.py, every run of every grid)


@pytest.mark.slow
def test_a_training_run_measures_buckets_on_the_first_sequences_only(env: dict, tmp_path: Path) -> None:
    # The trainer's loop: 8 sequences per step in 4 micro-batches of 2, the paper's stream laid out
    # 2 ranks x 2; HEAD/MID/TAIL from the first 2 sequences (micro-batch 0), global from all 8.
    import json

    from tests.conftest import FAST, run_train

    run_train([*FAST, "data.order=sequential", "data.stream_ranks=2", "data.stream_rows=2", "train.global_batch=8",
               "train.batch_size=null", "train.grad_accum=null", "train.micro_batch=2", "train.steps=2",
               "telemetry.every=1", "telemetry.bucket_sequences=2", "telemetry.min_bucket_rows=2",
               "sweep_name=buckets"], env)
    (run,) = list((tmp_path / "runs" / "buckets").iterdir())
    records = [json.loads(line) for line in (run / "spectra.jsonl").read_text().splitlines()]
    assert {r["step"] for r in records} == {1, 2}
    for step in (1, 2):
        for layer, site in {(r["layer"], r["site"]) for r in records}:
            rows = {r["bucket"]: r["n_rows"] for r in records
                    if (r["step"], r["layer"], r["site"]) == (step, layer, site)}
            assert rows["global"] == 4 * (rows["head"] + rows["mid"] + rows["tail"]), (step, layer, site)
